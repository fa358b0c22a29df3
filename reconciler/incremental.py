"""Incremental convergence: plan a commit by re-reading only what it touches (issue 14).

A full plan observes every kind (one list call per kind, per dataset for tables). A commit that
changes one source of a thousand does not need that: live state was read by the last full
observe and by the checks after each apply, and nothing but this commit is about to change it.
So the live state of a plan can come from an **observed-state cache**, with only the addresses
the change touches read again by name. The matching of desired to live stays
`reconciler.plan.reconcile`, pure, over the *whole* desired state and the *whole* cached live
state: refusals (the max-delete guard counts every managed resource), blocked-by chains and
orphans are decided exactly as in a full plan. Only where the live state comes from differs.

API (what the daemon and ``bench/`` call)
-----------------------------------------

``ObservedCache(clock=time.time)``
    Live resources by address, each with the time it was observed (`Entry`), plus the kinds a full
    observe covered and when (``refreshed_at``). Thread-safe.

    * ``refresh(live, kinds, at)``: a full observe's result replaces everything;
    * ``record(found, addresses=(), kinds=(), at)``: a partial read: ``addresses`` read by name
      (found ones stored, the others dropped: they do not exist), ``kinds`` observed whole;
    * ``invalidate(addresses) -> int``: the live state of these addresses (``kind.name``,
      `reconciler.resources.address`) may have changed behind our back (the Cloud Asset Inventory
      feed calls it): the next incremental plan reads them again by name, whatever the change;
      entries stay readable until then. Unknown addresses are fine (a resource created outside
      headwater is found by reading its name). Returns how many addresses were marked;
    * ``clear()``: forget everything (the next plan is a full one);
    * ``age(now=None)``, ``entries()``, ``get(address)``, ``invalid()``, ``live()``, ``size()``;
    * ``index()``: the cached live resources as a `reconciler.resources.ResourceIndex`, derived
      from the last one at each read, so that the reconcile takes what a read changed from it;
    * ``reconcile_memo``: the decisions of the last plan made against the cache
      (`reconciler.plan.ReconcileMemo`), which `plan_change` and `recheck` pass to the reconcile:
      a resource whose desired object (compile's memo) and cached live object are the ones the
      last plan saw keeps its decision without being diffed again. The plan is the same either way.

``plan_change(engine, state, options=None, *, cache, previous=None, full=False, max_age=None,
max_read_fraction=0.5, small_scope=64, desired=None, previous_desired=None) -> ScopedPlan``
    The plan of ``state`` (a `reconciler.load.DesiredState`) exactly as `Engine.plan` makes it
    (same checks first: secrets, CDC schemas; same reference check after), with its live state
    from ``cache`` plus what the change touches read again. ``previous``: the last applied
    revision (its `DesiredState`, or its compiled resources); ``desired``/``previous_desired``:
    already-compiled resources of either, or their `ResourceIndex`, to skip compiling again
    (`ScopedPlan.index` is what to pass next time). Falls back to a full observe, which refreshes the cache, when
    (`ScopedPlan.reason` says which):

    * ``full`` is asked (the drift loop), there is no ``previous``, or the cache was never
      refreshed, is older than ``max_age`` seconds, or does not cover the engine's kinds;
    * the change is platform-wide: ``platform.yaml`` changed, or an added, removed or modified
      resource belongs to no single source (`platform_wide`: no source label,
      `reconciler.resources.SOURCE_KEY` - buckets, datasets, notification channels - unless all
      it depends on is one source's, as an IAM binding on a source's topic);
    * the addresses to re-read exceed ``max_read_fraction`` of all addresses (the larger of the
      declared, the previously declared and the cached; and ``small_scope``): a list per kind is
      then cheaper than a get per name.

``recheck(engine, state, applied, *, cache, desired=None, options=None) -> ScopedPlan``
    The check after an apply: re-reads only the addresses ``applied`` (a `Plan` - its actionable
    changes - or addresses), plus invalidated ones, records them in the cache, and plans ``state``
    against the cache. What was not applied is not read (drift elsewhere waits for the drift pass).

``changed_addresses(previous, desired) -> Changed`` and ``scope(changed, previous, desired)``
    The pure halves: which compiled resources differ (added, removed, modified: `Resource`
    equality, never YAML), and which addresses a change touches.

`ScopedPlan` carries the plan, the compiled desired state by address (``index``; ``desired``:
its resources), ``mode`` (``"full"`` or
``"incremental"``), ``reason`` (why full), ``changed``, ``read`` (addresses read by name),
``observed`` (kinds observed whole) and ``calls`` (provider calls made: observe per kind or part,
read per kind).

Work in proportion to the change
--------------------------------
No step of an incremental plan looks at every resource (issue 14, "flat from 10 to 10,000
sources"): compile's memo derives the desired `ResourceIndex` from the previous revision's, and
the cache derives its live one at each read, so the changed addresses, the scope (through
`ResourceIndex.dependents`) and the reconcile (`reconciler.plan.ReconcileMemo`) start from what
changed. Given plain resources instead, each compares them all, with the same result.

What a change touches (`scope`)
-------------------------------
The addresses added, removed or modified; the resources they depend on, transitively (the
blocked-by chains: a change is blocked when anything it depends on is), and those that depend on
them directly (on both the previous and the new desired state's ``depends_on``); and every
invalidated address. They are read by name (`providers.base.Reader`, `Engine.read`, kinds
concurrently); a kind whose provider cannot read is observed whole instead. A removed source's
resources are in the previous desired state, so they are read by name too and its deletes (with
``prune``) are planned as in a full plan.

What it does not see, by design: a resource changed outside headwater (and outside the commit)
since the cache was filled, unless the asset feed invalidated it. The next full observe - the
daemon's drift pass, on ``--drift-interval`` - finds it and refreshes the cache. Correctness
rests on the cache being refreshed by every full observe and updated by every read and after
every apply (`recheck`); ``tests/test_incremental_equivalence.py`` proves that an incremental
plan equals the full plan for every kind of change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.compile import compiled_index
from reconciler.load import DesiredState
from reconciler.plan import Plan, PlanOptions, ReconcileMemo
from reconciler.resources import SOURCE_KEY, Kind, Resource, ResourceIndex

FULL = "full"
INCREMENTAL = "incremental"
# Above this share of all addresses (and more than SMALL_SCOPE of them), reading by name costs
# more than listing every kind: a full observe instead.
MAX_READ_FRACTION = 0.5
SMALL_SCOPE = 64


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class Entry:
    resource: Resource
    observed_at: float  # the cache's clock (default time.time) when the read that found it started


class ObservedCache:
    """Observed live state by address (module docstring, "API"). Thread-safe: the asset feed
    invalidates from its own thread while the daemon's worker plans."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        # The same resources as an index, derived from the last at each read: `reconcile`'s memo
        # takes what a read changed from it (`ResourceIndex.changed_since`) instead of comparing all.
        self._live = ResourceIndex()
        self._kinds: frozenset[Kind] = frozenset()
        self._invalid: dict[str, float] = {}  # address -> when it was invalidated
        self.refreshed_at: float | None = None  # start of the last full observe
        # The decisions of the last plan made against this cache, reused where a resource's
        # desired and cached live objects are unchanged (`reconciler.plan.ReconcileMemo`).
        self.reconcile_memo = ReconcileMemo()

    def refresh(self, live: Iterable[Resource], kinds: Collection[Kind], at: float | None = None) -> None:
        """A full observe of ``kinds`` (started at ``at``) replaces everything. Invalidations that
        came after ``at`` survive it (the observe may have missed them)."""
        at = self.clock() if at is None else at
        live = list(live)
        with self._lock:
            self._entries = {r.address: Entry(r, at) for r in live}
            self._live = ResourceIndex(live)
            self._kinds = frozenset(kinds)
            self.refreshed_at = at
            self._invalid = {a: t for a, t in self._invalid.items() if t > at}

    def record(self, found: Iterable[Resource], addresses: Collection[str] = (), kinds: Collection[Kind] = (),
               at: float | None = None) -> None:
        """A partial read started at ``at``: ``addresses`` read by name (those not in ``found``
        do not exist), ``kinds`` observed whole (their entries are replaced by ``found``'s)."""
        at = self.clock() if at is None else at
        found = list(found)
        with self._lock:
            kinds = frozenset(kinds)
            gone = [a for a, e in self._entries.items() if e.resource.kind in kinds] if kinds else []
            for address in [*gone, *addresses]:
                self._entries.pop(address, None)
            for resource in found:
                self._entries[resource.address] = Entry(resource, at)
            self._live = self._live.derive(put=found, drop=[*gone, *addresses])
            for address in [*addresses, *(a for a in self._invalid if _kind_of(a) in kinds)]:
                if self._invalid.get(address, at + 1) <= at:
                    del self._invalid[address]

    def invalidate(self, addresses: Iterable[str]) -> int:
        """Mark ``addresses`` (``kind.name``) to be read again by the next incremental plan (the
        Cloud Asset Inventory feed's hook; module docstring). Returns how many were marked."""
        now = self.clock()
        with self._lock:
            marked = 0
            for address in addresses:
                self._invalid[address] = now
                marked += 1
            return marked

    def clear(self) -> None:
        """Forget everything: the next plan observes in full."""
        with self._lock:
            self._entries, self._kinds, self._invalid, self.refreshed_at = {}, frozenset(), {}, None
            self._live = ResourceIndex()
            self.reconcile_memo = ReconcileMemo()

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the last full observe started, or None before the first."""
        refreshed = self.refreshed_at
        return None if refreshed is None else (self.clock() if now is None else now) - refreshed

    @property
    def kinds(self) -> frozenset[Kind]:
        return self._kinds

    def invalid(self) -> set[str]:
        with self._lock:
            return set(self._invalid)

    def get(self, address: str) -> Entry | None:
        with self._lock:
            return self._entries.get(address)

    def size(self) -> int:
        """How many addresses are cached."""
        return len(self._entries)

    def entries(self) -> dict[str, Entry]:
        with self._lock:
            return dict(self._entries)

    def live(self) -> list[Resource]:
        """The cached live resources, by address."""
        with self._lock:
            return sorted(self._live.values(), key=_address)

    def index(self) -> ResourceIndex:
        """The cached live resources by address (`ResourceIndex`), derived from the last index at
        each read: `reconcile`'s memo takes what changed from it."""
        with self._lock:
            return self._live


