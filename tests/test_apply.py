"""Apply: order, idempotence, partial failure and convergence, over the in-memory provider."""

from __future__ import annotations

from dataclasses import replace

from helpers import EXAMPLE

from providers.errors import AlreadyExists
from providers.memory import MemoryProvider
from reconciler.apply import FAILED, OK, SKIPPED
from reconciler.engine import Engine, drift_of
from reconciler.load import load_repo
from reconciler.plan import Action


def engine_and_state():
    provider = MemoryProvider()
    return Engine([provider]), provider, load_repo(EXAMPLE)


def test_apply_creates_everything_then_plan_is_empty():
    engine, provider, state = engine_and_state()
    plan = engine.plan(state)
    result = engine.apply(plan)
    assert result.ok and result.count(OK) == len(plan.actionable) == 137
    assert not engine.plan(state).has_changes


def test_dependencies_are_created_before_dependents():
    engine, provider, state = engine_and_state()
    order = []
    engine.apply(engine.plan(state), on_outcome=lambda o: order.append(o.address))
    assert order.index("pubsub_topic.orders-dlq") < order.index("pubsub_subscription.orders-ingest")
    assert order.index("bigquery_dataset.silver") < order.index("bigquery_table.silver.orders")
    assert order.index("bigquery_table.silver.orders") < order.index("dataflow_job.orders-ingest")


def test_failure_skips_dependents_and_continues_independent_work():
    engine, provider, state = engine_and_state()
    provider.fail["pubsub_topic.orders-dlq"] = "quota exceeded"
    result = engine.apply(engine.plan(state))
    status = {o.address: o.status for o in result.outcomes}
    assert status["pubsub_topic.orders-dlq"] == FAILED
    assert status["pubsub_subscription.orders-ingest"] == SKIPPED
    assert status["pubsub_subscription.orders-dlq-hold"] == SKIPPED
    assert status["pubsub_subscription.payments-ingest"] == OK
    assert status["bigquery_table.silver.orders"] == OK
    # The job writes its dead letters to that topic: it is not launched without it.
    assert status["dataflow_job.orders-ingest"] == status["dataflow_job.orders-sweep"] == SKIPPED
    assert status["dataflow_job.orders-gold-orders-daily"] == OK
    # issue 13: the Pub/Sub service agent's dead-letter grants wait for the topic and subscription too.
    assert status["iam_binding.pubsub_topic:orders-dlq:roles/pubsub.publisher"] == SKIPPED
    assert status["iam_binding.pubsub_subscription:orders-ingest:roles/pubsub.subscriber"] == SKIPPED
    assert not result.ok and "1 failed, 6 skipped" in result.summary()

    del provider.fail["pubsub_topic.orders-dlq"]
    rerun = engine.apply(engine.plan(state))
    assert rerun.ok and rerun.count(OK) == 7
    assert not engine.plan(state).has_changes


def test_create_that_finds_its_own_resource_converges_it():
    engine, provider, state = engine_and_state()
    plan = engine.plan(state)
    # An earlier apply died after creating the subscription (with our labels), before it was set up.
    sub = next(c.desired for c in plan.changes if c.address == "pubsub_subscription.orders-ingest")
    provider.objects[sub.address] = replace(sub, spec={**sub.spec, "ack_deadline_seconds": 10})
    result = engine.apply(plan)
    assert result.ok
    assert provider.objects[sub.address].spec["ack_deadline_seconds"] == 60
    assert provider.objects[sub.address].labels == sub.labels


def test_create_that_finds_someone_elses_resource_refuses_and_the_next_plan_shows_an_import():
    engine, provider, state = engine_and_state()
    plan = engine.plan(state)
    # Someone created the subscription between plan and apply, with other settings and their labels.
    sub = next(c.desired for c in plan.changes if c.address == "pubsub_subscription.orders-ingest")
    theirs = replace(sub, spec={**sub.spec, "ack_deadline_seconds": 10}, labels={"owner": "finance-team"})
    provider.objects[sub.address] = theirs
    result = engine.apply(plan)
    outcome = next(o for o in result.outcomes if o.address == sub.address)
    assert outcome.status == FAILED and "already exists and is not managed by headwater" in outcome.error
    assert provider.objects[sub.address] == theirs, "nothing was sent to a resource that is not ours"
    (again,) = [c for c in engine.plan(state).changes if c.address == sub.address]
    assert again.action == Action.IMPORT and again.blocked and "headwater adopt" in again.blocked


def test_memory_provider_keeps_the_contract():
    provider = MemoryProvider()
    _, _, state = engine_and_state()
    from reconciler.compile import compile_resources

    topic = next(r for r in compile_resources(state) if r.kind == "pubsub_topic")
    provider.create(topic)
    try:
        provider.create(topic)
        raise AssertionError("second create must raise AlreadyExists")
    except AlreadyExists:
        pass
    provider.delete(topic)
    provider.delete(topic)  # idempotent


def test_drift_names_the_changed_field():
    engine, provider, state = engine_and_state()
    engine.apply(engine.plan(state))
    address = "pubsub_subscription.orders-ingest"
    current = provider.objects[address]
    provider.objects[address] = replace(current, spec={**current.spec, "ack_deadline_seconds": 20})
    del provider.objects["pubsub_topic.payments-dlq"]
    drift = {d.address: d for d in drift_of(engine.plan(state))}
    assert drift[address].state == "drifted"
    assert drift[address].fields == (("ack_deadline_seconds", 20, 60),)
    assert drift["pubsub_topic.payments-dlq"].state == "missing"


def test_apply_runs_only_what_the_plan_says():
    engine, provider, state = engine_and_state()
    plan = engine.plan(state)
    provider.calls.clear()
    engine.apply(plan)
    assert provider.calls["memory.create"] == len([c for c in plan.changes if c.action == Action.CREATE])
    assert "memory.update" not in provider.calls and "memory.delete" not in provider.calls


def test_cli_apply_without_a_terminal_or_auto_approve_changes_nothing(monkeypatch, capsys):
    import io

    from reconciler import cli

    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))  # not a TTY: piped input is not consent
    assert cli.main(["apply", "--repo", str(EXAMPLE)]) == 1
    assert "pass --auto-approve" in capsys.readouterr().err
    assert provider.objects == {}


def test_cli_apply_asks_and_only_yes_applies(monkeypatch, capsys):
    from reconciler import cli

    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    answers = iter(["y", "yes"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    assert cli.main(["apply", "--repo", str(EXAMPLE)]) == 1, "'y' is not 'yes'"
    assert provider.objects == {}
    assert cli.main(["apply", "--repo", str(EXAMPLE)]) == 0
    assert len(provider.objects) == 137
