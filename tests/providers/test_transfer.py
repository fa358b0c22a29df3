"""StorageTransferProvider: the jobs it builds, checked against the client library's own types,
and the same requests sent through the official clients (REST transport) to a local endpoint
(tests/fake_storage_transfer.py) that also answers the bucket's and the topic's IAM.

Storage Transfer has no emulator. What these tests cannot show - that the service accepts the
jobs and names as built, reads the schedule back as written, and which roles it needs - is
verified only against the real service (the provider's docstring, deploy/iam.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator

import pytest
from fake_storage_transfer import AGENT, MEMBER, FakeStorageTransfer, status_of
from google.cloud import storage_transfer_v1
from helpers import EXAMPLE

from providers.errors import AlreadyExists, PermanentError
from providers.transfer import (
    NAME_KEY,
    StorageTransferProvider,
    build_job,
    build_schedule,
    job_spec,
    update_mask,
)
from reconciler.compile import compile_resources
from reconciler.load import load_repo
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind, Resource

PROJECT = "headwater-demo"
LANDING = "landing-headwater-demo-europe-west1"
TOPIC = f"projects/{PROJECT}/topics/aws_data_lake"
NOW = dt.datetime(2026, 11, 30, 10, 30, tzinfo=dt.UTC)
# What compile makes of the example's cloud_transfer source (aws_data_lake).
DESIRED = next(r for r in compile_resources(load_repo(EXAMPLE)) if r.kind == Kind.STORAGE_TRANSFER_JOB)
IMMUTABLE = {Kind.STORAGE_TRANSFER_JOB: StorageTransferProvider.immutable_fields[Kind.STORAGE_TRANSFER_JOB]}


def changed(resource: Resource, labels: dict | None = None, **spec) -> Resource:
    return dataclasses.replace(resource, spec={**resource.spec, **spec}, labels=labels or resource.labels)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStorageTransfer]:
    # With the emulators' variables set (by an earlier test of the session) the storage and
    # pubsub clients would go to the emulators instead of the endpoint they are given.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    fake = FakeStorageTransfer(PROJECT)
    fake.add_bucket(LANDING, [{"role": "roles/storage.legacyBucketOwner", "members": ["projectOwner:headwater-demo"]}])
    fake.add_topic(TOPIC, [{"role": "roles/pubsub.subscriber", "members": ["serviceAccount:etl@x.iam.gserviceaccount.com"]}])
    yield fake
    fake.close()


def provider(fake: FakeStorageTransfer, now: dt.datetime = NOW) -> StorageTransferProvider:
    clock = iter(now + dt.timedelta(minutes=n) for n in range(1000))
    return StorageTransferProvider(PROJECT, transfer_client=fake.transfer_client(), storage_client=fake.storage_client(),
                                   publisher_client=fake.publisher_client(), clock=lambda: next(clock))


def plan_of(desired: list[Resource], live: list[Resource]) -> dict[str, tuple[Action, tuple[str, ...]]]:
    plan = reconcile(desired, live, IMMUTABLE)
    return {c.name: (c.action, c.update_fields) for c in plan.changes}


def sent_job(request) -> storage_transfer_v1.TransferJob:
    """A request body parsed back with the client library's type (unknown fields are errors)."""
    return storage_transfer_v1.TransferJob.from_json(json.dumps(request.body), ignore_unknown_fields=False)


# --------------------------------------------------------------------------- the requests


def test_compile_emits_the_contracts_shape():
    assert DESIRED.name == "aws-data-lake-transfer"
    assert DESIRED.spec == {
        "source": {"type": "s3", "bucket": "acme-data-lake-exports", "path": "inventory/", "storage_account": None,
                   "role_arn": "arn:aws:iam::123456789012:role/headwater-transfer", "credentials_secret": None},
        "sink": {"bucket": LANDING, "path": "aws_data_lake/"},
        "schedule": "0 */6 * * *", "overwrite_when": "DIFFERENT", "delete_from_source": False,
        "delete_unique_in_sink": False, "max_age_seconds": None, "notification_topic": "aws_data_lake",
        "enabled": True, "service_agent_grants": True}


