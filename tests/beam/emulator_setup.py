"""Creating what a pipeline writes to on the emulators (the reconciler's job in production)."""

from __future__ import annotations

import time
from typing import Any

from google.cloud import bigquery, pubsub_v1

from beam.common.clients import bigquery_client, publisher_client
from beam.common.sinks import BRONZE_FIELDS, SILVER_METADATA_FIELDS
from beam.common.spec import Field, PipelineSpec


def schema_fields(fields: tuple[Field, ...]) -> list[bigquery.SchemaField]:
    return [
        bigquery.SchemaField(f.name, f.type, mode=f.mode, fields=schema_fields(f.fields)) for f in fields
    ]


def create_table(client: Any, ref: str, schema: list[bigquery.SchemaField]) -> None:
    project, dataset, _ = ref.split(".")
    client.create_dataset(bigquery.Dataset(f"{project}.{dataset}"), exists_ok=True)
    client.create_table(bigquery.Table(ref, schema=schema), exists_ok=True)


def create_ingest_targets(spec: PipelineSpec) -> str:
    """Bronze and Silver tables, the dead-letter topic and a subscription; returns its path."""
    bq = bigquery_client(spec.project)
    if spec.bronze_table:
        create_table(bq, spec.table_ref(spec.bronze_table), [bigquery.SchemaField.from_api_repr(f) for f in BRONZE_FIELDS])
    assert spec.silver_table and spec.dead_letter_topic
    create_table(bq, spec.table_ref(spec.silver_table),
                 schema_fields(spec.fields) + [bigquery.SchemaField.from_api_repr(f) for f in SILVER_METADATA_FIELDS])
    publisher_client().create_topic(name=spec.dead_letter_topic)
    sub = spec.dead_letter_topic.replace("/topics/", "/subscriptions/") + "-test"
    pubsub_v1.SubscriberClient().create_subscription(name=sub, topic=spec.dead_letter_topic)
    return sub


def pull_all(subscription: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Pull and ack until ``expected`` messages arrived (or the timeout)."""
    subscriber = pubsub_v1.SubscriberClient()
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        resp = subscriber.pull(subscription=subscription, max_messages=1000, timeout=5)
        if resp.received_messages:
            got.extend(m.message for m in resp.received_messages)
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in resp.received_messages])
    return got


def count_rows(spec: PipelineSpec, ref: str) -> int:
    bq = bigquery_client(spec.project)
    return next(iter(bq.query(f"SELECT COUNT(*) AS n FROM `{spec.table_ref(ref)}`").result())).n


def bronze_attributes(spec: PipelineSpec, ref: str, origin: str) -> dict[str, str]:
    """The ``attributes`` column of the Bronze row with this origin, as a dict."""
    bq = bigquery_client(spec.project)
    job = bq.query(f"SELECT attributes FROM `{spec.table_ref(ref)}` WHERE origin = @origin",
                   job_config=bigquery.QueryJobConfig(
                       query_parameters=[bigquery.ScalarQueryParameter("origin", "STRING", origin)]))
    (row,) = job.result()
    return {a["key"]: a["value"] for a in row.attributes}
