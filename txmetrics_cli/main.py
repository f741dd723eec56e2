"""The `txmetrics` command line (typer: typed options and generated help for free)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="txmetrics: payment-transaction metrics pipeline (local platform, queries, operations).")
console = Console()


@app.command()
def up() -> None:
    """Start persistent local emulators (PostgreSQL, Azurite) under .local/ and apply migrations."""
    from localdev.services import persistent_services, services_up, write_state
    from txmetrics import schema

    if services_up():
        console.print("Local services are already running.")
    services = persistent_services()
    services.start()
    write_state(services)
    schema.apply_all(services.database_url)
    # Leave them running: `make down` stops them.
    from localdev.services import _unregister_cleanup

    _unregister_cleanup(services)
    console.print(f"DATABASE_URL={services.database_url}")
    console.print(f'AZURE_STORAGE_CONNECTION_STRING="{services.storage_connection_string}"')


@app.command()
def down() -> None:
    """Stop the emulators `txmetrics up` started (data stays under .local/)."""
    from localdev.services import STATE_FILE, persistent_services

    services = persistent_services()
    services.stop()
    STATE_FILE.unlink(missing_ok=True)
    console.print("Local services stopped.")


@app.command()
def migrate(database_url: Annotated[str | None, typer.Option(envvar="DATABASE_URL")] = None) -> None:
    """Apply the yoyo migrations (to DATABASE_URL, or to the local PostgreSQL)."""
    from txmetrics import schema

    if database_url:
        applied = schema.apply_all(database_url)
    else:
        from localdev.services import persistent_services, running

        with running(persistent_services()) as services:
            applied = schema.apply_all(services.database_url)
    console.print(f"Applied: {', '.join(applied) if applied else 'nothing (schema up to date)'}")


@app.command()
def run(events: Annotated[int, typer.Option(help="number of events")] = 50_000,
        days: Annotated[float, typer.Option(help="days the events span")] = 1.0,
        seed: Annotated[int, typer.Option(help="random seed")] = 7,
        partitions: Annotated[int, typer.Option(help="Event Hubs partitions (parallel workers)")] = 4,
        batch_size: Annotated[int, typer.Option(help="events per trigger batch")] = 1000,
        start: Annotated[str, typer.Option(help="UTC date of the first event")] = "2026-03-01") -> None:
    """Ingest synthetic payment events through the function against local services."""
    from localdev.run import RunConfig, summary
    from localdev.run import run as run_ingest
    from localdev.services import persistent_services, services_up
    from txmetrics import schema

    config = RunConfig(events=events, days=days, seed=seed, partitions=partitions, batch_size=batch_size,
                       start=datetime.fromisoformat(start).replace(tzinfo=UTC))
    reuse = services_up()
    services = persistent_services()
    services.start()
    try:
        schema.apply_all(services.database_url)
        container = os.environ.get("RAW_EVENTS_CONTAINER", "raw-events")
        env = {**services.env(), "RAW_EVENTS_CONTAINER": container}
        console.print(f"PostgreSQL: {services.database_url}   Blob Storage: "
                      f"{services.storage_connection_string.split('BlobEndpoint=')[-1].rstrip(';')}")
        result = run_ingest(config, env, console=console)
        summary(services.database_url, container, services.storage_connection_string, result, config, console)
    finally:
        if not reuse:
            services.stop()


if __name__ == "__main__":
    app()
