"""Rebuild the database from the lake: after losing PostgreSQL, or to stand up a new
environment from an old one's archive (`txmetrics rebuild`; docs/lake.md).

From the Parquet files of a range of UTC days, found by listing the date folders (the
manifest may be gone), it restores the manifest (raw_files), the ledger (ingested_events)
and the events' dimensions, dynamic_metrics, and the aggregates, with the ingest code and
the catalog in effect; each file in one transaction:
  1. enter the file in the manifest (the path is unique: a file a run already restored, or
     one another run is restoring, is skipped; this is what makes a rebuild resumable);
  2. claim its events in the ledger, on the days the ledger keeps (`ledger_since`): an event
     already there (delivered again into the new database before the rebuild) is counted
     once, by whoever claimed it first;
  3. its metric rows, on the days dynamic_metrics keeps (`rows_since`), and its histograms
     as deltas (every day: aggregates are kept longest); commit.
Afterwards the deltas are folded and finished days rolled up, so KPIs equal the original
database's, and a redelivery of archived events (within the ledger's retention) adds
nothing. failed_items cannot come back: bad events never reach the lake.

Compaction leftovers: compaction outputs waiting in staging are settled first
(compaction.settle_staging): an interrupted compaction is finished, its surviving inputs
deleted, or undone, so the tree holds each event once. An archive from before staging
existed may still hold input files beside the compacted file holding their rows: compacted
files are read first each day; a file whose rows are all in that day's compacted files is
not restored, and is reported (delete it); rows partly covered are restored once. A row is
"in" a compacted file when it has the same (partition, sequence number, event_id)
(core.archive_keys): a later file whose distinct events re-use sequence numbers (a hub
recreated or failed over) is restored, never skipped.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .adapters import manifest, parquet, partitions
from .adapters.blob import ARCHIVE_TIER, BlobArchive, BlobInfo
from .adapters.manifest import RawFile
from .adapters.postgres import PostgresStore
from .compaction import StagingReport, settle_staging
from .core import histogram
from .core.archive_keys import ArchiveKeys
from .core.catalog import Catalog
from .core.events import PaymentEvent
from .core.metrics import (
    Aggregates,
    DimensionTuple,
    MetricRows,
    aggregate,
    dimension_keys,
    extract_metrics,
)
from .core.naming import compacted_generation, date_folder
from .core.tables import LEDGER
from .errors import InvalidRequestError
from .lake import CrashHook, DailyReport, Progress, ProgressCallback, read_ahead
from .rollup import fresh_days, roll_day
from .settings import Settings

FOLD_EVERY_FILES = 500        # keeps aggregate_deltas (and each fold) bounded during a long rebuild
@dataclass
class DayReport:
    day: date
    mode: str
    files: int = 0
    events: int = 0
    rows: int = 0
    aggregate_rows: int = 0
    already_in_ledger: int = 0         # events some other file (or a delivery) had claimed first
    leftover_files: int = 0            # compaction inputs whose rows are all in a compacted file
    archived: int = 0
    known_files: int = 0               # in the manifest already (a run before)

    def record(self) -> dict[str, Any]:
        return {"day": self.day, "mode": self.mode, "files": self.files, "events": self.events, "rows": self.rows,
                "aggregate_rows": self.aggregate_rows, "already_in_ledger": self.already_in_ledger,
                "leftover_files": self.leftover_files, "archived_files": self.archived,
                "already_restored_files": self.known_files}


@dataclass
class RebuildReport(DailyReport[DayReport]):
    start: date
    end: date
    days: dict[date, DayReport] = field(default_factory=dict)
    archived: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    staging: StagingReport = field(default_factory=StagingReport)     # compactions settled before planning
    rolled_up: list[date] = field(default_factory=list)
    seconds: float = 0.0
    restore_seconds: float = 0.0       # until every file was committed (then: the fold and the rollups)


def mode_of(day: date, rows_since: date | None, ledger_since: date | None) -> str:
    ledger = ledger_since is None or day >= ledger_since
    rows = rows_since is None or day >= rows_since
    if ledger and rows:
        return "ledger + rows + aggregates"
    if ledger:
        return "ledger + aggregates (dynamic_metrics past retention)"
    return "aggregates only (ledger and dynamic_metrics past retention)"


@dataclass(frozen=True, slots=True)
class _Planned:
    day: date
    blob: BlobInfo
    mine: bool = True            # this run's (shard's) to restore

    @property
    def compacted(self) -> bool:
        return compacted_generation(self.blob.name) is not None


def rebuild(*, store: PostgresStore, archive: BlobArchive, catalog: Catalog, start: date, end: date,
            rows_since: date | None = None, ledger_since: date | None = None, raw_since: date | None = None,
            today: date | None = None, progress: ProgressCallback | None = None, crash_hook: CrashHook | None = None,
            shard: tuple[int, int] = (0, 1), finish: bool = True) -> RebuildReport:
    """Restore the database from the archive's files of the UTC days [start, end).

    `rows_since` / `ledger_since`: the first day dynamic_metrics / the ledger keep (their
    retention; None: every day). `raw_since`: the first day the raw archive keeps (its
    lifecycle rule deletes older files; None: every day): a compaction output left in staging
    for an older day is never published back into the tree (compaction.settle_staging).
    Resumable: run it again after an interruption.
    `shard` (index, count): restore only the files whose path hashes to `index` (what
    `rebuild_in_parallel` gives each worker; every worker still reads the day's compacted
    files, to recognise compaction leftovers). `finish`: fold the deltas and roll up the
    finished days at the end (the parallel runner does it once, after its workers)."""
    if start >= end:
        raise InvalidRequestError(f"the range is empty: start {start} is not before end {end}")
    today = today or datetime.now(UTC).date()
    report = RebuildReport(start=start, end=end)
    state = Progress()
    days = [start + timedelta(days=i) for i in range((end - start).days)]
    if shard[1] == 1:      # rebuild_in_parallel settles once, before its workers plan
        report.staging = _settle(store, archive, days, raw_since)
        report.archived += report.staging.archived     # to rehydrate, then rebuild again
    planned = _plan(store, archive, days, rows_since, ledger_since, report, shard)
    state.files_total = sum(1 for p in planned if p.mine)
    conn = store.connection()
    if ledger_since is not None:    # the days before are not restored: their redeliveries are refused
        with conn.transaction():
            partitions.record_horizon(conn, table=LEDGER, kept_since=ledger_since)
    partitions.ensure_each_day(conn, table=LEDGER,
                               days={p.day for p in planned if ledger_since is None or p.day >= ledger_since})
    partitions.ensure_each_day(conn, table="dynamic_metrics",
                               days={p.day for p in planned if rows_since is None or p.day >= rows_since})
    seen: dict[date, ArchiveKeys] = {}    # per day, the keys of its compacted files
    since_fold = 0
    for read in read_ahead(archive, planned, lambda p: (p.blob.name, None)):
        item, table = read.item, read.table
        day = report.days[item.day]
        if table is None:
            report.archived.append(item.blob.name)
            day.archived += 1
            state.files_done += 1
            continue
        rows_seen = seen.setdefault(item.day, ArchiveKeys())
        if item.compacted:
            rows_seen.add(parquet.keys_of(table))
            if not item.mine:
                continue                      # another worker's: read for its rows only
        else:
            covered = rows_seen.contains(parquet.keys_of(table))
            if covered.all():
                report.leftovers.append(item.blob.name)
                day.leftover_files += 1
                state.files_done += 1
                continue
            if covered.any():
                day.already_in_ledger += int(covered.sum())
                table = table.filter(pa.array(~covered))
        prepared = _prepare(catalog, item, table,
                            ledger=ledger_since is None or item.day >= ledger_since,
                            rows=rows_since is None or item.day >= rows_since)
        outcome = _write(store, catalog, prepared, archive.container_name, crash_hook)
        if outcome is None:
            day.known_files += 1
        else:
            day.files += 1
            day.events += outcome.new
            day.already_in_ledger += outcome.duplicates
            day.rows += outcome.rows
            day.aggregate_rows += outcome.deltas
        state.files_done += 1
        state.events += len(prepared.events)
        since_fold += 1
        if since_fold >= FOLD_EVERY_FILES:
            store.fold_aggregates()
            since_fold = 0
        if progress is not None:
            progress(state)
    report.restore_seconds = state.seconds
    # a tree file settling could not read is met again by the plan: each named once
    report.archived = list(dict.fromkeys(report.archived))
    if finish:
        store.fold_aggregates()
        report.rolled_up = roll_up(store, sorted(report.days), today)
    report.seconds = state.seconds
    return report


def roll_up(store: PostgresStore, days: Sequence[date], today: date) -> list[date]:
    """Roll up the finished days without a fresh rollup (restored now, or by an interrupted
    run before); the days rolled up."""
    finished = [d for d in days if d < today]
    done = []
    with store.autocommit_connection() as auto:
        fresh = fresh_days(auto, finished[0], finished[-1]) if finished else set()
        for d in finished:
            if d not in fresh and roll_day(auto, d):
                done.append(d)
    return done


def _plan(store: PostgresStore, archive: BlobArchive, days: Sequence[date], rows_since: date | None,
          ledger_since: date | None, report: RebuildReport, shard: tuple[int, int]) -> list[_Planned]:
    """The day folders' Parquet files not in the manifest yet; per day, compacted ones first
    (all of them; the others of this shard only). Files in the archive tier (as listed) are
    reported, not read."""
    index, count = shard
    planned: list[_Planned] = []
    conn = store.connection()
    for d in days:
        blobs = [b for b in archive.list(date_folder(d) + "/") if b.name.endswith(".parquet")]
        if not blobs:
            continue
        day = report.days[d] = DayReport(d, mode_of(d, rows_since, ledger_since))
        with conn.transaction():
            known = manifest.paths_in_manifest(conn, paths=[b.name for b in blobs])
        for b in sorted(blobs, key=lambda b: (compacted_generation(b.name) is None, b.name)):
            mine = zlib.crc32(b.name.encode()) % count == index
            if b.name in known:
                day.known_files += int(mine)
                continue
            if b.tier == ARCHIVE_TIER:
                if mine:
                    report.archived.append(b.name)
                    day.archived += 1
                continue
            item = _Planned(d, b, mine)
            if mine or item.compacted:
                planned.append(item)
    return planned


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A file ready to write: its events, their dimension keys, their metric rows and
    histograms (computed before its transaction, so the transaction is short)."""

    item: _Planned
    record: RawFile
    events: Sequence[PaymentEvent]
    keys: list[int]
    dimensions: dict[int, DimensionTuple]
    metric_rows: MetricRows
    aggregates: Aggregates
    ledger: bool
    rows: bool


