"""The daemon end to end: real emulators, a local bare git repo, the daemon's own HTTP server.

Each test runs the daemon in-process (threads) against a fresh project and unique bucket
names, with short intervals (poll 0.5 s, drift 1 s), and checks what an operator would see:
live resources through the official clients, /status, /metrics (parsed with prometheus-client's
text parser), alerts received by a tiny local webhook endpoint, and the JSON logs.
"""

from __future__ import annotations

import json
import time

import pytest
from google.cloud import pubsub_v1, storage
from google.protobuf import field_mask_pb2
from support import GIT_TOKEN, WEBHOOK_SECRET, get_json, push_event, scrape, value, wait_for

from reconciler.daemon.lease import Lease

pytestmark = pytest.mark.usefixtures("emulators")


def ack_deadline(project: str, subscription: str) -> int:
    with pubsub_v1.SubscriberClient() as client:
        return client.get_subscription(subscription=f"projects/{project}/subscriptions/{subscription}",
                                       timeout=10).ack_deadline_seconds


def set_ack_deadline_behind_headwaters_back(project: str, subscription: str, seconds: int) -> None:
    with pubsub_v1.SubscriberClient() as client:
        client.update_subscription(
            request={"subscription": {"name": f"projects/{project}/subscriptions/{subscription}",
                                      "ack_deadline_seconds": seconds},
                     "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds"])},
            timeout=10)


def converged_on(base: str, revision: str) -> dict | None:
    status = get_json(base, "/status")
    last = status["last_sync"]
    if status["revision"] == revision and last and last["revision"] == revision and last["result"] == "converged":
        return status
    return None


def assert_no_secrets(running) -> None:
    text = running.logs.getvalue() + json.dumps(get_json(running.base, "/status"))
    for secret in (WEBHOOK_SECRET, GIT_TOKEN):
        assert secret not in text


def test_push_and_webhook_converge_within_seconds_and_bad_signatures_change_nothing(
        desired_repo, start_daemon, project_id):
    # A long poll interval: only the webhook can make the daemon notice the new commit quickly.
    first = desired_repo.repo.head.commit.hexsha
    running = start_daemon(desired_repo, poll_interval=120)
    base = running.base
    wait_for(lambda: converged_on(base, first), what="initial convergence")
    assert ack_deadline(project_id, "orders-ingest") == 60

    desired_repo.edit_yaml("platform.yaml", lambda d: d["pubsub"].update(ack_deadline_seconds=90))
    second = desired_repo.commit_and_push("ack deadline 90 s")

    # Forged, missing and wrong-secret signatures: 401, nothing fetched.
    assert push_event(base, None, signature="sha256=" + "0" * 64)[0] == 401
    assert push_event(base, None)[0] == 401
    assert push_event(base, "not-the-secret")[0] == 401
    time.sleep(1.5)
    status = get_json(base, "/status")
    assert status["revision"] == first and status["head"]["revision"] == first
    assert ack_deadline(project_id, "orders-ingest") == 60

    # Pushes to other branches are acknowledged and ignored.
    assert push_event(base, WEBHOOK_SECRET, ref="refs/heads/feature")[0] == 200

    sent = time.monotonic()
    code, body = push_event(base, WEBHOOK_SECRET)
    assert code == 202, body
    status = wait_for(lambda: converged_on(base, second), timeout=10, what="convergence after the webhook")
    took = time.monotonic() - sent
    assert took < 5, f"converged {took:.1f}s after the webhook"
    assert ack_deadline(project_id, "orders-ingest") == 90
    assert status["last_sync"]["plan"]["update"] >= 2 and status["last_sync"]["remaining_changes"] == 0
    assert status["pending"] == [] and status["drift"]["resources"] == []

    samples = scrape(base)
    assert value(samples, "headwater_webhook_requests_total", result="unauthorized") == 3
    assert value(samples, "headwater_webhook_requests_total", result="accepted") == 1
    # Every series the issue lists, with its labels.
    assert value(samples, "headwater_reconcile_total", result="converged") >= 2
    assert value(samples, "headwater_reconcile_duration_seconds_count") >= 2
    assert any(lbl.get("le") == "+Inf" for lbl, _ in samples["headwater_reconcile_duration_seconds_bucket"])
    assert value(samples, "headwater_resources", kind="pubsub_subscription", state="in_sync") == 2
    assert value(samples, "headwater_resources", kind="storage_bucket", state="in_sync") == 3
    assert {lbl["state"] for lbl, _ in samples["headwater_resources"]} == {"in_sync", "drifted", "missing", "blocked"}
    assert value(samples, "headwater_drift_resources", kind="pubsub_subscription") == 0
    assert value(samples, "headwater_apply_operations_total", kind="pubsub_subscription", action="update",
                 result="ok") == 2
    assert value(samples, "headwater_apply_operations_total", kind="bigquery_table", action="create",
                 result="ok") == 4  # orders: Bronze raw, Silver, its Gold aggregate, its feature table
    assert value(samples, "headwater_api_requests_total", service="pubsub", code="OK") > 0
    assert value(samples, "headwater_api_requests_total", service="storage", code="OK") > 0
    assert value(samples, "headwater_last_sync_timestamp_seconds") > time.time() - 60
    assert samples["headwater_revision_info"] == [({"revision": second}, 1.0)]
    assert value(samples, "headwater_lock_held") == 1
    assert value(samples, "headwater_ready") == 1
    # Low cardinality: no resource name in any label value; the per-source health series carry the
    # source id as their one label (bounded by the number of sources), nothing else.
    for name, series in samples.items():
        for labels, _ in series:
            if name.startswith("headwater_source_"):
                assert set(labels) <= {"source", "state"}, (name, labels)
                continue
            assert not any("orders" in v for v in labels.values()), (name, labels)

    events = running.logs.events()
    assert any(e["event"] == "webhook.rejected" and e["reason"] == "bad signature" for e in events)
    applied = [e for e in events if e["event"] == "apply.change" and e.get("revision") == second]
    assert applied and all(e["correlation_id"] == applied[0]["correlation_id"] for e in applied)
    assert {"address", "action", "result", "duration_seconds"} <= applied[0].keys()
    assert_no_secrets(running)


