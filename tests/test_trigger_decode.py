"""The converter's timestamp fast path gives the library's own answer for any input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from azure.functions.eventhub import EventHubTriggerConverter
from azure.functions.meta import Datum
from hypothesis import given, settings
from hypothesis import strategies as st

from localdev.eventhub import decode, host_payload, host_time_text, make_batch
from txmetrics import trigger_decode


def _library(value: str) -> object:
    try:
        return trigger_decode.library_parse_datetime(value)
    except ValueError as exc:
        return ("error", type(exc))


def _fast(value: str) -> object:
    trigger_decode.install()
    try:
        return EventHubTriggerConverter._parse_datetime(value)
    except ValueError as exc:
        return ("error", type(exc))


def _same(value: str) -> None:
    fast, library = _fast(value), _library(value)
    assert fast == library, value
    if isinstance(library, datetime):   # equal datetimes may still differ in tzinfo
        assert isinstance(fast, datetime) and fast.tzinfo == library.tzinfo, value


@pytest.mark.parametrize("value", [
    "2026-03-01T12:00:00Z", "2026-03-01T12:00:00.123Z", "2026-03-01T12:00:00.1234567Z",
    "2026-03-01T12:00:00.123456789012Z", "2026-03-01T12:00:00.5+00:00", "2026-03-01T12:00:00-00:00",
    "2026-12-31T23:59:59.999999Z", "2024-02-29T00:00:00Z",
    "2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-03-01T24:00:00Z",    # impossible: library's error
    "03/01/2026 12:00:00Z", "2026-03-01T12:00:00", "2026-03-01 12:00:00Z",     # other forms: library's path
    "2026-3-1T12:00:00Z", "2026-03-01T12:00:00.Z", "2026-03-01T12:00:00+01:00", "",
    "2026-03-01t12:00:00z", "\u0662\u0660\u0662\u0666-03-01T12:00:00Z",               # lower case; non-ASCII digits
])
def test_fast_path_agrees_with_the_library(value: str) -> None:
    _same(value)


@settings(max_examples=400, deadline=None)
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
       st.sampled_from(["Z", "+00:00", "-00:00", "+01:00", ""]), st.integers(0, 9),
       st.sampled_from(["T", " "]))
def test_fast_path_agrees_on_generated_timestamps(moment: datetime, zone: str, digits: int, sep: str) -> None:
    text = moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}{moment.microsecond % 997:03d}"[:digits]
    _same(text + zone)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789-T:.Z+ /", max_size=32))
def test_fast_path_agrees_on_arbitrary_text(value: str) -> None:
    _same(value)


def test_a_decoded_batch_carries_the_exact_enqueued_times() -> None:
    """The host writes them without a zone (localdev.eventhub.host_time_text): the library and the
    fast path give naive datetimes of the UTC time, as the worker's own end-to-end test expects."""
    times = [datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC), datetime(2026, 3, 2, 0, 0, 0, 1000, tzinfo=UTC)]
    events = make_batch([b"{}", b"{}"], enqueued_times=times)
    assert [e.enqueued_time for e in events] == [t.replace(tzinfo=None) for t in times]
    assert all(e.enqueued_time is not None and e.enqueued_time.tzinfo is None for e in events)


