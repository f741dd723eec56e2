"""Crash and concurrency interleavings between the jobs that share the database and the blob
container (an independent audit): compaction recovery after a database restored from a
backup taken mid-compaction, and others."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any

import psycopg
import pytest

from localdev.eventhub import make_batch
from tests.helpers import archive_rows
from txmetrics.adapters.blob import BlobArchive
from txmetrics.compaction import compact_day

DAY = date(2026, 3, 5)


def small_files(ingest_fn: Callable[..., None], n: int, partition: str = "0", first: int = 0) -> None:
    for b in range(n):
        bodies = [json.dumps({"event_id": f"a-{partition}-{first + b}-{i}", "transaction_id": "t", "merchant_id": "m",
                              "occurred_at": f"2026-03-05T{b % 24:02d}:{b % 60:02d}:{i:02d}Z", "amount": 1.5,
                              "currency": "EUR", "payment_method": "card", "status": "approved",
                              "attributes": {"note": uuid.uuid4().hex}}) for i in range(5)]
        ingest_fn(make_batch(bodies, partition_id=partition, first_sequence=(first + b) * 5))


def _backup(db: psycopg.Connection) -> None:
    """A backup of the manifest and the journal (what a point-in-time restore brings back)."""
    db.execute("CREATE TEMP TABLE bak_raw_files AS SELECT * FROM raw_files")
    db.execute("CREATE TEMP TABLE bak_raw_compactions AS SELECT * FROM raw_compactions")


def _restore(db: psycopg.Connection) -> None:
    db.execute("DELETE FROM raw_file_outbox")
    db.execute("DELETE FROM raw_compactions")
    db.execute("DELETE FROM raw_files")
    db.execute("INSERT INTO raw_files SELECT * FROM bak_raw_files")
    db.execute("INSERT INTO raw_compactions SELECT * FROM bak_raw_compactions")


@pytest.mark.parametrize(("backup_at", "then"), [("before_commit", "finished"),
                                                 ("before_commit", "killed_after_an_input_deleted"),
                                                 ("after_commit", "finished")])
def test_a_compaction_the_restored_database_forgot_is_finished_not_undone(
        backup_at: str, then: str, ingest_fn: Callable[..., None], db: psycopg.Connection,
        archive: BlobArchive) -> None:
    """The database is restored from a backup taken during a compaction ('started': outputs
    staged, not committed; or 'committed'); in the real timeline the run went on: it deleted
    its inputs and published its output (finished), or was killed after deleting one input.
    The next compaction must neither delete the outputs (the inputs are partly or wholly
    gone: the outputs hold the only copy of those events; it deleted all 30 events) nor fail
    for ever on a staged copy that was published meanwhile; afterwards the manifest's live
    files and the tree hold every event once."""
    small_files(ingest_fn, 6)
    before = archive_rows(archive)
    assert len(before) == 30

    def hook(step: str) -> None:
        if step == backup_at:
            _backup(db)
        if then == "killed_after_an_input_deleted" and step == "after_an_input_deleted":
            raise RuntimeError("killed")

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        if then == "finished":
            compact_day(conn, archive, DAY, target_bytes=1 << 30, crash_hook=hook)
        else:
            with pytest.raises(RuntimeError, match="killed"):
                compact_day(conn, archive, DAY, target_bytes=1 << 30, crash_hook=hook)
        _restore(db)
        assert db.execute("SELECT state FROM raw_compactions").fetchall() == \
            [("started" if backup_at == "before_commit" else "committed",)]
        try:
            compact_day(conn, archive, DAY, target_bytes=1 << 30)
        finally:
            staged = [r for b in archive.list("_staging/") for r in _rows(archive, b.name)]
            lost = set(before) - set(archive_rows(archive)) - set(staged)
            assert not lost, f"{len(lost)} event(s) lost from the archive"
    assert archive_rows(archive) == before                     # each event once in the tree
    assert not list(archive.list("_staging/"))
    live = [r for (p,) in db.execute("SELECT path FROM raw_files WHERE state IN ('uploaded', 'pending')")
            for r in _rows(archive, p)]
    assert sorted(live) == before                              # the manifest's live files: each event once
    assert db.execute("SELECT state FROM raw_compactions").fetchall() == [("done",)]


def _rows(archive: BlobArchive, name: str) -> list[tuple[Any, ...]]:
    from txmetrics.adapters import parquet

    t = parquet.decode(archive.download(name))
    return list(zip(t["partition_id"].to_pylist(), t["sequence_number"].to_pylist(), t["event_id"].to_pylist(),
                    t["payload"].to_pylist(), strict=True))


def test_a_compaction_between_a_backfill_s_plan_and_its_reads_is_passed_over(
        services: Any, db: psycopg.Connection, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/lake.md: "Compaction meanwhile: a file superseded under the backfill is skipped,
    and the compacted output comes up in the next pass". The maintenance timer compacts the
    day after the backfill planned its files and before it read them: the planned inputs'
    blobs are deleted. The backfill must carry on (and then do the output), not fail on a
    file that is gone."""
    from datetime import UTC, datetime

    from tests.lake_helpers import archive_for, corpus, ingest, metric_counts, pipeline, write_catalogs
    from tests.test_lake_backfill import reference
    from txmetrics.adapters import manifest
    from txmetrics.adapters.postgres import PostgresStore
    from txmetrics.backfill import backfill
    from txmetrics.core.catalog import load_catalog

    old, new = write_catalogs(tmp_path)
    batches = corpus(n=400)
    ref = reference(services, new, "audit-400", batches)
    archive = archive_for(services)
    ingest(pipeline(services, archive, old), batches)
    planned_once: list[int] = []
    real = manifest.files_lacking_metric

    def plan_then_compact(conn: psycopg.Connection, **kwargs: Any) -> Any:
        files = real(conn, **kwargs)
        if not planned_once:
            planned_once.append(len(files))
            with psycopg.connect(services.database_url, autocommit=True) as other:
                assert compact_day(other, archive, date(2026, 3, 1), target_bytes=1 << 30).inputs > 1
        return files

    monkeypatch.setattr(manifest, "files_lacking_metric", plan_then_compact)
    store = PostgresStore(services.database_url)
    try:
        backfill(store=store, archive=archive, catalog=load_catalog(new), metric="risk_score",
                 start=datetime(2026, 3, 1, tzinfo=UTC), end=datetime(2026, 3, 3, tzinfo=UTC))
    finally:
        store.close()
    assert metric_counts(db) == ref["counts"]
    assert db.execute("SELECT count(*) FROM raw_files WHERE state <> 'superseded' AND NOT 'risk_score' = ANY(metrics)"
                      ).fetchone() == (0,)


