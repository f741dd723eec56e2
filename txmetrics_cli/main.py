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


# ------------------------------------------------------------------------------ read side


def _archive(container: str) -> object:
    from txmetrics.adapters.blob import BlobArchive

    return BlobArchive(_storage_service(), container)  # type: ignore[arg-type]


def _when(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command("query")
def query_events(start: Annotated[str, typer.Option(help="UTC start, inclusive (2026-03-01T10:00)")],
                 end: Annotated[str, typer.Option(help="UTC end, exclusive")],
                 merchant: Annotated[str | None, typer.Option()] = None,
                 status: Annotated[str | None, typer.Option()] = None,
                 event_id: Annotated[str | None, typer.Option()] = None,
                 transaction_id: Annotated[str | None, typer.Option()] = None,
                 fmt: Annotated[str, typer.Option("--format", help="table, jsonl, csv or parquet")] = "table",
                 out: Annotated[str | None, typer.Option(help="output file (parquet needs one)")] = None,
                 rehydrate: Annotated[str | None, typer.Option(help="Standard or High: rehydrate archived files")] = None,
                 container: Annotated[str, typer.Option(envvar="RAW_EVENTS_CONTAINER")] = "raw-events") -> None:
    """Raw events in a time range from the Parquet archive (only the files that can match are read)."""
    import sys

    import psycopg
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from txmetrics.query import QueryResult
    from txmetrics.query import query_events as run_query
    from txmetrics.query import rehydrate as request_rehydration

    if fmt not in ("table", "jsonl", "csv", "parquet"):
        raise typer.BadParameter("use table, jsonl, csv or parquet", param_hint="--format")
    if fmt == "parquet" and not out:
        raise typer.BadParameter("parquet output needs --out FILE", param_hint="--out")
    archive = _archive(container)
    result = QueryResult()
    sink = open(out, "w", encoding="utf-8") if out and fmt != "parquet" else sys.stdout  # noqa: SIM115
    writer: pq.ParquetWriter | None = None
    header_written = False
    try:
        with psycopg.connect(_database_url()) as conn:
            tables = run_query(conn, archive, _when(start), _when(end), result,  # type: ignore[arg-type]
                               merchant_id=merchant, status=status, event_id=event_id, transaction_id=transaction_id)
            for table in tables:
                if fmt == "jsonl":
                    import json

                    for row in table.drop_columns(["payload"]).to_pylist():
                        sink.write(json.dumps(row, default=str) + "\n")
                elif fmt == "csv":
                    buf = pa.BufferOutputStream()
                    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=not header_written))
                    header_written = True
                    sink.write(buf.getvalue().to_pybytes().decode())
                elif fmt == "parquet":
                    writer = writer or pq.ParquetWriter(out, table.schema, compression="zstd")
                    writer.write_table(table)
                else:
                    for row in table.select(["occurred_at", "event_id", "merchant_id", "amount", "currency", "status",
                                             "payment_method"]).to_pylist():
                        console.print(" ".join(str(v) for v in row.values()))
    finally:
        if writer is not None:
            writer.close()
        if sink is not sys.stdout:
            sink.close()
    err = Console(stderr=True)
    err.print(f"{result.rows:,} event(s) from {len(result.files_opened)} of {len(result.files_planned)} planned file(s)")
    if result.archived:
        err.print(f"[yellow]{len(result.archived)} file(s) in the archive tier were not read:[/yellow]")
        for path in result.archived:
            err.print(f"  {path}")
        if rehydrate:
            err.print(request_rehydration(archive, result.archived, rehydrate))  # type: ignore[arg-type]
        else:
            err.print("re-run with --rehydrate Standard (up to 15 h) or High (under 1 h) to bring them back")


@app.command("kpi")
def kpi_command(metric: Annotated[str, typer.Option()], start: Annotated[str, typer.Option()],
                end: Annotated[str, typer.Option()],
                by: Annotated[list[str] | None, typer.Option(help="group by a dimension (repeatable)")] = None,
                where: Annotated[list[str] | None, typer.Option(help="filter dim=value (repeatable)")] = None,
                window: Annotated[str | None, typer.Option(help="5m, 1h or 1d")] = None,
                stored: Annotated[list[str] | None, typer.Option(help="extra stored dimensions (e.g. currency)")] = None
                ) -> None:
    """KPIs from aggregate_histograms: count, sum, mean/rate, p50/p90/p95/p99 (within 0.54%)."""
    import psycopg
    from rich.table import Table

    from txmetrics import kpi

    filters = dict(w.split("=", 1) for w in (where or []))
    with psycopg.connect(_database_url()) as conn:
        rows = kpi.query(conn, metric=metric, start=_when(start), end=_when(end), group_by=list(by or []),
                         filters=filters, window=window, stored_dimensions=list(stored or []))
    t = Table(title=f"{metric} {start} .. {end}")
    for col in ("window", "group", "count", "sum", "mean/rate", "p50", "p90", "p95", "p99"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r.window_start or ""), str(r.dimensions), f"{r.count:,}", f"{r.sum:,.2f}", f"{r.mean:.4g}",
                  *(f"{r.quantiles[q]:.4g}" if r.quantiles.get(q) is not None else "-" for q in kpi.QUANTILES))
    console.print(t)


