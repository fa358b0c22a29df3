"""The columnar path's Silver sink (``beam.common.arrow_sink.WriteArrowRows``): the same
insertAll requests, insertIds, metadata, counters and rejections as ``WriteRows`` sends for the
same rows as dicts - against a stand-in client, and end to end on bqemulator (both sinks into
two tables, read back equal)."""

from __future__ import annotations

import json
import math
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from emulator_setup import create_table
from google.cloud import bigquery

from beam.common.arrow_sink import WriteArrowRows, json_values, request_bodies, row_json
from beam.common.clients import bigquery_client
from beam.common.columnar import ArrowChunk, to_rows
from beam.common.sinks import INSERT_BATCH, SILVER_METADATA_FIELDS, SINK_REJECTED, RowIdFromKey, WriteRows
from beam.common.spec import Field

FIELDS = (Field("id", "STRING", "REQUIRED"), Field("name", "STRING", "NULLABLE"), Field("amount", "FLOAT64", "NULLABLE"),
          Field("n", "INT64", "NULLABLE"), Field("ok", "BOOL", "NULLABLE"), Field("at", "TIMESTAMP", "NULLABLE"))
NAMES = ['plain', 'qu"ote', "back\\slash", "new\nline\t\x00\x1f", "Ærø ✓ \u2028 😀", "", "\x7f", None]
FLOATS = [1.5, -0.0, 0.0, 1e20, 1e-7, 0.1, 1.7976931348623157e308, 5e-324, 123456789012345680.0, None, 100.0, -2.25]


def _table(n: int) -> pa.Table:
    return pa.table({
        "id": [f"r{i}" for i in range(n)],
        "name": [NAMES[i % len(NAMES)] for i in range(n)],
        "amount": [FLOATS[i % len(FLOATS)] for i in range(n)],
        "n": [None if i % 5 == 0 else (i * 7919) * (-1) ** i * 10**9 for i in range(n)],
        "ok": [None if i % 3 == 0 else bool(i % 2) for i in range(n)],
        "at": [None if i % 4 == 0 else f"2026-11-{1 + i % 28:02d}T00:00:{i % 60:02d}+00:00" for i in range(n)],
        "_message_id": [f"gs://b/x.json#{i + 1}" for i in range(n)],
    }, schema=pa.schema([("id", pa.string()), ("name", pa.string()), ("amount", pa.float64()), ("n", pa.int64()),
                         ("ok", pa.bool_()), ("at", pa.string()), ("_message_id", pa.string())]))


def test_json_values_read_back_as_the_values() -> None:
    for values, typ in ((NAMES, pa.string()), (FLOATS + [math.inf, -math.inf], pa.float64()),
                        ([0, -1, 2**63 - 1, -(2**63), None], pa.int64()), ([True, False, None], pa.bool_())):
        text = json_values(pa.array(values, typ)).to_pylist()
        assert [json.loads(t) for t in text] == values
        assert [t for t, v in zip(text, values, strict=True) if v is None] == ["null"] * values.count(None)
    assert json_values(pa.array([-0.0])).to_pylist() == ["-0.0"]  # the sign kept, as json.dumps writes it
    with pytest.raises(TypeError):
        json_values(pa.array([b"x"], pa.binary()))


def test_request_bodies_cut_the_rows_into_insert_batches() -> None:
    table = _table(1234)
    entries = row_json(table, {"_ingested_at": '"now"', "_schema_version": "null"}, None)
    bodies = list(request_bodies(entries))
    assert [(a, b) for a, b, _ in bodies] == [(0, 500), (500, 1000), (1000, 1234)]
    rows = [r for _, _, body in bodies for r in json.loads(body)["rows"]]
    assert all(json.loads(body)["skipInvalidRows"] is True for _, _, body in bodies)
    assert [r["json"] for r in rows] == [dict(row, _ingested_at="now", _schema_version=None) for row in table.to_pylist()]


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