def test_drift_is_reported_and_alerted_once_without_self_heal(desired_repo, start_daemon, project_id,
                                                             alert_receiver):
    running = start_daemon(desired_repo, self_heal=False, notify_webhook=alert_receiver.url)
    base = running.base
    wait_for(lambda: converged_on(base, desired_repo.repo.head.commit.hexsha), what="convergence")

    set_ack_deadline_behind_headwaters_back(project_id, "orders-ingest", 30)

    def drift_seen():
        status = get_json(base, "/status")
        return status if status["drift"]["resources"] else None

    status = wait_for(drift_seen, what="drift in /status")
    [entry] = status["drift"]["resources"]
    assert entry["address"] == "pubsub_subscription.orders-ingest" and entry["state"] == "drifted"
    assert [{k: f[k] for k in ("path", "live", "desired")} for f in entry["fields"]] == [
        {"path": "ack_deadline_seconds", "live": 30, "desired": 60}]
    assert entry["fields"][0]["origin"]["field"] == "pubsub.ack_deadline_seconds"  # who set it: test_daemon_health.py
    samples = scrape(base)
    assert value(samples, "headwater_drift_resources", kind="pubsub_subscription") == 1
    assert value(samples, "headwater_resources", kind="pubsub_subscription", state="drifted") == 1

    # Several more drift passes: still drifted (alert only), still one alert.
    checks = value(samples, "headwater_drift_checks_total")
    wait_for(lambda: value(scrape(base), "headwater_drift_checks_total") >= checks + 3, what="3 more drift checks")
    assert ack_deadline(project_id, "orders-ingest") == 30
    assert alert_receiver.events() == ["drift_detected"]
    alert = alert_receiver.received[0]
    assert "pubsub_subscription.orders-ingest" in alert["text"] and "ack_deadline_seconds" in alert["text"]
    assert alert["headwater"]["resources"] == ["pubsub_subscription.orders-ingest"]

    # Someone puts it back by hand: resolved, alerted once.
    set_ack_deadline_behind_headwaters_back(project_id, "orders-ingest", 60)
    wait_for(lambda: alert_receiver.events() == ["drift_detected", "drift_resolved"], what="resolved alert")
    assert value(scrape(base), "headwater_drift_resources", kind="pubsub_subscription") == 0
    assert_no_secrets(running)
    assert alert_receiver.url.rsplit("/", 1)[-1] not in running.logs.getvalue()  # the webhook URL is a credential


