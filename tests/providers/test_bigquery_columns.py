"""Column policies: policy tags set on (and removed from) table columns through the official BigQuery
client (REST) against a local endpoint (tests/fake_bigquery_columns.py), the tags resolved through
the Data Catalog provider and its fake (tests/fake_datacatalog.py).

bqemulator drops policyTags, so none of this runs on the emulators (there the kind is recorded by
providers/local_record.py). Verified only against the real service: that the INFORMATION_SCHEMA
query's policy_tags reads as parsed here, that a tag restricts reads, and that a PATCH without
policyTags keeps a column's tags (the behaviour the fake plays, terraform-provider-google#14047).
"""

from __future__ import annotations

import pytest
from classified_example import classified_state
from fake_bigquery_columns import FakeBigQueryColumns
from fake_datacatalog import FakeDataCatalog

from providers.bigquery import BigQueryProvider, schema_fields
from providers.bigquery_columns import ColumnPolicyProvider, find_field, split_name
from providers.datacatalog import DataCatalogProvider
from providers.errors import AlreadyExists, PermanentError
from reconciler.classification import classification_resources
from reconciler.compile import compile_resources, zone_names
from reconciler.plan import Action, PlanOptions, reconcile
from reconciler.resources import Kind, Resource

PROJECT, REGION = "headwater-demo", "europe-west1"
MORE = {"orders": {"customer_id": "pii", "items.sku": "pii"}}


def columns_of(state) -> list[Resource]:
    return [r for r in classification_resources(state.platform, zone_names(state.platform), state.sources)
            if r.kind == Kind.BIGQUERY_COLUMN_POLICY]


@pytest.fixture
def catalog():
    server = FakeDataCatalog()
    provider = DataCatalogProvider(PROJECT, REGION, client=server.catalog_client())
    state = classified_state()
    for resource in classification_resources(state.platform, zone_names(state.platform), state.sources):
        if resource.kind in (Kind.DATACATALOG_TAXONOMY, Kind.DATACATALOG_POLICY_TAG):
            provider.create(resource)
    yield provider
    server.close()


@pytest.fixture
def bq():
    server = FakeBigQueryColumns(PROJECT)
    tables = {r.name: r for r in compile_resources(classified_state()) if r.kind == Kind.BIGQUERY_TABLE}
    for dataset in ("silver", "gold", "features"):
        server.add_dataset(dataset)
    server.add_dataset("scratch", managed=False)
    for name in ("silver.orders", "gold.orders_daily", "features.orders", "silver.payments"):
        server.add_table(name, [f.to_api_repr() for f in schema_fields(tables[name].spec["schema"])])
    yield server
    server.close()


def provider_for(bq: FakeBigQueryColumns, catalog: DataCatalogProvider) -> ColumnPolicyProvider:
    return ColumnPolicyProvider(PROJECT, catalog, client=bq.client())


def plan(desired, provider, **options):
    live = provider.observe(Kind.BIGQUERY_COLUMN_POLICY)
    return reconcile(desired, live, dict(provider.immutable_fields), PlanOptions(**options))


def apply_all(provider, changes) -> None:
    for change in changes:
        if change.action == Action.CREATE:
            provider.create(change.desired)
        elif change.action == Action.UPDATE:
            provider.update(change.desired, list(change.update_fields))
        elif change.action == Action.DELETE:
            provider.delete(change.live)


def test_names_and_nested_paths():
    assert split_name("silver.orders/items.sku") == ("silver", "orders", "items.sku")
    fields = [{"name": "Items", "type": "RECORD", "fields": [{"name": "sku", "type": "STRING"}]}]
    assert find_field(fields, "items.SKU") == {"name": "sku", "type": "STRING"}, "names are case-insensitive"
    assert find_field(fields, "items.price") is None
    with pytest.raises(PermanentError, match="expected <dataset>.<table>/<column.path>"):
        split_name("silver.orders")


