"""File naming, windows, metric rows and aggregation of a batch. No I/O."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from txmetrics.core.catalog import load_catalog, parse_catalog
from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event
from txmetrics.core.histogram import Histogram
from txmetrics.core.metrics import aggregate, dimension_key, dimension_keys, dimension_tuple, extract_metrics
from txmetrics.core.naming import date_folder, raw_file_path
from txmetrics.settings import BUNDLED_CATALOG


def test_paths_are_hive_style_zero_padded_and_deterministic() -> None:
    assert date_folder(date(2026, 3, 7)) == "raw_events/yyyy=2026/mm=03/dd=07"
    p = raw_file_path("3", 1234, date(2026, 3, 7))
    assert p == "raw_events/yyyy=2026/mm=03/dd=07/part-3-seq-00000000000000001234-20260307.parquet"
    assert raw_file_path("3", 1234, date(2026, 3, 7)) == p
    assert raw_file_path("3", 1235, date(2026, 3, 7)) != p
    assert raw_file_path("a/b", 1, date(2026, 3, 7)).count("/") == 4


def _event(i: int, **kw: object) -> PaymentEvent:
    doc = {"event_id": f"e{i}", "transaction_id": "t", "occurred_at": "2026-03-01T00:01:00Z", "merchant_id": "m1",
           "amount": "10.50", "currency": "EUR", "payment_method": "card", "status": "approved", "processing_ms": 100}
    doc.update(kw)
    ev = parse_event(InboundEvent(body=json.dumps(doc).encode(), partition_id="0", sequence_number=i))
    assert isinstance(ev, PaymentEvent)
    return ev


def test_metric_rows_and_aggregates_of_a_small_batch() -> None:
    cat = load_catalog(BUNDLED_CATALOG)
    events = [_event(1), _event(2, status="declined", amount=4, processing_ms=None), _event(3, currency="USD")]
    rows = extract_metrics(events, cat)
    assert sorted((events[e].event_id, rows.metric_names[m], v)
                  for e, m, v in zip(rows.event_index, rows.metric_index, rows.value, strict=True)) == [
        ("e1", "amount", 10.5), ("e1", "approved", 1.0), ("e1", "processing_ms", 100.0),
        ("e2", "amount", 4.0), ("e2", "approved", 0.0),
        ("e3", "amount", 10.5), ("e3", "approved", 1.0), ("e3", "processing_ms", 100.0),
    ]
    aggs = {(a.metric_name, a.dimensions): a for a in aggregate(events, rows, cat).rows()}
    total = aggs[("approved", "{}")]
    assert (total.count, total.sum) == (3, 2.0)
    eur = aggs[("amount", '{"currency":"EUR"}')]
    assert (eur.count, eur.sum, eur.min, eur.max) == (2, 14.5, 4.0, 10.5)
    assert ("amount", "{}") not in aggs   # amounts never added across currencies
    by_status = aggs[("approved", '{"payment_method":"card","status":"declined"}')]
    assert (by_status.count, by_status.sum) == (1, 0.0)
    assert sum(by_status.pos_counts) + by_status.zero_count == 1
    assert all(a.window_seconds == 300 and a.window_start_us % 300_000_000 == 0 for a in aggs.values())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["card", "wallet", "bnpl"]), st.sampled_from(["m1", "m2", "m3", "m4"]),
                          st.sampled_from(["approved", "declined"]), st.sampled_from(["EUR", "USD"]),
                          st.decimals(min_value=0, max_value=10**6, places=2),
                          st.one_of(st.none(), st.integers(0, 10**7)), st.integers(0, 3 * 86400 - 1)),
                min_size=1, max_size=60))
def test_aggregates_equal_a_recomputation_group_by_group(specs: list[tuple[Any, ...]]) -> None:
    """Every group the vectorised aggregation makes equals Histogram.of over the values an
    independent grouping (plain Python, event by event) puts in it, and no group is missing.
    Groups are compared by what they mean (the 5-minute window the event's time falls in, the
    dimension values), not by how the code spells its keys."""
    cat = load_catalog(BUNDLED_CATALOG)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = [_event(i, payment_method=m, merchant_id=mer, status=st_, currency=cur, amount=str(amount),
                     processing_ms=pms, occurred_at=(start + timedelta(seconds=sec)).isoformat().replace("+00:00", "Z"))
              for i, (m, mer, st_, cur, amount, pms, sec) in enumerate(specs)]
    rows = extract_metrics(events, cat)
    expected: dict[tuple[str, datetime, tuple[tuple[str, Any], ...]], list[float]] = defaultdict(list)
    exact_sums: dict[tuple[str, datetime, tuple[tuple[str, Any], ...]], Decimal] = defaultdict(Decimal)
    for ev_i, mi, value in zip(rows.event_index, rows.metric_index, rows.value, strict=True):
        ev, metric = events[ev_i], cat.metrics[mi]
        sec = specs[ev_i][-1]
        window = start + timedelta(seconds=sec - sec % 300)      # start is midnight: windows start on the 5 minutes
        # the number the event wrote: the amount's decimal text, processing_ms's integer, the flag's 0 or 1
        written = Decimal(int(value)) if metric.kind == "flag" else Decimal(str(ev.document[metric.source or ""]))
        for dims in cat.sets_for(metric):
            key = (metric.name, window, tuple(sorted((d, getattr(ev, d)) for d in dims)))
            expected[key].append(value)
            exact_sums[key] += written
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    got = {(a.metric_name, epoch + timedelta(microseconds=a.window_start_us),
            tuple(sorted(json.loads(a.dimensions).items()))): a for a in aggregate(events, rows, cat).rows()}
    assert set(got) == set(expected)
    for key, values in expected.items():
        h, a = Histogram.of(values), got[key]
        assert (a.count, a.min, a.max, a.zero_count) == (h.count, h.min, h.max, h.zero_count), key
        assert a.sum == exact_sums[key], key             # exact: no double in between
        assert (a.pos_offset, list(a.pos_counts)) == (h.pos_offset, h.pos_counts), key
        assert (a.neg_offset, list(a.neg_counts)) == (h.neg_offset, h.neg_counts), key


@pytest.mark.parametrize("n_dims", [5, 6, 7])
def test_a_wide_dimension_set_of_many_values_keeps_every_event_in_its_own_slice(n_dims: int) -> None:
    """An independent audit: a set of four dimensions plus a metric's `by` of two, a thousand
    values each, over many windows, made the batch's int64 group key wrap around: 923 of
    1,000 events were counted in slices nobody sent. Every event is here its own slice."""
    dims = [f"d{k}" for k in range(n_dims)]
    cat = parse_catalog({"metrics": [{"name": "approved", "kind": "flag", "when": {"field": "status", "equals": "approved"},
                                      "by": dims[4:]}], "dimension_sets": [dims[:4]]})
    start = datetime(2026, 3, 1, tzinfo=UTC)
    coprime = (1, 3, 7, 9, 11, 13, 17)           # to 1,000: each dimension has 1,000 values in the batch
    events = [_event(i, **{d: f"{d}-{(i * coprime[k]) % 1000}" for k, d in enumerate(dims)},
                     occurred_at=(start + timedelta(seconds=i * 67)).isoformat())
              for i in range(1000)]
    got = sorted((a.window_start_us, a.dimensions, a.count) for a in aggregate(events, extract_metrics(events, cat), cat).rows())
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    expected = sorted((((start - epoch) // timedelta(microseconds=1)) + (i * 67 - i * 67 % 300) * 1_000_000,
                       json.dumps({d: events[i].document[d] for d in sorted(dims)}, separators=(",", ":")), 1)
                      for i in range(1000))
    assert got == expected


def test_optional_column_dimensions_slice_absent_values_apart() -> None:
    """country and event_type may be absent: an absent value is its own slice (null in the
    JSON), never merged with a present one, and each slice counts exactly its events."""
    cat = parse_catalog({"metrics": [{"name": "approved", "kind": "flag", "when": {"field": "status", "equals": "approved"}}],
                         "dimension_sets": [["country"], ["event_type", "status"]]})
    specs = [("DE", None, "approved"), (None, "capture", "declined"), ("DE", "capture", "approved"),
             (None, None, "approved"), ("FR", None, "declined"), (None, None, "approved")]
    events = [_event(i, **({"country": c} if c else {}), **({"event_type": t} if t else {}), status=s_)
              for i, (c, t, s_) in enumerate(specs)]
    got = {(a.dimensions, a.count, a.sum) for a in aggregate(events, extract_metrics(events, cat), cat).rows()}
    assert got == {
        ('{"country":"DE"}', 2, 2.0), ('{"country":null}', 3, 2.0), ('{"country":"FR"}', 1, 0.0),
        ('{"event_type":null,"status":"approved"}', 3, 3.0), ('{"event_type":"capture","status":"declined"}', 1, 0.0),
        ('{"event_type":"capture","status":"approved"}', 1, 1.0), ('{"event_type":null,"status":"declined"}', 1, 0.0),
    }


def test_a_batch_gets_each_event_s_own_dimension_key() -> None:
    """dimension_keys (the batch path) keys each event as dimension_key(dimension_tuple(event))
    does, with and without dimensions beyond the typed columns, and keeps one tuple per key."""
    events = [_event(1), _event(2, country="DE"), _event(3, attributes={"channel": "web"}), _event(4, country="DE"),
              _event(5, event_type="refund", payment_method="wallet")]
    for extra in ((), ("attributes.channel",)):
        keys, tuples = dimension_keys(events, extra)
        assert keys == [dimension_key(dimension_tuple(ev, extra)) for ev in events]
        assert tuples == {dimension_key(dimension_tuple(ev, extra)): dimension_tuple(ev, extra) for ev in events}
        assert len(set(keys)) == (3 if not extra else 4)      # 1 and 3 differ by the channel only


def test_extra_dimension_values_equal_in_python_but_not_in_json_are_apart_within_and_across_batches() -> None:
    """True and 1 (equal and of equal hash in Python), 1 and "1", null and "None": different
    JSON, so different slices, in one batch and when the slices' names are memoised from an
    earlier batch holding the other value."""
    cat = parse_catalog({"metrics": [{"name": "approved", "kind": "flag", "when": {"field": "status", "equals": "approved"}}],
                         "dimension_sets": [["attributes.flag"]]})
    values: list[Any] = [True, 1, "1", None, "None", False, 0, 1.5]

    def slices(batch: list[Any]) -> set[tuple[str, int]]:
        events = [_event(i, attributes={} if v is None else {"flag": v}) for i, v in enumerate(batch)]
        return {(a.dimensions, a.count) for a in aggregate(events, extract_metrics(events, cat), cat).rows()}

    expected_one = {'{"attributes.flag":true}', '{"attributes.flag":1}', '{"attributes.flag":"1"}',
                    '{"attributes.flag":null}', '{"attributes.flag":"None"}', '{"attributes.flag":false}',
                    '{"attributes.flag":0}', '{"attributes.flag":"1.5"}'}
    assert slices(values) == {(name, 1) for name in expected_one}
    for first, second in [(1, True), (True, 1), (0, False), (False, 0), ("1", 1)]:
        assert {name for name, _ in slices([first])} == {json.dumps({"attributes.flag": first}, separators=(",", ":"))}
        assert slices([second, second]) == {(json.dumps({"attributes.flag": second}, separators=(",", ":")), 2)}


_AMOUNT_TEXT = st.builds(lambda units, places, as_text: (str if as_text else Decimal)(
    Decimal(units).scaleb(-places) if places else Decimal(units)),
    st.one_of(st.integers(0, 10**16), st.integers(999_999_000_000_000, 1_000_001_000_000_000),
              st.integers(0, 10**21 - 1)),
    st.integers(0, 9), st.booleans())


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_AMOUNT_TEXT, st.one_of(st.none(), st.integers(0, 2**53), st.integers(0, 10**4))),
                min_size=1, max_size=40))
def test_exact_units_from_doubles_equal_the_general_path(values: list[tuple[Any, int | None]]) -> None:
    """The units read from the doubles of validated amounts and processing times (below their
    bounds) are those the general path reads from the numbers as written; above, the same rows
    are irregular at the same positions."""
    from txmetrics.core import metrics as m

    cat = load_catalog(BUNDLED_CATALOG)
    events = []
    for i, (amount, processing_ms) in enumerate(values):
        doc = {"event_id": f"e{i}", "transaction_id": "t", "occurred_at": "2026-03-01T00:01:00Z", "merchant_id": "m1",
               "amount": "AMOUNT", "currency": "EUR", "payment_method": "card", "status": "approved",
               "processing_ms": processing_ms}
        # the amount as written: a decimal string, or a JSON number with its digits (not a float's)
        literal = json.dumps(amount) if isinstance(amount, str) else str(amount)
        body = json.dumps(doc).replace('"AMOUNT"', literal).encode()
        event = parse_event(InboundEvent(body=body, partition_id="0", sequence_number=i))
        if isinstance(event, PaymentEvent):
            events.append(event)
    assume(events)
    rows = extract_metrics(events, cat)
    metric_index = np.asarray(rows.metric_index, dtype=np.int64)
    for mi, metric in enumerate(cat.metrics):
        if metric.kind == "flag":
            continue
        sel = np.flatnonzero(metric_index == mi)
        ev_sel = np.asarray(rows.event_index, dtype=np.int64)[sel]
        val_sel = np.asarray(rows.value, dtype=np.float64)[sel]
        fast, fast_irregular = m._exact_units(metric, events, ev_sel, val_sel)
        general, general_irregular = m._exact_units_of(metric, events, ev_sel)
        assert fast.tolist() == general.tolist(), metric.name
        assert fast_irregular == general_irregular, metric.name
