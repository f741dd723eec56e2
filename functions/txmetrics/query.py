"""Raw-event queries: events in a UTC time range, with filters, read back from the Parquet
archive, opening only the files whose time range overlaps (from the raw_files manifest).

Files in the archive tier cannot be read (409 BlobArchived): they are reported by name
instead of failing the query half-way; `rehydrate()` asks Azure to bring them back.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .adapters import manifest, partitions
from .adapters.blob import BlobArchive
from .adapters.manifest import PlannedRead
from .adapters.parquet import UTC_US, raw_event_schema
from .core import fields
from .core.tables import LEDGER
from .errors import InvalidRequestError

FILTER_COLUMNS = fields.filter_columns()       # of the declaration in effect at import (core/fields.py)
REHYDRATION_HOURS = {"Standard": 15, "High": 1}    # Azure's upper bounds for blobs under 10 GB


@dataclass
class QueryResult:
    files_planned: list[str] = field(default_factory=list)
    files_opened: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    rows: int = 0
    limited: bool = False          # the limit stopped the query before every planned file was read


def plan_files(conn: psycopg.Connection, start: datetime | None, end: datetime | None,
               event_id: str | None = None) -> list[PlannedRead]:
    """The live files that can hold events in [start, end), from the manifest. With
    `event_id` the range is optional: the ledger knows the event's time, for the days it
    keeps. When it does not know the event, a given range is read whole (the reader filters
    on the id: the archive keeps events years after the ledger dropped them); without one,
    the lookup is refused once retention has dropped ledger days (an empty answer would say
    "no such event" of an event that may be in the archive)."""
    if event_id is not None:
        found = manifest.files_of_event(conn, event_id=event_id, start=start, end=end)
        if found:
            return found
        if start is not None and end is not None:
            return manifest.files_in_range(conn, start=start, end=end)
        kept_since = partitions.horizon(conn, table=LEDGER)
        if kept_since is not None and (start is None or start.astimezone(UTC).date() < kept_since):
            raise InvalidRequestError(
                f"event {event_id!r} is not in the ledger, which keeps events of {kept_since} on (its "
                f"retention); an older one is in the archive only: give the range to search, e.g. --start and --end")
        return []
    if start is None or end is None:
        raise InvalidRequestError("a query needs a time range (start and end), or an event id")
    return manifest.files_in_range(conn, start=start, end=end)


def _filter(table: pa.Table, start: datetime | None, end: datetime | None, filters: dict[str, Any]) -> pa.Table:
    time_type = UTC_US
    mask = pa.array([True] * table.num_rows, pa.bool_())
    if start is not None:
        mask = pc.and_(mask, pc.greater_equal(table["occurred_at"], pa.scalar(start, time_type)))
    if end is not None:
        mask = pc.and_(mask, pc.less(table["occurred_at"], pa.scalar(end, time_type)))
    for column, value in filters.items():
        if value is not None:
            mask = pc.and_(mask, pc.equal(table[column], pa.scalar(value)))
    return table.filter(mask)


def query_events(conn: psycopg.Connection, archive: BlobArchive, start: datetime | None, end: datetime | None,
                 result: QueryResult | None = None, *, limit: int | None = None, **filters: Any) -> Iterator[pa.Table]:
    """Yield one filtered table per file read, in time order of the files, until `limit`
    rows (when given) have been yielded. The range may be open (None) only with an
    `event_id` filter. `result` collects which files were planned, opened, and skipped as
    archived, and whether the limit cut the answer short."""
    known = fields.filter_columns()
    unknown = set(filters) - set(known)
    if unknown:
        raise InvalidRequestError(f"unknown filter {sorted(unknown)[0]!r}; use {', '.join(known)}")
    if limit is not None and limit < 1:
        raise InvalidRequestError(f"limit must be at least 1, got {limit}")
    if start is not None and end is not None and start >= end:
        raise InvalidRequestError(f"the range is empty: start {start.isoformat()} is not before end {end.isoformat()}")
    result = result if result is not None else QueryResult()
    row_filter: list[Any] = []
    if start is not None:
        row_filter.append(("occurred_at", ">=", start))
    if end is not None:
        row_filter.append(("occurred_at", "<", end))
    planned = plan_files(conn, start, end, filters.get("event_id"))
    result.files_planned.extend(f.path for f in planned)
    for f in planned:
        path = f.path
        if limit is not None and result.rows >= limit:
            result.limited = True
            break
        # committed, upload not yet confirmed: the outbox has the bytes
        data = f.outbox if f.state == "pending" and f.outbox is not None else manifest.download_file(archive, path)
        if data is None:
            result.archived.append(path)
            continue
        result.files_opened.append(path)
        table = pq.read_table(io.BytesIO(data), schema=raw_event_schema(), filters=row_filter or None)
        table = _filter(table, start, end, filters)
        if limit is not None and result.rows + table.num_rows > limit:
            table = table.slice(0, limit - result.rows)
            result.limited = True
        result.rows += table.num_rows
        if table.num_rows:
            yield table


def rehydrate(archive: BlobArchive, paths: list[str], priority: str = "Standard") -> str:
    """Ask Azure to move archived blobs back to the hot tier; returns when to retry."""
    if priority not in REHYDRATION_HOURS:
        raise InvalidRequestError(f"rehydration priority must be {' or '.join(REHYDRATION_HOURS)}, got {priority!r}")
    for path in paths:
        archive.set_tier(path, "Hot", rehydrate_priority=priority)
    return (f"rehydration of {len(paths)} file(s) requested at {priority} priority; retry the query in up to "
            f"{REHYDRATION_HOURS[priority]} hour(s)")
