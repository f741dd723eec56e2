"""The metric catalog: bundled content, extraction, and refusal of bad files."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txmetrics.core.catalog import CatalogError, load_catalog, parse_catalog, parse_catalog_text
from txmetrics.settings import BUNDLED_CATALOG


def test_the_bundled_catalog_has_the_contract_metrics_and_never_mixes_currencies() -> None:
    cat = load_catalog(BUNDLED_CATALOG)
    names = {m.name for m in cat.metrics}
    assert {"amount", "processing_ms", "approved"} <= names
    amount = next(m for m in cat.metrics if m.name == "amount")
    assert all("currency" in dims for dims in cat.sets_for(amount))
    assert cat.window_seconds == (300,)
    assert () in cat.dimension_sets


def test_value_and_flag_extraction() -> None:
    cat = parse_catalog({"metrics": [
        {"name": "risk", "kind": "value", "source": "attributes.risk_score"},
        {"name": "big", "kind": "flag", "when": {"field": "status", "in": ["approved", "pending"]}},
        {"name": "has_country", "kind": "flag", "when": {"field": "country", "exists": True}},
    ], "dimension_sets": [[]]})
    risk, big, has_country = cat.metrics
    assert risk.extract({"attributes": {"risk_score": 0.25}}) == 0.25
    assert risk.extract({"attributes": {"risk_score": "0.5"}}) == 0.5
    assert risk.extract({"attributes": {}}) is None
    assert risk.extract({"attributes": {"risk_score": True}}) is None
    assert risk.extract({"attributes": {"risk_score": "high"}}) is None
    assert risk.extract({"attributes": "flat"}) is None
    assert big.extract({"status": "pending"}) == 1.0 and big.extract({"status": "declined"}) == 0.0
    assert has_country.extract({"country": "DE"}) == 1.0 and has_country.extract({}) == 0.0


BAD = [
    ({"metrics": []}, "metrics", "non-empty"),
    ({"metrics": [{"name": "Amount", "kind": "value", "source": "amount"}]}, "metrics[0].name", "lower case"),
    ({"metrics": [{"name": "a", "kind": "valu", "source": "amount"}]}, "metrics[0].kind", "value, flag"),
    ({"metrics": [{"name": "a", "kind": "value"}]}, "metrics[0].source", "dotted field path"),
    ({"metrics": [{"name": "a", "kind": "flag"}]}, "metrics[0].when", "field"),
    ({"metrics": [{"name": "a", "kind": "flag", "when": {"field": "s", "like": "x"}}]}, "metrics[0].when", "equals"),
    ({"metrics": [{"name": "a", "kind": "value", "source": "amount", "sorce": "x"}]}, "metrics[0].sorce",
     "unknown key"),
    ({"metrics": [{"name": "a", "kind": "value", "source": "x"}, {"name": "a", "kind": "value", "source": "y"}]},
     "metrics[1].name", "twice"),
    ({"metrics": [{"name": "a", "kind": "value", "source": "x"}], "dimension_sets": [["a", "a"]]},
     "dimension_sets[0]", "twice"),
    ({"metrics": [{"name": "a", "kind": "value", "source": "x"}], "window_seconds": [7]}, "window_seconds", "day"),
    ({"metrics": [{"name": "a", "kind": "value", "source": "x"}], "metric": []}, "metric", "unknown key"),
]


@pytest.mark.parametrize("raw, key, reason", BAD)
def test_a_bad_catalog_is_refused_with_file_key_and_fix(raw: dict, key: str, reason: str, tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: ")
    assert reason in message and "fix:" in message


def test_unreadable_or_broken_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("metrics: [\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(broken)


@pytest.mark.parametrize("text, key, lines", [
    # two `by:` in one metric: YAML kept the last, and amounts of all currencies were added up
    ("metrics:\n  - name: amount\n    kind: value\n    source: amount\n    by: [currency]\n    by: []\n",
     "metrics[0].by", (5, 6)),
    ("metrics:\n  - {name: a, kind: value, source: amount}\ndimension_sets: [[]]\nmetrics: []\n", "metrics", (1, 4)),
    ("metrics:\n  - name: ok\n    kind: flag\n    when: {field: status, equals: approved, field: country}\n",
     "metrics[0].when.field", (4, 4)),
])
def test_a_key_written_twice_is_refused_with_its_lines(text: str, key: str, lines: tuple[int, int],
                                                        tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert str(err.value).startswith(f"{path}: {key}: written twice (lines {lines[0]} and {lines[1]}); ")
    assert "fix: write " in str(err.value)


def test_a_merge_key_is_no_repeat(tmp_path: Path) -> None:
    """`<<: *base` then an own key of the same name is YAML's override, not a mistake."""
    path = tmp_path / "catalog.yaml"
    path.write_text("metrics:\n  - &base {name: a, kind: value, source: amount, by: [currency]}\n"
                    "  - <<: *base\n    name: b\n")
    assert load_catalog(path).metric_names == ("a", "b")


