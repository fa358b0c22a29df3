"""Local stand-in for Storage Transfer: ``storage_transfer_job`` on this machine.

EMULATOR DEPARTURE, all of it: Storage Transfer has no emulator. When headwater targets the
emulators (``STORAGE_EMULATOR_HOST`` set), a ``storage_transfer_job`` is realized by a *transfer
process* (``python -m providers.local_transfer <record>``) that does what a Storage Transfer
run does, at each tick of the job's schedule (UTC, the same cron) and at once on SIGUSR1
(`LocalTransferProvider.run_now`: the tests and the demo; Storage Transfer's ``transferJobs.run``):

1. list the source: an S3 bucket through boto3 at ``$AWS_ENDPOINT_URL_S3`` (``headwater local up``
   starts moto's S3 server on a loopback port and sets it; `reconciler.local`), or a bucket of the
   Storage emulator (``gcs``). ``azure_blob`` has no local stand-in: create refuses it;
2. keep the objects ``max_age_seconds`` admits (modified more recently than that);
3. copy each object whose name (under the sink path, the source path taken off) is missing from
   the sink, or - ``overwrite_when: DIFFERENT`` - present with other content (MD5, else size),
   into the landing prefix on the Storage emulator; ``NEVER`` copies only missing names;
4. ``delete_from_source``: delete each source object copied or found identical; or
   ``delete_unique_in_sink``: delete sink objects under the sink path with no source object;
5. publish the completion notification Storage Transfer publishes (``notification_config``) to the
   topic on the Pub/Sub emulator: attributes ``eventType`` (``TRANSFER_OPERATION_SUCCESS``, or
   ``_FAILED`` when the run raised), ``payloadFormat: JSON``, ``projectId``, ``transferJobName``,
   ``transferOperationName``; data the ``TransferOperation`` in proto3 JSON (name, projectId,
   transferJobName, transferSpec, startTime, endTime, status, counters).

Everything downstream - the landing bucket's notification, the streaming ``gcs_to_bigquery`` job,
Bronze, Silver - is the GCP path.

Departures besides "a process, not a service": the first run is at the first tick after create,
as on GCP, but a run can be started at once with SIGUSR1; credentials: with ``credentials_secret``
the process reads the secret's JSON (``access_key_id``, ``secret_access_key``) from the local
secrets directory (`providers.secretmanager.LocalSecrets`) at each run, never into its record,
log or command line; with ``role_arn`` nothing is assumed (moto accepts any key): the process
uses ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY`` or a placeholder. Content comparison is by
MD5 (S3's ETag of a single-part upload) or size, where Storage Transfer also uses checksums it
keeps. ``service_agent_grants`` is recorded as declared: the emulators have no IAM. Runs never
overlap (one process per job runs them one after the other); a tick that comes during a run is
taken after it, once.

Like the notification watchers (`providers.local_notifications`), transfer processes outlive the
CLI call that started them, tracked in ``<state_dir>/transfers/<project>/``: ``<name>.json`` (the
record: PID and start time, spec, labels), ``<name>.status.json`` (runs, the last operation's
counters) and ``<name>.log``. ``observe`` returns the jobs whose process runs; `delete` stops one;
`stop_all` stops them all (``headwater local down``). ``HEADWATER_LOCAL_JOBS=record`` (or
``run_jobs=False``) tracks jobs without processes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from providers.errors import AlreadyExists, PermanentError
from providers.localprocess import (
    endpoints_in_effect,
    is_alive,
    spawn,
    stale_endpoints,
    stop_group,
    write_json_atomic,
)
from providers.localrunner import child_env, next_tick
from providers.secretmanager import LocalSecrets, local_secrets_dir
from reconciler.resources import PLATFORM_KEY, Kind, Resource

log = logging.getLogger(__name__)

TRANSFERS_DIR = "transfers"
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {Kind.STORAGE_TRANSFER_JOB: frozenset({"schedule"})}  # as on GCP
S3_ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"
PLACEHOLDER_KEY = "headwater-local"  # moto takes any key; nothing is assumed for a role_arn
PUBLISH_TIMEOUT_S = 30.0
SUCCESS, FAILED = "TRANSFER_OPERATION_SUCCESS", "TRANSFER_OPERATION_FAILED"


@dataclass
class TransferRecord:
    """What ``<name>.json`` holds."""

    name: str
    project: str
    job_name: str  # transferJobs/headwater-<platform>-<name>, as the completion messages name it
    pid: int
    process_start: str
    spec: dict[str, Any]
    labels: dict[str, str]
    log: str
    started_at: str
    secrets_dir: str = ""
    recorded_only: bool = False
    env: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, str] | None = None  # the emulators in effect at launch (None: an older record)


def transfers_dir(state_dir: Path, project: str) -> Path:
    return Path(state_dir) / TRANSFERS_DIR / project


def _running(record: TransferRecord) -> bool:
    return is_alive(record.pid, record.process_start, recorded_only=record.recorded_only)


def load_records(state_dir: Path) -> list[TransferRecord]:
    records = []
    for path in sorted((Path(state_dir) / TRANSFERS_DIR).glob("*/*.json")):
        if path.name.endswith(".status.json"):
            continue
        try:
            records.append(TransferRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            log.warning("ignoring unreadable local transfer record %s", path)
    return records


def _remove_files(state_dir: Path, record: TransferRecord) -> None:
    for suffix in (".json", ".status.json"):
        (transfers_dir(state_dir, record.project) / f"{record.name}{suffix}").unlink(missing_ok=True)


def _stop(record: TransferRecord) -> None:
    if not record.recorded_only and _running(record):
        stop_group(record.pid, record.process_start, graceful=False)


def stop_all(state_dir: Path, project: str | None = None) -> list[str]:
    """Stop every transfer process recorded in ``state_dir`` (of ``project``, or all); the names stopped."""
    stopped = []
    for record in load_records(state_dir):
        if project is not None and record.project != project:
            continue
        if _running(record):
            _stop(record)
            stopped.append(record.name)
        _remove_files(state_dir, record)
    return stopped


def transfer_status(state_dir: Path, project: str, name: str) -> dict[str, Any]:
    """A job's runs: ``{"runs": n, "finished": n, "running": bool, "last": {operation} | None}``."""
    try:
        return json.loads((transfers_dir(state_dir, project) / f"{name}.status.json").read_text())
    except (OSError, ValueError):
        return {"runs": 0, "finished": 0, "running": False, "last": None}


