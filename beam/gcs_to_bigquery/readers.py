"""Landing-file readers: JSON lines, CSV, Parquet and Avro, optionally gzip-compressed.

Compression is read from the content, not trusted from the setting: a file that starts with
gzip's magic bytes (``1f 8b``) is decompressed, any other is read as it is, whatever
``compression`` (``gzip``, ``none``, ``auto``) or the name's ``.gz`` says. So a plain ``.csv``
landed under ``compression: gzip`` is read, not turned into a ``BadGzipFile`` dead letter per
file; each such mismatch is counted (``compression_mismatches``) and logged with the file's
name. (No text, Parquet or Avro file starts with those bytes: ``1f`` is a control character, and
Parquet and Avro have magic numbers of their own.)

``ReadRecords`` turns one listed file (a ``beam.common.files.FileInfo``) into batches of ``Raw``
records (see ``beam.common.records``), so the validation that follows runs batch by batch.
What becomes the *payload* - the bytes a dead letter and the Bronze table carry:

* JSON lines: the line itself (without its newline). Blank lines are not records; they are
  skipped and counted (``blank_lines``). Decoding happens later, in validation, so an
  unparseable line is an ``unparseable`` dead letter like any other bad record.
* CSV: the line(s) of the row as written (a quoted field may span lines). The first row is the
  header; every value is text and an empty value is null; a row whose column count differs
  from the header's is ``unparseable``.
* Parquet and Avro: each row re-encoded as a JSON object (neither has per-row text to keep);
  the decoded row itself goes on to validation, so typed values (timestamps, decimals, bytes)
  are checked as what they are.

``origin`` is ``<path>#<n>``: the line number for JSON lines and CSV, the row number for
Parquet and Avro. ``attributes`` (Bronze's ``attributes`` column) are the file's metadata -
``file`` (its path), ``size`` (bytes), ``generation`` (GCS only: which version of the object
was read) - and the record's ``line`` (JSON lines, CSV) or ``row`` (Parquet, Avro) number.

A file that cannot be read as its format at all, or stops being readable part-way (a corrupt
or truncated gzip stream, bytes that are not Parquet or Avro, a CSV file that is not UTF-8),
does not fail the run: what was read before the error goes on as usual, and the rest becomes
one ``unparseable`` record with an empty payload, origin ``<path>`` and the error as detail -
so it is a dead letter and counted like any other bad record (``unreadable_files`` counts the
files). Errors of the storage itself (network, permissions) are not caught: the runner retries.
One is: the generation being read no longer exists (HTTP 404: deleted, or overwritten by a new
upload of the same name, which is a new file with its own generation). Retrying cannot bring it
back - in a streaming job it would retry forever - so the file ends there: what was read before
goes on, nothing else is emitted, and ``vanished_files`` counts it.
"""

import csv
import gzip
import io
import logging
import zlib
from collections.abc import Iterator
from typing import IO, Any, List, Tuple  # noqa: UP035 - Beam's typehints

import apache_beam as beam
import orjson
from google.api_core.exceptions import NotFound

from beam.common import files
from beam.common.records import Attributes, ParseFailure, Raw
from beam.common.transforms import counter, gc_paused

BATCH = 10_000  # records per emitted batch
CHUNK_BYTES = 4 << 20  # bytes of whole lines per FileChunk (the columnar path's element)
READ_HINT = 1 << 20  # bytes per readlines() call

FORMATS_BY_SUFFIX = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet",
                     ".avro": "avro"}

# What a file's *content* can raise when it is not what its format says: ValueError covers
# UnicodeDecodeError, pyarrow's ArrowInvalid and fastavro's header and schema errors. Not
# OSError in general (network failures are OSErrors), only gzip's own subclass of it.
FORMAT_ERRORS = (ValueError, EOFError, zlib.error, gzip.BadGzipFile, csv.Error)


