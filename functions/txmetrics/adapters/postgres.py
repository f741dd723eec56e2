"""PostgreSQL adapter: one transaction per batch, exactly-once by construction.

Within one transaction a batch
1. claims its events in the `ingested_events` ledger (COPY, sorted by key; on a key that is
   already there, INSERT .. ON CONFLICT DO NOTHING instead, after the optimistic first
   attempt is rolled back: run_batch): only events whose ledger row is really inserted go
   further, so a redelivered event, in this batch or another, adds nothing anywhere. The
   ledger row is the event's key (16 bytes of its id's SHA-256), its time and its
   dimension key;
2. records the batch's raw files in the manifest, their bytes in the outbox (manifest.py);
3. COPYs the new events' metric rows into dynamic_metrics (narrow, append-only);
4. COPYs their histograms into aggregate_deltas (append-only: no writer updates a shared
   row, so partitions never wait for each other; `fold_aggregates` merges them later);
5. records bad events in failed_items (COPY; on an item key already there, ON CONFLICT DO
   NOTHING instead: failed_items.record).
After the commit the caller uploads the files and marks them uploaded (outbox pattern).
Day partitions and dimension tuples are created before the batch, each in a short
transaction of its own, so the batch transaction takes no lock beyond its own rows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from typing import TypeVar

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

from ..core.events import PaymentEvent, Rejection
from ..core.metrics import DIMENSION_COLUMNS, TABLE_COLUMNS, Aggregates, DimensionTuple, MetricRows
from ..core.naming import datetime_to_us, event_key
from ..core.tables import DAY_PARTITIONED, LEDGER
from . import aggregates, failed_items, partitions, pgcopy

T = TypeVar("T")

RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure
# Per-connection staging tables: rows arrive by COPY (an order of magnitude cheaper than
# binding parameter arrays from Python), then one INSERT .. SELECT does the real work in
# the server. Created once per connection, emptied at every commit: no catalog churn.
_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS txm_stage_ledger (
    event_key uuid, occurred_at timestamptz, dimension_key bigint) ON COMMIT DELETE ROWS;
"""


class _HorizonMoved(Exception):
    """Retention recorded a later first day while a batch was making its day partitions."""


