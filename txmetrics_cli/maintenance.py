"""Maintenance: `migrate` (the schema), `compact` (a day's raw files), `rollup` (a day's
5-minute histograms). Each is safe to re-run; the daily maintenance function does the
same on its own."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from . import context
from .output import note
from .parsing import parse_day

app = typer.Typer()

DayOption = Annotated[datetime, typer.Option(parser=parse_day, metavar="DATE", help="UTC date, e.g. 2026-03-05")]


@app.command()
def migrate(database_url: Annotated[str | None, typer.Option(
        envvar="DATABASE_URL", show_envvar=False, metavar="URL",
        help="PostgreSQL URL (default: DATABASE_URL, else the local services)")] = None) -> None:
    """Apply the schema migrations.

    The yoyo migrations in migrations/ that are not applied yet."""
    from txmetrics import schema

    url = database_url or context.environment().get("DATABASE_URL")
    if url:
        applied = schema.apply_all(url)
    else:                  # nothing configured and nothing running: the local services, for this command
        from localdev.services import local_services

        with local_services() as (services, _):
            applied = schema.apply_all(services.database_url)
    note(f"applied: {', '.join(applied) if applied else 'nothing (schema up to date)'}")


@app.command("compact")
def compact_command(day: DayOption,
                    target_mb: Annotated[float, typer.Option(min=1, metavar="MB", help="target file size")] = 128,
                    container: Annotated[str, typer.Option(envvar="RAW_EVENTS_CONTAINER", metavar="NAME",
                                                           help="raw-events container")] = "raw-events") -> None:
    """Merge a day's small raw files.

    Into files of about the target size, sorted by time (safe to re-run)."""
    from txmetrics.compaction import compact_day

    with context.connect(autocommit=True) as conn:
        report = compact_day(conn, context.archive(container), day.date(), target_bytes=int(target_mb * 1024 * 1024))
    note(report.skipped_reason or f"{report.inputs} file(s) -> {len(report.outputs)} file(s), "
         f"{report.rows:,} rows; recovered {report.recovered} unfinished run(s)")


@app.command("rollup")
def rollup_command(day: DayOption) -> None:
    """Build a day's daily rollup.

    The merge of the day's 5-minute histograms; KPIs over full days read it."""
    from txmetrics.rollup import roll_day

    with context.connect(autocommit=True) as conn:
        fresh = roll_day(conn, day.date())
    note("rolled up" if fresh else "rolled up, but late events arrived meanwhile: still stale, re-run")
