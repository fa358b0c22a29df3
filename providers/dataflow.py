"""Dataflow provider: the pipelines in ``beam/`` as Dataflow Flex Template jobs.

Kind: ``Kind.DATAFLOW_JOB``. This module is the only one that imports ``google.cloud.dataflow``
(google-cloud-dataflow-client, kept below 0.14 by apache-beam's bound). It implements the
contract in `providers.base`; `providers.localrunner` realizes the same kind on this machine.

A streaming job runs until it is stopped; a batch job runs once per launch. So the two are
realized differently, behind the one kind:

* a **streaming** job is a Dataflow job, launched here and observed among the active jobs;
* a **batch** job (``gcs_to_bigquery`` on a batch source's cron schedule, the hourly
  ``bigquery_to_bigquery`` gold jobs) is a **Cloud Scheduler job** that launches one run at each
  tick of its ``schedule``: the resource lives as long as its schedule does, whether a run is
  active or not. (Before, a batch job was "live" only while a run was active: every plan after a
  run showed it as to be created, and nothing ran it on its schedule.) The Cloud Scheduler calls
  are `providers.scheduler`'s; this module decides what to schedule.

A job is named after its resource (``orders-ingest``): Dataflow keeps job names unique among a
project's active jobs in a region, which is what makes a streaming ``create`` idempotent, and
what keeps two runs of one batch job from overlapping: a tick that comes while the previous run
is still active is refused (409) and retried a few times, then skipped until the next tick. So
the fixed name is deliberate; the runs of one batch job are told apart by their job ids.

The four operations
-------------------
``create``   Streaming: LaunchFlexTemplate from ``<template_bucket>/templates/<template>.json``
             with the template parameters, the pipeline spec as the ``source_spec`` parameter,
             and the resource's labels (plus the bookkeeping labels below) as the job's labels.
             A job of that name still active answers 409, i.e. `AlreadyExists`: the applier
             then converges with ``update``.
             Batch: a Cloud Scheduler job ``headwater-<environment>-<name>`` in the Dataflow
             region (`scheduled_launch`) whose HTTP target POSTs that same launch request, as
             JSON, to Dataflow's ``flexTemplates:launch`` with an OAuth token of
             ``dataflow.scheduler_service_account``, on the job's cron ``schedule`` in UTC (as
             on the local runner). The first run is at the first tick after apply.
``update``   Streaming: LaunchFlexTemplate with ``update=True`` and the template's transform
             name mappings - Dataflow replaces the running job in place, keeping its state and
             unacknowledged messages, after its own compatibility check. update then waits
             (bounded) for the replacement job to run. When Dataflow's compatibility check
             rejects it (the replacement fails and its error messages say the new job is not
             compatible; the running job is left untouched), the job is drained and launched
             anew: state (de-duplication keys) starts empty, nothing in flight is lost. Any
             other failure of the replacement fails the apply with the running job untouched:
             draining a healthy job for a launch that fails anyway would stop ingestion.
             Batch: ``update_job`` with a mask of the parts that change (`scheduler_fields`).
             A run in progress is left to finish as it was launched: it is a bounded re-read
             of its input, and the next tick launches with the new settings.
             A changed ``template`` or ``streaming`` flag never comes here: those are
             `IMMUTABLE_FIELDS`, so the plan shows a replacement (stop, then create).
``delete``   Streaming: requested state JOB_STATE_DRAINED - Dataflow stops pulling, finishes
             what it holds, then stops; never cancelled, which would drop in-flight data.
             Batch: the Cloud Scheduler job is deleted (gone already is fine), then a run in
             progress is cancelled (JOB_STATE_CANCELLED: a run is a re-read of its input).
             Either way delete waits (bounded) until the run has left the active set, because
             a replacement launches under the same name.
``observe``  ONE ``list_jobs(filter=ACTIVE)`` per project and region (paged) for the streaming
             jobs labelled ``managed-by=headwater``, and ONE Cloud Scheduler ``list_jobs`` for
             the region for the batch ones. Every job state has one meaning
             (`JOB_STATE_PHASES`): terminated jobs (done, failed, drained, cancelled, updated)
             are history, not drift; running ones (and pending, queued, not yet started,
             paused) are live; jobs on their way out (draining, cancelling, cleaning up) still
             hold their name and are reported with status ``leaving``: the plan then says
             "replacing a draining job", and apply waits for the drain before launching, rather
             than launching into a 409 and updating the draining job. Batch runs are the
             schedule's business, not resources of their own: observe skips them.

What observe can read back
--------------------------
A listed Dataflow job tells its name, type (streaming or batch), state and labels, but not the
parameters it was launched with. So a launch labels the job with what the plan needs to
compare: ``headwater-template`` (the template name) and one digest per other field
(``headwater-schedule``, ``headwater-parameters``, ``headwater-pipeline``, ``headwater-environment``: see
`reconciler.resources.digest_of`). ``observe`` reports those fields as digests and the planner
compares digests, so a plan says *which* field changed; the field-level detail of a change is
shown by the local runner, which keeps the whole spec.

Cloud Scheduler jobs have no labels: a batch job's description holds those same labels as
compact JSON (`job_description`, at most 500 characters), so observe returns the same
canonical resource for both kinds of job. Its ``schedule`` is read back from the Cloud
Scheduler job itself, in plain: a schedule (or time zone) changed by hand shows as drift.

Settings of the ``dataflow:`` block (template bucket, temp location, service accounts, max
workers) are part of each job's spec (``environment``, fingerprinted like the other fields), so
changing them is a planned update of every job: a streaming job is updated in place with the new
environment (or drained and relaunched, as above), a batch job's Cloud Scheduler job is rewritten
and its next runs use them. The region is not among them: jobs in another region are other jobs.

A Cloud Scheduler job paused by hand stays paused (an operator's decision, e.g. during an
incident): observe logs a warning but reports it as live. Resume it with ``gcloud scheduler
jobs resume``.

Verified here against the client libraries' own request types (and, through REST transport, a
local HTTP endpoint); verified only against the real service: that Dataflow accepts these
requests, and the launch request when Cloud Scheduler POSTs it as JSON with an OAuth token;
that list summaries carry labels (if a listed job has none, one ``get_job`` per such job
fetches them); update compatibility; drain timing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from google.cloud import dataflow_v1beta3 as dataflow
from google.protobuf import json_format

from providers.calls import CallCounter
from providers.errors import NotFound, PermanentError, ServiceDisabled, TemporaryError, call
from providers.scheduler import DESCRIPTION_LIMIT, CloudScheduler, ScheduledRequest, Schedules, job_id_problem
from reconciler.resources import (
    DIGEST_KEY,
    LEAVING,
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    PLATFORM_KEY,
    Kind,
    Resource,
    digest,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# The template parameter that carries the pipeline spec (beam/common/spec.py).
SPEC_PARAMETER = "source_spec"

TEMPLATE_LABEL = "headwater-template"
# Spec keys observe can only fingerprint, and the label holding each one's digest.
DIGEST_LABELS = {
    "schedule": "headwater-schedule",
    "parameters": "headwater-parameters",
    "pipeline": "headwater-pipeline",
    "environment": "headwater-environment",
}

IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {Kind.DATAFLOW_JOB: frozenset({"template", "streaming"})}

# Per template: transforms renamed between versions of beam/, old name -> new name, sent with
# every in-place update so Dataflow can carry their state over. Empty while no template has
# renamed a transform; add an entry when one does.
TRANSFORM_NAME_MAPPINGS: dict[str, dict[str, str]] = {
    "pubsub_to_bigquery": {},
    "gcs_to_bigquery": {},
    "bigquery_to_bigquery": {},
}

State = dataflow.JobState

# Every state a job can be observed in, and what it means for the plan (and so for apply):
#   live     the job is (or is about to be) running under its name: compared, updated, replaced;
#   leaving  it still holds its name but is on its way out: the plan replaces it, and apply's
#            delete waits until it has gone (no drain or cancel is sent again), then launches -
#            never a launch that would meet a 409 and turn into an update of the leaving job;
#   gone     its name is free: a declared job plans a create.
# A test holds this table complete: a state added to the client library fails it until mapped.
LIVE, LEAVING_PHASE, GONE = "live", "leaving", "gone"
JOB_STATE_PHASES: dict[Any, str] = {
    State.JOB_STATE_PENDING: LIVE,
    State.JOB_STATE_QUEUED: LIVE,
    State.JOB_STATE_STOPPED: LIVE,  # Dataflow: "has not yet started to run"
    State.JOB_STATE_RUNNING: LIVE,
    State.JOB_STATE_PAUSING: LIVE,  # paused by an operator: kept as it is (no change planned for that)
    State.JOB_STATE_PAUSED: LIVE,
    State.JOB_STATE_DRAINING: LEAVING_PHASE,
    State.JOB_STATE_CANCELLING: LEAVING_PHASE,
    State.JOB_STATE_RESOURCE_CLEANING_UP: LEAVING_PHASE,  # finished, its name not yet released
    State.JOB_STATE_UNKNOWN: LEAVING_PHASE,  # not known to run: wait for it rather than collide with it
    State.JOB_STATE_DONE: GONE,
    State.JOB_STATE_FAILED: GONE,
    State.JOB_STATE_CANCELLED: GONE,
    State.JOB_STATE_UPDATED: GONE,  # replaced by an update: its replacement is the live one
    State.JOB_STATE_DRAINED: GONE,
}
# How the plan words a leaving job ("replacing a draining dataflow_job").
LEAVING_WORDS = {
    State.JOB_STATE_DRAINING: "draining",
    State.JOB_STATE_CANCELLING: "cancelling",
    State.JOB_STATE_RESOURCE_CLEANING_UP: "cleaning-up",
    State.JOB_STATE_UNKNOWN: "unknown-state",
}
LEAVING_STATES = frozenset(s for s, phase in JOB_STATE_PHASES.items() if phase == LEAVING_PHASE)
LEAVING_REQUESTS = frozenset({State.JOB_STATE_DRAINED, State.JOB_STATE_CANCELLED, State.JOB_STATE_DONE})
TERMINAL_STATES = frozenset(s for s, phase in JOB_STATE_PHASES.items() if phase == GONE)

LIST_PAGE_SIZE = 1000
RPC_TIMEOUT_S = 120.0  # a Flex Template launch starts a launcher VM before it answers
STOP_TIMEOUT_S = 30 * 60.0  # how long delete waits for a drain (the in-flight data decides)
STOP_POLL_S = 10.0
UPDATE_TIMEOUT_S = 20 * 60.0  # how long update waits for a replacement job to run (or fail)
# What Dataflow's error messages say when its compatibility check rejects an update
# ("Workflow failed. Causes: The new job is not compatible with <job id>. ..."). Matched
# loosely and only to decide on the fallback: an unmatched failure fails the apply instead.
INCOMPATIBLE_UPDATE_MARKERS = ("not compatible", "incompatible")

# Batch jobs on Cloud Scheduler (see the module docstring).
SCHEDULER_JOB_PREFIX = "headwater"
# Schedules are read in UTC, as by the local runner's scheduler: one meaning for both runners.
TIME_ZONE = "Etc/UTC"
UTC_NAMES = frozenset({"Etc/UTC", "UTC", ""})  # "" = unset, which Cloud Scheduler reads as UTC
LAUNCH_URI = "https://dataflow.googleapis.com/v1b3/projects/{project}/locations/{location}/flexTemplates:launch"


@dataclass(frozen=True)
class DataflowSettings:
    """Where jobs run; from ``platform.yaml``'s ``dataflow:`` block, defaults applied."""

    project: str
    location: str
    template_prefix: str  # gs://bucket/prefix; specs at <prefix>/templates/<template>.json
    temp_location: str
    service_account: str | None = None
    max_workers: int | None = None
    # Cloud Scheduler launches batch jobs with an OAuth token of this account; required to
    # create or update a batch job (there is no safe default: see scheduled_launch).
    scheduler_service_account: str | None = None

    def template_path(self, template: str) -> str:
        return f"{self.template_prefix.rstrip('/')}/templates/{template}.json"


