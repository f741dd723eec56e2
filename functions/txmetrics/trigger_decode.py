"""Fast paths for the Event Hubs trigger's batch decoding in azure-functions.

The Python worker decodes every batch with azure-functions' `EventHubTriggerConverter`,
which parses each event's `EnqueuedTimeUtc` by trying up to twelve `strptime` formats in
turn. The host's form has no zone at all (`2026-03-01T12:00:00.123`, the fraction's trailing
zeros dropped, none when it is 0): the Event Hubs extension puts `EventData.EnqueuedTime.DateTime`
(DateTimeKind.Unspecified) into SystemPropertiesArray (azure-sdk-for-net,
Microsoft.Azure.WebJobs.Extensions.EventHubs, `EventHubTriggerBindingStrategy.
GetSystemPropertiesForBinding`) and the host serialises the array with Newtonsoft's default
settings (azure-functions-host, `RpcMessageConversionExtensions.ToRpcDefault`:
`JsonConvert.SerializeObject`), which writes such a time without a zone; the library then
fails all twelve UTC formats before its first local one reads it, as a naive datetime (the
worker's own end-to-end test compares it with `datetime.utcnow()`: tests/endtoend/
test_eventhub_batch_functions.py). Measured: about 200 ms for one 1,000-event batch, five
times our whole worker's CPU, on the worker's event-loop thread, before any of our code runs.

`install()` gives the converter a parser that recognises exactly the ISO 8601 forms the
library reads as UTC (`...Z`, `...+00:00`, `...-00:00`) or as naive (no zone: the host's),
with or without a fraction, with one anchored regular
expression and reads it with `datetime.fromisoformat`; anything else (another format, an
impossible date) goes to the library's own parser, so results and errors are the
library's in every case (tests/test_trigger_decode.py compares the two on generated
input).

The batch itself: for each event the library wraps partition key, sequence number and offset
in a `Datum`, then unwraps each again, and scans the properties for IoT Hub fields: 8 us
per event in all. `_decode_multiple_events` does the same for the plain case (a
`collection_bytes` batch whose system properties are dicts with a str-or-absent partition
key and int-or-absent sequence number and offset, the host's form) in one pass, and hands
any other batch, whole, to the library's method, whose results and errors are then the
library's. The host's batch itself (JSON text with no IoT Hub key) is first decoded into
typed structs (`_HostProperties`: msgspec checks the types in C, and skips the keys the
library ignores: the x-opt-* annotations, OffsetString and any AMQP property the extension
copies in, see localdev.eventhub.host_payload), and its timestamps are
matched against the ISO forms at once, joined into one text (one regular expression call a
batch, not one an event): 2.4-2.5 -> 1.8-1.9 us an event for the decoding. Anything that
does not fit goes on to the per-event path above. Its events share one read-only view of
the trigger metadata (`_MetadataView`) that converts an entry when it is read: the function
reads PartitionContext alone, and the library's `metadata` converts every entry,
SystemPropertiesArray's JSON of the whole batch included (1 us an event with the standard
library's json, for a value already decoded above). It only replaces methods on
`EventHubTriggerConverter`; other bindings keep theirs. Installing twice is harmless.
Should the worker load an azure-functions release without the internals this relies on,
nothing is patched and a warning is logged: slower, never wrong.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, cast

import msgspec
from azure.functions import _eventhub
from azure.functions import meta as _meta
from azure.functions.eventhub import EventHubTriggerConverter

log = logging.getLogger(__name__)
# The library's parser, defined on its private base converter (which install() leaves alone);
# None if a release renames it, and install() then does nothing.
_LIBRARY_PARSE: Any = getattr(getattr(_meta, "_BaseConverter", None), "_parse_datetime", None)

# The forms the library's UTC format list accepts with two-digit fields, and the same without
# a zone (the host's form, which the library's local formats read as a naive datetime, as
# fromisoformat does); a fraction of more than six digits is cut to six, as the library does
# (it strips digits beyond the sixth).
_ISO_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-]00:00)?")


def _parse_datetime(cls: type, datetime_str: str | None) -> datetime | None:
    if datetime_str and _ISO_UTC.fullmatch(datetime_str) is not None:
        # One of the forms above: Python's own ISO parser (C) reads it as the library does,
        # fields as written, the fraction cut to six digits, in UTC (naive without a zone); 4x
        # cheaper than building the datetime from the match's groups
        try:
            return datetime.fromisoformat(datetime_str)
        except ValueError:
            pass  # e.g. month 13: the library's parser raises its own error below
    return library_parse_datetime(datetime_str)


def library_parse_datetime(datetime_str: str | None) -> datetime | None:
    """The library's own parser."""
    return cast("datetime | None", _LIBRARY_PARSE(datetime_str))


