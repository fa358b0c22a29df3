"""Messages in Pub/Sub, as data: the demo publishes sample events and reads the dead letters.

`providers.pubsub` manages topics and subscriptions (resources); this module only sends and
receives messages, for ``headwater demo`` and the tests that move real data. google-cloud-pubsub
honours ``PUBSUB_EMULATOR_HOST`` by itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from providers.errors import call

PULL_BATCH = 100
PULL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Message:
    message_id: str
    data: bytes
    attributes: dict[str, str]


def publish(project: str, topic: str, payloads: Iterable[bytes], **attributes: str) -> list[str]:
    """Publish each payload to ``topic`` (an id in ``project``); the message ids, in order."""
    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path(project, topic)
    futures = [publisher.publish(path, payload, **attributes) for payload in payloads]
    return [call(lambda f=f: f.result(timeout=60), f"pubsub.publish {path}") for f in futures]


def pull_available(project: str, subscription: str) -> list[Message]:
    """Every message ``subscription`` holds right now, acknowledged once received.

    On a subscription that retains acked messages (the ``-dlq-hold`` ones do) acknowledging
    does not lose them: they stay replayable with a seek for the retention period.
    """
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, subscription)
    received: list[Message] = []
    while True:
        try:
            response = subscriber.pull(request={"subscription": path, "max_messages": PULL_BATCH},
                                       retry=None, timeout=PULL_TIMEOUT_S)
        except gexc.DeadlineExceeded:
            break  # nothing arrived within the timeout: the subscription is empty
        if not response.received_messages:
            break
        ack_ids = []
        for item in response.received_messages:
            message = item.message
            received.append(Message(message.message_id, bytes(message.data), dict(message.attributes)))
            ack_ids.append(item.ack_id)
        request = {"subscription": path, "ack_ids": ack_ids}
        call(lambda r=request: subscriber.acknowledge(request=r), f"pubsub.acknowledge {path}")
    return received