def test_a_restarted_daemon_does_not_alert_again_about_the_same_broken_commit(
        desired_repo, start_daemon, project_id, unique, alert_receiver):
    # A broken main outlives a redeploy; without a shared memory every restart re-alerted it.
    lock_bucket = f"{unique}-lock"
    storage.Client(project=project_id).create_bucket(lock_bucket)
    first = start_daemon(desired_repo, notify_webhook=alert_receiver.url, lock_bucket=lock_bucket,
                         identity="before-restart")
    wait_for(lambda: converged_on(first.base, desired_repo.repo.head.commit.hexsha), what="convergence")
    desired_repo.edit_yaml("connectors/orders.yaml", lambda d: d.update(retention_dayz=3))
    bad = desired_repo.commit_and_push("typo")
    push_event(first.base, WEBHOOK_SECRET)
    wait_for(lambda: alert_receiver.events() == ["sync_failed"], what="the sync_failed alert")
    first.daemon.shutdown()

    second = start_daemon(desired_repo, notify_webhook=alert_receiver.url, lock_bucket=lock_bucket,
                          identity="after-restart")
    wait_for(lambda: get_json(second.base, "/status")["head"]["revision"] == bad, what="the restarted daemon's check")
    time.sleep(1.5)  # several polls of the same broken head
    assert alert_receiver.events() == ["sync_failed"], "the same broken commit is not alerted again"
    memory = storage.Client(project=project_id).bucket(lock_bucket).get_blob("headwater/applier.lease.alerts.json")
    assert json.loads(memory.download_as_bytes())["sync_failure"] == [bad, "invalid"]

    desired_repo.edit_yaml("connectors/orders.yaml", lambda d: d.pop("retention_dayz"))
    fixed = desired_repo.commit_and_push("fix the typo")
    push_event(second.base, WEBHOOK_SECRET)
    wait_for(lambda: converged_on(second.base, fixed), what="convergence on the fix")
    # The alert goes out after the status says converged: wait for it, then check nothing else came.
    wait_for(lambda: alert_receiver.events() == ["sync_failed", "sync_recovered"], what="the recovered alert")


def test_self_heal_repairs_drift_by_update_and_alerts_once(desired_repo, start_daemon, project_id, alert_receiver):
    running = start_daemon(desired_repo, self_heal=True, notify_webhook=alert_receiver.url)
    base = running.base
    wait_for(lambda: converged_on(base, desired_repo.repo.head.commit.hexsha), what="convergence")

    set_ack_deadline_behind_headwaters_back(project_id, "orders-ingest", 30)

    status = wait_for(lambda: get_json(base, "/status")["last_repair"], what="a repair")
    assert status["result"] == "ok"
    assert status["changes"] == [{"address": "pubsub_subscription.orders-ingest", "action": "update",
                                  "fields": [{"path": "ack_deadline_seconds", "live": 30, "desired": 60}]}]
    assert ack_deadline(project_id, "orders-ingest") == 60
    samples = scrape(base)
    assert value(samples, "headwater_drift_checks_total", result="healed") == 1
    checks = value(samples, "headwater_drift_checks_total")
    wait_for(lambda: value(scrape(base), "headwater_drift_checks_total") >= checks + 2, what="2 more drift checks")
    assert alert_receiver.events() == ["drift_detected", "drift_resolved"]
    assert get_json(base, "/status")["drift"]["resources"] == []


def alert_subscription(project: str) -> str:
    """A topic for the daemon's alerts and a subscription to read them (the deployment's job)."""
    with pubsub_v1.PublisherClient() as publisher:
        publisher.create_topic(name=f"projects/{project}/topics/headwater-alerts", timeout=10)
    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.create_subscription(name=f"projects/{project}/subscriptions/alerts-reader",
                                       topic=f"projects/{project}/topics/headwater-alerts", timeout=10)
    return f"projects/{project}/subscriptions/alerts-reader"


def pulled_alerts(subscription: str) -> list[tuple[dict, dict]]:
    with pubsub_v1.SubscriberClient() as subscriber:
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=10)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription,
                                   ack_ids=[m.ack_id for m in response.received_messages], timeout=10)
    return [(dict(m.message.attributes), json.loads(m.message.data)) for m in response.received_messages]