_LIBRARY_DECODE_MANY: Any = EventHubTriggerConverter.__dict__.get("decode_multiple_events")


def _library_decode_many(cls: Any, data: Any, trigger_metadata: Any) -> list[Any]:
    """The library's own batch decoding (its classmethod, called for our class)."""
    return cast("list[Any]", _LIBRARY_DECODE_MANY.__func__(cls, data, trigger_metadata))


class _HostProperties(msgspec.Struct):
    """One event's system properties as the fast path reads them: the types the library's
    typed decoding accepts as they are (a bool, which it also accepts as an int, and anything
    else go to the general path below). Fields not named here are skipped; a key given twice
    counts with its last value, as in a dict."""

    PartitionKey: str | None = None
    SequenceNumber: int | None = None
    Offset: int | None = None
    EnqueuedTimeUtc: str | None = None


_HOST_PROPERTIES = msgspec.json.Decoder(list[_HostProperties])
# A batch's timestamps joined with newlines, every one in the forms of _ISO_UTC (which has
# no newline in it): one match for the batch instead of one call per event
_ISO_UTC_LINES = re.compile(f"(?:{_ISO_UTC.pattern}\n)*{_ISO_UTC.pattern}")


def _decode_multiple_events(cls: Any, data: Any, trigger_metadata: Any) -> list[Any]:
    sys_props = trigger_metadata.get("SystemPropertiesArray") if data.type == "collection_bytes" else None
    if sys_props is None:
        return _library_decode_many(cls, data, trigger_metadata)
    bodies = data.value.bytes
    raw = sys_props.value
    # The host's batch: its JSON text with no IoT Hub key (see _general_batch) and the types above.
    # Tested as one-character searches (memchr), 60x cheaper than the substring searches on the
    # host's text (0.6 us an event: its x-opt-* copies double the text, full of "-"): no backslash
    # (so no \u escape, and no key spelt with one), and no "h" (none of the host's keys, numbers,
    # times or nulls has one; a partition key or message-id may) or, failing that, no "iothub-".
    if isinstance(raw, str) and "\\" not in raw and ("h" not in raw or "iothub-" not in raw):
        try:
            typed = _HOST_PROPERTIES.decode(raw)
        except ValueError:    # msgspec's DecodeError and ValidationError; UnicodeEncodeError for a lone
            typed = None      # surrogate in the text, which json.loads takes: the general path decides
        if typed is not None and len(typed) == len(bodies):
            return _host_batch(cls, bodies, typed, trigger_metadata)
    return _general_batch(cls, data, trigger_metadata, bodies, sys_props)


def _host_batch(cls: Any, bodies: Any, props: list[_HostProperties], trigger_metadata: Any) -> list[Any]:
    """The events of a host's batch whose properties are typed as the library accepts them."""
    texts = [p.EnqueuedTimeUtc for p in props]
    times: list[datetime | None] | None = None
    if None not in texts:
        joined = "\n".join(cast("list[str]", texts))
        if _ISO_UTC_LINES.fullmatch(joined) is not None and joined.count("\n") == len(texts) - 1:
            with contextlib.suppress(ValueError):     # an impossible date somewhere: each text on its own below
                times = list(map(datetime.fromisoformat, cast("list[str]", texts)))   # as _parse_datetime reads them
    if times is None:           # each on its own, in order: the library's error at the first bad one
        parse = cls._parse_datetime
        times = [parse(t) for t in texts]
    view = _MetadataView(trigger_metadata)
    event_class = _eventhub.EventHubEvent
    events = []
    for body, p, enqueued in zip(bodies, props, times, strict=True):
        event = event_class(
            body=body, trigger_metadata=trigger_metadata, enqueued_time=enqueued, partition_key=p.PartitionKey,
            sequence_number=p.SequenceNumber, iothub_metadata={},
            offset=p.Offset)  # type: ignore[arg-type]  # the library's annotation, not its behaviour (below)
        event._trigger_metadata_pyobj = view
        events.append(event)
    return events


