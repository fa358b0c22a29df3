"""Data Catalog taxonomy and policy tags, and BigQuery data (masking) policies: requests built with the
client libraries' own types and sent through the official clients (gRPC) to a local endpoint
(tests/fake_datacatalog.py).

Neither service has an emulator. What these tests cannot show - that a tag restricts a column and
a data policy masks it for maskedReader holders, the organization-wide uniqueness of a taxonomy's
display name, the server's own defaults - is verified only against the real services (the
providers' docstrings, docs/governance.md).
"""

from __future__ import annotations

import dataclasses

import pytest
from classified_example import classified_state
from fake_datacatalog import FakeDataCatalog
from google.cloud import bigquery_datapolicies_v1 as dp
from google.cloud import datacatalog_v1 as dc

from providers.datacatalog import DataCatalogProvider, build_taxonomy, mask, taxonomy_resource
from providers.datapolicies import (
    DataPolicyProvider,
    build_data_policy,
    data_policy_resource,
    masking_policy,
    masking_spec,
)
from providers.errors import AlreadyExists, PermanentError
from reconciler.config import Classification
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind, Resource

PROJECT, REGION = "headwater-demo", "europe-west1"
KINDS = (Kind.DATACATALOG_TAXONOMY, Kind.DATACATALOG_POLICY_TAG, Kind.BIGQUERY_DATA_POLICY)


def desired_of(state) -> list[Resource]:
    from reconciler.classification import classification_resources
    from reconciler.compile import zone_names

    return [r for r in classification_resources(state.platform, zone_names(state.platform), state.sources)
            if r.kind in KINDS]


@pytest.fixture(scope="module")
def desired() -> list[Resource]:
    return desired_of(classified_state())


@pytest.fixture
def fake():
    server = FakeDataCatalog()
    yield server
    server.close()


def providers_for(fake: FakeDataCatalog) -> tuple[DataCatalogProvider, DataPolicyProvider]:
    catalog = DataCatalogProvider(PROJECT, REGION, client=fake.catalog_client())
    return catalog, DataPolicyProvider(PROJECT, REGION, catalog, client=fake.policy_client())


def plan(desired: list[Resource], catalog: DataCatalogProvider, policies: DataPolicyProvider, **options):
    from reconciler.plan import PlanOptions

    live = [r for kind in KINDS for r in (catalog if kind != Kind.BIGQUERY_DATA_POLICY else policies).observe(kind)]
    immutable = {**catalog.immutable_fields, **policies.immutable_fields}
    return reconcile(desired, live, immutable, PlanOptions(**options))


def apply_all(catalog, policies, changes) -> None:
    for change in changes:
        provider = policies if change.kind == Kind.BIGQUERY_DATA_POLICY else catalog
        if change.action == Action.CREATE:
            provider.create(change.desired)
        elif change.action == Action.UPDATE:
            provider.update(change.desired, list(change.update_fields))
        elif change.action == Action.DELETE:
            provider.delete(change.live)


# --------------------------------------------------------------------------- requests (types)


def test_the_taxonomy_and_a_data_policy_survive_the_librarys_serialization(desired):
    taxonomy = build_taxonomy(next(r for r in desired if r.kind == Kind.DATACATALOG_TAXONOMY))
    assert dc.Taxonomy.deserialize(dc.Taxonomy.serialize(taxonomy)) == taxonomy
    assert list(taxonomy.activated_policy_types) == [dc.Taxonomy.PolicyType.FINE_GRAINED_ACCESS_CONTROL]
    taxonomy.name = f"projects/{PROJECT}/locations/{REGION}/taxonomies/1"
    back = taxonomy_resource(taxonomy, REGION)
    wanted = next(r for r in desired if r.kind == Kind.DATACATALOG_TAXONOMY)
    assert (back.name, back.spec, back.labels) == (wanted.name, wanted.spec, wanted.labels)
    policy_resource = next(r for r in desired if r.kind == Kind.BIGQUERY_DATA_POLICY)
    tag = f"{taxonomy.name}/policyTags/2"
    policy = build_data_policy(policy_resource, tag, PROJECT)
    assert dp.DataPolicy.deserialize(dp.DataPolicy.serialize(policy)) == policy
    assert policy.data_policy_type == dp.DataPolicy.DataPolicyType.DATA_MASKING_POLICY
    assert policy.data_masking_policy.predefined_expression == dp.DataMaskingPolicy.PredefinedExpression.SHA256
    read = data_policy_resource(policy, {tag: "headwater-dev/pii"})
    assert (read.name, read.spec, read.labels) == (policy_resource.name, policy_resource.spec, policy_resource.labels)


