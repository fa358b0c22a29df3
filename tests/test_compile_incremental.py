"""Issue 14: `compile_resources(state, previous=...)` reuses what each unchanged source compiled
to, and returns exactly what a compile from scratch returns.

Each step edits a copy of the example repo (every ingestion pattern, governance, serving and
monitoring settings), loads it from scratch, and builds the next revision as `load_repo` with
``previous`` does: an unchanged source is the previous revision's very `Source` object, an
unchanged platform its very `Platform`. The incremental compile must equal the compile from
scratch and the plain one-pass compile (`reconciler.compile._compile_plain`), in the same order.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from reconciler import compile as compiler
from reconciler.compile import compile_resources, compiled_index
from reconciler.load import DesiredState, InvalidDesiredState, load_repo
from tests.helpers import clone, connector, copy_example, edit_yaml


def scratch(repo: Path) -> DesiredState | None:
    try:
        state = load_repo(repo)
    except InvalidDesiredState:
        return None
    return DesiredState(state.root, state.platform, state.sources)  # without load's compiled list


def revision(previous: DesiredState, loaded: DesiredState) -> DesiredState:
    """``loaded`` as the next revision of ``previous``: unchanged objects are ``previous``'s."""
    before = {s.source_id: s for s in previous.sources}
    sources = tuple(before[s.source_id] if before.get(s.source_id) == s else s for s in loaded.sources)
    platform = previous.platform if previous.platform == loaded.platform else loaded.platform
    return DesiredState(loaded.root, platform, sources)


class Walk:
    """A sequence of revisions of one repo, each compiled with its predecessor as ``previous``."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.state = scratch(repo)
        assert self.state is not None
        first = compile_resources(self.state)
        assert first == compiler._compile_plain(DesiredState(self.state.root, self.state.platform, self.state.sources))
        assert self.state._compile_memo is not None
        self.derived = 0  # steps whose index was derived from the last one's

    def step(self) -> bool:
        """Compile the repo as it is now against the last revision; False if it does not load."""
        loaded = scratch(self.repo)
        if loaded is None:
            return False
        state = revision(self.state, loaded)
        incremental = compile_resources(state, previous=self.state)
        reference = compiler._compile_plain(DesiredState(loaded.root, loaded.platform, loaded.sources))
        assert [r.address for r in incremental] == [r.address for r in reference]
        assert incremental == reference
        assert compile_resources(DesiredState(loaded.root, loaded.platform, loaded.sources)) == reference
        # By address too, and what changed named without comparing (`compiled_index`).
        index, before = compiled_index(state), compiled_index(self.state)
        assert dict(index) == {r.address: r for r in reference}
        changed = index.changed_since(before)
        if changed is not None:  # (None when compile fell back to compiling everything)
            assert changed == {a for a in index.keys() | before.keys() if index.get(a) is not before.get(a)}
            self.derived += 1
        self.state = state
        return True


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def test_unchanged_revision_reuses_every_source(repo: Path) -> None:
    walk = Walk(repo)
    memo = walk.state._compile_memo
    assert walk.step()
    assert all(walk.state._compile_memo.parts[sid] is memo.parts[sid] for sid in memo.parts)


def test_the_load_compiled_list_still_short_circuits(repo: Path) -> None:
    state = load_repo(repo)
    assert compile_resources(state) == list(state._compiled)


EDITS = {
    "schema description": lambda repo: edit_yaml(connector(repo, "clickstream"), lambda d: d.update(
        description="Clicks, edited")),
    "labels": lambda repo: edit_yaml(connector(repo, "orders"), lambda d: d.update(labels={"team": "shop"})),
    "monitoring": lambda repo: edit_yaml(connector(repo, "payments"), lambda d: d.update(
        monitoring={"sla_minutes": 15, "alert_email": "payments@example.com", "metrics": ["dead_letters"]})),
    "access readers": lambda repo: edit_yaml(connector(repo, "clickstream"), lambda d: d.setdefault(
        "access", {}).update(readers=["analysts", "group:clicks@example.com"])),
    "classify": lambda repo: edit_yaml(connector(repo, "payments"), lambda d: d.update(
        classify={"customer_id": "pii"})),
    "serving off": lambda repo: edit_yaml(connector(repo, "orders"), lambda d: d.pop("serving")),
    "gold aggregate": lambda repo: edit_yaml(connector(repo, "clickstream"), lambda d: d["processing"][
        "silver_to_gold"][0]["aggregate"].update(table="clicks_by_day")),
    "processing": lambda repo: edit_yaml(connector(repo, "payments"), lambda d: d["processing"].update(
        bronze_to_silver=[])),
    "remove cdc": lambda repo: connector(repo, "postgres_orders").unlink(),
    "remove transfer": lambda repo: connector(repo, "aws_data_lake").unlink(),
    "remove api source": lambda repo: connector(repo, "orders").unlink(),
    "add clones": lambda repo: [clone(repo, sid, f"{sid}_b") for sid in ("orders", "clickstream", "payments")],
    "platform": lambda repo: edit_yaml(repo / "platform.yaml", lambda d: d["access"].update(exclusive=True)),
    "platform worker": lambda repo: edit_yaml(repo / "platform.yaml", lambda d: d.update(
        dataflow={"service_account": "df@headwater-demo.iam.gserviceaccount.com"})),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_each_kind_of_edit(repo: Path, edit: str) -> None:
    walk = Walk(repo)
    EDITS[edit](repo)
    assert walk.step(), f"{edit}: the edited repo does not load"


def test_platform_change_compiles_everything_again(repo: Path) -> None:
    walk = Walk(repo)
    memo = walk.state._compile_memo
    EDITS["platform"](repo)
    assert walk.step()
    assert not any(walk.state._compile_memo.parts[sid] is memo.parts.get(sid) for sid in walk.state._compile_memo.parts)


def test_random_walk_of_edits(repo: Path) -> None:
    """Seeded: add, remove and modify sources and platform.yaml in turn, compared at each step."""
    rng = random.Random(14)
    originals = {p.stem: p.read_text() for p in (repo / "connectors").glob("*.yaml")}
    platform = (repo / "platform.yaml").read_text()
    EDITS["platform worker"](repo)  # the workers' grants: datasets shared by every source's jobs
    walk = Walk(repo)
    kinds = sorted(set(EDITS) - {"platform", "platform worker"})
    steps = 0
    for i in range(40):
        choice = rng.random()
        present = sorted(p.stem for p in (repo / "connectors").glob("*.yaml"))
        if choice < 0.55:
            EDITS[rng.choice(kinds)](repo) if all(connector(repo, s).exists() for s in (
                "orders", "clickstream", "payments")) else None
        elif choice < 0.7 and present:
            connector(repo, rng.choice(present)).unlink()
        elif choice < 0.85:
            sid = rng.choice(sorted(originals))
            connector(repo, sid).write_text(originals[sid])
            source = rng.choice(sorted(originals))
            if connector(repo, source).exists() and source not in ("postgres_orders",):
                clone(repo, source, f"{source}_{i}")
        else:
            text = platform if rng.random() < 0.5 else platform.replace("exclusive: false", "exclusive: true")
            (repo / "platform.yaml").write_text(text)
        if walk.step():
            steps += 1
        else:  # an edit that does not validate (e.g. a view of a removed table): back to the originals
            for sid, text in originals.items():
                connector(repo, sid).write_text(text)
            assert walk.step()
    assert steps >= 20 and walk.derived >= 10
