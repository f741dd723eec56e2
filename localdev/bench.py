"""`make bench`: ingest throughput of the real function entry, with the I/O floor and a naive
baseline measured in the same run, on the same services and the same data.

* real: N synthetic events (the `make run` generator, timestamps as if arriving at 40,000
  events/s) in batches of 1,000 over 4 partitions, one worker process per partition,
  through `function_app.ingest` (azure-functions' converter decoding included).
* floor (issue 13's definition): for the same events, in the same worker processes, one
  transaction per batch: parse each body as JSON; encode the batch as one zstd Parquet file
  and upload it to the same Azurite; COPY 3 rows per event of (event_id, metric_name,
  value, occurred_at) into a table with dynamic_metrics' primary key. Nothing else.
* naive: the same work row at a time (one INSERT per metric row, one aggregate upsert per
  (event, metric, dimension set)) on a sample, as events/s.

Each phase is timed from a barrier (all its workers imported, connected and prepared) to the
last worker's end; real and floor run as pairs, `--repeats` times (3) on emptied tables, and
the medians are reported with every round in the JSON. Per phase: wall time, the function
workers' CPU, PostgreSQL's and Azurite's CPU (their processes' /proc counters, reaped
backends included), WAL bytes; after the last real round: the time to fold every pending
delta, and PostgreSQL bytes per event (tables + indexes, after the fold).

Results go to benchmarks/results/<utc time>.json with the machine; docs/benchmarks.md is
summarised by hand from them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from txmetrics.core.naming import RAW_EVENTS_CONTAINER
from txmetrics.core.tables import TABLES

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START = datetime(2026, 3, 1, tzinfo=UTC)
# everything the pipeline stores in PostgreSQL, for bytes per event (indexes included)
PIPELINE_TABLES = tuple(t.name for t in TABLES if t.name not in ("raw_compactions", "aggregate_rollups"))
FLOOR_METRICS = ("amount", "processing_ms", "approved")


def code_under_test() -> dict[str, Any]:
    """Which txmetrics this run measures: its package directory, and the commit of this
    checkout with whether its function code has uncommitted changes. A virtual environment's
    editable install points at one checkout; run from another, a bench imported the first
    one's txmetrics (round 16 found its A/B runs between checkouts measuring one code twice)."""
    import subprocess

    import txmetrics

    package = Path(txmetrics.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "functions"],
                                      capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, changed = None, None
    return {"txmetrics": str(package), "commit": commit, "uncommitted_function_changes": changed}


def require_own_code(code: dict[str, Any]) -> None:
    """Refuse to measure another checkout's txmetrics (see `code_under_test`)."""
    own = ROOT / "functions" / "txmetrics"
    if Path(code["txmetrics"]) != own.resolve():
        raise SystemExit(f"localdev.bench: txmetrics was imported from {code['txmetrics']}, not from this "
                         f"checkout ({own}): the virtual environment's editable install points elsewhere; run "
                         f"with PYTHONPATH={ROOT / 'functions'}:{ROOT}")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "platform": platform.platform()}


