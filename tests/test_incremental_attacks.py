"""Issue 14, attacked: input sequences where an incremental load, compile or reconcile could
differ from a from-scratch one (a stale source reused, a problem not reported, a wrong plan).

Each case loads a copy of the example repo with ``previous`` (file stamps, or git's list of
changed files as the daemon passes it) and from scratch, and requires the same state and the
same compiled resources, or the same problems. Two cases once failed:

* a file reached through a linked directory (``schemas -> shared/``) was reused in git mode
  although its content changed: git names the target's path, not the path the load read
  (`reconciler.load._Reuse._direct`);
* a gold join of an unchanged source's Silver table that requires a partition filter, added by
  another source, was not reported: the check was made only with the joined source's own
  (skipped) checks (`reconciler.limits._join_problems`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.compile import compile_resources
from reconciler.daemon.gitsource import GitSource
from reconciler.load import RACY_WINDOW_NS, InvalidDesiredState, load_repo
from reconciler.plan import PlanOptions, ReconcileMemo, reconcile
from reconciler.resources import Kind
from tests.helpers import copy_example, edit_yaml
from tests.test_load_incremental import pretend_loaded, reused, settle


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def one(repo: Path, previous=None, changed=None, within=None):
    """A state, or the problems of a failed load."""
    try:
        return load_repo(repo, within=within, previous=previous, changed=changed)
    except InvalidDesiredState as exc:
        return [str(p) for p in exc.problems]


def same(state, scratch) -> None:
    """Equal states (and compiled resources, in order), or equal problems."""
    if isinstance(scratch, list) or isinstance(state, list):
        assert state == scratch
        return
    assert state == scratch
    assert [r.address for r in compile_resources(state)] == [r.address for r in compile_resources(scratch)]
    assert compile_resources(state) == compile_resources(scratch)


def connector(repo: Path, sid: str) -> Path:
    return repo / "connectors" / f"{sid}.yaml"


def snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in repo.rglob("*") if p.is_symlink() or p.is_file()}


def diff(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    """What `git diff --name-only --no-renames` would list between the two snapshots."""
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


# --------------------------------------------------------------------------- symbolic links


def test_git_mode_a_schema_in_a_linked_directory_is_read_again(repo):
    """schemas/ -> real_schemas/: git lists real_schemas/orders.json, the load read schemas/orders.json."""
    shutil.move(repo / "schemas", repo / "real_schemas")
    (repo / "schemas").symlink_to("real_schemas")
    previous = load_repo(repo)
    path = repo / "real_schemas" / "orders.json"
    path.write_text(path.read_text().replace('"Unique order id"', '"The order id"', 1))
    state = one(repo, previous, changed=["real_schemas/orders.json"])
    same(state, one(repo))
    assert "orders" not in reused(state, previous)


def test_git_mode_a_connector_in_a_linked_directory_is_read_again(repo):
    shutil.move(repo / "connectors", repo / "real_connectors")
    (repo / "connectors").symlink_to("real_connectors")
    previous = load_repo(repo)
    edit_yaml(repo / "real_connectors" / "orders.yaml", lambda d: d.setdefault("labels", {}).update(team="sales"))
    state = one(repo, previous, changed=["real_connectors/orders.yaml"])
    same(state, one(repo))
    assert "orders" not in reused(state, previous)


def test_git_mode_a_linked_directory_pointed_elsewhere_is_read_again(repo):
    """Only the link is listed when it is retargeted: the files behind it are new."""
    shutil.copytree(repo / "schemas", repo / "schemas_a")
    shutil.copytree(repo / "schemas", repo / "schemas_b")
    shutil.rmtree(repo / "schemas")
    (repo / "schemas").symlink_to("schemas_a")
    path = repo / "schemas_b" / "orders.json"
    path.write_text(path.read_text().replace('"Unique order id"', '"The order id"', 1))
    previous = load_repo(repo)
    (repo / "schemas").unlink()
    (repo / "schemas").symlink_to("schemas_b")
    state = one(repo, previous, changed=["schemas"])
    same(state, one(repo))


def test_stamp_mode_a_schema_in_a_linked_directory_is_read_again(repo):
    shutil.move(repo / "schemas", repo / "real_schemas")
    (repo / "schemas").symlink_to("real_schemas")
    previous = settle(repo)
    path = repo / "real_schemas" / "orders.json"
    path.write_text(path.read_text().replace('"Unique order id"', '"The order id"', 1))
    state = one(repo, previous)
    same(state, one(repo))
    assert "orders" not in reused(state, previous)


def test_git_mode_an_unlinked_repo_still_reuses(repo):
    """The linked-directory rule costs nothing where there is no link."""
    previous = load_repo(repo)
    edit_yaml(connector(repo, "orders"), lambda d: d.update(description="edited"))
    state = one(repo, previous, changed=["connectors/orders.yaml"])
    same(state, one(repo))
    assert reused(state, previous) == {s.source_id for s in previous.sources if not s.tables} - {"orders"}


# --------------------------------------------------------------------------- checks across sources


def test_a_new_join_of_an_unchanged_sources_filtered_silver_table_is_reported(repo):
    """aws_data_lake's Silver requires a partition filter (valid: it has no aggregate); a commit
    makes orders join it. aws_data_lake is unchanged, orders is not: the problem must show."""
    edit_yaml(connector(repo, "aws_data_lake"), lambda d: d["silver"].update(require_partition_filter=True))
    previous = settle(repo)
    edit_yaml(connector(repo, "orders"),
              lambda d: d["processing"]["silver_to_gold"][0]["join"].update(table="silver.aws_data_lake"))
    state, scratch = one(repo, previous), one(repo)
    assert isinstance(scratch, list) and any("requires a partition filter" in p for p in scratch)
    assert state == scratch
    assert one(repo, previous, changed=["connectors/orders.yaml"]) == scratch  # git mode


def test_a_filter_added_to_a_silver_table_an_unchanged_source_joins_is_reported(repo):
    edit_yaml(connector(repo, "orders"),
              lambda d: d["processing"]["silver_to_gold"][0]["join"].update(table="silver.aws_data_lake"))
    previous = settle(repo)
    edit_yaml(connector(repo, "aws_data_lake"), lambda d: d["silver"].update(require_partition_filter=True))
    state, scratch = one(repo, previous), one(repo)
    assert isinstance(scratch, list) and state == scratch


def test_a_new_landing_prefix_inside_an_unchanged_ones_is_reported(repo):
    previous = settle(repo)
    shutil.copy(connector(repo, "orders"), connector(repo, "orders_eu"))
    schema = json.loads((repo / "schemas" / "orders.json").read_text())
    schema["source_id"] = "orders_eu"
    (repo / "schemas" / "orders_eu.json").write_text(json.dumps(schema))

    def change(d):
        d["source_id"] = "orders_eu"
        d["schema"]["file"] = "schemas/orders_eu.json"
        d["ingestion"]["location"] = d["ingestion"]["location"] + "eu/"
        d.pop("serving", None)
        d["processing"]["silver_to_gold"] = []
    edit_yaml(connector(repo, "orders_eu"), change)
    state, scratch = one(repo, previous), one(repo)
    assert isinstance(scratch, list) and any("overlaps" in p for p in scratch)
    assert state == scratch


def test_a_reporting_view_named_like_an_unchanged_sources_view_is_reported(repo):
    previous = settle(repo)

    def change(d):
        d["serving"]["reporting"] = {"views": [{"name": "orders_by_customer",
                                                "sql": "SELECT event_type, date FROM gold.clickstream_daily"}]}
    edit_yaml(connector(repo, "clickstream"), change)
    state, scratch = one(repo, previous), one(repo)
    assert isinstance(scratch, list)
    assert state == scratch


def test_a_view_reading_another_sources_gold_table_that_goes_away(repo):
    """clickstream's view reads orders' gold table; orders drops its aggregate. clickstream is
    unchanged and reused: whatever the serving check says of it must be said again."""
    def change(d):
        d["serving"]["reporting"] = {"views": [{"name": "clicks_and_orders",
                                                "sql": "SELECT c.date FROM gold.clickstream_daily c "
                                                       "JOIN gold.orders_daily o ON o.date = c.date"}]}
    edit_yaml(connector(repo, "clickstream"), change)
    first = one(repo)
    assert not isinstance(first, list), first
    previous = settle(repo)

    def drop(d):
        d["processing"]["silver_to_gold"] = [s for s in d["processing"]["silver_to_gold"] if "aggregate" not in s]
        d.pop("serving", None)
    edit_yaml(connector(repo, "orders"), drop)
    state, scratch = one(repo, previous), one(repo)
    same(state, scratch)
    if not isinstance(scratch, list):  # allowed: then the view's dependencies must follow
        assert compile_resources(state) == compile_resources(scratch)


def test_a_duplicate_webhook_path_by_editing_an_existing_source(repo):
    """Not a new source: an existing, changed one takes the path of an unchanged one."""
    previous = settle(repo)
    shipments = load_repo(repo).sources[[s.source_id for s in previous.sources].index("shipments")]
    path = shipments.connector.ingestion.webhook_path
    edit_yaml(connector(repo, "payments"), lambda d: d["ingestion"].update(connector_type="webhook",
                                                                          webhook_path=path))
    state, scratch = one(repo, previous), one(repo)
    assert isinstance(scratch, list)
    assert state == scratch


# --------------------------------------------------------------------------- files


def test_a_renamed_connector_file_git_mode(repo):
    previous = load_repo(repo)
    os.rename(connector(repo, "orders"), repo / "connectors" / "orders.yml")
    state = one(repo, previous, changed=["connectors/orders.yaml", "connectors/orders.yml"])
    same(state, one(repo))


def test_a_renamed_schema_file_both_modes(repo):
    previous = settle(repo)
    before = snapshot(repo)
    os.rename(repo / "schemas" / "orders.json", repo / "schemas" / "orders_v2.json")
    edit_yaml(connector(repo, "orders"), lambda d: d["schema"].update(file="schemas/orders_v2.json"))
    same(one(repo, previous), one(repo))
    same(one(repo, previous, changed=diff(before, snapshot(repo))), one(repo))


def test_a_schema_file_swapped_for_another_sources(repo):
    """orders now names payments' schema (a source_id mismatch), payments unchanged."""
    previous = settle(repo)
    edit_yaml(connector(repo, "orders"), lambda d: d["schema"].update(file="schemas/payments.json"))
    state, scratch = one(repo, previous), one(repo)
    assert isinstance(scratch, list) and state == scratch


