"""The custom deployment steps, tested directly against real local services: the migration
provider against PostgreSQL (with the Entra administrator's token as password, and stand-ins of
Azure's documented pgaadauth functions), the code deployer against a local HTTP server that
behaves like Flex Consumption's SCM site, the private server's temporary access window against a
local stand-in of Azure Resource Manager (tests/azure_standins.py, sources there), and the
bundle's contents and reproducibility."""

from __future__ import annotations

import hashlib
import io
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from infra import bundle
from infra.providers import (
    Arm,
    CodeDeploymentProvider,
    SchemaMigrationProvider,
    app_role_name,
    deployer_rule_name,
    temporary_deployer_access,
)
from localdev.services import LocalServices
from tests.azure_standins import SERVER_ID, ArmStandIn, FlexScm, serve
from txmetrics import schema

# ------------------------------------------------------------------ PostgreSQL as Azure presents it

# Stand-ins of the functions Azure Database for PostgreSQL provides for Entra principals, with the documented
# signatures (Learn, "Manage Microsoft Entra roles in Azure Database for PostgreSQL": pgaadauth_list_principals
# returns TABLE(rolename name, principalType text, objectId text, tenantId text, isMfa integer, isAdmin integer);
# pgaadauth_create_principal_with_oid(roleName, objectId, objectType, isAdmin, isMfa) creates a login role).
PGAADAUTH_STAND_IN = """
CREATE SCHEMA IF NOT EXISTS stand_in;
CREATE TABLE IF NOT EXISTS stand_in.principals (rolename name PRIMARY KEY, objectid text NOT NULL,
                                                principaltype text NOT NULL);
CREATE OR REPLACE FUNCTION public.pgaadauth_list_principals(isadminvalue boolean)
RETURNS TABLE(rolename name, principaltype text, objectid text, tenantid text, ismfa integer, isadmin integer)
LANGUAGE sql AS $$
  SELECT p.rolename, p.principaltype, p.objectid, 'tenant-123'::text, 0, 0
  FROM stand_in.principals p JOIN pg_roles r ON r.rolname = p.rolename WHERE NOT isadminvalue $$;
CREATE OR REPLACE FUNCTION public.pgaadauth_create_principal_with_oid(rolename text, objectid text, objecttype text,
                                                                      isadmin boolean, ismfa boolean)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('CREATE ROLE %I LOGIN', rolename);
  INSERT INTO stand_in.principals AS p VALUES ($1, $2, $3)
    ON CONFLICT ON CONSTRAINT principals_pkey DO UPDATE SET objectid = excluded.objectid;
  RETURN 'Created role for ' || rolename;
END $$;
"""


# Who owns the database the deployment creates (`flexibleServers/databases`, infra/database.py) is not
# documented. Databases made with CREATE DATABASE belong to their creator; the server's own `postgres`
# and templates belong to `azure_pg_admin`, the group Azure makes every administrator (password and
# Entra) a member of (Learn, "Security in Azure Database for PostgreSQL", and `\l` on a flexible
# server). So the tests that need it run both ways: owned by the administrator, and owned by a
# stand-in of azure_pg_admin with the administrator a member, where every ownership-only statement
# of the migrations and the migration step works through that membership.
DATABASE_OWNERS = ["administrator", "azure_pg_admin"]


