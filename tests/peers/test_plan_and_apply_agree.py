"""Every observed state maps to an action that apply performs as planned (a peer planned
``create`` for a job in JOB_STATE_DRAINING; apply then got a 409 and sent an update to the
draining job). Dataflow has no emulator: the official client talks to a local endpoint that
answers as Dataflow does (tests/fake_google.py)."""

from __future__ import annotations

import pytest
from fake_google import FakeGoogle
from google.cloud import dataflow_v1beta3 as dataflow
from helpers import EXAMPLE

from providers import dataflow_settings
from providers.dataflow import GONE, JOB_STATE_PHASES, LEAVING_PHASE, LIVE, DataflowProvider, job_labels
from reconciler.apply import OK, apply_plan
from reconciler.compile import compile_resources
from reconciler.load import load_repo
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind

State = dataflow.JobState
STATE = load_repo(EXAMPLE)
JOB = next(r for r in compile_resources(STATE) if r.kind == Kind.DATAFLOW_JOB and r.name == "payments-ingest")
SETTINGS = dataflow_settings(STATE.platform.project, STATE.platform.region, STATE.platform)


@pytest.fixture
def fake():
    server = FakeGoogle()
    yield server
    server.close()


def test_every_dataflow_job_state_has_one_meaning():
    assert set(JOB_STATE_PHASES) == set(State), "a state the client library knows but the plan does not"
    assert set(JOB_STATE_PHASES.values()) == {LIVE, LEAVING_PHASE, GONE}


@pytest.mark.parametrize(("state", "action"), [
    pytest.param(State.JOB_STATE_DRAINING, Action.REPLACE, id="draining-is-replaced-after-its-drain"),
    pytest.param(State.JOB_STATE_CANCELLING, Action.REPLACE, id="cancelling-too"),
    pytest.param(State.JOB_STATE_RESOURCE_CLEANING_UP, Action.REPLACE, id="cleaning-up-still-holds-the-name"),
    pytest.param(State.JOB_STATE_STOPPED, Action.NOOP, id="stopped-has-not-started-yet-it-is-live"),
    pytest.param(State.JOB_STATE_PENDING, Action.NOOP, id="pending-is-live"),
    pytest.param(State.JOB_STATE_DRAINED, Action.CREATE, id="drained-is-gone"),
    pytest.param(State.JOB_STATE_FAILED, Action.CREATE, id="failed-is-gone"),
])
def test_an_observed_job_state_plans_what_apply_can_do(fake, state, action):
    provider = DataflowProvider(SETTINGS, poll_interval=0.01, **fake.client_kwargs())
    fake.jobs["job-1"] = {"id": "job-1", "name": JOB.name, "type": "JOB_TYPE_STREAMING", "currentState": int(state),
                          "labels": job_labels(JOB)}
    live = provider.observe(Kind.DATAFLOW_JOB)
    (change,) = reconcile([JOB], live, provider.immutable_fields).changes
    assert change.action == action


def test_a_draining_job_is_replaced_after_the_drain_never_updated(fake):
    def drain_finishes(_seconds: float) -> None:  # time passing: Dataflow finishes the drain
        for job in fake.jobs.values():
            if job["currentState"] == int(State.JOB_STATE_DRAINING):
                job["currentState"] = int(State.JOB_STATE_DRAINED)

    provider = DataflowProvider(SETTINGS, poll_interval=0.01, sleep=drain_finishes, **fake.client_kwargs())
    provider.create(JOB)
    (running,) = fake.active()
    running["currentState"] = int(State.JOB_STATE_DRAINING)  # someone drains it

    plan = reconcile([JOB], provider.observe(Kind.DATAFLOW_JOB), provider.immutable_fields)
    (change,) = plan.changes
    assert change.action == Action.REPLACE and "replacing a draining dataflow_job" in change.reason
    fake.requests.clear()

    result = apply_plan(plan, {Kind.DATAFLOW_JOB: provider})
    assert [o.status for o in result.outcomes] == [OK]
    assert not [r for r in fake.requests if r.method == "PUT"], "no second drain of a job already draining"
    launches = [r.body["launchParameter"] for r in fake.requests if r.path.endswith("flexTemplates:launch")]
    assert [bool(launch.get("update")) for launch in launches] == [False], "a fresh launch, never an update"
    (new,) = fake.active()
    assert new["id"] != running["id"] and running["currentState"] == int(State.JOB_STATE_DRAINED)


def test_a_job_that_starts_draining_between_plan_and_apply_is_waited_for_not_updated(fake):
    def drain_finishes(_seconds: float) -> None:
        for job in fake.jobs.values():
            if job["currentState"] == int(State.JOB_STATE_DRAINING):
                job["currentState"] = int(State.JOB_STATE_DRAINED)

    provider = DataflowProvider(SETTINGS, poll_interval=0.01, sleep=drain_finishes, **fake.client_kwargs())
    plan = reconcile([JOB], provider.observe(Kind.DATAFLOW_JOB), provider.immutable_fields)
    assert plan.changes[0].action == Action.CREATE  # nothing there yet
    provider.create(JOB)  # then someone launches it, and drains it, before the apply
    (other,) = fake.active()
    other["currentState"] = int(State.JOB_STATE_DRAINING)
    fake.requests.clear()

    result = apply_plan(plan, {Kind.DATAFLOW_JOB: provider})
    assert [o.status for o in result.outcomes] == [OK]
    launches = [r.body["launchParameter"] for r in fake.requests if r.path.endswith("flexTemplates:launch")]
    assert [bool(launch.get("update")) for launch in launches] == [False, False], \
        "the 409, then a fresh launch after the drain - never an update of the draining job"
    assert len(fake.active()) == 1 and fake.active()[0]["id"] != other["id"]