def test_a_source_deleted_then_added_back_with_the_same_bytes(repo):
    previous = settle(repo)
    text = connector(repo, "orders").read_text()
    connector(repo, "orders").unlink()
    middle = one(repo, previous)
    same(middle, one(repo))
    pretend_loaded(repo, middle, time.time_ns() + RACY_WINDOW_NS + 10**9)
    connector(repo, "orders").write_text(text)
    state = one(repo, middle)
    same(state, one(repo))
    assert "orders" not in reused(state, middle)


def test_touched_files_without_a_content_change(repo):
    previous = settle(repo)
    for path in [connector(repo, "orders"), repo / "schemas" / "payments.json", repo / "platform.yaml"]:
        os.utime(path)
    same(one(repo, previous), one(repo))
    same(one(repo, previous, changed=[]), one(repo))  # git: nothing changed


def test_a_cdc_table_schema_edit_git_mode(repo):
    previous = load_repo(repo)
    path = repo / "schemas" / "postgres_orders.customers.json"
    data = json.loads(path.read_text())
    data["fields"][-1]["description"] = "edited in a commit"
    path.write_text(json.dumps(data))
    state = one(repo, previous, changed=["schemas/postgres_orders.customers.json"])
    same(state, one(repo))


def test_a_subdirectory_desired_state_git_mode(tmp_path):
    checkout = tmp_path / "checkout"
    repo = copy_example(checkout)
    (checkout / "other").mkdir()
    previous = load_repo(repo, within=checkout)
    edit_yaml(connector(repo, "payments"), lambda d: d.update(description="edited"))
    # A file of the same name outside the desired state: not this one.
    state = one(repo, previous, changed=["repo/connectors/payments.yaml", "connectors/orders.yaml"], within=checkout)
    same(state, one(repo, within=checkout))
    assert "payments" not in reused(state, previous) and "orders" in reused(state, previous)


