"""Failed items: list, show, fix, replay through the normal ingest path, mark resolved.

A replayed event is processed by the same pipeline as live traffic (partition "replay",
sequence number derived from its event id: naming.replay_sequence_number; not the failed
item's id, which starts again at 1 after a database loss), so deduplication still holds:
replaying an item twice, or an item whose event meanwhile arrived fixed from the producer,
changes nothing.
An item whose (fixed) payload is still invalid is not replayed; the reason is noted. An item
refused because an identifier held a card number is replayed only once that identifier is set
again (differs from the refused payload's): its stored payload has that identifier masked, and the event must not be stored under an id its producer
never sent (nor merged with another whose id masks the same way). An item whose event id is
already stored with another occurred_at (a corrected time replayed with --force, or the
producer's own copy) is not replayed either: the ledger deduplicates by (event_id,
occurred_at), so it would be stored twice; a replay cannot change a stored event.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import psycopg

from .adapters import failed_items, partitions
from .core.catalog import contract_fields
from .core.events import InboundEvent, Rejection, masked_json_text, parse_event
from .core.naming import replay_sequence_number
from .core.tables import LEDGER
from .errors import InvalidRequestError, NotFoundError

REPLAY_PARTITION = "replay"
# refusals whose stored payload has an identifier masked (core/events.py)
MASKED_IDENTIFIER_CODES = frozenset(f"card_number_in_{f}" for f in ("event_id", "transaction_id", "merchant_id"))
MASKED_METRIC_SOURCE_CODE = "card_number_in_metric_source"      # Catalog.masked_source_problem


@dataclass
class ReplayOutcome:
    item_id: int
    replayed: bool
    note: str


def list_items(conn: psycopg.Connection, *, error_code: str | None = None, include_done: bool = False,
               limit: int = 50) -> list[dict[str, Any]]:
    return failed_items.list_items(conn, error_code=error_code, include_done=include_done, limit=limit)


def codes_note(conn: psycopg.Connection, error_code: str, *, include_done: bool) -> str:
    """Why a selection by `error_code` found nothing, when the code is one no item has (a
    misspelt code selects nothing, and would otherwise look like a clean queue)."""
    codes = failed_items.error_codes(conn, include_done=include_done)
    which = "items" if include_done else "open items"
    if error_code in codes:
        return ""
    if not codes:
        return f"no {which} at all (error code {error_code!r} or any other)"
    close = difflib.get_close_matches(error_code, codes, n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no {which} have error code {error_code!r}{hint}; the codes {which} have: {', '.join(codes)}"


def show(conn: psycopg.Connection, item_id: int) -> dict[str, Any]:
    item = failed_items.get(conn, item_id=item_id)
    if item is None:
        raise NotFoundError(f"no failed item {item_id}: `txmetrics failed list --all` lists them")
    return item


def fix(conn: psycopg.Connection, item_id: int, payload: str, *, source: str = "the payload") -> str:
    """Store a corrected payload (the original stays for the record); returns it as stored. It
    must be a JSON object, as every event is: anything else is refused before the item is
    touched. Card numbers in it are masked as ingest masks a body before it is stored (PCI
    DSS): in the decoded document, so escaped digits and numbers holding one are found too."""
    try:
        document = json.loads(payload)
    except ValueError as exc:
        raise InvalidRequestError(f"{source} is not valid JSON ({exc}); nothing was stored") from None
    if not isinstance(document, dict):
        raise InvalidRequestError(f"{source} is JSON but not an object (an event is a JSON object); nothing was stored")
    masked = masked_json_text(payload)
    with conn.transaction():
        if not failed_items.store_fix(conn, item_id=item_id, payload=masked):
            raise NotFoundError(f"no failed item {item_id}: `txmetrics failed list --all` lists them")
    return masked


# Numbers as written: an amount of 123456789.123456789 read into a float and written back
# would be stored, counted and archived as 123456789.12345679 (exact Decimals both ways).
_EXACT_DECODER = msgspec.json.Decoder(float_hook=Decimal)
_EXACT_ENCODER = msgspec.json.Encoder(decimal_format="number")


def parse_value(text: str) -> Any:
    """A value typed for `set_field`: JSON if it parses (numbers exactly as written), else the
    text itself."""
    try:
        return _EXACT_DECODER.decode(text)
    except msgspec.DecodeError:
        return text


def set_field(conn: psycopg.Connection, item_id: int, path: str, value: Any, *,
              extra_fields: Sequence[str] = ()) -> str:
    """Edit one (dotted) field of the item's JSON payload; returns the new payload as stored.
    Every other number of the payload keeps the digits it was written with. A new top-level
    field that is a near miss of a contract field is refused as a typo, unless it is one of
    `extra_fields` (the catalog's: fields beyond the contract, listed on purpose)."""
    item = show(conn, item_id)
    try:
        doc = _EXACT_DECODER.decode(item["fixed_payload"] or item["payload"])
    except msgspec.DecodeError:
        raise InvalidRequestError(f"failed item {item_id} is not JSON; use `txmetrics failed fix` with a whole "
                                  "corrected payload") from None
    if not isinstance(doc, dict):
        raise InvalidRequestError(f"failed item {item_id} is not a JSON object; use `txmetrics failed fix` with a "
                                  "whole corrected payload")
    node = doc
    parts = path.split(".")
    if parts[0] not in extra_fields:
        _refuse_near_miss(item_id, parts[0], doc, path)
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InvalidRequestError(f"{part!r} in {path!r} is not an object in failed item {item_id}")
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return fix(conn, item_id, _EXACT_ENCODER.encode(doc).decode())        # as stored


def _refuse_near_miss(item_id: int, head: str, doc: dict[str, Any], path: str) -> None:
    """A new top-level field that is a near miss of a field of the event contract (statuss,
    curency) is a typo: set, it would leave the field meant unfixed and add one the event
    never had. A field of the producer's own (events may carry them) is set as asked."""
    if head in doc or head in contract_fields():
        return
    close = difflib.get_close_matches(head, contract_fields(), n=1, cutoff=0.9)
    if close:
        meant = close[0] + path[len(head):]
        raise InvalidRequestError(
            f"failed item {item_id} has no field {head!r}, and the event contract has none (did you mean {meant!r}?); "
            f"nothing was stored; fix: `txmetrics failed set {item_id} {meant} VALUE`, or, to add a field of your "
            f"own named {head!r}, list it in the catalog's extra_fields, or use `txmetrics failed fix {item_id} "
            "--payload-file FILE` with the whole payload")


def _require(conn: psycopg.Connection, item_ids: list[int]) -> None:
    """NotFoundError naming the ids that are not failed items."""
    if not item_ids:
        return
    missing = sorted(set(item_ids) - failed_items.existing_ids(conn, item_ids=item_ids))
    if missing:
        raise NotFoundError(f"no failed item {', '.join(map(str, missing))}: `txmetrics failed list --all` lists them")


def resolve(conn: psycopg.Connection, item_ids: list[int], note: str = "resolved without replay") -> int:
    _require(conn, item_ids)
    with conn.transaction():
        return failed_items.mark_resolved(conn, item_ids=item_ids, note=note)


def replay(conn: psycopg.Connection, pipeline: Any, *, item_ids: list[int] | None = None,
           error_code: str | None = None, force: bool = False) -> list[ReplayOutcome]:
    """Replay items by id or by error code through `pipeline.process`."""
    if not item_ids and not error_code:
        raise InvalidRequestError("name the items to replay: ids or --code ERROR_CODE")
    _require(conn, list(item_ids or []))
    outcomes = [_replay_one(conn, pipeline, item, force=force)
                for item in failed_items.replayable(conn, item_ids=item_ids or [], error_code=error_code)]
    # an item named by id that is closed is said, not skipped in silence
    outcomes += [ReplayOutcome(i, False, "not replayed: the item is resolved (closed, `txmetrics failed resolve`); "
                                         "`txmetrics failed show` says when and why")
                 for i in failed_items.resolved_ids(conn, item_ids=item_ids or [])]
    return sorted(outcomes, key=lambda o: o.item_id)


def _replay_one(conn: psycopg.Connection, pipeline: Any, item: failed_items.Replayable, *, force: bool
                ) -> ReplayOutcome:
    if item.replayed and not force:
        return ReplayOutcome(item.id, False, "already replayed")
    if item.error_code in MASKED_IDENTIFIER_CODES:
        # fixed means this identifier set again: an edit of any other field (or a `failed fix` of
        # the payload `failed show` printed) leaves the masked id, which two events may share
        field = item.error_code.removeprefix("card_number_in_")
        if _document_or_empty(item.payload).get(field) == _document_or_empty(item.original).get(field):
            return _not_replayed(conn, item.id, f"not replayed: its {field} held a card number and is masked in the "
                                                f"stored payload; set the producer's real {field} first (failed "
                                                "fix / set)")
    if item.error_code == MASKED_METRIC_SOURCE_CODE and \
            (masked := pipeline.catalog.masked_sources(_document_or_empty(item.payload))):
        # replayed so, the masked value would store the event without that metric's row
        return _not_replayed(conn, item.id, f"not replayed: {', '.join(masked)} held a card number and is masked in "
                                            "the stored payload; set it first (failed set ID FIELD VALUE, with a "
                                            "number, or null to store the event without it)")
    body = item.payload.encode("utf-8")
    parsed = parse_event(InboundEvent(body=body, partition_id=REPLAY_PARTITION, sequence_number=0),
                         masked_check=pipeline.catalog.masked_source_problem)      # as ingest will parse it
    if isinstance(parsed, Rejection):
        return _not_replayed(conn, item.id, f"still invalid: {parsed.error_code}: {parsed.detail}")
    kept_since = partitions.horizon(conn, table=LEDGER)
    if kept_since is not None and parsed.occurred_at.astimezone(UTC).date() < kept_since:
        return _not_replayed(conn, item.id, f"not replayed: occurred_at {parsed.occurred_at.isoformat()} is before "
                                            f"{kept_since}, the first day the ledger keeps (its retention): whether "
                                            "it was stored before can no longer be told; keep the ledger longer "
                                            "(tables.ingested_events in lifecycle/<stack>.yaml), or close the item")
    stored = failed_items.stored_times(conn, event_id=parsed.event_id)
    if stored and parsed.occurred_at not in stored:
        return _not_replayed(conn, item.id, _stored_at_another_time(item.id, parsed.event_id, parsed.occurred_at,
                                                                    stored))
    # the archive key comes from the event's identity (see replay_sequence_number)
    inbound = InboundEvent(body=body, partition_id=REPLAY_PARTITION,
                           sequence_number=replay_sequence_number(parsed.event_id))
    report = pipeline.process(REPLAY_PARTITION, [inbound])
    if report.failed:        # refused by ingest itself (e.g. the ledger's retention moved meanwhile)
        return _not_replayed(conn, item.id, f"not replayed: ingest refused it ({', '.join(report.failed_by_code)})")
    note = "replayed" if report.new_events else "replayed (event already ingested: nothing added)"
    with conn.transaction():
        failed_items.mark_replayed(conn, item_id=item.id, note=note)
    return ReplayOutcome(item.id, True, note)


def _document_or_empty(payload: str) -> dict[str, Any]:
    try:
        doc = _EXACT_DECODER.decode(payload)
    except msgspec.DecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _stored_at_another_time(item_id: int, event_id: str, occurred_at: datetime, stored: list[datetime]) -> str:
    """The note of a replay refused because its event id is stored at another time: on
    another UTC day the ledger would take it again (it keeps an event_id once a day), adding
    the event a second time (contract section 4: an event_id delivered again never adds a
    row); on the same day nothing would be added, and the corrected time would be lost
    without a word."""
    times = ", ".join(t.astimezone(UTC).isoformat() for t in stored)
    return (f"not replayed: event_id {event_id!r} is already stored with occurred_at {times}, this item has "
            f"{occurred_at.astimezone(UTC).isoformat()}; a replay cannot change a stored event (on another day it "
            f"would be counted twice). If the stored event is right, close the item (txmetrics failed resolve {item_id}); to replay "
            "it anyway, set occurred_at to the stored time (nothing is added)")


def _not_replayed(conn: psycopg.Connection, item_id: int, note: str) -> ReplayOutcome:
    with conn.transaction():
        failed_items.note(conn, item_id=item_id, note=note)
    return ReplayOutcome(item_id, False, note)
