"""Validation and normalisation of payment events (contract section 1).

`parse_event` turns one Event Hubs event into either a `PaymentEvent` (normalised: UTC
timestamp, decimal amount, card numbers masked) or a `Rejection` carrying a stable,
machine-readable `error_code`. It never raises for bad input.

Error codes: body_not_utf8, body_not_json, body_not_object, body_too_large,
missing_<field>, invalid_<field> (field = event_id, transaction_id, occurred_at,
merchant_id, amount, currency, payment_method, status, event_type, processing_ms,
country, card, attributes).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from .masking import (
    digit_run_possible,
    has_escaped_card_characters,
    mask_text,
    mask_value,
    might_contain_pan,
    unescape_card_characters,
)
from .naming import datetime_to_us, us_to_datetime

MAX_BODY_BYTES = 1024 * 1024
MAX_EVENT_ID = 128
MAX_TEXT = 256            # other identifiers: they become index keys and dimension values
MAX_FAILED_PAYLOAD = 64 * 1024
AMOUNT_SCALE = 9          # decimal places kept in the archive (decimal128(38, 9))
AMOUNT_LIMIT = Decimal(10) ** 18
STATUSES = ("approved", "declined", "failed", "pending")

_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_ENCODER = msgspec.json.Encoder(decimal_format="number")
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_DECIMAL_STRING = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """One Event Hubs event as the trigger delivers it."""

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


def item_key(partition_id: str, sequence_number: int, body: bytes) -> str:
    h = hashlib.sha256()
    h.update(partition_id.encode())
    h.update(b"\x00")
    h.update(str(sequence_number).encode())
    h.update(b"\x00")
    h.update(body)
    return h.hexdigest()


def parse_event(inbound: InboundEvent) -> PaymentEvent | Rejection:
    body = inbound.body
    try:
        if len(body) > MAX_BODY_BYTES:
            raise _Invalid("body_too_large", f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Invalid("body_not_utf8", f"body is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        try:
            doc = _DECODER.decode(text)
        except msgspec.DecodeError as exc:
            raise _Invalid("body_not_json", f"body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _Invalid("body_not_object", f"body is a JSON {type(doc).__name__}, not an object")
        payload = text
        # A possible card number: in the text, or spelt with \uXXXX escapes no text scan
        # sees. The decoded document is masked; the payload is re-encoded only when that
        # changed something, so other events are archived exactly as sent.
        if (digit_run_possible(body) and might_contain_pan(text)) or has_escaped_card_characters(body):
            masked = mask_value(doc)
            if masked != doc:
                doc = masked
                payload = _ENCODER.encode(doc).decode()
        return _validate(doc, payload, inbound)
    except _Invalid as bad:
        return _reject(inbound, bad.code, bad.detail)


def _reject(inbound: InboundEvent, code: str, detail: str) -> Rejection:
    raw = inbound.body[: MAX_FAILED_PAYLOAD * 4]
    text = mask_text(unescape_card_characters(
        raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")))
    truncated = len(text) > MAX_FAILED_PAYLOAD or len(raw) < len(inbound.body)
    event_id = _peek_event_id(inbound.body) if code != "body_too_large" else None
    return Rejection(
        error_code=code,
        detail=mask_text(detail),
        payload=text[:MAX_FAILED_PAYLOAD],
        payload_truncated=truncated,
        event_id=event_id,
        partition_id=inbound.partition_id,
        sequence_number=inbound.sequence_number,
        enqueued_at=inbound.enqueued_at,
        item_key=item_key(inbound.partition_id, inbound.sequence_number, inbound.body),
    )


def _peek_event_id(body: bytes) -> str | None:
    try:
        doc = _DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if isinstance(doc, dict):
        value = doc.get("event_id")
        if isinstance(value, str) and 0 < len(value) <= MAX_EVENT_ID:
            return mask_text(value.replace("\x00", "\ufffd"))
    return None


def _text(doc: dict[str, Any], name: str, *, required: bool, limit: int = MAX_TEXT) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise _Invalid(f"missing_{name}", f"required field '{name}' is missing")
        return None
    if not isinstance(value, str):
        raise _Invalid(f"invalid_{name}", f"'{name}' must be a string, got {_kind(value)}")
    if not value or value.isspace():   # as `not value.strip()`, without a copy
        raise _Invalid(f"invalid_{name}", f"'{name}' must not be empty")
    if len(value) > limit:
        raise _Invalid(f"invalid_{name}", f"'{name}' is {len(value)} characters; at most {limit} are allowed")
    if "\x00" in value:
        raise _Invalid(f"invalid_{name}", f"'{name}' contains a NUL character")
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
    return type(value).__name__


def parse_occurred_at(value: Any) -> int:
    """RFC 3339 with an offset -> epoch microseconds (UTC)."""
    if value is None:
        raise _Invalid("missing_occurred_at", "required field 'occurred_at' is missing")
    if not isinstance(value, str):
        raise _Invalid("invalid_occurred_at", f"'occurred_at' must be an RFC 3339 string, got {_kind(value)}")
    m = _RFC3339.match(value)
    if m is None:
        raise _Invalid("invalid_occurred_at",
                       f"'occurred_at' {value[:40]!r} is not RFC 3339 with an offset (e.g. 2026-03-01T12:00:00Z)")
    day, clock, frac, offset = m.groups()
    frac = (frac or ".0")[:7]
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{frac}{offset}")
    except ValueError as exc:
        raise _Invalid("invalid_occurred_at", f"'occurred_at' {value[:40]!r} is not a valid time: {exc}") from None
    return datetime_to_us(moment)


def parse_amount(value: Any) -> Decimal:
    if value is None:
        raise _Invalid("missing_amount", "required field 'amount' is missing")
    if isinstance(value, bool):
        raise _Invalid("invalid_amount", "'amount' must be a number or a decimal string, got a boolean")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        if not _DECIMAL_STRING.match(value.strip()):
            raise _Invalid("invalid_amount", f"'amount' {value[:40]!r} is not a decimal number such as \"12.30\"")
        amount = Decimal(value.strip())
    else:
        raise _Invalid("invalid_amount", f"'amount' must be a number or a decimal string, got {_kind(value)}")
    if not amount.is_finite():
        raise _Invalid("invalid_amount", "'amount' must be finite")
    if amount < 0:
        raise _Invalid("invalid_amount", f"'amount' must be >= 0, got {amount}")
    if amount >= AMOUNT_LIMIT:
        raise _Invalid("invalid_amount", f"'amount' must be below {AMOUNT_LIMIT:.0e}, got {amount:.3e}")
    try:
        quantized = amount.quantize(Decimal(1).scaleb(-AMOUNT_SCALE))
    except InvalidOperation:
        raise _Invalid("invalid_amount", f"'amount' {amount} cannot be represented") from None
    if quantized != amount:
        raise _Invalid("invalid_amount", f"'amount' has more than {AMOUNT_SCALE} decimal places")
    return amount


def _validate(doc: dict[str, Any], payload: str, inbound: InboundEvent) -> PaymentEvent:
    event_id = _text(doc, "event_id", required=True, limit=MAX_EVENT_ID)
    transaction_id = _text(doc, "transaction_id", required=True)
    occurred_us = parse_occurred_at(doc.get("occurred_at"))
    merchant_id = _text(doc, "merchant_id", required=True)
    amount = parse_amount(doc.get("amount"))
    currency = _text(doc, "currency", required=True)
    assert currency is not None
    if not _CURRENCY.match(currency):
        raise _Invalid("invalid_currency", f"'currency' {currency[:20]!r} is not an ISO 4217 code (three upper-case letters)")
    payment_method = _text(doc, "payment_method", required=True)
    status = _text(doc, "status", required=True)
    if status not in STATUSES:
        raise _Invalid("invalid_status", f"'status' {status!r} is not one of {', '.join(STATUSES)}")
    event_type = _text(doc, "event_type", required=False)
    processing = doc.get("processing_ms")
    processing_ms: int | None = None
    if processing is not None:
        if isinstance(processing, bool) or not isinstance(processing, int | Decimal) or (
                isinstance(processing, Decimal) and (not processing.is_finite() or processing != processing.to_integral_value())):
            raise _Invalid("invalid_processing_ms", f"'processing_ms' must be an integer, got {str(processing)[:40]!r}")
        processing_ms = int(processing)
        if processing_ms < 0 or processing_ms > 2**53:
            raise _Invalid("invalid_processing_ms", f"'processing_ms' must be >= 0, got {processing_ms}")
    country = _text(doc, "country", required=False)
    if country is not None and not _COUNTRY.match(country):
        raise _Invalid("invalid_country", f"'country' {country[:20]!r} is not an ISO 3166-1 alpha-2 code")
    for name in ("card", "attributes"):
        if doc.get(name) is not None and not isinstance(doc[name], dict):
            raise _Invalid(f"invalid_{name}", f"'{name}' must be an object, got {_kind(doc[name])}")
    assert event_id is not None and transaction_id is not None and merchant_id is not None
    assert payment_method is not None and status is not None
    return PaymentEvent(
        event_id=event_id, transaction_id=transaction_id, occurred_us=occurred_us, merchant_id=merchant_id,
        amount=amount, currency=currency, payment_method=payment_method, status=status, event_type=event_type,
        processing_ms=processing_ms, country=country, document=doc, payload=payload,
        partition_id=inbound.partition_id, sequence_number=inbound.sequence_number, enqueued_at=inbound.enqueued_at,
    )
