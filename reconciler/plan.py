"""The plan: what apply will do, as data.

`reconcile(desired, live, ...)` is a pure function (after gitops-engine's ``Reconcile``): it
matches desired resources to live ones by address, diffs only the fields the desired side
declares, and decides one `Action` per resource. The result is a `Plan`; apply consumes a
plan and nothing else, and every output format (text, JSON, Markdown) renders the same plan.
The actions use Terraform's words: create, update, replace, delete, import (take over an
existing resource), read (a reference to another project's resource).

What is compared (`reconciler.resources`, module docstring): only the spec keys the desired side
declares; inside a `PARTIAL_FIELDS` settings object only its declared sub-keys; a provider's
`immutable_fields` are paths (``time_partitioning.type``), so only a change at or under one of
them forces a replacement. A Dataflow job's pipeline is compared by what it means
(`reconciler.semantic`): schema fields by name, nested ones too, never by their order.

Safety rules decided here, so that every caller gets them:

* resources no longer declared are deleted only when pruning is on; otherwise they are kept
  and listed;
* a resource that holds data (`reconciler.resources.DATA_KINDS`: bucket, dataset, table,
  subscription, topic) is deleted or replaced only with ``allow_destroy`` and when it is not
  deletion-protected; otherwise the change is ``blocked``, with the reason and, when its provider
  observed it, what would be lost (a subscription's backlog);
* a declared resource that exists but is not this platform's (no ``managed-by=headwater``
  label, or another platform's) is never touched: it is shown as an ``import``, blocked until
  adopted explicitly (``PlanOptions.adopt``: ``headwater adopt ADDRESS`` or ``--adopt``), and
  never adopted when that would need a replacement;
* a reference to another project's resource (``Resource.external``) is only read: missing, it
  is a blocked ``read``;
* a change that depends on a blocked change is blocked too, its reason naming the blocked one
  (``Change.blocked_by``): nothing is half-applied around a change that will not happen;
* a live resource on its way out (a draining Dataflow job, `reconciler.resources.LEAVING`) is
  replaced: apply waits until it has gone, then creates its successor;
* BigQuery schema changes follow the source's evolution policy (`reconciler.schema_evolution`);
* a Dataflow job holds no data, but its plan says what each action does to the running job:
  a streaming job is updated in place or drained and relaunched, never cancelled;
* a plan is ``refused`` as a whole when the desired state declares no source while the platform
  has some (an emptied ``connectors/`` must never wipe the platform), or when it would delete
  more than ``max_delete_fraction`` of the managed resources.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from deepdiff import DeepDiff

from reconciler import schema_evolution, semantic
from reconciler.resources import (
    DIGEST_KEY,
    LEAVING,
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    PARTIAL_FIELDS,
    PLATFORM_KEY,
    PROTECTED_KEY,
    SECURITY_KINDS,
    SOURCE_KEY,
    WOULD_LOSE,
    Kind,
    Resource,
    ResourceIndex,
    digest,
    is_digest,
    is_unobservable,
)

FORMAT_VERSION = "1"

# Creation order of kinds (each depends only on earlier ones); deletes run in reverse.
KIND_ORDER = (
    Kind.STORAGE_BUCKET,
    Kind.BIGQUERY_DATASET,
    Kind.PUBSUB_TOPIC,
    Kind.PUBSUB_SUBSCRIPTION,
    Kind.BIGQUERY_TABLE,
    # issue 12: views read the tables above; row access policies filter them.
    Kind.BIGQUERY_VIEW,
    Kind.BIGQUERY_MATERIALIZED_VIEW,
    Kind.BIGQUERY_ROW_ACCESS_POLICY,
    # issue 13: the taxonomy and its tags before the masking policies on them and the columns
    # they tag; grants on everything above; the audit config last of the project-wide settings.
    Kind.DATACATALOG_TAXONOMY,
    Kind.DATACATALOG_POLICY_TAG,
    Kind.BIGQUERY_DATA_POLICY,
    Kind.BIGQUERY_COLUMN_POLICY,
    Kind.IAM_BINDING,
    Kind.PROJECT_AUDIT_CONFIG,
    # Jobs read and write everything above: launched after it, and deleted (drained) before it.
    Kind.DATAFLOW_JOB,
    # What feeds a source's topic starts once the subscription and its job are there.
    Kind.CLOUD_RUN_SERVICE,
    Kind.STORAGE_NOTIFICATION,
    # issue 10: a stream writes into the landing prefix once its notification and job are there.
    Kind.DATASTREAM_CONNECTION_PROFILE,
    Kind.DATASTREAM_STREAM,
    # A transfer copies into the landing prefix once its notification and job are there.
    Kind.STORAGE_TRANSFER_JOB,
    # issue 11: watching all of the above; a policy notifies channels that exist first.
    Kind.MONITORING_NOTIFICATION_CHANNEL,
    Kind.MONITORING_ALERT_POLICY,
    Kind.MONITORING_DASHBOARD,
)


# issue 13: kinds whose resources no longer declared are deleted without --prune (none holds data;
# each delete is a security change the plan lists), with the reason the plan gives.
UNPRUNED_ORPHANS: dict[Kind, str] = {
    Kind.IAM_BINDING: "no longer declared: headwater's members of this role are revoked (a revocation needs no --prune)",
    Kind.BIGQUERY_COLUMN_POLICY: "no longer declared (its classification was removed): the column's policy tags are "
                                 "removed (needs no --prune)",
    Kind.PROJECT_AUDIT_CONFIG: "no longer declared (audit_logs is off): the service's Data Access audit logs are turned "
                               "off (needs no --prune)",
}


class Action(StrEnum):
    NOOP = "no-op"
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    # Take over a resource that exists but is not this platform's (Terraform's word): apply adds
    # headwater's labels (keeping the owner's) and updates the declared fields that differ.
    IMPORT = "import"
    # A reference to another project's resource: only ever read (a plan shows it when it is missing).
    READ = "read"


@dataclass(frozen=True)
class FieldDiff:
    path: str
    before: Any
    after: Any
    forces_replacement: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "before": self.before, "after": self.after,
                "forces_replacement": self.forces_replacement}


@dataclass(frozen=True)
class Change:
    address: str
    kind: Kind
    name: str
    action: Action
    desired: Resource | None
    live: Resource | None
    diff: tuple[FieldDiff, ...] = ()
    reason: str = ""  # for display only
    blocked: str | None = None  # why this change will not be applied
    # Spec keys (or "labels") that an update sends; empty for other actions.
    update_fields: tuple[str, ...] = ()
    # The blocked changes this one waits for (it is blocked because they are).
    blocked_by: tuple[str, ...] = ()

    @property
    def replace_paths(self) -> list[str]:
        return [d.path for d in self.diff if d.forces_replacement]

    @property
    def orphan(self) -> bool:
        """Managed and live, but no longer declared (kept unless pruning)."""
        return self.desired is None

    @property
    def depends_on(self) -> tuple[str, ...]:
        return self.desired.depends_on if self.desired else ()

    @property
    def security(self) -> bool:
        """Grants, revokes or unmasks access (issue 13): a change of a `SECURITY_KINDS` resource, or
        of a Cloud Run service's ``public`` setting (a public service created or deleted too)."""
        if self.action in (Action.NOOP, Action.READ):
            return False
        if self.kind in SECURITY_KINDS:
            return True
        if self.kind == Kind.CLOUD_RUN_SERVICE:
            if self.action == Action.CREATE:
                return bool(self.desired.spec.get("public"))
            if self.action == Action.DELETE:
                return bool(self.live.spec.get("public"))
            return any(d.path == "public" for d in self.diff)
        return False

    @property
    def security_summary(self) -> str:
        """What a security change does to access, in one phrase ("" for other changes)."""
        return security_phrase(self) if self.security else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "kind": str(self.kind),
            "name": self.name,
            "action": str(self.action),
            "before": _state(self.live),
            "after": _state(self.desired) if self.action not in (Action.DELETE, Action.READ) else None,
            "diff": [d.to_dict() for d in self.diff],
            "replace_paths": self.replace_paths,
            "reason": self.reason,
            "blocked": self.blocked,
            "blocked_by": list(self.blocked_by),
            "security": self.security,
            **({"security_summary": self.security_summary} if self.security else {}),
        }


