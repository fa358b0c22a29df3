"""The daemon's loop logic over the in-memory provider (milliseconds, no emulator): suspension,
startup on an invalid head, refused plans, retries after a failed apply, abandoning work on
shutdown. The same code paths run against the emulators in test_daemon_e2e.py."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from support import get_json, scrape, value, wait_for

from providers.memory import MemoryProvider
from reconciler.resources import Kind


@pytest.fixture
def memory() -> MemoryProvider:
    return MemoryProvider()


def start(start_daemon, repo, provider, **overrides):
    return start_daemon(repo, daemon_kwargs={"providers_factory": lambda platform: [provider]}, **overrides)


def last_sync(running) -> dict | None:
    return get_json(running.base, "/status")["last_sync"]


def result_for(running, revision: str) -> str | None:
    sync = last_sync(running)
    return sync["result"] if sync and sync["revision"] == revision else None


def test_platform_suspend_makes_the_daemon_observe_only(desired_repo, start_daemon, memory):
    desired_repo.edit_yaml("platform.yaml", lambda d: d.update(suspend=True))
    revision = desired_repo.commit_and_push("suspend everything")
    running = start(start_daemon, desired_repo, memory, self_heal=True)
    wait_for(lambda: result_for(running, revision) == "suspended", what="suspended sync")
    assert memory.objects == {}
    status = get_json(running.base, "/status")
    assert status["suspended"] == {"platform": True, "sources": []}
    assert status["revision"] == revision and len(status["pending"]) > 0
    # Drift passes observe and report, but self-heal does not act either.
    wait_for(lambda: any(e["event"] == "drift.heal_skipped" for e in running.logs.events()), what="heal skipped")
    assert memory.objects == {}


def test_a_suspended_source_is_observed_but_never_changed(desired_repo, start_daemon, memory):
    connectors = desired_repo.work_path / "connectors"
    shutil.copy(connectors / "orders.yaml", connectors / "returns.yaml")
    def as_returns(d):
        d.update(source_id="returns", suspend=True, schema=dict(d["schema"], file="schemas/returns.json"))
        d["ingestion"].pop("location", None)  # its own landing prefix (the default, returns/)
        d.pop("serving", None)  # orders' reporting views and features are orders'

    desired_repo.edit_yaml("connectors/returns.yaml", as_returns)
    desired_repo.write("schemas/returns.json", desired_repo.read("schemas/orders.json").replace('"orders"', '"returns"'))
    revision = desired_repo.commit_and_push("returns, suspended")
    running = start(start_daemon, desired_repo, memory, self_heal=True)
    wait_for(lambda: result_for(running, revision) == "converged", what="converged")
    names = {r.name for r in memory.objects.values()}
    assert "orders" in names and "returns" not in names and "returns-ingest" not in names
    status = get_json(running.base, "/status")
    assert status["suspended"]["sources"] == ["returns"]
    assert status["pending"] and all(p["suspended"] for p in status["pending"])
    assert {d["source"] for d in status["drift"]["resources"]} == {"returns"}


def test_starting_on_an_invalid_head_serves_the_newest_valid_ancestor(desired_repo, start_daemon, memory):
    good = desired_repo.repo.head.commit.hexsha
    desired_repo.write("connectors/orders.yaml", "source_id: [not, valid")
    bad = desired_repo.commit_and_push("broken")
    running = start(start_daemon, desired_repo, memory)
    wait_for(lambda: result_for(running, good) == "converged", what="serving the last good revision")
    status = get_json(running.base, "/status")
    assert status["revision"] == good
    assert status["head"]["revision"] == bad and status["head"]["valid"] is False
    assert any(e["event"] == "sync.serving_last_good" for e in running.logs.events())
    assert memory.objects


def test_a_refused_plan_is_not_served_and_not_retried_until_the_branch_moves(desired_repo, start_daemon, memory):
    good = desired_repo.repo.head.commit.hexsha
    running = start(start_daemon, desired_repo, memory)
    wait_for(lambda: result_for(running, good) == "converged", what="converged")
    before = dict(memory.objects)
    (desired_repo.work_path / "connectors/orders.yaml").unlink()
    (desired_repo.work_path / "schemas/orders.json").unlink()
    emptied = desired_repo.commit_and_push("empty connectors/")
    wait_for(lambda: result_for(running, emptied) == "refused", what="refused")
    time.sleep(1.2)
    samples = scrape(running.base)
    assert value(samples, "headwater_reconcile_total", result="refused") == 1
    status = get_json(running.base, "/status")
    assert status["revision"] == good and "no sources" in status["last_sync"]["error"]
    assert memory.objects == before


def test_a_failed_apply_is_retried_with_backoff_until_it_converges(desired_repo, start_daemon, memory):
    memory.fail["pubsub_topic.orders"] = "permission denied (injected)"
    revision = desired_repo.repo.head.commit.hexsha
    running = start(start_daemon, desired_repo, memory, poll_interval=0.3)
    wait_for(lambda: result_for(running, revision) == "failed", what="a failed sync")
    status = get_json(running.base, "/status")
    assert "1 failed" in status["last_sync"]["error"] and status["last_sync"]["retry_in_seconds"] > 0
    assert "pubsub_subscription.orders-ingest" in {p["address"] for p in status["pending"]}  # skipped dependent
    memory.fail.clear()
    wait_for(lambda: result_for(running, revision) == "converged", what="convergence on retry")
    samples = scrape(running.base)
    assert value(samples, "headwater_reconcile_total", result="failed") >= 1
    assert value(samples, "headwater_apply_operations_total", kind="pubsub_subscription", result="skipped") >= 1


class SlowProvider(MemoryProvider):
    """Each change takes a while, so that a shutdown lands in the middle of an apply."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()

    def create(self, resource):
        self.started.set()
        time.sleep(0.2)
        super().create(resource)


def test_shutdown_mid_apply_finishes_calls_in_flight_and_abandons_the_rest(desired_repo, start_daemon):
    slow = SlowProvider()
    running = start(start_daemon, desired_repo, slow, max_workers=1)
    assert slow.started.wait(10)
    began = time.monotonic()
    running.daemon.shutdown()
    assert time.monotonic() - began < 3
    events = running.logs.events()
    abandoned = [e for e in events if e["event"] == "apply.change" and "shutting down" in (e.get("error") or "")]
    assert abandoned, "changes not yet started are abandoned"
    finished = [e for e in events if e["event"] == "sync.finished"]
    assert finished[-1]["result"] == "interrupted"
    assert events[-1]["event"] == "shutdown.complete"
    # Whatever was created is whole (no half-applied resource), and a rerun would converge.
    assert all(r.kind in Kind for r in slow.objects.values())
