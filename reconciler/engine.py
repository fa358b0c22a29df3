"""The reconcile loop's steps, wired together: load → compile → observe → plan → apply.

`Engine` holds the providers (one per GCP service) and knows which provider owns which kind.
It is what the CLI and the daemon call; each step is also usable on its own.

Observing costs one list call per kind (tables: per dataset), whatever the number of sources.
The kinds are observed concurrently, in a bounded thread pool (`OBSERVE_WORKERS`), and so are the
parts of a kind that a provider splits its observe into (`observe_parts`: BigQuery's tables, one
part per dataset); every request still takes its turn in its API's rate budget
(`providers.errors`), so concurrency never exceeds what a service may be sent. The result is the
same list, in the same order, as observing one kind after another; when several kinds fail, the
error raised is the one of the first kind in that order, as before. Then, only for what that did not find: declared resources that observe missed are read by name
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

A commit that changes a few sources need not observe everything: with an observed-state cache
and the previous revision, `Engine.plan(state, cache=..., previous=...)` re-reads only what the
change touches (`reconciler.incremental`, which says when it falls back to a full observe).

Optional provider ability used here (``getattr``, as `providers.base` does for the others):

``observe_parts(kind) -> list[Callable[[], list[Resource]]]``
    ``observe(kind)`` split into independent calls the engine may run concurrently (it lists
    what to split on itself, e.g. the managed datasets); concatenated in order, their results
    are ``observe(kind)``'s.
"""

from __future__ import annotations

import contextvars
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from providers.base import Provider, losses_with, read_with
from providers.errors import ProviderError
from reconciler.apply import ApplyResult, Listener, apply_plan
from reconciler.compile import compile_resources
from reconciler.load import DesiredState, InvalidDesiredState, Problem
from reconciler.plan import Action, Plan, PlanOptions, ReconcileMemo, reconcile
from reconciler.resources import DATA_KINDS, WOULD_LOSE, Kind, Resource, ResourceIndex

log = logging.getLogger(__name__)

# Threads observing kinds (and their parts) at once; each request also waits for its API's budget.
# A plan lists ~27 kinds, one request each on GCP (100-200 ms, mostly waiting), on ~15 different
# APIs, plus BigQuery's per-dataset parts: 16 threads take them in two waves where 8 took four
# (issue 14: ~0.2 s of a 1,000-source plan at 100 ms a request). Requests to one API stay
# bounded by that API's budget (`providers.errors`), not by this.
OBSERVE_WORKERS = 16