# --------------------------------------------------------------------------- what changed (pure)


@dataclass(frozen=True)
class Changed:
    """Addresses whose compiled resource was added, removed or modified between two revisions."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    modified: frozenset[str] = frozenset()

    @property
    def all(self) -> frozenset[str]:
        return self.added | self.removed | self.modified

    def __len__(self) -> int:
        return len(self.all)


def _by_address(resources: Iterable[Resource] | Mapping[str, Resource]) -> Mapping[str, Resource]:
    return resources if isinstance(resources, Mapping) else {r.address: r for r in resources}


def changed_addresses(previous: Iterable[Resource] | Mapping[str, Resource],
                      desired: Iterable[Resource] | Mapping[str, Resource]) -> Changed:
    """Compare two compiled desired states resource by resource (`Resource` equality: spec,
    labels, depends_on, options...). Either side may be given by address already; when
    ``desired`` is a `ResourceIndex` derived from ``previous`` (compile's memo,
    `reconciler.compile.compiled_index`), only the addresses it names as changed are compared."""
    before, after = _by_address(previous), _by_address(desired)
    since = after.changed_since(before) if isinstance(after, ResourceIndex) and isinstance(before, ResourceIndex) \
        else None
    if since is not None:  # (an address added, then removed again along the way, is in neither)
        return Changed(added=frozenset(a for a in since if a in after and a not in before),
                       removed=frozenset(a for a in since if a in before and a not in after),
                       modified=frozenset(a for a in since if a in before and a in after and before[a] != after[a]))
    # An unchanged source's resources are the previous revision's very objects (compile's memo):
    # ``is`` settles most of them without comparing specs.
    return Changed(added=frozenset(after.keys() - before.keys()), removed=frozenset(before.keys() - after.keys()),
                   modified=frozenset(a for a, r in after.items() if a in before and before[a] is not r
                                      and before[a] != r))


def scope(changed: Changed, previous: Iterable[Resource] | Mapping[str, Resource],
          desired: Iterable[Resource] | Mapping[str, Resource]) -> set[str]:
    """The addresses a change touches (module docstring, "What a change touches"): the changed
    ones, what they depend on transitively, and what depends on them directly, by either
    revision's ``depends_on``."""
    revisions = (_by_address(previous), _by_address(desired))
    touched = set(changed.all)
    stack = list(touched)
    while stack:  # blocked-by chains: everything the changed resources depend on
        address = stack.pop()
        for revision in revisions:
            resource = revision.get(address)
            for dep in resource.depends_on if resource is not None else ():
                if dep not in touched:
                    touched.add(dep)
                    stack.append(dep)
    changed_all = changed.all
    for revision in revisions:  # and what depends on a changed resource directly
        if isinstance(revision, ResourceIndex):
            for address in changed_all:
                touched.update(revision.dependents(address))
        else:
            touched.update(a for a, r in revision.items() if r.depends_on and not changed_all.isdisjoint(r.depends_on))
    return touched


