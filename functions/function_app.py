"""Azure Functions entry points (Python v2 programming model).

`ingest`: one Event Hub-triggered function, cardinality many. Thin by design: decode the
batch, hand it to the pipeline, log one structured line. Any exception propagates so the
host retries the batch (retry policy below); the pipeline makes retries harmless.
`fold_aggregates` (every minute): merges the writers' histogram deltas into
aggregate_histograms (readers include pending deltas, so this bounds their read cost, not
what they see). `retention` (02:30 UTC) and `maintenance` (03:00 UTC): daily timers for
PostgreSQL retention, and for outbox uploads, daily rollups and compaction.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, List  # noqa: UP035  # List: see ingest's annotation

import azure.functions as func

from txmetrics import trigger_decode
from txmetrics.collector import collector_paused
from txmetrics.core.catalog import load_catalog
from txmetrics.core.events import InboundEvent
from txmetrics.core.naming import as_utc
from txmetrics.runtime import get_pipeline
from txmetrics.settings import Settings

# The worker decodes our batches with azure-functions' converter; its timestamp parsing
# costs more than our validation (see txmetrics/trigger_decode.py). Same results, faster.
trigger_decode.install()

# Refuse a bad metric catalog at start-up (file, key and fix in the message), not mid-stream.
load_catalog(Settings.from_env().metric_catalog)

app = func.FunctionApp()
log = logging.getLogger("txmetrics.ingest")

# The Python worker sets the root logger to INFO and ships every record to the host
# (azure-functions-python-worker, Dispatcher.dispatch_forever), and host.json's "Information"
# passes it on to Application Insights. azure-core's HttpLoggingPolicy logs every Blob Storage
# request and response there, headers and all: two records an upload, about 1.4 KB of log a
# batch and 0.2-0.6 ms of CPU (localdev.run.worker_logging stands in for the worker in the
# tests and the bench). It logs failed responses at INFO too: a request that fails for good
# raises, and each retry the SDK makes of any blob request gets a WARNING of our own
# (adapters/blob.py, _LoggedRetry).
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)


def partition_id_of(events: list[func.EventHubEvent]) -> str:
    """PartitionContext.PartitionId from the batch's trigger metadata, as the host sends it."""
    if not events:
        return "unknown"
    metadata = events[0].metadata or {}
    context: Any = metadata.get("PartitionContext")
    if isinstance(context, str | bytes):
        try:
            context = json.loads(context)
        except ValueError:
            context = None
    if isinstance(context, dict):
        pid = context.get("PartitionId", context.get("partitionId"))
        if pid is not None:
            return str(pid)
    log.warning("trigger metadata has no PartitionContext.PartitionId; using 'unknown'")
    return "unknown"


def to_inbound(events: list[func.EventHubEvent], partition_id: str) -> list[InboundEvent]:
    inbound = []
    for index, event in enumerate(events):
        raw_offset = event.offset
        offset = int(raw_offset) if raw_offset is not None else None
        seq = event.sequence_number
        if seq is None:  # never from the real host; keeps hand-made batches processable
            seq = offset if offset is not None else index
        enqueued: datetime | None = event.enqueued_time
        inbound.append(InboundEvent(event.get_body(), partition_id, int(seq), offset, enqueued))
    return inbound


# Exponential backoff from 2 s to 5 min, never giving up ("-1 means to retry indefinitely":
# the Functions worker's IRetryOptions.MaxRetryCount). While retrying, the host writes no
# checkpoint, so the partition waits rather than skips; a bound would let the checkpoint move
# past a long outage and lose its batch - see docs/ingest.md, "Failures and retries".
@app.retry(strategy="exponential_backoff", max_retry_count="-1",
           minimum_interval="00:00:02", maximum_interval="00:05:00")
@app.event_hub_message_trigger(arg_name="events", event_hub_name="%EVENTHUB_NAME%",
                               connection="EventHubConnection", consumer_group="%EVENTHUB_CONSUMER_GROUP%",
                               cardinality=func.Cardinality.MANY, data_type="binary")
