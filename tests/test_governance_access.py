"""Governance (issue 13): the grants compiled for desired_state/, the least-privilege roles of
declared service accounts, the service agents', exclusive bindings, audit configs; every bad
governance input reported at file:line with nothing touched; the plan's security changes (golden
files) and the refusal of an exclusive that would remove headwater's own grants."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from golden import check_golden
from helpers import EXAMPLE, copy_example, edit_yaml

from providers.memory import MemoryProvider
from reconciler import cli
from reconciler.compile import compile_resources
from reconciler.engine import Engine
from reconciler.governance import reconciler_member
from reconciler.load import InvalidDesiredState, load_repo
from reconciler.plan import Action, PlanOptions, reconcile
from reconciler.render import render
from reconciler.resources import Kind, Resource

ENGINEERS = "group:data-engineers@example.com"
ANALYSTS = "group:analysts@example.com"
BI = "serviceAccount:looker@headwater-demo.iam.gserviceaccount.com"
LANDING = "landing-headwater-demo-europe-west1"
BRONZE_BUCKET = "bronze-headwater-demo-europe-west1"
SILVER_BUCKET = "silver-headwater-demo-europe-west1"
RAW_ONLY = "a table-level read instead of the Bronze dataset"


@pytest.fixture(scope="module")
def example():
    return compile_resources(load_repo(EXAMPLE))


def bindings(resources) -> dict[str, Resource]:
    return {r.name: r for r in resources if r.kind == Kind.IAM_BINDING}


# --------------------------------------------------------------------------- desired_state/'s grants

EXAMPLE_GRANTS = [
    # (binding name, members, a phrase of its reason or None)
    ("bigquery_dataset:bronze:roles/bigquery.dataViewer", [ENGINEERS], "only the engineers tier reads the whole zone"),
    ("storage_bucket:bronze-headwater-demo-europe-west1:roles/storage.objectViewer", [ENGINEERS],
     "only the engineers tier reads the whole zone"),
    ("bigquery_dataset:silver:roles/bigquery.dataViewer", [ANALYSTS, ENGINEERS], None),
    ("storage_bucket:silver-headwater-demo-europe-west1:roles/storage.objectViewer", [ANALYSTS, ENGINEERS], None),
    ("bigquery_dataset:gold:roles/bigquery.dataViewer", [ANALYSTS, ENGINEERS, BI], None),
    ("bigquery_dataset:reporting:roles/bigquery.dataViewer", [ANALYSTS, ENGINEERS, BI], None),
    ("bigquery_dataset:features:roles/bigquery.dataViewer", [ANALYSTS, ENGINEERS, BI], None),
    # Bronze's other readers read the raw tables of sources without classified columns only.
    ("bigquery_table:bronze.clickstream_raw:roles/bigquery.dataViewer", [ANALYSTS], RAW_ONLY),
    ("bigquery_table:bronze.payments_raw:roles/bigquery.dataViewer", [ANALYSTS], RAW_ONLY),
    ("bigquery_table:bronze.postgres_orders_orders_changes:roles/bigquery.dataViewer", [ANALYSTS], RAW_ONLY),
    # orders' own access block
    ("bigquery_table:silver.orders:roles/bigquery.dataViewer", ["group:sales-ops@example.com"], "access.readers"),
    ("bigquery_table:gold.orders_daily:roles/bigquery.dataViewer", ["group:sales-ops@example.com"], "access.readers"),
    ("pubsub_topic:orders:roles/pubsub.publisher",
     ["serviceAccount:shop-exporter@headwater-demo.iam.gserviceaccount.com"], "access.publishers"),
    # The Pub/Sub service agent: dead-lettering of every ingest subscription.
    ("pubsub_subscription:orders-ingest:roles/pubsub.subscriber", ["serviceAgent:pubsub"], "dead-lettering"),
    ("pubsub_topic:orders-dlq:roles/pubsub.publisher", ["serviceAgent:pubsub"], "dead-lettering"),
    ("pubsub_subscription:postgres_orders-ingest:roles/pubsub.subscriber", ["serviceAgent:pubsub"], "dead-lettering"),
    ("pubsub_topic:shipments-dlq:roles/pubsub.publisher", ["serviceAgent:pubsub"], "dead-lettering"),
    # Datastream writes the CDC source's event files into the landing bucket.
    (f"storage_bucket:{LANDING}:roles/storage.objectAdmin", ["serviceAgent:datastream"], "Datastream"),
    (f"storage_bucket:{LANDING}:roles/storage.legacyBucketReader", ["serviceAgent:datastream"], "Datastream"),
]


@pytest.mark.parametrize(("name", "members", "why"), EXAMPLE_GRANTS, ids=[g[0] for g in EXAMPLE_GRANTS])
def test_the_example_grants(example, name, members, why):
    binding = bindings(example)[name]
    assert binding.spec["members"] == members
    kind, target, role = name.split(":", 2)
    assert binding.spec == {"target": f"{kind}.{target}", "role": role, "members": members, "exclusive": False}
    assert binding.depends_on == (f"{kind}.{target}",)
    assert (why in binding.options.get("why", "")) if why else not binding.options
    assert binding.labels["managed-by"] == "headwater"


def test_orders_raw_table_is_read_by_the_engineers_tier_only(example):
    # orders has a classified column: nobody gets a table-level read of its raw table, and Bronze as
    # a whole (dataset and bucket) is read by the engineers' tier only.
    granted = bindings(example)
    assert not any(name.startswith("bigquery_table:bronze.orders_raw:") for name in granted)
    readers = {m for name, b in granted.items() if name.startswith(("bigquery_dataset:bronze:", "storage_bucket:bronze"))
               for m in b.spec["members"]}
    assert readers == {ENGINEERS}


def test_no_service_account_grants_when_none_is_declared(example):
    # The example declares no dataflow/connectors/api service account: they run as the Compute
    # Engine default account, which headwater grants nothing (docs/governance.md).
    members = {m for b in bindings(example).values() for m in b.spec["members"]}
    assert not any(m.startswith("serviceAccount:") and m != BI and "shop-exporter" not in m for m in members)
    assert not any(b.spec["target"].startswith("project.") for b in bindings(example).values())


def test_audit_logs_compile_to_the_project_audit_configs(example):
    configs = {r.name: r.spec for r in example if r.kind == Kind.PROJECT_AUDIT_CONFIG}
    assert configs == {service: {"log_types": ["ADMIN_READ", "DATA_READ", "DATA_WRITE"]}
                       for service in ("bigquery.googleapis.com", "storage.googleapis.com")}


def _compiled(tmp_path: Path, platform_change=None, orders_change=None, schema_change=None) -> list[Resource]:
    repo = copy_example(tmp_path)
    if platform_change:
        edit_yaml(repo / "platform.yaml", platform_change)
    if orders_change:
        edit_yaml(repo / "connectors" / "orders.yaml", orders_change)
    if schema_change:
        path = repo / "schemas" / "orders.json"
        data = json.loads(path.read_text())
        schema_change(data)
        path.write_text(json.dumps(data, indent=2))
    return compile_resources(load_repo(repo))


def test_audit_logs_off_compiles_none(tmp_path):
    resources = _compiled(tmp_path, lambda d: d.update(audit_logs=False))
    assert not [r for r in resources if r.kind == Kind.PROJECT_AUDIT_CONFIG]


def test_without_classified_columns_bronze_readers_read_the_whole_zone(tmp_path):
    def unclassify(data):
        for field in data["fields"]:
            field.pop("classification", None)

    granted = bindings(_compiled(tmp_path, schema_change=unclassify))
    assert granted["bigquery_dataset:bronze:roles/bigquery.dataViewer"].spec["members"] == [ANALYSTS, ENGINEERS]
    # The plan says why the whole zone is open again (the last classification was removed).
    why = "no source has classified columns any more: Bronze readers read the whole zone"
    for name in ("bigquery_dataset:bronze:roles/bigquery.dataViewer",
                 f"storage_bucket:{BRONZE_BUCKET}:roles/storage.objectViewer"):
        assert granted[name].options.get("why") == why
        change = reconcile([granted[name]], [], {}, PlanOptions()).changes[0]
        assert change.security_summary.endswith(" — " + why), change.security_summary
    assert granted[f"storage_bucket:{BRONZE_BUCKET}:roles/storage.objectViewer"].spec["members"] == [ANALYSTS,
                                                                                                     ENGINEERS]
    assert not any(name.startswith("bigquery_table:bronze.") for name in granted)


def test_zone_defaults_are_the_seed_tiers_that_are_declared(tmp_path):
    def defaults(data):
        data["access"]["zones"] = {}
        del data["access"]["tiers"]["bi"]

    granted = bindings(_compiled(tmp_path, defaults))
    assert granted["bigquery_dataset:gold:roles/bigquery.dataViewer"].spec["members"] == [ANALYSTS, ENGINEERS]
    assert granted["bigquery_dataset:silver:roles/bigquery.dataViewer"].spec["members"] == [ANALYSTS, ENGINEERS]
    assert granted["bigquery_dataset:bronze:roles/bigquery.dataViewer"].spec["members"] == [ENGINEERS]
    assert not any(name.startswith(f"storage_bucket:{LANDING}:roles/storage.objectViewer") for name in granted)


def test_zone_bindings_go_to_the_dataset_or_the_bucket_by_role(tmp_path):
    def more(data):
        data["access"]["zones"]["silver"]["bindings"] = {
            "roles/bigquery.dataEditor": ["engineers"], "roles/storage.objectAdmin": ["user:ana@example.com"],
            "projects/headwater-demo/roles/silverAuditor": ["group:audit@example.com"]}

    granted = bindings(_compiled(tmp_path, more))
    assert granted["bigquery_dataset:silver:roles/bigquery.dataEditor"].spec["members"] == [ENGINEERS]
    assert granted[f"storage_bucket:{SILVER_BUCKET}:roles/storage.objectAdmin"].spec["members"] == [
        "user:ana@example.com"]
    assert "bigquery_dataset:silver:roles/storage.objectAdmin" not in granted
    for target in ("bigquery_dataset:silver", f"storage_bucket:{SILVER_BUCKET}"):  # a custom role: both
        assert granted[f"{target}:projects/headwater-demo/roles/silverAuditor"].spec["members"] == [
            "group:audit@example.com"]


def test_exclusive_sets_the_zone_bindings_exclusive_only(tmp_path):
    granted = bindings(_compiled(tmp_path, lambda d: d["access"].update(exclusive=True)))
    exclusive = {name for name, b in granted.items() if b.spec["exclusive"]}
    assert "bigquery_dataset:silver:roles/bigquery.dataViewer" in exclusive
    assert f"storage_bucket:{LANDING}:roles/storage.objectAdmin" in exclusive
    assert "bigquery_table:silver.orders:roles/bigquery.dataViewer" not in exclusive
    assert "pubsub_topic:orders-dlq:roles/pubsub.publisher" not in exclusive


WORKER = "serviceAccount:dataflow-workers@headwater-demo.iam.gserviceaccount.com"
CONNECTORS = "serviceAccount:connectors@headwater-demo.iam.gserviceaccount.com"
API = "serviceAccount:data-api@headwater-demo.iam.gserviceaccount.com"

SERVICE_ACCOUNT_GRANTS = [
    # (binding name, member): what each job or service reads and writes, nothing more.
    ("project:headwater-demo:roles/dataflow.worker", WORKER),
    ("project:headwater-demo:roles/bigquery.jobUser", WORKER),
    ("pubsub_subscription:orders-ingest:roles/pubsub.subscriber", WORKER),
    ("pubsub_subscription:orders-ingest:roles/pubsub.viewer", WORKER),
    ("pubsub_topic:orders-dlq:roles/pubsub.publisher", WORKER),
    ("bigquery_dataset:bronze:roles/bigquery.dataEditor", WORKER),
    ("bigquery_dataset:silver:roles/bigquery.dataEditor", WORKER),
    ("bigquery_dataset:gold:roles/bigquery.dataEditor", WORKER),
    ("bigquery_dataset:features:roles/bigquery.dataEditor", WORKER),
    (f"storage_bucket:{LANDING}:roles/storage.objectAdmin", WORKER),
    (f"storage_bucket:{BRONZE_BUCKET}:roles/storage.objectAdmin", WORKER),
    ("pubsub_topic:payments:roles/pubsub.publisher", CONNECTORS),
    ("pubsub_topic:payments-dlq:roles/pubsub.publisher", CONNECTORS),
    ("pubsub_topic:shipments:roles/pubsub.publisher", CONNECTORS),
    ("bigquery_dataset:api:roles/bigquery.dataViewer", API),
    ("project:headwater-demo:roles/bigquery.jobUser", API),
]


@pytest.fixture(scope="module")
def with_accounts(tmp_path_factory):
    def accounts(data):
        data["dataflow"] = {"service_account": WORKER.split(":", 1)[1]}
        data["connectors"] = {"service_account": CONNECTORS.split(":", 1)[1]}
        data["api"]["service_account"] = API.split(":", 1)[1]

    return bindings(_compiled(tmp_path_factory.mktemp("accounts"), accounts))


@pytest.mark.parametrize(("name", "member"), SERVICE_ACCOUNT_GRANTS, ids=[f"{g[0]}-{g[1][15:20]}" for g in
                                                                           SERVICE_ACCOUNT_GRANTS])
def test_declared_service_accounts_get_the_roles_their_jobs_need(with_accounts, name, member):
    assert member in with_accounts[name].spec["members"]


def test_service_accounts_get_nothing_else(with_accounts):
    expected = {(name, member) for name, member in SERVICE_ACCOUNT_GRANTS}
    granted = {(name, m) for name, b in with_accounts.items() for m in b.spec["members"] if m in (WORKER, CONNECTORS,
                                                                                                API)}
    extra = granted - expected
    # Every other grant is one of the same kind on another source's topic or subscription, or the
    # workers' clear read of the classified columns their jobs copy (reconciler/classification.py).
    assert all(name.split(":")[0] in ("pubsub_subscription", "pubsub_topic") or (
        member == WORKER and name.endswith(":roles/datacatalog.categoryFineGrainedReader")) for name, member in extra), \
        sorted(extra)
    # An editor of a dataset is not also listed as its reader (the gold jobs read Silver).
    assert WORKER not in with_accounts["bigquery_dataset:silver:roles/bigquery.dataViewer"].spec["members"]
    # The worker never reads the api dataset, the connectors never BigQuery, the API never Pub/Sub.
    assert not any(m == CONNECTORS and not name.startswith("pubsub_topic:") for name, m in granted)
    assert not any(m == API and name.startswith("pubsub") for name, m in granted)


# --------------------------------------------------------------------------- bad input


def platform(change):
    return lambda repo: edit_yaml(repo / "platform.yaml", change)


def orders(change):
    return lambda repo: edit_yaml(repo / "connectors" / "orders.yaml", change)


def orders_schema(change):
    def mutate(repo: Path) -> None:
        path = repo / "schemas" / "orders.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data, indent=2))

    return mutate


def _field(data, name):
    return next(f for f in data["fields"] if f["name"] == name)


BAD = [
    # (id, mutation, file, text on the offending line, field, message)
    ("member-without-kind", platform(lambda d: d["access"]["tiers"].update(analysts=["analysts@example.com"])),
     "platform.yaml", "analysts@example.com", "access.tiers.analysts[0]",
     "'analysts@example.com' is not an IAM member: expected user:NAME@DOMAIN, group:NAME@DOMAIN"),
    ("member-not-an-email", platform(lambda d: d["access"]["tiers"].update(bi=["user:ana"])),
     "platform.yaml", "user:ana", "access.tiers.bi[0]", "'user:ana': 'ana' is not an e-mail address"),
    ("member-service-account-shape",
     platform(lambda d: d["access"]["tiers"].update(bi=["serviceAccount:looker@example.com"])),
     "platform.yaml", "looker@example.com", "access.tiers.bi[0]", "is not a service account e-mail"),
    ("member-all-users", platform(lambda d: d["access"]["zones"]["gold"].update(readers=["bi", "allUsers"])),
     "platform.yaml", "allUsers", "access.zones.gold.readers[1]",
     "allUsers is refused: it would make the platform's data readable by anyone on the internet"),
    ("member-all-authenticated",
     platform(lambda d: d["classifications"]["pii"].update(readers=["allAuthenticatedUsers"])),
     "platform.yaml", "allAuthenticatedUsers", "classifications.pii.readers[0]",
     "readable by every Google account"),
    ("role-not-predefined",
     platform(lambda d: d["access"]["zones"]["silver"].update(bindings={"roles/bigquery.dataviewer": ["analysts"]})),
     "platform.yaml", "roles/bigquery.dataviewer", "access.zones.silver.bindings.roles/bigquery.dataviewer",
     "'roles/bigquery.dataviewer' is not a GCP predefined role (did you mean 'roles/bigquery.dataViewer'?)"),
    ("role-invented",
     platform(lambda d: d["access"]["zones"]["silver"].update(bindings={"roles/bigquery.superReader": ["analysts"]})),
     "platform.yaml", "roles/bigquery.superReader", "access.zones.silver.bindings.roles/bigquery.superReader",
     "is not a GCP predefined role"),
    ("custom-role-bad-form",
     platform(lambda d: d["access"]["zones"]["silver"].update(bindings={"projects/x/roles/r": ["analysts"]})),
     "platform.yaml", "projects/x/roles/r", "access.zones.silver.bindings.projects/x/roles/r",
     "is not a custom role name: expected projects/<project>/roles/<id>"),
    ("role-not-for-the-zone",
     platform(lambda d: d["access"]["zones"]["gold"].update(bindings={"roles/storage.objectAdmin": ["engineers"]})),
     "platform.yaml", "roles/storage.objectAdmin", "access.zones.gold.bindings.roles/storage.objectAdmin",
     "roles/storage.objectAdmin is a Cloud Storage role and the gold zone has no bucket"),
    ("role-of-another-service",
     platform(lambda d: d["access"]["zones"]["silver"].update(bindings={"roles/pubsub.publisher": ["engineers"]})),
     "platform.yaml", "roles/pubsub.publisher", "access.zones.silver.bindings.roles/pubsub.publisher",
     "cannot be granted on the silver zone's dataset and bucket"),
    ("role-project-level-only",
     platform(lambda d: d["access"]["zones"]["silver"].update(bindings={"roles/bigquery.jobUser": ["engineers"]})),
     "platform.yaml", "roles/bigquery.jobUser", "access.zones.silver.bindings.roles/bigquery.jobUser",
     "roles/bigquery.jobUser cannot be granted on a dataset (it is granted on a project; it would fail at apply)"),
    ("role-project-level-only-storage",
     platform(lambda d: d["access"]["zones"]["bronze"].update(bindings={"roles/storage.hmacKeyAdmin": ["engineers"]})),
     "platform.yaml", "roles/storage.hmacKeyAdmin", "access.zones.bronze.bindings.roles/storage.hmacKeyAdmin",
     "roles/storage.hmacKeyAdmin cannot be granted on a bucket"),
    ("unknown-tier", platform(lambda d: d["access"]["zones"]["silver"].update(readers=["engineers", "analyst"])),
     "platform.yaml", "- analyst", "access.zones.silver.readers[1]",
     "unknown tier 'analyst' (did you mean 'analysts'?): access.tiers in platform.yaml declares analysts, bi, "
     "engineers"),
    ("unknown-tier-of-a-class", platform(lambda d: d["classifications"]["pii"].update(readers=["enginers"])),
     "platform.yaml", "enginers", "classifications.pii.readers[0]", "unknown tier 'enginers' (did you mean "
     "'engineers'?)"),
    ("unknown-tier-of-a-source", orders(lambda d: d["access"].update(readers=["sales"])),
     "connectors/orders.yaml", "- sales", "access.readers[0]", "unknown tier 'sales'"),
    ("bad-masking", platform(lambda d: d["classifications"]["pii"].update(masking="md5")),
     "platform.yaml", "md5", "classifications.pii.masking", "masking 'md5' is not one BigQuery applies"),
    ("classification-not-defined",
     orders_schema(lambda d: _field(d, "customer_email").update(classification="secret")),
     "schemas/orders.json", '"secret"', "fields[2].classification",
     "classification 'secret' of silver.orders/customer_email is not defined: platform.yaml's classifications "
     "declare pii"),
    ("nested-classification-not-defined",
     orders_schema(lambda d: _field(d, "items")["fields"][0].update(policy_tag="piii")),
     "schemas/orders.json", '"piii"', "fields[6].fields[0].policy_tag",
     "classification 'piii' of silver.orders/items.sku is not defined (did you mean 'pii'?)"),
    ("classification-on-a-record", orders_schema(lambda d: (_field(d, "customer_email").pop("classification"),
                                                            _field(d, "items").update(classification="pii"))),
     "schemas/orders.json", '"classification"', "fields[6].classification",
     "BigQuery puts policy tags on leaf columns only"),
    ("classification-and-policy-tag-differ",
     orders_schema(lambda d: _field(d, "customer_email").update(policy_tag="sensitive")),
     "schemas/orders.json", '"sensitive"', "fields[2].policy_tag", "they are the same setting, give one"),
    ("classify-a-missing-field", orders(lambda d: d.update(classify={"customer_mail": "pii"})),
     "connectors/orders.yaml", "customer_mail", "classify.customer_mail",
     "policy tag on a field that does not exist: 'customer_mail' is not a field of schemas/orders.json "
     "(did you mean 'customer_email'?)"),
    ("classify-a-missing-nested-field", orders(lambda d: d.update(classify={"items.price": "pii"})),
     "connectors/orders.yaml", "items.price", "classify.items.price", "policy tag on a field that does not exist"),
    ("classify-a-missing-nested-field-suggests-a-leaf", orders(lambda d: d.update(classify={"items.skuu": "pii"})),
     "connectors/orders.yaml", "items.skuu", "classify.items.skuu",
     "'items.skuu' is not a field of schemas/orders.json (did you mean 'items.sku'?)"),
    ("classify-conflicts-with-the-schema-files-class",
     lambda repo: (platform(lambda d: d["classifications"].update(fin={"masking": "always_null"}))(repo),
                   orders(lambda d: d.update(classify={"customer_email": "fin"}))(repo)),
     "connectors/orders.yaml", "customer_email: fin", "classify.customer_email",
     "classify 'customer_email': 'fin' conflicts with classification 'pii' of 'customer_email' in "
     "schemas/orders.json"),
    ("classify-an-undefined-class", orders(lambda d: d.update(classify={"customer_id": "confidential"})),
     "connectors/orders.yaml", "customer_id: confidential", "classify.customer_id",
     "classification 'confidential' of silver.orders/customer_id is not defined"),
    ("classify-a-cdc-table-that-is-not-streamed",
     lambda repo: edit_yaml(repo / "connectors" / "postgres_orders.yaml",
                            lambda d: d.update(classify={"invoices.email": "pii"})),
     "connectors/postgres_orders.yaml", "invoices.email", "classify.invoices.email",
     "a database_cdc source's entries are <table>.<field path>, <table> one of customers, order_items, orders"),
    ("classify-a-cdc-field-that-does-not-exist",
     lambda repo: edit_yaml(repo / "connectors" / "postgres_orders.yaml",
                            lambda d: d.update(classify={"customers.mail": "pii"})),
     "connectors/postgres_orders.yaml", "customers.mail", "classify.customers.mail",
     "policy tag on a field that does not exist: 'mail' is not a field of schemas/postgres_orders.customers.json"),
    ("publishers-on-another-projects-topic",
     lambda repo: edit_yaml(repo / "connectors" / "clickstream.yaml", lambda d: (
         d["ingestion"].update(pubsub_topic="projects/shared-events-prod/topics/web-events"),
         d.update(access={"publishers": ["group:web@example.com"]}))),
     "connectors/clickstream.yaml", "publishers", "access.publishers",
     "the topic projects/shared-events-prod/topics/web-events is another project's"),
    # Governance switches are strict booleans: no "yes" or 1 coerced to true.
    ("exclusive-not-a-boolean", platform(lambda d: d["access"].update(exclusive="yes")),
     "platform.yaml", "exclusive: 'yes'", "access.exclusive", "'yes' is not a boolean: write true or false"),
    ("audit-logs-not-a-boolean", platform(lambda d: d.update(audit_logs=1)),
     "platform.yaml", "audit_logs: 1", "audit_logs", "1 is not a boolean: write true or false"),
    ("unknown-access-key", platform(lambda d: d["access"].update(exclusiv=True)),
     "platform.yaml", "exclusiv: true", "access.exclusiv", "unknown key 'exclusiv' (did you mean 'exclusive'?)"),
]


@pytest.mark.parametrize(("mutate", "file", "marker", "field", "message"), [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_governance_input_is_reported_at_its_line_and_nothing_is_touched(tmp_path, mutate, file, marker, field,
                                                                              message, monkeypatch, capsys):
    repo = copy_example(tmp_path)
    mutate(repo)
    text = (repo / file).read_text().splitlines()
    line = next((n for n, content in enumerate(text, 1) if content.strip() == marker), None) or next(
        n for n, content in enumerate(text, 1) if marker in content)

    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    problems = [str(p) for p in raised.value.problems]
    assert any(p.startswith(f"{file}:{line}:") and f" {field}: " in p and message in p for p in problems), problems

    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    assert provider.calls == {} and provider.objects == {}
    assert "nothing was changed" in capsys.readouterr().err


def test_a_custom_role_and_every_member_form_are_accepted(tmp_path):
    def forms(data):
        data["access"]["tiers"]["partners"] = ["domain:partner.example.com", "user:ana@partner.example.com",
                                              "serviceAccount:etl-loader@other-project.iam.gserviceaccount.com"]
        data["access"]["zones"]["gold"]["bindings"] = {"organizations/123456/roles/goldAuditor": ["partners"]}

    granted = bindings(_compiled(tmp_path, forms))
    assert granted["bigquery_dataset:gold:organizations/123456/roles/goldAuditor"].spec["members"] == [
        "domain:partner.example.com", "serviceAccount:etl-loader@other-project.iam.gserviceaccount.com",
        "user:ana@partner.example.com"]


def test_member_emails_are_case_normalized_and_deduplicated(tmp_path):
    # IAM compares e-mails without case (terraform-provider-google#3880): two spellings of one
    # group are one member, in lower case, and the prefix (serviceAccount:) stays as written.
    def cases(data):
        data["access"]["tiers"]["analysts"] = ["group:Analysts@Example.com", "group:analysts@example.com"]
        data["access"]["tiers"]["bi"] = ["serviceAccount:Looker@headwater-demo.iam.gserviceaccount.com"]
        data["access"]["zones"]["gold"]["bindings"] = {"roles/bigquery.dataEditor": ["domain:Partner.Example.com"]}

    repo = copy_example(tmp_path)
    edit_yaml(repo / "platform.yaml", cases)
    state = load_repo(repo)
    assert state.platform.access.tiers["analysts"] == [ANALYSTS]
    assert state.platform.access.tiers["bi"] == [BI]
    granted = bindings(compile_resources(state))
    assert granted["bigquery_dataset:silver:roles/bigquery.dataViewer"].spec["members"] == [ANALYSTS, ENGINEERS]
    assert granted["bigquery_dataset:gold:roles/bigquery.dataEditor"].spec["members"] == ["domain:partner.example.com"]


def test_a_service_agent_is_a_member_form_in_tiers_readers_and_bindings(tmp_path):
    def agents(data):
        data["access"]["tiers"]["transfer"] = ["serviceAgent:storagetransfer"]
        data["access"]["zones"]["silver"]["bindings"] = {"roles/storage.objectViewer": ["transfer"],
                                                         "roles/bigquery.dataViewer": ["serviceAgent:datastream"]}

    granted = bindings(_compiled(tmp_path, agents))
    assert "serviceAgent:storagetransfer" in granted[
        f"storage_bucket:{SILVER_BUCKET}:roles/storage.objectViewer"].spec["members"]
    assert "serviceAgent:datastream" in granted["bigquery_dataset:silver:roles/bigquery.dataViewer"].spec["members"]


def test_an_unknown_service_agent_is_refused_naming_the_known_ones(tmp_path):
    repo = copy_example(tmp_path)
    edit_yaml(repo / "platform.yaml",
              lambda d: d["access"]["zones"]["silver"].update(readers=["engineers", "serviceAgent:dataflow"]))
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    assert any("access.zones.silver.readers[1]: 'serviceAgent:dataflow': 'dataflow' is not a service agent headwater "
               "resolves: serviceAgent:pubsub, serviceAgent:storage, serviceAgent:datastream, "
               "serviceAgent:storagetransfer" in str(p) for p in raised.value.problems), raised.value.problems


def test_the_service_agent_forms_agree_with_the_iam_provider():
    from providers.iam.agents import FORMS
    from reconciler.governance import SERVICE_AGENT_SERVICES

    assert set(SERVICE_AGENT_SERVICES) == set(FORMS)


# --------------------------------------------------------------------------- plan time: exclusive


def test_exclusive_refuses_to_remove_headwaters_own_identity_or_a_service_agent(tmp_path, monkeypatch, capsys):
    repo = copy_example(tmp_path)
    edit_yaml(repo / "platform.yaml", lambda d: d["access"].update(exclusive=True))
    state = load_repo(repo)
    own = reconciler_member(state.platform)
    assert own == "serviceAccount:headwater-apply@headwater-demo.iam.gserviceaccount.com"
    provider = MemoryProvider()
    for resource in compile_resources(state):
        provider.objects[resource.address] = resource
    silver = "iam_binding.bigquery_dataset:silver:roles/bigquery.dataViewer"
    live = provider.objects[silver]
    provider.objects[silver] = replace(live, spec={**live.spec, "members": sorted(
        [*live.spec["members"], own, "user:someone-else@example.com", "serviceAgent:storagetransfer"])})
    before = dict(provider.objects)
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))

    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    err = capsys.readouterr().err
    line = next(n for n, text in enumerate((repo / "platform.yaml").read_text().splitlines(), 1)
                if text.strip().startswith("exclusive:"))
    assert f"platform.yaml:{line}:" in err and "access.exclusive: exclusive would remove " + own in err
    assert "serviceAgent:storagetransfer, a service agent, from roles/bigquery.dataViewer on bigquery_dataset.silver" \
        in err
    assert ("declare serviceAgent:storagetransfer in access.zones.silver.bindings under roles/bigquery.dataViewer or "
            "set access.exclusive: false") in err
    assert "someone-else" not in err  # removing a member someone added is what exclusive is for
    assert "nothing was changed" in err
    assert provider.objects == before
    assert not any(call in provider.calls for call in ("memory.create", "memory.update", "memory.delete"))

    # The advice is true: declared there (a member form bindings accept), the agent is kept.
    edit_yaml(repo / "platform.yaml", lambda d: d["access"]["zones"]["silver"].update(
        bindings={"roles/bigquery.dataViewer": ["serviceAgent:storagetransfer", own]}))
    assert cli.main(["plan", "--repo", str(repo)]) in (0, 2), capsys.readouterr().err
    err = capsys.readouterr()
    assert "exclusive would remove" not in err.err + err.out


def test_exclusive_removes_other_members_and_the_plan_says_so(tmp_path):
    repo = copy_example(tmp_path)
    edit_yaml(repo / "platform.yaml", lambda d: d["access"].update(exclusive=True))
    state = load_repo(repo)
    provider = MemoryProvider()
    for resource in compile_resources(state):
        provider.objects[resource.address] = resource
    silver = "iam_binding.bigquery_dataset:silver:roles/bigquery.dataViewer"
    live = provider.objects[silver]
    provider.objects[silver] = replace(live, spec={**live.spec, "members": [*live.spec["members"],
                                                                            "user:someone-else@example.com"]})
    plan = Engine([provider]).plan(state)
    change = next(c for c in plan.changes if c.address == silver)
    assert change.action == Action.UPDATE and change.security
    assert change.security_summary == ("revokes roles/bigquery.dataViewer on dataset silver from "
                                       "user:someone-else@example.com")


# --------------------------------------------------------------------------- the plan's security changes

LABELS = {"managed-by": "headwater", "headwater-platform": "dev"}


def _binding(target: str, role: str, members: list[str], exclusive: bool = False, why: str | None = None) -> Resource:
    kind, _, name = target.partition(".")
    return Resource(Kind.IAM_BINDING, f"{kind}:{name}:{role}",
                    {"target": target, "role": role, "members": sorted(members), "exclusive": exclusive}, LABELS,
                    depends_on=(target,), deletion_protection=False, options={"why": why} if why else {})


def security_plan():
    """A pull request that adds a reader to Silver, declassifies orders' customer_email (its column
    policy goes: the column becomes readable by every Silver reader), drops a source's publisher
    (an orphan binding: revoked without --prune), turns on audit logs and makes the webhook public."""
    silver = _binding("bigquery_dataset.silver", "roles/bigquery.dataViewer", [ANALYSTS, ENGINEERS,
                                                                               "group:finance@example.com"])
    dlq = _binding("pubsub_topic.orders-dlq", "roles/pubsub.publisher", ["serviceAgent:pubsub"],
                   why="dead-lettering of orders-ingest: Pub/Sub forwards undeliverable messages as its service agent")
    raw = _binding("bigquery_table.bronze.clickstream_raw", "roles/bigquery.dataViewer", [ANALYSTS],
                   why=RAW_ONLY + ": orders has classified columns, whose raw records only the engineers tier reads")
    old_publisher = _binding("pubsub_topic.orders", "roles/pubsub.publisher", ["serviceAccount:old-exporter@"
                                                                               "headwater-demo.iam.gserviceaccount.com"])
    column = Resource(Kind.BIGQUERY_COLUMN_POLICY, "silver.orders/customer_email",
                      {"policy_tags": ["headwater-dev/pii"]}, LABELS)
    audit = Resource(Kind.PROJECT_AUDIT_CONFIG, "bigquery.googleapis.com",
                     {"log_types": ["ADMIN_READ", "DATA_READ", "DATA_WRITE"]}, LABELS)
    webhook = Resource(Kind.CLOUD_RUN_SERVICE, "shipments-connector", {"image": "img:1", "public": True},
                       {**LABELS, "headwater-source": "shipments"})
    topic = Resource(Kind.PUBSUB_TOPIC, "orders", {}, {**LABELS, "headwater-source": "orders"})
    table = Resource(Kind.BIGQUERY_TABLE, "silver.orders", {}, {**LABELS, "headwater-source": "orders"})
    desired = [silver, dlq, raw, audit, webhook, topic, table]
    live = [replace(silver, spec={**silver.spec, "members": [ANALYSTS, ENGINEERS]}), dlq, old_publisher, column,
            replace(webhook, spec={**webhook.spec, "public": False}), topic, table]
    return reconcile(desired, live, {}, PlanOptions(environment="dev", max_delete_fraction=1),
                     revision="0123456789abcdef" * 2)


@pytest.mark.parametrize(("fmt", "suffix"), [("text", "txt"), ("json", "json"), ("markdown", "md")])
def test_security_plan_matches_golden(fmt, suffix):
    check_golden(f"plan_security.{suffix}", render(security_plan(), fmt))


def test_a_new_reader_and_a_removed_classification_are_both_security_changes_in_markdown():
    markdown = render(security_plan(), "markdown")
    head, _, rest = markdown.partition("#### Access changes")
    assert rest, markdown
    access = rest.split("<details>", 1)[0]  # listed before the folded diff, outside it
    assert ("- **update** `iam_binding.bigquery_dataset:silver:roles/bigquery.dataViewer`: grants "
            "roles/bigquery.dataViewer on dataset silver to group:finance@example.com") in access
    assert ("- **delete** `bigquery_column_policy.silver.orders/customer_email`: column silver.orders/customer_email "
            "becomes readable by every reader of dataset silver") in access


def test_security_flags_in_json():
    doc = json.loads(render(security_plan(), "json"))
    flags = {c["address"]: c["security"] for c in doc["changes"]}
    assert flags == {
        "iam_binding.bigquery_dataset:silver:roles/bigquery.dataViewer": True,
        "iam_binding.bigquery_table:bronze.clickstream_raw:roles/bigquery.dataViewer": True,
        "project_audit_config.bigquery.googleapis.com": True,
        "cloud_run_service.shipments-connector": True,
        "iam_binding.pubsub_topic:orders:roles/pubsub.publisher": True,
        "bigquery_column_policy.silver.orders/customer_email": True,
    }
    summaries = {c["address"]: c.get("security_summary") for c in doc["changes"]}
    assert summaries["iam_binding.pubsub_topic:orders:roles/pubsub.publisher"] == (
        "revokes roles/pubsub.publisher on topic orders from serviceAccount:old-exporter@headwater-demo.iam."
        "gserviceaccount.com (no longer declared)")
    assert "only the engineers tier" in summaries[
        "iam_binding.bigquery_table:bronze.clickstream_raw:roles/bigquery.dataViewer"]


def test_an_undeclared_binding_is_revoked_without_prune():
    plan = security_plan()
    orphan = next(c for c in plan.changes if c.address == "iam_binding.pubsub_topic:orders:roles/pubsub.publisher")
    assert plan.options["prune"] is False
    assert orphan.action == Action.DELETE and not orphan.blocked
    assert orphan in plan.actionable
    # A removed classification takes effect without --prune too: the column policy's delete removes its tags.
    column = next(c for c in plan.changes if c.kind == Kind.BIGQUERY_COLUMN_POLICY)
    assert column.action == Action.DELETE and not column.blocked and "classification was removed" in column.reason


def test_grants_and_tags_on_a_kept_undeclared_resource_are_kept_with_it_until_prune():
    # A removed source's topic, subscription and job are kept without --prune, and keep working:
    # the grants on them (the Pub/Sub agent's dead-lettering grants) and the tags on its kept
    # table stay too. With --prune, they go with their targets.
    dlq = _binding("pubsub_topic.payments-dlq", "roles/pubsub.publisher", ["serviceAgent:pubsub"])
    column = Resource(Kind.BIGQUERY_COLUMN_POLICY, "silver.payments/card_holder", {"policy_tags": ["headwater-dev/pii"]},
                      LABELS)
    audit = Resource(Kind.PROJECT_AUDIT_CONFIG, "bigquery.googleapis.com", {"log_types": ["DATA_READ"]}, LABELS)
    live = [dlq, column, audit]
    kept = reconcile([], live, {}, PlanOptions(environment="dev", max_delete_fraction=1), declared_sources=1)
    by_address = {c.address: c for c in kept.changes}
    for resource, target in ((dlq, "pubsub_topic.payments-dlq"), (column, "bigquery_table.silver.payments")):
        change = by_address[resource.address]
        assert change.action == Action.NOOP and f"kept with {target}" in change.reason, change
    assert by_address[audit.address].action == Action.DELETE, "project-wide: no target to keep it"
    pruned = reconcile([], live, {}, PlanOptions(environment="dev", max_delete_fraction=1, prune=True),
                       declared_sources=1)
    assert {c.address: c.action for c in pruned.changes} == {r.address: Action.DELETE for r in live}


def test_changes_that_touch_no_access_are_not_flagged():
    plan = security_plan()
    assert not next(c for c in plan.changes if c.address == "pubsub_topic.orders").security
    assert not next(c for c in plan.changes if c.address == "iam_binding.pubsub_topic:orders-dlq:roles/pubsub.publisher"
                    ).security  # no change: not listed


def test_the_pr_summary_names_a_removed_classification(tmp_path):
    from reconciler.pr import _column_changes

    def unclassify(data):
        data["fields"][2].pop("classification")

    before = next(s for s in load_repo(EXAMPLE).sources if s.source_id == "orders")
    repo = copy_example(tmp_path)
    path = repo / "schemas" / "orders.json"
    data = json.loads(path.read_text())
    unclassify(data)
    path.write_text(json.dumps(data))
    edit_yaml(repo / "connectors" / "orders.yaml", lambda d: d.update(classify={"items.sku": "pii"}))
    after = next(s for s in load_repo(repo).sources if s.source_id == "orders")
    assert _column_changes(before, after) == [
        "~customer_email: classification pii → none (access: the column becomes readable in clear by every reader "
        "of its table)",
        "~items.sku: classification none → pii"]


def test_the_taxonomy_is_a_security_kind_with_its_phrase():
    # The taxonomy activates fine-grained access control on its tags' columns (docs/governance.md:
    # every kind of the Contract's table is in SECURITY_KINDS).
    from reconciler.resources import SECURITY_KINDS

    assert Kind.DATACATALOG_TAXONOMY in SECURITY_KINDS
    spec = {"display_name": "headwater-dev", "description": "d", "location": "europe-west1",
            "activated_policy_types": ["FINE_GRAINED_ACCESS_CONTROL"]}
    taxonomy = Resource(Kind.DATACATALOG_TAXONOMY, "headwater-dev", spec, LABELS)
    off = replace(taxonomy, spec={**spec, "activated_policy_types": []})
    options = PlanOptions(environment="dev", max_delete_fraction=1)
    created = reconcile([taxonomy], [], {}, options).changes[0]
    assert created.security and created.security_summary.startswith(
        "creates the taxonomy headwater-dev with fine-grained access control activated")
    turned_off = reconcile([off], [taxonomy], {}, options).changes[0]
    assert turned_off.security and turned_off.security_summary.startswith(
        "deactivates fine-grained access control on the taxonomy headwater-dev: the columns its policy tags tag "
        "become readable by every reader of their datasets")


@pytest.mark.parametrize(("kind", "name", "live_spec", "desired_spec", "immutable", "loss"), [
    pytest.param(Kind.DATACATALOG_TAXONOMY, "headwater-dev", {"display_name": "headwater-dev", "location": "europe-west1"},
                 {"display_name": "headwater-dev", "location": "us"}, "location",
                 "deletes its policy tags and their grants, so the columns they tag are readable by every reader",
                 id="taxonomy-location"),
    pytest.param(Kind.DATACATALOG_POLICY_TAG, "headwater-dev/pii", {"taxonomy": "headwater-dev", "display_name": "pii"},
                 {"taxonomy": "headwater-dev", "display_name": "PII"}, "display_name",
                 "untags the columns it tags and drops its grants", id="policy-tag-name"),
    pytest.param(Kind.BIGQUERY_DATA_POLICY, "pii_mask", {"policy_tag": "headwater-dev/pii", "masking": "SHA256"},
                 {"policy_tag": "headwater-dev/pii2", "masking": "SHA256"}, "policy_tag",
                 "they read no masked values of the tagged columns", id="data-policy-tag"),
])
def test_replacing_a_catalog_kind_says_what_is_lost_in_between(kind, name, live_spec, desired_spec, immutable, loss):
    plan = reconcile([Resource(kind, name, desired_spec, LABELS)], [Resource(kind, name, live_spec, LABELS)],
                     {kind: frozenset({immutable})}, PlanOptions(environment="dev", max_delete_fraction=1))
    (change,) = plan.changes
    assert change.action == Action.REPLACE and change.security
    assert change.security_summary.startswith("replaces the ") and f"({immutable})" in change.security_summary
    assert loss in change.security_summary
    assert loss in render(plan, "markdown").split("#### Access changes", 1)[1]


def test_a_data_policy_update_names_what_changes_not_an_unchanged_masking():
    live = Resource(Kind.BIGQUERY_DATA_POLICY, "pii_mask", {"policy_tag": "headwater-dev/pii", "masking": "SHA256"}, LABELS)
    changed = replace(live, spec={**live.spec, "masking": "ALWAYS_NULL"})
    (change,) = reconcile([changed], [live], {}, PlanOptions(environment="dev")).changes
    assert change.security_summary == "changes the masking of pii_mask: SHA256 → ALWAYS_NULL"
