"""Raw-event queries against Azurite and PostgreSQL (`txmetrics query`, txmetrics.query): over a
month of archived files they read only the files that can match (the manifest prunes by day and
time range, an event id goes straight to its file), return what a brute-force scan finds, and
name the files in the archive tier instead of failing on them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import psycopg
import pyarrow as pa
import pytest

from localdev.services import LocalServices
from tests.helpers import MONTH_START, ingest_month
from txmetrics.adapters import parquet
from txmetrics.adapters.blob import BlobArchive
from txmetrics.errors import InvalidRequestError
from txmetrics.query import QueryResult, query_events
from txmetrics.retention import enforce


def brute_force(archive: BlobArchive, start: datetime, end: datetime) -> list[str]:
    ids = []
    for blob in archive.list("raw_events/"):
        t = parquet.decode(archive.download(blob.name))
        for eid, at in zip(t["event_id"].to_pylist(), t["occurred_at"].to_pylist(), strict=True):
            if start <= at < end:
                ids.append(eid)
    return sorted(ids)


def test_query_reads_only_the_files_that_can_match(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                   archive: BlobArchive) -> None:
    ingest_month(ingest_fn)
    total_files = db.execute("SELECT count(*) FROM raw_files").fetchone()[0]
    start = datetime(2026, 3, 17, 9, tzinfo=UTC)
    end = start + timedelta(hours=1)
    result = QueryResult()
    tables = list(query_events(db, archive, start, end, result))
    got = sorted(pa.concat_tables(tables)["event_id"].to_pylist()) if tables else []
    assert got == brute_force(archive, start, end) and got
    assert 1 <= len(result.files_opened) <= 4 < total_files
    assert all("/yyyy=2026/mm=03/dd=17/" in p for p in result.files_opened)

    # with a filter, and by event id (the ledger gives its time: only files covering that instant)
    merchant = tables[0]["merchant_id"][0].as_py()
    filtered = list(query_events(db, archive, start, end, merchant_id=merchant))
    assert {m for t in filtered for m in t["merchant_id"].to_pylist()} == {merchant}
    one = got[0]
    by_id = QueryResult()
    found = list(query_events(db, archive, MONTH_START, MONTH_START + timedelta(days=31), by_id, event_id=one))
    assert [r for t in found for r in t["event_id"].to_pylist()] == [one]
    assert 1 <= len(by_id.files_opened) <= 4 and set(by_id.files_opened) <= set(result.files_opened)

    # one file of the range archived: the rest is returned, the archived file named
    archived = result.files_opened[0]
    in_archived = set(parquet.decode(archive.download(archived))["event_id"].to_pylist())
    archive.set_tier(archived, "Archive")
    again = QueryResult()
    rest = list(query_events(db, archive, start, end, again))
    assert again.archived == [archived]
    assert sorted(r for t in rest for r in t["event_id"].to_pylist()) == sorted(set(got) - in_archived)


def test_an_event_past_the_ledgers_retention_is_found_in_its_range_or_the_lookup_refused(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive, services: LocalServices) -> None:
    """Retention dropped the ledger's days, not the archive's files (7 years in prod): a lookup
    by id with a range reads the range, and one without a range is refused, saying why, instead
    of answering "no such event" (found by a new user: an empty answer, exit 0)."""
    deliver([{"event_id": f"old-{i}", "transaction_id": "t", "merchant_id": "m", "amount": 1, "currency": "EUR",
              "payment_method": "card", "status": "approved", "occurred_at": f"2026-03-02T10:0{i}:00Z"}
             for i in range(3)], partition_id="0", first_sequence=0)
    day = (datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC))

    def ids(*bounds: datetime | None) -> list[str]:
        return [r for t in query_events(db, archive, *bounds, event_id="old-1") for r in t["event_id"].to_pylist()]

    assert ids(None, None) == ids(*day) == ["old-1"]              # the ledger knows it
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        enforce(conn, {"dynamic_metrics": 14, "ingested_events": 14}, date(2026, 4, 1))
    assert ids(*day) == ["old-1"]                                 # the range is read, filtered on the id
    assert ids(datetime(2026, 3, 3, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC)) == []
    with pytest.raises(InvalidRequestError, match=r"not in the ledger, which keeps events of 2026-03-18 on"):
        ids(None, None)
