"""Storage Transfer provider: ``storage_transfer_job`` resources (a cloud_transfer source's job).

Kind ``Kind.STORAGE_TRANSFER_JOB``. This module is the only one that imports
``google.cloud.storage_transfer_v1`` (google-cloud-storage-transfer); it also changes the IAM
policies of the sink bucket (google-cloud-storage) and of the notification topic
(google-cloud-pubsub) for the service agent's grants, as `providers.storage_notifications` does
for its own. `providers.local_transfer` stands in for it on this machine. The resource's
meaning and the ingestion it feeds: docs/storage-transfer.md.

How a spec becomes a ``TransferJob``
------------------------------------
=========================  =====================================================================
spec key                   ``TransferJob`` field
=========================  =====================================================================
``source``                 ``transfer_spec.aws_s3_data_source`` {bucket_name, path, role_arn |
                           credentials_secret}, ``azure_blob_storage_data_source``
                           {storage_account, container, path, credentials_secret} or
                           ``gcs_data_source`` {bucket_name, path}. A secret id becomes
                           ``projects/<project number>/secrets/<id>`` (the form the API takes;
                           the number is read from the service agent's e-mail). Never a key:
                           ``aws_access_key`` and ``azure_credentials`` are never sent.
``sink``                   ``transfer_spec.gcs_data_sink`` {bucket_name, path}
``overwrite_when``,        ``transfer_spec.transfer_options`` {overwrite_when,
``delete_from_source``,    delete_objects_from_source_after_transfer,
``delete_unique_in_sink``  delete_objects_unique_in_sink}
``max_age_seconds``        ``transfer_spec.object_conditions.max_time_elapsed_since_last_modification``
``schedule``               ``schedule``: ``start_time_of_day`` = the cron's first run at or after
                           the moment of creation, ``schedule_start_date`` = its day (UTC),
                           ``repeat_interval`` = its period (`reconciler.transfer`). Storage
                           Transfer cannot change a job's schedule (an update may name only
                           description, transfer_spec, notification_config, logging_config and
                           status): a new schedule replaces the job.
``notification_topic``     ``notification_config`` {pubsub_topic: projects/<p>/topics/<t>,
                           event_types: every TRANSFER_OPERATION_* end, payload_format: JSON}
``enabled``                ``status`` ENABLED | DISABLED
labels                     ``description``: compact JSON of the labels plus ``headwater-name``
                           (transfer jobs carry no labels), at most 1024 bytes
``service_agent_grants``   IAM, not the job: the project's Storage Transfer service agent
                           (``project-<number>@storage-transfer-service.iam.gserviceaccount.com``,
                           ``googleServiceAccounts.get``) holds ``roles/storage.legacyBucketWriter``
                           and ``roles/storage.objectViewer`` on the sink bucket (list, create,
                           delete; get for ``overwrite_when: DIFFERENT``/``NEVER``) and
                           ``roles/pubsub.publisher`` on the topic
=========================  =====================================================================

The job's own name is ``transferJobs/headwater-<platform>-<resource name>-<UTC yyyymmddHHMMSS>``,
chosen at create: a deleted job keeps its name for 30 days, so a replaced job needs a new one. The
resource is found again by the ``headwater-name`` in its description.

The four operations
-------------------
``observe``  ``list_transfer_jobs`` with filter ``{"projectId": p, "jobStatuses": ["ENABLED",
             "DISABLED"]}`` (paged; DELETED jobs are history), keeping the jobs whose description
             says ``managed-by=headwater``; the service agent's e-mail once per provider; one
             ``getIamPolicy`` per distinct sink bucket and per distinct topic (the grants are what
             breaks first; worth seeing in a plan). Two live jobs of one resource (a replacement
             that died half-way) read as the newest; delete removes both.
``create``   grants first (Storage Transfer checks the topic when the job is created, and the
             first run needs the bucket), then ``create_transfer_job``. A live job of the same
             resource is `AlreadyExists` (the applier converges it with update).
``update``   the grants when ``service_agent_grants`` changed; the rest in one
             ``update_transfer_job`` with ``update_transfer_job_field_mask`` naming only what
             changed (``transfer_spec`` is sent whole, as the API requires).
``delete``   ``delete_transfer_job`` for each live job of the resource. The grants stay: the
             service agent may serve other jobs; they go with the topic and bucket.

Every request goes through `providers.errors` (`CallCounter.rpc`), with ``retry=None`` for the
client library. Verified here against the client library's types and, through REST transport, a
local endpoint (tests/fake_storage_transfer.py); verified only against the real service: that it
accepts these requests and names as built, reads a job back as written (the schedule in
particular), and which IAM roles it really needs (deploy/iam.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1, storage, storage_transfer_v1
from google.protobuf import duration_pb2, field_mask_pb2
from google.type import date_pb2, timeofday_pb2

from providers.calls import CallCounter
from providers.errors import AlreadyExists, NotFound, PermanentError, ServiceDisabled, call
from reconciler import transfer as rules
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, PLATFORM_KEY, Kind, Resource

log = logging.getLogger(__name__)

T = TypeVar("T")

NAME_KEY = "headwater-name"  # in the description: which resource a job is
DESCRIPTION_MAX = 1024
LIST_PAGE_SIZE = 256
RPC_TIMEOUT_S = 60.0
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}

SINK_ROLES = ("roles/storage.legacyBucketWriter", "roles/storage.objectViewer")
TOPIC_ROLE = "roles/pubsub.publisher"
POLICY_VERSION = 3

IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {Kind.STORAGE_TRANSFER_JOB: frozenset({"schedule"})}
# Spec key (or "labels") -> the TransferJob path an update masks.
FIELD_MASKS: dict[str, str] = {
    "source": "transfer_spec", "sink": "transfer_spec", "overwrite_when": "transfer_spec",
    "delete_from_source": "transfer_spec", "delete_unique_in_sink": "transfer_spec",
    "max_age_seconds": "transfer_spec", "notification_topic": "notification_config", "enabled": "status",
    "labels": "description",
}

Status = storage_transfer_v1.TransferJob.Status
Overwrite = storage_transfer_v1.TransferOptions.OverwriteWhen
EventType = storage_transfer_v1.NotificationConfig.EventType
PayloadFormat = storage_transfer_v1.NotificationConfig.PayloadFormat
EVENT_TYPES = [EventType.TRANSFER_OPERATION_SUCCESS, EventType.TRANSFER_OPERATION_FAILED,
               EventType.TRANSFER_OPERATION_ABORTED]

_AGENT = re.compile(r"^project-(\d+)@storage-transfer-service\.iam\.gserviceaccount\.com$")
_SECRET = re.compile(r"^projects/[^/]+/secrets/([^/]+)$")


# --------------------------------------------------------------------------- requests (pure)


def project_number(agent_email: str) -> str:
    """The project number in the service agent's e-mail (``project-<number>@storage-transfer-...``)."""
    match = _AGENT.match(agent_email)
    if not match:
        raise PermanentError(f"unexpected Storage Transfer service agent {agent_email!r}")
    return match.group(1)


