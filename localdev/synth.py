"""Realistic synthetic payment events for `make run`, the benchmark and the tests.

Amounts are lognormal per currency, processing times heavy-tailed (lognormal body with a
Pareto tail), merchants Zipf-popular with a home currency, a few percent bad events of
every kind, and some events carrying card numbers in free text (which must be masked).
Deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

CURRENCIES = {  # currency: (decimals, lognormal mu of the amount, country)
    "USD": (2, 3.6, "US"), "EUR": (2, 3.5, "DE"), "GBP": (2, 3.4, "GB"),
    "INR": (2, 7.2, "IN"), "JPY": (0, 8.1, "JP"), "BRL": (2, 4.6, "BR"),
}
METHODS = [("card", 0.58), ("wallet", 0.24), ("bank_transfer", 0.12), ("bnpl", 0.06)]
APPROVAL = {"card": 0.91, "wallet": 0.95, "bank_transfer": 0.87, "bnpl": 0.78}
EVENT_TYPES = [("authorization", 0.70), ("capture", 0.20), ("refund", 0.07), ("chargeback", 0.03)]
NETWORKS = [("visa", "4"), ("mastercard", "5"), ("amex", "37")]
IST = timezone(timedelta(hours=5, minutes=30))
BAD_KINDS = ["not_json", "not_utf8", "not_object", "missing_field", "negative_amount", "bad_currency",
             "naive_timestamp", "bad_status"]


@dataclass(frozen=True, slots=True)
class SyntheticEvent:
    partition_id: str
    sequence_number: int
    enqueued_at: datetime
    body: bytes
    bad_kind: str | None        # None for a valid event
    has_card_number: bool


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return digits + str((10 - total % 10) % 10)


def _pick(rng: random.Random, table: list[tuple[str, float]]) -> str:
    x = rng.random()
    for name, weight in table:
        x -= weight
        if x <= 0:
            return name
    return table[-1][0]


def partition_for(key: str, partitions: int) -> str:
    return str(zlib.crc32(key.encode()) % partitions)


class Generator:
    def __init__(self, *, seed: int = 7, merchants: int = 200, partitions: int = 4, bad_rate: float = 0.03,
                 card_number_rate: float = 0.01, start: datetime | None = None, days: float = 1.0) -> None:
        self.rng = random.Random(seed)
        self.partitions = partitions
        self.bad_rate = bad_rate
        self.card_number_rate = card_number_rate
        self.start = start or datetime(2026, 3, 1, tzinfo=UTC)
        self.span = timedelta(days=days)
        weights = [1.0 / (i + 1) ** 1.1 for i in range(merchants)]
        total = sum(weights)
        currencies = list(CURRENCIES)
        self.merchants = [(f"m-{i:04d}", w / total, currencies[0] if i % 3 else self.rng.choice(currencies))
                          for i, w in enumerate(weights)]
        self._cum = []
        acc = 0.0
        for _, w, _ in self.merchants:
            acc += w
            self._cum.append(acc)
        self._seq = {str(p): 0 for p in range(partitions)}
        self._n = 0

    def _merchant(self) -> tuple[str, str]:
        import bisect

        i = min(bisect.bisect_left(self._cum, self.rng.random()), len(self.merchants) - 1)
        return self.merchants[i][0], self.merchants[i][2]

    def valid_event(self, occurred: datetime) -> tuple[dict[str, object], bool]:
        rng = self.rng
        self._n += 1
        merchant, currency = self._merchant()
        decimals, mu, country = CURRENCIES[currency]
        method = _pick(rng, METHODS)
        amount = round(rng.lognormvariate(mu, 1.0), decimals)
        status = "approved" if rng.random() < APPROVAL[method] else rng.choice(["declined", "declined", "failed", "pending"])
        processing = rng.lognormvariate(5.0, 0.55)
        if rng.random() < 0.03:
            processing *= rng.paretovariate(1.5)
        when = occurred.astimezone(IST) if currency == "INR" else occurred
        attributes: dict[str, object]
        event: dict[str, object] = {
            # underscores, not dashes: a dash joins digit runs, and a 13+ digit run that passes
            # Luhn would be masked as a card number (as the contract requires)
            "event_id": f"evt_{self._n}_{rng.getrandbits(32):08x}",
            "transaction_id": f"tx_{rng.getrandbits(48):012x}",
            "occurred_at": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "merchant_id": merchant,
            "amount": f"{amount:.{decimals}f}" if rng.random() < 0.5 else amount,
            "currency": currency,
            "payment_method": method,
            "status": status,
            "event_type": _pick(rng, EVENT_TYPES),
            "processing_ms": int(processing),
            "country": country,
            # drawn here, in this order: the same seed gives the same events
            "attributes": (attributes := {"channel": rng.choice(["web", "app", "pos"]),
                                          "risk_score": round(rng.betavariate(2, 8), 4)}),
        }
        if method == "card":
            network, prefix = rng.choice(NETWORKS)
            pan = luhn_complete(prefix + "1111", 15 if network == "amex" else 16, rng)
            event["card"] = {"bin": pan[:6], "last4": pan[-4:], "network": network}
        has_pan = rng.random() < self.card_number_rate
        if has_pan:
            pan = luhn_complete("4", 16, rng)
            sep = rng.choice(["", " ", "-"])
            written = sep.join(pan[i:i + 4] for i in range(0, 16, 4))
            attributes["note"] = f"customer read card {written} on the phone"
        return event, has_pan

    def bad_body(self, occurred: datetime) -> tuple[bytes, str]:
        kind = self.rng.choice(BAD_KINDS)
        event, _ = self.valid_event(occurred)
        if kind == "not_json":
            return b'{"event_id": "broken", "amount": 12.3', kind
        if kind == "not_utf8":
            return b'{"event_id": "\xff\xfe", "amount": 1}', kind
        if kind == "not_object":
            return b'[1, 2, 3]', kind
        if kind == "missing_field":
            event.pop(self.rng.choice(["transaction_id", "merchant_id", "currency", "status"]))
        elif kind == "negative_amount":
            event["amount"] = -abs(float(str(event["amount"]))) - 1
        elif kind == "bad_currency":
            event["currency"] = "usd"
        elif kind == "naive_timestamp":
            event["occurred_at"] = occurred.replace(tzinfo=None).isoformat()
        elif kind == "bad_status":
            event["status"] = "maybe"
        return json.dumps(event).encode(), kind

    def events(self, count: int) -> Iterator[SyntheticEvent]:
        """`count` events in time order over the configured span, assigned to partitions."""
        step = self.span / max(count, 1)
        for i in range(count):
            occurred = self.start + step * i + timedelta(microseconds=self.rng.randrange(1000))
            if self.rng.random() < self.bad_rate:
                body, bad = self.bad_body(occurred)
                pan = False
                key = f"bad-{i}"
            else:
                doc, pan = self.valid_event(occurred)
                body, bad, key = json.dumps(doc).encode(), None, str(doc["merchant_id"])
            partition = partition_for(key, self.partitions)
            seq = self._seq[partition]
            self._seq[partition] = seq + 1
            enqueued = occurred + timedelta(milliseconds=50 + self.rng.randrange(200))
            yield SyntheticEvent(partition, seq, enqueued, body, bad, pan)


def batches(events: list[SyntheticEvent], batch_size: int) -> dict[str, list[list[SyntheticEvent]]]:
    """Per partition, in sequence order, cut into trigger batches."""
    per: dict[str, list[SyntheticEvent]] = {}
    for e in events:
        per.setdefault(e.partition_id, []).append(e)
    return {p: [evs[i:i + batch_size] for i in range(0, len(evs), batch_size)] for p, evs in sorted(per.items())}
