"""The metric catalog: which metrics to extract from each event, and by which dimensions
to aggregate them (contract section 5). Adding a metric is an edit of the YAML file.

Format (keys beyond the contract's are optional)::

    metrics:
      - name: amount          # metric_name in the tables: [a-z][a-z0-9_]*
        kind: value           # value: a number read from `source`
        source: amount        # dotted path into the event, e.g. attributes.risk_score
        by: [currency]        # dimensions every set of this metric includes
      - name: approved
        kind: flag            # flag: 1 when the condition holds, else 0
        when: {field: status, equals: approved}   # or in: [...], not_equals: x, exists: true
    dimension_sets: [[], [payment_method], [merchant_id]]
    window_seconds: [300]     # aggregate windows; 300 is the 5-minute window
    extra_fields: [loyalty_tier]   # top-level fields beyond the contract a dimension may name

What every reader needs is checked too: `window_seconds` holds 300 (the 5-minute rows the
KPI readers merge), no dimension is named like a KPI row's own column (`count`, `p95`, ...),
and a metric reading `amount` is split by currency (`currency` is added to its `by` when it
is missing there, as in the contract's example catalog). A metric's `source` and `when.field` may
name keys with hyphens or a leading digit under an object (`attributes.risk-score`); a
dimension stays a plain path (it goes into SQL as a jsonb key).

A flag's condition compares JSON values: a number by its value (`equals: 0.1` holds for an
event's 0.1, 0.10 or 1E-1), a string, a boolean or null only with its own kind (`equals: 1`
never holds for `true`, nor `equals: "1"` for 1), except that `amount`'s decimal strings are
the numbers they write (contract section 1); an operand no event can equal (`.nan`, an
unquoted date, `status: aproved`, `currency: eur`, `status: 1`) is refused. A field sent as
null and a field not sent are the same to a condition (`exists: false` and `equals: null`
hold for both), as they are to a value metric (no row).

A field the catalog names (a dimension in `by` or in `dimension_sets`, a value metric's
`source`, a flag's `when.field`) that is a near miss of a field of the event contract (a
typo such as `curency` or `amout`) is refused, naming the field meant, rather than
aggregating by, or reading, a field no event has, unless `extra_fields` lists it; any other
name is taken (a contract field, a path under one of its objects, a field beyond the
contract; docs/decisions.md, "Catalog dimensions and fields").

A bad catalog is refused at start-up with `CatalogError` naming file, key and fix; so is a
key written twice in one mapping (core/yaml_text.py), which YAML would resolve silently.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from ..errors import TxmetricsError
from .events import AMOUNT_LIMIT, COUNTRY_CODE, CURRENCY_CODE, MAX_PROCESSING_MS, STATUSES
from .fields import COLUMN_DIMENSIONS, SCHEMA
from .masking import card_digits_of_decimal, card_digits_of_int, card_digits_of_number
from .yaml_text import DuplicateKeyError, load_yaml

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")                       # fullmatch: "amount\n" is no name
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
# A path a metric reads (source, when.field) is only looked up in the document, never put in
# SQL as a dimension name is: keys under an object may also hold hyphens or start with a digit
# (attributes.risk-score, attributes.3ds), as free-form producers write them.
_READ_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*")
# A number written as text, as a metric value: plain decimal or exponent form, no more. Not
# Decimal(text): it also takes "sNaN" (which float() refuses with ValueError), "1_000", "Inf".
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_NUMBER_TEXT = 100
_KINDS = ("value", "flag")
BASE_WINDOW = 300
# The names of a KPI row's own columns (kpi.KpiRow.record): a dimension of the same name would
# be overwritten by the figure in `txmetrics kpi`'s json and csv, and its groups not told apart.
KPI_FIGURES = ("window_start", "count", "true_count", "rate", "sum", "mean", "min", "max")
_QUANTILE_LABEL = re.compile(r"p[0-9]+(?:\.[0-9]+)?")
_CONDITIONS = ("equals", "not_equals", "in", "exists")
_TOP_KEYS = {"metrics", "dimension_sets", "window_seconds", "version", "description", "extra_fields"}
_METRIC_KEYS = {"name", "kind", "source", "when", "by", "description"}
# COLUMN_DIMENSIONS (core/fields.py): dimensions stored as typed columns of event_dimensions;
# any other dimension goes to its jsonb column.
# The event's object fields (contract section 1): a dimension may name any path under them
# (attributes.channel, card.network). A top-level dimension that is a near miss of these or of
# a declared field (core/fields.py, every schema version) must be listed in `extra_fields`.
OBJECT_FIELDS = ("attributes", "card")


class CatalogError(TxmetricsError, ValueError):
    """The catalog file is invalid; the message names the file, the key and the fix."""


@dataclass(frozen=True, slots=True)
class Condition:
    """A flag's condition. Operands are compared with the event's values as JSON values
    (`json_equal`); `_parse_condition` has made YAML numbers exact Decimals."""

    field: str
    op: str
    operand: Any

    def holds(self, document: dict[str, Any]) -> bool:
        value = lookup(document, self.field)
        if self.field in NUMBER_TEXT_FIELDS and isinstance(value, str):
            value = _decimal_of_text(value)       # "12.30" is the number 12.30 here (contract section 1)
        if self.op == "exists":
            return (value is not None) == bool(self.operand)
        if self.op == "equals":
            return json_equal(value, self.operand)
        if self.op == "not_equals":
            return not json_equal(value, self.operand)
        return any(json_equal(value, o) for o in self.operand)


# Fields the contract lets an event write as a number or a decimal string ("12.30"): a condition
# reads the string as the number it is, as ingest does (a value metric reads any number text).
NUMBER_TEXT_FIELDS = ("amount",)


def _number_text(text: str) -> str | None:
    """The text without surrounding blanks when it writes a number (_NUMBER_TEXT), else None."""
    stripped = text.strip()
    return stripped if len(stripped) <= _MAX_NUMBER_TEXT and _NUMBER_TEXT.fullmatch(stripped) else None


def _decimal_of_text(text: str) -> Decimal | str:
    number = _number_text(text)
    return text if number is None else Decimal(number)


def json_equal(value: Any, operand: Any) -> bool:
    """Whether an event's decoded value equals a condition's operand as JSON values: numbers
    by their exact value, whatever their form (0.1 = 0.10 = 1E-1, 1 = 1.0), never equal to a
    boolean (Python's True == 1 is not JSON's); strings, booleans and null only to their own
    kind. The event's numbers are ints and exact Decimals (core/events.py); the catalog's are
    read as written (load_yaml's exact_numbers; a float from elsewhere, as the Decimal of its
    shortest text), so both sides are exact."""
    if isinstance(operand, Decimal):
        if type(value) is bool or not isinstance(value, int | float | Decimal):
            return False
        if isinstance(value, float):        # not from the event decoder; read as its shortest text, like YAML's
            value = Decimal(repr(value))
        # is_finite first: == with a signalling NaN raises
        return value.is_finite() and value == operand if isinstance(value, Decimal) else Decimal(value) == operand
    return type(value) is type(operand) and value == operand      # a string, a boolean or None


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: str
    source: str | None
    when: Condition | None
    by: tuple[str, ...]

    def extract(self, document: dict[str, Any]) -> float | None:
        """The metric's value for one event, or None when the event has no such value."""
        if self.kind == "flag":
            assert self.when is not None
            return 1.0 if self.when.holds(document) else 0.0
        assert self.source is not None
        value = lookup(document, self.source)
        number = _as_metric_value(value)
        if number is not None and self.source not in _TYPED_SOURCES and _is_card_value(value, number):
            return None     # never a card number in dynamic_metrics.value (see `values`)
        return number

    def values(self, documents: Sequence[dict[str, Any]]) -> list[float | None]:
        """`extract` of each document, the usual forms without a call per document: a flag
        comparing a top-level field, a top-level number (a float, or an int in the double
        range, is its own value; anything else goes through `extract`'s conversion)."""
        if self.kind == "flag":
            assert self.when is not None
            when = self.when
            if when.op == "equals" and "." not in when.field and type(when.operand) is str \
                    and when.field not in NUMBER_TEXT_FIELDS:
                # a string is equal only to the same string (json_equal), so == says it
                field, operand = when.field, when.operand
                return [1.0 if doc.get(field) == operand else 0.0 for doc in documents]
            return [1.0 if when.holds(doc) else 0.0 for doc in documents]
        assert self.source is not None
        source = self.source
        raw = [doc.get(source) for doc in documents] if "." not in source else [lookup(d, source) for d in documents]
        convert, limit, plain_text, longest, decimal = (_as_metric_value, _FLOAT_INT_LIMIT, _NUMBER_TEXT.fullmatch,
                                                       _MAX_NUMBER_TEXT, Decimal)
        # The usual values without a call: an int in the double range; a finite Decimal, or a
        # string that is number text as it stands (no blanks around it, not too long), whose
        # float is finite (`f - f` is 0.0 for a finite f only). Anything else, and a float
        # that overflows, goes through `_as_metric_value`. (tests/test_core_catalog.py
        # compares the two; 1,000-event bench batches, amounts half Decimals, half strings:
        # the amount metric 0.3-0.5 us an event cheaper.)
        values = [float(v) if type(v) is int and -limit < v < limit
                  else f if ((type(v) is decimal and v.is_finite())
                             or (type(v) is str and len(v) <= longest and plain_text(v)))
                  and (f := float(v)) - f == 0.0
                  else convert(v) for v in raw]
        if source not in _TYPED_SOURCES:
            # a value that is a card number has no row: ingest refuses such an event
            # (Catalog.masked_source_problem), but a backfill or rebuild reads events archived
            # before the metric was in the catalog, or before that check
            for i, number in enumerate(values):
                if number is not None and _is_card_value(raw[i], number):
                    values[i] = None
        return values


