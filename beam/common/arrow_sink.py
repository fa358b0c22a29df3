"""Silver rows from Arrow tables into BigQuery: the columnar path's Silver sink.

:class:`WriteArrowRows` is :class:`beam.common.sinks.WriteRows` for ``ArrowChunk`` elements (the
Silver rows of ``beam.common.columnar``, ``ROWS_AS_ARROW``): the same streaming-insert request
(``tabledata.insertAll``: ``INSERT_BATCH`` rows a request, ``skipInvalidRows``, the same
``insertId`` per row - a hash of the dedup key, or a random UUID without one, as
``insert_rows_json`` gives), the same metadata columns (``_ingested_at`` per request,
``_schema_version``), the same counters (``silver_rows_written``, ``sink_rejected``) and the same
``sink_rejected`` dead letters (the row as ``WriteRows`` would have sent it, as JSON). It works
against BigQuery and the bqemulator alike, as ``WriteRows`` does.

What differs is how the request body is made: ``insert_rows_json`` takes one dict per row and
serialises the request with ``json.dumps``; here the JSON text of every row is written by Arrow
kernels a column at a time (:func:`row_json`), and each request's body is a slice of it,
posted through the client's own call path (``Client._call_api``: its retry, its transport, its
credentials) - what ``insert_rows_json`` does after building the dict. Dicts are made only for
the rows BigQuery rejects. A null value is written ``null`` (``insert_rows_json`` leaves the key
out: BigQuery stores NULL either way).

JSON text per value (:func:`json_values`): strings quoted, with the rows holding ``"``, ``\\``
or a control character written by ``json.dumps`` instead (the others need no escape: the body
is UTF-8); INT64 in decimal; FLOAT64 as Arrow's shortest round-trip text (``1e+20``, ``0.1``),
with zero, NaN and infinities by ``json.dumps`` (``-0.0`` keeps its sign; NaN is what
``insert_rows_json`` would send too); BOOL ``true``/``false``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from beam.common.checker import KEY_SEPARATOR, NULL_KEY
from beam.common.clients import bigquery_client
from beam.common.columnar import ArrowChunk, _mask, to_rows
from beam.common.records import DeadLetter
from beam.common.sinks import INSERT_BATCH, SINK_REJECTED, _error_text, _is_row_error
from beam.common.transforms import counter, row_id

_ESCAPED = r'["\\\x00-\x1f]'  # what a JSON string cannot hold as is
_NOW = "\x01now\x01"  # the placeholder of a request's _ingested_at in the rows' JSON
_NOW_BYTES = _NOW.encode()


def key_strings(columns: list[list[Any]]) -> list[str]:
    """``checker.key_function`` of each row, from the key fields' values (one list per field,
    Python values, None for null) instead of a dict per row: the same expressions."""
    if len(columns) == 1:
        return [v if type(v) is str else (NULL_KEY if v is None else repr(v)) for v in columns[0]]
    if len(columns) == 2:
        return [f"{a!r}{KEY_SEPARATOR}{b!r}" for a, b in zip(*columns, strict=True)]
    return [KEY_SEPARATOR.join(map(repr, values)) for values in zip(*columns, strict=True)]


def json_values(col: pa.Array) -> pa.Array:
    """Each value of ``col`` (string, int64, float64 or bool) as JSON text (utf8), ``null`` for
    null. Raises ``TypeError`` for another type."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    special = None
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = pc.binary_join_element_wise('"', col, '"', "")
        special = pc.match_substring_regex(col, _ESCAPED)
    elif pa.types.is_integer(col.type):
        text = pc.cast(col, pa.string())
    elif pa.types.is_floating(col.type):
        text = pc.cast(col, pa.string())
        special = pc.or_(pc.invert(pc.is_finite(col)), pc.equal(col, 0))
    elif pa.types.is_boolean(col.type):
        text = pc.if_else(col, "true", "false")
    else:
        raise TypeError(f"no JSON text for Arrow type {col.type}")
    if special is not None:
        mask = _mask(special)
        if mask.any():
            replacements = [json.dumps(v) for v in col.filter(pa.array(mask)).to_pylist()]
            text = pc.replace_with_mask(text, pa.array(mask), pa.array(replacements, pa.string()))
    return pc.fill_null(text, "null")


