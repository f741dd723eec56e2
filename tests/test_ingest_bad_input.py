"""Bad input, generated (hypothesis) and mixed into valid batches: the function never
crashes, received = processed + failed, each bad event in failed_items exactly once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localdev.eventhub import make_batch
from tests.conftest import DATA_TABLES


def valid_event(tag: str) -> dict[str, Any]:
    return {"event_id": f"ok-{tag}-{uuid.uuid4().hex}", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z",
            "merchant_id": "m", "amount": "1.00", "currency": "USD", "payment_method": "card", "status": "approved"}


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=10)
FIELDS = ["event_id", "transaction_id", "occurred_at", "merchant_id", "amount", "currency", "payment_method",
          "status", "processing_ms", "country", "card", "attributes"]

# (body, expected error code or None when any code will do)
mutated = st.tuples(st.sampled_from(FIELDS), json_values).filter(
    lambda fv: not (fv[0] in ("processing_ms", "country", "card", "attributes") and fv[1] is None)).map(
    lambda fv: ("mutated", fv))
missing = st.sampled_from(FIELDS[:8]).map(lambda f: ("missing", f))
raw_bytes = st.binary(max_size=60).map(lambda b: ("bytes", b))
non_object = json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: ("non_object", v))
bad_specs = st.lists(st.one_of(mutated, missing, raw_bytes, non_object), min_size=1, max_size=8)


def build(spec: tuple[str, Any], i: int) -> bytes:
    kind, arg = spec
    if kind == "bytes":
        return arg  # type: ignore[no-any-return]
    if kind == "non_object":
        return json.dumps(arg).encode()
    event = valid_event(f"bad{i}")
    if kind == "missing":
        event.pop(arg)
    else:
        field, value = arg
        event[field] = value
    return json.dumps(event).encode()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(specs=bad_specs, n_valid=st.integers(min_value=0, max_value=5), data=st.data())
def test_bad_events_never_stop_a_batch(ingest_fn: Callable[[list[Any]], None], db: psycopg.Connection,
                                       specs: list[tuple[str, Any]], n_valid: int, data: st.DataObject) -> None:
    # hypothesis reuses the function's fixtures across examples, and replays an example (same
    # generated event_id) while shrinking: start each example from an empty ledger, or a
    # replayed valid event is rightly a duplicate and neither processed nor failed
    db.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
    partition = f"hyp-{uuid.uuid4().hex[:12]}"
    bodies = [build(s, i) for i, s in enumerate(specs)] + [json.dumps(valid_event(str(i))).encode()
                                                          for i in range(n_valid)]
    order = data.draw(st.permutations(range(len(bodies))))
    batch = [bodies[i] for i in order]
    ingest_fn(make_batch(batch, partition_id=partition, first_sequence=1))
    processed = db.execute("SELECT count(*) FROM ingested_events e JOIN raw_files f ON f.id = e.raw_file_id "
                           "WHERE f.partition_id = %s", (partition,)).fetchone()[0]
    failed = db.execute("SELECT sequence_number, error_code FROM failed_items WHERE partition_id = %s "
                        "ORDER BY sequence_number", (partition,)).fetchall()
    assert processed + len(failed) == len(batch)
    assert processed >= n_valid
    assert len({seq for seq, _ in failed}) == len(failed)
    for _seq, code in failed:
        assert code.startswith(("body_", "missing_", "invalid_")), code
    # the same batch again adds nothing
    ingest_fn(make_batch(batch, partition_id=partition, first_sequence=1))
    assert db.execute("SELECT count(*) FROM failed_items WHERE partition_id = %s", (partition,)).fetchone()[0] == len(
        failed)
    assert db.execute("SELECT count(*) FROM ingested_events e JOIN raw_files f ON f.id = e.raw_file_id "
                      "WHERE f.partition_id = %s", (partition,)).fetchone()[0] == processed


def test_known_bad_events_get_their_codes(deliver: Callable[..., None], db: psycopg.Connection) -> None:
    good = valid_event("x")
    bodies = [json.dumps(good).encode(), b"\xc3\x28", b"null", json.dumps({**good, "event_id": "b1", "amount": -1}),
              json.dumps({**good, "event_id": "b2", "occurred_at": "2026-03-01 10:00:00"}),
              json.dumps({**good, "event_id": "b3", "status": "APPROVED"}), b"x" * (1024 * 1024 + 1)]
    deliver(bodies, partition_id="9", first_sequence=0)
    assert db.execute("SELECT sequence_number, error_code, event_id FROM failed_items ORDER BY 1").fetchall() == [
        (1, "body_not_utf8", None), (2, "body_not_object", None), (3, "invalid_amount", "b1"),
        (4, "invalid_occurred_at", "b2"), (5, "invalid_status", "b3"), (6, "body_too_large", None)]
    detail = db.execute("SELECT detail, payload_truncated, length(payload) FROM failed_items "
                        "WHERE sequence_number = 6").fetchone()
    assert "1048577 bytes" in detail[0] and detail[1] is True and detail[2] <= 64 * 1024
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (1,)
