"""Dynamic providers for the two steps azure-native cannot do, run on the deploying machine:

* `SchemaMigration`: applies the yoyo migrations to the new server, after it exists and
  before the code is deployed; re-runs when the migrations' content changes, does nothing
  otherwise. The deployer reaches the server through the `deployerIp` firewall rule.
  It also gives the function's managed identity its own PostgreSQL role (Entra principal)
  with data privileges only.
* `CodeDeployment`: publishes the zip bundle with OneDeploy
  (`POST https://<app>.scm.azurewebsites.net/api/publish?RemoteBuild=false`, Entra token),
  the way Flex Consumption takes code. Chosen over pulumi-command because it needs no CLI
  on the deploying machine (no `az`/`func` install), diffs on the bundle's content hash,
  and is testable in-process against a local HTTP endpoint.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

ENTRA_POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
MANAGEMENT_SCOPE = "https://management.azure.com/.default"


def _entra_token(scope: str) -> str:
    """A token for the deploying identity (az login, env credentials, ...). TXMETRICS_DEPLOY_TOKEN
    overrides it (CI with a pre-fetched token, and tests)."""
    override = os.environ.get("TXMETRICS_DEPLOY_TOKEN")
    if override:
        return override
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential().get_token(scope).token


# ------------------------------------------------------------------------------ migrations

def ensure_app_role(admin_url: str, role: str, object_id: str | None, entra_admin_url: str | None = None) -> None:
    """The function identity's role: created as an Entra principal (by the Entra admin, with the
    deployer's token) when missing; then data privileges only, granted by the admin."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if not exists:
        if not (object_id and entra_admin_url):
            raise RuntimeError(f"role {role!r} does not exist and no Entra principal details were given")
        with psycopg.connect(entra_admin_url, password=_entra_token(ENTRA_POSTGRES_SCOPE), autocommit=True) as conn:
            conn.execute("SELECT * FROM pgaadauth_create_principal_with_oid(%s, %s, 'service', false, false)",
                         (role, object_id))
    ident = '"' + role.replace('"', '""') + '"'
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for statement in (
                f"GRANT CONNECT, TEMPORARY ON DATABASE {conn.info.dbname} TO {ident}",
                f"GRANT USAGE ON SCHEMA public TO {ident}",
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {ident}",
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {ident}",
                f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {ident}",
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {ident}",
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {ident}"):
            conn.execute(statement)


class SchemaMigrationProvider(ResourceProvider):
    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        from txmetrics import schema

        migrations_dir = Path(props["migrations_dir"])
        digest = schema.migrations_digest(migrations_dir)
        if digest != props["digest"]:
            raise RuntimeError(f"migrations in {migrations_dir} changed since the preview (digest {digest[:12]} != "
                               f"{props['digest'][:12]}); run pulumi up again")
        applied = schema.apply_all(props["database_url"], migrations_dir)
        if props.get("app_role"):
            ensure_app_role(props["database_url"], props["app_role"], props.get("app_object_id"),
                            props.get("entra_admin_url"))
        return {**props, "applied": applied}

    def create(self, props: dict[str, Any]) -> CreateResult:
        out = self._apply(props)
        return CreateResult(id_=f"schema-{props['digest'][:12]}", outs=out)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("digest", "database_url", "app_role") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], stables=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The schema goes with the server; destroying this resource keeps the data."""


class SchemaMigration(pulumi.dynamic.Resource):
    applied: pulumi.Output[list[str]]

    def __init__(self, name: str, *, database_url: pulumi.Input[str], migrations_dir: str, digest: str,
                 app_role: pulumi.Input[str] | None = None, app_object_id: pulumi.Input[str] | None = None,
                 entra_admin_url: pulumi.Input[str] | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(SchemaMigrationProvider(), name, {
            "database_url": pulumi.Output.secret(database_url), "migrations_dir": migrations_dir, "digest": digest,
            "app_role": app_role, "app_object_id": app_object_id, "entra_admin_url": entra_admin_url,
            "applied": None}, opts)


# ------------------------------------------------------------------------------ code deployment

def publish_zip(scm_url: str, zip_path: str, expected_sha256: str, timeout: float = 600) -> int:
    data = Path(zip_path).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise RuntimeError(f"{zip_path} changed since the preview (sha256 {actual[:12]} != {expected_sha256[:12]}); "
                           "run pulumi up again")
    request = urllib.request.Request(
        f"{scm_url.rstrip('/')}/api/publish?RemoteBuild=false", data=data, method="POST",
        headers={"Authorization": f"Bearer {_entra_token(MANAGEMENT_SCOPE)}", "Content-Type": "application/zip",
                 "Content-Length": str(len(data))})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"OneDeploy to {scm_url} failed: HTTP {exc.code} {exc.read()[:500]!r}") from None
    if status not in (200, 202):
        raise RuntimeError(f"OneDeploy to {scm_url} answered HTTP {status}")
    return status


class CodeDeploymentProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        publish_zip(props["scm_url"], props["zip_path"], props["sha256"])
        return CreateResult(id_=f"code-{props['sha256'][:12]}", outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("sha256", "scm_url") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], stables=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        publish_zip(news["scm_url"], news["zip_path"], news["sha256"])
        return UpdateResult(outs=news)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The code goes with the app."""


class CodeDeployment(pulumi.dynamic.Resource):
    def __init__(self, name: str, *, scm_url: pulumi.Input[str], zip_path: str, sha256: str,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(CodeDeploymentProvider(), name, {"scm_url": scm_url, "zip_path": zip_path,
                                                          "sha256": sha256}, opts)
