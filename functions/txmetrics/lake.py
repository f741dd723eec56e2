"""What backfill and rebuild share: reading raw files from the lake ahead of the work (a
few downloads in flight while the previous file is processed), reporting files in the
archive tier instead of failing on them, and progress (docs/lake.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Generic, Protocol, TypeVar

import pyarrow as pa
from azure.core.exceptions import ResourceNotFoundError

from .adapters import manifest, parquet
from .adapters.blob import BlobArchive
from .query import REHYDRATION_HOURS

T = TypeVar("T")
PREFETCH = 4              # files downloaded and decoded ahead of the one being written


@dataclass
class Progress:
    """Where a run stands, for a progress display: files done of planned, events read."""

    files_total: int = 0
    files_done: int = 0
    events: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


class DayCounts(Protocol):
    files: int
    events: int
    rows: int

    def record(self) -> dict[str, Any]: ...


D = TypeVar("D", bound=DayCounts)


class DailyReport(Generic[D]):
    """What a backfill or a rebuild did, per UTC day (`days`), and its totals."""

    days: dict[date, D]

    @property
    def files(self) -> int:
        return sum(d.files for d in self.days.values())

    @property
    def events(self) -> int:
        return sum(d.events for d in self.days.values())

    @property
    def rows(self) -> int:
        return sum(d.rows for d in self.days.values())

    def records(self) -> list[dict[str, Any]]:
        """One row per day, in day order (what the commands print)."""
        return [self.days[d].record() for d in sorted(self.days)]
CrashHook = Callable[[str], None]     # tests: called at "before_commit" in each file's transaction


@dataclass(frozen=True, slots=True)
class Read(Generic[T]):
    """A file of the plan, read: its table, or None when it is in the archive tier."""

    item: T
    table: pa.Table | None
    gone: bool = False          # `missing_ok` and the blob is not there (table None)


def _read(item: T, archive: BlobArchive, path: str, outbox: bytes | None, missing_ok: bool = False) -> Read[T]:
    if outbox is not None:              # committed, upload not yet confirmed: the outbox has the bytes
        return Read(item, parquet.decode(outbox))
    try:
        data = manifest.download_file(archive, path)
    except ResourceNotFoundError:
        if not missing_ok:
            raise
        return Read(item, None, gone=True)
    return Read(item, None if data is None else parquet.decode(data))


def read_ahead(archive: BlobArchive, items: Sequence[T], where: Callable[[T], tuple[str, bytes | None]], *,
               missing_ok: bool = False) -> Iterator[Read[T]]:
    """Each item's file, in order, downloaded and decoded by a small thread pool up to
    PREFETCH files ahead (pyarrow decodes without the GIL). Stopping early (an interrupt)
    cancels what is not started yet. `missing_ok`: a file whose blob is gone (a compaction
    merged and deleted it after the plan) comes back `gone` instead of raising."""
    pool = ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="txmetrics-lake-read")
    pending: list[Future[Read[T]]] = []
    try:
        upcoming = iter(items)
        for item in upcoming:
            path, outbox = where(item)
            pending.append(pool.submit(_read, item, archive, path, outbox, missing_ok))
            if len(pending) > PREFETCH:
                yield pending.pop(0).result()
        while pending:
            yield pending.pop(0).result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def archived_hint(paths: Sequence[str]) -> str:
    """What to do about files in the archive tier (as `txmetrics query` says it)."""
    hours = " or ".join(f"{p} (up to {h} h)" if p == "Standard" else f"{p} (under {h} h)"
                        for p, h in REHYDRATION_HOURS.items())
    return (f"{len(paths)} file(s) in the archive tier were not read: {' '.join(paths)}; re-run with --rehydrate "
            f"{hours} to bring them back, then run the same command again")