def _state(resource: Resource | None) -> dict[str, Any] | None:
    if resource is None:
        return None
    state: dict[str, Any] = {"spec": dict(resource.spec), "labels": dict(sorted(resource.labels.items()))}
    if resource.status:
        state["status"] = dict(resource.status)
    return state


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    revision: str | None = None
    refused: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    # The views below scan every change once and keep the result (a plan is immutable, and
    # the daemon asks for them several times a sync: at 100,000 resources a scan is ~20 ms).
    # `reconcile` hands them over ready-made (`_known`): it knows them without a scan.
    @functools.cached_property
    def _non_noop(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action != Action.NOOP)

    @functools.cached_property
    def _actionable(self) -> tuple[Change, ...]:
        if self.refused:
            return ()
        return tuple(c for c in self._non_noop if c.action != Action.READ and not c.blocked)

    @functools.cached_property
    def _blocked(self) -> tuple[Change, ...]:
        return tuple(c for c in self._non_noop if c.blocked)  # (a no-op is never blocked)

    @functools.cached_property
    def _kept(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.orphan and c.action == Action.NOOP)

    @functools.cached_property
    def _declared_counts(self) -> dict[Kind, int]:
        counts: dict[Kind, int] = {}
        for change in self.changes:
            if change.desired is not None:
                counts[change.kind] = counts.get(change.kind, 0) + 1
        return counts

    def _known(self, *, non_noop: tuple[Change, ...], kept: tuple[Change, ...],
               declared_counts: Mapping[Kind, int]) -> Plan:
        """This plan with the views `reconcile` knows already (what a scan of ``changes`` would
        find; tests/test_reconcile_memo.py compares them)."""
        self.__dict__.update(_non_noop=non_noop, _kept=kept,
                             _declared_counts={k: n for k, n in declared_counts.items() if n})
        return self

    @property
    def actionable(self) -> list[Change]:
        """Changes apply will execute, in order."""
        return list(self._actionable)

    @property
    def blocked(self) -> list[Change]:
        return list(self._blocked)

    @property
    def kept(self) -> list[Change]:
        return list(self._kept)

    @property
    def non_noop(self) -> tuple[Change, ...]:
        """Every change but the no-ops, in order: actionable, blocked, and missing references."""
        return self._non_noop

    @property
    def declared_counts(self) -> Mapping[Kind, int]:
        """How many declared resources of each kind the plan covers (no-ops included)."""
        return self._declared_counts

    @property
    def has_changes(self) -> bool:
        return bool(self._non_noop)

    def summary(self) -> dict[str, int]:
        counts = {str(a): 0 for a in Action}
        for change in self._non_noop:
            counts[str(change.action)] += 1
        counts[str(Action.NOOP)] = len(self.changes) - len(self._non_noop)
        counts["blocked"] = len(self._blocked)
        counts["kept"] = len(self._kept)
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "revision": self.revision,
            "refused": self.refused,
            "changes": [c.to_dict() for c in self.changes if c.action != Action.NOOP or c.orphan],
            "summary": self.summary(),
        }


@dataclass(frozen=True)
class PlanOptions:
    prune: bool = False
    allow_destroy: bool = False
    max_delete_fraction: float = 0.2
    environment: str | None = None  # only live resources of this platform are considered
    # Addresses of existing resources that are not this platform's, to take over (import).
    adopt: frozenset[str] = frozenset()


