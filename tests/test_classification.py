"""Column-level security compiled (reconciler/classification.py): the taxonomy, policy tags, data
policies, column policies on Silver and on the Gold and feature columns computed from them, and the
fine-grained / masked reader grants; the providers wired for GCP and for the emulators; a plan that
removes a classification. Pure: no emulator, no endpoint."""

from __future__ import annotations

import dataclasses

import pytest
from classified_example import ANALYSTS, BI, ENGINEERS, classified_state
from helpers import EXAMPLE

from reconciler.classification import classification_resources, derived_class, gold_columns
from reconciler.compile import compile_resources, zone_names
from reconciler.config import Access, AccessZones, Classification, ZoneAccess
from reconciler.load import load_repo
from reconciler.plan import Action, PlanOptions, reconcile
from reconciler.render import render_markdown
from reconciler.resources import Kind, Resource

COLUMN_KINDS = (Kind.DATACATALOG_TAXONOMY, Kind.DATACATALOG_POLICY_TAG, Kind.BIGQUERY_DATA_POLICY,
                Kind.BIGQUERY_COLUMN_POLICY)
FINE = "roles/datacatalog.categoryFineGrainedReader"
MASKED = "roles/bigquerydatapolicy.maskedReader"


def compiled(state) -> dict[str, Resource]:
    return {r.address: r for r in classification_resources(state.platform, zone_names(state.platform), state.sources)}


def test_the_example_compiles_one_class_for_orders_customer_email():
    resources = {r.address: r for r in compile_resources(load_repo(EXAMPLE))}
    ours = sorted(a for a, r in resources.items() if r.kind in COLUMN_KINDS)
    assert ours == [
        "bigquery_column_policy.silver.orders/customer_email",
        "bigquery_data_policy.pii_mask",
        "datacatalog_policy_tag.headwater-dev/pii",
        "datacatalog_taxonomy.headwater-dev",
    ], "orders.customer_email is pii; no Gold aggregate of the example is computed from it"
    assert resources["datacatalog_taxonomy.headwater-dev"].spec == {
        "display_name": "headwater-dev", "description": "headwater dev: classes of sensitive columns (docs/governance.md)",
        "location": "europe-west1", "activated_policy_types": ["FINE_GRAINED_ACCESS_CONTROL"]}
    assert resources["bigquery_data_policy.pii_mask"].spec == {"policy_tag": "headwater-dev/pii", "masking": "SHA256"}
    column = resources["bigquery_column_policy.silver.orders/customer_email"]
    assert column.spec == {"policy_tags": ["headwater-dev/pii"]}
    assert set(column.depends_on) == {"bigquery_table.silver.orders", "datacatalog_policy_tag.headwater-dev/pii",
                                      "bigquery_data_policy.pii_mask"}
    fine = resources[f"iam_binding.datacatalog_policy_tag:headwater-dev/pii:{FINE}"]
    assert fine.spec["members"] == ["group:data-engineers@example.com"], "pii's readers: the engineers tier"
    masked = resources[f"iam_binding.bigquery_data_policy:pii_mask:{MASKED}"]
    assert masked.spec["members"] == ["group:analysts@example.com", "group:sales-ops@example.com"], \
        "Silver's other readers (analysts) and orders' own readers read the column masked"
    assert masked.spec["target"] == "bigquery_data_policy.pii_mask" and masked.spec["exclusive"] is False


def test_gold_and_feature_columns_inherit_by_group_by_and_aggregate_never_by_count():
    state = classified_state({"orders": {"customer_id": "pii", "amount": "pii"}})
    names = sorted(a.split(".", 1)[1] for a, r in compiled(state).items() if r.kind == Kind.BIGQUERY_COLUMN_POLICY)
    assert names == [
        "features.orders/customer_id",  # the entity key: a group-by
        "features.orders/spend_30d", "features.orders/spend_7d", "features.orders/spend_90d",  # sum(amount)
        "gold.orders_daily/customer_id",  # group_by
        "gold.orders_daily/total_amount",  # sum(amount)
        "silver.orders/amount", "silver.orders/customer_email", "silver.orders/customer_id",
    ]
    assert not any(n.endswith(("order_count", "orders_7d", "/date")) for n in names), \
        "count(*) reveals no value; date is the partition field's (not classified)"


