"""Batch ``dataflow_job`` resources on Dataflow: Cloud Scheduler jobs that launch one run per tick.

The requests are checked against the client libraries' own types (scheduler_v1.Job, HttpTarget,
OAuthToken, UpdateJobRequest with its FieldMask; dataflow's LaunchFlexTemplateRequest), then sent
through the official clients (REST transport) to a local endpoint (tests/fake_google.py), whose
`tick` posts a scheduled job's body to the fake Dataflow as Cloud Scheduler would.

Cloud Scheduler has no emulator: that the real service accepts these requests, and that
Dataflow launches from the body Cloud Scheduler sends, is verified only against the real
services (see providers/scheduler.py and providers/dataflow.py).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from fake_google import FakeGoogle
from google.cloud import dataflow_v1beta3 as dataflow
from google.cloud import scheduler_v1 as scheduler
from google.protobuf import field_mask_pb2
from helpers import EXAMPLE

from providers import dataflow_settings
from providers.dataflow import (
    DataflowProvider,
    build_launch_request,
    job_description,
    job_labels,
    job_resource,
    scheduled_launch,
    scheduled_resource,
    scheduler_fields,
    scheduler_job_id,
)
from providers.errors import AlreadyExists, PermanentError
from providers.scheduler import (
    DESCRIPTION_LIMIT,
    OAUTH_SCOPE,
    build_delete_request,
    build_job,
    build_list_request,
    build_update_request,
    job_id_problem,
    scheduled_request,
)
from reconciler.apply import apply_plan
from reconciler.compile import compile_resources
from reconciler.load import load_repo
from reconciler.plan import Action, PlanOptions, reconcile
from reconciler.resources import Kind

STATE = load_repo(EXAMPLE)
JOBS = {r.name: r for r in compile_resources(STATE) if r.kind == Kind.DATAFLOW_JOB}
BATCH = {name: job for name, job in JOBS.items() if not job.spec["streaming"]}
LAUNCHER = "launcher@headwater-demo.iam.gserviceaccount.com"
SETTINGS = replace(dataflow_settings(STATE.platform.project, STATE.platform.region, STATE.platform),
                   scheduler_service_account=LAUNCHER)
IMMUTABLE = {Kind.DATAFLOW_JOB: frozenset({"template", "streaming"})}
PROJECT, REGION = "headwater-demo", "europe-west1"
JOB_NAME = f"projects/{PROJECT}/locations/{REGION}/jobs/headwater-dev-orders-sweep"


def as_listed(resource, settings=SETTINGS, **changes):
    """The Cloud Scheduler job `list` would return for batch job ``resource``, in plain data."""
    job = build_job(PROJECT, REGION, scheduled_launch(resource, settings))
    job.state = scheduler.Job.State.ENABLED
    for key, value in changes.items():
        setattr(job, key, value)
    return scheduled_request(scheduler.Job.deserialize(scheduler.Job.serialize(job)))


def streaming_job(resource) -> dataflow.Job:
    return dataflow.Job(id=f"id-{resource.name}", name=resource.name, type_=dataflow.JobType.JOB_TYPE_STREAMING,
                        current_state=dataflow.JobState.JOB_STATE_RUNNING, labels=job_labels(resource))


def test_the_demo_has_batch_jobs_of_both_kinds():
    assert {job.spec["template"] for job in BATCH.values()} == {"gcs_to_bigquery", "bigquery_to_bigquery"}


# --------------------------------------------------------------------------- the Cloud Scheduler job


def test_a_batch_job_is_a_scheduler_job_posting_the_launch_request_on_its_schedule():
    resource = BATCH["orders-sweep"]
    job = build_job(PROJECT, REGION, scheduled_launch(resource, SETTINGS))
    assert isinstance(job, scheduler.Job)
    assert scheduler.Job.deserialize(scheduler.Job.serialize(job)) == job, "survives the client's serialization"
    assert job.name == JOB_NAME
    assert (job.schedule, job.time_zone) == ("0 3 * * *", "Etc/UTC")
    target = job.http_target
    assert isinstance(target, scheduler.HttpTarget) and target.http_method == scheduler.HttpMethod.POST
    assert target.uri == (f"https://dataflow.googleapis.com/v1b3/projects/{PROJECT}/locations/{REGION}"
                          "/flexTemplates:launch")
    assert target.headers["Content-Type"] == "application/json"
    assert target.oauth_token == scheduler.OAuthToken(service_account_email=LAUNCHER, scope=OAUTH_SCOPE)
    assert not target.oidc_token.service_account_email, "Google APIs take OAuth access tokens, not OIDC"
    assert job.retry_config.retry_count > 0 and job.attempt_deadline.seconds >= 60

    # The body is the launch request the provider builds for a direct launch, field for field.
    launched = dataflow.LaunchFlexTemplateRequest.from_json(target.body.decode())
    launched.project_id, launched.location = PROJECT, REGION  # they travel in the URL
    assert launched == build_launch_request(resource, SETTINGS)
    assert launched.launch_parameter.job_name == "orders-sweep", "a fixed name: overlapping runs are refused"
    assert launched.launch_parameter.environment.additional_user_labels["managed-by"] == "headwater"


def test_the_body_is_what_the_official_client_posts_for_that_launch():
    resource = BATCH["orders-gold-orders-daily"]
    fake = FakeGoogle()
    try:
        client = dataflow.FlexTemplatesServiceClient(**fake.client_kwargs())
        client.launch_flex_template(request=build_launch_request(resource, SETTINGS), retry=None)
        sent = fake.requests[-1].body
    finally:
        fake.close()
    assert json.loads(scheduled_launch(resource, SETTINGS).body) == sent


def test_the_description_carries_the_labels_and_spec_fingerprints_in_compact_json():
    for resource in BATCH.values():
        description = job_description(resource)
        assert json.loads(description) == job_labels(resource)
        assert " " not in description and len(description) <= DESCRIPTION_LIMIT
        assert len(description) < 380, "the demo's labels leave room for a few more platform labels"


def test_a_description_over_500_characters_is_refused_before_any_call():
    resource = BATCH["orders-sweep"]
    crowded = replace(resource, labels={**resource.labels, **{f"label-{i}": "v" * 40 for i in range(6)}})
    with pytest.raises(PermanentError, match=r"more than the 500 allowed .*platform\.yaml's labels"):
        scheduled_launch(crowded, SETTINGS)
    request = scheduled_launch(resource, SETTINGS)
    with pytest.raises(PermanentError, match="description of 501 characters"):
        build_job(PROJECT, REGION, replace(request, description="x" * 501))


def test_scheduler_job_ids_follow_cloud_schedulers_rules():
    assert scheduler_job_id("orders-sweep", "dev") == "headwater-dev-orders-sweep"
    assert job_id_problem("headwater-dev_1-orders-sweep") is None
    assert "1-500 letters" in job_id_problem("headwater-dev-orders.ingest")
    assert "501 characters" in job_id_problem("x" * 501)
    long_name = replace(BATCH["orders-sweep"], name="o" * 490)
    with pytest.raises(PermanentError, match="cannot name a Cloud Scheduler job"):
        scheduled_launch(long_name, SETTINGS)


def test_without_a_scheduler_service_account_apply_fails_with_the_reason():
    settings = replace(SETTINGS, scheduler_service_account=None)
    with pytest.raises(PermanentError, match=r"dataflow\.scheduler_service_account.*roles/dataflow\.developer"):
        scheduled_launch(BATCH["orders-sweep"], settings)


def test_a_streaming_job_is_never_scheduled():
    with pytest.raises(PermanentError, match="launched, not scheduled"):
        scheduled_launch(JOBS["payments-ingest"], SETTINGS)


def test_list_and_delete_requests():
    request = build_list_request(PROJECT, REGION)
    assert isinstance(request, scheduler.ListJobsRequest)
    assert (request.parent, request.page_size) == (f"projects/{PROJECT}/locations/{REGION}", 500)
    assert build_delete_request(PROJECT, REGION, "headwater-dev-orders-sweep") == \
        scheduler.DeleteJobRequest(name=JOB_NAME)


# --------------------------------------------------------------------------- update masks


@pytest.mark.parametrize(("changed", "mask"), [
    (["schedule"], ["description", "http_target", "schedule", "time_zone"]),
    (["pipeline"], ["description", "http_target"]),
    (["parameters", "labels"], ["description", "http_target"]),
])
def test_an_update_masks_only_what_the_change_rewrites(changed, mask):
    assert scheduler_fields(changed) == mask
    request = build_update_request(PROJECT, REGION, scheduled_launch(BATCH["orders-sweep"], SETTINGS), mask)
    assert isinstance(request, scheduler.UpdateJobRequest)
    assert request.update_mask == field_mask_pb2.FieldMask(paths=mask)
    assert request.job.name == JOB_NAME
    assert "retry_config" not in request.update_mask.paths, "settings headwater does not manage stay as they are"


def test_an_update_naming_nothing_or_an_unknown_field_is_refused():
    request = scheduled_launch(BATCH["orders-sweep"], SETTINGS)
    with pytest.raises(PermanentError, match="cannot update"):
        build_update_request(PROJECT, REGION, request, [])
    with pytest.raises(PermanentError, match="cannot update"):
        build_update_request(PROJECT, REGION, request, ["state"])


# --------------------------------------------------------------------------- observe → plan


def test_observed_batch_and_streaming_jobs_equal_their_desired_twins():
    live = [scheduled_resource(as_listed(job)) if not job.spec["streaming"] else job_resource(streaming_job(job))
            for job in JOBS.values()]
    batch = next(r for r in live if r.name == "orders-sweep")
    assert batch.spec["schedule"] == "0 3 * * *", "the schedule is read back in plain"
    assert batch.spec["parameters"] == {"$digest": job_labels(BATCH["orders-sweep"])["headwater-parameters"]}
    assert batch.labels["managed-by"] == "headwater" and batch.labels["headwater-platform"] == "dev"
    plan = reconcile(JOBS.values(), live, IMMUTABLE, PlanOptions(environment="dev"))
    assert {c.action for c in plan.changes} == {Action.NOOP}


def test_a_schedule_or_time_zone_changed_by_hand_is_drift_that_an_update_repairs():
    desired = BATCH["orders-sweep"]
    for changes, before in [({"schedule": "0 4 * * *"}, "0 4 * * *"),
                            ({"time_zone": "Europe/Paris"}, "0 3 * * * (Europe/Paris)")]:
        live = scheduled_resource(as_listed(desired, **changes))
        (change,) = reconcile([desired], [live], IMMUTABLE).changes
        assert change.action == Action.UPDATE and change.update_fields == ("schedule",)
        assert (change.diff[0].before, change.diff[0].after) == (before, "0 3 * * *")
        assert "time_zone" in scheduler_fields(change.update_fields)


def test_a_changed_pipeline_updates_the_schedule_and_the_plan_says_a_run_in_progress_finishes():
    launched = BATCH["orders-sweep"]
    desired = replace(launched, spec={**launched.spec, "pipeline": {**launched.spec["pipeline"], "data_quality": []}})
    (change,) = reconcile([desired], [scheduled_resource(as_listed(launched))], IMMUTABLE).changes
    assert change.action == Action.UPDATE and change.update_fields == ("pipeline",)
    assert "a run in progress finishes as launched" in change.reason


def test_scheduler_jobs_that_are_not_headwaters_are_ignored():
    mine = as_listed(BATCH["orders-sweep"])
    assert scheduled_resource(replace(mine, job_id="nightly-backup")) is None
    assert scheduled_resource(replace(mine, description="Nightly backup")) is None
    assert scheduled_resource(replace(mine, description='{"managed-by":"someone-else"}')) is None
    assert scheduled_resource(replace(mine, job_id="headwater-prod-orders-sweep")) is None, "name and label disagree"
    other_platform = as_listed(replace(BATCH["orders-sweep"], labels={**BATCH["orders-sweep"].labels,
                                                                        "headwater-platform": "prod"}))
    seen = scheduled_resource(other_platform)
    assert seen.name == "orders-sweep" and seen.labels["headwater-platform"] == "prod"
    assert reconcile([], [seen], IMMUTABLE, PlanOptions(environment="dev", prune=True)).changes == (), \
        "another platform's jobs are not this plan's business"


# --------------------------------------------------------------------------- through the official clients


@pytest.fixture
def fake():
    server = FakeGoogle()
    yield server
    server.close()


def provider_for(fake: FakeGoogle, settings=SETTINGS) -> DataflowProvider:
    return DataflowProvider(settings, poll_interval=0.01, **fake.client_kwargs())


def apply_jobs(provider: DataflowProvider, desired) -> None:
    plan = reconcile(desired, provider.observe(Kind.DATAFLOW_JOB), IMMUTABLE, PlanOptions(environment="dev"))
    result = apply_plan(plan, {Kind.DATAFLOW_JOB: provider})
    assert result.ok, result.outcomes


def plan_actions(provider: DataflowProvider, desired=None) -> dict[str, Action]:
    desired = list(JOBS.values()) if desired is None else desired
    plan = reconcile(desired, provider.observe(Kind.DATAFLOW_JOB), IMMUTABLE, PlanOptions(environment="dev"))
    return {c.name: c.action for c in plan.changes}


def test_finished_batch_runs_do_not_make_the_plan_create_them_again(fake):
    """The bug: a batch job used to be live only while a run was active."""
    provider = provider_for(fake)
    apply_jobs(provider, JOBS.values())
    assert set(plan_actions(provider).values()) == {Action.NOOP}, "a freshly applied platform plans no changes"
    assert len(fake.scheduler_jobs) == len(BATCH) and not [j for j in fake.active() if j["type"] == 1], \
        "batch jobs are scheduled, not launched by apply"

    for name in BATCH:  # a tick of each schedule launches a run from the scheduled body...
        status, reply = fake.tick(f"projects/{PROJECT}/locations/{REGION}/jobs/headwater-dev-{name}")
        assert status == 200 and reply["job"]["name"] == name
    assert set(plan_actions(provider).values()) == {Action.NOOP}, "an active run is not a second resource"

    fake.finish_runs()  # ...and the runs end
    assert set(plan_actions(provider).values()) == {Action.NOOP}


def test_observe_lists_once_per_service_whatever_the_number_of_jobs(fake):
    provider = provider_for(fake)
    apply_jobs(provider, JOBS.values())
    fake.requests.clear()
    provider.observe(Kind.DATAFLOW_JOB)
    assert [(r.method, r.path) for r in fake.requests] == [
        ("GET", f"/v1b3/projects/{PROJECT}/locations/{REGION}/jobs"),
        ("GET", f"/v1/projects/{PROJECT}/locations/{REGION}/jobs"),
    ]
    assert fake.requests[1].query["pageSize"] == "500"

    fake.scheduler_page_size = 3  # more jobs than a page (6): the pages of one list
    before = provider.api_calls()["scheduler.list_jobs"]
    assert len([r for r in provider.observe(Kind.DATAFLOW_JOB) if not r.spec["streaming"]]) == len(BATCH) == 6  # 3 gold jobs, a sweep, 2 feature jobs (issue 12)
    calls = provider.api_calls()
    assert calls["scheduler.list_jobs"] - before == 2 and calls["scheduler.create_job"] == len(BATCH)


def test_an_update_patches_the_changed_fields_and_leaves_a_run_in_progress_alone(fake):
    provider = provider_for(fake)
    launched = BATCH["orders-sweep"]
    apply_jobs(provider, [launched])
    fake.tick(JOB_NAME)
    desired = replace(launched, spec={**launched.spec, "schedule": "15 3 * * *",
                                      "pipeline": {**launched.spec["pipeline"], "data_quality": []}})
    fake.requests.clear()
    apply_jobs(provider, [desired])

    (patch,) = [r for r in fake.requests if r.method == "PATCH"]
    assert patch.path == f"/v1/{JOB_NAME}"
    assert patch.query["updateMask"] == "description,httpTarget,schedule,timeZone"
    assert not [r for r in fake.requests if r.method == "PUT"], "the run in progress is not cancelled"
    assert [j["name"] for j in fake.active()] == ["orders-sweep"]
    stored = fake.scheduler_jobs[JOB_NAME]
    assert stored["schedule"] == "15 3 * * *" and stored["retryConfig"], "unmasked fields kept"
    assert plan_actions(provider, [desired]) == {"orders-sweep": Action.NOOP}
    # The next tick is refused while the old run is active (one name, one run at a time) ...
    assert fake.tick(JOB_NAME)[0] == 409
    fake.finish_runs()
    # ... and launches the new pipeline once it has ended.
    status, reply = fake.tick(JOB_NAME)
    assert status == 200
    spec = json.loads(fake.jobs[reply["job"]["id"]]["launch"]["launchParameter"]["parameters"]["source_spec"])
    assert spec["data_quality"] == []


def test_delete_removes_the_schedule_then_cancels_a_run_and_is_idempotent(fake):
    provider = provider_for(fake)
    apply_jobs(provider, [BATCH["orders-sweep"], JOBS["payments-ingest"]])
    fake.tick(JOB_NAME)
    (live,) = [r for r in provider.observe(Kind.DATAFLOW_JOB) if r.name == "orders-sweep"]
    fake.requests.clear()
    provider.delete(live)
    assert [(r.method, r.path) for r in fake.requests][0] == ("DELETE", f"/v1/{JOB_NAME}"), "no more ticks first"
    assert [r.body for r in fake.requests if r.method == "PUT"] == [
        {"requestedState": dataflow.JobState.JOB_STATE_CANCELLED}]
    assert [j["name"] for j in fake.active()] == ["payments-ingest"], "the streaming job is untouched"
    assert JOB_NAME not in fake.scheduler_jobs
    provider.delete(live)  # already gone (404 on the schedule, no run): fine
    assert [r.name for r in provider.observe(Kind.DATAFLOW_JOB)] == ["payments-ingest"]


def test_create_of_a_schedule_that_exists_converges_through_update(fake):
    provider = provider_for(fake)
    resource = BATCH["orders-sweep"]
    provider.create(resource)
    with pytest.raises(AlreadyExists):
        provider.create(resource)
    # What the applier does then: every mutable field.
    provider.update(resource, ["schedule", "parameters", "pipeline", "labels"])
    assert fake.requests[-1].query["updateMask"] == "description,httpTarget,schedule,timeZone"


def test_without_the_scheduler_account_nothing_is_sent(fake):
    provider = provider_for(fake, replace(SETTINGS, scheduler_service_account=None))
    plan = reconcile([BATCH["orders-sweep"], JOBS["payments-ingest"]], [], IMMUTABLE)
    result = apply_plan(plan, {Kind.DATAFLOW_JOB: provider})
    outcomes = {o.address: o for o in result.outcomes}
    assert "scheduler_service_account" in outcomes["dataflow_job.orders-sweep"].error
    assert outcomes["dataflow_job.payments-ingest"].status == "ok", "streaming jobs do not need it"
    assert not fake.scheduler_jobs
