"""The serving layer (issue 12) on the emulators.

* The provider: a view authorized on a dataset whose access list someone else also edits keeps
  their entries (merged, never replaced; terraform-provider-google#11218), a query change is
  applied in place, a delete removes only its own entry; the emulator's materialized-view
  stand-in and row access policies round-trip (create, observe, update, delete).
* End to end: the orders source with reporting, the data API and ML features, applied; Silver
  rows land, the Gold and feature queries run as their jobs run them; the reporting view returns
  the Gold rows; the data API - a real process on the local runner, the Cloud Run stand-in -
  returns the same rows page by page with a token (all pages together equal the view, none twice;
  401 without a token); and no feature row uses data after its feature_timestamp (each recomputed
  here from Silver).
"""

from __future__ import annotations

import datetime as dt
import secrets as random
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from helpers import copy_example, edit_yaml, isolate_platform

from providers.bigquery import make_client
from providers.bigquery_views import BigQueryViewProvider
from reconciler.compile import compile_resources
from reconciler.engine import Engine, plan_options
from reconciler.load import load_repo
from reconciler.plan import Action
from reconciler.resources import Kind, Resource

LABELS = {"managed-by": "headwater", "headwater-platform": "t"}


def _gold(project: str) -> None:
    from google.cloud import bigquery

    client = make_client(project)
    for dataset in ("gold", "reporting"):
        ds = bigquery.Dataset(f"{project}.{dataset}")
        ds.labels = {**LABELS, "headwater-zone": dataset}
        client.create_dataset(ds, retry=None, timeout=60)
    table = bigquery.Table(f"{project}.gold.t", schema=[bigquery.SchemaField("k", "STRING"),
                                                        bigquery.SchemaField("n", "INT64")])
    table.labels = dict(LABELS)
    client.create_table(table, retry=None, timeout=60)
    client.query(f"INSERT INTO `{project}.gold.t` VALUES ('a', 1), ('b', 2)").result()


def test_authorized_views_merge_into_the_access_list_and_never_drop_others(emulators, project_id):
    from google.cloud import bigquery

    _gold(project_id)
    client = make_client(project_id)
    gold = client.get_dataset(f"{project_id}.gold")
    gold.access_entries = [*gold.access_entries, bigquery.AccessEntry("READER", "userByEmail", "ana@example.com")]
    client.update_dataset(gold, ["access_entries"], retry=None, timeout=60)
    provider = BigQueryViewProvider(project_id, "EU")
    view = Resource(Kind.BIGQUERY_VIEW, "reporting.v", {"query": f"SELECT k, n FROM `{project_id}.gold.t`",
                                                         "description": "d", "authorized_on": ["gold"]}, LABELS)
    provider.create(view)
    (live,) = provider.observe(Kind.BIGQUERY_VIEW)
    assert live.spec == view.spec and live.labels == LABELS
    entries = client.get_dataset(f"{project_id}.gold").access_entries
    assert {(e.entity_type, str(e.entity_id)) for e in entries} >= {
        ("userByEmail", "ana@example.com"),
        ("view", str({"projectId": project_id, "datasetId": "reporting", "tableId": "v"}))}
    rows = list(client.query(f"SELECT * FROM `{project_id}.reporting.v` ORDER BY k").result())
    assert [(r.k, r.n) for r in rows] == [("a", 1), ("b", 2)]

    changed = Resource(view.kind, view.name, {**view.spec, "query": f"SELECT k FROM `{project_id}.gold.t`"}, LABELS)
    provider.update(changed, ["query"])
    assert provider.observe(Kind.BIGQUERY_VIEW)[0].spec["query"] == changed.spec["query"]
    provider.delete(changed)
    entries = client.get_dataset(f"{project_id}.gold").access_entries
    assert [(e.entity_type, e.entity_id) for e in entries] == [("userByEmail", "ana@example.com")], \
        "only headwater's own entry goes"
    assert provider.observe(Kind.BIGQUERY_VIEW) == []