def machine_cpu_seconds() -> float | None:
    """CPU time used by everything on the machine so far (user + system, all cores), Linux only."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def service_cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each service, by name, from /proc: its root process (the
    postmaster, Azurite's node) and their children, utime + stime plus cutime + cstime, so
    backends that exited (reaped by the postmaster) still count. Other processes of the same
    name on the machine (another test run's PostgreSQL) are not counted."""
    totals = dict.fromkeys(roots, 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        pid, ppid = int(entry.name), int(fields[1])
        for name, root in roots.items():
            if root in (pid, ppid):
                totals[name] += sum(int(x) for x in fields[11:15]) / tick
    return totals


def service_roots(services: Any) -> dict[str, int]:
    """Root process ids of the local services (embedded PostgreSQL, npm Azurite) when we run them."""
    roots = {}
    data_dir = getattr(services.postgres, "data_dir", None)
    if data_dir is not None and (data_dir / "postmaster.pid").exists():
        roots["postgres"] = int((data_dir / "postmaster.pid").read_text().split()[0])
    pid = getattr(services.storage, "pid", None)
    if pid:
        roots["azurite"] = int(pid)
    return roots


# ----------------------------------------------------------------------------- workers
# Every worker of a phase prepares (imports, connections, its share of the data), then waits
# at a barrier; a phase is timed from the barrier to the last worker's end.

_BARRIER: Any = None


def _init_worker(barrier: Any) -> None:
    global _BARRIER
    _BARRIER = barrier


def _start_together() -> float:
    if _BARRIER is not None:
        _BARRIER.wait()
    return time.time()


def _peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    fork and exec, so a spawned worker would report its parent's peak (the whole data set)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _real_worker(env: dict[str, str], partition: str, batches: list[list[tuple[bytes, int, datetime]]]
                 ) -> dict[str, Any]:
    os.environ.update(env)
    from localdev.eventhub import decode, host_payload
    from localdev.run import capture_batch_reports, load_function, worker_logging

    reports = capture_batch_reports()
    fn = load_function()
    # What the host serialises (in its own process) is prepared outside the timed loop; the
    # worker's part, azure-functions' converter decoding the batch, is timed with the call.
    payloads = [host_payload([b for b, _, _ in batch], partition_id=partition, sequence_numbers=[s for _, s, _ in batch],
                             enqueued_times=[t for _, _, t in batch]) for batch in batches]
    # Built before the clock starts, as the floor's connection is: the pipeline (its lazy
    # imports, the catalog, the PostgreSQL connection), which a host's worker builds at its
    # first invocation, long before any steady-state batch.
    from txmetrics.runtime import get_pipeline

    get_pipeline().store.connection()
    latencies, decode_ms = [], []
    start = _start_together()
    cpu0 = time.process_time()
    # The root logger as the worker sets it in Azure: a library's INFO record would cost here what it costs
    # there (the batch line itself goes to capture_batch_reports, not to the root)
    with worker_logging():
        for payload in payloads:
            t = time.perf_counter()
            events = decode(*payload)
            decode_ms.append(1000 * (time.perf_counter() - t))
            fn(events)
            latencies.append(time.perf_counter() - t)
    return {"start": start, "end": time.time(), "cpu_seconds": time.process_time() - cpu0, "latencies": latencies,
            "timings": [{"converter_decode": d, **r["ms"]} for d, r in zip(decode_ms, reports, strict=True)],
            "max_rss_mb": _peak_rss_mb()}


def _copy_escape(text: str) -> str:
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def _floor_worker(env: dict[str, str], partition: str, batches: list[list[bytes]]) -> dict[str, Any]:
    """Issue 13's floor: parse, one zstd Parquet file per batch uploaded, 3 COPY rows per event
    into a table with dynamic_metrics' primary key, one transaction per batch."""
    import io

    import msgspec
    import psycopg
    import pyarrow as pa
    import pyarrow.parquet as pq

    from txmetrics.adapters.blob import BlobArchive, service_client

    decoder = msgspec.json.Decoder()
    archive = BlobArchive(service_client(env["AZURE_STORAGE_CONNECTION_STRING"]), "bench-floor")
    archive.ensure_container()
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        start = _start_together()
        cpu0 = time.process_time()
        for i, bodies in enumerate(batches):
            ids, times, texts, lines = [], [], [], []
            for body in bodies:
                try:
                    doc = decoder.decode(body)
                    event_id, occurred = _copy_escape(doc["event_id"]), doc["occurred_at"]
                    amount = float(doc["amount"])
                except (msgspec.DecodeError, TypeError, KeyError, ValueError):
                    continue     # not an event: nothing to store
                ids.append(doc["event_id"])
                times.append(occurred)
                texts.append(body.decode())
                values = (amount, float(doc.get("processing_ms") or 0), 1.0 if doc.get("status") == "approved" else 0.0)
                for name, value in zip(FLOOR_METRICS, values, strict=True):
                    lines.append(f"{event_id}\t{name}\t{value!r}\t{occurred}\n")
            sink = io.BytesIO()
            pq.write_table(pa.table({"event_id": ids, "occurred_at": times, "payload": texts}), sink,
                           compression="zstd")
            with conn.transaction():
                with conn.cursor().copy("COPY bench_floor_metrics FROM STDIN") as copy:
                    copy.write("".join(lines))
                archive.upload(f"floor/{partition}/{i}.parquet", sink.getvalue())
        return {"start": start, "end": time.time(), "cpu_seconds": time.process_time() - cpu0}


