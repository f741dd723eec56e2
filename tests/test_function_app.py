"""The trigger as the Functions host indexes and calls it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from localdev.eventhub import make_batch
from localdev.run import check_annotations_as_the_worker_does, indexed_functions, worker_logging
from txmetrics.settings import SettingsError


def test_binding_matches_the_contract() -> None:
    functions = indexed_functions()
    assert "ingest" in functions
    binding = json.loads(functions["ingest"].get_function_json())["bindings"]
    # dataType BINARY: the host sends the bodies as collection_bytes. As strings (collection_string)
    # it drops every empty body (azure-functions-host, RpcMessageConversionExtensions.ToRpcStringArray
    # skips string.IsNullOrEmpty), the bodies no longer match SystemPropertiesArray, and azure-functions
    # raises "Number of bodies and metadata mismatched" for the batch, retried forever.
    assert binding == [{"direction": "IN", "dataType": "BINARY", "type": "eventHubTrigger", "name": "events",
                        "connection": "EventHubConnection", "eventHubName": "%EVENTHUB_NAME%",
                        "cardinality": "MANY", "consumerGroup": "%EVENTHUB_CONSUMER_GROUP%"}]
    retry = functions["ingest"].get_setting("retry_policy").get_dict_repr()
    # retried until it succeeds: a bounded policy moves the checkpoint past a long outage (events lost)
    assert retry["strategy"] == "exponential_backoff" and int(retry["max_retry_count"]) == -1
    assert (retry["minimum_interval"], retry["maximum_interval"]) == ("00:00:02", "00:05:00")


def test_the_worker_can_load_every_function() -> None:
    """The Python worker refuses, at indexing, a parameter annotated with PEP 585's
    `list[func.EventHubEvent]` (azure_functions_worker/functions.py, validate_function_params:
    "invalid non-type annotation"), and then runs no function of the app at all."""
    functions = indexed_functions()      # which makes these checks too, as the worker does when it indexes
    assert {"ingest", "fold_aggregates", "retention", "maintenance"} <= set(functions)
    for function in functions.values():
        check_annotations_as_the_worker_does(function)


def test_partition_id_comes_from_partition_context() -> None:
    indexed_functions()
    import function_app

    events = make_batch([b"{}"], partition_id="17")
    assert function_app.partition_id_of(events) == "17"
    inbound = function_app.to_inbound(events, "17")
    assert inbound[0].sequence_number == 0 and inbound[0].offset == 0 and inbound[0].enqueued_at is not None


def test_one_structured_log_line_per_batch(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="txmetrics.ingest")
    event = {"event_id": "l1", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",
             "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved"}
    ingest_fn(make_batch([event, b"bad"], partition_id="4", first_sequence=70))
    lines = [r.getMessage() for r in caplog.records if r.name == "txmetrics.ingest"]
    assert len(lines) == 1
    fields = json.loads(lines[0].split(" ", 1)[1])
    assert (fields["partition"], fields["seq_min"], fields["seq_max"]) == ("4", 70, 71)
    # new, duplicates and failed add up to received; no "processed" that counted duplicates too
    assert (fields["received"], fields["new"], fields["duplicates"], fields["failed"]) == (2, 1, 0, 1)
    assert "processed" not in fields
    assert fields["failed_by_code"] == {"body_not_json": 1}
    assert {"decode_validate", "commit", "upload"} <= set(fields["ms"])
    ingest_fn(make_batch([event, event, b"bad"], partition_id="4", first_sequence=72))   # again, twice
    fields = json.loads([r.getMessage() for r in caplog.records if r.name == "txmetrics.ingest"][-1].split(" ", 1)[1])
    assert (fields["received"], fields["new"], fields["duplicates"], fields["failed"]) == (3, 0, 2, 1)


def test_under_the_workers_logging_a_batch_sends_the_host_one_record(ingest_fn: Callable[..., None],
                                                                     db: psycopg.Connection) -> None:
    """In Azure the worker's root logger is at INFO and ships every record to the host
    (localdev.run.worker_logging). azure-core's HttpLoggingPolicy logs each blob request and
    response there with its headers: two records an upload, passed on to Application Insights
    by host.json's "Information". The batch's own line is the one record it sends."""
    event = {"event_id": "wl1", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",
             "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved"}
    with worker_logging() as sent:
        ingest_fn(make_batch([event, b"bad"], partition_id="5", first_sequence=90))
        ingest_fn(make_batch([{**event, "event_id": "wl2"}], partition_id="5", first_sequence=92))
    assert [(name, level) for name, level, _ in sent] == [("txmetrics.ingest", logging.INFO)] * 2, sent
    assert all(message.startswith("batch {") for _, _, message in sent)
    assert db.execute("SELECT count(*) FROM raw_files WHERE partition_id = '5'").fetchone() == (2,)   # two uploads


def test_hand_made_events_without_trigger_metadata_are_processed(ingest_fn: Callable[..., None],
                                                                 db: psycopg.Connection) -> None:
    """Events built directly (no PartitionContext, no sequence numbers) still work, and two such
    batches whose made-up sequence numbers collide lose nothing."""
    import azure.functions as func

    def event(i: int) -> func.EventHubEvent:
        return func.EventHubEvent(body=json.dumps({
            "event_id": f"h{i}", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",
            "amount": 1, "currency": "USD", "payment_method": "card", "status": "approved"}).encode())

    ingest_fn([event(1), event(2)])
    ingest_fn([event(3), event(4)])          # same made-up sequence numbers 0 and 1
    ingest_fn([event(1)])                    # a redelivery
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (4,)
    assert db.execute("SELECT DISTINCT partition_id FROM raw_files").fetchall() == [("unknown",)]
    assert db.execute("SELECT count(*) FROM raw_files").fetchone() == (2,)


def test_daily_timer_functions(ingest_fn: Callable[..., None], db: psycopg.Connection,
                               monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """retention and maintenance, called as the host calls them."""
    from azure.functions.timer import TimerRequest

    from localdev.run import load_function

    caplog.set_level(logging.INFO, logger="txmetrics.ingest")
    old = datetime.combine(datetime.now(UTC).date() - timedelta(days=2), datetime.min.time(), tzinfo=UTC)
    bodies = [json.dumps({"event_id": f"t{i}", "transaction_id": "t", "merchant_id": "m", "amount": 1,
                          "occurred_at": (old + timedelta(hours=i)).isoformat(), "currency": "USD",
                          "payment_method": "card", "status": "approved"}) for i in range(3)]
    for i, body in enumerate(bodies):           # one small file per batch, all on an old day
        ingest_fn(make_batch([body], partition_id="0", first_sequence=i))
    # a retention edited wrong by hand (-1 days dropped today's partitions, an audit) stops the
    # retention job before it drops anything, and only that job
    monkeypatch.setenv("TXMETRICS_RETENTION", json.dumps({"dynamic_metrics": -1, "ingested_events": -1}))
    with pytest.raises(SettingsError, match="TXMETRICS_RETENTION: dynamic_metrics must be a whole number"):
        load_function("retention")(TimerRequest())
    assert db.execute("SELECT count(*) FROM dynamic_metrics").fetchone() == (6,)      # 3 events x amount, approved
    monkeypatch.setenv("TXMETRICS_RETENTION", json.dumps({"dynamic_metrics": 1, "ingested_events": 1}))
    load_function("maintenance")(TimerRequest())
    assert db.execute("SELECT count(*) FROM raw_files WHERE state = 'uploaded'").fetchone() == (1,)   # compacted
    assert db.execute("SELECT count(*) FROM aggregate_rollups WHERE NOT stale").fetchone() == (1,)
    load_function("retention")(TimerRequest())
    assert db.execute("SELECT count(*) FROM dynamic_metrics").fetchone() == (0,)      # older than 1 day
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("maintenance ") for m in messages) and any(m.startswith("retention ") for m in messages)


def test_consumer_lag_is_measured_from_the_oldest_instant() -> None:
    """lag_s (the consumer-lag alert's input) comes from the earliest enqueued instant, whatever
    the time zones the times are written in; naive times, in hand-made batches, are UTC."""
    import azure.functions as func

    indexed_functions()
    import function_app

    now = datetime.now(UTC)
    plus_two = timezone(timedelta(hours=2))

    def lag(*times: datetime | None) -> float | None:
        # the events' times as ingest hands them on (InboundEvent.enqueued_at, from the trigger's events)
        inbound = function_app.to_inbound([func.EventHubEvent(body=b"{}", enqueued_time=t) for t in times], "0")
        return function_app.consumer_lag_seconds(e.enqueued_at for e in inbound)

    # 09:00+02:00 is 07:00 UTC: the oldest instant though its wall-clock time is the latest
    oldest = (now - timedelta(seconds=600)).astimezone(plus_two)
    lag_s = lag(now - timedelta(seconds=300), oldest, None, now - timedelta(seconds=60))
    assert lag_s is not None and 599 <= lag_s <= 610
    naive_oldest = (now - timedelta(seconds=900)).replace(tzinfo=None)
    lag_s = lag(now - timedelta(seconds=60), naive_oldest)
    assert lag_s is not None and 899 <= lag_s <= 910
    assert lag(None, None) is None


def test_one_day_s_failed_compaction_does_not_stop_the_others(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The daily timer compacted the days in one expression: a day whose compaction failed (an
    audit's stuck day, after a rebuild) stopped every later day's, every day. Each day now has
    its try; the timer still fails, naming the day, so the failure alert fires."""
    from azure.functions.timer import TimerRequest

    from localdev.run import load_function
    from txmetrics import compaction

    today = datetime.now(UTC).date()
    days = [today - timedelta(days=3), today - timedelta(days=2)]
    for n, day in enumerate(days):
        for i in range(2):                      # two small files per day
            ingest_fn(make_batch([json.dumps({"event_id": f"c{n}{i}", "transaction_id": "t", "merchant_id": "m",
                                              "amount": 1, "occurred_at": f"{day}T0{i}:00:00Z", "currency": "USD",
                                              "payment_method": "card", "status": "approved"})],
                                 partition_id="0", first_sequence=10 * n + i))
    real = compaction.compact_day

    def first_day_fails(conn: Any, archive: Any, day: Any, **kwargs: Any) -> Any:
        if day == days[0]:
            raise RuntimeError("a stuck day")
        return real(conn, archive, day, **kwargs)

    monkeypatch.setattr(compaction, "compact_day", first_day_fails)
    with pytest.raises(RuntimeError, match=f"compaction failed for {days[0]} \\(the other days were compacted\\)"):
        load_function("maintenance")(TimerRequest())
    assert db.execute("SELECT event_date, count(*) FROM raw_files WHERE state = 'uploaded' GROUP BY 1 ORDER BY 1"
                      ).fetchall() == [(days[0], 2), (days[1], 1)]
