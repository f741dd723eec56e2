"""Metric extraction and windowed aggregation for a batch of (new) events. No I/O.

`extract_metrics` gives the rows of dynamic_metrics, column by column;
`aggregate` folds those rows into one histogram row per
(metric, window, dimension values), ready to be merged into aggregate_histograms.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter, getitem
from typing import Any

import numpy as np
import numpy.typing as npt

from . import histogram
from .catalog import Catalog, lookup
from .events import PaymentEvent
from .fields import COLUMN_DIMENSIONS


@dataclass
class MetricRows:
    """The dynamic_metrics rows of a batch, one per (event, metric), stored column-wise
    (value, metric, event), the event's own fields kept once per event."""

    events: Sequence[PaymentEvent]
    metric_names: Sequence[str]                  # the catalog's, by metric index
    value: list[float] = field(default_factory=list)
    metric_index: list[int] = field(default_factory=list)
    event_index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.value)

    def for_events(self, indices: Sequence[int]) -> MetricRows:
        """The rows of some of the events only (`indices` into `events`, ascending),
        re-indexed onto just those events, in that order."""
        position = {old: new for new, old in enumerate(indices)}
        out = MetricRows(events=[self.events[i] for i in indices], metric_names=self.metric_names)
        for value, mi, ei in zip(self.value, self.metric_index, self.event_index, strict=True):
            new = position.get(ei)
            if new is not None:
                out.value.append(value)
                out.metric_index.append(mi)
                out.event_index.append(new)
        return out


# dynamic_metrics' columns (adapters/postgres writes them in this order); the event's dimensions
# are stored once per event (ingested_events.dimension_key -> event_dimensions)
TABLE_COLUMNS = ("event_id", "metric_name", "value", "occurred_at")

# event_dimensions' columns after dimension_key, in the order of dimension_tuple()
DIMENSION_COLUMNS = (*COLUMN_DIMENSIONS, "dimensions")
DimensionTuple = tuple[Any, ...]
_TYPED_DIMENSIONS = attrgetter(*COLUMN_DIMENSIONS)     # the event's typed dimension values, in stored order


def dimension_tuple(event: PaymentEvent, extra_fields: Sequence[str]) -> DimensionTuple:
    """The event's dimensions as stored once per distinct tuple in event_dimensions: the
    typed columns, then the catalog's other dimensions as canonical JSON (None when the
    catalog has none)."""
    extra = (json.dumps({d: dimension_value(event, d) for d in extra_fields}, sort_keys=True, separators=(",", ":"))
             if extra_fields else None)
    return (*_TYPED_DIMENSIONS(event), extra)


def dimension_keys(events: Sequence[PaymentEvent], extra_fields: Sequence[str]
                   ) -> tuple[list[int], dict[int, DimensionTuple]]:
    """Each event's dimension key, and the distinct tuples by key (event_dimensions' rows).
    Without extra fields the tuples are the typed columns read by one C-level pass."""
    if extra_fields:
        tuples = [dimension_tuple(ev, extra_fields) for ev in events]
    else:
        tuples = [(*typed, None) for typed in map(_TYPED_DIMENSIONS, events)]
    known = _DIMENSION_KEYS.get        # the memo read inline: a call per event costs more than the lookup
    keys = [key if (key := known(dims)) is not None else dimension_key(dims) for dims in tuples]
    return keys, dict(zip(keys, tuples, strict=True))


_DIMENSION_KEYS: dict[DimensionTuple, int] = {}


