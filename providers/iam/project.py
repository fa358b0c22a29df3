"""The project: target of ``iam_binding`` (``project.<project id>``), home of ``project_audit_config``,
and where the project number (for service agents) is read.

Resource Manager v3 (https://cloud.google.com/resource-manager/reference/rest/v3/projects):

* ``projects.get`` once per provider, for the number (``name`` is ``projects/<number>``);
* ``projects.getIamPolicy`` (``requestedPolicyVersion`` 3) and ``projects.setIamPolicy`` with the
  etag read. A binding write sends the default mask (``bindings,etag``); an audit config write
  sends ``updateMask: auditConfigs,etag``, so the bindings are not even looked at
  ("OPTIONAL: A FieldMask specifying which fields of the policy to modify. Only the fields in
  the mask will be modified. If no mask is provided, the following default mask is used:
  paths: "bindings, etag"", https://cloud.google.com/resource-manager/reference/rest/v3/projects/setIamPolicy).

Audit configs (https://cloud.google.com/iam/docs/reference/rest/v1/Policy#AuditConfig): one per
service, each with ``auditLogConfigs`` (a log type and its exempted members). headwater sets the
log types of the services it declares and leaves the others' configs, and each kept log type's
exempted members, as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.iam.v1 import policy_pb2
from google.protobuf import field_mask_pb2

from providers.calls import CallCounter
from providers.iam.policy import POLICY_VERSION, Policy, conflict, from_proto, to_proto

RPC_TIMEOUT_S = 60.0
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
LOG_TYPES = ("ADMIN_READ", "DATA_READ", "DATA_WRITE")


class ProjectAdapter:
    service = "cloudresourcemanager"

    def __init__(self, client: Callable[[], Any], project: str, calls: CallCounter) -> None:
        self._client, self.project, self._calls = client, project, calls

    def path(self, name: str | None = None) -> str:
        return f"projects/{name or self.project}"

    def number(self) -> str:
        self._calls.count("get_project")
        return self._client().get_project(name=self.path(), **_OPTS).name.removeprefix("projects/")

    def get(self, name: str) -> Policy:
        self._calls.count("get_iam_policy")
        request = {"resource": self.path(name), "options": {"requested_policy_version": POLICY_VERSION}}
        return from_proto(self._client().get_iam_policy(request=request, **_OPTS))

    def put(self, name: str, policy: Policy, changes: Mapping[str, set[str]]) -> None:
        request = {"resource": self.path(name), "policy": to_proto(policy, changes)}
        self._calls.count("set_iam_policy")
        conflict(lambda: self._client().set_iam_policy(request=request, **_OPTS), self.path(name))

    def put_audit(self, policy: Policy, service: str, log_types: set[str]) -> None:
        """Write ``service``'s audit config (its log types; none removes it) over the read policy,
        with the mask ``auditConfigs,etag``."""
        new = with_audit(policy.raw, service, log_types)
        request = {"resource": self.path(), "policy": new,
                   "update_mask": field_mask_pb2.FieldMask(paths=["audit_configs", "etag"])}
        self._calls.count("set_iam_policy")
        conflict(lambda: self._client().set_iam_policy(request=request, **_OPTS), self.path())


def audit_log_types(policy: policy_pb2.Policy) -> dict[str, set[str]]:
    """Per service, the log types its audit config turns on."""
    found: dict[str, set[str]] = {}
    for config in policy.audit_configs:
        found.setdefault(config.service, set()).update(
            policy_pb2.AuditLogConfig.LogType.Name(c.log_type) for c in config.audit_log_configs)
    return found


def with_audit(policy: policy_pb2.Policy, service: str, log_types: set[str]) -> policy_pb2.Policy:
    """``policy`` with ``service``'s audit config holding exactly ``log_types`` (kept ones keep their
    exempted members); every other service's config, and the bindings, untouched."""
    new = policy_pb2.Policy()
    new.CopyFrom(policy)
    exempted = {policy_pb2.AuditLogConfig.LogType.Name(c.log_type): list(c.exempted_members)
                for config in policy.audit_configs if config.service == service for c in config.audit_log_configs}
    others = [c for c in new.audit_configs if c.service != service]
    del new.audit_configs[:]
    new.audit_configs.extend(others)
    if log_types:
        config = new.audit_configs.add(service=service)
        for log_type in sorted(log_types):
            config.audit_log_configs.add(log_type=policy_pb2.AuditLogConfig.LogType.Value(log_type),
                                         exempted_members=exempted.get(log_type, []))
    return new
