"""Daily rollups: one window_seconds = 86400 histogram row per (metric, dimensions, day),
the merge of that day's 5-minute rows, so KPI queries over weeks read 30 rows, not 8,640.

Exact by construction: a rollup is the element-wise sum of its windows. Kept consistent
with late events without locking ingestion: the fold that merges a late event's delta into
a rolled-up day bumps that day's version and marks it stale (txm_fold_aggregates, migration
0008); the job marks a day fresh only when the version it started from is still current,
and KPI queries use fresh days only (and read that day's pending deltas beside the rollup).
The SQL is in adapters/aggregates.py.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import psycopg

from .adapters import aggregates
from .core.histogram import SCALE, Histogram, merge_all
from .core.metrics import EXACT


def days_to_roll(conn: psycopg.Connection, before: date, lookback_days: int = 7) -> list[date]:
    """Finished days with 5-minute rows and no fresh rollup."""
    return aggregates.days_to_roll(conn, before=before, lookback_days=lookback_days)


def roll_day(conn: psycopg.Connection, day: date) -> bool:
    """(Re)build the rollup of one day. Returns True when the day ends up fresh.
    `conn` must be in autocommit mode."""
    version = aggregates.begin_rollup(conn, day=day)
    start = datetime.combine(day, time(0), tzinfo=UTC)
    windows: dict[tuple[str, str], list[Histogram]] = defaultdict(list)
    sums: dict[tuple[str, str], Decimal] = defaultdict(Decimal)   # exact, as the numeric column
    for metric, dims, histogram, total in aggregates.five_minute_histograms(
            conn, start=start, end=start + timedelta(days=1), scale=SCALE):
        windows[(metric, dims)].append(histogram)
        # added without rounding: Python's default context keeps 28 significant digits, and a
        # day of valid amounts (below 10^18, nine places) needs more (an audit)
        sums[(metric, dims)] = EXACT.add(sums[(metric, dims)], total)
    if _sets_changed_within(conn, {metric for metric, _ in windows}, start):
        return False           # left stale (begin_rollup): readers count and answer from its 5-minute rows
    merged = {key: merge_all(histograms) for key, histograms in windows.items()}
    with conn.transaction():
        return aggregates.replace_rollup(conn, day=day, version=version, scale=SCALE, rows=(
            (metric, dims, h, sums[(metric, dims)]) for (metric, dims), h in sorted(merged.items())))


def _sets_changed_within(conn: psycopg.Connection, metrics: set[str], start: datetime) -> bool:
    """Whether a metric's stored sets changed during the day (the catalog changed: the old sets
    hold its start, the new ones its end), so that no set holds the whole day. A rollup keeps
    one row per set per day, and the KPI set check (aggregates.event_counts) could no longer
    see the change when the sides count the same (3 and 3 answered 3 of 6; a review): such a
    day is not rolled up. Read from its 5-minute rows: per window the largest count of any
    set, added up, against the largest set's day total."""
    for metric in sorted(metrics):
        counted, least = aggregates.event_counts(conn, metric=metric, start=start, end=start + timedelta(days=1),
                                                 use_rollups=False)
        if counted and least > max(counted.values()):
            return True
    return False


def fresh_days(conn: psycopg.Connection, first: date, last: date) -> set[date]:
    return aggregates.fresh_rollup_days(conn, first=first, last=last)
