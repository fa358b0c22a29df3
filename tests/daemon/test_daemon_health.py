"""Health beside sync, end to end (issue 11's proof): the daemon on the emulators with its real
providers, the pipelines running for real on the local runner, alerts to a local webhook.

* A source whose data stops arriving turns Degraded when its SLA (1 minute here: real time, no
  clock games) passes, and alerts once; when data flows again it is Healthy and "recovered".
* Dead letters over the error budget alert once.
* A job made to fail - its input location's bucket deleted - turns Degraded with the job's own
  error in ``headwater status``, ``/status`` and the alert.
* Drift in ``/status`` and its alert names the commit, author and line of the desired value.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from google.cloud import pubsub_v1, storage
from google.protobuf import field_mask_pb2
from support import DesiredRepo, get_json, scrape, value, wait_for

from providers import bigquery_data, pubsub_data, stop_local
from providers.localrunner import LocalRunnerProvider
from reconciler import cli

pytestmark = pytest.mark.usefixtures("emulators")

EVENTS = """source_id: events
ingestion:
  pattern: event_streaming
schema:
  file: schemas/events.json
processing:
  bronze_to_silver:
    - deduplication:
        key: [event_id]
    - data_quality:
        rules:
          - field: event_type
            check: allowed_values
            values: [page_view, click]
monitoring:
  sla_minutes: 1
  error_budget_percent: 5
"""
FILES = """source_id: files
ingestion:
  pattern: batch_file
  location: gs://{bucket}/files/
  schedule: "0 3 * * *"
  format: json
schema:
  file: schemas/files.json
"""
PLATFORM = """project: {project}
region: europe-west1
environment: {unique}
zones:
  landing: {{bucket: {unique}-landing}}
  bronze: {{bucket: {unique}-bronze}}
  silver: {{bucket: {unique}-silver}}
pubsub:
  ack_deadline_seconds: 60
