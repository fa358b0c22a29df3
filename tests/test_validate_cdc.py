"""Validation of database_cdc sources (tests/test_validate.py's style): every bad input gets
file:line:col, the field and a clear message, and `headwater apply` changes nothing - it fails
before the first API call (not even an observe) against an in-memory provider that counts calls.

The example's CDC source is ``connectors/postgres_orders.yaml`` (PostgreSQL, three tables: one
written in full, two by the seed's plain names), its connection profile ``shop-postgres`` in
``platform.yaml``. A schema that disagrees with the live table is found at plan time, when the
stream's provider can see the database (last tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml

from providers.memory import MemoryProvider
from reconciler import cli
from reconciler.engine import Engine
from reconciler.load import InvalidDesiredState, load_repo
from reconciler.resources import Kind

FILE = "connectors/postgres_orders.yaml"
ORDERS = "schemas/postgres_orders.orders.json"
ITEMS = "schemas/postgres_orders.order_items.json"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def text_edit(file: str, old: str, new: str):
    def mutate(repo: Path) -> None:
        path = repo / file
        assert old in path.read_text(), old
        path.write_text(path.read_text().replace(old, new, 1))

    return mutate


def ingestion(**changes):
    def mutate(repo: Path) -> None:
        def change(data):
            for key, value in changes.items():
                if value is None:
                    data["ingestion"].pop(key, None)
                else:
                    data["ingestion"][key] = value

        edit_yaml(repo / FILE, change)

    return mutate


def connector(**changes):
    def mutate(repo: Path) -> None:
        edit_yaml(repo / FILE, lambda data: data.update(changes))

    return mutate


def schema_file(file: str, change):
    def mutate(repo: Path) -> None:
        path = repo / file
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data, indent=2))

    return mutate


def both(*mutations):
    def mutate(repo: Path) -> None:
        for m in mutations:
            m(repo)

    return mutate


CASES = [
    # (id, mutation, expected "file:line" prefix, expected "field: message" fragment)
    ("table-without-schema-file", text_edit(FILE, "    - customers", "    - customers\n    - invoices"),
     f"{FILE}:17:7", "ingestion.tables[3]: schema file 'schemas/postgres_orders.invoices.json' does not exist (the "
                     "default for table 'invoices'"),
    ("table-schema-file-named-missing", text_edit(FILE, "schema: schemas/postgres_orders.orders.json",
                                                  "schema: schemas/orders_table.json"),
     f"{FILE}:13:7", "ingestion.tables[0].schema: schema file 'schemas/orders_table.json' does not exist"),
    ("table-without-primary-key", text_edit(FILE, "      primary_key: [order_id]\n", ""),
     f"{FILE}:12:7", "ingestion.tables[0]: table 'public.orders' has no primary key: Silver keeps its current state "
                     "by primary key; name it"),
    ("plain-name-whose-schema-has-no-primary-key", schema_file(ITEMS, lambda d: d.pop("primary_key")),
     f"{FILE}:15:7", "ingestion.tables[1]: table 'order_items' has no primary key"),
    ("primary-key-not-a-column", text_edit(FILE, "primary_key: [order_id]", "primary_key: [orderid]"),
     f"{FILE}:14:21", "ingestion.tables[0].primary_key[0]: primary key column 'orderid' is not a field of "
                      "schemas/postgres_orders.orders.json (did you mean 'order_id'?)"),
    ("primary-key-of-a-float", both(schema_file(ORDERS, lambda d: d["fields"].append(
        {"name": "ratio", "type": "FLOAT64"})), text_edit(FILE, "primary_key: [order_id]", "primary_key: [ratio]")),
     f"{FILE}:14:", "primary key column 'ratio' has type FLOAT64 (NULLABLE); a key column is one of"),
    ("primary-key-named-twice-differently", text_edit(FILE, "    - order_items",
                                                      "    - {name: order_items, primary_key: [order_id]}"),
     f"{FILE}:15:", "ingestion.tables[1].primary_key: primary_key ['order_id'] differs from "
                    "schemas/postgres_orders.order_items.json's ['order_id', 'line']"),
    ("table-listed-twice", text_edit(FILE, "    - customers", "    - customers\n    - public.customers"),
     f"{FILE}:17:", "ingestion.tables[3].name: table 'public.customers' is listed twice (also tables[2])"),
    ("record-column", schema_file(ORDERS, lambda d: d["fields"].append(
        {"name": "address", "type": "RECORD", "fields": [{"name": "city", "type": "STRING"}]})),
     f"{ORDERS}:", "fields[5].type: field 'address' is a RECORD: a database table's columns are scalar"),
    ("headwaters-own-column", schema_file(ORDERS, lambda d: d["fields"].append(
        {"name": "_change_position", "type": "STRING"})),
     f"{ORDERS}:", "fields[5].name: '_change_position' is one of the columns headwater adds to CDC tables"),
    ("password-in-the-profile", text_edit("platform.yaml", "      password_secret: shop-postgres-password",
                                          "      password: hunter2-not-real"),
     "platform.yaml:48:7", "datastream.connection_profiles.shop-postgres.password: 'password' holds a password in "
                           "plain text; a password is never written in YAML: put it in Secret Manager"),
    ("password-in-the-connector", ingestion(db_password="hunter2-not-real"),
     f"{FILE}:", "ingestion.db_password: 'db_password' holds a password in plain text"),
    ("password-anywhere-says-the-secret-manager-way", connector(labels={"pwd": "x"}),
     f"{FILE}:", "and name the secret in the connection profile: password_secret: <id>"),
    ("connection-uri-with-a-password", connector(description="replica of postgresql://shop:s3cret@10.0.0.5/shop"),
     f"{FILE}:", "description: this value is a connection URI with a password in it"),
    ("profile-reference-to-nothing", ingestion(connection_profile="shop-pg"),
     f"{FILE}:", "ingestion.connection_profile: connection profile 'shop-pg' is not declared in platform.yaml "
                 "(datastream.connection_profiles; declared: shop-postgres) (did you mean 'shop-postgres'?)"),
    ("profile-of-another-platform",
     ingestion(connection_profile="projects/someone-else/locations/us-central1/connectionProfiles/shop-postgres"),
     f"{FILE}:", "is not this platform's (project headwater-demo, region europe-west1)"),
    ("database-type-differs-from-the-profile", ingestion(database_type="mysql", publication=None,
                                                         replication_slot=None),
     f"{FILE}:", "ingestion.database_type: database_type mysql but connection profile 'shop-postgres' connects to a "
                 "postgresql database"),
    ("oracle-not-supported", ingestion(database_type="oracle", publication=None, replication_slot=None),
     f"{FILE}:", "ingestion.database_type: database_type oracle is not supported yet"),
    ("slot-on-mysql", ingestion(database_type="mysql"),
     f"{FILE}:", "ingestion.publication: publication applies to database_type postgresql only"),
    ("slot-name-not-a-postgres-identifier", ingestion(replication_slot="Headwater-Slot"),
     f"{FILE}:", "ingestion.replication_slot: String should match pattern"),
    ("processing-on-cdc", connector(processing={"bronze_to_silver": [{"deduplication": {"key": ["order_id"]}}]}),
     f"{FILE}:", "processing.bronze_to_silver: processing.bronze_to_silver does not apply to a database_cdc source"),
    ("silver-settings-on-cdc", connector(silver={"cluster_by": ["status"]}),
     f"{FILE}:", "silver.cluster_by: silver.cluster_by does not apply to a database_cdc source"),
    ("schema-file-on-cdc", connector(schema={"file": ORDERS}),
     f"{FILE}:", "schema.file: a database_cdc source's tables name their schema files (tables[].schema)"),
    ("postgres-profile-without-database", text_edit("platform.yaml", "      database: shop\n", ""),
     "platform.yaml:", "datastream.connection_profiles.shop-postgres.database_type: a postgresql connection profile "
                       "needs database"),
]


@pytest.mark.parametrize(("mutate", "where", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_cdc_input_is_reported_with_position_and_nothing_is_touched(repo, mutate, where, message, monkeypatch,
                                                                        capsys):
    mutate(repo)

    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    lines = [str(p) for p in raised.value.problems]
    assert any(line.startswith(where) and message in line for line in lines), lines

    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    assert provider.calls == {}, "validation must fail before any API call"
    assert provider.objects == {}
    err = capsys.readouterr().err
    assert message in err and "nothing was changed" in err


def test_a_password_is_never_echoed(repo):
    text_edit("platform.yaml", "      password_secret: shop-postgres-password",
              "      password: Tr0ub4dor-and-3")(repo)
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    assert "Tr0ub4dor" not in str(raised.value)


def test_the_seeds_plain_names_and_the_full_form_both_validate(repo):
    state = load_repo(repo)
    (source,) = [s for s in state.sources if s.source_id == "postgres_orders"]
    assert [(t.object, t.primary_key, t.schema_file) for t in source.tables] == [
        ("public.orders", ("order_id",), "schemas/postgres_orders.orders.json"),
        ("public.order_items", ("order_id", "line"), "schemas/postgres_orders.order_items.json"),
        ("public.customers", ("customer_id",), "schemas/postgres_orders.customers.json")]
    # A table outside the default schema gets <schema>_<table> in its names and schema file.
    text_edit(FILE, "    - customers", "    - {name: crm.customers, schema: schemas/postgres_orders.customers.json}")(repo)
    (source,) = [s for s in load_repo(repo).sources if s.source_id == "postgres_orders"]
    assert source.tables[2].key == "crm_customers"


class LiveTables(MemoryProvider):
    """A stream provider that can tell the live tables' columns (as Datastream's discover does)."""

    kinds = (Kind.DATASTREAM_CONNECTION_PROFILE, Kind.DATASTREAM_STREAM)

    def __init__(self, columns):
        super().__init__()
        self.columns = columns
        self.asked = []

    def source_columns(self, profile, objects):
        self.asked.append((profile["host"], sorted(objects)))
        return self.columns


LIVE = {
    "public.orders": {"order_id": "bigint", "customer_id": "bigint", "status": "text", "total": "numeric",
                      "placed_at": "timestamp with time zone"},
    "public.order_items": {"order_id": "bigint", "line": "integer", "sku": "text", "quantity": "integer",
                           "unit_price": "numeric"},
    "public.customers": {"customer_id": "bigint", "name": "text", "email": "text", "country": "character",
                         "updated_at": "timestamp with time zone"},
}


def _plan_with(repo, monkeypatch, columns):
    class Secrets:
        def missing(self, ids):
            return set()

    stream = LiveTables(columns)
    other = MemoryProvider()
    # Joined tables that only exist on GCP (gold.customers) are not this test's subject.
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([other, stream], secrets=Secrets(),
                                                                       check_references=False))
    return stream, other


def test_a_schema_that_agrees_with_the_live_tables_plans(repo, monkeypatch):
    stream, _ = _plan_with(repo, monkeypatch, LIVE)
    assert cli.main(["plan", "--repo", str(repo)]) == 2
    assert stream.asked == [("10.20.0.5", [("public", "customers"), ("public", "order_items"), ("public", "orders")])]


@pytest.mark.parametrize(("live", "where", "message"), [
    ({**LIVE, "public.orders": {k: v for k, v in LIVE["public.orders"].items() if k != "total"}},
     f"{ORDERS}:8:", "fields[3].name: column 'total' is not a column of public.orders in the database"),
    ({**LIVE, "public.orders": {**LIVE["public.orders"], "status": "integer"}},
     f"{ORDERS}:7:", "fields[2].type: column 'status' is integer in public.orders; STRING cannot hold its values"),
    ({**LIVE, "public.orders": {**LIVE["public.orders"], "note": "text"}},
     f"{ORDERS}:4:", "fields: public.orders has column(s) note that schemas/postgres_orders.orders.json does not list: "
                     "with validation strict every change would be a dead letter (unknown_field)"),
    ({k: v for k, v in LIVE.items() if k != "public.customers"},
     f"{FILE}:", "ingestion.tables[2]: table public.customers does not exist in the database of connection profile "
                 "'shop-postgres'"),
], ids=["column-missing-in-the-database", "type-that-cannot-hold-it", "column-the-schema-lacks", "no-such-table"])
def test_a_schema_that_disagrees_with_the_live_table_fails_the_plan_and_nothing_is_touched(
        repo, monkeypatch, capsys, live, where, message):
    stream, other = _plan_with(repo, monkeypatch, live)
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    err = capsys.readouterr().err
    assert any(line.startswith(where) and message in line for line in err.splitlines()), err
    assert other.objects == {} and stream.objects == {}


def test_the_pull_request_summary_names_each_tables_column_changes(tmp_path):
    from reconciler import pr

    base, head = copy_example(tmp_path / "base"), copy_example(tmp_path / "head")
    schema_file(ORDERS, lambda d: (d["fields"].append({"name": "note", "type": "STRING"}),
                                   d.update(version="1.1")))(head)
    summary = pr._compare("main", "0" * 40, load_repo(base), load_repo(head))
    (change,) = [c for c in summary.sources if c.source_id == "postgres_orders"]
    assert change.columns == ("+orders.note (STRING, NULLABLE)", "orders.version 1.0 → 1.1")


def test_a_primary_key_in_another_sources_schema_is_refused(repo):
    schema_file("schemas/orders.json", lambda d: d.update(primary_key=["order_id"]))(repo)
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    assert any(str(p).startswith("schemas/orders.json:") and "primary_key: primary_key applies to the schema of a "
               "database_cdc source's table" in str(p) for p in raised.value.problems), raised.value.problems
