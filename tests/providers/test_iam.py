"""IamProvider (providers/iam/) through the official clients to local fake endpoints.

No emulator implements IAM, so every target's policy API is the fake's (tests/fake_iam.py): the
clients (google-cloud-storage, -bigquery, -pubsub with REST transport, -bigquery-datapolicies
and -resource-manager with REST, -datacatalog over gRPC) send what they would send to Google,
and the request bodies are parsed back with the libraries' own types. What the real services
then enforce is verified only on GCP (docs/governance.md, "Providers and verification").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from fake_iam import PROJECT_NUMBER, FakeIam
from google.api_core import iam as core_iam
from google.cloud import bigquery
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import json_format

from providers.errors import PermanentError
from providers.iam import IamProvider, agents
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind, Resource

PROJECT, REGION, LANDING = "hw-demo", "europe-west1", "landing-hw-demo-europe-west1"
LABELS = {"managed-by": "headwater", "headwater-platform": "dev"}
OTHER = "user:someone-else@example.com"
AGENT = f"serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
RECONCILER = "serviceAccount:headwater-apply@hw-demo.iam.gserviceaccount.com"

# target address -> (fake's resource key, role)
TARGETS = {
    "pubsub_topic.orders-dlq": (f"projects/{PROJECT}/topics/orders-dlq", "roles/pubsub.publisher"),
    "pubsub_subscription.orders-ingest": (f"projects/{PROJECT}/subscriptions/orders-ingest", "roles/pubsub.subscriber"),
    "storage_bucket.silver-b": ("b/silver-b", "roles/storage.objectViewer"),
    "bigquery_table.bronze.orders_raw": (f"projects/{PROJECT}/datasets/bronze/tables/orders_raw",
                                         "roles/bigquery.dataViewer"),
    "bigquery_data_policy.pii_mask": (f"projects/{PROJECT}/locations/{REGION}/dataPolicies/pii_mask",
                                      "roles/bigquerydatapolicy.maskedReader"),
    "project.hw-demo": (f"projects/{PROJECT}", "roles/bigquery.jobUser"),
    "bigquery_dataset.silver": ("dataset:silver", "roles/bigquery.dataViewer"),
    "datacatalog_policy_tag.headwater-dev/pii": ("tag", "roles/datacatalog.categoryFineGrainedReader"),
}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIam]:
    # With the emulators' variables set (by an earlier test of the session) the clients would go there.
    for var in ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    fake = FakeIam(PROJECT, REGION)
    others = [{"role": role, "members": [OTHER]} for _, role in TARGETS.values()]
    for key, role in TARGETS.values():
        if key.startswith("dataset:") or key == "tag":
            continue
        fake.add_policy(key, [{"role": role, "members": [OTHER]},
                              {"role": role, "members": ["group:conditional@example.com"],
                               "condition": {"title": "weekdays", "expression": "true"}}])
    fake.add_dataset("silver", [{"role": "OWNER", "specialGroup": "projectOwners"},
                                {"role": "READER", "userByEmail": "someone-else@example.com"},
                                {"view": {"projectId": PROJECT, "datasetId": "gold", "tableId": "v"}}])
    tag = fake.add_policy_tag("headwater-dev", "pii")
    fake.policies[tag]["bindings"] = [others[0] | {"role": TARGETS["datacatalog_policy_tag.headwater-dev/pii"][1]}]
    TARGETS["datacatalog_policy_tag.headwater-dev/pii"] = (tag, TARGETS["datacatalog_policy_tag.headwater-dev/pii"][1])
    yield fake
    TARGETS["datacatalog_policy_tag.headwater-dev/pii"] = ("tag", "roles/datacatalog.categoryFineGrainedReader")
    fake.close()


def provider(fake: FakeIam, **kwargs) -> IamProvider:
    return IamProvider(PROJECT, REGION, LANDING, clients=fake.clients(), **kwargs)


def binding(target: str, members: list[str], *, role: str | None = None, exclusive: bool = False) -> Resource:
    role = role or TARGETS[target][1]
    kind, name = target.split(".", 1)
    return Resource(Kind.IAM_BINDING, f"{kind}:{name}:{role}",
                    {"target": target, "role": role, "members": sorted(members), "exclusive": exclusive}, LABELS)


def immutable(p: IamProvider) -> dict:
    return dict(p.immutable_fields)


@pytest.mark.parametrize("target", list(TARGETS))
def test_each_target_grants_beside_others_members_and_observes_equal(fake, target):
    p = provider(fake)
    key, role = TARGETS[target]
    desired = binding(target, ["group:analysts@example.com", "serviceAgent:pubsub"])

    p.create(desired)

    assert fake.members(key, role) == {OTHER, "group:analysts@example.com", AGENT}
    live = p.observe(Kind.IAM_BINDING)
    assert live == [desired]  # the agent back in headwater's form, someone else's member not ours
    assert [c.action for c in reconcile([desired], live, immutable(p)).changes] == [Action.NOOP]
    assert fake.ledger(LANDING)["bindings"][desired.name] == {
        "target": target, "role": role, "members": ["group:analysts@example.com", "serviceAgent:pubsub"],
        "exclusive": False, "labels": LABELS}
    if key in fake.policies and not target.startswith("datacatalog"):
        # The conditional binding of the same role is another grant: written back untouched.
        assert any(b.get("condition") and b["members"] == ["group:conditional@example.com"]
                   for b in fake.policies[key]["bindings"])


@pytest.mark.parametrize("target", ["storage_bucket.silver-b", "bigquery_dataset.silver", "pubsub_topic.orders-dlq"])
def test_members_compare_without_case_as_iam_does(fake, target):
    # IAM compares e-mails case-insensitively (terraform-provider-google#3880): a live
    # group:Analysts@Example.com is the declared (validated, lower-case) group:analysts@example.com,
    # never granted a second time; a ledger written in another case still revokes it.
    p = provider(fake)
    key, role = TARGETS[target]
    declared = binding(target, ["group:analysts@example.com"])
    p.create(dataclasses.replace(declared, spec={**declared.spec, "members": ["group:Analysts@Example.com"]}))
    assert fake.members(key, role) in ({OTHER, "group:Analysts@Example.com"}, {OTHER, "group:analysts@example.com"})

    (live,) = p.observe(Kind.IAM_BINDING)
    assert live.spec["members"] == ["group:analysts@example.com"]
    assert [c.action for c in reconcile([declared], [live], immutable(p)).changes] == [Action.NOOP]
    p.update(binding(target, []), ["members"])  # the ledger's mixed-case member is revoked
    assert fake.members(key, role) == {OTHER}

    p.create(dataclasses.replace(declared, spec={**declared.spec, "members": ["group:Analysts@Example.com"]}))
    p.update(declared, ["members"])  # the other spelling: one member, not two
    assert {m.lower() for m in fake.members(key, role)} == {OTHER, "group:analysts@example.com"}
    assert len(fake.members(key, role)) == 2


def test_requests_parse_as_the_client_libraries_types(fake):
    p = provider(fake)
    for target in ("pubsub_topic.orders-dlq", "storage_bucket.silver-b", "bigquery_dataset.silver",
                   "project.hw-demo", "bigquery_data_policy.pii_mask"):
        p.create(binding(target, ["group:analysts@example.com"]))

    (topic,) = fake.requests_to("orders-dlq:setIamPolicy", "POST")
    request = json_format.ParseDict(topic.body, iam_policy_pb2.SetIamPolicyRequest())
    assert request.policy.etag  # written with the etag it was read with
    assert {(b.role, tuple(b.members)) for b in request.policy.bindings if not b.HasField("condition")} == {
        ("roles/pubsub.publisher", ("group:analysts@example.com", OTHER))}
    (get,) = fake.requests_to("orders-dlq:getIamPolicy")
    assert get.query["options.requestedPolicyVersion"] == "3"

    (bucket,) = fake.requests_to("/storage/v1/b/silver-b/iam", "PUT")
    policy = core_iam.Policy.from_api_repr(bucket.body)
    assert policy.version == 3 and policy.etag
    assert {"role": "roles/storage.objectViewer", "members": {"group:analysts@example.com", OTHER}} in policy.bindings
    assert fake.requests_to("/storage/v1/b/silver-b/iam", "GET")[0].query["optionsRequestedPolicyVersion"] == "3"

    (patch,) = fake.requests_to("/datasets/silver", "PATCH")
    assert set(patch.body) == {"access"}  # the access entries and nothing else ...
    assert patch.headers["if-match"]  # ... conditional on the dataset's etag
    dataset = bigquery.Dataset.from_api_repr({**patch.body, "datasetReference": {"projectId": PROJECT,
                                                                                  "datasetId": "silver"}})
    entries = {(e.role, e.entity_type, str(e.entity_id)) for e in dataset.access_entries}
    assert ("READER", "groupByEmail", "group:analysts@example.com".removeprefix("group:")) in entries
    assert ("READER", "userByEmail", "someone-else@example.com") in entries
    assert ("OWNER", "specialGroup", "projectOwners") in entries  # others' entries written back as read
    assert any(e.entity_type == "view" for e in dataset.access_entries)

    (project,) = fake.requests_to(f"/v3/projects/{PROJECT}:setIamPolicy")
    assert "updateMask" not in project.body  # bindings: the default mask (bindings, etag)


def test_a_concurrent_change_is_retried_from_a_fresh_read_never_overwritten(fake):
    p = provider(fake)
    key, role = TARGETS["pubsub_topic.orders-dlq"]
    fake.change_behind_the_back(key)

    p.create(binding("pubsub_topic.orders-dlq", ["group:analysts@example.com"]))

    assert len(fake.requests_to("orders-dlq:setIamPolicy")) == 2  # the first was ABORTED (stale etag)
    assert fake.members(key, "roles/viewer") == {"user:someone@example.com"}  # the concurrent change survives
    assert fake.members(key, role) == {OTHER, "group:analysts@example.com"}


@pytest.mark.parametrize("target", ["bigquery_dataset.silver", "storage_bucket.silver-b"])
def test_a_stale_etag_answered_412_is_retried_too(fake, target):
    p = provider(fake)
    key, role = TARGETS[target]
    fake.change_behind_the_back(key)

    p.create(binding(target, ["group:analysts@example.com"]))

    assert "group:analysts@example.com" in fake.members(key, role)
    writes = [r for r in fake.writes() if ("silver" in r.path)]
    assert len(writes) == 2
    if key.startswith("dataset:"):
        assert fake.members(key, role) >= {"user:someone@example.com", OTHER}
    else:
        assert fake.members(key, "roles/viewer") == {"user:someone@example.com"}


def test_additive_revokes_only_what_headwater_granted(fake):
    p = provider(fake)
    key, role = TARGETS["storage_bucket.silver-b"]
    first = binding("storage_bucket.silver-b", ["group:a@example.com", "group:b@example.com"])
    p.create(first)
    fake.policies[key]["bindings"].append({"role": role, "members": ["group:c@example.com"]})  # someone else

    (live,) = p.observe(Kind.IAM_BINDING)
    assert live.spec["members"] == ["group:a@example.com", "group:b@example.com"]  # c is not ours
    fewer = binding("storage_bucket.silver-b", ["group:a@example.com"])
    plan = reconcile([fewer], [live], immutable(p))
    (change,) = plan.changes
    assert change.action == Action.UPDATE and change.update_fields == ("members",)
    p.update(fewer, ["members"])

    assert fake.members(key, role) == {OTHER, "group:a@example.com", "group:c@example.com"}  # b revoked
    assert fake.ledger(LANDING)["bindings"][fewer.name]["members"] == ["group:a@example.com"]
    assert reconcile([fewer], p.observe(Kind.IAM_BINDING), immutable(p)).actionable == []

    # No longer declared: observed from the ledger (the planner's orphan); its delete revokes ours only.
    (orphan,) = p.observe(Kind.IAM_BINDING)
    assert [c.address for c in reconcile([], [orphan], immutable(p)).changes] == [orphan.address]
    p.delete(orphan)
    p.delete(orphan)  # gone already: success
    assert fake.members(key, role) == {OTHER, "group:c@example.com"}
    assert p.observe(Kind.IAM_BINDING) == []
    assert fake.ledger(LANDING)["bindings"] == {}


def test_a_member_removed_behind_headwaters_back_is_drift_put_back(fake):
    p = provider(fake)
    key, role = TARGETS["pubsub_subscription.orders-ingest"]
    desired = binding("pubsub_subscription.orders-ingest", ["serviceAgent:pubsub"])
    p.create(desired)
    for b in fake.policies[key]["bindings"]:
        if b["role"] == role and not b.get("condition"):
            b["members"] = [m for m in b["members"] if m != AGENT]

    (live,) = p.observe(Kind.IAM_BINDING)
    assert live.spec["members"] == []
    (change,) = reconcile([desired], [live], immutable(p)).changes
    assert change.action == Action.UPDATE
    p.update(desired, list(change.update_fields))
    assert AGENT in fake.members(key, role)


def test_exclusive_shows_every_live_member_and_removes_the_undeclared_only_through_a_plan(fake):
    p = provider(fake, protected=[RECONCILER])
    key, role = TARGETS["storage_bucket.silver-b"]
    desired = binding("storage_bucket.silver-b", ["group:a@example.com"], exclusive=True)

    p.create(desired)
    assert fake.members(key, role) == {OTHER, "group:a@example.com"}  # a create never removes

    (live,) = p.observe(Kind.IAM_BINDING)
    assert live.spec["members"] == ["group:a@example.com", OTHER]
    (change,) = reconcile([desired], [live], immutable(p)).changes
    assert change.action == Action.UPDATE  # the plan shows OTHER's removal ...
    p.update(desired, ["members"])
    assert fake.members(key, role) == {"group:a@example.com"}  # ... and apply does it

    fake.policies[key]["bindings"].append({"role": role, "members": [RECONCILER]})
    with pytest.raises(PermanentError, match="refusing to remove serviceAccount:headwater-apply"):
        p.update(desired, ["members"])
    assert RECONCILER in fake.members(key, role)
    fake.policies[key]["bindings"] = [{"role": role, "members": ["group:a@example.com", AGENT]}]
    with pytest.raises(PermanentError, match="service agents are never removed"):
        p.update(desired, ["members"])
    assert AGENT in fake.members(key, role)


def test_labels_only_update_rewrites_the_ledger_not_the_policy(fake):
    p = provider(fake)
    desired = binding("pubsub_topic.orders-dlq", ["group:a@example.com"])
    p.create(desired)
    writes = len(fake.writes())
    relabelled = dataclasses.replace(desired, labels={**LABELS, "headwater-source": "orders"})

    p.update(relabelled, ["labels"])

    assert len(fake.writes()) == writes
    assert p.observe(Kind.IAM_BINDING)[0].labels == relabelled.labels
    with pytest.raises(PermanentError, match="role cannot change in place"):
        p.update(relabelled, ["role"])


def test_the_ledger_is_written_with_generation_preconditions(fake):
    p = provider(fake)
    p.create(binding("pubsub_topic.orders-dlq", ["group:a@example.com"]))
    other = {"target": "storage_bucket.x", "role": "roles/storage.objectViewer", "members": ["group:z@example.com"],
             "exclusive": False, "labels": LABELS}
    fake.race_ledger(LANDING, {"name": "storage_bucket:x:roles/storage.objectViewer", "entry": other})

    p.create(binding("pubsub_subscription.orders-ingest", ["group:a@example.com"]))

    uploads = fake.requests_to(f"/upload/storage/v1/b/{LANDING}/o", "POST")
    assert [u.query["ifGenerationMatch"] for u in uploads][0] == "0"  # the first: must not exist yet
    assert len(uploads) == 3  # the second was refused (412) and retried from a fresh read
    assert set(fake.ledger(LANDING)["bindings"]) == {
        "pubsub_topic:orders-dlq:roles/pubsub.publisher", "storage_bucket:x:roles/storage.objectViewer",
        "pubsub_subscription:orders-ingest:roles/pubsub.subscriber"}


def test_observe_reads_each_target_once_and_the_project_number_once(fake):
    p = provider(fake)
    p.create(binding("pubsub_topic.orders-dlq", ["serviceAgent:pubsub"]))
    p.create(binding("pubsub_topic.orders-dlq", ["serviceAgent:storage"], role="roles/pubsub.viewer"))
    fresh = provider(fake)  # the next run

    live = fresh.observe(Kind.IAM_BINDING)

    assert {r.spec["members"][0] for r in live} == {"serviceAgent:pubsub", "serviceAgent:storage"}
    assert fresh.api_calls() == {"storage.download_ledger": 1, "pubsub.get_iam_policy": 1,
                                 "cloudresourcemanager.get_project": 1}
    assert fake.requests_to(f"/v3/projects/{PROJECT}", "GET")[-1].path == f"/v3/projects/{PROJECT}"


def test_service_agent_forms():
    assert agents.resolve("serviceAgent:pubsub", "42") == \
        "serviceAccount:service-42@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert agents.resolve("serviceAgent:storage", "42") == \
        "serviceAccount:service-42@gs-project-accounts.iam.gserviceaccount.com"
    assert agents.resolve("serviceAgent:datastream", "42") == \
        "serviceAccount:service-42@gcp-sa-datastream.iam.gserviceaccount.com"
    assert agents.resolve("serviceAgent:storagetransfer", "42") == \
        "serviceAccount:project-42@storage-transfer-service.iam.gserviceaccount.com"
    for service in agents.FORMS:
        assert agents.unresolve(agents.resolve(f"serviceAgent:{service}", "42"), "42") == f"serviceAgent:{service}"
    # Another project's agent is someone else's member, kept as its e-mail.
    assert agents.unresolve("serviceAccount:service-7@gcp-sa-pubsub.iam.gserviceaccount.com", "42") == \
        "serviceAccount:service-7@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert agents.resolve("group:a@example.com", "42") == "group:a@example.com"
    with pytest.raises(PermanentError, match="unknown service agent"):
        agents.resolve("serviceAgent:dataflow", "42")


def test_audit_config_is_written_with_its_mask_and_leaves_other_services_alone(fake):
    p = provider(fake)
    key = f"projects/{PROJECT}"
    fake.policies[key]["auditConfigs"] = [
        {"service": "storage.googleapis.com", "auditLogConfigs": [{"logType": "DATA_READ"}]},
        {"service": "bigquery.googleapis.com",
         "auditLogConfigs": [{"logType": "DATA_READ", "exemptedMembers": ["user:batch@example.com"]}]}]
    bindings_before = list(fake.policies[key]["bindings"])
    desired = Resource(Kind.PROJECT_AUDIT_CONFIG, "bigquery.googleapis.com",
                       {"log_types": ["ADMIN_READ", "DATA_READ", "DATA_WRITE"]}, LABELS)

    p.create(desired)

    (write,) = fake.requests_to(f"/v3/projects/{PROJECT}:setIamPolicy")
    request = json_format.ParseDict(write.body, iam_policy_pb2.SetIamPolicyRequest())
    assert list(request.update_mask.paths) == ["audit_configs", "etag"]
    assert write.body["updateMask"] == "auditConfigs,etag"
    assert request.policy.etag
    configs = {c["service"]: json_format.ParseDict(c, policy_pb2.AuditConfig())
               for c in fake.policies[key]["auditConfigs"]}  # (the client sends enums as numbers)
    assert configs["storage.googleapis.com"] == policy_pb2.AuditConfig(
        service="storage.googleapis.com", audit_log_configs=[policy_pb2.AuditLogConfig(log_type="DATA_READ")])
    bq = {c.log_type: list(c.exempted_members) for c in configs["bigquery.googleapis.com"].audit_log_configs}
    assert bq == {policy_pb2.AuditLogConfig.ADMIN_READ: [], policy_pb2.AuditLogConfig.DATA_WRITE: [],
                  policy_pb2.AuditLogConfig.DATA_READ: ["user:batch@example.com"]}  # DATA_READ's exemptions kept
    assert fake.policies[key]["bindings"] == bindings_before
    assert p.observe(Kind.PROJECT_AUDIT_CONFIG) == [desired]
    assert reconcile([desired], p.observe(Kind.PROJECT_AUDIT_CONFIG), immutable(p)).actionable == []

    p.delete(desired)
    assert [c["service"] for c in fake.policies[key]["auditConfigs"]] == ["storage.googleapis.com"]
    assert p.observe(Kind.PROJECT_AUDIT_CONFIG) == []


def test_a_missing_policy_tag_is_named(fake):
    p = provider(fake)
    with pytest.raises(PermanentError, match="no policy tag of that taxonomy and display name"):
        p.create(binding("datacatalog_policy_tag.headwater-dev/secret", ["group:a@example.com"],
                         role="roles/datacatalog.categoryFineGrainedReader"))


def test_policy_tags_resolve_through_the_shared_tag_directory_without_listing_again(fake):
    # build_providers hands the IAM provider the catalog's tag directory (DataCatalogProvider.tag_id),
    # which the data and column policies share: no ListTaxonomies/ListPolicyTags of its own.
    tag, role = TARGETS["datacatalog_policy_tag.headwater-dev/pii"]
    asked: list[str] = []
    p = provider(fake, policy_tag_id=lambda name: asked.append(name) or {"headwater-dev/pii": tag}.get(name))

    p.create(binding("datacatalog_policy_tag.headwater-dev/pii", ["group:a@example.com"]))

    assert asked and set(asked) == {"headwater-dev/pii"}
    assert "group:a@example.com" in {m for b in fake.policies[tag]["bindings"] if b["role"] == role
                                     for m in b["members"]}
    assert not {k for k in p.api_calls() if "list_" in k}, p.api_calls()
    with pytest.raises(PermanentError, match="no policy tag of that taxonomy and display name"):
        p.create(binding("datacatalog_policy_tag.headwater-dev/secret", ["group:a@example.com"], role=role))


def test_build_providers_wires_the_catalogs_tag_directory_into_iam(monkeypatch):
    import providers

    for var in providers.EMULATOR_VARS:
        monkeypatch.delenv(var, raising=False)
    built = providers.build_providers(PROJECT, REGION, runner="local")
    iam = next(p for p in built if isinstance(p, IamProvider))
    catalog = next(p for p in built if hasattr(p, "tag_id"))
    assert iam.adapters["datacatalog_policy_tag"]._resolve == catalog.tag_id
