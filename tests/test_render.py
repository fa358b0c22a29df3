"""Plan output: text, JSON and Markdown renderings of one fixed plan (golden files)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from golden import check_golden

from reconciler.plan import PlanOptions, reconcile
from reconciler.render import render, summary_line
from reconciler.resources import Kind, Resource

LABELS = {"managed-by": "headwater", "headwater-platform": "dev"}
IMMUTABLE = {Kind.PUBSUB_SUBSCRIPTION: frozenset({"topic"}), Kind.STORAGE_BUCKET: frozenset({"location"})}


def sample_plan():
    topic = Resource(Kind.PUBSUB_TOPIC, "orders", {}, {**LABELS, "headwater-source": "orders"})
    sub = Resource(Kind.PUBSUB_SUBSCRIPTION, "orders-ingest", {"topic": "orders", "ack_deadline_seconds": 60},
                   {**LABELS, "headwater-source": "orders"})
    bucket = Resource(Kind.STORAGE_BUCKET, "bronze-demo", {"location": "EUROPE-WEST1"}, LABELS)
    table = Resource(Kind.BIGQUERY_TABLE, "silver.legacy", {}, {**LABELS, "headwater-deletion-protection": "true"})
    old_sub = Resource(Kind.PUBSUB_SUBSCRIPTION, "legacy-ingest", {}, LABELS)
    live = [
        replace(sub, spec={"topic": "orders", "ack_deadline_seconds": 20}),
        replace(bucket, spec={"location": "US"}),
        table,
        old_sub,
    ]
    return reconcile([topic, sub, bucket], live, IMMUTABLE,
                     PlanOptions(prune=True, max_delete_fraction=1, environment="dev"), revision="0123456789abcdef" * 2)


@pytest.mark.parametrize("fmt,suffix", [("text", "txt"), ("json", "json"), ("markdown", "md")])
def test_plan_output_matches_golden(fmt, suffix):
    check_golden(f"plan.{suffix}", render(sample_plan(), fmt))


def test_json_output_parses_and_is_versioned():
    doc = json.loads(render(sample_plan(), "json"))
    assert doc["format_version"] == "1"
    actions = {c["address"]: c["action"] for c in doc["changes"]}
    assert actions == {
        "pubsub_topic.orders": "create",
        "pubsub_subscription.orders-ingest": "update",
        "storage_bucket.bronze-demo": "replace",
        "pubsub_subscription.legacy-ingest": "delete",
        "bigquery_table.silver.legacy": "delete",
    }
    blocked = {c["address"] for c in doc["changes"] if c["blocked"]}
    # A subscription holds data (its backlog): its deletion is gated like the table's.
    assert blocked == {"storage_bucket.bronze-demo", "bigquery_table.silver.legacy", "pubsub_subscription.legacy-ingest"}


def test_no_changes_summary():
    topic = Resource(Kind.PUBSUB_TOPIC, "orders", {}, LABELS)
    plan = reconcile([topic], [topic], {})
    assert summary_line(plan) == "No changes. Live state matches the desired state."
    assert render(plan, "text").endswith("No changes. Live state matches the desired state.\n")
