"""Quantiles from histograms merged in SQL across many windows and dimensions are within
1% of the exact quantiles, on lognormal and heavy-tailed data."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from localdev.eventhub import make_batch
from txmetrics import kpi
from txmetrics.core import histogram
from txmetrics.core.masking import luhn_ok


def test_merged_quantiles_within_one_percent(ingest_fn: Callable[..., None], db: psycopg.Connection) -> None:
    rng = np.random.default_rng(17)
    n = 12_000
    start = datetime(2026, 3, 1, tzinfo=UTC)
    amounts = np.round(rng.lognormal(3.5, 1.3, n), 2)
    processing = (rng.pareto(1.2, n) + 1) * 40          # heavy tail
    methods = rng.choice(["card", "wallet", "bank_transfer"], n)
    bodies = []
    for i in range(n):
        bodies.append(json.dumps({
            "event_id": f"h{i}", "transaction_id": "t", "merchant_id": f"m{i % 7}",
            "occurred_at": (start + timedelta(seconds=int(i * 14.4))).isoformat().replace("+00:00", "Z"),  # 2 days
            "amount": f"{amounts[i]:.2f}", "currency": "USD", "payment_method": str(methods[i]), "status": "approved",
            "processing_ms": int(processing[i])}).encode())
    for i in range(0, n, 1000):
        ingest_fn(make_batch(bodies[i:i + 1000], partition_id="0", first_sequence=i))
    windows = db.execute("SELECT count(DISTINCT window_start) FROM aggregate_histograms_current").fetchone()[0]
    assert windows > 500

    end = start + timedelta(days=3)
    exact_processing = np.floor(processing)
    for metric, values in (("amount", amounts), ("processing_ms", exact_processing)):
        overall = kpi.query(db, metric=metric, start=start, end=end)   # amount: per currency, USD only here
        assert len(overall) == 1 and overall[0].count == n
        for q in (0.5, 0.95, 0.99):
            exact = float(np.quantile(values, q, method="lower"))
            est = overall[0].quantiles[q]
            assert est is not None and abs(est - exact) <= 0.01 * exact, (metric, q, est, exact)
        by_method = kpi.query(db, metric=metric, start=start, end=end, group_by=["payment_method"])
        assert {r.dimensions["payment_method"] for r in by_method} == {"card", "wallet", "bank_transfer"}
        for r in by_method:
            subset = values[methods == r.dimensions["payment_method"]]
            assert r.count == len(subset)
            for q in (0.5, 0.95, 0.99):
                exact = float(np.quantile(subset, q, method="lower"))
                assert abs(r.quantiles[q] - exact) <= 0.01 * exact, (metric, r.dimensions, q)
        hourly = kpi.query(db, metric=metric, start=start, end=start + timedelta(hours=6), window="1h")
        assert len(hourly) == 6 and sum(r.count for r in hourly) == int(6 * 3600 / 14.4)


def test_sql_quantile_function_matches_python(db: psycopg.Connection) -> None:
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.lognormal(2, 1, 3000), -rng.lognormal(1, 0.5, 500), np.zeros(200)])
    h = histogram.Histogram.of(values)
    for q in (0.0, 0.05, 0.1, 0.5, 0.9, 0.99, 1.0):
        sql_value = db.execute("SELECT txm_hist_quantile(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                               (q, histogram.SCALE, h.zero_count, h.pos_offset, h.pos_counts, h.neg_offset,
                                h.neg_counts, h.min, h.max)).fetchone()[0]
        assert sql_value == h.quantile(q) or abs(sql_value - h.quantile(q)) <= 1e-9 * abs(h.quantile(q))
    merged = db.execute("SELECT txm_hist_merge_offset(%s, %s), txm_hist_merge_counts(%s, %s, %s, %s)",
                        (3, 1, 3, [1, 2], 1, [5, 0, 7, 1])).fetchone()
    assert merged == (1, [5, 0, 8, 3])


def test_sparse_buckets_become_the_stored_dense_form(db: psycopg.Connection) -> None:
    """txm_hist_dense (writers send sparse buckets) gives the stored dense form: the counts from
    the lowest key to the highest, a zero for every key in between."""
    for keys, counts, dense in (((5,), (3,), (3,)), ((-2, 0, 7), (1, 4, 2), (1, 0, 4, 0, 0, 0, 0, 0, 0, 2)),
                                ((100, 101), (9, 1), (9, 1))):
        stored = db.execute("SELECT txm_hist_dense(%s::int[], %s::bigint[])", (list(keys), list(counts))).fetchone()
        assert stored is not None and tuple(stored[0]) == dense
    assert db.execute("SELECT txm_hist_dense('{}'::int[], '{}'::bigint[])").fetchone() == (None,)
    with pytest.raises(psycopg.errors.RaiseException, match="2 keys but 1 counts"):
        db.execute("SELECT txm_hist_dense('{1,2}'::int[], '{1}'::bigint[])")


def test_quantiles_of_the_largest_valid_values_stay_within_one_percent(
        ingest_fn: Callable[..., None], db: psycopg.Connection) -> None:
    """Amounts below 10^18 and processing_ms up to 2^53 are valid events: read back through
    the KPI API (SQL merge and quantile), their quantiles keep the 1% bound."""
    rng = np.random.default_rng(23)
    n = 400
    # integer parts of 13 digits or more that pass Luhn would be card numbers (refused): step off them
    def not_a_card(exponents: np.ndarray) -> list[int]:
        return [k + 1 if luhn_ok(str(k)) else k for k in (int(10 ** e) for e in exponents)]

    amounts, processing = not_a_card(rng.uniform(12, 17.9, n)), not_a_card(rng.uniform(12, 15.9, n))
    start = datetime(2026, 3, 1, tzinfo=UTC)
    bodies = [json.dumps({
        "event_id": f"big{i}", "transaction_id": "t", "merchant_id": "m", "occurred_at": "2026-03-01T00:01:00Z",
        "amount": f"{amounts[i]}.25", "currency": "IDR", "payment_method": "card", "status": "approved",
        "processing_ms": processing[i]}).encode() for i in range(n)]
    ingest_fn(make_batch(bodies, partition_id="0"))
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (0,)
    for metric, values in (("amount", np.array(amounts) + 0.25), ("processing_ms", np.array(processing, dtype=float))):
        [row] = kpi.query(db, metric=metric, start=start, end=start + timedelta(hours=1))
        assert row.count == n
        for q in (0.5, 0.95, 0.99):
            exact = float(np.quantile(values, q, method="lower"))
            assert abs(row.quantiles[q] - exact) <= 0.01 * exact, (metric, q, row.quantiles[q], exact)
