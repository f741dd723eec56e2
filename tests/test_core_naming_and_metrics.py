"""File naming, windows, metric rows and aggregation of a batch. No I/O."""

from __future__ import annotations

import json
from datetime import date

from txmetrics.core.catalog import load_catalog
from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event
from txmetrics.core.metrics import aggregate, extract_metrics
from txmetrics.core.naming import date_folder, raw_file_path, window_start_us
from txmetrics.settings import BUNDLED_CATALOG


def test_paths_are_hive_style_zero_padded_and_deterministic() -> None:
    assert date_folder(date(2026, 3, 7)) == "raw_events/yyyy=2026/mm=03/dd=07"
    p = raw_file_path("3", 1234, date(2026, 3, 7))
    assert p == "raw_events/yyyy=2026/mm=03/dd=07/part-3-seq-00000000000000001234-20260307.parquet"
    assert raw_file_path("3", 1234, date(2026, 3, 7)) == p
    assert raw_file_path("3", 1235, date(2026, 3, 7)) != p
    assert raw_file_path("a/b", 1, date(2026, 3, 7)).count("/") == 4


def test_windows_align_to_five_minutes() -> None:
    us = 1_772_323_199_999_999  # 2026-02-28T23:59:59.999999Z
    assert window_start_us(us, 300) == 1_772_322_900_000_000


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
    assert sorted(zip(rows.event_id, rows.metric_name, rows.value, strict=True)) == [
        ("e1", "amount", 10.5), ("e1", "approved", 1.0), ("e1", "processing_ms", 100.0),
        ("e2", "amount", 4.0), ("e2", "approved", 0.0),
        ("e3", "amount", 10.5), ("e3", "approved", 1.0), ("e3", "processing_ms", 100.0),
    ]
    aggs = {(a.metric_name, a.dimensions): a for a in aggregate(events, rows, cat)}
    total = aggs[("approved", "{}")]
    assert (total.count, total.sum) == (3, 2.0)
    eur = aggs[("amount", '{"currency":"EUR"}')]
    assert (eur.count, eur.sum, eur.min, eur.max) == (2, 14.5, 4.0, 10.5)
    assert ("amount", "{}") not in aggs   # amounts never added across currencies
    by_status = aggs[("approved", '{"payment_method":"card","status":"declined"}')]
    assert (by_status.count, by_status.sum) == (1, 0.0)
    assert sum(by_status.pos_counts) + by_status.zero_count == 1
    assert all(a.window_seconds == 300 and a.window_start_us % 300_000_000 == 0 for a in aggs.values())
