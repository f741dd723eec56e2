"""Schema migrations (yoyo): apply, roll back, re-apply, idempotence, concurrent appliers."""

from __future__ import annotations

import multiprocessing as mp

import psycopg

from txmetrics import schema

ALL_MIGRATIONS = sorted(p.name[: -len(".sql")] for p in schema.MIGRATIONS_DIR.glob("*.sql")
                        if not p.name.endswith(".rollback.sql"))


def schema_dump(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Everything the migrations define, from the catalogs (portable: no pg_dump needed)."""
    with psycopg.connect(url) as conn:
        q = conn.execute
        return {
            "columns": q("""SELECT table_name, column_name, data_type, is_nullable, column_default
                              FROM information_schema.columns WHERE table_schema = 'public'
                               AND table_name NOT LIKE '%yoyo%' ORDER BY 1, 2""").fetchall(),
            "constraints": q("""SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
                                 WHERE connamespace = 'public'::regnamespace
                                   AND conrelid::regclass::text NOT LIKE '%yoyo%' ORDER BY 1, 2""").fetchall(),
            "indexes": q("""SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
                               AND tablename NOT LIKE '%yoyo%' ORDER BY 1, 2""").fetchall(),
            "views": q("""SELECT viewname, pg_get_viewdef(viewname::regclass) FROM pg_views
                           WHERE schemaname = 'public' ORDER BY 1""").fetchall(),
            "functions": q("""SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
                               WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1""").fetchall(),
            "partitioned": q("""SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace
                                 AND relkind IN ('p', 'S') ORDER BY 1""").fetchall(),
        }


def test_apply_all_creates_the_contract_tables(empty_db: str) -> None:
    assert schema.apply_all(empty_db) == ALL_MIGRATIONS
    dump = schema_dump(empty_db)
    tables = {c[0] for c in dump["columns"]}
    assert {"dynamic_metrics", "aggregate_histograms", "failed_items", "raw_files", "payment_metrics_5m"} <= tables
    assert ("dynamic_metrics", "p") in dump["partitioned"]
    view_columns = {c[1] for c in dump["columns"] if c[0] == "payment_metrics_5m"}
    assert {"window_start", "merchant_id", "payment_method", "transaction_count", "approved_count", "approval_rate",
            "amount_sum", "processing_ms_p50", "processing_ms_p95", "processing_ms_p99"} <= view_columns


def test_rollback_then_apply_gives_an_identical_schema_and_reapply_is_a_noop(empty_db: str) -> None:
    schema.apply_all(empty_db)
    first = schema_dump(empty_db)
    assert schema.rollback_all(empty_db) == list(reversed(ALL_MIGRATIONS))
    emptied = schema_dump(empty_db)
    assert not [c for c in emptied["columns"]], "rollback left tables behind"
    assert not emptied["functions"]
    assert schema.apply_all(empty_db) == ALL_MIGRATIONS
    assert schema_dump(empty_db) == first
    assert schema.apply_all(empty_db) == []
    assert schema_dump(empty_db) == first


def _apply(url: str, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        queue.put(("ok", schema.apply_all(url)))
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put(("error", repr(exc)))


def test_two_processes_applying_at_once_both_succeed_and_one_does_the_work(empty_db: str) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_apply, args=(empty_db, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(status == "ok" for status, _ in results), results
    applied = sorted((r for _, r in results), key=len)
    assert applied[0] == [] and applied[1] == ALL_MIGRATIONS
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()[0] == len(ALL_MIGRATIONS)


def test_partitions_are_created_ahead_by_the_migration_function(empty_db: str) -> None:
    schema.apply_all(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        created = conn.execute(
            "SELECT txm_ensure_day_partitions('dynamic_metrics', '2026-03-01', '2026-03-03')").fetchone()[0]
        again = conn.execute(
            "SELECT txm_ensure_day_partitions('dynamic_metrics', '2026-03-01', '2026-03-03')").fetchone()[0]
        bounds = conn.execute("""SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i
                                   JOIN pg_class c ON c.oid = i.inhrelid
                                  WHERE i.inhparent = 'dynamic_metrics'::regclass ORDER BY 1""").fetchall()
    assert (created, again) == (3, 0)
    assert [b[0] for b in bounds] == ["dynamic_metrics_p20260301", "dynamic_metrics_p20260302",
                                      "dynamic_metrics_p20260303"]
    assert "2026-03-01 00:00:00+00" in bounds[0][1] and "2026-03-02 00:00:00+00" in bounds[0][1]
