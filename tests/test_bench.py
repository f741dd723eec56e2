"""`make bench` on a small input: it measures what it says (every valid event through the
function, the same rows in the floor), and records its results where the docs expect them."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from localdev import bench
from localdev.synth import Generator
from txmetrics.core.catalog import load_catalog
from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event
from txmetrics.core.metrics import extract_metrics
from txmetrics.settings import BUNDLED_CATALOG

EVENTS, PARTITIONS = 3000, 2


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return bench.run(EVENTS, PARTITIONS, batch_size=500, naive_events=200, repeats=1)


def test_every_valid_event_goes_through_the_function(result: dict[str, Any]) -> None:
    data = list(Generator(seed=42, partitions=PARTITIONS, start=bench.START,
                          days=max(EVENTS / 40_000, 300) / 86_400).events(EVENTS))
    valid: dict[tuple[str, int], PaymentEvent] = {}
    for i, e in enumerate(data):
        parsed = parse_event(InboundEvent(e.body, e.partition_id, i))
        if isinstance(parsed, PaymentEvent):
            valid.setdefault((parsed.event_id, parsed.occurred_us), parsed)
    assert 0 < len(valid) < EVENTS                  # the generator mixes in bad events
    assert result["processed"] == len(valid)
    assert result["metric_rows"] == len(extract_metrics(list(valid.values()), load_catalog(BUNDLED_CATALOG)))


def test_it_records_the_code_it_measured(result: dict[str, Any]) -> None:
    """The run names the txmetrics it imported (this checkout's) and its commit, and the bench
    refuses to run another checkout's: a shared virtual environment's editable install made
    A/B runs between checkouts measure one of them twice."""
    assert result["code"]["txmetrics"] == str((bench.ROOT / "functions" / "txmetrics").resolve())
    assert result["code"]["commit"] is None or len(result["code"]["commit"]) == 40
    bench.require_own_code(result["code"])
    with pytest.raises(SystemExit, match=r"imported from /elsewhere/txmetrics.*PYTHONPATH="):
        bench.require_own_code({**result["code"], "txmetrics": "/elsewhere/txmetrics"})


def test_it_reports_the_figures_the_issue_asks_for(result: dict[str, Any]) -> None:
    rounds = result["rounds"]
    assert isinstance(rounds, list) and len(rounds) == 1
    real, floor = rounds[0]["real"], rounds[0]["floor"]
    assert real["seconds"] > 0 and floor["seconds"] > 0
    assert result["ratio_to_floor"] == round(real["seconds"] / floor["seconds"], 2)
    # the floor really stored its rows: three per parsed event
    assert result["floor_rows"] == 3 * result["floor_events"]
    cpu = result["cpu_us_per_event"]
    assert isinstance(cpu, dict)
    assert cpu["function_workers"] > 0
    # the services' own CPU, read from /proc when this run started them (not for services given by URL)
    assert (cpu["postgres"] is None) == ("DATABASE_URL" in os.environ)
    assert (cpu["azurite"] is None) == ("AZURE_STORAGE_CONNECTION_STRING" in os.environ)
    # >= 0, not > 0: this small run gives PostgreSQL some 30 ms of CPU over several backends,
    # and /proc counts in 10 ms ticks, so 0.0 happens; the counter itself is tested below
    assert cpu["postgres"] is None or cpu["postgres"] >= 0
    assert cpu["azurite"] is None or cpu["azurite"] >= 0     # a few 10 ms clock ticks on this small input
    wal = result["wal_bytes_per_event"]
    assert isinstance(wal, dict) and wal["real"] > 0 and wal["floor"] > 0
    breakdown = result["time_breakdown_percent"]
    assert isinstance(breakdown, dict)
    assert {"converter_decode", "decode_validate", "parquet_encode", "upload", "metrics_write",
            "aggregate_append"} <= set(breakdown)
    assert abs(sum(breakdown.values()) - 100) < 1
    latency = result["batch_latency_ms"]
    assert isinstance(latency, dict) and 0 < latency["p50"] <= latency["p99"]
    assert 0 < result["peak_memory_mb_per_worker"] < 1024
    assert result["parquet_bytes_per_event"] > 0 and result["postgres_bytes_per_event"] > 0
    fold = result["fold"]
    assert isinstance(fold, dict) and fold["folded"] == fold["pending_deltas"] > 0
    by_table = result["postgres_bytes_per_event_by_table"]
    assert isinstance(by_table, dict)
    assert abs(sum(by_table.values()) - result["postgres_bytes_per_event"]) < 1
    assert by_table["aggregate_histograms"] > 0 and by_table["dynamic_metrics"] > 0


def test_results_are_recorded_as_json_and_no_doc_is_rewritten(result: dict[str, Any], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    docs = {p: p.read_text() for p in (bench.ROOT / "docs").glob("*.md")}
    path = bench.record(result)
    assert path.parent == tmp_path / "results"
    assert json.loads(path.read_text())["events_per_second"] == result["events_per_second"]
    assert {p: p.read_text() for p in (bench.ROOT / "docs").glob("*.md")} == docs
    assert "time vs floor" in bench.summary(result)


def test_service_cpu_counts_a_postgresql_backend_that_has_exited(services: Any) -> None:
    """The per-service CPU counter: a backend that burns about half a second and exits (as the
    bench's workers' backends do before the phase is read) is still counted, through the
    postmaster's reaped-children time."""
    import psycopg

    roots = bench.service_roots(services)
    assert "postgres" in roots
    before = bench.service_cpu_seconds(roots)["postgres"]
    with psycopg.connect(services.database_url) as conn:
        conn.execute("SELECT count(*) FROM generate_series(1, 20000000)").fetchone()
    time.sleep(0.2)            # the postmaster reaps the backend
    spent = bench.service_cpu_seconds(roots)["postgres"] - before
    assert 0.2 < spent < 30
