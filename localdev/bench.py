"""`make bench`: ingest throughput of the real function entry, with the floor and a naive
baseline measured in the same run, on the same services and the same data.

* real: N synthetic events (same generator as `make run`) in batches of 1,000 over 4
  partitions, one worker process per partition, through `function_app.ingest`.
* floor: only the unavoidable I/O for the same data: COPY of the same metric rows into a
  table with dynamic_metrics' columns, checks and primary key (not partitioned), and Parquet
  encode + upload of the same events (no validation, no ledger, no aggregation).
* naive: the same work row at a time, as row-at-a-time stores do: one INSERT per metric
  row and one aggregate upsert per (event, metric, dimension set), on a sample of the
  events (it is slow), reported as events/s.

Each phase is timed from a barrier (all its workers imported, connected and prepared) to
the last worker's end; real and floor run as pairs, `--repeats` times (3) on emptied
tables, and the medians are reported with every round in the JSON. See docs/benchmarks.md.

Results go to benchmarks/results/<utc time>.json with a description of the machine, and a
row is added to docs/benchmarks.md.
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
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
START = datetime(2026, 3, 1, tzinfo=UTC)


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
    """CPU time used by everything on the machine so far (user + system, all cores), Linux only:
    the services run on the same cores, so this is what a phase really costs."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- workers
# Every worker of a phase prepares (imports, connections, its share of the data), then waits
# at a barrier; a phase is timed from the barrier to the last worker's end, so process start,
# imports and untimed preparation never count, for the function or for the floor.

_BARRIER: Any = None


def _init_worker(barrier: Any) -> None:
    global _BARRIER
    _BARRIER = barrier


def _start_together() -> tuple[float, float | None]:
    if _BARRIER is not None:
        _BARRIER.wait()
    return time.time(), machine_cpu_seconds()


def _finished(result: dict[str, Any], started: tuple[float, float | None]) -> dict[str, Any]:
    return {**result, "start": started[0], "start_cpu": started[1], "end": time.time(),
            "end_cpu": machine_cpu_seconds()}


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


def _phase(results: list[dict[str, Any]], events: int) -> tuple[float, float | None]:
    """Wall seconds from the common start to the last end, and machine CPU us per event."""
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    starts = [r["start_cpu"] for r in results if r["start_cpu"] is not None]
    ends = [r["end_cpu"] for r in results if r["end_cpu"] is not None]
    cpu = round(1e6 * (max(ends) - min(starts)) / events, 1) if starts and ends else None
    return seconds, cpu


def _real_worker(env: dict[str, str], partition: str, batches: list[list[tuple[bytes, int, datetime]]]
                 ) -> dict[str, Any]:
    os.environ.update(env)
    from localdev.eventhub import decode, host_payload
    from localdev.run import capture_batch_reports, load_function

    reports = capture_batch_reports()
    fn = load_function()
    # What the host serialises (in its own process) is prepared outside the timed loop; the
    # worker's part, azure-functions' converter decoding the batch, is timed with the call.
    payloads = [host_payload([b for b, _, _ in batch], partition_id=partition, sequence_numbers=[s for _, s, _ in batch],
                             enqueued_times=[t for _, _, t in batch]) for batch in batches]
    latencies, decode_ms = [], []
    started = _start_together()
    cpu0 = time.process_time()
    for payload in payloads:
        t = time.perf_counter()
        events = decode(*payload)
        decode_ms.append(1000 * (time.perf_counter() - t))
        fn(events)
        latencies.append(time.perf_counter() - t)
    return _finished({"cpu_seconds": time.process_time() - cpu0, "latencies": latencies,
                      "timings": [{"converter_decode": d, **r["ms"]} for d, r in zip(decode_ms, reports, strict=True)],
                      "max_rss_mb": _peak_rss_mb()}, started)


