"""failed_items in PostgreSQL: the events the pipeline refused, with their error code and
masked payload (contract section 5), recorded by ingest and worked on by the operators
(`txmetrics failed`, txmetrics.replay) and the report.

Functions take the caller's connection and keyword-only arguments; the ones that change an
item run in the caller's transaction (replay.py decides those).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from ..core.events import Rejection
from ..core.naming import as_utc, datetime_to_us
from . import pgcopy

LISTED = ("id", "error_code", "event_id", "partition_id", "sequence_number", "received_at", "replayed", "resolved",
          "detail")


_RECORDED = ("item_key, partition_id, sequence_number, enqueued_at, event_id, error_code, detail, payload, "
             "payload_truncated")


def record(conn: psycopg.Connection, *, rejections: Sequence[Rejection], fresh: bool = False) -> int:
    """Insert the batch's refused events; an item already recorded (a retried batch: same
    item key) is left as it is. Returns how many were new.

    As the ledger claim: one binary COPY in a savepoint (binding nine parameter arrays cost
    about 50 us of worker CPU per item); on an item key already there, the savepoint is rolled
    back and the items go in with ON CONFLICT DO NOTHING. `fresh` (the caller expects every
    item key to be new, see postgres.BatchTransaction): no savepoint, and a key already there
    raises UniqueViolation, rolling back the caller's transaction."""
    if not rejections:
        return 0
    r = sorted(rejections, key=lambda x: x.item_key)        # one lock order for concurrent retries
    # a naive enqueued time (hand-made batches; the host's are aware) is UTC on both paths
    # below, whatever the session's TimeZone
    enqueued = [None if x.enqueued_at is None else as_utc(x.enqueued_at) for x in r]
    if pgcopy.copy_new(conn, f"failed_items ({_RECORDED})",
                       (_binary_row(x, at) for x, at in zip(r, enqueued, strict=True)), fresh=fresh):
        return len(r)
    return conn.execute(
        f"""INSERT INTO failed_items ({_RECORDED})
           SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[], %s::text[], %s::text[],
                                %s::text[], %s::text[], %s::bool[])
           ON CONFLICT (item_key) DO NOTHING""",
        ([x.item_key for x in r], [x.partition_id for x in r], [x.sequence_number for x in r],
         enqueued, [x.event_id for x in r], [x.error_code for x in r], [x.detail for x in r],
         [x.payload for x in r], [x.payload_truncated for x in r])).rowcount


def _binary_row(x: Rejection, enqueued: datetime | None) -> bytes:
    return (_NINE + pgcopy.text(x.item_key) + pgcopy.text(x.partition_id) + pgcopy.int8(x.sequence_number)
            + (pgcopy.NULL if enqueued is None else pgcopy.timestamptz(datetime_to_us(enqueued)))
            + pgcopy.text(x.event_id) + pgcopy.text(x.error_code) + pgcopy.text(x.detail) + pgcopy.text(x.payload)
            + pgcopy.boolean(x.payload_truncated))


_NINE = pgcopy.field_count(9)


def list_items(conn: psycopg.Connection, *, error_code: str | None, include_done: bool, limit: int
               ) -> list[dict[str, Any]]:
    """Items in id order (LISTED columns, detail cut to 120 characters): open ones only
    (neither replayed nor resolved) unless `include_done`; of one error code when given."""
    rows = conn.execute(
        """SELECT id, error_code, event_id, partition_id, sequence_number, received_at, replayed, resolved,
                  left(detail, 120)
             FROM failed_items
            WHERE (%(code)s::text IS NULL OR error_code = %(code)s)
              AND (%(all)s OR (NOT replayed AND NOT resolved))
            ORDER BY id LIMIT %(limit)s""", {"code": error_code, "all": include_done, "limit": limit}).fetchall()
    return [dict(zip(LISTED, r, strict=True)) for r in rows]


