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
    at the end anyway. Measured in the profile harness: 1.2-1.5 us per event of collector
    time, 1.5-1.9 us of worker CPU per event saved (docs/decisions.md, "Collector in the
    function worker"). The same reasoning is why `timeit` turns the collector off. What a
    batch leaves in cycles (none is known) is collected after it, by the one young collection
    its first allocation then sets off. A collector someone else turned off stays off."""
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
