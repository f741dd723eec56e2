"""Card-number (PAN) masking, PCI DSS style (contract section 1).

**What is masked.** A *run* is a maximal sequence of digits in which single spaces or dashes
may separate groups (``4111 1111 1111 1111``, ``4111-1111-1111-1111``, ``4111111111111111``).
A run is split at its spaces into *words* (``3782-822463-10005`` is one word). A card number is
the whole run, or a sequence of consecutive words of it, that holds 13-19 digits, passes the
Luhn check, and is a token of its own:

* it must not touch a letter or a digit: ``x4111111111111111`` and the ``20-48041771665`` inside
  the UUID ``...-eb20-48041771665b`` are parts of larger words;
* a dash or an underscore joins words: a run that reaches a letter or digit through one
  belongs to a larger word (``ORD-2026-000123456789``, the UUID groups
  ``4abc-8123-412345678901``, ``evt_1234567890123456789``);
* a dot after a digit makes the run a fraction (``0.8444218515250481``, ``str(random.random())``);
* a leading plus makes it a phone number or a signed number (``+8613812345678``); a plus after a
  word is a URL-encoded space and separates (``card+4111111111111111`` is masked);
* a space separates words, so a card number next to another number is still found
  (``12 4111111111111111``, ``4111 1111 1111 1111 2024``);
* a window may also end before a dash of a word of a run that is a token of its own when
  the rest of the word is written as card data (a CVV of 3-4 digits, an expiry's month then
  "/", or two to three dashed groups of 1-4 digits), so ``4111111111111111-12/26``,
  ``4111 1111 1111 1111-123`` and ``4111111111111111-12-26`` are found; a window never starts
  after a dash (the UUID rule above).

A sequence of words inside a spaced IBAN that passes the IBAN check (ISO 13616, mod 97) is not
a card number (``DE89 3704 0044 0532 0130 00``). Masking keeps the last four digits and the
separators (``****-****-****-1111``) and changes nothing else.

Numbers: a JSON integer is a card number when its digits are one; a JSON number with a fraction
or an exponent when the integer digits it is written with, or the integer part of its exact
value, are one (``4111111111111111.00``, ``-4111111111111111``, ``4.111111111111111e15``). Digits
after the decimal point alone never are (``0.8444218515250481``), as for text.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from itertools import accumulate
from typing import Any

# A run of digits, groups split by one space or dash. At least 13 digits in all.
_CANDIDATE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,}(?![0-9])")
_QUICK = re.compile(r"[0-9](?:[ -]?[0-9]){12}")
# A looser pre-filter run first: any _QUICK match is such a run of digits, spaces and
# dashes, and scanning a character class is about twice as fast as _QUICK's alternation
# on a typical event (timestamps and amounts have digits but short runs).
_PRE = re.compile(r"[0-9][0-9 -]{11,}[0-9]")

# Checking every window of consecutive words costs Python work per window; a string with
# a huge grid of small numbers ("1 1 1 1 ...", 1 MiB) would take seconds. Past this many
# windows checked per string, or per document for `mask_value` (an audit: 523 strings of
# 19,000 windows each, one 1 MiB event, took 24 s when the budget was per string), a run is
# masked whole instead (every digit but its last four): bounded time (about 0.3 s at most on
# the slower bench machine, 300 s for a batch of 1,000 such events, half the function's
# timeout), and no card number can survive. Each window checked is counted, not an upper bound
# per run: 400 strings of 20 two-digit readings, 23 KB, check about 62,000 (reviews found an
# earlier bound masking such events). Text people write stays below it.
_WINDOW_BUDGET = 100_000


# JSON may write any character as \uXXXX: "\u0034\u0031..." is a card number to every JSON
# reader. Text that is masked without being decoded (a failed event's payload) has its
# escaped digits, spaces and dashes written back as themselves first; an escaped backslash
# before "u" (an even run of backslashes) is left alone.
_ESCAPED_CARD_CHAR = re.compile(r"(?<!\\)((?:\\\\)*)\\u00(3[0-9]|20|2[dD])")
_ESCAPED_CARD_BYTE = re.compile(rb"\\u00(?:3[0-9]|20|2[dD])")
# Any other JSON escape (or a backslash-escaped byte of a body that is not UTF-8). Text
# masked without decoding sees, at each end of an escape, the character it stands for.
_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)", re.DOTALL)
_SHORT_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _escape_view(escape: str) -> str:
    """Same length as `escape`, showing the character it stands for at both ends."""
    kind = escape[1]
    if kind == "u":
        # a bare "\\u" (cut short, or not JSON) stands for no character: seen as neither a
        # letter nor a digit, so it glues nothing to a card number next to it
        ch = chr(int(escape[2:], 16)) if len(escape) == 6 else "\x00"
    elif kind == "x":
        ch = "\x00"                      # a byte that is not UTF-8: no letter, no digit
    else:
        ch = _SHORT_ESCAPES.get(kind, kind)
    return ch + "\x00" * (len(escape) - 2) + ch


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


def _mask_digits(digits: str) -> str:
    return "*" * (len(digits) - 4) + digits[-4:]


# --- token boundaries ---------------------------------------------------------------------

def _glued_before(text: str, start: int) -> bool:
    """True when what precedes text[start] makes the digits there part of a larger token."""
    if start == 0:
        return False
    c = text[start - 1]
    if c.isalnum():
        return True
    if c == "+":                  # a sign (E.164 phone number), unless a word precedes it
        return start == 1 or not text[start - 2].isalnum()
    if start == 1:
        return False
    if c in "-_":                 # a hyphenated or snake_case word: ORD-2026-..., a UUID's groups
        return text[start - 2].isalnum()
    if c == ".":                  # the digits of a fraction
        return text[start - 2].isdigit()
    return False


def _glued_after(text: str, end: int) -> bool:
    """True when what follows text[end - 1] makes the digits part of a larger token."""
    if end == len(text):
        return False
    c = text[end]
    if c.isalnum():
        return True
    return c in "-_" and end + 1 < len(text) and text[end + 1].isalnum()


def _run_card_spans(text: str, start: int, end: int, budget: list[int]) -> list[tuple[int, int]] | None:
    """The card numbers in the run text[start:end], as (start, end) spans of `text`; None
    when the run is to be masked whole. `budget` holds the windows still to check (see
    _WINDOW_BUDGET): each window checked costs one."""
    run = text[start:end]
    follower = text[end] if end < len(text) else ""
    if " " not in run:            # one word: the whole run, or a card number before its expiry or CVV
        if _glued_before(text, start) or _glued_after(text, end):
            return []
        if _is_pan(run.replace("-", "")):
            return [(start, end)]
        return [(start, start + at) for at, digits in _card_data_cuts(run, follower) if _is_pan(digits)]
    n_words = run.count(" ") + 1
    if n_words > budget[0]:       # at least a window per word: masked whole without splitting it
        return None
    words: list[tuple[int, int, str, list[tuple[int, str]]]] = []    # (start, end, digits, cuts)
    pos = start
    for j, part in enumerate(run.split(" ")):
        cuts = _card_data_cuts(part, follower if j == n_words - 1 else " ") if "-" in part else []
        words.append((pos, pos + len(part), part.replace("-", ""), cuts))
        pos += len(part) + 1
    last = n_words - 1
    glued_after = _glued_after(text, end)
    spans = []
    for i in range(n_words):
        if i == 0 and _glued_before(text, start):
            continue
        digits = ""
        for j in range(i, n_words):
            budget[0] -= 1
            if budget[0] < 0:
                return None
            w_start, w_end, w_digits, w_cuts = words[j]
            glued = j == last and glued_after
            if not glued:                 # windows ending before a dash of the word that card data follows
                spans += [(words[i][0], w_start + at) for at, part in w_cuts if _is_pan(digits + part)]
            digits += w_digits
            if len(digits) > 19:
                break
            if len(digits) >= 13 and not glued and luhn_ok(digits):
                spans.append((words[i][0], w_end))
    return spans


def _card_data_cuts(word: str, follower: str) -> list[tuple[int, str]]:
    """(length, digits) of a dashed word's parts before each of its dashes after which the
    rest of the word is written as card data is. Card data: a CVV (3 or 4
    digits: `4111111111111111-123`), an expiry's month then "/" (`-12/26`), or two to three
    dashed groups of 1-4 digits (an expiry and a CVV: `-12-26`, `-12-2026`, `-0126-123`,
    `-123-12/26`). A card number written so is still a card number (contract: a run split by
    dashes; it touches a dash, not a letter or digit), but the digits after the dash made the
    word too long to be one (an audit). Other suffixes keep the word whole: an id such as
    `1764412345678-5` (a Redis stream entry) or `...-12` is no card number, and no identifier
    is refused for it. `follower`: the character after the word. A few steps per word."""
    cuts = []
    at = word.find("-")
    while 0 < at <= 37:           # more than 19 digits (and 18 dashes) before it: no card number
        rest = word[at + 1:]
        if len(rest) <= 14:
            groups = rest.split("-")
            if all(g.isdigit() and len(g) <= 4 for g in groups) and (
                    (len(groups) == 1 and (len(rest) >= 3 or follower == "/")) or 2 <= len(groups) <= 3):
                cuts.append((at, word[:at].replace("-", "")))
        at = word.find("-", at + 1)
    return cuts


# --- IBANs (ISO 13616): a spaced IBAN holds digit groups that may pass Luhn ----------------------

_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}")
# IBAN length by country (SWIFT IBAN registry). A country missing here only means its spaced
# IBANs get no exemption: their Luhn-valid windows are masked, never the other way round.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SD": 18,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22,
    "VG": 24, "XK": 20,
}
_IBAN_LETTERS = {ord(ch): str(10 + i) for i, ch in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


def _iban_ok(compact: str) -> bool:
    """The ISO 7064 mod 97-10 check: country and check digits moved to the end, letters as
    10..35, the number modulo 97 is 1."""
    return int((compact[4:] + compact[:4]).translate(_IBAN_LETTERS)) % 97 == 1


def _iban_spans(text: str) -> list[tuple[int, int]]:
    """Spans of `text` that are IBANs, spaced or not: their country's length, a token of
    their own, passing the mod-97 check. (The pattern may run on into the next word; the
    country's length says where the IBAN ends, so a card number after it is never taken in.)"""
    spans = []
    for m in _IBAN.finditer(text):
        chunk = m.group(0)
        length = _IBAN_LENGTHS.get(chunk[:2])
        if length is None:
            continue
        characters = [i for i, ch in enumerate(chunk) if ch != " "]
        if len(characters) < length:
            continue
        cut = characters[length - 1] + 1
        end = m.start() + cut
        if end < len(text) and text[end].isalnum():
            continue
        if _iban_ok(chunk[:cut].replace(" ", "")):
            spans.append((m.start(), end))
    return spans


def _card_spans(view: str, budget: list[int] | None = None) -> list[tuple[int, int]]:
    """Spans of `view` to mask: its card numbers, and runs too costly to check (whole).
    `budget`: the windows left to check (shared by the strings of one document), else
    _WINDOW_BUDGET for this string alone."""
    spans: list[tuple[int, int]] = []
    whole: list[tuple[int, int]] = []
    if budget is None:
        budget = [_WINDOW_BUDGET]
    for m in _CANDIDATE.finditer(view):
        found = _run_card_spans(view, m.start(), m.end(), budget)
        if found is None:
            whole.append(m.span())
        else:
            spans.extend(found)
    if spans and (ibans := _iban_spans(view)):
        spans = [span for span in spans if not _overlaps_any(span, ibans)]
    return spans + whole


def _overlaps_any(span: tuple[int, int], ordered: list[tuple[int, int]]) -> bool:
    """Whether `span` overlaps one of `ordered` (disjoint spans in text order)."""
    i = bisect.bisect_left(ordered, (span[1],))    # ordered[:i] start before the span ends
    return i > 0 and ordered[i - 1][1] > span[0]


def _apply(text: str, spans: list[tuple[int, int]]) -> str:
    """Mask every digit of each span but its last four (spans may overlap: their union)."""
    chars = list(text)
    for start, end in spans:
        positions = [i for i in range(start, end) if "0" <= text[i] <= "9"]
        for i in positions[:-4]:
            chars[i] = "*"
    return "".join(chars)


def mask_text(text: str, budget: list[int] | None = None) -> str:
    """Return `text` with every card number masked (unchanged text is returned as is).
    `budget`: see `_card_spans`."""
    if len(text) < 13 or not might_contain_pan(text):
        return text
    spans = _card_spans(text, budget)
    return _apply(text, spans) if spans else text


# A JSON number with an exponent where a value starts (the text's start, or after ':', ',' or
# '[', blanks allowed): decoded, its integer digits as written are judged as a card number
# (`4111111111111111e0`, card_digits_written), so in text that cannot be decoded the exponent's
# letter does not glue them to a word either (group 1: the letter and what follows it up to the
# exponent's digit).
_NUMBER_EXPONENT = re.compile(r"(?:(?<=[:,\[])|\A)[ \t\r\n]*-?[0-9]+(?:\.[0-9]+)?([eE][+-]?)[0-9]")


def _neutral_exponent(m: re.Match[str]) -> str:
    """A _NUMBER_EXPONENT match with its exponent letter (and sign) shown as no character."""
    start, end = m.start(1) - m.start(), m.end(1) - m.start()
    return m.group(0)[:start] + "\x00" * (end - start) + m.group(0)[end:]


_QUOTE_OR_ESCAPE = re.compile(r'\\.|"', re.DOTALL)


def _string_spans(text: str) -> list[tuple[int, int]]:
    """The complete JSON strings of `text`, quotes included, in order (an unterminated last one
    is left out: its text is judged as outside a string, the cautious way)."""
    spans: list[tuple[int, int]] = []
    start = -1
    for m in _QUOTE_OR_ESCAPE.finditer(text):
        if m.group() == '"':
            if start < 0:
                start = m.start()
            else:
                spans.append((start, m.end()))
                start = -1
    return spans


def _neutral_exponents(text: str, view: str) -> str:
    """`view` with the exponents of the numbers of `text` neutralised (_NUMBER_EXPONENT), those
    inside a string excepted: there the digits touching a letter are no card number, as in a
    decoded body (contract section 1: masking never changes anything else)."""
    matches = list(_NUMBER_EXPONENT.finditer(view))
    if not matches:
        return view
    strings = _string_spans(text)
    parts, at = [], 0
    for m in matches:
        if _overlaps_any((m.start(), m.start() + 1), strings):
            continue
        parts += [view[at:m.start()], _neutral_exponent(m)]
        at = m.end()
    return "".join(parts) + view[at:]


def mask_json_text(text: str) -> str:
    """Mask card numbers in JSON text that could not be decoded (a failed event's payload).

    Digits, spaces and dashes written as \\u escapes are written back first; any other escape
    counts as the character it stands for: ``"\\n4111111111111111"`` is masked and
    ``"\\u00e94111111111111111"`` is not, as once decoded."""
    text = unescape_card_characters(text)
    if len(text) < 13 or not might_contain_pan(text):
        return text
    view = _ESCAPE.sub(lambda m: _escape_view(m.group(0)), text) if "\\" in text else text
    if "e" in view or "E" in view:
        view = _neutral_exponents(text, view)
    spans = _card_spans(view)
    return _apply(text, spans) if spans else text


# bytes.translate + a substring search run in C at memory speed: digits, spaces and dashes
# become "0", everything else "x"; a PAN candidate needs a run of at least 13 of them.
_RUN_TABLE = bytes(0x30 if (0x30 <= b <= 0x39 or b in (0x20, 0x2D)) else 0x78 for b in range(256))
_RUN_13 = b"0" * 13


def digit_run_possible(body: bytes) -> bool:
    """Pre-filter on UTF-8 bytes, a few times cheaper than `might_contain_pan` on the usual
    event: False means no PAN (digits, space and dash are single bytes in UTF-8, so any
    candidate is a run of 13 or more of them)."""
    return _RUN_13 in body.translate(_RUN_TABLE)


def bodies_with_card_characters(bodies: Sequence[bytes]) -> set[int]:
    """Indices of the bodies for which `digit_run_possible` or `has_escaped_card_characters`
    holds, from one pass over the batch instead of a call per body (about 1 body in 100 is
    flagged in the usual batch). The bodies are joined by a
    newline, which is neither a digit, a space nor a dash and cannot be part of an escape,
    so every run and escape found lies within one body."""
    joined = b"\n".join(bodies)
    starts = list(accumulate((len(b) + 1 for b in bodies), initial=0))   # the last is past the end
    runs = joined.translate(_RUN_TABLE)
    # bytes.find, not a regex, for the runs: "0" is everywhere in `runs`
    flagged = set(_bodies_hit(lambda pos: runs.find(_RUN_13, pos), starts))
    if b"\\u" in joined:
        flagged.update(_bodies_hit(
            lambda pos: m.start() if (m := _ESCAPED_CARD_BYTE.search(joined, pos)) is not None else -1, starts))
    return flagged


def _bodies_hit(find: Callable[[int], int], starts: list[int]) -> Iterator[int]:
    """Each body (index into `starts`, the bodies' offsets) in which `find(from)` finds
    something, once: after a hit, the search goes on from the next body, so a body full of
    hits costs one search."""
    at = find(0)
    while at >= 0:
        body = bisect.bisect_right(starts, at) - 1
        yield body
        at = find(starts[body + 1])


def might_contain_pan(text: str) -> bool:
    """Cheap pre-check on a whole event body: False means no string in it can hold a PAN."""
    return _PRE.search(text) is not None and _QUICK.search(text) is not None


# --- numbers ---------------------------------------------------------------------------------

_INTEGER_DIGITS = re.compile(r"-?([0-9]+)")
_PAN_MIN, _PAN_LIMIT = 10**12, 10**19


def card_digits_of_int(value: int) -> str | None:
    """The card number an integer is, if it is one."""
    magnitude = -value if value < 0 else value
    if not _PAN_MIN <= magnitude < _PAN_LIMIT:
        return None
    digits = str(magnitude)
    return digits if luhn_ok(digits) else None


def card_digits_of_decimal(value: Decimal) -> str | None:
    """The card number the integer part of a (finite) decimal's exact value is, if any."""
    if not value.is_finite() or not 12 <= value.adjusted() <= 18:
        return None
    return card_digits_of_int(int(value))       # at most 19 digits: cheap and exact


def card_digits_written(text: str) -> str | None:
    """The card number a JSON number's integer digits are as written (`text`), if any:
    `4111111111111111e99999` holds one whatever its value."""
    if len(text) >= 13:
        m = _INTEGER_DIGITS.match(text)
        if m is not None and _is_pan(m.group(1)):
            return m.group(1)
    return None


def mask_written_number(text: str) -> str:
    """A JSON number's text with its integer digits masked when, as written, they are a card
    number (for numbers kept as text: out of range, never converted)."""
    digits = card_digits_written(text)
    if digits is None:
        return text
    start = text.index(digits)
    return text[:start] + _mask_digits(digits) + text[start + len(digits):]


def card_digits_of_number(text: str, value: Decimal) -> str | None:
    """The card number in a JSON number written with a fraction or an exponent (`text`, its
    exact `value`): its integer digits as written, else its value's integer part."""
    return card_digits_written(text) or card_digits_of_decimal(value)


class CardLikeNumber(Decimal):
    """A JSON number that holds a card number (`card_digits`): the decoder marks it, masking
    turns it into the masked string, validation refuses it where a typed column would keep it."""

    __slots__ = ("card_digits",)
    card_digits: str

    @classmethod
    def of(cls, text: str, card_digits: str) -> CardLikeNumber:
        number = cls(text)
        number.card_digits = card_digits
        return number


def _masked_number(negative: bool, digits: str) -> str:
    return ("-" if negative else "") + _mask_digits(digits)


def mask_value(value: Any) -> Any:
    """Mask card numbers in every string (and object key) of a parsed JSON value.

    A number that holds a card number (see the module docstring) is replaced by the masked
    string of its card digits, sign kept: a card number sent as a JSON number must not reach
    storage either. The window budget (_WINDOW_BUDGET) is the whole value's, not each string's."""
    return _mask_value(value, [_WINDOW_BUDGET])


def _distinct_keys(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose masked keys coincide (two card numbers with the same last four, or a
    key already written masked): every value is kept, a later key numbered (`#2`, `#3`, ...),
    rather than the last value alone (the archived payload loses nothing)."""
    out: dict[str, Any] = {}
    for key, v in items:
        name, n = key, 1
        while name in out:
            n += 1
            name = f"{key}#{n}"
        out[name] = v
    return out


def _mask_value(value: Any, budget: list[int]) -> Any:
    if isinstance(value, str):
        return mask_text(value, budget)
    if isinstance(value, dict):
        items = [(mask_text(k, budget), _mask_value(v, budget)) for k, v in value.items()]
        masked = dict(items)
        return masked if len(masked) == len(items) else _distinct_keys(items)
    if isinstance(value, list):
        return [_mask_value(v, budget) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        digits = card_digits_of_int(value)
        return _masked_number(value < 0, digits) if digits else value
    if isinstance(value, CardLikeNumber):
        return _masked_number(value.is_signed(), value.card_digits)
    if isinstance(value, Decimal):
        found = card_digits_of_decimal(value)
        return _masked_number(value.is_signed(), found) if found else value
    return value


def shown_number(value: int | Decimal) -> str:
    """A number as a detail quotes it, masked as the document masks it: by its digits, and by
    its value's integer part (`-353011133330000e1` prints as `-3.53011133330000E+15`, whose
    text holds no card number that mask_text finds, but whose value is one)."""
    masked = mask_value(value)
    return masked if isinstance(masked, str) else mask_text(str(value))
