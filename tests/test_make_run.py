"""`make run`'s driver: every generated event through the function, and a second run on the
same data is told apart as a redelivery rather than reported as fresh throughput."""

from __future__ import annotations

import io

import psycopg
from rich.console import Console

from localdev.run import RunConfig, run, summary
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
