"""Dynamic providers for the two steps azure-native cannot do, run on the deploying machine:

* `SchemaMigration`: applies the yoyo migrations as the PostgreSQL Entra administrator (the
  deployer's token as password: the server accepts Entra logins only), after the server and its
  children exist and before the code is published; then maps the function's identity to its own
  PostgreSQL role with data privileges only. In private stacks the server has no public access:
  the step opens it for the deployer's address for the duration of its run and closes it again,
  also when the migrations fail (`temporary_deployer_access`; README, "How migrations reach a
  private server").
* `CodeDeployment`: publishes the zip bundle to Flex Consumption with OneDeploy
  (`POST https://<scm-host>/api/publish?RemoteBuild=false`, Entra token) and follows the
  deployment to its end, as the Azure CLI does for Flex (`enable_zip_deploy_flex` polls
  `/api/deployments/latest`). Chosen over pulumi-command because it needs no CLI on the deploying
  machine, diffs on the bundle's content hash, and is testable in-process against a local HTTP
  endpoint that behaves like the SCM site (tests/test_infra_providers.py).

Both re-run when what they act on is replaced: their inputs carry the server's and the app's
resource ids and the identities' object ids, and program.py adds `replace_with` for replacements
that keep the same name.

Credential overrides, one per audience (a token is valid for one audience only):
TXMETRICS_DEPLOY_TOKEN_ARM (management.azure.com: ARM and the SCM site) and
TXMETRICS_DEPLOY_TOKEN_POSTGRES (ossrdbms-aad.database.windows.net: PostgreSQL logins). Without
them the deployer's own login is used (DefaultAzureCredential: az login, environment, managed
identity).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

ENTRA_POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
MANAGEMENT_SCOPE = "https://management.azure.com/.default"
TOKEN_OVERRIDES = {MANAGEMENT_SCOPE: "TXMETRICS_DEPLOY_TOKEN_ARM", ENTRA_POSTGRES_SCOPE: "TXMETRICS_DEPLOY_TOKEN_POSTGRES"}
ARM_ENDPOINT_ENV = "TXMETRICS_ARM_ENDPOINT"       # tests point it at a local stand-in
POSTGRES_API_VERSION = "2024-08-01"
YOYO_TABLES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock")

Clock = Callable[[], float]
Sleep = Callable[[float], None]


def _entra_token(scope: str) -> str:
    """A token for the deploying identity and one audience. The per-audience override wins."""
    if os.environ.get("TXMETRICS_DEPLOY_TOKEN"):
        raise RuntimeError("TXMETRICS_DEPLOY_TOKEN is no longer read: a token is valid for one audience only; set "
                           "TXMETRICS_DEPLOY_TOKEN_ARM and/or TXMETRICS_DEPLOY_TOKEN_POSTGRES instead")
    override = os.environ.get(TOKEN_OVERRIDES[scope])
    if override:
        return override
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential().get_token(scope).token


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def text(self, limit: int = 1000) -> str:
        return self.body[:limit].decode("utf-8", "replace")


def _http(method: str, url: str, *, token: str, body: bytes | None = None, content_type: str | None = None,
          timeout: float = 120) -> HttpResponse:
    """One HTTP exchange; HTTP errors are answers, not exceptions (the callers decide what is transient)."""
    headers = {"Authorization": f"Bearer {token}", "Cache-Control": "no-cache"}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResponse(int(response.status), {k.lower(): v for k, v in response.headers.items()},
                                response.read())
    except urllib.error.HTTPError as exc:
        return HttpResponse(exc.code, {k.lower(): v for k, v in (exc.headers or {}).items()}, exc.read())


# ------------------------------------------------------------------------------ Azure Resource Manager

@dataclass
class Arm:
    """The few ARM calls the migration step makes, with ARM's asynchronous-operation protocol: a 201/202
    answer names an `Azure-AsyncOperation` (or `Location`) URL to poll until the status is Succeeded,
    Failed or Canceled, honouring Retry-After (Learn, "Track asynchronous Azure operations"). A fresh
    Flexible Server refuses concurrent writes with 409 ServerIsBusy (Azure/azure-postgresql#134): that,
    429 and 5xx are retried until `timeout`."""
    endpoint: str = field(default_factory=lambda: os.environ.get(ARM_ENDPOINT_ENV, "https://management.azure.com"))
    timeout: float = 1800
    poll_interval: float = 5
    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = path if path.startswith("http") else f"{self.endpoint.rstrip('/')}{path}"
        deadline = self.clock() + self.timeout
        data = json.dumps(body).encode() if body is not None else None
        while True:
            response = _http(method, url, token=_entra_token(MANAGEMENT_SCOPE), body=data,
                             content_type="application/json" if data is not None else None)
            if response.status in (200, 201, 202, 204):
                return self._finish(method, url, response, deadline)
            error = (response.json() or {}).get("error", {}) if isinstance(response.json(), dict) else {}
            busy = response.status in (429, 500, 502, 503, 504) or (
                response.status == 409 and error.get("code") in ("ServerIsBusy", "OperationInProgress",
                                                                  "AnotherOperationInProgress"))
            if busy and self.clock() < deadline:
                self.sleep(self._retry_after(response))
                continue
            raise RuntimeError(f"Azure refused {method} {path.split('?')[0]}: HTTP {response.status} "
                               f"{error.get('code', '')}: {error.get('message') or response.text()}")

    def _retry_after(self, response: HttpResponse) -> float:
        try:
            return min(float(response.headers.get("retry-after", self.poll_interval)), 60.0)
        except ValueError:
            return self.poll_interval

    def _finish(self, method: str, url: str, response: HttpResponse, deadline: float) -> Any:
        operation = response.headers.get("azure-asyncoperation")
        location = response.headers.get("location")
        if response.status in (200, 204) or not (operation or location):
            return response.json()
        while True:
            if self.clock() > deadline:
                raise RuntimeError(f"{method} {url.split('?')[0]} did not finish within {self.timeout:.0f} s")
            self.sleep(self._retry_after(response))
            poll = _http("GET", operation or location or "", token=_entra_token(MANAGEMENT_SCOPE))
            if operation:
                state = (poll.json() or {}).get("status", "") if poll.status == 200 else "InProgress"
                if state == "Succeeded":
                    return _http("GET", url, token=_entra_token(MANAGEMENT_SCOPE)).json() if method != "DELETE" else None
                if state in ("Failed", "Canceled"):
                    error = (poll.json() or {}).get("error") or {}
                    raise RuntimeError(f"{method} {url.split('?')[0]} ended {state}: {error.get('code', '')}: "
                                       f"{error.get('message', poll.text())}")
            elif poll.status != 202:
                return poll.json()
            response = poll


def deployer_rule_name(ip: str) -> str:
    return "txmetrics-migration-" + ip.replace(".", "-")


def _migration_rules(arm: Arm, server_id: str, api: str) -> list[str]:
    """The names of the server's firewall rules this step makes (any deployer address), following
    the list's nextLink pages (Firewall Rules - List By Server: {"value": [...], "nextLink": ...})."""
    names: list[str] = []
    page: Any = arm.call("GET", f"{server_id}/firewallRules?{api}") or {}
    while True:
        names += [str(r.get("name")) for r in page.get("value") or []
                  if str(r.get("name", "")).startswith(deployer_rule_name(""))]
        if not page.get("nextLink"):
            return names
        page = arm.call("GET", page["nextLink"]) or {}


@contextmanager
def temporary_deployer_access(arm: Arm, server_id: str, deployer_ip: str) -> Iterator[None]:
    """Public access on, and a firewall rule for the deployer's address only, for the duration of the
    block; both closed again afterwards, also when the block fails. Password login is off on the server,
    so what the window admits is one address presenting a valid Entra token, over TLS.

    Closing leaves the server as the private stack declares it whatever it found: public access off,
    and no firewall rule of this step left, for any address. A run killed inside the window (Ctrl-C,
    a CI timeout) leaves it open with its rule; the next run finds the server public and must still
    close it, and the killed run's deployer may have had another address (found by a review)."""
    api = f"api-version={POSTGRES_API_VERSION}"
    rule = f"{server_id}/firewallRules/{deployer_rule_name(deployer_ip)}?{api}"
    server = arm.call("GET", f"{server_id}?{api}") or {}
    was_public = ((server.get("properties") or {}).get("network") or {}).get("publicNetworkAccess") == "Enabled"
    try:
        if not was_public:
            arm.call("PATCH", f"{server_id}?{api}", {"properties": {"network": {"publicNetworkAccess": "Enabled"}}})
        arm.call("PUT", rule, {"properties": {"startIpAddress": deployer_ip, "endIpAddress": deployer_ip}})
        yield
    finally:
        problems = []
        try:
            stale = _migration_rules(arm, server_id, api)
        except Exception as exc:
            problems.append(f"list firewall rules: {exc}")
            stale = []
        for name in dict.fromkeys([deployer_rule_name(deployer_ip), *stale]):
            try:
                arm.call("DELETE", f"{server_id}/firewallRules/{name}?{api}")
            except Exception as exc:
                problems.append(f"delete firewall rule {name}: {exc}")
        try:
            arm.call("PATCH", f"{server_id}?{api}", {"properties": {"network": {"publicNetworkAccess": "Disabled"}}})
        except Exception as exc:
            problems.append(f"disable public network access: {exc}")
        if problems:
            raise RuntimeError(f"the deployer's temporary access to {server_id} could not be closed "
                               f"({'; '.join(problems)}); close it by hand (Azure portal, the server's Networking "
                               "page), or run pulumi up again")


# ------------------------------------------------------------------------------ migrations

def app_role_name(identity_name: str, principal_id: str) -> str:
    """The function's PostgreSQL role. It carries the identity's object id, so a replaced identity (new
    object id) gets a new role mapped to it, never an old role still mapped to a deleted principal."""
    return f"{identity_name}-{principal_id.replace('-', '')[:8]}"


def with_password(url: str, password: str) -> str:
    """The URL with `password` set, unless it already has one (local tests)."""
    parts = urlsplit(url)
    if parts.password is not None or parts.username is None:
        return url
    netloc = f"{quote(unquote(parts.username), safe='')}:{quote(password, safe='')}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def wait_for_connection(url: str, timeout: float = 180, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
    """A new firewall rule takes effect after a short while: retry the first connection, bounded."""
    import psycopg

    deadline = clock() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=10):
                return
        except psycopg.OperationalError as exc:
            if clock() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept the deployer's connection within {timeout:.0f} s: "
                                   f"{exc}") from None
            sleep(5)


def ensure_app_role(admin_url: str, entra_admin_url: str, identity_name: str, object_id: str) -> dict[str, Any]:
    """The function identity's role: an Entra principal mapped to the identity's current object id
    (`pgaadauth_create_principal_with_oid`; Learn, "Manage Microsoft Entra roles in Azure Database for
    PostgreSQL"), data privileges only (no DDL, nothing on yoyo's bookkeeping tables). Roles of earlier
    identities (same identity name, another object id) are dropped when the administrator may."""
    import psycopg

    role = app_role_name(identity_name, object_id)
    prefix = f"{identity_name}-"
    with psycopg.connect(entra_admin_url, autocommit=True) as conn:
        principals = {str(r[0]): str(r[2]) for r in conn.execute("SELECT * FROM pgaadauth_list_principals(false)")}
        if role not in principals:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                raise RuntimeError(f"PostgreSQL role {role!r} exists but is not an Entra principal; drop it (DROP "
                                   "ROLE) and run pulumi up again")
            conn.execute("SELECT * FROM pgaadauth_create_principal_with_oid(%s, %s, 'service', false, false)",
                         (role, object_id))
        elif principals[role].lower() != object_id.lower():
            raise RuntimeError(f"PostgreSQL role {role!r} maps to object id {principals[role]}, not to the identity's "
                               f"{object_id}; drop the role (DROP ROLE) and run pulumi up again")
        stale = sorted(r for r in principals if r.startswith(prefix) and r != role)
    ident = '"' + role.replace('"', '""') + '"'
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for statement in (
                f"GRANT CONNECT, TEMPORARY ON DATABASE \"{conn.info.dbname}\" TO {ident}",
                f"GRANT USAGE ON SCHEMA public TO {ident}",
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {ident}",
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {ident}",
                f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {ident}",
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {ident}",
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {ident}"):
            conn.execute(statement)
        # yoyo's bookkeeping is the deployer's alone: an app that could write it could mark migrations applied
        present = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND "
                                              "tablename = ANY(%s)", (list(YOYO_TABLES),))]
        for table in present:
            conn.execute(f'REVOKE ALL ON TABLE "{table}" FROM {ident}')
        kept = []
        for old in stale:
            # undo exactly what was granted (DROP OWNED would need the old role's privileges, which an
            # administrator holding only ADMIN OPTION on it lacks), then drop it
            old_ident = '"' + old.replace('"', '""') + '"'
            try:
                for statement in (
                        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {old_ident}",
                        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {old_ident}",
                        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {old_ident}",
                        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {old_ident}",
                        f"REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {old_ident}",
                        f"REVOKE ALL ON SCHEMA public FROM {old_ident}",
                        f"REVOKE ALL ON DATABASE \"{conn.info.dbname}\" FROM {old_ident}"):
                    conn.execute(statement)
                with psycopg.connect(entra_admin_url, autocommit=True) as admin:
                    admin.execute(f"DROP ROLE {old_ident}")
            except psycopg.Error:
                kept.append(old)   # e.g. no ADMIN option on it; harmless: its object id no longer exists
    return {"role": role, "stale_roles_kept": kept}


class SchemaMigrationProvider(ResourceProvider):
    DIFF_KEYS = ("digest", "database_url", "entra_admin_url", "server_id", "admin_object_id", "identity_name",
                 "app_object_id", "private", "deployer_ip")

    def _apply(self, props: dict[str, Any]) -> dict[str, Any]:
        from txmetrics import schema

        migrations_dir = Path(props["migrations_dir"])
        digest = schema.migrations_digest(migrations_dir)
        if digest != props["digest"]:
            raise RuntimeError(f"migrations in {migrations_dir} changed since the preview (digest {digest[:12]} != "
                               f"{props['digest'][:12]}); run pulumi up again")
        needs_token = any(urlsplit(props[k]).password is None for k in ("database_url", "entra_admin_url")
                          if props.get(k))
        token = _entra_token(ENTRA_POSTGRES_SCOPE) if needs_token else ""
        database_url = with_password(props["database_url"], token)
        entra_admin_url = with_password(props.get("entra_admin_url") or props["database_url"], token)
        with self._access(props):
            wait_for_connection(database_url, timeout=float(props.get("connect_timeout", 180)))
            applied = schema.apply_all(database_url, migrations_dir)
            role: dict[str, Any] = {}
            if props.get("identity_name") and props.get("app_object_id"):
                role = ensure_app_role(database_url, entra_admin_url, props["identity_name"], props["app_object_id"])
        return {**props, "applied": applied, "app_role": role.get("role"),
                "stale_roles_kept": role.get("stale_roles_kept", [])}

    @staticmethod
    def _access(props: dict[str, Any]) -> Any:
        if props.get("private"):
            return temporary_deployer_access(Arm(), props["server_id"], props["deployer_ip"])
        from contextlib import nullcontext

        return nullcontext()

    def create(self, props: dict[str, Any]) -> CreateResult:
        out = self._apply(props)
        return CreateResult(id_=f"schema-{props['digest'][:12]}", outs=out)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in self.DIFF_KEYS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], stables=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._apply(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The schema goes with the server; destroying this resource keeps the data."""


class SchemaMigration(pulumi.dynamic.Resource):
    applied: pulumi.Output[list[str]]
    app_role: pulumi.Output[str]

    def __init__(self, name: str, *, database_url: pulumi.Input[str], entra_admin_url: pulumi.Input[str],
                 migrations_dir: str, digest: str, server_id: pulumi.Input[str], admin_object_id: pulumi.Input[str],
                 identity_name: pulumi.Input[str], app_object_id: pulumi.Input[str], private: bool,
                 deployer_ip: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(SchemaMigrationProvider(), name, {
            "database_url": database_url, "entra_admin_url": entra_admin_url, "migrations_dir": migrations_dir,
            "digest": digest, "server_id": server_id, "admin_object_id": admin_object_id,
            "identity_name": identity_name, "app_object_id": app_object_id, "private": private,
            "deployer_ip": deployer_ip, "applied": None, "app_role": None, "stale_roles_kept": None}, opts)


# ------------------------------------------------------------------------------ code deployment

# Kudu's deployment status (Azure/azure-dev#3658, from the Functions team: the body of `/api/deployments/latest`
# and what each status means; the same enum as Azure/azure-functions-core-tools DeployStatus).
DEPLOY_STATUS = {-1: "Cancelled", 0: "Pending", 1: "Building", 2: "Deploying", 3: "Failed", 4: "Success",
                 5: "Conflict", 6: "PartialSuccess"}
SUCCESS = 4
FAILED_STATUSES = {-1, 3, 5, 6}


@dataclass
class PublishTimings:
    propagation_timeout: float = 600     # a new role assignment can take up to 10 minutes to apply
    deployment_timeout: float = 1200
    poll_interval: float = 2             # azd and the Azure CLI poll every 2 s
    retry_interval: float = 10
    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep


def _refused_until_propagation(response: HttpResponse) -> bool:
    """Refusals that pass once a fresh role assignment (or access rule) has propagated: 403 from the SCM
    site, and 400 carrying storage's 403 as a BlobUploadFailedException (Endjin,
    Publish-FlexConsumptionFunctionApp: "It happens when the role assignment for the app's identity on the
    storage account is new"). 409 is a deployment already under way; 429 and 5xx are the SCM site warming."""
    if response.status in (403, 409, 429, 500, 502, 503, 504):
        return True
    text = response.text(4000)
    return response.status == 400 and ("BlobUploadFailedException" in text or "403" in text)


def _latest(scm_url: str, token: str) -> HttpResponse:
    return _http("GET", f"{scm_url}/api/deployments/latest", token=token, timeout=60)


def _kudu_log(info: dict[str, Any], token: str) -> str:
    """The deployment log's messages, best effort (the status alone often says only 'Failed')."""
    url = info.get("log_url")
    if not url:
        return ""
    response = _http("GET", url, token=token, timeout=60)
    entries = response.json() if response.status == 200 else None
    if not isinstance(entries, list):
        return ""
    return " | ".join(str(e.get("message", "")).strip() for e in entries[-10:] if isinstance(e, dict))


def publish_zip(scm_url: str, zip_path: str, expected_sha256: str, timings: PublishTimings | None = None) -> dict[str, Any]:
    """Publish and follow the deployment to its end; raise with Kudu's message when it fails."""
    t = timings or PublishTimings()
    scm_url = scm_url.rstrip("/")
    data = Path(zip_path).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise RuntimeError(f"{zip_path} changed since the preview (sha256 {actual[:12]} != {expected_sha256[:12]}); "
                           "run pulumi up again")
    token = _entra_token(MANAGEMENT_SCOPE)
    before = _latest(scm_url, token)
    previous_id = (before.json() or {}).get("id") if before.status == 200 and isinstance(before.json(), dict) else None

    deadline = t.clock() + t.propagation_timeout
    attempts = 0
    while True:
        attempts += 1
        response = _http("POST", f"{scm_url}/api/publish?RemoteBuild=false", token=token, body=data,
                         content_type="application/zip", timeout=900)
        if response.status in (200, 202):
            break
        if _refused_until_propagation(response) and t.clock() < deadline:
            t.sleep(t.retry_interval)
            continue
        waited = f" after {attempts} attempts over {t.propagation_timeout:.0f} s" if attempts > 1 else ""
        raise RuntimeError(f"OneDeploy to {scm_url} refused the package{waited}: HTTP {response.status} "
                           f"{response.text(500)}")
    body = response.text(200).strip().strip('"')
    deployment_id = body if body and " " not in body and len(body) <= 64 else None

    # Flex answers 202, or even 200, before the deployment has finished, and also for one that later fails
    # (Endjin; azure-pipelines-tasks#22316): only the deployment's status says how it ended.
    deadline = t.clock() + t.deployment_timeout
    last = "not yet registered"
    while True:
        poll = _latest(scm_url, token)
        info = poll.json() if poll.status == 200 else None
        if isinstance(info, dict) and (info.get("id") == deployment_id if deployment_id
                                       else info.get("id") not in (None, previous_id)):
            status = int(info.get("status", 0))
            last = f"{DEPLOY_STATUS.get(status, status)}" + (f": {info['status_text']}" if info.get("status_text") else "")
            if status == SUCCESS:
                return {"deployment_id": info.get("id"), "status": DEPLOY_STATUS[SUCCESS], "attempts": attempts}
            if status in FAILED_STATUSES:
                log = _kudu_log(info, token)
                raise RuntimeError(f"the Flex deployment {info.get('id')} to {scm_url} ended {last}"
                                   + (f"; Kudu log: {log}" if log else "")
                                   + f" (details: {info.get('log_url') or scm_url + '/api/deployments/latest'})")
        elif poll.status not in (200, 403, 404, 429, 500, 502, 503, 504):
            raise RuntimeError(f"the deployment status of {scm_url} answered HTTP {poll.status} {poll.text(300)}")
        if t.clock() > deadline:
            raise RuntimeError(f"the Flex deployment {deployment_id or ''} to {scm_url} did not finish within "
                               f"{t.deployment_timeout:.0f} s (last status: {last}); it may still complete: follow it "
                               f"at {scm_url}/api/deployments/latest, then run pulumi up again")
        t.sleep(t.poll_interval)


class CodeDeploymentProvider(ResourceProvider):
    DIFF_KEYS = ("sha256", "scm_url", "app_id")

    @staticmethod
    def _publish(props: dict[str, Any]) -> dict[str, Any]:
        d = PublishTimings()
        timings = PublishTimings(
            propagation_timeout=float(props.get("propagation_timeout", d.propagation_timeout)),
            deployment_timeout=float(props.get("deployment_timeout", d.deployment_timeout)),
            poll_interval=float(props.get("poll_interval", d.poll_interval)),
            retry_interval=float(props.get("retry_interval", d.retry_interval)))
        result = publish_zip(props["scm_url"], props["zip_path"], props["sha256"], timings)
        return {**props, "deployment_id": result["deployment_id"]}

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"code-{props['sha256'][:12]}", outs=self._publish(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in self.DIFF_KEYS if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], stables=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._publish(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The code goes with the app."""


class CodeDeployment(pulumi.dynamic.Resource):
    def __init__(self, name: str, *, scm_url: pulumi.Input[str], app_id: pulumi.Input[str], zip_path: str, sha256: str,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(CodeDeploymentProvider(), name, {"scm_url": scm_url, "app_id": app_id, "zip_path": zip_path,
                                                          "sha256": sha256, "deployment_id": None}, opts)