@pytest.mark.parametrize("masking, field, value", [
    ("SHA256", "predefined_expression", dp.DataMaskingPolicy.PredefinedExpression.SHA256),
    ("ALWAYS_NULL", "predefined_expression", dp.DataMaskingPolicy.PredefinedExpression.ALWAYS_NULL),
    ("DEFAULT_MASKING_VALUE", "predefined_expression", dp.DataMaskingPolicy.PredefinedExpression.DEFAULT_MASKING_VALUE),
    ("routine:masking.hash_email", "routine", f"projects/{PROJECT}/datasets/masking/routines/hash_email"),
])
def test_each_masking_maps_to_the_apis_and_back(masking, field, value):
    policy = masking_policy(masking, PROJECT)
    assert getattr(policy, field) == value
    assert masking_spec(policy) == masking


def test_update_masks_and_bad_masking_are_refused():
    assert mask(["description", "labels"], {"description": "description"}, "x") == ["description"]
    with pytest.raises(PermanentError, match="cannot change in place"):
        mask(["display_name"], {"description": "description"}, "x")
    with pytest.raises(PermanentError, match="not a predefined masking expression"):
        masking_policy("LAST_FIVE", PROJECT)


# --------------------------------------------------------------------------- through the clients


def test_apply_creates_the_taxonomy_tag_and_policy_and_a_second_plan_is_clean(fake, desired):
    catalog, policies = providers_for(fake)
    first = plan(desired, catalog, policies)
    assert [(c.kind, c.action) for c in first.changes] == [
        (Kind.DATACATALOG_TAXONOMY, Action.CREATE), (Kind.DATACATALOG_POLICY_TAG, Action.CREATE),
        (Kind.BIGQUERY_DATA_POLICY, Action.CREATE)]
    assert all(c.security for c in first.changes if c.kind != Kind.DATACATALOG_TAXONOMY)
    apply_all(catalog, policies, first.changes)
    create_taxonomy, create_tag, create_policy = [c.request for c in fake.mutating()]
    assert create_taxonomy.parent == f"projects/{PROJECT}/locations/{REGION}"
    assert create_taxonomy.taxonomy.display_name == "headwater-dev" and not create_taxonomy.taxonomy.name
    (taxonomy_name,) = fake.taxonomies
    assert create_tag.parent == taxonomy_name and create_tag.policy_tag.display_name == "pii"
    (tag_name,) = fake.tags
    assert create_policy.data_policy.policy_tag == tag_name, "the tag by its server id, found by display name"
    assert create_policy.data_policy.data_policy_id == "pii_mask"
    # A fresh pair of providers (the next run) sees nothing to do.
    again = plan(desired, *providers_for(fake))
    assert [c for c in again.changes if c.action != Action.NOOP] == []


def test_observe_lists_once_per_kind_and_keeps_only_headwaters(fake, desired):
    catalog, policies = providers_for(fake)
    apply_all(catalog, policies, plan(desired, catalog, policies).changes)
    parent = f"projects/{PROJECT}/locations/{REGION}"
    other = fake.catalog_client().create_taxonomy(parent=parent, taxonomy=dc.Taxonomy(display_name="finance"))
    fake.catalog_client().create_policy_tag(parent=other.name, policy_tag=dc.PolicyTag(display_name="pii"))
    fake.calls.clear()
    catalog, policies = providers_for(fake)
    assert [r.name for r in catalog.observe(Kind.DATACATALOG_TAXONOMY)] == ["headwater-dev"]
    assert [r.name for r in catalog.observe(Kind.DATACATALOG_POLICY_TAG)] == ["headwater-dev/pii"]
    assert [r.name for r in policies.observe(Kind.BIGQUERY_DATA_POLICY)] == ["pii_mask"]
    assert fake.methods() == ["ListTaxonomies", "ListTaxonomies", "ListPolicyTags", "ListDataPolicies"], \
        "one list per kind (tags: one per headwater taxonomy); the data policies reuse the tags listed"


