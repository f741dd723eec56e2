"""The blob client reads the environment's proxy and CA settings once (adapters/blob.py,
`_environment_read_once`); every request must still reach `requests` with what it would have
read itself on each request: same proxies, same verification, same timeouts, same headers."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from azure.storage.blob import BlobServiceClient, ExponentialRetry
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter

from txmetrics.adapters import blob

_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_ENDPOINTS = {
    "http://127.0.0.1:10000/devstoreaccount1":
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={_KEY};"
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
    "https://acct.blob.core.windows.net/":
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={_KEY};EndpointSuffix=core.windows.net",
}


class _Sent(Exception):
    """Raised by the adapter instead of sending: not an AzureError, so no retry."""


def _capturing(seen: list[dict[str, Any]]) -> Any:
    """HTTPAdapter.send that records what requests hands the adapter, and sends nothing."""
    def send(self: HTTPAdapter, request: Any, **kwargs: Any) -> Any:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("x-ms-date", "x-ms-client-request-id")
                   and not (k.lower() == "authorization" and v.startswith("SharedKey"))}   # these vary per request
        seen.append({"url": request.url, "method": request.method, "body": request.body, "headers": headers,
                     **kwargs})
        raise _Sent
    return send


@pytest.fixture
def sent() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    with mock.patch.object(HTTPAdapter, "send", _capturing(seen)):
        yield seen


def _what_requests_gets(client: BlobServiceClient, seen: list[dict[str, Any]]) -> dict[str, Any]:
    seen.clear()
    with pytest.raises(_Sent):
        client.get_container_client("c").upload_blob("a/b.parquet", b"x" * 10, overwrite=True)
    (request,) = seen
    return request


_PROXY = st.sampled_from(["http://proxy.example:3128", "https://user:pw@proxy.example:8443", "socks5://p:1080",
                          "proxy.example:3128", ""])
_NO_PROXY = st.sampled_from(["127.0.0.1", "localhost,127.0.0.1:10000", ".core.windows.net", "blob.core.windows.net",
                             "acct.blob.core.windows.net", "*", "10.0.0.0/8", "example.com", "127.0.0.0/8", ""])
_ENVIRONMENT = st.fixed_dictionaries({}, optional={
    "HTTP_PROXY": _PROXY, "HTTPS_PROXY": _PROXY, "ALL_PROXY": _PROXY, "https_proxy": _PROXY, "http_proxy": _PROXY,
    "NO_PROXY": _NO_PROXY, "no_proxy": _NO_PROXY,
    "REQUESTS_CA_BUNDLE": st.sampled_from(["/etc/ssl/certs/ca-certificates.crt", ""]),
    "CURL_CA_BUNDLE": st.sampled_from(["/tmp/curl-ca.pem", ""])})


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.lower().endswith("_proxy") and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC")}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(_ENDPOINTS)), _ENVIRONMENT)
def test_requests_get_what_they_would_read_from_the_environment(endpoint: str, environment: dict[str, str]) -> None:
    """Proxies (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY in either case), the CA bundle, timeouts and
    headers as the SDK's own transport, which reads the environment per request, hands them on."""
    seen: list[dict[str, Any]] = []
    connection_string = _ENDPOINTS[endpoint]
    with mock.patch.dict(os.environ, {**_clean_environment(), **environment}, clear=True), \
            mock.patch.object(HTTPAdapter, "send", _capturing(seen)):
        ours = _what_requests_gets(blob.service_client(connection_string), seen)
        sdk = _what_requests_gets(BlobServiceClient.from_connection_string(connection_string, **blob._RETRY), seen)
    assert ours == sdk


