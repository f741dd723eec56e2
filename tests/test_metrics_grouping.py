"""The aggregation's fast paths (core/metrics.py) against the general ones they stand in for:
grouping by marking the keys present (`_distinct`, `_window_starts`) against numpy's sort
(np.unique). No I/O."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from txmetrics.core import metrics
from txmetrics.core.catalog import load_catalog
from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event
from txmetrics.core.metrics import Aggregates, aggregate, extract_metrics
from txmetrics.settings import BUNDLED_CATALOG


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000).flatmap(
    lambda span: st.tuples(st.just(span), st.lists(st.integers(0, span - 1), min_size=1, max_size=300))))
def test_distinct_keys_equal_numpy_unique(case: tuple[int, list[int]]) -> None:
    span, values = case
    key = np.asarray(values, dtype=np.int64)
    uniq, holder, inverse = metrics._distinct(key, span)
    expected_uniq, expected_inverse = np.unique(key, return_inverse=True)
    assert uniq.tolist() == expected_uniq.tolist()
    assert inverse.tolist() == expected_inverse.reshape(-1).tolist()
    assert key[holder].tolist() == uniq.tolist()             # each group's row is one of its own
    assert (uniq.dtype, holder.dtype, inverse.dtype) == (np.int64, np.int64, np.int64)


_US = st.integers(-2**62, 2**62)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    # times within a few windows (the usual batch: marked), and spread far apart (sorted)
    st.tuples(_US, st.lists(st.integers(0, 40 * 300_000_000), min_size=1, max_size=200)).map(
        lambda c: [min(2**62, c[0] + t) for t in c[1]]),
    st.lists(_US, min_size=1, max_size=50),
    st.lists(st.integers(-3 * 300_000_000, 3 * 300_000_000), min_size=1, max_size=50)),
    st.sampled_from([60, 300, 3600, 86400]))
def test_window_starts_equal_numpy_unique(times: list[int], window_seconds: int) -> None:
    occurred = np.asarray(times, dtype=np.int64)
    window_us = window_seconds * 1_000_000
    starts, code = metrics._window_starts(occurred, window_us)
    expected_starts, expected_code = np.unique(occurred - occurred % window_us, return_inverse=True)
    assert starts.tolist() == expected_starts.tolist()
    assert code.tolist() == expected_code.reshape(-1).tolist()


def _event(i: int, **kw: Any) -> PaymentEvent | None:
    """The valid event of these fields, or None (a processing_ms that reads as a card number)."""
    doc = {"event_id": f"e{i}", "transaction_id": "t", "occurred_at": "2026-03-01T00:01:00Z", "merchant_id": "m1",
           "amount": "10.50", "currency": "EUR", "payment_method": "card", "status": "approved", "processing_ms": 100}
    doc.update(kw)
    ev = parse_event(InboundEvent(body=json.dumps(doc).encode(), partition_id="0", sequence_number=i))
    return ev if isinstance(ev, PaymentEvent) else None


def _columns(aggs: Aggregates) -> list[Any]:
    return [value.tolist() if isinstance(value, np.ndarray) else value
            for f in dataclasses.fields(aggs)
            for value in ([getattr(getattr(aggs, f.name), b.name) for b in dataclasses.fields(metrics.Buckets)]
                          if f.name in ("pos", "neg") else [getattr(aggs, f.name)])]


_START = datetime(2026, 3, 1, tzinfo=UTC)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["card", "wallet", "bnpl", "pix"]), st.integers(0, 60),
                          st.sampled_from(["approved", "declined", "pending"]), st.sampled_from(["EUR", "USD", "BRL"]),
                          st.decimals(min_value=0, max_value=10**7, places=2),
                          st.one_of(st.none(), st.integers(0, 2**53)),
                          # mostly within a few windows; sometimes days apart (many windows)
                          st.one_of(st.integers(0, 1200), st.integers(-10**6, 10**7))),
                min_size=1, max_size=80))
def test_aggregates_equal_those_of_the_sorting_path(specs: list[tuple[Any, ...]]) -> None:
    """The whole aggregation with the fast path (keys marked when their span is small) equals,
    column by column and in order, the one with numpy's sort for every grouping."""
    cat = load_catalog(BUNDLED_CATALOG)
    events = [ev for i, (m, mer, st_, cur, amount, pms, sec) in enumerate(specs)
              if (ev := _event(i, payment_method=m, merchant_id=f"m{mer}", status=st_, currency=cur, amount=str(amount),
                               processing_ms=pms,
                               occurred_at=(_START + timedelta(seconds=sec)).isoformat().replace("+00:00", "Z")))]
    assume(events)
    rows = extract_metrics(events, cat)
    fast = aggregate(events, rows, cat)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "_dense_enough", lambda rows, span: False)
        general = aggregate(events, rows, cat)
    assert _columns(fast) == _columns(general)