def _event(amount: str = "1", extra: str = "") -> Any:
    """The PaymentEvent of a valid body whose amount and extra members are given as JSON text."""
    from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event

    body = ('{"event_id": "e", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", '
            f'"amount": {amount}, "currency": "EUR", "payment_method": "card", "status": "approved"'
            f'{", " + extra if extra else ""}}}')
    event = parse_event(InboundEvent(body=body.encode(), partition_id="0", sequence_number=1))
    assert isinstance(event, PaymentEvent), event
    return event


_FLAG = {"name": "approved", "kind": "flag", "when": {"field": "status", "equals": "approved"}}
_AMOUNT = {"name": "amount", "kind": "value", "source": "amount"}


@pytest.mark.parametrize("changes, key, reason, fix", [
    # a deployed `by:` typo would add up amounts of different currencies
    ({"metrics": [{**_AMOUNT, "by": ["curency"]}]}, "metrics[0].by",
     "'curency' is no field of the event contract (did you mean 'currency'?)", "write currency"),
    ({"dimension_sets": [[], ["payment_methd"]]}, "dimension_sets[1]", "(did you mean 'payment_method'?)",
     "write payment_method"),
    ({"dimension_sets": [["attribute.channel"]]}, "dimension_sets[0]", "(did you mean 'attributes.channel'?)",
     "write attributes.channel"),
    ({"dimension_sets": [["currency.code"]]}, "dimension_sets[0]", "'currency' is a field of the event contract "
     "but no object", "write currency, or a path under attributes or card"),
    ({"dimension_sets": [["merchantid"]]}, "dimension_sets[0]", "(did you mean 'merchant_id'?)",
     "list it first in extra_fields: [merchantid]"),
    ({"extra_fields": ["currency"]}, "extra_fields", "'currency' is a field of the event contract already",
     "remove 'currency' from extra_fields"),
    # a metric's source or condition field mistyped would have no row, or be 0 for every event
    ({"metrics": [{**_AMOUNT, "source": "amout"}]}, "metrics[0].source", "(did you mean 'amount'?)", "write amount"),
    ({"metrics": [{**_AMOUNT, "source": "procesing_ms"}]}, "metrics[0].source", "(did you mean 'processing_ms'?)",
     "write processing_ms"),
    ({"metrics": [{**_AMOUNT, "source": "amount.value"}]}, "metrics[0].source", "'amount' is a field of the event "
     "contract but no object", "write amount, or a path under attributes or card"),
    ({"metrics": [{**_FLAG, "when": {"field": "statuss", "equals": "approved"}}]}, "metrics[0].when.field",
     "(did you mean 'status'?)", "write status"),
    ({"metrics": [{**_FLAG, "when": {"field": "atributes.channel", "exists": True}}]}, "metrics[0].when.field",
     "(did you mean 'attributes.channel'?)", "write attributes.channel"),
    # a second audit, of custom catalogs: accepted, then silently nothing or wrong numbers
    ({"window_seconds": [3600]}, "window_seconds", "lacks 300, the 5-minute window every KPI reader reads",
     "add 300"),
    ({"dimension_sets": [[], ["count"]]}, "dimension_sets[1]", "overwritten by the KPI rows' own 'count' column",
     "group by another field"),
    ({"dimension_sets": [["p95"]]}, "dimension_sets[0]", "'p95' column", "group by another field"),
    ({"metrics": [{**_FLAG, "when": {"field": "status", "in": []}}]}, "metrics[0].when.in",
     "must be a list of at least one value", "in: [approved, pending]"),
    ({"metrics": [{**_FLAG, "when": {"field": "status", "equals": "aproved"}}]}, "metrics[0].when.equals",
     "'aproved' is no status a valid event has (did you mean 'approved'?)", "use one of approved, declined"),
    ({"metrics": [{**_FLAG, "when": {"field": "status", "in": ["declined", "faild"]}}]}, "metrics[0].when.in[1]",
     "(did you mean 'failed'?)", "use one of"),
    ({"metrics": [{**_FLAG, "when": {"field": "status", "equals": 1}}]}, "metrics[0].when.equals",
     "status holds a string (quote it)", "compare status with a string"),
    ({"metrics": [{**_FLAG, "when": {"field": "currency", "not_equals": "eur"}}]}, "metrics[0].when.not_equals",
     "'eur' is not an ISO 4217 code", "'EUR'"),
    ({"metrics": [{**_FLAG, "when": {"field": "processing_ms", "equals": "100"}}]}, "metrics[0].when.equals",
     "processing_ms holds a number", "compare processing_ms with a number"),
    ({"metrics": [{**_FLAG, "when": {"field": "amount", "in": [10, -1]}}]}, "metrics[0].when.in[1]",
     "amount is a number from 0, below 1e+18, so -1 never equals it", "compare amount with a number from 0"),
    ({"metrics": [{**_FLAG, "when": {"field": "processing_ms", "equals": 100.5}}]}, "metrics[0].when.equals",
     "processing_ms is a whole number from 0 to 2^53", "compare processing_ms with a whole number"),
    ({"metrics": [{**_FLAG, "when": {"field": "attributes.tags", "equals": ["vip", "new"]}}]},
     "metrics[0].when.equals", "is a list or mapping: a condition compares one value", "use in: [...]"),
    ({"metrics": [{**_FLAG, "when": {"field": "attributes.x", "in": [1, [1]]}}]}, "metrics[0].when.in[1]",
     "is a list or mapping", "use in: [...]"),
])
def test_a_field_outside_the_event_contract_is_refused(changes: dict[str, Any], key: str, reason: str, fix: str,
                                                           tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"metrics": [_FLAG], **changes}))
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: ") and reason in message.split("; fix: ")[0]
    assert fix in message.split("; fix: ")[1]


