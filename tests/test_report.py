"""The KPI report (`txmetrics report`, `txmetrics.report.build`), checked in a real headless
Chromium (Debian's package, started here through Playwright): it loads without a single
request and without a console error, every chart has data for a known corpus, and the
headline numbers equal what `txmetrics kpi` says for the same range. Chromium missing and
not installable is a failure with the reason, never a skip.

The corpus goes through the real function: valid events over a day in two partitions, bad
events (failed items) with Event Hubs enqueued times in the day, one of them fixed and
replayed, a fold in the middle so that the KPIs come from folded rows and pending deltas.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from localdev.browser import BrowserUnavailableError, PageCheck, ensure_chromium, inspect_page
from txmetrics import replay, report, runtime
from txmetrics.report import data as report_data
from txmetrics.report.data import Merchant, ReportData, choose_window, trend_window, worst_merchants
from txmetrics.report.svg import Series, nice_ticks, time_chart, time_ticks
from txmetrics_cli.main import app

DAY = datetime(2026, 3, 1, tzinfo=UTC)
START, END = "2026-03-01", "2026-03-02"
METHODS = ("card", "wallet", "bank_transfer")
STATUSES = ("approved", "approved", "approved", "approved", "declined", "failed", "pending")
# Every chart the report draws for a corpus with two currencies (one amount chart each).
EXPECTED_CHARTS = {"volume", "approval", "declines", "processing", "amount.USD", "amount.EUR", "merchants.top",
                   "merchants.worst", "failed", "failed.replayed", "lake.files", "lake.bytes"}


@pytest.fixture(scope="module")
def chromium() -> Path:
    try:
        return ensure_chromium()
    except BrowserUnavailableError as exc:
        pytest.fail(f"the report's browser test needs Chromium: {exc}")


def _valid(i: int, rng: random.Random) -> dict[str, Any]:
    occurred = DAY + timedelta(hours=1, seconds=i * 150)      # 01:00 .. about 18:00
    currency = "EUR" if i % 4 == 0 else "USD"
    return {"event_id": f"r{i}", "transaction_id": f"t{i}", "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
            "merchant_id": f"m-{i % 5}", "payment_method": METHODS[i % 3], "currency": currency,
            "amount": f"{rng.lognormvariate(3.5, 0.8):.2f}", "status": STATUSES[rng.randrange(len(STATUSES))],
            "processing_ms": int(rng.lognormvariate(5, 0.5))}


@pytest.fixture
def corpus(env: dict[str, str], deliver: Callable[..., None], db: psycopg.Connection) -> dict[str, int]:
    """400 valid events, 12 bad ones (one fixed and replayed), the last batch left as pending deltas."""
    rng = random.Random(16)
    valid = [_valid(i, rng) for i in range(400)]
    bad: list[Any] = []
    for j in range(12):
        event = {**_valid(j * 30, rng), "event_id": f"bad{j}", "transaction_id": f"tb{j}"}
        if j % 3 == 0:
            event["currency"] = "usd"                                   # invalid_currency
        elif j % 3 == 1:
            event["status"] = "maybe"                                   # invalid_status
        else:
            event = b'{"event_id": "broken", "amount": 12.3'            # body_not_json
        bad.append(event)
    bodies = valid[:300] + bad
    times = [DAY + timedelta(hours=1, seconds=i * 150, milliseconds=80) for i in range(300)] + \
            [DAY + timedelta(hours=2 + j) for j in range(12)]
    for p in ("0", "1"):
        part = [(b, t) for k, (b, t) in enumerate(zip(bodies, times, strict=True)) if k % 2 == int(p)]
        deliver([b for b, _ in part], partition_id=p, enqueued_times=[t for _, t in part])
    runtime.get_pipeline().store.fold_aggregates()
    deliver(valid[300:], partition_id="0", first_sequence=1000,
            enqueued_times=[DAY + timedelta(hours=1, seconds=i * 150) for i in range(300, 400)])
    item = db.execute("SELECT id FROM failed_items WHERE error_code = 'invalid_currency' ORDER BY id LIMIT 1"
                      ).fetchone()
    assert item is not None
    replay.set_field(db, item[0], "currency", "USD")
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item[0]])[0].replayed
    pending = db.execute("SELECT count(*) FROM aggregate_deltas").fetchone()
    assert pending is not None and pending[0] > 0           # some KPIs must come from pending deltas
    return {"valid": len(valid) + 1, "failed_items": len(bad), "replayed": 1}


def run_cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": None})
    return result


def kpi_json(*args: str) -> list[dict[str, Any]]:
    result = run_cli("kpi", "--start", START, "--end", END, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout, parse_float=Decimal)
    return rows


def expected_headlines() -> dict[str, Decimal]:
    """The headline numbers as `txmetrics kpi` prints them for the same range."""
    [total] = kpi_json("--metric", "approved")
    out = {"transactions": total["count"], "approved": total["true_count"], "approval_rate": total["rate"]}
    out |= {f"status.{r['status']}": r["count"] for r in kpi_json("--metric", "approved", "--by", "status")
            if r["status"] != "approved"}
    [proc] = kpi_json("--metric", "processing_ms")
    out |= {f"processing_ms.{q}": proc[q] for q in ("p50", "p95", "p99")}
    for row in kpi_json("--metric", "amount"):
        out[f"amount.sum.{row['currency']}"] = row["sum"]
        out[f"amount.count.{row['currency']}"] = row["count"]
    return {k: Decimal(str(v)) for k, v in out.items()}


@pytest.fixture
def written(corpus: dict[str, int], tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "nested" / "report.html"
    result = run_cli("report", "--start", START, "--end", END, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out.resolve())          # the path, on stdout
    yield out


# ------------------------------------------------------------------------------------- in the browser

def test_the_report_loads_offline_with_data_in_every_chart_and_the_headline_of_txmetrics_kpi(
        chromium: Path, written: Path, corpus: dict[str, int]) -> None:
    check = inspect_page(written)
    assert check.requests == [], f"the page asked the network for {check.requests}"
    assert check.console_errors == [], check.console_errors
    charts = {c["name"]: c for c in check.charts}
    assert set(charts) == EXPECTED_CHARTS
    for name, chart in charts.items():
        assert chart["svg"] == 1 and chart["points"] > 0 and chart["marks"] > 0, f"chart {name} shows no data: {chart}"
    # the headline numbers are the ones `txmetrics kpi` prints for the same range
    expected = expected_headlines()
    shown = {k: Decimal(v) for k, v in check.headlines.items() if k in expected}
    assert shown == expected
    # ... and they are right: every valid event once (the replayed one included), every bad one once
    assert expected["transactions"] == corpus["valid"]
    assert int(check.headlines["failed_items"]) == corpus["failed_items"]
    assert int(check.headlines["failed_items.replayed"]) == corpus["replayed"]
    assert int(check.headlines["raw_files"]) > 0 and int(check.headlines["raw_bytes"]) > 0
    # readable at 1280 px: nothing wider than the window; times said to be UTC; axes with units
    assert check.width <= 1280
    assert "all times UTC" in check.text and check.title.startswith("txmetrics KPI report")


def test_the_browser_check_sees_requests_and_console_errors(chromium: Path, written: Path, tmp_path: Path) -> None:
    """The checks above can fail: a remote image and a console error put into the report
    are seen (with the page's Content-Security-Policy, the browser refuses the image and
    says so on the console; without it, the request itself is recorded and aborted)."""
    html = written.read_text()
    hostile = tmp_path / "hostile.html"
    hostile.write_text(html.replace("</main>", '<img src="https://example.com/pixel.png"></main>'))
    refused = inspect_page(hostile)
    assert refused.requests or any("example.com" in e for e in refused.console_errors)
    open_page = tmp_path / "no-csp.html"
    open_page.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html).replace(
        "</main>", '<img src="https://example.com/pixel.png"><script>console.error("broken")</script></main>'))
    seen = inspect_page(open_page)
    assert seen.requests == ["https://example.com/pixel.png"]
    assert "broken" in seen.console_errors


def test_a_range_without_data_draws_empty_frames_the_check_tells_apart(chromium: Path, env: dict[str, str],
                                                                      db: psycopg.Connection, tmp_path: Path) -> None:
    out = tmp_path / "empty.html"
    result = run_cli("report", "--start", "2030-01-01", "--end", "2030-01-02", "--out", str(out))
    assert result.exit_code == 0, result.output
    check: PageCheck = inspect_page(out)
    assert check.requests == [] and check.console_errors == []
    assert check.charts and all(c["points"] == 0 and c["marks"] == 0 for c in check.charts)
    assert "no data in this range" in check.text
    assert check.headlines["transactions"] == "0"


# ------------------------------------------------------------------------------------- the Python API

def test_build_reads_the_same_numbers_as_kpi_query_in_one_snapshot(corpus: dict[str, int],
                                                                   db: psycopg.Connection) -> None:
    from txmetrics import kpi

    data = report_data.collect(db, start=DAY, end=DAY + timedelta(days=1))
    assert (data.window, data.trend) == ("5m", "1h")
    [total] = kpi.query(db, metric="approved", start=DAY, end=DAY + timedelta(days=1))
    assert data.headline.transactions == total.count == corpus["valid"]
    per_5m = kpi.query(db, metric="approved", start=DAY, end=DAY + timedelta(days=1), group_by=["payment_method"],
                       window="5m")
    assert {(r.dimensions["payment_method"], r.window_start): r.count for r in per_5m} == {
        (m, t): n for m, points in data.volume.items() for t, n in points.items()}
    assert sum(n for points in data.volume.values() for n in points.values()) == corpus["valid"]
    assert {c.error_code: c.items for c in data.failed_by_code} == {
        "invalid_currency": 4, "invalid_status": 4, "body_not_json": 4}
    assert sum(data.failed_replayed.values()) == 1
    html = report.build(db, start=DAY, end=DAY + timedelta(days=1), stack="dev")
    assert html.startswith("<!doctype html>") and "data-chart=\"volume\"" in html


def test_the_retention_outlook_comes_from_the_lifecycle_plan(corpus: dict[str, int], db: psycopg.Connection,
                                                            services: Any) -> None:
    from lifecycle.plan import make_plan
    from lifecycle.policy import load_policy
    from txmetrics.adapters.blob import service_client

    policy = load_policy("dev")
    service = service_client(services.storage_connection_string)
    now = datetime(2026, 3, 20, 12, tzinfo=UTC)          # the corpus' day partitions are past dev's 14 days by then
    outlook = report_data.retention_outlook(policy, conn=db, service=service, now=now)
    today = make_plan(policy, now, service=service, conn=db)
    assert [label for label, _ in outlook.horizons][0::3] == ["today", "by 2026-06-18 (+90 d)"]
    due_today = {(r.store, r.target, r.action): r.due[0][0] for r in outlook.rows}
    due_in_plan = [row for row in today.rows() if row["action"] != "none due"]
    assert due_in_plan, "the plan has nothing due today: the comparison below would check nothing"
    for row in due_in_plan:
        assert due_today[(row["store"], row["target"], row["action"])] == row["count"]
    assert due_today[("postgresql", "dynamic_metrics", "drop partitions")] >= 1
    # later horizons are cumulative: never less due than before
    for r in outlook.rows:
        counts = [n for n, _ in r.due]
        assert counts == sorted(counts), r


# ------------------------------------------------------------------------------------- the command line

def test_report_refuses_an_empty_range_and_an_unknown_stack_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    for args, words in ((["--start", END, "--end", START], "range is empty"),
                        (["--start", START, "--end", END, "--stack", "nope"], "unknown stack 'nope'"),
                        (["--start", START, "--end", "2026-04-01", "--window", "5m"], "8,928 points per chart"),
                        # inside a 5-minute window: every KPI section would come back empty
                        (["--start", "2026-03-01T10:02", "--end", END], "is inside a 5-minute window")):
        result = run_cli("report", *args, "--out", str(tmp_path / "r.html"))
        assert result.exit_code == 2, result.output
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output
    assert not (tmp_path / "r.html").exists()


def test_make_run_ends_with_the_report_of_what_it_ingested(services: Any, db: psycopg.Connection,
                                                           container_name: str, tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from localdev.run import RunConfig, run, write_report

    config = RunConfig(events=1500, partitions=2, batch_size=500, days=0.25)
    printed = io.StringIO()
    console = Console(file=printed, width=200)
    run(config, {**services.env(), "RAW_EVENTS_CONTAINER": container_name}, console=console)
    out = write_report(services.database_url, services.storage_connection_string, config, tmp_path / "r.html",
                       console)
    assert str(out) in printed.getvalue()
    html = out.read_text()
    valid = db.execute("SELECT count(*) FROM ingested_events").fetchone()
    assert valid is not None
    assert f'data-kpi="transactions" data-value="{valid[0]}"' in html


# ------------------------------------------------------------------------------------- pure parts

@pytest.mark.parametrize(("hours", "window", "trend"), [
    (2, "5m", "5m"), (12, "5m", "5m"), (13, "5m", "1h"), (24, "5m", "1h"), (25, "1h", "1h"), (7 * 24, "1h", "1h"),
    (7 * 24 + 1, "1d", "1d"), (30 * 24, "1d", "1d")])
def test_the_bucket_follows_the_range(hours: int, window: str, trend: str) -> None:
    end = DAY + timedelta(hours=hours)
    assert choose_window(DAY, end) == window
    assert trend_window(DAY, end, window) == trend


def test_worst_merchants_need_enough_transactions_unless_none_has_them() -> None:
    merchants = [Merchant("busy-bad", 100, 60), Merchant("tiny", 2, 0), Merchant("busy-good", 200, 190)]
    worst, threshold = worst_merchants(merchants, min_transactions=30)
    assert threshold == 30 and [m.merchant_id for m in worst] == ["busy-bad", "busy-good"]
    worst, threshold = worst_merchants([Merchant("a", 3, 1), Merchant("b", 2, 2)], min_transactions=30)
    assert threshold == 1 and [m.merchant_id for m in worst] == ["a", "b"]


def test_ticks_are_round_and_utc() -> None:
    assert nice_ticks(0, 87) == [0, 25, 50, 75, 100]
    assert nice_ticks(0, 1234) == [0, 500, 1000, 1500]
    assert nice_ticks(0.78, 0.96)[0] <= 0.78 and nice_ticks(0.78, 0.96)[-1] >= 0.96
    ticks = time_ticks(DAY, DAY + timedelta(days=1))
    assert all(t.tzinfo is not None and t.minute == 0 for t in ticks) and ticks[0] == DAY


def test_data_from_events_is_escaped_and_nothing_points_outside_the_page() -> None:
    hostile = '<img src="https://evil.example/x">'
    t = DAY + timedelta(hours=1)
    data = ReportData(start=DAY, end=DAY + timedelta(days=1), window="5m", trend="1h", generated_at=DAY,
                      volume={hostile: {t: 3}}, merchants=[Merchant(hostile, 40, 10)])
    html = report.render(data)
    assert hostile not in html and "&lt;img src=&quot;https://evil.example/x&quot;&gt;" in html
    # nothing that makes a browser fetch: no src/href/srcset/action attribute, no CSS url() or @import
    tags = " ".join(re.findall(r"<[^>]*>", html))
    assert not re.search(r"\s(?:src|href|xlink:href|srcset|action|poster)\s*=", tags, flags=re.I)
    assert not re.search(r"url\(|@import", html, flags=re.I)
    assert "<script" not in html and "Content-Security-Policy" in html


def test_a_chart_without_points_says_so() -> None:
    chart = time_chart("x", [Series("a", {})], start=DAY, end=DAY + timedelta(days=1), step=timedelta(minutes=5),
                       y_label="things")
    assert chart.points == 0 and 'class="mark"' not in chart.svg and "no data in this range" in chart.svg
    drawn = time_chart("x", [Series("a", {DAY: 2.0})], start=DAY, end=DAY + timedelta(days=1),
                       step=timedelta(minutes=5), y_label="things per 5 min")
    assert drawn.points == 1 and 'class="mark"' in drawn.svg and "things per 5 min" in drawn.svg


def test_without_chromium_the_reason_and_the_fix_are_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What `make test` and the browser test say on a machine where Chromium cannot be had
    (the test then fails with this message; it never skips)."""
    import os

    from localdev import browser

    monkeypatch.setenv(browser.CHROMIUM_VARIABLE, str(tmp_path / "missing"))
    with pytest.raises(BrowserUnavailableError, match="is not an executable file; install it: sudo apt-get install"):
        ensure_chromium()
    monkeypatch.delenv(browser.CHROMIUM_VARIABLE)
    monkeypatch.setattr(browser, "DEFAULT_CHROMIUM", tmp_path / "chromium")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(BrowserUnavailableError, match="not root, so it cannot be installed here"):
        ensure_chromium()
