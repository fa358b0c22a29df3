"""`ResourceIndex` (issue 14): resources by address that know what changed since the index they
were derived from, and who depends on whom."""

from __future__ import annotations

import dataclasses
import gc
import random
import weakref

import pytest

from reconciler.resources import Kind, Resource, ResourceIndex


def topic(name: str, *deps: str, retention: str = "1d") -> Resource:
    return Resource(Kind.PUBSUB_TOPIC, name, {"retention": retention}, depends_on=tuple(deps))


def test_a_later_resource_of_one_address_wins_as_in_a_dict():
    first, second = topic("a"), topic("a", retention="2d")
    index = ResourceIndex([first, second])
    assert len(index) == 1 and index["pubsub_topic.a"] is second
    assert dict(index) == {"pubsub_topic.a": second} and "pubsub_topic.a" in index


def test_derive_leaves_the_original_alone_and_names_what_changed():
    a, b, c = topic("a"), topic("b"), topic("c")
    base = ResourceIndex([a, b])
    equal_b = dataclasses.replace(b)  # equal, another object: changed (by identity)
    derived = base.derive(put=[c, equal_b, a], drop=["pubsub_topic.a", "pubsub_topic.nothing"])
    assert dict(base) == {a.address: a, b.address: b}
    assert dict(derived) == {a.address: a, b.address: equal_b, c.address: c}
    # a: dropped then put back as the very object - unchanged.
    assert derived.changed_since(base) == {b.address, c.address}
    assert derived.changed_since(derived) == frozenset()
    assert base.changed_since(derived) is None  # not derived from it
    assert ResourceIndex([a, b]).changed_since(base) is None  # equal, not derived


def test_changes_accumulate_along_a_chain_of_derivations():
    a, b, c = topic("a"), topic("b"), topic("c")
    first = ResourceIndex([a])
    second = first.derive(put=[b])
    third = second.derive(drop=[a.address])
    fourth = third.derive(put=[c])
    assert fourth.changed_since(third) == {c.address}
    assert fourth.changed_since(second) == {a.address, c.address}
    assert fourth.changed_since(first) == {a.address, b.address, c.address}


def test_a_chain_is_remembered_weakly_and_not_beyond_its_limit():
    a = topic("a")
    first = ResourceIndex([a])
    latest = first
    for i in range(ResourceIndex.MAX_CHAIN):
        latest = latest.derive(put=[topic(f"t{i}")])
    assert len(latest.changed_since(first)) == ResourceIndex.MAX_CHAIN
    latest = latest.derive(put=[topic("one-more")])
    assert latest.changed_since(first) is None  # MAX_CHAIN + 1 steps back
    second = ResourceIndex([a]).derive(put=[topic("b")])
    kept = second.derive(put=[topic("c")])
    ancestor = weakref.ref(second)
    del second
    gc.collect()
    assert ancestor() is None  # a derived index does not keep its ancestors alive
    assert len(kept) == 3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dependents_carried_along_derivations_equal_dependents_built_afresh(seed):
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(30)]

    def some() -> Resource:
        name = rng.choice(names)
        return topic(name, *{f"pubsub_topic.{rng.choice(names)}" for _ in range(rng.randint(0, 3))})

    index = ResourceIndex([some() for _ in range(20)])
    index.dependents("pubsub_topic.r0")  # built: from now on carried
    for _ in range(50):
        index = index.derive(put=[some() for _ in range(rng.randint(0, 3))],
                             drop=[f"pubsub_topic.{rng.choice(names)}" for _ in range(rng.randint(0, 2))])
        fresh = ResourceIndex(index.values())
        for name in names:
            address = f"pubsub_topic.{name}"
            assert index.dependents(address) == fresh.dependents(address), address


def test_dependents_prepared_on_an_index_are_carried_by_the_indexes_derived_from_it():
    """A full plan prepares its desired index's (`plan_change`): the next commit's index is
    derived from it and carries them, so its scope makes no pass over every resource (issue 14)."""
    a, b = topic("a"), topic("b", "pubsub_topic.a")
    lazy, prepared = ResourceIndex([a, b]), ResourceIndex([a, b]).prepare_dependents()
    assert lazy.derive(put=[topic("c")])._dependents is None  # built on first use, per index
    derived = prepared.derive(put=[topic("c", "pubsub_topic.a")])
    assert derived._dependents is not None  # carried: no pass when first asked
    assert derived.dependents("pubsub_topic.a") == {"pubsub_topic.b", "pubsub_topic.c"}
