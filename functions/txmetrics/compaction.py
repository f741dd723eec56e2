"""Compaction: merge a finished day's small raw files into a few files of a target size.

Every step is recorded in raw_compactions before it has effects, so a crash anywhere can be
finished or undone by the next run, and each (partition, sequence number) stays exactly once
among the live files of the manifest:

  0. recover: outputs of a 'started' compaction are deleted (never in the manifest);
     inputs of a 'committed' one are deleted (already replaced in the manifest);
  1. pick the day's small uploaded files, grouped by their metric list (raw_files.metrics: a
     group's events all have the same metrics, which its outputs record); per group, record
     the intent (inputs, output names) -> 'started';
  2. read the inputs, write the outputs (sorted by time, zstd) and upload them (overwrite);
  3. one transaction: the inputs must still be live (locked) with the same metric list (a
     backfill may have added one: then the outputs are deleted, 'aborted', and the next run
     regroups), outputs enter the manifest, inputs become 'superseded' -> 'committed';
  4. delete the input blobs -> 'done'.

Safe while ingestion runs: late events for the day land in new small files that are not
inputs of this run, and the next run picks them up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from .adapters import parquet
from .adapters.blob import BlobArchive
from .core.naming import compacted_file_path

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


def _recover(conn: psycopg.Connection, archive: BlobArchive, day: date) -> int:
    fixed = 0
    for generation, state, outputs, inputs in conn.execute(
            "SELECT generation, state, output_paths, input_ids FROM raw_compactions WHERE event_date = %s "
            "AND state IN ('started', 'committed') ORDER BY created_at", (day,)).fetchall():
        if state == "started":
            for path in outputs:
                archive.delete(path)
            conn.execute("UPDATE raw_compactions SET state = 'aborted', finished_at = now() WHERE generation = %s",
                         (generation,))
        else:
            for (path,) in conn.execute("SELECT path FROM raw_files WHERE id = ANY(%s)", (inputs,)).fetchall():
                archive.delete(path)
            conn.execute("UPDATE raw_compactions SET state = 'done', finished_at = now() WHERE generation = %s",
                         (generation,))
        fixed += 1
    return fixed


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
    report.recovered = _recover(conn, archive, day)
    small = conn.execute(
        "SELECT id, path, byte_size, metrics FROM raw_files WHERE event_date = %s AND state = 'uploaded' "
        "AND byte_size < %s ORDER BY id", (day, target_bytes // 2)).fetchall()
    groups: dict[tuple[str, ...] | None, list[tuple[int, str]]] = {}
    for file_id, path, _, metrics in small:
        groups.setdefault(_metric_key(metrics), []).append((int(file_id), str(path)))
    ready = [(key, files) for key, files in groups.items() if len(files) >= min_files]
    if not ready:
        report.skipped_reason = f"{len(small)} small file(s): nothing to compact"
        return report
    for metrics, files in ready:
        aborted = _compact_group(conn, archive, day, files, metrics, target_bytes, crash_point, report)
        if aborted:
            report.skipped_reason = aborted
    return report


def _metric_key(metrics: list[str] | None) -> tuple[str, ...] | None:
    return None if metrics is None else tuple(sorted(set(metrics)))


def _compact_group(conn: psycopg.Connection, archive: BlobArchive, day: date, small: list[tuple[int, str]],
                   metrics: tuple[str, ...] | None, target_bytes: int, crash_point: CrashHook,
                   report: CompactionReport) -> str | None:
    """Merge one group of the day's small files (same metric list). Returns why it stopped
    without committing, or None once committed."""
    input_ids = [file_id for file_id, _ in small]
    tables = [parquet.decode(archive.download(path)) for _, path in small]
    merged = pa.concat_tables(tables)
    # each (partition, sequence number) once, even if an input was somehow duplicated
    keys = pc.binary_join_element_wise(merged["partition_id"], pc.cast(merged["sequence_number"], pa.string()), "/")
    _, first = np.unique(keys.to_numpy(zero_copy_only=False), return_index=True)
    merged = merged.take(pa.array(sorted(first.tolist())))
    merged = merged.sort_by([("occurred_at", "ascending"), ("partition_id", "ascending"),
                             ("sequence_number", "ascending")])
    # rows per output from the compressed size of a sample (small inputs carry much overhead)
    sample = merged.slice(0, min(merged.num_rows, 20_000))
    bytes_per_row = len(parquet.encode(sample)) / max(sample.num_rows, 1)
    per_file = max(1, int(target_bytes / bytes_per_row))
    n_out = -(-merged.num_rows // per_file)
    generation = hashlib.sha256(",".join(map(str, input_ids)).encode()).hexdigest()[:16]
    outputs = [compacted_file_path(day, generation, i) for i in range(n_out)]
    conn.execute("INSERT INTO raw_compactions (generation, event_date, input_ids, output_paths, state) "
                 "VALUES (%s, %s, %s, %s, 'started') ON CONFLICT (generation) DO UPDATE SET state = 'started', "
                 "output_paths = excluded.output_paths", (generation, day, input_ids, outputs))
    crash_point("after_intent")

    written: list[tuple[str, pa.Table, bytes]] = []
    for i, path in enumerate(outputs):
        part = merged.slice(i * per_file, per_file)
        if part.num_rows == 0:
            continue
        data = parquet.encode(part)
        archive.upload(path, data)
        written.append((path, part, data))
        crash_point("after_upload")
    crash_point("before_commit")

    with conn.transaction():
        live = conn.execute("SELECT id, metrics FROM raw_files WHERE id = ANY(%s) AND state = 'uploaded' FOR UPDATE",
                            (input_ids,)).fetchall()
        if len(live) != len(input_ids):
            raise RuntimeError(f"compaction {generation}: inputs changed underneath (another compaction?); re-run")
        changed = any(_metric_key(m) != metrics for _, m in live)
        if not changed:
            for path, part, data in written:
                occurred = part["occurred_at"]
                seqs = part["sequence_number"]
                conn.execute(
                    """INSERT INTO raw_files (id, path, container, partition_id, event_date, seq_min, seq_max,
                                              occurred_min, occurred_max, row_count, byte_size, state, generation,
                                              uploaded_at, metrics)
                       VALUES (nextval('raw_files_id_seq'), %s, %s, '*', %s, %s, %s, %s, %s, %s, %s, 'uploaded', %s,
                               now(), %s)""",
                    (path, archive.container_name, day, pc.min(seqs).as_py(), pc.max(seqs).as_py(),
                     pc.min(occurred).as_py(), pc.max(occurred).as_py(), part.num_rows, len(data), generation,
                     None if metrics is None else list(metrics)))
            conn.execute("UPDATE raw_files SET state = 'superseded', superseded_by = %s WHERE id = ANY(%s)",
                         (generation, input_ids))
            conn.execute("UPDATE raw_compactions SET state = 'committed', output_paths = %s WHERE generation = %s",
                         ([p for p, _, _ in written], generation))
    if changed:
        # a backfill added a metric to some inputs meanwhile: merging them now would blur which
        # events have it. Undo (outputs were never in the manifest); the next run regroups.
        for path, _, _ in written:
            archive.delete(path)
        conn.execute("UPDATE raw_compactions SET state = 'aborted', finished_at = now() WHERE generation = %s",
                     (generation,))
        return f"{len(small)} file(s) left as they are: a backfill changed their metrics meanwhile; re-run"
    crash_point("after_commit")
    for _, path in small:
        archive.delete(path)
    conn.execute("UPDATE raw_compactions SET state = 'done', finished_at = now() WHERE generation = %s", (generation,))
    report.inputs += len(small)
    report.outputs += [(p, len(d)) for p, _, d in written]
    report.rows += merged.num_rows
    return None


def days_to_compact(conn: psycopg.Connection, before: date, target_bytes: int = DEFAULT_TARGET_BYTES,
                    min_files: int = 2, lookback_days: int = 7) -> list[date]:
    """Finished days (before `before`) of the last `lookback_days` with small files to merge,
    or an unfinished compaction to recover."""
    rows = conn.execute(
        """SELECT event_date FROM raw_files WHERE state = 'uploaded' AND byte_size < %s
              AND event_date < %s AND event_date >= %s::date - %s
            GROUP BY event_date HAVING count(*) >= %s
           UNION
           SELECT event_date FROM raw_compactions WHERE state IN ('started', 'committed')
           ORDER BY 1""", (target_bytes // 2, before, before, lookback_days, min_files)).fetchall()
    return [r[0] for r in rows]
