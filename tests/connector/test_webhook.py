"""The webhook receiver (its ASGI app, in process) publishing to the Pub/Sub emulator: what each
answer means, and that nothing is published unless the answer is 2xx."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import pytest

from connector.publish import RecordPublisher, pubsub_transport
from connector.spec import Signature, parse_spec
from connector.webhook import create_app, sign, verify_signature
from tests.connector.conftest import SOURCE_ID, PubSub

KEY = b"whsec_test_key_123"
BODY = json.dumps({"id": "evt_1", "type": "charge.succeeded", "amount": 42}).encode()


def hook_spec(pubsub: PubSub, **webhook: Any) -> dict[str, Any]:
    return {
        "version": 1, "source_id": SOURCE_ID, "project": pubsub.project, "connector_type": "webhook",
        "topic": pubsub.topic, "dead_letter_topic": pubsub.dead_letter_topic,
        "webhook": {"path": "/hooks/pay", "max_body_bytes": 1024, "delivery_id_header": "X-Delivery-Id",
                    "records": None,
                    "signature": {"header": "X-Signature", "algorithm": "sha256", "scheme": "hex"}, **webhook},
    }


class Client:
    """Requests straight into the ASGI app (httpx's ASGITransport), one event loop per request.
    tests/connector/test_process.py sends them over a socket to uvicorn instead."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://connector") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


@pytest.fixture
def make_client(emulators) -> Iterator[Callable[..., Client]]:
    """``make_client(spec_document, key=KEY, transport=None)``: a client of the webhook app."""
    transports: list[Any] = []

    def make(document: dict[str, Any], key: bytes | None = KEY, transport: Any = None) -> Client:
        spec = parse_spec(document)
        transport = transport or pubsub_transport()
        transports.append(transport)
        publisher = RecordPublisher(transport, source_id=spec.source_id, topic=spec.topic,
                                    dead_letter_topic=spec.dead_letter_topic)
        return Client(create_app(spec, key, publisher))

    yield make
    for transport in transports:
        if hasattr(transport, "stop"):
            transport.stop()


HEX = {"header": "X-Hub-Signature-256", "algorithm": "sha256", "scheme": "hex"}
STRIPE = {"header": "Stripe-Signature", "algorithm": "sha256", "scheme": "timestamped", "timestamp_tolerance_seconds": 300}


def _hex(algorithm: str, body: bytes = BODY, key: bytes = KEY) -> str:
    return hmac.new(key, body, algorithm).hexdigest()


def _stripe(t: int, body: bytes = BODY, key: bytes = KEY) -> str:
    return hmac.new(key, f"{t}.".encode() + body, "sha256").hexdigest()


NOW = int(time.time())  # at collection: the cases leave a 100 s margin for the time the run takes
ACCEPTED = [
    pytest.param(HEX, f"sha256={_hex('sha256')}", id="hex-github-prefixed"),
    pytest.param(HEX, _hex("sha256"), id="hex-bare"),
    pytest.param(HEX, _hex("sha256").upper(), id="hex-uppercase"),
    pytest.param({**HEX, "algorithm": "sha1", "header": "X-Hub-Signature"}, f"sha1={_hex('sha1')}", id="hex-sha1"),
    pytest.param({**HEX, "algorithm": "sha512"}, _hex("sha512"), id="hex-sha512"),
    pytest.param(STRIPE, f"t={NOW},v1={_stripe(NOW)}", id="timestamped"),
    pytest.param(STRIPE, f"t={NOW},v1={'0' * 64},v1={_stripe(NOW)},v0=legacy", id="timestamped-rotated-keys"),
    pytest.param(STRIPE, f"t={NOW - 200},v1={_stripe(NOW - 200)}", id="timestamped-within-tolerance"),
]
REFUSED = [
    pytest.param(HEX, None, "missing X-Hub-Signature-256", id="missing-header"),
    pytest.param(HEX, f"sha256={_hex('sha256', key=b'other key')}", "bad signature", id="wrong-key"),
    pytest.param(HEX, f"sha256={_hex('sha256', body=BODY + b' ')}", "bad signature", id="other-body"),
    pytest.param(HEX, f"sha1={_hex('sha256')}", "prefix is not sha256", id="wrong-prefix"),
    pytest.param(HEX, "sha256=", "bad signature", id="empty-digest"),
    pytest.param(STRIPE, f"t={NOW - 400},v1={_stripe(NOW - 400)}", "outside the tolerance", id="replayed-old-timestamp"),
    pytest.param(STRIPE, f"t={NOW + 400},v1={_stripe(NOW + 400)}", "outside the tolerance", id="future-timestamp"),
    pytest.param(STRIPE, f"t={NOW - 400},v1={_stripe(NOW)}", "outside the tolerance", id="timestamp-swapped"),
    pytest.param(STRIPE, f"v1={_stripe(NOW)}", "malformed", id="timestamp-missing"),
    pytest.param(STRIPE, f"t={NOW},v0={_stripe(NOW)}", "malformed", id="only-v0"),
    pytest.param(STRIPE, _hex("sha256"), "malformed", id="hex-for-timestamped"),
]


@pytest.mark.parametrize(("signature", "header"), ACCEPTED)
def test_a_correctly_signed_delivery_is_published_before_the_answer(make_client, pubsub, signature: dict,
                                                                    header: str) -> None:
    client = make_client(hook_spec(pubsub, signature=signature))
    response = client.post("/hooks/pay", content=BODY, headers={signature["header"]: header, "X-Delivery-Id": "d-1"})
    assert (response.status_code, response.json()) == (200, {"published": 1})
    (message,) = pubsub.records()  # acknowledged before the answer: there to pull at once
    assert json.loads(message.data) == json.loads(BODY)
    assert message.attributes["origin"] == "webhook:d-1"
    assert message.attributes["source_id"] == SOURCE_ID and message.attributes["fetched_at"].endswith("Z")


