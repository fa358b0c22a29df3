"""The reconcile loop's steps, wired together: load → compile → observe → plan → apply.

`Engine` holds the providers (one per GCP service) and knows which provider owns which kind.
It is what the CLI and the daemon call; each step is also usable on its own.

Observing costs one list call per kind (tables: per dataset), whatever the number of sources.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from providers.base import Provider
from reconciler.apply import ApplyResult, Listener, apply_plan
from reconciler.compile import compile_resources
from reconciler.load import DesiredState
from reconciler.plan import Action, Plan, PlanOptions, reconcile
from reconciler.resources import Kind, Resource


class Engine:
    def __init__(self, providers: Iterable[Provider]) -> None:
        self.providers: dict[Kind, Provider] = {}
        for provider in providers:
            for kind in provider.kinds:
                self.providers[kind] = provider

    @property
    def immutable_fields(self) -> Mapping[Kind, frozenset[str]]:
        return {kind: p.immutable_fields.get(kind, frozenset()) for kind, p in self.providers.items()}

    def observe(self, kinds: Iterable[Kind] | None = None) -> list[Resource]:
        """Every managed live resource of the given kinds (default: all kinds)."""
        live: list[Resource] = []
        for kind in kinds or self.providers:
            live.extend(self.providers[kind].observe(kind))
        return live

    def plan(self, state: DesiredState, options: PlanOptions | None = None) -> Plan:
        options = options or plan_options(state)
        desired = compile_resources(state)
        kinds = {r.kind for r in desired} | set(self.providers)
        return reconcile(
            desired,
            self.observe(kinds),
            self.immutable_fields,
            options,
            revision=state.revision,
            declared_sources=len(state.sources),
        )

    def apply(self, plan: Plan, on_outcome: Listener | None = None, max_workers: int = 8) -> ApplyResult:
        return apply_plan(plan, self.providers, max_workers=max_workers, on_outcome=on_outcome)


def plan_options(state: DesiredState, *, prune: bool = False, allow_destroy: bool = False) -> PlanOptions:
    """Plan options from the platform's policy and the command line (the command line can only add)."""
    policy = state.platform.policy
    return PlanOptions(
        prune=prune or policy.prune,
        allow_destroy=allow_destroy,
        max_delete_fraction=policy.max_delete_fraction,
        environment=state.platform.environment,
    )


@dataclass(frozen=True)
class Drift:
    address: str
    kind: Kind
    state: str  # "missing" or "drifted"
    fields: tuple[tuple[str, object, object], ...]  # (path, live, desired)


def drift_of(plan: Plan) -> list[Drift]:
    """Declared resources whose live state differs from the desired one (orphans are not drift)."""
    result = []
    for change in plan.changes:
        if change.desired is None or change.action == Action.NOOP:
            continue
        if change.action == Action.CREATE:
            result.append(Drift(change.address, change.kind, "missing", ()))
        else:
            fields = tuple((d.path, d.before, d.after) for d in change.diff)
            result.append(Drift(change.address, change.kind, "drifted", fields))
    return result
