"""The raw-file manifest (raw_files) and the day partitions, as backfill and rebuild read and
write them (txmetrics/backfill.py, txmetrics/rebuild.py; docs/lake.md).

Every write here happens inside a batch transaction (PostgresStore.batch) together with the
rows and deltas it records, so the manifest says exactly what the tables hold:
`add_metric` commits with the metric's rows and deltas of a file's events, and
`insert_rebuilt_file` with the ledger rows, metric rows and deltas of a rebuilt file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

import psycopg

from ..core.events import PaymentEvent
from ..core.naming import datetime_to_us, us_to_datetime

LIVE_STATES = ("uploaded", "pending")


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """A live raw file: its id, where it is, its UTC day, the metrics its events already
    have (None: written before migration 0009, unknown), and its bytes while its upload is
    not confirmed yet (state 'pending': the outbox holds them)."""

    id: int
    path: str
    state: str
    event_date: date
    metrics: tuple[str, ...] | None
    row_count: int
    outbox: bytes | None


def files_lacking_metric(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime
                         ) -> list[ManifestFile]:
    """Live files that can hold events in [start, end) and whose events do not all have
    `metric` yet (or may not: files written before the record existed), in time order."""
    rows = conn.execute(
        """SELECT f.id, f.path, f.state, f.event_date, f.metrics, f.row_count, o.content
             FROM raw_files f LEFT JOIN raw_file_outbox o ON o.raw_file_id = f.id
            WHERE f.state IN ('uploaded', 'pending')
              AND f.event_date BETWEEN (%(start)s AT TIME ZONE 'UTC')::date AND (%(end)s AT TIME ZONE 'UTC')::date
              AND f.occurred_max >= %(start)s AND f.occurred_min < %(end)s
              AND (f.metrics IS NULL OR NOT %(metric)s = ANY (f.metrics))
            ORDER BY f.event_date, f.occurred_min, f.id""",
        {"start": start, "end": end, "metric": metric}).fetchall()
    return [ManifestFile(int(r[0]), str(r[1]), str(r[2]), r[3], None if r[4] is None else tuple(r[4]), int(r[5]),
                         None if r[6] is None else bytes(r[6])) for r in rows]


def lock_file(conn: psycopg.Connection, file_id: int) -> tuple[str, tuple[str, ...] | None] | None:
    """Lock a file's manifest row for this transaction; its (state, metrics), or None when it
    is gone. Two backfills of one file take turns here; the second then sees the first's
    metric and skips the file."""
    row = conn.execute("SELECT state, metrics FROM raw_files WHERE id = %s FOR UPDATE", (file_id,)).fetchone()
    if row is None:
        return None
    return str(row[0]), None if row[1] is None else tuple(row[1])


def add_metric(conn: psycopg.Connection, file_id: int, metric: str) -> None:
    conn.execute("UPDATE raw_files SET metrics = array_append(metrics, %s) WHERE id = %s "
                 "AND metrics IS NOT NULL AND NOT %s = ANY (metrics)", (metric, file_id, metric))


def events_with_metric(conn: psycopg.Connection, *, metric: str, events: Sequence[PaymentEvent]
                       ) -> set[tuple[str, int]]:
    """(event_id, occurred_us) of the events that have a `metric` row in dynamic_metrics: how
    a file written before migration 0009 is backfilled, event by event. dynamic_metrics has no
    index by event, so the file's time range bounds the scan (its BRIN index)."""
    if not events:
        return set()
    low = min(e.occurred_us for e in events)
    high = max(e.occurred_us for e in events)
    rows = conn.execute(
        """SELECT m.event_id, m.occurred_at FROM dynamic_metrics m
             JOIN unnest(%s::text[], %s::timestamptz[]) AS k(event_id, occurred_at)
               ON k.event_id = m.event_id AND k.occurred_at = m.occurred_at
            WHERE m.metric_name = %s AND m.occurred_at BETWEEN %s AND %s""",
        ([e.event_id for e in events], [us_to_datetime(e.occurred_us) for e in events], metric,
         us_to_datetime(low), us_to_datetime(high))).fetchall()
    return {(str(r[0]), datetime_to_us(r[1])) for r in rows}


def partition_days(conn: psycopg.Connection, table: str, days: Iterable[date]) -> set[date]:
    """The days among `days` whose day partition of `table` exists (retention drops them)."""
    wanted = sorted(set(days))
    if not wanted:
        return set()
    rows = conn.execute(
        """SELECT d FROM unnest(%s::date[]) AS d
            WHERE to_regclass(format('%%s_p%%s', %s::regclass::text, to_char(d, 'YYYYMMDD'))) IS NOT NULL""",
        (wanted, table)).fetchall()
    return {r[0] for r in rows}


def ensure_partitions(conn: psycopg.Connection, table: str, days: Iterable[date]) -> None:
    """Create `table`'s day partitions for `days` (each table on its own: a rebuild restores
    the ledger and dynamic_metrics for different spans when their retention differs)."""
    for day in sorted(set(days)):
        with conn.transaction():
            conn.execute("SELECT txm_ensure_day_partitions(%s::regclass, %s, %s)", (table, day, day))


def paths_in_manifest(conn: psycopg.Connection, paths: Sequence[str]) -> set[str]:
    if not paths:
        return set()
    rows = conn.execute("SELECT path FROM raw_files WHERE path = ANY(%s)", (list(paths),)).fetchall()
    return {str(r[0]) for r in rows}


@dataclass(frozen=True, slots=True)
class RebuiltFile:
    path: str
    container: str
    partition_id: str
    event_date: date
    seq_min: int
    seq_max: int
    occurred_min_us: int
    occurred_max_us: int
    row_count: int
    byte_size: int
    generation: str | None
    metrics: tuple[str, ...]


def insert_rebuilt_file(conn: psycopg.Connection, f: RebuiltFile) -> int | None:
    """Enter a file found in the archive into the manifest, as uploaded; its new id, or None
    when the manifest has it already (a rebuild run before, or running now: the path is
    unique, so a second run waits here for the first and then skips the file)."""
    row = conn.execute(
        """INSERT INTO raw_files (id, path, container, partition_id, event_date, seq_min, seq_max, occurred_min,
                                  occurred_max, row_count, byte_size, state, generation, uploaded_at, metrics)
           VALUES (nextval('raw_files_id_seq'), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'uploaded', %s, now(), %s)
           ON CONFLICT (path) DO NOTHING RETURNING id""",
        (f.path, f.container, f.partition_id, f.event_date, f.seq_min, f.seq_max, us_to_datetime(f.occurred_min_us),
         us_to_datetime(f.occurred_max_us), f.row_count, f.byte_size, f.generation, list(f.metrics))).fetchone()
    return None if row is None else int(row[0])
