"""The plan: what apply will do, as data.

`reconcile(desired, live, ...)` is a pure function (after gitops-engine's ``Reconcile``): it
matches desired resources to live ones by address, diffs only the fields the desired side
declares, and decides one `Action` per resource. The result is a `Plan`; apply consumes a
plan and nothing else, and every output format (text, JSON, Markdown) renders the same plan.

Safety rules decided here, so that every caller gets them:

* resources no longer declared are deleted only when pruning is on; otherwise they are kept
  and listed;
* a resource that holds data (bucket, dataset, table) is deleted or replaced only with
  ``allow_destroy`` and when it is not deletion-protected; otherwise the change is ``blocked``,
  with the reason;
* BigQuery schema changes follow the source's evolution policy (`reconciler.schema_evolution`);
* a Dataflow job holds no data, but its plan says what each action does to the running job:
  a streaming job is updated in place or drained and relaunched, never cancelled;
* a plan is ``refused`` as a whole when the desired state declares no source while the platform
  has some (an emptied ``connectors/`` must never wipe the platform), or when it would delete
  more than ``max_delete_fraction`` of the managed resources.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from deepdiff import DeepDiff

from reconciler import schema_evolution
from reconciler.resources import (
    DIGEST_KEY,
    PLATFORM_KEY,
    PROTECTED_KEY,
    SOURCE_KEY,
    Kind,
    Resource,
    digest,
    is_digest,
)

FORMAT_VERSION = "1"

# Creation order of kinds (each depends only on earlier ones); deletes run in reverse.
KIND_ORDER = (
    Kind.STORAGE_BUCKET,
    Kind.BIGQUERY_DATASET,
    Kind.PUBSUB_TOPIC,
    Kind.PUBSUB_SUBSCRIPTION,
    Kind.BIGQUERY_TABLE,
    # Jobs read and write everything above: launched after it, and deleted (drained) before it.
    Kind.DATAFLOW_JOB,
    # What feeds a source's topic starts once the subscription and its job are there.
    Kind.CLOUD_RUN_SERVICE,
    Kind.STORAGE_NOTIFICATION,
    # A transfer copies into the landing prefix once its notification and job are there.
    Kind.STORAGE_TRANSFER_JOB,
)


class Action(StrEnum):
    NOOP = "no-op"
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "kind": str(self.kind),
            "name": self.name,
            "action": str(self.action),
            "before": _state(self.live),
            "after": _state(self.desired) if self.action != Action.DELETE else None,
            "diff": [d.to_dict() for d in self.diff],
            "replace_paths": self.replace_paths,
            "reason": self.reason,
            "blocked": self.blocked,
        }


def _state(resource: Resource | None) -> dict[str, Any] | None:
    if resource is None:
        return None
    return {"spec": dict(resource.spec), "labels": dict(sorted(resource.labels.items()))}


@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    revision: str | None = None
    refused: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def actionable(self) -> list[Change]:
        """Changes apply will execute, in order."""
        if self.refused:
            return []
        return [c for c in self.changes if c.action != Action.NOOP and not c.blocked]

    @property
    def blocked(self) -> list[Change]:
        return [c for c in self.changes if c.blocked]

    @property
    def kept(self) -> list[Change]:
        return [c for c in self.changes if c.orphan and c.action == Action.NOOP]

    @property
    def has_changes(self) -> bool:
        return any(c.action != Action.NOOP for c in self.changes)

    def summary(self) -> dict[str, int]:
        counts = {str(a): 0 for a in Action}
        for change in self.changes:
            counts[str(change.action)] += 1
        counts["blocked"] = len(self.blocked)
        counts["kept"] = len(self.kept)
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


def reconcile(
    desired: Iterable[Resource],
    live: Iterable[Resource],
    immutable_fields: Mapping[Kind, frozenset[str]],
    options: PlanOptions = PlanOptions(),
    revision: str | None = None,
    declared_sources: int | None = None,
) -> Plan:
    """Match desired to live and decide each resource's action. Pure: no I/O."""
    desired_by_address = {r.address: r for r in desired}
    live_by_address = {
        r.address: r
        for r in live
        if options.environment is None or r.labels.get(PLATFORM_KEY) == options.environment
    }
    changes = [
        _change_for(d, live_by_address.get(addr), immutable_fields.get(d.kind, frozenset()), options)
        for addr, d in desired_by_address.items()
    ]
    changes += [
        _orphan(r, options) for addr, r in live_by_address.items() if addr not in desired_by_address
    ]
    ordered = _order(changes)
    refused = _refusal(ordered, live_by_address, declared_sources, options)
    return Plan(tuple(ordered), revision=revision, refused=refused,
                options={"prune": options.prune, "allow_destroy": options.allow_destroy})


# --------------------------------------------------------------------------- one resource


