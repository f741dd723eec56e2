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
                 enqueued_times: Sequence[datetime] | None = None,
                 partition_keys: Sequence[str | None] | None = None,
                 message_ids: Sequence[str | None] | None = None) -> tuple[Datum, dict[str, Datum]]:
    """What the host sends the worker for one batch: the bodies and the trigger metadata
    (serialised by the host, in its own process).

    Each event's SystemPropertiesArray object is what Microsoft.Azure.WebJobs.Extensions.EventHubs
    6.5.2+ builds (azure-sdk-for-net, sdk/eventhub/Microsoft.Azure.WebJobs.Extensions.EventHubs/src/
    Triggers/EventHubTriggerBindingStrategy.cs, `GetSystemPropertiesForBinding`; read at 6.6.0-beta.1,
    whose CHANGELOG dates OffsetString to 6.5.2): a copy of `EventData.SystemProperties`, then
    `SequenceNumber`, `Offset`, `OffsetString`, `PartitionKey`, `EnqueuedTimeUtc` set on it, in that
    order (new keys of a .NET Dictionary enumerate in insertion order; Newtonsoft writes them so).
    `EventData.SystemProperties` (Azure.Messaging.EventHubs, src/Amqp/AmqpSystemProperties.cs) lists
    the AMQP properties section's set fields first (message-id, user-id, to, subject, reply-to,
    correlation-id, ..., in that fixed order; here message-id alone, when given), then the message
    annotations in the order they came: the publisher's (x-opt-partition-key, when it sent one)
    before the service's x-opt-sequence-number, x-opt-offset, x-opt-enqueued-time (that order is
    not in any source read, only in examples: IoT Central's export sample in its docs, and
    azure-functions' tests/test_eventhub.py `_generate_full_metadata`, a 2020 mock). Their values
    (`AmqpAnnotatedMessageExtensions.GetMessageAnnotationNormalizedValue`): the sequence number a
    long, the offset as the service sends it (a string of digits), the enqueued time a
    DateTimeOffset at +00:00 (host_offset_time_text). The binding keys: SequenceNumber a long,
    Offset a long (OffsetString parsed; -1 when it is not a number: a geo-replicated namespace),
    OffsetString the service's string, PartitionKey a string or null, EnqueuedTimeUtc
    `EnqueuedTime.DateTime` (host_time_text). Extension 6.0-6.5.1 sent no OffsetString, and the
    Azure.Messaging.EventHubs under it (before 5.12.2; its AmqpMessageConverter.
    NormalizeBrokerProperties, read in a 5.11-era version) turned x-opt-offset into a long."""
    start = enqueued_at or datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    raw = [encode_body(b) for b in bodies]
    seqs = list(sequence_numbers) if sequence_numbers is not None else [first_sequence + i for i in range(len(raw))]
    props = []
    for i, seq in enumerate(seqs):
        moment = enqueued_times[i] if enqueued_times is not None else start + timedelta(milliseconds=i)
        key = partition_keys[i] if partition_keys is not None else None
        message_id = message_ids[i] if message_ids is not None else None
        offset = seq * 512
        p: dict[str, Any] = {}
        if message_id is not None:
            p["message-id"] = message_id
        if key is not None:
            p["x-opt-partition-key"] = key
        p.update({"x-opt-sequence-number": seq, "x-opt-offset": str(offset),
                  "x-opt-enqueued-time": host_offset_time_text(moment),
                  "SequenceNumber": seq, "Offset": offset, "OffsetString": str(offset), "PartitionKey": key,
                  "EnqueuedTimeUtc": host_time_text(moment)})
        props.append(p)
    datum = Datum(type="collection_bytes", value=SimpleNamespace(bytes=raw))
    metadata = {
        # Newtonsoft's defaults: no spaces, non-ASCII characters as they are
        "SystemPropertiesArray": Datum(type="json", value=json.dumps(props, separators=(",", ":"), ensure_ascii=False)),
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


def host_offset_time_text(moment: datetime) -> str:
    """An x-opt-enqueued-time as the host writes it into SystemPropertiesArray: the UTC time as
    host_time_text writes it, then `+00:00`. Azure.Messaging.EventHubs hands the annotation out as
    a DateTimeOffset of offset zero (src/Amqp/AmqpAnnotatedMessageExtensions.cs, `GetEnqueuedTime`,
    via `GetMessageAnnotationNormalizedValue`; before 5.12.2 `AmqpMessageConverter.
    NormalizeBrokerProperties` did the same), and Newtonsoft writes a DateTimeOffset in the same
    ISO format with its offset (`K` is `+00:00`)."""
    return host_time_text(moment) + "+00:00"


def decode(datum: Datum, metadata: dict[str, Datum]) -> list[func.EventHubEvent]:
    """What the Python worker does with it before calling the function."""
    events = EventHubTriggerConverter.decode(datum, trigger_metadata=metadata)
    assert isinstance(events, list)
    return events
