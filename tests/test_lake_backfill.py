"""Backfill of a metric added to the catalog after ingest, against PostgreSQL and Azurite:
what it writes equals, row for row and histogram for histogram, what ingest would have
written with the metric in the catalog; twice, beside live late events (from functions on
the new and on the old catalog), killed and resumed, it stays exactly once; days past
dynamic_metrics retention get aggregates only; archived files are listed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from localdev.services import LocalServices
from tests.helpers import ROOT, empty_tables
from tests.lake_helpers import (
    RANGE,
    Batch,
    archive_for,
    corpus,
    folded_aggregates,
    ingest,
    late_batches,
    metric_counts,
    pipeline,
    snapshot,
    write_catalogs,
)
from txmetrics.adapters.blob import BlobArchive
from txmetrics.adapters.postgres import PostgresStore
from txmetrics.backfill import AGGREGATES_ONLY, BackfillReport, backfill
from txmetrics.compaction import compact_day
from txmetrics.core.catalog import load_catalog
from txmetrics.errors import InvalidRequestError
from txmetrics_cli.main import app

START, END = RANGE


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_catalogs(tmp_path_factory.mktemp("catalogs"))


_REFERENCES: dict[str, dict[str, Any]] = {}


def reference(services: LocalServices, new_catalog: Path, name: str, batches: list[Batch]) -> dict[str, Any]:
    """What ingest writes with risk_score in the catalog from the start (computed once per
    corpus; empties the tables, so call it before the test's own ingest)."""
    if name not in _REFERENCES:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            empty_tables(conn)
            ingest(pipeline(services, archive_for(services), new_catalog), batches)
            _REFERENCES[name] = {"snapshot": snapshot(conn), "folded": folded_aggregates(conn),
                                 "counts": metric_counts(conn)}
            empty_tables(conn)
    return _REFERENCES[name]


@pytest.fixture
def lake(services: LocalServices, db: psycopg.Connection) -> Iterator[dict[str, Any]]:
    archive = archive_for(services)
    store = PostgresStore(services.database_url)
    yield {"archive": archive, "store": store}
    store.close()


def ingested_without_the_metric(services: LocalServices, catalogs: tuple[Path, Path],
                                lake: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """corpus() ingested into the test's lake on the old catalog (no risk_score); returns the
    new catalog and the reference: the same corpus ingested with risk_score from the start."""
    old, new = catalogs
    batches = corpus()
    ref = reference(services, new, "corpus", batches)        # first: it empties the tables
    ingest(pipeline(services, lake["archive"], old), batches)
    return new, ref


def run(lake: dict[str, Any], catalog: Path, **kwargs: Any) -> BackfillReport:
    return backfill(store=lake["store"], archive=lake["archive"], catalog=load_catalog(catalog), metric="risk_score",
                    start=START, end=END, **kwargs)


def cli_env(monkeypatch: pytest.MonkeyPatch, services: LocalServices, archive: BlobArchive, catalog: Path) -> None:
    """The settings `txmetrics` reads, pointing at the test's services, container and catalog."""
    for k, v in {"DATABASE_URL": services.database_url,
                 "AZURE_STORAGE_CONNECTION_STRING": services.storage_connection_string,
                 "RAW_EVENTS_CONTAINER": archive.container_name, "METRIC_CATALOG": str(catalog)}.items():
        monkeypatch.setenv(k, v)


def backfill_thread(services: LocalServices, archive: BlobArchive, catalog: Path, reports: list[BackfillReport],
                    errors: list[BaseException]) -> threading.Thread:
    """A backfill of risk_score on its own connection, in a thread (not started)."""
    def target() -> None:
        store = PostgresStore(services.database_url)
        try:
            reports.append(backfill(store=store, archive=archive, catalog=load_catalog(catalog), metric="risk_score",
                                    start=START, end=END))
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            store.close()

    return threading.Thread(target=target)


def test_backfill_equals_what_ingest_would_have_produced_and_twice_adds_nothing(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    new, ref = ingested_without_the_metric(services, catalogs, lake)
    assert ref["counts"]["risk_score"] > 1000
    assert "risk_score" not in metric_counts(db)

    report = run(lake, new)
    files = db.execute("SELECT count(*) FROM raw_files").fetchone()[0]
    assert report.files == files and report.events == ref["counts"]["risk_score"] == report.rows
    assert {d.mode for d in report.days.values()} == {"rows + aggregates"} and len(report.days) == 2
    assert snapshot(db) == ref["snapshot"]               # rows, ledger, dimensions, histograms, manifest: equal
    assert folded_aggregates(db) == ref["folded"]

    # twice: nothing to do, nothing added (through the command line, as users run it)
    cli_env(monkeypatch, services, lake["archive"], new)
    result = CliRunner().invoke(app, ["backfill", "--metric", "risk_score", "--start", "2026-03-01",
                                      "--end", "2026-03-03", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert "nothing to backfill: every file of the range already has risk_score" in result.stderr
    assert snapshot(db) == ref["snapshot"] and folded_aggregates(db) == ref["folded"]


def test_an_unknown_metric_is_refused_naming_the_catalogs_metrics(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    old, _ = catalogs
    with pytest.raises(InvalidRequestError, match=r"unknown metric 'risk_score': the catalog in effect .* defines "
                                                  r"amount, processing_ms, approved"):
        run(lake, old)
    monkeypatch.setenv("DATABASE_URL", services.database_url)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", services.storage_connection_string)
    monkeypatch.setenv("METRIC_CATALOG", str(old))
    result = CliRunner().invoke(app, ["backfill", "--metric", "risk_score", "--start", "2026-03-01",
                                      "--end", "2026-03-03"])
    assert result.exit_code == 2
    assert result.stderr.startswith("txmetrics: error: unknown metric 'risk_score'") and result.stderr.count("\n") == 1


def test_backfill_beside_late_events_and_another_backfill_stays_exactly_once(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection) -> None:
    """Late events for the same days arrive while two backfills run: some through a function
    already on the new catalog, some through one still on the old catalog (their files lack
    the metric). Afterwards, and after one more run for the files written last, everything
    equals ingest with the metric from the start."""
    old, new = catalogs
    batches, late = corpus(), late_batches()
    ref = reference(services, new, "corpus+late", batches + late)
    ingest(pipeline(services, lake["archive"], old), batches)
    live_new, live_old = pipeline(services, lake["archive"], new), pipeline(services, lake["archive"], old)
    # deterministic interleaving first: late files committed after the backfill planned its files
    arrived: list[int] = []

    def after_each_file(state: Any) -> None:
        if state.files_done in (2, 5) and state.files_done not in arrived:
            arrived.append(state.files_done)
            ingest(live_new, late[:2] if state.files_done == 2 else late[2:3])
            ingest(live_old, late[3:4] if state.files_done == 2 else late[4:5])

    first = run(lake, new, progress=after_each_file)
    assert arrived == [2, 5] and first.passes >= 2        # the old-catalog late files were picked up by a pass

    # then truly concurrent: two backfills in threads while late events arrive
    errors: list[BaseException] = []
    reports: list[BackfillReport] = []
    threads = [backfill_thread(services, lake["archive"], new, reports, errors) for _ in range(2)]
    for t in threads:
        t.start()
    for i, batch in enumerate(late[5:]):
        ingest(live_new if i % 2 else live_old, [batch])
    for t in threads:
        t.join(timeout=300)
    assert not errors
    run(lake, new)          # the old-catalog files written after both planned
    assert snapshot(db) == ref["snapshot"]
    assert folded_aggregates(db) == ref["folded"]


def test_two_backfills_racing_for_the_same_file_write_it_once(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection) -> None:
    """The second run planned the file while the first was writing it: it waits for the
    first's lock on the manifest row, then sees the metric there and skips the file."""
    new, ref = ingested_without_the_metric(services, catalogs, lake)
    second: list[BackfillReport] = []
    errors: list[BaseException] = []
    thread = backfill_thread(services, lake["archive"], new, second, errors)

    def first_file_not_committed_yet(step: str) -> None:
        if thread.ident is not None:
            return
        thread.start()
        for _ in range(400):             # until the second run waits for this file's lock
            if db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                          "AND query LIKE '%%FOR UPDATE%%'").fetchone()[0]:
                return
            time.sleep(0.05)
        raise AssertionError("the second run never waited for the file")

    first = run(lake, new, crash_hook=first_file_not_committed_yet)
    thread.join(timeout=300)
    assert not errors
    files = db.execute("SELECT count(*) FROM raw_files").fetchone()[0]
    assert first.files + second[0].files == files           # every file written by exactly one of them
    assert snapshot(db) == ref["snapshot"]
    assert folded_aggregates(db) == ref["folded"]


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {functions!r})
from datetime import datetime, UTC
from txmetrics.adapters.blob import BlobArchive, service_client
from txmetrics.adapters.postgres import PostgresStore
from txmetrics.backfill import backfill
from txmetrics.core.catalog import load_catalog

steps = []
def hook(step):
    steps.append(step)
    if not {kill_between} and len(steps) == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)       # killed inside the file's transaction, before its commit

def progress(state):
    if {kill_between} and state.files_done == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)       # killed between two files

backfill(store=PostgresStore({db!r}), archive=BlobArchive(service_client({storage!r}), {container!r}),
         catalog=load_catalog({catalog!r}), metric="risk_score", start=datetime(2026, 3, 1, tzinfo=UTC),
         end=datetime(2026, 3, 3, tzinfo=UTC), crash_hook=hook, progress=progress)
"""


@pytest.mark.parametrize("where", ["inside_a_transaction", "between_files"])
def test_backfill_killed_then_resumed_completes_exactly_once(
        where: str, services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any],
        db: psycopg.Connection) -> None:
    new, ref = ingested_without_the_metric(services, catalogs, lake)
    files = db.execute("SELECT count(*) FROM raw_files").fetchone()[0]
    script = _KILLED_RUN.format(functions=str(ROOT / "functions"), kill_at=7, kill_between=where == "between_files",
                                db=services.database_url, storage=services.storage_connection_string,
                                container=lake["archive"].container_name, catalog=str(new))
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = db.execute("SELECT count(*) FROM raw_files WHERE 'risk_score' = ANY (metrics)").fetchone()[0]
    assert done == (7 if where == "between_files" else 6)      # the file in flight was rolled back
    assert db.execute("SELECT count(*) FROM dynamic_metrics WHERE metric_name = 'risk_score'").fetchone()[0] > 0

    resumed = run(lake, new)
    assert resumed.files == files - done
    assert snapshot(db) == ref["snapshot"]
    assert folded_aggregates(db) == ref["folded"]


def test_days_past_retention_get_aggregates_only_and_the_command_says_so(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    new, ref = ingested_without_the_metric(services, catalogs, lake)
    # retention drops day 1's partitions (the ledger's and dynamic_metrics')
    db.execute("DROP TABLE dynamic_metrics_p20260301, ingested_events_p20260301")
    cli_env(monkeypatch, services, lake["archive"], new)
    result = CliRunner().invoke(app, ["backfill", "--metric", "risk_score", "--start", "2026-03-01",
                                      "--end", "2026-03-03", "--format", "json"])
    assert result.exit_code == 0, result.output
    days = {r["day"]: r for r in json.loads(result.stdout)}
    assert days["2026-03-01"]["mode"] == AGGREGATES_ONLY and days["2026-03-01"]["rows"] == 0
    assert days["2026-03-02"]["mode"] == "rows + aggregates" and days["2026-03-02"]["rows"] > 0
    assert ("1 day(s) got aggregates only (their dynamic_metrics partitions were dropped by retention): "
            "2026-03-01 .. 2026-03-01") in result.stderr
    # the aggregates of both days are exactly ingest's; rows only where the partition is
    ref_day2 = [r for r in ref["snapshot"]["dynamic_metrics"] if r[3] >= datetime(2026, 3, 2, tzinfo=UTC)]
    assert snapshot(db)["dynamic_metrics"] == ref_day2
    assert folded_aggregates(db) == ref["folded"]
    again = run(lake, new)
    assert again.files == 0 and folded_aggregates(db) == ref["folded"]


def test_files_written_before_the_per_file_record_are_backfilled_event_by_event(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection) -> None:
    """Files from before migration 0009 carry no metric list: half the corpus was ingested
    with risk_score, half without, then compacted together, then the lists forgotten.
    The backfill writes risk_score exactly for the events that lack it."""
    old, new = catalogs
    batches = corpus()
    ref = reference(services, new, "corpus", batches)
    ingest(pipeline(services, lake["archive"], new), batches[: len(batches) // 2])
    ingest(pipeline(services, lake["archive"], old), batches[len(batches) // 2:])
    db.execute("UPDATE raw_files SET metrics = NULL")
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        assert compact_day(conn, lake["archive"], datetime(2026, 3, 2).date(), target_bytes=1 << 30).inputs > 2
    expected_rows = ref["counts"]["risk_score"] - metric_counts(db)["risk_score"]
    report = run(lake, new)
    assert report.rows == expected_rows > 0
    assert ref["counts"] == metric_counts(db)
    twice = run(lake, new)            # looked at again, event by event: nothing left to add
    assert twice.rows == 0 and ref["counts"] == metric_counts(db)
    assert snapshot(db)["dynamic_metrics"] == ref["snapshot"]["dynamic_metrics"]
    # aggregates: exact but for sums, which compaction re-groups (float additions in another order)
    _same_histograms(folded_aggregates(db), ref["folded"])


def _same_histograms(got: list[tuple[Any, ...]], expected: list[tuple[Any, ...]]) -> None:
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        assert g[:5] == e[:5] and g[6:] == e[6:], (g, e)
        assert abs(float(g[5]) - float(e[5])) <= 1e-9 * max(1.0, abs(float(e[5])))


def test_compaction_keeps_metric_lists_apart_until_the_backfill(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection) -> None:
    old, new = catalogs
    batches = corpus()
    ref = reference(services, new, "corpus", batches)
    ingest(pipeline(services, lake["archive"], new), batches[::2])
    ingest(pipeline(services, lake["archive"], old), batches[1::2])
    day = datetime(2026, 3, 2).date()
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        first = compact_day(conn, lake["archive"], day, target_bytes=1 << 30)
    lists = db.execute("SELECT metrics FROM raw_files WHERE event_date = %s AND state = 'uploaded'", (day,)).fetchall()
    assert len(first.outputs) == 2 and sorted(len(m) for (m,) in lists) == [3, 4]
    run(lake, new)
    assert ref["counts"] == metric_counts(db)
    assert snapshot(db)["dynamic_metrics"] == ref["snapshot"]["dynamic_metrics"]
    _same_histograms(folded_aggregates(db), ref["folded"])
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        second = compact_day(conn, lake["archive"], day, target_bytes=1 << 30)
    assert second.inputs == 2 and len(second.outputs) == 1       # one list now: merged


def test_a_backfill_between_a_compactions_plan_and_its_commit_makes_it_stand_down(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any]) -> None:
    old, new = catalogs
    ingest(pipeline(services, lake["archive"], old), corpus())
    day = datetime(2026, 3, 2).date()

    def backfill_meanwhile(step: str) -> None:
        if step == "before_commit":
            run(lake, new)

    with psycopg.connect(services.database_url, autocommit=True) as conn:
        report = compact_day(conn, lake["archive"], day, target_bytes=1 << 30, crash_hook=backfill_meanwhile)
        assert report.outputs == [] and "a backfill changed their metrics meanwhile" in (report.skipped_reason or "")
        assert conn.execute("SELECT state FROM raw_compactions").fetchall() == [("aborted",)]
        again = compact_day(conn, lake["archive"], day, target_bytes=1 << 30)
    assert again.inputs > 2 and len(again.outputs) == 1
    names = {b.name for b in lake["archive"].list("raw_events/yyyy=2026/mm=03/dd=02/")}
    assert names == {p for p, _ in again.outputs}        # the aborted run's outputs are gone


def test_archived_files_are_listed_with_the_rehydrate_hint_not_failed_on(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = catalogs
    ingest(pipeline(services, lake["archive"], old), corpus())
    archive: BlobArchive = lake["archive"]
    cold = db.execute("SELECT path FROM raw_files ORDER BY id LIMIT 2").fetchall()
    for (path,) in cold:
        archive.set_tier(path, "Archive")
    cli_env(monkeypatch, services, archive, new)
    result = CliRunner().invoke(app, ["backfill", "--metric", "risk_score", "--start", "2026-03-01",
                                      "--end", "2026-03-03", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert (f"2 file(s) in the archive tier were not read: {cold[0][0]} {cold[1][0]}; re-run with --rehydrate "
            "Standard (up to 15 h) or High (under 1 h)") in result.stderr
    lacking = db.execute("SELECT path FROM raw_files WHERE NOT 'risk_score' = ANY (metrics) ORDER BY id").fetchall()
    assert lacking == cold                 # every other file done, these two left for after rehydration
    assert result.stdout.splitlines()[0] == ("day,mode,files,events,rows,aggregate_rows,archived_files,"
                                             "skipped_legacy_files")


def test_the_progress_callback_counts_files_and_events(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection) -> None:
    old, new = catalogs
    ingest(pipeline(services, lake["archive"], old), corpus(n=300))
    seen: list[tuple[int, int, int]] = []
    report = run(lake, new, progress=lambda s: seen.append((s.files_done, s.files_total, s.events)))
    files, events = db.execute("SELECT count(*), sum(row_count) FROM raw_files").fetchone()
    assert [s[0] for s in seen] == list(range(1, files + 1)) and {s[1] for s in seen} == {files}
    assert seen[-1][2] == events == report.events


def test_an_empty_range_is_refused(catalogs: tuple[Path, Path], lake: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match="the range is empty"):
        backfill(store=lake["store"], archive=lake["archive"], catalog=load_catalog(catalogs[1]), metric="risk_score",
                 start=END, end=START)


def test_a_backfill_that_could_read_no_file_does_not_say_every_file_has_the_metric(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file of the range in the archive tier: the command listed them with the rehydrate
    hint, but its summary line said "nothing to backfill: every file of the range already has
    risk_score" (none had it), and, past retention, that days "got aggregates only" (they got
    nothing). An operator reading the first line stops there."""
    old, new = catalogs
    ingest(pipeline(services, lake["archive"], old), corpus(n=300))
    archive: BlobArchive = lake["archive"]
    paths = [p for (p,) in db.execute("SELECT path FROM raw_files ORDER BY id").fetchall()]
    assert paths
    for path in paths:
        archive.set_tier(path, "Archive")
    cli_env(monkeypatch, services, archive, new)
    result = CliRunner().invoke(app, ["backfill", "--metric", "risk_score", "--start", "2026-03-01",
                                      "--end", "2026-03-03", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "already has risk_score" not in result.stderr
    assert f"{len(paths)} file(s) of the range still lack risk_score" in result.stderr
    assert f"{len(paths)} file(s) in the archive tier were not read" in result.stderr
    assert db.execute("SELECT count(*) FROM raw_files WHERE 'risk_score' = ANY (metrics)").fetchone() == (0,)


def test_backfill_never_writes_a_card_number_ingest_would_refuse(
        services: LocalServices, catalogs: tuple[Path, Path], lake: dict[str, Any], db: psycopg.Connection) -> None:
    """Masking leaves "+4111111111111111" as it is, so an event archived before risk_score was in
    the catalog keeps it; ingest with risk_score refuses such an event (card_number_in_metric_source:
    dynamic_metrics.value would hold the card's digits), but the backfill extracts it (a review)."""
    from txmetrics.core.events import InboundEvent

    old, new = catalogs
    body = json.dumps({"event_id": "pan-0", "transaction_id": "t", "merchant_id": "m",
                       "occurred_at": "2026-03-01T10:00:00Z", "amount": 1, "currency": "USD",
                       "payment_method": "card", "status": "approved",
                       "attributes": {"risk_score": "+4111111111111111"}}).encode()
    ingest(pipeline(services, lake["archive"], old), [("0", [InboundEvent(body, "0", 1)])])
    run(lake, new)
    assert db.execute("SELECT value FROM dynamic_metrics WHERE metric_name = 'risk_score'").fetchall() == []
