"""Dataflow provider: the requests it builds, checked against the client library's own types,
and the same requests sent through the official client (REST transport) to a local endpoint.

Dataflow has no emulator. What these tests cannot show - that the service accepts the requests,
update compatibility, drain timing - is verified only against the real service (see the
provider's docstring).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from fake_google import FakeGoogle
from google.cloud import dataflow_v1beta3 as dataflow
from helpers import EXAMPLE

from beam.common.spec import load_spec
from providers import dataflow_settings
from providers.dataflow import (
    DIGEST_LABELS,
    TEMPLATE_LABEL,
    TRANSFORM_NAME_MAPPINGS,
    DataflowProvider,
    build_launch_request,
    build_list_request,
    build_stop_request,
    is_live,
    job_labels,
    job_resource,
)
from providers.errors import AlreadyExists, PermanentError, ServiceDisabled
from reconciler.compile import compile_resources
from reconciler.config import DataflowSettings as DataflowBlock
from reconciler.load import load_repo
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind

STATE = load_repo(EXAMPLE)
JOBS = {r.name: r for r in compile_resources(STATE) if r.kind == Kind.DATAFLOW_JOB}
SETTINGS = dataflow_settings(STATE.platform.project, STATE.platform.region, STATE.platform)
State = dataflow.JobState


def running(resource, **fields) -> dataflow.Job:
    """The Job Dataflow would list for a job launched from ``resource``."""
    job_type = dataflow.JobType.JOB_TYPE_STREAMING if resource.spec["streaming"] else dataflow.JobType.JOB_TYPE_BATCH
    job = dataflow.Job(id=f"2026-11-26_{resource.name}", name=resource.name, type_=job_type,
                       current_state=State.JOB_STATE_RUNNING, labels=job_labels(resource))
    for key, value in fields.items():
        setattr(job, key, value)
    return job


# --------------------------------------------------------------------------- requests


def test_settings_default_under_the_landing_bucket():
    assert SETTINGS.location == "europe-west1"
    assert SETTINGS.template_path("gcs_to_bigquery") == \
        "gs://landing-headwater-demo-europe-west1/dataflow/templates/gcs_to_bigquery.json"
    assert SETTINGS.temp_location == "gs://landing-headwater-demo-europe-west1/dataflow/tmp"


def test_launch_request_carries_template_parameters_spec_and_labels():
    job = JOBS["orders-sweep"]
    request = build_launch_request(job, SETTINGS)
    assert isinstance(request, dataflow.LaunchFlexTemplateRequest)
    # The request survives the client library's own serialization, field for field.
    assert dataflow.LaunchFlexTemplateRequest.deserialize(dataflow.LaunchFlexTemplateRequest.serialize(request)) == request
    assert (request.project_id, request.location) == ("headwater-demo", "europe-west1")
    launch = request.launch_parameter
    assert launch.job_name == "orders-sweep" and not launch.update
    assert launch.container_spec_gcs_path.endswith("/templates/gcs_to_bigquery.json")
    assert launch.parameters["input_pattern"] == "gs://landing-headwater-demo-europe-west1/orders/"
    # The spec parameter is what the template's own parser accepts.
    spec = load_spec(launch.parameters["source_spec"])
    assert spec.source_id == "orders" and spec.dedup.key == ("order_id",)
    assert spec.silver_table == "headwater-demo.silver.orders"
    env = launch.environment
    assert env.temp_location == SETTINGS.temp_location and not env.enable_streaming_engine
    labels = dict(env.additional_user_labels)
    assert labels["managed-by"] == "headwater" and labels["headwater-source"] == "orders"
    assert labels[TEMPLATE_LABEL] == "gcs_to_bigquery"
    assert set(DIGEST_LABELS.values()) <= set(labels)
    assert all(len(v) <= 63 and v == v.lower() for v in labels.values()), "GCP label value rules"


def test_streaming_launch_uses_streaming_engine_and_optional_settings():
    settings = replace(SETTINGS, service_account="etl@headwater-demo.iam.gserviceaccount.com", max_workers=5)
    launch = build_launch_request(JOBS["payments-ingest"], settings).launch_parameter
    assert launch.parameters["input_subscription"] == "projects/headwater-demo/subscriptions/payments-ingest"
    assert launch.environment.enable_streaming_engine
    assert launch.environment.service_account_email == "etl@headwater-demo.iam.gserviceaccount.com"
    assert launch.environment.max_workers == 5


def test_update_is_a_launch_with_update_and_transform_name_mappings(monkeypatch):
    monkeypatch.setitem(TRANSFORM_NAME_MAPPINGS, "pubsub_to_bigquery", {"Validate": "ValidateAndDedup/Validate"})
    launch = build_launch_request(JOBS["payments-ingest"], SETTINGS, update=True).launch_parameter
    assert launch.update is True
    assert dict(launch.transform_name_mappings) == {"Validate": "ValidateAndDedup/Validate"}
    assert launch.job_name == "payments-ingest", "an update names the running job"


@pytest.mark.parametrize(("streaming", "state"), [(True, State.JOB_STATE_DRAINED), (False, State.JOB_STATE_CANCELLED)])
def test_stop_drains_streaming_and_cancels_batch(streaming, state):
    request = build_stop_request(SETTINGS, "job-1", streaming=streaming)
    assert isinstance(request, dataflow.UpdateJobRequest)
    assert (request.project_id, request.location, request.job_id) == ("headwater-demo", "europe-west1", "job-1")
    assert request.job.requested_state == state


def test_observe_lists_active_jobs_once():
    request = build_list_request(SETTINGS)
    assert request.filter == dataflow.ListJobsRequest.Filter.ACTIVE and request.page_size == 1000
    assert "name" not in request
    assert build_list_request(SETTINGS, "orders-sweep").name == "orders-sweep"


# --------------------------------------------------------------------------- observe → plan


def test_only_running_jobs_are_live():
    job = JOBS["payments-ingest"]
    assert is_live(running(job))
    assert not is_live(running(job, current_state=State.JOB_STATE_DRAINING))
    assert not is_live(running(job, requested_state=State.JOB_STATE_DRAINED))
    assert not is_live(running(job, requested_state=State.JOB_STATE_CANCELLED))
    assert not is_live(running(job, replaced_by_job_id="newer"))
    assert not is_live(running(job, current_state=State.JOB_STATE_FAILED))
    assert is_live(running(job, current_state=State.JOB_STATE_PENDING))


def test_a_freshly_launched_job_plans_no_changes():
    desired = list(JOBS.values())
    live = [job_resource(running(r)) for r in desired]
    plan = reconcile(desired, live, {Kind.DATAFLOW_JOB: frozenset({"template", "streaming"})})
    assert {c.action for c in plan.changes} == {Action.NOOP}


def test_a_changed_parameter_is_an_in_place_update_and_the_plan_says_so():
    launched = JOBS["payments-ingest"]
    pipeline = {**launched.spec["pipeline"], "data_quality": []}
    desired = replace(launched, spec={**launched.spec, "pipeline": pipeline})
    plan = reconcile([desired], [job_resource(running(launched))], {Kind.DATAFLOW_JOB: frozenset({"template", "streaming"})})
    (change,) = plan.changes
    assert change.action == Action.UPDATE and change.update_fields == ("pipeline",)
    assert "updated in place" in change.reason


@pytest.mark.parametrize(("block", "changed"), [
    pytest.param({"max_workers": 7}, True, id="max-workers-set"),
    pytest.param({"service_account": "etl@headwater-demo.iam.gserviceaccount.com"}, True, id="worker-account-set"),
    pytest.param({"region": "europe-west4"}, False, id="region-is-not-a-job-setting"),
])
def test_a_changed_dataflow_block_is_an_update_of_every_job(block, changed):
    platform = STATE.platform.model_copy(update={"dataflow": DataflowBlock(**block)})
    desired = [r for r in compile_resources(replace(STATE, platform=platform)) if r.kind == Kind.DATAFLOW_JOB]
    live = [job_resource(running(r)) for r in JOBS.values()]
    plan = reconcile(desired, live, {Kind.DATAFLOW_JOB: frozenset({"template", "streaming"})})
    assert len(plan.changes) == len(JOBS)
    if not changed:
        assert {c.action for c in plan.changes} == {Action.NOOP}
        return
    assert {c.action for c in plan.changes} == {Action.UPDATE}
    assert {c.update_fields for c in plan.changes} == {("environment",)}


def test_the_scheduler_account_is_not_a_streaming_jobs_setting():
    platform = STATE.platform.model_copy(update={"dataflow": DataflowBlock(
        scheduler_service_account="tick@headwater-demo.iam.gserviceaccount.com")})
    jobs = {r.name: r for r in compile_resources(replace(STATE, platform=platform)) if r.kind == Kind.DATAFLOW_JOB}
    assert jobs["payments-ingest"].spec["environment"] == {}
    assert jobs["orders-sweep"].spec["environment"] == {
        "scheduler_service_account": "tick@headwater-demo.iam.gserviceaccount.com"}


def test_a_changed_template_drains_and_relaunches():
    launched = JOBS["payments-ingest"]
    desired = replace(launched, spec={**launched.spec, "template": "pubsub_to_gcs"})
    plan = reconcile([desired], [job_resource(running(launched))], {Kind.DATAFLOW_JOB: frozenset({"template", "streaming"})})
    (change,) = plan.changes
    assert change.action == Action.REPLACE and change.replace_paths == ["template"]
    assert "drained" in change.reason and not change.blocked


# --------------------------------------------------------------------------- through the client


@pytest.fixture
def fake():
    server = FakeGoogle()
    yield server
    server.close()


def provider_for(fake: FakeGoogle, settings=SETTINGS) -> DataflowProvider:
    return DataflowProvider(settings, poll_interval=0.01, **fake.client_kwargs())


def test_create_observe_update_drain_through_the_official_client(fake):
    provider = provider_for(fake)
    job = JOBS["payments-ingest"]
    provider.create(job)
    request = fake.requests[-1]
    assert (request.method, request.path) == \
        ("POST", "/v1b3/projects/headwater-demo/locations/europe-west1/flexTemplates:launch")
    assert request.body["launchParameter"]["jobName"] == "payments-ingest"
    assert request.body["launchParameter"]["environment"]["additionalUserLabels"]["managed-by"] == "headwater"
    assert not fake.scheduler_jobs, "a streaming job is launched, not scheduled"

    fake.requests.clear()
    (live,) = provider.observe(Kind.DATAFLOW_JOB)
    assert [(r.method, r.path) for r in fake.requests] == [
        ("GET", "/v1b3/projects/headwater-demo/locations/europe-west1/jobs"),  # the streaming jobs
        ("GET", "/v1/projects/headwater-demo/locations/europe-west1/jobs"),  # the batch jobs' schedules
    ]
    assert live.name == "payments-ingest" and live.spec["streaming"] is True
    assert reconcile([job], [live], provider.immutable_fields).changes[0].action == Action.NOOP

    fake.requests.clear()
    provider.update(job, ["pipeline"])
    launch, poll = fake.requests
    assert launch.body["launchParameter"]["update"] is True
    assert (poll.method, poll.path.rsplit("/", 1)[1]) == ("GET", fake.active()[0]["id"]), \
        "update waits for the replacement job to run"

    fake.requests.clear()
    provider.delete(job)
    puts = [r.body for r in fake.requests if r.method == "PUT"]
    assert puts == [{"requestedState": State.JOB_STATE_DRAINED}], "a streaming job is drained, never cancelled"
    assert provider.observe(Kind.DATAFLOW_JOB) == []
    provider.delete(job)  # idempotent: nothing left to drain
    assert provider.api_calls()["dataflow.list_jobs"] >= 3


def launched_streaming_job(fake: FakeGoogle, update_outcome: str):
    """A provider, the streaming job it launched, and that job as the fake holds it; the fake's
    next update of it ends with ``update_outcome``."""
    provider = provider_for(fake)
    job = JOBS["payments-ingest"]
    provider.create(job)
    (original,) = fake.active()
    fake.update_outcome = update_outcome
    fake.requests.clear()
    return provider, job, original


def test_an_update_rejected_by_the_compatibility_check_drains_and_relaunches(fake):
    provider, job, original = launched_streaming_job(fake, "incompatible")

    provider.update(job, ["pipeline"])

    launches = [r.body["launchParameter"] for r in fake.requests if r.path.endswith("flexTemplates:launch")]
    assert [bool(launch.get("update")) for launch in launches] == [True, False], "update first, then a fresh launch"
    puts = [(r.path.rsplit("/", 1)[1], r.body) for r in fake.requests if r.method == "PUT"]
    assert puts == [(original["id"], {"requestedState": State.JOB_STATE_DRAINED})], "drained, never cancelled"
    assert any(r.path.endswith("/messages") for r in fake.requests), "the reason is read before acting on it"
    (running,) = fake.active()
    assert running["id"] != original["id"] and running["name"] == "payments-ingest"
    assert original["currentState"] == int(State.JOB_STATE_DRAINED)
    (live,) = provider.observe(Kind.DATAFLOW_JOB)
    assert reconcile([job], [live], provider.immutable_fields).changes[0].action == Action.NOOP


def test_an_update_that_fails_otherwise_leaves_the_running_job_alone(fake):
    provider, job, original = launched_streaming_job(fake, "broken")

    with pytest.raises(PermanentError, match="running job is untouched: Error occurred in the launcher"):
        provider.update(job, ["pipeline"])

    assert not [r for r in fake.requests if r.method == "PUT"], "nothing drained"
    assert fake.active() == [original] and original["currentState"] == int(State.JOB_STATE_RUNNING)


def test_a_streaming_only_platform_needs_no_cloud_scheduler_api(fake):
    fake.scheduler_disabled = True
    provider = provider_for(fake, replace(SETTINGS, scheduler_service_account="tick@headwater-demo.iam.gserviceaccount.com"))
    job = JOBS["payments-ingest"]
    provider.create(job)
    (live,) = provider.observe(Kind.DATAFLOW_JOB)  # the streaming job; no schedules, no error
    assert live.name == "payments-ingest"
    with pytest.raises(ServiceDisabled, match="Cloud Scheduler API has not been used"):
        provider.create(JOBS["orders-sweep"])  # a batch job does need it, and says so


def test_a_launch_answered_409_is_already_exists(fake):
    fake.launch_status = 409
    with pytest.raises(AlreadyExists):
        provider_for(fake).create(JOBS["payments-ingest"])
