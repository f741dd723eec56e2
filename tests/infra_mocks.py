"""Run the Pulumi program in-process under pulumi.runtime.set_mocks (no CLI, no Azure)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime.mocks import MockMonitor

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]
    id: str
    deps: list[str] = field(default_factory=list)


class RecordingMonitor(MockMonitor):
    """Also records each resource's dependencies (explicit depends_on and input dependencies)."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResource(self, request: Any) -> Any:
        deps = {u.rsplit("::", 1)[-1] for u in request.dependencies}
        for prop in request.propertyDependencies.values():
            deps |= {u.rsplit("::", 1)[-1] for u in prop.urns}
        self.recording.dependencies[request.name] = deps
        return super().RegisterResource(request)


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Registered] = []
        self.dependencies: dict[str, set[str]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        outputs = dict(inputs)
        typ, name = args.typ, args.name
        short = inputs.get("accountName") or inputs.get("name") or inputs.get("serverName") or name
        if typ == "azure-native:storage:StorageAccount":
            outputs["primaryEndpoints"] = {"blob": f"https://{short}.blob.core.windows.net/"}
        elif typ == "azure-native:dbforpostgresql:Server":
            outputs["fullyQualifiedDomainName"] = f"{short}.postgres.database.azure.com"
        elif typ == "azure-native:web:WebApp":
            outputs["defaultHostName"] = f"{short}.azurewebsites.net"
            identity = dict(inputs.get("identity") or {})
            identity["userAssignedIdentities"] = {i: {} for i in identity.get("userAssignedIdentities", [])}
            outputs["identity"] = identity
        elif typ == "azure-native:managedidentity:UserAssignedIdentity":
            outputs.update(clientId="client-id-of-" + name, principalId="principal-of-" + name,
                           name=inputs.get("resourceName", name))
        elif typ == "azure-native:applicationinsights:Component":
            outputs["connectionString"] = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=x"
        elif typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = "generated-Secret-Password-123"
        elif typ == "azure-native:eventhub:EventHub":
            outputs["name"] = inputs.get("eventHubName", name)
        elif typ == "azure-native:eventhub:ConsumerGroup":
            outputs["name"] = inputs.get("consumerGroupName", name)
        elif typ == "pulumi-python:dynamic:Resource" and "digest" in inputs:
            outputs["applied"] = ["0001.core-tables"]
        outputs.setdefault("name", short)
        rid = f"/subscriptions/sub-123/resourceGroups/rg/providers/{typ}/{name}"
        self.resources.append(Registered(typ=typ, name=name, inputs=inputs, id=rid))
        return rid, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "azure-native:authorization:getClientConfig":
            return {"clientId": "deployer-client", "objectId": "deployer-object-id", "subscriptionId": "sub-123",
                    "tenantId": "tenant-123"}
        return {}

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> Registered:
        found = self.of_type(typ)
        assert len(found) == 1, (typ, [r.name for r in found])
        return found[0]


def stack_config(stack: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    raw = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {**{k: str(v) for k, v in raw.items()}, **(overrides or {})}


def run_program(stack: str, bundle: Any, overrides: dict[str, str] | None = None) -> tuple[RecordingMocks, dict[str, Any]]:
    """Build the whole program for `stack` under mocks; return the recorded resources and outputs."""
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="txmetrics", stack=stack, preview=False, monitor=RecordingMonitor(mocks))
    pulumi.runtime.set_all_config(stack_config(stack, overrides), secret_keys=["txmetrics:postgresAdminPassword"])
    from infra import config
    from infra.program import build

    resolved: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        result = build(config.load(), bundle)
        outs = result["outputs"]
        keys = list(outs)

        def keep(values: list[Any]) -> None:
            resolved.update(dict(zip(keys, values, strict=True)))

        resolved["_raw"] = outs
        settings = result["app"].app_settings
        resolved["_raw_settings"] = settings
        return pulumi.Output.all(*outs.values()).apply(keep).apply(lambda _: pulumi.Output.all(
            **{k: pulumi.Output.from_input(v) for k, v in settings.items()})).apply(
            lambda s: resolved.update(_settings=s))

    program()
    from pulumi.runtime.sync_await import _sync_await

    resolved["_secret"] = {k: bool(_sync_await(pulumi.Output.from_input(v).is_secret()))
                           for k, v in resolved["_raw"].items()}
    resolved["_secret_settings"] = {k: bool(_sync_await(pulumi.Output.from_input(v).is_secret()))
                                    for k, v in resolved["_raw_settings"].items()}
    return mocks, resolved


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
