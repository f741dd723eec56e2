"""Exactly-once effects under at-least-once delivery: redelivery, re-cut batches, the same
event in another partition, and crashes at every step between the first byte and the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from localdev.synth import SyntheticEvent
from tests.helpers import archive_rows, cut, empty_tables, send_batch, synthetic, table_snapshot
from txmetrics import runtime
from txmetrics.adapters.blob import BlobArchive


@pytest.fixture(scope="module")
def data() -> dict[str, list[SyntheticEvent]]:
    return synthetic()


@pytest.fixture(scope="module")
def reference(services: Any, data: dict[str, list[SyntheticEvent]]) -> Iterator[dict[str, Any]]:
    """Tables and archive after one clean delivery of every batch (computed once)."""
    import os

    from localdev.run import load_function
    from txmetrics.adapters.blob import service_client

    container = "reference-single-delivery"
    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "AZURE_STORAGE_CONNECTION_STRING", "RAW_EVENTS_CONTAINER")}
    os.environ.update({**services.env(), "RAW_EVENTS_CONTAINER": container})
    runtime.reset()
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        empty_tables(conn)
        fn = load_function()
        for p, events in data.items():
            for b in cut(events, 200):
                send_batch(fn, p, b)
        snap = table_snapshot(conn)
    arch = BlobArchive(service_client(services.storage_connection_string), container)
    rows = archive_rows(arch)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    runtime.reset()
    yield {"tables": snap, "archive": rows}


def assert_same_as_reference(db: psycopg.Connection, archive: BlobArchive, reference: dict[str, Any]) -> None:
    snap = table_snapshot(db)
    for table, rows in reference["tables"].items():
        assert snap[table] == rows, f"{table} differs from a single delivery"
    rows = archive_rows(archive)
    assert rows == reference["archive"]
    keys = [(r[0], r[1]) for r in rows]
    assert len(keys) == len(set(keys)), "a (partition, sequence number) appears twice in the archive"
    assert db.execute("SELECT count(*) FROM raw_file_outbox").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM raw_files WHERE state <> 'uploaded'").fetchone() == (0,)


def test_reference_is_meaningful(reference: dict[str, Any], data: dict[str, list[SyntheticEvent]]) -> None:
    valid = sum(1 for evs in data.values() for e in evs if e.bad_kind is None)
    bad = sum(1 for evs in data.values() for e in evs if e.bad_kind is not None)
    assert len(reference["tables"]["ingested_events"]) == valid
    assert len(reference["tables"]["failed_items"]) == bad
    assert len(reference["archive"]) == valid
    assert len(reference["tables"]["dynamic_metrics"]) >= 2 * valid


def test_every_batch_delivered_twice(ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
                                     data: dict[str, list[SyntheticEvent]], reference: dict[str, Any]) -> None:
    for p, events in data.items():
        for b in cut(events, 200):
            send_batch(ingest_fn, p, b)
            send_batch(ingest_fn, p, b)
    assert_same_as_reference(db, archive, reference)


def test_redelivery_recut_at_other_boundaries(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                              archive: BlobArchive, data: dict[str, list[SyntheticEvent]],
                                              reference: dict[str, Any]) -> None:
    for p, events in data.items():
        for b in cut(events, 200):
            send_batch(ingest_fn, p, b)
        for b in cut(events, 150, offset=70):       # longer and shorter, overlapping the first cut
            send_batch(ingest_fn, p, b)
    assert_same_as_reference(db, archive, reference)


def test_first_delivery_partial_then_recut_redelivery(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                      archive: BlobArchive, data: dict[str, list[SyntheticEvent]],
                                                      reference: dict[str, Any]) -> None:
    for p, events in data.items():
        batches = cut(events, 200)
        for b in batches[::2]:                       # every other batch first
            send_batch(ingest_fn, p, b)
        for b in cut(events, 333, offset=100):       # then everything, cut differently
            send_batch(ingest_fn, p, b)
    assert_same_as_reference(db, archive, reference)


def test_the_same_event_in_another_partition_counts_once(deliver: Callable[..., None], db: psycopg.Connection,
                                                         archive: BlobArchive) -> None:
    event = {"event_id": "dup-1", "transaction_id": "t", "occurred_at": "2026-03-01T00:00:00Z", "merchant_id": "m",
             "amount": 5, "currency": "USD", "payment_method": "card", "status": "approved"}
    deliver([event], partition_id="0", first_sequence=10)
    before = table_snapshot(db)
    deliver([event, event], partition_id="1", first_sequence=99)   # producer retry, twice in one batch too
    assert table_snapshot(db) == before
    assert len(archive_rows(archive)) == 1


def test_an_event_id_sent_again_with_another_time_of_its_day_adds_nothing(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """Contract section 4: an event_id delivered again never adds a row, also when the
    producer stamped occurred_at again (or changed anything else) for the resend: the first
    copy stored stays, in every table and the archive. The ledger takes an event_id once per
    UTC day of occurred_at (migrations 0015-0016); another day is stored again (docs/decisions.md,
    "Same event, different occurred_at")."""
    event = {"event_id": "restamped-1", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z",
             "merchant_id": "m", "amount": 5, "currency": "USD", "payment_method": "card", "status": "approved"}
    deliver([event], partition_id="0", first_sequence=10)
    before = table_snapshot(db)
    later = {**event, "occurred_at": "2026-03-01T10:00:07+00:00"}
    deliver([later], partition_id="1", first_sequence=40)                                 # another batch
    deliver([{**event, "occurred_at": "2026-03-01T23:59:59Z", "amount": 9}], partition_id="0", first_sequence=11)
    assert table_snapshot(db) == before
    assert [r[2] for r in archive_rows(archive)] == ["restamped-1"]
    # twice in one batch: the first copy in the batch stays (here the later time)
    other = {**event, "event_id": "restamped-2"}
    deliver([{**other, "occurred_at": "2026-03-01T11:00:00Z", "amount": 4}, {**other, "amount": 3}],
            partition_id="2", first_sequence=5)
    assert db.execute("SELECT occurred_at, value FROM dynamic_metrics WHERE event_id = 'restamped-2' "
                      "AND metric_name = 'amount'").fetchall() == [(datetime(2026, 3, 1, 11, tzinfo=UTC), 4.0)]
    # another UTC day: stored again (the ledger cannot tell, see the docstring)
    deliver([{**event, "occurred_at": "2026-03-02T00:00:00Z"}], partition_id="0", first_sequence=12)
    assert db.execute("SELECT count(*) FROM dynamic_metrics WHERE event_id = 'restamped-1' "
                      "AND metric_name = 'amount'").fetchone() == (2,)


def test_the_same_bad_event_in_another_partition_is_recorded_once(deliver: Callable[..., None],
                                                                   db: psycopg.Connection) -> None:
    """A bad event that names its event_id is the same event wherever it arrives (contract
    section 2; failed_items: one row per bad event). An independent audit found a second row
    per partition: the key held the partition and sequence number."""
    good = {"event_id": "ok-1", "transaction_id": "t", "occurred_at": "2026-03-01T00:00:00Z", "merchant_id": "m",
            "amount": 5, "currency": "USD", "payment_method": "card", "status": "approved"}
    bad = {**good, "event_id": "bad-1", "currency": "eur"}
    deliver([good, bad, b"not json"], partition_id="0", first_sequence=10)
    before = table_snapshot(db)
    deliver([good, bad, b"not json"], partition_id="0", first_sequence=10)     # the host's redelivery
    assert table_snapshot(db) == before
    deliver([bad, good, bad], partition_id="1", first_sequence=77)                # a producer's retry
    rows = db.execute("SELECT event_id, error_code, partition_id, sequence_number FROM failed_items "
                      "ORDER BY id").fetchall()
    assert rows == [("bad-1", "invalid_currency", "0", 11), (None, "body_not_json", "0", 12)]


@pytest.mark.parametrize("step", ["before_commit", "after_commit", "after_upload"])
def test_crash_at_each_step_then_retry_gives_exactly_once(step: str, ingest_fn: Callable[..., None],
                                                          db: psycopg.Connection, archive: BlobArchive,
                                                          data: dict[str, list[SyntheticEvent]],
                                                          reference: dict[str, Any]) -> None:
    """The process 'dies' at `step` on every third batch; the host redelivers it (sometimes re-cut)."""

    class Crash(RuntimeError):
        pass

    pipeline = runtime.get_pipeline()
    calls = {"n": 0}

    def hook(name: str) -> None:
        if name == step:
            calls["n"] += 1
            if calls["n"] % 3 == 1:
                raise Crash(step)

    pipeline.crash_hook = hook
    crashes = 0
    for p, events in data.items():
        for i, b in enumerate(cut(events, 200)):
            try:
                send_batch(ingest_fn, p, b)
            except Crash:
                crashes += 1
                # the host retries; every other time the redelivery is shorter (re-cut)
                retry = b if i % 2 else b[: len(b) // 2]
                send_batch(ingest_fn, p, retry)
                if retry is not b:
                    send_batch(ingest_fn, p, b)
    pipeline.crash_hook = None
    assert crashes >= 3
    assert_same_as_reference(db, archive, reference)


def test_a_batch_transaction_postgresql_asks_to_retry_is_written_once(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        data: dict[str, list[SyntheticEvent]], reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch's transaction fails once with a deadlock (40P01) just before its commit, after
    all its writes: PostgresStore.run_batch rolls it back and runs the whole body again. The
    second attempt stores exactly what one clean delivery stores, and the batch's report counts
    that attempt only (not the rolled-back one's files, events or rows)."""
    pipeline = runtime.get_pipeline()
    attempts = {"n": 0}

    def hook(name: str) -> None:
        if name == "before_commit":
            attempts["n"] += 1
            if attempts["n"] % 2 == 1:                  # each batch's first attempt
                raise psycopg.errors.DeadlockDetected("deadlock detected (injected by the test)")

    reports: list[Any] = []
    process = pipeline.process

    def recorded(partition_id: str, inbound: Any) -> Any:
        reports.append(report := process(partition_id, inbound))
        return report

    monkeypatch.setattr(pipeline, "process", recorded)
    pipeline.crash_hook = hook
    batches = 0
    for p, events in data.items():
        for b in cut(events, 200):
            send_batch(ingest_fn, p, b)
            batches += 1
    pipeline.crash_hook = None
    assert attempts["n"] == 2 * batches and len(reports) == batches
    assert_same_as_reference(db, archive, reference)
    tables = reference["tables"]
    assert sum(r.new_events for r in reports) == len(tables["ingested_events"])
    assert sum(r.duplicates for r in reports) == 0
    assert sum(r.metric_rows for r in reports) == len(tables["dynamic_metrics"])
    assert sum(r.failed_new for r in reports) == len(tables["failed_items"])
    files = [f for r in reports for f in r.files]
    assert sorted(path for path, _ in files) == sorted(
        str(row[0]) for row in db.execute("SELECT path FROM raw_files").fetchall())


