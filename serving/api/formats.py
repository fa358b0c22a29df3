"""A page or a row as JSON, CSV or Parquet (``format=json|csv|parquet``).

JSON carries its position in the body (``next_cursor``, ``has_more``); CSV and Parquet are the
rows only, so the position is in headers (``X-Next-Cursor``, ``X-Has-More``, ``Link: <…>;
rel="next"``) — ``X-Has-More`` is always sent, so a client reading only the body can still see
that the page is not everything (never a silent cap). Masked columns are listed in
``masked_fields`` / ``X-Masked-Fields``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from starlette.responses import Response

from serving.api import values
from serving.api.spec import Field

FORMATS = ("json", "csv", "parquet")
MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8",
               "parquet": "application/vnd.apache.parquet"}


def json_bytes(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def csv_bytes(fields: Sequence[Field], rows: Sequence[Mapping[str, Any]], masked: frozenset[str]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow([f.name for f in fields])
    for row in rows:
        writer.writerow(["" if f.name in masked else values.csv_cell(f, row.get(f.name)) for f in fields])
    return out.getvalue().encode("utf-8")


def parquet_bytes(fields: Sequence[Field], rows: Sequence[Mapping[str, Any]], masked: frozenset[str]) -> bytes:
    schema = pa.schema([values.arrow_field(f) for f in fields])
    columns = {f.name: [None if f.name in masked else values.arrow_value(f, row.get(f.name)) for row in rows]
               for f in fields}
    table = pa.Table.from_pydict(columns, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def render(fmt: str, fields: Sequence[Field], rows: Sequence[Mapping[str, Any]], masked: frozenset[str],
           envelope: dict[str, Any], headers: dict[str, str], filename: str, single: bool = False) -> Response:
    """The answer: JSON ``envelope`` with ``data`` (the rows, or the one row when ``single``), or
    the rows as CSV/Parquet with ``headers``."""
    headers = dict(headers)
    if fmt == "json":
        encoded = [values.encode_row(tuple(fields), row, masked) for row in rows]
        body = {"data": encoded[0] if single else encoded, **envelope}
        return Response(json_bytes(body), media_type=MEDIA_TYPES["json"], headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{filename}.{fmt}"'
    if fmt == "csv":
        return Response(csv_bytes(fields, rows, masked), media_type=MEDIA_TYPES["csv"], headers=headers)
    return Response(parquet_bytes(fields, rows, masked), media_type=MEDIA_TYPES["parquet"], headers=headers)