# --- Requests (pure functions, tested against the client library's types) -----------------------


def launch_parameters(resource: Resource) -> dict[str, str]:
    """The template parameters: the declared ones plus the pipeline spec as compact JSON."""
    parameters = {name: str(value) for name, value in (resource.spec.get("parameters") or {}).items()}
    parameters[SPEC_PARAMETER] = json.dumps(resource.spec["pipeline"], sort_keys=True, separators=(",", ":"))
    return parameters


def job_labels(resource: Resource) -> dict[str, str]:
    """The resource's labels plus what observe needs to compare the job with its desired spec."""
    labels = dict(resource.labels)
    labels[TEMPLATE_LABEL] = resource.spec["template"]
    for key, label in DIGEST_LABELS.items():
        labels[label] = digest(resource.spec.get(key))
    return labels


def build_launch_request(resource: Resource, settings: DataflowSettings, *, update: bool = False
                         ) -> dataflow.LaunchFlexTemplateRequest:
    template = resource.spec["template"]
    streaming = bool(resource.spec.get("streaming"))
    environment = dataflow.FlexTemplateRuntimeEnvironment(
        temp_location=settings.temp_location,
        additional_user_labels=job_labels(resource),
        # Streaming Engine keeps the de-duplication state off the workers, so an update or a
        # worker restart does not lose it.
        enable_streaming_engine=streaming,
    )
    if settings.service_account:
        environment.service_account_email = settings.service_account
    if settings.max_workers:
        environment.max_workers = settings.max_workers
    parameter = dataflow.LaunchFlexTemplateParameter(
        job_name=resource.name,
        container_spec_gcs_path=settings.template_path(template),
        parameters=launch_parameters(resource),
        environment=environment,
        update=update,
    )
    if update:
        parameter.transform_name_mappings = dict(TRANSFORM_NAME_MAPPINGS.get(template, {}))
    return dataflow.LaunchFlexTemplateRequest(
        project_id=settings.project, location=settings.location, launch_parameter=parameter)


