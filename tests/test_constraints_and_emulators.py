"""The emulators are real, and the database's constraints do real work."""

from __future__ import annotations

import io

import psycopg
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient
from pyarrow import fs

from localdev.services import AZURITE_ACCOUNT, AZURITE_KEY, LocalServices
from txmetrics.core.naming import event_key


def test_parquet_uploaded_with_the_sdk_reads_back_through_pyarrow_azure_filesystem(
        services: LocalServices, container_name: str) -> None:
    client = BlobServiceClient.from_connection_string(services.storage_connection_string)
    client.create_container(container_name)
    for day, ids in (("01", [1, 2]), ("02", [3])):
        sink = io.BytesIO()
        pq.write_table(pa.table({"event_id": [f"e{i}" for i in ids], "amount": [i * 1.5 for i in ids]}), sink)
        client.get_blob_client(container_name, f"raw_events/yyyy=2026/mm=03/dd={day}/f.parquet").upload_blob(
            sink.getvalue())
    endpoint = services.storage_connection_string.split("BlobEndpoint=http://")[1].split("/")[0]
    azfs = fs.AzureFileSystem(account_name=AZURITE_ACCOUNT, account_key=AZURITE_KEY,
                              blob_storage_authority=endpoint, blob_storage_scheme="http",
                              dfs_storage_authority=endpoint, dfs_storage_scheme="http")
    partitioning = ds.partitioning(pa.schema([("yyyy", pa.int16()), ("mm", pa.int8()), ("dd", pa.int8())]),
                                   flavor="hive")
    table = ds.dataset(f"{container_name}/raw_events", filesystem=azfs, format="parquet",
                       partitioning=partitioning).to_table().sort_by("event_id")
    assert table.column("event_id").to_pylist() == ["e1", "e2", "e3"]
    assert table.column("dd").to_pylist() == [1, 1, 2]
    assert table.column("amount").to_pylist() == [1.5, 3.0, 4.5]


def _metric(conn: psycopg.Connection, **overrides: object) -> None:
    row = {"event_id": "e1", "metric_name": "amount", "value": 1.0, "occurred_at": "2026-03-01T00:00:00Z"}
    row.update(overrides)
    conn.execute("SELECT txm_ensure_day_partitions('dynamic_metrics', '2026-03-01', '2026-03-01')")
    cols = ", ".join(row)
    conn.execute(f"INSERT INTO dynamic_metrics ({cols}) VALUES ({', '.join(['%s'] * len(row))})", list(row.values()))


def test_a_second_ledger_row_for_an_event_is_refused_by_the_database(db: psycopg.Connection) -> None:
    """The ledger's key is what makes every effect of an event happen once."""
    db.execute("SELECT txm_ensure_day_partitions('ingested_events', '2026-03-01', '2026-03-01')")
    insert = ("INSERT INTO ingested_events (event_key, occurred_at, dimension_key) "
              "VALUES (txm_event_key('e1'), '2026-03-01T00:00:00Z', 1)")
    db.execute(insert)
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(insert)
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (1,)


def test_the_ledger_key_is_the_same_in_python_and_in_sql(db: psycopg.Connection) -> None:
    """The writer keys the ledger with naming.event_key; SQL readers (the wide view, `txmetrics
    query --event-id`, the migration of existing rows) with txm_event_key: one key per id, or
    lookups would miss events and redeliveries of migrated events would count again."""
    ids = ["e1", "E1", "e1 ", "1d87daa6-40de-80cc-eb20-48041771665b", "ünïcødé-€-订单-🙂", "x" * 128, "a'b\\c\"d",
           "tab\tnew\nline"]
    sql = db.execute("SELECT i, txm_event_key(i) FROM unnest(%s::text[]) AS i", (ids,)).fetchall()
    assert {i: k.bytes for i, k in sql} == {i: event_key(i) for i in ids}
    assert len({event_key(i) for i in ids}) == len(ids)


@pytest.mark.parametrize("overrides", [
    {"value": float("nan")}, {"value": float("inf")}, {"event_id": ""}, {"event_id": "x" * 129},
])
def test_values_that_can_never_be_valid_are_refused_in_dynamic_metrics(db: psycopg.Connection,
                                                                       overrides: dict[str, object]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        _metric(db, **overrides)


@pytest.mark.parametrize("overrides", [
    {"status": "maybe"}, {"currency": "usd"}, {"merchant_id": ""}, {"payment_method": ""}, {"country": "usa"},
])
def test_impossible_dimensions_are_refused(db: psycopg.Connection, overrides: dict[str, object]) -> None:
    row: dict[str, object] = {"dimension_key": 1, "merchant_id": "m", "payment_method": "card", "status": "approved",
                              "currency": "USD", "country": "US"}
    row.update(overrides)
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(f"INSERT INTO event_dimensions ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
                   list(row.values()))


@pytest.mark.parametrize("column, value", [("count", -1), ("zero_count", -2), ("window_start", "2026-03-01T00:01:00Z"),
                                           ("dimensions", "[1]")])
def test_impossible_aggregates_are_refused(db: psycopg.Connection, column: str, value: object) -> None:
    row: dict[str, object] = {"metric_name": "amount", "window_seconds": 300, "window_start": "2026-03-01T00:00:00Z",
                              "dimensions": "{}", "count": 1, "sum": 1, "min": 1, "max": 1}
    row[column] = value
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(f"INSERT INTO aggregate_histograms ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
                   list(row.values()))


def test_failed_items_dedupe_key_is_unique(db: psycopg.Connection) -> None:
    insert = ("INSERT INTO failed_items (item_key, partition_id, error_code, detail, payload) "
              "VALUES ('k', '0', 'body_not_json', 'd', 'p')")
    db.execute(insert)
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(insert)


def test_a_client_that_may_write_blobs_but_not_create_containers_still_uploads(
        services: LocalServices, container_name: str) -> None:
    """The function's identity holds Blob Data Contributor on the raw-events container only
    (infra), a client with a container SAS likewise: creating the container is refused with
    403 even though it exists (Azurite checks the SAS's permissions as Azure does), and the
    upload must go on. A 403 is not taken for a missing container: the upload then fails."""
    from datetime import UTC, datetime, timedelta

    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from txmetrics.adapters.blob import BlobArchive

    owner = BlobServiceClient.from_connection_string(services.storage_connection_string)
    owner.create_container(container_name)
    sas = generate_container_sas(AZURITE_ACCOUNT, container_name, account_key=AZURITE_KEY,
                                 permission=ContainerSasPermissions(read=True, write=True, create=True, list=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    scoped = BlobServiceClient(owner.url, credential=sas)
    with pytest.raises(HttpResponseError) as refused:
        scoped.get_container_client(container_name).create_container()
    assert refused.value.status_code == 403                  # what ensure_container meets
    archive = BlobArchive(scoped, container_name)
    archive.upload("raw_events/yyyy=2026/mm=03/dd=01/f.parquet", b"PAR1")
    assert archive.download("raw_events/yyyy=2026/mm=03/dd=01/f.parquet") == b"PAR1"
    missing = BlobArchive(BlobServiceClient(owner.url, credential=generate_container_sas(
        AZURITE_ACCOUNT, container_name + "-gone", account_key=AZURITE_KEY, permission=ContainerSasPermissions(
            write=True, create=True), expiry=datetime.now(UTC) + timedelta(hours=1))), container_name + "-gone")
    with pytest.raises(HttpResponseError):
        missing.upload("x.parquet", b"PAR1")
