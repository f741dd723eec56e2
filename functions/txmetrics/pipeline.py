"""The ingest path: one trigger batch in, durable effects out (contract sections 2-4).

`Pipeline.process` returns normally only when the batch's valid events are in the raw
archive, dynamic_metrics and the aggregates (as deltas, which every reader includes and the
fold merges into aggregate_histograms), and its bad events in failed_items.
It raises when PostgreSQL or Blob Storage fails, so that the host retries the batch;
a retry (or any redelivery, however the batch is re-cut) has the effect of one delivery.

Order of effects (the transactional-outbox pattern):
  1. one PostgreSQL transaction: claim events in the ledger, manifest + Parquet bytes in
     the outbox, metric rows, histogram deltas, failed items; commit;
  2. upload the Parquet files (overwrite) while their manifest rows are locked, then mark
     them uploaded and empty the outbox in that transaction (a file the daily flush is
     already uploading is left to it; no upload starts after a file was marked, so none can
     bring back a file compaction has merged); the same statement counts the files of this
     partition still pending (a crashed earlier attempt's), and when there are any, uploads
     and marks them too.
A crash before 1 commits leaves nothing; after 1, the partition's next batch that reaches
its mark (usually the redelivery) finishes step 2 from the outbox, and so does the daily
maintenance timer. Blobs are written only for committed files, so no orphan or duplicate
file can appear, even when the redelivered batch is longer or shorter than the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import numpy as np
import psycopg

from .adapters import manifest, parquet
from .adapters.blob import BlobArchive, service_client
from .adapters.manifest import OutboxFile, RawFile
from .adapters.postgres import BatchTransaction, PostgresStore
from .core import histogram
from .core.catalog import Catalog, load_catalog
from .core.events import (
    InboundEvent,
    PaymentEvent,
    Rejection,
    parse_events,
    refused_after_parsing,
    unexpected_failure,
)
from .core.metrics import MetricRows, aggregate, dimension_keys, extract_metrics_isolated
from .core.naming import US_PER_DAY, raw_file_path, utc_day
from .settings import Settings

# Test hook: called with a step name at each crash-relevant point ("before_commit",
# "after_commit", "after_upload"). Production code never sets it.
CrashHook = Callable[[str], None]


@dataclass
class BatchReport:
    """What one batch did. Every event received is exactly one of: new (stored now), a
    duplicate (already stored, or twice in this batch, a bad event as well) or failed
    (recorded in failed_items, once per item key):
    received == new_events + duplicates + failed."""

    partition_id: str
    received: int = 0
    new_events: int = 0
    duplicates: int = 0
    failed: int = 0
    failed_new: int = 0
    failed_by_code: dict[str, int] = field(default_factory=dict)
    metric_rows: int = 0
    aggregate_rows: int = 0
    files: list[tuple[str, int]] = field(default_factory=list)   # (path, bytes)
    seq_min: int | None = None
    seq_max: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def log_fields(self) -> dict[str, Any]:
        return {
            "partition": self.partition_id, "seq_min": self.seq_min, "seq_max": self.seq_max,
            "received": self.received, "new": self.new_events,
            "duplicates": self.duplicates, "failed": self.failed, "failed_by_code": self.failed_by_code,
            "metric_rows": self.metric_rows, "aggregate_rows": self.aggregate_rows,
            "files": len(self.files), "bytes": sum(b for _, b in self.files),
            "ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }


class _Timer:
    def __init__(self, report: BatchReport) -> None:
        self.report = report
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.report.timings_ms[name] = self.report.timings_ms.get(name, 0.0) + (now - self.t) * 1000
        self.t = now


def storage_of(settings: Settings) -> tuple[PostgresStore, BlobArchive]:
    """The PostgreSQL store and the raw archive the settings name (one way to build them, for
    the function, the timers, the CLI and the lake tools)."""
    store = PostgresStore(settings.require_database(), entra=settings.database_auth == "entra",
                          managed_identity_client_id=settings.managed_identity_client_id)
    connection_string, account_url = settings.require_storage()
    archive = BlobArchive(service_client(connection_string, account_url,
                                         managed_identity_client_id=settings.managed_identity_client_id),
                          settings.raw_events_container)
    return store, archive


class Pipeline:
    def __init__(self, store: PostgresStore, archive: BlobArchive, catalog: Catalog,
                 crash_hook: CrashHook | None = None) -> None:
        self.store = store
        self.archive = archive
        self.catalog = catalog
        self.crash_hook = crash_hook

    @classmethod
    def from_settings(cls, settings: Settings) -> Pipeline:
        catalog = load_catalog(settings.metric_catalog)
        store, archive = storage_of(settings)
        return cls(store, archive, catalog)

    def _crash_point(self, name: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(name)

    def flush_outbox(self, partition_id: str | None) -> int:
        """Upload files committed but not yet confirmed in Blob Storage (of one partition, or
        all). All (the daily timer): a file another process is uploading is left to it. One
        partition (its batch, before it returns): such a file is waited for, and uploaded
        here if that upload failed. Idempotent."""
        conn = self.store.connection()
        with conn.transaction():       # the files' rows stay locked until they are marked (manifest.pending_uploads)
            pending = manifest.pending_uploads(conn, partition_id=partition_id, wait=partition_id is not None)
            for _, path, content in pending:
                self.archive.upload(path, content)
            manifest.mark_uploaded(conn, file_ids=[fid for fid, _, _ in pending])
        return len(pending)

    def process(self, partition_id: str, inbound: Sequence[InboundEvent]) -> BatchReport:
        """Steps 1-2 of the module docstring for one trigger batch; returns what it did."""
        report = BatchReport(partition_id=partition_id, received=len(inbound))
        if inbound:
            seqs = [e.sequence_number for e in inbound]
            report.seq_min, report.seq_max = min(seqs), max(seqs)
        timer = _Timer(report)

        sorted_batch = _sort_events(inbound, self.catalog)
        timer.lap("decode_validate")
        self._extract_metrics(sorted_batch)
        timer.lap("metrics_extract")
        self._prepare_storage(sorted_batch)
        timer.lap("partitions")

        try:                                                              # step 1
            written = self.store.run_batch(lambda tx: self._write(tx, sorted_batch, timer), optimistic=True)
        except psycopg.errors.CheckViolation as exc:
            if "no partition" not in str(exc):
                raise
            # a day partition this process knew of was dropped by retention (a late event):
            # ask again (the day is refused when it is past the ledger's retention, else
            # created again) and retry once
            self.store.forget_partitions()
            self._prepare_storage(sorted_batch)
            written = self.store.run_batch(lambda tx: self._write(tx, sorted_batch, timer), optimistic=True)
        timer.lap("commit")
        for rejection in sorted_batch.rejections:
            report.failed_by_code[rejection.error_code] = report.failed_by_code.get(rejection.error_code, 0) + 1
        report.failed = len(sorted_batch.rejections)
        self._crash_point("after_commit")
        report.new_events = written.new_events
        report.duplicates = len(sorted_batch.valid) + sorted_batch.batch_duplicates - written.new_events
        report.metric_rows, report.aggregate_rows = written.metric_rows, written.aggregate_rows
        report.failed_new = written.failed_new
        report.files = [(f.path, len(f.content)) for f in written.files]

        conn = self.store.connection()                                    # step 2
        with conn.transaction():   # uploaded while their rows are locked, then marked (manifest.pending_uploads)
            mine = manifest.lock_pending(conn, file_ids=[f.id for f in written.files])
            for f in written.files:
                if f.id in mine:       # else the daily flush uploaded and marked it while we waited
                    self.archive.upload(f.path, f.content)
            timer.lap("upload")
            self._crash_point("after_upload")
            left_behind = manifest.mark_uploaded(conn, file_ids=sorted(mine), partition_id=partition_id)
        timer.lap("mark_uploaded")
        if left_behind:
            self.flush_outbox(partition_id)
            timer.lap("flush_outbox")
        return report

    def _extract_metrics(self, batch: _SortedBatch) -> None:
        """The metric rows of the valid events, before the transaction: an event whose
        extraction fails (a bug no content should trigger) is refused alone, not claimed
        and stuck."""
        batch.rows, broken = extract_metrics_isolated(batch.valid, self.catalog)
        if broken:
            batch.rejections += [unexpected_failure(batch.valid_items[i], "extracting metrics", exc)
                                 for i, exc in broken.items()]
            batch.valid = [ev for i, ev in enumerate(batch.valid) if i not in broken]
            # the inbound items stay paired with the events (refusals later name their item)
            batch.valid_items = [item for i, item in enumerate(batch.valid_items) if i not in broken]

    def _prepare_storage(self, batch: _SortedBatch) -> None:
        """Outside the batch transaction, each in a short one of its own: the day partitions
        of the batch's days and the dimension tuples of its events."""
        batch.by_day = events_by_day(batch.valid)
        refused = self.store.ensure_day_partitions(set(batch.by_day))
        if refused:
            self._refuse_days(batch, refused)
        keys, dimensions = dimension_keys(batch.valid, self.catalog.extra_dimension_fields)
        batch.dimension_keys = keys
        self.store.ensure_dimensions(dimensions)

    def _refuse_days(self, batch: _SortedBatch, refused: set[date]) -> None:
        """The events of days past the ledger's retention go to failed_items (past_retention)
        instead of being stored: whether one was stored before can no longer be told (its
        ledger partition is gone), and counting it again would break exactly-once; recorded,
        nothing is lost (docs/decisions.md, "Events older than the ledger's retention")."""
        kept_since = self.store.ledger_kept_since
        keep = []
        for i, (ev, item) in enumerate(zip(batch.valid, batch.valid_items, strict=True)):
            day = utc_day(ev.occurred_us)
            if day not in refused:
                keep.append(i)
                continue
            batch.rejections.append(refused_after_parsing(
                item, ev, "past_retention",
                f"occurred_at is on {day}, before {kept_since}, the first day the ledger (ingested_events) still "
                "keeps: whether this event was stored before can no longer be told, so it is not stored again; "
                "to take events this late, keep the ledger longer (tables.ingested_events in lifecycle/<stack>.yaml)"))
        batch.valid = [batch.valid[i] for i in keep]
        batch.valid_items = [batch.valid_items[i] for i in keep]
        batch.rows = batch.rows.for_events(keep)
        batch.by_day = {d: events for d, events in batch.by_day.items() if d not in refused}

    def _write(self, tx: BatchTransaction, batch: _SortedBatch, timer: _Timer) -> _Written:
        """Step 1's transaction body, run again as a whole when PostgreSQL asks for a retry
        and when the optimistic first attempt meets a key already there (run_batch; the
        timings then add up both attempts):
        claim the events in the ledger; only the claimed ones (new) get files, metric rows
        and histogram deltas; the batch's bad events go to failed_items.

        The histograms are built while the server stores the metric rows; in the optimistic
        (`fresh`) attempt, where every event is expected new, the files are also encoded while
        it stores the ledger rows (the checked attempt needs the ledger's answer first). A
        batch takes the longer of each pair, not their sum. Laps inside a `with` end the
        building and sending of its rows; the lap after it adds the wait for the answer."""
        days = sorted(batch.by_day)
        events, keys = claim_order(batch)
        new_by_day, new, new_rows = batch.by_day, batch.valid, batch.rows
        if tx.fresh:
            with tx.claiming_new(events, keys):
                timer.lap("claim")
                encoded = self._encode_files(new_by_day)
                timer.lap("parquet_encode")
            timer.lap("claim")
        else:
            taken = tx.claim_events(events, keys)
            if taken:  # a redelivery: only the events not claimed before get files, rows and deltas
                new_by_day = {d: kept for d in days
                              if (kept := [ev for ev in batch.by_day[d]
                                           if (ev.event_id, ev.occurred_us) not in taken])}
                new_index = [i for i, ev in enumerate(batch.valid) if (ev.event_id, ev.occurred_us) not in taken]
                new = [batch.valid[i] for i in new_index]
                new_rows = batch.rows.for_events(new_index)
            timer.lap("claim")
            encoded = self._encode_files(new_by_day)
            timer.lap("parquet_encode")
        files = self._record_files(tx, encoded)
        timer.lap("parquet_encode")
        with tx.inserting_metrics(new_rows):
            timer.lap("metrics_write")
            aggs = aggregate(new, new_rows, self.catalog)
            timer.lap("aggregate_build")
        timer.lap("metrics_write")
        failed_new = tx.record_failures(batch.rejections)
        aggregate_rows = tx.append_deltas(aggs, histogram.SCALE)
        timer.lap("aggregate_append")
        self._crash_point("before_commit")
        return _Written(new_events=len(new), metric_rows=len(new_rows), aggregate_rows=aggregate_rows,
                        failed_new=failed_new, files=files)

    @staticmethod
    def _encode_files(new_by_day: dict[date, list[PaymentEvent]]) -> list[tuple[date, list[PaymentEvent], bytes]]:
        """One Parquet file's bytes per UTC date of the batch's new events (no I/O)."""
        return [(day, new_by_day[day], parquet.encode(parquet.events_table(new_by_day[day])))
                for day in sorted(new_by_day)]

    def _record_files(self, tx: BatchTransaction, encoded: list[tuple[date, list[PaymentEvent], bytes]]
                      ) -> list[OutboxFile]:
        """Each encoded file entered in the manifest (pending) with its bytes in the outbox."""
        files = []
        for day, events, content in encoded:
            # lists, not generators: min and max of each in two C loops
            seqs, times = [ev.sequence_number for ev in events], [ev.occurred_us for ev in events]
            first = min(seqs)
            partition_id = events[0].partition_id
            file = RawFile(
                path=raw_file_path(partition_id, first, day), partition_id=partition_id, event_date=day,
                seq_min=first, seq_max=max(seqs), occurred_min_us=min(times), occurred_max_us=max(times),
                row_count=len(events), byte_size=len(content), metrics=self.catalog.metric_names)
            attempt = 0
            while (file_id := manifest.record_pending(tx.conn, file=file, content=content,
                                                      container=self.archive.container_name)) is None:
                attempt += 1     # the name is taken (see naming.raw_file_path): the next one
                file = replace(file, path=raw_file_path(partition_id, first, day, attempt))
            files.append(OutboxFile(id=file_id, content=content, file=file))
        return files


