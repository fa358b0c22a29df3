"""Plan: the pure reconcile function and its safety rules, case by case."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.plan import Action, PlanOptions, reconcile
from reconciler.resources import Kind, Resource, digest_of

LABELS = {"managed-by": "headwater", "headwater-platform": "dev"}
IMMUTABLE = {
    Kind.CLOUD_RUN_SERVICE: frozenset({"image"}),  # not so on Cloud Run: a stand-in for any immutable field
    Kind.PUBSUB_SUBSCRIPTION: frozenset({"topic"}),
    Kind.STORAGE_BUCKET: frozenset({"location"}),
    Kind.BIGQUERY_TABLE: frozenset({"time_partitioning.type", "time_partitioning.field"}),
    Kind.DATAFLOW_JOB: frozenset({"template", "streaming"}),
}

SUB = Resource(Kind.PUBSUB_SUBSCRIPTION, "orders-ingest",
               {"topic": "orders", "ack_deadline_seconds": 60,
                "retry_policy": {"minimum_backoff": 10, "maximum_backoff": 600}},
               {**LABELS, "headwater-source": "orders"}, depends_on=("pubsub_topic.orders",))
TOPIC = Resource(Kind.PUBSUB_TOPIC, "orders", {}, {**LABELS, "headwater-source": "orders"})
BUCKET = Resource(Kind.STORAGE_BUCKET, "bronze-x", {"location": "EUROPE-WEST1", "storage_class": "STANDARD"},
                  {**LABELS, "headwater-deletion-protection": "true"})
SCHEMA = [{"name": "id", "type": "STRING", "mode": "REQUIRED"}, {"name": "amount", "type": "FLOAT64", "mode": "NULLABLE"}]
TABLE = Resource(Kind.BIGQUERY_TABLE, "silver.orders",
                 {"schema": SCHEMA, "time_partitioning": {"type": "DAY", "field": None}},
                 {**LABELS, "headwater-source": "orders", "headwater-deletion-protection": "true"},
                 options={"schema_evolution": "backward_compatible"})

PIPELINE = {"version": 1, "source_id": "clicks", "schema": {"fields": [{"name": "id", "type": "STRING"}]},
            "deduplication": {"key": ["id"], "window_seconds": 600}}
STREAM_JOB = Resource(Kind.DATAFLOW_JOB, "clicks-ingest",
                      {"template": "pubsub_to_bigquery", "streaming": True, "schedule": None,
                       "parameters": {"input_subscription": "projects/p/subscriptions/clicks-ingest"},
                       "pipeline": PIPELINE},
                      {**LABELS, "headwater-source": "clicks"})
SERVICE = Resource(Kind.CLOUD_RUN_SERVICE, "payments-connector", {"image": "img:1", "min_instances": 1},
                   {**LABELS, "headwater-source": "payments"})
BATCH_JOB = Resource(Kind.DATAFLOW_JOB, "orders-ingest",
                     {"template": "gcs_to_bigquery", "streaming": False, "schedule": "0 3 * * *",
                      "parameters": {"input_pattern": "gs://landing/orders/"}, "pipeline": PIPELINE},
                     {**LABELS, "headwater-source": "orders"})


def fingerprinted(job: Resource, **spec) -> Resource:
    """A job as the Dataflow provider observes it: parameters and pipeline as digests only."""
    values = {**job.spec, **spec}
    return Resource(job.kind, job.name, {**values, "parameters": digest_of(values["parameters"]),
                                         "pipeline": digest_of(values["pipeline"])}, job.labels)


def live(resource: Resource, **spec) -> Resource:
    """The live twin of a desired resource, with some spec fields changed; extra server fields too."""
    return Resource(resource.kind, resource.name, {**resource.spec, "server_default": 1, **spec}, resource.labels)


def with_schema(table: Resource, schema, evolution="backward_compatible") -> Resource:
    return replace(table, spec={**table.spec, "schema": schema}, options={"schema_evolution": evolution})


def plan_one(desired, live_resources, **options):
    return reconcile(desired, live_resources, IMMUTABLE, PlanOptions(environment="dev", **options))


CASES = [
    # id, desired, live, options, expected action, expected blocked?, expected diff paths
    ("missing-is-created", [SUB], [], {}, Action.CREATE, False, []),
    ("equal-is-noop", [SUB], [live(SUB)], {}, Action.NOOP, False, []),
    ("undeclared-server-fields-are-ignored", [TOPIC], [live(TOPIC, message_retention_duration=86400)], {},
     Action.NOOP, False, []),
    ("changed-field-is-updated", [SUB], [live(SUB, ack_deadline_seconds=30)], {}, Action.UPDATE, False,
     ["ack_deadline_seconds"]),
    ("nested-field-diff-is-per-leaf", [SUB], [live(SUB, retry_policy={"minimum_backoff": 5, "maximum_backoff": 600})],
     {}, Action.UPDATE, False, ["retry_policy.minimum_backoff"]),
    ("missing-label-is-updated", [SUB], [replace(live(SUB), labels=LABELS)], {}, Action.UPDATE, False,
     ["labels.headwater-source"]),
    ("extra-live-label-is-ignored", [SUB], [replace(live(SUB), labels={**SUB.labels, "owner": "x"})], {},
     Action.NOOP, False, []),
    ("immutable-field-forces-replace", [SERVICE], [live(SERVICE, image="other")], {}, Action.REPLACE, False,
     ["image"]),
    ("subscription-replace-is-gated-like-a-table", [SUB], [live(SUB, topic="other")], {}, Action.REPLACE, True,
     ["topic"]),
    ("bucket-replace-blocked-without-allow-destroy", [BUCKET], [live(BUCKET, location="US")], {},
     Action.REPLACE, True, ["location"]),
    ("bucket-replace-blocked-by-deletion-protection", [BUCKET], [live(BUCKET, location="US")],
     {"allow_destroy": True}, Action.REPLACE, True, ["location"]),
    ("unprotected-bucket-replace-allowed", [replace(BUCKET, deletion_protection=False)],
     [live(BUCKET, location="US")], {"allow_destroy": True}, Action.REPLACE, False, ["location"]),
    ("orphan-kept-without-prune", [TOPIC], [live(TOPIC), live(SUB)], {}, Action.NOOP, False, []),
    ("orphan-deleted-with-prune", [TOPIC], [live(TOPIC), live(SERVICE)], {"prune": True, "max_delete_fraction": 1},
     Action.DELETE, False, []),
    ("orphan-subscription-delete-is-gated", [TOPIC], [live(TOPIC), live(SUB)],
     {"prune": True, "max_delete_fraction": 1}, Action.DELETE, True, []),
    ("orphan-table-blocked-without-allow-destroy", [TOPIC], [live(TOPIC), live(TABLE)],
     {"prune": True, "max_delete_fraction": 1}, Action.DELETE, True, []),
    ("orphan-protected-table-blocked-with-allow-destroy", [TOPIC], [live(TOPIC), live(TABLE)],
     {"prune": True, "allow_destroy": True, "max_delete_fraction": 1}, Action.DELETE, True, []),
    ("orphan-unprotected-table-deleted-with-allow-destroy", [TOPIC],
     [live(TOPIC), replace(live(TABLE), labels={**TABLE.labels, "headwater-deletion-protection": "false"})],
     {"prune": True, "allow_destroy": True, "max_delete_fraction": 1}, Action.DELETE, False, []),
    ("schema-nullable-column-added",
     [with_schema(TABLE, [*SCHEMA, {"name": "note", "type": "STRING", "mode": "NULLABLE"}])], [live(TABLE)], {},
     Action.UPDATE, False, ["schema.note"]),
    ("schema-column-order-is-not-a-change", [with_schema(TABLE, list(reversed(SCHEMA)))], [live(TABLE)], {},
     Action.NOOP, False, []),
    ("schema-required-column-added-is-blocked",
     [with_schema(TABLE, [*SCHEMA, {"name": "note", "type": "STRING", "mode": "REQUIRED"}])], [live(TABLE)], {},
     Action.UPDATE, True, ["schema.note"]),
    ("schema-column-removed-is-blocked", [with_schema(TABLE, SCHEMA[:1])], [live(TABLE)], {},
     Action.UPDATE, True, ["schema.amount"]),
    ("schema-type-change-is-blocked",
     [with_schema(TABLE, [SCHEMA[0], {"name": "amount", "type": "NUMERIC", "mode": "NULLABLE"}])], [live(TABLE)], {},
     Action.UPDATE, True, ["schema.amount"]),
    ("schema-relax-required-is-allowed",
     [with_schema(TABLE, [{"name": "id", "type": "STRING", "mode": "NULLABLE"}, SCHEMA[1]])], [live(TABLE)], {},
     Action.UPDATE, False, ["schema.id"]),
    ("schema-evolution-none-blocks-additions",
     [with_schema(TABLE, [*SCHEMA, {"name": "note", "type": "STRING", "mode": "NULLABLE"}], "none")], [live(TABLE)], {},
     Action.UPDATE, True, ["schema.note"]),
    ("schema-recreate-replaces-but-still-needs-allow-destroy",
     [with_schema(TABLE, SCHEMA[:1], "recreate")], [live(TABLE)], {}, Action.REPLACE, True, ["schema.amount"]),
    ("partitioning-change-forces-replace",
     [replace(TABLE, spec={**TABLE.spec, "time_partitioning": {"type": "DAY", "field": "ts"}})], [live(TABLE)], {},
     Action.REPLACE, True, ["time_partitioning.field"]),
    ("job-parameter-change-is-an-update", [STREAM_JOB],
     [live(STREAM_JOB, parameters={"input_subscription": "projects/p/subscriptions/old"})], {}, Action.UPDATE, False,
     ["parameters.input_subscription"]),
    ("job-pipeline-change-is-an-update-per-leaf", [STREAM_JOB],
     [live(STREAM_JOB, pipeline={**PIPELINE, "deduplication": {"key": ["id"], "window_seconds": 60}})], {},
     Action.UPDATE, False, ["pipeline.deduplication.window_seconds"]),
    ("job-template-change-drains-and-relaunches", [STREAM_JOB], [live(STREAM_JOB, template="pubsub_to_gcs")], {},
     Action.REPLACE, False, ["template"]),
    ("job-streaming-flag-change-drains-and-relaunches", [STREAM_JOB], [live(STREAM_JOB, streaming=False)], {},
     Action.REPLACE, False, ["streaming"]),
    ("job-fingerprints-that-match-are-no-change", [STREAM_JOB], [fingerprinted(STREAM_JOB)], {}, Action.NOOP, False, []),
    ("job-fingerprint-that-differs-is-an-update", [STREAM_JOB],
     [fingerprinted(STREAM_JOB, parameters={"input_subscription": "projects/p/subscriptions/old"})], {},
     Action.UPDATE, False, ["parameters"]),
    ("orphan-job-is-deleted-with-prune-never-blocked", [TOPIC], [live(TOPIC), live(STREAM_JOB)],
     {"prune": True, "max_delete_fraction": 1}, Action.DELETE, False, []),
    ("other-platform-resources-are-not-touched", [TOPIC],
     [live(TOPIC), replace(live(SUB), labels={**SUB.labels, "headwater-platform": "prod"})],
     {"prune": True, "max_delete_fraction": 1}, Action.NOOP, False, []),
]


@pytest.mark.parametrize(("desired", "live_resources", "options", "action", "blocked", "paths"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reconcile(desired, live_resources, options, action, blocked, paths):
    plan = plan_one(desired, live_resources, **options)
    # The case's subject is the last change that is not a no-op (or the only change).
    interesting = [c for c in plan.changes if c.action != Action.NOOP] or list(plan.changes)
    change = interesting[-1]
    assert change.action == action, change
    assert bool(change.blocked) == blocked, change.blocked
    assert [d.path for d in change.diff] == paths
    assert plan.refused is None


def test_replace_lists_the_fields_that_force_it():
    plan = plan_one([SUB], [live(SUB, topic="other")])
    (change,) = plan.changes
    assert change.replace_paths == ["topic"]
    assert "topic cannot change in place" in change.reason


def test_blocked_schema_change_explains_itself():
    plan = plan_one([with_schema(TABLE, SCHEMA[:1])], [live(TABLE)])
    (change,) = plan.changes
    assert "removes column amount" in change.blocked and "backward_compatible" in change.blocked
    assert plan.actionable == []


def test_update_sends_only_changed_top_level_fields():
    plan = plan_one([SUB], [replace(live(SUB, ack_deadline_seconds=30), labels=LABELS)])
    (change,) = plan.changes
    assert change.update_fields == ("ack_deadline_seconds", "labels")


def test_empty_desired_state_is_refused():
    plan = reconcile([], [live(TOPIC), live(SUB)], IMMUTABLE, PlanOptions(prune=True), declared_sources=0)
    assert plan.refused and "declares no sources" in plan.refused
    assert plan.actionable == []


def test_empty_desired_state_is_refused_even_without_prune():
    plan = reconcile([], [live(TOPIC)], IMMUTABLE, PlanOptions(), declared_sources=0)
    assert plan.refused


def test_too_many_deletes_are_refused():
    topics = [Resource(Kind.STORAGE_NOTIFICATION, f"b/t{i}", {}, LABELS) for i in range(10)]
    plan = reconcile(topics[:7], topics, IMMUTABLE, PlanOptions(prune=True, max_delete_fraction=0.2))
    assert plan.refused and "deletes 3 of 10" in plan.refused
    assert plan.actionable == []
    ok = reconcile(topics[:8], topics, IMMUTABLE, PlanOptions(prune=True, max_delete_fraction=0.2))
    assert ok.refused is None and len(ok.actionable) == 2


def test_changes_are_ordered_by_dependency_and_deletes_reversed():
    desired = [SUB, TOPIC, TABLE, BUCKET]
    orphan_sub = Resource(Kind.PUBSUB_SUBSCRIPTION, "old-ingest", {}, LABELS)
    orphan_topic = Resource(Kind.PUBSUB_TOPIC, "old", {}, LABELS)
    plan = reconcile(desired, [orphan_topic, orphan_sub], IMMUTABLE, PlanOptions(prune=True, max_delete_fraction=1))
    order = [(c.action, c.kind) for c in plan.changes]
    assert order == [
        (Action.CREATE, Kind.STORAGE_BUCKET), (Action.CREATE, Kind.PUBSUB_TOPIC),
        (Action.CREATE, Kind.PUBSUB_SUBSCRIPTION), (Action.CREATE, Kind.BIGQUERY_TABLE),
        (Action.DELETE, Kind.PUBSUB_SUBSCRIPTION), (Action.DELETE, Kind.PUBSUB_TOPIC),
    ]


def test_plan_json_document_shape():
    plan = reconcile([SUB], [live(SUB, ack_deadline_seconds=30)], IMMUTABLE, revision="abc")
    doc = plan.to_dict()
    assert doc["format_version"] == "1" and doc["revision"] == "abc"
    (change,) = doc["changes"]
    assert {"address", "kind", "name", "action", "before", "after", "diff", "reason", "blocked"} <= set(change)
    assert change["diff"] == [{"path": "ack_deadline_seconds", "before": 30, "after": 60, "forces_replacement": False}]
    assert doc["summary"]["update"] == 1


@pytest.mark.parametrize(("desired", "live_job", "action", "says"), [
    (replace(STREAM_JOB, spec={**STREAM_JOB.spec, "pipeline": {**PIPELINE, "deduplication": None}}), STREAM_JOB,
     Action.UPDATE, "the running streaming job is updated in place, keeping its state"),
    (replace(STREAM_JOB, spec={**STREAM_JOB.spec, "template": "pubsub_to_gcs"}), STREAM_JOB,
     Action.REPLACE, "template cannot change in place — the streaming job is drained (in-flight data finished), "
                     "then launched anew"),
    (replace(BATCH_JOB, spec={**BATCH_JOB.spec, "schedule": "0 4 * * *"}), BATCH_JOB,
     Action.UPDATE, "the batch job's next runs use the new settings; a run in progress finishes as launched"),
    (replace(BATCH_JOB, spec={**BATCH_JOB.spec, "template": "bigquery_to_bigquery"}), BATCH_JOB,
     Action.REPLACE, "the batch job is cancelled, then launched anew"),
], ids=["streaming-update-in-place", "streaming-replace-drains", "batch-update-next-runs", "batch-replace-cancels"])
def test_the_plan_says_what_happens_to_a_running_job(desired, live_job, action, says):
    (change,) = plan_one([desired], [live(live_job)]).changes
    assert change.action == action
    assert says in change.reason


def test_a_pruned_streaming_job_is_drained_and_a_batch_job_cancelled():
    plan = plan_one([TOPIC], [live(TOPIC), live(STREAM_JOB), live(BATCH_JOB)], prune=True, max_delete_fraction=1)
    reasons = {c.name: c.reason for c in plan.changes if c.action == Action.DELETE}
    assert reasons["clicks-ingest"].endswith("drained (in-flight data finished), not cancelled")
    assert reasons["orders-ingest"].endswith(" — cancelled")


def test_jobs_are_launched_after_tables_and_deleted_first():
    plan = reconcile([TABLE, STREAM_JOB], [live(SUB)], IMMUTABLE, PlanOptions(prune=True, max_delete_fraction=1))
    assert [(c.action, c.kind) for c in plan.changes] == [
        (Action.CREATE, Kind.BIGQUERY_TABLE), (Action.CREATE, Kind.DATAFLOW_JOB), (Action.DELETE, Kind.PUBSUB_SUBSCRIPTION)]
    plan = reconcile([], [live(SUB), live(STREAM_JOB)], IMMUTABLE, PlanOptions(prune=True, max_delete_fraction=1))
    assert [c.kind for c in plan.changes] == [Kind.DATAFLOW_JOB, Kind.PUBSUB_SUBSCRIPTION]


# --------------------------------------------------------------------------- issue 9, by kind
# Each kind of fault, as pure cases: the peers' reports with their values, and variants.

TP = {"type": "DAY", "field": "ordered_at"}
PARTITIONED = replace(TABLE, spec={**TABLE.spec, "time_partitioning": TP})
BQ_IMMUTABLE = {**IMMUTABLE, Kind.BIGQUERY_DATASET: frozenset({"location"}),
                Kind.PUBSUB_SUBSCRIPTION: frozenset({"topic", "filter", "enable_message_ordering"})}
DATASET = Resource(Kind.BIGQUERY_DATASET, "silver", {"location": "europe-west1", "description": "d"},
                   {**LABELS, "headwater-deletion-protection": "true"})


def tp(**fields):
    return {**TP, **fields}


KIND_1 = [
    # id, desired, live, expected action, diff paths, replace paths
    ("undeclared-partition-expiration-set-elsewhere-is-no-change", PARTITIONED,
     live(PARTITIONED, time_partitioning=tp(expiration_ms=7_776_000_000)), Action.NOOP, [], []),
    ("declared-partition-expiration-is-updated-in-place",
     replace(PARTITIONED, spec={**PARTITIONED.spec, "time_partitioning": tp(expiration_ms=86_400_000)}),
     live(PARTITIONED, time_partitioning=tp(expiration_ms=7_776_000_000)), Action.UPDATE,
     ["time_partitioning.expiration_ms"], []),
    ("never-removes-an-expiration-in-place",
     replace(PARTITIONED, spec={**PARTITIONED.spec, "time_partitioning": tp(expiration_ms=None)}),
     live(PARTITIONED, time_partitioning=tp(expiration_ms=7_776_000_000)), Action.UPDATE,
     ["time_partitioning.expiration_ms"], []),
    ("partition-field-change-forces-replacement",
     replace(PARTITIONED, spec={**PARTITIONED.spec, "time_partitioning": tp(field="shipped_at")}),
     live(PARTITIONED, time_partitioning=tp(expiration_ms=1)), Action.REPLACE, ["time_partitioning.field"],
     ["time_partitioning.field"]),
    ("partition-type-change-forces-replacement",
     replace(PARTITIONED, spec={**PARTITIONED.spec, "time_partitioning": tp(type="MONTH")}),
     live(PARTITIONED), Action.REPLACE, ["time_partitioning.type"], ["time_partitioning.type"]),
    ("partitioning-added-forces-replacement", PARTITIONED, live(PARTITIONED, time_partitioning=None),
     Action.REPLACE, ["time_partitioning"], ["time_partitioning"]),
    ("undeclared-require-partition-filter-set-elsewhere-is-no-change", PARTITIONED,
     live(PARTITIONED, require_partition_filter=True), Action.NOOP, [], []),
    ("declared-require-partition-filter-is-updated-in-place",
     replace(PARTITIONED, spec={**PARTITIONED.spec, "require_partition_filter": True}),
     live(PARTITIONED, require_partition_filter=False), Action.UPDATE, ["require_partition_filter"], []),
    ("undeclared-dataset-default-expiration-set-elsewhere-is-no-change", DATASET,
     live(DATASET, default_table_expiration_ms=86_400_000, default_partition_expiration_ms=None), Action.NOOP, [], []),
    ("declared-dataset-default-expiration-is-updated-in-place",
     replace(DATASET, spec={**DATASET.spec, "default_partition_expiration_ms": 86_400_000}),
     live(DATASET, default_partition_expiration_ms=None), Action.UPDATE, ["default_partition_expiration_ms"], []),
    ("undeclared-subscription-filter-set-elsewhere-is-no-change", SUB,
     live(SUB, filter='attributes.kind = "x"', enable_message_ordering=True), Action.NOOP, [], []),
    ("declared-subscription-filter-change-forces-replacement", replace(SUB, spec={**SUB.spec, "filter": ""}),
     live(SUB, filter='attributes.kind = "x"'), Action.REPLACE, ["filter"], ["filter"]),
    ("declared-message-ordering-change-forces-replacement",
     replace(SUB, spec={**SUB.spec, "enable_message_ordering": True}), live(SUB, enable_message_ordering=False),
     Action.REPLACE, ["enable_message_ordering"], ["enable_message_ordering"]),
    ("declared-exactly-once-is-updated-in-place",
     replace(SUB, spec={**SUB.spec, "enable_exactly_once_delivery": True}),
     live(SUB, enable_exactly_once_delivery=False), Action.UPDATE, ["enable_exactly_once_delivery"], []),
    ("declared-retain-acked-is-updated-in-place", replace(SUB, spec={**SUB.spec, "retain_acked_messages": True}),
     live(SUB, retain_acked_messages=False), Action.UPDATE, ["retain_acked_messages"], []),
]


@pytest.mark.parametrize(("desired", "live_resource", "action", "paths", "replace_paths"),
                         [c[1:] for c in KIND_1], ids=[c[0] for c in KIND_1])
def test_only_declared_fields_are_compared_and_only_immutable_paths_replace(desired, live_resource, action, paths,
                                                                            replace_paths):
    (change,) = reconcile([desired], [live_resource], BQ_IMMUTABLE, PlanOptions(environment="dev")).changes
    assert change.action == action, change.reason
    assert [d.path for d in change.diff] == paths
    assert change.replace_paths == replace_paths


WITH_BACKLOG = replace(live(SUB, topic="old-topic"), status={"would_lose": "about 5 unacked messages"})
KIND_2 = [
    # id, desired, live, options, blocked substring (None: not blocked)
    ("subscription-replacement-needs-allow-destroy-and-says-the-backlog", SUB, WITH_BACKLOG, {},
     "replace would destroy the data this pubsub_subscription holds: about 5 unacked messages; rerun with "
     "--allow-destroy"),
    ("subscription-replacement-refused-while-deletion-protected", SUB, WITH_BACKLOG, {"allow_destroy": True},
     "deletion_protection is true for this pubsub_subscription, which holds about 5 unacked messages"),
    ("unprotected-subscription-replacement-allowed-with-allow-destroy", replace(SUB, deletion_protection=False),
     WITH_BACKLOG, {"allow_destroy": True}, None),
    ("backlog-not-observable-is-still-gated", SUB, live(SUB, topic="old-topic"), {},
     "replace would destroy the data this pubsub_subscription holds; rerun with --allow-destroy"),
    ("topic-delete-is-gated", None, replace(live(TOPIC), labels={**TOPIC.labels,
                                                                 "headwater-deletion-protection": "true"}),
     {"prune": True, "max_delete_fraction": 1}, "delete would destroy the data this pubsub_topic holds"),
    ("unprotected-topic-delete-with-allow-destroy", None,
     replace(live(TOPIC), labels={**TOPIC.labels, "headwater-deletion-protection": "false"}),
     {"prune": True, "max_delete_fraction": 1, "allow_destroy": True}, None),
]


@pytest.mark.parametrize(("desired", "live_resource", "options", "blocked"), [c[1:] for c in KIND_2],
                         ids=[c[0] for c in KIND_2])
def test_data_holding_resources_are_gated_and_say_what_would_be_lost(desired, live_resource, options, blocked):
    plan = plan_one([desired] if desired else [], [live_resource], **options)
    (change,) = [c for c in plan.changes if c.address == live_resource.address]
    assert change.action in (Action.REPLACE, Action.DELETE)
    if blocked is None:
        assert change.blocked is None and change in plan.actionable
    else:
        assert blocked in change.blocked and change not in plan.actionable


FOREIGN = Resource(Kind.PUBSUB_TOPIC, "projects/shared-events-prod/topics/web-events", external=True)
ON_FOREIGN = replace(SUB, spec={**SUB.spec, "topic": FOREIGN.name}, depends_on=(FOREIGN.address,))


@pytest.mark.parametrize(("live_resources", "topic_action", "sub_action", "sub_blocked"), [
    pytest.param([], Action.READ, Action.CREATE, True, id="missing-reference-blocks-its-subscription"),
    pytest.param([Resource(Kind.PUBSUB_TOPIC, FOREIGN.name, {}, {"owner": "events-team"})], Action.NOOP,
                 Action.CREATE, False, id="existing-reference-is-read-and-subscribed-to-by-full-name"),
])
def test_another_projects_topic_is_a_reference_never_managed(live_resources, topic_action, sub_action, sub_blocked):
    plan = plan_one([FOREIGN, ON_FOREIGN], live_resources, prune=True, max_delete_fraction=1)
    changes = {c.address: c for c in plan.changes}
    assert changes[FOREIGN.address].action == topic_action
    assert all(c.action not in (Action.CREATE, Action.UPDATE, Action.DELETE) for c in plan.changes
               if c.kind == Kind.PUBSUB_TOPIC), "never created, changed or deleted"
    sub = changes[ON_FOREIGN.address]
    assert (sub.action, bool(sub.blocked)) == (sub_action, sub_blocked)
    if sub_blocked:
        assert sub.blocked_by == (FOREIGN.address,) and FOREIGN.address in sub.blocked
    else:
        assert sub.desired.spec["topic"] == "projects/shared-events-prod/topics/web-events"


SILVER_JOB = replace(STREAM_JOB, depends_on=("bigquery_table.silver.orders",))
GOLD_JOB = replace(BATCH_JOB, name="orders-gold-daily", depends_on=("bigquery_table.silver.orders",))
NOTE = {"name": "note", "type": "STRING", "mode": "NULLABLE"}


@pytest.mark.parametrize(("table", "jobs_blocked"), [
    pytest.param(with_schema(TABLE, [*SCHEMA, NOTE], "none"), True, id="evolution-none-blocks-the-jobs-writing-it"),
    pytest.param(with_schema(TABLE, SCHEMA[:1]), True, id="blocked-column-removal-blocks-its-jobs"),
    pytest.param(with_schema(TABLE, [*SCHEMA, NOTE]), False, id="allowed-addition-lets-the-jobs-go"),
])
def test_a_change_that_depends_on_a_blocked_change_is_blocked_too(table, jobs_blocked):
    pipeline = {**PIPELINE, "schema": {"fields": [*PIPELINE["schema"]["fields"], {"name": "note", "type": "STRING"}]}}
    jobs = [replace(j, spec={**j.spec, "pipeline": pipeline}) for j in (SILVER_JOB, GOLD_JOB)]
    plan = plan_one([table, *jobs], [live(TABLE), live(SILVER_JOB), live(GOLD_JOB)])
    changes = {c.address: c for c in plan.changes}
    for job in jobs:
        change = changes[job.address]
        assert change.action == Action.UPDATE
        assert bool(change.blocked) == jobs_blocked
        if jobs_blocked:
            assert change.blocked_by == ("bigquery_table.silver.orders",)
            assert change.blocked.startswith("depends on bigquery_table.silver.orders, whose update is blocked")


def test_blocking_is_transitive_and_names_the_first_blocked_change():
    a = replace(TABLE, name="silver.a")
    b = Resource(Kind.DATAFLOW_JOB, "b", {"template": "t", "streaming": True}, LABELS, depends_on=(a.address,))
    c = Resource(Kind.CLOUD_RUN_SERVICE, "c", {"image": "i"}, LABELS, depends_on=(b.address,))
    plan = plan_one([with_schema(a, SCHEMA[:1]), b, c], [live(a, schema=SCHEMA)])
    changes = {x.address: x for x in plan.changes}
    assert changes[b.address].blocked_by == (a.address,) and changes[c.address].blocked_by == (b.address,)
    assert f"it waits for {a.address}" in changes[c.address].blocked


NESTED = {"name": "customer", "type": "RECORD", "fields": [{"name": "id", "type": "STRING"},
                                                            {"name": "email", "type": "STRING"}]}


@pytest.mark.parametrize("reorder", [
    pytest.param(lambda fields: list(reversed(fields)), id="top-level-fields-reversed"),
    pytest.param(lambda fields: [f if f["name"] != "customer" else {**f, "fields": list(reversed(f["fields"]))}
                                 for f in fields], id="nested-fields-reversed"),
])
def test_reordered_schema_fields_change_no_job(reorder):
    fields = [{"name": "id", "type": "STRING"}, {"name": "amount", "type": "FLOAT64"}, NESTED]
    launched = replace(STREAM_JOB, spec={**STREAM_JOB.spec, "pipeline": {**PIPELINE, "schema": {"fields": fields}}})
    desired = replace(launched, spec={**launched.spec,
                                      "pipeline": {**PIPELINE, "schema": {"fields": reorder(fields)}}})
    assert plan_one([desired], [live(launched)]).changes[0].action == Action.NOOP


def test_a_changed_field_type_is_still_a_change_whatever_the_order():
    fields = [{"name": "id", "type": "STRING"}, {"name": "amount", "type": "FLOAT64"}]
    launched = replace(STREAM_JOB, spec={**STREAM_JOB.spec, "pipeline": {**PIPELINE, "schema": {"fields": fields}}})
    changed = [{"name": "amount", "type": "NUMERIC"}, {"name": "id", "type": "STRING"}]
    desired = replace(launched, spec={**launched.spec, "pipeline": {**PIPELINE, "schema": {"fields": changed}}})
    (change,) = plan_one([desired], [live(launched)]).changes
    assert change.action == Action.UPDATE and [d.path for d in change.diff] == ["pipeline.schema.fields[0].type"]


@pytest.mark.parametrize(("leaving", "says"), [
    pytest.param("draining", "replacing a draining dataflow_job", id="draining-job-is-replaced-after-its-drain"),
    pytest.param("cancelling", "replacing a cancelling dataflow_job", id="cancelling-job-too"),
])
def test_a_leaving_live_resource_is_replaced_never_updated(leaving, says):
    draining = replace(live(STREAM_JOB), status={"leaving": leaving})
    (change,) = plan_one([STREAM_JOB], [draining]).changes
    assert change.action == Action.REPLACE and says in change.reason and not change.blocked
    assert plan_one([], [draining], prune=True, max_delete_fraction=1).changes == (), \
        "an undeclared job already on its way out is neither kept nor deleted again"


THEIRS = replace(live(BUCKET, storage_class="NEARLINE"), labels={"owner": "finance-team"})


@pytest.mark.parametrize(("live_resource", "adopt", "action", "blocked"), [
    pytest.param(THEIRS, False, Action.IMPORT, "headwater adopt storage_bucket.bronze-x",
                 id="unmanaged-same-name-is-shown-not-touched"),
    pytest.param(THEIRS, True, Action.IMPORT, None, id="adopted-it-is-imported"),
    pytest.param(replace(THEIRS, spec={**THEIRS.spec, "location": "US"}), True, Action.IMPORT,
                 "never replaces a resource it does not manage", id="never-adopted-when-that-needs-a-replacement"),
    pytest.param(replace(live(BUCKET), labels={**BUCKET.labels, "headwater-platform": "prod"}), False, Action.IMPORT,
                 "managed by another headwater platform, headwater-platform=prod", id="another-platforms-resource"),
])
def test_an_existing_resource_that_is_not_ours_is_imported_only_when_adopted(live_resource, adopt, action, blocked):
    options = {"adopt": frozenset({BUCKET.address})} if adopt else {}
    (change,) = plan_one([BUCKET], [live_resource], **options).changes
    assert change.action == action
    if blocked:
        assert blocked in change.blocked and change not in reconcile(
            [BUCKET], [live_resource], IMMUTABLE, PlanOptions(environment="dev", **options)).actionable
    else:
        assert change.blocked is None
        assert change.desired.labels == {**live_resource.labels, **BUCKET.labels}, "the owner's labels are kept"
        assert change.update_fields == ("storage_class", "labels")


def test_an_unmanaged_resource_is_never_an_orphan():
    theirs = replace(live(SUB), labels={"owner": "someone"})
    assert plan_one([], [theirs], prune=True, max_delete_fraction=1).changes == ()
