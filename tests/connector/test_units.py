"""The connector runtime's pure parts, without emulators: the spec, Retry-After, cursor ordering,
record selection, the request budget, URL sanitising, redaction, and what a message carries."""

from __future__ import annotations

import copy
import email.utils
import hashlib
import json
import logging
import time
from concurrent.futures import Future
from typing import Any

import httpx
import pytest

from connector import logs
from connector.checkpoint import PollState, Resume, record_fingerprint
from connector.publish import DEAD_LETTER_MAX_BYTES, NullTransport, RecordPublisher
from connector.records import cursor_text, greater, select_records
from connector.rest_api import Poller, RequestBudget, parse_retry_after, same_cursor
from connector.spec import SpecError, connector_secret, parse_spec, webhook_secret

REST = {
    "version": 1, "source_id": "payments", "project": "headwater-demo", "connector_type": "rest_api",
    "topic": "projects/headwater-demo/topics/payments",
    "dead_letter_topic": "projects/headwater-demo/topics/payments-dlq",
    "checkpoint": "gs://landing-headwater-demo-europe-west1/_connectors/payments/state.json",
    "rest_api": {
        "endpoint": "https://api.payments.example.com/v1/charges", "params": {"limit": 100, "expand": True},
        "auth": {"type": "bearer_token"}, "records": "data", "pagination": {"type": "next_url", "path": "next"},
        "cursor_field": "updated_at", "cursor_param": "updated_since", "poll_interval_seconds": 60,
        "request_timeout_seconds": 30, "max_requests_per_minute": 60, "max_retries": 5,
    },
}
WEBHOOK = {
    "version": 1, "source_id": "shipments", "project": "headwater-demo", "connector_type": "webhook",
    "topic": "projects/headwater-demo/topics/shipments",
    "dead_letter_topic": "projects/headwater-demo/topics/shipments-dlq",
    "webhook": {"path": "/hooks/stripe",
                "signature": {"header": "Stripe-Signature", "algorithm": "sha256", "scheme": "timestamped",
                              "timestamp_tolerance_seconds": 300},
                "max_body_bytes": 1048576, "delivery_id_header": "X-Delivery-Id", "records": None},
}