def test_the_host_s_enqueued_time_form_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's EnqueuedTimeUtc has no zone (`2026-03-01T12:00:00.123`: host_time_text cites the
    sources). The library reads it only after all twelve of its UTC formats fail (about 200 us an
    event, on the worker's event-loop thread); the fast path must read it, with the library's value."""
    trigger_decode.install()
    library = trigger_decode._LIBRARY_PARSE
    calls: list[str] = []
    monkeypatch.setattr(trigger_decode, "_LIBRARY_PARSE", lambda text: calls.append(text) or library(text))
    times = [datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC), datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC),
             datetime(2026, 3, 1, 12, 0, 1, 120, tzinfo=UTC)]
    events = decode(*host_payload([b"a", b"b", b"c"], enqueued_times=times))
    for t in times[1:]:     # one on its own too
        assert EventHubTriggerConverter._parse_datetime(host_time_text(t)) == library(host_time_text(t))
    assert calls == []
    assert [e.enqueued_time for e in events] == [library(host_time_text(t)) for t in times]
    assert [e.enqueued_time for e in events] == [t.replace(tzinfo=None) for t in times]


def test_the_fast_path_is_what_the_function_app_uses() -> None:
    import function_app  # noqa: F401  (installs the fast path at import, as in the worker)

    assert EventHubTriggerConverter._parse_datetime.__func__ is trigger_decode._parse_datetime


def test_an_unexpected_azure_functions_release_is_left_alone(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Without the library internals it was written for, install() patches nothing and says so."""
    assert trigger_decode.install() is True                          # installed (idempotent)
    monkeypatch.delattr(EventHubTriggerConverter, "_parse_datetime")  # as the library ships it
    monkeypatch.setattr(trigger_decode, "_LIBRARY_PARSE", None)       # a release without the private base
    assert trigger_decode.install() is False
    assert "_parse_datetime" not in EventHubTriggerConverter.__dict__
    assert "its own timestamp parsing stays in use" in caplog.text
    monkeypatch.undo()
    assert EventHubTriggerConverter._parse_datetime.__func__ is trigger_decode._parse_datetime


def _events(decode: Any, datum: Any, metadata: Any) -> object:
    try:
        return [(type(e), e.get_body(), e.partition_key, e.sequence_number, e.offset, e.enqueued_time,
                 e.enqueued_time.tzinfo if isinstance(e.enqueued_time, datetime) else None, e.iothub_metadata,
                 dict(e.metadata or {})) for e in decode(datum, metadata)]
    except Exception as exc:   # the library's error, which the fast path must give too
        return ("error", type(exc))


_PROPERTY = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.booleans(), st.text(max_size=8),
                      st.floats(allow_nan=False), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=20), _PROPERTY, _PROPERTY, _PROPERTY,
                          st.dictionaries(st.sampled_from(["iothub-connection-device-id", "iothub-enqueuedtime",
                                                           "x-opt-offset"]), st.text(max_size=5), max_size=2)),
                max_size=6),
       st.booleans(), st.booleans())
def test_batch_fast_path_agrees_with_the_library(items: list[tuple[Any, ...]], missing_key: bool,
                                                 escaped_keys: bool) -> None:
    """Bodies and system properties of any kind: the same events, or the same error, as the library;
    also with IoT Hub keys spelt with \\u escapes."""
    trigger_decode.install()
    props = []
    for _body, key, seq, offset, extra in items:
        p: dict[str, Any] = {"SequenceNumber": seq, "Offset": offset, "EnqueuedTimeUtc": "2026-03-01T12:00:00.5Z",
                             **extra}
        if not missing_key:
            p["PartitionKey"] = key
        props.append(p)
    datum = Datum(type="collection_bytes", value=SimpleNamespace(bytes=[b for b, *_ in items]))
    text = json.dumps(props)
    if escaped_keys:
        text = text.replace('"iothub-', '"\\u0069othub-')
    metadata = {"SystemPropertiesArray": Datum(type="json", value=text),
                "PartitionContext": Datum(type="json", value=json.dumps({"PartitionId": "1"}))}
    fast = _events(lambda d, m: EventHubTriggerConverter.decode_multiple_events(d, m), datum, metadata)
    library = _events(lambda d, m: trigger_decode._LIBRARY_DECODE_MANY.__func__(EventHubTriggerConverter, d, m),
                      datum, metadata)
    assert fast == library


def test_the_batch_fast_path_is_installed_and_used_by_make_batch() -> None:
    trigger_decode.install()
    assert EventHubTriggerConverter.decode_multiple_events.__func__ is trigger_decode._decode_multiple_events
    events = make_batch([b"a", b"b"], partition_id="3", first_sequence=7)
    assert [(e.get_body(), e.sequence_number, e.offset) for e in events] == [(b"a", 7, 7 * 512), (b"b", 8, 8 * 512)]


