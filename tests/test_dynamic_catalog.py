"""Dynamic metrics: a catalog file change adds a metric without a code change; a bad
catalog is refused at start-up with file, key and reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import yaml

from localdev.eventhub import make_batch
from tests.helpers import ROOT
from txmetrics.settings import BUNDLED_CATALOG


def test_a_new_metric_from_the_catalog_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            ingest_fn: Callable[..., None], db: psycopg.Connection) -> None:
    catalog = yaml.safe_load(BUNDLED_CATALOG.read_text())
    catalog["metrics"].append({"name": "risk_score", "kind": "value", "source": "attributes.risk_score"})
    catalog["metrics"].append({"name": "high_risk", "kind": "flag", "when": {"field": "attributes.band",
                                                                            "equals": "high"}})
    catalog["dimension_sets"].append(["attributes.channel"])
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    base = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": 1,
            "currency": "USD", "payment_method": "card", "status": "approved"}
    bodies = [json.dumps({**base, "event_id": "r1", "attributes": {"risk_score": 0.25, "channel": "web", "band": "high"}}),
              json.dumps({**base, "event_id": "r2", "attributes": {"risk_score": "0.75", "channel": "app"}}),
              json.dumps({**base, "event_id": "r3"})]
    ingest_fn(make_batch(bodies, partition_id="0"))
    assert db.execute("SELECT event_id, value FROM dynamic_metrics WHERE metric_name = 'risk_score' "
                      "ORDER BY 1").fetchall() == [("r1", 0.25), ("r2", 0.75)]
    assert db.execute("SELECT event_id, value FROM dynamic_metrics WHERE metric_name = 'high_risk' "
                      "ORDER BY 1").fetchall() == [("r1", 1.0), ("r2", 0.0), ("r3", 0.0)]
    assert db.execute("SELECT dimensions FROM dynamic_metrics_wide WHERE event_id = 'r1' AND metric_name = 'risk_score'"
                      ).fetchone() == ({"attributes.channel": "web"},)
    assert db.execute("SELECT count, sum, min, max FROM aggregate_histograms_current WHERE metric_name = 'risk_score' "
                      "AND dimensions = '{}'").fetchone() == (2, 1, 0.25, 0.75)
    by_channel = db.execute("SELECT dimensions, count FROM aggregate_histograms_current WHERE metric_name = 'risk_score' "
                            "AND dimensions ? 'attributes.channel' ORDER BY 1").fetchall()
    assert by_channel == [({"attributes.channel": "app"}, 1), ({"attributes.channel": "web"}, 1)]


def test_a_bad_catalog_is_refused_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("metrics:\n  - name: amount\n    kind: valu\n    source: amount\n")
    env = {**os.environ, "METRIC_CATALOG": str(path)}
    result = subprocess.run([sys.executable, "-c", "import function_app"], cwd=ROOT / "functions", env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{path}: metrics[0].kind: 'valu' is not a metric kind; fix: use one of value, flag" in result.stderr


def test_the_bundled_catalog_loads_at_start_up() -> None:
    env = {k: v for k, v in os.environ.items() if k != "METRIC_CATALOG"}
    result = subprocess.run([sys.executable, "-c", "import function_app; print(len(function_app.app.get_functions()))"],
                            cwd=ROOT / "functions", env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # ingest, the minute fold of aggregate deltas, and the daily retention and maintenance timers
    assert result.stdout.strip() == "4"