def _prepare(bodies: list[bytes], partition: str) -> tuple[list[Any], Any]:
    """Valid events and their metric rows, computed outside the timed part of the floor."""
    from txmetrics.core.catalog import load_catalog
    from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event
    from txmetrics.core.metrics import extract_metrics
    from txmetrics.settings import BUNDLED_CATALOG

    events = [e for i, b in enumerate(bodies)
              if isinstance(e := parse_event(InboundEvent(b, partition, i)), PaymentEvent)]
    return events, extract_metrics(events, load_catalog(BUNDLED_CATALOG))


def _floor_worker(env: dict[str, str], partition: str, batches: list[list[bytes]]) -> dict[str, Any]:
    import psycopg

    from txmetrics.adapters import parquet
    from txmetrics.adapters.blob import BlobArchive, service_client
    from txmetrics.core.metrics import TABLE_COLUMNS

    prepared = [_prepare(b, partition) for b in batches]
    archive = BlobArchive(service_client(env["AZURE_STORAGE_CONNECTION_STRING"]), "bench-floor")
    archive.ensure_container()
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        started = _start_together()
        for i, (events, rows) in enumerate(prepared):
            with conn.transaction(), conn.cursor().copy(
                    f"COPY bench_floor_metrics ({', '.join(TABLE_COLUMNS)}) FROM STDIN") as copy:
                for row in rows.records():
                    copy.write_row(row)
            archive.upload(f"floor/{partition}/{i}.parquet", parquet.encode(parquet.events_table(events)))
        return _finished({}, started)


def _naive_worker(env: dict[str, str], partition: str, bodies: list[bytes]) -> dict[str, Any]:
    import psycopg

    from txmetrics.core.catalog import load_catalog
    from txmetrics.core.metrics import dimension_value
    from txmetrics.settings import BUNDLED_CATALOG

    catalog = load_catalog(BUNDLED_CATALOG)
    events, rows = _prepare(bodies, partition)
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        started = _start_together()
        for r in range(len(rows)):
            ev = events[rows.event_index[r]]
            conn.execute(
                "INSERT INTO bench_naive_metrics (event_id, metric_name, value, occurred_at, merchant_id, payment_method,"
                " status, currency) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (ev.event_id, catalog.metrics[rows.metric_index[r]].name, rows.value[r], ev.occurred_at, ev.merchant_id,
                 ev.payment_method, ev.status, ev.currency))
            metric = catalog.metrics[rows.metric_index[r]]
            window = ev.occurred_us - ev.occurred_us % 300_000_000
            for dims in catalog.sets_for(metric):
                conn.execute(
                    "INSERT INTO bench_naive_aggregates AS a VALUES (%s, %s, %s::jsonb, 1, %s) "
                    "ON CONFLICT (metric_name, window_us, dimensions) DO UPDATE SET count = a.count + 1, "
                    "sum = a.sum + excluded.sum",
                    (metric.name, window, json.dumps({d: dimension_value(ev, d) for d in dims}, sort_keys=True),
                     rows.value[r]))
        return _finished({"events": len(bodies)}, started)


# ----------------------------------------------------------------------------- run

def _parallel(target: Any, args_list: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args_list))
    with ctx.Pool(len(args_list), initializer=_init_worker, initargs=(barrier,)) as pool:
        return pool.starmap(target, args_list)


