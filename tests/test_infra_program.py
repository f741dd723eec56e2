"""The Pulumi program under Pulumi's in-process mocks, for dev and prod: resources, wiring,
dependency order, security, lifecycle policy, differences between environments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.bundle import Bundle
from lifecycle.policy import load_policy, render_management_policy
from tests.infra_mocks import RecordingMocks, dumps, run_program

BUNDLE = Bundle(path=Path("/nonexistent/function.zip"), sha256="0" * 64)


@pytest.fixture(scope="module")
def dev() -> tuple[RecordingMocks, dict[str, Any]]:
    return run_program("dev", BUNDLE)


@pytest.fixture(scope="module")
def prod() -> tuple[RecordingMocks, dict[str, Any]]:
    return run_program("prod", BUNDLE)


EXPECTED_TYPES = {
    "azure-native:resources:ResourceGroup": 1,
    "azure-native:eventhub:Namespace": 1, "azure-native:eventhub:EventHub": 1, "azure-native:eventhub:ConsumerGroup": 1,
    "azure-native:storage:StorageAccount": 2, "azure-native:storage:BlobContainer": 2,
    "azure-native:storage:ManagementPolicy": 1,
    "azure-native:dbforpostgresql:Server": 1, "azure-native:dbforpostgresql:Database": 1,
    "azure-native:dbforpostgresql:Administrator": 1,
    "azure-native:managedidentity:UserAssignedIdentity": 1, "azure-native:web:AppServicePlan": 1,
    "azure-native:web:WebApp": 1, "azure-native:authorization:RoleAssignment": 5,
    "azure-native:operationalinsights:Workspace": 1, "azure-native:applicationinsights:Component": 1,
    "azure-native:monitor:DiagnosticSetting": 4, "pulumi-python:dynamic:Resource": 2,
}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_every_resource_is_present(stack: str, dev: Any, prod: Any) -> None:
    mocks, _ = dev if stack == "dev" else prod
    for typ, count in EXPECTED_TYPES.items():
        assert len(mocks.of_type(typ)) == count, typ
    assert len(mocks.of_type("azure-native:dbforpostgresql:FirewallRule")) >= 1


def test_dependency_order_migrations_before_code(dev: Any) -> None:
    mocks, _ = dev
    deps = mocks.dependencies
    assert {"schema", "function-app"} <= deps["code"]
    assert {"function-read-hub", "function-write-raw-events", "function-read-deployments"} <= deps["code"]
    assert {"postgres-db", "postgres-server", "postgres-azure-services", "postgres-entra-admin",
            "postgres-require-secure-transport"} <= deps["schema"]
    order = [r.name for r in mocks.resources]
    assert order.index("schema") < order.index("code")


def test_settings_reference_the_right_hub_container_and_server(dev: Any) -> None:
    mocks, out = dev
    s = out["_settings"]
    assert s["EVENTHUB_NAME"] == "transactions" == out["eventHub"]
    assert s["EVENTHUB_CONSUMER_GROUP"] == "txmetrics" == out["consumerGroup"]
    assert s["EventHubConnection__fullyQualifiedNamespace"] == out["eventHubsNamespace"]
    assert s["RAW_EVENTS_CONTAINER"] == "raw-events"
    assert s["AZURE_STORAGE_ACCOUNT_URL"] == f"https://{out['storageAccount']}.blob.core.windows.net/"
    assert s["DATABASE_URL"] == (f"postgresql://{out['functionIdentity']}@{out['postgresHost']}:5432/txmetrics"
                                 "?sslmode=require")
    assert s["DATABASE_AUTH"] == "entra"
    assert s["AZURE_CLIENT_ID"] == s["EventHubConnection__clientId"] == s["AzureWebJobsStorage__clientId"]
    app = mocks.one("azure-native:web:WebApp").inputs
    storage = app["functionAppConfig"]["deployment"]["storage"]
    assert storage["value"].endswith(".blob.core.windows.net/deployments")
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert app["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert app["kind"] == "functionapp,linux"
    plan = mocks.one("azure-native:web:AppServicePlan").inputs
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    roles = {r.name: r.inputs for r in mocks.of_type("azure-native:authorization:RoleAssignment")}
    hub = mocks.one("azure-native:eventhub:EventHub")
    raw = next(r for r in mocks.of_type("azure-native:storage:BlobContainer") if r.inputs["containerName"] == "raw-events")
    assert roles["function-read-hub"]["scope"] == hub.id
    assert roles["function-read-hub"]["roleDefinitionId"].endswith("a638d3c7-ab3a-418d-83e6-5f17a39d4fde")
    assert roles["function-write-raw-events"]["scope"] == raw.id
    assert roles["function-write-raw-events"]["roleDefinitionId"].endswith("ba92f5b4-2d11-453d-a403-e96b0029c9fe")
    assert all(r["principalType"] == "ServicePrincipal" for r in roles.values())


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_security(stack: str, dev: Any, prod: Any) -> None:
    mocks, out = dev if stack == "dev" else prod
    for account in mocks.of_type("azure-native:storage:StorageAccount"):
        a = account.inputs
        assert a["allowBlobPublicAccess"] is False and a["minimumTlsVersion"] == "TLS1_2"
        assert a["allowSharedKeyAccess"] is False and a["enableHttpsTrafficOnly"] is True
    assert all(c.inputs["publicAccess"] == "None" for c in mocks.of_type("azure-native:storage:BlobContainer"))
    ns = mocks.one("azure-native:eventhub:Namespace").inputs
    assert ns["disableLocalAuth"] is True and ns["minimumTlsVersion"] == "1.2"
    app = mocks.one("azure-native:web:WebApp").inputs
    assert app["httpsOnly"] is True and app["siteConfig"]["minTlsVersion"] == "1.2"
    assert app["siteConfig"]["ftpsState"] == "Disabled"
    pg_settings = {c.inputs["configurationName"]: c.inputs["value"]
                   for c in mocks.of_type("azure-native:dbforpostgresql:Configuration")}
    assert pg_settings == {"require_secure_transport": "on", "ssl_min_protocol_version": "TLSv1.2"}
    server = mocks.one("azure-native:dbforpostgresql:Server").inputs
    assert server["authConfig"]["activeDirectoryAuth"] == "Enabled"
    settings_text = dumps(out["_settings"]).lower()
    for forbidden in ("accountkey=", "sharedaccesskey", "password", out["postgresAdminPassword"].lower()):
        assert forbidden not in settings_text
    assert out["_secret"]["postgresAdminPassword"] is True
    plain = {k: v for k, v in out.items() if not k.startswith("_") and not out["_secret"][k]}
    assert out["postgresAdminPassword"] not in dumps(plain)
    assert mocks.one("azure-native:applicationinsights:Component").inputs["disableLocalAuth"] is True


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_lifecycle_policy_is_rendered_from_lifecycle_files(stack: str, dev: Any, prod: Any) -> None:
    mocks, _ = dev if stack == "dev" else prod
    policy = mocks.one("azure-native:storage:ManagementPolicy").inputs
    assert policy["managementPolicyName"] == "default"
    assert policy["policy"] == render_management_policy(load_policy(stack))
    rule = next(r for r in policy["policy"]["rules"] if r["name"] == "raw-events-tiering")
    assert rule["definition"]["filters"]["prefixMatch"] == ["raw-events/raw_events/"]
    assert rule["definition"]["actions"]["baseBlob"]["tierToArchive"] == {"daysAfterModificationGreaterThan": 90}


def test_differences_between_environments(dev: Any, prod: Any) -> None:
    (d, dout), (p, pout) = dev, prod

    def inputs(mocks: RecordingMocks, typ: str) -> dict[str, Any]:
        return mocks.one(typ).inputs

    assert inputs(d, "azure-native:eventhub:EventHub")["partitionCount"] == 4
    assert inputs(p, "azure-native:eventhub:EventHub")["partitionCount"] == 32
    assert inputs(d, "azure-native:eventhub:Namespace")["isAutoInflateEnabled"] is False
    assert inputs(p, "azure-native:eventhub:Namespace")["maximumThroughputUnits"] == 40
    dserver, pserver = inputs(d, "azure-native:dbforpostgresql:Server"), inputs(p, "azure-native:dbforpostgresql:Server")
    assert dserver["highAvailability"]["mode"] == "Disabled" and pserver["highAvailability"]["mode"] == "ZoneRedundant"
    assert dserver["sku"] == {"name": "Standard_B1ms", "tier": "Burstable"}
    assert pserver["sku"] == {"name": "Standard_D4ds_v5", "tier": "GeneralPurpose"}
    assert pserver["backup"] == {"backupRetentionDays": 35, "geoRedundantBackup": "Enabled"}
    assert dserver["storage"]["autoGrow"] == pserver["storage"]["autoGrow"] == "Enabled"
    assert int(dserver["version"]) >= 16
    data = lambda m: next(a.inputs for a in m.of_type("azure-native:storage:StorageAccount")  # noqa: E731
                          if a.inputs["accountName"].endswith("data"))
    assert data(d)["sku"] == {"name": "Standard_LRS"} and data(p)["sku"] == {"name": "Standard_RAGRS"}
    dapp = inputs(d, "azure-native:web:WebApp")["functionAppConfig"]["scaleAndConcurrency"]
    papp = inputs(p, "azure-native:web:WebApp")["functionAppConfig"]["scaleAndConcurrency"]
    assert (dapp["instanceMemoryMB"], papp["instanceMemoryMB"]) == (2048, 4096)
    assert dout["_settings"]["TXMETRICS_RETENTION"] != pout["_settings"]["TXMETRICS_RETENTION"]


@pytest.mark.parametrize("key, value, message", [
    ("txmetrics:eventhubPartitions", "64", "txmetrics:eventhubPartitions = 64 is out of range 1-32"),
    ("txmetrics:postgresVersion", "13", "txmetrics:postgresVersion = '13' is not supported; set 16, 17 or 18"),
    ("txmetrics:postgresSku", "B1ms", "txmetrics:postgresSku = 'B1ms' is not a Flexible Server SKU"),
    ("txmetrics:postgresHighAvailability", "yes", "is not true or false"),
    ("txmetrics:deployerIp", "my-laptop", "txmetrics:deployerIp = 'my-laptop' is not an IPv4 address"),
    ("txmetrics:functionInstanceMemoryMb", "3000", "set 2048 or 4096"),
    ("txmetrics:eventhubMaxThroughputUnits", "1", None),
])
def test_a_wrong_config_key_fails_with_its_name_and_the_fix(key: str, value: str, message: str | None) -> None:
    overrides = {key: value}
    if message is None:   # max below base TUs
        overrides["txmetrics:eventhubThroughputUnits"] = "2"
        message = "txmetrics:eventhubMaxThroughputUnits = 1 is below eventhubThroughputUnits = 2"
    with pytest.raises(Exception) as err:
        run_program("dev", BUNDLE, overrides)
    assert message in str(err.value)