_TYPED_SOURCES = ("amount", "processing_ms")      # validated as typed columns (card_number_in_<field>)


_PAN_FLOOR = 1e12         # below it no number's integer part has the 13 digits of a card number


def _holds_card_number(value: Any) -> bool:
    """Whether a JSON number, or a string writing one, is a card number: by its exact value's
    integer part (as `amount` is judged), or, for a string, by the digits it is written with
    (`"4111111111111111E-5"`, as the same JSON number is judged)."""
    if isinstance(value, str):
        text = _number_text(value)
        if text is None:
            return False
        return card_digits_of_number(text.lstrip("+-"), Decimal(text)) is not None
    if isinstance(value, int):
        return card_digits_of_int(value) is not None
    return isinstance(value, Decimal) and card_digits_of_decimal(value) is not None


def _is_card_value(value: Any, number: float) -> bool:
    """`_holds_card_number` for a value whose metric value is `number`, skipped for the usual
    number (below 10^12: no card digits in its integer part; a string may still write them)."""
    return (abs(number) >= _PAN_FLOOR or type(value) is str) and _holds_card_number(value)


def _as_metric_value(value: Any) -> float | None:
    """A finite float from a JSON value, or None (not a number, or not a finite double).
    Never raises: an integer of 4,000 digits, 1E+999999 or "sNaN" simply have no value."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        number = value
    elif isinstance(value, int):
        if not -_FLOAT_INT_LIMIT < value < _FLOAT_INT_LIMIT:
            return None
        number = float(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            return None
        number = float(value)                     # beyond the double range: inf, dropped below
    elif isinstance(value, str):
        text = _number_text(value)
        if text is None:
            return None
        number = float(text)
    else:
        return None
    if number != number or number in (math.inf, -math.inf):
        return None
    return number


_FLOAT_INT_LIMIT = 2**1023          # float(int) raises OverflowError near 2**1024


@dataclass(frozen=True, slots=True)
class Catalog:
    path: str
    metrics: tuple[Metric, ...]
    dimension_sets: tuple[tuple[str, ...], ...]
    window_seconds: tuple[int, ...]
    extra_fields: tuple[str, ...] = ()      # top-level fields beyond the contract, listed on purpose
    # The value metrics whose number no event validation checks for a card number (all but
    # those reading `amount` or `processing_ms`, which refuse such an event themselves). Found
    # once: masked_source_problem runs for every event of a catalog that has any.
    card_checked_metrics: tuple[Metric, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "card_checked_metrics", tuple(
            m for m in self.metrics if m.kind == "value" and m.source not in (None, *_TYPED_SOURCES)))

    def sets_for(self, metric: Metric) -> tuple[tuple[str, ...], ...]:
        """The dimension sets of one metric: each catalog set plus the metric's own `by`."""
        seen: dict[tuple[str, ...], None] = {}
        for dims in self.dimension_sets:
            merged = tuple(sorted(set(dims) | set(metric.by)))
            seen.setdefault(merged, None)
        return tuple(seen)

    def masked_source_problem(self, sent: dict[str, Any], masked: dict[str, Any]) -> tuple[str, str] | None:
        """(error_code, detail) when the source of a card-checked value metric holds a card
        number (`sent` is the document as sent, `masked` as masking left it, the same object
        when masking did not run), else None. Such a source would put the card's digits in
        dynamic_metrics.value (a numeric string such as "4111111111111111e0" or
        "+4111111111111111", which masking leaves as it is), or, masked, leave the event without that metric's row,
        in silence (an audit: an epoch-milliseconds source lost 1 row in 10). Refused instead,
        as amount and processing_ms are. core/events.py asks it of every event when the
        pipeline passes it (only catalogs with card-checked metrics: the bundled one has none)."""
        for metric in self.card_checked_metrics:
            source = metric.source
            assert source is not None
            value = lookup(sent, source)
            number = _as_metric_value(value)
            if number is None:
                continue
            if (masked is not sent and lookup(masked, source) != value) or _is_card_value(value, number):
                return ("card_number_in_metric_source",
                        f"'{source}', the source of metric '{metric.name}', holds a card number: the event is refused "
                        f"rather than storing the number in dynamic_metrics or the event without its '{metric.name}' "
                        "row; fix: send that value in a form that is no card number (e.g. seconds, not "
                        f"milliseconds), or take '{metric.name}' out of the catalog; then set {source} on the item "
                        "(`txmetrics failed set`) and replay it")
        return None

    def masked_sources(self, document: dict[str, Any]) -> list[str]:
        """The card-checked metrics' sources that hold masked text (a card number masked in a
        stored failed item: `*` and no number): replayed so, the event would have no row for
        them. Other text, such as "n/a", is no number to ingest either, and is let through."""
        return [m.source for m in self.card_checked_metrics if m.source is not None
                and isinstance(value := lookup(document, m.source), str) and "*" in value
                and _as_metric_value(value) is None]

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    @property
    def dimension_fields(self) -> tuple[str, ...]:
        fields: dict[str, None] = {}
        for dims in self.dimension_sets:
            for d in dims:
                fields.setdefault(d, None)
        for m in self.metrics:
            for d in m.by:
                fields.setdefault(d, None)
        return tuple(fields)

    @property
    def extra_dimension_fields(self) -> tuple[str, ...]:
        return tuple(d for d in self.dimension_fields if d not in COLUMN_DIMENSIONS)