def test_contract_fields_object_paths_and_declared_extra_fields_are_dimensions() -> None:
    """Every typed field (any schema version), any path under attributes or card, and a
    top-level field beyond the contract once listed in extra_fields (the contract allows
    such fields in events; docs/changing-the-event.md groups by one)."""
    from txmetrics.core.fields import SCHEMA
    from txmetrics.core.metrics import dimension_tuple

    typed = [c.name for c in SCHEMA.event_fields]
    cat = parse_catalog({"metrics": [{**_AMOUNT, "by": ["currency"]}, _FLAG], "extra_fields": ["loyalty_tier"],
                         "dimension_sets": [[], *([f] for f in typed), ["attributes.channel", "card.network"],
                                            ["loyalty_tier"]]})
    assert ("loyalty_tier",) in cat.dimension_sets and len(cat.dimension_sets) == len(typed) + 3
    # a field of its own that is no near miss of a contract field needs no declaration (a catalog
    # that worked before extra_fields still loads); a near miss does, and is then taken
    own = (("region",), ("country_code",), ("event_kind",), ("merchant",), ("merchant_tier",), ("transaction_type",))
    assert parse_catalog({"metrics": [_FLAG], "dimension_sets": [list(d) for d in own]}).dimension_sets == own
    assert parse_catalog({"metrics": [_FLAG], "extra_fields": ["merchantid"],
                          "dimension_sets": [["merchantid"]]}).dimension_sets == (("merchantid",),)
    # the same rule for the fields a metric reads: fields of their own, paths under objects, listed near misses
    read = [{"name": "risk", "kind": "value", "source": "attributes.risk_score"},
            {"name": "loyalty", "kind": "value", "source": "loyalty_points"},
            {"name": "mid", "kind": "value", "source": "merchantid"},
            {"name": "visa", "kind": "flag", "when": {"field": "card.network", "equals": "visa"}},
            {"name": "gold", "kind": "flag", "when": {"field": "loyalty_tier", "equals": "gold"}},
            # another unit of the same quantity is a field of its own, not a typo of processing_ms
            {"name": "micros", "kind": "value", "source": "processing_us"},
            {"name": "secs", "kind": "value", "source": "processing_s"}]
    assert parse_catalog({"metrics": read, "extra_fields": ["merchantid"]}).metric_names == (
        "risk", "loyalty", "mid", "visa", "gold", "micros", "secs")
    with pytest.raises(CatalogError, match=r"did you mean 'processing_ms'"):      # the unit itself mistyped
        parse_catalog({"metrics": [{"name": "a", "kind": "value", "source": "processing_mss"}]})
    event = _event(extra='"loyalty_tier": "gold"')
    assert dimension_tuple(event, ("loyalty_tier",))[-1] == '{"loyalty_tier":"gold"}'     # its jsonb slice


