"""The pull-request dry run: `headwater plan --base REF` summarizes what the PR changes in the
desired state (sources added/changed/removed, schema columns, platform settings), then shows
the plan against live state, as one Markdown comment that CI can find again by its marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_local_secrets
from support import DesiredRepo, emulator_providers

from reconciler import cli, pr
from reconciler.engine import Engine
from reconciler.load import load_repo


def feature_branch(repo: DesiredRepo) -> None:
    """On a branch: payments removed, orders' schedule and schema changed, a platform default changed."""
    repo.repo.git.checkout("-b", "feature")
    (repo.work_path / "connectors/payments.yaml").unlink()
    (repo.work_path / "schemas/payments.json").unlink()
    repo.edit_yaml("connectors/orders.yaml", lambda d: d["ingestion"].update(schedule="0 4 * * *"))
    schema = json.loads(repo.read("schemas/orders.json"))
    schema["fields"].append({"name": "coupon", "type": "STRING", "mode": "NULLABLE", "description": "promo code"})
    repo.write("schemas/orders.json", json.dumps(schema, indent=2))
    repo.edit_yaml("platform.yaml", lambda d: d["pubsub"].update(ack_deadline_seconds=90))
    repo.repo.git.add("-A")
    repo.repo.index.commit("feature")


@pytest.fixture
def two_sources(tmp_path: Path, project_id: str, unique: str) -> DesiredRepo:
    repo = DesiredRepo(tmp_path / "git", project_id, unique, sources=("orders", "payments"))
    repo.commit_and_push("base")
    return repo


def test_summary_names_what_the_pr_changes(two_sources):
    feature_branch(two_sources)
    summary = pr.summarize(load_repo(two_sources.work_path), "main")
    assert summary.base_revision == two_sources.repo.commit("main").hexsha
    by_id = {c.source_id: c for c in summary.sources}
    assert by_id["payments"].status == "removed"
    orders = by_id["orders"]
    assert orders.status == "changed"
    assert [(f.path, f.before, f.after) for f in orders.settings] == [("ingestion.schedule", "0 3 * * *", "0 4 * * *")]
    assert "+coupon (STRING, NULLABLE)" in orders.columns
    assert [(f.path, f.before, f.after) for f in summary.platform] == [("pubsub.ack_deadline_seconds", 60, 90)]

    markdown = pr.render_markdown(summary)
    assert markdown.startswith(pr.MARKER)
    assert "| `payments` | removed |" in markdown and "<details>" in markdown
    assert "`ingestion.schedule`: \"0 3 * * *\" → \"0 4 * * *\"" in markdown
    assert "kept unless `policy.prune`" in markdown
    assert pr.summary(load_repo(two_sources.work_path), "main", "json") == ""  # JSON stays one document


def test_summary_uses_the_merge_base_and_handles_subdirectories_and_missing_refs(tmp_path, project_id, unique):
    repo = DesiredRepo(tmp_path / "git", project_id, unique)
    # The desired state lives in a subdirectory of the repository.
    subdir = repo.work_path / "platform-config"
    subdir.mkdir()
    for name in ("platform.yaml", "connectors", "schemas"):
        (repo.work_path / name).rename(subdir / name)
    repo.commit_and_push("desired state in a subdirectory")
    repo.repo.git.checkout("-b", "feature")
    repo.edit_yaml("platform-config/connectors/orders.yaml", lambda d: d.update(description="changed on the branch"))
    repo.repo.git.add("-A")
    repo.repo.index.commit("feature change")
    # main moves on after the branch point: not part of this PR.
    repo.repo.git.checkout("main")
    repo.edit_yaml("platform-config/platform.yaml", lambda d: d["pubsub"].update(ack_deadline_seconds=120))
    repo.repo.git.add("-A")
    repo.repo.index.commit("main moves on")
    repo.repo.git.checkout("feature")

    summary = pr.summarize(load_repo(subdir), "main")
    assert [(c.source_id, c.status) for c in summary.sources] == [("orders", "changed")]
    assert summary.platform == ()  # main's later change is not the PR's

    missing = pr.summarize(load_repo(subdir), "origin/nope")
    assert missing.base_error and "fetch-depth" in missing.base_error


def test_plan_with_base_prints_the_summary_then_the_plan_with_blocked_changes_called_out(
        emulators, two_sources, capsys, tmp_path, monkeypatch):
    # The base is live (applied through the core; Dataflow jobs kept in memory, see emulator_providers).
    base = load_repo(two_sources.work_path)
    engine = Engine(emulator_providers(base.platform))
    assert engine.apply(engine.plan(base)).ok
    monkeypatch.setenv("HEADWATER_STATE_DIR", str(tmp_path / "state"))  # no shared local-runner state
    write_local_secrets()  # the example's secrets, as files in the local secrets directory
    two_sources.repo.git.checkout("-b", "feature")
    schema = json.loads(two_sources.read("schemas/orders.json"))
    amount = next(f for f in schema["fields"] if f["name"] == "amount")
    amount["type"] = "STRING"  # an incompatible change: the schema-evolution gate blocks it
    two_sources.write("schemas/orders.json", json.dumps(schema, indent=2))
    # The features summed over amount would no longer validate: this PR drops them too.
    two_sources.edit_yaml("connectors/orders.yaml", lambda d: d.pop("serving", None))
    two_sources.repo.git.add("-A")
    two_sources.repo.index.commit("amount becomes a string")
    capsys.readouterr()

    code = cli.main(["plan", "--repo", str(two_sources.work_path), "--base", "main", "--format", "markdown"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out.startswith(pr.MARKER)
    assert out.index("what this PR changes") < out.index("headwater plan for revision")
    assert "`~amount: " in out and "→ STRING" in out
    assert "Blocked changes" in out and "bigquery_table.silver.orders" in out


def test_column_changes_say_which_ones_the_plan_will_block():
    from dataclasses import replace

    from helpers import EXAMPLE

    from reconciler.config import SchemaField
    from reconciler.load import load_repo
    from reconciler.pr import _column_changes

    old = next(s for s in load_repo(EXAMPLE).sources if s.source_id == "payments")
    fields = [f for f in old.schema.fields if f.name != "customer_id"]  # dropped
    fields = [f.model_copy(update={"type": "NUMERIC"}) if f.name == "amount" else f for f in fields]
    fields.append(SchemaField(name="coupon", type="STRING"))
    new = replace(old, schema=old.schema.model_copy(update={"fields": fields}))

    lines = _column_changes(old, new)
    assert "+coupon (STRING, NULLABLE)" in lines
    assert any(line.startswith("-customer_id (incompatible: removes column customer_id") for line in lines)
    assert any(line.startswith("~amount: FLOAT64 → NUMERIC (incompatible: changes the type") for line in lines)
