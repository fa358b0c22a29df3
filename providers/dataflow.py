"""Dataflow provider: the pipelines in ``beam/`` as Dataflow Flex Template jobs.

Kind: ``Kind.DATAFLOW_JOB``. This module is the only one that imports ``google.cloud.dataflow``
(google-cloud-dataflow-client, kept below 0.14 by apache-beam's bound). It implements the
contract in `providers.base`; `providers.localrunner` realizes the same kind on this machine.

A job is named after its resource (``orders-ingest``): Dataflow keeps job names unique among a
project's active jobs in a region, which is what makes ``create`` idempotent.

The four operations
-------------------
``create``   LaunchFlexTemplate from ``<template_bucket>/templates/<template>.json`` with the
             template parameters, the pipeline spec as the ``source_spec`` parameter, and the
             resource's labels (plus the bookkeeping labels below) as the job's labels. A job
             of that name still active answers 409, i.e. `AlreadyExists`: the applier then
             converges with ``update``.
``update``   Streaming: LaunchFlexTemplate with ``update=True`` and the template's transform
             name mappings - Dataflow replaces the running job in place, keeping its state and
             unacknowledged messages, after its own compatibility check (a rejected update
             leaves the running job untouched and fails the apply with Dataflow's reason).
             Batch: the active run, if any, is cancelled; then a new run is launched.
             A changed ``template`` or ``streaming`` flag never comes here: those are
             `IMMUTABLE_FIELDS`, so the plan shows a replacement (drain, then launch).
``delete``   Streaming: requested state JOB_STATE_DRAINED - Dataflow stops pulling, finishes
             what it holds, then stops; never cancelled, which would drop in-flight data.
             Batch: JOB_STATE_CANCELLED (a run is a re-read of its input). Either way delete
             waits (bounded) until the job has left the active set, because a replacement
             launches under the same name.
``observe``  ONE ``list_jobs(filter=ACTIVE)`` per project and region (paged), keeping the jobs
             labelled ``managed-by=headwater``. Terminated jobs (done, failed, drained,
             cancelled, updated) are history, not drift, and so are jobs on their way out
             (draining, cancelling, replaced by an update): only the running ones are live.

What observe can read back
--------------------------
A listed job tells its name, type (streaming or batch), state and labels, but not the
parameters it was launched with. So a launch labels the job with what the plan needs to
compare: ``headwater-template`` (the template name) and one digest per other field
(``headwater-schedule``, ``headwater-parameters``, ``headwater-pipeline``: see
`reconciler.resources.digest_of`). ``observe`` reports those fields as digests and the planner
compares digests, so a plan says *which* field changed; the field-level detail of a change is
shown by the local runner, which keeps the whole spec.

Scheduling of batch jobs
------------------------
Dataflow runs a batch job once per launch. A batch job is live while a run is active; once the
run has ended, the next plan shows the job as to be created and ``apply`` launches another run.
Running batch jobs on their cron ``schedule`` therefore needs a scheduler calling apply (or
Cloud Scheduler / Dataflow Data Pipelines, not managed here); the local runner runs the
schedule itself (see `providers.localrunner`).

Verified here against the client library's own request types (and, through REST transport, a
local HTTP endpoint); verified only against the real service: that Dataflow accepts these
requests, that list summaries carry labels (if a listed job has none, one ``get_job`` per such
job fetches them), update compatibility, and drain timing.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.cloud import dataflow_v1beta3 as dataflow

from providers.errors import NotFound, PermanentError, TemporaryError, call
from reconciler.resources import DIGEST_KEY, MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource, digest

T = TypeVar("T")

# The template parameter that carries the pipeline spec (beam/common/spec.py).
SPEC_PARAMETER = "source_spec"

TEMPLATE_LABEL = "headwater-template"
# Spec keys observe can only fingerprint, and the label holding each one's digest.
DIGEST_LABELS = {
    "schedule": "headwater-schedule",
    "parameters": "headwater-parameters",
    "pipeline": "headwater-pipeline",
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
# Active jobs that are already leaving: reported as gone, like terminated ones.
LEAVING_STATES = frozenset({State.JOB_STATE_DRAINING, State.JOB_STATE_CANCELLING})
LEAVING_REQUESTS = frozenset({State.JOB_STATE_DRAINED, State.JOB_STATE_CANCELLED, State.JOB_STATE_DONE})
TERMINAL_STATES = frozenset({
    State.JOB_STATE_DONE, State.JOB_STATE_FAILED, State.JOB_STATE_CANCELLED, State.JOB_STATE_UPDATED,
    State.JOB_STATE_DRAINED, State.JOB_STATE_STOPPED,
})

LIST_PAGE_SIZE = 1000
RPC_TIMEOUT_S = 120.0  # a Flex Template launch starts a launcher VM before it answers
STOP_TIMEOUT_S = 30 * 60.0  # how long delete waits for a drain (the in-flight data decides)
STOP_POLL_S = 10.0


@dataclass(frozen=True)
class DataflowSettings:
    """Where jobs run; from ``platform.yaml``'s ``dataflow:`` block, defaults applied."""

    project: str
    location: str
    template_prefix: str  # gs://bucket/prefix; specs at <prefix>/templates/<template>.json
    temp_location: str
    service_account: str | None = None
    max_workers: int | None = None

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


