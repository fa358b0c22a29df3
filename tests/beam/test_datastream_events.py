"""Datastream's change events, parsed (beam/datastream_to_bigquery/events.py) and turned into the
apply step's statements (apply.py): pure, no emulator. The statements' effect on BigQuery is
tests/beam/test_datastream_template.py's."""

from __future__ import annotations

import json

import orjson
import pytest

from beam.common.spec import CDC_BRONZE_FIELDS, CDC_SILVER_FIELDS, parse_spec
from beam.datastream_to_bigquery.apply import ChangeApplier, extraction
from beam.datastream_to_bigquery.events import (
    ChangeParser,
    iso_from_us,
    parse_timestamp_us,
    pg_lsn,
)

FIELDS = [{"name": "order_id", "type": "INT64", "mode": "REQUIRED"}, {"name": "status", "type": "STRING"},
          {"name": "amount", "type": "NUMERIC", "mode": "REQUIRED"}, {"name": "tags", "type": "STRING",
                                                                     "mode": "REPEATED"}]


def spec(source_type: str = "postgresql", **table):
    doc = {"source_id": "shop", "project": "proj-1", "dead_letter": {"topic": "projects/proj-1/topics/shop-dlq"},
           "cdc": {"source_type": source_type, "tables": [
               {"object": "public.orders", "primary_key": ["order_id"], "schema": {"version": "3", "fields": FIELDS},
                "bronze": {"table": "bronze.shop_orders_changes"}, "silver": {"table": "silver.shop_orders"},
                **table}]}}
    return parse_spec(doc)


def event(change_type="INSERT", payload=None, *, ts="2026-11-30T10:00:00.123", lsn="0/16B3748", uuid="u-1",
          table="orders", **metadata) -> bytes:
    body = {"uuid": uuid, "read_timestamp": ts, "source_timestamp": ts, "object": f"public_{table}",
            "read_method": "postgres-cdc-wal", "stream_name": "projects/p/locations/l/streams/s",
            "schema_key": "k", "sort_keys": [1, lsn],
            "source_metadata": {"schema": "public", "table": table, "is_deleted": change_type.endswith("DELETE"),
                                "change_type": change_type, "tx_id": 7, "lsn": lsn, "primary_keys": ["order_id"],
                                **metadata},
            "payload": payload if payload is not None else {"order_id": 7, "status": "new", "amount": "9.90"}}
    return json.dumps(body).encode()


def test_timestamps_in_both_of_datastreams_forms_and_epoch_millis():
    a = parse_timestamp_us("2026-11-30T10:00:00.123")
    assert a == parse_timestamp_us("2026-11-30 10:00:00.123") == parse_timestamp_us("2026-11-30T10:00:00.123Z")
    assert a == parse_timestamp_us(1796032800123)
    assert iso_from_us(a) == "2026-11-30T10:00:00.123000Z"
    with pytest.raises(ValueError):
        parse_timestamp_us("yesterday")


def test_lsn_orders_numerically_not_as_text():
    assert pg_lsn("0/FFFFFFFF") < pg_lsn("1/0") and pg_lsn("0/9") < pg_lsn("0/10")
    assert pg_lsn("1/0") == pg_lsn(1 << 32) == pg_lsn(str(1 << 32)), "the number itself, in either form"
    parser = ChangeParser(spec().cdc.tables, "postgresql")
    early = parser.parse(event(lsn="0/9", uuid="a"), "o")[0]
    late = parser.parse(event(lsn="0/10", uuid="b"), "o")[0]
    assert early.position < late.position  # same timestamp: the log position decides


def test_source_timestamp_decides_before_the_log_position():
    parser = ChangeParser(spec().cdc.tables, "postgresql")
    first = parser.parse(event(ts="2026-11-30T10:00:00.100", lsn="5/0", uuid="a"), "o")[0]
    second = parser.parse(event(ts="2026-11-30T10:00:00.200", lsn="0/1", uuid="b"), "o")[0]
    assert first.position < second.position


def test_a_backfill_read_without_a_log_position_sorts_before_changes_at_the_same_instant():
    parser = ChangeParser(spec().cdc.tables, "postgresql")
    snapshot = parser.parse(event(lsn=None, uuid="a", read_method="postgresql-backfill"), "o")[0]
    change = parser.parse(event(lsn="0/1", uuid="b"), "o")[0]
    assert snapshot.valid and snapshot.position < change.position


def test_mysql_positions_are_binlog_file_then_offset():
    mysql = spec("mysql", object="shop.orders")
    parser = ChangeParser(mysql.cdc.tables, "mysql")
    line = lambda f, p, u: json.dumps({  # noqa: E731
        "uuid": u, "source_timestamp": 1764496800123, "object": "shop_orders", "read_method": "mysql-cdc-binlog",
        "source_metadata": {"database": "shop", "table": "orders", "change_type": "INSERT", "is_deleted": False,
                            "log_file": f, "log_position": p},
        "payload": {"order_id": 1, "amount": 1}}).encode()
    a, b, c = (parser.parse(line(f, p, u), "o")[0] for f, p, u in
               (("mysql-bin.000009", 900, "a"), ("mysql-bin.000010", 4, "b"), ("mysql-bin.000010", 40, "c")))
    assert a.position < b.position < c.position


