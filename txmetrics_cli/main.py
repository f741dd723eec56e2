"""The `txmetrics` command line: one module per command group, wired here.

| module | commands |
|---|---|
| local.py | up, down, env, status, run (the local services) |
| read.py | query, kpi |
| report.py | report (the KPI report as one HTML file) |
| failed.py | failed list/show/fix/set/replay/resolve |
| retention.py | lifecycle validate/render/plan, retention apply |
| maintenance.py | migrate, compact, rollup, aggregates fold/status |
| lake.py | backfill, rebuild (the lake as the source of truth) |

Cross-cutting: boundary.py (the one error boundary: domain errors become one line on
stderr and exit code 2), output.py (--format table|json|csv), context.py (settings, and the
local services as the fallback localdev provides), parsing.py (times, DIM=VALUE).
A new command goes into the module of its group; a new group is a module plus one line here.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import failed, lake, local, maintenance, read, report, retention
from .boundary import BoundaryGroup

app = typer.Typer(
    cls=BoundaryGroup, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
    help="txmetrics: payment-transaction metrics on Azure: local services, queries, KPIs, reports, failed items, retention.")


@app.callback()
def main(debug: Annotated[bool, typer.Option(
        "--debug", envvar="TXMETRICS_DEBUG", show_envvar=False,
        help="on an error, print the traceback before the one-line message")] = False) -> None:
    """txmetrics: payment-transaction metrics on Azure: local services, queries, KPIs, failed items, retention.

    Commands read the function's settings (DATABASE_URL, AZURE_STORAGE_CONNECTION_STRING or
    AZURE_STORAGE_ACCOUNT_URL, RAW_EVENTS_CONTAINER, METRIC_CATALOG); when none of the service
    settings is set they use the local services of `make up`. Errors: one line on stderr, exit code 2."""


app.add_typer(local.app)
app.add_typer(read.app)
app.add_typer(report.app)
app.add_typer(failed.app, name="failed")
app.add_typer(retention.lifecycle_app, name="lifecycle")
app.add_typer(retention.retention_app, name="retention")
app.add_typer(maintenance.app)
app.add_typer(maintenance.aggregates_app, name="aggregates")
app.add_typer(lake.app)


if __name__ == "__main__":
    app()
