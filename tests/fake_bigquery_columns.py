"""A local HTTP endpoint speaking just enough of BigQuery's REST API (v2) for column policy tags.

bqemulator drops ``policyTags``, so the column policy provider is tested here instead: the official
client (``google.cloud.bigquery.Client`` with anonymous credentials and this endpoint,
`FakeBigQueryColumns.client`) sends exactly what it would send to Google, and the tests see the
real requests: paths, bodies, the ``If-Match`` header. The answers are the minimum the provider
needs plus the behaviour it must cope with, not a model of BigQuery:

* ``datasets.list`` (the ``filter`` is recorded, and applied to ``labels.<k>:<v>``);
* ``jobs.query`` of the INFORMATION_SCHEMA.COLUMN_FIELD_PATHS query: one row per tagged column
  or nested field of the dataset's tables (``table_name``, ``field_path``, ``policy_tags``),
  answered at once (``jobComplete``);
* ``tables.get`` with an ``etag``; ``tables.patch`` honours ``If-Match`` (412 on a stale etag),
  replaces the schema with the one sent, EXCEPT that a field sent without ``policyTags`` keeps
  the tags it had (what BigQuery does: terraform-provider-google#14047), and refuses a tag on a
  RECORD or more than one tag on a field (400), as BigQuery does.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

BASE = "/bigquery/v2/projects/"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


class FakeBigQueryColumns:
    def __init__(self, project: str) -> None:
        self.project = project
        self.requests: list[Request] = []
        self.datasets: dict[str, dict[str, Any]] = {}  # id -> {labels, location}
        self.tables: dict[str, dict[str, Any]] = {}  # dataset.table -> table resource (with schema, etag)
        self.before_patch: Any = None  # a hook run before a PATCH is answered (a concurrent change)
        self._etags = itertools.count(1)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                url = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                request = Request(self.command, url.path, query, {k.lower(): v for k, v in self.headers.items()}, body)
                with outer._lock:
                    outer.requests.append(request)
                    status, reply = outer.answer(request)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def client(self) -> bigquery.Client:
        return bigquery.Client(project=self.project, credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{self.port}"))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- test setup --

    def add_dataset(self, dataset: str, *, managed: bool = True, location: str = "europe-west1") -> None:
        self.datasets[dataset] = {"labels": {"managed-by": "headwater"} if managed else {}, "location": location}

    def add_table(self, name: str, schema: list[dict[str, Any]]) -> None:
        dataset, table = name.split(".")
        self.tables[name] = {
            "kind": "bigquery#table",
            "tableReference": {"projectId": self.project, "datasetId": dataset, "tableId": table},
            "schema": {"fields": json.loads(json.dumps(schema))},
            "etag": self._etag(),
            "type": "TABLE",
        }

    def field(self, name: str, path: str) -> dict[str, Any]:
        fields = self.tables[name]["schema"]["fields"]
        found: dict[str, Any] = {}
        for part in path.split("."):
            found = next(f for f in fields if f["name"] == part)
            fields = found.get("fields", [])
        return found

    def patches(self) -> list[Request]:
        return [r for r in self.requests if r.method == "PATCH"]

    def methods(self) -> list[str]:
        return [f"{r.method} {self._kind(r.path)}" for r in self.requests]

    # -- answers --

    def _etag(self) -> str:
        return f"etag-{next(self._etags)}"

    @staticmethod
    def _kind(path: str) -> str:
        parts = path.removeprefix(BASE).split("/")
        return {1: "project", 2: parts[1], 3: "dataset", 4: "tables", 5: "table"}.get(len(parts), path)

    def answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        path = request.path.removeprefix(BASE)
        parts = path.split("/")
        if request.method == "GET" and len(parts) == 2 and parts[1] == "datasets":
            return 200, self._list_datasets(request)
        if request.method == "POST" and len(parts) == 2 and parts[1] == "queries":
            return self._query(request)
        if len(parts) == 5 and parts[1] == "datasets" and parts[3] == "tables":
            name = f"{parts[2]}.{parts[4]}"
            if name not in self.tables:
                return _error(404, f"Not found: Table {self.project}:{name}")
            if request.method == "GET":
                return 200, self.tables[name]
            if request.method == "PATCH":
                return self._patch(name, request)
        return _error(400, f"the fake does not answer {request.method} {request.path}")

    def _list_datasets(self, request: Request) -> dict[str, Any]:
        wanted = dict(re.findall(r"labels\.([\w-]+):([\w-]+)", request.query.get("filter", "")))
        items = [{"kind": "bigquery#dataset", "id": f"{self.project}:{d}", "labels": meta["labels"],
                  "location": meta["location"], "datasetReference": {"projectId": self.project, "datasetId": d}}
                 for d, meta in sorted(self.datasets.items())
                 if all(meta["labels"].get(k) == v for k, v in wanted.items())]
        return {"kind": "bigquery#datasetList", "datasets": items}

    def _query(self, request: Request) -> tuple[int, dict[str, Any]]:
        sql = request.body.get("query", "")
        match = re.search(r"`([\w-]+)\.(\w+)`\.INFORMATION_SCHEMA\.COLUMN_FIELD_PATHS", sql)
        if not match or "ARRAY_LENGTH(policy_tags) > 0" not in sql:
            return _error(400, "the fake answers the column tags query only")
        dataset = match.group(2)
        rows = []
        for name, table in sorted(self.tables.items()):
            if name.split(".")[0] != dataset:
                continue
            for path, field in _walk(table["schema"]["fields"]):
                tags = (field.get("policyTags") or {}).get("names") or []
                if tags:
                    rows.append({"f": [{"v": name.split(".")[1]}, {"v": path}, {"v": [{"v": t} for t in tags]}]})
        schema = {"fields": [{"name": "table_name", "type": "STRING", "mode": "NULLABLE"},
                             {"name": "field_path", "type": "STRING", "mode": "NULLABLE"},
                             {"name": "policy_tags", "type": "STRING", "mode": "REPEATED"}]}
        return 200, {"kind": "bigquery#queryResponse", "jobComplete": True, "schema": schema, "rows": rows,
                     "totalRows": str(len(rows)),
                     "jobReference": {"projectId": self.project, "jobId": "job-1",
                                      "location": request.body.get("location")}}

    def _patch(self, name: str, request: Request) -> tuple[int, dict[str, Any]]:
        if self.before_patch is not None:
            hook, self.before_patch = self.before_patch, None
            hook(self)
        table = self.tables[name]
        match = request.headers.get("if-match")
        if match is not None and match != table["etag"]:
            return _error(412, "Precondition check failed.")
        if "schema" in request.body:
            old = dict(_walk(table["schema"]["fields"]))
            fields = json.loads(json.dumps(request.body["schema"]["fields"]))
            for path, field in _walk(fields):
                if "policyTags" not in field and "policyTags" in old.get(path, {}):
                    field["policyTags"] = old[path]["policyTags"]  # omitted: kept (module docstring)
                names = (field.get("policyTags") or {}).get("names") or []
                if field.get("fields") and "policyTags" in field:
                    return _error(400, f"Policy tags cannot be set on a RECORD field: {path}")
                if len(names) > 1:
                    return _error(400, f"At most 1 policy tag is allowed per field: {path}")
            table["schema"] = {"fields": fields}
        table["etag"] = self._etag()
        return 200, table


def _walk(fields: list[dict[str, Any]], prefix: str = ""):
    for field in fields:
        path = f"{prefix}{field['name']}"
        yield path, field
        yield from _walk(field.get("fields") or [], f"{path}.")


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": status, "message": message, "errors": [{"message": message}]}}
