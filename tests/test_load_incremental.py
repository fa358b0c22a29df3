"""Issue 14: `load_repo(previous=...)` reads again only what a commit changed, and loads exactly
what a load from scratch loads.

Each case edits a copy of the example repo, loads it with and without ``previous``, and checks
(1) the two states are equal (platform, sources, compiled resources) or the two loads fail with
the same problems, and (2) which `Source` objects were reused: the unchanged ones are
``previous``'s very objects, the changed ones are not.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from reconciler.compile import compile_resources
from reconciler.load import RACY_WINDOW_NS, FileStamp, InvalidDesiredState, load_repo
from tests.helpers import copy_example, edit_yaml


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def loaded(repo: Path, previous):
    """``(with previous, from scratch)``: states, or the problems of each failed load."""
    def one(prev):
        try:
            return load_repo(repo, previous=prev)
        except InvalidDesiredState as exc:
            return [str(p) for p in exc.problems]
    return one(previous), one(None)


def reused(state, previous) -> set[str]:
    old = {id(s) for s in previous.sources}
    return {s.source_id for s in state.sources if id(s) in old}


def pretend_loaded(repo: Path, previous, at_ns: int) -> None:
    """As if ``previous``'s load had read the files as they are now, and had begun at ``at_ns``."""
    stamps = {str(p): FileStamp.of(p) for p in repo.rglob("*") if p.is_file()}
    object.__setattr__(previous, "_stamps", stamps)
    object.__setattr__(previous, "_loaded_at_ns", at_ns)


def settle(repo: Path):
    """A previous load of ``repo`` as it is, which began well after its files were last changed
    (as the load of a commit is, long after that commit's files were checked out)."""
    previous = load_repo(repo)
    pretend_loaded(repo, previous, time.time_ns() + RACY_WINDOW_NS + 10**9)
    return previous


def assert_same(state, scratch) -> None:
    assert not isinstance(state, list), state
    assert state == scratch
    assert compile_resources(state) == compile_resources(scratch)


def edit_connector(repo: Path, sid: str, change) -> None:
    edit_yaml(repo / "connectors" / f"{sid}.yaml", change)


def test_an_unchanged_repo_reuses_every_source_and_the_platform(repo):
    previous = settle(repo)
    state, scratch = loaded(repo, previous)
    assert_same(state, scratch)
    assert reused(state, previous) == {s.source_id for s in previous.sources if not s.tables}
    assert state.platform is previous.platform
    assert compile_resources(state) == compile_resources(previous)


@pytest.mark.parametrize("what", ["connector", "schema", "touched, same bytes"])
def test_a_changed_source_is_read_again_the_others_reused(repo, what):
    previous = settle(repo)
    if what == "connector":
        edit_connector(repo, "orders", lambda d: d.setdefault("labels", {}).update({"team": "sales"}))
    elif what == "schema":
        path = repo / "schemas" / "orders.json"
        path.write_text(path.read_text().replace('"Unique order id"', '"The order id"', 1))
    else:
        path = repo / "connectors" / "orders.yaml"
        path.write_text(path.read_text())
    state, scratch = loaded(repo, previous)
    assert_same(state, scratch)
    assert "orders" not in reused(state, previous)
    assert reused(state, previous) == {s.source_id for s in previous.sources if not s.tables} - {"orders"}


def test_a_changed_platform_reads_everything_again(repo):
    previous = settle(repo)
    edit_yaml(repo / "platform.yaml", lambda d: d.setdefault("labels", {}).update({"cost-center": "data"}))
    state, scratch = loaded(repo, previous)
    assert_same(state, scratch)
    assert state.platform is not previous.platform
    assert reused(state, previous) == set()


def test_added_and_removed_sources(repo):
    previous = settle(repo)
    (repo / "connectors" / "payments.yaml").unlink()
    shutil.copy(repo / "connectors" / "shipments.yaml", repo / "connectors" / "returns.yaml")
    edit_connector(repo, "returns", lambda d: (d.update(source_id="returns", schema={"file": "schemas/returns.json"}),
                                          d["ingestion"].update(webhook_path="/hooks/returns")))
    schema = (repo / "schemas" / "shipments.json").read_text().replace('"shipments"', '"returns"')
    (repo / "schemas" / "returns.json").write_text(schema)
    state, scratch = loaded(repo, previous)
    assert_same(state, scratch)
    assert "payments" not in state.source_ids and "returns" in state.source_ids
    assert "returns" not in reused(state, previous)
    assert "shipments" in reused(state, previous)


def test_a_webhook_path_clash_with_an_unchanged_source_is_found(repo):
    """The checks across files run over reused sources too: a new source on the webhook path of
    an unchanged one fails as it would from scratch."""
    previous = settle(repo)
    shutil.copy(repo / "connectors" / "shipments.yaml", repo / "connectors" / "returns.yaml")
    edit_connector(repo, "returns", lambda d: d.update(source_id="returns", schema={"file": "schemas/returns.json"}))
    schema = (repo / "schemas" / "shipments.json").read_text().replace('"shipments"', '"returns"')
    (repo / "schemas" / "returns.json").write_text(schema)
    state, scratch = loaded(repo, previous)
    assert isinstance(state, list) and state == scratch
    assert any("is already the path of" in p for p in state)


