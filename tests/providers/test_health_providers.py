"""Providers' health (providers.base.HealthReporter): Dataflow and Cloud Run through their official
clients against local fakes (checked against the client libraries' types), the local runner
with real processes, Pub/Sub and BigQuery on the emulators."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_cloudrun import FakeCloudRun
from fake_google import FakeGoogle
from google.cloud import dataflow_v1beta3 as dataflow
from helpers import EXAMPLE

from providers import dataflow_settings
from providers.cloudrun import CloudRunProvider
from providers.dataflow import DataflowProvider, job_labels
from providers.dataflow_health import build_history_request
from providers.localrunner import LocalRunnerProvider, _running
from providers.localrunner_health import (
    consecutive_failures,
    error_line,
    last_run,
    last_section,
    recent_launches,
    unreachable,
)
from reconciler.compile import compile_resources
from reconciler.health import Health
from reconciler.load import load_repo
from reconciler.resources import Kind, Resource

STATE = load_repo(EXAMPLE)
COMPILED = compile_resources(STATE)
JOBS = {r.name: r for r in COMPILED if r.kind == Kind.DATAFLOW_JOB}
SERVICES = {r.name: r for r in COMPILED if r.kind == Kind.CLOUD_RUN_SERVICE}
SETTINGS = dataflow_settings(STATE.platform.project, STATE.platform.region, STATE.platform)
State = dataflow.JobState


# --------------------------------------------------------------------------- Dataflow


class FakeDataflowHistory(FakeGoogle):
    """The fake Dataflow, listing every job (terminated ones too) when asked for filter=ALL."""

    def _dataflow(self, request):
        if request.method == "GET" and request.path.endswith("/jobs") and request.query.get("filter") in ("ALL", "1"):
            return 200, {"jobs": sorted(self.jobs.values(), key=lambda j: j.get("createTime", ""), reverse=True)}
        return super()._dataflow(request)

    def add(self, resource: Resource, state, created: str, job_id: str | None = None) -> str:
        job_id = job_id or f"job-{len(self.jobs) + 1}"
        streaming = resource.spec["streaming"]
        self.jobs[job_id] = {"id": job_id, "name": resource.name, "createTime": created,
                             "type": "JOB_TYPE_STREAMING" if streaming else "JOB_TYPE_BATCH",
                             "currentState": State(state).name, "currentStateTime": created,
                             "labels": job_labels(resource)}
        return job_id


@pytest.fixture
def dataflow_fake():
    server = FakeDataflowHistory()
    yield server
    server.close()


def test_the_history_request_is_one_list_of_all_jobs():
    request = build_history_request("p", "europe-west1")
    assert dataflow.ListJobsRequest.deserialize(dataflow.ListJobsRequest.serialize(request)) == request
    assert request.filter == dataflow.ListJobsRequest.Filter.ALL and request.page_size == 1000


def test_dataflow_jobs_health_from_their_newest_run(dataflow_fake):
    provider = DataflowProvider(SETTINGS, poll_interval=0.01, **dataflow_fake.client_kwargs())
    ingest, gold, sweep = JOBS["payments-ingest"], JOBS["orders-gold-orders-daily"], JOBS["orders-sweep"]
    clicks = JOBS["clickstream-ingest"]
    dataflow_fake.add(ingest, State.JOB_STATE_FAILED, "2026-11-30T01:00:00Z")
    dataflow_fake.add(ingest, State.JOB_STATE_RUNNING, "2026-11-30T02:00:00Z")  # relaunched: newest wins
    failed = dataflow_fake.add(gold, State.JOB_STATE_FAILED, "2026-11-30T02:30:00Z")
    dataflow_fake.add(gold, State.JOB_STATE_DONE, "2026-11-30T01:30:00Z")
    dataflow_fake.messages[failed] = [{"messageImportance": "JOB_MESSAGE_ERROR",
                                       "messageText": "Not found: Table headwater-demo:gold.customers"}]
    dataflow_fake.add(clicks, State.JOB_STATE_DRAINED, "2026-11-30T00:00:00Z")
    dataflow_fake.requests.clear()

    health = provider.health([ingest, gold, sweep, clicks])

    assert health[ingest.address].state == Health.HEALTHY
    assert health[gold.address].state == Health.DEGRADED
    assert health[gold.address].error == "Not found: Table headwater-demo:gold.customers"
    assert "the last run failed" in health[gold.address].reason and failed in health[gold.address].reason
    assert health[sweep.address].state == Health.PROGRESSING, "a batch job before its first run"
    assert health[clicks.address].state is None and "drained" in health[clicks.address].reason
    # filter=ALL (the REST transport sends the enum by number)
    calls = [(r.method, r.path.rsplit("/", 1)[-1], r.query.get("filter")) for r in dataflow_fake.requests]
    assert calls == [("GET", "jobs", "1"), ("GET", "messages", None)], "one list, one message read per failure"


def test_a_paused_streaming_job_is_degraded(dataflow_fake):
    provider = DataflowProvider(SETTINGS, poll_interval=0.01, **dataflow_fake.client_kwargs())
    ingest = JOBS["payments-ingest"]
    dataflow_fake.add(ingest, State.JOB_STATE_PAUSED, "2026-11-30T02:00:00Z")
    assert provider.health([ingest])[ingest.address].state == Health.DEGRADED


def test_every_dataflow_state_has_a_verdict():
    from providers.dataflow_health import BATCH_VERDICTS, STREAMING_VERDICTS

    assert set(STREAMING_VERDICTS) == set(State) and set(BATCH_VERDICTS) == set(State)


# --------------------------------------------------------------------------- Cloud Run


class Healthz:
    """A connector's /healthz, answering ``status`` with ``report``; records the bearer tokens."""

    def __init__(self, status: int, report: dict) -> None:
        self.status, self.report, self.tokens = status, report, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.tokens.append(self.headers.get("Authorization"))
                body = json.dumps(outer.report).encode()
                self.send_response(outer.status if self.path == "/healthz" else 404)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def run_fake():
    server = FakeCloudRun()
    yield server
    server.close()


