"""Helpers of the lake tests (backfill, rebuild, schema evolution): a corpus spanning two
UTC days, catalogs with and without a metric added later, pipelines on the real services,
and snapshots of everything the database holds."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from localdev.bench_lake import catalogs_before_and_after
from localdev.services import LocalServices
from localdev.synth import Generator
from tests.helpers import by_partition, table_snapshot
from txmetrics.adapters.blob import BlobArchive, service_client
from txmetrics.adapters.postgres import PostgresStore
from txmetrics.core.catalog import Catalog, load_catalog
from txmetrics.core.events import InboundEvent
from txmetrics.pipeline import Pipeline

Batch = tuple[str, list[InboundEvent]]          # (partition, events)
DAY1, DAY2 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
RANGE = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC))


def write_catalogs(directory: Path) -> tuple[Path, Path]:
    """(the bundled catalog, the same plus risk_score): a metric added after ingest."""
    return catalogs_before_and_after(directory)


def corpus(n: int = 1200, *, seed: int = 15, partitions: int = 2, batch: int = 60,
           start: datetime = datetime(2026, 3, 1, 20, 0, tzinfo=UTC), hours: float = 8.0) -> list[Batch]:
    """Events from 20:00 on day 1 to 04:00 on day 2 (batches span midnight), a few bad ones,
    cut into trigger batches per partition."""
    gen = Generator(seed=seed, partitions=partitions, merchants=12, bad_rate=0.02, card_number_rate=0.02,
                    start=start, days=hours / 24)
    out: list[Batch] = []
    for p, events in sorted(by_partition(gen.events(n)).items()):
        for i in range(0, len(events), batch):
            out.append((p, [InboundEvent(e.body, p, e.sequence_number, e.sequence_number * 512, e.enqueued_at)
                            for e in events[i:i + batch]]))
    return out


def late_batches(n: int = 240, seed: int = 99) -> list[Batch]:
    """Late events for the same two days, on partition "9" (sequence numbers of their own)."""
    gen = Generator(seed=seed, partitions=1, merchants=12, bad_rate=0.0, start=datetime(2026, 3, 1, 21, 0, tzinfo=UTC),
                    days=6 / 24)
    events = [InboundEvent(e.body, "9", e.sequence_number, None, e.enqueued_at) for e in gen.events(n)]
    return [("9", events[i:i + 40]) for i in range(0, len(events), 40)]


def archive_for(services: LocalServices, container: str | None = None) -> BlobArchive:
    return BlobArchive(service_client(services.storage_connection_string),
                       container or f"lake-{uuid.uuid4().hex[:10]}")


def pipeline(services: LocalServices, archive: BlobArchive, catalog: Path | Catalog) -> Pipeline:
    cat = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
    return Pipeline(PostgresStore(services.database_url), archive, cat)


def ingest(p: Pipeline, batches: Sequence[Batch]) -> None:
    for partition, events in batches:
        p.process(partition, events)


def manifest_rows(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """The live files as (path, state, rows, seq range, time range, sorted metrics)."""
    rows = conn.execute(
        "SELECT path, state, row_count, seq_min, seq_max, occurred_min, occurred_max, metrics FROM raw_files "
        "WHERE state <> 'superseded' ORDER BY path").fetchall()
    return [(*r[:7], None if r[7] is None else sorted(r[7])) for r in rows]


def snapshot(conn: psycopg.Connection, *, failed: bool = True) -> dict[str, Any]:
    """Every row the pipeline stores, as readers see it (aggregates: folded + pending), the
    event dimensions and the manifest's live files."""
    snap: dict[str, Any] = dict(table_snapshot(conn))
    if not failed:
        snap.pop("failed_items")
    snap["event_dimensions"] = conn.execute(
        "SELECT dimension_key, merchant_id, payment_method, status, currency, country, event_type, dimensions "
        "FROM event_dimensions ORDER BY 1").fetchall()
    snap["raw_files"] = manifest_rows(conn)
    return snap


def folded_aggregates(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """aggregate_histograms after a fold: one row per key, nothing pending."""
    conn.execute("SELECT txm_fold_aggregates()")
    return conn.execute(
        "SELECT metric_name, window_seconds, window_start, dimensions, count, sum, min, max, zero_count, pos_offset, "
        "pos_counts, neg_offset, neg_counts FROM aggregate_histograms WHERE window_seconds = 300 "
        "ORDER BY 1, 2, 3, 4").fetchall()


def metric_counts(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT metric_name, count(*) FROM dynamic_metrics GROUP BY 1").fetchall())