@pytest.fixture
def entra_db(request: pytest.FixtureRequest, empty_db: str, services: LocalServices,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """An empty database owned by a non-superuser 'Entra administrator' (CREATEROLE, like a member of
    azure_pg_admin) that logs in with a token as password, or (param "azure_pg_admin") by a group role
    it is a member of; URLs without password, as the program builds them."""
    admin, token = f"admin_{uuid.uuid4().hex[:8]}", f"eyJ0eXAi.token-{uuid.uuid4().hex}.sig"
    group = f"azure_pg_admin_{uuid.uuid4().hex[:8]}" if getattr(request, "param", "administrator") == \
        "azure_pg_admin" else None
    dbname = urlsplit(empty_db).path.lstrip("/")
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{token}'")
        if group is None:
            conn.execute(f'ALTER DATABASE "{dbname}" OWNER TO {admin}')
        else:
            conn.execute(f"CREATE ROLE {group} NOLOGIN CREATEROLE")
            conn.execute(f"GRANT {group} TO {admin}")
            conn.execute(f'ALTER DATABASE "{dbname}" OWNER TO {group}')
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(PGAADAUTH_STAND_IN)
        conn.execute(f"GRANT USAGE ON SCHEMA stand_in TO {admin}; GRANT ALL ON stand_in.principals TO {admin}")
    parts = urlsplit(empty_db)
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    url = urlunsplit(parts._replace(netloc=f"{admin}@{host}"))
    monkeypatch.setenv("TXMETRICS_DEPLOY_TOKEN_POSTGRES", token)
    monkeypatch.delenv("TXMETRICS_DEPLOY_TOKEN", raising=False)
    yield {"url": url, "admin": admin, "superuser_url": empty_db, "token": token}
    with psycopg.connect(empty_db, autocommit=True) as conn:     # roles are cluster-wide: leave none behind
        roles = [r[0] for r in conn.execute("SELECT p.rolename FROM stand_in.principals p JOIN pg_roles r "
                                            "ON r.rolname = p.rolename")]
        owners = [admin] if group is None else [admin, group]
        conn.execute(f"REASSIGN OWNED BY {', '.join(owners)} TO CURRENT_USER")
        for role in [*roles, *owners]:
            conn.execute(f'DROP OWNED BY "{role}"')
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        for role in [*roles, *owners]:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def props(db: dict[str, str], migrations: Path, **extra: Any) -> dict[str, Any]:
    return {"database_url": db["url"], "entra_admin_url": db["url"], "migrations_dir": str(migrations),
            "digest": schema.migrations_digest(migrations), "server_id": SERVER_ID, "admin_object_id": "admin-oid",
            "private": False, "deployer_ip": "93.184.216.34", "connect_timeout": 5, **extra}


@pytest.mark.parametrize("entra_db", DATABASE_OWNERS, indirect=True)
def test_migrations_run_as_the_entra_admin_with_its_token_and_diff_on_content(entra_db: dict[str, str],
                                                                               tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, migrations)
    provider = SchemaMigrationProvider()
    first = props(entra_db, migrations)
    created = provider.create(first)
    assert created.outs["applied"] == sorted(p.stem for p in migrations.glob("*.sql") if ".rollback" not in p.name)
    assert "token" not in str(created.outs)                      # the token never lands in the state
    with psycopg.connect(entra_db["superuser_url"]) as conn:     # the admin owns what it created
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'failed_items'").fetchone() == \
            (entra_db["admin"],)

    unchanged = props(entra_db, migrations)
    assert provider.diff(created.id, created.outs, unchanged).changes is False
    (migrations / "0099.add-note.sql").write_text(
        "-- depends: 0003.app-role-support\nALTER TABLE failed_items ADD COLUMN IF NOT EXISTS note text;\n")
    (migrations / "0099.add-note.rollback.sql").write_text("ALTER TABLE failed_items DROP COLUMN IF EXISTS note;\n")
    changed = props(entra_db, migrations)
    assert provider.diff(created.id, created.outs, changed).changes is True
    assert provider.update(created.id, created.outs, changed).outs["applied"] == ["0099.add-note"]


def test_the_token_becomes_the_password_of_the_admin_url() -> None:
    # (the local test server trusts local connections, so the login above cannot check the password itself)
    from infra.providers import with_password

    url = "postgresql://dana%40contoso.example@pg.postgres.database.azure.com:5432/txmetrics?sslmode=require"
    with_token = with_password(url, "eyJ.a-b_c.d")
    parts = urlsplit(with_token)
    assert (parts.username, parts.password, parts.hostname, parts.port) == (
        "dana%40contoso.example", "eyJ.a-b_c.d", "pg.postgres.database.azure.com", 5432)
    assert parts.query == "sslmode=require"
    assert with_password("postgresql://u:local@h/db", "token") == "postgresql://u:local@h/db"


def test_an_unreachable_server_fails_with_a_clear_message(entra_db: dict[str, str]) -> None:
    parts = urlsplit(entra_db["url"])
    closed = urlunsplit(parts._replace(netloc=f"{entra_db['admin']}@127.0.0.1:9"))      # nothing listens on 9
    with pytest.raises(RuntimeError, match="did not accept the deployer's connection within 0 s"):
        SchemaMigrationProvider().create({**props(entra_db, schema.MIGRATIONS_DIR), "database_url": closed,
                                          "entra_admin_url": closed, "connect_timeout": 0})


# Issue 12, item 6: the steps re-run when what they act on is replaced: their diff includes it
@pytest.mark.parametrize("key, value", [("server_id", SERVER_ID + "-new"), ("app_object_id", "new-object-id"),
                                        ("identity_name", "other-identity"), ("admin_object_id", "other-admin"),
                                        ("private", True)])
def test_the_migration_step_diffs_on_what_it_acts_on(key: str, value: Any) -> None:
    old = {"digest": "d", "database_url": "u", "server_id": SERVER_ID, "app_object_id": "oid", "identity_name": "id",
           "admin_object_id": "admin", "private": False}
    assert SchemaMigrationProvider().diff("x", old, dict(old)).changes is False
    assert SchemaMigrationProvider().diff("x", old, {**old, key: value}).changes is True


def test_migration_provider_refuses_migrations_changed_since_the_preview(entra_db: dict[str, str],
                                                                         tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, migrations)
    planned = props(entra_db, migrations)
    (migrations / "0099.late.sql").write_text("SELECT 1;\n")
    with pytest.raises(RuntimeError, match="changed since the preview"):
        SchemaMigrationProvider().create(planned)


@pytest.mark.parametrize("entra_db", DATABASE_OWNERS, indirect=True)
def test_the_app_role_maps_the_identity_with_data_privileges_only(entra_db: dict[str, str]) -> None:
    identity, oid = f"txm-t-{uuid.uuid4().hex[:6]}-func-id", str(uuid.uuid4())
    out = SchemaMigrationProvider().create(props(entra_db, schema.MIGRATIONS_DIR, identity_name=identity,
                                                 app_object_id=oid)).outs
    role = app_role_name(identity, oid)
    assert out["app_role"] == role
    with psycopg.connect(entra_db["superuser_url"]) as conn:
        assert conn.execute("SELECT objectid FROM pgaadauth_list_principals(false) WHERE rolename = %s",
                            (role,)).fetchone() == (oid,)
        q = lambda sql: conn.execute(sql, (role,)).fetchone()[0]  # noqa: E731
        assert q("SELECT has_table_privilege(%s, 'dynamic_metrics', 'INSERT')") is True
        assert q("SELECT has_table_privilege(%s, 'aggregate_histograms', 'UPDATE')") is True
        assert q("SELECT has_sequence_privilege(%s, 'raw_files_id_seq', 'USAGE')") is True
        assert q("SELECT has_database_privilege(%s, current_database(), 'CREATE')") is False
        assert q("SELECT pg_has_role(%s, 'pg_database_owner', 'MEMBER')") is False
        # item 7: yoyo's bookkeeping is the deployer's alone (an app that could write it could mark a
        # migration applied, or break the lock)
        for table in ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock"):
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                assert q(f"SELECT has_table_privilege(%s, '{table}', '{privilege}')") is False, (table, privilege)
        conn.execute(f'SET ROLE "{role}"')
        assert conn.execute("SELECT txm_ensure_day_partitions('dynamic_metrics', '2027-01-01', "
                            "'2027-01-01')").fetchone() == (1,)
        # a ledger day with its key (migration 0015: made by a function the app cannot call for itself)
        assert conn.execute("SELECT txm_ensure_day_partitions('ingested_events', '2027-01-01', "
                            "'2027-01-01')").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM pg_index WHERE indisunique "
                            "AND indrelid = 'ingested_events_p20270101'::regclass").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():     # a savepoint
            conn.execute("SELECT txm_ledger_day_key('failed_items'::regclass)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE failed_items")