@pytest.mark.parametrize("metric", [{"name": "amount\n", "kind": "value", "source": "amount"},
                                    {"name": "amount", "kind": "value", "source": "amount\n"}])
def test_names_and_paths_are_matched_whole(metric: dict[str, str]) -> None:
    """`$` matches before a trailing newline: names and paths are matched with fullmatch."""
    with pytest.raises(CatalogError):
        parse_catalog({"metrics": [metric], "dimension_sets": [[]]})
    with pytest.raises(CatalogError):
        parse_catalog({"metrics": [{"name": "a", "kind": "value", "source": "a"}], "dimension_sets": [["merchant_id\n"]]})


@pytest.mark.parametrize("value, expected", [("12.5", 12.5), (" 3 ", 3.0), ("-1e3", -1000.0), (".5", 0.5), (7, 7.0),
                                             ("sNaN", None), ("nan", None), ("Infinity", None), ("1e400", None),
                                             ("0x10", None), (2**1100, None), ("", None)])
def test_text_and_huge_values_never_raise(value: object, expected: float | None) -> None:
    risk = parse_catalog({"metrics": [{"name": "risk", "kind": "value", "source": "risk"}]}).metrics[0]
    assert risk.extract({"risk": value}) == expected


_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                   st.decimals(allow_nan=False, allow_infinity=False), st.text(max_size=8),  # as JSON decodes
                   st.sampled_from(["1.5", " 2 ", "sNaN", "1e999", "approved", "-0"]),
                   st.lists(st.integers(), max_size=1), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries({"x": _VALUE, "status": _VALUE, "a": st.one_of(
    st.none(), st.fixed_dictionaries({"y": _VALUE}), _VALUE)}), max_size=8))
