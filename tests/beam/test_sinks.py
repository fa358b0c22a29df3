"""The BigQuery sink's per-row rejection path (bqemulator answers a bad row with HTTP 500 for
the whole request, so this path is checked against a stand-in client)."""

from __future__ import annotations

from typing import Any

from beam.common.sinks import SINK_REJECTED, RowIdFromKey, WriteRows
from beam.common.transforms import row_id


class FakeClient:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def insert_rows_json(self, table: str, rows: list[dict[str, Any]], row_ids: list[str] | None = None,
                         skip_invalid_rows: bool = False) -> list[dict[str, Any]]:
        self.requests.append({"table": table, "rows": rows, "row_ids": row_ids, "skip": skip_invalid_rows})
        return [{"index": i, "errors": [{"reason": "invalid", "message": "no such field: bogus"}]}
                for i, r in enumerate(rows) if "bogus" in r]


def _sink(**kwargs: Any) -> tuple[WriteRows, FakeClient]:
    sink = WriteRows("p.silver.t", project="p", **kwargs)
    client = FakeClient()
    sink.client, sink.written, sink.rejected = client, _Counter(), _Counter()
    return sink, client


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


def test_rows_bigquery_rejects_become_dead_letters_and_the_rest_are_written() -> None:
    sink, client = _sink(row_ids=RowIdFromKey(("id",)), name="silver", stamp=True, schema_version="2")
    rows = [{"id": f"r{i}"} for i in range(1200)]
    rows[700]["bogus"] = 1
    out = [letter for batch in sink.process_batch(rows) for letter in batch]

    assert [len(r["rows"]) for r in client.requests] == [500, 500, 200]  # INSERT_BATCH rows a request
    assert all(r["skip"] for r in client.requests)
    assert client.requests[0]["row_ids"][0] == row_id("r0")
    assert client.requests[0]["rows"][0]["_schema_version"] == "2" and client.requests[0]["rows"][0]["_ingested_at"]
    (letter,) = out
    assert letter.reason == SINK_REJECTED and b'"r700"' in letter.payload and "no such field" in letter.detail
    assert (sink.written.value, sink.rejected.value) == (1199, 1)
