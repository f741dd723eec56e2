"""Local HTTP stand-ins for the two Azure endpoints the deployment steps talk to, built from
documented behaviour (sources next to each), with the unhappy paths scriptable:

* `FlexScm`: a Flex Consumption app's SCM (Kudu) site.
  - `POST /api/publish?RemoteBuild=false` takes the zip and answers 202 (or 200) with the
    deployment id as body, "3f394416-b25a-4e42-aa01-02a1f011772e" (Azure/azure-dev#3658, from the
    Functions team); before the deployment has finished, and also for one that later fails (Endjin,
    Publish-FlexConsumptionFunctionApp: "The Flex Consumption plan returns HTTP 200 while a
    deployment runs, and also after a deployment fails"; microsoft/azure-pipelines-tasks#22316).
  - it refuses with 403 until access changes apply, and with 400 carrying a
    `BlobUploadFailedException` (storage's 403) until a new role assignment propagates (Endjin).
  - `GET /api/deployments/latest` returns {id, status, status_text, complete, log_url, ...},
    status -1 Cancelled, 0 Pending, 1 Building, 2 Deploying, 3 Failed, 4 Success, 5 Conflict,
    6 PartialSuccess (Azure/azure-dev#3658); 404 while no deployment exists.
  - `GET <log_url>` returns the log entries [{log_time, id, message, type}] (Kudu's deployment log).
* `ArmStandIn`: Azure Resource Manager for one PostgreSQL flexible server: GET / PATCH the server
  (properties.network.publicNetworkAccess), PUT / DELETE firewall rules. Writes are asynchronous:
  201/202 with an `Azure-AsyncOperation` URL polled until Succeeded, or a `Location` URL answering
  202 until done (Learn, "Track asynchronous Azure operations"); a fresh server refuses a concurrent
  write with 409 ServerIsBusy (Azure/azure-postgresql#134).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    stand_in: Any

    def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.stand_in.lock:
            self.stand_in.requests.append(Recorded(self.command, self.path, dict(self.headers), body))
            status, answer, headers = self.stand_in.respond(self.command, self.path, body)
        self._answer(status, answer, headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serve(stand_in: Any) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"stand_in": stand_in})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class FlexScm:
    """publish: the answers to successive POSTs (the last one repeats), as (status, body).
    statuses: the status of the new deployment at successive polls (the last one repeats).
    previous: the deployment /latest shows before the publish (None: 404, no deployment yet)."""
    publish: list[tuple[int, Any]] = field(default_factory=lambda: [(202, '"dep-1"')])
    statuses: list[int] = field(default_factory=lambda: [4])
    status_text: str = ""
    log: list[str] = field(default_factory=list)
    previous: dict[str, Any] | None = None
    new_id: str = "dep-1"
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base: str = ""
    _posts: int = 0
    _polls_after_publish: int = 0

    def respond(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if method == "POST" and path.startswith("/api/publish"):
            status, answer = self.publish[min(self._posts, len(self.publish) - 1)]
            self._posts += 1
            return status, answer.encode() if isinstance(answer, str) else answer, {}
        if method == "GET" and path == "/api/deployments/latest":
            if not self.accepted:
                return (200, self.previous, {}) if self.previous else (404, {"Message": "no deployment"}, {})
            status = self.statuses[min(self._polls_after_publish, len(self.statuses) - 1)]
            self._polls_after_publish += 1
            return 200, {
                "id": self.new_id, "status": status, "status_text": self.status_text if status == 3 else "",
                "deployer": "OneDeploy", "complete": status in (3, 4), "active": status == 4,
                "url": f"{self.base}/api/deployments/{self.new_id}",
                "log_url": f"{self.base}/api/deployments/{self.new_id}/log", "site_name": "app"}, {}
        if method == "GET" and path == f"/api/deployments/{self.new_id}/log":
            return 200, [{"log_time": "2026-11-28T10:00:00Z", "id": str(i), "message": m, "type": 0}
                         for i, m in enumerate(self.log)], {}
        return 404, {"Message": f"no route {method} {path}"}, {}

    @property
    def accepted(self) -> bool:
        """Has a POST been answered 200/202 yet?"""
        return any(status in (200, 202) for status, _ in self.publish[:self._posts])

    @property
    def posts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]

    @property
    def polls(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "GET" and r.path == "/api/deployments/latest"]


SERVER_ID = "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.DBforPostgreSQL/flexibleServers/pg1"


@dataclass
class ArmStandIn:
    public: str = "Disabled"
    rules: dict[str, dict[str, str]] = field(default_factory=dict)
    busy_answers: int = 1                 # the first write meets ServerIsBusy this many times
    fail_operation: str | None = None     # "PATCH" / "PUT" / "DELETE": that async operation ends Failed
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base: str = ""
    _ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)
    states: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)   # (public, rules) after each change

    def respond(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        route, _, _query = path.partition("?")
        if route.startswith("/operations/"):
            op = self._ops[route.rsplit("/", 1)[-1]]
            op["polls"] += 1
            if op["polls"] < 2:                                   # in progress at the first poll
                return (202, None, {"Retry-After": "0"}) if op["kind"] == "location" else \
                    (200, {"status": "InProgress"}, {"Retry-After": "0"})
            if op["outcome"] == "Failed":
                return 200, {"status": "Failed", "error": {"code": "InternalServerError",
                                                           "message": "the operation failed"}}, {}
            if not op["applied"]:
                op["apply"]()
                op["applied"] = True
            return (200, None, {}) if op["kind"] == "location" else (200, {"status": "Succeeded"}, {})
        if route == SERVER_ID and method == "GET":
            return 200, {"id": SERVER_ID, "properties": {"network": {"publicNetworkAccess": self.public}}}, {}
        if method in ("PATCH", "PUT", "DELETE") and self.busy_answers > 0:
            self.busy_answers -= 1
            return 409, {"error": {"code": "ServerIsBusy", "message": "Server is busy with another operation. "
                                                                       "Please try your operation later."}}, \
                {"Retry-After": "0"}
        if route == SERVER_ID and method == "PATCH":
            wanted = json.loads(body)["properties"]["network"]["publicNetworkAccess"]
            return self._async(method, lambda: self._set(public=wanted))
        if route == f"{SERVER_ID}/firewallRules" and method == "GET":
            # Firewall Rules - List By Server (learn.microsoft.com/rest/api/postgresql/flexibleserver/
            # firewall-rules/list-by-server): {"value": [rule, ...], "nextLink": ...}; one rule a page
            # here, so that a caller that ignores nextLink misses rules
            names = sorted(self.rules)
            page = int(_query.partition("page=")[2] or 0) if "page=" in _query else 0
            value = [{"name": n, "properties": self.rules[n]} for n in names[page:page + 1]]
            more = {"nextLink": f"{self.base}{route}?{_query.split('&page=')[0]}&page={page + 1}"} \
                if page + 1 < len(names) else {}
            return 200, {"value": value, **more}, {}
        if route.startswith(f"{SERVER_ID}/firewallRules/"):
            name = route.rsplit("/", 1)[-1]
            if method == "PUT":
                props = json.loads(body)["properties"]
                return self._async(method, lambda: self._set(rule=(name, props)))
            if method == "GET" and name in self.rules:
                return 200, {"name": name, "properties": self.rules[name]}, {}
            if method == "DELETE":
                return self._async(method, lambda: self._set(drop=name), kind="location")
        return 404, {"error": {"code": "NotFound", "message": f"{method} {route}"}}, {}

    def _async(self, method: str, apply: Any, kind: str = "azure-async") -> tuple[int, Any, dict[str, str]]:
        op_id = str(next(self._ids))
        self._ops[op_id] = {"apply": apply, "applied": False, "polls": 0, "kind": kind,
                            "outcome": "Failed" if self.fail_operation == method else "Succeeded"}
        header = "Location" if kind == "location" else "Azure-AsyncOperation"
        return 202, None, {header: f"{self.base}/operations/{op_id}", "Retry-After": "0"}

    def _set(self, public: str | None = None, rule: tuple[str, dict[str, str]] | None = None,
             drop: str | None = None) -> None:
        if public is not None:
            self.public = public
        if rule is not None:
            self.rules[rule[0]] = rule[1]
        if drop is not None:
            self.rules.pop(drop, None)
        self.states.append((self.public, tuple(sorted(self.rules))))
