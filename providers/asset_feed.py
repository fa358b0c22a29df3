"""Watch instead of poll on GCP: a Cloud Asset Inventory feed to Pub/Sub (issue 14).

This module is the only one that imports ``google.cloud.asset``; it also holds the feed's
Pub/Sub subscriber (``google.cloud.pubsub``), so that the daemon's side
(`reconciler.daemon.asset_watch`) stays free of Google imports.

What it does
------------
* `ensure_feed`: one project feed (``projects/<p>/feeds/<feed id>``, content type RESOURCE) on
  the asset types headwater manages (`ASSET_TYPES`), publishing to a Pub/Sub topic: ``get_feed``,
  then ``create_feed`` when it is missing, or ``update_feed`` with a mask naming only what differs
  (asset types, content type, destination). Idempotent: a feed as wanted costs one get.
* `addresses_of`: an asset's full resource name (``//pubsub.googleapis.com/projects/p/topics/t``)
  and, where the name alone does not tell, its resource data -> the headwater addresses
  (``kind.name``, `reconciler.resources.address`) it may be. Pure; parametrized in
  ``tests/providers/test_asset_feed.py``.
* `addresses_of_message`: a feed notification (a ``TemporalAsset`` as JSON, parsed with the
  client's own type) -> those addresses.
* `FeedSubscriber`: ensures the feed's topic and this watcher's subscription exist, then
  streaming-pulls; each message's addresses go to a callback and the message is acked.

Asset types (`ASSET_TYPES`), their full resource names and the headwater kinds
--------------------------------------------------------------------------------
The type strings are Cloud Asset Inventory's, as listed on
https://cloud.google.com/asset-inventory/docs/supported-asset-types and as Google's own
Terraform-to-CAI converters spell them (GoogleCloudPlatform/terraform-google-conversion,
``tfplan2cai/converters/google/resources/services/*``, e.g. ``PubsubTopicAssetType``, commit
b9c00f8 of 2026-08-21, with each type's ``cai.AssetName`` template):

==============================================  ==========================================================  ==================================
asset type                                      full resource name                                          headwater address
==============================================  ==========================================================  ==================================
``pubsub.googleapis.com/Topic``                 ``//pubsub.googleapis.com/projects/P/topics/T``             ``pubsub_topic.T``
``pubsub.googleapis.com/Subscription``          ``//pubsub.googleapis.com/projects/P/subscriptions/S``      ``pubsub_subscription.S``
``storage.googleapis.com/Bucket``               ``//storage.googleapis.com/B``                              ``storage_bucket.B``
``bigquery.googleapis.com/Dataset``             ``//bigquery.googleapis.com/projects/P/datasets/D``         ``bigquery_dataset.D``
``bigquery.googleapis.com/Table``               ``//bigquery.googleapis.com/projects/P/datasets/D/tables/T``  ``bigquery_table.D.T`` (a view or
                                                                                                            materialized view by its data's
                                                                                                            ``type``; all three without data)
``dataflow.googleapis.com/Job``                 ``//dataflow.googleapis.com/projects/P/locations/L/jobs/ID``  ``dataflow_job.<data name>``
``run.googleapis.com/Service``                  ``//run.googleapis.com/projects/P/locations/L/services/S``  ``cloud_run_service.S``
``datastream.googleapis.com/Stream``            ``//datastream.googleapis.com/projects/P/locations/L/streams/S``  ``datastream_stream.S``
``datastream.googleapis.com/ConnectionProfile`` ``... /locations/L/connectionProfiles/C``                   ``datastream_connection_profile.C``
``monitoring.googleapis.com/AlertPolicy``       ``//monitoring.googleapis.com/projects/P/alertPolicies/ID``  ``monitoring_alert_policy.<data userLabels headwater-source>``
``monitoring.googleapis.com/NotificationChannel`` ``... /notificationChannels/ID``                          ``monitoring_notification_channel.<data labels email_address>``
==============================================  ==========================================================  ==================================

A Dataflow job, an alert policy or a channel is named by an id Google chose, so its address comes
from the resource data the feed sends (content type RESOURCE); a notification without it (or with
it but not headwater's) maps to nothing. Kinds with no asset type here (dashboards, transfer jobs,
notifications, governance kinds) are found by the drift pass, as before.

Verified only on GCP: there is no emulator of Cloud Asset Inventory. The requests are checked
against the client's types through the official client (REST transport) to a local endpoint,
and the subscriber end to end on the Pub/Sub emulator with notifications published by the test.
Cloud Asset Inventory publishes a change within seconds to minutes of it (Google documents no
bound); the drift pass stays the guarantee. The feed's service agent
(``service-<project number>@gcp-sa-cloudasset.iam.gserviceaccount.com``) must be allowed to publish
to the topic (``roles/pubsub.publisher``), and the caller needs ``cloudasset.feeds.*``
(``roles/cloudasset.owner``). Nothing here carries ``managed-by=headwater``: the feed's topic and
subscriptions are plumbing, never planned (a plan would prune them as orphans otherwise).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.cloud import asset_v1
from google.protobuf import field_mask_pb2
from google.protobuf.json_format import ParseError

from providers.calls import CallCounter
from providers.errors import AlreadyExists, NotFound
from reconciler.resources import Kind

log = logging.getLogger(__name__)

FEED_ID = "headwater"
TOPIC_ID = "headwater-asset-feed"
SUBSCRIPTION_PREFIX = "headwater-asset-feed"
# A watcher's subscription expires after a day without a subscriber (a daemon replica that is gone).
SUBSCRIPTION_TTL_SECONDS = 24 * 3600
RPC_TIMEOUT_S = 60.0

# Cloud Asset Inventory's type strings (module docstring, with the source they are cited from).
ASSET_TYPES: tuple[str, ...] = (
    "pubsub.googleapis.com/Topic",
    "pubsub.googleapis.com/Subscription",
    "storage.googleapis.com/Bucket",
    "bigquery.googleapis.com/Dataset",
    "bigquery.googleapis.com/Table",
    "dataflow.googleapis.com/Job",
    "run.googleapis.com/Service",
    "datastream.googleapis.com/Stream",
    "datastream.googleapis.com/ConnectionProfile",
    "monitoring.googleapis.com/AlertPolicy",
    "monitoring.googleapis.com/NotificationChannel",
)

SOURCE_LABEL = "headwater-source"  # how headwater names its alert policies (providers.monitoring_resources)
_TABLE_KINDS = {"TABLE": Kind.BIGQUERY_TABLE, "VIEW": Kind.BIGQUERY_VIEW,
                "MATERIALIZED_VIEW": Kind.BIGQUERY_MATERIALIZED_VIEW}


# --- full resource name -> addresses (pure) -----------------------------------------------------


def addresses_of(name: str, asset_type: str = "", data: Mapping[str, Any] | None = None) -> set[str]:
    """The headwater addresses an asset may be (module docstring's table); empty when none.

    ``name`` is the asset's full resource name, ``data`` its resource data when the feed sent it.
    """
    if not name.startswith("//") or "/" not in name[2:]:
        return set()
    host, _, path = name[2:].partition("/")
    parts = path.split("/")
    data = data or {}

    def kind_name(kind: Kind, value: str | None) -> set[str]:
        return {f"{kind}.{value}"} if value else set()

    if host == "pubsub.googleapis.com" and len(parts) == 4 and parts[0] == "projects":
        kind = {"topics": Kind.PUBSUB_TOPIC, "subscriptions": Kind.PUBSUB_SUBSCRIPTION}.get(parts[2])
        return kind_name(kind, parts[3]) if kind else set()
    if host == "storage.googleapis.com" and len(parts) == 1:
        return kind_name(Kind.STORAGE_BUCKET, parts[0])
    if host == "bigquery.googleapis.com" and len(parts) >= 4 and parts[0] == "projects" and parts[2] == "datasets":
        if len(parts) == 4:
            return kind_name(Kind.BIGQUERY_DATASET, parts[3])
        if len(parts) == 6 and parts[4] == "tables":
            table = f"{parts[3]}.{parts[5]}"
            kind = _TABLE_KINDS.get(str(data.get("type") or "").upper())
            return kind_name(kind, table) if kind else {f"{k}.{table}" for k in _TABLE_KINDS.values()}
        return set()
    if len(parts) == 6 and parts[0] == "projects" and parts[2] == "locations":
        collection, last = parts[4], parts[5]
        if host == "run.googleapis.com" and collection == "services":
            return kind_name(Kind.CLOUD_RUN_SERVICE, last)
        if host == "datastream.googleapis.com" and collection == "streams":
            return kind_name(Kind.DATASTREAM_STREAM, last)
        if host == "datastream.googleapis.com" and collection == "connectionProfiles":
            return kind_name(Kind.DATASTREAM_CONNECTION_PROFILE, last)
        if host == "dataflow.googleapis.com" and collection == "jobs":
            # The name carries the job id; headwater knows a job by its name, in the data.
            return kind_name(Kind.DATAFLOW_JOB, data.get("name"))
        return set()
    if host == "monitoring.googleapis.com" and len(parts) == 4 and parts[0] == "projects":
        if parts[2] == "alertPolicies":
            return kind_name(Kind.MONITORING_ALERT_POLICY, (data.get("userLabels") or {}).get(SOURCE_LABEL))
        if parts[2] == "notificationChannels":
            return kind_name(Kind.MONITORING_NOTIFICATION_CHANNEL, (data.get("labels") or {}).get("email_address"))
    return set()


def parse_notification(payload: bytes | str) -> asset_v1.TemporalAsset:
    """A feed notification (a ``TemporalAsset`` in JSON) as the client's type."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    return asset_v1.TemporalAsset.from_json(text, ignore_unknown_fields=True)


def _data(asset: asset_v1.Asset) -> dict[str, Any]:
    # ``resource.data`` is a protobuf Struct; through proto-plus it reads as a mapping.
    if not asset or "resource" not in asset or "data" not in asset.resource:
        return {}
    return json.loads(json.dumps(dict(asset.resource.data), default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return dict(value.items())
    return list(value)


def addresses_of_message(payload: bytes | str) -> set[str]:
    """The addresses a feed notification may concern: the asset's, with its data, or its prior
    state's data when it was deleted (a deleted asset carries none)."""
    temporal = parse_notification(payload)
    asset = temporal.asset
    data = _data(asset) or _data(temporal.prior_asset)
    return addresses_of(asset.name, asset.asset_type, data)


# --- the feed ----------------------------------------------------------------------------------


def feed_path(project: str, feed_id: str = FEED_ID) -> str:
    return f"projects/{project}/feeds/{feed_id}"


def topic_path(project: str, topic_id: str = TOPIC_ID) -> str:
    return f"projects/{project}/topics/{topic_id}"


def wanted_feed(project: str, topic: str, feed_id: str = FEED_ID,
                asset_types: Iterable[str] = ASSET_TYPES) -> asset_v1.Feed:
    return asset_v1.Feed(
        name=feed_path(project, feed_id),
        asset_types=sorted(asset_types),
        content_type=asset_v1.ContentType.RESOURCE,
        feed_output_config=asset_v1.FeedOutputConfig(pubsub_destination=asset_v1.PubsubDestination(topic=topic)),
    )


def feed_differences(live: asset_v1.Feed, wanted: asset_v1.Feed) -> list[str]:
    """The update-mask paths on which ``live`` differs from ``wanted``."""
    paths = []
    if sorted(live.asset_types) != sorted(wanted.asset_types):
        paths.append("asset_types")
    if live.content_type != wanted.content_type:
        paths.append("content_type")
    if live.feed_output_config.pubsub_destination.topic != wanted.feed_output_config.pubsub_destination.topic:
        paths.append("feed_output_config")
    return paths


class AssetFeed:
    """The project's feed, through ``google.cloud.asset_v1.AssetServiceClient``."""

    def __init__(self, project: str, *, client: asset_v1.AssetServiceClient | None = None,
                 feed_id: str = FEED_ID, topic_id: str = TOPIC_ID) -> None:
        self.project = project
        self.feed_id = feed_id
        self.topic = topic_path(project, topic_id)
        self._client = client
        self._lock = threading.Lock()
        self._counter = CallCounter("cloudasset")

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    def ensure(self, asset_types: Iterable[str] = ASSET_TYPES) -> str:
        """Create or converge the feed; returns ``"created"``, ``"updated"`` or ``"unchanged"``."""
        client = self._assets()
        wanted = wanted_feed(self.project, self.topic, self.feed_id, asset_types)
        name = feed_path(self.project, self.feed_id)
        try:
            live = self._counter.rpc("get_feed", name, lambda: client.get_feed(name=name, timeout=RPC_TIMEOUT_S))
        except NotFound:
            request = asset_v1.CreateFeedRequest(parent=f"projects/{self.project}", feed_id=self.feed_id, feed=wanted)
            try:
                self._counter.rpc("create_feed", name,
                                  lambda: client.create_feed(request=request, timeout=RPC_TIMEOUT_S))
                return "created"
            except AlreadyExists:  # another replica created it between our get and create
                live = self._counter.rpc("get_feed", name, lambda: client.get_feed(name=name, timeout=RPC_TIMEOUT_S))
        paths = feed_differences(live, wanted)
        if not paths:
            return "unchanged"
        # The live name (projects/<number>/feeds/<id>) is the one to update.
        feed = asset_v1.Feed(wanted, name=live.name or name)
        request = asset_v1.UpdateFeedRequest(feed=feed, update_mask=field_mask_pb2.FieldMask(paths=paths))
        self._counter.rpc("update_feed", name, lambda: client.update_feed(request=request, timeout=RPC_TIMEOUT_S))
        return "updated"

    def _assets(self) -> asset_v1.AssetServiceClient:
        with self._lock:
            if self._client is None:
                self._client = asset_v1.AssetServiceClient()
            return self._client


# --- the subscriber ----------------------------------------------------------------------------


class FeedSubscriber:
    """Streaming pull of the feed's notifications into ``on_change(addresses)``.

    ``subscription_id`` should be this watcher's own (one per daemon replica: each needs every
    notification); it expires a day after its subscriber is gone.
    """

    def __init__(self, project: str, subscription_id: str, on_change: Callable[[set[str]], object], *,
                 topic_id: str = TOPIC_ID, publisher: Any = None, subscriber: Any = None) -> None:
        self.project = project
        self.topic = topic_path(project, topic_id)
        self.subscription = f"projects/{project}/subscriptions/{subscription_id}"
        self.on_change = on_change
        self._publisher, self._subscriber = publisher, subscriber
        self._future: Any = None
        self._counter = CallCounter("pubsub")
        self.received = 0
        self.unmapped = 0
        self.failed = 0

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    def ensure(self) -> None:
        """The feed's topic and this watcher's subscription exist (created when missing)."""
        from google.cloud import pubsub_v1

        publisher = self._publisher = self._publisher or pubsub_v1.PublisherClient()
        subscriber = self._subscriber = self._subscriber or pubsub_v1.SubscriberClient()
        try:
            self._counter.rpc("create_topic", self.topic,
                              lambda: publisher.create_topic(request={"name": self.topic}, timeout=RPC_TIMEOUT_S))
        except AlreadyExists:
            pass
        request = pubsub_v1.types.Subscription(
            name=self.subscription, topic=self.topic, ack_deadline_seconds=30,
            message_retention_duration={"seconds": 3600},
            expiration_policy={"ttl": {"seconds": SUBSCRIPTION_TTL_SECONDS}},
        )
        try:
            self._counter.rpc("create_subscription", self.subscription,
                              lambda: subscriber.create_subscription(request=request, timeout=RPC_TIMEOUT_S))
        except AlreadyExists:
            pass

    def handle(self, payload: bytes) -> set[str]:
        """One notification: its addresses to ``on_change`` (when it has any)."""
        self.received += 1
        try:
            addresses = addresses_of_message(payload)
        except (ParseError, ValueError, TypeError) as exc:  # not a TemporalAsset: dropped, counted
            self.failed += 1
            log.warning("asset feed: a notification that is not a TemporalAsset was dropped: %s", exc)
            return set()
        if not addresses:
            self.unmapped += 1
            return set()
        self.on_change(addresses)
        return addresses

    def start(self) -> None:
        """Begin the streaming pull (`ensure` first); returns at once."""
        subscriber = self._subscriber
        if subscriber is None:
            self.ensure()
            subscriber = self._subscriber

        def callback(message: Any) -> None:
            try:
                self.handle(message.data)
            except Exception:  # noqa: BLE001 - a failing callback must not stop the stream
                self.failed += 1
                log.exception("asset feed: handling a notification failed")
            message.ack()  # at most once is enough: the drift pass is the guarantee

        self._future = subscriber.subscribe(self.subscription, callback=callback)

    def stop(self, timeout: float = 5.0) -> None:
        future, self._future = self._future, None
        if future is not None:
            future.cancel()
            try:
                future.result(timeout=timeout)
            except Exception:  # noqa: BLE001 - cancelled, or already failed: either way stopped
                pass

    @property
    def running(self) -> bool:
        return self._future is not None and not self._future.done()
