"""The one settings object of the function, the timer jobs and the command line (contract
section 2), read from an environment mapping. Nothing else in the package reads the
environment; the command line passes its own mapping (the process environment, or the
local services of `make up` that localdev provides as a fallback).

| setting | meaning | default |
|---|---|---|
| DATABASE_URL | PostgreSQL URL | required by what uses the database |
| DATABASE_AUTH | `entra`: a managed-identity token is the password (deployed apps) | password in the URL |
| AZURE_STORAGE_CONNECTION_STRING | Blob Storage connection string (local, Azurite) | - |
| AZURE_STORAGE_ACCOUNT_URL | Blob Storage account URL, used with the managed identity (Azure) | - |
| AZURE_CLIENT_ID | the user-assigned managed identity to authenticate as (Azure) | the default identity |
| RAW_EVENTS_CONTAINER | container of the raw archive | raw-events |
| METRIC_CATALOG | path of the metric catalog | the catalog bundled with the function |
| TXMETRICS_RETENTION | table retention in days, JSON, rendered from lifecycle/ by Pulumi | none: no retention |
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .core.naming import CONTAINER_NAME
from .core.naming import RAW_EVENTS_CONTAINER as DEFAULT_RAW_EVENTS_CONTAINER
from .core.tables import MAX_RETENTION_DAYS, TABLES
from .errors import TxmetricsError

BUNDLED_CATALOG = Path(__file__).with_name("catalog.yaml")


class SettingsError(TxmetricsError, ValueError):
    """A setting is missing or wrong; the message names it and what to set."""


def metric_catalog_path(env: Mapping[str, str] | None = None) -> Path:
    """The catalog in effect: METRIC_CATALOG, else the catalog bundled with the function."""
    return Settings.from_env(env).metric_catalog


def _get(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    storage_connection_string: str | None
    storage_account_url: str | None
    raw_events_container: str = DEFAULT_RAW_EVENTS_CONTAINER
    metric_catalog: Path = BUNDLED_CATALOG
    database_auth: str = "password"   # "entra": a managed-identity token is the password (deployed apps)
    managed_identity_client_id: str | None = None
    retention_setting: str | None = None    # TXMETRICS_RETENTION as set; read by `retention_days`

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of `env` (default: the process environment). Only malformed values are
        refused here; whether a service is configured is checked by `require_database` and
        `require_storage`, where it is needed."""
        e = os.environ if env is None else env
        auth = (_get(e, "DATABASE_AUTH") or "password").lower()
        if auth not in ("password", "entra"):
            raise SettingsError(f"DATABASE_AUTH={auth!r}: set 'entra' (managed identity) or leave it unset (password)")
        return cls(database_url=_get(e, "DATABASE_URL"),
                   storage_connection_string=_get(e, "AZURE_STORAGE_CONNECTION_STRING"),
                   storage_account_url=_get(e, "AZURE_STORAGE_ACCOUNT_URL"),
                   raw_events_container=_container(_get(e, "RAW_EVENTS_CONTAINER")),
                   metric_catalog=Path(_get(e, "METRIC_CATALOG") or BUNDLED_CATALOG),
                   database_auth=auth, managed_identity_client_id=_get(e, "AZURE_CLIENT_ID"),
                   retention_setting=_get(e, "TXMETRICS_RETENTION"))

    @property
    def retention_days(self) -> dict[str, int]:
        """TXMETRICS_RETENTION, checked when it is read (by the retention timer), not with the
        other settings: a wrong retention must stop the job that would drop data, not ingest."""
        return _retention(self.retention_setting)

    def require_database(self) -> str:
        if not self.database_url:
            raise SettingsError("DATABASE_URL is not set: set it to the PostgreSQL URL, "
                                "e.g. postgresql://user@host:5432/txmetrics (locally: start the services with `make up`)")
        return self.database_url

    def require_storage(self) -> tuple[str | None, str | None]:
        """(connection string, account URL), at least one of them set."""
        if not self.storage_connection_string and not self.storage_account_url:
            raise SettingsError("neither AZURE_STORAGE_CONNECTION_STRING nor AZURE_STORAGE_ACCOUNT_URL is set: set the "
                                "connection string (local, Azurite) or the account URL (Azure, managed identity); "
                                "locally: start the services with `make up`")
        return self.storage_connection_string, self.storage_account_url


def _container(raw: str | None) -> str:
    if raw is None:
        return DEFAULT_RAW_EVENTS_CONTAINER
    if not CONTAINER_NAME.fullmatch(raw):
        raise SettingsError(f"RAW_EVENTS_CONTAINER={raw!r} is not a Blob Storage container name: 3-63 lower-case "
                            "letters, digits and single hyphens, starting and ending with a letter or digit; set it "
                            f"to e.g. {DEFAULT_RAW_EVENTS_CONTAINER}, or unset it")
    return raw


# the keys retention takes: each table's `retention_key` (core/tables.py)
_RETENTION_KEYS = tuple(t.retention_key for t in TABLES if t.retention_key)
_FIX = ("it is rendered by pulumi up from lifecycle/<stack>.yaml (checked there): deploy again, or correct it by "
        "hand as a JSON object such as {\"dynamic_metrics\": 35, \"ingested_events\": 35}")


def _retention(raw: str | None) -> dict[str, int]:
    """Table retention in days. Checked as the lifecycle files are: the daily timer drops what
    this says, so a wrong value (negative, a typo of a table, a ledger kept shorter than the
    rows it deduplicates) must stop it rather than drop today's partitions."""
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"TXMETRICS_RETENTION is not JSON ({exc}); {_FIX}") from None
    if not isinstance(parsed, dict):
        raise SettingsError(f"TXMETRICS_RETENTION is not a JSON object of table: days; {_FIX}")
    for key, days in parsed.items():
        if key not in _RETENTION_KEYS:
            raise SettingsError(f"TXMETRICS_RETENTION: {key!r} is not a table with a retention (use "
                                f"{', '.join(_RETENTION_KEYS)}); {_FIX}")
        if type(days) is not int or days < 1:
            raise SettingsError(f"TXMETRICS_RETENTION: {key} must be a whole number of days >= 1, got {days!r}; "
                                f"{_FIX}")
        if days > MAX_RETENTION_DAYS:
            # beyond, `today - days` is no date: the job would stop on OverflowError every day
            raise SettingsError(f"TXMETRICS_RETENTION: {key} must be at most {MAX_RETENTION_DAYS} days (100 years), "
                                f"got {days}; {_FIX}")
    ledger, rows = parsed.get("ingested_events"), parsed.get("dynamic_metrics")
    if ledger is not None and (rows is None or ledger < rows):
        # an absent table is kept for ever: the ledger must outlive the rows it deduplicates
        raise SettingsError(f"TXMETRICS_RETENTION: ingested_events ({ledger} days) is shorter than dynamic_metrics "
                            f"({'kept for ever' if rows is None else f'{rows} days'}): a redelivered event older than "
                            f"the ledger would be counted twice; {_FIX}")
    return dict(parsed)
