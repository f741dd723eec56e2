"""KPIs over a month (txmetrics.kpi against PostgreSQL): the same quantiles with and without the
daily rollups, within 1% of the exact ones; the payment_metrics_5m view agrees with the KPI query
for a 5-minute window; a late event for a rolled-up day is counted at once and marks the day stale."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import numpy as np
import psycopg
import pytest

from localdev.eventhub import make_batch
from tests.helpers import MONTH_START, ingest_month
from txmetrics import kpi
from txmetrics.rollup import roll_day


def test_kpis_over_a_month_with_and_without_rollups(ingest_fn: Callable[..., None], db: psycopg.Connection) -> None:
    ingest_month(ingest_fn, n=3000, batch=100)
    values = np.array([v for (v,) in db.execute("SELECT value FROM dynamic_metrics "
                                                "WHERE metric_name = 'processing_ms'").fetchall()])
    end = MONTH_START + timedelta(days=31)
    plain = kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)
    db.execute("SELECT txm_fold_aggregates()")     # as the maintenance job does before it rolls up
    assert kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)[0].quantiles == plain[0].quantiles
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        for d in range(31):
            assert roll_day(conn, (MONTH_START + timedelta(days=d)).date())
    assert db.execute("SELECT count(*) FROM aggregate_rollups WHERE NOT stale").fetchone() == (31,)
    rolled = kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)
    assert rolled[0].count == plain[0].count == len(values)
    assert rolled[0].quantiles == plain[0].quantiles
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(plain[0].quantiles[q] - exact) <= 0.01 * exact
    # the view agrees with the query for a single 5-minute window (the busiest: the month's
    # events guarantee one, and a window with processing times)
    busiest = db.execute(
        "SELECT window_start, merchant_id, payment_method, transaction_count, processing_ms_p50 "
        "FROM payment_metrics_5m ORDER BY transaction_count DESC, window_start LIMIT 1").fetchone()
    assert busiest is not None, "payment_metrics_5m has no row after a month of events"
    w, merchant, method, n, p50 = busiest
    assert n > 0 and p50 is not None
    one = kpi.query(db, metric="processing_ms", start=w, end=w + timedelta(minutes=5),
                    filters={"merchant_id": merchant, "payment_method": method})
    approved = kpi.query(db, metric="approved", start=w, end=w + timedelta(minutes=5),
                         filters={"merchant_id": merchant, "payment_method": method})
    assert len(approved) == 1 and approved[0].count == n
    assert len(one) == 1 and one[0].quantiles[0.5] == pytest.approx(p50)

    # a late event for a rolled-up day: counted at once (its delta is pending, read beside the
    # rollup); the fold that merges it marks the day stale; the KPIs stay exact throughout
    late = {"event_id": "late-1", "transaction_id": "t", "occurred_at": "2026-03-10T12:00:00Z", "merchant_id": "m",
            "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved", "processing_ms": 123456}
    ingest_fn(make_batch([late], partition_id="late"))
    after = kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)
    assert after[0].count == len(values) + 1 and after[0].max == 123456
    db.execute("SELECT txm_fold_aggregates()")
    assert db.execute("SELECT stale FROM aggregate_rollups WHERE day = '2026-03-10'").fetchone() == (True,)
    assert db.execute("SELECT count(*) FROM aggregate_rollups WHERE stale").fetchone() == (1,)
    folded = kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)
    assert (folded[0].count, folded[0].max, folded[0].quantiles) == (after[0].count, after[0].max, after[0].quantiles)
