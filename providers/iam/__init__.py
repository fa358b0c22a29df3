"""IAM: ``iam_binding`` and ``project_audit_config`` resources (issue 13, docs/governance.md).

An ``iam_binding`` is one role on one target, with the members headwater manages there. Name
``<target kind>:<target name>:<role>``; canonical spec (always these keys)::

    {
        "target": "bigquery_dataset.silver",     # immutable; the address of what the role is on
        "role": "roles/bigquery.dataViewer",     # immutable
        "members": ["group:analysts@example.com", "serviceAgent:pubsub"],   # sorted
        "exclusive": False,
    }

Targets, each through its service's own policy API (one small adapter module per service in
this package, `providers.iam.policy.Adapter`): ``bigquery_dataset`` (the dataset's access
entries, `providers.iam.bigquery`), ``bigquery_table`` (table IAM), ``storage_bucket``
(`providers.iam.storage`), ``pubsub_topic`` / ``pubsub_subscription`` (`providers.iam.pubsub`),
``datacatalog_policy_tag`` (`providers.iam.datacatalog`), ``bigquery_data_policy``
(`providers.iam.datapolicies`), ``project`` (`providers.iam.project`).

A ``project_audit_config`` is the project's Data Access audit config of one service (name: the
service, ``bigquery.googleapis.com``); spec ``{"log_types": [ADMIN_READ | DATA_READ | DATA_WRITE,
sorted]}``, written with ``updateMask: auditConfigs,etag`` (`providers.iam.project`).

Contract (`providers.base`), every method idempotent:

``observe(kind)``
    Neither kind carries labels, so what is headwater's is what the ownership ledger says
    (`providers.iam.ledger`, ``gs://<landing bucket>/_headwater/iam-ledger.json``). One ledger
    download, then one policy read per distinct target of a ledger entry (IAM policies cannot be
    listed: the documented exception to "one list per kind", as for
    `providers.storage_notifications`), and the project number once if a live member is a
    service agent. Per ledger binding: the live members of the role that the ledger holds
    (additive), or every live member of the role (``exclusive``), in headwater's form
    (``serviceAgent:<service>`` for this project's agents, `providers.iam.agents`), with the
    labels the ledger recorded. A binding no longer declared but in the ledger is therefore
    observed, and the planner shows it as an orphan whose delete revokes headwater's members
    only. A target that is gone reports nothing. Per ledger audit config: the service's live log
    types.
``create(resource)``
    Grant: read the target's policy, add the declared members (resolved), write it back with the
    etag read, then record the binding in the ledger. Never `AlreadyExists` (granting what is
    granted changes nothing). A create never removes a member it did not grant, even of an
    exclusive binding: the members it found undeclared are observed afterwards and the next plan
    shows their removal, so no revocation happens without a plan that shows it.
``update(resource, fields)``
    ``members`` / ``exclusive`` / ``labels``: additive - add the declared members and remove those
    the ledger holds that are no longer declared, leaving every other member; exclusive - the role's
    members become the declared ones. Removing one of ``protected`` (headwater's own identity,
    ``access.reconciler``) or one of the project's service agents is refused (`PermanentError`),
    nothing written. Then the ledger entry.
``delete(resource)``
    Revoke the members the ledger holds for the binding (and only those), then drop the entry;
    one that is gone already succeeds.
Audit configs alike: create/update set the service's log types (exempted members of a kept log
type stay), delete removes the log types the ledger recorded.

Policy writes: the read-modify-write is one attempt of `providers.errors.call`; a stale etag
(ABORTED / 409 / 412) becomes ``Aborted`` and the whole attempt runs again from a fresh read,
never a blind overwrite. Each request is sent with ``retry=None`` and counted (`api_calls`);
every ``google.api_core`` error is translated by `providers.errors.translate`.

On the emulators (none implements IAM: the Pub/Sub emulator answers getIamPolicy with 501) these
kinds go to `providers.local_record` instead (`providers.build_providers`, EMULATOR DEPARTURE).
Verified only against the real services: that each service accepts these requests and
enforces the grants (docs/governance.md, "Providers and verification").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from providers.calls import CallCounter
from providers.errors import NotFound, PermanentError, call
from providers.iam import agents
from providers.iam.bigquery import DatasetAdapter, TableAdapter
from providers.iam.datacatalog import PolicyTagAdapter
from providers.iam.datapolicies import DataPolicyAdapter
from providers.iam.ledger import Ledger
from providers.iam.policy import Adapter, Policy
from providers.iam.project import LOG_TYPES, ProjectAdapter, audit_log_types
from providers.iam.pubsub import PubSubAdapter
from providers.iam.storage import BucketAdapter
from reconciler.naming import normalized_member
from reconciler.resources import Kind, Resource

KINDS = (Kind.IAM_BINDING, Kind.PROJECT_AUDIT_CONFIG)
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.IAM_BINDING: frozenset({"target", "role"}),
    Kind.PROJECT_AUDIT_CONFIG: frozenset(),
}
TARGET_KINDS = ("bigquery_dataset", "bigquery_table", "storage_bucket", "pubsub_topic", "pubsub_subscription",
                "datacatalog_policy_tag", "bigquery_data_policy", "project")
def _default_client(name: str, project: str) -> Any:
    """The official client of ``name``, made on first use unless given (tests give ones pointed at a fake)."""
    if name == "storage":
        from google.cloud import storage

        return storage.Client(project=project)
    if name == "bigquery":
        from google.cloud import bigquery

        return bigquery.Client(project=project)
    if name == "publisher":
        from google.cloud import pubsub_v1

        return pubsub_v1.PublisherClient()
    if name == "subscriber":
        from google.cloud import pubsub_v1

        return pubsub_v1.SubscriberClient()
    if name == "policy_tags":
        from google.cloud import datacatalog_v1

        return datacatalog_v1.PolicyTagManagerClient()
    if name == "data_policies":
        from google.cloud import bigquery_datapolicies_v1

        return bigquery_datapolicies_v1.DataPolicyServiceClient()
    if name == "projects":
        from google.cloud import resourcemanager_v3

        return resourcemanager_v3.ProjectsClient()
    raise ValueError(f"unknown client {name!r}")


def split_target(target: str) -> tuple[str, str]:
    """``bigquery_table.bronze.orders_raw`` -> (``bigquery_table``, ``bronze.orders_raw``)."""
    kind, _, name = str(target).partition(".")
    if kind not in TARGET_KINDS or not name:
        raise PermanentError(f"iam_binding target {target!r}: expected <kind>.<name> with kind one of "
                             f"{', '.join(TARGET_KINDS)}")
    return kind, name


class IamProvider:
    """IAM bindings and the project's audit configs. Contract: the module docstring."""

    kinds: tuple[Kind, ...] = KINDS
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, region: str, landing_bucket: str, *, protected: Collection[str] = (),
                 clients: Mapping[str, Any] | None = None,
                 policy_tag_id: Callable[[str], str | None] | None = None) -> None:
        """``policy_tag_id``: resolves ``<taxonomy>/<class>`` to the tag's server name from the shared
        tag directory (`providers.datacatalog.DataCatalogProvider.tag_id`); without it the policy
        tag adapter lists the tags itself."""
        self.project = project
        self.region = region
        self.protected = frozenset(protected)
        self._clients: dict[str, Any] = dict(clients or {})
        self._lock = threading.RLock()
        self._number: str | None = None
        self._counters: dict[str, CallCounter] = {}
        self.ledger = Ledger(lambda: self._client("storage"), landing_bucket, self._counter("storage"))
        self._project = ProjectAdapter(lambda: self._client("projects"), project, self._counter("cloudresourcemanager"))
        self.adapters: dict[str, Adapter] = {
            "bigquery_dataset": DatasetAdapter(lambda: self._client("bigquery"), project, self._counter("bigquery")),
            "bigquery_table": TableAdapter(lambda: self._client("bigquery"), project, self._counter("bigquery")),
            "storage_bucket": BucketAdapter(lambda: self._client("storage"), self._counter("storage")),
            "pubsub_topic": PubSubAdapter(lambda: self._client("publisher"), project, "topics", self._counter("pubsub")),
            "pubsub_subscription": PubSubAdapter(lambda: self._client("subscriber"), project, "subscriptions",
                                                 self._counter("pubsub")),
            "datacatalog_policy_tag": PolicyTagAdapter(lambda: self._client("policy_tags"), project, region,
                                                       self._counter("datacatalog"), resolve=policy_tag_id),
            "bigquery_data_policy": DataPolicyAdapter(lambda: self._client("data_policies"), project, region,
                                                      self._counter("bigquerydatapolicy")),
            "project": self._project,
        }

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        return self._observe(Kind(kind), None)

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        """The named resources the ledger holds (whichever platform recorded them), as observe sees them."""
        return self._observe(Kind(kind), set(names))

    def create(self, resource: Resource) -> None:
        if _kind(resource) == Kind.PROJECT_AUDIT_CONFIG:
            self._write_audit(resource)
        else:
            self._write_binding(resource, grant_only=True)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        immutable = set(fields) & IMMUTABLE_FIELDS[_kind(resource)]
        if immutable:
            raise PermanentError(f"{resource.address}: {', '.join(sorted(immutable))} cannot change in place")
        if _kind(resource) == Kind.PROJECT_AUDIT_CONFIG:
            self._write_audit(resource)
        else:
            self._write_binding(resource, grant_only=False)

    def delete(self, resource: Resource) -> None:
        if _kind(resource) == Kind.PROJECT_AUDIT_CONFIG:
            self._delete_audit(resource)
        else:
            self._delete_binding(resource)

    def api_calls(self) -> Mapping[str, int]:
        calls: dict[str, int] = {}
        for counter in self._counters.values():
            calls.update(counter.snapshot())
        return calls

    # -- bindings --

    def _observe(self, kind: Kind, names: set[str] | None) -> list[Resource]:
        if kind not in KINDS:
            raise PermanentError(f"iam: unsupported kind {kind!r}")
        ledger = self.ledger.read()
        if kind == Kind.PROJECT_AUDIT_CONFIG:
            entries = {n: e for n, e in ledger["audit_configs"].items() if names is None or n in names}
            if not entries:
                return []
            live = audit_log_types(self._get("project", self.project).raw)
            return [Resource(kind, service, {"log_types": sorted(live.get(service, set()) & set(LOG_TYPES))},
                             dict(entry.get("labels") or {}))
                    for service, entry in sorted(entries.items())]
        entries = {n: e for n, e in ledger["bindings"].items() if names is None or n in names}
        policies: dict[str, Policy | None] = {}
        for entry in entries.values():
            target = entry["target"]
            if target not in policies:
                try:
                    policies[target] = self._get(*split_target(target))
                except NotFound:
                    policies[target] = None  # the target is gone, and its grants with it
        resources = []
        for name, entry in sorted(entries.items()):
            policy = policies[entry["target"]]
            if policy is None:
                continue
            live = {self._unresolve(m) for m in policy.of(entry["role"])}
            exclusive = bool(entry.get("exclusive"))
            members = live if exclusive else live & {normalized_member(m) for m in entry.get("members") or ()}
            resources.append(Resource(Kind.IAM_BINDING, name, {
                "target": entry["target"], "role": entry["role"], "members": sorted(members), "exclusive": exclusive,
            }, dict(entry.get("labels") or {})))
        return resources

    def _write_binding(self, resource: Resource, *, grant_only: bool) -> None:
        spec = resource.spec
        target_kind, target_name = split_target(spec["target"])
        role = spec["role"]
        exclusive = bool(spec.get("exclusive"))
        declared = set(spec.get("members") or ())
        entry = self.ledger.read()["bindings"].get(resource.name) or {}
        held = set(entry.get("members") or ()) - declared  # granted by headwater, no longer declared
        want = {self._resolve(m) for m in declared}
        drop = {self._resolve(m) for m in held}
        adapter = self.adapters[target_kind]

        def attempt() -> None:
            policy = adapter.get(target_name)
            live = policy.of(role)
            if exclusive and not grant_only:
                new = set(want)
            elif grant_only:
                new = live | want
            else:
                new = (live - drop) | want
            removed = live - new
            refused = sorted((removed & {self._resolve(m) for m in self.protected})
                             | {m for m in removed if agents.is_agent(self._unresolve(m))})
            if refused:
                raise PermanentError(f"{resource.address}: refusing to remove {', '.join(refused)} from {role} on "
                                     f"{spec['target']}: headwater's own identity (access.reconciler) and the "
                                     "project's service agents are never removed")
            if new != live:
                adapter.put(target_name, policy, {role: new})

        call(attempt, f"{adapter.service}.set_iam_policy {spec['target']}")

        def record(ledger: dict[str, Any]) -> None:
            ledger["bindings"][resource.name] = {
                "target": spec["target"], "role": role, "members": sorted(declared), "exclusive": exclusive,
                "labels": dict(resource.labels)}

        self.ledger.change(record)

    def _delete_binding(self, resource: Resource) -> None:
        entry = self.ledger.read()["bindings"].get(resource.name)
        if entry is None:
            return  # not headwater's (or gone already): nothing of ours to revoke
        target_kind, target_name = split_target(entry["target"])
        role = entry["role"]
        ours = {self._resolve(m) for m in entry.get("members") or ()}
        adapter = self.adapters[target_kind]

        def attempt() -> None:
            try:
                policy = adapter.get(target_name)
            except Exception as exc:  # noqa: BLE001 - a target that is gone took its grants along
                if _not_found(exc):
                    return
                raise
            live = policy.of(role)
            if live & ours:
                adapter.put(target_name, policy, {role: live - ours})

        call(attempt, f"{adapter.service}.set_iam_policy {entry['target']}")
        self.ledger.change(lambda ledger: ledger["bindings"].pop(resource.name, None))

    # -- audit configs --

    def _write_audit(self, resource: Resource) -> None:
        service = resource.name
        want = set(resource.spec.get("log_types") or ())
        unknown = want - set(LOG_TYPES)
        if unknown:
            raise PermanentError(f"{resource.address}: unknown log types {sorted(unknown)} (known: {', '.join(LOG_TYPES)})")

        def attempt() -> None:
            policy = self._project.get(self.project)
            if audit_log_types(policy.raw).get(service, set()) != want:
                self._project.put_audit(policy, service, want)

        call(attempt, f"cloudresourcemanager.set_iam_policy {self._project.path()} auditConfigs")

        def record(ledger: dict[str, Any]) -> None:
            ledger["audit_configs"][service] = {"log_types": sorted(want), "labels": dict(resource.labels)}

        self.ledger.change(record)

    def _delete_audit(self, resource: Resource) -> None:
        service = resource.name
        entry = self.ledger.read()["audit_configs"].get(service)
        if entry is None:
            return
        ours = set(entry.get("log_types") or ())

        def attempt() -> None:
            policy = self._project.get(self.project)
            live = audit_log_types(policy.raw).get(service, set())
            if live & ours:
                self._project.put_audit(policy, service, live - ours)

        call(attempt, f"cloudresourcemanager.set_iam_policy {self._project.path()} auditConfigs")
        self.ledger.change(lambda ledger: ledger["audit_configs"].pop(service, None))

    # -- plumbing --

    def _get(self, target_kind: str, name: str) -> Policy:
        adapter = self.adapters[target_kind]
        return call(lambda: adapter.get(name), f"{adapter.service}.get_iam_policy {target_kind}.{name}")

    def project_number(self) -> str:
        """The project's number (``projects.get``, once per provider): service agents' e-mails hold it."""
        with self._lock:
            if self._number is None:
                self._number = call(self._project.number, f"cloudresourcemanager.get_project {self.project}")
            return self._number

    def _resolve(self, member: str) -> str:
        """A declared or ledger member as IAM holds it: an agent's e-mail, e-mails in lower case (as `Policy.of`)."""
        member = normalized_member(member)
        return agents.resolve(member, self.project_number()) if agents.is_agent(member) else member

    def _unresolve(self, member: str) -> str:
        return agents.unresolve(member, self.project_number()) if agents.looks_like_agent(member) else member

    def _client(self, name: str) -> Any:
        with self._lock:
            if name not in self._clients:
                self._clients[name] = _default_client(name, self.project)
            return self._clients[name]

    def _counter(self, service: str) -> CallCounter:
        if service not in self._counters:
            self._counters[service] = CallCounter(service)
        return self._counters[service]


def _kind(resource: Resource) -> Kind:
    kind = Kind(resource.kind)
    if kind not in KINDS:
        raise PermanentError(f"iam: unsupported kind {kind!r}")
    return kind


def _not_found(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(exc, gexc.NotFound | NotFound)
