"""Helpers for the daemon tests: a desired-state git repo, a daemon, HTTP calls, an alert receiver.

`DesiredRepo` is a bare repository (what the daemon clones, standing in for GitHub) plus a work
tree the test commits and pushes from. The desired state is a trimmed copy of the example in
``desired_state/``, with the test's project id and unique bucket names (the Storage emulator
has no project scoping).
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import io
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import git
import yaml
from prometheus_client.parser import text_string_to_metric_families

from providers.memory import MemoryProvider
from reconciler.resources import Kind
from reconciler.yamlsrc import load_yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "desired_state"
# Given to every test daemon; tests check that neither ever appears in logs or /status.
WEBHOOK_SECRET = "whsec-test-3f9a1c77e2b14d"
GIT_TOKEN = "ghp_testtoken_5b2e9d0a41c8"


class DesiredRepo:
    def __init__(self, root: Path, project: str, unique: str, sources: tuple[str, ...] = ("orders",)) -> None:
        self.bare_path = root / "remote.git"
        self.work_path = root / "work"
        git.Repo.init(self.bare_path, bare=True, initial_branch="main")
        self.repo = git.Repo.init(self.work_path, initial_branch="main")
        with self.repo.config_writer() as config:
            config.set_value("user", "name", "headwater tests")
            config.set_value("user", "email", "tests@example.com")
        self.repo.create_remote("origin", str(self.bare_path))
        self.project = project
        platform = yaml.safe_load((EXAMPLE / "platform.yaml").read_text())
        platform["project"] = project
        for zone in ("landing", "bronze", "silver"):
            platform["zones"].setdefault(zone, {})["bucket"] = f"{unique}-{zone}"
        self.write("platform.yaml", yaml.safe_dump(platform, sort_keys=False))
        if "orders" in sources:  # its gold join reads reference.customers, which a plan checks exists
            from helpers import seed_reference_tables

            seed_reference_tables(project)
        for source in sources:
            connector = (EXAMPLE / "connectors" / f"{source}.yaml").read_text()
            connector = connector.replace("landing-headwater-demo-europe-west1", f"{unique}-landing")
            self.write(f"connectors/{source}.yaml", connector)
            self.write(f"schemas/{source}.json", (EXAMPLE / "schemas" / f"{source}.json").read_text())

    @property
    def url(self) -> str:
        return str(self.bare_path)

    def write(self, relative: str, text: str) -> None:
        path = self.work_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def read(self, relative: str) -> str:
        return (self.work_path / relative).read_text()

    def edit_yaml(self, relative: str, change: Callable[[dict], None]) -> None:
        data, _ = load_yaml(self.work_path / relative)  # headwater's loader: `on:` stays a string
        change(data)
        self.write(relative, yaml.safe_dump(data, sort_keys=False))

    def commit_and_push(self, message: str) -> str:
        self.repo.git.add("-A")
        self.repo.index.commit(message)
        self.repo.git.push("origin", "HEAD:refs/heads/main", "--force")
        return self.repo.head.commit.hexsha


# ---------------------------------------------------------------------- providers

# The kinds the three emulators serve; `emulator_providers` keeps any other kind in memory.
EMULATED_KINDS = {Kind.PUBSUB_TOPIC, Kind.PUBSUB_SUBSCRIPTION, Kind.STORAGE_BUCKET, Kind.BIGQUERY_DATASET,
                  Kind.BIGQUERY_TABLE}


def emulator_providers(platform) -> list:
    """The real providers for Pub/Sub, Storage and BigQuery (pointed at the emulators by the
    environment), plus an in-memory provider for every other kind (Dataflow jobs): the daemon
    tests are about the daemon, and must not launch Beam pipelines on this machine."""
    from providers.bigquery import BigQueryProvider
    from providers.pubsub import PubSubProvider
    from providers.storage import StorageProvider

    providers = [StorageProvider(platform.project), BigQueryProvider(platform.project, platform.region),
                 PubSubProvider(platform.project)]
    others = [kind for kind in Kind if kind not in EMULATED_KINDS]
    return providers + ([MemoryProvider(kinds=others)] if others else [])


# ---------------------------------------------------------------------- HTTP


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(base: str, path: str) -> Any:
    status, body = call("GET", base + path)
    assert status == 200, (path, status, body)
    return json.loads(body)


def push_event(base: str, secret: str | None, ref: str = "refs/heads/main",
               signature: str | None = None) -> tuple[int, bytes]:
    body = json.dumps({"ref": ref, "after": "0" * 40}).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
    if signature is None and secret is not None:
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return call("POST", base + "/webhook", body, headers)


def scrape(base: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """/metrics parsed with prometheus_client's text parser: sample name → [(labels, value)]."""
    status, body = call("GET", base + "/metrics")
    assert status == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for lbls, v in samples.get(name, []) if all(lbls.get(k) == w for k, w in labels.items()))


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except AssertionError:
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


# ---------------------------------------------------------------------- alert receiver


class AlertReceiver:
    """A tiny webhook endpoint on 127.0.0.1 that records the JSON it receives."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                receiver.received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/not-a-real-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [a["headwater"]["event"] for a in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LogBuffer(io.StringIO):
    """A thread-safe place for a daemon's JSON log lines."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            return super().write(text)

    def events(self) -> list[dict]:
        with self._lock:
            lines = self.getvalue().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]
