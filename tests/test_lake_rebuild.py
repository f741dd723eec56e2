"""Rebuild of the database from the lake, against PostgreSQL and Azurite: ingest a corpus
(one day compacted, some aggregates folded and rolled up), record KPIs and row counts, drop
every table's data, rebuild, compare; then redeliver the corpus through the function and
see nothing change. Also: interrupted and resumed, two at once, retention, compaction
leftovers, and the command line."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from localdev.eventhub import make_batch
from localdev.services import LocalServices
from tests.helpers import archive_rows, compact_killed_at, empty_tables, scalar
from tests.lake_helpers import RANGE, Batch, corpus, folded_aggregates, snapshot
from txmetrics import kpi
from txmetrics.adapters.blob import BlobArchive
from txmetrics.adapters.postgres import PostgresStore
from txmetrics.compaction import compact_day
from txmetrics.core.catalog import load_catalog
from txmetrics.errors import InvalidRequestError
from txmetrics.rebuild import RebuildReport, rebuild, rebuild_in_parallel
from txmetrics.rollup import roll_day
from txmetrics.settings import BUNDLED_CATALOG, Settings
from txmetrics_cli.main import app

DAY1, DAY2 = date(2026, 3, 1), date(2026, 3, 2)
TODAY = date(2026, 3, 10)
KPI_QUERIES: list[dict[str, Any]] = [
    {"metric": "approved", "group_by": ["payment_method"]},
    {"metric": "approved", "group_by": ["merchant_id"], "window": "1h"},
    {"metric": "processing_ms", "group_by": ["payment_method", "status"]},
    {"metric": "processing_ms", "window": "5m"},
    {"metric": "amount", "group_by": ["payment_method"]},
]
COUNTED = ("ingested_events", "dynamic_metrics", "event_dimensions", "aggregate_histograms")


def deliver_corpus(ingest_fn: Callable[[list[Any]], None], batches: list[Batch]) -> None:
    """Through the function entry, as the Functions host calls it."""
    for partition, events in batches:
        ingest_fn(make_batch([e.body for e in events], partition_id=partition,
                             sequence_numbers=[e.sequence_number for e in events],
                             enqueued_times=[e.enqueued_at or datetime(2026, 3, 1, tzinfo=UTC) for e in events]))


def kpis(conn: psycopg.Connection) -> list[list[dict[str, Any]]]:
    start, end = RANGE
    catalog = load_catalog(BUNDLED_CATALOG)
    return [[r.record() for r in kpi.query(conn, start=start, end=end, catalog=catalog, **q)] for q in KPI_QUERIES]


def same_kpis(got: list[list[dict[str, Any]]], expected: list[list[dict[str, Any]]]) -> None:
    """Equal, field by field. Sums (and means) of a compacted day are added in another order
    (per file instead of per batch), so they may differ in the last bits of a double."""
    assert len(got) == len(expected)
    for g_rows, e_rows in zip(got, expected, strict=True):
        assert len(g_rows) == len(e_rows) > 0
        for g, e in zip(g_rows, e_rows, strict=True):
            assert g.keys() == e.keys()
            for k in g:
                if k in ("sum", "mean", "rate"):
                    assert abs(float(g[k]) - float(e[k])) <= 1e-9 * max(1.0, abs(float(e[k]))), (k, g, e)
                else:
                    assert g[k] == e[k], (k, g, e)


def counts(conn: psycopg.Connection) -> dict[str, int]:
    out = {t: scalar(conn, f"SELECT count(*) FROM {t}") for t in COUNTED}
    out["live_files"] = scalar(conn, "SELECT count(*) FROM raw_files WHERE state <> 'superseded'")
    return out


def same_except_sums(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got.keys() == expected.keys()
    for key in got:
        if key != "aggregate_histograms":
            assert got[key] == expected[key], key
    g_aggs, e_aggs = got["aggregate_histograms"], expected["aggregate_histograms"]
    assert len(g_aggs) == len(e_aggs) > 0
    for g, e in zip(g_aggs, e_aggs, strict=True):
        assert g[:5] == e[:5] and g[6:] == e[6:], (g, e)
        exact = g[2] >= datetime(2026, 3, 2, tzinfo=UTC)          # the day not compacted: bit for bit
        assert g[5] == e[5] if exact else abs(float(g[5]) - float(e[5])) <= 1e-9 * max(1.0, abs(float(e[5])))


@pytest.fixture
def original(ingest_fn: Callable[[list[Any]], None], db: psycopg.Connection, archive: BlobArchive,
             services: LocalServices) -> dict[str, Any]:
    """The original database: the corpus delivered (a fold half way), day 1 compacted, then
    the daily maintenance (fold, roll up both days); its KPIs, counts and rows."""
    batches = corpus()
    deliver_corpus(ingest_fn, batches[: len(batches) // 2])
    db.execute("SELECT txm_fold_aggregates()")
    deliver_corpus(ingest_fn, batches[len(batches) // 2:])
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        assert compact_day(conn, archive, DAY1, target_bytes=1 << 30).inputs > 2
        conn.execute("SELECT txm_fold_aggregates()")
        assert roll_day(conn, DAY1) and roll_day(conn, DAY2)
    return {"batches": batches, "kpis": kpis(db), "counts": counts(db), "snapshot": snapshot(db, failed=False),
            "failed": db.execute("SELECT item_key, error_code FROM failed_items ORDER BY 1").fetchall(),
            "blobs": sorted((b.name, b.size) for b in archive.list()), "archive_rows": archive_rows(archive)}


def run(services: LocalServices, archive: BlobArchive, **kwargs: Any) -> RebuildReport:
    store = PostgresStore(services.database_url)
    try:
        return rebuild(store=store, archive=archive, catalog=load_catalog(BUNDLED_CATALOG), start=DAY1,
                       end=DAY2 + timedelta(days=1), today=TODAY, **kwargs)
    finally:
        store.close()


def test_rebuild_restores_kpis_and_rows_and_redelivery_adds_nothing(
        original: dict[str, Any], services: LocalServices, archive: BlobArchive, db: psycopg.Connection,
        ingest_fn: Callable[[list[Any]], None]) -> None:
    empty_tables(db)       # PostgreSQL lost
    assert all(v == 0 for v in counts(db).values())

    report = run(services, archive)
    assert report.files == original["counts"]["live_files"] and report.leftovers == [] and report.archived == []
    assert report.events == original["counts"]["ingested_events"]
    assert report.rolled_up == [DAY1, DAY2]
    same_kpis(kpis(db), original["kpis"])
    assert counts(db) == original["counts"]
    same_except_sums(snapshot(db, failed=False), original["snapshot"])
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (0,)      # cannot come back from the lake

    # redelivery of the whole corpus: nothing added anywhere; the bad events are back in failed_items
    before = snapshot(db, failed=False)
    deliver_corpus(ingest_fn, original["batches"])
    assert snapshot(db, failed=False) == before
    assert sorted((b.name, b.size) for b in archive.list()) == original["blobs"]
    assert archive_rows(archive) == original["archive_rows"]
    assert db.execute("SELECT item_key, error_code FROM failed_items ORDER BY 1").fetchall() == original["failed"]
    same_kpis(kpis(db), original["kpis"])

    again = run(services, archive)              # a second run: every file is in the manifest already
    assert again.files == 0 and sum(d.known_files for d in again.days.values()) == report.files
    assert snapshot(db, failed=False) == before


def test_rebuild_interrupted_then_resumed_and_two_at_once(
        original: dict[str, Any], services: LocalServices, archive: BlobArchive, db: psycopg.Connection) -> None:
    calls: list[str] = []

    def crash(step: str) -> None:
        calls.append(step)
        if len(calls) == 4:
            raise KeyboardInterrupt            # Ctrl-C inside the 4th file's transaction

    empty_tables(db)
    with pytest.raises(KeyboardInterrupt):
        run(services, archive, crash_hook=crash)
    assert db.execute("SELECT count(*) FROM raw_files").fetchone() == (3,)
    resumed = run(services, archive)
    assert resumed.files == original["counts"]["live_files"] - 3 and resumed.rolled_up == [DAY1, DAY2]
    same_except_sums(snapshot(db, failed=False), original["snapshot"])
    same_kpis(kpis(db), original["kpis"])

    empty_tables(db)
    errors: list[BaseException] = []
    reports: list[RebuildReport] = []

    def one() -> None:
        try:
            reports.append(run(services, archive))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert sum(r.files for r in reports) == original["counts"]["live_files"]      # each file restored once
    same_except_sums(snapshot(db, failed=False), original["snapshot"])
    same_kpis(kpis(db), original["kpis"])


def test_rebuild_in_worker_processes(original: dict[str, Any], services: LocalServices, archive: BlobArchive,
                                     db: psycopg.Connection) -> None:
    empty_tables(db)
    settings = Settings(database_url=services.database_url,
                        storage_connection_string=services.storage_connection_string, storage_account_url=None,
                        raw_events_container=archive.container_name, metric_catalog=BUNDLED_CATALOG)
    seen: list[int] = []
    report = rebuild_in_parallel(settings, workers=3, start=DAY1, end=DAY2 + timedelta(days=1), today=TODAY,
                                 progress=lambda s: seen.append(s.files_done))
    assert report.files == original["counts"]["live_files"] == max(seen) and report.rolled_up == [DAY1, DAY2]
    same_except_sums(snapshot(db, failed=False), original["snapshot"])
    same_kpis(kpis(db), original["kpis"])
    with pytest.raises(InvalidRequestError, match="the range is empty"):
        rebuild_in_parallel(settings, workers=2, start=DAY2, end=DAY1)


def test_days_past_retention_get_aggregates_only(
        original: dict[str, Any], services: LocalServices, archive: BlobArchive, db: psycopg.Connection) -> None:
    empty_tables(db)
    for table in ("dynamic_metrics", "ingested_events"):
        db.execute(f"DROP TABLE IF EXISTS {table}_p20260301")
    report = run(services, archive, rows_since=DAY2, ledger_since=DAY2)
    assert report.days[DAY1].mode == "aggregates only (ledger and dynamic_metrics past retention)"
    assert report.days[DAY2].mode == "ledger + rows + aggregates"
    assert report.days[DAY1].rows == 0 and report.days[DAY2].rows > 0
    same_kpis(kpis(db), original["kpis"])          # aggregates of every day
    day2 = datetime(2026, 3, 2, tzinfo=UTC)
    rows = snapshot(db, failed=False)
    assert rows["dynamic_metrics"] == [r for r in original["snapshot"]["dynamic_metrics"] if r[3] >= day2]
    assert rows["ingested_events"] == [r for r in original["snapshot"]["ingested_events"] if r[1] >= day2]
    assert db.execute("SELECT to_regclass('dynamic_metrics_p20260301'), to_regclass('ingested_events_p20260301')"
                      ).fetchone() == (None, None)           # no partition made for a day past retention
    # and a redelivery of the first day's events cannot be counted again: refused, as after retention
    assert db.execute("SELECT kept_since FROM retention_horizons WHERE table_name = 'ingested_events'"
                      ).fetchone() == (DAY2,)


def test_leftover_compaction_inputs_are_not_counted_twice(
        ingest_fn: Callable[[list[Any]], None], services: LocalServices, archive: BlobArchive,
        db: psycopg.Connection) -> None:
    deliver_corpus(ingest_fn, corpus(n=600))
    kill_compaction_at(services, archive, "after_commit")      # before deleting the inputs
    inputs = [p for (p,) in db.execute("SELECT path FROM raw_files WHERE state = 'superseded' ORDER BY path")]
    assert len(inputs) > 2 and all(archive.has(p) for p in inputs)
    # the tree as a compaction killed there left it before outputs were staged (an older
    # archive): the compacted file beside its inputs
    for blob in list(archive.list("_staging/compaction/")):
        archive.upload(blob.name.removeprefix("_staging/compaction/"), archive.download(blob.name))
        archive.delete(blob.name)
    expected = kpis(db)
    ledger = db.execute("SELECT count(*) FROM ingested_events").fetchone()
    empty_tables(db)
    report = run(services, archive)
    assert sorted(report.leftovers) == inputs
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == ledger
    same_kpis(kpis(db), expected)


def kill_compaction_at(services: LocalServices, archive: BlobArchive, step: str) -> None:
    """Compact DAY2 into one file and kill the run at `step`."""
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        compact_killed_at(conn, archive, DAY2, step)


@pytest.mark.parametrize(("step", "workers"), [("after_upload", 1), ("after_commit", 1),
                                                ("after_an_input_deleted", 1), ("after_an_input_deleted", 3),
                                                ("after_inputs_deleted", 1), ("after_inputs_deleted", 3)])
def test_staged_outputs_are_settled_after_the_database_is_lost(
        step: str, workers: int, ingest_fn: Callable[[list[Any]], None], services: LocalServices,
        archive: BlobArchive, db: psycopg.Connection) -> None:
    """A compaction killed with outputs in staging (outside raw_events/) and no journal left:
    outputs whose events are all in the tree (inputs whole: killed before their deletion)
    are dropped; outputs holding events no other file has (killed after the deletion began)
    finish the run: its surviving inputs, every event of which the outputs hold, are deleted
    (killed after the first of them: the rest had been left beside the published output, the
    tree holding their events twice), then the outputs move into the tree. Either way the
    tree holds every event once, the manifest names exactly its files, nothing is left to
    delete by hand."""
    deliver_corpus(ingest_fn, corpus(n=600))
    events = archive_rows(archive)
    kill_compaction_at(services, archive, step)
    assert [b.name for b in archive.list("_staging/")]
    expected = kpis(db)
    ledger = db.execute("SELECT count(*) FROM ingested_events").fetchone()
    empty_tables(db)
    if workers == 1:
        report = run(services, archive)
    else:     # settled once before the workers plan: none may plan while another publishes
        settings = Settings(database_url=services.database_url,
                            storage_connection_string=services.storage_connection_string, storage_account_url=None,
                            raw_events_container=archive.container_name, metric_catalog=BUNDLED_CATALOG)
        report = rebuild_in_parallel(settings, workers=workers, start=DAY1, end=DAY2 + timedelta(days=1),
                                     today=TODAY)
    assert report.leftovers == [] and not [b.name for b in archive.list("_staging/")]
    assert archive_rows(archive) == events               # every event once in the tree: none lost, none twice
    assert bool(report.staging.inputs_deleted) == (step == "after_an_input_deleted")
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == ledger
    same_kpis(kpis(db), expected)
    live = {p for (p,) in db.execute("SELECT path FROM raw_files WHERE state = 'uploaded'")}
    assert live == {b.name for b in archive.list()}


def test_a_staged_output_of_a_day_past_retention_is_not_published_back(
        ingest_fn: Callable[[list[Any]], None], services: LocalServices, archive: BlobArchive,
        db: psycopg.Connection) -> None:
    """The raw archive's lifecycle rule deletes a day's files at their age; a staged output
    of that day (written later, so deleted later) then looks like the only copy of its
    events, and would be published back. Past the raw retention (`raw_since`), it is left in
    staging for its own lifecycle rule, and the tree stays as retention left it."""
    deliver_corpus(ingest_fn, corpus(n=600))
    kill_compaction_at(services, archive, "after_inputs_deleted")       # published, within retention
    staged = sorted(b.name for b in archive.list("_staging/"))
    tree = sorted(b.name for b in archive.list("raw_events/"))
    empty_tables(db)
    report = run(services, archive, raw_since=DAY2 + timedelta(days=1))
    assert report.staging.past_retention == staged and report.staging.published == []
    assert sorted(b.name for b in archive.list("_staging/")) == staged
    assert sorted(b.name for b in archive.list("raw_events/")) == tree


def test_the_rebuild_command(original: dict[str, Any], services: LocalServices, archive: BlobArchive,
                             db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_tables(db)
    for k, v in {"DATABASE_URL": services.database_url,
                 "AZURE_STORAGE_CONNECTION_STRING": services.storage_connection_string,
                 "RAW_EVENTS_CONTAINER": archive.container_name,
                 "TXMETRICS_RETENTION": json.dumps({"dynamic_metrics": 35, "ingested_events": 35})}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("METRIC_CATALOG", raising=False)
    result = CliRunner().invoke(app, ["rebuild", "--start", "2026-03-01", "--end", "2026-03-03", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    first_kept = datetime.now(UTC).date() - timedelta(days=35)
    expected_mode = ("ledger + rows + aggregates" if first_kept <= DAY1
                     else "aggregates only (ledger and dynamic_metrics past retention)")
    assert [(r["day"], r["mode"]) for r in rows] == [("2026-03-01", expected_mode), ("2026-03-02", expected_mode)]
    assert sum(r["files"] for r in rows) == original["counts"]["live_files"]
    assert "retention: TXMETRICS_RETENTION (rows from" in result.stderr
    assert "failed_items cannot come back from the lake" in result.stderr
    same_kpis(kpis(db), original["kpis"])
    assert folded_aggregates(db)            # folded: nothing pending after a rebuild
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (0,)

    bad = CliRunner().invoke(app, ["rebuild", "--start", "2026-03-03", "--end", "2026-03-01"])
    assert bad.exit_code == 2 and "the range is empty" in bad.stderr



def test_a_later_file_reusing_sequence_numbers_is_restored_beside_the_compacted_file(
        ingest_fn: Callable[[list[Any]], None], services: LocalServices, archive: BlobArchive,
        db: psycopg.Connection) -> None:
    """After a day's compaction, a later file of the same day re-uses (partition, sequence
    number)s of the compacted file with distinct events (a hub recreated, or failed over to
    another namespace): it is not a compaction leftover, and a rebuild restores its events
    beside the compacted file's; the archive and the ledger agree."""
    def batch(prefix: str, hour: int, first: int) -> list[Any]:
        bodies = [{"event_id": f"{prefix}-{i}", "transaction_id": "t", "merchant_id": "m",
                   "occurred_at": f"2026-03-01T{hour:02d}:00:{i:02d}Z", "amount": "3.00", "currency": "EUR",
                   "payment_method": "card", "status": "approved", "processing_ms": 10 * i} for i in range(5)]
        return make_batch(bodies, partition_id="0", sequence_numbers=list(range(first, first + 5)))

    ingest_fn(batch("a", 0, 0))
    ingest_fn(batch("b", 1, 5))
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        assert compact_day(conn, archive, DAY1, target_bytes=1 << 30).rows == 10
    ingest_fn(batch("recreated", 2, 5))        # 5..9 again, distinct events
    ingest_fn(batch("recreated-late", 3, 0))   # 0..4 again
    assert len(archive_rows(archive)) == 20
    expected = kpis(db)
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (20,)
    empty_tables(db)
    report = run(services, archive)
    assert report.leftovers == []
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (20,)
    assert db.execute("SELECT sum(row_count) FROM raw_files WHERE state = 'uploaded'").fetchone() == (20,)
    same_kpis(kpis(db), expected)


