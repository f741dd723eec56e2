"""The documented commands exist and work against the real services."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from localdev.services import LocalServices
from txmetrics_cli.main import app

EVENT = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m-1", "amount": "5.00",
         "currency": "USD", "payment_method": "card", "status": "approved", "processing_ms": 120}


@pytest.fixture
def cli_env(env: dict[str, str], services: LocalServices, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return env


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_query_kpi_and_failed_commands(cli_env: dict[str, str], deliver: Callable[..., None],
                                       db: psycopg.Connection, tmp_path: Path) -> None:
    deliver([{**EVENT, "event_id": "q1"}, {**EVENT, "event_id": "q2", "payment_method": "wallet"},
             {**EVENT, "event_id": "q3", "status": "nope"}], partition_id="0")
    out = run("query", "--start", "2026-03-01T00:00", "--end", "2026-03-02T00:00", "--format", "jsonl",
              "--container", cli_env["RAW_EVENTS_CONTAINER"])
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sorted(r["event_id"] for r in rows) == ["q1", "q2"]
    assert "2 event(s) from 1 of 1 planned file(s)" in out
    target = tmp_path / "out.parquet"
    run("query", "--start", "2026-03-01", "--end", "2026-03-02", "--merchant", "m-1", "--format", "parquet",
        "--out", str(target), "--container", cli_env["RAW_EVENTS_CONTAINER"])
    assert pq.read_table(target).num_rows == 2
    kpis = run("kpi", "--metric", "approved", "--start", "2026-03-01", "--end", "2026-03-02", "--by", "payment_method")
    assert "card" in kpis and "wallet" in kpis
    listed = run("failed", "list")
    assert "invalid_status" in listed
    item_id = db.execute("SELECT id FROM failed_items").fetchone()[0]
    run("failed", "set", str(item_id), "status", "declined")
    replayed = run("failed", "replay", str(item_id))
    assert f"{item_id}: replayed" in replayed
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (3,)
    compacted = run("compact", "--day", "2026-03-01", "--container", cli_env["RAW_EVENTS_CONTAINER"])
    assert "2 file(s) -> 1 file(s), 3 rows" in compacted   # the live file and the replayed one
    assert "rolled up" in run("rollup", "--day", "2026-03-01")
