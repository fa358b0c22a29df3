"""Sinks: rows into BigQuery tables, dead letters onto a Pub/Sub topic.

Why not Beam's ``WriteToBigQuery``: it reaches BigQuery's table and load-job APIs through a
hard-coded endpoint, so it cannot talk to the BigQuery emulator, and it can fall into an
interactive OAuth flow without credentials. :class:`WriteRows` is a batched DoFn calling
google-cloud-bigquery's ``insert_rows_json`` (the streaming-insert API) in requests of
``INSERT_BATCH`` rows, which works the same against Dataflow's BigQuery and the emulator. The
tables must exist (the reconciler creates them); this sink never creates tables.

Idempotence: every row is sent with an ``insertId`` (BigQuery drops a row whose id it saw in
the last minute or so). Silver rows use a hash of the dedup key, so a retried bundle or a
duplicate that slipped past the dedup window within that minute is dropped again; Bronze rows
use a hash of their origin (file and line, or Pub/Sub message id), so retries do not double
raw rows while genuinely repeated payloads are all kept.

Rows BigQuery rejects one by one (``insertErrors``) are not lost: ``WriteRows`` outputs them as
dead letters with reason ``sink_rejected`` and the row as JSON payload, and counts them
(``sink_rejected``). A request that fails as a whole raises, so the runner retries the bundle.

Dead letters are published with the original payload as the message data and, as attributes:
``reason`` (the stable code), ``detail`` (human text, at most 1,000 characters), ``origin`` and
``source_id``.
"""


import datetime as dt
from collections.abc import Iterator
from typing import Any

import orjson

from beam.common.clients import bigquery_client, publisher_client
from beam.common.records import DeadLetter, Raw, Row
from beam.common.spec import BRONZE_FIELDS, SILVER_METADATA_FIELDS  # noqa: F401 - re-exported: the tables' columns
from beam.common.transforms import ListBatchDoFn, counter, key_function, row_id

INSERT_BATCH = 500  # BigQuery's recommended maximum rows per streaming-insert request
SINK_REJECTED = "sink_rejected"
_ATTRIBUTE_LIMIT = 1000  # Pub/Sub caps attribute values at 1,024 bytes


class RowIdFromKey:
    """insertId from the dedup key (Silver)."""

    def __init__(self, key_paths: tuple[str, ...]) -> None:
        self.key_paths = key_paths
        self._key_of: Any = None

    def __call__(self, row: Row) -> str:
        if self._key_of is None:
            self._key_of = key_function(self.key_paths)
        return row_id(self._key_of(row))


class RowIdFromField:
    """insertId from one field of the row (Bronze: ``origin``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, row: Row) -> str | None:
        v = row.get(self.name)
        return row_id(v) if v else None


class WriteRows(ListBatchDoFn):
    """Rows -> ``insert_rows_json`` into ``table``; outputs the rows BigQuery rejected.

    ``stamp`` adds the Silver metadata columns: ``_ingested_at`` (the time of the request),
    ``_schema_version`` (the given value) - ``_message_id`` is set by validation, from the
    record's origin.
    """

    def __init__(self, table: str, *, project: str | None, row_ids: Any = None, name: str = "rows",
                 stamp: bool = False, schema_version: str | None = None) -> None:
        self.table = table
        self.project = project
        self.row_ids = row_ids
        self.name = name
        self.stamp = stamp
        self.schema_version = schema_version

    def setup(self) -> None:
        self.client = bigquery_client(self.project)
        self.written = counter(f"{self.name}_rows_written")
        self.rejected = counter(SINK_REJECTED)

    def infer_output_type(self, input_type: Any) -> Any:
        return Any

    def process_batch(self, batch: list[Row]) -> Iterator[list[DeadLetter]]:
        for start in range(0, len(batch), INSERT_BATCH):
            rows = batch[start:start + INSERT_BATCH]
            if self.stamp:
                now = dt.datetime.now(dt.UTC).isoformat()
                for r in rows:
                    r["_ingested_at"] = now
                    r["_schema_version"] = self.schema_version
            ids = [self.row_ids(r) for r in rows] if self.row_ids else None
            # skip_invalid_rows: insert the good rows even when some are bad; the bad ones come
            # back in the per-row errors. Transport failures raise (the bundle is retried).
            errors = self.client.insert_rows_json(self.table, rows, row_ids=ids, skip_invalid_rows=True)
            bad = {e["index"]: e for e in errors if _is_row_error(e)}
            self.written.inc(len(rows) - len(bad))
            if bad:
                self.rejected.inc(len(bad))
                yield [
                    DeadLetter(orjson.dumps(rows[i]), SINK_REJECTED, _error_text(e), f"bigquery:{self.table}")
                    for i, e in sorted(bad.items())
                ]


def _is_row_error(entry: dict[str, Any]) -> bool:
    # With skip_invalid_rows BigQuery reports only the rejected rows; a "stopped" reason would
    # mean the row was not attempted because another failed (without skip_invalid_rows).
    return any(err.get("reason") != "stopped" for err in entry.get("errors", [])) or not entry.get("errors")


def _error_text(entry: dict[str, Any]) -> str:
    msgs = [f"{e.get('reason', '?')}: {e.get('message', '')}".strip() for e in entry.get("errors", [])]
    return "; ".join(msgs) or "rejected by BigQuery"


class BronzeRows(ListBatchDoFn):
    """``Raw`` records -> rows of the Bronze table (see :data:`BRONZE_FIELDS`)."""

    def __init__(self, source_id: str) -> None:
        self.source_id = source_id

    def infer_output_type(self, input_type: Any) -> Any:
        return dict[str, Any]

    def process_batch(self, batch: list[Raw]) -> Iterator[list[Row]]:
        now = dt.datetime.now(dt.UTC).isoformat()
        sid = self.source_id
        yield [
            {"source_id": sid, "payload": payload.decode("utf-8", "backslashreplace"),
             "attributes": [{"key": k, "value": v} for k, v in attributes], "origin": origin, "ingested_at": now}
            for payload, _parsed, origin, attributes in batch
        ]


class PublishDeadLetters(ListBatchDoFn):
    """Dead letters -> Pub/Sub: data = original payload, attributes = reason, detail, origin."""

    def __init__(self, topic: str, source_id: str) -> None:
        self.topic = topic
        self.source_id = source_id

    def setup(self) -> None:
        self.publisher = publisher_client()
        self.published = counter("dead_letters_published")

    def infer_output_type(self, input_type: Any) -> Any:
        return Any

    def process_batch(self, batch: list[DeadLetter]) -> Iterator[list[Any]]:
        futures = [
            self.publisher.publish(
                self.topic, d.payload,
                reason=d.reason, detail=d.detail[:_ATTRIBUTE_LIMIT], origin=d.origin[:_ATTRIBUTE_LIMIT],
                source_id=self.source_id,
            )
            for d in batch
        ]
        for f in futures:  # at-least-once: the bundle does not commit before Pub/Sub has them
            f.result(timeout=120)
        self.published.inc(len(futures))
        return iter(())
