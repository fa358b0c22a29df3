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


def states_plan():
    """A plan with the states issue 9 added: an import (adopted) and one not adopted, a change
    blocked by the blocked change it depends on, a gated subscription replacement quoting its
    backlog, a reference to another project's topic that cannot be read, a draining job replaced."""
    labels = {**LABELS, "headwater-source": "orders"}
    protected = {**labels, "headwater-deletion-protection": "true"}
    bucket = Resource(Kind.STORAGE_BUCKET, "landing-demo", {"location": "EUROPE-WEST1", "storage_class": "STANDARD"},
                      {**LABELS, "headwater-deletion-protection": "true"})
    theirs = replace(bucket, spec={**bucket.spec, "storage_class": "NEARLINE"}, labels={"owner": "finance-team"})
    adopted = Resource(Kind.PUBSUB_TOPIC, "orders-dlq", {}, protected)
    sub = Resource(Kind.PUBSUB_SUBSCRIPTION, "orders-ingest", {"topic": "web-events", "ack_deadline_seconds": 60},
                   protected, depends_on=("pubsub_topic.web-events",))
    backlog = replace(sub, spec={"topic": "orders", "ack_deadline_seconds": 60},
                      status={"would_lose": "about 5 unacked messages (Cloud Monitoring's last count)"})
    schema = [{"name": "id", "type": "STRING", "mode": "REQUIRED"}]
    table = Resource(Kind.BIGQUERY_TABLE, "silver.orders",
                     {"schema": [*schema, {"name": "note", "type": "STRING", "mode": "NULLABLE"}]}, protected,
                     options={"schema_evolution": "none"})
    job = Resource(Kind.DATAFLOW_JOB, "orders-ingest", {"template": "pubsub_to_bigquery", "streaming": True,
                                                        "parameters": {"input_subscription": "orders-ingest"}},
                   labels, depends_on=(table.address,))
    gold = Resource(Kind.DATAFLOW_JOB, "orders-gold", {"template": "bigquery_to_bigquery", "streaming": False,
                                                       "parameters": {"columns": "id,note"}},
                    labels, depends_on=(table.address,))
    clicks = Resource(Kind.DATAFLOW_JOB, "clicks-ingest", {"template": "pubsub_to_bigquery", "streaming": True},
                      {**LABELS, "headwater-source": "clicks"})
    reference = Resource(Kind.PUBSUB_TOPIC, "projects/shared-events-prod/topics/web-events", external=True)
    on_reference = Resource(Kind.PUBSUB_SUBSCRIPTION, "clicks-ingest",
                            {"topic": reference.name, "ack_deadline_seconds": 60},
                            {**LABELS, "headwater-source": "clicks"}, depends_on=(reference.address,))
    web = Resource(Kind.PUBSUB_TOPIC, "web-events", {}, protected)
    live = [
        theirs,
        replace(adopted, labels={"owner": "ops"}),
        backlog,
        web,
        replace(table, spec={"schema": schema}),
        replace(job, spec={**job.spec, "parameters": {"input_subscription": "old"}}),
        replace(gold, spec={**gold.spec, "parameters": {"columns": "id"}}),
        replace(clicks, status={"leaving": "draining"}),
    ]
    immutable = {**IMMUTABLE, Kind.DATAFLOW_JOB: frozenset({"template", "streaming"})}
    return reconcile([bucket, adopted, sub, web, table, job, gold, clicks, reference, on_reference], live, immutable,
                     PlanOptions(environment="dev", adopt=frozenset({adopted.address})),
                     revision="0123456789abcdef" * 2)


@pytest.mark.parametrize("fmt,suffix", [("text", "txt"), ("json", "json"), ("markdown", "md")])
def test_plan_states_match_golden(fmt, suffix):
    check_golden(f"plan_states.{suffix}", render(states_plan(), fmt))


def test_plan_states_are_the_ones_intended():
    changes = {c.address: c for c in states_plan().changes}
    assert (changes["storage_bucket.landing-demo"].action, bool(changes["storage_bucket.landing-demo"].blocked)) == \
        ("import", True)
    assert (changes["pubsub_topic.orders-dlq"].action, changes["pubsub_topic.orders-dlq"].blocked) == ("import", None)
    assert "about 5 unacked messages" in changes["pubsub_subscription.orders-ingest"].blocked
    assert changes["dataflow_job.orders-ingest"].blocked_by == ("bigquery_table.silver.orders",)
    assert changes["dataflow_job.orders-gold"].blocked_by == ("bigquery_table.silver.orders",)
    assert changes["pubsub_subscription.clicks-ingest"].blocked_by == (
        "pubsub_topic.projects/shared-events-prod/topics/web-events",)
    assert changes["dataflow_job.clicks-ingest"].action == "replace"
