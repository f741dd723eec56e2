"""Parquet encoding of raw events (explicit schema, zstd), and back.

The schema is derived from the declaration of the event's fields (core/fields.py): one
column per declared column, in its order; columns added by later schema versions are
nullable and appended, so files written before them read back with nulls there (pyarrow
fills a column a file lacks when given the schema; see docs/changing-the-event.md).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from decimal import Decimal
from functools import lru_cache
from operator import attrgetter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..core import fields
from ..core.events import AMOUNT_SCALE, PaymentEvent, document_of_payload

UTC_US = pa.timestamp("us", tz="UTC")
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "boolean": pa.bool_(),
    "timestamp": UTC_US, "decimal": pa.decimal128(38, AMOUNT_SCALE),
}


def raw_event_schema(schema: fields.EventSchema | None = None) -> pa.Schema:
    """The archive's Parquet schema for a declaration (default: the one in effect).
    Hive partition columns (yyyy, mm, dd) live in the path only."""
    return _arrow_schema(schema or fields.SCHEMA)


@lru_cache(maxsize=8)
def _arrow_schema(declared: fields.EventSchema) -> pa.Schema:
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type], nullable=c.nullable) for c in declared.columns])


# The schema in effect when the module was imported (the CLI's column list).
RAW_EVENT_SCHEMA = raw_event_schema(fields.SCHEMA)

_QUANTUM = Decimal(1).scaleb(-AMOUNT_SCALE)


def events_table(events: Sequence[PaymentEvent]) -> pa.Table:
    """One row per event, one column per declared column: typed fields from the event's
    attributes, fields added by later versions (and schema_version) from its masked document."""
    declared = fields.SCHEMA
    columns: dict[str, Any] = {}
    versions: list[int] | None = None
    for column in declared.columns:
        if column.attribute is not None:
            values = list(map(attrgetter(column.attribute), events))
            if column.type == "timestamp" and column.attribute.endswith("_us"):
                columns[column.name] = pa.array(values, type=pa.int64()).cast(UTC_US)
            elif column.type == "decimal":
                columns[column.name] = [v.quantize(_QUANTUM) for v in values]
            else:
                columns[column.name] = values
        else:
            if versions is None:
                versions = [fields.schema_version_of(e.document) for e in events]
            columns[column.name] = [fields.document_value(column, e.document, v)
                                    for e, v in zip(events, versions, strict=True)]
    return pa.Table.from_pydict(columns, schema=raw_event_schema(declared))


def encode(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", compression_level=3, use_dictionary=True,
                   write_statistics=True)
    return sink.getvalue()


def decode(data: bytes) -> pa.Table:
    """A raw file as a table of the schema in effect: columns the file predates are null."""
    return pq.read_table(io.BytesIO(data), schema=raw_event_schema())


def events_from_table(table: pa.Table) -> list[PaymentEvent]:
    """The archived events of a raw file as ingest saw them: the typed fields from their
    columns, the document decoded from the masked payload as ingest decoded it. Metrics and
    dimensions computed from these equal those computed at ingest (backfill, rebuild)."""
    occurred = table.column("occurred_at").cast(pa.int64()).to_pylist()
    columns = {c.attribute: table.column(c.name).to_pylist()
               for c in fields.SCHEMA.columns if c.attribute is not None and c.attribute != "occurred_us"}
    payloads = columns["payload"]
    out = []
    for i in range(table.num_rows):
        payload = payloads[i]
        out.append(PaymentEvent(
            event_id=columns["event_id"][i], transaction_id=columns["transaction_id"][i], occurred_us=occurred[i],
            merchant_id=columns["merchant_id"][i], amount=columns["amount"][i], currency=columns["currency"][i],
            payment_method=columns["payment_method"][i], status=columns["status"][i],
            event_type=columns["event_type"][i], processing_ms=columns["processing_ms"][i],
            country=columns["country"][i], document=document_of_payload(payload), payload=payload,
            partition_id=columns["partition_id"][i], sequence_number=columns["sequence_number"][i],
            enqueued_at=columns["enqueued_at"][i]))
    return out
