"""KPIs that never mislead: the stored dimension set that can answer by itself is chosen
(or the query is refused, naming the sets that exist), amounts are never added across
currencies, flag metrics show a rate, not quantiles; the Python API and `txmetrics kpi`
agree. Checked against events whose true KPIs are known."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner, Result

from txmetrics import kpi
from txmetrics.core.catalog import load_catalog, parse_catalog
from txmetrics.settings import BUNDLED_CATALOG
from txmetrics_cli.main import app

START, END = "2026-03-01", "2026-03-02"
# merchant, method, currency, amount, status, processing_ms, hour
EVENTS = [("m-1", "card", "USD", "10.00", "approved", 100, 10), ("m-1", "card", "EUR", "20.00", "approved", 200, 10),
          ("m-1", "wallet", "USD", "5.00", "declined", 300, 10), ("m-2", "card", "JPY", "1000", "approved", 400, 11),
          ("m-2", "bank_transfer", "USD", "7.50", "failed", 500, 11), ("m-2", "card", "USD", "2.50", "declined", 600, 11),
          ("m-3", "wallet", "EUR", "3.00", "approved", 700, 11)]


@pytest.fixture
def known_events(env: dict[str, str], deliver: Callable[..., None]) -> None:
    deliver([{"event_id": f"k{i}", "transaction_id": f"t{i}", "occurred_at": f"2026-03-01T{hour}:0{i}:00Z",
              "merchant_id": m, "payment_method": pm, "currency": cur, "amount": amount, "status": st,
              "processing_ms": ms} for i, (m, pm, cur, amount, st, ms, hour) in enumerate(EVENTS)], partition_id="0")


def cli(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, ["kpi", *args], env={"COLUMNS": None, **(env or {})})


def rows(*args: str) -> list[dict[str, Any]]:
    result = cli(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


def refusal(*args: str, env: dict[str, str | None] | None = None) -> str:
    result = cli(*args, env=env)
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
    return result.stderr


# ------------------------------------------------------------------------------ which set answers (no I/O)

BUNDLED = load_catalog(BUNDLED_CATALOG)


@pytest.mark.parametrize(("metric", "group_by", "filters", "stored", "grouping"), [
    ("approved", [], {}, (), ()),
    ("approved", ["payment_method"], {}, ("payment_method",), ("payment_method",)),
    ("approved", ["merchant_id"], {}, ("merchant_id", "payment_method"), ("merchant_id",)),
    ("approved", [], {"merchant_id": "m-1"}, ("merchant_id", "payment_method"), ()),
    ("approved", [], {"status": "approved"}, ("payment_method", "status"), ()),
    ("amount", [], {}, ("currency",), ("currency",)),
    ("amount", ["payment_method"], {}, ("currency", "payment_method"), ("payment_method", "currency")),
    ("amount", ["currency", "merchant_id"], {}, ("currency", "merchant_id", "payment_method"),
     ("currency", "merchant_id")),
])
def test_the_smallest_stored_set_that_holds_the_query_is_read(metric: str, group_by: list[str], filters: dict[str, str],
                                                              stored: tuple[str, ...], grouping: tuple[str, ...]) -> None:
    chosen = kpi.plan(BUNDLED, metric, group_by, filters)
    assert chosen.dimension_set == stored and chosen.group_by == grouping


def test_of_several_covering_sets_the_smallest_answers() -> None:
    catalog = parse_catalog({"metrics": [{"name": "approved", "kind": "flag", "when": {"field": "status",
                                                                                     "equals": "approved"}}],
                             "dimension_sets": [["merchant_id", "payment_method"], ["merchant_id"]]})
    assert kpi.plan(catalog, "approved", ["merchant_id"]).dimension_set == ("merchant_id",)


def test_what_no_set_holds_is_refused_naming_the_sets() -> None:
    with pytest.raises(kpi.UncoveredDimensionsError) as err:
        kpi.plan(BUNDLED, "approved", ["merchant_id", "status"])
    message = str(err.value)
    assert "holds merchant_id, status" in message
    assert "[], [payment_method], [payment_method, status], [merchant_id, payment_method]" in message
    with pytest.raises(kpi.UnknownMetricError, match="defines amount, approved, processing_ms"):
        kpi.plan(BUNDLED, "foo")


def test_a_name_no_set_of_the_catalog_has_is_refused_as_no_dimension() -> None:
    """A typo, or a field never grouped by, is no dimension at all: saying that no set of the
    metric holds it would send the user to add a set for a misspelt name."""
    with pytest.raises(kpi.UncoveredDimensionsError) as err:
        kpi.plan(BUNDLED, "approved", ["merchant"])
    assert str(err.value).startswith("'merchant' is no dimension of the catalog in effect (")
    assert "(did you mean 'merchant_id'?); its dimensions are payment_method, status, merchant_id, currency" \
        in str(err.value)
    with pytest.raises(kpi.UncoveredDimensionsError, match=r"^'loyalty_tier', 'region' are no dimension of the "
                                                           r"catalog in effect \([^)]*\); its dimensions are"):
        kpi.plan(BUNDLED, "amount", filters={"region": "eu", "loyalty_tier": "gold"})


# ------------------------------------------------------------------------------ against the database


def test_per_merchant_kpis_merge_the_merchant_and_method_rows(known_events: None) -> None:
    by_merchant = rows("--metric", "approved", "--start", START, "--end", END, "--by", "merchant_id")
    assert by_merchant == [
        {"merchant_id": "m-1", "count": 3, "true_count": 2, "rate": pytest.approx(2 / 3)},
        {"merchant_id": "m-2", "count": 3, "true_count": 1, "rate": pytest.approx(1 / 3)},
        {"merchant_id": "m-3", "count": 1, "true_count": 1, "rate": 1.0}]
    one = rows("--metric", "processing_ms", "--start", START, "--end", END, "--where", "merchant_id=m-1")
    assert len(one) == 1 and (one[0]["count"], one[0]["min"], one[0]["max"], one[0]["sum"]) == (3, 100, 300, 600)
    none = cli("--metric", "approved", "--start", START, "--end", END, "--where", "merchant_id=m-9", "--format", "json")
    assert none.exit_code == 0 and json.loads(none.stdout) == [] and "no approved data" in none.stderr


def test_amounts_are_never_added_across_currencies(known_events: None, db: psycopg.Connection) -> None:
    by_method = rows("--metric", "amount", "--start", START, "--end", END, "--by", "payment_method")
    assert {(r["payment_method"], r["currency"]): r["sum"] for r in by_method} == {
        ("bank_transfer", "USD"): 7.5, ("card", "EUR"): 20, ("card", "JPY"): 1000, ("card", "USD"): 12.5,
        ("wallet", "EUR"): 3, ("wallet", "USD"): 5}
    total = rows("--metric", "amount", "--start", START, "--end", END)
    assert {r["currency"]: (r["count"], r["sum"]) for r in total} == {"EUR": (2, 23), "JPY": (1, 1000),
                                                                      "USD": (4, 25)}
    api = kpi.query(db, metric="amount", start=kpi_time(START), end=kpi_time(END), group_by=["payment_method"])
    assert all("currency" in r.dimensions for r in api)
    assert {r.dimensions["currency"]: r.sum for r in api if r.dimensions["payment_method"] == "card"} == {
        "USD": Decimal("12.5"), "EUR": Decimal("20"), "JPY": Decimal("1000")}
    stored = CliRunner().invoke(app, ["kpi", "--metric", "amount", "--start", START, "--end", END, "--by",
                                      "payment_method", "--stored", "currency"])
    assert stored.exit_code == 2 and "No such option" in stored.stderr


def test_a_flag_metric_shows_its_rate_and_groups_print_as_labels(known_events: None) -> None:
    table = cli("--metric", "approved", "--start", START, "--end", END, "--by", "payment_method")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["group", "count", "true_count", "rate"]
    card = next(line for line in lines if "payment_method=card" in line)
    assert card.split() == ["payment_method=card", "4", "3", "75.00%"]
    assert "{" not in table.stdout and "p50" not in table.stdout
    values = cli("--metric", "processing_ms", "--start", START, "--end", END)
    assert values.stdout.splitlines()[0].split() == ["group", "count", "sum", "mean", "min", "max", "p50", "p90",
                                                     "p95", "p99"]
    assert values.stdout.splitlines()[2].split()[:2] == ["(all)", "7"]


def test_windows_and_csv(known_events: None) -> None:
    hourly = rows("--metric", "approved", "--start", START, "--end", END, "--window", "1h")
    assert [(r["window_start"], r["count"]) for r in hourly] == [("2026-03-01T10:00:00+00:00", 3),
                                                                 ("2026-03-01T11:00:00+00:00", 4)]
    result = cli("--metric", "processing_ms", "--start", START, "--end", END, "--by", "payment_method",
                 "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["payment_method"] for r in parsed] == ["bank_transfer", "card", "wallet"]
    assert list(parsed[0]) == ["payment_method", "count", "sum", "mean", "min", "max", "p50", "p90", "p95", "p99"]
    assert float(parsed[1]["p50"]) == pytest.approx(200, rel=0.0054)   # card: 100, 200, 400, 600


def test_the_cli_refuses_what_no_stored_set_answers(known_events: None, tmp_path: Path) -> None:
    message = refusal("--metric", "approved", "--start", START, "--end", END, "--by", "merchant_id", "--by", "status")
    assert "no stored dimension set of 'approved' holds merchant_id, status" in message
    assert "unknown metric 'foo'" in refusal("--metric", "foo", "--start", START, "--end", END)
    # the sets that exist are the catalog's in effect (METRIC_CATALOG), the one the function writes with
    custom = yaml.safe_load(BUNDLED_CATALOG.read_text())
    custom["dimension_sets"] = [[]]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(custom))
    message = refusal("--metric", "approved", "--start", START, "--end", END, "--by", "payment_method",
                      env={"METRIC_CATALOG": str(path)})
    assert "its stored sets are []" in message and str(path) in message


def kpi_time(value: str) -> Any:
    from txmetrics_cli.parsing import parse_time

    return parse_time(value)


def test_a_bound_inside_a_5_minute_window_is_refused_not_widened(known_events: None, db: psycopg.Connection) -> None:
    """The rows hold whole 5-minute windows: a range from 10:02 would otherwise count the
    10:00 window's events before 10:02 too, or (keeping windows by their start) drop those
    after it. The 10:00-10:05 window holds k0 (10:00), k1 (10:01), k2 (10:02)."""
    message = refusal("--metric", "approved", "--start", "2026-03-01T10:02:00Z", "--end", END)
    assert "start 2026-03-01T10:02:00+00:00 is inside a 5-minute window" in message
    assert "use 2026-03-01T10:00Z or 2026-03-01T10:05Z" in message
    assert "end 2026-03-01T11:03:30+00:00 is inside" in refusal("--metric", "approved", "--start", START, "--end",
                                                                 "2026-03-01T11:03:30Z")
    with pytest.raises(kpi.KpiError, match="inside a 5-minute window"):   # the API refuses as the CLI does
        kpi.query(db, metric="approved", start=kpi_time("2026-03-01T10:00:00.000001Z"), end=kpi_time(END))
    # a bound with an offset is aligned when its UTC instant is: 15:35+05:30 is 10:05 UTC
    assert rows("--metric", "approved", "--start", "2026-03-01T15:35:00+05:30", "--end", END)[0]["count"] == 4
    assert rows("--metric", "approved", "--start", "2026-03-01T10:00:00Z", "--end", "2026-03-01T10:05Z")[0][
        "count"] == 3
    wide = kpi.whole_windows(kpi_time("2026-03-01T10:02:00Z"), kpi_time("2026-03-01T11:00:00.5Z"))
    assert wide == (kpi_time("2026-03-01T10:00:00Z"), kpi_time("2026-03-01T11:05:00Z"))


def test_a_set_added_to_the_catalog_later_never_answers_for_events_it_missed(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """[merchant_id] added after 6 events were ingested holds only the events after it: the
    query goes on reading [merchant_id, payment_method], which holds them all, and a query
    only a short set could answer is refused, saying why (found by an independent audit:
    8 events stored, `--by merchant_id` answered 2)."""
    def event(i: int, minute: int) -> dict[str, Any]:
        return {"event_id": f"s{i}", "transaction_id": f"t{i}", "occurred_at": f"2026-03-01T10:{minute:02d}:00Z",
                "merchant_id": "m-1", "payment_method": "card", "currency": "USD", "amount": "1.00",
                "status": "approved", "country": "DE"}

    deliver([event(i, i) for i in range(6)], partition_id="0")
    extended = yaml.safe_load(BUNDLED_CATALOG.read_text())
    extended["dimension_sets"] += [["merchant_id"], ["country"]]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(extended))
    monkeypatch.setenv("METRIC_CATALOG", str(path))        # the function and the CLI now run the new catalog
    by_merchant = ("--metric", "approved", "--by", "merchant_id", "--start", START, "--end", END)
    assert [r["count"] for r in rows(*by_merchant)] == [6]
    deliver([event(10 + i, 30 + i) for i in range(2)], partition_id="0", first_sequence=100)
    assert [r["count"] for r in rows(*by_merchant)] == [8]
    # from the change on, the new set holds every event of the range and answers
    assert [r["count"] for r in rows(*by_merchant[:4], "--start", "2026-03-01T10:30Z", "--end", END)] == [2]
    assert kpi.query(db, metric="approved", start=kpi_time("2026-03-01T10:30Z"), end=kpi_time(END),
                     group_by=["merchant_id"])[0].count == 2
    # only the new [country] set holds country: refused for the whole day, answered after the change
    message = refusal("--metric", "approved", "--by", "country", "--start", START, "--end", END)
    assert "misses events of the range: [] counts 8, [country] counts 2" in message
    assert [r["count"] for r in rows("--metric", "approved", "--by", "country", "--start", "2026-03-01T10:30Z",
                                     "--end", END)] == [2]


def test_a_smallest_set_added_later_is_checked_too(deliver: Callable[..., None], db: psycopg.Connection,
                                                   env: dict[str, str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The all-up total [] added after 6 events were stored under [payment_method] only: the
    total is read from [payment_method] (8 events), not from [] (2), found by the reviewer."""
    def event(i: int) -> dict[str, Any]:
        return {"event_id": f"r{i}", "transaction_id": "t", "occurred_at": f"2026-03-01T10:{i:02d}:00Z",
                "merchant_id": "m", "amount": 1, "currency": "EUR", "payment_method": "card", "status": "approved"}

    catalog = yaml.safe_load(BUNDLED_CATALOG.read_text())
    for sets, name, events in (([["payment_method"]], "old.yaml", range(6)),
                               ([[], ["payment_method"]], "new.yaml", range(10, 12))):
        catalog["dimension_sets"] = sets
        (tmp_path / name).write_text(yaml.safe_dump(catalog))
        monkeypatch.setenv("METRIC_CATALOG", str(tmp_path / name))
        deliver([event(i) for i in events], partition_id="0", first_sequence=events[0])
    total = kpi.query(db, metric="approved", start=kpi_time(START), end=kpi_time(END))
    assert [r.count for r in total] == [8]
    assert [r.count for r in kpi.query(db, metric="approved", start=kpi_time("2026-03-01T10:10Z"),
                                       end=kpi_time(END))] == [2]