def build_stop_request(settings: DataflowSettings, job_id: str, *, streaming: bool) -> dataflow.UpdateJobRequest:
    """Drain a streaming job, cancel a batch one."""
    state = State.JOB_STATE_DRAINED if streaming else State.JOB_STATE_CANCELLED
    return dataflow.UpdateJobRequest(
        project_id=settings.project, location=settings.location, job_id=job_id,
        job=dataflow.Job(requested_state=state),
    )


def build_list_request(settings: DataflowSettings, name: str | None = None) -> dataflow.ListJobsRequest:
    request = dataflow.ListJobsRequest(
        project_id=settings.project, location=settings.location,
        filter=dataflow.ListJobsRequest.Filter.ACTIVE, page_size=LIST_PAGE_SIZE,
    )
    if name is not None:
        request.name = name
    return request


# --- Batch jobs as Cloud Scheduler jobs (pure functions, tested against the client types) ----------


def scheduler_job_id(name: str, environment: str) -> str:
    """``headwater-<environment>-<name>``: the environment keeps platforms sharing a project apart."""
    return f"{SCHEDULER_JOB_PREFIX}-{environment}-{name}"


def launch_body(request: dataflow.LaunchFlexTemplateRequest) -> bytes:
    """The launch request as Dataflow's REST API takes it: JSON of every field except the two in the
    URL (project and location), as the official client's REST transport sends it."""
    # proto3 JSON as the client's REST transport writes it (default values left out), enum names
    # rather than numbers: Cloud Scheduler's plain POST does not ask for integer enums.
    document = json_format.MessageToDict(dataflow.LaunchFlexTemplateRequest.pb(request))
    document.pop("projectId", None)
    document.pop("location", None)
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def job_description(resource: Resource) -> str:
    """What Cloud Scheduler keeps in place of labels: the labels a launched job would carry
    (the resource's, plus the template and the spec fingerprints), as compact JSON."""
    return json.dumps(job_labels(resource), sort_keys=True, separators=(",", ":"))