def test_apply_tags_silver_gold_and_nested_columns_with_the_read_etag(bq, catalog):
    desired = columns_of(classified_state(MORE))
    assert sorted(r.name for r in desired) == [
        "features.orders/customer_id", "gold.orders_daily/customer_id", "silver.orders/customer_email",
        "silver.orders/customer_id", "silver.orders/items.sku"]
    provider = provider_for(bq, catalog)
    first = plan(desired, provider)
    assert {c.action for c in first.changes} == {Action.CREATE} and all(c.security for c in first.changes)
    before = {name: bq.tables[name]["etag"] for name in bq.tables}
    apply_all(provider, first.changes)
    tag = catalog.tag_id("headwater-dev/pii")
    assert tag and tag.startswith(f"projects/{PROJECT}/locations/{REGION}/taxonomies/")
    patches = bq.patches()
    assert len(patches) == 5
    first_patch = patches[0]
    assert first_patch.path.endswith("/datasets/features/tables/orders")
    assert first_patch.headers["if-match"] == before["features.orders"], "the etag of the table as read"
    assert set(first_patch.body) == {"schema"}, "only the schema is patched"
    assert bq.field("silver.orders", "items.sku")["policyTags"] == {"names": [tag]}
    assert bq.field("silver.orders", "customer_email")["policyTags"] == {"names": [tag]}
    assert "policyTags" not in bq.field("silver.orders", "amount"), "other columns untouched"
    assert "policyTags" not in bq.field("gold.orders_daily", "total_amount")
    # A fresh provider (the next run) reads them back: no changes.
    again = plan(desired, provider_for(bq, catalog))
    assert [c for c in again.changes if c.action != Action.NOOP] == []


def test_observe_is_one_dataset_list_and_one_query_per_managed_dataset(bq, catalog):
    provider = provider_for(bq, catalog)
    apply_all(provider, plan(columns_of(classified_state()), provider).changes)
    bq.field("silver.payments", "customer_id")["policyTags"] = {
        "names": ["projects/other/locations/eu/taxonomies/1/policyTags/2"]}  # someone else's tag
    bq.requests.clear()
    found = provider_for(bq, catalog).observe(Kind.BIGQUERY_COLUMN_POLICY)
    assert [(r.name, r.spec["policy_tags"], r.labels["headwater-platform"]) for r in found] == [
        ("silver.orders/customer_email", ["headwater-dev/pii"], "dev")]
    assert bq.methods() == ["GET datasets", "POST queries", "POST queries", "POST queries"], \
        "datasets listed once (labelled managed-by=headwater), one query each of the three managed datasets"
    assert "labels.managed-by:headwater" in bq.requests[0].query["filter"]
    assert all(r.body["location"] == "europe-west1" for r in bq.requests[1:]), "run where the dataset lives"


def test_removing_a_classification_deletes_the_column_policy_with_an_empty_names_list(bq, catalog):
    provider = provider_for(bq, catalog)
    apply_all(provider, plan(columns_of(classified_state(MORE)), provider).changes)
    fewer = columns_of(classified_state())  # customer_id and items.sku no longer classified
    second = plan(fewer, provider_for(bq, catalog), prune=True)
    deletes = [c for c in second.changes if c.action == Action.DELETE]
    assert sorted(c.name for c in deletes) == [
        "features.orders/customer_id", "gold.orders_daily/customer_id", "silver.orders/customer_id",
        "silver.orders/items.sku"], "the Gold and feature columns inheriting from customer_id go with it"
    assert all(c.security and c.security_summary for c in deletes), "flagged, with the security phrase"
    bq.requests.clear()
    apply_all(provider_for(bq, catalog), deletes)
    patch = next(p for p in bq.patches() if p.path.endswith("/datasets/silver/tables/orders")
                 and _sent(p, "customer_id").get("policyTags") == {"names": []})
    assert _sent(patch, "customer_id")["policyTags"] == {"names": []}, "an EMPTY list removes the tag"
    assert "policyTags" not in bq.field("silver.orders", "customer_id") or \
        bq.field("silver.orders", "customer_id")["policyTags"] == {"names": []}
    assert bq.field("silver.orders", "customer_email")["policyTags"]["names"], "the still classified one stays"
    assert [c for c in plan(fewer, provider_for(bq, catalog)).changes if c.action != Action.NOOP] == []
    # Deleting again (gone already) sends nothing and succeeds.
    bq.requests.clear()
    apply_all(provider_for(bq, catalog), deletes)
    assert bq.patches() == []