class Engine:
    def __init__(self, providers: Iterable[Provider], secrets: Any = None, *, check_references: bool = False,
                 observe_workers: int = OBSERVE_WORKERS) -> None:
        """``secrets``: a `providers.base.SecretStore` to check secret references against, or None.
        ``check_references``: refuse a plan whose landing bucket or joined table is neither declared
        nor existing (`reconciler.references`); the CLI and the daemon turn it on.
        ``observe_workers``: threads observing (and reading) at once; 1 observes one kind after another."""
        self.secrets = secrets
        self.check_references = check_references
        self.observe_workers = max(1, observe_workers)
        self.providers: dict[Kind, Provider] = {}
        for provider in providers:
            for kind in provider.kinds:
                self.providers[kind] = provider

    @property
    def immutable_fields(self) -> Mapping[Kind, frozenset[str]]:
        return {kind: p.immutable_fields.get(kind, frozenset()) for kind, p in self.providers.items()}

    def observe(self, kinds: Iterable[Kind] | None = None) -> list[Resource]:
        """Every managed live resource of the given kinds (default: all kinds), observed
        concurrently (module docstring): the same list as observing them one after another."""
        order = list(dict.fromkeys(kinds or self.providers))
        calls: list[Callable[[], Any]] = []
        for kind in order:
            provider = self.providers[kind]
            parts = getattr(provider, "observe_parts", None)
            calls.append(_Split(parts, kind) if parts is not None else _bind(provider.observe, kind))
        return [r for found in gather(calls, self.observe_workers) for r in found]

    def plan(self, state: DesiredState, options: PlanOptions | None = None, *, cache: Any = None,
             previous: Any = None) -> Plan:
        """The plan of ``state``. Raises `InvalidDesiredState` when a named secret, or (with
        ``check_references``) a referenced bucket or table, does not exist.

        With ``cache`` (a `reconciler.incremental.ObservedCache`) and ``previous`` (the last applied
        revision: its `DesiredState` or its compiled resources), only what the change touches is
        re-read and the rest comes from the cache (`reconciler.incremental.plan_change`, which falls
        back to a full observe, refreshing the cache, when it must). Same plan either way."""
        if cache is not None:
            from reconciler.incremental import plan_change

            return plan_change(self, state, options, cache=cache, previous=previous).plan
        self.check_state(state)
        options = options or plan_options(state)
        desired = compile_resources(state)
        plan = self.plan_resources(desired, options, revision=state.revision, declared_sources=len(state.sources))
        self.check_references_of(state, desired)
        self.check_plan(state, plan)
        return plan

    def check_plan(self, state: DesiredState, plan: Plan) -> None:
        """What a computed plan must not do (issue 13): an ``access.exclusive`` binding change that
        removes headwater's own identity or a service agent (reconciler/governance.py) is a problem
        at platform.yaml's ``access.exclusive``. Raises `InvalidDesiredState`."""
        from reconciler.governance import exclusive_problems

        problems = exclusive_problems(state, plan)
        if problems:
            raise InvalidDesiredState(problems)

    def check_state(self, state: DesiredState) -> None:
        """What a plan checks before observing: the secrets the sources name exist, and each
        database_cdc table's schema file matches the live table. Raises `InvalidDesiredState`."""
        if self.secrets is not None:
            problems = missing_secrets(state, self.secrets)
            if problems:
                raise InvalidDesiredState(problems)
        # database_cdc (issue 10): each table's schema file against the live table (reconciler/cdc.py).
        from reconciler.cdc import live_schema_problems

        problems = live_schema_problems(state, self.providers.get(Kind.DATASTREAM_STREAM))
        if problems:
            raise InvalidDesiredState(problems)

    def check_references_of(self, state: DesiredState, desired: Iterable[Resource]) -> None:
        """With ``check_references``: a landing bucket or joined table neither declared nor existing
        (reconciler/references.py) is a problem. Checked once live state has been read (so an
        unreachable service is reported as such). Raises `InvalidDesiredState`."""
        if self.check_references:
            from reconciler.references import missing_references

            problems = missing_references(state, desired, self.providers)
            if problems:
                raise InvalidDesiredState(problems)

    def plan_resources(self, desired: list[Resource], options: PlanOptions, *, revision: str | None = None,
                       declared_sources: int | None = None) -> Plan:
        """The plan of compiled resources: observe, read what observe did not find, reconcile, and
        quote what gated deletes and replacements would destroy (module docstring)."""
        return self.plan_live(desired, self.observe_live(desired), options, revision=revision,
                              declared_sources=declared_sources)

    def observe_live(self, desired: Sequence[Resource]) -> list[Resource]:
        """The live state a plan of ``desired`` is made against: every kind observed, then what
        observe did not find read by name (`read_unobserved`)."""
        kinds = {r.kind for r in desired if r.kind in self.providers} | set(self.providers)
        live = self.observe(kinds)
        return live + self.read_unobserved(desired, live)

    def plan_live(self, desired: Sequence[Resource] | ResourceIndex, live: Sequence[Resource] | ResourceIndex,
                  options: PlanOptions, *, revision: str | None = None, declared_sources: int | None = None,
                  memo: ReconcileMemo | None = None) -> Plan:
        """Reconcile ``desired`` with ``live`` (`reconciler.plan.reconcile`, pure), then ask the
        providers what the gated deletes and replacements would destroy and quote it. ``memo``:
        the last reconcile's decisions, to reuse where their inputs are unchanged (`ReconcileMemo`;
        give `ResourceIndex`es derived from the last call's and it needs no pass over them)."""
        live = live if isinstance(live, ResourceIndex) else ResourceIndex(live)

        def plan_of(resources: ResourceIndex) -> Plan:
            return reconcile(desired, resources, self.immutable_fields, options, revision=revision,
                             declared_sources=declared_sources, memo=memo)

        plan = plan_of(live)
        gated = [c.live for c in plan.non_noop
                 if c.action in (Action.DELETE, Action.REPLACE) and c.live is not None and c.kind in DATA_KINDS]
        losses: dict[str, str] = {}
        for kind in {r.kind for r in gated}:
            try:
                losses.update(losses_with(self.providers[kind], [r for r in gated if r.kind == kind]))
            except ProviderError as exc:  # enrichment only: the gate stands without the count
                log.warning("cannot tell what deleting or replacing %s resources would lose: %s", kind, exc)
        if not losses:
            return plan
        return plan_of(live.derive(put=[replace(r, status={**r.status, WOULD_LOSE: losses[r.address]})
                                        for r in gated if r.address in losses]))

    def read_unobserved(self, desired: Iterable[Resource], live: Iterable[Resource]) -> list[Resource]:
        """Declared resources that observe did not find, and references to other projects'
        resources, read by name from their providers (whoever manages them), kinds concurrently."""
        seen = {r.address for r in live}
        wanted: dict[Kind, list[str]] = {}
        for resource in desired:
            if (resource.external or resource.address not in seen) and resource.kind in self.providers:
                wanted.setdefault(resource.kind, []).append(resource.name)
        found = self.read(wanted)
        return [r for r in found if r.address not in seen]

    def read(self, names: Mapping[Kind, Iterable[str]]) -> list[Resource]:
        """The named resources that exist, whoever manages them, read by kind concurrently
        (`providers.base.read_with`: nothing for a kind whose provider cannot read). In the order
        of ``names``; the first failing kind's error is raised."""
        calls = [_bind(read_with, self.providers[kind], kind, list(wanted)) for kind, wanted in names.items()
                 if kind in self.providers]
        return [r for found in gather(calls, self.observe_workers) for r in found]

    def apply(self, plan: Plan, on_outcome: Listener | None = None, max_workers: int = 8) -> ApplyResult:
        return apply_plan(plan, self.providers, max_workers=max_workers, on_outcome=on_outcome)


