"""End to end: the three ingestion patterns that acquire data, from outside the platform to Silver.

One platform on the emulators, applied by the CLI, with the jobs and connectors really running
on the local runner (the stand-in for Dataflow and Cloud Run) and the file watcher standing in
for the landing bucket's notification:

* ``payments`` (``streaming_api``, ``rest_api``) polls a real local HTTP API that pages with a
  cursor, filters by an incremental lower bound, and answers some requests with 429
  (``Retry-After``) and others with 500;
* ``shipments`` (``streaming_api``, ``webhook``) receives Stripe-style signed deliveries;
* ``orders`` (``batch_file``) reads the files landed in its prefix when their event arrives.

Everything downstream of the connector or the event (topic, subscription, the Beam pipeline,
Bronze, Silver, dead letters) is the code path that runs on GCP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml, isolate_platform

from providers import bigquery_data, pubsub_data, stop_local, storage_data
from providers.local_notifications import event_message
from providers.localrunner import load_records
from reconciler import cli
from reconciler.demo import sign_delivery
from reconciler.demo_api import SampleApi
from reconciler.load import load_repo

API_TOKEN = "tok_e2e_0123456789"
WEBHOOK_KEY = "whsec_e2e_abcdef"
WAIT_S = 90.0


def charge(n: int, day: int = 25) -> dict:
    return {"charge_id": f"ch_{n:03d}", "customer_id": "C-01", "amount": float(n), "currency": "EUR",
            "status": "succeeded", "created_at": f"2026-11-{day}T{n % 24:02d}:00:00Z"}


def wait_for(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def platform(emulators, tmp_path_factory):
    """The example's orders, payments and shipments on a fresh project, applied, running."""
    tmp = tmp_path_factory.mktemp("connectors")
    project, unique = f"hw-e2e-{os.getpid() % 100000}-c", f"hw-{os.getpid() % 100000}-conn"
    repo = copy_example(tmp, sources=["orders", "payments", "shipments"])
    isolate_platform(repo, project, unique)
    api = SampleApi([charge(n) for n in range(1, 24)], token=API_TOKEN, path="/v1/charges", page_size=4,
                    faults={"429_every": 5, "500_every": 7}).start()
    edit_yaml(repo / "connectors" / "payments.yaml",
              lambda d: d["ingestion"].update(api_endpoint=api.url, poll_interval="10s"))
    secrets = tmp / "secrets"
    secrets.mkdir()
    (secrets / "payments-api-key").write_text(API_TOKEN)
    (secrets / "shipments-webhook-key").write_text(WEBHOOK_KEY)
    for other in ("data-api-signing-key",):  # what the example's other services mount
        (secrets / other).write_text("0123456789abcdef" * 4)  # a 64-hex-digit signing key
    saved = {name: os.environ.get(name) for name in ("HEADWATER_LOCAL_JOBS", "HEADWATER_SECRETS_DIR")}
    os.environ.update(HEADWATER_LOCAL_JOBS="run", HEADWATER_SECRETS_DIR=str(secrets))
    state_dir = Path(os.environ["HEADWATER_STATE_DIR"])
    try:
        assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 0
        yield {"repo": repo, "project": project, "api": api, "state_dir": state_dir,
               "state": load_repo(repo)}
    finally:
        stop_local(state_dir, project)
        api.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def silver_ids(project: str, table: str, key: str) -> list[str]:
    return [r[key] for r in bigquery_data.query(project, f"SELECT {key} FROM `{project}.silver.{table}`")]


def record_of(state_dir: Path, project: str, name: str):
    return next(r for r in load_records(state_dir) if r.project == project and r.name == name)


