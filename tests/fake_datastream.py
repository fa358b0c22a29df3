"""A local HTTP endpoint speaking just enough of the Datastream API v1 (REST) for the provider's tests.

Datastream has no emulator. The provider's official client, given REST transport, anonymous
credentials and this endpoint (`FakeDatastream.client_kwargs`), sends here exactly what it would
send to Google, so the tests see the real requests: paths, bodies, update masks. The answers are
the minimum the provider needs, not a model of the service:

* connection profiles and streams (``/v1/projects/*/locations/*/connectionProfiles|streams``): list
  (paged when ``page_size`` is set), create (409 when present), get, patch honouring
  ``updateMask``, delete (404 when absent). A stream is created NOT_STARTED, as Datastream does;
  `fail_stream` puts one in FAILED with an error, as a stream that lost its source reads.
* ``connectionProfiles:discover``: the tables and columns of `discoverable`.
* operations: done at once, with the resource as response and Datastream's OperationMetadata.
"""

from __future__ import annotations

import copy
from typing import Any

from fake_cloudrun import FakeEndpoint, Request, _error, _get_path, _set_path

PROFILE_TYPE = "type.googleapis.com/google.cloud.datastream.v1.ConnectionProfile"
STREAM_TYPE = "type.googleapis.com/google.cloud.datastream.v1.Stream"
METADATA_TYPE = "type.googleapis.com/google.cloud.datastream.v1.OperationMetadata"
OUTPUT_ONLY = {"createTime", "updateTime", "errors", "lastRecoveryTime", "satisfiesPzs", "satisfiesPzi"}


class FakeDatastream(FakeEndpoint):
    def __init__(self) -> None:
        super().__init__()
        self.profiles: dict[str, dict] = {}
        self.streams: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        # "<schema>.<table>" -> {column: data type}, what discover answers
        self.discoverable: dict[str, dict[str, str]] = {}

    def fail_stream(self, name: str, reason: str, message: str) -> None:
        stream = self.streams[name]
        stream["state"] = "FAILED"
        stream["errors"] = [{"reason": reason, "message": message, "errorUuid": "e-1"}]

    def mutating(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def answer(self, request: Request) -> tuple[int, dict]:
        path = request.path.removeprefix("/v1/")
        if "/operations/" in path:
            operation = self.operations.get(path)
            return (200, operation) if operation else _error(404, f"operation {path} not found")
        if path.endswith("/connectionProfiles:discover") and request.method == "POST":
            return self._discover(request)
        for collection, store, kind in (("connectionProfiles", self.profiles, PROFILE_TYPE),
                                        ("streams", self.streams, STREAM_TYPE)):
            if f"/{collection}" in path:
                return self._collection(request, path, collection, store, kind)
        return _error(404, "no such route")

    def _collection(self, request: Request, path: str, collection: str, store: dict, kind: str) -> tuple[int, dict]:
        method, body = request.method, request.body
        if path.endswith(f"/{collection}"):
            if method == "GET":
                items = sorted((v for k, v in store.items() if k.startswith(path + "/")), key=lambda v: v["name"])
                return self._list(request, collection, items)
            if method == "POST":
                ident = request.query.get("connectionProfileId" if collection == "connectionProfiles" else "streamId")
                name = f"{path}/{ident}"
                if name in store:
                    return _error(409, f"Resource '{name}' already exists")
                item = {k: copy.deepcopy(v) for k, v in body.items() if k not in OUTPUT_ONLY}
                item["name"] = name
                if collection == "streams":
                    item["state"] = "NOT_STARTED"
                store[name] = item
                return 200, self._operation_for(name, item, kind)
        item = store.get(path)
        if item is None:
            return _error(404, f"Resource '{path}' was not found")
        if method == "GET":
            return 200, copy.deepcopy(item)
        if method == "PATCH":
            mask = [p for p in request.query.get("updateMask", "").split(",") if p]
            assert mask, "headwater always sends an update mask"
            for field in mask:
                _set_path(item, _camel_path(field), _get_path(body, _camel_path(field)))
            if "state" in mask and item.get("state") in ("RUNNING", 2):  # enums arrive as numbers (enum-encoding=int)
                item.pop("errors", None)
            return 200, self._operation_for(path, item, kind)
        if method == "DELETE":
            del store[path]
            return 200, self._operation_for(path, None, kind)
        return _error(404, "no such route")

    def _discover(self, request: Request) -> tuple[int, dict]:
        asked = request.body.get("postgresqlRdbms", {}).get("postgresqlSchemas", [])
        schemas = []
        for schema in asked:
            tables = []
            for table in schema.get("postgresqlTables", []):
                columns = self.discoverable.get(f"{schema['schema']}.{table['table']}")
                if columns is not None:
                    tables.append({"table": table["table"], "postgresqlColumns": [
                        {"column": c, "dataType": t} for c, t in columns.items()]})
            schemas.append({"schema": schema["schema"], "postgresqlTables": tables})
        return 200, {"postgresqlRdbms": {"postgresqlSchemas": schemas}}

    def _operation_for(self, target: str, item: dict | None, kind: str) -> dict:
        parent = target.split("/connectionProfiles/")[0].split("/streams/")[0]
        name = f"{parent}/operations/op-{len(self.operations) + 1}"
        operation: dict[str, Any] = {"name": name, "done": True,
                                     "metadata": {"@type": METADATA_TYPE, "target": target, "verb": "update"}}
        operation["response"] = {"@type": kind, **copy.deepcopy(item)} if item is not None else {
            "@type": "type.googleapis.com/google.protobuf.Empty"}
        self.operations[name] = operation
        return copy.deepcopy(operation)


def _camel(part: str) -> str:
    head, *rest = part.split("_")
    return head + "".join(w.title() for w in rest)


def _camel_path(path: str) -> str:
    return ".".join(_camel(p) for p in path.split("."))
