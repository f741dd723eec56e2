"""(Audit, round 18) replay, compaction, backfill and rebuild, one after the other and each
twice, on one day: the archive holds each event once, dynamic_metrics and the aggregates equal
a recomputation, and a second run of each changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg

from localdev.bench_lake import catalogs_before_and_after
from localdev.services import LocalServices
from tests.aggregate_check import recompute_and_compare
from tests.helpers import archive_rows, empty_tables, table_snapshot
from txmetrics import replay, runtime
from txmetrics.adapters.blob import BlobArchive
from txmetrics.adapters.postgres import PostgresStore
from txmetrics.backfill import backfill
from txmetrics.compaction import compact_day
from txmetrics.core.catalog import load_catalog
from txmetrics.rebuild import rebuild

DAY = date(2026, 3, 1)


def event(i: int, **changes: Any) -> dict[str, Any]:
    return {"event_id": f"cy-{i}", "transaction_id": f"t{i}", "occurred_at": f"2026-03-01T1{i % 10}:0{i % 6}:00Z",
            "merchant_id": f"m{i % 3}", "amount": f"{i}.25", "currency": "EUR", "payment_method": "card",
            "status": "approved" if i % 4 else "declined", "processing_ms": 10 * i,
            "attributes": {"risk_score": i / 10}, **changes}


def test_replay_compaction_backfill_rebuild_each_twice(deliver: Callable[..., None], db: psycopg.Connection,
                                                      archive: BlobArchive, services: LocalServices,
                                                      tmp_path: Path) -> None:
    _, new = catalogs_before_and_after(tmp_path)
    catalog = load_catalog(new)
    deliver([event(i) for i in range(10)], partition_id="0", first_sequence=0)
    deliver([event(i) for i in range(10, 20)] + [event(20, currency="eur"), event(21, status="ok")],
            partition_id="1", first_sequence=0)
    deliver([event(i) for i in range(5, 15)], partition_id="2", first_sequence=50)      # resent: nothing new
    by_id = dict(db.execute("SELECT event_id, id FROM failed_items").fetchall())
    items = sorted(by_id.values())
    replay.set_field(db, by_id["cy-20"], "currency", "EUR")
    replay.set_field(db, by_id["cy-21"], "status", "approved")

    def keys_once() -> list[tuple[Any, ...]]:
        rows = archive_rows(archive)
        assert len({r[:2] for r in rows}) == len(rows) == len({r[2] for r in rows}), rows
        return sorted(r[2] for r in rows)

    store = PostgresStore(services.database_url)
    try:
        for _ in range(2):
            outcomes = replay.replay(db, runtime.get_pipeline(), item_ids=items, force=True)
            assert all(o.replayed for o in outcomes), outcomes
        ids = keys_once()
        assert len(ids) == 22
        for _ in range(2):
            compact_day(db, archive, DAY, target_bytes=1 << 30)
            assert keys_once() == ids
        after_compaction = table_snapshot(db)
        for _ in range(2):
            backfill(store=store, archive=archive, catalog=catalog, metric="risk_score",
                     start=datetime(2026, 3, 1, tzinfo=UTC), end=datetime(2026, 3, 2, tzinfo=UTC))
        assert db.execute("SELECT count(*) FROM dynamic_metrics WHERE metric_name = 'risk_score'").fetchone() == (22,)
        recompute_and_compare(db, catalog)
        before = table_snapshot(db)
        assert before != after_compaction
        empty_tables(db)
        for _ in range(2):
            rebuild(store=store, archive=archive, catalog=catalog, start=DAY, end=date(2026, 3, 2))
        assert keys_once() == ids
        recompute_and_compare(db, catalog)
        rebuilt = table_snapshot(db)
        for table in ("dynamic_metrics", "ingested_events"):
            assert rebuilt[table] == before[table], table
        five = [[r for r in snap["aggregate_histograms"] if r[1] == 300] for snap in (before, rebuilt)]
        assert five[0] == five[1] and five[0]         # the rebuild also rolls the day up (86400 rows)
    finally:
        store.close()
