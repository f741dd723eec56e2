"""Read side against Azurite and PostgreSQL: raw-event queries that read only what can
match, archived files reported, KPIs over a month (with and without rollups), compaction
(including crashes at every step and concurrent ingestion), and replay of failed items."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pytest

from localdev.eventhub import make_batch
from localdev.synth import Generator
from tests.conftest import archive_rows
from txmetrics import kpi, replay, runtime
from txmetrics.adapters import parquet
from txmetrics.adapters.blob import BlobArchive
from txmetrics.compaction import compact_day
from txmetrics.query import QueryResult, query_events
from txmetrics.rollup import roll_day

MONTH_START = datetime(2026, 3, 1, tzinfo=UTC)


def ingest_month(ingest_fn: Callable[..., None], n: int = 2400, batch: int = 40) -> list[Any]:
    gen = Generator(seed=31, partitions=2, merchants=10, bad_rate=0.0, start=MONTH_START, days=30)
    events = list(gen.events(n))
    per: dict[str, list[Any]] = {}
    for e in events:
        per.setdefault(e.partition_id, []).append(e)
    for p, evs in per.items():
        for i in range(0, len(evs), batch):
            chunk = evs[i:i + batch]
            ingest_fn(make_batch([e.body for e in chunk], partition_id=p,
                                 sequence_numbers=[e.sequence_number for e in chunk]))
    return events


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

    # with a filter, and by event id (the ledger points at the one file)
    merchant = tables[0]["merchant_id"][0].as_py()
    filtered = list(query_events(db, archive, start, end, merchant_id=merchant))
    assert {m for t in filtered for m in t["merchant_id"].to_pylist()} == {merchant}
    one = got[0]
    by_id = QueryResult()
    found = list(query_events(db, archive, MONTH_START, MONTH_START + timedelta(days=31), by_id, event_id=one))
    assert [r for t in found for r in t["event_id"].to_pylist()] == [one] and len(by_id.files_opened) == 1

    # one file of the range archived: the rest is returned, the archived file named
    archived = result.files_opened[0]
    in_archived = set(parquet.decode(archive.download(archived))["event_id"].to_pylist())
    archive.set_tier(archived, "Archive")
    again = QueryResult()
    rest = list(query_events(db, archive, start, end, again))
    assert again.archived == [archived]
    assert sorted(r for t in rest for r in t["event_id"].to_pylist()) == sorted(set(got) - in_archived)


def test_kpis_over_a_month_with_and_without_rollups(ingest_fn: Callable[..., None], db: psycopg.Connection) -> None:
    ingest_month(ingest_fn, n=3000, batch=100)
    values = np.array([v for (v,) in db.execute("SELECT value FROM dynamic_metrics "
                                                "WHERE metric_name = 'processing_ms'").fetchall()])
    end = MONTH_START + timedelta(days=31)
    plain = kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)
    db.execute("SELECT txm_fold_aggregates()")     # as the maintenance job does before it rolls up
    assert kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)[0].quantiles == plain[0].quantiles
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        for d in range(31):
            assert roll_day(conn, (MONTH_START + timedelta(days=d)).date())
    assert db.execute("SELECT count(*) FROM aggregate_rollups WHERE NOT stale").fetchone() == (31,)
    rolled = kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)
    assert rolled[0].count == plain[0].count == len(values)
    assert rolled[0].quantiles == plain[0].quantiles
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(plain[0].quantiles[q] - exact) <= 0.01 * exact
    # the view agrees with the query for a single 5-minute window
    w, merchant, method, n, p50 = db.execute(
        "SELECT window_start, merchant_id, payment_method, transaction_count, processing_ms_p50 "
        "FROM payment_metrics_5m ORDER BY transaction_count DESC, window_start LIMIT 1").fetchone()
    one = kpi.query(db, metric="processing_ms", start=w, end=w + timedelta(minutes=5),
                    filters={"merchant_id": merchant, "payment_method": method})
    approved = kpi.query(db, metric="approved", start=w, end=w + timedelta(minutes=5),
                         filters={"merchant_id": merchant, "payment_method": method})
    assert approved[0].count == n
    assert len(one) == 1 and one[0].quantiles[0.5] == pytest.approx(p50)

    # a late event for a rolled-up day: counted at once (its delta is pending, read beside the
    # rollup); the fold that merges it marks the day stale; the KPIs stay exact throughout
    late = {"event_id": "late-1", "transaction_id": "t", "occurred_at": "2026-03-10T12:00:00Z", "merchant_id": "m",
            "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved", "processing_ms": 123456}
    ingest_fn(make_batch([late], partition_id="late"))
    after = kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)
    assert after[0].count == len(values) + 1 and after[0].max == 123456
    db.execute("SELECT txm_fold_aggregates()")
    assert db.execute("SELECT stale FROM aggregate_rollups WHERE day = '2026-03-10'").fetchone() == (True,)
    assert db.execute("SELECT count(*) FROM aggregate_rollups WHERE stale").fetchone() == (1,)
    folded = kpi.query(db, metric="processing_ms", start=MONTH_START, end=end)
    assert (folded[0].count, folded[0].max, folded[0].quantiles) == (after[0].count, after[0].max, after[0].quantiles)


def live_rows(db: psycopg.Connection, archive: BlobArchive, day: str) -> list[tuple[Any, ...]]:
    rows = []
    for (path,) in db.execute("SELECT path FROM raw_files WHERE event_date = %s AND state = 'uploaded'",
                              (day,)).fetchall():
        t = parquet.decode(archive.download(path))
        rows += list(zip(t["partition_id"].to_pylist(), t["sequence_number"].to_pylist(), t["event_id"].to_pylist(),
                         t["payload"].to_pylist(), strict=True))
    return sorted(rows)


def many_small_files(ingest_fn: Callable[..., None], n_batches: int, partition: str = "0", first: int = 0,
                     day: str = "2026-03-05") -> None:
    for b in range(n_batches):
        bodies = [json.dumps({"event_id": f"c-{partition}-{first + b}-{i}", "transaction_id": "t", "merchant_id": "m",
                              "occurred_at": f"{day}T{(b // 60) % 24:02d}:{b % 60:02d}:{i:02d}Z", "amount": 1.5,
                              "currency": "EUR", "payment_method": "card", "status": "approved",
                              "attributes": {"note": uuid.uuid4().hex * 2}}) for i in range(5)]
        ingest_fn(make_batch(bodies, partition_id=partition, first_sequence=(first + b) * 5))


def no_duplicates_anywhere(archive: BlobArchive) -> None:
    rows = archive_rows(archive)
    keys = [(r[0], r[1]) for r in rows]
    assert len(keys) == len(set(keys))


def test_compaction_of_hundreds_of_files(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                         archive: BlobArchive) -> None:
    many_small_files(ingest_fn, 240)
    before = live_rows(db, archive, "2026-03-05")
    n_before = db.execute("SELECT count(*), sum(byte_size) FROM raw_files WHERE event_date = '2026-03-05'").fetchone()
    assert n_before[0] == 240
    target = 24 * 1024
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        report = compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=target)
    assert report.inputs == 240 and len(report.outputs) >= 2
    sizes = [size for _, size in report.outputs]
    assert all(0.5 * target <= size <= 1.5 * target for size in sizes)
    assert live_rows(db, archive, "2026-03-05") == before
    assert db.execute("SELECT count(*) FROM raw_files WHERE event_date = '2026-03-05' AND state = 'superseded'"
                      ).fetchone() == (240,)
    assert sorted(b.name for b in archive.list()) == sorted(p for p, _ in report.outputs)
    no_duplicates_anywhere(archive)
    found = list(query_events(db, archive, datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC),
                              event_id="c-0-7-3"))
    assert [r for t in found for r in t["event_id"].to_pylist()] == ["c-0-7-3"]


@pytest.mark.parametrize("step", ["after_intent", "after_upload", "before_commit", "after_commit"])
def test_compaction_killed_at_any_step_and_rerun(step: str, ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                 archive: BlobArchive) -> None:
    many_small_files(ingest_fn, 60)
    before = live_rows(db, archive, "2026-03-05")

    def crash(name: str) -> None:
        if name == step:
            raise RuntimeError(f"killed at {step}")

    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        with pytest.raises(RuntimeError, match="killed"):
            compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=16 * 1024, crash_hook=crash)
        many_small_files(ingest_fn, 3, first=1000)          # new batches for that day meanwhile
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=16 * 1024)
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=16 * 1024)
    after = live_rows(db, archive, "2026-03-05")
    assert set(before) <= set(after) and len(after) == len(before) + 15
    no_duplicates_anywhere(archive)
    assert db.execute("SELECT count(*) FROM raw_compactions WHERE state IN ('started', 'committed')").fetchone() == (0,)


def test_compaction_while_batches_for_the_day_arrive(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                     archive: BlobArchive, env: dict[str, str]) -> None:
    many_small_files(ingest_fn, 80)
    errors: list[BaseException] = []

    def late_batches() -> None:
        try:
            many_small_files(ingest_fn, 40, partition="1", first=5000)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=late_batches)
    thread.start()
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=32 * 1024)
        thread.join(timeout=120)
        compact_day(conn, archive, datetime(2026, 3, 5).date(), target_bytes=32 * 1024)
    assert not errors
    rows = live_rows(db, archive, "2026-03-05")
    assert len(rows) == 120 * 5
    no_duplicates_anywhere(archive)


def test_fixed_failed_item_is_replayed_once(deliver: Callable[..., None], db: psycopg.Connection,
                                            archive: BlobArchive, env: dict[str, str]) -> None:
    bad = {"event_id": "fix-me", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",
           "amount": "9.99", "currency": "eur", "payment_method": "card", "status": "approved"}
    deliver([bad], partition_id="3", first_sequence=77)
    (item_id,) = db.execute("SELECT id FROM failed_items WHERE event_id = 'fix-me'").fetchone()
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].note.startswith("still invalid")
    replay.set_field(db, item_id, "currency", "EUR")
    outcome = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])
    assert outcome[0].replayed and outcome[0].note == "replayed"
    snapshot = (db.execute("SELECT count(*) FROM dynamic_metrics WHERE event_id = 'fix-me'").fetchone(),
                db.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                           "AND dimensions = '{}'").fetchone(), archive_rows(archive))
    assert snapshot[0] == (2,) and [r[2] for r in snapshot[2]] == ["fix-me"]
    assert snapshot[2][0][:2] == ("replay", item_id)
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].note == "already replayed"
    forced = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id], force=True)
    assert forced[0].note.startswith("replayed (event already ingested")
    assert (db.execute("SELECT count(*) FROM dynamic_metrics WHERE event_id = 'fix-me'").fetchone(),
            db.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                       "AND dimensions = '{}'").fetchone(), archive_rows(archive)) == snapshot
    assert db.execute("SELECT replayed, replayed_at IS NOT NULL, fixed_payload IS NOT NULL FROM failed_items "
                      "WHERE id = %s", (item_id,)).fetchone() == (True, True, True)


def test_an_item_refused_for_a_card_number_id_is_replayed_only_once_fixed(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str]) -> None:
    """Its stored payload has the id masked ("************1111"): replayed as is, the event would
    be stored under an id its producer never sent, the collision issue 11 removed."""
    bad = {"event_id": "4111111111111111", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z",
           "merchant_id": "m", "amount": "9.99", "currency": "EUR", "payment_method": "card", "status": "approved"}
    deliver([bad], partition_id="3", first_sequence=78)
    (item_id, code, payload) = db.execute("SELECT id, error_code, payload FROM failed_items").fetchone()
    assert code == "card_number_in_event_id" and json.loads(payload)["event_id"] == "************1111"
    outcome = replay.replay(db, runtime.get_pipeline(), error_code=code)
    assert not outcome[0].replayed and "event_id held a card number" in outcome[0].note
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (0,)
    replay.set_field(db, item_id, "event_id", "order-77")
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].replayed
    assert db.execute("SELECT event_id FROM ingested_events").fetchall() == [("order-77",)]
