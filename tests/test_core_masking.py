"""Card-number masking (PCI DSS): Luhn-valid 13-19 digit runs, plain, spaced or dashed."""

from __future__ import annotations

import json
import random
import uuid
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from txmetrics.core.events import InboundEvent, PaymentEvent, Rejection, parse_event
from txmetrics.core.masking import (
    digit_run_possible,
    luhn_ok,
    mask_json_text,
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
    (f"card {NINETEEN}.", "card ***************0000."),
    ("12 4111111111111111", "12 ************1111"),           # the card hides behind a number
    ("4111 1111 1111 1111 2026", "**** **** **** 1111 2026"),  # ... or before one
    ("4111 1111 1111 1111 2024", "**** **** **** **** 2024"),  # two overlapping Luhn-valid runs: both masked
    ("x12 4111111111111111", "x12 ************1111"),         # a space separates words
    ("3782-822463-10005", "****-******-*0005"),               # Amex as printed: one dashed word
    ("pan:4111111111111111;", "pan:************1111;"),       # punctuation is a boundary
    ("card+4111111111111111", "card+************1111"),       # a URL-encoded space
    ("/pay?card=4111111111111111&cvv=1", "/pay?card=************1111&cvv=1"),
    ("note\n4111111111111111", "note\n************1111"),
    ("-4111111111111111", "-************1111"),               # a sign is no word
    ("4111111111111111.00", "************1111.00"),           # an integer part is one
    ("(4111 1111 1111 1111)", "(**** **** **** 1111)"),
    ("DE89 3704 0044 0532 0130 00 4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00 **** **** **** 1111"),
    # ...even when the IBAN with the card's first group passes mod 97 too: a German IBAN has 22 characters
    ("DE89 3704 0044 0532 0130 00 4819 3036 4262 1297", "DE89 3704 0044 0532 0130 00 **** **** **** 1297"),
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
    # contract section 1: a digit run that touches a letter or a digit is not a card number
    f"x{NINETEEN}y",
    "1d87daa6-40de-80cc-eb20-48041771665b",   # issue 11: 20-48041771665 passes Luhn inside this UUID
    "4abc-8123-412345678900",          # UUID groups: 8123-412345678900 (16 digits) passes Luhn
    "ORD-2026-000123456788",           # a hyphenated word: 2026-000123456788 passes Luhn
    "evt_4111111111111111",            # a snake_case word
    "4111111111111111-ab",
    "32738016-8191-4276-80f5-e7283dbe05fe",   # 32738016-8191-4276 passes Luhn; the run is glued to "f"
    "4111111111111111-12x",            # a card number before a dash is one only in a token of its own
    "4111111111111111-12",             # ... and before what is written as card data (a CVV, an expiry)
    "4111111111111111-12345",
    "1764412345678-5",                 # a Redis stream entry id: epoch milliseconds, a sequence
    "0.4111111111111111",              # the digits of a fraction
    "+8613812345678",                  # E.164 phone numbers (13-15 digits)
    "tel:+4915112345678",
    "DE89 3704 0044 0532 0130 00",     # IBANs (mod 97), spaced or not, holding Luhn-valid windows:
    "DE76 0345 2783 2302 9682 02",     # 0345 2783 2302 9682
    "GB59 OAIP 3257 5748 5660 67",     # 3257 5748 5660 67
    "FR62 7986 0960 5756 6703 3849 163",
    "GB79ASKH37984963896412",
])
def test_other_digit_runs_are_left_alone(text: str) -> None:
    assert mask_text(text) == text


def test_issue_11_uuid_and_its_masked_look_alike_stay_distinct() -> None:
    """Masking rewrote 286 of 100,000 uuid4 strings, so two ids differing only in masked
    digits became one; a seeded sample (localdev/masking_fp.py measures 1,000,000) changes none."""
    rng = random.Random(11)
    uuids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(50_000)]
    assert [u for u in uuids if mask_text(u) != u] == []
    # the same strings in text and in JSON text that could not be decoded
    assert mask_json_text(json.dumps({"ids": uuids[:2000]})) == json.dumps({"ids": uuids[:2000]})


