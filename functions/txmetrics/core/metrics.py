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
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from operator import attrgetter, getitem
from typing import Any

import numpy as np
import numpy.typing as npt

from . import histogram
from .catalog import Catalog, Metric, lookup
from .events import AMOUNT_SCALE, PaymentEvent
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
    sum: Decimal                    # exact: the values as the events wrote them, added exactly
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
    sum: npt.NDArray[np.float64]             # the values as doubles, added up (aggregate_deltas.sum)
    min: npt.NDArray[np.float64]
    max: npt.NDArray[np.float64]
    zero_count: npt.NDArray[np.int64]
    pos: Buckets
    neg: Buckets
    # The exact sum of each group (aggregate_deltas.sum_exact): in units of 10^-SUM_SCALE
    # (`sum_units`), except the groups in `sum_exact`, whose whole sum is that Decimal (a
    # value with more places, or a sum beyond int64).
    sum_units: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sum_exact: dict[int, Decimal] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dimensions)

    def exact_sum(self, g: int) -> Decimal:
        """Group g's sum, exactly."""
        exact = self.sum_exact.get(g)
        return exact if exact is not None else Decimal(int(self.sum_units[g])).scaleb(-SUM_SCALE)

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
                int(self.window_start_us[g]), self.dimensions[g], int(self.count[g]), self.exact_sum(g),
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
    unit_parts: list[npt.NDArray[np.int64]] = []        # per plan: each selected row's exact units
    irregular_rows: list[tuple[int, Decimal]] = []       # (group, value) of values units cannot hold
    g_metric: list[npt.NDArray[np.int64]] = []
    g_window: list[npt.NDArray[np.int64]] = []
    g_start: list[npt.NDArray[np.int64]] = []
    g_dims: list[str] = []
    # a slice's JSON per dimensions, then value codes: the metrics share most slices of a batch
    slice_json: dict[tuple[str, ...], dict[tuple[int, ...], str]] = {}
    label_keys = _label_keys(labels)
    for mi, metric in enumerate(catalog.metrics):
        sel = np.flatnonzero(metric_index == mi)
        if not sel.size:
            continue
        ev_sel, val_sel, occ_sel = event_index[sel], values[sel], occurred[sel]
        units, irregular = _exact_units(metric, events, ev_sel, val_sel)
        sets = catalog.sets_for(metric)
        # each dimension's code of each selected row, once for all the metric's windows and sets
        row_codes = {d: codes[d][ev_sel] for dims in sets for d in dims}
        for w in catalog.window_seconds:
            starts, window_code = _window_starts(occ_sel, w * 1_000_000)
            for dims in sets:
                key, span = _group_key(window_code, len(starts), [(row_codes[d], len(labels[d])) for d in dims])
                uniq, first, inverse = _distinct(key, span)
                offset = len(g_dims)
                # each group's window and dimension codes, read from a row of it (all its rows
                # have the same)
                part_codes = [row_codes[d][first].tolist() for d in dims]
                all_parts = list(zip(*part_codes, strict=True)) if dims else [()] * len(uniq)
                # the slices met before (by an earlier metric or window) looked up at once
                known = slice_json.setdefault(dims, {})
                texts: list[str | None] = list(map(known.get, all_parts))
                if None in texts:
                    label_sets = [labels[d] for d in dims]
                    key_sets = [label_keys[d] for d in dims]
                    for i, parts in enumerate(all_parts):
                        if texts[i] is None:
                            text = known.get(parts)
                            if text is None:
                                text = known[parts] = _dimensions_json(
                                    dims, tuple(map(getitem, key_sets, parts)), label_sets, parts)
                            texts[i] = text
                g_dims += texts          # type: ignore[arg-type]  # every None replaced above
                group_of.append(inverse.reshape(-1) + offset)
                value_parts.append(val_sel)
                unit_parts.append(units)
                irregular_rows += [(int(inverse.reshape(-1)[pos]) + offset, value) for pos, value in irregular]
                g_metric.append(np.full(len(uniq), mi, dtype=np.int64))
                g_window.append(np.full(len(uniq), w, dtype=np.int64))
                g_start.append(starts[window_code[first]])
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
    sum_units, sum_exact = _exact_sums(groups, np.concatenate(unit_parts), irregular_rows, n)
    return Aggregates(
        metric_names=names, metric_index=np.concatenate(g_metric), window_seconds=np.concatenate(g_window),
        window_start_us=np.concatenate(g_start), dimensions=g_dims,
        count=np.bincount(groups, minlength=n).astype(np.int64),
        sum=np.bincount(groups, weights=vals, minlength=n).astype(np.float64),
        min=mins, max=maxs, zero_count=np.bincount(groups[zero], minlength=n).astype(np.int64),
        pos=_buckets(groups[positive], mags[positive], n), neg=_buckets(groups[negative], mags[negative], n),
        sum_units=sum_units, sum_exact=sum_exact)


