"""Backfill: compute one metric of the catalog in effect for a time range from the Parquet
lake, into dynamic_metrics and the aggregates, exactly once (contract section 6,
`txmetrics backfill`; docs/lake.md).

The unit of work is a raw file. The manifest records which metrics each file's events
already have (raw_files.metrics, migration 0009: set by ingest from its catalog, kept by
compaction, extended here). For every live file of the range that lacks the metric, one
transaction:
  1. locks the file's manifest row and checks again that it is live and lacks the metric
     (another run may have just done it: then nothing more);
  2. computes the metric for the file's events with the ingest code (the archived payload
     decoded as ingest decoded it; `extract_metrics`, `aggregate` over the same dimension
     sets), so rows and aggregates equal what ingest would have written;
  3. COPYs the rows into dynamic_metrics, when the day's partition exists (retention has
     not dropped it: otherwise the day gets aggregates only, and the report says so), and
     the histograms into aggregate_deltas;
  4. adds the metric to the file's list; commit.
So a second run, a concurrent one, or a run killed anywhere and started again, adds
nothing twice; live late events land in new files that carry the metric already (or, from
a function still on the old catalog, that lack it and are picked up by the next pass).
Files written before migration 0009 have no list: their events are looked up one by one
in dynamic_metrics instead (days past retention: left alone, and said so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Any

import psycopg

from .adapters import manifest, parquet, partitions
from .adapters.blob import BlobArchive
from .adapters.manifest import ManifestFile
from .adapters.postgres import PostgresStore
from .core import histogram
from .core.catalog import Catalog
from .core.events import PaymentEvent
from .core.metrics import aggregate, extract_metrics
from .errors import InvalidRequestError
from .lake import CrashHook, DailyReport, Progress, ProgressCallback, read_ahead

MAX_PASSES = 5            # files lacking the metric that keep appearing: a function still on the old catalog
ROWS_AND_AGGREGATES = "rows + aggregates"
AGGREGATES_ONLY = "aggregates only (dynamic_metrics partition dropped by retention)"


@dataclass
class DayReport:
    day: date
    mode: str = ROWS_AND_AGGREGATES
    files: int = 0
    events: int = 0
    rows: int = 0
    aggregate_rows: int = 0
    archived: int = 0
    skipped_legacy: int = 0

    def record(self) -> dict[str, Any]:
        return {"day": self.day, "mode": self.mode, "files": self.files, "events": self.events, "rows": self.rows,
                "aggregate_rows": self.aggregate_rows, "archived_files": self.archived,
                "skipped_legacy_files": self.skipped_legacy}


@dataclass
class BackfillReport(DailyReport[DayReport]):
    metric: str
    start: datetime
    end: datetime
    days: dict[date, DayReport] = field(default_factory=dict)
    archived: list[str] = field(default_factory=list)          # files in the archive tier, not read
    skipped_legacy: list[str] = field(default_factory=list)    # pre-0009 files past dynamic_metrics retention
    left_lacking: int = 0            # files still lacking the metric after MAX_PASSES passes
    passes: int = 0
    seconds: float = 0.0

    def day(self, d: date) -> DayReport:
        return self.days.setdefault(d, DayReport(d))

    @property
    def aggregates_only_days(self) -> list[date]:
        """Days that got aggregates and no rows (a day whose files were all archived got nothing)."""
        return sorted(d.day for d in self.days.values() if d.mode != ROWS_AND_AGGREGATES and d.files)


def metric_of(catalog: Catalog, name: str) -> Catalog:
    """The catalog restricted to one metric (same dimension sets and windows), or
    InvalidRequestError naming the metrics the catalog has."""
    for metric in catalog.metrics:
        if metric.name == name:
            return replace(catalog, metrics=(metric,))    # every other field kept
    raise InvalidRequestError(f"unknown metric {name!r}: the catalog in effect ({catalog.path}) defines "
                              f"{', '.join(catalog.metric_names)}; add it there first (backfill computes a metric as "
                              "the catalog defines it)")


def backfill(*, store: PostgresStore, archive: BlobArchive, catalog: Catalog, metric: str, start: datetime,
             end: datetime, progress: ProgressCallback | None = None, crash_hook: CrashHook | None = None
             ) -> BackfillReport:
    """Compute `metric` (as `catalog` defines it) for the events of [start, end) from the lake:
    whole files, so every event of a file that overlaps the range (a compacted file covers
    its UTC day). Exactly once; interruptible at any point and resumed by running it again."""
    if start >= end:
        raise InvalidRequestError(f"the range is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    one = metric_of(catalog, metric)
    report = BackfillReport(metric=metric, start=start, end=end)
    state = Progress()
    left_alone: set[str] = set()      # archived or legacy-past-retention: reported once, not retried in this run
    conn = store.connection()
    for _ in range(MAX_PASSES):
        with conn.transaction():
            planned = [f for f in manifest.files_lacking_metric(conn, metric=metric, start=start, end=end)
                       if f.path not in left_alone]
        if not planned:
            break
        report.passes += 1
        state.files_total += len(planned)
        with conn.transaction():
            with_rows = partitions.existing_days(conn, table="dynamic_metrics", days={f.event_date for f in planned})
        for read in read_ahead(archive, planned, lambda f: (f.path, f.outbox), missing_ok=True):
            f = read.item
            day = report.day(f.event_date)
            if f.event_date not in with_rows:
                day.mode = AGGREGATES_ONLY
            if read.gone:
                # compacted since the plan (merged, then deleted): its output, which lacks the
                # metric, comes up in the next pass. A file still live whose blob is gone is not
                # that: said, not passed over
                with conn.transaction():
                    if manifest.live_ids_of(conn, paths=[f.path]):
                        raise RuntimeError(f"raw file {f.path} is in the manifest as live, but its blob is gone "
                                           "from the container; nothing was written for it")
            elif read.table is None:
                report.archived.append(f.path)
                left_alone.add(f.path)
                day.archived += 1
            else:
                events = parquet.events_from_table(read.table)
                done = _backfill_file(store, f, events, one, rows=f.event_date in with_rows, crash_hook=crash_hook)
                if done is None:         # the day's partition was dropped meanwhile: aggregates only
                    with_rows.discard(f.event_date)
                    day.mode = AGGREGATES_ONLY
                    done = _backfill_file(store, f, events, one, rows=False, crash_hook=crash_hook)
                assert done is not None
                if done.skipped_legacy:
                    report.skipped_legacy.append(f.path)
                    left_alone.add(f.path)
                    day.skipped_legacy += 1
                elif done.written:
                    day.files += 1
                    day.events += done.events
                    day.rows += done.rows
                    day.aggregate_rows += done.aggregate_rows
                state.events += len(events)
            state.files_done += 1
            if progress is not None:
                progress(state)
    else:
        with conn.transaction():
            report.left_lacking = sum(1 for f in manifest.files_lacking_metric(conn, metric=metric, start=start, end=end)
                                      if f.path not in left_alone)
    report.seconds = state.seconds
    return report


@dataclass(frozen=True, slots=True)
class _FileOutcome:
    written: bool = False          # False: another run had done it (or the file is gone)
    events: int = 0
    rows: int = 0
    aggregate_rows: int = 0
    skipped_legacy: bool = False


def _backfill_file(store: PostgresStore, f: ManifestFile, events: Sequence[PaymentEvent], one: Catalog, *,
                   rows: bool, crash_hook: CrashHook | None) -> _FileOutcome | None:
    """One file in one transaction. None: the day's dynamic_metrics partition is gone
    (dropped by retention since the plan), nothing written."""
    metric = one.metrics[0].name

    def work(tx: Any) -> _FileOutcome:
        locked = manifest.lock_file(tx.conn, file_id=f.id)
        if locked is None or locked[0] not in manifest.LIVE_STATES:
            return _FileOutcome()                     # compacted meanwhile: its output is in the next pass
        _, metrics = locked
        todo: Sequence[PaymentEvent] = events
        if metrics is not None:
            if metric in metrics:
                return _FileOutcome()                 # done by another run
        elif not rows:
            return _FileOutcome(skipped_legacy=True)  # which events have it? no ledger or rows left to tell
        else:
            have = manifest.events_with_metric(tx.conn, metric=metric, events=events)
            todo = [e for e in events if (e.event_id, e.occurred_us) not in have]
        metric_rows = extract_metrics(todo, one)
        written_rows = tx.insert_metrics(metric_rows) if rows else 0
        written_aggregates = tx.append_deltas(aggregate(todo, metric_rows, one), histogram.SCALE)
        manifest.add_metric(tx.conn, file_id=f.id, metric=metric)
        if crash_hook is not None:
            crash_hook("before_commit")
        return _FileOutcome(written=True, events=len(todo), rows=written_rows, aggregate_rows=written_aggregates)

    try:
        outcome = store.run_batch(work)
    except psycopg.errors.CheckViolation as exc:
        if rows and "no partition" in str(exc):
            return None
        raise
    assert isinstance(outcome, _FileOutcome)
    return outcome
