"""A fake GCP for `bench/plan_scale.py`: Pub/Sub (gRPC), Cloud Storage and BigQuery (JSON/REST)
served from one process, each request answered after an injected latency.

The providers' official clients (`providers.pubsub`, `providers.storage`, `providers.bigquery`)
talk to it exactly as they would to Google: real paths, real protobufs, real JSON, real paging.
The answers are the minimum those providers read, not a model of the services:

* Pub/Sub (``google.pubsub.v1.Publisher`` / ``Subscriber``): Create/Get/List of topics and
  subscriptions; lists paged at the request's ``page_size``, at most 1,000 a page.
* Cloud Storage (``/storage/v1/b``): insert, get, list (paged by ``maxResults``, at most 1,000 a
  page, as documented: https://cloud.google.com/storage/docs/json_api/v1/buckets/list). The
  location is upper-cased and the storage class defaults to STANDARD, as the real API does.
* BigQuery (``/bigquery/v2``): datasets insert/get/list (the ``labels.k:v`` filter honoured),
  tables insert/get/patch/list (list items carry labels, partitioning and clustering, as the real
  ``tables.list`` does; pages of at most ``maxResults``, and at most 1,000), and ``jobs.query``
  answering the one query headwater runs per dataset, `providers.bigquery.information_schema_query`,
  from the stored tables (COLUMNS, COLUMN_FIELD_PATHS descriptions and TABLE_OPTIONS rows); any
  other query is a 400. Its rows are paged as the real API pages them: at most ``maxResults`` rows
  (no limit when unset) and at most 10 MB of them in one response, the rest by
  ``jobs.getQueryResults`` with the ``pageToken`` (https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/query:
  "responses are also limited to 10 MB").

Page sizes: the fake never pages more coarsely than the real service. Cloud Storage documents
its 1,000; ``tables.list`` and Pub/Sub's ``ListTopics`` / ``ListSubscriptions`` document no
maximum page size (their references say only "maximum number ... to return"), so the fake caps
them at 1,000, the usual maximum of Google's list APIs: if the real service pages more coarsely,
the benchmark counts more list calls than GCP would, never fewer.

Every request (each list page included) sleeps ``latency`` seconds before it is answered, in a
server thread, so concurrent requests overlap as they would against Google. Requests are counted
by method (`FakeGcp.calls`). The server is meant to run in a process of its own (`serve`), so
that its CPU and memory are not the measured headwater process's.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from google.cloud import pubsub_v1

types = pubsub_v1.types

_INFORMATION_SCHEMA = re.compile(r"`([^`.]+)\.([^`.]+)`\.INFORMATION_SCHEMA")
# A query response holds at most this many bytes of rows (the API reference's "10 MB").
QUERY_PAGE_BYTES = 10_000_000
LIST_PAGE_MAX = 1000


class Raw:
    """A reply already encoded as JSON (the query pages, built from pre-encoded rows)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class FakeGcp:
    def __init__(self, latency: float = 0.1) -> None:
        self.latency = latency
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.topics: dict[str, types.Topic] = {}
        self.subscriptions: dict[str, types.Subscription] = {}
        self.buckets: dict[str, dict] = {}
        self.datasets: dict[tuple[str, str], dict] = {}
        self.tables: dict[tuple[str, str], dict[str, dict]] = {}  # (project, dataset) -> id -> table
        # Query results still to be read: job id -> [schema fields, encoded rows, location, answers
        # left that say "not complete yet"].
        self.jobs: dict[str, list[Any]] = {}
        # How many answers of a query (its jobs.query, then its jobs.getQueryResults) say the job is
        # not complete yet, before one carries rows: 0, the fake's default, answers at once.
        self.incomplete_answers = 0

    # -- common --

    def _enter(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1
        if self.latency:
            time.sleep(self.latency)

    # -- Pub/Sub (gRPC) --

    def grpc_handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn, request_type, response_type):
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request_type.deserialize, response_serializer=response_type.serialize)

        publisher = {
            "CreateTopic": unary(self._create_topic, types.Topic, types.Topic),
            "GetTopic": unary(self._get_topic, types.GetTopicRequest, types.Topic),
            "ListTopics": unary(self._list_topics, types.ListTopicsRequest, types.ListTopicsResponse),
        }
        subscriber = {
            "CreateSubscription": unary(self._create_subscription, types.Subscription, types.Subscription),
            "GetSubscription": unary(self._get_subscription, types.GetSubscriptionRequest, types.Subscription),
            "ListSubscriptions": unary(self._list_subscriptions, types.ListSubscriptionsRequest,
                                       types.ListSubscriptionsResponse),
        }
        return [grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
                grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber)]

    def _create_topic(self, topic: types.Topic, context: grpc.ServicerContext) -> types.Topic:
        self._enter("pubsub.CreateTopic")
        with self._lock:
            if topic.name in self.topics:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            self.topics[topic.name] = topic
        return topic

    def _get_topic(self, request: types.GetTopicRequest, context: grpc.ServicerContext) -> types.Topic:
        self._enter("pubsub.GetTopic")
        topic = self.topics.get(request.topic)
        if topic is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
        return topic

    def _list_topics(self, request: types.ListTopicsRequest, context: grpc.ServicerContext) -> types.ListTopicsResponse:
        self._enter("pubsub.ListTopics")
        page, token = _page(sorted(n for n in self.topics if n.startswith(request.project + "/")),
                            request.page_size, request.page_token)
        return types.ListTopicsResponse(topics=[self.topics[n] for n in page], next_page_token=token)

    def _create_subscription(self, sub: types.Subscription, context: grpc.ServicerContext) -> types.Subscription:
        self._enter("pubsub.CreateSubscription")
        # Server defaults the real API fills in.
        if not sub.ack_deadline_seconds:
            sub.ack_deadline_seconds = 10
        if "message_retention_duration" not in sub:
            sub.message_retention_duration = {"seconds": 7 * 24 * 3600}
        with self._lock:
            if sub.name in self.subscriptions:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
            self.subscriptions[sub.name] = sub
        return sub

    def _get_subscription(self, request: types.GetSubscriptionRequest, context: grpc.ServicerContext) -> types.Subscription:
        self._enter("pubsub.GetSubscription")
        sub = self.subscriptions.get(request.subscription)
        if sub is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "Subscription not found")
        return sub

    def _list_subscriptions(self, request: types.ListSubscriptionsRequest,
                            context: grpc.ServicerContext) -> types.ListSubscriptionsResponse:
        self._enter("pubsub.ListSubscriptions")
        page, token = _page(sorted(n for n in self.subscriptions if n.startswith(request.project + "/")),
                            request.page_size, request.page_token)
        return types.ListSubscriptionsResponse(subscriptions=[self.subscriptions[n] for n in page],
                                               next_page_token=token)

    def seed(self, body: dict) -> None:
        """Store, as their create calls would, the topics and subscriptions (serialized protos,
        base64) and tables (JSON) that headwater's providers built for their creates."""
        import base64

        with self._lock:
            for data in body.get("topics", []):
                topic = types.Topic.deserialize(base64.b64decode(data))
                self.topics[topic.name] = topic
            for data in body.get("subscriptions", []):
                sub = types.Subscription.deserialize(base64.b64decode(data))
                if not sub.ack_deadline_seconds:
                    sub.ack_deadline_seconds = 10
                if "message_retention_duration" not in sub:
                    sub.message_retention_duration = {"seconds": 7 * 24 * 3600}
                self.subscriptions[sub.name] = sub
            for table in body.get("tables", []):
                ref = table["tableReference"]
                self.tables.setdefault((ref["projectId"], ref["datasetId"]), {})[ref["tableId"]] = {
                    "kind": "bigquery#table", "id": f"{ref['projectId']}:{ref['datasetId']}.{ref['tableId']}",
                    "type": "TABLE", **table}

    # -- JSON APIs (Storage, BigQuery) --

    def answer(self, method: str, path: str, query: dict[str, str], body: dict) -> tuple[int, dict | Raw]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["storage", "v1"]:
            return self._storage(method, parts[2:], query, body)
        if parts[:2] == ["bigquery", "v2"]:
            return self._bigquery(method, parts[2:], query, body)
        return _error(404, f"no such API: {path}")

    def _storage(self, method: str, parts: list[str], query: dict[str, str], body: dict) -> tuple[int, dict]:
        if parts == ["b"] and method == "POST":
            self._enter("storage.buckets.insert")
            bucket = {"kind": "storage#bucket", "id": body["name"], "name": body["name"],
                      "projectNumber": "1", "metageneration": "1", "storageClass": "STANDARD", **body}
            bucket["location"] = str(body.get("location") or "US").upper()
            with self._lock:
                if body["name"] in self.buckets:
                    return _error(409, "You already own this bucket.")
                self.buckets[body["name"]] = bucket
            return 200, bucket
        if parts == ["b"] and method == "GET":
            self._enter("storage.buckets.list")
            page, token = _page(sorted(self.buckets), int(query.get("maxResults", 1000)), query.get("pageToken", ""))
            return 200, {"kind": "storage#buckets", "items": [self.buckets[n] for n in page],
                         **({"nextPageToken": token} if token else {})}
        if len(parts) == 2 and parts[0] == "b" and method == "GET":
            self._enter("storage.buckets.get")
            bucket = self.buckets.get(parts[1])
            return (200, bucket) if bucket else _error(404, "The specified bucket does not exist.")
        return _error(400, f"storage: unsupported {method} {'/'.join(parts)}")

    def _bigquery(self, method: str, parts: list[str], query: dict[str, str], body: dict) -> tuple[int, dict | Raw]:
        if len(parts) < 3 or parts[0] != "projects":
            return _error(400, "bigquery: unsupported path")
        project, rest = parts[1], parts[2:]
        if rest == ["datasets"] and method == "POST":
            self._enter("bigquery.datasets.insert")
            ref = body["datasetReference"]
            key = (ref["projectId"], ref["datasetId"])
            dataset = {"kind": "bigquery#dataset", "id": f"{key[0]}:{key[1]}", "location": "US", **body}
            with self._lock:
                if key in self.datasets:
                    return _error(409, f"Already Exists: Dataset {key[0]}:{key[1]}")
                self.datasets[key] = dataset
                self.tables[key] = {}
            return 200, dataset
        if rest == ["datasets"] and method == "GET":
            self._enter("bigquery.datasets.list")
            wanted = _label_filter(query.get("filter", ""))
            names = sorted(d for (p, d), ds in self.datasets.items()
                           if p == project and all(ds.get("labels", {}).get(k) == v for k, v in wanted.items()))
            page, token = _page(names, int(query.get("maxResults", 1000)), query.get("pageToken", ""))
            items = [{"kind": "bigquery#dataset", "id": f"{project}:{d}",
                      "datasetReference": self.datasets[(project, d)]["datasetReference"],
                      "labels": self.datasets[(project, d)].get("labels", {}),
                      "location": self.datasets[(project, d)]["location"]} for d in page]
            return 200, {"kind": "bigquery#datasetList", "datasets": items, **({"nextPageToken": token} if token else {})}
        if len(rest) == 2 and rest[0] == "datasets" and method == "GET":
            self._enter("bigquery.datasets.get")
            dataset = self.datasets.get((project, rest[1]))
            return (200, dataset) if dataset else _error(404, f"Not found: Dataset {project}:{rest[1]}")
        if len(rest) == 3 and rest[0] == "datasets" and rest[2] == "tables" and method == "POST":
            self._enter("bigquery.tables.insert")
            key = (project, rest[1])
            if key not in self.tables:
                return _error(404, f"Not found: Dataset {project}:{rest[1]}")
            table_id = body["tableReference"]["tableId"]
            table = {"kind": "bigquery#table", "id": f"{project}:{rest[1]}.{table_id}", "type": "TABLE", **body}
            with self._lock:
                if table_id in self.tables[key]:
                    return _error(409, f"Already Exists: Table {project}:{rest[1]}.{table_id}")
                self.tables[key][table_id] = table
            return 200, table
        if len(rest) == 3 and rest[0] == "datasets" and rest[2] == "tables" and method == "GET":
            self._enter("bigquery.tables.list")
            tables = self.tables.get((project, rest[1]))
            if tables is None:
                return _error(404, f"Not found: Dataset {project}:{rest[1]}")
            page, token = _page(sorted(tables), int(query.get("maxResults", 1000)), query.get("pageToken", ""))
            items = [{key: tables[t][key] for key in ("kind", "id", "tableReference", "type", "labels",
                                                         "timePartitioning", "clustering", "creationTime")
                      if key in tables[t]} for t in page]
            return 200, {"kind": "bigquery#tableList", "tables": items, "totalItems": len(tables),
                         **({"nextPageToken": token} if token else {})}
        if len(rest) == 4 and rest[0] == "datasets" and rest[2] == "tables" and method in ("PATCH", "PUT"):
            self._enter("bigquery.tables.patch")
            with self._lock:
                table = self.tables.get((project, rest[1]), {}).get(rest[3])
                if table is None:
                    return _error(404, f"Not found: Table {project}:{rest[1]}.{rest[3]}")
                for key, value in body.items():  # a PATCH replaces the fields it names
                    if value is None:
                        table.pop(key, None)
                    else:
                        table[key] = value
            return 200, table
        if len(rest) == 4 and rest[0] == "datasets" and rest[2] == "tables" and method == "GET":
            self._enter("bigquery.tables.get")
            table = self.tables.get((project, rest[1]), {}).get(rest[3])
            return (200, table) if table else _error(404, f"Not found: Table {project}:{rest[1]}.{rest[3]}")
        if rest == ["queries"] and method == "POST":
            self._enter("bigquery.jobs.query")
            return self._query(project, body)
        if len(rest) == 2 and rest[0] == "queries" and method == "GET":
            self._enter("bigquery.jobs.getQueryResults")
            with self._lock:
                job = self.jobs.get(rest[1])
                waiting = job is not None and job[3] > 0
                if waiting:
                    job[3] -= 1
            if job is None:
                return _error(404, f"Not found: Job {project}:{rest[1]}")
            fields, rows, location, _ = job
            if waiting:
                return 200, _incomplete(project, rest[1], location)
            return 200, self._query_page(project, rest[1], location, fields, rows, int(query.get("pageToken") or 0),
                                         query.get("maxResults"))
        return _error(400, f"bigquery: unsupported {method} {'/'.join(parts)}")

    def _query(self, project: str, body: dict) -> tuple[int, dict | Raw]:
        match = _INFORMATION_SCHEMA.search(body.get("query", ""))
        if not match:
            return _error(400, "fake BigQuery answers only headwater's INFORMATION_SCHEMA query")
        tables = self.tables.get((match.group(1), match.group(2)), {})
        rows: list[list[Any]] = []
        for table_id, table in sorted(tables.items()):
            fields = table.get("schema", {}).get("fields", [])
            for position, field in enumerate(fields, 1):
                rows.append(["column", table_id, field["name"], position,
                             "NO" if field.get("mode") == "REQUIRED" else "YES", _data_type(field), None])
            for path, text in _descriptions(fields):
                rows.append(["field", table_id, path, None, None, None, text])
            if table.get("description"):
                rows.append(["table", table_id, "description", None, None, None, json.dumps(table["description"])])
            rows.append(["table", table_id, "require_partition_filter", None, None, None,
                         "true" if table.get("requirePartitionFilter") else "false"])
        names = [("row_kind", "STRING"), ("table_name", "STRING"), ("path", "STRING"),
                 ("ordinal_position", "INTEGER"), ("is_nullable", "STRING"), ("data_type", "STRING"),
                 ("text", "STRING")]
        fields = [{"name": n, "type": t, "mode": "NULLABLE"} for n, t in names]
        encoded = [json.dumps({"f": [{"v": None if v is None else str(v)} for v in row]}) for row in rows]
        job_id = f"fake_{time.monotonic_ns()}"
        location = body.get("location") or "US"
        if self.incomplete_answers:
            with self._lock:
                self.jobs[job_id] = [fields, encoded, location, self.incomplete_answers - 1]
            return 200, _incomplete(project, job_id, location)
        return 200, self._query_page(project, job_id, location, fields, encoded, 0, body.get("maxResults"))

    def _query_page(self, project: str, job_id: str, location: str, fields: list[dict], rows: list[str],
                    start: int, max_results: Any) -> Raw:
        """One page of a query's rows from ``start``: at most ``max_results`` rows and at most
        QUERY_PAGE_BYTES of them (at least one); the job is kept while rows remain."""
        limit = int(max_results) if max_results not in (None, "") else len(rows)
        end, size = start, 0
        while end < len(rows) and end - start < limit and (end == start or size + len(rows[end]) + 1 <= QUERY_PAGE_BYTES):
            size += len(rows[end]) + 1
            end += 1
        with self._lock:
            if end < len(rows):
                self.jobs[job_id] = [fields, rows, location, 0]
            else:
                self.jobs.pop(job_id, None)
        head = {
            "kind": "bigquery#queryResponse" if start == 0 else "bigquery#getQueryResultsResponse",
            "jobReference": {"projectId": project, "jobId": job_id, "location": location},
            "jobComplete": True,
            "schema": {"fields": fields},
            "totalRows": str(len(rows)),
            **({"pageToken": str(end)} if end < len(rows) else {}),
        }
        text = json.dumps(head)[:-1] + ', "rows": [' + ",".join(rows[start:end]) + "]}"
        return Raw(text.encode())


