"""Day partitions created while other partitions write: no deadlock, nothing lost.

Every batch here brings events for days that have no partition yet, in a different day
order per worker, while the other workers' batch transactions hold their row locks on
the partitioned parents. With `CREATE TABLE .. PARTITION OF` (ACCESS EXCLUSIVE on the
parent) a creator waits for the writers of one table while holding the other: the
`make run --days 3 --partitions 4` deadlock. Partitions are now created standalone and
attached (SHARE UPDATE EXCLUSIVE, which writers' ROW EXCLUSIVE does not conflict with).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests.aggregate_check import recompute_and_compare
from txmetrics.core.catalog import load_catalog
from txmetrics.settings import BUNDLED_CATALOG

WORKERS = 4
DAYS = 12
BATCHES = 8
PER_BATCH = 120


def _event(worker: int, batch: int, i: int, day: int) -> dict[str, Any]:
    moment = datetime(2026, 5, 1, tzinfo=UTC) + timedelta(days=day, minutes=(i * 7) % 1440)
    return {"event_id": f"w{worker}-b{batch}-{i}", "transaction_id": f"t{worker}-{batch}-{i}",
            "occurred_at": moment.isoformat().replace("+00:00", "Z"), "merchant_id": f"m{i % 5}",
            "amount": "10.00", "currency": "EUR", "payment_method": ("card", "wallet")[i % 2],
            "status": "approved", "processing_ms": 100 + i}


def _worker(env: dict[str, str], worker: int, start: Any, out: Any) -> None:
    import os

    os.environ.update(env)
    try:
        from localdev.eventhub import make_batch
        from localdev.run import load_function

        fn = load_function()
        rng = random.Random(worker)
        batches = []
        for b in range(BATCHES):
            # each batch spans 3 days that may not exist yet, in this worker's own order
            days = rng.sample(range(DAYS), 3)
            batches.append([json.dumps(_event(worker, b, i, days[i % 3])).encode() for i in range(PER_BATCH)])
        start.wait()
        for b, bodies in enumerate(batches):
            fn(make_batch(bodies, partition_id=str(worker), first_sequence=b * PER_BATCH))
        out.put((worker, "ok"))
    except BaseException as exc:  # reported to the parent, which fails the test
        out.put((worker, repr(exc)))


def test_new_day_partitions_under_concurrent_writers(env: dict[str, str], db: psycopg.Connection) -> None:
    # a fresh store: none of the days has a partition yet
    for table in ("dynamic_metrics", "ingested_events"):
        for (name,) in db.execute("SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                  "WHERE i.inhparent = %s::regclass", (table,)).fetchall():
            db.execute(f"DROP TABLE {name}")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_worker, args=(env, w, start, out)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == {w: "ok" for w in range(WORKERS)}, results

    expected = WORKERS * BATCHES * PER_BATCH
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (expected,)
    assert db.execute("SELECT count(DISTINCT event_id) FROM dynamic_metrics").fetchone() == (expected,)
    # one partition per day touched, per table, attached with the right bounds
    for table in ("dynamic_metrics", "ingested_events"):
        bounds = db.execute("SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
                            (table,)).fetchall()
        touched = db.execute(f"SELECT count(DISTINCT (occurred_at AT TIME ZONE 'UTC')::date) FROM {table}").fetchone()
        assert touched is not None and len(bounds) == touched[0] > 0
        assert all(b[0].startswith("FOR VALUES FROM ('2026-05-") for b in bounds), bounds
    recompute_and_compare(db, load_catalog(BUNDLED_CATALOG))
