"""Limits on untrusted JSON, checked before anything recurses or converts a number exactly.

An event body is at most 1 MiB, but within that it may nest 500,000 levels deep or write a
number as ``1E+99999999`` (an exact integer of 100 million digits). Decoders, masking and
`int()` would recurse or compute for minutes; these checks refuse such bodies up front, in
time linear in the body and a few nanoseconds per byte.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import numpy as np

MAX_DEPTH = 64               # nesting levels of arrays and objects (real events: under 10)
MAX_NUMBER_CHARS = 100       # characters of one JSON number with a fraction or an exponent
MAX_EXPONENT = 1000          # |decimal exponent| of such a number (doubles reach 10^308)


class NumberOutOfRange(ValueError):
    """A JSON number beyond MAX_NUMBER_CHARS or MAX_EXPONENT."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def detail(self) -> str:
        shown = self.text if len(self.text) <= 40 else f"{self.text[:20]}...{self.text[-12:]}"
        return (f"body holds the number {shown} ({len(self.text)} characters); numbers may have at most "
                f"{MAX_NUMBER_CHARS} characters and a decimal exponent within +-{MAX_EXPONENT}")


def bounded_decimal(text: str) -> Decimal:
    """A JSON number's text as an exact Decimal, once its size is known to be sane.

    Raises NumberOutOfRange beyond the limits (checked on the text's length first, so the
    conversion itself is cheap; Decimal refuses exponents past 10^18 digits by itself)."""
    if len(text) > MAX_NUMBER_CHARS:
        raise NumberOutOfRange(text)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise NumberOutOfRange(text) from None
    if not -MAX_EXPONENT <= value.adjusted() <= MAX_EXPONENT:
        raise NumberOutOfRange(text)
    return value


# A JSON string, escapes included. The closing quote is optional so that an unterminated
# string ends the match at the end of the body rather than failing (a failed match here is
# retried from each later quote: quadratic on a body of many quotes).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = np.zeros(256, dtype=np.int8)
_OPENERS[[ord("["), ord("{")]] = 1


def nesting_exceeds(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when arrays and objects in the JSON `body` nest deeper than `limit`.

    Usual bodies have fewer brackets than the limit in all, which settles it with two
    counts. Otherwise strings are cut out (brackets inside them do not nest) and the depth is
    the largest running sum of +1 per opening and -1 per closing bracket. For text that is
    not JSON the answer is still an upper bound on what a decoder could reach before failing."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    steps = _OPENERS[np.frombuffer(brackets, dtype=np.uint8)].astype(np.int64) * 2 - 1
    return int(np.cumsum(steps).max()) > limit
