"""``python -m connector`` as the real process Cloud Run (or the local runner) starts: a poller
killed with SIGKILL between publish and checkpoint loses nothing; a webhook on uvicorn answers
over a socket; a bad spec or secret exits 2 naming the problem and never the secret."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.rest_api import CRASH_AFTER_PUBLISH_ENV
from tests.connector.conftest import read_checkpoint, rest_spec
from tests.connector.test_webhook import BODY, KEY, _hex, hook_spec

ROOT = Path(__file__).resolve().parents[2]
SECRET = "crash-test-s3cret-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(spec: dict[str, Any], **extra: str) -> dict[str, str]:
    # The emulator hosts come from the session's environment (tests/conftest.py), as the local
    # runner passes them; nothing else of the test process leaks in.
    keep = ("PATH", "HOME", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "PYTHONPATH")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "HEADWATER_CONNECTOR_SPEC": json.dumps(spec),
            **extra}


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "connector"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(predicate, timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None


def test_a_poller_killed_between_publish_and_checkpoint_loses_no_record(api, pubsub, bucket) -> None:
    api.expect = ("bearer", SECRET)
    spec = rest_spec(api, pubsub, bucket, cursor_field="updated_at", cursor_param="updated_since",
                     auth={"type": "bearer_token"}, poll_interval_seconds=0.2)

    # Run 1: SIGKILL right after page 3's records were acknowledged, before its checkpoint.
    crashed = subprocess.run([sys.executable, "-m", "connector"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env=_env(spec, HEADWATER_CONNECTOR_SECRET=SECRET, **{CRASH_AFTER_PUBLISH_ENV: "3"}))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    checkpoint = read_checkpoint(bucket)
    assert checkpoint["resume"]["url"] == api.url("/next_url?page=3"), "the checkpoint is still before page 3"
    before = Counter(json.loads(m.data)["id"] for m in pubsub.records())
    assert sorted(before) == list(range(1, 31)), "pages 1-3 were published before the kill"

    # Run 2: restarted, it resumes at the checkpoint and re-publishes page 3 (the dedup key
    # absorbs the repeat) - no record is lost.
    port = _free_port()
    process = _start(_env(spec, HEADWATER_CONNECTOR_SECRET=SECRET, PORT=str(port)))
    try:
        _wait_for(lambda: (read_checkpoint(bucket) or {}).get("cursor") == api.records[-1]["updated_at"],
                  what="the restarted poller to finish the walk")
        health = _wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz"), what="/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["last_outcome"] == "complete" and health.json()["last_success_at"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    after = Counter(json.loads(m.data)["id"] for m in pubsub.records())
    published = before + after
    assert sorted(published) == list(range(1, 36)), "every record published at least once"
    assert all(published[i] >= 2 for i in range(21, 31)), "page 3 was published again after the crash"
    assert "SIGKILL after publishing" in crashed.stderr
    for output in (crashed.stderr, crashed.stdout, stderr):
        assert SECRET not in output
    for line in stderr.splitlines():
        assert json.loads(line)["severity"], "every log line is a JSON object Cloud Run can read"


def test_a_webhook_process_answers_over_a_socket(pubsub) -> None:
    port = _free_port()
    spec = hook_spec(pubsub)
    process = _start(_env(spec, HEADWATER_WEBHOOK_SECRET=KEY.decode(), PORT=str(port)))
    base = f"http://127.0.0.1:{port}"
    try:
        assert _wait_for(lambda: _get(f"{base}/healthz"), what="the webhook server").status_code == 200
        ok = httpx.post(f"{base}/hooks/pay", content=BODY, headers={"X-Signature": f"sha256={_hex('sha256')}"})
        assert (ok.status_code, ok.json()) == (200, {"published": 1})
        assert httpx.post(f"{base}/hooks/pay", content=BODY, headers={"X-Signature": "sha256=00"}).status_code == 401
        # A sender announcing a gigabyte is answered 413 at once; the body is never read.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"POST /hooks/pay HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 413")
        assert [json.loads(m.data)["id"] for m in pubsub.records()] == ["evt_1"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert KEY.decode() not in stderr


@pytest.mark.parametrize(("spec", "env", "message"), [
    pytest.param(None, {}, "HEADWATER_CONNECTOR_SPEC is not set", id="no-spec"),
    pytest.param({"version": 1}, {}, "source_id: required", id="incomplete-spec"),
    pytest.param("basic", {"HEADWATER_CONNECTOR_SECRET": "no-colon-" + SECRET},
                 "needs the form user:password", id="malformed-secret"),
])
def test_an_invalid_spec_or_secret_exits_2_naming_the_problem(tmp_path, spec: Any, env: dict, message: str) -> None:
    if spec == "basic":
        spec = {"version": 1, "source_id": "s", "project": "p", "connector_type": "rest_api",
                "topic": "projects/proj-1/topics/src", "dead_letter_topic": "projects/proj-1/topics/src-dlq",
                "checkpoint": "gs://bucket/state.json",
                "rest_api": {"endpoint": "https://x.example/y", "auth": {"type": "basic"}}}
    environment = {"PATH": os.environ["PATH"], **env}
    if spec is not None:
        environment["HEADWATER_CONNECTOR_SPEC"] = json.dumps(spec)
    result = subprocess.run([sys.executable, "-m", "connector"], cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and SECRET not in result.stderr


def test_a_poller_whose_api_is_unreachable_turns_unhealthy_and_says_why(pubsub, bucket) -> None:
    from tests.connector.test_poller_health import Closed

    # A short key ("2026", as in the trial): warned about once, redacted nowhere - the log lines'
    # own timestamps (this year's, too) stay intact.
    spec = rest_spec(Closed(), pubsub, bucket, auth={"type": "api_key", "query": "api_key"}, max_retries=1,
                     poll_interval_seconds=0.1)
    port = _free_port()
    process = _start(_env(spec, HEADWATER_CONNECTOR_SECRET="2026", PORT=str(port)))
    try:
        def unhealthy() -> httpx.Response | None:
            response = _get(f"http://127.0.0.1:{port}/healthz")
            return response if response is not None and response.status_code == 503 else None

        health = _wait_for(unhealthy, what="/healthz to answer 503")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    body = health.json()
    assert body["status"] == "unhealthy" and body["consecutive_failed_polls"] >= 3 and body["last_success_at"] is None
    assert "ConnectError" in body["reason"] and "http://127.0.0.1:9/next_url" in body["reason"]
    lines = [json.loads(line) for line in stderr.splitlines()]
    failed = [line for line in lines if line["message"].startswith("poll failed")]
    assert len(failed) >= 3 and all(line["severity"] == "WARNING" and "ConnectError" in line["message"]
                                    for line in failed)
    assert any(line["severity"] == "ERROR" and "/healthz answers 503" in line["message"] for line in lines)
    assert sum("too short to be redacted reliably" in line["message"] for line in lines) == 1
    assert "[REDACTED]" not in stderr and "api_key" not in stderr
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["time"]) for line in lines)
