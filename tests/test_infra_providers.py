"""The custom deployment steps, tested directly against real local services:
the migration provider against PostgreSQL, the code deployer against a local HTTP endpoint,
and the bundle's contents and reproducibility."""

from __future__ import annotations

import hashlib
import io
import shutil
import threading
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest

from infra import bundle
from infra.providers import CodeDeploymentProvider, SchemaMigrationProvider
from localdev.services import LocalServices
from txmetrics import schema


def props(url: str, migrations: Path, **extra: Any) -> dict[str, Any]:
    return {"database_url": url, "migrations_dir": str(migrations), "digest": schema.migrations_digest(migrations),
            **extra}


def test_migration_provider_create_update_and_diff(empty_db: str, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, migrations)
    provider = SchemaMigrationProvider()
    first = props(empty_db, migrations)
    created = provider.create(first)
    assert created.outs["applied"] == sorted(p.stem for p in migrations.glob("*.sql") if ".rollback" not in p.name)

    unchanged = props(empty_db, migrations)
    assert provider.diff(created.id, created.outs, unchanged).changes is False

    (migrations / "0099.add-note.sql").write_text(
        "-- depends: 0003.app-role-support\nALTER TABLE failed_items ADD COLUMN IF NOT EXISTS note text;\n")
    (migrations / "0099.add-note.rollback.sql").write_text("ALTER TABLE failed_items DROP COLUMN IF EXISTS note;\n")
    changed = props(empty_db, migrations)
    assert provider.diff(created.id, created.outs, changed).changes is True
    updated = provider.update(created.id, created.outs, changed)
    assert updated.outs["applied"] == ["0099.add-note"]
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'failed_items' "
                            "AND column_name = 'note'").fetchone() == (1,)


def test_migration_provider_refuses_migrations_changed_since_the_preview(empty_db: str, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, migrations)
    planned = props(empty_db, migrations)
    (migrations / "0099.late.sql").write_text("SELECT 1;\n")
    with pytest.raises(RuntimeError, match="changed since the preview"):
        SchemaMigrationProvider().create(planned)


def test_migration_provider_grants_the_app_role_data_privileges_only(empty_db: str, services: LocalServices) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')   # on Azure: an Entra principal, created by the provider
    try:
        SchemaMigrationProvider().create(props(empty_db, schema.MIGRATIONS_DIR, app_role=role))
        with psycopg.connect(empty_db) as conn:
            q = lambda sql: conn.execute(sql, (role,)).fetchone()[0]  # noqa: E731
            assert q("SELECT has_table_privilege(%s, 'dynamic_metrics', 'INSERT')") is True
            assert q("SELECT has_table_privilege(%s, 'aggregate_histograms', 'UPDATE')") is True
            assert q("SELECT has_sequence_privilege(%s, 'raw_files_id_seq', 'USAGE')") is True
            assert q("SELECT has_database_privilege(%s, current_database(), 'CREATE')") is False
            assert q("SELECT pg_has_role(%s, 'pg_database_owner', 'MEMBER')") is False
            conn.execute(f'SET ROLE "{role}"')
            # the app can create day partitions (SECURITY DEFINER) and write, but not change the schema
            assert conn.execute("SELECT txm_ensure_day_partitions('dynamic_metrics', '2027-01-01', "
                                "'2027-01-01')").fetchone() == (1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DROP TABLE failed_items")
    finally:
        with psycopg.connect(empty_db, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        _Recorder.received.append({"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length)})
        self.send_response(202)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scm_endpoint() -> Iterator[str]:
    _Recorder.received = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


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
                    "azure/storage/blob/__init__.py", "yaml/__init__.py", "numpy/__init__.py"):
        assert f"{site}/{package}" in names, package
    assert any(n.startswith(f"{site}/psycopg_binary/") and n.endswith(".so") for n in names)
    assert any("x86_64" in n and n.endswith(".so") for n in names if n.startswith(f"{site}/pyarrow"))
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_code_deployer_publishes_the_whole_zip(built: tuple[bundle.Bundle, bundle.Bundle], scm_endpoint: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = built
    monkeypatch.setenv("TXMETRICS_DEPLOY_TOKEN", "test-token")
    provider = CodeDeploymentProvider()
    inputs = {"scm_url": scm_endpoint, "zip_path": str(first.path), "sha256": first.sha256}
    created = provider.create(inputs)
    assert len(_Recorder.received) == 1
    request = _Recorder.received[0]
    assert request["path"] == "/api/publish?RemoteBuild=false"
    assert request["headers"]["Authorization"] == "Bearer test-token"
    assert request["headers"]["Content-Type"] == "application/zip"
    assert hashlib.sha256(request["body"]).hexdigest() == first.sha256
    assert "function_app.py" in zipfile.ZipFile(io.BytesIO(request["body"])).namelist()
    assert provider.diff(created.id, created.outs, dict(inputs)).changes is False
    assert provider.diff(created.id, created.outs, {**inputs, "sha256": "f" * 64}).changes is True


def test_code_deployer_refuses_a_zip_changed_since_the_preview(tmp_path: Path, scm_endpoint: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXMETRICS_DEPLOY_TOKEN", "test-token")
    path = tmp_path / "f.zip"
    path.write_bytes(b"new bytes")
    with pytest.raises(RuntimeError, match="changed since the preview"):
        CodeDeploymentProvider().create({"scm_url": scm_endpoint, "zip_path": str(path), "sha256": "0" * 64})
    assert _Recorder.received == []
