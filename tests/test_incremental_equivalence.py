"""Issue 14: an incremental plan (cache + re-reads of what a commit touches) equals the full plan.

Everything runs against the in-memory provider (providers/memory.py) behind the real engine:

* commits through the YAML (add, remove, modify one source; modify two; platform.yaml and
  shared resources → a full observe, and still the same plan);
* a seeded random walk over compiled desired states (add/remove/modify sources, immutable
  changes that block their dependents, resources that exist but are not ours), each step's
  incremental plan compared with the full plan, applied, and re-checked by reading only what
  was applied;
* drift outside the change: not seen by the incremental plan, seen by the next full pass (and
  by the incremental plan once the address is invalidated, as the asset feed does);
* a kind whose provider cannot read by name is observed whole instead.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from pathlib import Path

import pytest

from providers.memory import MemoryProvider
from reconciler.compile import compile_resources
from reconciler.engine import Engine, plan_options
from reconciler.incremental import (
    FULL,
    INCREMENTAL,
    ObservedCache,
    changed_addresses,
    plan_change,
    recheck,
    scope,
)
from reconciler.load import load_repo
from reconciler.plan import Action
from reconciler.resources import SOURCE_KEY, Kind, Resource
from tests.helpers import copy_example, edit_yaml


def full_plan(engine: Engine, state, options, desired=None):
    """The reference: what `Engine.plan` does without a cache (everything observed)."""
    desired = list(desired if desired is not None else compile_resources(state))
    return engine.plan_resources(desired, options, revision=state.revision, declared_sources=len(state.sources))


def converge(engine: Engine, state, options, cache: ObservedCache, desired=None):
    """Full plan (refreshing the cache), apply, post-apply recheck: the daemon's first sync."""
    first = plan_change(engine, state, options, cache=cache, full=True, desired=desired)
    engine.apply(first.plan)
    return recheck(engine, state, first.plan, cache=cache, desired=first.desired, options=options)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def park(repo: Path, source: str) -> Path:
    parked = repo.parent / f"{source}.yaml"
    shutil.move(repo / "connectors" / f"{source}.yaml", parked)
    return parked


def commit(repo: Path, before, options_of=lambda s: plan_options(s, prune=True)):
    """Plan the repo as it is now, incrementally (previous: ``before``) and in full; both plans."""
    engine, cache = before["engine"], before["cache"]
    state = load_repo(repo)
    options = options_of(state)
    scoped = plan_change(engine, state, options, cache=cache, previous=before["state"])
    return scoped, full_plan(engine, state, options), state


def started(repo: Path, **kwargs):
    engine = Engine([MemoryProvider()], **kwargs)
    cache = ObservedCache()
    state = load_repo(repo)
    after = converge(engine, state, plan_options(state, prune=True), cache)
    assert not after.plan.actionable  # converged
    return {"engine": engine, "cache": cache, "state": state}


# --------------------------------------------------------------------------- commits through YAML


def test_modify_one_source_reads_only_what_it_touches(repo: Path) -> None:
    before = started(repo)
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: d.__setitem__("description", "now with more"))
    scoped, full, _ = commit(repo, before)
    assert scoped.mode == INCREMENTAL, scoped.reason
    assert scoped.plan == full
    assert scoped.changed.modified == {"bigquery_table.silver.clickstream"}
    assert "bigquery_table.silver.clickstream" in scoped.read
    assert "bigquery_dataset.silver" in scoped.read  # what it depends on (blocked-by chains)
    assert len(scoped.read) < len(scoped.desired) / 4
    assert scoped.observed == () and scoped.calls["observe"] == 0
    assert [c.address for c in full.actionable] == ["bigquery_table.silver.clickstream"]


def test_add_a_source(repo: Path) -> None:
    parked = park(repo, "aws_data_lake")
    before = started(repo)
    shutil.move(parked, repo / "connectors" / "aws_data_lake.yaml")
    scoped, full, _ = commit(repo, before)
    assert scoped.mode == INCREMENTAL, scoped.reason
    assert scoped.plan == full
    assert scoped.changed.added and not scoped.changed.removed
    assert {c.action for c in full.actionable} == {Action.CREATE}


