"""The pipeline's day split and claim order (pipeline.events_by_day, claim_order): the usual
batch of one UTC day taken as it is, against the event-by-event split and the order by
identity it stands for. No I/O."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from txmetrics.core.events import PaymentEvent
from txmetrics.core.naming import US_PER_DAY
from txmetrics.pipeline import _SortedBatch, claim_order, events_by_day, events_by_day_each

_DAY = st.integers(-3, 3).map(lambda d: 20_500 + d)         # a few days around 2026, and their edges
_TIME = st.one_of(st.tuples(_DAY, st.integers(0, US_PER_DAY - 1)).map(lambda t: t[0] * US_PER_DAY + t[1]),
                  st.tuples(_DAY, st.sampled_from([0, 1, US_PER_DAY - 1])).map(lambda t: t[0] * US_PER_DAY + t[1]),
                  st.integers(-US_PER_DAY, US_PER_DAY))       # around 1970, before it too
_BATCH = st.one_of(
    st.lists(_TIME, max_size=40),
    # one day (the usual batch), with a last event perhaps a microsecond into the next
    st.tuples(_DAY, st.lists(st.integers(0, US_PER_DAY - 1), min_size=1, max_size=40), st.booleans()).map(
        lambda t: [t[0] * US_PER_DAY + u for u in t[1]] + ([(t[0] + 1) * US_PER_DAY] if t[2] else [])))


def _events(times: list[int]) -> list[PaymentEvent]:
    return cast(list[PaymentEvent], [SimpleNamespace(event_id=f"e{i}", occurred_us=us) for i, us in enumerate(times)])


@settings(max_examples=400, deadline=None)
@given(_BATCH, st.data())
def test_days_and_claim_order_equal_the_event_by_event_ones(times: list[int], data: st.DataObject) -> None:
    events = _events(times)
    by_day = events_by_day(events)
    expected = events_by_day_each(events)
    assert list(by_day.items()) == list(expected.items())
    keys = data.draw(st.lists(st.integers(-2**63, 2**63 - 1), min_size=len(events), max_size=len(events)))
    batch = _SortedBatch(valid=events, valid_items=[], rejections=[], batch_duplicates=0, by_day=by_day,
                         dimension_keys=keys)
    ordered, ordered_keys = claim_order(batch)
    key_of = {id(ev): k for ev, k in zip(events, keys, strict=True)}
    expected_order = [ev for d in sorted(expected) for ev in expected[d]]
    assert [id(ev) for ev in ordered] == [id(ev) for ev in expected_order]
    assert ordered_keys == [key_of[id(ev)] for ev in expected_order]
