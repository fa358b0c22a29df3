"""The status page in a real browser: Debian's headless Chromium driven by Selenium (chromedriver),
against a daemon on the emulators (the fixtures of this directory), looking at what a person
would see. Screenshots go to the test's tmp directory (``screenshots/``; pytest keeps the last
runs under its basetemp).

Deselect with ``-m "not browser"``. Without chromium and chromedriver (``scripts/setup``
installs them as root) the tests skip and say how to install them.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from support import get_json, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("emulators")]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HOURS_AHEAD = 2 * 3600  # the health checks' clock: orders' 60-minute SLA has passed, the others' 600 not


@pytest.fixture
def browser(tmp_path: Path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium is missing: apt-get install -y chromium chromium-driver (scripts/setup does it as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path):
    folder = tmp_path / "screenshots"
    folder.mkdir()

    def shot(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        height = driver.execute_script("return document.documentElement.scrollHeight")  # the whole page
        driver.set_window_size(1400, max(1000, min(int(height) + 100, 4000)))
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        assert path.stat().st_size > 1000
        return path

    return shot


def without_join(repo) -> None:
    """orders without its gold join: the page is the subject here, not the joined table (which
    a plan checks for)."""
    def drop(data: dict) -> None:
        steps = data["processing"]["silver_to_gold"]
        data["processing"]["silver_to_gold"] = [s for s in steps if "join" not in s]

    repo.edit_yaml("connectors/orders.yaml", drop)


def add_source(repo, source_id: str, sla_minutes: int) -> None:
    """Another batch_file source like orders, with its own landing prefix and schema file."""
    text = repo.read("connectors/orders.yaml").replace("source_id: orders", f"source_id: {source_id}")
    text = text.replace("/orders/", f"/{source_id}/").replace("schemas/orders.json", f"schemas/{source_id}.json")
    text = text.replace("sla_minutes: 60", f"sla_minutes: {sla_minutes}")
    text = text.replace('display_name: "Web shop orders"', f'display_name: "Orders {source_id[-2:].upper()}"')
    repo.write(f"connectors/{source_id}.yaml", text)
    # Not orders' serving layer: its reporting views and feature tables are named after orders.
    repo.edit_yaml(f"connectors/{source_id}.yaml", lambda d: d.pop("serving", None))
    schema = json.loads(repo.read("schemas/orders.json"))
    schema["source_id"] = source_id
    repo.write(f"schemas/{source_id}.json", json.dumps(schema, indent=2))


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def test_a_person_sees_the_degraded_source_and_why_finds_sources_and_pages_through_them(
        desired_repo, start_daemon, browser, shots):
    from selenium.webdriver.common.by import By

    without_join(desired_repo)
    add_source(desired_repo, "orders_eu", 600)
    add_source(desired_repo, "orders_us", 600)
    revision = desired_repo.commit_and_push("two more sources")
    running = start_daemon(desired_repo)
    running.daemon.source_health.clock = lambda: time.time() + HOURS_AHEAD

    def judged():
        status = get_json(running.base, "/status")
        sources = {s["source_id"]: s for s in (status.get("health") or {}).get("sources") or []}
        if status.get("revision") != revision or set(sources) != {"orders", "orders_eu", "orders_us"}:
            return None
        return sources if sources["orders"]["health"] == "Degraded" else None

    sources = wait_for(judged, timeout=120, interval=0.5, what="orders Degraded in the health document")
    assert any("SLA breached" in reason for reason in sources["orders"]["reasons"])

    # The overview: every source, the degraded one first with its reason.
    browser.get(running.base + "/ui")
    assert browser.title == f"headwater: {desired_repo.project}"
    rows = browser.find_elements(By.CSS_SELECTOR, "table.sources tbody tr")
    assert [r.get_attribute("data-source") for r in rows][0] == "orders"
    assert {r.get_attribute("data-source") for r in rows} == {"orders", "orders_eu", "orders_us"}
    orders = browser.find_element(By.CSS_SELECTOR, 'tr[data-source="orders"]')
    assert orders.find_element(By.CSS_SELECTOR, ".badge").text == "Degraded"
    reason = orders.find_element(By.CSS_SELECTOR, ".reason").text
    assert reason.startswith("SLA breached:") and "SLA 60m" in reason
    assert "breached" in orders.find_elements(By.TAG_NAME, "td")[3].text
    commit = orders.find_elements(By.TAG_NAME, "td")[5].text
    assert "headwater tests" in commit  # the last change's author
    assert "1 Degraded" in text_of(browser, ".counts")
    shots(browser, "overview")

    # Search: type into the box and submit, as a person would.
    box = browser.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("orders_e")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait_for(lambda: "q=orders_e" in browser.current_url, what="the search page")
    found = [r.get_attribute("data-source") for r in browser.find_elements(By.CSS_SELECTOR, "table.sources tbody tr")]
    assert found == ["orders_eu"]
    assert "1–1 of 1 (of 3)" in text_of(browser, "nav.pages")
    shots(browser, "search")

    # A search for nothing says so.
    browser.get(running.base + "/ui?q=nothing-like-this")
    assert text_of(browser, "p.empty") == "No source matches."

    # Pages of one source, in id order: next, next, and no further.
    browser.get(running.base + "/ui?per=1&sort=id")
    seen = []
    for page in (1, 2, 3):
        rows = browser.find_elements(By.CSS_SELECTOR, "table.sources tbody tr")
        assert len(rows) == 1
        seen.append(rows[0].get_attribute("data-source"))
        assert f"page {page} of 3" in text_of(browser, "nav.pages")
        links = browser.find_elements(By.CSS_SELECTOR, 'nav.pages a[rel="next"]')
        if page < 3:
            links[0].click()
        else:
            assert links == []
    assert seen == ["orders", "orders_eu", "orders_us"]
    shots(browser, "last-page")

    # The health filter.
    browser.get(running.base + "/ui?health=Healthy&sort=id")
    healthy = [r.get_attribute("data-source") for r in browser.find_elements(By.CSS_SELECTOR, "table.sources tbody tr")]
    assert healthy == ["orders_eu", "orders_us"]

    # The source page, reached by its link: reasons, resources with Console links, no drift yet.
    browser.get(running.base + "/ui")
    browser.find_element(By.LINK_TEXT, "orders").click()
    wait_for(lambda: browser.current_url.endswith("/ui/sources/orders"), what="the source page")
    assert text_of(browser, "h1 .source-id") == "orders"
    assert text_of(browser, "h1 .badge") == "Degraded"
    reasons = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "ul.reasons li")]
    assert reasons and reasons[0].startswith("SLA breached:")
    addresses = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "table.resources tbody tr td:first-child")]
    assert "pubsub_subscription.orders-ingest" in addresses
    assert any(a.startswith("bigquery_table.") and a.endswith(".orders") for a in addresses)
    console = browser.find_element(By.XPATH, "//tr[td/code='pubsub_subscription.orders-ingest']//a")
    assert console.get_attribute("href") == (f"https://console.cloud.google.com/cloudpubsub/subscription/detail/"
                                             f"orders-ingest?project={desired_repo.project}")
    assert "Freshness" in text_of(browser, "dl.facts") and "SLA 60m" in text_of(browser, "dl.facts")
    shots(browser, "source")

    # An unknown source: a page that says so (404), not an error.
    browser.get(running.base + "/ui/sources/no-such-source")
    assert text_of(browser, "h1") == "No source no-such-source"


def test_the_source_page_shows_drift_with_the_commit_that_set_the_value(desired_repo, start_daemon, project_id,
                                                                         browser, shots):
    from selenium.webdriver.common.by import By
    from test_daemon_e2e import converged_on, set_ack_deadline_behind_headwaters_back

    platform_commit = desired_repo.repo.head.commit.hexsha  # the commit that wrote platform.yaml
    without_join(desired_repo)
    desired_repo.commit_and_push("orders without its join")
    running = start_daemon(desired_repo)
    wait_for(lambda: converged_on(running.base, desired_repo.repo.head.commit.hexsha), timeout=60, what="convergence")
    set_ack_deadline_behind_headwaters_back(project_id, "orders-ingest", 30)

    def drift_and_health():
        status = get_json(running.base, "/status")
        return status["drift"]["resources"] and (status.get("health") or {}).get("sources")

    wait_for(drift_and_health, timeout=30, what="drift, and a health check (the page's list of sources)")

    browser.get(running.base + "/ui/sources/orders")
    drift = browser.find_element(By.CSS_SELECTOR, "div.drift")
    assert "pubsub_subscription.orders-ingest" in drift.text and "drifted" in drift.text
    cells = [td.text for td in drift.find_elements(By.CSS_SELECTOR, "table.fields tbody td")]
    assert cells[:3] == ["ack_deadline_seconds", "30", "60"]
    assert cells[3].startswith(f"set by {platform_commit[:12]} (headwater tests, ")
    assert re.search(r"platform with one source\) at platform\.yaml:\d+ pubsub\.ack_deadline_seconds$", cells[3])
    # The last plan (the drift pass's) would put it back.
    changes = text_of(browser, "ul.changes")
    assert "update pubsub_subscription.orders-ingest" in changes and "ack_deadline_seconds: 30 → 60" in changes
    shots(browser, "drift")
