"""A local HTTP endpoint speaking just enough of the Storage Transfer API (v1, REST), of Cloud
Storage's bucket IAM and of Pub/Sub's topic IAM for `providers.transfer`.

Storage Transfer has no emulator, and neither emulator has IAM. The official clients, pointed
here (`transfer_client`, `storage_client`, `publisher_client`: REST transport, anonymous
credentials), send exactly what they would send to Google, so tests see the real requests:
paths, query strings, bodies. The answers are the minimum the provider needs, with the checks
that matter done as the real service is documented to do them:

* ``transferJobs.create``: a name in use - by a live *or* a deleted job (deleted jobs keep their
  name for 30 days) - is 409; ``deleteObjectsFromSourceAfterTransfer`` with
  ``deleteObjectsUniqueInSink`` is 400; a notification topic the service agent cannot publish to
  is 403 (checked at create here: the real service may check later - verified only on GCP);
* ``transferJobs.patch``: a mask naming anything but description, transferSpec,
  notificationConfig, loggingConfig, status is 400 (the schedule cannot be updated);
* ``transferJobs.delete`` marks the job DELETED (listed only when asked for DELETED jobs);
* ``setIamPolicy`` (bucket and topic) needs the etag of the current policy (else 412 / 409).
"""

from __future__ import annotations

import base64
import copy
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials

PROJECT_NUMBER = "123456789012"
AGENT = f"project-{PROJECT_NUMBER}@storage-transfer-service.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{AGENT}"
STATUSES = {0: "STATUS_UNSPECIFIED", 1: "ENABLED", 2: "DISABLED", 3: "DELETED"}
UPDATABLE = {"description", "transferSpec", "notificationConfig", "loggingConfig", "status",
             "transfer_spec", "notification_config", "logging_config"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]


