"""All stack configuration, read and validated once. A wrong or missing key fails the
preview with the key's name and what to set (`ConfigError`).

Keys (namespace `txmetrics:`), defaults in brackets:
  location [westeurope]               Azure region
  deployerIp [required]               IPv4 address of the machine running `pulumi up`: the migration step
                                      connects from it to PostgreSQL (see README, "How migrations reach
                                      the server")
  privateNetworking [false]           VNet, private endpoints and private DNS for storage, Event Hubs and
                                      PostgreSQL; public network access off on all of them (on in prod)
  vnetAddressSpace [10.40.0.0/16]     the VNet's range when privateNetworking is on (/16 to /23; the
                                      first /24 is the Function App's subnet, the second the endpoints')
  eventhubPartitions [4]              partitions of the hub (1-32 on Standard); fixed when the hub is created
                                      (Azure changes it on Premium only; later `up`s leave it)
  eventhubRetentionDays [1]           message retention (1-7 on Standard)
  eventhubThroughputUnits [1]         base throughput units (1-40); with auto-inflate, the units at creation
                                      (later `up`s leave what auto-inflate set)
  eventhubMaxThroughputUnits [0]      auto-inflate ceiling; 0 disables auto-inflate
  postgresVersion [17]                16, 17 or 18
  postgresSku [Standard_B1ms]         e.g. Standard_D2ds_v5 (tier inferred: B* Burstable, D* GeneralPurpose, E* MemoryOptimized)
  postgresStorageGb [32]              a size Flexible Server offers: 32, 64, 128, ... 16384 (powers of two);
                                      the size at creation: auto-grow enlarges it, later `up`s leave it
  postgresBackupRetentionDays [7]     7-35
  postgresGeoRedundantBackup [false]  fixed when the server is created (Azure allows it "only during server create";
                                      to change it, restore into a new server; later `up`s leave it)
  postgresHighAvailability [false]    zone-redundant standby
  postgresEntraAdminObjectId [the deployer]   pin the PostgreSQL Entra administrator (e.g. a group every
  postgresEntraAdminName [the deployer]       deployer of a shared stack is in); with ObjectId set, Name and
  postgresEntraAdminType [the deployer]       Type (User, Group, ServicePrincipal) are required too
  functionInstanceMemoryMb [2048]     2048 or 4096
  functionMaximumInstances [40]       40-1000
  protectData [true]                  Pulumi's `protect` on the data stores (PostgreSQL server, data storage
                                      account, Event Hubs namespace): a destroy or a replacing change stops
                                      at the preview instead of deleting data; dev sets false
  alertEmail [required]               on-call address(es) for the alerts' action group, comma-separated
  alertFunctionFailures [5]           failed ingest invocations (each one is retried) in 15 minutes
  alertThrottledRequests [0]          Event Hubs throttled requests in 5 minutes
  alertConsumerLagSeconds [300]       a partition's consumer lag that, growing for 15 minutes, alerts
  alertPostgresCpuPercent [80]        PostgreSQL CPU, average over 15 minutes
  alertPostgresStoragePercent [80]    PostgreSQL storage used
  alertNoEventsMinutes [0 = off]      no event processed for this long alerts (30 in prod); one of
                                      15, 30, 45, 60, 120, 180, 240, 300, 360, 1440, 2880
  storageAccountName, hostStorageAccountName, functionAppName, postgresServerName,
  eventHubsNamespaceName [derived]    override a globally unique name (default: from a stable suffix of
                                      subscription, project and stack; see infra/naming.py)
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import dataclass, field

import pulumi

from . import naming
from .naming import NameError_

SKU_TIERS = {"B": "Burstable", "D": "GeneralPurpose", "E": "MemoryOptimized"}
# Flexible Server premium SSD sizes (GiB): the portal's choices and what the API accepts for storageSizeGB
# (Learn, "Storage options in Azure Database for PostgreSQL flexible server"; 32 TiB needs premium SSD v2).
POSTGRES_STORAGE_SIZES_GB = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
ENTRA_ADMIN_TYPES = ("User", "Group", "ServicePrincipal")
NAME_OVERRIDES = {   # config key -> (naming validator, what the name is)
    "storageAccountName": (naming.check_storage_account, "data storage account"),
    "hostStorageAccountName": (naming.check_storage_account, "host storage account"),
    "functionAppName": (naming.check_function_app, "Function App"),
    "postgresServerName": (naming.check_postgres_server, "PostgreSQL server"),
    "eventHubsNamespaceName": (naming.check_eventhubs_namespace, "Event Hubs namespace"),
}
# the window sizes a log alert accepts (Learn, "Create or edit a log search alert rule": 5 minutes to 2 days)
ALERT_WINDOW_MINUTES = (5, 10, 15, 30, 45, 60, 120, 180, 240, 300, 360, 1440, 2880)
NO_EVENTS_MIN_MINUTES = 15        # a no-events window at least this long (ingestion latency: Alerts below)
EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class EntraAdmin:
    """A pinned PostgreSQL Entra administrator (config); None in StackConfig means 'the deployer'."""
    object_id: str
    name: str
    principal_type: str


@dataclass(frozen=True)
class Alerts:
    emails: tuple[str, ...]
    function_failures: int
    throttled_requests: int
    consumer_lag_seconds: int
    postgres_cpu_percent: int
    postgres_storage_percent: int
    no_events_minutes: int            # 0: no such alert


@dataclass(frozen=True)
class StackConfig:
    project: str
    stack: str
    location: str
    deployer_ip: str
    private_networking: bool
    vnet_address_space: str
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
    protect_data: bool
    postgres_high_availability: bool
    postgres_entra_admin: EntraAdmin | None
    postgres_entra_admin_name: str | None      # the deployer's name when its token has none (service principals)
    function_instance_memory_mb: int
    function_maximum_instances: int
    alerts: Alerts
    name_overrides: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """For names that are unique only inside the subscription or resource group."""
        return f"txm-{naming.dns_token(self.stack, 40)}"

    @property
    def subnets(self) -> tuple[str, str]:
        """(Function App integration subnet, private endpoint subnet), the first two /24 of the VNet."""
        first, second = itertools.islice(ipaddress.IPv4Network(self.vnet_address_space).subnets(new_prefix=24), 2)
        return str(first), str(second)


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


def _deployer_ip(cfg: pulumi.Config) -> str:
    raw = cfg.get("deployerIp")
    fix = "set your public address: `pulumi config set deployerIp $(curl -4 -s https://ifconfig.me)`"
    if not raw:
        raise ConfigError("txmetrics:deployerIp is not set: the migration step runs on this machine and connects "
                          "to PostgreSQL from its address (in private stacks through a firewall rule opened for the "
                          f"run only); {fix}")
    try:
        address = ipaddress.IPv4Address(raw)
    except ValueError:
        raise ConfigError(f"txmetrics:deployerIp = {raw!r} is not an IPv4 address; {fix}") from None
    if not address.is_global:
        raise ConfigError(f"txmetrics:deployerIp = {raw!r} is a private or reserved address, which PostgreSQL's "
                          f"firewall never sees; {fix}")
    return raw


def _vnet(cfg: pulumi.Config) -> str:
    raw = cfg.get("vnetAddressSpace") or "10.40.0.0/16"
    try:
        net = ipaddress.IPv4Network(raw)
    except ValueError:
        raise ConfigError(f"txmetrics:vnetAddressSpace = {raw!r} is not an IPv4 network; set e.g. "
                          "`pulumi config set vnetAddressSpace 10.40.0.0/16`") from None
    if not net.is_private or not 16 <= net.prefixlen <= 23:
        raise ConfigError(f"txmetrics:vnetAddressSpace = {raw!r} must be a private range from /16 to /23 (two /24 "
                          "subnets are carved from it); set e.g. `pulumi config set vnetAddressSpace 10.40.0.0/16`")
    return str(net)


def _entra_admin(cfg: pulumi.Config) -> EntraAdmin | None:
    object_id = cfg.get("postgresEntraAdminObjectId")
    name = cfg.get("postgresEntraAdminName")
    kind = cfg.get("postgresEntraAdminType")
    if not object_id:
        if kind:
            raise ConfigError("txmetrics:postgresEntraAdminType is set without postgresEntraAdminObjectId; set both "
                              "(and postgresEntraAdminName), or neither to make the deployer the administrator")
        return None
    if not UUID.match(object_id):
        raise ConfigError(f"txmetrics:postgresEntraAdminObjectId = {object_id!r} is not an object id (GUID); set it "
                          "with `pulumi config set postgresEntraAdminObjectId $(az ad group show -g <group> "
                          "--query id -o tsv)`")
    if not name or kind not in ENTRA_ADMIN_TYPES:
        raise ConfigError("txmetrics:postgresEntraAdminObjectId is set, so postgresEntraAdminName (the principal's "
                          "display name, or a user's UPN) and postgresEntraAdminType (one of "
                          f"{', '.join(ENTRA_ADMIN_TYPES)}) are required; set them with `pulumi config set ...`")
    return EntraAdmin(object_id=object_id, name=name, principal_type=kind)


def _alerts(cfg: pulumi.Config) -> Alerts:
    raw = cfg.get("alertEmail") or ""
    emails = tuple(e.strip() for e in raw.split(",") if e.strip())
    if not emails:
        raise ConfigError("txmetrics:alertEmail is not set: the alerts' action group mails the on-call address; set "
                          "it with `pulumi config set alertEmail oncall@example.com` (several: comma-separated)")
    bad = [e for e in emails if not EMAIL.match(e)]
    if bad:
        raise ConfigError(f"txmetrics:alertEmail: {bad[0]!r} is not an email address; set e.g. "
                          "`pulumi config set alertEmail oncall@example.com`")
    no_events = _int(cfg, "alertNoEventsMinutes", 0, 0, 2880)
    allowed = ', '.join(str(m) for m in ALERT_WINDOW_MINUTES if m >= NO_EVENTS_MIN_MINUTES)
    if no_events and no_events not in ALERT_WINDOW_MINUTES:
        raise ConfigError(f"txmetrics:alertNoEventsMinutes = {no_events} is not a window a log alert accepts; set 0 "
                          f"(off) or one of {allowed}")
    if 0 < no_events < NO_EVENTS_MIN_MINUTES:
        # the alert reads batch log lines, which reach Log Analytics 20 s to 3 min after they are
        # written, longer when ingestion lags ("Log data ingestion time in Azure Monitor", Learn):
        # a short window can page on-call (severity 1) for lines not yet ingested
        raise ConfigError(f"txmetrics:alertNoEventsMinutes = {no_events} is shorter than {NO_EVENTS_MIN_MINUTES} "
                          "minutes: the alert reads log lines that Log Analytics ingests minutes late, so a short "
                          "window pages for a stream that is flowing; set 0 (off) or one of "
                          f"{allowed}")
    return Alerts(
        emails=emails,
        function_failures=_int(cfg, "alertFunctionFailures", 5, 0, 100000),
        throttled_requests=_int(cfg, "alertThrottledRequests", 0, 0, 100000),
        consumer_lag_seconds=_int(cfg, "alertConsumerLagSeconds", 300, 1, 7 * 86400),
        postgres_cpu_percent=_int(cfg, "alertPostgresCpuPercent", 80, 1, 100),
        postgres_storage_percent=_int(cfg, "alertPostgresStoragePercent", 80, 1, 100),
        no_events_minutes=no_events,
    )


def _name_overrides(cfg: pulumi.Config) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, (check, what) in NAME_OVERRIDES.items():
        value = cfg.get(key)
        if value is None:
            continue
        try:
            check(value)
        except NameError_ as exc:
            raise ConfigError(f"txmetrics:{key} = {value!r}: {exc}; set a valid {what} name with "
                              f"`pulumi config set {key} <name>`, or remove it to use the derived name") from None
        out[key] = value
    return out


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
    storage_gb = _int(cfg, "postgresStorageGb", 32, 32, 16384)
    if storage_gb not in POSTGRES_STORAGE_SIZES_GB:
        raise ConfigError(f"txmetrics:postgresStorageGb = {storage_gb} is not a size Flexible Server offers; set one "
                          f"of {', '.join(map(str, POSTGRES_STORAGE_SIZES_GB))}")
    memory = _int(cfg, "functionInstanceMemoryMb", 2048, 2048, 4096)
    if memory not in (2048, 4096):
        raise ConfigError(f"txmetrics:functionInstanceMemoryMb = {memory}; set 2048 or 4096")
    for retired in ("postgresAdminLogin", "postgresAdminPassword"):
        if cfg.get(retired) is not None:
            raise ConfigError(f"txmetrics:{retired} is no longer used: PostgreSQL accepts Entra logins only; remove "
                              f"it with `pulumi config rm {retired}`")
    return StackConfig(
        project=pulumi.get_project(), stack=pulumi.get_stack(),
        location=cfg.get("location") or "westeurope",
        deployer_ip=_deployer_ip(cfg),
        private_networking=_bool(cfg, "privateNetworking", False),
        vnet_address_space=_vnet(cfg),
        eventhub_partitions=partitions,
        eventhub_retention_days=_int(cfg, "eventhubRetentionDays", 1, 1, 7, " (Standard tier)"),
        eventhub_throughput_units=tu, eventhub_max_throughput_units=max_tu,
        postgres_version=version, postgres_sku=sku, postgres_tier=tier,
        postgres_storage_gb=storage_gb,
        postgres_backup_retention_days=_int(cfg, "postgresBackupRetentionDays", 7, 7, 35),
        postgres_geo_redundant_backup=_bool(cfg, "postgresGeoRedundantBackup", False),
        protect_data=_bool(cfg, "protectData", True),
        postgres_high_availability=ha,
        postgres_entra_admin=_entra_admin(cfg),
        postgres_entra_admin_name=cfg.get("postgresEntraAdminName"),
        function_instance_memory_mb=memory,
        function_maximum_instances=_int(cfg, "functionMaximumInstances", 40, 40, 1000),
        alerts=_alerts(cfg),
        name_overrides=_name_overrides(cfg),
    )
