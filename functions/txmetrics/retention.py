"""PostgreSQL retention, enforced daily (timer function) and on demand (`txmetrics retention apply`).

Idempotent and safe while ingestion runs: partitions are created ahead; day partitions
whose whole range is older than the retention are dropped (never one that can hold younger
rows); old rows of the unpartitioned tables are deleted in bounded batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import psycopg

from .core.tables import DAY_PARTITIONED, ROW_RETENTION

DELETE_BATCH = 10_000


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
        row = conn.execute("SELECT txm_ensure_day_partitions(%s::regclass, %s, %s)",
                           (table, today, today + timedelta(days=ahead_days))).fetchone()
        report.created_partitions += int(row[0]) if row else 0
        if table in retention:
            dropped = conn.execute("SELECT * FROM txm_drop_expired_partitions(%s::regclass, %s)",
                                   (table, cutoff(today, retention[table]))).fetchall()
            report.dropped_partitions += [str(r[0]) for r in dropped]
    for t in ROW_RETENTION:
        if t.retention_key not in retention:
            continue
        limit = cutoff(today, retention[t.retention_key])
        keep = f" AND {t.delete_only_where}" if t.delete_only_where else ""
        total = 0
        while True:
            cur = conn.execute(
                f"DELETE FROM {t.name} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t.name} "
                f"WHERE {t.time_column} < (%s::timestamp AT TIME ZONE 'UTC'){keep} LIMIT {DELETE_BATCH}))", (limit,))
            total += cur.rowcount
            if cur.rowcount < DELETE_BATCH:
                break
        report.deleted_rows[t.name] = total
    return report
