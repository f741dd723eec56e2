"""Acceptance audit: a custom metric catalog (METRIC_CATALOG) end to end, checked against an
independent computation: dynamic_metrics rows, aggregate_histograms of every window size after a
fold, txmetrics kpi (--by / --where / --window, rollups), catalog changes between batches and a
backfill of an added metric."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Callable
from datetime import date, datetime
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from txmetrics import kpi, runtime
from txmetrics.core import histogram
from txmetrics.core.catalog import load_catalog
from txmetrics.rollup import roll_day
from txmetrics_cli.main import app

BASE_METRICS: list[dict[str, Any]] = [
    {"name": "amount", "kind": "value", "source": "amount", "by": ["currency"]},
    {"name": "processing_ms", "kind": "value", "source": "processing_ms"},
    {"name": "approved", "kind": "flag", "when": {"field": "status", "equals": "approved"}},
    {"name": "risk", "kind": "value", "source": "attributes.risk.score"},
    {"name": "vip", "kind": "flag", "when": {"field": "attributes.vip", "equals": True}},
    {"name": "has_3ds", "kind": "flag", "when": {"field": "attributes.three_ds", "exists": True}},
    {"name": "gold", "kind": "flag", "when": {"field": "attributes.tier", "in": ["gold", "platinum"]}},
    {"name": "no_ref", "kind": "flag", "when": {"field": "attributes.ref", "equals": None}},
    {"name": "level_2", "kind": "flag", "when": {"field": "attributes.level", "equals": 2}},
    {"name": "not_silver", "kind": "flag", "when": {"field": "attributes.tier", "not_equals": "silver"}},
    {"name": "zero_ref", "kind": "flag", "when": {"field": "attributes.ref", "equals": 0}},
    {"name": "free", "kind": "flag", "when": {"field": "amount", "equals": 0}},
    {"name": "fast", "kind": "flag", "when": {"field": "processing_ms", "in": [0, 1]}},
    {"name": "delta", "kind": "value", "source": "attributes.delta", "by": ["attributes.channel"]},
]
FEE = {"name": "fee", "kind": "value", "source": "attributes.fee", "by": ["currency"]}
SETS = [[], ["payment_method"], ["merchant_id", "payment_method"], ["attributes.channel", "payment_method"],
        ["country2"], ["attributes.vip"]]


def catalog_doc(metrics: list[dict[str, Any]], windows: list[int], sets: list[list[str]] = SETS) -> dict[str, Any]:
    return {"version": 1, "window_seconds": windows, "metrics": metrics, "dimension_sets": sets,
            "extra_fields": ["country2"]}


# ------------------------------------------------------------------ the events
RISKS = [0, 0.5, -3.25, 1e-7, 12345678.125, 0.001, 99.99, -0.0, 7, 1e15, "0.75", "-2", None, "n/a", True, 1e-12,
         10**17 + 1, "-123456789012.123456789", "1E+3", " 42 ", 5e-10]


def make_events(prefix: str, n: int, seed: int, days: list[str]) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        day = rnd.choice(days)
        at = f"{day}T{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}Z"
        ev: dict[str, Any] = {
            "event_id": f"{prefix}{i}", "transaction_id": f"t{prefix}{i}", "occurred_at": at,
            "merchant_id": rnd.choice(["m-1", "m-2", "m-3"]),
            "amount": rnd.choice([0, "0.00", "12.30", 5, "1000000000.5", 999999999999.99, "0.01", 250.75]),
            "currency": rnd.choice(["EUR", "USD"]), "payment_method": rnd.choice(["card", "wallet"]),
            "status": rnd.choice(["approved", "declined", "failed", "pending"])}
        if rnd.random() < 0.8:
            ev["processing_ms"] = rnd.choice([0, 1, 35, 120, 9000, 2**40])
        if rnd.random() < 0.7:
            ev["country2"] = rnd.choice(["DE", "FR"])
        attrs: dict[str, Any] = {}
        r = rnd.random()
        if r < 0.1:
            attrs = {}
        elif r < 0.15:
            attrs = {"risk": "high"}            # not an object: no risk.score
        else:
            risk = rnd.choice(RISKS)
            if risk is not None or rnd.random() < 0.5:
                attrs["risk"] = {"score": risk}
            else:
                attrs["risk"] = {}
        if rnd.random() < 0.7:
            attrs["channel"] = rnd.choice(["web", "app", "pos"])
        v = rnd.random()
        if v < 0.3:
            attrs["vip"] = True
        elif v < 0.5:
            attrs["vip"] = False
        elif v < 0.6:
            attrs["vip"] = "true"
        elif v < 0.7:
            attrs["vip"] = 1
        elif v < 0.8:
            attrs["vip"] = None
        if rnd.random() < 0.4:
            attrs["three_ds"] = rnd.choice([True, False, "v2", 0, None])
        if rnd.random() < 0.6:
            attrs["tier"] = rnd.choice(["gold", "platinum", "silver", "Gold", None, 1])
        if rnd.random() < 0.5:
            attrs["ref"] = rnd.choice([None, "abc", 0, False, ""])
        if rnd.random() < 0.6:
            attrs["level"] = rnd.choice([2, 2.0, "2", 3, 2.00000001, True, 1.999])
        if rnd.random() < 0.6:
            attrs["delta"] = rnd.choice([-5, -0.001, 0, 3.5, "4e2", -1e10, 1e-5])
        if rnd.random() < 0.5:
            attrs["fee"] = rnd.choice([0.25, "1.10", 3, -0.5, 0])
        if attrs or rnd.random() < 0.5:
            ev["attributes"] = attrs
        out.append(ev)
    return out


# ------------------------------------------------------------------ the independent computation
_MISSING = object()


def get(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def as_decimal(v: Any) -> Decimal | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, str):
        try:
            d = Decimal(v.strip())
        except Exception:
            return None
        return d if d.is_finite() else None
    return None


def json_eq(value: Any, operand: Any) -> bool:
    if isinstance(operand, bool) or operand is None or isinstance(operand, str):
        return type(value) is type(operand) and value == operand
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return Decimal(repr(value)) == Decimal(repr(operand)) if isinstance(value, float) else Decimal(value) == Decimal(
        repr(operand) if isinstance(operand, float) else operand)


def expected_value(metric: dict[str, Any], ev: dict[str, Any]) -> Decimal | None:
    if metric["kind"] == "value":
        return as_decimal(get(ev, metric["source"]))
    when = metric["when"]
    value = get(ev, when["field"])
    if when["field"] == "amount" and isinstance(value, str):
        value = float(value) if float(value) != int(float(value)) else int(float(value))   # "0.00" is 0 here
    if "not_equals" in when:
        ok = not json_eq(value, when["not_equals"])
    elif "exists" in when:
        ok = (value is not None) == when["exists"]
    elif "equals" in when:
        ok = json_eq(value, when["equals"])
    else:
        ok = any(json_eq(value, o) for o in when["in"])
    return Decimal(1) if ok else Decimal(0)


def to_us(at: str) -> int:
    return int(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()) * 1_000_000


def dim_value(ev: dict[str, Any], name: str) -> Any:
    return get(ev, name)


def expected_groups(metric: dict[str, Any], events: list[dict[str, Any]], windows: list[int],
                    sets: list[list[str]]) -> dict[tuple[int, int, str], list[Decimal]]:
    """(window_seconds, window_start_us, dims json) -> values."""
    out: dict[tuple[int, int, str], list[Decimal]] = defaultdict(list)
    by = metric.get("by", [])
    distinct = list(dict.fromkeys(tuple(sorted(set(s) | set(by))) for s in sets))
    for ev in events:
        v = expected_value(metric, ev)
        if v is None:
            continue
        t = to_us(ev["occurred_at"])
        for dims in distinct:
            text = json.dumps({d: dim_value(ev, d) for d in dims}, sort_keys=True, separators=(",", ":"))
            for w in windows:
                out[(w, t - t % (w * 1_000_000), text)].append(v)
    return out


def exact_sum(values: list[Decimal]) -> Decimal:
    ctx = Context(prec=500)
    total = Decimal(0)
    for v in values:
        total = ctx.add(total, v)
    return total


def lower_quantile(values: list[float], q: float) -> float:
    vals = sorted(values)
    return vals[math.floor(q * (len(vals) - 1))]


def close(a: float, b: float) -> bool:
    if abs(b) < 1e-9:
        return abs(a) < 1e-9
    return abs(a - b) <= 0.01 * abs(b)


def stored_groups(db: psycopg.Connection, metric: str) -> dict[tuple[int, int, str], tuple[Any, ...]]:
    # quantiles from the stored buckets in Python (histogram.quantile, which test_histogram_sql holds
    # equal to the SQL txm_hist_quantile, which payment_metrics_5m uses): the SQL function over every row of four window sizes took
    # 16 of this test's 53 s
    rows = db.execute(
        "SELECT window_seconds, (extract(epoch FROM window_start) * 1000000)::bigint, dimensions::text, count, sum, "
        "min, max, scale, zero_count, pos_offset, pos_counts, neg_offset, neg_counts "
        "FROM aggregate_histograms WHERE metric_name = %s AND window_seconds <> 86400", (metric,)).fetchall()
    out = {}
    for w, start, d, count, total, low, high, scale, zero, pos_off, pos, neg_off, neg in rows:
        assert scale == histogram.SCALE
        quantiles = tuple(histogram.quantile(q, zero, pos_off, pos or [], neg_off, neg or [], low, high)
                          for q in (0.5, 0.99))
        out[(w, start, json.dumps(json.loads(d), sort_keys=True, separators=(",", ":")))] = \
            (count, total, low, high, *quantiles)
    return out


def check_aggregates(db: psycopg.Connection, metric: dict[str, Any], expected: dict[tuple[int, int, str], list[Decimal]]
                     ) -> None:
    stored = stored_groups(db, metric["name"])
    assert set(stored) == set(expected), (metric["name"], sorted(set(stored) ^ set(expected))[:5])
    for key, values in expected.items():
        count, total, lo, hi, p50, p99 = stored[key]
        floats = [float(v) for v in values]
        assert count == len(values), (metric["name"], key)
        assert Decimal(total) == exact_sum(values), (metric["name"], key, total, exact_sum(values))
        assert lo == min(floats) and hi == max(floats), (metric["name"], key, lo, hi)
        if metric["kind"] == "value":
            assert close(p50, lower_quantile(floats, 0.5)), (metric["name"], key, p50, sorted(floats))
            assert close(p99, lower_quantile(floats, 0.99)), (metric["name"], key, p99, sorted(floats))


def expected_kpi(metric: dict[str, Any], events: list[dict[str, Any]], *, start: str, end: str,
                 group_by: list[str], filters: dict[str, str], window: int | None) -> dict[tuple[Any, ...], Any]:
    a, b = to_us(start + "T00:00:00Z" if "T" not in start else start), to_us(end + "T00:00:00Z" if "T" not in end
                                                                                else end)
    grouping = list(dict.fromkeys([*group_by, *metric.get("by", [])]))
    out: dict[tuple[Any, ...], list[Decimal]] = defaultdict(list)
    for ev in events:
        t = to_us(ev["occurred_at"])
        if not a <= t < b:
            continue
        if any(_as_text(dim_value(ev, k)) != v for k, v in filters.items()):
            continue
        v = expected_value(metric, ev)
        if v is None:
            continue
        bucket = None if window is None else t - t % (window * 1_000_000)
        out[(bucket, *(dim_value(ev, d) for d in grouping))].append(v)
    return out


def _as_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def kpi_map(rows: list[kpi.KpiRow], grouping: list[str]) -> dict[tuple[Any, ...], kpi.KpiRow]:
    return {(None if r.window_start is None else int(r.window_start.timestamp()) * 1_000_000,
             *(r.dimensions.get(d) for d in grouping)): r for r in rows}


def check_kpi(db: psycopg.Connection, catalog: Any, metric: dict[str, Any], events: list[dict[str, Any]], *,
              start: str, end: str, group_by: list[str] = (), filters: dict[str, str] | None = None,  # type: ignore
              window: str | None = None, use_rollups: bool = True) -> None:
    filters = filters or {}
    grouping = list(dict.fromkeys([*group_by, *metric.get("by", [])]))
    got = kpi_map(kpi.query(db, metric=metric["name"], start=_t(start), end=_t(end), group_by=list(group_by),
                            filters=filters, window=window, use_rollups=use_rollups, catalog=catalog), grouping)
    want = expected_kpi(metric, events, start=start, end=end, group_by=list(group_by), filters=filters,
                        window=kpi.WINDOWS[window] if window else None)
    assert set(got) == set(want), (metric["name"], group_by, filters, window, sorted(set(got) ^ set(want), key=str)[:5])
    for key, values in want.items():
        row = got[key]
        floats = [float(v) for v in values]
        assert row.count == len(values), (metric["name"], key)
        assert row.sum == exact_sum(values), (metric["name"], key, row.sum, exact_sum(values))
        assert row.min == min(floats) and row.max == max(floats)
        if metric["kind"] == "value":
            for q, est in row.quantiles.items():
                assert est is not None and close(est, lower_quantile(floats, q)), (metric["name"], key, q, est)


def _t(text: str) -> datetime:
    if "T" not in text:
        text += "T00:00:00+00:00"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_payment_metrics_5m(db: psycopg.Connection, events: list[dict[str, Any]]) -> None:
    want: dict[tuple[int, str, str], list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        t = to_us(ev["occurred_at"])
        want[(t - t % 300_000_000, ev["merchant_id"], ev["payment_method"])].append(ev)
    rows = db.execute(
        "SELECT (extract(epoch FROM window_start) * 1000000)::bigint, merchant_id, payment_method, transaction_count, "
        "approved_count, approval_rate, currency, amount_sum, amount_sum_by_currency, processing_ms_count, "
        "processing_ms_p50, processing_ms_p95, processing_ms_p99 FROM payment_metrics_5m").fetchall()
    got = {(r[0], r[1], r[2]): r[3:] for r in rows}
    assert set(got) == set(want)
    for key, evs in want.items():
        n, approved, rate, currency, amount_sum, by_currency, pm_count, p50, p95, p99 = got[key]
        assert n == len(evs) and approved == sum(e["status"] == "approved" for e in evs)
        assert math.isclose(rate, approved / n)
        sums: dict[str, Decimal] = defaultdict(Decimal)
        for e in evs:
            sums[e["currency"]] += as_decimal(e["amount"])  # type: ignore[operator]
        assert {k: Decimal(str(v)) for k, v in by_currency.items()} == sums
        if len(sums) == 1:
            assert currency == next(iter(sums)) and amount_sum == next(iter(sums.values()))
        else:
            assert currency is None and amount_sum is None
        ms = [float(e["processing_ms"]) for e in evs if "processing_ms" in e]
        assert (pm_count or 0) == len(ms)
        for q, est in ((0.5, p50), (0.95, p95), (0.99, p99)):
            if ms:
                assert close(est, lower_quantile(ms, q)), (key, q, est, ms)
            else:
                assert est is None


# ------------------------------------------------------------------ the test
DAYS = ["2026-03-01", "2026-03-02"]


def use_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, doc: dict[str, Any]) -> Any:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    runtime.reset()
    return load_catalog(path)


def deliver_in_batches(deliver: Callable[..., None], events: list[dict[str, Any]], first_seq: int) -> None:
    for i in range(0, len(events), 37):
        deliver(events[i:i + 37], partition_id=str((i // 37) % 2), first_sequence=first_seq + i)


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": None})


def test_custom_catalog_end_to_end(deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat1 = use_catalog(tmp_path, monkeypatch, "cat1.yaml", catalog_doc(BASE_METRICS, [60, 300, 3600]))
    phase_a = make_events("a", 400, 1, DAYS)
    deliver_in_batches(deliver, phase_a, 0)
    # the function refused nothing
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (0,)
    # dynamic_metrics rows
    for metric in BASE_METRICS:
        want = {ev["event_id"]: float(v) for ev in phase_a if (v := expected_value(metric, ev)) is not None}
        got = dict(db.execute("SELECT event_id, value FROM dynamic_metrics WHERE metric_name = %s",
                              (metric["name"],)).fetchall())
        assert got == want, (metric["name"], {k: (got.get(k), want.get(k)) for k in set(got) ^ set(want)
                                              or {k for k in got if got[k] != want.get(k)}})
    result = cli("aggregates", "fold")
    assert result.exit_code == 0, result.output
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (0,)
    for metric in BASE_METRICS:
        check_aggregates(db, metric, expected_groups(metric, phase_a, [60, 300, 3600], SETS))
    check_payment_metrics_5m(db, phase_a)
    # KPIs
    for metric in BASE_METRICS:
        check_kpi(db, cat1, metric, phase_a, start="2026-03-01", end="2026-03-03")
        check_kpi(db, cat1, metric, phase_a, start="2026-03-01T06:00Z", end="2026-03-02T18:30Z", window="1h")
        check_kpi(db, cat1, metric, phase_a, start="2026-03-01", end="2026-03-03", group_by=["merchant_id"],
                  filters={"payment_method": "card"}, window="1d")
        check_kpi(db, cat1, metric, phase_a, start="2026-03-01", end="2026-03-03", group_by=["attributes.channel"],
                  filters={"payment_method": "wallet"})
        check_kpi(db, cat1, metric, phase_a, start="2026-03-01", end="2026-03-03", group_by=["country2"])
        check_kpi(db, cat1, metric, phase_a, start="2026-03-01", end="2026-03-03", filters={"attributes.vip": "true"})
    # daily rollups answer as the 5-minute rows do
    for d in (date(2026, 3, 1), date(2026, 3, 2)):
        assert roll_day(db, d)
    for metric in BASE_METRICS:
        for kw in ({}, {"group_by": ["merchant_id"]}, {"window": "1d", "group_by": ["payment_method"]}):
            check_kpi(db, cat1, metric, phase_a, start="2026-03-01", end="2026-03-03", **kw)  # type: ignore[arg-type]
            a = kpi.query(db, metric=metric["name"], start=_t("2026-03-01"), end=_t("2026-03-03"), catalog=cat1,
                          **kw)  # type: ignore[arg-type]
            b = kpi.query(db, metric=metric["name"], start=_t("2026-03-01"), end=_t("2026-03-03"), catalog=cat1,
                          use_rollups=False, **kw)  # type: ignore[arg-type]
            assert a == b

    # a range that starts inside a rolled day and ends after another: the rollup serves the full day only
    for metric in BASE_METRICS:
        check_kpi(db, cat1, metric, phase_a, start="2026-03-01T13:35Z", end="2026-03-03",
                  group_by=["attributes.channel"])

    # ---------------- the catalog changes: fee added, level_2 removed, window 900 added
    metrics2 = [m for m in BASE_METRICS if m["name"] != "level_2"] + [FEE]
    cat2 = use_catalog(tmp_path, monkeypatch, "cat2.yaml", catalog_doc(metrics2, [60, 300, 900, 3600]))
    phase_b = make_events("b", 200, 2, DAYS)
    deliver_in_batches(deliver, phase_b, 10_000)
    everything = phase_a + phase_b
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (0,)
    # before any fold: KPIs with pending deltas and stale rollups
    for metric in metrics2:
        if metric is FEE:
            continue
        check_kpi(db, cat2, metric, everything, start="2026-03-01", end="2026-03-03", group_by=["payment_method"])
    # fee: only phase b counted; the CLI says so
    fee_only_b = cli("kpi", "--metric", "fee", "--start", "2026-03-01", "--end", "2026-03-03", "--format", "json")
    assert fee_only_b.exit_code == 0, fee_only_b.output
    assert "not counted" in fee_only_b.stderr, fee_only_b.stderr
    check_kpi(db, cat2, FEE, phase_b, start="2026-03-01", end="2026-03-03")
    # level_2 is gone from the catalog: refused, not answered
    gone = cli("kpi", "--metric", "level_2", "--start", "2026-03-01", "--end", "2026-03-03")
    assert gone.exit_code == 2, gone.output
    assert cli("aggregates", "fold").exit_code == 0
    for d in (date(2026, 3, 1), date(2026, 3, 2)):
        assert roll_day(db, d)
    # backfill fee: exactly once, as if it had been there from the start
    for _ in range(2):
        result = cli("backfill", "--metric", "fee", "--start", "2026-03-01", "--end", "2026-03-03")
        assert result.exit_code == 0, result.output
    assert cli("aggregates", "fold").exit_code == 0
    want = {ev["event_id"]: float(v) for ev in everything if (v := expected_value(FEE, ev)) is not None}
    assert dict(db.execute("SELECT event_id, value FROM dynamic_metrics WHERE metric_name = 'fee'").fetchall()) == want
    check_aggregates(db, FEE, expected_groups(FEE, everything, [60, 300, 900, 3600], SETS))
    for kw in ({}, {"group_by": ["merchant_id"], "window": "1d"}, {"filters": {"country2": "DE"}}):
        check_kpi(db, cat2, FEE, everything, start="2026-03-01", end="2026-03-03", **kw)  # type: ignore[arg-type]
    fee_all = cli("kpi", "--metric", "fee", "--start", "2026-03-01", "--end", "2026-03-03", "--format", "json")
    assert "not counted" not in fee_all.stderr
    # the others, over both phases; window 900 only for the events after the change
    for metric in metrics2:
        if metric is FEE:
            continue
        groups = expected_groups(metric, everything, [60, 300, 3600], SETS)
        groups.update(expected_groups(metric, phase_b, [900], SETS))
        check_aggregates(db, metric, groups)
        check_kpi(db, cat2, metric, everything, start="2026-03-01", end="2026-03-03", group_by=["attributes.channel"])

    # ---------------- level_2 back, [country2] dropped
    sets3 = [s for s in SETS if s != ["country2"]]
    cat3 = use_catalog(tmp_path, monkeypatch, "cat3.yaml", catalog_doc([*BASE_METRICS, FEE], [60, 300, 900, 3600],
                                                                       sets3))
    phase_c = make_events("c", 60, 3, DAYS)
    deliver_in_batches(deliver, phase_c, 20_000)
    everything += phase_c
    level_2 = next(m for m in BASE_METRICS if m["name"] == "level_2")
    note = cli("kpi", "--metric", "level_2", "--start", "2026-03-01", "--end", "2026-03-03", "--format", "json")
    assert note.exit_code == 0 and "not counted" in note.stderr, note.output
    result = cli("backfill", "--metric", "level_2", "--start", "2026-03-01", "--end", "2026-03-03")
    assert result.exit_code == 0, result.output
    assert cli("aggregates", "fold").exit_code == 0
    groups = expected_groups(level_2, phase_a, [60, 300, 3600], SETS)
    for k, v in expected_groups(level_2, phase_b, [60, 300, 900, 3600], sets3).items():
        groups.setdefault(k, []).extend(v)
    for k, v in expected_groups(level_2, phase_c, [60, 300, 900, 3600], sets3).items():
        groups.setdefault(k, []).extend(v)
    check_aggregates(db, level_2, groups)
    for metric in [*BASE_METRICS, FEE]:
        check_kpi(db, cat3, metric, everything, start="2026-03-01", end="2026-03-03", group_by=["merchant_id"])
        check_kpi(db, cat3, metric, everything, start="2026-03-01", end="2026-03-03", window="1h")
    for d in (date(2026, 3, 1), date(2026, 3, 2)):
        assert roll_day(db, d)
    for metric in [*BASE_METRICS, FEE]:
        check_kpi(db, cat3, metric, everything, start="2026-03-01", end="2026-03-03", group_by=["payment_method"])
    # --by country2 is no set of cat3 any more: refused
    refused = cli("kpi", "--metric", "risk", "--start", "2026-03-01", "--end", "2026-03-03", "--by", "country2")
    assert refused.exit_code == 2, refused.output


def test_a_boolean_group_prints_as_the_where_that_selects_it(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The table labels groups `DIM=VALUE`, the form --where takes: a boolean dimension printed
    as Python's `True`, and `--where attributes.vip=True` answered "no data" for a group the
    same table had just shown (filters compare the stored JSON's text, `true`)."""
    use_catalog(tmp_path, monkeypatch, "c.yaml", {"window_seconds": [300], "dimension_sets": [[], ["attributes.vip"]],
                                                  "metrics": [{"name": "risk", "kind": "value",
                                                               "source": "attributes.risk"}]})
    deliver([{"event_id": f"e{i}", "transaction_id": "t", "occurred_at": f"2026-03-01T10:0{i}:00Z", "merchant_id": "m",
              "amount": 1, "currency": "EUR", "payment_method": "card", "status": "approved",
              "attributes": {"risk": i + 1, "vip": v}} for i, v in enumerate([True, False, True])])
    args = ["kpi", "--metric", "risk", "--start", "2026-03-01", "--end", "2026-03-02"]
    table = CliRunner().invoke(app, [*args, "--by", "attributes.vip"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    labels = [line.split()[0] for line in table.stdout.splitlines() if line.startswith("attributes.vip=")]
    assert sorted(labels) == ["attributes.vip=false", "attributes.vip=true"], table.stdout
    for label, count in (("attributes.vip=true", 2), ("attributes.vip=false", 1)):
        result = CliRunner().invoke(app, [*args, "--where", label, "--format", "json"])
        assert [r["count"] for r in json.loads(result.stdout)] == [count], result.output


def test_a_null_group_label_copied_into_where_answers_that_group(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A null group prints as `attributes.tier=null`; `--where attributes.tier=null` answered
    'no data' (->> of a JSON null is SQL NULL, never equal to 'null'; a review)."""
    import json

    import yaml
    from typer.testing import CliRunner

    from tests.test_kpi_set_change import event
    from txmetrics import runtime
    from txmetrics_cli.main import app

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"window_seconds": [300], "dimension_sets": [[], ["attributes.tier"]],
                                    "metrics": [{"name": "approved", "kind": "flag",
                                                 "when": {"field": "status", "equals": "approved"}}]}))
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    runtime.reset()
    evs = [event(i, f"2026-03-01T0{i}:00:00Z") for i in range(2)]
    evs[0]["attributes"] = {"tier": None}
    evs[1]["attributes"] = {"tier": "gold"}
    deliver(evs, partition_id="0")
    base = ["kpi", "--metric", "approved", "--start", "2026-03-01", "--end", "2026-03-02"]
    table = CliRunner().invoke(app, [*base, "--by", "attributes.tier"], env={"COLUMNS": "200"})
    assert "attributes.tier=null" in table.stdout, table.output
    picked = CliRunner().invoke(app, [*base, "--where", "attributes.tier=null", "--format", "json"],
                                env={"COLUMNS": None})
    assert picked.exit_code == 0 and [r["count"] for r in json.loads(picked.stdout or "[]")] == [1], picked.output
