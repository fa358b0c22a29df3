"""Health of what the local runner runs (`providers.base.HealthReporter` for
`providers.localrunner.LocalRunnerProvider`): Dataflow jobs and connectors as local processes.

Everything is read from this machine: the records and logs under the state directory, the
processes, the emulators' ports, a connector's ``/healthz``. Nothing here changes anything.

A **job** (``dataflow_job``):

* a streaming job runs while its process does: Healthy. A process that has ended is Degraded
  ("the pipeline process has ended", with its exit code when this process started it); one
  launched three times or more within `CRASH_LOOP_WINDOW_S` (by the launch lines of its log)
  and down again is *crash-looping*;
* a batch job is its scheduler process (`providers.localrunner`, "batch scheduler") and its
  runs (``<name>.status.json``): Progressing until the first run has finished; Healthy while
  the last run finished with exit code 0; Degraded when it failed ("run 3 failed with exit
  code 1") - crash-looping when the last `CRASH_LOOP_RUNS` runs all failed - and when the
  scheduler itself has ended;
* either way a process that runs against emulators that no longer answer (the endpoints
  recorded at launch do not accept a connection) is Degraded: it is working against nothing.

A **connector** (``cloud_run_service``): Degraded when its process has ended or does not answer
on its port; else what its ``GET /healthz`` says (the connector's contract, connector/README.md:
a poller answers 503 when its last successful poll is older than 3 poll intervals + 5 minutes):
200 Healthy, 503 Degraded with its last outcome and error. ``last_success_at`` is the signal.

Every Degraded verdict carries the error line of the log (the last exception line of the last
launch or run: ``google.api_core.exceptions.NotFound: 404 ...``) and the log's tail
(`reconciler.health.LOG_TAIL_LINES` lines of the last launch or run). Logs are the processes'
own output: the local runner never writes a secret into them (`providers.localrunner`).

A record-only job or connector (``HEADWATER_LOCAL_JOBS=record``) has no process: no verdict.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from providers.localprocess import child
from reconciler.health import LOG_TAIL_LINES, Health, Observation
from reconciler.resources import Kind, Resource

CRASH_LOOP_WINDOW_S = 600.0
CRASH_LOOP_LAUNCHES = 3
CRASH_LOOP_RUNS = 3
LOG_READ_BYTES = 256 * 1024  # of the end of a log: enough for the last launch's traceback
CONNECT_TIMEOUT_S = 0.5
HEALTHZ_TIMEOUT_S = 2.0

# A log's section marks (providers.localrunner / providers.localprocess.spawn).
_LAUNCH = re.compile(r"^--- (\S+) launch ")
_RUN_START = re.compile(r"^--- (\S+) run (\d+): ")
_RUN_END = re.compile(r"^--- (\S+) run (\d+) ended with exit code (-?\d+)")
# The last line of a Python traceback: ``package.module.SomeError: message`` (logging's own
# ``INFO:name:...`` lines are all capitals before the colon, and are not matched).
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z][a-z]\w*(?::\s|$)")


def local_health(runner: Any, resources: Sequence[Resource]) -> dict[str, Observation]:
    """What `providers.localrunner.LocalRunnerProvider` ``runner`` runs, per declared address."""
    observations: dict[str, Observation] = {}
    for resource in resources:
        if resource.kind == Kind.DATAFLOW_JOB:
            observation = job_health(runner, resource.name)
        elif resource.kind == Kind.CLOUD_RUN_SERVICE:
            observation = service_health(runner, resource.name)
        else:
            continue
        if observation is not None:
            observations[resource.address] = observation
    return observations


def job_health(runner: Any, name: str) -> Observation | None:
    from providers.localrunner import _running

    record = runner.record(name)
    if record is None or record.recorded_only:
        return None  # never launched here (the plan says missing), or tracked without a process
    lines = read_tail(Path(record.log))
    proc = child(record.pid)  # before _running, which reaps an ended child of ours
    alive = _running(record)
    dead_endpoints = unreachable(getattr(record, "endpoints", None)) if alive else []
    if dead_endpoints:
        return Observation(Health.DEGRADED, f"runs against emulators that no longer answer ({', '.join(dead_endpoints)})"
                           "; apply after the emulators are back relaunches it", log_tail=tuple(last_section(lines)))
    if record.streaming:
        if alive:
            return Observation(Health.HEALTHY, f"running (pid {record.pid}) since {record.started_at}")
        section = last_section(lines)
        reason = "the pipeline process has ended" + _exit_code(proc)
        launches = recent_launches(lines)
        if launches >= CRASH_LOOP_LAUNCHES:
            reason = (f"crash-looping: launched {launches} times in the last {int(CRASH_LOOP_WINDOW_S // 60)} "
                      f"minutes and ended each time; {reason}")
        error = error_line(section)
        return Observation(Health.DEGRADED, reason + (f": {error}" if error else ""), error=error,
                           log_tail=tuple(section))
    status = runner.status(name)
    section = last_section(lines)
    if not alive:
        error = error_line(section)
        return Observation(Health.DEGRADED, "the batch job's scheduler process has ended" + _exit_code(proc)
                           + (f": {error}" if error else ""), error=error, log_tail=tuple(section))
    code = status.get("last_exit_code")
    if not status.get("finished"):
        return Observation(Health.PROGRESSING, "first run in progress" if status.get("running") else
                           "waiting for its first run")
    if code == 0:
        when = status.get("last_finished_at")
        upcoming = f"; next at {status['next_run_at']}" if status.get("next_run_at") else ""
        running = "; a run is in progress" if status.get("running") else ""
        return Observation(Health.HEALTHY, f"run {status.get('finished')} finished at {when}{running}{upcoming}")
    failed = consecutive_failures(lines)
    run_lines = last_run(lines)
    error = error_line(run_lines)
    reason = f"run {status.get('finished')} failed with exit code {code}"
    if failed >= CRASH_LOOP_RUNS:
        reason = f"crash-looping: the last {failed} runs failed; " + reason
    return Observation(Health.DEGRADED, reason + (f": {error}" if error else ""), error=error,
                       log_tail=tuple(run_lines))


def service_health(runner: Any, name: str) -> Observation | None:
    from providers.localrunner import _running

    record = runner.service_record(name)
    if record is None or record.recorded_only:
        return None
    lines = read_tail(Path(record.log))
    section = last_section(lines)
    proc = child(record.pid)
    if not _running(record):
        error = error_line(section)
        return Observation(Health.DEGRADED, "the connector process has ended" + _exit_code(proc)
                           + (f": {error}" if error else ""), error=error, log_tail=tuple(section))
    dead_endpoints = unreachable(getattr(record, "endpoints", None))
    if dead_endpoints:
        return Observation(Health.DEGRADED, f"runs against emulators that no longer answer ({', '.join(dead_endpoints)})",
                           log_tail=tuple(section))
    status, report = healthz(record.port)
    signals = {"last_success_at": parse_time(report.get("last_success_at"))} if report.get("last_success_at") else {}
    if status is None:
        return Observation(Health.DEGRADED, f"does not answer on port {record.port}", log_tail=tuple(section))
    if status == 200:
        since = f"; last successful poll {report['last_success_at']}" if report.get("last_success_at") else ""
        return Observation(Health.HEALTHY, f"running (pid {record.pid}) on port {record.port}{since}",
                           signals=signals)
    error = report.get("last_error")
    last = report.get("last_success_at") or "never"
    reason = f"/healthz answers {status}: last successful poll {last}, last outcome {report.get('last_outcome')}"
    return Observation(Health.DEGRADED, reason + (f": {error}" if error else ""), error=error, signals=signals,
                       log_tail=tuple(section))


# ---------------------------------------------------------------------- reading (pure helpers)


def read_tail(path: Path, limit: int = LOG_READ_BYTES) -> list[str]:
    """The last lines of a log (its last ``limit`` bytes), or none."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            data = handle.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[1:] if size > limit else lines  # the first line may be cut


