"""The cyclic collector is paused while a trigger batch is processed (txmetrics/collector.py),
and comes back on however the batch ends."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from localdev.eventhub import decode, host_payload
from txmetrics import collector, runtime
from txmetrics.collector import collector_paused

BASE = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": 1,
        "currency": "USD", "payment_method": "card", "status": "approved", "attributes": {"risk_score": 0.5}}


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of every collection that starts while the test runs."""
    started: list[int] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(info["generation"])

    assert gc.isenabled()
    gc.callbacks.append(callback)
    try:
        yield started
    finally:
        gc.callbacks.remove(callback)
        gc.enable()


def test_the_control_thousands_of_containers_set_off_collections(collections: list[int]) -> None:
    """Without the pause, what a batch allocates sets off collections (so the tests below can fail)."""
    kept = [{"n": i} for i in range(5_000)]
    assert len(kept) == 5_000 and collections


def test_a_batch_is_processed_without_a_collection(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                   collections: list[int]) -> None:
    """From the function's start to its last step (the upload) no collection starts, although
    3,000 events' documents, rows and files are alive; afterwards the collector is on."""
    pipeline = runtime.get_pipeline()        # built (and the start-up frozen) before counting
    events = decode(*host_payload([{**BASE, "event_id": f"e{i}"} for i in range(3_000)], partition_id="0"))
    steps: list[tuple[str, int, bool]] = []
    pipeline.crash_hook = lambda step: steps.append((step, len(collections), gc.isenabled()))
    collections.clear()
    try:
        ingest_fn(events)
    finally:
        pipeline.crash_hook = None
    assert steps == [("before_commit", 0, False), ("after_commit", 0, False), ("after_upload", 0, False)]
    assert gc.isenabled()
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (3_000,)


def test_the_collector_is_back_on_when_a_batch_raises(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                      collections: list[int]) -> None:
    pipeline = runtime.get_pipeline()
    seen: list[bool] = []

    def crash(step: str) -> None:
        seen.append(gc.isenabled())
        raise RuntimeError("the batch fails (injected by the test)")

    pipeline.crash_hook = crash
    try:
        with pytest.raises(RuntimeError):
            ingest_fn(decode(*host_payload([{**BASE, "event_id": "x"}])))
    finally:
        pipeline.crash_hook = None
    assert seen == [False] and gc.isenabled()


def test_overlapping_batches_turn_it_on_when_the_last_one_ends() -> None:
    """The worker runs several partitions' batches at once in its thread pool: the collector
    stays off until every one of them has ended, whatever the order."""
    first_in, release = threading.Event(), threading.Event()

    def batch() -> None:
        with collector_paused():
            first_in.set()
            release.wait(10)

    assert gc.isenabled()
    thread = threading.Thread(target=batch)
    thread.start()
    first_in.wait(10)
    with collector_paused():
        assert not gc.isenabled()
        release.set()
        thread.join(10)
        assert not gc.isenabled()       # the other batch ended first: this one still runs paused
    assert gc.isenabled()
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("a batch fails")
    assert gc.isenabled()


class _Cycle:
    """Cyclic garbage once dropped: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


class _LongBatch:
    """A batch running in another thread until released (another partition's, under load)."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with collector_paused():
            self.started.set()
            self.release.wait(30)

    def __enter__(self) -> _LongBatch:
        self.thread.start()
        assert self.started.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.thread.join(10)


def test_overlapping_batches_still_collect_what_each_leaves_behind() -> None:
    """Under load some batch is always running, so the collector is never back on: each batch
    end that leaves another running collects the young generation itself (before, cyclic
    garbage piled up for as long as the load lasted)."""
    with _LongBatch():
        with collector_paused():
            garbage = weakref.ref(_Cycle())            # a cycle this batch leaves behind
        assert garbage() is None and not gc.isenabled()


def test_garbage_that_outlived_a_batch_end_is_collected_within_ten_more() -> None:
    """A cycle still in use at one batch end (so moved to an older generation) and dropped
    later is collected by the middle generation's collection, at most MIDDLE_EVERY ends on."""
    with _LongBatch():
        with collector_paused():
            kept = _Cycle()
        garbage = weakref.ref(kept)
        del kept                                       # dropped after the young collection moved it
        ends = 0
        while garbage() is not None and ends < collector.MIDDLE_EVERY:
            with collector_paused():
                pass
            ends += 1
        assert garbage() is None and not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_turned_off_by_someone_else_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
