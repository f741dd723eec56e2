"""PostgreSQL's binary COPY format, built in bulk for the hot path's tables.

psycopg's `Copy.write_row` adapts every value of every row through its type system; for the
three metric rows and the ledger row of each event that cost 4-5 us per event in the worker,
more than the rest of the write. Here the ledger's rows of a batch are numpy records built at
once (`ledger_rows`), as are the histogram deltas' fixed parts (`delta_rows`); each metric
row is one bytes concatenation of its event's id and time, encoded once; and the server
parses no text (no float or timestamp parsing) either.

Format (PostgreSQL docs, "COPY", Binary Format): an 11-byte signature, a 32-bit flags field
and a 32-bit header-extension length; per row a 16-bit field count, then per field a 32-bit
length (-1 for NULL) and the value in the type's binary send format; a 16-bit -1 trailer.

`copy_in` sends such rows; `copy_new` sends them where a unique key decides what is new (the
ledger, failed_items); `copy_in_flight` sends them and lets the caller compute while the
server stores them.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import generators
from psycopg.copy import LibpqWriter
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.types.numeric import DecimalBinaryDumper
from psycopg.waiting import Wait

from ..core.metrics import SUM_UNIT, Aggregates, Buckets

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"
POSTGRES_EPOCH_US = 946_684_800_000_000      # 2000-01-01T00:00:00Z in Unix microseconds
INT4_OID, INT8_OID = 23, 20

_INT8 = struct.Struct(">iq")
_INT4 = struct.Struct(">ii")
_FLOAT8 = struct.Struct(">id")


# Packers of a whole fixed-width field (its length, then the value), for encoders that inline
# them row by row: pack_float8_field(8, value), pack_int8_field(8, value).
pack_float8_field = _FLOAT8.pack
pack_int8_field = _INT8.pack


def field_count(n: int) -> bytes:
    return n.to_bytes(2, "big")


def text(value: str | None) -> bytes:
    if value is None:
        return NULL
    data = value.encode()
    return len(data).to_bytes(4, "big") + data


def uuid(value: bytes) -> bytes:
    """uuid's binary form: its 16 bytes."""
    return b"\x00\x00\x00\x10" + value


def jsonb(value: str | None) -> bytes:
    """jsonb's binary form: a version byte (1) and the JSON text."""
    if value is None:
        return NULL
    data = value.encode()
    return (len(data) + 1).to_bytes(4, "big") + b"\x01" + data


def int8(value: int | None) -> bytes:
    return NULL if value is None else _INT8.pack(8, value)


def int4(value: int | None) -> bytes:
    return NULL if value is None else _INT4.pack(4, value)


def boolean(value: bool) -> bytes:
    return b"\x00\x00\x00\x01\x01" if value else b"\x00\x00\x00\x01\x00"


def float8(value: float) -> bytes:
    return _FLOAT8.pack(8, value)


def timestamptz(unix_us: int) -> bytes:
    return _INT8.pack(8, unix_us - POSTGRES_EPOCH_US)


# The ledger's rows have a fixed size: a batch's are numpy records (big-endian fields, no
# padding) built at once and sorted with lexsort. 1,000-event bench batches, the collector
# paused as ingest runs it: 1.6-1.7 -> 1.0-1.3 us an event, the ids' hashing included.
_LEDGER_ROW = np.dtype([("fields", ">i2"), ("key_size", ">i4"), ("key", ">u8", (2,)), ("time_size", ">i4"),
                        ("time", ">i8"), ("dimension_size", ">i4"), ("dimension_key", ">i8")])


def ledger_rows(keys: Sequence[bytes], unix_us: npt.NDArray[np.int64], dimension_keys: Sequence[int]) -> bytes:
    """ingested_events rows (event_key uuid, occurred_at, dimension_key) in binary COPY format,
    sorted by (key, time): the keys' bytes in order, as PostgreSQL orders uuids, then time."""
    halves = np.frombuffer(b"".join(keys), dtype=">u8").reshape(-1, 2)
    order = np.lexsort((unix_us, halves[:, 1], halves[:, 0]))
    rows = np.empty(len(keys), dtype=_LEDGER_ROW)
    rows["fields"], rows["key_size"], rows["time_size"], rows["dimension_size"] = 3, 16, 8, 8
    rows["key"] = halves[order]
    rows["time"] = unix_us[order] - POSTGRES_EPOCH_US
    rows["dimension_key"] = np.asarray(dimension_keys, dtype=np.int64)[order]
    return rows.tobytes()