class ReconcileMemo:
    """The last reconcile's inputs and decisions, so that the next reconcile of a mostly
    unchanged platform decides again only where something changed (issue 14: a one-source
    commit at 10,000 sources must not re-diff 110,000 resources, twice a sync).

    A declared resource's decision (`_decide`: create, update, replace, import, read or no-op)
    is a pure function of its desired `Resource`, the live one of this platform or another's at
    its address, the kind's immutable fields and the `PlanOptions`. Resources are immutable
    values - a provider returns a new object for what it read, and nothing changes a resource's
    spec, labels or status in place (the memo would not see it) - and an unchanged source's are
    the very same objects from one revision to the next
    (`load_repo(previous=...)`, compile's memo, `reconciler.incremental`'s cache of live state).
    So `reconcile` with a memo finds the addresses whose desired or live object is not (``is``)
    the last call's - from `ResourceIndex.changed_since` when the inputs are indexes derived
    from the last call's (compile's memo and the observed-state cache make them so: no pass over
    all resources), else by comparing every address - decides again only those, and keeps the
    rest of the decisions and their order as they were. What depends on the whole plan is
    recomputed every time from what it depends on: orphans (live, ours, no longer declared:
    their set is kept up to date the same way), the order of deletes, blocked-by chains and the
    refusal. With other options or immutable fields, or more than `MAX_DELTA` differing
    addresses, it decides everything afresh. The plan is the same with or without a memo
    (tests/test_reconcile_memo.py, a differential random walk among them).

    Not thread-safe: one memo per planning loop (the daemon's worker; `reconciler.incremental`).
    """

    MAX_DELTA = 2000  # above this many differing addresses, deciding everything is as quick

    def __init__(self) -> None:
        self._last: _Reconciled | None = None
        self.hits = 0  # decisions the last reconcile reused (for tests and logs)

    def __len__(self) -> int:
        return len(self._last.decisions) if self._last is not None else 0


@dataclass
class _Reconciled:
    """One reconcile's inputs and what it decided, kept for the next (`ReconcileMemo`)."""

    options: PlanOptions
    immutable_fields: Mapping[Kind, frozenset[str]]
    desired: ResourceIndex
    live: ResourceIndex
    ours: dict[str, Resource]  # live, this platform's
    others: dict[str, Resource]  # live at a declared address, not this platform's
    decisions: dict[str, Change]  # declared address -> its decision
    forward: list[Change]  # the decisions in plan order (`_forward_key`)
    pending: dict[str, Change]  # the decisions other than no-op
    orphans: set[str]  # ours, not declared
    declared: dict[Kind, int]  # declared resources by kind


_RANK = {kind: i for i, kind in enumerate(KIND_ORDER)}
_NO_FIELDS: frozenset[str] = frozenset()


def _forward_key(change: Change) -> tuple[int, str]:
    """Creates, updates and replaces go in dependency order (`_order`)."""
    return _RANK[change.kind], change.address


def reconcile(
    desired: Iterable[Resource] | ResourceIndex,
    live: Iterable[Resource] | ResourceIndex,
    immutable_fields: Mapping[Kind, frozenset[str]],
    options: PlanOptions = PlanOptions(),
    revision: str | None = None,
    declared_sources: int | None = None,
    memo: ReconcileMemo | None = None,
) -> Plan:
    """Match desired to live and decide each resource's action. Pure: no I/O. ``desired`` and
    ``live``: resources, or `ResourceIndex`es of them (one resource an address; a later one
    wins). ``memo``: the last reconcile's, to decide again only where the inputs changed
    (`ReconcileMemo`); the plan is the same with or without it."""
    desired = desired if isinstance(desired, ResourceIndex) else ResourceIndex(desired)
    live = live if isinstance(live, ResourceIndex) else ResourceIndex(live)
    environment = options.environment

    def is_ours(resource: Resource) -> bool:  # (`Resource.managed`, inlined: a hot loop at 100,000)
        labels = resource.labels
        return labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE and (environment is None
                                                                   or labels.get(PLATFORM_KEY) == environment)

    last = memo._last if memo is not None else None
    if last is not None and (last.options != options or (last.immutable_fields is not immutable_fields
                                                          and last.immutable_fields != immutable_fields)):
        last = None  # (equal, not the same: the daemon makes an engine, and its immutable fields, per sync)
    delta = _delta(last, desired, live) if last is not None else None
    if delta is None or len(delta) > ReconcileMemo.MAX_DELTA:
        ours: dict[str, Resource] = {}
        others: dict[str, Resource] = {}
        for resource in live.values():
            if is_ours(resource):
                ours[resource.address] = resource
            elif resource.address in desired:
                others[resource.address] = resource
        decisions = {a: _decide(r, ours, others, immutable_fields, options) for a, r in desired.items()}
        forward = sorted(decisions.values(), key=_forward_key)
        pending = {a: c for a, c in decisions.items() if c.action != Action.NOOP}
        orphans = set(ours.keys() - desired.keys())
        declared: dict[Kind, int] = {}
        for change in decisions.values():
            declared[change.kind] = declared.get(change.kind, 0) + 1
        hits = 0
    else:
        # The last call's tables, taken over and updated in place (copying them would be a pass
        # over every resource); the memo holds nothing meanwhile, so a failure here leaves it
        # empty - the next call decides everything - never half-updated.
        memo._last = None
        ours, others, decisions, forward = last.ours, last.others, last.decisions, last.forward
        pending, orphans, declared = last.pending, last.orphans, last.declared
        for address in delta:  # who holds each address now: ours, another's, or nobody
            ours.pop(address, None)
            others.pop(address, None)
            resource = live.get(address)
            if resource is not None:
                if is_ours(resource):
                    ours[address] = resource
                elif address in desired:
                    others[address] = resource
        for address in delta:
            old = decisions.pop(address, None)
            if old is not None:
                del forward[bisect.bisect_left(forward, _forward_key(old), key=_forward_key)]
                pending.pop(address, None)
                declared[old.kind] -= 1  # (zero counts are dropped by `Plan._known`)
            want = desired.get(address)
            if want is not None:
                decisions[address] = change = _decide(want, ours, others, immutable_fields, options)
                bisect.insort(forward, change, key=_forward_key)
                if change.action != Action.NOOP:
                    pending[address] = change
                declared[change.kind] = declared.get(change.kind, 0) + 1
            if address in ours and want is None:
                orphans.add(address)
            else:
                orphans.discard(address)
        hits = len(decisions) - sum(1 for address in delta if address in desired)
    if memo is not None:
        memo._last = _Reconciled(options, immutable_fields, desired, live, ours, others, decisions, forward,
                                 pending, orphans, declared)
        memo.hits = hits
    orphan_changes = [_orphan(ours[a], options, desired) for a in orphans if not ours[a].status.get(LEAVING)]
    kept = sorted((c for c in orphan_changes if c.action != Action.DELETE), key=_forward_key)
    deletes = sorted((c for c in orphan_changes if c.action == Action.DELETE),
                     key=lambda c: (-_RANK[c.kind], c.address))
    # Only changes other than no-ops are or become blocked (a no-op is never blocked): the
    # blocked-by chains are followed among those alone, in plan order, and put in place after.
    acting = _block_dependents([*sorted(pending.values(), key=_forward_key), *deletes])
    ordered = forward
    if kept or any(c is not pending.get(c.address) for c in acting[: len(acting) - len(deletes)]):
        ordered = list(forward)
        for change in kept:
            bisect.insort(ordered, change, key=_forward_key)
        for change in acting[: len(acting) - len(deletes)]:
            if change is not pending[change.address]:  # newly blocked by what it depends on
                ordered[bisect.bisect_left(ordered, _forward_key(change), key=_forward_key)] = change
    refused = _refusal(acting, ours, declared_sources, options)
    plan = Plan((*ordered, *deletes), revision=revision, refused=refused,
                options={"prune": options.prune, "allow_destroy": options.allow_destroy,
                         "adopt": sorted(options.adopt)})
    return plan._known(non_noop=tuple(acting), kept=tuple(kept), declared_counts=declared)