def test_date_inherits_the_partition_fields_class_and_counts_never_inherit():
    state = classified_state({"orders": {"ordered_at": "pii"}})
    orders = next(s for s in state.sources if s.source_id == "orders")
    found = {c.name for c in gold_columns(state.platform, zone_names(state.platform), orders)}
    assert found == {"gold.orders_daily/date", "features.orders/_last_event_at"}
    assert derived_class({"x": "pii"}, "count", "x") is None
    assert derived_class({"x": "pii"}, "max", "x") == "pii" and derived_class({"x": "pii"}, None, "x") == "pii"


def test_a_database_cdc_sources_classify_map_tags_its_tables_silver_column():
    state = classified_state({"postgres_orders": {"customers.email": "pii"}})
    assert "bigquery_column_policy.silver.postgres_orders_customers/email" in compiled(state)


def test_masked_readers_are_the_zones_and_tables_other_readers_and_the_pipelines_read_clear():
    access = Access(tiers={"engineers": [ENGINEERS], "analysts": [ANALYSTS], "bi": [BI]},
                    zones=AccessZones(silver=ZoneAccess(readers=["engineers"])))
    state = classified_state({"orders": {"customer_id": "pii"}}, access=access)
    platform = state.platform.model_copy(update={"dataflow": state.platform.dataflow.model_copy(
        update={"service_account": "pipelines@headwater-demo.iam.gserviceaccount.com"})})
    resources = compiled(dataclasses.replace(state, platform=platform))
    fine = resources[f"iam_binding.datacatalog_policy_tag:headwater-dev/pii:{FINE}"].spec["members"]
    assert fine == [ENGINEERS, "serviceAccount:pipelines@headwater-demo.iam.gserviceaccount.com"], \
        "the jobs move clear values: the pipelines' account is a fine-grained reader"
    masked = resources[f"iam_binding.bigquery_data_policy:pii_mask:{MASKED}"].spec["members"]
    assert masked == [ANALYSTS, "group:sales-ops@example.com", BI], \
        "Gold's readers (default tiers) of gold.orders_daily/customer_id and orders' own readers; Silver here is " \
        "the engineers' alone"


API = "serviceAccount:data-api@headwater-demo.iam.gserviceaccount.com"


def _with_api_account(state):
    return dataclasses.replace(state, platform=state.platform.model_copy(update={
        "api": state.platform.api.model_copy(update={"service_account": API.split(":", 1)[1]})}))


def test_the_data_apis_account_reads_clear_the_classes_its_views_expose():
    # orders serves gold.orders_daily through the data API (third_party_api): classifying
    # customer_id tags gold.orders_daily/customer_id, which the API's authorized view reads. The
    # API enforces the pii scope itself (serving/api): its account must read clear values.
    state = _with_api_account(classified_state({"orders": {"customer_id": "pii"}}))
    resources = compiled(state)
    fine = resources[f"iam_binding.datacatalog_policy_tag:headwater-dev/pii:{FINE}"].spec["members"]
    assert API in fine
    assert API not in resources[f"iam_binding.bigquery_data_policy:pii_mask:{MASKED}"].spec["members"]
    # Only Silver's customer_email classified: no Gold column the API serves carries pii.
    silver_only = compiled(_with_api_account(classified_state()))
    assert API not in silver_only[f"iam_binding.datacatalog_policy_tag:headwater-dev/pii:{FINE}"].spec["members"]


def test_members_of_a_zone_binding_that_reads_data_are_masked_readers():
    auditor, writer = "group:auditors@example.com", "user:loader@example.com"
    access = Access(tiers={"engineers": [ENGINEERS], "analysts": [ANALYSTS], "bi": [BI]},
                    zones=AccessZones(silver=ZoneAccess(bindings={
                        "roles/bigquery.dataViewer": [auditor], "roles/bigquery.dataEditor": [writer],
                        "roles/bigquery.metadataViewer": ["user:meta@example.com"]})))
    masked = compiled(classified_state(access=access))[f"iam_binding.bigquery_data_policy:pii_mask:{MASKED}"]
    assert auditor in masked.spec["members"] and writer in masked.spec["members"]
    assert "user:meta@example.com" not in masked.spec["members"], "metadata only: reads no column"


