"""A local job runs only if it runs against the emulators now in effect (a peer's local runner
kept a job launched against emulators that were gone - another ``local up`` - and planned "No
changes" while nothing was consumed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from providers.localprocess import is_alive
from providers.localrunner import LocalRunnerProvider
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind, Resource

JOB = Resource(Kind.DATAFLOW_JOB, "clicks-ingest",
               {"template": "pubsub_to_bigquery", "streaming": True, "schedule": None,
                "parameters": {"input_subscription": "projects/p/subscriptions/clicks-ingest"},
                "pipeline": {"version": 1}},
               {"managed-by": "headwater", "headwater-platform": "dev"})
OLD = {"PUBSUB_EMULATOR_HOST": "127.0.0.1:8601", "STORAGE_EMULATOR_HOST": "http://127.0.0.1:8602",
       "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:8603"}
NEW = {**OLD, "PUBSUB_EMULATOR_HOST": "127.0.0.1:9701"}


@pytest.fixture
def sleeper(tmp_path: Path) -> str:
    """A "python" that ignores the pipeline's arguments and just runs: a real process to track."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\nexec sleep 120\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_a_local_job_left_on_gone_emulators_is_missing_and_relaunched(tmp_path, sleeper, monkeypatch):
    for var, value in OLD.items():
        monkeypatch.setenv(var, value)
    runner = LocalRunnerProvider("p", tmp_path / "state", python=sleeper, run_jobs=True, services=False)
    runner.create(JOB)
    first = runner.record(JOB.name)
    assert [r.name for r in runner.observe(Kind.DATAFLOW_JOB)] == [JOB.name]

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", NEW["PUBSUB_EMULATOR_HOST"])  # another `headwater local up`
    assert runner.observe(Kind.DATAFLOW_JOB) == [], "its process lives on, but it is not running here"
    assert is_alive(first.pid, first.process_start)
    (change,) = reconcile([JOB], runner.observe(Kind.DATAFLOW_JOB), runner.immutable_fields).changes
    assert change.action == Action.CREATE

    runner.create(JOB)  # what apply does with that change: the stale process goes, a new one starts
    second = runner.record(JOB.name)
    assert second.pid != first.pid and second.endpoints == {**OLD, **NEW}
    assert not is_alive(first.pid, first.process_start)
    assert [r.name for r in runner.observe(Kind.DATAFLOW_JOB)] == [JOB.name]
    runner.delete(JOB)


def test_a_record_without_its_endpoints_is_not_trusted_to_run(tmp_path, monkeypatch):
    import json

    for var, value in OLD.items():
        monkeypatch.setenv(var, value)
    runner = LocalRunnerProvider("p", tmp_path / "state", run_jobs=False, services=False)
    runner.create(JOB)
    path = tmp_path / "state" / "jobs" / "p" / f"{JOB.name}.json"
    record = json.loads(path.read_text())
    record.pop("endpoints")  # written by an older headwater
    path.write_text(json.dumps(record))
    assert runner.observe(Kind.DATAFLOW_JOB) == []
    assert os.environ["PUBSUB_EMULATOR_HOST"] == OLD["PUBSUB_EMULATOR_HOST"]
