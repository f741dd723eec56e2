"""Reading the data back: `query` (raw events from the Parquet archive) and `kpi` (KPIs
from aggregate_histograms). The logic is txmetrics.query and txmetrics.kpi; these commands
parse options and print rows."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from txmetrics.core.naming import RAW_EVENTS_CONTAINER

from . import context
from .output import FormatOption, RowWriter, TableView, cell, emit, note
from .parsing import EndOption, StartOption, parse_filter, parse_time

if TYPE_CHECKING:
    import pyarrow as pa

    from txmetrics.adapters.blob import BlobArchive
    from txmetrics.query import QueryResult

app = typer.Typer()

TABLE_ROWS_DEFAULT = 1000          # a table is for reading; machine formats are never capped
QUERY_TABLE_COLUMNS = ("occurred_at", "event_id", "merchant_id", "amount", "currency", "status", "payment_method")


def _metric_names(incomplete: str) -> list[str]:
    try:
        return [m.name for m in context.catalog().metrics if m.name.startswith(incomplete)]
    except Exception:  # completion must never fail loudly
        return []


def metric_option(help_text: str) -> Any:
    """A required METRIC of the catalog in effect, completed from it (kpi, backfill)."""
    return typer.Option(metavar="METRIC", autocompletion=_metric_names, help=help_text)


def _dimension_names(incomplete: str) -> list[str]:
    try:
        return [d for d in context.catalog().dimension_fields if d.startswith(incomplete)]
    except Exception:  # completion must never fail loudly
        return []


@app.command("query")
def query_events(
        start: Annotated[datetime | None, typer.Option(
            parser=parse_time, metavar="TIME",
            help="start, inclusive: 2026-03-01 or 2026-03-01T10:00 (UTC unless an offset is given); "
                 "optional with --event-id")] = None,
        end: Annotated[datetime | None, typer.Option(
            parser=parse_time, metavar="TIME", help="end, exclusive; optional with --event-id")] = None,
        merchant: Annotated[str | None, typer.Option(metavar="ID", help="only this merchant_id")] = None,
        status: Annotated[str | None, typer.Option(metavar="STATUS", help="only this status")] = None,
        payment_method: Annotated[str | None, typer.Option(metavar="METHOD", help="only this payment method")] = None,
        currency: Annotated[str | None, typer.Option(metavar="CODE", help="only this currency")] = None,
        event_id: Annotated[str | None, typer.Option(
            metavar="ID", help="one event by id, found through the ledger (no time range needed)")] = None,
        transaction_id: Annotated[str | None, typer.Option(metavar="ID", help="only this transaction_id")] = None,
        limit: Annotated[int | None, typer.Option(
            min=1, metavar="N", help=f"stop after N events, in file (about time) order; a table shows at most "
                                     f"{TABLE_ROWS_DEFAULT:,} unless given")] = None,
        fmt: Annotated[Literal["table", "json", "csv", "jsonl", "parquet"], typer.Option(
            "--format", help="table, json (one array), csv, jsonl (one object per line) or parquet (needs --out)")]
        = "table",
        out: Annotated[Path | None, typer.Option(
            dir_okay=False, writable=True, metavar="FILE", help="write to FILE instead of stdout")] = None,
        rehydrate: Annotated[Literal["Standard", "High"] | None, typer.Option(
            help="ask Azure to bring archived files back (Standard: up to 15 h, High: under 1 h)")] = None,
        container: Annotated[str, typer.Option(envvar="RAW_EVENTS_CONTAINER", metavar="NAME",
                                               help="raw-events container")] = RAW_EVENTS_CONTAINER) -> None:
    """Raw events from the Parquet archive.

    A time range (and filters), or one event by --event-id. Only the files that can match are read; files in the archive tier are
    named on stderr instead of failing the query."""
    from txmetrics.query import QueryResult
    from txmetrics.query import query_events as run_query

    if fmt == "parquet" and out is None:
        raise typer.BadParameter("parquet output needs --out FILE", param_hint="'--out'")
    if event_id is None and (start is None or end is None):
        missing = "--end" if start is not None else "--start" if end is not None else "--start and --end"
        raise typer.BadParameter(f"{missing} missing: a query needs a time range (or --event-id)",
                                 param_hint=f"'{missing.split()[0]}'")
    effective_limit = limit if limit is not None or fmt != "table" else TABLE_ROWS_DEFAULT
    archive = context.archive(container)
    result = QueryResult()
    sink = _EventSink(fmt, out)         # opens --out (if any) before connecting
    try:
        with context.connect() as conn:
            for table in run_query(conn, archive, start, end, result, limit=effective_limit, merchant_id=merchant,
                                   status=status, payment_method=payment_method, currency=currency,
                                   event_id=event_id, transaction_id=transaction_id):
                sink.write(table)
        sink.finish()
    finally:
        sink.close()
    _query_notes(result, effective_limit, archive, rehydrate)


class _EventSink:
    """Where `query` writes its events: one Parquet file (--out), or rows as a table, json,
    csv or jsonl to --out or stdout. `finish` ends the rows (the table is drawn, the json
    array closed) after a query that succeeded; `close` always closes the files."""

    def __init__(self, fmt: str, out: Path | None) -> None:
        self.fmt = fmt
        self.out = out
        self._parquet: Any = None          # a pyarrow ParquetWriter, opened with the first table's schema
        self._file = (open(out, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close()
                      if out is not None and fmt != "parquet" else None)
        self._rows = RowWriter(
            "json" if fmt == "jsonl" else fmt, file=self._file, jsonl=fmt == "jsonl",
            table=TableView(QUERY_TABLE_COLUMNS, lambda r: [cell(r.get(c)) for c in QUERY_TABLE_COLUMNS],
                            right=frozenset({"amount"})))

    def write(self, table: pa.Table) -> None:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            self._parquet = self._parquet or pq.ParquetWriter(str(self.out), table.schema, compression="zstd")
            self._parquet.write_table(table)
        else:
            self._rows.write(table.to_pylist())

    def finish(self) -> None:
        if self.fmt != "parquet":
            self._rows.close(columns=[f.name for f in _schema()])
        elif self._parquet is None:     # no event matched: still a file, with no rows, as the other formats
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetWriter(str(self.out), _schema(), compression="zstd")

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._file is not None:
            self._file.close()


def _query_notes(result: QueryResult, effective_limit: int | None, archive: BlobArchive,
                 rehydrate: str | None) -> None:
    """On stderr: how many events from how many files, and the files in the archive tier (with
    their rehydration, when asked for)."""
    from txmetrics.query import rehydrate as request_rehydration

    note(f"{result.rows:,} event(s) from {len(result.files_opened)} of {len(result.files_planned)} planned file(s)"
         + (f"; stopped at the limit of {effective_limit:,} (--limit N to change)" if result.limited else ""))
    if result.archived:
        note(f"{len(result.archived)} file(s) in the archive tier were not read: {' '.join(result.archived)}")
        if rehydrate:
            note(request_rehydration(archive, result.archived, rehydrate))
        else:
            note("re-run with --rehydrate Standard (up to 15 h) or High (under 1 h) to bring them back")


def _schema() -> Any:
    from txmetrics.adapters.parquet import RAW_EVENT_SCHEMA

    return RAW_EVENT_SCHEMA


@app.command("kpi")
def kpi_command(
        metric: Annotated[str, metric_option("a metric of the catalog in effect, e.g. amount, approved")],
        start: StartOption,
        end: EndOption,
        by: Annotated[list[str] | None, typer.Option(
            metavar="DIM", autocompletion=_dimension_names,
            help="group by a dimension (repeatable); the metric's own split (currency for amount) is always "
                 "added")] = None,
        where: Annotated[list[str] | None, typer.Option(
            metavar="DIM=VALUE", help="keep only rows where the dimension has this value (repeatable)")] = None,
        window: Annotated[Literal["5m", "1h", "1d"] | None, typer.Option(
            help="one row per window of this size (default: one row for the whole range)")] = None,
        fmt: FormatOption = "table") -> None:
    """KPIs from the aggregate histograms.

    Over any range: count, sum, mean, min, max and p50/p90/p95/p99 (within 0.54%) of a
    value metric; count, true_count and rate of a flag metric (approved).

    Reads the smallest stored dimension set that holds the grouping, the filters and the
    metric's own split, and refuses what no stored set can answer."""
    from txmetrics import kpi

    filters: dict[str, str] = {}
    for raw in where or []:
        name, value = parse_filter(raw)
        if name in filters:
            raise typer.BadParameter(f"{name} is filtered twice", param_hint="'--where'")
        filters[name] = value
    catalog = context.catalog()
    chosen = kpi.plan(catalog, metric, list(by or []), filters)      # refuses before connecting
    with context.connect() as conn:
        rows = kpi.query(conn, metric=metric, start=start, end=end, group_by=list(by or []), filters=filters,
                         window=window, catalog=catalog)
        files, uncounted = kpi.events_before_metric(conn, metric=metric, start=start, end=end)
    flag = chosen.metric.kind == "flag"
    figures = ["count", "true_count", "rate"] if flag else [
        "count", "sum", "mean", "min", "max", *(kpi.quantile_label(q) for q in kpi.QUANTILES)]
    columns = [*(["window_start"] if window else []), *chosen.group_by, *figures]
    view = TableView(
        columns=[*(["window"] if window else []), "group", *figures],
        cells=lambda r: [*([cell(r["window_start"])] if window else []), _group_label(r, chosen.group_by),
                         *(f"{r['rate']:.2%}" if f == "rate" else cell(r[f]) for f in figures)],
        right=frozenset(figures))
    emit((r.record() for r in rows), fmt, table=view, columns=columns)
    if not rows:
        note(f"no {metric} data in [{start.isoformat()}, {end.isoformat()})"
             + (f" where {', '.join(f'{k}={v}' for k, v in filters.items())}" if filters else ""))
    if files:
        # a metric added to the catalog counts the events ingested after the change; the
        # manifest says which archived files predate it (docs/lake.md, backfill)
        note(f"up to {uncounted:,} archived event(s) in {files:,} raw file(s) overlapping this range were ingested "
             f"before {metric} was in the catalog and are not counted: `txmetrics backfill --metric {metric} "
             f"--start {start.isoformat()} --end {end.isoformat()}` "
             "adds them")


def _group_label(record: Mapping[str, Any], group_by: tuple[str, ...]) -> str:
    """payment_method=card currency=EUR; (all) for the total. A value as --where takes it (the
    stored JSON's text): a boolean as true/false, not Python's True (an audit: the label
    copied into --where answered "no data")."""
    if not group_by:
        return "(all)"
    return " ".join(f"{d}={_label_value(record.get(d))}" for d in group_by)


def _label_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
