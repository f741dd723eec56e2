"""Card-number masking, measured: how often it changes what is not a card number (false
positives), and that it still masks every card number written the ways people write them.

    .venv/bin/python -m localdev.masking_fp                      # 1,000,000 uuid4 and the rest
    .venv/bin/python -m localdev.masking_fp --baseline main      # also the masking of a git revision

Every corpus is generated from a fixed seed, so two runs count the same strings. Prints one
line per corpus (strings changed / strings) and writes the JSON to benchmarks/results/ with
--out. tests/test_core_masking.py checks the same properties on smaller samples.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import subprocess
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from localdev.synth import luhn_complete
from txmetrics.core import masking

ROOT = Path(__file__).resolve().parents[1]


def uuid4s(rng: random.Random, n: int) -> Iterator[str]:
    for _ in range(n):
        yield str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


# --- realistic strings that are not card numbers ----------------------------------------------

ORDER_SHAPES: dict[str, Callable[[random.Random], str]] = {
    "ORD-2026-000123456789": lambda r: f"ORD-{r.randint(2019, 2030)}-{r.randrange(10**12):012d}",
    "ORD-<16 digits>": lambda r: f"ORD-{_digits(r, 16)}",
    "SO-2026-03-0012345": lambda r: f"SO-{r.randint(2019, 2030)}-{r.randint(1, 12):02d}-{r.randrange(10**7):07d}",
    "INV/2026/000123456789": lambda r: f"INV/{r.randint(2019, 2030)}/{r.randrange(10**12):012d}",
    "order_<19-digit snowflake>": lambda r: f"order_{r.randrange(10**18, 2 * 10**18)}",
    "PO-4500012345 (SAP)": lambda r: f"PO-45{_digits(r, 8)}",
    "#1001 (Shopify)": lambda r: f"#{r.randint(1001, 999999)}",
}
# Numbers no rule can tell from a card number without an issuer (IIN) list: reported, not
# targets. A 13-19 digit string that passes Luhn is a card number by the contract's rule.
AMBIGUOUS_SHAPES: dict[str, Callable[[random.Random], str]] = {
    "112-1234567-1234567 (Amazon, 17 digits)": lambda r: f"{r.randint(100, 999)}-{_digits(r, 7)}-{_digits(r, 7)}",
    "<16 digits> (numeric id)": lambda r: _digits(r, 16),
    "1772366400123 (epoch ms as text)": lambda r: str(r.randrange(1_500_000_000_000, 2_000_000_000_000)),
}

PHONE_SHAPES: dict[str, Callable[[random.Random], str]] = {
    "+86 mobile E.164": lambda r: f"+861{r.choice('3578')}{_digits(r, 9)}",
    "+49 mobile E.164": lambda r: f"+4915{_digits(r, 9)}",
    "+1 E.164": lambda r: f"+1{r.randint(200, 999)}{_digits(r, 7)}",
    "+44 7911 123456": lambda r: f"+44 7{_digits(r, 3)} {_digits(r, 6)}",
    "+86 138 1234 5678": lambda r: f"+86 1{r.choice('3578')}{_digits(r, 1)} {_digits(r, 4)} {_digits(r, 4)}",
    "(415) 555-0123": lambda r: f"({r.randint(200, 999)}) {r.randint(200, 999)}-{_digits(r, 4)}",
    "0171 1234567": lambda r: f"01{_digits(r, 2)} {_digits(r, 7)}",
    "tel:+4930123456789": lambda r: f"tel:+4930{_digits(r, 9)}",
}


def phone_list(rng: random.Random, sep: str) -> str:
    shapes = list(PHONE_SHAPES.values())
    return sep.join(rng.choice(shapes)(rng) for _ in range(rng.randint(2, 4)))


IBAN_LENGTHS = {"DE": 22, "GB": 22, "FR": 27, "NL": 18, "ES": 24, "IT": 27, "BE": 16, "AT": 20, "CH": 21, "PL": 28,
                "SE": 24, "IE": 22}


def iban(rng: random.Random, spaced: bool) -> str:
    country = rng.choice(sorted(IBAN_LENGTHS))
    bban_len = IBAN_LENGTHS[country] - 4
    if country in ("GB", "NL", "IE"):   # a bank code of letters, then digits
        bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4)) + _digits(rng, bban_len - 4)
    elif country in ("FR", "IT"):
        bban = (rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") if country == "IT" else "") + _digits(
            rng, bban_len - (1 if country == "IT" else 0))
    else:
        bban = _digits(rng, bban_len)
    numeric = (bban + country + "00").translate(masking._IBAN_LETTERS)
    check = 98 - int(numeric) % 97
    compact = f"{country}{check:02d}{bban}"
    return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4)) if spaced else compact


TIMESTAMP_SHAPES: dict[str, Callable[[random.Random], str]] = {
    "2026-03-01T12:00:00Z": lambda r: f"{_date(r)}T{_clock(r)}Z",
    "2026-03-01T12:00:00.123Z": lambda r: f"{_date(r)}T{_clock(r)}.{_digits(r, 3)}Z",
    "2026-03-01T12:00:00.123456+05:30": lambda r: f"{_date(r)}T{_clock(r)}.{_digits(r, 6)}+05:30",
    "2026-03-01 12:00:00.123456789": lambda r: f"{_date(r)} {_clock(r)}.{_digits(r, 9)}",
    "20260301T120000Z (basic)": lambda r: f"{_date(r).replace('-', '')}T{_clock(r).replace(':', '')}Z",
    "20260301T120000.123456Z": lambda r: f"{_date(r).replace('-', '')}T{_clock(r).replace(':', '')}.{_digits(r, 6)}Z",
}


def _date(r: random.Random) -> str:
    return f"{r.randint(1990, 2099)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"


def _clock(r: random.Random) -> str:
    return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"


# --- card numbers, written the ways people write them: every one must be masked -------------

def card_shapes(rng: random.Random) -> Iterator[tuple[str, str]]:
    """(shape, text) with a random Luhn-valid 13-19 digit number in it (no issuer filter)."""
    length = rng.randint(13, 19)
    pan = luhn_complete(str(rng.randint(0, 9)), length, rng)
    grouped = [pan[i:i + 4] for i in range(0, len(pan), 4)]
    yield "plain", pan
    yield "spaced in 4s", " ".join(grouped)
    yield "dashed in 4s", "-".join(grouped)
    yield "in a sentence", f"customer read card {' '.join(grouped)} on the phone."
    yield "after a label", f"pan:{pan}"
    yield "quoted", f'"{pan}"'
    yield "after another number", f"{rng.randint(1, 99)} {pan}"
    yield "before a year", f"{' '.join(grouped)} {rng.randint(2024, 2030)}"
    yield "in a URL query", f"/pay?card={pan}&cvv=123"
    yield "after a newline", f"note\n{pan}"
    yield "before an expiry", f"{pan}-{rng.randint(1, 12):02d}/{rng.randint(24, 32)}"
    yield "spaced, before a CVV", f"{' '.join(grouped)}-{_digits(rng, 3)}"


# --- the run ---------------------------------------------------------------------------------

def count_changed(mask: Callable[[str], str], strings: Iterator[str]) -> tuple[int, int, list[str]]:
    changed = total = 0
    examples: list[str] = []
    for s in strings:
        total += 1
        if mask(s) != s:
            changed += 1
            if len(examples) < 3:
                examples.append(s)
    return changed, total, examples


def measure(mask: Callable[[str], str], uuid_count: int, sample: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"false_positives": {}, "ambiguous": {}, "cards_missed": {}}

    def fp(name: str, strings: Iterator[str], section: str = "false_positives") -> None:
        t = time.perf_counter()
        changed, total, examples = count_changed(mask, strings)
        out[section][name] = {"changed": changed, "of": total, "examples": examples,
                              "us_per_string": round(1e6 * (time.perf_counter() - t) / max(total, 1), 2)}

    def sampled(make: Callable[[random.Random], str], n: int = sample) -> Iterator[str]:
        rng = random.Random(seed)
        return (make(rng) for _ in range(n))

    fp(f"uuid4 ({uuid_count:,})", uuid4s(random.Random(seed), uuid_count))
    for name, make in ORDER_SHAPES.items():
        fp(f"order number {name}", sampled(make))
    for name, make in PHONE_SHAPES.items():
        fp(f"phone {name}", sampled(make))
    for sep in (", ", "; ", " / ", " "):
        fp(f"phone list joined by {sep!r}", sampled(functools.partial(phone_list, sep=sep)))
    fp("IBAN spaced (DE89 3704 ...)", sampled(lambda r: iban(r, True)))
    fp("IBAN compact (DE8937040044...)", sampled(lambda r: iban(r, False)))
    for name, make in TIMESTAMP_SHAPES.items():
        fp(f"timestamp {name}", sampled(make))
    fp("float as text (repr(random()))", sampled(lambda r: repr(r.random())))
    for name, make in AMBIGUOUS_SHAPES.items():
        fp(name, sampled(make), "ambiguous")

    rng = random.Random(seed)
    missed: dict[str, list[int]] = {}
    for _ in range(sample):
        for shape, text in card_shapes(rng):
            masked = mask(text)
            digits = "".join(ch for ch in text if ch.isdigit())
            tally = missed.setdefault(shape, [0, 0])
            tally[1] += 1
            # masked: the full number is gone (at most its last four digits remain)
            if any(len(run) >= 13 for run in _digit_runs(masked)) or masked == text or (
                    digits and "".join(ch for ch in masked if ch.isdigit()) == digits):
                tally[0] += 1
    out["cards_missed"] = {shape: {"missed": m, "of": n} for shape, (m, n) in missed.items()}
    return out


def _digit_runs(text: str) -> list[str]:
    runs, current = [], ""
    for ch in text:
        if ch.isdigit():
            current += ch
        elif ch not in " -" and current:
            runs.append(current)
            current = ""
    if current:
        runs.append(current)
    return runs


def baseline_mask(rev: str) -> Callable[[str], str]:
    """mask_text of core/masking.py at a git revision (e.g. main), for comparison."""
    source = subprocess.run(["git", "show", f"{rev}:functions/txmetrics/core/masking.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"masking_{rev}")
    exec(compile(source, f"{rev}:masking.py", "exec"), module.__dict__)
    return cast("Callable[[str], str]", module.mask_text)     # exec'd source: mypy cannot see its type


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uuids", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="strings per other corpus")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--baseline", help="also measure mask_text of this git revision")
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args()
    runs: dict[str, Callable[[str], str]] = {"this tree": masking.mask_text}
    if args.baseline:
        runs[args.baseline] = baseline_mask(args.baseline)
    results = {name: measure(mask, args.uuids, args.sample, args.seed) for name, mask in runs.items()}
    for section in ("false_positives", "ambiguous", "cards_missed"):
        print(f"\n{section.replace('_', ' ')}")
        names = results["this tree"][section]
        for key in names:
            cells = []
            for run, res in results.items():
                r = res[section][key]
                n = r.get("changed", r.get("missed"))
                cells.append(f"{run}: {n:>7,} / {r['of']:,}")
            print(f"  {key:<48} " + "   ".join(cells))
    if args.out:
        Path(args.out).write_text(json.dumps({"seed": args.seed, "results": results}, indent=1))


if __name__ == "__main__":
    main()
