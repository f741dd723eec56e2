"""The raw-file manifest (raw_files), its outbox (raw_file_outbox) and the compaction journal
(raw_compactions): every read and write of them, for ingest, the outbox flush, queries,
compaction, backfill, rebuild and the report (docs/lake.md, docs/read-side.md).

Functions take the connection the caller's transaction runs on and keyword-only arguments;
none opens a transaction of its own, so each effect commits with the rows it records:
`record_pending` with the batch's ledger rows, metric rows and deltas (pipeline.py);
`add_metric` with the metric's rows and deltas of a file's events (backfill.py);
`insert_uploaded` with the ledger rows, metric rows and deltas of a rebuilt file
(rebuild.py), or with the supersession of a compaction's inputs (compaction.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from azure.core.exceptions import ResourceNotFoundError

from ..core.events import PaymentEvent
from ..core.naming import STAGING_PREFIX, datetime_to_us, us_to_datetime
from .blob import BlobArchive
from .plans import without_nested_loops

LIVE_STATES = ("uploaded", "pending")
# live files that can hold events in [start, end): the UTC date narrows the index scan, the
# time range of each file decides
_LIVE_IN_RANGE = """f.state IN ('uploaded', 'pending')
              AND f.event_date BETWEEN (%(start)s AT TIME ZONE 'UTC')::date AND (%(end)s AT TIME ZONE 'UTC')::date
              AND f.occurred_max >= %(start)s AND f.occurred_min < %(end)s"""


@dataclass(frozen=True, slots=True)
class RawFile:
    """A raw file's manifest row: where it is and what it holds."""

    path: str
    partition_id: str                  # '*': a compacted file (several partitions)
    event_date: date                   # the UTC day of its events (its date folder)
    seq_min: int
    seq_max: int
    occurred_min_us: int
    occurred_max_us: int
    row_count: int
    byte_size: int
    metrics: tuple[str, ...] | None    # the catalog's metrics its events have (None: before migration 0009)
    generation: str | None = None      # the compaction that wrote it
    # when its blob was written (rebuild: the blob's last modification), None: now. Retention
    # deletes the row by it as the blob rule deletes the blob by its modification time
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OutboxFile:
    """A file an ingest batch commits: its manifest row, its id, and its bytes, which the
    outbox keeps until the upload is confirmed."""

    id: int
    file: RawFile
    content: bytes

    @property
    def path(self) -> str:
        return self.file.path


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """A live raw file: its id, where it is, its UTC day, the metrics its events already
    have (None: written before migration 0009, unknown), and its bytes while its upload is
    not confirmed yet (state 'pending': the outbox holds them)."""

    id: int
    path: str
    state: str
    event_date: date
    metrics: tuple[str, ...] | None
    row_count: int
    outbox: bytes | None


@dataclass(frozen=True, slots=True)
class PlannedRead:
    """A live file a query reads: its path, its state and, while pending, its outbox bytes."""

    path: str
    state: str
    outbox: bytes | None


@dataclass(frozen=True, slots=True)
class ManifestDay:
    """The live files of one UTC event date, as the manifest records them."""

    day: date
    files: int
    bytes: int
    rows: int


