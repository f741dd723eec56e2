"""Card numbers never reach storage: not the blobs, not any table, not the logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import psycopg
import pyarrow as pa
import pytest

from tests.helpers import archive_rows
from txmetrics.adapters import parquet
from txmetrics.adapters.blob import BlobArchive

PANS = ["4111111111111111", "5500005555555559", "378282246310005", "6011000990139424", "3530111333300000"]
WRITTEN = [PANS[0], "5500 0055 5555 5559", "3782-822463-10005", PANS[3], "3530 1113 3330 0000"]
ORDER_NUMBER = "4111111111111112"   # Luhn-invalid: must survive untouched


def escaped(text: str) -> str:
    """JSON \\u escapes for every character: the same string to any JSON reader."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


BASE_JSON = ('"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": "5.00", '
             '"payment_method": "card", "status": "approved"')


def events() -> list[Any]:
    base = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": "5.00",
            "currency": "USD", "payment_method": "card", "status": "approved"}
    return [
        {**base, "event_id": "p1", "card": {"number": WRITTEN[0], "bin": "411111", "last4": "1111"}},
        {**base, "event_id": "p2", "attributes": {"note": f"card {WRITTEN[1]} order {ORDER_NUMBER}"}},
        {**base, "event_id": "p3", "event_type": f"tx {WRITTEN[2]}", "free": [{"deep": WRITTEN[3]}]},
        # identifiers are never rewritten: one holding a card number refuses the event
        {**base, "event_id": f"p4 {WRITTEN[4]}", "merchant_id": f"m {PANS[0]}"},
        {**base, "event_id": "p5", "card": {"number": int(PANS[3])}},
        {**base, "event_id": "p6", "currency": PANS[2]},                        # bad event carrying a PAN
        f'{{"event_id": "p7", "broken": "{WRITTEN[1]}"'.encode(),              # unparseable, carrying a PAN
        # the same, spelt with JSON escapes, which no scan of the raw text sees
        f'{{"event_id": "p8", "currency": "USD", {BASE_JSON}, "note": "card {escaped(PANS[4])}"}}'.encode(),
        f'{{"event_id": "p9", "currency": "{escaped(PANS[0])}", {BASE_JSON}}}'.encode(),
        f'{{"event_id": "p10", "broken": "{escaped(PANS[1])}"'.encode(),
        # card numbers as JSON numbers of any form (issue 11: archived verbatim before)
        f'{{"event_id": "p11", "currency": "USD", {BASE_JSON}, "n": {PANS[0]}.0, "m": -{PANS[1]}, '
        f'"e": {PANS[3][0]}.{PANS[3][1:]}e15}}'.encode(),
        ('{"event_id": "p12", "currency": "USD", ' + BASE_JSON.replace('"5.00"', PANS[0] + ".00") + "}").encode(),
    ]


def all_text(conn: psycopg.Connection) -> str:
    parts = []
    for table in ("dynamic_metrics", "aggregate_histograms", "aggregate_deltas", "event_dimensions", "failed_items",
                  "ingested_events", "raw_files"):
        parts += [r[0] for r in conn.execute(f"SELECT t::text FROM {table} t").fetchall()]
    return "\n".join(parts)


