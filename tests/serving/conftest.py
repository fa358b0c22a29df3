"""Fixtures of the data API tests: a Gold table and its authorized-style view in the ``api``
dataset on bqemulator (created here, with rows), the spec document that serves it, and the app
under test (FastAPI's TestClient: the real app, in process) with tokens on demand."""

from __future__ import annotations

import datetime as dt
import io
import logging
import secrets as random_secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.api import logs
from serving.api.app import create_app
from serving.api.query import make_client
from serving.api.spec import load_secrets, parse_spec

SCHEMA: list[dict[str, Any]] = [
    {"name": "customer_id", "type": "STRING", "mode": "NULLABLE", "description": "Customer identifier"},
    {"name": "date", "type": "DATE", "mode": "NULLABLE", "description": "Day of ordered_at"},
    {"name": "total_amount", "type": "NUMERIC", "mode": "NULLABLE", "description": "sum(amount)"},
    {"name": "order_count", "type": "INT64", "mode": "NULLABLE", "description": "count(*)"},
    {"name": "last_order_at", "type": "TIMESTAMP", "mode": "NULLABLE"},
    {"name": "customer_email", "type": "STRING", "mode": "NULLABLE"},
    {"name": "score", "type": "FLOAT64", "mode": "NULLABLE"},
    {"name": "vip", "type": "BOOL", "mode": "NULLABLE"},
    {"name": "tags", "type": "STRING", "mode": "REPEATED"},
    {"name": "segment", "type": "RECORD", "mode": "NULLABLE", "fields": [
        {"name": "tier", "type": "STRING", "mode": "NULLABLE"},
        {"name": "since", "type": "DATE", "mode": "NULLABLE"}]},
]
KEY = ["customer_id", "date"]
DAYS = [dt.date(2024, 5, 1) + dt.timedelta(days=i) for i in range(5)]


def make_row(customer: str | None, day: dt.date, n: int) -> dict[str, Any]:
    return {
        "customer_id": customer, "date": day.isoformat(), "total_amount": f"{n * 7 % 1000}.{n % 100:02d}",
        "order_count": n % 9, "last_order_at": f"{day.isoformat()}T{n % 24:02d}:{n % 60:02d}:00Z",
        "customer_email": f"person{n}@example.com" if customer else None, "score": n / 8,
        "vip": n % 3 == 0, "tags": [f"t{n % 4}"] * (n % 3),
        "segment": {"tier": ["gold", "silver", None][n % 3], "since": f"2023-01-0{1 + n % 9}"},
    }


def sample_rows() -> list[dict[str, Any]]:
    """58 rows, unique on (customer_id, date): 10 customers and a customer id with a comma over 5
    days, and NULL customer ids on 3 days (NULLs sort first)."""
    rows, n = [], 0
    for day in DAYS:
        for customer in [f"C{i:02d}" for i in range(10)] + ["C,7"]:
            n += 1
            rows.append(make_row(customer, day, n))
    for day in DAYS[:3]:
        n += 1
        rows.append(make_row(None, day, n))
    return rows


@dataclass
class Harness:
    project: str
    view: str
    table: str
    client: TestClient
    document: dict[str, Any]
    environ: dict[str, str]
    log: io.StringIO
    secrets: dict[str, str] = field(default_factory=dict)

    def token(self, client_id: str = "acme", scope: str | None = None) -> str:
        data = {"grant_type": "client_credentials", **({"scope": scope} if scope is not None else {})}
        answer = self.client.post("/oauth/token", data=data, auth=(client_id, self.secrets[client_id]))
        assert answer.status_code == 200, answer.text
        return answer.json()["access_token"]

    def headers(self, client_id: str = "acme", scope: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(client_id, scope)}"}

    def insert(self, rows: list[dict[str, Any]]) -> None:
        errors = make_client(self.project).insert_rows_json(self.table, rows, retry=None, timeout=60)
        assert not errors, errors

    def view_rows(self) -> list[dict[str, Any]]:
        """The whole view, as the API encodes it (for comparisons)."""
        from serving.api import values

        fields = parse_spec(self.document).sources[0].fields
        rows = make_client(self.project).query_and_wait(f"SELECT * FROM `{self.view}`", retry=None, job_retry=None)
        return [values.encode_row(fields, dict(r.items())) for r in rows]


def api_document(project: str, view: str, **overrides: Any) -> dict[str, Any]:
    source = {"name": "orders", "description": "Gold aggregate of orders: orders_daily", "view": view, "key": KEY,
              "fields": SCHEMA, "partition_field": "date", "clustering_fields": ["customer_id"],
              "pii": ["customer_email"]}
    source.update(overrides.pop("source", {}))
    document = {
        "version": 1, "kind": "data_api", "project": project, "sources": [source],
        "clients": [
            {"client_id": "acme", "secret_env": "HEADWATER_API_CLIENT_ACME", "scopes": ["orders:read"]},
            {"client_id": "auditor", "secret_env": "HEADWATER_API_CLIENT_AUDITOR",
             "scopes": ["orders:read", "orders:pii"]},
            {"client_id": "stranger", "secret_env": "HEADWATER_API_CLIENT_STRANGER", "scopes": []},
            {"client_id": "tiny", "secret_env": "HEADWATER_API_CLIENT_TINY", "scopes": ["orders:read"],
             "rate_limit": {"requests": 3, "per_seconds": 3600}},
        ],
        "token": {"issuer": "http://data-api.test", "ttl_seconds": 600},
    }
    document.update(overrides)
    return document


def api_environ(document: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(environment, {client id: secret}) with fresh random secrets."""
    environ = {"HEADWATER_API_SIGNING_KEY": random_secrets.token_hex(32)}
    by_client = {}
    for client in document["clients"]:
        by_client[client["client_id"]] = environ[client["secret_env"]] = random_secrets.token_urlsafe(24)
    return environ, by_client


def create_view(project: str, rows: list[dict[str, Any]]) -> tuple[str, str]:
    from google.cloud import bigquery

    client = make_client(project)
    for dataset in ("gold", "api"):
        client.create_dataset(f"{project}.{dataset}", exists_ok=True, retry=None, timeout=60)
    table = bigquery.Table(f"{project}.gold.orders_daily",
                           schema=[bigquery.SchemaField.from_api_repr(dict(f)) for f in SCHEMA])
    table.time_partitioning = bigquery.TimePartitioning(field="date")
    table.clustering_fields = ["customer_id"]
    client.create_table(table, retry=None, timeout=60)
    view = bigquery.Table(f"{project}.api.orders")
    view.view_query = f"SELECT * FROM `{project}.gold.orders_daily`"
    client.create_table(view, retry=None, timeout=60)
    if rows:
        errors = client.insert_rows_json(f"{project}.gold.orders_daily", rows, retry=None, timeout=60)
        assert not errors, errors
    return f"{project}.gold.orders_daily", f"{project}.api.orders"


@pytest.fixture
def api(emulators, project_id: str) -> Iterator[Harness]:
    table, view = create_view(project_id, sample_rows())
    document = api_document(project_id, view)
    environ, by_client = api_environ(document)
    spec = parse_spec(document)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonLines())
    root = logging.getLogger()
    root.addHandler(handler)
    # The test's own HTTP client (httpx, in TestClient) logs every URL it requests, cursors
    # included: that is the client's log, not the service's.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        with TestClient(create_app(spec, load_secrets(spec, environ))) as client:
            yield Harness(project_id, view, table, client, document, environ, stream, by_client)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
