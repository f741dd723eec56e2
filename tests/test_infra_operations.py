"""Issue 16, section 2: the operations workbook and the alerts `pulumi up` deploys, under Pulumi's
mocks for dev and prod (present, querying this stack's resources, mailing the configured address,
thresholds from config), the workbook file's rendering, and the function's batch log line carrying
every field the workbook and the alerts read (checked against a real run of the function)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra.operations import (
    BATCH_LINES,
    CONSUMER_LAG_GROWING,
    NO_EVENTS,
    WORKBOOK_TEMPLATE,
    WorkbookError,
    render_workbook,
)
from localdev.eventhub import make_batch
from tests import infra_mocks
from tests.infra_mocks import BUNDLE, PG, RecordingMocks, run_program, stack_of

dev, prod = infra_mocks.dev, infra_mocks.prod     # fixtures: each stack's program under mocks, once per module

def workbook_items(mocks: RecordingMocks) -> list[dict[str, Any]]:
    document = json.loads(mocks.one("azure-native:applicationinsights:Workbook").inputs["serializedData"])
    assert document["version"] == "Notebook/1.0"
    items: list[dict[str, Any]] = document["items"]
    return items


def queries(mocks: RecordingMocks) -> dict[str, str]:
    return {i["name"]: i["content"]["query"] for i in workbook_items(mocks) if i["type"] == 3}


def alerts(mocks: RecordingMocks) -> dict[str, Any]:
    return {r.name.removeprefix("operations-"): r for r in mocks.resources
            if r.typ in ("azure-native:monitor:MetricAlert", "azure-native:monitor:ScheduledQueryRule")}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_workbook_alerts_and_action_group_are_present(stack: str, dev: Any, prod: Any) -> None:
    mocks, _ = stack_of(stack, dev, prod)
    assert mocks.one("azure-native:applicationinsights:Workbook").inputs["kind"] == "shared"
    mocks.one("azure-native:monitor:ActionGroup")
    expected = {"function-failures", "eventhubs-throttled", "consumer-lag-growing", "postgres-cpu", "postgres-storage"}
    assert set(alerts(mocks)) == (expected | {"no-events"} if stack == "prod" else expected)
    assert all(a.inputs["enabled"] is True for a in alerts(mocks).values())


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_workbook_shows_what_the_issue_asks(stack: str, dev: Any, prod: Any) -> None:
    mocks, _ = stack_of(stack, dev, prod)
    q = queries(mocks)
    events = q["events-per-minute"]
    for field in ("received", "new", "duplicates", "failed"):
        assert f"{field} = sum(toint(b.{field}))" in events
    assert "bin(TimeGenerated, 1m)" in events
    assert all(f"percentile(duration_ms, {p})" in q["batch-duration"] for p in (50, 95, 99))
    assert "by bin(TimeGenerated, 1m), partition" in q["consumer-lag"]
    for metric in ("IncomingMessages", "OutgoingMessages", "ThrottledRequests"):
        assert f"'{metric}'" in q["eventhubs-messages"]
    assert "'cpu_percent'" in q["postgres-percent"] and "'storage_percent'" in q["postgres-percent"]
    assert "'active_connections'" in q["postgres-connections"]
    assert "b.failed_by_code" in q["failed-items-by-code"] and "by bin(TimeGenerated, 5m), code" in \
        q["failed-items-by-code"]
    time_range = next(i for i in workbook_items(mocks) if i["type"] == 9)["content"]["parameters"][0]
    assert time_range["name"] == "TimeRange" and time_range["type"] == 4
    assert all(i["content"]["timeContextFromParameter"] == "TimeRange" for i in workbook_items(mocks) if i["type"] == 3)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_query_refers_to_this_stacks_resources(stack: str, dev: Any, prod: Any) -> None:
    mocks, _ = stack_of(stack, dev, prod)
    workspace = mocks.one("azure-native:operationalinsights:Workspace").id
    app = mocks.one("azure-native:web:WebApp").inputs["name"]
    namespace = mocks.one("azure-native:eventhub:Namespace").id
    server = mocks.one(f"{PG}:Server").id
    wb = mocks.one("azure-native:applicationinsights:Workbook").inputs
    assert wb["sourceId"] == workspace and "{{" not in wb["serializedData"]
    for item in workbook_items(mocks):
        if item["type"] != 3:
            continue
        content, query = item["content"], item["content"]["query"]
        assert content["crossComponentResources"] == [workspace], item["name"]
        assert content["resourceType"] == "microsoft.operationalinsights/workspaces"
        if query.startswith(("AppTraces", "AppRequests")):
            assert f"AppRoleName =~ '{app}'" in query, item["name"]
        elif query.startswith("AzureMetrics"):
            assert f"ResourceId =~ '{namespace}'" in query or f"ResourceId =~ '{server}'" in query, item["name"]
        else:
            pytest.fail(f"{item['name']}: a query on an unexpected table")
    a = alerts(mocks)
    for label in ("function-failures", "consumer-lag-growing") + (("no-events",) if stack == "prod" else ()):
        assert a[label].inputs["scopes"] == [workspace]
        assert f"AppRoleName =~ '{app}'" in a[label].inputs["criteria"]["allOf"][0]["query"]
    assert a["eventhubs-throttled"].inputs["scopes"] == [namespace]
    assert a["postgres-cpu"].inputs["scopes"] == a["postgres-storage"].inputs["scopes"] == [server]
    group = mocks.one("azure-native:monitor:ActionGroup").id
    for alert in a.values():
        actions = alert.inputs["actions"]
        ids = actions["actionGroups"] if isinstance(actions, dict) else [x["actionGroupId"] for x in actions]
        assert ids == [group], alert.name


def test_the_action_group_mails_the_configured_addresses() -> None:
    mocks, _ = run_program("dev", BUNDLE, {"txmetrics:alertEmail": "payments-oncall@contoso.example, "
                                                                  "dba@contoso.example"})
    receivers = mocks.one("azure-native:monitor:ActionGroup").inputs["emailReceivers"]
    assert [r["emailAddress"] for r in receivers] == ["payments-oncall@contoso.example", "dba@contoso.example"]
    assert all(r["useCommonAlertSchema"] is True for r in receivers)


def criterion(alert: Any) -> dict[str, Any]:
    first: dict[str, Any] = alert.inputs["criteria"]["allOf"][0]
    return first


def test_default_thresholds(dev: Any, prod: Any) -> None:
    a = alerts(dev[0])
    assert criterion(a["function-failures"])["threshold"] == 5
    assert criterion(a["eventhubs-throttled"])["threshold"] == 0
    assert criterion(a["postgres-cpu"])["threshold"] == criterion(a["postgres-storage"])["threshold"] == 80
    assert criterion(a["postgres-cpu"])["metricName"] == "cpu_percent"
    assert criterion(a["postgres-storage"])["metricName"] == "storage_percent"
    assert "lowest > 300" in criterion(a["consumer-lag-growing"])["query"]
    assert a["consumer-lag-growing"].inputs["windowSize"] == "PT15M"
    no_events = alerts(prod[0])["no-events"]
    assert no_events.inputs["windowSize"] == "PT30M" and "ago(30m)" in criterion(no_events)["query"]


def test_thresholds_come_from_stack_config() -> None:
    mocks, _ = run_program("dev", BUNDLE, {
        "txmetrics:alertFunctionFailures": "12", "txmetrics:alertThrottledRequests": "3",
        "txmetrics:alertConsumerLagSeconds": "900", "txmetrics:alertPostgresCpuPercent": "70",
        "txmetrics:alertPostgresStoragePercent": "90", "txmetrics:alertNoEventsMinutes": "60"})
    a = alerts(mocks)
    assert criterion(a["function-failures"])["threshold"] == 12
    assert criterion(a["eventhubs-throttled"])["threshold"] == 3
    assert "lowest > 900" in criterion(a["consumer-lag-growing"])["query"]
    assert criterion(a["postgres-cpu"])["threshold"] == 70
    assert criterion(a["postgres-storage"])["threshold"] == 90
    assert a["no-events"].inputs["windowSize"] == "PT60M" and "ago(60m)" in criterion(a["no-events"])["query"]
    assert "More than 12 failed ingest invocations" in a["function-failures"].inputs["description"]


@pytest.mark.parametrize("overrides, message", [
    ({"txmetrics:alertEmail": None}, "txmetrics:alertEmail is not set"),
    ({"txmetrics:alertEmail": "oncall"}, "txmetrics:alertEmail: 'oncall' is not an email address"),
    ({"txmetrics:alertNoEventsMinutes": "20"}, "txmetrics:alertNoEventsMinutes = 20 is not a window"),
    # the fix offered for a window no alert accepts is one this setting accepts: not 5 or 10 (a review)
    ({"txmetrics:alertNoEventsMinutes": "20"}, "set 0 (off) or one of 15, 30, 45"),
    ({"txmetrics:alertNoEventsMinutes": "10"}, "txmetrics:alertNoEventsMinutes = 10 is shorter than 15 minutes"),
    ({"txmetrics:alertNoEventsMinutes": "5"}, "set 0 (off) or one of 15, 30, 45"),
    ({"txmetrics:alertPostgresCpuPercent": "120"}, "txmetrics:alertPostgresCpuPercent = 120 is out of range 1-100"),
])
def test_a_wrong_alert_setting_fails_the_preview_with_the_fix(overrides: dict[str, str | None], message: str) -> None:
    with pytest.raises(Exception) as err:
        run_program("dev", BUNDLE, overrides)
    assert message in str(err.value)


# ------------------------------------------------------------------ the workbook file and its rendering

VALUES = {"workspace_id": "/w", "function_app": "app", "hub": "h", "eventhubs_namespace_id": "/ns",
          "postgres_server_id": "/pg", "stack": "dev"}


def test_the_workbook_file_renders_with_every_placeholder_used() -> None:
    rendered = render_workbook(VALUES)
    assert "{{" not in rendered
    assert re.findall(r"\{\{(\w+)\}\}", WORKBOOK_TEMPLATE.read_text()), "the template should have placeholders"


def test_an_unknown_or_unused_placeholder_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "wb.json"
    template.write_text(json.dumps({"version": "Notebook/1.0", "items": [{"q": "{{workspace}}"}]}))
    with pytest.raises(WorkbookError, match=r"unknown placeholder \{\{workspace\}\}"):
        render_workbook(VALUES, template)
    template.write_text(json.dumps({"version": "Notebook/1.0", "items": [{"q": "{{workspace_id}}"}]}))
    with pytest.raises(WorkbookError, match=r"function_app, .* never used"):
        render_workbook(VALUES, template)


# ------------------------------------------------------------------ the log line the queries read

def fields_read(query: str) -> set[str]:
    return set(re.findall(r"\bb\.(\w+)", query))


def test_every_field_the_workbook_and_alerts_read_is_in_the_functions_batch_line(
        ingest_fn: Callable[[list[Any]], None]) -> None:
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("batch "):
                records.append(record.getMessage())

    handler = Capture()
    log = logging.getLogger("txmetrics.ingest")
    log.addHandler(handler)
    previous = log.level
    log.setLevel(logging.INFO)
    try:
        tag = uuid.uuid4().hex
        good = {"event_id": f"ops-{tag}", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z",
                "merchant_id": "m", "amount": "1.00", "currency": "USD", "payment_method": "card",
                "status": "approved"}
        bad = {**good, "event_id": f"ops-bad-{tag}", "currency": "usd"}
        enqueued = datetime.now(UTC) - timedelta(seconds=120)
        ingest_fn(make_batch([good, bad], partition_id="7", first_sequence=1000, enqueued_at=enqueued))
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
    (line,) = records
    # what the workbook and alerts parse: `parse_json(substring(Message, 6))`
    batch = json.loads(line[6:])
    read = set()
    for query in [*queries(run_program("dev", BUNDLE)[0]).values(), BATCH_LINES, CONSUMER_LAG_GROWING, NO_EVENTS]:
        read |= fields_read(query)
    assert read >= {"received", "new", "duplicates", "failed", "duration_ms", "lag_s", "partition",
                    "failed_by_code"}
    assert read <= set(batch), read - set(batch)
    assert (batch["received"], batch["new"], batch["failed"], batch["partition"]) == (2, 1, 1, "7")
    assert sum(batch["failed_by_code"].values()) == 1
    assert 119 <= batch["lag_s"] < 180 and batch["duration_ms"] > 0


LOG_LEVELS = ("Trace", "Debug", "Information", "Warning", "Error", "Critical", "None")


def effective_log_level(host_json: dict[str, Any], category: str) -> str:
    """The host's level for a log category: the longest configured prefix of it wins, else `default`
    (Learn, "Configure monitoring for Azure Functions": "the more defined logs ones are matched first")."""
    levels = (host_json.get("logging") or {}).get("logLevel") or {}
    matches = [k for k in levels if k != "default" and (category == k or category.startswith(k + "."))]
    return str(levels[max(matches, key=len)] if matches else levels.get("default", "Information"))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_host_logs_what_the_workbook_and_alerts_read(stack: str, dev: Any, prod: Any) -> None:
    """AppRequests rows come from the host's `Host.Results` category, all written at Information: with
    `Host.Results: Error` only failed executions reach the table (Learn, "Configure monitoring for Azure
    Functions", Configure categories and the CAUTION under Configure log levels). The workbook's
    "Ingest invocations and failures" tile counts every AppRequests row as an invocation: it would show
    invocations == failures, and nothing at all while the function is healthy. The batch line is a user log
    (`Function.ingest.User`, AppTraces) at Information: the lag alert, the no-events alert and most tiles
    read it."""
    mocks, _ = stack_of(stack, dev, prod)
    host_json = json.loads((infra_mocks.ROOT / "functions" / "host.json").read_text())
    read = list(queries(mocks).values()) + [a.inputs["criteria"]["allOf"][0]["query"] for a in alerts(mocks).values()
                                            if a.typ == "azure-native:monitor:ScheduledQueryRule"]
    needs = {"AppRequests": "Host.Results", "AppTraces": "Function.ingest.User"}
    for table, category in needs.items():
        assert any(q.lstrip().startswith(table) or f"toscalar({table}" in q for q in read), table
        level = effective_log_level(host_json, category)
        assert LOG_LEVELS.index(level) <= LOG_LEVELS.index("Information"), (category, level)
