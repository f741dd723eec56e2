"""The outbox's statements after an outage of Blob Storage: raw_file_outbox is a queue (every
upload deletes its row), so ANALYZE and VACUUM find it (nearly) empty and PostgreSQL estimates
it at 0 rows whatever it holds, and files are rarely pending when raw_files is analysed. Then
thousands of files wait for their upload, and every statement that joins the two must not
compare every outbox row with every file (adapters/plans.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg
import pytest

from tests.helpers import explaining, join_filter_rejections
from txmetrics.adapters import manifest

DAY = date(2026, 3, 1)
_FILES = """
    WITH f AS (
        INSERT INTO raw_files (id, path, container, partition_id, event_date, seq_min, seq_max, occurred_min,
                               occurred_max, row_count, byte_size, state)
        SELECT nextval('raw_files_id_seq'), %(tag)s || i, 'raw', (i %% 4)::text, %(day)s, i, i,
               %(day)s::timestamp AT TIME ZONE 'UTC', %(day)s::timestamp AT TIME ZONE 'UTC', 10, 100, 'pending'
          FROM generate_series(1, %(n)s) AS i
        RETURNING id)
    INSERT INTO raw_file_outbox (raw_file_id, content) SELECT id, '\\x50415231'::bytea FROM f"""


def test_the_outbox_statements_stay_linear_after_a_backlog_on_a_queue_analysed_empty(db: psycopg.Connection) -> None:
    # the usual state: earlier files uploaded, their outbox rows deleted, both tables analysed
    db.execute(_FILES, {"tag": "old/", "day": date(2026, 2, 20), "n": 3000})
    db.execute("UPDATE raw_files SET state = 'uploaded', uploaded_at = now()")
    db.execute("DELETE FROM raw_file_outbox")
    for table in ("raw_files", "raw_file_outbox"):
        db.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")   # keeps these statistics
    try:
        db.execute("ANALYZE raw_files")
        db.execute("ANALYZE raw_file_outbox")
        relpages, reltuples = db.execute("SELECT relpages, reltuples FROM pg_class "
                                         "WHERE oid = 'raw_file_outbox'::regclass").fetchone()
        assert relpages > 0 and reltuples == 0          # the statistics that mislead the planner
        db.execute(_FILES, {"tag": "new/", "day": DAY, "n": 2000})   # Blob Storage was down: a backlog
        start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
        with explaining(db, "raw_file_outbox o") as plans:       # the plans they run with, where they run
            with db.transaction():
                assert len(manifest.pending_uploads(db, partition_id=None)) == 2000
            with db.transaction():
                assert len(manifest.pending_uploads(db, partition_id="1")) == 500
            assert len(manifest.files_in_range(db, start=start, end=end)) == 2000
            assert len(manifest.files_lacking_metric(db, metric="amount", start=start, end=end)) == 2000
    finally:
        for table in ("raw_files", "raw_file_outbox"):
            db.execute(f"ALTER TABLE {table} RESET (autovacuum_enabled)")
    assert len(plans) == 4
    # a nested loop over (outbox rows x pending files) rejects about files^2 / 2 rows here
    rejected = {f"{i}: {sql.split('FROM')[0].strip()}": join_filter_rejections(plan["Plan"])
                for i, (sql, plan) in enumerate(plans)}
    assert not any(rejected.values()), rejected


def test_pending_uploads_refuses_to_run_outside_a_transaction(db: psycopg.Connection) -> None:
    """Its row locks are what keeps two uploaders off one file (manifest.pending_uploads): on
    an autocommit connection outside a transaction they would end with the statement."""
    with pytest.raises(ValueError, match="inside one"):
        manifest.pending_uploads(db, partition_id=None)
    with db.transaction():
        assert manifest.pending_uploads(db, partition_id=None) == []
