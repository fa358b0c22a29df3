"""The status page without a browser: escaping, redaction, read-only, filters and pages, the
local ``headwater ui`` document, and the benchmark (tiny, so it cannot rot). The browser tests
are in test_status_page_browser.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from reconciler.daemon.server import build_app
from reconciler.health import Health
from reconciler.ui import view
from reconciler.ui.local import LocalStatus
from reconciler.ui.local import app as local_app

BENCH_FILE = Path(__file__).resolve().parents[2] / "bench" / "status_page.py"
HOSTILE_ID = '<script>alert("id")</script>'
HOSTILE_ERROR = '<img src=x onerror=alert(1)> & "quotes"'


def bench_module():
    spec = importlib.util.spec_from_file_location("status_page_bench", BENCH_FILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return bench_module()


@pytest.fixture
def daemon(bench, tmp_path):
    """A real Daemon (not started) holding 120 generated sources, served by its own app."""
    return bench.make_daemon(bench.generate_health(120, now=1_800_000_000.0), tmp_path)


@pytest.fixture
def client(daemon):
    from reconciler.ui import routes

    return TestClient(build_app(daemon, routes()))


def hostile(daemon, secret: str | None = None) -> None:
    """Give the first source an HTML id and an error (and reason) holding HTML and maybe a secret."""
    health = daemon.source_health.last
    first = health.sources[0]
    resource = dataclasses.replace(first.resources[0], health=Health.DEGRADED, error=HOSTILE_ERROR + (secret or ""),
                                   log_tail=("<b>log</b> line", f"token={secret}" if secret else "plain"))
    first = dataclasses.replace(first, source_id=HOSTILE_ID, health=Health.DEGRADED,
                                reasons=(f"job failed: {HOSTILE_ERROR} {secret or ''}",),
                                resources=(resource, *first.resources[1:]))
    daemon.source_health.last = dataclasses.replace(health, sources=(first, *health.sources[1:]))


def test_html_in_a_source_id_or_an_error_renders_as_text(daemon, client):
    hostile(daemon)
    page = client.get("/ui", params={"health": "Degraded"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" not in page.text and "<img" not in page.text
    assert "&lt;script&gt;alert(&#34;id&#34;)&lt;/script&gt;" in page.text
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &#34;quotes&#34;" in page.text
    href = view.source_href(HOSTILE_ID)
    assert href == "/ui/sources/%3Cscript%3Ealert%28%22id%22%29%3C%2Fscript%3E"
    source = client.get(href)
    assert source.status_code == 200
    assert "<script>" not in source.text and "<img" not in source.text and "<b>log</b>" not in source.text
    assert "&lt;b&gt;log&lt;/b&gt; line" in source.text
    # No script may run at all, nor anything load from elsewhere.
    policy = source.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy and "frame-ancestors 'none'" in policy
    assert not re.search(r"<script|https?://(?!console\.cloud\.google\.com)", source.text.replace(
        "&lt;script", "")), "no script, no external resource (links to the Cloud Console only)"


def test_secrets_are_redacted_on_the_page(daemon, client, bench):
    hostile(daemon, secret=bench.SECRET)  # the daemon's webhook secret, leaked into an error
    for path in ("/ui?health=Degraded", view.source_href(HOSTILE_ID)):
        text = client.get(path).text
        assert bench.SECRET not in text
        assert "***" in text


def test_nothing_is_writable(client):
    for path in ("/ui", "/ui/sources/source_0000", "/ui/style.css", "/"):
        assert client.post(path, content=b"x").status_code == 405
        assert client.delete(path).status_code == 405
    page = client.get("/ui").text
    assert 'method="get"' in page and 'method="post"' not in page.lower()
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui"


def test_search_filters_sort_and_pages(daemon, client):
    page = client.get("/ui").text
    assert "1–50 of 120 · page 1 of 3" in page
    assert page.count('<tr class="source ') == 50
    rows = re.findall(r'data-source="([^"]+)"', page)
    states = [s.health for s in sorted(daemon.source_health.last.sources, key=lambda s: s.source_id)]
    assert rows[0] in {s.source_id for s in daemon.source_health.last.sources if s.health == Health.DEGRADED} or \
        Health.DEGRADED not in states  # worst first
    last = client.get("/ui", params={"page": 3}).text
    assert "101–120 of 120 · page 3 of 3" in last and 'rel="next"' not in last and 'rel="prev"' in last
    assert "page 3 of 3" in client.get("/ui", params={"page": 99}).text  # past the end: the last page
    found = client.get("/ui", params={"q": "SOURCE_0042"}).text
    assert re.findall(r'data-source="([^"]+)"', found) == ["source_0042"]
    assert "1–1 of 1 (of 120)" in found
    degraded = client.get("/ui", params={"health": "Degraded", "per": 500}).text  # per is capped, not refused
    wanted = sorted(s.source_id for s in daemon.source_health.last.sources if s.health == Health.DEGRADED)
    assert sorted(re.findall(r'data-source="([^"]+)"', degraded)) == wanted
    by_id = client.get("/ui", params={"sort": "id", "per": 2, "page": 2}).text
    assert re.findall(r'data-source="([^"]+)"', by_id) == ["source_0002", "source_0003"]
    assert 'href="?sort=id&amp;page=3&amp;per=2"' in by_id  # the filters ride along the page links
    nonsense = client.get("/ui", params={"health": "<x>", "page": "-1", "per": "1e9", "sort": "x"})
    assert nonsense.status_code == 200 and "1–50 of 120" in nonsense.text


def test_the_source_page_and_an_unknown_source(client):
    page = client.get("/ui/sources/source_0000").text
    assert "https://console.cloud.google.com/cloudpubsub/subscription/detail/source_0000-ingest?project=bench-project" \
        in page
    assert "ack_deadline_seconds" in page and "set by aaaaaaaaaaaa (Ana, 2026-11-01: longer ack deadline) at " \
        "platform.yaml:14 pubsub.ack_deadline_seconds" in page
    missing = client.get("/ui/sources/nope")
    assert missing.status_code == 404 and "No source" in missing.text


def test_before_the_first_health_check_the_page_says_so(tmp_path, bench):
    from reconciler.ui import routes

    daemon = bench.make_daemon(bench.generate_health(1), tmp_path)
    daemon.source_health.last = None
    page = TestClient(build_app(daemon, routes())).get("/ui")
    assert page.status_code == 200 and "No health check has run yet" in page.text


def test_console_links_per_kind():
    assert view.console_link("bigquery_table", "silver.orders", "p", "r") == \
        "https://console.cloud.google.com/bigquery?project=p&ws=!1m5!1m4!4m3!1sp!2ssilver!3sorders"
    assert view.console_link("cloud_run_service", "orders-connector", "p", "europe-west1") == \
        "https://console.cloud.google.com/run/detail/europe-west1/orders-connector/metrics?project=p"
    assert view.console_link("storage_bucket", "a/b?c", "p", "r").startswith(
        "https://console.cloud.google.com/storage/browser/a%2Fb%3Fc?")


def test_headwater_ui_serves_its_own_redacted_document(monkeypatch):
    monkeypatch.setenv("HEADWATER_GIT_TOKEN", "ghp_local_secret_123")
    calls = []

    def compute():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("observe failed with ghp_local_secret_123")
        return {"mode": "local", "repo": "/r", "revision": "c" * 40, "drift": {"resources": []}, "pending": [],
                "health": {"project": "p", "region": "r", "environment": "dev", "health": "Healthy",
                           "checked_at": "2026-11-01T00:00:00Z",
                           "sources": [{"source_id": "orders", "health": "Healthy", "sync": "Synced",
                                        "reasons": [], "pattern": "batch_file",
                                        "display_name": "https://user:pw@example.com/x ghp_local_secret_123",
                                        "resources": []}]}}

    local = LocalStatus(compute)
    assert local.refresh() is None
    client = TestClient(local_app(local))
    page = client.get("/ui").text
    assert "orders" in page and "local: /r" in page
    assert "ghp_local_secret_123" not in page and "user:pw" not in page and "https://***@example.com/x ***" in page
    assert local.refresh() == "RuntimeError: observe failed with ***"  # a failed refresh keeps the last status
    page = client.get("/ui").text
    assert "orders" in page and "The latest health check failed: RuntimeError: observe failed with ***" in page


def test_the_benchmark_runs_tiny(bench, capsys):
    report = bench.main(["--sources", "5", "--requests", "2"])
    assert {r["page"] for r in report["results"]} == {"overview", "search", "degraded", "last page", "source page"}
    out = capsys.readouterr().out
    assert "nproc=" in out and "budget (overview, 5 sources)" in out


def test_headwater_ui_computes_the_document_like_status_and_drift(tmp_path):
    """`headwater ui`'s document from a git repo (in-memory provider): health per source, the last
    change by git, drift with the commit that set the desired value, the plan's changes."""
    from support import DesiredRepo
    from test_status_page_browser import without_join

    from providers.memory import MemoryProvider
    from reconciler.engine import Engine, plan_options
    from reconciler.load import load_repo
    from reconciler.resources import Kind
    from reconciler.ui.local import status_document

    repo = DesiredRepo(tmp_path / "git", "hw-ui-test", "hw-ui")
    without_join(repo)
    first = repo.commit_and_push("platform and orders")
    memory = MemoryProvider()
    engine = Engine([memory])
    state = load_repo(repo.work_path)
    engine.apply(engine.plan(state, plan_options(state)))
    subscription = next(r for r in memory.observe(Kind.PUBSUB_SUBSCRIPTION) if r.name == "orders-ingest")
    subscription.spec["ack_deadline_seconds"] = 30  # changed by hand

    document = status_document(repo.work_path, lambda state: engine)
    assert document["revision"] == first and document["mode"] == "local"
    [source] = document["health"]["sources"]
    assert source["source_id"] == "orders" and source["last_change"]["commit"] == first
    [drift] = document["drift"]["resources"]
    assert drift["address"] == "pubsub_subscription.orders-ingest" and drift["source"] == "orders"
    [field] = drift["fields"]
    assert (field["live"], field["desired"], field["origin"]["commit"]) == (30, 60, first)
    assert [c["address"] for c in document["pending"]] == ["pubsub_subscription.orders-ingest"]

    client = TestClient(local_app(LocalStatus(lambda: document)))
    local = client.app.state.daemon
    local.refresh()
    page = client.get("/ui/sources/orders").text
    assert f"set by {first[:12]} (headwater tests" in page and "ack_deadline_seconds" in page


def test_headwater_ui_on_a_missing_repo_fails_before_serving(tmp_path, capsys):
    from reconciler.cli import main

    assert main(["ui", "--repo", str(tmp_path / "nope"), "--port", "0"]) == 1
    assert "nope" in capsys.readouterr().err