def _empty_tables(database_url: str) -> None:
    """Back to an empty pipeline between rounds (the ledger would otherwise skip every event)."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE dynamic_metrics, ingested_events, aggregate_histograms, failed_items, raw_file_outbox, "
                     "raw_files, aggregate_rollups, bench_floor_metrics")
        conn.execute("VACUUM ANALYZE")


def run(events: int, partitions: int, batch_size: int, naive_events: int, repeats: int = 3) -> dict[str, Any]:
    import psycopg
    from rich.console import Console

    from localdev.services import ephemeral_services, running
    from localdev.synth import Generator, batches
    from txmetrics import schema

    console = Console()
    gen = Generator(seed=42, partitions=partitions, start=START,
                    days=max(events / 40_000, 300) / 86_400)   # timestamps as at 40k events/s (>= 5 minutes)
    data = list(gen.events(events))
    per = batches(data, batch_size)
    console.print(f"{len(data):,} events, {partitions} partitions, batches of {batch_size}")
    with running(ephemeral_services()) as services:
        schema.apply_all(services.database_url)
        env = {**services.env(), "RAW_EVENTS_CONTAINER": "raw-events"}
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            # Same columns, checks and primary key as dynamic_metrics: the unique key is part of
            # storing these rows (the contract's "delivered again never adds a row"), so it is
            # part of the floor; partitioning and the ledger are not.
            conn.execute("CREATE TABLE IF NOT EXISTS bench_floor_metrics (LIKE dynamic_metrics INCLUDING ALL)")
            conn.execute("CREATE TABLE bench_naive_metrics (event_id text, metric_name text, value float8, "
                         "occurred_at timestamptz, merchant_id text, payment_method text, status text, currency text, "
                         "PRIMARY KEY (event_id, metric_name, occurred_at))")
            conn.execute("CREATE TABLE bench_naive_aggregates (metric_name text, window_us bigint, dimensions jsonb, "
                         "count bigint, sum float8, PRIMARY KEY (metric_name, window_us, dimensions))")

        # Repeated pairs of (real, floor) on emptied tables, median reported: on a shared
        # machine one phase can be slowed by a neighbour while the other is not.
        real_args = [(env, p, [[(e.body, e.sequence_number, e.enqueued_at) for e in b] for b in bl])
                     for p, bl in per.items()]
        floor_args = [(env, p, [[e.body for e in b] for b in bl]) for p, bl in per.items()]
        rounds: list[dict[str, Any]] = []
        real: list[dict[str, Any]] = []
        for n in range(1, repeats + 1):
            _empty_tables(services.database_url)
            console.print(f"round {n}/{repeats} real: the function entry ...")
            real = _parallel(_real_worker, real_args)
            real_seconds, real_cpu = _phase(real, events)
            console.print(f"round {n}/{repeats} floor: COPY + Parquet encode/upload of the same data ...")
            floor_seconds, floor_cpu = _phase(_parallel(_floor_worker, floor_args), events)
            rounds.append({"seconds": round(real_seconds, 3), "floor_seconds": round(floor_seconds, 3),
                           "ratio_to_floor": round(real_seconds / floor_seconds, 3),
                           "cpu_us_per_event": real_cpu, "floor_cpu_us_per_event": floor_cpu,
                           "function_workers_cpu_us_per_event": round(
                               1e6 * sum(r["cpu_seconds"] for r in real) / events, 1)})
            console.print(f"  {events / real_seconds:,.0f} events/s, floor {events / floor_seconds:,.0f}, "
                          f"ratio {real_seconds / floor_seconds:.2f}")
        real_seconds = statistics.median(r["seconds"] for r in rounds)
        floor_seconds = statistics.median(r["floor_seconds"] for r in rounds)
        ratio = statistics.median(r["ratio_to_floor"] for r in rounds)
        console.print(f"naive: row at a time on {naive_events:,} events ...")
        sample = data[:naive_events]
        naive_per: dict[str, list[bytes]] = {}
        for e in sample:
            naive_per.setdefault(e.partition_id, []).append(e.body)
        naive_seconds, _ = _phase(_parallel(_naive_worker, [(env, p, b) for p, b in naive_per.items()]), naive_events)

        with psycopg.connect(services.database_url) as conn:
            def q(sql: str) -> Any:
                value = conn.execute(sql).fetchone()[0]  # type: ignore[index]
                return int(value) if isinstance(value, Decimal) else value
            processed = q("SELECT count(*) FROM ingested_events")
            parquet_bytes = q("SELECT coalesce(sum(byte_size), 0) FROM raw_files")
            pg_bytes = q("""SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
                             WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace
                               AND (c.relname LIKE 'dynamic_metrics%' OR c.relname LIKE 'ingested_events%'
                                    OR c.relname IN ('aggregate_histograms', 'failed_items', 'raw_files'))""")
            metric_rows = q("SELECT count(*) FROM dynamic_metrics")
            aggregate_rows = q("SELECT count(*) FROM aggregate_histograms")
            pg_version = q("SHOW server_version")

    latencies = sorted(x for r in real for x in r["latencies"])
    steps: dict[str, float] = {}
    for r in real:
        for t in r["timings"]:
            for k, v in t.items():
                steps[k] = steps.get(k, 0.0) + v
    total_ms = sum(steps.values())
    breakdown = {k: round(100 * v / total_ms, 1) for k, v in sorted(steps.items(), key=lambda kv: -kv[1])}
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "postgresql": pg_version, "services": "embedded PostgreSQL + Azurite on the same cores"},
        "config": {"events": events, "partitions": partitions, "batch_size": batch_size, "naive_events": naive_events,
                   "repeats": repeats},
        "events_per_second": round(events / real_seconds),
        "floor_events_per_second": round(events / floor_seconds),
        "naive_events_per_second": round(naive_events / naive_seconds),
        "ratio_to_floor": round(ratio, 2),
        "speedup_over_naive": round((events / real_seconds) / (naive_events / naive_seconds), 1),
        # CPU of all cores per event, services included (what 2 cores can sustain follows from it)
        "cpu_us_per_event": {
            "real": statistics.median(r["cpu_us_per_event"] or 0 for r in rounds) or None,
            "real_function_workers": statistics.median(r["function_workers_cpu_us_per_event"] for r in rounds),
            "floor": statistics.median(r["floor_cpu_us_per_event"] or 0 for r in rounds) or None},
        "rounds": rounds,
        "batch_latency_ms": {"p50": round(1000 * statistics.median(latencies), 1),
                             "p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1)},
        "peak_memory_mb_per_worker": round(max(r["max_rss_mb"] for r in real), 1),
        "parquet_bytes_per_event": round(parquet_bytes / max(processed, 1), 1),
        "postgres_bytes_per_event": round(pg_bytes / max(processed, 1), 1),
        "metric_rows": metric_rows, "aggregate_rows": aggregate_rows, "processed": processed,
        "time_breakdown_percent": breakdown,
        "targets": {"events_per_second >= 40000": events / real_seconds >= 40_000,
                    "ratio_to_floor <= 2": ratio <= 2,
                    "speedup_over_naive >= 10": (events / real_seconds) / (naive_events / naive_seconds) >= 10,
                    "peak_memory_mb < 256": max(r["max_rss_mb"] for r in real) < 256},
    }
    return result


def record(result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{result['when'].replace(':', '').replace('+0000', 'Z')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    row = (f"| {result['when'][:16]} | {result['machine']['cores']} x {result['machine']['cpu'][:40]} | "
           f"{result['config']['events']:,} | {result['events_per_second']:,} | {result['floor_events_per_second']:,} | "
           f"{result['ratio_to_floor']} | {result['naive_events_per_second']:,} | {result['speedup_over_naive']} | "
           f"{result['batch_latency_ms']['p50']} / {result['batch_latency_ms']['p99']} | "
           f"{result['peak_memory_mb_per_worker']} | {result['parquet_bytes_per_event']} | "
           f"{result['postgres_bytes_per_event']} |")
    lines = DOC.read_text().splitlines() if DOC.exists() else []
    for i, line in enumerate(lines):
        if line.startswith("|---"):          # newest run first, right under the table header
            lines.insert(i + 1, row)
            DOC.write_text("\n".join(lines) + "\n")
            break
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (real, floor); medians are reported")
    parser.add_argument("--no-record", action="store_true", help="print only; write no result file")
    args = parser.parse_args()
    result = run(args.events, args.partitions, args.batch_size, args.naive_events, args.repeats)
    print(json.dumps(result, indent=2))
    if not args.no_record:
        print(f"recorded in {record(result)}")


if __name__ == "__main__":
    main()