class FakeClient:
    """``_call_api`` as ``insert_rows_json`` calls it; rejects the rows whose id ends in 7."""

    project = "p"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def _call_api(self, retry: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls.append({"retry": retry, **kwargs})
        rows = json.loads(kwargs["data"])["rows"]
        return {"insertErrors": [{"index": i, "errors": [{"reason": "invalid", "message": "no"}]}
                                 for i, r in enumerate(rows) if r["json"]["id"].endswith("7")]}


@pytest.mark.parametrize("key", [("id", "at"), None])
def test_the_requests_are_write_rows_requests(key: tuple[str, ...] | None) -> None:
    table = _table(1200)
    sink = WriteArrowRows("p.silver.t", project="p", key_paths=key, schema_version="2")
    sink.setup = None  # type: ignore[assignment]
    client = FakeClient()
    sink.client, sink.written, sink.rejected = client, _Counter(), _Counter()
    from google.cloud.bigquery.retry import DEFAULT_RETRY

    sink.retry, sink.path = DEFAULT_RETRY, "/projects/p/datasets/silver/tables/t/insertAll"
    letters = list(sink.process(ArrowChunk(table)))

    assert [len(json.loads(c["data"])["rows"]) for c in client.calls] == [INSERT_BATCH, INSERT_BATCH, 200]
    assert all(c["method"] == "POST" and c["path"] == sink.path and c["content_type"] == "application/json"
               and c["retry"] is DEFAULT_RETRY for c in client.calls)
    sent = [r for c in client.calls for r in json.loads(c["data"])["rows"]]
    rows = to_rows(table)
    for entry, row in zip(sent, rows, strict=True):
        assert entry["json"]["_schema_version"] == "2" and entry["json"]["_ingested_at"]
        assert {k: v for k, v in entry["json"].items() if v is not None and not k.startswith("_i")} == {
            **row, "_schema_version": "2"}
    if key:
        assert [e["insertId"] for e in sent] == [RowIdFromKey(key)(r) for r in rows]
    else:
        assert len({e["insertId"] for e in sent}) == len(sent)  # random, as insert_rows_json makes them
    rejected = [r for r in rows if r["id"].endswith("7")]
    assert [json.loads(d.payload)["id"] for d in letters] == [r["id"] for r in rejected]
    assert all(d.reason == SINK_REJECTED and d.detail == "invalid: no" and d.origin == "bigquery:p.silver.t"
               for d in letters)
    assert json.loads(letters[0].payload)["_schema_version"] == "2"
    assert (sink.written.value, sink.rejected.value) == (1200 - len(rejected), len(rejected))


def test_both_sinks_write_the_same_rows_on_bqemulator(emulators: Any, project_id: str) -> None:
    schema = [bigquery.SchemaField(f.name, f.type, mode=f.mode) for f in FIELDS] + [
        bigquery.SchemaField.from_api_repr(f) for f in SILVER_METADATA_FIELDS]
    refs = {name: f"{project_id}.silver.{name}" for name in ("dicts", "arrow")}
    client = bigquery_client(project_id)
    for ref in refs.values():
        create_table(client, ref, schema)
    table = _table(700)

    p = beam.Pipeline(runner=FnApiRunner())
    _ = (p | "Rows" >> beam.Create(to_rows(table)) | "Dicts" >> beam.ParDo(
        WriteRows(refs["dicts"], project=project_id, row_ids=RowIdFromKey(("id",)), name="silver", stamp=True,
                  schema_version="3")))
    _ = (p | "Table" >> beam.Create([ArrowChunk(table)]) | "Arrow" >> beam.ParDo(
        WriteArrowRows(refs["arrow"], project=project_id, key_paths=("id",), schema_version="3")))
    p.run().wait_until_finish()

    def read(ref: str) -> list[dict[str, Any]]:
        got = client.query(f"SELECT * EXCEPT (_ingested_at) FROM `{ref}` ORDER BY id").result()
        return [dict(r.items()) for r in got]

    dicts, arrow = read(refs["dicts"]), read(refs["arrow"])
    assert len(arrow) == len(table) and arrow == dicts


@pytest.mark.parametrize("key", [("id",), ("name",), ("amount",), ("id", "amount"), ("name", "n", "ok", "at")])
def test_key_strings_are_the_key_function(key: tuple[str, ...]) -> None:
    from beam.common.arrow_sink import key_strings
    from beam.common.checker import key_function

    table = _table(300)
    rows = table.to_pylist()  # nulls as None; key_function reads an absent field as None too
    assert key_strings([table.column(p).to_pylist() for p in key]) == [key_function(key)(r) for r in rows]
