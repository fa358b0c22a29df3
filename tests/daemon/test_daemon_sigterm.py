"""SIGTERM in the middle of an apply: the daemon as a real subprocess, as Cloud Run runs it
(through `reconciler.daemon.run`, the entry point of `headwater run`; see run_daemon.py).

The desired state has enough sources that the first apply takes a few seconds; the test sends
SIGTERM as soon as the daemon logs that the apply started. The daemon must exit 0 within Cloud
Run's 10 s, release its lease, and a fresh start must converge from whatever was left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from google.cloud import storage
from support import GIT_TOKEN, WEBHOOK_SECRET, DesiredRepo, get_json, wait_for

SOURCES = 30  # ~200 resources: an apply that lasts long enough to be interrupted


class DaemonProcess:
    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("run_daemon.py"))], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.raw: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def seen(self, name: str) -> dict | None:
        return next((e for e in list(self.events) if e.get("event") == name), None)

    @property
    def base(self) -> str:
        return "http://" + wait_for(lambda: self.seen("daemon.started"), what="daemon.started")["listen"]


def many_sources(repo: DesiredRepo, count: int) -> None:
    # Copies of orders without its serving block (reporting views and features are named per source).
    repo.edit_yaml("connectors/orders.yaml", lambda d: d.pop("serving", None))
    connector = repo.read("connectors/orders.yaml")
    schema = repo.read("schemas/orders.json")
    for i in range(count):
        source = f"orders_{i:03d}"
        repo.write(f"connectors/{source}.yaml", connector.replace("source_id: orders", f"source_id: {source}")
                   .replace("schemas/orders.json", f"schemas/{source}.json")
                   .replace("table: orders_daily", f"table: {source}_daily")
                   .replace("/orders/", f"/{source}/"))
        repo.write(f"schemas/{source}.json", schema.replace('"orders"', f'"{source}"'))


@pytest.mark.usefixtures("emulators")
def test_sigterm_during_apply_exits_cleanly_and_the_next_start_converges(tmp_path: Path, project_id, unique):
    repo = DesiredRepo(tmp_path / "git", project_id, unique)
    many_sources(repo, SOURCES)
    revision = repo.commit_and_push(f"{SOURCES + 1} sources")
    lock_bucket = f"{unique}-lock"
    storage.Client(project=project_id).create_bucket(lock_bucket)
    env = dict(os.environ, HEADWATER_REPO=repo.url, HEADWATER_LISTEN="127.0.0.1:0",
               HEADWATER_POLL_INTERVAL="0.5", HEADWATER_DRIFT_INTERVAL="30", HEADWATER_LOCK_BUCKET=lock_bucket,
               HEADWATER_LEASE_SECONDS="15", HEADWATER_CACHE_DIR=str(tmp_path / "cache"),
               HEADWATER_MAX_WORKERS="4", HEADWATER_WEBHOOK_SECRET=WEBHOOK_SECRET, HEADWATER_GIT_TOKEN=GIT_TOKEN,
               PYTHONPATH=f"{Path(__file__).resolve().parents[2]}:{Path(__file__).resolve().parent}")

    first = DaemonProcess(env)
    try:
        wait_for(lambda: first.seen("sync.apply_started"), timeout=30, interval=0.02, what="the apply to start")
        time.sleep(0.3)  # let a few changes go through, others be in flight
        signalled = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=10) == 0
        took = time.monotonic() - signalled
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    time.sleep(0.1)  # the reader thread drains the pipe
    names = [e.get("event") for e in first.events]
    assert took < 10
    assert first.seen("shutdown.requested")["reason"] == "SIGTERM"
    finished = [e for e in first.events if e.get("event") == "sync.finished"]
    assert finished and finished[-1]["result"] == "interrupted", names
    assert "lease.released" in names and names[-1] == "shutdown.complete"
    assert storage.Client(project=project_id).bucket(lock_bucket).get_blob("headwater/applier.lease") is None
    applied = [e for e in first.events if e.get("event") == "apply.change" and e["result"] == "ok"]
    assert applied, "some changes went through before the signal"

    second = DaemonProcess(env)
    try:
        base = second.base
        status = wait_for(lambda: (s := get_json(base, "/status"))["last_sync"] and
                          s["last_sync"]["result"] == "converged" and s, timeout=60, what="convergence")
        assert status["revision"] == revision and status["pending"] == [] and status["drift"]["resources"] == []
        assert status["last_sync"]["plan"]["create"] > 0  # it picked up where the first one stopped
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(timeout=10) == 0
    finally:
        if second.proc.poll() is None:
            second.proc.kill()
    logs = "".join(first.raw + second.raw)
    assert WEBHOOK_SECRET not in logs and GIT_TOKEN not in logs
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
