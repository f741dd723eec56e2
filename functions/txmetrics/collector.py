"""The cyclic garbage collector around trigger batches (function_app.ingest)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pauses = 0                  # batches decoding or running now, in any thread
_paused_by_us = False        # the collector was on when the first of them began


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a trigger batch is processed, on again when the
    last batch running in the process ends (raising or not).

    A batch allocates some ten containers per event (documents, events, rows) that live
    until it ends: a 1,000-event batch set off about 11 young and one older collection, each
    walking every container still alive, to find no cycle; reference counting frees them all
    at the end anyway. Measured: time in the collector 1.5 -> 0.5 us per event in the profile
    harness; in `make bench`'s interleaved pairs the workers' CPU fell by a median 0.5 us
    per event (docs/benchmarks.md, round 6). `timeit` turns the collector off for the same
    reason. What a batch leaves in cycles (none is known) is collected after it, by the one
    young collection its first allocation then sets off. A collector someone else turned
    off stays off."""
    global _pauses, _paused_by_us
    with _lock:
        if _pauses == 0:
            _paused_by_us = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _paused_by_us:
                _paused_by_us = False
                gc.enable()
