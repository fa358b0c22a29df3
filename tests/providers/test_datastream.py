"""Datastream provider: the requests it builds, checked against the client library's own types, and
the same requests sent through the official client (REST transport) to a local endpoint
(tests/fake_datastream.py).

Datastream has no emulator. What these tests cannot show - that Datastream accepts these requests
and masks, validates connectivity as modelled, and reports a failed stream's errors in this shape -
is verified only against the real service (see the provider's docstring).
"""

from __future__ import annotations

import pytest
from fake_datastream import FakeDatastream
from google.cloud import datastream_v1 as ds
from helpers import EXAMPLE

from providers.datastream import DatastreamProvider, build_profile, build_stream, stream_masks
from providers.errors import AlreadyExists
from reconciler.cdc import IMMUTABLE_FIELDS
from reconciler.compile import compile_resources
from reconciler.load import load_repo
from reconciler.plan import Action, PlanOptions, reconcile
from reconciler.resources import Kind, Resource

PROJECT, REGION = "headwater-demo", "europe-west1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"


@pytest.fixture(scope="module")
def compiled() -> dict[str, Resource]:
    """The example's Datastream resources, as compile makes them."""
    resources = compile_resources(load_repo(EXAMPLE))
    return {r.address: r for r in resources
            if r.kind in (Kind.DATASTREAM_CONNECTION_PROFILE, Kind.DATASTREAM_STREAM)}


@pytest.fixture
def fake():
    endpoint = FakeDatastream()
    yield endpoint
    endpoint.close()


def provider(fake: FakeDatastream) -> DatastreamProvider:
    return DatastreamProvider(PROJECT, REGION, poll_interval=0.01, **fake.client_kwargs())


# --------------------------------------------------------------------------- requests (pure)


def test_a_database_profile_names_its_password_secret_and_never_holds_a_value(compiled):
    profile = build_profile(PROJECT, compiled["datastream_connection_profile.shop-postgres"])
    assert isinstance(profile, ds.ConnectionProfile)
    pg = profile.postgresql_profile
    assert (pg.hostname, pg.port, pg.username, pg.database) == ("10.20.0.5", 5432, "datastream", "shop")
    assert pg.secret_manager_stored_password == f"projects/{PROJECT}/secrets/shop-postgres-password/versions/latest"
    assert not pg.password
    assert "static_service_ip_connectivity" in profile
    assert profile.labels["managed-by"] == "headwater"


def test_the_landing_profile_is_the_gcs_destination(compiled):
    profile = build_profile(PROJECT, compiled["datastream_connection_profile.headwater-landing"])
    assert (profile.gcs_profile.bucket, profile.gcs_profile.root_path) == ("landing-headwater-demo-europe-west1", "/cdc")


def test_the_stream_reads_the_slot_and_publication_and_writes_json_under_the_source(compiled):
    stream = build_stream(PARENT, compiled["datastream_stream.postgres-orders"])
    source = stream.source_config
    assert source.source_connection_profile == f"{PARENT}/connectionProfiles/shop-postgres"
    config = source.postgresql_source_config
    assert (config.replication_slot, config.publication) == ("headwater_postgres_orders", "headwater_postgres_orders")
    (schema,) = config.include_objects.postgresql_schemas
    assert schema.schema == "public"
    assert [t.table for t in schema.postgresql_tables] == ["customers", "order_items", "orders"]
    gcs = stream.destination_config.gcs_destination_config
    assert stream.destination_config.destination_connection_profile == f"{PARENT}/connectionProfiles/headwater-landing"
    assert (gcs.path, gcs.file_rotation_mb, gcs.file_rotation_interval.total_seconds()) == ("/postgres_orders", 50, 15)
    assert gcs.json_file_format.compression == ds.JsonFileFormat.JsonCompression.GZIP
    assert gcs.json_file_format.schema_file_format == ds.JsonFileFormat.SchemaFileFormat.NO_SCHEMA_FILE
    assert "backfill_all" in stream and "backfill_none" not in stream
    assert stream.state == ds.Stream.State.STATE_UNSPECIFIED, "created NOT_STARTED, started by an update"