def test_connectors_on_cloud_run_ready_failed_and_polling(run_fake):
    provider = CloudRunProvider(STATE.platform.project, STATE.platform.region, poll_interval=0.01,
                                **run_fake.client_kwargs())
    poller, webhook = SERVICES["payments-connector"], SERVICES["shipments-connector"]
    provider.create(poller)
    provider.create(webhook)
    run_fake.fail_next_revision(message="Revision '{revision}' is not ready: the container exited with 1")
    with pytest.raises(Exception, match="failed"):
        provider.update(Resource(webhook.kind, webhook.name, {**webhook.spec, "max_instances": 4}, webhook.labels),
                        ["max_instances"])
    stale = Healthz(503, {"last_success_at": "2026-11-30T01:00:00Z", "last_outcome": "failed",
                          "last_error": "HTTP 401 from the API"})
    for service in run_fake.services.values():
        service["uri"] = stale.url
    provider.id_token = lambda audience: f"token-for-{audience}"
    try:
        health = provider.health([poller, webhook])
    finally:
        stale.close()
    assert health[webhook.address].state == Health.DEGRADED
    assert "still serves" in health[webhook.address].reason and "exited with 1" in health[webhook.address].reason
    assert health[poller.address].state == Health.DEGRADED
    assert "HTTP 401 from the API" in health[poller.address].reason
    assert health[poller.address].signals["last_success_at"] == dt.datetime(2026, 11, 30, 1, tzinfo=dt.UTC).timestamp()
    assert stale.tokens == [f"Bearer token-for-{stale.url}"], "only the poller's /healthz is read, with an ID token"

    fresh = Healthz(200, {"last_success_at": "2026-11-30T02:59:00Z", "last_outcome": "complete"})
    for service in run_fake.services.values():
        service["uri"] = fresh.url
    try:
        assert provider.health([poller])[poller.address].state == Health.HEALTHY
    finally:
        fresh.close()


def test_a_poll_that_cannot_be_observed_leaves_readiness_alone(run_fake):
    provider = CloudRunProvider(STATE.platform.project, STATE.platform.region, poll_interval=0.01,
                                **run_fake.client_kwargs())
    poller = SERVICES["payments-connector"]
    provider.create(poller)
    for service in run_fake.services.values():
        service["uri"] = "http://127.0.0.1:9"

    def no_token(audience):
        raise RuntimeError("user credentials cannot mint ID tokens")

    provider.id_token = no_token
    observation = provider.health([poller])[poller.address]
    assert observation.state == Health.HEALTHY and "not observable" in observation.reason


# --------------------------------------------------------------------------- local runner: log reading


LOG = """--- 2026-11-30T02:00:00+00:00 launch python -m providers.localrunner x.json
--- 2026-11-30T02:00:01+00:00 run 1: python -m beam.gcs_to_bigquery
INFO:apache_beam.runners:Running pipeline
--- 2026-11-30T02:00:05+00:00 run 1 ended with exit code 0
--- 2026-11-30T02:30:00+00:00 run 2: python -m beam.gcs_to_bigquery
Traceback (most recent call last):
  File "x.py", line 1, in <module>
google.api_core.exceptions.NotFound: 404 bucket landing-x does not exist [while running 'ListFiles']
--- 2026-11-30T02:30:04+00:00 run 2 ended with exit code 1
--- 2026-11-30T03:00:00+00:00 run 3: python -m beam.gcs_to_bigquery
ERROR:root:giving up
ValueError: bad input
--- 2026-11-30T03:00:02+00:00 run 3 ended with exit code 1
""".splitlines()


