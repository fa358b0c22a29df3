"""gcs_to_bigquery end to end on the emulators: a landing file in the Storage emulator becomes
Bronze and Silver rows in bqemulator and dead letters on the Pub/Sub emulator; once written,
the files move to the Bronze bucket, so the next scheduled run does not read them again."""

from __future__ import annotations

import gzip
from collections import Counter
from typing import Any

import pytest
from emulator_setup import bronze_attributes, count_rows, create_ingest_targets, pull_all
from google.cloud import storage

from beam.common.clients import bigquery_client, storage_client
from beam.common.runner import counters
from beam.common.spec import parse_spec
from beam.common.synthetic import SPEC, generate
from beam.gcs_to_bigquery import run


def _spec_doc(project_id: str) -> dict[str, Any]:
    doc = dict(SPEC, project=project_id)
    doc["dead_letter"] = {"topic": f"projects/{project_id}/topics/example_source-dead-letter"}
    return doc


def test_landing_file_to_bronze_silver_and_dead_letters(emulators: Any, project_id: str, unique: str) -> None:
    payloads, expected = generate(2_000, seed=11)
    doc = _spec_doc(project_id)
    spec = parse_spec(doc)
    subscription = create_ingest_targets(spec)

    bucket = storage_client().create_bucket(f"{unique}-landing")
    blob: storage.Blob = bucket.blob("example/2026-11-26/part-0001.json.gz")
    blob.upload_from_string(gzip.compress(b"\n".join(payloads) + b"\n"))

    import json

    result = run([
        "--source_spec", json.dumps(doc),
        "--input_pattern", f"gs://{unique}-landing/example/*/*.json.gz",
    ])

    got = counters(result)
    invalid = sum(expected.invalid.values())
    assert got["records_in"] == expected.records_in
    assert got["valid"] == expected.valid
    assert got["duplicates"] == expected.duplicates
    assert {k.removeprefix("invalid_"): v for k, v in got.items() if k.startswith("invalid_")} == expected.invalid
    assert got["silver_rows_written"] == expected.valid
    assert got["bronze_rows_written"] == expected.records_in
    assert count_rows(spec, "silver.example_source") == expected.valid
    assert count_rows(spec, "bronze.example_source") == expected.records_in
    (meta,) = bigquery_client(project_id).query(
        f"SELECT _ingested_at, _message_id, _schema_version FROM `{spec.table_ref('silver.example_source')}` "
        "WHERE id = 'txn-0'").result()
    assert meta._ingested_at is not None and meta._schema_version == "1.0"
    assert meta._message_id == f"gs://{unique}-landing/example/2026-11-26/part-0001.json.gz#1"

    letters = pull_all(subscription, invalid)
    assert Counter(m.attributes["reason"] for m in letters) == expected.invalid
    sent = set(payloads)
    assert all(m.data in sent for m in letters), "dead letters carry the original payload"
    assert all(m.attributes["source_id"] == "example_source" for m in letters)
    assert all(m.attributes["origin"].startswith(f"gs://{unique}-landing/example/") for m in letters)


