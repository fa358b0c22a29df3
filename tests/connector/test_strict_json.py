"""JSON in, JSON out, strictly (RFC 8259): ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's
json accepts by default and writes back out), numbers beyond a double (parsed as infinity) and
unpaired UTF-16 surrogates (which cannot be written as UTF-8) are not JSON. The webhook answers
400 and publishes nothing; the poller dead-letters the page as ``unparseable``, as any other body
that is not JSON. Whatever is published parses strictly again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connector.records import parse_json
from tests.connector.conftest import rest_spec
from tests.connector.test_webhook import hook_spec, make_client  # noqa: F401 - make_client is a fixture


def _strict(data: bytes) -> Any:
    """What a strict consumer (the pipeline) reads; raises on NaN/Infinity."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(data, parse_constant=refuse)


NOT_JSON = [
    pytest.param(b'{"id": 1, "amount": NaN}', "NaN", id="NaN"),
    pytest.param(b'{"id": 1, "amount": Infinity}', "Infinity", id="Infinity"),
    pytest.param(b'[{"id": 1, "amount": -Infinity}]', "-Infinity", id="-Infinity"),
    pytest.param(b'{"id": 1, "amount": 1e400}', "out of range", id="overflowing-number"),
    pytest.param(b'{"id": 1, "amount": -' + b"9" * 400 + b'.5}', "out of range", id="overflowing-digits"),
    pytest.param(b'{"id": 1, "name": "\\ud800"}', "surrogate", id="lone-high-surrogate"),
    pytest.param(b'{"id": 1, "\\udc00": 2}', "surrogate", id="lone-low-surrogate-in-a-key"),
    pytest.param(b'{"id": 1, "name": "\xed\xa0\x80"}', "not UTF-8", id="surrogate-encoded-in-the-bytes"),
    pytest.param(b'{"id": 1, "name": "\xff"}', "not UTF-8", id="invalid-utf-8"),
]
STILL_JSON = [
    pytest.param(b'{"id": 1, "amount": 1.7976931348623157e308, "tiny": 1e-400}', id="extreme-but-finite"),
    pytest.param(b'{"id": 1, "name": "\\ud83d\\ude00 \\\\ud800", "s": "NaN", "Infinity": true}',
                 id="surrogate-pair-escaped-backslash-and-words"),
    pytest.param('\ufeff{"id": 1, "name": "Zoë"}'.encode(), id="utf-8-with-a-byte-order-mark"),
    pytest.param('{"id": 1, "name": "Zoë \U0001F600"}'.encode("utf-16"), id="utf-16"),
]


@pytest.mark.parametrize(("body", "why"), NOT_JSON)
def test_the_parser_refuses_what_is_not_json(body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_json(body)


@pytest.mark.parametrize("body", STILL_JSON)
def test_the_parser_takes_all_of_json(body: bytes) -> None:
    assert parse_json(body) == json.loads(body)


@pytest.mark.parametrize(("body", "why"), NOT_JSON)
def test_the_webhook_answers_400_to_a_body_that_is_not_strict_json(make_client, pubsub, body: bytes,  # noqa: F811
                                                                   why: str) -> None:
    client = make_client(hook_spec(pubsub, signature=None), key=None)
    response = client.post("/hooks/pay", content=body)
    assert response.status_code == 400, response.text
    assert "not JSON" in response.json()["error"]
    assert pubsub.records() == [] and pubsub.dead_letters() == []


@pytest.mark.parametrize("body", STILL_JSON)
def test_the_webhook_publishes_json_that_parses_strictly(make_client, pubsub, body: bytes) -> None:  # noqa: F811
    client = make_client(hook_spec(pubsub, signature=None), key=None)
    assert client.post("/hooks/pay", content=body).status_code == 200
    (message,) = pubsub.records()
    assert _strict(message.data) == json.loads(body)


@pytest.mark.parametrize(("body", "why"), NOT_JSON)
def test_the_poller_dead_letters_a_page_that_is_not_strict_json(api, pubsub, bucket, make_poller, body: bytes,
                                                                why: str) -> None:
    api.raw["page"] = body if body.startswith(b"[") else b'{"data": [' + body + b"]}"
    poller = make_poller(rest_spec(api, pubsub, bucket, "/raw/page", records=None if body.startswith(b"[") else "data"))
    result = poller.poll_once()
    assert (result.outcome, result.records, result.dead_letters) == ("dead_letter", 0, 1), result
    assert pubsub.records() == [], "nothing the pipeline could not parse is published"
    (letter,) = pubsub.dead_letters()
    assert letter.attributes["reason"] == "unparseable"
    assert why in letter.attributes["detail"]
    assert letter.data == api.raw["page"], "the body, as received"


def test_the_poller_publishes_json_that_parses_strictly(api, pubsub, bucket, make_poller) -> None:
    api.raw["page"] = b'{"data": [{"id": 1, "amount": 1.7976931348623157e308}, {"id": 2, "name": "\\ud83d\\ude00"}]}'
    assert make_poller(rest_spec(api, pubsub, bucket, "/raw/page")).poll_once().outcome == "complete"
    published = sorted((_strict(m.data) for m in pubsub.records()), key=lambda r: r["id"])
    assert published == json.loads(api.raw["page"])["data"]