def is_plain_field_path(name: str) -> bool:
    """Letters, digits, _ and . only (ASCII): a name that may stand in SQL text as a jsonb key."""
    return bool(name) and name.replace("_", "").replace(".", "").isalnum() and name.isascii()


def lookup(document: dict[str, Any], path: str) -> Any:
    if "." not in path:          # the usual top-level field: no split, no loop
        return document.get(path)
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def load_catalog(path: str | Path) -> Catalog:
    path = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the metric catalog ({exc.strerror}); "
                           "fix: point METRIC_CATALOG at an existing YAML file") from None
    return parse_catalog_text(text, path)


def parse_catalog_text(text: str, path: str = "<catalog>") -> Catalog:
    """The catalog of YAML `text` (the content of `path`): as parse_catalog, refusing also
    invalid YAML and a key written twice in one mapping (YAML would keep the last silently)."""
    try:
        raw = load_yaml(text, exact_numbers=True)     # condition operands: the numbers as written
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML ({exc}); fix: correct the YAML syntax") from None
    except DuplicateKeyError as exc:
        raise _Refusal(path)(exc.key, exc.reason, exc.fix) from None
    return parse_catalog(raw, path)


def parse_catalog(raw: Any, path: str = "<catalog>") -> Catalog:
    """The catalog `raw` (the parsed YAML of `path`) describes, or CatalogError naming the
    file, the key, what is wrong and the fix: the top level, then each metric, the
    dimension sets and the windows."""
    fail = _Refusal(path)
    if not isinstance(raw, dict):
        raise fail("(top level)", "the catalog must be a mapping", "start the file with 'metrics:' and 'dimension_sets:'")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise fail(sorted(unknown)[0], "unknown key", f"use only {', '.join(sorted(_TOP_KEYS))}")
    metrics_raw = raw.get("metrics")
    if not isinstance(metrics_raw, list) or not metrics_raw:
        raise fail("metrics", "must be a non-empty list", "list at least one metric with name and kind")
    extra = _parse_extra_fields(raw.get("extra_fields", []), fail)
    metrics: list[Metric] = []
    for i, m in enumerate(metrics_raw):
        metric = _parse_metric(m, f"metrics[{i}]", fail, taken={known.name for known in metrics})
        if metric.source is not None:
            _check_field(metric.source, f"metrics[{i}].source", fail, extra)
        if metric.when is not None:
            _check_field(metric.when.field, f"metrics[{i}].when.field", fail, extra)
        for d in metric.by:
            _check_field(d, f"metrics[{i}].by", fail, extra)
            _check_not_a_figure(d, f"metrics[{i}].by", fail)
        metrics.append(metric)
    sets = _parse_dimension_sets(raw.get("dimension_sets", [[]]), fail)
    for i, dims in enumerate(sets):
        for d in dims:
            _check_field(d, f"dimension_sets[{i}]", fail, extra)
            _check_not_a_figure(d, f"dimension_sets[{i}]", fail)
    # a metric reading amount is always split by currency, also when its `by` does not say so
    # (the contract's own example catalog does not): amounts of different currencies are never
    # added together (contract section 5)
    metrics = [replace(m, by=(*m.by, "currency")) if m.source == "amount" and "currency" not in m.by else m
               for m in metrics]
    return Catalog(path=path, metrics=tuple(metrics), dimension_sets=sets,
                   window_seconds=_parse_windows(raw.get("window_seconds", [300]), fail), extra_fields=extra)


