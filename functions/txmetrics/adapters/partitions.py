"""Retention in PostgreSQL: the day partitions of the day-partitioned tables (created ahead,
listed, expired, dropped) and the rows past retention of the other tables (counted,
deleted in bounded batches). Which tables are which comes from core/tables.py; the SQL
functions are migrations 0001 and 0007.

The callers decide: txmetrics.retention enforces, lifecycle/plan.py predicts, backfill and
rebuild restore days. Functions take the caller's connection and keyword-only arguments.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import psycopg

from ..core.tables import Table

DELETE_BATCH = 10_000       # rows per DELETE: short locks and bounded WAL bursts while ingestion runs


def ensure_day_partitions(conn: psycopg.Connection, *, table: str, first: date, last: date) -> int:
    """Create `table`'s day partitions for [first, last] that do not exist; returns how many
    were created. Safe beside writers and other creators (migration 0007)."""
    row = conn.execute("SELECT txm_ensure_day_partitions(%s::regclass, %s, %s)", (table, first, last)).fetchone()
    return int(row[0]) if row else 0


def ensure_each_day(conn: psycopg.Connection, *, table: str, days: Iterable[date]) -> None:
    """Create `table`'s day partitions for `days`, one short transaction per day (each table
    on its own: a rebuild restores the ledger and dynamic_metrics for different spans when
    their retention differs)."""
    for day in sorted(set(days)):
        with conn.transaction():
            ensure_day_partitions(conn, table=table, first=day, last=day)


def existing_days(conn: psycopg.Connection, *, table: str, days: Iterable[date]) -> set[date]:
    """The days among `days` whose day partition of `table` exists (retention drops them)."""
    wanted = sorted(set(days))
    if not wanted:
        return set()
    rows = conn.execute(
        """SELECT d FROM unnest(%s::date[]) AS d
            WHERE to_regclass(format('%%s_p%%s', %s::regclass::text, to_char(d, 'YYYYMMDD'))) IS NOT NULL""",
        (wanted, table)).fetchall()
    return {r[0] for r in rows}


def expired_partitions(conn: psycopg.Connection, *, table: str, cutoff: date) -> list[str]:
    """The partitions of `table` whose whole range is before `cutoff` (what `drop_expired` drops)."""
    return [str(r[0]) for r in conn.execute("SELECT txm_expired_partitions(%s::regclass, %s)",
                                            (table, cutoff)).fetchall()]


def drop_expired(conn: psycopg.Connection, *, table: str, cutoff: date) -> list[str]:
    """Drop the partitions of `table` whose whole range is before `cutoff`; returns their names."""
    return [str(r[0]) for r in conn.execute("SELECT * FROM txm_drop_expired_partitions(%s::regclass, %s)",
                                            (table, cutoff)).fetchall()]


def _expired_rows(table: Table) -> str:
    keep = f" AND {table.delete_only_where}" if table.delete_only_where else ""
    return f"FROM {table.name} WHERE {table.time_column} < (%s::timestamp AT TIME ZONE 'UTC'){keep}"


def count_expired_rows(conn: psycopg.Connection, *, table: Table, cutoff: date) -> int:
    """Rows of `table` (not day-partitioned) older than `cutoff` that retention deletes."""
    row = conn.execute(f"SELECT count(*) {_expired_rows(table)}", (cutoff,)).fetchone()
    return int(row[0]) if row else 0


def delete_expired_rows(conn: psycopg.Connection, *, table: Table, cutoff: date) -> int:
    """Delete `count_expired_rows`' rows, DELETE_BATCH at a time (autocommit: each batch
    commits on its own); returns how many were deleted."""
    total = 0
    while True:
        deleted = conn.execute(f"DELETE FROM {table.name} WHERE ctid = ANY(ARRAY(SELECT ctid "
                               f"{_expired_rows(table)} LIMIT {DELETE_BATCH}))", (cutoff,)).rowcount
        total += deleted
        if deleted < DELETE_BATCH:
            return total


def record_horizon(conn: psycopg.Connection, *, table: str, kept_since: date) -> None:
    """`table` keeps no day before `kept_since` from now on (a later day than the one recorded
    moves it; an earlier one does not: the days dropped stay dropped)."""
    conn.execute("INSERT INTO retention_horizons (table_name, kept_since) VALUES (%s, %s) "
                 "ON CONFLICT (table_name) DO UPDATE SET kept_since = EXCLUDED.kept_since, updated_at = now() "
                 "WHERE retention_horizons.kept_since < EXCLUDED.kept_since", (table, kept_since))


def horizon(conn: psycopg.Connection, *, table: str) -> date | None:
    """The first day `table` keeps (None: retention never dropped a day of it, and a rebuild
    with a retention never restored it from a later day)."""
    row = conn.execute("SELECT kept_since FROM retention_horizons WHERE table_name = %s", (table,)).fetchone()
    return row[0] if row else None
