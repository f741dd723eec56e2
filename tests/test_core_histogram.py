"""Mergeable histograms: accuracy, mergeability, zero and negative values. No I/O."""

from __future__ import annotations

import numpy as np
import pytest

from txmetrics.core import histogram
from txmetrics.core.histogram import Histogram

QS = (0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999)


def exact(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q, method="lower"))


@pytest.mark.parametrize("dist", ["lognormal", "pareto", "uniform_wide", "with_zeros_and_negatives"])
def test_quantiles_within_one_percent(dist: str) -> None:
    rng = np.random.default_rng(11)
    values = {
        "lognormal": rng.lognormal(3.5, 1.2, 50_000),
        "pareto": (rng.pareto(1.3, 50_000) + 1) * 20,
        "uniform_wide": 10 ** rng.uniform(-3, 7, 50_000),
        "with_zeros_and_negatives": np.concatenate([rng.normal(0, 100, 30_000), np.zeros(5_000)]),
    }[dist]
    h = Histogram.of(values)
    assert h.count == len(values)
    for q in QS:
        est = h.quantile(q)
        ex = exact(values, q)
        assert est is not None
        assert abs(est - ex) <= 0.01 * abs(ex) + 1e-12, (q, est, ex)


@pytest.mark.parametrize("top", [1e18, 2.0**53])
def test_quantiles_within_one_percent_up_to_what_the_contract_fields_carry(top: float) -> None:
    """Amounts below 10^18 and processing_ms up to 2^53 are valid: their quantiles keep the
    1% bound too (keys were clamped at 2^40, 1.1e12, before)."""
    values = 10 ** np.random.default_rng(5).uniform(11, np.log10(top), 5_000)
    h = Histogram.of(values)
    for q in QS:
        est, ex = h.quantile(q), exact(values, q)
        assert est is not None and abs(est - ex) <= 0.01 * ex, (q, est, ex)


def test_merge_equals_the_histogram_of_the_union() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.lognormal(mu, 1.0, 2_000) for mu in (1, 3, 5, 7)]
    merged = Histogram()
    for p in parts:
        merged = merged.merge(Histogram.of(p))
    whole = Histogram.of(np.concatenate(parts))
    assert (merged.pos_offset, merged.pos_counts) == (whole.pos_offset, whole.pos_counts)
    assert merged.count == whole.count and merged.min == whole.min and merged.max == whole.max
    assert merged.sum == pytest.approx(whole.sum, rel=1e-12)


def test_bucket_scheme_and_error_bound() -> None:
    assert histogram.RELATIVE_ERROR < 0.0055
    for v in (0.001, 1.0, 1.5, 100.0, 12345.678):
        k = int(histogram.bucket_keys(np.array([v]))[0])
        assert histogram.BASE ** (k - 1) < v <= histogram.BASE**k * (1 + 1e-12)
        assert abs(histogram.bucket_estimate(k) - v) / v <= histogram.RELATIVE_ERROR + 1e-12


def test_empty_and_single_value() -> None:
    assert Histogram().quantile(0.5) is None
    h = Histogram.of([42.0])
    assert h.quantile(0.0) == h.quantile(1.0) == 42.0
    with pytest.raises(ValueError):
        h.quantile(1.5)


def test_merge_all_is_the_merge_one_by_one() -> None:
    """The daily rollup merges a day's windows at once (histogram.merge_all); it must give
    exactly what merging them one by one from an empty histogram gives: counts, bucket
    offsets, the float sum in the same order, min and max. Windows with no positive or no
    negative values, empty ones and ones spread over 29 decades are among them."""
    from txmetrics.core.histogram import merge_all

    rng = np.random.default_rng(7)
    windows = [Histogram.of([]), Histogram.of([0.0, -0.0])]
    for i in range(60):
        scale = 10.0 ** rng.integers(-12, 17)
        values = rng.normal(0, scale, size=int(rng.integers(1, 40)))
        if i % 3 == 0:
            values = np.abs(values)
        elif i % 3 == 1:
            values = -np.abs(values)
        windows.append(Histogram.of(values.tolist()))
    one_by_one = Histogram()
    for h in windows:
        one_by_one = one_by_one.merge(h)
    assert merge_all(windows) == one_by_one
    assert merge_all([]) == Histogram()
    assert one_by_one.pos_counts and one_by_one.neg_counts and one_by_one.zero_count >= 2
