"""Local emulators: a laptop-sized stand-in for the GCP services headwater manages.

``headwater local up`` and the integration tests run the reconciler against three emulators
instead of a real project. Each runs as a child process bound to 127.0.0.1 on a free port:

* **Pub/Sub** - Google's own emulator shipped with the gcloud SDK (a Java program). We run
  its launcher script ``platform/pubsub-emulator/bin/cloud-pubsub-emulator`` directly rather
  than ``gcloud beta emulators pubsub start``: the script ``exec``s java, so the PID we hold is
  the JVM's, while killing the gcloud wrapper would leave the JVM orphaned.
* **Cloud Storage** - ``gcp-storage-emulator`` (PyPI), in memory.
* **BigQuery** - ``bqemulator`` (PyPI, backed by DuckDB), ephemeral. It loads DuckDB's
  ``spatial`` extension at start and would download it; offline, the extension must have been
  installed beforehand from the ``duckdb-extension-spatial`` package (``scripts/setup`` does it).

Beside them, a real source for the local stand-in of Storage Transfer (issue 10):

* **S3** - moto's standalone server (``moto_server``, PyPI ``moto[server]``), in memory, speaking
  the S3 API: a ``cloud_transfer`` source's bucket lives there, and `providers.local_transfer`
  copies from it. Not a GCP emulator: it plays the other cloud.

Clients find the emulators through the usual environment variables (``PUBSUB_EMULATOR_HOST``,
``STORAGE_EMULATOR_HOST``, ``BIGQUERY_EMULATOR_HOST``; AWS SDKs ``AWS_ENDPOINT_URL_S3``), see
:meth:`Emulators.env`.

``start`` records what it launched (addresses and PIDs) in ``<state_dir>/emulators.json`` so a
later command - another CLI invocation, a test session - can find or ``stop`` them. Every child
gets its own process group, so stopping kills the whole tree (launcher scripts included).

Project scoping, as checked against these versions:

* Pub/Sub and BigQuery serve *any* project id, not only the one passed to ``start``, and keep
  projects apart: a dataset created in project ``a`` is invisible to ``list_datasets`` in project
  ``b`` and the same dataset id can exist in both. bqemulator's ``--project`` is only the default
  for requests that omit one. A fresh project id per test is therefore enough to isolate tests.
* The Storage emulator has no project scoping: every client sees every bucket, so tests need
  unique bucket names instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from reconciler import local_postgres

STATE_FILE = "emulators.json"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 3.0

# Handles of the children this process started, by PID, so stop() can reap them (no zombies,
# no "subprocess still running" warnings) when start and stop happen in the same process.
_children: dict[int, subprocess.Popen[bytes]] = {}

# Relative to the gcloud SDK root.
PUBSUB_LAUNCHER = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
# The DuckDB extensions bqemulator loads at start: spatial is mandatory, avro best-effort.
DUCKDB_EXTENSIONS = ("spatial", "avro")

INSTALL_JAVA = "Java 17 is missing: apt-get install -y openjdk-17-jre-headless"
INSTALL_PUBSUB = (
    "the Pub/Sub emulator is missing: gcloud components install pubsub-emulator "
    "(or apt-get install -y google-cloud-cli-pubsub-emulator when gcloud comes from apt)"
)
INSTALL_GCLOUD = (
    "the gcloud CLI (which ships the Pub/Sub emulator) is missing: apt-get install -y "
    "google-cloud-cli google-cloud-cli-pubsub-emulator (see https://cloud.google.com/sdk/docs/install)"
)
INSTALL_PYTHON_EXTRAS = "pip install -e '.[local]' (or run scripts/setup)"
INSTALL_EXTENSIONS = (
    "DuckDB's spatial/avro extensions are not installed, and bqemulator cannot download them "
    "offline: run scripts/setup (it INSTALLs the extension files shipped in the "
    "duckdb-extension-spatial and duckdb-extension-avro packages into ~/.duckdb)"
)


class LocalSetupError(Exception):
    """Something needed to run the emulators is missing or broken; the message says how to fix it."""


@dataclass
class Emulators:
    """Where the running emulators listen. JSON-serializable (see ``emulators.json``)."""

    pubsub_host: str  # "127.0.0.1:PORT", the form PUBSUB_EMULATOR_HOST wants (no scheme)
    storage_host: str  # "http://127.0.0.1:PORT"
    bigquery_host: str  # "http://127.0.0.1:PORT"
    project: str
    pids: dict[str, int] = field(default_factory=dict)
    s3_host: str = ""  # "http://127.0.0.1:PORT": moto's S3 server (cloud_transfer sources), AWS_ENDPOINT_URL_S3
    # database_cdc (issue 10): the local PostgreSQL's libpq variables (reconciler/local_postgres.py);
    # empty when it is not installed. Its process is not in `pids`: local_postgres stops it.
    postgres: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """Environment variables that point the official clients at the emulators."""
        env = {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "STORAGE_EMULATOR_HOST": self.storage_host,
            "BIGQUERY_EMULATOR_HOST": self.bigquery_host,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }
        if self.s3_host:  # AWS SDKs (boto3 >= 1.28) take the S3 endpoint from it
            env["AWS_ENDPOINT_URL_S3"] = self.s3_host
        env.update(self.postgres)  # PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSFILE: psql just works
        return env


@dataclass
class _Spec:
    """How to launch one emulator and how to tell that it is ready."""

    name: str
    argv: list[str]
    ready_url: str
    ready: Callable[[str], bool]


# --------------------------------------------------------------------------- prerequisites


def _venv_bin() -> Path:
    # The emulators installed from PyPI live next to the interpreter running us. Not resolved:
    # a venv's python is a symlink to the base interpreter, whose bin/ lacks them.
    return Path(sys.executable).parent


@cache
def _gcloud_sdk_root() -> Path | None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    # Cheap path first: gcloud is <sdk_root>/bin/gcloud, often behind a symlink such as
    # /usr/bin/gcloud -> ../lib/google-cloud-sdk/bin/gcloud (the Debian package).
    candidate = Path(gcloud).resolve().parent.parent
    if (candidate / PUBSUB_LAUNCHER).exists():
        return candidate
    # Unusual layouts: ask gcloud itself (takes ~1 s, so only as a fallback).
    try:
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return candidate
    return Path(out) if out else candidate


def _missing_duckdb_extensions() -> list[str] | None:
    """Extensions bqemulator needs that are not installed; None if duckdb itself is missing."""
    try:
        import duckdb
    except ImportError:
        return None
    with duckdb.connect() as con:
        installed = {
            name
            for name, ok in con.execute(
                "SELECT extension_name, installed FROM duckdb_extensions()"
            ).fetchall()
            if ok
        }
    return [ext for ext in DUCKDB_EXTENSIONS if ext not in installed]


def check_prerequisites() -> list[str]:
    """Instructions for everything missing to run the emulators; empty when all is there."""
    problems: list[str] = []
    java_home = os.environ.get("JAVA_HOME")
    # The launcher script uses $JAVA_HOME/bin/java when set, else java from PATH.
    if not (java_home and (Path(java_home) / "bin" / "java").exists()) and shutil.which("java") is None:
        problems.append(INSTALL_JAVA)
    sdk_root = _gcloud_sdk_root()
    if sdk_root is None:
        problems.append(INSTALL_GCLOUD)
    elif not (sdk_root / PUBSUB_LAUNCHER).exists():
        problems.append(INSTALL_PUBSUB)
    for exe, package in (("gcp-storage-emulator", "gcp-storage-emulator"), ("bqemulator", "bqemulator"),
                         ("moto_server", "moto[server]")):
        if not (_venv_bin() / exe).exists():
            problems.append(f"{package} is missing from {_venv_bin().parent}: {INSTALL_PYTHON_EXTRAS}")
    missing = _missing_duckdb_extensions()
    if missing is None:
        problems.append(f"the duckdb Python package is missing: {INSTALL_PYTHON_EXTRAS}")
    elif missing:
        problems.append(INSTALL_EXTENSIONS)
    return problems


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    # The OS picks a free port; there is a small race until the emulator binds it, which is
    # acceptable for a developer machine (a clash shows up as a start failure with its log).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers signal 0.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return status != "Z"
    return True


def _kill_groups(pids: dict[str, int]) -> bool:
    """SIGTERM each process group, then SIGKILL whatever is still alive after a grace period."""
    signalled = []
    for pid in pids.values():
        # Children were started with start_new_session=True: the PID is also the group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            signalled.append(pid)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(_alive(p) for p in signalled) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in signalled:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for pid in pids.values():
        proc = _children.pop(pid, None)
        if proc is not None:
            with contextlib.suppress(subprocess.SubprocessError):
                proc.wait(timeout=STOP_GRACE_S)
    return bool(signalled)


def _http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _specs(project: str) -> tuple[list[_Spec], Emulators]:
    sdk_root = _gcloud_sdk_root()
    assert sdk_root is not None  # check_prerequisites ran first
    ps, gcs, bq, bq_grpc, s3 = (_free_port() for _ in range(5))
    specs = [
        _Spec(
            "pubsub",
            [str(sdk_root / PUBSUB_LAUNCHER), "--host=127.0.0.1", f"--port={ps}"],
            f"http://127.0.0.1:{ps}/",
            lambda body: body.strip() == "Ok",
        ),
        _Spec(
            "storage",
            [str(_venv_bin() / "gcp-storage-emulator"), "start", "--host=127.0.0.1", f"--port={gcs}", "--in-memory"],
            f"http://127.0.0.1:{gcs}/",
            lambda body: body.strip() == "OK",
        ),
        _Spec(
            "bigquery",
            [
                str(_venv_bin() / "bqemulator"), "start",
                "--rest-host", "127.0.0.1", "--rest-port", str(bq),
                "--grpc-host", "127.0.0.1", "--grpc-port", str(bq_grpc),
                "--ephemeral", "--project", project,
            ],
            f"http://127.0.0.1:{bq}/readyz",
            lambda body: '"ok"' in body,
        ),
        _Spec(  # cloud_transfer's source (issue 10): moto's S3 server, in memory
            "s3",
            [str(_venv_bin() / "moto_server"), "-H", "127.0.0.1", "-p", str(s3)],
            f"http://127.0.0.1:{s3}/",
            lambda body: "ListAllMyBucketsResult" in body,
        ),
    ]
    emulators = Emulators(
        pubsub_host=f"127.0.0.1:{ps}",
        storage_host=f"http://127.0.0.1:{gcs}",
        bigquery_host=f"http://127.0.0.1:{bq}",
        project=project,
        s3_host=f"http://127.0.0.1:{s3}",
    )
    return specs, emulators


def _start_failure(name: str, log: Path, reason: str) -> LocalSetupError:
    tail = _log_tail(log)
    if name == "bigquery" and "spatial extension is required" in tail:
        return LocalSetupError(f"the BigQuery emulator could not load DuckDB's spatial extension: {INSTALL_EXTENSIONS}")
    return LocalSetupError(f"the {name} emulator {reason} (log {log}):\n{tail}")


# --------------------------------------------------------------------------- public API


@contextlib.contextmanager
def exported(env: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore what was there."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load(state_dir: Path) -> Emulators | None:
    """The emulators recorded in ``state_dir``, or None if there is no (readable) state file."""
    try:
        data = json.loads((Path(state_dir) / STATE_FILE).read_text())
        return Emulators(**data)
    except (OSError, ValueError, TypeError):
        return None


def start(state_dir: Path, project: str = "headwater-local", log_dir: Path | None = None,
          postgres: bool | None = None) -> Emulators:
    """Start the three emulators (or return the ones already running for ``state_dir``).

    ``postgres``: also start the local PostgreSQL (`reconciler.local_postgres`, the source of
    database_cdc sources): None (the default) when it is installed, True always (LocalSetupError
    when it is missing), False never.
    """
    emulators = _start_emulators(state_dir, project, log_dir)
    if postgres is False or (postgres is None and local_postgres.binaries() is None):
        return emulators
    if emulators.postgres and local_postgres.load(Path(state_dir)) is None:
        return emulators  # running emulators that record a PostgreSQL kept elsewhere: theirs, reused
    try:
        info = local_postgres.start(Path(state_dir), log_dir)
    except local_postgres.PostgresError as exc:
        raise LocalSetupError(f"cannot start the local PostgreSQL: {exc}") from None
    if emulators.postgres != info.env():
        emulators.postgres = info.env()
        _write_state(Path(state_dir), emulators)
    return emulators


def _write_state(state_dir: Path, emulators: Emulators) -> None:
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(emulators), indent=2) + "\n")
    tmp.replace(state_dir / STATE_FILE)


def _start_emulators(state_dir: Path, project: str, log_dir: Path | None) -> Emulators:
    """The emulators of `start`.

    Waits until each answers its readiness probe, then records them in
    ``state_dir/emulators.json``. Raises LocalSetupError naming the emulator and showing the
    tail of its log when one fails to come up; whatever was started is stopped again.
    """
    state_dir = Path(state_dir)
    existing = load(state_dir)
    if existing is not None:
        if existing.pids and all(_alive(pid) for pid in existing.pids.values()):
            return existing
        # Stale or half-dead set from an earlier run: clear it before starting afresh.
        stop(state_dir)

    problems = check_prerequisites()
    if problems:
        raise LocalSetupError("cannot start the local emulators:\n- " + "\n- ".join(problems))

    log_dir = Path(log_dir) if log_dir is not None else state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    specs, emulators = _specs(project)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    try:
        # Launch all, then wait for all: the JVM and the two Python servers boot concurrently.
        for spec in specs:
            logs[spec.name] = log_dir / f"{spec.name}.log"
            with logs[spec.name].open("wb") as log:
                procs[spec.name] = subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=state_dir,  # keeps any stray files the emulators write out of the repo root
                    start_new_session=True,  # own process group, so stop() can kill the whole tree
                )
            _children[procs[spec.name].pid] = procs[spec.name]
        emulators.pids = {name: proc.pid for name, proc in procs.items()}

        pending = {spec.name: spec for spec in specs}
        deadline = time.monotonic() + START_TIMEOUT_S
        while pending:
            for name, spec in list(pending.items()):
                if procs[name].poll() is not None:
                    raise _start_failure(name, logs[name], f"exited with code {procs[name].returncode}")
                body = _http_get(spec.ready_url)
                if body is not None and spec.ready(body):
                    del pending[name]
            if pending and time.monotonic() > deadline:
                name = next(iter(pending))
                raise _start_failure(name, logs[name], f"did not answer {pending[name].ready_url} within {START_TIMEOUT_S:.0f} s")
            if pending:
                time.sleep(0.1)
    except BaseException:
        _kill_groups({name: proc.pid for name, proc in procs.items()})
        raise

    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(emulators), indent=2) + "\n")
    tmp.replace(state_dir / STATE_FILE)
    return emulators


def stop(state_dir: Path) -> bool:
    """Stop the emulators recorded in ``state_dir`` and remove the state file.

    Returns True if at least one process was signalled.
    """
    state_file = Path(state_dir) / STATE_FILE
    emulators = load(state_dir)
    stopped = _kill_groups(emulators.pids) if emulators is not None else False
    stopped = local_postgres.stop(Path(state_dir)) or stopped  # database_cdc's source (issue 10)
    state_file.unlink(missing_ok=True)
    return stopped