def error_codes(conn: psycopg.Connection, *, include_done: bool) -> list[str]:
    """The error codes items have (open ones only unless `include_done`), sorted."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT error_code FROM failed_items WHERE %(all)s OR (NOT replayed AND NOT resolved) "
        "ORDER BY 1", {"all": include_done})]


def get(conn: psycopg.Connection, *, item_id: int) -> dict[str, Any] | None:
    """Every column of one item, or None."""
    cur = conn.execute("SELECT * FROM failed_items WHERE id = %s", (item_id,))
    row = cur.fetchone()
    return None if row is None else dict(zip([d.name for d in cur.description or []], row, strict=True))


def existing_ids(conn: psycopg.Connection, *, item_ids: Sequence[int]) -> set[int]:
    return {r[0] for r in conn.execute("SELECT id FROM failed_items WHERE id = ANY(%s)", (list(item_ids),))}


def store_fix(conn: psycopg.Connection, *, item_id: int, payload: str) -> bool:
    """Set the corrected (already masked) payload; False when there is no such item."""
    return conn.execute("UPDATE failed_items SET fixed_payload = %s WHERE id = %s", (payload, item_id)).rowcount == 1


def mark_resolved(conn: psycopg.Connection, *, item_ids: Sequence[int], note: str) -> int:
    """Resolve the items not resolved yet; returns how many changed."""
    return conn.execute("UPDATE failed_items SET resolved = true, resolved_at = now(), replay_note = %s "
                        "WHERE id = ANY(%s) AND NOT resolved", (note, list(item_ids))).rowcount


@dataclass(frozen=True, slots=True)
class Replayable:
    id: int
    payload: str                 # the fixed payload when there is one, else the original
    replayed: bool
    error_code: str
    original: str                # the payload as refused (masked), whatever was fixed since


def replayable(conn: psycopg.Connection, *, item_ids: Sequence[int], error_code: str | None) -> list[Replayable]:
    """The unresolved items with one of `item_ids` or of `error_code`, in id order."""
    rows = conn.execute(
        """SELECT id, coalesce(fixed_payload, payload), replayed, error_code, payload
             FROM failed_items
            WHERE (id = ANY(%(ids)s) OR error_code = %(code)s) AND NOT resolved ORDER BY id""",
        {"ids": list(item_ids), "code": error_code}).fetchall()
    return [Replayable(*r) for r in rows]


def resolved_ids(conn: psycopg.Connection, *, item_ids: Sequence[int]) -> list[int]:
    """Those of `item_ids` that are resolved (closed), in id order."""
    return [r[0] for r in conn.execute("SELECT id FROM failed_items WHERE id = ANY(%s) AND resolved ORDER BY id",
                                       (list(item_ids),))]


def stored_times(conn: psycopg.Connection, *, event_id: str) -> list[datetime]:
    """The occurred_at of every event the ledger holds under this event id, earliest first:
    what a replay checks before storing its event. One lookup of the ledger's key
    (event_key) in each of its day partitions: fine for a command, not for ingest."""
    return [r[0] for r in conn.execute(
        "SELECT occurred_at FROM ingested_events WHERE event_key = txm_event_key(%s) ORDER BY 1", (event_id,))]


def note(conn: psycopg.Connection, *, item_id: int, note: str) -> None:
    """Why the item was not replayed, for the operator's next look."""
    conn.execute("UPDATE failed_items SET replay_note = %s WHERE id = %s", (note, item_id))


def mark_replayed(conn: psycopg.Connection, *, item_id: int, note: str) -> None:
    conn.execute("UPDATE failed_items SET replayed = true, replayed_at = coalesce(replayed_at, now()), "
                 "replay_note = %s WHERE id = %s", (note, item_id))


@dataclass(frozen=True, slots=True)
class WindowCount:
    window_start: datetime
    error_code: str
    items: int
    replayed: int
    resolved: int


def counts_by_window(conn: psycopg.Connection, *, start: datetime, end: datetime, window_seconds: int
                     ) -> list[WindowCount]:
    """Items per window (of their enqueue time, else their receipt) and error code in
    [start, end), with how many of them were replayed and resolved."""
    rows = conn.execute(
        """SELECT date_bin(make_interval(secs => %(step)s), coalesce(enqueued_at, received_at), timestamptz 'epoch'),
                  error_code, count(*), count(*) FILTER (WHERE replayed), count(*) FILTER (WHERE resolved)
             FROM failed_items
            WHERE coalesce(enqueued_at, received_at) >= %(start)s AND coalesce(enqueued_at, received_at) < %(end)s
            GROUP BY 1, 2 ORDER BY 1, 2""",
        {"step": window_seconds, "start": start, "end": end}).fetchall()
    return [WindowCount(*r) for r in rows]