def scheduled_launch(resource: Resource, settings: DataflowSettings) -> ScheduledRequest:
    """The Cloud Scheduler job that runs batch job ``resource`` on its schedule.

    Everything is checked before any API call, so a platform Cloud Scheduler cannot hold fails
    the apply with the reason. The scheduler service account has no default on purpose: the
    obvious candidate, the workers' account (by default Compute Engine's), should not be able to
    launch jobs, and a missing permission would only show at the first tick, in Cloud
    Scheduler's logs, not in the apply.
    """
    address = resource.address
    if resource.spec.get("streaming"):
        raise PermanentError(f"{address}: a streaming job is launched, not scheduled")
    schedule = resource.spec.get("schedule")
    if not schedule:
        raise PermanentError(f"{address}: a batch job needs a schedule")
    if not settings.scheduler_service_account:
        raise PermanentError(
            f"{address}: batch jobs run on Dataflow from Cloud Scheduler, which launches them as "
            "dataflow.scheduler_service_account; set it in platform.yaml (the account needs "
            "roles/dataflow.developer and roles/iam.serviceAccountUser on the workers' account: deploy/iam.md)")
    environment = resource.labels.get(PLATFORM_KEY)
    if environment is None:
        raise PermanentError(f"{address}: no {PLATFORM_KEY} label to name its Cloud Scheduler job after")
    job_id = scheduler_job_id(resource.name, environment)
    problem = job_id_problem(job_id)
    if problem:
        raise PermanentError(f"{address}: {problem}")
    description = job_description(resource)
    if len(description) > DESCRIPTION_LIMIT:
        raise PermanentError(
            f"{address}: its labels take {len(description)} characters as a Cloud Scheduler job description, "
            f"more than the {DESCRIPTION_LIMIT} allowed (Cloud Scheduler jobs have no labels): "
            "shorten or drop some of platform.yaml's labels")
    return ScheduledRequest(
        job_id=job_id,
        schedule=schedule,
        time_zone=TIME_ZONE,
        description=description,
        uri=LAUNCH_URI.format(project=settings.project, location=settings.location),
        body=launch_body(build_launch_request(resource, settings)),
        service_account=settings.scheduler_service_account,
    )