def test_remove_a_source_finds_its_deletes(repo: Path) -> None:
    before = started(repo)
    park(repo, "aws_data_lake")
    scoped, full, _ = commit(repo, before)
    assert scoped.mode == INCREMENTAL, scoped.reason
    assert scoped.plan == full
    removed = {c.address for c in full.changes if c.action == Action.DELETE}
    assert removed and removed <= scoped.changed.removed <= scoped.read  # read by name, found, deleted


def test_modify_two_sources(repo: Path) -> None:
    before = started(repo)
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: d.__setitem__("description", "one"))
    edit_yaml(repo / "connectors" / "shipments.yaml", lambda d: d.__setitem__("description", "two"))
    scoped, full, _ = commit(repo, before)
    assert scoped.mode == INCREMENTAL, scoped.reason
    assert scoped.plan == full
    assert {r.labels.get(SOURCE_KEY) for r in scoped.desired
            if r.address in scoped.changed.all} == {"clickstream", "shipments"}


def test_platform_yaml_falls_back_to_a_full_observe(repo: Path) -> None:
    before = started(repo)
    edit_yaml(repo / "platform.yaml", lambda d: d.setdefault("labels", {}).__setitem__("team", "data"))
    scoped, full, _ = commit(repo, before)
    assert scoped.mode == FULL
    assert scoped.reason == "platform.yaml changed"
    assert scoped.plan == full
    assert set(scoped.observed) == set(Kind)


def test_a_shared_resource_change_falls_back_to_a_full_observe(repo: Path) -> None:
    before = started(repo)
    park(repo, "clickstream")  # its alert channel goes with it: a resource of no single source
    scoped, full, _ = commit(repo, before)
    assert scoped.mode == FULL
    assert "monitoring_notification_channel" in scoped.reason
    assert scoped.plan == full


def test_a_large_change_falls_back_to_a_full_observe(repo: Path) -> None:
    before = started(repo)
    for source in ("clickstream", "shipments", "aws_data_lake"):
        edit_yaml(repo / "connectors" / f"{source}.yaml", lambda d: d.__setitem__("description", "all"))
    state = load_repo(repo)
    options = plan_options(state, prune=True)
    scoped = plan_change(before["engine"], state, options, cache=before["cache"], previous=before["state"],
                         small_scope=0, max_read_fraction=0.05)
    assert scoped.mode == FULL and "addresses to re-read" in scoped.reason
    assert scoped.plan == full_plan(before["engine"], state, options)


def test_without_a_fresh_cache_the_plan_is_full(repo: Path) -> None:
    engine, state = Engine([MemoryProvider()]), load_repo(repo)
    options = plan_options(state)
    cache = ObservedCache()
    assert plan_change(engine, state, options, cache=cache, previous=state).reason == "no observed state cached yet"
    assert plan_change(engine, state, options, cache=cache).reason == "no previous revision"
    assert plan_change(engine, state, options, cache=cache, previous=state).mode == INCREMENTAL
    clock = [1000.0]
    old = ObservedCache(clock=lambda: clock[0])
    plan_change(engine, state, options, cache=old, full=True)
    clock[0] += 601
    stale = plan_change(engine, state, options, cache=old, previous=state, max_age=600)
    assert stale.mode == FULL and "old" in stale.reason
    assert old.age() == 0  # the full observe refreshed it


def test_engine_plan_with_a_cache_is_the_same_plan(repo: Path) -> None:
    before = started(repo)
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: d.__setitem__("description", "via Engine.plan"))
    state = load_repo(repo)
    engine = before["engine"]
    assert engine.plan(state, cache=before["cache"], previous=before["state"]) == engine.plan(state)


# --------------------------------------------------------------------------- drift outside the change


