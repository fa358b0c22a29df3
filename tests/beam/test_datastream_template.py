"""datastream_to_bigquery on the emulators: Datastream's event files in a landing bucket, applied to
a Bronze change log and a Silver table, in batch (FnApiRunner) and streaming (file events from a
TestStream, on the local streaming runner).

The files are written as Datastream writes them (JSON lines per stream object); the order they
are applied in is not source order on purpose: Silver must follow the source, not the arrival.
"""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_stream import TestStream as EventStream
from emulator_setup import create_table, pull_all
from google.cloud import bigquery, pubsub_v1
from test_file_events import notification

from beam.common.clients import bigquery_client, publisher_client, storage_client
from beam.common.runner import counters
from beam.common.spec import CDC_BRONZE_FIELDS, CDC_SILVER_FIELDS, parse_spec
from beam.datastream_to_bigquery.pipeline import build, build_streaming

FIELDS = [{"name": "order_id", "type": "INT64", "mode": "REQUIRED"},
          {"name": "status", "type": "STRING", "mode": "REQUIRED"},
          {"name": "amount", "type": "NUMERIC", "mode": "NULLABLE"}]


def event(uuid: str, change_type: str, ts: str, lsn: str, payload: dict) -> bytes:
    return json.dumps({
        "uuid": uuid, "read_timestamp": ts, "source_timestamp": ts, "object": "public_orders",
        "read_method": "postgres-cdc-wal", "stream_name": "projects/p/locations/l/streams/shop",
        "schema_key": "k", "sort_keys": [ts, lsn],
        "source_metadata": {"schema": "public", "table": "orders", "change_type": change_type,
                            "is_deleted": change_type.endswith("DELETE"), "tx_id": 1, "lsn": lsn,
                            "primary_keys": ["order_id"]},
        "payload": payload}).encode()


# Three transactions, in source order: T1 inserts 1 and 2; T2 pays 1; T3 ships 1 and deletes 2.
T1 = [event("e1", "INSERT", "2026-11-30T10:00:01.000", "0/100", {"order_id": 1, "status": "new", "amount": "5.00"}),
      event("e2", "INSERT", "2026-11-30T10:00:01.000", "0/180", {"order_id": 2, "status": "new", "amount": "7.50"})]
T2 = [event("e3", "UPDATE-INSERT", "2026-11-30T10:00:02.000", "0/200",
            {"order_id": 1, "status": "paid", "amount": "5.00"}),
      b'{"this is": "not a change event"}',
      event("e4", "UPDATE-INSERT", "2026-11-30T10:00:02.000", "0/280", {"order_id": 1, "status": 42})]
T3 = [event("e5", "UPDATE-INSERT", "2026-11-30T10:00:03.000", "0/300",
            {"order_id": 1, "status": "shipped", "amount": "5.00"}),
      event("e6", "DELETE", "2026-11-30T10:00:03.000", "0/380", {"order_id": 2, "status": None, "amount": None})]


