"""Compaction of a day's raw files (txmetrics.compaction against Azurite and PostgreSQL): hundreds
of small files into a few of the target size with the same rows, killed at every step and rerun,
and while batches for the same day keep arriving; never a row lost or twice."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pyarrow.compute as pc
import pytest

from localdev.eventhub import make_batch
from localdev.services import LocalServices
from tests.helpers import archive_rows, compact_killed_at, empty_tables
from txmetrics import compaction
from txmetrics.adapters import manifest, parquet
from txmetrics.adapters.blob import BlobArchive
from txmetrics.compaction import compact_day
from txmetrics.query import query_events


def live_rows(db: psycopg.Connection, archive: BlobArchive, day: str) -> list[tuple[Any, ...]]:
    rows = []
    for (path,) in db.execute("SELECT path FROM raw_files WHERE event_date = %s AND state = 'uploaded'",
                              (day,)).fetchall():
        t = parquet.decode(archive.download(path))
        rows += list(zip(t["partition_id"].to_pylist(), t["sequence_number"].to_pylist(), t["event_id"].to_pylist(),
                         t["payload"].to_pylist(), strict=True))
    return sorted(rows)


def many_small_files(ingest_fn: Callable[..., None], n_batches: int, partition: str = "0", first: int = 0,
                     day: str = "2026-03-05") -> None:
    for b in range(n_batches):
        bodies = [json.dumps({"event_id": f"c-{partition}-{first + b}-{i}", "transaction_id": "t", "merchant_id": "m",
                              "occurred_at": f"{day}T{(b // 60) % 24:02d}:{b % 60:02d}:{i:02d}Z", "amount": 1.5,
                              "currency": "EUR", "payment_method": "card", "status": "approved",
                              "attributes": {"note": uuid.uuid4().hex * 2}}) for i in range(5)]
        ingest_fn(make_batch(bodies, partition_id=partition, first_sequence=(first + b) * 5))


def no_duplicates_anywhere(archive: BlobArchive) -> None:
    rows = archive_rows(archive)
    keys = [(r[0], r[1]) for r in rows]
    assert len(keys) == len(set(keys))


def test_compaction_of_hundreds_of_files(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                         archive: BlobArchive) -> None:
    many_small_files(ingest_fn, 240)
    before = live_rows(db, archive, "2026-03-05")
    n_before = db.execute("SELECT count(*), sum(byte_size) FROM raw_files WHERE event_date = '2026-03-05'").fetchone()
    assert n_before[0] == 240
    target = 24 * 1024
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        report = compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=target)
    assert report.inputs == 240 and len(report.outputs) >= 2
    sizes = [size for _, size in report.outputs]
    assert all(0.5 * target <= size <= 1.5 * target for size in sizes)
    assert live_rows(db, archive, "2026-03-05") == before
    assert db.execute("SELECT count(*) FROM raw_files WHERE event_date = '2026-03-05' AND state = 'superseded'"
                      ).fetchone() == (240,)
    assert sorted(b.name for b in archive.list()) == sorted(p for p, _ in report.outputs)
    no_duplicates_anywhere(archive)
    found = list(query_events(db, archive, datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC),
                              event_id="c-0-7-3"))
    assert [r for t in found for r in t["event_id"].to_pylist()] == ["c-0-7-3"]


STEPS = ["after_intent", "after_upload", "before_commit", "after_commit", "after_an_input_deleted",
         "after_inputs_deleted", "after_publish"]


@pytest.mark.parametrize("step", STEPS)
def test_compaction_killed_at_any_step_and_rerun(step: str, ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                 archive: BlobArchive) -> None:
    many_small_files(ingest_fn, 60)
    before = live_rows(db, archive, "2026-03-05")

    def crash(name: str) -> None:
        if name == step:
            raise RuntimeError(f"killed at {step}")

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        with pytest.raises(RuntimeError, match="killed"):
            compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=16 * 1024, crash_hook=crash)
        no_duplicates_anywhere(archive)                     # the tree as readers see it until the rerun
        many_small_files(ingest_fn, 3, first=1000)          # new batches for that day meanwhile
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=16 * 1024)
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=16 * 1024)
    after = live_rows(db, archive, "2026-03-05")
    assert set(before) <= set(after) and len(after) == len(before) + 15
    no_duplicates_anywhere(archive)
    assert db.execute("SELECT count(*) FROM raw_compactions WHERE state IN ('started', 'committed')").fetchone() == (0,)


def test_compaction_while_batches_for_the_day_arrive(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                     archive: BlobArchive) -> None:
    many_small_files(ingest_fn, 80)
    errors: list[BaseException] = []

    def late_batches() -> None:
        try:
            many_small_files(ingest_fn, 40, partition="1", first=5000)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=late_batches)
    thread.start()
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=32 * 1024)
        thread.join(timeout=120)
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=32 * 1024)
    assert not errors
    rows = live_rows(db, archive, "2026-03-05")
    assert len(rows) == 120 * 5
    no_duplicates_anywhere(archive)


def test_a_reader_of_the_tree_never_sees_an_event_twice_during_a_compaction(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """Contract section 3: each (partition, sequence number) at most once across the archive,
    under compaction too. Outputs wait in staging, outside raw_events/, until their inputs are
    deleted (an audit found 20 of 40 keys twice while a compaction ran, and after a kill)."""
    many_small_files(ingest_fn, 12)
    seen: dict[str, int] = {}

    queried: dict[str, int] = {}

    def look(step: str) -> None:
        no_duplicates_anywhere(archive)
        seen[step] = len(archive_rows(archive))
        # manifest readers (txmetrics query) read the staged outputs meanwhile: never an event missing
        found = query_events(db, archive, datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC))
        queried[step] = sum(t.num_rows for t in found)

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        report = compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=16 * 1024, crash_hook=look)
    assert report.inputs == 12 and set(seen) == set(STEPS)
    assert seen["before_commit"] == seen["after_commit"] == 60 and seen["after_inputs_deleted"] < 60
    assert set(queried.values()) == {60}
    assert len(archive_rows(archive)) == 60
    assert not [b.name for b in archive.list("_staging/")]


def test_one_compaction_of_a_day_at_a_time(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                           archive: BlobArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer and `txmetrics compact` may run at once: a second run of the same day stands
    down. And a run that picked the same inputs as a finished one (same generation) never
    reopens its journal: the reviewer's race had the slower run's recovery delete the faster
    run's published output, the day's only live file, after its inputs were gone."""
    many_small_files(ingest_fn, 12)
    day = datetime(2026, 3, 5).date()
    with psycopg.connect(db.info.dsn, autocommit=True) as holder, \
            psycopg.connect(db.info.dsn, autocommit=True) as conn:
        holder.execute("SELECT pg_advisory_lock(hashtext('txmetrics.compact_day'), %s)", (day.toordinal(),))
        report = compact_day(conn, archive, day, target_bytes=1 << 30)
        assert report.skipped_reason == "another compaction of this day is running" and report.inputs == 0
        holder.execute("SELECT pg_advisory_unlock_all()")
        # the slower of two runs: it picked the inputs before the other finished
        small = manifest.small_files(conn, day=day, below_bytes=1 << 29)
        files = [(i, p) for i, p, _ in small]
        metrics = compaction._metric_key(small[0][2])
        merged = compaction._merged_inputs(archive, [p for _, p in files])
        done = compact_day(conn, archive, day, target_bytes=1 << 30)
        ((output, _),) = done.outputs
        monkeypatch.setattr(compaction, "_merged_inputs", lambda *_: merged)
        late = compaction._compact_group(conn, archive, day, files, metrics, 1 << 30, lambda _: None,
                                         compaction.CompactionReport(day=day))
        assert late is not None and "already committed" in late
        monkeypatch.undo()
        compact_day(conn, archive, day, target_bytes=1 << 30)          # any later run
        # the lock was released while `conn` stays open: a run on another connection is not turned away
        with psycopg.connect(db.info.dsn, autocommit=True) as other:
            assert compact_day(other, archive, day, target_bytes=1 << 30).skipped_reason != \
                "another compaction of this day is running"
    assert archive.has(output) and len(archive_rows(archive)) == 60
    no_duplicates_anywhere(archive)