def _change_for(desired: Resource, live: Resource | None, immutable: frozenset[str], options: PlanOptions) -> Change:
    common = {"address": desired.address, "kind": desired.kind, "name": desired.name, "desired": desired, "live": live}
    if live is None:
        return Change(action=Action.CREATE, reason="declared but does not exist", **common)

    diffs: list[FieldDiff] = []
    schema_problems: list[str] = []
    schema_notes: list[str] = []
    for key, want in desired.spec.items():
        have = live.spec.get(key)
        if is_digest(have):
            # The provider can only fingerprint this field: compare fingerprints.
            if have[DIGEST_KEY] != digest(want):
                diffs.append(FieldDiff(key, have, want, forces_replacement=key in immutable))
        elif key == "schema" and desired.kind == Kind.BIGQUERY_TABLE:
            diffs_, problems, notes = _schema_diff(have or [], want, desired.options.get("schema_evolution"))
            diffs += diffs_
            schema_problems += problems
            schema_notes += notes
        else:
            diffs += field_diffs(key, have, want, forces_replacement=key in immutable)
    for key, want in sorted(desired.labels.items()):
        if live.labels.get(key) != want:
            diffs.append(FieldDiff(f"labels.{key}", live.labels.get(key), want))

    if not diffs:
        return Change(action=Action.NOOP, **common)
    update_fields = tuple(dict.fromkeys(d.path.split(".", 1)[0].split("[", 1)[0] for d in diffs))
    replace_paths = [d.path for d in diffs if d.forces_replacement]
    if replace_paths:
        reason = f"{', '.join(replace_paths)} cannot change in place" + _job_consequence(desired, Action.REPLACE)
        return Change(action=Action.REPLACE, diff=tuple(diffs), reason=reason,
                      blocked=_destroy_block(desired, options, "replace"), **common)
    if schema_problems:
        evolution = desired.options.get("schema_evolution", "backward_compatible")
        return Change(action=Action.UPDATE, diff=tuple(diffs), reason="; ".join(schema_notes + schema_problems),
                      blocked=f"schema.evolution is {evolution}: " + "; ".join(schema_problems),
                      update_fields=update_fields, **common)
    reason = "; ".join(schema_notes) or "declared fields differ from live: " + ", ".join(d.path for d in diffs)
    reason += _job_consequence(desired, Action.UPDATE)
    return Change(action=Action.UPDATE, diff=tuple(diffs), reason=reason, update_fields=update_fields, **common)


def _job_consequence(job: Resource, action: Action) -> str:
    """What an action does to a running Dataflow job: the plan says it, apply does it.

    A streaming job keeps state (de-duplication keys) and in-flight messages: it is updated in
    place when only its parameters change, and drained - never cancelled - when it must go.
    A batch job is its schedule: an update changes what the next runs do (on Dataflow a run in
    progress finishes as launched); a run is a bounded re-read of its input, so cancelling one
    when the job goes loses nothing.
    """
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


def _destroy_block(resource: Resource, options: PlanOptions, verb: str) -> str | None:
    """Why a delete/replace of ``resource`` must not run, or None when it may."""
    if not resource.holds_data:
        return None
    if not options.allow_destroy:
        return f"{verb} would destroy the data this {resource.kind} holds; rerun with --allow-destroy to permit it"
    if resource.deletion_protection:
        return f"{verb} refused: deletion_protection is true for this {resource.kind}; set it to false first"
    return None


def _orphan(live: Resource, options: PlanOptions) -> Change:
    common = {"address": live.address, "kind": live.kind, "name": live.name, "desired": None, "live": live}
    if not options.prune:
        return Change(action=Action.NOOP, reason="no longer declared; kept (use --prune to delete)", **common)
    if live.kind == Kind.DATAFLOW_JOB:
        return Change(action=Action.DELETE, reason="no longer declared (pruning)" + _job_consequence(live, Action.DELETE),
                      **common)
    # A resource no longer declared tells us its protection through its label.
    protected = live.labels.get(PROTECTED_KEY, "true") != "false"
    probe = Resource(live.kind, live.name, deletion_protection=protected)
    return Change(action=Action.DELETE, reason="no longer declared (pruning)",
                  blocked=_destroy_block(probe, options, "delete"), **common)


# --------------------------------------------------------------------------- whole plan


def _order(changes: list[Change]) -> list[Change]:
    """Creates, updates and replaces in dependency order; deletes after them, in reverse."""
    rank = {kind: i for i, kind in enumerate(KIND_ORDER)}
    forward = sorted((c for c in changes if c.action != Action.DELETE), key=lambda c: (rank[c.kind], c.address))
    deletes = sorted((c for c in changes if c.action == Action.DELETE), key=lambda c: (-rank[c.kind], c.address))
    return forward + deletes


def _refusal(changes: list[Change], live: Mapping[str, Resource], declared_sources: int | None,
             options: PlanOptions) -> str | None:
    live_sources = {r.labels.get(SOURCE_KEY) for r in live.values()} - {None}
    if declared_sources == 0 and live_sources:
        return (f"the desired state declares no sources while {len(live_sources)} are live; "
                "refusing a plan that would leave the platform empty (is connectors/ missing?)")
    deletes = [c for c in changes if c.action == Action.DELETE and not c.blocked]
    if live and len(deletes) > options.max_delete_fraction * len(live):
        return (f"the plan deletes {len(deletes)} of {len(live)} managed resources, more than "
                f"policy.max_delete_fraction ({options.max_delete_fraction:g}); refusing")
    return None
