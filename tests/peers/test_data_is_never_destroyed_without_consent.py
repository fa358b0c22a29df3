"""A resource that holds data is never deleted or replaced without consent, whatever its kind
(peers replaced a subscription - its unacked messages with it - when its topic changed, with no
gate: only tables and buckets were protected)."""

from __future__ import annotations

import json

from google.cloud import pubsub_v1
from helpers import edit_yaml

from providers import pubsub_data


def test_moving_a_source_to_another_topic_keeps_its_subscription_and_backlog(platform_repo, hw, project_id):
    repo = platform_repo(["clickstream"])
    assert hw("apply", "--repo", repo, "--auto-approve")[0] == 0
    pubsub_data.publish(project_id, "clickstream", [json.dumps({"event_id": str(i)}).encode() for i in range(5)])

    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: d["ingestion"].update(pubsub_topic="web-events"))
    code, out, _ = hw("plan", "--repo", repo, "--format", "json")
    changes = {c["address"]: c for c in json.loads(out)["changes"]}
    sub = changes["pubsub_subscription.clickstream-ingest"]
    assert (sub["action"], sub["replace_paths"]) == ("replace", ["topic"])
    assert sub["blocked"].startswith("replace would destroy the data this pubsub_subscription holds: its unacked "
                                     "messages; the backlog is not observable on the Pub/Sub emulator")
    assert changes["pubsub_topic.web-events"]["action"] == "create" and not changes["pubsub_topic.web-events"]["blocked"]

    code, out, err = hw("apply", "--repo", repo, "--auto-approve")
    assert code == 1 and "blocked" in err
    # --allow-destroy alone is not enough: the source is deletion-protected (the default).
    code, out, _ = hw("plan", "--repo", repo, "--allow-destroy")
    assert "refused: deletion_protection is true for this pubsub_subscription" in out

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project_id, "clickstream-ingest")
    assert subscriber.get_subscription(request={"subscription": path}).topic.endswith("/topics/clickstream")
    assert len(pubsub_data.pull_available(project_id, "clickstream-ingest")) == 5, "the 5 messages are still there"


def test_a_removed_sources_topics_and_subscriptions_are_kept_without_consent(platform_repo, hw):
    repo = platform_repo(["clickstream", "orders"])
    assert hw("apply", "--repo", repo, "--auto-approve")[0] == 0
    (repo / "connectors" / "clickstream.yaml").unlink()
    code, out, _ = hw("plan", "--repo", repo, "--prune", "--format", "json")
    doc = json.loads(out)
    pubsub = {c["address"]: c for c in doc["changes"] if c["kind"].startswith("pubsub_")}
    assert set(pubsub) == {"pubsub_topic.clickstream", "pubsub_topic.clickstream-dlq",
                           "pubsub_subscription.clickstream-ingest", "pubsub_subscription.clickstream-dlq-hold"}
    assert all(c["action"] == "delete" and c["blocked"] for c in pubsub.values())
