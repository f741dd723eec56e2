"""Card numbers in the forms an audit (round 18) found reaching storage: the integer digits of an
out-of-range number, exponent forms in bodies that cannot be decoded, a refused number quoted in a
detail, and keys that mask to the same text (contract sections 1 and 3), through the function."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

import psycopg
import pyarrow.parquet as pq
import pytest

from tests.helpers import archive_rows
from txmetrics.adapters.blob import BlobArchive

PAN = "4111111111111111"
BASE = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": "5.00",
        "currency": "USD", "payment_method": "card", "status": "approved"}


def body_with(event_id: str, extra: str) -> bytes:
    """A valid event's JSON text with `extra` (raw JSON members) appended."""
    return (json.dumps({"event_id": event_id, **BASE})[:-1] + ", " + extra + "}").encode()


def stored_text(db: psycopg.Connection, archive: BlobArchive) -> str:
    parts = []
    for table in ("dynamic_metrics", "aggregate_deltas", "event_dimensions", "failed_items", "ingested_events",
                  "raw_files"):
        parts += [r[0] for r in db.execute(f"SELECT t::text FROM {table} t").fetchall()]
    for blob in archive.list():
        raw = archive.download(blob.name)
        parts.append(raw.decode("latin-1"))
        table = pq.read_table(io.BytesIO(raw))
        parts += [str(v) for column in table.columns for v in column.to_pylist()]
    return "\n".join(parts)


def test_a_card_number_written_as_an_out_of_range_number_is_masked_in_failed_items(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        caplog: pytest.LogCaptureFixture) -> None:
    """`4111111111111111e0` is masked (its integer digits as written are a card number); with an
    exponent beyond the limit the event is refused (number_out_of_range), and its failed item
    must not carry the card number either: not in the payload, not in the detail."""
    caplog.set_level(logging.DEBUG)
    numbers = [f"{PAN}e99999", f"-{PAN}E+1001", f"{PAN}e-99999", f"{PAN}e" + "0" * 100 + "1"]
    deliver([body_with("ok", '"n": 1'), *(body_with(f"big{i}", f'"big": {n}') for i, n in enumerate(numbers))],
            partition_id="0")
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (1,)
    rows = db.execute("SELECT event_id, error_code, detail, payload FROM failed_items ORDER BY event_id").fetchall()
    assert [(e, c) for e, c, _, _ in rows] == [(f"big{i}", "number_out_of_range") for i in range(len(numbers))]
    for _, _, detail, payload in rows:
        assert PAN not in detail
        assert PAN not in payload
    assert PAN not in stored_text(db, archive) + caplog.text


def test_a_card_number_by_value_in_a_refused_typed_field_is_masked_in_the_detail(
        deliver: Callable[..., None], db: psycopg.Connection) -> None:
    """3530111333300000 (a Luhn-valid test card number) sent as `-353011133330000e1`: a number
    whose value's integer part is a card number is masked in the payload; the detail that
    quotes the refused value printed it as `-3.53011133330000E+15`, the card number by value."""
    jcb = "3530111333300000"
    deliver([body_with("neg-pms", '"processing_ms": -353011133330000e1').replace(b', "processing_ms": 1}', b"}"),
             (json.dumps({"event_id": "neg-amount", **BASE})[:-1] + "}").replace(
                 '"amount": "5.00"', '"amount": -353011133330000e1').encode()], partition_id="0")
    rows = db.execute("SELECT event_id, error_code, detail, payload FROM failed_items ORDER BY event_id").fetchall()
    assert [(e, c) for e, c, _, _ in rows] == [("neg-amount", "invalid_amount"), ("neg-pms", "invalid_processing_ms")]
    for _, _, detail, payload in rows:
        assert jcb not in payload
        assert "3.53011133330000" not in detail and jcb not in detail, detail


def test_a_card_number_in_exponent_form_is_masked_in_an_undecodable_body(
        deliver: Callable[..., None], db: psycopg.Connection) -> None:
    """Decoded, `4111111111111111e0` is masked (its integer digits as written); a body that
    cannot be decoded (not JSON, not UTF-8, too deep, an integer of 4,301 digits) is masked as
    text, where `4111111111111111.0` was masked but `4111111111111111e0` kept whole (the `e`
    touching the digits read as a letter)."""
    deliver([
        f'{{"event_id": "cut", "n": {PAN}e0,'.encode(),
        f'{{"event_id": "latin1", "n": {PAN}E+2, "s": "\xe9"}}'.encode("latin-1"),
        f'{{"event_id": "deep", "n": [-{PAN}e-1], "d": {"[" * 70}{"]" * 70}}}'.encode(),
        f'{{"event_id": "huge", "big": {"7" * 4301}, "n": {PAN}e0}}'.encode(),
        body_with("ok", f'"note": "x {PAN}e5"'),       # inside a string: touches a letter, left as it is
    ], partition_id="0")
    codes = db.execute("SELECT error_code FROM failed_items ORDER BY error_code").fetchall()
    assert codes == [("body_not_json",), ("body_not_utf8",), ("body_too_deep",), ("number_out_of_range",)]
    for (payload,) in db.execute("SELECT payload FROM failed_items").fetchall():
        assert PAN not in payload, payload[-80:]
        assert PAN[-4:] in payload
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (1,)


def test_keys_that_mask_to_the_same_text_keep_every_value_in_the_payload(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """Keys are masked too; two card numbers used as keys of one object with the same last
    four digits (or a key already written masked) became one key, and the archived payload
    kept only the last value: the other was lost from the archive (contract section 3: the
    payload is the event after masking, "so nothing is lost")."""
    other = "5500000000081111"          # Luhn-valid, last four as PAN's
    deliver([body_with("keys", f'"attributes": {{"{PAN}": "first", "{other}": "second", '
                               f'"x": {{"************1111": "third", "{PAN}": "fourth"}}}}')], partition_id="0")
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (0,)
    (payload,) = [p for _, _, _, p in archive_rows(archive)]
    assert PAN not in payload and other not in payload
    for value in ("first", "second", "third", "fourth"):
        assert f'"{value}"' in payload, payload
