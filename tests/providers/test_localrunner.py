"""The local runner: Dataflow jobs as real Beam pipelines on this machine, tracked like Dataflow's.

The emulator test starts a real streaming job (and its gold batch job) through apply, sends it
records, updates it, and stops it; the others check the bookkeeping without the emulators.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml, isolate_platform

from providers import bigquery_data, build_providers, pubsub_data
from providers.errors import AlreadyExists
from providers.localrunner import (
    LocalRunnerProvider,
    child_env,
    load_records,
    next_tick,
    pipeline_argv,
    stop_all,
)
from reconciler.engine import Engine, plan_options
from reconciler.load import load_repo
from reconciler.plan import Action
from reconciler.resources import Kind, Resource

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# --------------------------------------------------------------------------- cron


@pytest.mark.parametrize(("expression", "after", "expected"), [
    ("0 3 * * *", "2026-11-26 07:41", "2026-11-27 03:00"),
    ("0 3 * * *", "2026-11-26 02:59", "2026-11-26 03:00"),
    ("30 * * * *", "2026-11-26 07:30", "2026-11-26 08:30"),
    ("*/15 * * * *", "2026-11-26 07:41", "2026-11-26 07:45"),
    ("0 9 * * mon-fri", "2026-11-27 10:00", "2026-11-30 09:00"),  # Friday after 9 -> Monday
    ("0 0 1 jan *", "2026-11-26 00:00", "2027-01-01 00:00"),
    ("0 0 13 * 5", "2026-11-26 00:00", "2026-11-27 00:00"),  # day 13 OR a Friday: cron's either-day rule
    ("5 4 * * 7", "2026-11-26 00:00", "2026-11-29 04:05"),  # 7 is Sunday too
])
def test_next_tick(expression, after, expected):
    assert next_tick(expression, at(after)) == at(expected)


# --------------------------------------------------------------------------- bookkeeping


def job(name="clicks-ingest", template="pubsub_to_bigquery", streaming=True, **spec) -> Resource:
    return Resource(Kind.DATAFLOW_JOB, name, {
        "template": template, "streaming": streaming, "schedule": None if streaming else "0 3 * * *",
        "parameters": {"input_subscription": "projects/p/subscriptions/clicks-ingest"},
        "pipeline": {"version": 1, "source_id": "clicks"}, **spec,
    }, {"managed-by": "headwater", "headwater-source": "clicks"})


def test_the_pipeline_command_line_and_environment(tmp_path):
    argv = pipeline_argv(job(), tmp_path / "spec.json", python="python3")
    assert argv == ["python3", "-m", "beam.pubsub_to_bigquery", f"--source_spec={tmp_path / 'spec.json'}",
                    "--input_subscription=projects/p/subscriptions/clicks-ingest", "--runner=local"]
    env = child_env("proj", {"PUBSUB_EMULATOR_HOST": "127.0.0.1:1"})
    assert env["GOOGLE_CLOUD_PROJECT"] == "proj" and env["GCE_METADATA_HOST"] == "127.0.0.1:9"
    assert "GCE_METADATA_HOST" not in child_env("proj", {}), "on real GCP the metadata server is the credential source"


def test_recorded_jobs_keep_the_contract_without_processes(tmp_path):
    runner = LocalRunnerProvider("proj", tmp_path, run_jobs=False)
    runner.create(job())
    with pytest.raises(AlreadyExists):
        runner.create(job())
    (live,) = runner.observe(Kind.DATAFLOW_JOB)
    assert live.spec == job().spec and live.labels == job().labels
    assert LocalRunnerProvider("other-project", tmp_path, run_jobs=False).observe(Kind.DATAFLOW_JOB) == []
    changed = job(parameters={"input_subscription": "projects/p/subscriptions/new"})
    runner.update(changed, ["parameters"])
    assert runner.observe(Kind.DATAFLOW_JOB)[0].spec["parameters"] == changed.spec["parameters"]
    runner.delete(changed)
    runner.delete(changed)  # idempotent
    assert runner.observe(Kind.DATAFLOW_JOB) == [] and load_records(tmp_path) == []


def test_an_ended_job_is_history_not_a_live_job(tmp_path):
    runner = LocalRunnerProvider("proj", tmp_path, run_jobs=True)
    runner.create(job(template="no_such_template"))  # python -m beam.no_such_template exits at once
    deadline = time.monotonic() + 30
    while runner.observe(Kind.DATAFLOW_JOB) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runner.observe(Kind.DATAFLOW_JOB) == []
    record = runner.record("clicks-ingest")
    assert "No module named beam.no_such_template" in Path(record.log).read_text()
    runner.create(job(template="no_such_template"))  # a later apply launches it again


def test_a_reused_pid_is_not_mistaken_for_the_job(tmp_path):
    runner = LocalRunnerProvider("proj", tmp_path, run_jobs=False)
    runner.create(job())
    path = tmp_path / "jobs" / "proj" / "clicks-ingest.json"
    record = json.loads(path.read_text())
    # Our own PID is alive, but it is not the process the record was made for.
    path.write_text(json.dumps({**record, "recorded_only": False, "pid": os.getpid(), "process_start": "1"}))
    assert runner.observe(Kind.DATAFLOW_JOB) == []


# --------------------------------------------------------------------------- a real job


@pytest.fixture
def platform(tmp_path, emulators, project_id, unique, monkeypatch):
    """The example trimmed to the payments source (as event streaming) on a fresh project, jobs really run."""
    monkeypatch.setenv("HEADWATER_LOCAL_JOBS", "run")
    repo = copy_example(tmp_path, sources=["payments"])
    isolate_platform(repo, project_id, unique)
    # Events published to its topic by the test: the connector (tests/providers/
    # test_localrunner_services.py) is not what this test is about.
    edit_yaml(repo / "connectors" / "payments.yaml", lambda d: (d.update(ingestion={"pattern": "event_streaming"}),
                                                                d.pop("serving", None)))
    state_dir = tmp_path / "state"
    yield repo, state_dir
    stop_all(state_dir)


def engine_for(repo: Path, state_dir: Path):
    state = load_repo(repo)
    engine = Engine(build_providers(state.platform.project, state.platform.region, runner="local",
                                    state_dir=state_dir, platform=state.platform))
    return engine, state


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_a_local_streaming_job_runs_updates_and_stops(platform, project_id):
    repo, state_dir = platform
    engine, state = engine_for(repo, state_dir)
    result = engine.apply(engine.plan(state, plan_options(state)))
    assert result.ok, result.summary()
    runner = engine.providers[Kind.DATAFLOW_JOB]
    assert {r.name for r in engine.observe([Kind.DATAFLOW_JOB])} == {"payments-ingest", "payments-gold-payments-daily"}
    assert not engine.plan(state, plan_options(state)).has_changes, "jobs outlive apply and are observed"

    # Records in: two good ones and one with a status the rules do not allow.
    good = [{"charge_id": f"ch_{i}", "amount": 10.0 * i, "currency": "EUR", "status": "succeeded",
             "created_at": "2026-11-26T08:00:00Z"} for i in (1, 2)]
    bad = {**good[0], "charge_id": "ch_3", "status": "refunded"}
    pubsub_data.publish(project_id, "payments", [json.dumps(r).encode() for r in [*good, bad]])
    silver = f"{project_id}.silver.payments"
    wait_for(lambda: bigquery_data.count_rows(project_id, silver) == 2, 60, "2 Silver rows")
    letters = wait_for(lambda: pubsub_data.pull_available(project_id, "payments-dlq-hold"), 30, "a dead letter")
    assert [(m.attributes["reason"], json.loads(m.data)) for m in letters] == [("dq_allowed_values", bad)]

    # A batch job (gold) runs on request, and its runs are recorded.
    gold = "payments-gold-payments-daily"
    status = runner.wait_for_run(gold, runner.run_now(gold), 60)
    assert status["last_exit_code"] == 0 and status["next_run_at"].endswith(":30:00+00:00")
    assert bigquery_data.count_rows(project_id, f"{project_id}.gold.payments_daily") == 1

    # A rule change is an update: the job is relaunched with the new spec.
    before = runner.record("payments-ingest").pid
    edit_yaml(repo / "connectors" / "payments.yaml", lambda d: d["processing"]["bronze_to_silver"][1]["data_quality"][
        "rules"][1]["values"].append("refunded"))
    engine, state = engine_for(repo, state_dir)
    plan = engine.plan(state, plan_options(state))
    (change,) = [c for c in plan.changes if c.action != Action.NOOP]
    assert (change.address, change.action) == ("dataflow_job.payments-ingest", Action.UPDATE)
    # allowed_values is a set: compared (and diffed) in its canonical, sorted order (reconciler.semantic)
    assert [(d.path, d.after) for d in change.diff] == [("pipeline.data_quality[1].values[2]", "refunded")]
    assert engine.apply(plan).ok
    after = runner.record("payments-ingest")
    assert after.pid != before and "refunded" in json.dumps(after.spec)
    assert not engine.plan(state, plan_options(state)).has_changes

    # A change of the dataflow: block alone is planned (Dataflow would use it) but restarts no
    # local process, which does not use it.
    edit_yaml(repo / "platform.yaml", lambda d: d.update(dataflow={"max_workers": 3}))
    engine, state = engine_for(repo, state_dir)
    plan = engine.plan(state, plan_options(state))
    assert {(c.address, c.update_fields) for c in plan.changes if c.action != Action.NOOP} == {
        ("dataflow_job.payments-ingest", ("environment",)), (f"dataflow_job.{gold}", ("environment",))}
    assert engine.apply(plan).ok
    assert runner.record("payments-ingest").pid == after.pid, "not restarted"
    assert runner.record("payments-ingest").spec["environment"] == {"max_workers": 3}
    assert not engine.plan(state, plan_options(state)).has_changes

    # Delete stops the process (gracefully for a streaming job) and forgets it.
    job = next(r for r in engine.observe([Kind.DATAFLOW_JOB]) if r.name == "payments-ingest")
    runner.delete(job)
    assert not Path(f"/proc/{after.pid}").exists() or "Z" in Path(f"/proc/{after.pid}/stat").read_text().split()[2]
    assert [r.name for r in engine.observe([Kind.DATAFLOW_JOB])] == [gold]
    assert runner.status(gold)["runs"] == 2