def _decide(want: Resource, ours: Mapping[str, Resource], others: Mapping[str, Resource],
            immutable_fields: Mapping[Kind, frozenset[str]], options: PlanOptions) -> Change:
    """The decision for one declared resource (module docstring)."""
    address = want.address
    have = ours.get(address)
    if want.external:
        return _reference(want, have or others.get(address))
    immutable = immutable_fields.get(want.kind, _NO_FIELDS)
    if have is not None:
        return _change_for(want, have, immutable, options)
    if address in others:
        return _import(want, others[address], immutable, options)
    return Change(address, want.kind, want.name, Action.CREATE, want, None, reason="declared but does not exist")


def _delta(last: _Reconciled, desired: ResourceIndex, live: ResourceIndex) -> set[str]:
    """Addresses whose desired or live object is not (``is``) the last call's: known to the
    indexes when they were derived from the last call's (`ResourceIndex.changed_since`), else
    found by comparing every address."""
    changed = [desired.changed_since(last.desired), live.changed_since(last.live)]
    if changed[0] is not None and changed[1] is not None:
        return set(changed[0] | changed[1])
    delta: set[str] = set()
    for now, before, known in ((desired, last.desired, changed[0]), (live, last.live, changed[1])):
        if known is not None:
            delta.update(known)
            continue
        delta.update(a for a, r in now.items() if before.get(a) is not r)
        delta.update(before.keys() - now.keys())
    return delta


# --------------------------------------------------------------------------- one resource


def _common(resource: Resource, live: Resource | None, desired: Resource | None) -> dict[str, Any]:
    return {"address": resource.address, "kind": resource.kind, "name": resource.name, "desired": desired,
            "live": live}


@dataclass
class _Diff:
    diffs: list[FieldDiff]
    schema_problems: list[str]
    schema_notes: list[str]

    @property
    def replace_paths(self) -> list[str]:
        return [d.path for d in self.diffs if d.forces_replacement]

    @property
    def update_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.path.split(".", 1)[0].split("[", 1)[0] for d in self.diffs))


def diff_resource(desired: Resource, live: Resource, immutable: frozenset[str]) -> _Diff:
    """The field-level differences of ``live`` from ``desired``: the declared spec keys (and, in
    `PARTIAL_FIELDS`, the declared sub-keys), compared by meaning, and the declared labels."""
    diffs: list[FieldDiff] = []
    schema_problems: list[str] = []
    schema_notes: list[str] = []
    partial = PARTIAL_FIELDS.get(desired.kind, frozenset())
    for key, want in desired.spec.items():
        have = live.spec.get(key)
        if is_unobservable(have):
            continue  # the provider cannot read it back here (an emulator's departure): not compared
        if is_digest(have):
            # The provider can only fingerprint this field: compare fingerprints.
            if have[DIGEST_KEY] != digest(want):
                diffs.append(FieldDiff(key, have, want, forces_replacement=forces_replacement(key, have, want,
                                                                                             immutable)))
        elif key == "schema" and desired.kind == Kind.BIGQUERY_TABLE:
            diffs_, problems, notes = _schema_diff(have or [], want, desired.options.get("schema_evolution"))
            diffs += diffs_
            schema_problems += problems
            schema_notes += notes
        else:
            have = semantic.meaning(desired.kind, key, have)
            want = semantic.meaning(desired.kind, key, want)
            if key in partial:
                have = declared_part(have, want)
            diffs += [dataclasses.replace(d, forces_replacement=forces_replacement(d.path, d.before, d.after,
                                                                                   immutable))
                      for d in field_diffs(key, have, want)]
    for key, want in sorted(desired.labels.items()):
        if live.labels.get(key) != want:
            diffs.append(FieldDiff(f"labels.{key}", live.labels.get(key), want))
    return _Diff(diffs, schema_problems, schema_notes)


