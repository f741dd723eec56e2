"""The command line against the real services: raw-event queries in every format, failed
items, maintenance, and the one error boundary (every domain error is one line on
stderr with exit code 2; --debug adds the traceback)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner, Result

from localdev.services import free_port
from txmetrics_cli.main import app

EVENT = {"transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m-1", "amount": "5.00",
         "currency": "USD", "payment_method": "card", "status": "approved", "processing_ms": 120}


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": None, **(env or {})})


def ok(*args: str, env: dict[str, str | None] | None = None) -> Result:
    result = invoke(*args, env=env)
    assert result.exit_code == 0, result.output
    return result


def refused(*args: str, env: dict[str, str | None] | None = None) -> str:
    """The command fails the documented way: exit code 2, one line on stderr, no traceback,
    nothing on stdout. Returns the line."""
    result = invoke(*args, env=env)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("txmetrics: error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    return lines[0]


@pytest.fixture
def three_events(env: dict[str, str], deliver: Callable[..., None]) -> dict[str, str]:
    deliver([{**EVENT, "event_id": "q1"}, {**EVENT, "event_id": "q2", "payment_method": "wallet", "amount": 7.25},
             {**EVENT, "event_id": "q3", "status": "nope"}], partition_id="0")
    return env


def test_query_formats_limit_and_event_id(three_events: dict[str, str], tmp_path: Path) -> None:
    container = ("--container", three_events["RAW_EVENTS_CONTAINER"])
    day = ("--start", "2026-03-01", "--end", "2026-03-02")
    as_json = ok("query", *day, "--format", "json", *container)
    rows = json.loads(as_json.stdout)        # one array of objects; numbers as numbers
    assert sorted(r["event_id"] for r in rows) == ["q1", "q2"]
    assert {r["event_id"]: r["amount"] for r in rows} == {"q1": 5, "q2": 7.25}
    assert all(isinstance(r["sequence_number"], int) for r in rows)
    assert "2 event(s) from 1 of 1 planned file(s)" in as_json.stderr

    as_csv = list(csv.DictReader(io.StringIO(ok("query", *day, "--format", "csv", *container).stdout)))
    assert sorted(r["event_id"] for r in as_csv) == ["q1", "q2"] and as_csv[0]["currency"] == "USD"
    lines = [json.loads(line) for line in ok("query", *day, "--format", "jsonl", *container).stdout.splitlines()]
    assert len(lines) == 2

    limited = ok("query", *day, "--format", "json", "--limit", "1", *container)
    assert len(json.loads(limited.stdout)) == 1 and "stopped at the limit of 1" in limited.stderr

    by_id = json.loads(ok("query", "--event-id", "q2", "--format", "json", *container).stdout)   # no time range
    assert [r["event_id"] for r in by_id] == ["q2"]
    assert "--start and --end missing" in refused("query", "--merchant", "m-1", *container)   # no range, no id
    no_container = refused("query", *day, "--container", "no-such-container")
    assert "the container does not exist" in no_container and "RAW_EVENTS_CONTAINER or --container" in no_container
    only_start = refused("query", "--start", "2026-03-01", *container)      # the option that is missing is named
    assert "'--end'" in only_start and "--end missing" in only_start and "'--start'" not in only_start

    target = tmp_path / "out.parquet"
    ok("query", *day, "--merchant", "m-1", "--format", "parquet", "--out", str(target), *container)
    assert pq.read_table(target).num_rows == 2
    nothing = tmp_path / "none.parquet"          # no event matches: a file with the columns and no rows
    ok("query", *day, "--merchant", "m-none", "--format", "parquet", "--out", str(nothing), *container)
    empty = pq.read_table(nothing)
    assert empty.num_rows == 0 and "event_id" in empty.column_names


def test_a_piped_table_keeps_its_header_and_never_wraps(env: dict[str, str], deliver: Callable[..., None]) -> None:
    long_merchant = "merchant-" + "x" * 150
    deliver([{**EVENT, "event_id": "w1", "merchant_id": long_merchant}], partition_id="0")
    out = ok("query", "--start", "2026-03-01", "--end", "2026-03-02", "--container",
             env["RAW_EVENTS_CONTAINER"]).stdout.splitlines()
    assert out[0].split() == ["occurred_at", "event_id", "merchant_id", "amount", "currency", "status",
                              "payment_method"]
    data = [line for line in out if "w1" in line]
    assert len(data) == 1 and long_merchant in data[0] and "card" in data[0]


def test_failed_items_list_show_fix_replay(three_events: dict[str, str], db: psycopg.Connection,
                                           tmp_path: Path) -> None:
    listed = json.loads(ok("failed", "list", "--format", "json").stdout)
    assert [r["error_code"] for r in listed] == ["invalid_status"]
    item_id = listed[0]["id"]
    assert isinstance(item_id, int) and listed[0]["replayed"] is False
    table = ok("failed", "list").stdout
    assert "invalid_status" in table and table.splitlines()[0].split()[:2] == ["id", "error_code"]
    shown = list(csv.DictReader(io.StringIO(ok("failed", "show", str(item_id), "--format", "csv").stdout)))
    assert len(shown) == 1 and shown[0]["error_code"] == "invalid_status" and '"q3"' in shown[0]["payload"]

    bad = tmp_path / "bad.json"
    bad.write_text('{"event_id": "q3", "status": ')
    assert "is not valid JSON" in refused("failed", "fix", str(item_id), "--payload-file", str(bad))
    assert db.execute("SELECT fixed_payload FROM failed_items").fetchone() == (None,)
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({**EVENT, "event_id": "q3", "status": "declined"}))
    ok("failed", "fix", str(item_id), "--payload-file", str(fixed))
    replayed = json.loads(ok("failed", "replay", str(item_id), "--format", "json").stdout)
    assert replayed == [{"id": item_id, "replayed": True, "note": "replayed"}]
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (3,)
    assert json.loads(ok("failed", "list", "--format", "json").stdout) == []
    assert len(json.loads(ok("failed", "list", "--all", "--format", "json").stdout)) == 1


def test_compact_and_rollup(three_events: dict[str, str], deliver: Callable[..., None]) -> None:
    deliver([{**EVENT, "event_id": "q4"}], partition_id="1")
    compacted = ok("compact", "--day", "2026-03-01", "--container", three_events["RAW_EVENTS_CONTAINER"])
    assert "2 file(s) -> 1 file(s), 3 rows" in compacted.stderr
    assert "rolled up" in ok("rollup", "--day", "2026-03-01").stderr
    # a day that is no date is refused with a date to write, not a time the option then refuses
    for wrong in ("2026-02-30", "2026-03-01T10:00"):
        message = refused("rollup", "--day", wrong)
        assert f"'{wrong}' is not a date: write e.g. 2026-03-01 (see" in message


# ------------------------------------------------------------------------------ the error boundary


def test_domain_errors_are_one_line_with_exit_code_2(env: dict[str, str], db: psycopg.Connection,
                                                      tmp_path: Path) -> None:
    assert "'2026-02-30' is not a date or time" in refused("kpi", "--metric", "approved", "--start", "2026-02-30",
                                                           "--end", "2026-03-02")
    assert "unknown metric 'foo'" in refused("kpi", "--metric", "foo", "--start", "2026-03-01", "--end", "2026-03-02")
    assert "no failed item 999" in refused("failed", "show", "999")
    assert "no failed item 999" in refused("failed", "replay", "999")
    assert "no failed item 998, 999" in refused("failed", "resolve", "998", "999")
    missing = tmp_path / "missing.json"
    assert "missing.json" in refused("failed", "fix", "1", "--payload-file", str(missing))
    assert "Missing option '--metric'" in refused("kpi", "--start", "2026-03-01", "--end", "2026-03-02")
    assert "No such command 'qeury'" in refused("qeury")


def test_an_unreachable_database_names_its_host_but_never_its_password(env: dict[str, str]) -> None:
    port = free_port()           # nothing listens there
    url = f"postgresql://reader:s3cret-pw@127.0.0.1:{port}/txmetrics"
    for args in (("failed", "list"), ("kpi", "--metric", "approved", "--start", "2026-03-01", "--end", "2026-03-02"),
                 ("retention", "apply", "--stack", "dev", "--dry-run")):
        line = refused(*args, env={"DATABASE_URL": url})
        assert f"cannot connect to PostgreSQL at reader@127.0.0.1:{port}/txmetrics" in line
        assert "s3cret" not in line


def test_unreachable_storage_names_its_endpoint_but_never_its_key(env: dict[str, str]) -> None:
    port = free_port()
    key = env["AZURE_STORAGE_CONNECTION_STRING"].split("AccountKey=")[1].split(";")[0]
    dead = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};" \
           f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    line = refused("lifecycle", "plan", "--stack", "dev", "--no-tables", env={"AZURE_STORAGE_CONNECTION_STRING": dead})
    assert f"Blob Storage at http://127.0.0.1:{port}/devstoreaccount1" in line and key not in line


def test_debug_shows_the_traceback(env: dict[str, str], db: psycopg.Connection) -> None:
    result = invoke("--debug", "failed", "show", "999")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "NotFoundError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("txmetrics: error: no failed item 999")
    assert "Traceback" in invoke("failed", "show", "999", env={"TXMETRICS_DEBUG": "1"}).stderr


def test_no_settings_and_no_local_services_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TXMETRICS_LOCAL_DIR", str(tmp_path))     # no `make up` here
    assert "make up" in refused("failed", "list")
    assert "make up" in refused("query", "--event-id", "x")
    assert "local services are not running" in refused("env")


def test_aggregates_fold_and_status(three_events: dict[str, str], db: psycopg.Connection) -> None:
    """The contract's `txmetrics aggregates fold`: after it, aggregate_histograms holds every
    committed event and no delta waits; `status` says how many wait before and after."""
    assert "delta(s) pending, the oldest committed" in ok("aggregates", "status").stderr
    before = db.execute("SELECT count(*) FROM aggregate_deltas").fetchone()
    assert before is not None and before[0] > 0
    assert f"folded {before[0]:,} delta(s)" in ok("aggregates", "fold").stderr
    assert db.execute("SELECT count(*) FROM aggregate_deltas").fetchone() == (0,)
    assert db.execute("SELECT count FROM aggregate_histograms WHERE metric_name = 'approved' AND dimensions = '{}'"
                      ).fetchone() == (2,)
    assert "no delta pending" in ok("aggregates", "status").stderr
    assert "folded 0 delta(s)" in ok("aggregates", "fold").stderr       # a second fold finds nothing
