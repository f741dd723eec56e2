"""PostgreSQL adapter: one transaction per batch, exactly-once by construction.

Within one transaction a batch
1. claims its events in the `ingested_events` ledger (INSERT .. ON CONFLICT DO NOTHING
   RETURNING): only events whose ledger row is really inserted go further, so a
   redelivered event, in this batch or another, adds nothing anywhere;
2. records the batch's raw files in the manifest, their bytes in the outbox;
3. inserts the new events' metric rows into dynamic_metrics;
4. merges their histograms into aggregate_histograms, rows locked in one global order
   (finest dimension sets first, so the rows every partition updates are held for the
   shortest time; the same order in every writer, so no deadlock), the merge itself in SQL;
5. records bad events in failed_items (ON CONFLICT DO NOTHING on their item key).
After the commit the caller uploads the files and marks them uploaded (outbox pattern).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date

import psycopg
from psycopg.conninfo import make_conninfo

from ..core.events import PaymentEvent, Rejection
from ..core.metrics import TABLE_COLUMNS, AggregateRow, MetricRows
from ..core.naming import us_to_datetime, utc_day

PARTITIONED_TABLES = ("dynamic_metrics", "ingested_events")
RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure
# Per-connection staging tables: rows arrive by COPY (an order of magnitude cheaper than
# binding parameter arrays from Python), then one INSERT .. SELECT does the real work in
# the server. Created once per connection, emptied at every commit: no catalog churn.
_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS txm_stage_events (
    e text, us bigint, p text, s bigint, f bigint) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS txm_stage_metrics (
    e text, m text, v float8, t timestamptz, mi text, pm text, st text, cu text, co text, et text, d text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS txm_stage_aggregates (
    o int, m text, w int, us bigint, d text, c bigint, s float8, lo float8, hi float8, z bigint,
    pk text, pc text, nk text, nc text) ON COMMIT DELETE ROWS;
"""


@dataclass(frozen=True, slots=True)
class RawFile:
    id: int
    path: str
    partition_id: str
    event_date: date
    seq_min: int
    seq_max: int
    occurred_min_us: int
    occurred_max_us: int
    row_count: int
    content: bytes


