"""A local HTTP endpoint speaking just enough of Cloud Run Admin API v2 (and Secret Manager v1).

Neither service has an emulator. The providers' official clients, given REST transport,
anonymous credentials and this endpoint (`FakeCloudRun.client_kwargs`), send here exactly what
they would send to Google, so the tests see the real requests: paths, bodies, update masks.
The answers are the minimum the providers need, not a model of the services.

* Cloud Run (`FakeCloudRun`) services (``/v2/projects/*/locations/*/services...``): list (paged when
  ``page_size`` is set), create (409 if present), get, patch honouring ``updateMask`` (and a
  stale ``etag``: 409), delete (404 if absent), and get of a revision. Every deployment (create,
  or a patch that touches ``template``) makes a revision; it becomes ready, or fails when
  `fail_next_revision` was called (traffic then stays on the previous ready revision, the
  operation ends with an error, and the service's conditions say why, as Cloud Run does).
  Some server defaults are filled in, as Cloud Run does: the default compute service account,
  resource limits, ``cpu_idle`` when no resources were sent.
* Operations (``/v2/projects/*/locations/*/operations/*``): done at once, or after
  ``operation_polls`` polls.
* Secret Manager (`FakeSecretManager`, ``/v1/projects/*/secrets``): list (paged when
  ``page_size`` is set); anything else, ``:access`` included, is recorded and answered 404, so
  tests can prove it was never asked.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"
DEFAULT_ACCOUNT = "123456789012-compute@developer.gserviceaccount.com"
DEFAULT_LIMITS = {"cpu": "1000m", "memory": "512Mi"}
# Output-only Service fields (camelCase, as on the wire): create ignores them.
OUTPUT_ONLY = {"uid", "generation", "createTime", "updateTime", "terminalCondition", "conditions", "etag",
               "latestReadyRevision", "latestCreatedRevision", "trafficStatuses", "uri", "urls", "reconciling",
               "observedGeneration", "creator", "lastModifier"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]


class FakeEndpoint:
    """A local HTTP server that records every request and answers it with `answer`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.page_size: int | None = None  # list pages of this many
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                url = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                request = Request(self.command, url.path, query, body)
                with outer._lock:
                    outer.requests.append(request)
                    status, reply = outer.answer(request)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: close() (shutdown) waits for one.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def client_kwargs(self) -> dict[str, Any]:
        """What the providers pass to the official clients to reach this endpoint."""
        return {"transport": "rest", "credentials": AnonymousCredentials(),
                "client_options": ClientOptions(api_endpoint=self.endpoint)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, request: Request) -> tuple[int, dict]:
        raise NotImplementedError

    def _list(self, request: Request, key: str, items: list[dict]) -> tuple[int, dict]:
        start = int(request.query.get("pageToken") or 0)
        size = self.page_size or len(items) or 1
        page: dict[str, Any] = {key: items[start:start + size]}
        if start + size < len(items):
            page["nextPageToken"] = str(start + size)
        return 200, page