@pytest.mark.parametrize("masking, expression", [
    ("sha256", "SHA256"), ("always_null", "ALWAYS_NULL"), ("default_value", "DEFAULT_MASKING_VALUE"),
    ("routine:masking.hash_email", "routine:masking.hash_email")])
def test_each_masking_compiles_to_the_data_policys(masking, expression):
    state = classified_state(classifications={"pii": Classification(masking=masking, readers=["engineers"])})
    assert compiled(state)["bigquery_data_policy.pii_mask"].spec["masking"] == expression


def test_no_classified_column_compiles_nothing_and_unused_classes_no_tag():
    state = classified_state(classifications={"pii": Classification(), "secret": Classification()})
    resources = compiled(state)
    assert "datacatalog_policy_tag.headwater-dev/secret" not in resources, "a tag per class used only"
    none = classified_state({"orders": {}})
    none = dataclasses.replace(none, sources=tuple(
        dataclasses.replace(s, connector=s.connector.model_copy(update={"classify": {}})) for s in none.sources))
    assert compiled(none) == {}


def test_removing_a_classification_plans_the_column_policy_delete_as_a_security_change():
    before = [r for r in compile_resources(classified_state({"orders": {"customer_id": "pii"}}))
              if r.kind in COLUMN_KINDS or r.kind == Kind.IAM_BINDING]
    after = [r for r in compile_resources(classified_state()) if r.kind in COLUMN_KINDS or r.kind == Kind.IAM_BINDING]
    plan = reconcile(after, before, {}, PlanOptions(prune=True))
    deletes = {c.address: c for c in plan.changes if c.action == Action.DELETE}
    assert set(deletes) >= {"bigquery_column_policy.silver.orders/customer_id",
                            "bigquery_column_policy.gold.orders_daily/customer_id",
                            "bigquery_column_policy.features.orders/customer_id"}
    change = deletes["bigquery_column_policy.silver.orders/customer_id"]
    assert change.security and "becomes readable" in change.security_summary
    assert change.to_dict()["security"] is True
    markdown = render_markdown(plan)
    assert "silver.orders/customer_id" in markdown and "becomes readable" in markdown


def test_the_providers_are_wired_for_gcp_and_recorded_on_the_emulators(monkeypatch, tmp_path):
    from providers import build_providers
    from providers.bigquery_columns import ColumnPolicyProvider
    from providers.datacatalog import DataCatalogProvider
    from providers.datapolicies import DataPolicyProvider

    platform = load_repo(EXAMPLE).platform
    for var in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    owners = {kind: p for p in build_providers("headwater-demo", "europe-west1", platform=platform) for kind in p.kinds}
    catalog = owners[Kind.DATACATALOG_TAXONOMY]
    assert isinstance(catalog, DataCatalogProvider) and owners[Kind.DATACATALOG_POLICY_TAG] is catalog
    assert isinstance(owners[Kind.BIGQUERY_DATA_POLICY], DataPolicyProvider)
    assert isinstance(owners[Kind.BIGQUERY_COLUMN_POLICY], ColumnPolicyProvider)
    assert owners[Kind.BIGQUERY_DATA_POLICY].catalog is catalog is owners[Kind.BIGQUERY_COLUMN_POLICY].catalog, \
        "one tag directory for the three"
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "127.0.0.1:1")
    providers = build_providers("headwater-demo", "europe-west1", state_dir=tmp_path, runner="local")
    owners = {kind: p for p in providers for kind in p.kinds}
    stand_in = owners[Kind.BIGQUERY_COLUMN_POLICY]
    assert type(stand_in).__name__ == "LocalRecordProvider"
    assert all(owners[k] is stand_in for k in COLUMN_KINDS), "nothing is sent to bqemulator"
    assert stand_in.why[Kind.BIGQUERY_COLUMN_POLICY] == "bqemulator drops policy tags"
    kinds = [k for p in providers for k in p.kinds]
    assert len(kinds) == len(set(kinds)), "each kind has one provider"