def int_array(values: Sequence[int], *, wide: bool) -> bytes:
    """A one-dimensional int4[] (wide=False) or int8[] array, never NULL (empty: no dimensions)."""
    if not values:
        body = struct.pack(">iii", 0, 0, INT8_OID if wide else INT4_OID)
    else:
        element = _INT8 if wide else _INT4
        size = 8 if wide else 4
        body = struct.pack(">iiiii", 1, 0, INT8_OID if wide else INT4_OID, len(values), 1) + b"".join(
            element.pack(size, v) for v in values)
    return len(body).to_bytes(4, "big") + body


def payload(rows: Iterable[bytes]) -> bytes:
    """A whole COPY stream from already-encoded rows."""
    return b"".join((HEADER, *rows, TRAILER))


def copy_in(conn: psycopg.Connection, target: str, rows: Iterable[bytes]) -> None:
    """COPY already-encoded rows into `target` (a table and its column list)."""
    with conn.cursor().copy(f"COPY {target} FROM STDIN (FORMAT binary)") as copy:
        copy.write(payload(rows))


class _AnswerLaterWriter(LibpqWriter):
    """psycopg's own COPY writer, except that the end of a successful COPY is only sent:
    `answer()` waits for the server's result later (psycopg's `copy_end` does both at once).
    Writers are psycopg's documented extension point (`Cursor.copy(writer=...)`); the
    generators and `Connection.wait` below are its internals, so psycopg is pinned
    (functions/requirements.txt) and tests/test_batch_round_trips.py checks the protocol."""

    pending = False           # CopyDone is (being) sent: the server owes an answer

    def finish(self, exc: BaseException | None = None) -> None:
        if exc is not None:
            super().finish(exc)
            return
        self.pending = True
        self.connection.wait(_send_copy_end(self._pgconn))

    def answer(self) -> None:
        """The server's answer to the COPY; its error raised (as psycopg.generators.copy_end)."""
        self.pending = False
        results = self.connection.wait(generators.fetch_many(self._pgconn))
        for result in results:
            if result.status != ExecStatus.COMMAND_OK:
                raise psycopg.errors.error_from_result(result, encoding=self.connection.info.encoding)


def _send_copy_end(pgconn: Any) -> Any:
    """Generator for `Connection.wait`: CopyDone queued and flushed (the first half of
    psycopg.generators.copy_end, which then waits for the result)."""
    while pgconn.put_copy_end(None) == 0:
        yield Wait.W
    while pgconn.flush() != 0:
        yield Wait.W


@contextlib.contextmanager
def copy_in_flight(conn: psycopg.Connection, target: str, rows: Iterable[bytes]) -> Iterator[None]:
    """COPY the rows into `target`, and run the body of the `with` while the server applies
    them: the exit waits for the server's answer and raises its error (a unique violation,
    say). The body must not use `conn`. The point is the hot path's latency: the worker
    encodes a file while the server stores the ledger or the metric rows, instead of one
    waiting for the other (a batch is a partition's unit of progress).

    When the body raises (or anything after CopyDone was sent, an interrupt included), the
    answer is still read, so the transaction can roll back, but the first error is the one
    raised, as psycopg's own Copy.finish does: a unique violation must not hide a bug or a
    Ctrl-C in the body (run_batch would take it for a redelivery and run again)."""
    cursor = conn.cursor()
    writer = _AnswerLaterWriter(cursor)
    try:
        with cursor.copy(f"COPY {target} FROM STDIN (FORMAT binary)", writer=writer) as copy:
            copy.write(payload(rows))
        yield
    except BaseException:
        if writer.pending:
            _answer_after_failure(conn, writer)
        raise
    writer.answer()


