"""The peers' regression suite: reports filed against other GitOps tools (Terraform's Google
provider, Config Connector, Argo CD, Flux, Pulumi) replayed on headwater, each test named after
the behaviour it protects. Most run the CLI against the local emulators (tests/conftest.py's
session fixture), one source at a time to stay quick."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml, isolate_platform, write_local_secrets

from providers import stop_local
from reconciler import cli


@pytest.fixture
def platform_repo(tmp_path, emulators, project_id, unique):
    """A copy of the example, isolated on the emulators; ``platform_repo(["clickstream"])``."""
    made: list[Path] = []

    def make(sources: list[str]) -> Path:
        repo = copy_example(tmp_path / f"r{len(made)}", sources=sources)
        isolate_platform(repo, project_id, unique)
        # The example's gold joins read tables the example does not declare (reference.customers): not
        # what these replays are about, and a plan refuses a join to a table that does not exist.
        for connector in (repo / "connectors").glob("*.yaml"):
            edit_yaml(connector, lambda d: d.get("processing", {}).update(
                silver_to_gold=[s for s in d.get("processing", {}).get("silver_to_gold", []) if "join" not in s]))
        for connector in (repo / "connectors").glob("*.yaml"):  # nor the serving layer's views and jobs
            edit_yaml(connector, lambda d: (d.pop("serving", None), d.pop("features", None)))
        write_local_secrets()  # what the example's services mount: a plan checks they exist
        made.append(repo)
        return repo

    yield make
    stop_local(Path(os.environ["HEADWATER_STATE_DIR"]), project_id)


@pytest.fixture
def hw(capsys):
    """Run the CLI: ``code, out, err = hw("plan", "--repo", repo)``."""

    def run(*argv: str | Path) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
