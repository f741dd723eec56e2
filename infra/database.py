"""PostgreSQL Flexible Server: version, SKU, storage auto-grow, backups and HA per stack,
TLS enforced, Entra authentication (the deployer is the Entra admin; the function's
identity gets its own role from the migration resource), a generated admin password
kept as a Pulumi secret, firewall rules for Azure services and the deployer's address."""

from __future__ import annotations

import pulumi
import pulumi_random as random
from pulumi_azure_native import dbforpostgresql as pg

from .config import StackConfig

DATABASE_NAME = "txmetrics"


class Database(pulumi.ComponentResource):
    def __init__(self, name: str, cfg: StackConfig, resource_group: pulumi.Input[str], tenant_id: pulumi.Input[str],
                 deployer_object_id: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("txmetrics:infra:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if cfg.postgres_admin_password is not None:
            password: pulumi.Output[str] = cfg.postgres_admin_password
        else:
            password = random.RandomPassword(f"{name}-admin-password", length=32, special=True,
                                             override_special="-_.~", opts=child).result
        self.admin_password = pulumi.Output.secret(password)
        self.admin_login = cfg.postgres_admin_login
        self.server = pg.Server(
            f"{name}-server", server_name=f"{cfg.prefix}-pg", resource_group_name=resource_group,
            location=cfg.location, version=cfg.postgres_version,
            sku=pg.SkuArgs(name=cfg.postgres_sku, tier=cfg.postgres_tier),
            storage=pg.StorageArgs(storage_size_gb=cfg.postgres_storage_gb, auto_grow="Enabled"),
            backup=pg.BackupArgs(backup_retention_days=cfg.postgres_backup_retention_days,
                                 geo_redundant_backup="Enabled" if cfg.postgres_geo_redundant_backup else "Disabled"),
            high_availability=pg.HighAvailabilityArgs(
                mode="ZoneRedundant" if cfg.postgres_high_availability else "Disabled"),
            auth_config=pg.AuthConfigArgs(active_directory_auth="Enabled", password_auth="Enabled",
                                          tenant_id=tenant_id),
            administrator_login=cfg.postgres_admin_login, administrator_login_password=self.admin_password,
            tags={"stack": cfg.stack}, opts=child)
        server_name = self.server.name
        self.database = pg.Database(f"{name}-db", database_name=DATABASE_NAME, server_name=server_name,
                                    resource_group_name=resource_group, charset="UTF8", collation="en_US.utf8",
                                    opts=child)
        self.settings = [
            pg.Configuration(f"{name}-{key.replace('_', '-')}", configuration_name=key, value=value, source="user-override",
                             server_name=server_name, resource_group_name=resource_group, opts=child)
            for key, value in (("require_secure_transport", "on"), ("ssl_min_protocol_version", "TLSv1.2"))
        ]
        self.entra_admin = pg.Administrator(
            f"{name}-entra-admin", object_id=deployer_object_id, principal_type="User", tenant_id=tenant_id,
            principal_name="txmetrics-deployer", server_name=server_name, resource_group_name=resource_group,
            opts=child)
        self.firewall_rules = [pg.FirewallRule(
            f"{name}-azure-services", firewall_rule_name="AllowAzureServices", start_ip_address="0.0.0.0",
            end_ip_address="0.0.0.0", server_name=server_name, resource_group_name=resource_group, opts=child)]
        if cfg.deployer_ip:
            self.firewall_rules.append(pg.FirewallRule(
                f"{name}-deployer", firewall_rule_name="Deployer", start_ip_address=cfg.deployer_ip,
                end_ip_address=cfg.deployer_ip, server_name=server_name, resource_group_name=resource_group,
                opts=child))
        self.host = self.server.fully_qualified_domain_name
        self.register_outputs({"server": server_name, "host": self.host})

    def admin_url(self) -> pulumi.Output[str]:
        """Admin connection URL (secret) for the migration resource on the deploying machine."""
        return pulumi.Output.secret(pulumi.Output.all(self.host, self.admin_password).apply(
            lambda a: f"postgresql://{self.admin_login}:{a[1]}@{a[0]}:5432/{DATABASE_NAME}?sslmode=require"))
