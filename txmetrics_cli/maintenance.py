"""Maintenance: `migrate` (the schema), `compact` (a day's raw files), `rollup` (a day's
5-minute histograms), `aggregates fold|status` (the writers' histogram deltas). Each is
safe to re-run; the timer functions do the same on their own."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from txmetrics.core.naming import RAW_EVENTS_CONTAINER

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
                                                           help="raw-events container")] = RAW_EVENTS_CONTAINER) -> None:
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


aggregates_app = typer.Typer(no_args_is_help=True, help="The writers' histogram deltas: fold them, see how many wait.")


@aggregates_app.command("fold")
def aggregates_fold() -> None:
    """Fold pending histogram deltas now.

    Merges every committed delta into aggregate_histograms, in one statement (all or
    nothing; a concurrent fold waits its turn). The fold_aggregates timer does this every
    minute; readers (kpi, payment_metrics_5m) include pending deltas either way."""
    import time

    from txmetrics.adapters.aggregates import fold as fold_aggregates

    started = time.perf_counter()
    with context.connect(autocommit=True) as conn:
        folded = fold_aggregates(conn)
    note(f"folded {folded:,} delta(s) into aggregate_histograms in {time.perf_counter() - started:.2f} s")


@aggregates_app.command("status")
def aggregates_status() -> None:
    """How many histogram deltas wait for the fold, and since when."""
    from datetime import UTC
    from datetime import datetime as dt

    from txmetrics.adapters.aggregates import pending_deltas

    with context.connect() as conn:
        pending = pending_deltas(conn)
    if pending.oldest is None:
        note("no delta pending: aggregate_histograms holds every committed event")
    else:
        age = (dt.now(UTC) - pending.oldest).total_seconds()
        note(f"{pending.deltas:,} delta(s) pending, the oldest committed {age:.0f} s ago")