class _UnreadableDatum(Datum):
    """A datum whose conversion fails: reading it through `metadata` raises."""

    @property
    def python_value(self) -> Any:
        raise AssertionError("SystemPropertiesArray was converted")


def test_the_fast_path_converts_only_the_metadata_read() -> None:
    """The function reads PartitionContext alone; the batch's system properties (decoded once by
    the fast path itself) are not converted a second time by `metadata`, and every event sees
    the same entries as the library's eager dictionary would give."""
    trigger_decode.install()
    import function_app

    props = json.dumps([{"SequenceNumber": n, "Offset": n, "EnqueuedTimeUtc": "2026-03-01T12:00:00Z"} for n in (1, 2)])
    metadata = {"SystemPropertiesArray": _UnreadableDatum(type="json", value=props),
                "PartitionContext": Datum(type="json", value=json.dumps({"PartitionId": "5"}))}
    datum = Datum(type="collection_bytes", value=SimpleNamespace(bytes=[b"a", b"b"]))
    events = EventHubTriggerConverter.decode_multiple_events(datum, metadata)
    assert function_app.partition_id_of(events) == "5"
    assert [e.metadata["PartitionContext"] for e in events] == [{"PartitionId": "5"}] * 2
    assert sorted(events[1].metadata) == ["PartitionContext", "SystemPropertiesArray"]
    with pytest.raises(AssertionError, match="was converted"):
        events[0].metadata["SystemPropertiesArray"]


_HOST_FORM_TIME = st.builds(
    lambda moment, zone, digits: moment.strftime("%Y-%m-%dT%H:%M:%S")
    + ("." + f"{moment.microsecond:06d}{moment.microsecond % 997:03d}"[:digits] if digits else "") + zone,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.sampled_from(["Z", "+00:00", "-00:00", ""]), st.integers(0, 9))
_ODD_TIME = st.one_of(
    st.sampled_from(["2026-02-30T00:00:00Z", "2026-13-01T00:00:00.5Z", "2026-03-01T24:00:00Z",   # impossible
                     "2026-03-01 12:00:00Z", "2026-03-01T12:00:00+01:00", "2026-03-01T12:00:00",  # other forms
                     "03/01/2026 12:00:00", "2026-03-01T12:00:00Z\n2026-03-01T12:00:00Z", "", "absent",
                     "\u0662\u0660\u0662\u0666-03-01T12:00:00Z"]),
    st.none(), st.integers(0, 3))
# an event as the host sends it: typed properties, some absent or null
_HOST_ITEM = st.tuples(st.binary(max_size=8),
                       st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6),
                                 st.just("absent")),
                       st.one_of(st.integers(-2**70, 2**70), st.none(), st.just("absent")),
                       st.one_of(st.integers(-2**70, 2**70), st.none(), st.just("absent")),
                       _HOST_FORM_TIME, st.just({}))
# one that is not: the host's with one field of any type, an odd timestamp, or keys given twice
# (the last value counts)
_ODD_ITEM = st.tuples(_HOST_ITEM, st.one_of(
    st.tuples(st.sampled_from([1, 2, 3]), _PROPERTY), st.tuples(st.just(4), _ODD_TIME),
    st.tuples(st.just(5), st.dictionaries(st.sampled_from(["x-opt-offset", "SequenceNumber", "PartitionKey", "Other"]),
                                          _PROPERTY, min_size=1, max_size=2)))
).map(lambda pair: (*pair[0][:pair[1][0]], pair[1][1], *pair[0][pair[1][0] + 1:]))


@settings(max_examples=600, deadline=None)
@given(st.lists(_HOST_ITEM, max_size=8), st.one_of(st.none(), st.tuples(st.integers(0, 8), _ODD_ITEM)),
       st.booleans(), st.sampled_from([0, 0, 0, 1, -1]))
