"""Validation and normalisation of payment events (contract section 1).

`parse_event` turns one Event Hubs event into either a `PaymentEvent` (normalised: UTC
timestamp, decimal amount, card numbers masked) or a `Rejection` carrying a stable,
machine-readable `error_code`. It never raises: whatever the body holds, it is accepted or
refused on its own, in time linear in its size.

Steps, in this order:
  1. bounds: at most 1 MiB, UTF-8, nesting at most 64 deep (`bounded_json`);
  2. decode: numbers with a fraction or exponent become exact Decimals once their size is
     known to be sane; a number that holds a card number is marked (`CardLikeNumber`);
  3. validate the document *as sent*: types first (a number in merchant_id is invalid, not
     masked into a string that passes); identifiers and typed columns that hold a card
     number refuse the event (identifiers are never rewritten, and the dedupe key is the
     identifier the producer sent);
  4. mask card numbers in the whole document; the payload is re-encoded only when that
     changed something, so other events are archived exactly as sent.

Error codes: body_not_utf8, body_not_json, body_not_object, body_too_large, body_too_deep,
number_out_of_range, missing_<field>, invalid_<field> (field = event_id, transaction_id,
occurred_at, merchant_id, amount, currency, payment_method, status, event_type,
processing_ms, country, card, attributes), card_number_in_<field> (event_id,
transaction_id, merchant_id, amount, processing_ms), card_number_in_metric_source (from the
caller's MaskedValueCheck, the catalog's: a value metric's source holding a card number), and internal_error (an unforeseen
exception: a bug, recorded for that event alone). Then the declaration's own rules
(core/fields.py): invalid_schema_version, unsupported_schema_version, and invalid_<field> /
card_number_in_<field> for fields added by later schema versions.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from .bounded_json import (
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_NUMBER_CHARS,
    NumberOutOfRange,
    bounded_decimal,
    nesting_exceeds,
)
from .fields import RFC3339, declared_problem, leap_second
from .masking import (
    CardLikeNumber,
    bodies_with_card_characters,
    card_digits_of_decimal,
    card_digits_of_int,
    card_digits_of_number,
    card_digits_written,
    digit_run_possible,
    has_escaped_card_characters,
    mask_json_text,
    mask_text,
    mask_value,
    mask_written_number,
    might_contain_pan,
    shown_number,
)
from .naming import datetime_to_us, us_to_datetime

MAX_BODY_BYTES = 1024 * 1024
MAX_EVENT_ID = 128
MAX_TEXT = 256            # other identifiers: they become index keys and dimension values
MAX_FAILED_PAYLOAD = 64 * 1024
MAX_DETAIL = 1000
AMOUNT_SCALE = 9          # decimal places kept in the archive (decimal128(38, 9))
AMOUNT_LIMIT = Decimal(10) ** 18
MAX_PROCESSING_MS = 2**53
_AMOUNT_QUANTUM = Decimal(1).scaleb(-AMOUNT_SCALE)
STATUSES = ("approved", "declined", "failed", "pending")
# occurred_at must fall in [1970-01-01, 2100-01-01) UTC: day partitions, Parquet dates and
# windows are defined there, and anything else is a producer's bug, not a payment.
OCCURRED_MIN = datetime(1970, 1, 1, tzinfo=UTC)
OCCURRED_END = datetime(2100, 1, 1, tzinfo=UTC)
_OCCURRED_MIN_US = datetime_to_us(OCCURRED_MIN)
_OCCURRED_END_US = datetime_to_us(OCCURRED_END)

_RFC3339_USUAL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-5][0-9])")
_DECIMAL_STRING = re.compile(r"[0-9]+(\.[0-9]+)?")
_USUAL_DECIMAL_STRING = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")   # below 10^12, at most AMOUNT_SCALE places
CURRENCY_CODE = re.compile(r"[A-Z]{3}")
COUNTRY_CODE = re.compile(r"[A-Z]{2}")


class _CardNumberInNumber(Exception):
    """Raised by the fast decoder's hook: the body has a number that holds a card number."""


def _number(text: str) -> Decimal:
    """float_hook of the usual decoder: sane numbers as exact Decimals. Runs for every number
    with a fraction or exponent (amounts, scores), so the usual case is settled first: fewer
    than 13 characters and below 10^12 can be neither out of range nor a card number."""
    if len(text) < 13:
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise NumberOutOfRange(text) from None
        if -MAX_EXPONENT <= value.adjusted() < 12:
            return value
    value = bounded_decimal(text)
    if card_digits_of_number(text, value):
        raise _CardNumberInNumber
    return value