def _change_for(desired: Resource, live: Resource, immutable: frozenset[str], options: PlanOptions) -> Change:
    common = _common(desired, live, desired)
    leaving = live.status.get(LEAVING)
    if leaving:
        # Its name is still taken: creating now would collide (a 409) or, worse, update the
        # leaving one. Apply's replace waits for it to go (delete is idempotent), then creates.
        reason = (f"replacing a {leaving} {desired.kind}: the live one is {leaving}; apply waits until it has gone, "
                  "then creates it anew")
        return Change(action=Action.REPLACE, reason=reason,
                      blocked=_destroy_block(desired, options, "replace", live), **common)

    found = diff_resource(desired, live, immutable)
    diffs = found.diffs
    if not diffs:
        return Change(action=Action.NOOP, **common)
    replace_paths = found.replace_paths
    if replace_paths:
        reason = f"{', '.join(replace_paths)} cannot change in place" + _job_consequence(desired, Action.REPLACE)
        return Change(action=Action.REPLACE, diff=tuple(diffs), reason=reason,
                      blocked=_destroy_block(desired, options, "replace", live), **common)
    if found.schema_problems:
        evolution = desired.options.get("schema_evolution", "backward_compatible")
        return Change(action=Action.UPDATE, diff=tuple(diffs),
                      reason="; ".join(found.schema_notes + found.schema_problems),
                      blocked=f"schema.evolution is {evolution}: " + "; ".join(found.schema_problems),
                      update_fields=found.update_fields, **common)
    reason = "; ".join(found.schema_notes) or "declared fields differ from live: " + ", ".join(d.path for d in diffs)
    reason += _job_consequence(desired, Action.UPDATE)
    if live.status.get("error"):  # what the service says is wrong with it (e.g. a failed Datastream stream)
        reason += f"; the live {desired.kind} reports: {live.status['error']}"
    return Change(action=Action.UPDATE, diff=tuple(diffs), reason=reason, update_fields=found.update_fields,
                  **common)


def owner_of(live: Resource) -> str:
    """Who a live resource that is not this platform's belongs to, as far as its labels tell."""
    if live.managed:
        return f"managed by another headwater platform, {PLATFORM_KEY}={live.labels.get(PLATFORM_KEY, '?')}"
    shown = " ".join(f"{k}={v}" for k, v in sorted(live.labels.items()) if k != MANAGED_BY_KEY)
    return "not managed by headwater, " + (f"labelled {shown}" if shown else "with no labels")


def _import(desired: Resource, live: Resource, immutable: frozenset[str], options: PlanOptions) -> Change:
    """A declared resource that exists but is not this platform's: shown, never touched unless adopted."""
    found = diff_resource(desired, live, immutable)
    # Adopting keeps the owner's labels and adds ours (an update sends the whole label map).
    adopted = dataclasses.replace(desired, labels={**live.labels, **desired.labels})
    common = _common(desired, live, adopted)
    owner = owner_of(live)
    changes = ", ".join(d.path for d in found.diffs if not d.path.startswith("labels.")) or "no declared field"
    reason = f"exists, {owner}; adopting it labels it as this platform's and updates {changes}"
    fields = tuple(dict.fromkeys((*found.update_fields, "labels")))
    if desired.address not in options.adopt:
        blocked = (f"{desired.kind} {desired.name} already exists and is {owner}; headwater leaves it alone "
                   f"until it is adopted explicitly: headwater adopt {desired.address} (or --adopt {desired.address})")
    elif found.replace_paths:
        paths = found.replace_paths
        blocked = (f"cannot adopt: {', '.join(paths)} {'differs' if len(paths) == 1 else 'differ'} and cannot change "
                   "in place, and headwater never replaces a resource it does not manage; make the desired state "
                   "match it, or use another name")
    elif found.schema_problems:
        blocked = "cannot adopt without an incompatible schema change: " + "; ".join(found.schema_problems)
    else:
        blocked = None
    return Change(action=Action.IMPORT, diff=tuple(found.diffs), reason=reason, blocked=blocked,
                  update_fields=fields, **common)


def _reference(desired: Resource, live: Resource | None) -> Change:
    """Another project's resource, referenced by its full name: read, never managed."""
    common = _common(desired, live, desired)
    if live is not None:
        return Change(action=Action.NOOP, reason="exists (another project's; read only, never managed here)",
                      **common)
    return Change(action=Action.READ, reason="referenced by its full name; never created or managed here",
                  blocked=(f"{desired.kind} {desired.name} does not exist, or this platform cannot read it; headwater "
                           "never creates or changes another project's resources: create it there (and grant this "
                           "platform access), or fix the reference"), **common)


def _job_consequence(job: Resource, action: Action) -> str:
    """What an action does to a running Dataflow job: the plan says it, apply does it.

    A streaming job keeps state (de-duplication keys) and in-flight messages: it is updated in
    place when only its parameters change, and drained - never cancelled - when it must go.
    A batch job is its schedule: an update changes what the next runs do (on Dataflow a run in
    progress finishes as launched); a run is a bounded re-read of its input, so cancelling one
    when the job goes loses nothing.
    """
    if job.kind == Kind.DATASTREAM_STREAM:
        return _stream_consequence(job, action)
    if job.kind == Kind.BIGQUERY_MATERIALIZED_VIEW and action in (Action.REPLACE, Action.DELETE):  # issue 12
        return (" — the materialized view is dropped and created anew: BigQuery recomputes the whole view from its "
                "base tables (a full scan, billed), and queries read the base tables until it has"
                if action == Action.REPLACE else " — its computed result is dropped")
    if job.kind != Kind.DATAFLOW_JOB:
        return ""
    streaming = bool(job.spec.get("streaming"))
    if action == Action.UPDATE:
        return (" — the running streaming job is updated in place, keeping its state (Dataflow job update "
                "with transform name mapping; drained and relaunched if Dataflow finds the update incompatible; "
                "the local runner restarts it)" if streaming else
                " — the batch job's next runs use the new settings; a run in progress finishes as launched "
                "(the local runner restarts it)")
    if action == Action.REPLACE:
        return (" — the streaming job is drained (in-flight data finished), then launched anew" if streaming else
                " — the batch job is cancelled, then launched anew")
    if action == Action.DELETE:
        return " — drained (in-flight data finished), not cancelled" if streaming else " — cancelled"
    return ""