def test_materialized_view_stand_in_and_row_access_policies_round_trip(emulators, project_id):
    _gold(project_id)
    provider = BigQueryViewProvider(project_id, "EU")
    mv = Resource(Kind.BIGQUERY_MATERIALIZED_VIEW, "reporting.m",
                  {"query": f"SELECT k, SUM(n) AS n FROM `{project_id}.gold.t` GROUP BY k", "enable_refresh": True,
                   "refresh_interval_ms": 1_800_000, "max_staleness_s": None, "time_partitioning": None,
                   "clustering_fields": None, "description": "m"}, LABELS)
    provider.create(mv)
    (live,) = provider.observe(Kind.BIGQUERY_MATERIALIZED_VIEW)
    assert live.spec["query"] == mv.spec["query"] and live.labels == LABELS
    assert "$unobservable" in live.spec["refresh_interval_ms"], "EMULATOR DEPARTURE: a logical view plays it"
    assert provider.observe(Kind.BIGQUERY_VIEW) == [], "the stand-in is not observed as a plain view"

    policy = Resource(Kind.BIGQUERY_ROW_ACCESS_POLICY, "gold.t.only_a",
                      {"table": "gold.t", "grantees": ["group:a@example.com"], "filter": "k = 'a'"}, LABELS)
    provider.create(policy)
    (live,) = provider.observe(Kind.BIGQUERY_ROW_ACCESS_POLICY)
    assert (live.address, live.spec) == (policy.address, policy.spec)
    assert live.labels["managed-by"] == "headwater"
    changed = Resource(policy.kind, policy.name, {**policy.spec, "filter": "k = 'b'"}, LABELS)
    provider.update(changed, ["filter"])  # EMULATOR DEPARTURE: DROP + CREATE (no CREATE OR REPLACE)
    assert provider.observe(Kind.BIGQUERY_ROW_ACCESS_POLICY)[0].spec["filter"] == "k = 'b'"
    provider.delete(changed)
    provider.delete(changed)  # already gone: fine
    assert provider.observe(Kind.BIGQUERY_ROW_ACCESS_POLICY) == []


# --------------------------------------------------------------------------- end to end


ORDERS = [  # customer, amount, ordered_at
    ("C-1", "10.00", "2026-11-01T10:00:00Z"), ("C-1", "5.00", "2026-11-03T23:59:59Z"),
    ("C-1", "7.50", "2026-11-20T08:00:00Z"), ("C-2", "3.00", "2026-11-03T12:00:00Z"),
    ("C-2", "4.00", "2026-11-04T00:00:00Z"), ("C-3", "1.00", "2026-08-01T00:00:00Z"),
    ("C-3", "2.00", "2026-11-02T00:00:00Z"),
]


@pytest.fixture
def served_repo(tmp_path: Path, project_id: str, unique: str) -> Path:
    repo = copy_example(tmp_path, sources=["orders"])
    isolate_platform(repo, project_id, unique)

    def only_the_aggregate(data):
        data["processing"]["silver_to_gold"] = [s for s in data["processing"]["silver_to_gold"] if "aggregate" in s]

    edit_yaml(repo / "connectors" / "orders.yaml", only_the_aggregate)
    edit_yaml(repo / "platform.yaml", lambda d: d["api"].update(
        clients={"acme": {"secret_name": "api-client-acme", "scopes": ["orders:read"]}}))
    return repo


def _run_query_job(project: str, pipeline: dict) -> None:
    """What the bigquery_to_bigquery template does on a run (its DoFn, in process)."""
    from beam.bigquery_to_bigquery.pipeline import RunGoldQuery
    from beam.common.features import compile_features_sql
    from beam.common.gold import compile_gold_sql
    from beam.common.spec import parse_spec

    spec = parse_spec(pipeline)
    if spec.features is not None:
        sql, table = compile_features_sql(spec.table_ref(spec.silver_table), spec.features), spec.features.table
    else:
        sql, table = compile_gold_sql(spec), spec.table_ref(spec.gold.table)
    fn = RunGoldQuery(project, table)
    fn.setup()
    list(fn.process(sql))