def scheduler_fields(fields: Sequence[str]) -> list[str]:
    """The update mask of a batch job's Cloud Scheduler job when ``fields`` of its spec (or
    ``"labels"``) change.

    The description holds the labels and the fingerprint of every field, so it always changes;
    so does the launch request (the HTTP target's body), which carries the same labels to the
    runs; the schedule and its time zone only when the schedule changes. Nothing else (retry
    settings, attempt deadline) is ever rewritten.
    """
    mask = {"description", "http_target"}
    if "schedule" in fields:
        mask |= {"schedule", "time_zone"}
    return sorted(mask)


# --- Observation (pure) ----------------------------------------------------------------------------


def job_phase(job: dataflow.Job) -> tuple[str, str]:
    """``(phase, word)``: `LIVE`, `LEAVING_PHASE` (with how to say it) or `GONE` (`JOB_STATE_PHASES`).
    A job replaced by an update is gone (its replacement is live); one asked to drain or cancel
    that has not started to is leaving."""
    if job.replaced_by_job_id:
        return GONE, ""
    phase = JOB_STATE_PHASES.get(job.current_state, LEAVING_PHASE)
    if phase == LIVE and job.requested_state in LEAVING_REQUESTS:
        word = {State.JOB_STATE_DRAINED: "draining"}.get(job.requested_state, "cancelling")
        return LEAVING_PHASE, word
    return phase, LEAVING_WORDS.get(job.current_state, job.current_state.name.removeprefix("JOB_STATE_").lower())


def is_live(job: dataflow.Job) -> bool:
    """Running (or about to): not terminated, not draining or cancelling, not replaced."""
    return job_phase(job)[0] == LIVE


def labelled_resource(name: str, labels: Mapping[str, str], *, streaming: bool) -> Resource:
    """The canonical view of a job from its labels: the template, and the rest as digests."""
    spec: dict[str, Any] = {"template": labels.get(TEMPLATE_LABEL), "streaming": streaming}
    for key, label in DIGEST_LABELS.items():
        # A job launched without the label (by hand, or an older headwater) compares unequal.
        spec[key] = {DIGEST_KEY: labels[label]} if label in labels else None
    return Resource(Kind.DATAFLOW_JOB, name, spec, dict(labels))


