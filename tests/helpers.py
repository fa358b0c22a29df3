"""Small helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from reconciler.yamlsrc import load_yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = PROJECT_ROOT / "desired_state"


def copy_example(dest: Path, sources: list[str] | None = None) -> Path:
    """A copy of desired_state/ under ``dest``, optionally trimmed to some sources."""
    repo = dest / "repo"
    shutil.copytree(EXAMPLE, repo, ignore=shutil.ignore_patterns("sample-data"))
    if sources is not None:
        for path in (repo / "connectors").glob("*.yaml"):
            if path.stem not in sources:
                path.unlink()
    return repo


def edit_yaml(path: Path, change) -> None:
    """Load a YAML file, let ``change(data)`` mutate it, write it back."""
    data, _ = load_yaml(path)  # our loader: keys stay strings (`on:` is not YAML 1.1's true)
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def connector(repo: Path, sid: str) -> Path:
    return repo / "connectors" / f"{sid}.yaml"


def clone(repo: Path, sid: str, new: str) -> None:
    """A copy of source ``sid`` as ``new`` (its Gold tables and views renamed, its own topic)."""
    shutil.copy(connector(repo, sid), connector(repo, new))

    schema = json.loads((repo / "schemas" / f"{sid}.json").read_text())
    schema["source_id"] = new
    (repo / "schemas" / f"{new}.json").write_text(json.dumps(schema))

    def change(data):
        data["source_id"] = new
        data["schema"]["file"] = f"schemas/{new}.json"
        for step in (data.get("processing") or {}).get("silver_to_gold") or []:
            if "aggregate" in step:
                step["aggregate"]["table"] = f"{new}_{step['aggregate'].get('table') or 'summary'}"
        reporting = (data.get("serving") or {}).get("reporting")
        if isinstance(reporting, dict):
            for view in reporting.get("views") or []:
                old_table = next((s["aggregate"]["table"] for s in data["processing"]["silver_to_gold"]
                                  if "aggregate" in s), None)
                view["name"] = f"{new}_{view['name']}"
                if old_table:
                    view["sql"] = view["sql"].replace(old_table.split("_", 1)[-1], old_table)
            for rule in reporting.get("row_access") or []:
                rule["table"] = f"{new}_{rule['table']}"
        ingestion = data["ingestion"]
        for key in ("location", "destination", "pubsub_topic"):
            if key in ingestion:
                ingestion[key] = ingestion[key].rstrip("/") + f"-{new}" + ("/" if ingestion[key].endswith("/") else "")
        if "webhook_path" in ingestion:
            ingestion["webhook_path"] = f"/{new}"
    edit_yaml(connector(repo, new), change)


def isolate_platform(repo: Path, project: str, prefix: str) -> None:
    """Point the platform at a fresh project, with unique bucket names and environment (the
    Storage emulator has no projects, so buckets must not collide between tests)."""

    def change(data):
        data["project"] = project
        # The Storage emulator lists every bucket of every test: a unique environment keeps
        # other tests' buckets out of this platform (they are another platform's resources).
        data["environment"] = prefix
        for zone in ("landing", "bronze", "silver"):
            data.setdefault("zones", {}).setdefault(zone, {})
            data["zones"][zone] = {**(data["zones"][zone] or {}), "bucket": f"{prefix}-{zone}"}

    edit_yaml(repo / "platform.yaml", change)
    seed_reference_tables(project)
    for connector in (repo / "connectors").glob("*.yaml"):
        def drop_location(data):
            data["ingestion"].pop("location", None)

        edit_yaml(connector, drop_location)


def seed_reference_tables(project: str) -> None:
    """On the emulators, the tables the example's gold joins read and no source declares
    (sample-data/reference/, as the demo does): a plan refuses a join to a table that does not exist."""
    import json
    import os

    if not os.environ.get("BIGQUERY_EMULATOR_HOST"):
        return
    from providers import bigquery_data

    for path in sorted((EXAMPLE / "sample-data" / "reference").glob("*.json")):
        ref = json.loads(path.read_text())
        bigquery_data.ensure_table_with_rows(project, f"{project}.{ref['table']}", ref["schema"], ref["rows"])


# Every secret the example platform names, with a value of the shape its runtime accepts.
EXAMPLE_SECRETS = {
    "payments-api-key": "not-a-real-credential",
    "shipments-webhook-key": "not-a-real-credential",
    "shop-postgres-password": "not-a-real-password",
    "data-api-signing-key": "0123456789abcdef" * 4,  # the data API wants at least 32 bytes
    "data-api-client-partner-acme": "not-a-real-client-secret",
}


def write_local_secrets(*secret_ids: str, value: str | None = None) -> None:
    """Create secrets where the local runner reads them (``$HEADWATER_SECRETS_DIR``, else the state
    dir's ``secrets/``, see tests/conftest.py): with the emulators, a plan checks that every secret
    it mounts exists. No ids: all of the example's (`EXAMPLE_SECRETS`)."""
    import os

    directory = Path(os.environ.get("HEADWATER_SECRETS_DIR") or Path(os.environ["HEADWATER_STATE_DIR"]) / "secrets")
    directory.mkdir(parents=True, exist_ok=True)
    for secret_id in secret_ids or tuple(EXAMPLE_SECRETS):
        (directory / secret_id).write_text(value or EXAMPLE_SECRETS.get(secret_id, "not-a-real-credential"))
