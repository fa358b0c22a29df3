"""Plans compare what the desired state means, not how its files are written (a peer planned an
in-place update of a streaming job, 16 paths, because a schema's fields were reordered)."""

from __future__ import annotations

import json


def test_reordering_a_schemas_fields_nested_ones_too_changes_nothing(platform_repo, hw):
    repo = platform_repo(["clickstream"])
    assert hw("apply", "--repo", repo, "--auto-approve")[0] == 0
    schema = repo / "schemas" / "clickstream.json"
    data = json.loads(schema.read_text())
    data["fields"].reverse()
    for field in data["fields"]:
        if field.get("fields"):
            field["fields"].reverse()
    schema.write_text(json.dumps(data, indent=1))
    code, out, _ = hw("plan", "--repo", repo)
    assert code == 0 and "No changes." in out, out


def test_reordering_allowed_values_changes_nothing_but_reordering_rules_does(platform_repo, hw):
    from helpers import edit_yaml

    repo = platform_repo(["clickstream"])
    assert hw("apply", "--repo", repo, "--auto-approve")[0] == 0
    rules = lambda d: d["processing"]["bronze_to_silver"][1]["data_quality"]["rules"]  # noqa: E731
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: rules(d)[0]["values"].reverse())
    assert hw("plan", "--repo", repo)[0] == 0, "allowed values are a set"
    # The first failing rule is a record's reason: the order of rules means something.
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: rules(d).reverse())
    code, out, _ = hw("plan", "--repo", repo)
    assert code == 2 and "~ dataflow_job.clickstream-ingest" in out
