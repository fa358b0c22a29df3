"""The local stand-in for Datastream, its pure parts: wal2json's actions turned into Datastream's
events (what the pipeline parses), and values in the forms Datastream's JSON has. The reader
against a real PostgreSQL is tests/test_e2e_cdc.py's."""

from __future__ import annotations

import json

import pytest

from beam.common.spec import parse_spec
from beam.datastream_to_bigquery.events import ChangeParser
from providers.local_datastream import _array, change_events, convert, lag_text

STREAM = "projects/p/locations/local/streams/shop"


def action(kind: str, columns=None, identity=None, lsn="0/16B3748") -> dict:
    body = {"action": kind, "xid": 731, "timestamp": "2026-11-30 10:00:01.123456+00", "lsn": lsn, "schema": "public",
            "table": "orders", "pk": [{"name": "order_id", "type": "bigint"}]}
    if columns is not None:
        body["columns"] = [{"name": n, "type": t, "value": v} for n, t, v in columns]
    if identity is not None:
        body["identity"] = [{"name": n, "type": t, "value": v} for n, t, v in identity]
    return body


ROW = [("order_id", "bigint", 7), ("status", "text", "paid"), ("total", "numeric(10,2)", "12.50"),
       ("placed_at", "timestamp with time zone", "2026-11-30 09:59:00.5+00")]


def test_values_take_the_forms_datastreams_json_has():
    assert convert("numeric(10,2)", 12.5) == "12.5" and convert("numeric", "0.10") == "0.10"
    assert convert("timestamp with time zone", "2026-11-30 09:59:00.5+01") == "2026-11-30T08:59:00.500000Z"
    assert convert("timestamp without time zone", "2026-11-30 09:59:00") == "2026-11-30T09:59:00"
    assert convert("bytea", "\\x00ff") == "AP8="
    assert convert("jsonb", '{"a": [1, 2]}') == {"a": [1, 2]}
    assert convert("integer[]", '{1,2,NULL}') == [1, 2, None]
    assert convert("text[]", '{a,"b, c","NULL",NULL}') == ["a", "b, c", "NULL", None]
    assert convert("boolean", True) is True and convert("text", None) is None
    assert _array("{}") == []


def test_an_insert_update_and_delete_are_datastreams_events_the_pipeline_accepts():
    spec = parse_spec({"source_id": "shop", "project": "proj-1", "cdc": {"source_type": "postgresql", "tables": [{
        "object": "public.orders", "primary_key": ["order_id"], "schema": {"fields": [
            {"name": "order_id", "type": "INT64", "mode": "REQUIRED"}, {"name": "status", "type": "STRING"},
            {"name": "total", "type": "NUMERIC"}, {"name": "placed_at", "type": "TIMESTAMP"}]},
        "bronze": {"table": "bronze.t"}, "silver": {"table": "silver.t"}}]}})
    parser = ChangeParser(spec.cdc.tables, "postgresql")
    (insert,) = change_events(STREAM, action("I", ROW), "0/16B3748", 731)
    (update,) = change_events(STREAM, action("U", ROW, identity=[("order_id", "bigint", 7)]), "0/16B3800", 732)
    (delete,) = change_events(STREAM, action("D", identity=[("order_id", "bigint", 7)]), "0/16B3900", 733)
    body = insert.body
    assert body["object"] == "public_orders" and body["read_method"] == "postgres-cdc-wal"
    assert body["source_timestamp"] == "2026-11-30T10:00:01.123"
    assert body["source_metadata"] == {"schema": "public", "table": "orders", "is_deleted": False,
                                       "change_type": "INSERT", "tx_id": 731, "lsn": "0/16B3748",
                                       "primary_keys": ["order_id"]}
    assert body["payload"] == {"order_id": 7, "status": "paid", "total": "12.50",
                               "placed_at": "2026-11-30T09:59:00.500000Z"}
    changes = [parser.parse(json.dumps(e.body).encode(), "o") for e in (insert, update, delete)]
    assert all(dead is None for _, dead in changes)
    (i, _), (u, _), (d, _) = changes
    assert (i.deleted, u.deleted, d.deleted) == (False, False, True)
    assert i.position < u.position < d.position


def test_an_update_of_the_key_removes_the_old_key_then_writes_the_new_row():
    moved = [("order_id", "bigint", 8), *ROW[1:]]
    events = change_events(STREAM, action("U", moved, identity=[("order_id", "bigint", 7)]), "0/16B3800", 732)
    assert [(e.body["source_metadata"]["change_type"], e.body["payload"]["order_id"]) for e in events] == [
        ("UPDATE-DELETE", 7), ("UPDATE-INSERT", 8)]


def test_an_event_read_twice_has_the_same_uuid():
    first = change_events(STREAM, action("I", ROW), "0/16B3748", 731)[0].body["uuid"]
    again = change_events(STREAM, action("I", ROW), "0/16B3748", 731)[0].body["uuid"]
    other = change_events(STREAM, action("I", ROW), "0/16B3750", 731)[0].body["uuid"]
    assert first == again != other


def test_the_lag_line():
    assert lag_text({}) == ""
    assert lag_text({"wal_retained_bytes": 3 * 1024 * 1024, "lag_bytes": 0, "last_change_delay_s": 0.31}) == (
        "slot retains 3.0 MB of WAL, 0 B unread; last change written 0.3 s after its commit")


def test_a_reader_bound_to_emulators_that_are_gone_is_failed_then_restarted(tmp_path, monkeypatch) -> None:
    """Issue 9's kind 10 for the Datastream stand-in: a live reader launched against another
    `local up`'s emulators lands files nowhere anyone reads, so observe says FAILED (the plan
    updates it, which restarts it) and create does not refuse it as running."""
    import subprocess
    from dataclasses import asdict

    from providers.errors import AlreadyExists
    from providers.local_datastream import FAILED, LocalDatastreamProvider, StreamRecord
    from providers.localprocess import endpoints_in_effect, process_start, write_json_atomic
    from reconciler.resources import Kind, Resource

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1111")
    local = LocalDatastreamProvider("proj", tmp_path, run_readers=True)
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record = StreamRecord(name="shop", project="proj", pid=sleeper.pid, process_start=process_start(sleeper.pid),
                              spec={"state": "RUNNING"}, labels={}, source={}, destination={}, log=str(tmp_path / "log"),
                              started_at="now", stream_name=STREAM, endpoints=endpoints_in_effect())
        write_json_atomic(local._stream_path("shop"), asdict(record))
        (live,) = local.observe(Kind.DATASTREAM_STREAM)
        assert live.spec["state"] == "RUNNING", "bound to the emulators in effect: running"
        stream = Resource(Kind.DATASTREAM_STREAM, "shop", {"state": "RUNNING"})
        with pytest.raises(AlreadyExists):
            local.create(stream)

        monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:2222")  # another `local up`
        (live,) = local.observe(Kind.DATASTREAM_STREAM)
        assert live.spec["state"] == FAILED
        assert "no longer in effect" in live.status["error"] and "127.0.0.1:1111" in live.status["error"]
        started = []
        monkeypatch.setattr(local, "_start_stream", lambda resource, previous: started.append(previous.name))
        local.create(stream)  # not refused: the stale reader is stopped and a new one started
        assert started == ["shop"]
        assert sleeper.wait(timeout=10) is not None, "the stale reader was stopped"
    finally:
        sleeper.kill()
