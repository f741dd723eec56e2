"""Metric extraction and windowed aggregation for a batch of (new) events. No I/O.

`extract_metrics` gives the rows of dynamic_metrics, column by column;
`aggregate` folds those rows into one histogram row per
(metric, window, dimension values), ready to be merged into aggregate_histograms.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import histogram
from .catalog import COLUMN_DIMENSIONS, Catalog, lookup
from .events import PaymentEvent
from .naming import us_to_datetime


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

    @property
    def event_id(self) -> list[str]:
        return [self.events[i].event_id for i in self.event_index]

    @property
    def metric_name(self) -> list[str]:
        return [self.metric_names[i] for i in self.metric_index]

    def records(self) -> list[tuple[Any, ...]]:
        """The rows in dynamic_metrics' column order (TABLE_COLUMNS), occurred_at as a
        datetime made once per event."""
        out: list[tuple[Any, ...]] = []
        last = -1
        event_id: str = ""
        occurred: Any = None
        names = self.metric_names
        for ei, mi, value in zip(self.event_index, self.metric_index, self.value, strict=True):
            if ei != last:
                ev = self.events[ei]
                event_id, occurred = ev.event_id, us_to_datetime(ev.occurred_us)
                last = ei
            out.append((event_id, names[mi], value, occurred))
        return out


# dynamic_metrics' columns in the order of MetricRows.records(); the event's dimensions are
# stored once per event (ingested_events.dimension_key -> event_dimensions)
TABLE_COLUMNS = ("event_id", "metric_name", "value", "occurred_at")

# event_dimensions' columns after dimension_key, in the order of dimension_tuple()
DIMENSION_COLUMNS = (*COLUMN_DIMENSIONS, "dimensions")
DimensionTuple = tuple[Any, ...]


def dimension_tuple(event: PaymentEvent, extra_fields: Sequence[str]) -> DimensionTuple:
    """The event's dimensions as stored once per distinct tuple in event_dimensions: the
    typed columns, then the catalog's other dimensions as canonical JSON (None when the
    catalog has none)."""
    extra = (json.dumps({d: dimension_value(event, d) for d in extra_fields}, sort_keys=True, separators=(",", ":"))
             if extra_fields else None)
    return (event.merchant_id, event.payment_method, event.status, event.currency, event.country, event.event_type,
            extra)


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
    # position of the row's dimension set in the metric's sets (catalog order: coarse first);
    # the coarse rows are the ones every batch of every partition updates
    set_rank: int = 0

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
    rows = MetricRows(events=events, metric_names=[m.name for m in catalog.metrics])
    metrics = list(enumerate(catalog.metrics))
    values, metric_index, event_index = rows.value, rows.metric_index, rows.event_index
    for ei, ev in enumerate(events):
        document = ev.document
        for mi, metric in metrics:
            value = metric.extract(document)
            if value is None:
                continue
            values.append(value)
            metric_index.append(mi)
            event_index.append(ei)
    return rows


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


def aggregate(events: Sequence[PaymentEvent], rows: MetricRows, catalog: Catalog) -> list[AggregateRow]:
    """One histogram row per (metric, window, dimension values), sorted by key.

    Vectorised: dimension values are factorised to integer codes once per event, and each
    (metric, window, dimension set) is grouped with numpy, so the cost per batch grows with
    the number of groups, not with rows x sets."""
    if not len(rows):
        return []
    fields = catalog.dimension_fields
    codes: dict[str, np.ndarray] = {}
    labels: dict[str, list[Any]] = {}
    for f in fields:
        table: dict[tuple[str, Any], int] = {}
        column = np.empty(len(events), dtype=np.int64)
        for i, ev in enumerate(events):
            v = dimension_value(ev, f)
            column[i] = table.setdefault((type(v).__name__, v), len(table))   # True and 1 stay apart
        codes[f] = column
        labels[f] = [v for _, v in table]
    values = np.asarray(rows.value, dtype=np.float64)
    metric_index = np.asarray(rows.metric_index, dtype=np.int64)
    event_index = np.asarray(rows.event_index, dtype=np.int64)
    occurred = np.fromiter((ev.occurred_us for ev in events), dtype=np.int64, count=len(events))[event_index]
    keys: list[tuple[str, int, int, str, int]] = []
    group_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    for mi, metric in enumerate(catalog.metrics):
        sel = np.flatnonzero(metric_index == mi)
        if not sel.size:
            continue
        ev_sel = event_index[sel]
        for w in catalog.window_seconds:
            window_values, window_codes = np.unique(occurred[sel] - occurred[sel] % (w * 1_000_000),
                                                    return_inverse=True)
            for set_rank, dims in enumerate(catalog.sets_for(metric)):
                # one int64 key per row: mixed-radix number of (window code, dimension codes)
                combined = window_codes.astype(np.int64)
                radices = [len(labels[d]) for d in dims]
                for d, radix in zip(dims, radices, strict=True):
                    combined = combined * radix + codes[d][ev_sel]
                uniq, inverse = np.unique(combined, return_inverse=True)
                # decode the keys column-wise (last dimension first), then name each slice
                rest = uniq
                part_codes: list[list[int]] = []
                for radix in reversed(radices):
                    rest, code = np.divmod(rest, radix)
                    part_codes.append(code.tolist())
                part_codes.reverse()
                label_sets = [labels[d] for d in dims]
                for window_code, *parts in zip(rest.tolist(), *part_codes, strict=True):
                    dims_json = _dimensions_json(dims, tuple(
                        (type(v).__name__, v) for v in (ls[c] for ls, c in zip(label_sets, parts, strict=True))))
                    keys.append((metric.name, w, int(window_values[window_code]), dims_json, set_rank))
                group_parts.append(inverse.reshape(-1) + (len(keys) - len(uniq)))
                value_parts.append(values[sel])
    return _fold(keys, np.concatenate(group_parts), np.concatenate(value_parts))


_DIMENSIONS_JSON: dict[tuple[tuple[str, ...], tuple[tuple[str, Any], ...]], str] = {}


def _dimensions_json(dims: tuple[str, ...], typed_values: tuple[tuple[str, Any], ...]) -> str:
    """Canonical JSON of one slice's dimensions, memoised: the same (merchant, method)
    slices recur batch after batch. Keyed with the values' types (True and 1 differ)."""
    key = (dims, typed_values)
    text = _DIMENSIONS_JSON.get(key)
    if text is None:
        if len(_DIMENSIONS_JSON) >= 20_000:   # bounded (a few MB): a long tail of merchants must not grow it
            _DIMENSIONS_JSON.clear()
        text = json.dumps({d: v for d, (_, v) in zip(dims, typed_values, strict=True)},
                          sort_keys=True, separators=(",", ":"))
        _DIMENSIONS_JSON[key] = text
    return text


