"""Local runner: ``dataflow_job`` resources realized as Beam pipelines on this machine.

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
plan launches it again. Everything else mirrors Dataflow:

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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from providers.errors import AlreadyExists, PermanentError
from reconciler.resources import Kind, Resource

log = logging.getLogger(__name__)

JOBS_DIR = "jobs"
SPEC_PARAMETER = "source_spec"  # the template parameter carrying the pipeline spec
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {Kind.DATAFLOW_JOB: frozenset({"template", "streaming"})}

DRAIN_GRACE_S = 10.0  # streaming: time to stop after SIGINT before SIGTERM
STOP_GRACE_S = 3.0  # then SIGTERM -> SIGKILL
EMULATOR_VARS = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST")
# Nothing listens on port 9 (discard) of loopback: metadata probes fail at once.
NO_METADATA_SERVER = "127.0.0.1:9"

# Popen handles of the jobs this process started, so ended ones are reaped (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


# Spec fields the local runner does not use: a change of only these restarts nothing.
# ("environment" is platform.yaml's dataflow: block - worker accounts, template bucket, ...)
NOT_USED_LOCALLY = frozenset({"environment"})


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
    env: dict[str, str] = field(default_factory=dict)  # variables set for the job on top of ours
    recorded_only: bool = False  # HEADWATER_LOCAL_JOBS=record: tracked, no process


def jobs_dir(state_dir: Path, project: str) -> Path:
    return Path(state_dir) / JOBS_DIR / project


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


# --------------------------------------------------------------------------- processes


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None if it does not exist (or is a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None
    return fields[19]  # field 22 of stat; fields[0] is field 3


def _running(record: JobRecord) -> bool:
    if record.recorded_only:
        return True
    proc = _children.get(record.pid)
    if proc is not None and proc.poll() is not None:
        _children.pop(record.pid, None)  # reaped
        return False
    return _process_start(record.pid) == record.process_start


def _signal_group(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)  # jobs start in their own session: PID = process group id
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop_process(record: JobRecord, *, graceful: bool) -> None:
    """SIGINT and a grace period (graceful), then SIGTERM, then SIGKILL, to the job's process group."""
    if record.recorded_only:
        return
    steps = ([(signal.SIGINT, DRAIN_GRACE_S)] if graceful else []) + [(signal.SIGTERM, STOP_GRACE_S)]
    for sig, grace in steps:
        if not _running(record) or not _signal_group(record.pid, sig):
            break
        deadline = time.monotonic() + grace
        while _running(record) and time.monotonic() < deadline:
            time.sleep(0.05)
    # Whatever is left of the group (a pipeline's own children included) goes now.
    _signal_group(record.pid, signal.SIGKILL)
    proc = _children.pop(record.pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.SubprocessError):
            proc.wait(timeout=STOP_GRACE_S)