class Stream:
    """One CDC source on the emulators: its spec, tables, topic and buckets."""

    def __init__(self, project: str, unique: str) -> None:
        self.project = project
        self.doc = {
            "source_id": "shop", "project": project,
            "bronze": {"bucket": f"gs://{unique}-bronze"},
            "dead_letter": {"topic": f"projects/{project}/topics/shop-dlq"},
            "cdc": {"source_type": "postgresql", "tables": [{
                "object": "public.orders", "primary_key": ["order_id"], "schema": {"version": "1", "fields": FIELDS},
                "bronze": {"table": "bronze.shop_orders_changes"}, "silver": {"table": "silver.shop_orders"}}]},
        }
        self.spec = parse_spec(self.doc)
        bq = bigquery_client(project)
        relaxed = [dict(f, mode="NULLABLE") for f in FIELDS]
        create_table(bq, f"{project}.bronze.shop_orders_changes",
                     [bigquery.SchemaField.from_api_repr(f) for f in (*relaxed, *CDC_BRONZE_FIELDS)])
        create_table(bq, f"{project}.silver.shop_orders",
                     [bigquery.SchemaField.from_api_repr(f) for f in (*FIELDS, *CDC_SILVER_FIELDS)])
        publisher_client().create_topic(name=self.spec.dead_letter_topic)
        self.dead_letters = f"projects/{project}/subscriptions/shop-dlq-test"
        pubsub_v1.SubscriberClient().create_subscription(name=self.dead_letters, topic=self.spec.dead_letter_topic)
        client = storage_client()
        self.landing = client.create_bucket(f"{unique}-landing")
        self.bronze_bucket = client.create_bucket(f"{unique}-bronze")
        self.pattern = f"gs://{unique}-landing/cdc/shop/"

    def land(self, name: str, lines: list[bytes]) -> Any:
        blob = self.landing.blob(f"cdc/shop/public_orders/2026/11/30/10/00/{name}")
        blob.upload_from_string(b"\n".join(lines) + b"\n")
        return blob

    def batch(self) -> dict[str, int]:
        p = beam.Pipeline(runner=FnApiRunner())
        build(p, self.spec, self.pattern)
        result = p.run()
        result.wait_until_finish()
        return counters(result)

    def query(self, sql: str) -> list[dict]:
        return [dict(r) for r in bigquery_client(self.project).query(sql).result()]

    def silver(self) -> dict[int, str]:
        return {r["order_id"]: r["status"] for r in self.query(f"SELECT * FROM `{self.project}.silver.shop_orders`")}

    def bronze(self) -> list[dict]:
        return self.query(f"SELECT _event_id, _valid, _invalid_reason, order_id FROM "
                          f"`{self.project}.bronze.shop_orders_changes` ORDER BY _event_id")

    def landing_files(self) -> list[str]:
        return sorted(b.name for b in storage_client().list_blobs(self.landing) if not b.name.startswith("_headwater/"))


def test_batch_applies_files_in_any_order_to_the_current_state(emulators: Any, project_id: str, unique: str):
    stream = Stream(project_id, unique)
    stream.land("c-t3.jsonl", T3)  # newest first, then oldest
    stream.land("a-t1.jsonl", T1)
    counts = stream.batch()
    assert stream.silver() == {1: "shipped"}, "order 2 was deleted after it was inserted"

    stream.land("b-t2.jsonl", T2)  # a late, older transaction: history, not the current state
    counts2 = stream.batch()
    assert stream.silver() == {1: "shipped"}
    bronze = stream.bronze()
    assert [r["_event_id"] for r in bronze] == ["e1", "e2", "e3", "e4", "e5", "e6"], "every change once"
    assert [r["_event_id"] for r in bronze if not r["_valid"]] == ["e4"]
    assert bronze[3]["_invalid_reason"] == "wrong_type"
    reasons = sorted(m.attributes["reason"] for m in pull_all(stream.dead_letters, 2))
    assert reasons == ["unknown_table", "wrong_type"]
    assert counts["records_in"] == 4 and counts["changes_valid"] == 4 and counts["changes_deleted"] == 1
    assert counts2["records_in"] == 3 == counts2["changes_valid"] + counts2["invalid_unknown_table"] + \
        counts2["invalid_wrong_type"]

    # Every file applied has left the landing prefix for the Bronze archive.
    assert stream.landing_files() == []
    archived = sorted(b.name for b in storage_client().list_blobs(stream.bronze_bucket))
    assert len(archived) == 3 and all(n.startswith("source=shop/date=") for n in archived)

    # A replay - the same events landed again (a reader that restarted, a re-sent file) - changes nothing.
    stream.land("replay-t2.jsonl", T2)
    stream.land("replay-t1.jsonl", T1)
    stream.batch()
    assert stream.silver() == {1: "shipped"}
    assert len(stream.bronze()) == 6


def test_streaming_applies_each_file_as_its_event_arrives(emulators: Any, project_id: str, unique: str):
    stream = Stream(project_id, unique)
    blobs = [stream.land("t1.jsonl", T1), stream.land("t3.jsonl", T3), stream.land("t2.jsonl", T2)]
    events = [notification(blob, message_id=f"m{n}") for n, blob in enumerate(blobs)]
    test_stream = EventStream()
    for message in (events[0], events[1], events[1], events[2]):  # one event delivered twice
        test_stream = test_stream.add_elements([message]).advance_processing_time(1)
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
    build_streaming(p, stream.spec, stream.pattern, messages=p | test_stream.advance_watermark_to_infinity())
    p.run().wait_until_finish()
    assert stream.silver() == {1: "shipped"}
    assert len(stream.bronze()) == 6
    assert stream.landing_files() == []