def test_api_records_reach_silver_once_through_429s_500s_and_a_killed_connector(platform, capsys):
    project, api = platform["project"], platform["api"]
    expected = {f"ch_{n:03d}" for n in range(1, 24)}
    wait_for(lambda: set(silver_ids(project, "payments", "charge_id")) == expected, "the API's 23 charges in Silver")
    assert api.refused.get(429, 0) > 0 and api.refused.get(500, 0) > 0, "the faults were exercised"

    # More data arrives while the API turns slow; the connector is killed in the middle of a poll.
    api.faults = {"delay_ms": 300}
    api.add([charge(n, day=26) for n in range(24, 40)])
    seen = api.requests
    wait_for(lambda: api.requests > seen + 1, "a poll in progress", timeout=30)
    connector = record_of(platform["state_dir"], project, "payments-connector")
    os.killpg(connector.pid, signal.SIGKILL)

    # The next apply finds the service gone (a crashed instance) and starts it again.
    assert cli.main(["apply", "--repo", str(platform["repo"]), "--auto-approve"]) == 0
    captured = capsys.readouterr()
    assert "cloud_run_service.payments-connector" in captured.out
    # apply says where the local connectors listen: a webhook's URL is there.
    assert re.search(r"local connector shipments-connector: http://127\.0\.0\.1:\d+/hooks/shipments", captured.err)
    expected |= {f"ch_{n:03d}" for n in range(24, 40)}
    ids = wait_for(lambda: (lambda got: got if set(got) == expected else None)(
        silver_ids(project, "payments", "charge_id")), "all 39 charges in Silver")
    assert sorted(ids) == sorted(expected), "every record once: none lost, none twice"


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_signed_deliveries_reach_silver_and_bad_ones_publish_nothing(platform):
    project, state_dir = platform["project"], platform["state_dir"]
    signature = next(s for s in platform["state"].sources if s.source_id == "shipments").connector.ingestion.signature
    port = record_of(state_dir, project, "shipments-connector").port
    url = f"http://127.0.0.1:{port}/hooks/shipments"
    events = [{"event_id": f"ev_{n}", "shipment_id": "shp_1", "status": "in_transit",
               "occurred_at": f"2026-11-26T{n:02d}:00:00Z"} for n in range(1, 6)]
    for n, event in enumerate(events):
        body = json.dumps(event).encode()
        assert post(url, body, {signature.header: sign_delivery(signature, WEBHOOK_KEY, body, time.time()),
                                "X-Delivery-Id": f"d-{n}"}) == 200
    body = json.dumps({**events[0], "event_id": "ev_bad"}).encode()
    refused = {
        "forged": post(url, body, {signature.header: sign_delivery(signature, "wrong-key", body, time.time())}),
        "unsigned": post(url, body, {}),
        "replayed": post(url, body, {signature.header: sign_delivery(signature, WEBHOOK_KEY, body, time.time() - 3600)}),
        "oversized": post(url, b'{"x": "' + b"a" * 70000 + b'"}', {
            signature.header: sign_delivery(signature, WEBHOOK_KEY, b"{}", time.time())}),
    }
    assert refused == {"forged": 401, "unsigned": 401, "replayed": 401, "oversized": 413}

    wait_for(lambda: set(silver_ids(project, "shipments", "event_id")) == {e["event_id"] for e in events},
             "the 5 deliveries in Silver")
    time.sleep(3)  # anything wrongly published would have reached Bronze by now
    assert bigquery_data.count_rows(project, f"{project}.bronze.shipments_raw") == len(events), \
        "refused deliveries published nothing"


def test_a_landed_file_reaches_silver_by_its_event_once_and_again_when_landed_anew(platform):
    project, state_dir = platform["project"], platform["state_dir"]
    landing = next(r.spec["parameters"]["input_pattern"] for r in _jobs(platform) if r.name == "orders-sweep")
    # The sweep's first run (at start, on the local runner) is over: its next is at 03:00 UTC,
    # so whatever arrives now arrives by the file's event.
    wait_for(lambda: _sweep_idle(state_dir, project), "the sweep's first run to end")

    def order(n: int) -> dict:
        return {"order_id": f"O-{n}", "customer_id": "C-01", "customer_email": "a@example.com", "amount": 10.0,
                "currency": "EUR", "ordered_at": "2026-11-26T08:00:00Z", "items": []}

    import gzip

    first = b"\n".join(json.dumps(order(n)).encode() for n in (1, 2, 3))
    storage_data.upload(project, landing + "drop.json.gz", gzip.compress(first))
    landed = _object(project, landing + "drop.json.gz")  # before the job moves it to Bronze
    wait_for(lambda: bigquery_data.count_rows(project, f"{project}.silver.orders") == 3, "3 orders in Silver")

    # The same event delivered again (Pub/Sub is at-least-once): nothing more is ingested.
    notification = next(r for r in _resources(platform) if r.kind == "storage_notification")
    data, attributes = event_message(notification.spec, notification.labels, "OBJECT_FINALIZE", landed["bucket"],
                                     landed["name"], int(landed["generation"]), landed)
    pubsub_data.publish(project, "orders", [data], **attributes)
    # The same name landed again is a new generation: a new file, ingested.
    second = b"\n".join(json.dumps(order(n)).encode() for n in (4, 5))
    storage_data.upload(project, landing + "drop.json.gz", gzip.compress(second))
    wait_for(lambda: bigquery_data.count_rows(project, f"{project}.silver.orders") == 5, "5 orders in Silver")
    time.sleep(5)
    assert bigquery_data.count_rows(project, f"{project}.bronze.orders_raw") == 5, "each generation read once"


def _resources(platform):
    from reconciler.compile import compile_resources

    return compile_resources(platform["state"])


def _jobs(platform):
    return [r for r in _resources(platform) if r.kind == "dataflow_job"]


def _object(project: str, uri: str) -> dict:
    from google.cloud import storage

    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return dict(storage.Client(project=project).bucket(bucket).get_blob(name)._properties)


def _sweep_idle(state_dir: Path, project: str) -> bool:
    from providers.localrunner import batch_status

    status = batch_status(state_dir, project, "orders-sweep")
    return status["finished"] >= 1 and not status["running"]