def _stream_consequence(stream: Resource, action: Action) -> str:
    """What an action does to a Datastream stream (issue 10): its position is its replication
    slot, which the database's owner created and Datastream never drops."""
    slot = stream.spec.get("replication_slot")
    slot_text = f"replication slot {slot}" if slot else "binlog position"
    if action == Action.REPLACE:
        return (f" — the stream is deleted and created anew: every table is backfilled again (backfill: "
                f"{stream.spec.get('backfill', 'all')}) and the new stream reads the {slot_text} from where it is "
                "(a new slot name needs that slot created first); changes are applied again, idempotently")
    if action == Action.DELETE:
        return (f" — the {slot_text} is NOT dropped: it keeps retaining the database's WAL until someone drops it "
                f"(SELECT pg_drop_replication_slot('{slot}')) or a stream reads it again" if slot else
                " — MySQL keeps its binlogs by its own retention; nothing is dropped")
    if action == Action.UPDATE:
        return " — updated in place (Datastream stream update); its position is kept"
    return ""


def field_diffs(key: str, before: Any, after: Any, forces_replacement: bool = False) -> list[FieldDiff]:
    """Field-level differences of one spec key (nested dicts are diffed per leaf)."""
    if before == after:
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        tree = DeepDiff(before, after, view="tree", ignore_order=False)
        diffs = []
        for level in sorted((lvl for changes in tree.values() for lvl in changes), key=lambda lvl: lvl.path()):
            path = key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in level.path(output_format="list"))
            diffs.append(FieldDiff(path, _missing(level.t1), _missing(level.t2), forces_replacement))
        return diffs
    return [FieldDiff(key, before, after, forces_replacement)]


def declared_part(live: Any, desired: Any) -> Any:
    """``live`` restricted to the keys ``desired`` declares, recursively (for `PARTIAL_FIELDS`)."""
    if not isinstance(live, dict) or not isinstance(desired, dict):
        return live
    return {key: declared_part(value, desired[key]) for key, value in live.items() if key in desired}


def forces_replacement(path: str, before: Any, after: Any, immutable: frozenset[str]) -> bool:
    """Whether a difference at ``path`` (``time_partitioning.field``, or a whole ``time_partitioning``
    that appears or goes) touches an immutable path.

    ``immutable`` holds spec keys or dotted paths into them. A difference at or under an immutable
    path forces a replacement; a difference at a coarser path (a whole settings object) does
    when the values at the immutable path differ within it.
    """
    for entry in immutable:
        if path == entry or path.startswith((entry + ".", entry + "[")):
            return True
        if entry.startswith(path + "."):
            rest = entry[len(path) + 1:].split(".")
            if _dig(before, rest) != _dig(after, rest):
                return True
    return False