def job_resource(job: dataflow.Job) -> Resource:
    """The canonical view of an active Dataflow job; a leaving one says so (`reconciler.resources.LEAVING`)."""
    resource = labelled_resource(job.name, job.labels, streaming=job.type_ == dataflow.JobType.JOB_TYPE_STREAMING)
    phase, word = job_phase(job)
    return replace(resource, status={LEAVING: word}) if phase == LEAVING_PHASE else resource


def scheduled_resource(job: ScheduledRequest) -> Resource | None:
    """The canonical view of a batch job's Cloud Scheduler job; None for jobs that are not
    headwater's (another prefix, a description that is not its labels, another platform's name)."""
    if not job.job_id.startswith(f"{SCHEDULER_JOB_PREFIX}-"):
        return None
    try:
        labels = json.loads(job.description)
    except ValueError:
        return None
    if not isinstance(labels, dict) or labels.get(MANAGED_BY_KEY) != MANAGED_BY_VALUE:
        return None
    labels = {str(key): str(value) for key, value in labels.items()}
    prefix = scheduler_job_id("", labels.get(PLATFORM_KEY, ""))
    if not job.job_id.startswith(prefix) or len(job.job_id) == len(prefix):
        return None
    resource = labelled_resource(job.job_id[len(prefix):], labels, streaming=False)
    # The schedule is the one field Cloud Scheduler holds in plain: read it back (with its time
    # zone when that is not UTC), so that a schedule changed by hand is drift the plan repairs.
    schedule = job.schedule if job.time_zone in UTC_NAMES else f"{job.schedule} ({job.time_zone})"
    return Resource(resource.kind, resource.name, {**resource.spec, "schedule": schedule}, resource.labels)


def _managed(job: dataflow.Job) -> bool:
    return job.labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


# --- The provider ------------------------------------------------------------------------------------


