"""Local runner: ``dataflow_job`` resources realized as Beam pipelines on this machine, and
``cloud_run_service`` resources (connectors) as local processes.

The embedded default: when headwater targets the emulators, the same resources that become
Dataflow jobs in production run here, each in a child process with the emulator environment,
through the same pipeline code (``python -m beam.<template>``, Beam's local runner). Like
Dataflow jobs, they outlive the CLI call that started them: ``headwater apply`` starts them, a
later apply updates or stops them, ``headwater local down`` stops them all.

Jobs are tracked in ``<state_dir>/jobs/<project>/``, one set of files per job name:

* ``<name>.json`` - the record: project, PID (and the process's start time, so a reused PID is
  not mistaken for the job), the spec and labels it was launched with, the command line;
* ``<name>.spec.json`` - the pipeline spec, handed to the template as ``--source_spec``;
* ``<name>.log`` - the job's output;
* ``<name>.status.json`` - batch jobs only: their runs (count, last start, end, exit code).

``observe`` returns running jobs only: a job whose process has ended is history, and the next
plan launches it again. Running means running against the emulators in effect now: each record
keeps the endpoints it was launched with (``endpoints``), and a job or connector whose process
lives on against emulators that are gone (another ``headwater local up``, a restart on new
ports) is missing, not running (`providers.localprocess.stale_endpoints`); the next apply's
create stops that process and launches it anew. Everything else mirrors Dataflow:

* streaming job: the pipeline process itself (``BundleBasedDirectRunner``, never ends);
* batch job: a small scheduler process (``python -m providers.localrunner <record>``, below)
  that runs the pipeline once at start, then at each tick of the job's cron ``schedule``
  (UTC), and at once on SIGUSR1 (`LocalRunnerProvider.run_now`); so a scheduled batch job is a
  running job here, as its Cloud Scheduler job is on Dataflow, and a freshly applied platform
  plans "No changes". Unlike Cloud Scheduler, which waits for the first tick, it runs at once;
* update: stop, then launch with the new spec (there is no in-place update on this runner; a
  batch run in progress is stopped and run again, where on Dataflow it finishes as launched).
  A change of only `NOT_USED_LOCALLY` fields (the ``dataflow:`` block's settings) is recorded
  and restarts nothing;
* delete: a streaming job is stopped gracefully (SIGINT, a grace period, then SIGTERM/SIGKILL to
  its process group); a batch job is stopped at once. Beam's local streaming runner acknowledges
  Pub/Sub messages when it pulls them, so unlike a Dataflow drain this can lose the records of
  a bundle in flight: the local runner is for development, not for data that matters.

``HEADWATER_LOCAL_JOBS=record`` (or ``run_jobs=False``) makes the runner track jobs without
starting any process: a recorded job counts as running until it is deleted. It is meant for
tests and benchmarks of the reconciler itself (a generated platform of a thousand streaming
sources would start a thousand pipelines here); the demo and the local runner's own tests
run real jobs.

Children get ``GOOGLE_CLOUD_PROJECT`` and, when an emulator host is set, an unreachable metadata
server address (``GCE_METADATA_HOST``): without Application Default Credentials the Google auth
libraries would otherwise probe the real metadata server for seconds before giving up.

Cloud Run services (EMULATOR DEPARTURE: there is no Cloud Run emulator; the section "Cloud Run
services" below). A ``cloud_run_service`` runs its ``command`` (``python -m connector``, with
this interpreter) as a child process in its own session, like a streaming job, tracked in
``<state_dir>/services/<project>/<name>.json`` (record) and ``<name>.log``. Its environment is
the children's above plus what Cloud Run would give the container (docs/connector-contract.md):
``HEADWATER_CONNECTOR_SPEC`` (the ``connector`` document), ``PORT`` (a free loopback port chosen
at launch, recorded as ``port``: `LocalRunnerProvider.service_url`) and, per entry of
``secrets``, the variable set to the secret's value from `providers.secretmanager.LocalSecrets`
(``$HEADWATER_SECRETS_DIR`` or ``<state_dir>/secrets``, one file per secret id). Secret values
go into the child's environment only: never into the record, the log or the command line. A
missing secret fails create and update (naming the secret and the file expected) before
anything is stopped, as a Cloud Run revision that cannot mount its secret leaves the previous
one serving. Create and update wait until the process listens on its port (Cloud Run's default
startup probe); one that exits or does not listen in time fails the apply. Update restarts the
process on the same port when it is free, so a webhook URL stays put; a change of only the
settings a local process does not use (`SERVICE_FIELDS_NOT_USED_LOCALLY`: image, scaling,
ingress, IAM, account, CPU) is recorded without a restart. Delete stops it: SIGTERM, then
SIGKILL, as Cloud Run stops an instance.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from providers.errors import AlreadyExists, NotFound, PermanentError
from providers.localprocess import (
    child,
    endpoints_in_effect,
    is_alive,
    spawn,
    stale_endpoints,
    stop_group,
    write_json_atomic,
)
from providers.secretmanager import LocalSecrets, local_secrets_dir
from reconciler.resources import Kind, Resource

log = logging.getLogger(__name__)

JOBS_DIR = "jobs"
SERVICES_DIR = "services"
SPEC_PARAMETER = "source_spec"  # the template parameter carrying the pipeline spec
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.DATAFLOW_JOB: frozenset({"template", "streaming"}),
    Kind.CLOUD_RUN_SERVICE: frozenset(),
}

EMULATOR_VARS = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST")
# Nothing listens on port 9 (discard) of loopback: metadata probes fail at once.
NO_METADATA_SERVER = "127.0.0.1:9"


# Spec fields the local runner does not use: a change of only these restarts nothing.
# ("environment" is platform.yaml's dataflow: block - worker accounts, template bucket, ...)
NOT_USED_LOCALLY = frozenset({"environment"})

# Cloud Run services (EMULATOR DEPARTURE, see the module docstring and "Cloud Run services" below).
# What a local connector process does not use: the image (it runs this tree's connector/),
# scaling, ingress and IAM (it listens on loopback), the account (it has the emulators), CPU.
SERVICE_FIELDS_NOT_USED_LOCALLY = frozenset({"image", "service_account", "min_instances", "max_instances",
                                             "ingress", "cpu_always_allocated", "public", "labels"})
SERVICE_START_TIMEOUT_S = 60.0  # create/update wait this long for the process to listen on PORT
CONNECTOR_SPEC_ENV = "HEADWATER_CONNECTOR_SPEC"
# Never inherited from our own environment: only what the spec says reaches the connector.
SERVICE_ENV_NOT_INHERITED = ("PORT", CONNECTOR_SPEC_ENV, "HEADWATER_CONNECTOR_SECRET", "HEADWATER_WEBHOOK_SECRET")
# Cloud Run sets these itself; a spec cannot mount a secret there.
RESERVED_SERVICE_ENV = frozenset({"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION", CONNECTOR_SPEC_ENV})
LOOPBACK = "127.0.0.1"


@dataclass
class JobRecord:
    """What ``<name>.json`` holds."""

    name: str
    project: str
    pid: int
    process_start: str  # /proc/<pid>/stat start time: tells the job from a later process with its PID
    streaming: bool
    spec: dict[str, Any]
    labels: dict[str, str]
    argv: list[str]  # the pipeline's command line (a batch job's scheduler runs it per run)
    log: str
    started_at: str
    env: dict[str, str] = field(default_factory=dict)  # variables set for the job on top of ours (no secrets)
    recorded_only: bool = False  # HEADWATER_LOCAL_JOBS=record: tracked, no process
    kind: str = Kind.DATAFLOW_JOB.value  # or cloud_run_service
    port: int | None = None  # a service's PORT (loopback)
    # The emulator endpoints in effect at launch (None: recorded by an older headwater).
    endpoints: dict[str, str] | None = None


def jobs_dir(state_dir: Path, project: str) -> Path:
    return Path(state_dir) / JOBS_DIR / project


def services_dir(state_dir: Path, project: str) -> Path:
    return Path(state_dir) / SERVICES_DIR / project


def _record_dir(state_dir: Path, project: str, kind: str) -> Path:
    return (services_dir if kind == Kind.CLOUD_RUN_SERVICE else jobs_dir)(state_dir, project)


def pipeline_argv(resource: Resource, spec_file: Path, python: str = sys.executable) -> list[str]:
    """``python -m beam.<template> --source_spec=<file> --<parameter>=<value>... --runner=local``."""
    argv = [python, "-m", f"beam.{resource.spec['template']}", f"--{SPEC_PARAMETER}={spec_file}"]
    for name, value in sorted((resource.spec.get("parameters") or {}).items()):
        argv.append(f"--{name}={value}")
    argv.append("--runner=local")
    return argv


def child_env(project: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment: ours (emulator hosts included), the project, no metadata probing."""
    env = dict(os.environ if base is None else base)
    env["GOOGLE_CLOUD_PROJECT"] = project
    if any(env.get(var) for var in EMULATOR_VARS):
        env.setdefault("GCE_METADATA_HOST", NO_METADATA_SERVER)
        env.setdefault("GCE_METADATA_IP", NO_METADATA_SERVER)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --------------------------------------------------------------------------- Cloud Run services
