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
from dataclasses import dataclass, field
from pathlib import Path

from .core.naming import RAW_EVENTS_CONTAINER as DEFAULT_RAW_EVENTS_CONTAINER
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
    retention_days: dict[str, int] = field(default_factory=dict)

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
                   raw_events_container=_get(e, "RAW_EVENTS_CONTAINER") or DEFAULT_RAW_EVENTS_CONTAINER,
                   metric_catalog=Path(_get(e, "METRIC_CATALOG") or BUNDLED_CATALOG),
                   database_auth=auth, managed_identity_client_id=_get(e, "AZURE_CLIENT_ID"),
                   retention_days=_retention(_get(e, "TXMETRICS_RETENTION")))

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


def _retention(raw: str | None) -> dict[str, int]:
    if raw is None:
        return {}
    try:
        parsed = json.loads(raw)
        if not isinstance(parsed, dict):
            raise ValueError("not an object")
        return {str(k): int(v) for k, v in parsed.items()}
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"TXMETRICS_RETENTION is not a JSON object of table: days ({exc}); it is rendered by "
                            "pulumi up from lifecycle/: deploy again, or unset it") from None
