"""Plain helpers shared by the tests (no fixtures, no pytest hooks: those live in conftest.py).

What the pipeline stored, read back the way the assertions compare it (`table_snapshot`,
`archive_rows`, `scalar`), the tests' cleanup (`empty_tables`), and synthetic event corpora
cut into trigger batches and sent to the function (`synthetic`, `by_partition`, `cut`, `send_batch`).
The other helper modules are listed in docs/testing.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, LiteralString
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from localdev.eventhub import make_batch
from localdev.synth import Generator, SyntheticEvent
from txmetrics.adapters.blob import BlobArchive
from txmetrics.compaction import compact_day
from txmetrics.core.tables import TABLES

ROOT = Path(__file__).resolve().parent.parent

# every table a test can fill: each test starts from an empty pipeline, whatever ran before it
DATA_TABLES = tuple(t.name for t in TABLES)


def empty_tables(conn: psycopg.Connection) -> None:
    """Every data table emptied (what the `db` fixture does before each test)."""
    conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")


def scalar(conn: psycopg.Connection, sql: LiteralString, params: Sequence[Any] = ()) -> Any:
    """The first column of the one row a query returns (an aggregate such as count(*))."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None, f"no row from {sql!r}"
    return row[0]


def send_batch(fn: Callable[[list[Any]], None], partition: str, events: Sequence[SyntheticEvent]) -> None:
    """The events as one trigger batch (their sequence numbers and enqueued times) to the function."""
    fn(make_batch([e.body for e in events], partition_id=partition,
                  sequence_numbers=[e.sequence_number for e in events],
                  enqueued_times=[e.enqueued_at for e in events]))


def partitions(conn: psycopg.Connection, table: str) -> list[str]:
    """The names of a partitioned table's partitions (day partitions: `<table>_pYYYYMMDD`), sorted."""
    return [r[0] for r in conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                       "WHERE i.inhparent = %s::regclass ORDER BY 1", (table,)).fetchall()]


def with_database(url: str, name: str) -> str:
    """The same server URL, another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


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
            "SELECT event_key, occurred_at, dimension_key FROM ingested_events ORDER BY 1, 2").fetchall(),
    }


def ledger_event_ids(conn: psycopg.Connection, candidates: Iterable[str]) -> set[str]:
    """Which of `candidates` the ledger holds (it stores their keys, txm_event_key, not the
    ids); the ledger holding no other event is for the caller to check by count."""
    return {r[0] for r in conn.execute(
        "SELECT c FROM unnest(%s::text[]) AS c WHERE EXISTS "
        "(SELECT 1 FROM ingested_events WHERE event_key = txm_event_key(c))", (list(candidates),))}


def archive_rows(archive: BlobArchive) -> list[tuple[Any, ...]]:
    """All rows of all Parquet files in the archive, as (partition, seq, event_id, payload)."""
    from txmetrics.adapters import parquet

    rows: list[tuple[Any, ...]] = []
    for blob in archive.list("raw_events/"):
        table = parquet.decode(archive.download(blob.name))
        rows.extend(zip(table["partition_id"].to_pylist(), table["sequence_number"].to_pylist(),
                        table["event_id"].to_pylist(), table["payload"].to_pylist(), strict=True))
    return sorted(rows)


def by_partition(events: Iterable[SyntheticEvent]) -> dict[str, list[SyntheticEvent]]:
    """Events grouped by their Event Hubs partition, in order."""
    per: dict[str, list[SyntheticEvent]] = {}
    for e in events:
        per.setdefault(e.partition_id, []).append(e)
    return per


def synthetic(n: int = 1200, partitions: int = 3, seed: int = 5) -> dict[str, list[SyntheticEvent]]:
    """Events per partition over two hours spanning midnight, with bad events and card numbers."""
    gen = Generator(seed=seed, partitions=partitions, merchants=20, bad_rate=0.05, card_number_rate=0.02,
                    start=datetime(2026, 3, 1, 23, 0, tzinfo=UTC), days=2 / 24)   # spans midnight
    return by_partition(gen.events(n))


def cut(events: list[SyntheticEvent], size: int, offset: int = 0) -> list[list[SyntheticEvent]]:
    """Consecutive batches of `size`, the first one `offset` events shorter (re-cut boundaries)."""
    first = size - offset if offset else size
    out = [events[:first]]
    out += [events[i:i + size] for i in range(first, len(events), size)]
    return [b for b in out if b]


MONTH_START = datetime(2026, 3, 1, tzinfo=UTC)


def ingest_month(ingest_fn: Callable[..., None], n: int = 2400, batch: int = 40) -> list[SyntheticEvent]:
    """`n` valid events over March 2026 (from MONTH_START) on two partitions, sent to the
    function in batches of `batch`; returns the events."""
    gen = Generator(seed=31, partitions=2, merchants=10, bad_rate=0.0, start=MONTH_START, days=30)
    events = list(gen.events(n))
    for p, evs in by_partition(events).items():
        for i in range(0, len(evs), batch):
            chunk = evs[i:i + batch]
            ingest_fn(make_batch([e.body for e in chunk], partition_id=p,
                                 sequence_numbers=[e.sequence_number for e in chunk]))
    return events


def compact_killed_at(conn: psycopg.Connection, archive: BlobArchive, day: Any, step: str) -> None:
    """A compaction of `day` into one file, killed at its crash point `step` (the exception a
    kill raises)."""
    def killed(name: str) -> None:
        if name == step:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        compact_day(conn, archive, day, target_bytes=1 << 30, crash_hook=killed)


def join_filter_rejections(plan: dict[str, Any]) -> int:
    """Rows the join filters of an EXPLAIN (ANALYZE, FORMAT JSON) plan node compared and
    rejected, over the node and all below it: about left x right for a nested loop over
    unindexed sides, 0 for hash and merge joins."""
    own = int(plan.get("Rows Removed by Join Filter", 0)) * int(plan.get("Actual Loops", 1))
    return own + sum(join_filter_rejections(p) for p in plan.get("Plans", []))


@contextlib.contextmanager
def explaining(conn: psycopg.Connection, marker: str) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Inside: each statement run on `conn` whose text holds `marker` is first run under
    EXPLAIN (ANALYZE, FORMAT JSON) where it runs (its transaction, its settings), and
    (its text, its plan) appended to the list yielded. A statement_timeout of 120 s makes a
    regression fail instead of hanging the suite."""
    plans: list[tuple[str, dict[str, Any]]] = []
    execute = conn.execute

    def explained(sql: Any, params: Any = None, **kw: Any) -> Any:
        if isinstance(sql, str) and marker in sql:
            (plan,), = execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
            plans.append((sql, plan))
        return execute(sql, params, **kw)

    execute("SET statement_timeout = '120s'")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conn, "execute", explained)
        yield plans
    execute("RESET statement_timeout")
