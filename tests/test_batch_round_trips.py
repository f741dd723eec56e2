"""The batch transaction's round trips: an all-new batch is written without savepoints (the
first attempt assumes every key is new), a redelivery is rolled back and written again
with the checks, and a file name already in the manifest moves to the next name. Each test
also holds the stored result to what one delivery stores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.helpers import archive_rows
from txmetrics import runtime
from txmetrics.adapters import pgcopy
from txmetrics.adapters.blob import BlobArchive
from txmetrics.adapters.postgres import BatchTransaction, PostgresStore

BASE = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": 2,
        "currency": "USD", "payment_method": "card", "status": "approved"}


@pytest.fixture
def attempts(ingest_fn: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """`fresh` of every batch transaction the pipeline runs, in order."""
    pipeline = runtime.get_pipeline()
    seen: list[bool] = []
    write = pipeline._write

    def recorded(tx: BatchTransaction, *args: Any) -> Any:
        seen.append(tx.fresh)
        return write(tx, *args)

    monkeypatch.setattr(pipeline, "_write", recorded)
    return seen


def test_a_new_batch_is_written_in_one_optimistic_attempt_and_a_redelivery_again_with_checks(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive, attempts: list[bool]) -> None:
    batch = [{**BASE, "event_id": "a"}, {**BASE, "event_id": "b"}, b"not json"]
    deliver(batch, partition_id="0", first_sequence=0)
    assert attempts == [True]
    deliver(batch, partition_id="0", first_sequence=0)
    # the redelivery's optimistic attempt hits the ledger keys, is rolled back, and runs again checking
    assert attempts == [True, True, False]
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (2,)
    assert db.execute("SELECT count(*) FROM dynamic_metrics").fetchone() == (4,)
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM raw_files").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM raw_file_outbox").fetchone() == (0,)
    assert [r[2] for r in archive_rows(archive)] == ["a", "b"]


def test_a_bad_event_recorded_before_makes_the_batch_check_and_its_new_events_are_stored_once(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive, attempts: list[bool]) -> None:
    """The ledger keys are all new, but the failed item is already there (same partition, sequence
    number and bytes): the optimistic attempt fails late, after its files and rows, and all of
    that is rolled back before the checked attempt writes them once."""
    deliver([b"not json"], partition_id="0", first_sequence=7)
    deliver([b"not json", {**BASE, "event_id": "c"}], partition_id="0", first_sequence=7)
    assert attempts == [True, True, False]
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (1,)
    assert db.execute("SELECT event_id, metric_name FROM dynamic_metrics ORDER BY 2").fetchall() == [
        ("c", "amount"), ("c", "approved")]
    assert db.execute("SELECT count(*) FROM raw_files").fetchone() == (1,)
    assert [r[2] for r in archive_rows(archive)] == ["c"]
    assert db.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                      "AND dimensions = '{}'").fetchone() == (1,)


def test_a_unique_violation_of_the_checked_attempt_is_raised(services: Any) -> None:
    """Only the optimistic attempt is retried on a unique violation; the checked one's is a real
    error and reaches the caller (the host retries the batch)."""
    store = PostgresStore(services.database_url)
    calls: list[bool] = []

    def work(tx: BatchTransaction) -> None:
        calls.append(tx.fresh)
        raise psycopg.errors.UniqueViolation("duplicate key (injected by the test)")

    try:
        with pytest.raises(psycopg.errors.UniqueViolation):
            store.run_batch(work, optimistic=True)
        assert calls == [True, False]
        calls.clear()
        with pytest.raises(psycopg.errors.UniqueViolation):
            store.run_batch(work)
        assert calls == [False]
    finally:
        store.close()


def test_a_file_name_already_in_the_manifest_moves_to_the_next_name(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """Two different event sets under the same partition and first sequence number (a producer
    reusing sequence numbers; impossible in Event Hubs): the second file takes the name with
    `-1`, in the manifest, the outbox and the archive, and the first file is left as it was."""
    deliver([{**BASE, "event_id": "d"}], partition_id="0", first_sequence=3)
    deliver([{**BASE, "event_id": "e"}, {**BASE, "event_id": "f"}], partition_id="0", first_sequence=3)
    files = db.execute("SELECT path, row_count, state FROM raw_files ORDER BY path").fetchall()
    assert [(p.rsplit("/", 1)[1], n, s) for p, n, s in files] == [
        ("part-0-seq-00000000000000000003-20260301-1.parquet", 2, "uploaded"),
        ("part-0-seq-00000000000000000003-20260301.parquet", 1, "uploaded")]
    assert sorted((r[2], r[1]) for r in archive_rows(archive)) == [("d", 3), ("e", 3), ("f", 4)]
    assert db.execute("SELECT count(*) FROM raw_file_outbox").fetchone() == (0,)


def test_a_file_a_crashed_attempt_left_pending_is_uploaded_by_the_partitions_next_batch(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """Batch 1 commits and its process dies before the upload; batch 2 of the same partition
    holds other events. Marking batch 2's file uploaded counts the partition's other pending
    files in the same statement, finds batch 1's, and uploads it too. A batch of another
    partition leaves it alone."""
    pipeline = runtime.get_pipeline()

    def crash(step: str) -> None:
        if step == "after_commit":
            raise RuntimeError("the process dies (injected by the test)")

    pipeline.crash_hook = crash
    with pytest.raises(RuntimeError):
        deliver([{**BASE, "event_id": "g"}], partition_id="0", first_sequence=0)
    pipeline.crash_hook = None
    assert db.execute("SELECT state FROM raw_files").fetchall() == [("pending",)]
    deliver([{**BASE, "event_id": "h"}], partition_id="1", first_sequence=0)
    assert [r[2] for r in archive_rows(archive)] == ["h"]
    assert db.execute("SELECT count(*) FROM raw_file_outbox").fetchone() == (1,)
    deliver([{**BASE, "event_id": "i"}], partition_id="0", first_sequence=1)
    assert sorted(r[2] for r in archive_rows(archive)) == ["g", "h", "i"]
    assert db.execute("SELECT count(*) FROM raw_file_outbox").fetchone() == (0,)
    assert db.execute("SELECT DISTINCT state FROM raw_files").fetchall() == [("uploaded",)]


# --------------------------------------------------------------- a COPY in flight (pgcopy)
def _int_rows(values: range) -> list[bytes]:
    return [pgcopy.field_count(1) + pgcopy.int8(v) for v in values]


@pytest.fixture
def in_flight_table(services: Any) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    """(conn, other): a table whose COPY ends by waiting for an advisory lock that `other`
    holds (an AFTER STATEMENT trigger), so the server's answer to the COPY comes only once
    `other` lets go; `conn` gives up after 5 s (lock_timeout) instead of hanging."""
    with psycopg.connect(services.database_url) as conn, \
            psycopg.connect(services.database_url, autocommit=True) as other:
        with conn.transaction():
            conn.execute("DROP TABLE IF EXISTS txm_test_in_flight")
            conn.execute("CREATE TABLE txm_test_in_flight (a bigint PRIMARY KEY)")
            conn.execute("""CREATE OR REPLACE FUNCTION txm_test_wait_for_other() RETURNS trigger LANGUAGE plpgsql AS
                            $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$""")
            conn.execute("CREATE TRIGGER wait_for_other AFTER INSERT ON txm_test_in_flight "
                         "FOR EACH STATEMENT EXECUTE FUNCTION txm_test_wait_for_other()")
        conn.execute("SET lock_timeout = '5s'")
        conn.commit()
        yield conn, other
        conn.rollback()
        with conn.transaction():
            conn.execute("DROP TABLE txm_test_in_flight")
            conn.execute("DROP FUNCTION txm_test_wait_for_other()")


def test_a_copy_in_flight_runs_its_body_before_the_server_has_answered(
        in_flight_table: tuple[psycopg.Connection, psycopg.Connection]) -> None:
    """The body runs while the server still works on the COPY: here the server's work can
    only finish after the body has released the lock (were the answer awaited first, the
    trigger would time out and the COPY fail)."""
    conn, other = in_flight_table
    other.execute("SELECT pg_advisory_lock(4242)")
    with conn.transaction():
        with pgcopy.copy_in_flight(conn, "txm_test_in_flight (a)", _int_rows(range(1000))):
            other.execute("SELECT pg_advisory_unlock(4242)")
        assert conn.execute("SELECT count(*), sum(a) FROM txm_test_in_flight").fetchone() == (1000, 499500)


@pytest.fixture
def temp_table(services: Any) -> Iterator[psycopg.Connection]:
    """A connection with an empty temporary table `t (a bigint PRIMARY KEY)`, committed."""
    with psycopg.connect(services.database_url) as conn:
        conn.execute("CREATE TEMP TABLE t (a bigint PRIMARY KEY)")
        conn.commit()
        yield conn


def test_a_copy_in_flight_raises_the_servers_error_at_its_exit_after_the_body(temp_table: psycopg.Connection) -> None:
    conn = temp_table
    body_ran = False
    duplicate_last = _int_rows(range(3)) + _int_rows(range(2, 3))
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction(), \
            pgcopy.copy_in_flight(conn, "t (a)", duplicate_last):
        body_ran = True
    assert body_ran
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_body_that_raises_leaves_the_connection_usable(temp_table: psycopg.Connection) -> None:
    """The server's answer is read even when the body raises: the body's exception is the one
    seen, and the connection takes the next command (an unread answer would be taken for it)."""
    conn = temp_table
    with pytest.raises(RuntimeError, match="the body's own"), conn.transaction(), \
            pgcopy.copy_in_flight(conn, "t (a)", _int_rows(range(5))):
        raise RuntimeError("the body's own error")
    with conn.transaction():
        with pgcopy.copy_in_flight(conn, "t (a)", _int_rows(range(7))):
            pass
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (7,)


def test_the_bodys_error_is_the_one_raised_when_the_copy_failed_too(temp_table: psycopg.Connection) -> None:
    """A unique violation must not hide the body's own error: run_batch would take it for a
    redelivery and run the batch again, and a bug (or a Ctrl-C) in the body would be lost."""
    conn = temp_table
    duplicate_last = _int_rows(range(3)) + _int_rows(range(2, 3))
    with pytest.raises(RuntimeError, match="the body's own"), conn.transaction(), \
            pgcopy.copy_in_flight(conn, "t (a)", duplicate_last):
        raise RuntimeError("the body's own error")
    with conn.transaction():
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


class _Interrupt(BaseException):
    """Stands for a KeyboardInterrupt (not an Exception, as it is not)."""


def test_an_interrupt_once_the_copys_end_is_sent_leaves_the_connection_usable(
        temp_table: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between CopyDone and the body, the server already owes an answer: it is read before
    the interrupt goes on, so the transaction rolls back and the connection takes commands."""
    conn = temp_table
    finish = pgcopy._AnswerLaterWriter.finish

    def interrupted(self: Any, exc: BaseException | None = None) -> None:
        finish(self, exc)
        raise _Interrupt

    monkeypatch.setattr(pgcopy._AnswerLaterWriter, "finish", interrupted)
    with pytest.raises(_Interrupt), conn.transaction(), pgcopy.copy_in_flight(conn, "t (a)", _int_rows(range(5))):
        pytest.fail("the body runs only once the COPY's end is sent")
    monkeypatch.undo()
    assert not conn.closed
    with conn.transaction(), pgcopy.copy_in_flight(conn, "t (a)", _int_rows(range(7))):
        pass
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (7,)


def test_claiming_new_refuses_a_checked_transaction(services: Any) -> None:
    """`claiming_new` cannot tell which events were claimed before: only the optimistic
    attempt, which a key already there rolls back whole, may use it."""
    store = PostgresStore(services.database_url)
    try:
        with store.batch(fresh=False) as tx, pytest.raises(ValueError, match="fresh"), tx.claiming_new([], []):
            pass
    finally:
        store.close()