def test_a_metrics_values_of_a_batch_equal_its_value_event_by_event(documents: list[dict[str, Any]]) -> None:
    """Metric.values (one pass over the batch, used by ingest) gives exactly Metric.extract
    of each document, for every kind of metric and every JSON value."""
    catalog = parse_catalog({"metrics": [
        {"name": "top", "kind": "value", "source": "x"}, {"name": "nested", "kind": "value", "source": "a.y"},
        {"name": "flag_eq", "kind": "flag", "when": {"field": "status", "equals": "approved"}},
        {"name": "flag_in", "kind": "flag", "when": {"field": "x", "in": ["approved", 1]}},
        {"name": "flag_nested", "kind": "flag", "when": {"field": "a.y", "equals": 1}},
        {"name": "flag_exists", "kind": "flag", "when": {"field": "x", "exists": True}},
        {"name": "flag_number", "kind": "flag", "when": {"field": "x", "equals": 0.1}},
        {"name": "flag_true", "kind": "flag", "when": {"field": "x", "not_equals": True}}]})
    for metric in catalog.metrics:
        assert metric.values(documents) == [metric.extract(d) for d in documents], metric.name


def test_a_condition_compares_json_values_numbers_by_their_value_and_no_kind_with_another() -> None:
    """An independent audit: `equals: 0.1` never held for an event's 0.1 (the YAML float's
    binary value against the event's exact Decimal), `in: [0.3]` missed 0.3, and `equals: 1`
    held for JSON true (Python's True == 1). A condition compares JSON values: a number by its
    value in any form, a string, a boolean or null only with its own kind."""
    catalog = parse_catalog({"metrics": [
        {"name": "tenth", "kind": "flag", "when": {"field": "attributes.score", "equals": 0.1}},
        {"name": "listed", "kind": "flag", "when": {"field": "attributes.score", "in": [1.5, 0.3, "7"]}},
        {"name": "one", "kind": "flag", "when": {"field": "attributes.score", "equals": 1}},
        {"name": "yes", "kind": "flag", "when": {"field": "attributes.score", "equals": True}},
        {"name": "not_null", "kind": "flag", "when": {"field": "attributes.score", "not_equals": None}}]})
    scores = ["0.1", "0.10", "1E-1", "0.3", "3e-1", "1", "1.0", "true", '"1"', '"7"', "7", "null", "0.1000001"]
    documents = [_event(extra=f'"attributes": {{"score": {score}}}').document for score in scores]
    held = {m.name: [score for score, doc in zip(scores, documents, strict=True) if m.extract(doc) == 1.0]
            for m in catalog.metrics}
    assert held == {"tenth": ["0.1", "0.10", "1E-1"], "listed": ["0.3", "3e-1", '"7"'], "one": ["1", "1.0"],
                    "yes": ["true"], "not_null": [s for s in scores if s != "null"]}
    for metric in catalog.metrics:
        assert metric.values(documents) == [metric.extract(d) for d in documents]


