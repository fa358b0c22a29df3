"""The reconcile loop's steps, wired together: load → compile → observe → plan → apply.

`Engine` holds the providers (one per GCP service) and knows which provider owns which kind.
It is what the CLI and the daemon call; each step is also usable on its own.

Observing costs one list call per kind (tables: per dataset), whatever the number of sources.
Then, only for what that did not find: declared resources that observe missed are read by name
(`providers.base.Reader`), so that one that exists but is not headwater's is shown as such (an
``import``, blocked until adopted) instead of planned as a create that would take it over; and
references to other projects' resources are read to check they exist. A platform that has
converged reads nothing. Last, when the plan deletes or replaces data-holding resources, their
providers are asked what that would destroy (`providers.base.LossReporter`: a subscription's
backlog...) and the plan quotes it in the blocked reason.

Before observing, a plan checks that every Secret Manager secret a connector names exists
(metadata only, one list call; `providers.base.SecretStore`): a missing one is a problem with
the file, line and field that names it, and nothing is planned. Likewise each database_cdc
table's schema file is compared with the live table's columns, as the stream's provider sees
them (`reconciler.cdc.live_schema_problems`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from providers.base import Provider, losses_with, read_with
from providers.errors import ProviderError
from reconciler.apply import ApplyResult, Listener, apply_plan
from reconciler.compile import compile_resources
from reconciler.load import DesiredState, InvalidDesiredState, Problem
from reconciler.plan import Action, Plan, PlanOptions, reconcile
from reconciler.resources import DATA_KINDS, WOULD_LOSE, Kind, Resource

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, providers: Iterable[Provider], secrets: Any = None, *, check_references: bool = False) -> None:
        """``secrets``: a `providers.base.SecretStore` to check secret references against, or None.
        ``check_references``: refuse a plan whose landing bucket or joined table is neither declared
        nor existing (`reconciler.references`); the CLI and the daemon turn it on."""
        self.secrets = secrets
        self.check_references = check_references
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
        """The plan of ``state``. Raises `InvalidDesiredState` when a named secret, or (with
        ``check_references``) a referenced bucket or table, does not exist."""
        if self.secrets is not None:
            problems = missing_secrets(state, self.secrets)
            if problems:
                raise InvalidDesiredState(problems)
        # database_cdc (issue 10): each table's schema file against the live table (reconciler/cdc.py).
        from reconciler.cdc import live_schema_problems

        problems = live_schema_problems(state, self.providers.get(Kind.DATASTREAM_STREAM))
        if problems:
            raise InvalidDesiredState(problems)
        options = options or plan_options(state)
        desired = compile_resources(state)
        plan = self.plan_resources(desired, options, revision=state.revision, declared_sources=len(state.sources))
        if self.check_references:
            # A landing bucket or joined table neither declared nor existing (reconciler/references.py),
            # checked once live state has been read (so an unreachable service is reported as such).
            from reconciler.references import missing_references

            problems = missing_references(state, desired, self.providers)
            if problems:
                raise InvalidDesiredState(problems)
        return plan

    def plan_resources(self, desired: list[Resource], options: PlanOptions, *, revision: str | None = None,
                       declared_sources: int | None = None) -> Plan:
        """The plan of compiled resources: observe, read what observe did not find, reconcile, and
        quote what gated deletes and replacements would destroy (module docstring)."""
        kinds = {r.kind for r in desired if r.kind in self.providers} | set(self.providers)
        live = self.observe(kinds)
        live += self.read_unobserved(desired, live)

        def plan_of(resources: list[Resource]) -> Plan:
            return reconcile(desired, resources, self.immutable_fields, options, revision=revision,
                             declared_sources=declared_sources)

        plan = plan_of(live)
        gated = [c.live for c in plan.changes
                 if c.action in (Action.DELETE, Action.REPLACE) and c.live is not None and c.kind in DATA_KINDS]
        losses: dict[str, str] = {}
        for kind in {r.kind for r in gated}:
            try:
                losses.update(losses_with(self.providers[kind], [r for r in gated if r.kind == kind]))
            except ProviderError as exc:  # enrichment only: the gate stands without the count
                log.warning("cannot tell what deleting or replacing %s resources would lose: %s", kind, exc)
        if not losses:
            return plan
        live = [replace(r, status={**r.status, WOULD_LOSE: losses[r.address]}) if r.address in losses else r
                for r in live]
        return plan_of(live)

    def read_unobserved(self, desired: Iterable[Resource], live: Iterable[Resource]) -> list[Resource]:
        """Declared resources that observe did not find, and references to other projects'
        resources, read by name from their providers (whoever manages them)."""
        seen = {r.address for r in live}
        wanted: dict[Kind, list[str]] = {}
        for resource in desired:
            if (resource.external or resource.address not in seen) and resource.kind in self.providers:
                wanted.setdefault(resource.kind, []).append(resource.name)
        found: list[Resource] = []
        for kind, names in wanted.items():
            found += [r for r in read_with(self.providers[kind], kind, names) if r.address not in seen]
        return found

    def apply(self, plan: Plan, on_outcome: Listener | None = None, max_workers: int = 8) -> ApplyResult:
        return apply_plan(plan, self.providers, max_workers=max_workers, on_outcome=on_outcome)


def missing_secrets(state: DesiredState, store: Any) -> list[Problem]:
    """One problem per reference to a secret that ``store`` does not hold (by id; never a value)."""
    refs = [ref for source in state.sources for ref in source.secrets]
    # Services the platform itself runs (the data API) mount secrets that platform.yaml names.
    mounted = {secret: service.address for service in compile_resources(state)
               if service.kind == Kind.CLOUD_RUN_SERVICE for secret in (service.spec.get("secrets") or {}).values()}
    named = {ref.secret_id for ref in refs}
    if not refs and not mounted:
        return []
    missing = store.missing(sorted(named | set(mounted)))
    where = getattr(store, "location", "Secret Manager")
    problems = [Problem(ref.file, ref.line, ref.column, ref.field,
                        f"secret {ref.secret_id!r} does not exist in {where}; create it before applying "
                        "(headwater reads only its metadata; the connector reads its value at run time)")
                for ref in refs if ref.secret_id in missing]
    problems += [Problem("platform.yaml", 1, 1, "", f"secret {secret!r} (mounted by {address}) does not exist in "
                                                    f"{where}; create it before applying")
                 for secret, address in sorted(mounted.items()) if secret in missing and secret not in named]
    return problems


def plan_options(state: DesiredState, *, prune: bool = False, allow_destroy: bool = False,
                 adopt: Iterable[str] = ()) -> PlanOptions:
    """Plan options from the platform's policy and the command line (the command line can only add).
    ``adopt``: addresses of existing resources that are not this platform's, to take over."""
    policy = state.platform.policy
    return PlanOptions(
        prune=prune or policy.prune,
        allow_destroy=allow_destroy,
        max_delete_fraction=policy.max_delete_fraction,
        environment=state.platform.environment,
        adopt=frozenset(adopt),
    )


@dataclass(frozen=True)
class Drift:
    address: str
    kind: Kind
    state: str  # "missing", "drifted" or "unmanaged" (exists, not this platform's: adopt it)
    fields: tuple[tuple[str, object, object], ...]  # (path, live, desired)


def drift_of(plan: Plan) -> list[Drift]:
    """Declared resources whose live state differs from the desired one (orphans are not drift)."""
    result = []
    for change in plan.changes:
        if change.desired is None or change.action == Action.NOOP:
            continue
        if change.action in (Action.CREATE, Action.READ):  # READ: a missing reference
            result.append(Drift(change.address, change.kind, "missing", ()))
        elif change.action == Action.IMPORT:
            fields = tuple((d.path, d.before, d.after) for d in change.diff)
            result.append(Drift(change.address, change.kind, "unmanaged", fields))
        else:
            fields = tuple((d.path, d.before, d.after) for d in change.diff)
            result.append(Drift(change.address, change.kind, "drifted", fields))
    return result
