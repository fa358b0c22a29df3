"""Fixtures of the daemon tests: a desired-state repo and a factory of running daemons."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import GIT_TOKEN, WEBHOOK_SECRET, AlertReceiver, DesiredRepo, LogBuffer, emulator_providers

from reconciler.daemon.service import Daemon
from reconciler.daemon.settings import Settings


@pytest.fixture
def desired_repo(tmp_path: Path, project_id: str, unique: str) -> DesiredRepo:
    repo = DesiredRepo(tmp_path / "git", project_id, unique)
    repo.commit_and_push("platform with one source")
    return repo


@pytest.fixture
def alert_receiver() -> Iterator[AlertReceiver]:
    receiver = AlertReceiver()
    yield receiver
    receiver.close()


@dataclasses.dataclass
class Running:
    daemon: Daemon
    logs: LogBuffer

    @property
    def base(self) -> str:
        return f"http://{self.daemon.address}"


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """start_daemon(repo, **settings, daemon_kwargs={...}) → a started daemon, stopped at teardown."""
    started: list[Running] = []

    def start(repo: DesiredRepo, daemon_kwargs: dict | None = None, **overrides) -> Running:
        values = dict(
            repo=repo.url, poll_interval=0.5, drift_interval=1.0, drift_jitter=0.1, listen="127.0.0.1:0",
            cache_dir=tmp_path / f"cache-{uuid.uuid4().hex[:6]}", webhook_secret=WEBHOOK_SECRET,
            git_token=GIT_TOKEN, lease_seconds=3.0, shutdown_grace=5.0,
        )
        values.update(overrides)
        logs = LogBuffer()
        options = {"providers_factory": emulator_providers, **(daemon_kwargs or {})}
        daemon = Daemon(Settings(**values), log_stream=logs, **options)
        daemon.start()
        running = Running(daemon, logs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.daemon.shutdown()
