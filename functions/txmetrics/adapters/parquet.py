"""Parquet encoding of raw events (explicit schema, zstd)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.events import AMOUNT_SCALE, PaymentEvent

UTC_US = pa.timestamp("us", tz="UTC")

# The archive's schema. Hive partition columns (yyyy, mm, dd) live in the path only.
RAW_EVENT_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("transaction_id", pa.string(), nullable=False),
    pa.field("occurred_at", UTC_US, nullable=False),
    pa.field("merchant_id", pa.string(), nullable=False),
    pa.field("amount", pa.decimal128(38, AMOUNT_SCALE), nullable=False),
    pa.field("currency", pa.string(), nullable=False),
    pa.field("payment_method", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("event_type", pa.string()),
    pa.field("processing_ms", pa.int64()),
    pa.field("country", pa.string()),
    pa.field("partition_id", pa.string(), nullable=False),
    pa.field("sequence_number", pa.int64(), nullable=False),
    pa.field("enqueued_at", UTC_US),
    pa.field("payload", pa.string(), nullable=False),
])

_QUANTUM = Decimal(1).scaleb(-AMOUNT_SCALE)


def events_table(events: Sequence[PaymentEvent]) -> pa.Table:
    return pa.Table.from_pydict({
        "event_id": [e.event_id for e in events],
        "transaction_id": [e.transaction_id for e in events],
        "occurred_at": pa.array([e.occurred_us for e in events], type=pa.int64()).cast(UTC_US),
        "merchant_id": [e.merchant_id for e in events],
        "amount": [e.amount.quantize(_QUANTUM) for e in events],
        "currency": [e.currency for e in events],
        "payment_method": [e.payment_method for e in events],
        "status": [e.status for e in events],
        "event_type": [e.event_type for e in events],
        "processing_ms": [e.processing_ms for e in events],
        "country": [e.country for e in events],
        "partition_id": [e.partition_id for e in events],
        "sequence_number": [e.sequence_number for e in events],
        "enqueued_at": [e.enqueued_at for e in events],
        "payload": [e.payload for e in events],
    }, schema=RAW_EVENT_SCHEMA)


def encode(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", compression_level=3, use_dictionary=True,
                   write_statistics=True)
    return sink.getvalue()


def decode(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data), schema=RAW_EVENT_SCHEMA)
