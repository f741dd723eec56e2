"""Where the command line finds its data: the same settings as the function
(DATABASE_URL, AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_URL,
RAW_EVENTS_CONTAINER, METRIC_CATALOG), and, when none of the service settings is set, the
local services `make up` left running (a fallback localdev provides: `local_env`).

The fallback is all or nothing: a DATABASE_URL pointing at one environment is never
paired with the local Blob Storage of another. Failures to connect become
UnavailableError naming the host, never a password or an account key.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from txmetrics.errors import UnavailableError, describe_database, describe_storage
from txmetrics.settings import Settings

if TYPE_CHECKING:
    import psycopg
    from azure.storage.blob import BlobServiceClient

    from txmetrics.adapters.blob import BlobArchive
    from txmetrics.core.catalog import Catalog

SERVICE_SETTINGS = ("DATABASE_URL", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_URL")
CONNECT_TIMEOUT_SECONDS = 10


def environment() -> dict[str, str]:
    """The settings in effect: the process environment, plus the local services of `make up`
    when it names no service at all."""
    env = dict(os.environ)
    if not any(env.get(name, "").strip() for name in SERVICE_SETTINGS):
        try:
            from localdev.services import local_env
        except ImportError:        # an installation without the local tooling
            return env
        env.update(local_env())
    return env


def settings_source() -> str:
    """Where the service settings come from, for `txmetrics status`."""
    if any(os.environ.get(name, "").strip() for name in SERVICE_SETTINGS):
        return "environment"
    return "local services (make up)" if environment().get("DATABASE_URL") else "none"


def database_url() -> str:
    return settings().require_database()


@contextmanager
def connect(*, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A connection to the database in effect; UnavailableError (host, not password) when
    it cannot be reached within CONNECT_TIMEOUT_SECONDS."""
    import psycopg

    url = database_url()
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.OperationalError as exc:
        raise UnavailableError(f"cannot connect to PostgreSQL at {describe_database(url)}: "
                               f"{_reason(exc, url)}") from exc
    with conn:
        yield conn


def _reason(exc: BaseException, url: str) -> str:
    """The driver's message on one line, with the URL's password (if any) blotted out."""
    from psycopg.conninfo import conninfo_to_dict

    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    try:
        password = conninfo_to_dict(url).get("password")
    except Exception:  # the message is still shown, minus nothing
        password = None
    return text.replace(str(password), "***") if password else text


def storage_settings() -> tuple[str | None, str | None]:
    return settings().require_storage()


def storage_where() -> str:
    """The Blob endpoint in effect (no key), for messages."""
    connection_string, account_url = storage_settings()
    return describe_storage(connection_string, account_url)


def storage_service() -> BlobServiceClient:
    from txmetrics.adapters.blob import service_client

    s = settings()
    connection_string, account_url = s.require_storage()
    return service_client(connection_string, account_url, managed_identity_client_id=s.managed_identity_client_id)


def archive(container: str) -> BlobArchive:
    from txmetrics.adapters.blob import BlobArchive

    return BlobArchive(storage_service(), container)


def settings() -> Settings:
    """The settings object the function reads, from the environment in effect."""
    return Settings.from_env(environment())


def catalog() -> Catalog:
    from txmetrics.core.catalog import load_catalog

    return load_catalog(settings().metric_catalog)