def last_section(lines: Sequence[str]) -> list[str]:
    """The lines of the last launch (or, for a batch job, the last run), at most LOG_TAIL_LINES."""
    start = 0
    for index, line in enumerate(lines):
        if _LAUNCH.match(line) or _RUN_START.match(line):
            start = index
    return list(lines[start:])[-LOG_TAIL_LINES:]


def last_run(lines: Sequence[str]) -> list[str]:
    """A batch job's last run: from its start line to its end line (the tail of it)."""
    end = len(lines)
    for index in range(len(lines) - 1, -1, -1):
        if _RUN_END.match(lines[index]):
            end = index + 1
            break
    start = 0
    for index in range(end - 1, -1, -1):
        if _RUN_START.match(lines[index]):
            start = index
            break
    return list(lines[start:end])[-LOG_TAIL_LINES:]


def error_line(lines: Sequence[str]) -> str | None:
    """The last exception line of a traceback among ``lines``, if any."""
    for line in reversed(lines):
        if _ERROR_LINE.match(line) and not line.startswith("Traceback"):
            return line.strip()
    return None


def consecutive_failures(lines: Sequence[str]) -> int:
    """How many of a batch job's last runs in a row ended with a non-zero exit code."""
    failures = 0
    for line in reversed(lines):
        match = _RUN_END.match(line)
        if match:
            if int(match.group(3)) == 0:
                break
            failures += 1
    return failures


def recent_launches(lines: Sequence[str], now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    count = 0
    for line in lines:
        match = _LAUNCH.match(line)
        if match:
            at = parse_time(match.group(1))
            if at is not None and now.timestamp() - at <= CRASH_LOOP_WINDOW_S:
                count += 1
    return count


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


def unreachable(endpoints: Mapping[str, str] | None) -> list[str]:
    """``VAR=host:port`` of the recorded emulator endpoints that do not accept a connection."""
    dead = []
    for variable, value in sorted((endpoints or {}).items()):
        host, port = _host_port(value)
        if port is None:
            continue
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError:
            dead.append(f"{variable}={value}")
    return dead


def healthz(port: int | None) -> tuple[int | None, dict[str, Any]]:
    """``(status, report)`` of a local connector's ``GET /healthz``; ``(None, {})`` if it does not answer."""
    if not port:
        return None, {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz")
    try:
        with urllib.request.urlopen(request, timeout=HEALTHZ_TIMEOUT_S) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None, {}
    try:
        report = json.loads(body)
    except ValueError:
        report = {}
    return status, report if isinstance(report, dict) else {}


def _host_port(value: str) -> tuple[str, int | None]:
    text = value.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        return text, None


def _exit_code(proc: Any) -> str:
    """`` (exit code N)`` of an ended child of this process (unknown for another's)."""
    code = proc.poll() if proc is not None else None
    return f" (exit code {code})" if code is not None else ""