@dataclass(frozen=True, slots=True)
class _Outcome:
    new: int
    duplicates: int
    rows: int
    deltas: int


def _prepare(catalog: Catalog, item: _Planned, table: pa.Table, *, ledger: bool,
             rows: bool) -> _Prepared:
    events = parquet.events_from_table(table)
    keys: list[int] = []
    dimensions: dict[int, DimensionTuple] = {}
    if ledger:
        keys, dimensions = dimension_keys(events, catalog.extra_dimension_fields)
    pids = pc.unique(table.column("partition_id")).to_pylist()
    record = RawFile(
        path=item.blob.name, partition_id=pids[0] if len(pids) == 1 else "*",
        event_date=item.day, seq_min=int(pc.min(table.column("sequence_number")).as_py()),
        seq_max=int(pc.max(table.column("sequence_number")).as_py()),
        occurred_min_us=min(e.occurred_us for e in events), occurred_max_us=max(e.occurred_us for e in events),
        row_count=table.num_rows, byte_size=item.blob.size, generation=compacted_generation(item.blob.name),
        metrics=catalog.metric_names,
        # dated as its blob: retention drops the row when the blob rule deletes the blob (both
        # count from the blob's modification), not the rebuild's age later
        created_at=item.blob.last_modified)
    metric_rows = extract_metrics(events, catalog)
    return _Prepared(item, record, events, keys, dimensions, metric_rows, aggregate(events, metric_rows, catalog),
                     ledger, rows)