def test_a_concurrent_change_of_the_table_is_retried_from_a_fresh_read(bq, catalog):
    desired = [r for r in columns_of(classified_state()) if r.name == "silver.orders/customer_email"]

    def someone_else(fake: FakeBigQueryColumns) -> None:
        fake.tables["silver.orders"]["schema"]["fields"][0]["description"] = "changed meanwhile"
        fake.tables["silver.orders"]["etag"] = "etag-someone-else"

    bq.before_patch = someone_else
    provider_for(bq, catalog).create(desired[0])
    assert [f"{r.method} {r.headers.get('if-match', '')}" for r in bq.requests if "orders" in r.path] == [
        "GET ", "PATCH etag-1", "GET ", "PATCH etag-someone-else"], "412, then read again and patch"
    assert bq.field("silver.orders", "order_id")["description"] == "changed meanwhile", "their change kept"
    assert bq.field("silver.orders", "customer_email")["policyTags"]["names"]


def test_a_column_tagged_by_someone_else_is_not_taken_over(bq, catalog):
    foreign = "projects/other/locations/eu/taxonomies/1/policyTags/2"
    bq.field("silver.orders", "customer_email")["policyTags"] = {"names": [foreign]}
    (resource,) = [r for r in columns_of(classified_state()) if r.name == "silver.orders/customer_email"]
    provider = provider_for(bq, catalog)
    assert provider.observe(Kind.BIGQUERY_COLUMN_POLICY) == []
    with pytest.raises(AlreadyExists, match="already carries"):
        provider.create(resource)
    (read,) = provider.read(Kind.BIGQUERY_COLUMN_POLICY, [resource.name])
    assert read.spec == {"policy_tags": [foreign]} and not read.managed, "shown as not headwater's: an import"
    assert bq.patches() == []


def test_a_record_column_is_refused(bq, catalog):
    record = Resource(Kind.BIGQUERY_COLUMN_POLICY, "silver.orders/items", {"policy_tags": ["headwater-dev/pii"]})
    with pytest.raises(PermanentError, match="policy tags go on leaf columns"):
        provider_for(bq, catalog).create(record)


def test_the_main_bigquery_providers_schema_update_keeps_the_tags(bq, catalog):
    """providers/bigquery.py sends the canonical schema without policyTags: BigQuery keeps a field's
    tags when its PATCH omits them, so a schema evolution never unprotects a column."""
    provider = provider_for(bq, catalog)
    apply_all(provider, plan(columns_of(classified_state()), provider).changes)
    table = next(r for r in compile_resources(classified_state()) if r.name == "silver.orders")
    evolved = [*table.spec["schema"], {"name": "coupon", "type": "STRING", "mode": "NULLABLE"}]
    assert all("policyTags" not in f.to_api_repr() for f in schema_fields(evolved)), \
        "google-cloud-bigquery sends no policyTags key for a field built without one"
    bq.requests.clear()
    main = BigQueryProvider(PROJECT, REGION, client=bq.client())
    main.update(Resource(Kind.BIGQUERY_TABLE, "silver.orders", {**table.spec, "schema": evolved}), ["schema"])
    (patch,) = bq.patches()
    assert "policyTags" not in _sent(patch, "customer_email")
    assert bq.field("silver.orders", "customer_email")["policyTags"]["names"], "still tagged"
    assert [c for c in plan(columns_of(classified_state()), provider_for(bq, catalog)).changes
            if c.action != Action.NOOP] == []


def _sent(request, path: str) -> dict:
    return find_field(request.body["schema"]["fields"], path) or {}
