"""Event schema evolution (core/fields.py, docs/changing-the-event.md): schema_version,
one declaration from which the Parquet schema, the typed dimensions, the query filters
and the docs derive; files written before and after a new optional field read together
by pyarrow and DuckDB with hive partitioning; compaction of a day that mixes them."""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from localdev.eventhub import make_batch
from tests.helpers import ROOT, archive_rows
from txmetrics.adapters import parquet
from txmetrics.adapters.blob import BlobArchive
from txmetrics.compaction import compact_day
from txmetrics.core import catalog, fields
from txmetrics.core.events import InboundEvent, PaymentEvent, Rejection, parse_event
from txmetrics.core.fields import Column, EventSchema
from txmetrics.errors import InvalidRequestError
from txmetrics.query import query_events

BASE = {"transaction_id": "t-1", "occurred_at": "2026-03-05T10:00:00Z", "merchant_id": "m-1", "amount": "12.30",
        "currency": "EUR", "payment_method": "card", "status": "approved"}
# The archive's columns as first published (contract section 3) and their types: a reader
# written against them must keep working, so none may ever change type, name or place.
ORIGINAL_COLUMNS = [
    ("event_id", "string", False), ("transaction_id", "string", False), ("occurred_at", "timestamp[us, tz=UTC]", False),
    ("merchant_id", "string", False), ("amount", "decimal128(38, 9)", False), ("currency", "string", False),
    ("payment_method", "string", False), ("status", "string", False), ("event_type", "string", True),
    ("processing_ms", "int64", True), ("country", "string", True), ("partition_id", "string", False),
    ("sequence_number", "int64", False), ("enqueued_at", "timestamp[us, tz=UTC]", True), ("payload", "string", False),
]


def parsed(doc: dict[str, Any], seq: int = 1) -> PaymentEvent | Rejection:
    return parse_event(InboundEvent(json.dumps(doc).encode(), "0", seq))


def code(doc: dict[str, Any]) -> str | None:
    result = parsed(doc)
    return result.error_code if isinstance(result, Rejection) else None


# ----------------------------------------------------------------------------- the declaration

def test_the_original_columns_never_change_and_new_ones_are_appended_nullable() -> None:
    schema = parquet.raw_event_schema()
    got = [(f.name, str(f.type), f.nullable) for f in schema]
    assert got[: len(ORIGINAL_COLUMNS)] == ORIGINAL_COLUMNS
    assert got[len(ORIGINAL_COLUMNS):] == [("schema_version", "int64", True)]


