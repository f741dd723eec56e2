"""The raw file's columns as `parquet.events_table` builds them, against the plain
construction it replaces (one `map(attrgetter)` per attribute column, every amount quantized,
as the table was built up to round 15), on generated events: the same table, schema
included, and the same file read back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from operator import attrgetter
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from txmetrics.adapters import parquet
from txmetrics.core import fields
from txmetrics.core.events import PaymentEvent


def _reference_table(events: list[PaymentEvent]) -> pa.Table:
    declared = fields.SCHEMA
    columns: dict[str, Any] = {}
    versions = [fields.schema_version_of(e.document) for e in events]
    for column in declared.columns:
        if column.attribute is not None:
            values = list(map(attrgetter(column.attribute), events))
            if column.type == "timestamp" and column.attribute.endswith("_us"):
                columns[column.name] = pa.array(values, type=pa.int64()).cast(parquet.UTC_US)
            elif column.type == "decimal":
                columns[column.name] = [v.quantize(Decimal(1).scaleb(-9)) for v in values]
            else:
                columns[column.name] = values
        elif column.name == fields.SCHEMA_VERSION_FIELD:
            columns[column.name] = versions
        else:
            columns[column.name] = [fields.document_value(column, e.document, v)
                                    for e, v in zip(events, versions, strict=True)]
    return pa.Table.from_pydict(columns, schema=parquet.raw_event_schema(declared))


_TEXT = st.text(min_size=1, max_size=12)
_OPTIONAL_TEXT = st.none() | _TEXT
# amounts as validation leaves them: >= 0, below 10^18, at most 9 places, written in any form
# (trailing zeros, exponents) around the edges (10^6, 10^12, 2^63 units)
_UNITS = st.one_of(st.integers(0, 10**27 - 1), st.integers(0, 10**15), st.sampled_from(
    [0, 1, 10**15 - 1, 10**15, 10**15 + 1, 2**63 - 1, 2**63, 2**64, 10**21, 10**27 - 1]))
def _written(units: int, places: int, negative_zero: bool) -> Decimal:
    """`units` of 10^-9 written with `places` decimal places (0-18; trailing zeros or cut
    zeros, never a digit lost), or as -0."""
    if negative_zero and not units:
        return Decimal("-0")
    digits = str(units).rjust(10, "0")
    whole, fraction = digits[:-9], digits[-9:]
    kept = fraction.rstrip("0")
    fraction = (kept + "0" * 18)[:max(places, len(kept))]
    return Decimal(f"{whole}.{fraction}" if fraction else whole)


_AMOUNT = st.builds(_written, _UNITS, st.integers(0, 18), st.booleans()) | st.sampled_from(
    [Decimal("0E+30"), Decimal("1." + "0" * 40), Decimal("1E+2"), Decimal("999999.999999999"), Decimal("1E+6")])
_ENQUEUED = st.none() | st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1),
                                     timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]))


@st.composite
def _events(draw: st.DrawFn) -> PaymentEvent:
    version = draw(st.none() | st.just(1))
    document: dict[str, Any] = {"event_id": "x"} if version is None else {"schema_version": version}
    return PaymentEvent(
        event_id=draw(_TEXT), transaction_id=draw(_TEXT), occurred_us=draw(st.integers(0, 4_102_444_800_000_000 - 1)),
        merchant_id=draw(_TEXT), amount=draw(_AMOUNT), currency=draw(_TEXT), payment_method=draw(_TEXT),
        status=draw(_TEXT), event_type=draw(_OPTIONAL_TEXT), processing_ms=draw(st.none() | st.integers(0, 2**53)),
        country=draw(_OPTIONAL_TEXT), document=document, payload=draw(st.text(max_size=40)),
        partition_id=draw(_TEXT), sequence_number=draw(st.integers(-2**63, 2**63 - 1)),
        enqueued_at=draw(_ENQUEUED))


@settings(max_examples=300, deadline=None)
@given(st.lists(_events(), max_size=30))
def test_events_table_equals_the_plain_construction(events: list[PaymentEvent]) -> None:
    table = parquet.events_table(events)
    reference = _reference_table(events)
    assert table.schema.equals(reference.schema, check_metadata=True)
    assert table.equals(reference)
    back = parquet.decode(parquet.encode(table))
    assert back.equals(parquet.decode(parquet.encode(reference)))
    assert back.schema.equals(reference.schema, check_metadata=True)