def test_the_raw_archives_first_whole_day_allows_for_the_blob_rules_strict_age() -> None:
    """The blob rule deletes a file once its age exceeds the days: on today - days, the files
    of that day written early are gone already, so the first day a rebuild may publish a
    staged output into is the day after (found by a reviewer, with the plan's due_action)."""
    from txmetrics.rebuild import retention_since

    today = date(2026, 11, 30)
    rows, ledger, raw = retention_since({"dynamic_metrics": 14, "ingested_events": 14, "raw_files": 270}, today)
    assert (rows, ledger) == (date(2026, 11, 16), date(2026, 11, 16))
    assert raw == date(2026, 3, 6) and today - timedelta(days=270) == date(2026, 3, 5)
    assert retention_since({}, today) == (None, None, None)


@pytest.mark.parametrize("old_output_is_an_input", [True, False])
def test_a_compaction_after_a_rebuild_never_takes_the_name_of_one_before(
        ingest_fn: Callable[[list[Any]], None], services: LocalServices, archive: BlobArchive,
        db: psycopg.Connection, old_output_is_an_input: bool) -> None:
    """An audit: a compaction was named by a hash of its input ids, and ids restart at 1 in a
    rebuilt database. The first compaction after the rebuild whose inputs got the ids of one
    before the loss took its name: when the old output was no input (production outputs are
    large), it was published over the old compacted file, the day's only copy of 120 events;
    else the day's compaction failed on every run (and stopped the maintenance timer's later
    days). The name now hashes the inputs' paths too; publishing over a live file is refused."""
    day = date(2026, 3, 5)

    def send(ids: list[str], hour: int, partition: str, first: int) -> None:
        ingest_fn(make_batch([json.dumps({"event_id": e, "transaction_id": "t", "merchant_id": "m", "amount": 1,
                                          "occurred_at": f"2026-03-05T{hour:02d}:{i // 60:02d}:{i % 60:02d}Z",
                                          "currency": "EUR", "payment_method": "card", "status": "approved"})
                              for i, e in enumerate(ids)], partition_id=partition, first_sequence=first))

    def restart_file_ids() -> None:        # a fresh deployment, or a database rebuilt from nothing
        db.execute("ALTER SEQUENCE raw_files_id_seq RESTART")

    restart_file_ids()
    if not old_output_is_an_input:     # a file of another day first: the day's inputs are ids 2 and 3
        ingest_fn(make_batch([json.dumps({"event_id": "d0", "transaction_id": "t", "merchant_id": "m", "amount": 1,
                                          "occurred_at": "2026-03-04T01:00:00Z", "currency": "EUR",
                                          "payment_method": "card", "status": "approved"})], partition_id="2"))
    send([f"a{i}" for i in range(60)], 1, "0", 0)
    send([f"b{i}" for i in range(60)], 2, "0", 60)
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        assert compact_day(conn, archive, day, target_bytes=1 << 30).inputs == 2
    late = 1 if old_output_is_an_input else 2
    for i in range(late):                                         # late files of the day
        send([f"late{i}"], 3 + i, "1", i)
    before = sorted(tuple(r[:3]) for r in archive_rows(archive) if r[2] != "d0")
    assert len(before) == 120 + late
    empty_tables(db)                                              # the database is lost
    restart_file_ids()
    store = PostgresStore(services.database_url)
    try:
        rebuild(store=store, archive=archive, catalog=load_catalog(BUNDLED_CATALOG), start=day,
                end=day + timedelta(days=1), today=TODAY)
    finally:
        store.close()
    # the day's compacted file is id 1, the late ones 2 (and 3): the ids of the first compaction's inputs
    (big,) = db.execute("SELECT byte_size FROM raw_files WHERE path LIKE %s", ("%compacted%",)).fetchone()
    target = 1 << 30 if old_output_is_an_input else 2 * big
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        report = compact_day(conn, archive, day, target_bytes=target)
    assert report.inputs == 2
    assert sorted(tuple(r[:3]) for r in archive_rows(archive) if r[2] != "d0") == before
    assert db.execute("SELECT count(*) FROM raw_compactions WHERE state <> 'done'").fetchone() == (0,)
    assert not [b.name for b in archive.list("_staging/")]