def _naive_worker(env: dict[str, str], partition: str, bodies: list[bytes]) -> dict[str, Any]:
    import psycopg

    from txmetrics.core.catalog import load_catalog
    from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event
    from txmetrics.core.metrics import dimension_value, extract_metrics
    from txmetrics.settings import BUNDLED_CATALOG

    catalog = load_catalog(BUNDLED_CATALOG)
    events = [e for i, b in enumerate(bodies)
              if isinstance(e := parse_event(InboundEvent(b, partition, i)), PaymentEvent)]
    rows = extract_metrics(events, catalog)
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        start = _start_together()
        for r in range(len(rows)):
            ev = events[rows.event_index[r]]
            metric = catalog.metrics[rows.metric_index[r]]
            conn.execute(
                "INSERT INTO bench_naive_metrics (event_id, metric_name, value, occurred_at, merchant_id, payment_method,"
                " status, currency) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (ev.event_id, metric.name, rows.value[r], ev.occurred_at, ev.merchant_id, ev.payment_method, ev.status,
                 ev.currency))
            window = ev.occurred_us - ev.occurred_us % 300_000_000
            for dims in catalog.sets_for(metric):
                conn.execute(
                    "INSERT INTO bench_naive_aggregates AS a VALUES (%s, %s, %s::jsonb, 1, %s) "
                    "ON CONFLICT (metric_name, window_us, dimensions) DO UPDATE SET count = a.count + 1, "
                    "sum = a.sum + excluded.sum",
                    (metric.name, window, json.dumps({d: dimension_value(ev, d) for d in dims}, sort_keys=True),
                     rows.value[r]))
        return {"start": start, "end": time.time(), "cpu_seconds": 0.0}


# ----------------------------------------------------------------------------- run

def _parallel(target: Any, args_list: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args_list))
    with ctx.Pool(len(args_list), initializer=_init_worker, initargs=(barrier,)) as pool:
        return pool.starmap(target, args_list)


class _Meter:
    """Machine, service CPU and WAL position around one phase."""

    def __init__(self, conn: Any, roots: dict[str, int]) -> None:
        self.conn = conn
        self.roots = roots

    def _wal(self) -> int:
        return int(self.conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])

    def __enter__(self) -> _Meter:
        self.wal0, self.services0, self.machine0 = self._wal(), service_cpu_seconds(self.roots), machine_cpu_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        self.wal = self._wal() - self.wal0
        end = service_cpu_seconds(self.roots)
        self.services: dict[str, float | None] = {k: end[k] - self.services0[k] for k in end}
        machine_end = machine_cpu_seconds()
        self.machine = None if machine_end is None or self.machine0 is None else machine_end - self.machine0


def _per(seconds: float | None, per: float) -> float | None:
    return None if seconds is None else round(per * seconds, 1)


def _phase(results: list[dict[str, Any]], meter: _Meter, events: int) -> dict[str, Any]:
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    per = 1e6 / events
    return {"seconds": round(seconds, 3), "events_per_second": round(events / seconds),
            "workers_cpu_us_per_event": round(per * sum(r["cpu_seconds"] for r in results), 1),
            "postgres_cpu_us_per_event": _per(meter.services.get("postgres"), per),
            "azurite_cpu_us_per_event": _per(meter.services.get("azurite"), per),
            "machine_cpu_us_per_event": None if meter.machine is None else round(per * meter.machine, 1),
            "wal_bytes_per_event": round(meter.wal / events, 1)}


def empty_tables(conn: Any, *extra: str) -> None:
    """Back to an empty pipeline between rounds (the ledger would otherwise skip every event):
    every table of the registry, and the benchmark's own `extra` tables."""
    conn.execute(f"TRUNCATE {', '.join([*(t.name for t in TABLES), *extra])}")
    conn.execute("VACUUM ANALYZE")


