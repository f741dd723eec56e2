"""The plan against real blobs in Azurite and real partitions in PostgreSQL; --simulate;
the retention job dropping exactly the expired partitions, idempotent, safe while ingesting."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from typer.testing import CliRunner

from lifecycle.plan import make_plan, simulate
from lifecycle.policy import load_policy, table_retention
from localdev.eventhub import make_batch
from localdev.services import LocalServices
from tests.helpers import partitions
from txmetrics import replay, runtime
from txmetrics.adapters import partitions as partitions_module
from txmetrics.retention import enforce


@pytest.fixture
def service(services: LocalServices) -> BlobServiceClient:
    client = BlobServiceClient.from_connection_string(services.storage_connection_string)
    for name in ("raw-events", "deployments"):
        container = client.get_container_client(name)
        if container.exists():
            container.delete_container()
        container.create_container()
    return client


def upload(service: BlobServiceClient) -> dict[str, int]:
    sizes = {}
    for i in range(5):
        name = f"raw_events/yyyy=2026/mm=03/dd=0{i + 1}/part-0-seq-{i:020d}-2026030{i + 1}.parquet"
        data = b"x" * (1000 + i)
        service.get_blob_client("raw-events", name).upload_blob(data)
        sizes[name] = len(data)
    service.get_blob_client("raw-events", "elsewhere/not-matched.txt").upload_blob(b"zzz")
    service.get_blob_client("deployments", "released-package.zip").upload_blob(b"p" * 500)
    return sizes


def test_plan_counts_blobs_and_bytes_per_action(service: BlobServiceClient) -> None:
    sizes = upload(service)
    policy = load_policy("dev")     # cool 30, archive 90, delete 270 for raw events; the package: never
    now = datetime.now(UTC)
    soon = make_plan(policy, now + timedelta(days=10), service=service)
    assert soon.blob_actions == [] and soon.unchanged_blobs == 5
    cool = make_plan(policy, now + timedelta(days=40), service=service)
    assert [(a.rule, a.action, a.count, a.bytes) for a in cool.blob_actions] == [
        ("raw-events-tiering", "tierToCool", 5, sum(sizes.values()))]
    later = make_plan(policy, now + timedelta(days=100), service=service)
    archive = later.action("raw-events-tiering", "tierToArchive")
    assert archive is not None and archive.count == 5 and archive.bytes == sum(sizes.values())
    assert archive.prefix == "raw-events/raw_events/, raw-events/_staging/compaction/raw_events/"
    gone = make_plan(policy, now + timedelta(days=300), service=service)
    delete = gone.action("raw-events-tiering", "delete")
    assert delete is not None and delete.count == 5


def test_simulate_leaves_blobs_in_the_planned_tiers(service: BlobServiceClient) -> None:
    sizes = upload(service)
    policy = load_policy("dev")
    plan = make_plan(policy, datetime.now(UTC) + timedelta(days=100), service=service)
    assert simulate(plan, policy, service) == {"tierToArchive": 5}
    tiers = {b.name: b.blob_tier for b in service.get_container_client("raw-events").list_blobs()}
    assert all(tiers[name] == "Archive" for name in sizes)
    assert tiers["elsewhere/not-matched.txt"] in ("Hot", None)
    # the Function App's package is never touched (Flex Consumption runs from it; issue 12, item 2)
    packages = list(service.get_container_client("deployments").list_blobs())
    assert [(b.name, b.size, b.blob_tier) for b in packages] == [("released-package.zip", 500, "Hot")]
    with pytest.raises(ResourceExistsError) as err:          # an archived blob refuses reads, as in Azure
        service.get_blob_client("raw-events", next(iter(sizes))).download_blob().readall()
    assert err.value.error_code == "BlobArchived"
    again = make_plan(policy, datetime.now(UTC) + timedelta(days=100), service=service)
    assert again.blob_actions == []                          # already done: nothing more to do


def test_compaction_staging_is_planned_with_the_raw_events(service: BlobServiceClient) -> None:
    """A compaction output left in staging (its run killed, the database lost) holds raw
    events: it is tiered and deleted at the raw events' ages, as its day's files are."""
    tree = "raw_events/yyyy=2026/mm=03/dd=05/part-0-seq-00000000000000000000-20260305.parquet"
    staged = "_staging/compaction/raw_events/yyyy=2026/mm=03/dd=05/compacted-20260305-0123456789abcdef-0000.parquet"
    for name in (tree, staged):
        service.get_blob_client("raw-events", name).upload_blob(b"x" * 100)
    service.get_blob_client("raw-events", "elsewhere/not-matched.txt").upload_blob(b"zzz")
    policy = load_policy("dev")
    now = datetime.now(UTC)
    for days, action in ((10, None), (40, "tierToCool"), (100, "tierToArchive"), (300, "delete")):
        plan = make_plan(policy, now + timedelta(days=days), service=service)
        due = plan.action("raw-events-tiering", action) if action else None
        assert (sorted(name for name, _ in due.blobs) if due else []) == ([staged, tree] if action else [])
        assert plan.unchanged_blobs == (2 if action is None else 0)


def test_retention_drops_exactly_the_expired_partitions(db: psycopg.Connection) -> None:
    db.execute("SELECT txm_drop_expired_partitions('dynamic_metrics', '2100-01-01')")
    db.execute("SELECT txm_drop_expired_partitions('ingested_events', '2100-01-01')")
    today = date(2026, 6, 30)
    db.execute("SELECT txm_ensure_day_partitions('dynamic_metrics', '2026-06-10', '2026-06-20')")
    for day in ("2026-06-15", "2026-06-16"):   # the last expired day and the first kept day hold data
        db.execute("INSERT INTO dynamic_metrics (event_id, metric_name, value, occurred_at) "
                   "VALUES (%s, 'amount', 1, %s)",
                   (f"e-{day}", f"{day}T23:59:59.999999Z"))
    db.execute("INSERT INTO failed_items (item_key, partition_id, error_code, detail, payload, received_at) VALUES "
               "('old', '0', 'body_not_json', 'd', 'p', '2026-05-01T00:00:00Z'), "
               "('new', '0', 'body_not_json', 'd', 'p', '2026-06-29T00:00:00Z')")
    retention = {"dynamic_metrics": 14, "ingested_events": 14, "failed_items": 30, "aggregate_histograms": 90}
    policy = load_policy("dev")
    plan = make_plan(policy, datetime(2026, 6, 30, tzinfo=UTC), conn=db)
    report = enforce(db, retention, today)
    expected = [f"dynamic_metrics_p202606{d:02d}" for d in range(10, 16)]   # cutoff 2026-06-16: up to the 15th
    assert sorted(p for p in report.dropped_partitions if p.startswith("dynamic")) == expected
    assert plan.dropped_partitions["dynamic_metrics"] == expected              # the plan said so
    remaining = partitions(db, "dynamic_metrics")
    assert "dynamic_metrics_p20260616" in remaining and "dynamic_metrics_p20260707" in remaining
    assert db.execute("SELECT event_id FROM dynamic_metrics").fetchall() == [("e-2026-06-16",)]
    assert report.deleted_rows["failed_items"] == 1
    assert db.execute("SELECT item_key FROM failed_items").fetchall() == [("new",)]
    second = enforce(db, retention, today)
    assert (second.created_partitions, second.dropped_partitions, second.deleted_rows["failed_items"]) == (0, [], 0)
    assert partitions(db, "dynamic_metrics") == remaining


def test_retention_is_safe_while_ingestion_runs(ingest_fn: Callable[[list[Any]], None], db: psycopg.Connection,
                                                services: LocalServices) -> None:
    today = datetime.now(UTC).date()
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for i in range(8):
                bodies = [json.dumps({"event_id": f"live-{i}-{j}", "transaction_id": "t", "merchant_id": "m",
                                      "occurred_at": (datetime.now(UTC) - timedelta(days=j % 3)).isoformat(),
                                      "amount": 1, "currency": "USD", "payment_method": "card",
                                      "status": "approved"}) for j in range(100)]
                ingest_fn(make_batch(bodies, partition_id="0", first_sequence=i * 100))
        except BaseException as exc:   # reported below
            errors.append(exc)

    thread = threading.Thread(target=ingest)
    thread.start()
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        for _ in range(5):
            enforce(conn, table_retention(load_policy("dev")), today)
    thread.join(timeout=120)
    assert not errors, errors
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (800,)


def test_cli_plan_and_simulate(service: BlobServiceClient, services: LocalServices, db: psycopg.Connection,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from txmetrics_cli.main import app

    upload(service)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", services.storage_connection_string)
    monkeypatch.setenv("DATABASE_URL", services.database_url)
    at = (datetime.now(UTC) + timedelta(days=100)).date().isoformat()
    as_json = CliRunner().invoke(app, ["lifecycle", "plan", "--stack", "dev", "--at", at, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    archive = next(r for r in rows if r["action"] == "tierToArchive")
    assert (archive["store"], archive["rule"], archive["count"], archive["bytes"]) == ("blob", "raw-events-tiering", 5,
                                                                                     5010)
    assert {r["target"] for r in rows if r["store"] == "postgresql"} >= {"dynamic_metrics", "failed_items"}
    result = CliRunner().invoke(app, ["lifecycle", "plan", "--stack", "dev", "--at", at, "--simulate"])
    assert result.exit_code == 0, result.output
    assert "tierToArchive" in result.stdout and "5,010" in result.stdout
    assert "simulated: {'tierToArchive': 5}" in result.stderr


def test_an_event_older_than_the_ledgers_retention_is_refused_not_counted_again(
        deliver: Callable[..., None], db: psycopg.Connection, services: LocalServices,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention dropped the ledger's partitions of 2026-03-01; the same events delivered again
    (a producer's resend, a late redelivery) cannot be told from new ones any more. Found by an
    independent audit: the all-up count went from 5 to 8 and the archive held the keys twice.
    They are refused (past_retention, once however often they come, from any partition); the
    events of kept days are still deduplicated; nothing is archived or counted again."""
    def body(i: int, day: int) -> str:
        return json.dumps({"event_id": f"late-{i}", "transaction_id": "t", "merchant_id": "m",
                           "occurred_at": f"2026-03-{day:02d}T10:0{i}:00Z", "amount": "2.50", "currency": "EUR",
                           "payment_method": "card", "status": "approved"})

    bodies = [body(i, 1) for i in range(3)] + [body(i, 19) for i in range(3, 5)]
    deliver(bodies, partition_id="0", first_sequence=0)      # this process now knows the day 2026-03-01

    def state() -> tuple[Any, ...]:
        return (db.execute("SELECT coalesce(sum(count), 0) FROM aggregate_histograms_current "
                           "WHERE metric_name = 'approved' AND dimensions = '{}'").fetchone()[0],
                db.execute("SELECT count(*), coalesce(sum(row_count), 0) FROM raw_files").fetchone(),
                db.execute("SELECT count(*) FROM ingested_events").fetchone()[0])

    with psycopg.connect(services.database_url, autocommit=True) as conn:
        enforce(conn, {"dynamic_metrics": 14, "ingested_events": 14}, date(2026, 3, 20))   # keeps 03-06 on
    after_retention = state()
    assert after_retention == (5, (2, 5), 2)
    for _ in range(2):
        deliver(bodies, partition_id="0", first_sequence=0)
        deliver(bodies, partition_id="1", first_sequence=70)
    assert state() == after_retention
    refused = db.execute("SELECT event_id, error_code, detail, payload FROM failed_items ORDER BY event_id").fetchall()
    assert [(e, c) for e, c, _, _ in refused] == [(f"late-{i}", "past_retention") for i in range(3)]
    assert "on 2026-03-01, before 2026-03-06, the first day the ledger" in refused[0][2]
    assert json.loads(refused[0][3])["event_id"] == "late-0"                  # the event, kept for an operator
    assert "dynamic_metrics_p20260301" not in partitions(db, "dynamic_metrics")   # the day is not made again
    # a replay of a refused item is refused alike, before ingest (no second item, nothing stored)
    item_id = db.execute("SELECT id FROM failed_items WHERE event_id = 'late-0'").fetchone()[0]
    outcome = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id], force=True)[0]
    assert not outcome.replayed and "before 2026-03-06, the first day the ledger keeps" in outcome.note
    assert db.execute("SELECT count(*) FROM failed_items").fetchone()[0] == 3 and state() == after_retention
    # retention moving between replay's own check and ingest: ingest's refusal is noted, nothing replayed
    monkeypatch.setattr(replay, "LEDGER", "a table retention never dropped a day of")
    outcome = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id], force=True)[0]
    assert (outcome.replayed, outcome.note) == (False, "not replayed: ingest refused it (past_retention)")
    assert state() == after_retention
    # an event of a kept day that is new is stored as usual
    deliver([body(5, 19)], partition_id="0", first_sequence=200)
    assert state()[0] == 6


