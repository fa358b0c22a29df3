"""StorageNotificationProvider against a local fake of the Cloud Storage and Pub/Sub REST APIs,
through the official clients (google-cloud-storage; google-cloud-pubsub with REST transport).

Neither emulator has notification configs or IAM, so what the real services would do with
these requests (the 403 without the publisher grant, the etag check) is the fake's
(tests/fake_gcs_notifications.py). The request bodies are checked on the wire and parsed back
with the client libraries' own types (``BucketNotification.from_api_repr``, IAM's
``SetIamPolicyRequest``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_gcs_notifications import SERVICE_AGENT, FakeGcsNotifications
from google.cloud import storage
from google.iam.v1 import iam_policy_pb2
from google.protobuf import json_format
from helpers import EXAMPLE

from providers.errors import AlreadyExists, PermanentError
from providers.storage_notifications import StorageNotificationProvider, has_grant, with_grant
from reconciler.compile import compile_resources
from reconciler.load import load_repo
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind, Resource

PROJECT = "headwater-demo"
LANDING = "landing-headwater-demo-europe-west1"
TOPIC = f"projects/{PROJECT}/topics/orders"
MEMBER = f"serviceAccount:{SERVICE_AGENT}"
# What compile makes of the example's batch_file source (orders).
DESIRED = next(r for r in compile_resources(load_repo(EXAMPLE))
               if r.kind == Kind.STORAGE_NOTIFICATION and r.source_id == "orders")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcsNotifications]:
    # With the emulators' variables set (by an earlier test of the session) both clients would
    # go to the emulators instead of the endpoint they are given.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    fake = FakeGcsNotifications(PROJECT)
    fake.add_bucket(LANDING, {"managed-by": "headwater", "headwater-platform": "dev"})
    fake.add_topic(TOPIC, [{"role": "roles/pubsub.subscriber", "members": ["serviceAccount:etl@x.iam.gserviceaccount.com"]}])
    yield fake
    fake.close()


def provider(fake: FakeGcsNotifications) -> StorageNotificationProvider:
    return StorageNotificationProvider(PROJECT, storage_client=fake.storage_client(),
                                       publisher_client=fake.publisher_client())


def test_compile_emits_the_contracts_shape():
    assert DESIRED.name == f"{LANDING}/orders/"
    assert DESIRED.spec == {"bucket": LANDING, "topic": "orders", "object_name_prefix": "orders/",
                            "event_types": ["OBJECT_FINALIZE"], "payload_format": "JSON_API_V1",
                            "publisher_grant": True}


def test_create_grants_the_service_agent_then_creates_the_config(fake):
    p = provider(fake)

    p.create(DESIRED)

    sets = fake.requests_to(":setIamPolicy", "POST")
    (create,) = fake.requests_to("/notificationConfigs", "POST")
    assert fake.requests.index(sets[0]) < fake.requests.index(create), "the grant first: GCS checks it at create"
    # The policy written: the one read (its etag, its other bindings) plus the publisher binding.
    (set_policy,) = sets
    request = json_format.ParseDict(set_policy.body, iam_policy_pb2.SetIamPolicyRequest(), ignore_unknown_fields=False)
    assert set_policy.path == f"/v1/{TOPIC}:setIamPolicy"
    (get_policy,) = fake.requests_to(":getIamPolicy")
    assert get_policy.query == {"options.requestedPolicyVersion": "3"}
    assert set_policy.body["policy"]["etag"] == "ZXRhZy0x"  # base64 of the fake's first etag, as read
    assert {b.role: list(b.members) for b in request.policy.bindings} == {
        "roles/pubsub.subscriber": ["serviceAccount:etl@x.iam.gserviceaccount.com"],
        "roles/pubsub.publisher": [MEMBER],
    }
    # The notification config, exactly.
    assert create.path == f"/storage/v1/b/{LANDING}/notificationConfigs"
    assert create.body == {
        "topic": f"//pubsub.googleapis.com/{TOPIC}",
        "payload_format": "JSON_API_V1",
        "event_types": ["OBJECT_FINALIZE"],
        "object_name_prefix": "orders/",
        "custom_attributes": {"team": "data-platform", "cost-center": "analytics", "managed-by": "headwater",
                              "headwater-platform": "dev", "headwater-source": "orders"},
    }
    parsed = storage.notification.BucketNotification.from_api_repr(
        {**create.body, "id": "1"}, bucket=fake.storage_client().bucket(LANDING))
    assert (parsed.topic_project, parsed.topic_name, parsed.blob_name_prefix) == (PROJECT, "orders", "orders/")
    assert fake.holds_publisher(TOPIC)


def test_without_the_grant_the_service_answers_403_as_a_permanent_error(fake):
    p = provider(fake)
    undeclared = Resource(DESIRED.kind, DESIRED.name, {**DESIRED.spec, "publisher_grant": False}, DESIRED.labels)

    with pytest.raises(PermanentError, match="does not have permission to publish"):
        p.create(undeclared)

    assert fake.requests_to(":setIamPolicy") == []


def test_a_fresh_config_observes_equal_to_its_desired_twin(fake):
    fake.add_bucket("unmanaged-bucket")  # not ours: not even listed
    fake.add_config(LANDING, {"topic": f"//pubsub.googleapis.com/{TOPIC}", "payload_format": "NONE",
                              "object_name_prefix": "other/"})  # someone else's config in our bucket
    p = provider(fake)
    p.create(DESIRED)
    before = dict(p.api_calls())

    live = p.observe(Kind.STORAGE_NOTIFICATION)

    assert live == [Resource(Kind.STORAGE_NOTIFICATION, DESIRED.name, DESIRED.spec, DESIRED.labels)]
    plan = reconcile([DESIRED], live, {Kind.STORAGE_NOTIFICATION: p.immutable_fields[Kind.STORAGE_NOTIFICATION]})
    assert [c.action for c in plan.changes] == [Action.NOOP]
    calls = {k: v - before.get(k, 0) for k, v in p.api_calls().items() if v - before.get(k, 0)}
    # one bucket list, one config list per managed bucket, one policy read per topic; the
    # service agent's e-mail was looked up once, at create, and is remembered.
    assert calls == {"storage.list_buckets": 1, "storage.list_notifications": 1, "pubsub.get_iam_policy": 1}
    assert [r.path for r in fake.requests_to("/notificationConfigs", "GET")].count(
        "/storage/v1/b/unmanaged-bucket/notificationConfigs") == 0


def test_a_removed_grant_is_drift_that_update_puts_back(fake):
    p = provider(fake)
    p.create(DESIRED)
    fake.policies[TOPIC]["bindings"] = [b for b in fake.policies[TOPIC]["bindings"] if b["role"] != "roles/pubsub.publisher"]

    (live,) = p.observe(Kind.STORAGE_NOTIFICATION)
    plan = reconcile([DESIRED], [live], {Kind.STORAGE_NOTIFICATION: p.immutable_fields[Kind.STORAGE_NOTIFICATION]})
    (change,) = plan.changes
    assert live.spec["publisher_grant"] is False
    assert change.action == Action.UPDATE and change.update_fields == ("publisher_grant",)

    p.update(DESIRED, change.update_fields)

    assert fake.holds_publisher(TOPIC)
    assert len(fake.requests_to("/notificationConfigs", "POST")) == 1, "the config itself is untouched"


def test_a_concurrent_policy_change_is_not_overwritten_the_read_modify_write_is_retried(fake):
    fake.change_policy_behind_the_back(TOPIC)
    p = provider(fake)

    p.create(DESIRED)

    first, second = fake.requests_to(":setIamPolicy", "POST")
    assert first.body["policy"]["etag"] != second.body["policy"]["etag"], "the retry carries the new etag"
    roles = {b["role"] for b in fake.policies[TOPIC]["bindings"]}
    assert roles == {"roles/pubsub.subscriber", "roles/pubsub.viewer", "roles/pubsub.publisher"}, \
        "the other writer's binding survives"


def test_an_existing_grant_is_not_written_again(fake):
    fake.add_topic(TOPIC, [{"role": "roles/pubsub.publisher", "members": [MEMBER]}])

    provider(fake).create(DESIRED)

    assert fake.requests_to(":setIamPolicy") == []
    assert len(fake.requests_to("/notificationConfigs", "POST")) == 1


def test_creating_an_existing_config_is_already_exists_not_a_second_config(fake):
    p = provider(fake)
    p.create(DESIRED)

    with pytest.raises(AlreadyExists):
        p.create(DESIRED)

    assert len(fake.configs[LANDING]) == 1


def test_labels_change_creates_the_new_config_before_deleting_the_old(fake):
    p = provider(fake)
    p.create(DESIRED)
    (old_id,) = fake.configs[LANDING]
    relabelled = Resource(DESIRED.kind, DESIRED.name, DESIRED.spec, {**DESIRED.labels, "team": "ingest"})

    p.update(relabelled, ["labels"])

    (config,) = fake.configs[LANDING].values()
    assert config["id"] != old_id and config["custom_attributes"]["team"] == "ingest"
    create = fake.requests_to("/notificationConfigs", "POST")[-1]
    (delete,) = fake.requests_to("/notificationConfigs/", "DELETE")
    assert fake.requests.index(create) < fake.requests.index(delete)
    assert delete.path == f"/storage/v1/b/{LANDING}/notificationConfigs/{old_id}"


def test_immutable_fields_cannot_be_updated(fake):
    with pytest.raises(PermanentError, match="in place"):
        provider(fake).update(DESIRED, ["object_name_prefix"])
    assert StorageNotificationProvider.immutable_fields[Kind.STORAGE_NOTIFICATION] == {
        "bucket", "topic", "object_name_prefix", "event_types", "payload_format"}


def test_delete_removes_every_managed_config_of_the_prefix_and_keeps_the_grant(fake):
    p = provider(fake)
    p.create(DESIRED)
    fake.add_config(LANDING, dict(fake.requests_to("/notificationConfigs", "POST")[0].body))  # a duplicate
    others = fake.add_config(LANDING, {"topic": f"//pubsub.googleapis.com/{TOPIC}", "object_name_prefix": "orders/",
                                       "payload_format": "NONE"})  # not ours (no managed-by)

    p.delete(DESIRED)
    p.delete(DESIRED)  # idempotent

    assert list(fake.configs[LANDING]) == [others["id"]]
    assert fake.holds_publisher(TOPIC), "delete never revokes the grant"
    p.delete(Resource(DESIRED.kind, "gone-bucket/orders/", {**DESIRED.spec, "bucket": "gone-bucket"}))


def test_temporary_errors_are_retried(fake):
    fake.fail_next.append(("/notificationConfigs", 503))
    p = provider(fake)

    p.create(DESIRED)  # the first config list answers 503, the retry succeeds

    assert len(fake.configs[LANDING]) == 1


def test_policy_edits_keep_other_members_and_bindings():
    from google.iam.v1 import policy_pb2

    policy = policy_pb2.Policy(etag=b"e", bindings=[
        policy_pb2.Binding(role="roles/pubsub.publisher", members=["user:a@x.io"]),
        policy_pb2.Binding(role="roles/pubsub.publisher", members=[MEMBER],
                           condition={"expression": "request.time < timestamp('2030-01-01T00:00:00Z')"}),
    ])
    assert not has_grant(policy, MEMBER), "a conditional binding is not the grant"
    assert with_grant(policy, MEMBER, True) and has_grant(policy, MEMBER)
    assert not with_grant(policy, MEMBER, True), "granting twice changes nothing"
    assert list(policy.bindings[0].members) == ["user:a@x.io", MEMBER] and policy.etag == b"e"
    assert with_grant(policy, MEMBER, False) and not has_grant(policy, MEMBER)
    assert [list(b.members) for b in policy.bindings] == [["user:a@x.io"], [MEMBER]]