def platform_wide(changed: Changed, previous: Iterable[Resource] | Mapping[str, Resource],
                  desired: Iterable[Resource] | Mapping[str, Resource]) -> str | None:
    """Why a change is platform-wide, or None: an added, removed or modified resource belongs to
    no single source. A resource belongs to the source of its label; one without a label (an IAM
    binding on a source's topic) belongs to a source when everything it depends on does."""
    before, after = _by_address(previous), _by_address(desired)
    owners: dict[str, frozenset[str]] = {}

    def owner(address: str, path: frozenset[str] = frozenset()) -> frozenset[str]:
        if address not in owners:
            resource = after.get(address) or before.get(address)
            if resource is None or address in path:
                return frozenset()
            if resource.labels.get(SOURCE_KEY):
                owners[address] = frozenset({resource.labels[SOURCE_KEY]})
            else:
                found = [owner(dep, path | {address}) for dep in resource.depends_on]
                owners[address] = frozenset().union(*found) if found and all(found) else frozenset()
        return owners[address]

    shared = sorted(a for a in changed.all if len(owner(a)) != 1)
    if shared:
        more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
        return f"resources of no single source changed ({', '.join(shared[:3])}{more})"
    return None


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class ScopedPlan:
    plan: Plan
    index: ResourceIndex  # compiled desired state by address (pass as previous_desired next time)
    mode: str  # FULL or INCREMENTAL
    reason: str = ""  # why FULL
    changed: Changed = field(default_factory=Changed)
    read: frozenset[str] = frozenset()  # addresses read by name
    observed: tuple[Kind, ...] = ()  # kinds observed whole
    calls: Mapping[str, int] = field(default_factory=dict)  # {"observe": n, "read": n} provider calls

    @property
    def desired(self) -> tuple[Resource, ...]:
        """The compiled desired resources, by address."""
        return tuple(sorted(self.index.values(), key=_address))