def dimension_key(dims: DimensionTuple) -> int:
    """A stable signed 64-bit key of a dimension tuple: the first 8 bytes of the SHA-256 of
    its canonical JSON. Cryptographic, so no producer can make two tuples share a key;
    memoised (bounded), since the same tuples recur batch after batch."""
    key = _DIMENSION_KEYS.get(dims)
    if key is None:
        if len(_DIMENSION_KEYS) >= 50_000:
            _DIMENSION_KEYS.clear()
        digest = hashlib.sha256(json.dumps(dims, separators=(",", ":")).encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        _DIMENSION_KEYS[dims] = key
    return key


@dataclass(frozen=True, slots=True)
class AggregateRow:
    """One group of `Aggregates`, as plain values (tests, and readers of a single group)."""

    metric_name: str
    window_seconds: int
    window_start_us: int
    dimensions: str                 # canonical JSON object text
    count: int
    sum: float
    min: float
    max: float
    zero_count: int
    # histogram buckets, sparse: the non-empty bucket keys (ascending) and their counts; the
    # dense form stored in aggregate_histograms (offset + counts) is derived from them
    pos_keys: tuple[int, ...]
    pos_key_counts: tuple[int, ...]
    neg_keys: tuple[int, ...]
    neg_key_counts: tuple[int, ...]

    @property
    def key(self) -> tuple[str, int, int, str]:
        return (self.metric_name, self.window_seconds, self.window_start_us, self.dimensions)

    @property
    def pos_offset(self) -> int | None:
        return self.pos_keys[0] if self.pos_keys else None

    @property
    def pos_counts(self) -> tuple[int, ...]:
        return _dense(self.pos_keys, self.pos_key_counts)

    @property
    def neg_offset(self) -> int | None:
        return self.neg_keys[0] if self.neg_keys else None

    @property
    def neg_counts(self) -> tuple[int, ...]:
        return _dense(self.neg_keys, self.neg_key_counts)


def _dense(keys: tuple[int, ...], counts: tuple[int, ...]) -> tuple[int, ...]:
    if not keys:
        return ()
    dense = [0] * (keys[-1] - keys[0] + 1)
    for k, c in zip(keys, counts, strict=True):
        dense[k - keys[0]] = c
    return tuple(dense)


@dataclass(frozen=True)
class Buckets:
    """Sparse histogram buckets of every group, column-wise: group g's non-empty buckets are
    keys[bounds[g]:bounds[g + 1]] (ascending) with counts[bounds[g]:bounds[g + 1]]."""

    bounds: npt.NDArray[np.int64]
    keys: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int64]


@dataclass(frozen=True)
class Aggregates:
    """A batch's histograms: one group per (metric, window, dimension values), column-wise
    (numpy arrays), so that neither building nor encoding them takes an object per group."""

    metric_names: tuple[str, ...]
    metric_index: npt.NDArray[np.int64]
    window_seconds: npt.NDArray[np.int64]
    window_start_us: npt.NDArray[np.int64]
    dimensions: list[str]                    # canonical JSON object text per group
    count: npt.NDArray[np.int64]
    sum: npt.NDArray[np.float64]
    min: npt.NDArray[np.float64]
    max: npt.NDArray[np.float64]
    zero_count: npt.NDArray[np.int64]
    pos: Buckets
    neg: Buckets

    def __len__(self) -> int:
        return len(self.dimensions)

    def rows(self) -> list[AggregateRow]:
        def cells(b: Buckets, g: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
            lo, hi = int(b.bounds[g]), int(b.bounds[g + 1])
            return tuple(b.keys[lo:hi].tolist()), tuple(b.counts[lo:hi].tolist())

        out = []
        for g in range(len(self)):
            pk, pc = cells(self.pos, g)
            nk, nc = cells(self.neg, g)
            out.append(AggregateRow(
                self.metric_names[int(self.metric_index[g])], int(self.window_seconds[g]),
                int(self.window_start_us[g]), self.dimensions[g], int(self.count[g]), float(self.sum[g]),
                float(self.min[g]), float(self.max[g]), int(self.zero_count[g]), pk, pc, nk, nc))
        return out


def dimension_value(event: PaymentEvent, name: str) -> Any:
    if name in COLUMN_DIMENSIONS:
        return getattr(event, name)
    value = lookup(event.document, name)
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True, default=str)
    elif value is not None and not isinstance(value, str | bool | int):
        value = str(value)   # Decimal and friends: keep the exact text
    if isinstance(value, str) and "\x00" in value:
        value = value.replace("\x00", "\ufffd")   # jsonb cannot hold NUL
    return value


def extract_metrics(events: Sequence[PaymentEvent], catalog: Catalog) -> MetricRows:
    """The batch's metric rows: each metric's values for all events at once (one pass per
    metric, `Metric.values`), then the rows event by event, in catalog order."""
    names = [m.name for m in catalog.metrics]
    if not events or not names:
        return MetricRows(events=events, metric_names=names)
    documents = [ev.document for ev in events]
    # events x metrics, None as NaN (a metric value is never NaN: _as_metric_value), then the
    # rows event by event in catalog order: the non-NaN cells in row-major order
    grid = np.array([metric.values(documents) for metric in catalog.metrics], dtype=np.float64).T
    event_index, metric_index = np.nonzero(~np.isnan(grid))
    return MetricRows(events=events, metric_names=names, value=grid[event_index, metric_index].tolist(),
                      metric_index=metric_index.tolist(), event_index=event_index.tolist())