def _marked_number(text: str) -> Decimal:
    """float_hook of the decoder used once a body is known to hold a card-like number."""
    value = bounded_decimal(text)
    digits = card_digits_of_number(text, value)
    return CardLikeNumber.of(text, digits) if digits else value


def _number_or_text(text: str) -> Decimal | str:
    """float_hook for a refused body's payload: an out-of-range number stays as its text,
    unless its integer digits as written are a card number (`4111111111111111e99999`): then it
    is marked as any such number is (masking turns it into the masked string of its digits)."""
    try:
        return _marked_number(text)
    except NumberOutOfRange:
        digits = card_digits_written(text)
        return CardLikeNumber.of("-0" if text.startswith("-") else "0", digits) if digits else text


def _out_of_range_detail(exc: NumberOutOfRange) -> str:
    """The detail of a number out of range; a card number written as its integer digits is
    masked (mask_text leaves `4111111111111111e99999` alone: the digits touch a letter)."""
    return NumberOutOfRange(mask_written_number(exc.text)).detail


_DECODER = msgspec.json.Decoder(float_hook=_number)
_MARKING_DECODER = msgspec.json.Decoder(float_hook=_marked_number)
_LENIENT_DECODER = msgspec.json.Decoder(float_hook=_number_or_text)
_ENCODER = msgspec.json.Encoder(decimal_format="number")


@dataclass(slots=True)     # not frozen: one is built per event, and frozen ones build 3x slower
class InboundEvent:
    """One Event Hubs event as the trigger delivers it (never changed once built)."""

    body: bytes
    partition_id: str
    sequence_number: int
    offset: int | None = None
    enqueued_at: datetime | None = None


@dataclass(slots=True)
class PaymentEvent:
    """A valid, normalised, masked payment event."""

    event_id: str
    transaction_id: str
    occurred_us: int            # epoch microseconds, UTC
    merchant_id: str
    amount: Decimal
    currency: str
    payment_method: str
    status: str
    event_type: str | None
    processing_ms: int | None
    country: str | None
    document: dict[str, Any]    # the whole masked event, for metric sources and dimensions
    payload: str                # the masked event as JSON text (archived as is)
    partition_id: str
    sequence_number: int
    enqueued_at: datetime | None

    @property
    def occurred_at(self) -> datetime:
        return us_to_datetime(self.occurred_us)


# The order _validate_usual builds PaymentEvents in, positionally (checked also under python -O).
if tuple(PaymentEvent.__dataclass_fields__) != (
        "event_id", "transaction_id", "occurred_us", "merchant_id", "amount", "currency", "payment_method", "status",
        "event_type", "processing_ms", "country", "document", "payload", "partition_id", "sequence_number",
        "enqueued_at"):
    raise RuntimeError("PaymentEvent's fields changed order: update _validate_usual's positional call")


@dataclass(slots=True)
class Rejection:
    """A bad event: recorded in failed_items, never stops its batch."""

    error_code: str
    detail: str
    payload: str                # masked body text (truncated to MAX_FAILED_PAYLOAD)
    payload_truncated: bool
    event_id: str | None
    partition_id: str
    sequence_number: int
    enqueued_at: datetime | None
    item_key: str               # dedupe key: same delivery of the same bytes, same key