def test_a_changed_masking_is_an_update_of_the_masking_only(fake, desired):
    catalog, policies = providers_for(fake)
    apply_all(catalog, policies, plan(desired, catalog, policies).changes)
    changed = desired_of(classified_state(classifications={
        "pii": Classification(masking="routine:masking.hash_email", readers=["engineers"])}))
    second = plan(changed, *providers_for(fake))
    (update,) = [c for c in second.changes if c.action != Action.NOOP]
    assert (update.address, update.action, update.update_fields) == ("bigquery_data_policy.pii_mask",
                                                                     Action.UPDATE, ("masking",))
    fake.calls.clear()
    catalog, policies = providers_for(fake)
    apply_all(catalog, policies, second.changes)
    (call,) = fake.mutating()
    assert call.method == "UpdateDataPolicy" and list(call.request.update_mask.paths) == ["data_masking_policy"]
    assert call.request.data_policy.data_masking_policy.routine == \
        f"projects/{PROJECT}/datasets/masking/routines/hash_email"
    assert plan(changed, *providers_for(fake)).changes and all(
        c.action == Action.NOOP for c in plan(changed, *providers_for(fake)).changes)


def test_a_description_change_updates_the_taxonomy_with_a_mask(fake, desired):
    catalog, policies = providers_for(fake)
    apply_all(catalog, policies, plan(desired, catalog, policies).changes)
    (taxonomy,) = fake.taxonomies.values()
    taxonomy.description = "edited by hand"
    fake.calls.clear()
    catalog, policies = providers_for(fake)
    apply_all(catalog, policies, plan(desired, catalog, policies).changes)
    (call,) = fake.mutating()
    assert call.method == "UpdateTaxonomy" and list(call.request.update_mask.paths) == ["description"]
    assert fake.taxonomies[taxonomy.name].description.startswith("headwater dev:")


def test_no_classification_left_deletes_policy_tag_and_taxonomy_in_reverse_order(fake, desired):
    catalog, policies = providers_for(fake)
    apply_all(catalog, policies, plan(desired, catalog, policies).changes)
    catalog, policies = providers_for(fake)
    gone = plan([], catalog, policies, prune=True)
    assert [(c.kind, c.action) for c in gone.changes] == [
        (Kind.BIGQUERY_DATA_POLICY, Action.DELETE), (Kind.DATACATALOG_POLICY_TAG, Action.DELETE),
        (Kind.DATACATALOG_TAXONOMY, Action.DELETE)]
    fake.calls.clear()
    apply_all(catalog, policies, gone.changes)
    assert fake.methods() == ["DeleteDataPolicy", "DeletePolicyTag", "DeleteTaxonomy"]
    assert not fake.taxonomies and not fake.tags and not fake.policies
    # Deleting what is gone succeeds (idempotent).
    apply_all(catalog, policies, gone.changes)


def test_a_create_of_what_exists_is_already_exists(fake, desired):
    catalog, policies = providers_for(fake)
    apply_all(catalog, policies, plan(desired, catalog, policies).changes)
    catalog, policies = providers_for(fake)
    for resource in desired:
        with pytest.raises(AlreadyExists):
            (policies if resource.kind == Kind.BIGQUERY_DATA_POLICY else catalog).create(resource)


def test_another_environments_data_policy_of_the_same_id_reads_as_the_other_platforms(fake, desired):
    state = classified_state()
    prod = desired_of(dataclasses.replace(state, platform=state.platform.model_copy(update={"environment": "prod"})))
    catalog, policies = providers_for(fake)
    apply_all(catalog, policies, plan(prod, catalog, policies).changes)
    catalog, policies = providers_for(fake)
    assert policies.observe(Kind.BIGQUERY_DATA_POLICY)[0].labels["headwater-platform"] == "prod"
    from reconciler.plan import PlanOptions

    live = [r for kind in KINDS for r in (catalog if kind != Kind.BIGQUERY_DATA_POLICY else policies).observe(kind)]
    mine = reconcile(desired, live, {**catalog.immutable_fields, **policies.immutable_fields},
                     PlanOptions(environment="dev"))
    clash = next(c for c in mine.changes if c.kind == Kind.BIGQUERY_DATA_POLICY)
    assert clash.action == Action.IMPORT and "another headwater platform" in clash.reason