@pytest.mark.parametrize("step", ["after_commit", "after_inputs_deleted", "after_publish"])
def test_a_rebuild_with_the_database_finishes_a_killed_compaction_first(
        step: str, ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        services: Any) -> None:
    """A rebuild is safe to run while the database still exists (resumable, safe twice): it
    finishes the day's killed compaction as the next compaction would, so the manifest and
    the tree agree afterwards (the reviewer found the manifest naming a deleted staged file
    and every later compaction of the day failing)."""
    from txmetrics.adapters.postgres import PostgresStore
    from txmetrics.core.catalog import load_catalog
    from txmetrics.rebuild import rebuild
    from txmetrics.settings import BUNDLED_CATALOG

    many_small_files(ingest_fn, 12)
    day = datetime(2026, 3, 5).date()

    def killed(name: str) -> None:
        if name == step:
            raise RuntimeError("killed")

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        with pytest.raises(RuntimeError):
            compact_day(conn, archive, day, target_bytes=1 << 30, crash_hook=killed)
        store = PostgresStore(services.database_url)
        try:
            rebuild(store=store, archive=archive, catalog=load_catalog(BUNDLED_CATALOG), start=day,
                    end=datetime(2026, 3, 6).date(), today=datetime(2026, 3, 10).date())
        finally:
            store.close()
        assert not [b.name for b in archive.list("_staging/")]
        assert len(live_rows(db, archive, "2026-03-05")) == 60       # every live manifest path reads
        found = query_events(db, archive, datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC))
        assert sum(t.num_rows for t in found) == 60
        assert compact_day(conn, archive, day, target_bytes=1 << 30).skipped_reason is not None   # nothing left
    assert len(archive_rows(archive)) == 60
    no_duplicates_anywhere(archive)
    assert db.execute("SELECT count(*) FROM raw_compactions WHERE state IN ('started', 'committed')").fetchone() == (0,)