def row_json(table: pa.Table, metadata: dict[str, Any], insert_ids: list[str] | None) -> pa.Array:
    """Per row of ``table``, its insertAll entry followed by a comma (utf8):
    ``{"json":{<column>:<value>,...,<metadata>},"insertId":"<id>"},`` (no ``insertId`` when
    ``insert_ids`` is None). ``metadata``: constant members every row gets, as JSON text."""
    parts: list[Any] = []
    literal = '{"json":{'
    members = 0
    for i, name in enumerate(table.column_names):
        literal += ("," if members else "") + json.dumps(name) + ":"
        parts += [literal, json_values(table.column(i))]
        literal = ""
        members += 1
    for name, value in metadata.items():
        literal += ("," if members else "") + json.dumps(name) + ":" + value
        members += 1
    literal += "}"
    if insert_ids is not None:
        ids = pa.array(insert_ids, pa.string())
        if pc.any(pc.match_substring_regex(ids, _ESCAPED)).as_py():
            ids = pa.array([json.dumps(i) for i in insert_ids], pa.string())
        else:  # hex digests and UUIDs: nothing to escape
            ids = pc.binary_join_element_wise('"', ids, '"', "")
        parts += [literal + ',"insertId":', ids]
        literal = ""
    parts.append(literal + "},")
    if not any(isinstance(p, pa.Array) for p in parts):  # no columns, no ids: one literal per row
        return pa.array([parts[0]] * table.num_rows, pa.string())
    return pc.binary_join_element_wise(*parts, "")


def request_bodies(entries: pa.Array, batch: int = INSERT_BATCH) -> Iterator[tuple[int, int, bytes]]:
    """``(start, stop, body)`` per ``batch`` rows of ``entries`` (from :func:`row_json`): the
    insertAll request ``{"rows":[...],"skipInvalidRows":true}`` as UTF-8 bytes."""
    offsets = np.frombuffer(entries.buffers()[1], dtype=np.int32)[entries.offset:entries.offset + len(entries) + 1]
    data = entries.buffers()[2]
    for start in range(0, len(entries), batch):
        stop = min(start + batch, len(entries))
        rows = data[int(offsets[start]):int(offsets[stop]) - 1].to_pybytes()  # without the last comma
        yield start, stop, b'{"rows":[' + rows + b'],"skipInvalidRows":true}'


class WriteArrowRows(beam.DoFn):
    """``ArrowChunk`` of Silver rows -> insertAll requests into ``table`` (see the module
    docstring); outputs the dead letters of the rows BigQuery rejected. ``key_paths``:
    the dedup key (insertIds from it), or None (random insertIds)."""

    def __init__(self, table: str, *, project: str | None, key_paths: tuple[str, ...] | None,
                 schema_version: str | None, name: str = "silver") -> None:
        self.table = table
        self.project = project
        self.key_paths = key_paths
        self.schema_version = schema_version
        self.name = name

    def setup(self) -> None:
        from google.cloud.bigquery.retry import DEFAULT_RETRY
        from google.cloud.bigquery.table import TableReference

        self.client = bigquery_client(self.project)
        self.retry = DEFAULT_RETRY
        self.path = TableReference.from_string(self.table, default_project=self.client.project).path + "/insertAll"
        self.written = counter(f"{self.name}_rows_written")
        self.rejected = counter(SINK_REJECTED)

    def insert_ids(self, table: pa.Table) -> list[str]:
        """``RowIdFromKey`` of each row, or a random UUID per row without a key (what
        ``insert_rows_json`` does for ``row_ids=None``)."""
        if not self.key_paths:
            return [str(uuid.uuid4()) for _ in range(len(table))]
        return [row_id(k) for k in key_strings([table.column(p).to_pylist() for p in self.key_paths])]

    def insert(self, body: bytes) -> dict[str, Any]:
        """One insertAll request, through the client's retry and transport, as
        ``insert_rows_json`` sends its own (every row has an insertId, so it can be retried)."""
        return self.client._call_api(  # noqa: SLF001 - insert_rows_json's own call, with our body
            self.retry, span_name="BigQuery.insertRowsJson", span_attributes={"path": self.path},
            method="POST", path=self.path, data=body, content_type="application/json", timeout=None)

    def bodies(self, table: pa.Table) -> Iterator[tuple[int, int, bytes]]:
        """``(start, stop, body)`` per request for the rows ``table[start:stop]``, the body's
        ``_ingested_at`` still the placeholder ``_NOW``. The rows' JSON is written once for the
        whole table; each request's time goes in where the placeholder is (a raw control
        character: no JSON text written here holds one)."""
        metadata = {"_ingested_at": f'"{_NOW}"', "_schema_version": json.dumps(self.schema_version)}
        return request_bodies(row_json(table, metadata, self.insert_ids(table)))

    def process(self, chunk: ArrowChunk) -> Iterator[DeadLetter]:
        table = chunk.table
        if not len(table):
            return
        for start, stop, body in self.bodies(table):
            now = dt.datetime.now(dt.UTC).isoformat()  # per request, as WriteRows stamps it
            errors = self.insert(body.replace(_NOW_BYTES, now.encode())).get("insertErrors", [])
            bad = {e["index"]: e for e in errors if _is_row_error(e)}
            self.written.inc(stop - start - len(bad))
            if bad:
                self.rejected.inc(len(bad))
                order = sorted(bad)
                rows = to_rows(table.take(pa.array([start + i for i in order], pa.int64())))
                for i, row in zip(order, rows, strict=True):
                    row["_ingested_at"] = now
                    row["_schema_version"] = self.schema_version
                    yield DeadLetter(orjson.dumps(row), SINK_REJECTED, _error_text(bad[i]), f"bigquery:{self.table}")


