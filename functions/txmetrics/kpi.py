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

Histograms are merged in SQL, set-based (adapters/aggregates.py), and quantiles are read
from the merged histogram in Python with the same scheme as SQL.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from .adapters import aggregates, manifest
from .adapters.postgres import read_snapshot
from .core import histogram
from .core.catalog import Catalog, Metric, contract_fields, is_plain_field_path, load_catalog
from .core.naming import as_utc, datetime_to_us, us_to_datetime
from .errors import InvalidRequestError
from .settings import metric_catalog_path

WINDOWS = {"5m": 300, "1h": 3600, "1d": 86400}
QUANTILES = (0.5, 0.9, 0.95, 0.99)


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
    # every stored set that holds the query, smallest first (dimension_set is the first)
    covering: tuple[tuple[str, ...], ...] = ()


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
        # a name neither the catalog nor the event contract knows (a typo, most often): say so,
        # not that no set of this metric holds it, which sends the user off to add a set for it
        unknown = sorted(name for name in needed - set(catalog.dimension_fields)
                         if name.partition(".")[0] not in contract_fields())
        if unknown:
            close = [m for name in unknown for m in difflib.get_close_matches(name, catalog.dimension_fields, n=1)]
            meant = f" (did you mean {', '.join(repr(m) for m in close)}?)" if close else ""
            raise UncoveredDimensionsError(
                f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} no dimension of the catalog "
                f"in effect ({catalog.path}){meant}; "
                f"{'its dimensions are ' + ', '.join(catalog.dimension_fields) if catalog.dimension_fields else 'it has no dimensions'}; a field "
                f"of your events beyond the contract needs a set in dimension_sets first")
        implicit = f" (with {', '.join(chosen_metric.by)}, which {metric} is always split by)" if chosen_metric.by else ""
        raise UncoveredDimensionsError(
            f"no stored dimension set of {metric!r} holds {', '.join(sorted(needed))}{implicit}; its stored sets are "
            f"{', '.join(describe_set(s) for s in sets)}; group and filter within one of them, or add a set to "
            f"dimension_sets in {catalog.path} (filled from the events ingested after the change)")
    ordered = tuple(sorted(covering, key=len))   # fewest rows to merge first; equals in catalog order
    return KpiPlan(metric=chosen_metric, dimension_set=ordered[0], group_by=grouping,
                   filters={k: str(v) for k, v in filters.items()}, covering=ordered)


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
    all between the rollup check and the rows. Naive `start` and `end` are UTC, as the
    5-minute marks are (never the session's TimeZone, which PostgreSQL would apply to them)."""
    start, end = as_utc(start), as_utc(end)
    with read_snapshot(conn):
        return _query(conn, metric=metric, start=start, end=end, group_by=group_by, filters=filters, window=window,
                      quantiles=quantiles, use_rollups=use_rollups, catalog=catalog)


def _query(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime,
           group_by: list[str] | None, filters: dict[str, Any] | None, window: str | None,
           quantiles: tuple[float, ...], use_rollups: bool, catalog: Catalog | None) -> list[KpiRow]:
    if window is not None and window not in WINDOWS:
        raise KpiError(f"window {window!r} is not one of {', '.join(WINDOWS)}")
    if start >= end:
        raise KpiError(f"the range is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    for flag, moment in (("start", start), ("end", end)):
        refuse_unaligned(flag, moment)
    chosen = _complete_set(conn, plan(catalog or catalog_in_effect(), metric, list(group_by or []), filters), start,
                           end, use_rollups)
    out = []
    for merged in aggregates.merged_histograms(
            conn, metric=metric, dimension_set=chosen.dimension_set, group_by=chosen.group_by,
            filters=chosen.filters, start=start, end=end,
            window_seconds=WINDOWS[window] if window is not None else None, use_rollups=use_rollups):
        row = KpiRow(kind=chosen.metric.kind, dimensions={k: merged.group.get(k) for k in chosen.group_by},
                     window_start=merged.bucket, count=merged.count, sum=merged.sum, min=merged.min, max=merged.max)
        if chosen.metric.kind != "flag":      # quantiles of a 0/1 flag say nothing; its rate does
            pos_off, pos_counts = _dense(merged.pos)
            neg_off, neg_counts = _dense(merged.neg)
            for q in quantiles:
                row.quantiles[q] = histogram.quantile(q, merged.zero_count, pos_off, pos_counts, neg_off, neg_counts,
                                                      row.min, row.max)
        out.append(row)
    return out


def _complete_set(conn: psycopg.Connection, chosen: KpiPlan, start: datetime, end: datetime,
                  use_rollups: bool) -> KpiPlan:
    """The plan with the smallest covering set that holds every event of the range.

    Each stored set of a metric counts every event once, so a set counting fewer events
    than another misses some: a set added to the catalog holds only the events ingested
    after the change (an audit found `--by merchant_id` answering 2 of 8 events from a new
    [merchant_id] set). The expected count is, per 5-minute window (per day where a rollup is
    read), the largest of every stored set's, added up over the range (`aggregates.event_counts`:
    one pass over the metric's rows of the range); sets the catalog no longer names count too,
    since they may be the only ones that saw the range's start. A change of every set of the
    metric (its `by` extended) leaves no set that holds the whole range, the old sets holding
    the windows before it, the new ones those after: the largest single total answered 5 of 8
    events in silence (an audit); the sum of the windows' largest counts says 8. A covering set
    that counts fewer is passed over for the next one; when every covering set does, the
    query is refused, saying why."""
    counted, least = aggregates.event_counts(conn, metric=chosen.metric.name, start=start, end=end,
                                             use_rollups=use_rollups)
    if not counted:
        return chosen
    witness = max(counted, key=lambda dims: (counted[dims], -len(dims)))
    expected = max(least, counted[witness])
    short = []
    for dims in chosen.covering:
        if counted.get(dims, 0) >= expected:
            return chosen if dims == chosen.dimension_set else replace(chosen, dimension_set=dims)
        short.append(f"{describe_set(dims)} counts {counted.get(dims, 0)}")
    lead = (f"{describe_set(witness)} counts {expected}" if counted[witness] >= expected else
            f"its stored sets together count at least {expected} (no one set holds them all: every set of the "
            "metric changed)")
    raise KpiError(
        f"every stored set of {chosen.metric.name!r} that holds this query misses events of the range: "
        f"{lead}, {', '.join(short)} (a set added to the catalog holds "
        "the events ingested after the change); start the range later, or group and filter within a set that "
        "holds them all")


def events_before_metric(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime
                         ) -> tuple[int, int]:
    """(files, events) of the range's archive that `metric`'s rows do not count: ingested
    before the metric was in the catalog, not backfilled since. Every stored set of such a
    metric is equally partial, so the set check (`_complete_set`) cannot see it; the
    manifest's record of each file's metrics can. Naive bounds are UTC, as in `query`."""
    start, end = as_utc(start), as_utc(end)
    return manifest.events_before_metric(conn, metric=metric, start=start, end=end)


def whole_windows(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """[start, end) widened to whole 5-minute windows (UTC): the range `query` accepts that
    holds every event of the given one (and the events of the windows' edges)."""
    step = aggregates.STORED_WINDOW * 1_000_000
    a, b = datetime_to_us(as_utc(start)), datetime_to_us(as_utc(end))
    return us_to_datetime(a - a % step), us_to_datetime(b + (-b) % step)


def refuse_unaligned(flag: str, moment: datetime) -> None:
    """The rows hold whole 5-minute windows (UTC), so a bound inside one cannot be honoured:
    keeping or dropping the window by its start would count events outside the range or
    miss events inside it. Refused, with the two bounds that can be answered."""
    before, after = whole_windows(moment, moment)
    if before != after:
        raise KpiError(f"{flag} {moment.isoformat()} is inside a 5-minute window: the aggregates hold whole "
                       f"5-minute windows (UTC), so they cannot start or end a range there; use "
                       f"{before:%Y-%m-%dT%H:%M}Z or {after:%Y-%m-%dT%H:%M}Z (per-event figures for any range: "
                       "txmetrics query)")


def _dense(buckets: dict[str, int] | None) -> tuple[int | None, list[int]]:
    if not buckets:
        return None, []
    keys = {int(k): int(v) for k, v in buckets.items()}
    lo, hi = min(keys), max(keys)
    return lo, [keys.get(k, 0) for k in range(lo, hi + 1)]


def _safe(name: str) -> str:
    """A dimension name goes into SQL as a jsonb key: only plain field paths are accepted
    (refused here with the user's words; adapters/aggregates.py guards again where it builds SQL)."""
    if not is_plain_field_path(name):
        raise KpiError(f"dimension name {name!r} is not a plain field path (letters, digits, _ and .)")
    return name