# --- Observation (pure) ----------------------------------------------------------------------------


def is_live(job: dataflow.Job) -> bool:
    """Running (or about to): not terminated, not draining or cancelling, not replaced."""
    return (job.current_state not in TERMINAL_STATES
            and job.current_state not in LEAVING_STATES
            and job.requested_state not in LEAVING_REQUESTS
            and not job.replaced_by_job_id)


def job_resource(job: dataflow.Job) -> Resource:
    """The canonical view of a live job: template and type read back, the rest as digests."""
    labels = dict(job.labels)
    spec: dict[str, Any] = {
        "template": labels.get(TEMPLATE_LABEL),
        "streaming": job.type_ == dataflow.JobType.JOB_TYPE_STREAMING,
    }
    for key, label in DIGEST_LABELS.items():
        # A job launched without the label (by hand, or an older headwater) compares unequal.
        spec[key] = {DIGEST_KEY: labels[label]} if label in labels else None
    return Resource(Kind.DATAFLOW_JOB, job.name, spec, labels)


def _managed(job: dataflow.Job) -> bool:
    return job.labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


# --- The provider ------------------------------------------------------------------------------------


class DataflowProvider:
    """Dataflow Flex Template jobs of one project and region. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.DATAFLOW_JOB,)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(
        self,
        settings: DataflowSettings,
        *,
        jobs_client: dataflow.JobsV1Beta3Client | None = None,
        templates_client: dataflow.FlexTemplatesServiceClient | None = None,
        client_options: Any = None,
        credentials: Any = None,
        transport: str | None = None,
        stop_timeout: float = STOP_TIMEOUT_S,
        poll_interval: float = STOP_POLL_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._jobs = jobs_client
        self._templates = templates_client
        # For tests: point the official clients at a local endpoint (REST transport).
        self._client_kwargs = {k: v for k, v in (("client_options", client_options), ("credentials", credentials),
                                                 ("transport", transport)) if v is not None}
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self._sleep = sleep
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        if Kind(kind) != Kind.DATAFLOW_JOB:
            raise PermanentError(f"dataflow: unsupported kind {kind!r}")
        live: dict[str, dataflow.Job] = {}
        for job in self._list_active():
            if not job.labels:
                # Defensive: should the service list summaries without labels, fetch them.
                job = self._get(job.id, dataflow.JobView.JOB_VIEW_DESCRIPTION)
            if not _managed(job) or not is_live(job):
                continue
            known = live.get(job.name)
            if known is None or job.create_time > known.create_time:
                live[job.name] = job
        return [job_resource(job) for job in live.values()]

    def create(self, resource: Resource) -> None:
        request = build_launch_request(resource, self.settings)
        self._rpc("launch_flex_template", resource.name,
                  lambda: self._templates_client().launch_flex_template(request=request, **_OPTS))

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        for name in fields:
            if name in IMMUTABLE_FIELDS[Kind.DATAFLOW_JOB]:
                raise PermanentError(f"{resource.address}: {name!r} cannot change in place (drain and relaunch)")
        if resource.spec.get("streaming"):
            request = build_launch_request(resource, self.settings, update=True)
            self._rpc("launch_flex_template", f"{resource.name} (update)",
                      lambda: self._templates_client().launch_flex_template(request=request, **_OPTS))
            return
        # A batch run cannot be updated: stop the current one, launch one with the new settings.
        self._stop(resource.name, streaming=False)
        self.create(resource)

    def delete(self, resource: Resource) -> None:
        self._stop(resource.name, streaming=bool(resource.spec.get("streaming")))

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._calls)

    # -- plumbing --

    def _stop(self, name: str, *, streaming: bool) -> None:
        """Drain (streaming) or cancel (batch) the active job ``name``; wait until it is gone."""
        job = next((j for j in self._list_active(name) if j.name == name and _managed(j)), None)
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

    def _templates_client(self) -> dataflow.FlexTemplatesServiceClient:
        with self._lock:
            if self._templates is None:
                self._templates = dataflow.FlexTemplatesServiceClient(**self._client_kwargs)
            return self._templates

    def _count(self, method: str) -> None:
        with self._lock:
            self._calls[f"dataflow.{method}"] += 1

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        def attempt() -> T:
            self._count(method)
            return fn()

        return call(attempt, f"dataflow.{method} {target}")


# Retries are providers.errors.call's job, not the client library's.
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