def test_the_error_line_is_the_last_exception_line_of_the_last_run():
    assert error_line(last_run(LOG)) == "ValueError: bad input"
    assert error_line(last_run(LOG[:9])) == ("google.api_core.exceptions.NotFound: 404 bucket landing-x does not "
                                             "exist [while running 'ListFiles']")
    assert error_line(["INFO:apache_beam:started", "WARNING:root:slow"]) is None, "log lines are not errors"
    assert consecutive_failures(LOG) == 2
    assert last_section(LOG)[0].startswith("--- 2026-11-30T03:00:00+00:00 run 3")


def test_launches_within_ten_minutes_count_towards_a_crash_loop():
    lines = [f"--- 2026-11-30T02:{m:02d}:00+00:00 launch python -m beam.pubsub_to_bigquery" for m in (0, 50, 52, 55)]
    assert recent_launches(lines, dt.datetime(2026, 11, 30, 2, 58, tzinfo=dt.UTC)) == 3


def test_emulators_that_do_not_answer_are_named():
    assert unreachable({"PUBSUB_EMULATOR_HOST": "127.0.0.1:9", "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}) == [
        "PUBSUB_EMULATOR_HOST=127.0.0.1:9", "STORAGE_EMULATOR_HOST=http://127.0.0.1:9"]


# --------------------------------------------------------------------------- local runner: processes

FAKE_PYTHON = f"""#!/bin/sh
# Runs the local runner's batch scheduler for real; every pipeline fails like a bad input location.
if [ "$1" = "-m" ] && [ "$2" = "providers.localrunner" ]; then exec {sys.executable} "$@"; fi
echo "Traceback (most recent call last):"
echo '  File "pipeline.py", line 7, in <module>'
echo "google.api_core.exceptions.NotFound: 404 bucket landing-nowhere does not exist [while running 'ListFiles']"
exit 1
"""


def local_job(name: str, streaming: bool) -> Resource:
    return Resource(Kind.DATAFLOW_JOB, name, {
        "template": "pubsub_to_bigquery" if streaming else "gcs_to_bigquery", "streaming": streaming,
        "schedule": None if streaming else "0 3 * * *", "parameters": {}, "pipeline": {"source_id": "x"}},
        {"managed-by": "headwater", "headwater-source": "x"})


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_local_jobs_that_fail_and_crash_are_degraded_with_their_error_and_log(tmp_path: Path):
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    runner = LocalRunnerProvider("p-health", tmp_path / "state", python=str(python), run_jobs=True)
    batch, streaming = local_job("x-sweep", False), local_job("x-ingest", True)
    try:
        runner.create(batch)
        runner.create(streaming)
        wait_for(lambda: runner.status("x-sweep")["finished"] >= 1)
        health = wait_for(lambda: (h := runner.health([batch, streaming])) and
                          h[streaming.address].state == Health.DEGRADED and h)
        failed = health[batch.address]
        assert failed.state == Health.DEGRADED
        assert failed.reason.startswith("run 1 failed with exit code 1: google.api_core.exceptions.NotFound: 404 "
                                        "bucket landing-nowhere")
        assert failed.error.endswith("[while running 'ListFiles']")
        assert failed.log_tail[-1].endswith("run 1 ended with exit code 1")
        crashed = health[streaming.address]
        assert crashed.reason.startswith("the pipeline process has ended (exit code 1): google.api_core")
        assert any("landing-nowhere" in line for line in crashed.log_tail)

        for _ in range(2):  # relaunched twice more: a crash loop
            wait_for(lambda: not _running(runner.record("x-ingest")))
            runner.create(streaming)
        looping = wait_for(lambda: (o := runner.health([streaming])[streaming.address]) and
                           o.reason.startswith("crash-looping") and o)
        assert "launched 3 times in the last 10 minutes" in looping.reason
    finally:
        runner.delete(batch)
        runner.delete(streaming)


def test_a_job_bound_to_emulators_that_no_longer_answer_is_degraded(tmp_path: Path):
    runner = LocalRunnerProvider("p-health", tmp_path / "state", python=sys.executable, run_jobs=True)
    job = local_job("x-ingest", True)
    record = SimpleNamespace(name="x-ingest", recorded_only=False, log=str(tmp_path / "x.log"), pid=os.getpid(),
                             streaming=True, started_at="now", endpoints={"PUBSUB_EMULATOR_HOST": "127.0.0.1:9"})
    runner.record = lambda name: record
    import providers.localrunner as localrunner

    original = localrunner._running
    localrunner._running = lambda r: True
    try:
        observation = runner.health([job])[job.address]
    finally:
        localrunner._running = original
    assert observation.state == Health.DEGRADED
    assert "emulators that no longer answer (PUBSUB_EMULATOR_HOST=127.0.0.1:9)" in observation.reason


# --------------------------------------------------------------------------- on the emulators


def test_dead_letters_are_counted_on_the_emulator_without_being_consumed(emulators, project_id):
    from google.cloud import pubsub_v1

    from providers.pubsub import PubSubProvider

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project_id, "x-dlq")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(request={"name": f"projects/{project_id}/subscriptions/x-dlq-hold", "topic": topic})
    for n in range(7):
        publisher.publish(topic, f"bad {n}".encode(), reason="dq_range").result()
    hold = Resource(Kind.PUBSUB_SUBSCRIPTION, "x-dlq-hold", {}, {"headwater-source": "x"})
    provider = PubSubProvider(project_id)
    first = provider.health([hold])[hold.address].signals
    again = provider.health([hold])[hold.address].signals
    assert first["backlog"] == again["backlog"] == 7, "counting hands every message back"
    assert "Pub/Sub emulator" in first["backlog_basis"]