def waiting(db: psycopg.Connection, query: str) -> None:
    """Until a session running `query` waits for a lock."""
    import time

    for _ in range(200):
        if db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s "
                      "AND query NOT LIKE '%%pg_stat_activity%%'", (f"%{query}%",)).fetchone()[0]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{query} never waited")


def _event(event_id: str, at: str) -> str:
    return json.dumps({"event_id": event_id, "transaction_id": "t", "merchant_id": "m", "occurred_at": at,
                       "amount": 2.5, "currency": "EUR", "payment_method": "card", "status": "approved"})


def test_a_day_s_first_rollup_beside_a_fold_in_flight_is_not_marked_fresh_without_its_events(
        ingest_fn: Callable[..., None], db: psycopg.Connection) -> None:
    """The fold timer (every minute) folds a late event of yesterday while the daily
    maintenance rolls yesterday up for the first time (no aggregate_rollups row yet). The
    fold's statement took its snapshot before the rollup's row existed, so its 'mark the
    rollups of these days stale' finds no row to bump; the rollup read the 5-minute rows
    before the fold committed. The rollup must not end up fresh without the late event:
    KPIs read fresh rollups instead of the 5-minute rows, for good."""
    import threading

    from txmetrics.rollup import roll_day

    ingest_fn(make_batch([_event("r-1", "2026-03-05T10:01:00Z")], partition_id="0", first_sequence=0))
    db.execute("SELECT txm_fold_aggregates()")
    ingest_fn(make_batch([_event("r-2", "2026-03-05T10:02:00Z")], partition_id="0", first_sequence=1))  # late
    errors: list[BaseException] = []
    with psycopg.connect(db.info.dsn) as holder:            # holds the 10:00 window's rows: the fold waits
        holder.execute("SELECT 1 FROM aggregate_histograms WHERE window_seconds = 300 "
                       "AND window_start = '2026-03-05T10:00:00Z' FOR UPDATE")

        def fold() -> None:
            try:
                with psycopg.connect(db.info.dsn, autocommit=True) as c:
                    c.execute("SELECT txm_fold_aggregates()")
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=fold)
        thread.start()
        waiting(db, "txm_fold_aggregates")

        def roll() -> None:                                  # the maintenance's first rollup of the day
            try:
                with psycopg.connect(db.info.dsn, autocommit=True) as c:
                    roll_day(c, DAY)
            except BaseException as exc:  # reported below
                errors.append(exc)

        rolling = threading.Thread(target=roll)
        rolling.start()
        for _ in range(200):                                 # done, or waiting for the fold (a fix may)
            rolling.join(timeout=0.05)
            if not rolling.is_alive() or db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%%advisory%%' AND query NOT LIKE '%%pg_stat_activity%%'").fetchone()[0]:
                break
        holder.rollback()                                    # the fold goes on
    thread.join(timeout=60)
    rolling.join(timeout=60)
    assert not errors and not thread.is_alive() and not rolling.is_alive()
    five_minute = db.execute("SELECT sum(count) FROM aggregate_histograms WHERE window_seconds = 300 "
                             "AND metric_name = 'approved' AND dimensions = '{}'").fetchone()[0]
    daily, stale = db.execute(
        "SELECT h.count, r.stale FROM aggregate_histograms h JOIN aggregate_rollups r ON r.day = %s "
        "WHERE h.window_seconds = 86400 AND h.metric_name = 'approved' AND h.dimensions = '{}'", (DAY,)).fetchone()
    assert five_minute == 2
    assert daily == 2 or stale, f"the day's rollup counts {daily} of 2 events and is marked fresh"


