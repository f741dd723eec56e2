"""The cyclic garbage collector around trigger batches (function_app.ingest)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# While batches overlap, every batch end collects what the collector would have by then: the
# young generation each time, the middle one every 10th end, all of them every 100th (the
# ratios of CPython's default thresholds, 700/10/10, with a batch end for 700 allocations).
MIDDLE_EVERY = 10
OLDEST_EVERY = 100

_lock = threading.Lock()
_pauses = 0                  # batches running now, in any thread
_paused_by_us = False        # the collector was on when the first of them began
_ends_while_paused = 0       # batch ends that left another one running, since the pause began


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a trigger batch is processed.

    A batch allocates some ten containers per event (documents, events, rows) that live
    until it ends: a 1,000-event batch set off about 11 young and one older collection, each
    walking every container still alive, to find no cycle worth the walk; reference counting
    frees them all at the end anyway. `timeit` turns the collector off for the same reason.
    Measured: time in the collector 1.5 -> 0.5 us per event in the profile harness; in
    `make bench` the round's changes together lowered the workers' CPU by a median 0.5 us
    per event (docs/benchmarks.md, round 6).

    A batch does leave a few cycles (the Storage SDK's serializers, about 15 objects per
    batch; the traceback of a batch that raises), so they must still be collected:
    * when the last batch running in the process ends (returning or raising), the collector
      is on again, and the first allocation after it sets off the young collection;
    * when batches overlap (the worker runs several partitions' batches at once in its
      thread pool, and under load one starts before the other ends, so the count of running
      batches may never reach 0), each batch end that leaves another running collects
      explicitly (MIDDLE_EVERY, OLDEST_EVERY above). Without this the collector stayed off
      for as long as the load lasted and cyclic garbage grew without bound.

    A collector turned off before the first batch began stays off (nothing is collected
    here then either); one turned off by someone else while a batch runs is turned on again
    when the last batch ends."""
    global _pauses, _paused_by_us, _ends_while_paused
    with _lock:
        if _pauses == 0:
            _paused_by_us = gc.isenabled()
            _ends_while_paused = 0
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        generation = None
        with _lock:
            _pauses -= 1
            if _pauses == 0:
                if _paused_by_us:
                    _paused_by_us = False
                    gc.enable()
            elif _paused_by_us:
                _ends_while_paused += 1
                generation = (2 if _ends_while_paused % OLDEST_EVERY == 0
                              else 1 if _ends_while_paused % MIDDLE_EVERY == 0 else 0)
        if generation is not None:
            gc.collect(generation)      # outside the lock: other batches may begin and end meanwhile