def extract_metrics_isolated(events: Sequence[PaymentEvent], catalog: Catalog
                             ) -> tuple[MetricRows, dict[int, Exception]]:
    """`extract_metrics`, with any event whose extraction raises set aside.

    Returns the rows of the other events (MetricRows over them, in order) and, by index into
    `events`, the exception of each event set aside. Nothing an event holds should make
    extraction raise; if a bug lets it, that event alone is refused, not its whole batch."""
    try:
        return extract_metrics(events, catalog), {}
    except Exception:
        broken: dict[int, Exception] = {}
        for i, ev in enumerate(events):
            try:
                extract_metrics([ev], catalog)
            except Exception as exc:
                broken[i] = exc
        return extract_metrics([ev for i, ev in enumerate(events) if i not in broken], catalog), broken


def aggregate(events: Sequence[PaymentEvent], rows: MetricRows, catalog: Catalog) -> Aggregates:
    """The batch's histograms: one group per (metric, window, dimension values).

    Vectorised: each dimension is factorised to integer codes once per batch; each (metric,
    window, dimension set) is grouped with one numpy sort; then counts, sums, extremes and
    bucket counts of all groups at once. Python touches each group once, to name its slice
    (canonical JSON, memoised), so the cost grows with the groups, not with rows x sets."""
    names = tuple(m.name for m in catalog.metrics)
    if not len(rows):
        return _no_aggregates(names)
    codes, labels = _factorise(events, catalog.dimension_fields)
    values = np.asarray(rows.value, dtype=np.float64)
    metric_index = np.asarray(rows.metric_index, dtype=np.int64)
    event_index = np.asarray(rows.event_index, dtype=np.int64)
    occurred = np.fromiter((ev.occurred_us for ev in events), dtype=np.int64, count=len(events))[event_index]
    group_of: list[npt.NDArray[np.int64]] = []          # per plan: each selected row's group
    value_parts: list[npt.NDArray[np.float64]] = []
    g_metric: list[npt.NDArray[np.int64]] = []
    g_window: list[npt.NDArray[np.int64]] = []
    g_start: list[npt.NDArray[np.int64]] = []
    g_dims: list[str] = []
    # a slice's JSON per (dimensions, value codes): the metrics share most slices of a batch
    slice_json: dict[tuple[tuple[str, ...], tuple[int, ...]], str] = {}
    label_keys = _label_keys(labels)
    for mi, metric in enumerate(catalog.metrics):
        sel = np.flatnonzero(metric_index == mi)
        if not sel.size:
            continue
        ev_sel, val_sel, occ_sel = event_index[sel], values[sel], occurred[sel]
        for w in catalog.window_seconds:
            starts, window_code = np.unique(occ_sel - occ_sel % (w * 1_000_000), return_inverse=True)
            for dims in catalog.sets_for(metric):
                # one int64 key per row: mixed-radix number of (window code, dimension codes)
                key = window_code.astype(np.int64)
                radices = [len(labels[d]) for d in dims]
                for d, radix in zip(dims, radices, strict=True):
                    key = key * radix + codes[d][ev_sel]
                uniq, inverse = np.unique(key, return_inverse=True)
                offset = len(g_dims)
                rest = uniq
                part_codes: list[list[int]] = []
                for radix in reversed(radices):          # decode the keys column-wise
                    rest, code = np.divmod(rest, radix)
                    part_codes.append(code.tolist())
                part_codes.reverse()
                label_sets = [labels[d] for d in dims]
                key_sets = [label_keys[d] for d in dims]
                for parts in zip(*part_codes, strict=True) if dims else [()] * len(uniq):
                    text = slice_json.get((dims, parts))
                    if text is None:
                        text = slice_json[(dims, parts)] = _dimensions_json(
                            dims, tuple(map(getitem, key_sets, parts)), label_sets, parts)
                    g_dims.append(text)
                group_of.append(inverse.reshape(-1) + offset)
                value_parts.append(val_sel)
                g_metric.append(np.full(len(uniq), mi, dtype=np.int64))
                g_window.append(np.full(len(uniq), w, dtype=np.int64))
                g_start.append(starts[rest])
    groups = np.concatenate(group_of)
    vals = np.concatenate(value_parts)
    n = len(g_dims)
    mins = np.full(n, np.inf)
    maxs = np.full(n, -np.inf)
    np.minimum.at(mins, groups, vals)
    np.maximum.at(maxs, groups, vals)
    mags = np.abs(vals)
    zero = mags < histogram.ZERO_THRESHOLD
    positive = ~zero & (vals > 0)
    negative = ~zero & (vals < 0)
    return Aggregates(
        metric_names=names, metric_index=np.concatenate(g_metric), window_seconds=np.concatenate(g_window),
        window_start_us=np.concatenate(g_start), dimensions=g_dims,
        count=np.bincount(groups, minlength=n).astype(np.int64),
        sum=np.bincount(groups, weights=vals, minlength=n).astype(np.float64),
        min=mins, max=maxs, zero_count=np.bincount(groups[zero], minlength=n).astype(np.int64),
        pos=_buckets(groups[positive], mags[positive], n), neg=_buckets(groups[negative], mags[negative], n))