@settings(max_examples=300, deadline=None)
@given(length=st.integers(min_value=13, max_value=19), seed=st.integers(0, 2**32),
       shape=st.sampled_from(["{}", "card {}", "card {}.", '"{}"', "pan:{}", "12 {}", "{} 2024", "({})", "x {} y",
                              "a\n{}", "#{}", "pan={}&", "[{}]", "*{}*",
                              # an expiry or a CVV after a dash (an audit: the digits after the dash
                              # made one run too long to be a card number, and it was left whole)
                              "{}-12/26", "{}-123", "exp {}-1/27", "12 {}-3456 x", "{}-12-26", "{}-0126-123",
                              "{}-123-12/26"]),
       separator=st.sampled_from(["", " ", "-"]))
def test_random_card_numbers_are_always_masked(length: int, seed: int, shape: str, separator: str) -> None:
    """No issuer (IIN) filter: any Luhn-valid 13-19 digit number, in any of these shapes."""
    rng = random.Random(seed)
    body = "".join(rng.choice("0123456789") for _ in range(length - 1))
    pan = next(body + c for c in "0123456789" if luhn_ok(body + c))
    written = separator.join(pan[i:i + 4] for i in range(0, length, 4))
    text = shape.format(written)
    masked = mask_text(text)
    assert written not in masked and pan not in masked.replace(" ", "").replace("-", "")
    # only digits turn into stars: separators, words and length are kept
    assert len(masked) == len(text) and all(m == t or (m == "*" and t.isdigit()) for m, t in zip(masked, text, strict=True))


def test_a_huge_grid_of_small_numbers_is_masked_whole_in_bounded_time() -> None:
    """1 MiB of "1 1 1 ..." would need a window check per word and offset (seconds): past a
    budget a run is masked whole, so no card number can hide in it and time stays linear."""
    hidden = "1 " * 100 + "4111 1111 1111 1111" + " 2" * 300_000
    masked = mask_text(hidden)
    assert "4111" not in masked and "1111 1111 1111" not in masked
    assert len(masked) == len(hidden)
    assert mask_text("card 4111 1111 1111 1111 and 2 3") == "card **** **** **** 1111 and 2 3"   # normal text: exact


def test_luhn() -> None:
    assert luhn_ok(VISA) and luhn_ok(AMEX) and luhn_ok(LONG) and not luhn_ok("4111111111111112")


def test_mask_value_walks_every_string_key_and_number() -> None:
    doc = {"a": [f"pan {VISA}", {"deep": LONG}], VISA: 1, "n": int(VISA), "ok": 4111111111111112}
    masked = mask_value(doc)
    text = json.dumps(masked)
    assert VISA not in text and LONG not in text
    assert masked["ok"] == 4111111111111112


@pytest.mark.parametrize("number, masked", [
    (-4111111111111111, "-************1111"),
    (Decimal("4111111111111111.0"), "************1111"),
    (Decimal("-4111111111111111.00"), "-************1111"),
    (Decimal("4.111111111111111E+15"), "************1111"),
    (Decimal("41111111111111110E-1"), "************1111"),
    (Decimal("1.8E+13"), "**********0000"),                  # 18000000000000 passes Luhn
])
def test_numbers_that_hold_a_card_number_are_masked_in_any_form(number: int | Decimal, masked: str) -> None:
    assert mask_value({"n": number}) == {"n": masked}


@pytest.mark.parametrize("number", [Decimal("0.4111111111111111"), Decimal("12.30"), 1772366400124,
                                    Decimal("1E+400"), Decimal("4111111111111112.0"), -4111111111111112])
def test_other_numbers_are_left_alone(number: int | Decimal) -> None:
    assert mask_value([number]) == [number]


