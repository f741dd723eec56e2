"""Replay of failed items (txmetrics.replay against Azurite and PostgreSQL): a fixed item is
replayed once (again: "already replayed"; forced: nothing doubled), and an item refused for a card
number in its event id is replayed only once its id is fixed."""

from __future__ import annotations

import json
from collections.abc import Callable

import psycopg

from tests.helpers import archive_rows, ledger_event_ids
from txmetrics import replay, runtime
from txmetrics.adapters.blob import BlobArchive


def test_fixed_failed_item_is_replayed_once(deliver: Callable[..., None], db: psycopg.Connection,
                                            archive: BlobArchive, env: dict[str, str]) -> None:
    bad = {"event_id": "fix-me", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",
           "amount": "9.99", "currency": "eur", "payment_method": "card", "status": "approved"}
    deliver([bad], partition_id="3", first_sequence=77)
    (item_id,) = db.execute("SELECT id FROM failed_items WHERE event_id = 'fix-me'").fetchone()
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].note.startswith("still invalid")
    replay.set_field(db, item_id, "currency", "EUR")
    outcome = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])
    assert outcome[0].replayed and outcome[0].note == "replayed"
    snapshot = (db.execute("SELECT count(*) FROM dynamic_metrics WHERE event_id = 'fix-me'").fetchone(),
                db.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                           "AND dimensions = '{}'").fetchone(), archive_rows(archive))
    assert snapshot[0] == (2,) and [r[2] for r in snapshot[2]] == ["fix-me"]
    assert snapshot[2][0][:2] == ("replay", item_id)
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].note == "already replayed"
    forced = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id], force=True)
    assert forced[0].note.startswith("replayed (event already ingested")
    assert (db.execute("SELECT count(*) FROM dynamic_metrics WHERE event_id = 'fix-me'").fetchone(),
            db.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                       "AND dimensions = '{}'").fetchone(), archive_rows(archive)) == snapshot
    assert db.execute("SELECT replayed, replayed_at IS NOT NULL, fixed_payload IS NOT NULL FROM failed_items "
                      "WHERE id = %s", (item_id,)).fetchone() == (True, True, True)


def test_an_item_refused_for_a_card_number_id_is_replayed_only_once_fixed(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str]) -> None:
    """Its stored payload has the id masked ("************1111"): replayed as is, the event would
    be stored under an id its producer never sent, the collision issue 11 removed."""
    bad = {"event_id": "4111111111111111", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z",
           "merchant_id": "m", "amount": "9.99", "currency": "EUR", "payment_method": "card", "status": "approved"}
    deliver([bad], partition_id="3", first_sequence=78)
    (item_id, code, payload) = db.execute("SELECT id, error_code, payload FROM failed_items").fetchone()
    assert code == "card_number_in_event_id" and json.loads(payload)["event_id"] == "************1111"
    outcome = replay.replay(db, runtime.get_pipeline(), error_code=code)
    assert not outcome[0].replayed and "event_id held a card number" in outcome[0].note
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (0,)
    replay.set_field(db, item_id, "event_id", "order-77")
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].replayed
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (1,)
    assert ledger_event_ids(db, ["order-77"]) == {"order-77"}
