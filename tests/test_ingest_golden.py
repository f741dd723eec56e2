"""Golden batches through the real function: exact rows, exact aggregates, Parquet readable
by pyarrow and DuckDB with hive partitioning, one file per UTC date."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
from pyarrow import fs

from localdev.services import AZURITE_ACCOUNT, AZURITE_KEY, LocalServices
from txmetrics.adapters.blob import BlobArchive


def ev(event_id: str, occurred_at: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"event_id": event_id, "transaction_id": f"t-{event_id}", "occurred_at": occurred_at,
                            "merchant_id": "m-1", "amount": "10.00", "currency": "EUR", "payment_method": "card",
                            "status": "approved", "processing_ms": 100}
    base.update(kw)
    return base


GOLDEN = [
    ev("a", "2026-03-01T23:58:00Z", amount="12.30", processing_ms=120),
    ev("b", "2026-03-01T23:59:30.5Z", amount=7.7, status="declined", processing_ms=80, payment_method="wallet"),
    ev("c", "2026-03-02T05:31:00+05:30", amount="100", processing_ms=None, currency="INR"),   # 00:01Z on 03-02
    ev("d", "2026-03-02T00:02:00Z", amount="0", status="pending", processing_ms=0, unknown_field={"x": 1}),
    b"{broken json",
    ev("e", "2026-03-02T00:03:00", amount="1"),   # no offset: bad
]


def test_golden_batch_rows_aggregates_and_files(deliver: Callable[..., None], db: psycopg.Connection,
                                                archive: BlobArchive, services: LocalServices,
                                                container_name: str, tmp_path: Path) -> None:
    deliver(GOLDEN, partition_id="7", first_sequence=1000)

    rows = db.execute("SELECT event_id, metric_name, value, occurred_at, merchant_id, payment_method, status, currency "
                      "FROM dynamic_metrics_wide ORDER BY 1, 2").fetchall()
    t = lambda s: datetime.fromisoformat(s).astimezone(UTC)  # noqa: E731
    assert [(r[0], r[1], r[2], r[3].astimezone(UTC), r[5], r[6], r[7]) for r in rows] == [
        ("a", "amount", 12.3, t("2026-03-01T23:58:00+00:00"), "card", "approved", "EUR"),
        ("a", "approved", 1.0, t("2026-03-01T23:58:00+00:00"), "card", "approved", "EUR"),
        ("a", "processing_ms", 120.0, t("2026-03-01T23:58:00+00:00"), "card", "approved", "EUR"),
        ("b", "amount", 7.7, t("2026-03-01T23:59:30.5+00:00"), "wallet", "declined", "EUR"),
        ("b", "approved", 0.0, t("2026-03-01T23:59:30.5+00:00"), "wallet", "declined", "EUR"),
        ("b", "processing_ms", 80.0, t("2026-03-01T23:59:30.5+00:00"), "wallet", "declined", "EUR"),
        ("c", "amount", 100.0, t("2026-03-02T00:01:00+00:00"), "card", "approved", "INR"),
        ("c", "approved", 1.0, t("2026-03-02T00:01:00+00:00"), "card", "approved", "INR"),
        ("d", "amount", 0.0, t("2026-03-02T00:02:00+00:00"), "card", "pending", "EUR"),
        ("d", "approved", 0.0, t("2026-03-02T00:02:00+00:00"), "card", "pending", "EUR"),
        ("d", "processing_ms", 0.0, t("2026-03-02T00:02:00+00:00"), "card", "pending", "EUR"),
    ]

    # Aggregates as every reader sees them (folded rows + pending deltas: right after the
    # batch, all pending), then in aggregate_histograms itself after a fold: the same.
    for source in ("aggregate_histograms_current", "aggregate_histograms"):
        if source == "aggregate_histograms":
            assert db.execute("SELECT count(*) FROM aggregate_histograms").fetchone() == (0,)
            assert db.execute("SELECT txm_fold_aggregates()").fetchone()[0] > 0
            assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (0,)

        def agg(metric: str, window: str, dims: str, source: str = source) -> tuple[Any, ...]:
            return db.execute(f"SELECT count, sum, min, max, zero_count FROM {source} WHERE metric_name = %s "
                              "AND window_seconds = 300 AND window_start = %s AND dimensions = %s::jsonb",
                              (metric, window, dims)).fetchone()

        assert agg("approved", "2026-03-01T23:55:00Z", "{}") == (2, Decimal("1"), 0.0, 1.0, 1)
        assert agg("amount", "2026-03-01T23:55:00Z", '{"currency": "EUR"}') == (2, Decimal("20.0"), 7.7, 12.3, 0)
        assert agg("amount", "2026-03-02T00:00:00Z", '{"currency": "EUR"}') == (1, Decimal("0"), 0.0, 0.0, 1)
        assert agg("amount", "2026-03-02T00:00:00Z", '{"currency": "INR"}') == (1, Decimal("100"), 100.0, 100.0, 0)
        assert agg("processing_ms", "2026-03-01T23:55:00Z", '{"payment_method": "wallet"}') == (
            1, Decimal("80"), 80, 80, 0)
        assert agg("approved", "2026-03-02T00:00:00Z", '{"merchant_id": "m-1", "payment_method": "card"}') == (
            2, Decimal("1"), 0.0, 1.0, 1)
        assert db.execute(f"SELECT count(*) FROM {source} WHERE dimensions ? 'currency' "
                          "AND metric_name <> 'amount'").fetchone() == (0,)

    failed = db.execute("SELECT partition_id, sequence_number, error_code, event_id, replayed FROM failed_items "
                        "ORDER BY sequence_number").fetchall()
    assert failed == [("7", 1004, "body_not_json", None, False), ("7", 1005, "invalid_occurred_at", "e", False)]

    view = db.execute("SELECT window_start, merchant_id, payment_method, transaction_count, approved_count, "
                      "approval_rate, currency, amount_sum, processing_ms_p50 FROM payment_metrics_5m "
                      "ORDER BY window_start, payment_method").fetchall()
    assert [(v[0].astimezone(UTC).isoformat(), *v[1:]) for v in view] == [
        ("2026-03-01T23:55:00+00:00", "m-1", "card", 1, 1, 1.0, "EUR", Decimal("12.3"), 120.0),
        ("2026-03-01T23:55:00+00:00", "m-1", "wallet", 1, 0, 0.0, "EUR", Decimal("7.7"), 80.0),
        ("2026-03-02T00:00:00+00:00", "m-1", "card", 2, 1, 0.5, None, None, 0.0),   # EUR and INR: no mixed sum
    ]

    # One file per UTC date, deterministic names, the +05:30 event on 2026-03-02.
    names = sorted(b.name for b in archive.list())
    assert names == [
        "raw_events/yyyy=2026/mm=03/dd=01/part-7-seq-00000000000000001000-20260301.parquet",
        "raw_events/yyyy=2026/mm=03/dd=02/part-7-seq-00000000000000001002-20260302.parquet",
    ]
    manifest = db.execute("SELECT path, event_date, seq_min, seq_max, row_count, state FROM raw_files "
                          "ORDER BY path").fetchall()
    assert [(m[1].isoformat(), m[2], m[3], m[4], m[5]) for m in manifest] == [
        ("2026-03-01", 1000, 1001, 2, "uploaded"), ("2026-03-02", 1002, 1003, 2, "uploaded")]

    # pyarrow, straight from Azurite, hive partitioning, no extra code
    endpoint = services.storage_connection_string.split("BlobEndpoint=http://")[1].split("/")[0]
    azfs = fs.AzureFileSystem(account_name=AZURITE_ACCOUNT, account_key=AZURITE_KEY, blob_storage_authority=endpoint,
                              blob_storage_scheme="http", dfs_storage_authority=endpoint, dfs_storage_scheme="http")
    table = ds.dataset(f"{container_name}/raw_events", filesystem=azfs, format="parquet",
                       partitioning="hive").to_table().sort_by("event_id")
    assert table["event_id"].to_pylist() == ["a", "b", "c", "d"]
    assert [str(x) for x in table["dd"].to_pylist()] == ["1", "1", "2", "2"]
    assert table.schema.field("occurred_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("amount").type == pa.decimal128(38, 9)
    assert table["amount"].to_pylist() == [Decimal("12.3"), Decimal("7.7"), Decimal("100"), Decimal("0")]
    assert table["occurred_at"].to_pylist()[2] == datetime(2026, 3, 2, 0, 1, tzinfo=UTC)
    assert table["sequence_number"].to_pylist() == [1000, 1001, 1002, 1003]
    assert table["partition_id"].to_pylist() == ["7"] * 4
    assert '"unknown_field"' in table["payload"].to_pylist()[3]
    assert all(x is not None for x in table["enqueued_at"].to_pylist())

    # DuckDB over the same tree (mirrored locally: DuckDB's azure extension is not on PyPI)
    for name in names:
        local = tmp_path / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(archive.download(name))
    result = duckdb.sql(f"SELECT yyyy::INT, mm::INT, dd::INT, count(*), sum(amount) FROM read_parquet('{tmp_path}/raw_events/**/*.parquet', "
                        "hive_partitioning = true) GROUP BY ALL ORDER BY ALL").fetchall()
    assert result == [(2026, 3, 1, 2, Decimal("20.000000000")), (2026, 3, 2, 2, Decimal("100.000000000"))]


def test_an_empty_batch_is_a_no_op(deliver: Callable[..., None], db: psycopg.Connection,
                                   archive: BlobArchive) -> None:
    deliver([], partition_id="1")
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM raw_files").fetchone() == (0,)
    archive.ensure_container()
    assert list(archive.list()) == []


def test_a_batch_of_only_bad_events_writes_no_file(deliver: Callable[..., None], db: psycopg.Connection,
                                                   archive: BlobArchive) -> None:
    deliver([b"nope", b"[]", b"\xff"], partition_id="1")
    assert db.execute("SELECT error_code FROM failed_items ORDER BY sequence_number").fetchall() == [
        ("body_not_json",), ("body_not_object",), ("body_not_utf8",)]
    archive.ensure_container()
    assert list(archive.list()) == []