def test_the_job_is_the_library_type_and_reads_back_as_its_spec():
    job = build_job(DESIRED, PROJECT, "123456789012", NOW)
    assert isinstance(job, storage_transfer_v1.TransferJob)
    assert job.name == "transferJobs/headwater-dev-aws-data-lake-transfer-20261130103000"
    s3 = job.transfer_spec.aws_s3_data_source
    assert (s3.bucket_name, s3.path, s3.role_arn, s3.credentials_secret) == (
        "acme-data-lake-exports", "inventory/", "arn:aws:iam::123456789012:role/headwater-transfer", "")
    assert "aws_access_key" not in s3, "never a key"
    assert (job.transfer_spec.gcs_data_sink.bucket_name, job.transfer_spec.gcs_data_sink.path) == (LANDING,
                                                                                                    "aws_data_lake/")
    options = job.transfer_spec.transfer_options
    assert options.overwrite_when == storage_transfer_v1.TransferOptions.OverwriteWhen.DIFFERENT
    assert not options.delete_objects_from_source_after_transfer and not options.delete_objects_unique_in_sink
    assert job.notification_config.pubsub_topic == TOPIC
    assert job.notification_config.payload_format == storage_transfer_v1.NotificationConfig.PayloadFormat.JSON
    assert len(job.notification_config.event_types) == 3
    assert job.status == storage_transfer_v1.TransferJob.Status.ENABLED
    assert json.loads(job.description) == {**DESIRED.labels, NAME_KEY: DESIRED.name}
    # Serialized as the REST transport sends it, and parsed back with the library's type.
    wire = storage_transfer_v1.TransferJob.to_json(job)
    assert storage_transfer_v1.TransferJob.from_json(wire) == job
    assert job_spec(job, PROJECT, grants=True) == DESIRED.spec


def test_the_schedule_starts_at_the_crons_next_tick_and_repeats_at_its_period():
    every_6h = build_schedule("0 */6 * * *", NOW)  # 10:30 -> the 12:00 run today
    assert (every_6h.schedule_start_date.year, every_6h.schedule_start_date.month,
            every_6h.schedule_start_date.day) == (2026, 11, 30)
    assert (every_6h.start_time_of_day.hours, every_6h.start_time_of_day.minutes) == (12, 0)
    assert every_6h.repeat_interval == dt.timedelta(hours=6)
    daily = build_schedule("15 3 * * *", dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC))
    assert (daily.schedule_start_date.day, daily.start_time_of_day.hours, daily.start_time_of_day.minutes) == (1, 3, 15)
    assert daily.schedule_start_date.month == 12 and daily.repeat_interval == dt.timedelta(hours=24)
    on_the_tick = build_schedule("45 * * * *", dt.datetime(2026, 11, 30, 7, 45, tzinfo=dt.UTC))
    assert (on_the_tick.start_time_of_day.hours, on_the_tick.start_time_of_day.minutes) == (7, 45)
    # Whatever the creation time, the job reads back as the same cron.
    for hour in range(24):
        job = build_job(DESIRED, PROJECT, "1", NOW.replace(hour=hour))
        assert job_spec(job, PROJECT, True)["schedule"] == "0 */6 * * *"


def test_azure_and_gcs_sources_and_the_secret_by_reference():
    azure = changed(DESIRED, source={"type": "azure_blob", "bucket": "exports", "path": "", "storage_account": "acme",
                                     "role_arn": None, "credentials_secret": "acme-sas"},
                    max_age_seconds=30 * 86400, overwrite_when="NEVER", delete_from_source=True)
    job = build_job(azure, PROJECT, "123456789012", NOW)
    az = job.transfer_spec.azure_blob_storage_data_source
    assert (az.storage_account, az.container, az.credentials_secret) == (
        "acme", "exports", "projects/123456789012/secrets/acme-sas")
    assert "azure_credentials" not in az, "never a SAS token"
    assert job.transfer_spec.object_conditions.max_time_elapsed_since_last_modification == dt.timedelta(days=30)
    assert job.transfer_spec.transfer_options.delete_objects_from_source_after_transfer
    assert job_spec(job, PROJECT, True) == azure.spec
    gcs = changed(DESIRED, source={"type": "gcs", "bucket": "partner-exports", "path": "x/", "storage_account": None,
                                   "role_arn": None, "credentials_secret": None})
    job = build_job(gcs, PROJECT, "1", NOW)
    assert job.transfer_spec.gcs_data_source.bucket_name == "partner-exports"
    assert job_spec(job, PROJECT, True) == gcs.spec


