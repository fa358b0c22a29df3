"""A reference to another project's resource keeps its project: it is read (to check it exists)
and used by its full name, never created or managed here (peers created ``web-events`` in the
platform's own project and subscribed to that empty topic)."""

from __future__ import annotations

import json

import pytest
from google.cloud import pubsub_v1
from helpers import edit_yaml

from providers import pubsub_data


def test_another_projects_topic_is_subscribed_to_by_its_full_name_and_never_created(platform_repo, hw, project_id):
    repo = platform_repo(["clickstream"])
    shared = f"{project_id}-shared"  # shared-events-prod in the report
    reference = f"projects/{shared}/topics/web-events"
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: d["ingestion"].update(pubsub_topic=reference))
    assert hw("validate", "--repo", repo)[0] == 0

    # Before the other project has the topic: a blocked read, and the subscription waits for it.
    code, out, _ = hw("plan", "--repo", repo, "--format", "json")
    changes = {c["address"]: c for c in json.loads(out)["changes"]}
    assert changes[f"pubsub_topic.{reference}"]["action"] == "read"
    assert changes[f"pubsub_topic.{reference}"]["blocked"]
    assert changes["pubsub_subscription.clickstream-ingest"]["blocked_by"] == [f"pubsub_topic.{reference}"]
    assert "pubsub_topic.web-events" not in changes, "never created in the platform's own project"

    publisher = pubsub_v1.PublisherClient()
    publisher.create_topic(request={"name": reference})
    code, out, err = hw("apply", "--repo", repo, "--auto-approve")
    assert code == 0, out + err
    subscriber = pubsub_v1.SubscriberClient()
    sub = subscriber.get_subscription(request={"subscription": subscriber.subscription_path(project_id,
                                                                                          "clickstream-ingest")})
    assert sub.topic == reference
    topics = {t.name for t in publisher.list_topics(request={"project": f"projects/{project_id}"})}
    assert f"projects/{project_id}/topics/web-events" not in topics

    publisher.publish(reference, b'{"event_id": "e1"}').result(timeout=30)
    assert [m.data for m in pubsub_data.pull_available(project_id, "clickstream-ingest")] == [b'{"event_id": "e1"}']
    assert hw("plan", "--repo", repo)[0] == 0, "converged: the reference is read, never managed"


@pytest.mark.parametrize(("declared", "managed_topic", "reference"), [
    pytest.param("web-events", "web-events", None, id="a-topic-id-is-managed-here"),
    pytest.param("projects/headwater-demo/topics/web-events", "web-events", None,
                 id="a-full-name-in-this-project-is-managed-here-by-its-id"),
    pytest.param("projects/shared-events-prod/topics/web-events", None,
                 "projects/shared-events-prod/topics/web-events", id="another-projects-topic-is-a-reference"),
])
def test_what_a_pubsub_topic_setting_compiles_to(tmp_path, declared, managed_topic, reference):
    from helpers import copy_example

    from reconciler.compile import compile_resources
    from reconciler.load import load_repo
    from reconciler.resources import Kind

    repo = copy_example(tmp_path, ["clickstream"])
    edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: d["ingestion"].update(pubsub_topic=declared))
    resources = {r.address: r for r in compile_resources(load_repo(repo))}
    topics = {r.name: r for r in resources.values() if r.kind == Kind.PUBSUB_TOPIC}
    sub = resources["pubsub_subscription.clickstream-ingest"]
    if reference:
        assert topics[reference].external and not topics[reference].labels
        assert set(topics) == {reference, "clickstream-dlq"}, "nothing created in this project for it"
        assert sub.spec["topic"] == reference and f"pubsub_topic.{reference}" in sub.depends_on
    else:
        assert not topics[managed_topic].external and topics[managed_topic].labels["managed-by"] == "headwater"
        assert sub.spec["topic"] == managed_topic
