"""`make bench` on a small input: it measures what it says (every valid event through the
function, the same rows in the floor), and records its results where the docs expect them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localdev import bench
from localdev.synth import Generator
from txmetrics.core.catalog import load_catalog
from txmetrics.core.events import InboundEvent, PaymentEvent, parse_event
from txmetrics.core.metrics import extract_metrics
from txmetrics.settings import BUNDLED_CATALOG

EVENTS, PARTITIONS = 3000, 2


@pytest.fixture(scope="module")
def result() -> dict[str, object]:
    return bench.run(EVENTS, PARTITIONS, batch_size=500, naive_events=200, repeats=1)


def test_every_valid_event_goes_through_the_function(result: dict[str, object]) -> None:
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


def test_it_reports_the_figures_the_issue_asks_for(result: dict[str, object]) -> None:
    rounds = result["rounds"]
    assert isinstance(rounds, list) and len(rounds) == 1
    assert rounds[0]["seconds"] > 0 and rounds[0]["floor_seconds"] > 0
    assert result["ratio_to_floor"] == round(rounds[0]["ratio_to_floor"], 2)
    breakdown = result["time_breakdown_percent"]
    assert isinstance(breakdown, dict)
    assert {"converter_decode", "decode_validate", "parquet_encode", "upload", "metrics_write",
            "aggregate_append"} <= set(breakdown)
    assert abs(sum(breakdown.values()) - 100) < 1
    latency = result["batch_latency_ms"]
    assert isinstance(latency, dict) and 0 < latency["p50"] <= latency["p99"]
    assert 0 < result["peak_memory_mb_per_worker"] < 1024  # type: ignore[operator]
    assert result["parquet_bytes_per_event"] > 0 and result["postgres_bytes_per_event"] > 0  # type: ignore[operator]


def test_results_are_recorded_as_json_and_a_table_row(result: dict[str, object], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# B\n\n| when | a |\n|---|---|\n| old | row |\n")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench, "DOC", doc)
    path = bench.record(result)  # type: ignore[arg-type]
    assert json.loads(path.read_text())["events_per_second"] == result["events_per_second"]
    lines = doc.read_text().splitlines()
    assert lines[3] == "|---|---|" and lines[4].startswith(f"| {str(result['when'])[:16]} |") and lines[5] == "| old | row |"
