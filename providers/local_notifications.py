"""Local stand-in for Cloud Storage notifications: ``storage_notification`` on the emulators.

EMULATOR DEPARTURE, all of it: gcp-storage-emulator answers notification configs with 501, and
the Pub/Sub emulator has no IAM. When headwater targets the emulators, a ``storage_notification``
resource is realized by a *watcher*: a process (``python -m providers.local_notifications
<record>``) that lists the notification's bucket and prefix every ``interval_s`` (1 s) and, for
each object generation it has not announced yet, publishes to the topic on the Pub/Sub emulator
the message Cloud Storage would publish (https://cloud.google.com/storage/docs/pubsub-notifications):

* data: the object's resource as the JSON API returns it (``payload_format: JSON_API_V1``;
  empty for ``NONE``);
* attributes: ``notificationConfig``, ``eventType``, ``payloadFormat``, ``bucketId``, ``objectId``,
  ``objectGeneration``, ``eventTime``, ``overwroteGeneration`` when it replaced a generation the
  watcher had seen, and the config's custom attributes (the resource's labels).

``OBJECT_FINALIZE`` for a new generation; ``OBJECT_DELETE`` (with ``overwrittenByGeneration``
when a newer one replaced it) for a generation that is no longer there, if the config's
``event_types`` ask for it (empty = all, as on GCS), with only the object's identity as data
(bucket, name, generation: the watcher keeps no more). Metadata updates and archiving are not
seen. Differences from GCS that remain: events come up to ``interval_s`` late, and an object
written and replaced within one interval is never announced (GCS would announce both).

Like the local runner's jobs (`providers.localrunner`), watchers outlive the CLI call that
started them and are tracked in ``<state_dir>/notifications/<project>/``, one set of files per
resource (its name quoted to one path segment):

* ``<key>.json`` - the record: name, project, PID and process start time, spec, labels, log;
* ``<key>.seen.json`` - the generation announced for each object name under the prefix. Written
  after each publish, so a restarted watcher announces only what changed while it was away (a
  crash between a publish and its write announces that one again: at least once, as GCS is; the
  ingest job's claims absorb repeats);
* ``<key>.log`` - the watcher's output.

`create` takes the first listing itself, before the watcher starts: like a real config, it
announces only objects written after it exists (the sweep is for the others). ``observe``
returns the watchers whose process runs against the emulators in effect now (a watcher left
running against emulators that are gone is missing, and `create` replaces it:
`providers.localprocess.stale_endpoints`); `delete` stops one and removes its files except the
log; `stop_all` stops them all (``headwater local down``). ``publisher_grant`` is recorded as
declared: there is no IAM to grant on the emulator. ``HEADWATER_LOCAL_JOBS=record`` (or
``run_watchers=False``) tracks watchers without starting processes, as it does jobs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from providers.errors import AlreadyExists, PermanentError
from providers.localprocess import (
    endpoints_in_effect,
    is_alive,
    process_start,
    spawn,
    stale_endpoints,
    stop_group,
    write_json_atomic,
)
from providers.localrunner import child_env
from providers.storage_notifications import IMMUTABLE_FIELDS, topic_path
from reconciler.resources import Kind, Resource

log = logging.getLogger(__name__)

NOTIFICATIONS_DIR = "notifications"
INTERVAL_S = 1.0  # how often a watcher lists its prefix
PUBLISH_TIMEOUT_S = 30.0
FINALIZE, DELETE = "OBJECT_FINALIZE", "OBJECT_DELETE"


@dataclass
class WatcherRecord:
    """What ``<key>.json`` holds."""

    name: str
    project: str
    pid: int
    process_start: str  # /proc/<pid>/stat start time: tells the watcher from a later process with its PID
    spec: dict[str, Any]
    labels: dict[str, str]
    log: str
    started_at: str
    recorded_only: bool = False  # HEADWATER_LOCAL_JOBS=record: tracked, no process
    endpoints: dict[str, str] | None = None  # the emulators in effect at launch (None: an older record)


def watchers_dir(state_dir: Path, project: str) -> Path:
    return Path(state_dir) / NOTIFICATIONS_DIR / project


def record_key(name: str) -> str:
    """A resource name (``bucket/prefix/``) as one file name."""
    return urllib.parse.quote(name, safe="") or "%2F"


# --------------------------------------------------------------------------- processes


_process_start = process_start  # the name the tests import


def _running(record: WatcherRecord) -> bool:
    return is_alive(record.pid, record.process_start, recorded_only=record.recorded_only)


def _stop(record: WatcherRecord) -> None:
    """SIGTERM to the watcher's process group (it finishes its pass), SIGKILL after a grace period."""
    if record.recorded_only or not _running(record):
        return
    stop_group(record.pid, record.process_start, graceful=False)