def plan_change(engine: Any, state: DesiredState, options: PlanOptions | None = None, *,
                cache: ObservedCache, previous: DesiredState | Sequence[Resource] | None = None,
                full: bool = False, max_age: float | None = None, max_read_fraction: float = MAX_READ_FRACTION,
                small_scope: int = SMALL_SCOPE, desired: Sequence[Resource] | ResourceIndex | None = None,
                previous_desired: Sequence[Resource] | ResourceIndex | None = None) -> ScopedPlan:
    """The plan of ``state``, incremental when it can be (module docstring, "API")."""
    from reconciler.engine import plan_options

    engine.check_state(state)
    options = options or plan_options(state)
    after = _desired_index(state, desired)
    before: ResourceIndex | None = None
    if previous_desired is not None:
        before = _as_index(previous_desired)
    elif isinstance(previous, DesiredState):
        before = compiled_index(previous)
    elif previous is not None:
        before = _as_index(previous)
    changed = changed_addresses(before, after) if before is not None else Changed()
    reason = "asked" if full else _full_reason(engine, state, previous, before, after, changed, cache, max_age)
    touched: set[str] = set()
    if not reason:
        touched = scope(changed, before or {}, after) | cache.invalid()
        total = max(len(after), len(before or ()), cache.size())  # all addresses, near enough
        if len(touched) > small_scope and len(touched) > max_read_fraction * total:
            reason = f"{len(touched)} of {total} addresses to re-read (more than {max_read_fraction:g})"
    if reason:
        live, calls = _full_observe(engine, after, cache)
        # The next revisions' indexes derive from this one: built here, on the full path, their
        # scopes find the dependents carried instead of walking every resource at the next commit.
        after.prepare_dependents()
        scoped = dict(mode=FULL, reason=reason, observed=tuple(engine.providers), calls=calls)
    else:
        live, read, observed, calls = _reread(engine, cache, touched)
        scoped = dict(mode=INCREMENTAL, read=frozenset(read), observed=observed, calls=calls)
    plan = engine.plan_live(after, live, options, revision=state.revision, declared_sources=len(state.sources),
                            memo=cache.reconcile_memo)
    engine.check_references_of(state, after.values())
    engine.check_plan(state, plan)  # issue 13: access.exclusive never removes headwater's own grants
    return ScopedPlan(plan=plan, index=after, changed=changed, **scoped)


