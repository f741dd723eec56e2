"""The event's typed fields and the archive's columns, declared once (contract sections 1
and 3; docs/changing-the-event.md).

Derived from this declaration, never spelt elsewhere:
  * the Parquet schema of the raw archive and the columns written per event
    (adapters/parquet.py: `raw_event_schema`, `events_table`, `events_from_table`);
  * the typed dimension columns (`COLUMN_DIMENSIONS`: catalog dimensions stored as columns
    of event_dimensions; any other dimension goes to its jsonb column);
  * the raw-query filters (`filter_columns`, txmetrics.query);
  * the validation of `schema_version` and of every field a later schema version adds
    (`declared_problem`, called once per event by core/events.py);
  * the field tables of docs/contract.md (tests/test_event_schema.py compares them).
The rules of section 1 for the fields of version 1 stay hand-written in core/events.py
(their error codes and fast path predate this module); a field added by a later version
needs no code: its type says how it is checked and stored.

Schema evolution (docs/changing-the-event.md):
  * `schema_version` is an optional integer in the event; absent means 1. Events of a version
    above `SCHEMA.version` are refused (`unsupported_schema_version`): the platform cannot
    know what that version changed, and they wait in failed_items for a replay;
  * a version only adds optional fields; each becomes a nullable Parquet column appended
    after the existing ones. Files written before have no such column and every reader
    reads them as null, by column name; no file is ever rewritten for it;
  * a field of version N is typed only in events of version N or later (in older events it
    is an unknown field: kept in `payload`, its column null);
  * a column never changes type, name or position, and is never removed. A value that does
    not fit its column's type refuses that event (`invalid_<field>`), never its batch,
    and is never written: one bad producer cannot break every reader of the archive.
Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from typing import Any, Literal

from .masking import CardLikeNumber, card_digits_of_decimal, card_digits_of_int, mask_text, shown_number

FieldType = Literal["string", "int64", "float64", "boolean", "timestamp", "decimal"]
Origin = Literal["event", "delivery", "archive"]
# Types a later schema version may give a new field (decimal stays the amount's alone:
# decimal(38, 9) needs scale rules a producer should not have to learn).
ADDED_FIELD_TYPES: tuple[FieldType, ...] = ("string", "int64", "float64", "boolean", "timestamp")
SCHEMA_VERSION_FIELD = "schema_version"
MAX_ADDED_TEXT = 256          # as the hand-checked identifiers (core/events.py MAX_TEXT)
_INT64_RANGE = (-(2**63), 2**63 - 1)
_FLOAT_LIMIT = Decimal("1.7976931348623157e308")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# RFC 3339 with an offset (minutes 00-59), for occurred_at (core/events.py) and every added
# timestamp field alike: date, time, fraction, offset
RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-5][0-9])"
)


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the raw archive.

    origin: "event", a top-level field of the event (contract section 1); "delivery", from
    Event Hubs; "archive", written by the pipeline itself.
    required: the event must carry it (event fields) / never null (other columns). Only
    fields of version 1 can be required: a later version adds optional fields only.
    since: the schema_version that added the field (1: the original contract).
    dimension: position in the stored dimension tuple (event_dimensions' typed columns, in
    the order the dimension key hashes them), or None. Only fields of version 1 are typed
    dimensions; a later field is a catalog dimension like any path (stored in jsonb).
    attribute: the PaymentEvent attribute holding the value, for the fields core/events.py
    checks by hand and the delivery columns; None: read from the (masked) document."""

    name: str
    type: FieldType
    origin: Origin = "event"
    required: bool = False
    since: int = 1
    dimension: int | None = None
    filter: bool = False
    attribute: str | None = None
    description: str = ""

    @property
    def nullable(self) -> bool:
        return not self.required


@dataclass(frozen=True)
class EventSchema:
    """The archive's columns in Parquet order, and the highest schema_version declared."""

    version: int
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        _check(self)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def event_fields(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.origin == "event")

    @cached_property      # read for every event (declared_problem): worked out once
    def added_fields(self) -> tuple[Column, ...]:
        """Fields added by versions after 1: checked and read generically, by their type."""
        return tuple(c for c in self.columns if c.origin == "event" and c.since > 1)

    @property
    def column_dimensions(self) -> tuple[str, ...]:
        dims = sorted((c.dimension, c.name) for c in self.columns if c.dimension is not None)
        return tuple(name for _, name in dims)

    @property
    def filter_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.filter)

    def extended(self, version: int, *fields: Column) -> EventSchema:
        """The next version: `fields` appended, each optional and marked `since=version`.
        How a new version is declared (docs/changing-the-event.md)."""
        if version <= self.version:
            raise ValueError(f"version {version}: a new version is numbered above the current {self.version} (the "
                             "fields of a published version never change)")
        return EventSchema(version=version, columns=(*self.columns, *(replace(f, since=version) for f in fields)))