def test_crash_inside_the_commit_rolls_back_everything(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                       archive: BlobArchive, data: dict[str, list[SyntheticEvent]],
                                                       reference: dict[str, Any], services: Any) -> None:
    """The connection is killed while the batch transaction is open (as when the process or the
    network dies mid-commit): nothing of the batch remains, and the retry completes it."""
    pipeline = runtime.get_pipeline()
    armed = {"on": True}

    def hook(name: str) -> None:
        if name == "before_commit" and armed["on"]:
            armed["on"] = False
            pid = pipeline.store.connection().info.backend_pid
            with psycopg.connect(services.database_url, autocommit=True) as killer:
                killer.execute("SELECT pg_terminate_backend(%s)", (pid,))

    pipeline.crash_hook = hook
    first_partition = next(iter(data))
    with pytest.raises(psycopg.OperationalError):
        send_batch(ingest_fn, first_partition, cut(data[first_partition], 200)[0])
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (0,)
    pipeline.crash_hook = None
    for p, events in data.items():
        for b in cut(events, 200):
            send_batch(ingest_fn, p, b)
    assert_same_as_reference(db, archive, reference)


def test_a_batch_that_overlaps_an_earlier_one_claims_only_its_new_events(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """The ledger's fast path (one COPY) meets keys that are already there: it falls back to
    ON CONFLICT DO NOTHING in the same transaction, and only the new events go further."""
    base = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": 2,
            "currency": "USD", "payment_method": "card", "status": "approved"}
    deliver([{**base, "event_id": "x"}, {**base, "event_id": "y"}], partition_id="0", first_sequence=0)
    deliver([{**base, "event_id": "y"}, {**base, "event_id": "z"}], partition_id="1", first_sequence=0)
    assert db.execute("SELECT event_id, metric_name FROM dynamic_metrics ORDER BY 1, 2").fetchall() == [
        ("x", "amount"), ("x", "approved"), ("y", "amount"), ("y", "approved"), ("z", "amount"), ("z", "approved")]
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (3,)
    assert sorted(r[2] for r in archive_rows(archive)) == ["x", "y", "z"]
    assert db.execute("SELECT count FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                      "AND dimensions = '{}'").fetchone() == (3,)
