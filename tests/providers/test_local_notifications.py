"""The local stand-in for Cloud Storage notifications: watcher processes on the emulators that
publish what GCS would, tracked like the local runner's jobs.

The bookkeeping tests need nothing running (``run_watchers=False``); the emulator tests start
real watchers, read what they publish from a subscription, and finally drive the streaming
``gcs_to_bigquery`` job with them: a dropped file reaches Silver with no batch run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.errors import AlreadyExists, PermanentError
from providers.local_notifications import (
    LocalNotificationProvider,
    _process_start,
    load_records,
    stop_all,
    watch_once,
)
from reconciler.resources import Kind, Resource

LABELS = {"managed-by": "headwater", "headwater-platform": "dev", "headwater-source": "orders"}


def notification(bucket: str = "landing", prefix: str = "orders/", topic: str = "orders", **spec: Any) -> Resource:
    return Resource(Kind.STORAGE_NOTIFICATION, f"{bucket}/{prefix}", {
        "bucket": bucket, "topic": topic, "object_name_prefix": prefix, "event_types": ["OBJECT_FINALIZE"],
        "payload_format": "JSON_API_V1", "publisher_grant": True, **spec}, LABELS)


# --------------------------------------------------------------------------- bookkeeping


def test_recorded_watchers_keep_the_contract_without_processes(tmp_path: Path) -> None:
    local = LocalNotificationProvider("proj", tmp_path, run_watchers=False)
    wanted = notification()
    local.create(wanted)
    with pytest.raises(AlreadyExists):
        local.create(wanted)
    assert local.observe(Kind.STORAGE_NOTIFICATION) == [Resource(Kind.STORAGE_NOTIFICATION, wanted.name,
                                                                  wanted.spec, wanted.labels)]
    assert LocalNotificationProvider("other-project", tmp_path, run_watchers=False).observe(
        Kind.STORAGE_NOTIFICATION) == []
    assert (tmp_path / "notifications" / "proj" / "landing%2Forders%2F.json").exists()

    relabelled = Resource(wanted.kind, wanted.name, {**wanted.spec, "publisher_grant": False},
                          {**LABELS, "team": "x"})
    local.update(relabelled, ["publisher_grant", "labels"])
    (live,) = local.observe(Kind.STORAGE_NOTIFICATION)
    assert live.labels["team"] == "x" and live.spec["publisher_grant"] is False
    with pytest.raises(PermanentError, match="cannot change in place"):
        local.update(wanted, ["object_name_prefix"])

    local.delete(wanted)
    local.delete(wanted)  # idempotent
    assert local.observe(Kind.STORAGE_NOTIFICATION) == [] and load_records(tmp_path) == []


class FakeBlob:
    def __init__(self, name: str, generation: int) -> None:
        self.name, self.generation = name, generation
        self._properties = {"kind": "storage#object", "name": name, "bucket": "landing",
                            "generation": str(generation), "size": "3", "updated": "2026-11-26T10:00:00.000Z"}


class FakeStorage:
    def __init__(self) -> None:
        self.blobs: dict[str, FakeBlob] = {}

    def list_blobs(self, bucket: str, prefix: str | None = None) -> list[FakeBlob]:
        return [b for name, b in sorted(self.blobs.items()) if name.startswith(prefix or "")]


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    def publish(self, topic: str, data: bytes, **attributes: str) -> Any:
        self.sent.append((topic, data, attributes))
        return type("Done", (), {"result": lambda self, timeout=None: "id"})()


def test_a_pass_announces_each_new_generation_once_as_gcs_would() -> None:
    storage, publisher, seen = FakeStorage(), FakePublisher(), {}
    spec = notification(event_types=["OBJECT_FINALIZE", "OBJECT_DELETE"]).spec
    storage.blobs["orders/a.json"] = FakeBlob("orders/a.json", 1)

    assert watch_once(spec, LABELS, "proj", seen, storage, publisher) == 1
    assert watch_once(spec, LABELS, "proj", seen, storage, publisher) == 0, "nothing new, nothing published"
    ((topic, data, attributes),) = publisher.sent
    assert topic == "projects/proj/topics/orders"
    assert json.loads(data) == storage.blobs["orders/a.json"]._properties
    assert attributes == {**LABELS, "notificationConfig": "projects/_/buckets/landing/notificationConfigs/local",
                          "eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1", "bucketId": "landing",
                          "objectId": "orders/a.json", "objectGeneration": "1",
                          "eventTime": "2026-11-26T10:00:00.000Z"}

    storage.blobs["orders/a.json"] = FakeBlob("orders/a.json", 2)  # re-landed
    watch_once(spec, LABELS, "proj", seen, storage, publisher)
    replaced, landed = publisher.sent[1:]
    assert (replaced[2]["eventType"], replaced[2]["objectGeneration"], replaced[2]["overwrittenByGeneration"]) == \
        ("OBJECT_DELETE", "1", "2")
    assert (landed[2]["eventType"], landed[2]["objectGeneration"], landed[2]["overwroteGeneration"]) == \
        ("OBJECT_FINALIZE", "2", "1")

    del storage.blobs["orders/a.json"]  # moved to Bronze by the ingest job
    watch_once(spec, LABELS, "proj", seen, storage, publisher)
    assert publisher.sent[-1][2]["eventType"] == "OBJECT_DELETE" and seen == {}

    finalize_only = notification().spec
    storage.blobs["orders/b.json"] = FakeBlob("orders/b.json", 3)
    before = len(publisher.sent)
    watch_once(finalize_only, LABELS, "proj", {"orders/gone.json": 1}, storage, publisher)
    assert [m[2]["eventType"] for m in publisher.sent[before:]] == ["OBJECT_FINALIZE"], "only the types asked for"


# --------------------------------------------------------------------------- on the emulators


@pytest.fixture
def watched(emulators: Any, project_id: str, unique: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A landing bucket with a file already there, the source's topic and a subscription to it."""
    from google.cloud import pubsub_v1

    from beam.common.clients import publisher_client, storage_client

    bucket = storage_client().create_bucket(f"{unique}-landing")
    bucket.blob("orders/before.json").upload_from_string(b"{}\n")
    topic = f"projects/{project_id}/topics/orders"
    subscription = f"projects/{project_id}/subscriptions/orders-test"
    publisher_client().create_topic(name=topic)
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
    local = LocalNotificationProvider(project_id, tmp_path / "state", run_watchers=True, interval_s=0.2)
    yield {"bucket": bucket, "subscription": subscription, "local": local,
           "resource": notification(bucket.name), "state": tmp_path / "state"}
    stop_all(tmp_path / "state")