def test_no_card_number_in_blobs_tables_or_logs(deliver: Callable[..., None], db: psycopg.Connection,
                                                archive: BlobArchive, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    deliver(events(), partition_id="0")
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (6,)
    assert dict(db.execute("SELECT event_id, error_code FROM failed_items WHERE event_id IN ('p6', 'p9', 'p12') "
                           "OR error_code LIKE 'card_number_in_%'").fetchall()) == {
        "p4 **** **** **** 0000": "card_number_in_event_id", "p6": "invalid_currency", "p9": "invalid_currency",
        "p12": "card_number_in_amount"}
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (6,)

    blobs = list(archive.list())
    assert blobs
    texts = []
    for b in blobs:
        raw = archive.download(b.name)
        table = parquet.decode(raw)
        for column in table.columns:
            if pa.types.is_string(column.type):
                texts += [v for v in column.to_pylist() if v]
        for pan in PANS:
            assert pan.encode() not in raw and escaped(pan).encode() not in raw
    stored = "\n".join(texts) + "\n" + all_text(db) + "\n" + caplog.text
    for pan in PANS:
        assert pan not in stored
    for written in WRITTEN:
        assert written not in stored
    for pan in PANS:
        assert escaped(pan[:13]) not in stored
    assert ORDER_NUMBER in "\n".join(texts)        # order numbers are left alone
    payloads = {json.loads(t)["event_id"]: json.loads(t) for t in texts if t.startswith("{")}
    assert payloads["p1"]["card"]["number"] == "************1111"
    assert payloads["p1"]["card"]["last4"] == "1111"
    assert payloads["p5"]["card"]["number"] == "************9424"
    assert payloads["p8"]["note"] == "card ************0000"
    assert (payloads["p11"]["n"], payloads["p11"]["m"], payloads["p11"]["e"]) == (
        "************1111", "-************5559", "************9424")
    assert payloads["p3"]["event_type"] == "tx ****-******-*0005"


def test_a_repeated_key_cannot_carry_a_card_number_into_storage(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        caplog: pytest.LogCaptureFixture) -> None:
    """JSON decoders keep the last value of a repeated key, so masking the decoded document
    never sees the earlier ones; a payload kept as sent would carry them. Accepted and refused
    events alike: the stored payload is then the masked document, whose values it shows."""
    caplog.set_level(logging.DEBUG)
    valid = '{"event_id": "%s", "currency": "USD", ' + BASE_JSON + ", %s}"
    by_value = "4111111.111111111e9"          # a card number by its value: no 13-digit run in the text
    deliver([
        (valid % ("r1", f'"note": "{PANS[0]}", "note": "x"')).encode(),
        (valid % ("r2", f'"attributes": {{"k": "{WRITTEN[1]}"}}, "attributes": {{}}')).encode(),
        (valid % ("r3", f'"n": {PANS[3]}, "n": 1')).encode(),
        (valid % ("r4", f'"note": "{escaped(PANS[4])}", "note": "w"')).encode(),
        (valid % ("r5", f'"card": {{"number": "{WRITTEN[2]}", "number": "****"}}')).encode(),
        (valid % ("r6", f'"n": {by_value}, "n": 2')).encode(),
        # refused events: a bad currency, a number out of range (decoded leniently for the payload),
        # not an object, a missing field; two of them with the card number only by value
        (valid.replace('"USD"', '"usd"') % ("r7", f'"note": "{PANS[0]}", "note": "y"')).encode(),
        (valid % ("r8", f'"big": 1e99999, "note": "{PANS[1]}", "note": "z"')).encode(),
        (valid.replace('"USD"', '"usd"') % ("r9", f'"n": {by_value}, "n": 3')).encode(),
        f'[{{"event_id": "r10", "n": {by_value}, "n": 4}}]'.encode(),
    ], partition_id="0")
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (6,)
    assert sorted(db.execute("SELECT error_code FROM failed_items").fetchall()) == [
        ("body_not_object",), ("invalid_currency",), ("invalid_currency",), ("number_out_of_range",)]
    raw = b"".join(archive.download(b.name) for b in archive.list())
    # the stored texts themselves: a JSON reader would show only the last copy of each key
    archived = {e: p for _, _, e, p in archive_rows(archive)}
    failed = [p for (p,) in db.execute("SELECT payload FROM failed_items").fetchall()]
    stored = "\n".join([*archived.values(), *failed]) + all_text(db) + caplog.text
    for pan in PANS:
        assert pan.encode() not in raw and escaped(pan).encode() not in raw
        assert pan not in stored and escaped(pan) not in stored
    for written in [*WRITTEN, by_value]:
        assert written not in stored
    # the payload shows the values the event was validated with (the last of each key)
    payloads = {e: json.loads(p) for e, p in archived.items()}
    assert (payloads["r1"]["note"], payloads["r2"]["attributes"], payloads["r3"]["n"], payloads["r4"]["note"],
            payloads["r5"]["card"], payloads["r6"]["n"]) == ("x", {}, 1, "w", {"number": "****"}, 2)
    assert sorted(str(json.loads(p)) for p in failed)[0].startswith("[{'event_id': 'r10', 'n': 4")
