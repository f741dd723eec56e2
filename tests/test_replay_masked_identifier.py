"""(Audit, round 18) an item refused because an identifier held a card number is replayed
only once that identifier is really fixed, not once anything about the item was edited."""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from txmetrics import replay, runtime

EVENT = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": "9.99",
         "currency": "EUR", "payment_method": "card", "status": "approved"}


def test_a_masked_event_id_is_never_replayed_after_an_edit_of_another_field(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str]) -> None:
    """Two events whose ids are card numbers with the same last four are refused
    (card_number_in_event_id); their stored payloads both read "************1111". An operator
    corrects something else on each (`failed set ID note ...`, or `failed fix` of the payload
    `failed show` printed): replayed so, the first was stored under an id its producer never
    sent and the second was taken for a redelivery of it and dropped ("replayed (event already
    ingested: nothing added)"): an event lost, and the merge replay.py says it prevents."""
    deliver([{**EVENT, "event_id": "4111111111111111"}, {**EVENT, "event_id": "5500000000081111",
                                                          "amount": "1.00"}], partition_id="0", first_sequence=1)
    items = [r[0] for r in db.execute("SELECT id FROM failed_items WHERE error_code = 'card_number_in_event_id' "
                                      "ORDER BY id").fetchall()]
    assert len(items) == 2
    for item_id in items:
        replay.set_field(db, item_id, "note", "checked by ops")
    outcomes = replay.replay(db, runtime.get_pipeline(), item_ids=items)
    assert [o.replayed for o in outcomes] == [False, False], outcomes
    assert all("event_id held a card number" in o.note for o in outcomes)
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (0,)
    # the real ids set: both are stored, as two events
    replay.set_field(db, items[0], "event_id", "order-1")
    replay.set_field(db, items[1], "event_id", "order-2")
    assert [o.replayed for o in replay.replay(db, runtime.get_pipeline(), item_ids=items)] == [True, True]
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (2,)