"""
SCHEMA = {"fields": [{"name": "event_id", "type": "STRING", "mode": "REQUIRED"},
                     {"name": "event_type", "type": "STRING", "mode": "REQUIRED"},
                     {"name": "event_time", "type": "TIMESTAMP", "mode": "REQUIRED"}]}


def events(n: int, first: int, event_type: str = "click") -> list[bytes]:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [json.dumps({"event_id": f"e{first + i}", "event_type": event_type, "event_time": now}).encode()
            for i in range(n)]


def source_health(base: str, source: str) -> dict | None:
    document = get_json(base, "/status").get("health")
    return next((s for s in document["sources"] if s["source_id"] == source), None) if document else None


def own_platform(root: Path, project_id: str, unique: str, *, files: bool = True) -> DesiredRepo:
    """A platform of its own (not the example's, which other work changes): ``events`` and ``files``."""
    repo = DesiredRepo(root, project_id, unique, sources=())
    repo.write("platform.yaml", PLATFORM.format(project=project_id, unique=unique))
    repo.write("connectors/events.yaml", EVENTS)
    repo.write("schemas/events.json", json.dumps({"source_id": "events", "version": "1", **SCHEMA}, indent=2))
    if files:
        repo.write("connectors/files.yaml", FILES.format(bucket=f"{unique}-landing"))
        repo.write("schemas/files.json", json.dumps({"source_id": "files", "version": "1", **SCHEMA}, indent=2))
    repo.commit_and_push("two sources with health settings")
    return repo


@pytest.fixture
def platform(tmp_path: Path, project_id: str, unique: str, monkeypatch) -> DesiredRepo:
    monkeypatch.setenv("HEADWATER_LOCAL_JOBS", "run")  # the pipelines run for real
    yield own_platform(tmp_path / "git", project_id, unique)
    stop_local(Path(os.environ["HEADWATER_STATE_DIR"]), project_id)


def test_sla_dead_letters_and_a_failing_job_alert_once_each_and_recover(platform, start_daemon, alert_receiver,
                                                                        project_id, unique, capsys):
    revision = platform.repo.head.commit.hexsha
    running = start_daemon(platform, notify_webhook=alert_receiver.url, drift_interval=2.0,
                           daemon_kwargs={"providers_factory": None})  # the real providers: the local runner
    base = running.base
    wait_for(lambda: (s := get_json(base, "/status")["last_sync"]) and s["revision"] == revision
             and s["result"] == "converged", timeout=180, what="convergence with the jobs running")

    def count(event: str) -> int:
        return alert_receiver.events().count(event)

    # Data flows: Healthy, fresh.
    pubsub_data.publish(project_id, "events", events(5, 0))
    wait_for(lambda: bigquery_data.count_rows(project_id, f"{project_id}.silver.events") == 5, timeout=120,
             what="5 rows in Silver")
    fresh = wait_for(lambda: (s := source_health(base, "events")) and s["freshness"]["last_record_at"] and s,
                     timeout=30, what="freshness observed")
    assert fresh["health"] == "Healthy", fresh["reasons"]
    assert fresh["freshness"]["sla_seconds"] == 60 and fresh["freshness"]["breached"] is False

    # Bad records: dead letters grow far beyond 5 % of what was received - one alert.
    pubsub_data.publish(project_id, "events", events(5, 100, event_type="not-an-event"))
    wait_for(lambda: count("dead_letters_over_budget") == 1, timeout=120, what="dead letters over budget")
    over = next(a for a in alert_receiver.received if a["headwater"]["event"] == "dead_letters_over_budget")
    assert over["headwater"]["source"] == "events" and over["headwater"]["dead_letters"]["growth"] >= 1
    assert "dead letters over budget" in over["text"]

    # No more data: past the 1-minute SLA the source is Degraded, and that is alerted once.
    wait_for(lambda: count("sla_breached") == 1, timeout=150, interval=1.0, what="the SLA breached")
    degraded = source_health(base, "events")
    assert degraded["health"] == "Degraded" and degraded["freshness"]["breached"] is True
    assert degraded["reasons"][0].startswith("SLA breached: newest record ")
    samples = scrape(base)
    assert value(samples, "headwater_source_health", source="events", state="degraded") == 1
    assert value(samples, "headwater_source_sla_seconds", source="events") == 60
    assert value(samples, "headwater_source_freshness_seconds", source="events") > 60
    assert value(samples, "headwater_source_dead_letters", source="events") >= 5
    time.sleep(5)  # more checks: no second alert for the same breach or the same burst
    assert count("sla_breached") == 1 and count("dead_letters_over_budget") == 1

    # Data again: Healthy, and "recovered".
    pubsub_data.publish(project_id, "events", events(3, 200))
    wait_for(lambda: count("sla_recovered") == 1, timeout=120, what="the SLA recovered")
    assert wait_for(lambda: source_health(base, "events")["health"] == "Healthy", timeout=30, what="Healthy")

    # A job made to fail: the bucket of its input location is deleted; its next run fails.
    client = storage.Client(project=project_id)
    bucket = client.bucket(f"{unique}-landing")
    for blob in client.list_blobs(bucket):
        blob.delete()
    bucket.delete()
    runner = LocalRunnerProvider(project_id, Path(os.environ["HEADWATER_STATE_DIR"]))
    runs = runner.run_now("files-sweep")
    runner.wait_for_run("files-sweep", runs, timeout=120)
    wait_for(lambda: count("job_failed") >= 1, timeout=60, what="job_failed")
    failed = next(a for a in alert_receiver.received if a["headwater"]["event"] == "job_failed"
                  and a["headwater"]["subject"] == "dataflow_job.files-sweep")
    assert "404" in failed["headwater"]["error"] and f"{unique}-landing" in failed["headwater"]["error"]
    assert "job files-sweep failed: run 2 failed with exit code 1" in failed["text"]
    assert failed["headwater"]["log_tail"], "the alert carries the log's tail"
    files = source_health(base, "files")
    sweep = next(r for r in files["resources"] if r["address"] == "dataflow_job.files-sweep")
    assert files["health"] == "Degraded" and sweep["health"] == "Degraded"
    assert sweep["error"] == failed["headwater"]["error"] and sweep["log_tail"]

    # The same verdict from the command line, with the job's error; exit 2.
    capsys.readouterr()
    assert cli.main(["status", "--repo", str(platform.work_path)]) == 2
    out = capsys.readouterr().out
    line = next(text for text in out.splitlines() if text.startswith("files "))
    assert "Degraded" in line
    assert "dataflow_job.files-sweep: Degraded: run 2 failed with exit code 1: " in out and "404" in out


def test_drift_in_status_and_its_alert_names_the_commit_and_author(tmp_path, start_daemon, alert_receiver,
                                                                    project_id, unique):
    desired_repo = own_platform(tmp_path / "git", project_id, unique, files=False)
    first = desired_repo.repo.head.commit.hexsha
    running = start_daemon(desired_repo, notify_webhook=alert_receiver.url)
    wait_for(lambda: (s := get_json(running.base, "/status")["last_sync"]) and s["result"] == "converged",
             what="convergence")
    line = next(n for n, text in enumerate(desired_repo.read("platform.yaml").splitlines(), 1)
                if "ack_deadline_seconds" in text)
    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.update_subscription(request={
            "subscription": {"name": f"projects/{project_id}/subscriptions/events-ingest", "ack_deadline_seconds": 15},
            "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds"])}, timeout=10)
    entry = wait_for(lambda: next((r for r in get_json(running.base, "/status")["drift"]["resources"]
                                   if r["address"] == "pubsub_subscription.events-ingest"), None), what="drift")
    (field,) = [f for f in entry["fields"] if f["path"] == "ack_deadline_seconds"]
    origin = field["origin"]
    assert (origin["commit"], origin["author"], origin["email"]) == (first, "headwater tests", "tests@example.com")
    assert (origin["file"], origin["line"], origin["field"]) == ("platform.yaml", line, "pubsub.ack_deadline_seconds")
    alert = wait_for(lambda: next((a for a in alert_receiver.received
                                   if a["headwater"]["event"] == "drift_detected"), None), what="drift alert")
    assert f"set by {first[:12]} (headwater tests, " in alert["text"]
    origins = alert["headwater"]["origins"]["pubsub_subscription.events-ingest"]
    assert origins["ack_deadline_seconds"]["author"] == "headwater tests"
