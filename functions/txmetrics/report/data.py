"""What the report shows, read in one snapshot: KPIs through `txmetrics.kpi.query` (the code
behind `txmetrics kpi`, so the numbers agree, pending aggregate deltas and fresh daily
rollups included), failed items and the raw-file manifest from their tables, and what
retention will do from the lifecycle plan (`lifecycle.plan.make_plan`).

Every figure is read for [start, end): KPIs by the events' occurred_at (the 5-minute
windows), failed items by their Event Hubs enqueued time (a bad event may have no valid
occurred_at; its enqueued time is the closest thing, and where a replayed item has none,
received_at stands in), raw files by their UTC event date (the archive's date folder).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from azure.storage.blob import BlobServiceClient

from .. import kpi
from ..adapters import failed_items, manifest
from ..adapters.manifest import ManifestDay
from ..adapters.postgres import read_snapshot
from ..core.catalog import Catalog

REPORT_QUANTILES = (0.5, 0.95, 0.99)
# The bucket follows the range so a chart has at most a few hundred of them: 5 minutes up to
# a day (288), an hour up to a week (168), a day beyond. Hourly points are merged from the
# 5-minute rows (a week takes about 4 s here, docs/benchmarks.md); daily points read the daily
# rollups, so a month or a year takes about as long as a day.
WINDOW_FOR_SPAN = ((timedelta(days=1), "5m"), (timedelta(days=7), "1h"))
LONGEST_WINDOW = "1d"
# Rates, percentiles and failed items by code are read per "trend" window, at least an hour
# once the range is longer than TREND_FROM: per 5 minutes a minor payment method or currency
# has a handful of events, and their rate or p99 is noise that hides the trend.
TREND_FROM = timedelta(hours=12)
MAX_POINTS = 2016                  # a week of 5-minute points: more is unreadable and slow to read
TOP_MERCHANTS = 10
MIN_MERCHANT_TRANSACTIONS = 30     # a worst approval rate over a handful of transactions is noise
HORIZON_DAYS = (0, 7, 30, 90)      # the retention outlook: today, then by the end of day +N

Buckets = dict[datetime, float]
T = TypeVar("T")


def choose_window(start: datetime, end: datetime) -> str:
    """The bucket size for a range: 5m up to 1 day, 1h up to 7 days, else 1d."""
    span = end - start
    return next((w for limit, w in WINDOW_FOR_SPAN if span <= limit), LONGEST_WINDOW)


def trend_window(start: datetime, end: datetime, window: str) -> str:
    """The bucket for rates, percentiles and failed items: `window`, but at least 1h when
    the range is longer than 12 hours."""
    if end - start > TREND_FROM and kpi.WINDOWS[window] < kpi.WINDOWS["1h"]:
        return "1h"
    return window


@dataclass
class Headline:
    transactions: int = 0
    approved: int = 0
    approval_rate: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)          # status -> transactions
    processing: dict[float, float | None] = field(default_factory=dict)
    amounts: list[tuple[str, int, Decimal]] = field(default_factory=list)   # (currency, count, sum), by count
    failed_items: int = 0
    replayed: int = 0
    raw_files: int = 0
    raw_bytes: int = 0


@dataclass
class Merchant:
    merchant_id: str
    transactions: int
    approved: int

    @property
    def rate(self) -> float:
        return self.approved / self.transactions if self.transactions else float("nan")


@dataclass
class FailedCode:
    error_code: str
    items: int
    replayed: int
    resolved: int


@dataclass
class RetentionRow:
    store: str
    rule: str
    target: str
    action: str
    due: list[tuple[int, int | None]]         # per horizon: (count, bytes or None)


@dataclass
class RetentionOutlook:
    stack: str
    files: tuple[str, ...]                     # the policy files
    horizons: list[tuple[str, datetime]]       # (label, planned at)
    rows: list[RetentionRow]
    blob_inventory: bool                       # False when no storage account was given


@dataclass
class ReportData:
    start: datetime
    end: datetime
    window: str                     # transactions per window
    trend: str                      # rates, percentiles, failed items per window
    generated_at: datetime
    headline: Headline = field(default_factory=Headline)
    volume: dict[str, Buckets] = field(default_factory=dict)               # method -> transactions
    approval_overall: Buckets = field(default_factory=dict)
    approval_by_method: dict[str, Buckets] = field(default_factory=dict)
    outcomes: dict[str, Buckets] = field(default_factory=dict)             # status -> transactions
    processing: dict[float, Buckets] = field(default_factory=dict)         # quantile -> ms
    amounts: dict[str, dict[float, Buckets]] = field(default_factory=dict)  # currency -> quantile -> amount
    merchants: list[Merchant] = field(default_factory=list)
    failed: dict[str, Buckets] = field(default_factory=dict)               # error code -> items
    failed_replayed: Buckets = field(default_factory=dict)                 # replayed items per bucket
    failed_by_code: list[FailedCode] = field(default_factory=list)
    lake: list[ManifestDay] = field(default_factory=list)
    retention: RetentionOutlook | None = None
    unavailable: dict[str, str] = field(default_factory=dict)              # section -> why it is empty

    @property
    def step(self) -> timedelta:
        return timedelta(seconds=kpi.WINDOWS[self.window])

    @property
    def trend_step(self) -> timedelta:
        return timedelta(seconds=kpi.WINDOWS[self.trend])


def collect(conn: psycopg.Connection, *, start: datetime, end: datetime, window: str | None = None,
            catalog: Catalog | None = None, service: BlobServiceClient | None = None, policy: Any | None = None,
            now: datetime | None = None) -> ReportData:
    """Everything the report shows for [start, end), in one read-only snapshot.

    `window` defaults to `choose_window`. `policy` (a lifecycle Policy) and `service` (a
    BlobServiceClient) feed the retention outlook; without a policy there is none, without a
    service it covers the PostgreSQL tables only. A section whose metric or dimension the
    catalog in effect lacks is left empty with the reason (`unavailable`); any other error
    raises."""
    if start.tzinfo is None or end.tzinfo is None:
        raise kpi.KpiError("start and end need a time zone (UTC is assumed by the command line)")
    if start >= end:
        raise kpi.KpiError(f"the range is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    for flag, moment in (("start", start), ("end", end)):    # else every KPI section would come back empty
        kpi.refuse_unaligned(flag, moment)
    window = window or choose_window(start, end)
    if window not in kpi.WINDOWS:
        raise kpi.KpiError(f"window {window!r} is not one of {', '.join(kpi.WINDOWS)}")
    points = (end - start) / timedelta(seconds=kpi.WINDOWS[window])
    if points > MAX_POINTS:
        raise kpi.KpiError(f"a {window} window over this range is {points:,.0f} points per chart, more than "
                           f"{MAX_POINTS:,}: choose a larger window ({choose_window(start, end)} is the default for "
                           "this range) or a shorter range")
    catalog = catalog or kpi.catalog_in_effect()
    now = now or datetime.now(UTC)
    data = ReportData(start=start, end=end, window=window, trend=trend_window(start, end, window), generated_at=now)

    def query(section: str, metric: str, group_by: list[str], per: str | None) -> list[kpi.KpiRow]:
        try:
            return kpi.query(conn, metric=metric, start=start, end=end, group_by=group_by, window=per,
                             quantiles=REPORT_QUANTILES, catalog=catalog)
        except kpi.KpiError as exc:        # the catalog in effect cannot answer this section
            data.unavailable.setdefault(section, str(exc))
            return []

    with read_snapshot(conn):
        _headline(data, query)
        _volume_and_approval(data, query)
        _percentiles(data, query)
        _merchants(data, query)
        _failed_items(conn, data)
        _lake(conn, data)
        if policy is not None:
            data.retention = retention_outlook(policy, conn=conn, service=service, now=now)
    return data


Query = Callable[[str, str, list[str], str | None], list[kpi.KpiRow]]


def _headline(data: ReportData, query: Query) -> None:
    h = data.headline
    for row in query("volume", "approved", [], None):
        h.transactions, h.approved, h.approval_rate = row.count, int(row.sum), row.rate
    h.statuses = {str(r.dimensions["status"]): r.count for r in query("outcomes", "approved", ["status"], None)}
    for row in query("processing", "processing_ms", [], None):
        h.processing = dict(row.quantiles)
    amounts = query("amounts", "amount", [], None)
    h.amounts = sorted(((str(r.dimensions.get("currency")), r.count, r.sum) for r in amounts),
                       key=lambda a: (-a[1], a[0]))


def _volume_and_approval(data: ReportData, query: Query) -> None:
    by_method = query("volume", "approved", ["payment_method"], data.window)
    for row in by_method:
        assert row.window_start is not None
        data.volume.setdefault(str(row.dimensions["payment_method"]), {})[row.window_start] = row.count
    for row in by_method if data.trend == data.window else query("volume", "approved", ["payment_method"], data.trend):
        assert row.window_start is not None
        data.approval_by_method.setdefault(str(row.dimensions["payment_method"]), {})[row.window_start] = row.rate
    for row in query("volume", "approved", [], data.trend):
        assert row.window_start is not None
        data.approval_overall[row.window_start] = row.rate
    for row in query("outcomes", "approved", ["status"], data.trend):
        assert row.window_start is not None
        data.outcomes.setdefault(str(row.dimensions["status"]), {})[row.window_start] = row.count


def _percentiles(data: ReportData, query: Query) -> None:
    for row in query("processing", "processing_ms", [], data.trend):
        assert row.window_start is not None
        for q, value in row.quantiles.items():
            if value is not None:
                data.processing.setdefault(q, {})[row.window_start] = value
    for row in query("amounts", "amount", [], data.trend):
        assert row.window_start is not None
        per_quantile = data.amounts.setdefault(str(row.dimensions.get("currency")), {})
        for q, value in row.quantiles.items():
            if value is not None:
                per_quantile.setdefault(q, {})[row.window_start] = value


def _merchants(data: ReportData, query: Query) -> None:
    data.merchants = [Merchant(str(r.dimensions["merchant_id"]), r.count, int(r.sum))
                      for r in query("merchants", "approved", ["merchant_id"], None)]


def _failed_items(conn: psycopg.Connection, data: ReportData) -> None:
    per_code: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for c in failed_items.counts_by_window(conn, start=data.start, end=data.end, window_seconds=kpi.WINDOWS[data.trend]):
        data.failed.setdefault(c.error_code, {})[c.window_start] = c.items
        if c.replayed:
            data.failed_replayed[c.window_start] = data.failed_replayed.get(c.window_start, 0) + c.replayed
        totals = per_code[c.error_code]
        totals[0] += c.items
        totals[1] += c.replayed
        totals[2] += c.resolved
    data.failed_by_code = sorted((FailedCode(code, *t) for code, t in per_code.items()),
                                 key=lambda c: (-c.items, c.error_code))
    data.headline.failed_items = sum(c.items for c in data.failed_by_code)
    data.headline.replayed = sum(c.replayed for c in data.failed_by_code)


def _lake(conn: psycopg.Connection, data: ReportData) -> None:
    """Files and bytes per UTC event date, as the manifest records them: every live file
    (uploaded, or committed and awaiting upload), not the inputs a compaction replaced."""
    first = data.start.astimezone(UTC).date()
    last = (data.end.astimezone(UTC) - timedelta(microseconds=1)).date()
    data.lake = manifest.files_per_day(conn, first=first, last=last)
    data.headline.raw_files = sum(d.files for d in data.lake)
    data.headline.raw_bytes = sum(d.bytes for d in data.lake)


def retention_outlook(policy: Any, *, conn: psycopg.Connection, service: BlobServiceClient | None, now: datetime,
                      horizons: tuple[int, ...] = HORIZON_DAYS) -> RetentionOutlook:
    """What the stack's retention will do next: `lifecycle.plan.make_plan` today, then by
    the end of UTC day +N for each horizon (cumulative: what will have been archived or
    deleted by then if nothing else changes). The blob inventory is listed once."""
    from lifecycle.plan import make_plans

    labels: list[tuple[str, datetime]] = []
    for days in horizons:
        at = now if days == 0 else datetime.combine(now.date() + timedelta(days=days + 1), datetime.min.time(),
                                                    tzinfo=UTC)
        labels.append(("today" if days == 0 else f"by {(at - timedelta(days=1)):%Y-%m-%d} (+{days} d)", at))
    rows: dict[tuple[str, str, str, str], RetentionRow] = {}
    for i, plan in enumerate(make_plans(policy, [at for _, at in labels], service=service, conn=conn)):
        for r in plan.rows():
            if r["action"] == "none due":
                continue
            key = (str(r["store"]), str(r["rule"]), str(r["target"]), str(r["action"]))
            row = rows.setdefault(key, RetentionRow(*key, due=[(0, None)] * len(horizons)))
            row.due[i] = (int(r["count"]), None if r["bytes"] is None else int(r["bytes"]))
    return RetentionOutlook(stack=policy.stack, files=tuple(policy.files), horizons=labels,
                            rows=sorted(rows.values(), key=lambda r: (r.store, r.target, r.action)),
                            blob_inventory=service is not None)


def top_merchants(merchants: list[Merchant], n: int = TOP_MERCHANTS) -> list[Merchant]:
    """The busiest merchants by transactions (ties by id)."""
    return sorted(merchants, key=lambda m: (-m.transactions, m.merchant_id))[:n]


def worst_merchants(merchants: list[Merchant], n: int = TOP_MERCHANTS,
                    min_transactions: int = MIN_MERCHANT_TRANSACTIONS) -> tuple[list[Merchant], int]:
    """The merchants with the lowest approval rate among those with at least
    `min_transactions` (fewer say little); when none has that many, all of them count.
    Returns them and the threshold applied."""
    threshold = min_transactions if any(m.transactions >= min_transactions for m in merchants) else 1
    eligible = [m for m in merchants if m.transactions >= threshold]
    return sorted(eligible, key=lambda m: (m.rate, -m.transactions, m.merchant_id))[:n], threshold
