"""Deterministic names and time buckets: raw-archive paths and aggregate windows."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime

# The raw archive's default container and the folder its tree starts in: every layer (the
# settings, the CLI, the lifecycle rules, the Pulumi program) takes them from here.
RAW_EVENTS_CONTAINER = "raw-events"
# Azure's Blob Storage container names: 3-63 characters, lower-case letters, digits and single
# hyphens, a letter or digit first and last (Learn, "Naming and Referencing Containers, Blobs,
# and Metadata"); RAW_EVENTS_CONTAINER's setting and the lifecycle files' containers follow it
CONTAINER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
RAW_PREFIX = "raw_events"
_SAFE = re.compile(r"[^A-Za-z0-9_.=-]")


def event_key(event_id: str) -> bytes:
    """The ledger's key of an event id: the first 16 bytes of SHA-256 of its UTF-8 text, the
    bytes of the uuid that SQL's txm_event_key(event_id) returns (migration 0011). 16 bytes
    instead of the id's text keep the ledger and its primary key small; an even chance of two
    ids sharing a key takes about 2^64 events (docs/ingest.md, "The ledger")."""
    return hashlib.sha256(event_id.encode()).digest()[:16]


def replay_sequence_number(event_id: str) -> int:
    """The sequence number a replayed event is archived under (partition "replay",
    txmetrics.replay): the first 63 bits of SHA-256 of its event id's UTF-8 text (the first 8
    bytes of `event_key`, shifted right by one), a non-negative int64 for the Parquet column,
    the manifest's bigint and the file name's 20 digits.

    Derived from the event, not from the failed item's id: failed_items cannot be rebuilt, so
    after a database loss and `txmetrics rebuild` the item ids start again at 1, and a key
    taken from them gave a new event the (partition, sequence number) of an event replayed
    before (contract section 3: each appears at most once across the archive). The same event
    always gets the same key (a replay of it adds nothing anyway: the ledger has it); two
    different events share one with a probability of about n^2 / 2^64 among n replayed
    events: 5 * 10^-8 for a million replays, 5 * 10^-6 for ten million, far beyond the
    failed items a deployment ever replays. Live events never meet these keys: no Event Hubs
    partition is called "replay"."""
    return int.from_bytes(event_key(event_id)[:8], "big") >> 1


def date_folder(day: date) -> str:
    """``raw_events/yyyy=2026/mm=03/dd=07`` (hive-style, zero-padded, UTC date)."""
    return f"{RAW_PREFIX}/yyyy={day.year:04d}/mm={day.month:02d}/dd={day.day:02d}"


def raw_file_path(partition_id: str, first_sequence_number: int, day: date, attempt: int = 0) -> str:
    """Path of the Parquet file holding one trigger batch's events of one UTC date.

    Deterministic from (partition, first sequence number, date), so a retried batch
    overwrites its file rather than adding one. `attempt` > 0 only disambiguates the
    impossible-in-Event-Hubs case of two different event sets claiming the same first
    sequence number on the same partition and date (a producer reusing sequence numbers).
    """
    part = _SAFE.sub("_", partition_id) or "_"
    suffix = f"-{attempt}" if attempt else ""
    return (f"{date_folder(day)}/part-{part}-seq-{first_sequence_number:020d}-"
            f"{day:%Y%m%d}{suffix}.parquet")


def compacted_file_path(day: date, generation: str, index: int) -> str:
    return f"{date_folder(day)}/compacted-{day:%Y%m%d}-{generation}-{index:04d}.parquet"


_COMPACTED = re.compile(r"/compacted-[0-9]{8}-(?P<generation>[0-9a-f]+)-[0-9]{4}\.parquet$")


def compacted_generation(path: str) -> str | None:
    """The compaction generation in a compacted file's name (`compacted_file_path`), None
    for any other file."""
    m = _COMPACTED.search(path)
    return m.group("generation") if m else None


STAGING_PREFIX = "_staging/compaction/"


def compaction_staging_path(final_path: str) -> str:
    """Where a compaction output waits, outside the raw_events/ tree that readers list, until
    its inputs are gone (compaction.py): a reader of the tree never sees an event twice."""
    return STAGING_PREFIX + final_path


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


def as_utc(moment: datetime) -> datetime:
    """An aware time as it is; a naive one read as UTC (as PostgreSQL with TimeZone UTC would)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def datetime_to_us(moment: datetime) -> int:
    """Epoch microseconds of an aware datetime, exactly (no float rounding)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


US_PER_DAY = 86_400_000_000


def utc_day(us: int) -> date:
    return date.fromordinal(_EPOCH_ORDINAL + us // US_PER_DAY)   # floor division: right before 1970 too