def _avro(rows: list[dict[str, Any]]) -> bytes:
    import datetime as dt
    import io

    import fastavro

    schema = {
        "type": "record", "name": "Transaction",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "customer_id", "type": ["null", "string"]},
            {"name": "amount", "type": "double"},
            # A logical type: fastavro hands it over as a datetime, validation takes it as one.
            {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "email", "type": ["null", "string"]},
            {"name": "status", "type": ["null", "string"]},
            {"name": "quantity", "type": ["null", "int"]},
        ],
    }
    records = [dict(r, amount=float(r["amount"]), quantity=int(r["quantity"]) if r["quantity"] else None,
                    status=r["status"] or None, timestamp=dt.datetime.fromisoformat(r["timestamp"]))
               for r in rows]
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), records, codec="deflate")
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "avro"])
def test_csv_parquet_and_avro_landing_files(emulators: Any, project_id: str, unique: str, fmt: str) -> None:
    import io
    import json

    rows = [
        {"id": "txn-1", "customer_id": "c1", "amount": "12.5", "timestamp": "2026-11-26T10:00:00Z", "email": "a@x.io", "status": "new", "quantity": "2"},
        {"id": "txn-1", "customer_id": "c1", "amount": "12.5", "timestamp": "2026-11-26T10:00:00Z", "email": "a@x.io", "status": "new", "quantity": "2"},
        {"id": "txn-2", "customer_id": "c2", "amount": "-1", "timestamp": "2026-11-26T11:00:00Z", "email": "b@x.io", "status": "paid", "quantity": "1"},
        {"id": "txn-3", "customer_id": "c3", "amount": "7", "timestamp": "2026-11-26T12:00:00Z", "email": "c@x.io", "status": "", "quantity": ""},
    ]
    if fmt == "csv":
        import csv

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        data, name = buf.getvalue().encode(), "batch.csv"
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        typed = [dict(r, amount=float(r["amount"]), quantity=int(r["quantity"]) if r["quantity"] else None,
                      status=r["status"] or None) for r in rows]
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(typed), out)
        data, name = out.getvalue(), "batch.parquet"
    else:
        data, name = _avro(rows), "batch.avro"
    doc = _spec_doc(project_id)
    spec = parse_spec(doc)
    subscription = create_ingest_targets(spec)
    bucket = storage_client().create_bucket(f"{unique}-landing")
    bucket.blob(f"in/{name}").upload_from_string(data)

    got = counters(run(["--source_spec", json.dumps(doc), "--input_pattern", f"gs://{unique}-landing/in/"]))

    assert (got["records_in"], got["valid"], got["duplicates"], got["invalid_dq_positive_number"]) == (4, 2, 1, 1)
    assert count_rows(spec, "silver.example_source") == 2
    (letter,) = pull_all(subscription, 1)
    assert letter.attributes["reason"] == "dq_positive_number"
    assert b"txn-2" in letter.data
    if fmt == "avro":  # the timestamp came as a datetime and was normalised like any other
        (row,) = bigquery_client(project_id).query(
            f"SELECT timestamp FROM `{spec.table_ref('silver.example_source')}` WHERE id = 'txn-3'").result()
        assert row.timestamp.isoformat() == "2026-11-26T12:00:00+00:00"
    # Bronze: the file's metadata and the row's position (line for CSV, row otherwise)
    position = "line" if fmt == "csv" else "row"
    origin = f"gs://{unique}-landing/in/{name}#{3 if fmt == 'csv' else 2}"
    attributes = bronze_attributes(spec, "bronze.example_source", origin)
    assert attributes["file"] == f"gs://{unique}-landing/in/{name}" and attributes["size"] == str(len(data))
    assert attributes["generation"].isdigit() and attributes[position] == origin.rsplit("#", 1)[1]


def test_ingested_files_move_to_bronze_and_the_next_run_reads_nothing(
        emulators: Any, project_id: str, unique: str) -> None:
    import datetime as dt
    import json

    payloads, expected = generate(300, seed=4)
    doc = dict(_spec_doc(project_id), bronze={"table": "bronze.example_source", "bucket": f"gs://{unique}-bronze"})
    spec = parse_spec(doc)
    subscription = create_ingest_targets(spec)
    client = storage_client()
    landing, bronze = client.create_bucket(f"{unique}-landing"), client.create_bucket(f"{unique}-bronze")
    half = len(payloads) // 2
    landing.blob("orders/a.json").upload_from_string(b"\n".join(payloads[:half]) + b"\n")
    landing.blob("orders/2026-11-26/b.json.gz").upload_from_string(gzip.compress(b"\n".join(payloads[half:])))
    # Unreadable as a whole: gzip's magic bytes, then no gzip stream (plain bytes under a .gz name
    # are read as plain: the content decides the compression, readers.py).
    landing.blob("orders/broken.json.gz").upload_from_string(b"\x1f\x8b not really gzip")
    argv = ["--source_spec", json.dumps(doc), "--input_pattern", f"gs://{unique}-landing/orders/"]

    first = counters(run(argv))

    invalid = sum(expected.invalid.values())
    assert first["records_in"] == expected.records_in + 1 and first["unreadable_files"] == 1
    assert first["invalid_unparseable"] == expected.invalid["unparseable"] + 1
    assert (first["valid"], first["files_read"], first["files_moved"]) == (expected.valid, 3, 3)
    assert list(client.list_blobs(landing)) == [], "every file read left the landing prefix"
    today = dt.datetime.now(dt.UTC).date().isoformat()  # the files' creation date
    assert sorted(b.name for b in client.list_blobs(bronze)) == [
        f"source=example_source/date={today}/{name}" for name in ("2026-11-26/b.json.gz", "a.json", "broken.json.gz")]
    letters = pull_all(subscription, invalid + 1)
    (broken,) = [m for m in letters if m.attributes["origin"] == f"gs://{unique}-landing/orders/broken.json.gz"]
    assert broken.attributes["reason"] == "unparseable" and "BadGzipFile" in broken.attributes["detail"]

    second = counters(run(argv))

    assert second.get("records_in", 0) == 0 and second.get("files_moved", 0) == 0
    assert count_rows(spec, "silver.example_source") == expected.valid
    assert count_rows(spec, "bronze.example_source") == expected.records_in + 1
    attributes = bronze_attributes(spec, "bronze.example_source", f"gs://{unique}-landing/orders/a.json#2")
    assert attributes["line"] == "2" and attributes["file"] == f"gs://{unique}-landing/orders/a.json"
