"""Local endpoints speaking just enough of every API `providers.iam` writes policies through.

No emulator implements IAM (the Pub/Sub emulator answers getIamPolicy with 501; the Storage and
BigQuery emulators have none) and Data Catalog, data policies and Resource Manager have no
emulator at all. The provider's official clients, pointed here (`FakeIam.clients`: REST
transport and anonymous credentials for the HTTP APIs, a gRPC channel for Data Catalog's
PolicyTagManager, which has no REST transport in google-cloud-datacatalog 3.x), send exactly what
they would send to Google, so tests see the real requests: paths, query strings, headers,
bodies, update masks. The answers are the minimum the provider needs, with the checks that
matter to it done as Google does them:

* every policy write must carry the etag of the current policy, else it is refused as the
  service refuses it (Pub/Sub, data policies, Resource Manager: 409 ABORTED; Cloud Storage:
  412; BigQuery's dataset patch: 412 on a stale ``If-Match``; Data Catalog: gRPC ABORTED); each
  change makes a new etag. `change_behind_the_back` makes "someone else" write a policy between
  the provider's read and its write;
* a project ``setIamPolicy`` changes only what its ``updateMask`` names (default
  ``bindings,etag``);
* a dataset's access entries come back with the legacy role of the three IAM roles that have one
  (READER / WRITER / OWNER), as BigQuery answers;
* the ledger object honours ``ifGenerationMatch`` (412 when it does not match; 0 = must not exist).

Routes: Cloud Storage JSON API (bucket IAM, object media download, multipart upload), BigQuery v2
(datasets get/patch, tables get/setIamPolicy), Pub/Sub v1 (topics and subscriptions IAM),
BigQuery data policies v1 (IAM), Resource Manager v3 (projects get, get/setIamPolicy); gRPC
``google.cloud.datacatalog.v1.PolicyTagManager`` (ListTaxonomies, ListPolicyTags, Get/SetIamPolicy).
"""

from __future__ import annotations

import base64
import email
import itertools
import json
import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import datacatalog_v1 as dc
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import json_format

