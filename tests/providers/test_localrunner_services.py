"""The local runner's stand-in for Cloud Run: a ``cloud_run_service`` as a real ``python -m
connector`` process (connector/), with its spec, PORT and secrets in its environment.

The webhook test runs the real connector against the session's Pub/Sub emulator and POSTs to
it; the others check the bookkeeping and the failures without the emulators. Every test that
gives a service a secret checks that its value is nowhere but in the process's environment:
not in the record, not in the log, not on the command line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from google.cloud import pubsub_v1

from providers import pubsub_data
from providers.errors import AlreadyExists, NotFound, PermanentError
from providers.localrunner import LocalRunnerProvider, free_port, load_records, service_argv, stop_all
from reconciler.resources import Kind, Resource

ROOT = Path(__file__).resolve().parents[2]
NAME = "hooks-connector"
LABELS = {"managed-by": "headwater", "headwater-source": "hooks"}
SECRET_VALUE = "s3cr3t-signing-key-6f1d2c"  # what must never leak out of the process environment
SIGNED = {"header": "X-Signature", "algorithm": "sha256", "scheme": "hex", "timestamp_tolerance_seconds": 300}


def webhook_service(project: str, *, signature: dict | None = None, secrets: dict | None = None, **spec) -> Resource:
    """A webhook connector's service as compile makes it (docs/connector-contract.md)."""
    connector = {
        "version": 1, "source_id": "hooks", "project": project, "connector_type": "webhook",
        "topic": f"projects/{project}/topics/hooks", "dead_letter_topic": f"projects/{project}/topics/hooks-dlq",
        "webhook": {"path": "/hooks/in", "signature": signature, "max_body_bytes": 1048576,
                    "delivery_id_header": "X-Delivery-Id", "records": None},
    }
    return Resource(Kind.CLOUD_RUN_SERVICE, NAME, {
        "image": "europe-docker.pkg.dev/p/headwater/connector:1.4.0", "command": ["python", "-m", "connector"],
        "connector": connector, "secrets": secrets or {}, "service_account": None, "min_instances": 0,
        "max_instances": 5, "ingress": "all", "cpu_always_allocated": False, "public": True, **spec,
    }, LABELS)


def changed(resource: Resource, **spec) -> Resource:
    return Resource(resource.kind, resource.name, {**resource.spec, **spec}, resource.labels)


def assert_secret_kept_in_the_environment(runner: LocalRunnerProvider, state_dir: Path, value: str) -> None:
    """The value is in no file of the state directory but its own secret file, and not on the
    running process's command line."""
    for path in state_dir.rglob("*"):
        if path.is_file() and path.parent != runner.secrets.directory:
            assert value not in path.read_text(errors="replace"), f"the secret's value leaked into {path}"
    record = runner.service_record(NAME)
    assert value not in " ".join(record.argv) and value not in json.dumps(record.env)
    cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes().decode(errors="replace")
    assert value not in cmdline
    environ = Path(f"/proc/{record.pid}/environ").read_bytes().split(b"\0")
    assert f"HEADWATER_WEBHOOK_SECRET={value}".encode() in environ, "but the process has it"


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def pull(project: str, subscription: str, count: int, timeout: float = 30.0) -> list[pubsub_data.Message]:
    received: list[pubsub_data.Message] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        received += pubsub_data.pull_available(project, subscription)
    return received


def stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------- bookkeeping


def test_the_command_runs_on_this_interpreter():
    assert service_argv({"command": ["python", "-m", "connector"]}, "/venv/bin/python") == \
        ["/venv/bin/python", "-m", "connector"]
    assert service_argv({"command": ["/bin/connector", "--x"]}, "/venv/bin/python") == ["/bin/connector", "--x"]


def test_the_runner_owns_services_unless_told_not_to(tmp_path):
    assert Kind.CLOUD_RUN_SERVICE in LocalRunnerProvider("p", tmp_path).kinds
    assert LocalRunnerProvider("p", tmp_path, services=False).kinds == (Kind.DATAFLOW_JOB,)


def test_recorded_services_keep_the_contract_without_processes(tmp_path):
    runner = LocalRunnerProvider("proj", tmp_path, run_jobs=False)
    service = webhook_service("proj", secrets={"HEADWATER_WEBHOOK_SECRET": "no-file-needed"})
    runner.create(service)  # record-only: no process, so no secret is read
    with pytest.raises(AlreadyExists):
        runner.create(service)
    (live,) = runner.observe(Kind.CLOUD_RUN_SERVICE)
    assert (live.spec, live.labels) == (service.spec, service.labels)
    assert runner.observe(Kind.DATAFLOW_JOB) == [], "a service is not a job"
    url = runner.service_url(NAME)
    runner.update(changed(service, max_instances=9), ["max_instances"])
    assert runner.service_url(NAME) == url
    runner.delete(service)
    runner.delete(service)  # idempotent
    assert runner.observe(Kind.CLOUD_RUN_SERVICE) == [] and load_records(tmp_path) == []
    with pytest.raises(NotFound):
        runner.service_url(NAME)


def test_a_missing_secret_fails_create_naming_the_secret_and_the_file(tmp_path):
    runner = LocalRunnerProvider("proj", tmp_path, run_jobs=True, secrets_dir=tmp_path / "secrets")
    service = webhook_service("proj", signature=SIGNED, secrets={"HEADWATER_WEBHOOK_SECRET": "hooks-signing-key"})
    with pytest.raises(PermanentError) as failure:
        runner.create(service)
    message = str(failure.value)
    assert "'hooks-signing-key' is missing" in message and str(tmp_path / "secrets" / "hooks-signing-key") in message
    assert runner.service_record(NAME) is None, "nothing launched"


def test_a_reserved_variable_cannot_hold_a_secret(tmp_path):
    runner = LocalRunnerProvider("proj", tmp_path, run_jobs=False)
    with pytest.raises(PermanentError, match="PORT is reserved"):
        runner.create(webhook_service("proj", secrets={"PORT": "x"}))


def test_a_connector_that_exits_fails_the_apply_and_is_history(tmp_path):
    runner = LocalRunnerProvider("proj", tmp_path, run_jobs=True)
    broken = webhook_service("proj", connector={"version": 1})  # the runtime refuses it: exit code 2
    with pytest.raises(PermanentError, match="exited \\(exit code 2\\) before listening") as failure:
        runner.create(broken)
    log = Path(runner.service_record(NAME).log)
    assert str(log) in str(failure.value)
    assert "cannot start" in log.read_text(), "the runtime's own reason is in the log"
    assert runner.observe(Kind.CLOUD_RUN_SERVICE) == []


# --------------------------------------------------------------------------- a real webhook connector


@pytest.fixture
def hooks(emulators, project_id, tmp_path):
    """Topics and a subscription for the ``hooks`` source on a fresh project; a runner that runs."""
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for topic in ("hooks", "hooks-dlq"):
        publisher.create_topic(name=publisher.topic_path(project_id, topic))
    subscriber.create_subscription(name=subscriber.subscription_path(project_id, "hooks-ingest"),
                                   topic=publisher.topic_path(project_id, "hooks"))
    state_dir = tmp_path / "state"
    runner = LocalRunnerProvider(project_id, state_dir, run_jobs=True)
    yield runner, state_dir
    stop_all(state_dir)


