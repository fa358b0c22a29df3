"""The daemon's side of the Cloud Asset Inventory feed (issue 14): drift on GCP seen in seconds.

Off by default; ``--asset-feed`` (``HEADWATER_ASSET_FEED=true``) turns it on. Once the daemon
knows its platform's project (its first loaded revision), `AssetWatch`:

1. ensures the project's feed (`providers.asset_feed.AssetFeed.ensure`: one get when it is as
   wanted) on the asset types headwater manages, publishing to the topic ``headwater-asset-feed``;
2. ensures this replica's own subscription to it (``headwater-asset-feed-<identity>``: every
   replica needs every notification; an unused one expires after a day) and streaming-pulls it;
3. for each notification, maps the asset to headwater addresses
   (`providers.asset_feed.addresses_of`) and calls ``invalidate(addresses)``: in the daemon,
   `Daemon.invalidate`, which marks them in its observed-state cache
   (`reconciler.incremental.ObservedCache.invalidate`) and has the worker check just those for
   drift at once, reading them by name, rather than at the next drift interval.

Everything Google is in `providers.asset_feed`; this module imports no Google library. A feed
that cannot be set up (no permission, the API not enabled) is logged once and retried with
backoff; the daemon runs on without it: the drift pass on ``--drift-interval`` stays the
guarantee, the feed only shortens the wait. Notifications are at-least-once and may arrive
seconds to minutes after the change; a lost one is found by the next drift pass.

Verified only on GCP (docs/daemon.md, "Watching GCP"): the local emulators have no Cloud Asset
Inventory; the tests run the subscriber against the Pub/Sub emulator with notifications they
publish themselves.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

RETRY_SECONDS = (5.0, 30.0, 120.0, 600.0)  # backoff between set-up attempts, the last repeated


def subscription_id(identity: str) -> str:
    """This replica's subscription: ``headwater-asset-feed-<12 hex of its identity>`` (a valid id
    whatever the identity's characters)."""
    return f"headwater-asset-feed-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


class AssetWatch:
    """Start it with `start`; it waits for ``project()`` to name a project, then watches.

    ``invalidate(addresses)``: where changed addresses go (the cache's ``invalidate``);
    ``wake()``: optional, called after each invalidation; ``feed_factory(project)`` and
    ``subscriber_factory(project, subscription, on_change)`` build the provider objects (tests
    inject theirs; by default `providers.asset_feed.AssetFeed` and `FeedSubscriber`).
    """

    def __init__(self, project: Callable[[], str | None], invalidate: Callable[[set[str]], Any], *,
                 identity: str, wake: Callable[[], Any] | None = None,
                 feed_factory: Callable[[str], Any] | None = None,
                 subscriber_factory: Callable[[str, str, Callable[[set[str]], Any]], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._project = project
        self._invalidate = invalidate
        self._wake = wake
        self.subscription = subscription_id(identity)
        self._feed_factory = feed_factory or _default_feed
        self._subscriber_factory = subscriber_factory or _default_subscriber
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscriber: Any = None
        self._lock = threading.Lock()
        self.project: str | None = None
        self.state = "waiting"  # waiting (for a project) / setting-up / watching / failed / stopped
        self.feed: str | None = None  # created / updated / unchanged
        self.error: str | None = None
        self.invalidated = 0  # addresses handed to invalidate, in all
        self.last_change_at: float | None = None

    # -- lifecycle --

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="headwater-asset-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            subscriber.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        self.state = "stopped"

    def status(self) -> dict[str, Any]:
        """For /status: what the watch is doing; never a credential."""
        subscriber = self._subscriber
        return {
            "state": self.state, "project": self.project, "feed": self.feed, "subscription": self.subscription,
            "error": self.error, "invalidated": self.invalidated, "last_change_at": self.last_change_at,
            "received": getattr(subscriber, "received", 0), "unmapped": getattr(subscriber, "unmapped", 0),
        }

    # -- the work --

    def changed(self, addresses: Iterable[str]) -> None:
        """A notification's addresses: into the cache, then wake the worker."""
        addresses = set(addresses)
        if not addresses:
            return
        with self._lock:
            self.invalidated += len(addresses)
            self.last_change_at = self._clock()
        self._invalidate(addresses)
        log.info("asset feed: invalidated %s", ", ".join(sorted(addresses)))
        if self._wake is not None:
            self._wake()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            project = self._project()
            if not project:
                self._stop.wait(1.0)
                continue
            self.project, self.state = project, "setting-up"
            try:
                self.feed = self._feed_factory(project).ensure()
                subscriber = self._subscriber_factory(project, self.subscription, self.changed)
                subscriber.ensure()
                subscriber.start()
                self._subscriber = subscriber
                self.state, self.error = "watching", None
                log.info("asset feed: watching project %s (feed %s, subscription %s)", project, self.feed,
                         self.subscription)
                return
            except Exception as exc:  # noqa: BLE001 - the daemon runs on; the drift pass is the guarantee
                self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
                wait = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                log.warning("asset feed: set-up failed (retrying in %.0f s; drift passes go on): %s", wait, self.error)
                attempt += 1
                self._stop.wait(wait)


def _default_feed(project: str) -> Any:
    from providers.asset_feed import AssetFeed

    return AssetFeed(project)


def _default_subscriber(project: str, subscription: str, on_change: Callable[[set[str]], Any]) -> Any:
    from providers.asset_feed import FeedSubscriber

    return FeedSubscriber(project, subscription, on_change)


def for_daemon(daemon: Any) -> AssetWatch:
    """The watch of a `reconciler.daemon.service.Daemon`: the project of its last good revision, and
    its ``invalidate`` (which marks the addresses in its observed-state cache and asks the worker
    for a drift check of just those, at once)."""
    def project() -> str | None:
        served = getattr(daemon, "_served", None)
        return served.platform.project if served is not None else None

    return AssetWatch(project, daemon.invalidate, identity=daemon.settings.identity)
