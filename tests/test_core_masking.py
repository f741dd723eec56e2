"""Card-number masking (PCI DSS): Luhn-valid 13-19 digit runs, plain, spaced or dashed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txmetrics.core.events import InboundEvent, PaymentEvent, Rejection, parse_event
from txmetrics.core.masking import (
    digit_run_possible,
    luhn_ok,
    mask_text,
    mask_value,
    might_contain_pan,
    unescape_card_characters,
)

VISA = "4111111111111111"
AMEX = "378282246310005"      # 15 digits
LONG = "6011000990139424"
NINETEEN = "6304000000000000000"  # 19 digits, Luhn-valid


@pytest.mark.parametrize("text, expected", [
    (f"card {VISA} ok", "card ************1111 ok"),
    ("card 4111 1111 1111 1111.", "card **** **** **** 1111."),
    ("4111-1111-1111-1111", "****-****-****-1111"),
    (AMEX, "***********0005"),
    (f"x{NINETEEN}y", "x***************0000y"),
    ("12 4111111111111111", "12 ************1111"),           # the card hides behind a number
    ("4111 1111 1111 1111 2026", "**** **** **** 1111 2026"),  # ... or before one
    ("4111 1111 1111 1111 2024", "**** **** **** **** 2024"),  # two overlapping Luhn-valid runs: both masked
])
def test_card_numbers_are_masked_keeping_the_last_four(text: str, expected: str) -> None:
    assert mask_text(text) == expected


@pytest.mark.parametrize("text", [
    "order 4111111111111112",          # Luhn-invalid: an order number, left alone
    "ref 123456789012",                # 12 digits: too short
    "id 41111111111111111111111",      # 25 digits in one run: one long number, not a card
    "4111  1111 1111 1111",            # double space breaks the run
    "2026-03-01T10:00:00Z",
    "phone +1 415 555 0100",
])
def test_other_digit_runs_are_left_alone(text: str) -> None:
    assert mask_text(text) == text


def test_luhn() -> None:
    assert luhn_ok(VISA) and luhn_ok(AMEX) and luhn_ok(LONG) and not luhn_ok("4111111111111112")


def test_mask_value_walks_every_string_key_and_number() -> None:
    doc = {"a": [f"pan {VISA}", {"deep": LONG}], VISA: 1, "n": int(VISA), "ok": 4111111111111112}
    masked = mask_value(doc)
    text = json.dumps(masked)
    assert VISA not in text and LONG not in text
    assert masked["ok"] == 4111111111111112


def test_an_event_with_a_card_number_is_processed_and_masked_everywhere() -> None:
    event = {"event_id": "e", "transaction_id": f"t {VISA}", "occurred_at": "2026-03-01T00:00:00Z",
             "merchant_id": "m", "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved",
             "attributes": {"note": "card 4111-1111-1111-1111"}, "card": {"number": VISA}}
    result = parse_event(InboundEvent(body=json.dumps(event).encode(), partition_id="0", sequence_number=1))
    assert isinstance(result, PaymentEvent)
    assert VISA not in result.payload and "4111-1111-1111-1111" not in result.payload
    assert result.transaction_id == "t ************1111"


def test_a_bad_event_with_a_card_number_is_masked_in_payload_and_detail() -> None:
    body = f'{{"event_id": "e", "currency": "{VISA}", broken'.encode()
    result = parse_event(InboundEvent(body=body, partition_id="0", sequence_number=1))
    assert isinstance(result, Rejection)
    assert VISA not in result.payload and VISA not in result.detail
    bad_currency = json.dumps({"event_id": "e", "transaction_id": "t", "occurred_at": "2026-03-01T00:00:00Z",
                               "merchant_id": "m", "amount": 1, "currency": VISA, "payment_method": "card",
                               "status": "approved"}).encode()
    result = parse_event(InboundEvent(body=bad_currency, partition_id="0", sequence_number=2))
    assert isinstance(result, Rejection) and result.error_code == "invalid_currency"
    assert VISA not in result.payload and VISA not in result.detail


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 -4x\u00e9\u20ac\"{}:,"), max_size=60))
def test_the_byte_prefilter_never_hides_a_candidate(text: str) -> None:
    """Whatever the text, a possible PAN passes the cheap byte pre-filter (which events use
    before the regex), so the pre-filter can only save work, never skip masking."""
    if might_contain_pan(text):
        assert digit_run_possible(text.encode())
    assert digit_run_possible(b"card 4111 1111 1111 1111 ok") and not digit_run_possible(b'{"at":"2026-03-01T12:00"}')
    shortest = "a4222222222222b"            # 13 digits: the shortest candidate
    assert might_contain_pan(shortest) and digit_run_possible(shortest.encode())
    assert not digit_run_possible(b"a422222222222b")


def _escaped(text: str) -> str:
    """`text` as JSON \\u escapes, character by character (valid JSON, same string)."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _no_card(text: str) -> bool:
    """Neither the digits nor their JSON escapes of the test card number remain."""
    return VISA not in text and _escaped(VISA) not in text and _escaped(VISA[:12]) not in text


