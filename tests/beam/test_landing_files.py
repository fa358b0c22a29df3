"""Landing files without the emulators: listing, the readers (Avro, and files that cannot be
read), Bronze attributes, and moving a file into the Bronze archive on the local disk (the same
functions do it on gs://; tests/beam/test_gcs_to_bigquery.py runs them on the Storage emulator)."""

from __future__ import annotations

import datetime as dt
import gzip
import io
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage

from beam.common import files
from beam.common.records import ParseFailure
from beam.common.sinks import BronzeRows
from beam.gcs_to_bigquery.pipeline import archive_path
from beam.gcs_to_bigquery.readers import ReadRecords
from beam.pubsub_to_bigquery.pipeline import to_raw


def _read(path: Path, fmt: str | None = None, compression: str = "auto") -> list[Any]:
    reader = ReadRecords(fmt, compression)
    reader.setup()  # counters outside a pipeline are no-ops
    (info,) = files.match(str(path))
    return [record for batch in reader.process(info) for record in batch]


def test_match_lists_local_files_with_size_and_creation_time(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.json").write_bytes(b"{}\n")
    (tmp_path / "in" / "sub" / "b.json").write_bytes(b"{}\n{}\n")
    found = files.match(str(tmp_path / "in") + "/")
    assert [(Path(f.path).name, f.size, f.generation) for f in found] == [("a.json", 3, None), ("b.json", 6, None)]
    assert dt.datetime.fromisoformat(found[0].created).tzinfo is not None


@pytest.mark.parametrize(("pattern", "base"), [
    ("gs://landing/orders/", "gs://landing/orders/"),
    ("gs://landing/orders/*/*.json.gz", "gs://landing/orders/"),
    ("gs://landing/orders/part-*.csv", "gs://landing/orders/"),
    ("gs://landing/orders/one.json", "gs://landing/orders/"),
])
def test_base_of_a_pattern_is_the_directory_it_lists(pattern: str, base: str) -> None:
    assert files.base_of(pattern) == base


def test_archive_path_keeps_the_path_under_the_landing_prefix() -> None:
    info = files.FileInfo("gs://landing/orders/2026-11-26/part-1.json.gz", 10, 7, "2026-11-27T01:02:03+00:00")
    assert archive_path(info, "gs://landing/orders/", "gs://bronze", "orders") == \
        "gs://bronze/source=orders/date=2026-11-27/2026-11-26/part-1.json.gz"


def test_move_never_overwrites_and_a_retried_move_does_nothing_twice(tmp_path: Path) -> None:
    landing, bronze = tmp_path / "landing", tmp_path / "bronze"
    landing.mkdir()
    (landing / "part.json.gz").write_bytes(b"first")
    (first,) = files.match(str(landing / "part.json.gz"))
    target = str(bronze / "date=x" / "part.json.gz")

    assert files.move(first, target) == target
    assert not (landing / "part.json.gz").exists() and Path(target).read_bytes() == b"first"
    assert files.move(first, target) == target, "a retry after the move: nothing left to do"

    (landing / "part.json.gz").write_bytes(b"second")  # the same name again, other content
    (second,) = files.match(str(landing / "part.json.gz"))
    assert files.move(second, target) == str(bronze / "date=x" / "part-2.json.gz")
    assert Path(target).read_bytes() == b"first" and (bronze / "date=x" / "part-2.json.gz").read_bytes() == b"second"

    (landing / "part.json.gz").write_bytes(b"second")  # a retry whose copy had been made already
    (again,) = files.match(str(landing / "part.json.gz"))
    assert files.move(again, target) == str(bronze / "date=x" / "part-2.json.gz")
    assert sorted(p.name for p in (bronze / "date=x").iterdir()) == ["part-2.json.gz", "part.json.gz"]


def test_avro_rows_keep_their_types_and_become_json_payloads(tmp_path: Path) -> None:
    schema = fastavro.parse_schema({
        "type": "record", "name": "R",
        "fields": [{"name": "id", "type": "string"},
                   {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                   {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
                   {"name": "tags", "type": {"type": "array", "items": "string"}}],
    })
    at = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC)
    from decimal import Decimal

    out = io.BytesIO()
    fastavro.writer(out, schema, [{"id": "a", "at": at, "price": Decimal("1.50"), "tags": ["x"]},
                                  {"id": "b", "at": at, "price": Decimal("2.00"), "tags": []}])
    (tmp_path / "rows.avro").write_bytes(out.getvalue())

    records = _read(tmp_path / "rows.avro")

    payload, parsed, origin, attributes = records[0]
    assert orjson.loads(payload) == {"id": "a", "at": "2026-11-26T10:00:00+00:00", "price": "1.50", "tags": ["x"]}
    assert parsed["at"] == at and parsed["price"] == Decimal("1.50")
    assert origin == f"{tmp_path}/rows.avro#1"
    assert dict(attributes) == {"file": f"{tmp_path}/rows.avro", "size": str(len(out.getvalue())), "row": "1"}
    assert [dict(r[3])["row"] for r in records] == ["1", "2"]


@pytest.mark.parametrize(("name", "data", "fmt", "error"), [
    ("bad.json.gz", b"\x1f\x8b but not really gzip", None, "BadGzipFile"),
    ("bad.parquet", b"PAR1 but not really", None, "ArrowInvalid"),
    ("bad.avro", b"Obj\x01 not really", None, "ValueError"),
    ("bad.csv", b"id,amount\n\xff\xfe,1\n", None, "UnicodeDecodeError"),
    ("data.bin", b"{}\n", None, "cannot tell the format"),
])
def test_an_unreadable_file_becomes_one_unparseable_record(tmp_path: Path, name: str, data: bytes,
                                                           fmt: str | None, error: str) -> None:
    (tmp_path / name).write_bytes(data)
    ((payload, parsed, origin, attributes),) = _read(tmp_path / name, fmt)
    assert payload == b"" and type(parsed) is ParseFailure and error in parsed.detail
    assert origin == str(tmp_path / name) and dict(attributes)["file"] == str(tmp_path / name)


def test_records_before_a_truncated_gzip_stream_still_count(tmp_path: Path) -> None:
    import random

    rnd = random.Random(1)  # incompressible enough that half the file is several read chunks
    lines = [b'{"n": %d, "r": "%032x"}\n' % (i, rnd.getrandbits(128)) for i in range(100_000)]
    body = gzip.compress(b"".join(lines))
    (tmp_path / "cut.json.gz").write_bytes(body[: len(body) // 2])
    records = _read(tmp_path / "cut.json.gz")
    *good, last = records
    assert len(good) > 10_000 and [p + b"\n" for p, *_ in good] == lines[: len(good)]
    assert last[0] == b"" and f"after {len(good)} records" in last[1].detail and "EOFError" in last[1].detail


def test_bronze_rows_carry_the_attributes() -> None:
    message = PubsubMessage(b'{"id": 1}', {"b": "2", "a": "1"}, message_id="m1")
    raw = to_raw(message)
    assert raw == (b'{"id": 1}', None, "pubsub:m1", (("a", "1"), ("b", "2")))
    (rows,) = BronzeRows("src").process_batch([raw])
    assert rows[0]["attributes"] == [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]
    assert rows[0]["payload"] == '{"id": 1}' and rows[0]["origin"] == "pubsub:m1"


@pytest.mark.parametrize(("name", "compression", "gzipped"), [
    pytest.param("orders.csv", "gzip", False, id="plain-csv-under-compression-gzip"),
    pytest.param("orders.csv.gz", "auto", False, id="plain-file-with-a-gz-suffix"),
    pytest.param("orders.csv", "none", True, id="gzip-file-under-compression-none"),
    pytest.param("orders.csv", "auto", True, id="gzip-file-without-a-gz-suffix"),
    pytest.param("orders.csv.gz", "gzip", True, id="as-declared"),
])
def test_compression_is_read_from_the_content(tmp_path: Path, name: str, compression: str, gzipped: bool) -> None:
    text = b"order_id,amount\nA-1,10\nA-2,20\n"
    (tmp_path / name).write_bytes(gzip.compress(text) if gzipped else text)
    records = _read(tmp_path / name, "csv", compression)
    assert [parsed for _, parsed, _, _ in records] == [{"order_id": "A-1", "amount": "10"},
                                                     {"order_id": "A-2", "amount": "20"}]


def test_sniffing_keeps_an_unseekable_stream_whole() -> None:
    from beam.gcs_to_bigquery.readers import sniff_gzip

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, buffer) -> int:
            n = min(len(buffer), len(self.data))
            buffer[:n], self.data = self.data[:n], self.data[n:]
            return n

    stream, gzipped = sniff_gzip(io.BufferedReader(Pipe(gzip.compress(b"hello\n"))))
    assert gzipped and gzip.GzipFile(fileobj=stream).read() == b"hello\n"
    stream, gzipped = sniff_gzip(io.BufferedReader(Pipe(b"plain\n")))
    assert not gzipped and stream.read() == b"plain\n"