def _with(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``document`` with the dotted ``path`` set to ``value`` (deleted when ``...``)."""
    doc = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return doc


# --------------------------------------------------------------------------- spec


def test_the_contract_examples_parse_with_their_defaults() -> None:
    rest = parse_spec(json.dumps(REST))
    assert rest.rest_api is not None and rest.webhook is None
    assert rest.rest_api.params == {"limit": "100", "expand": "true"}
    assert (rest.checkpoint_bucket, rest.checkpoint_object) == ("landing-headwater-demo-europe-west1",
                                                                "_connectors/payments/state.json")
    assert rest.rest_api.retry_initial_seconds == 1.0 and rest.rest_api.checkpoint_interval_seconds == 1.0
    hook = parse_spec(WEBHOOK)
    assert hook.webhook is not None and hook.webhook.signature is not None
    assert hook.webhook.signature.scheme == "timestamped" and hook.checkpoint is None


def test_every_spec_the_reconciler_compiles_parses() -> None:
    from pathlib import Path

    from reconciler.compile import compile_resources
    from reconciler.load import load_repo
    from reconciler.resources import Kind

    repo = load_repo(Path(__file__).resolve().parents[2] / "desired_state")
    # The connectors' services (the data API is another runtime with its own spec document).
    services = [r for r in compile_resources(repo) if r.kind == Kind.CLOUD_RUN_SERVICE
                and r.spec["command"][-1] == "connector"]
    assert services, "the desired state has streaming_api sources"
    for service in services:
        parse_spec(service.spec["connector"])


@pytest.mark.parametrize(("document", "error"), [
    pytest.param(_with(REST, "version", 2), "version: 2 is not supported", id="version-2"),
    pytest.param(_with(REST, "source_id", "Payments"), "source_id: 'Payments' is not a source id", id="bad-source-id"),
    pytest.param(_with(REST, "topic", "payments"), "topic: 'payments' is not projects/", id="bad-topic"),
    pytest.param(_with(REST, "checkpoint", ...), "checkpoint: required", id="rest-without-checkpoint"),
    pytest.param(_with(REST, "checkpoint", "s3://b/o"), "checkpoint: 's3://b/o' is not gs://", id="checkpoint-not-gcs"),
    pytest.param(_with(REST, "connector_type", "ftp"), "connector_type: 'ftp' is not one of", id="unknown-type"),
    pytest.param(_with(REST, "rest_api.endpoint", "ftp://x/y"), "rest_api.endpoint: 'ftp://x/y' is not an http",
                 id="endpoint-not-http"),
    pytest.param(_with(REST, "rest_api.endpoint", "https://u:p@x/y"), "rest_api.endpoint: credentials do not go",
                 id="credentials-in-endpoint"),
    pytest.param(_with(REST, "rest_api.pagination", {"type": "next_url"}), "rest_api.pagination.path: required",
                 id="next-url-without-path"),
    pytest.param(_with(REST, "rest_api.pagination", {"type": "cursor", "path": "n"}),
                 "rest_api.pagination.param: required", id="cursor-without-param"),
    pytest.param(_with(REST, "rest_api.pagination", {"type": "page", "param": "p", "start": -1}),
                 "rest_api.pagination.start: expected an integer >= 0", id="negative-start-page"),
    pytest.param(_with(REST, "rest_api.pagination", {"type": "next_url", "path": "n", "param": "x"}),
                 "rest_api.pagination.param: unknown key", id="param-on-next-url"),
    pytest.param(_with(REST, "rest_api.cursor_param", ...), "cursor_field and cursor_param go together",
                 id="cursor-field-alone"),
    pytest.param(_with(REST, "rest_api.auth", {"type": "api_key", "header": "X-Key", "query": "key"}),
                 "rest_api.auth.header: an api_key goes in a header or a query parameter, not both",
                 id="api-key-header-and-query"),
    pytest.param(_with(REST, "rest_api.auth", {"type": "oauth2"}), "rest_api.auth.token_url: required",
                 id="oauth2-without-token-url"),
    pytest.param(_with(REST, "rest_api.max_requests_per_minute", 0),
                 "rest_api.max_requests_per_minute: expected an integer >= 1", id="zero-budget"),
    pytest.param(_with(REST, "rest_api.max_retries", True), "rest_api.max_retries: expected an integer",
                 id="bool-retries"),
    pytest.param(_with(REST, "rest_api.poll_intervall_seconds", 5), "rest_api.poll_intervall_seconds: unknown key",
                 id="typo-is-an-error"),
    pytest.param(_with(REST, "rest_api.params", {"page": {"nested": 1}}), "rest_api.params.page: expected a string",
                 id="nested-param"),
    pytest.param(_with(REST, "webhook", WEBHOOK["webhook"]), "webhook: not allowed: connector_type is rest_api",
                 id="both-blocks"),
    pytest.param(_with(WEBHOOK, "webhook.path", "hooks"), "webhook.path: 'hooks' is not an absolute URL path",
                 id="relative-webhook-path"),
    pytest.param(_with(WEBHOOK, "webhook.path", "/healthz"), "webhook.path: /healthz is the health endpoint",
                 id="webhook-on-healthz"),
    pytest.param(_with(WEBHOOK, "webhook.signature.scheme", "rsa"), "webhook.signature.scheme: 'rsa' is not one of",
                 id="unknown-scheme"),
    pytest.param(_with(WEBHOOK, "webhook.signature.algorithm", "md5"),
                 "webhook.signature.algorithm: 'md5' is not one of", id="md5"),
    pytest.param(_with(WEBHOOK, "webhook.max_body_bytes", 0), "webhook.max_body_bytes: expected an integer >= 1",
                 id="zero-body-bound"),
    pytest.param("{not json", "the spec is not JSON", id="not-json"),
    pytest.param("[]", "(document): expected an object", id="not-an-object"),
])
def test_an_invalid_spec_names_its_path(document: Any, error: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(document if isinstance(document, str) else json.dumps(document))
    assert error in str(raised.value)


@pytest.mark.parametrize(("auth", "value", "error"), [
    pytest.param({"type": "bearer_token"}, None, "HEADWATER_CONNECTOR_SECRET is not set", id="bearer-missing"),
    pytest.param({"type": "basic"}, "no-colon-s3cr3t", "needs the form user:password", id="basic-without-colon"),
    pytest.param({"type": "oauth2", "token_url": "https://t/x"}, ":only-s3cr3t", "client_id:client_secret",
                 id="oauth2-without-client-id"),
])
def test_a_malformed_secret_is_refused_without_being_quoted(auth: dict, value: str | None, error: str) -> None:
    spec = parse_spec(_with(REST, "rest_api.auth", auth))
    with pytest.raises(SpecError) as raised:
        connector_secret(spec, {} if value is None else {"HEADWATER_CONNECTOR_SECRET": value})
    assert error in str(raised.value)
    assert "s3cr3t" not in str(raised.value)


def test_secrets_come_from_the_environment_with_a_trailing_newline_dropped() -> None:
    spec = parse_spec(_with(REST, "rest_api.auth", {"type": "basic"}))
    assert connector_secret(spec, {"HEADWATER_CONNECTOR_SECRET": "user:pw\n"}) == "user:pw"
    assert connector_secret(parse_spec(_with(REST, "rest_api.auth", {"type": "none"})), {}) is None
    assert webhook_secret(parse_spec(WEBHOOK), {"HEADWATER_WEBHOOK_SECRET": "whsec"}) == b"whsec"
    assert webhook_secret(parse_spec(_with(WEBHOOK, "webhook.signature", None)), {}) is None
    with pytest.raises(SpecError, match="HEADWATER_WEBHOOK_SECRET is not set"):
        webhook_secret(parse_spec(WEBHOOK), {})


# --------------------------------------------------------------------------- small parts


NOW = 1_700_000_000.0


@pytest.mark.parametrize(("header", "seconds"), [
    pytest.param("7", 7.0, id="delta-seconds"),
    pytest.param(" 0 ", 0.0, id="zero"),
    pytest.param(email.utils.formatdate(NOW + 30, usegmt=True), 30.0, id="http-date"),
    pytest.param(email.utils.formatdate(NOW - 30, usegmt=True), 0.0, id="http-date-in-the-past"),
    pytest.param("soon", None, id="garbage"),
    pytest.param("-5", None, id="negative"),
    pytest.param(None, None, id="absent"),
])
def test_retry_after_reads_seconds_and_http_dates(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(("current", "candidate", "expected"), [
    pytest.param(None, "2024-01-02", "2024-01-02", id="first-value"),
    pytest.param("2024-01-02", None, "2024-01-02", id="missing-field"),
    pytest.param("2024-01-02T00:00:00Z", "2024-01-01T23:59:59Z", "2024-01-02T00:00:00Z", id="iso-timestamps"),
    pytest.param(9, 10, 10, id="numbers-numerically"),
    pytest.param(10.5, 9, 10.5, id="float-and-int"),
    pytest.param("9", "10", "9", id="strings-as-strings"),
    pytest.param(5, {"nested": 1}, 5, id="objects-ignored"),
])
def test_the_cursor_is_the_greatest_value_seen(current: Any, candidate: Any, expected: Any) -> None:
    assert greater(current, candidate) == expected


def test_cursor_values_become_query_text() -> None:
    assert [cursor_text(v) for v in ("2024-01-01", 42, 42.0, 1.5, True)] == ["2024-01-01", "42", "42", "1.5", "true"]


@pytest.mark.parametrize(("body", "path", "expected"), [
    pytest.param([{"a": 1}], None, [{"a": 1}], id="body-is-the-list"),
    pytest.param({"data": [1, 2]}, "data", [1, 2], id="top-level-key"),
    pytest.param({"result": {"items": []}}, "result.items", [], id="nested-empty"),
    pytest.param({"pages": [{"items": [3]}]}, "pages.0.items", [3], id="list-index"),
    pytest.param({"data": {"a": 1}}, "data", None, id="object-is-not-a-list"),
    pytest.param({"other": []}, "data", None, id="missing"),
    pytest.param({"data": []}, None, None, id="object-body-without-path"),
])
def test_records_selector(body: Any, path: str | None, expected: Any) -> None:
    assert select_records(body, path) == expected


def test_the_budget_refuses_the_request_past_its_minute_and_says_when_to_resume() -> None:
    budget = RequestBudget(3)
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert 55 < budget.seconds_until_available() <= 60
    assert RequestBudget(3).seconds_until_available() == 0


def test_checkpoint_documents_round_trip() -> None:
    state = PollState(cursor="2024-01-01T00:00:35Z", boundary=frozenset({"aa", "bb"}),
                      resume=Resume(url="https://x/y?page=3", params={"a": "b"}, max_seen=7, pages_read=2, walk_of="f",
                                    boundary=frozenset({"cc"})))
    assert PollState.from_json(state.to_json("payments")) == state
    assert json.loads(state.to_json("payments"))["boundary"] == ["aa", "bb"], "sorted: a stable document"
    assert PollState.from_json(PollState().to_json("payments")) == PollState()
    with pytest.raises(ValueError):
        PollState.from_json(b'{"version": 9}')


def test_a_checkpoint_without_a_boundary_or_with_a_damaged_one_loads_with_an_empty_one() -> None:
    old = {"version": 1, "source_id": "payments", "written_at": "2024-01-01T00:00:00.000Z", "cursor": 5,
           "resume": {"url": "https://x/y", "params": {}, "max_seen": 9, "pages_read": 1, "walk_of": "f"}}
    assert PollState.from_json(json.dumps(old).encode()) == PollState(
        cursor=5, resume=Resume(url="https://x/y", max_seen=9, pages_read=1, walk_of="f"))
    damaged = {**old, "boundary": {"not": "a list"}, "resume": None}
    assert PollState.from_json(json.dumps(damaged).encode()) == PollState(cursor=5)


def test_a_record_fingerprint_is_the_hash_of_its_canonical_json() -> None:
    record = {"b": [1, 2.5, None], "a": "é", "updated_at": "2024-01-01T00:00:00Z"}
    canonical = '{"a":"\\u00e9","b":[1,2.5,null],"updated_at":"2024-01-01T00:00:00Z"}'
    assert record_fingerprint(record) == hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert record_fingerprint(dict(reversed(list(record.items())))) == record_fingerprint(record), "key order"
    assert record_fingerprint({**record, "a": "e"}) != record_fingerprint(record)


@pytest.mark.parametrize(("a", "b", "same"), [
    ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z", True), (5, 5.0, True), (5, 6, False), ("5", 5, True),
    (None, None, False), (None, 1, False), ({"x": 1}, {"x": 1}, False), (True, True, True), (True, 1, False),
])
def test_cursor_values_are_the_same_as_greater_orders_them(a: Any, b: Any, same: bool) -> None:
    assert same_cursor(a, b) is same


# --------------------------------------------------------------------------- secrets stay in


SECRET = "s3cr3t-Value/+="


def _poller(auth: dict[str, Any], secret: str) -> Poller:
    spec = parse_spec(_with(REST, "rest_api.auth", auth))
    publisher = RecordPublisher(NullTransport(), source_id="payments", topic=spec.topic,
                                dead_letter_topic=spec.dead_letter_topic)
    return Poller(spec, secret, publisher, store=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("auth", "url", "shown"), [
    pytest.param({"type": "api_key", "query": "api_key"}, f"https://api.payments.example.com/v1/charges?page=2&api_key={SECRET}",
                 "https://api.payments.example.com/v1/charges?page=2", id="api-key-query-param"),
    pytest.param({"type": "bearer_token"}, f"https://api.payments.example.com/v1/charges?token={SECRET}&page=2",
                 "https://api.payments.example.com/v1/charges?page=2", id="secret-in-another-param"),
    pytest.param({"type": "bearer_token"}, "https://user:pw@api.payments.example.com/v1/charges?page=2",
                 "https://api.payments.example.com/v1/charges?page=2", id="userinfo"),
])
def test_urls_that_leave_the_poller_carry_no_secret(auth: dict, url: str, shown: str) -> None:
    poller = _poller(auth, SECRET)
    assert poller.sanitize_url(httpx.URL(url)) == shown


@pytest.mark.parametrize(("auth", "secret", "expected"), [
    pytest.param({"type": "bearer_token"}, SECRET, ({}, {"authorization": f"Bearer {SECRET}"}), id="bearer"),
    pytest.param({"type": "api_key"}, SECRET, ({}, {"x-api-key": SECRET}), id="api-key-default-header"),
    pytest.param({"type": "api_key", "header": "X-Token"}, SECRET, ({}, {"x-token": SECRET}), id="api-key-header"),
    pytest.param({"type": "api_key", "query": "key"}, SECRET, ({"key": SECRET}, {}), id="api-key-query"),
    pytest.param({"type": "basic"}, "alice:pw-1234", ({}, {"authorization": "Basic YWxpY2U6cHctMTIzNA=="}), id="basic"),
])
def test_credentials_go_only_to_the_endpoints_origin(auth: dict, secret: str, expected: tuple) -> None:
    poller = _poller(auth, secret)
    url, headers = poller.auth.prepare(httpx.URL("https://api.payments.example.com/v1/charges?page=2"))
    params = {k: v for k, v in url.params.items() if k != "page"}
    assert (params, {k.lower(): v for k, v in headers.items()}) == expected
    for elsewhere in ("https://cdn.example.com/v1/charges", "http://api.payments.example.com/v1/charges",
                      "https://api.payments.example.com:8443/v1/charges"):
        assert poller.auth.prepare(httpx.URL(elsewhere)) == (httpx.URL(elsewhere), {})


def test_registered_secrets_are_redacted_from_log_records_and_exceptions(caplog: pytest.LogCaptureFixture) -> None:
    logs.redact_secret("alice:" + SECRET)
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("tests.connector")
    log.info("url https://x/?key=%s", SECRET)
    log.info("encoded %s and basic %s", httpx.URL("https://x/", params={"k": SECRET}),
             "Basic " + __import__("base64").b64encode(f"alice:{SECRET}".encode()).decode())
    try:
        raise RuntimeError(f"failed with {SECRET}")
    except RuntimeError:
        log.exception("boom")
    text = caplog.text + "".join(logs.JsonLines().format(r) for r in caplog.records)
    assert "[REDACTED]" in text and "boom" in text
    for form in logs.secret_forms("alice:" + SECRET):
        assert form not in text


# --------------------------------------------------------------------------- messages


class _Capture:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []

    def publish(self, topic: str, data: bytes, **attributes: str) -> Future:
        self.sent.append((topic, data, attributes))
        future: Future = Future()
        future.set_result("1")
        return future


def test_messages_carry_their_attributes_and_no_secret_and_dead_letters_are_bounded() -> None:
    transport = _Capture()
    publisher = RecordPublisher(transport, source_id="payments", topic="t", dead_letter_topic="d",
                                secrets=logs.secret_forms(SECRET))
    futures = publisher.publish_records([{"id": 1, "name": "Zoë"}, {"id": 2, "leak": SECRET}],
                                        origin="https://x/" + "p" * 2000, fetched_at="2024-01-01T00:00:00.000Z")
    publisher.wait(futures)
    publisher.wait([publisher.publish_dead_letter(b"x" * (DEAD_LETTER_MAX_BYTES + 10), reason="records_not_found",
                                                  detail="d", origin="o", fetched_at="f")])
    (t1, d1, a1), (_, d2, _), (t3, d3, a3) = transport.sent
    assert (t1, json.loads(d1)) == ("t", {"id": 1, "name": "Zoë"}) and "Zoë".encode() in d1
    assert set(a1) == {"source_id", "origin", "fetched_at"} and len(a1["origin"]) == 1000
    assert SECRET.encode() not in d2 and b"[REDACTED]" in d2
    assert t3 == "d" and len(d3) == DEAD_LETTER_MAX_BYTES and a3["reason"] == "records_not_found"


def test_an_unacknowledged_publish_is_an_error() -> None:
    from connector.publish import PublishError

    failed: Future = Future()
    failed.set_exception(RuntimeError("deadline exceeded"))
    with pytest.raises(PublishError, match="deadline exceeded"):
        RecordPublisher.wait([failed])
    slow: Future = Future()
    started = time.monotonic()
    with pytest.raises(PublishError, match="TimeoutError"):
        RecordPublisher.wait([slow], timeout=0.05)
    assert time.monotonic() - started < 1
