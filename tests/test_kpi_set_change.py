"""A catalog change that replaces every stored set of a metric (its `by` extended) leaves no
set that holds a range spanning the change: a KPI over it is refused, not answered from the
events after the change alone (an acceptance audit: 5 of 8 events, in silence)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from txmetrics import kpi, runtime
from txmetrics.rollup import roll_day
from txmetrics.settings import BUNDLED_CATALOG
from txmetrics_cli.main import app


def event(i: int, at: str) -> dict[str, Any]:
    return {"event_id": f"c{i}", "transaction_id": f"t{i}", "occurred_at": at, "merchant_id": "m-1",
            "payment_method": "card", "currency": "EUR", "amount": "10.00", "status": "approved", "country": "DE"}


def by_country(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = yaml.safe_load(BUNDLED_CATALOG.read_text())
    for m in catalog["metrics"]:
        if m["name"] == "amount":
            m["by"] = ["currency", "country"]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    runtime.reset()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_by_extended_later_never_answers_for_the_events_before_it(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """amount by [currency], 3 events; then by [currency, country] (every set of amount
    changes), 5 events: no set holds the day's 8 events, and the largest set count (5) is no
    answer."""
    deliver([event(i, f"2026-03-01T10:{i:02d}:00Z") for i in range(3)], partition_id="0")
    by_country(tmp_path, monkeypatch)
    deliver([event(10 + i, f"2026-03-01T10:{30 + i:02d}:00Z") for i in range(5)], partition_id="0",
            first_sequence=100)
    with pytest.raises(kpi.KpiError, match=r"misses events of the range: its stored sets together count at least 8"):
        kpi.query(db, metric="amount", start=utc("2026-03-01"), end=utc("2026-03-02"), group_by=["merchant_id"])
    result = CliRunner().invoke(app, ["kpi", "--metric", "amount", "--start", "2026-03-01", "--end", "2026-03-02"],
                                env={"COLUMNS": None})
    assert result.exit_code == 2 and "count at least 8" in result.stderr, result.output
    # from the change on, the new sets hold every event and answer
    rows = kpi.query(db, metric="amount", start=utc("2026-03-01T10:30"), end=utc("2026-03-02"),
                     group_by=["merchant_id"])
    assert [r.count for r in rows] == [5]
    # what the old sets can answer (not by country) is still answered from them, whole
    old = CliRunner().invoke(app, ["kpi", "--metric", "approved", "--start", "2026-03-01", "--end", "2026-03-02",
                                   "--format", "json"], env={"COLUMNS": None})
    assert [r["count"] for r in json.loads(old.stdout)] == [8], old.output


def test_the_change_on_another_day_is_seen_through_a_rollup(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same change, its day before rolled up: the rolled day counts as one window."""
    deliver([event(i, f"2026-03-01T1{i}:00:00Z") for i in range(3)], partition_id="0")
    db.execute("SELECT txm_fold_aggregates()")
    assert roll_day(db, date(2026, 3, 1))
    by_country(tmp_path, monkeypatch)
    deliver([event(10 + i, f"2026-03-02T1{i}:00:00Z") for i in range(5)], partition_id="0", first_sequence=100)
    with pytest.raises(kpi.KpiError, match=r"count at least 8"):
        kpi.query(db, metric="amount", start=utc("2026-03-01"), end=utc("2026-03-03"))
    assert [r.count for r in kpi.query(db, metric="amount", start=utc("2026-03-02"), end=utc("2026-03-03"))] == [5]
    assert [r.count for r in kpi.query(db, metric="approved", start=utc("2026-03-01"), end=utc("2026-03-03"),
                                       group_by=["payment_method"])] == [8]


def test_a_change_within_a_rolled_up_day_is_seen_as_before_the_rollup(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The change in the middle of a day that is then rolled up: a rollup's one row per set
    cannot tell the morning (old sets) from the afternoon (new sets), so that day is not rolled
    up (it stays stale) and is counted from its 5-minute rows: the query is refused as it was
    before the rollup job ran."""
    deliver([event(i, f"2026-03-01T0{i}:00:00Z") for i in range(3)], partition_id="0")
    by_country(tmp_path, monkeypatch)
    deliver([event(10 + i, f"2026-03-01T1{i}:00:00Z") for i in range(5)], partition_id="0", first_sequence=100)
    deliver([event(20 + i, f"2026-03-02T1{i}:00:00Z") for i in range(2)], partition_id="0", first_sequence=200)
    db.execute("SELECT txm_fold_aggregates()")
    for rolled in (False, True):
        if rolled:
            assert not roll_day(db, date(2026, 3, 1)) and roll_day(db, date(2026, 3, 2))
        with pytest.raises(kpi.KpiError, match=r"count at least 10"):
            kpi.query(db, metric="amount", start=utc("2026-03-01"), end=utc("2026-03-03"))
        assert [r.count for r in kpi.query(db, metric="amount", start=utc("2026-03-01T10:00"),
                                           end=utc("2026-03-03"))] == [7]
        assert [r.count for r in kpi.query(db, metric="approved", start=utc("2026-03-01"),
                                           end=utc("2026-03-03"))] == [10]


def test_a_change_within_a_rolled_up_day_with_equal_counts_on_each_side_is_still_refused(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The change at noon, 3 events before it (old sets) and 3 after it (new sets): a rollup's
    per-set day counts are equal (3 and 3), and the set check, reading the rollup, answered 3
    of 6 in silence where it had refused before the rollup (a review). Such a day is not
    rolled up: it stays stale and is read from its 5-minute rows."""
    deliver([event(i, f"2026-03-01T0{i}:00:00Z") for i in range(3)], partition_id="0")
    by_country(tmp_path, monkeypatch)
    deliver([event(10 + i, f"2026-03-01T1{i}:00:00Z") for i in range(3)], partition_id="0", first_sequence=100)
    db.execute("SELECT txm_fold_aggregates()")
    for rolled in (False, True):
        if rolled:
            assert not roll_day(db, date(2026, 3, 1))
            assert db.execute("SELECT stale FROM aggregate_rollups WHERE day = '2026-03-01'").fetchone() == (True,)
        with pytest.raises(kpi.KpiError, match=r"count at least 6"):
            kpi.query(db, metric="amount", start=utc("2026-03-01"), end=utc("2026-03-02"))
