"""Aggregates off the lock path: writers append histogram deltas; the fold merges them into
aggregate_histograms. Folds concurrent with writers and with each other, and folds killed
half-way, leave every aggregate equal to a recomputation from dynamic_metrics; readers
see the same KPIs before and after a fold."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from localdev.eventhub import make_batch
from localdev.synth import Generator
from tests.aggregate_check import recompute_and_compare
from tests.helpers import explaining, join_filter_rejections
from txmetrics import kpi
from txmetrics.core.catalog import load_catalog
from txmetrics.settings import BUNDLED_CATALOG

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WRITERS = 3


def _bodies(seed: int, n: int, *, start: datetime = START, merchants: int = 12, days: float = 1 / 96
            ) -> list[tuple[str, list[tuple[bytes, int]]]]:
    gen = Generator(seed=seed, partitions=WRITERS, merchants=merchants, bad_rate=0.0, start=start, days=days)
    per: dict[str, list[tuple[bytes, int]]] = {}
    for e in gen.events(n):
        per.setdefault(e.partition_id, []).append((e.body, e.sequence_number))
    return sorted(per.items())


def _writer(env: dict[str, str], partition: str, items: list[tuple[bytes, int]], out: Any) -> None:
    os.environ.update(env)
    try:
        from localdev.run import load_function

        fn = load_function()
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            fn(make_batch([b for b, _ in chunk], partition_id=partition, sequence_numbers=[s for _, s in chunk]))
        out.put((partition, "ok"))
    except BaseException as exc:  # reported to the parent, which fails the test
        out.put((partition, repr(exc)))


def _folder(url: str, stop: Any, out: Any) -> None:
    try:
        folds = 0
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("SELECT txm_fold_aggregates()")
                folds += 1
        out.put(("folder", folds))
    except BaseException as exc:  # reported to the parent, which fails the test
        out.put(("folder", repr(exc)))


def test_folds_concurrent_with_writers_and_with_each_other(env: dict[str, str], db: psycopg.Connection) -> None:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    stop = ctx.Event()
    folders = [ctx.Process(target=_folder, args=(env["DATABASE_URL"], stop, out)) for _ in range(2)]
    writers = [ctx.Process(target=_writer, args=(env, p, items, out)) for p, items in _bodies(3, 3000)]
    for p in folders + writers:
        p.start()
    results = [out.get(timeout=300) for _ in writers]
    stop.set()
    folds = [out.get(timeout=60) for _ in folders]
    for p in folders + writers:
        p.join(timeout=60)
    assert all(r == "ok" for _, r in results), results
    assert all(isinstance(n, int) and n > 0 for _, n in folds), folds     # both folders really ran
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (3000,)
    checked = recompute_and_compare(db, load_catalog(BUNDLED_CATALOG))
    assert checked > 100


def _ingest(ingest_fn: Callable[[list[Any]], None], seed: int, n: int, **corpus: Any) -> None:
    """`n` events of `_bodies(seed, n, **corpus)` through the function, 200 a batch."""
    for partition, items in _bodies(seed, n, **corpus):
        for i in range(0, len(items), 200):
            chunk = items[i:i + 200]
            ingest_fn(make_batch([b for b, _ in chunk], partition_id=partition,
                                 sequence_numbers=[s for _, s in chunk]))


def _state(db: psycopg.Connection) -> tuple[Any, ...]:
    return (db.execute("SELECT count(*) FROM aggregate_deltas").fetchone(),
            db.execute("SELECT metric_name, window_start, dimensions::text, count, sum, pos_counts "
                       "FROM aggregate_histograms ORDER BY 1, 2, 3").fetchall())


def _wait_until_blocked(db: psycopg.Connection, pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.05)
    raise AssertionError("the fold never reached the locked row")


def _hold_a_late_row(url: str) -> psycopg.Connection:
    """A transaction holding the lock of a row the fold must update last but one: the fold
    blocks there with all of its deltas deleted and most rows already upserted."""
    holder = psycopg.connect(url)
    holder.execute("SELECT 1 FROM aggregate_histograms WHERE (metric_name, window_seconds, window_start, dimensions) = "
                   "(SELECT metric_name, window_seconds, window_start, dimensions FROM aggregate_histograms "
                   " ORDER BY 1 DESC, 2 DESC, 3 DESC, 4 DESC LIMIT 1) FOR UPDATE")
    return holder


def test_a_fold_killed_half_way_changes_nothing(ingest_fn: Callable[[list[Any]], None],
                                                db: psycopg.Connection, env: dict[str, str]) -> None:
    _ingest(ingest_fn, 5, 1500)
    db.execute("SELECT txm_fold_aggregates()")
    _ingest(ingest_fn, 6, 1500)                    # the same keys again, as pending deltas
    before = _state(db)
    assert before[0][0] > 0 and before[1]

    # 1. the backend is terminated while the fold waits half-way
    holder = _hold_a_late_row(env["DATABASE_URL"])
    errors: list[BaseException] = []
    fold_conn = psycopg.connect(env["DATABASE_URL"], autocommit=True)
    pid = fold_conn.info.backend_pid

    def fold() -> None:
        try:
            fold_conn.execute("SELECT txm_fold_aggregates()")
        except psycopg.OperationalError as exc:
            errors.append(exc)

    thread = threading.Thread(target=fold)
    thread.start()
    _wait_until_blocked(db, pid)
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    thread.join(timeout=30)
    holder.close()
    fold_conn.close()
    assert errors, "the fold was expected to be cut off"
    assert _state(db) == before

    # 2. the client process is killed (SIGKILL) while its fold waits half-way
    holder = _hold_a_late_row(env["DATABASE_URL"])
    script = ("import psycopg, sys\n"
              "with psycopg.connect(sys.argv[1]) as c:\n"
              "    print(c.info.backend_pid, flush=True)\n"
              "    with c.transaction():\n"
              "        c.execute('SELECT txm_fold_aggregates()')\n")
    proc = subprocess.Popen([sys.executable, "-c", script, env["DATABASE_URL"]], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent)
    assert proc.stdout is not None
    client_pid = int(proc.stdout.readline())
    _wait_until_blocked(db, client_pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    holder.close()             # the orphaned statement may now finish; its transaction never commits
    deadline = time.monotonic() + 30
    while db.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (client_pid,)).fetchone() != (0,):
        assert time.monotonic() < deadline, "the killed client's backend never went away"
        time.sleep(0.05)
    assert _state(db) == before

    # readers never lost anything meanwhile; the next fold completes the job
    recompute_and_compare(db, load_catalog(BUNDLED_CATALOG))


@pytest.mark.parametrize("group_by, filters", [
    ([], {}), (["payment_method"], {}), (["payment_method", "status"], {}),
    (["merchant_id", "payment_method"], {}), (["payment_method"], {"merchant_id": "m-0001"}),
])
def test_readers_see_the_same_kpis_before_and_after_a_fold(ingest_fn: Callable[[list[Any]], None],
                                                           db: psycopg.Connection, group_by: list[str],
                                                           filters: dict[str, str]) -> None:
    _ingest(ingest_fn, 8, 1200)
    db.execute("SELECT txm_fold_aggregates()")
    _ingest(ingest_fn, 9, 1200)          # half folded, half pending: both sources at once

    def read() -> Any:
        out = []
        for metric in ("approved", "processing_ms", "amount"):
            for window in (None, "5m"):
                rows = kpi.query(db, metric=metric, start=START - timedelta(hours=1), end=START + timedelta(hours=2),
                                 group_by=group_by, filters=filters, window=window)
                out.append([(r.window_start, sorted(r.dimensions.items()), r.count, round(r.sum, 6), r.min, r.max,
                             r.quantiles) for r in rows])
        view = db.execute("SELECT * FROM payment_metrics_5m ORDER BY window_start, merchant_id, payment_method")
        return out, view.fetchall()

    before = read()
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone()[0] > 0
    assert any(rows for rows in before[0]) and before[1]
    db.execute("SELECT txm_fold_aggregates()")
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (0,)
    assert read() == before


def test_emptying_the_aggregates_empties_the_pending_deltas_too(ingest_fn: Callable[[list[Any]], None],
                                                               db: psycopg.Connection) -> None:
    """A reset by TRUNCATE aggregate_histograms forgets the pending deltas as well: no reader
    and no later fold brings the forgotten counts back."""
    _ingest(ingest_fn, 12, 300)
    db.execute("SELECT txm_fold_aggregates()")
    _ingest(ingest_fn, 13, 300)
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone()[0] > 0
    db.execute("TRUNCATE aggregate_histograms")
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM aggregate_histograms_current").fetchone() == (0,)
    db.execute("SELECT txm_fold_aggregates()")
    assert db.execute("SELECT count(*) FROM aggregate_histograms").fetchone() == (0,)


def test_the_fold_stays_linear_after_its_queue_was_analysed_empty(ingest_fn: Callable[[list[Any]], None],
                                                                  db: psycopg.Connection) -> None:
    """aggregate_deltas is a queue. ANALYZEd between a fold and the next fill (autovacuum can
    do it at any moment), it keeps reltuples = 0 over its pages, and PostgreSQL estimates any
    later fill at 0 rows. On that estimate the fold's statement joined deltas to keys by a
    nested loop, comparing every delta with every key (a CI run: one fold for 20 minutes).
    The fold runs without nested loops for its joins (migration 0017), so its join filters
    reject nothing, whatever the statistics say."""
    _ingest(ingest_fn, 14, 600)
    db.execute("SELECT txm_fold_aggregates()")
    db.execute("ANALYZE aggregate_deltas")
    relpages, reltuples = db.execute("SELECT relpages, reltuples FROM pg_class "
                                     "WHERE oid = 'aggregate_deltas'::regclass").fetchone()
    assert relpages > 0 and reltuples == 0          # the statistics that misled the planner
    _ingest(ingest_fn, 15, 600)
    deltas = db.execute("SELECT count(*) FROM aggregate_deltas").fetchone()[0]
    keys = db.execute("SELECT count(*) FROM (SELECT DISTINCT metric_name, window_seconds, window_start, dimensions "
                      "FROM aggregate_deltas) AS k").fetchone()[0]
    assert deltas > 500 and keys > 200
    # The function's one statement, planned as the function plans it (its SET options), and
    # run in a transaction that is rolled back: the plan's actual work is visible only this way.
    body, config = db.execute("SELECT prosrc, proconfig FROM pg_proc WHERE proname = 'txm_fold_aggregates'").fetchone()
    statement = body[body.index("WITH moved"):body.index("INTO keys")]
    with db.transaction(force_rollback=True):
        for setting in config:
            db.execute("SELECT set_config(%s, %s, true)", setting.split("=", 1))
        (plan,), = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement).fetchone()
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (deltas,)
    # a nested loop over (deltas x keys) rejects about deltas * keys rows here
    rejected = join_filter_rejections(plan["Plan"])
    assert rejected == 0, f"{rejected} rows compared and rejected for {deltas} deltas of {keys} keys"
    db.execute("SET statement_timeout = '120s'")     # a regression fails here instead of hanging the suite
    assert db.execute("SELECT txm_fold_aggregates()").fetchone() == (deltas,)
    db.execute("RESET statement_timeout")
    assert recompute_and_compare(db, load_catalog(BUNDLED_CATALOG), fold=False) > 0


def test_kpi_statements_stay_linear_for_windows_written_since_the_last_analyze(
        ingest_fn: Callable[[list[Any]], None], db: psycopg.Connection) -> None:
    """aggregate_histograms' statistics of window_start end at its last ANALYZE, and windows
    written since (the latest hours, what a dashboard asks for) are estimated at 1 row. On that
    estimate kpi.query's two statements joined by nested loops: event_counts every row with
    every distinct dimensions, merged_histograms every group's totals with every group's
    bucket counts (6 hours by merchant, 100 merchants: 36 s instead of 1 s). They run without
    nested loops for their joins (adapters/plans.py), so no join filter rejects
    a row, whatever the statistics say."""
    later = START + timedelta(hours=3)
    db.execute("ALTER TABLE aggregate_histograms SET (autovacuum_enabled = false)")   # keeps the stale statistics
    try:
        _ingest(ingest_fn, 31, 300, start=START, merchants=40, days=1 / 24)
        db.execute("SELECT txm_fold_aggregates()")
        db.execute("ANALYZE aggregate_histograms")          # statistics of the early windows only
        _ingest(ingest_fn, 32, 1500, start=later, merchants=40, days=1 / 24)
        db.execute("SELECT txm_fold_aggregates()")
        recent = "FROM aggregate_histograms WHERE window_start >= %s"
        (estimate,), = db.execute("EXPLAIN (FORMAT JSON) SELECT 1 " + recent, (later,)).fetchone()
        (actual,) = db.execute("SELECT count(*) " + recent, (later,)).fetchone()
        assert estimate["Plan"]["Plan Rows"] * 10 < actual   # the statistics that misled the planner
        with explaining(db, " JOIN ") as plans:              # the plans they run with, where they run
            rows = kpi.query(db, metric="approved", start=later, end=later + timedelta(hours=1),
                             group_by=["merchant_id"], window="5m", catalog=load_catalog(BUNDLED_CATALOG))
    finally:
        db.execute("ALTER TABLE aggregate_histograms RESET (autovacuum_enabled)")
    assert len(rows) > 200 and len(plans) == 2
    # a nested loop over (groups x groups) rejects about groups^2 rows here
    rejected = [join_filter_rejections(plan["Plan"]) for _, plan in plans]
    assert rejected == [0, 0], f"{rejected} rows compared and rejected for {len(rows)} groups"


def test_the_kpi_view_reads_an_hour_without_comparing_every_merchant_with_every_other(db: psycopg.Connection) -> None:
    """payment_metrics_5m joined its approved rows to its processing_ms rows and its amounts.
    Their jsonb key-set filters are estimated at a few rows whatever the statistics, and the
    planner merged the sides on window_start alone, comparing every (merchant, method) of a
    window with every other (the README's `WHERE window_start > now() - interval '1 hour'`:
    1.9 s at 100 merchants x 4 methods, 20.4 s at 400, with fresh statistics). The view is one
    grouping now (migration 0018): no join filter rejects a row."""
    # two hours of 5-minute rows of 100 merchants x 4 methods, as the fold leaves them
    db.execute("""
        INSERT INTO aggregate_histograms (metric_name, window_seconds, window_start, dimensions, count, sum, min, max,
                                          zero_count, scale, pos_offset, pos_counts)
        SELECT metric, 300, w, jsonb_build_object('merchant_id', 'm-' || m, 'payment_method', pm) || extra,
               4, 2, 0, 30, 1, 6, 200, '{1,0,2}'
          FROM generate_series(%s::timestamptz, %s::timestamptz, interval '5 minutes') AS w,
               generate_series(1, 100) AS m, unnest(ARRAY['card', 'sepa', 'wallet', 'ideal']) AS pm,
               (VALUES ('approved', '{}'::jsonb), ('processing_ms', '{}'), ('amount', '{"currency": "EUR"}'),
                       ('amount', '{"currency": "USD"}')) AS k(metric, extra)""",
               (START, START + timedelta(minutes=115)))
    db.execute("ANALYZE aggregate_histograms")               # fresh statistics: the view's own estimates mislead
    db.execute("SET statement_timeout = '120s'")
    (plan,), = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM payment_metrics_5m "
                          "WHERE window_start >= %s", (START + timedelta(hours=1),)).fetchone()
    db.execute("RESET statement_timeout")
    rows = plan["Plan"]["Actual Rows"]
    assert rows == 12 * 400
    rejected = join_filter_rejections(plan["Plan"])
    assert rejected == 0, f"{rejected} rows compared and rejected for {rows} rows of the view"
