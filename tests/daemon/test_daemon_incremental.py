"""Issue 14 in the daemon, over the in-memory provider: a sync after a commit plans incrementally
(reads only what the commit touches), the check after its apply reads only what was applied,
drift passes observe in full, and `Daemon.invalidate` (the asset feed's hook) gets an address
checked for drift at once. The equivalence of the plans is proven in
tests/test_incremental_equivalence.py; here, the wiring."""

from __future__ import annotations

import dataclasses

import pytest
from support import get_json, scrape, value, wait_for

from providers.memory import MemoryProvider


@pytest.fixture
def memory() -> MemoryProvider:
    return MemoryProvider()


def start(start_daemon, repo, provider, **overrides):
    return start_daemon(repo, daemon_kwargs={"providers_factory": lambda platform: [provider]}, **overrides)


def result_for(running, revision: str) -> str | None:
    sync = get_json(running.base, "/status")["last_sync"]
    return sync["result"] if sync and sync["revision"] == revision else None


def planned(running) -> list[dict]:
    return [e for e in running.logs.events() if e["event"] == "plan.observed"]


def test_a_commit_is_planned_incrementally_and_rechecked_by_what_was_applied(desired_repo, start_daemon, memory,
                                                                             monkeypatch):
    # The daemon asks git what changed, so file times (and the racy window) play no part: even a
    # commit right after the clone reuses every unchanged source.
    monkeypatch.setattr("reconciler.load.RACY_WINDOW_NS", 10**15)
    first = desired_repo.repo.head.commit.hexsha
    running = start(start_daemon, desired_repo, memory, drift_interval=3600.0)
    wait_for(lambda: result_for(running, first) == "converged", what="first sync")
    assert [p["mode"] for p in planned(running)] == ["full"]  # nothing to compare with yet

    desired_repo.edit_yaml("connectors/orders.yaml", lambda d: d.update(description="orders, incrementally"))
    second = desired_repo.commit_and_push("orders: a new description")
    wait_for(lambda: result_for(running, second) == "converged", what="second sync")
    last = planned(running)[-1]
    assert last["mode"] == "incremental" and last["changed"] >= 1
    assert 0 < last["read"] < len(memory.objects) / 2 and last["observed_kinds"] == 0
    assert memory.objects["bigquery_table.silver.orders"].spec["description"] == "orders, incrementally"
    loads = [e for e in running.logs.events() if e["event"] == "sync.loaded"]
    assert loads[0]["reused_sources"] == 0
    cdc = sum(1 for s in running.daemon._loaded.sources if s.tables)  # database_cdc sources are always read
    assert loads[-1]["reused_sources"] == loads[-1]["sources"] - 1 - cdc  # all but orders
    samples = scrape(running.base)
    assert value(samples, "headwater_plans_total", mode="full") == 1
    assert value(samples, "headwater_plans_total", mode="incremental") == 1
    assert value(samples, "headwater_plans_total", mode="recheck") == 2  # one per apply
    assert value(samples, "headwater_observe_calls_total", call="read") >= 1
    assert get_json(running.base, "/status")["settings"]["incremental"] is True


def test_drift_passes_observe_in_full_and_find_drift_outside_the_commit(desired_repo, start_daemon, memory):
    first = desired_repo.repo.head.commit.hexsha
    running = start(start_daemon, desired_repo, memory, drift_interval=0.5, drift_jitter=0.0)
    wait_for(lambda: result_for(running, first) == "converged", what="first sync")
    topic = memory.objects["pubsub_topic.orders"]
    memory.objects[topic.address] = dataclasses.replace(topic, labels={**topic.labels, "team": "changed-by-hand"})
    drifted = wait_for(lambda: [d for d in get_json(running.base, "/status")["drift"]["resources"]
                                if d["address"] == "pubsub_topic.orders"], what="drift found by a full pass")
    assert drifted[0]["state"] == "drifted"
    assert value(scrape(running.base), "headwater_plans_total", mode="full") >= 2


def test_invalidate_checks_the_address_at_once(desired_repo, start_daemon, memory):
    first = desired_repo.repo.head.commit.hexsha
    running = start(start_daemon, desired_repo, memory, drift_interval=3600.0)
    wait_for(lambda: result_for(running, first) == "converged", what="first sync")
    topic = memory.objects["pubsub_topic.orders"]
    memory.objects[topic.address] = dataclasses.replace(topic, labels={**topic.labels, "team": "changed-by-hand"})
    assert running.daemon.invalidate(["pubsub_topic.orders"]) == 1
    wait_for(lambda: [d for d in get_json(running.base, "/status")["drift"]["resources"]
                      if d["address"] == "pubsub_topic.orders"], what="drift found by re-reading the address")
    last = planned(running)[-1]
    assert last["mode"] == "incremental" and last["read"] == 1
    assert value(scrape(running.base), "headwater_plans_total", mode="full") == 1  # no full observe needed


def test_no_incremental_observes_everything_on_every_sync(desired_repo, start_daemon, memory):
    first = desired_repo.repo.head.commit.hexsha
    running = start(start_daemon, desired_repo, memory, drift_interval=3600.0, incremental=False)
    wait_for(lambda: result_for(running, first) == "converged", what="first sync")
    desired_repo.edit_yaml("connectors/orders.yaml", lambda d: d.update(description="orders, in full"))
    second = desired_repo.commit_and_push("orders: a new description")
    wait_for(lambda: result_for(running, second) == "converged", what="second sync")
    assert {p["mode"] for p in planned(running)} == {"full"}
    assert value(scrape(running.base), "headwater_plans_total", mode="incremental") == 0
