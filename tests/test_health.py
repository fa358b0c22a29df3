"""Health beside sync (issue 11), over the in-memory provider and a git repo: the verdicts
(reconciler.health), ``headwater status`` (text, JSON, exit codes), drift that names its commit
(reconciler.blame, ``headwater drift``), references checked at plan time, and the alerts and
metrics the daemon derives (reconciler.daemon.health_loop)."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml

from providers.memory import MemoryProvider
from reconciler import cli, status
from reconciler.compile import compile_resources
from reconciler.daemon.alerts import Alerter
from reconciler.daemon.health_loop import HealthMonitor, conditions_of
from reconciler.daemon.metrics import Metrics
from reconciler.engine import Engine, plan_options
from reconciler.health import (
    Health,
    Observation,
    assess,
    judge_dead_letters,
    judge_freshness,
    sync_states,
    worst,
)
from reconciler.load import InvalidDesiredState, load_repo
from reconciler.resources import Kind

NOW = 1_800_000_000.0


class HealthyMemory(MemoryProvider):
    """The in-memory provider with the health ability: ``observations`` by address; a Silver table
    without one has just received a record (at ``now()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.observations: dict[str, Observation] = {}
        self.now = time.time

    def health(self, resources):
        fresh = Observation(signals={"last_record_at": self.now(), "freshness_basis": "test"})
        return {r.address: self.observations.get(r.address, fresh) for r in resources
                if r.address in self.observations or r.address.startswith("bigquery_table.silver.")}


def git(repo: Path, *args: str, author: str = "Alice Example <alice@example.com>") -> str:
    name, email = author.rsplit(" <", 1)
    env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">"), "GIT_COMMITTER_NAME": name,
           "GIT_COMMITTER_EMAIL": email.rstrip(">"), "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The example, committed by Alice."""
    repo = copy_example(tmp_path)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the example platform")
    return repo


@pytest.fixture
def applied(repo):
    """``(state, engine, provider)`` with the example applied to memory."""
    provider = HealthyMemory()
    engine = Engine([provider])
    state = load_repo(repo)
    engine.apply(engine.plan(state))
    return state, engine, provider


# --------------------------------------------------------------------------- the verdicts


def test_severity_puts_a_known_failure_above_an_unknown():
    assert worst([Health.HEALTHY, Health.PROGRESSING]) == Health.PROGRESSING
    assert worst([Health.UNKNOWN, Health.DEGRADED, Health.MISSING]) == Health.DEGRADED
    assert worst([Health.UNKNOWN, Health.MISSING]) == Health.MISSING
    assert worst([]) == Health.HEALTHY


def test_freshness_against_the_sla():
    silver = Observation(signals={"last_record_at": NOW - 61 * 60, "created_at": NOW - 86400})
    breached = judge_freshness(silver, None, 60, NOW)
    assert breached.breached and breached.age_seconds == 61 * 60 and breached.sla_seconds == 3600
    assert judge_freshness(silver, None, 90, NOW).breached is False
    assert judge_freshness(silver, None, None, NOW).breached is None, "no SLA: shown, judges nothing"
    # No record yet: the age runs from the table's creation.
    empty = judge_freshness(Observation(signals={"last_record_at": None, "created_at": NOW - 600}), None, 5, NOW)
    assert empty.breached and empty.age_seconds == 600 and "no record yet" in empty.basis
    # Records waiting in the ingest subscription longer than the SLA breach it too.
    waiting = judge_freshness(silver, Observation(signals={"oldest_unacked_age_seconds": 7200.0}), 90, NOW)
    assert waiting.breached
    assert judge_freshness(None, None, 60, NOW).breached is None


def test_dead_letters_against_the_budget_need_two_observations():
    hold, bronze = Observation(signals={"backlog": 12}), Observation(signals={"rows": 200})
    first = judge_dead_letters(hold, bronze, 5.0, None, None)
    assert first.backlog == 12 and first.over_budget is None
    second = judge_dead_letters(Observation(signals={"backlog": 22}), Observation(signals={"rows": 300}), 5.0, first, 60)
    assert (second.growth, second.received, second.error_rate_percent, second.over_budget) == (10, 100, 10.0, True)
    within = judge_dead_letters(Observation(signals={"backlog": 23}), Observation(signals={"rows": 400}), 5.0, second, 60)
    assert within.error_rate_percent == 1.0 and within.over_budget is False
    # Dead letters with no record received (a connector's unparseable pages): 100 %.
    alone = judge_dead_letters(Observation(signals={"backlog": 30}), Observation(signals={"rows": 400}), 5.0, within, 60)
    assert alone.error_rate_percent == 100.0 and alone.over_budget


