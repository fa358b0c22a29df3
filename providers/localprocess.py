"""Local stand-in processes: what the local runner's jobs and services (`providers.localrunner`)
and the notification watchers (`providers.local_notifications`) share.

A stand-in process outlives the CLI call that started it, so it is known by a JSON record on
disk, not by a handle in memory. The record holds its PID and its start time (field 22 of
``/proc/<pid>/stat``, clock ticks since boot): a PID is reused once its process has ended, and
the start time tells the process the record names from a later one with the same PID, which is
never signalled nor taken for it (`is_alive`).

Each process runs in its own session (`spawn`: ``start_new_session``), so its PID is also its
process group id, and stopping it (`stop_group`) reaches whatever it started itself (a
pipeline's workers, say). The processes that *this* process started are kept in a registry of
their ``Popen`` handles, so an ended one is reaped (no zombies) and its exit code can be read
(`child`). Records are written atomically (`write_json_atomic`): another process (a batch job's
scheduler, a watcher) reads them at start.

A stand-in works only against the emulators it was launched with: records keep the endpoints in
effect at launch (`endpoints_in_effect`), and a process whose endpoints are not the ones in
effect now (another ``headwater local up``, emulators restarted on new ports) is not running as
far as observe is concerned (`stale_endpoints`): it is missing, and the next apply stops it and
launches it anew against the emulators now in effect.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DRAIN_GRACE_S = 10.0  # graceful stop: time to stop after SIGINT before SIGTERM
STOP_GRACE_S = 3.0  # then SIGTERM -> SIGKILL

# Popen handles of the processes this process started, by PID, so ended ones are reaped.
_children: dict[int, subprocess.Popen[bytes]] = {}


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot, or None if there is no such
    process (or it is a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None
    return fields[19]  # field 22 of stat; fields[0] is field 3


def is_alive(pid: int, started: str, *, recorded_only: bool = False) -> bool:
    """Whether the process a record names runs: ``pid`` exists and started at ``started`` (so a
    reused PID does not count). A record-only one (tracked without a process) always counts; a
    child of ours that has ended is reaped here."""
    if recorded_only:
        return True
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        _children.pop(pid, None)  # reaped
        return False
    return process_start(pid) == started


def child(pid: int) -> subprocess.Popen[bytes] | None:
    """The ``Popen`` handle of ``pid`` if this process started it (`spawn`) and has not reaped it yet."""
    return _children.get(pid)


def spawn(argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path, banner: str) -> tuple[int, str]:
    """Start ``argv`` in its own session (PID = process group id), stdin closed, stdout and
    stderr appended to ``log_path`` after the line ``banner``; returns its PID and start time
    (`process_start`; "" if it has already gone), the two a record keeps."""
    with log_path.open("ab") as out:
        out.write(f"{banner}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=dict(env), cwd=cwd,
            start_new_session=True,  # own process group: stopping reaches the process's children
        )
    _children[proc.pid] = proc
    return proc.pid, process_start(proc.pid) or ""


def _signal_group(pid: int, sig: int) -> bool:
    try:
        os.killpg(pid, sig)  # started in its own session: PID = process group id
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(pid: int, started: str, *, graceful: bool, drain_grace_s: float = DRAIN_GRACE_S,
               grace_s: float = STOP_GRACE_S) -> None:
    """Stop the process group of the process a record names: SIGINT and ``drain_grace_s`` to stop
    (``graceful`` only), then SIGTERM and ``grace_s``, each step only while it still runs
    (`is_alive`); then SIGKILL to whatever is left of the group (its own children included), and
    a child of ours is reaped."""
    steps = ([(signal.SIGINT, drain_grace_s)] if graceful else []) + [(signal.SIGTERM, grace_s)]
    for sig, grace in steps:
        if not is_alive(pid, started) or not _signal_group(pid, sig):
            break
        deadline = time.monotonic() + grace
        while is_alive(pid, started) and time.monotonic() < deadline:
            time.sleep(0.05)
    # Whatever is left of the group (a pipeline's own children included) goes now.
    _signal_group(pid, signal.SIGKILL)
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.SubprocessError):
            proc.wait(timeout=grace_s)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` through ``<path>.tmp`` and a rename,
    so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# The endpoints a stand-in talks to: the emulators' (the same variables the client libraries read).
EMULATOR_VARS = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST")


def endpoints_in_effect(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The emulator endpoints set in ``env`` (default: this process's environment)."""
    env = os.environ if env is None else env
    return {var: env[var] for var in EMULATOR_VARS if env.get(var)}


def stale_endpoints(recorded: Mapping[str, str] | None, env: Mapping[str, str] | None = None) -> str | None:
    """Why a stand-in launched against ``recorded`` endpoints cannot work now, or None when they are
    the ones in effect."""
    current = endpoints_in_effect(env)
    if recorded is None:
        return "its record does not say which emulators it was launched against (an older headwater)"
    if dict(recorded) == current:
        return None
    changed = [f"{var} was {recorded.get(var) or 'unset'}, now {current.get(var) or 'unset'}"
               for var in EMULATOR_VARS if recorded.get(var) != current.get(var)]
    return "it runs against emulators that are no longer in effect (" + "; ".join(changed) + ")"