def test_a_webhook_connector_runs_updates_on_its_port_and_stops(hooks, project_id, monkeypatch):
    runner, state_dir = hooks
    # Ours, not the service's: a child must not inherit what its spec does not give it.
    monkeypatch.setenv("HEADWATER_WEBHOOK_SECRET", "inherited-not-given")
    monkeypatch.setenv("PORT", "1")

    unsigned = webhook_service(project_id)
    runner.create(unsigned)  # returns once the connector listens
    url = runner.service_url(NAME)
    first = runner.service_record(NAME)
    assert url == f"http://127.0.0.1:{first.port}" and first.port != 1
    assert (runner.observe(Kind.CLOUD_RUN_SERVICE)[0].spec, first.env) == (unsigned.spec, {"PORT": str(first.port)})
    environ = Path(f"/proc/{first.pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"HEADWATER_WEBHOOK_SECRET=")], "not given: not inherited"

    event = {"id": "evt_1", "type": "charge.succeeded", "amount": 1250}
    assert post(url + "/hooks/in", json.dumps(event).encode(), {"X-Delivery-Id": "d-1"}) == 200
    (message,) = pull(project_id, "hooks-ingest", 1)
    assert json.loads(message.data) == event and message.attributes["source_id"] == "hooks"

    # The signature and its key: a restart with the secret in the environment, on the same port.
    runner.secrets.directory.mkdir(parents=True)
    (runner.secrets.directory / "hooks-signing-key").write_text(SECRET_VALUE + "\n")
    signed = changed(unsigned, connector={**unsigned.spec["connector"], "webhook": {
        **unsigned.spec["connector"]["webhook"], "signature": SIGNED}},
        secrets={"HEADWATER_WEBHOOK_SECRET": "hooks-signing-key"})
    runner.update(signed, ["connector", "secrets"])
    second = runner.service_record(NAME)
    assert second.pid != first.pid and stopped(first.pid), "restarted"
    assert second.port == first.port and runner.service_url(NAME) == url, "the webhook URL stays put"

    body = json.dumps({"id": "evt_2", "amount": 99}).encode()
    assert post(url + "/hooks/in", body, {"X-Signature": "0" * 64}) == 401, "forged"
    mac = hmac.new(SECRET_VALUE.encode(), body, hashlib.sha256).hexdigest()
    assert post(url + "/hooks/in", body, {"X-Signature": f"sha256={mac}", "X-Delivery-Id": "d-2"}) == 200
    (message,) = pull(project_id, "hooks-ingest", 1)
    assert json.loads(message.data) == {"id": "evt_2", "amount": 99}
    assert_secret_kept_in_the_environment(runner, state_dir, SECRET_VALUE)
    assert "HEADWATER_WEBHOOK_SECRET" in Path(second.log).read_text(), "the log names the variable, not its value"

    # Settings a local process does not use: recorded, no restart.
    scaled = changed(signed, max_instances=20, image="europe-docker.pkg.dev/p/headwater/connector:1.5.0")
    runner.update(scaled, ["max_instances", "image"])
    assert runner.service_record(NAME).pid == second.pid
    assert runner.observe(Kind.CLOUD_RUN_SERVICE)[0].spec == scaled.spec

    # A secret gone missing fails the update and leaves the running process alone.
    (runner.secrets.directory / "hooks-signing-key").unlink()
    smaller = {**signed.spec["connector"], "webhook": {**signed.spec["connector"]["webhook"], "max_body_bytes": 4096}}
    with pytest.raises(PermanentError, match="hooks-signing-key"):
        runner.update(changed(scaled, connector=smaller), ["connector"])
    assert not stopped(second.pid)

    # `headwater local down` stops services too (SIGTERM, then SIGKILL), and forgets them.
    assert stop_all(state_dir) == [NAME]
    assert stopped(second.pid) and load_records(state_dir) == []


def test_delete_stops_a_service_and_frees_its_port(hooks, project_id):
    runner, _ = hooks
    service = webhook_service(project_id)
    runner.create(service)
    record = runner.service_record(NAME)
    runner.delete(service)
    assert stopped(record.pid) and runner.observe(Kind.CLOUD_RUN_SERVICE) == []
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{record.port}/healthz", timeout=2)
    assert free_port(record.port) == record.port, "its port is free again"
