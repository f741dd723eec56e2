"""YAML text to Python data, refusing a key written twice in one mapping, at any depth.

PyYAML keeps the last of two equal keys and says nothing: a second `tables:` block appended
to lifecycle/dev.yaml silently replaced the first (its failed_items and aggregate_histograms
retention reverted to the base values), and a metric written with two `by:` keys would be
aggregated by the last one only. Both config loaders read their files through `load_yaml`
(lifecycle/policy.py for the retention policies, core/catalog.py for the metric catalog) and
turn `DuplicateKeyError` into their own refusal (file, key, line, fix).

A merge key (`<<: *defaults`) is not a repeat: the mapping's own keys override the merged
ones by design. Pure: takes text, no I/O.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ValueError):
    """A key written twice in one mapping. `key`: its dotted path from the top of the document
    (`tables`, `blob_rules[0].name`); `line` and `first_line`: 1-based lines of the repeat
    and of the first occurrence."""

    def __init__(self, key: str, line: int, first_line: int) -> None:
        super().__init__(f"{key}: written twice (lines {first_line} and {line})")
        self.key, self.line, self.first_line = key, line, first_line

    @property
    def reason(self) -> str:
        return (f"written twice (lines {self.first_line} and {self.line}); YAML would keep only the last one "
                "and silently drop the first")

    @property
    def fix(self) -> str:
        name = self.key.rsplit(".", 1)[-1]
        return f"write '{name}' once there: merge the two into one (or delete the one you do not mean)"


class _Loader(yaml.SafeLoader):
    """SafeLoader that checks the composed document for repeated keys before building it."""

    def check_unique_keys(self, node: Node) -> None:
        seen_nodes: set[int] = set()          # an alias may point back at its parent: visit each node once
        stack: list[tuple[Node, str]] = [(node, "")]
        while stack:
            current, path = stack.pop()
            if id(current) in seen_nodes:
                continue
            seen_nodes.add(id(current))
            if isinstance(current, SequenceNode):
                stack.extend((item, f"{path}[{i}]") for i, item in enumerate(current.value))
            elif isinstance(current, MappingNode):
                first: dict[Any, int] = {}
                for key_node, value_node in current.value:
                    if key_node.tag == _MERGE_TAG:
                        stack.append((value_node, path))
                        continue
                    name = self._key_of(key_node)
                    where = f"{path}.{name}" if path else str(name)
                    line = key_node.start_mark.line + 1
                    if name is not None:
                        if name in first:
                            raise DuplicateKeyError(where, line, first[name])
                        first[name] = line
                    stack.append((value_node, where))

    def _key_of(self, key_node: Node) -> Any:
        """The key as the mapping will hold it (`1` and `0x1` are one key), or None for a
        key that is no scalar (the constructor refuses what it cannot hash)."""
        if not isinstance(key_node, ScalarNode):
            return None
        value = self.construct_object(key_node, deep=True)
        try:
            hash(value)
        except TypeError:
            return None
        return value


_FLOAT_TAG = "tag:yaml.org,2002:float"
_INT_TAG = "tag:yaml.org,2002:int"
# Integers as JSON and YAML 1.2 write them (a sign allowed), and hexadecimal (the same number
# in YAML 1.1 and 1.2). Every other integer form of YAML 1.1 means something else elsewhere.
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+")   # -0x1F is text to YAML 1.2
# Numbers as JSON writes them that YAML 1.1 reads as strings: an exponent without a dot or
# without a sign (1e-1, 1E3, 1.5e3). As exact numbers they are a number like any other.
_JSON_EXPONENT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


class _PlainIntLoader(_Loader):
    """_Loader that takes integers only as JSON and YAML 1.2 write them (`construct_plain_int`)."""

    def construct_plain_int(self, node: ScalarNode) -> Any:
        """An integer as JSON writes it; YAML 1.1's other forms are refused: `010` is 8 (octal)
        to PyYAML and 10 to JSON and YAML 1.2, `1_000` and `1:30` (90, sexagesimal) are text to
        YAML 1.2, `0b11` is 3. A condition `equals: 010` compared events' 10 with 8, and a
        retention `dynamic_metrics: 010` kept 8 days, silently."""
        text = str(self.construct_scalar(node))
        if _PLAIN_INT.fullmatch(text) is None:
            raise YAML11IntegerError(text, self.construct_yaml_int(node), node.start_mark)
        return self.construct_yaml_int(node)


class YAML11IntegerError(yaml.constructor.ConstructorError):
    """An integer written in a form only YAML 1.1 reads as one (`_PlainIntLoader`): `what` is
    wrong, `fix` how to write it, `line` (1-based) where."""

    def __init__(self, text: str, value: int, mark: Any) -> None:
        self.what = (f"{text} is the integer {value} to YAML 1.1 but not to JSON or YAML 1.2 (a leading zero, "
                     "underscores, a colon, 0b, or a sign before 0x)")
        self.fix = f"write the number without them, or quote it for text ('{text}')"
        self.line = mark.line + 1
        super().__init__(None, None, f"{self.what}; {self.fix}", mark)


_PlainIntLoader.add_constructor(_INT_TAG, _PlainIntLoader.construct_plain_int)


class _ExactLoader(_PlainIntLoader):
    """_PlainIntLoader that reads every non-integer number as the Decimal of the text written
    (0.1 is 0.1, not the nearest double; 12345678901234567.5 keeps its last digit), exponent
    forms included; .inf and .nan stay floats (no Decimal is written so)."""

    def construct_exact_float(self, node: ScalarNode) -> Any:
        text = str(self.construct_scalar(node)).replace("_", "")
        try:
            return Decimal(text)
        except InvalidOperation:          # .inf, .nan, sexagesimal 1:30.5: YAML's own float
            return self.construct_yaml_float(node)


_ExactLoader.add_implicit_resolver(_FLOAT_TAG, _JSON_EXPONENT, list("-+0123456789."))
_ExactLoader.add_constructor(_FLOAT_TAG, _ExactLoader.construct_exact_float)


def load_yaml(text: str, *, exact_numbers: bool = False, plain_integers: bool = False) -> Any:
    """The data of one YAML document (None for an empty one), as yaml.safe_load gives it;
    `exact_numbers`: every non-integer number as a Decimal of its text (_ExactLoader), and
    integers as `plain_integers`; `plain_integers`: an integer in a YAML 1.1 form of its own
    (`010`, `1_000`, `1:30`, `0b11`) is refused (_PlainIntLoader).
    Raises yaml.YAMLError for invalid YAML, DuplicateKeyError for a repeated key."""
    loader = (_ExactLoader if exact_numbers else _PlainIntLoader if plain_integers else _Loader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        loader.check_unique_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
