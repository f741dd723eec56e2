"""Report time: `txmetrics.report.build` over 30 days of data, and over 7 days and 1 day.

    .venv/bin/python -m localdev.bench_report [--days 30 --events 300000 --repeats 3]

The data are the real thing at a modest rate: synthetic events (the `make run` generator,
3% bad) spread over `--days` days, through the real function into throwaway services
(embedded PostgreSQL, Azurite): aggregates, failed items, the raw-file manifest and the
Parquet blobs that retention lists. Then, as the deployed timers would have: the deltas are
folded, every finished day is rolled up, and a third of the failed items are marked
replayed (replay itself is not what is timed). The report is then built `--repeats` times
per range (the first of them on a cold connection), with the dev stack's retention outlook
over the real blob inventory, and the time of each part is recorded. Results are printed
and written to benchmarks/results/report-<utc time>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from txmetrics.core.naming import RAW_EVENTS_CONTAINER

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
START = datetime(2026, 3, 1, tzinfo=UTC)


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def time_report(conn: Any, service: Any, start: datetime, end: datetime, repeats: int) -> dict[str, Any]:
    """Build the report `repeats` times; the parts (collect: the queries; render) of each."""
    from lifecycle.policy import load_policy
    from txmetrics.report import data as report_data
    from txmetrics.report import render

    policy = load_policy("dev")
    runs = []
    html = ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        collected, collect_s = _timed(report_data.collect, conn, start=start, end=end, service=service, policy=policy)
        html, render_s = _timed(render, collected)
        runs.append({"total_s": round(time.perf_counter() - t0, 3), "collect_s": round(collect_s, 3),
                     "render_s": round(render_s, 3)})
    _, retention_s = _timed(report_data.retention_outlook, policy, conn=conn, service=service,
                            now=datetime.now(UTC))
    return {"start": start.isoformat(), "end": end.isoformat(), "window": collected.window, "trend": collected.trend,
            "runs": runs, "median_s": statistics.median(r["total_s"] for r in runs),
            "of_which_retention_outlook_s": round(retention_s, 3), "html_kb": round(len(html.encode()) / 1e3),
            "charts": html.count("data-chart="), "transactions": collected.headline.transactions}


def main() -> None:
    import psycopg
    from rich.console import Console

    from localdev.bench import machine, scalar
    from localdev.run import RunConfig, run
    from localdev.services import ephemeral_services, running
    from txmetrics import schema
    from txmetrics.adapters.aggregates import fold
    from txmetrics.adapters.blob import service_client
    from txmetrics.rollup import roll_day

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with running(ephemeral_services()) as services:
        schema.apply_all(services.database_url)
        config = RunConfig(events=args.events, days=args.days, partitions=4, start=START)
        env = {**services.env(), "RAW_EVENTS_CONTAINER": RAW_EVENTS_CONTAINER}
        ingest, ingest_s = _timed(run, config, env, console=Console(file=io.StringIO()))
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            folded, fold_s = _timed(fold, conn)
            t = time.perf_counter()
            rolled = sum(roll_day(conn, (START + timedelta(days=d)).date()) for d in range(args.days))
            rollup_s = time.perf_counter() - t
            conn.execute("UPDATE failed_items SET replayed = true, replayed_at = now() WHERE id % 3 = 0")
            conn.execute("VACUUM ANALYZE")
            counts = {table: scalar(conn, f"SELECT count(*) FROM {table}")
                      for table in ("aggregate_histograms", "failed_items", "raw_files", "dynamic_metrics")}
            service = service_client(services.storage_connection_string)
            blobs = sum(1 for _ in service.get_container_client(RAW_EVENTS_CONTAINER).list_blobs())
            ranges = {f"{args.days}d": (START, START + timedelta(days=args.days)),
                      "7d": (START + timedelta(days=7), START + timedelta(days=14)),
                      "1d": (START + timedelta(days=7), START + timedelta(days=8))}
            timings = {name: time_report(conn, service, a, b, args.repeats) for name, (a, b) in ranges.items()}
    when = datetime.now(UTC)
    out = {"when": when.isoformat(timespec="seconds"), "machine": machine(), "days": args.days,
           "events": args.events, "ingest_s": round(ingest_s, 1), "ingested_new": ingest["new"],
           "folded_deltas": folded, "fold_s": round(fold_s, 1), "days_rolled_up": rolled, "rollup_s": round(rollup_s, 1),
           "rows": counts, "blobs": blobs, "report": timings,
           "target": f"{args.days}-day report under 5 s",
           "met": timings[f"{args.days}d"]["median_s"] < 5}
    text = json.dumps(out, indent=2)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"report-{when:%Y-%m-%dT%H%M%SZ}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
