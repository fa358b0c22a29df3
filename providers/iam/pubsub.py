"""Pub/Sub targets of ``iam_binding``: ``pubsub_topic.<id>`` and ``pubsub_subscription.<id>``.

``getIamPolicy`` / ``setIamPolicy`` of the topic (``PublisherClient``) or the subscription
(``SubscriberClient``), google.iam.v1 requests
(https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.topics/getIamPolicy,
.../projects.subscriptions/setIamPolicy); the policy written carries the etag read, and a
stale one is ABORTED (the read-modify-write is retried). A name in full
(``projects/<p>/topics/<t>``) is another project's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from providers.calls import CallCounter
from providers.iam.policy import POLICY_VERSION, Policy, conflict, from_proto, to_proto

RPC_TIMEOUT_S = 60.0
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}


class PubSubAdapter:
    service = "pubsub"

    def __init__(self, client: Callable[[], Any], project: str, collection: str, calls: CallCounter) -> None:
        self._client, self.project, self.collection, self._calls = client, project, collection, calls

    def path(self, name: str) -> str:
        return name if name.startswith("projects/") else f"projects/{self.project}/{self.collection}/{name}"

    def get(self, name: str) -> Policy:
        self._calls.count("get_iam_policy")
        request = {"resource": self.path(name), "options": {"requested_policy_version": POLICY_VERSION}}
        return from_proto(self._client().get_iam_policy(request=request, **_OPTS))

    def put(self, name: str, policy: Policy, changes: Mapping[str, set[str]]) -> None:
        request = {"resource": self.path(name), "policy": to_proto(policy, changes)}
        self._calls.count("set_iam_policy")
        conflict(lambda: self._client().set_iam_policy(request=request, **_OPTS), self.path(name))
