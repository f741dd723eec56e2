"""Shared fixtures: real PostgreSQL and Azurite, started once per test session.

Services come from localdev.services (DATABASE_URL / AZURE_STORAGE_CONNECTION_STRING if
set, else testcontainers when Docker answers, else embedded PostgreSQL and Azurite from
npm) and are stopped at the end of the session, also on failure or interruption.
Each test gets empty tables and its own blob container. Plain helpers (no fixtures) are in
tests/helpers.py; docs/testing.md lists the fixtures and the helper modules.
"""

from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from localdev.eventhub import make_batch
from localdev.services import LocalServices, ephemeral_services
from tests.helpers import ROOT, empty_tables, with_database
from txmetrics import runtime, schema
from txmetrics.adapters.blob import BlobArchive, service_client

sys.path.insert(0, str(ROOT / "functions"))     # function_app (the Functions entry point) lives there


@pytest.fixture(scope="session")
def services() -> Iterator[LocalServices]:
    svc = ephemeral_services()
    try:
        svc.start()
        schema.apply_all(svc.database_url)
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def db(services: LocalServices) -> Iterator[psycopg.Connection]:
    """A connection (autocommit) to the test database, every data table emptied first."""
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        empty_tables(conn)
        yield conn


_container_ids = itertools.count()


@pytest.fixture
def container_name() -> str:
    return f"raw-{next(_container_ids)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def env(services: LocalServices, db: psycopg.Connection, container_name: str,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The function's settings in the environment: the test's services, its own container,
    the bundled catalog; empty tables (through `db`), a fresh runtime before and after."""
    values = {**services.env(), "RAW_EVENTS_CONTAINER": container_name}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("METRIC_CATALOG", raising=False)
    runtime.reset()
    yield values
    runtime.reset()


@pytest.fixture
def archive(services: LocalServices, container_name: str) -> BlobArchive:
    return BlobArchive(service_client(services.storage_connection_string), container_name)


@pytest.fixture
def ingest_fn(env: dict[str, str]) -> Callable[[list[Any]], None]:
    """The real function entry point, called as the Functions host calls it."""
    from localdev.run import load_function

    function: Callable[[list[Any]], None] = load_function()
    return function


@pytest.fixture
def deliver(ingest_fn: Callable[[list[Any]], None]) -> Callable[..., None]:
    """deliver(bodies, partition_id=..., first_sequence=...): build a batch and call the function."""

    def _deliver(bodies: list[Any], **kwargs: Any) -> None:
        ingest_fn(make_batch(bodies, **kwargs))

    return _deliver


@pytest.fixture
def empty_db(services: LocalServices) -> Iterator[str]:
    """URL of a new, empty database on the test server (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(services.database_url, name)
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(ROOT / ".hypothesis"))