def drift(provider: MemoryProvider, address: str) -> None:
    live = provider.objects[address]
    provider.objects[address] = dataclasses.replace(live, labels={**live.labels, "owner": "someone-else"},
                                                    spec={**live.spec, "description": "changed by hand"})


def test_drift_outside_the_change_waits_for_the_full_pass(repo: Path) -> None:
    before = started(repo)
    provider = before["engine"].providers[Kind.PUBSUB_TOPIC]
    outside = "bigquery_table.silver.shipments"
    drift(provider, outside)
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: d.__setitem__("description", "meanwhile"))
    scoped, full, state = commit(repo, before)
    assert scoped.mode == INCREMENTAL
    assert outside not in scoped.read
    by_address = {c.address: c for c in scoped.plan.changes}
    assert by_address[outside].action == Action.NOOP  # not seen: the cache says what it was
    assert {c.address: c for c in full.changes}[outside].action == Action.UPDATE  # a full plan sees it
    assert [c for c in scoped.plan.changes if c.address != outside] == [c for c in full.changes
                                                                          if c.address != outside]
    # The drift pass: a full observe finds it and refreshes the cache...
    options = plan_options(state, prune=True)
    drift_pass = plan_change(before["engine"], state, options, cache=before["cache"], full=True)
    assert drift_pass.plan == full
    assert before["cache"].get(outside).resource.labels["owner"] == "someone-else"
    # ... so the next incremental plan sees it too.
    again = plan_change(before["engine"], state, options, cache=before["cache"], previous=state)
    assert again.mode == INCREMENTAL and again.plan == full


def test_an_invalidated_address_is_read_again(repo: Path) -> None:
    before = started(repo)
    provider = before["engine"].providers[Kind.PUBSUB_TOPIC]
    outside = "bigquery_table.silver.shipments"
    drift(provider, outside)
    assert before["cache"].invalidate([outside, "pubsub_topic.made-by-hand"]) == 2
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: d.__setitem__("description", "meanwhile"))
    scoped, full, _ = commit(repo, before)
    assert scoped.mode == INCREMENTAL
    assert {outside, "pubsub_topic.made-by-hand"} <= scoped.read
    assert scoped.plan == full
    assert before["cache"].invalid() == set()


def test_an_unmanaged_resource_created_meanwhile_is_imported_not_taken(repo: Path) -> None:
    parked = park(repo, "aws_data_lake")
    before = started(repo)
    provider = before["engine"].providers[Kind.PUBSUB_TOPIC]
    # Someone else's topic, under the name the added source wants (no managed-by label).
    shutil.move(parked, repo / "connectors" / "aws_data_lake.yaml")
    wanted = next(r for r in compile_resources(load_repo(repo))
                  if r.kind == Kind.PUBSUB_TOPIC and r.labels.get(SOURCE_KEY) == "aws_data_lake")
    provider.objects[wanted.address] = Resource(wanted.kind, wanted.name, dict(wanted.spec), {"team": "other"})
    scoped, full, state = commit(repo, before)
    assert scoped.mode == INCREMENTAL
    assert scoped.plan == full
    assert {c.address: c for c in full.changes}[wanted.address].action == Action.IMPORT


class _NoReader:
    """A provider of some kinds that cannot read by name (no `read` ability)."""

    def __init__(self, inner: MemoryProvider, kinds: tuple[Kind, ...]) -> None:
        self._inner, self.kinds, self.immutable_fields = inner, kinds, inner.immutable_fields

    def observe(self, kind):
        return self._inner.observe(kind)

    def create(self, resource):
        self._inner.create(resource)

    def update(self, resource, fields):
        self._inner.update(resource, fields)

    def delete(self, resource):
        self._inner.delete(resource)