def test_two_smallest_sets_both_added_later_are_not_taken_for_the_whole(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """[] and [payment_method] both added after 6 events were stored under [merchant_id,
    payment_method] only: they agree with each other (2 events), and only the larger set
    knows the range had 8 (found by the second reviewer: the total answered 2 of 8)."""
    def event(i: int) -> dict[str, Any]:
        return {"event_id": f"w{i}", "transaction_id": "t", "occurred_at": f"2026-03-01T10:{i:02d}:00Z",
                "merchant_id": f"m{i % 3}", "amount": 1, "currency": "EUR", "payment_method": "card",
                "status": "approved"}

    catalog = yaml.safe_load(BUNDLED_CATALOG.read_text())
    for sets, name, events in (([["merchant_id", "payment_method"]], "old.yaml", range(6)),
                               ([[], ["payment_method"], ["merchant_id", "payment_method"]], "new.yaml",
                                range(10, 12))):
        catalog["dimension_sets"] = sets
        (tmp_path / name).write_text(yaml.safe_dump(catalog))
        monkeypatch.setenv("METRIC_CATALOG", str(tmp_path / name))
        deliver([event(i) for i in events], partition_id="0", first_sequence=events[0])
    assert [r.count for r in kpi.query(db, metric="approved", start=kpi_time(START), end=kpi_time(END))] == [8]
    assert [(r.dimensions, r.count) for r in kpi.query(db, metric="approved", start=kpi_time(START),
                                                        end=kpi_time(END), group_by=["payment_method"])] == [
        ({"payment_method": "card"}, 8)]
    # from the change on, the small sets hold every event and answer
    assert [r.count for r in kpi.query(db, metric="approved", start=kpi_time("2026-03-01T10:10Z"),
                                       end=kpi_time(END))] == [2]
    # a set no longer in the catalog still tells what the range held: [merchant_id,
    # payment_method] dropped, the total is refused rather than answered with 2 of 8
    catalog["dimension_sets"] = [[], ["payment_method"]]
    (tmp_path / "dropped.yaml").write_text(yaml.safe_dump(catalog))
    monkeypatch.setenv("METRIC_CATALOG", str(tmp_path / "dropped.yaml"))
    with pytest.raises(kpi.KpiError, match=r"misses events of the range: \[merchant_id, payment_method\] counts 8"):
        kpi.query(db, metric="approved", start=kpi_time(START), end=kpi_time(END))


def test_naive_bounds_in_the_python_api_are_utc(deliver: Callable[..., None], db: psycopg.Connection,
                                                env: dict[str, str]) -> None:
    """An audit: with a fresh daily rollup in the range, naive bounds raised TypeError (naive
    against aware); without one, PostgreSQL read them in the session's TimeZone, so a New York
    session counted 1 of a day's 2 events. Naive bounds are UTC, as the 5-minute marks are."""
    from datetime import UTC, date, datetime

    from txmetrics.rollup import roll_day

    deliver([{"event_id": f"n{i}", "transaction_id": "t", "occurred_at": at, "merchant_id": "m", "amount": "1.00",
              "currency": "EUR", "payment_method": "card", "status": "approved"}
             for i, at in enumerate(["2026-03-02T02:00:00Z", "2026-03-02T23:30:00Z", "2026-03-03T12:00:00Z"])],
            partition_id="0")
    day = {"start": datetime(2026, 3, 2), "end": datetime(2026, 3, 3)}
    aware = {k: v.replace(tzinfo=UTC) for k, v in day.items()}
    with psycopg.connect(db.info.dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'America/New_York'")
        assert [r.count for r in kpi.query(conn, metric="approved", **day)] == [2]
        db.execute("SELECT txm_fold_aggregates()")
        roll_day(db, date(2026, 3, 2))
        wide = {"start": datetime(2026, 3, 1), "end": datetime(2026, 3, 4)}
        assert [r.count for r in kpi.query(conn, metric="approved", **wide)] == [3]
        assert [r.count for r in kpi.query(conn, metric="approved", **day)] == \
            [r.count for r in kpi.query(db, metric="approved", **aware)] == [2]


def test_a_metric_added_later_says_what_it_does_not_count(deliver: Callable[..., None], db: psycopg.Connection,
                                                         env: dict[str, str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stored set of a metric added to the catalog holds only the events ingested after
    the change, so the set check cannot see the gap: the KPI answered 2 of 8 events without
    a word. The manifest records each file's metrics: the command says how many archived
    events are not counted, and the backfill that adds them; once backfilled, nothing."""
    def event(i: int, minute: int) -> dict[str, Any]:
        return {"event_id": f"a{i}", "transaction_id": f"t{i}", "occurred_at": f"2026-03-01T10:{minute:02d}:00Z",
                "merchant_id": "m-1", "payment_method": "card", "currency": "USD", "amount": "1.00",
                "status": "declined" if i % 2 else "approved"}

    deliver([event(i, i) for i in range(6)], partition_id="0")
    extended = yaml.safe_load(BUNDLED_CATALOG.read_text())
    extended["metrics"].append({"name": "declined", "kind": "flag", "when": {"field": "status", "equals": "declined"}})
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(extended))
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    deliver([event(10 + i, 30 + i) for i in range(2)], partition_id="0", first_sequence=100)
    declined = ("--metric", "declined", "--start", START, "--end", END)
    result = cli(*declined, "--format", "json")
    assert result.exit_code == 0 and [r["count"] for r in json.loads(result.stdout)] == [2], result.output
    assert ("up to 6 archived event(s) in 1 raw file(s) overlapping this range were ingested before declined was "
            "in the catalog and are not counted: `txmetrics backfill --metric declined --start 2026-03-01T00:00:00+00:00 "
            "--end 2026-03-02T00:00:00+00:00` adds them") in result.stderr
    assert "archived event(s)" not in cli("--metric", "approved", "--start", START, "--end", END).stderr
    backfill = CliRunner().invoke(app, ["backfill", "--metric", "declined", "--start", "2026-03-01T00:00:00+00:00",
                                        "--end", "2026-03-02T00:00:00+00:00"])
    assert backfill.exit_code == 0, backfill.output
    result = cli(*declined, "--format", "json")
    assert [r["count"] for r in json.loads(result.stdout)] == [8] and "archived event(s)" not in result.stderr
