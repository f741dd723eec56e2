"""Hostile request bodies, shared by the core's tests (test_core_hostile_input.py) and the
ingest tests (test_ingest_bad_input.py): the issue-11 corpus (`HOSTILE`, each with the error
code it must get), the codes bad content may get (`CODES`), and a hypothesis strategy that
builds bodies with numbers of any size, deep nesting, card numbers, 1 MiB padding and cuts
(`hostile_body`)."""

from __future__ import annotations

import re

import msgspec
from hypothesis import strategies as st

VALID = ('"event_id": "e-1", "transaction_id": "t-1", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m-1", '
         '"currency": "USD", "payment_method": "card", "status": "approved"')
# every code parse_event may give for bad content; internal_error (a bug) must never appear
CODES = re.compile(r"body_(not_utf8|not_json|not_object|too_large|too_deep)|number_out_of_range|"
                   r"(missing|invalid)_[a-z_]+|card_number_in_(event_id|transaction_id|merchant_id|amount|processing_ms)")


def body(**raw: str) -> bytes:
    """A valid event with fields given as raw JSON text (numbers exactly as written)."""
    fields = {"amount": "1", **raw}
    return ("{" + VALID + "".join(f', "{k}": {v}' for k, v in fields.items()) + "}").encode()


HOSTILE = [
    # issue 11, item 3: decimal.InvalidOperation, ValueError (int string limit), minutes of int()
    ("amount 1e999999999999999999999", body(amount="1e999999999999999999999"), "number_out_of_range"),
    ("processing_ms 1E+100000", body(processing_ms="1E+100000"), "number_out_of_range"),
    ("processing_ms 1E+99999999", body(processing_ms="1E+99999999"), "number_out_of_range"),
    ("processing_ms 1E+1000000", body(processing_ms="1E+1000000"), "number_out_of_range"),
    ("attributes 1E+99999999", body(attributes='{"x": 1E+99999999}'), "number_out_of_range"),
    ("a 5,000-character number", body(attributes='{"x": 1.' + "5" * 5000 + "}"), "number_out_of_range"),
    ("an integer of 4,301 digits", body(attributes='{"x": ' + "7" * 4301 + "}"), "number_out_of_range"),
    ("processing_ms 1E+500", body(processing_ms="1E+500"), "invalid_processing_ms"),
    ("processing_ms 1E-500", body(processing_ms="1E-500"), "invalid_processing_ms"),
    ("amount 1E+500", body(amount="1E+500"), "invalid_amount"),
    ("amount -1E+500", body(amount="-1E+500"), "invalid_amount"),
    ("amount 1E-500", body(amount="1E-500"), "invalid_amount"),
    # nesting: RecursionError at 1,000 levels (about 500 through masking with a digit run)
    ("1,000 nested arrays", body(attributes='{"x": ' + "[" * 1000 + "]" * 1000 + "}"), "body_too_deep"),
    ("500 nested with a card", body(attributes='{"x": ' + "[" * 500 + '"4111111111111111"' + "]" * 500 + "}"),
     "body_too_deep"),
    ("100,000 nested objects", body(attributes='{"x": ' + '{"a":' * 100_000 + "1" + "}" * 100_000 + "}"),
     "body_too_deep"),
    ("an unclosed 500,000", b"[" * 500_000, "body_too_deep"),
    ("an unterminated string of escaped quotes", b'[' * 100 + b'"' + b'\\"' * 400_000, "body_too_deep"),
    ("a body of quotes", b'{"a": ' + b'"' * 1_000_000, "body_not_json"),
    # issue 11: sane times only, refused per event (ValueError in the UTC-day helper before)
    ("year 1 with an offset", body(occurred_at='"0001-01-01T00:00:00+00:01"'), "invalid_occurred_at"),
    ("year 9999 with an offset", body(occurred_at='"9999-12-31T23:59:59-00:01"'), "invalid_occurred_at"),
    ("the last microsecond of 9999", body(occurred_at='"9999-12-31T23:59:59.999999Z"'), "invalid_occurred_at"),
    # a bare \u (a body cut inside an escape) once made raw-text masking raise: internal_error
    ("a card, then a bare \\u", b"4111111111111111 \\u", "body_not_json"),
    ("cut inside an escape after a card", b'{"n": "4111111111111111", "x": "\\u', "body_not_json"),
    ("1 MiB of escaped digits, cut", b'{"n": "' + b"\\u0030" * 174_760 + b"\\u00", "body_not_json"),
]


# --- fuzz --------------------------------------------------------------------------------------

def number_text() -> st.SearchStrategy[str]:
    """JSON numbers of any size: long integer parts, long fractions, huge exponents."""
    digits = st.one_of(st.integers(0, 10**40).map(str), st.integers(1, 6000).map(lambda n: "9" * n))
    exponent = st.one_of(st.just(""), st.tuples(st.sampled_from("eE"), st.sampled_from(["", "+", "-"]),
                                                st.integers(0, 10**25)).map(lambda t: f"{t[0]}{t[1]}{t[2]}"))
    fraction = st.one_of(st.just(""), st.integers(0, 10**30).map(lambda n: f".{n}"))
    return st.tuples(st.sampled_from(["", "-"]), digits, fraction, exponent).map(lambda t: "".join(t))


def luhn_number() -> st.SearchStrategy[str]:
    def complete(prefix: str) -> str:
        from txmetrics.core.masking import luhn_ok
        return next(prefix + c for c in "0123456789" if luhn_ok(prefix + c))
    return st.integers(10**11, 10**18 - 1).map(lambda n: complete(str(n)))


def json_text(value: str) -> str:
    return msgspec.json.encode(value).decode()


any_string = st.one_of(st.text(max_size=60), st.text(alphabet="0123456789 -.+eE_x", max_size=40),
                       luhn_number().map(lambda p: f"card {p}"), luhn_number())
raw_value = st.one_of(number_text(), any_string.map(json_text), luhn_number(),
                      luhn_number().map(lambda p: f"{p}.0"), luhn_number().map(lambda p: f"-{p}"),
                      luhn_number().map(lambda p: f"{p[0]}.{p[1:]}e{len(p) - 1}"),
                      st.sampled_from(["null", "true", "[]", "{}"]))
FIELDS = ["event_id", "transaction_id", "merchant_id", "occurred_at", "amount", "currency", "payment_method",
          "status", "event_type", "processing_ms", "country", "unknown", "attributes"]


@st.composite
def hostile_body(draw: st.DrawFn) -> bytes:
    field = draw(st.sampled_from(FIELDS))
    value = draw(raw_value)
    depth = draw(st.one_of(st.just(0), st.integers(0, 80), st.integers(0, 3000)))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}")]))
    value = opener * depth + value + closer * depth
    if field == "attributes":
        value = '{"x": ' + value + "}"
    raw = body(**{field: value})
    pad = draw(st.sampled_from([0, 0, 0, 1000, 200_000, 1024 * 1024 - len(raw) - 20, 1024 * 1024]))
    if pad > 0:
        raw = raw[:-1] + b', "pad": "' + b"x" * pad + b'"}'
    if draw(st.booleans()):    # cut anywhere: not JSON any more
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw
