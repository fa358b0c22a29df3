"""Issue 14, attacked: the plan made from deltas (`ResourceIndex` derivations, `ReconcileMemo`'s
tables updated in place, `Plan`'s views handed over by `reconcile`, the daemon's status counted
from the non-no-op changes) must be exactly the plan - and the status - a from-scratch pass over
every resource gives.

The references below are the pre-delta code (a1c656c^): `reconcile` composed from the same
per-resource decisions but ordered, blocked and refused over every change, and the daemon's
status counted by a scan of every change.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import threading
import types
from typing import Any

import pytest

from reconciler import plan as P
from reconciler.daemon.service import Daemon, heal_plan, resource_state, without_sources
from reconciler.plan import Action, Plan, PlanOptions, ReconcileMemo, reconcile
from reconciler.resources import (
    LEAVING,
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    PLATFORM_KEY,
    SOURCE_KEY,
    WOULD_LOSE,
    Kind,
    Resource,
    ResourceIndex,
)

ENV = "test"
OURS = {MANAGED_BY_KEY: MANAGED_BY_VALUE, PLATFORM_KEY: ENV}
IMMUTABLE = {Kind.PUBSUB_SUBSCRIPTION: frozenset({"topic"}), Kind.BIGQUERY_TABLE: frozenset({"time_partitioning"})}


# --------------------------------------------------------------------------- the references


def reference_reconcile(desired, live, immutable_fields, options=None, revision=None,
                        declared_sources=None) -> Plan:
    """`reconcile` as it was before the deltas: every decision made, ordered, blocked and refused
    over every change."""
    options = options or PlanOptions()
    desired_by_address = {r.address: r for r in desired}
    ours: dict[str, Resource] = {}
    others: dict[str, Resource] = {}
    for resource in live:
        labels = resource.labels
        if labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE and (options.environment is None
                                                               or labels.get(PLATFORM_KEY) == options.environment):
            ours[resource.address] = resource
        elif resource.address in desired_by_address:
            others[resource.address] = resource
    decisions = {a: P._decide(r, ours, others, immutable_fields, options) for a, r in desired_by_address.items()}
    forward = sorted(decisions.values(), key=P._forward_key)
    orphans = [P._orphan(ours[a], options, desired_by_address) for a in ours.keys() - desired_by_address.keys()
               if not ours[a].status.get(LEAVING)]
    kept = [c for c in orphans if c.action != Action.DELETE]
    deletes = sorted((c for c in orphans if c.action == Action.DELETE), key=lambda c: (-P._RANK[c.kind], c.address))
    if kept:
        forward = sorted([*forward, *kept], key=P._forward_key)
    ordered = P._block_dependents(forward + deletes)
    refused = P._refusal(ordered, ours, declared_sources, options)
    return Plan(tuple(ordered), revision=revision, refused=refused,
                options={"prune": options.prune, "allow_destroy": options.allow_destroy,
                         "adopt": sorted(options.adopt)})


def scanned_views(plan: Plan) -> tuple:
    """What a scan of every change says `Plan`'s views are (the pre-delta definitions)."""
    changes = plan.changes
    non_noop = tuple(c for c in changes if c.action != Action.NOOP)
    actionable = [] if plan.refused else [c for c in changes if c.action not in (Action.NOOP, Action.READ)
                                          and not c.blocked]
    counts: dict[Kind, int] = {}
    for c in changes:
        if c.desired is not None:
            counts[c.kind] = counts.get(c.kind, 0) + 1
    summary = {str(a): 0 for a in Action}
    for c in changes:
        summary[str(c.action)] += 1
    summary["blocked"] = sum(1 for c in changes if c.blocked)
    summary["kept"] = sum(1 for c in changes if c.orphan and c.action == Action.NOOP)
    return (non_noop, actionable, [c for c in changes if c.blocked],
            [c for c in changes if c.orphan and c.action == Action.NOOP], counts, summary, bool(non_noop))


def views(plan: Plan) -> tuple:
    return (plan.non_noop, plan.actionable, plan.blocked, plan.kept, dict(plan.declared_counts), plan.summary(),
            plan.has_changes)


def reference_status(plan: Plan) -> dict[str, Any]:
    """The daemon's status of an observation as the pre-delta `_observe_result` made it: a scan
    of every change."""
    counts: dict[tuple[str, str], int] = {}
    drift, per_kind = [], {}
    for change in plan.changes:
        if change.desired is None:
            continue
        state = resource_state(change)
        counts[(str(change.kind), state)] = counts.get((str(change.kind), state), 0) + 1
        if state in ("drifted", "missing"):
            per_kind[str(change.kind)] = per_kind.get(str(change.kind), 0) + 1
            drift.append((change.address, state, str(change.action)))
    return {"resources": {f"{k}/{s}": n for (k, s), n in sorted(counts.items())}, "drift": drift,
            "per_kind": per_kind, "counts": counts,
            "pending": [c.address for c in plan.actionable], "blocked": [c.address for c in plan.blocked],
            "kept": [c.address for c in plan.kept]}


