"""The daemon's side of the Cloud Asset Inventory feed (reconciler/daemon/asset_watch.py): set-up
once the project is known, retries when it fails, and - on the Pub/Sub emulator - a notification
published to the feed's topic invalidates the cached address (Cloud Asset Inventory itself has no
emulator: the test publishes what it would)."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.daemon import asset_watch
from reconciler.daemon.asset_watch import AssetWatch, subscription_id
from reconciler.incremental import ObservedCache


class FakeFeed:
    def __init__(self, outcome: str | Exception = "created") -> None:
        self.outcome = outcome
        self.ensured = 0

    def ensure(self) -> str:
        self.ensured += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class FakeSubscriber:
    def __init__(self, on_change) -> None:
        self.on_change = on_change
        self.started = self.stopped = False
        self.received = self.unmapped = 0

    def ensure(self) -> None:
        pass

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def wait_until(condition, seconds: float = 20.0) -> bool:
    """Polls; not a timing assertion (the bound only keeps a broken test from hanging)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_the_watch_waits_for_a_project_then_sets_up_and_invalidates() -> None:
    project: list[str | None] = [None]
    invalidated: list[set[str]] = []
    woken = threading.Event()
    feed, subscribers = FakeFeed(), []

    def subscriber_factory(p, subscription, on_change):
        subscribers.append(FakeSubscriber(on_change))
        return subscribers[-1]

    watch = AssetWatch(lambda: project[0], invalidated.append, identity="host-1-abc", wake=woken.set,
                       feed_factory=lambda p: feed, subscriber_factory=subscriber_factory)
    watch.start()
    try:
        assert watch.status()["state"] == "waiting"
        project[0] = "hw-watch"
        assert wait_until(lambda: watch.state == "watching")
        assert (feed.ensured, subscribers[0].started, watch.feed) == (1, True, "created")

        watch.changed({"pubsub_topic.orders"})
        watch.changed(set())  # nothing mapped: nothing to do

        assert invalidated == [{"pubsub_topic.orders"}] and woken.is_set()
        assert watch.status()["invalidated"] == 1 and watch.status()["project"] == "hw-watch"
    finally:
        watch.stop()
    assert subscribers[0].stopped and watch.state == "stopped"


def test_a_failing_set_up_is_reported_and_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asset_watch, "RETRY_SECONDS", (0.01,))
    feed = FakeFeed(PermissionError("cloudasset.feeds.get denied"))
    watch = AssetWatch(lambda: "hw-watch", lambda a: None, identity="x", feed_factory=lambda p: feed,
                       subscriber_factory=lambda p, s, c: FakeSubscriber(c))
    watch.start()
    try:
        assert wait_until(lambda: feed.ensured >= 2)
        assert watch.status()["state"] in ("failed", "setting-up")
        assert "cloudasset.feeds.get denied" in (watch.status()["error"] or "")
        feed.outcome = "unchanged"
        assert wait_until(lambda: watch.state == "watching")
        assert watch.status()["error"] is None
    finally:
        watch.stop()


def test_subscription_ids_are_valid_and_per_replica() -> None:
    a, b = subscription_id("host-1/pid 7"), subscription_id("host-2")
    assert a != b and a.startswith("headwater-asset-feed-") and len(a) <= 255
    assert all(c.isalnum() or c == "-" for c in a)


def test_a_published_notification_invalidates_the_cached_address(emulators, project_id: str) -> None:
    from google.cloud import asset_v1, pubsub_v1

    from providers.asset_feed import FeedSubscriber, topic_path

    cache = ObservedCache()
    subscribers: list[FeedSubscriber] = []

    def subscriber_factory(project, subscription, on_change):
        subscribers.append(FeedSubscriber(project, subscription, on_change))
        return subscribers[-1]

    watch = AssetWatch(lambda: project_id, cache.invalidate, identity="test", feed_factory=lambda p: FakeFeed(),
                       subscriber_factory=subscriber_factory)
    watch.start()
    try:
        assert wait_until(lambda: watch.state == "watching"), watch.status()
        temporal = asset_v1.TemporalAsset(asset=asset_v1.Asset(
            name=f"//pubsub.googleapis.com/projects/{project_id}/subscriptions/orders-ingest",
            asset_type="pubsub.googleapis.com/Subscription",
            resource=asset_v1.Resource(data={"name": f"projects/{project_id}/subscriptions/orders-ingest",
                                             "ackDeadlineSeconds": 600})))
        publisher = pubsub_v1.PublisherClient()
        publisher.publish(topic_path(project_id), asset_v1.TemporalAsset.to_json(temporal).encode()).result(timeout=30)

        assert wait_until(lambda: "pubsub_subscription.orders-ingest" in cache.invalid()), watch.status()
        assert watch.status()["received"] == 1 and watch.status()["invalidated"] == 1
    finally:
        watch.stop()


def test_the_daemon_setting_starts_the_watch_on_its_invalidate() -> None:
    from reconciler.daemon.settings import Settings

    class Daemon:
        settings = Settings(repo="x", asset_feed=True, identity="replica-1")
        _served = None

        def __init__(self) -> None:
            self.marked: list[set[str]] = []

        def invalidate(self, addresses) -> int:
            self.marked.append(set(addresses))
            return len(self.marked[-1])

    daemon = Daemon()
    watch = asset_watch.for_daemon(daemon)
    watch.changed({"storage_bucket.acme-landing"})
    assert daemon.marked == [{"storage_bucket.acme-landing"}] and watch.project is None
    assert Settings(repo="x").asset_feed is False  # off by default
