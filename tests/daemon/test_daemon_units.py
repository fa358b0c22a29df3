"""Unit tests of the daemon's parts that need no emulator: lease protocol, settings and their
environment twins, webhook signatures, redaction, alert transitions, plan filters."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import pytest
from support import LogBuffer

from providers.memory import MemoryProvider
from reconciler.daemon import settings as daemon_settings
from reconciler.daemon.alerts import Alerter
from reconciler.daemon.gitsource import GitSource, GitSourceError
from reconciler.daemon.lease import Lease, LeaseRecord, MemoryLeaseStore
from reconciler.daemon.logs import Redactor, make_logger
from reconciler.daemon.server import signature, verify_signature
from reconciler.daemon.service import heal_plan, resource_state, without_sources
from reconciler.plan import Action, PlanOptions, reconcile
from reconciler.resources import SOURCE_KEY, Kind, Resource

# ---------------------------------------------------------------------- lease


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_lease_acquire_renew_and_exclusion():
    store, clock = MemoryLeaseStore(), Clock()
    a = Lease(store, "a", 30, clock=clock, monotonic=clock)
    b = Lease(store, "b", 30, clock=clock, monotonic=clock)
    assert a.tick() == (True, "acquired")
    assert b.tick() == (False, "held_by_other")
    clock.now += 10
    assert a.tick() == (True, "renewed")
    assert b.tick() == (False, "held_by_other")
    assert a.held() and not b.held()
    assert b.snapshot()["holder"] == "a"


def test_lease_is_taken_over_after_expiry_and_the_old_holder_learns_it_lost():
    store, clock = MemoryLeaseStore(), Clock()
    a = Lease(store, "a", 30, clock=clock, monotonic=clock)
    b = Lease(store, "b", 30, clock=clock, monotonic=clock)
    a.tick()
    clock.now += 29  # a is frozen (e.g. a long GC pause): no renewals
    assert not a.held(), "a stops applying before its lease can be taken over (safety margin)"
    assert b.tick() == (False, "held_by_other")
    clock.now += 2
    assert b.tick() == (True, "took_over")
    assert a.tick() == (False, "lost")  # its renewal's precondition fails
    assert b.held() and not a.held()


def test_lease_release_lets_the_next_one_in_at_once():
    store, clock = MemoryLeaseStore(), Clock()
    a = Lease(store, "a", 30, clock=clock, monotonic=clock)
    b = Lease(store, "b", 30, clock=clock, monotonic=clock)
    a.tick()
    assert a.release() is True and store.read() is None
    assert b.tick() == (True, "acquired")
    assert a.release() is False  # not held: nothing to delete


def test_only_one_of_many_concurrent_contenders_wins():
    store = MemoryLeaseStore()
    leases = [Lease(store, f"d{i}", 30) for i in range(8)]
    barrier = threading.Barrier(len(leases))
    results: dict[str, bool] = {}

    def contend(lease: Lease) -> None:
        barrier.wait()
        results[lease.holder] = lease.tick()[0]

    threads = [threading.Thread(target=contend, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results.values()) == 1


def test_lease_adopts_its_own_record_and_takes_over_garbage():
    store, clock = MemoryLeaseStore(), Clock()
    store.create(LeaseRecord("a", clock.now, clock.now, clock.now + 30).encode())  # a create whose reply was lost
    a = Lease(store, "a", 30, clock=clock, monotonic=clock)
    assert a.tick() == (True, "acquired")
    other = MemoryLeaseStore()
    other.create(b"not json")
    assert Lease(other, "b", 30, clock=clock, monotonic=clock).tick() == (True, "took_over")


# ---------------------------------------------------------------------- settings


def _parse(argv: list[str], environ: dict[str, str]) -> daemon_settings.Settings:
    parser = argparse.ArgumentParser()
    daemon_settings.add_arguments(parser)
    daemon_settings.apply_env_defaults(parser, environ)
    return daemon_settings.from_args(parser.parse_args(argv), environ)


def test_every_flag_has_an_environment_twin_and_flags_win():
    env = {"HEADWATER_REPO": "https://example.com/platform.git", "HEADWATER_POLL_INTERVAL": "5",
           "HEADWATER_SELF_HEAL": "true", "HEADWATER_LOCK_BUCKET": "locks", "HEADWATER_BRANCH": "prod",
           "HEADWATER_WEBHOOK_SECRET": "s3cret-value", "HEADWATER_GIT_TOKEN": "tok-123456", "PORT": "9000"}
    s = _parse([], env)
    assert (s.repo, s.poll_interval, s.self_heal, s.lock_bucket, s.branch) == (
        "https://example.com/platform.git", 5.0, True, "locks", "prod")
    assert s.listen == "0.0.0.0:9000"
    assert s.webhook_secret == "s3cret-value" and s.git_token == "tok-123456"
    s = _parse(["--poll-interval", "7", "--no-self-heal", "--listen", "127.0.0.1:0"], env)
    assert (s.poll_interval, s.self_heal, s.host_port) == (7.0, False, ("127.0.0.1", 0))
    # Secrets are never flags, and never shown.
    assert "s3cret-value" not in repr(s) and "tok-123456" not in repr(s) and "s3cret" not in str(s.public())


def test_secrets_cannot_be_flags_and_bad_env_values_are_reported_when_run_starts():
    parser = argparse.ArgumentParser()
    daemon_settings.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--webhook-secret", "x"])
    with pytest.raises(ValueError, match="HEADWATER_SELF_HEAL='maybe'"):
        _parse([], {"HEADWATER_REPO": "r", "HEADWATER_SELF_HEAL": "maybe"})
    with pytest.raises(ValueError, match="--repo"):
        _parse([], {})


@pytest.mark.parametrize(("argv", "message"), [
    pytest.param(["--api-rates", "pubsub=fast"], "--api-rates: 'pubsub=fast' is not service=N/second", id="rates"),
    pytest.param(["--call-deadline", "0"], "--call-deadline must be a positive number of seconds", id="call-deadline"),
    pytest.param(["--stall-timeout", "-1"], "--stall-timeout must be a positive number of seconds", id="stall"),
])
def test_retry_and_liveness_settings_are_checked_when_run_starts(argv, message):
    with pytest.raises(ValueError, match=message):
        _parse(argv, {"HEADWATER_REPO": "r"})


def test_retry_settings_have_environment_twins_and_reach_the_retry_policy(tmp_path):
    from providers import errors
    from reconciler.daemon.service import Daemon

    s = _parse(["--apply-deadline", "600"], {"HEADWATER_REPO": str(tmp_path), "HEADWATER_CALL_DEADLINE": "30",
                                             "HEADWATER_API_RATES": "pubsub=5/second", "HEADWATER_STALL_TIMEOUT": "90"})
    assert (s.call_deadline, s.apply_deadline, s.api_rates, s.stall_timeout) == (30.0, 600.0, "pubsub=5/second", 90.0)
    try:
        Daemon(s, providers_factory=lambda platform: [], log_stream=LogBuffer())
        assert (errors.policy().call_deadline, errors.policy().apply_deadline) == (30.0, 600.0)
        assert str(errors._rates["pubsub"]) == "5 per 1 second"
    finally:
        errors.configure(errors.RetryPolicy(), {})


# ---------------------------------------------------------------------- webhook signature, redaction


def test_webhook_signature_is_github_hmac_sha256():
    body = b'{"ref":"refs/heads/main"}'
    # Computed independently: printf '%s' "$body" | openssl dgst -sha256 -hmac secret
    good = "sha256=d8f89f0618acd61fe621aa4e64078c0e2bca15d0b578b7f3eb734f55883c5320"
    assert signature("secret", body) == good
    assert verify_signature("secret", body, good)
    assert not verify_signature("secret", body + b" ", good)
    assert not verify_signature("other", body, good)
    assert not verify_signature("secret", body, None)
    assert not verify_signature(None, body, good)  # no secret configured: nothing verifies


def test_redactor_masks_secrets_and_url_credentials():
    redact = Redactor(["tok-abcdef"])
    text = redact("clone https://x-access-token:tok-abcdef@github.com/o/r.git and ssh://git@host/r failed: tok-abcdef")
    assert "tok-abcdef" not in text and "x-access-token" not in text
    assert "https://***@github.com/o/r.git" in text and "ssh://***@host/r" in text


def test_logs_never_contain_secrets_even_when_code_passes_them():
    stream = LogBuffer()
    log = make_logger(stream, Redactor(["hunter2-secret"]))
    log.info("oops", detail={"nested": ["the secret is hunter2-secret"]}, url="https://u:p@h/x")
    [event] = stream.events()
    assert "hunter2-secret" not in stream.getvalue() and "u:p@" not in stream.getvalue()
    assert event["event"] == "oops" and event["level"] == "info" and "timestamp" in event


def test_git_errors_never_show_the_token(tmp_path: Path):
    token = "ghp_supersecret_0123456789"
    source = GitSource(f"http://user:{token}@127.0.0.1:9/nowhere.git", "main", tmp_path, token=token)
    with pytest.raises(GitSourceError) as raised:
        source.fetch()
    assert token not in str(raised.value) and "user:" not in str(raised.value)
    assert "127.0.0.1:9/nowhere.git" in str(raised.value)
    assert token not in str(source.workdir)


def test_git_credentials_reach_git_through_its_environment_only(tmp_path: Path):
    import base64
    import subprocess

    from reconciler.daemon.gitsource import _git_env

    env = _git_env("tok-abc123", None, None)
    # git itself reads the header from GIT_CONFIG_* (no -c on the command line, nothing on disk).
    header = subprocess.run(["git", "config", "--get", "http.extraHeader"], env={"PATH": "/usr/bin:/bin", **env},
                            capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert header == "Authorization: Basic " + base64.b64encode(b"x-access-token:tok-abc123").decode()
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    ssh = _git_env(None, "/keys/deploy key", "/keys/known_hosts")["GIT_SSH_COMMAND"]
    assert "-i '/keys/deploy key'" in ssh and "UserKnownHostsFile=/keys/known_hosts" in ssh
    assert "StrictHostKeyChecking=yes" in ssh


# ---------------------------------------------------------------------- alerts


def test_alerts_fire_on_state_changes_only():
    alerter = Alerter([], make_logger(LogBuffer()))
    events = []
    for drifted in [{}, {"a": "x"}, {"a": "x"}, {"a": "x", "b": "y"}, {"b": "y"}, {}, {}]:
        alert = alerter.drift(drifted, "rev")
        events.append(alert.event if alert else None)
    assert events == [None, "drift_detected", None, "drift_detected", None, "drift_resolved", None]

    assert alerter.sync_ok("r1") is None  # nothing failed before: no "recovered"
    assert alerter.sync_failed("r2", "invalid", "bad").event == "sync_failed"
    assert alerter.sync_failed("r2", "invalid", "bad") is None  # same broken commit: once
    assert alerter.sync_failed("r3", "invalid", "worse").event == "sync_failed"  # a new broken commit
    assert alerter.sync_ok("r4").event == "sync_recovered"
    assert alerter.sync_ok("r4") is None


def test_alerts_fire_on_state_changes_only_with_a_shared_memory_too():
    alerter = Alerter([], make_logger(LogBuffer()), memory=MemoryLeaseStore())
    events = []
    for drifted in [{}, {"a": "x"}, {"a": "x"}, {"a": "x", "b": "y"}, {"b": "y"}, {}, {}]:
        alert = alerter.drift(drifted, "rev")
        events.append(alert.event if alert else None)
    assert events == [None, "drift_detected", None, "drift_detected", None, "drift_resolved", None]
    assert alerter.sync_failed("r2", "invalid", "bad").event == "sync_failed"
    assert alerter.sync_failed("r2", "invalid", "bad") is None
    assert alerter.sync_ok("r4").event == "sync_recovered"


def test_a_restarted_daemon_does_not_alert_again_what_was_alerted():
    memory = MemoryLeaseStore()
    before = Alerter([], make_logger(LogBuffer()), memory=memory)
    assert before.drift({"a": "x"}, "rev").event == "drift_detected"
    assert before.sync_failed("r2", "invalid", "bad").event == "sync_failed"

    after = Alerter([], make_logger(LogBuffer()), memory=memory)  # the same platform, a new process
    assert after.drift({"a": "x"}, "rev") is None, "the drift still there was alerted already"
    assert after.sync_failed("r2", "invalid", "bad") is None, "so was this broken commit"
    assert after.drift({}, "rev").event == "drift_resolved"
    assert after.sync_ok("r3").event == "sync_recovered"


def test_two_daemons_alert_each_transition_once():
    memory = MemoryLeaseStore()
    a, b = (Alerter([], make_logger(LogBuffer()), memory=memory) for _ in range(2))
    fired = [x.drift({"a": "x"}, "rev") for x in (a, b, a, b)] + [x.drift({}, "rev") for x in (b, a)]
    assert [f.event for f in fired if f] == ["drift_detected", "drift_resolved"]


class RacingStore(MemoryLeaseStore):
    """Before its first write, another daemon decides the same transition and writes first."""

    def __init__(self) -> None:
        super().__init__()
        self.rival: Alerter | None = None

    def replace(self, body: bytes, generation: int) -> int:
        rival, self.rival = self.rival, None
        if rival is not None:
            assert rival.drift({"a": "x"}, "rev").event == "drift_detected"
        return super().replace(body, generation)


def test_a_write_race_is_won_by_one_daemon_and_alerted_by_it_alone():
    store = RacingStore()
    mine = Alerter([], make_logger(LogBuffer()), memory=store)
    mine.drift({}, "rev")  # the memory exists (an empty one)
    store.rival = Alerter([], make_logger(LogBuffer()), memory=store)
    assert mine.drift({"a": "x"}, "rev") is None, "lost the write: the rival alerted, this daemon does not"
    assert mine.drift({}, "rev").event == "drift_resolved"


class BrokenStore(MemoryLeaseStore):
    def read(self):
        raise RuntimeError("storage unreachable")


def test_alerts_still_fire_when_the_memory_cannot_be_reached():
    logs = LogBuffer()
    alerter = Alerter([], make_logger(logs), memory=BrokenStore())
    assert alerter.drift({"a": "x"}, "rev").event == "drift_detected"
    assert alerter.drift({"a": "x"}, "rev") is None  # its own memory still works
    assert any(e["event"] == "alert.memory_unavailable" and "storage unreachable" in e["error"]
               for e in logs.events())


def test_alert_payload_is_slack_compatible():
    alerter = Alerter([], make_logger(LogBuffer()))
    alert = alerter.drift({"pubsub_subscription.x": "ack_deadline_seconds: 30 → 60"}, "a" * 40)
    payload = alert.payload()
    assert isinstance(payload["text"], str) and "pubsub_subscription.x" in payload["text"]
    assert payload["headwater"]["event"] == "drift_detected" and payload["headwater"]["revision"] == "a" * 40


# ---------------------------------------------------------------------- plan filters


def _res(kind: Kind, name: str, source: str | None = None, **spec) -> Resource:
    # Unprotected, and the plans below --allow-destroy: topics and subscriptions hold data, so
    # their replacement and deletion are gated like a table's (reconciler.resources.DATA_KINDS).
    labels = {"managed-by": "headwater", "headwater-platform": "dev", "headwater-deletion-protection": "false"}
    if source:
        labels[SOURCE_KEY] = source
    return Resource(kind, name, spec, labels, deletion_protection=False)


def test_heal_plan_keeps_updates_and_creates_only():
    provider = MemoryProvider()
    desired = [
        _res(Kind.PUBSUB_TOPIC, "a", "a"),
        _res(Kind.PUBSUB_SUBSCRIPTION, "a-ingest", "a", topic="a", ack_deadline_seconds=60),
        _res(Kind.PUBSUB_SUBSCRIPTION, "a-moved", "a", topic="a"),
        _res(Kind.PUBSUB_SUBSCRIPTION, "b-ingest", "b", topic="b", ack_deadline_seconds=60),
    ]
    live = [
        _res(Kind.PUBSUB_SUBSCRIPTION, "a-ingest", "a", topic="a", ack_deadline_seconds=30),  # update
        _res(Kind.PUBSUB_SUBSCRIPTION, "a-moved", "a", topic="elsewhere"),  # replace
        _res(Kind.PUBSUB_SUBSCRIPTION, "b-ingest", "b", topic="b", ack_deadline_seconds=30),  # update, suspended
        _res(Kind.PUBSUB_TOPIC, "gone", "c"),  # orphan: delete when pruning
    ]
    desired.append(_res(Kind.DATAFLOW_JOB, "a-ingest", "a", streaming=False))  # e.g. a finished batch run
    plan = reconcile(desired, live, provider.immutable_fields,
                     PlanOptions(prune=True, max_delete_fraction=1.0, allow_destroy=True))
    actions = {c.address: c.action for c in plan.actionable}
    assert actions == {"pubsub_topic.a": Action.CREATE, "pubsub_subscription.a-ingest": Action.UPDATE,
                       "pubsub_subscription.a-moved": Action.REPLACE,
                       "pubsub_subscription.b-ingest": Action.UPDATE, "pubsub_topic.gone": Action.DELETE,
                       "dataflow_job.a-ingest": Action.CREATE}
    healed = {c.address: c.action for c in heal_plan(plan, {"b"}).actionable}
    assert healed == {"pubsub_topic.a": Action.CREATE, "pubsub_subscription.a-ingest": Action.UPDATE}
    kept = {c.address for c in without_sources(plan, {"b", "c"}).actionable}
    assert kept == {"pubsub_topic.a", "pubsub_subscription.a-ingest", "pubsub_subscription.a-moved",
                    "dataflow_job.a-ingest"}
    assert {resource_state(c) for c in plan.changes if c.desired} == {"missing", "drifted"}


def test_filters_keep_the_cores_refusal():
    desired = [_res(Kind.PUBSUB_TOPIC, "a", "a")]
    live = [_res(Kind.PUBSUB_TOPIC, f"t{i}", f"s{i}") for i in range(5)]
    plan = reconcile(desired, live, {}, PlanOptions(prune=True, max_delete_fraction=0.2, allow_destroy=True))
    assert plan.refused
    assert heal_plan(plan, set()).refused == plan.refused and heal_plan(plan, set()).actionable == []
    assert without_sources(plan, {"x"}).actionable == []


def test_git_changed_files_lists_both_paths_of_a_rename_and_none_for_an_unknown_commit(tmp_path: Path):
    import git

    remote = tmp_path / "remote"
    work = git.Repo.init(remote, initial_branch="main")
    with work.config_writer() as config:
        config.set_value("user", "name", "t")
        config.set_value("user", "email", "t@example.com")
    (remote / "a.yaml").write_text("a: 1\n")
    (remote / "b.yaml").write_text("b: 1\n")
    work.index.add(["a.yaml", "b.yaml"])
    first = work.index.commit("one").hexsha
    work.index.move(["a.yaml", "renamed.yaml"])
    (remote / "b.yaml").write_text("b: 2\n")
    work.index.add(["b.yaml"])
    second = work.index.commit("two").hexsha
    source = GitSource(str(remote), "main", tmp_path / "cache")
    assert source.fetch() == second
    assert source.changed_files(first, second) == {"a.yaml", "renamed.yaml", "b.yaml"}
    assert source.changed_files(second, second) == set()
    assert source.changed_files("0" * 40, second) is None