class PostgresStore:
    """Holds one connection, reused across invocations and reopened when it breaks."""

    def __init__(self, url: str, *, connect_timeout: int = 10, entra: bool = False,
                 managed_identity_client_id: str | None = None) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.entra = entra
        self.managed_identity_client_id = managed_identity_client_id
        self._conn: psycopg.Connection | None = None
        self._known_days: set[date] = set()
        self.ledger_kept_since: date | None = None     # as last read by ensure_day_partitions
        self._known_dimensions: set[int] = set()
        self._staging_ready = False

    def connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = psycopg.connect(self._conninfo(), connect_timeout=self.connect_timeout,
                                         application_name="txmetrics")
            self._known_days.clear()
            self._known_dimensions.clear()   # a new connection may follow a server crash: check again
            self._staging_ready = False
        return self._conn

    def _conninfo(self) -> str:
        # deployed apps: a managed-identity token is the password
        return make_conninfo(self.url, password=_entra_token(self.managed_identity_client_id)) if self.entra else self.url

    def autocommit_connection(self) -> psycopg.Connection:
        """A separate autocommit connection with the same credentials (maintenance jobs)."""
        return psycopg.connect(self._conninfo(), connect_timeout=self.connect_timeout, autocommit=True,
                               application_name="txmetrics-maintenance")

    def forget_partitions(self) -> None:
        """Partitions may have been dropped by retention: check again before the next batch."""
        self._known_days.clear()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    # ------------------------------------------------------------------ partitions
    def ensure_day_partitions(self, days: set[date]) -> set[date]:
        """Create the day partitions a batch needs, in their own short transaction. The SQL
        function attaches new partitions under SHARE UPDATE EXCLUSIVE (no conflict with
        writers); tables are always taken in DAY_PARTITIONED order, so two creators
        cannot deadlock either (migration 0007).

        Returns the days refused: those before the first day the ledger keeps (retention
        dropped their ledger partition, so an event of theirs cannot be told from a
        redelivery any more). Read only for days this process does not know, so the usual
        batch costs nothing; a known day that retention drops meanwhile fails the batch's
        COPY, and the pipeline forgets its days and asks again."""
        missing = sorted(days - self._known_days)
        if not missing:
            return set()
        conn = self.connection()
        for _ in range(3):     # the first day moves once a day: a second attempt finds it still
            try:
                with conn.transaction():
                    kept_since = self.ledger_kept_since = partitions.horizon(conn, table=LEDGER)
                    refused = {d for d in missing if kept_since is not None and d < kept_since}
                    wanted = [d for d in missing if d not in refused]
                    for table in DAY_PARTITIONED if wanted else ():
                        for first, last in _runs(wanted):
                            partitions.ensure_day_partitions(conn, table=table, first=first, last=last)
                    # read again before committing: retention may have recorded a later first
                    # day and dropped a day since the first read, and a day made again here
                    # (committed) would take a resend as new, in this process or in any other
                    # that still knows the day. So the transaction is undone and asked again.
                    # Retention records before it drops: a day it drops after this read fails
                    # the batch's COPY instead, and the pipeline asks again.
                    if wanted and partitions.horizon(conn, table=LEDGER) != kept_since:
                        raise _HorizonMoved
            except _HorizonMoved:
                continue
            self._known_days.update(wanted)
            return refused
        raise RuntimeError("the ledger's retention moved three times while this batch made its day partitions")

    def ensure_dimensions(self, dimensions: dict[int, DimensionTuple]) -> None:
        """Store the dimension tuples this process has not stored yet, in a short transaction
        of their own (a batch that fails later leaves a harmless unused row). Keys are
        hashes of the tuples, so every writer computes the same key for the same tuple."""
        missing = sorted(k for k in dimensions if k not in self._known_dimensions)
        if not missing:
            return
        conn = self.connection()
        with conn.transaction():
            # No need to wait for this commit to reach disk: the batch that uses these keys
            # commits synchronously after it, and flushing its WAL flushes this record too.
            # Only a server crash in between can lose it, and that breaks this connection,
            # whose successor forgets every key it knew (connection()).
            conn.execute("SET LOCAL synchronous_commit = off")
            conn.execute(
                f"""INSERT INTO event_dimensions (dimension_key, {', '.join(DIMENSION_COLUMNS)})
                    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                                         %s::text[], %s::jsonb[])
                    ON CONFLICT (dimension_key) DO NOTHING""",
                (missing, *([dimensions[k][i] for k in missing] for i in range(len(DIMENSION_COLUMNS)))))
        if len(self._known_dimensions) > 100_000:   # bounded: a long tail of merchants must not grow it
            self._known_dimensions.clear()
        self._known_dimensions.update(missing)

    # ------------------------------------------------------------------ batch
    @contextlib.contextmanager
    def batch(self, *, fresh: bool = False) -> Iterator[BatchTransaction]:
        conn = self.connection()
        if not self._staging_ready:
            with conn.transaction():
                conn.execute(_STAGING_DDL)
            self._staging_ready = True
        try:
            with conn.transaction():
                yield BatchTransaction(conn, fresh=fresh)
        except psycopg.OperationalError:
            self.close()
            raise

    def run_batch(self, work: Callable[[BatchTransaction], T], attempts: int = 3, *, optimistic: bool = False) -> T:
        """Run `work(tx)` in a batch transaction, retrying deadlocks / serialization failures.

        `optimistic`: the first attempt assumes every key it writes is new (`BatchTransaction`
        `fresh`: plain COPY, no savepoint). Should a key already be there (a redelivery), the
        unique violation rolls that attempt back whole and `work` runs again with the usual
        checks: the same result, paid only when a key is already there (a redelivery, the same
        event on two partitions, a failed item recorded before), and two round trips fewer
        for every other batch (four when it has failed items)."""
        fresh = optimistic
        attempt = 1
        while True:
            try:
                with self.batch(fresh=fresh) as tx:
                    return work(tx)
            except psycopg.errors.UniqueViolation:
                if not fresh:
                    raise
                fresh = False            # a key was there: run again, checking (not an attempt used)
            except psycopg.errors.Error as exc:
                if exc.sqlstate in RETRYABLE_SQLSTATES and attempt < attempts:
                    time.sleep(0.05 * attempt)
                    attempt += 1
                    continue
                raise

    # ------------------------------------------------------------------ aggregates
    def fold_aggregates(self) -> int:
        """Merge every committed delta into aggregate_histograms (`aggregates.fold`)."""
        conn = self.connection()
        with conn.transaction():
            return aggregates.fold(conn)


