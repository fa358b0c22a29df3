"""providers.bigquery reads its INFORMATION_SCHEMA query's rows from the REST API's JSON pages
(`rows_from_query_page`, `BigQueryProvider._metadata_rows`) instead of through the client's
``Row`` objects (issue 14): the same rows, hence the same Resources, on representative tables;
every page of the result and every wait for the job is read and counted.

The server is `bench/fake_gcp.py` in this process, with no latency: it answers the query from
the tables it holds as BigQuery's INFORMATION_SCHEMA would (COLUMNS, COLUMN_FIELD_PATHS,
TABLE_OPTIONS), pages the rows at 10 MB (or less, when a test says so), and can answer "not
complete yet" first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from providers.bigquery import (
    BigQueryProvider,
    decode_query_page,
    information_schema_query,
    rows_from_query_page,
    table_specs_from_information_schema,
)
from providers.errors import PermanentError
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fake_gcp  # noqa: E402

PROJECT = "hw-rows"
MANAGED = {MANAGED_BY_KEY: MANAGED_BY_VALUE, "source": "orders"}


def _table(dataset: str, table_id: str, **extra) -> dict:
    return {"tableReference": {"projectId": PROJECT, "datasetId": dataset, "tableId": table_id}, **extra}


# What a platform's tables look like, and what tells the decoders apart: nested and repeated
# records, REQUIRED nested fields, descriptions on nested fields (quotes, backslashes, non-ASCII,
# newlines), table descriptions, partition filters on and off, partitioning by column and by
# ingestion time, clustering, an unmanaged table and a view beside them, an empty schema.
TABLES = [
    _table("silver", "orders", labels=MANAGED, description='Orders, "deduplicated" \\ by id\nsecond line',
           requirePartitionFilter=True,
           timePartitioning={"type": "DAY", "field": "created_at", "expirationMs": "7776000000"},
           clustering={"fields": ["customer", "id"]},
           schema={"fields": [
               {"name": "id", "type": "STRING", "mode": "REQUIRED", "description": "the key"},
               {"name": "amount", "type": "NUMERIC"},
               {"name": "created_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
               {"name": "customer", "type": "STRING", "description": "Kunde – ünïcødé ✓"},
               {"name": "items", "type": "RECORD", "mode": "REPEATED", "description": "lines", "fields": [
                   {"name": "sku", "type": "STRING", "mode": "REQUIRED", "description": "stock 'unit'"},
                   {"name": "qty", "type": "INTEGER"},
                   {"name": "tags", "type": "STRING", "mode": "REPEATED"},
                   {"name": "price", "type": "RECORD", "fields": [
                       {"name": "value", "type": "FLOAT", "description": "per unit"},
                       {"name": "currency", "type": "STRING", "mode": "REQUIRED"}]}]},
               {"name": "ok", "type": "BOOLEAN"}]}),
    _table("silver", "events", labels=MANAGED, timePartitioning={"type": "DAY"},
           schema={"fields": [{"name": "payload", "type": "JSON"}, {"name": "at", "type": "DATETIME"}]}),
    _table("silver", "empty", labels=MANAGED, schema={"fields": []}),
    _table("silver", "theirs", labels={"owner": "someone"}, schema={"fields": [{"name": "x", "type": "STRING"}]}),
    _table("bronze", "orders_raw", labels=MANAGED, requirePartitionFilter=False,
           timePartitioning={"type": "DAY", "field": "ingested_at"},
           schema={"fields": [{"name": "ingested_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
                              {"name": "raw", "type": "STRING", "description": ""}]}),
]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("BIGQUERY_EMULATOR_HOST", raising=False)  # the real-API path
    gcp = fake_gcp.FakeGcp(latency=0.0)
    for dataset in ("silver", "bronze"):
        gcp.datasets[(PROJECT, dataset)] = {
            "datasetReference": {"projectId": PROJECT, "datasetId": dataset}, "labels": dict(MANAGED),
            "location": "EU"}
        gcp.tables[(PROJECT, dataset)] = {}
    gcp.seed({"tables": TABLES})
    gcp.tables[(PROJECT, "silver")]["a_view"] = {
        **_table("silver", "a_view", labels=MANAGED), "type": "VIEW", "kind": "bigquery#table"}
    _, http_url, stop = fake_gcp.serve(gcp, threads=8)
    client = bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                             client_options=ClientOptions(api_endpoint=http_url))
    try:
        yield gcp, BigQueryProvider(PROJECT, "EU", client=client), client
    finally:
        stop()


def client_rows(provider: BigQueryProvider, dataset: str) -> list[dict]:
    """The rows as the client library decodes them (`BigQueryProvider._query`: query_and_wait,
    then every Row as a dict), the path observe took before."""
    return provider._query(information_schema_query(PROJECT, dataset), location="EU")


def test_the_json_rows_equal_the_client_libraries_rows(fake) -> None:
    _, provider, _ = fake
    every: list[dict] = []
    for dataset in ("silver", "bronze"):
        expected = client_rows(provider, dataset)
        found = provider._metadata_rows(information_schema_query(PROJECT, dataset), location="EU")
        assert found == expected
        assert [type(v) for row in found for v in row.values()] == [type(v) for row in expected for v in row.values()]
        every += found
    assert {row["row_kind"] for row in every} == {"column", "field", "table"}
    assert any(isinstance(row["ordinal_position"], int) for row in every)
    assert any(row["text"] is None for row in every)


def test_observed_tables_equal_those_built_from_the_client_libraries_rows(fake) -> None:
    gcp, provider, client = fake
    expected: list[Resource] = []
    for dataset in ("bronze", "silver"):
        items = [item for item in client.list_tables(f"{PROJECT}.{dataset}")
                 if item.table_type == "TABLE" and (item.labels or {}).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE]
        specs = table_specs_from_information_schema(items, client_rows(provider, dataset))
        expected += [Resource(Kind.BIGQUERY_TABLE, f"{dataset}.{item.table_id}", specs[item.table_id],
                              dict(item.labels)) for item in items]
    gcp.calls.clear()
    found = provider.observe(Kind.BIGQUERY_TABLE)
    assert sorted(found, key=lambda r: r.name) == sorted(expected, key=lambda r: r.name)
    assert {r.name for r in found} == {"silver.orders", "silver.events", "silver.empty", "bronze.orders_raw"}
    orders = next(r for r in found if r.name == "silver.orders")
    assert orders.spec["description"] == 'Orders, "deduplicated" \\ by id\nsecond line'
    assert orders.spec["require_partition_filter"] is True
    assert gcp.calls == {"bigquery.datasets.list": 1, "bigquery.tables.list": 2, "bigquery.jobs.query": 2}


def test_a_result_over_several_pages_is_read_whole(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    gcp, provider, _ = fake
    sql = information_schema_query(PROJECT, "silver")
    whole = provider._metadata_rows(sql, location="EU")
    monkeypatch.setattr(fake_gcp, "QUERY_PAGE_BYTES", 400)  # a few rows a page instead of 10 MB
    gcp.calls.clear()
    before = provider.api_calls().get("bigquery.query", 0)
    assert provider._metadata_rows(sql, location="EU") == whole
    pages = gcp.calls["bigquery.jobs.getQueryResults"] + 1
    assert pages >= 5 and gcp.calls["bigquery.jobs.query"] == 1
    assert provider.api_calls()["bigquery.query"] - before == pages, "every page is a request, counted"
    assert not gcp.jobs, "the last page was read"


def test_a_job_not_complete_at_first_is_waited_for(fake) -> None:
    gcp, provider, _ = fake
    sql = information_schema_query(PROJECT, "silver")
    whole = provider._metadata_rows(sql, location="EU")
    gcp.incomplete_answers = 3  # jobs.query and two jobs.getQueryResults say "not yet"
    gcp.calls.clear()
    assert provider._metadata_rows(sql, location="EU") == whole
    assert gcp.calls == {"bigquery.jobs.query": 1, "bigquery.jobs.getQueryResults": 3}


def test_a_failing_query_is_a_permanent_error(fake) -> None:
    _, provider, _ = fake
    with pytest.raises(PermanentError, match="bigquery.query"):
        provider._metadata_rows("SELECT 1", location="EU")  # the fake answers 400, as to a bad query


def test_a_page_decodes_strings_integers_and_nulls() -> None:
    api = {"kind": "bigquery#queryResponse", "jobReference": {"projectId": "p", "jobId": "j", "location": "EU"},
           "jobCreationReason": {"code": "REQUESTED"}, "jobComplete": True, "totalRows": "2",
           "schema": {"fields": [{"name": "s", "type": "STRING", "mode": "NULLABLE"},
                                 {"name": "n", "type": "INTEGER"}, {"name": "m", "type": "INT64"}]},
           "rows": [{"f": [{"v": "a"}, {"v": "12"}, {"v": None}]}, {"f": [{"v": None}, {"v": "-3"}, {"v": "0"}]}]}
    page = decode_query_page(json.dumps(api).encode())
    assert page["rows"] == [["a", "12", None], [None, "-3", "0"]]
    assert {k: v for k, v in page.items() if k != "rows"} == {k: v for k, v in api.items() if k != "rows"}
    assert rows_from_query_page(page) == [{"s": "a", "n": 12, "m": None}, {"s": None, "n": -3, "m": 0}]
    schema = api["schema"]["fields"]
    assert rows_from_query_page({"rows": page["rows"][:1]}, schema) == [{"s": "a", "n": 12, "m": None}]
    assert rows_from_query_page({"schema": {"fields": schema}}) == []
    with pytest.raises(PermanentError, match="TIMESTAMP"):
        rows_from_query_page({"schema": {"fields": [{"name": "t", "type": "TIMESTAMP"}]}, "rows": []})
