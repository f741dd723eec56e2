"""The KPI report: one self-contained HTML page for a time range (`txmetrics report`).

    from txmetrics import report
    html = report.build(conn, start=..., end=..., service=blob_service, stack="dev")

`data.collect` reads everything in one snapshot (KPIs through `txmetrics.kpi.query`, so
they equal `txmetrics kpi`'s; failed items; the raw-file manifest; the lifecycle plan);
`page.render` turns it into HTML with inline SVG charts (`svg`), no script and no request.
What each section shows and why: docs/report.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from ..core.catalog import Catalog
from .data import ReportData, choose_window, collect
from .page import render

__all__ = ["ReportData", "build", "choose_window", "collect", "render"]


def build(conn: psycopg.Connection, *, start: datetime, end: datetime, service: Any | None = None,
          stack: str | None = "dev", window: str | None = None, now: datetime | None = None,
          catalog: Catalog | None = None, title: str = "txmetrics KPI report", source: str = "") -> str:
    """The report for [start, end) as HTML text.

    `service` (an azure BlobServiceClient) lets the retention outlook count the blobs the
    stack's lifecycle rules will tier or delete; `stack` picks the policy in lifecycle/
    (None: no retention outlook). `window` (5m, 1h, 1d) overrides the bucket chosen from the
    range. Raises KpiError for an empty range or unknown window, LifecycleError for an
    unknown stack, psycopg / Azure errors when a service fails."""
    policy = None
    if stack is not None:
        from lifecycle.policy import load_policy

        policy = load_policy(stack)            # an unknown stack is refused before any query
    data = collect(conn, start=start, end=end, window=window, catalog=catalog, service=service, policy=policy,
                   now=now)
    return render(data, title=title, source=source)