@app.command("compact")
def compact_command(day: Annotated[str, typer.Option(help="UTC date to compact")],
                    target_mb: Annotated[float, typer.Option(help="target file size")] = 128,
                    container: Annotated[str, typer.Option(envvar="RAW_EVENTS_CONTAINER")] = "raw-events") -> None:
    """Merge a finished day's small raw files into files of the target size (safe to re-run)."""
    import psycopg

    from txmetrics.compaction import compact_day

    with psycopg.connect(_database_url(), autocommit=True) as conn:
        report = compact_day(conn, _archive(container), datetime.fromisoformat(day).date(),  # type: ignore[arg-type]
                             target_bytes=int(target_mb * 1024 * 1024))
    console.print(report.skipped_reason or f"{report.inputs} file(s) -> {len(report.outputs)} file(s), "
                  f"{report.rows:,} rows; recovered {report.recovered} unfinished run(s)")


@app.command("rollup")
def rollup_command(day: Annotated[str, typer.Option(help="UTC date to roll up")]) -> None:
    """Build the daily rollup of one day's 5-minute histograms."""
    import psycopg

    from txmetrics.rollup import roll_day

    with psycopg.connect(_database_url(), autocommit=True) as conn:
        fresh = roll_day(conn, datetime.fromisoformat(day).date())
    console.print("rolled up" if fresh else "rolled up, but late events arrived meanwhile: still stale, re-run")


failed_app = typer.Typer(no_args_is_help=True, help="Failed items: list, show, fix, replay, resolve.")
app.add_typer(failed_app, name="failed")


@failed_app.command("list")
def failed_list(code: Annotated[str | None, typer.Option(help="error code")] = None,
                all_items: Annotated[bool, typer.Option("--all", help="include replayed and resolved")] = False,
                limit: Annotated[int, typer.Option()] = 50) -> None:
    import psycopg

    from txmetrics import replay

    with psycopg.connect(_database_url()) as conn:
        for item in replay.list_items(conn, error_code=code, include_done=all_items, limit=limit):
            console.print(f"{item['id']:>8}  {item['error_code']:<24} {item['event_id'] or '-':<30} {item['detail']}")


@failed_app.command("show")
def failed_show(item_id: int) -> None:
    import psycopg

    from txmetrics import replay

    with psycopg.connect(_database_url()) as conn:
        for k, v in replay.show(conn, item_id).items():
            console.print(f"[bold]{k}[/bold]: {v}")


@failed_app.command("fix")
def failed_fix(item_id: int, payload_file: Annotated[str, typer.Option(help="file with the corrected JSON")]) -> None:
    import psycopg

    from txmetrics import replay

    with psycopg.connect(_database_url()) as conn, open(payload_file, encoding="utf-8") as fh:
        replay.fix(conn, item_id, fh.read())
    console.print(f"item {item_id}: fixed payload stored")


@failed_app.command("set")
def failed_set(item_id: int, field: str, value: str) -> None:
    """Set one (dotted) field of the payload; VALUE is JSON if it parses, else a string; null removes it."""
    import json

    import psycopg

    from txmetrics import replay

    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    with psycopg.connect(_database_url()) as conn:
        console.print(replay.set_field(conn, item_id, field, parsed))


@failed_app.command("replay")
def failed_replay(ids: Annotated[list[int] | None, typer.Argument()] = None,
                  code: Annotated[str | None, typer.Option(help="replay every open item with this error code")] = None,
                  force: Annotated[bool, typer.Option(help="replay items already replayed")] = False) -> None:
    """Replay items through the normal ingest path (deduplication still holds)."""
    import psycopg

    from txmetrics import replay
    from txmetrics.runtime import get_pipeline

    with psycopg.connect(_database_url()) as conn:
        for outcome in replay.replay(conn, get_pipeline(), item_ids=list(ids or []), error_code=code, force=force):
            console.print(f"{outcome.item_id}: {outcome.note}")


@failed_app.command("resolve")
def failed_resolve(ids: list[int], note: Annotated[str, typer.Option()] = "resolved without replay") -> None:
    import psycopg

    from txmetrics import replay

    with psycopg.connect(_database_url()) as conn:
        console.print(f"{replay.resolve(conn, ids, note)} item(s) resolved")


if __name__ == "__main__":
    app()