_LEDGER = "ingested_events (event_key, occurred_at, dimension_key)"
_METRICS = f"dynamic_metrics ({', '.join(TABLE_COLUMNS)})"


def _ledger_rows(events: Sequence[PaymentEvent], dimension_keys: Sequence[int]) -> tuple[list[bytes], list[bytes]]:
    """Each event's ledger key (`naming.event_key` of its id), and the ledger rows in binary
    COPY format sorted by key and time (see `BatchTransaction.claim_events`)."""
    keys = [event_key(ev.event_id) for ev in events]
    unix_us = np.fromiter((ev.occurred_us for ev in events), dtype=np.int64, count=len(events))
    return keys, [pgcopy.ledger_rows(keys, unix_us, dimension_keys)]


def _metric_rows(rows: MetricRows) -> Iterator[bytes]:
    """dynamic_metrics rows in binary COPY format, each event's id and time encoded once.
    (Gathered with numpy as the ledger's rows are, they cost the same: measured with the
    collector paused, as ingest runs, 1.44-1.65 against 1.48-1.71 us an event.)"""
    names = [pgcopy.text(n) for n in rows.metric_names]
    # pgcopy's field encoders written out (text, float8, timestamptz): a call less for each
    # row and event (tests/test_pgcopy_rows.py compares with them)
    value_field, time_field, epoch = pgcopy.pack_float8_field, pgcopy.pack_int8_field, pgcopy.POSTGRES_EPOCH_US
    four = pgcopy.field_count(4)
    events = rows.events
    last = -1
    head = tail = b""
    for ei, mi, value in zip(rows.event_index, rows.metric_index, rows.value, strict=True):
        if ei != last:
            ev = events[ei]
            event_id = ev.event_id.encode()
            head, tail, last = four + len(event_id).to_bytes(4, "big") + event_id, time_field(8, ev.occurred_us - epoch), ei
        yield head + names[mi] + value_field(8, value) + tail


def _entra_token(managed_identity_client_id: str | None) -> str:
    """Microsoft Entra token of the app's managed identity, used as the PostgreSQL password.
    Checked at connect time only, so an open connection outlives the token."""
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=managed_identity_client_id)
    return credential.get_token("https://ossrdbms-aad.database.windows.net/.default").token


def _runs(days: list[date]) -> Iterator[tuple[date, date]]:
    start = prev = days[0]
    for d in days[1:]:
        if (d - prev).days != 1:
            yield start, prev
            start = d
        prev = d
    yield start, prev