def test_mysql_streams_list_databases_and_have_no_slot(compiled):
    stream = compiled["datastream_stream.postgres-orders"]
    spec = {k: v for k, v in stream.spec.items() if k not in ("replication_slot", "publication")}
    mysql = Resource(stream.kind, stream.name, {**spec, "database_type": "mysql", "backfill": "none",
                                                "include_objects": [{"schema": "shop", "table": "orders"}]})
    built = build_stream(PARENT, mysql)
    (db,) = built.source_config.mysql_source_config.include_objects.mysql_databases
    assert (db.database, [t.table for t in db.mysql_tables]) == ("shop", ["orders"])
    assert "backfill_none" in built
    assert stream_masks(mysql.spec, "include_objects") == ["source_config.mysql_source_config.include_objects"]


# --------------------------------------------------------------------------- through the client


def test_create_observe_and_nothing_left_to_do(fake, compiled):
    p = provider(fake)
    for resource in sorted(compiled.values(), key=lambda r: r.kind != Kind.DATASTREAM_CONNECTION_PROFILE):
        p.create(resource)
    creates = [r for r in fake.mutating() if r.method == "POST"]
    assert [(r.path.rsplit("/", 1)[-1], r.query.get("connectionProfileId") or r.query.get("streamId"))
            for r in creates] == [("connectionProfiles", "headwater-landing"), ("connectionProfiles", "shop-postgres"),
                                  ("streams", "postgres-orders")]
    profile_body = creates[1].body
    assert "password" not in profile_body["postgresqlProfile"]
    assert profile_body["postgresqlProfile"]["secretManagerStoredPassword"].endswith(
        "/secrets/shop-postgres-password/versions/latest")
    (start,) = [r for r in fake.mutating() if r.method == "PATCH"]
    assert start.query["updateMask"] == "state" and start.body["state"] in ("RUNNING", ds.Stream.State.RUNNING)

    live = p.observe(Kind.DATASTREAM_CONNECTION_PROFILE) + p.observe(Kind.DATASTREAM_STREAM)
    plan = reconcile(list(compiled.values()), live, IMMUTABLE_FIELDS, PlanOptions())
    assert [c.action for c in plan.changes] == [Action.NOOP] * 3, [c.to_dict() for c in plan.changes]
    with pytest.raises(AlreadyExists):
        p.create(compiled["datastream_stream.postgres-orders"])


def test_an_update_sends_a_mask_of_what_changed(fake, compiled):
    p = provider(fake)
    stream = compiled["datastream_stream.postgres-orders"]
    for resource in (compiled["datastream_connection_profile.shop-postgres"],
                     compiled["datastream_connection_profile.headwater-landing"], stream):
        p.create(resource)
    fewer = Resource(stream.kind, stream.name, {**stream.spec, "include_objects": stream.spec["include_objects"][:2],
                                                "backfill": "none"}, stream.labels)
    p.update(fewer, ["include_objects", "backfill"])
    patch = fake.mutating()[-1]
    # On the wire (REST), field mask paths are camelCase.
    assert patch.query["updateMask"] == "backfillAll,backfillNone,sourceConfig.postgresqlSourceConfig.includeObjects"
    assert "backfillNone" in patch.body
    (observed,) = p.observe(Kind.DATASTREAM_STREAM)
    assert observed.spec["include_objects"] == fewer.spec["include_objects"] and observed.spec["backfill"] == "none"

    profile = compiled["datastream_connection_profile.shop-postgres"]
    moved = Resource(profile.kind, profile.name, {**profile.spec, "host": "10.20.0.9"}, profile.labels)
    p.update(moved, ["host"])
    assert fake.mutating()[-1].query["updateMask"] == "postgresqlProfile.hostname"


def test_a_failed_stream_reads_failed_with_datastreams_reason_and_the_plan_quotes_it(fake, compiled):
    p = provider(fake)
    for resource in compiled.values():
        if resource.kind == Kind.DATASTREAM_CONNECTION_PROFILE:
            p.create(resource)
    stream = compiled["datastream_stream.postgres-orders"]
    p.create(stream)
    fake.fail_stream(f"{PARENT}/streams/postgres-orders", "REPLICATION_SLOT_DOES_NOT_EXIST",
                     "The replication slot headwater_postgres_orders does not exist.")
    (observed,) = p.observe(Kind.DATASTREAM_STREAM)
    assert observed.spec["state"] == "FAILED"
    assert observed.status["error"] == ("REPLICATION_SLOT_DOES_NOT_EXIST: The replication slot "
                                        "headwater_postgres_orders does not exist.")
    plan = reconcile([stream], [observed], IMMUTABLE_FIELDS, PlanOptions())
    (change,) = plan.changes
    assert change.action == Action.UPDATE and change.update_fields == ("state",)
    assert "REPLICATION_SLOT_DOES_NOT_EXIST" in change.reason
    p.update(stream, ["state"])  # apply restarts it
    (observed,) = p.observe(Kind.DATASTREAM_STREAM)
    assert observed.spec["state"] == "RUNNING" and "error" not in observed.status