def test_invalid_commit_changes_nothing_and_the_last_good_revision_stays(
        desired_repo, start_daemon, project_id, alert_receiver):
    good = desired_repo.repo.head.commit.hexsha
    subscription = alert_subscription(project_id)
    running = start_daemon(desired_repo, notify_webhook=alert_receiver.url, notify_topic="headwater-alerts")
    base = running.base
    wait_for(lambda: converged_on(base, good), what="convergence")

    # A change that would be visible (ack deadline) plus an error (unknown key): all or nothing.
    desired_repo.edit_yaml("platform.yaml", lambda d: d["pubsub"].update(ack_deadline_seconds=120))
    desired_repo.edit_yaml("connectors/orders.yaml", lambda d: d.update(retention_dayz=3))
    bad = desired_repo.commit_and_push("typo")
    push_event(base, WEBHOOK_SECRET)

    def head_rejected():
        status = get_json(base, "/status")
        return status if status["head"]["revision"] == bad and status["head"]["valid"] is False else None

    status = wait_for(head_rejected, what="the invalid head in /status")
    assert status["revision"] == good
    assert any("connectors/orders.yaml" in p and "retention_dayz" in p for p in status["head"]["problems"])
    assert status["last_sync"]["result"] == "invalid"
    time.sleep(1.5)  # several polls of the same broken head
    assert ack_deadline(project_id, "orders-ingest") == 60
    samples = scrape(base)
    assert value(samples, "headwater_head_valid") == 0
    assert value(samples, "headwater_reconcile_total", result="invalid") == 1  # once per revision, not per poll
    assert samples["headwater_revision_info"] == [({"revision": good}, 1.0)]
    assert alert_receiver.events() == ["sync_failed"]
    assert "retention_dayz" in alert_receiver.received[0]["text"]
    # The same alert on the Pub/Sub topic (a topic id resolves in the platform's project).
    [(attributes, data)] = wait_for(lambda: pulled_alerts(subscription), what="the alert on Pub/Sub")
    assert attributes == {"event": "sync_failed", "revision": bad}
    assert data["headwater"]["result"] == "invalid" and "retention_dayz" in data["text"]
    assert any(e["event"] == "sync.invalid_revision" and e["revision"] == bad for e in running.logs.events())

    # Drift is still measured against the last good revision (no drift: 60 is what it declares).
    time.sleep(1.2)
    assert get_json(base, "/status")["drift"]["resources"] == []

    desired_repo.edit_yaml("connectors/orders.yaml", lambda d: d.pop("retention_dayz"))
    fixed = desired_repo.commit_and_push("fix the typo")
    push_event(base, WEBHOOK_SECRET)
    wait_for(lambda: converged_on(base, fixed), what="convergence on the fix")
    assert ack_deadline(project_id, "orders-ingest") == 120
    assert value(scrape(base), "headwater_head_valid") == 1
    # The alert goes out after the status says converged: wait for it, then check nothing else came.
    wait_for(lambda: alert_receiver.events() == ["sync_failed", "sync_recovered"], what="the recovered alert")


def test_two_daemons_exactly_one_applies(desired_repo, start_daemon, project_id, unique):
    lock_bucket = f"{unique}-lock"
    storage.Client(project=project_id).create_bucket(lock_bucket)
    first = desired_repo.repo.head.commit.hexsha
    a = start_daemon(desired_repo, lock_bucket=lock_bucket, identity="daemon-a")
    wait_for(lambda: value(scrape(a.base), "headwater_lock_held") == 1, what="a holds the lease")
    b = start_daemon(desired_repo, lock_bucket=lock_bucket, identity="daemon-b")
    wait_for(lambda: converged_on(a.base, first), what="a converges")
    wait_for(lambda: get_json(b.base, "/status")["last_sync"], what="b syncs")

    second_desired = desired_repo.edit_yaml("platform.yaml", lambda d: d["pubsub"].update(ack_deadline_seconds=75))
    assert second_desired is None
    second = desired_repo.commit_and_push("ack 75")
    for running in (a, b):
        push_event(running.base, WEBHOOK_SECRET)
    wait_for(lambda: converged_on(a.base, second), what="a converges on the new commit")
    wait_for(lambda: get_json(b.base, "/status")["revision"] == second, what="b serves the new commit")
    assert ack_deadline(project_id, "orders-ingest") == 75

    sa, sb = scrape(a.base), scrape(b.base)
    assert value(sa, "headwater_apply_operations_total") > 0
    assert value(sb, "headwater_apply_operations_total") == 0
    assert value(sa, "headwater_lock_held") == 1 and value(sb, "headwater_lock_held") == 0
    assert value(sb, "headwater_reconcile_total", result="observe_only") >= 2
    status_b = get_json(b.base, "/status")
    assert status_b["lock"]["holder"] == "daemon-a" and status_b["lock"]["held"] is False
    assert status_b["last_sync"]["result"] == "observe_only"

    # a stops (releasing the lease): b takes over and applies what comes next.
    a.daemon.shutdown()
    wait_for(lambda: value(scrape(b.base), "headwater_lock_held") == 1, timeout=10, what="b takes the lease")
    desired_repo.edit_yaml("platform.yaml", lambda d: d["pubsub"].update(ack_deadline_seconds=80))
    third = desired_repo.commit_and_push("ack 80")
    push_event(b.base, WEBHOOK_SECRET)
    wait_for(lambda: converged_on(b.base, third), what="b converges")
    assert ack_deadline(project_id, "orders-ingest") == 80
    assert value(scrape(b.base), "headwater_apply_operations_total") > 0
    assert isinstance(b.daemon.lease, Lease)