@pytest.mark.parametrize("number", ["4111111111111111.0", "-4111111111111111", "4111111111111111.00",
                                    "4.111111111111111e15", "4111111111111111E0", "4111111111111111e2",
                                    "41111111111111110e-1", "-4.111111111111111E+15"])
def test_a_card_number_in_a_json_number_never_reaches_the_archive(number: str) -> None:
    """Issue 11: {"n": 4111111111111111.0}, {"n": -4111111111111111} and amounts such as
    4111111111111111.00 were archived verbatim (only positive integers were masked)."""
    event = ('{"event_id": "e", "transaction_id": "t", "occurred_at": "2026-03-01T00:00:00Z", "merchant_id": "m", '
             f'"amount": 1, "currency": "USD", "payment_method": "card", "status": "approved", "n": {number}, '
             f'"attributes": {{"deep": [{number}]}}}}')
    result = parse_event(InboundEvent(body=event.encode(), partition_id="0", sequence_number=1))
    assert isinstance(result, PaymentEvent)
    assert number not in result.payload and "4111111111111111" not in result.payload
    assert "111111111111111" not in result.payload          # nor the digits of an exponent form
    assert json.loads(result.payload)["n"].endswith("1111") and result.document["attributes"]["deep"][0].endswith("1111")
    for field in ("amount", "processing_ms"):
        typed = event.replace('"amount": 1,', f'"amount": 1, "{field}": {number},' if field != "amount"
                              else f'"amount": {number},')
        refused = parse_event(InboundEvent(body=typed.encode(), partition_id="0", sequence_number=2))
        assert isinstance(refused, Rejection), (field, number)
        assert refused.error_code in (f"card_number_in_{field}", f"invalid_{field}"), refused.error_code
        assert "4111111111111111" not in refused.payload and "111111111111111" not in refused.payload


def test_an_event_with_a_card_number_is_processed_and_masked_everywhere() -> None:
    event = {"event_id": "e", "transaction_id": "t", "occurred_at": "2026-03-01T00:00:00Z",
             "merchant_id": "m", "amount": 1, "currency": "USD", "payment_method": f"card {VISA}",
             "status": "approved", "event_type": f"auth {LONG}",
             "attributes": {"note": "card 4111-1111-1111-1111"}, "card": {"number": VISA}}
    result = parse_event(InboundEvent(body=json.dumps(event).encode(), partition_id="0", sequence_number=1))
    assert isinstance(result, PaymentEvent)
    assert VISA not in result.payload and "4111-1111-1111-1111" not in result.payload
    assert result.payment_method == "card ************1111" and result.event_type == "auth ************9424"
    assert result.document["card"]["number"] == "************1111"


@pytest.mark.parametrize("field", ["event_id", "transaction_id", "merchant_id"])
@pytest.mark.parametrize("value", [VISA, f"id {VISA}", "4111 1111 1111 1111", "5569684415301111"])
def test_an_identifier_that_holds_a_card_number_refuses_the_event(field: str, value: str) -> None:
    """Issue 11: identifiers are never rewritten (ids "4111111111111111" and "5569684415301111"
    were both masked to "************1111" and the second event dropped as a duplicate)."""
    event = {"event_id": "e-1", "transaction_id": "t-1", "occurred_at": "2026-03-01T00:00:00Z", "merchant_id": "m",
             "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved", field: value}
    result = parse_event(InboundEvent(body=json.dumps(event).encode(), partition_id="0", sequence_number=1))
    assert isinstance(result, Rejection)
    assert result.error_code == f"card_number_in_{field}"
    digits = value.replace(" ", "")
    assert digits not in result.payload.replace(" ", "") and digits not in result.detail.replace(" ", "")
    assert json.loads(result.payload)[field].endswith(digits[-4:])          # masked payload in failed_items
    if field == "event_id":
        assert result.event_id is not None and digits not in result.event_id and result.event_id.endswith("1111")