def test_a_subdirectory_reached_through_a_link(tmp_path):
    """--path deploy, deploy -> repo: git lists repo/...; the load resolves the root."""
    checkout = tmp_path / "checkout"
    repo = copy_example(checkout)
    (checkout / "deploy").symlink_to("repo")
    previous = load_repo(checkout / "deploy", within=checkout)
    edit_yaml(connector(repo, "payments"), lambda d: d.update(description="edited"))
    state = one(checkout / "deploy", previous, changed=["repo/connectors/payments.yaml"], within=checkout)
    same(state, one(checkout / "deploy", within=checkout))
    assert "payments" not in reused(state, previous)


# --------------------------------------------------------------------------- the daemon's sequence over git


def git(work: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(work), *args], check=True, capture_output=True, text=True).stdout


def commit(work: Path, message: str) -> str:
    git(work, "add", "-A")
    git(work, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", message)
    return git(work, "rev-parse", "HEAD").strip()


def daemon_load(source: GitSource, sha: str, previous):
    """`reconciler.daemon.service.Daemon._load`'s steps, desired state at --path repo."""
    root = source.checkout(sha)
    changed = source.changed_files(previous.revision, sha) if previous and previous.revision else None
    return one(root / "repo", previous, changed, within=root), root


def test_an_invalid_commit_then_a_valid_one_over_git(tmp_path):
    """A valid, B (edits payments, breaks orders), C (repairs orders only): C's load takes what
    changed since A (the last load that passed), not since B - payments must be B's."""
    work = tmp_path / "work"
    work.mkdir()
    desired = copy_example(work)  # work/repo: --path repo
    git(work, "init", "-q", "-b", "main")
    a = commit(work, "A")
    source = GitSource(str(work), "main", tmp_path / "cache")
    assert source.fetch() == a
    state_a, _ = daemon_load(source, a, None)
    assert not isinstance(state_a, list), state_a
    edit_yaml(connector(desired, "payments"), lambda d: d.update(description="changed in B"))
    good = connector(desired, "orders").read_text()
    edit_yaml(connector(desired, "orders"), lambda d: d["silver"].update(cluster_by=["no_such_field"]))
    b = commit(work, "B")
    assert source.fetch() == b
    assert isinstance(daemon_load(source, b, state_a)[0], list)
    connector(desired, "orders").write_text(good)
    c = commit(work, "C")
    assert source.fetch() == c
    state_c, root = daemon_load(source, c, state_a)
    same(state_c, one(root / "repo", within=root))
    payments = next(s for s in state_c.sources if s.source_id == "payments")
    assert payments.connector.description == "changed in B"


def test_a_force_push_falls_back_to_stamps(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    desired = copy_example(work)
    git(work, "init", "-q", "-b", "main")
    commit(work, "A")
    edit_yaml(connector(desired, "orders"), lambda d: d.update(description="B"))
    b = commit(work, "B")
    source = GitSource(str(work), "main", tmp_path / "cache")
    assert source.fetch() == b
    state_b, root = daemon_load(source, b, None)
    git(work, "reset", "-q", "--hard", "HEAD~1")  # B is rewritten away
    edit_yaml(connector(desired, "orders"), lambda d: d.update(description="B prime"))
    b2 = commit(work, "B prime")
    assert source.fetch() == b2
    state, root = daemon_load(source, b2, state_b)  # git may still hold B: then its diff is exact
    same(state, one(root / "repo", within=root))
    state = one(root / "repo", state_b, None, within=root)  # B gone: file stamps decide
    same(state, one(root / "repo", within=root))
    assert next(s for s in state.sources if s.source_id == "orders").connector.description == "B prime"


def test_a_linked_schema_directory_over_git(tmp_path):
    """The daemon's sequence with schemas/ a link committed to git: an edit of the target."""
    work = tmp_path / "work"
    work.mkdir()
    desired = copy_example(work)
    shutil.move(desired / "schemas", desired / "real_schemas")
    (desired / "schemas").symlink_to("real_schemas")
    git(work, "init", "-q", "-b", "main")
    a = commit(work, "A")
    source = GitSource(str(work), "main", tmp_path / "cache")
    source.fetch()
    state_a, _ = daemon_load(source, a, None)
    assert not isinstance(state_a, list), state_a
    path = desired / "real_schemas" / "orders.json"
    path.write_text(path.read_text().replace('"Unique order id"', '"The order id"', 1))
    b = commit(work, "B")
    source.fetch()
    state_b, root = daemon_load(source, b, state_a)
    same(state_b, one(root / "repo", within=root))


# --------------------------------------------------------------------------- a random walk, git mode


def _clone_source(repo: Path, sid: str, new: str) -> None:
    from tests.test_compile_incremental import clone

    clone(repo, sid, new)


def edit_source(repo: Path, sid: str, change) -> None:
    if connector(repo, sid).exists():
        edit_yaml(connector(repo, sid), change)


WALK_EDITS = {
    "description": lambda repo, rng: edit_source(repo, rng.choice(["orders", "payments", "clickstream"]),
                                               lambda d: d.update(description=f"d{rng.random()}")),
    "schema field description": lambda repo, rng: _schema_description(repo, rng),
    "classify": lambda repo, rng: edit_source(repo, "payments", lambda d: d.update(
        classify={"customer_id": rng.choice(["pii", "pi"])})),
    "labels": lambda repo, rng: edit_source(repo, rng.choice(["orders", "shipments"]),
                                          lambda d: d.update(labels={"team": rng.choice(["a", "b", "BAD KEY"])})),
    "alert email": lambda repo, rng: edit_source(repo, rng.choice(["orders", "payments"]), lambda d: d[
        "monitoring"].update(alert_email=rng.choice(["data-team@example.com", "other@example.com"]))),
    "readers": lambda repo, rng: edit_source(repo, "clickstream", lambda d: d.setdefault(
        "access", {}).update(readers=[rng.choice(["analysts", "group:x@example.com", "nosuchtier"])])),
    "filter": lambda repo, rng: edit_source(repo, "aws_data_lake", lambda d: d["silver"].update(
        require_partition_filter=rng.random() < 0.5)),
    "join": lambda repo, rng: edit_source(repo, "orders", lambda d: d["processing"]["silver_to_gold"][0][
        "join"].update(table=rng.choice(["reference.customers", "silver.aws_data_lake"]))),
    "webhook": lambda repo, rng: edit_source(repo, "shipments", lambda d: d["ingestion"].update(
        webhook_path=rng.choice(["/webhooks/shipments", "/webhooks/other"]))),
    "platform": lambda repo, rng: edit_yaml(repo / "platform.yaml", lambda d: d.setdefault("labels", {}).update(
        {"cost-center": rng.choice(["a", "b"])})),
}


def _schema_description(repo: Path, rng: random.Random) -> None:
    sid = rng.choice(["orders", "payments", "shipments"])
    path = repo / "schemas" / f"{sid}.json"
    if not path.exists():
        return
    data = json.loads(path.read_text())
    data["fields"][0]["description"] = rng.choice(["x", "y" * 2000, "z"])
    path.write_text(json.dumps(data, indent=1))


@pytest.mark.parametrize("seed", [1, 2])
def test_random_walk_git_mode_equals_scratch(repo, seed):
    """Edits (some invalid), removals and clones; each step loaded with ``previous`` (the last
    valid load) and git's list of changed files since it, compared with a load from scratch."""
    rng = random.Random(seed)
    originals = snapshot(repo)
    previous = load_repo(repo)
    base = snapshot(repo)
    steps = invalid = 0
    for i in range(25):
        choice = rng.random()
        if choice < 0.7:
            WALK_EDITS[rng.choice(sorted(WALK_EDITS))](repo, rng)
        elif choice < 0.8:
            present = sorted(p.stem for p in (repo / "connectors").glob("*.yaml"))
            connector(repo, rng.choice(present)).unlink()
        elif choice < 0.9 and connector(repo, "payments").exists():
            _clone_source(repo, "payments", f"payments_{i}")
        else:  # back to the originals
            for rel in snapshot(repo).keys() - originals.keys():
                (repo / rel).unlink()
            for rel, data in originals.items():
                (repo / rel).write_bytes(data)
        now = snapshot(repo)
        state, scratch = one(repo, previous, changed=diff(base, now)), one(repo)
        same(state, scratch)
        if isinstance(state, list):
            invalid += 1
        else:
            previous, base = state, now
            steps += 1
    assert steps >= 5 and invalid >= 1


# --------------------------------------------------------------------------- the reconcile memo


def _live_from(desired, rng: random.Random):
    """A live state near ``desired``: most resources as declared, some drifted, missing, or
    orphans (managed, no longer declared)."""
    import dataclasses

    live = []
    for r in desired:
        roll = rng.random()
        if roll < 0.05:
            continue
        if roll < 0.1 and r.spec:
            key = sorted(r.spec)[0]
            live.append(dataclasses.replace(r, spec={**r.spec, key: "drifted"}))
        else:
            live.append(r)
    return live


def test_plan_options_and_orphans_with_a_memo_plan_as_without(repo):
    """prune / allow_destroy / adopt toggled between plans, orphans appearing and going, the
    same desired objects throughout: the memo's plans equal plans without it."""
    import dataclasses

    state = load_repo(repo)
    desired = compile_resources(state)
    rng = random.Random(7)
    live = _live_from(desired, rng)
    removed = [r for r in desired if r.labels.get("headwater-source") == "orders"]
    memo = ReconcileMemo()
    immutable = {Kind.BIGQUERY_TABLE: frozenset({"partitioning"}), Kind.PUBSUB_TOPIC: frozenset({"message_retention"})}
    sequence = [
        (desired, live, PlanOptions()),
        (desired, live, PlanOptions(prune=True)),
        ([r for r in desired if r not in removed], live, PlanOptions(prune=True)),
        ([r for r in desired if r not in removed], live, PlanOptions(prune=True, allow_destroy=True)),
        ([r for r in desired if r not in removed], live, PlanOptions(prune=False)),
        (desired, live, PlanOptions(adopt=frozenset({desired[0].address}))),
        (desired, [dataclasses.replace(r, labels={}) if i % 7 == 0 else r for i, r in enumerate(live)],
         PlanOptions(adopt=frozenset({desired[0].address}))),
        (desired, live, PlanOptions()),
    ]
    for want, have, options in sequence:
        fields = {k: frozenset(v) for k, v in immutable.items()}  # a new, equal mapping each time
        with_memo = reconcile(want, have, fields, options, memo=memo)
        without = reconcile(want, have, fields, options)
        assert with_memo.changes == without.changes
        assert with_memo.refused == without.refused