def test_the_contracts_example_catalog_is_understood_and_splits_amounts_by_currency() -> None:
    """Contract section 5: 'At least this form is understood' (its amount has no `by`), and
    amounts of different currencies are never added together: a metric reading amount is
    split by currency whatever its `by` says (a review found the example refused)."""
    contract = (Path(__file__).parents[1] / "docs" / "contract.md").read_text()
    text = contract.split("## 5. Metric catalog", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    catalog = parse_catalog_text(text)
    assert catalog.metric_names == ("amount", "approved")
    amount = catalog.metrics[0]
    assert amount.by == ("currency",) and all("currency" in s for s in catalog.sets_for(amount))
    assert parse_catalog({"metrics": [{"name": "volume", "kind": "value", "source": "amount", "by": ["status"]}]}
                         ).metrics[0].by == ("status", "currency")


def test_a_condition_reads_its_yaml_number_as_written() -> None:
    """A review: YAML 1.1 reads 1e-1 (no dot, or an unsigned exponent) as a string, so the
    flag was 0 for every event; and a float's nearest double dropped written digits
    (0.1000000000000000001 compared as 0.1)."""
    text = ("metrics:\n"
            "  - {name: tenth, kind: flag, when: {field: attributes.x, equals: 1e-1}}\n"
            "  - {name: long, kind: flag, when: {field: attributes.x, in: [0.1000000000000000001, 1.5E3]}}\n")
    tenth, long = parse_catalog_text(text).metrics
    for x, expected in ((Decimal("0.1"), (1.0, 0.0)), (Decimal("0.1000000000000000001"), (0.0, 1.0)),
                        (1500, (0.0, 1.0)), ("1e-1", (0.0, 0.0))):
        assert (tenth.extract({"attributes": {"x": x}}), long.extract({"attributes": {"x": x}})) == expected, x


def test_conditions_on_contract_fields_that_valid_events_can_meet_are_taken() -> None:
    catalog = parse_catalog({"metrics": [
        {"name": "a", "kind": "flag", "when": {"field": "status", "in": ["approved", "pending"]}},
        {"name": "b", "kind": "flag", "when": {"field": "event_type", "equals": None}},
        {"name": "c", "kind": "flag", "when": {"field": "country", "not_equals": "DE"}},
        {"name": "d", "kind": "flag", "when": {"field": "amount", "equals": 0}},
        {"name": "e", "kind": "flag", "when": {"field": "attributes.status", "equals": 1}},
        {"name": "f", "kind": "value", "source": "amount", "by": ["currency"]}]})
    assert catalog.metric_names == ("a", "b", "c", "d", "e", "f")


def test_a_metric_reads_free_form_keys_a_dimension_cannot_name() -> None:
    """Keys under attributes may hold hyphens or start with a digit (a second audit: both
    refused, the condition's with a wrong message). A metric only looks them up; a dimension
    name goes into SQL, so it stays a plain path."""
    catalog = parse_catalog({"metrics": [
        {"name": "risk", "kind": "value", "source": "attributes.risk-score"},
        {"name": "secure", "kind": "flag", "when": {"field": "attributes.3ds", "equals": True}}]})
    document = {"attributes": {"risk-score": 0.5, "3ds": True}}
    assert [m.extract(document) for m in catalog.metrics] == [0.5, 1.0]
    with pytest.raises(CatalogError, match=r"metrics\[0\]\.when\.field: 'status code' is not a dotted field path"):
        parse_catalog({"metrics": [{"name": "a", "kind": "flag", "when": {"field": "status code", "equals": "x"}}]})
    with pytest.raises(CatalogError, match=r"dimension_sets\[0\]: .*not a list of field paths"):
        parse_catalog({"metrics": [_FLAG], "dimension_sets": [["attributes.risk-score"]]})


def test_a_flag_on_amount_reads_its_decimal_strings_as_numbers() -> None:
    """Contract section 1: amount is a JSON number or a decimal string; a value metric reads
    "10.00" as 10, so a flag compares it as the number too (a second audit: `equals: 0`
    missed "0.00", `in: [10, 20]` missed "10.00")."""
    catalog = parse_catalog({"metrics": [
        {"name": "free", "kind": "flag", "when": {"field": "amount", "equals": 0}},
        {"name": "round", "kind": "flag", "when": {"field": "amount", "in": [10, 20]}},
        {"name": "paid", "kind": "flag", "when": {"field": "amount", "not_equals": 0}}]})
    amounts = ['"0.00"', '"0"', "0", "0.0", '"10.00"', '" 20 "', "10", '"10.5"']
    documents = [_event(amount=a).document for a in amounts]
    held = {m.name: [a for a, doc in zip(amounts, documents, strict=True) if m.extract(doc) == 1.0]
            for m in catalog.metrics}
    assert held == {"free": ['"0.00"', '"0"', "0", "0.0"], "round": ['"10.00"', '" 20 "', "10"],
                    "paid": ['"10.00"', '" 20 "', "10", '"10.5"']}
    for metric in catalog.metrics:
        assert metric.values(documents) == [metric.extract(d) for d in documents]


@pytest.mark.parametrize("operand, reason", [(".nan", "is no JSON number"), (".inf", "is no JSON number"),
                                             ("2026-03-01", "(date) is no JSON value")])
def test_a_condition_no_event_can_meet_is_refused(operand: str, reason: str) -> None:
    with pytest.raises(CatalogError, match=rf"<catalog>: metrics\[0\]\.when\.equals: .*{re.escape(reason)}"):
        parse_catalog_text(f"metrics:\n  - {{name: a, kind: flag, when: {{field: attributes.x, equals: {operand}}}}}\n")
    with pytest.raises(CatalogError, match=r"metrics\[0\]\.when\.in\[1\]: "):
        parse_catalog_text(f"metrics:\n  - {{name: a, kind: flag, when: {{field: attributes.x, in: [1, {operand}]}}}}\n")


@pytest.mark.parametrize(("written", "value"), [("010", 8), ("1_000", 1000), ("1:30", 90), ("0b11", 3), ("-0x1F", -31)])
def test_yaml_1_1_integer_forms_are_refused_with_the_fix(written: str, value: int) -> None:
    """PyYAML reads `equals: 010` as 8 (octal), so the flag compared events' 10 with 8 and was
    0 for every event; JSON and YAML 1.2 read these forms otherwise (10, or text)."""
    text = f"metrics:\n  - {{name: f, kind: flag, when: {{field: attributes.x, equals: {written}}}}}\n"
    with pytest.raises(CatalogError) as err:
        parse_catalog_text(text, "cat.yaml")
    message = str(err.value)
    assert message.startswith(f"cat.yaml: not valid YAML ({written} is the integer {value} to YAML 1.1 but not to JSON")
    assert f"quote it for text ('{written}')" in message and "line 2" in message
    for plain, operand in (("10", 10), ("-5", -5), ("0x1F", 31), (f"'{written}'", written)):
        (metric,) = parse_catalog_text(text.replace(written, plain)).metrics
        assert metric.when is not None and metric.when.operand == operand


# Numbers as a metric source may hold them: Decimals of every exponent (beyond the double range
# too) and the special ones, number text as it stands, with blanks around it, near the length
# limit, beyond the double range, and text float() takes that is no number text here.
_DECIMAL = st.one_of(st.decimals(allow_nan=True, allow_infinity=True),
                     st.builds(lambda digits, exponent: Decimal(f"{digits}E{exponent}"),
                               st.integers(-10**30, 10**30), st.integers(-400, 400)),
                     st.sampled_from([Decimal("sNaN"), Decimal("-NaN"), Decimal("1E+308"), Decimal("1.8E+308"),
                                      Decimal("-1E-400"), Decimal("4111111111111111")]))
_NUMBER_TEXT = st.one_of(
    st.from_regex(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})(?:[eE][+-]?[0-9]{1,3})?", fullmatch=True),
    st.integers(90, 110).map(lambda n: "1" + "0" * (n - 1)),
    st.integers(90, 110).map(lambda n: "0." + "5" * (n - 2)))
_TEXT = st.one_of(_NUMBER_TEXT, st.tuples(st.sampled_from(["", " ", "\t", "\n", "\u00a0"]), _NUMBER_TEXT,
                                          st.sampled_from(["", " ", "\r\n", "\u2003"])).map("".join),
                  st.sampled_from(["1_000", "inf", "-Infinity", "nan", "\u0661\u0662", "0x10", "1e", "", " ", "."]),
                  st.text(max_size=6))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_DECIMAL, _TEXT, st.integers(), st.floats(), st.none(), st.booleans()), max_size=20))
def test_the_usual_numbers_read_without_a_call_equal_the_general_conversion(values: list[Any]) -> None:
    """Metric.values reads an int, a finite Decimal and plain number text in its comprehension;
    its answers equal extract's (`_as_metric_value`, then the card check of a source that is
    no typed column) for every value, those it leaves to the general path included."""
    catalog = parse_catalog({"metrics": [{"name": "amount", "kind": "value", "source": "amount"},
                                         {"name": "score", "kind": "value", "source": "score"}]})
    documents = [{"amount": v, "score": v} for v in values]
    for metric in catalog.metrics:
        assert metric.values(documents) == [metric.extract(d) for d in documents], metric.name
