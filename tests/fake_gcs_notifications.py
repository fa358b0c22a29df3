"""A local HTTP endpoint speaking just enough of Cloud Storage's JSON API (buckets, notification
configs, the service agent) and Pub/Sub's REST API (topic IAM policies) for
`providers.storage_notifications`.

Neither emulator has these (gcp-storage-emulator answers notification configs with 501, the
Pub/Sub emulator answers IAM with 501). The official clients, pointed here (`storage_client`,
`publisher_client`: REST transport, anonymous credentials), send exactly what they would send to
Google, so tests see the real requests: paths, query strings, bodies. The answers are the
minimum the provider needs, with the two checks that matter to it done as Google does them:

* creating a notification config needs the project's Cloud Storage service agent to hold
  ``roles/pubsub.publisher`` on the topic (else 403, Google's message);
* ``setIamPolicy`` needs the etag of the current policy (else 409 ABORTED); every change makes
  a new etag. `change_policy_behind_the_back` simulates a concurrent writer.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials

SERVICE_AGENT = "service-123456789@gs-project-accounts.iam.gserviceaccount.com"
PUBLISHER = "roles/pubsub.publisher"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]


class FakeGcsNotifications:
    def __init__(self, project: str) -> None:
        self.project = project
        self.requests: list[Request] = []
        self.buckets: dict[str, dict[str, Any]] = {}  # name -> bucket resource
        self.configs: dict[str, dict[str, dict[str, Any]]] = {}  # bucket -> id -> config resource
        self.policies: dict[str, dict[str, Any]] = {}  # topic path -> policy (JSON, etag included)
        self.fail_next: list[tuple[str, int]] = []  # (path substring, status): answer once with it
        self._concurrent_change: str | None = None
        self._ids = 0
        self._etags = 0
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
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    # -- clients pointed here --

    def storage_client(self) -> Any:
        from google.cloud import storage

        return storage.Client(project=self.project, credentials=AnonymousCredentials(),
                              client_options=ClientOptions(api_endpoint=self.endpoint))

    def publisher_client(self) -> Any:
        from google.cloud import pubsub_v1

        return pubsub_v1.PublisherClient(transport="rest", credentials=AnonymousCredentials(),
                                         client_options=ClientOptions(api_endpoint=self.endpoint))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what tests set up --

    def add_bucket(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.buckets[name] = {"kind": "storage#bucket", "name": name, "id": name, "labels": labels or {},
                              "location": "EUROPE-WEST1", "storageClass": "STANDARD",
                              "metageneration": "1", "etag": "CAE="}
        self.configs.setdefault(name, {})

    def add_config(self, bucket: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._store_config(bucket, body)

    def add_topic(self, topic: str, bindings: list[dict[str, Any]] | None = None) -> None:
        self.policies[topic] = {"version": 1, "etag": self._new_etag(), "bindings": bindings or []}

    def change_policy_behind_the_back(self, topic: str) -> None:
        """Between the next getIamPolicy of ``topic`` and its setIamPolicy, someone else writes it."""
        self._concurrent_change = topic

    def requests_to(self, fragment: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    def holds_publisher(self, topic: str, member: str = f"serviceAccount:{SERVICE_AGENT}") -> bool:
        return any(b["role"] == PUBLISHER and member in b.get("members", []) and not b.get("condition")
                   for b in self.policies.get(topic, {}).get("bindings", []))

    # -- routes --

    def answer(self, request: Request) -> tuple[int, Any]:
        for i, (fragment, status) in enumerate(self.fail_next):
            if fragment in request.path:
                del self.fail_next[i]
                return _error(status, "injected failure")
        path = request.path
        if path.startswith("/storage/v1/"):
            return self._storage(request, path.removeprefix("/storage/v1"))
        if path.startswith("/v1/projects/") and ":" in path:
            return self._iam(request, path.removeprefix("/v1/"))
        return _error(404, "no such route")

    def _storage(self, request: Request, path: str) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if request.method == "GET" and parts == ["b"]:
            return 200, {"kind": "storage#buckets", "items": sorted(self.buckets.values(), key=lambda b: b["name"])}
        if request.method == "GET" and parts[0] == "projects" and parts[2:] == ["serviceAccount"]:
            return 200, {"kind": "storage#serviceAccount", "email_address": SERVICE_AGENT}
        if parts[0] == "b" and len(parts) >= 3 and parts[2] == "notificationConfigs":
            bucket = parts[1]
            if bucket not in self.buckets:
                return _error(404, "The specified bucket does not exist.")
            if request.method == "GET" and len(parts) == 3:
                return 200, {"kind": "storage#notifications", "items": list(self.configs[bucket].values())}
            if request.method == "POST" and len(parts) == 3:
                topic = request.body.get("topic", "").removeprefix("//pubsub.googleapis.com/")
                if topic not in self.policies:
                    return _error(404, f"Topic {topic} not found")
                if not self.holds_publisher(topic):
                    return _error(403, f"The service account '{SERVICE_AGENT}' does not have permission to "
                                       f"publish messages to to the Cloud Pub/Sub topic '{topic}'.")
                return 200, self._store_config(bucket, request.body)
            if request.method == "DELETE" and len(parts) == 4:
                if self.configs[bucket].pop(parts[3], None) is None:
                    return _error(404, "Not Found")
                return 204, None
        return _error(404, "no such route")

    def _store_config(self, bucket: str, body: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        config = {**body, "id": str(self._ids), "kind": "storage#notification", "etag": str(self._ids),
                  "selfLink": f"https://www.googleapis.com/storage/v1/b/{bucket}/notificationConfigs/{self._ids}"}
        self.configs.setdefault(bucket, {})[config["id"]] = config
        return config

    def _iam(self, request: Request, path: str) -> tuple[int, Any]:
        topic, _, verb = path.partition(":")
        if topic not in self.policies:
            return _error(404, f"Resource not found (resource={topic}).", "NOT_FOUND")
        if verb == "getIamPolicy" and request.method == "GET":
            policy = self.policies[topic]
            if self._concurrent_change == topic:
                self._concurrent_change = None
                # Answered with the current policy, then changed by "someone else" at once.
                answer = json.loads(json.dumps(policy))
                policy["bindings"] = [*policy["bindings"], {"role": "roles/pubsub.viewer",
                                                            "members": ["user:someone@example.com"]}]
                policy["etag"] = self._new_etag()
                return 200, answer
            return 200, policy
        if verb == "setIamPolicy" and request.method == "POST":
            new = request.body["policy"]
            if new.get("etag") != self.policies[topic]["etag"]:
                return _error(409, "There were concurrent policy changes. Please retry the whole read-modify-write "
                                   "with exponential backoff.", "ABORTED")
            self.policies[topic] = {**new, "etag": self._new_etag()}
            return 200, self.policies[topic]
        return _error(404, "no such route")

    def _new_etag(self) -> str:
        self._etags += 1
        return base64.b64encode(f"etag-{self._etags}".encode()).decode()


def _error(status: int, message: str, status_name: str | None = None) -> tuple[int, dict]:
    error: dict[str, Any] = {"code": status, "message": message}
    if status_name:
        error["status"] = status_name
    return status, {"error": error}
