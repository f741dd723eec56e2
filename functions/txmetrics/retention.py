"""PostgreSQL retention, enforced daily (timer function) and on demand (`txmetrics retention apply`).

Idempotent and safe while ingestion runs: partitions are created ahead; day partitions
whose whole range is older than the retention are dropped (never one that can hold younger
rows); old rows of the unpartitioned tables are deleted in bounded batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import psycopg

from .adapters import partitions
from .core.tables import DAY_PARTITIONED, ROW_RETENTION, Table


@dataclass
class RetentionReport:
    created_partitions: int = 0
    dropped_partitions: list[str] = field(default_factory=list)
    deleted_rows: dict[str, int] = field(default_factory=dict)


def cutoff(today: date, days: int) -> date:
    """Rows older than this date (midnight UTC) are past retention."""
    return today - timedelta(days=days)


@dataclass(frozen=True, slots=True)
class Expiry:
    """What `retention` expires as of a day: the cutoff of each day-partitioned table (its
    partitions wholly before it are dropped) and of each other table with a retention (its
    rows before it are deleted). The one reading of the retention for `enforce` and for the
    lifecycle plan, which predicts what `enforce` will do."""

    partitions: dict[str, date]
    rows: dict[Table, date]


def expiry(retention: dict[str, int], today: date) -> Expiry:
    return Expiry(partitions={table: cutoff(today, retention[table]) for table in DAY_PARTITIONED if table in retention},
                  rows={t: cutoff(today, retention[t.retention_key]) for t in ROW_RETENTION
                        if t.retention_key is not None and t.retention_key in retention})


def enforce(conn: psycopg.Connection, retention: dict[str, int], today: date, ahead_days: int = 7) -> RetentionReport:
    """Apply `retention` ({table: days}) as of `today`. `conn` must be in autocommit mode."""
    report = RetentionReport()
    due = expiry(retention, today)
    for table in DAY_PARTITIONED:
        report.created_partitions += partitions.ensure_day_partitions(
            conn, table=table, first=today, last=today + timedelta(days=ahead_days))
        if table in due.partitions and partitions.expired_partitions(conn, table=table, cutoff=due.partitions[table]):
            # the horizon first: a writer that meets a dropped day must already find it refused
            # (recorded after, a crash in between would let a late event recreate the day and
            # count again what the dropped ledger partition had deduplicated). Only when a day
            # is dropped: a fresh deployment takes old events (a history loaded through the
            # hub) until retention drops their days; from then on their resends are refused.
            partitions.record_horizon(conn, table=table, kept_since=due.partitions[table])
            report.dropped_partitions += partitions.drop_expired(conn, table=table, cutoff=due.partitions[table])
    for t, before in due.rows.items():
        report.deleted_rows[t.name] = partitions.delete_expired_rows(conn, table=t, cutoff=before)
    return report
