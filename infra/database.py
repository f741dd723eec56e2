"""PostgreSQL Flexible Server: version, SKU, storage auto-grow, backups and HA per stack,
Entra logins only (no password, no admin secret), the deployer (or a pinned principal) as
Entra administrator; the function's identity gets its own role from the migration resource.

First deploy: right after a Flexible Server is created, concurrent writes to its children
(server parameters, firewall rules, the Entra administrator, databases) are commonly refused
with `ServerIsBusy` (Azure/azure-postgresql#134, Azure/ResourceModules#3324); the Terraform
azurerm provider serialises them behind one lock for that reason
(hashicorp/terraform-provider-azurerm#19953). So every child here depends on the previous one
(`self.chain`, in creation order), the private endpoint of private stacks included, and only
server parameters that differ from Azure's defaults are written at all.

Network: public stacks keep the `AllowAzureServices` rule (Flex Consumption has no fixed
outbound addresses) but never with password login: that rule admits clients from every Azure
tenant (PSRule for Azure, Azure.PostgreSQL.AllowAzureAccess). Private stacks disable public
network access and reach the server through a private endpoint; the migration step opens a
firewall rule for the deployer's address for the duration of its run only (infra/providers.py)."""

from __future__ import annotations

from typing import Any, TypeVar

import pulumi
from pulumi_azure_native import dbforpostgresql as pg

from .config import StackConfig

_R = TypeVar("_R", bound=pulumi.Resource)

DATABASE_NAME = "txmetrics"

# Server parameters we want, and Azure's defaults for them (Learn, "Encrypted connectivity using TLS in Azure
# Database for PostgreSQL": TLS enforced by default, TLS 1.0/1.1 refused, i.e. require_secure_transport=on and
# ssl_min_protocol_version=TLSv1.2 out of the box). Only the differences become Configuration resources: each
# one is a write to a fresh server that can meet ServerIsBusy, and a default needs no write.
WANTED_PARAMETERS = {"require_secure_transport": "on", "ssl_min_protocol_version": "TLSv1.2"}
AZURE_DEFAULT_PARAMETERS = {"require_secure_transport": "on", "ssl_min_protocol_version": "TLSv1.2"}


def parameters_to_write(wanted: dict[str, str], defaults: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in wanted.items() if defaults.get(k, "").lower() != v.lower()}


class Database(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, resource_group: pulumi.Input[str], tenant_id: pulumi.Input[str],
                 server_name: pulumi.Input[str], admin_object_id: pulumi.Input[str], admin_name: pulumi.Input[str],
                 admin_type: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("txmetrics:infra:Database", name, None, opts)
        self.server = pg.Server(
            f"{name}-server", server_name=server_name, resource_group_name=resource_group,
            location=cfg.location, version=cfg.postgres_version,
            sku=pg.SkuArgs(name=cfg.postgres_sku, tier=cfg.postgres_tier),
            storage=pg.StorageArgs(storage_size_gb=cfg.postgres_storage_gb, auto_grow="Enabled"),
            backup=pg.BackupArgs(backup_retention_days=cfg.postgres_backup_retention_days,
                                 geo_redundant_backup="Enabled" if cfg.postgres_geo_redundant_backup else "Disabled"),
            high_availability=pg.HighAvailabilityArgs(
                mode="ZoneRedundant" if cfg.postgres_high_availability else "Disabled"),
            auth_config=pg.AuthConfigArgs(active_directory_auth="Enabled", password_auth="Disabled",
                                          tenant_id=tenant_id),
            network=pg.NetworkArgs(public_network_access="Disabled" if cfg.private_networking else "Enabled"),
            tags={"stack": cfg.stack},
            # auto-grow enlarges the disk, and `pulumi refresh` copies what Azure reports into the inputs
            # (pulumi-azure-native#280): the next `up` would send postgresStorageGb again, a shrink Azure
            # refuses ("You can't scale down the storage", Learn: how-to-scale-compute-storage-portal). The
            # setting is the size at creation; growing it later is auto-grow's, or the portal's.
            # Geo-redundant backup is creation-only ("only allowed during server create"; the provider
            # would plan a replacement of the server, pulumi-azure-native#71): a later change is left
            # alone, and `protect` stops any replacing plan at the preview (protectData).
            opts=pulumi.ResourceOptions(parent=self, protect=cfg.protect_data,
                                        ignore_changes=["storage.storageSizeGB", "backup.geoRedundantBackup"]))
        self.chain: list[pulumi.Resource] = []        # the server's children, each after the previous one
        server_name_out = self.server.name
        self.entra_admin = self._child(pg.Administrator, f"{name}-entra-admin", object_id=admin_object_id,
                                       principal_name=admin_name, principal_type=admin_type, tenant_id=tenant_id,
                                       server_name=server_name_out, resource_group_name=resource_group)
        self.admin_name = admin_name
        self.admin_object_id = admin_object_id
        self.firewall_rules: list[pg.FirewallRule] = []
        if not cfg.private_networking:
            self.firewall_rules.append(self._child(
                pg.FirewallRule, f"{name}-azure-services", firewall_rule_name="AllowAzureServices",
                start_ip_address="0.0.0.0", end_ip_address="0.0.0.0", server_name=server_name_out,
                resource_group_name=resource_group))
            self.firewall_rules.append(self._child(
                pg.FirewallRule, f"{name}-deployer", firewall_rule_name="Deployer", start_ip_address=cfg.deployer_ip,
                end_ip_address=cfg.deployer_ip, server_name=server_name_out, resource_group_name=resource_group))
        self.database = self._child(pg.Database, f"{name}-db", protect=cfg.protect_data, database_name=DATABASE_NAME, server_name=server_name_out,
                                    resource_group_name=resource_group, charset="UTF8", collation="en_US.utf8")
        self.settings = [
            self._child(pg.Configuration, f"{name}-{key.replace('_', '-')}", configuration_name=key, value=value,
                        source="user-override", server_name=server_name_out, resource_group_name=resource_group)
            for key, value in parameters_to_write(WANTED_PARAMETERS, AZURE_DEFAULT_PARAMETERS).items()
        ]
        self.host = self.server.fully_qualified_domain_name
        self.register_outputs({"server": server_name_out, "host": self.host})

    def _child(self, cls: type[_R], resource_name: str, protect: bool = False, **kwargs: Any) -> _R:
        """A child of the server, created only after the previous child (never two writes at once)."""
        depends_on = [self.chain[-1]] if self.chain else [self.server]
        resource = cls(resource_name, **kwargs,
                       opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on, protect=protect))
        self.chain.append(resource)
        return resource

    @property
    def last_child(self) -> pulumi.Resource:
        return self.chain[-1]
