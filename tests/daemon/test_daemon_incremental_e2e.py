"""Issue 14 end to end on the emulators: a one-source commit is planned incrementally by the daemon
with the real providers (reads by name through the Google clients, kinds without a reader observed
whole), converges, and a full plan made afterwards agrees that nothing is left to do."""

from __future__ import annotations

import pytest
from support import get_json, scrape, value, wait_for

from reconciler.engine import plan_options
from reconciler.load import load_repo

pytestmark = pytest.mark.usefixtures("emulators")


def converged(running, revision: str) -> bool:
    last = get_json(running.base, "/status")["last_sync"]
    return bool(last and last["revision"] == revision and last["result"] == "converged")


def test_a_one_source_commit_converges_incrementally_on_the_emulators(desired_repo, start_daemon, tmp_path):
    first = desired_repo.repo.head.commit.hexsha
    running = start_daemon(desired_repo, drift_interval=3600.0)
    wait_for(lambda: converged(running, first), timeout=60, what="initial convergence")

    desired_repo.edit_yaml("connectors/orders.yaml", lambda d: d.update(description="orders, read by name"))
    second = desired_repo.commit_and_push("orders: a new description")
    wait_for(lambda: converged(running, second), timeout=60, what="the commit converged")

    plans = [e for e in running.logs.events() if e["event"] == "plan.observed"]
    assert plans[-1]["mode"] == "incremental", plans[-1]
    assert plans[-1]["read"] > 0
    samples = scrape(running.base)
    assert value(samples, "headwater_plans_total", mode="incremental") == 1
    assert value(samples, "headwater_api_requests_total", service="bigquery", method="get_table") >= 1

    # A full plan of the same revision, through the daemon's own engine (same providers), is clean.
    state = load_repo(desired_repo.work_path)
    engine = running.daemon._engine(running.daemon._served)
    assert not engine.plan(state, plan_options(state)).actionable
