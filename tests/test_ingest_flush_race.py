"""A batch whose file the daily timer's flush holds, and whose flush then fails (an audit).

Contract section 2: a call returns normally only when its effects are durable, its valid
events in the raw archive among them. The batch left its own file to the timer's flush
(`lock_pending`, SKIP LOCKED) and returned; when that flush failed (Blob Storage answering
503 at 03:00, say), nothing uploaded the file: the host had checkpointed the batch, and the
file waited for the partition's next batch or the next day's maintenance, out of the tree
every Parquet reader reads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.helpers import archive_rows
from txmetrics import runtime
from txmetrics.adapters import manifest
from txmetrics.adapters.blob import BlobArchive

EVENT = {"event_id": "race-1", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",
         "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved"}


def test_a_batch_whose_file_a_failing_flush_held_is_in_the_archive_when_it_returns(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive, services: Any) -> None:
    pipeline = runtime.get_pipeline()
    holding = threading.Event()
    errors: list[BaseException] = []

    def failing_flush() -> None:
        """The maintenance timer's flush_outbox in another worker: it takes every pending file,
        its upload fails (503), and its transaction rolls back with nothing marked."""
        try:
            with psycopg.connect(services.database_url) as conn, conn.transaction():
                pending = manifest.pending_uploads(conn, partition_id=None)
                assert pending, "the batch's committed file is pending"
                holding.set()
                threading.Event().wait(1.0)          # the upload being tried and retried
                raise RuntimeError("503 Service Unavailable (injected)")
        except RuntimeError:
            pass
        except BaseException as exc:    # reported below
            errors.append(exc)
            holding.set()

    flusher = threading.Thread(target=failing_flush)

    def hook(step: str) -> None:
        if step == "after_commit" and not flusher.is_alive() and not holding.is_set():
            flusher.start()
            assert holding.wait(10)

    pipeline.crash_hook = hook
    try:
        deliver([EVENT], partition_id="0", first_sequence=0)     # returns normally
    finally:
        pipeline.crash_hook = None
        flusher.join()
    assert not errors, errors
    archive.ensure_container()
    assert [r[2] for r in archive_rows(archive)] == ["race-1"]
    assert db.execute("SELECT state FROM raw_files").fetchall() == [("uploaded",)]
    assert db.execute("SELECT count(*) FROM raw_file_outbox").fetchone() == (0,)


def test_a_retry_whose_left_behind_file_a_failing_flush_held_is_in_the_archive_when_it_returns(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive, services: Any) -> None:
    """The first attempt commits and dies before its upload; while the host's retry runs, the
    timer's flush holds the file and then fails. The retry (all its events claimed before)
    uploads the file left behind before it returns."""
    pipeline = runtime.get_pipeline()

    def crash(step: str) -> None:
        if step == "after_commit":
            raise RuntimeError("the process dies (injected)")

    pipeline.crash_hook = crash
    with pytest.raises(RuntimeError):
        deliver([EVENT], partition_id="0", first_sequence=0)
    pipeline.crash_hook = None
    holding = threading.Event()

    def failing_flush() -> None:
        try:
            with psycopg.connect(services.database_url) as conn, conn.transaction():
                assert manifest.pending_uploads(conn, partition_id=None)
                holding.set()
                threading.Event().wait(1.0)
                raise RuntimeError("503 Service Unavailable (injected)")
        except RuntimeError:
            pass

    flusher = threading.Thread(target=failing_flush)
    flusher.start()
    assert holding.wait(10)
    try:
        deliver([EVENT], partition_id="0", first_sequence=0)     # the host's retry returns normally
    finally:
        flusher.join()
    archive.ensure_container()
    assert [r[2] for r in archive_rows(archive)] == ["race-1"]
    assert db.execute("SELECT state FROM raw_files").fetchall() == [("uploaded",)]
