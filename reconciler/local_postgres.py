"""A real PostgreSQL on this machine: the source database of ``database_cdc`` sources, locally.

``headwater local up --postgres`` (and the demo, and the CDC tests) start one PostgreSQL server
beside the emulators: Debian's ``postgresql`` package (15 here) with ``postgresql-15-wal2json``
for logical decoding, both installed by ``scripts/setup``. It is a private cluster, never the
system one:

* ``initdb`` into ``<state dir>/postgres/data`` (when the server's user cannot reach the state
  dir - running as root, the server runs as the ``postgres`` user, and a state dir under a 0700
  directory such as pytest's is out of its reach - into a fresh ``/tmp/headwater-postgres-*``
  directory instead, recorded in the state);
* superuser ``headwater`` with a random password (``<state dir>/postgres/password``, 0600, and a
  ``pgpass`` file beside it), ``scram-sha-256`` authentication;
* TCP on 127.0.0.1 only, on a free port; no Unix socket;
* ``wal_level = logical`` and room for replication slots, which the local stand-in for
  Datastream reads (`providers.local_datastream`).

Started and stopped with the emulators (`reconciler.local`): ``stop`` shuts the server down
(fast shutdown) and removes its data directory, as the in-memory emulators forget theirs.
`Postgres.env` gives the standard libpq variables (``PGHOST``, ``PGPORT``, ``PGUSER``,
``PGDATABASE``, ``PGPASSFILE``), so ``psql`` just works after ``eval "$(headwater local up --postgres)"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "postgres.json"
DIR = "postgres"
SUPERUSER = "headwater"
DATABASE = "postgres"
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
RUN_AS = "postgres"  # the server's user when headwater runs as root (PostgreSQL refuses root)

INSTALL = ("PostgreSQL with wal2json is missing: apt-get install -y postgresql postgresql-15-wal2json "
           "(scripts/setup installs both when run as root)")


class PostgresError(Exception):
    """PostgreSQL cannot be started here; the message says why and how to fix it."""


@dataclass
class Postgres:
    """Where the local server listens and how to log in (the password is in ``password_file``)."""

    host: str
    port: int
    user: str
    database: str
    password_file: str
    passfile: str  # a libpq pgpass file for the same login
    data_dir: str
    pid: int
    version: str

    def password(self) -> str:
        return Path(self.password_file).read_text().strip()

    def conninfo(self, database: str | None = None) -> str:
        return (f"host={self.host} port={self.port} user={self.user} dbname={database or self.database} "
                f"password={self.password()} connect_timeout=5")

    def env(self) -> dict[str, str]:
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGDATABASE": self.database,
                "PGPASSFILE": self.passfile}


# --------------------------------------------------------------------------- prerequisites


def binaries() -> Path | None:
    """The ``bin`` directory of the newest installed PostgreSQL that has wal2json, or None."""
    found = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        version = bindir.parent.name
        if (bindir / "initdb").exists() and (bindir / "postgres").exists() \
                and (bindir.parent / "lib" / "wal2json.so").exists():
            found.append((int(version) if version.isdigit() else 0, bindir))
    return max(found)[1] if found else None


def check_prerequisites() -> list[str]:
    return [] if binaries() is not None else [INSTALL]


# --------------------------------------------------------------------------- state


def load(state_dir: Path) -> Postgres | None:
    try:
        return Postgres(**json.loads((Path(state_dir) / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable_by(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether ``user`` can traverse every directory above ``path`` (by the mode bits)."""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- start / stop


def start(state_dir: Path, log_dir: Path | None = None) -> Postgres:
    """Start the local server (or return the one running for ``state_dir``); see the module docstring."""
    state_dir = Path(state_dir).resolve()
    existing = load(state_dir)
    if existing is not None:
        if _alive(existing.pid):
            return existing
        stop(state_dir)  # stale: clear it first
    bindir = binaries()
    if bindir is None:
        raise PostgresError(INSTALL)
    home = state_dir / DIR
    home.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir) if log_dir is not None else state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    runner = pwd.getpwnam(RUN_AS) if as_root else None
    base = home
    if runner is not None and not _reachable_by(runner, home):
        base = Path(tempfile.mkdtemp(prefix="headwater-postgres-"))
    data = base / "data"
    if data.exists():
        shutil.rmtree(data)
    password = secrets.token_urlsafe(18)
    password_file = home / "password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    port = _free_port()
    passfile = home / "pgpass"
    passfile.write_text(f"127.0.0.1:*:*:{SUPERUSER}:{password}\n")
    passfile.chmod(0o600)
    # initdb reads the password from a file the server's user can read; it is removed at once.
    pwfile = base / "initdb-password"
    pwfile.write_text(password + "\n")
    owner = {"user": runner.pw_uid, "group": runner.pw_gid} if runner is not None else {}
    if runner is not None:
        os.chown(base, runner.pw_uid, runner.pw_gid)
        os.chown(pwfile, runner.pw_uid, runner.pw_gid)
    pwfile.chmod(0o600)
    log_path = log_dir / "postgres.log"
    try:
        with log_path.open("wb") as log:
            done = subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                 "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=base, **owner, check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise PostgresError(f"initdb failed (exit {done.returncode}); log {log_path}:\n{_tail(log_path)}")
    settings = {
        "listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": "",
        "wal_level": "logical", "max_replication_slots": "32", "max_wal_senders": "32",
        "shared_buffers": "64MB", "max_connections": "60", "log_min_messages": "warning",
    }
    argv = [str(bindir / "postgres"), "-D", str(data)] + [a for k, v in settings.items() for a in ("-c", f"{k}={v}")]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=base,
                                start_new_session=True, **owner)
    info = Postgres(host="127.0.0.1", port=port, user=SUPERUSER, database=DATABASE,
                    password_file=str(password_file), passfile=str(passfile), data_dir=str(data), pid=proc.pid,
                    version=bindir.parent.name)
    try:
        _wait_ready(info, proc, log_path)
    except BaseException:
        _terminate(proc.pid)
        raise
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2) + "\n")
    tmp.replace(state_dir / STATE_FILE)
    return info


def _wait_ready(info: Postgres, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise PostgresError(f"postgres exited with code {proc.returncode}; log {log_path}:\n{_tail(log_path)}")
        try:
            with psycopg.connect(info.conninfo(), autocommit=True) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise PostgresError(f"postgres did not accept connections within {START_TIMEOUT_S:.0f} s; "
                                    f"log {log_path}:\n{_tail(log_path)}") from None
            time.sleep(0.1)


def _terminate(pid: int) -> None:
    """Fast shutdown (SIGINT: sessions end, the WAL is flushed), then SIGKILL to the process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(state_dir: Path) -> bool:
    """Stop the server recorded in ``state_dir`` and remove its data; True if one was running."""
    state_dir = Path(state_dir)
    info = load(state_dir)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    if info is None:
        return False
    running = _alive(info.pid)
    if running:
        _terminate(info.pid)
    data = Path(info.data_dir)
    shutil.rmtree(data, ignore_errors=True)
    if data.parent.name.startswith("headwater-postgres-"):
        shutil.rmtree(data.parent, ignore_errors=True)
    return running


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
