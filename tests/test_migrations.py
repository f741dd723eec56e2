"""Schema migrations (yoyo): apply, roll back, re-apply, idempotence, concurrent appliers."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any
from uuid import UUID

import psycopg
import pytest

from txmetrics import schema
from txmetrics.core import tables
from txmetrics.core.naming import event_key

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
                               WHERE p.pronamespace = 'public'::regnamespace AND p.prokind <> 'a'
                               ORDER BY 1""").fetchall(),
            "aggregates": q("""SELECT p.oid::regprocedure::text, a.aggtransfn::text, a.aggtranstype::regtype::text
                                FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid
                               WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1""").fetchall(),
            "storage": q("""SELECT attrelid::regclass::text, attname, attstorage FROM pg_attribute
                             WHERE attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace
                                                   AND relkind IN ('r', 'p') AND relname NOT LIKE '%yoyo%')
                               AND attnum > 0 AND NOT attisdropped ORDER BY 1, 2""").fetchall(),
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


def test_the_outbox_keeps_its_parquet_files_uncompressed(empty_db: str) -> None:
    """Migration 0012: the outbox's files are zstd Parquet already; stored EXTENDED, pglz ran
    over every one (about 0.8 ms of server CPU per batch) and kept nothing of it."""
    schema.apply_all(empty_db)
    storage = {(t, c): s for t, c, s in schema_dump(empty_db)["storage"]}
    assert storage[("raw_file_outbox", "content")] == "e"            # EXTERNAL: out of line, never compressed
    assert storage[("failed_items", "payload")] == "x"               # JSON text still compresses


