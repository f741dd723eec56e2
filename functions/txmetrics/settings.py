"""The function's settings (contract section 2), read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import TxmetricsError

BUNDLED_CATALOG = Path(__file__).with_name("catalog.yaml")


class SettingsError(TxmetricsError, ValueError):
    """A setting is missing or wrong; the message names it and what to set."""


def metric_catalog_path(env: Mapping[str, str] | None = None) -> Path:
    """The catalog in effect: METRIC_CATALOG, else the catalog bundled with the function."""
    e = os.environ if env is None else env
    return Path(e.get("METRIC_CATALOG", "").strip() or BUNDLED_CATALOG)


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    storage_connection_string: str | None
    storage_account_url: str | None
    raw_events_container: str
    metric_catalog: Path
    database_auth: str = "password"   # "entra": a managed-identity token is the password (deployed apps)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = dict(os.environ) if env is None else env
        database_url = e.get("DATABASE_URL", "").strip()
        if not database_url:
            raise SettingsError("DATABASE_URL is not set: set it to the PostgreSQL URL, "
                                "e.g. postgresql://user@host:5432/txmetrics")
        conn_str = e.get("AZURE_STORAGE_CONNECTION_STRING", "").strip() or None
        account_url = e.get("AZURE_STORAGE_ACCOUNT_URL", "").strip() or None
        if not conn_str and not account_url:
            raise SettingsError("neither AZURE_STORAGE_CONNECTION_STRING nor AZURE_STORAGE_ACCOUNT_URL is set: set the "
                                "connection string (local, Azurite) or the account URL (Azure, managed identity)")
        container = e.get("RAW_EVENTS_CONTAINER", "").strip() or "raw-events"
        catalog = metric_catalog_path(e)
        auth = e.get("DATABASE_AUTH", "").strip().lower() or "password"
        if auth not in ("password", "entra"):
            raise SettingsError(f"DATABASE_AUTH={auth!r}: set 'entra' (managed identity) or leave it unset (password)")
        return cls(database_url=database_url, storage_connection_string=conn_str, storage_account_url=account_url,
                   raw_events_container=container, metric_catalog=catalog, database_auth=auth)
