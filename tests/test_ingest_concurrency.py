"""Several partitions in parallel processes, overlapping aggregate keys and even the same
events: no deadlock, nothing doubled, every aggregate equals a recomputation."""

from __future__ import annotations

import json
import multiprocessing as mp
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from localdev.synth import Generator
from tests.aggregate_check import recompute_and_compare
from tests.helpers import archive_rows, by_partition
from txmetrics.adapters.blob import BlobArchive
from txmetrics.core.catalog import load_catalog
from txmetrics.settings import BUNDLED_CATALOG

PARTITIONS = 4


def _worker(env: dict[str, str], partition: str, batches: list[list[tuple[bytes, int]]], out: Any) -> None:
    import os

    os.environ.update(env)
    try:
        from localdev.eventhub import make_batch
        from localdev.run import load_function

        fn = load_function()
        for batch in batches:
            fn(make_batch([b for b, _ in batch], partition_id=partition, sequence_numbers=[s for _, s in batch]))
        out.put((partition, "ok"))
    except BaseException as exc:  # reported to the parent, which fails the test
        out.put((partition, repr(exc)))


def _stamped_later(body: bytes, seconds: int) -> bytes:
    """The body with its occurred_at `seconds` later (0: the body itself)."""
    if not seconds:
        return body
    doc = json.loads(body)
    doc["occurred_at"] = (datetime.fromisoformat(doc["occurred_at"]) + timedelta(seconds=seconds)).isoformat()
    return json.dumps(doc).encode()


def test_parallel_partitions_with_overlapping_keys(env: dict[str, str], db: psycopg.Connection,
                                                   archive: BlobArchive) -> None:
    gen = Generator(seed=21, partitions=PARTITIONS, merchants=8, bad_rate=0.02,
                    start=datetime(2026, 3, 1, 12, 0, tzinfo=UTC), days=1 / 48)    # 30 minutes: dense windows
    events = list(gen.events(4000))
    per: dict[str, list[tuple[bytes, int]]] = {str(p): [] for p in range(PARTITIONS)}
    for e in events:
        per[e.partition_id].append((e.body, e.sequence_number))
    # the same 50 events also arrive on every partition (producer retries), at the same time;
    # partitions 1-3 get them with occurred_at stamped again, k seconds later (same UTC day):
    # one event_id a day is stored once, whichever copy commits first (migrations 0015-0016)
    shared = [e.body for e in events if e.bad_kind is None][:50]
    for k, items in enumerate(per.values()):
        base = len(items) + 10_000
        items.extend((_stamped_later(b, k), base + i) for i, b in enumerate(shared))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = []
    for p, items in per.items():
        # interleave the shared events early so the partitions really race for them
        items = items[-50:] + items[:-50]
        batches = [items[i:i + 250] for i in range(0, len(items), 250)]
        procs.append(ctx.Process(target=_worker, args=(env, p, batches, out)))
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert results == {p: "ok" for p in per}, results

    valid = [e for e in events if e.bad_kind is None]
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (len(valid),)
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (len(events) - len(valid),)
    ids = [json.loads(e.body)["event_id"] for e in valid]
    assert db.execute("SELECT count(DISTINCT event_id) FROM dynamic_metrics").fetchone() == (len(set(ids)),)
    rows = archive_rows(archive)
    assert len(rows) == len(valid) and len({r[2] for r in rows}) == len(valid)
    checked = recompute_and_compare(db, load_catalog(BUNDLED_CATALOG))
    assert checked > 100
    shared_keys = db.execute("SELECT count(*) FROM aggregate_histograms_current WHERE dimensions = '{}'").fetchone()[0]
    assert shared_keys > 0


def test_concurrent_invocations_in_one_worker_process(ingest_fn: Any, db: psycopg.Connection,
                                                      archive: BlobArchive) -> None:
    """The Python worker runs invocations for several partitions at once in its thread pool."""
    import threading

    from localdev.eventhub import make_batch

    gen = Generator(seed=5, partitions=4, merchants=6, bad_rate=0.0,
                    start=datetime(2026, 3, 1, 12, 0, tzinfo=UTC), days=1 / 96)
    events = list(gen.events(2000))
    per = by_partition(events)
    errors: list[BaseException] = []

    def run(partition: str, evs: list[Any]) -> None:
        try:
            for i in range(0, len(evs), 100):
                chunk = evs[i:i + 100]
                ingest_fn(make_batch([e.body for e in chunk], partition_id=partition,
                                     sequence_numbers=[e.sequence_number for e in chunk]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item) for item in per.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (len(events),)
    assert len(archive_rows(archive)) == len(events)
    recompute_and_compare(db, load_catalog(BUNDLED_CATALOG))
