"""The poller against a real HTTP API (tests/connector/fake_api.py, a thread on a loopback port),
publishing to the Pub/Sub emulator and checkpointing to the Storage emulator."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any

import pytest
from google.cloud import storage

from connector.checkpoint import CheckpointConflict, CheckpointStore, PollState
from tests.connector.conftest import SOURCE_ID, ids_of, read_checkpoint, rest_spec
from tests.connector.fake_api import make_records

ALL_IDS = list(range(1, 36))
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _page(number: int):
    return lambda seen: seen.query.get("page") == str(number)


@pytest.mark.parametrize("path", ["/next_url", "/link", "/cursor", "/page", "/none"],
                         ids=["next_url", "link_header", "cursor", "page", "no-pagination"])
def test_every_pagination_style_publishes_every_record_once(api, pubsub, bucket, make_poller, path: str) -> None:
    poller = make_poller(rest_spec(api, pubsub, bucket, path))
    result = poller.poll_once()

    assert (result.outcome, result.records) == ("complete", 35), result
    messages = pubsub.records()
    assert ids_of(messages) == ALL_IDS
    for message in messages:
        assert message.attributes["source_id"] == SOURCE_ID
        assert message.attributes["origin"].startswith(api.url(path))
        assert RFC3339.match(message.attributes["fetched_at"])
    expected_pages = {"/page": 5, "/none": 1}.get(path, 4)  # /page ends with its first empty page
    assert result.pages == expected_pages and len(api.data_requests()) == expected_pages
    assert read_checkpoint(bucket)["resume"] is None


def test_the_origin_is_the_page_url(api, pubsub, bucket, make_poller) -> None:
    make_poller(rest_spec(api, pubsub, bucket, "/page", params={"status": "paid"})).poll_once()
    origins = {json.loads(m.data)["id"]: m.attributes["origin"] for m in pubsub.records()}
    assert origins[1] == api.url("/page?status=paid&p=1")
    assert origins[35] == api.url("/page?status=paid&p=4")


def test_the_incremental_cursor_is_an_inclusive_lower_bound(api, pubsub, bucket, make_poller) -> None:
    spec = rest_spec(api, pubsub, bucket, "/cursor", cursor_field="updated_at", cursor_param="updated_since")
    poller = make_poller(spec)
    assert poller.poll_once().outcome == "complete"
    assert ids_of(pubsub.records()) == ALL_IDS
    last = api.records[-1]["updated_at"]
    assert read_checkpoint(bucket)["cursor"] == last

    api.records.extend(make_records(40)[35:])  # five new records
    api.requests.clear()
    result = poller.poll_once()
    assert (result.outcome, result.records, result.unchanged) == ("complete", 5, 1)
    # The boundary record (35) is read again - none is skipped - but, unchanged, not published
    # again (the checkpoint's boundary; tests/connector/test_boundary.py).
    assert ids_of(pubsub.records()) == [36, 37, 38, 39, 40]
    assert api.data_requests()[0].query == {"updated_since": last}
    assert read_checkpoint(bucket)["cursor"] == api.records[-1]["updated_at"]


@pytest.mark.parametrize(("status", "headers"), [
    pytest.param(429, {"Retry-After": "0"}, id="429-retry-after-0"),
    pytest.param(429, {}, id="429-without-retry-after"),
    pytest.param(500, {}, id="500"),
    pytest.param(503, {"Retry-After": "0"}, id="503-retry-after"),
])
def test_429_and_5xx_are_retried(api, pubsub, bucket, make_poller, status: int, headers: dict) -> None:
    api.inject(status, times=2, headers=headers, when=_page(2))
    result = make_poller(rest_spec(api, pubsub, bucket)).poll_once()
    assert (result.outcome, result.records) == ("complete", 35)
    assert [r.status for r in api.data_requests() if r.query.get("page") == "2"] == [status, status, 200]
    assert ids_of(pubsub.records()) == ALL_IDS


def test_retry_after_is_honoured(api, pubsub, bucket, make_poller) -> None:
    api.inject(429, headers={"Retry-After": "1"}, when=_page(2))
    assert make_poller(rest_spec(api, pubsub, bucket)).poll_once().outcome == "complete"
    refused, accepted = [r for r in api.data_requests() if r.query.get("page") == "2"]
    # retry_initial_seconds is 0.01: only the server's Retry-After explains the wait.
    assert accepted.at - refused.at >= 0.95


def test_a_retry_after_beyond_the_longest_wait_ends_the_poll_and_defers_the_next(api, pubsub, bucket,
                                                                                 make_poller) -> None:
    api.inject(429, headers={"Retry-After": "3600"}, when=_page(2))
    started = time.monotonic()
    result = make_poller(rest_spec(api, pubsub, bucket)).poll_once()
    assert time.monotonic() - started < 5, "it does not sleep for an hour"
    assert (result.outcome, result.pages, result.retry_after) == ("partial", 1, 3600.0)
    assert read_checkpoint(bucket)["resume"]["url"] == api.url("/next_url?page=2")


def test_exhausted_retries_end_the_poll_partial_and_the_next_resumes_at_the_first_page_not_read(
        api, pubsub, bucket, make_poller) -> None:
    api.inject(500, times=3, when=_page(3))  # max_retries 2: three attempts, all refused
    poller = make_poller(rest_spec(api, pubsub, bucket, max_retries=2))
    first = poller.poll_once()
    assert (first.outcome, first.pages, first.records) == ("partial", 2, 20)
    assert "500" in first.error and "after 2 retries" in first.error
    checkpoint = read_checkpoint(bucket)
    assert checkpoint["resume"]["url"] == api.url("/next_url?page=3") and checkpoint["resume"]["pages_read"] == 2

    api.requests.clear()
    second = poller.poll_once()
    assert (second.outcome, second.pages) == ("complete", 2)
    assert [r.query["page"] for r in api.data_requests()] == ["3", "4"], "pages 1 and 2 are not read again"
    assert ids_of(pubsub.records()) == ALL_IDS, "every record exactly once"
    assert read_checkpoint(bucket)["resume"] is None


@pytest.mark.parametrize("path", ["/next_url", "/cursor", "/page"], ids=["next_url", "cursor", "page"])
def test_an_exhausted_budget_ends_the_poll_partial_and_the_next_poll_resumes(api, pubsub, bucket, make_poller,
                                                                             path: str) -> None:
    spec = rest_spec(api, pubsub, bucket, path, max_requests_per_minute=2)
    poller = make_poller(spec)
    first = poller.poll_once()
    assert (first.outcome, first.pages, first.budget_exhausted) == ("partial", 2, True)
    assert 0 < poller.budget.seconds_until_available() <= 60
    assert len(api.data_requests()) == 2, "no request beyond the budget"

    # A minute later (a fresh budget - here a fresh process, which also proves the resume
    # position is read back from the checkpoint object).
    api.requests.clear()
    later = make_poller(rest_spec(api, pubsub, bucket, path, max_requests_per_minute=100))
    assert later.poll_once().outcome == "complete"
    assert ids_of(pubsub.records()) == ALL_IDS
    first_request = api.data_requests()[0].query
    assert first_request in ({"page": "3"}, {"after": "20"}, {"p": "3"})


@pytest.mark.parametrize(("path", "reason"), [
    pytest.param("/no_records", "records_not_found", id="records-not-found"),
    pytest.param("/not_json", "unparseable", id="not-json"),
])
def test_a_body_without_records_is_dead_lettered_and_the_poll_ends(api, pubsub, bucket, make_poller,
                                                                   path: str, reason: str) -> None:
    poller = make_poller(rest_spec(api, pubsub, bucket, path))
    for _ in range(2):  # again at the next poll: no crash loop, one dead letter per poll
        result = poller.poll_once()
        assert (result.outcome, result.records, result.dead_letters) == ("dead_letter", 0, 1)
    assert pubsub.records() == []
    letters = pubsub.dead_letters()
    assert len(letters) == 2
    assert letters[0].attributes["reason"] == reason
    assert letters[0].attributes["origin"] == api.url(path)
    assert letters[0].attributes["source_id"] == SOURCE_ID
    assert letters[0].data.startswith(b"{" if reason == "records_not_found" else b"<html>")


def test_a_client_error_fails_the_poll_and_keeps_the_position(api, pubsub, bucket, make_poller) -> None:
    api.inject(404, when=_page(2))
    poller = make_poller(rest_spec(api, pubsub, bucket))
    result = poller.poll_once()
    assert (result.outcome, result.pages) == ("failed", 1) and "404" in result.error
    assert len([r for r in api.data_requests() if r.query.get("page") == "2"]) == 1, "a 404 is not retried"
    assert read_checkpoint(bucket)["resume"]["url"] == api.url("/next_url?page=2")
    assert poller.poll_once().outcome == "complete"
    assert ids_of(pubsub.records()) == ALL_IDS


def test_a_transport_error_is_retried_then_fails_the_poll(pubsub, bucket, make_poller) -> None:
    class Closed:  # a port nothing listens on
        def url(self, path: str) -> str:
            return "http://127.0.0.1:9" + path

    # Nothing received: a failed poll, not a partial success (tests/connector/test_poller_health.py).
    result = make_poller(rest_spec(Closed(), pubsub, bucket, max_retries=1)).poll_once()
    assert result.outcome == "failed" and "ConnectError" in result.error


def test_stopping_checkpoints_the_position_reached(api, pubsub, bucket, make_poller) -> None:
    stop = threading.Event()
    poller = make_poller(rest_spec(api, pubsub, bucket), stop=stop)
    api.inject(200, when=lambda seen: (seen.query.get("page") == "2" and stop.set()) or False)
    result = poller.poll_once()  # SIGTERM arrives while page 2 is being read
    assert (result.outcome, result.pages) == ("stopped", 2)
    assert read_checkpoint(bucket)["resume"]["url"] == api.url("/next_url?page=3")


def test_a_resume_position_of_other_settings_is_discarded(api, pubsub, bucket, make_poller) -> None:
    make_poller(rest_spec(api, pubsub, bucket, "/page", max_requests_per_minute=2)).poll_once()
    assert read_checkpoint(bucket)["resume"]["params"] == {"p": "3"}
    api.requests.clear()
    changed = make_poller(rest_spec(api, pubsub, bucket, "/page", params={"status": "paid"}))
    assert changed.poll_once().outcome == "complete"
    assert api.data_requests()[0].query == {"status": "paid", "p": "1"}


def test_an_unreadable_checkpoint_starts_over_instead_of_crash_looping(api, pubsub, bucket, make_poller) -> None:
    storage.Client().bucket(bucket).blob(f"_connectors/{SOURCE_ID}/state.json").upload_from_string(b"{garbage")
    assert make_poller(rest_spec(api, pubsub, bucket)).poll_once().outcome == "complete"
    assert read_checkpoint(bucket)["version"] == 1


def test_two_replicas_never_both_advance_the_checkpoint(api, pubsub, bucket, make_poller) -> None:
    spec = rest_spec(api, pubsub, bucket, cursor_field="updated_at", cursor_param="updated_since")
    loser, winner = make_poller(spec), make_poller(spec)
    read = loser.store.read

    def read_then_let_the_other_replica_win() -> tuple[int, PollState]:
        seen = read()
        assert winner.poll_once().outcome == "complete"
        return seen

    loser.store.read = read_then_let_the_other_replica_win  # type: ignore[method-assign]
    result = loser.poll_once()
    assert result.outcome == "lost_race", result
    written_by_winner = read_checkpoint(bucket)
    assert written_by_winner["cursor"] == api.records[-1]["updated_at"]

    loser.store.read = read  # type: ignore[method-assign]
    assert loser.poll_once().outcome == "complete", "the loser carries on from what it re-reads"


def test_checkpoint_writes_need_the_generation_they_read(emulators, bucket) -> None:
    store = CheckpointStore(bucket, "state.json")
    assert store.read() == (0, PollState())
    first = store.write(PollState(cursor=1), SOURCE_ID, 0)
    with pytest.raises(CheckpointConflict):
        store.write(PollState(cursor=2), SOURCE_ID, 0)  # create-only, but it exists
    second = store.write(PollState(cursor=2), SOURCE_ID, first)
    with pytest.raises(CheckpointConflict):
        store.write(PollState(cursor=3), SOURCE_ID, first)  # stale generation
    assert store.read() == (second, PollState(cursor=2))


def test_health_reports_the_last_successful_poll(api, pubsub, bucket, make_poller) -> None:
    poller = make_poller(rest_spec(api, pubsub, bucket))
    healthy, report = poller.health()
    assert healthy and report["last_success_at"] is None
    poller.poll_once()
    healthy, report = poller.health()
    assert healthy and report["last_outcome"] == "complete" and report["records_published"] == 35
    assert report["last_success_at"].endswith("Z")
    stale, _ = poller.health(now=time.time() + 3600)
    assert not stale


# --------------------------------------------------------------------------- auth and secrets

SECRET = "Sup3r-s3cret-v4lue"
AUTH_CASES = [
    pytest.param({"type": "bearer_token"}, ("bearer", SECRET), SECRET, id="bearer_token"),
    pytest.param({"type": "api_key", "header": "X-Api-Key"}, ("header", "X-Api-Key", SECRET), SECRET,
                 id="api_key-header"),
    pytest.param({"type": "api_key", "query": "api_key"}, ("query", "api_key", SECRET), SECRET, id="api_key-query"),
    pytest.param({"type": "basic"}, ("basic", "alice", SECRET), f"alice:{SECRET}", id="basic"),
    pytest.param({"type": "oauth2", "scopes": ["read"]}, ("oauth2", "client-1", SECRET, 3600), f"client-1:{SECRET}",
                 id="oauth2"),
]


def _auth(api, auth: dict[str, Any]) -> dict[str, Any]:
    return {**auth, "token_url": api.url("/token")} if auth["type"] == "oauth2" else auth


@pytest.mark.parametrize(("auth", "expect", "secret"), AUTH_CASES)
def test_each_auth_type_reaches_the_api(api, pubsub, bucket, make_poller, auth: dict, expect: tuple,
                                        secret: str) -> None:
    api.expect = expect
    poller = make_poller(rest_spec(api, pubsub, bucket, auth=_auth(api, auth)), secret)
    assert poller.poll_once().outcome == "complete"
    assert poller.poll_once().outcome == "complete"
    assert all(r.status == 200 for r in api.data_requests())
    if auth["type"] == "oauth2":
        assert len(api.issued_tokens) == 1, "the token is cached across pages and polls"
    origins = {m.attributes["origin"] for m in pubsub.records()}
    assert api.url("/next_url") in origins and not any("api_key" in o for o in origins)


def test_the_oauth2_token_is_refreshed_before_it_expires_and_after_a_401(api, pubsub, bucket, make_poller) -> None:
    api.expect = ("oauth2", "client-1", SECRET, 1)  # a 1 s token: cached for 0.9 s
    poller = make_poller(rest_spec(api, pubsub, bucket, "/none", auth=_auth(api, AUTH_CASES[-1].values[0])),
                         f"client-1:{SECRET}")
    poller.poll_once()
    time.sleep(1.0)
    poller.poll_once()
    assert len(api.issued_tokens) == 2
    api.inject(401, when=lambda seen: seen.path == "/none")  # revoked early
    assert poller.poll_once().outcome == "complete"
    assert len(api.issued_tokens) == 3
    # The token endpoint's own 5xx are retried like the API's; its too-long Retry-After ends the poll.
    poller.auth.invalidate()
    api.inject(503, times=2, when=lambda seen: seen.path == "/token")
    assert poller.poll_once().outcome == "complete" and len(api.issued_tokens) == 4
    poller.auth.invalidate()
    api.inject(429, headers={"Retry-After": "600"}, when=lambda seen: seen.path == "/token")
    result = poller.poll_once()  # no page received: a failed poll, and the next one waits
    assert (result.outcome, result.retry_after) == ("failed", 600.0) and "token endpoint" in result.error


@pytest.mark.parametrize(("auth", "expect", "secret"), AUTH_CASES)
def test_the_secret_never_reaches_logs_errors_messages_or_the_checkpoint(
        api, pubsub, bucket, make_poller, caplog: pytest.LogCaptureFixture, auth: dict, expect: tuple,
        secret: str) -> None:
    # Everything at DEBUG, the HTTP libraries included (the connector silences them; this test
    # does not rely on it), through failures that put URLs and errors into logs.
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "connector"):
        caplog.set_level(logging.DEBUG, logger=name)
    api.expect = expect
    api.echo_secret = secret  # the API echoes the credential into every body
    spec = rest_spec(api, pubsub, bucket, auth=_auth(api, auth), max_retries=1)
    poller = make_poller(spec, secret)
    api.inject(500, times=2, when=_page(2))                     # retries exhausted
    api.inject(429, headers={"Retry-After": "3600"}, when=_page(3))  # Retry-After too long
    api.inject(403, when=_page(3))                              # a client error
    results = [poller.poll_once() for _ in range(4)]
    assert [r.outcome for r in results] == ["partial", "partial", "failed", "complete"]
    wrong = make_poller(rest_spec(api, pubsub, bucket, auth=_auth(api, auth)), secret[:-1] + "X")
    results.append(wrong.poll_once())  # 401 everywhere (or a refused token)
    dead = make_poller(rest_spec(api, pubsub, bucket, "/no_records", auth=_auth(api, auth)), secret)
    results.append(dead.poll_once())
    assert [r.outcome for r in results[-2:]] == ["failed", "dead_letter"]

    messages = pubsub.records() + pubsub.dead_letters()
    assert len(messages) == 35 + 1  # every record once (each poll resumed where the last stopped), the dead letter
    haystacks = [caplog.text, *(r.error or "" for r in results), json.dumps(read_checkpoint(bucket))]
    haystacks += [m.data.decode() + json.dumps(m.attributes) for m in messages]
    assert "[REDACTED]" in messages[0].data.decode(), "the echoed credential was scrubbed from the record"
    for form in {secret, secret.split(":")[-1]} | ({api.issued_tokens[-1]} if api.issued_tokens else set()):
        for text in haystacks:
            assert form not in text


def test_a_publish_failure_makes_its_page_the_first_page_not_read(api, pubsub, bucket, make_poller) -> None:
    from concurrent.futures import Future

    from connector.publish import RecordPublisher

    class FailPageTwo:  # Pub/Sub refuses the records of page 2 (ids 11-20), acknowledges the rest
        def publish(self, topic: str, data: bytes, **attributes: str) -> Future:
            future: Future = Future()
            if 11 <= json.loads(data)["id"] <= 20:
                future.set_exception(RuntimeError("503 unavailable"))
            else:
                future.set_result("1")
            return future

    # A long checkpoint interval: pages 2-4 are all in flight when page 2's failure is seen.
    spec = rest_spec(api, pubsub, bucket, checkpoint_interval_seconds=60)
    poller = make_poller(spec)
    poller.publisher = RecordPublisher(FailPageTwo(), source_id=SOURCE_ID, topic=pubsub.topic,
                                       dead_letter_topic=pubsub.dead_letter_topic)
    result = poller.poll_once()
    assert (result.outcome, result.pages) == ("failed", 1) and "503 unavailable" in result.error
    resume = read_checkpoint(bucket)["resume"]
    assert (resume["url"], resume["pages_read"]) == (api.url("/next_url?page=2"), 1)

    api.requests.clear()
    assert make_poller(spec).poll_once().outcome == "complete"
    assert [r.query["page"] for r in api.data_requests()] == ["2", "3", "4"]
    assert ids_of(pubsub.records()) == list(range(11, 36))
