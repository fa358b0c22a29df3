"""The daemon's HTTP server under abuse (issue 9, kinds 13 and 11): slow headers, slow or huge
bodies, idle and too many connections, replayed deliveries, a stuck worker; and the extension
point for more routes. The daemon runs in-process over the in-memory provider (no emulator);
the clients are raw sockets where timing matters."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time

import pytest
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route
from support import WEBHOOK_SECRET, call, get_json, scrape, value, wait_for

from providers.memory import MemoryProvider
from reconciler.daemon import server


@pytest.fixture
def memory() -> MemoryProvider:
    return MemoryProvider()


@pytest.fixture
def daemon(desired_repo, start_daemon, memory):
    running = start_daemon(desired_repo, poll_interval=120, daemon_kwargs={"providers_factory": lambda p: [memory]})
    wait_for(lambda: get_json(running.base, "/status")["last_sync"], what="first sync")
    return running


def host_port(running) -> tuple[str, int]:
    host, port = running.daemon.address.rsplit(":", 1)
    return host, int(port)


def connect(running) -> socket.socket:
    sock = socket.create_connection(host_port(running), timeout=10)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within ``seconds``; what it sent meanwhile."""
    sock.settimeout(seconds)
    received = b""
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            chunk = sock.recv(65536)
            if not chunk:
                return True, received
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        return True, received
    return False, received


def signed_push(body: bytes, delivery: str | None = None, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
               "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def push_body(ref: str = "refs/heads/main", after: str = "1" * 40) -> bytes:
    return json.dumps({"ref": ref, "after": after}).encode()


def webhook_results(running) -> dict[str, float]:
    samples = scrape(running.base)
    return {labels["result"]: v for labels, v in samples.get("headwater_webhook_requests_total", [])}


# ---------------------------------------------------------------------- endpoints keep their behaviour


def test_every_endpoint_answers_as_before(daemon):
    status, body = call("GET", daemon.base + "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, body = call("GET", daemon.base + "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True})
    assert get_json(daemon.base, "/status")["last_sync"]["result"] == "converged"
    status, body = call("GET", daemon.base + "/metrics")
    assert status == 200 and b"headwater_ready 1.0" in body
    assert call("GET", daemon.base + "/nope") == (404, b'{\n  "error": "not found"\n}\n')
    status, body = call("POST", daemon.base + "/status", b"{}")
    assert status == 405 and json.loads(body) == {"error": "method not allowed"}
    assert call("GET", daemon.base + "/webhook")[0] == 405


def test_responses_are_never_cached_nor_sniffed(daemon):
    import urllib.request

    with urllib.request.urlopen(daemon.base + "/status", timeout=10) as response:
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Type"] == "application/json"
        assert "Server" not in response.headers


# ---------------------------------------------------------------------- slow and idle clients


@pytest.fixture
def short_timeouts(monkeypatch):
    monkeypatch.setattr(server._TimedH11Protocol, "header_timeout", 0.5)
    monkeypatch.setattr(server, "KEEP_ALIVE_S", 1)
    monkeypatch.setattr(server, "WEBHOOK_BODY_TIMEOUT_S", 0.5)


@pytest.mark.parametrize("sent", [
    pytest.param(b"", id="idle-connection"),
    pytest.param(b"GET /status HTTP/1.1\r\nHost: x\r\n", id="slow-headers"),
    pytest.param(b"GET /stat", id="slow-request-line"),
])
def test_a_client_that_does_not_send_its_request_head_in_time_is_disconnected(short_timeouts, daemon, sent):
    sock = connect(daemon)
    sock.sendall(sent)
    closed, received = closed_within(sock, 3)
    assert closed and received == b""
    assert call("GET", daemon.base + "/healthz")[0] == 200, "the server serves others meanwhile"


def test_an_idle_keep_alive_connection_is_closed(short_timeouts, daemon):
    sock = connect(daemon)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    closed, received = closed_within(sock, 3)
    assert received.startswith(b"HTTP/1.1 200") and closed


def test_a_body_nobody_reads_ends_the_connection(short_timeouts, daemon):
    sock = connect(daemon)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\npartial")
    closed, received = closed_within(sock, 3)
    assert received.startswith(b"HTTP/1.1 200") and closed