@pytest.mark.parametrize("identifier", ["1d87daa6-40de-80cc-eb20-48041771665b", "ORD-2026-000123456788",
                                        "4abc-8123-412345678900", "evt_4111111111111111", "+8613812345678"])
def test_identifiers_that_are_no_card_number_are_kept_exactly(identifier: str) -> None:
    event = {"event_id": identifier, "transaction_id": identifier, "occurred_at": "2026-03-01T00:00:00Z",
             "merchant_id": identifier, "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved"}
    result = parse_event(InboundEvent(body=json.dumps(event).encode(), partition_id="0", sequence_number=1))
    assert isinstance(result, PaymentEvent)
    assert (result.event_id, result.transaction_id, result.merchant_id) == (identifier,) * 3
    assert json.loads(result.payload)["event_id"] == identifier


@pytest.mark.parametrize("number", [int(VISA), 7, -1])
def test_an_identifier_sent_as_a_number_is_invalid_not_masked_into_a_string(number: int) -> None:
    """Issue 11: "merchant_id": 4111111111111111 was masked into a string, which then passed."""
    event = {"event_id": "e", "transaction_id": "t", "occurred_at": "2026-03-01T00:00:00Z", "merchant_id": number,
             "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved"}
    result = parse_event(InboundEvent(body=json.dumps(event).encode(), partition_id="0", sequence_number=1))
    assert isinstance(result, Rejection) and result.error_code == "invalid_merchant_id"
    assert VISA not in result.payload


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
@example(text="card 4111 1111 1111 1111")       # a candidate, whatever hypothesis draws: the implication is tested
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


def test_a_small_event_of_spaced_readings_is_archived_as_sent() -> None:
    """A review: with the window budget per event but counted as an upper bound per run
    (words x 19), 60 strings of 20 two-digit readings (3.8 KB, no card number) ran out of it
    and its last strings were masked whole. Every window checked is counted now."""
    rng = random.Random(3)
    rows: list[str] = []
    while len(rows) < 400:                        # 23 KB: about 62,000 windows (a second review)
        row = " ".join(str(rng.randint(10, 99)) for _ in range(20))
        if mask_text(row) == row:                     # no card number in any string on its own
            rows.append(row)
    doc = {"readings": rows}
    assert mask_value(doc) == doc


@pytest.mark.parametrize("text", ["4111111111111111e5 x", "  -4111111111111111E+5,", "4111111111111111.5e-3}"])
def test_a_top_level_number_in_exponent_form_is_masked_in_an_undecodable_body(text: str) -> None:
    """A JSON text's value starts at its beginning too: decoded, `4111111111111111e5` (a JSON
    number, not an object) is stored masked; a body that cannot be decoded and starts with that
    number kept it whole, as _NUMBER_EXPONENT only looked after ':', ',' and '['."""
    assert "4111111111111111" not in mask_json_text(text)
    refused = parse_event(InboundEvent(body=text.encode(), partition_id="0", sequence_number=1))
    assert isinstance(refused, Rejection) and "4111111111111111" not in refused.payload


@pytest.mark.parametrize("value", ["ref:4111111111111111e5", "a,4111111111111111E1", "[4111111111111111e2]"])
def test_exponent_masking_leaves_strings_of_an_undecodable_body_alone(value: str) -> None:
    """Inside a string, digits touching a letter are no card number (contract section 1, and a
    decoded body keeps `"ref:4111111111111111e5"` as sent); masking never changes anything else.
    A body that cannot be decoded had such a string masked when a ':', ',' or '[' came before it."""
    body = json.dumps({"event_id": "e", "note": value})
    decoded = parse_event(InboundEvent(body=body.encode(), partition_id="0", sequence_number=1))
    assert value in decoded.payload                       # refused (fields missing), stored as sent
    undecodable = body[:-1] + ", "                           # the same text, cut: not JSON
    assert mask_json_text(undecodable) == undecodable