def test_a_kind_without_a_reader_is_observed_whole(repo: Path) -> None:
    memory = MemoryProvider()
    blind = (Kind.BIGQUERY_TABLE,)
    engine = Engine([MemoryProvider(kinds=tuple(k for k in Kind if k not in blind)), _NoReader(memory, blind)])
    cache, state = ObservedCache(), load_repo(repo)
    converge(engine, state, plan_options(state, prune=True), cache)
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: d.__setitem__("description", "blind"))
    scoped, full, _ = commit(repo, {"engine": engine, "cache": cache, "state": state})
    assert scoped.mode == INCREMENTAL
    assert scoped.observed == (Kind.BIGQUERY_TABLE,)
    assert scoped.plan == full


# --------------------------------------------------------------------------- a random walk (property)


def _mutations(rng: random.Random, current: list[Resource], pool: dict[str, list[Resource]],
               step: int) -> tuple[str, list[Resource]]:
    """One random change of the compiled desired state, as a commit would make it."""
    present = sorted({r.labels[SOURCE_KEY] for r in current if r.labels.get(SOURCE_KEY)})
    absent = sorted(set(pool) - set(present))
    choices = ["modify", "modify_two", "immutable", "label"] + (["remove"] if len(present) > 2 else []) \
        + (["add"] if absent else [])
    what = rng.choice(choices)
    if what == "remove":
        gone = rng.choice(present)
        return f"remove {gone}", [r for r in current if r.labels.get(SOURCE_KEY) != gone]
    if what == "add":
        back = rng.choice(absent)
        return f"add {back}", current + pool[back]
    if what in ("modify", "modify_two"):
        sources = rng.sample(present, 2 if what == "modify_two" else 1)
        out = list(current)
        for source in sources:
            candidates = [i for i, r in enumerate(out) if r.labels.get(SOURCE_KEY) == source
                          and r.kind in (Kind.PUBSUB_TOPIC, Kind.BIGQUERY_TABLE, Kind.STORAGE_NOTIFICATION)]
            i = rng.choice(candidates)
            out[i] = dataclasses.replace(out[i], spec={**out[i].spec, "description": f"step {step}"})
        return f"{what} {','.join(sources)}", out
    if what == "label":
        source = rng.choice(present)
        out = [dataclasses.replace(r, labels={**r.labels, "revision": str(step)})
               if r.labels.get(SOURCE_KEY) == source else r for r in current]
        return f"label {source}", out
    # An immutable change on a subscription: a replacement, blocked (data), blocking its dependents.
    subs = [i for i, r in enumerate(current) if r.kind == Kind.PUBSUB_SUBSCRIPTION and r.labels.get(SOURCE_KEY)]
    i = rng.choice(subs)
    out = list(current)
    out[i] = dataclasses.replace(out[i], spec={**out[i].spec, "topic": f"elsewhere-{step}"})
    return f"immutable {out[i].address}", out


@pytest.mark.parametrize("seed", range(6))
def test_random_commits_plan_as_a_full_plan_would(repo: Path, seed: int) -> None:
    rng = random.Random(seed)
    provider = MemoryProvider()
    engine = Engine([provider])
    state = load_repo(repo)
    options = plan_options(state, prune=True, allow_destroy=seed % 2 == 1)
    everything = compile_resources(state)
    pool: dict[str, list[Resource]] = {}
    for r in everything:
        if r.labels.get(SOURCE_KEY):
            pool.setdefault(r.labels[SOURCE_KEY], []).append(r)
    cache = ObservedCache()
    previous = converge(engine, state, options, cache, desired=everything).desired
    modes = []
    for step in range(8):
        what, desired = _mutations(rng, list(previous), pool, step)
        if rng.random() < 0.6:
            # Out of band, under an address the commit touches (so the plan must read it again):
            # someone drifts or deletes it, or creates their own resource under its name.
            touched = sorted(a for a in scope(changed_addresses(previous, desired), previous, desired)
                             if not a.startswith("dataflow_job"))
            address = rng.choice(touched)
            if address not in provider.objects:
                kind, name = address.split(".", 1)
                provider.objects[address] = Resource(Kind(kind), name, {}, {"team": "other"})
            elif rng.random() < 0.5:
                del provider.objects[address]
            else:
                drift(provider, address)
        scoped = plan_change(engine, state, options, cache=cache, desired=desired, previous_desired=previous)
        modes.append(scoped.mode)
        full = full_plan(engine, state, options, desired)
        assert scoped.plan == full, f"seed {seed}, step {step}: {what} ({scoped.mode}: {scoped.reason})"
        if not full.refused:
            engine.apply(scoped.plan)
        after = recheck(engine, state, scoped.plan, cache=cache, desired=desired, options=options)
        assert after.plan == full_plan(engine, state, options, desired), f"seed {seed}, step {step}: after {what}"
        assert after.read == {c.address for c in scoped.plan.actionable} and after.observed == ()
        previous = desired
    assert INCREMENTAL in modes


