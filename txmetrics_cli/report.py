"""`txmetrics report`: the KPI report as one self-contained HTML file. The logic is
txmetrics.report; this command parses options, finds the services and writes the file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from . import context
from .output import note
from .parsing import EndOption, StartOption
from .retention import StackOption

app = typer.Typer()


@app.command("report")
def report_command(
        start: StartOption,
        end: EndOption,
        out: Annotated[Path, typer.Option(dir_okay=False, writable=True, metavar="FILE",
                                          help="the HTML file to write")] = Path("report.html"),
        stack: StackOption = "dev",
        window: Annotated[Literal["5m", "1h", "1d"] | None, typer.Option(
            help="one point per window of this size (default: 5m up to a day, 1h up to 7 days, else 1d)")]
        = None) -> None:
    """Write the KPI report (one HTML file, no network needed to view it).

    Volume, approval rate, declines and failures, processing-time and amount percentiles,
    merchants, failed items, the lake and what the stack's retention will do next, for
    [start, end), from the same code as `txmetrics kpi` (the numbers agree). Prints the
    file's path."""
    from txmetrics import report
    from txmetrics.errors import describe_database
    from txmetrics.settings import SettingsError

    try:
        service = context.storage_service()
    except SettingsError:
        service = None
        note("no storage settings: the retention outlook covers the PostgreSQL tables only")
    with context.connect() as conn:
        html = report.build(conn, start=start, end=end, service=service, stack=stack, window=window,
                            source=f"PostgreSQL {describe_database(context.database_url())}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    note(f"report for {start.isoformat()} to {end.isoformat()}: {len(html.encode()) / 1e3:,.0f} kB")
    typer.echo(str(out.resolve()))
