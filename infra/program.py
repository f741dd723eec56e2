"""Wires the components together. `build()` is the whole program; __main__.py calls it with
the real bundle, the tests call it under Pulumi's mocks."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi_azure_native import authorization, resources

from lifecycle.policy import load_policy, table_retention_setting
from txmetrics import schema

from .bundle import Bundle
from .config import StackConfig
from .database import DATABASE_NAME, Database
from .eventhubs import EventHubs
from .functionapp import FunctionApp
from .monitoring import Monitoring
from .providers import CodeDeployment, SchemaMigration
from .storage import RAW_EVENTS_CONTAINER, Storage


def build(cfg: StackConfig, bundle: Bundle) -> dict[str, Any]:
    policy = load_policy(cfg.stack)       # lifecycle/: the single source of retention
    client = authorization.get_client_config_output()
    rg = resources.ResourceGroup("rg", resource_group_name=f"{cfg.prefix}-rg", location=cfg.location,
                                 tags={"stack": cfg.stack, "project": cfg.project})
    monitoring = Monitoring("monitoring", cfg, rg.name)
    hubs = EventHubs("eventhubs", cfg, rg.name)
    store = Storage("storage", cfg, policy, rg.name)
    db = Database("postgres", cfg, rg.name, tenant_id=client.tenant_id, deployer_object_id=client.object_id)
    app = FunctionApp("function", cfg, rg.name, client.subscription_id, hubs, store, db, monitoring,
                      retention_setting=table_retention_setting(policy))
    for label, resource in (("eventhubs", hubs.namespace), ("postgres", db.server)):
        monitoring.send_diagnostics(label, resource.id)
    monitoring.send_diagnostics("blob", store.account.id.apply(lambda i: f"{i}/blobServices/default"))
    monitoring.send_diagnostics("storage", store.account.id, logs=False)

    entra_admin_url = db.host.apply(lambda h: f"postgresql://txmetrics-deployer@{h}:5432/postgres?sslmode=require")
    migration = SchemaMigration(
        "schema", database_url=db.admin_url(), migrations_dir=str(schema.MIGRATIONS_DIR),
        digest=schema.migrations_digest(), app_role=app.identity.name, app_object_id=app.identity.principal_id,
        entra_admin_url=entra_admin_url,
        opts=pulumi.ResourceOptions(depends_on=[db.database, db.entra_admin, *db.firewall_rules, *db.settings]))
    CodeDeployment("code", scm_url=app.scm_url, zip_path=str(bundle.path), sha256=bundle.sha256,
                   opts=pulumi.ResourceOptions(depends_on=[app.app, migration, *app.role_assignments]))

    outputs: dict[str, Any] = {
        "resourceGroup": rg.name,
        "eventHubsNamespace": hubs.fully_qualified_namespace,
        "eventHub": hubs.hub.name,
        "consumerGroup": hubs.consumer_group.name,
        "storageAccount": store.account.name,
        "rawEventsPath": store.blob_endpoint.apply(lambda e: f"{e}{RAW_EVENTS_CONTAINER}/raw_events/"),
        "postgresHost": db.host,
        "postgresDatabase": DATABASE_NAME,
        "postgresAdminLogin": db.admin_login,
        "postgresAdminPassword": db.admin_password,        # secret: pulumi stack output --show-secrets
        "functionApp": app.app.name,
        "functionIdentity": app.identity.name,
        "appInsights": monitoring.app_insights.name,
        "logAnalyticsWorkspace": monitoring.workspace.name,
        "codeSha256": bundle.sha256,
        "schemaMigrations": migration.applied,
    }
    for key, value in outputs.items():
        pulumi.export(key, value)
    return {"outputs": outputs, "rg": rg, "hubs": hubs, "store": store, "db": db, "app": app,
            "monitoring": monitoring, "migration": migration, "policy": policy}
