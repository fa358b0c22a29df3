"""Publishing the daemon's alerts to a Pub/Sub topic, through google-cloud-pubsub.

Kept apart from `providers.pubsub` (which manages topics and subscriptions as resources):
this is the daemon's outbound notification channel, one publish per alert. The topic is not
managed by headwater; the deployment creates it and grants ``roles/pubsub.publisher`` on it
(deploy/iam.md). Honours ``PUBSUB_EMULATOR_HOST`` like every Pub/Sub client.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from google.cloud import pubsub_v1

from providers.errors import call

PUBLISH_TIMEOUT_S = 10.0


class TopicPublisher:
    def __init__(self, topic: str, project: str | None = None) -> None:
        """``topic``: ``projects/<p>/topics/<t>``, or a topic id in ``project``."""
        if not topic.startswith("projects/"):
            if not project:
                raise ValueError(f"topic {topic!r} needs a project: give projects/<project>/topics/{topic}")
            topic = f"projects/{project}/topics/{topic}"
        self.topic = topic
        self._client: pubsub_v1.PublisherClient | None = None
        self._lock = threading.Lock()

    def __call__(self, data: bytes, attributes: Mapping[str, str]) -> None:
        def publish() -> str:
            return self._publisher().publish(self.topic, data, **dict(attributes)).result(timeout=PUBLISH_TIMEOUT_S)

        call(publish, f"pubsub.publish {self.topic}", attempts=3)

    def _publisher(self) -> pubsub_v1.PublisherClient:
        with self._lock:
            if self._client is None:
                self._client = pubsub_v1.PublisherClient()
            return self._client
