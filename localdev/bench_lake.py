"""Backfill and rebuild throughput (events/s), beside the ingest path measured in the same run.

    .venv/bin/python -m localdev.bench_lake [--events 200000] [--repeats 3]

On the same services and the same data (the `make run` generator, as `make bench`):
  * ingest: N events through `function_app.ingest` (4 partitions, one worker process each,
    batches of 1,000), with the bundled catalog: the path `make bench` measures;
  * backfill: `risk_score` (attributes.risk_score) added to the catalog, then
    `txmetrics.backfill.backfill` over the whole range (one process, as the command runs);
  * rebuild: every table emptied, then `txmetrics.rebuild.rebuild_in_parallel` of the days
    (4 worker processes, as `txmetrics rebuild` runs by default; --rebuild-workers 1: one
    process), with the catalog including risk_score (4 metrics per event);
    checked: the same ledger, rows and KPI totals as before.
Ingest ends with its deltas committed (the minute timer folds them; its fold is timed apart
and added for "ingest_with_fold"); the rebuild ends with the fold and rollups done, and its
time until every file was committed is reported too ("rebuild_until_committed"), so both
are compared at the same point. The rebuild's time includes starting its worker processes.
Each repeat empties the tables and the container first; medians are reported, every round
is in the JSON (benchmarks/results/lake-<utc time>.json). docs/benchmarks.md is summarised
by hand from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from localdev.bench import (
    RESULTS,
    START,
    _Meter,
    _parallel,
    _phase,
    _real_worker,
    empty_tables,
    machine,
    scalar,
    service_roots,
)
from txmetrics.adapters.aggregates import fold


def catalogs_before_and_after(directory: Path) -> tuple[Path, Path]:
    """(the bundled catalog, the same plus risk_score from attributes.risk_score): a metric
    added after ingest, written into `directory` (the benchmark's and the tests')."""
    from txmetrics.settings import BUNDLED_CATALOG

    old = directory / "catalog-old.yaml"
    old.write_text(BUNDLED_CATALOG.read_text())
    raw = yaml.safe_load(BUNDLED_CATALOG.read_text())
    raw["metrics"].append({"name": "risk_score", "kind": "value", "source": "attributes.risk_score"})
    new = directory / "catalog-new.yaml"
    new.write_text(yaml.safe_dump(raw))
    return old, new


def _fingerprint(conn: Any) -> dict[str, Any]:
    """What a rebuild must restore, after the fold (counts: measurement SQL, not the pipeline's)."""
    fold(conn)
    row = conn.execute(
        """SELECT (SELECT count(*) FROM ingested_events), (SELECT count(*) FROM dynamic_metrics),
                  (SELECT count(*) FROM dynamic_metrics WHERE metric_name = 'risk_score'),
                  (SELECT sum(count) FROM aggregate_histograms WHERE window_seconds = 300 AND dimensions = '{}')
       """).fetchone()
    return {"ledger": row[0], "metric_rows": row[1], "risk_score_rows": row[2], "aggregated_values": int(row[3] or 0)}


def run(events: int, partitions: int, batch_size: int, repeats: int, rebuild_workers: int) -> dict[str, Any]:
    import psycopg
    from rich.console import Console

    from localdev.services import ephemeral_services, running
    from localdev.synth import Generator, batches
    from txmetrics import schema
    from txmetrics.adapters.blob import BlobArchive, service_client
    from txmetrics.adapters.postgres import PostgresStore
    from txmetrics.backfill import backfill
    from txmetrics.core.catalog import load_catalog
    from txmetrics.rebuild import rebuild, rebuild_in_parallel
    from txmetrics.settings import Settings

    console = Console()
    gen = Generator(seed=42, partitions=partitions, start=START, days=max(events / 40_000, 300) / 86_400)
    data = list(gen.events(events))
    per = batches(data, batch_size)
    valid = sum(1 for e in data if e.bad_kind is None)
    console.print(f"{len(data):,} events ({valid:,} valid), {partitions} partitions, batches of {batch_size}")
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, running(ephemeral_services()) as services, \
            psycopg.connect(services.database_url, autocommit=True) as conn:
        old, new = catalogs_before_and_after(Path(tmp))
        schema.apply_all(services.database_url)
        roots = service_roots(services)
        for n in range(1, repeats + 1):
            container = f"bench-lake-{n}"
            env = {**services.env(), "RAW_EVENTS_CONTAINER": container, "METRIC_CATALOG": str(old)}
            empty_tables(conn)
            console.print(f"round {n}/{repeats} ingest: the function entry, {partitions} worker processes ...")
            args = [(env, p, [[(e.body, e.sequence_number, e.enqueued_at) for e in b] for b in bl])
                    for p, bl in per.items()]
            with _Meter(conn, roots) as meter:
                workers = _parallel(_real_worker, args)
            ingest = _phase(workers, meter, events)
            ingest["events_per_second_valid"] = round(valid / ingest["seconds"])
            t = time.perf_counter()
            fold(conn)         # what the minute timer does after ingest
            ingest["fold_seconds"] = round(time.perf_counter() - t, 3)
            ingest["events_per_second_with_fold"] = round(events / (ingest["seconds"] + ingest["fold_seconds"]))
            conn.execute("VACUUM ANALYZE")

            archive = BlobArchive(service_client(services.storage_connection_string), container)
            store = PostgresStore(services.database_url)
            console.print(f"round {n}/{repeats} backfill of risk_score: one process ...")
            with _Meter(conn, roots) as meter:
                t = time.perf_counter()
                cpu = time.process_time()
                report = backfill(store=store, archive=archive, catalog=load_catalog(new), metric="risk_score",
                                  start=START, end=START + timedelta(days=2))
                seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
            backfilled = _summary(report.events, report.files, seconds, cpu, meter)
            before = _fingerprint(conn)

            empty_tables(conn)
            console.print(f"round {n}/{repeats} rebuild: one process ...")
            with _Meter(conn, roots) as meter:
                t = time.perf_counter()
                cpu = time.process_time()
                if rebuild_workers > 1:
                    settings = Settings(database_url=services.database_url,
                                        storage_connection_string=services.storage_connection_string,
                                        storage_account_url=None, raw_events_container=container, metric_catalog=new)
                    rebuilt_report = rebuild_in_parallel(settings, workers=rebuild_workers, start=START.date(),
                                                         end=START.date() + timedelta(days=2),
                                                         today=START.date() + timedelta(days=10))
                else:
                    rebuilt_report = rebuild(store=store, archive=archive, catalog=load_catalog(new),
                                             start=START.date(), end=START.date() + timedelta(days=2),
                                             today=START.date() + timedelta(days=10))
                seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
            rebuilt = _summary(rebuilt_report.events, rebuilt_report.files, seconds, cpu, meter)
            # until every file is committed (deltas included, as ingest leaves them), then the fold and rollups
            rebuilt["restore_seconds"] = round(rebuilt_report.restore_seconds, 3)
            rebuilt["events_per_second_restore"] = round(rebuilt_report.events / rebuilt_report.restore_seconds)
            after = _fingerprint(conn)
            store.close()
            same = {k: before[k] == after[k] for k in before}
            rounds.append({"ingest": ingest, "backfill": backfilled, "rebuild": rebuilt,
                           "before_rebuild": before, "after_rebuild": after, "same": same})
            console.print(f"  ingest {ingest['events_per_second']:,} events/s ({ingest['events_per_second_valid']:,} "
                          f"valid), backfill {backfilled['events_per_second']:,}, rebuild "
                          f"{rebuilt['events_per_second']:,}; rebuild equal: {all(same.values())}")
        pg_version = scalar(conn, "SHOW server_version")

    def median(phase: str, key: str) -> Any:
        return statistics.median(r[phase][key] for r in rounds)

    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "postgresql": pg_version, "services": "embedded PostgreSQL + Azurite on the same cores"},
        "config": {"events": events, "valid_events": valid, "partitions": partitions, "batch_size": batch_size,
                   "repeats": repeats, "ingest_workers": partitions, "backfill_processes": 1, "rebuild_processes": rebuild_workers},
        "events_per_second": {"ingest": median("ingest", "events_per_second"),
                              "ingest_valid": median("ingest", "events_per_second_valid"),
                              "ingest_with_fold": median("ingest", "events_per_second_with_fold"),
                              "backfill": median("backfill", "events_per_second"),
                              "rebuild": median("rebuild", "events_per_second"),
                              "rebuild_until_committed": median("rebuild", "events_per_second_restore")},
        "machine_cpu_us_per_event": {p: median(p, "machine_cpu_us_per_event") for p in ("ingest", "backfill", "rebuild")},
        "rounds": rounds,
    }
    eps = result["events_per_second"]
    result["targets"] = {"backfill >= ingest": eps["backfill"] >= eps["ingest"],
                         "rebuild >= ingest (both with their fold)": eps["rebuild"] >= eps["ingest_with_fold"],
                         "rebuild >= ingest (both until committed)": eps["rebuild_until_committed"] >= eps["ingest"],
                         "rebuild restores the same ledger, rows and aggregates": all(
                             all(r["same"].values()) for r in rounds)}
    return result


def _summary(events: int, files: int, seconds: float, cpu: float, meter: Any) -> dict[str, Any]:
    per = 1e6 / max(events, 1)
    return {"events": events, "files": files, "seconds": round(seconds, 3),
            "events_per_second": round(events / seconds) if seconds else 0,
            "process_cpu_us_per_event": round(per * cpu, 1),
            "postgres_cpu_us_per_event": None if meter.services.get("postgres") is None
            else round(per * meter.services["postgres"], 1),
            "machine_cpu_us_per_event": None if meter.machine is None else round(per * meter.machine, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rebuild-workers", type=int, default=4, help="processes of the rebuild (the command's --workers)")
    parser.add_argument("--no-record", action="store_true", help="print only; write no result file")
    args = parser.parse_args()
    result = run(args.events, args.partitions, args.batch_size, args.repeats, args.rebuild_workers)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    if not args.no_record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"lake-{result['when'].replace(':', '').replace('+0000', 'Z')}.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"recorded in {path}")


if __name__ == "__main__":
    main()
