"""Retention from the command line: an unknown stack is an error everywhere (never the
base policy by default), and `retention apply` prints what it will drop before it drops
it; --dry-run drops nothing."""

from __future__ import annotations

import json

import psycopg
import pytest
from typer.testing import CliRunner

from tests.helpers import partitions
from txmetrics_cli.main import app


@pytest.fixture
def expired_partitions(env: dict[str, str], db: psycopg.Connection) -> list[str]:
    """dynamic_metrics day partitions 2026-06-10 .. 2026-06-20, one row on the 15th and the 16th."""
    db.execute("SELECT txm_drop_expired_partitions('dynamic_metrics', '2100-01-01')")
    db.execute("SELECT txm_drop_expired_partitions('ingested_events', '2100-01-01')")
    db.execute("SELECT txm_ensure_day_partitions('dynamic_metrics', '2026-06-10', '2026-06-20')")
    for day in ("2026-06-15", "2026-06-16"):
        db.execute("INSERT INTO dynamic_metrics (event_id, metric_name, value, occurred_at) VALUES (%s, 'amount', 1, %s)",
                   (f"e-{day}", f"{day}T12:00:00Z"))
    return partitions(db, "dynamic_metrics")


@pytest.mark.parametrize("command", [["lifecycle", "validate"], ["lifecycle", "render"], ["lifecycle", "plan"],
                                     ["retention", "apply", "--today", "2026-06-30"],
                                     ["retention", "apply", "--today", "2026-06-30", "--dry-run"]])
def test_an_unknown_stack_is_refused_naming_the_known_ones(command: list[str], expired_partitions: list[str],
                                                           db: psycopg.Connection) -> None:
    result = CliRunner().invoke(app, [*command, "--stack", "qa"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()] and "Traceback" not in result.output
    assert "unknown stack 'qa': the known stacks are dev, prod" in result.stderr
    assert partitions(db, "dynamic_metrics") == expired_partitions       # nothing dropped
    assert db.execute("SELECT count(*) FROM dynamic_metrics").fetchone() == (2,)


def test_retention_apply_shows_what_it_drops_and_dry_run_drops_nothing(expired_partitions: list[str],
                                                                       db: psycopg.Connection) -> None:
    expected = [f"dynamic_metrics_p202606{d:02d}" for d in range(10, 16)]    # dev keeps 14 days: cutoff 06-16
    dry = CliRunner().invoke(app, ["retention", "apply", "--stack", "dev", "--today", "2026-06-30", "--dry-run",
                                   "--format", "json"])
    assert dry.exit_code == 0, dry.output
    planned = {r["target"]: r for r in json.loads(dry.stdout) if r["action"] == "drop partitions"}
    assert planned["dynamic_metrics"]["items"] == expected and planned["dynamic_metrics"]["count"] == 6
    assert "dry run for dev as of 2026-06-30: nothing changed" in dry.stderr
    assert partitions(db, "dynamic_metrics") == expired_partitions
    assert db.execute("SELECT count(*) FROM dynamic_metrics").fetchone() == (2,)

    done = CliRunner().invoke(app, ["retention", "apply", "--stack", "dev", "--today", "2026-06-30"])
    assert done.exit_code == 0, done.output
    listed = next(line for line in done.stdout.splitlines() if "dynamic_metrics" in line and "drop" in line)
    assert "dynamic_metrics_p20260610" in listed and "(+1 more)" in listed
    assert f"dropped {len(expected)} partition(s)" in done.stderr
    remaining = partitions(db, "dynamic_metrics")
    assert not set(expected) & set(remaining) and "dynamic_metrics_p20260616" in remaining
    assert db.execute("SELECT event_id FROM dynamic_metrics").fetchall() == [("e-2026-06-16",)]


def test_retention_apply_refuses_a_date_after_today(expired_partitions: list[str], db: psycopg.Connection) -> None:
    """`--today 2027-...` for 2026-... (a year's typo) dropped every partition and aggregate the
    policy still keeps, the manifest rows of blobs still in the tree, and moved the ledger's
    first day (retention_horizons, which only moves forward) past today: the function then
    refused every live event as past_retention (an audit: 193 of 200 new events). A date after
    today is refused; --dry-run still previews it (as `txmetrics lifecycle plan --at` does)."""
    from datetime import UTC, datetime, timedelta

    future = (datetime.now(UTC) + timedelta(days=400)).date().isoformat()
    result = CliRunner().invoke(app, ["retention", "apply", "--stack", "dev", "--today", future])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert f"--today {future} is after today" in result.stderr and "fix:" in result.stderr
    assert partitions(db, "dynamic_metrics") == expired_partitions       # nothing dropped
    assert db.execute("SELECT count(*) FROM dynamic_metrics").fetchone() == (2,)
    assert db.execute("SELECT count(*) FROM retention_horizons").fetchone() == (0,)
    dry = CliRunner().invoke(app, ["retention", "apply", "--stack", "dev", "--today", future, "--dry-run"])
    assert dry.exit_code == 0, dry.output
