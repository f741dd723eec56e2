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

Compaction leftovers: a crash between a compaction's commit and the deletion of its inputs
leaves input files beside the output that holds their rows. Compacted files are read first
each day; a file whose (partition, sequence number) rows are all in that day's compacted
files is not restored, and is reported (delete it); rows partly covered are restored once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from .adapters import manifest, parquet
from .adapters.blob import BlobArchive, BlobInfo
from .adapters.manifest import RebuiltFile
from .adapters.postgres import PostgresStore
from .core import histogram
from .core.catalog import Catalog
from .core.events import PaymentEvent
from .core.metrics import DimensionTuple, aggregate, dimension_key, dimension_tuple, extract_metrics
from .core.naming import date_folder
from .errors import InvalidRequestError
from .lake import ARCHIVED_TIER, CrashHook, Progress, ProgressCallback, read_ahead
from .rollup import fresh_days, roll_day

FOLD_EVERY_FILES = 500        # keeps aggregate_deltas (and each fold) bounded during a long rebuild
_COMPACTED = re.compile(r"/compacted-[0-9]{8}-(?P<generation>[0-9a-f]+)-[0-9]{4}\.parquet$")


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
class RebuildReport:
    start: date
    end: date
    days: dict[date, DayReport] = field(default_factory=dict)
    archived: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    rolled_up: list[date] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return sum(d.files for d in self.days.values())

    @property
    def events(self) -> int:
        return sum(d.events for d in self.days.values())

    def records(self) -> list[dict[str, Any]]:
        return [self.days[d].record() for d in sorted(self.days)]


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

    @property
    def compacted(self) -> bool:
        return _COMPACTED.search(self.blob.name) is not None


class _SeenRows:
    """(partition_id, sequence_number) of a day's compacted rows, exactly: per partition a
    sorted array of sequence numbers (8 bytes a row)."""

    def __init__(self) -> None:
        self._parts: dict[str, list[npt.NDArray[np.int64]]] = {}
        self._sorted: dict[str, npt.NDArray[np.int64]] = {}

    def add(self, table: pa.Table) -> None:
        for pid, seqs in _by_partition(table).items():
            self._parts.setdefault(pid, []).append(seqs)
            self._sorted.pop(pid, None)

    def covered(self, table: pa.Table) -> npt.NDArray[np.bool_]:
        """Per row of `table`: is its (partition, sequence number) among the rows added."""
        out = np.zeros(table.num_rows, dtype=bool)
        if not self._parts:
            return out
        pids = table.column("partition_id").to_numpy(zero_copy_only=False)
        seqs = table.column("sequence_number").to_numpy()
        for pid in np.unique(pids):
            if pid not in self._parts:
                continue
            known = self._sorted.get(pid)
            if known is None:
                known = self._sorted[pid] = np.sort(np.concatenate(self._parts[pid]))
            rows = np.flatnonzero(pids == pid)
            at = np.searchsorted(known, seqs[rows])
            out[rows] = (at < len(known)) & (known[np.minimum(at, len(known) - 1)] == seqs[rows])
        return out


def _by_partition(table: pa.Table) -> dict[str, npt.NDArray[np.int64]]:
    pids = table.column("partition_id").to_numpy(zero_copy_only=False)
    seqs = table.column("sequence_number").to_numpy()
    return {str(pid): seqs[pids == pid].astype(np.int64) for pid in np.unique(pids)}


def rebuild(*, store: PostgresStore, archive: BlobArchive, catalog: Catalog, start: date, end: date,
            rows_since: date | None = None, ledger_since: date | None = None, today: date | None = None,
            progress: ProgressCallback | None = None, crash_hook: CrashHook | None = None) -> RebuildReport:
    """Restore the database from the archive's files of the UTC days [start, end).

    `rows_since` / `ledger_since`: the first day dynamic_metrics / the ledger keep (their
    retention; None: every day). Resumable: run it again after an interruption."""
    if start >= end:
        raise InvalidRequestError(f"the range is empty: start {start} is not before end {end}")
    today = today or datetime.now(UTC).date()
    report = RebuildReport(start=start, end=end)
    state = Progress()
    days = [start + timedelta(days=i) for i in range((end - start).days)]
    planned = _plan(store, archive, days, rows_since, ledger_since, report)
    state.files_total = len(planned)
    conn = store.connection()
    manifest.ensure_partitions(conn, "ingested_events", {p.day for p in planned
                                                         if ledger_since is None or p.day >= ledger_since})
    manifest.ensure_partitions(conn, "dynamic_metrics", {p.day for p in planned
                                                         if rows_since is None or p.day >= rows_since})
    seen: dict[date, _SeenRows] = {}
    since_fold = 0
    for read in read_ahead(archive, planned, lambda p: (p.blob.name, None)):
        item, table = read.item, read.table
        day = report.days[item.day]
        state.files_done += 1
        if table is None:
            report.archived.append(item.blob.name)
            day.archived += 1
            continue
        rows_seen = seen.setdefault(item.day, _SeenRows())
        if item.compacted:
            rows_seen.add(table)
        else:
            covered = rows_seen.covered(table)
            if covered.all():
                report.leftovers.append(item.blob.name)
                day.leftover_files += 1
                continue
            if covered.any():
                day.already_in_ledger += int(covered.sum())
                table = table.filter(pa.array(~covered))
        events = parquet.events_from_table(table)
        state.events += len(events)
        _restore_file(store, archive.container_name, catalog, item, table, events, day, ledger=ledger_since is None or item.day >= ledger_since,
                      rows=rows_since is None or item.day >= rows_since, crash_hook=crash_hook)
        since_fold += 1
        if since_fold >= FOLD_EVERY_FILES:
            store.fold_aggregates()
            since_fold = 0
        if progress is not None:
            progress(state)
    store.fold_aggregates()
    # finished days without a fresh rollup (restored now, or by an interrupted run before)
    finished = [d for d in sorted(report.days) if d < today]
    with store.autocommit_connection() as auto:
        fresh = fresh_days(auto, finished[0], finished[-1]) if finished else set()
        for d in finished:
            if d not in fresh and roll_day(auto, d):
                report.rolled_up.append(d)
    report.seconds = state.seconds
    return report


