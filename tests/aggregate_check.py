"""Independent recomputation of the aggregates from dynamic_metrics (test helper)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import psycopg

from tests.helpers import scalar
from txmetrics.core.catalog import Catalog
from txmetrics.core.histogram import Histogram


def recompute_and_compare(conn: psycopg.Connection, catalog: Catalog, *, fold: bool = True) -> int:
    """Assert the aggregates equal a recomputation from dynamic_metrics: first as every
    reader sees them (aggregate_histograms_current: folded rows + pending deltas), then,
    after a fold (unless `fold` is False), in aggregate_histograms itself with no delta
    left. Returns the rows checked (at least one: a comparison of nothing proves nothing)."""
    expected: dict[tuple[str, Any, str], list[float]] = defaultdict(list)
    for metric in catalog.metrics:
        for dims in catalog.sets_for(metric):
            build = "jsonb_build_object(" + ", ".join(f"'{d}', {d}" for d in dims) + ")"
            rows = conn.execute(
                f"SELECT date_bin('5 minutes', occurred_at, timestamptz 'epoch'), {build}::text, value "
                "FROM dynamic_metrics_wide WHERE metric_name = %s", (metric.name,)).fetchall()
            for w, d, v in rows:
                expected[(metric.name, w, d)].append(v)
    normalised = {}
    for key in expected:
        d = scalar(conn, "SELECT %s::jsonb::text", (key[2],))
        normalised[(key[0], key[1], d)] = expected[key]
    checked = _compare(conn, "aggregate_histograms_current", normalised)
    if fold:
        conn.execute("SELECT txm_fold_aggregates()")
        assert conn.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (0,)
        assert _compare(conn, "aggregate_histograms", normalised) == checked
    return checked


def _compare(conn: psycopg.Connection, source: str, normalised: dict[tuple[str, Any, str], list[float]]) -> int:
    stored = conn.execute(
        "SELECT metric_name, window_start, dimensions::text, count, sum, min, max, zero_count, pos_offset, pos_counts, "
        f"neg_offset, neg_counts FROM {source} WHERE window_seconds = 300").fetchall()
    assert len(stored) == len(normalised), (source, len(stored), len(normalised))
    assert stored, f"{source} and dynamic_metrics are both empty: nothing was compared"
    for m, w, d, count, total, lo, hi, zero, po, pc, no, nc in stored:
        values = normalised[(m, w, d)]
        h = Histogram.of(values)
        assert count == h.count, (source, m, w, d)
        assert abs(float(total) - h.sum) <= 1e-9 * max(1.0, abs(h.sum)), (source, m, w, d, total, h.sum)
        assert (lo, hi, zero) == (h.min, h.max, h.zero_count), (source, m, w, d)
        assert (po, list(pc or [])) == (h.pos_offset, h.pos_counts), (source, m, w, d)
        assert (no, list(nc or [])) == (h.neg_offset, h.neg_counts), (source, m, w, d)
    return len(stored)
