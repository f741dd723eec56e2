"""All stack configuration, read and validated once. A wrong or missing key fails the
preview with the key's name and what to set (`ConfigError`).

Keys (namespace `txmetrics:`), defaults in brackets:
  location [westeurope]               Azure region
  eventhubPartitions [4]              partitions of the hub (1-32 on Standard)
  eventhubRetentionDays [1]           message retention (1-7 on Standard)
  eventhubThroughputUnits [1]         base throughput units (1-40)
  eventhubMaxThroughputUnits [0]      auto-inflate ceiling; 0 disables auto-inflate
  postgresVersion [17]                16, 17 or 18
  postgresSku [Standard_B1ms]         e.g. Standard_D2ds_v5 (tier inferred: B* Burstable, D* GeneralPurpose, E* MemoryOptimized)
  postgresStorageGb [32]
  postgresBackupRetentionDays [7]     7-35
  postgresGeoRedundantBackup [false]
  postgresHighAvailability [false]    zone-redundant standby
  postgresAdminLogin [txmetrics_admin]
  postgresAdminPassword [generated]   secret; generated and kept as a Pulumi secret when unset
  deployerIp [unset]                  IPv4 address allowed to reach PostgreSQL to run migrations
  functionInstanceMemoryMb [2048]     2048 or 4096
  functionMaximumInstances [40]       40-1000
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import pulumi

SKU_TIERS = {"B": "Burstable", "D": "GeneralPurpose", "E": "MemoryOptimized"}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class StackConfig:
    project: str
    stack: str
    location: str
    eventhub_partitions: int
    eventhub_retention_days: int
    eventhub_throughput_units: int
    eventhub_max_throughput_units: int
    postgres_version: str
    postgres_sku: str
    postgres_tier: str
    postgres_storage_gb: int
    postgres_backup_retention_days: int
    postgres_geo_redundant_backup: bool
    postgres_high_availability: bool
    postgres_admin_login: str
    postgres_admin_password: pulumi.Output[str] | None
    deployer_ip: str | None
    function_instance_memory_mb: int
    function_maximum_instances: int

    @property
    def prefix(self) -> str:
        return f"txm-{self.stack}"

    @property
    def compact(self) -> str:
        """Letters and digits only (storage account names)."""
        return re.sub(r"[^a-z0-9]", "", f"txm{self.stack}".lower())[:14]


def _int(cfg: pulumi.Config, key: str, default: int, lo: int, hi: int, hint: str = "") -> int:
    raw = cfg.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"txmetrics:{key} = {raw!r} is not a whole number; set it with "
                          f"`pulumi config set {key} {default}`") from None
    if not lo <= value <= hi:
        raise ConfigError(f"txmetrics:{key} = {value} is out of range {lo}-{hi}{hint}; set it with "
                          f"`pulumi config set {key} <{lo}-{hi}>`")
    return value


def _bool(cfg: pulumi.Config, key: str, default: bool) -> bool:
    raw = cfg.get(key)
    if raw is None:
        return default
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise ConfigError(f"txmetrics:{key} = {raw!r} is not true or false; set it with `pulumi config set {key} true`")


def load() -> StackConfig:
    cfg = pulumi.Config()
    partitions = _int(cfg, "eventhubPartitions", 4, 1, 32, " (Standard tier)")
    tu = _int(cfg, "eventhubThroughputUnits", 1, 1, 40)
    max_tu = _int(cfg, "eventhubMaxThroughputUnits", 0, 0, 40)
    if max_tu and max_tu < tu:
        raise ConfigError(f"txmetrics:eventhubMaxThroughputUnits = {max_tu} is below eventhubThroughputUnits = {tu}; "
                          f"set it to at least {tu}, or 0 to disable auto-inflate")
    version = cfg.get("postgresVersion") or "17"
    if version not in ("16", "17", "18"):
        raise ConfigError(f"txmetrics:postgresVersion = {version!r} is not supported; set 16, 17 or 18")
    sku = cfg.get("postgresSku") or "Standard_B1ms"
    m = re.match(r"^Standard_([BDE])", sku)
    if not m:
        raise ConfigError(f"txmetrics:postgresSku = {sku!r} is not a Flexible Server SKU; set e.g. Standard_B1ms "
                          "(Burstable) or Standard_D2ds_v5 (GeneralPurpose)")
    tier = SKU_TIERS[m.group(1)]
    ha = _bool(cfg, "postgresHighAvailability", False)
    if ha and tier == "Burstable":
        raise ConfigError("txmetrics:postgresHighAvailability = true needs a GeneralPurpose or MemoryOptimized "
                          "postgresSku (Burstable has no HA); set postgresSku to e.g. Standard_D2ds_v5")
    deployer_ip = cfg.get("deployerIp")
    if deployer_ip:
        try:
            ipaddress.IPv4Address(deployer_ip)
        except ValueError:
            raise ConfigError(f"txmetrics:deployerIp = {deployer_ip!r} is not an IPv4 address; set your public "
                              "address, e.g. `pulumi config set deployerIp $(curl -s https://ifconfig.me)`") from None
    memory = _int(cfg, "functionInstanceMemoryMb", 2048, 2048, 4096)
    if memory not in (2048, 4096):
        raise ConfigError(f"txmetrics:functionInstanceMemoryMb = {memory}; set 2048 or 4096")
    login = cfg.get("postgresAdminLogin") or "txmetrics_admin"
    if not re.match(r"^[a-z][a-z0-9_]{2,62}$", login) or login in ("admin", "postgres", "azure_superuser"):
        raise ConfigError(f"txmetrics:postgresAdminLogin = {login!r} is not allowed; set a lower-case name such as "
                          "txmetrics_admin")
    return StackConfig(
        project=pulumi.get_project(), stack=pulumi.get_stack(),
        location=cfg.get("location") or "westeurope",
        eventhub_partitions=partitions,
        eventhub_retention_days=_int(cfg, "eventhubRetentionDays", 1, 1, 7, " (Standard tier)"),
        eventhub_throughput_units=tu, eventhub_max_throughput_units=max_tu,
        postgres_version=version, postgres_sku=sku, postgres_tier=tier,
        postgres_storage_gb=_int(cfg, "postgresStorageGb", 32, 32, 16384),
        postgres_backup_retention_days=_int(cfg, "postgresBackupRetentionDays", 7, 7, 35),
        postgres_geo_redundant_backup=_bool(cfg, "postgresGeoRedundantBackup", False),
        postgres_high_availability=ha, postgres_admin_login=login,
        postgres_admin_password=cfg.get_secret("postgresAdminPassword"),
        deployer_ip=deployer_ip,
        function_instance_memory_mb=memory,
        function_maximum_instances=_int(cfg, "functionMaximumInstances", 40, 40, 1000),
    )