def daemon_status(plan: Plan) -> dict[str, Any]:
    """What `Daemon._observe_result` records for ``plan`` (a stand-in daemon: no git, no blame)."""
    status: dict[str, Any] = {}
    recorded: dict[str, Any] = {}
    fake = types.SimpleNamespace(
        _suspended=lambda state: set(), _origins=lambda plan, state: {},
        metrics=types.SimpleNamespace(set_resources=lambda counts, per_kind: recorded.update(
            counts=dict(counts), per_kind=dict(per_kind))),
        _set_status=lambda **values: status.update(values))
    Daemon._observe_result(fake, plan, types.SimpleNamespace(revision="r"))
    return {"resources": status["resources"],
            "drift": [(d["address"], d["state"], d["action"]) for d in status["drift"]["resources"]],
            "per_kind": recorded["per_kind"], "counts": recorded["counts"],
            "pending": [c["address"] for c in status["pending"]], "blocked": [c["address"] for c in status["blocked"]],
            "kept": status["kept"]}


# --------------------------------------------------------------------------- a richer universe


def topic(name: str, retention: str = "604800s", labels=OURS, **kw) -> Resource:
    return Resource(Kind.PUBSUB_TOPIC, name, spec={"message_retention_duration": retention},
                    labels={**labels, SOURCE_KEY: name[:2]}, **kw)


def subscription(name: str, on: str, deadline: int = 60, labels=OURS, protected=False, **kw) -> Resource:
    return Resource(Kind.PUBSUB_SUBSCRIPTION, name, spec={"topic": on, "ack_deadline_seconds": deadline},
                    labels={**labels, PROTECTED_LABEL: "true" if protected else "false"},
                    depends_on=(f"pubsub_topic.{on}",), deletion_protection=protected, **kw)


def binding(name: str, on: str, members=("user:a",), labels=OURS, **kw) -> Resource:
    return Resource(Kind.IAM_BINDING, name, spec={"role": "roles/viewer", "target": f"pubsub_topic.{on}",
                                                  "members": list(members)},
                    labels=dict(labels), depends_on=(f"pubsub_topic.{on}",), **kw)


PROTECTED_LABEL = P.PROTECTED_KEY


