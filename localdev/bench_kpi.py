"""KPI query latency: a 30-day p99 over all merchants, merged from 5-minute windows.

    .venv/bin/python -m localdev.bench_kpi [--days 30]

Fills aggregate_histograms with a month of 5-minute windows (per metric: the all-up total,
per payment method, per merchant x method), built from lognormal / heavy-tailed values
with the same histogram code the function uses, then times `txmetrics.kpi.query`.
Results are printed and written to benchmarks/results/kpi-<utc time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from txmetrics.core.histogram import Histogram

if TYPE_CHECKING:
    import psycopg

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def fill(conn: psycopg.Connection, days: int, merchants: int, seed: int = 3) -> tuple[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    methods = ["card", "wallet", "bank_transfer", "bnpl"]
    rows = 0
    all_values = []
    with conn.cursor().copy(
            "COPY aggregate_histograms (metric_name, window_seconds, window_start, dimensions, count, sum, min, max, "
            "zero_count, scale, pos_offset, pos_counts) FROM STDIN") as copy:
        for w in range(days * 288):
            window = start + timedelta(minutes=5 * w)
            slices = {}
            for m in methods:
                values = np.floor((rng.pareto(1.3, 200) + 1) * 40 * rng.lognormal(0, 0.3))
                slices[m] = values
                all_values.append(values)
            total = np.concatenate(list(slices.values()))
            groups = [("{}", total)] + [(json.dumps({"payment_method": m}), v) for m, v in slices.items()]
            # each method's values split among its merchants, as the function stores them: every
            # set counts every event once (the KPI reader's set check relies on it)
            groups += [(json.dumps({"merchant_id": f"m-{i:04d}", "payment_method": methods[i % 4]}),
                        slices[methods[i % 4]][i // 4::len(range(i % 4, merchants, 4))]) for i in range(merchants)]
            for dims, values in groups:
                h = Histogram.of(values)
                copy.write_row(("processing_ms", 300, window, dims, h.count, h.sum, h.min, h.max, h.zero_count, 6,
                                h.pos_offset, "{" + ",".join(map(str, h.pos_counts)) + "}"))
                rows += 1
    return rows, np.concatenate(all_values)


def main() -> None:
    import psycopg

    from localdev.services import ephemeral_services, running
    from txmetrics import kpi, schema

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--merchants", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with running(ephemeral_services()) as services:
        schema.apply_all(services.database_url)
        with psycopg.connect(services.database_url) as conn:
            t = time.perf_counter()
            rows, values = fill(conn, args.days, args.merchants)
            conn.commit()
            fill_s = time.perf_counter() - t
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            from txmetrics.rollup import roll_day

            t = time.perf_counter()
            first = datetime(2026, 3, 1, tzinfo=UTC).date()
            for d in range(args.days):
                assert roll_day(conn, first + timedelta(days=d))
            rollup_s = time.perf_counter() - t
            conn.execute("VACUUM ANALYZE aggregate_histograms")
            start = datetime(2026, 3, 1, tzinfo=UTC)
            end = start + timedelta(days=args.days)
            timings = []
            result = None
            t = time.perf_counter()
            unrolled = kpi.query(conn, metric="processing_ms", start=start, end=end, quantiles=(0.5, 0.99),
                                 use_rollups=False)
            unrolled_ms = (time.perf_counter() - t) * 1000
            for _ in range(args.repeats):
                t = time.perf_counter()
                result = kpi.query(conn, metric="processing_ms", start=start, end=end, quantiles=(0.5, 0.99))
                timings.append((time.perf_counter() - t) * 1000)
            assert result is not None and len(result) == 1
            exact = float(np.quantile(values, 0.99, method="lower"))
            est = result[0].quantiles[0.99]
            out = {
                "when": datetime.now(UTC).isoformat(timespec="seconds"), "days": args.days,
                "aggregate_rows": rows, "fill_seconds": round(fill_s, 1), "rollup_seconds": round(rollup_s, 1),
                "query": "30-day p50+p99 of processing_ms over all merchants (all-up rows)",
                "latency_ms": {"median": round(statistics.median(timings), 1), "min": round(min(timings), 1),
                               "max": round(max(timings), 1)},
                "latency_ms_without_rollups": round(unrolled_ms, 1),
                "same_answer_without_rollups": unrolled[0].quantiles == result[0].quantiles
                and unrolled[0].count == result[0].count,
                "p99_estimate": est, "p99_exact": exact,
                "relative_error": abs(est - exact) / exact if est is not None else None,
                "events": int(result[0].count),
            }
    print(json.dumps(out, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"kpi-{out['when'].replace(':', '')}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