def test_update_masks_name_only_what_changed():
    assert update_mask(["delete_unique_in_sink"]) == ["transfer_spec"]
    assert update_mask(["source", "labels", "enabled"]) == ["description", "status", "transfer_spec"]
    assert update_mask(["notification_topic"]) == ["notification_config"]
    assert update_mask(["service_agent_grants"]) == []  # IAM only


# --------------------------------------------------------------------------- through the fake


def test_create_grants_first_then_observe_reads_it_back_and_plans_nothing(fake):
    p = provider(fake)
    p.create(DESIRED)
    setters = [r.path for r in fake.mutating()]
    assert setters == [f"/storage/v1/b/{LANDING}/iam", f"/v1/{TOPIC}:setIamPolicy", "/v1/transferJobs"], \
        "the service agent's roles first: Storage Transfer checks the topic when the job is created"
    policy = fake.bucket_policies[LANDING]
    assert fake.holds(policy, "roles/storage.legacyBucketWriter") and fake.holds(policy, "roles/storage.objectViewer")
    assert fake.holds(policy, "roles/storage.legacyBucketOwner", "projectOwner:headwater-demo"), "others kept"
    assert fake.holds(fake.topic_policies[TOPIC], "roles/pubsub.publisher")
    assert fake.holds(fake.topic_policies[TOPIC], "roles/pubsub.subscriber", "serviceAccount:etl@x.iam.gserviceaccount.com")
    job = sent_job(fake.requests_to("/v1/transferJobs", "POST")[-1])
    assert job.project_id == PROJECT and job.name.startswith("transferJobs/headwater-dev-aws-data-lake-transfer-")

    live = p.observe(Kind.STORAGE_TRANSFER_JOB)
    assert [(r.name, dict(r.spec), dict(r.labels)) for r in live] == [(DESIRED.name, DESIRED.spec, DESIRED.labels)]
    assert plan_of([DESIRED], live) == {DESIRED.name: (Action.NOOP, ())}
    with pytest.raises(AlreadyExists):
        p.create(DESIRED)


def test_a_secret_reference_is_sent_with_the_project_number_and_no_key_is_ever_sent(fake):
    p = provider(fake)
    keyed = changed(DESIRED, source={**DESIRED.spec["source"], "role_arn": None, "credentials_secret": "acme-s3-keys"})
    p.create(keyed)
    body = fake.requests_to("/v1/transferJobs", "POST")[-1].body
    assert body["transferSpec"]["awsS3DataSource"]["credentialsSecret"] == \
        "projects/123456789012/secrets/acme-s3-keys"
    assert "awsAccessKey" not in json.dumps([r.body for r in fake.requests])
    assert p.observe(Kind.STORAGE_TRANSFER_JOB)[0].spec["source"] == keyed.spec["source"]