def _write(store: PostgresStore, catalog: Catalog, p: _Prepared, container: str, crash_hook: CrashHook | None
           ) -> _Outcome | None:
    """One file in one transaction; None when another run restored it already."""
    if p.ledger:
        store.ensure_dimensions(p.dimensions)

    def work(tx: Any) -> _Outcome | None:
        file_id = manifest.insert_uploaded(tx.conn, file=p.record, container=container, skip_existing=True)
        if file_id is None:
            return None                                   # restored by another run
        new, metric_rows, aggregates = p.events, p.metric_rows, p.aggregates
        if p.ledger:
            taken = tx.claim_events(p.events, p.keys)
            if taken:                                     # some claimed before (rare): only the others count
                new = [e for e in p.events if (e.event_id, e.occurred_us) not in taken]
                metric_rows = extract_metrics(new, catalog)
                aggregates = aggregate(new, metric_rows, catalog)
        written = tx.insert_metrics(metric_rows) if p.rows else 0
        deltas = tx.append_deltas(aggregates, histogram.SCALE)
        if crash_hook is not None:
            crash_hook("before_commit")
        return _Outcome(len(new), len(p.events) - len(new), written, deltas)

    outcome = store.run_batch(work)
    assert outcome is None or isinstance(outcome, _Outcome)
    return outcome


def retention_since(retention: dict[str, int], today: date) -> tuple[date | None, date | None, date | None]:
    """(rows_since, ledger_since, raw_since) from a table retention in days ({table: days},
    as the lifecycle policy renders it; raw_files follows the raw archive's delete rule): the
    first day each keeps."""
    def first_kept(table: str) -> date | None:
        days = retention.get(table)
        return None if days is None else today - timedelta(days=days)

    # the blob rule deletes a file once its age *exceeds* the days: on `today - days` a file
    # written early that day may be gone already, so that day is no longer whole
    raw_since = first_kept("raw_files")
    return (first_kept("dynamic_metrics"), first_kept("ingested_events"),
            None if raw_since is None else raw_since + timedelta(days=1))