def test_reporting_view_data_api_and_point_in_time_features(emulators, served_repo, project_id, tmp_path):
    from providers import build_providers
    from providers.localrunner import LocalRunnerProvider

    state = load_repo(served_repo)
    engine = Engine(build_providers(project_id, state.platform.region, runner="local", state_dir=tmp_path / "state",
                                    platform=state.platform), check_references=False)
    result = engine.apply(engine.plan(state, plan_options(state)))
    assert result.ok, result.summary()
    again = engine.plan(state, plan_options(state))
    assert {c.action for c in again.changes} == {Action.NOOP}, [c.address for c in again.changes if c.action != "no-op"]

    client = make_client(project_id)
    rows = [{"order_id": f"O-{i}", "customer_id": c, "customer_email": "x@example.com", "amount": a,
             "currency": "EUR", "ordered_at": t, "_ingested_at": t} for i, (c, a, t) in enumerate(ORDERS)]
    values = ", ".join(f"('{r['order_id']}', '{r['customer_id']}', '{r['customer_email']}', NUMERIC '{r['amount']}', "
                       f"'EUR', TIMESTAMP '{r['ordered_at']}', TIMESTAMP '{r['_ingested_at']}')" for r in rows)
    client.query(f"INSERT INTO `{project_id}.silver.orders` (order_id, customer_id, customer_email, amount, currency, "
                 f"ordered_at, _ingested_at) VALUES {values}").result()
    resources = {r.name: r for r in compile_resources(state)}
    _run_query_job(project_id, resources["orders-gold-orders-daily"].spec["pipeline"])
    _run_query_job(project_id, resources["orders-features"].spec["pipeline"])

    def select(sql: str) -> list[dict]:
        return [dict(r.items()) for r in client.query(sql).result()]

    gold = select(f"SELECT * FROM `{project_id}.gold.orders_daily` ORDER BY customer_id, date")
    assert len(gold) == 7
    assert select(f"SELECT * FROM `{project_id}.reporting.orders_daily` ORDER BY customer_id, date") == gold
    assert len(select(f"SELECT * FROM `{project_id}.reporting.orders_by_customer`")) == 7

    # The data API, as the Cloud Run stand-in runs it, reading the api view with a token.
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    service = resources["data-api"]
    for secret_id in service.spec["secrets"].values():
        (secrets_dir / secret_id).write_text(random.token_hex(32))
    runner = LocalRunnerProvider(project_id, tmp_path / "api-state", run_jobs=True, secrets_dir=secrets_dir)
    runner.create(service)
    try:
        with httpx.Client(base_url=runner.service_url("data-api"), timeout=30) as http:
            assert http.get("/api/v1/orders_daily").status_code == 401
            token = http.post("/oauth/token", data={"grant_type": "client_credentials"},
                              auth=("acme", (secrets_dir / "api-client-acme").read_text())).json()["access_token"]
            seen, cursor, pages = [], None, 0
            while True:
                page = http.get("/api/v1/orders_daily", params={"limit": 3, **({"cursor": cursor} if cursor else {})},
                                headers={"Authorization": f"Bearer {token}"}).json()
                seen += page["data"]
                pages += 1
                cursor = page["next_cursor"]
                if not cursor:
                    break
    finally:
        runner.delete(service)
    assert pages == 3
    keys = [(r["customer_id"], r["date"]) for r in seen]
    assert len(keys) == len(set(keys)) == len(gold), "every row once"
    assert sorted(keys) == [(g["customer_id"], g["date"].isoformat()) for g in gold]
    assert {(r["customer_id"], r["date"]): Decimal(r["total_amount"]) for r in seen} == {
        (g["customer_id"], g["date"].isoformat()): g["total_amount"] for g in gold}

    # Point in time: recompute every feature row from the Silver rows before its timestamp.
    features = select(f"SELECT * FROM `{project_id}.features.orders` ORDER BY customer_id, feature_timestamp")
    assert len(features) == 7  # one per customer and day with orders
    parsed = [(c, Decimal(a), dt.datetime.fromisoformat(t.replace("Z", "+00:00"))) for c, a, t in ORDERS]
    for row in features:
        at = row["feature_timestamp"]
        assert row["_last_event_at"] < at, "no feature uses data after its timestamp"
        for label, days in (("7d", 7), ("30d", 30), ("90d", 90)):
            used = [a for c, a, t in parsed if c == row["customer_id"] and at - dt.timedelta(days=days) <= t < at]
            assert row[f"orders_{label}"] == len(used)
            assert (row[f"spend_{label}"] or Decimal(0)) == sum(used, Decimal(0))
