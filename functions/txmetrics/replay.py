"""Failed items: list, show, fix, replay through the normal ingest path, mark resolved.

A replayed event is processed by the same pipeline as live traffic (partition "replay",
sequence number = the failed item's id), so deduplication still holds: replaying an item
twice, or an item whose event meanwhile arrived fixed from the producer, changes nothing.
An item whose (fixed) payload is still invalid is not replayed; the reason is noted. An item
refused because an identifier held a card number is replayed only once fixed: its stored
payload has that identifier masked, and the event must not be stored under an id its producer
never sent (nor merged with another whose id masks the same way).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

from .core.events import InboundEvent, Rejection, parse_event
from .core.masking import mask_text
from .errors import InvalidRequestError, NotFoundError

REPLAY_PARTITION = "replay"
# refusals whose stored payload has an identifier masked (core/events.py)
MASKED_IDENTIFIER_CODES = frozenset(f"card_number_in_{f}" for f in ("event_id", "transaction_id", "merchant_id"))


@dataclass
class ReplayOutcome:
    item_id: int
    replayed: bool
    note: str


def list_items(conn: psycopg.Connection, *, error_code: str | None = None, include_done: bool = False,
               limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(
        """SELECT id, error_code, event_id, partition_id, sequence_number, received_at, replayed, resolved,
                  left(detail, 120)
             FROM failed_items
            WHERE (%(code)s::text IS NULL OR error_code = %(code)s)
              AND (%(all)s OR (NOT replayed AND NOT resolved))
            ORDER BY id LIMIT %(limit)s""", {"code": error_code, "all": include_done, "limit": limit}).fetchall()
    keys = ("id", "error_code", "event_id", "partition_id", "sequence_number", "received_at", "replayed", "resolved",
            "detail")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def show(conn: psycopg.Connection, item_id: int) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM failed_items WHERE id = %s", (item_id,))
    row = cur.fetchone()
    if row is None:
        raise NotFoundError(f"no failed item {item_id}: `txmetrics failed list --all` lists them")
    return dict(zip([d.name for d in cur.description or []], row, strict=True))


def fix(conn: psycopg.Connection, item_id: int, payload: str, *, source: str = "the payload") -> None:
    """Store a corrected payload (the original stays for the record). It must be a JSON
    object, as every event is: anything else is refused before the item is touched. Card
    numbers in it are masked like any payload before it is stored (PCI DSS)."""
    try:
        document = json.loads(payload)
    except ValueError as exc:
        raise InvalidRequestError(f"{source} is not valid JSON ({exc}); nothing was stored") from None
    if not isinstance(document, dict):
        raise InvalidRequestError(f"{source} is JSON but not an object (an event is a JSON object); nothing was stored")
    with conn.transaction():
        if conn.execute("UPDATE failed_items SET fixed_payload = %s WHERE id = %s",
                        (mask_text(payload), item_id)).rowcount != 1:
            raise NotFoundError(f"no failed item {item_id}: `txmetrics failed list --all` lists them")


def set_field(conn: psycopg.Connection, item_id: int, path: str, value: Any) -> str:
    """Edit one (dotted) field of the item's JSON payload; returns the new payload as stored."""
    item = show(conn, item_id)
    try:
        doc = json.loads(item["fixed_payload"] or item["payload"])
    except ValueError:
        raise InvalidRequestError(f"failed item {item_id} is not JSON; use `txmetrics failed fix` with a whole "
                                  "corrected payload") from None
    if not isinstance(doc, dict):
        raise InvalidRequestError(f"failed item {item_id} is not a JSON object; use `txmetrics failed fix` with a "
                                  "whole corrected payload")
    node = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InvalidRequestError(f"{part!r} in {path!r} is not an object in failed item {item_id}")
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    payload = json.dumps(doc)
    fix(conn, item_id, payload)
    return mask_text(payload)           # as stored


def _require(conn: psycopg.Connection, item_ids: list[int]) -> None:
    """NotFoundError naming the ids that are not failed items."""
    if not item_ids:
        return
    found = {r[0] for r in conn.execute("SELECT id FROM failed_items WHERE id = ANY(%s)", (item_ids,)).fetchall()}
    missing = sorted(set(item_ids) - found)
    if missing:
        raise NotFoundError(f"no failed item {', '.join(map(str, missing))}: `txmetrics failed list --all` lists them")


def resolve(conn: psycopg.Connection, item_ids: list[int], note: str = "resolved without replay") -> int:
    _require(conn, item_ids)
    with conn.transaction():
        return conn.execute("UPDATE failed_items SET resolved = true, resolved_at = now(), replay_note = %s "
                            "WHERE id = ANY(%s) AND NOT resolved", (note, item_ids)).rowcount


def replay(conn: psycopg.Connection, pipeline: Any, *, item_ids: list[int] | None = None,
           error_code: str | None = None, force: bool = False) -> list[ReplayOutcome]:
    """Replay items by id or by error code through `pipeline.process`."""
    if not item_ids and not error_code:
        raise InvalidRequestError("name the items to replay: ids or --code ERROR_CODE")
    _require(conn, list(item_ids or []))
    rows = conn.execute(
        """SELECT id, coalesce(fixed_payload, payload), replayed, error_code, fixed_payload IS NOT NULL
             FROM failed_items
            WHERE (id = ANY(%(ids)s) OR error_code = %(code)s) AND NOT resolved ORDER BY id""",
        {"ids": item_ids or [], "code": error_code}).fetchall()
    outcomes = []
    for item_id, payload, replayed, code, fixed in rows:
        if replayed and not force:
            outcomes.append(ReplayOutcome(item_id, False, "already replayed"))
            continue
        if code in MASKED_IDENTIFIER_CODES and not fixed:
            field = code.removeprefix("card_number_in_")
            note = (f"not replayed: its {field} held a card number and is masked in the stored payload; "
                    f"set the producer's real {field} first (failed fix / set)")
            with conn.transaction():
                conn.execute("UPDATE failed_items SET replay_note = %s WHERE id = %s", (note, item_id))
            outcomes.append(ReplayOutcome(item_id, False, note))
            continue
        inbound = InboundEvent(body=payload.encode("utf-8"), partition_id=REPLAY_PARTITION,
                               sequence_number=int(item_id))
        parsed = parse_event(inbound)
        if isinstance(parsed, Rejection):
            note = f"still invalid: {parsed.error_code}: {parsed.detail}"
            with conn.transaction():
                conn.execute("UPDATE failed_items SET replay_note = %s WHERE id = %s", (note, item_id))
            outcomes.append(ReplayOutcome(item_id, False, note))
            continue
        report = pipeline.process(REPLAY_PARTITION, [inbound])
        note = "replayed" if report.new_events else "replayed (event already ingested: nothing added)"
        with conn.transaction():
            conn.execute("UPDATE failed_items SET replayed = true, replayed_at = coalesce(replayed_at, now()), "
                         "replay_note = %s WHERE id = %s", (note, item_id))
        outcomes.append(ReplayOutcome(item_id, True, note))
    return outcomes
