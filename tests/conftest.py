"""Shared fixtures.

Integration tests request ``emulators`` (directly or through another fixture); the three local
emulators then start once for the whole session (~2 s) and the official clients find them
through the ``*_EMULATOR_HOST`` variables. Tests that do not request it never start anything.

Isolation between tests: Pub/Sub and BigQuery keep projects apart, so each test takes a fresh
``project_id``. The Storage emulator has no projects (every client sees every bucket), so bucket
names should start with the per-test ``unique`` prefix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from reconciler import local


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Mark every test that (transitively) uses the emulators, so `-m "not emulators"` runs
    # only the fast unit tests.
    for item in items:
        if "emulators" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulators)


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.Emulators]:
    """The running local emulators; their env vars are set in os.environ for the session.

    With the emulators set, ``apply`` puts Dataflow jobs on the local runner. Tests of the
    reconciler only need them tracked, not run: HEADWATER_LOCAL_JOBS=record (tests that run real
    pipelines say so: the demo, tests/providers/test_localrunner.py). HEADWATER_STATE_DIR keeps
    job records in the session's directory, not the repo's .headwater; whatever a test left
    running is stopped with the emulators.
    """
    from providers import stop_local as stop_all

    state_dir = tmp_path_factory.mktemp("emulators")
    emu = local.start(state_dir, project="hw-test-session")
    env = {**emu.env(), "HEADWATER_STATE_DIR": str(state_dir), "HEADWATER_LOCAL_JOBS": "record"}
    try:
        with local.exported(env):
            yield emu
    finally:
        stop_all(state_dir)
        local.stop(state_dir)


@pytest.fixture
def project_id() -> str:
    """A fresh project id per test: isolates Pub/Sub and BigQuery state between tests."""
    return f"hw-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unique() -> str:
    """A per-test unique, bucket-name-safe prefix, e.g. ``hw-1a2b3c4d``: use f"{unique}-raw"."""
    return f"hw-{uuid.uuid4().hex[:8]}"
