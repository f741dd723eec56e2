"""The Function App on Flex Consumption (Python 3.11) with a user-assigned identity,
identity-based connections only, the contract's settings, and least-privilege roles:
read its hub, write raw events, own its host storage (blobs, and tables for the host's
diagnostic events), publish telemetry. Private stacks join the VNet (Flex VNet integration)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
from pulumi_azure_native import authorization, managedidentity, web

from txmetrics.core.naming import RAW_EVENTS_CONTAINER

from . import roles
from .config import StackConfig
from .database import DATABASE_NAME, Database
from .eventhubs import EventHubs
from .monitoring import Monitoring
from .providers import app_role_name
from .storage import DEPLOYMENT_CONTAINER, Storage


def scm_host(host_name_ssl_states: Sequence[Any] | None) -> str:
    """The app's SCM (Kudu) host, as Azure reports it: the hostNameSslStates entry of type Repository.
    Apps with unique default host names (`<app>-<hash>.<region>-01.azurewebsites.net`) have a regional
    SCM host (`<app>-<hash>.scm.<region>-01.azurewebsites.net`) that no string replacement on the default
    host name produces (Endjin's Publish-FlexConsumptionFunctionApp reads it the same way)."""
    for state in host_name_ssl_states or []:
        kind = getattr(state, "host_type", None) or (state.get("hostType") if isinstance(state, dict) else None)
        name = getattr(state, "name", None) or (state.get("name") if isinstance(state, dict) else None)
        if str(kind).lower() == "repository" and name:
            return str(name)
    raise RuntimeError("the Function App reports no SCM host (no hostNameSslStates entry of type Repository); "
                       "check the app in the portal (Deployment Center) and run pulumi up again")


class FunctionApp(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, resource_group: pulumi.Input[str],
                 subscription_id: pulumi.Input[str], app_name: pulumi.Input[str], hubs: EventHubs, store: Storage,
                 db: Database, monitoring: Monitoring, retention_setting: str,
                 subnet_id: pulumi.Input[str] | None = None, app_depends_on: list[pulumi.Resource] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("txmetrics:infra:FunctionApp", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity", resource_name_=f"{cfg.prefix}-func-id", resource_group_name=resource_group,
            location=cfg.location, opts=child)
        self.plan = web.AppServicePlan(
            f"{name}-plan", resource_group_name=resource_group, location=cfg.location, kind="functionapp",
            reserved=True, sku=web.SkuDescriptionArgs(name="FC1", tier="FlexConsumption"), opts=child)
        client_id = self.identity.client_id
        self.db_role = pulumi.Output.all(self.identity.name, self.identity.principal_id).apply(
            lambda a: app_role_name(a[0], a[1]))
        deployment_url = store.runtime_blob_endpoint.apply(lambda e: f"{e}{DEPLOYMENT_CONTAINER}")
        settings: dict[str, pulumi.Input[str]] = {
            # Functions host state: identity-based, in the host account
            "AzureWebJobsStorage__accountName": store.runtime_account.name,
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": client_id,
            # Event Hubs trigger: identity-based
            "EventHubConnection__fullyQualifiedNamespace": hubs.fully_qualified_namespace,
            "EventHubConnection__credential": "managedidentity",
            "EventHubConnection__clientId": client_id,
            "EVENTHUB_NAME": hubs.hub.name,
            "EVENTHUB_CONSUMER_GROUP": hubs.consumer_group.name,
            # Contract section 2, deployed form: no passwords, no keys; the role is the identity's Entra principal
            "DATABASE_URL": pulumi.Output.all(self.db_role, db.host).apply(
                lambda a: f"postgresql://{a[0]}@{a[1]}:5432/{DATABASE_NAME}?sslmode=require"),
            "DATABASE_AUTH": "entra",
            "AZURE_CLIENT_ID": client_id,
            "AZURE_STORAGE_ACCOUNT_URL": store.blob_endpoint,
            "RAW_EVENTS_CONTAINER": RAW_EVENTS_CONTAINER,
            "TXMETRICS_RETENTION": retention_setting,
            "APPLICATIONINSIGHTS_CONNECTION_STRING": monitoring.app_insights.connection_string,
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": client_id.apply(
                lambda c: f"ClientId={c};Authorization=AAD"),
        }
        self.app_settings = settings
        self.app = web.WebApp(
            f"{name}-app", name=app_name, resource_group_name=resource_group, location=cfg.location,
            kind="functionapp,linux", server_farm_id=self.plan.id, https_only=True,
            identity=web.ManagedServiceIdentityArgs(type=web.ManagedServiceIdentityType.USER_ASSIGNED,
                                                    user_assigned_identities=[self.identity.id]),
            function_app_config=web.FunctionAppConfigArgs(
                deployment=web.FunctionsDeploymentArgs(storage=web.FunctionsDeploymentStorageArgs(
                    type="blobContainer", value=deployment_url,
                    authentication=web.FunctionsDeploymentStorageAuthenticationArgs(
                        type="UserAssignedIdentity", user_assigned_identity_resource_id=self.identity.id))),
                runtime=web.FunctionsRuntimeArgs(name="python", version="3.11"),
                scale_and_concurrency=web.FunctionsScaleAndConcurrencyArgs(
                    instance_memory_mb=cfg.function_instance_memory_mb,
                    maximum_instance_count=cfg.function_maximum_instances)),
            # Flex VNet integration: outbound traffic to storage, Event Hubs and PostgreSQL through the VNet
            virtual_network_subnet_id=subnet_id,
            # A dict, not web.SiteConfigArgs: the SDK's class adds netFrameworkVersion "v4.6" to
            # every site config, which Flex Consumption refuses with 400 (ExtendedCode 51021,
            # "...for Flex Consumption sites is invalid"), as it refuses ftpsState (Flex has no
            # FTP; One Deploy only): pulumi/pulumi-azure-native#4168,
            # microsoft/azure-pipelines-tasks#21032 (West Europe), Learn functions-app-settings
            # "Flex Consumption plan deprecations". tests/test_infra_program.py holds the payload
            # to the properties Flex accepts.
            site_config=web.SiteConfigArgsDict(
                app_settings=[web.NameValuePairArgsDict(name=k, value=v) for k, v in settings.items()],
                min_tls_version="1.2", http20_enabled=True),
            tags={"stack": cfg.stack},
            # private stacks: the host reaches its storage only through the endpoints and their DNS records
            opts=pulumi.ResourceOptions(parent=self, depends_on=app_depends_on or []))

        def grant(label: str, role: str, scope: pulumi.Input[str]) -> authorization.RoleAssignment:
            return authorization.RoleAssignment(
                f"{name}-{label}", principal_id=self.identity.principal_id, principal_type="ServicePrincipal",
                role_definition_id=pulumi.Output.from_input(subscription_id).apply(
                    lambda s: roles.role_definition_id(s, role)),
                scope=scope, opts=child)

        # Host storage for an identity-based AzureWebJobsStorage: Blob Data Owner (host state, timer and Event
        # Hubs checkpoints and leases, and the deployment package), Table Data Contributor (the host's
        # diagnostic events); no queue role: no queue or blob trigger here (Learn include
        # functions-azurewebjobsstorage-permissions).
        self.role_assignments = [
            grant("read-hub", roles.EVENT_HUBS_DATA_RECEIVER, hubs.hub.id),
            grant("write-raw-events", roles.STORAGE_BLOB_DATA_CONTRIBUTOR, store.raw_events.id),
            grant("host-storage", roles.STORAGE_BLOB_DATA_OWNER, store.runtime_account.id),
            grant("host-tables", roles.STORAGE_TABLE_DATA_CONTRIBUTOR, store.runtime_account.id),
            grant("publish-telemetry", roles.MONITORING_METRICS_PUBLISHER, monitoring.app_insights.id),
        ]
        self.scm_host = self.app.host_name_ssl_states.apply(scm_host)
        self.register_outputs({"app": self.app.name, "identity": self.identity.name})