# EMULATOR DEPARTURE: there is no Cloud Run emulator. A cloud_run_service is a local process
# (module docstring); these helpers and LocalRunnerProvider's "Cloud Run services" part are
# the whole of it.

# The tree this runner was loaded from: a connector child imports connector/ from the same one,
# whether headwater is installed (site-packages) or run from a checkout.
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def service_argv(spec: Mapping[str, Any], python: str = sys.executable) -> list[str]:
    """The service's ``command`` with ``python`` standing for this interpreter:
    ``["python", "-m", "connector"]`` -> ``[<python>, "-m", "connector"]``."""
    command = list(spec.get("command") or ["python", "-m", "connector"])
    if command[0] in ("python", "python3"):
        command[0] = python
    return command


def service_env(project: str, name: str, spec: Mapping[str, Any], port: int, secret_values: Mapping[str, str],
                base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A connector's environment: the children's (`child_env`), then what Cloud Run would set:
    ``HEADWATER_CONNECTOR_SPEC``, ``PORT``, ``K_SERVICE`` and the secrets (values, by env var);
    last ``HEADWATER_CONNECTOR_HOST=127.0.0.1``, which nothing overrides: a local connector (a
    webhook receiver, possibly unsigned) listens on loopback only, where Cloud Run's listens on
    every interface (docs/connector-contract.md)."""
    env = child_env(project, base)
    for variable in (*SERVICE_ENV_NOT_INHERITED, *(spec.get("secrets") or {})):
        env.pop(variable, None)
    env[CONNECTOR_SPEC_ENV] = json.dumps(spec["connector"], sort_keys=True, separators=(",", ":"))
    env["PORT"] = str(port)
    env["K_SERVICE"] = name
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SOURCE_ROOT), env.get("PYTHONPATH")]))
    env.update(secret_values)
    env["HEADWATER_CONNECTOR_HOST"] = LOOPBACK
    return env


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if nothing listens there on loopback, else a free port the system picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As servers bind (SO_REUSEADDR): a port whose last connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise PermanentError("no free loopback port")  # pragma: no cover - port 0 always binds


def _listening(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- processes


def _running(record: JobRecord) -> bool:
    return is_alive(record.pid, record.process_start, recorded_only=record.recorded_only)


def _running_here(record: JobRecord) -> bool:
    """Running, and against the emulators in effect now (module docstring)."""
    return _running(record) and stale_endpoints(record.endpoints) is None


def _stop_process(record: JobRecord, *, graceful: bool) -> None:
    """SIGINT and a grace period (graceful), then SIGTERM, then SIGKILL, to the job's process group."""
    if not record.recorded_only:
        stop_group(record.pid, record.process_start, graceful=graceful)


# --------------------------------------------------------------------------- records


def load_records(state_dir: Path) -> list[JobRecord]:
    """Every job and service recorded in ``state_dir`` (all projects)."""
    records = []
    paths = [*sorted((Path(state_dir) / JOBS_DIR).glob("*/*.json")),
             *sorted((Path(state_dir) / SERVICES_DIR).glob("*/*.json"))]
    for path in paths:
        if path.name.endswith((".spec.json", ".status.json")):
            continue
        try:
            records.append(JobRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            log.warning("ignoring unreadable local job record %s", path)
    return records


def _remove_files(state_dir: Path, record: JobRecord) -> None:
    for suffix in (".json", ".spec.json", ".status.json"):
        (_record_dir(state_dir, record.project, record.kind) / f"{record.name}{suffix}").unlink(missing_ok=True)


def batch_status(state_dir: Path, project: str, name: str) -> dict[str, Any]:
    """A batch job's runs: ``{"runs": n, "finished": n, "running": bool, "last_exit_code": int | None, ...}``."""
    try:
        return json.loads((jobs_dir(state_dir, project) / f"{name}.status.json").read_text())
    except (OSError, ValueError):
        return {"runs": 0, "finished": 0, "running": False, "last_exit_code": None}


def stop_all(state_dir: Path, project: str | None = None) -> list[str]:
    """Stop every local job and service recorded in ``state_dir`` (of ``project``, or all); the
    names stopped. Services are stopped first: a connector publishes to what the jobs read."""
    stopped = []
    records = load_records(state_dir)
    records.sort(key=lambda r: r.kind != Kind.CLOUD_RUN_SERVICE)  # stable: services first
    for record in records:
        if project is not None and record.project != project:
            continue
        if _running(record):
            _stop_process(record, graceful=record.streaming)
            stopped.append(record.name)
        _remove_files(state_dir, record)
    return stopped


# --------------------------------------------------------------------------- the provider


class LocalRunnerProvider:
    """Dataflow jobs (and, with ``services``, the Cloud Run services) of one project, run on this
    machine. Contract: `providers.base.Provider`.

    ``python`` runs the pipelines and the connectors (``python -m ...``); ``run_jobs=False`` (or
    ``HEADWATER_LOCAL_JOBS=record``) records without starting processes; ``secrets_dir`` is where
    services' secrets are read (default: `providers.secretmanager.local_secrets_dir`);
    ``start_timeout`` is how long create/update wait for a service to listen, in seconds.
    """

    # As on Dataflow (and Cloud Run), so that a plan reads the same on both runners.
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, state_dir: Path, *, python: str = sys.executable,
                 run_jobs: bool | None = None, services: bool = True, secrets_dir: Path | str | None = None,
                 start_timeout: float = SERVICE_START_TIMEOUT_S) -> None:
        self.project = project
        self.state_dir = Path(state_dir)
        self.python = python
        if run_jobs is None:
            run_jobs = os.environ.get("HEADWATER_LOCAL_JOBS", "run") != "record"
        self.run_jobs = run_jobs
        self.kinds: tuple[Kind, ...] = (Kind.DATAFLOW_JOB, Kind.CLOUD_RUN_SERVICE) if services else (Kind.DATAFLOW_JOB,)
        self.secrets = LocalSecrets(secrets_dir if secrets_dir is not None else local_secrets_dir(self.state_dir))
        self.start_timeout = start_timeout
        self._lock = threading.Lock()

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        kind = Kind(kind)
        if kind not in self.kinds:
            raise PermanentError(f"localrunner: unsupported kind {kind!r}")
        what = "service" if kind == Kind.CLOUD_RUN_SERVICE else "job"
        live = []
        for record in load_records(self.state_dir):
            if record.project != self.project or record.kind != kind:
                continue
            stale = stale_endpoints(record.endpoints)
            if _running(record) and stale is None:
                live.append(Resource(kind, record.name, record.spec, record.labels))
            elif _running(record):
                log.warning("local %s %s is missing: %s; apply launches it anew against the emulators in effect",
                            what, record.name, stale)
            else:
                log.warning("local %s %s has ended (history, not drift); its log: %s", what, record.name, record.log)
        return live

    def create(self, resource: Resource) -> None:
        if resource.kind == Kind.CLOUD_RUN_SERVICE:
            self._create_service(resource)
            return
        with self._lock:
            existing = self._record(resource.name)
            if existing is not None and _running_here(existing):
                raise AlreadyExists(f"local job {resource.name} is already running (pid {existing.pid})")
            if existing is not None and _running(existing):  # against emulators that are gone: stop it
                _stop_process(existing, graceful=existing.streaming)
            self._launch(resource)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        if resource.kind == Kind.CLOUD_RUN_SERVICE:
            self._update_service(resource, fields)
            return
        for name in fields:
            if name in IMMUTABLE_FIELDS[Kind.DATAFLOW_JOB]:
                raise PermanentError(f"{resource.address}: {name!r} cannot change in place (stop and relaunch)")
        with self._lock:
            existing = self._record(resource.name)
            if existing is not None and _running_here(existing) and set(fields) <= NOT_USED_LOCALLY:
                # Only Dataflow settings changed: the local process does not use them. Record the
                # new spec (so the next plan is clean) and leave the job running.
                existing.spec = json.loads(json.dumps(dict(resource.spec)))
                write_json_atomic(jobs_dir(self.state_dir, self.project) / f"{resource.name}.json", asdict(existing))
                return
            if existing is not None and _running(existing):
                _stop_process(existing, graceful=existing.streaming)
            self._launch(resource)

    def delete(self, resource: Resource) -> None:
        with self._lock:
            record = self._record(resource.name, resource.kind)
            if record is None:
                return
            if _running(record):
                # A streaming job drains (SIGINT first); a service stops as Cloud Run stops an
                # instance (SIGTERM, then SIGKILL).
                _stop_process(record, graceful=record.streaming)
            _remove_files(self.state_dir, record)

    # -- optional ability: health (providers.base.HealthReporter; providers/localrunner_health.py) --

    def health(self, resources: Sequence[Resource]) -> dict[str, Any]:
        """Crashed, crash-looping or failing jobs and connectors, with their error and log tail."""
        from providers.localrunner_health import local_health

        return local_health(self, resources)

    # -- beyond the contract: what the demo and tests need --

    def run_now(self, name: str) -> int:
        """Ask a batch job for a run now; returns its run count before the request."""
        record = self._record(name)
        if record is None or record.streaming or record.recorded_only or not _running(record):
            raise PermanentError(f"local job {name} is not a running batch job")
        status_file = jobs_dir(self.state_dir, self.project) / f"{name}.status.json"
        deadline = time.monotonic() + 10.0
        while not status_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # until then SIGUSR1 would kill the scheduler: its handler is not set yet
        before = self.status(name)["runs"]
        os.kill(record.pid, signal.SIGUSR1)  # the scheduler only, not its process group
        return before

    def wait_for_run(self, name: str, after: int, timeout: float) -> dict[str, Any]:
        """Wait until run number ``after + 1`` of a batch job has finished; its status."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name)
            if status["finished"] > after:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"local job {name}: run {after + 1} did not finish within {timeout:.0f} s")
            time.sleep(0.2)

    def record(self, name: str) -> JobRecord | None:
        return self._record(name)

    def status(self, name: str) -> dict[str, Any]:
        """A batch job's runs (see `batch_status`)."""
        return batch_status(self.state_dir, self.project, name)

    def service_record(self, name: str) -> JobRecord | None:
        """The record of the local service ``name`` (running or ended), or None."""
        return self._record(name, Kind.CLOUD_RUN_SERVICE)

    def service_url(self, name: str) -> str:
        """``http://127.0.0.1:<port>``: where the local service ``name`` listens (a webhook's base
        URL; append its ``webhook.path``). NotFound if no such service is recorded."""
        record = self.service_record(name)
        if record is None or record.port is None:
            raise NotFound(f"no local service {name} (project {self.project})")
        return f"http://{LOOPBACK}:{record.port}"

    # -- Cloud Run services (EMULATOR DEPARTURE: the module docstring) --

    def _create_service(self, resource: Resource) -> None:
        with self._lock:
            existing = self._record(resource.name, Kind.CLOUD_RUN_SERVICE)
            if existing is not None and _running_here(existing):
                raise AlreadyExists(f"local service {resource.name} is already running (pid {existing.pid})")
            secrets = self._secret_values(resource)
            if existing is not None and _running(existing):  # against emulators that are gone: stop it
                _stop_process(existing, graceful=False)
            # Launched again after it ended: the same port when it is free (the same URL).
            record = self._launch_service(resource, secrets, existing.port if existing else None)
        self._await_listening(resource, record)

    def _update_service(self, resource: Resource, fields: Sequence[str]) -> None:
        with self._lock:
            existing = self._record(resource.name, Kind.CLOUD_RUN_SERVICE)
            running = existing is not None and _running(existing)
            if existing is not None and _running_here(existing) and set(fields) <= SERVICE_FIELDS_NOT_USED_LOCALLY:
                # Nothing the local process uses changed: record the new spec (the next plan is
                # clean) and leave it running.
                existing.spec = json.loads(json.dumps(dict(resource.spec)))
                existing.labels = dict(resource.labels)
                write_json_atomic(services_dir(self.state_dir, self.project) / f"{resource.name}.json", asdict(existing))
                return
            # Secrets first: one that is missing fails the update with the old process still up.
            secrets = self._secret_values(resource)
            if existing is not None and running:
                _stop_process(existing, graceful=False)
            record = self._launch_service(resource, secrets, existing.port if existing else None)
        self._await_listening(resource, record)

    def _secret_values(self, resource: Resource) -> dict[str, str]:
        """``{env var: value}`` of the service's secrets, read from the local secrets directory
        (none in record-only mode: there is no process to give them to)."""
        values: dict[str, str] = {}
        for variable, secret_id in sorted((resource.spec.get("secrets") or {}).items()):
            if variable in RESERVED_SERVICE_ENV:
                raise PermanentError(f"{resource.address}: the environment variable {variable} is reserved; "
                                     "a secret cannot be mounted there")
            if not self.run_jobs:
                continue
            try:
                values[variable] = self.secrets.value(secret_id)
            except PermanentError as exc:  # the message names the id and the file, never a value
                raise PermanentError(f"{resource.address}: {exc}") from None
        return values

    def _launch_service(self, resource: Resource, secret_values: Mapping[str, str], port: int | None) -> JobRecord:
        directory = services_dir(self.state_dir, self.project)
        directory.mkdir(parents=True, exist_ok=True)
        name = resource.name
        chosen = free_port(port)
        if port and chosen != port:
            log.warning("local service %s: port %d is taken, it now listens on %d (its URL changed)", name, port,
                        chosen)
        log_path = directory / f"{name}.log"
        record = JobRecord(
            name=name, project=self.project, pid=0, process_start="", streaming=False,
            spec=json.loads(json.dumps(dict(resource.spec))), labels=dict(resource.labels),
            argv=service_argv(resource.spec, self.python), log=str(log_path),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            env={"PORT": str(chosen)},  # the secrets' values are in the process's environment only
            kind=Kind.CLOUD_RUN_SERVICE.value, port=chosen, endpoints=endpoints_in_effect(),
        )
        record_path = directory / f"{name}.json"
        if not self.run_jobs:
            record.recorded_only = True
            write_json_atomic(record_path, asdict(record))
            return record
        env = service_env(self.project, name, resource.spec, chosen, secret_values)
        # Names of the secret variables, never their values.
        banner = (f"--- {record.started_at} launch {' '.join(record.argv)} (PORT={chosen}; secrets in the "
                  f"environment: {', '.join(sorted(secret_values)) or 'none'})")
        record.pid, record.process_start = spawn(record.argv, env, directory, log_path, banner)
        write_json_atomic(record_path, asdict(record))
        return record

    def _await_listening(self, resource: Resource, record: JobRecord) -> None:
        """Until the process listens on its port (Cloud Run's default startup probe: TCP). One that
        exits, or does not listen within ``start_timeout`` (it is then stopped), fails the apply."""
        if record.recorded_only:
            return
        proc = child(record.pid)
        deadline = time.monotonic() + self.start_timeout
        while not _listening(record.port or 0):
            if not _running(record):
                code = proc.poll() if proc is not None else None
                raise PermanentError(f"{resource.address}: the local connector exited (exit code {code}) before "
                                     f"listening on port {record.port}; its log: {record.log}")
            if time.monotonic() >= deadline:
                with self._lock:
                    _stop_process(record, graceful=False)
                raise PermanentError(f"{resource.address}: the local connector did not listen on port {record.port} "
                                     f"within {self.start_timeout:.0f} s (stopped); its log: {record.log}")
            time.sleep(0.1)

    # -- plumbing --

    def _record(self, name: str, kind: Kind | str = Kind.DATAFLOW_JOB) -> JobRecord | None:
        path = _record_dir(self.state_dir, self.project, kind) / f"{name}.json"
        try:
            record = JobRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return record if record.project == self.project else None

    def _launch(self, resource: Resource) -> None:
        directory = jobs_dir(self.state_dir, self.project)
        directory.mkdir(parents=True, exist_ok=True)
        name = resource.name
        spec_file = directory / f"{name}.spec.json"
        write_json_atomic(spec_file, resource.spec["pipeline"])
        (directory / f"{name}.status.json").unlink(missing_ok=True)
        streaming = bool(resource.spec.get("streaming"))
        record_path = directory / f"{name}.json"
        log_path = directory / f"{name}.log"
        record = JobRecord(
            name=name, project=self.project, pid=0, process_start="", streaming=streaming,
            spec=json.loads(json.dumps(dict(resource.spec))), labels=dict(resource.labels),
            argv=pipeline_argv(resource, spec_file.resolve(), self.python), log=str(log_path),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), endpoints=endpoints_in_effect(),
        )
        if not self.run_jobs:
            record.recorded_only = True
            write_json_atomic(record_path, asdict(record))
            return
        # A streaming job is the pipeline process; a batch job is its scheduler.
        argv = record.argv if streaming else [self.python, "-m", "providers.localrunner", str(record_path.resolve())]
        write_json_atomic(record_path, asdict(record))  # the scheduler reads it at start
        record.pid, record.process_start = spawn(argv, child_env(self.project), directory, log_path,
                                                 f"--- {record.started_at} launch {' '.join(argv)}")
        write_json_atomic(record_path, asdict(record))


