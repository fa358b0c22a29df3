"""Issue 14: a git-mode load (`load_repo(previous=, changed=)`) reads and checks only the files
the commit changed, against what the previous state's index knows of the other sources
(`reconciler.load._load_changed`), and loads exactly what a load from scratch loads.

Each case edits a copy of the example repo, names the changed files as git would (a snapshot
diff), and requires the same state (and compiled resources) or the same problems as from
scratch; it also says which way the load went: the delta (``_load_changed``) or, for anything
it cannot tell alone - a problem, a platform change, a link -, the load of every file
(``_load_all``). The clashes across files are each tried both ways: the changed file before and
after the unchanged one in file order (which file a problem names depends on that order).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import reconciler.load as load
from reconciler.load import InvalidDesiredState, load_repo
from tests.helpers import copy_example, edit_yaml
from tests.test_incremental_attacks import diff, same, snapshot
from tests.test_load_incremental import reused


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


FULL_LOADS: list[Path] = []  # the loads that went through `_load_all` (listing and checking every file)


@pytest.fixture(autouse=True)
def count_full_loads(monkeypatch) -> None:
    load_all = load._load_all

    def counted(root, *args, **kwargs):
        FULL_LOADS.append(root)
        return load_all(root, *args, **kwargs)

    monkeypatch.setattr(load, "_load_all", counted)


class Commit:
    """The repo as a previous load saw it; `load` loads what changed since, as the daemon does."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.previous = load_repo(repo)
        self.before = snapshot(repo)
        self.delta: bool | None = None  # the last git-mode load went the delta's way alone

    def load(self):
        """(git-mode load, load from scratch): states, or the problems of a failed load."""
        changed = diff(self.before, snapshot(self.repo))
        full = len(FULL_LOADS)
        state = _one(self.repo, self.previous, changed)
        self.delta = len(FULL_LOADS) == full
        return state, _one(self.repo)

    def next(self, state) -> None:
        """``state`` is the previous state of the next commit."""
        self.previous, self.before = state, snapshot(self.repo)


def _one(repo: Path, previous=None, changed=None):
    try:
        return load_repo(repo, previous=previous, changed=changed)
    except InvalidDesiredState as exc:
        return [str(p) for p in exc.problems]


def connector(repo: Path, sid: str) -> Path:
    return repo / "connectors" / f"{sid}.yaml"


def add_source(repo: Path, like: str, sid: str, change=None) -> None:
    """A new source ``sid``: a copy of ``like``'s connector and schema, then ``change``."""
    data = json.loads((repo / "schemas" / f"{like}.json").read_text())
    data["source_id"] = sid
    (repo / "schemas" / f"{sid}.json").write_text(json.dumps(data, indent=1))
    shutil.copy(connector(repo, like), connector(repo, sid))

    def rename(d):
        d.update(source_id=sid, schema={**d["schema"], "file": f"schemas/{sid}.json"})
        for step in d.get("processing", {}).get("silver_to_gold", []):
            if "aggregate" in step:
                step["aggregate"]["table"] = f"{sid}_daily"
        if change:
            change(d)
    edit_yaml(connector(repo, sid), rename)


def aggregate_step(d):
    return next(s for s in d["processing"]["silver_to_gold"] if "aggregate" in s)


# --------------------------------------------------------------------------- the delta's own way


def test_one_changed_source_is_read_again_alone(repo):
    commit = Commit(repo)
    edit_yaml(connector(repo, "orders"), lambda d: d.update(description="edited"))
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta
    assert reused(state, commit.previous) == {s.source_id for s in commit.previous.sources
                                              if not s.tables} - {"orders"}


def test_a_changed_schema_reads_its_source_again(repo):
    commit = Commit(repo)
    path = repo / "schemas" / "payments.json"
    data = json.loads(path.read_text())
    data["fields"][0]["description"] = "edited"
    path.write_text(json.dumps(data, indent=1))
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta
    assert "payments" not in reused(state, commit.previous)


def test_an_added_source(repo):
    commit = Commit(repo)
    add_source(repo, "clickstream", "clicks_eu")
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta and "clicks_eu" in state.source_ids


def test_a_removed_source(repo):
    commit = Commit(repo)
    connector(repo, "shipments").unlink()
    (repo / "schemas" / "shipments.json").unlink()
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta and "shipments" not in state.source_ids


def test_a_renamed_connector_file(repo):
    commit = Commit(repo)
    os.rename(connector(repo, "orders"), repo / "connectors" / "orders.yml")
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta
    assert [s.connector_file for s in state.sources] == [s.connector_file for s in scratch.sources]


