"""The dead-letter path, end to end on the Pub/Sub emulator, and the grants it needs on GCP.

On the emulator (which implements no IAM) a message that an ingest subscription, as compiled
from desired_state/ and created by PubSubProvider, delivers ``max_delivery_attempts`` times
without an ack is forwarded to the source's dead-letter topic and kept by its ``-dlq-hold``
subscription. On GCP that forwarding needs the Pub/Sub service agent to publish to the DLQ topic
and to subscribe to the subscription ("Grant forwarding permissions",
https://cloud.google.com/pubsub/docs/handling-failures): the compiled plan carries both grants
per source, so they are applied in the same plan. That the service then forwards with exactly
those grants is verified only on GCP.
"""

from __future__ import annotations

import dataclasses
import time

from google.cloud import pubsub_v1
from helpers import EXAMPLE

from providers.pubsub import PubSubProvider
from reconciler.compile import compile_resources
from reconciler.load import load_repo
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind, address

STATE = load_repo(EXAMPLE)
DESIRED = compile_resources(STATE)


def _dead_lettering() -> list:
    return [r for r in DESIRED if r.kind == Kind.PUBSUB_SUBSCRIPTION and r.spec.get("dead_letter_policy")]


def test_a_message_nacked_past_max_delivery_attempts_lands_on_the_dlq(emulators, project_id):
    ingest = next(r for r in _dead_lettering() if r.name == "orders-ingest")
    policy = ingest.spec["dead_letter_policy"]
    dlq = policy["dead_letter_topic"]
    hold = next(r for r in DESIRED if r.kind == Kind.PUBSUB_SUBSCRIPTION and r.spec.get("topic") == dlq)
    wanted = {ingest.spec["topic"], dlq}
    # The emulator honours the retry policy's backoff (10 s growing to 600 s): without it the five
    # deliveries take seconds instead of ~90 s. Dead-lettering does not depend on it.
    fast = dataclasses.replace(ingest, spec={k: v for k, v in ingest.spec.items() if k != "retry_policy"})
    provider = PubSubProvider(project_id)
    for resource in [r for r in DESIRED if r.kind == Kind.PUBSUB_TOPIC and r.name in wanted] + [fast, hold]:
        provider.create(resource)

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.publish(publisher.topic_path(project_id, ingest.spec["topic"]), b'{"order_id": "x"}',
                      origin="test").result(timeout=30)
    ingest_path = subscriber.subscription_path(project_id, ingest.name)
    hold_path = subscriber.subscription_path(project_id, hold.name)
    attempts, dead = [], []
    deadline = time.monotonic() + 90
    while not dead and time.monotonic() < deadline:
        # The consumer fails: every delivery is nacked (its ack deadline set to 0, redelivered at once).
        for received in subscriber.pull(subscription=ingest_path, max_messages=1, timeout=5).received_messages:
            attempts.append(received.delivery_attempt)
            subscriber.modify_ack_deadline(subscription=ingest_path, ack_ids=[received.ack_id], ack_deadline_seconds=0)
        if len(attempts) >= policy["max_delivery_attempts"]:
            dead = subscriber.pull(subscription=hold_path, max_messages=1, timeout=5).received_messages
    assert attempts == list(range(1, policy["max_delivery_attempts"] + 1)), attempts
    assert [m.message.data for m in dead] == [b'{"order_id": "x"}']
    attributes = dict(dead[0].message.attributes)
    assert attributes["origin"] == "test"
    assert attributes["CloudPubSubDeadLetterSourceSubscription"] == ingest.name
    assert not subscriber.pull(subscription=ingest_path, max_messages=1, timeout=3).received_messages


def test_the_plan_carries_the_pubsub_service_agents_two_grants_per_dead_lettering_subscription():
    plan = reconcile(DESIRED, [], {})
    creates = {c.address: c.desired for c in plan.changes if c.action == Action.CREATE and c.kind == Kind.IAM_BINDING}
    subscriptions = _dead_lettering()
    assert {s.source_id for s in subscriptions} == {s.source_id for s in STATE.sources}
    for subscription in subscriptions:
        dlq = subscription.spec["dead_letter_policy"]["dead_letter_topic"]
        publish = creates[address(Kind.IAM_BINDING, f"pubsub_topic:{dlq}:roles/pubsub.publisher")]
        subscribe = creates[address(Kind.IAM_BINDING, f"pubsub_subscription:{subscription.name}:roles/pubsub.subscriber")]
        assert "serviceAgent:pubsub" in publish.spec["members"]
        assert "serviceAgent:pubsub" in subscribe.spec["members"]
        assert publish.spec["target"] == address(Kind.PUBSUB_TOPIC, dlq)
        assert subscribe.spec["target"] == subscription.address
