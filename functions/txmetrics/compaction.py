"""Compaction: merge a finished day's small raw files into a few files of a target size.

Every step is recorded in raw_compactions before it has effects, so a crash anywhere can be
finished or undone by the next run, and each event stays exactly once among the live files
of the manifest, and at most once in the raw_events/ tree that any Parquet reader lists
(contract section 3), at every moment. An event is its (partition, sequence number,
event_id): two events may share a partition and sequence number (a hub recreated or failed
over restarts its sequence numbers; replayed items re-use ids after a database rebuild), and
both are kept; a guard checks, before the commit, that the outputs hold exactly the inputs'
distinct events (docs/decisions.md, "Archive row identity"):

  0. recover: outputs of a 'started' compaction are deleted (never in the manifest);
     a 'committed' one is finished (steps 4 and 5);
  1. pick the day's small uploaded files, grouped by their metric list (raw_files.metrics: a
     group's events all have the same metrics, which its outputs record); per group, record
     the intent (inputs, output names) -> 'started';
  2. read the inputs, write the outputs (sorted by time, zstd), check them (`_not_kept`: else
     'aborted' and an error, nothing uploaded) and upload them to staging, outside the tree
     (`naming.compaction_staging_path`);
  3. one transaction: the inputs must still be live (locked) with the same metric list (a
     backfill may have added one: then the outputs are deleted, 'aborted', and the next run
     regroups), outputs enter the manifest at their staging paths, inputs become
     'superseded' -> 'committed';
  4. delete the input blobs (the tree now lacks those events, for seconds; manifest readers
     read the staged outputs);
  5. publish each output: upload it to its place in the tree, move its manifest path there,
     delete the staged copy -> 'done'.

Safe while ingestion runs: late events for the day land in new small files that are not
inputs of this run, and the next run picks them up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from .adapters import manifest, parquet
from .adapters.blob import ARCHIVE_TIER, BlobArchive, BlobInfo
from .adapters.manifest import RawFile
from .core.archive_keys import ArchiveKeys
from .core.naming import (
    STAGING_PREFIX,
    compacted_file_path,
    compacted_generation,
    compaction_staging_path,
    date_folder,
    datetime_to_us,
)

DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
CrashHook = Callable[[str], None]


@dataclass
class CompactionReport:
    day: date
    inputs: int = 0
    outputs: list[tuple[str, int]] = field(default_factory=list)
    rows: int = 0
    recovered: int = 0
    skipped_reason: str | None = None


def _recover(conn: psycopg.Connection, archive: BlobArchive, day: date, *, republish: bool = True) -> int:
    """Finish or undo the day's unfinished compactions (the caller holds the day's lock).
    `republish` False: a 'started' run is undone even when its inputs are gone (a day past
    the raw retention, whose lifecycle rule deletes them)."""
    fixed = 0
    for run in manifest.unfinished_compactions(conn, day=day):
        if run.state == "started" and republish and _commit_forgotten(conn, archive, day, run):
            run = replace(run, state="committed")
        if run.state == "started":
            for path in run.output_paths:
                archive.delete(compaction_staging_path(path))
                if path not in manifest.paths_in_manifest(conn, paths=[path]):
                    archive.delete(path)    # a run started before staging existed uploaded here
            manifest.finish_compaction(conn, generation=run.generation, state="aborted")
        else:
            for path in manifest.paths_of(conn, file_ids=run.input_ids):
                archive.delete(path)
            for path in run.output_paths:
                _publish(conn, archive, path)
            manifest.finish_compaction(conn, generation=run.generation, state="done")
        fixed += 1
    return fixed


def _commit_forgotten(conn: psycopg.Connection, archive: BlobArchive, day: date, run: manifest.Compaction) -> bool:
    """A 'started' run with an input gone from the tree went past its commit in a timeline
    the database no longer remembers (restored from a backup taken while the run was
    'started': a run deletes inputs only after its commit). Its outputs (staged, or
    published already) then hold the only copy of the deleted inputs' events: undoing the
    run would lose them. So its commit is done again, from the outputs as written, and the
    caller finishes it as a committed run. False (nothing changed) when every input is still
    there: the run never committed, and undoing it is safe. Raises, leaving everything as it
    is, when the outputs cannot be taken (one missing, or not holding every event of the
    surviving inputs, or the inputs' metric lists no longer one)."""
    inputs = manifest.paths_of(conn, file_ids=run.input_ids)
    if len(inputs) < len(run.input_ids):
        # inputs gone from the manifest too: retention deleted them (a run older than the raw
        # retention), no restore forgot a commit. A restored database still lists them: point-in-
        # time restore reaches back at most 35 days, below any raw retention a policy may set
        # (minimum_retention_days), and the next timer run recovers a 'started' run within a day
        return False
    surviving = [p for p in inputs if archive.has(p)]
    if len(surviving) == len(run.input_ids):
        return False
    stop = (f"compaction {run.generation} of {day} is 'started' in the journal, but {len(inputs) - len(surviving)} "
            "of its inputs are gone from the tree (the database was restored from a backup taken during it?)")
    written: list[tuple[str, pa.Table, bytes]] = []
    held = ArchiveKeys()
    for path in run.output_paths:
        staged = compaction_staging_path(path)
        where = staged if archive.has(staged) else path if archive.has(path) else None
        if where is None:
            raise RuntimeError(f"{stop}; its output {path} is nowhere: nothing changed, restore the inputs' "
                               "blobs or rebuild the day")
        data = _readable(archive, where, stop, day)
        held.add(parquet.decode_keys(data))
        written.append((path, parquet.decode(data), data))
    for path in surviving:
        if not held.contains(parquet.decode_keys(_readable(archive, path, stop, day))).all():
            raise RuntimeError(f"{stop}; its outputs lack events of input {path}: nothing changed")
    keys = {_metric_key(m) for _, m in manifest.lock_uploaded(conn, file_ids=run.input_ids)}
    if len(keys) != 1 or not _commit(conn, archive.container_name, day, run.generation, list(run.input_ids),
                                     keys.pop(), written):
        raise RuntimeError(f"{stop}; its inputs' metric lists differ: nothing changed")
    return True


def _readable(archive: BlobArchive, path: str, stop: str, day: date) -> bytes:
    data = archive.download_unless_archived(path)
    if data is None:
        raise RuntimeError(f"{stop}; {path} is in the archive tier and cannot be read: nothing changed. "
                           f"{_rehydrate_fix(day)}, then run again")
    return data


def _rehydrate_fix(day: date) -> str:
    """How to bring a day's archived files back (query asks Azure for the files it lists)."""
    return (f"Fix: rehydrate them (`txmetrics query --start {day} --end {day + timedelta(days=1)} --rehydrate "
            "Standard` asks Azure to)")


@dataclass
class StagingReport:
    """What `settle_staging` did with the compaction outputs in staging that no journal knew."""

    published: list[str] = field(default_factory=list)     # moved into the tree (their tree paths)
    dropped: list[str] = field(default_factory=list)       # deleted: every event of theirs is in the tree
    inputs_deleted: list[str] = field(default_factory=list)  # surviving inputs of an interrupted deletion
    past_retention: list[str] = field(default_factory=list)  # left in staging: their day is past retention
    archived: list[str] = field(default_factory=list)        # in the archive tier: rehydrate, then settle again


def settle_staging(conn: psycopg.Connection, archive: BlobArchive, days: Sequence[date], *,
                   raw_since: date | None = None) -> StagingReport:
    """Before a rebuild reads the tree: each day's unfinished compactions are finished or
    undone, as the next compaction would. Outputs in staging that no journal knows (the
    database was lost, or restored from before their compaction) are settled per compaction
    (generation), from what the tree holds:

    - every event of its staged outputs is in the tree: it was killed before its inputs'
      deletion, the inputs are whole; the staged outputs are deleted;
    - else its inputs' deletion had begun (killed, or a delete failed, part way through): it
      is finished as the run would have finished it: the files of the day whose every event
      is in its staged outputs (its surviving inputs) are deleted, then the outputs published.
      A file holding any event the outputs lack is never deleted, nor one written after
      them (it cannot be an input); such a file then stands beside the published output (the
      rebuild restores its rows once and lists it when it is wholly covered).

    Days before `raw_since` (past the raw archive's retention: its lifecycle rule has deleted,
    or is deleting, their files) are left alone: an output there would look like the only copy
    of events that retention removed, and publishing it would bring them back; the lifecycle
    rule on the staged copies deletes them at the raw events' age. A day whose compaction is
    running is left to it."""
    report = StagingReport()
    for day in days:
        staged = [b for b in archive.list(compaction_staging_path(date_folder(day) + "/"))
                  if b.name.endswith(".parquet")]
        if not staged and not manifest.unfinished_compactions(conn, day=day):
            continue
        with manifest.compaction_lock(conn, day) as held:
            if not held:
                continue
            # past the raw retention a run's inputs are gone because the lifecycle rule deleted
            # them, not because a restored database forgot its commit: never republished
            _recover(conn, archive, day, republish=raw_since is None or day >= raw_since)
            orphans: dict[str, list[BlobInfo]] = {}
            for blob in staged:
                generation = compacted_generation(blob.name) or ""
                if archive.has(blob.name) and manifest.compaction_state(conn, generation=generation) is None:
                    orphans.setdefault(generation, []).append(blob)
            if orphans and raw_since is not None and day < raw_since:
                report.past_retention += [b.name for blobs in orphans.values() for b in blobs]
                continue
            for generation, outputs in orphans.items():
                _settle_orphans(conn, archive, day, generation, outputs, report)
    return report


def _settle_orphans(conn: psycopg.Connection, archive: BlobArchive, day: date, generation: str,
                    outputs: list[BlobInfo], report: StagingReport) -> None:
    """One compaction's staged outputs that no journal knows (see `settle_staging`). Its
    events' keys, (partition, sequence number, event_id), are held as numpy columns
    (core.archive_keys), 17 bytes an event: a file whose events re-use a partition and
    sequence number of the outputs with other event_ids is not theirs, and is never deleted."""
    tree = [b for b in archive.list(date_folder(day) + "/")   # not an output of this compaction already published
            if b.name.endswith(".parquet") and compacted_generation(b.name) != generation]
    if frozen := [b.name for b in (*outputs, *tree) if b.tier == ARCHIVE_TIER]:
        report.archived += frozen              # unreadable until rehydrated: nothing decided, nothing touched
        return
    staged_keys = ArchiveKeys()
    for blob in outputs:
        staged_keys.add(parquet.decode_keys(archive.download(blob.name)))
    written = min(b.last_modified for b in outputs)
    covered: list[str] = []                    # files of the day all of whose events the outputs hold
    for blob in tree:
        keys = parquet.decode_keys(archive.download(blob.name))
        staged_keys.mark(keys)
        if blob.last_modified <= written and staged_keys.contains(keys).all():
            covered.append(blob.name)
    if staged_keys.all_marked():               # the inputs are whole: the staged copies go
        for blob in outputs:
            archive.delete(blob.name)
            report.dropped.append(blob.name)
        return
    # Finish the deletion the run began, then publish, in its order: the tree never holds an
    # event twice. A kill in between is finished by the next settle (the outputs are still
    # staged, and hold events the tree lacks). A manifest that still lists an input (a
    # database restored from a backup) is told it is superseded, as the run's commit did.
    if listed := manifest.live_ids_of(conn, paths=covered):
        manifest.supersede(conn, file_ids=listed, generation=generation)
    for path in covered:
        archive.delete(path)
        report.inputs_deleted.append(path)
    for blob in outputs:
        archive.upload(blob.name[len(STAGING_PREFIX):], archive.download(blob.name))
        archive.delete(blob.name)
        report.published.append(blob.name[len(STAGING_PREFIX):])


def _publish(conn: psycopg.Connection, archive: BlobArchive, path: str, data: bytes | None = None) -> None:
    """Move a committed output from staging to its place in the tree (step 5); idempotent, so
    a crash between any two of its steps is finished by the next run."""
    staged = compaction_staging_path(path)
    listed = manifest.paths_in_manifest(conn, paths=[staged, path])
    if staged in listed:
        if path in listed:
            # another live file has the name (it cannot be this output's: its row still names
            # the staged copy): publishing would overwrite it, the only copy of its events
            raise RuntimeError(f"compaction output {path} would overwrite a live file of the same name; nothing "
                               "published (the staged copy stays): report this, the names should never meet")
        if data is None:
            # a database restored from a backup may name the staged copy of an output that was
            # published (and its staged copy deleted) since: the tree holds the same bytes
            data = archive.download(staged if archive.has(staged) else path)
        archive.upload(path, data)
        manifest.move(conn, old_path=staged, new_path=path)
    archive.delete(staged)


def compact_day(conn: psycopg.Connection, archive: BlobArchive, day: date, *,
                target_bytes: int = DEFAULT_TARGET_BYTES, min_files: int = 2,
                crash_hook: CrashHook | None = None) -> CompactionReport:
    """Compact one UTC day. `conn` must be in autocommit mode.

    Only files whose events have the same metrics (raw_files.metrics, migration 0009) are
    merged together, and their outputs keep that list: a day where a metric was added to the
    catalog, and not backfilled yet, compacts into one set of files per list (docs/lake.md)."""
    def crash_point(name: str) -> None:
        if crash_hook is not None:
            crash_hook(name)

    report = CompactionReport(day=day)
    with manifest.compaction_lock(conn, day) as held:
        if not held:
            report.skipped_reason = "another compaction of this day is running"
            return report
        return _compact_locked(conn, archive, day, target_bytes, min_files, crash_point, report)


def _compact_locked(conn: psycopg.Connection, archive: BlobArchive, day: date, target_bytes: int, min_files: int,
                    crash_point: CrashHook, report: CompactionReport) -> CompactionReport:
    report.recovered = _recover(conn, archive, day)
    small = manifest.small_files(conn, day=day, below_bytes=target_bytes // 2)
    groups: dict[tuple[str, ...] | None, list[tuple[int, str]]] = {}
    for file_id, path, metrics in small:
        groups.setdefault(_metric_key(metrics), []).append((file_id, path))
    ready = [(key, files) for key, files in groups.items() if len(files) >= min_files]
    if not ready:
        report.skipped_reason = f"{len(small)} small file(s): nothing to compact"
        return report
    for key, files in ready:
        aborted = _compact_group(conn, archive, day, files, key, target_bytes, crash_point, report)
        if aborted:
            report.skipped_reason = aborted
    return report


def _metric_key(metrics: list[str] | None) -> tuple[str, ...] | None:
    return None if metrics is None else tuple(sorted(set(metrics)))


def _compact_group(conn: psycopg.Connection, archive: BlobArchive, day: date, small: list[tuple[int, str]],
                   metrics: tuple[str, ...] | None, target_bytes: int, crash_point: CrashHook,
                   report: CompactionReport) -> str | None:
    """Merge one group of the day's small files (same metric list): 1. merge the inputs;
    2. record the intent (the journal names the outputs); 3. check that the outputs hold
    exactly the inputs' distinct events (else 'aborted' and raise: nothing uploaded,
    committed or deleted), then upload them to staging;
    4. commit them to the manifest in place of the inputs, unless the inputs changed
    meanwhile (then undo); 5. delete the inputs, then publish the outputs into the tree.
    Returns why it stopped without committing, or None."""
    input_ids = [file_id for file_id, _ in small]
    try:
        merged, distinct = _merged_inputs(archive, [path for _, path in small])      # 1
    except _InputsArchived as frozen:
        # unreadable until rehydrated (a late event's day, months on): nothing started, nothing changed
        return (f"{len(frozen.paths)} of {len(small)} small file(s) of {day} are in the archive tier and cannot be "
                f"read (e.g. {frozen.paths[0]}); nothing done. {_rehydrate_fix(day)}, then compact again")
    per_file = _rows_per_output(merged, target_bytes)
    generation = _generation(small)
    outputs = [compacted_file_path(day, generation, i) for i in range(-(-merged.num_rows // per_file))]
    if (taken := manifest.paths_in_manifest(conn, paths=outputs)) and \
            manifest.compaction_state(conn, generation=generation) not in ("committed", "done"):
        # another compaction's files (its own are a finished run's: start_compaction says so below);
        # refused before anything changes (`_publish` checks again): the names should never meet
        raise RuntimeError(f"compaction {generation} of {day}: output name(s) {', '.join(sorted(taken))} are taken "
                           "by files the manifest has; nothing done")
    if not manifest.start_compaction(conn, generation=generation, day=day, input_ids=input_ids,  # 2
                                     output_paths=outputs):
        return f"compaction {generation} of these {len(small)} file(s) has already committed; re-run"
    crash_point("after_intent")

    written: list[tuple[str, pa.Table, bytes]] = []                                  # 3
    for i, path in enumerate(outputs):
        part = merged.slice(i * per_file, per_file)
        if part.num_rows > 0:
            written.append((path, part, parquet.encode(part)))
    if lost := _not_kept(distinct, [data for _, _, data in written]):
        manifest.finish_compaction(conn, generation=generation, state="aborted")    # nothing uploaded yet
        raise RuntimeError(f"compaction {generation} of {day}: {lost}; nothing committed, no input deleted")
    for path, _, data in written:
        archive.upload(compaction_staging_path(path), data)
        crash_point("after_upload")
    crash_point("before_commit")

    if not _commit(conn, archive.container_name, day, generation, input_ids, metrics, written):  # 4
        # a backfill added a metric to some inputs meanwhile: merging them now would blur which
        # events have it. Undo (outputs were never in the manifest); the next run regroups.
        for path, _, _ in written:
            archive.delete(compaction_staging_path(path))
        manifest.finish_compaction(conn, generation=generation, state="aborted")
        return f"{len(small)} file(s) left as they are: a backfill changed their metrics meanwhile; re-run"
    crash_point("after_commit")
    for _, path in small:                                                            # 5
        archive.delete(path)
        crash_point("after_an_input_deleted")
    crash_point("after_inputs_deleted")
    for path, _, data in written:
        _publish(conn, archive, path, data)
        crash_point("after_publish")
    manifest.finish_compaction(conn, generation=generation, state="done")
    report.inputs += len(small)
    report.outputs += [(p, len(d)) for p, _, d in written]
    report.rows += merged.num_rows
    return None


def _generation(inputs: list[tuple[int, str]]) -> str:
    """The compaction's name (its journal key and its outputs' names): a hash of its inputs'
    ids and paths. The same inputs again give the same name (a run that picked the inputs a
    finished one merged never reopens its journal). Ids alone were not enough: they restart at
    1 in a rebuilt database, so a compaction after a rebuild took the name of one before it and
    published over its output, the only copy of those events (an audit); a live file's path is
    unique in the archive, and a compaction's inputs are gone from it once merged."""
    return hashlib.sha256("\n".join(f"{file_id}\t{path}" for file_id, path in inputs).encode()).hexdigest()[:16]


class _InputsArchived(Exception):
    def __init__(self, paths: list[str]) -> None:
        super().__init__(", ".join(paths))
        self.paths = paths


def _merged_inputs(archive: BlobArchive, paths: list[str]) -> tuple[pa.Table, pa.Table]:
    """The inputs' rows, in event time order, each event once, and the inputs' distinct
    (partition_id, sequence_number, event_id) (for `_not_kept`). An event is its three
    parts (core.archive_keys): rows equal on all three are one event written twice (a
    redelivery, an input somehow duplicated) and are kept once; rows sharing a partition and
    sequence number with different event_ids are different events (a recreated or failed-over
    event hub restarts its sequence numbers; replayed items re-use ids after a database
    rebuild) and are all kept: the archive is the system of record. _InputsArchived names
    the inputs in the archive tier, when there are any (none is read then)."""
    contents = [archive.download_unless_archived(path) for path in paths]
    if archived := [path for path, data in zip(paths, contents, strict=True) if data is None]:
        raise _InputsArchived(archived)
    rows = pa.concat_tables([parquet.decode(data) for data in contents if data is not None])
    keys = parquet.KEY_COLUMNS
    first = (rows.select(keys).append_column("_row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
             .group_by(keys, use_threads=False).aggregate([("_row", "min")]))
    merged = rows.take(pa.array(np.sort(first["_row_min"].to_numpy())))
    # the guard's reference, taken from the inputs' rows apart from the merge above
    distinct = rows.select(keys).group_by(keys, use_threads=False).aggregate([])
    return (merged.sort_by([("occurred_at", "ascending"), ("partition_id", "ascending"),
                            ("sequence_number", "ascending"), ("event_id", "ascending")]),
            distinct)


def _not_kept(distinct: pa.Table, outputs: list[bytes]) -> str | None:
    """The guard before a commit (after which the inputs are deleted): the encoded outputs,
    read back, must hold exactly the inputs' distinct (partition_id, sequence_number,
    event_id), each once. Why not, or None."""
    keys = parquet.KEY_COLUMNS
    held = pa.concat_tables([parquet.key_table(data) for data in outputs]) if outputs else \
        distinct.schema.empty_table()
    if held.num_rows != distinct.num_rows:
        return f"the outputs hold {held.num_rows} row(s), the inputs {distinct.num_rows} distinct event(s)"
    if held.group_by(keys, use_threads=False).aggregate([]).num_rows != held.num_rows:
        return "the outputs hold an event twice"
    if (stray := held.join(distinct, keys, join_type="left anti").num_rows):
        return f"the outputs hold {stray} event(s) no input holds (and lack as many)"
    return None


def _rows_per_output(merged: pa.Table, target_bytes: int) -> int:
    """Rows per output file from the compressed size of a sample (small inputs carry much
    overhead, so their sizes say little)."""
    sample = merged.slice(0, min(merged.num_rows, 20_000))
    bytes_per_row = len(parquet.encode(sample)) / max(sample.num_rows, 1)
    return max(1, int(target_bytes / bytes_per_row))


def _commit(conn: psycopg.Connection, container: str, day: date, generation: str, input_ids: list[int],
            metrics: tuple[str, ...] | None, written: list[tuple[str, pa.Table, bytes]]) -> bool:
    """In one transaction, the outputs into the manifest and the inputs superseded; False
    (nothing changed) when an input's metric list is no longer `metrics`."""
    with conn.transaction():
        live = manifest.lock_uploaded(conn, file_ids=input_ids)
        if len(live) != len(input_ids):
            raise RuntimeError(f"compaction {generation}: inputs changed underneath (another compaction?); re-run")
        if any(_metric_key(m) != metrics for _, m in live):
            return False
        for path, part, data in written:
            occurred = part["occurred_at"]
            seqs = part["sequence_number"]
            manifest.insert_uploaded(conn, container=container, file=RawFile(
                path=compaction_staging_path(path), partition_id="*", event_date=day, seq_min=pc.min(seqs).as_py(),
                seq_max=pc.max(seqs).as_py(), occurred_min_us=datetime_to_us(pc.min(occurred).as_py()),
                occurred_max_us=datetime_to_us(pc.max(occurred).as_py()), row_count=part.num_rows,
                byte_size=len(data), metrics=metrics, generation=generation))
        manifest.supersede(conn, file_ids=input_ids, generation=generation)
        manifest.commit_compaction(conn, generation=generation, output_paths=[p for p, _, _ in written])
    return True


def days_to_compact(conn: psycopg.Connection, before: date, target_bytes: int = DEFAULT_TARGET_BYTES,
                    min_files: int = 2, lookback_days: int = 7) -> list[date]:
    """Finished days (before `before`) of the last `lookback_days` with small files to merge,
    or an unfinished compaction to recover."""
    return manifest.days_to_compact(conn, before=before, below_bytes=target_bytes // 2, min_files=min_files,
                                    lookback_days=lookback_days)