def test_a_crashed_job_is_degraded_with_its_reason_not_just_missing(applied):
    state, engine, provider = applied
    job = "dataflow_job.orders-ingest"
    del provider.objects[job]  # a crashed local job is not observed: the plan sees it missing
    provider.observations[job] = Observation(Health.DEGRADED, "the pipeline process has ended: ValueError: boom",
                                             error="ValueError: boom", log_tail=("line 1", "ValueError: boom"))
    health, plan = status.check(state, engine)
    orders = health.source("orders")
    resource = next(r for r in orders.resources if r.address == job)
    assert (resource.health, resource.sync, resource.sync_detail) == (Health.DEGRADED, "OutOfSync", "missing")
    assert resource.error == "ValueError: boom" and resource.log_tail == ("line 1", "ValueError: boom")
    assert orders.health == Health.DEGRADED and orders.sync == "OutOfSync"
    assert [c.kind for c in orders.conditions] == ["job"]
    assert health.source("payments").health == Health.HEALTHY


def test_a_missing_resource_is_missing_and_a_failed_observation_unknown(applied):
    state, engine, provider = applied
    del provider.objects["pubsub_topic.payments-dlq"]
    resources = compile_resources(state)
    health = assess(state, resources, sync_states(engine.plan(state)), {},
                    errors={"bigquery_table.silver.clickstream": "could not observe health: Timeout"}, now=NOW)
    assert health.source("payments").health == Health.MISSING
    assert health.source("clickstream").health == Health.UNKNOWN
    assert health.health == Health.MISSING


# --------------------------------------------------------------------------- headwater status