@dataclass
class _SortedBatch:
    """A batch's events sorted by `_sort_events`, then filled in by the pipeline's steps."""

    valid: list[PaymentEvent]                 # first sighting of each (event_id, UTC day of occurred_at)
    valid_items: list[InboundEvent]           # the inbound item of each valid event
    rejections: list[Rejection]
    batch_duplicates: int                     # repeats within this batch
    rows: MetricRows = field(default_factory=lambda: MetricRows(events=[], metric_names=[]))
    by_day: dict[date, list[PaymentEvent]] = field(default_factory=dict)
    dimension_keys: list[int] = field(default_factory=list)           # each valid event's, in their order


@dataclass(frozen=True, slots=True)
class _Written:
    """What the committed batch transaction stored."""

    new_events: int
    metric_rows: int
    aggregate_rows: int
    failed_new: int
    files: list[OutboxFile]


def events_by_day(events: Sequence[PaymentEvent]) -> dict[date, list[PaymentEvent]]:
    """The events of each UTC day of their occurred_at, in their order. The usual batch has
    one day, told at once from its times' least and greatest day (a loop with a dict lookup
    per event otherwise; tests/test_pipeline_order.py compares the two)."""
    if events:
        day_numbers = np.fromiter((ev.occurred_us for ev in events), dtype=np.int64, count=len(events)) // US_PER_DAY
        first = int(day_numbers[0])
        if first == day_numbers.min() == day_numbers.max():
            return {utc_day(first * US_PER_DAY): list(events)}
    return events_by_day_each(events)