def _general_batch(cls: Any, data: Any, trigger_metadata: Any, bodies: Any, sys_props: Any) -> list[Any]:
    try:
        props = msgspec.json.decode(sys_props.value)   # 3x json.loads; anything it refuses: the library's way
    except (ValueError, TypeError):    # ValueError: msgspec's DecodeError, or a lone surrogate in a str
        return _library_decode_many(cls, data, trigger_metadata)
    if type(props) is not list or len(props) != len(bodies):
        return _library_decode_many(cls, data, trigger_metadata)
    # No key starts with "iothub-" unless the text says so, or spells a key with \u escapes
    # (the host sends neither for an Event Hub): then the events' IoT Hub metadata is empty
    raw = sys_props.value
    iothub_possible = not isinstance(raw, str) or "iothub-" in raw or "\\u" in raw
    events = []
    parse = cls._parse_datetime
    view = _MetadataView(trigger_metadata)
    for body, p in zip(bodies, props, strict=True):
        if type(p) is not dict:
            return _library_decode_many(cls, data, trigger_metadata)
        key, seq, offset = p.get("PartitionKey"), p.get("SequenceNumber"), p.get("Offset")
        # the library's typed decoding: str (or absent) for the key, int (or absent) for the numbers;
        # anything else is refused by it, with its own error
        if not ((key is None or isinstance(key, str)) and (seq is None or isinstance(seq, int))
                and (offset is None or isinstance(offset, int))):
            return _library_decode_many(cls, data, trigger_metadata)
        iothub = {f[7:]: v for f, v in p.items() if f.startswith("iothub-")} if iothub_possible else {}
        events.append(_eventhub.EventHubEvent(
            body=body, trigger_metadata=trigger_metadata, enqueued_time=parse(p.get("EnqueuedTimeUtc")),
            partition_key=key, sequence_number=seq, iothub_metadata=iothub,
            # EventHubEvent annotates the offset as str, but the library's own decoding passes an int
            # (typed decoding with python_type=int): we pass what it passes
            offset=offset))  # type: ignore[arg-type]  # the library's annotation, not its behaviour (above)
        events[-1]._trigger_metadata_pyobj = view     # the library's cache of `metadata`, filled ahead
    return events


class _MetadataView(Mapping[str, Any]):
    """The trigger metadata as the library's `EventHubEvent.metadata` gives it (each entry's
    `Datum.python_value`), converted when an entry is first read instead of all at once."""

    def __init__(self, trigger_metadata: Mapping[str, Any]) -> None:
        self._data = trigger_metadata
        self._converted: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._converted[key]
        except KeyError:
            value = self._converted[key] = self._data[key].python_value
            return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def install() -> bool:
    """Install the fast path; False (and a warning) when this azure-functions lacks the hook."""
    current = EventHubTriggerConverter.__dict__.get("_parse_datetime")
    if isinstance(current, classmethod) and current.__func__ is _parse_datetime:
        return True
    if not callable(_LIBRARY_PARSE) or "_parse_datetime" in EventHubTriggerConverter.__dict__:
        log.warning("azure-functions' EventHubTriggerConverter is not the one trigger_decode was written for; "
                    "its own timestamp parsing stays in use")
        return False
    # Replacing the converter's methods at run time is what this module is for; mypy refuses
    # assigning to a method (method-assign) and a classmethod of another signature (assignment).
    EventHubTriggerConverter._parse_datetime = classmethod(  # type: ignore[method-assign,assignment]  # see above
        _parse_datetime)
    if isinstance(_LIBRARY_DECODE_MANY, classmethod) and callable(getattr(_eventhub, "EventHubEvent", None)):
        EventHubTriggerConverter.decode_multiple_events = classmethod(  # type: ignore[method-assign,assignment]  # see above
            _decode_multiple_events)
    return True
