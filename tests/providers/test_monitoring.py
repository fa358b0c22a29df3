"""Cloud Monitoring reads (a subscription's backlog): the request sent and the answer parsed, against
a local HTTP endpoint that answers as the REST reference documents ``projects.timeSeries.list``.
What the real service accepts (the filter) is verified only there (providers/monitoring.py)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from providers.monitoring import MAX_IDS, CloudMonitoring

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


class FakeMonitoring:
    def __init__(self, pages: list[dict], status: int = 200) -> None:
        self.pages, self.status, self.queries = pages, status, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                outer.queries.append((url.path, query))
                page = outer.pages[int(query.get("pageToken", 0))] if outer.status == 200 else {"error": {}}
                data = json.dumps(page).encode()
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}/v3"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def series(subscription: str, *values: int) -> dict:
    return {"resource": {"type": "pubsub_subscription", "labels": {"subscription_id": subscription}},
            "points": [{"value": {"int64Value": str(v)}} for v in values]}  # newest first


@pytest.fixture
def monitoring():
    servers: list[FakeMonitoring] = []

    def make(pages: list[dict], status: int = 200) -> tuple[FakeMonitoring, CloudMonitoring]:
        fake = FakeMonitoring(pages, status)
        servers.append(fake)
        return fake, CloudMonitoring("p", endpoint=fake.endpoint, session=requests.Session(), clock=lambda: NOW)

    yield make
    for fake in servers:
        fake.close()


def test_latest_values_of_many_subscriptions_in_one_request_per_page(monitoring):
    fake, client = monitoring([
        {"timeSeries": [series("orders-ingest", 5, 9)], "nextPageToken": "1"},
        {"timeSeries": [series("payments-ingest", 0), {"resource": {"labels": {}}, "points": []}]},
    ])
    values = client.latest("pubsub.googleapis.com/subscription/num_undelivered_messages", "pubsub_subscription",
                           "subscription_id", ["payments-ingest", "orders-ingest", "gone"])
    assert values == {"orders-ingest": 5, "payments-ingest": 0}, "the newest point; ids without one left out"
    (path, first), (_, second) = fake.queries
    assert path == "/v3/projects/p/timeSeries" and second["pageToken"] == "1"
    assert first["filter"] == ('metric.type = "pubsub.googleapis.com/subscription/num_undelivered_messages" AND '
                               'resource.type = "pubsub_subscription" AND resource.label.subscription_id = '
                               'one_of("gone", "orders-ingest", "payments-ingest")')
    assert (first["interval.startTime"], first["interval.endTime"]) == ("2026-11-30T11:50:00Z", "2026-11-30T12:00:00Z")


def test_many_ids_are_asked_in_chunks(monitoring):
    fake, client = monitoring([{"timeSeries": []}])
    client.latest("m", "pubsub_subscription", "subscription_id", [f"s{i}" for i in range(MAX_IDS + 1)])
    assert len(fake.queries) == 2


def test_an_error_is_no_value_never_a_failed_plan(monitoring):
    _, client = monitoring([], status=403)
    assert client.latest("m", "pubsub_subscription", "subscription_id", ["orders-ingest"]) == {}
