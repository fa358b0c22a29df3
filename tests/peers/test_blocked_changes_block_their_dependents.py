"""A change that depends on a blocked change is blocked too, its reason naming the blocked one
(a peer blocked a table's schema change under ``evolution: none`` yet updated the jobs that write
the new column: every record then failed on the table)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import edit_yaml

from providers.localrunner import LocalRunnerProvider


def test_a_column_blocked_by_evolution_none_is_not_written_by_any_job(platform_repo, hw, project_id):
    repo = platform_repo(["orders"])
    assert hw("apply", "--repo", repo, "--auto-approve")[0] == 0
    edit_yaml(repo / "connectors" / "orders.yaml", lambda d: d["schema"].update(evolution="none"))
    schema = repo / "schemas" / "orders.json"
    data = json.loads(schema.read_text())
    data["fields"].append({"name": "channel", "type": "STRING", "mode": "NULLABLE"})
    schema.write_text(json.dumps(data))

    code, out, _ = hw("plan", "--repo", repo, "--format", "json")
    changes = {c["address"]: c for c in json.loads(out)["changes"]}
    assert changes["bigquery_table.silver.orders"]["blocked"] == "schema.evolution is none: adds NULLABLE column channel"
    jobs = {a: c for a, c in changes.items() if a.startswith("dataflow_job.")}
    assert set(jobs) == {"dataflow_job.orders-ingest", "dataflow_job.orders-sweep", "dataflow_job.orders-gold-orders-daily"}
    for job in jobs.values():
        assert job["action"] == "update" and job["blocked_by"] == ["bigquery_table.silver.orders"]
        assert job["blocked"].startswith("depends on bigquery_table.silver.orders, whose update is blocked")

    code, _, err = hw("apply", "--repo", repo, "--auto-approve")
    assert code == 1 and "blocked" in err
    runner = LocalRunnerProvider(project_id, Path(os.environ["HEADWATER_STATE_DIR"]))
    for name in ("orders-ingest", "orders-sweep", "orders-gold-orders-daily"):
        assert "channel" not in json.dumps(runner.record(name).spec), f"{name} was not updated"