def _metrics(value: list[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _planned(rows: list[tuple[Any, ...]]) -> list[PlannedRead]:
    return [PlannedRead(str(r[0]), str(r[1]), bytes(r[2]) if r[2] is not None else None) for r in rows]


# ------------------------------------------------------------------ ingest (in the batch transaction)
def paths_in_manifest(conn: psycopg.Connection, *, paths: Sequence[str]) -> set[str]:
    """The paths among `paths` the manifest has (live or not)."""
    if not paths:
        return set()
    rows = conn.execute("SELECT path FROM raw_files WHERE path = ANY(%s)", (list(paths),)).fetchall()
    return {str(r[0]) for r in rows}


def record_pending(conn: psycopg.Connection, *, file: RawFile, content: bytes, container: str) -> int | None:
    """Enter one of a batch's files in the manifest as 'pending' and its bytes in the outbox;
    its new id, or None, with nothing written, when the manifest already has a file of that
    path (live or not): the caller then picks another name. One statement, one round trip:
    the path check, the id, the manifest row and the outbox row."""
    row = conn.execute(
        """WITH f AS (
               INSERT INTO raw_files (id, path, container, partition_id, event_date, seq_min, seq_max,
                                      occurred_min, occurred_max, row_count, byte_size, state, metrics)
               VALUES (nextval('raw_files_id_seq'), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'pending', %s)
               ON CONFLICT (path) DO NOTHING
               RETURNING id),
             o AS (INSERT INTO raw_file_outbox (raw_file_id, content) SELECT id, %s FROM f)
           SELECT id FROM f""",
        (file.path, container, file.partition_id, file.event_date, file.seq_min, file.seq_max,
         us_to_datetime(file.occurred_min_us), us_to_datetime(file.occurred_max_us), file.row_count, file.byte_size,
         None if file.metrics is None else list(file.metrics), content)).fetchone()
    return None if row is None else int(row[0])


# ------------------------------------------------------------------ the outbox (after the batch commits)
# Uploading a committed file happens while its manifest row is locked, and only while the row
# is still 'pending' (`pending_uploads`, `lock_pending`, in the transaction that then marks it
# uploaded): two uploaders of one file (the partition's next batch and the daily timer's
# flush) take turns or skip it, and no upload starts after the file was marked uploaded and
# compaction merged and deleted it (an audit: such a late upload put the superseded file back
# into the tree, its events twice). Compaction takes only 'uploaded' files.

def pending_uploads(conn: psycopg.Connection, *, partition_id: str | None,
                    wait: bool = False) -> list[tuple[int, str, bytes]]:
    """(id, path, bytes) of the files committed but not confirmed uploaded (of one partition,
    or of all with None), in id order, locked for this transaction; a file another uploader
    holds is skipped (it is being uploaded), or, with `wait`, waited for: taken when that
    uploader failed and the file is still pending, left out when it was marked uploaded. An
    ingest batch waits (it may return only once its events are in the tree: the other uploader,
    the daily flush, may fail after the batch returned); the daily flush skips (it never waits
    for a batch's upload). Called inside the transaction that marks them: outside one, the
    locks would end with the statement and two uploaders could take a file."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise ValueError("pending_uploads locks the files for the caller's transaction: call it inside one "
                         "(with conn.transaction(): ...), which marks them uploaded")
    # Without nested loops: the outbox is a queue, analysed while (nearly) empty, and pending
    # files are rare when raw_files is analysed, so both sides are estimated at 1 row; after
    # an outage of Blob Storage, thousands of files wait, and a nested loop compared every
    # outbox row with every pending file (20,000 files: 71 s instead of 0.1 s)
    with without_nested_loops(conn):
        rows = conn.execute(
            """SELECT f.id, f.path, o.content FROM raw_file_outbox o JOIN raw_files f ON f.id = o.raw_file_id
                WHERE (%(p)s::text IS NULL OR f.partition_id = %(p)s) AND f.state = 'pending'
                ORDER BY f.id FOR UPDATE OF f""" + ("" if wait else " SKIP LOCKED"),
            {"p": partition_id}).fetchall()
    return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]


def lock_pending(conn: psycopg.Connection, *, file_ids: Sequence[int]) -> set[int]:
    """Those of `file_ids` still pending, locked for this transaction (to upload them, then
    mark them); one already uploaded is left out. A file another uploader (the daily flush)
    holds is waited for, then left out if that uploader marked it, taken if it failed: the
    batch that committed the file returns only once the file is in the tree. Skipping it (until
    an audit) let the batch return, and the host checkpoint it, while a flush that then failed
    left the file in the outbox, out of the tree, until the partition's next batch or the next
    day's flush."""
    if not file_ids:
        return set()
    return {int(r[0]) for r in conn.execute(
        "SELECT id FROM raw_files WHERE id = ANY(%s) AND state = 'pending' ORDER BY id FOR UPDATE",
        (list(file_ids),))}


def mark_uploaded(conn: psycopg.Connection, *, file_ids: Sequence[int], partition_id: str | None = None) -> int:
    """The files are in Blob Storage: state 'uploaded', their outbox rows gone. Call inside
    a transaction (it relaxes that transaction's synchronous_commit). With `partition_id`,
    returns how many other files of that partition still wait for their upload (left by a
    crashed attempt), in the same statement; else 0."""
    # No need to wait for this commit to reach disk: should a server crash lose it, the
    # file is still 'pending' and the next flush uploads the same bytes to the same
    # name again. Saves one WAL flush per batch on the hot path.
    conn.execute("SET LOCAL synchronous_commit = off")
    # one statement: data-modifying WITHs run to completion whether or not they are read, and
    # the count sees the rows as they were before them (so the marked files are left out by id)
    row = conn.execute(
        """WITH emptied AS (DELETE FROM raw_file_outbox WHERE raw_file_id = ANY(%(ids)s)),
                marked AS (UPDATE raw_files SET state = 'uploaded', uploaded_at = now()
                            WHERE id = ANY(%(ids)s) AND state = 'pending')
           SELECT count(*) FROM raw_files
            WHERE %(p)s::text IS NOT NULL AND partition_id = %(p)s AND state = 'pending' AND id <> ALL(%(ids)s)""",
        {"ids": list(file_ids), "p": partition_id}).fetchone()
    return int(row[0]) if row else 0


# ------------------------------------------------------------------ reading the lake
def files_in_range(conn: psycopg.Connection, *, start: datetime, end: datetime) -> list[PlannedRead]:
    """The live files that can hold events in [start, end), in time order."""
    with without_nested_loops(conn):     # as pending_uploads: the outbox's estimate is 0 rows
        rows = conn.execute(
            f"""SELECT f.path, f.state, o.content FROM raw_files f
                 LEFT JOIN raw_file_outbox o ON o.raw_file_id = f.id
                WHERE {_LIVE_IN_RANGE}
                ORDER BY f.event_date, f.occurred_min, f.path""", {"start": start, "end": end}).fetchall()
    return _planned(rows)


def files_of_event(conn: psycopg.Connection, *, event_id: str, start: datetime | None, end: datetime | None
                   ) -> list[PlannedRead]:
    """The live files that can hold the event, within [start, end) when given: its ledger row
    gives its time, and the live files of that day whose time range covers it are the
    candidates (the file that took it, or the compacted file that replaced that one, plus any
    other batch's file spanning the same instant; the reader filters on event_id)."""
    rows = conn.execute(
        """SELECT DISTINCT f.path, f.state, o.content, f.event_date, f.occurred_min
             FROM ingested_events e
             JOIN raw_files f ON f.event_date = (e.occurred_at AT TIME ZONE 'UTC')::date
                             AND e.occurred_at BETWEEN f.occurred_min AND f.occurred_max
             LEFT JOIN raw_file_outbox o ON o.raw_file_id = f.id
            WHERE e.event_key = txm_event_key(%(id)s)
              AND (%(start)s::timestamptz IS NULL OR e.occurred_at >= %(start)s)
              AND (%(end)s::timestamptz IS NULL OR e.occurred_at < %(end)s)
              AND f.state IN ('uploaded', 'pending')
            ORDER BY f.event_date, f.occurred_min, f.path""", {"id": event_id, "start": start, "end": end}).fetchall()
    return _planned([r[:3] for r in rows])


def files_per_day(conn: psycopg.Connection, *, first: date, last: date) -> list[ManifestDay]:
    """Files, bytes and rows per UTC event date in [first, last]: every live file (uploaded,
    or committed and awaiting upload), not the inputs a compaction replaced."""
    rows = conn.execute(
        """SELECT event_date, count(*), sum(byte_size)::bigint, sum(row_count)::bigint FROM raw_files
            WHERE state <> 'superseded' AND event_date BETWEEN %s AND %s GROUP BY 1 ORDER BY 1""",
        (first, last)).fetchall()
    return [ManifestDay(day, int(files), int(size), int(n)) for day, files, size, n in rows]


# ------------------------------------------------------------------ backfill
def files_lacking_metric(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime
                         ) -> list[ManifestFile]:
    """Live files that can hold events in [start, end) and whose events do not all have
    `metric` yet (or may not: files written before the record existed), in time order."""
    with without_nested_loops(conn):     # as pending_uploads: the outbox's estimate is 0 rows
        rows = conn.execute(
            f"""SELECT f.id, f.path, f.state, f.event_date, f.metrics, f.row_count, o.content
                 FROM raw_files f LEFT JOIN raw_file_outbox o ON o.raw_file_id = f.id
                WHERE {_LIVE_IN_RANGE}
                  AND (f.metrics IS NULL OR NOT %(metric)s = ANY (f.metrics))
                ORDER BY f.event_date, f.occurred_min, f.id""",
            {"start": start, "end": end, "metric": metric}).fetchall()
    return [ManifestFile(int(r[0]), str(r[1]), str(r[2]), r[3], _metrics(r[4]), int(r[5]),
                         None if r[6] is None else bytes(r[6])) for r in rows]


def events_before_metric(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime
                         ) -> tuple[int, int]:
    """(files, events) of the live files that can hold events in [start, end) and whose
    record says their events lack `metric` (ingested before the catalog had it, not
    backfilled). Files from before the record (migration 0009) are not counted: unknown."""
    row = conn.execute(
        f"""SELECT count(*), coalesce(sum(f.row_count), 0)::bigint FROM raw_files f
            WHERE {_LIVE_IN_RANGE} AND f.metrics IS NOT NULL AND NOT %(metric)s = ANY (f.metrics)""",
        {"start": start, "end": end, "metric": metric}).fetchone()
    assert row is not None          # an aggregate always has its row
    return int(row[0]), int(row[1])


def lock_file(conn: psycopg.Connection, *, file_id: int) -> tuple[str, tuple[str, ...] | None] | None:
    """Lock a file's manifest row for this transaction; its (state, metrics), or None when it
    is gone. Two backfills of one file take turns here; the second then sees the first's
    metric and skips the file."""
    row = conn.execute("SELECT state, metrics FROM raw_files WHERE id = %s FOR UPDATE", (file_id,)).fetchone()
    if row is None:
        return None
    return str(row[0]), _metrics(row[1])


def add_metric(conn: psycopg.Connection, *, file_id: int, metric: str) -> None:
    conn.execute("UPDATE raw_files SET metrics = array_append(metrics, %s) WHERE id = %s "
                 "AND metrics IS NOT NULL AND NOT %s = ANY (metrics)", (metric, file_id, metric))


def events_with_metric(conn: psycopg.Connection, *, metric: str, events: Sequence[PaymentEvent]
                       ) -> set[tuple[str, int]]:
    """(event_id, occurred_us) of the events that have a `metric` row in dynamic_metrics: how
    a file written before migration 0009 is backfilled, event by event. dynamic_metrics has no
    index by event, so the file's time range bounds the scan (its BRIN index)."""
    if not events:
        return set()
    low = min(e.occurred_us for e in events)
    high = max(e.occurred_us for e in events)
    # by hash join: the file's range is usually written after its day partition's last
    # ANALYZE, estimated at a row, and on that a small file's events were compared with every
    # row of the range (adapters/plans.py; tests/test_backfill_plans.py)
    with without_nested_loops(conn):
        rows = conn.execute(
            """SELECT m.event_id, m.occurred_at FROM dynamic_metrics m
                 JOIN unnest(%s::text[], %s::timestamptz[]) AS k(event_id, occurred_at)
                   ON k.event_id = m.event_id AND k.occurred_at = m.occurred_at
                WHERE m.metric_name = %s AND m.occurred_at BETWEEN %s AND %s""",
            ([e.event_id for e in events], [us_to_datetime(e.occurred_us) for e in events], metric,
             us_to_datetime(low), us_to_datetime(high))).fetchall()
    return {(str(r[0]), datetime_to_us(r[1])) for r in rows}


# ------------------------------------------------------------------ rebuild and compaction
def insert_uploaded(conn: psycopg.Connection, *, file: RawFile, container: str, skip_existing: bool = False
                    ) -> int | None:
    """Enter a file already in Blob Storage into the manifest, as uploaded; its new id.

    `skip_existing` (rebuild): None when the manifest has the path already (a rebuild run
    before, or running now: the path is unique, so a second run waits here for the first and
    then skips the file). Without it (compaction) an existing path is an error."""
    on_conflict = "ON CONFLICT (path) DO NOTHING " if skip_existing else ""
    row = conn.execute(
        f"""INSERT INTO raw_files (id, path, container, partition_id, event_date, seq_min, seq_max, occurred_min,
                                   occurred_max, row_count, byte_size, state, generation, uploaded_at, metrics,
                                   created_at)
            VALUES (nextval('raw_files_id_seq'), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'uploaded', %s, now(), %s,
                    coalesce(%s, now()))
            {on_conflict}RETURNING id""",
        (file.path, container, file.partition_id, file.event_date, file.seq_min, file.seq_max,
         us_to_datetime(file.occurred_min_us), us_to_datetime(file.occurred_max_us), file.row_count, file.byte_size,
         file.generation, None if file.metrics is None else list(file.metrics), file.created_at)).fetchone()
    return None if row is None else int(row[0])


# ------------------------------------------------------------------ compaction
def small_files(conn: psycopg.Connection, *, day: date, below_bytes: int) -> list[tuple[int, str, list[str] | None]]:
    """(id, path, metrics) of the day's uploaded files smaller than `below_bytes`, in id order."""
    rows = conn.execute(
        "SELECT id, path, byte_size, metrics FROM raw_files WHERE event_date = %s AND state = 'uploaded' "
        "AND byte_size < %s ORDER BY id", (day, below_bytes)).fetchall()
    return [(int(file_id), str(path), metrics) for file_id, path, _, metrics in rows]


def lock_uploaded(conn: psycopg.Connection, *, file_ids: Sequence[int]) -> list[tuple[int, list[str] | None]]:
    """Lock the files among `file_ids` that are still 'uploaded'; their (id, metrics)."""
    rows = conn.execute("SELECT id, metrics FROM raw_files WHERE id = ANY(%s) AND state = 'uploaded' FOR UPDATE",
                        (list(file_ids),)).fetchall()
    return [(int(r[0]), r[1]) for r in rows]


def supersede(conn: psycopg.Connection, *, file_ids: Sequence[int], generation: str) -> None:
    """The files are replaced by the outputs of compaction `generation`."""
    conn.execute("UPDATE raw_files SET state = 'superseded', superseded_by = %s WHERE id = ANY(%s)",
                 (generation, list(file_ids)))


def move(conn: psycopg.Connection, *, old_path: str, new_path: str) -> bool:
    """A file now lives at `new_path` (a compaction output published from staging); False when
    no file has `old_path` (moved already)."""
    return conn.execute("UPDATE raw_files SET path = %s WHERE path = %s", (new_path, old_path)).rowcount == 1


def live_ids_of(conn: psycopg.Connection, *, paths: Sequence[str]) -> list[int]:
    """The ids of the live files (uploaded or pending) at `paths`."""
    if not paths:
        return []
    return [int(i) for (i,) in conn.execute("SELECT id FROM raw_files WHERE path = ANY(%s) AND state IN "
                                            "('uploaded', 'pending')", (list(paths),)).fetchall()]


def paths_of(conn: psycopg.Connection, *, file_ids: Sequence[int]) -> list[str]:
    return [str(p) for (p,) in conn.execute("SELECT path FROM raw_files WHERE id = ANY(%s)",
                                            (list(file_ids),)).fetchall()]


def days_to_compact(conn: psycopg.Connection, *, before: date, below_bytes: int, min_files: int,
                    lookback_days: int) -> list[date]:
    """Days before `before`, within `lookback_days`, with at least `min_files` uploaded files
    smaller than `below_bytes`, or an unfinished compaction to recover."""
    rows = conn.execute(
        """SELECT event_date FROM raw_files WHERE state = 'uploaded' AND byte_size < %s
              AND event_date < %s AND event_date >= %s::date - %s
            GROUP BY event_date HAVING count(*) >= %s
           UNION
           SELECT event_date FROM raw_compactions WHERE state IN ('started', 'committed')
           ORDER BY 1""", (below_bytes, before, before, lookback_days, min_files)).fetchall()
    return [r[0] for r in rows]


@dataclass(frozen=True, slots=True)
class Compaction:
    """A compaction journal row (raw_compactions) not finished yet."""

    generation: str
    state: str                      # 'started' or 'committed'
    output_paths: list[str]
    input_ids: list[int]


def unfinished_compactions(conn: psycopg.Connection, *, day: date) -> list[Compaction]:
    rows = conn.execute(
        "SELECT generation, state, output_paths, input_ids FROM raw_compactions WHERE event_date = %s "
        "AND state IN ('started', 'committed') ORDER BY created_at", (day,)).fetchall()
    return [Compaction(str(g), str(s), list(o), list(i)) for g, s, o, i in rows]


def start_compaction(conn: psycopg.Connection, *, generation: str, day: date, input_ids: Sequence[int],
                     output_paths: Sequence[str]) -> bool:
    """Record the intent (inputs, output names) before any effect: state 'started'. False
    when this generation (the same inputs) already committed or finished: never restarted."""
    return conn.execute(
        "INSERT INTO raw_compactions (generation, event_date, input_ids, output_paths, state) "
        "VALUES (%s, %s, %s, %s, 'started') ON CONFLICT (generation) DO UPDATE SET state = 'started', "
        "output_paths = excluded.output_paths WHERE raw_compactions.state IN ('started', 'aborted')",
        (generation, day, list(input_ids), list(output_paths))).rowcount == 1


@contextlib.contextmanager
def compaction_lock(conn: psycopg.Connection, day: date) -> Iterator[bool]:
    """The day's compaction lock (a session advisory lock): True while held, False when
    another process holds it (the timer and `txmetrics compact`, or a rebuild). Two runs of
    one day would pick the same inputs: the slower one's recovery could then delete the
    other's published output after its inputs were gone."""
    key = day.toordinal()
    row = conn.execute("SELECT pg_try_advisory_lock(hashtext('txmetrics.compact_day'), %s)", (key,)).fetchone()
    held = bool(row and row[0])
    try:
        yield held
    finally:
        if held:
            conn.execute("SELECT pg_advisory_unlock(hashtext('txmetrics.compact_day'), %s)", (key,))


def compaction_state(conn: psycopg.Connection, *, generation: str) -> str | None:
    """The journal's state of a compaction, None when the journal does not know it."""
    row = conn.execute("SELECT state FROM raw_compactions WHERE generation = %s", (generation,)).fetchone()
    return str(row[0]) if row else None


def commit_compaction(conn: psycopg.Connection, *, generation: str, output_paths: Sequence[str]) -> None:
    """The outputs are in the manifest and the inputs superseded (same transaction): 'committed'."""
    conn.execute("UPDATE raw_compactions SET state = 'committed', output_paths = %s WHERE generation = %s",
                 (list(output_paths), generation))


def finish_compaction(conn: psycopg.Connection, *, generation: str, state: str) -> None:
    """'done' (inputs deleted) or 'aborted' (outputs deleted, never in the manifest)."""
    if state not in ("done", "aborted"):
        raise ValueError(f"a compaction finishes 'done' or 'aborted', not {state!r}")
    conn.execute("UPDATE raw_compactions SET state = %s, finished_at = now() WHERE generation = %s",
                 (state, generation))


def download_file(archive: BlobArchive, path: str) -> bytes | None:
    """A live file's bytes by the path the manifest gave (None: in the archive tier). A
    compaction output read at its staging path may have been published meanwhile (uploaded to
    its place in the tree before the staged copy goes, compaction.py): read it there."""
    try:
        return archive.download_unless_archived(path)
    except ResourceNotFoundError:
        if not path.startswith(STAGING_PREFIX):
            raise
        return archive.download_unless_archived(path[len(STAGING_PREFIX):])