class _Refusal:
    """Builds the CatalogError of one file: `file: key: reason; fix: fix`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, key: str, reason: str, fix: str) -> CatalogError:
        return CatalogError(f"{self.path}: {key}: {reason}; fix: {fix}")


def _parse_metric(m: Any, key: str, fail: _Refusal, *, taken: set[str]) -> Metric:
    if not isinstance(m, dict):
        raise fail(key, "must be a mapping", "give each metric 'name' and 'kind'")
    unknown = set(m) - _METRIC_KEYS
    if unknown:
        raise fail(f"{key}.{sorted(unknown)[0]}", "unknown key", f"use only {', '.join(sorted(_METRIC_KEYS))}")
    name = m.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail(f"{key}.name", f"{name!r} is not a valid metric name",
                   "use lower case letters, digits and underscores, starting with a letter")
    if name in taken:
        raise fail(f"{key}.name", f"metric {name!r} is defined twice", "give each metric a unique name")
    kind = m.get("kind")
    if kind not in _KINDS:
        raise fail(f"{key}.kind", f"{kind!r} is not a metric kind", f"use one of {', '.join(_KINDS)}")
    source = m.get("source")
    when: Condition | None = None
    if kind == "value":
        if not isinstance(source, str) or not _READ_PATH.fullmatch(source):
            raise fail(f"{key}.source", f"{source!r} is not a dotted field path",
                       "name the event field to read, e.g. amount or attributes.risk_score")
        if "when" in m:
            raise fail(f"{key}.when", "a value metric takes no condition", "remove 'when' or use kind: flag")
    else:
        if source is not None:
            raise fail(f"{key}.source", "a flag metric reads no source", "remove 'source' or use kind: value")
        when = _parse_condition(m.get("when"), f"{key}.when", fail)
    by = m.get("by", [])
    if not isinstance(by, list) or not all(isinstance(d, str) and _PATH.fullmatch(d) for d in by):
        raise fail(f"{key}.by", f"{by!r} is not a list of field paths", "write e.g. by: [currency]")
    return Metric(name=name, kind=kind, source=source, when=when, by=tuple(by))


def contract_fields() -> tuple[str, ...]:
    """The top-level fields of the event contract: those declared (every schema version)
    and the object fields."""
    return (*(c.name for c in SCHEMA.event_fields), *OBJECT_FIELDS)


def _parse_extra_fields(raw: Any, fail: _Refusal) -> tuple[str, ...]:
    """Top-level fields beyond the contract (which it allows in events) that are near misses
    of a contract field and are meant: listed on purpose, so that a typo is never taken for one."""
    if not isinstance(raw, list) or not all(isinstance(f, str) and _NAME.fullmatch(f) for f in raw):
        raise fail("extra_fields", f"{raw!r} is not a list of field names",
                   "write e.g. extra_fields: [loyalty_tier] (top-level fields your events carry beyond the contract)")
    for name in raw:
        if name in contract_fields():
            raise fail("extra_fields", f"{name!r} is a field of the event contract already",
                       f"remove {name!r} from extra_fields")
    return tuple(raw)


def _check_field(name: str, key: str, fail: _Refusal, extra: tuple[str, ...]) -> None:
    """A field the catalog names (dimension, metric source, condition field) is a declared
    top-level field, a path under an object field, an extra field, or a top-level field not
    close to any of these; a near miss of one (a typo) is refused naming it, and a path
    under a field that is no object is refused."""
    head, dot, _ = name.partition(".")
    declared = [c.name for c in SCHEMA.event_fields]
    if head in OBJECT_FIELDS or head in extra or (head in declared and not dot):
        return
    if head in declared:
        raise fail(key, f"{name!r}: {head!r} is a field of the event contract but no object, so {name!r} is never "
                   "set", f"write {head}, or a path under {' or '.join(OBJECT_FIELDS)} (e.g. attributes.{name})")
    # a name this close to a contract field is a typo until the catalog says otherwise (curency,
    # payment_methd, merchantid: 0.93, 0.96, 0.95); fields of their own such as event_kind,
    # merchant, merchant_tier, transaction_type (0.89, 0.84, 0.83, 0.80) are not refused
    close = difflib.get_close_matches(head, [*contract_fields(), *extra], n=1, cutoff=0.9)
    if close and _same_quantity_other_unit(head, close[0]):
        close = []
    if close:
        meant = close[0] + name[len(head):]
        raise fail(key, f"{name!r} is no field of the event contract (did you mean {meant!r}?)",
                   f"write {meant} (or, for a top-level field your events carry beyond the contract, list it first "
                   f"in extra_fields: [{head}])")
    # else a top-level field beyond the contract (events may carry them, a catalog may group
    # by one): taken without extra_fields, so no catalog that worked before is refused


def _check_not_a_figure(name: str, key: str, fail: _Refusal) -> None:
    if name in KPI_FIGURES or _QUANTILE_LABEL.fullmatch(name):
        raise fail(key, f"a dimension named {name!r} would be overwritten by the KPI rows' own {name!r} column in "
                   "txmetrics kpi's json and csv (its groups could not be told apart)",
                   "group by another field (a path under attributes, or a field of your own with another name)")


# Time units a field's name may end in: processing_us beside processing_ms is another field of
# its own (another unit), not a typo of it, though difflib finds them 0.92 alike (a review).
_UNITS = frozenset({"s", "sec", "secs", "seconds", "ms", "millis", "us", "micros", "ns", "nanos", "min", "minutes",
                    "h", "hours"})


def _same_quantity_other_unit(name: str, field: str) -> bool:
    stem, _, unit = name.rpartition("_")
    field_stem, _, field_unit = field.rpartition("_")
    return bool(stem) and stem == field_stem and unit != field_unit and unit in _UNITS and field_unit in _UNITS


def _parse_dimension_sets(sets_raw: Any, fail: _Refusal) -> tuple[tuple[str, ...], ...]:
    if not isinstance(sets_raw, list) or not sets_raw:
        raise fail("dimension_sets", "must be a non-empty list of lists", "write e.g. dimension_sets: [[], [payment_method]]")
    sets: list[tuple[str, ...]] = []
    for i, s in enumerate(sets_raw):
        if not isinstance(s, list) or not all(isinstance(d, str) and _PATH.fullmatch(d) for d in s):
            raise fail(f"dimension_sets[{i}]", f"{s!r} is not a list of field paths", "write e.g. [merchant_id, status]")
        if len(set(s)) != len(s):
            raise fail(f"dimension_sets[{i}]", "names a dimension twice", "list each dimension once")
        if len(s) > 4:
            raise fail(f"dimension_sets[{i}]", "has more than 4 dimensions", "split it: each set multiplies aggregate rows")
        sets.append(tuple(s))
    return tuple(sets)


def _parse_windows(windows_raw: Any, fail: _Refusal) -> tuple[int, ...]:
    if not isinstance(windows_raw, list) or not windows_raw or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 and 86400 % w == 0 for w in windows_raw):
        raise fail("window_seconds", f"{windows_raw!r} is not a list of window lengths dividing a day",
                   "use e.g. [300] (5 minutes)")
    if BASE_WINDOW not in windows_raw:
        # every reader (txmetrics kpi, the KPI API, payment_metrics_5m, the rollups, the report)
        # reads the 5-minute rows and merges them into longer windows: without them it has nothing
        raise fail("window_seconds", f"{windows_raw!r} lacks {BASE_WINDOW}, the 5-minute window every KPI reader "
                   "reads (longer windows are merged from it)", f"add {BASE_WINDOW}, e.g. [{BASE_WINDOW}, 3600]")
    return tuple(sorted(set(windows_raw)))


def _parse_condition(raw: Any, key: str, fail: _Refusal) -> Condition:
    if not isinstance(raw, dict) or "field" not in raw:
        raise fail(key, "a flag metric needs a condition with a 'field'", "write e.g. when: {field: status, equals: approved}")
    if not isinstance(raw["field"], str) or not _READ_PATH.fullmatch(raw["field"]):
        raise fail(f"{key}.field", f"{raw['field']!r} is not a dotted field path",
                   "name the event field to test, e.g. status or attributes.risk-score")
    ops = [op for op in raw if op != "field"]
    if len(ops) != 1 or ops[0] not in _CONDITIONS:
        raise fail(key, f"needs exactly one of {', '.join(_CONDITIONS)}, got {ops}", "write e.g. equals: approved")
    op = ops[0]
    operand = raw[op]
    if op == "in" and (not isinstance(operand, list) or not operand):
        raise fail(f"{key}.in", "must be a list of at least one value", "write e.g. in: [approved, pending]")
    if op == "exists" and not isinstance(operand, bool):
        raise fail(f"{key}.exists", "must be true or false", "write exists: true")
    if op == "exists":
        return Condition(field=raw["field"], op=op, operand=operand)
    where = f"{key}.{op}"
    if op == "in":
        operands = tuple(_json_operand(o, f"{where}[{i}]", fail) for i, o in enumerate(operand))
        for i, o in enumerate(operands):
            _check_operand(raw["field"], o, f"{where}[{i}]", fail)
        return Condition(field=raw["field"], op=op, operand=operands)
    single = _json_operand(operand, where, fail)
    _check_operand(raw["field"], single, where, fail)
    return Condition(field=raw["field"], op=op, operand=single)


_CODES = {"currency": (CURRENCY_CODE, "an ISO 4217 code (three upper-case letters)"),
          "country": (COUNTRY_CODE, "an ISO 3166-1 alpha-2 code (two upper-case letters)")}
_NUMBER_TYPES = ("decimal", "int64", "float64")
# (low, high exclusive, integral, in words) of the numbers a valid event holds (core/events.py)
_RANGES = {"amount": (Decimal(0), Decimal(AMOUNT_LIMIT), False, f"a number from 0, below {AMOUNT_LIMIT:.0e}"),
           "processing_ms": (Decimal(0), Decimal(MAX_PROCESSING_MS) + 1, True, "a whole number from 0 to 2^53")}


def _check_operand(field: str, operand: Any, key: str, fail: _Refusal) -> None:
    """An operand a field of the event contract can never hold is refused: one of another
    JSON kind (status: 1), a status no valid event has (aproved), a currency or country
    code in a form the contract refuses (eur). Such a flag would be 0 for every event.
    Null stays allowed (`equals: null`: the field is absent); fields beyond the contract and
    paths under objects take any operand."""
    declared = {c.name: c for c in SCHEMA.event_fields}.get(field)
    if declared is None or operand is None:
        return
    kind = declared.type
    if kind in _NUMBER_TYPES:
        ok, wanted = isinstance(operand, Decimal), "a number"
    elif kind == "boolean":
        ok, wanted = type(operand) is bool, "true or false"
    else:
        ok, wanted = isinstance(operand, str), "a string (quote it)"
    if not ok:
        raise fail(key, f"{field} holds {wanted}, so {operand!r} never equals it", f"compare {field} with {wanted}")
    if field == "status" and operand not in STATUSES:
        close = difflib.get_close_matches(operand, STATUSES, n=1)
        meant = f" (did you mean {close[0]!r}?)" if close else ""
        raise fail(key, f"{operand!r} is no status a valid event has{meant}", f"use one of {', '.join(STATUSES)}")
    if field in _RANGES and isinstance(operand, Decimal):
        low, high, integral, says = _RANGES[field]
        if not (low <= operand < high) or (integral and operand != operand.to_integral_value()):
            raise fail(key, f"{field} is {says}, so {operand} never equals it", f"compare {field} with {says}")
    if field in _CODES and not _CODES[field][0].fullmatch(operand):
        raise fail(key, f"{operand!r} is not {_CODES[field][1]}, so no valid event has it",
                   f"write it as the events do, e.g. {operand.upper()!r}")


def _json_operand(value: Any, key: str, fail: _Refusal) -> Any:
    """A condition's operand as `json_equal` compares it: a number as the exact Decimal of the
    text it was written as (a float given in code: its shortest repr, 0.1, not 0.1000...055);
    a value no JSON event can hold (.nan, .inf, a date) refused."""
    if type(value) is bool or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):              # a YAML number, read exactly (load_yaml's exact_numbers)
        if not value.is_finite():
            raise fail(key, f"{value!r} is no JSON number, so no event can equal it", "compare with a finite number")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise fail(key, f"{value!r} is no JSON number, so no event can equal it", "compare with a finite number")
        return Decimal(repr(value))
    if isinstance(value, list | dict):      # Python's == on them would take true for 1 inside
        raise fail(key, f"{value!r} is a list or mapping: a condition compares one value",
                   "compare with a string, a number, true/false or null; for one of several values use in: [...]")
    raise fail(key, f"{value!r} ({type(value).__name__}) is no JSON value, so no event can equal it",
               "quote it to compare with a string, e.g. equals: '2026-03-01'")
