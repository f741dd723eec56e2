"""Monitoring: a Log Analytics workspace, workspace-based Application Insights for the app,
and diagnostic settings sending Event Hubs, Blob Storage and PostgreSQL logs and metrics there."""

from __future__ import annotations

import pulumi
from pulumi_azure_native import applicationinsights, monitor, operationalinsights

from .config import StackConfig


class Monitoring(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, resource_group: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("txmetrics:infra:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.resource_group = resource_group
        self.workspace = operationalinsights.Workspace(
            f"{name}-logs", resource_group_name=resource_group, location=cfg.location,
            sku=operationalinsights.WorkspaceSkuArgs(name="PerGB2018"),
            retention_in_days=30 if cfg.stack != "prod" else 90, tags={"stack": cfg.stack}, opts=child)
        self.app_insights = applicationinsights.Component(
            f"{name}-appinsights", resource_group_name=resource_group, location=cfg.location, kind="web",
            application_type="web", workspace_resource_id=self.workspace.id,
            disable_local_auth=True,            # telemetry authenticated with the app's identity
            tags={"stack": cfg.stack}, opts=child)
        self.diagnostics: list[monitor.DiagnosticSetting] = []
        self.register_outputs({"workspace": self.workspace.name, "app_insights": self.app_insights.name})

    def send_diagnostics(self, name: str, resource_uri: pulumi.Input[str], *, logs: bool = True,
                         metrics: str = "AllMetrics") -> None:
        """All logs (category group allLogs) and the metrics of `metrics`, a metric category
        of the resource, to the workspace."""
        self.diagnostics.append(monitor.DiagnosticSetting(
            f"diag-{name}", name="txmetrics", resource_uri=resource_uri, workspace_id=self.workspace.id,
            logs=[monitor.DiagnosticsLogSettingsArgs(category_group="allLogs", enabled=True)] if logs else None,
            metrics=[monitor.DiagnosticsMetricSettingsArgs(category=metrics, enabled=True)],
            opts=pulumi.ResourceOptions(parent=self)))