class FakeStorageTransfer:
    def __init__(self, project: str) -> None:
        self.project = project
        self.requests: list[Request] = []
        self.jobs: dict[str, dict[str, Any]] = {}  # name -> TransferJob JSON
        self.bucket_policies: dict[str, dict[str, Any]] = {}
        self.topic_policies: dict[str, dict[str, Any]] = {}
        self.page_size: int | None = None
        self.runs: list[str] = []
        self.disabled = False  # the project has not enabled storagetransfer.googleapis.com
        self._etags = 0
        self._clock = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                body = json.loads(raw) if raw else {}
                url = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                request = Request(self.command, unquote(url.path), query, body)
                with outer._lock:
                    outer.requests.append(request)
                    status, reply = outer.answer(request)
                data = json.dumps(reply).encode() if reply is not None else b""
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    # -- clients pointed here --

    def _options(self) -> dict[str, Any]:
        return {"credentials": AnonymousCredentials(), "client_options": ClientOptions(api_endpoint=self.endpoint)}

    def transfer_client(self) -> Any:
        from google.cloud import storage_transfer_v1

        return storage_transfer_v1.StorageTransferServiceClient(transport="rest", **self._options())

    def storage_client(self) -> Any:
        from google.cloud import storage

        return storage.Client(project=self.project, **self._options())

    def publisher_client(self) -> Any:
        from google.cloud import pubsub_v1

        return pubsub_v1.PublisherClient(transport="rest", **self._options())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what tests set up and look at --

    def add_bucket(self, name: str, bindings: list[dict[str, Any]] | None = None) -> None:
        self.bucket_policies[name] = {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{name}",
                                      "version": 1, "etag": self._new_etag(), "bindings": bindings or []}

    def add_topic(self, topic: str, bindings: list[dict[str, Any]] | None = None) -> None:
        self.topic_policies[topic] = {"version": 1, "etag": self._new_etag(), "bindings": bindings or []}

    def mutating(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET" and ":getIamPolicy" not in r.path]

    def requests_to(self, fragment: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    def live_jobs(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs.values() if status_of(j) != "DELETED"]

    def holds(self, policy: dict[str, Any], role: str, member: str = MEMBER) -> bool:
        return any(b["role"] == role and member in b.get("members", []) and not b.get("condition")
                   for b in policy.get("bindings", []))

    # -- routes --

    def answer(self, request: Request) -> tuple[int, Any]:
        path = request.path
        if path.startswith("/v1/googleServiceAccounts/"):
            return 200, {"accountEmail": AGENT, "subjectId": "112233445566778899"}
        if self.disabled and (path.startswith("/v1/transferJobs") or path.startswith("/v1/googleServiceAccounts")):
            return 403, {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": (
                f"Storage Transfer API has not been used in project {self.project} before or it is disabled."),
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
                             "domain": "googleapis.com",
                             "metadata": {"service": "storagetransfer.googleapis.com"}}]}}
        if path == "/v1/transferJobs" or path.startswith("/v1/transferJobs/"):
            return self._jobs(request, path.removeprefix("/v1/"))
        if path.startswith("/storage/v1/b/") and path.endswith("/iam"):
            return self._bucket_iam(request, path.removeprefix("/storage/v1/b/").removesuffix("/iam"))
        if path.startswith("/storage/v1/b/") and request.method == "GET":  # the client's metadata cache
            name = path.removeprefix("/storage/v1/b/")
            if name in self.bucket_policies:
                return 200, {"kind": "storage#bucket", "name": name, "id": name, "location": "EUROPE-WEST1"}
        if path.startswith("/v1/projects/") and ":" in path:
            return self._topic_iam(request, path.removeprefix("/v1/"))
        return _error(404, "no such route")

    def _jobs(self, request: Request, path: str) -> tuple[int, Any]:
        method, body = request.method, request.body
        if path == "transferJobs" and method == "GET":
            flt = json.loads(request.query["filter"])
            assert flt["projectId"] == self.project
            statuses = {s.upper() for s in flt.get("jobStatuses") or ["ENABLED", "DISABLED", "DELETED"]}
            items = [j for n, j in sorted(self.jobs.items()) if status_of(j) in statuses]
            start = int(request.query.get("pageToken") or 0)
            size = self.page_size or len(items) or 1
            page: dict[str, Any] = {"transferJobs": copy.deepcopy(items[start:start + size])}
            if start + size < len(items):
                page["nextPageToken"] = str(start + size)
            return 200, page
        if path == "transferJobs" and method == "POST":
            job = copy.deepcopy(body)
            name = job.get("name") or f"transferJobs/{len(self.jobs) + 1:020d}"
            if name in self.jobs:
                return _error(409, f"Transfer job {name} already exists.", "ALREADY_EXISTS")
            options = job.get("transferSpec", {}).get("transferOptions", {})
            if options.get("deleteObjectsFromSourceAfterTransfer") and options.get("deleteObjectsUniqueInSink"):
                return _error(400, "deleteObjectsFromSourceAfterTransfer and deleteObjectsUniqueInSink are mutually "
                                   "exclusive.", "INVALID_ARGUMENT")
            topic = job.get("notificationConfig", {}).get("pubsubTopic")
            if topic and not self.holds(self.topic_policies.get(topic, {}), "roles/pubsub.publisher"):
                return _error(403, f"Failed to publish a message to topic {topic}: {AGENT} does not have "
                                   "pubsub.topics.publish permission.", "PERMISSION_DENIED")
            self._clock += 1
            job.update(name=name, status=status_of(job),
                       creationTime=f"2026-11-30T00:00:{self._clock:02d}Z",
                       lastModificationTime=f"2026-11-30T00:00:{self._clock:02d}Z")
            self.jobs[name] = job
            return 200, job
        job = self.jobs.get(path.split(":")[0])
        if job is None or status_of(job) == "DELETED":
            return _error(404, f"Transfer job {path} not found.", "NOT_FOUND")
        if path.endswith(":run") and method == "POST":
            self.runs.append(job["name"])
            return 200, {"name": f"transferOperations/{job['name'].split('/', 1)[1]}-{len(self.runs)}", "done": False}
        if method == "GET":
            return 200, job
        if method == "PATCH":
            mask = [p for p in (body.get("updateTransferJobFieldMask") or "").split(",") if p]
            assert body.get("projectId") == self.project
            if not mask or set(mask) - UPDATABLE:
                return _error(400, f"Invalid update mask {mask}: only description, transfer_spec, notification_config, "
                                   "logging_config and status can be updated.", "INVALID_ARGUMENT")
            for field in mask:
                camel = {"transfer_spec": "transferSpec", "notification_config": "notificationConfig",
                         "logging_config": "loggingConfig"}.get(field, field)
                if camel in body.get("transferJob", {}):
                    job[camel] = copy.deepcopy(body["transferJob"][camel])
                else:
                    job.pop(camel, None)
            return 200, job
        if method == "DELETE":
            job["status"] = "DELETED"
            return 200, {}
        return _error(404, "no such route")

    def _bucket_iam(self, request: Request, bucket: str) -> tuple[int, Any]:
        policy = self.bucket_policies.get(bucket)
        if policy is None:
            return _error(404, "The specified bucket does not exist.")
        if request.method == "GET":
            return 200, policy
        if request.method == "PUT":
            if request.body.get("etag") != policy["etag"]:
                return _error(412, "Precondition Failed")
            self.bucket_policies[bucket] = {**request.body, "etag": self._new_etag()}
            return 200, self.bucket_policies[bucket]
        return _error(404, "no such route")

    def _topic_iam(self, request: Request, path: str) -> tuple[int, Any]:
        topic, _, verb = path.partition(":")
        if topic not in self.topic_policies:
            return _error(404, f"Resource not found (resource={topic}).", "NOT_FOUND")
        if verb == "getIamPolicy":
            return 200, self.topic_policies[topic]
        if verb == "setIamPolicy" and request.method == "POST":
            new = request.body["policy"]
            if new.get("etag") != self.topic_policies[topic]["etag"]:
                return _error(409, "There were concurrent policy changes.", "ABORTED")
            self.topic_policies[topic] = {**new, "etag": self._new_etag()}
            return 200, self.topic_policies[topic]
        return _error(404, "no such route")

    def _new_etag(self) -> str:
        self._etags += 1
        return base64.b64encode(f"etag-{self._etags}".encode()).decode()


def status_of(job: dict[str, Any]) -> str:
    """A job's status by name (the REST client sends enums as numbers: ``$alt=json;enum-encoding=int``)."""
    status = job.get("status", "ENABLED")
    return STATUSES.get(status, str(status)) if isinstance(status, int) else status


def _error(status: int, message: str, status_name: str | None = None) -> tuple[int, dict]:
    error: dict[str, Any] = {"code": status, "message": message}
    if status_name:
        error["status"] = status_name
    return status, {"error": error}