@pytest.mark.parametrize(("setting", "named"), [
    ('{"dynamic_metrics": -1, "ingested_events": 14}', "dynamic_metrics must be a whole number of days >= 1"),
    ('{"dynamic_metrics": true, "ingested_events": 14}', "dynamic_metrics must be a whole number of days >= 1"),
    ('{"dynamic_metric": 14, "ingested_events": 14}', "'dynamic_metric' is not a table with a retention"),
    ('{"dynamic_metrics": 14, "ingested_events": 7}', "ingested_events (7 days) is shorter than dynamic_metrics"),
])
def test_a_wrong_retention_setting_stops_the_rebuild_before_it_restores_anything(
        ingest_fn: Callable[[list[Any]], None], services: LocalServices, archive: BlobArchive,
        db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, setting: str, named: str) -> None:
    """The rebuild reads TXMETRICS_RETENTION when no --stack is given. The daily retention job
    refuses a wrong value with the key and the fix (docs/retention.md); the rebuild took it as
    it came: -1 restored dynamic_metrics from tomorrow on (no day's rows, silently), `true` kept
    1 day, a misspelt table was ignored, a ledger shorter than the rows was taken. Each file is
    entered in the manifest as it is restored, so a second run with the right value skips it:
    the rows it did not restore were not restorable without emptying the database again."""
    deliver_corpus(ingest_fn, corpus(n=200))
    empty_tables(db)
    for k, v in {"DATABASE_URL": services.database_url,
                 "AZURE_STORAGE_CONNECTION_STRING": services.storage_connection_string,
                 "RAW_EVENTS_CONTAINER": archive.container_name, "TXMETRICS_RETENTION": setting}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("METRIC_CATALOG", raising=False)
    result = CliRunner().invoke(app, ["rebuild", "--start", "2026-03-01", "--end", "2026-03-03", "--workers", "1"])
    assert result.exit_code == 2, result.output
    assert "TXMETRICS_RETENTION" in result.stderr and named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert scalar(db, "SELECT count(*) FROM raw_files") == 0
    assert scalar(db, "SELECT count(*) FROM retention_horizons") == 0
