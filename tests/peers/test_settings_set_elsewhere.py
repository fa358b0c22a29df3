"""A setting the desired state does not declare is not a difference, and a mutable sub-setting
never forces a replacement (Terraform's provider replaced a partitioned table - and dropped its
rows - over an expiration set outside it; peers also replan server-set subscription settings)."""

from __future__ import annotations

from google.cloud import bigquery, pubsub_v1
from google.protobuf import field_mask_pb2
from helpers import edit_yaml

from providers.bigquery import make_client


def test_a_partition_expiration_set_outside_headwater_never_replaces_the_table(platform_repo, hw, project_id):
    repo = platform_repo(["orders"])
    edit_yaml(repo / "connectors" / "orders.yaml", lambda d: d.update(deletion_protection=False))
    assert hw("apply", "--repo", repo, "--auto-approve")[0] == 0
    client = make_client(project_id)
    client.insert_rows_json(f"{project_id}.silver.orders", [
        {"order_id": "A-1", "customer_id": "c", "amount": "1", "currency": "EUR", "ordered_at": "2026-11-01T00:00:00Z",
         "_ingested_at": "2026-11-01T00:00:00Z"}])
    # Someone sets a 90-day partition expiration on silver.orders outside headwater.
    table = client.get_table(f"{project_id}.silver.orders")
    table.time_partitioning = bigquery.TimePartitioning(type_="DAY", field="ordered_at", expiration_ms=7_776_000_000)
    client.update_table(table, ["time_partitioning"])

    code, out, _ = hw("plan", "--repo", repo, "--allow-destroy")
    assert code == 0 and "No changes." in out, out  # not "forces replacement: time_partitioning.expiration_ms"

    # Declared, it is managed - in place, never by a replacement.
    edit_yaml(repo / "connectors" / "orders.yaml", lambda d: d["silver"].update(partition_expiration="30d"))
    code, out, _ = hw("plan", "--repo", repo, "--allow-destroy")
    assert code == 2 and "~ bigquery_table.silver.orders" in out and "forces replacement" not in out, out
    assert "time_partitioning.expiration_ms: 7776000000 → 2592000000" in out
    assert hw("apply", "--repo", repo, "--auto-approve", "--allow-destroy")[0] == 0
    table = client.get_table(f"{project_id}.silver.orders")
    assert table.time_partitioning.expiration_ms == 2_592_000_000 and table.num_rows == 1


def test_dataset_defaults_and_subscription_settings_set_elsewhere_are_left_alone(platform_repo, hw, project_id):
    repo = platform_repo(["clickstream"])
    assert hw("apply", "--repo", repo, "--auto-approve")[0] == 0
    client = make_client(project_id)
    dataset = client.get_dataset(f"{project_id}.gold")
    dataset.default_table_expiration_ms = 86_400_000
    client.update_dataset(dataset, ["default_table_expiration_ms"])
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.update_subscription(request={
        "subscription": {"name": subscriber.subscription_path(project_id, "clickstream-ingest"),
                         "enable_exactly_once_delivery": True},
        "update_mask": field_mask_pb2.FieldMask(paths=["enable_exactly_once_delivery"])})
    code, out, _ = hw("plan", "--repo", repo)
    assert code == 0 and "No changes." in out, out
