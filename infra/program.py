"""Wires the components together. `build()` is the whole program; __main__.py calls it with
the real bundle, the tests call it under Pulumi's mocks.

What the first `pulumi up` creates, in this order (the engine runs independent branches in
parallel; the arrows are real dependencies):
1. resource group; Log Analytics workspace -> Application Insights
2. [private stacks] virtual network (Function App subnet, private-endpoint subnet) -> private DNS
   zones (blob, table, servicebus, postgres) -> their VNet links
3. Event Hubs namespace -> hub -> consumer group; data account -> raw-events container ->
   lifecycle policy; host account -> deployments container
4. PostgreSQL server -> Entra administrator -> [public stacks] firewall rules -> database ->
   (non-default parameters) -> [private stacks] its private endpoint: one write at a time
5. [private stacks] private endpoints for blob (both accounts), table (host account), Event Hubs
6. identity, plan -> Function App (after the endpoints in private stacks) -> role assignments
7. diagnostic settings; the on-call action group, the alerts, the operations workbook
8. schema: migrations as the Entra administrator, then the function's role (after the whole
   PostgreSQL chain; in private stacks through a firewall window for the deployer, closed after)
9. code: OneDeploy publish, followed to the end (after the app, its roles and the schema)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pulumi
from pulumi_azure_native import authorization, resources

from lifecycle.policy import load_policy, table_retention_setting
from txmetrics import schema
from txmetrics.core.naming import RAW_EVENTS_CONTAINER, RAW_PREFIX

from . import naming
from .bundle import Bundle
from .config import StackConfig
from .database import DATABASE_NAME, Database
from .deployer import Principal, deployer_principal
from .eventhubs import EventHubs
from .functionapp import FunctionApp
from .monitoring import Monitoring
from .network import BLOB, EVENT_HUBS, POSTGRES, TABLE, PrivateNetwork
from .operations import Operations
from .providers import CodeDeployment, SchemaMigration
from .storage import Storage


def build(cfg: StackConfig, bundle: Bundle) -> dict[str, Any]:
    policy = load_policy(cfg.stack)       # lifecycle/: the single source of retention
    client = authorization.get_client_config_output()
    token = authorization.get_client_token_output()
    names = client.subscription_id.apply(
        lambda s: naming.global_names(s, cfg.project, cfg.stack, cfg.name_overrides))
    admin: pulumi.Output[Principal] = pulumi.Output.all(token.token, client.object_id).apply(
        lambda a: deployer_principal(a[0], a[1], cfg.postgres_entra_admin, cfg.postgres_entra_admin_name))

    rg = resources.ResourceGroup("rg", resource_group_name=f"{cfg.prefix}-rg", location=cfg.location,
                                 tags={"stack": cfg.stack, "project": cfg.project})
    monitoring = Monitoring("monitoring", cfg, rg.name)
    net = PrivateNetwork("network", cfg, rg.name) if cfg.private_networking else None
    hubs = EventHubs("eventhubs", cfg, rg.name, names.apply(lambda n: n.eventhubs_namespace))
    store = Storage("storage", cfg, policy, rg.name, names.apply(lambda n: n.storage_account),
                    names.apply(lambda n: n.host_storage_account))
    db = Database("postgres", cfg, rg.name, tenant_id=client.tenant_id,
                  server_name=names.apply(lambda n: n.postgres_server),
                  admin_object_id=admin.apply(lambda p: p.object_id), admin_name=admin.apply(lambda p: p.name),
                  admin_type=admin.apply(lambda p: p.principal_type))
    private_path: list[pulumi.Resource] = []
    if net is not None:
        # PostgreSQL's endpoint is one more write to the server: last in its chain (ServerIsBusy otherwise)
        net.endpoint("postgres", db.server.id, POSTGRES, depends_on=[db.last_child])
        net.endpoint("data-blob", store.account.id, BLOB)
        net.endpoint("host-blob", store.runtime_account.id, BLOB)
        net.endpoint("host-table", store.runtime_account.id, TABLE)
        net.endpoint("eventhubs", hubs.namespace.id, EVENT_HUBS)
        private_path = [*net.endpoints, *net.zone_groups, *net.links]
    app = FunctionApp("function", cfg, rg.name, client.subscription_id, names.apply(lambda n: n.function_app), hubs,
                      store, db, monitoring, retention_setting=table_retention_setting(policy),
                      subnet_id=net.functions_subnet_id if net is not None else None,
                      app_depends_on=private_path)
    for label, resource in (("eventhubs", hubs.namespace), ("postgres", db.server)):
        monitoring.send_diagnostics(label, resource.id)
    # Storage takes its metric categories by name: `AllMetrics` has been refused there ("Metric
    # category 'AllMetrics' is not supported, supported categories are: 'Capacity;Transaction'",
    # Azure/terraform-azurerm-avm-res-storage-storageaccount#325) and `Capacity` too (#322), while
    # Learn's diagnostic-settings template samples send `Transaction`. Nothing reads the
    # storage metrics from the workspace (the workbook reads Event Hubs' and PostgreSQL's);
    # capacity stays in Azure Monitor's platform metrics.
    monitoring.send_diagnostics("blob", store.account.id.apply(lambda i: f"{i}/blobServices/default"),
                                metrics="Transaction")
    monitoring.send_diagnostics("storage", store.account.id, logs=False, metrics="Transaction")
    operations = Operations("operations", cfg, rg.name, workspace_id=monitoring.workspace.id,
                            function_app=app.app.name, hub=hubs.hub.name, eventhubs_namespace_id=hubs.namespace.id,
                            postgres_server_id=db.server.id)

    def admin_url(database: str) -> pulumi.Output[str]:
        """The Entra administrator's connection URL, without password: the step adds the deployer's token."""
        return pulumi.Output.all(admin, db.host).apply(
            lambda a: f"postgresql://{quote(a[0].name, safe='')}@{a[1]}:5432/{database}?sslmode=require")

    migration = SchemaMigration(
        "schema", database_url=admin_url(DATABASE_NAME), entra_admin_url=admin_url("postgres"),
        migrations_dir=str(schema.MIGRATIONS_DIR), digest=schema.migrations_digest(),
        server_id=db.server.id, admin_object_id=admin.apply(lambda p: p.object_id),
        identity_name=app.identity.name, app_object_id=app.identity.principal_id,
        private=cfg.private_networking, deployer_ip=cfg.deployer_ip,
        opts=pulumi.ResourceOptions(depends_on=[*db.chain, *private_path],
                                    # same-name replacements keep the ids: re-run on them too
                                    replace_with=[db.server, app.identity]))
    CodeDeployment("code", scm_url=app.scm_host.apply(lambda h: f"https://{h}"), app_id=app.app.id,
                   zip_path=str(bundle.path), sha256=bundle.sha256,
                   opts=pulumi.ResourceOptions(depends_on=[app.app, migration, store.deployments,
                                                           *app.role_assignments],
                                               replace_with=[app.app]))

    outputs: dict[str, Any] = {
        "resourceGroup": rg.name,
        "eventHubsNamespace": hubs.fully_qualified_namespace,
        "eventHub": hubs.hub.name,
        "consumerGroup": hubs.consumer_group.name,
        "storageAccount": store.account.name,
        "hostStorageAccount": store.runtime_account.name,
        "rawEventsPath": store.blob_endpoint.apply(lambda e: f"{e}{RAW_EVENTS_CONTAINER}/{RAW_PREFIX}/"),
        "postgresHost": db.host,
        "postgresDatabase": DATABASE_NAME,
        "postgresEntraAdmin": admin.apply(lambda p: p.name),
        "functionApp": app.app.name,
        "functionScmHost": app.scm_host,
        "functionIdentity": app.identity.name,
        "functionDatabaseRole": app.db_role,
        "privateNetworking": cfg.private_networking,
        "appInsights": monitoring.app_insights.name,
        "logAnalyticsWorkspace": monitoring.workspace.name,
        "operationsWorkbook": operations.workbook.display_name,
        "alertActionGroup": operations.action_group.name,
        "codeSha256": bundle.sha256,
        "schemaMigrations": migration.applied,
    }
    for key, value in outputs.items():
        pulumi.export(key, value)
    return {"outputs": outputs, "rg": rg, "hubs": hubs, "store": store, "db": db, "app": app, "net": net,
            "monitoring": monitoring, "operations": operations, "migration": migration, "policy": policy, "names": names}