# --------------------------------------------------------------------------- cron


def next_tick(expression: str, after: dt.datetime) -> dt.datetime:
    """The first minute strictly after ``after`` that the five-field cron ``expression`` names (UTC).

    croniter evaluates it, with standard cron semantics: when both day of month and day of week
    are restricted, a day matching either one counts (``day_or``). Validation
    (`reconciler.naming.cron_problem`) has already kept the syntax to what Cloud Scheduler takes.
    """
    from croniter import croniter

    start = after.astimezone(dt.UTC) if after.tzinfo else after.replace(tzinfo=dt.UTC)
    return croniter(expression.lower(), start, day_or=True).get_next(dt.datetime)


# --------------------------------------------------------------------------- batch scheduler


def _schedule(record_path: Path) -> int:
    """A batch job's process: run the pipeline now, then on each cron tick or SIGUSR1, until SIGTERM."""
    record = JobRecord(**json.loads(record_path.read_text()))
    status_path = record_path.with_name(f"{record.name}.status.json")
    status: dict[str, Any] = {"runs": 0, "finished": 0, "running": False, "last_exit_code": None,
                              "last_started_at": None, "last_finished_at": None, "next_run_at": None}
    wake = threading.Event()
    stopping = threading.Event()
    current: list[subprocess.Popen[bytes]] = []

    def on_run_now(signum: int, frame: Any) -> None:
        wake.set()

    def on_stop(signum: int, frame: Any) -> None:
        stopping.set()
        wake.set()
        for proc in current:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()

    signal.signal(signal.SIGUSR1, on_run_now)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    schedule = record.spec.get("schedule")
    now = lambda: dt.datetime.now(dt.UTC)  # noqa: E731 - a clock, named for reading
    while not stopping.is_set():
        wake.clear()
        status.update(runs=status["runs"] + 1, running=True, last_started_at=now().isoformat(timespec="seconds"))
        write_json_atomic(status_path, status)
        print(f"--- {status['last_started_at']} run {status['runs']}: {' '.join(record.argv)}", flush=True)
        proc = subprocess.Popen(record.argv, stdin=subprocess.DEVNULL)
        current.append(proc)
        code = proc.wait()
        current.clear()
        finished = now()
        status.update(finished=status["finished"] + 1, running=False, last_exit_code=code,
                      last_finished_at=finished.isoformat(timespec="seconds"))
        print(f"--- {status['last_finished_at']} run {status['runs']} ended with exit code {code}", flush=True)
        if stopping.is_set():
            break
        delay = None
        if schedule:
            tick = next_tick(schedule, finished)
            status["next_run_at"] = tick.isoformat(timespec="seconds")
            delay = max(0.0, (tick - now()).total_seconds())
        write_json_atomic(status_path, status)
        wake.wait(timeout=delay)
    write_json_atomic(status_path, status)
    return 0


if __name__ == "__main__":  # python -m providers.localrunner <record.json>: a batch job's scheduler
    logging.basicConfig(level=logging.INFO)
    sys.exit(_schedule(Path(sys.argv[1])))