PROJECT_NUMBER = "123456789"
LEGACY = {"roles/bigquery.dataViewer": "READER", "roles/bigquery.dataEditor": "WRITER",
          "roles/bigquery.dataOwner": "OWNER"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


class FakeIam:
    def __init__(self, project: str, region: str) -> None:
        self.project = project
        self.region = region
        self.requests: list[Request] = []
        self.grpc_calls: list[tuple[str, Any]] = []
        self.policies: dict[str, dict[str, Any]] = {}  # resource -> IAM policy in JSON form (etag included)
        self.datasets: dict[str, dict[str, Any]] = {}  # dataset id -> dataset resource
        self.objects: dict[tuple[str, str], tuple[bytes, int]] = {}  # (bucket, name) -> (data, generation)
        self.taxonomies: dict[str, dict[str, str]] = {}  # taxonomy server name -> {display_name, tags: {...}}
        self._behind: set[str] = set()
        self._ledger_race: dict[str, Any] | None = None
        self._etags = itertools.count(1)
        self._generations = itertools.count(1000)
        self._lock = threading.RLock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                url = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                if url.path.startswith("/upload/"):
                    body: Any = raw
                else:
                    body = json.loads(raw) if raw else {}
                request = Request(self.command, unquote(url.path), query, body, headers)
                with outer._lock:
                    outer.requests.append(request)
                    status, reply, extra = outer.answer(request)
                data = reply if isinstance(reply, bytes) else (json.dumps(reply).encode() if reply is not None else b"")
                self.send_response(status)
                self.send_header("content-type", "application/octet-stream" if isinstance(reply, bytes)
                                 else "application/json")
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        methods = {
            "ListTaxonomies": (dc.ListTaxonomiesRequest.deserialize, dc.ListTaxonomiesResponse.serialize,
                               self._list_taxonomies),
            "ListPolicyTags": (dc.ListPolicyTagsRequest.deserialize, dc.ListPolicyTagsResponse.serialize,
                               self._list_policy_tags),
            "GetIamPolicy": (iam_policy_pb2.GetIamPolicyRequest.FromString, policy_pb2.Policy.SerializeToString,
                             self._grpc_get_policy),
            "SetIamPolicy": (iam_policy_pb2.SetIamPolicyRequest.FromString, policy_pb2.Policy.SerializeToString,
                             self._grpc_set_policy),
        }
        table = {name: grpc.unary_unary_rpc_method_handler(self._grpc_handler(name, fn), request_deserializer=de,
                                                           response_serializer=ser)
                 for name, (de, ser, fn) in methods.items()}
        self.grpc_server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("google.cloud.datacatalog.v1.PolicyTagManager", table)])
        self.grpc_port = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.grpc_server.start()
        self._channels: list[grpc.Channel] = []

    # -- clients pointed here --

    def clients(self) -> dict[str, Any]:
        """The official clients `IamProvider` takes (``clients=``), each pointed here."""
        from google.cloud import bigquery, bigquery_datapolicies_v1, pubsub_v1, resourcemanager_v3, storage
        from google.cloud.datacatalog_v1.services.policy_tag_manager.transports import (
            PolicyTagManagerGrpcTransport,
        )

        options = ClientOptions(api_endpoint=self.endpoint)
        anonymous = AnonymousCredentials()
        channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self._channels.append(channel)
        return {
            "storage": storage.Client(project=self.project, credentials=anonymous, client_options=options),
            "bigquery": bigquery.Client(project=self.project, credentials=anonymous, client_options=options),
            "publisher": pubsub_v1.PublisherClient(transport="rest", credentials=anonymous, client_options=options),
            "subscriber": pubsub_v1.SubscriberClient(transport="rest", credentials=anonymous, client_options=options),
            "data_policies": bigquery_datapolicies_v1.DataPolicyServiceClient(
                transport="rest", credentials=anonymous, client_options=options),
            "projects": resourcemanager_v3.ProjectsClient(transport="rest", credentials=anonymous,
                                                          client_options=options),
            "policy_tags": dc.PolicyTagManagerClient(transport=PolicyTagManagerGrpcTransport(channel=channel)),
        }

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self.grpc_server.stop(None)
        self.server.shutdown()
        self.server.server_close()

    # -- what tests set up and look at --

    def add_policy(self, resource: str, bindings: list[dict[str, Any]] | None = None,
                   audit_configs: list[dict[str, Any]] | None = None) -> None:
        policy: dict[str, Any] = {"version": 1, "etag": self._etag(), "bindings": bindings or []}
        if audit_configs:
            policy["auditConfigs"] = audit_configs
        self.policies[resource] = policy

    def add_dataset(self, dataset: str, access: list[dict[str, str]]) -> None:
        self.datasets[dataset] = {
            "kind": "bigquery#dataset", "id": f"{self.project}:{dataset}", "location": "EU",
            "datasetReference": {"projectId": self.project, "datasetId": dataset},
            "access": access, "etag": self._etag()}

    def add_policy_tag(self, taxonomy: str, tag: str) -> str:
        """A taxonomy (display name) holding a tag (display name); the tag's server name."""
        name = next((n for n, t in self.taxonomies.items() if t["display_name"] == taxonomy), None)
        if name is None:
            name = f"projects/{self.project}/locations/{self.region}/taxonomies/{len(self.taxonomies) + 7001}"
            self.taxonomies[name] = {"display_name": taxonomy, "tags": {}}
        tag_name = f"{name}/policyTags/{len(self.taxonomies[name]['tags']) + 9001}"
        self.taxonomies[name]["tags"][tag_name] = tag
        self.add_policy(tag_name)
        return tag_name

    def change_behind_the_back(self, resource: str) -> None:
        """Between the next read of ``resource``'s policy and its write, someone else writes it."""
        self._behind.add(resource)

    def race_ledger(self, bucket: str, entry: dict[str, Any]) -> None:
        """At the next upload of the ledger, another applier's write (adding ``entry`` to its bindings)
        lands first: the upload's generation precondition then fails (412)."""
        self._ledger_race = {"bucket": bucket, **entry}

    def members(self, resource: str, role: str) -> set[str]:
        if resource.startswith("dataset:"):
            legacy = LEGACY.get(role, role)
            return {_entry_member(e) for e in self.datasets[resource.removeprefix("dataset:")]["access"]
                    if e.get("role") == legacy and _entry_member(e)}
        return {m for b in self.policies[resource].get("bindings", []) if b["role"] == role and not b.get("condition")
                for m in b.get("members", [])}

    def ledger(self, bucket: str) -> dict[str, Any] | None:
        found = self.objects.get((bucket, "_headwater/iam-ledger.json"))
        return json.loads(found[0]) if found else None

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith(":setIamPolicy") or
                (r.method in ("PUT", "PATCH") and not r.path.startswith("/upload/"))]

    def requests_to(self, fragment: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    # -- HTTP routes --

    def answer(self, request: Request) -> tuple[int, Any, dict[str, str]]:
        path = request.path
        if path.startswith("/download/storage/v1/b/"):
            bucket, _, name = path.removeprefix("/download/storage/v1/b/").partition("/o/")
            found = self.objects.get((bucket, name))
            if found is None:
                return _error(404, "No such object")
            return 200, found[0], {"x-goog-generation": str(found[1]), "x-goog-metageneration": "1"}
        if path.startswith("/upload/storage/v1/b/"):
            return self._upload(request, path.removeprefix("/upload/storage/v1/b/").split("/", 1)[0])
        if path.startswith("/storage/v1/b/") and path.count("/") == 4 and request.method == "GET":
            bucket = path.rsplit("/", 1)[1]  # the client's own metadata read around object requests
            return 200, {"kind": "storage#bucket", "name": bucket, "id": bucket, "location": "EU",
                         "metageneration": "1"}, {}
        if path.startswith("/storage/v1/b/") and path.endswith("/iam"):
            return self._storage_iam(request, path.removeprefix("/storage/v1/b/").removesuffix("/iam"))
        if path.startswith("/bigquery/v2/projects/"):
            return self._bigquery(request, path.removeprefix("/bigquery/v2/"))
        if path == f"/v3/projects/{self.project}" and request.method == "GET":
            return 200, {"name": f"projects/{PROJECT_NUMBER}", "projectId": self.project, "state": "ACTIVE"}, {}
        if path.startswith(("/v1/projects/", "/v3/projects/")) and ":" in path:
            resource, _, verb = path[len("/v1/"):].partition(":")
            return self._iam(request, resource, verb)
        return _error(404, f"no such route {request.method} {path}")

    def _upload(self, request: Request, bucket: str) -> tuple[int, Any, dict[str, str]]:
        message = email.message_from_bytes(
            b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.body)
        parts = message.get_payload()
        metadata = json.loads(parts[0].get_payload())
        data = parts[1].get_payload(decode=True)
        name = request.query.get("name") or metadata["name"]
        if self._ledger_race is not None and self._ledger_race["bucket"] == bucket:
            race, self._ledger_race = self._ledger_race, None
            found = self.objects.get((bucket, name))
            ledger = json.loads(found[0]) if found else {"version": 1, "bindings": {}, "audit_configs": {}}
            ledger["bindings"][race["name"]] = race["entry"]
            self.objects[(bucket, name)] = (json.dumps(ledger).encode(), next(self._generations))
        current = self.objects.get((bucket, name))
        expected = request.query.get("ifGenerationMatch")
        if expected is not None and int(expected) != (current[1] if current else 0):
            return _error(412, "At least one of the pre-conditions you specified did not hold.")
        generation = next(self._generations)
        self.objects[(bucket, name)] = (data, generation)
        return 200, {"kind": "storage#object", "bucket": bucket, "name": name, "generation": str(generation),
                     "metageneration": "1", "size": str(len(data))}, {}

    def _storage_iam(self, request: Request, bucket: str) -> tuple[int, Any, dict[str, str]]:
        resource = f"b/{bucket}"
        if resource not in self.policies:
            return _error(404, "The specified bucket does not exist.")
        if request.method == "GET":
            return 200, {"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}",
                         **self._read(resource)}, {}
        if request.method == "PUT":
            if request.body.get("etag") != self.policies[resource]["etag"]:
                return _error(412, "Precondition Failed")
            return 200, {"kind": "storage#policy", **self._write(resource, request.body)}, {}
        return _error(404, "no such route")

    def _bigquery(self, request: Request, path: str) -> tuple[int, Any, dict[str, str]]:
        parts = path.split("/")  # projects/<p>/datasets/<d>[/tables/<t>[:verb]]
        if len(parts) == 4 and parts[2] == "datasets":
            dataset = self.datasets.get(parts[3])
            if dataset is None:
                return _error(404, f"Not found: Dataset {self.project}:{parts[3]}")
            if request.method == "GET":
                if f"dataset:{parts[3]}" in self._behind:
                    self._behind.discard(f"dataset:{parts[3]}")
                    answer = json.loads(json.dumps(dataset))
                    dataset["access"].append({"role": "READER", "userByEmail": "someone@example.com"})
                    dataset["etag"] = self._etag()
                    return 200, answer, {}
                return 200, dataset, {}
            if request.method == "PATCH":
                if request.headers.get("if-match") != dataset["etag"]:
                    return _error(412, "Precondition check failed.")
                access = [{**e, "role": LEGACY.get(e.get("role"), e.get("role"))} if "role" in e else e
                          for e in request.body.get("access", dataset["access"])]
                dataset.update({k: v for k, v in request.body.items() if k != "etag"}, access=access, etag=self._etag())
                return 200, dataset, {}
        if len(parts) == 6 and parts[4] == "tables" and ":" in parts[5]:
            table, _, verb = parts[5].partition(":")
            return self._iam(request, "/".join([*parts[:5], table]), verb)
        return _error(404, "no such route")

    def _iam(self, request: Request, resource: str, verb: str) -> tuple[int, Any, dict[str, str]]:
        if resource not in self.policies:
            return _error(404, f"Resource not found (resource={resource}).", "NOT_FOUND")
        if verb == "getIamPolicy":
            return 200, self._read(resource), {}
        if verb == "setIamPolicy" and request.method == "POST":
            new = request.body["policy"]
            if new.get("etag") != self.policies[resource]["etag"]:
                return _error(409, "There were concurrent policy changes. Please retry the whole read-modify-write "
                                   "with exponential backoff.", "ABORTED")
            mask = [p.strip() for p in (request.body.get("updateMask") or "bindings,etag").split(",")]
            return 200, self._write(resource, new, mask), {}
        return _error(404, "no such route")

    # -- policies --

    def _read(self, resource: str) -> dict[str, Any]:
        policy = self.policies[resource]
        answer = json.loads(json.dumps(policy))
        if resource in self._behind:
            self._behind.discard(resource)
            policy["bindings"] = [*policy.get("bindings", []), {"role": "roles/viewer",
                                                                 "members": ["user:someone@example.com"]}]
            policy["etag"] = self._etag()
        return answer

    def _write(self, resource: str, new: dict[str, Any], mask: list[str] | None = None) -> dict[str, Any]:
        policy = self.policies[resource]
        for field in mask or ["bindings", "auditConfigs", "version"]:
            if field == "etag":
                continue
            if field in new:
                policy[field] = new[field]
            else:
                policy.pop(field, None)
        if "version" in new:
            policy["version"] = new["version"]
        policy["etag"] = self._etag()
        return policy

    def _etag(self) -> str:
        return base64.b64encode(f"etag-{next(self._etags)}".encode()).decode()

    # -- gRPC: Data Catalog's PolicyTagManager --

    def _grpc_handler(self, name: str, fn: Any) -> Any:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with self._lock:
                self.grpc_calls.append((name, request))
                try:
                    return fn(request)
                except _Abort as exc:
                    context.abort(exc.code, str(exc))
        return handle

    def _list_taxonomies(self, request: dc.ListTaxonomiesRequest) -> dc.ListTaxonomiesResponse:
        return dc.ListTaxonomiesResponse(taxonomies=[
            dc.Taxonomy(name=name, display_name=t["display_name"]) for name, t in sorted(self.taxonomies.items())
            if name.startswith(request.parent + "/")])

    def _list_policy_tags(self, request: dc.ListPolicyTagsRequest) -> dc.ListPolicyTagsResponse:
        tags = self.taxonomies[request.parent]["tags"]
        return dc.ListPolicyTagsResponse(policy_tags=[
            dc.PolicyTag(name=name, display_name=display) for name, display in sorted(tags.items())])

    def _grpc_get_policy(self, request: iam_policy_pb2.GetIamPolicyRequest) -> policy_pb2.Policy:
        if request.resource not in self.policies:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"{request.resource} not found")
        return json_format.ParseDict(self._read(request.resource), policy_pb2.Policy())

    def _grpc_set_policy(self, request: iam_policy_pb2.SetIamPolicyRequest) -> policy_pb2.Policy:
        if request.resource not in self.policies:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"{request.resource} not found")
        new = json_format.MessageToDict(request.policy)
        if new.get("etag") != self.policies[request.resource]["etag"]:
            raise _Abort(grpc.StatusCode.ABORTED, "concurrent policy changes")
        return json_format.ParseDict(self._write(request.resource, new), policy_pb2.Policy())


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _entry_member(entry: dict[str, str]) -> str | None:
    if "userByEmail" in entry:
        value = entry["userByEmail"]
        return ("serviceAccount:" if value.endswith(".gserviceaccount.com") else "user:") + value
    if "groupByEmail" in entry:
        return "group:" + entry["groupByEmail"]
    if "domain" in entry:
        return "domain:" + entry["domain"]
    return entry.get("iamMember")


def _error(status: int, message: str, status_name: str | None = None) -> tuple[int, dict, dict[str, str]]:
    error: dict[str, Any] = {"code": status, "message": message}
    if status_name:
        error["status"] = status_name
    return status, {"error": error}, {}
