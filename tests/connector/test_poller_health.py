"""How a poll ends when the API does not answer, and what ``/healthz`` and the logs say about it.

A poll that published nothing because every attempt failed (connection refused, 429 or 5xx
until the retries ran out) is ``failed``: logged at WARNING with the reason, ``last_success_at``
stays where it was, and after :data:`connector.rest_api.FAILED_POLLS_UNHEALTHY` of them in a row
``/healthz`` answers 503 with the reason. A poll that made progress before running out is
``partial`` (a success); a poll that found nothing new is ``complete`` with 0 records (a success).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import pytest

from connector.rest_api import FAILED_POLLS_UNHEALTHY
from connector.server import start_health_server
from tests.connector.conftest import ids_of, rest_spec
from tests.connector.fake_api import make_records

KEY = "unreachable-api-key-0123456789"


class Closed:
    """An API nothing listens on (connection refused at once)."""

    def url(self, path: str) -> str:
        return "http://127.0.0.1:9" + path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthz(poller) -> httpx.Response:
    """GET /healthz from the real health server (uvicorn on a loopback port)."""
    port = _free_port()
    server, thread = start_health_server(poller.health, port, "127.0.0.1")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _poll_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage().startswith("poll ")]


def test_an_unreachable_api_fails_every_poll_and_healthz_answers_503_with_the_reason(
        pubsub, bucket, make_poller, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    spec = rest_spec(Closed(), pubsub, bucket, auth={"type": "api_key", "query": "api_key"}, max_retries=1)
    poller = make_poller(spec, KEY)

    for n in range(1, FAILED_POLLS_UNHEALTHY + 1):
        healthy, _ = poller.health()
        assert healthy, f"healthy before failed poll {n}"
        result = poller.poll_once()
        assert (result.outcome, result.pages, result.records) == ("failed", 0, 0), result
        assert "ConnectError" in result.error and KEY not in result.error and "api_key" not in result.error
    assert poller.last_success_at is None, "no poll reached the API"

    # Logged at WARNING, with the reason and the URL without its credential.
    warnings = _poll_warnings(caplog)
    assert len(warnings) == FAILED_POLLS_UNHEALTHY
    assert all("poll failed" in w.getMessage() and "ConnectError" in w.getMessage() for w in warnings)
    assert "http://127.0.0.1:9/next_url" in warnings[0].getMessage()
    assert KEY not in caplog.text and "api_key=" not in caplog.text

    healthy, report = poller.health()
    assert not healthy
    assert report["consecutive_failed_polls"] == FAILED_POLLS_UNHEALTHY and report["last_success_at"] is None
    assert "ConnectError" in report["reason"] and f"{FAILED_POLLS_UNHEALTHY} failed polls in a row" in report["reason"]
    response = _healthz(poller)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy" and "ConnectError" in body["reason"] and KEY not in response.text


@pytest.mark.parametrize(("status", "headers"), [
    pytest.param(500, {}, id="500"),
    pytest.param(503, {"Retry-After": "0"}, id="503-retry-after"),
    pytest.param(429, {"Retry-After": "0"}, id="429-retry-after"),
])
def test_an_api_answering_429_or_5xx_forever_is_unhealthy_until_it_answers_again(
        api, pubsub, bucket, make_poller, caplog: pytest.LogCaptureFixture, status: int, headers: dict) -> None:
    caplog.set_level(logging.INFO)
    poller = make_poller(rest_spec(api, pubsub, bucket, "/none", max_retries=2))
    assert poller.poll_once().outcome == "complete"
    succeeded_at = poller.last_success_at
    assert succeeded_at is not None

    api.inject(status, times=10**6, headers=headers)
    for _ in range(FAILED_POLLS_UNHEALTHY):
        result = poller.poll_once()
        assert (result.outcome, result.pages) == ("failed", 0), result
        assert f"{status} (after 2 retries)" in result.error
    assert poller.last_success_at == succeeded_at, "last_success_at moves only when the API was reached"
    healthy, report = poller.health()
    assert not healthy and str(status) in report["reason"]
    assert _healthz(poller).status_code == 503
    assert len(_poll_warnings(caplog)) == FAILED_POLLS_UNHEALTHY

    api.injections.clear()  # the API answers again
    assert poller.poll_once().outcome == "complete"
    healthy, report = poller.health()
    assert healthy and report["consecutive_failed_polls"] == 0 and "reason" not in report
    assert poller.last_success_at > succeeded_at
    assert _healthz(poller).status_code == 200


def test_a_revoked_key_fails_every_poll_and_healthz_answers_503(api, pubsub, bucket, make_poller) -> None:
    api.expect = ("bearer", KEY)
    poller = make_poller(rest_spec(api, pubsub, bucket, "/none", auth={"type": "bearer_token"}), KEY[::-1])
    results = [poller.poll_once() for _ in range(FAILED_POLLS_UNHEALTHY)]
    assert [(r.outcome, "401" in r.error) for r in results] == [("failed", True)] * FAILED_POLLS_UNHEALTHY
    assert len(api.data_requests()) == FAILED_POLLS_UNHEALTHY, "a 401 is not retried"
    healthy, report = poller.health()
    assert not healthy and "401" in report["reason"] and KEY[::-1] not in report["reason"]


def test_a_poll_that_made_progress_is_partial_and_the_polls_stuck_after_it_are_failed(
        api, pubsub, bucket, make_poller) -> None:
    api.inject(500, times=10**6, when=lambda seen: seen.query.get("page") == "3")
    poller = make_poller(rest_spec(api, pubsub, bucket, max_retries=1))
    first = poller.poll_once()
    assert (first.outcome, first.pages) == ("partial", 2), "progress, then the retries ran out"
    assert poller.last_success_at is not None and poller.health()[1]["consecutive_failed_polls"] == 0
    succeeded_at = poller.last_success_at

    # Every later poll resumes at page 3, which never answers: nothing is published any more.
    outcomes = [poller.poll_once().outcome for _ in range(FAILED_POLLS_UNHEALTHY)]
    assert outcomes == ["failed"] * FAILED_POLLS_UNHEALTHY
    assert poller.last_success_at == succeeded_at
    assert not poller.health()[0]
    assert ids_of(pubsub.records()) == list(range(1, 21)), "what was read before is published once"


def test_a_quiet_poll_is_a_success(api, pubsub, bucket, make_poller, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    spec = rest_spec(api, pubsub, bucket, "/cursor", cursor_field="updated_at", cursor_param="updated_since")
    poller = make_poller(spec)
    assert poller.poll_once().outcome == "complete"
    before = poller.last_success_at
    for _ in range(FAILED_POLLS_UNHEALTHY + 1):
        quiet = poller.poll_once()
        assert (quiet.outcome, quiet.records, quiet.unchanged) == ("complete", 0, 1)
    assert poller.last_success_at > before
    healthy, report = poller.health()
    assert healthy and report["consecutive_failed_polls"] == 0
    assert _poll_warnings(caplog) == [], "a quiet API is not a problem"


def test_a_budget_spent_before_the_polls_first_request_is_not_a_failure(api, pubsub, bucket, make_poller) -> None:
    poller = make_poller(rest_spec(api, pubsub, bucket, "/none", max_requests_per_minute=1))
    assert poller.poll_once().outcome == "complete"
    succeeded_at = poller.last_success_at
    for _ in range(FAILED_POLLS_UNHEALTHY):
        throttled = poller.poll_once()  # the poll interval is shorter than the budget allows
        assert (throttled.outcome, throttled.budget_exhausted, throttled.pages) == ("partial", True, 0)
    assert poller.last_success_at == succeeded_at, "no request reached the API"
    healthy, report = poller.health()
    assert healthy and report["consecutive_failed_polls"] == 0


def test_retries_that_run_into_the_budget_fail_the_poll_with_the_apis_answer(api, pubsub, bucket,
                                                                              make_poller) -> None:
    api.inject(502, times=10**6)
    poller = make_poller(rest_spec(api, pubsub, bucket, "/none", max_requests_per_minute=2, max_retries=5))
    result = poller.poll_once()
    assert (result.outcome, result.budget_exhausted) == ("failed", True)
    assert "502" in result.error and "budget" in result.error


def test_without_a_successful_poll_for_too_long_healthz_is_503_unless_the_api_asked_to_wait(
        api, pubsub, bucket, make_poller) -> None:
    stop = threading.Event()
    poller = make_poller(rest_spec(api, pubsub, bucket, "/none"), stop=stop)
    assert poller.poll_once().outcome == "complete"
    healthy, report = poller.health(now=time.time() + 3600)
    assert not healthy and "no successful poll since" in report["reason"]

    # The API asks for two hours: the run loop waits them out, and that wait is not a hang.
    api.inject(429, headers={"Retry-After": "7200"})
    runner = threading.Thread(target=poller.run)
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while poller.deferred_until is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        runner.join(timeout=20)
    assert poller.last_result.outcome == "failed" and poller.last_result.retry_after == 7200.0
    assert poller.health(now=time.time() + 3600)[0]
    assert not poller.health(now=time.time() + 7200 + 3600)[0]


def test_new_records_after_an_outage_are_all_published(api, pubsub, bucket, make_poller) -> None:
    spec = rest_spec(api, pubsub, bucket, cursor_field="updated_at", cursor_param="updated_since", max_retries=0)
    poller = make_poller(spec)
    api.inject(503, times=FAILED_POLLS_UNHEALTHY)
    assert [poller.poll_once().outcome for _ in range(FAILED_POLLS_UNHEALTHY)] == ["failed"] * FAILED_POLLS_UNHEALTHY
    api.records.extend(make_records(40)[35:])
    assert poller.poll_once().outcome == "complete"
    assert ids_of(pubsub.records()) == list(range(1, 41))