def recheck(engine: Any, state: DesiredState, applied: Plan | Iterable[str], *, cache: ObservedCache,
            desired: Sequence[Resource] | ResourceIndex | None = None, options: PlanOptions | None = None
            ) -> ScopedPlan:
    """After an apply: read only what was applied (and what was invalidated), then plan ``state``
    against the cache (module docstring, "API"). The pre-plan checks are not repeated: they
    passed before the apply."""
    from reconciler.engine import plan_options

    options = options or plan_options(state)
    index = _desired_index(state, desired)
    addresses = {c.address for c in applied.actionable} if isinstance(applied, Plan) else set(applied)
    live, read, observed, calls = _reread(engine, cache, addresses | cache.invalid())
    plan = engine.plan_live(index, live, options, revision=state.revision, declared_sources=len(state.sources),
                            memo=cache.reconcile_memo)
    return ScopedPlan(plan=plan, index=index, mode=INCREMENTAL, read=frozenset(read), observed=observed,
                      calls=calls)


def _desired_index(state: DesiredState, desired: Sequence[Resource] | ResourceIndex | None) -> ResourceIndex:
    """The compiled desired state by address: ``desired`` if given, else compiled
    (`compiled_index`: derived from the previous revision's when compile's memo made it)."""
    return compiled_index(state) if desired is None else _as_index(desired)


def _as_index(resources: Sequence[Resource] | ResourceIndex) -> ResourceIndex:
    return resources if isinstance(resources, ResourceIndex) else ResourceIndex(resources)


def _full_reason(engine: Any, state: DesiredState, previous: Any, before: Mapping[str, Resource] | None,
                 desired: Mapping[str, Resource], changed: Changed, cache: ObservedCache,
                 max_age: float | None) -> str:
    if before is None:
        return "no previous revision"
    age = cache.age()
    if age is None:
        return "no observed state cached yet"
    if max_age is not None and age > max_age:
        return f"the cache is {age:.0f} s old (more than {max_age:g} s)"
    missing = set(engine.providers) - cache.kinds
    if missing:
        return f"the cache does not cover {', '.join(sorted(missing))}"
    if isinstance(previous, DesiredState) and previous.platform != state.platform:
        return "platform.yaml changed"
    return platform_wide(changed, before, desired) or ""


def _full_observe(engine: Any, index: ResourceIndex, cache: ObservedCache) -> tuple[ResourceIndex, dict]:
    """`Engine.observe_live`, step by step to count its calls; refreshes the cache."""
    started = cache.clock()
    desired = sorted(index.values(), key=_address)  # (the index's order is its hashes': reads go out in address order)
    kinds = {r.kind for r in desired if r.kind in engine.providers} | set(engine.providers)
    live = engine.observe(kinds)
    seen = {r.address for r in live}
    readers = _readers(engine)
    reads = {r.kind for r in desired if (r.external or r.address not in seen) and r.kind in readers}
    live += engine.read_unobserved(desired, live)
    cache.refresh(live, engine.providers, at=started)
    return cache.index(), {"observe": len(kinds), "read": len(reads)}


def _reread(engine: Any, cache: ObservedCache,
            addresses: Collection[str]) -> tuple[ResourceIndex, set[str], tuple[Kind, ...], dict]:
    """Read ``addresses`` by name (a kind without a reader: observed whole), record them in the
    cache, and return the cache's live state with what was read, kinds observed and calls."""
    by_kind: dict[Kind, list[str]] = {}
    for address in sorted(addresses):
        kind = _kind_of(address)
        if kind is not None and kind in engine.providers:
            by_kind.setdefault(kind, []).append(address.split(".", 1)[1])
    readers = _readers(engine)
    names = {k: v for k, v in by_kind.items() if k in readers}
    whole = tuple(k for k in by_kind if k not in readers)
    started = cache.clock()
    found = engine.read(names) if names else []
    observed = engine.observe(whole) if whole else []
    read = {f"{k}.{n}" for k, ns in names.items() for n in ns}
    cache.record([*found, *observed], addresses=read, kinds=whole, at=started)
    return cache.index(), read, whole, {"observe": len(whole), "read": len(names)}


def _address(resource: Resource) -> str:
    return resource.address


def _readers(engine: Any) -> set[Kind]:
    return {k for k, p in engine.providers.items() if getattr(p, "read", None) is not None}


def _kind_of(address: str) -> Kind | None:
    try:
        return Kind(address.split(".", 1)[0])
    except ValueError:
        return None
