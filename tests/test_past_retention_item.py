"""(Audit, round 18) an event refused as past_retention is kept whole in failed_items."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg


def test_a_past_retention_item_keeps_the_whole_event(deliver: Callable[..., None], db: psycopg.Connection,
                                                     services: Any) -> None:
    """A past_retention item "is the only copy of a valid event" (docs/retention.md): the
    event is valid (the contract takes bodies up to 1 MiB) and is archived nowhere. Its payload
    was cut to 64 KiB like a bad body's, so the event's tail was lost for good, and the item
    could never be replayed or read back whole."""
    from datetime import date

    from txmetrics.retention import enforce

    def body(event_id: str, day: int, note: str = "") -> str:
        return json.dumps({"event_id": event_id, "transaction_id": "t", "merchant_id": "m",
                           "occurred_at": f"2026-03-{day:02d}T10:00:00Z", "amount": "2.50", "currency": "EUR",
                           "payment_method": "card", "status": "approved", "attributes": {"note": note}})

    deliver([body("old", 1), body("new", 19)], partition_id="0", first_sequence=0)
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        enforce(conn, {"dynamic_metrics": 14, "ingested_events": 14}, date(2026, 3, 20))
    late = body("late-big", 1, "x" * 100_000)
    deliver([late], partition_id="0", first_sequence=10)
    (code, payload, truncated) = db.execute(
        "SELECT error_code, payload, payload_truncated FROM failed_items WHERE event_id = 'late-big'").fetchone()
    assert code == "past_retention"
    assert (truncated, json.loads(payload)) == (False, json.loads(late))