# The SQL below measures (sizes, counts, the server version); the pipeline's own SQL is the
# adapters' (the fold: txmetrics.adapters.aggregates).
def scalar(conn: Any, sql: str) -> Any:
    """The one value of a measurement query; a numeric sum (Decimal) as an int."""
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0]) if isinstance(row[0], Decimal) else row[0]


def _create_baseline_tables(conn: Any) -> None:
    """The floor's table (dynamic_metrics' four columns and its (former) primary key) and the
    naive baseline's two."""
    conn.execute("CREATE TABLE bench_floor_metrics (event_id text, metric_name text, value float8, "
                 "occurred_at timestamptz, PRIMARY KEY (event_id, metric_name, occurred_at))")
    conn.execute("CREATE TABLE bench_naive_metrics (event_id text, metric_name text, value float8, "
                 "occurred_at timestamptz, merchant_id text, payment_method text, status text, currency text, "
                 "PRIMARY KEY (event_id, metric_name, occurred_at))")
    conn.execute("CREATE TABLE bench_naive_aggregates (metric_name text, window_us bigint, dimensions jsonb, "
                 "count bigint, sum float8, PRIMARY KEY (metric_name, window_us, dimensions))")


def _real_and_floor_rounds(conn: Any, roots: dict[str, int], env: dict[str, str], per: dict[str, list[Any]],
                           events: int, repeats: int, console: Any
                           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`repeats` rounds of (real, floor), each on emptied tables: the phases of every round, and
    the workers' results of the last real round (whose data stay for the fold and sizes)."""
    real_args = [(env, p, [[(e.body, e.sequence_number, e.enqueued_at) for e in b] for b in bl])
                 for p, bl in per.items()]
    floor_args = [(env, p, [[e.body for e in b] for b in bl]) for p, bl in per.items()]
    rounds: list[dict[str, Any]] = []
    real: list[dict[str, Any]] = []
    for n in range(1, repeats + 1):
        empty_tables(conn, "bench_floor_metrics")
        console.print(f"round {n}/{repeats} real: the function entry ...")
        with _Meter(conn, roots) as meter:
            real = _parallel(_real_worker, real_args)
        real_phase = _phase(real, meter, events)
        console.print(f"round {n}/{repeats} floor: parse + Parquet upload + COPY of 3 rows per event ...")
        with _Meter(conn, roots) as meter:
            floor = _parallel(_floor_worker, floor_args)
        floor_phase = _phase(floor, meter, events)
        rounds.append({"real": real_phase, "floor": floor_phase,
                       "ratio_to_floor": real_phase["seconds"] / floor_phase["seconds"]})   # rounded once, in the median
        console.print(f"  {real_phase['events_per_second']:,} events/s, floor {floor_phase['events_per_second']:,}"
                      f", ratio {rounds[-1]['ratio_to_floor']:.2f}")
    return rounds, real


@dataclass
class _Stored:
    """After the last real round: the fold of everything pending, then what is stored."""

    pending_deltas: int
    folded: int
    fold_seconds: float
    processed: int
    bytes_by_table: dict[str, int]
    parquet_bytes: int
    metric_rows: int
    aggregate_rows: int
    floor_rows: int
    floor_events: int
    pg_version: str


def _fold_and_measure_storage(conn: Any) -> _Stored:
    from txmetrics.adapters.aggregates import fold, pending_deltas

    pending = pending_deltas(conn).deltas
    t = time.perf_counter()
    folded = fold(conn)
    fold_seconds = time.perf_counter() - t
    conn.execute("VACUUM ANALYZE")
    sizes = {t: scalar(conn, f"""SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
                                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
                                  AND (c.relname = '{t}' OR c.relname LIKE '{t}\\_p%')""") for t in PIPELINE_TABLES}
    return _Stored(
        pending_deltas=pending, folded=folded, fold_seconds=fold_seconds,
        processed=scalar(conn, "SELECT count(*) FROM ingested_events"), bytes_by_table=sizes,
        parquet_bytes=scalar(conn, "SELECT coalesce(sum(byte_size), 0) FROM raw_files"),
        metric_rows=scalar(conn, "SELECT count(*) FROM dynamic_metrics"),
        aggregate_rows=scalar(conn, "SELECT count(*) FROM aggregate_histograms"),
        floor_rows=scalar(conn, "SELECT count(*) FROM bench_floor_metrics"),
        floor_events=scalar(conn, "SELECT count(DISTINCT (event_id, occurred_at)) FROM bench_floor_metrics"),
        pg_version=scalar(conn, "SHOW server_version"))


def _naive_seconds(env: dict[str, str], data: list[Any], naive_events: int, console: Any) -> float | None:
    """The naive baseline, row at a time, on the first `naive_events` events (None: skipped)."""
    if not naive_events:
        return None
    console.print(f"naive: row at a time on {naive_events:,} events ...")
    naive_per: dict[str, list[bytes]] = {}
    for e in data[:naive_events]:
        naive_per.setdefault(e.partition_id, []).append(e.body)
    naive = _parallel(_naive_worker, [(env, p, b) for p, b in naive_per.items()])
    return float(max(r["end"] for r in naive) - min(r["start"] for r in naive))


def run(events: int, partitions: int, batch_size: int, naive_events: int, repeats: int = 3) -> dict[str, Any]:
    """The benchmark of the module docstring, on throwaway services: (1) the synthetic events;
    (2) rounds of real and floor; (3) the fold and the storage after the last real round;
    (4) the naive baseline; (5) the figures, medians over the rounds."""
    import psycopg
    from rich.console import Console

    from localdev.services import ephemeral_services, running
    from localdev.synth import Generator, batches
    from txmetrics import schema

    console = Console()
    gen = Generator(seed=42, partitions=partitions, start=START,
                    days=max(events / 40_000, 300) / 86_400)   # timestamps as at 40k events/s (>= 5 minutes)
    data = list(gen.events(events))
    console.print(f"{len(data):,} events, {partitions} partitions, batches of {batch_size}")
    with running(ephemeral_services()) as services, psycopg.connect(services.database_url, autocommit=True) as conn:
        schema.apply_all(services.database_url)
        env = {**services.env(), "RAW_EVENTS_CONTAINER": RAW_EVENTS_CONTAINER}
        roots = service_roots(services)      # none for services given by URL: their CPU is not ours to read
        _create_baseline_tables(conn)
        rounds, real = _real_and_floor_rounds(conn, roots, env, batches(data, batch_size), events, repeats, console)
        stored = _fold_and_measure_storage(conn)
        naive_seconds = _naive_seconds(env, data, naive_events, console)
    config = {"events": events, "partitions": partitions, "batch_size": batch_size, "naive_events": naive_events,
              "repeats": repeats}
    return {**_figures(config, rounds, real, stored, naive_seconds), "code": code_under_test()}


def _median(rounds: list[dict[str, Any]], *path: str) -> Any:
    """The median over the rounds of one figure (None if a round has none)."""
    values = []
    for r in rounds:
        v: Any = r
        for k in path:
            v = v[k]
        values.append(v)
    return statistics.median(values) if None not in values else None


def _time_breakdown(real: list[dict[str, Any]]) -> dict[str, float]:
    """Percent of the function's batch time per step, largest first, over the real workers."""
    steps: dict[str, float] = {}
    for r in real:
        for timing in r["timings"]:
            for k, v in timing.items():
                steps[k] = steps.get(k, 0.0) + v
    total_ms = sum(steps.values())
    return {k: round(100 * v / total_ms, 1) for k, v in sorted(steps.items(), key=lambda kv: -kv[1])}


def _figures(config: dict[str, int], rounds: list[dict[str, Any]], real: list[dict[str, Any]], stored: _Stored,
             naive_seconds: float | None) -> dict[str, Any]:
    events = config["events"]
    latencies = sorted(x for r in real for x in r["latencies"])
    ratio = _median(rounds, "ratio_to_floor")
    processed = max(stored.processed, 1)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "postgresql": stored.pg_version,
                    "services": "embedded PostgreSQL + Azurite on the same cores"},
        "config": config,
        "events_per_second": round(events / _median(rounds, "real", "seconds")),
        "floor_events_per_second": round(events / _median(rounds, "floor", "seconds")),
        "ratio_to_floor": round(ratio, 2),
        "naive_events_per_second": round(config["naive_events"] / naive_seconds) if naive_seconds else None,
        "cpu_us_per_event": {
            "function_workers": _median(rounds, "real", "workers_cpu_us_per_event"),
            "postgres": _median(rounds, "real", "postgres_cpu_us_per_event"),
            "azurite": _median(rounds, "real", "azurite_cpu_us_per_event"),
            "machine": _median(rounds, "real", "machine_cpu_us_per_event"),
            "floor_workers": _median(rounds, "floor", "workers_cpu_us_per_event"),
            "floor_postgres": _median(rounds, "floor", "postgres_cpu_us_per_event"),
            "floor_machine": _median(rounds, "floor", "machine_cpu_us_per_event")},
        "wal_bytes_per_event": {"real": _median(rounds, "real", "wal_bytes_per_event"),
                                "floor": _median(rounds, "floor", "wal_bytes_per_event")},
        "rounds": rounds,
        "batch_latency_ms": {"p50": round(1000 * statistics.median(latencies), 1),
                             "p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1)},
        "peak_memory_mb_per_worker": round(max(r["max_rss_mb"] for r in real), 1),
        "fold": {"pending_deltas": stored.pending_deltas, "folded": stored.folded,
                 "seconds": round(stored.fold_seconds, 3)},
        "parquet_bytes_per_event": round(stored.parquet_bytes / processed, 1),
        "postgres_bytes_per_event": round(sum(stored.bytes_by_table.values()) / processed, 1),
        "postgres_bytes_per_event_by_table": {k: round(v / processed, 1) for k, v in stored.bytes_by_table.items()},
        "metric_rows": stored.metric_rows, "aggregate_rows": stored.aggregate_rows, "processed": stored.processed,
        "floor_rows": stored.floor_rows, "floor_events": stored.floor_events,
        "time_breakdown_percent": _time_breakdown(real),
    }
    result["targets"] = {
        "events_per_second >= 25000": result["events_per_second"] >= 25_000,
        "ratio_to_floor <= 2": ratio <= 2,
        "postgres_bytes_per_event <= 400": result["postgres_bytes_per_event"] <= 400,
        "function_worker_cpu_us_per_event <= 40": (result["cpu_us_per_event"]["function_workers"] or 0) <= 40,
        "fold_seconds <= 60": stored.fold_seconds <= 60,
        "peak_memory_mb < 256": result["peak_memory_mb_per_worker"] < 256,
    }
    return result


