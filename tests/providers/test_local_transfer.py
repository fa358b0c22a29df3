"""The local stand-in for Storage Transfer: a transfer process per job, copying from moto's S3
server (started with the emulators) into the landing prefix on the Storage emulator, and
publishing the completion notification Storage Transfer publishes.

One run is tested in-process (`transfer_once`) against the real local S3, Storage and Pub/Sub;
the process lifecycle (schedule, run now, update, delete) with real processes; the bookkeeping
with none. The completion message is parsed back with the Storage Transfer client library's own
``TransferOperation`` type (unknown fields are errors): the stand-in publishes what the service does.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1, storage, storage_transfer_v1

from providers import pubsub_data
from providers.errors import AlreadyExists, PermanentError
from providers.local_transfer import (
    FAILED,
    SUCCESS,
    LocalTransferProvider,
    TransferRecord,
    load_records,
    local_s3,
    stop_all,
    transfer_once,
)
from reconciler.resources import Kind, Resource

LABELS = {"managed-by": "headwater", "headwater-platform": "dev", "headwater-source": "lake"}


def job(landing: str, source_bucket: str, **spec: Any) -> Resource:
    return Resource(Kind.STORAGE_TRANSFER_JOB, "lake-transfer", {
        "source": {"type": "s3", "bucket": source_bucket, "path": "exports/", "storage_account": None,
                   "role_arn": "arn:aws:iam::123456789012:role/t", "credentials_secret": None},
        "sink": {"bucket": landing, "path": "lake/"}, "schedule": "0 3 * * *", "overwrite_when": "DIFFERENT",
        "delete_from_source": False, "delete_unique_in_sink": False, "max_age_seconds": None,
        "notification_topic": "lake", "enabled": True, "service_agent_grants": True, **spec}, LABELS)


# --------------------------------------------------------------------------- bookkeeping


def test_recorded_jobs_keep_the_contract_without_processes(tmp_path: Path) -> None:
    local = LocalTransferProvider("proj", tmp_path, run_jobs=False)
    wanted = job("landing", "src")
    local.create(wanted)
    with pytest.raises(AlreadyExists):
        local.create(wanted)
    assert local.observe(Kind.STORAGE_TRANSFER_JOB) == [Resource(wanted.kind, wanted.name, wanted.spec, LABELS)]
    assert LocalTransferProvider("other", tmp_path, run_jobs=False).observe(Kind.STORAGE_TRANSFER_JOB) == []
    changed = Resource(wanted.kind, wanted.name, {**wanted.spec, "delete_unique_in_sink": True}, LABELS)
    local.update(changed, ["delete_unique_in_sink"])
    assert local.observe(Kind.STORAGE_TRANSFER_JOB)[0].spec["delete_unique_in_sink"] is True
    with pytest.raises(PermanentError, match="cannot change in place"):
        local.update(changed, ["schedule"])
    local.delete(wanted)
    local.delete(wanted)
    assert local.observe(Kind.STORAGE_TRANSFER_JOB) == [] and load_records(tmp_path) == []


def test_azure_has_no_stand_in_and_a_missing_secret_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HEADWATER_SECRETS_DIR", raising=False)
    local = LocalTransferProvider("proj", tmp_path, run_jobs=True)
    azure = job("landing", "src", source={"type": "azure_blob", "bucket": "c", "path": "", "storage_account": "a",
                                          "role_arn": None, "credentials_secret": "sas"})
    with pytest.raises(PermanentError, match="azure_blob sources have no local stand-in"):
        local.create(azure)
    keyed = job("landing", "src", source={**job("l", "s").spec["source"], "role_arn": None,
                                          "credentials_secret": "lake-keys"})
    with pytest.raises(PermanentError, match="secret 'lake-keys' is missing: create the file"):
        local.create(keyed)
    assert load_records(tmp_path) == []


# --------------------------------------------------------------------------- one run, for real


@pytest.fixture
def world(emulators, project_id, unique):
    """A source bucket in the local S3, a landing bucket, the topic and a subscription to read it."""
    s3 = local_s3()
    source, landing = f"{unique}-src", f"{unique}-landing"
    s3.create_bucket(Bucket=source)
    gcs = storage.Client(project=project_id)
    gcs.create_bucket(landing)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project_id, "lake")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscriber.subscription_path(project_id, "lake-read"), topic=topic)
    return {"s3": s3, "source": source, "landing": landing, "gcs": gcs, "publisher": publisher,
            "project": project_id}


def record_of(world, tmp_path: Path, **spec: Any) -> TransferRecord:
    resource = job(world["landing"], world["source"], **spec)
    return TransferRecord(name=resource.name, project=world["project"], job_name="transferJobs/headwater-dev-lake",
                          pid=0, process_start="", spec=dict(resource.spec), labels=LABELS, log="", started_at="",
                          secrets_dir=str(tmp_path / "secrets"))


def landed(world) -> dict[str, int]:
    return {b.name: b.generation for b in world["gcs"].list_blobs(world["landing"])}


def messages(world) -> list[pubsub_data.Message]:
    return pubsub_data.pull_available(world["project"], "lake-read")


def test_a_run_copies_what_is_new_and_announces_it_as_storage_transfer_does(world, tmp_path):
    s3 = world["s3"]
    for key, body in (("exports/a.json", b'{"n": 1}\n'), ("exports/day/b.json", b'{"n": 2}\n'),
                      ("exports/", b""), ("elsewhere/c.json", b"{}\n")):
        s3.put_object(Bucket=world["source"], Key=key, Body=body)
    record = record_of(world, tmp_path)

    operation = transfer_once(record, world["gcs"], world["publisher"])
    first = landed(world)
    assert set(first) == {"lake/a.json", "lake/day/b.json"}, "the source path is taken off; only its objects"
    assert world["gcs"].bucket(world["landing"]).blob("lake/day/b.json").download_as_bytes() == b'{"n": 2}\n'
    (message,) = messages(world)
    assert message.attributes == {"eventType": SUCCESS, "payloadFormat": "JSON", "projectId": world["project"],
                                  "transferJobName": "transferJobs/headwater-dev-lake",
                                  "transferOperationName": operation["name"]}
    parsed = storage_transfer_v1.TransferOperation.from_json(message.data, ignore_unknown_fields=False)
    assert parsed.status == storage_transfer_v1.TransferOperation.Status.SUCCESS
    assert (parsed.counters.objects_found_from_source, parsed.counters.objects_copied_to_sink) == (2, 2)
    assert parsed.transfer_spec.aws_s3_data_source.bucket_name == world["source"]
    assert parsed.start_time <= parsed.end_time

    # The next run: nothing new, nothing copied - the landing copies are what it compares with.
    operation = transfer_once(record, world["gcs"], world["publisher"])
    assert operation["counters"]["objectsCopiedToSink"] == "0"
    assert operation["counters"]["objectsFromSourceSkippedBySync"] == "2"
    assert landed(world) == first, "no new generation: nothing for ingestion to read again"
    assert len(messages(world)) == 1

    # A changed object is copied again (a new generation); never: left alone.
    s3.put_object(Bucket=world["source"], Key="exports/a.json", Body=b'{"n": 10}\n')
    assert transfer_once(record_of(world, tmp_path, overwrite_when="NEVER"), world["gcs"],
                         world["publisher"])["counters"]["objectsCopiedToSink"] == "0"
    transfer_once(record, world["gcs"], world["publisher"])
    now = landed(world)
    assert now["lake/a.json"] != first["lake/a.json"] and now["lake/day/b.json"] == first["lake/day/b.json"]


def test_max_age_and_the_delete_options(world, tmp_path):
    s3 = world["s3"]
    s3.put_object(Bucket=world["source"], Key="exports/a.json", Body=b"a\n")
    s3.put_object(Bucket=world["source"], Key="exports/b.json", Body=b"b\n")
    world["gcs"].bucket(world["landing"]).blob("lake/orphan.json").upload_from_string(b"x\n")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    old = transfer_once(record_of(world, tmp_path, max_age_seconds=86400), world["gcs"], world["publisher"], now=later)
    assert old["counters"]["objectsFoundFromSource"] == "0", "modified more than a day before the run: not copied"

    transfer_once(record_of(world, tmp_path, delete_unique_in_sink=True), world["gcs"], world["publisher"])
    assert set(landed(world)) == {"lake/a.json", "lake/b.json"}, "the sink's own object went"

    moved = transfer_once(record_of(world, tmp_path, delete_from_source=True), world["gcs"], world["publisher"])
    assert moved["counters"]["objectsDeletedFromSource"] == "2"
    assert "Contents" not in s3.list_objects_v2(Bucket=world["source"], Prefix="exports/")
    assert set(landed(world)) == {"lake/a.json", "lake/b.json"}


def test_credentials_come_from_the_secret_and_a_failed_run_is_announced(world, tmp_path):
    world["s3"].put_object(Bucket=world["source"], Key="exports/a.json", Body=b"a\n")
    keyed = record_of(world, tmp_path, source={**job("l", world["source"]).spec["source"], "role_arn": None,
                                               "credentials_secret": "lake-keys"})
    failed = transfer_once(keyed, world["gcs"], world["publisher"])
    assert failed["status"] == "FAILED" and "lake-keys" in json.dumps(failed["errorBreakdowns"])
    (message,) = messages(world)
    assert message.attributes["eventType"] == FAILED
    storage_transfer_v1.TransferOperation.from_json(message.data, ignore_unknown_fields=False)

    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "lake-keys").write_text('{"access_key_id": "AKID", "secret_access_key": "s3cr3t"}')
    assert transfer_once(keyed, world["gcs"], world["publisher"])["status"] == "SUCCESS"
    assert set(landed(world)) == {"lake/a.json"}


# --------------------------------------------------------------------------- the process


def test_the_process_runs_on_demand_and_its_status_says_what_it_did(world, tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_LOCAL_JOBS", "run")
    world["s3"].put_object(Bucket=world["source"], Key="exports/a.json", Body=b"a\n")
    local = LocalTransferProvider(world["project"], tmp_path)
    wanted = job(world["landing"], world["source"])
    local.create(wanted)
    try:
        assert landed(world) == {}, "as on Storage Transfer, nothing runs before the first tick"
        status = local.wait_for_run(wanted.name, local.run_now(wanted.name), 60)
        assert status["last"]["status"] == "SUCCESS" and status["last"]["counters"]["objectsCopiedToSink"] == "1"
        assert status["next_run_at"].endswith("03:00:00+00:00")
        assert set(landed(world)) == {"lake/a.json"}
        assert [r.name for r in local.observe(Kind.STORAGE_TRANSFER_JOB)] == [wanted.name]

        changed = Resource(wanted.kind, wanted.name, {**wanted.spec, "delete_unique_in_sink": True}, LABELS)
        local.update(changed, ["delete_unique_in_sink"])
        world["gcs"].bucket(world["landing"]).blob("lake/orphan.json").upload_from_string(b"x\n")
        status = local.wait_for_run(wanted.name, local.run_now(wanted.name), 60)
        assert status["last"]["counters"]["objectsDeletedFromSink"] == "1"
    finally:
        local.delete(wanted)
    assert local.observe(Kind.STORAGE_TRANSFER_JOB) == []
    assert stop_all(tmp_path) == []


def test_a_missing_topic_fails_loudly(world, tmp_path):
    # A topic that does not exist: the run's copies stay, the publish raises (the process logs it).
    with pytest.raises(gexc.NotFound):
        transfer_once(record_of(world, tmp_path, notification_topic="nope"), world["gcs"], world["publisher"])


def test_a_transfer_launched_against_emulators_that_are_gone_is_missing_and_relaunched(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1111")
    local = LocalTransferProvider("proj", tmp_path, run_jobs=False)
    wanted = job("landing", "src")
    local.create(wanted)
    assert [r.name for r in local.observe(Kind.STORAGE_TRANSFER_JOB)] == ["lake-transfer"]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:2222")  # another `local up`
    assert local.observe(Kind.STORAGE_TRANSFER_JOB) == [], "bound to the old emulators: missing"
    local.create(wanted)  # relaunched, not refused as already running
    (record,) = load_records(tmp_path)
    assert record.endpoints["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:2222"
    assert [r.name for r in local.observe(Kind.STORAGE_TRANSFER_JOB)] == ["lake-transfer"]
