"""Compile: the example desired state's resource graph (golden file) and its invariants."""

from __future__ import annotations

import json

import pytest
from golden import check_golden
from helpers import EXAMPLE, copy_example, edit_yaml

from reconciler import jsonschema
from reconciler.compile import compile_resources, lifecycle_rules
from reconciler.config import DEFAULT_LIFECYCLES, Lifecycle, Tier
from reconciler.load import load_repo
from reconciler.resources import DATA_KINDS, Kind


@pytest.fixture(scope="module")
def resources():
    return compile_resources(load_repo(EXAMPLE))


def test_compiled_graph_matches_golden_file(resources):
    text = json.dumps([r.to_dict() for r in resources], indent=2) + "\n"
    check_golden("compiled_desired_state.json", text)


def test_every_resource_carries_the_managed_labels(resources):
    for resource in resources:
        assert resource.labels["managed-by"] == "headwater", resource.address
        assert resource.labels["headwater-platform"] == "dev", resource.address


def test_source_resources_carry_their_source_label(resources):
    by_address = {r.address: r for r in resources}
    for sid in ("orders", "clickstream", "payments"):
        for address in (f"pubsub_topic.{sid}", f"pubsub_topic.{sid}-dlq", f"pubsub_subscription.{sid}-ingest",
                        f"pubsub_subscription.{sid}-dlq-hold", f"bigquery_table.bronze.{sid}_raw",
                        f"bigquery_table.silver.{sid}"):
            assert by_address[address].labels["headwater-source"] == sid
    assert "headwater-source" not in by_address["bigquery_dataset.bronze"].labels


def test_ingest_subscription_dead_letters_to_the_dlq_topic(resources):
    sub = next(r for r in resources if r.address == "pubsub_subscription.orders-ingest")
    assert sub.spec["dead_letter_policy"] == {"dead_letter_topic": "orders-dlq", "max_delivery_attempts": 5}
    assert sub.spec["retry_policy"] == {"minimum_backoff": 10, "maximum_backoff": 600}
    assert set(sub.depends_on) == {"pubsub_topic.orders", "pubsub_topic.orders-dlq"}


def test_silver_table_is_partitioned_and_clustered_as_declared(resources):
    table = next(r for r in resources if r.address == "bigquery_table.silver.orders")
    assert table.spec["time_partitioning"] == {"type": "DAY", "field": "ordered_at"}
    assert table.spec["clustering_fields"] == ["customer_id", "currency"]
    names = [f["name"] for f in table.spec["schema"]]
    assert names[:2] == ["order_id", "customer_id"] and "_ingested_at" in names
    items = next(f for f in table.spec["schema"] if f["name"] == "items")
    assert items["mode"] == "REPEATED" and [f["name"] for f in items["fields"]] == ["sku", "quantity", "unit_price"]


def test_partition_field_defaults_to_first_timestamp(resources):
    table = next(r for r in resources if r.address == "bigquery_table.silver.clickstream")
    assert table.spec["time_partitioning"]["field"] == "event_time"


def test_gold_aggregate_table_types_follow_the_metrics(resources):
    table = next(r for r in resources if r.address == "bigquery_table.gold.orders_daily")
    types = {f["name"]: f["type"] for f in table.spec["schema"]}
    assert types == {"customer_id": "STRING", "date": "DATE", "total_amount": "NUMERIC", "order_count": "INT64"}
    assert table.spec["time_partitioning"] == {"type": "DAY", "field": "date"}


def test_data_resources_record_their_deletion_protection(resources):
    for resource in resources:
        if resource.kind in DATA_KINDS:
            assert resource.labels["headwater-deletion-protection"] == "true"
        else:
            assert "headwater-deletion-protection" not in resource.labels


def test_bronze_lifecycle_follows_the_seed_retention_table():
    rules = lifecycle_rules(DEFAULT_LIFECYCLES["bronze"])
    assert [(r["condition"]["age"], r["action"]["storage_class"]) for r in rules] == [
        (90, "NEARLINE"), (365, "COLDLINE"), (2555, "ARCHIVE")]
    assert all(r["action"]["type"] == "SetStorageClass" for r in rules), "bronze is never deleted"
    # A tier only moves objects down, never back up.
    assert rules[2]["condition"]["matches_storage_class"] == ["COLDLINE", "NEARLINE", "STANDARD"]


