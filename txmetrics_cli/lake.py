"""The lake as the source of truth: `backfill` (a metric added to the catalog, computed for
past days from the Parquet archive) and `rebuild` (the database restored from the archive).
The logic is txmetrics.backfill and txmetrics.rebuild; these commands parse options, show
progress on stderr (files, events, events/s) and print one row per day.

Both are exactly once and resumable: Ctrl-C (or a kill) loses at most the file in flight,
whose transaction rolls back; the same command again carries on where it stopped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from . import context
from .output import FormatOption, emit, note
from .parsing import EndOption, StartOption, complete_stack, parse_day
from .read import metric_option

if TYPE_CHECKING:
    from txmetrics.adapters.blob import BlobArchive
    from txmetrics.adapters.postgres import PostgresStore
    from txmetrics.lake import Progress

app = typer.Typer()

INTERRUPTED_EXIT_CODE = 130
BACKFILL_COLUMNS = ("day", "mode", "files", "events", "rows", "aggregate_rows", "archived_files",
                    "skipped_legacy_files")
REBUILD_COLUMNS = ("day", "mode", "files", "events", "rows", "aggregate_rows", "already_in_ledger", "leftover_files",
                   "archived_files", "already_restored_files")
ContainerOption = Annotated[str, typer.Option(envvar="RAW_EVENTS_CONTAINER", metavar="NAME",
                                              help="raw-events container (the archive to read)")]
RehydrateOption = Annotated[Literal["Standard", "High"] | None, typer.Option(
    help="ask Azure to bring files in the archive tier back (Standard: up to 15 h, High: under 1 h); run the "
         "command again once they are back")]


def _store() -> PostgresStore:
    """The pipeline's PostgreSQL adapter on the database in effect (UnavailableError, naming
    the host, when it cannot be reached)."""
    import psycopg

    from txmetrics.adapters.postgres import PostgresStore
    from txmetrics.errors import UnavailableError, describe_database

    url = context.database_url()
    store = PostgresStore(url, connect_timeout=context.CONNECT_TIMEOUT_SECONDS)
    try:
        store.connection()
    except psycopg.OperationalError as exc:
        raise UnavailableError(f"cannot connect to PostgreSQL at {describe_database(url)}: "
                               f"{' '.join(str(exc).split())}") from exc
    return store


@contextmanager
def _progress(label: str) -> Iterator[Callable[[Progress], None]]:
    """A progress line on stderr (files done of planned, events, events/s) at a terminal;
    nothing when stderr is piped (the summary notes say it all)."""
    import sys

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .output import console

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
                  TextColumn("{task.fields[events]:,} events, {task.fields[rate]:,.0f}/s"), TimeElapsedColumn(),
                  console=console(stderr=True), disable=not sys.stderr.isatty(), transient=False) as bar:
        task = bar.add_task(label, total=None, events=0, rate=0.0)

        def update(state: Any) -> None:
            bar.update(task, total=state.files_total, completed=state.files_done, events=state.events,
                       rate=state.events_per_second)

        yield update


@contextmanager
def _running(label: str, store: PostgresStore) -> Iterator[Callable[[Progress], None]]:
    """Progress while a run lasts; an interrupt becomes one note and exit code 130; the
    store is closed at the end."""
    done = 0
    try:
        with _progress(label) as update:
            def progress(state: Progress) -> None:
                nonlocal done
                done = state.files_done
                update(state)

            yield progress
    except KeyboardInterrupt:
        raise _interrupted(done) from None
    finally:
        store.close()


def _archived(archive: BlobArchive, paths: list[str], rehydrate: str | None) -> None:
    from txmetrics.lake import archived_hint
    from txmetrics.query import rehydrate as request_rehydration

    if not paths:
        return
    if rehydrate:
        note(f"{len(paths)} file(s) in the archive tier were not read: {' '.join(paths)}")
        note(request_rehydration(archive, paths, rehydrate) + "; then run the same command again")
    else:
        note(archived_hint(paths))


def _interrupted(done_files: int) -> typer.Exit:
    note(f"interrupted: the {done_files:,} file(s) done are kept (the one in flight was rolled back); run the same "
         "command again to resume")
    return typer.Exit(INTERRUPTED_EXIT_CODE)


@app.command("backfill")
def backfill_command(
        metric: Annotated[str, metric_option(
            "a metric of the catalog in effect (METRIC_CATALOG), e.g. risk_score")],
        start: StartOption,
        end: EndOption,
        rehydrate: RehydrateOption = None,
        container: ContainerOption = "raw-events",
        fmt: FormatOption = "table") -> None:
    """Compute a metric for past events from the Parquet lake.

    Writes its dynamic_metrics rows and aggregates for the events of the range (whole
    files: a compacted file covers its UTC day), exactly once: running it again, beside
    live ingest, or after an interruption adds nothing twice. Days whose dynamic_metrics
    partition retention has dropped get aggregates only. One row per day."""
    from txmetrics.backfill import backfill

    catalog = context.catalog()
    archive = context.archive(container)
    store = _store()
    with _running(f"backfill {metric}", store) as progress:
        report = backfill(store=store, archive=archive, catalog=catalog, metric=metric, start=start, end=end,
                          progress=progress)
    emit(report.records(), fmt, columns=BACKFILL_COLUMNS)
    rate = report.events / report.seconds if report.seconds else 0.0
    unread = len(report.archived) + len(report.skipped_legacy)
    if report.files:
        note(f"backfilled {metric}: {report.files:,} file(s), {report.events:,} event(s), {report.rows:,} row(s) in "
             f"{report.seconds:.1f} s ({rate:,.0f} events/s)")
    elif unread:          # not "every file has it": these were not read (below says why)
        note(f"nothing backfilled: {unread:,} file(s) of the range still lack {metric}")
    else:
        note(f"nothing to backfill: every file of the range already has {metric}")
    if report.aggregates_only_days:
        days = report.aggregates_only_days
        note(f"{len(days)} day(s) got aggregates only (their dynamic_metrics partitions were dropped by retention): "
             f"{days[0]} .. {days[-1]}")
    if report.skipped_legacy:
        note(f"{len(report.skipped_legacy)} file(s) written before per-file metric records (migration 0009) on days "
             "past dynamic_metrics retention were left alone: which of their events have the metric cannot be told")
    if report.left_lacking:
        note(f"{report.left_lacking} file(s) written meanwhile still lack {metric}: is a function still running the "
             "old catalog? run the same command again once it runs the new one")
    _archived(archive, report.archived, rehydrate)


def _retention(stack: str | None) -> tuple[dict[str, int] | None, str]:
    """The table retention in effect: the stack's policy, else the function's
    TXMETRICS_RETENTION setting, else none."""
    if stack:
        from lifecycle.policy import load_policy, table_retention

        return table_retention(load_policy(stack)), f"stack {stack}"
    raw = context.environment().get("TXMETRICS_RETENTION", "").strip()
    if raw:
        # checked as the daily retention job checks it (Settings.retention_days): a negative or
        # boolean day count, a misspelt table or a ledger shorter than the rows would restore
        # less than the function keeps, and a restored file is never restored again
        return dataclasses.replace(context.settings(), retention_setting=raw).retention_days, "TXMETRICS_RETENTION"
    return None, "none"


@app.command("rebuild")
def rebuild_command(
        start: Annotated[datetime, typer.Option(parser=parse_day, metavar="DATE",
                                                help="first UTC day to restore, e.g. 2026-03-01")],
        end: Annotated[datetime, typer.Option(parser=parse_day, metavar="DATE",
                                              help="UTC day after the last one to restore (exclusive)")],
        stack: Annotated[str | None, typer.Option(
            metavar="STACK", autocompletion=complete_stack,
            help="restore the ledger and dynamic_metrics only for the days this stack's retention keeps "
                 "(default: the TXMETRICS_RETENTION setting, else every day)")] = None,
        workers: Annotated[int, typer.Option(
            min=1, max=64, metavar="N", help="processes restoring files side by side (each file once)")] = 4,
        rehydrate: RehydrateOption = None,
        container: ContainerOption = "raw-events",
        fmt: FormatOption = "table") -> None:
    """Restore the database from the Parquet lake.

    The manifest, the ledger, dynamic_metrics (within retention) and the aggregates, from
    the archive's files of the days [start, end), with the catalog in effect. Run it
    before ingestion resumes. Resumable; failed_items cannot come back from the lake. One
    row per day."""
    import dataclasses

    from txmetrics.rebuild import rebuild, rebuild_in_parallel, retention_since

    catalog = context.catalog()
    archive = context.archive(container)
    retention, source = _retention(stack)
    today = datetime.now(UTC).date()
    rows_since, ledger_since, raw_since = retention_since(retention, today) if retention else (None, None, None)
    first: date = start.date()
    store = _store()
    with _running("rebuild", store) as progress:
        if workers == 1:
            report = rebuild(store=store, archive=archive, catalog=catalog, start=first, end=end.date(),
                             rows_since=rows_since, ledger_since=ledger_since, raw_since=raw_since, today=today,
                             progress=progress)
        else:
            settings = dataclasses.replace(context.settings(), raw_events_container=container)
            report = rebuild_in_parallel(settings, workers=workers, start=first, end=end.date(),
                                         rows_since=rows_since, ledger_since=ledger_since, raw_since=raw_since,
                                         today=today,
                                         progress=progress)
    emit(report.records(), fmt, columns=REBUILD_COLUMNS)
    rate = report.events / report.seconds if report.seconds else 0.0
    note(f"rebuilt {report.files:,} file(s), {report.events:,} event(s) in {report.seconds:.1f} s ({rate:,.0f} "
         f"events/s); retention: {source}" + (f" (rows from {rows_since}, ledger from {ledger_since}"
                                              + (f", raw files from {raw_since}" if raw_since else "") + ")"
                                              if retention else ": rows and ledger restored for every day"))
    if report.rolled_up:
        note(f"rolled up {len(report.rolled_up)} finished day(s)")
    staging = report.staging
    if staging.published or staging.inputs_deleted:
        note(f"finished {len(staging.published)} interrupted compaction output(s) from staging (the database had lost "
             f"their journal): published into the tree, and {len(staging.inputs_deleted)} of their surviving input(s) "
             "deleted (every event of theirs is in the outputs)")
    if staging.past_retention:
        note(f"{len(staging.past_retention)} compaction output(s) in staging are of days past the raw archive's "
             "retention: left for the lifecycle rule to delete, not published back")
    if report.leftovers:
        note(f"{len(report.leftovers)} file(s) are leftover compaction inputs (their rows are in a compacted file) and "
             f"were not restored; delete them: {' '.join(report.leftovers)}")
    _archived(archive, report.archived, rehydrate)
    note("failed_items cannot come back from the lake: bad events were never archived")
