"""Cloud Scheduler: HTTP requests sent on a cron schedule, for providers that need them.

Not a provider of its own (no resource kind maps to it): `providers.dataflow` uses it to run batch
``dataflow_job`` resources on their schedule. Dataflow runs a batch job once per launch, so on
Dataflow a scheduled batch job *is* a Cloud Scheduler job whose HTTP target is the Flex Template
launch request; the Dataflow provider decides what to schedule, this module only talks to Cloud
Scheduler. It is the only module that imports ``google.cloud.scheduler`` (google-cloud-scheduler,
the official client).

The interface is `Schedules`, in plain data (`ScheduledRequest`), so that its user never sees
the client library's types: `CloudScheduler` implements it for one project and location.

=============  ===============================================================================
``list``       ONE ``list_jobs`` for the location (paged, 500 jobs a page): every job, with
               its description; the caller keeps the ones it recognizes.
``create``     ``create_job``; a job of that name already there answers 409, `AlreadyExists`.
``update``     ``update_job`` with an ``update_mask`` naming only the given fields.
``delete``     ``delete_job``; a job already gone is not an error.
=============  ===============================================================================

What Cloud Scheduler does not have, and how its user copes: jobs carry no labels (so the
description holds what labels would, as compact JSON, at most `DESCRIPTION_LIMIT` characters)
and cannot be filtered on the server (so ``list`` returns every job of the location).

Every request is authenticated as the caller; each *run* of a job is authenticated with an
OAuth access token of the job's service account (`ScheduledRequest.service_account`), which
Cloud Scheduler mints at each tick. The caller therefore needs ``iam.serviceAccounts.actAs`` on
that account (see deploy/iam.md).

Verified here against the client library's own types and, through REST transport, a local HTTP
endpoint; verified only against the real service: that Cloud Scheduler accepts these requests
(the update mask paths included) and returns ``schedule`` exactly as written.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from google.cloud import scheduler_v1 as scheduler
from google.protobuf import duration_pb2, field_mask_pb2

from providers.calls import CallCounter
from providers.errors import NotFound, PermanentError, call

T = TypeVar("T")

# Cloud Scheduler's own limits.
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,500}")
DESCRIPTION_LIMIT = 500
LIST_PAGE_SIZE = 500  # the service's maximum

# The access token's scope: what the scheduled request may call (IAM decides the rest).
OAUTH_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Cloud Scheduler sends a body as application/octet-stream unless told otherwise.
JSON_HEADERS = {"Content-Type": "application/json"}

# A failed attempt (5xx, or a launch refused because the previous run still holds the job name)
# is retried a few times with backoff, then left to the next tick.
RETRY_COUNT = 3
MIN_BACKOFF_S = 30
MAX_BACKOFF_S = 600
# How long Cloud Scheduler waits for the target's answer: a Flex Template launch answers once
# the job is created, well within this.
ATTEMPT_DEADLINE_S = 300

# The fields `update` may name, as Job field paths (the update mask).
UPDATABLE_FIELDS = frozenset({"description", "schedule", "time_zone", "http_target"})

RPC_TIMEOUT_S = 60.0


def job_id_problem(job_id: str) -> str | None:
    """Why ``job_id`` cannot name a Cloud Scheduler job, or None."""
    if JOB_ID_PATTERN.fullmatch(job_id):
        return None
    return (f"{job_id!r} cannot name a Cloud Scheduler job: 1-500 letters, digits, '-' and '_' "
            f"(it is {len(job_id)} characters)")


@dataclass(frozen=True)
class ScheduledRequest:
    """One Cloud Scheduler job: an HTTP request sent at each tick of a cron schedule."""

    job_id: str  # the last part of projects/<p>/locations/<l>/jobs/<job_id>
    schedule: str  # unix-cron, five fields
    time_zone: str  # tz database name the schedule is read in
    description: str
    uri: str
    body: bytes
    service_account: str  # each run is authenticated with an OAuth token of this account
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))
    state: str = "ENABLED"  # read back by list: ENABLED, PAUSED, DISABLED or UPDATE_FAILED


class Schedules(Protocol):
    """The jobs of one Cloud Scheduler location. Contract in the module docstring."""

    def list(self) -> list[ScheduledRequest]: ...

    def create(self, job: ScheduledRequest) -> None: ...

    def update(self, job: ScheduledRequest, fields: Sequence[str]) -> None: ...

    def delete(self, job_id: str) -> None: ...

    def api_calls(self) -> Mapping[str, int]: ...


# --- Requests (pure functions, tested against the client library's types) -----------------------


def parent(project: str, location: str) -> str:
    return f"projects/{project}/locations/{location}"


def build_job(project: str, location: str, job: ScheduledRequest) -> scheduler.Job:
    """The Cloud Scheduler Job for ``job``; refuses what the service would refuse."""
    problem = job_id_problem(job.job_id)
    if problem:
        raise PermanentError(problem)
    if len(job.description) > DESCRIPTION_LIMIT:
        raise PermanentError(f"Cloud Scheduler job {job.job_id}: description of {len(job.description)} characters, "
                             f"the limit is {DESCRIPTION_LIMIT}")
    return scheduler.Job(
        name=f"{parent(project, location)}/jobs/{job.job_id}",
        description=job.description,
        schedule=job.schedule,
        time_zone=job.time_zone,
        http_target=scheduler.HttpTarget(
            uri=job.uri,
            http_method=scheduler.HttpMethod[job.method],
            headers=dict(job.headers),
            body=job.body,
            oauth_token=scheduler.OAuthToken(service_account_email=job.service_account, scope=OAUTH_SCOPE),
        ),
        retry_config=scheduler.RetryConfig(
            retry_count=RETRY_COUNT,
            min_backoff_duration=duration_pb2.Duration(seconds=MIN_BACKOFF_S),
            max_backoff_duration=duration_pb2.Duration(seconds=MAX_BACKOFF_S),
        ),
        attempt_deadline=duration_pb2.Duration(seconds=ATTEMPT_DEADLINE_S),
    )


def build_create_request(project: str, location: str, job: ScheduledRequest) -> scheduler.CreateJobRequest:
    return scheduler.CreateJobRequest(parent=parent(project, location), job=build_job(project, location, job))


def build_update_request(project: str, location: str, job: ScheduledRequest, fields: Sequence[str]
                         ) -> scheduler.UpdateJobRequest:
    """Send the whole job, but have Cloud Scheduler change only ``fields`` (the update mask)."""
    unknown = set(fields) - UPDATABLE_FIELDS
    if unknown or not fields:
        raise PermanentError(f"Cloud Scheduler job {job.job_id}: cannot update {sorted(unknown) or 'nothing'}; "
                             f"updatable: {sorted(UPDATABLE_FIELDS)}")
    return scheduler.UpdateJobRequest(
        job=build_job(project, location, job),
        update_mask=field_mask_pb2.FieldMask(paths=sorted(set(fields))),
    )


def build_delete_request(project: str, location: str, job_id: str) -> scheduler.DeleteJobRequest:
    return scheduler.DeleteJobRequest(name=f"{parent(project, location)}/jobs/{job_id}")


def build_list_request(project: str, location: str) -> scheduler.ListJobsRequest:
    return scheduler.ListJobsRequest(parent=parent(project, location), page_size=LIST_PAGE_SIZE)


def scheduled_request(job: scheduler.Job) -> ScheduledRequest:
    """A listed Job in plain data (jobs with another kind of target keep an empty uri)."""
    target = job.http_target
    return ScheduledRequest(
        job_id=job.name.rsplit("/", 1)[-1],
        schedule=job.schedule,
        time_zone=job.time_zone,
        description=job.description,
        uri=target.uri,
        body=target.body,
        service_account=target.oauth_token.service_account_email,
        method=scheduler.HttpMethod(target.http_method).name if target.http_method else "POST",
        headers=dict(target.headers),
        state=scheduler.Job.State(job.state).name,
    )


# --- The client ------------------------------------------------------------------------------------


class CloudScheduler:
    """`Schedules` of one project and location, through the official client."""

    def __init__(self, project: str, location: str, *, client: scheduler.CloudSchedulerClient | None = None,
                 **client_kwargs: Any) -> None:
        self.project = project
        self.location = location
        self._client = client
        # For tests: client_options / credentials / transport point the client at a local endpoint.
        self._client_kwargs = {k: v for k, v in client_kwargs.items() if v is not None}
        self._lock = threading.Lock()
        self._counter = CallCounter("scheduler")

    def list(self) -> list[ScheduledRequest]:
        request = build_list_request(self.project, self.location)

        def attempt() -> list[ScheduledRequest]:
            self._count("list_jobs")
            pager = self._scheduler().list_jobs(request=request, **_OPTS)
            jobs: list[ScheduledRequest] = []
            for number, page in enumerate(pager.pages):
                if number:
                    self._count("list_jobs")
                jobs.extend(scheduled_request(job) for job in page.jobs)
            return jobs

        return call(attempt, f"scheduler.list_jobs {parent(self.project, self.location)}")

    def create(self, job: ScheduledRequest) -> None:
        request = build_create_request(self.project, self.location, job)
        self._rpc("create_job", job.job_id, lambda: self._scheduler().create_job(request=request, **_OPTS))

    def update(self, job: ScheduledRequest, fields: Sequence[str]) -> None:
        request = build_update_request(self.project, self.location, job, fields)
        self._rpc("update_job", job.job_id, lambda: self._scheduler().update_job(request=request, **_OPTS))

    def delete(self, job_id: str) -> None:
        request = build_delete_request(self.project, self.location, job_id)
        try:
            self._rpc("delete_job", job_id, lambda: self._scheduler().delete_job(request=request, **_OPTS))
        except NotFound:
            pass  # already gone: deleting is idempotent

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    # -- plumbing --

    def _scheduler(self) -> scheduler.CloudSchedulerClient:
        with self._lock:
            if self._client is None:
                self._client = scheduler.CloudSchedulerClient(**self._client_kwargs)
            return self._client

    def _count(self, method: str) -> None:
        self._counter.count(method)

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)


# Retries are providers.errors.call's job, not the client library's.
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