def _incomplete(project: str, job_id: str, location: str) -> dict:
    """A jobs.query / jobs.getQueryResults answer for a job still running: no rows, no schema."""
    return {"kind": "bigquery#queryResponse", "jobComplete": False,
            "jobReference": {"projectId": project, "jobId": job_id, "location": location}}


def _data_type(field: dict) -> str:
    """The GoogleSQL type INFORMATION_SCHEMA.COLUMNS reports (ARRAY for REPEATED, STRUCT<...>)."""
    kind = field.get("type", "STRING").upper()
    if kind in ("RECORD", "STRUCT"):
        inner = ", ".join(f"{f['name']} {_data_type(f)}{' NOT NULL' if f.get('mode') == 'REQUIRED' else ''}"
                          for f in field.get("fields", []))
        kind = f"STRUCT<{inner}>"
    else:
        kind = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}.get(kind, kind)
    return f"ARRAY<{kind}>" if field.get("mode") == "REPEATED" else kind


def _descriptions(fields: list[dict], prefix: str = ""):
    for field in fields:
        path = prefix + field["name"]
        if field.get("description"):
            yield path, field["description"]
        yield from _descriptions(field.get("fields", []), path + ".")


def _label_filter(text: str) -> dict[str, str]:
    wanted = {}
    for term in text.split():
        if term.startswith("labels.") and ":" in term:
            key, value = term[len("labels."):].split(":", 1)
            wanted[key] = value
    return wanted