def _no_aggregates(names: tuple[str, ...]) -> Aggregates:
    empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    none = Buckets(np.zeros(1, dtype=np.int64), empty_i, empty_i)
    return Aggregates(names, empty_i, empty_i, empty_i, [], empty_i, empty_f, empty_f, empty_f, empty_i, none, none)


def _factorise(events: Sequence[PaymentEvent], fields: Sequence[str]
               ) -> tuple[dict[str, npt.NDArray[np.int64]], dict[str, list[Any]]]:
    """Per dimension: an integer code per event and the values the codes stand for. Values are
    told apart with their types (True and 1, None and "None" are different slices)."""
    codes: dict[str, npt.NDArray[np.int64]] = {}
    labels: dict[str, list[Any]] = {}
    for f in fields:
        if f in COLUMN_DIMENSIONS:
            # a validated column: str or None only, so the value alone tells slices apart, and
            # three C-level passes (values, distinct values in order, their codes) do the work
            values = list(map(attrgetter(f), events))
            labels[f] = distinct = list(dict.fromkeys(values))
            code_of = {v: i for i, v in enumerate(distinct)}
            codes[f] = np.fromiter(map(code_of.__getitem__, values), dtype=np.int64, count=len(values))
            continue
        table: dict[tuple[str, Any], int] = {}
        column = [table.setdefault((type(v).__name__, v), len(table)) for v in (dimension_value(ev, f) for ev in events)]
        codes[f] = np.asarray(column, dtype=np.int64)
        labels[f] = [v for _, v in table]
    return codes, labels


def _label_keys(labels: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Per dimension, a key for each of its values that tells apart what JSON tells apart:
    the value itself for a typed column (str or None only), the value with its type for any
    other dimension (True and 1, 1 and 1.0 are different slices). Strings keep their cached
    hash, so a slice's key hashes cheaply batch after batch."""
    return {f: values if f in COLUMN_DIMENSIONS else [(type(v).__name__, v) for v in values]
            for f, values in labels.items()}


_DIMENSIONS_JSON: dict[tuple[tuple[str, ...], tuple[Any, ...]], str] = {}


def _dimensions_json(dims: tuple[str, ...], keys: tuple[Any, ...], label_sets: Sequence[Sequence[Any]],
                     parts: tuple[int, ...]) -> str:
    """Canonical JSON of one slice's dimensions (the values at `parts` of `label_sets`),
    memoised by the values' keys (`_label_keys`): the same (merchant, method) slices recur
    batch after batch."""
    key = (dims, keys)
    text = _DIMENSIONS_JSON.get(key)
    if text is None:
        if len(_DIMENSIONS_JSON) >= 20_000:   # bounded (a few MB): a long tail of merchants must not grow it
            _DIMENSIONS_JSON.clear()
        text = json.dumps(dict(zip(dims, map(getitem, label_sets, parts), strict=True)),
                          sort_keys=True, separators=(",", ":"))
        _DIMENSIONS_JSON[key] = text
    return text


def _buckets(groups: npt.NDArray[np.int64], mags: npt.NDArray[np.float64], n: int) -> Buckets:
    """Non-empty bucket keys and counts per group, sorted by (group, key)."""
    if groups.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Buckets(np.zeros(n + 1, dtype=np.int64), empty, empty)
    span = histogram.KEY_MAX - histogram.KEY_MIN + 1
    combined = groups * span + (histogram.bucket_keys(mags) - histogram.KEY_MIN)
    uniq, counts = np.unique(combined, return_counts=True)
    cell_groups, keys = np.divmod(uniq, span)
    bounds = np.searchsorted(cell_groups, np.arange(n + 1)).astype(np.int64)
    return Buckets(bounds, keys + histogram.KEY_MIN, counts.astype(np.int64))