def test_a_broken_file_fails_with_the_same_problems_and_reuses_nothing_wrong(repo):
    previous = settle(repo)
    edit_connector(repo, "orders", lambda d: d["silver"].update(cluster_by=["no_such_field"]))
    state, scratch = loaded(repo, previous)
    assert isinstance(state, list) and state == scratch
    assert any("no_such_field" in p for p in state)


def test_a_check_across_files_still_sees_an_unchanged_source(repo):
    """A new source whose source_id collides with an unchanged one's file (orders.yml beside orders.yaml)."""
    previous = settle(repo)
    shutil.copy(repo / "connectors" / "orders.yaml", repo / "connectors" / "orders.yml")
    state, scratch = loaded(repo, previous)
    assert isinstance(state, list) and state == scratch
    assert any("duplicate source_id 'orders'" in p for p in state)


def test_a_file_changed_with_its_old_size_and_mtime_is_read_again(repo):
    """mtime can be set back (``touch -d``, some checkouts); ctime cannot: the stamp differs."""
    path = repo / "connectors" / "orders.yaml"
    path.write_text(path.read_text() + "# aaaa\n")
    previous = settle(repo)
    before = os.stat(path)
    path.write_text(path.read_text().replace("# aaaa", "# bbbb"))  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    state, scratch = loaded(repo, previous)
    assert_same(state, scratch)
    assert "orders" not in reused(state, previous)


def test_a_racily_clean_file_is_read_again(repo):
    """Files changed at the moment the previous load began (within `RACY_WINDOW_NS`) may have
    changed again since without their stamp showing it (timestamp granularity): they are read
    again although their stamps are unchanged (git's "racy git" rule)."""
    previous = load_repo(repo)
    newest = max(max(os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns) for p in repo.rglob("*") if p.is_file())
    pretend_loaded(repo, previous, newest + RACY_WINDOW_NS // 2)
    state, scratch = loaded(repo, previous)
    assert_same(state, scratch)
    assert reused(state, previous) == set()
    pretend_loaded(repo, previous, newest + RACY_WINDOW_NS + 1)  # just outside the window: reused
    assert reused(load_repo(repo, previous=previous), previous)


def test_another_directory_reuses_nothing(repo, tmp_path):
    previous = settle(repo)
    other = copy_example(tmp_path / "other")
    state = load_repo(other, previous=previous)
    assert reused(state, previous) == set()
    assert state.platform is not previous.platform


def test_a_source_whose_schema_is_a_symbolic_link_is_read_again_every_time(repo):
    """A link's target may change without the link changing: never taken as unchanged."""
    schema = repo / "schemas" / "orders.json"
    (repo / "schemas" / "orders.real.json").write_text(schema.read_text())
    schema.unlink()
    schema.symlink_to("orders.real.json")
    previous = settle(repo)
    state, scratch = loaded(repo, previous)
    assert_same(state, scratch)
    assert "orders" not in reused(state, previous)
    assert "payments" in reused(state, previous)


def test_what_git_says_changed_is_read_again_and_nothing_else_even_when_racily_clean(repo):
    """With ``changed`` (the daemon: git diff between the two revisions) no stamp is compared:
    files just written (racily clean) are reused unless git lists them."""
    previous = load_repo(repo)  # files written a moment ago: by stamps alone, nothing is reused
    edit_connector(repo, "orders", lambda d: d.setdefault("labels", {}).update({"team": "sales"}))
    state = load_repo(repo, previous=previous, changed=["connectors/orders.yaml"])
    assert state == load_repo(repo)
    assert reused(state, previous) == {s.source_id for s in previous.sources if not s.tables} - {"orders"}


def test_paths_from_gits_root_when_the_desired_state_is_a_subdirectory(tmp_path):
    checkout = tmp_path / "checkout"
    repo = copy_example(checkout)  # checkout/repo: the desired state, --path repo
    previous = load_repo(repo, within=checkout)
    path = repo / "schemas" / "orders.json"
    path.write_text(path.read_text().replace('"Unique order id"', '"The order id"', 1))
    state = load_repo(repo, within=checkout, previous=previous, changed=["repo/schemas/orders.json"])
    assert state == load_repo(repo, within=checkout)
    assert "orders" not in reused(state, previous) and "payments" in reused(state, previous)


def test_git_mode_still_reads_a_symbolic_link_again(repo):
    """git lists a link's target when it changes, not the link: a link is never reused."""
    schema = repo / "schemas" / "orders.json"
    (repo / "schemas" / "orders.real.json").write_text(schema.read_text())
    schema.unlink()
    schema.symlink_to("orders.real.json")
    previous = load_repo(repo)
    real = repo / "schemas" / "orders.real.json"
    real.write_text(real.read_text().replace('"Unique order id"', '"The order id"', 1))
    state = load_repo(repo, previous=previous, changed=["schemas/orders.real.json"])
    assert state == load_repo(repo)
    assert "orders" not in reused(state, previous)


def test_a_governance_problem_in_the_changed_source_is_found(repo):
    """The per-source governance checks are skipped for reused sources only."""
    previous = settle(repo)
    path = repo / "schemas" / "orders.json"
    path.write_text(path.read_text().replace('"classification": "pii"', '"classification": "pi"', 1))
    state, scratch = loaded(repo, previous)
    assert isinstance(state, list) and state == scratch
    assert any("classification 'pi'" in p for p in state)