def test_what_derives_from_the_declaration() -> None:
    # the typed dimensions, in the order the dimension key hashes them (never to change)
    assert fields.COLUMN_DIMENSIONS == ("merchant_id", "payment_method", "status", "currency", "country", "event_type")
    assert catalog.COLUMN_DIMENSIONS is fields.COLUMN_DIMENSIONS
    assert set(fields.filter_columns()) == {"event_id", "transaction_id", "merchant_id", "currency", "payment_method",
                                            "status"}
    assert [c.name for c in fields.SCHEMA.event_fields if c.required] == [
        "event_id", "transaction_id", "occurred_at", "merchant_id", "amount", "currency", "payment_method", "status"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.extended(2, Column("channel", "string", required=True)), "optional event fields only"),
    (lambda s: s.extended(2, Column("channel", "string", dimension=6)), "typed dimension column"),
    (lambda s: s.extended(2, Column("price", "decimal")), "type decimal is not one of"),
    (lambda s: s.extended(2, Column("amount", "string")), "declared twice"),
    (lambda s: EventSchema(version=2, columns=(Column("channel", "string", since=2), *s.columns)),
     "appended after the existing ones"),
    (lambda s: s.extended(1, Column("channel", "string", since=2)), "a new version is numbered above the current 1"),
])
def test_a_declaration_that_would_break_readers_is_refused(change: Callable[[EventSchema], EventSchema],
                                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        change(fields.SCHEMA)


# ----------------------------------------------------------------------------- schema_version

@pytest.mark.parametrize(("version", "expected"), [
    (None, None), (1, None), (0, "invalid_schema_version"), (-1, "invalid_schema_version"),
    ("1", "invalid_schema_version"), (True, "invalid_schema_version"), (1.5, "invalid_schema_version"),
    (2, "unsupported_schema_version"), (10**30, "unsupported_schema_version"),
])
def test_schema_version_absent_means_1_and_a_newer_one_is_refused(version: Any, expected: str | None) -> None:
    doc = {**BASE, "event_id": "e-1"}
    if version is not None:
        doc["schema_version"] = version
    assert code(doc) == expected
    if expected == "unsupported_schema_version":
        rejection = parsed(doc)
        assert isinstance(rejection, Rejection)
        assert "newer than this platform declares (up to 1)" in rejection.detail and "replay" in rejection.detail


@pytest.mark.parametrize(("written", "expected"), [
    ("1.0", None), ("1e0", None), ("10E-1", None), ("2.0", "unsupported_schema_version"),
    ("1.5", "invalid_schema_version"), ("0.0", "invalid_schema_version"), ("-1.0", "invalid_schema_version"),
])
def test_schema_version_is_a_whole_number_in_any_json_form(written: str, expected: str | None) -> None:
    """JSON has one number type: 1.0 and 1e0 are the whole number 1, as processing_ms takes
    100.0 (an audit: refused, with the detail "must be a whole number from 1, got 1")."""
    text = json.dumps({**BASE, "event_id": "e-1"})[:-1] + f', "schema_version": {written}}}'
    result = parse_event(InboundEvent(text.encode(), "0", 1))
    assert (result.error_code if isinstance(result, Rejection) else None) == expected
    if expected is None:
        assert isinstance(result, PaymentEvent)
        assert parquet.events_table([result]).column("schema_version").to_pylist() == [1]
        assert f'"schema_version": {written}' in result.payload          # archived as written


@pytest.fixture
def version_2(monkeypatch: pytest.MonkeyPatch) -> Iterator[EventSchema]:
    """The declaration with a version 2 that adds three optional fields."""
    extended = fields.SCHEMA.extended(
        2, Column("channel", "string", filter=True, description="web, app or pos"),
        Column("risk_band", "int64"), Column("settled_at", "timestamp"), Column("fee", "float64"),
        Column("recurring", "boolean"))
    monkeypatch.setattr(fields, "SCHEMA", extended)
    yield extended


@pytest.mark.parametrize(("extra", "expected"), [
    ({"channel": "web", "risk_band": 3, "settled_at": "2026-03-05T11:00:00+01:00", "fee": 0.25, "recurring": True},
     None),
    ({"channel": 5}, "invalid_channel"),
    ({"channel": ""}, "invalid_channel"),
    ({"risk_band": "3"}, "invalid_risk_band"),
    ({"risk_band": 2.5}, "invalid_risk_band"),
    ({"risk_band": 4111111111111111}, "card_number_in_risk_band"),
    ({"settled_at": "2026-03-05T11:00:00"}, "invalid_settled_at"),        # no offset
    ({"settled_at": "2026-03-05T11:00:00+01:75"}, "invalid_settled_at"),  # offset minutes beyond 59
    ({"settled_at": "2016-12-31T23:59:60Z"}, None),                       # a leap second (RFC 3339)
    ({"settled_at": "2016-12-31T10:00:60Z"}, "invalid_settled_at"),       # second 60 elsewhere
    ({"fee": "0.25"}, "invalid_fee"),
    ({"recurring": "yes"}, "invalid_recurring"),
])
def test_fields_of_a_new_version_are_checked_by_their_type(version_2: EventSchema, extra: dict[str, Any],
                                                           expected: str | None) -> None:
    assert code({**BASE, "event_id": "e-2", "schema_version": 2, **extra}) == expected
    # to an event of version 1 they are unknown fields: kept in the payload, never refused
    assert code({**BASE, "event_id": "e-1", **extra}) is None


@pytest.mark.parametrize("extra", [
    {"schema_version": "abcd 4111111111111111"},                  # a string cut at 20 characters
    {"schema_version": 2, "fee": "charged 5555555555554444"},
    {"schema_version": 2, "risk_band": "risk band 378282246310005"},
])
def test_a_refusal_quotes_a_card_number_masked_before_it_is_cut(version_2: EventSchema, extra: dict[str, Any]
                                                                  ) -> None:
    """Cut first, a card number leaves a run too short to mask (15 of 16 digits: the 16th
    follows from Luhn) in the detail stored in failed_items."""
    rejection = parsed({**BASE, "event_id": "e-2", **extra})
    assert isinstance(rejection, Rejection)
    assert not re.search(r"[0-9]{7}", rejection.detail), rejection.detail
    assert not re.search(r"[0-9]{7}", rejection.payload), rejection.payload


def test_the_values_columns_store(version_2: EventSchema) -> None:
    v2 = parsed({**BASE, "event_id": "e-2", "schema_version": 2, "channel": "web", "risk_band": 3,
                 "settled_at": "2026-03-05T11:00:00+01:00", "fee": 1, "note": "kept"})
    v1 = parsed({**BASE, "event_id": "e-1", "channel": {"not": "typed in version 1"}}, seq=2)
    assert isinstance(v2, PaymentEvent) and isinstance(v1, PaymentEvent)
    table = parquet.decode(parquet.encode(parquet.events_table([v2, v1])))
    rows = table.select(["event_id", "schema_version", "channel", "risk_band", "settled_at", "fee",
                         "recurring"]).to_pylist()
    assert rows == [
        {"event_id": "e-2", "schema_version": 2, "channel": "web", "risk_band": 3,
         "settled_at": datetime(2026, 3, 5, 10, 0, tzinfo=UTC), "fee": 1.0, "recurring": None},
        {"event_id": "e-1", "schema_version": 1, "channel": None, "risk_band": None, "settled_at": None, "fee": None,
         "recurring": None}]
    assert json.loads(table["payload"][1].as_py())["channel"] == {"not": "typed in version 1"}
    # a batch in which no event sends a version (the usual one) stores 1 for each
    only_v1 = parquet.events_table([v1, parsed({**BASE, "event_id": "e-3"}, seq=3)])
    assert only_v1["schema_version"].to_pylist() == [1, 1]


def test_amounts_are_stored_with_nine_places_however_they_were_written(
        deliver: Callable[..., None], archive: BlobArchive, db: psycopg.Connection) -> None:
    """Valid amounts written with an exponent or more digits than decimal128(38, 9) holds
    are stored at 9 places and never make the batch fail (pyarrow refuses such Decimals
    unless they are quantized first)."""
    amounts = {"a-1": "0", "a-2": '"12.5"', "a-3": "0e30", "a-4": "1." + "0" * 40, "a-5": '"12.34' + "0" * 30 + '"'}
    head = json.dumps(BASE)[:-1].replace('"amount": "12.30", ', "")
    deliver([f'{head}, "event_id": "{k}", "amount": {v}}}'.encode() for k, v in amounts.items()],
            partition_id="0", first_sequence=0)
    assert db.execute("SELECT count(*) FROM failed_items").fetchone() == (0,)
    table = pa.concat_tables(parquet.decode(archive.download(b.name)) for b in archive.list("raw_events/"))
    stored = dict(zip(table["event_id"].to_pylist(), map(str, table["amount"].to_pylist()), strict=True))
    assert stored == {"a-1": "0E-9", "a-2": "12.500000000", "a-3": "0E-9", "a-4": "1.000000000",
                      "a-5": "12.340000000"}


# ----------------------------------------------------------------------------- files before and after

def _day_batch(prefix: str, n: int, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [{**BASE, "event_id": f"{prefix}-{i}", "occurred_at": f"2026-03-05T{10 + i % 10:02d}:{i % 60:02d}:00Z",
             **(extra or {}), **({"channel": ["web", "app"][i % 2]} if extra else {})} for i in range(n)]


def _without_schema_version(data: bytes) -> bytes:
    """The same file as written before the schema_version column existed (issue 15)."""
    table = pq.read_table(pa.BufferReader(data))
    return parquet.encode(table.drop(["schema_version"]))


def _local_copy(archive: BlobArchive, directory: Path) -> Path:
    for blob in archive.list("raw_events/"):
        target = directory / blob.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.download(blob.name))
    return directory / "raw_events"


@pytest.fixture
def mixed_day(ingest_fn: Callable[[list[Any]], None], db: psycopg.Connection, archive: BlobArchive,
              monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """2026-03-05: a file from before the schema_version column, a file from before the new
    field (version 1), then version 2 declared (channel) and two files from after it."""
    ingest_fn(make_batch(_day_batch("old", 20), partition_id="0", first_sequence=0))
    ingest_fn(make_batch(_day_batch("before", 20), partition_id="0", first_sequence=100))
    (oldest,) = db.execute("SELECT path FROM raw_files WHERE seq_min = 0").fetchone()
    archive.upload(oldest, _without_schema_version(archive.download(oldest)))
    assert "schema_version" not in pq.read_schema(pa.BufferReader(archive.download(oldest))).names
    extended = fields.SCHEMA.extended(2, Column("channel", "string", filter=True, description="web, app or pos"))
    monkeypatch.setattr(fields, "SCHEMA", extended)
    ingest_fn(make_batch(_day_batch("after", 20, {"schema_version": 2}), partition_id="1", first_sequence=0))
    ingest_fn(make_batch(_day_batch("after2", 20, {"schema_version": 2}), partition_id="1", first_sequence=100))
    # a producer sending channel as a number with version 2: refused per event, never written
    ingest_fn(make_batch([{**BASE, "event_id": "bad-1", "schema_version": 2, "channel": 7}], partition_id="1",
                         first_sequence=500))
    assert db.execute("SELECT error_code FROM failed_items").fetchall() == [("invalid_channel",)]
    return {"oldest": oldest}


def _expected_channels() -> dict[str, tuple[int | None, str | None]]:
    out: dict[str, tuple[int | None, str | None]] = {}
    for prefix, version in (("old", None), ("before", 1), ("after", 2), ("after2", 2)):
        for i in range(20):
            out[f"{prefix}-{i}"] = (version, ["web", "app"][i % 2] if version == 2 else None)
    return out


def test_files_before_and_after_a_new_field_read_together_by_pyarrow_and_duckdb(
        mixed_day: dict[str, Any], archive: BlobArchive, tmp_path: Path) -> None:
    root = _local_copy(archive, tmp_path)
    files = sorted(glob.glob(str(root / "**" / "*.parquet"), recursive=True))
    assert len(files) == 4 and len({tuple(pq.read_schema(f).names) for f in files}) == 3   # three layouts

    # pyarrow: the files' schemas unified (or the platform's own: parquet.raw_event_schema()), hive partitions
    unified = pa.unify_schemas([pq.read_schema(f) for f in files])
    for name in ("yyyy", "mm", "dd"):
        unified = unified.append(pa.field(name, pa.int32()))
    table = ds.dataset(str(root), format="parquet", partitioning="hive", schema=unified).to_table()
    got = {r["event_id"]: (r["schema_version"], r["channel"]) for r in table.to_pylist()}
    assert got == _expected_channels()
    assert set(table.select(["yyyy", "mm", "dd"]).to_pylist()[0].values()) == {2026, 3, 5}
    assert set(table.column_names) >= {"payload", "yyyy", "mm", "dd"}

    # DuckDB: by column name across files (union_by_name), hive partitioning
    rows = duckdb.sql(f"""SELECT event_id, schema_version, channel, yyyy, mm, dd
                            FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true, union_by_name = true)
                        """).fetchall()
    assert {r[0]: (r[1], r[2]) for r in rows} == _expected_channels()
    assert {(int(r[3]), int(r[4]), int(r[5])) for r in rows} == {(2026, 3, 5)}
    by_channel = duckdb.sql(f"""SELECT coalesce(channel, '(none)'), count(*)
                                  FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true,
                                                    union_by_name = true) GROUP BY 1 ORDER BY 1""").fetchall()
    assert by_channel == [("(none)", 40), ("app", 20), ("web", 20)]


def test_compaction_of_a_day_that_mixes_them(mixed_day: dict[str, Any], archive: BlobArchive,
                                             db: psycopg.Connection) -> None:
    before = archive_rows(archive)
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        report = compact_day(conn, archive, date(2026, 3, 5), target_bytes=1 << 30)
    assert report.inputs == 4 and len(report.outputs) == 1 and report.rows == 80
    assert archive_rows(archive) == before                     # the same rows, each (partition, seq) once
    (output,) = [p for p, _ in report.outputs]
    merged = pq.read_table(pa.BufferReader(archive.download(output)))
    assert merged.schema.names == parquet.raw_event_schema().names       # every column, in order
    got = {r["event_id"]: (r["schema_version"], r["channel"]) for r in merged.to_pylist()}
    assert got == _expected_channels()
    # the raw query reads it, and filters on the new column (a filter because declared so)
    start, end = datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC)
    web = [r for t in query_events(db, archive, start, end, channel="web") for r in t["event_id"].to_pylist()]
    assert sorted(web) == sorted(e for e, (_, c) in _expected_channels().items() if c == "web")
    with pytest.raises(InvalidRequestError, match=r"unknown filter 'colour'; use .*channel"):
        list(query_events(db, archive, start, end, colour="red"))


def test_the_contract_lists_the_declared_fields() -> None:
    """docs/contract.md's tables of section 1 and 3 are the declaration's (derived, checked)."""
    text = (ROOT / "docs" / "contract.md").read_text()
    section1 = text[text.index("## 1."):text.index("## 2.")]
    listed = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_]+)` \| (yes|no) \|", section1, re.M)}
    declared = {c.name: "yes" if c.required else "no" for c in fields.SCHEMA.event_fields}
    assert {k: v for k, v in listed.items() if k in declared} == declared
    section3 = text[text.index("## 3."):text.index("## 4.")]
    columns = re.search(r"Columns, in this order: (.*?)\.\n", section3, re.S)
    assert columns is not None
    assert re.findall(r"`([a-z_]+)`", columns.group(1)) == [c.name for c in fields.SCHEMA.columns]


def test_archived_events_read_back_as_ingest_saw_them() -> None:
    """Backfill and rebuild compute from the archive: every field of every event, and its
    document (numbers as the same Decimals, masked card numbers as masked), come back equal."""
    import dataclasses

    from localdev.synth import Generator

    gen = Generator(seed=8, partitions=1, bad_rate=0.0, card_number_rate=0.3)
    events = [e for e in (parse_event(InboundEvent(s.body, "0", s.sequence_number, None, s.enqueued_at))
                          for s in gen.events(400)) if isinstance(e, PaymentEvent)]
    events[0].enqueued_at = None
    assert sum("****" in e.payload for e in events) > 50            # masked ones among them
    back = parquet.events_from_table(parquet.decode(parquet.encode(parquet.events_table(events))))
    assert [dataclasses.asdict(e) for e in back] == [dataclasses.asdict(e) for e in events]