def events_by_day_each(events: Sequence[PaymentEvent]) -> dict[date, list[PaymentEvent]]:
    """`events_by_day`, event by event."""
    by_day_number: dict[int, list[PaymentEvent]] = {}     # the day's number, then its date once
    for ev in events:
        by_day_number.setdefault(ev.occurred_us // US_PER_DAY, []).append(ev)
    return {utc_day(n * US_PER_DAY): day_events for n, day_events in by_day_number.items()}


def claim_order(batch: _SortedBatch) -> tuple[list[PaymentEvent], list[int]]:
    """The batch's valid events day by day (the order their files and claims take), and each
    one's dimension key. One day (the usual batch): they are the valid events as they are."""
    days = sorted(batch.by_day)
    if len(days) == 1 and len(batch.by_day[days[0]]) == len(batch.valid):
        return batch.by_day[days[0]], batch.dimension_keys
    key_of = dict(zip(map(id, batch.valid), batch.dimension_keys, strict=True))
    events = [ev for d in days for ev in batch.by_day[d]]
    return events, [key_of[id(ev)] for ev in events]


def _sort_events(inbound: Sequence[InboundEvent], catalog: Catalog) -> _SortedBatch:
    """Decode and validate each item (never raises: bad content is a Rejection); the same
    event twice in one batch counts once, the first: an event_id once per UTC day of its
    occurred_at, the ledger's key (migrations 0015-0016), and a bad event once per item key
    (failed_items' key). Identifiers are compared as sent, never masked."""
    batch = _SortedBatch(valid=[], valid_items=[], rejections=[], batch_duplicates=0)
    seen: set[tuple[str, int]] = set()
    refused: set[str] = set()
    # the catalog's check of its metric sources, when it has any to check (the bundled one has not)
    check = catalog.masked_source_problem if catalog.card_checked_metrics else None
    for item, parsed in zip(inbound, parse_events(inbound, masked_check=check), strict=True):
        if isinstance(parsed, Rejection):
            # a bad event twice in the batch (same item key: the same bytes naming an event_id)
            # is one failed item, so the second copy counts as a duplicate, as a valid one does
            if parsed.item_key in refused:
                batch.batch_duplicates += 1
                continue
            refused.add(parsed.item_key)
            batch.rejections.append(parsed)
            continue
        key = (parsed.event_id, parsed.occurred_us // US_PER_DAY)
        if key in seen:
            batch.batch_duplicates += 1
            continue
        seen.add(key)
        batch.valid.append(parsed)
        batch.valid_items.append(item)
    return batch