def _dig(value: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _missing(value: Any) -> Any:
    return None if type(value).__name__ == "NotPresent" else value


def _schema_diff(live: list, desired: list, evolution: str | None) -> tuple[list[FieldDiff], list[str], list[str]]:
    evolution = evolution or "backward_compatible"
    changes = schema_evolution.compare(live, desired)
    incompatible = [c for c in changes if not c.compatible]
    force = evolution == "recreate" and bool(incompatible)
    diffs = [FieldDiff(f"schema.{c.path}", c.before, c.after, forces_replacement=force and not c.compatible)
             for c in changes]
    notes = [c.explanation for c in changes if c.compatible]
    if evolution == "none" and changes:
        return diffs, [c.explanation for c in changes], []
    if incompatible and not force:
        return diffs, [c.explanation for c in incompatible], notes
    return diffs, [], notes


def _destroy_block(resource: Resource, options: PlanOptions, verb: str, live: Resource | None = None) -> str | None:
    """Why a delete/replace of ``resource`` must not run, or None when it may. What the live
    resource would lose is quoted when its provider observed it (`WOULD_LOSE`)."""
    if not resource.holds_data:
        return None
    lost = live.status.get(WOULD_LOSE) if live is not None else None
    if not options.allow_destroy:
        return (f"{verb} would destroy the data this {resource.kind} holds{': ' + lost if lost else ''}; "
                "rerun with --allow-destroy to permit it")
    if resource.deletion_protection:
        return (f"{verb} refused: deletion_protection is true for this {resource.kind}"
                f"{', which holds ' + lost if lost else ''}; set it to false first")
    return None


def _orphan(live: Resource, options: PlanOptions, declared: Mapping[str, Resource]) -> Change:
    common = _common(live, live, None)
    if live.kind in UNPRUNED_ORPHANS:
        target = _security_target(live)
        if target is None or target in declared or options.prune:
            # Access settings take effect when they leave the desired state (docs/governance.md):
            # stale access is the unsafe direction, and a removed classification or audit setting
            # is a decision.
            return Change(action=Action.DELETE, reason=UNPRUNED_ORPHANS[live.kind], **common)
        # Its target is no longer declared either, and is kept (no --prune): so are the grants and
        # tags on it. A removed source's kept subscription and job keep working - dead-lettering
        # needs the Pub/Sub agent's grants - until --prune deletes them together.
        return Change(action=Action.NOOP, reason=f"no longer declared; kept with {target}, which is kept too "
                                                 "(use --prune to delete both)", **common)
    if not options.prune:
        return Change(action=Action.NOOP, reason="no longer declared; kept (use --prune to delete)", **common)
    if live.kind == Kind.DATAFLOW_JOB:
        return Change(action=Action.DELETE, reason="no longer declared (pruning)" + _job_consequence(live, Action.DELETE),
                      **common)
    # A resource no longer declared tells us its protection through its label.
    protected = live.labels.get(PROTECTED_KEY, "true") != "false"
    probe = Resource(live.kind, live.name, deletion_protection=protected)
    return Change(action=Action.DELETE, reason="no longer declared (pruning)" + _job_consequence(live, Action.DELETE),
                  blocked=_destroy_block(probe, options, "delete", live), **common)


def _security_target(live: Resource) -> str | None:
    """The address of the resource an `UNPRUNED_ORPHANS` resource acts on: an IAM binding's target,
    a column policy's table; None for project-wide settings (the project is always there)."""
    if live.kind == Kind.IAM_BINDING:
        target = str(live.spec.get("target") or "")
        return None if not target or target.startswith("project.") else target
    if live.kind == Kind.BIGQUERY_COLUMN_POLICY:
        return f"{Kind.BIGQUERY_TABLE}.{live.name.split('/', 1)[0]}"
    return None


# --------------------------------------------------------------------------- whole plan


def _block_dependents(changes: list[Change]) -> list[Change]:
    """Block every change that depends (transitively) on a blocked change, naming the one it waits
    for: a job must not start writing a column whose table change is blocked, a subscription must
    not be created on a topic that cannot be read."""
    blocked = {c.address: c for c in changes if c.blocked}
    result = list(changes)
    if not blocked:  # the usual plan: nothing to follow
        return result
    progress = True
    while progress:  # dependencies come first in a plan's order, so this settles in one or two passes
        progress = False
        for i, change in enumerate(result):
            if change.blocked or change.desired is None or change.action in (Action.NOOP, Action.DELETE):
                continue
            culprits = tuple(dep for dep in change.depends_on if dep in blocked)
            if not culprits:
                continue
            first = blocked[culprits[0]]
            cause = first.blocked if not first.blocked_by else f"it waits for {', '.join(first.blocked_by)}"
            change = dataclasses.replace(
                change, blocked_by=culprits,
                blocked=f"depends on {first.address}, whose {first.action} is blocked ({_brief(cause)})")
            result[i] = change
            blocked[change.address] = change
            progress = True
    return result


def _brief(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _refusal(changes: list[Change], live: Mapping[str, Resource], declared_sources: int | None,
             options: PlanOptions) -> str | None:
    if declared_sources == 0:
        live_sources = {r.labels.get(SOURCE_KEY) for r in live.values()} - {None}
        if live_sources:
            return (f"the desired state declares no sources while {len(live_sources)} are live; "
                    "refusing a plan that would leave the platform empty (is connectors/ missing?)")
    deletes = [c for c in changes if c.action == Action.DELETE and not c.blocked]
    if live and len(deletes) > options.max_delete_fraction * len(live):
        return (f"the plan deletes {len(deletes)} of {len(live)} managed resources, more than "
                f"policy.max_delete_fraction ({options.max_delete_fraction:g}); refusing")
    return None


# --------------------------------------------------------------------------- security phrases (issue 13)

_TARGET_WORDS = {"bigquery_dataset": "dataset", "storage_bucket": "bucket", "bigquery_table": "table",
                 "pubsub_topic": "topic", "pubsub_subscription": "subscription", "project": "project",
                 "datacatalog_policy_tag": "policy tag", "bigquery_data_policy": "data policy"}
_AGENTS = {"pubsub": "Pub/Sub", "storage": "Cloud Storage", "datastream": "Datastream",
           "storagetransfer": "Storage Transfer"}


def _target_words(target: str) -> str:
    """``bigquery_dataset.silver`` -> ``dataset silver``."""
    kind, _, name = target.partition(".")
    return f"{_TARGET_WORDS.get(kind, kind)} {name}"


def _members_words(members: Iterable[str]) -> str:
    shown = []
    for member in members:
        agent = member.removeprefix("serviceAgent:")
        shown.append(f"the {_AGENTS.get(agent, agent)} service agent" if agent != member else member)
    return ", ".join(shown) or "nobody"


# Replacing these deletes the server's object first: what is lost until the successor is in place.
_CATALOG_WORDS = {Kind.DATACATALOG_TAXONOMY: "the taxonomy", Kind.DATACATALOG_POLICY_TAG: "the policy tag",
                  Kind.BIGQUERY_DATA_POLICY: "the masking policy"}
_CATALOG_REPLACE_LOSS = {
    Kind.DATACATALOG_TAXONOMY: "deleting it deletes its policy tags and their grants, so the columns they tag are "
                               "readable by every reader of their datasets until the tags are created again and "
                               "attached (by the next plan's apply)",
    Kind.DATACATALOG_POLICY_TAG: "deleting it untags the columns it tags and drops its grants: they are readable by "
                                 "every reader of their datasets until the new tag is attached (by the next plan's "
                                 "apply)",
    Kind.BIGQUERY_DATA_POLICY: "deleting it drops its masked readers' grant: until the new policy and its grant are "
                               "in place they read no masked values of the tagged columns",
}


def security_phrase(change: Change) -> str:
    """The human phrase of a security change (`Change.security`), e.g. "grants
    roles/bigquery.dataViewer on dataset silver to group:analysts@example.com"; a binding's
    ``options["why"]`` (reconciler.governance) follows it after a dash."""
    desired, live = change.desired, change.live
    spec = (desired or live).spec
    kind, name, action = change.kind, change.name, change.action
    text = ""
    if kind == Kind.IAM_BINDING:
        role, target = spec.get("role"), _target_words(spec.get("target", ""))
        want = set(desired.spec.get("members") or []) if desired and action != Action.DELETE else set()
        have = set(live.spec.get("members") or []) if live and action != Action.CREATE else set()
        parts = []
        if want - have:
            parts.append(f"grants {role} on {target} to {_members_words(sorted(want - have))}")
        if have - want:
            parts.append(f"revokes {role} on {target} from {_members_words(sorted(have - want))}")
        if desired and live and action != Action.DELETE and bool(desired.spec.get("exclusive")) != bool(
                live.spec.get("exclusive")):
            parts.append(f"makes the members of {role} on {target} "
                         + ("exclusive: any other member is removed" if desired.spec.get("exclusive")
                            else "additive: other members are left alone"))
        text = "; ".join(parts) or f"rewrites {role} on {target} ({_members_words(sorted(want))})"
        if action == Action.DELETE:
            text += " (no longer declared)"
    elif kind == Kind.PROJECT_AUDIT_CONFIG:
        types = ", ".join(spec.get("log_types") or [])
        if action == Action.CREATE:
            text = f"turns on Data Access audit logs ({types}) for {name}"
        elif action == Action.DELETE:
            text = f"turns off Data Access audit logs ({types}) for {name}"
        else:
            text = (f"changes the audit log types of {name}: {', '.join(live.spec.get('log_types') or [])} → "
                    f"{', '.join(desired.spec.get('log_types') or [])}")
    elif kind == Kind.BIGQUERY_COLUMN_POLICY:
        column, dataset = name, name.split(".", 1)[0]
        tags = ", ".join(spec.get("policy_tags") or [])
        if action == Action.DELETE or (desired is not None and not desired.spec.get("policy_tags")):
            text = (f"column {column} becomes readable by every reader of dataset {dataset} "
                    f"(policy tag {', '.join(live.spec.get('policy_tags') or []) or tags} removed)")
        elif action == Action.CREATE:
            text = (f"column {column} is tagged {tags}: only the tag's fine-grained readers read it in clear, the "
                    "other readers of the table read it masked or not at all")
        else:
            text = (f"column {column}'s policy tags change: {', '.join(live.spec.get('policy_tags') or []) or 'none'} "
                    f"→ {tags or 'none'}")
    elif action == Action.REPLACE and kind in _CATALOG_REPLACE_LOSS:
        # What a replacement loses in between (its delete runs first): said like a data kind's loss.
        paths = ", ".join(sorted({d.path.split(".")[0].split("[")[0] for d in change.diff if d.forces_replacement}))
        text = f"replaces {_CATALOG_WORDS[kind]} {name} ({paths}): " + _CATALOG_REPLACE_LOSS[kind]
    elif kind == Kind.BIGQUERY_DATA_POLICY:
        if action == Action.CREATE:
            text = f"masks the columns tagged {spec.get('policy_tag')} with {spec.get('masking')} for their masked readers"
        elif action == Action.DELETE:
            text = f"removes the masking policy {name}: its masked readers no longer read the tagged columns"
        elif live.spec.get("masking") != desired.spec.get("masking"):
            text = f"changes the masking of {name}: {live.spec.get('masking')} → {desired.spec.get('masking')}"
        else:
            text = f"changes the masking policy {name}: {', '.join(d.path for d in change.diff)}"
    elif kind == Kind.DATACATALOG_TAXONOMY:
        fine_grained = "FINE_GRAINED_ACCESS_CONTROL"
        if action == Action.CREATE:
            text = (f"creates the taxonomy {name}"
                    + (" with fine-grained access control activated: the columns its policy tags tag are read in "
                       "clear by the tags' fine-grained readers only" if fine_grained in (
                        spec.get("activated_policy_types") or []) else ""))
        elif action == Action.DELETE:
            text = (f"deletes the taxonomy {name} and its policy tags: the columns they tag become readable by every "
                    "reader of their datasets")
        else:
            was = fine_grained in (live.spec.get("activated_policy_types") or [])
            now = fine_grained in (desired.spec.get("activated_policy_types") or [])
            if was and not now:
                text = (f"deactivates fine-grained access control on the taxonomy {name}: the columns its policy tags "
                        "tag become readable by every reader of their datasets")
            elif now and not was:
                text = (f"activates fine-grained access control on the taxonomy {name}: the columns its policy tags "
                        "tag are read in clear by the tags' fine-grained readers only")
            else:
                text = f"changes the taxonomy {name}: {', '.join(d.path for d in change.diff)}"
    elif kind == Kind.DATACATALOG_POLICY_TAG:
        if action == Action.DELETE:
            text = (f"deletes the policy tag {name}: the columns it tags become readable by every reader of their "
                    "datasets")
        else:
            text = f"{'creates' if action == Action.CREATE else 'changes'} the policy tag {name}"
    elif kind == Kind.BIGQUERY_ROW_ACCESS_POLICY:
        table = spec.get("table")
        if action == Action.CREATE:
            text = (f"restricts the rows of table {table} that {_members_words(spec.get('grantees') or [])} read to "
                    f"{spec.get('filter')}")
        elif action == Action.DELETE:
            text = (f"removes the row access policy {name} on table {table} (without another policy on it, every "
                    "reader of the table reads every row)")
        else:
            text = f"changes the row access policy {name} on table {table}: {', '.join(d.path for d in change.diff)}"
    elif kind == Kind.CLOUD_RUN_SERVICE:
        public = bool((desired if action != Action.DELETE else live).spec.get("public"))
        if action == Action.DELETE:
            text = f"removes the public Cloud Run service {name}"
        else:
            text = (f"makes Cloud Run service {name} public (no invoker IAM check; anyone can call it)" if public
                    else f"makes Cloud Run service {name} private (callers need roles/run.invoker)")
    why = (desired.options.get("why") if desired is not None else None) or ""
    return text + (f" — {why}" if why else "")
