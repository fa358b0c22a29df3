"""The data API as compile would deploy it (docs/data-api-contract.md): a ``cloud_run_service``
whose ``connector`` key holds the API's document, run by the local runner (the Cloud Run
stand-in) as a real ``python -m serving.api`` process on loopback, with its secrets read from
the local secrets directory. Over real HTTP: a token, pages to the end, a 401; the process's log
holds the usage lines and no secret, token or filter value."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from providers.localrunner import LocalRunnerProvider
from reconciler.resources import Kind, Resource
from tests.serving.conftest import api_document, create_view, sample_rows

SECRET_IDS = {"HEADWATER_API_SIGNING_KEY": "data-api-signing-key", "HEADWATER_API_CLIENT_ACME": "data-api-client-acme",
              "HEADWATER_API_CLIENT_AUDITOR": "data-api-client-auditor",
              "HEADWATER_API_CLIENT_STRANGER": "data-api-client-stranger",
              "HEADWATER_API_CLIENT_TINY": "data-api-client-tiny"}


def data_api_service(document: dict) -> Resource:
    return Resource(Kind.CLOUD_RUN_SERVICE, "data-api", {
        "image": "europe-west1-docker.pkg.dev/p/headwater/api:0.1.0", "command": ["python", "-m", "serving.api"],
        "connector": document, "secrets": dict(SECRET_IDS), "service_account": None, "min_instances": 0,
        "max_instances": 4, "ingress": "all", "cpu_always_allocated": False, "public": True,
    }, {"managed-by": "headwater"})


def test_the_local_runner_serves_the_api_as_a_cloud_run_service(emulators, project_id: str, tmp_path: Path) -> None:
    import secrets as random

    _, view = create_view(project_id, sample_rows())
    document = api_document(project_id, view)
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    values = {}
    for variable, secret_id in SECRET_IDS.items():
        values[variable] = random.token_hex(32)
        (secrets_dir / secret_id).write_text(values[variable])
    runner = LocalRunnerProvider(project_id, tmp_path / "state", run_jobs=True, secrets_dir=secrets_dir)
    service = data_api_service(document)
    runner.create(service)
    try:
        url = runner.service_url("data-api")
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=30) as http:
            token = http.post("/oauth/token", data={"grant_type": "client_credentials"},
                              auth=("acme", values["HEADWATER_API_CLIENT_ACME"])).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            rows, cursor = [], None
            while True:
                params = {"limit": 25, "date.gte": "2024-05-01", **({"cursor": cursor} if cursor else {})}
                page = http.get("/api/v1/orders", params=params, headers=headers).json()
                rows += page["data"]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            assert len(rows) == 58 == len({(r["customer_id"], r["date"]) for r in rows})
            assert http.get("/api/v1/orders").status_code == 401
            assert http.get("/openapi.json").json()["paths"]["/api/v1/orders"]["get"]["security"]
        record = runner.service_record("data-api")
        log_text = Path(record.log).read_text()
        usage = [json.loads(line) for line in log_text.splitlines()
                 if line.startswith("{") and '"api_request"' in line]
        assert {u["client_id"] for u in usage if u["status"] == 200} == {"acme"}
        assert any(u["status"] == 401 for u in usage)
        for secret in [*values.values(), token, token.split(".")[2]]:
            assert secret not in log_text
        assert "2024-05-01" not in "".join(json.dumps(u) for u in usage), "filter values are not logged"
        assert runner.observe(Kind.CLOUD_RUN_SERVICE)[0].name == "data-api"
    finally:
        runner.delete(service)
