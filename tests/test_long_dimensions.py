"""A catalog dimension read from the event has no length limit, and a slice's `dimensions` can
outgrow what a B-tree entry holds (about 2.7 KB). aggregate_histograms was unique on the jsonb
itself: one event with a 3,000-character `attributes.channel` was accepted and its delta could
never be folded ("index row requires 9072 bytes"), so every later fold failed, for every event
of every partition (an audit, round 18). Migration 0019 keys the table on a hash of
`dimensions`."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from localdev.eventhub import make_batch
from txmetrics import runtime
from txmetrics_cli.main import app

BASE = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": "5.00",
        "currency": "USD", "payment_method": "card", "status": "approved"}


def test_a_long_catalog_dimension_value_is_folded_and_read(ingest_fn: Callable[..., None], db: psycopg.Connection,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = {"version": 1, "window_seconds": [300], "dimension_sets": [[], ["attributes.channel"]],
               "metrics": [{"name": "approved", "kind": "flag", "when": {"field": "status", "equals": "approved"}}]}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    runtime.reset()
    rnd = random.Random(1)
    channel = "".join(chr(rnd.randrange(0x4E00, 0x9FFF)) for _ in range(3000))      # 9 KB of UTF-8
    events = [{"event_id": "long", **BASE, "attributes": {"channel": channel}},
              {"event_id": "short", **BASE, "attributes": {"channel": "web"}}]
    ingest_fn(make_batch(events))
    assert db.execute("SELECT txm_fold_aggregates()").fetchone() == (3,)   # deltas: all-up, 2 channels
    ingest_fn(make_batch([{**e, "event_id": e["event_id"] + "-2"} for e in events], first_sequence=2))
    ingest_fn(make_batch(events))                                         # a redelivery: nothing new
    db.execute("SELECT txm_fold_aggregates()")
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (0,)
    rows = dict(db.execute("SELECT dimensions ->> 'attributes.channel', count FROM aggregate_histograms").fetchall())
    assert rows == {None: 4, channel: 2, "web": 2}                        # one row per slice, merged
    result = CliRunner().invoke(app, ["kpi", "--metric", "approved", "--start", "2026-03-01", "--end", "2026-03-02",
                                      "--by", "attributes.channel", "--format", "json"], env={"COLUMNS": None})
    assert result.exit_code == 0, result.output

    assert {r["attributes.channel"]: r["count"] for r in json.loads(result.stdout)} == {channel: 2, "web": 2}


def test_the_key_tells_slices_apart_as_the_jsonb_did(db: psycopg.Connection) -> None:
    """Equal slices are one row, different ones two (the unique index on the hash refuses the
    second insert of an equal slice, also written with other spacing and key order)."""
    insert = ("INSERT INTO aggregate_histograms (metric_name, window_seconds, window_start, dimensions, count, sum, min, "
              "max, zero_count, scale) VALUES ('m', 300, '2026-03-01T10:00:00Z', %s::jsonb, 1, 1, 1, 1, 0, 1)")
    db.execute(insert, ('{"a":"x","b":1}',))
    db.execute(insert, ('{"a":"y","b":1}',))
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(insert, ('{ "b": 1,  "a": "x" }',))