def test_commits_in_a_row_keep_the_index_up_to_date(repo):
    """Each delta's index is the next one's: added, edited, removed, and a clash with the
    source added two commits before (the index must know it)."""
    commit = Commit(repo)
    add_source(repo, "shipments", "returns", lambda d: d["ingestion"].update(webhook_path="/hooks/returns"))
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta
    commit.next(state)
    edit_yaml(connector(repo, "orders"), lambda d: d.update(description="edited"))
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta
    commit.next(state)
    connector(repo, "clickstream").unlink()
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta
    commit.next(state)
    add_source(repo, "shipments", "aaa_hooks", lambda d: d["ingestion"].update(webhook_path="/hooks/returns"))
    state, scratch = commit.load()
    assert isinstance(scratch, list) and state == scratch
    assert any("is already the path of connectors/aaa_hooks.yaml" in p for p in state)


def test_a_platform_change_loads_everything(repo):
    commit = Commit(repo)
    edit_yaml(repo / "platform.yaml", lambda d: d.setdefault("labels", {}).update(team="data"))
    state, scratch = commit.load()
    same(state, scratch)
    assert not commit.delta


def test_a_directory_on_the_way_made_a_link_loads_everything(repo):
    commit = Commit(repo)
    shutil.move(repo / "schemas", repo / "real_schemas")
    (repo / "schemas").symlink_to("real_schemas")
    state, scratch = commit.load()
    same(state, scratch)
    assert not commit.delta


def test_something_under_connectors_that_is_no_connector_file(repo):
    """A directory named like a connector file: the listing finds it, the file list of the
    delta would not: the full load tells (here: a problem)."""
    commit = Commit(repo)
    (repo / "connectors" / "extra.yaml").mkdir()
    (repo / "connectors" / "extra.yaml" / "x").write_text("x")
    state, scratch = commit.load()
    assert state == scratch
    assert not commit.delta


# --------------------------------------------------------------------------- clashes across files



@pytest.mark.parametrize("new", ["aaa_first", "zzz_last"])
def test_a_duplicate_source_id_across_changed_and_unchanged(repo, new):
    commit = Commit(repo)
    shutil.copy(connector(repo, "orders"), repo / "connectors" / f"{new}.yaml")  # source_id: orders
    state, scratch = commit.load()
    assert isinstance(scratch, list) and state == scratch
    assert any("duplicate source_id 'orders'" in p for p in state)


def test_a_duplicate_source_id_yaml_and_yml(repo):
    commit = Commit(repo)
    shutil.copy(connector(repo, "orders"), repo / "connectors" / "orders.yml")
    state, scratch = commit.load()
    assert isinstance(scratch, list) and state == scratch


@pytest.mark.parametrize("new", ["aaa_hooks", "zzz_hooks"])
def test_a_webhook_path_clash_between_a_changed_and_an_unchanged_source(repo, new):
    commit = Commit(repo)
    add_source(repo, "shipments", new)  # shipments' webhook path
    state, scratch = commit.load()
    assert isinstance(scratch, list) and state == scratch
    assert any("is already the path of" in p for p in state)


def test_a_webhook_path_freed_by_a_changed_source_is_taken_by_a_new_one(repo):
    commit = Commit(repo)
    edit_yaml(connector(repo, "shipments"), lambda d: d["ingestion"].update(webhook_path="/hooks/moved"))
    add_source(repo, "shipments", "aaa_hooks", lambda d: d["ingestion"].update(webhook_path="/hooks/shipments"))
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta


@pytest.mark.parametrize("new", ["aaa_files", "zzz_files"])
@pytest.mark.parametrize("location", ["gs://landing-headwater-demo-europe-west1/orders/",
                                      "gs://landing-headwater-demo-europe-west1/orders/eu/",
                                      "gs://landing-headwater-demo-europe-west1/"])
def test_a_landing_prefix_clash_between_a_changed_and_an_unchanged_source(repo, new, location):
    commit = Commit(repo)
    add_source(repo, "orders", new, lambda d: (d["ingestion"].update(location=location),
                                               d.pop("serving", None)))
    state, scratch = commit.load()
    assert isinstance(scratch, list) and state == scratch
    assert any("overlaps" in p for p in state)


def test_a_landing_prefix_freed_by_a_changed_source(repo):
    commit = Commit(repo)
    edit_yaml(connector(repo, "orders"), lambda d: d["ingestion"].update(
        location="gs://landing-headwater-demo-europe-west1/orders_v2/"))
    add_source(repo, "orders", "aaa_files", lambda d: (d["ingestion"].update(
        location="gs://landing-headwater-demo-europe-west1/orders/"), d.pop("serving", None)))
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta


@pytest.mark.parametrize("new", ["aaa_views", "zzz_views"])
def test_a_view_named_like_an_unchanged_sources_gold_table(repo, new):
    """payments (unchanged, ``reporting: true``) has the view payments_daily; a new source's view
    takes the name: a problem after payments in file order, none before (payments' Gold table
    view is then the second of the name, which the check lets be)."""
    commit = Commit(repo)
    add_source(repo, "clickstream", new, lambda d: d["serving"].update(reporting={"views": [
        {"name": "payments_daily", "sql": f"SELECT date FROM gold.{new}_daily"}]}))
    state, scratch = commit.load()
    same(state, scratch)
    assert isinstance(scratch, list) == (new > "payments")
    assert not commit.delta


