"""providers.pubsub reads topics and subscriptions from their raw protobufs (issue 14): observe
takes the list pages' raw messages instead of proto-plus wrappers. The canonical specs must be
those the proto-plus reading gave. `REFERENCE` below is that reading as it was before (attribute
access and ``in`` on the proto-plus messages); every message of a representative set - each
field set, unset, empty or defaulted, nanosecond durations - is read both ways, as proto-plus
message and as raw protobuf, and through a real ``ListSubscriptions`` / ``ListTopics`` page
(`bench/fake_gcp.py` over gRPC, in this process), and must give equal Resources.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud import pubsub_v1
from google.protobuf import duration_pb2
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from providers import pubsub
from providers.pubsub import PubSubProvider
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fake_gcp  # noqa: E402

types = pubsub_v1.types
PROJECT = "hw-raw"
MANAGED = {MANAGED_BY_KEY: MANAGED_BY_VALUE, "source": "orders"}


# --- the proto-plus reading, as it was before issue 14 (the reference) --------------------------


def _ref_topic_spec(topic: types.Topic) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if "message_retention_duration" in topic:
        spec["message_retention_duration"] = pubsub.seconds(topic.message_retention_duration)
    return spec


def _ref_retry_policy_spec(sub: types.Subscription) -> dict[str, int] | None:
    if "retry_policy" not in sub:
        return None
    policy = sub.retry_policy
    return {
        "minimum_backoff": pubsub.seconds(policy.minimum_backoff) if "minimum_backoff" in policy else 10,
        "maximum_backoff": pubsub.seconds(policy.maximum_backoff) if "maximum_backoff" in policy else 600,
    }


def _ref_dead_letter_spec(sub: types.Subscription, project: str) -> dict[str, Any] | None:
    if "dead_letter_policy" not in sub or not sub.dead_letter_policy.dead_letter_topic:
        return None
    policy = sub.dead_letter_policy
    return {"dead_letter_topic": pubsub.short_topic(policy.dead_letter_topic, project),
            "max_delivery_attempts": policy.max_delivery_attempts or 5}


def _ref_expiration_ttl(sub: types.Subscription) -> int:
    if "expiration_policy" not in sub:
        return 31 * 24 * 3600
    if "ttl" not in sub.expiration_policy:
        return 0
    return pubsub.seconds(sub.expiration_policy.ttl) or 0


def _ref_subscription_spec(sub: types.Subscription, project: str) -> dict[str, Any]:
    retention = (pubsub.seconds(sub.message_retention_duration) if "message_retention_duration" in sub
                 else 7 * 24 * 3600)
    return {
        "topic": pubsub.short_topic(sub.topic, project),
        "ack_deadline_seconds": sub.ack_deadline_seconds or 10,
        "message_retention_duration": retention,
        "retain_acked_messages": bool(sub.retain_acked_messages),
        "retry_policy": _ref_retry_policy_spec(sub),
        "dead_letter_policy": _ref_dead_letter_spec(sub, project),
        "expiration_ttl": _ref_expiration_ttl(sub),
        "filter": sub.filter or "",
        "enable_message_ordering": bool(sub.enable_message_ordering),
        "enable_exactly_once_delivery": bool(sub.enable_exactly_once_delivery),
    }


def reference(message: types.Topic | types.Subscription) -> Resource:
    name = message.name.rsplit("/", 1)[-1]
    if isinstance(message, types.Topic):
        return Resource(Kind.PUBSUB_TOPIC, name, _ref_topic_spec(message), dict(message.labels))
    return Resource(Kind.PUBSUB_SUBSCRIPTION, name, _ref_subscription_spec(message, PROJECT), dict(message.labels))


# --- a representative set --------------------------------------------------------------------


def d(seconds: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def topics() -> list[types.Topic]:
    return [
        types.Topic(name=f"projects/{PROJECT}/topics/t-{i}", labels=labels, **extra)
        for i, (labels, extra) in enumerate(itertools.product(
            [MANAGED, {}, {"managed-by": "someone-else"}],
            [{}, {"message_retention_duration": d(3600)}, {"message_retention_duration": d(0)},
             {"message_retention_duration": d(86399, 600_000_000)}]))
    ]


def subscriptions() -> list[types.Subscription]:
    retry = [None, types.RetryPolicy(), types.RetryPolicy(minimum_backoff=d(5)),
             types.RetryPolicy(maximum_backoff=d(60, 499_999_999)),
             types.RetryPolicy(minimum_backoff=d(0), maximum_backoff=d(0))]
    dead = [None, types.DeadLetterPolicy(), types.DeadLetterPolicy(dead_letter_topic=f"projects/{PROJECT}/topics/dlq"),
            types.DeadLetterPolicy(dead_letter_topic="projects/other/topics/dlq", max_delivery_attempts=9)]
    expiry = [None, types.ExpirationPolicy(), types.ExpirationPolicy(ttl=d(86400)), types.ExpirationPolicy(ttl=d(0))]
    scalars = [
        {},
        {"ack_deadline_seconds": 60, "retain_acked_messages": True, "filter": 'attributes.kind = "a"',
         "enable_message_ordering": True, "enable_exactly_once_delivery": True,
         "message_retention_duration": d(600)},
        {"message_retention_duration": d(0), "topic": "projects/other/topics/orders", "labels": {}},
        {"message_retention_duration": d(3600, 500_000_000), "topic": "_deleted-topic_"},
    ]
    found = []
    for i, (r, dl, ex, sc) in enumerate(itertools.product(retry, dead, expiry, scalars)):
        fields: dict[str, Any] = {"name": f"projects/{PROJECT}/subscriptions/s-{i}",
                                  "topic": f"projects/{PROJECT}/topics/orders", "labels": MANAGED, **sc}
        for key, value in (("retry_policy", r), ("dead_letter_policy", dl), ("expiration_policy", ex)):
            if value is not None:
                fields[key] = value
        found.append(types.Subscription(**fields))
    return found


def test_the_raw_reading_equals_the_proto_plus_reading_message_by_message() -> None:
    for topic in topics():
        expected = reference(topic)
        assert pubsub.topic_spec(topic) == expected.spec
        assert pubsub.topic_spec(types.Topic.pb(topic)) == expected.spec
    subs = subscriptions()
    assert len(subs) == 320
    for sub in subs:
        expected = reference(sub).spec
        assert pubsub.subscription_spec(sub, PROJECT) == expected
        assert pubsub.subscription_spec(types.Subscription.pb(sub), PROJECT) == expected


@pytest.fixture
def provider():
    gcp = fake_gcp.FakeGcp(latency=0.0)
    for topic in topics():
        gcp.topics[topic.name] = topic
    for sub in subscriptions():
        gcp.subscriptions[sub.name] = sub
    grpc_address, _, stop = fake_gcp.serve(gcp, threads=4)
    publisher = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(grpc_address)))
    subscriber = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(grpc_address)))
    try:
        yield gcp, PubSubProvider(PROJECT, publisher=publisher, subscriber=subscriber, monitoring=None)
    finally:
        stop()


def test_observed_resources_equal_the_proto_plus_reading_of_the_same_pages(provider) -> None:
    gcp, pubsub_provider = provider
    managed = [m for m in [*topics(), *subscriptions()] if dict(m.labels).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE]
    expected = sorted((reference(m) for m in managed), key=lambda r: r.address)
    found = pubsub_provider.observe(Kind.PUBSUB_TOPIC) + pubsub_provider.observe(Kind.PUBSUB_SUBSCRIPTION)
    assert sorted(found, key=lambda r: r.address) == expected
    assert all(type(v) is type(w) for r, e in zip(sorted(found, key=lambda r: r.address), expected)
               for v, w in zip(r.spec.values(), e.spec.values()))
    assert gcp.calls == {"pubsub.ListTopics": 1, "pubsub.ListSubscriptions": 1}
    # A get reads the proto-plus message the client returns, through the same functions.
    assert pubsub_provider.read(Kind.PUBSUB_SUBSCRIPTION, [managed[-1].name.rsplit("/", 1)[-1]]) == [reference(managed[-1])]