def test_lifecycle_delete_rule_comes_last():
    rules = lifecycle_rules(Lifecycle(tiers=[Tier(after_days=30, storage_class="NEARLINE")], delete_after_days=400))
    assert rules[-1] == {"action": {"type": "Delete"}, "condition": {"age": 400}}


def test_compile_is_deterministic(tmp_path):
    repo = copy_example(tmp_path)
    edit_yaml(repo / "connectors" / "orders.yaml", lambda d: d.update(deletion_protection=False))
    first = [r.to_dict() for r in compile_resources(load_repo(repo))]
    second = [r.to_dict() for r in compile_resources(load_repo(repo))]
    assert first == second
    table = next(r for r in first if r["address"] == "bigquery_table.silver.orders")
    assert table["deletion_protection"] is False
    assert table["labels"]["headwater-deletion-protection"] == "false"


def test_every_kind_is_compiled(resources):
    # The example declares no row access policy: on bqemulator a policy hides a table's rows from
    # everyone it does not name, the demo's anonymous client included (tests/test_serving.py has one).
    assert {r.kind for r in resources} == set(Kind) - {Kind.BIGQUERY_ROW_ACCESS_POLICY}


def test_json_schemas_are_up_to_date():
    for name, text in jsonschema.generate().items():
        path = jsonschema.OUTPUT_DIR / name
        assert path.exists() and path.read_text() == text, (
            f"schemas/{name} is stale: run `python -m reconciler.jsonschema`")


def test_the_onboarding_template_validates_once_copied(tmp_path):
    import shutil

    repo = copy_example(tmp_path)
    shutil.copy(repo / "templates" / "connector.yaml", repo / "connectors" / "my_source.yaml")
    shutil.copy(repo / "templates" / "schema.json", repo / "schemas" / "my_source.json")
    state = load_repo(repo)
    assert "my_source" in state.source_ids
    addresses = {r.address for r in compile_resources(state)}
    assert {"pubsub_topic.my_source", "bigquery_table.silver.my_source"} <= addresses


# --------------------------------------------------------------------------- Dataflow jobs


def test_every_job_spec_is_one_the_templates_accept(resources):
    from beam.common.spec import parse_spec

    jobs = [r for r in resources if r.kind == Kind.DATAFLOW_JOB]
    assert {r.name for r in jobs} == {"orders-ingest", "orders-sweep", "orders-gold-orders-daily",
                                      "clickstream-ingest", "clickstream-gold-clickstream-daily", "payments-ingest",
                                      "payments-gold-payments-daily", "shipments-ingest",
                                      "aws-data-lake-ingest", "postgres-orders-ingest",
                                      "orders-features", "clickstream-features"}  # issue 12: ML features
    for job in jobs:
        spec = parse_spec(job.spec["pipeline"])
        assert spec.source_id == job.source_id
        assert job.labels["managed-by"] == "headwater" and job.labels["headwater-platform"] == "dev"
        assert "headwater-deletion-protection" not in job.labels, "a job holds no data"


def test_ingestion_pattern_decides_template_and_schedule(resources):
    by_name = {r.name: r for r in resources if r.kind == Kind.DATAFLOW_JOB}
    orders, clicks = by_name["orders-ingest"].spec, by_name["clickstream-ingest"].spec
    # A batch_file source: file events drive a streaming job; its schedule is a batch sweep.
    sweep = by_name["orders-sweep"].spec
    assert (orders["template"], orders["streaming"], orders["schedule"]) == ("gcs_to_bigquery", True, None)
    assert orders["parameters"] == {"input_subscription": "projects/headwater-demo/subscriptions/orders-ingest",
                                    "input_pattern": "gs://landing-headwater-demo-europe-west1/orders/"}
    assert (sweep["template"], sweep["streaming"], sweep["schedule"]) == ("gcs_to_bigquery", False, "0 3 * * *")
    assert sweep["parameters"] == {"input_pattern": "gs://landing-headwater-demo-europe-west1/orders/"}
    assert orders["pipeline"]["input"] == sweep["pipeline"]["input"] == {"format": "json", "compression": "gzip"}
    assert (clicks["template"], clicks["streaming"], clicks["schedule"]) == ("pubsub_to_bigquery", True, None)
    assert clicks["parameters"] == {"input_subscription": "projects/headwater-demo/subscriptions/clickstream-ingest"}
    assert set(by_name["clickstream-ingest"].depends_on) == {
        "pubsub_subscription.clickstream-ingest", "pubsub_topic.clickstream-dlq",
        "bigquery_table.bronze.clickstream_raw", "bigquery_table.silver.clickstream"}
    gold = by_name["orders-gold-orders-daily"].spec
    assert (gold["template"], gold["streaming"], gold["schedule"]) == ("bigquery_to_bigquery", False, "30 * * * *")
    assert gold["pipeline"]["gold"]["joins"] == [{"table": "reference.customers", "on": ["customer_id"], "type": "left"}]
    assert "data_quality" not in gold["pipeline"], "a quality rule change must not relaunch the gold job"