def test_status_text_json_and_exit_codes(applied, monkeypatch, capsys, repo):
    state, engine, provider = applied
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: engine)
    assert cli.main(["status", "--repo", str(repo)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("headwater status of headwater-demo at revision ") and "Healthy, 0 of" in lines[0]
    assert lines[2].split() == ["SOURCE", "SYNC", "HEALTH", "FRESHNESS", "DEAD", "LETTERS", "LAST", "CHANGE"]
    orders = next(line for line in lines if line.startswith("orders "))
    assert "Synced" in orders and "Healthy" in orders and "Alice Example" in orders

    provider.observations["bigquery_table.silver.orders"] = Observation(
        signals={"last_record_at": time.time() - 2 * 3600, "freshness_basis": "test"})
    provider.observations["pubsub_subscription.orders-dlq-hold"] = Observation(signals={"backlog": 5})
    assert cli.main(["status", "--repo", str(repo)]) == 2
    out = capsys.readouterr().out
    orders = next(line for line in out.splitlines() if line.startswith("orders "))
    assert "Degraded" in orders and "2h00m ago / SLA 60m BREACHED" in orders and " 5 " in orders
    assert "  - SLA breached: newest record 2h00m old > SLA 60m" in out

    assert cli.main(["status", "--repo", str(repo), "--format", "json"]) == 2
    document = json.loads(capsys.readouterr().out)
    assert document["format_version"] == "1" and document["health"] == "Degraded"
    source = next(s for s in document["sources"] if s["source_id"] == "orders")
    assert source["freshness"]["breached"] is True and source["freshness"]["sla_seconds"] == 3600
    assert source["dead_letters"]["backlog"] == 5 and source["dead_letters"]["over_budget"] is None
    assert source["last_change"]["author"] == "Alice Example"
    assert {"address", "kind", "name", "sync", "sync_detail", "health", "reason", "error", "log_tail"} <= \
        set(source["resources"][0])


def test_status_of_an_invalid_repo_exits_1(repo, capsys):
    edit_yaml(repo / "connectors" / "orders.yaml", lambda d: d["monitoring"].update(sla_minutes=0))
    assert cli.main(["status", "--repo", str(repo)]) == 1
    assert "sla_minutes 0 is not a freshness SLA" in capsys.readouterr().err


# --------------------------------------------------------------------------- drift names its commit


def test_drift_names_the_commit_author_and_line_that_set_the_value(applied, repo, monkeypatch, capsys):
    state, engine, provider = applied
    platform = (repo / "platform.yaml").read_text()
    (repo / "platform.yaml").write_text(platform.replace("ack_deadline_seconds: 60", "ack_deadline_seconds: 45"))
    git(repo, "commit", "-qam", "slower consumers need longer acks", author="Bob Builder <bob@example.com>")
    bob = git(repo, "rev-parse", "HEAD")
    line = next(n for n, text in enumerate((repo / "platform.yaml").read_text().splitlines(), 1)
                if "ack_deadline_seconds: 45" in text)
    engine.apply(engine.plan(load_repo(repo)))
    address = "pubsub_subscription.orders-ingest"
    live = provider.objects[address]
    provider.objects[address] = replace(live, spec={**live.spec, "ack_deadline_seconds": 20,
                                                    "expiration_ttl": 86400})  # changed by hand
    del provider.objects["pubsub_topic.payments-dlq"]

    monkeypatch.setattr(cli, "_engine", lambda state, args=None: engine)
    assert cli.main(["drift", "--repo", str(repo), "--format", "json"]) == 2
    drift = {d["address"]: d for d in json.loads(capsys.readouterr().out)["drift"]}
    fields = {f["path"]: f for f in drift[address]["fields"]}
    origin = fields["ack_deadline_seconds"]["origin"]
    assert (origin["commit"], origin["author"], origin["email"]) == (bob, "Bob Builder", "bob@example.com")
    assert (origin["file"], origin["line"], origin["field"]) == ("platform.yaml", line, "pubsub.ack_deadline_seconds")
    assert origin["summary"] == "slower consumers need longer acks" and origin["date"] and not origin["default"]
    assert fields["expiration_ttl"]["origin"]["default"] is True, "a value no line sets says so"
    missing = drift["pubsub_topic.payments-dlq"]["origin"]
    assert (missing["file"], missing["field"], missing["author"]) == ("connectors/payments.yaml", "source_id",
                                                                      "Alice Example")

    assert cli.main(["drift", "--repo", str(repo)]) == 2
    text = capsys.readouterr().out
    assert (f"        desired value set by {bob[:12]} (Bob Builder, " in text
            and f": slower consumers need longer acks) at platform.yaml:{line} pubsub.ack_deadline_seconds" in text)
    assert "desired value headwater's own value: no setting of the desired state changes it" in text


def test_blame_of_an_uncommitted_line_says_so(applied, repo):
    from reconciler.blame import origin

    state, _engine, _provider = applied
    text = (repo / "connectors" / "orders.yaml").read_text()
    (repo / "connectors" / "orders.yaml").write_text(text.replace("cluster_by: [customer_id, currency]",
                                                                  "cluster_by: [currency]"))
    state = load_repo(repo)
    silver = next(r for r in compile_resources(state) if r.address == "bigquery_table.silver.orders")
    found = origin(state, silver, "clustering_fields")
    assert found.field == "silver.cluster_by" and found.describe().endswith("(not committed yet)")


# --------------------------------------------------------------------------- references at plan time


def test_a_join_to_a_table_that_does_not_exist_is_a_plan_error_at_its_line(repo):
    provider = MemoryProvider()
    engine = Engine([provider], check_references=True)
    state = load_repo(repo)
    with pytest.raises(InvalidDesiredState) as raised:
        engine.plan(state, plan_options(state))
    (problem,) = [p for p in raised.value.problems if "reference.customers" in p.message]
    line = next(n for n, text in enumerate((repo / "connectors" / "orders.yaml").read_text().splitlines(), 1)
                if "table: reference.customers" in text)
    assert (problem.file, problem.line, problem.field) == ("connectors/orders.yaml", line,
                                                           "processing.silver_to_gold[0].join.table")
    assert "neither declared by the desired state nor existing in project headwater-demo" in problem.message
    assert provider.calls["memory.create"] == 0

    # Once the table exists (someone else's: it is only read), the plan goes ahead.
    from reconciler.resources import Resource

    provider.objects["bigquery_table.reference.customers"] = Resource(Kind.BIGQUERY_TABLE, "reference.customers", {})
    assert engine.plan(state, plan_options(state)).actionable


def test_a_landing_bucket_that_is_declared_is_no_problem(repo):
    provider = MemoryProvider()
    from reconciler.resources import Resource

    provider.objects["bigquery_table.reference.customers"] = Resource(Kind.BIGQUERY_TABLE, "reference.customers", {})
    state = load_repo(repo)
    plan = Engine([provider], check_references=True).plan(state, plan_options(state))
    assert any(c.address.startswith("storage_bucket.landing-") for c in plan.actionable)


# --------------------------------------------------------------------------- alerts and metrics


class Targets:
    name = "test"

    def __init__(self) -> None:
        self.sent = []

    def send(self, alert) -> None:
        self.sent.append(alert)


class Memory:
    """An alert memory (the shared object beside the lease), in a dict."""

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.generation = 0

    def read(self):
        return None if self.body is None else (self.generation, self.body)

    def create(self, body: bytes) -> None:
        self.body, self.generation = body, 1

    def replace(self, body: bytes, generation: int) -> None:
        self.body, self.generation = body, generation + 1


class Log:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_health_transitions_alert_once_and_are_remembered_across_restarts(applied):
    state, engine, provider = applied
    memory, targets, metrics = Memory(), Targets(), Metrics()
    clock = {"now": NOW}
    monitor = HealthMonitor(metrics, Alerter([targets], Log(), memory=memory), clock=lambda: clock["now"])
    provider.now = lambda: clock["now"]
    silver = "bigquery_table.silver.orders"
    provider.observations[silver] = Observation(signals={"last_record_at": NOW - 30 * 60})
    provider.observations["pubsub_subscription.orders-dlq-hold"] = Observation(signals={"backlog": 0})
    provider.observations["bigquery_table.bronze.orders_raw"] = Observation(signals={"rows": 100})

    def check():
        return monitor.check(state, engine, engine.plan(state), Log())

    check()
    assert targets.sent == []
    clock["now"] = NOW + 31 * 60  # no new record: the 60-minute SLA passes
    check()
    check()
    assert [a.event for a in targets.sent] == ["sla_breached"], "once, not on every check"
    assert targets.sent[0].details["source"] == "orders" and "SLA 60m" in targets.sent[0].summary

    # A restarted daemon (new monitor, same memory) does not alert the same breach again.
    restarted = HealthMonitor(Metrics(), Alerter([targets], Log(), memory=memory), clock=lambda: clock["now"])
    restarted.check(state, engine, engine.plan(state), Log())
    assert [a.event for a in targets.sent] == ["sla_breached"]

    # Data flows again; dead letters burst over the budget; a job fails.
    provider.observations[silver] = Observation(signals={"last_record_at": clock["now"] - 60})
    provider.observations["pubsub_subscription.orders-dlq-hold"] = Observation(signals={"backlog": 40})
    provider.observations["bigquery_table.bronze.orders_raw"] = Observation(signals={"rows": 200})
    provider.observations["dataflow_job.orders-sweep"] = Observation(Health.DEGRADED, "run 2 failed: NotFound: 404",
                                                                     error="NotFound: 404")
    restarted.check(state, engine, engine.plan(state), Log())
    events = [a.event for a in targets.sent]
    assert events == ["sla_breached", "dead_letters_over_budget", "job_failed", "sla_recovered"]
    failed = next(a for a in targets.sent if a.event == "job_failed")
    assert failed.details["error"] == "NotFound: 404" and "orders-sweep" in failed.payload()["text"]
    over = next(a for a in targets.sent if a.event == "dead_letters_over_budget")
    assert over.details["dead_letters"]["error_rate_percent"] == 40.0  # 40 dead letters for 100 records

    # Metrics: one series per source (and state), the values of the last check.
    exposition = restarted.metrics.exposition().decode()
    assert 'headwater_source_health{source="orders",state="degraded"} 1.0' in exposition
    assert 'headwater_source_health{source="orders",state="healthy"} 0.0' in exposition
    assert 'headwater_source_sla_seconds{source="orders"} 3600.0' in exposition
    assert 'headwater_source_dead_letters{source="orders"} 40.0' in exposition
    assert 'headwater_source_freshness_seconds{source="orders"} 60.0' in exposition
    assert "orders-sweep" not in exposition, "labels never name a resource"

    # The job recovers and dead letters stop growing: each condition clears once.
    del provider.observations["dataflow_job.orders-sweep"]
    restarted.check(state, engine, engine.plan(state), Log())
    restarted.check(state, engine, engine.plan(state), Log())
    assert [a.event for a in targets.sent][4:] == ["dead_letters_recovered", "job_recovered"]


def test_an_unjudged_condition_is_neither_raised_nor_cleared(applied):
    state, engine, provider = applied
    memory, targets = Memory(), Targets()
    monitor = HealthMonitor(Metrics(), Alerter([targets], Log(), memory=memory), clock=lambda: NOW)
    provider.now = lambda: NOW
    provider.observations["pubsub_subscription.orders-dlq-hold"] = Observation(signals={"backlog": 0})
    provider.observations["bigquery_table.bronze.orders_raw"] = Observation(signals={"rows": 0})
    monitor.check(state, engine, engine.plan(state), Log())
    provider.observations["pubsub_subscription.orders-dlq-hold"] = Observation(signals={"backlog": 50})
    monitor.check(state, engine, engine.plan(state), Log())
    assert [a.event for a in targets.sent] == ["dead_letters_over_budget"]
    # After a restart the growth is unknown (one observation): the condition stays, no "recovered".
    restarted = HealthMonitor(Metrics(), Alerter([targets], Log(), memory=memory), clock=lambda: NOW)
    health = restarted.check(state, engine, engine.plan(state), Log())
    assert "dead_letters:orders" in conditions_of(health)[1]
    assert [a.event for a in targets.sent] == ["dead_letters_over_budget"]