def test_recreating_or_deleting_a_stream_is_gated_and_the_plan_says_what_happens_to_the_slot(fake, compiled):
    stream = compiled["datastream_stream.postgres-orders"]
    p = provider(fake)
    for resource in compiled.values():
        p.create(resource) if resource.kind == Kind.DATASTREAM_CONNECTION_PROFILE else None
    p.create(stream)
    (live,) = p.observe(Kind.DATASTREAM_STREAM)
    moved = Resource(stream.kind, stream.name, {**stream.spec, "replication_slot": "other_slot"}, stream.labels,
                     deletion_protection=False)
    plan = reconcile([moved], [live], IMMUTABLE_FIELDS, PlanOptions())
    (change,) = plan.changes
    assert change.action == Action.REPLACE and change.replace_paths == ["replication_slot"]
    assert "backfilled again" in change.reason and "--allow-destroy" in change.blocked
    allowed = reconcile([moved], [live], IMMUTABLE_FIELDS, PlanOptions(allow_destroy=True)).changes[0]
    assert allowed.blocked is None and "backfilled again" in allowed.reason
    assert "slot" in p.would_lose([live])[live.address]

    gone = reconcile([], [live], IMMUTABLE_FIELDS, PlanOptions(prune=True, allow_destroy=True)).changes[0]
    assert gone.action == Action.DELETE
    assert "replication slot headwater_postgres_orders is NOT dropped" in gone.reason
    assert "pg_drop_replication_slot('headwater_postgres_orders')" in gone.reason
    p.delete(live)
    assert fake.mutating()[-1].method == "DELETE"
    p.delete(live)  # gone already: success
    assert p.observe(Kind.DATASTREAM_STREAM) == []


def test_source_columns_ask_discover_with_the_profile_inline(fake, compiled):
    fake.discoverable = {"public.orders": {"order_id": "bigint", "status": "text"}}
    p = provider(fake)
    profile = compiled["datastream_connection_profile.shop-postgres"].spec
    found = p.source_columns(profile, [("public", "orders"), ("public", "missing")])
    assert found == {"public.orders": {"order_id": "bigint", "status": "text"}}
    (request,) = [r for r in fake.requests if r.path.endswith(":discover")]
    assert request.body["connectionProfile"]["postgresqlProfile"]["hostname"] == "10.20.0.5"
    assert "password" not in request.body["connectionProfile"]["postgresqlProfile"]
    assert request.body["fullHierarchy"] is True


def test_health_reports_each_stream_with_datastreams_reason_and_its_freshness(fake, compiled, monkeypatch):
    from providers import monitoring
    from reconciler.health import Health

    asked = []

    def latest(self, metric, resource_type, label, ids):
        asked.append((metric, resource_type, label, sorted(ids)))
        return {"postgres-orders": 12}

    monkeypatch.setattr(monitoring.CloudMonitoring, "latest", latest)
    p = provider(fake)
    stream = compiled["datastream_stream.postgres-orders"]
    for resource in compiled.values():
        p.create(resource) if resource.kind == Kind.DATASTREAM_CONNECTION_PROFILE else None
    p.create(stream)
    (healthy,) = p.health([stream]).values()
    assert healthy.state == Health.HEALTHY and healthy.reason == (
        "stream RUNNING; 12 s behind its source (Datastream freshness)")
    assert asked == [("datastream.googleapis.com/stream/freshness", "datastream.googleapis.com/Stream", "stream_id",
                      ["postgres-orders"])]
    fake.fail_stream(f"{PARENT}/streams/postgres-orders", "BACKFILL_PERMISSION_DENIED",
                     "Permission denied for table public.orders.")
    (failed,) = p.health([stream]).values()
    assert failed.state == Health.DEGRADED
    assert failed.reason == "stream FAILED: BACKFILL_PERMISSION_DENIED: Permission denied for table public.orders."