def test_cdc_and_transfer_sources_and_job_names(tmp_path):
    repo = copy_example(tmp_path, sources=["orders"])
    (repo / "schemas" / "orders.json").rename(repo / "schemas" / "shop_orders.json")
    edit_json = (repo / "schemas" / "shop_orders.json")
    edit_json.write_text(edit_json.read_text().replace('"source_id": "orders"', '"source_id": "shop_orders"'))
    (repo / "connectors" / "orders.yaml").rename(repo / "connectors" / "shop_orders.yaml")

    # database_cdc (issue 10): each table its own schema file, Bronze change log and Silver table.
    import json

    table_schema = json.loads(edit_json.read_text())
    table_schema["fields"] = [f for f in table_schema["fields"] if f["type"] != "RECORD"]  # scalar columns only
    (repo / "schemas" / "shop_orders.orders.json").write_text(json.dumps(table_schema))
    edit_yaml(repo / "platform.yaml", lambda d: d["datastream"]["connection_profiles"].update(
        shop={"database_type": "postgresql", "host": "db.internal", "database": "shop", "user": "ds",
              "password_secret": "shop-db-password"}))
    original = {}

    def cdc(data):
        original.update(data)
        data.update(source_id="shop_orders", schema={"validation": "strict"},
                    ingestion={"pattern": "database_cdc", "database_type": "postgresql",
                               "tables": [{"name": "public.orders", "primary_key": ["order_id"]}],
                               "connection_profile": "projects/headwater-demo/locations/europe-west1/"
                                                     "connectionProfiles/shop"})
        for key in ("processing", "silver", "serving"):  # serving needs Gold tables (issue 12)
            data.pop(key, None)

    edit_yaml(repo / "connectors" / "shop_orders.yaml", cdc)
    resources = compile_resources(load_repo(repo))
    jobs = [r for r in resources if r.kind == Kind.DATAFLOW_JOB]
    assert [(j.name, j.spec["template"], j.spec["streaming"]) for j in jobs] == [
        ("shop-orders-ingest", "datastream_to_bigquery", True)]
    tables = {r.name for r in resources if r.kind == Kind.BIGQUERY_TABLE and r.source_id == "shop_orders"}
    assert tables == {"bronze.shop_orders_orders_changes", "silver.shop_orders_orders"}
    (stream,) = [r for r in resources if r.kind == Kind.DATASTREAM_STREAM]
    assert (stream.name, stream.spec["source_connection_profile"]) == ("shop-orders", "shop")

    def transfer(data):
        data.update(schema={"file": "schemas/shop_orders.json", "validation": "strict"},
                    processing={**original["processing"], "silver_to_gold": []})
        data["ingestion"] = {"pattern": "cloud_transfer", "source_type": "s3", "source_bucket": "legacy-exports",
                             "schedule": "0 2 * * *", "role_arn": "arn:aws:iam::123456789012:role/exports"}

    edit_yaml(repo / "connectors" / "shop_orders.yaml", transfer)
    resources = compile_resources(load_repo(repo))
    # As batch_file: the landing prefix's file events drive a streaming job (no cron sweep: each
    # transfer run's completion message sweeps what it copied); the files stay in landing.
    (job,) = [r for r in resources if r.kind == Kind.DATAFLOW_JOB]
    assert (job.spec["template"], job.spec["streaming"], job.spec["schedule"]) == ("gcs_to_bigquery", True, None)
    landing = "landing-headwater-demo-europe-west1"
    assert job.spec["parameters"] == {"input_subscription": "projects/headwater-demo/subscriptions/shop_orders-ingest",
                                      "input_pattern": f"gs://{landing}/shop_orders/"}
    assert job.spec["pipeline"]["bronze"]["keep_landing"] is True
    (notification,) = [r for r in resources if r.kind == Kind.STORAGE_NOTIFICATION]
    assert notification.name == f"{landing}/shop_orders/" and notification.spec["topic"] == "shop_orders"
    (transfer_job,) = [r for r in resources if r.kind == Kind.STORAGE_TRANSFER_JOB]
    assert transfer_job.name == "shop-orders-transfer"
    assert transfer_job.spec == {
        "source": {"type": "s3", "bucket": "legacy-exports", "path": "", "storage_account": None,
                   "role_arn": "arn:aws:iam::123456789012:role/exports", "credentials_secret": None},
        "sink": {"bucket": landing, "path": "shop_orders/"},
        "schedule": "0 2 * * *", "overwrite_when": "DIFFERENT", "delete_from_source": False,
        "delete_unique_in_sink": False, "max_age_seconds": None, "notification_topic": "shop_orders",
        "enabled": True, "service_agent_grants": True}
    assert set(transfer_job.depends_on) == {
        f"storage_bucket.{landing}", "pubsub_topic.shop_orders", f"storage_notification.{landing}/shop_orders/",
        "dataflow_job.shop-orders-ingest"}


