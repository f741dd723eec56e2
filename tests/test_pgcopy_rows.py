"""The ledger's binary COPY block (adapters/pgcopy.py), built as numpy records for a whole
batch, against the row-by-row encoding it replaces (the format's own field encoders, one row
at a time) and against PostgreSQL reading it back; the metric rows, encoded inline, against
the same field encoders."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

import numpy as np
import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from txmetrics.adapters import pgcopy, postgres
from txmetrics.core.events import PaymentEvent
from txmetrics.core.metrics import MetricRows

_US = st.integers(0, 4_102_444_800_000_000 - 1)          # 1970 to 2100, the contract's range


def _reference_ledger(keys: list[bytes], unix_us: list[int], dimension_keys: list[int]) -> bytes:
    order = sorted(range(len(keys)), key=lambda i: (keys[i], unix_us[i]))
    return b"".join(pgcopy.field_count(3) + pgcopy.uuid(keys[i]) + pgcopy.timestamptz(unix_us[i])
                    + pgcopy.int8(dimension_keys[i]) for i in order)


# keys that share their first 8 bytes, their last 8, or all 16 (then the time decides)
_KEY = st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8).map(lambda b: b"\x80" * 8 + b),
                 st.binary(min_size=8, max_size=8).map(lambda b: b + b"\x00" * 8), st.just(b"\xff" * 16))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_KEY, _US, st.integers(-2**63, 2**63 - 1)), max_size=40))
def test_ledger_rows_equal_the_row_by_row_encoding_sorted_by_key_then_time(
        rows: list[tuple[bytes, int, int]]) -> None:
    keys, unix_us, dimension_keys = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    block = pgcopy.ledger_rows(keys, np.asarray(unix_us, dtype=np.int64), dimension_keys)
    assert block == _reference_ledger(keys, unix_us, dimension_keys)


def test_postgresql_reads_the_ledger_block_back(db: psycopg.Connection) -> None:
    db.execute("CREATE TEMP TABLE ledger_back (event_key uuid, occurred_at timestamptz, dimension_key bigint)")
    ids = ["e-1", "é-ü-€-𝄞", "e-3"]
    unix_us = np.asarray([1_772_366_400_000_000, 0, 4_102_444_799_999_999], dtype=np.int64)
    keys = [hashlib.sha256(i.encode()).digest()[:16] for i in ids]
    pgcopy.copy_in(db, "ledger_back (event_key, occurred_at, dimension_key)",
                   [pgcopy.ledger_rows(keys, unix_us, [7, -1, 2**63 - 1])])
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    at = [epoch + timedelta(microseconds=int(u)) for u in unix_us]
    ledger = db.execute("SELECT event_key, occurred_at, dimension_key FROM ledger_back").fetchall()
    assert [(k.bytes, t, d) for k, t, d in ledger] == sorted(zip(keys, at, [7, -1, 2**63 - 1], strict=True))


def _reference_metric_rows(rows: MetricRows) -> bytes:
    """dynamic_metrics rows with the format's own field encoders, one row at a time."""
    return b"".join(pgcopy.field_count(4) + pgcopy.text(rows.events[ei].event_id) + pgcopy.text(rows.metric_names[mi])
                    + pgcopy.float8(value) + pgcopy.timestamptz(rows.events[ei].occurred_us)
                    for ei, mi, value in zip(rows.event_index, rows.metric_index, rows.value, strict=True))


_METRIC_NAMES = ["amount", "processing_ms", "approved", "r\u00e9sum\u00e9_" + "x" * 50]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=40), _US,
                          st.lists(st.tuples(st.integers(0, len(_METRIC_NAMES) - 1),
                                             st.floats(allow_nan=False, allow_infinity=False)), max_size=4)),
                max_size=30))
def test_metric_rows_equal_the_field_by_field_encoding(spec: list[tuple[str, int, list[tuple[int, float]]]]) -> None:
    """postgres._metric_rows writes pgcopy's field encoders out inline; its rows are theirs,
    byte for byte (ids of any text, times across the contract's range, any finite double,
    -0.0 and subnormals included; events with no row between events with rows)."""
    events = [SimpleNamespace(event_id=event_id, occurred_us=us) for event_id, us, _ in spec]
    cells = [(ei, mi, value) for ei, (_, _, metrics) in enumerate(spec) for mi, value in metrics]
    rows = MetricRows(events=cast(list[PaymentEvent], events), metric_names=_METRIC_NAMES,
                      value=[c[2] for c in cells], metric_index=[c[1] for c in cells], event_index=[c[0] for c in cells])
    assert b"".join(postgres._metric_rows(rows)) == _reference_metric_rows(rows)
