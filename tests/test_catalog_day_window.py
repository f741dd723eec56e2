"""Acceptance audit: a catalog whose window_seconds holds 86400 (allowed: it divides a day) beside
the daily rollups, which are window_seconds = 86400 rows too: KPIs and stored rows stay exact
through ingest, rollup, late events, fold and backfill."""

from __future__ import annotations

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
from txmetrics_cli.main import app


def event(i: int, at: str, risk: Any) -> dict[str, Any]:
    return {"event_id": f"d{i}", "transaction_id": f"t{i}", "occurred_at": at, "merchant_id": f"m-{i % 2}",
            "payment_method": "card", "currency": "EUR", "amount": "10.00", "status": "approved",
            "attributes": {"risk": risk}}


def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, metrics: list[str]) -> None:
    defs = {"risk": {"name": "risk", "kind": "value", "source": "attributes.risk"},
            "risky": {"name": "risky", "kind": "flag", "when": {"field": "attributes.risk", "in": [5, 7]}}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"window_seconds": [300, 3600, 86400], "dimension_sets": [[], ["merchant_id"]],
                                    "metrics": [defs[m] for m in metrics]}))
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    runtime.reset()


def day_rows(db: psycopg.Connection, metric: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT dimensions::text, count, sum, min, max FROM aggregate_histograms_current "
                      "WHERE metric_name = %s AND window_seconds = 86400 ORDER BY dimensions = '{}' DESC, 1",
                      (metric,)).fetchall()


def totals(db: psycopg.Connection, metric: str, **kw: Any) -> list[tuple[Any, ...]]:
    return [(r.dimensions, r.count, r.sum, r.min, r.max) for r in kpi.query(
        db, metric=metric, start=datetime(2026, 3, 1, tzinfo=UTC), end=datetime(2026, 3, 3, tzinfo=UTC), **kw)]


def test_a_day_window_in_the_catalog_beside_the_rollups(deliver: Callable[..., None], db: psycopg.Connection,
                                                       env: dict[str, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    catalog(tmp_path, monkeypatch, "one.yaml", ["risk"])
    deliver([event(i, f"2026-03-01T{i:02d}:10:00Z", i) for i in range(10)], partition_id="0")
    db.execute("SELECT txm_fold_aggregates()")
    want = [("{}", 10, 45, 0.0, 9.0), ('{"merchant_id": "m-0"}', 5, 20, 0.0, 8.0),
            ('{"merchant_id": "m-1"}', 5, 25, 1.0, 9.0)]
    assert day_rows(db, "risk") == want
    assert roll_day(db, date(2026, 3, 1))
    assert day_rows(db, "risk") == want
    assert totals(db, "risk") == [({}, 10, 45, 0.0, 9.0)]
    # a late event: pending, then folded (the day window's delta lands on the rollup row)
    deliver([event(20, "2026-03-01T23:59:00Z", 100)], partition_id="0", first_sequence=20)
    assert totals(db, "risk") == [({}, 11, 145, 0.0, 100.0)]
    assert totals(db, "risk", window="1d") == [({}, 11, 145, 0.0, 100.0)]
    db.execute("SELECT txm_fold_aggregates()")
    assert totals(db, "risk") == [({}, 11, 145, 0.0, 100.0)]
    assert roll_day(db, date(2026, 3, 1))
    assert totals(db, "risk") == [({}, 11, 145, 0.0, 100.0)]
    assert day_rows(db, "risk")[0] == ("{}", 11, 145, 0.0, 100.0)
    # a metric added, backfilled into the rolled-up day
    catalog(tmp_path, monkeypatch, "two.yaml", ["risk", "risky"])
    result = CliRunner().invoke(app, ["backfill", "--metric", "risky", "--start", "2026-03-01", "--end", "2026-03-02"])
    assert result.exit_code == 0, result.output
    assert totals(db, "risky") == [({}, 11, 2, 0.0, 1.0)]
    db.execute("SELECT txm_fold_aggregates()")
    assert totals(db, "risky") == [({}, 11, 2, 0.0, 1.0)]
    assert day_rows(db, "risky")[0] == ("{}", 11, 2, 0.0, 1.0)
    assert roll_day(db, date(2026, 3, 1))
    assert totals(db, "risky") == [({}, 11, 2, 0.0, 1.0)] and totals(db, "risk")[0][1] == 11
    assert day_rows(db, "risky")[0] == ("{}", 11, 2, 0.0, 1.0)
    assert day_rows(db, "risk")[0] == ("{}", 11, 145, 0.0, 100.0)
    assert db.execute("SELECT count(*) FROM aggregate_histograms WHERE window_seconds = 3600").fetchone() == (44,)
