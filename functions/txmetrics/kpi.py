"""KPI queries over aggregate_histograms: any time range, 5m / 1h / 1d windows by merging,
filters and grouping by dimensions; count, sum, mean, min, max and quantiles of value
metrics, count and rate of flag metrics. The Python API (`query`) and `txmetrics kpi`
share everything here.

Which rows answer (`plan`): each metric is stored once per dimension set of the catalog,
every set extended by the metric's own `by` (currency for amounts). A query needs the
dimensions it groups by, the ones it filters on, and the metric's `by`; it reads the
smallest stored set that holds them all and merges over the rest (`--by merchant_id`
merges the [merchant_id, payment_method] rows over methods). When no set holds them it
is refused, naming the sets that exist, instead of answering from rows that cannot.

The metric's `by` dimensions are always part of the grouping, so amounts of different
currencies are never added together, whatever is asked.

The sets that exist are taken from the catalog in effect (METRIC_CATALOG, else the bundled
one), not discovered from the stored rows: the catalog also says what a metric is (a flag
has a rate, not quantiles; amounts are per currency), which rows cannot tell; it costs no
scan of the range; and a refusal names the file to edit. The CLI must therefore run with
the function's catalog (contract section 6); docs/read-side.md says so.

Histograms are merged in SQL, set-based (unnest the bucket arrays and add counts by key),
and quantiles are read from the merged histogram in Python with the same scheme as SQL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from .core import histogram
from .core.catalog import Catalog, Metric, load_catalog
from .errors import InvalidRequestError
from .settings import metric_catalog_path

WINDOWS = {"5m": 300, "1h": 3600, "1d": 86400}
QUANTILES = (0.5, 0.9, 0.95, 0.99)
STORED_WINDOW = 300          # the 5-minute rows; daily rollups are window_seconds = 86400


class KpiError(InvalidRequestError):
    """A KPI request that cannot be answered as asked; the message says why and what exists."""


class UnknownMetricError(KpiError):
    """The metric is not in the catalog in effect."""


class UncoveredDimensionsError(KpiError):
    """No stored dimension set of the metric holds every dimension the query needs."""


@dataclass(frozen=True)
class KpiPlan:
    """What a query reads: the metric, the one stored dimension set that answers, and the
    grouping (the requested one plus the metric's own `by`)."""

    metric: Metric
    dimension_set: tuple[str, ...]
    group_by: tuple[str, ...]
    filters: dict[str, str]


@dataclass
class KpiRow:
    kind: str                          # the metric's kind: "value" or "flag"
    dimensions: dict[str, Any]         # the group, in grouping order; {} for the total
    window_start: datetime | None      # the window when one was asked for
    count: int
    sum: Decimal                       # exact, as stored (numeric)
    min: float
    max: float
    quantiles: dict[float, float | None] = field(default_factory=dict)   # value metrics only

    @property
    def mean(self) -> float:
        return float(self.sum / self.count) if self.count else float("nan")

    @property
    def rate(self) -> float:
        """For flag metrics: the share of events where the flag was 1 (e.g. approval rate)."""
        return self.mean

    def record(self) -> dict[str, Any]:
        """The row as named fields: [window_start], the group's dimensions, then the figures
        (count, true_count, rate for flags; count, sum, mean, min, max, p50.. for values)."""
        out: dict[str, Any] = {}
        if self.window_start is not None:
            out["window_start"] = self.window_start
        out.update(self.dimensions)
        out["count"] = self.count
        if self.kind == "flag":
            out["true_count"] = int(self.sum)
            out["rate"] = self.rate
            return out
        out.update(sum=self.sum, mean=self.mean, min=self.min, max=self.max)
        for q, value in self.quantiles.items():
            out[quantile_label(q)] = value
        return out


def quantile_label(q: float) -> str:
    return f"p{q * 100:g}"


def catalog_in_effect() -> Catalog:
    """The catalog the function uses: METRIC_CATALOG, else the bundled one."""
    return load_catalog(metric_catalog_path())


def describe_set(dims: tuple[str, ...]) -> str:
    return "[" + ", ".join(dims) + "]"


def plan(catalog: Catalog, metric: str, group_by: list[str] | tuple[str, ...] = (),
         filters: dict[str, Any] | None = None) -> KpiPlan:
    """Choose the stored dimension set that answers by itself (pure: no I/O)."""
    known = {m.name: m for m in catalog.metrics}
    chosen_metric = known.get(metric)
    if chosen_metric is None:
        raise UnknownMetricError(f"unknown metric {metric!r}: the catalog in effect ({catalog.path}) defines "
                                 f"{', '.join(sorted(known))}")
    filters = dict(filters or {})
    for name in (*group_by, *filters):
        _safe(name)
    if len(set(group_by)) != len(group_by):
        raise KpiError(f"--by names a dimension twice: {', '.join(group_by)}")
    grouping = tuple(dict.fromkeys([*group_by, *chosen_metric.by]))
    needed = set(grouping) | set(filters)
    sets = catalog.sets_for(chosen_metric)
    covering = [s for s in sets if needed <= set(s)]
    if not covering:
        implicit = f" (with {', '.join(chosen_metric.by)}, which {metric} is always split by)" if chosen_metric.by else ""
        raise UncoveredDimensionsError(
            f"no stored dimension set of {metric!r} holds {', '.join(sorted(needed))}{implicit}; its stored sets are "
            f"{', '.join(describe_set(s) for s in sets)}; group and filter within one of them, or add a set to "
            f"dimension_sets in {catalog.path} (filled from the events ingested after the change)")
    smallest = min(covering, key=len)          # fewest rows to merge; the first of equals in catalog order
    return KpiPlan(metric=chosen_metric, dimension_set=smallest, group_by=grouping,
                   filters={k: str(v) for k, v in filters.items()})


def query(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime,
          group_by: list[str] | None = None, filters: dict[str, Any] | None = None,
          window: str | None = None, quantiles: tuple[float, ...] = QUANTILES, use_rollups: bool = True,
          catalog: Catalog | None = None) -> list[KpiRow]:
    """KPIs of `metric` over [start, end), one row per group (and per window when given).

    The groups are `group_by` plus the metric's own `by` (amounts per currency); `filters`
    ({dimension: value}, compared as text) keep the rows whose dimension has that value.
    `catalog` defaults to the catalog in effect. Raises KpiError (unknown metric, a grouping
    or filter no stored set holds, an unknown window).

    Reads in one snapshot (a REPEATABLE READ transaction unless the caller's transaction is
    already open), so a fold running meanwhile cannot make an event count twice or not at
    all between the rollup check and the rows."""
    with _one_snapshot(conn):
        return _query(conn, metric=metric, start=start, end=end, group_by=group_by, filters=filters, window=window,
                      quantiles=quantiles, use_rollups=use_rollups, catalog=catalog)


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
           quantiles: tuple[float, ...], use_rollups: bool, catalog: Catalog | None) -> list[KpiRow]:
    if window is not None and window not in WINDOWS:
        raise KpiError(f"window {window!r} is not one of {', '.join(WINDOWS)}")
    if start >= end:
        raise KpiError(f"the range is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    chosen = plan(catalog or catalog_in_effect(), metric, list(group_by or []), filters)
    source, params = histogram_rows(conn, metric=metric, dimension_set=chosen.dimension_set, start=start, end=end,
                                    window=window, use_rollups=use_rollups)
    where = []
    for i, (name, value) in enumerate(chosen.filters.items()):
        params[f"f{i}"] = value
        where.append(f"dimensions ->> '{_safe(name)}' = %(f{i})s")
    filtered = f"SELECT * FROM ({source}) AS candidates" + (f" WHERE {' AND '.join(where)}" if where else "")
    group_cols = "bucket, " + (", ".join(f"dimensions -> '{k}'" for k in chosen.group_by) or "NULL::jsonb")
    group_json = "jsonb_build_object(" + ", ".join(f"'{k}', dimensions -> '{k}'" for k in chosen.group_by) + ")"
    # Bucket counts are added per group in two set-based passes (positive and negative
    # values), then joined to the totals: each pass reads the candidate rows once, whatever
    # the number of groups (a correlated subquery per group re-read them once per group).
    # Stored counts are dense: the zeros between sparse buckets are skipped before adding.
    buckets = """
            SELECT bucket, g, jsonb_object_agg(k, c) AS counts FROM (
                SELECT bucket, {g} AS g, {side}_offset + o::int - 1 AS k, sum(c)::bigint AS c
                  FROM r, unnest({side}_counts) WITH ORDINALITY AS u(c, o)
                 WHERE {side}_counts IS NOT NULL AND c > 0 GROUP BY {cols}, 3) AS keyed
             GROUP BY bucket, g"""
    same_group = "coalesce({a}.bucket, '-infinity') = coalesce(t.bucket, '-infinity') AND {a}.g = t.g"
    sql = f"""
        WITH r AS MATERIALIZED ({filtered}),
        totals AS (
            SELECT bucket, {group_json} AS g, sum(count)::bigint AS n, sum(sum) AS s, min(min) AS lo,
                   max(max) AS hi, sum(zero_count)::bigint AS z
              FROM r GROUP BY {group_cols}),
        pos AS ({buckets.format(g=group_json, side="pos", cols=group_cols)}),
        neg AS ({buckets.format(g=group_json, side="neg", cols=group_cols)})
        SELECT t.bucket, t.g, t.n, t.s, t.lo, t.hi, t.z, p.counts, q.counts
          FROM totals t
          LEFT JOIN pos p ON {same_group.format(a="p")}
          LEFT JOIN neg q ON {same_group.format(a="q")}
         ORDER BY t.bucket NULLS FIRST, t.g"""
    out = []
    for bucket, g, n, s, lo, hi, z, pos, neg in conn.execute(sql, params).fetchall():
        group = dict(g or {})
        row = KpiRow(kind=chosen.metric.kind, dimensions={k: group.get(k) for k in chosen.group_by},
                     window_start=bucket, count=int(n), sum=Decimal(s), min=float(lo), max=float(hi))
        if chosen.metric.kind != "flag":      # quantiles of a 0/1 flag say nothing; its rate does
            pos_off, pos_counts = _dense(pos)
            neg_off, neg_counts = _dense(neg)
            for q in quantiles:
                row.quantiles[q] = histogram.quantile(q, int(z), pos_off, pos_counts, neg_off, neg_counts,
                                                      row.min, row.max)
        out.append(row)
    return out


def histogram_rows(conn: psycopg.Connection, *, metric: str, dimension_set: tuple[str, ...], start: datetime,
                   end: datetime, window: str | None, use_rollups: bool = True) -> tuple[str, dict[str, Any]]:
    """The one source of histogram rows for KPIs: SQL (and its parameters) yielding
    (bucket, dimensions, count, sum, min, max, zero_count, pos_offset, pos_counts,
    neg_offset, neg_counts) for `metric`'s rows stored under exactly `dimension_set` in
    [start, end); `bucket` is the window the row falls in (NULL without --window).

    Full days with a fresh daily rollup are read from it (1 row instead of 288), the rest
    from the 5-minute rows; rollups cannot serve sub-day windows. Every reader goes through
    here, so rows from another place (e.g. pending per-batch deltas) are added once, here."""
    keys = sorted(dimension_set)
    bucket_expr = "NULL::timestamptz"
    if window is not None:
        bucket_expr = f"date_bin(interval '{WINDOWS[window]} seconds', window_start, timestamptz 'epoch')"
    params: dict[str, Any] = {"metric": metric, "keys": keys}
    rolled = sorted(_rolled_days(conn, start, end)) if use_rollups and window in (None, "1d") else []
    where = """metric_name = %(metric)s
                    AND dimensions ?& %(keys)s::text[]
                    AND (SELECT count(*) FROM jsonb_object_keys(dimensions)) = cardinality(%(keys)s::text[])"""
    columns = f"{bucket_expr} AS bucket, dimensions, count, sum, min, max, zero_count"
    # 5-minute rows as every reader must see them: folded rows plus pending deltas
    # (aggregate_histograms_current). A day with a fresh rollup: the rollup (folded rows only)
    # plus that day's pending deltas.
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
        parts.append(f"{pending} WHERE {where} AND window_seconds = {STORED_WINDOW} AND EXISTS (SELECT 1 FROM "
                     "unnest(%(rolled)s::timestamptz[], %(rolled_end)s::timestamptz[]) AS d(a, b) "
                     "WHERE window_start >= d.a AND window_start < d.b)")
    for i, (a, b) in enumerate(_subtract(start, end, rolled)):
        params[f"a{i}"], params[f"b{i}"] = a, b
        parts.append(f"{current} WHERE {where} AND window_seconds = {STORED_WINDOW} "
                     f"AND window_start >= %(a{i})s AND window_start < %(b{i})s")
    return " UNION ALL ".join(parts), params


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
    """A dimension name goes into SQL as a jsonb key: only plain field paths are accepted."""
    if not name or not name.replace("_", "").replace(".", "").isalnum() or not name.isascii():
        raise KpiError(f"dimension name {name!r} is not a plain field path (letters, digits, _ and .)")
    return name
