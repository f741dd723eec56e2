"""Validation and normalisation of payment events (contract section 1). No I/O."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from txmetrics.core.events import InboundEvent, PaymentEvent, Rejection, parse_event


def valid(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "e-1", "transaction_id": "t-1", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m-1",
        "amount": "12.30", "currency": "USD", "payment_method": "card", "status": "approved",
    }
    for k, v in overrides.items():
        if v is ...:
            event.pop(k, None)
        else:
            event[k] = v
    return event


def parse(body: dict[str, Any] | bytes) -> PaymentEvent | Rejection:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_event(InboundEvent(body=raw, partition_id="3", sequence_number=42))


def test_a_valid_event_is_normalised() -> None:
    ev = parse(valid(occurred_at="2026-03-01T05:30:00.123456+05:30", amount=12.30, processing_ms=87,
                     country="DE", extra_field={"kept": True}))
    assert isinstance(ev, PaymentEvent)
    assert ev.occurred_at.isoformat() == "2026-03-01T00:00:00.123456+00:00"
    assert ev.amount == Decimal("12.30") and isinstance(ev.amount, Decimal)
    assert ev.processing_ms == 87 and ev.country == "DE"
    assert json.loads(ev.payload)["extra_field"] == {"kept": True}
    assert (ev.partition_id, ev.sequence_number) == ("3", 42)


@pytest.mark.parametrize("body, code", [
    (b"\xff\xfe{}", "body_not_utf8"),
    (b"{not json", "body_not_json"),
    (b"[1, 2]", "body_not_object"),
    (b'"just a string"', "body_not_object"),
    (b"{" + b'"pad": "' + b"x" * (1024 * 1024) + b'"}', "body_too_large"),
    (valid(event_id=...), "missing_event_id"),
    (valid(event_id=""), "invalid_event_id"),
    (valid(event_id="x" * 129), "invalid_event_id"),
    (valid(event_id=7), "invalid_event_id"),
    (valid(transaction_id=...), "missing_transaction_id"),
    (valid(occurred_at=...), "missing_occurred_at"),
    (valid(occurred_at="2026-03-01T10:00:00"), "invalid_occurred_at"),
    (valid(occurred_at="2026-03-01"), "invalid_occurred_at"),
    (valid(occurred_at="2026-02-30T10:00:00Z"), "invalid_occurred_at"),
    (valid(occurred_at=1700000000), "invalid_occurred_at"),
    (valid(merchant_id=""), "invalid_merchant_id"),
    (valid(amount=...), "missing_amount"),
    (valid(amount=-0.01), "invalid_amount"),
    (valid(amount="12,30"), "invalid_amount"),
    (valid(amount="-1"), "invalid_amount"),
    (valid(amount=True), "invalid_amount"),
    (valid(amount="1e999"), "invalid_amount"),
    (valid(amount=[1]), "invalid_amount"),
    (valid(currency="usd"), "invalid_currency"),
    (valid(currency="USDT"), "invalid_currency"),
    (valid(currency=...), "missing_currency"),
    (valid(payment_method=...), "missing_payment_method"),
    (valid(status="maybe"), "invalid_status"),
    (valid(status=...), "missing_status"),
    (valid(processing_ms=-1), "invalid_processing_ms"),
    (valid(processing_ms=1.5), "invalid_processing_ms"),
    (valid(processing_ms="12"), "invalid_processing_ms"),
    (valid(country="DEU"), "invalid_country"),
    (valid(card="4111"), "invalid_card"),
    (valid(attributes=[1]), "invalid_attributes"),
    (valid(merchant_id="m\u0000x"), "invalid_merchant_id"),
    (valid(merchant_id=4111111111111111), "invalid_merchant_id"),   # types before masking (issue 11)
    (valid(event_id=["e"]), "invalid_event_id"),
    # a sane time range only (issue 11: these raised in the UTC-day helper or had no partition)
    (valid(occurred_at="0001-01-01T00:00:00+00:01"), "invalid_occurred_at"),
    (valid(occurred_at="9999-12-31T23:59:59-00:01"), "invalid_occurred_at"),
    (valid(occurred_at="9999-12-31T23:59:59.999999Z"), "invalid_occurred_at"),
    (valid(occurred_at="1969-12-31T23:59:59.999999Z"), "invalid_occurred_at"),
    (valid(occurred_at="2100-01-01T00:00:00Z"), "invalid_occurred_at"),
    (valid(occurred_at="2026-03-01T12:00:00+99:00"), "invalid_occurred_at"),
    (valid(occurred_at="2026-03-01T12:00:00+05:99"), "invalid_occurred_at"),   # RFC 3339: offset minutes 00-59
    (valid(occurred_at="2026-03-01T12:00:00.5-00:60"), "invalid_occurred_at"),
    (valid(occurred_at="\uff12\uff10\uff12\uff16-03-01T12:00:00Z"), "invalid_occurred_at"),   # full-width digits
    # `$` matched before a trailing newline (issue 11): fullmatch
    (valid(occurred_at="2026-03-01T12:00:00Z\n"), "invalid_occurred_at"),
    (valid(currency="USD\n"), "invalid_currency"),
    (valid(country="DE\n"), "invalid_country"),
    (valid(processing_ms=1e300), "invalid_processing_ms"),
    (valid(amount="1" * 200), "invalid_amount"),
])
def test_bad_events_get_a_machine_readable_code(body: dict[str, Any] | bytes, code: str) -> None:
    result = parse(body)
    assert isinstance(result, Rejection), result
    assert result.error_code == code
    assert result.detail
    assert (result.partition_id, result.sequence_number) == ("3", 42)


def test_rejection_keeps_the_event_id_when_it_can_be_read_and_a_stable_item_key() -> None:
    a = parse(valid(status="maybe"))
    b = parse(valid(status="maybe"))
    assert isinstance(a, Rejection) and isinstance(b, Rejection)
    assert a.event_id == "e-1"
    assert a.item_key == b.item_key
    # the same bad event sent again, from another partition, is the same event (contract
    # section 2): the same key, so failed_items gets no second row
    other = parse_event(InboundEvent(body=json.dumps(valid(status="maybe")).encode(), partition_id="3",
                                     sequence_number=43))
    assert isinstance(other, Rejection) and other.item_key == a.item_key
    # a body with no readable event_id cannot be told from another sender's identical bytes:
    # keyed by its delivery (the host's redelivery keeps the key, another delivery does not)
    anonymous = [parse_event(InboundEvent(body=b"{}", partition_id=p, sequence_number=n)) for p, n in
                 (("3", 43), ("3", 43), ("3", 44), ("1", 43))]
    keys = [r.item_key for r in anonymous if isinstance(r, Rejection)]
    assert len(keys) == 4 and keys[0] == keys[1] and len(set(keys)) == 3
    # an event_id that is itself what is wrong still names the event (an audit: a row per resend);
    # null or empty names nothing
    for event_id, named in (("x" * 129, True), (12345, True), (1.5, True), (None, False), ("", False), (True, False)):
        body = json.dumps(valid(event_id=event_id)).encode()
        resent = [parse_event(InboundEvent(body=body, partition_id=p, sequence_number=n)) for p, n in (("0", 7), ("1", 9))]
        assert all(isinstance(r, Rejection) and r.event_id is None for r in resent), event_id
        assert (resent[0].item_key == resent[1].item_key) is named, event_id


@pytest.mark.parametrize("amount, expected", [("0", "0"), (0, "0"), ("12.30", "12.30"), (1234567.891, "1234567.891"),
                                              ("0.000000001", "0.000000001")])
def test_amounts_are_exact_decimals(amount: Any, expected: str) -> None:
    ev = parse(valid(amount=amount))
    assert isinstance(ev, PaymentEvent) and ev.amount == Decimal(expected)


@pytest.mark.parametrize("occurred_at, iso", [
    ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00+00:00"),
    ("2099-12-31T23:59:59.999999Z", "2099-12-31T23:59:59.999999+00:00"),
    ("2100-01-01T05:29:59+05:30", "2099-12-31T23:59:59+00:00"),
])
def test_the_time_range_ends_are_accepted(occurred_at: str, iso: str) -> None:
    ev = parse(valid(occurred_at=occurred_at))
    assert isinstance(ev, PaymentEvent) and ev.occurred_at.isoformat() == iso


@pytest.mark.parametrize("occurred_at", ["1990-12-31T23:59:60Z", "1990-12-31T15:59:60-08:00",
                                         "1990-12-31t23:59:60.5z", "1991-01-01T05:29:60+05:30"])
def test_a_leap_second_is_the_last_instant_of_its_utc_day(occurred_at: str) -> None:
    """RFC 3339's own examples (section 5.8): second 60 at 23:59 UTC is valid. Python's
    datetime has no second 60, so it is read as 23:59:59.999999 UTC: the event stays on its day."""
    ev = parse(valid(occurred_at=occurred_at))
    assert isinstance(ev, PaymentEvent), ev
    assert ev.occurred_at.isoformat() == "1990-12-31T23:59:59.999999+00:00"


@pytest.mark.parametrize("occurred_at", ["2026-03-01T10:00:60Z", "1990-12-31T23:59:60+01:00", "1990-12-31T23:58:60Z",
                                         "1990-12-31T23:59:61Z", "1990-13-31T23:59:60Z"])
def test_second_60_anywhere_else_is_refused(occurred_at: str) -> None:
    rejection = parse(valid(occurred_at=occurred_at))
    assert isinstance(rejection, Rejection) and rejection.error_code == "invalid_occurred_at", rejection


def test_optional_fields_may_be_null() -> None:
    ev = parse(valid(event_type=None, processing_ms=None, country=None, card=None, attributes=None))
    assert isinstance(ev, PaymentEvent) and ev.event_type is None and ev.processing_ms is None


_TEXT = st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["", " ", "\t", "a\x00b", "x" * 129, "x" * 257]),
                  st.integers(-3, 3), st.booleans(), st.lists(st.integers(), max_size=1),
                  st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


_USUAL = {"event_id": "e-1", "transaction_id": "t-1", "merchant_id": "m-1", "payment_method": "card",
          "status": "approved", "currency": "EUR", "country": "DE", "event_type": "capture", "card": {"bin": "4"},
          "attributes": {"a": 1}, "occurred_at": "2026-03-01T10:00:00Z", "amount": "1.50", "processing_ms": 5}
_ODD = st.one_of(_TEXT, st.sampled_from(["Approved", "usd", "EURO", "de", "DEU", "2026-03-01T10:00:00", "-1", 1.5]))


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_USUAL)), _ODD, max_size=2))
@example(changes={})        # the usual event as it is: the fast path takes it, so the comparison runs
def test_the_usual_event_path_agrees_with_the_rule_by_rule_path(changes: dict[str, Any]) -> None:
    """The fast path accepts only what the rule-by-rule validation accepts, and builds the same
    event; whatever it declines, the rule-by-rule path decides (with its error code). Events
    are a usual one with one or two fields changed to anything, so every rule is reached."""
    from txmetrics.core import events

    doc = {**_USUAL, **changes}
    inbound = InboundEvent(b"{}", "0", 1)
    try:
        careful: Any = events._validate_field_by_field(dict(doc), "{}", inbound, False)
    except events._Invalid as exc:
        careful = ("invalid", exc.code)
    try:
        usual: Any = events._validate_usual(dict(doc), "{}", inbound)
    except events._Invalid as exc:
        usual = ("invalid", exc.code)
    if usual is None:
        return          # declined: the rule-by-rule path is what parse_event uses then
    assert usual == careful


def _occurred(parse: Any, value: str) -> int | str:
    from txmetrics.core.events import _Invalid

    try:
        return int(parse(value))
    except _Invalid as bad:
        return f"{bad.code}: {bad.detail}"


def _two_digits(low: int, high: int) -> st.SearchStrategy[str]:
    """In range half the time, any two digits otherwise."""
    return st.one_of(st.integers(low, high), st.integers(0, 99)).map("{:02d}".format)


_DIGITS2 = st.integers(0, 99).map("{:02d}".format)


@settings(max_examples=3000, deadline=None)
@given(year=st.one_of(st.integers(1969, 2100), st.integers(0, 9999)).map("{:04d}".format), month=_two_digits(1, 12),
       day=_two_digits(1, 31), hour=_two_digits(0, 23), minute=_two_digits(0, 59), second=_two_digits(0, 59),
       fraction=st.text("0123456789", max_size=8).map(lambda f: f".{f}" if f else ""),
       separator=st.sampled_from("TTTt "), offset=st.one_of(st.sampled_from(["Z", "z", "+00:00", "-00:00"]), st.tuples(
           st.sampled_from("+-"), _DIGITS2, _DIGITS2).map(lambda t: f"{t[0]}{t[1]}:{t[2]}")))
@example(year="2026", month="03", day="01", hour="23", minute="59", second="60", fraction="", separator="T", offset="Z")
@example(year="9999", month="12", day="31", hour="23", minute="59", second="59", fraction="", separator="T",
         offset="-00:01")
def test_the_usual_time_form_reads_as_the_general_path_does(year: str, month: str, day: str, hour: str, minute: str,
                                                            second: str, fraction: str, separator: str,
                                                            offset: str) -> None:
    """occurred_at's fast path (upper-case T and Z, up to six fractional digits, read by
    datetime.fromisoformat as it is) gives the general path's instant, or hands the value to it:
    the same result or the same error, for valid and impossible dates, fractions of any length,
    every offset and both cases of T and Z."""
    from txmetrics.core.events import _parse_occurred_at, _parse_occurred_at_general

    value = f"{year}-{month}-{day}{separator}{hour}:{minute}:{second}{fraction}{offset}"
    assert _occurred(_parse_occurred_at, value) == _occurred(_parse_occurred_at_general, value)


@settings(max_examples=1000, deadline=None)
@given(moment=st.datetimes(), offset_minutes=st.integers(-23 * 60 - 59, 23 * 60 + 59), digits=st.integers(0, 6))
def test_valid_times_of_the_usual_form_read_as_the_general_path_does(moment: Any, offset_minutes: int,
                                                                     digits: int) -> None:
    from txmetrics.core.events import _parse_occurred_at, _parse_occurred_at_general

    sign, minutes = ("-" if offset_minutes < 0 else "+"), abs(offset_minutes)
    fraction = f".{moment.microsecond:06d}"[:digits + 1] if digits else ""
    value = f"{moment:%Y-%m-%dT%H:%M:%S}{fraction}{'Z' if not offset_minutes else f'{sign}{minutes // 60:02d}:{minutes % 60:02d}'}"
    assert _occurred(_parse_occurred_at, value) == _occurred(_parse_occurred_at_general, value)


_DECIMAL_TEXT = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.tuples(st.integers(-10**20, 10**20), st.integers(-14, 14)).map(lambda t: f"{t[0]}e{t[1]}"),
    st.tuples(st.integers(0, 10**13), st.text("0123456789", min_size=1, max_size=12)).map(lambda t: f"{t[0]}.{t[1]}"),
    st.sampled_from(["0.0", "-0.0", "1e11", "9.99999999999e11", "1e12", "4111111111111111.0", "4111111111111.1111",
                     "1.0000000000", "1.000000001", "1.0000000001", "999999999999.999999999", "4222222222222.5",
                     "4222222222222", " 1.5", "1.5 ", "01.50", "+1", "1.", ".5", "1,5", "١٢", "000000000000.000000000",
                     "NaN", "sNaN", "Infinity", "-Infinity"]))


def _amount(parse: Any, value: Any) -> tuple[Any, Any]:
    from txmetrics.core.events import _Invalid

    try:
        amount = parse(value)
        return (str(amount), type(amount))
    except _Invalid as bad:
        return (bad.code, bad.detail)


@settings(max_examples=3000, deadline=None)
@given(text=_DECIMAL_TEXT)
def test_the_usual_amount_reads_as_the_general_path_does(text: str) -> None:
    """amount's fast paths (a decoded Decimal or a plain decimal string, 0 <= amount < 10^12, at
    most nine places) give the general path's value or hand the amount to it: the same value or
    the same error, for any number the decoder can make, card-number-like ones included, for
    Decimals made directly, and for the same texts sent as strings."""
    from txmetrics.core.events import (
        NumberOutOfRange,
        _marked_number,
        _number,
        _parse_amount,
        _parse_amount_general,
    )

    # the usual decoder's numbers, the marking decoder's, a Decimal from anywhere else, the text as a string
    for hook in (_number, _marked_number, Decimal, str):
        try:
            value = hook(text)
        except Exception as exc:                 # not a number, out of range, a card number in the usual decoder
            assert isinstance(exc, NumberOutOfRange | InvalidOperation) or type(exc).__name__ == "_CardNumberInNumber"
            continue
        assert _amount(_parse_amount, value) == _amount(_parse_amount_general, value)


@settings(max_examples=2000, deadline=None)
@given(text=st.one_of(_DECIMAL_TEXT, st.integers(-10**20, 10**20).map(str),
                      st.sampled_from(["999999999999", "1000000000000", "4222222222222", "4111111111111111", "9007199254740992",
                                       "9007199254740993", "0", "-0", "-1", "true", "null", "\"5\""])))
def test_the_usual_processing_ms_reads_as_the_general_path_does(text: str) -> None:
    """processing_ms' fast path (a plain int from 0 to below 10^12) gives the general path's
    value or hands the value to it: the same value or the same error for anything the decoders
    make of the text (ints, marked card numbers, Decimals, booleans, null, strings)."""
    import msgspec

    from txmetrics.core.events import _MARKING_DECODER, _parse_processing_ms, _parse_processing_ms_general

    for decode in (lambda t: msgspec.json.decode(t, float_hook=Decimal), _MARKING_DECODER.decode):
        try:
            value = decode(text)
        except Exception:              # not JSON (a bare decimal text such as "1."), or out of range
            continue
        assert _amount(_parse_processing_ms, value) == _amount(_parse_processing_ms_general, value)


@pytest.mark.parametrize("event_type", ["", "   "])
@pytest.mark.parametrize("card_like", [False, True])
def test_event_type_is_any_string_even_an_empty_one(event_type: str, card_like: bool) -> None:
    """The contract calls event_type a "string" where the identifiers and payment_method are
    "non-empty": "" was refused as invalid_event_type (an audit). Both validation paths take it
    (a card-like digit run elsewhere in the body sends it down the field-by-field one)."""
    extra = {"attributes": {"note": "ref 4111 1111 1111 1111"}} if card_like else {}
    ev = parse(valid(event_type=event_type, **extra))
    assert isinstance(ev, PaymentEvent), ev
    assert ev.event_type == event_type
    refused = parse(valid(payment_method=""))                          # still a non-empty string
    assert isinstance(refused, Rejection) and refused.error_code == "invalid_payment_method"


@pytest.mark.parametrize("blank", [" ", "   ", "\t", "\n", "\u00a0", "\u3000"])
@pytest.mark.parametrize("card_like", [False, True])
@pytest.mark.parametrize("field", ["event_id", "transaction_id", "merchant_id", "payment_method"])
def test_a_blank_identifier_is_a_non_empty_string(field: str, blank: str, card_like: bool) -> None:
    """Contract section 1 asks these fields for a "non-empty string", and " " is one: taken as
    sent, by both validation paths (an audit found "   " refused as "must not be empty").
    The empty string is still refused."""
    extra = {"attributes": {"note": "ref 4111 1111 1111 1111"}} if card_like else {}
    ev = parse(valid(**{field: blank}, **extra))
    assert isinstance(ev, PaymentEvent), ev
    assert getattr(ev, field) == blank
    refused = parse(valid(**{field: ""}, **extra))
    assert isinstance(refused, Rejection) and refused.error_code == f"invalid_{field}"


@pytest.mark.parametrize("amount", ["0000000000000.5", " 0000000000000.5 ", "0000000000000", "0004000000000.00",
                                    "0000000012345.67"])
def test_a_zero_padded_amount_string_is_never_stored_without_its_amount_row(amount: str) -> None:
    """A decimal string padded with zeros to 13-19 integer digits ("0000000000000.5", a
    fixed-width producer's 0.5) has no card number in its value, but its digits as written pass
    Luhn 1 time in 10 and masking then rewrites the document's amount ("*********0000.5"): the
    event was stored with its Parquet amount and without its `amount` metric row, so the sums
    missed it in silence (a review). Refused as a card number in the amount instead, as a
    metric source that masking changes is (docs/decisions.md), or stored with its row."""
    from txmetrics.core.catalog import load_catalog
    from txmetrics.core.metrics import extract_metrics
    from txmetrics.settings import BUNDLED_CATALOG

    result = parse(valid(amount=amount))
    if isinstance(result, Rejection):
        assert result.error_code == "card_number_in_amount", result
        return
    catalog = load_catalog(BUNDLED_CATALOG)
    rows = extract_metrics([result], catalog)
    amounts = [v for mi, v in zip(rows.metric_index, rows.value, strict=True) if catalog.metrics[mi].name == "amount"]
    assert amounts == [float(result.amount)], (result.document["amount"], amounts)
