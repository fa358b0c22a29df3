"""One target's IAM policy as headwater reads and writes it, whatever service it comes from.

`Policy` is the read: per role, the members of its *unconditional* binding (a conditional
binding is another grant, never read as headwater's and written back untouched), the etag it
was read with, and the service's own object (``raw``), which the adapter writes back with only
the changed roles replaced. `Adapter` is what each target service provides (one small module
per service in this package): ``get(name)`` reads the policy, ``put(name, policy, changes)``
writes ``changes`` (role -> the role's new unconditional members) over the read with its etag.
A write that meets a concurrent change (the etag is stale: ABORTED / 409 / 412) raises
`google.api_core.exceptions.Aborted`, which `providers.errors.call` retries from a fresh read
(`IamProvider` runs read-modify-write as one attempt): never a blind overwrite.

The IAM policy format: https://cloud.google.com/iam/docs/reference/rest/v1/Policy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from google.api_core import exceptions as gexc
from google.iam.v1 import policy_pb2

from reconciler.naming import normalized_member

T = TypeVar("T")

# IAM policy version 3 is the one that can hold conditional bindings: asking for it means a
# policy with conditions is read (and written back) whole instead of being refused.
POLICY_VERSION = 3
# What a stale etag looks like: gRPC ABORTED, HTTP 409 (ABORTED) or 412 (an If-Match / etag
# precondition, as BigQuery's datasets and Cloud Storage answer).
CONFLICTS = (gexc.Aborted, gexc.Conflict, gexc.PreconditionFailed)


@dataclass
class Policy:
    members: dict[str, set[str]] = field(default_factory=dict)  # role -> unconditional members
    raw: Any = None
    etag: Any = None

    def of(self, role: str) -> set[str]:
        """The role's unconditional members, each in its canonical form (`reconciler.naming.normalized_member`:
        e-mails and domains in lower case): IAM compares them without case (terraform-provider-google#3880),
        so ``group:Analysts@Example.com`` read back equals the declared ``group:analysts@example.com``
        and a write never holds the two spellings side by side."""
        return {normalized_member(m) for m in self.members.get(role, ())}


class Adapter(Protocol):
    service: str  # the API, for error messages and call counts: pubsub, storage, bigquery...

    def get(self, name: str) -> Policy: ...

    def put(self, name: str, policy: Policy, changes: Mapping[str, set[str]]) -> None: ...


def conflict(fn: Callable[[], T], what: str) -> T:
    """Run a policy write; a stale etag becomes ``Aborted`` (temporary: the read-modify-write is retried)."""
    try:
        return fn()
    except CONFLICTS as exc:
        raise gexc.Aborted(f"the IAM policy of {what} changed while it was being updated") from exc


# --------------------------------------------------------------------------- google.iam.v1 Policy


def from_proto(policy: policy_pb2.Policy) -> Policy:
    """A ``google.iam.v1.Policy`` (Pub/Sub, Data Catalog, data policies, Resource Manager)."""
    members: dict[str, set[str]] = {}
    for binding in policy.bindings:
        if not binding.HasField("condition"):
            members.setdefault(binding.role, set()).update(binding.members)
    return Policy(members, policy, policy.etag)


def to_proto(policy: Policy, changes: Mapping[str, set[str]]) -> policy_pb2.Policy:
    """The read ``google.iam.v1.Policy`` with each changed role's unconditional binding replaced
    (dropped when it has no members: an empty binding is invalid in setIamPolicy); etag kept."""
    new = policy_pb2.Policy()
    new.CopyFrom(policy.raw)
    kept = [b for b in new.bindings if b.HasField("condition") or b.role not in changes]
    del new.bindings[:]
    new.bindings.extend(kept)
    for role, members in sorted(changes.items()):
        if members:
            new.bindings.add(role=role, members=sorted(members))
    if any(b.HasField("condition") for b in new.bindings):
        new.version = POLICY_VERSION
    return new


# --------------------------------------------------------------------------- google.api_core.iam.Policy


def from_core(policy: Any) -> Policy:
    """A ``google.api_core.iam.Policy`` (Cloud Storage buckets, BigQuery tables)."""
    members: dict[str, set[str]] = {}
    for binding in policy.bindings:
        if not binding.get("condition"):
            members.setdefault(binding["role"], set()).update(binding.get("members") or ())
    return Policy(members, policy, policy.etag)


def to_core(policy: Policy, changes: Mapping[str, set[str]]) -> Any:
    """The read ``google.api_core.iam.Policy`` with each changed role's unconditional binding replaced."""
    new = copy.deepcopy(policy.raw)
    kept = [b for b in new.bindings if b.get("condition") or b["role"] not in changes]
    new.bindings = kept + [{"role": role, "members": set(members)}
                           for role, members in sorted(changes.items()) if members]
    return new