def _fold(keys: list[tuple[str, int, int, str, int]], groups: np.ndarray, values: np.ndarray) -> list[AggregateRow]:
    n = len(keys)
    counts = np.bincount(groups, minlength=n)
    mins = np.full(n, np.inf)
    maxs = np.full(n, -np.inf)
    np.minimum.at(mins, groups, values)
    np.maximum.at(maxs, groups, values)
    # Sums per group, exactly rounded (math.fsum semantics) via sorting by group.
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    sorted_values = values[order]
    bounds = np.searchsorted(sorted_groups, np.arange(n + 1))
    mags = np.abs(values)
    zero = mags < histogram.ZERO_THRESHOLD
    zero_counts = np.bincount(groups[zero], minlength=n)
    pos = _buckets_per_group(groups[(~zero) & (values > 0)], mags[(~zero) & (values > 0)], n)
    neg = _buckets_per_group(groups[(~zero) & (values < 0)], mags[(~zero) & (values < 0)], n)
    # plain lists once, rather than a numpy scalar conversion per group and field
    count_l, min_l, max_l, zero_l = counts.tolist(), mins.tolist(), maxs.tolist(), zero_counts.tolist()
    bound_l, value_l = bounds.tolist(), sorted_values.tolist()
    out = []
    for g, key in enumerate(keys):
        out.append(AggregateRow(
            key[0], key[1], key[2], key[3], count_l[g], math.fsum(value_l[bound_l[g]:bound_l[g + 1]]),
            min_l[g], max_l[g], zero_l[g], pos[g][0], pos[g][1], neg[g][0], neg[g][1], key[4]))
    out.sort(key=lambda a: a.key)
    return out


def _buckets_per_group(groups: np.ndarray, mags: np.ndarray, n: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per group: its non-empty bucket keys (ascending) and their counts."""
    result: list[tuple[tuple[int, ...], tuple[int, ...]]] = [((), ())] * n
    if groups.size == 0:
        return result
    keys = histogram.bucket_keys(mags)
    span = histogram.KEY_MAX - histogram.KEY_MIN + 1
    combined = groups * span + (keys - histogram.KEY_MIN)
    uniq, cnt = np.unique(combined, return_counts=True)
    ug = uniq // span
    uk = uniq % span + histogram.KEY_MIN
    bounds = np.searchsorted(ug, np.arange(n + 1)).tolist()
    key_list, count_list = uk.tolist(), cnt.tolist()
    for g in range(n):
        lo, hi = bounds[g], bounds[g + 1]
        if lo != hi:
            result[g] = (tuple(key_list[lo:hi]), tuple(count_list[lo:hi]))
    return result