def rebuild_in_parallel(settings: Settings, *, workers: int, start: date, end: date, rows_since: date | None = None,
                        ledger_since: date | None = None, raw_since: date | None = None, today: date | None = None,
                        progress: ProgressCallback | None = None) -> RebuildReport:
    """`rebuild` in `workers` processes, each restoring the files of its shard (every file
    once: the shards split them by path, and the manifest's unique path would stop a second
    restore anyway); then the fold and the rollups, once. Settings (not connections) go to
    the workers: each opens its own. An interrupt (Ctrl-C reaches every process of the
    group) rolls back each worker's file in flight; run it again to resume."""
    if start >= end:
        raise InvalidRequestError(f"the range is empty: start {start} is not before end {end}")
    if workers < 1:
        raise InvalidRequestError(f"workers must be at least 1, got {workers}")
    today = today or datetime.now(UTC).date()
    from .pipeline import storage_of

    store, archive = storage_of(settings)
    try:
        staging = _settle(store, archive, [start + timedelta(days=i) for i in range((end - start).days)], raw_since)
    finally:
        store.close()
    context = mp.get_context("spawn")
    messages: Any = context.Queue()
    processes = [context.Process(target=_worker, name=f"txmetrics-rebuild-{i}", daemon=True,
                                 args=(settings, (i, workers), start, end, rows_since, ledger_since, today, messages))
                 for i in range(workers)]
    for p in processes:
        p.start()
    state = Progress()
    totals: dict[int, tuple[int, int, int]] = {}
    reports: list[RebuildReport] = []
    done: set[int] = set()
    try:
        while len(reports) < workers:
            try:
                kind, index, payload = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [p for i, p in enumerate(processes) if p.exitcode is not None and i not in done]
                if dead:
                    raise RuntimeError(f"rebuild worker {dead[0].name} died (exit code {dead[0].exitcode}); "
                                       "run the same command again to resume") from None
                continue
            if kind == "error":
                raise payload
            if kind == "done":
                reports.append(payload)
                done.add(index)
                continue
            totals[index] = payload
            state.files_done, state.files_total, state.events = (sum(t[i] for t in totals.values()) for i in range(3))
            if progress is not None:
                progress(state)
    finally:
        for p in processes:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    merged = _merge(reports, start, end)
    merged.staging = staging
    merged.archived = list(dict.fromkeys([*merged.archived, *staging.archived]))   # each named once, as in rebuild
    merged.restore_seconds = state.seconds
    store = PostgresStore(settings.require_database(), entra=settings.database_auth == "entra",
                          managed_identity_client_id=settings.managed_identity_client_id)
    try:
        store.fold_aggregates()
        merged.rolled_up = roll_up(store, sorted(merged.days), today)
    finally:
        store.close()
    merged.seconds = state.seconds
    return merged


def _settle(store: PostgresStore, archive: BlobArchive, days: Sequence[date], raw_since: date | None
            ) -> StagingReport:
    """Compactions' outputs waiting in staging, settled before any file is planned: a worker
    planning while another published an output would miss it (its inputs are gone)."""
    with store.autocommit_connection() as auto:
        return settle_staging(auto, archive, days, raw_since=raw_since)


def _worker(settings: Settings, shard: tuple[int, int], start: date, end: date, rows_since: date | None,
            ledger_since: date | None, today: date, messages: Any) -> None:
    from .core.catalog import load_catalog
    from .pipeline import storage_of

    index = shard[0]
    store, archive = storage_of(settings)
    try:
        report = rebuild(store=store, archive=archive, catalog=load_catalog(settings.metric_catalog), start=start,
                         end=end, rows_since=rows_since, ledger_since=ledger_since, today=today, shard=shard,
                         finish=False,
                         progress=lambda s: messages.put(("progress", index, (s.files_done, s.files_total, s.events))))
        messages.put(("done", index, report))
    except KeyboardInterrupt:
        pass                               # the parent got it too and says so
    except Exception as exc:               # handed to the parent, which raises it (a domain error stays one)
        try:
            pickle.dumps(exc)
            messages.put(("error", index, exc))
        except Exception:  # not picklable: its message then
            messages.put(("error", index, RuntimeError(f"rebuild worker {index}: {type(exc).__name__}: {exc}")))
    finally:
        store.close()


def _merge(reports: Sequence[RebuildReport], start: date, end: date) -> RebuildReport:
    merged = RebuildReport(start=start, end=end)
    for r in reports:
        merged.archived += r.archived
        merged.leftovers += r.leftovers
        for d, day in r.days.items():
            into = merged.days.setdefault(d, DayReport(d, day.mode))
            for name in ("files", "events", "rows", "aggregate_rows", "already_in_ledger", "leftover_files",
                         "archived", "known_files"):
                setattr(into, name, getattr(into, name) + getattr(day, name))
    merged.archived.sort()
    merged.leftovers.sort()
    return merged
