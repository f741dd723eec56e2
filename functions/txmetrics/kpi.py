"""KPI queries over aggregate_histograms: any time range, 5m / 1h / 1d windows by merging,
filters and grouping by dimensions; count, sum, mean, min, max, flag rates and quantiles.

Histograms are merged in SQL, set-based (unnest the bucket arrays and add counts by key),
and quantiles are read from the merged histogram in Python with the same scheme as SQL.
Rows are chosen by their exact dimension set: grouping by [payment_method] with a filter
on merchant_id reads the rows stored for the set {merchant_id, payment_method}, plus the
metric's own `by` dimensions. That set must be in the catalog; otherwise KpiError says so.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from .core import histogram

WINDOWS = {"5m": 300, "1h": 3600, "1d": 86400}
QUANTILES = (0.5, 0.9, 0.95, 0.99)


class KpiError(ValueError):
    pass


@dataclass
class KpiRow:
    dimensions: dict[str, Any]
    window_start: datetime | None
    count: int
    sum: float
    min: float
    max: float
    quantiles: dict[float, float | None] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(self.sum / self.count) if self.count else float("nan")

    @property
    def rate(self) -> float:
        """For flag metrics: the share of events where the flag was 1 (e.g. approval rate)."""
        return self.mean

    @property
    def error_bound(self) -> float:
        return histogram.RELATIVE_ERROR


def query(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime,
          group_by: list[str] | None = None, filters: dict[str, Any] | None = None,
          window: str | None = None, stored_dimensions: list[str] | None = None,
          quantiles: tuple[float, ...] = QUANTILES, use_rollups: bool = True) -> list[KpiRow]:
    """KPIs of `metric` over [start, end), one row per group (and per window when given).

    Reads in one snapshot (a REPEATABLE READ transaction unless the caller's transaction is
    already open), so a fold running meanwhile cannot make an event count twice or not at
    all between the rollup check and the rows."""
    with _one_snapshot(conn):
        return _query(conn, metric=metric, start=start, end=end, group_by=group_by, filters=filters, window=window,
                      stored_dimensions=stored_dimensions, quantiles=quantiles, use_rollups=use_rollups)


@contextlib.contextmanager
def _one_snapshot(conn: psycopg.Connection) -> Iterator[None]:
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        yield
        return
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def _query(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime,
           group_by: list[str] | None, filters: dict[str, Any] | None, window: str | None,
           stored_dimensions: list[str] | None, quantiles: tuple[float, ...], use_rollups: bool) -> list[KpiRow]:
    group_by = list(group_by or [])
    filters = dict(filters or {})
    if window is not None and window not in WINDOWS:
        raise KpiError(f"window {window!r} is not one of {', '.join(WINDOWS)}")
    keys = sorted(set(group_by) | set(filters) | set(stored_dimensions or []))
    bucket_expr = "NULL::timestamptz"
    if window is not None:
        bucket_expr = f"date_bin(interval '{WINDOWS[window]} seconds', window_start, timestamptz 'epoch')"
    params: dict[str, Any] = {"metric": metric, "keys": keys, "filters": json.dumps(filters)}
    # Full days with a fresh daily rollup are read from it (1 row instead of 288); the rest of
    # the range from the 5-minute rows. Rollups cannot serve sub-day windows.
    rolled = sorted(_rolled_days(conn, start, end)) if use_rollups and window in (None, "1d") else []
    where = """metric_name = %(metric)s
                    AND dimensions ?& %(keys)s::text[]
                    AND (SELECT count(*) FROM jsonb_object_keys(dimensions)) = cardinality(%(keys)s::text[])
                    AND dimensions @> %(filters)s::jsonb"""
    columns = f"{bucket_expr} AS bucket, dimensions, count, sum, min, max, zero_count"
    # The row sources, the one place that knows where aggregates live: 5-minute rows as
    # readers must see them (folded + pending deltas); for days with a fresh daily rollup,
    # the rollup plus that day's pending deltas (a rollup holds folded rows only).
    current = f"SELECT {columns}, pos_offset, pos_counts, neg_offset, neg_counts FROM aggregate_histograms_current"
    rollup = f"SELECT {columns}, pos_offset, pos_counts, neg_offset, neg_counts FROM aggregate_histograms"
    pending = (f"SELECT {columns}, pos_keys[1], txm_hist_dense(pos_keys, pos_counts), neg_keys[1], "
               "txm_hist_dense(neg_keys, neg_counts) FROM aggregate_deltas")
    parts = []
    if rolled:
        params["rolled"] = [datetime.combine(d, datetime.min.time(), tzinfo=UTC) for d in rolled]
        params["rolled_end"] = [t + timedelta(days=1) for t in params["rolled"]]
        parts.append(f"{rollup} WHERE {where} AND window_seconds = 86400 "
                     "AND window_start = ANY(%(rolled)s::timestamptz[])")
        parts.append(f"{pending} WHERE {where} AND window_seconds = 300 AND EXISTS (SELECT 1 FROM "
                     "unnest(%(rolled)s::timestamptz[], %(rolled_end)s::timestamptz[]) AS d(a, b) "
                     "WHERE window_start >= d.a AND window_start < d.b)")
    for i, (a, b) in enumerate(_subtract(start, end, rolled)):
        params[f"a{i}"], params[f"b{i}"] = a, b
        parts.append(f"{current} WHERE {where} AND window_seconds = 300 "
                     f"AND window_start >= %(a{i})s AND window_start < %(b{i})s")
    if not parts:
        return []
    base = " UNION ALL ".join(parts)
    group_cols = "bucket, " + (", ".join(f"dimensions -> '{_safe(k)}'" for k in group_by) or "NULL::jsonb")
    group_json = "jsonb_build_object(" + ", ".join(f"'{_safe(k)}', dimensions -> '{_safe(k)}'" for k in group_by) + ")"
    sql = f"""
        WITH r AS ({base}),
        totals AS (
            SELECT bucket, {group_json} AS g, sum(count)::bigint AS n, sum(sum)::float8 AS s, min(min) AS lo,
                   max(max) AS hi, sum(zero_count)::bigint AS z
              FROM r GROUP BY {group_cols}),
        pos AS (
            SELECT bucket, {group_json} AS g, pos_offset + o::int - 1 AS k, sum(c)::bigint AS c
              FROM r, unnest(pos_counts) WITH ORDINALITY AS u(c, o)
             WHERE pos_counts IS NOT NULL GROUP BY {group_cols}, 3),
        neg AS (
            SELECT bucket, {group_json} AS g, neg_offset + o::int - 1 AS k, sum(c)::bigint AS c
              FROM r, unnest(neg_counts) WITH ORDINALITY AS u(c, o)
             WHERE neg_counts IS NOT NULL GROUP BY {group_cols}, 3)
        SELECT t.bucket, t.g, t.n, t.s, t.lo, t.hi, t.z,
               (SELECT jsonb_object_agg(k, c) FROM pos WHERE pos.bucket IS NOT DISTINCT FROM t.bucket AND pos.g = t.g),
               (SELECT jsonb_object_agg(k, c) FROM neg WHERE neg.bucket IS NOT DISTINCT FROM t.bucket AND neg.g = t.g)
          FROM totals t ORDER BY t.bucket NULLS FIRST, t.g"""
    out = []
    for bucket, g, n, s, lo, hi, z, pos, neg in conn.execute(sql, params).fetchall():
        pos_off, pos_counts = _dense(pos)
        neg_off, neg_counts = _dense(neg)
        row = KpiRow(dimensions=dict(g or {}), window_start=bucket, count=int(n), sum=float(s), min=float(lo),
                     max=float(hi))
        for q in quantiles:
            row.quantiles[q] = histogram.quantile(q, int(z), pos_off, pos_counts, neg_off, neg_counts, row.min, row.max)
        out.append(row)
    return out


def _rolled_days(conn: psycopg.Connection, start: datetime, end: datetime) -> set[date]:
    from .rollup import fresh_days

    first = (start + timedelta(days=1) - timedelta(microseconds=1)).astimezone(UTC).date()   # first full day
    last = (end.astimezone(UTC) - timedelta(days=1)).date()                                  # last full day
    if last < first:
        return set()
    return fresh_days(conn, first, last)


def _subtract(start: datetime, end: datetime, days: list[date]) -> list[tuple[datetime, datetime]]:
    """[start, end) minus the given whole UTC days, as sorted intervals."""
    out = []
    cursor = start
    for d in days:
        a = datetime.combine(d, datetime.min.time(), tzinfo=UTC)
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, a + timedelta(days=1))
    if cursor < end:
        out.append((cursor, end))
    return out


def _dense(buckets: dict[str, int] | None) -> tuple[int | None, list[int]]:
    if not buckets:
        return None, []
    keys = {int(k): int(v) for k, v in buckets.items()}
    lo, hi = min(keys), max(keys)
    return lo, [keys.get(k, 0) for k in range(lo, hi + 1)]


def _safe(name: str) -> str:
    if not name.replace("_", "").replace(".", "").isalnum():
        raise KpiError(f"dimension name {name!r} is not a plain field path")
    return name