def test_updates_send_one_masked_patch_and_a_new_schedule_is_a_new_job(fake):
    p = provider(fake)
    p.create(DESIRED)
    first = fake.live_jobs()[0]["name"]

    wanted = changed(DESIRED, {**DESIRED.labels, "team": "imports"}, delete_unique_in_sink=True)
    live = p.observe(Kind.STORAGE_TRANSFER_JOB)
    assert plan_of([wanted], live) == {DESIRED.name: (Action.UPDATE, ("delete_unique_in_sink", "labels"))}
    p.update(wanted, ["delete_unique_in_sink", "labels"])
    (patch,) = fake.requests_to("/v1/transferJobs/", "PATCH")
    assert patch.path == f"/v1/{first}"
    assert sorted(patch.body["updateTransferJobFieldMask"].split(",")) == ["description", "transferSpec"]
    request = storage_transfer_v1.UpdateTransferJobRequest.from_json(json.dumps(patch.body))
    assert request.transfer_job.transfer_spec.transfer_options.delete_objects_unique_in_sink
    assert "schedule" not in request.transfer_job, "only what the mask names"
    assert p.observe(Kind.STORAGE_TRANSFER_JOB)[0].spec == wanted.spec

    rescheduled = changed(wanted, schedule="30 2 * * *")
    live = p.observe(Kind.STORAGE_TRANSFER_JOB)
    (change,) = reconcile([rescheduled], live, IMMUTABLE).changes
    assert change.action == Action.REPLACE and not change.blocked, "a transfer job holds no data"
    p.delete(live[0])
    p.create(rescheduled)
    (job,) = fake.live_jobs()
    assert job["name"] != first, "a deleted job keeps its name: the new one has another"
    assert status_of(fake.jobs[first]) == "DELETED"
    assert p.observe(Kind.STORAGE_TRANSFER_JOB)[0].spec["schedule"] == "30 2 * * *"
    with pytest.raises(PermanentError):
        p.update(rescheduled, ["schedule"])


def test_drift_by_hand_is_seen_and_repaired(fake):
    p = provider(fake)
    p.create(DESIRED)
    (job,) = fake.live_jobs()
    job["status"] = "DISABLED"
    job["transferSpec"]["transferOptions"]["overwriteWhen"] = "ALWAYS"
    fake.topic_policies[TOPIC]["bindings"] = []  # someone removed the publisher role
    live = p.observe(Kind.STORAGE_TRANSFER_JOB)
    assert live[0].spec["enabled"] is False and live[0].spec["overwrite_when"] == "ALWAYS"
    fields = plan_of([DESIRED], live)[DESIRED.name]
    assert (fields[0], sorted(fields[1])) == (Action.UPDATE, ["enabled", "overwrite_when", "service_agent_grants"])
    p.update(DESIRED, list(fields[1]))
    assert plan_of([DESIRED], p.observe(Kind.STORAGE_TRANSFER_JOB)) == {DESIRED.name: (Action.NOOP, ())}


def test_jobs_that_are_not_ours_are_not_seen_and_delete_is_idempotent(fake):
    fake.jobs["transferJobs/by-hand"] = {"name": "transferJobs/by-hand", "projectId": PROJECT, "status": "ENABLED",
                                         "description": "copied by hand", "transferSpec": {}}
    fake.page_size = 1
    p = provider(fake)
    p.create(DESIRED)
    assert [r.name for r in p.observe(Kind.STORAGE_TRANSFER_JOB)] == [DESIRED.name]
    assert len(fake.requests_to("/v1/transferJobs", "GET")) >= 2, "paged"
    p.delete(DESIRED)
    p.delete(DESIRED)
    assert p.observe(Kind.STORAGE_TRANSFER_JOB) == []
    assert status_of(fake.jobs["transferJobs/by-hand"]) == "ENABLED"


def test_run_now_starts_a_run(fake):
    p = provider(fake)
    p.create(DESIRED)
    (name,) = p.run_now(DESIRED.name)
    assert fake.runs == [name] and fake.requests_to(":run", "POST")[0].body == {"projectId": PROJECT}


def test_the_service_agent_is_asked_once(fake):
    p = provider(fake)
    p.create(DESIRED)
    p.observe(Kind.STORAGE_TRANSFER_JOB)
    assert len(fake.requests_to("/v1/googleServiceAccounts/")) == 1
    assert AGENT in MEMBER


def test_a_project_without_the_storage_transfer_api_observes_no_jobs(fake):
    # A platform without cloud_transfer sources need not enable the API: plans go on.
    fake.disabled = True
    assert provider(fake).observe(Kind.STORAGE_TRANSFER_JOB) == []