def load_records(state_dir: Path) -> list[WatcherRecord]:
    records = []
    for path in sorted((Path(state_dir) / NOTIFICATIONS_DIR).glob("*/*.json")):
        if path.name.endswith(".seen.json"):
            continue
        try:
            records.append(WatcherRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            log.warning("ignoring unreadable notification watcher record %s", path)
    return records


def _remove_files(state_dir: Path, record: WatcherRecord) -> None:
    base = watchers_dir(state_dir, record.project) / record_key(record.name)
    for suffix in (".json", ".seen.json"):
        base.with_name(base.name + suffix).unlink(missing_ok=True)


def stop_all(state_dir: Path, project: str | None = None) -> list[str]:
    """Stop every watcher recorded in ``state_dir`` (of ``project``, or all); the names stopped."""
    stopped = []
    for record in load_records(state_dir):
        if project is not None and record.project != project:
            continue
        if _running(record):
            _stop(record)
            stopped.append(record.name)
        _remove_files(state_dir, record)
    return stopped


# --------------------------------------------------------------------------- the provider


class LocalNotificationProvider:
    """``storage_notification`` on the emulators, as watcher processes. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.STORAGE_NOTIFICATION,)
    # As on GCS, so that a plan reads the same on both.
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, state_dir: Path | str, *, python: str = sys.executable,
                 run_watchers: bool | None = None, interval_s: float = INTERVAL_S) -> None:
        self.project = project
        self.state_dir = Path(state_dir)
        self.python = python
        if run_watchers is None:
            run_watchers = os.environ.get("HEADWATER_LOCAL_JOBS", "run") != "record"
        self.run_watchers = run_watchers
        self.interval_s = interval_s
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
                live.append(Resource(Kind.STORAGE_NOTIFICATION, record.name, record.spec, record.labels))
            elif _running(record):
                log.warning("notification watcher %s is missing: %s; apply launches it anew", record.name, stale)
            else:
                log.warning("notification watcher %s has ended; its log: %s", record.name, record.log)
        return live

    def create(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        with self._lock:
            existing = self._record(resource.name)
            if existing is not None and _running(existing) and stale_endpoints(existing.endpoints) is None:
                raise AlreadyExists(f"local notification {resource.name} is already watched (pid {existing.pid})")
            if existing is not None:
                _stop(existing)  # watching through emulators that are gone
            seen = self._paths(resource.name)[1]
            if not seen.exists():  # a first start: what is there now is not announced (see the docstring)
                write_json_atomic(seen, _baseline(resource.spec) if self.run_watchers else {})
            self._launch(resource)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        _check_kind(resource.kind)
        immutable = set(fields) & IMMUTABLE_FIELDS[Kind.STORAGE_NOTIFICATION]
        if immutable:
            raise PermanentError(f"{resource.address}: {sorted(immutable)} cannot change in place")
        with self._lock:
            existing = self._record(resource.name)
            if existing is not None:
                _stop(existing)  # new labels are new custom attributes: restart (it remembers what it announced)
            self._launch(resource)

    def delete(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        with self._lock:
            record = self._record(resource.name)
            if record is None:
                return
            _stop(record)
            _remove_files(self.state_dir, record)

    # -- plumbing --

    def _paths(self, name: str) -> tuple[Path, Path, Path]:
        directory = watchers_dir(self.state_dir, self.project)
        directory.mkdir(parents=True, exist_ok=True)
        key = record_key(name)
        return directory / f"{key}.json", directory / f"{key}.seen.json", directory / f"{key}.log"

    def _record(self, name: str) -> WatcherRecord | None:
        try:
            record = WatcherRecord(**json.loads(self._paths(name)[0].read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return record if record.project == self.project else None

    def _launch(self, resource: Resource) -> None:
        record_path, _, log_path = self._paths(resource.name)
        record = WatcherRecord(
            name=resource.name, project=self.project, pid=0, process_start="",
            spec=json.loads(json.dumps(dict(resource.spec))), labels=dict(resource.labels), log=str(log_path),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), recorded_only=not self.run_watchers,
            endpoints=endpoints_in_effect(),
        )
        write_json_atomic(record_path, asdict(record))  # the watcher reads it at start
        if not self.run_watchers:
            return
        argv = [self.python, "-m", "providers.local_notifications", str(record_path.resolve()), str(self.interval_s)]
        record.pid, record.process_start = spawn(argv, child_env(self.project), record_path.parent, log_path,
                                                 f"--- {record.started_at} launch {' '.join(argv)}")
        write_json_atomic(record_path, asdict(record))


def _check_kind(kind: Kind) -> None:
    if Kind(kind) != Kind.STORAGE_NOTIFICATION:
        raise PermanentError(f"local_notifications: unsupported kind {kind!r}")


# --------------------------------------------------------------------------- the watcher


def _list(client: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every object under the prefix, by name."""
    return {blob.name: blob for blob in client.list_blobs(spec["bucket"], prefix=spec.get("object_name_prefix") or None)}


def _baseline(spec: Mapping[str, Any]) -> dict[str, int]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    try:
        client = storage.Client(project="local", credentials=AnonymousCredentials())
        return {name: int(blob.generation) for name, blob in _list(client, spec).items()}
    except Exception as exc:  # noqa: BLE001 - no bucket yet: nothing to leave out
        log.warning("first listing of %s failed (%s): everything found later is announced", spec.get("bucket"), exc)
        return {}


def event_message(spec: Mapping[str, Any], labels: Mapping[str, str], event_type: str, bucket: str, name: str,
                  generation: int, resource: Mapping[str, Any], **extra: str) -> tuple[bytes, dict[str, str]]:
    """The ``(data, attributes)`` Cloud Storage publishes for one event (see the module docstring)."""
    payload_format = spec.get("payload_format") or "JSON_API_V1"
    attributes = {
        **labels,  # custom attributes first: the standard ones cannot be overridden by them
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/local",
        "eventType": event_type,
        "payloadFormat": payload_format,
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": str(generation),
        "eventTime": resource.get("updated") or dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        **extra,
    }
    data = json.dumps(dict(resource), sort_keys=True).encode() if payload_format == "JSON_API_V1" else b""
    return data, attributes


def watch_once(spec: Mapping[str, Any], labels: Mapping[str, str], project: str, seen: dict[str, int],
               storage_client: Any, publisher: Any, save: Any = lambda seen: None) -> int:
    """One pass: list, publish what changed since ``seen`` (updated in place, ``save``d after each
    publish). Returns the number of messages published. Errors propagate (the caller retries)."""
    wanted = set(spec.get("event_types") or [FINALIZE, DELETE])
    topic = topic_path(spec["topic"], project)
    bucket = spec["bucket"]
    current = _list(storage_client, spec)
    published = 0

    def publish(event_type: str, name: str, generation: int, resource: Mapping[str, Any], **extra: str) -> None:
        nonlocal published
        if event_type in wanted:
            data, attributes = event_message(spec, labels, event_type, bucket, name, generation, resource, **extra)
            publisher.publish(topic, data, **attributes).result(timeout=PUBLISH_TIMEOUT_S)
            published += 1

    for name in sorted(current):
        blob = current[name]
        generation = int(blob.generation)
        before = seen.get(name)
        if before == generation:
            continue
        if before is not None:  # replaced: the old generation's delete, then the new one's finalize
            publish(DELETE, name, before, _identity(bucket, name, before), overwrittenByGeneration=str(generation))
            publish(FINALIZE, name, generation, blob._properties, overwroteGeneration=str(before))
        else:
            publish(FINALIZE, name, generation, blob._properties)
        seen[name] = generation
        save(seen)
    for name in sorted(set(seen) - set(current)):
        publish(DELETE, name, seen[name], _identity(bucket, name, seen[name]))
        del seen[name]
        save(seen)
    return published


def _identity(bucket: str, name: str, generation: int) -> dict[str, Any]:
    return {"kind": "storage#object", "bucket": bucket, "name": name, "generation": str(generation)}


def _watch(record_path: Path, interval_s: float) -> int:
    """A watcher's process: a pass every ``interval_s`` seconds until SIGTERM."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import pubsub_v1, storage

    record = WatcherRecord(**json.loads(record_path.read_text()))
    seen_path = record_path.with_name(record_path.name.removesuffix(".json") + ".seen.json")
    try:
        seen = {str(k): int(v) for k, v in json.loads(seen_path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        seen = {}
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    storage_client = storage.Client(project=record.project, credentials=AnonymousCredentials())
    publisher = pubsub_v1.PublisherClient()
    log.info("watching gs://%s/%s for %s", record.spec["bucket"], record.spec.get("object_name_prefix") or "",
             topic_path(record.spec["topic"], record.project))
    while not stopping.is_set():
        try:
            count = watch_once(record.spec, record.labels, record.project, seen, storage_client, publisher,
                               save=lambda s: write_json_atomic(seen_path, s))
            if count:
                log.info("published %d event(s)", count)
        except Exception as exc:  # noqa: BLE001 - a missing topic or bucket, an emulator restart: next pass
            log.warning("pass failed, retrying in %.1f s: %s", interval_s, exc)
        stopping.wait(interval_s)
    return 0


if __name__ == "__main__":  # python -m providers.local_notifications <record.json> [interval seconds]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(_watch(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else INTERVAL_S))