def _page(names: list[str], size: int, token: str) -> tuple[list[str], str]:
    size = max(1, min(size or LIST_PAGE_MAX, LIST_PAGE_MAX))
    start = int(token or 0)
    end = start + size
    return names[start:end], (str(end) if end < len(names) else "")


def _error(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": {"code": status, "message": message, "errors": [{"message": message}]}}


def serve(fake: FakeGcp, *, threads: int = 64) -> tuple[str, str, Callable[[], None]]:
    """Start the gRPC (Pub/Sub) and HTTP (Storage, BigQuery) endpoints on loopback.

    Returns ``(grpc_address, http_url, stop)``. Two control paths on the HTTP endpoint, neither
    counted nor delayed: ``GET /_fake/latency?seconds=S`` sets the latency, ``GET /_fake/calls``
    returns the requests counted by method since the last time it was asked.
    """
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), handlers=fake.grpc_handlers(),
                         options=[("grpc.max_send_message_length", 256 << 20),
                                  ("grpc.max_receive_message_length", 256 << 20)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            url = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            if url.path == "/_fake/latency":  # control: set the latency (not counted, not delayed)
                fake.latency = float(query["seconds"])
                status, reply = 200, {"latency": fake.latency}
            elif url.path == "/_fake/seed":  # control: bulk seeding (the requests headwater's providers built)
                fake.seed(body)
                status, reply = 200, {}
            elif url.path == "/_fake/calls":  # control: the calls counted so far, then reset
                with fake._lock:
                    status, reply = 200, dict(fake.calls)
                    fake.calls.clear()
            else:
                status, reply = fake.answer(self.command, url.path, query, body)
            data = reply.data if isinstance(reply, Raw) else json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    http = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        http.shutdown()
        server.stop(0)

    return f"127.0.0.1:{port}", f"http://127.0.0.1:{http.server_address[1]}", stop


def main() -> None:
    """``python bench/fake_gcp.py [LATENCY]``: serve until stdin closes; the first line printed is
    ``<grpc address> <http url>``."""
    import sys

    fake = FakeGcp(float(sys.argv[1]) if len(sys.argv) > 1 else 0.1)
    grpc_address, http_url, stop = serve(fake)
    print(grpc_address, http_url, flush=True)
    sys.stdin.read()
    stop()


if __name__ == "__main__":
    main()