@pytest.mark.parametrize("round_", range(3))
def test_two_replays_of_an_item_and_the_producer_s_fixed_resend_at_once_store_it_once(
        round_: int, deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        services: Any) -> None:
    """`txmetrics failed replay` run twice at once (two operators) while the producer sends the
    fixed event again on another partition: the event once in the ledger, dynamic_metrics, the
    aggregates and the tree; the failed item once."""
    import threading

    from txmetrics import replay
    from txmetrics.adapters.postgres import PostgresStore
    from txmetrics.core.catalog import load_catalog
    from txmetrics.pipeline import Pipeline
    from txmetrics.settings import BUNDLED_CATALOG

    bad = json.loads(_event("fix-me", "2026-03-05T11:00:00Z"))
    bad["amount"] = "twelve"
    deliver([json.dumps(bad)], partition_id="0", first_sequence=0)
    (item_id,) = db.execute("SELECT id FROM failed_items").fetchone()
    fixed = _event("fix-me", "2026-03-05T11:00:00Z")
    replay.fix(db, item_id, fixed)
    catalog = load_catalog(BUNDLED_CATALOG)
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def replayer() -> None:
        store = PostgresStore(services.database_url)
        try:
            with psycopg.connect(services.database_url, autocommit=True) as conn:
                start.wait()
                replay.replay(conn, Pipeline(store, archive, catalog), item_ids=[item_id])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            store.close()

    def producer() -> None:
        try:
            start.wait()
            deliver([fixed], partition_id="3", first_sequence=77)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replayer), threading.Thread(target=replayer), threading.Thread(target=producer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    db.execute("SELECT txm_fold_aggregates()")
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (1,)
    assert db.execute("SELECT metric_name, count(*) FROM dynamic_metrics GROUP BY 1 HAVING count(*) <> 1"
                      ).fetchall() == []
    assert db.execute("SELECT count FROM aggregate_histograms WHERE metric_name = 'approved' AND dimensions = '{}'"
                      ).fetchall() == [(1,)]
    assert [r[2] for r in archive_rows(archive)] == ["fix-me"]
    assert db.execute("SELECT count(*), bool_and(replayed) FROM failed_items").fetchone() == (1, True)


def test_two_overlapping_maintenance_runs_beside_late_events_and_redeliveries_keep_every_event_once(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The daily maintenance (flush, fold, rollups, compaction) twice at once (a singleton lease
    that expired during a long run), the minute fold and the retention job, while late events
    of the day being compacted arrive on two partitions, some delivered twice. Afterwards: each
    event once in the tree, in the ledger and in dynamic_metrics; the aggregates after a fold
    equal a recomputation from dynamic_metrics; a fresh daily rollup equals its 5-minute rows."""
    import threading
    from datetime import UTC, datetime, timedelta

    from azure.functions.timer import TimerRequest

    from localdev.run import load_function
    from tests.aggregate_check import recompute_and_compare
    from txmetrics.core.catalog import load_catalog
    from txmetrics.settings import BUNDLED_CATALOG

    monkeypatch.setenv("TXMETRICS_RETENTION", json.dumps({"dynamic_metrics": 14, "ingested_events": 14}))
    day = datetime.now(UTC).date() - timedelta(days=2)

    def batch(partition: str, b: int) -> list[Any]:
        bodies = [_event(f"m-{partition}-{b}-{i}", f"{day}T{b % 24:02d}:{(7 * i) % 60:02d}:00Z") for i in range(6)]
        return make_batch(bodies, partition_id=partition, first_sequence=b * 6)

    for b in range(20):
        ingest_fn(batch("0", b))
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported below
                errors.append(exc)
        return threading.Thread(target=run)

    def late(partition: str) -> Callable[[], None]:
        def send() -> None:
            for b in range(15):
                ingest_fn(batch(partition, b))
                if b % 4 == 0:
                    ingest_fn(batch(partition, b))          # redelivered
        return send

    def maintenance() -> None:
        for _ in range(3):
            load_function("maintenance")(TimerRequest())

    def fold_and_retention() -> None:
        for _ in range(3):
            load_function("fold_aggregates")(TimerRequest())
            load_function("retention")(TimerRequest())

    threads = [guarded(late("1")), guarded(late("2")), guarded(maintenance), guarded(maintenance),
               guarded(fold_and_retention)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    load_function("maintenance")(TimerRequest())
    ids = [r[2] for r in archive_rows(archive)]
    assert len(ids) == len(set(ids)) == 20 * 6 + 2 * 15 * 6
    assert not list(archive.list("_staging/"))
    assert db.execute("SELECT count(*) FROM raw_compactions WHERE state = 'done'").fetchone()[0] >= 1
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (len(ids),)
    assert db.execute("SELECT count(*) FROM (SELECT event_id, metric_name FROM dynamic_metrics GROUP BY 1, 2 "
                      "HAVING count(*) > 1) d").fetchone() == (0,)
    assert recompute_and_compare(db, load_catalog(BUNDLED_CATALOG)) > 0
    fresh = db.execute("SELECT count(*) FROM aggregate_rollups WHERE day = %s AND NOT stale", (day,)).fetchone()[0]
    if fresh:
        daily, five = db.execute(
            "SELECT (SELECT count FROM aggregate_histograms WHERE window_seconds = 86400 AND metric_name = 'approved' "
            "AND dimensions = '{}'), (SELECT sum(count) FROM aggregate_histograms WHERE window_seconds = 300 "
            "AND metric_name = 'approved' AND dimensions = '{}')").fetchone()
        assert daily == five


def killed_before_commit_then_inputs_deleted(ingest_fn: Callable[..., None], conn: psycopg.Connection,
                                             archive: BlobArchive) -> None:
    """A compaction of DAY killed before its commit ('started', outputs staged), then the raw
    lifecycle rule deleting the day's input files (their age)."""
    small_files(ingest_fn, 4)

    def killed(step: str) -> None:
        if step == "before_commit":
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        compact_day(conn, archive, DAY, target_bytes=1 << 30, crash_hook=killed)
    assert list(archive.list("_staging/"))
    for blob in list(archive.list("raw_events/")):
        archive.delete(blob.name)


def test_recovery_never_republishes_a_started_run_of_a_day_past_raw_retention(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """A run killed before its commit leaves 'started' and its staged outputs; the raw
    lifecycle rule then deletes the day's input files (their age). Its inputs are gone, but
    not because a restored database forgot a commit: a rebuild past the raw retention
    (`settle_staging(raw_since=...)`) must not publish the outputs back into the tree, which
    would bring back events retention removed (a review)."""
    from datetime import timedelta

    from txmetrics.compaction import settle_staging

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        killed_before_commit_then_inputs_deleted(ingest_fn, conn, archive)
        settle_staging(conn, archive, [DAY], raw_since=DAY + timedelta(days=1))
        assert conn.execute("SELECT state FROM raw_compactions").fetchall() == [("aborted",)]
    assert not list(archive.list("raw_events/")), "events past retention published back into the tree"


def test_the_timer_never_republishes_a_started_run_whose_inputs_retention_deleted(
        ingest_fn: Callable[..., None], db: psycopg.Connection, archive: BlobArchive) -> None:
    """As above, but the next to see the 'started' run is the daily timer (or `txmetrics
    compact`), not a rebuild: days_to_compact lists every day with a started run, whatever its
    age. Inputs gone from the manifest as well as from the tree were deleted by retention, not
    forgotten by a restore (a restored database lists them): the run is undone, where it was
    published back, or failed on every run with "metric lists differ" (a review). With the
    rows still listed, recovery takes the run for a forgotten commit: the timer recovers a
    started run within a day, and a point-in-time restore reaches back 35 days at most, far
    below any raw retention a policy may set (docs/decisions.md)."""
    from datetime import timedelta

    from txmetrics.compaction import days_to_compact

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        killed_before_commit_then_inputs_deleted(ingest_fn, conn, archive)
        # the raw_files retention has run too (rows older than the blob rule's age)
        conn.execute("DELETE FROM raw_files WHERE state <> 'pending' AND path NOT LIKE '_staging/%'")
        assert DAY in days_to_compact(conn, DAY + timedelta(days=400))   # the timer, a year on, still picks it
        compact_day(conn, archive, DAY)      # neither republished nor failing day after day
        assert conn.execute("SELECT state FROM raw_compactions").fetchall() == [("aborted",)]
    assert not list(archive.list("raw_events/")), "events past retention published back into the tree"
