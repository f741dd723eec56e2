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


# ------------------------------------------------------------------------------ lifecycle / retention

lifecycle_app = typer.Typer(no_args_is_help=True, help="Retention policies in lifecycle/: validate, render, plan.")
retention_app = typer.Typer(no_args_is_help=True, help="PostgreSQL retention (what the daily function does).")
app.add_typer(lifecycle_app, name="lifecycle")
app.add_typer(retention_app, name="retention")


def _load_policy(stack: str) -> object:
    from lifecycle.policy import LifecycleError, load_policy

    try:
        return load_policy(stack)
    except LifecycleError as exc:
        console.print(f"[red]invalid policy[/red]: {exc}")
        raise typer.Exit(2) from None


def _storage_service() -> object:
    from txmetrics.adapters.blob import service_client

    conn_str = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    account_url = os.environ.get("AZURE_STORAGE_ACCOUNT_URL")
    if not conn_str and not account_url:
        from localdev.services import read_state, services_up

        if not services_up():
            console.print("[red]no storage[/red]: set AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL, "
                          "or start the local emulators with `make up`")
            raise typer.Exit(2)
        from localdev.services import azurite_connection_string

        conn_str = azurite_connection_string(read_state()["azurite_port"])
    return service_client(conn_str, account_url)


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from localdev.services import persistent_services, services_up

    if not services_up():
        console.print("[red]no database[/red]: set DATABASE_URL, or start the local emulators with `make up`")
        raise typer.Exit(2)
    return persistent_services().database_url


@lifecycle_app.command("validate")
def lifecycle_validate(stack: Annotated[str, typer.Option(help="stack (dev, prod, ...)")] = "dev") -> None:
    """Validate lifecycle/base.yaml + lifecycle/<stack>.yaml."""
    policy = _load_policy(stack)
    console.print(f"{stack}: valid ({', '.join(policy.files)})")  # type: ignore[attr-defined]


@lifecycle_app.command("render")
def lifecycle_render(stack: Annotated[str, typer.Option()] = "dev") -> None:
    """Print the storage management policy (ARM JSON) and the table retention Pulumi applies."""
    import json

    from lifecycle.policy import render_management_policy, table_retention

    policy = _load_policy(stack)
    print(json.dumps({"managementPolicy": render_management_policy(policy),  # type: ignore[arg-type]
                      "tableRetentionDays": table_retention(policy)}, indent=2))  # type: ignore[arg-type]


@lifecycle_app.command("plan")
def lifecycle_plan(stack: Annotated[str, typer.Option()] = "dev",
                   at: Annotated[str, typer.Option(help="UTC date to plan for, e.g. 2027-03-01")] = "",
                   simulate: Annotated[bool, typer.Option(help="apply the blob actions (Azurite)")] = False,
                   tables: Annotated[bool, typer.Option(help="include PostgreSQL")] = True) -> None:
    """Show what the policy will do by --at: blobs and bytes per action and prefix, partitions dropped."""
    import psycopg
    from rich.table import Table

    from lifecycle.plan import make_plan
    from lifecycle.plan import simulate as run_simulation

    policy = _load_policy(stack)
    when = datetime.fromisoformat(at).replace(tzinfo=UTC) if at else datetime.now(UTC)
    service = _storage_service()
    conn = psycopg.connect(_database_url()) if tables else None
    try:
        plan = make_plan(policy, when, service=service, conn=conn)  # type: ignore[arg-type]
    finally:
        if conn is not None:
            conn.close()
    t = Table(title=f"lifecycle plan for {stack} at {when:%Y-%m-%d}")
    for col in ("rule", "prefix", "action", "blobs", "bytes"):
        t.add_column(col, justify="right" if col in ("blobs", "bytes") else "left")
    for a in plan.blob_actions:
        t.add_row(a.rule, a.prefix, a.action, f"{a.count:,}", f"{a.bytes:,}")
    console.print(t)
    console.print(f"blobs with no action due: {plan.unchanged_blobs:,}")
    for table, parts in plan.dropped_partitions.items():
        console.print(f"{table}: drop {len(parts)} partition(s) {', '.join(parts[:5])}{' ...' if len(parts) > 5 else ''}")
    for table, n in plan.deleted_rows.items():
        console.print(f"{table}: delete {n:,} row(s)")
    if simulate:
        done = run_simulation(plan, policy, service)  # type: ignore[arg-type]
        console.print(f"simulated: {dict(sorted(done.items()))}")


@retention_app.command("apply")
def retention_apply(stack: Annotated[str, typer.Option()] = "dev",
                    today: Annotated[str, typer.Option(help="UTC date to apply as of (default: today)")] = "") -> None:
    """Create partitions ahead and drop/delete what is past retention (idempotent)."""
    import psycopg

    from lifecycle.policy import table_retention
    from txmetrics.retention import enforce

    policy = _load_policy(stack)
    day = datetime.fromisoformat(today).date() if today else datetime.now(UTC).date()
    with psycopg.connect(_database_url(), autocommit=True) as conn:
        report = enforce(conn, table_retention(policy), day)  # type: ignore[arg-type]
    console.print(f"created {report.created_partitions} partition(s); dropped {report.dropped_partitions or 'none'}; "
                  f"deleted rows {report.deleted_rows}")


if __name__ == "__main__":
    app()
