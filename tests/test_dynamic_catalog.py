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
from txmetrics.core.catalog import parse_catalog_text
from txmetrics.core.events import InboundEvent, PaymentEvent, Rejection, parse_event
from txmetrics.settings import BUNDLED_CATALOG

_BASE = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m", "amount": 1,
         "currency": "USD", "payment_method": "card", "status": "approved"}


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


def test_a_metric_source_holding_a_card_number_refuses_the_event_visibly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ingest_fn: Callable[..., None],
        db: psycopg.Connection) -> None:
    """A value metric on epoch milliseconds: 1 in 10 such numbers pass Luhn, and masking turned
    them into strings, so the event was stored without its row and nothing said so (an audit).
    Now it is refused, as a card number in amount is, and its replay waits for the value to be
    set; a masked string elsewhere in the event, or in a source no metric reads, refuses nothing."""
    from txmetrics import replay, runtime

    catalog = yaml.safe_load(BUNDLED_CATALOG.read_text())
    catalog["metrics"].append({"name": "settled_ms", "kind": "value", "source": "attributes.settled_ms"})
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    runtime.reset()
    base = _BASE
    bodies = [json.dumps({**base, "event_id": "ms-0", "attributes": {"settled_ms": 1772366400123}}),
              json.dumps({**base, "event_id": "ms-1", "attributes": {"settled_ms": 1772366400128}}),   # passes Luhn
              json.dumps({**base, "event_id": "ms-2", "attributes": {"settled_ms": "1772366400128"}}),
              json.dumps({**base, "event_id": "ms-3", "attributes": {"settled_ms": 5, "ref": 1772366400128}}),
              json.dumps({**base, "event_id": "ms-4", "attributes": {"settled_ms": "at 1772366400128"}})]
    ingest_fn(make_batch(bodies, partition_id="0"))
    assert db.execute("SELECT event_id, value FROM dynamic_metrics WHERE metric_name = 'settled_ms' "
                      "ORDER BY 1").fetchall() == [("ms-0", 1772366400123.0), ("ms-3", 5.0)]
    assert db.execute("SELECT event_id FROM dynamic_metrics WHERE metric_name = 'approved' ORDER BY 1").fetchall() \
        == [("ms-0",), ("ms-3",), ("ms-4",)]          # ms-4's source is text, no number: no row, as before
    failed = db.execute("SELECT event_id, error_code, detail, payload, id FROM failed_items ORDER BY 1").fetchall()
    assert [(f[0], f[1]) for f in failed] == [("ms-1", "card_number_in_metric_source"),
                                            ("ms-2", "card_number_in_metric_source")]
    assert "'attributes.settled_ms', the source of metric 'settled_ms'" in failed[0][2]
    assert all("1772366400128" not in f[3] for f in failed)
    pipeline = runtime.get_pipeline()
    (waiting,) = replay.replay(db, pipeline, item_ids=[failed[0][4]])
    assert not waiting.replayed and "attributes.settled_ms held a card number" in waiting.note
    # an edit of another field is no fix of the source: replayed, the event would have no row (a review)
    replay.set_field(db, failed[0][4], "attributes.note", "checked")
    (still,) = replay.replay(db, pipeline, item_ids=[failed[0][4]])
    assert not still.replayed and "attributes.settled_ms held a card number" in still.note
    replay.set_field(db, failed[0][4], "attributes.settled_ms", 1772366400)
    (done,) = replay.replay(db, pipeline, item_ids=[failed[0][4]])
    assert done.replayed, done
    assert db.execute("SELECT value FROM dynamic_metrics WHERE event_id = 'ms-1' AND metric_name = 'settled_ms'"
                      ).fetchone() == (1772366400.0,)


def _with_settled_ms() -> str:
    catalog = yaml.safe_load(BUNDLED_CATALOG.read_text())
    catalog["metrics"].append({"name": "settled_ms", "kind": "value", "source": "attributes.settled_ms"})
    return yaml.safe_dump(catalog)


@pytest.mark.parametrize("sent", [1772366400128, "1772366400128", -1772366400128, 4111111.111111111e9,
                                  "4111111111111111e0", "4111111.111111111e9", "00004111111111111111",
                                  "+4111111111111111", " 4111111111111111.25 ", "4111111111111111E-5",
                                  "-4111111111111111e-5"])
def test_a_metric_source_whose_number_is_a_card_number_is_refused(sent: object) -> None:
    """Masking leaves some of these as they are (a number with an exponent, a leading plus
    or zeros in a string), and the metric would read the card's digits into
    dynamic_metrics.value exactly; the others it masks, and the event would lose its row.
    Judged by the exact value's integer part, as amount is (a review)."""
    catalog = parse_catalog_text(_with_settled_ms())
    body = json.dumps({**_BASE, "event_id": "e", "attributes": {"settled_ms": sent}}).encode()
    parsed = parse_event(InboundEvent(body=body, partition_id="0", sequence_number=1),
                         masked_check=catalog.masked_source_problem)
    assert isinstance(parsed, Rejection) and parsed.error_code == "card_number_in_metric_source", parsed


@pytest.mark.parametrize("sent", [1772366400123, "1772366400123", 4111111111111.5, "12.5", None, "n/a", True,
                                  {"v": 4111111111111111}, [4111111111111111]])
def test_a_metric_source_that_is_no_card_number_is_taken(sent: object) -> None:
    catalog = parse_catalog_text(_with_settled_ms())
    body = json.dumps({**_BASE, "event_id": "e", "attributes": {"settled_ms": sent}}).encode()
    parsed = parse_event(InboundEvent(body=body, partition_id="0", sequence_number=1),
                         masked_check=catalog.masked_source_problem)
    assert isinstance(parsed, PaymentEvent), parsed


def test_a_fixed_item_replays_though_another_metrics_source_holds_ordinary_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ingest_fn: Callable[..., None],
        db: psycopg.Connection) -> None:
    """The replay guard asks every card-checked metric's source, not the one the refusal named:
    an event whose other metric's source holds ordinary text ("n/a": ingest takes such an
    event, without that metric's row) waits for ever once its masked source is fixed (a review)."""
    from txmetrics import replay, runtime

    catalog = yaml.safe_load(BUNDLED_CATALOG.read_text())
    catalog["metrics"].append({"name": "settled_ms", "kind": "value", "source": "attributes.settled_ms"})
    catalog["metrics"].append({"name": "fee_minor", "kind": "value", "source": "attributes.fee_minor"})
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    runtime.reset()
    bodies = [json.dumps({**_BASE, "event_id": "ok-0", "attributes": {"settled_ms": 5, "fee_minor": "n/a"}}),
              json.dumps({**_BASE, "event_id": "ms-1", "attributes": {"settled_ms": 1772366400128,
                                                                       "fee_minor": "n/a"}})]
    ingest_fn(make_batch(bodies, partition_id="0"))
    assert db.execute("SELECT count(*) FROM dynamic_metrics WHERE event_id = 'ok-0'").fetchone()[0] > 0
    ((item_id,),) = db.execute("SELECT id FROM failed_items WHERE error_code = 'card_number_in_metric_source'"
                               ).fetchall()
    replay.set_field(db, item_id, "attributes.settled_ms", 1772366400)
    (done,) = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])
    assert done.replayed, done