def _pg_array(values: Sequence[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


class PostgresStore:
    """Holds one connection, reused across invocations and reopened when it breaks."""

    def __init__(self, url: str, *, connect_timeout: int = 10, entra: bool = False) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.entra = entra
        self._conn: psycopg.Connection | None = None
        self._known_days: set[date] = set()
        self._staging_ready = False

    def connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = psycopg.connect(self._conninfo(), connect_timeout=self.connect_timeout,
                                         application_name="txmetrics")
            self._known_days.clear()
            self._staging_ready = False
        return self._conn

    def _conninfo(self) -> str:
        # deployed apps: a managed-identity token is the password
        return make_conninfo(self.url, password=_entra_token()) if self.entra else self.url

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
    def ensure_day_partitions(self, days: set[date]) -> None:
        """Create the day partitions a batch needs, in their own short transaction. The SQL
        function attaches new partitions under SHARE UPDATE EXCLUSIVE (no conflict with
        writers); tables are always taken in PARTITIONED_TABLES order, so two creators
        cannot deadlock either (migration 0007)."""
        missing = sorted(days - self._known_days)
        if not missing:
            return
        conn = self.connection()
        with conn.transaction():
            for table in PARTITIONED_TABLES:
                for first, last in _runs(missing):
                    conn.execute("SELECT txm_ensure_day_partitions(%s::regclass, %s, %s)", (table, first, last))
        self._known_days.update(missing)

    # ------------------------------------------------------------------ batch
    @contextlib.contextmanager
    def batch(self) -> Iterator[BatchTransaction]:
        conn = self.connection()
        if not self._staging_ready:
            with conn.transaction():
                conn.execute(_STAGING_DDL)
            self._staging_ready = True
        try:
            with conn.transaction():
                yield BatchTransaction(conn)
        except psycopg.OperationalError:
            self.close()
            raise

    def run_batch(self, work: object, attempts: int = 3) -> object:
        """Run `work(tx)` in a batch transaction, retrying deadlocks / serialization failures."""
        for attempt in range(1, attempts + 1):
            try:
                with self.batch() as tx:
                    return work(tx)  # type: ignore[operator]
            except psycopg.errors.Error as exc:
                if exc.sqlstate in RETRYABLE_SQLSTATES and attempt < attempts:
                    time.sleep(0.05 * attempt)
                    continue
                raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ outbox
    def pending_files(self, partition_id: str | None) -> list[tuple[int, str, bytes]]:
        conn = self.connection()
        with conn.transaction():
            rows = conn.execute(
                """SELECT f.id, f.path, o.content FROM raw_file_outbox o JOIN raw_files f ON f.id = o.raw_file_id
                    WHERE (%(p)s::text IS NULL OR f.partition_id = %(p)s) ORDER BY f.id""",
                {"p": partition_id}).fetchall()
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def mark_uploaded(self, file_ids: Sequence[int]) -> None:
        if not file_ids:
            return
        conn = self.connection()
        with conn.transaction():
            # No need to wait for this commit to reach disk: should a server crash lose it, the
            # file is still 'pending' and the next flush uploads the same bytes to the same
            # name again. Saves one WAL flush per batch on the hot path.
            conn.execute("SET LOCAL synchronous_commit = off")
            conn.execute("UPDATE raw_files SET state = 'uploaded', uploaded_at = now() "
                         "WHERE id = ANY(%s) AND state = 'pending'", (list(file_ids),))
            conn.execute("DELETE FROM raw_file_outbox WHERE raw_file_id = ANY(%s)", (list(file_ids),))


def _entra_token() -> str:
    """Microsoft Entra token of the app's managed identity, used as the PostgreSQL password.
    Checked at connect time only, so an open connection outlives the token."""
    import os

    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=os.environ.get("AZURE_CLIENT_ID"))
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
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def allocate_file_ids(self, n: int) -> list[int]:
        if n == 0:
            return []
        rows = self.conn.execute("SELECT nextval('raw_files_id_seq') FROM generate_series(1, %s)", (n,)).fetchall()
        return [int(r[0]) for r in rows]

    def _copy(self, table: str, rows: Iterable[Sequence[object]]) -> None:
        with self.conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def claim_events(self, events: Sequence[PaymentEvent], file_ids: Sequence[int]) -> set[tuple[str, int]]:
        """Insert ledger rows; return the (event_id, occurred_us) keys really inserted.

        Rows go in sorted by key, so two writers claiming overlapping events lock them in
        the same order and wait for each other instead of deadlocking. Only the keys that
        were already there come back (usually none): sending back every inserted key
        cost more than the insert itself. `events` must not repeat a key."""
        if not events:
            return set()
        self._copy("txm_stage_events", ((ev.event_id, ev.occurred_us, ev.partition_id, ev.sequence_number, f)
                                        for ev, f in zip(events, file_ids, strict=True)))
        taken = self.conn.execute(
            """WITH inserted AS (
                   INSERT INTO ingested_events (event_id, occurred_at, partition_id, sequence_number, raw_file_id)
                   SELECT e, timestamptz 'epoch' + us * interval '1 microsecond', p, s, f
                     FROM txm_stage_events ORDER BY e, us
                   ON CONFLICT DO NOTHING
                   RETURNING event_id, occurred_at)
               SELECT s.e, s.us FROM txm_stage_events s
                WHERE NOT EXISTS (SELECT 1 FROM inserted i WHERE i.event_id = s.e
                                     AND i.occurred_at = timestamptz 'epoch' + s.us * interval '1 microsecond')"""
        ).fetchall()
        keys = {(ev.event_id, ev.occurred_us) for ev in events}
        return keys - {(str(e), int(us)) for e, us in taken}

    def taken_paths(self, paths: Sequence[str]) -> set[str]:
        if not paths:
            return set()
        rows = self.conn.execute("SELECT path FROM raw_files WHERE path = ANY(%s)", (list(paths),)).fetchall()
        return {str(r[0]) for r in rows}

    def record_files(self, files: Sequence[RawFile], container: str) -> None:
        for f in files:
            self.conn.execute(
                """INSERT INTO raw_files (id, path, container, partition_id, event_date, seq_min, seq_max,
                                          occurred_min, occurred_max, row_count, byte_size, state)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending')""",
                (f.id, f.path, container, f.partition_id, f.event_date, f.seq_min, f.seq_max,
                 us_to_datetime(f.occurred_min_us), us_to_datetime(f.occurred_max_us), f.row_count, len(f.content)))
            self.conn.execute("INSERT INTO raw_file_outbox (raw_file_id, content) VALUES (%s, %s)",
                              (f.id, f.content))

    def insert_metrics(self, rows: MetricRows) -> int:
        """Metric rows of the newly claimed events.

        Fast path: COPY straight into dynamic_metrics inside a savepoint (the ledger already
        made these events unique). Should a row exist anyway (the table and the ledger
        disagree, e.g. after a manual repair), the savepoint is rolled back and the rows go
        through a staging table with ON CONFLICT DO NOTHING instead, so a batch never fails
        on a duplicate."""
        if not len(rows):
            return 0
        records = rows.records()
        try:
            with self.conn.transaction():
                self._copy(f"dynamic_metrics ({', '.join(TABLE_COLUMNS)})", records)
            return len(rows)
        except psycopg.errors.UniqueViolation:
            pass
        self._copy("txm_stage_metrics", records)
        cur = self.conn.execute(
            f"""INSERT INTO dynamic_metrics ({', '.join(TABLE_COLUMNS)})
               SELECT e, m, v, t, mi, pm, st, cu, co, et, d::jsonb FROM txm_stage_metrics ORDER BY e, m, t
               ON CONFLICT DO NOTHING""")
        return cur.rowcount

    def merge_aggregates(self, aggregates: Sequence[AggregateRow], scale: int) -> int:
        """Merge the batch's histograms, locking rows in one global order: finest dimension
        sets first, the coarse rows (all-up totals, per payment method) last. Every writer
        uses the same order, so concurrent partitions cannot deadlock, and the rows that
        every partition updates are held only from the end of the statement to the commit
        (measured: first in key order, they serialised the partitions for the whole merge)."""
        if not aggregates:
            return 0
        a = sorted(aggregates, key=lambda r: (-r.set_rank, r.key))
        # histograms go in sparse (keys and counts of the non-empty buckets), made dense in SQL
        self._copy("txm_stage_aggregates", (
            (i, r.metric_name, r.window_seconds, r.window_start_us, r.dimensions, r.count, r.sum, r.min, r.max,
             r.zero_count, _pg_array(r.pos_keys), _pg_array(r.pos_key_counts), _pg_array(r.neg_keys),
             _pg_array(r.neg_key_counts)) for i, r in enumerate(a)))
        cur = self.conn.execute(
            """INSERT INTO aggregate_histograms AS h (metric_name, window_seconds, window_start, dimensions, count, sum,
                                                     min, max, zero_count, scale, pos_offset, pos_counts,
                                                     neg_offset, neg_counts)
               SELECT m, w, timestamptz 'epoch' + us * interval '1 microsecond', d::jsonb, c, s::numeric, lo, hi, z,
                      %s, (pk::int[])[1], txm_hist_dense(pk::int[], pc::bigint[]),
                      (nk::int[])[1], txm_hist_dense(nk::int[], nc::bigint[])
                 FROM txm_stage_aggregates
                ORDER BY o
               ON CONFLICT (metric_name, window_seconds, window_start, dimensions) DO UPDATE SET
                   count = h.count + excluded.count,
                   sum = h.sum + excluded.sum,
                   min = least(h.min, excluded.min),
                   max = greatest(h.max, excluded.max),
                   zero_count = h.zero_count + excluded.zero_count,
                   pos_counts = txm_hist_merge_counts(h.pos_offset, h.pos_counts, excluded.pos_offset, excluded.pos_counts),
                   pos_offset = txm_hist_merge_offset(h.pos_offset, excluded.pos_offset),
                   neg_counts = txm_hist_merge_counts(h.neg_offset, h.neg_counts, excluded.neg_offset, excluded.neg_counts),
                   neg_offset = txm_hist_merge_offset(h.neg_offset, excluded.neg_offset),
                   updated_at = now()
                WHERE h.scale = excluded.scale""", (scale,))
        # late events for a day already rolled up: its daily rollup no longer agrees, mark it
        days = sorted({utc_day(r.window_start_us) for r in a})
        self.conn.execute("UPDATE aggregate_rollups SET stale = true, version = version + 1 WHERE day = ANY(%s)",
                          (days,))
        if cur.rowcount != len(a):
            raise RuntimeError(f"aggregate merge touched {cur.rowcount} of {len(a)} rows: a histogram with another "
                               "scale is stored under the same key; migrate the stored rows before changing SCALE")
        return cur.rowcount

    def record_failures(self, rejections: Sequence[Rejection]) -> int:
        if not rejections:
            return 0
        r = sorted(rejections, key=lambda x: x.item_key)
        cur = self.conn.execute(
            """INSERT INTO failed_items (item_key, partition_id, sequence_number, enqueued_at, event_id, error_code,
                                         detail, payload, payload_truncated)
               SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[], %s::text[], %s::text[],
                                    %s::text[], %s::text[], %s::bool[])
               ON CONFLICT (item_key) DO NOTHING""",
            ([x.item_key for x in r], [x.partition_id for x in r], [x.sequence_number for x in r],
             [x.enqueued_at for x in r], [x.event_id for x in r], [x.error_code for x in r], [x.detail for x in r],
             [x.payload for x in r], [x.payload_truncated for x in r]))
        return cur.rowcount