def test_a_replaced_identity_gets_a_role_mapped_to_its_new_object_id(entra_db: dict[str, str]) -> None:
    identity = f"txm-t-{uuid.uuid4().hex[:6]}-func-id"
    old_oid, new_oid = str(uuid.uuid4()), str(uuid.uuid4())
    provider = SchemaMigrationProvider()
    first = provider.create(props(entra_db, schema.MIGRATIONS_DIR, identity_name=identity, app_object_id=old_oid))
    news = props(entra_db, schema.MIGRATIONS_DIR, identity_name=identity, app_object_id=new_oid)
    assert provider.diff(first.id, first.outs, news).changes is True
    updated = provider.update(first.id, first.outs, news).outs
    assert updated["app_role"] == app_role_name(identity, new_oid) != first.outs["app_role"]
    with psycopg.connect(entra_db["superuser_url"]) as conn:
        principals = dict(conn.execute("SELECT rolename, objectid FROM pgaadauth_list_principals(false)").fetchall())
        assert principals == {app_role_name(identity, new_oid): new_oid}   # the old identity's role is gone
        assert conn.execute("SELECT has_table_privilege(%s, 'dynamic_metrics', 'INSERT')",
                            (app_role_name(identity, new_oid),)).fetchone() == (True,)
    assert updated["stale_roles_kept"] == []


# ------------------------------------------------------------------ one credential override per audience (item 7)

def test_each_audience_has_its_own_token_and_the_shared_override_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.providers import ENTRA_POSTGRES_SCOPE, MANAGEMENT_SCOPE, _entra_token

    monkeypatch.setenv("TXMETRICS_DEPLOY_TOKEN_ARM", "arm-token")
    monkeypatch.setenv("TXMETRICS_DEPLOY_TOKEN_POSTGRES", "postgres-token")
    assert (_entra_token(MANAGEMENT_SCOPE), _entra_token(ENTRA_POSTGRES_SCOPE)) == ("arm-token", "postgres-token")
    monkeypatch.setenv("TXMETRICS_DEPLOY_TOKEN", "one-token-for-everything")
    with pytest.raises(RuntimeError, match="a token is valid for one audience only"):
        _entra_token(MANAGEMENT_SCOPE)


# ------------------------------------------------------------------ the private server's access window (item 5)

@pytest.fixture
def arm(monkeypatch: pytest.MonkeyPatch) -> Iterator[ArmStandIn]:
    stand_in = ArmStandIn()
    with serve(stand_in) as url:
        stand_in.base = url
        monkeypatch.setenv("TXMETRICS_ARM_ENDPOINT", url)
        monkeypatch.setenv("TXMETRICS_DEPLOY_TOKEN_ARM", "arm-token")
        monkeypatch.delenv("TXMETRICS_DEPLOY_TOKEN", raising=False)
        yield stand_in


def test_the_window_opens_for_the_deployer_only_and_closes_after(arm: ArmStandIn) -> None:
    rule = deployer_rule_name("93.184.216.34")
    with temporary_deployer_access(Arm(), SERVER_ID, "93.184.216.34"):
        assert arm.public == "Enabled"
        assert arm.rules == {rule: {"startIpAddress": "93.184.216.34", "endIpAddress": "93.184.216.34"}}
    assert (arm.public, arm.rules) == ("Disabled", {})
    assert arm.states == [("Enabled", ()), ("Enabled", (rule,)), ("Enabled", ()), ("Disabled", ())]
    writes = [(r.method, r.path.split("?")[0].rsplit("/", 1)[-1]) for r in arm.requests
              if r.method in ("PATCH", "PUT", "DELETE")]
    assert writes[0] == ("PATCH", "pg1") and writes[1] == ("PATCH", "pg1")   # ServerIsBusy once, then retried
    assert all(r.headers["Authorization"] == "Bearer arm-token" for r in arm.requests)


def test_the_window_closes_when_the_migrations_fail(arm: ArmStandIn) -> None:
    with pytest.raises(ValueError, match="migration broke"), \
            temporary_deployer_access(Arm(), SERVER_ID, "93.184.216.34"):
        raise ValueError("migration broke")
    assert (arm.public, arm.rules) == ("Disabled", {})


def test_a_window_a_killed_run_left_open_is_closed_by_the_next_run(arm: ArmStandIn) -> None:
    """A run killed inside the window leaves the server public with its rule (another address,
    the deployer's laptop of then); the next run must leave the server as the private stack
    declares it: public access off and no rule of this step, of any address. A review found
    the next run kept it public (it only closed what it had opened itself)."""
    arm.public = "Enabled"
    arm.rules = {deployer_rule_name("198.51.100.7"): {"startIpAddress": "198.51.100.7", "endIpAddress": "198.51.100.7"},
                 deployer_rule_name("198.51.100.8"): {"startIpAddress": "198.51.100.8", "endIpAddress": "198.51.100.8"},
                 "office": {"startIpAddress": "203.0.113.1", "endIpAddress": "203.0.113.1"}}
    with temporary_deployer_access(Arm(), SERVER_ID, "93.184.216.34"):
        assert deployer_rule_name("93.184.216.34") in arm.rules
    assert arm.public == "Disabled"
    assert list(arm.rules) == ["office"]                  # a rule this step did not make stays


def test_a_failed_azure_operation_fails_the_step_with_azures_message(arm: ArmStandIn) -> None:
    arm.fail_operation = "PUT"
    with pytest.raises(RuntimeError, match="ended Failed: InternalServerError: the operation failed"), \
            temporary_deployer_access(Arm(), SERVER_ID, "93.184.216.34"):
        pass
    assert arm.public == "Disabled"                       # closed again although the rule never came


def test_a_private_migration_runs_inside_the_window(arm: ArmStandIn, entra_db: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    original = schema.apply_all

    def apply_all(url: str, directory: Path) -> list[str]:
        seen.append((arm.public, len(arm.rules)))
        return original(url, directory)

    monkeypatch.setattr(schema, "apply_all", apply_all)
    out = SchemaMigrationProvider().create(props(entra_db, schema.MIGRATIONS_DIR, private=True)).outs
    assert seen == [("Enabled", 1)] and out["applied"]
    assert (arm.public, arm.rules) == ("Disabled", {})


# ------------------------------------------------------------------ Flex code deployment (item 3)

@pytest.fixture
def package(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "function.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("function_app.py", "import azure.functions as func\napp = func.FunctionApp()\n")
        zf.writestr("host.json", '{"version": "2.0"}')
    path.write_bytes(buffer.getvalue())
    return path, hashlib.sha256(buffer.getvalue()).hexdigest()


FAST = {"propagation_timeout": 5, "deployment_timeout": 5, "poll_interval": 0.01, "retry_interval": 0.01}


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXMETRICS_DEPLOY_TOKEN_ARM", "arm-token")
    monkeypatch.delenv("TXMETRICS_DEPLOY_TOKEN", raising=False)


def deploy(scm: FlexScm, package: tuple[Path, str], **timings: float) -> dict[str, Any]:
    with serve(scm) as url:
        scm.base = url
        inputs = {"scm_url": url, "app_id": "/subscriptions/s/sites/app", "zip_path": str(package[0]),
                  "sha256": package[1], **{**FAST, **timings}}
        return dict(CodeDeploymentProvider().create(inputs).outs)


def test_accepted_then_succeeded(package: tuple[Path, str], tokens: None) -> None:
    scm = FlexScm(publish=[(202, '"dep-1"')], statuses=[0, 1, 2, 4])
    outs = deploy(scm, package)
    assert outs["deployment_id"] == "dep-1"
    (post,) = scm.posts
    assert post.path == "/api/publish?RemoteBuild=false"
    assert post.headers["Authorization"] == "Bearer arm-token" and post.headers["Content-Type"] == "application/zip"
    assert hashlib.sha256(post.body).hexdigest() == package[1]
    assert len(scm.polls) == 1 + 4          # one look before the publish, then until Success


@pytest.mark.parametrize("accepted", [202, 200])
def test_accepted_then_failed_fails_with_kudus_message(package: tuple[Path, str], tokens: None, accepted: int) -> None:
    scm = FlexScm(publish=[(accepted, '"dep-1"')], statuses=[1, 2, 3],
                  status_text="Failed to deploy: package contains no function_app.py",
                  log=["Starting deployment", "Error: Failed to sync triggers: Host is not running (HTTP 503)"])
    with pytest.raises(RuntimeError) as err:
        deploy(scm, package)
    msg = str(err.value)
    assert "ended Failed: Failed to deploy: package contains no function_app.py" in msg
    assert "Error: Failed to sync triggers: Host is not running (HTTP 503)" in msg
    assert "/api/deployments/dep-1/log" in msg


def test_403_twice_then_success_is_retried(package: tuple[Path, str], tokens: None) -> None:
    scm = FlexScm(publish=[(403, "Ip Forbidden"), (403, "Ip Forbidden"), (202, '"dep-1"')], statuses=[2, 4])
    assert deploy(scm, package)["deployment_id"] == "dep-1"
    assert len(scm.posts) == 3


def test_a_fresh_role_assignment_400_is_retried(package: tuple[Path, str], tokens: None) -> None:
    refused = ("BlobUploadFailedException: Failed to upload blob to storage account: Response status code does not "
               "indicate success: 403 (This request is not authorized to perform this operation.)")
    scm = FlexScm(publish=[(400, refused), (202, '"dep-1"')], statuses=[4])
    assert deploy(scm, package)["deployment_id"] == "dep-1"
    assert len(scm.posts) == 2


def test_a_real_400_is_not_retried(package: tuple[Path, str], tokens: None) -> None:
    scm = FlexScm(publish=[(400, "The zip file is invalid: End of Central Directory record could not be found")])
    with pytest.raises(RuntimeError, match=r"refused the package: HTTP 400 The zip file is invalid"):
        deploy(scm, package)
    assert len(scm.posts) == 1


def test_propagation_retries_are_bounded(package: tuple[Path, str], tokens: None) -> None:
    scm = FlexScm(publish=[(403, "Forbidden")])
    with pytest.raises(RuntimeError) as err:
        deploy(scm, package, propagation_timeout=0.2, retry_interval=0.02)
    assert "refused the package after" in str(err.value) and "HTTP 403 Forbidden" in str(err.value)
    assert 2 <= len(scm.posts) < 100


def test_a_slow_deployment_is_polled_and_bounded_by_a_timeout(package: tuple[Path, str], tokens: None) -> None:
    scm = FlexScm(publish=[(202, '"dep-1"')], statuses=[1])        # Building, forever
    with pytest.raises(RuntimeError) as err:
        deploy(scm, package, deployment_timeout=0.3, poll_interval=0.02)
    msg = str(err.value)
    assert "did not finish within" in msg
    assert "last status: Building" in msg and "/api/deployments/latest" in msg
    assert len(scm.polls) >= 5


def test_a_previous_successful_deployment_is_not_mistaken_for_this_one(package: tuple[Path, str], tokens: None) -> None:
    # Flex may answer 200 with no id; /latest still shows the last deployment (Success) for a while
    scm = FlexScm(publish=[(200, "")], statuses=[3], status_text="Deployment failed",
                  previous={"id": "dep-0", "status": 4, "complete": True}, new_id="dep-1")
    with pytest.raises(RuntimeError, match=r"dep-1 .* ended Failed: Deployment failed"):
        deploy(scm, package)


def test_code_deployer_refuses_a_zip_changed_since_the_preview(tmp_path: Path, tokens: None) -> None:
    path = tmp_path / "f.zip"
    path.write_bytes(b"new bytes")
    scm = FlexScm()
    with pytest.raises(RuntimeError, match="changed since the preview"):
        deploy(scm, (path, "0" * 64))
    assert scm.requests == []


def test_the_code_step_diffs_on_the_package_the_host_and_the_app() -> None:
    old = {"sha256": "a" * 64, "scm_url": "https://h", "app_id": "/sites/app"}
    provider = CodeDeploymentProvider()
    assert provider.diff("x", old, dict(old)).changes is False
    for key, value in (("sha256", "b" * 64), ("scm_url", "https://other"), ("app_id", "/sites/app2")):
        assert provider.diff("x", old, {**old, key: value}).changes is True


# ------------------------------------------------------------------ the bundle

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[bundle.Bundle, bundle.Bundle]:
    out = tmp_path_factory.mktemp("bundle")
    site_packages = bundle.vendor(bundle.FUNCTIONS_DIR / "requirements.txt")
    first = bundle.build(out / "a.zip", bundle.FUNCTIONS_DIR, site_packages)
    second = bundle.build(out / "b.zip", bundle.FUNCTIONS_DIR, site_packages)
    return first, second


def test_the_bundle_is_reproducible_and_complete(built: tuple[bundle.Bundle, bundle.Bundle]) -> None:
    first, second = built
    assert first.path.read_bytes() == second.path.read_bytes() and first.sha256 == second.sha256
    names = set(zipfile.ZipFile(first.path).namelist())
    assert {"function_app.py", "host.json", "requirements.txt", "txmetrics/pipeline.py", "txmetrics/core/events.py",
            "txmetrics/catalog.yaml"} <= names
    site = bundle.SITE_PACKAGES
    for package in ("azure/functions/__init__.py", "psycopg/__init__.py", "pyarrow/__init__.py", "msgspec/__init__.py",
                    "azure/storage/blob/__init__.py", "yaml/__init__.py", "numpy/__init__.py", "requests/__init__.py"):
        assert f"{site}/{package}" in names, package
    assert any(n.startswith(f"{site}/psycopg_binary/") and n.endswith(".so") for n in names)
    assert any("x86_64" in n and n.endswith(".so") for n in names if n.startswith(f"{site}/pyarrow"))
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_the_whole_bundle_is_published(built: tuple[bundle.Bundle, bundle.Bundle], tokens: None) -> None:
    first, _ = built
    scm = FlexScm(publish=[(202, '"dep-9"')], statuses=[4], new_id="dep-9")
    deploy(scm, (first.path, first.sha256))
    (post,) = scm.posts
    assert hashlib.sha256(post.body).hexdigest() == first.sha256
    assert "function_app.py" in zipfile.ZipFile(io.BytesIO(post.body)).namelist()


@pytest.mark.parametrize("entra_db", DATABASE_OWNERS, indirect=True)
def test_the_function_runs_on_the_app_role_s_privileges_alone(entra_db: dict[str, str], services: LocalServices,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """In Azure the function logs in as the app role the migration step maps (Entra; data privileges only, day
    partitions and retention through the migrations' SECURITY DEFINER functions), not as an owner or a
    superuser like the rest of the suite: ingest (a redelivery and a bad event among them), the fold, the
    daily maintenance (compaction, rollups) and retention timers, and the dashboards' view, all as that role."""
    import json
    from datetime import UTC, datetime, timedelta
    from urllib.parse import quote

    from azure.functions.timer import TimerRequest
    from psycopg import sql

    from localdev.eventhub import make_batch
    from localdev.run import load_function
    from txmetrics import runtime

    identity, oid = f"txm-t-{uuid.uuid4().hex[:6]}-func-id", str(uuid.uuid4())
    role = SchemaMigrationProvider().create(props(entra_db, schema.MIGRATIONS_DIR, identity_name=identity,
                                                  app_object_id=oid)).outs["app_role"]
    password = f"token-{uuid.uuid4().hex}"         # stands in for the identity's Entra token
    with psycopg.connect(entra_db["superuser_url"], autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    parts = urlsplit(entra_db["url"])
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    app_url = urlunsplit(parts._replace(netloc=f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"))
    for key, value in {**services.env(), "DATABASE_URL": app_url,
                       "RAW_EVENTS_CONTAINER": f"raw-app-{uuid.uuid4().hex[:8]}"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("METRIC_CATALOG", raising=False)
    runtime.reset()
    try:
        old = datetime.combine(datetime.now(UTC).date() - timedelta(days=2), datetime.min.time(), tzinfo=UTC)
        bodies = [json.dumps({"event_id": f"a{i}", "transaction_id": "t", "merchant_id": "m", "amount": 1,
                              "occurred_at": (old + timedelta(hours=i)).isoformat(), "currency": "USD",
                              "payment_method": "card", "status": "approved"}) for i in range(3)]
        ingest = load_function("ingest")
        for i, body in enumerate(bodies):          # one small file per batch, all on an old day
            ingest(make_batch([body], partition_id="0", first_sequence=i))
        ingest(make_batch([bodies[0], b"not json"], partition_id="0", first_sequence=0))    # a redelivery, re-cut
        assert runtime.get_pipeline().store.connection().info.user == role    # not the suite's superuser
        load_function("fold_aggregates")(TimerRequest())
        with psycopg.connect(app_url) as conn:     # the dashboards' view, as the app role
            assert conn.execute("SELECT sum(transaction_count) FROM payment_metrics_5m").fetchone() == (3,)
        load_function("maintenance")(TimerRequest())
        with psycopg.connect(entra_db["superuser_url"]) as conn:
            q = lambda statement: conn.execute(statement).fetchone()  # noqa: E731
            assert q("SELECT count(*) FROM ingested_events") == (3,)
            assert q("SELECT count(*) FROM dynamic_metrics") == (6,)          # 3 events x amount, approved
            assert q("SELECT count(*) FROM failed_items") == (1,)
            assert q("SELECT count(*) FROM aggregate_deltas") == (0,)         # folded
            assert q("SELECT count(*) FROM raw_files WHERE state = 'uploaded'") == (1,)   # compacted
            assert q("SELECT count(*) FROM aggregate_rollups WHERE NOT stale") == (1,)
        monkeypatch.setenv("TXMETRICS_RETENTION", json.dumps({"dynamic_metrics": 1, "ingested_events": 1}))
        load_function("retention")(TimerRequest())
        with psycopg.connect(entra_db["superuser_url"]) as conn:
            assert conn.execute("SELECT count(*) FROM dynamic_metrics").fetchone() == (0,)   # older than 1 day
    finally:
        runtime.reset()