def test_a_slow_webhook_body_times_out_with_408(short_timeouts, daemon):
    body = push_body()
    sock = connect(daemon)
    head = "".join(f"{k}: {v}\r\n" for k, v in signed_push(body).items())
    sock.sendall(f"POST /webhook HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
                 + body[:10])
    closed, received = closed_within(sock, 3)
    assert received.startswith(b"HTTP/1.1 408") and closed
    assert webhook_results(daemon).get("timeout") == 1


def test_an_oversized_body_is_refused_unread(daemon):
    sock = connect(daemon)
    sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
                 b"Content-Length: 26214401\r\n\r\n" + b"x" * 1000)
    closed, received = closed_within(sock, 5)
    assert received.startswith(b"HTTP/1.1 413") and closed
    assert webhook_results(daemon).get("too_large") == 1


def test_a_chunked_body_is_bounded_while_it_streams(monkeypatch, daemon):
    monkeypatch.setattr(server, "MAX_WEBHOOK_BYTES", 1000)
    sock = connect(daemon)
    chunk = b"x" * 600
    sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2)
    closed, received = closed_within(sock, 5)
    assert received.startswith(b"HTTP/1.1 413") and closed


def test_concurrent_webhook_bodies_are_capped(monkeypatch, daemon):
    monkeypatch.setattr(server, "MAX_WEBHOOK_BODIES", 2)
    slow = []
    for index in range(2):  # two bodies that take their time
        body = push_body(after=f"{index}" * 40)
        head = "".join(f"{k}: {v}\r\n" for k, v in signed_push(body, f"slow-{index}").items())
        sock = connect(daemon)
        sock.sendall(f"POST /webhook HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode())
        slow.append((sock, body))
    time.sleep(0.3)
    third = push_body(after="3" * 40)
    status, answer = call("POST", daemon.base + "/webhook", third, signed_push(third, "third"))
    assert status == 503 and json.loads(answer) == {"error": "busy; retry later"}
    for sock, body in slow:  # they finish; the cap frees up
        sock.sendall(body)
        assert closed_within(sock, 0.5)[1].startswith(b"HTTP/1.1 202")
    assert call("POST", daemon.base + "/webhook", third, signed_push(third, "third"))[0] == 202, \
        "refused while busy, so not remembered: GitHub's redelivery is processed"
    assert webhook_results(daemon) == {"accepted": 3.0, "busy": 1.0}


def test_connections_beyond_the_limit_get_503_until_idle_ones_are_dropped(short_timeouts, monkeypatch, desired_repo,
                                                                         start_daemon, memory):
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 3)
    running = start_daemon(desired_repo, poll_interval=120, daemon_kwargs={"providers_factory": lambda p: [memory]})
    idle = [connect(running) for _ in range(3)]
    time.sleep(0.1)
    assert call("GET", running.base + "/healthz")[0] == 503
    for sock in idle:
        assert closed_within(sock, 3)[0]
    assert wait_for(lambda: call("GET", running.base + "/healthz")[0] == 200, timeout=5, what="room again")


# ---------------------------------------------------------------------- signatures and replays


def test_a_replayed_delivery_is_recognised_and_ignored(daemon):
    first, second = push_body(after="a" * 40), push_body(after="b" * 40)
    assert call("POST", daemon.base + "/webhook", first, signed_push(first, "guid-1"))[0] == 202
    # GitHub's "redeliver", or an attacker replaying a captured request: the same delivery id ...
    status, answer = call("POST", daemon.base + "/webhook", first, signed_push(first, "guid-1"))
    assert (status, json.loads(answer)) == (200, {"ignored": "replayed delivery"})
    # ... or the same signed body under a made-up delivery id.
    assert call("POST", daemon.base + "/webhook", first, signed_push(first, "guid-forged"))[0] == 200
    # A new push is not a replay.
    assert call("POST", daemon.base + "/webhook", second, signed_push(second, "guid-2"))[0] == 202
    assert webhook_results(daemon) == {"accepted": 2.0, "replayed": 2.0}
    events = [e for e in daemon.logs.events() if e["event"] == "webhook.replayed"]
    assert [e["delivery"] for e in events] == ["guid-1", "guid-forged"]


