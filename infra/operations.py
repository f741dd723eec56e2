"""Operations: the workbook an on-call engineer opens first, and the alerts that page them.

- Workbook (Azure Monitor, `Microsoft.Insights/workbooks`): its definition is the file
  `infra/workbooks/operations.json`, reviewed like code; `render_workbook` fills in this stack's
  resources (`{{workspace_id}}`, `{{function_app}}`, ...) and refuses a token it does not know or a
  value it did not use. Event figures come from the function's structured `batch {...}` log lines
  (Application Insights `AppTraces` in the Log Analytics workspace), platform figures from the
  `AzureMetrics` table the diagnostic settings fill (infra/monitoring.py).
- Alerts, all to one action group that mails `alertEmail`; thresholds from stack config
  (infra/config.py, `alert*` keys, with defaults):
  function failures (each one is retried) in 15 minutes; Event Hubs throttled requests;
  a partition's consumer lag above its threshold and growing for 15 minutes; PostgreSQL CPU or
  storage above 80%; no event received for `alertNoEventsMinutes` (prod: 30).
  Metric alerts use the platform metrics (`Microsoft.EventHub/namespaces` ThrottledRequests;
  `Microsoft.DBforPostgreSQL/flexibleServers` cpu_percent, storage_percent: Learn, "Supported
  metrics for Microsoft.DBforPostgreSQL/flexibleServers"); Event Hubs Standard has no consumer-lag
  metric, so lag comes from the function's log (`lag_s`: seconds from a batch's oldest enqueued
  event to its processing).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pulumi
from pulumi_azure_native import applicationinsights, monitor

from .config import Alerts, StackConfig

WORKBOOK_TEMPLATE = Path(__file__).resolve().parent / "workbooks" / "operations.json"
TOKEN = re.compile(r"\{\{(\w+)\}\}")


class WorkbookError(ValueError):
    pass


def render_workbook(values: dict[str, str], template: Path = WORKBOOK_TEMPLATE) -> str:
    """The workbook's serializedData: the template with every {{token}} replaced; an unknown token or an
    unused value is an error (a renamed placeholder must not ship a query against nothing)."""
    try:
        document = json.loads(template.read_text())
    except ValueError as exc:
        raise WorkbookError(f"{template}: not valid JSON ({exc}); fix the file") from None
    used: set[str] = set()

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            def one(m: re.Match[str]) -> str:
                if m.group(1) not in values:
                    raise WorkbookError(f"{template}: unknown placeholder {{{{{m.group(1)}}}}}; use one of "
                                        f"{', '.join(sorted(values))}")
                used.add(m.group(1))
                return values[m.group(1)]
            return TOKEN.sub(one, value)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    rendered = fill(document)
    unused = set(values) - used
    if unused:
        raise WorkbookError(f"{template}: placeholder(s) {', '.join(sorted(unused))} never used; remove them from the "
                            "program or use them in the workbook")
    return json.dumps(rendered, sort_keys=False)


def _kql(text: str, **values: str) -> str:
    return TOKEN.sub(lambda m: values[m.group(1)], text)


BATCH_LINES = ("AppTraces\n| where AppRoleName =~ '{{function_app}}' and Message startswith 'batch {'\n"
               "| extend b = parse_json(substring(Message, 6))\n")

FUNCTION_FAILURES = ("AppRequests\n| where AppRoleName =~ '{{function_app}}' and Name == 'ingest' and Success == false\n")

# rows (one per partition) whose lag is above the threshold all along the last 15 minutes and higher in the
# last 5 minutes than in the first 5: the consumer is behind and falling further behind
CONSUMER_LAG_GROWING = (BATCH_LINES + "| where TimeGenerated > ago(15m)\n"
                        "| extend partition = tostring(b.partition), lag_s = todouble(b.lag_s)\n"
                        "| where isnotnull(lag_s)\n"
                        "| summarize lowest = min(lag_s), first = avgif(lag_s, TimeGenerated < ago(10m)),\n"
                        "    last = avgif(lag_s, TimeGenerated > ago(5m)) by partition\n"
                        "| where lowest > {{threshold}} and isnotnull(first) and isnotnull(last) and last > first\n")

# one row when nothing was received in the window (also when no batch line came at all)
NO_EVENTS = ("let received = toscalar(" + BATCH_LINES.replace("\n", " ") +
             "| where TimeGenerated > ago({{minutes}}m) | summarize sum(toint(b.received)));\n"
             "print received = coalesce(received, 0)\n| where received == 0\n")


class Operations(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, resource_group: pulumi.Input[str],
                 workspace_id: pulumi.Input[str], function_app: pulumi.Input[str], hub: pulumi.Input[str],
                 eventhubs_namespace_id: pulumi.Input[str], postgres_server_id: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("txmetrics:infra:Operations", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        alerts: Alerts = cfg.alerts
        self.action_group = monitor.ActionGroup(
            f"{name}-oncall", action_group_name=f"{cfg.prefix}-oncall", resource_group_name=resource_group,
            location="global", enabled=True, group_short_name=f"txm{cfg.stack}"[:12],
            email_receivers=[monitor.MicrosoftCommonEmailReceiverArgs(name=f"oncall-{i}", email_address=address,
                                                                      use_common_alert_schema=True)
                             for i, address in enumerate(alerts.emails)],
            tags={"stack": cfg.stack}, opts=child)
        to_oncall = monitor.ActionsArgs(action_groups=[self.action_group.id])
        self.alerts: dict[str, pulumi.CustomResource] = {}

        def log_alert(label: str, description: str, query: pulumi.Input[str], window_minutes: int,
                      severity: int, frequency_minutes: int = 5) -> None:
            self.alerts[label] = monitor.ScheduledQueryRule(
                f"{name}-{label}", rule_name=f"{cfg.prefix}-{label}", resource_group_name=resource_group,
                location=cfg.location, kind="LogAlert", description=description, enabled=True,
                severity=severity, scopes=[workspace_id],
                evaluation_frequency=f"PT{min(frequency_minutes, window_minutes)}M", window_size=f"PT{window_minutes}M",
                criteria=monitor.ScheduledQueryRuleCriteriaArgs(all_of=[monitor.ConditionArgs(
                    query=query, time_aggregation="Count", operator="GreaterThan", threshold=0,
                    failing_periods=monitor.ConditionFailingPeriodsArgs(number_of_evaluation_periods=1,
                                                                        min_failing_periods_to_alert=1))]),
                actions=to_oncall, auto_mitigate=True, tags={"stack": cfg.stack}, opts=child)

        def metric_alert(label: str, description: str, scope: pulumi.Input[str], namespace: str, metric: str,
                         aggregation: str, threshold: int, window_minutes: int, severity: int) -> None:
            self.alerts[label] = monitor.MetricAlert(
                f"{name}-{label}", rule_name=f"{cfg.prefix}-{label}", resource_group_name=resource_group,
                location="global", description=description, enabled=True, severity=severity, scopes=[scope],
                evaluation_frequency="PT1M" if window_minutes <= 5 else "PT5M", window_size=f"PT{window_minutes}M",
                criteria=monitor.MetricAlertSingleResourceMultipleMetricCriteriaArgs(
                    odata_type="Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria",
                    all_of=[monitor.MetricCriteriaArgs(
                        criterion_type="StaticThresholdCriterion", name=metric, metric_name=metric,
                        metric_namespace=namespace, operator="GreaterThan", threshold=threshold,
                        time_aggregation=aggregation)]),
                actions=[monitor.MetricAlertActionArgs(action_group_id=self.action_group.id)], auto_mitigate=True,
                tags={"stack": cfg.stack}, opts=child)

        app = pulumi.Output.from_input(function_app)
        # a failure count above the threshold means the count must exceed it: the query returns the failures
        # themselves, so the rule counts rows and compares with the configured number
        self.alerts["function-failures"] = monitor.ScheduledQueryRule(
            f"{name}-function-failures", rule_name=f"{cfg.prefix}-function-failures",
            resource_group_name=resource_group, location=cfg.location, kind="LogAlert", enabled=True, severity=1,
            description=f"More than {alerts.function_failures} failed ingest invocations in 15 minutes (each is "
                        "retried; the partition waits meanwhile)",
            scopes=[workspace_id], evaluation_frequency="PT5M", window_size="PT15M",
            criteria=monitor.ScheduledQueryRuleCriteriaArgs(all_of=[monitor.ConditionArgs(
                query=app.apply(lambda a: _kql(FUNCTION_FAILURES, function_app=a)), time_aggregation="Count",
                operator="GreaterThan", threshold=alerts.function_failures,
                failing_periods=monitor.ConditionFailingPeriodsArgs(number_of_evaluation_periods=1,
                                                                    min_failing_periods_to_alert=1))]),
            actions=to_oncall, auto_mitigate=True, tags={"stack": cfg.stack}, opts=child)
        metric_alert("eventhubs-throttled", f"Event Hubs throttled more than {alerts.throttled_requests} requests in "
                     "5 minutes: raise throughput units (eventhubMaxThroughputUnits)", eventhubs_namespace_id,
                     "Microsoft.EventHub/namespaces", "ThrottledRequests", "Total", alerts.throttled_requests, 5, 2)
        log_alert("consumer-lag-growing", f"A partition's consumer lag is above {alerts.consumer_lag_seconds} s and "
                  "has grown for 15 minutes: the function falls behind",
                  app.apply(lambda a: _kql(CONSUMER_LAG_GROWING, function_app=a,
                                           threshold=str(alerts.consumer_lag_seconds))), 15, 2)
        metric_alert("postgres-cpu", f"PostgreSQL CPU above {alerts.postgres_cpu_percent}% (15-minute average)",
                     postgres_server_id, "Microsoft.DBforPostgreSQL/flexibleServers", "cpu_percent", "Average",
                     alerts.postgres_cpu_percent, 15, 2)
        metric_alert("postgres-storage", f"PostgreSQL storage above {alerts.postgres_storage_percent}% used "
                     "(auto-grow is on; check retention)", postgres_server_id,
                     "Microsoft.DBforPostgreSQL/flexibleServers", "storage_percent", "Average",
                     alerts.postgres_storage_percent, 30, 2)
        if alerts.no_events_minutes:
            log_alert("no-events", f"No event received for {alerts.no_events_minutes} minutes",
                      app.apply(lambda a: _kql(NO_EVENTS, function_app=a, minutes=str(alerts.no_events_minutes))),
                      alerts.no_events_minutes, 1)

        self.serialized = pulumi.Output.all(workspace_id, app, hub, eventhubs_namespace_id, postgres_server_id).apply(
            lambda a: render_workbook({"workspace_id": a[0], "function_app": a[1], "hub": a[2],
                                       "eventhubs_namespace_id": a[3], "postgres_server_id": a[4],
                                       "stack": cfg.stack}))
        self.workbook = applicationinsights.Workbook(
            f"{name}-workbook",
            # a workbook's name must be a GUID; a fixed one per project and stack keeps updates in place
            resource_name_=str(uuid.uuid5(uuid.NAMESPACE_URL, f"txmetrics:{cfg.project}/{cfg.stack}/operations")),
            resource_group_name=resource_group, location=cfg.location, kind="shared", category="workbook",
            display_name=f"txmetrics operations ({cfg.stack})", serialized_data=self.serialized,
            source_id=workspace_id, tags={"stack": cfg.stack}, opts=child)
        self.register_outputs({"workbook": self.workbook.name, "action_group": self.action_group.name})
