"""`make run`'s driver: every generated event through the function, and a second run on the
same data is told apart as a redelivery rather than reported as fresh throughput."""

from __future__ import annotations

import io
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from localdev.run import RunConfig, psql, run, summary, write_report
from localdev.services import LocalServices
from tests.helpers import scalar


def test_a_rerun_counts_as_duplicates_not_new_events(services: LocalServices, db: psycopg.Connection,
                                                      container_name: str) -> None:
    config = RunConfig(events=2000, partitions=2, batch_size=500, days=0.1)
    env = {**services.env(), "RAW_EVENTS_CONTAINER": container_name}
    out = io.StringIO()
    console = Console(file=out, width=200)
    first = run(config, env, console=console)
    valid = scalar(db, "SELECT count(*) FROM ingested_events")
    failed = scalar(db, "SELECT count(*) FROM failed_items")
    assert first["new"] == valid and first["duplicates"] == 0 and valid + failed == config.events
    again = run(config, env, console=console)
    assert again["new"] == 0 and again["duplicates"] == valid
    summary(services.database_url, container_name, services.storage_connection_string, again, config, console)
    text = out.getvalue()
    assert f"this run: 0 new events, {valid:,} already ingested" in text and "redelivery" in text


def test_closing_hints_say_to_start_the_services_when_the_run_stops_its_own(
        services: LocalServices, db: psycopg.Connection, container_name: str, tmp_path: Path) -> None:
    """`make run` without `make up` starts the services and stops them as it ends: its psql
    line and `txmetrics report` hint pointed at services already stopped. Then they say to
    start them first, and name the database by $DATABASE_URL (which `make up` exports).
    Emptied tables (`db`): the generator's ids repeat across runs, and one of the same day is
    stored once, so the run would store nothing and make no container."""
    config = RunConfig(events=300, partitions=1, batch_size=300, days=0.05)
    result = run(config, {**services.env(), "RAW_EVENTS_CONTAINER": container_name}, console=Console(file=io.StringIO()))
    hints: dict[bool, str] = {}
    for services_stop in (True, False):
        out = io.StringIO()
        console = Console(file=out, width=300)
        summary(services.database_url, container_name, services.storage_connection_string, result, config, console,
                services_stop=services_stop)
        write_report(services.database_url, services.storage_connection_string, config, tmp_path / "r.html",
                     console, services_stop=services_stop)
        hints[services_stop] = out.getvalue().split("Where to look next", 1)[1]
    stopping, kept = hints[True], hints[False]
    assert 'start them first: eval "$(make -s up)"' in stopping and '"$DATABASE_URL"' in stopping
    assert services.database_url not in stopping
    assert 'another range, once the services run (eval "$(make -s up)"): txmetrics report --start ' in stopping
    assert f"{psql()} {services.database_url}  -- SELECT" in kept and "make -s up" not in kept
    assert "another range: txmetrics report --start " in kept


def test_a_run_on_the_users_own_services_does_not_say_it_stopped_them(
        services: LocalServices, db: psycopg.Connection, container_name: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """DATABASE_URL and AZURE_STORAGE_CONNECTION_STRING name services of the user's own (no
    `make up`): the run starts and stops nothing, so its hints must not send the user to
    `make up`, whose database lacks this run's data (found by a reviewer)."""
    from typer.testing import CliRunner

    from localdev.services import services_up
    from txmetrics_cli.main import app

    for key, value in {**services.env(), "RAW_EVENTS_CONTAINER": container_name}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TXMETRICS_LOCAL_DIR", str(tmp_path))
    assert not services_up()
    result = CliRunner().invoke(app, ["run", "--events", "200", "--partitions", "1", "--batch-size", "200",
                                      "--days", "0.05"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "make -s up" not in result.output and "psql" in result.output
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone()[0] > 0     # still up, with the data