def test_a_card_number_written_as_json_escapes_is_masked_too() -> None:
    body = ('{"event_id": "e", "transaction_id": "t", "occurred_at": "2026-03-01T00:00:00Z", "merchant_id": "m", '
            '"amount": 1, "currency": "USD", "payment_method": "card", "status": "approved", '
            f'"attributes": {{"note": "card {_escaped(VISA)}"}}}}').encode()
    result = parse_event(InboundEvent(body=body, partition_id="0", sequence_number=1))
    assert isinstance(result, PaymentEvent)
    assert _no_card(result.payload) and json.loads(result.payload)["attributes"]["note"] == "card ************1111"
    assert result.document["attributes"]["note"] == "card ************1111"


def test_a_bad_event_with_an_escaped_card_number_is_masked_in_failed_items() -> None:
    bad_status = ('{"event_id": "e", "transaction_id": "t", "occurred_at": "2026-03-01T00:00:00Z", "merchant_id": "m", '
                  f'"amount": 1, "currency": "USD", "payment_method": "card", "status": "{_escaped(VISA)}"}}').encode()
    result = parse_event(InboundEvent(body=bad_status, partition_id="0", sequence_number=1))
    assert isinstance(result, Rejection) and result.error_code == "invalid_status"
    assert _no_card(result.payload) and _no_card(result.detail)
    not_json = f'{{"event_id": "e", "note": "{_escaped(VISA)}", broken'.encode()
    result = parse_event(InboundEvent(body=not_json, partition_id="0", sequence_number=2))
    assert isinstance(result, Rejection) and result.error_code == "body_not_json"
    assert _no_card(result.payload) and "1111" in result.payload


def test_unescaping_keeps_escaped_backslashes_and_valid_json() -> None:
    assert unescape_card_characters(r"a \u0034\u0031\u002D\u0020 b") == "a 41-  b"
    assert unescape_card_characters(r"x \\u0034 y") == r"x \\u0034 y"        # a backslash, then text "u0034"
    assert unescape_card_characters(r"x \\\u0034 y") == r"x \\4 y"
    assert unescape_card_characters(r"\u0041 stays") == r"\u0041 stays"
    doc = {"note": "\\u0034 literally", "n": "4"}
    text = json.dumps(doc)
    assert json.loads(unescape_card_characters(text)) == doc


def test_payload_text_is_kept_as_sent_when_nothing_is_masked() -> None:
    """json.dumps escapes every non-ASCII character by default; such events carry no card
    number and their archived payload stays the exact text that was sent."""
    event = {"event_id": "é1", "transaction_id": "t", "occurred_at": "2026-03-01T00:00:00Z", "merchant_id": "Café Zoë",
             "amount": "1.50", "currency": "EUR", "payment_method": "card", "status": "approved",
             "attributes": {"order": "4111111111111112", "city": "Köln"}}   # a Luhn-invalid number, left alone
    text = json.dumps(event)
    assert "\\u00e9" in text
    result = parse_event(InboundEvent(body=text.encode(), partition_id="0", sequence_number=1))
    assert isinstance(result, PaymentEvent) and result.payload == text and result.merchant_id == "Café Zoë"
