"""Plans that statistics cannot make quadratic.

Some statements join inputs whose row counts PostgreSQL cannot know when it plans them: a
queue table analysed while empty (reltuples = 0 over its pages: every later fill estimated at
0 rows), rows written since the last ANALYZE (a time range beyond the column's histogram: 1
row), filters on jsonb key sets (a default guess). On such an estimate the planner joins by a
nested loop whose inner side is a scan with a join filter, every row against every row. The
statements named here run with nested loops off for their joins, so they are hash or merge
joins, linear whatever the estimate (migration 0017 does the same for the fold).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg


@contextlib.contextmanager
def without_nested_loops(conn: psycopg.Connection) -> Iterator[None]:
    """The statements run inside join by hash or merge joins only (enable_nestloop off for
    this transaction while inside; a lateral unnest, which only a nested loop can run, keeps
    one). Opens a transaction when none is open (autocommit callers such as the daily rollup),
    else restores the setting on the way out.

    Measured without it: kpi.query over windows written since the last ANALYZE of
    aggregate_histograms (6 hours by merchant, 100 merchants) 36.5 s instead of 1.0 s, by
    merchant and method cancelled after 180 s instead of 4 s; the outbox's pending files
    after an outage of Blob Storage, the outbox analysed empty (20,000 files) 71 s instead of
    0.1 s."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        with conn.transaction():
            conn.execute("SET LOCAL enable_nestloop = off")
            yield
        return
    row = conn.execute("SELECT (SELECT current_setting('enable_nestloop')), "
                       "set_config('enable_nestloop', 'off', true)").fetchone()
    try:
        yield
    finally:
        # an error leaves the transaction aborted: its rollback undoes the setting
        if row is not None and conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS:
            conn.execute("SELECT set_config('enable_nestloop', %s, true)", (row[0],))