class FakeSecretManager(FakeEndpoint):
    """Secret Manager v1: list secrets (metadata). Anything else is recorded and answered 404."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []  # names, projects/<p>/secrets/<id>

    def answer(self, request: Request) -> tuple[int, dict]:
        if request.method == "GET" and request.path.startswith("/v1/projects/") and request.path.endswith("/secrets"):
            parent = request.path.removeprefix("/v1/")
            return self._list(request, "secrets", [{"name": n, "replication": {"automatic": {}}}
                                                   for n in sorted(self.secrets) if n.startswith(parent + "/")])
        return _error(404, "no such route")


class FakeCloudRun(FakeEndpoint):
    """Cloud Run Admin API v2: services, their revisions and operations (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.services: dict[str, dict] = {}  # by full name
        self.revisions: dict[str, dict] = {}  # by full name
        self.operations: dict[str, dict] = {}
        self.operation_polls = 0  # an operation answers done=false this many times first
        self.edit_after_next_get = False  # someone else changes the service right after it is read
        self._failure: dict[str, str] | None = None
        self._polls: dict[str, int] = {}

    # -- what tests do to the fake service --

    def fail_next_revision(self, reason: str = "HEALTH_CHECK_CONTAINER_ERROR", message: str | None = None) -> None:
        """The next deployment's revision fails (a RevisionReason name, or a CommonReason one)."""
        self._failure = {"reason": reason, "message": message or (
            "Revision '{revision}' is not ready and cannot serve traffic. The user-provided container failed "
            "to start and listen on the port defined provided by the PORT=8080 environment variable within "
            "the allocated timeout.")}

    def mutating(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    # -- routes --

    def answer(self, request: Request) -> tuple[int, dict]:
        if request.path.startswith("/v2/"):
            path = request.path.removeprefix("/v2/")
            if "/operations/" in path:
                return self._operation(path)
            if "/revisions/" in path:
                revision = self.revisions.get(path)
                return (200, revision) if revision else _error(404, f"revision {path} not found")
            return self._services(request, path)
        return _error(404, "no such route")

    def _services(self, request: Request, path: str) -> tuple[int, dict]:
        method, body = request.method, request.body
        if path.endswith("/services") and method == "GET":
            services = sorted((s for n, s in self.services.items() if n.startswith(path + "/")),
                              key=lambda s: s["name"])
            return self._list(request, "services", services)
        if path.endswith("/services") and method == "POST":
            name = f"{path}/{request.query['serviceId']}"
            if name in self.services:
                return _error(409, f"Resource '{request.query['serviceId']}' already exists.")
            service = {key: copy.deepcopy(value) for key, value in body.items() if key not in OUTPUT_ONLY}
            service.update(name=name, uid=f"uid-{len(self.services) + 1}", generation="0")
            self.services[name] = service
            return 200, self._deploy(service)
        service = self.services.get(path)
        if service is None:
            return _error(404, f"Resource '{path.rsplit('/', 1)[-1]}' was not found")
        if method == "GET":
            reply = copy.deepcopy(service)
            if self.edit_after_next_get:
                self.edit_after_next_get = False
                service["etag"] = '"edited-by-hand"'
            return 200, reply
        if method == "PATCH":
            if body.get("etag") and body["etag"] != service["etag"]:
                return _error(409, "etag mismatch: the service was modified")
            mask = [p for p in request.query.get("updateMask", "").split(",") if p]
            assert mask, "headwater always sends an update mask"
            for field in mask:
                _set_path(service, field, _get_path(body, field))
            return 200, self._deploy(service, template="template" in " ".join(mask))
        if method == "DELETE":
            del self.services[path]
            return 200, self._operation_for(path, {**service, "@type": SERVICE_TYPE})
        return _error(404, "no such route")

    def _deploy(self, service: dict, *, template: bool = True) -> dict:
        """A new generation (and revision, when the template changed); the operation that reports it."""
        service["generation"] = str(int(service["generation"]) + 1)
        service["etag"] = f'"{service["uid"]}-{service["generation"]}"'
        # Server defaults, as Cloud Run fills them in.
        spec = service.setdefault("template", {})
        spec.setdefault("serviceAccount", DEFAULT_ACCOUNT)
        for container in spec.get("containers", []):
            resources = container.setdefault("resources", {"cpuIdle": True})
            resources.setdefault("limits", dict(DEFAULT_LIMITS))
        error = None
        if template:
            sid = service["name"].rsplit("/", 1)[-1]
            revision = f"{service['name']}/revisions/{sid}-{int(service['generation']):05d}-abc"
            service["latestCreatedRevision"] = revision
            failure, self._failure = self._failure, None
            if failure is None:
                self.revisions[revision] = {"name": revision, **copy.deepcopy(spec)}
                service["latestReadyRevision"] = revision
                service["terminalCondition"] = {"type": "Ready", "state": "CONDITION_SUCCEEDED"}
                service["conditions"] = [{"type": "RoutesReady", "state": "CONDITION_SUCCEEDED"},
                                         {"type": "ConfigurationsReady", "state": "CONDITION_SUCCEEDED"}]
            else:
                message = failure["message"].format(revision=revision.rsplit("/", 1)[-1])
                key = "revisionReason" if failure["reason"] == "HEALTH_CHECK_CONTAINER_ERROR" else "reason"
                service["terminalCondition"] = {"type": "Ready", "state": "CONDITION_FAILED",
                                                key: failure["reason"], "message": message}
                service["conditions"] = [
                    {"type": "ConfigurationsReady", "state": "CONDITION_FAILED", key: failure["reason"],
                     "message": message},
                    {"type": "RoutesReady", "state": "CONDITION_FAILED", "reason": "REVISION_FAILED",
                     "message": message}]
                error = {"code": 9, "message": message}
        return self._operation_for(service["name"], {**service, "@type": SERVICE_TYPE}, error)

    def _operation_for(self, target: str, response: dict, error: dict | None = None) -> dict:
        parent = target.split("/services/")[0]
        name = f"{parent}/operations/op-{len(self.operations) + 1}"
        operation = {"name": name, "done": True, "metadata": copy.deepcopy(response)}
        if error:
            operation["error"] = error
        else:
            operation["response"] = copy.deepcopy(response)
        self.operations[name] = operation
        self._polls[name] = self.operation_polls
        return self._operation(name)[1]

    def _operation(self, name: str) -> tuple[int, dict]:
        operation = self.operations.get(name)
        if operation is None:
            return _error(404, f"operation {name} not found")
        if self._polls.get(name, 0) > 0:
            self._polls[name] -= 1
            return 200, {"name": name, "done": False, "metadata": operation["metadata"]}
        return 200, operation


def _get_path(document: dict, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return copy.deepcopy(document)


def _set_path(document: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        document = document.setdefault(part, {})
    if value is None:
        document.pop(last, None)  # a masked field absent from the body is cleared
    else:
        document[last] = value


def _error(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": {"code": status, "message": message}}