# --------------------------------------------------------------------------- the pure parts and the cache


def _r(kind: Kind, name: str, source: str | None = None, depends_on: tuple[str, ...] = (), **spec) -> Resource:
    labels = {SOURCE_KEY: source} if source else {}
    return Resource(kind, name, spec, labels, depends_on=depends_on)


def test_a_resource_without_a_label_belongs_to_the_source_it_depends_on() -> None:
    from reconciler.incremental import platform_wide

    topic = _r(Kind.PUBSUB_TOPIC, "a", "a")
    binding = _r(Kind.IAM_BINDING, "pubsub_topic:a:roles/pubsub.publisher", depends_on=(topic.address,))
    channel = _r(Kind.MONITORING_NOTIFICATION_CHANNEL, "team@example.com")
    assert platform_wide(changed_addresses([], [topic, binding]), [], [topic, binding]) is None
    assert "team@example.com" in platform_wide(changed_addresses([], [topic, channel]), [], [topic, channel])
    other = _r(Kind.PUBSUB_TOPIC, "b", "b")
    both = _r(Kind.IAM_BINDING, "two", depends_on=(topic.address, other.address))
    assert platform_wide(changed_addresses([topic, other], [topic, other, both]), [topic, other],
                         [topic, other, both])


def test_scope_follows_dependencies_and_direct_dependents() -> None:
    dataset = _r(Kind.BIGQUERY_DATASET, "silver")
    table = _r(Kind.BIGQUERY_TABLE, "silver.a", "a", (dataset.address,))
    job = _r(Kind.DATAFLOW_JOB, "a", "a", (table.address,))
    view = _r(Kind.BIGQUERY_VIEW, "gold.v", "a", (job.address,))
    changed = changed_addresses([dataset, table, job, view],
                                [dataset, dataclasses.replace(table, spec={"description": "x"}), job, view])
    assert changed.modified == {table.address}
    assert scope(changed, [dataset, table, job, view], [dataset, table, job, view]) == {
        table.address, dataset.address, job.address}


def test_the_cache_keeps_invalidations_newer_than_a_read() -> None:
    clock = [100.0]
    cache = ObservedCache(clock=lambda: clock[0])
    topic = _r(Kind.PUBSUB_TOPIC, "a", "a")
    cache.refresh([topic], kinds=[Kind.PUBSUB_TOPIC])
    assert cache.get(topic.address).observed_at == 100.0 and cache.age() == 0
    clock[0] = 110.0
    cache.invalidate([topic.address])
    cache.record([], addresses=[topic.address], at=105.0)  # a read that started before the invalidation
    assert cache.invalid() == {topic.address} and cache.get(topic.address) is None  # read: gone
    cache.record([topic], addresses=[topic.address], at=111.0)
    assert cache.invalid() == set() and cache.get(topic.address).observed_at == 111.0
    cache.invalidate(["pubsub_topic.b"])
    cache.refresh([], kinds=[Kind.PUBSUB_TOPIC], at=112.0)
    assert cache.invalid() == set() and cache.live() == []
    cache.clear()
    assert cache.age() is None and cache.kinds == frozenset()