# typing.List, not list[...]: the Python worker refuses PEP 585's list[...] when it indexes the app
# ("invalid non-type annotation", azure_functions_worker/functions.py validate_function_params;
# worker issue #1034), and then runs none of its functions (localdev.run checks as it does).
def ingest(events: List[func.EventHubEvent]) -> None:  # noqa: UP006  # see above
    started = time.perf_counter()
    with collector_paused():      # the batch's objects are freed by reference counting (txmetrics/collector.py)
        partition_id = partition_id_of(events)
        inbound = to_inbound(events, partition_id)
        report = get_pipeline().process(partition_id, inbound)
    # duration_ms and lag_s feed the operations workbook and the consumer-lag alert (infra/operations.py)
    fields = {**report.log_fields(), "duration_ms": round((time.perf_counter() - started) * 1000, 1),
              "lag_s": consumer_lag_seconds(e.enqueued_at for e in inbound)}
    log.info("batch %s", json.dumps(fields, sort_keys=True))


def consumer_lag_seconds(enqueued_times: Iterable[datetime | None]) -> float | None:
    """How far this partition's consumer is behind: seconds from the oldest enqueued time of the
    batch's events to now. (Event Hubs Standard has no consumer-lag metric; growing values mean
    the function falls behind.) Read from the InboundEvents: EventHubEvent's properties cost
    about 0.3 us an event."""
    enqueued = [t for t in enqueued_times if t is not None]
    if not enqueued:
        return None
    try:
        oldest = as_utc(min(enqueued))     # the host's times are all aware: one conversion, not one per event
    except TypeError:                      # naive and aware mixed (hand-made batches): naive ones are UTC
        oldest = min(map(as_utc, enqueued))
    return round(max(0.0, (datetime.now(UTC) - oldest).total_seconds()), 1)


@app.timer_trigger(arg_name="timer", schedule="0 * * * * *", run_on_startup=False, use_monitor=False)
def fold_aggregates(timer: func.TimerRequest) -> None:
    """Every minute: merge the histogram deltas committed so far into aggregate_histograms."""
    import time

    started = time.perf_counter()
    folded = get_pipeline().store.fold_aggregates()
    log.info("fold %s", json.dumps({"deltas": folded, "ms": round(1000 * (time.perf_counter() - started), 1)}))


@app.timer_trigger(arg_name="timer", schedule="0 30 2 * * *", run_on_startup=False, use_monitor=True)
def retention(timer: func.TimerRequest) -> None:
    """Daily PostgreSQL retention (TXMETRICS_RETENTION, rendered from lifecycle/ by Pulumi)."""
    from datetime import UTC, datetime

    from txmetrics.retention import enforce

    policy = Settings.from_env().retention_days
    if not policy:
        log.warning("TXMETRICS_RETENTION is not set: no retention applied")
        return
    with get_pipeline().store.autocommit_connection() as conn:
        report = enforce(conn, policy, datetime.now(UTC).date())
    log.info("retention %s", json.dumps({"created": report.created_partitions, "dropped": report.dropped_partitions,
                                         "deleted": report.deleted_rows}, sort_keys=True))


@app.timer_trigger(arg_name="timer", schedule="0 0 3 * * *", run_on_startup=False, use_monitor=True)
def maintenance(timer: func.TimerRequest) -> None:
    """Daily: finish stale outbox uploads, roll up finished days, compact finished days' small files."""
    from datetime import UTC, datetime

    from txmetrics.compaction import compact_day, days_to_compact
    from txmetrics.rollup import days_to_roll, roll_day

    pipeline = get_pipeline()
    flushed = pipeline.flush_outbox(None)
    pipeline.store.fold_aggregates()     # rollups are built from folded rows
    today = datetime.now(UTC).date()
    compacted: dict[str, int | str] = {}
    with pipeline.store.autocommit_connection() as conn:
        rolled = [str(d) for d in days_to_roll(conn, today) if roll_day(conn, d)]
        for day in days_to_compact(conn, today):
            try:            # one day's failure must not stop the other days' compaction, day after day
                compacted[str(day)] = len(compact_day(conn, pipeline.archive, day).outputs)
            except Exception as exc:    # raised below, after the other days
                compacted[str(day)] = f"failed: {type(exc).__name__}: {exc}"
    log.info("maintenance %s", json.dumps({"outbox_flushed": flushed, "rolled_up": rolled, "compacted": compacted}))
    if failed := [day for day, outcome in compacted.items() if isinstance(outcome, str)]:
        raise RuntimeError(f"compaction failed for {', '.join(failed)} (the other days were compacted); "
                           "see the maintenance log line")