# --------------------------------------------------------------------------- records


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load_records(state_dir: Path) -> list[JobRecord]:
    records = []
    for path in sorted((Path(state_dir) / JOBS_DIR).glob("*/*.json")):
        if path.name.endswith((".spec.json", ".status.json")):
            continue
        try:
            records.append(JobRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            log.warning("ignoring unreadable local job record %s", path)
    return records


def _remove_files(state_dir: Path, record: JobRecord) -> None:
    for suffix in (".json", ".spec.json", ".status.json"):
        (jobs_dir(state_dir, record.project) / f"{record.name}{suffix}").unlink(missing_ok=True)


def batch_status(state_dir: Path, project: str, name: str) -> dict[str, Any]:
    """A batch job's runs: ``{"runs": n, "finished": n, "running": bool, "last_exit_code": int | None, ...}``."""
    try:
        return json.loads((jobs_dir(state_dir, project) / f"{name}.status.json").read_text())
    except (OSError, ValueError):
        return {"runs": 0, "finished": 0, "running": False, "last_exit_code": None}


def stop_all(state_dir: Path, project: str | None = None) -> list[str]:
    """Stop every local job recorded in ``state_dir`` (of ``project``, or all); the names stopped."""
    stopped = []
    for record in load_records(state_dir):
        if project is not None and record.project != project:
            continue
        if _running(record):
            _stop_process(record, graceful=record.streaming)
            stopped.append(record.name)
        _remove_files(state_dir, record)
    return stopped


# --------------------------------------------------------------------------- the provider


class LocalRunnerProvider:
    """Dataflow jobs of one project, run on this machine. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.DATAFLOW_JOB,)
    # As on Dataflow, so that a plan reads the same on both runners.
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, state_dir: Path, *, python: str = sys.executable,
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
        if Kind(kind) != Kind.DATAFLOW_JOB:
            raise PermanentError(f"localrunner: unsupported kind {kind!r}")
        live = []
        for record in load_records(self.state_dir):
            if record.project != self.project:
                continue
            if _running(record):
                live.append(Resource(Kind.DATAFLOW_JOB, record.name, record.spec, record.labels))
            else:
                log.warning("local job %s has ended (history, not drift); its log: %s", record.name, record.log)
        return live

    def create(self, resource: Resource) -> None:
        with self._lock:
            existing = self._record(resource.name)
            if existing is not None and _running(existing):
                raise AlreadyExists(f"local job {resource.name} is already running (pid {existing.pid})")
            self._launch(resource)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        for name in fields:
            if name in IMMUTABLE_FIELDS[Kind.DATAFLOW_JOB]:
                raise PermanentError(f"{resource.address}: {name!r} cannot change in place (stop and relaunch)")
        with self._lock:
            existing = self._record(resource.name)
            if existing is not None and _running(existing) and set(fields) <= NOT_USED_LOCALLY:
                # Only Dataflow settings changed: the local process does not use them. Record the
                # new spec (so the next plan is clean) and leave the job running.
                existing.spec = json.loads(json.dumps(dict(resource.spec)))
                _write_json(jobs_dir(self.state_dir, self.project) / f"{resource.name}.json", asdict(existing))
                return
            if existing is not None and _running(existing):
                _stop_process(existing, graceful=existing.streaming)
            self._launch(resource)

    def delete(self, resource: Resource) -> None:
        with self._lock:
            record = self._record(resource.name)
            if record is None:
                return
            if _running(record):
                _stop_process(record, graceful=record.streaming)
            _remove_files(self.state_dir, record)

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

    # -- plumbing --

    def _record(self, name: str) -> JobRecord | None:
        path = jobs_dir(self.state_dir, self.project) / f"{name}.json"
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
        _write_json(spec_file, resource.spec["pipeline"])
        (directory / f"{name}.status.json").unlink(missing_ok=True)
        streaming = bool(resource.spec.get("streaming"))
        record_path = directory / f"{name}.json"
        log_path = directory / f"{name}.log"
        record = JobRecord(
            name=name, project=self.project, pid=0, process_start="", streaming=streaming,
            spec=json.loads(json.dumps(dict(resource.spec))), labels=dict(resource.labels),
            argv=pipeline_argv(resource, spec_file.resolve(), self.python), log=str(log_path),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        if not self.run_jobs:
            record.recorded_only = True
            _write_json(record_path, asdict(record))
            return
        # A streaming job is the pipeline process; a batch job is its scheduler.
        argv = record.argv if streaming else [self.python, "-m", "providers.localrunner", str(record_path.resolve())]
        _write_json(record_path, asdict(record))  # the scheduler reads it at start
        with log_path.open("ab") as out:
            out.write(f"--- {record.started_at} launch {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=child_env(self.project), cwd=directory,
                start_new_session=True,  # own process group: stopping reaches the pipeline's children
            )
        _children[proc.pid] = proc
        record.pid = proc.pid
        record.process_start = _process_start(proc.pid) or ""
        _write_json(record_path, asdict(record))


# --------------------------------------------------------------------------- cron

_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_NAMES = (
    {}, {}, {},
    {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
)


def _cron_field(text: str, index: int) -> set[int]:
    low, high = _CRON_RANGES[index]
    names = _CRON_NAMES[index]
    values: set[int] = set()
    for item in text.lower().split(","):
        base, _, step = item.partition("/")
        if base == "*":
            first, last = low, high
        else:
            bounds = [names.get(b, None) if b in names else int(b) for b in base.split("-")]
            first, last = bounds[0], bounds[-1]
            if step and len(bounds) == 1:
                last = high  # "5/15" means from 5 to the end, every 15
        values.update(range(first, last + 1, int(step or 1)))
    if index == 4 and 7 in values:  # Sunday is 0 and 7
        values.add(0)
    return values


def next_tick(expression: str, after: dt.datetime) -> dt.datetime:
    """The first minute strictly after ``after`` that the five-field cron ``expression`` names (UTC).

    Standard cron semantics: when both day of month and day of week are restricted, a day
    matching either one counts.
    """
    parts = expression.split()
    minutes, hours, days, months, weekdays = (_cron_field(p, i) for i, p in enumerate(parts))
    any_day, any_weekday = parts[2] == "*", parts[4] == "*"
    t = after.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    limit = t + dt.timedelta(days=366 * 5)
    while t < limit:
        cron_weekday = (t.weekday() + 1) % 7  # Python: Monday 0; cron: Sunday 0
        if any_day or any_weekday:
            day_ok = t.day in days and cron_weekday in weekdays
        else:
            day_ok = t.day in days or cron_weekday in weekdays
        if t.month not in months:
            t = (t.replace(day=1, hour=0, minute=0) + dt.timedelta(days=32)).replace(day=1)
        elif not day_ok:
            t = t.replace(hour=0, minute=0) + dt.timedelta(days=1)
        elif t.hour not in hours:
            t = t.replace(minute=0) + dt.timedelta(hours=1)
        elif t.minute not in minutes:
            t += dt.timedelta(minutes=1)
        else:
            return t
    raise ValueError(f"cron expression {expression!r} names no time in five years")


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
        _write_json(status_path, status)
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
        _write_json(status_path, status)
        wake.wait(timeout=delay)
    _write_json(status_path, status)
    return 0


if __name__ == "__main__":  # python -m providers.localrunner <record.json>: a batch job's scheduler
    logging.basicConfig(level=logging.INFO)
    sys.exit(_schedule(Path(sys.argv[1])))