def _check(schema: EventSchema) -> None:
    """The rules every declaration keeps (so that no change can break a reader)."""
    names = [c.name for c in schema.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"a column is declared twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
    for c in schema.columns:
        if not _NAME.fullmatch(c.name):
            raise ValueError(f"column {c.name!r}: names are lower case letters, digits and underscores")
        if c.since > 1:
            if c.required or c.dimension is not None or c.origin != "event" or c.attribute is not None:
                raise ValueError(f"column {c.name!r} (version {c.since}): a later version adds optional event "
                                 "fields only, read from the document; a typed dimension column needs a migration "
                                 "of event_dimensions, so use the field as a catalog dimension instead")
            if c.type not in ADDED_FIELD_TYPES:
                raise ValueError(f"column {c.name!r}: type {c.type} is not one of {', '.join(ADDED_FIELD_TYPES)}")
            if c.since > schema.version:
                raise ValueError(f"column {c.name!r} is of version {c.since}, above the schema's {schema.version}")
    versions = [c.since for c in schema.columns]
    if versions != sorted(versions):
        raise ValueError("columns of a later version are appended after the existing ones, never inserted")
    positions = sorted(c.dimension for c in schema.columns if c.dimension is not None)
    if positions != list(range(len(positions))):
        raise ValueError(f"dimension positions must be 0..n-1, got {positions}")


# The declaration. Version 1 is the original contract (section 1); the columns up to
# `payload` are the original archive layout, `schema_version` was appended by issue 15.
# To add a field: SCHEMA = _V1.extended(2, Column("channel", "string", filter=True, ...)).
_V1 = EventSchema(version=1, columns=(
    Column("event_id", "string", required=True, filter=True, attribute="event_id",
           description="unique per event, at most 128 characters; the deduplication key"),
    Column("transaction_id", "string", required=True, filter=True, attribute="transaction_id",
           description="non-empty"),
    Column("occurred_at", "timestamp", required=True, attribute="occurred_us",
           description="RFC 3339 with an offset; stored in UTC; the archive's date folder"),
    Column("merchant_id", "string", required=True, dimension=0, filter=True, attribute="merchant_id",
           description="non-empty"),
    Column("amount", "decimal", required=True, attribute="amount",
           description="JSON number or decimal string, finite, >= 0, major units; decimal(38, 9)"),
    Column("currency", "string", required=True, dimension=3, filter=True, attribute="currency",
           description="ISO 4217, three upper-case letters"),
    Column("payment_method", "string", required=True, dimension=1, filter=True, attribute="payment_method",
           description="non-empty (card, wallet, bank_transfer, ...)"),
    Column("status", "string", required=True, dimension=2, filter=True, attribute="status",
           description="approved, declined, failed or pending"),
    Column("event_type", "string", dimension=5, attribute="event_type",
           description="authorization, capture, refund, chargeback, ..."),
    Column("processing_ms", "int64", attribute="processing_ms", description="integer >= 0"),
    Column("country", "string", dimension=4, attribute="country", description="ISO 3166-1 alpha-2"),
    Column("partition_id", "string", origin="delivery", required=True, attribute="partition_id",
           description="Event Hubs partition"),
    Column("sequence_number", "int64", origin="delivery", required=True, attribute="sequence_number",
           description="Event Hubs sequence number; (partition_id, sequence_number, event_id) is once in "
                       "the archive (sequence numbers restart when a hub is recreated or fails over)"),
    Column("enqueued_at", "timestamp", origin="delivery", attribute="enqueued_at",
           description="when Event Hubs accepted the event"),
    Column("payload", "string", origin="archive", required=True, attribute="payload",
           description="the event's JSON text after masking: every field, known or not"),
    Column(SCHEMA_VERSION_FIELD, "int64", description="the event's schema version (absent: 1); null in files "
                                                      "written before the column existed, which means 1"),
))

SCHEMA: EventSchema = _V1

# The typed dimension columns never change (event_dimensions' columns; the dimension key
# hashes them in this order), so this one is a constant.
COLUMN_DIMENSIONS = _V1.column_dimensions


def filter_columns() -> tuple[str, ...]:
    """The raw-query filters of the schema in effect."""
    return SCHEMA.filter_columns


def schema_version_of(document: dict[str, Any]) -> int:
    """The version of a valid event's document (absent: 1)."""
    value = document.get(SCHEMA_VERSION_FIELD)
    return 1 if value is None else int(value)


def declared_problem(document: dict[str, Any]) -> tuple[str, str] | None:
    """(error_code, detail) when the event breaks a rule of the declaration beyond the
    hand-checked fields of version 1: its schema_version, or a field its version adds.
    None when it keeps them all (the usual case costs one dict lookup)."""
    schema = SCHEMA
    raw = document.get(SCHEMA_VERSION_FIELD)
    if raw is None and not schema.added_fields:
        return None
    if isinstance(raw, Decimal) and raw.is_finite() and raw == raw.to_integral_value():
        raw = int(raw)                    # 1.0 and 1e0 are the whole number 1 (JSON has one number type)
    if raw is None:
        version = 1
    elif type(raw) is not int or raw < 1:
        return ("invalid_schema_version",
                f"'schema_version' must be a whole number from 1, got {_shown(raw)}")
    elif raw > schema.version:
        return ("unsupported_schema_version",
                f"schema_version {raw} is newer than this platform declares (up to {schema.version}); declare it "
                "in txmetrics/core/fields.py and deploy, then replay these events from failed_items")
    else:
        version = raw
    for column in schema.added_fields:
        if column.since > version:
            continue                      # an unknown field to an event of an older version
        value = document.get(column.name)
        if value is None:
            continue
        problem = _type_problem(column, value)
        if problem is not None:
            return problem
    return None


def _shown(value: Any) -> str:
    """A value quoted in a detail: masked before it is cut (a cut through a card number
    leaves a run too short to be masked, but long enough to give the number away)."""
    if isinstance(value, str):
        return f"the string {mask_text(value)[:20]!r}"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict | list):
        return "an " + ("object" if isinstance(value, dict) else "array")
    return shown_number(value)[:20] if isinstance(value, int | Decimal) else type(value).__name__


