"""The Cloud Asset Inventory feed (providers/asset_feed.py): the feed's requests, sent by the official
client (REST transport) to a local endpoint and read back with the client's own types, and the
mapping from an asset's full resource name to headwater addresses. No emulator exists for Cloud
Asset Inventory: verified on GCP only (docs/daemon.md)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import asset_v1

from providers import asset_feed
from providers.asset_feed import ASSET_TYPES, AssetFeed, FeedSubscriber, addresses_of, addresses_of_message

PROJECT = "hw-feed-test"


class FakeAssetApi:
    """Just enough of cloudasset.googleapis.com/v1 feeds: get (404 when absent), create, patch."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, dict]] = []  # method, path, query, body
        self.feeds: dict[str, dict] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                outer.requests.append((self.command, url.path, query, body))
                status, reply = outer.answer(self.command, url.path, query, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _handle

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        name = path.removeprefix("/v1/")
        if method == "GET":
            if name in self.feeds:
                return 200, self.feeds[name]
            return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
        if method == "POST":
            feed = {**body["feed"], "name": f"{name}/{body['feedId']}"}
            self.feeds[feed["name"]] = feed
            return 200, feed
        if method == "PATCH":
            feed = self.feeds[name]
            for path_ in query.get("updateMask", body.get("updateMask", "")).split(","):
                key = {"asset_types": "assetTypes", "content_type": "contentType",
                       "feed_output_config": "feedOutputConfig"}.get(path_, path_)
                feed[key] = body["feed"][key]
            return 200, feed
        return 400, {"error": {"code": 400, "message": "unsupported"}}

    def client(self) -> asset_v1.AssetServiceClient:
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return asset_v1.AssetServiceClient(transport="rest", credentials=AnonymousCredentials(),
                                           client_options=ClientOptions(api_endpoint=url))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeAssetApi]:
    fake = FakeAssetApi()
    yield fake
    fake.close()


def test_ensure_creates_the_feed_with_the_managed_asset_types(api: FakeAssetApi) -> None:
    feed = AssetFeed(PROJECT, client=api.client())

    assert feed.ensure() == "created"

    (get, create) = api.requests
    assert (get[0], get[1]) == ("GET", f"/v1/projects/{PROJECT}/feeds/headwater")
    assert (create[0], create[1]) == ("POST", f"/v1/projects/{PROJECT}/feeds")
    # The body is what the client's own type serializes: parse it back with that type.
    sent = asset_v1.CreateFeedRequest.from_json(json.dumps(create[3]))
    assert sent.feed_id == "headwater"
    assert sorted(sent.feed.asset_types) == sorted(ASSET_TYPES)
    assert sent.feed.content_type == asset_v1.ContentType.RESOURCE
    assert sent.feed.feed_output_config.pubsub_destination.topic == f"projects/{PROJECT}/topics/headwater-asset-feed"
    assert feed.api_calls() == {"cloudasset.get_feed": 1, "cloudasset.create_feed": 1}


def test_ensure_is_one_get_when_the_feed_is_as_wanted(api: FakeAssetApi) -> None:
    AssetFeed(PROJECT, client=api.client()).ensure()
    api.requests.clear()

    assert AssetFeed(PROJECT, client=api.client()).ensure() == "unchanged"
    assert [(m, p) for m, p, _, _ in api.requests] == [("GET", f"/v1/projects/{PROJECT}/feeds/headwater")]


def test_ensure_updates_only_what_differs(api: FakeAssetApi) -> None:
    AssetFeed(PROJECT, client=api.client()).ensure(asset_types=["pubsub.googleapis.com/Topic"])
    api.requests.clear()

    assert AssetFeed(PROJECT, client=api.client()).ensure() == "updated"

    method, path, query, body = api.requests[-1]
    assert (method, path) == ("PATCH", f"/v1/projects/{PROJECT}/feeds/headwater")
    mask = query.get("updateMask") or body.get("updateMask")
    assert mask.split(",") == ["asset_types"] or mask.split(",") == ["assetTypes"]
    sent = asset_v1.Feed.from_json(json.dumps(body["feed"]))
    assert sorted(sent.asset_types) == sorted(ASSET_TYPES)
    assert sorted(api.feeds[f"projects/{PROJECT}/feeds/headwater"]["assetTypes"]) == sorted(ASSET_TYPES)


def test_asset_types_are_cloud_asset_inventory_type_strings() -> None:
    assert len(set(ASSET_TYPES)) == len(ASSET_TYPES)
    for asset_type in ASSET_TYPES:
        service, _, resource = asset_type.partition("/")
        assert service.endswith(".googleapis.com") and resource[:1].isupper(), asset_type