def record(result: dict[str, Any]) -> Path:
    """The run's JSON under benchmarks/results/ (the history); docs are summarised by hand."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result['when'].replace(':', '').replace('+0000', 'Z')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def summary(result: dict[str, Any]) -> str:
    cpu, wal = result["cpu_us_per_event"], result["wal_bytes_per_event"]
    lines = [
        f"events/s {result['events_per_second']:,} | floor {result['floor_events_per_second']:,} | "
        f"time vs floor {result['ratio_to_floor']}",
        f"CPU us/event: function workers {cpu['function_workers']}, PostgreSQL {cpu['postgres']}, "
        f"Azurite {cpu['azurite']} (floor: workers {cpu['floor_workers']}, PostgreSQL {cpu['floor_postgres']})",
        f"WAL bytes/event {wal['real']} (floor {wal['floor']}); PostgreSQL bytes/event "
        f"{result['postgres_bytes_per_event']}; Parquet bytes/event {result['parquet_bytes_per_event']}",
        f"fold of {result['fold']['folded']:,} deltas: {result['fold']['seconds']} s; peak memory per worker "
        f"{result['peak_memory_mb_per_worker']} MB; batch p50/p99 {result['batch_latency_ms']['p50']}/"
        f"{result['batch_latency_ms']['p99']} ms",
        "targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in result["targets"].items()),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--naive-events", type=int, default=5_000, help="0 skips the naive baseline")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (real, floor); medians are reported")
    parser.add_argument("--no-record", action="store_true", help="print only; write no result file")
    args = parser.parse_args()
    require_own_code(code_under_test())
    result = run(args.events, args.partitions, args.batch_size, args.naive_events, args.repeats)
    print(json.dumps(result, indent=2))
    print(summary(result))
    if not args.no_record:
        print(f"recorded in {record(result)}")


if __name__ == "__main__":
    main()