def test_host_batches_agree_with_the_library(items: list[tuple[Any, ...]], odd: tuple[int, Any] | None,
                                            same_time: bool, extra_bodies: int) -> None:
    """Batches in the host's form (typed properties, timestamps shared or not, read at once) and
    near it (other types, absent or repeated keys, impossible or other timestamps, a count of
    bodies that differs): the same events, or the same error, as the library."""
    trigger_decode.install()
    if same_time and items:      # one timestamp for the whole batch (the host's are to the millisecond)
        items = [(*item[:4], items[0][4], item[5]) for item in items]
    if odd is not None:
        items = [*items[:odd[0]], odd[1], *items[odd[0]:]]
    _agrees(_host_batch(items, extra_bodies))


def _host_batch(items: list[tuple[Any, ...]], extra_bodies: int = 0) -> tuple[Datum, dict[str, Datum]]:
    """The host's payload for the items (body, key, sequence number, offset, time, more keys);
    "absent" leaves a key out."""
    texts = []
    for _body, key, seq, offset, when, extra in items:
        fields = [("PartitionKey", key), ("SequenceNumber", seq), ("Offset", offset), ("EnqueuedTimeUtc", when)]
        # keys given twice (extra) come last: the last value counts
        fields += list(extra.items())
        texts.append("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in fields if v != "absent") + "}")
    bodies = [b for b, *_ in items]
    bodies = [*bodies, b"x"] if extra_bodies > 0 else bodies[:-1] if extra_bodies < 0 and bodies else bodies
    datum = Datum(type="collection_bytes", value=SimpleNamespace(bytes=bodies))
    return datum, {"SystemPropertiesArray": Datum(type="json", value="[" + ", ".join(texts) + "]"),
                   "PartitionContext": Datum(type="json", value=json.dumps({"PartitionId": "1"}))}


def _agrees(payload: tuple[Datum, dict[str, Datum]]) -> None:
    datum, metadata = payload
    fast = _events(lambda d, m: EventHubTriggerConverter.decode_multiple_events(d, m), datum, metadata)
    library = _events(lambda d, m: trigger_decode._LIBRARY_DECODE_MANY.__func__(EventHubTriggerConverter, d, m),
                      datum, metadata)
    assert fast == library


@pytest.mark.parametrize("odd", ["2026-02-30T00:00:00Z", "2026-13-01T00:00:00.5Z", "2026-03-01T24:00:00Z",
                                 "2026-03-01 12:00:00Z", "2026-03-01T12:00:00+01:00", "2026-03-01T12:00:00-01:00",
                                 "2026-03-01T12:00:00", "2026-03-01T12:00:00.Z", "2026-03-01t12:00:00z",
                                 "2026-03-01T12:00:00Z\n2026-03-01T12:00:00Z", "", None, 0, 7, "absent",
                                 "20260301T120000Z", "2026-03-01T12Z", "2026-03-01T12:00Z", "2026-03-01T12:00:00,5Z",
                                 "2026-W09-7T12:00:00Z", "\u0662\u0660\u0662\u0666-03-01T12:00:00Z"])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_one_odd_timestamp_in_a_host_batch(odd: object, position: int) -> None:
    """A batch of the host's timestamps with one that is not in its forms: the library's answer."""
    items = [(b"a", None, 1, 512, "2026-03-01T12:00:00.123Z", {}), (b"b", "k", 2, 1024, "2026-03-01T12:00:00.123Z", {}),
             (b"c", "absent", 3, "absent", "2026-03-01T12:00:01.1234567Z", {})]
    items[position] = (*items[position][:4], odd, {})
    _agrees(_host_batch(items))


@pytest.mark.parametrize("text", ['[{"PartitionKey": "\ud800", "SequenceNumber": 1}]',   # read by the library
                                  '[{"PartitionKey": "k", "EnqueuedTimeUtc": "2026-03-01T12:00:00Z\udfff"}]'])