def detect_format(path: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    name = path[:-3] if path.endswith(".gz") else path
    for suffix, found in FORMATS_BY_SUFFIX.items():
        if name.endswith(suffix):
            return found
    raise ValueError(f"cannot tell the format of {path!r}: set input_format (json, csv, parquet or avro)")


GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: str, compression: str) -> bool:
    """What the setting (and, for ``auto``, the name) says; the content decides (`sniff_gzip`)."""
    return compression == "gzip" or (compression == "auto" and path.endswith(".gz"))


class _Prefixed(io.RawIOBase):
    """A stream that was read from, with what was read put back in front (for unseekable streams)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def sniff_gzip(stream: IO[bytes]) -> tuple[IO[bytes], bool]:
    """``(stream to read from, whether its content is gzip)``, by the magic bytes."""
    head = stream.read(len(GZIP_MAGIC))
    if stream.seekable():
        stream.seek(0)
        return stream, head == GZIP_MAGIC
    return io.BufferedReader(_Prefixed(head, stream)), head == GZIP_MAGIC  # type: ignore[arg-type]


def file_attributes(file: files.FileInfo) -> Attributes:
    """The file's part of its records' Bronze ``attributes``."""
    attrs: Attributes = (("file", file.path), ("size", str(file.size)))
    if file.generation is not None:
        attrs += (("generation", str(file.generation)),)
    return attrs


class ReadRecords(beam.DoFn):
    """A listed file (``FileInfo``) -> batches of ``Raw`` records."""

    def __init__(self, fmt: str | None, compression: str) -> None:
        self.fmt = fmt
        self.compression = compression

    def setup(self) -> None:
        self.files_read = counter("files_read")
        self.blank_lines = counter("blank_lines")
        self.unreadable = counter("unreadable_files")
        self.vanished = counter("vanished_files")
        self.mismatches = counter("compression_mismatches")

    def infer_output_type(self, input_type: Any) -> Any:
        return Tuple[bytes, Any, str, Tuple[Tuple[str, str], ...]]  # noqa: UP006

    @beam.DoFn.yields_batches
    def process(self, file: files.FileInfo) -> Iterator[List[Raw]]:  # noqa: UP006
        return self.read(file, self._json_lines, _records_as_batch)

    def read(self, file: files.FileInfo, json_units: Any, records_unit: Any) -> Iterator[Any]:
        """The file as units: ``json_units(stream, path, attrs)`` yields ``(unit, records in it)``
        for JSON lines; ``records_unit(batch, file)`` turns a batch of ``Raw`` records (of the
        other formats, or an unreadable file's failure) into a unit."""
        path = file.path
        attrs = file_attributes(file)
        fmt = self.fmt
        read = 0
        try:
            fmt = detect_format(path, self.fmt)  # a file of unknown format is unreadable too
            with files.open_read(path, file.generation) as raw_stream:
                stream, gzipped = sniff_gzip(raw_stream)
                if gzipped != is_gzip(path, self.compression):  # the content decides (module docstring)
                    self.mismatches.inc()
                    logging.getLogger(__name__).warning(
                        "%s is %s although compression is %s%s: read as %s", path,
                        "gzip-compressed" if gzipped else "not gzip-compressed", self.compression,
                        " (by its .gz suffix)" if self.compression == "auto" else "",
                        "gzip" if gzipped else "it is")
                if gzipped:
                    stream = gzip.GzipFile(fileobj=stream)  # type: ignore[assignment]
                if fmt == "json":
                    for unit, n in json_units(stream, path, attrs):
                        read += n
                        yield unit
                else:
                    if fmt == "csv":
                        batches = _in_batches(_csv_rows(stream, path, attrs))
                    elif fmt == "parquet":
                        batches = _in_batches(_parquet_rows(stream, path, attrs))
                    else:
                        batches = _in_batches(_avro_rows(stream, path, attrs))
                    for batch in batches:
                        read += len(batch)
                        yield records_unit(batch, file)
        except FORMAT_ERRORS as e:  # see the module docstring
            self.unreadable.inc()
            as_what = f" as {fmt}" if fmt else ""
            where = f" after {read} records" if read else ""
            failure = ParseFailure(f"cannot read {path}{as_what}{where}: {type(e).__name__}: {e}")
            yield records_unit([(b"", failure, path, attrs)], file)
        except NotFound:  # see the module docstring
            self.vanished.inc()
            logging.getLogger(__name__).warning("%s (generation %s) vanished after %d records", path,
                                                file.generation, read)
            return
        self.files_read.inc()

    def _json_lines(self, stream: IO[bytes], path: str, attrs: Attributes) -> Iterator[list[Raw]]:
        n = 0
        blank = 0
        batch: list[Raw] = []
        origin = f"{path}#"
        chunks = iter(lambda: stream.readlines(READ_HINT), [])
        try:
            while True:
                # The cyclic collector stays paused from the first line of a batch until the
                # batch has gone through the fused steps downstream (they run inside the
                # ``yield``): resumed earlier, its first collection would walk every record
                # of the batch still alive - measured ~3% of the pipeline. See gc_paused.
                with gc_paused():
                    for lines in chunks:
                        for line in lines:
                            n += 1
                            line = line.rstrip(b"\r\n")
                            if not line.strip():
                                blank += 1
                                continue
                            # One str(n) for origin and attribute; ``attrs + (...,)`` builds no
                            # temporary list (``(*attrs, ...)`` does): ~25% of the reader's time.
                            number = str(n)
                            batch.append((line, None, origin + number, attrs + (("line", number),)))
                        if len(batch) >= BATCH:
                            break
                    if not batch:
                        break
                    yield batch, len(batch)
                    batch = []
        except FORMAT_ERRORS:
            if batch:
                yield batch, len(batch)  # the records read before the error still count
            raise
        finally:
            if blank:
                self.blank_lines.inc(blank)


def _records_as_batch(batch: list[Raw], _file: files.FileInfo) -> list[Raw]:
    return batch


class ReadChunks(ReadRecords):
    """A listed file -> ``FileChunk`` elements for the columnar path (``beam.common.columnar``):
    ~``CHUNK_BYTES`` of whole JSON lines each. A gzip stream is read with ``ReadRecords``' own
    ``readlines`` calls, so one that breaks part-way ends at the same record with the same dead
    letter; an uncompressed file (whose bytes cannot fail as a format) in blocks. Files of other
    formats, and an unreadable file's failure, as chunks of ``Raw`` records. (A generation
    deleted mid-read - ``vanished_files`` - ends where the read stopped, on both paths; where
    that is depends on timing, and here on the block size.)"""

    def infer_output_type(self, input_type: Any) -> Any:
        from beam.common.columnar import FileChunk

        return FileChunk

    def process(self, file: files.FileInfo) -> Iterator[Any]:  # type: ignore[override]
        from beam.common.columnar import FileChunk

        def records_unit(batch: list[Raw], f: files.FileInfo) -> Any:
            return FileChunk(f.path, file_attributes(f), 0, b"", 0, batch)

        return self.read(file, self._json_chunks, records_unit)

    def _json_chunks(self, stream: IO[bytes], path: str, attrs: Attributes) -> Iterator[tuple[Any, int]]:
        import numpy as np

        from beam.common.columnar import BLANK_UNCOUNTED, FileChunk

        if not isinstance(stream, gzip.GzipFile):
            # Not compressed: reading the bytes cannot fail as a format, so there is no "where
            # the error was" to reproduce; read blocks, cut at the last newline, and leave the
            # blank lines to the columnar step (BLANK_UNCOUNTED). The counts yielded are lines.
            first, rest = 1, b""
            while block := stream.read(CHUNK_BYTES):
                data = rest + block if rest else block
                cut = data.rfind(b"\n") + 1
                if not cut:
                    rest = data
                    continue
                chunk, rest = (data[:cut], data[cut:]) if cut < len(data) else (data, b"")
                lines = int(np.count_nonzero(np.frombuffer(chunk, dtype=np.uint8) == 10))  # ~5x bytes.count
                yield FileChunk(path, attrs, first, chunk, BLANK_UNCOUNTED), lines
                first += lines
            if rest:
                yield FileChunk(path, attrs, first, rest, BLANK_UNCOUNTED), 1
            return
        # gzip: the same readlines() calls as ReadRecords, so a stream that breaks part-way
        # ends at the same record, with the same "after N records" in its dead letter.
        first = 1
        blank_total = 0
        pending: list[bytes] = []
        size = 0
        try:
            for lines in iter(lambda: stream.readlines(READ_HINT), []):
                pending.extend(lines)
                size += sum(map(len, lines))
                if size >= CHUNK_BYTES:
                    blank = sum(1 for line in pending if not line.strip())
                    blank_total += blank
                    yield FileChunk(path, attrs, first, b"".join(pending), blank), len(pending) - blank
                    first += len(pending)
                    pending, size = [], 0
        except FORMAT_ERRORS:
            if pending:  # the lines of whole readlines() calls before the error, as ReadRecords
                blank = sum(1 for line in pending if not line.strip())
                blank_total += blank
                yield FileChunk(path, attrs, first, b"".join(pending), blank), len(pending) - blank
            raise
        finally:
            if blank_total:
                self.blank_lines.inc(blank_total)
        if pending:
            blank = sum(1 for line in pending if not line.strip())
            if blank:
                self.blank_lines.inc(blank)
            yield FileChunk(path, attrs, first, b"".join(pending), blank), len(pending) - blank


def _in_batches(records: Iterator[Raw]) -> Iterator[list[Raw]]:
    batch: list[Raw] = []
    try:
        for record in records:
            batch.append(record)
            if len(batch) >= BATCH:
                yield batch
                batch = []
    except FORMAT_ERRORS:
        if batch:
            yield batch  # the records read before the error still count
        raise
    if batch:
        yield batch


def _csv_rows(stream: IO[bytes], path: str, attrs: Attributes) -> Iterator[Raw]:
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
    for values in reader:
        payload = "".join(consumed).rstrip("\r\n").encode()
        consumed.clear()
        n = reader.line_num
        if not values:  # an empty line
            continue
        if len(values) != width:
            parsed: Any = ParseFailure(f"CSV row has {len(values)} columns, the header has {width}")
        else:
            parsed = {k: (v if v != "" else None) for k, v in zip(header, values, strict=True)}
        yield payload, parsed, f"{path}#{n}", (*attrs, ("line", str(n)))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode("ascii")
    return str(value)  # Decimal, time, ...


def _typed_rows(rows: Iterator[Any], path: str, attrs: Attributes) -> Iterator[Raw]:
    """Decoded rows (Parquet, Avro) -> ``Raw`` records, the payload being the row as JSON."""
    for n, row in enumerate(rows, 1):
        yield orjson.dumps(row, default=_json_default), row, f"{path}#{n}", (*attrs, ("row", str(n)))


def _parquet_rows(stream: IO[bytes], path: str, attrs: Attributes) -> Iterator[Raw]:
    import pyarrow.parquet as pq

    # ParquetFile needs random access (the footer is at the end); GCS readers and local files
    # are seekable, a gzip stream is not, so a compressed Parquet file is read into memory.
    if not stream.seekable():
        stream = io.BytesIO(stream.read())
    pf = pq.ParquetFile(stream)
    rows = (row for record_batch in pf.iter_batches(batch_size=BATCH) for row in record_batch.to_pylist())
    return _typed_rows(rows, path, attrs)


def _avro_rows(stream: IO[bytes], path: str, attrs: Attributes) -> Iterator[Raw]:
    import fastavro

    # An Avro object container file: a header with the writer's schema, then blocks of rows
    # (each block compressed with the file's codec: null, deflate; snappy etc. need their
    # libraries). Read front to back, so a gzip stream needs no buffering. fastavro decodes
    # logical types to Python values (timestamp-* -> datetime, decimal -> Decimal, date, uuid).
    return _typed_rows(iter(fastavro.reader(stream)), path, attrs)
