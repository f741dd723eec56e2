"""Blob Storage adapter: one container (the raw archive, or a container a lifecycle rule
names): upload (overwrite), download, list with tiers, set a tier, delete. The one place
that drives the Azure SDK's blob clients; everything else goes through BlobArchive."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry, RehydratePriority

_log = logging.getLogger("txmetrics.blob")


def _warn_retry(*, retry_count: int, request: Any, response: Any, error: Any, **_: Any) -> None:
    """One WARNING per retried request: function_app keeps the SDK's per-request HTTP records
    (INFO) out of the host's logs, and they were the only trace of a request the SDK retried
    and then got through (a 503, a 500, a timeout): status or error, no headers."""
    _log.warning("blob request retried (%d): %s %s -> %s", retry_count + 1, request.method,
                 request.url.split("?", 1)[0], response.status_code if response is not None else repr(error))


class _LoggedRetry(ExponentialRetry):
    """ExponentialRetry that calls `_warn_retry` on every retry of every request of the client
    (uploads, and the timers' and CLI's lists, downloads, deletes and tier changes). The SDK
    takes its `retry_hook` per request only; this is where the policy reads it
    (`StorageRetryPolicy.configure_retries`), so a hook a caller passes still wins."""

    def configure_retries(self, request: Any) -> dict[str, Any]:
        settings: dict[str, Any] = super().configure_retries(request)
        if settings["hook"] is None:
            settings["hook"] = _warn_retry
        return settings


# The SDK's default (15 s initial backoff, growing) holds an invocation for a minute before
# it fails; the host retries whole batches anyway, so fail sooner and let it. A server that
# accepts and never answers: 4 attempts x the read timeout (60 s: 257 s measured; 20 s: 102 s;
# a batch's file is a few hundred KB, sent in well under a second; docs/ingest.md).
_RETRY: dict[str, Any] = dict(retry_policy=_LoggedRetry(initial_backoff=1, increment_base=2, retry_total=3),
              connection_timeout=10, read_timeout=20, max_single_put_size=256 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class BlobInfo:
    name: str
    size: int
    last_modified: datetime
    tier: str | None


# The transport the SDK builds from the options above (its own block size, 256 KB), made here
# so that it can be told not to read the environment on every request (_environment_read_once)
_TRANSPORT: dict[str, Any] = dict(connection_timeout=_RETRY["connection_timeout"], read_timeout=_RETRY["read_timeout"],
                                  connection_data_block_size=256 * 1024)


def service_client(connection_string: str | None = None, account_url: str | None = None, *,
                   managed_identity_client_id: str | None = None) -> BlobServiceClient:
    """From a connection string (local, tests) or an account URL + managed identity (Azure)."""
    if connection_string:
        endpoint = BlobServiceClient.from_connection_string(connection_string).primary_endpoint   # no request
        return BlobServiceClient.from_connection_string(connection_string, **_RETRY, **_environment_read_once(endpoint))
    if account_url:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(managed_identity_client_id=managed_identity_client_id)
        endpoint = BlobServiceClient(account_url).primary_endpoint
        return BlobServiceClient(account_url, credential=credential, **_RETRY, **_environment_read_once(endpoint))
    raise ValueError("set AZURE_STORAGE_CONNECTION_STRING (local) or AZURE_STORAGE_ACCOUNT_URL (Azure)")


def _environment_read_once(endpoint: str) -> dict[str, Any]:
    """The client options that give every request to the account's endpoint what `requests` would
    read from the environment for it: the proxies (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY) and the CA
    bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE), read now instead of on every request (scanning
    the environment cost 0.3 ms of CPU an upload; docs/decisions.md). The retry policy keeps to the
    primary endpoint (retry_to_secondary is off), so its host is the only one. A .netrc entry for
    the host, which requests would also read per request and send as Basic credentials: then
    nothing changes (empty options, the SDK's own transport).

    Read by requests itself (`Session.merge_environment_settings`, what it runs per request),
    so its rules apply as they are, and no environment variable is named here (only
    settings.py reads the environment for txmetrics' own settings)."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from requests.utils import get_netrc_auth

    if get_netrc_auth(endpoint) is not None:
        return {}
    with requests.Session() as session:
        read = session.merge_environment_settings(endpoint, {}, None, None, None)
    options: dict[str, Any] = {"transport": RequestsTransport(use_env_settings=False, connection_verify=read["verify"],
                                                              **_TRANSPORT)}
    if read["proxies"]:
        options["proxies"] = dict(read["proxies"])
    return options


ARCHIVE_TIER = "Archive"           # a blob there cannot be read until rehydrated


class BlobArchive:
    def __init__(self, service: BlobServiceClient, container: str) -> None:
        self.service = service
        self.container_name = container
        self._container: ContainerClient = service.get_container_client(container)
        self._container_checked = False

    def exists(self) -> bool:
        """Whether the container exists."""
        return bool(self._container.exists())

    def has(self, path: str) -> bool:
        """Whether the blob exists."""
        return bool(self._container.get_blob_client(path).exists())

    def ensure_container(self) -> None:
        """Create the container unless it exists. A client that may write blobs but not create
        containers (the function's identity holds Blob Data Contributor on this container
        only; a container SAS) gets 403 for the create even when the container is there: then
        the container is taken to exist (Pulumi makes it), and an upload says so if it does not."""
        if self._container_checked:
            return
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass
        except HttpResponseError as exc:
            if exc.status_code != 403:
                raise
        self._container_checked = True

    def upload(self, path: str, data: bytes) -> None:
        """Idempotent: the same path is overwritten, so a retry never adds a file."""
        self.ensure_container()
        try:
            self._container.upload_blob(path, data, overwrite=True)
        except ResourceNotFoundError:
            # container deleted behind our back (e.g. emulator restarted in memory): recreate once
            self._container_checked = False
            self.ensure_container()
            self._container.upload_blob(path, data, overwrite=True)

    def download(self, path: str) -> bytes:
        return bytes(self._container.download_blob(path).readall())

    def download_unless_archived(self, path: str) -> bytes | None:
        """The blob's bytes, or None when it is in the archive tier (409 BlobArchived: it
        must be rehydrated first)."""
        try:
            return self.download(path)
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) == "BlobArchived":
                return None
            raise

    def delete(self, path: str, *, missing_ok: bool = True) -> None:
        """Delete a blob; one already gone is fine unless `missing_ok` is False."""
        if not missing_ok:
            self._container.delete_blob(path)
            return
        with contextlib.suppress(ResourceNotFoundError):
            self._container.delete_blob(path)

    def set_tier(self, path: str, tier: str, *, rehydrate_priority: str | None = None) -> None:
        """Move a blob to the Hot, Cool, Cold or Archive tier; out of Archive, Azure rehydrates
        it at `rehydrate_priority` (Standard: up to 15 hours, High: under 1 hour)."""
        blob = self._container.get_blob_client(path)
        if rehydrate_priority is None:
            blob.set_standard_blob_tier(tier)
        else:
            blob.set_standard_blob_tier(tier, rehydrate_priority=RehydratePriority(rehydrate_priority))

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        for b in self._container.list_blobs(name_starts_with=prefix or None):
            yield BlobInfo(name=b.name, size=int(b.size), last_modified=b.last_modified,
                           tier=str(b.blob_tier) if b.blob_tier else None)
