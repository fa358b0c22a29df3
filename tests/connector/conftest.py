"""Fixtures of the connector runtime's tests: the fake API, a topic with its subscriptions on the
Pub/Sub emulator, a checkpoint bucket on the Storage emulator, and a poller wired to them.

The emulators are the session's (tests/conftest.py ``emulators``): nothing here starts one.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.cloud import pubsub_v1, storage

from connector.checkpoint import CheckpointStore
from connector.logs import record_secret_forms
from connector.publish import RecordPublisher, pubsub_transport
from connector.rest_api import Poller
from connector.spec import ConnectorSpec, parse_spec
from providers.pubsub_data import Message
from tests.connector.fake_api import FakeApi, make_records, serve

SOURCE_ID = "payments"


@pytest.fixture
def api() -> Iterator[FakeApi]:
    """A fake API with 35 records in pages of 10."""
    fake = FakeApi(records=make_records(35), page_size=10)
    server, _ = serve(fake)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class PubSub:
    """The source's topic and dead-letter topic, each with a subscription to read them back."""

    project: str
    topic: str
    dead_letter_topic: str

    def records(self) -> list[Message]:
        return pull_all(self.project, "records")

    def dead_letters(self) -> list[Message]:
        return pull_all(self.project, "dead-letters")


def pull_all(project: str, subscription: str) -> list[Message]:
    """Every message the subscription holds now, acknowledged. Unlike providers.pubsub_data's
    pull (which waits out a 2 s pull timeout at the end), it asks the emulator to answer at once:
    everything the connector published was acknowledged before the test looks."""
    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(project, subscription)
    received: list[Message] = []
    while True:
        with warnings.catch_warnings():  # return_immediately is deprecated on Google's service, not here
            warnings.simplefilter("ignore", DeprecationWarning)
            response = subscriber.pull(request={"subscription": path, "max_messages": 1000,
                                                "return_immediately": True}, retry=None, timeout=10)
        if not response.received_messages:
            return received
        for item in response.received_messages:
            received.append(Message(item.message.message_id, bytes(item.message.data), dict(item.message.attributes)))
        subscriber.acknowledge(request={"subscription": path,
                                        "ack_ids": [item.ack_id for item in response.received_messages]})


@pytest.fixture
def pubsub(emulators, project_id: str) -> PubSub:
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topics = {}
    for topic, subscription in ((SOURCE_ID, "records"), (f"{SOURCE_ID}-dlq", "dead-letters")):
        topics[topic] = publisher.create_topic(name=publisher.topic_path(project_id, topic)).name
        subscriber.create_subscription(name=subscriber.subscription_path(project_id, subscription),
                                       topic=topics[topic], ack_deadline_seconds=60)
    return PubSub(project_id, topics[SOURCE_ID], topics[f"{SOURCE_ID}-dlq"])


@pytest.fixture
def bucket(emulators, unique: str) -> str:
    name = f"{unique}-landing"
    storage.Client().create_bucket(name)
    return name


def read_checkpoint(bucket: str) -> dict[str, Any] | None:
    blob = storage.Client().bucket(bucket).get_blob(f"_connectors/{SOURCE_ID}/state.json")
    return None if blob is None else json.loads(blob.download_as_bytes())


def rest_spec(api: FakeApi, pubsub: PubSub, bucket: str, path: str = "/next_url", **rest: Any) -> dict[str, Any]:
    """A rest_api spec document for ``api``'s ``path``, fast test timings; ``rest`` overrides."""
    pagination = {"/next_url": {"type": "next_url", "path": "next"}, "/link": {"type": "link_header"},
                  "/cursor": {"type": "cursor", "param": "after", "path": "meta.next"},
                  "/page": {"type": "page", "param": "p", "start": 1}}.get(path, {"type": "none"})
    records = {"/link": None, "/cursor": "items", "/page": "results"}.get(path, "data")
    return {
        "version": 1, "source_id": SOURCE_ID, "project": pubsub.project, "connector_type": "rest_api",
        "topic": pubsub.topic, "dead_letter_topic": pubsub.dead_letter_topic,
        "checkpoint": f"gs://{bucket}/_connectors/{SOURCE_ID}/state.json",
        "rest_api": {
            "endpoint": api.url(path), "params": {}, "auth": {"type": "none"}, "records": records,
            "pagination": pagination, "poll_interval_seconds": 0.05, "request_timeout_seconds": 5,
            "max_requests_per_minute": 10_000, "max_retries": 3, "retry_initial_seconds": 0.01,
            "retry_max_seconds": 2, "checkpoint_interval_seconds": 0, **rest,
        },
    }


@pytest.fixture
def make_poller(emulators) -> Iterator[Callable[..., Poller]]:
    """``make_poller(spec_document, secret=None)``: a Poller publishing to the emulator."""
    made: list[tuple[Poller, Any]] = []

    def make(document: dict[str, Any], secret: str | None = None, **kwargs: Any) -> Poller:
        spec: ConnectorSpec = parse_spec(document)
        transport = pubsub_transport()
        publisher = RecordPublisher(transport, source_id=spec.source_id, topic=spec.topic,
                                    dead_letter_topic=spec.dead_letter_topic, secrets=record_secret_forms(secret))
        poller = Poller(spec, secret, publisher, CheckpointStore(spec.checkpoint_bucket, spec.checkpoint_object),
                        **kwargs)
        made.append((poller, transport))
        return poller

    yield make
    for poller, transport in made:
        poller.close()
        transport.stop()


def ids_of(messages: list[Message]) -> list[int]:
    return sorted(json.loads(m.data)["id"] for m in messages)