class _Split:
    """The parts of one kind's observe (`observe_parts`), to be run as further calls."""

    def __init__(self, parts: Callable[[Kind], Sequence[Callable[[], list[Resource]]]], kind: Kind) -> None:
        self.parts, self.kind = parts, kind

    def __call__(self) -> Sequence[Callable[[], list[Resource]]]:
        return list(self.parts(self.kind))


def _bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


def gather(calls: Sequence[Callable[[], Any]], workers: int = OBSERVE_WORKERS) -> list[Any]:
    """Run ``calls`` in a pool of ``workers`` threads; their results in the order of ``calls``.

    A call that is a `_Split` returns further calls, run in the same pool (the caller's thread
    submits them; no worker ever waits for another), whose results are concatenated in order
    in its place. Each call runs in a copy of the caller's context, so a `providers.errors.deadline`
    set around the call applies in the workers too. Every call runs to its end; then, if any
    failed, the error of the first in order (a kind's own call before its parts) is raised, as
    running them one after another would have raised it.

    Which call a free worker takes next (the results do not depend on it): the `_Split` calls
    first, then the others in order, and a split's parts ahead of every call not yet started.
    A split starts a chain of requests (BigQuery: list the datasets, then list each one's tables
    and query its schemas), so it goes first; queued behind two dozen one-request kinds, its
    parts waited for the pool to drain (issue 14: ~0.6 s of a 1,000-source observe at 100 ms a
    request).
    """
    if not calls:
        return []
    slots: list[list[Any]] = [[] for _ in calls]
    split = {i: isinstance(fn, _Split) for i, fn in enumerate(calls)}
    errors: dict[tuple[int, int], BaseException] = {}
    workers = max(1, workers)
    # Not started yet, in the order they are to start; at most `workers` are in the pool at once,
    # so that a split's parts can still go ahead of the calls waiting here.
    ready: deque[tuple[Callable[[], Any], tuple[int, int]]] = deque(
        sorted(((fn, (i, -1)) for i, fn in enumerate(calls)), key=lambda item: not split[item[1][0]]))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headwater-observe") as pool:
        pending: dict[Future[Any], tuple[int, int]] = {}

        def start() -> None:
            while ready and len(pending) < workers:
                fn, where = ready.popleft()
                pending[pool.submit(contextvars.copy_context().run, fn)] = where

        start()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i, j = pending.pop(future)
                try:
                    value = future.result()
                except BaseException as exc:  # noqa: BLE001 - raised below, in order
                    errors[(i, j)] = exc
                    continue
                if split[i] and j < 0:
                    slots[i] = [None] * len(value)
                    ready.extendleft(reversed([(part, (i, k)) for k, part in enumerate(value)]))
                elif split[i]:
                    slots[i][j] = value
                else:
                    slots[i] = [value]
            start()
    if errors:
        raise errors[min(errors)]
    return [[r for part in parts for r in part] if split[i] else parts[0] for i, parts in enumerate(slots)]


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
    for change in plan.non_noop:
        if change.desired is None:
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