def test_the_table_registry_lists_exactly_the_tables_the_migrations_create(empty_db: str) -> None:
    """core/tables.py is the one place retention, the lifecycle plan, the benchmark and the
    tests' cleanup learn the tables from: a migration adding a table without registering it
    (or a registry entry without its table) fails here."""
    schema.apply_all(empty_db)
    with psycopg.connect(empty_db) as conn:
        created = {r[0] for r in conn.execute(
            """SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')
                  AND NOT relispartition AND relname NOT LIKE '%yoyo%'""")}
        partitioned = {r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'p'")}
    assert created == {t.name for t in tables.TABLES}
    assert partitioned == set(tables.DAY_PARTITIONED)


def test_rollback_then_apply_gives_an_identical_schema_and_reapply_is_a_noop(empty_db: str) -> None:
    schema.apply_all(empty_db)
    first = schema_dump(empty_db)
    assert schema.rollback_all(empty_db) == list(reversed(ALL_MIGRATIONS))
    emptied = schema_dump(empty_db)
    assert not [c for c in emptied["columns"]], "rollback left tables behind"
    assert not emptied["functions"] and not emptied["aggregates"]
    assert schema.apply_all(empty_db) == ALL_MIGRATIONS
    assert schema_dump(empty_db) == first
    assert schema.apply_all(empty_db) == []
    assert schema_dump(empty_db) == first


def _apply(url: str, queue: mp.Queue[tuple[str, Any]]) -> None:
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


def test_the_wide_view_returns_the_rows_the_wide_table_held(empty_db: str) -> None:
    """Write path v2 (0008) keeps the dimensions once per event: data written before it is
    moved, and dynamic_metrics_wide returns exactly the rows the old wide table held."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(schema.yoyo_url(empty_db))
    try:
        migrations = read_migrations(str(schema.MIGRATIONS_DIR))
        with backend.lock():
            backend.apply_migrations(backend.to_apply(migrations.filter(lambda m: m.id < "0008")))
    finally:
        backend.connection.close()
    wide = ("event_id, metric_name, value, occurred_at, merchant_id, payment_method, status, currency, country, "
            "event_type, dimensions")
    rows = [
        ("e1", "amount", 12.5, "2026-03-01T10:00:00Z", "m-1", "card", "approved", "EUR", "DE", "capture", None),
        ("e1", "approved", 1.0, "2026-03-01T10:00:00Z", "m-1", "card", "approved", "EUR", "DE", "capture", None),
        ("e2", "amount", 3.0, "2026-03-02T23:59:59Z", "m-2", "wallet", "declined", "USD", None, None,
         '{"attributes.channel": "web"}'),
        ("e3", "approved", 0.0, "2026-03-02T00:00:00Z", "m-1", "card", "approved", "EUR", "DE", "capture", None),
    ]
    with psycopg.connect(empty_db, autocommit=True) as conn:
        for table in ("dynamic_metrics", "ingested_events"):
            conn.execute("SELECT txm_ensure_day_partitions(%s, '2026-03-01', '2026-03-02')", (table,))
        for r in rows:
            conn.execute(f"INSERT INTO dynamic_metrics ({wide}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", r)
        for event_id, occurred in {(r[0], r[3]) for r in rows} | {("no-metrics", "2026-03-01T11:00:00Z")}:
            conn.execute("INSERT INTO ingested_events VALUES (%s, %s, '0', 1, 1)", (event_id, occurred))
        before = conn.execute(f"SELECT {wide} FROM dynamic_metrics ORDER BY 1, 2").fetchall()
    assert len(before) == 4
    assert schema.apply_all(empty_db)[0] == "0008.write-path-v2"
    with psycopg.connect(empty_db) as conn:
        assert conn.execute(f"SELECT {wide} FROM dynamic_metrics_wide ORDER BY 1, 2").fetchall() == before
        # one stored tuple per distinct set of dimensions; the event without metric rows keeps no key
        assert conn.execute("SELECT count(*) FROM event_dimensions").fetchone() == (2,)
        assert conn.execute("SELECT event_key = txm_event_key('no-metrics') FROM ingested_events "
                            "WHERE dimension_key IS NULL").fetchall() == [(True,)]
        # 0011: the ledger keeps each event's key (as the writer computes it), not its id
        ledger = conn.execute("SELECT event_key FROM ingested_events").fetchall()
        assert {k.bytes for (k,) in ledger} == {event_key(e) for e in ("e1", "e2", "e3", "no-metrics")}
        assert len(ledger) == 4
        ledger_columns = {c[0] for c in conn.execute("SELECT column_name FROM information_schema.columns "
                                                     "WHERE table_name = 'ingested_events'").fetchall()}
        assert ledger_columns == {"event_key", "occurred_at", "dimension_key"}
        # 0016: no primary key of the ledger; each day partition's unique index is its key
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'p' "
                            "AND conrelid = 'ingested_events'::regclass").fetchone() == (0,)
        assert conn.execute("SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) LIKE '%(event_key)' "
                            "FROM pg_index WHERE indisunique AND indrelid IN (SELECT inhrelid FROM pg_inherits "
                            "WHERE inhparent = 'ingested_events'::regclass) ORDER BY 1").fetchall() == [
            ("ingested_events_p20260301_event_key", True), ("ingested_events_p20260302_event_key", True)]
        # one event's wide rows through the ledger's key (the lookup docs/ingest.md shows)
        assert conn.execute("SELECT metric_name FROM dynamic_metrics_wide WHERE event_key = txm_event_key('e1') "
                            "AND event_id = 'e1' ORDER BY 1").fetchall() == [("amount",), ("approved",)]
        columns = {c[0] for c in conn.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name = 'dynamic_metrics'").fetchall()}
        assert columns == {"event_id", "metric_name", "value", "occurred_at"}


def test_the_ledger_takes_an_event_id_once_a_day_and_old_days_keep_their_rule(empty_db: str) -> None:
    """0015-0016: each day partition of the ledger has a unique index on event_key (one
    event_id a UTC day), also the partitions made later, and a day found without any key gets
    one; a day that already held an event_id twice under the old key keeps (event_key,
    occurred_at) for that day, so the migration never fails on stored data; the rollback
    brings the primary key back."""
    from yoyo import get_backend, read_migrations

    def migrate(rollback_last: bool = False, below: str = "0015") -> None:
        backend = get_backend(schema.yoyo_url(empty_db))
        try:
            migrations = read_migrations(str(schema.MIGRATIONS_DIR))
            with backend.lock():
                if rollback_last:
                    backend.rollback_migrations(backend.to_rollback(migrations.filter(lambda m: m.id >= below)))
                else:
                    backend.apply_migrations(backend.to_apply(migrations.filter(lambda m: m.id < below)))
        finally:
            backend.connection.close()

    def insert(conn: psycopg.Connection, event_id: str, at: str) -> bool:
        return conn.execute("INSERT INTO ingested_events VALUES (txm_event_key(%s), %s, 1) ON CONFLICT DO NOTHING",
                            (event_id, at)).rowcount == 1

    migrate()
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("SELECT txm_ensure_day_partitions('ingested_events', '2026-03-01', '2026-03-02')")
        assert insert(conn, "twice", "2026-03-01T10:00:00Z") and insert(conn, "twice", "2026-03-01T11:00:00Z")
        assert insert(conn, "once", "2026-03-02T10:00:00Z")
    schema.apply_all(empty_db)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("SELECT txm_ensure_day_partitions('ingested_events', '2026-03-03', '2026-03-03')")
        assert not insert(conn, "once", "2026-03-02T23:00:00Z")              # the same day: nothing added
        assert insert(conn, "twice", "2026-03-01T12:00:00Z")                 # the old day's old rule
        assert insert(conn, "x", "2026-03-03T01:00:00Z") and not insert(conn, "x", "2026-03-03T02:00:00Z")
        assert insert(conn, "x", "2026-03-02T02:00:00Z")                     # another day is another key
        with pytest.raises(psycopg.errors.UniqueViolation), conn.cursor().copy(
                "COPY ingested_events (event_key, occurred_at) FROM STDIN") as copy:
            copy.write_row((UUID(bytes=event_key("once")), "2026-03-02T05:00:00Z"))   # the writer's COPY too
        # a day made without any key (the old function body, held until after 0016; by hand)
        # gets it from the next txm_ensure_day_partitions over its range, before anything else
        conn.execute("CREATE TABLE ingested_events_p20260304 (LIKE ingested_events INCLUDING ALL)")
        conn.execute("ALTER TABLE ingested_events ATTACH PARTITION ingested_events_p20260304 "
                     "FOR VALUES FROM ('2026-03-04T00:00:00Z') TO ('2026-03-05T00:00:00Z')")
        assert insert(conn, "y", "2026-03-04T01:00:00Z") and insert(conn, "y", "2026-03-04T01:00:00Z")   # no key
        conn.execute("DELETE FROM ingested_events WHERE occurred_at >= '2026-03-04'")
        conn.execute("SELECT txm_ensure_day_partitions('ingested_events', '2026-03-04', '2026-03-04')")
        assert insert(conn, "z", "2026-03-04T01:00:00Z") and not insert(conn, "z", "2026-03-04T02:00:00Z")
        # a keyless day that stored a row twice can take no key: said, and day creation goes on
        conn.execute("CREATE TABLE ingested_events_p20260305 (LIKE ingested_events INCLUDING ALL)")
        conn.execute("ALTER TABLE ingested_events ATTACH PARTITION ingested_events_p20260305 "
                     "FOR VALUES FROM ('2026-03-05T00:00:00Z') TO ('2026-03-06T00:00:00Z')")
        assert insert(conn, "w", "2026-03-05T01:00:00Z") and insert(conn, "w", "2026-03-05T01:00:00Z")
        warnings: list[str] = []
        conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary or ""))
        assert conn.execute("SELECT txm_ensure_day_partitions('ingested_events', '2026-03-05', "
                            "'2026-03-06')").fetchone() == (1,)
        assert any("holds a row twice" in w for w in warnings), warnings
        conn.execute("DROP TABLE ingested_events_p20260305")
        keyless = conn.execute("SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = "
                               "'ingested_events'::regclass AND NOT EXISTS (SELECT 1 FROM pg_index "
                               "WHERE indrelid = inhrelid AND indisunique)").fetchall()
        assert keyless == []
        conn.execute("DELETE FROM ingested_events WHERE occurred_at >= '2026-03-04'")
    migrate(rollback_last=True)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'p' "
                            "AND conrelid = 'ingested_events'::regclass").fetchone() == (
            "PRIMARY KEY (event_key, occurred_at)",)
        assert insert(conn, "x", "2026-03-03T02:00:00Z")                     # the old key again
        assert conn.execute("SELECT count(*) FROM ingested_events").fetchone() == (7,)