# --------------------------------------------------------------------------- the provider


class LocalTransferProvider:
    """``storage_transfer_job`` on the emulators, as transfer processes. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.STORAGE_TRANSFER_JOB,)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, state_dir: Path | str, *, python: str = sys.executable,
                 run_jobs: bool | None = None) -> None:
        self.project = project
        self.state_dir = Path(state_dir)
        self.python = python
        if run_jobs is None:
            run_jobs = os.environ.get("HEADWATER_LOCAL_JOBS", "run") != "record"
        self.run_jobs = run_jobs
        self._lock = threading.Lock()

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        _check_kind(kind)
        live = []
        for record in load_records(self.state_dir):
            if record.project != self.project:
                continue
            stale = stale_endpoints(record.endpoints)
            if _running(record) and stale is None:
                live.append(Resource(Kind.STORAGE_TRANSFER_JOB, record.name, record.spec, record.labels))
            elif stale is not None:
                # As for the other stand-ins: a process bound to emulators that are gone copies
                # nothing anyone reads, so it is missing (and relaunched), not running.
                log.warning("local transfer %s is missing: %s", record.name, stale)
            else:
                log.warning("local transfer %s has ended; its log: %s", record.name, record.log)
        return live

    def create(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        with self._lock:
            existing = self._record(resource.name)
            if existing is not None and _running(existing) and stale_endpoints(existing.endpoints) is None:
                raise AlreadyExists(f"local transfer {resource.name} is already running (pid {existing.pid})")
            if existing is not None:
                _stop(existing)  # copying through emulators that are gone
            self._check(resource)
            self._launch(resource)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        _check_kind(resource.kind)
        if "schedule" in fields:
            raise PermanentError(f"{resource.address}: a transfer job's schedule cannot change in place")
        with self._lock:
            self._check(resource)  # before anything stops: a bad update leaves the old job running
            existing = self._record(resource.name)
            if existing is not None:
                _stop(existing)
            self._launch(resource)

    def delete(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        with self._lock:
            record = self._record(resource.name)
            if record is None:
                return
            _stop(record)
            _remove_files(self.state_dir, record)

    # -- runs (Storage Transfer's transferJobs.run; the tests and the demo) --

    def run_now(self, name: str) -> int:
        """Start a run of ``name`` now; the number of runs started before it (for `wait_for_run`)."""
        record = self._record(name)
        if record is None or record.recorded_only or not _running(record):
            raise PermanentError(f"local transfer {name} is not running")
        status_file = transfers_dir(self.state_dir, self.project) / f"{name}.status.json"
        deadline = time.monotonic() + 10.0
        while not status_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # until then SIGUSR1 would kill the process: its handler is not set yet
        before = self.status(name)["runs"]
        os.kill(record.pid, signal.SIGUSR1)
        return before

    def wait_for_run(self, name: str, after: int, timeout: float) -> dict[str, Any]:
        """Until run ``after + 1`` of ``name`` has finished; its status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name)
            if status["finished"] > after:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"local transfer {name}: run {after + 1} did not finish within {timeout:.0f} s")
            time.sleep(0.1)

    def status(self, name: str) -> dict[str, Any]:
        return transfer_status(self.state_dir, self.project, name)

    def record(self, name: str) -> TransferRecord | None:
        return self._record(name)

    # -- plumbing --

    def _check(self, resource: Resource) -> None:
        source = resource.spec["source"]
        if source["type"] == "azure_blob":
            raise PermanentError(f"{resource.address}: azure_blob sources have no local stand-in (there is no local "
                                 "Azure Blob Storage here); it runs on Storage Transfer only")
        if source.get("credentials_secret") and self.run_jobs:
            secrets = LocalSecrets.for_state_dir(self.state_dir)
            if secrets.missing([source["credentials_secret"]]):
                raise PermanentError(f"{resource.address}: secret {source['credentials_secret']!r} is missing: "
                                     f"create the file {secrets.path(source['credentials_secret'])}")

    def _record(self, name: str) -> TransferRecord | None:
        try:
            record = TransferRecord(**json.loads((transfers_dir(self.state_dir, self.project) / f"{name}.json")
                                                 .read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return record if record.project == self.project else None

    def _launch(self, resource: Resource) -> None:
        directory = transfers_dir(self.state_dir, self.project)
        directory.mkdir(parents=True, exist_ok=True)
        record_path, log_path = directory / f"{resource.name}.json", directory / f"{resource.name}.log"
        (directory / f"{resource.name}.status.json").unlink(missing_ok=True)
        platform = resource.labels.get(PLATFORM_KEY, "platform")
        record = TransferRecord(
            name=resource.name, project=self.project, job_name=f"transferJobs/headwater-{platform}-{resource.name}",
            pid=0, process_start="", spec=json.loads(json.dumps(dict(resource.spec))), labels=dict(resource.labels),
            log=str(log_path), started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            secrets_dir=str(local_secrets_dir(self.state_dir).resolve()), recorded_only=not self.run_jobs,
            endpoints=endpoints_in_effect(),
        )
        write_json_atomic(record_path, asdict(record))
        if not self.run_jobs:
            return
        argv = [self.python, "-m", "providers.local_transfer", str(record_path.resolve())]
        record.pid, record.process_start = spawn(argv, child_env(self.project), directory, log_path,
                                                 f"--- {record.started_at} launch {' '.join(argv)}")
        write_json_atomic(record_path, asdict(record))


def _check_kind(kind: Kind) -> None:
    if Kind(kind) != Kind.STORAGE_TRANSFER_JOB:
        raise PermanentError(f"local_transfer: unsupported kind {kind!r}")


# --------------------------------------------------------------------------- one run


@dataclass
class SourceObject:
    key: str  # the name in the source
    size: int
    md5: str | None  # hex, when known (an S3 ETag of a single-part upload is its MD5)
    modified: dt.datetime


def local_s3(key_id: str | None = None, secret: str | None = None) -> Any:
    """A boto3 S3 client for the local S3 server (``$AWS_ENDPOINT_URL_S3``: moto, `reconciler.local`);
    the demo and the tests put the source's objects there with it."""
    import boto3

    endpoint = os.environ.get(S3_ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        raise PermanentError(f"no local S3 endpoint: set {S3_ENDPOINT_ENV} (headwater local up does)")
    return boto3.client("s3", endpoint_url=endpoint,
                        aws_access_key_id=key_id or os.environ.get("AWS_ACCESS_KEY_ID") or PLACEHOLDER_KEY,
                        aws_secret_access_key=secret or os.environ.get("AWS_SECRET_ACCESS_KEY") or PLACEHOLDER_KEY,
                        region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")


def _s3_client(secrets_dir: str, source: Mapping[str, Any]) -> Any:
    if source.get("credentials_secret"):  # read at each run, as Storage Transfer reads Secret Manager
        doc = json.loads(LocalSecrets(secrets_dir).value(source["credentials_secret"]))
        return local_s3(doc["access_key_id"], doc["secret_access_key"])
    return local_s3()


def _list_s3(client: Any, bucket: str, prefix: str) -> list[SourceObject]:
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            etag = item.get("ETag", "").strip('"')
            found.append(SourceObject(item["Key"], int(item["Size"]), None if "-" in etag else etag,
                                      item["LastModified"].astimezone(dt.UTC)))
    return found


def _md5_hex(blob: Any) -> str | None:
    return base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None


def _list_gcs(client: Any, bucket: str, prefix: str) -> list[SourceObject]:
    return [SourceObject(b.name, int(b.size or 0), _md5_hex(b), (b.updated or b.time_created).astimezone(dt.UTC))
            for b in client.list_blobs(bucket, prefix=prefix or None)]


def transfer_once(record: TransferRecord, storage_client: Any, publisher: Any, *, s3_client: Any = None,
                  now: dt.datetime | None = None) -> dict[str, Any]:
    """One run of the job (the module docstring's steps); the ``TransferOperation`` it published."""
    spec = record.spec
    source, sink = spec["source"], spec["sink"]
    started = now or dt.datetime.now(dt.UTC)
    counters = {"objectsFoundFromSource": 0, "bytesFoundFromSource": 0, "objectsCopiedToSink": 0,
                "bytesCopiedToSink": 0, "objectsFromSourceSkippedBySync": 0, "objectsDeletedFromSource": 0,
                "objectsDeletedFromSink": 0}
    operation: dict[str, Any] = {
        "name": f"transferOperations/{record.job_name.removeprefix('transferJobs/')}-{started:%Y%m%d%H%M%S%f}",
        "projectId": record.project, "transferJobName": record.job_name,
        "transferSpec": _transfer_spec_json(spec), "startTime": _timestamp(started), "counters": counters,
    }
    event = SUCCESS
    try:
        prefix = source.get("path") or ""
        if source["type"] == "s3":
            s3 = s3_client or _s3_client(record.secrets_dir, source)
            objects = _list_s3(s3, source["bucket"], prefix)
            read = lambda key: s3.get_object(Bucket=source["bucket"], Key=key)["Body"].read()  # noqa: E731
            delete = lambda key: s3.delete_object(Bucket=source["bucket"], Key=key)  # noqa: E731
        elif source["type"] == "gcs":
            objects = _list_gcs(storage_client, source["bucket"], prefix)
            read = lambda key: storage_client.bucket(source["bucket"]).blob(key).download_as_bytes()  # noqa: E731
            delete = lambda key: storage_client.bucket(source["bucket"]).delete_blob(key)  # noqa: E731
        else:
            raise PermanentError(f"{source['type']} sources have no local stand-in")
        objects = [o for o in objects if not o.key.endswith("/")]  # folder placeholders are not objects
        if spec.get("max_age_seconds"):
            objects = [o for o in objects if (started - o.modified).total_seconds() < spec["max_age_seconds"]]
        sink_bucket = storage_client.bucket(sink["bucket"])
        sink_path = sink.get("path") or ""
        in_sink = {b.name: b for b in storage_client.list_blobs(sink["bucket"], prefix=sink_path or None)}
        wanted = set()
        for obj in objects:
            counters["objectsFoundFromSource"] += 1
            counters["bytesFoundFromSource"] += obj.size
            target = sink_path + obj.key[len(prefix):]
            wanted.add(target)
            there = in_sink.get(target)
            same = there is not None and (_md5_hex(there) == obj.md5 if obj.md5 else int(there.size or 0) == obj.size)
            mode = spec.get("overwrite_when") or "DIFFERENT"
            if there is not None and (mode == "NEVER" or (mode == "DIFFERENT" and same)):
                counters["objectsFromSourceSkippedBySync"] += 1
            else:
                data = read(obj.key)
                sink_bucket.blob(target).upload_from_string(data)
                counters["objectsCopiedToSink"] += 1
                counters["bytesCopiedToSink"] += len(data)
                same = True
            if spec.get("delete_from_source") and same:
                delete(obj.key)
                counters["objectsDeletedFromSource"] += 1
        if spec.get("delete_unique_in_sink"):
            for name in sorted(set(in_sink) - wanted):
                if not name.endswith("/"):
                    sink_bucket.delete_blob(name)
                    counters["objectsDeletedFromSink"] += 1
        operation["status"] = "SUCCESS"
    except Exception as exc:  # noqa: BLE001 - a failed run is reported, as Storage Transfer does
        log.warning("transfer run failed: %s", exc)
        event = FAILED
        operation["status"] = "FAILED"
        operation["errorBreakdowns"] = [{"errorCode": "UNKNOWN", "errorCount": "1",
                                         "errorLogEntries": [{"url": "", "errorDetails": [str(exc)[:500]]}]}]
    operation["endTime"] = _timestamp(dt.datetime.now(dt.UTC))
    operation["counters"] = {k: str(v) for k, v in counters.items()}  # int64 is a string in proto3 JSON
    topic = spec.get("notification_topic")
    if topic:
        path = topic if topic.startswith("projects/") else f"projects/{record.project}/topics/{topic}"
        publisher.publish(path, json.dumps(operation, sort_keys=True).encode(), eventType=event,
                          payloadFormat="JSON", projectId=record.project, transferJobName=record.job_name,
                          transferOperationName=operation["name"]).result(timeout=PUBLISH_TIMEOUT_S)
    return operation


def _timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _transfer_spec_json(spec: Mapping[str, Any]) -> dict[str, Any]:
    source, sink = spec["source"], spec["sink"]
    out: dict[str, Any] = {"gcsDataSink": {"bucketName": sink["bucket"], "path": sink.get("path") or ""},
                           "transferOptions": {"overwriteWhen": spec.get("overwrite_when") or "DIFFERENT",
                                               "deleteObjectsFromSourceAfterTransfer": bool(spec.get("delete_from_source")),
                                               "deleteObjectsUniqueInSink": bool(spec.get("delete_unique_in_sink"))}}
    if source["type"] == "s3":
        out["awsS3DataSource"] = {"bucketName": source["bucket"], "path": source.get("path") or "",
                                  **({"roleArn": source["role_arn"]} if source.get("role_arn") else {})}
    elif source["type"] == "gcs":
        out["gcsDataSource"] = {"bucketName": source["bucket"], "path": source.get("path") or ""}
    if spec.get("max_age_seconds"):
        out["objectConditions"] = {"maxTimeElapsedSinceLastModification": f"{int(spec['max_age_seconds'])}s"}
    return out


# --------------------------------------------------------------------------- the process


def _serve(record_path: Path) -> int:
    """A transfer process: a run at each tick of the schedule and on SIGUSR1, until SIGTERM."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import pubsub_v1, storage

    record = TransferRecord(**json.loads(record_path.read_text()))
    status_path = record_path.with_name(f"{record.name}.status.json")
    status: dict[str, Any] = {"runs": 0, "finished": 0, "running": False, "last": None, "next_run_at": None}
    wake, stopping = threading.Event(), threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: wake.set())
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (stopping.set(), wake.set()))
    storage_client = storage.Client(project=record.project, credentials=AnonymousCredentials())
    publisher = pubsub_v1.PublisherClient()
    schedule = record.spec["schedule"]
    while not stopping.is_set():
        tick = next_tick(schedule, dt.datetime.now(dt.UTC))
        status["next_run_at"] = tick.isoformat(timespec="seconds")
        write_json_atomic(status_path, status)
        while not wake.is_set() and dt.datetime.now(dt.UTC) < tick:  # the tick, or SIGUSR1, or SIGTERM
            wake.wait(timeout=max(0.01, (tick - dt.datetime.now(dt.UTC)).total_seconds()))
        if stopping.is_set():
            break
        wake.clear()
        status.update(runs=status["runs"] + 1, running=True)
        write_json_atomic(status_path, status)
        print(f"--- {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} run {status['runs']}", flush=True)
        try:
            operation = transfer_once(record, storage_client, publisher)
            status["last"] = {k: operation.get(k) for k in ("name", "status", "startTime", "endTime", "counters")}
            print(f"--- run {status['runs']}: {operation.get('status')} {json.dumps(operation['counters'])}",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - the notification could not be published: the next tick
            log.warning("run %d: the completion notification was not published: %s", status["runs"], exc)
            status["last"] = {"status": "NOT_ANNOUNCED", "error": str(exc)[:500]}
        status.update(finished=status["finished"] + 1, running=False)
        write_json_atomic(status_path, status)
    write_json_atomic(status_path, status)
    return 0


if __name__ == "__main__":  # python -m providers.local_transfer <record.json>
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(_serve(Path(sys.argv[1])))
