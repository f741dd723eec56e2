"""Build Event Hubs trigger batches exactly as the Functions host hands them to Python:
a `collection_bytes` datum plus `SystemPropertiesArray` and `PartitionContext` trigger
metadata, decoded by azure-functions' own EventHubTriggerConverter."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import azure.functions as func
from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.meta import Datum


def encode_body(event: dict[str, Any] | bytes | str) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode()
    return json.dumps(event).encode()


def make_batch(bodies: Sequence[dict[str, Any] | bytes | str], *, partition_id: str = "0", first_sequence: int = 0,
               enqueued_at: datetime | None = None, hub: str = "transactions",
               sequence_numbers: Sequence[int] | None = None,
               enqueued_times: Sequence[datetime] | None = None) -> list[func.EventHubEvent]:
    return decode(*host_payload(bodies, partition_id=partition_id, first_sequence=first_sequence,
                                enqueued_at=enqueued_at, hub=hub, sequence_numbers=sequence_numbers,
                                enqueued_times=enqueued_times))


def host_payload(bodies: Sequence[dict[str, Any] | bytes | str], *, partition_id: str = "0", first_sequence: int = 0,
                 enqueued_at: datetime | None = None, hub: str = "transactions",
                 sequence_numbers: Sequence[int] | None = None,
                 enqueued_times: Sequence[datetime] | None = None) -> tuple[Datum, dict[str, Datum]]:
    """What the host sends the worker for one batch: the bodies and the trigger metadata
    (serialised by the host, in its own process)."""
    start = enqueued_at or datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    raw = [encode_body(b) for b in bodies]
    seqs = list(sequence_numbers) if sequence_numbers is not None else [first_sequence + i for i in range(len(raw))]
    props = [{
        "SequenceNumber": seq,
        "Offset": seq * 512,
        "EnqueuedTimeUtc": host_time_text(enqueued_times[i] if enqueued_times is not None
                                          else start + timedelta(milliseconds=i)),
        "PartitionKey": None,
    } for i, seq in enumerate(seqs)]
    datum = Datum(type="collection_bytes", value=SimpleNamespace(bytes=raw))
    metadata = {
        "SystemPropertiesArray": Datum(type="json", value=json.dumps(props)),
        "PartitionContext": Datum(type="json", value=json.dumps({
            "ConsumerGroup": "$Default", "EventHubName": hub,
            "FullyQualifiedNamespace": "local.servicebus.windows.net", "PartitionId": partition_id})),
    }
    return datum, metadata


def host_time_text(moment: datetime) -> str:
    """An enqueued time as the host writes it into SystemPropertiesArray: UTC, with no zone, the
    fraction's trailing zeros dropped (none when it is 0). The Event Hubs extension stores
    `EventData.EnqueuedTime.DateTime`, a DateTime of DateTimeKind.Unspecified (azure-sdk-for-net,
    Microsoft.Azure.WebJobs.Extensions.EventHubs, `EventHubTriggerBindingStrategy.
    GetSystemPropertiesForBinding`), and the host serialises the array with Newtonsoft's default
    settings (azure-functions-host, `RpcMessageConversionExtensions.ToRpcDefault`), whose ISO
    format is `yyyy-MM-ddTHH:mm:ss.FFFFFFFK` (K is empty for Unspecified). azure-functions
    therefore gives a naive `enqueued_time` (the worker's tests/endtoend/
    test_eventhub_batch_functions.py compares it with `datetime.utcnow()`)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{moment.microsecond:06d}".rstrip("0") if moment.microsecond else text


def decode(datum: Datum, metadata: dict[str, Datum]) -> list[func.EventHubEvent]:
    """What the Python worker does with it before calling the function."""
    events = EventHubTriggerConverter.decode(datum, trigger_metadata=metadata)
    assert isinstance(events, list)
    return events