def _answer_after_failure(conn: psycopg.Connection, writer: _AnswerLaterWriter) -> None:
    """Read the pending answer after another error, keeping that error; a connection still
    busy afterwards (no answer came) is closed, for its owner to reconnect (PostgresStore
    does), rather than left refusing every command."""
    with contextlib.suppress(Exception):
        writer.answer()
    if conn.pgconn.transaction_status not in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        conn.close()


def copy_new(conn: psycopg.Connection, target: str, rows: Iterable[bytes], *, fresh: bool = False) -> bool:
    """COPY the rows in a savepoint: True when they all went in; False, with nothing in (the
    savepoint rolled back), when one hit a unique key already there, for the caller to insert
    them with ON CONFLICT instead. A batch of new rows, the usual case, costs one COPY.

    `fresh`: the caller expects every key to be new (postgres.BatchTransaction): no
    savepoint (two round trips fewer), and a key already there raises UniqueViolation,
    rolling back the caller's transaction; True otherwise."""
    if fresh:
        copy_in(conn, target, rows)
        return True
    try:
        with conn.transaction():
            copy_in(conn, target, rows)
        return True
    except psycopg.errors.UniqueViolation:
        return False


DELTA_COLUMNS = ("metric_name, window_seconds, window_start, dimensions, count, sum, min, max, zero_count, scale, "
                 "pos_keys, pos_counts, neg_keys, neg_counts, sum_exact")

# aggregate_deltas rows, built column-wise: the fixed-width fields of all rows are one numpy
# record array (big-endian, each preceded by its length) turned into bytes once; the
# variable parts (name, dimensions, bucket arrays) are slices joined per row.
_STATS = np.dtype([("l_count", ">i4"), ("count", ">i8"), ("l_sum", ">i4"), ("sum", ">f8"), ("l_min", ">i4"),
                   ("min", ">f8"), ("l_max", ">i4"), ("max", ">f8"), ("l_zero", ">i4"), ("zero", ">i8"),
                   ("l_scale", ">i4"), ("scale", ">i2")])
_ARRAY_HEAD = np.dtype([("length", ">i4"), ("ndim", ">i4"), ("flags", ">i4"), ("oid", ">i4"), ("size", ">i4"),
                        ("lbound", ">i4")])
_INT4_ELEMENT = np.dtype([("length", ">i4"), ("value", ">i4")])
_INT8_ELEMENT = np.dtype([("length", ">i4"), ("value", ">i8")])
_EMPTY_INT4 = int_array((), wide=False)
_EMPTY_INT8 = int_array((), wide=True)


def _array_parts(buckets: Buckets) -> tuple[bytes, bytes, bytes, bytes, list[int]]:
    """Headers and element bytes of every group's (keys int4[], counts int8[]) arrays."""
    sizes = np.diff(buckets.bounds)
    n = len(sizes)
    key_heads = np.zeros(n, dtype=_ARRAY_HEAD)
    key_heads["length"], key_heads["ndim"], key_heads["oid"] = 20 + 8 * sizes, 1, INT4_OID
    key_heads["size"], key_heads["lbound"] = sizes, 1
    count_heads = key_heads.copy()
    count_heads["length"], count_heads["oid"] = 20 + 12 * sizes, INT8_OID
    keys = np.zeros(len(buckets.keys), dtype=_INT4_ELEMENT)
    keys["length"], keys["value"] = 4, buckets.keys
    counts = np.zeros(len(buckets.counts), dtype=_INT8_ELEMENT)
    counts["length"], counts["value"] = 8, buckets.counts
    return key_heads.tobytes(), count_heads.tobytes(), keys.tobytes(), counts.tobytes(), buckets.bounds.tolist()


# An exact sum in units of 10^-9 as a binary numeric (PostgreSQL's NumericVar on the wire: digit
# count, weight, sign, display scale, then base-10000 digits): |units| < 2^62, so the integer
# part has at most three base-10000 digits and the nine places fill three more (with three
# zeros); leading and trailing zero digits are allowed (the server strips them), and the
# display scale drops the places' trailing zeros, so 0.7 is stored as 0.7, not 0.700000000.
_NUMERIC = np.dtype([("length", ">i4"), ("ndigits", ">i2"), ("weight", ">i2"), ("sign", ">u2"), ("dscale", ">i2"),
                     ("digits", ">i2", (6,))])
