"""The Pub/Sub provider.

Two halves:

* pure tests (no emulator): the normalization helpers and the update-mask construction, checked
  with the client library's own types;
* integration tests against the real Pub/Sub emulator through the official client (the
  ``emulators`` and ``project_id`` fixtures come from tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest
from google.cloud import pubsub_v1
from google.protobuf import duration_pb2, field_mask_pb2

from providers import pubsub
from providers.base import ApiCallCounter, Provider
from providers.errors import AlreadyExists, PermanentError
from providers.pubsub import PubSubProvider
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

types = pubsub_v1.types
PROJECT = "proj-a"
MANAGED = {MANAGED_BY_KEY: MANAGED_BY_VALUE}

FULL_SPEC: dict[str, Any] = {
    "topic": "orders",
    "ack_deadline_seconds": 20,
    "message_retention_duration": 86400,
    "retain_acked_messages": True,
    "retry_policy": {"minimum_backoff": 5, "maximum_backoff": 300},
    "dead_letter_policy": {"dead_letter_topic": "orders-dlq", "max_delivery_attempts": 7},
    "expiration_ttl": 0,
    "filter": 'attributes.kind = "order"',
    "enable_message_ordering": True,
    "enable_exactly_once_delivery": True,
}
MINIMAL_SPEC: dict[str, Any] = {
    "topic": "orders",
    "ack_deadline_seconds": 10,
    "message_retention_duration": 604800,
    "retain_acked_messages": False,
    "retry_policy": None,
    "dead_letter_policy": None,
    "expiration_ttl": 2 * 86400,
    "filter": "",
    "enable_message_ordering": False,
    "enable_exactly_once_delivery": False,
}


def topic(name: str, spec: dict[str, Any] | None = None, **labels: str) -> Resource:
    return Resource(Kind.PUBSUB_TOPIC, name, spec or {}, {**MANAGED, **labels})


def subscription(name: str, spec: dict[str, Any], **labels: str) -> Resource:
    return Resource(Kind.PUBSUB_SUBSCRIPTION, name, spec, {**MANAGED, **labels})


def d(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


# --- pure: normalization ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="none-stays-none"),
        pytest.param(dt.timedelta(days=7), 604800, id="timedelta"),
        pytest.param(dt.timedelta(seconds=9, milliseconds=600), 10, id="timedelta-rounds"),
        pytest.param(duration_pb2.Duration(seconds=59, nanos=400_000_000), 59, id="protobuf-duration"),
        pytest.param(600, 600, id="int"),
    ],
)
def test_seconds(value: Any, expected: int | None) -> None:
    assert pubsub.seconds(value) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param(f"projects/{PROJECT}/topics/orders", "orders", id="same-project-short"),
        pytest.param("projects/other/topics/orders", "projects/other/topics/orders", id="other-project-full"),
        pytest.param("_deleted-topic_", "_deleted-topic_", id="deleted-topic-kept"),
    ],
)
def test_short_topic(path: str, expected: str) -> None:
    assert pubsub.short_topic(path, PROJECT) == expected


@pytest.mark.parametrize(
    ("topic_ref", "expected"),
    [
        pytest.param("orders", f"projects/{PROJECT}/topics/orders", id="short-id"),
        pytest.param("projects/other/topics/x", "projects/other/topics/x", id="full-path-unchanged"),
    ],
)
def test_topic_path(topic_ref: str, expected: str) -> None:
    assert pubsub.topic_path(topic_ref, PROJECT) == expected


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        pytest.param(types.Topic(name="t"), {}, id="retention-unset-omitted"),
        pytest.param(
            types.Topic(name="t", message_retention_duration=d(3600)),
            {"message_retention_duration": 3600},
            id="retention-set",
        ),
    ],
)
def test_topic_spec(server: types.Topic, expected: dict[str, Any]) -> None:
    assert pubsub.topic_spec(server) == expected


TOPIC_PATH = f"projects/{PROJECT}/topics/orders"


@pytest.mark.parametrize(
    ("server", "overrides"),
    [
        pytest.param(types.Subscription(topic=TOPIC_PATH), {}, id="all-unset-server-defaults"),
        pytest.param(
            types.Subscription(topic=TOPIC_PATH, retry_policy=types.RetryPolicy()),
            {"retry_policy": {"minimum_backoff": 10, "maximum_backoff": 600}},
            id="empty-retry-policy-api-defaults",
        ),
        pytest.param(
            types.Subscription(topic=TOPIC_PATH, retry_policy=types.RetryPolicy(maximum_backoff=d(60))),
            {"retry_policy": {"minimum_backoff": 10, "maximum_backoff": 60}},
            id="partial-retry-policy",
        ),
        pytest.param(
            types.Subscription(
                topic=TOPIC_PATH,
                dead_letter_policy=types.DeadLetterPolicy(dead_letter_topic=f"projects/{PROJECT}/topics/dlq"),
            ),
            {"dead_letter_policy": {"dead_letter_topic": "dlq", "max_delivery_attempts": 5}},
            id="dead-letter-zero-attempts-means-5",
        ),
        pytest.param(
            types.Subscription(
                topic=TOPIC_PATH,
                dead_letter_policy=types.DeadLetterPolicy(
                    dead_letter_topic="projects/other/topics/dlq", max_delivery_attempts=9
                ),
            ),
            {
                "dead_letter_policy": {
                    "dead_letter_topic": "projects/other/topics/dlq",
                    "max_delivery_attempts": 9,
                }
            },
            id="dead-letter-other-project-full-path",
        ),
        pytest.param(
            types.Subscription(topic=TOPIC_PATH, expiration_policy=types.ExpirationPolicy()),
            {"expiration_ttl": 0},
            id="empty-expiration-ttl-never",
        ),
        pytest.param(
            types.Subscription(topic=TOPIC_PATH, expiration_policy=types.ExpirationPolicy(ttl=d(86400))),
            {"expiration_ttl": 86400},
            id="expiration-ttl-set",
        ),
        pytest.param(
            types.Subscription(topic="projects/other/topics/orders"),
            {"topic": "projects/other/topics/orders"},
            id="topic-in-other-project",
        ),
    ],
)
def test_subscription_spec_normalization(server: types.Subscription, overrides: dict[str, Any]) -> None:
    defaults = {
        "topic": "orders",
        "ack_deadline_seconds": 10,
        "message_retention_duration": 604800,
        "retain_acked_messages": False,
        "retry_policy": None,
        "dead_letter_policy": None,
        "expiration_ttl": 2678400,
        "filter": "",
        "enable_message_ordering": False,
        "enable_exactly_once_delivery": False,
    }
    assert pubsub.subscription_spec(server, PROJECT) == {**defaults, **overrides}


@pytest.mark.parametrize(
    "spec", [pytest.param(FULL_SPEC, id="full"), pytest.param(MINIMAL_SPEC, id="minimal")]
)
def test_build_then_normalize_is_identity(spec: dict[str, Any]) -> None:
    built = pubsub.build_subscription(subscription("s", spec), PROJECT)
    assert built.dead_letter_policy.dead_letter_topic in ("", f"projects/{PROJECT}/topics/orders-dlq")
    assert pubsub.subscription_spec(built, PROJECT) == spec


# --- pure: update masks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fields", "paths"),
    [
        pytest.param(
            Kind.PUBSUB_SUBSCRIPTION, ["ack_deadline_seconds"], ["ack_deadline_seconds"], id="one-field"
        ),
        pytest.param(
            Kind.PUBSUB_SUBSCRIPTION, ["expiration_ttl"], ["expiration_policy"], id="expiration-ttl-renamed"
        ),
        pytest.param(
            Kind.PUBSUB_SUBSCRIPTION,
            ["retry_policy", "dead_letter_policy", "labels", "retry_policy"],
            ["retry_policy", "dead_letter_policy", "labels"],
            id="several-deduplicated",
        ),
        pytest.param(
            Kind.PUBSUB_TOPIC,
            ["message_retention_duration", "labels"],
            ["message_retention_duration", "labels"],
            id="topic",
        ),
        pytest.param(Kind.PUBSUB_TOPIC, [], [], id="nothing"),
    ],
)
def test_update_mask_paths_are_valid_api_paths(kind: Kind, fields: list[str], paths: list[str]) -> None:
    mask = pubsub.update_mask(kind, fields)
    assert list(mask.paths) == paths
    message = types.Topic if kind == Kind.PUBSUB_TOPIC else types.Subscription
    assert mask.IsValidForDescriptor(message.pb().DESCRIPTOR)


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        pytest.param(Kind.PUBSUB_SUBSCRIPTION, "topic", id="subscription-topic-immutable"),
        pytest.param(Kind.PUBSUB_SUBSCRIPTION, "filter", id="unmanaged-field"),
        pytest.param(Kind.PUBSUB_TOPIC, "ack_deadline_seconds", id="wrong-kind-field"),
    ],
)
def test_update_mask_refuses_fields_it_cannot_update(kind: Kind, field: str) -> None:
    with pytest.raises(PermanentError, match=field):
        pubsub.update_mask(kind, [field])


def test_update_applies_only_masked_fields() -> None:
    # Apply the mask the way the server does (FieldMask.MergeMessage on the library's own types):
    # only the named fields move from the desired body to the live object.
    live = pubsub.build_subscription(subscription("s", FULL_SPEC), PROJECT)
    desired_spec = {
        **FULL_SPEC,
        "ack_deadline_seconds": 60,  # in the mask
        "retry_policy": None,  # in the mask: cleared
        "retain_acked_messages": False,  # NOT in the mask: must stay True
        "expiration_ttl": 3600,  # NOT in the mask: must stay 0
    }
    body = pubsub.build_subscription(subscription("s", desired_spec, team="data"), PROJECT)
    mask = pubsub.update_mask(Kind.PUBSUB_SUBSCRIPTION, ["ack_deadline_seconds", "retry_policy", "labels"])

    merged = types.Subscription.pb(live)
    mask.MergeMessage(
        types.Subscription.pb(body), merged, replace_message_field=True, replace_repeated_field=True
    )
    after = types.Subscription.wrap(merged)

    assert pubsub.subscription_spec(after, PROJECT) == {
        **FULL_SPEC,
        "ack_deadline_seconds": 60,
        "retry_policy": None,
    }
    assert dict(after.labels) == {**MANAGED, "team": "data"}


def test_provider_satisfies_the_contract() -> None:
    provider = PubSubProvider(PROJECT)  # no client is created until the first call
    assert isinstance(provider, Provider)
    counter: ApiCallCounter = provider  # ApiCallCounter is not runtime-checkable: type checkers verify this
    assert counter.api_calls() == {}
    assert provider.kinds == (Kind.PUBSUB_TOPIC, Kind.PUBSUB_SUBSCRIPTION)
    assert provider.immutable_fields[Kind.PUBSUB_SUBSCRIPTION] == frozenset({"topic", "filter", "enable_message_ordering"})


def test_emulator_fallback_is_never_taken_against_the_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without PUBSUB_EMULATOR_HOST a rejected labels update is a real error and must surface.
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    sent: list[list[str]] = []

    def send(mask: field_mask_pb2.FieldMask) -> None:
        sent.append(list(mask.paths))
        raise PermanentError("pubsub.update_subscription: 400 invalid update_mask")

    mask = field_mask_pb2.FieldMask(paths=["labels", "ack_deadline_seconds"])
    with pytest.raises(PermanentError):
        pubsub.update_with_emulator_fallback(send, mask, "pubsub_subscription.s")
    assert sent == [["labels", "ack_deadline_seconds"]]


# --- integration: the real Pub/Sub emulator ------------------------------------------------------


@pytest.fixture
def provider(emulators: Any, project_id: str) -> PubSubProvider:
    return PubSubProvider(project_id)


@pytest.fixture
def publisher(emulators: Any) -> pubsub_v1.PublisherClient:
    """A raw client, to act as someone outside headwater."""
    return pubsub_v1.PublisherClient()


@pytest.fixture
def subscriber(emulators: Any) -> pubsub_v1.SubscriberClient:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


def observed(provider: PubSubProvider, kind: Kind) -> dict[str, Resource]:
    return {r.name: r for r in provider.observe(kind)}


def create_platform(provider: PubSubProvider, spec: dict[str, Any] = FULL_SPEC) -> Resource:
    """Topics ``orders`` and ``orders-dlq`` and subscription ``orders-ingest`` with ``spec``."""
    provider.create(topic("orders"))
    provider.create(topic("orders-dlq"))
    sub = subscription("orders-ingest", spec)
    provider.create(sub)
    return sub


def test_topic_create_observe_round_trip(provider: PubSubProvider) -> None:
    with_retention = topic("events", {"message_retention_duration": 3600}, team="data")
    plain = topic("plain")
    provider.create(with_retention)
    provider.create(plain)

    live = observed(provider, Kind.PUBSUB_TOPIC)

    assert live["events"].spec == with_retention.spec
    assert live["events"].labels == with_retention.labels
    assert live["plain"].spec == {}
    assert live["plain"].labels == MANAGED


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(FULL_SPEC, id="retry-deadletter-never-expires"),
        pytest.param(MINIMAL_SPEC, id="no-policies-expires-in-2-days"),
    ],
)
def test_subscription_create_observe_round_trip(
    provider: PubSubProvider, subscriber: pubsub_v1.SubscriberClient, project_id: str, spec: dict[str, Any]
) -> None:
    desired = create_platform(provider, spec)

    live = observed(provider, Kind.PUBSUB_SUBSCRIPTION)["orders-ingest"]

    assert {key: live.spec.get(key) for key in desired.spec} == desired.spec  # no diff
    assert live.labels == desired.labels
    raw = subscriber.get_subscription(
        request={"subscription": f"projects/{project_id}/subscriptions/orders-ingest"}
    )
    if spec["dead_letter_policy"]:  # the API got the dead letter topic as a full path
        assert raw.dead_letter_policy.dead_letter_topic == f"projects/{project_id}/topics/orders-dlq"


def test_unmanaged_resources_are_not_observed(
    provider: PubSubProvider,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    project_id: str,
) -> None:
    provider.create(topic("ours"))
    theirs = f"projects/{project_id}/topics/theirs"
    publisher.create_topic(request={"name": theirs})
    publisher.create_topic(
        request={"name": f"projects/{project_id}/topics/other-tool", "labels": {MANAGED_BY_KEY: "terraform"}}
    )
    subscriber.create_subscription(
        request={"name": f"projects/{project_id}/subscriptions/their-sub", "topic": theirs}
    )

    assert list(observed(provider, Kind.PUBSUB_TOPIC)) == ["ours"]
    assert provider.observe(Kind.PUBSUB_SUBSCRIPTION) == []


def test_create_is_not_silently_repeated_and_delete_is_idempotent(provider: PubSubProvider) -> None:
    sub = create_platform(provider)

    with pytest.raises(AlreadyExists):
        provider.create(topic("orders"))
    with pytest.raises(AlreadyExists):
        provider.create(sub)

    provider.delete(sub)
    provider.delete(sub)  # already gone: success
    provider.delete(topic("never-existed"))
    provider.delete(subscription("never-existed", FULL_SPEC))
    assert provider.observe(Kind.PUBSUB_SUBSCRIPTION) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("ack_deadline_seconds", 45, id="ack-deadline"),
        pytest.param(
            "retry_policy", {"minimum_backoff": 20, "maximum_backoff": 120}, id="retry-policy-changed"
        ),
        pytest.param("retry_policy", None, id="retry-policy-cleared"),
        pytest.param(
            "dead_letter_policy",
            {"dead_letter_topic": "orders-dlq", "max_delivery_attempts": 12},
            id="dead-letter-changed",
        ),
        pytest.param("dead_letter_policy", None, id="dead-letter-cleared"),
        pytest.param("message_retention_duration", 3 * 86400, id="retention"),
        pytest.param("retain_acked_messages", False, id="retain-acked"),
    ],
)
def test_update_changes_only_the_named_field(provider: PubSubProvider, field: str, value: Any) -> None:
    create_platform(provider, FULL_SPEC)
    # Every other key also differs in the desired resource: only the named one may change.
    decoys = {"ack_deadline_seconds": 99, "retain_acked_messages": False, "message_retention_duration": 7200}
    desired = subscription("orders-ingest", {**FULL_SPEC, **decoys, field: value})

    provider.update(desired, [field])

    live = observed(provider, Kind.PUBSUB_SUBSCRIPTION)["orders-ingest"]
    assert live.spec == {**FULL_SPEC, field: value}


def test_topic_retention_update(provider: PubSubProvider) -> None:
    provider.create(topic("events", {"message_retention_duration": 3600}))

    provider.update(topic("events", {"message_retention_duration": 7200}), ["message_retention_duration"])

    assert observed(provider, Kind.PUBSUB_TOPIC)["events"].spec == {"message_retention_duration": 7200}


def test_labels_update_on_the_emulator_applies_the_rest_and_warns(
    provider: PubSubProvider, caplog: pytest.LogCaptureFixture
) -> None:
    # EMULATOR DEPARTURE (see pubsub.update_with_emulator_fallback): the emulator rejects
    # `labels` and `expiration_policy` in update masks. The full request is sent first; the
    # provider then applies the supported fields alone and warns that the others were skipped.
    create_platform(provider, FULL_SPEC)
    desired = subscription(
        "orders-ingest", {**FULL_SPEC, "ack_deadline_seconds": 30, "expiration_ttl": 3600}, team="data"
    )

    with caplog.at_level(logging.WARNING, logger="providers.pubsub"):
        provider.update(desired, ["labels", "ack_deadline_seconds", "expiration_ttl"])
        provider.update(topic("orders", team="data"), ["labels"])

    subs = observed(provider, Kind.PUBSUB_SUBSCRIPTION)
    assert subs["orders-ingest"].spec == {**FULL_SPEC, "ack_deadline_seconds": 30}
    assert subs["orders-ingest"].labels == MANAGED  # unchanged on the emulator (drift stays visible)
    assert observed(provider, Kind.PUBSUB_TOPIC)["orders"].labels == MANAGED
    warnings = [r.getMessage() for r in caplog.records]
    assert any("labels, expiration_policy" in w and "orders-ingest" in w for w in warnings)
    assert any("labels" in w and "pubsub_topic.orders" in w for w in warnings)
    # Subscription: the rejected full request, then the supported paths. Topic: nothing left to send.
    assert provider.api_calls()["pubsub.update_subscription"] == 2
    assert provider.api_calls()["pubsub.update_topic"] == 1


@pytest.mark.parametrize("count", [1, 12], ids=["one-of-each", "twelve-of-each"])
def test_observe_makes_one_list_call_per_kind(provider: PubSubProvider, count: int) -> None:
    for i in range(count):
        provider.create(topic(f"topic-{i}"))
        provider.create(subscription(f"sub-{i}", {**MINIMAL_SPEC, "topic": f"topic-{i}"}))
    before = dict(provider.api_calls())

    topics = provider.observe(Kind.PUBSUB_TOPIC)
    subs = provider.observe(Kind.PUBSUB_SUBSCRIPTION)

    assert (len(topics), len(subs)) == (count, count)
    made = {k: v - before.get(k, 0) for k, v in provider.api_calls().items() if v != before.get(k, 0)}
    assert made == {"pubsub.list_topics": 1, "pubsub.list_subscriptions": 1}


# --- integration: settings with their real mutability, reading by name, what a delete loses ------


@pytest.mark.parametrize(
    ("field", "value", "immutable"),
    [
        pytest.param("filter", 'attributes.kind = "web"', True, id="filter-immutable"),
        pytest.param("enable_message_ordering", True, True, id="message-ordering-immutable"),
        pytest.param("enable_exactly_once_delivery", True, False, id="exactly-once-in-place"),
        pytest.param("retain_acked_messages", True, False, id="retain-acked-in-place"),
    ],
)
def test_subscription_settings_round_trip_with_their_mutability(
    provider: PubSubProvider, field: str, value: Any, immutable: bool
) -> None:
    from reconciler.plan import Action, reconcile

    provider.create(topic("orders"))
    provider.create(topic("orders-dlq"))
    minimal = {k: v for k, v in MINIMAL_SPEC.items() if k not in ("filter", "enable_message_ordering",
                                                                   "enable_exactly_once_delivery")}
    provider.create(subscription("orders-ingest", {**minimal, field: value}))
    live = observed(provider, Kind.PUBSUB_SUBSCRIPTION)["orders-ingest"]
    assert live.spec[field] == value, "created with the declared setting, read back as declared"

    other = "" if field == "filter" else not value
    plan = reconcile([subscription("orders-ingest", {**minimal, field: other})], [live], provider.immutable_fields)
    (change,) = plan.changes
    assert change.action == (Action.REPLACE if immutable else Action.UPDATE)
    if immutable:
        assert change.replace_paths == [field] and change.blocked, "a subscription holds data: gated"
        return
    provider.update(subscription("orders-ingest", {**minimal, field: other}), [field])
    assert observed(provider, Kind.PUBSUB_SUBSCRIPTION)["orders-ingest"].spec[field] == other


def test_undeclared_subscription_settings_set_elsewhere_are_not_compared(
    provider: PubSubProvider, subscriber: pubsub_v1.SubscriberClient, project_id: str
) -> None:
    from reconciler.plan import Action, reconcile

    provider.create(topic("orders"))
    # Someone sets a filter and ordering on the subscription outside headwater.
    subscriber.create_subscription(request={
        "name": f"projects/{project_id}/subscriptions/orders-ingest", "topic": f"projects/{project_id}/topics/orders",
        "filter": 'attributes.kind = "web"', "enable_message_ordering": True, "labels": MANAGED,
        "ack_deadline_seconds": 10})
    live = observed(provider, Kind.PUBSUB_SUBSCRIPTION)["orders-ingest"]
    declared = {"topic": "orders", "ack_deadline_seconds": 10}  # declares neither
    (change,) = reconcile([subscription("orders-ingest", declared)], [live], provider.immutable_fields).changes
    assert change.action == Action.NOOP


def test_read_finds_unmanaged_resources_and_other_projects_topics(
    provider: PubSubProvider, publisher: pubsub_v1.PublisherClient, project_id: str
) -> None:
    other_project = f"{project_id}-shared"
    publisher.create_topic(request={"name": f"projects/{project_id}/topics/theirs", "labels": {"owner": "finance"}})
    publisher.create_topic(request={"name": f"projects/{other_project}/topics/web-events"})
    assert observed(provider, Kind.PUBSUB_TOPIC) == {}, "observe sees only managed resources"

    found = provider.read(Kind.PUBSUB_TOPIC, ["theirs", "missing", f"projects/{other_project}/topics/web-events"])
    assert {(r.name, tuple(r.labels.items())) for r in found} == {
        ("theirs", (("owner", "finance"),)), (f"projects/{other_project}/topics/web-events", ())}
    assert provider.read(Kind.PUBSUB_SUBSCRIPTION, ["nope"]) == []


def test_would_lose_on_the_emulator_says_the_backlog_is_not_observable(provider: PubSubProvider) -> None:
    sub = subscription("orders-ingest", MINIMAL_SPEC)
    (text,) = provider.would_lose([sub]).values()
    assert "not observable on the Pub/Sub emulator" in text


def test_would_lose_reads_the_backlog_from_cloud_monitoring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)

    class Backlogs:
        def __init__(self) -> None:
            self.asked: list[tuple[str, list[str]]] = []

        def latest(self, metric: str, resource_type: str, label: str, ids: list[str]) -> dict[str, int]:
            self.asked.append((metric.rsplit("/", 1)[1], sorted(ids)))
            return {"orders-ingest": 5, "orders-dlq-hold": 2} if "undelivered" in metric else {"orders-dlq-hold": 40}

    monitoring = Backlogs()
    provider = PubSubProvider(PROJECT, monitoring=monitoring)
    subs = [subscription("orders-ingest", MINIMAL_SPEC),
            subscription("orders-dlq-hold", {**MINIMAL_SPEC, "retain_acked_messages": True}),
            subscription("unseen", MINIMAL_SPEC)]
    losses = provider.would_lose([*subs, topic("orders", {"message_retention_duration": 7 * 86400}), topic("bare")])
    assert losses == {
        "pubsub_subscription.orders-ingest": "about 5 unacked messages (Cloud Monitoring's last count)",
        "pubsub_subscription.orders-dlq-hold":
            "about 2 unacked messages and 40 retained acknowledged ones (Cloud Monitoring's last count)",
        "pubsub_subscription.unseen": "its unacked messages; Cloud Monitoring gave no recent backlog count",
        "pubsub_topic.orders": "the messages it retains, up to 7 days' worth (Pub/Sub does not count them)",
    }
    assert monitoring.asked == [("num_undelivered_messages", ["orders-dlq-hold", "orders-ingest", "unseen"]),
                                ("num_retained_acked_messages", ["orders-dlq-hold"])], "one request per metric"
