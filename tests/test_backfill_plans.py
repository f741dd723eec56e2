"""The legacy backfill's lookup (manifest.events_with_metric: which events of a file written
before migration 0009 already have a metric's rows) on a day partition analysed early in its
day: the rows written since are beyond its statistics, so PostgreSQL estimates the file's time
range at a row or so, and must still not compare every metric row with every event of the file
(adapters/plans.py)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import psycopg

from tests.helpers import explaining, join_filter_rejections
from txmetrics.adapters import manifest, partitions
from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event

DAY = date(2026, 3, 1)
_ROWS = """
    INSERT INTO dynamic_metrics (event_id, metric_name, value, occurred_at)
    SELECT %(tag)s || i, 'amount', i, %(start)s + i * interval '2 seconds'
      FROM generate_series(1, %(n)s) AS i"""


def _event(event_id: str, occurred_at: datetime) -> PaymentEvent:
    doc = {"event_id": event_id, "transaction_id": "t", "occurred_at": occurred_at.isoformat(), "merchant_id": "m",
           "amount": "1", "currency": "EUR", "payment_method": "card", "status": "approved"}
    event = parse_event(InboundEvent(body=json.dumps(doc).encode(), partition_id="0", sequence_number=0))
    assert isinstance(event, PaymentEvent)
    return event


def test_the_legacy_backfill_lookup_stays_linear_on_a_day_analysed_early(db: psycopg.Connection) -> None:
    partitions.ensure_day_partitions(db, table="dynamic_metrics", first=DAY, last=DAY)
    (partition,), = db.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                               "WHERE i.inhparent = 'dynamic_metrics'::regclass").fetchall()
    early = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    late = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    db.execute(f"ALTER TABLE {partition} SET (autovacuum_enabled = false)")     # keeps these statistics
    try:
        db.execute(_ROWS, {"tag": "early-", "start": early, "n": 500})
        db.execute(f"ANALYZE {partition}")                                       # the day's first minutes
        db.execute(_ROWS, {"tag": "late-", "start": late, "n": 20_000})          # the rest of its day
        # a file of 300 events spread over those hours (a quiet partition's batch), 50 of them
        # without rows: the planner's choice for a small file on a 1-row estimate is a nested loop
        events = [_event(f"late-{i}", late + timedelta(seconds=2 * i)) for i in range(60, 15_060, 60)]
        events += [_event(f"absent-{i}", late + timedelta(seconds=2 * i + 1)) for i in range(60, 15_060, 300)]
        with explaining(db, "FROM dynamic_metrics m") as plans:
            found = manifest.events_with_metric(db, metric="amount", events=events)
    finally:
        db.execute(f"ALTER TABLE {partition} RESET (autovacuum_enabled)")
    assert found == {(ev.event_id, ev.occurred_us) for ev in events[:250]}
    (_sql, plan), = plans
    # a nested loop over (metric rows in the file's range x the file's events) rejects millions here
    assert join_filter_rejections(plan["Plan"]) == 0, plan