@pytest.mark.parametrize("new", ["aaa_tables", "zzz_tables"])
def test_a_gold_table_named_like_an_unchanged_sources_view(repo, new):
    """orders (unchanged) declares the view orders_by_customer; a new source with reporting
    names its Gold table so: before orders in file order, orders' view is the problem."""
    commit = Commit(repo)
    add_source(repo, "clickstream", new, lambda d: aggregate_step(d)["aggregate"].update(table="orders_by_customer"))
    state, scratch = commit.load()
    same(state, scratch)
    assert isinstance(scratch, list) == (new < "orders")
    assert not commit.delta


def test_a_view_reading_a_changed_sources_table(repo):
    """A new source's view reads the Gold table of payments (unchanged); then payments renames
    its table: the unchanged view reads a table that is gone."""
    commit = Commit(repo)
    add_source(repo, "clickstream", "zzz_views", lambda d: d["serving"].update(reporting={"views": [
        {"name": "clicks_and_payments", "sql": "SELECT c.date FROM gold.zzz_views_daily c "
                                               "JOIN gold.payments_daily p ON p.date = c.date"}]}))
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta
    commit.next(state)
    edit_yaml(connector(repo, "payments"), lambda d: aggregate_step(d)["aggregate"].update(table="payments_by_day"))
    state, scratch = commit.load()
    assert isinstance(scratch, list) and state == scratch
    assert any("'gold.payments_daily' is not declared" in p for p in state)


def test_a_view_of_a_changed_source_reading_an_unknown_table(repo):
    commit = Commit(repo)
    edit_yaml(connector(repo, "clickstream"), lambda d: d["serving"].update(reporting={"views": [
        {"name": "v", "sql": "SELECT date FROM gold.no_such_table"}]}))
    state, scratch = commit.load()
    assert isinstance(scratch, list) and state == scratch


def test_a_data_api_scope_naming_a_source_that_stops_serving(repo):
    edit_yaml(repo / "platform.yaml", lambda d: d["api"].update(clients={"acme": {
        "secret_name": "data-api-client-acme", "scopes": ["payments:read"]}}))
    commit = Commit(repo)
    edit_yaml(connector(repo, "payments"), lambda d: d["serving"].update(third_party_api=False))
    state, scratch = commit.load()
    assert isinstance(scratch, list) and state == scratch
    assert any("which does not serve the data API" in p for p in state)


def join_aws(d):
    d["processing"]["silver_to_gold"][0]["join"].update(table="silver.aws_data_lake")


def filter_aws(d):
    d["silver"].update(require_partition_filter=True)


@pytest.mark.parametrize(("first", "then"), [(("aws_data_lake", filter_aws), ("orders", join_aws)),
                                             (("orders", join_aws), ("aws_data_lake", filter_aws))],
                         ids=["a join added to a filtered table", "a filter added to a joined table"])
def test_a_gold_join_of_a_silver_table_that_requires_a_filter(repo, first, then):
    """One side unchanged, the other changed: the problem is the joining source's either way."""
    edit_yaml(connector(repo, first[0]), first[1])
    commit = Commit(repo)
    edit_yaml(connector(repo, then[0]), then[1])
    state, scratch = commit.load()
    assert isinstance(scratch, list) and state == scratch
    assert any("joins silver.aws_data_lake, which requires a partition filter" in p for p in state)


def test_a_join_of_a_changed_source_goes_away(repo):
    """orders stops joining aws_data_lake, which then requires a partition filter: valid."""
    edit_yaml(connector(repo, "orders"), join_aws)
    commit = Commit(repo)
    edit_yaml(connector(repo, "orders"), lambda d: d["processing"]["silver_to_gold"][0]["join"].update(
        table="reference.customers"))
    state, scratch = commit.load()
    same(state, scratch)
    commit.next(state)
    edit_yaml(connector(repo, "aws_data_lake"), filter_aws)
    state, scratch = commit.load()
    same(state, scratch)
    assert commit.delta


def test_a_changed_cdc_sources_table_names(repo):
    """database_cdc sources are read by every load; their derived table names still clash."""
    commit = Commit(repo)
    path = connector(repo, "postgres_orders")
    shutil.copy(path, repo / "connectors" / "postgres_copy.yaml")
    edit_yaml(repo / "connectors" / "postgres_copy.yaml", lambda d: d.update(source_id="postgres_copy"))
    state, scratch = commit.load()
    assert state == scratch if isinstance(scratch, list) else same(state, scratch) is None
