"""Run the Pulumi program in-process under pulumi.runtime.set_mocks (no CLI, no Azure).

The infra tests import `dev` and `prod` (module-scoped fixtures: the whole program built once
per test module for that stack) and pick one with `stack_of` in tests parametrized by stack."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime.mocks import MockMonitor

from infra.bundle import Bundle

ROOT = Path(__file__).resolve().parent.parent
# the function's zip as the program receives it; under mocks its path is never read
BUNDLE = Bundle(path=Path("/nonexistent/function.zip"), sha256="0" * 64)
PG = "azure-native:dbforpostgresql"


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
        self.recording.explicit_dependencies[request.name] = {u.rsplit("::", 1)[-1] for u in request.dependencies}
        self.recording.replace_with[request.name] = {u.rsplit("::", 1)[-1] for u in request.replace_with}
        self.recording.ignore_changes[request.name] = list(request.ignoreChanges)
        self.recording.protect[request.name] = bool(request.protect)
        return super().RegisterResource(request)


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned token with these claims, shaped like the ARM token getClientToken returns."""
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.signature"


# the claims of a user's az-login ARM token (delegated: scp, upn) and of a service principal's (app-only)
USER_CLAIMS = {"aud": "https://management.azure.com/", "oid": "deployer-object-id", "scp": "user_impersonation",
               "idtyp": "user", "upn": "dana@contoso.example", "tid": "tenant-123"}
SERVICE_PRINCIPAL_CLAIMS = {"aud": "https://management.azure.com/", "oid": "sp-object-id", "idtyp": "app",
                            "appid": "00000000-1111-2222-3333-444444444444", "app_displayname": "txmetrics-ci",
                            "tid": "tenant-123"}


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self, subscription_id: str = "sub-123", token_claims: dict[str, Any] | None = None) -> None:
        self.resources: list[Registered] = []
        self.dependencies: dict[str, set[str]] = {}
        self.explicit_dependencies: dict[str, set[str]] = {}
        self.replace_with: dict[str, set[str]] = {}
        self.ignore_changes: dict[str, list[str]] = {}
        self.protect: dict[str, bool] = {}
        self.subscription_id = subscription_id
        self.token_claims = token_claims or USER_CLAIMS

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        outputs = dict(inputs)
        typ, name = args.typ, args.name
        short = (inputs.get("accountName") or inputs.get("name") or inputs.get("serverName") or inputs.get("actionGroupName")
                 or inputs.get("namespaceName") or inputs.get("privateZoneName") or name)
        if typ == "azure-native:storage:StorageAccount":
            outputs["primaryEndpoints"] = {"blob": f"https://{short}.blob.core.windows.net/",
                                           "table": f"https://{short}.table.core.windows.net/"}
        elif typ == "azure-native:dbforpostgresql:Server":
            outputs["fullyQualifiedDomainName"] = f"{short}.postgres.database.azure.com"
        elif typ == "azure-native:web:WebApp":
            # apps with unique default host names: `<app>-<hash>.<region>-01.azurewebsites.net`, with a regional
            # SCM host that Azure lists in hostNameSslStates as type Repository (what Endjin's tests stand in)
            host = f"{short}-a1b2c3d4e5f6g7h8.westeurope-01.azurewebsites.net"
            outputs["defaultHostName"] = host
            outputs["hostNameSslStates"] = [
                {"name": host, "hostType": "Standard", "sslState": "Disabled"},
                {"name": host.replace(".westeurope-01.", ".scm.westeurope-01."), "hostType": "Repository",
                 "sslState": "Disabled"}]
            identity = dict(inputs.get("identity") or {})
            identity["userAssignedIdentities"] = {i: {} for i in identity.get("userAssignedIdentities", [])}
            outputs["identity"] = identity
        elif typ == "azure-native:managedidentity:UserAssignedIdentity":
            outputs.update(clientId="client-id-of-" + name, principalId="9f3c2a10-7d4e-4b1a-8c2d-0e5f6a7b8c9d",
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
            outputs["app_role"] = "txm-dev-func-id-9f3c2a10"
        outputs.setdefault("name", short)
        rid = f"/subscriptions/{self.subscription_id}/resourceGroups/rg/providers/{typ}/{name}"
        self.resources.append(Registered(typ=typ, name=name, inputs=inputs, id=rid))
        return rid, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "azure-native:authorization:getClientConfig":
            return {"clientId": "deployer-client", "objectId": self.token_claims["oid"],
                    "subscriptionId": self.subscription_id, "tenantId": "tenant-123"}
        if args.token == "azure-native:authorization:getClientToken":
            return {"token": jwt(self.token_claims)}
        return {}

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> Registered:
        found = self.of_type(typ)
        assert len(found) == 1, (typ, [r.name for r in found])
        return found[0]


# what each deployer and team sets for themselves (`pulumi config set deployerIp ...`, `alertEmail ...`): a
# public address (the documentation ranges 192.0.2.0/24 etc. are refused like private ones; this one is IANA's
# example.com) and an on-call mailbox
DEPLOYER_CONFIG = {"txmetrics:deployerIp": "93.184.216.34", "txmetrics:alertEmail": "oncall@contoso.example"}


def stack_config(stack: str, overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    raw = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    merged: dict[str, str | None] = {**{k: str(v) for k, v in raw.items()}, **DEPLOYER_CONFIG, **(overrides or {})}
    return {k: v for k, v in merged.items() if v is not None}       # None in overrides: the key is unset


def run_program(stack: str, bundle: Any, overrides: dict[str, str | None] | None = None, *,
                subscription_id: str = "sub-123",
                token_claims: dict[str, Any] | None = None) -> tuple[RecordingMocks, dict[str, Any]]:
    """Build the whole program for `stack` under mocks; return the recorded resources and outputs."""
    mocks = RecordingMocks(subscription_id=subscription_id, token_claims=token_claims)
    pulumi.runtime.set_mocks(mocks, project="txmetrics", stack=stack, preview=False, monitor=RecordingMonitor(mocks))
    pulumi.runtime.set_all_config(stack_config(stack, overrides))
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


StackRun = tuple["RecordingMocks", dict[str, Any]]     # run_program's answer: the resources and the outputs


@pytest.fixture(scope="module")
def dev() -> StackRun:
    return run_program("dev", BUNDLE)


@pytest.fixture(scope="module")
def prod() -> StackRun:
    return run_program("prod", BUNDLE)


def stack_of(stack: str, dev: StackRun, prod: StackRun) -> StackRun:
    return dev if stack == "dev" else prod


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