@pytest.mark.parametrize(("signature", "header", "reason"), REFUSED)
def test_a_bad_or_replayed_signature_is_401_and_nothing_is_published(make_client, pubsub, signature: dict,
                                                                     header: str | None, reason: str) -> None:
    client = make_client(hook_spec(pubsub, signature=signature))
    headers = {signature["header"]: header} if header is not None else {}
    response = client.post("/hooks/pay", content=BODY, headers=headers)
    assert response.status_code == 401 and reason in response.json()["error"]
    assert pubsub.records() == [] and pubsub.dead_letters() == []


def test_sign_and_verify_agree() -> None:
    for scheme in ("hex", "timestamped"):
        signature = Signature(header="X-S", algorithm="sha512", scheme=scheme)
        assert verify_signature(signature, KEY, sign(signature, KEY, BODY), BODY) is None
        assert verify_signature(signature, KEY, sign(signature, b"k2", BODY), BODY) == "bad signature"


def _signed(body: bytes) -> dict[str, str]:
    return {"X-Signature": _hex("sha256", body)}


def test_a_body_above_the_limit_is_413_before_anything_else(make_client, pubsub) -> None:
    client = make_client(hook_spec(pubsub))
    big = json.dumps({"pad": "x" * 2000}).encode()
    declared = client.post("/hooks/pay", content=big, headers=_signed(big))
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bound applies while reading
        for _ in range(10):
            yield b" " * 200

    streamed = client.post("/hooks/pay", content=chunks(), headers={"X-Signature": "irrelevant"})
    assert streamed.status_code == 413, "413, not 401: the size is checked before the signature"
    exactly = json.dumps({"pad": "x" * (1024 - 11)}).encode()
    assert len(exactly) == 1024
    assert client.post("/hooks/pay", content=exactly, headers=_signed(exactly)).status_code == 200
    assert len(pubsub.records()) == 1


def test_a_signed_body_that_is_not_json_is_400(make_client, pubsub) -> None:
    client = make_client(hook_spec(pubsub))
    response = client.post("/hooks/pay", content=b"not json", headers=_signed(b"not json"))
    assert response.status_code == 400
    assert pubsub.records() == [] and pubsub.dead_letters() == []


@pytest.mark.parametrize(("records", "body", "expected"), [
    pytest.param(None, {"id": 1}, [{"id": 1}], id="null-body-is-the-record"),
    pytest.param(None, [{"id": 1}, {"id": 2}], [{"id": 1}, {"id": 2}], id="null-list-body-is-the-records"),
    pytest.param("data.object", {"data": {"object": {"id": 3}}}, [{"id": 3}], id="path-to-one-object"),
    pytest.param("events", {"events": [{"id": 4}, {"id": 5}]}, [{"id": 4}, {"id": 5}], id="path-to-a-list"),
])
def test_records_of_a_delivery(make_client, pubsub, records: str | None, body: Any, expected: list) -> None:
    client = make_client(hook_spec(pubsub, records=records, signature=None), key=None)
    response = client.post("/hooks/pay", json=body)
    assert response.json() == {"published": len(expected)}
    assert sorted((json.loads(m.data) for m in pubsub.records()), key=lambda r: r["id"]) == expected


def test_a_delivery_whose_records_path_matches_nothing_is_dead_lettered(make_client, pubsub) -> None:
    client = make_client(hook_spec(pubsub, records="events", signature=None), key=None)
    response = client.post("/hooks/pay", json={"other": 1}, headers={"X-Delivery-Id": "d-9"})
    assert (response.status_code, response.json()["dead_letter"]) == (200, "records_not_found")
    assert pubsub.records() == []
    (letter,) = pubsub.dead_letters()
    assert letter.data == b'{"other": 1}' or json.loads(letter.data) == {"other": 1}
    assert letter.attributes["reason"] == "records_not_found" and letter.attributes["origin"] == "webhook:d-9"


def test_without_a_delivery_id_the_origin_is_a_hash_of_the_body(make_client, pubsub) -> None:
    client = make_client(hook_spec(pubsub, delivery_id_header=None))
    client.post("/hooks/pay", content=BODY, headers=_signed(BODY))
    (message,) = pubsub.records()
    assert message.attributes["origin"] == f"webhook:sha256:{hashlib.sha256(BODY).hexdigest()}"


def test_an_unacknowledged_publish_is_503(make_client, pubsub) -> None:
    class Failing:
        def publish(self, topic: str, data: bytes, **attributes: str) -> Future:
            future: Future = Future()
            future.set_exception(RuntimeError("pubsub unavailable"))
            return future

    client = make_client(hook_spec(pubsub), transport=Failing())
    response = client.post("/hooks/pay", content=BODY, headers=_signed(BODY))
    assert response.status_code == 503
    assert "pubsub unavailable" not in response.text, "internal errors are not told to the sender"


def test_other_paths_and_methods_and_health(make_client, pubsub) -> None:
    client = make_client(hook_spec(pubsub))
    assert client.post("/elsewhere", content=BODY, headers=_signed(BODY)).status_code == 404
    assert client.get("/hooks/pay").status_code == 405
    client.post("/hooks/pay", content=BODY, headers=_signed(BODY))
    client.post("/hooks/pay", content=BODY)
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "source_id": SOURCE_ID, "connector_type": "webhook", "deliveries": 1,
                             "records_published": 1, "refused": {"401": 1}}
