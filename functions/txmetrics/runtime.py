"""Process-wide pipeline, built once from the settings and reused across invocations
(connections to PostgreSQL and Blob Storage stay open between batches).

The cache is keyed on the settings: when the environment changes (tests, local runs
pointing at other services), the next call builds a fresh pipeline.
"""

from __future__ import annotations

import threading

from .pipeline import Pipeline
from .settings import Settings

_lock = threading.Lock()
_current: tuple[Settings, Pipeline] | None = None


def get_pipeline() -> Pipeline:
    global _current
    settings = Settings.from_env()
    with _lock:
        if _current is None or _current[0] != settings:
            if _current is not None:
                _current[1].store.close()
            _current = (settings, Pipeline.from_settings(settings))
        return _current[1]


def reset() -> None:
    global _current
    with _lock:
        if _current is not None:
            _current[1].store.close()
        _current = None