def test_transfer_schedules_map_to_storage_transfer_and_equivalent_crons_compile_alike():
    from reconciler.transfer import TransferSchedule, canonical_schedule, parse_schedule, schedule_from_api

    assert parse_schedule("15 3 * * *") == TransferSchedule(15, 3, 24)
    assert parse_schedule("0 */6 * * *") == parse_schedule("0 0,6,12,18 * * *") == TransferSchedule(0, 0, 6)
    assert parse_schedule("30 2/4 * * *") == TransferSchedule(30, 2, 4)
    assert parse_schedule("45 * * * *") == TransferSchedule(45, 0, 1)
    assert canonical_schedule("0 0,12 * * *") == "0 */12 * * *"
    assert canonical_schedule("30 2-22/4 * * *") == "30 2/4 * * *"
    for refused in ("0 3 * * 1", "0 3 1 * *", "0,30 * * * *", "*/15 * * * *", "0 8/6 * * *", "0 1,2 * * *",
                    "0 * * 1 *"):
        assert isinstance(parse_schedule(refused), str), refused
    # What the provider reads back from a live job (start time of day, repeat interval).
    assert schedule_from_api(14, 0, 6 * 3600) == "0 2/6 * * *"  # created at 14:00: the same 6-hourly cron
    assert schedule_from_api(3, 15, 0) == "15 3 * * *"  # no interval: Storage Transfer's 24 h
    assert schedule_from_api(1, 0, 5400).startswith("start 01:00 UTC, every 5400 s")  # set by hand: drift


def test_silver_metadata_columns_match_what_the_pipelines_write():
    # beam/ stands on its own, so the contract is kept by this test rather than an import.
    from beam.common.spec import SILVER_METADATA_FIELDS
    from reconciler.compile import INGESTION_METADATA

    assert INGESTION_METADATA == SILVER_METADATA_FIELDS


def test_bronze_table_columns_match_what_the_pipelines_write(resources):
    # The same for Bronze: the table the reconciler creates has exactly the columns the
    # pipelines' Bronze rows have (beam.common.sinks.BronzeRows writes BRONZE_FIELDS).
    from beam.common.sinks import BRONZE_FIELDS
    from reconciler.compile import BRONZE_RAW_SCHEMA

    assert BRONZE_RAW_SCHEMA == BRONZE_FIELDS
    bronze = next(r for r in resources if r.address == "bigquery_table.bronze.orders_raw")
    assert bronze.spec["schema"] == BRONZE_FIELDS


def test_batch_jobs_archive_ingested_files_in_the_bronze_bucket(resources):
    by_name = {r.name: r for r in resources if r.kind == Kind.DATAFLOW_JOB}
    orders, clicks = by_name["orders-ingest"], by_name["clickstream-ingest"]
    assert orders.spec["pipeline"]["bronze"]["bucket"] == "gs://bronze-headwater-demo-europe-west1"
    assert "storage_bucket.bronze-headwater-demo-europe-west1" in orders.depends_on
    # Streaming jobs move no files: their spec (and so the running jobs) stay as they were.
    assert "bucket" not in clicks.spec["pipeline"]["bronze"]
