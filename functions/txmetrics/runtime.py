"""Pipelines built from the settings and reused across invocations (connections to
PostgreSQL and Blob Storage stay open between batches).

One pipeline per thread: the Python worker may run invocations for several partitions at
once in its thread pool, and a batch owns its connection's transaction, so threads must
not share a connection. The cache is keyed on the settings: when the environment changes
(tests, local runs pointing at other services), the next call builds a fresh pipeline.
"""

from __future__ import annotations

import gc
import threading

from .pipeline import Pipeline
from .settings import Settings

_local = threading.local()
_lock = threading.Lock()
_all: list[Pipeline] = []
_frozen = False


def get_pipeline() -> Pipeline:
    settings = Settings.from_env()
    current: tuple[Settings, Pipeline] | None = getattr(_local, "current", None)
    if current is None or current[0] != settings:
        if current is not None:
            _forget(current[1])
        pipeline = Pipeline.from_settings(settings)
        _freeze_long_lived_objects()
        with _lock:
            _all.append(pipeline)
        _local.current = current = (settings, pipeline)
    return current[1]


def _freeze_long_lived_objects() -> None:
    """Once per process, after its first pipeline is built: what exists then (the modules, the
    catalog, the pipeline and its clients) lives as long as the worker. gc.freeze moves it out
    of the cyclic collector's generations, so the collections that each batch's short-lived
    objects set off stop walking it every time (Python docs, gc.freeze). Frozen objects are
    still freed by reference counting; only cycles among them are never collected. Measured
    in the profile harness: time in the collector 1.7 -> 0.6-0.8 us per event
    (docs/decisions.md, "Collector in the function worker")."""
    global _frozen
    with _lock:
        if not _frozen:
            gc.collect()        # garbage of the start-up, freed now rather than kept for good
            gc.freeze()
            _frozen = True


def _forget(pipeline: Pipeline) -> None:
    pipeline.store.close()
    with _lock:
        if pipeline in _all:
            _all.remove(pipeline)


def reset() -> None:
    """Close every pipeline's connections (all threads); the next call builds new ones."""
    with _lock:
        pipelines = list(_all)
        _all.clear()
    for pipeline in pipelines:
        pipeline.store.close()     # a closed store reconnects on its next use
    _local.current = None