class BatchTransaction:
    """The writes of one batch transaction. `fresh`: the caller expects every ledger key and
    failed-item key to be new, so rows are COPYed as they are, without a savepoint, and a key
    already there raises UniqueViolation for the caller to run the batch again without
    `fresh` (PostgresStore.run_batch, optimistic)."""

    def __init__(self, conn: psycopg.Connection, *, fresh: bool = False) -> None:
        self.conn = conn
        self.fresh = fresh

    def claim_events(self, events: Sequence[PaymentEvent], dimension_keys: Sequence[int]) -> set[tuple[str, int]]:
        """Insert ledger rows; return the (event_id, occurred_us) of the events whose id the
        ledger already holds on that UTC day (claimed by an earlier delivery, possibly at
        another time of the day: the key is one event_id a day, migrations 0015-0016): empty in
        the usual case, so callers filter nothing unless a redelivery brought some.

        The ledger holds each event's key (`naming.event_key`: 16 bytes of SHA-256 of its id),
        its time and its dimension key. Fast path: COPY straight into ingested_events
        (`pgcopy.copy_new`; `fresh`: no savepoint, and a key already there raises): a batch of
        new events (the usual case) costs one COPY. When a key is already there (a
        redelivery), the savepoint is rolled back and the rows go through a staging table
        with ON CONFLICT DO NOTHING, and only the keys that were already there come back.
        Rows go in sorted by key in both paths, so two writers claiming overlapping events
        lock them in the same order and wait for each other instead of deadlocking. An id
        twice in `events` on one day (a file archived before 0016) takes the checked path:
        the first COPY meets the key, and ON CONFLICT keeps the earlier time."""
        if not events:
            return set()
        ledger_keys, rows = _ledger_rows(events, dimension_keys)
        if pgcopy.copy_new(self.conn, _LEDGER, rows, fresh=self.fresh):
            return set()
        pgcopy.copy_in(self.conn, "txm_stage_ledger", rows)
        taken = self.conn.execute(
            """WITH inserted AS (
                   INSERT INTO ingested_events (event_key, occurred_at, dimension_key)
                   SELECT event_key, occurred_at, dimension_key FROM txm_stage_ledger
                    ORDER BY event_key, occurred_at
                   ON CONFLICT DO NOTHING
                   RETURNING event_key, occurred_at)
               SELECT s.event_key, s.occurred_at FROM txm_stage_ledger s
                WHERE NOT EXISTS (SELECT 1 FROM inserted i WHERE i.event_key = s.event_key
                                     AND i.occurred_at = s.occurred_at)"""
        ).fetchall()
        event_of = {(key, ev.occurred_us): (ev.event_id, ev.occurred_us)
                    for key, ev in zip(ledger_keys, events, strict=True)}
        return {event_of[(k.bytes, datetime_to_us(t))] for k, t in taken}

    @contextlib.contextmanager
    def claiming_new(self, events: Sequence[PaymentEvent], dimension_keys: Sequence[int]) -> Iterator[None]:
        """`claim_events` for a `fresh` transaction, whose events are all expected new, with
        the body of the `with` run while the server stores the ledger rows (it must not use
        the connection); a key already there raises UniqueViolation at the exit."""
        if not self.fresh:
            raise ValueError("claiming_new is for fresh batch transactions: use claim_events")
        if not events:
            yield
            return
        _, rows = _ledger_rows(events, dimension_keys)
        with pgcopy.copy_in_flight(self.conn, _LEDGER, rows):
            yield

    @contextlib.contextmanager
    def inserting_metrics(self, rows: MetricRows) -> Iterator[None]:
        """`insert_metrics`, with the body of the `with` run while the server stores the rows
        (it must not use the connection)."""
        if not len(rows):
            yield
            return
        with pgcopy.copy_in_flight(self.conn, _METRICS, _metric_rows(rows)):
            yield

    def insert_metrics(self, rows: MetricRows) -> int:
        """Metric rows of the newly claimed events, by COPY. dynamic_metrics has no unique
        index to check: the ledger claim in this same transaction made these events new."""
        if not len(rows):
            return 0
        pgcopy.copy_in(self.conn, _METRICS, _metric_rows(rows))
        return len(rows)

    def append_deltas(self, aggregates: Aggregates, scale: int) -> int:
        """The batch's histograms, one row per (metric, window, dimension values), appended
        to aggregate_deltas by binary COPY (sparse: non-empty bucket keys and their counts)."""
        if not len(aggregates):
            return 0
        pgcopy.copy_in(self.conn, f"aggregate_deltas ({pgcopy.DELTA_COLUMNS})", pgcopy.delta_rows(aggregates, scale))
        return len(aggregates)

    def record_failures(self, rejections: Sequence[Rejection]) -> int:
        return failed_items.record(self.conn, rejections=rejections, fresh=self.fresh)


@contextlib.contextmanager
def read_snapshot(conn: psycopg.Connection) -> Iterator[None]:
    """One REPEATABLE READ, READ ONLY transaction for everything read inside (unless the
    caller's transaction is already open, which then decides): a reader sees one committed
    state, so a fold or a rollup committing meanwhile cannot make an event count twice or
    not at all between two of its statements."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        yield
        return
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield
