"""Local services: `up`, `down`, `env`, `status`, and `run` (synthetic events through the
real function). The services themselves (embedded PostgreSQL, Azurite from npm) are
localdev's; these commands only start, describe and use them."""

from __future__ import annotations

import os
import shlex
import signal
from datetime import datetime
from typing import Annotated, Any

import typer

from txmetrics.errors import describe_database

from . import context
from .output import FormatOption, console, emit, note
from .parsing import parse_day

app = typer.Typer()


def _exports(env: dict[str, str]) -> str:
    """Shell lines that set the settings (one per line, never wrapped: `eval "$(txmetrics env)"`)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


@app.command()
def up() -> None:
    """Start the local services and print their settings.

    Starts PostgreSQL and Azurite under .local/, applies the migrations, and prints
    `export` lines for their settings: eval "$(txmetrics up)".

    They keep running (and keep their data) until `txmetrics down`; `make run` and every
    command use them when DATABASE_URL and the storage settings are unset."""
    from localdev.services import start_local_services
    from txmetrics import schema

    services, already = start_local_services()
    schema.apply_all(services.database_url)
    note("local services were already running" if already else "local services started (stop them: make down)")
    typer.echo(_exports(services.env()), nl=False)


@app.command()
def down() -> None:
    """Stop the local services (their data stays).

    Stops what `txmetrics up` started; the data stays under .local/."""
    from localdev.services import stop_local_services

    note("local services stopped" if stop_local_services() else "local services were not running")


@app.command()
def env() -> None:
    """Print the local services' settings.

    One `export` line per setting of the running local services: eval "$(txmetrics env)"."""
    from localdev.services import local_env

    settings = local_env()
    if not settings:
        from txmetrics.errors import NotFoundError

        raise NotFoundError("the local services are not running: start them with `make up`")
    typer.echo(_exports(settings), nl=False)


@app.command()
def status(fmt: FormatOption = "table") -> None:
    """Show what runs where.

    Each local service (state, address, pid, data directory), and which services the
    other commands use."""
    from localdev.services import status as service_status
    from txmetrics.errors import describe_database

    emit(service_status(), fmt, columns=("service", "state", "address", "pid", "data"))
    source = context.settings_source()
    if source == "none":
        note("commands use: nothing (set DATABASE_URL and AZURE_STORAGE_CONNECTION_STRING, or run `make up`)")
        return
    env = context.environment()
    database = describe_database(env["DATABASE_URL"]) if env.get("DATABASE_URL") else "(DATABASE_URL not set)"
    try:
        storage = context.storage_where()
    except Exception:  # unset storage settings are reported as such
        storage = "(storage not set)"
    note(f"commands use ({source}): PostgreSQL {database}; Blob Storage {storage}")


def _stop_on_first_interrupt(signum: int, frame: Any) -> None:
    # Later Ctrl-Cs must not cut the cleanup short (it ends within seconds).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@app.command()
def run(events: Annotated[int, typer.Option(min=1, help="number of events to generate")] = 50_000,
        days: Annotated[float, typer.Option(min=0.001, help="days the events span")] = 1.0,
        seed: Annotated[int, typer.Option(help="random seed (same seed, same events)")] = 7,
        partitions: Annotated[int, typer.Option(min=1, help="Event Hubs partitions (parallel workers)")] = 4,
        batch_size: Annotated[int, typer.Option(min=1, help="events per trigger batch")] = 1000,
        start: Annotated[datetime | None, typer.Option(parser=parse_day, metavar="DATE",
                                                       help="UTC date of the first event  [default: 2026-03-01]")]
        = None) -> None:
    """Ingest synthetic events through the function.

    Generates payment events and runs them through the real function against the local
    services, and ends with the KPI report for their range (.local/report.html). Uses the
    services of `make up` when they run, and leaves them running; otherwise starts them under
    .local/ and stops them at the end. Ctrl-C stops the workers and the services it started
    within seconds."""

    from localdev.run import RunConfig, summary, write_report
    from localdev.run import run as run_ingest
    from localdev.services import local_dir, local_services, services_up
    from txmetrics import schema

    # Also when started with SIGINT ignored (make's shell ignores it so that only this
    # command reports the interruption): Ctrl-C must stop a run.
    signal.signal(signal.SIGINT, _stop_on_first_interrupt)
    config = RunConfig(events=events, days=days, seed=seed, partitions=partitions, batch_size=batch_size)
    if start is not None:
        config.start = start
    reusing = services_up()
    out = console()
    try:
        with local_services() as (services, started):
            # what stops as the run ends: services started here, unless DATABASE_URL and
            # AZURE_STORAGE_CONNECTION_STRING name the user's own (nothing is started then)
            own = bool(os.environ.get("DATABASE_URL")) and bool(os.environ.get("AZURE_STORAGE_CONNECTION_STRING"))
            stopping = started and not own
            schema.apply_all(services.database_url)
            container = context.settings().raw_events_container
            env = {**services.env(), "RAW_EVENTS_CONTAINER": container}
            out.print(f"PostgreSQL: {describe_database(services.database_url)}   Blob Storage: {services.blob_endpoint}")
            result = run_ingest(config, env, console=out)
            # services this run started stop as it ends: the closing hints say to start them first
            summary(services.database_url, container, services.storage_connection_string, result, config, out,
                    services_stop=stopping)
            write_report(services.database_url, services.storage_connection_string, config,
                         local_dir() / "report.html", out, services_stop=stopping)
    except KeyboardInterrupt:
        kept = "the services of `make up` keep running" if reusing else "local services stopped"
        note(f"interrupted: workers stopped, {kept}")
        raise typer.Exit(130) from None