class Universe:
    """Desired and live resources, changed a few at a time at random (the kinds of change a
    commit, a drift, another owner, a deletion and a provider's quote make)."""

    def __init__(self, rng: random.Random, size: int = 30) -> None:
        self.rng = rng
        self.names = ([f"t{i}" for i in range(size)] + [f"s{i}" for i in range(size)]
                      + [f"b{i}" for i in range(size // 3)] + [f"x{i}" for i in range(4)])
        self.desired: dict[str, Resource] = {}
        for name in self.names:
            if rng.random() < 0.8:
                self.desired[name] = self.make(name)
        self.live: dict[str, Resource] = {n: self.copy_of(r) for n, r in self.desired.items() if rng.random() < 0.85}

    def make(self, name: str, **kw) -> Resource:
        rng = self.rng
        t = f"t{rng.randrange(10)}"
        if name[0] == "t":
            return topic(name, retention=rng.choice(["604800s", "86400s"]), **kw)
        if name[0] == "s":
            return subscription(name, rng.choice([t, "t1"]), rng.choice([30, 60]), protected=rng.random() < 0.3, **kw)
        if name[0] == "b":
            return binding(name, t, members=rng.choice([("user:a",), ("user:a", "user:b")]), **kw)
        return dataclasses.replace(topic(name), external=True, labels={})  # another project's, referenced

    def copy_of(self, resource: Resource) -> Resource:
        if resource.external:
            return Resource(resource.kind, resource.name, dict(resource.spec), labels={"owner": "them"})
        return dataclasses.replace(resource)  # equal, another object (as a provider reads it)

    def step(self) -> None:
        rng = self.rng
        for _ in range(rng.randint(1, 5)):
            name = rng.choice(self.names)
            roll = rng.random()
            if roll < 0.15:
                self.desired.pop(name, None)
            elif roll < 0.35:
                self.desired[name] = self.make(name)
            elif roll < 0.45:
                self.live.pop(name, None)
            elif roll < 0.6 and name in self.desired:
                self.live[name] = self.copy_of(self.desired[name])
            elif roll < 0.68 and name in self.live:
                self.live[name] = dataclasses.replace(self.live[name], labels={"owner": "someone-else"})
            elif roll < 0.74 and name in self.live:
                self.live[name] = dataclasses.replace(self.live[name], labels={**OURS, PLATFORM_KEY: "other"})
            elif roll < 0.8 and name in self.live:
                self.live[name] = dataclasses.replace(self.live[name], status={LEAVING: "deleting"})
            elif roll < 0.86 and name in self.live:
                self.live[name] = dataclasses.replace(self.live[name], status={WOULD_LOSE: "12 messages"})
            else:
                self.live[name] = self.make(name)


def random_options(rng: random.Random, names) -> PlanOptions:
    adopt = frozenset(f"pubsub_topic.{n}" for n in names if n[0] == "t" and rng.random() < 0.2)
    return PlanOptions(prune=rng.random() < 0.5, allow_destroy=rng.random() < 0.5,
                       max_delete_fraction=rng.choice([0.2, 1.0]), environment=rng.choice([None, ENV]), adopt=adopt)


def derive(index: ResourceIndex, now: dict[str, Resource]) -> ResourceIndex:
    """``index`` derived to hold ``now`` (what changed put, what went dropped)."""
    put = [r for r in now.values() if index.get(r.address) is not r]
    drop = [a for a in index.keys() - {r.address for r in now.values()}]
    return index.derive(put, drop)


# --------------------------------------------------------------------------- reconcile


@pytest.mark.parametrize("limits", ["as they are", "small"])
@pytest.mark.parametrize("seed", range(6))
def test_memo_plans_equal_the_pre_delta_reconcile_over_a_rich_random_walk(seed, limits, monkeypatch):
    """Topics, subscriptions (some protected), IAM bindings (revoked as orphans, kept with a kept
    target), another project's references, resources of another owner or platform, leaving, with
    a quoted loss; options (prune, allow_destroy, delete fraction, environment, adopt) changed
    now and then; declared_sources 0 now and then. The inputs are derived indexes, sometimes
    from a branch (an index derived twice from one ancestor) or a plain list, and the memo is
    sometimes given a second reconcile with quoted losses (as `Engine.plan_live` does). With
    ``small`` limits, the memo decides everything above 3 differing addresses, and an index
    remembers 2 ancestors and 6 changed addresses: every fallback is taken."""
    if limits == "small":
        monkeypatch.setattr(ReconcileMemo, "MAX_DELTA", 3)
        monkeypatch.setattr(ResourceIndex, "MAX_CHAIN", 2)
        monkeypatch.setattr(ResourceIndex, "MAX_CARRIED", 6)
    rng = random.Random(seed)
    world = Universe(rng)
    memo = ReconcileMemo()
    options = PlanOptions(environment=ENV)
    desired_index = ResourceIndex(world.desired.values())
    live_index = ResourceIndex(world.live.values())
    seen: dict[str, int] = {}
    for step in range(250):
        world.step()
        if step % 60 == 59:  # a commit that removes many resources (a refusal, unless few are ours)
            for name in rng.sample(sorted(world.desired), len(world.desired) // 2):
                del world.desired[name]
        if step % 40 == 39:
            options = random_options(rng, world.names)
        branch = rng.random()
        if branch < 0.1:  # derived from an older index: a branch the memo never saw
            live_index = derive(ResourceIndex(live_index.values()) if rng.random() < 0.5 else live_index, world.live)
            desired_index = derive(desired_index, world.desired)
        else:
            for _ in range(rng.choice([1, 1, 2, 3])):  # more than one derivation since the memo's last
                desired_index = derive(desired_index, world.desired)
                live_index = derive(live_index, world.live)
                world.step()
            desired_index = derive(desired_index, world.desired)
            live_index = derive(live_index, world.live)
        declared_sources = 0 if rng.random() < 0.05 else None
        given = ((desired_index, live_index) if rng.random() < 0.9
                 else (list(world.desired.values()), list(world.live.values())))
        plan = reconcile(*given, dict(IMMUTABLE), options, declared_sources=declared_sources, memo=memo)
        expected = reference_reconcile(world.desired.values(), world.live.values(), IMMUTABLE, options,
                                       declared_sources=declared_sources)
        assert plan == expected, f"step {step}"
        assert views(plan) == scanned_views(plan), f"step {step}"
        assert daemon_status(plan) == reference_status(plan), f"step {step}"
        sources = {r.labels.get(SOURCE_KEY) for r in world.desired.values()} - {None}
        suspended = set(rng.sample(sorted(sources), min(len(sources), 3)))
        for rebuilt in (without_sources(plan, suspended), heal_plan(plan, suspended)):  # (dataclasses.replace)
            assert views(rebuilt) == scanned_views(rebuilt), f"step {step}"
            assert daemon_status(rebuilt) == reference_status(rebuilt), f"step {step}"
        for what, happened in (("refused", plan.refused), ("reused", memo.hits),
                               ("blocked by", any(c.blocked_by for c in plan.non_noop)), ("kept", plan.kept)):
            seen[what] = seen.get(what, 0) + bool(happened)
        if rng.random() < 0.2:  # `Engine.plan_live`: the same memo again, with quoted losses
            gated = [c.live for c in plan.non_noop if c.action in (Action.DELETE, Action.REPLACE) and c.live]
            quoted = [dataclasses.replace(r, status={**r.status, WOULD_LOSE: "data"}) for r in gated]
            again = reconcile(desired_index, live_index.derive(put=quoted), dict(IMMUTABLE), options,
                              declared_sources=declared_sources, memo=memo)
            with_loss = dict(world.live)
            with_loss.update({r.name: r for r in quoted})
            assert again == reference_reconcile(world.desired.values(), with_loss.values(), IMMUTABLE, options,
                                                declared_sources=declared_sources), f"step {step} (losses)"
            assert views(again) == scanned_views(again)
    assert all(seen.get(what) for what in ("refused", "reused", "blocked by", "kept")), seen


# --------------------------------------------------------------------------- what changed, along a chain


@pytest.mark.parametrize("seed", range(4))
def test_changed_addresses_along_derivations_equal_the_full_comparison(seed):
    """`changed_addresses` of two indexes, one derived from the other through up to
    `ResourceIndex.MAX_CHAIN` steps, equals the comparison of every address - also for an
    address added at one step and removed again at a later one (present in neither end: it is
    neither added nor removed)."""
    from reconciler.incremental import changed_addresses

    rng = random.Random(seed)
    names = [f"r{i}" for i in range(12)]
    start = ResourceIndex(topic(n) for n in names if rng.random() < 0.5)
    for _ in range(200):
        chain = [start]
        for _ in range(rng.randint(1, ResourceIndex.MAX_CHAIN)):
            put = [topic(n, retention=rng.choice(["1s", "2s"])) for n in rng.sample(names, rng.randint(0, 3))]
            drop = [f"pubsub_topic.{n}" for n in rng.sample(names, rng.randint(0, 3))]
            chain.append(chain[-1].derive(put, drop))
        earlier = rng.choice(chain[:-1])
        assert chain[-1].changed_since(earlier) is not None
        assert changed_addresses(earlier, chain[-1]) == changed_addresses(dict(earlier), dict(chain[-1]))
        start = chain[-1]


def test_a_source_added_and_removed_again_by_unplanned_revisions_is_no_change(tmp_path):
    """The daemon compares a commit with the revision it last *planned* (`Daemon._planned`),
    while compile's memo derives each loaded revision's index from the last *loaded* one: a
    revision whose plan failed (the API was down) is loaded, not planned. When it added a
    source and the next commit removed it again, the source's addresses are in the derived
    index's changes but in neither revision: nothing changed there, and the commit's plan stays
    incremental (it was a full observe: "resources of no single source changed")."""
    from providers.memory import MemoryProvider
    from reconciler.compile import compile_resources
    from reconciler.engine import Engine, plan_options
    from reconciler.incremental import INCREMENTAL, ObservedCache, plan_change, recheck
    from reconciler.load import load_repo
    from tests.helpers import copy_example

    repo = copy_example(tmp_path)
    state = load_repo(repo)
    options = plan_options(state, prune=True)
    everything = compile_resources(state)
    extra = [r for r in everything if r.labels.get(SOURCE_KEY) == "aws_data_lake"]
    assert extra
    planned = ResourceIndex(r for r in everything if r.labels.get(SOURCE_KEY) != "aws_data_lake")
    engine, cache = Engine([MemoryProvider()]), ObservedCache()
    first = plan_change(engine, state, options, cache=cache, full=True, desired=planned)
    engine.apply(first.plan)
    recheck(engine, state, first.plan, cache=cache, desired=planned, options=options)
    unplanned = planned.derive(put=extra)  # loaded, its plan failed
    table = next(r for r in everything if r.address == "bigquery_table.silver.clickstream")
    now = unplanned.derive(put=[dataclasses.replace(table, spec={**table.spec, "description": "edited"})],
                           drop=[r.address for r in extra])
    scoped = plan_change(engine, state, options, cache=cache, desired=now, previous_desired=planned)
    assert scoped.changed.all == {table.address}
    assert scoped.mode == INCREMENTAL, scoped.reason
    assert scoped.plan == engine.plan_resources(list(now.values()), options, revision=state.revision,
                                                declared_sources=len(state.sources))


# --------------------------------------------------------------------------- the observed-state cache


@pytest.mark.parametrize("seed", range(4))
def test_the_cache_index_is_its_entries_and_the_memo_plans_from_it_as_from_scratch(seed):
    """Random refreshes, reads by name, kinds observed whole, invalidations and clears: the
    cache's index holds exactly its entries, is derived from the last one at each read (what it
    names as changed covers every address whose object differs), and a memo fed with it plans as
    the pre-delta reconcile of the same resources."""
    from reconciler.incremental import ObservedCache

    rng = random.Random(seed)
    world = Universe(rng)
    clock = iter(range(1, 10**6))
    cache = ObservedCache(clock=lambda: float(next(clock)))
    cache.refresh(world.live.values(), [Kind.PUBSUB_TOPIC])
    desired_index = ResourceIndex(world.desired.values())
    options = PlanOptions(environment=ENV)
    for step in range(300):
        world.step()
        before = cache.index()
        roll = rng.random()
        if roll < 0.05:
            cache.refresh(world.live.values(), [Kind.PUBSUB_TOPIC])
        elif roll < 0.08:
            cache.clear()
        elif roll < 0.15:
            cache.invalidate(rng.sample(sorted(r.address for r in world.live.values()), 2))
        elif roll < 0.3:  # a kind observed whole
            kind = rng.choice([Kind.PUBSUB_TOPIC, Kind.IAM_BINDING, Kind.PUBSUB_SUBSCRIPTION])
            cache.record([r for r in world.live.values() if r.kind == kind], kinds=[kind])
        else:  # some addresses read by name
            names = rng.sample(world.names, rng.randint(1, 6))
            addresses = {world.make(n).address for n in names}
            cache.record([r for r in world.live.values() if r.address in addresses], addresses=addresses)
        index = cache.index()
        entries = {a: e.resource for a, e in cache.entries().items()}
        assert dict(index) == entries and len(index) == cache.size(), f"step {step}"
        assert sorted(map(id, cache.live())) == sorted(map(id, entries.values()))
        since = index.changed_since(before)
        if since is not None:
            assert since >= {a for a in index.keys() | before.keys() if index.get(a) is not before.get(a)}
        desired_index = derive(desired_index, world.desired)
        plan = reconcile(desired_index, index, dict(IMMUTABLE), options, memo=cache.reconcile_memo)
        assert plan == reference_reconcile(world.desired.values(), entries.values(), IMMUTABLE, options)
        assert views(plan) == scanned_views(plan)


def test_invalidations_from_another_thread_while_the_worker_reads_and_plans():
    """The asset feed invalidates from its own thread (`Daemon.invalidate`) while the worker reads
    and plans: an invalidation only marks addresses - the index and the memo the worker plans
    from are untouched by it - and the cache's index stays its entries."""
    from reconciler.incremental import ObservedCache

    rng = random.Random(7)
    world = Universe(rng, size=60)
    cache = ObservedCache()
    cache.refresh(world.live.values(), [Kind.PUBSUB_TOPIC])
    addresses = sorted(world.make(n).address for n in world.names)
    reconcile(ResourceIndex(world.desired.values()), cache.index(), dict(IMMUTABLE), PlanOptions(environment=ENV),
              memo=cache.reconcile_memo)
    index, last = cache.index(), cache.reconcile_memo._last
    assert cache.invalidate(addresses[:5]) == 5
    assert cache.index() is index and cache.reconcile_memo._last is last
    assert cache.invalid() == set(addresses[:5])

    stop = threading.Event()

    def feed() -> None:
        feed_rng = random.Random(8)
        while not stop.is_set():
            cache.invalidate([feed_rng.choice(addresses)])

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        for _ in range(300):
            world.step()
            read = set(rng.sample(addresses, 5)) | cache.invalid()
            cache.record([r for r in world.live.values() if r.address in read], addresses=read)
            index = cache.index()
            assert dict(index) == {a: e.resource for a, e in cache.entries().items()}
            plan = reconcile(ResourceIndex(world.desired.values()), index, dict(IMMUTABLE),
                             PlanOptions(environment=ENV), memo=cache.reconcile_memo)
            assert plan == reference_reconcile(world.desired.values(), index.values(), IMMUTABLE,
                                               PlanOptions(environment=ENV))
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("seed", range(4))
def test_scope_from_derived_indexes_equals_scope_from_plain_mappings(seed):
    """`scope` asks a `ResourceIndex` for the dependents of the changed addresses (built once,
    then carried along derivations, also when built on an ancestor midway); a plain mapping is
    scanned. Same addresses either way."""
    from reconciler.incremental import changed_addresses, scope

    rng = random.Random(seed)
    names = [f"r{i}" for i in range(15)]

    def some(name: str) -> Resource:
        deps = {f"pubsub_topic.{rng.choice(names)}" for _ in range(rng.randint(0, 3))}
        return topic(name, retention=rng.choice(["1s", "2s"]), depends_on=tuple(sorted(deps)))

    index = ResourceIndex(some(n) for n in names if rng.random() < 0.7)
    for _ in range(150):
        chain = [index]
        for _ in range(rng.randint(1, ResourceIndex.MAX_CHAIN)):
            if rng.random() < 0.3:
                chain[-1].dependents("pubsub_topic.r0")  # built here: carried from now on
            chain.append(chain[-1].derive([some(n) for n in rng.sample(names, rng.randint(0, 3))],
                                          [f"pubsub_topic.{n}" for n in rng.sample(names, rng.randint(0, 2))]))
        before, after = rng.choice(chain[:-1]), chain[-1]
        changed = changed_addresses(before, after)
        assert scope(changed, before, after) == scope(changed, dict(before), dict(after))
        index = after


# --------------------------------------------------------------------------- Engine.plan_live: a second reconcile


def reference_plan_live(provider, desired, live, options) -> Plan:
    """`Engine.plan_live` before the deltas: reconcile, quote the gated deletes and replacements,
    reconcile every live resource again with the quotes."""
    from reconciler.resources import DATA_KINDS

    plan = reference_reconcile(desired, live, provider.immutable_fields, options)
    gated = [c.live for c in plan.changes
             if c.action in (Action.DELETE, Action.REPLACE) and c.live is not None and c.kind in DATA_KINDS]
    losses = dict(provider.would_lose(gated))
    if not losses:
        return plan
    live = [dataclasses.replace(r, status={**r.status, WOULD_LOSE: losses[r.address]}) if r.address in losses
            else r for r in live]
    return reference_reconcile(desired, live, provider.immutable_fields, options)


@pytest.mark.parametrize("seed", range(4))
def test_plan_live_with_quoted_losses_plans_as_before(seed):
    """`Engine.plan_live` derives an index with the providers' quotes from the live one and
    reconciles it with the same memo; the next call gives it the cache's next index (derived
    from the live one, not from the quoted one). Every plan equals the pre-delta plan_live's."""
    from providers.memory import MemoryProvider
    from reconciler.engine import Engine

    rng = random.Random(seed)
    world = Universe(rng)
    provider = MemoryProvider()
    engine = Engine([provider])
    memo = ReconcileMemo()
    options = PlanOptions(environment=ENV, prune=True)
    desired_index, live_index = ResourceIndex(world.desired.values()), ResourceIndex(world.live.values())
    quoted = 0
    for step in range(150):
        world.step()
        if step % 30 == 29:
            options = random_options(rng, world.names)
        provider.losses = {r.address: f"{rng.randint(1, 9)} rows" for r in world.live.values() if rng.random() < 0.5}
        desired_index, live_index = derive(desired_index, world.desired), derive(live_index, world.live)
        plan = engine.plan_live(desired_index, live_index, options, memo=memo)
        expected = reference_plan_live(provider, list(world.desired.values()), list(world.live.values()), options)
        assert plan == expected, f"step {step}"
        assert views(plan) == scanned_views(plan)
        quoted += any(WOULD_LOSE in (c.live.status if c.live else {}) for c in plan.non_noop)
    assert quoted > 10


# --------------------------------------------------------------------------- a failure midway


def test_a_reconcile_that_fails_midway_leaves_no_half_updated_memo(monkeypatch):
    """The memo's tables are updated in place: a decision that raises midway (after another was
    made) must not leave them half-updated for the next call - here, back to the inputs the memo
    last saw, where nothing looks changed."""
    base_desired = ResourceIndex([topic("t1"), topic("t2"), topic("t3")])
    live = ResourceIndex([topic("t1"), topic("t2"), topic("t3")])
    memo = ReconcileMemo()
    reconcile(base_desired, live, dict(IMMUTABLE), memo=memo)
    changed = base_desired.derive(put=[topic("t1", retention="1s"), topic("t2", retention="1s")])
    real, calls = P._decide, []

    def failing(*args, **kwargs):
        calls.append(args[0].address)
        if len(calls) == 2:
            raise RuntimeError("a provider's odd value")
        return real(*args, **kwargs)

    monkeypatch.setattr(P, "_decide", failing)
    with pytest.raises(RuntimeError):
        reconcile(changed, live, dict(IMMUTABLE), memo=memo)
    monkeypatch.setattr(P, "_decide", real)
    assert len(calls) == 2  # one decision made, in place, before the failure
    for desired in (base_desired, changed):
        plan = reconcile(desired, live, dict(IMMUTABLE), memo=memo)
        assert plan == reference_reconcile(desired.values(), live.values(), IMMUTABLE)


@pytest.mark.parametrize("seed", range(3))
def test_two_memos_over_shared_indexes_of_several_branches(seed):
    """Indexes derived into a tree (each from a random earlier one, some no longer held), planned
    in random order by two memos: each plan equals the pre-delta reconcile of its inputs."""
    rng = random.Random(seed)
    world = Universe(rng)
    memos = [ReconcileMemo(), ReconcileMemo()]
    options = PlanOptions(environment=ENV, prune=True)
    pool = [(ResourceIndex(world.desired.values()), ResourceIndex(world.live.values()))]
    for step in range(200):
        desired_from, live_from = rng.choice(pool)
        world.desired, world.live = dict((r.name, r) for r in desired_from.values()), \
            dict((r.name, r) for r in live_from.values())
        world.step()
        pool.append((derive(desired_from, world.desired), derive(live_from, world.live)))
        if len(pool) > 6:
            pool.pop(rng.randrange(len(pool) - 1))  # forgotten (freed: its derivations hold it weakly)
        desired, live = rng.choice(pool[-3:])
        plan = reconcile(desired, live, dict(IMMUTABLE), options, memo=rng.choice(memos))
        assert plan == reference_reconcile(desired.values(), live.values(), IMMUTABLE, options), f"step {step}"
        assert views(plan) == scanned_views(plan)


def test_after_a_plan_with_quoted_losses_the_next_reconcile_still_starts_from_the_changes(monkeypatch):
    """`Engine.plan_live` reconciles a second time with an index derived from the live one (the
    providers' quotes of what gated deletes would lose), so the memo last saw that index; the
    cache derives its next index from the live one too. The two are siblings: what differs
    between them is what each changed since their common ancestor - no pass over every live
    resource (in the daemon a data delete stays blocked, and quoted, until someone acts: every
    plan meanwhile compared all 110,000 live resources, ~30 ms)."""
    from providers.memory import MemoryProvider
    from reconciler.engine import Engine

    rng = random.Random(3)
    world = Universe(rng, size=40)
    provider = MemoryProvider()
    engine = Engine([provider])
    options = PlanOptions(environment=ENV, prune=True)
    memo = ReconcileMemo()
    gone = next(n for n, r in world.live.items() if r.kind == Kind.PUBSUB_TOPIC and n in world.desired)
    del world.desired[gone]  # a data delete: blocked (no --allow-destroy), quoted
    desired, live = ResourceIndex(world.desired.values()), ResourceIndex(world.live.values())
    provider.losses = {r.address: "rows" for r in world.live.values()}
    engine.plan_live(desired, live, options, memo=memo)
    assert memo._last.live is not live  # a second reconcile, with the quotes
    full_passes = []
    real_items = ResourceIndex.items

    def items(self):
        full_passes.append(self)
        return real_items(self)

    monkeypatch.setattr(ResourceIndex, "items", items)
    for _ in range(5):
        world.step()
        live = derive(live, world.live)  # the cache's next index: derived from the last live one
        gc.collect()  # (the common ancestor no longer held by anyone)
        plan = engine.plan_live(desired, live, options, memo=memo)
        assert plan == reference_plan_live(provider, list(desired.values()), list(world.live.values()), options)
        assert not full_passes
        assert memo.hits


@pytest.mark.parametrize("seed", range(4))
def test_changed_since_across_a_tree_of_derivations_covers_every_difference(seed):
    """Indexes derived into a tree (each from a random one still held, the others freed): when
    `changed_since` answers, it names every address whose object differs - for an ancestor, a
    descendant, a sibling or a cousin - and `changed_addresses` from it equals the comparison of
    every address."""
    from reconciler.incremental import changed_addresses

    rng = random.Random(seed)
    names = [f"r{i}" for i in range(10)]
    held = [ResourceIndex(topic(n) for n in names if rng.random() < 0.5)]
    answered = 0
    for _ in range(400):
        parent = rng.choice(held)
        put = [topic(n, retention=rng.choice(["1s", "2s"])) for n in rng.sample(names, rng.randint(0, 3))]
        held.append(parent.derive(put, [f"pubsub_topic.{n}" for n in rng.sample(names, rng.randint(0, 2))]))
        if len(held) > 8:
            held.pop(rng.randrange(len(held)))
        later, earlier = rng.sample(held, 2)
        since = later.changed_since(earlier)
        if since is not None:
            answered += 1
            assert since >= {a for a in later.keys() | earlier.keys() if later.get(a) is not earlier.get(a)}
            assert changed_addresses(earlier, later) == changed_addresses(dict(earlier), dict(later))
    assert answered > 100


# --------------------------------------------------------------------------- the daemon's sequence, over the engine


@pytest.mark.parametrize("seed", range(3))
def test_the_daemons_sequence_of_plans_equals_full_plans(tmp_path, seed):
    """The daemon's calls in the order it makes them, with one cache and its memo: a commit's
    incremental plan, its apply and the recheck of what was applied; a drift pass (a full
    observe) and self-heal's apply and recheck; an invalidation pass (`Daemon.invalidate`);
    meanwhile changes out of band (drift, deletion, another owner) and the providers quoting
    what data deletes would lose. The desired states are indexes derived each from the last
    (compile's memo), some never planned (a plan that failed). Every plan equals the full plan
    of the same desired state and live objects, and the daemon's status equals a scan's."""
    from providers.memory import MemoryProvider
    from reconciler.compile import compile_resources
    from reconciler.engine import Engine, plan_options
    from reconciler.incremental import ObservedCache, plan_change, recheck
    from reconciler.load import load_repo
    from tests.helpers import copy_example

    rng = random.Random(seed)
    state = load_repo(copy_example(tmp_path))
    options = plan_options(state, prune=True)
    everything = compile_resources(state)
    by_source: dict[str, list[Resource]] = {}
    for r in everything:
        by_source.setdefault(r.labels.get(SOURCE_KEY) or "", []).append(r)
    provider = MemoryProvider()
    engine = Engine([provider])
    cache = ObservedCache()

    def full(desired: ResourceIndex) -> Plan:
        return engine.plan_resources(list(desired.values()), options, revision=state.revision,
                                     declared_sources=len(state.sources))

    def check(plan: Plan, desired: ResourceIndex, what: str) -> None:
        assert plan == full(desired), what
        assert views(plan) == scanned_views(plan), what
        assert daemon_status(plan) == reference_status(plan), what

    desired = ResourceIndex(everything)
    first = plan_change(engine, state, options, cache=cache, full=True, desired=desired)
    engine.apply(first.plan)
    planned = recheck(engine, state, first.plan, cache=cache, desired=desired, options=options).index
    modes = []
    for step in range(14):
        what = rng.choice(["commit", "commit", "unplanned", "drift", "invalidate"])
        for _ in range(rng.randint(0, 2)):  # out of band, seen by the asset feed
            address = rng.choice(sorted(provider.objects))
            live = provider.objects[address]
            roll = rng.random()
            if roll < 0.3:
                del provider.objects[address]
            elif roll < 0.6:
                provider.objects[address] = dataclasses.replace(live, spec={**live.spec, "description": f"{step}"})
            else:
                provider.objects[address] = dataclasses.replace(live, labels={"team": "other"})
            cache.invalidate([address])  # (the asset feed; unseen drift waits for a full pass)
        provider.losses = {a: "rows" for a in provider.objects if rng.random() < 0.5}
        if what in ("commit", "unplanned"):
            source = rng.choice(sorted(s for s in by_source if s))
            if rng.random() < 0.5 and all(r.address in desired for r in by_source[source]):
                desired = desired.derive(drop=[r.address for r in by_source[source]])  # removed
            else:
                desired = desired.derive(put=[dataclasses.replace(r, spec={**r.spec, "description": f"{step}"})
                                              if r.kind == Kind.PUBSUB_TOPIC else r for r in by_source[source]])
            if what == "unplanned":
                continue  # loaded; its plan failed: the next commit is compared with the last planned
            scoped = plan_change(engine, state, options, cache=cache, desired=desired, previous_desired=planned)
        else:
            scoped = plan_change(engine, state, options, cache=cache, desired=desired, previous_desired=planned,
                                 full=what == "drift")
        planned = scoped.index
        modes.append(scoped.mode)
        check(scoped.plan, desired, f"step {step}: {what} ({scoped.mode} {scoped.reason})")
        work = heal_plan(scoped.plan, set()) if what == "drift" else scoped.plan
        if work.actionable:
            engine.apply(work)
            after = recheck(engine, state, work, cache=cache, desired=scoped.index, options=options)
            check(after.plan, desired, f"step {step}: recheck after {what}")
    assert modes.count("incremental") >= 5, modes
