"""Card-number (PAN) masking, PCI DSS style.

A candidate is a maximal run of digits in which single spaces or dashes may separate
groups (``4111 1111 1111 1111``, ``4111-1111-1111-1111``, ``4111111111111111``).
It is masked when it holds 13-19 digits and passes the Luhn check. When the whole run
does not qualify (say ``12 4111111111111111`` or ``4111 1111 1111 1111 2024``), every
contiguous sequence of its separator-delimited groups that holds 13-19 digits and passes
Luhn is masked too, so a card number cannot hide behind a neighbouring number.
A run of more than 19 digits with no separator is one long number, not a card.

Masking keeps the last four digits and the separators: ``****-****-****-1111``.
"""

from __future__ import annotations

import re
from typing import Any

# A run of digits, groups split by one space or dash. At least 13 digits in all.
_CANDIDATE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,}(?![0-9])")
_GROUP = re.compile(r"[0-9]+")
_QUICK = re.compile(r"[0-9](?:[ -]?[0-9]){12}")
# A looser pre-filter run first: any _QUICK match is such a run of digits, spaces and
# dashes, and scanning a character class is about twice as fast as _QUICK's alternation
# on a typical event (timestamps and amounts have digits but short runs).
_PRE = re.compile(r"[0-9][0-9 -]{11,}[0-9]")


# JSON may write any character as \uXXXX: "\u0034\u0031..." is a card number to every JSON
# reader. Text that is masked without being decoded (a failed event's payload) has its
# escaped digits, spaces and dashes written back as themselves first; an escaped backslash
# before "u" (an even run of backslashes) is left alone.
_ESCAPED_CARD_CHAR = re.compile(r"(?<!\\)((?:\\\\)*)\\u00(3[0-9]|20|2[dD])")


_ESCAPED_CARD_BYTE = re.compile(rb"\\u00(?:3[0-9]|20|2[dD])")


def has_escaped_card_characters(body: bytes) -> bool:
    """True when the raw JSON writes a digit, space or dash as a \\u escape (so a card
    number may hide from text scans). Other escapes, such as json.dumps' for non-ASCII
    letters, cannot form one."""
    return b"\\u" in body and _ESCAPED_CARD_BYTE.search(body) is not None


def unescape_card_characters(text: str) -> str:
    if "\\u" not in text:
        return text
    return _ESCAPED_CARD_CHAR.sub(lambda m: m.group(1) + chr(int(m.group(2), 16)), text)


def luhn_ok(digits: str) -> bool:
    total = 0
    parity = len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_pan(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _mask_span(text: str) -> str:
    """Mask all digits of `text` but the last four, keeping separators."""
    n_digits = sum(ch.isdigit() for ch in text)
    keep_from = n_digits - 4
    out = []
    seen = 0
    for ch in text:
        if ch.isdigit():
            out.append(ch if seen >= keep_from else "*")
            seen += 1
        else:
            out.append(ch)
    return "".join(out)


def _mask_run(run: str) -> str:
    digits = run.replace(" ", "").replace("-", "")
    if _is_pan(digits):
        return _mask_span(run)
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    if len(groups) < 2:
        return run
    chars = list(run)
    for i in range(len(groups)):
        length = 0
        for j in range(i, len(groups)):
            length += groups[j][1] - groups[j][0]
            if length > 19:
                break
            if length >= 13:
                start, end = groups[i][0], groups[j][1]
                span = run[start:end]
                if luhn_ok(span.replace(" ", "").replace("-", "")):
                    chars[start:end] = list(_mask_span(span))
    return "".join(chars)


def mask_text(text: str) -> str:
    """Return `text` with every card number masked (unchanged text is returned as is)."""
    if len(text) < 13 or not might_contain_pan(text):
        return text
    return _CANDIDATE.sub(lambda m: _mask_run(m.group(0)), text)


# bytes.translate + a substring search run in C at memory speed: digits, spaces and dashes
# become "0", everything else "x"; a PAN candidate needs a run of at least 13 of them.
_RUN_TABLE = bytes(0x30 if (0x30 <= b <= 0x39 or b in (0x20, 0x2D)) else 0x78 for b in range(256))
_RUN_13 = b"0" * 13


def digit_run_possible(body: bytes) -> bool:
    """Pre-filter on UTF-8 bytes, a few times cheaper than `might_contain_pan` on the usual
    event: False means no PAN (digits, space and dash are single bytes in UTF-8, so any
    candidate is a run of 13 or more of them)."""
    return _RUN_13 in body.translate(_RUN_TABLE)


def might_contain_pan(text: str) -> bool:
    """Cheap pre-check on a whole event body: False means no string in it can hold a PAN."""
    return _PRE.search(text) is not None and _QUICK.search(text) is not None


def mask_value(value: Any) -> Any:
    """Mask card numbers in every string (and object key) of a parsed JSON value.

    Integers of 13-19 digits that pass Luhn are replaced by their masked string form too:
    a card number sent as a JSON number must not reach storage either.
    """
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {mask_text(k): mask_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        digits = str(value)
        if _is_pan(digits):
            return _mask_span(digits)
    return value