_KEY_LIMIT = 2**62


def _group_key(window_code: npt.NDArray[np.int64], windows: int,
               columns: list[tuple[npt.NDArray[np.int64], int]]) -> tuple[npt.NDArray[np.int64], int]:
    """One int64 per row (and a bound they are all below), equal for two rows exactly when their window and dimension codes
    are: the mixed-radix number of (window code, each column's code < its radix). When the
    next radix would take the numbers past 2^62, the keys so far are first renumbered densely
    (no more than the rows' count): a set of six dimensions of a thousand values each, in a
    batch of many windows, wrapped around int64 and merged slices no event had (an audit)."""
    key = window_code.astype(np.int64)
    span = windows                                   # every key is below span
    for code, radix in columns:
        if span * radix >= _KEY_LIMIT:
            _, dense = np.unique(key, return_inverse=True)
            key = dense.reshape(-1).astype(np.int64)
            span = int(key.max()) + 1 if key.size else 1
        key = key * radix + code
        span *= radix
    return key, span


# The keys of a batch's groups span few values (a few windows times a few hundred slices),
# so `_distinct` and `_window_starts` mark the values present in an array of that span
# instead of sorting the rows (np.unique); beyond it, they sort. Same results either way
# (tests/test_metrics_grouping.py compares them with np.unique): the distinct values
# ascending and each row's rank among them. 1,000-event bench batches, 12 groupings and 3
# window passes each: aggregate 0.5-0.7 us an event less (see the commit).
_DENSE_SPAN_PER_ROW = 4
_DENSE_SPAN_MIN = 4096


def _dense_enough(rows: int, span: int) -> bool:
    return span <= max(_DENSE_SPAN_MIN, _DENSE_SPAN_PER_ROW * rows)


def _distinct(key: npt.NDArray[np.int64], span: int
              ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The distinct values of `key` (each in [0, span)) ascending, a row holding each (any
    row of it: the caller reads only what is the same for all its rows), and each row's
    index into them."""
    if not _dense_enough(len(key), span):
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return uniq, first, inverse.reshape(-1)
    uniq, rank = _marked(key, span)
    holder = np.empty(span, dtype=np.int64)
    holder[key] = np.arange(len(key), dtype=np.int64)       # a repeated value keeps one of its rows
    return uniq, holder[uniq], rank


def _marked(values: npt.NDArray[np.int64], span: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The distinct values (each in [0, span)) ascending, and each value's index into them,
    by marking the values present in an array of the span."""
    present = np.zeros(span, dtype=np.bool_)
    present[values] = True
    return np.flatnonzero(present).astype(np.int64), (np.cumsum(present, dtype=np.int64) - 1)[values]


def _window_starts(occurred_us: npt.NDArray[np.int64], window_us: int
                   ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The distinct starts of the windows the times fall in, ascending, and each time's
    index into them (np.unique of the starts, return_inverse)."""
    number = occurred_us // window_us                      # floor: right before 1970 too
    if len(number):
        low = int(number.min())
        span = int(number.max()) - low + 1
        if _dense_enough(len(number), span):
            numbers, code = _marked(number - low, span)
            return (numbers + low) * window_us, code
    starts, code = np.unique(occurred_us - occurred_us % window_us, return_inverse=True)
    return starts, code.reshape(-1)


# Exact sums. A value's double is not the number the event wrote (0.1, or 12345678901234.56),
# and neither is a sum of doubles: 1,000 amounts from 5,000.00 to 15,000.00 added up to
# 9851576.75999999. So sums are added from the written numbers: as integers in units of
# 10^-9 (every amount fits: at most nine places, below 10^18), in two halves of a few dozen
# bits each, so that numpy's double-weighted bincount adds them without rounding; the rare
# value with more places or beyond 2^62 units is added as a Decimal, exactly.
SUM_SCALE = 9
SUM_UNIT = 10**SUM_SCALE
_UNIT = SUM_UNIT
_UNITS_LIMIT = 2**62                   # |units| of one value below this: held in int64
_INT_LIMIT = _UNITS_LIMIT // _UNIT
_LOW_BITS = 26
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)      # no rounding, ever (also rollup's day sums)


def _exact_units(metric: Metric, events: Sequence[PaymentEvent], ev_sel: npt.NDArray[np.int64],
                 val_sel: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], list[tuple[int, Decimal]]]:
    """Each selected row's value in units of 10^-SUM_SCALE (int64), and (position, exact
    value) of the rows whose value units cannot hold (their units are 0)."""
    if metric.kind == "flag":                      # 0 or 1
        return val_sel.astype(np.int64) * _UNIT, []
    source = metric.source
    assert source is not None
    small = _VALIDATED_BELOW.get(source)
    if small is not None:
        # A field the event's validation bounds (amount: a multiple of 10^-9; processing_ms: an
        # integer): below `small` its double determines its units exactly, so they are read
        # from the doubles at once; the few values above take the general path below.
        fits = np.abs(val_sel) < small
        if fits.all():
            return _units_of_doubles(source, val_sel), []
        units = np.zeros(len(val_sel), dtype=np.int64)
        units[fits] = _units_of_doubles(source, val_sel[fits])
        rest = np.flatnonzero(~fits)
        rest_units, irregular = _exact_units_of(metric, events, ev_sel[rest])
        units[rest] = rest_units
        return units, [(int(rest[pos]), value) for pos, value in irregular]
    units_of_rows, irregular = _exact_units_of(metric, events, ev_sel)
    return units_of_rows, irregular


# The metric sources the event's validation bounds (core/events.py), with the magnitude below
# which a value's double gives its units of 10^-SUM_SCALE exactly. An amount is a multiple of
# 10^-AMOUNT_SCALE: below 10^6 its units are below 2^50, the double of the amount is within
# 2^-53 of it, times 10^9 within 2^-2 of the units (two roundings), so rint gives them. A
# processing_ms is an integer at most 2^53: its double is the integer, and below _INT_LIMIT
# its units fit int64. (tests/test_core_naming_and_metrics.py compares with the general path.)
_VALIDATED_BELOW: dict[str, float] = {"amount": 1e6, "processing_ms": float(_INT_LIMIT)}
assert AMOUNT_SCALE <= SUM_SCALE          # an amount's units are whole


def _units_of_doubles(source: str, values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    scaled = np.rint(values * _UNIT) if source == "amount" else values.astype(np.int64) * _UNIT
    units: npt.NDArray[np.int64] = scaled.astype(np.int64)
    return units


def _exact_units_of(metric: Metric, events: Sequence[PaymentEvent], ev_sel: npt.NDArray[np.int64]
                    ) -> tuple[npt.NDArray[np.int64], list[tuple[int, Decimal]]]:
    """`_exact_units` the general way: from each value as written (Decimal arithmetic)."""
    source = metric.source
    assert source is not None
    documents = [events[i].document for i in ev_sel.tolist()]
    raw = [d.get(source) for d in documents] if "." not in source else [lookup(d, source) for d in documents]
    units: list[int] = []
    irregular: list[tuple[int, Decimal]] = []
    for pos, value in enumerate(raw):
        if type(value) is int and -_INT_LIMIT < value < _INT_LIMIT:
            units.append(value * _UNIT)
            continue
        exact = written_number(value)
        scaled = exact.scaleb(SUM_SCALE, EXACT)
        whole = int(scaled)
        if whole == scaled and -_UNITS_LIMIT < whole < _UNITS_LIMIT:
            units.append(whole)
        else:
            units.append(0)
            irregular.append((pos, exact))
    return np.asarray(units, dtype=np.int64), irregular


_MIN_EXPONENT = -1000     # the decoder's bound for numbers; a numeric string can go further


def written_number(value: Any) -> Decimal:
    """The number a metric value was written as, exactly: a metric row exists only for a value
    `catalog.Metric.values` read as a finite number (an int, a Decimal from the decoder, a
    numeric string; a float only from a hand-made document, taken as its shortest repr).
    A numeric string with an exponent below -1000 ("1e-20000", finite as a double: 0.0) is
    taken as its double: its exact sum would have more places than PostgreSQL's numeric holds
    (16,383) and would fail its batch on every retry, or, at "1e-999999999", take seconds and
    gigabytes to add up."""
    if isinstance(value, Decimal):
        exact = value
    elif isinstance(value, int):
        return Decimal(value)
    elif isinstance(value, str):
        exact = Decimal(value.strip())
    else:
        return Decimal(repr(float(value)))
    if exact.is_finite() and exact.as_tuple().exponent < _MIN_EXPONENT:    # type: ignore[operator]  # finite: an int
        return Decimal(repr(float(exact)))
    return exact


def _exact_sums(groups: npt.NDArray[np.int64], units: npt.NDArray[np.int64], irregular: list[tuple[int, Decimal]],
                n: int) -> tuple[npt.NDArray[np.int64], dict[int, Decimal]]:
    """Each group's sum of `units` (int64), and the exact Decimal sum of the groups that int64
    cannot hold or that have irregular values."""
    exact: dict[int, Decimal] = {}
    if len(units) < 2**25:
        # |low| < 2^26 and |high| < 2^36, so neither half's sum over a chunk of 2^16 rows
        # reaches 2^53: bincount's doubles hold them exactly; the chunks' sums add up in int64
        # (below 2^61 for the highs over 2^9 chunks)
        high_i = np.zeros(n, dtype=np.int64)
        low_i = np.zeros(n, dtype=np.int64)
        for at in range(0, len(units), 2**16):
            chunk_groups, chunk = groups[at:at + 2**16], units[at:at + 2**16]
            low_i += np.bincount(chunk_groups, weights=(chunk & (2**_LOW_BITS - 1)).astype(np.float64),
                                 minlength=n).astype(np.int64)
            high_i += np.bincount(chunk_groups, weights=(chunk >> _LOW_BITS).astype(np.float64),
                                  minlength=n).astype(np.int64)
        high_i += low_i >> _LOW_BITS                       # carry, so that low stays below 2^26
        low_i &= 2**_LOW_BITS - 1
        fits = np.abs(high_i) < 2**(62 - _LOW_BITS)
        sums = np.where(fits, (np.where(fits, high_i, 0) << _LOW_BITS) + low_i, 0)
        for g in np.flatnonzero(~fits).tolist():
            exact[g] = Decimal((int(high_i[g]) << _LOW_BITS) + int(low_i[g])).scaleb(-SUM_SCALE, EXACT)
    else:                                          # a very large call (a rebuild): Python integers
        totals = [0] * n
        for g, u in zip(groups.tolist(), units.tolist(), strict=True):
            totals[g] += u
        sums = np.zeros(n, dtype=np.int64)
        for g, total in enumerate(totals):
            if -_UNITS_LIMIT < total < _UNITS_LIMIT:
                sums[g] = total
            else:
                exact[g] = Decimal(total).scaleb(-SUM_SCALE, EXACT)
    for g, value in irregular:
        base = exact.get(g)
        if base is None:
            base = Decimal(int(sums[g])).scaleb(-SUM_SCALE, EXACT)
        exact[g] = EXACT.add(base, value)
    return sums.astype(np.int64), exact


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
