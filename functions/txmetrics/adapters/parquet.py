"""Parquet encoding of raw events (explicit schema, zstd), and back.

The schema is derived from the declaration of the event's fields (core/fields.py): one
column per declared column, in its order; columns added by later schema versions are
nullable and appended, so files written before them read back with nulls there (pyarrow
fills a column a file lacks when given the schema; see docs/changing-the-event.md).
"""

from __future__ import annotations

import dataclasses
import io
import keyword
from collections.abc import Callable, Sequence
from datetime import UTC
from decimal import Decimal
from functools import lru_cache
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..core import fields
from ..core.archive_keys import KeyColumns
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
    attribute_values = iter(_attribute_reader(declared)(events))
    for column in declared.columns:
        if column.attribute is not None:
            values = next(attribute_values)
            if column.type == "timestamp" and column.attribute.endswith("_us"):
                columns[column.name] = pa.array(values, type=pa.int64()).cast(UTC_US)
            elif column.type == "decimal":
                # Quantized here, not left to pyarrow: a valid amount may be written with more
                # places or digits than decimal128(38, 9) holds (0E+30, 1. and 40 zeros), which
                # pyarrow refuses, failing the whole batch (tests/test_event_schema.py)
                columns[column.name] = [v.quantize(_QUANTUM) for v in values]
            else:
                columns[column.name] = values
        else:
            if versions is None:
                versions = _schema_versions(events)
            if column.name == fields.SCHEMA_VERSION_FIELD:
                columns[column.name] = versions
            else:
                columns[column.name] = [fields.document_value(column, e.document, v)
                                        for e, v in zip(events, versions, strict=True)]
    return pa.Table.from_pydict(columns, schema=raw_event_schema(declared))


# The attribute columns' values, one list per column: a list comprehension per attribute
# (`[e.event_id for e in events], ...`), generated once per declaration because the attribute
# names are the declaration's, never spelt here. A name written in the code is a slot read the
# interpreter specialises; `map(attrgetter(name), events)` looks the name up for every value:
# 0.89 -> 0.63 us an event for the 15 attribute columns (1,000-event batches, collector paused).
@lru_cache(maxsize=8)
def _attribute_reader(declared: fields.EventSchema) -> Callable[[Sequence[PaymentEvent]], tuple[list[Any], ...]]:
    attributes = [c.attribute for c in declared.columns if c.attribute is not None]
    for name in attributes:      # only checked names go into the generated source
        if not name.isidentifier() or keyword.iskeyword(name) or name not in _EVENT_FIELDS:
            raise ValueError(f"attribute {name!r} is not a field of PaymentEvent")
    lists = "".join(f"[e.{name} for e in events], " for name in attributes)
    namespace: dict[str, Any] = {}
    exec(f"def read(events):\n    return ({lists})\n", namespace)
    reader: Callable[[Sequence[PaymentEvent]], tuple[list[Any], ...]] = namespace["read"]
    return reader


def _schema_versions(events: Sequence[PaymentEvent]) -> list[int]:
    """Each event's schema version (`fields.schema_version_of`); one lookup per event when
    none sends one (the usual batch), instead of a call per event."""
    sent = [e.document.get(fields.SCHEMA_VERSION_FIELD) for e in events]
    if sent.count(None) == len(sent):
        return [1] * len(sent)
    return [fields.schema_version_of(e.document) for e in events]


# Dictionary encoding pays for the few-valued columns only: for the ids and the payload, all
# but unique, it costs time and bytes (measured on make run's events: zstd level 1 with these
# dictionaries, 1.3 us and 78 bytes an event; level 3 with every column's, 1.8 us and 90 bytes).
_DICTIONARY_COLUMNS = [*fields.COLUMN_DIMENSIONS, "partition_id"]


def encode(table: pa.Table) -> bytes:
    # Arrow's own in-memory sink: io.BytesIO would be written through a Python file wrapper,
    # a call into Python per write (the same bytes; 0.1 ms a 1,000-event file)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=1,
                   use_dictionary=[c for c in _DICTIONARY_COLUMNS if c in table.column_names],
                   write_statistics=True)
    content: bytes = sink.getvalue().to_pybytes()
    return content


def decode(data: bytes) -> pa.Table:
    """A raw file as a table of the schema in effect: columns the file predates are null."""
    return pq.read_table(io.BytesIO(data), schema=raw_event_schema())


KEY_COLUMNS = ["partition_id", "sequence_number", "event_id"]


def keys_of(table: pa.Table) -> KeyColumns:
    """The rows' archive keys (partition_id, sequence_number, event_id) as numpy columns
    (core.archive_keys: two events may share a partition and sequence number)."""
    return (table.column("partition_id").to_numpy(zero_copy_only=False),
            table.column("sequence_number").to_numpy().astype("int64"),
            table.column("event_id").to_numpy(zero_copy_only=False))


def key_table(data: bytes) -> pa.Table:
    """A raw file's key columns only (KEY_COLUMNS): the payloads never decoded."""
    return pq.read_table(io.BytesIO(data), columns=KEY_COLUMNS)


def decode_keys(data: bytes) -> KeyColumns:
    """A raw file's archive keys only: three columns read, the payloads never decoded."""
    return keys_of(key_table(data))


def events_from_table(table: pa.Table) -> list[PaymentEvent]:
    """The archived events of a raw file as ingest saw them: the typed fields from their
    columns, the document decoded from the masked payload as ingest decoded it. Metrics and
    dimensions computed from these equal those computed at ingest (backfill, rebuild).
    Built column-wise (about 10 us an event, most of it the payload's JSON)."""
    columns_of = {c.attribute: c for c in fields.SCHEMA.columns if c.attribute is not None}
    values: list[list[Any]] = []
    for name in _EVENT_FIELDS:
        if name == "document":
            values.append([document_of_payload(p) for p in table.column("payload").to_pylist()])
            continue
        column = columns_of[name]
        data = table.column(column.name)
        if column.type == "timestamp" and name.endswith("_us"):
            values.append(data.cast(pa.int64()).to_pylist())
        elif column.type == "timestamp":      # datetimes through numpy: a quarter of to_pylist's cost
            naive = data.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False).astype("datetime64[us]").tolist()
            values.append([None if d is None else d.replace(tzinfo=UTC) for d in naive])
        else:
            values.append(data.to_pylist())
    return [PaymentEvent(*row) for row in zip(*values, strict=True)]


# PaymentEvent's fields in order (built positionally above): each an archive column's
# attribute, but the document, which is decoded from the payload.
_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(PaymentEvent))
