"""End to end: the CLI against the real local emulators, through the official clients.

One platform's life: validate → plan → apply → plan is empty → someone edits a subscription and a
bucket behind headwater's back → drift names both fields → apply repairs → a removed connector is
kept without --prune, its tables stay without --allow-destroy → a commit that empties
connectors/ is refused and touches nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from google.cloud import pubsub_v1, storage
from google.protobuf import field_mask_pb2
from helpers import copy_example, edit_yaml, isolate_platform, write_local_secrets

from providers import stop_local as stop_all
from reconciler import cli


@pytest.fixture
def repo(tmp_path, emulators, project_id, unique):
    repo = copy_example(tmp_path, sources=["orders", "payments"])
    isolate_platform(repo, project_id, unique)
    # The serving layer has its own end-to-end test (tests/test_serving_layer_e2e.py); this one is
    # about the lifecycle of what ingestion compiles to.
    for connector in (repo / "connectors").glob("*.yaml"):
        edit_yaml(connector, lambda d: (d.pop("serving", None), d.pop("features", None)))
    write_local_secrets()
    yield repo
    # apply starts the Dataflow jobs on the local runner: stop this test's.
    stop_all(Path(os.environ["HEADWATER_STATE_DIR"]), project_id)


def run(capsys, *argv):
    code = cli.main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def topic_exists(project: str, topic: str) -> bool:
    publisher = pubsub_v1.PublisherClient()
    names = {t.name for t in publisher.list_topics(request={"project": f"projects/{project}"})}
    return f"projects/{project}/topics/{topic}" in names


def test_platform_lifecycle(repo, project_id, unique, capsys):
    r = str(repo)
    assert run(capsys, "validate", "--repo", r)[0] == 0

    code, out, _ = run(capsys, "plan", "--repo", r, "--format", "json")
    assert code == 2
    doc = json.loads(out)
    # 6 platform resources; per source 7, plus its ingest and gold Dataflow jobs; orders (batch_file)
    # its sweep job and file notification, payments (rest_api) its connector; per source an alert
    # policy, a dashboard and (each its own alert_email) a notification channel.
    # Beside them, the example's governance (issue 13: grants, audit configs, the PII column's
    # tag), planned as security changes and recorded by the emulators' stand-in.
    ingestion = [c for c in doc["changes"] if not c["security"]]
    assert len(ingestion) == 6 + 2 * 9 + 2 + 1 + 2 * 3
    assert len(doc["changes"]) > len(ingestion), "the example's access block compiles to grants"
    assert doc["summary"]["create"] == len(doc["changes"])
    assert {c["action"] for c in doc["changes"]} == {"create"}

    code, out, err = run(capsys, "apply", "--repo", r, "--auto-approve")
    assert code == 0, err
    assert f"Apply complete: {len(doc['changes'])} succeeded, 0 failed, 0 skipped" in out

    code, out, _ = run(capsys, "plan", "--repo", r)
    assert code == 0, out
    assert "No changes." in out

    # Behind headwater's back: a shorter ack deadline, and the bronze bucket's lifecycle wiped.
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(project_id, "orders-ingest")
    subscriber.update_subscription(request={
        "subscription": {"name": subscription, "ack_deadline_seconds": 30},
        "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds"]),
    })
    bucket = storage.Client(project=project_id).bucket(f"{unique}-bronze")
    bucket.lifecycle_rules = [{"action": {"type": "Delete"}, "condition": {"age": 30}}]
    bucket.patch()

    code, out, _ = run(capsys, "drift", "--repo", r, "--format", "json")
    assert code == 2
    drift = {d["address"]: d for d in json.loads(out)["drift"]}
    assert set(drift) == {"pubsub_subscription.orders-ingest", f"storage_bucket.{unique}-bronze"}
    ack = drift["pubsub_subscription.orders-ingest"]["fields"]
    assert [{k: f[k] for k in ("path", "live", "desired")} for f in ack] == [
        {"path": "ack_deadline_seconds", "live": 30, "desired": 60}]
    # ...and names the setting that wants 60 (a copied repo has no git history to blame).
    assert (ack[0]["origin"]["file"], ack[0]["origin"]["field"]) == ("platform.yaml", "pubsub.ack_deadline_seconds")
    lifecycle_paths = [f["path"] for f in drift[f"storage_bucket.{unique}-bronze"]["fields"]]
    assert lifecycle_paths and all(p.startswith("lifecycle_rules") for p in lifecycle_paths)

    code, out, err = run(capsys, "apply", "--repo", r, "--auto-approve")
    assert code == 0, err
    assert "Apply complete: 2 succeeded" in out
    assert run(capsys, "drift", "--repo", r)[0] == 0

    # A removed connector: kept without --prune...
    (repo / "connectors" / "payments.yaml").unlink()
    code, out, _ = run(capsys, "plan", "--repo", r)
    assert code == 0
    assert "= pubsub_topic.payments  (kept: no longer declared" in out
    assert run(capsys, "apply", "--repo", r, "--auto-approve")[0] == 0
    assert topic_exists(project_id, "payments")

    # ...pruned with --prune, except what holds data - its tables, topics and subscriptions - which
    # needs --allow-destroy. (Half the sources go, more than the default max_delete_fraction of 0.2.)
    edit_yaml(repo / "platform.yaml", lambda d: d.setdefault("policy", {}).update(max_delete_fraction=0.4))
    code, out, err = run(capsys, "apply", "--repo", r, "--auto-approve", "--prune")
    assert code == 1, "blocked deletions of data mean the platform has not converged"
    assert "- dataflow_job.payments-ingest" in out and "drained (in-flight data finished), not cancelled" in out
    assert "BLOCKED: delete would destroy the data this bigquery_table holds" in out
    assert "BLOCKED: delete would destroy the data this pubsub_subscription holds" in out
    assert topic_exists(project_id, "payments"), "a topic holds data (and is where publishers send): gated"
    code, out, _ = run(capsys, "plan", "--repo", r, "--prune", "--format", "json")
    blocked = {c["address"] for c in json.loads(out)["changes"] if c["blocked"]}
    assert blocked == {"bigquery_table.bronze.payments_raw", "bigquery_table.silver.payments",
                       "bigquery_table.gold.payments_daily", "pubsub_topic.payments", "pubsub_topic.payments-dlq",
                       "pubsub_subscription.payments-ingest", "pubsub_subscription.payments-dlq-hold"}

    # A commit that empties connectors/ is refused, even with every safety switch off.
    shutil.rmtree(repo / "connectors")
    (repo / "connectors").mkdir()
    code, out, err = run(capsys, "apply", "--repo", r, "--auto-approve", "--prune", "--allow-destroy")
    assert code == 1
    assert "Plan refused: the desired state declares no sources" in out
    assert topic_exists(project_id, "orders")
    code, out, _ = run(capsys, "plan", "--repo", r, "--format", "json")
    assert code == 1 and json.loads(out)["refused"]


def test_invalid_repo_touches_nothing_on_the_emulators(repo, project_id, capsys):
    (repo / "connectors" / "orders.yaml").write_text("source_id: orders\ningestion: {pattern: nope}\n")
    code, _, err = run(capsys, "apply", "--repo", str(repo), "--auto-approve")
    assert code == 1
    assert "connectors/orders.yaml:2:" in err and "nothing was changed" in err
    publisher = pubsub_v1.PublisherClient()
    assert list(publisher.list_topics(request={"project": f"projects/{project_id}"})) == []