def _plan(store: PostgresStore, archive: BlobArchive, days: Sequence[date], rows_since: date | None,
          ledger_since: date | None, report: RebuildReport) -> list[_Planned]:
    """The day folders' Parquet files not in the manifest yet; per day, compacted ones first.
    Files in the archive tier (as listed) are reported, not read."""
    planned: list[_Planned] = []
    conn = store.connection()
    for d in days:
        blobs = [b for b in archive.list(date_folder(d) + "/") if b.name.endswith(".parquet")]
        if not blobs:
            continue
        day = report.days[d] = DayReport(d, mode_of(d, rows_since, ledger_since))
        with conn.transaction():
            known = manifest.paths_in_manifest(conn, [b.name for b in blobs])
        day.known_files = len(known)
        for b in sorted(blobs, key=lambda b: (_COMPACTED.search(b.name) is None, b.name)):
            if b.name in known:
                continue
            if b.tier == ARCHIVED_TIER:
                report.archived.append(b.name)
                day.archived += 1
                continue
            planned.append(_Planned(d, b))
    return planned


def _restore_file(store: PostgresStore, container: str, catalog: Catalog, item: _Planned, table: pa.Table,
                  events: Sequence[PaymentEvent], day: DayReport, *, ledger: bool, rows: bool,
                  crash_hook: CrashHook | None) -> None:
    keys: list[int] = []
    if ledger:
        dimensions: dict[int, DimensionTuple] = {}
        extra = catalog.extra_dimension_fields
        for ev in events:
            dims = dimension_tuple(ev, extra)
            keys.append(k := dimension_key(dims))
            dimensions[k] = dims
        store.ensure_dimensions(dimensions)
    found = _compacted_generation(item.blob.name)
    pids = pc.unique(table.column("partition_id")).to_pylist()
    record = RebuiltFile(
        path=item.blob.name, container=container, partition_id=pids[0] if len(pids) == 1 else "*",
        event_date=item.day, seq_min=int(pc.min(table.column("sequence_number")).as_py()),
        seq_max=int(pc.max(table.column("sequence_number")).as_py()),
        occurred_min_us=min(e.occurred_us for e in events), occurred_max_us=max(e.occurred_us for e in events),
        row_count=table.num_rows, byte_size=item.blob.size, generation=found, metrics=catalog.metric_names)

    def work(tx: Any) -> tuple[int, int, int, int] | None:
        file_id = manifest.insert_rebuilt_file(tx.conn, record)
        if file_id is None:
            return None                                   # restored by another run
        new: Sequence[PaymentEvent] = events
        if ledger:
            claimed = tx.claim_events(events, [file_id] * len(events), keys)
            if len(claimed) < len(events):
                new = [e for e in events if (e.event_id, e.occurred_us) in claimed]
        metric_rows = extract_metrics(new, catalog)
        written = tx.insert_metrics(metric_rows) if rows else 0
        deltas = tx.append_deltas(aggregate(new, metric_rows, catalog), histogram.SCALE)
        if crash_hook is not None:
            crash_hook("before_commit")
        return len(new), len(events) - len(new), written, deltas

    outcome = store.run_batch(work)
    if outcome is None:
        day.known_files += 1
        return
    assert isinstance(outcome, tuple)
    new_events, duplicates, written, deltas = outcome
    day.files += 1
    day.events += new_events
    day.already_in_ledger += duplicates
    day.rows += written
    day.aggregate_rows += deltas


def _compacted_generation(path: str) -> str | None:
    m = _COMPACTED.search(path)
    return m.group("generation") if m else None


def retention_since(retention: dict[str, int], today: date) -> tuple[date | None, date | None]:
    """(rows_since, ledger_since) from a table retention in days ({table: days}, as the
    lifecycle policy renders it): the first day each table keeps."""
    def first_kept(table: str) -> date | None:
        days = retention.get(table)
        return None if days is None else today - timedelta(days=days)

    return first_kept("dynamic_metrics"), first_kept("ingested_events")