def test_a_proxy_in_the_environment_is_used_and_no_proxy_bypasses_it(sent: list[dict[str, Any]],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    connection_string = _ENDPOINTS["https://acct.blob.core.windows.net/"]
    assert _what_requests_gets(blob.service_client(connection_string), sent)["proxies"]["https"] == \
        "http://proxy.example:3128"
    monkeypatch.setenv("NO_PROXY", ".core.windows.net")
    assert "https" not in _what_requests_gets(blob.service_client(connection_string), sent)["proxies"]


def test_a_netrc_entry_keeps_the_sdk_s_transport(sent: list[dict[str, Any]], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """requests sends a .netrc entry for the host as Basic credentials, read per request: then the
    SDK's own transport is kept, and it still does."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine acct.blob.core.windows.net login u password p\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    connection_string = _ENDPOINTS["https://acct.blob.core.windows.net/"]
    assert blob._environment_read_once("https://acct.blob.core.windows.net/") == {}
    request = _what_requests_gets(blob.service_client(connection_string), sent)
    assert request["headers"]["Authorization"].startswith("Basic ")


def test_the_transport_is_configured_as_the_sdk_s_own() -> None:
    """Timeouts, block size, verification: what the SDK builds from the same options."""
    connection_string = _ENDPOINTS["https://acct.blob.core.windows.net/"]
    with mock.patch.dict(os.environ, _clean_environment(), clear=True):     # no CA bundle named
        ours = blob.service_client(connection_string)._pipeline._transport
        sdk = BlobServiceClient.from_connection_string(connection_string, **blob._RETRY)._pipeline._transport
    assert vars(ours.connection_config) == vars(sdk.connection_config)
    assert type(ours) is type(sdk) and ours._use_env_settings is False and sdk._use_env_settings is True


@contextlib.contextmanager
def _archive_behind(handler: type[BaseHTTPRequestHandler], caplog: pytest.LogCaptureFixture
                    ) -> Iterator[tuple[blob.BlobArchive, str]]:
    """A BlobArchive on container "c" of a local stand-in server answering with `handler`, the
    SDK's HTTP records quiet as function_app sets them, INFO captured, no backoff between
    retries; and the account's URL. The server is shut down and its socket closed after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/devstoreaccount1"
        archive = blob.BlobArchive(blob.service_client(
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={_KEY};BlobEndpoint={url};"), "c")
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        caplog.set_level(logging.INFO)
        with mock.patch.object(ExponentialRetry, "get_backoff_time", return_value=0):
            yield archive, url
    finally:
        server.shutdown()
        server.server_close()


def test_a_retried_upload_leaves_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """function_app keeps the SDK's HTTP records (INFO) out of the host's logs; a request retried
    and then through (a 503 here) still leaves one WARNING, with its status and no headers."""
    puts: list[str] = []

    class Busy(BaseHTTPRequestHandler):      # the container is there; the first blob PUT gets 503
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            blob_put = "restype=container" not in self.path
            if blob_put:
                puts.append(self.path)
            status = 503 if blob_put and len(puts) == 1 else 201
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.send_header("ETag", '"0x1"')
            self.send_header("Last-Modified", "Sun, 29 Nov 2026 00:00:00 GMT")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with _archive_behind(Busy, caplog) as (archive, url):
        archive.upload("a/b.parquet", b"x")
    assert len(puts) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"blob request retried (1): PUT {url}/c/a/b.parquet -> 503"], warnings


@pytest.mark.parametrize("operation, method, query", [
    ("download", "GET", ""), ("list", "GET", "restype=container&comp=list"), ("delete", "DELETE", ""),
    ("set_tier", "PUT", "comp=tier"), ("exists", "GET", "restype=container"),
])
def test_every_retried_blob_request_leaves_a_warning(operation: str, method: str, query: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Not only uploads: the timers and the CLI list, download, delete and re-tier blobs through the
    same client, and a retry of any of them leaves one WARNING (`_LoggedRetry`). The stand-in answers
    503 to the first request, then 404 (not retried), which the operation raises or, for a delete,
    takes as already gone."""
    from azure.core.exceptions import ResourceNotFoundError

    seen: list[tuple[str, str]] = []

    class BusyThenGone(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.path))
            self.send_response(503 if len(seen) == 1 else 404)
            self.send_header("Content-Length", "0")
            self.send_header("x-ms-error-code", "ServerBusy" if len(seen) == 1 else "BlobNotFound")
            self.end_headers()

        do_GET = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, *args: Any) -> None:
            pass

    with _archive_behind(BusyThenGone, caplog) as (archive, url):
        calls = {"download": lambda: archive.download("a/b.parquet"), "list": lambda: list(archive.list("a/")),
                 "delete": lambda: archive.delete("a/b.parquet"), "set_tier": lambda: archive.set_tier("a/b.parquet", "Cool"),
                 "exists": archive.exists}
        try:
            calls[operation]()
        except ResourceNotFoundError:
            assert operation in ("download", "list", "set_tier")
    assert [m for m, _ in seen] == [method, method] and all(query in path for _, path in seen), seen
    path = "/c" if operation in ("list", "exists") else "/c/a/b.parquet"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"blob request retried (1): {method} {url}{path} -> 503"], warnings