def test_a_lone_surrogate_in_the_metadata_text(text: str) -> None:
    """A str the library's json.loads reads but which is not UTF-8 (msgspec cannot encode it): the
    library's events, not msgspec's UnicodeEncodeError."""
    trigger_decode.install()
    datum = Datum(type="collection_bytes", value=SimpleNamespace(bytes=[b"a"]))
    _agrees((datum, {"SystemPropertiesArray": Datum(type="json", value=text)}))


def test_the_host_s_batch_takes_the_typed_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """make_batch's batches (the host's form) are read by _host_batch, with the library's values."""
    trigger_decode.install()
    taken = []
    host_batch = trigger_decode._host_batch
    monkeypatch.setattr(trigger_decode, "_host_batch", lambda *a: taken.append(1) or host_batch(*a))
    times = [datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)] * 2 + [datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)]
    events = make_batch([b"a", b"b", b"c"], first_sequence=5, enqueued_times=times)
    assert taken == [1]
    assert [(e.sequence_number, e.offset, e.enqueued_time, e.partition_key, e.iothub_metadata) for e in events] == [
        (5 + i, (5 + i) * 512, t.replace(tzinfo=None), None, {}) for i, t in enumerate(times)]


@pytest.mark.parametrize("keys", [None, ["k", None, "merchant-7"], ["iothub-x", "k", None], ['say "hi"', "a\\b", "\n"],
                                  ["\u00e9t\u00e9", "\U0001f600", "h"]])
@pytest.mark.parametrize("message_ids", [None, ["6f1c0a4e-1d2b-4c3a-9f00-0123456789ab", None, "hello"]])
def test_the_extension_s_full_system_properties_agree_with_the_library(keys: list[str | None] | None,
                                                                       message_ids: list[str | None] | None) -> None:
    """host_payload's objects as the Event Hubs extension builds them (message-id, x-opt-partition-key,
    x-opt-sequence-number, x-opt-offset, x-opt-enqueued-time, then the binding keys with OffsetString):
    the library's events, with partition keys that hold an "h", "iothub-", escapes or non-ASCII text."""
    times = [datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC), datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC),
             datetime(2026, 3, 1, 12, 0, 1, 120, tzinfo=UTC)]
    payload = host_payload([b"a", b"b", b"c"], first_sequence=2**40, enqueued_times=times, partition_keys=keys,
                           message_ids=message_ids)
    text = payload[1]["SystemPropertiesArray"].value
    assert '"x-opt-enqueued-time":"2026-03-01T12:00:00.123+00:00"' in text and '"OffsetString":"' in text
    _agrees(payload)
    trigger_decode.install()
    events = decode(*payload)
    assert [(e.sequence_number, e.offset, e.enqueued_time, e.partition_key) for e in events] == [
        (2**40 + i, (2**40 + i) * 512, t.replace(tzinfo=None), keys[i] if keys else None) for i, t in enumerate(times)]


@pytest.mark.parametrize("keys", [None, ["merchant-7", "k"], ["h\u00e9", "x"]])
@pytest.mark.parametrize("older_extension", [False, True])
def test_the_extension_s_full_system_properties_take_the_typed_path(monkeypatch: pytest.MonkeyPatch,
                                                                    keys: list[str] | None,
                                                                    older_extension: bool) -> None:
    """The extra keys do not turn the host's batch away from _host_batch: neither 6.5.2+'s (x-opt-offset
    a string, OffsetString) nor 6.0-6.5.1's (x-opt-offset a number, no OffsetString)."""
    trigger_decode.install()
    taken = []
    host_batch = trigger_decode._host_batch
    monkeypatch.setattr(trigger_decode, "_host_batch", lambda *a: taken.append(1) or host_batch(*a))
    datum, metadata = host_payload([b"a", b"b"], first_sequence=9, partition_keys=keys)
    if older_extension:
        props = json.loads(metadata["SystemPropertiesArray"].value)
        for p in props:
            p["x-opt-offset"] = int(p.pop("OffsetString"))
        metadata["SystemPropertiesArray"] = Datum(type="json", value=json.dumps(props, separators=(",", ":"),
                                                                                ensure_ascii=False))
    _agrees((datum, metadata))
    assert taken == [1]