def test_a_refused_delivery_is_not_remembered(daemon):
    not_json = b"not json at all"
    headers = signed_push(not_json, "guid-broken")
    assert call("POST", daemon.base + "/webhook", not_json, headers)[0] == 400
    assert call("POST", daemon.base + "/webhook", not_json, headers)[0] == 400, "processed again, not a replay"


def test_a_forged_signature_is_401_and_never_remembered(daemon):
    body = push_body(after="c" * 40)
    assert call("POST", daemon.base + "/webhook", body, signed_push(body, "guid-x", secret="wrong"))[0] == 401
    assert call("POST", daemon.base + "/webhook", body, signed_push(body, "guid-x"))[0] == 202


def test_a_signed_body_too_large_to_parse_still_triggers_a_fetch(monkeypatch, daemon):
    monkeypatch.setattr(server, "PARSED_WEBHOOK_BYTES", 100)
    body = json.dumps({"ref": "refs/heads/main", "commits": ["x" * 500]}).encode()
    status, answer = call("POST", daemon.base + "/webhook", body, signed_push(body, "guid-big"))
    assert (status, json.loads(answer)) == (202, {"accepted": True, "ref": None})
    tampered = body[:-2] + b"y]}"
    assert call("POST", daemon.base + "/webhook", tampered, signed_push(body, "guid-big2"))[0] == 401, \
        "the whole body is signed, not just what is parsed"


# ---------------------------------------------------------------------- extension point


def test_extra_routes_are_served_with_the_same_protections(desired_repo, start_daemon, memory):
    def page(request: Request) -> HTMLResponse:
        status = request.app.state.daemon.status()
        return HTMLResponse(f"<h1>revision {status['revision']}</h1>")

    running = start_daemon(desired_repo, daemon_kwargs={"providers_factory": lambda p: [memory],
                                                        "http_routes": [Route("/ui", page)]})
    revision = desired_repo.repo.head.commit.hexsha
    wait_for(lambda: get_json(running.base, "/status")["revision"] == revision, what="served")
    import urllib.request

    with urllib.request.urlopen(running.base + "/ui", timeout=10) as response:
        assert response.read().decode() == f"<h1>revision {revision}</h1>"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert call("GET", running.base + "/healthz")[0] == 200


def test_an_extra_route_may_not_replace_a_built_in_endpoint():
    with pytest.raises(ValueError, match="extra route '/status' would replace a built-in endpoint"):
        server.build_app(None, [Route("/status", lambda request: None)])


# ---------------------------------------------------------------------- liveness reflects progress


class Stuck(MemoryProvider):
    """Observe blocks (like a read of a FIFO, or a call that never returns) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.stuck = False

    def observe(self, kind):
        if self.stuck:
            self.release.wait(30)
        return super().observe(kind)


def test_a_stuck_worker_makes_the_daemon_unhealthy_and_recovers(desired_repo, start_daemon):
    provider = Stuck()
    running = start_daemon(desired_repo, poll_interval=0.3, drift_interval=3600, stall_timeout=1.0,
                           daemon_kwargs={"providers_factory": lambda p: [provider]})
    wait_for(lambda: get_json(running.base, "/status")["last_sync"], what="first sync")
    assert call("GET", running.base + "/healthz")[0] == 200
    provider.stuck = True
    desired_repo.edit_yaml("platform.yaml", lambda d: d["pubsub"].update(ack_deadline_seconds=90))
    desired_repo.commit_and_push("something to plan")
    try:
        status, body = wait_for(lambda: (r := call("GET", running.base + "/healthz"))[0] == 503 and r, timeout=10,
                                what="unhealthy")
        health = json.loads(body)
        assert health["status"] == "worker stalled" and health["step"] == "sync_pass"
        assert health["seconds_without_progress"] >= 1.0
        assert get_json(running.base, "/status")["revision"], "the other endpoints still answer"
    finally:
        provider.stuck = False
        provider.release.set()
    wait_for(lambda: call("GET", running.base + "/healthz")[0] == 200, what="healthy again")
    assert value(scrape(running.base), "headwater_ready") == 1