def test_freshness_and_rows_from_the_tables_on_the_emulator(emulators, project_id):
    from google.cloud import bigquery

    from providers.bigquery import BigQueryProvider, make_client

    client = make_client(project_id)
    for dataset in ("silver", "bronze"):
        client.create_dataset(dataset)
    silver = bigquery.Table(f"{project_id}.silver.x", schema=[bigquery.SchemaField("id", "STRING"),
                                                              bigquery.SchemaField("_ingested_at", "TIMESTAMP")])
    client.create_table(silver)
    client.create_table(bigquery.Table(f"{project_id}.bronze.x_raw", schema=[bigquery.SchemaField("payload", "STRING")]))
    tables = [Resource(Kind.BIGQUERY_TABLE, "silver.x", {"schema": [{"name": "id"}, {"name": "_ingested_at"}]},
                       {"headwater-source": "x"}),
              Resource(Kind.BIGQUERY_TABLE, "bronze.x_raw", {"schema": [{"name": "payload"}]},
                       {"headwater-source": "x"})]
    provider = BigQueryProvider(project_id, "EU")
    empty = provider.health(tables)
    assert empty["bigquery_table.silver.x"].signals["last_record_at"] is None
    assert empty["bigquery_table.silver.x"].signals["created_at"] > time.time() - 600
    client.insert_rows_json(f"{project_id}.silver.x", [{"id": "a", "_ingested_at": "2026-11-30T02:00:00Z"},
                                                      {"id": "b", "_ingested_at": "2026-11-30T02:05:00Z"}])
    client.insert_rows_json(f"{project_id}.bronze.x_raw", [{"payload": "{}"}] * 3)
    signals = provider.health(tables)
    assert signals["bigquery_table.silver.x"].signals["last_record_at"] == \
        dt.datetime(2026, 11, 30, 2, 5, tzinfo=dt.UTC).timestamp()
    assert signals["bigquery_table.bronze.x_raw"].signals["rows"] == 3
    assert signals["bigquery_table.silver.x"].signals["rows"] == 2, "the query does not replace the row count"


def test_freshness_on_bigquery_is_read_from_table_metadata_without_a_query():
    from google.cloud import bigquery

    from providers.bigquery_health import table_health

    created, modified, buffered = 1_790_000_000_000, 1_790_000_600_000, 1_790_000_900_000
    table = bigquery.Table.from_api_repr({
        "tableReference": {"projectId": "p", "datasetId": "silver", "tableId": "x"},
        "creationTime": str(created), "lastModifiedTime": str(modified), "numRows": "10",
        "streamingBuffer": {"estimatedRows": "2", "oldestEntryTime": str(buffered)}})
    queries = []
    provider = SimpleNamespace(
        _rpc=lambda method, target, fn: fn(), _table_ref=lambda name: f"p.{name}",
        _bq=lambda: SimpleNamespace(get_table=lambda ref, **kw: table), _query=lambda *a, **k: queries.append(a))
    silver = Resource(Kind.BIGQUERY_TABLE, "silver.x", {"schema": [{"name": "_ingested_at"}]}, {"headwater-source": "x"})
    bronze = Resource(Kind.BIGQUERY_TABLE, "bronze.x_raw", {"schema": []}, {"headwater-source": "x"})
    saved = os.environ.pop("BIGQUERY_EMULATOR_HOST", None)
    try:
        health = table_health(provider, [silver, bronze])
    finally:
        if saved is not None:
            os.environ["BIGQUERY_EMULATOR_HOST"] = saved
    assert health[silver.address].signals["last_record_at"] == buffered / 1000
    assert "lastModifiedTime" in health[silver.address].signals["freshness_basis"]
    assert health[bronze.address].signals["rows"] == 12, "rows in the streaming buffer count as received"
    assert queries == [], "no query: metadata only"