def pull(subscription: str, expected: int, timeout: float = 20.0, settle: float = 1.5) -> list[Any]:
    """Messages until ``expected`` have arrived, then whatever else comes within ``settle`` seconds."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    settled = None
    while time.monotonic() < (settled or deadline):
        response = subscriber.pull(subscription=subscription, max_messages=100, timeout=2)
        if response.received_messages:
            got.extend(m.message for m in response.received_messages)
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
        if len(got) >= expected and settled is None:
            settled = time.monotonic() + settle
        time.sleep(0.1)
    return got


def test_a_watcher_publishes_what_gcs_would_and_survives_a_restart(watched: dict[str, Any]) -> None:
    local, bucket, resource = watched["local"], watched["bucket"], watched["resource"]
    local.create(resource)
    (record,) = load_records(watched["state"])
    assert _process_start(record.pid), "a process of its own, outliving this call"

    bucket.blob("orders/a.json").upload_from_string(b'{"id": 1}\n')
    bucket.blob("elsewhere/b.json").upload_from_string(b"{}\n")  # outside the prefix

    (message,) = pull(watched["subscription"], 1)
    blob = bucket.get_blob("orders/a.json")
    assert message.attributes["eventType"] == "OBJECT_FINALIZE"
    assert message.attributes["objectId"] == "orders/a.json" and message.attributes["bucketId"] == bucket.name
    assert message.attributes["objectGeneration"] == str(blob.generation)
    assert message.attributes["payloadFormat"] == "JSON_API_V1"
    assert {k: message.attributes[k] for k in LABELS} == LABELS, "custom attributes"
    assert json.loads(message.data)["name"] == "orders/a.json" and json.loads(message.data)["size"] == "10"
    assert local.observe(Kind.STORAGE_NOTIFICATION) == [Resource(Kind.STORAGE_NOTIFICATION, resource.name,
                                                                  resource.spec, resource.labels)]

    os.killpg(record.pid, signal.SIGKILL)  # the watcher dies...
    time.sleep(0.3)
    assert local.observe(Kind.STORAGE_NOTIFICATION) == [], "a dead watcher is not a live config"
    bucket.blob("orders/c.json").upload_from_string(b"{}\n")  # ...a file lands meanwhile...
    local.create(resource)  # ...and the next apply starts it again

    again = pull(watched["subscription"], 1)
    assert [m.attributes["objectId"] for m in again] == ["orders/c.json"], \
        "what it had announced is not announced again; what landed while it was away is"

    local.delete(resource)
    assert load_records(watched["state"]) == [] and _process_start(record.pid) is None


def test_stop_all_stops_every_watcher(watched: dict[str, Any]) -> None:
    local = watched["local"]
    local.create(watched["resource"])
    (record,) = load_records(watched["state"])

    assert stop_all(watched["state"]) == [watched["resource"].name]

    assert _process_start(record.pid) is None and load_records(watched["state"]) == []


def test_a_dropped_file_reaches_silver_through_the_watcher_and_the_streaming_job(
        watched: dict[str, Any], project_id: str, tmp_path: Path) -> None:
    """The local chain end to end: file -> watcher -> topic -> streaming gcs_to_bigquery -> Silver,
    and the file moves to Bronze; no batch run anywhere."""
    from google.cloud import pubsub_v1

    from beam.common.clients import storage_client
    from beam.common.spec import parse_spec
    from beam.common.synthetic import SPEC, generate

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "beam"))
    from emulator_setup import count_rows, create_ingest_targets

    bucket = watched["bucket"]
    bronze = storage_client().create_bucket(bucket.name.replace("-landing", "-bronze"))
    doc = dict(SPEC, project=project_id, bronze={"table": "bronze.example_source", "bucket": f"gs://{bronze.name}"},
               dead_letter={"topic": f"projects/{project_id}/topics/example_source-dlq"})
    spec = parse_spec(doc)
    create_ingest_targets(spec)
    subscription = f"projects/{project_id}/subscriptions/orders-ingest"
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=f"projects/{project_id}/topics/orders")
    (tmp_path / "spec.json").write_text(json.dumps(doc))
    log = (tmp_path / "job.log").open("wb")
    job = subprocess.Popen(
        [sys.executable, "-m", "beam.gcs_to_bigquery", f"--source_spec={tmp_path / 'spec.json'}",
         f"--input_pattern=gs://{bucket.name}/orders/", f"--input_subscription={subscription}"],
        env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        watched["local"].create(watched["resource"])
        first, expected = generate(50, seed=41)
        second, expected_second = generate(20, seed=42)
        second = [p.replace(b'"txn-', b'"txn-777') for p in second]  # other dedup keys than the first file's
        bucket.blob("orders/dropped.json").upload_from_string(b"\n".join(first) + b"\n")

        def wait(condition: Any) -> None:
            deadline = time.monotonic() + 60
            while not condition():
                assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "job.log").read_text()[-3000:]
                time.sleep(0.5)

        wait(lambda: count_rows(spec, "silver.example_source") == expected.valid)
        # The next file. (Its event also makes the local runner's idle pull return, which is when
        # that runner advances the watermark the move of the first file waits for.)
        bucket.blob("orders/later/next.json").upload_from_string(b"\n".join(second) + b"\n")
        wait(lambda: bucket.get_blob("orders/dropped.json") is None)
        wait(lambda: count_rows(spec, "silver.example_source") == expected.valid + expected_second.valid)

        assert count_rows(spec, "bronze.example_source") == expected.records_in + expected_second.records_in
        assert "dropped.json" in [b.name.rsplit("/", 1)[1] for b in storage_client().list_blobs(bronze)]
        assert bucket.get_blob("orders/before.json") is not None, "there before the config: left to the sweep"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        log.close()
