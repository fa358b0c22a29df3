"""Cloud Storage target of ``iam_binding``: ``storage_bucket.<name>``.

``buckets.getIamPolicy`` with ``optionsRequestedPolicyVersion=3`` (so a policy with conditional
bindings is read whole) and ``buckets.setIamPolicy`` with the etag read
(https://cloud.google.com/storage/docs/json_api/v1/buckets/getIamPolicy, .../setIamPolicy); a
stale etag answers 412 and the read-modify-write is retried. Legacy bucket roles and
``projectViewer:``-style convenience members are other grants, written back as read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from providers.calls import CallCounter
from providers.iam.policy import POLICY_VERSION, Policy, conflict, from_core, to_core

RPC_TIMEOUT_S = 60.0
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}


class BucketAdapter:
    service = "storage"

    def __init__(self, client: Callable[[], Any], calls: CallCounter) -> None:
        self._client, self._calls = client, calls

    def get(self, name: str) -> Policy:
        self._calls.count("get_bucket_iam_policy")
        return from_core(self._client().bucket(name).get_iam_policy(requested_policy_version=POLICY_VERSION, **_OPTS))

    def put(self, name: str, policy: Policy, changes: Mapping[str, set[str]]) -> None:
        new = to_core(policy, changes)
        new.version = POLICY_VERSION
        self._calls.count("set_bucket_iam_policy")
        conflict(lambda: self._client().bucket(name).set_iam_policy(new, **_OPTS), f"bucket {name}")
