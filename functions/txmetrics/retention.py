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
from .core.tables import DAY_PARTITIONED, ROW_RETENTION


@dataclass
class RetentionReport:
    created_partitions: int = 0
    dropped_partitions: list[str] = field(default_factory=list)
    deleted_rows: dict[str, int] = field(default_factory=dict)


def cutoff(today: date, days: int) -> date:
    """Rows older than this date (midnight UTC) are past retention."""
    return today - timedelta(days=days)


def enforce(conn: psycopg.Connection, retention: dict[str, int], today: date, ahead_days: int = 7) -> RetentionReport:
    """Apply `retention` ({table: days}) as of `today`. `conn` must be in autocommit mode."""
    report = RetentionReport()
    for table in DAY_PARTITIONED:
        report.created_partitions += partitions.ensure_day_partitions(
            conn, table=table, first=today, last=today + timedelta(days=ahead_days))
        if table in retention:
            report.dropped_partitions += partitions.drop_expired(conn, table=table,
                                                                 cutoff=cutoff(today, retention[table]))
    for t in ROW_RETENTION:
        if t.retention_key in retention:
            report.deleted_rows[t.name] = partitions.delete_expired_rows(
                conn, table=t, cutoff=cutoff(today, retention[t.retention_key]))
    return report
