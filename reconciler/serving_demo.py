"""The demo's serving step (issue 12): the reporting views, the data API and the feature tables,
once the sample data has reached Gold.

`prepare` runs before the apply, on the demo's copy of the repo: it declares a data API client,
``partner-acme``, with the read scope of every source that serves the API (the example declares
none: see desired_state/platform.yaml), and writes random values for the API's signing key and
the client's secret into the local secrets directory (what the local stand-in for Cloud Run
mounts). `show` runs after the Gold jobs: the feature jobs once, then what each serving path
returns, and the curl lines that fetch Gold rows from the API running on this machine.
"""

from __future__ import annotations

import secrets as random_secrets
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.compile import compile_resources
from reconciler.resources import Kind
from reconciler.serving import API_SERVICE, LAST_EVENT, REPORTING, client_env
from reconciler.yamlsrc import load_yaml

DEMO_CLIENT = "partner-acme"
RUN_WAIT_S = 240.0


def prepare(copy: Path, secrets_dir: Path, secrets: dict[str, str]) -> None:
    """Declare the demo's API client in the copy, and the API's secrets in ``secrets_dir``."""
    import yaml

    from reconciler.load import load_repo

    state = load_repo(copy)
    served = [s.source_id for s in state.sources if s.connector.serving.third_party_api]
    if not served:
        return
    platform_file = copy / "platform.yaml"
    data, _ = load_yaml(platform_file)
    api = data.setdefault("api", {}) or {}
    data["api"] = api
    if not api.get("clients"):
        api["clients"] = {DEMO_CLIENT: {"secret_name": f"data-api-client-{DEMO_CLIENT}",
                                        "scopes": [f"{sid}:read" for sid in served]}}
        platform_file.write_text(yaml.safe_dump(data, sort_keys=False))
    state = load_repo(copy)
    service = next(r for r in compile_resources(state) if r.address == f"cloud_run_service.{API_SERVICE}")
    for secret_id in service.spec["secrets"].values():
        path = secrets_dir / secret_id
        if not path.exists():
            path.write_text(random_secrets.token_hex(32))
            path.chmod(0o600)
        secrets[secret_id] = path.read_text().strip()


def show(state: Any, runner: Any, say: Callable[[str], None], secrets: dict[str, str]) -> list[str]:
    """Run the feature jobs, then read each serving path; the lines to print."""
    import httpx

    from providers import bigquery_data

    project = state.platform.project
    resources = compile_resources(state)
    lines: list[str] = []
    for job in (r for r in resources if r.kind == Kind.DATAFLOW_JOB and "features" in r.spec["pipeline"]):
        status = runner.wait_for_run(job.name, runner.run_now(job.name), RUN_WAIT_S)
        table = job.spec["pipeline"]["features"]["table"]
        rows = bigquery_data.count_rows(project, table)
        late = bigquery_data.query(project, f"SELECT COUNT(*) AS n FROM `{table}` "
                                            f"WHERE `{LAST_EVENT}` >= feature_timestamp")[0]["n"]
        lines.append(f"{job.source_id}: features {table.rsplit('.', 1)[-1]} {rows} rows "
                     f"({late} using data after their feature_timestamp)"
                     + ("" if status["last_exit_code"] == 0 else f" - the run failed, log: {runner.record(job.name).log}"))
    for view in (r for r in resources if r.kind in (Kind.BIGQUERY_VIEW, Kind.BIGQUERY_MATERIALIZED_VIEW)
                 and r.name.startswith(f"{REPORTING}.")):
        n = bigquery_data.count_rows(project, f"{project}.{view.name}")
        lines.append(f"{view.source_id}: reporting view {view.name} {n} rows")
    service = next((r for r in resources if r.address == f"cloud_run_service.{API_SERVICE}"), None)
    if service is None or not service.spec["connector"]["clients"]:
        return lines
    client = service.spec["connector"]["clients"][0]
    secret = secrets.get(service.spec["secrets"][client_env(client["client_id"])], "")
    url = runner.service_url(API_SERVICE)
    first = service.spec["connector"]["sources"][0]["name"]
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            token = http.post("/oauth/token", data={"grant_type": "client_credentials"},
                              auth=(client["client_id"], secret)).json()["access_token"]
            pages, rows, cursor = 0, 0, None
            while True:
                page = http.get(f"/api/v1/{first}", params={"limit": 5, **({"cursor": cursor} if cursor else {})},
                                headers={"Authorization": f"Bearer {token}"}).json()
                pages, rows, cursor = pages + 1, rows + page["count"], page["next_cursor"]
                if not cursor:
                    break
        lines.append(f"data API at {url}: {first} {rows} rows in {pages} pages of 5 with a token for "
                     f"{client['client_id']}")
    except (httpx.HTTPError, KeyError) as exc:
        lines.append(f"data API at {url}: not answering as expected ({exc})")
    secret_file = Path(state.root).parent / "secrets" / service.spec["secrets"][client_env(client["client_id"])]
    lines.append("Fetch Gold rows from the data API yourself (with --keep):")
    lines.append(f"  TOKEN=$(curl -s -u {client['client_id']}:$(cat {shlex.quote(str(secret_file))}) "
                 f"-d grant_type=client_credentials {url}/oauth/token | python3 -c 'import json,sys; "
                 "print(json.load(sys.stdin)[\"access_token\"])')")
    lines.append(f"  curl -s -H \"Authorization: Bearer $TOKEN\" '{url}/api/v1/{first}?limit=5'")
    return lines