def _type_problem(column: Column, value: Any) -> tuple[str, str] | None:
    name, kind = column.name, column.type
    code = f"invalid_{name}"
    fits = (f"column '{name}' is {kind} in the archive; a value of another type is refused rather than written, "
            f"so that no reader of the archive breaks")
    if kind == "string":
        if not isinstance(value, str):
            return code, f"'{name}' must be a string, got {_shown(value)}; {fits}"
        if not value or len(value) > MAX_ADDED_TEXT or "\x00" in value:
            return code, f"'{name}' must be 1 to {MAX_ADDED_TEXT} characters without NUL"
        return None
    if kind == "boolean":
        return None if isinstance(value, bool) else (code, f"'{name}' must be true or false, got {_shown(value)}; {fits}")
    if kind == "int64":
        if isinstance(value, bool) or not isinstance(value, int):
            return code, f"'{name}' must be an integer, got {_shown(value)}; {fits}"
        if not _INT64_RANGE[0] <= value <= _INT64_RANGE[1]:
            return code, f"'{name}' is out of the 64-bit integer range"
        if card_digits_of_int(value):
            return (f"card_number_in_{name}", f"'{name}' holds a card number; the event is refused rather than "
                                              "storing it in a typed column")
        return None
    if kind == "float64":
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            return code, f"'{name}' must be a number, got {_shown(value)}; {fits}"
        number = Decimal(value)
        if not number.is_finite() or abs(number) > _FLOAT_LIMIT:
            return code, f"'{name}' is out of the double range"
        if isinstance(value, CardLikeNumber) or card_digits_of_decimal(number):
            return (f"card_number_in_{name}", f"'{name}' holds a card number; the event is refused rather than "
                                              "storing it in a typed column")
        return None
    if kind == "timestamp":
        if not isinstance(value, str) or not RFC3339.fullmatch(value):
            return code, f"'{name}' must be an RFC 3339 time with an offset, got {_shown(value)}; {fits}"
        try:
            _parse_time(value)
        except ValueError:
            return code, f"'{name}' {mask_text(value)[:40]!r} is not a valid time"
        return None
    return code, f"'{name}': type {kind} cannot be checked"      # refused by _check before this


def leap_second(day: str, clock: str, offset: str) -> datetime | None:
    """An RFC 3339 time whose second is 60 (the regex's groups, offset as +hh:mm): RFC 3339
    allows a leap second as 23:59:60 UTC (section 5.6, note in 5.7), which Python's datetime
    cannot hold; it is read as 23:59:59.999999 UTC, the last instant of its UTC day, so the
    event stays on the day it happened. None for second 60 of any other minute."""
    try:
        base = datetime.fromisoformat(f"{day}T{clock[:6]}59{offset}").astimezone(UTC)
    except ValueError:
        return None
    if (base.hour, base.minute, base.second) != (23, 59, 59):
        return None
    return base.replace(microsecond=999_999)


def _parse_time(value: str) -> datetime:
    m = RFC3339.fullmatch(value)
    if m is not None and m.group(2).endswith(":60"):
        day, clock, _, offset = m.groups()
        leap = leap_second(day, clock, "+00:00" if offset in ("Z", "z") else offset)
        if leap is None:
            raise ValueError(value)
        return leap
    text = value.replace("z", "Z").replace("t", "T").replace(" ", "T")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(value)
    return moment


def document_value(column: Column, document: dict[str, Any], version: int) -> Any:
    """The value of an added field (or schema_version) as its column stores it, from a valid
    event's masked document; None when absent or not typed in this event's version."""
    if column.name == SCHEMA_VERSION_FIELD:
        return version
    if column.since > version:
        return None
    value = document.get(column.name)
    if value is None:
        return None
    if column.type == "float64":
        return float(value)
    if column.type == "timestamp":
        return _parse_time(value)
    return value