def test_a_valid_change_carries_the_canonical_row_and_its_key():
    change, dead = ChangeParser(spec().cdc.tables, "postgresql").parse(event(), "gs://l/f.jsonl#3")
    assert dead is None and change.valid and not change.deleted
    assert change.key == "[7]"
    assert change.bronze["r"] == {"order_id": 7, "status": "new", "amount": "9.90"}  # absent stays absent
    assert change.bronze["o"] == "gs://l/f.jsonl#3" and change.bronze["t"] == "INSERT"
    assert change.bronze["s"] == "2026-11-30T10:00:00.123000Z"


def test_a_delete_needs_only_its_primary_key():
    # REPLICA IDENTITY DEFAULT: a removal carries the key; REQUIRED columns may be null.
    change, dead = ChangeParser(spec().cdc.tables, "postgresql").parse(
        event("DELETE", {"order_id": 7, "status": None, "amount": None}), "o")
    assert dead is None and change.valid and change.deleted and change.key == "[7]"
    assert change.bronze["r"] == {"order_id": 7}


@pytest.mark.parametrize("line, reason", [
    (b"{not json", "unparseable"),
    (b"[1, 2]", "not_an_object"),
    (event(table="invoices"), "unknown_table"),
    (event("TRUNCATE"), "unknown_change_type"),
    (event(ts="whenever"), "bad_change_metadata"),
    (event(payload={"order_id": "seven", "amount": "1"}), "wrong_type"),
    (event(payload={"order_id": 1}), "missing_required"),
    (event(payload={"order_id": 1, "amount": 1, "colour": "red"}), "unknown_field"),
    (event("DELETE", {"status": "x"}), "missing_primary_key"),
])
def test_what_does_not_fit_is_a_dead_letter_with_its_reason(line, reason):
    change, dead = ChangeParser(spec().cdc.tables, "postgresql").parse(line, "gs://l/f#1")
    assert dead is not None and dead.reason == reason and dead.payload == line and dead.origin == "gs://l/f#1"
    # Bronze keeps every event of a known table, valid or not; other lines are dead letters only.
    if reason in ("unparseable", "not_an_object", "unknown_table"):
        assert change is None
    else:
        assert change is not None and not change.valid and change.bronze["x"] == reason


def test_lenient_validation_drops_unknown_columns():
    lenient = spec(schema={"version": "3", "validation": "lenient", "fields": FIELDS})
    change, dead = ChangeParser(lenient.cdc.tables, "postgresql").parse(
        event(payload={"order_id": 1, "amount": 1, "colour": "red"}), "o")
    assert dead is None and "colour" not in change.bronze["r"]


def test_a_batch_becomes_one_insert_and_one_merge_per_table_and_duplicates_go_once():
    s = spec()
    parser = ChangeParser(s.cdc.tables, "postgresql")
    changes = [parser.parse(event(uuid=u, payload={"order_id": k, "amount": 1}), "o")[0]
               for u, k in (("a", 1), ("b", 2), ("a", 1), ("c", 1))]
    (statement,) = ChangeApplier(s).statements(changes)
    assert statement.event_ids == ["a", "b", "c"] and statement.keys == ["[1]", "[2]"]
    assert [e["e"] for e in orjson.loads(statement.events)] == ["a", "b", "c"]
    assert statement.insert_sql.startswith("INSERT INTO `bronze.shop_orders_changes`")
    assert statement.merge_sql.startswith("MERGE `silver.shop_orders` AS T")
    assert "S.`_change_position` > T.`_change_position`" in statement.merge_sql
    assert statement.schema_version == "3"


def test_a_batch_of_only_invalid_events_merges_nothing():
    s = spec()
    change, _ = ChangeParser(s.cdc.tables, "postgresql").parse(event(payload={"order_id": "x"}), "o")
    (statement,) = ChangeApplier(s).statements([change])
    assert statement.merge_sql is None and statement.keys == []


def test_every_column_type_has_an_extraction():
    from beam.common.spec import SCALAR_TYPES, Field

    for kind in SCALAR_TYPES:
        assert "JSON_VALUE(e, '$.r.c')" in extraction(Field("c", kind))
        assert "JSON_VALUE_ARRAY(e, '$.r.c')" in extraction(Field("c", kind, "REPEATED"))


def test_headwaters_own_columns_are_not_table_columns():
    own = {f["name"] for f in (*CDC_BRONZE_FIELDS, *CDC_SILVER_FIELDS)}
    with pytest.raises(ValueError, match="one of headwater's own columns"):
        spec(schema={"fields": [*FIELDS, {"name": "_change_position", "type": "STRING"}]})
    assert all(name.startswith("_") for name in own)