class DataflowProvider:
    """Dataflow Flex Template jobs of one project and region: streaming ones launched, batch ones
    scheduled (Cloud Scheduler, same region). Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.DATAFLOW_JOB,)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(
        self,
        settings: DataflowSettings,
        *,
        jobs_client: dataflow.JobsV1Beta3Client | None = None,
        templates_client: dataflow.FlexTemplatesServiceClient | None = None,
        schedules: Schedules | None = None,
        client_options: Any = None,
        credentials: Any = None,
        transport: str | None = None,
        stop_timeout: float = STOP_TIMEOUT_S,
        update_timeout: float = UPDATE_TIMEOUT_S,
        poll_interval: float = STOP_POLL_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._jobs = jobs_client
        self._templates = templates_client
        self._messages: Any = None
        # For tests: point the official clients at a local endpoint (REST transport).
        self._client_kwargs = {k: v for k, v in (("client_options", client_options), ("credentials", credentials),
                                                 ("transport", transport)) if v is not None}
        self._schedules = schedules or CloudScheduler(settings.project, settings.location, **self._client_kwargs)
        self.stop_timeout = stop_timeout
        self.update_timeout = update_timeout
        self.poll_interval = poll_interval
        self._sleep = sleep
        self._lock = threading.Lock()
        self._counter = CallCounter("dataflow")

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        if Kind(kind) != Kind.DATAFLOW_JOB:
            raise PermanentError(f"dataflow: unsupported kind {kind!r}")
        return self._observe_streaming() + self._observe_batch()

    def create(self, resource: Resource) -> None:
        if not resource.spec.get("streaming"):
            self._schedules.create(scheduled_launch(resource, self.settings))
            return
        request = build_launch_request(resource, self.settings)
        self._rpc("launch_flex_template", resource.name,
                  lambda: self._templates_client().launch_flex_template(request=request, **_OPTS))

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        for name in fields:
            if name in IMMUTABLE_FIELDS[Kind.DATAFLOW_JOB]:
                raise PermanentError(f"{resource.address}: {name!r} cannot change in place (drain and relaunch)")
        if resource.spec.get("streaming"):
            self._update_streaming(resource)
            return
        # The next ticks launch with the new settings; a run in progress finishes as launched.
        self._schedules.update(scheduled_launch(resource, self.settings), scheduler_fields(fields))

    def delete(self, resource: Resource) -> None:
        streaming = bool(resource.spec.get("streaming"))
        if not streaming:
            # No more runs first, then the one in progress (a replacement reuses the name).
            environment = resource.labels.get(PLATFORM_KEY)
            if environment is None:
                raise PermanentError(f"{resource.address}: no {PLATFORM_KEY} label: which Cloud Scheduler job?")
            self._schedules.delete(scheduler_job_id(resource.name, environment))
        self._stop(resource.name, streaming=streaming)

    # -- optional abilities (providers.base) --

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        """Active streaming jobs of the declared names, whoever launched them (one list): a job of
        that name that is not headwater's would answer a launch with 409. (Batch jobs are Cloud
        Scheduler jobs under headwater's own prefix: not read.)"""
        if Kind(kind) != Kind.DATAFLOW_JOB:
            raise PermanentError(f"dataflow: unsupported kind {kind!r}")
        wanted = set(names)
        return [r for r in self._observe_streaming(managed_only=False) if r.name in wanted]

    # -- optional ability: health (providers.base.HealthReporter; providers/dataflow_health.py) --

    def health(self, resources: Sequence[Resource]) -> dict[str, Any]:
        """Each declared job's newest run: running, failed (with Dataflow's error), paused..."""
        from providers.dataflow_health import job_health

        return job_health(self, resources)

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        return {**self._counter.snapshot(), **self._schedules.api_calls()}

    # -- plumbing --

    def _observe_streaming(self, *, managed_only: bool = True) -> list[Resource]:
        """The active streaming jobs, one per name: a live one before a leaving one (a job being
        drained while its successor runs), else the newest. Leaving ones carry their status."""
        live: dict[str, dataflow.Job] = {}
        for job in self._list_active():
            if job.type_ != dataflow.JobType.JOB_TYPE_STREAMING:
                continue  # batch runs belong to their schedule, observed below
            if not job.labels:
                # Defensive: should the service list summaries without labels, fetch them.
                job = self._get(job.id, dataflow.JobView.JOB_VIEW_DESCRIPTION)
            if (managed_only and not _managed(job)) or job_phase(job)[0] == GONE:
                continue
            known = live.get(job.name)
            if known is None or (is_live(job), job.create_time) > (is_live(known), known.create_time):
                live[job.name] = job
        return [job_resource(job) for job in live.values()]

    def _observe_batch(self) -> list[Resource]:
        try:
            schedules = self._schedules.list()
        except ServiceDisabled as exc:
            # A streaming-only platform need not enable Cloud Scheduler. With the API off no
            # schedule of ours can run, and none is seen: nothing is deleted; a declared batch
            # job plans a create, whose apply fails with this same reason.
            log.warning("Cloud Scheduler API is not enabled: no batch jobs observed (%s)", exc)
            return []
        live = []
        for job in schedules:
            resource = scheduled_resource(job)
            if resource is None:
                continue
            if job.state != "ENABLED":
                log.warning("Cloud Scheduler job %s is %s: no runs until it is resumed (headwater leaves it so)",
                            job.job_id, job.state)
            live.append(resource)
        return live

    def _update_streaming(self, resource: Resource) -> None:
        """In place when Dataflow's compatibility check allows it, else drain and relaunch."""
        request = build_launch_request(resource, self.settings, update=True)
        response = self._rpc("launch_flex_template", f"{resource.name} (update)",
                             lambda: self._templates_client().launch_flex_template(request=request, **_OPTS))
        replacement = response.job.id
        if not replacement:  # nothing to follow (e.g. a validate-only launch): trust the answer
            return
        deadline = time.monotonic() + self.update_timeout
        while True:
            state = self._get(replacement).current_state
            if state == State.JOB_STATE_RUNNING:
                return
            if state in TERMINAL_STATES:
                break
            if time.monotonic() >= deadline:
                raise TemporaryError(f"dataflow job {resource.name}: the update (job {replacement}) is still "
                                     f"{state.name} after {self.update_timeout:.0f} s; apply again to check on it")
            self._sleep(self.poll_interval)
        errors = self._error_messages(replacement)
        if not any(marker in text.lower() for text in errors for marker in INCOMPATIBLE_UPDATE_MARKERS):
            raise PermanentError(f"{resource.address}: the in-place update failed ({state.name}); the running job "
                                 f"is untouched: {'; '.join(errors)[:500] or 'Dataflow gave no error message'}")
        log.warning("%s: Dataflow's compatibility check rejected the in-place update (%s); draining the running "
                    "job and launching it anew", resource.address, errors[0][:300])
        self._stop(resource.name, streaming=True)
        self.create(resource)

    def _error_messages(self, job_id: str) -> list[str]:
        request = dataflow.ListJobMessagesRequest(
            project_id=self.settings.project, location=self.settings.location, job_id=job_id,
            minimum_importance=dataflow.JobMessageImportance.JOB_MESSAGE_ERROR)

        def attempt() -> list[str]:
            self._count("list_job_messages")
            pager = self._messages_client().list_job_messages(request=request, **_OPTS)
            return [m.message_text for m in pager]

        return call(attempt, f"dataflow.list_job_messages {job_id}")

    def _stop(self, name: str, *, streaming: bool) -> None:
        """Drain (streaming) or cancel (batch) the active job ``name``; wait until it is gone."""
        job_type = dataflow.JobType.JOB_TYPE_STREAMING if streaming else dataflow.JobType.JOB_TYPE_BATCH
        job = next((j for j in self._list_active(name) if j.name == name and j.type_ == job_type and _managed(j)),
                   None)
        if job is None:
            return  # nothing running: deleting is idempotent
        if is_live(job):
            request = build_stop_request(self.settings, job.id, streaming=streaming)
            try:
                self._rpc("update_job", f"{name} ({'drain' if streaming else 'cancel'})",
                          lambda: self._jobs_client().update_job(request=request, **_OPTS))
            except NotFound:
                return
        deadline = time.monotonic() + self.stop_timeout
        while True:
            current = self._get(job.id)
            if current.current_state in TERMINAL_STATES:
                return
            if time.monotonic() >= deadline:
                verb = "draining" if streaming else "cancelling"
                raise TemporaryError(f"dataflow job {name} still {verb} after {self.stop_timeout:.0f} s; "
                                     "apply again once it has stopped")
            self._sleep(self.poll_interval)

    def _list_active(self, name: str | None = None) -> list[dataflow.Job]:
        request = build_list_request(self.settings, name)

        def attempt() -> list[dataflow.Job]:
            self._count("list_jobs")
            pager = self._jobs_client().list_jobs(request=request, **_OPTS)
            jobs: list[dataflow.Job] = []
            for number, page in enumerate(pager.pages):
                if number:
                    self._count("list_jobs")
                jobs.extend(page.jobs)
            return jobs

        return call(attempt, f"dataflow.list_jobs {self.settings.project}/{self.settings.location}")

    def _get(self, job_id: str, view: dataflow.JobView = dataflow.JobView.JOB_VIEW_SUMMARY) -> dataflow.Job:
        request = dataflow.GetJobRequest(project_id=self.settings.project, location=self.settings.location,
                                         job_id=job_id, view=view)
        return self._rpc("get_job", job_id, lambda: self._jobs_client().get_job(request=request, **_OPTS))

    def _jobs_client(self) -> dataflow.JobsV1Beta3Client:
        with self._lock:
            if self._jobs is None:
                self._jobs = dataflow.JobsV1Beta3Client(**self._client_kwargs)
            return self._jobs

    def _messages_client(self) -> dataflow.MessagesV1Beta3Client:
        with self._lock:
            if self._messages is None:
                self._messages = dataflow.MessagesV1Beta3Client(**self._client_kwargs)
            return self._messages

    def _templates_client(self) -> dataflow.FlexTemplatesServiceClient:
        with self._lock:
            if self._templates is None:
                self._templates = dataflow.FlexTemplatesServiceClient(**self._client_kwargs)
            return self._templates

    def _count(self, method: str) -> None:
        self._counter.count(method)

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)


# Retries are providers.errors.call's job, not the client library's.
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
