"""(Audit, round 18) failed items, fixed and replayed (`txmetrics failed fix|set|replay`): no card
number is stored in any form ingest masks, and replays racing live deliveries store each event once."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import archive_rows
from txmetrics import replay, runtime
from txmetrics.adapters.blob import BlobArchive
from txmetrics.core.masking import luhn_ok

PAN = "4111111111111111"
BAD_CURRENCY = {"event_id": "fix-pan", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z",
                "merchant_id": "m", "amount": "9.99", "currency": "eur", "payment_method": "card",
                "status": "approved"}


def _card_numbers(text: str) -> list[str]:
    """The card numbers a JSON reader finds in `text`: 13-19 digit strings (spaces and dashes
    dropped) that pass Luhn, and numbers whose integer part is one."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            digits = "".join(ch for ch in value if ch.isdigit())
            if PAN in digits:
                found.append(value)
        elif isinstance(value, int | Decimal) and not isinstance(value, bool):
            whole = str(abs(int(value)))
            if 13 <= len(whole) <= 19 and luhn_ok(whole):
                found.append(str(value))

    walk(json.loads(text, parse_float=Decimal))
    return found


@pytest.mark.parametrize("written", [
    '"\\u0034111111111111111"',          # a string whose first digit is written as a JSON escape
    "4111111111111111e0",                # a JSON number with an exponent
    "4.111111111111111e15",              # the same number by value
])
def test_failed_fix_never_stores_a_card_number(deliver: Callable[..., None], db: psycopg.Connection,
                                               archive: BlobArchive, env: dict[str, str], tmp_path: Path,
                                               written: str) -> None:
    """contract section 1: no full card number ever reaches storage. Ingest masks each of these
    forms (docs/ingest.md, "Card numbers"); `failed fix` stored them in failed_items.fixed_payload
    as typed, masking the text with `mask_text` only (no escapes, no number values)."""
    deliver([BAD_CURRENCY], partition_id="0", first_sequence=1)
    (item_id,) = db.execute("SELECT id FROM failed_items").fetchone()
    fixed = json.dumps({**BAD_CURRENCY, "currency": "EUR"})[:-1] + f', "note": {written}}}'
    assert _card_numbers(fixed)                     # the file does hold one
    replay.fix(db, item_id, fixed)
    (stored,) = db.execute("SELECT fixed_payload FROM failed_items WHERE id = %s", (item_id,)).fetchone()
    assert _card_numbers(stored) == [], stored
    outcome = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])
    assert outcome[0].replayed, outcome
    rows = archive_rows(archive)
    assert [r[2] for r in rows] == ["fix-pan"] and _card_numbers(rows[0][3]) == []


def test_failed_set_of_a_card_number_keeps_the_payload_json(deliver: Callable[..., None], db: psycopg.Connection,
                                                            env: dict[str, str]) -> None:
    """`failed set ID attributes.ref 4111111111111111` (a number): the stored payload must stay a
    JSON object with the number masked as ingest masks it (the masked string); masking the
    text turned `"ref":4111111111111111` into `"ref":************1111`, which no reader decodes."""
    deliver([BAD_CURRENCY], partition_id="0", first_sequence=1)
    (item_id,) = db.execute("SELECT id FROM failed_items").fetchone()
    replay.set_field(db, item_id, "currency", "EUR")
    shown = replay.set_field(db, item_id, "attributes.ref", replay.parse_value(PAN))
    (stored,) = db.execute("SELECT fixed_payload FROM failed_items WHERE id = %s", (item_id,)).fetchone()
    assert shown == stored
    assert json.loads(stored)["attributes"]["ref"] == "************1111"
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].replayed


def test_replays_racing_the_same_events_live_and_each_other_store_each_once(
        deliver: Callable[..., None], ingest_fn: Callable[[list[Any]], None], db: psycopg.Connection,
        archive: BlobArchive, services: Any) -> None:
    """Each fixed item is replayed twice at once while its corrected event also arrives live from
    the producer: the event is stored once (ledger, metric rows, archive), and every item is
    marked replayed."""
    import threading

    from localdev.eventhub import make_batch

    ids = [f"race-{i}" for i in range(6)]
    deliver([{**BAD_CURRENCY, "event_id": e} for e in ids], partition_id="0", first_sequence=0)
    items = dict(db.execute("SELECT event_id, id FROM failed_items").fetchall())
    for e in ids:
        replay.set_field(db, items[e], "currency", "EUR")
    errors: list[BaseException] = []

    def replaying(item_id: int) -> None:
        try:
            with psycopg.connect(services.database_url, autocommit=True) as conn:
                replay.replay(conn, runtime.get_pipeline(), item_ids=[item_id], force=True)
        except BaseException as exc:      # handed to the test thread
            errors.append(exc)

    def live(event_id: str, seq: int) -> None:
        try:
            ingest_fn(make_batch([{**BAD_CURRENCY, "event_id": event_id, "currency": "EUR"}], partition_id="5",
                                 first_sequence=seq))
        except BaseException as exc:
            errors.append(exc)

    for n, e in enumerate(ids):
        threads = [threading.Thread(target=replaying, args=(items[e],)),
                   threading.Thread(target=replaying, args=(items[e],)),
                   threading.Thread(target=live, args=(e, 100 + n))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (len(ids),)
    assert db.execute("SELECT event_id, count(*) FROM dynamic_metrics GROUP BY 1 HAVING count(*) <> 2").fetchall() == []
    rows = archive_rows(archive)
    assert sorted(r[2] for r in rows) == ids and len({r[:2] for r in rows}) == len(ids)
    assert db.execute("SELECT count(*) FROM failed_items WHERE NOT replayed").fetchone() == (0,)
    assert db.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                      "AND dimensions = '{}'").fetchone() == (len(ids),)