@pytest.mark.parametrize(("name", "asset_type", "data", "expected"), [
    ("//pubsub.googleapis.com/projects/p/topics/orders", "pubsub.googleapis.com/Topic", None,
     {"pubsub_topic.orders"}),
    ("//pubsub.googleapis.com/projects/p/subscriptions/orders-ingest", "pubsub.googleapis.com/Subscription", None,
     {"pubsub_subscription.orders-ingest"}),
    ("//storage.googleapis.com/acme-landing", "storage.googleapis.com/Bucket", None,
     {"storage_bucket.acme-landing"}),
    ("//bigquery.googleapis.com/projects/p/datasets/silver", "bigquery.googleapis.com/Dataset", None,
     {"bigquery_dataset.silver"}),
    ("//bigquery.googleapis.com/projects/p/datasets/silver/tables/orders", "bigquery.googleapis.com/Table",
     {"type": "TABLE"}, {"bigquery_table.silver.orders"}),
    ("//bigquery.googleapis.com/projects/p/datasets/gold/tables/orders_api", "bigquery.googleapis.com/Table",
     {"type": "VIEW"}, {"bigquery_view.gold.orders_api"}),
    ("//bigquery.googleapis.com/projects/p/datasets/gold/tables/daily", "bigquery.googleapis.com/Table",
     {"type": "MATERIALIZED_VIEW"}, {"bigquery_materialized_view.gold.daily"}),
    # A deletion carries no data: every kind a table asset may be.
    ("//bigquery.googleapis.com/projects/p/datasets/gold/tables/daily", "bigquery.googleapis.com/Table", None,
     {"bigquery_table.gold.daily", "bigquery_view.gold.daily", "bigquery_materialized_view.gold.daily"}),
    ("//dataflow.googleapis.com/projects/p/locations/europe-west1/jobs/2026-01-01_00_00_00-123",
     "dataflow.googleapis.com/Job", {"name": "orders-ingest", "id": "2026-01-01_00_00_00-123"},
     {"dataflow_job.orders-ingest"}),
    ("//dataflow.googleapis.com/projects/p/locations/europe-west1/jobs/2026-01-01_00_00_00-123",
     "dataflow.googleapis.com/Job", None, set()),  # the id alone names no headwater job
    ("//run.googleapis.com/projects/p/locations/europe-west1/services/payments-connector",
     "run.googleapis.com/Service", None, {"cloud_run_service.payments-connector"}),
    ("//datastream.googleapis.com/projects/p/locations/europe-west1/streams/shop",
     "datastream.googleapis.com/Stream", None, {"datastream_stream.shop"}),
    ("//datastream.googleapis.com/projects/p/locations/europe-west1/connectionProfiles/shop-pg",
     "datastream.googleapis.com/ConnectionProfile", None, {"datastream_connection_profile.shop-pg"}),
    ("//monitoring.googleapis.com/projects/p/alertPolicies/123", "monitoring.googleapis.com/AlertPolicy",
     {"userLabels": {"managed-by": "headwater", "headwater-source": "orders"}}, {"monitoring_alert_policy.orders"}),
    ("//monitoring.googleapis.com/projects/p/alertPolicies/123", "monitoring.googleapis.com/AlertPolicy",
     {"userLabels": {}}, set()),  # not headwater's
    ("//monitoring.googleapis.com/projects/p/notificationChannels/9", "monitoring.googleapis.com/NotificationChannel",
     {"labels": {"email_address": "oncall@example.com"}}, {"monitoring_notification_channel.oncall@example.com"}),
    ("//pubsub.googleapis.com/projects/p/snapshots/s", "pubsub.googleapis.com/Snapshot", None, set()),
    ("//storage.googleapis.com/acme-landing/objects/a.json", "storage.googleapis.com/Object", None, set()),
    ("//compute.googleapis.com/projects/p/zones/z/instances/i", "compute.googleapis.com/Instance", None, set()),
    ("projects/p/topics/t", "", None, set()),  # not a full resource name
])
def test_addresses_of(name: str, asset_type: str, data: dict | None, expected: set[str]) -> None:
    assert addresses_of(name, asset_type, data) == expected


def notification(name: str, asset_type: str, data: dict | None, *, deleted: bool = False,
                 prior: dict | None = None) -> bytes:
    """A feed notification as Cloud Asset Inventory publishes it: a TemporalAsset in JSON."""
    asset = asset_v1.Asset(name=name, asset_type=asset_type)
    if data is not None:
        asset.resource = asset_v1.Resource(data=data)
    temporal = asset_v1.TemporalAsset(asset=asset, deleted=deleted)
    if prior is not None:
        temporal.prior_asset = asset_v1.Asset(name=name, asset_type=asset_type, resource=asset_v1.Resource(data=prior))
        temporal.prior_asset_state = asset_v1.TemporalAsset.PriorAssetState.PRESENT
    return asset_v1.TemporalAsset.to_json(temporal).encode()


def test_a_notification_maps_through_its_data_or_its_prior_state() -> None:
    job = "//dataflow.googleapis.com/projects/p/locations/l/jobs/123"
    assert addresses_of_message(notification(job, "dataflow.googleapis.com/Job", {"name": "orders-ingest"})) == {
        "dataflow_job.orders-ingest"}
    table = "//bigquery.googleapis.com/projects/p/datasets/gold/tables/v"
    assert addresses_of_message(notification(table, "bigquery.googleapis.com/Table", None, deleted=True,
                                             prior={"type": "VIEW"})) == {"bigquery_view.gold.v"}


def test_the_subscriber_hands_mapped_addresses_on_and_counts_the_rest() -> None:
    seen: list[set[str]] = []
    subscriber = FeedSubscriber(PROJECT, "headwater-asset-feed-test", seen.append, publisher=object(),
                                subscriber=object())

    subscriber.handle(notification("//pubsub.googleapis.com/projects/p/topics/orders", "pubsub.googleapis.com/Topic",
                                   {"name": "projects/p/topics/orders"}))
    subscriber.handle(notification("//compute.googleapis.com/projects/p/zones/z/instances/i",
                                   "compute.googleapis.com/Instance", None))
    subscriber.handle(b"not json")

    assert seen == [{"pubsub_topic.orders"}]
    assert (subscriber.received, subscriber.unmapped, subscriber.failed) == (3, 1, 1)


def test_only_providers_import_the_asset_client() -> None:
    # The daemon's side stays free of Google imports (its module is plain Python).
    import reconciler.daemon.asset_watch as watch

    source = open(watch.__file__).read()
    assert "google.cloud" not in source and asset_feed.__name__ == "providers.asset_feed"
