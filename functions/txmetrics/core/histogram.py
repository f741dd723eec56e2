"""Mergeable log-bucket histograms (the scheme of OpenTelemetry exponential histograms).

A positive value v falls in bucket ``k = ceil(log2(v) * 2**SCALE)``, i.e. the interval
``(base**(k-1), base**k]`` with ``base = 2 ** (2 ** -SCALE)``. The bucket's estimate
``2 * base**k / (base + 1)`` is within ``(base - 1) / (base + 1)`` relative error of any
value in it: 0.54% at SCALE 6, comfortably inside the 1% the contract asks for.
Negative values use the same buckets on |v| in a separate store; |v| < ZERO_THRESHOLD
counts as zero. Keys are clamped to [KEY_MIN, KEY_MAX] (2^-30 .. 2^64, about 9e-10 .. 1.8e19)
so that a stray value cannot make a dense array explode; min and max stay exact. The range
holds every value the contract's fields can carry (amounts below 10^18, processing_ms up to
2^53) within the 1% bound; a catalog metric beyond 1.8e19 is counted in the top bucket.

Counts are stored densely from an offset (the key of the first count). Two histograms
merge by adding counts key by key, whatever their offsets: the merge of any set of
windows is the histogram of the union of their values. The same maths runs in SQL
(migrations/0002) for merges and quantiles in the database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

SCALE = 6
BASE: float = 2.0 ** (2.0 ** -SCALE)
RELATIVE_ERROR: float = (BASE - 1) / (BASE + 1)
ZERO_THRESHOLD = 1e-9
KEY_MIN = -30 * 2**SCALE
KEY_MAX = 64 * 2**SCALE


def bucket_keys(magnitudes: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Bucket keys of positive magnitudes (vectorised)."""
    keys = np.ceil(np.log2(magnitudes) * (1 << SCALE))
    clipped: npt.NDArray[np.int64] = np.clip(keys, KEY_MIN, KEY_MAX).astype(np.int64)
    return clipped


def bucket_estimate(key: int) -> float:
    return float(2.0 * BASE**key / (BASE + 1.0))


@dataclass
class Histogram:
    """One histogram with its exact count, sum, min and max."""

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    zero_count: int = 0
    pos_offset: int | None = None
    pos_counts: list[int] = field(default_factory=list)
    neg_offset: int | None = None
    neg_counts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, values: Iterable[float]) -> Histogram:
        arr = np.asarray(list(values), dtype=np.float64)
        h = cls()
        if arr.size == 0:
            return h
        h.count = int(arr.size)
        h.sum = math.fsum(arr.tolist())
        h.min = float(arr.min())
        h.max = float(arr.max())
        mags = np.abs(arr)
        zero = mags < ZERO_THRESHOLD
        h.zero_count = int(zero.sum())
        pos = arr[(~zero) & (arr > 0)]
        neg = -arr[(~zero) & (arr < 0)]
        h.pos_offset, h.pos_counts = _dense(pos)
        h.neg_offset, h.neg_counts = _dense(neg)
        return h

    def merge(self, other: Histogram) -> Histogram:
        out = Histogram(
            count=self.count + other.count,
            sum=self.sum + other.sum,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
            zero_count=self.zero_count + other.zero_count,
        )
        out.pos_offset, out.pos_counts = merge_counts(self.pos_offset, self.pos_counts, other.pos_offset,
                                                      other.pos_counts)
        out.neg_offset, out.neg_counts = merge_counts(self.neg_offset, self.neg_counts, other.neg_offset,
                                                      other.neg_counts)
        return out

    def quantile(self, q: float) -> float | None:
        return quantile(q, self.zero_count, self.pos_offset, self.pos_counts, self.neg_offset, self.neg_counts,
                        self.min, self.max)


def merge_all(histograms: Iterable[Histogram]) -> Histogram:
    """The merge of many histograms (a day's 288 windows, in the daily rollup): the same as
    merging them one by one from an empty one (sums added in the same order), with each
    side's bucket counts added in one numpy pass. Merging one by one walked the whole merged
    width in Python per merge: 63 us each for values spread over 29 decades (3,300 buckets),
    14 s of a 6-day rollup in the custom-catalog test."""
    parts = list(histograms)
    out = Histogram()
    for h in parts:
        out.count += h.count
        out.sum += h.sum
        out.min = min(out.min, h.min)
        out.max = max(out.max, h.max)
        out.zero_count += h.zero_count
    out.pos_offset, out.pos_counts = _merge_dense([(h.pos_offset, h.pos_counts) for h in parts])
    out.neg_offset, out.neg_counts = _merge_dense([(h.neg_offset, h.neg_counts) for h in parts])
    return out


def _merge_dense(parts: Sequence[tuple[int | None, Sequence[int]]]) -> tuple[int | None, list[int]]:
    present = [(offset, counts) for offset, counts in parts if offset is not None]
    if not present:
        return None, []
    lo = min(offset for offset, _ in present)
    total = np.zeros(max(offset + len(counts) for offset, counts in present) - lo, dtype=np.int64)
    for offset, counts in present:
        total[offset - lo:offset - lo + len(counts)] += np.asarray(counts, dtype=np.int64)
    return lo, [int(c) for c in total]


def _dense(mags: npt.NDArray[np.float64]) -> tuple[int | None, list[int]]:
    if mags.size == 0:
        return None, []
    keys = bucket_keys(mags)
    lo = int(keys.min())
    counts = np.bincount(keys - lo)
    return lo, [int(c) for c in counts]


def merge_counts(a_off: int | None, a: Sequence[int], b_off: int | None, b: Sequence[int]) -> tuple[int | None, list[int]]:
    if a_off is None:
        return b_off, list(b)
    if b_off is None:
        return a_off, list(a)
    lo = min(a_off, b_off)
    hi = max(a_off + len(a), b_off + len(b))
    out = [0] * (hi - lo)
    for i, c in enumerate(a):
        out[a_off - lo + i] += c
    for i, c in enumerate(b):
        out[b_off - lo + i] += c
    return lo, out


def quantile(q: float, zero_count: int, pos_offset: int | None, pos_counts: Sequence[int],
             neg_offset: int | None, neg_counts: Sequence[int], min_value: float, max_value: float) -> float | None:
    """The value at 0-based rank floor(q * (n - 1)) (numpy's method='lower'), estimated."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be between 0 and 1, got {q}")
    total = zero_count + sum(pos_counts) + sum(neg_counts)
    if total == 0:
        return None
    rank = math.floor(q * (total - 1))
    cum = 0
    if neg_offset is not None:
        for i in range(len(neg_counts) - 1, -1, -1):
            cum += neg_counts[i]
            if cum > rank:
                return max(min_value, min(max_value, -bucket_estimate(neg_offset + i)))
    cum += zero_count
    if cum > rank:
        return max(min_value, min(max_value, 0.0))
    if pos_offset is not None:
        for i, c in enumerate(pos_counts):
            cum += c
            if cum > rank:
                return max(min_value, min(max_value, bucket_estimate(pos_offset + i)))
    return max_value