class _Invalid(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def item_key(partition_id: str, sequence_number: int, body: bytes, *, identified: bool = False) -> str:
    """A bad event's key in failed_items (a second sighting adds no row). An `identified`
    body (it names an event_id: any non-empty string or a number, valid or not) is keyed by
    its bytes alone: sent again, from any partition, it is the same event (contract section
    2). A body with no event_id (absent, null, empty, or no JSON object at all) cannot be
    told from another sender's identical bytes (`{}`, an empty body), so it is keyed by its
    delivery too: the host's redelivery of it (same partition and sequence number) adds
    nothing, a distinct delivery adds a row."""
    h = hashlib.sha256()
    if identified:
        h.update(b"event\x00")
    else:
        h.update(partition_id.encode())
        h.update(b"\x00")
        h.update(str(sequence_number).encode())
        h.update(b"\x00")
    h.update(body)
    return h.hexdigest()


# Asked of each valid event, with the document as sent and as masked (the same object when
# masking did not run): the refusal (error_code, detail) when a value the caller stores as a
# number holds a card number (the metric catalog's sources: Catalog.masked_source_problem), or None.
MaskedValueCheck = Callable[[dict[str, Any], dict[str, Any]], "tuple[str, str] | None"]


def parse_event(inbound: InboundEvent, *, card_characters: bool = True,
                masked_check: MaskedValueCheck | None = None) -> PaymentEvent | Rejection:
    """The event, validated and masked, or its Rejection. Never raises. `card_characters`
    False says the body has neither a run of 13 digits, spaces and dashes nor an escaped one
    (`masking.bodies_with_card_characters`, run over a whole batch by `parse_events`); True
    leaves the body's own check to decide. `masked_check` (MaskedValueCheck) may refuse the
    event."""
    try:
        return _parse(inbound, card_characters, masked_check)
    except Exception as exc:   # a bug, not bad input: refuse this event alone, never its batch
        return unexpected_failure(inbound, "parsing", exc)


def parse_events(items: Sequence[InboundEvent], *,
                 masked_check: MaskedValueCheck | None = None) -> list[PaymentEvent | Rejection]:
    """`parse_event` of each item, with the card-number pre-filters run once for the batch.
    Bodies over the size limit are left out of that pass (they are refused unread)."""
    try:
        flagged = bodies_with_card_characters([b if len(b := item.body) <= MAX_BODY_BYTES else b"" for item in items])
    except Exception:          # a bug here must not cost the batch: each body checks itself instead
        return [parse_event(item, masked_check=masked_check) for item in items]
    return [parse_event(item, card_characters=i in flagged, masked_check=masked_check)
            for i, item in enumerate(items)]


def _parse(inbound: InboundEvent, card_characters: bool = True,
           masked_check: MaskedValueCheck | None = None) -> PaymentEvent | Rejection:
    body = inbound.body
    text: str | None = None
    doc: Any = None
    try:
        if len(body) > MAX_BODY_BYTES:
            raise _Invalid("body_too_large", f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Invalid("body_not_utf8", f"body is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        # fewer brackets in all than the limit settle it (nesting_exceeds' own first test) without a call
        if body.count(b"[") + body.count(b"{") > MAX_DEPTH and nesting_exceeds(body, MAX_DEPTH):
            raise _Invalid("body_too_deep", f"body nests arrays or objects more than {MAX_DEPTH} levels deep")
        doc, card_numbers = _decode(text)
        if not isinstance(doc, dict):
            raise _Invalid("body_not_object", f"body is a JSON {_json_type(doc)}, not an object")
        # Can a string hold a card number: a digit run in the text, or one spelt with \uXXXX
        # escapes no text scan sees? Usually not, and then no string needs a look.
        strings_may_hold_one = card_characters and (
            (digit_run_possible(body) and might_contain_pan(text)) or has_escaped_card_characters(body))
        event = _validate(doc, text, inbound, strings_may_hold_one)
        problem = declared_problem(doc)    # schema_version, fields added by later versions (core/fields.py)
        if problem is not None:
            raise _Invalid(*problem)
        # The decoded document is masked, and the payload re-encoded when needed (_stored_text).
        masked = mask_value(doc) if card_numbers or strings_may_hold_one else doc
        if masked_check is not None and (refused := masked_check(doc, masked)) is not None:
            raise _Invalid(*refused)
        if masked is not doc:
            payload = _stored_text(text, doc, masked)
            if payload is not text:
                event.document = masked
                event.payload = payload
        return event
    except _Invalid as bad:
        return _reject(inbound, bad.code, bad.detail, text, doc)


def _decode(text: str) -> tuple[Any, bool]:
    """The JSON document, and whether a number in it holds a card number (then marked as
    CardLikeNumber). Such bodies are rare: they are decoded a second time."""
    try:
        try:
            return _DECODER.decode(text), False
        except _CardNumberInNumber:
            return _MARKING_DECODER.decode(text), True
    except NumberOutOfRange as exc:
        raise _Invalid("number_out_of_range", _out_of_range_detail(exc)) from None
    except msgspec.ValidationError as exc:    # the float hook's NumberOutOfRange, or an integer of over 4300 digits
        if isinstance(exc.__cause__, NumberOutOfRange):
            raise _Invalid("number_out_of_range", _out_of_range_detail(exc.__cause__)) from None
        raise _Invalid("number_out_of_range", f"body holds a number out of range ({exc})") from None
    except msgspec.DecodeError as exc:
        raise _Invalid("body_not_json", f"body is not JSON: {exc}") from None


class _RepeatedKey(Exception):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> None:
    if len({k for k, _ in pairs}) != len(pairs):
        raise _RepeatedKey


def repeats_a_key(text: str) -> bool:
    """True when an object in the JSON text repeats a key (or the text cannot be read again).

    msgspec, like most decoders, keeps the last value of a repeated key, so masking the
    document never sees the others; the text still holds them all. A text kept as sent
    (the archived payload, a failed item's payload) would then carry a card number in an
    earlier copy. The standard library's decoder sees every pair: about 4 us for a usual
    event, linear in the body's size. `_parse` asks it of the bodies its pre-filters flag or
    whose numbers the decoder marked (any copy, the dropped ones too); `_reject` of every
    refused body."""
    try:
        json.loads(text, object_pairs_hook=_no_repeats, parse_float=str, parse_int=str, parse_constant=str)
    except _RepeatedKey:
        return True
    except (ValueError, RecursionError):     # read differently from msgspec: do not keep it as sent
        return True
    return False


def _stored_text(text: str, doc: Any, masked: Any) -> str:
    """The text to store for a decoded body: `text` itself (the same object) when masking
    changed nothing and no key repeats; else the masked document, encoded (a repeated key's
    earlier copies are in the text only, where masking never saw them)."""
    if masked == doc and not repeats_a_key(text):
        return text
    return _ENCODER.encode(masked).decode()


def masked_json_text(text: str) -> str:
    """JSON text written by hand (a failed item's corrected payload, `txmetrics failed fix` and
    `set`), masked as ingest masks a body: from the decoded document, so that card numbers
    written with \\u escapes or as numbers (`4111111111111111e0`, `4.111111111111111e15`)
    are found as every JSON reader sees them (a number becomes the masked string of its
    digits); text the decoder cannot read is masked as text (`mask_json_text`)."""
    try:
        doc = _LENIENT_DECODER.decode(text)
        return _stored_text(text, doc, mask_value(doc))
    except Exception:              # not JSON to msgspec (NaN), nested too deep to mask: masked as text
        return mask_json_text(text)


def document_of_payload(payload: str) -> dict[str, Any]:
    """The document of an archived event (its masked `payload`), decoded exactly as ingest
    decoded it: numbers with a fraction or exponent as the same Decimals. Backfill and rebuild
    compute metrics and dimensions from it (txmetrics/lake.py)."""
    try:
        doc = _DECODER.decode(payload)
    except _CardNumberInNumber:        # never in a masked payload; decoded and masked as ingest would, regardless
        doc = mask_value(_MARKING_DECODER.decode(payload))
    if not isinstance(doc, dict):
        raise ValueError("an archived payload is a JSON object")
    return doc


def _reject(inbound: InboundEvent, code: str, detail: str, text: str | None = None, doc: Any = None) -> Rejection:
    """A Rejection whose payload is masked: from the decoded document when there is one (so
    masking sees the strings as any JSON reader does), else from the raw text."""
    if doc is None and text is not None and code == "number_out_of_range":
        try:
            doc = _LENIENT_DECODER.decode(text)
        except (msgspec.DecodeError, NumberOutOfRange):
            doc = None
    if doc is not None and text is not None:
        # every refused text goes through the repeats check (3% of events, a few us each): a
        # card number written as a number by value (4111111.111111111e9) passes no text
        # pre-filter, and the decoder's mark of it is gone with the copy it dropped
        full = _stored_text(text, doc, mask_value(doc))
        payload, truncated = full[:MAX_FAILED_PAYLOAD], len(full) > MAX_FAILED_PAYLOAD
    else:
        payload, truncated = _masked_raw_payload(inbound.body)
    event_id = None
    named = False        # the body names an event id, valid or not: its bytes are the event's (item_key)
    if isinstance(doc, dict):
        value = doc.get("event_id")
        named = (isinstance(value, str) and value != "") or (isinstance(value, int | Decimal) and type(value) is not bool)
        if isinstance(value, str) and 0 < len(value) <= MAX_EVENT_ID:
            event_id = mask_text(value.replace("\x00", "\ufffd"))
    return Rejection(
        error_code=code,
        detail=mask_text(detail)[:MAX_DETAIL],
        payload=payload,
        payload_truncated=truncated,
        event_id=event_id,
        partition_id=inbound.partition_id,
        sequence_number=inbound.sequence_number,
        enqueued_at=inbound.enqueued_at,
        item_key=item_key(inbound.partition_id, inbound.sequence_number, inbound.body, identified=named),
    )


def _masked_raw_payload(body: bytes) -> tuple[str, bool]:
    """A body that could not be decoded, as masked text (non-UTF-8 bytes as \\x escapes, NUL
    written out: PostgreSQL text holds neither)."""
    raw = body[: MAX_FAILED_PAYLOAD * 4]
    text = mask_json_text(raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00"))
    return text[:MAX_FAILED_PAYLOAD], len(text) > MAX_FAILED_PAYLOAD or len(raw) < len(body)


def unexpected_failure(inbound: InboundEvent, step: str, exc: BaseException) -> Rejection:
    """The Rejection (code internal_error) of an event that raised where nothing should: the
    event is recorded, with what went wrong, and its batch goes on. Replay it once fixed."""
    detail = f"unexpected {type(exc).__name__} while {step}: {exc}"
    try:
        return _reject(inbound, "internal_error", detail)
    except Exception:   # masking itself failed: keep no digit at all rather than risk one
        stars = str.maketrans("0123456789", "**********")
        raw = inbound.body[:MAX_FAILED_PAYLOAD].decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")
        return Rejection(
            error_code="internal_error", detail=detail.translate(stars)[:MAX_DETAIL], payload=raw.translate(stars),
            payload_truncated=len(inbound.body) > MAX_FAILED_PAYLOAD, event_id=None,
            partition_id=inbound.partition_id, sequence_number=inbound.sequence_number,
            enqueued_at=inbound.enqueued_at,
            item_key=item_key(inbound.partition_id, inbound.sequence_number, inbound.body))


def refused_after_parsing(inbound: InboundEvent, event: PaymentEvent, code: str, detail: str) -> Rejection:
    """The Rejection of a valid event that storage cannot take (past_retention): recorded as
    the archive would have held it (its whole masked payload: the item is the event's only
    copy, to be replayed once it can be; a valid body is at most MAX_BODY_BYTES), keyed as any
    event that names its id."""
    return Rejection(
        error_code=code, detail=mask_text(detail)[:MAX_DETAIL], payload=event.payload,
        payload_truncated=False, event_id=event.event_id,
        partition_id=inbound.partition_id, sequence_number=inbound.sequence_number, enqueued_at=inbound.enqueued_at,
        item_key=item_key(inbound.partition_id, inbound.sequence_number, inbound.body, identified=True))


def _shown(value: str, limit: int = 40) -> str:
    """A value quoted in a detail: masked before it is cut, so no cut leaves card digits."""
    return repr(mask_text(value)[:limit])


def _text(doc: dict[str, Any], name: str, *, required: bool, limit: int = MAX_TEXT,
          blank: bool = False) -> str | None:
    """A text field as sent. Required text is a "non-empty string" (contract section 1): at
    least one character, blanks included ("   " is taken: docs/decisions.md, "Blank
    identifiers"); `blank` also takes the empty string (a field the contract calls a plain
    "string")."""
    value = doc.get(name)
    if value is None:
        if required:
            raise _Invalid(f"missing_{name}", f"required field '{name}' is missing")
        return None
    if not isinstance(value, str):
        raise _Invalid(f"invalid_{name}", f"'{name}' must be a string, got {_kind(value)}")
    if not blank and not value:
        raise _Invalid(f"invalid_{name}", f"'{name}' must not be empty")
    if len(value) > limit:
        raise _Invalid(f"invalid_{name}", f"'{name}' is {len(value)} characters; at most {limit} are allowed")
    if "\x00" in value:
        raise _Invalid(f"invalid_{name}", f"'{name}' contains a NUL character")
    return value


def _identifier(doc: dict[str, Any], name: str, check_cards: bool, limit: int = MAX_TEXT) -> str:
    """A required identifier, exactly as sent. One that holds a card number refuses the event:
    masking it would store the event under an identifier its producer never sent, and merge
    distinct events whose identifiers differ only in the masked digits."""
    value = _text(doc, name, required=True, limit=limit)
    assert value is not None
    if check_cards and len(value) >= 13:
        masked = mask_text(value)
        if masked != value:
            raise _Invalid(f"card_number_in_{name}",
                           f"'{name}' {masked[:60]!r} holds a card number; identifiers are never rewritten, "
                           "so the event is refused: send an identifier that is not a card number")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | Decimal):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _kind(value).split(" ", 1)[-1]


def _parse_occurred_at(value: Any) -> int:
    """RFC 3339 with an offset -> epoch microseconds (UTC), within [1970, 2100).

    The producers' usual form (upper-case T and Z, at most six fractional digits) is read by
    Python's ISO parser as it is: the same instant as the general path's rebuilt text, in
    half the time. Anything else, or anything it refuses, takes the general path, whose
    answer (and error message) decides (tests/test_core_events.py compares the two)."""
    if type(value) is str and _RFC3339_USUAL.fullmatch(value) is not None:
        try:
            us = datetime_to_us(datetime.fromisoformat(value))
        except (ValueError, OverflowError):
            us = _OCCURRED_END_US        # not a valid time: the general path says why
        if _OCCURRED_MIN_US <= us < _OCCURRED_END_US:
            return us
    return _parse_occurred_at_general(value)


def _parse_occurred_at_general(value: Any) -> int:
    if value is None:
        raise _Invalid("missing_occurred_at", "required field 'occurred_at' is missing")
    if not isinstance(value, str):
        raise _Invalid("invalid_occurred_at", f"'occurred_at' must be an RFC 3339 string, got {_kind(value)}")
    m = RFC3339.fullmatch(value)
    if m is None:
        raise _Invalid("invalid_occurred_at",
                       f"'occurred_at' {_shown(value)} is not RFC 3339 with an offset (e.g. 2026-03-01T12:00:00Z)")
    day, clock, frac, offset = m.groups()
    frac = (frac or ".0")[:7]
    offset = "+00:00" if offset in ("Z", "z") else offset
    if clock.endswith(":60"):
        leap = leap_second(day, clock, offset)
        if leap is None:
            raise _Invalid("invalid_occurred_at", f"'occurred_at' {_shown(value)} has second 60: RFC 3339 allows it "
                                                  "only as a leap second, 23:59:60 UTC")
        moment = leap
    else:
        try:
            moment = datetime.fromisoformat(f"{day}T{clock}{frac}{offset}")
        except ValueError as exc:
            raise _Invalid("invalid_occurred_at", f"'occurred_at' {_shown(value)} is not a valid time: {exc}") from None
    us = datetime_to_us(moment)
    if not _OCCURRED_MIN_US <= us < _OCCURRED_END_US:
        raise _Invalid("invalid_occurred_at", f"'occurred_at' {_shown(value)} is outside "
                       f"{OCCURRED_MIN:%Y-%m-%d} to {OCCURRED_END:%Y-%m-%d} UTC")
    return us


def _parse_amount(value: Any) -> Decimal:
    """The amount as an exact Decimal within the contract's rules, or _Invalid.

    The usual one, a finite Decimal at least 0 and below 10^12 with at most nine decimal
    places, is the general path's answer as it is. Its exact type is Decimal, so it is not a
    number the decoder marked as a card number (CardLikeNumber), and below 10^12 its integer
    part has too few digits to be one; below 10^18 none of the other checks can fail. So is
    a decimal string of at most 12 integer digits and 9 places, nothing around it. Anything
    else takes the general path (tests/test_core_events.py compares the two)."""
    if type(value) is Decimal:
        if value.is_finite() and value >= 0 and value.adjusted() < 12 and value == value.quantize(_AMOUNT_QUANTUM):
            return value
    elif type(value) is str and _USUAL_DECIMAL_STRING.fullmatch(value) is not None:
        return Decimal(value)
    return _parse_amount_general(value)


def _parse_amount_general(value: Any) -> Decimal:
    if value is None:
        raise _Invalid("missing_amount", "required field 'amount' is missing")
    if isinstance(value, bool):
        raise _Invalid("invalid_amount", "'amount' must be a number or a decimal string, got a boolean")
    if isinstance(value, int):
        if not 0 <= value < AMOUNT_LIMIT:     # compared as an int: no conversion of a huge one
            raise _Invalid("invalid_amount", f"'amount' must be >= 0 and below {AMOUNT_LIMIT:.0e}")
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value                        # from the decoder: finite, exponent bounded
    elif isinstance(value, str):
        stripped = value.strip()
        if len(stripped) > MAX_NUMBER_CHARS or not _DECIMAL_STRING.fullmatch(stripped):
            raise _Invalid("invalid_amount", f"'amount' {_shown(value)} is not a decimal number such as \"12.30\"")
        amount = Decimal(stripped)
    else:
        raise _Invalid("invalid_amount", f"'amount' must be a number or a decimal string, got {_kind(value)}")
    if not amount.is_finite():
        raise _Invalid("invalid_amount", "'amount' must be finite")
    if amount < 0:
        raise _Invalid("invalid_amount", f"'amount' must be >= 0, got {shown_number(amount)}")
    if amount >= AMOUNT_LIMIT:
        raise _Invalid("invalid_amount", f"'amount' must be below {AMOUNT_LIMIT:.0e}, got {amount:.3e}")
    if amount != amount.quantize(_AMOUNT_QUANTUM):    # below 10^18: 27 digits, exact in the default context
        raise _Invalid("invalid_amount", f"'amount' has more than {AMOUNT_SCALE} decimal places")
    if isinstance(value, CardLikeNumber) or card_digits_of_decimal(amount):
        # it would reach the Parquet amount column and dynamic_metrics.value as is
        raise _Invalid("card_number_in_amount", "'amount' holds a card number; the event is refused rather than "
                                                "storing it in typed columns")
    if isinstance(value, str) and mask_text(value) != value:
        # a string whose digits as written are one ("0000000000000.5", zero-padded) would be
        # masked in the document, and the event stored without its amount metric row, in silence
        raise _Invalid("card_number_in_amount", "'amount' is written with digits that read as a card number (a "
                                                "run of 13-19 digits passing the Luhn check, e.g. zero padding); "
                                                "send it without leading zeros")
    return amount


def _parse_processing_ms(value: Any) -> int | None:
    """processing_ms as an int within the contract's rules, None when absent, or _Invalid.

    The usual one, a plain int from 0 to below 10^12, is the general path's answer as it is:
    its exact type is int, so it is neither a bool nor a number the decoder marked as a card
    number (CardLikeNumber), and below 10^12 it has too few digits to be one. Anything else
    takes the general path (tests/test_core_events.py compares the two)."""
    if type(value) is int and 0 <= value < 1_000_000_000_000:
        return value
    return _parse_processing_ms_general(value)


def _parse_processing_ms_general(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise _Invalid("invalid_processing_ms", f"'processing_ms' must be an integer, got {_kind(value)}")
    if isinstance(value, Decimal) and value != value.to_integral_value():
        raise _Invalid("invalid_processing_ms", f"'processing_ms' must be an integer, got {shown_number(value)}")
    if not 0 <= value <= MAX_PROCESSING_MS:   # compared before any int(): 1E+99999999 stays cheap
        raise _Invalid("invalid_processing_ms", f"'processing_ms' must be an integer from 0 to 2^53, "
                                                f"got {shown_number(value)[:40]}")
    processing_ms = int(value)
    if isinstance(value, CardLikeNumber) or card_digits_of_int(processing_ms):
        raise _Invalid("card_number_in_processing_ms", "'processing_ms' holds a card number; the event is refused "
                                                       "rather than storing it in typed columns")
    return processing_ms


def _validate(doc: dict[str, Any], text: str, inbound: InboundEvent, check_cards: bool = True) -> PaymentEvent:
    """The event from a document as sent (before masking; `doc` and `text` become its
    document and payload until masking replaces them), or _Invalid. `check_cards` False
    says that no string of the body can hold a card number (the byte pre-filters)."""
    if not check_cards:
        event = _validate_usual(doc, text, inbound)
        if event is not None:
            return event
    return _validate_field_by_field(doc, text, inbound, check_cards)


_STATUS_SET = frozenset(STATUSES)


def _validate_usual(doc: dict[str, Any], text: str, inbound: InboundEvent) -> PaymentEvent | None:
    """The usual event (every text field a plain string within its limits, no card number
    possible) in a few checks per field instead of a call per rule, or None: then
    `_validate_field_by_field` decides, with the error code of the first rule broken. For
    the events it accepts it builds exactly what that function would (same checks; the
    time and number fields go through the same parsers, in the same order)."""
    g = doc.get
    event_id: Any = g("event_id")
    transaction_id: Any = g("transaction_id")
    merchant_id: Any = g("merchant_id")
    currency: Any = g("currency")
    payment_method: Any = g("payment_method")
    status: Any = g("status")
    event_type: Any = g("event_type")
    country: Any = g("country")
    str_ = str
    # types first, then lengths and contents (an empty string, a NUL, a bad code): the
    # checks of _text, _identifier and the code patterns, written out for the usual case
    if not (type(event_id) is str_ and type(transaction_id) is str_ and type(merchant_id) is str_
            and type(payment_method) is str_ and type(status) is str_ and type(currency) is str_
            and (event_type is None or type(event_type) is str_) and (country is None or type(country) is str_)
            and status in _STATUS_SET and len(currency) == 3 and CURRENCY_CODE.fullmatch(currency)
            and 0 < len(event_id) <= MAX_EVENT_ID and 0 < len(transaction_id) <= MAX_TEXT
            and 0 < len(merchant_id) <= MAX_TEXT and 0 < len(payment_method) <= MAX_TEXT
            and (event_type is None or len(event_type) <= MAX_TEXT)
            and (country is None or (len(country) == 2 and COUNTRY_CODE.fullmatch(country)))):
        return None
    card, attributes = g("card"), g("attributes")
    if (card is not None and type(card) is not dict) or (attributes is not None and type(attributes) is not dict):
        return None
    joined = f"{event_id}\x00{transaction_id}\x00{merchant_id}\x00{payment_method}\x00{event_type or '-'}"
    if joined.count("\x00") != 4:
        return None
    occurred_us = _parse_occurred_at(g("occurred_at"))
    amount = _parse_amount(g("amount"))
    processing_ms = _parse_processing_ms(g("processing_ms"))
    # positional: half the cost of keywords for a 16-field dataclass (the order is checked below its class)
    return PaymentEvent(event_id, transaction_id, occurred_us, merchant_id, amount, currency, payment_method, status,
                        event_type, processing_ms, country, doc, text, inbound.partition_id, inbound.sequence_number,
                        inbound.enqueued_at)


def _validate_field_by_field(doc: dict[str, Any], text: str, inbound: InboundEvent, check_cards: bool) -> PaymentEvent:
    event_id = _identifier(doc, "event_id", check_cards, limit=MAX_EVENT_ID)
    transaction_id = _identifier(doc, "transaction_id", check_cards)
    occurred_us = _parse_occurred_at(doc.get("occurred_at"))
    merchant_id = _identifier(doc, "merchant_id", check_cards)
    amount = _parse_amount(doc.get("amount"))
    currency = _text(doc, "currency", required=True)
    assert currency is not None
    if not CURRENCY_CODE.fullmatch(currency):
        raise _Invalid("invalid_currency",
                       f"'currency' {_shown(currency, 20)} is not an ISO 4217 code (three upper-case letters)")
    payment_method = _text(doc, "payment_method", required=True)
    assert payment_method is not None
    status = _text(doc, "status", required=True)
    if status not in STATUSES:
        raise _Invalid("invalid_status", f"'status' {_shown(status or '')} is not one of {', '.join(STATUSES)}")
    event_type = _text(doc, "event_type", required=False, blank=True)     # contract: "string", may be empty
    processing_ms = _parse_processing_ms(doc.get("processing_ms"))
    country = _text(doc, "country", required=False)
    if country is not None and not COUNTRY_CODE.fullmatch(country):
        raise _Invalid("invalid_country", f"'country' {_shown(country, 20)} is not an ISO 3166-1 alpha-2 code")
    for name in ("card", "attributes"):
        if doc.get(name) is not None and not isinstance(doc[name], dict):
            raise _Invalid(f"invalid_{name}", f"'{name}' must be an object, got {_kind(doc[name])}")
    assert status is not None
    return PaymentEvent(
        event_id=event_id, transaction_id=transaction_id, occurred_us=occurred_us, merchant_id=merchant_id,
        amount=amount, currency=currency, status=status, processing_ms=processing_ms, country=country,
        # free text, not identifiers: masked like any other string of the event
        payment_method=mask_text(payment_method) if check_cards else payment_method,
        event_type=mask_text(event_type) if check_cards and event_type else event_type,
        document=doc, payload=text, partition_id=inbound.partition_id, sequence_number=inbound.sequence_number,
        enqueued_at=inbound.enqueued_at)
