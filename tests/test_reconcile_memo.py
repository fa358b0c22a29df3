"""Issue 14: `reconcile(memo=...)` reuses the last reconcile's decision for a resource whose desired
and live objects are unchanged, and the plan is exactly the plan without the memo."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.plan import Action, PlanOptions, ReconcileMemo, reconcile
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, PLATFORM_KEY, Kind, Resource, ResourceIndex

LABELS = {MANAGED_BY_KEY: MANAGED_BY_VALUE, PLATFORM_KEY: "test"}
IMMUTABLE = {Kind.PUBSUB_SUBSCRIPTION: frozenset({"topic"})}


def topic(name: str, retention: str = "604800s", **labels: str) -> Resource:
    return Resource(Kind.PUBSUB_TOPIC, name, spec={"message_retention_duration": retention},
                    labels={**LABELS, **labels})


def subscription(name: str, on: str, deadline: int = 60) -> Resource:
    return Resource(Kind.PUBSUB_SUBSCRIPTION, name, spec={"topic": on, "ack_deadline_seconds": deadline},
                    labels=dict(LABELS), depends_on=(f"pubsub_topic.{on}",), deletion_protection=False)


def plans(desired, live, options=PlanOptions(), memo=None):
    """The plan with ``memo`` and the plan without one: they must be equal."""
    # A fresh (equal) mapping each time, as `Engine.immutable_fields` makes one per plan.
    return (reconcile(desired, live, dict(IMMUTABLE), options, memo=memo),
            reconcile(desired, live, dict(IMMUTABLE), options))


def test_unchanged_objects_keep_their_decisions_and_the_plan_is_the_same():
    desired = [topic("a"), topic("b"), subscription("s", "a")]
    live = [topic("a"), topic("b", retention="86400s"), subscription("s", "a", deadline=30)]
    memo = ReconcileMemo()
    first, plain = plans(desired, live, memo=memo)
    assert first == plain and memo.hits == 0 and len(memo) == 3
    second, plain = plans(desired, live, memo=memo)
    assert second == plain
    assert memo.hits == 3
    assert {c.address: c.action for c in second.changes} == {
        "pubsub_topic.a": Action.NOOP, "pubsub_topic.b": Action.UPDATE, "pubsub_subscription.s": Action.UPDATE}


def test_a_new_object_is_diffed_again_even_when_equal_to_the_old_one():
    desired = [topic("a"), topic("b")]
    live = [topic("a"), topic("b")]
    memo = ReconcileMemo()
    plans(desired, live, memo=memo)
    changed_live = [live[0], topic("b", retention="1s")]  # a re-read found b changed
    after, plain = plans(desired, changed_live, memo=memo)
    assert after == plain and memo.hits == 1
    assert [c.action for c in after.changes if c.address == "pubsub_topic.b"] == [Action.UPDATE]


def test_other_options_decide_afresh():
    desired = [subscription("s", "b")]
    live = [subscription("s", "a")]  # topic is immutable: a replace, blocked without --allow-destroy
    memo = ReconcileMemo()
    blocked, _ = plans(desired, live, memo=memo)
    assert blocked.changes[0].action == Action.REPLACE and blocked.changes[0].blocked
    allowed, plain = plans(desired, live, PlanOptions(allow_destroy=True), memo=memo)
    assert allowed == plain and memo.hits == 0
    assert not allowed.changes[0].blocked


def test_blocking_still_follows_the_dependencies_of_reused_decisions():
    """A reused decision of a dependent is blocked afresh when what it depends on becomes blocked."""
    sub_desired = subscription("s", "a", deadline=90)
    desired = [topic("a"), sub_desired]
    live = [topic("a"), subscription("s", "a")]
    memo = ReconcileMemo()
    plans(desired, live, memo=memo)
    taken = dataclasses.replace(live[0], labels={"owner": "someone-else"})  # topic a is no longer ours
    after, plain = plans(desired, [taken, live[1]], memo=memo)
    assert after == plain and memo.hits == 1
    sub = next(c for c in after.changes if c.address == "pubsub_subscription.s")
    assert sub.blocked and sub.blocked_by == ("pubsub_topic.a",)


def test_the_memo_keeps_only_what_the_last_reconcile_used():
    memo = ReconcileMemo()
    desired = [topic(f"t{i}") for i in range(5)]
    live = list(desired)
    plans(desired, live, memo=memo)
    plans(desired[:2], live[:2], memo=memo)
    assert len(memo) == 2


def views(plan):
    """What `Plan`'s views say, and what a scan of its changes finds (`reconcile` hands the views
    over ready-made): the two must be equal."""
    scanned = dataclasses.replace(plan)  # a new Plan of the same changes: its views are scans
    return [(p.non_noop, p.actionable, p.blocked, p.kept, dict(p.declared_counts), p.summary(), p.has_changes)
            for p in (plan, scanned)]


@pytest.mark.parametrize("inputs", ["lists", "derived-indexes"])
def test_a_random_walk_of_changes_plans_as_without_a_memo(inputs):
    """Each step changes a few inputs at random - desired added, removed or modified, live
    changed, gone, taken by someone else, leaving, or an orphan appearing; options now and then
    - and the memo's plan must equal the plain one (both reconcile the very same inputs).

    ``lists``: the inputs are given as resources, and the memo finds what changed by comparing
    every address; ``derived-indexes``: as `ResourceIndex`es each derived from the last, as
    compile's memo and the observed-state cache give them, and the memo takes what changed
    from them (`ResourceIndex.changed_since`)."""
    import random

    rng = random.Random(1414)
    desired = {f"t{i}": topic(f"t{i}") for i in range(40)}
    desired.update({f"s{i}": subscription(f"s{i}", f"t{i % 40}") for i in range(40)})
    live = {name: r for name, r in desired.items() if rng.random() < 0.9}
    memo = ReconcileMemo()
    options = PlanOptions()
    reused = 0
    desired_index, live_index = ResourceIndex(desired.values()), ResourceIndex(live.values())
    for step in range(300):
        before_desired, before_live = dict(desired), dict(live)
        for _ in range(rng.randint(1, 4)):
            name = rng.choice(sorted(set(desired) | set(live) | {f"x{rng.randint(0, 9)}"}))
            roll = rng.random()
            if roll < 0.2:
                desired.pop(name, None)
            elif roll < 0.4:
                desired[name] = (topic(name, retention=rng.choice(["604800s", "86400s"])) if name[0] != "s"
                                 else subscription(name, rng.choice(["t1", "t2"]), rng.choice([30, 60])))
            elif roll < 0.55:
                live.pop(name, None)
            elif roll < 0.7 and name in desired:
                live[name] = dataclasses.replace(desired[name])  # equal, but another object
            elif roll < 0.8 and name in live:
                live[name] = dataclasses.replace(live[name], labels={"owner": "someone-else"})
            elif roll < 0.85 and name in live:
                live[name] = dataclasses.replace(live[name], status={"leaving": "deleting"})
            else:
                live[name] = topic(name, retention="3600s") if name[0] != "s" else subscription(name, "t3")
        if step % 50 == 49:
            options = PlanOptions(prune=not options.prune, allow_destroy=rng.random() < 0.5)
        if inputs == "lists":
            given = list(desired.values()), list(live.values())
        else:
            for (now, before), index in (((desired, before_desired), "desired"), ((live, before_live), "live")):
                put = [r for name, r in now.items() if before.get(name) is not r]
                drop = [before[name].address for name in before.keys() - now.keys()]
                if index == "desired":
                    desired_index = desired_index.derive(put, drop)
                else:
                    live_index = live_index.derive(put, drop)
            given = desired_index, live_index
        with_memo, plain = plans(*given, options, memo=memo)
        assert with_memo == plain, f"step {step}"
        assert views(with_memo)[0] == views(with_memo)[1], f"step {step}"
        reused += memo.hits
    assert reused > 300 * 40  # most decisions were reused, not made again