def test_a_query_planned_before_a_publication_reads_the_published_file(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """A manifest reader that took a staged path just before the output was published (its
    staged copy then deleted) reads the file at its place in the tree instead of failing."""
    many_small_files(ingest_fn, 12)
    day = datetime(2026, 3, 5).date()
    planned: list[Any] = []

    def plan_now(step: str) -> None:
        if step == "after_inputs_deleted":
            planned.extend(manifest.files_in_range(db, start=datetime(2026, 3, 5, tzinfo=UTC),
                                                   end=datetime(2026, 3, 6, tzinfo=UTC)))

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        compact_day(conn, archive, day, target_bytes=1 << 30, crash_hook=plan_now)
    assert [p.path.startswith("_staging/compaction/") for p in planned] == [True]
    data = manifest.download_file(archive, planned[0].path)
    assert data is not None and parquet.decode(data).num_rows == 60


def test_settling_a_lost_compaction_deletes_only_inputs_its_outputs_wholly_hold(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """A compaction killed after deleting one of its inputs, then the database lost: settling
    its staged output deletes the surviving inputs and publishes it, but never a file holding
    an event the output lacks, nor one written after the output (it cannot be an input):
    raw events are a compliance archive, and an event seen twice can be told, a lost one not."""
    many_small_files(ingest_fn, 12)
    day = datetime(2026, 3, 5).date()
    before = archive_rows(archive)

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        compact_killed_at(conn, archive, day, "after_an_input_deleted")
        inputs = [p for (p,) in conn.execute("SELECT path FROM raw_files WHERE state = 'superseded' ORDER BY path")]
        survivors = [p for p in inputs if archive.has(p)]
        assert len(survivors) == 11
        # the output lacks one event of the first survivor (as if that file held an event the
        # run never read); the second survivor is written again after the output
        (staged,) = [b.name for b in archive.list("_staging/")]
        output = parquet.decode(archive.download(staged))
        lacking = parquet.decode(archive.download(survivors[0]))["sequence_number"][0].as_py()
        archive.upload(staged, parquet.encode(output.filter(pc.not_equal(output["sequence_number"], lacking))))
        time.sleep(1.1)                             # blob times have whole seconds
        archive.upload(survivors[1], archive.download(survivors[1]))
        empty_tables(conn)                          # the database lost: no journal knows the output
        report = compaction.settle_staging(conn, archive, [day])
    assert report.inputs_deleted == survivors[2:] and report.published == [staged.removeprefix("_staging/compaction/")]
    assert archive.has(survivors[0]) and archive.has(survivors[1])
    assert set(archive_rows(archive)) == set(before)            # nothing lost (the kept files' events are twice)


def reused_keys_batch(prefix: str, hour: int, day: str = "2026-03-05") -> list[Any]:
    """Five events on partition 0 with sequence numbers 0..4: what a recreated or failed-over
    event hub delivers (its sequence numbers restart), distinct events by their event_id."""
    bodies = [json.dumps({"event_id": f"{prefix}-{i}", "transaction_id": "t", "merchant_id": "m",
                          "occurred_at": f"{day}T{hour:02d}:00:{i:02d}Z", "amount": 2.5, "currency": "EUR",
                          "payment_method": "card", "status": "approved"}) for i in range(5)]
    return make_batch(bodies, partition_id="0", sequence_numbers=list(range(5)))


def event_keys(archive: BlobArchive) -> list[tuple[Any, ...]]:
    return sorted((p, s, e) for p, s, e, _ in archive_rows(archive))


def test_distinct_events_sharing_a_partition_and_sequence_number_all_survive_compaction(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """Two events with the same (partition, sequence number) but different event_ids are two
    events (a hub recreated: sequence numbers restart): ingest keeps both, and so must the
    compaction; the archive is the system of record (the audit saw 10 events become 5)."""
    ingest_fn(reused_keys_batch("before", 10))
    ingest_fn(reused_keys_batch("after", 11))           # the recreated hub: 0..4 again, new events
    before = event_keys(archive)
    assert len(before) == 10 and len({(p, s) for p, s, _ in before}) == 5
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        report = compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=1 << 30)
    assert report.inputs == 2 and report.rows == 10 and len(report.outputs) == 1
    assert event_keys(archive) == before
    ledger = db.execute("SELECT count(*) FROM ingested_events").fetchone()
    assert ledger == (10,)
    assert db.execute("SELECT sum(row_count) FROM raw_files WHERE state = 'uploaded'").fetchone() == ledger
    found = query_events(db, archive, datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC))
    assert sum(t.num_rows for t in found) == 10


def test_an_event_written_twice_is_kept_once_by_compaction(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """Rows equal on (partition, sequence number, event_id) are one event written twice (here:
    an input file present twice under two names): the output holds it once."""
    many_small_files(ingest_fn, 3)
    before = live_rows(db, archive, "2026-03-05")
    (original,) = db.execute("SELECT path FROM raw_files ORDER BY path LIMIT 1").fetchone() or ("",)
    copy = original.replace(".parquet", "-copy.parquet")
    archive.upload(copy, archive.download(original))
    db.execute("""INSERT INTO raw_files (id, path, container, partition_id, event_date, seq_min, seq_max,
                                         occurred_min, occurred_max, row_count, byte_size, state, generation,
                                         uploaded_at, metrics)
                  SELECT nextval('raw_files_id_seq'), %s, container, partition_id, event_date, seq_min, seq_max,
                         occurred_min, occurred_max, row_count, byte_size, state, generation, now(), metrics
                  FROM raw_files WHERE path = %s""", (copy, original))
    assert len(live_rows(db, archive, "2026-03-05")) == 20
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        report = compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=1 << 30)
    assert report.inputs == 4 and report.rows == 15
    assert live_rows(db, archive, "2026-03-05") == before
    no_duplicates_anywhere(archive)


def test_compaction_refuses_to_commit_outputs_that_lose_an_event(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard before the commit: outputs that do not hold exactly the inputs' distinct
    (partition, sequence number, event_id) (here a merge that drops a row) stop the run
    before anything is committed, uploaded or deleted."""
    many_small_files(ingest_fn, 4)
    blobs = sorted(b.name for b in archive.list())
    merge = compaction._merged_inputs

    def lossy(archive: BlobArchive, paths: list[str]) -> Any:
        merged, distinct = merge(archive, paths)
        return merged.slice(1), distinct

    monkeypatch.setattr(compaction, "_merged_inputs", lossy)
    with psycopg.connect(db.info.dsn, autocommit=True) as conn, pytest.raises(RuntimeError, match="19 row"):
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=1 << 30)
    assert sorted(b.name for b in archive.list()) == blobs and not list(archive.list("_staging/"))
    assert db.execute("SELECT state, count(*) FROM raw_files GROUP BY 1").fetchall() == [("uploaded", 4)]
    assert db.execute("SELECT state FROM raw_compactions").fetchall() == [("aborted",)]


def test_settling_a_lost_compaction_keeps_a_file_whose_event_reuses_a_key(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """A compaction killed after deleting one input, the database lost; a file written during
    the run (not an input) holds distinct events whose (partition, sequence number) the output
    also holds (a hub recreated meanwhile). Settling deletes the surviving inputs, never that
    file: its events are not the output's."""
    many_small_files(ingest_fn, 6)
    day = datetime(2026, 3, 5).date()

    def step(name: str) -> None:
        if name == "after_intent":                  # after the inputs were read, before the output
            ingest_fn(reused_keys_batch("recreated", 23))
        if name == "after_an_input_deleted":
            raise RuntimeError("killed")

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        before_run = event_keys(archive)
        with pytest.raises(RuntimeError):
            compact_day(conn, archive, day, target_bytes=1 << 30, crash_hook=step)
        inputs = [p for (p,) in conn.execute("SELECT path FROM raw_files WHERE state = 'superseded' ORDER BY path")]
        (late,) = [p for (p,) in conn.execute("SELECT path FROM raw_files WHERE state = 'uploaded' "
                                              "AND generation IS NULL")]
        survivors = [p for p in inputs if archive.has(p)]
        assert len(survivors) == 5 and late not in inputs
        expected = sorted(before_run + [("0", i, f"recreated-{i}") for i in range(5)])
        empty_tables(conn)                          # the database lost: no journal knows the output
        report = compaction.settle_staging(conn, archive, [day])
    assert report.inputs_deleted == survivors and archive.has(late)
    assert event_keys(archive) == expected          # every event once: none lost


def test_the_guard_refuses_outputs_holding_an_event_no_input_holds(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As many rows out as distinct events in, but one of them is not the inputs' (a merge that
    rewrote an event_id): refused before anything is committed or deleted (a reviewer found the
    guard's third check untested)."""
    import pyarrow as pa

    many_small_files(ingest_fn, 4)
    blobs = sorted(b.name for b in archive.list())
    merge = compaction._merged_inputs

    def rewriting(archive: BlobArchive, paths: list[str]) -> Any:
        merged, distinct = merge(archive, paths)
        ids = merged["event_id"].to_pylist()
        ids[0] = "not-an-input"
        return merged.set_column(merged.schema.get_field_index("event_id"), "event_id", pa.array(ids)), distinct

    monkeypatch.setattr(compaction, "_merged_inputs", rewriting)
    with psycopg.connect(db.info.dsn, autocommit=True) as conn, \
            pytest.raises(RuntimeError, match=r"1 event\(s\) no input holds"):
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=1 << 30)
    assert sorted(b.name for b in archive.list()) == blobs
    assert db.execute("SELECT state FROM raw_compactions").fetchall() == [("aborted",)]


def test_archive_keys_find_every_event_sharing_a_sequence_number() -> None:
    import numpy as np

    from txmetrics.core.archive_keys import ArchiveKeys

    keys = ArchiveKeys()
    pids = np.array(["0"] * 4, dtype=object)
    seqs = np.array([7, 7, 7, 8], dtype=np.int64)
    ids = np.array(["a", "b", "c", "d"], dtype=object)
    keys.add((pids, seqs, ids))
    assert keys.contains((pids, seqs, ids)).all()
    assert not keys.contains((pids[:1], seqs[:1], np.array(["z"], dtype=object))).any()


def test_settling_drops_the_output_of_whole_inputs_that_reuse_sequence_numbers(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """Inputs holding several events under one (partition, sequence number), a compaction
    killed after its upload (inputs whole), the database lost: every event of the staged output
    is in the tree, so it is dropped, not published beside its inputs (reviewer: a search that
    stopped at the first event of a shared key published it, every event twice in the tree)."""
    ingest_fn(reused_keys_batch("before", 10))
    ingest_fn(reused_keys_batch("after", 11))
    before = event_keys(archive)
    day = datetime(2026, 3, 5).date()

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        compact_killed_at(conn, archive, day, "after_upload")
        empty_tables(conn)
        report = compaction.settle_staging(conn, archive, [day])
    assert report.published == [] and len(report.dropped) == 1
    assert event_keys(archive) == before



def lost_compaction_in_the_archive_tier(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                        archive: BlobArchive) -> tuple[Any, list[str]]:
    """A day's compaction killed after deleting one input, every blob then tiered to Archive
    (as the lifecycle rules do to a day's files and its staged outputs alike), the database
    lost. Returns the day and the names of its blobs."""
    from txmetrics.adapters.blob import ARCHIVE_TIER

    many_small_files(ingest_fn, 4)
    day = datetime(2026, 3, 5).date()
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        compact_killed_at(conn, archive, day, "after_an_input_deleted")
        for blob in list(archive.list()):
            archive.set_tier(blob.name, ARCHIVE_TIER)
        empty_tables(conn)
    return day, sorted(b.name for b in archive.list())

def test_settling_over_the_archive_tier_touches_nothing_and_names_the_files(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """The lifecycle rules tier a day's files and its staged outputs to Archive alike; settling
    a lost compaction there cannot read them: it leaves everything as it is and reports the
    files to rehydrate, as the rest of a rebuild does (it used to stop on BlobArchived)."""
    day, names = lost_compaction_in_the_archive_tier(ingest_fn, db, archive)
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        report = compaction.settle_staging(conn, archive, [day])
    assert sorted(report.archived) == names and not (report.published or report.dropped or report.inputs_deleted)
    assert sorted(b.name for b in archive.list()) == names


def test_a_serial_rebuild_over_the_archive_tier_names_each_file_once(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        services: LocalServices) -> None:
    """Settling and the rebuild's plan both meet the day's archived files; the report (what
    `--rehydrate` acts on) names each once, staged outputs included (a reviewer counted 7 for 4)."""
    from txmetrics.adapters.postgres import PostgresStore
    from txmetrics.core.catalog import load_catalog
    from txmetrics.rebuild import rebuild
    from txmetrics.settings import BUNDLED_CATALOG

    day, names = lost_compaction_in_the_archive_tier(ingest_fn, db, archive)
    store = PostgresStore(services.database_url)
    try:
        report = rebuild(store=store, archive=archive, catalog=load_catalog(BUNDLED_CATALOG), start=day,
                         end=datetime(2026, 3, 6).date())
    finally:
        store.close()
    assert sorted(report.archived) == names


class _HeldArchive(BlobArchive):
    """Fails uploads of the paths in `fail`; holds uploads of the paths in `hold` (made from
    another thread) until `release`: a slow upload in flight."""

    def __init__(self, base: BlobArchive) -> None:
        super().__init__(base.service, base.container_name)
        self.fail: set[str] = set()
        self.hold: set[str] = set()
        self.holding, self.release = threading.Event(), threading.Event()

    def upload(self, path: str, data: bytes) -> None:
        if path in self.fail:
            raise ConnectionError("storage unavailable")
        if path in self.hold and threading.current_thread() is not threading.main_thread():
            self.holding.set()
            assert self.release.wait(30)
        super().upload(path, data)


@pytest.mark.parametrize("left_behind", [False, True])
def test_an_upload_in_flight_never_brings_back_a_compacted_file(db: psycopg.Connection, archive: BlobArchive,
                                                                services: LocalServices, left_behind: bool) -> None:
    """An audit: the daily timer's flush took a file whose upload was in flight (the batch's
    own, or its flush of a file a failed attempt left behind) as left behind, uploaded and
    marked it; its compaction merged the file and deleted the blob; then the slow upload
    landed and put the superseded file back into the tree, its events twice. A file is
    uploaded only while its manifest row is locked and still pending: the timer leaves it to
    the uploader, compaction leaves it out until it is marked, and every event stays once."""
    from tests.lake_helpers import pipeline
    from txmetrics.core.events import InboundEvent
    from txmetrics.settings import BUNDLED_CATALOG

    def batch(ids: list[str], hour: int, first: int) -> list[InboundEvent]:
        return [InboundEvent(json.dumps({"event_id": e, "transaction_id": "t", "merchant_id": "m", "amount": 1,
                                         "occurred_at": f"2026-03-05T{hour:02d}:00:{i:02d}Z", "currency": "EUR",
                                         "payment_method": "card", "status": "approved"}).encode(), "0", first + i)
                for i, e in enumerate(ids)]

    def path(first: int) -> str:
        return f"raw_events/yyyy=2026/mm=03/dd=05/part-0-seq-{first:020d}-20260305.parquet"

    held = _HeldArchive(archive)
    worker, timer = pipeline(services, held, BUNDLED_CATALOG), pipeline(services, held, BUNDLED_CATALOG)
    worker.process("0", batch(["e0", "e1", "e2"], 1, 0))
    if left_behind:        # committed, its upload failed: the partition's next batch flushes it
        held.fail.add(path(3))
        with pytest.raises(ConnectionError):
            worker.process("0", batch(["f0", "f1", "f2"], 2, 3))
        held.fail.clear()
        slow, last = path(3), batch(["g0", "g1", "g2"], 3, 6)
    else:                  # the batch's own upload is slow
        worker.process("0", batch(["f0", "f1", "f2"], 2, 3))
        slow, last = path(6), batch(["g0", "g1", "g2"], 3, 6)
    held.hold.add(slow)
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: errors.extend(_raised(worker.process, "0", last)))
    thread.start()
    assert held.holding.wait(30)
    assert timer.flush_outbox(None) == 0                 # in flight: left to its uploader
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        assert compact_day(conn, archive, datetime(2026, 3, 5).date()).inputs == 2     # the marked ones only
    held.release.set()
    thread.join(30)
    assert not errors, errors
    keys = [tuple(r[:3]) for r in archive_rows(archive)]
    assert len(keys) == len(set(keys)) == 9
    assert db.execute("SELECT count(*) FROM raw_files WHERE state = 'pending'").fetchone() == (0,)
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:     # merged with the rest the next time
        assert compact_day(conn, archive, datetime(2026, 3, 5).date()).inputs == 2
    assert sorted(tuple(r[:3]) for r in archive_rows(archive)) == sorted(keys)


def _raised(call: Callable[..., Any], *args: Any) -> list[BaseException]:
    try:
        call(*args)
    except BaseException as exc:      # reported by the test's thread
        return [exc]
    return []


def test_output_names_taken_by_another_compaction_s_files_stop_it_before_anything_changes(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: the refusal to publish over a live file came after the commit and the inputs'
    deletion, leaving their events in the staged copy only. Names that the manifest already
    has (another compaction's outputs: a name reused, as after a rebuild before round 12) stop
    the run before its journal, its uploads or its commit."""
    many_small_files(ingest_fn, 4)
    day = datetime(2026, 3, 5).date()
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        ((first, size),) = compact_day(conn, archive, day, target_bytes=1 << 30).outputs
        many_small_files(ingest_fn, 2, partition="1")
        before = sorted(tuple(r[:3]) for r in archive_rows(archive))
        live = db.execute("SELECT id, path, state FROM raw_files ORDER BY id").fetchall()
        db.execute("DELETE FROM raw_compactions")     # as in a rebuilt database: the journal knows no name
        taken = first.split("-")[-2]                   # compacted-<day>-<generation>-<n>.parquet
        monkeypatch.setattr(compaction, "_generation", lambda _: taken)
        with pytest.raises(RuntimeError, match=f"compaction {taken} of 2026-03-05: output name.* taken"):
            compact_day(conn, archive, day, target_bytes=2 * size)     # the big file is no input
    assert sorted(tuple(r[:3]) for r in archive_rows(archive)) == before
    assert db.execute("SELECT id, path, state FROM raw_files ORDER BY id").fetchall() == live
    assert db.execute("SELECT count(*) FROM raw_compactions").fetchone() == (0,)
    assert not [b.name for b in archive.list("_staging/")]


def test_a_day_with_an_input_in_the_archive_tier_is_left_as_it_is_with_the_fix(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """A late event's day, months on, has files the lifecycle rules moved to Archive: compacting
    it stopped with Azure's bare "BlobArchived" (an audit). Now nothing is started or changed,
    and the answer says which files and how to bring them back."""
    from txmetrics.adapters.blob import ARCHIVE_TIER

    many_small_files(ingest_fn, 3)
    day = datetime(2026, 3, 5).date()
    frozen = sorted(b.name for b in archive.list())[1]
    archive.set_tier(frozen, ARCHIVE_TIER)
    blobs = sorted(b.name for b in archive.list())
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        files = conn.execute("SELECT id, path, state FROM raw_files ORDER BY id").fetchall()
        report = compact_day(conn, archive, day, target_bytes=1 << 30)
        assert report.skipped_reason is not None and report.inputs == 0, report
        assert f"1 of 3 small file(s) of {day} are in the archive tier" in report.skipped_reason
        assert frozen in report.skipped_reason and "--rehydrate Standard" in report.skipped_reason
        assert conn.execute("SELECT id, path, state FROM raw_files ORDER BY id").fetchall() == files
        assert conn.execute("SELECT count(*) FROM raw_compactions").fetchone() == (0,)
    assert sorted(b.name for b in archive.list()) == blobs