def secret_name(secret_id: str | None, number: str) -> str:
    return f"projects/{number}/secrets/{secret_id}" if secret_id else ""


def topic_path(topic: str, project: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def description(resource: Resource) -> str:
    """The job's description: the labels and the resource name, compact JSON, keys sorted."""
    text = json.dumps({**resource.labels, NAME_KEY: resource.name}, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > DESCRIPTION_MAX:
        raise PermanentError(f"{resource.address}: its labels take {len(text.encode())} bytes as the job's "
                             f"description; Storage Transfer allows {DESCRIPTION_MAX}")
    return text


def build_transfer_spec(resource: Resource, number: str) -> storage_transfer_v1.TransferSpec:
    spec = resource.spec
    source, sink = spec["source"], spec["sink"]
    options = storage_transfer_v1.TransferOptions(
        overwrite_when=Overwrite[spec.get("overwrite_when") or "DIFFERENT"],
        delete_objects_from_source_after_transfer=bool(spec.get("delete_from_source")),
        delete_objects_unique_in_sink=bool(spec.get("delete_unique_in_sink")),
    )
    built = storage_transfer_v1.TransferSpec(
        gcs_data_sink=storage_transfer_v1.GcsData(bucket_name=sink["bucket"], path=sink.get("path") or ""),
        transfer_options=options,
    )
    if spec.get("max_age_seconds"):
        built.object_conditions = storage_transfer_v1.ObjectConditions(
            max_time_elapsed_since_last_modification=duration_pb2.Duration(seconds=int(spec["max_age_seconds"])))
    kind, secret = source["type"], secret_name(source.get("credentials_secret"), number)
    if kind == "s3":
        built.aws_s3_data_source = storage_transfer_v1.AwsS3Data(
            bucket_name=source["bucket"], path=source.get("path") or "", role_arn=source.get("role_arn") or "",
            credentials_secret=secret)
    elif kind == "azure_blob":
        built.azure_blob_storage_data_source = storage_transfer_v1.AzureBlobStorageData(
            storage_account=source["storage_account"], container=source["bucket"], path=source.get("path") or "",
            credentials_secret=secret)
    elif kind == "gcs":
        built.gcs_data_source = storage_transfer_v1.GcsData(bucket_name=source["bucket"],
                                                            path=source.get("path") or "")
    else:
        raise PermanentError(f"{resource.address}: unknown source type {kind!r}")
    return built


def build_schedule(cron: str, now: dt.datetime) -> storage_transfer_v1.Schedule:
    """The job's schedule: its first run is the cron's first tick at or after ``now`` (UTC)."""
    parsed = rules.parse_schedule(cron)
    if not isinstance(parsed, rules.TransferSchedule):
        raise PermanentError(f"schedule {cron!r}: {parsed}")
    now = now.astimezone(dt.UTC)
    first = None
    for day in (now.date(), now.date() + dt.timedelta(days=1)):
        for hour, minute in parsed.times_of_day():
            tick = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC)
            if tick >= now:
                first = tick
                break
        if first:
            break
    assert first is not None  # every schedule runs at least once a day
    return storage_transfer_v1.Schedule(
        schedule_start_date=date_pb2.Date(year=first.year, month=first.month, day=first.day),
        start_time_of_day=timeofday_pb2.TimeOfDay(hours=first.hour, minutes=first.minute),
        repeat_interval=duration_pb2.Duration(seconds=parsed.repeat_seconds),
    )


def build_notification(resource: Resource, project: str) -> storage_transfer_v1.NotificationConfig:
    return storage_transfer_v1.NotificationConfig(
        pubsub_topic=topic_path(resource.spec["notification_topic"], project), event_types=EVENT_TYPES,
        payload_format=PayloadFormat.JSON)


def build_job(resource: Resource, project: str, number: str, now: dt.datetime) -> storage_transfer_v1.TransferJob:
    """The whole job for ``create_transfer_job`` (its name chosen here, see the module docstring)."""
    platform = re.sub(r"[^A-Za-z0-9-._~]", "-", resource.labels.get(PLATFORM_KEY, "platform"))
    return storage_transfer_v1.TransferJob(
        name=f"transferJobs/headwater-{platform}-{resource.name}-{now.astimezone(dt.UTC):%Y%m%d%H%M%S}",
        project_id=project,
        description=description(resource),
        transfer_spec=build_transfer_spec(resource, number),
        schedule=build_schedule(resource.spec["schedule"], now),
        notification_config=build_notification(resource, project),
        status=Status.ENABLED if resource.spec.get("enabled", True) else Status.DISABLED,
    )


def update_mask(fields: Iterable[str]) -> list[str]:
    """The ``update_transfer_job_field_mask`` paths of changed spec keys (or "labels"), sorted."""
    return sorted({FIELD_MASKS[f] for f in fields if f in FIELD_MASKS})


def build_update(resource: Resource, fields: Sequence[str], project: str,
                 number: str) -> tuple[storage_transfer_v1.TransferJob, list[str]]:
    """The partial job and mask of an update (schedule is not updatable: the plan replaces)."""
    paths = update_mask(fields)
    job = storage_transfer_v1.TransferJob()
    if "transfer_spec" in paths:
        job.transfer_spec = build_transfer_spec(resource, number)
    if "notification_config" in paths:
        job.notification_config = build_notification(resource, project)
    if "status" in paths:
        job.status = Status.ENABLED if resource.spec.get("enabled", True) else Status.DISABLED
    if "description" in paths:
        job.description = description(resource)
    return job, paths


def labels_of(job: storage_transfer_v1.TransferJob) -> dict[str, str] | None:
    """The labels (and name) a managed job's description holds, or None if it is not ours."""
    try:
        data = json.loads(job.description or "")
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get(MANAGED_BY_KEY) != MANAGED_BY_VALUE or not data.get(NAME_KEY):
        return None
    return {str(k): str(v) for k, v in data.items()}


def _secret_id(name: str) -> str | None:
    if not name:
        return None
    match = _SECRET.match(name)
    return match.group(1) if match else name


def job_spec(job: storage_transfer_v1.TransferJob, project: str, grants: bool) -> dict[str, Any]:
    """The canonical spec of a live job (`reconciler.resources.SPEC_SHAPES`)."""
    tspec = job.transfer_spec
    source: dict[str, Any] = {"type": None, "bucket": None, "path": "", "storage_account": None, "role_arn": None,
                              "credentials_secret": None}
    if "aws_s3_data_source" in tspec:
        s3 = tspec.aws_s3_data_source
        source.update(type="s3", bucket=s3.bucket_name, path=s3.path, role_arn=s3.role_arn or None,
                      credentials_secret=_secret_id(s3.credentials_secret))
    elif "azure_blob_storage_data_source" in tspec:
        az = tspec.azure_blob_storage_data_source
        source.update(type="azure_blob", bucket=az.container, path=az.path, storage_account=az.storage_account,
                      credentials_secret=_secret_id(az.credentials_secret))
    elif "gcs_data_source" in tspec:
        source.update(type="gcs", bucket=tspec.gcs_data_source.bucket_name, path=tspec.gcs_data_source.path)
    options = tspec.transfer_options
    overwrite = options.overwrite_when
    if overwrite == Overwrite.OVERWRITE_WHEN_UNSPECIFIED:  # the legacy boolean decides
        overwrite = Overwrite.ALWAYS if options.overwrite_objects_already_existing_in_sink else Overwrite.DIFFERENT
    conditions = tspec.object_conditions
    max_age = conditions.max_time_elapsed_since_last_modification
    schedule = job.schedule
    notification = job.notification_config
    topic = notification.pubsub_topic or None
    if topic and topic.startswith(f"projects/{project}/topics/"):
        topic = topic.rsplit("/", 1)[-1]
    return {
        "source": source,
        "sink": {"bucket": tspec.gcs_data_sink.bucket_name, "path": tspec.gcs_data_sink.path},
        "schedule": rules.schedule_from_api(schedule.start_time_of_day.hours, schedule.start_time_of_day.minutes,
                                            int(schedule.repeat_interval.total_seconds()) if "repeat_interval"
                                            in schedule else 0),
        "overwrite_when": Overwrite(overwrite).name,
        "delete_from_source": options.delete_objects_from_source_after_transfer,
        "delete_unique_in_sink": options.delete_objects_unique_in_sink,
        "max_age_seconds": int(max_age.total_seconds()) or None if "max_time_elapsed_since_last_modification"
        in conditions else None,
        "notification_topic": topic,
        "enabled": job.status == Status.ENABLED,
        "service_agent_grants": grants,
    }


# --------------------------------------------------------------------------- IAM (pure)


def bucket_policy_has(bindings: Iterable[Mapping[str, Any]], member: str) -> bool:
    """Whether unconditional bindings give ``member`` every role of `SINK_ROLES`."""
    held = {b["role"] for b in bindings if not b.get("condition") and member in set(b.get("members") or ())}
    return set(SINK_ROLES) <= held


def bucket_policy_grant(bindings: list[dict[str, Any]], member: str) -> bool:
    """Add ``member`` to an unconditional binding of each `SINK_ROLES` role; whether anything changed."""
    changed = False
    for role in SINK_ROLES:
        plain = [b for b in bindings if b["role"] == role and not b.get("condition")]
        if any(member in set(b.get("members") or ()) for b in plain):
            continue
        if plain:
            plain[0]["members"] = set(plain[0].get("members") or ()) | {member}
        else:
            bindings.append({"role": role, "members": {member}})
        changed = True
    return changed


def topic_policy_has(policy: Any, member: str) -> bool:
    return any(b.role == TOPIC_ROLE and not b.condition.expression and member in b.members for b in policy.bindings)


def topic_policy_grant(policy: Any, member: str) -> bool:
    if topic_policy_has(policy, member):
        return False
    plain = [b for b in policy.bindings if b.role == TOPIC_ROLE and not b.condition.expression]
    if plain:
        plain[0].members.append(member)
    else:
        policy.bindings.add(role=TOPIC_ROLE, members=[member])
    return True


# --------------------------------------------------------------------------- the provider


class StorageTransferProvider:
    """Storage Transfer jobs of one project. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.STORAGE_TRANSFER_JOB,)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, *, transfer_client: Any = None, storage_client: Any = None,
                 publisher_client: Any = None, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.project = project
        self._transfer_client = transfer_client
        self._storage_client = storage_client
        self._publisher_client = publisher_client
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._agent: str | None = None
        self._lock = threading.Lock()
        self._transfer_calls = CallCounter("storagetransfer")
        self._storage_calls = CallCounter("storage")
        self._pubsub_calls = CallCounter("pubsub")

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        _check_kind(kind)
        try:
            jobs = self._list_jobs()
        except ServiceDisabled as exc:
            # A platform without cloud_transfer sources need not enable Storage Transfer. With the
            # API off no job of ours can exist: none is seen, nothing is deleted; a declared one
            # plans a create, whose apply fails with this same reason.
            log.warning("Storage Transfer API is not enabled: no transfer jobs observed (%s)", exc)
            return []
        newest: dict[str, tuple[storage_transfer_v1.TransferJob, dict[str, str]]] = {}
        for job in jobs:
            labels = labels_of(job)
            if labels is None:
                continue
            name = labels.pop(NAME_KEY)
            if name in newest:
                log.warning("two live Storage Transfer jobs for %s: %s and %s (the newest counts; delete removes "
                            "both)", name, newest[name][0].name, job.name)
                if _created(job) <= _created(newest[name][0]):
                    continue
            newest[name] = (job, labels)
        if not newest:
            return []
        member = self._member()
        buckets: dict[str, bool] = {}
        topics: dict[str, bool] = {}
        found = []
        for name, (job, labels) in sorted(newest.items()):
            bucket = job.transfer_spec.gcs_data_sink.bucket_name
            topic = job.notification_config.pubsub_topic
            if bucket not in buckets:
                buckets[bucket] = bucket_policy_has(self._bucket_policy(bucket).bindings, member)
            if topic and topic not in topics:
                topics[topic] = topic_policy_has(self._topic_policy(topic), member)
            grants = buckets[bucket] and bool(topic) and topics[topic]
            found.append(Resource(Kind.STORAGE_TRANSFER_JOB, name, job_spec(job, self.project, grants), labels))
        return found

    def create(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        if self._jobs_of(resource.name):
            raise AlreadyExists(f"storagetransfer.create_transfer_job {resource.name}: a live job exists")
        if resource.spec.get("service_agent_grants", True):
            self._grant(resource)
        job = build_job(resource, self.project, self._project_number(), self._clock())
        request = storage_transfer_v1.CreateTransferJobRequest(transfer_job=job)
        try:
            self._transfer_rpc("create_transfer_job", job.name,
                               lambda: self._transfer().create_transfer_job(request=request, **_OPTS))
        except AlreadyExists:
            pass  # our own earlier attempt of this very request (the name is fixed per create)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        _check_kind(resource.kind)
        if "schedule" in fields:
            raise PermanentError(f"{resource.address}: Storage Transfer cannot change a job's schedule in place")
        if "service_agent_grants" in fields and resource.spec.get("service_agent_grants"):
            self._grant(resource)
        job, paths = build_update(resource, fields, self.project, self._project_number())
        if not paths:
            return
        jobs = self._jobs_of(resource.name)
        if not jobs:
            raise NotFound(f"storagetransfer.update_transfer_job {resource.name}: no live job")
        for live in jobs:
            request = storage_transfer_v1.UpdateTransferJobRequest(
                job_name=live.name, project_id=self.project, transfer_job=job,
                update_transfer_job_field_mask=field_mask_pb2.FieldMask(paths=paths))
            self._transfer_rpc("update_transfer_job", live.name,
                               lambda request=request: self._transfer().update_transfer_job(request=request, **_OPTS))

    def delete(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        for live in self._jobs_of(resource.name):
            request = storage_transfer_v1.DeleteTransferJobRequest(job_name=live.name, project_id=self.project)
            try:
                self._transfer_rpc("delete_transfer_job", live.name,
                                   lambda request=request: self._transfer().delete_transfer_job(request=request,
                                                                                                **_OPTS))
            except NotFound:
                pass  # gone already

    def run_now(self, name: str) -> list[str]:
        """Start a run of the resource's job now (``transferJobs.run``); the job names started."""
        started = []
        for live in self._jobs_of(name):
            request = storage_transfer_v1.RunTransferJobRequest(job_name=live.name, project_id=self.project)
            self._transfer_rpc("run_transfer_job", live.name,
                               lambda request=request: self._transfer().run_transfer_job(request=request, **_OPTS))
            started.append(live.name)
        return started

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        return {**self._transfer_calls.snapshot(), **self._storage_calls.snapshot(), **self._pubsub_calls.snapshot()}

    # -- jobs --

    def _list_jobs(self) -> list[storage_transfer_v1.TransferJob]:
        flt = json.dumps({"projectId": self.project, "jobStatuses": ["ENABLED", "DISABLED"]}, separators=(",", ":"))

        def attempt() -> list[storage_transfer_v1.TransferJob]:
            request = storage_transfer_v1.ListTransferJobsRequest(filter=flt, page_size=LIST_PAGE_SIZE)
            pager = self._transfer().list_transfer_jobs(request=request, **_OPTS)
            jobs: list[storage_transfer_v1.TransferJob] = []
            for page in pager.pages:
                self._transfer_calls.count("list_transfer_jobs")
                jobs.extend(page.transfer_jobs)
            return jobs

        return call(attempt, "storagetransfer.list_transfer_jobs")

    def _jobs_of(self, name: str) -> list[storage_transfer_v1.TransferJob]:
        return [job for job in self._list_jobs() if (labels_of(job) or {}).get(NAME_KEY) == name]

    # -- the service agent and its grants --

    def _agent_email(self) -> str:
        with self._lock:
            cached = self._agent
        if cached is None:
            request = storage_transfer_v1.GetGoogleServiceAccountRequest(project_id=self.project)
            account = self._transfer_rpc(
                "get_google_service_account", self.project,
                lambda: self._transfer().get_google_service_account(request=request, **_OPTS))
            cached = account.account_email
            with self._lock:
                self._agent = cached
        return cached

    def _member(self) -> str:
        return f"serviceAccount:{self._agent_email()}"

    def _project_number(self) -> str:
        return project_number(self._agent_email())

    def _grant(self, resource: Resource) -> None:
        """The sink bucket's and the topic's roles for the service agent, read-modify-write."""
        member = self._member()
        self._grant_bucket(resource.spec["sink"]["bucket"], member)
        self._grant_topic(topic_path(resource.spec["notification_topic"], self.project), member)

    def _bucket_policy(self, bucket: str) -> Any:
        return self._storage_rpc("get_bucket_iam_policy", bucket, lambda: self._storage().bucket(bucket).get_iam_policy(
            requested_policy_version=POLICY_VERSION, **_OPTS))

    def _grant_bucket(self, bucket: str, member: str) -> None:
        def attempt() -> None:
            self._storage_calls.count("get_bucket_iam_policy")
            handle = self._storage().bucket(bucket)
            policy = handle.get_iam_policy(requested_policy_version=POLICY_VERSION, **_OPTS)
            bindings = list(policy.bindings)
            if not bucket_policy_grant(bindings, member):
                return
            policy.bindings = bindings
            self._storage_calls.count("set_bucket_iam_policy")
            try:
                handle.set_iam_policy(policy, **_OPTS)
            except (gexc.PreconditionFailed, gexc.Conflict) as exc:  # the etag is stale: read again
                raise gexc.Aborted(f"the IAM policy of bucket {bucket} changed while it was being updated") from exc

        call(attempt, f"storage.set_bucket_iam_policy {bucket}")

    def _topic_policy(self, topic: str) -> Any:
        request = {"resource": topic, "options": {"requested_policy_version": POLICY_VERSION}}
        return self._pubsub_rpc("get_iam_policy", topic,
                                lambda: self._publisher().get_iam_policy(request=request, **_OPTS))

    def _grant_topic(self, topic: str, member: str) -> None:
        def attempt() -> None:
            self._pubsub_calls.count("get_iam_policy")
            policy = self._publisher().get_iam_policy(
                request={"resource": topic, "options": {"requested_policy_version": POLICY_VERSION}}, **_OPTS)
            if not topic_policy_grant(policy, member):
                return
            if any(b.condition.expression for b in policy.bindings):
                policy.version = POLICY_VERSION
            self._pubsub_calls.count("set_iam_policy")
            try:
                self._publisher().set_iam_policy(request={"resource": topic, "policy": policy}, **_OPTS)
            except (gexc.Conflict, gexc.Aborted) as exc:
                raise gexc.Aborted(f"the IAM policy of {topic} changed while it was being updated") from exc

        call(attempt, f"pubsub.set_iam_policy {topic}")

    # -- plumbing --

    def _transfer(self) -> Any:
        with self._lock:
            if self._transfer_client is None:
                self._transfer_client = storage_transfer_v1.StorageTransferServiceClient()
            return self._transfer_client

    def _storage(self) -> Any:
        with self._lock:
            if self._storage_client is None:
                self._storage_client = storage.Client(project=self.project)
            return self._storage_client

    def _publisher(self) -> Any:
        with self._lock:
            if self._publisher_client is None:
                self._publisher_client = pubsub_v1.PublisherClient()
            return self._publisher_client

    def _transfer_rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._transfer_calls.rpc(method, target, fn)

    def _storage_rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._storage_calls.rpc(method, target, fn)

    def _pubsub_rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._pubsub_calls.rpc(method, target, fn)


def _created(job: storage_transfer_v1.TransferJob) -> dt.datetime:
    return job.creation_time or dt.datetime.min.replace(tzinfo=dt.UTC)


def _check_kind(kind: Kind) -> None:
    if Kind(kind) != Kind.STORAGE_TRANSFER_JOB:
        raise PermanentError(f"storagetransfer: unsupported kind {kind!r}")