def _late_body(event_id: str, day: str) -> str:
    return json.dumps({"event_id": event_id, "transaction_id": "t", "merchant_id": "m",
                       "occurred_at": f"{day}T10:00:00Z", "amount": "2.50", "currency": "EUR",
                       "payment_method": "card", "status": "approved"})


def _all_up(db: psycopg.Connection) -> Any:
    return db.execute("SELECT coalesce(sum(count), 0) FROM aggregate_histograms_current "
                      "WHERE metric_name = 'approved' AND dimensions = '{}'").fetchone()[0]


def test_a_refused_day_beside_an_event_whose_extraction_fails_refuses_both_alone(
        deliver: Callable[..., None], db: psycopg.Connection, services: LocalServices,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An event set aside by a bug in metric extraction and an event past the ledger's
    retention in one batch: each is refused under its own item, the rest stored (found by a
    reviewer: the inbound items fell out of step with the events and the batch raised, retried
    forever)."""
    from txmetrics.core import metrics as core_metrics

    deliver([_late_body("seed", "2026-03-01")], partition_id="0", first_sequence=0)   # the day exists
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        enforce(conn, {"dynamic_metrics": 14, "ingested_events": 14}, date(2026, 3, 20))
    real = core_metrics.extract_metrics

    def broken_for_boom(events: Any, catalog: Any) -> Any:
        if any(e.event_id == "boom" for e in events):
            raise RuntimeError("a bug in extraction")
        return real(events, catalog)

    monkeypatch.setattr(core_metrics, "extract_metrics", broken_for_boom)
    deliver([_late_body("boom", "2026-03-18"), _late_body("ok", "2026-03-19"), _late_body("late", "2026-03-01")],
            partition_id="0", first_sequence=10)
    refused = db.execute("SELECT sequence_number, error_code, payload FROM failed_items ORDER BY 1").fetchall()
    assert [(seq, code) for seq, code, _ in refused] == [(10, "internal_error"), (12, "past_retention")]
    assert [json.loads(payload)["event_id"] for _, _, payload in refused] == ["boom", "late"]   # each its own
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone()[0] == 1          # "ok"


def test_retention_between_the_writers_horizon_read_and_its_partitions_counts_nothing_twice(
        deliver: Callable[..., None], db: psycopg.Connection, services: LocalServices,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The daily retention records the horizon and drops the day just after a writer read the
    horizon and before it makes the batch's partitions: the writer must not make the dropped
    ledger day again and count the resend as new (found by a reviewer: 2 -> 3)."""
    from txmetrics.adapters import partitions as real_partitions
    from txmetrics.adapters import postgres as pg_adapter
    from txmetrics.core.events import InboundEvent

    bodies = [_late_body("e1", "2026-03-01"), _late_body("e2", "2026-03-19")]
    deliver(bodies, partition_id="0", first_sequence=0)
    assert _all_up(db) == 2
    knowing = runtime.get_pipeline()     # an instance that knows the day 2026-03-01 exists
    runtime.reset()                      # a new host instance: it knows no day, it reads the horizon
    real_horizon = real_partitions.horizon
    fired: list[Any] = []

    def horizon_then_retention(conn: psycopg.Connection, *, table: str) -> Any:
        value = real_horizon(conn, table=table)
        if not fired:
            fired.append(value)
            with psycopg.connect(services.database_url, autocommit=True) as other:   # the daily timer
                enforce(other, {"dynamic_metrics": 14, "ingested_events": 14}, date(2026, 3, 20))
        return value

    monkeypatch.setattr(pg_adapter.partitions, "horizon", horizon_then_retention)
    deliver(bodies, partition_id="0", first_sequence=0)
    assert fired == [None] and _all_up(db) == 2
    assert db.execute("SELECT event_id, error_code FROM failed_items").fetchall() == [("e1", "past_retention")]
    # the dropped day is not made again (its making was undone), so the instance that still
    # knows the day meets no empty partition to count the resend in (reviewer: 2 -> 3)
    assert "ingested_events_p20260301" not in partitions(db, "ingested_events")
    knowing.process("1", [InboundEvent(body=b.encode(), partition_id="1", sequence_number=50 + i)
                          for i, b in enumerate(bodies)])
    assert _all_up(db) == 2 and db.execute("SELECT count(*) FROM failed_items").fetchone()[0] == 1


def test_a_fresh_deployment_takes_old_events_until_retention_drops_their_day(
        deliver: Callable[..., None], db: psycopg.Connection, services: LocalServices) -> None:
    """Retention records the ledger's first day only when it drops a day: before that, an old
    event (a history loaded through the hub) is stored once as usual; its day's drop then makes
    its resend a refusal. The first day only moves forward, and a refused event is kept past
    failed_items' own retention until an operator closes it (it is in no other store)."""
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        for table in ("dynamic_metrics", "ingested_events"):    # earlier tests' days: a fresh database has none
            conn.execute("SELECT txm_drop_expired_partitions(%s::regclass, '2026-03-06')", (table,))
        runtime.reset()                                        # nor does its function know any day
        enforce(conn, {"dynamic_metrics": 14, "ingested_events": 14}, date(2026, 3, 20))   # nothing to drop
        assert partitions_module.horizon(conn, table="ingested_events") is None
        deliver([_late_body("history", "2026-03-01")], partition_id="0", first_sequence=0)
        assert _all_up(db) == 1 and not db.execute("SELECT count(*) FROM failed_items").fetchone()[0]
        enforce(conn, {"dynamic_metrics": 14, "ingested_events": 14}, date(2026, 3, 20))   # drops 03-01
        deliver([_late_body("history", "2026-03-01")], partition_id="1", first_sequence=0)
        assert _all_up(db) == 1
        assert partitions_module.horizon(conn, table="ingested_events") == date(2026, 3, 6)
        partitions_module.record_horizon(conn, table="ingested_events", kept_since=date(2026, 3, 2))   # earlier
        assert partitions_module.horizon(conn, table="ingested_events") == date(2026, 3, 6)
        # failed_items' retention (30 days here) a year on: the refused valid event stays until closed
        report = enforce(conn, {"failed_items": 30}, date(2027, 3, 1))
        assert report.deleted_rows["failed_items"] == 0
        conn.execute("UPDATE failed_items SET resolved = true")
        assert enforce(conn, {"failed_items": 30}, date(2027, 3, 1)).deleted_rows["failed_items"] == 1


def test_a_blob_two_rules_cover_gets_their_least_expensive_action(service: BlobServiceClient) -> None:
    """Learn, "Configure a lifecycle management policy": when more than one action applies to a
    blob, lifecycle management applies the least expensive (delete, then tierToArchive, then
    tierToCool), the first rule defined among equals. The plan listed the blob under each rule,
    and --simulate then deleted it twice (the second delete failed: the blob was gone)."""
    from lifecycle.policy import validate

    container = service.get_container_client("exports")
    if container.exists():
        container.delete_container()
    container.create_container()
    for name in ("reports/old/a.csv", "reports/new/b.csv"):
        container.upload_blob(name, b"x" * 10)
    raw = {"storage": {"redundancy": "Standard_LRS", "containers": ["raw-events", "exports"]},
           "blob_rules": [{"name": "reports-cool", "container": "exports", "prefix": "reports/", "cool_after_days": 10},
                          {"name": "old-reports-cool", "container": "exports", "prefix": "reports/old/",
                           "cool_after_days": 10},
                          {"name": "old-reports-expire", "container": "exports", "prefix": "reports/old/",
                           "delete_after_days": 20}],
           "tables": {"dynamic_metrics": 35, "ingested_events": 35, "failed_items": 90, "aggregate_histograms": 730}}
    policy = validate(raw, stack="t", origin={k: "t.yaml" for k in raw}, files=("t.yaml",))
    now = datetime.now(UTC)
    cool = make_plan(policy, now + timedelta(days=15), service=service)
    assert [(a.rule, a.action, sorted(n for n, _ in a.blobs)) for a in cool.blob_actions] == [
        ("reports-cool", "tierToCool", ["reports/new/b.csv", "reports/old/a.csv"])]     # the first rule of equals
    plan = make_plan(policy, now + timedelta(days=25), service=service)
    assert [(a.rule, a.action, [n for n, _ in a.blobs]) for a in plan.blob_actions] == [
        ("old-reports-expire", "delete", ["reports/old/a.csv"]), ("reports-cool", "tierToCool", ["reports/new/b.csv"])]
    assert plan.unchanged_blobs == 0
    assert simulate(plan, policy, service) == {"delete": 1, "tierToCool": 1}
    assert [b.name for b in container.list_blobs()] == ["reports/new/b.csv"]