_NUMERIC_NEG = 0x4000
_DECIMAL_DUMPER = DecimalBinaryDumper(Decimal)     # psycopg's own, for the rare sums beyond int64


def exact_sums(aggregates: Aggregates) -> list[bytes]:
    """Each group's exact sum as a binary numeric field (length included)."""
    units = aggregates.sum_units
    n = len(units)
    magnitude = np.abs(units)
    whole, places = np.divmod(magnitude, SUM_UNIT)
    cells = np.zeros(n, dtype=_NUMERIC)
    cells["length"], cells["ndigits"], cells["weight"] = _NUMERIC.itemsize - 4, 6, 2
    cells["sign"] = np.where(units < 0, _NUMERIC_NEG, 0)
    twelve = places * 1000
    for i, part in enumerate((whole // 10**8, whole // 10**4 % 10**4, whole % 10**4,
                              twelve // 10**8, twelve // 10**4 % 10**4, twelve % 10**4)):
        cells["digits"][:, i] = part
    dscale = np.where(places > 0, 9, 0)
    for k in range(1, 9):               # each trailing zero of the places: one digit less to show
        dscale = np.where((places > 0) & (places % 10**k == 0), 9 - k, dscale)
    cells["dscale"] = dscale
    raw, width = cells.tobytes(), _NUMERIC.itemsize
    out = [raw[g * width:(g + 1) * width] for g in range(n)]
    for g, value in aggregates.sum_exact.items():
        dumped = _DECIMAL_DUMPER.dump(value)
        assert dumped is not None          # None is the dumper's answer for NULL only
        body = bytes(dumped)
        out[g] = len(body).to_bytes(4, "big") + body
    return out


def delta_rows(aggregates: Aggregates, scale: int) -> Iterator[bytes]:
    """aggregate_deltas rows of `aggregates` in binary COPY format (the columns of
    `DELTA_COLUMNS`, in order)."""
    n = len(aggregates)
    sums = exact_sums(aggregates)
    stats = np.zeros(n, dtype=_STATS)
    stats["l_count"] = stats["l_sum"] = stats["l_min"] = stats["l_max"] = stats["l_zero"] = 8
    stats["l_scale"], stats["scale"] = 2, scale
    stats["count"], stats["sum"], stats["min"], stats["max"] = (aggregates.count, aggregates.sum, aggregates.min,
                                                               aggregates.max)
    stats["zero"] = aggregates.zero_count
    stats_bytes, width = stats.tobytes(), _STATS.itemsize
    heads: dict[tuple[int, int, int], bytes] = {}     # (metric, window, start): few per batch
    names = [text(name) for name in aggregates.metric_names]
    dims: dict[str, bytes] = {}
    pos, neg = _array_parts(aggregates.pos), _array_parts(aggregates.neg)
    count = field_count(15)
    metric, window, start = (aggregates.metric_index.tolist(), aggregates.window_seconds.tolist(),
                             aggregates.window_start_us.tolist())
    for g, dimensions in enumerate(aggregates.dimensions):
        head_key = (metric[g], window[g], start[g])
        head = heads.get(head_key)
        if head is None:
            head = heads[head_key] = count + names[metric[g]] + int4(window[g]) + timestamptz(start[g])
        dims_bytes = dims.get(dimensions)
        if dims_bytes is None:
            dims_bytes = dims[dimensions] = jsonb(dimensions)
        parts = [head, dims_bytes, stats_bytes[g * width:(g + 1) * width]]
        for key_heads, count_heads, keys, counts, bounds in (pos, neg):
            lo, hi = bounds[g], bounds[g + 1]
            if hi > lo:
                parts += (key_heads[g * 24:(g + 1) * 24], keys[lo * 8:hi * 8],
                          count_heads[g * 24:(g + 1) * 24], counts[lo * 12:hi * 12])
            else:
                parts += (_EMPTY_INT4, _EMPTY_INT8)
        parts.append(sums[g])
        yield b"".join(parts)
