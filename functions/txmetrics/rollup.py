"""Daily rollups: one window_seconds = 86400 histogram row per (metric, dimensions, day),
the merge of that day's 5-minute rows, so KPI queries over weeks read 30 rows, not 8,640.

Exact by construction: a rollup is the element-wise sum of its windows. Kept consistent
with late events without locking ingestion: a batch writing into a rolled-up day bumps
that day's version and marks it stale (adapters/postgres.py); the job marks a day fresh
only when the version it started from is still current, and KPI queries use fresh days only.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import psycopg

from .core.histogram import SCALE, Histogram

DAY = 86400


def days_to_roll(conn: psycopg.Connection, before: date, lookback_days: int = 7) -> list[date]:
    """Finished days with 5-minute rows and no fresh rollup."""
    rows = conn.execute(
        """SELECT DISTINCT (window_start AT TIME ZONE 'UTC')::date AS day FROM aggregate_histograms
            WHERE window_seconds = 300 AND window_start >= (%s::date - %s)::timestamp AT TIME ZONE 'UTC'
              AND window_start < %s::timestamp AT TIME ZONE 'UTC'
           EXCEPT SELECT day FROM aggregate_rollups WHERE NOT stale
           ORDER BY 1""", (before, lookback_days, before)).fetchall()
    return [r[0] for r in rows]


def roll_day(conn: psycopg.Connection, day: date) -> bool:
    """(Re)build the rollup of one day. Returns True when the day ends up fresh.
    `conn` must be in autocommit mode."""
    row = conn.execute(
        """INSERT INTO aggregate_rollups (day, stale) VALUES (%s, true)
           ON CONFLICT (day) DO UPDATE SET stale = true, version = aggregate_rollups.version + 1
           RETURNING version""", (day,)).fetchone()
    assert row is not None
    version = int(row[0])
    start = datetime.combine(day, time(0), tzinfo=UTC)
    merged: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
    sums: dict[tuple[str, str], Decimal] = defaultdict(Decimal)   # exact, as the numeric column
    for metric, dims, count, total, lo, hi, zero, po, pc, no, nc in conn.execute(
            """SELECT metric_name, dimensions::text, count, sum, min, max, zero_count, pos_offset, pos_counts,
                      neg_offset, neg_counts
                 FROM aggregate_histograms
                WHERE window_seconds = 300 AND window_start >= %s AND window_start < %s AND scale = %s""",
            (start, start + timedelta(days=1), SCALE)):
        merged[(metric, dims)] = merged[(metric, dims)].merge(Histogram(
            count=int(count), min=float(lo), max=float(hi), zero_count=int(zero),
            pos_offset=po, pos_counts=list(pc or []), neg_offset=no, neg_counts=list(nc or [])))
        sums[(metric, dims)] += Decimal(total)
    with conn.transaction():
        # rollups of one day take turns (two at once, e.g. two rebuilds, would insert the same keys)
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('txmetrics.roll_day'), %s)", (day.toordinal(),))
        conn.execute("DELETE FROM aggregate_histograms WHERE window_seconds = %s AND window_start = %s", (DAY, start))
        with conn.cursor().copy(
                "COPY aggregate_histograms (metric_name, window_seconds, window_start, dimensions, count, sum, min, max, "
                "zero_count, scale, pos_offset, pos_counts, neg_offset, neg_counts) FROM STDIN") as copy:
            for (metric, dims), h in sorted(merged.items()):
                copy.write_row((metric, DAY, start, dims, h.count, sums[(metric, dims)], h.min, h.max, h.zero_count, SCALE,
                                h.pos_offset, _array(h.pos_counts, h.pos_offset), h.neg_offset,
                                _array(h.neg_counts, h.neg_offset)))
        fresh = conn.execute("UPDATE aggregate_rollups SET stale = false, rolled_at = now() "
                             "WHERE day = %s AND version = %s", (day, version)).rowcount == 1
    return fresh


def _array(counts: list[int], offset: int | None) -> str | None:
    return None if offset is None else "{" + ",".join(map(str, counts)) + "}"


def fresh_days(conn: psycopg.Connection, first: date, last: date) -> set[date]:
    rows = conn.execute("SELECT day FROM aggregate_rollups WHERE NOT stale AND day BETWEEN %s AND %s",
                        (first, last)).fetchall()
    return {r[0] for r in rows}
