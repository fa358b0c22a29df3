"""Landing-file readers: JSON lines, CSV and Parquet, optionally gzip-compressed.

``ReadRecords`` turns one file into batches of ``Raw`` records (see ``beam.common.records``),
so the validation that follows runs batch by batch. What becomes the *payload* - the bytes a
dead letter and the Bronze table carry:

* JSON lines: the line itself (without its newline). Blank lines are not records; they are
  skipped and counted (``blank_lines``). Decoding happens later, in validation, so an
  unparseable line is an ``unparseable`` dead letter like any other bad record.
* CSV: the line(s) of the row as written (a quoted field may span lines). The first row is the
  header; every value is text and an empty value is null; a row whose column count differs
  from the header's is ``unparseable``.
* Parquet: each row re-encoded as a JSON object (Parquet has no per-row text to keep).

``origin`` is ``<path>#<n>``: the line number for JSON lines and CSV, the row number for Parquet.
"""

import csv
import gzip
import io
from collections.abc import Iterator
from typing import IO, Any, List, Tuple  # noqa: UP035 - Beam's typehints

import apache_beam as beam
import orjson

from beam.common import files
from beam.common.records import ParseFailure, Raw
from beam.common.transforms import counter, gc_paused

BATCH = 10_000  # records per emitted batch
READ_HINT = 1 << 20  # bytes per readlines() call

FORMATS_BY_SUFFIX = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}


def detect_format(path: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    name = path[:-3] if path.endswith(".gz") else path
    for suffix, found in FORMATS_BY_SUFFIX.items():
        if name.endswith(suffix):
            return found
    raise ValueError(f"cannot tell the format of {path!r}: set input_format (json, csv or parquet)")


def is_gzip(path: str, compression: str) -> bool:
    return compression == "gzip" or (compression == "auto" and path.endswith(".gz"))


class ReadRecords(beam.DoFn):
    """A file path -> batches of ``Raw`` records."""

    def __init__(self, fmt: str | None, compression: str) -> None:
        self.fmt = fmt
        self.compression = compression

    def setup(self) -> None:
        self.files_read = counter("files_read")
        self.blank_lines = counter("blank_lines")

    def infer_output_type(self, input_type: Any) -> Any:
        return Tuple[bytes, Any, str]  # noqa: UP006

    @beam.DoFn.yields_batches
    def process(self, path: str) -> Iterator[List[Raw]]:  # noqa: UP006
        fmt = detect_format(path, self.fmt)
        with files.open_read(path) as raw_stream:
            stream: IO[bytes] = raw_stream
            if is_gzip(path, self.compression):
                stream = gzip.GzipFile(fileobj=raw_stream)  # type: ignore[assignment]
            if fmt == "json":
                yield from self._json_lines(stream, path)
            elif fmt == "csv":
                yield from _csv_rows(stream, path)
            else:
                yield from _parquet_rows(stream, path)
        self.files_read.inc()

    def _json_lines(self, stream: IO[bytes], path: str) -> Iterator[list[Raw]]:
        n = 0
        blank = 0
        batch: list[Raw] = []
        while lines := stream.readlines(READ_HINT):
            with gc_paused():  # see beam.common.transforms.gc_paused
                for line in lines:
                    n += 1
                    line = line.rstrip(b"\r\n")
                    if not line.strip():
                        blank += 1
                        continue
                    batch.append((line, None, f"{path}#{n}"))
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch
        if blank:
            self.blank_lines.inc(blank)


def _csv_rows(stream: IO[bytes], path: str) -> Iterator[list[Raw]]:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    consumed: list[str] = []  # the physical lines of the row being parsed

    def lines() -> Iterator[str]:
        for line in text:
            consumed.append(line)
            yield line

    reader = csv.reader(lines())
    header = next(reader, None)
    if header is None:
        return
    consumed.clear()
    width = len(header)
    batch: list[Raw] = []
    for values in reader:
        payload = "".join(consumed).rstrip("\r\n").encode()
        consumed.clear()
        origin = f"{path}#{reader.line_num}"
        if not values:  # an empty line
            continue
        if len(values) != width:
            parsed: Any = ParseFailure(f"CSV row has {len(values)} columns, the header has {width}")
        else:
            parsed = {k: (v if v != "" else None) for k, v in zip(header, values, strict=True)}
        batch.append((payload, parsed, origin))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode("ascii")
    return str(value)  # Decimal, time, ...


def _parquet_rows(stream: IO[bytes], path: str) -> Iterator[list[Raw]]:
    import pyarrow.parquet as pq

    # ParquetFile needs random access (the footer is at the end); GCS readers and local files
    # are seekable, a gzip stream is not, so a compressed Parquet file is read into memory.
    if not stream.seekable():
        stream = io.BytesIO(stream.read())
    pf = pq.ParquetFile(stream)
    n = 0
    for record_batch in pf.iter_batches(batch_size=BATCH):
        batch: list[Raw] = []
        for row in record_batch.to_pylist():
            n += 1
            batch.append((orjson.dumps(row, default=_json_default), row, f"{path}#{n}"))
        yield batch
