"""Sums of money are exact: the values as the events wrote them, added without a double in
between, from the writer's delta (aggregate_deltas.sum_exact, migration 0013) through the
fold, the daily rollups, payment_metrics_5m and `txmetrics kpi`. An independent audit found
1,000 amounts from 5,000.00 to 15,000.00 summing to 9851576.75999999, and a rolled-up day
read beside pending deltas printing 0.6999999999999999555910790149937383830547332763671875."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from typer.testing import CliRunner

from txmetrics.adapters import pgcopy
from txmetrics.core.catalog import parse_catalog
from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event
from txmetrics.core.histogram import SCALE
from txmetrics.core.metrics import aggregate, extract_metrics
from txmetrics.rollup import roll_day
from txmetrics_cli.main import app

DAY = date(2026, 3, 1)


def payment(i: int, amount: Any, *, minute: int = 0, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"x{i}", "transaction_id": f"t{i}", "occurred_at": f"2026-03-01T10:{minute:02d}:00Z",
            "merchant_id": "m1", "amount": amount, "currency": "EUR", "payment_method": "card", "status": "approved",
            **extra}


def kpi_json(*args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, ["kpi", "--metric", "amount", "--start", "2026-03-01", "--end", "2026-03-02",
                                      "--format", "json", *args], env={"COLUMNS": None})
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout, parse_float=Decimal)
    return rows


def test_a_thousand_amounts_add_up_to_the_cent(deliver: Callable[..., None], db: psycopg.Connection,
                                              env: dict[str, str]) -> None:
    rng = random.Random(7)
    amounts = [Decimal(rng.randrange(500_000, 1_500_001)).scaleb(-2) for _ in range(1000)]
    amounts += [Decimal("12345678901234.56")]                 # 16 digits: no double holds it
    deliver([payment(i, str(a) if i % 2 else float(a)) for i, a in enumerate(amounts)], partition_id="0")
    exact = sum(amounts, Decimal(0))
    view = "SELECT amount_sum FROM payment_metrics_5m WHERE merchant_id = 'm1' AND payment_method = 'card'"
    assert db.execute(view).fetchone() == (exact,)             # pending deltas
    assert kpi_json()[0]["sum"] == exact
    db.execute("SELECT txm_fold_aggregates()")
    assert db.execute(view).fetchone() == (exact,)             # folded
    stored = db.execute("SELECT sum FROM aggregate_histograms WHERE metric_name = 'amount' "
                        "AND dimensions = '{\"currency\": \"EUR\"}'").fetchone()
    assert stored == (exact,)


def test_a_rolled_up_day_beside_pending_deltas_stays_exact(deliver: Callable[..., None], db: psycopg.Connection,
                                                          env: dict[str, str]) -> None:
    for i, amount in enumerate(["0.10", "0.20", "0.40"]):
        deliver([payment(i, amount, minute=i)], partition_id="0", first_sequence=i)
    db.execute("SELECT txm_fold_aggregates()")
    assert roll_day(db, DAY)
    deliver([payment(9, "0.06", minute=30)], partition_id="0", first_sequence=9)   # pending, after the rollup
    for args in ((), ("--window", "1d"), ("--format", "csv")):
        if "csv" in args:
            result = CliRunner().invoke(app, ["kpi", "--metric", "amount", "--start", "2026-03-01", "--end",
                                              "2026-03-02", *args], env={"COLUMNS": None})
            assert result.exit_code == 0 and ",0.76," in result.stdout, result.output
            continue
        assert kpi_json(*args)[0]["sum"] == Decimal("0.76"), args


def test_a_rolled_up_day_keeps_a_sum_of_more_than_28_digits_exact(deliver: Callable[..., None],
                                                                  db: psycopg.Connection, env: dict[str, str]) -> None:
    """An audit: the daily rollup added its windows' sums in Python's default decimal context
    (28 significant digits), so eleven valid amounts of 999999999999999999.123456789 (below
    10^18, nine places) rolled up to a day whose sum was rounded, and `txmetrics kpi` answered
    the same day differently from a rollup and from its 5-minute rows."""
    amount = Decimal("999999999999999999.123456789")
    deliver([payment(i, str(amount), minute=i % 2) for i in range(11)], partition_id="0")
    db.execute("SELECT txm_fold_aggregates()")
    exact = Decimal("10999999999999999990.358024679")        # 11 x amount: 29 significant digits
    assert kpi_json()[0]["sum"] == exact                     # from the 5-minute rows
    assert roll_day(db, DAY)
    assert db.execute("SELECT sum FROM aggregate_histograms WHERE metric_name = 'amount' AND window_seconds = 86400"
                      ).fetchone() == (exact,)
    assert kpi_json()[0]["sum"] == exact                     # from the rollup


def test_sums_beyond_nine_places_or_int64_are_exact_too(db: psycopg.Connection) -> None:
    """The writer's delta rows round-trip through PostgreSQL exactly, whatever the values: one
    group per value (a merchant each), on the units path (int64, nine places) and the Decimal
    path (more places, or beyond 2^62 units)."""
    values = ["0", "0.7", "-0.000000001", "9851576.76", "-123.450", "4611686018.427387903",
              "4611686018.427387904", "12345678901234.56", "0.1234567891234", "1e-12", "100000000000000000000",
              "99999999999999999.999999999"]
    catalog = parse_catalog({"metrics": [{"name": "v", "kind": "value", "source": "attributes.v"}],
                             "dimension_sets": [["merchant_id"]]})
    events = []
    for i, text in enumerate(values):
        body = json.dumps(payment(i, "1", attributes={"v": "@"}, merchant_id=f"m{i}")).replace('"@"', text)
        parsed = parse_event(InboundEvent(body.encode(), "0", i))
        assert isinstance(parsed, PaymentEvent), parsed
        events.append(parsed)
    aggs = aggregate(events, extract_metrics(events, catalog), catalog)
    with db.transaction():
        pgcopy.copy_in(db, f"aggregate_deltas ({pgcopy.DELTA_COLUMNS})", pgcopy.delta_rows(aggs, SCALE))
    got = dict(db.execute("SELECT dimensions ->> 'merchant_id', sum_exact FROM aggregate_deltas").fetchall())
    assert got == {f"m{i}": Decimal(text) for i, text in enumerate(values)}
    shown = dict(db.execute("SELECT dimensions ->> 'merchant_id', sum_exact::text FROM aggregate_deltas").fetchall())
    assert (shown["m1"], shown["m0"], shown["m4"]) == ("0.7", "0", "-123.45")    # no trailing zeros added
    assert {r.sum for r in aggs.rows()} == {Decimal(text) for text in values}


def test_the_view_and_fold_read_old_writers_deltas_by_their_double(db: psycopg.Connection) -> None:
    """During a deployment the schema (0013) runs before the new code: a delta COPYed without
    sum_exact is read by its double, as before, and folds with the others."""
    start = datetime(2026, 3, 1, 10, tzinfo=UTC)
    for s, exact in ((0.5, None), (0.25, Decimal("0.25"))):
        db.execute("INSERT INTO aggregate_deltas (metric_name, window_seconds, window_start, dimensions, count, sum, "
                   "min, max, zero_count, scale, pos_keys, pos_counts, neg_keys, neg_counts, sum_exact) VALUES "
                   "('amount', 300, %s, '{\"currency\": \"EUR\"}', 1, %s, %s, %s, 0, %s, '{}', '{}', '{}', '{}', %s)",
                   (start, s, s, s, SCALE, exact))
    current = ("SELECT sum FROM aggregate_histograms_current WHERE metric_name = 'amount' AND window_start = %s")
    assert db.execute(current, (start,)).fetchone() == (Decimal("0.75"),)
    db.execute("SELECT txm_fold_aggregates()")
    assert db.execute("SELECT sum FROM aggregate_histograms WHERE window_start = %s", (start,)).fetchone() == (
        Decimal("0.75"),)
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (0,)


def test_a_numeric_string_with_a_huge_negative_exponent_cannot_fail_its_batch(db: psycopg.Connection) -> None:
    """"1e-20000" is a finite double (0.0), so it has a metric row; its exact value has more
    places than PostgreSQL's numeric holds, and "1e-999999999" beside another value would take
    gigabytes to add. Both are summed as their double; the COPY succeeds at once."""
    catalog = parse_catalog({"metrics": [{"name": "v", "kind": "value", "source": "attributes.v"}],
                             "dimension_sets": [[]]})
    events = []
    for i, value in enumerate(["0.25", "1e-20000", "1e-999999999", "-2.5e-1000"]):
        parsed = parse_event(InboundEvent(json.dumps(payment(i, "1", attributes={"v": value})).encode(), "0", i))
        assert isinstance(parsed, PaymentEvent), parsed
        events.append(parsed)
    aggs = aggregate(events, extract_metrics(events, catalog), catalog)
    with db.transaction():
        pgcopy.copy_in(db, f"aggregate_deltas ({pgcopy.DELTA_COLUMNS})", pgcopy.delta_rows(aggs, SCALE))
    (total,) = db.execute("SELECT sum_exact FROM aggregate_deltas").fetchone()
    assert total == Decimal("0.25") + Decimal("-2.5e-1000")      # the last is within the bound: exact


def test_sums_over_many_rows_are_exact_chunk_by_chunk() -> None:
    """A rebuild aggregates a compacted file at once: more rows than one bincount may add
    exactly (2^16); the sums go chunk by chunk, with the carry, and stay exact."""
    from txmetrics.core.metrics import _exact_sums

    rng = np.random.default_rng(3)
    # near the bound, 600,000 rows in one group: one bincount over all of them would round
    units = rng.integers(2**60, 2**61, size=600_000, dtype=np.int64)
    groups = np.zeros(units.size, dtype=np.int64)
    sums, exact = _exact_sums(groups, units, [], 1)
    expected = [sum(int(u) for u, g in zip(units.tolist(), groups.tolist(), strict=True) if g == k) for k in range(1)]
    got = [int(exact[k].scaleb(9)) if k in exact else int(sums[k]) for k in range(1)]
    assert got == expected


def test_a_whole_sum_reads_as_an_exact_integer_in_json_and_csv(deliver: Callable[..., None],
                                                              db: psycopg.Connection, env: dict[str, str]) -> None:
    """An audit: `txmetrics kpi --format json` wrote a whole sum with its stored scale
    (`9007199254741007.000000000`), which a JSON reader takes for a double (2^53 + 16); written
    plainly it is an integer, exact at any size. Fractions keep their digits, without the
    scale's trailing zeros."""
    deliver([payment(0, "1", processing_ms=2**53), payment(1, "1", processing_ms=15),
             payment(2, "0.10"), payment(3, "0.20")], partition_id="0")
    db.execute("SELECT txm_fold_aggregates()")
    args = ["kpi", "--metric", "processing_ms", "--start", "2026-03-01", "--end", "2026-03-02"]
    result = CliRunner().invoke(app, [*args, "--format", "json"], env={"COLUMNS": None})
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)                       # the plain reader: no parse_float
    assert row["sum"] == 2**53 + 15 and type(row["sum"]) is int, row
    csv_out = CliRunner().invoke(app, [*args, "--format", "csv"], env={"COLUMNS": None})
    assert f",{2**53 + 15}," in csv_out.stdout, csv_out.output
    amount = json.loads(CliRunner().invoke(app, ["kpi", "--metric", "amount", "--start", "2026-03-01", "--end",
                                                 "2026-03-02", "--format", "json"], env={"COLUMNS": None}).stdout)
    assert [r["sum"] for r in amount] == [2.3]               # 1 + 1 + 0.10 + 0.20, written "2.3"
