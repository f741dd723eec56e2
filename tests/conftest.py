"""Shared fixtures: real PostgreSQL and Azurite, started once per test session.

Services come from localdev.services (DATABASE_URL / AZURE_STORAGE_CONNECTION_STRING if
set, else testcontainers when Docker answers, else embedded PostgreSQL and Azurite from
npm) and are stopped at the end of the session, also on failure or interruption.
Each test gets empty tables and its own blob container.
"""

from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "functions"))

from localdev.eventhub import make_batch  # noqa: E402
from localdev.services import LocalServices, ephemeral_services  # noqa: E402
from txmetrics import runtime, schema  # noqa: E402
from txmetrics.adapters.blob import BlobArchive, service_client  # noqa: E402
from txmetrics.core.tables import TABLES  # noqa: E402

# every table a test can fill: each test starts from an empty pipeline, whatever ran before it
DATA_TABLES = tuple(t.name for t in TABLES)


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
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
        yield conn


_container_ids = itertools.count()


@pytest.fixture
def container_name() -> str:
    return f"raw-{next(_container_ids)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def env(services: LocalServices, db: psycopg.Connection, container_name: str,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
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

    return load_function()  # type: ignore[no-any-return]


@pytest.fixture
def deliver(ingest_fn: Callable[[list[Any]], None]) -> Callable[..., None]:
    """deliver(bodies, partition_id=..., first_sequence=...): build a batch and call the function."""

    def _deliver(bodies: list[Any], **kwargs: Any) -> None:
        ingest_fn(make_batch(bodies, **kwargs))

    return _deliver


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def empty_db(services: LocalServices) -> Iterator[str]:
    """URL of a new, empty database on the test server (dropped afterwards)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(services.database_url, name)
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def table_snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every data table, in a stable order, without volatile columns."""
    return {
        "dynamic_metrics": conn.execute(
            "SELECT event_id, metric_name, value, occurred_at, merchant_id, payment_method, status, currency, country, "
            "event_type, dimensions FROM dynamic_metrics_wide ORDER BY 1, 2, 4").fetchall(),
        # as readers see them: folded rows + pending deltas (however the batches were cut)
        "aggregate_histograms": conn.execute(
            "SELECT metric_name, window_seconds, window_start, dimensions, count, sum, min, max, zero_count, "
            "pos_offset, pos_counts, neg_offset, neg_counts FROM aggregate_histograms_current "
            "ORDER BY 1, 2, 3, 4").fetchall(),
        "failed_items": conn.execute(
            "SELECT item_key, partition_id, sequence_number, error_code, detail, payload FROM failed_items "
            "ORDER BY 1").fetchall(),
        "ingested_events": conn.execute(
            "SELECT event_id, occurred_at, dimension_key FROM ingested_events ORDER BY 1, 2").fetchall(),
    }


def archive_rows(archive: BlobArchive) -> list[tuple[Any, ...]]:
    """All rows of all Parquet files in the archive, as (partition, seq, event_id, payload)."""
    from txmetrics.adapters import parquet

    rows = []
    for blob in archive.list("raw_events/"):
        table = parquet.decode(archive.download(blob.name))
        rows.extend(zip(table["partition_id"].to_pylist(), table["sequence_number"].to_pylist(),
                        table["event_id"].to_pylist(), table["payload"].to_pylist(), strict=True))
    return sorted(rows)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(ROOT / ".hypothesis"))
