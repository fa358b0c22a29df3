"""The columnar batch path: validate, check and de-duplicate JSON-lines files a chunk at a time.

The per-record path (``beam.common.transforms.ValidateAndDedup`` fed by ``ReadRecords``) runs
one generated Python function per record (``beam.common.checker.RecordChecker``). This path
gives Beam *file chunks* instead - a :class:`FileChunk` is ~``CHUNK_BYTES`` of whole lines of
one file - and does the common case with Arrow kernels (pyarrow, single-threaded), one call per
chunk and column:

1. **Screen** every line with one RE2 expression built from the schema (:func:`line_pattern`):
   a flat JSON object whose keys are all schema fields, each value a JSON token of the kind
   its type takes without conversion (a string for STRING and TIMESTAMP, an integer of at most
   18 digits for INT64, a plain number for FLOAT64, ``true``/``false`` for BOOL) or ``null``.
2. **Parse** the lines that pass with Arrow's JSON reader, the schema as explicit schema.
3. **Clear** each row with vectorized predicates that imply the checker's verdict is "valid"
   and its row equals the Arrow row (:meth:`ColumnarChecker._cleared`): REQUIRED fields
   present, a TIMESTAMP in the ``YYYY-MM-DDTHH:MM:SSZ`` form that names a real instant
   (canonical: ``...+00:00``; read from the bytes with numpy, :func:`_z_instants`), and every
   data-quality rule passing where the rule has an exact vectorized form (``not_null``,
   ``positive_number``, ``range`` with exactly comparable bounds,
   ``allowed_values`` on STRING or INT64, ``valid_email``, and ``regex`` for patterns made only
   of constructs on which RE2 and Python's ``re`` agree, on ASCII values).

Everything else - a line the screen does not pass (malformed JSON, not an object, a wrong or
converted type, an unknown field, escapes Arrow and orjson might decode differently), a row a
predicate does not clear, or the lines around one Arrow's reader rejects although screened (a
duplicated key: the reads are split in halves down to ``PARSE_LEAF`` lines) - goes through the per-record checker itself (``check_raw``), which decides
its fate, reason and detail. The vectorized steps therefore only ever *skip* the checker for
rows it would pass unchanged: there is one definition of the rules (``validation.py``,
``quality.py``), and the accounting, the dead letters and their reasons are the per-record
path's by construction. ``tests/beam/test_columnar.py`` runs both paths on generated data with
every dead-letter reason and the screen's edge cases, and compares Silver rows, dead letters
and counters.

Dedup is the per-record path's batch dedup (exact over the run, the kept row of a duplicate set
the one whose canonical JSON sorts first), on Arrow tables: rows are split into ``SHARDS`` (16)
shards by a stable 64-bit hash of their key columns (:func:`key_hash`), and travel through one
GroupByKey as Arrow IPC (:class:`ArrowChunkCoder`: buffers copied, no per-value encoding) with
their hash, their file (an index into the element's paths) and line; in a shard, rows whose hash
occurs once are kept as they are, the others (duplicates, the rows they repeat, collisions) are
decided by their ``_message_id`` with Arrow kernels where that is exactly the canonical-JSON
order (:func:`_first_by_message_id`), else in Python on the per-record key (:func:`dedup_table`).

Silver rows leave as ``ArrowChunk`` tables (``ROWS_AS_ARROW``, what batch ``gcs_to_bigquery``
runs: its Silver sink, ``beam.common.arrow_sink.WriteArrowRows``, writes the insertAll requests
from the Arrow columns) or as dicts (``ROWS_AS_DICTS``, what ``WriteRows`` takes).

Shapes and units: a ``FileChunk`` holds ~``readers.CHUNK_BYTES`` (4 MiB) of lines, ~27,000 of
the benchmark's 155-byte records; Arrow columns hold canonical values (TIMESTAMP as the UTF-8
text ``YYYY-MM-DDTHH:MM:SS+00:00``, INT64 int64, FLOAT64 float64, BOOL bool, STRING utf8);
``LINE`` is int64 (1-based), ``FILE`` int32, ``HASH`` uint64.

Where it applies (:func:`eligible`): batch ``gcs_to_bigquery`` on JSON lines, with a schema of
top-level STRING, INT64, FLOAT64, BOOL and TIMESTAMP fields and dedup keys among them. Other
formats in the same run (by suffix) travel as chunks of ``Raw`` records through the checker;
other schemas use the per-record path. Streaming keeps the per-record path.
"""

import pickle
import re
import re._constants as sre_constants  # the parser re itself uses (sre_parse is deprecated)
import re._parser as sre_parse
from collections.abc import Iterable, Iterator
from typing import Any, List, NamedTuple  # noqa: UP035 - Beam's batch typehints need typing.List

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from beam.common.checker import NULL_KEY, RecordChecker, key_function
from beam.common.records import Attributes, DeadLetter, Raw, Row
from beam.common.spec import Field, PipelineSpec, QualityRule
from beam.common.transforms import (
    DEAD_LETTERS,
    OUTPUT_BATCH,
    _canonical,
    check_raw,
    counter,
    freeze_long_lived_objects,
    gc_paused,
    keep_freed_memory,
)

COLUMNAR_TYPES = {"STRING": pa.string(), "INT64": pa.int64(), "FLOAT64": pa.float64(), "BOOL": pa.bool_(),
                  "TIMESTAMP": pa.string()}
MESSAGE_ID = "_message_id"
LINE = "__line"  # a row's line (or row) number in its file: its _message_id is "<path>#<line>"
FILE = "__file"  # a row's file, as an index into its ArrowChunk's paths


BLANK_UNCOUNTED = -1
PARSE_LEAF = 32  # screened lines the Arrow reader is still tried on, when a larger read failed
PARSE_FAILURES = 16  # failed parts a chunk's reads are split around, before the rest is left to the checker


class FileChunk(NamedTuple):
    """One element of the columnar path: whole lines of one JSON-lines file, or records.

    ``data``: the lines as read, newlines included (bytes, ~``CHUNK_BYTES``); ``first_line``:
    the 1-based number of its first line in the file; ``blank``: how many of its lines are blank
    (the reader counted them), or ``BLANK_UNCOUNTED``: the checker counts them. ``records``: instead of ``data``, ``Raw`` records for the
    checker (a CSV, Parquet or Avro file in the same run, or an unreadable file's failure).
    """

    path: str
    attrs: Attributes
    first_line: int
    data: bytes
    blank: int
    records: list[Raw] | None = None

    def raw_records(self) -> Iterator[Raw]:
        """The chunk as the ``Raw`` records ``ReadRecords`` emits (payload, None, origin,
        attributes), blank lines skipped: what Bronze and the checker take."""
        if self.records is not None:
            yield from self.records
            return
        origin, attrs = f"{self.path}#", self.attrs
        for n, line in enumerate(self.data.split(b"\n"), self.first_line):
            line = line.rstrip(b"\r\n")
            if line.strip():
                number = str(n)
                yield line, None, origin + number, attrs + (("line", number),)


class FileChunkCoder(beam.coders.Coder):
    """Pickle (a chunk is mostly one bytes object), with a size estimate that does not encode:
    Beam samples element sizes for its metrics, and pickling a 4 MiB chunk to measure it costs
    more than the chunk's whole screen."""

    def encode(self, value: FileChunk) -> bytes:
        return pickle.dumps(tuple(value), protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> FileChunk:
        return FileChunk(*pickle.loads(encoded))

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value: FileChunk) -> int:
        return len(value.data) + 256 * len(value.records or ())


beam.coders.registry.register_coder(FileChunk, FileChunkCoder)


def eligible(spec: PipelineSpec) -> bool:
    """Whether the spec's schema and keys fit the columnar path (see the module docstring)."""
    if not all(f.mode in ("NULLABLE", "REQUIRED") and f.type in COLUMNAR_TYPES and _NAME.match(f.name)
               for f in spec.fields):
        return False
    names = {f.name for f in spec.fields}
    return spec.dedup is None or all(k in names for k in spec.dedup.key)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# --------------------------------------------------------------------------- the screen

_WS = r"[ \t\r]*"
# A JSON string Arrow and orjson decode alike: no control characters, simple escapes, \u
# escapes of anything but surrogates (orjson rejects lone ones; Arrow might not).
_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))*"'
# INT64: integers within 64 bits (18 digits), what orjson gives as int and Arrow as int64.
_INT = r"-?(?:0|[1-9][0-9]{0,17})"
# FLOAT64: no "-0" integer (orjson: int 0 -> 0.0, Arrow: -0.0); both round correctly.
_NUMBER = r"(?:0|-?[1-9][0-9]{0,15}|-?0\.[0-9]{1,20}|-?[1-9][0-9]{0,15}\.[0-9]{1,20})(?:[eE][+-]?[0-9]{1,2})?"
_TOKENS = {"STRING": _STRING, "TIMESTAMP": _STRING, "INT64": _INT, "FLOAT64": _NUMBER, "BOOL": "(?:true|false)"}


def line_pattern(fields: tuple[Field, ...]) -> str:
    """RE2 for a line the Arrow reader takes exactly as orjson + the validator would (step 1)."""
    pairs = "|".join(f'"{f.name}"{_WS}:{_WS}(?:{_TOKENS[f.type]}|null)' for f in fields)
    pair = f"(?:{pairs})"
    return rf"^{_WS}\{{{_WS}(?:{pair}(?:{_WS},{_WS}{pair})*)?{_WS}\}}{_WS}\n?$"


BLANK = r"^[ \t\r\x0b\x0c]*\n?$"  # bytes.strip()'s whitespace: what the reader calls blank
# The stamps cleared without the checker (read by _z_instants with numpy; the tests' reference).
_TIMESTAMP_Z = r"^[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"

# Python's \s in a str pattern: every character str.isspace() calls whitespace.
_PY_SPACE = "".join(f"\\x{{{c:x}}}" for c in range(0x110000) if chr(c).isspace())
# quality.EMAIL with \s spelled as Python's: an RE2 match implies a Python re.match.
_EMAIL_RE2 = rf"^[^@{_PY_SPACE}]+@[^@{_PY_SPACE}.]+(\.[^@{_PY_SPACE}.]+)+$"


def re2_safe(pattern: str) -> bool:
    """Whether RE2 and Python's ``re.search`` agree on ``pattern`` for every ASCII string:
    literals, ``.``, positive classes of literals, ranges, ``\\d`` and ``\\w``, groups,
    alternation, greedy/lazy repeats, ``^`` and ``$`` (Python's ``$`` also matches before a
    final newline: RE2's never does, so an RE2 match still implies Python's). Anything else
    (flags, lookarounds, back-references, ``\\b``, ``\\s``, negations) is not vectorized."""
    try:
        parsed = sre_parse.parse(pattern)
    except re.error:
        return False
    if parsed.state.flags & ~(re.UNICODE | re.ASCII):
        return False
    return _safe_items(parsed)


def _safe_items(items: Iterable[Any]) -> bool:
    c = sre_constants
    for op, av in items:
        if op in (c.LITERAL, c.ANY):
            continue
        if op is c.IN:
            for iop, iav in av:
                if iop is c.NEGATE:
                    return False
                if iop is c.CATEGORY and iav not in (c.CATEGORY_DIGIT, c.CATEGORY_WORD):
                    return False
                if iop not in (c.LITERAL, c.RANGE, c.CATEGORY):
                    return False
        elif op is c.AT:
            if av not in (c.AT_BEGINNING, c.AT_END):
                return False
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            if not _safe_items(av[2]):
                return False
        elif op is c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags or not _safe_items(sub):
                return False
        elif op is c.BRANCH:
            if not all(_safe_items(b) for b in av[1]):
                return False
        else:
            return False
    return True


# --------------------------------------------------------------------------- per chunk


class Checked(NamedTuple):
    """A chunk's verdicts: ``table`` the valid rows of the file ``path`` (columns: the schema's
    fields, canonical values, and ``LINE``: ``_message_id`` is ``<path>#<line>``), ``dead`` the
    dead letters, ``reasons`` their count by reason, ``records_in`` the chunk's records, ``dropped_unknown`` lenient drops (checker rows only),
    ``checked_per_record`` how many records the checker decided."""

    path: str
    table: pa.Table
    dead: list[DeadLetter]
    reasons: dict[str, int]
    records_in: int
    dropped_unknown: int
    checked_per_record: int
    blank_lines: int = 0  # counted here (the chunk's ``blank`` was ``BLANK_UNCOUNTED``)


class ColumnarChecker:
    """``FileChunk -> Checked``, see the module docstring. Picklable; not thread-safe."""

    def __init__(self, fields: tuple[Field, ...], validation: str, rules: tuple[QualityRule, ...],
                 key_paths: tuple[str, ...] | None) -> None:
        self._args = (fields, validation, rules, key_paths)
        self.fields = fields
        self.rules = rules
        self.key_paths = key_paths
        self.checker = RecordChecker(fields, validation, rules, key_paths)
        self.json_schema = pa.schema([(f.name, COLUMNAR_TYPES[f.type]) for f in fields])
        self.schema = self.json_schema.append(pa.field(LINE, pa.int64()))
        self.pattern = line_pattern(fields)
        self.by_name = {f.name: f for f in fields}
        self.read_options = pajson.ReadOptions(use_threads=False, block_size=1 << 30)
        self.parse_options = pajson.ParseOptions(explicit_schema=self.json_schema, unexpected_field_behavior="error")

    def __reduce__(self) -> Any:
        return (ColumnarChecker, self._args)

    def __call__(self, chunk: FileChunk) -> Checked:
        if chunk.records is not None:
            return self._per_record(chunk.path, list(chunk.records), [])
        data = chunk.data
        lines = _lines(data)
        n = len(lines)
        fast = pc.match_substring_regex(lines, self.pattern)
        blank = None
        if chunk.blank:
            # A blank line never passes the screen (which wants a "{"): look among the others.
            fast_mask = _mask(fast)
            others = np.flatnonzero(~fast_mask)
            if len(others):
                blank = np.zeros(n, dtype=bool)
                blank[others] = _mask(pc.match_substring_regex(lines.take(pa.array(others)), BLANK))
                if n and data.endswith(b"\n"):
                    blank[n - 1] = False  # the empty string after the last newline is not a line
                if not blank.any():
                    blank = None
        fast_idx = np.flatnonzero(fast.to_numpy(zero_copy_only=False))
        table = None
        if len(fast_idx):
            table, fast_idx = self._parse(lines, fast_idx)
        if table is None:
            fast_idx = np.empty(0, dtype=np.int64)
            cleared_idx = fast_idx
            fast_table = self.schema.empty_table()
        else:
            ok, columns = self._cleared(table)
            cleared_idx = fast_idx[ok]
            mask = pa.array(ok)
            numbers = pa.array(cleared_idx + chunk.first_line)
            fast_table = pa.table([c.filter(mask) for c in columns] + [numbers], schema=self.schema)
        # Every other non-blank line goes to the checker, in file order.
        rest = np.ones(n, dtype=bool)
        rest[cleared_idx] = False
        if blank is not None:
            rest &= ~blank
        if n and data.endswith(b"\n"):
            rest[n - 1] = False  # the empty string after the last newline is not a line
        rest_idx = np.flatnonzero(rest)
        records: list[Raw] = []
        if len(rest_idx):
            origin, attrs, first = f"{chunk.path}#", chunk.attrs, chunk.first_line
            payloads = lines.view(pa.binary()).take(pa.array(rest_idx)).to_pylist()
            for i, line in zip(rest_idx.tolist(), payloads, strict=True):
                number = str(i + first)
                records.append((line.rstrip(b"\r\n"), None, origin + number, attrs + (("line", number),)))
        counted = int(blank.sum()) if blank is not None and chunk.blank == BLANK_UNCOUNTED else 0
        return self._per_record(chunk.path, records, [fast_table], fast=len(cleared_idx), blank=counted)

    def _parse(self, lines: pa.Array, idx: np.ndarray) -> tuple[pa.Table | None, np.ndarray]:
        """Step 2 on the screened lines ``idx``: their Arrow rows, and which lines they are.

        Arrow's reader fails a whole read for one line it will not take although the screen
        passed it (a duplicated key, bytes that are not UTF-8): then the lines are read in
        halves, down to ``PARSE_LEAF`` lines, and a part that still fails is left to the
        checker - at most ``PARSE_FAILURES`` such parts per chunk, after which every failing
        part is."""
        tables: list[pa.Table] = []
        parsed: list[np.ndarray] = []
        failures = 0

        def read(part: np.ndarray) -> None:
            nonlocal failures
            picked = lines.take(pa.array(part))
            try:
                got = pajson.read_json(pa.BufferReader(picked.buffers()[2]), self.read_options, self.parse_options)
            except pa.ArrowInvalid:
                got = None
            if got is not None and len(got) == len(part):  # a miscount cannot happen; never trusted
                tables.append(got)
                parsed.append(part)
                return
            if len(part) <= PARSE_LEAF or failures >= PARSE_FAILURES:
                failures += 1
                return
            half = len(part) // 2
            read(part[:half])
            read(part[half:])

        read(idx)
        if not tables:
            return None, np.empty(0, dtype=np.int64)
        return (pa.concat_tables(tables) if len(tables) > 1 else tables[0]), np.concatenate(parsed)

    def _per_record(self, path: str, records: list[Raw], tables: list[pa.Table], fast: int = 0,
                    blank: int = 0) -> Checked:
        rows, _keys, dead, reasons = check_raw(self.checker.check, records)
        dropped = self.checker.dropped_unknown
        self.checker.dropped_unknown = 0
        if rows:
            numbers = []
            for row in rows:  # the origin the checker stamped: "<path>#<n>", n back to a column
                where, _hash, number = row.pop(MESSAGE_ID).rpartition("#")
                if where != path:
                    raise AssertionError(f"a record of {path} has the origin {where}#{number}")
                numbers.append(int(number))
            table = pa.Table.from_pylist(rows, schema=self.json_schema)
            tables.append(table.append_column(LINE, pa.array(numbers, pa.int64())))
        table = pa.concat_tables(tables) if len(tables) > 1 else (tables[0] if tables else self.schema.empty_table())
        return Checked(path, table, dead, reasons, fast + len(records), dropped, len(records), blank)

    def _cleared(self, table: pa.Table) -> tuple[np.ndarray, list[pa.Array]]:
        """Step 3: which parsed rows the checker would pass unchanged, and the canonical columns."""
        ok = np.ones(len(table), dtype=bool)
        columns: list[pa.Array] = []
        for f in self.fields:
            col = table.column(f.name).combine_chunks()
            if f.mode == "REQUIRED" and col.null_count:
                ok &= _mask(pc.is_valid(col))
            if f.type == "TIMESTAMP" and len(col) > col.null_count:
                real, col = _z_instants(col)
                ok &= _mask(pc.is_null(col)) | real
            columns.append(col)
        values = {f.name: c for f, c in zip(self.fields, columns, strict=True)}
        for rule in self.rules:
            col = values.get(rule.field)
            f = self.by_name.get(rule.field)
            if col is None or f is None:  # a path the schema does not have: always null
                if rule.check == "not_null":
                    ok[:] = False
                continue
            if rule.check == "not_null":
                if col.null_count:
                    ok &= _mask(pc.is_valid(col))
                continue
            passes = _rule_passes(rule, f, col)
            # Null passes every other check; where no exact vectorized form exists, a non-null
            # value is left to the checker.
            ok &= _mask(pc.is_null(col)) if passes is None else _mask(pc.or_kleene(pc.is_null(col), passes))
        return ok, columns


_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


_Z_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_Z_SEPARATORS = np.array([4, 7, 10, 13, 16, 19])
_Z_SEPARATOR_BYTES = np.frombuffer(b"--T::Z", dtype=np.uint8)
_Z_CANONICAL_SUFFIX = np.frombuffer(b"+00:00", dtype=np.uint8)


def _z_instants(col: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Per value of a TIMESTAMP column (utf8, as read): whether it is ``YYYY-MM-DDTHH:MM:SSZ``
    (``_TIMESTAMP_Z``: 20 bytes, years 1000-9999) naming a real instant, as
    ``datetime.fromisoformat`` decides - month 1-12, a day of that month (leap years), hour
    <= 23, minute and second <= 59 -, and the column in the checker's canonical form for those
    values (``YYYY-MM-DDTHH:MM:SS+00:00``; other values: a placeholder, nulls null). Read from
    the bytes with numpy."""
    n = len(col)
    real = np.zeros(n, dtype=bool)
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset:col.offset + n + 1].astype(np.int64)
    buf = col.buffers()[2]
    data = np.frombuffer(buf, dtype=np.uint8) if buf is not None and buf.size else np.zeros(0, np.uint8)
    idx = np.flatnonzero(np.diff(offsets) == 20)
    out = np.empty((n, 25), dtype=np.uint8)
    out[:] = np.frombuffer(b"1970-01-01T00:00:00+00:00", dtype=np.uint8)
    if len(idx):
        d = data[offsets[idx][:, None] + np.arange(20)]
        digits = d[:, _Z_DIGITS] - np.uint8(48)  # a byte below "0" wraps past 9
        form = (digits <= 9).all(axis=1) & (digits[:, 0] >= 1)
        form &= (d[:, _Z_SEPARATORS] == _Z_SEPARATOR_BYTES).all(axis=1)
        v = digits.astype(np.int32)

        def num(k: int) -> np.ndarray:  # the two digits at k, k + 1
            return v[:, k] * 10 + v[:, k + 1]

        year = num(0) * 100 + num(2)
        month, day, hour, minute, second = num(4), num(6), num(8), num(10), num(12)
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        month_ok = (month >= 1) & (month <= 12)
        days = _DAYS[np.where(month_ok, month, 0)] + (leap & (month == 2))
        real[idx] = form & month_ok & (day >= 1) & (day <= days) & (hour <= 23) & (minute <= 59) & (second <= 59)
        out[idx, :19] = d[:, :19]
    out[:, 19:] = _Z_CANONICAL_SUFFIX
    canonical = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(np.arange(0, 25 * n + 1, 25, dtype=np.int32)),
                                                       pa.py_buffer(out)])
    if col.null_count:
        canonical = pc.if_else(pc.is_valid(col), canonical, pa.scalar(None, pa.string()))
    return real, canonical


def _rule_passes(rule: QualityRule, f: Field, col: pa.Array) -> pa.Array | None:
    """Non-null values that pass ``rule`` exactly as ``quality.py`` decides, or None when the
    rule has no exact vectorized form for this field."""
    c, t = rule.check, f.type
    numeric = t in ("INT64", "FLOAT64")
    if c == "valid_email" and t == "STRING":
        return pc.match_substring_regex(col, _EMAIL_RE2)
    if c == "positive_number" and numeric:
        return pc.greater(col, pa.scalar(0, col.type))
    if c == "range" and numeric:
        out = None
        for bound, op in ((rule.min, pc.greater_equal), (rule.max, pc.less_equal)):
            if bound is None:
                continue
            scalar = _exact_scalar(bound, col.type)
            if scalar is None:
                return None
            test = op(col, scalar)
            out = test if out is None else pc.and_(out, test)
        return out
    if c == "allowed_values":
        if t == "STRING" and all(type(v) is str for v in rule.values):
            return pc.is_in(col, value_set=pa.array(list(rule.values), pa.string()))
        if t == "INT64" and all(type(v) is int for v in rule.values) and all(
                -(2**63) <= v < 2**63 for v in rule.values):
            return pc.is_in(col, value_set=pa.array(list(rule.values), pa.int64()))
        return None
    if c == "regex" and t == "STRING" and re2_safe(rule.pattern or ""):
        return pc.and_(pc.string_is_ascii(col), pc.match_substring_regex(col, rule.pattern or ""))
    return None


def _exact_scalar(bound: Any, typ: pa.DataType) -> pa.Scalar | None:
    """``bound`` as a scalar of the column's type when Arrow's comparison then equals Python's."""
    if type(bound) is int:
        if pa.types.is_int64(typ) and -(2**63) <= bound < 2**63:
            return pa.scalar(bound, typ)
        if pa.types.is_float64(typ) and abs(bound) <= 2**53:
            return pa.scalar(float(bound), typ)
        return None
    if type(bound) is float and pa.types.is_float64(typ):
        return pa.scalar(bound, typ)
    return None


def _mask(arr: pa.Array) -> np.ndarray:
    """A boolean Arrow array as numpy, null as False."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def _lines(data: bytes) -> pa.Array:
    """``data`` split after each newline, as a string array sharing its memory (newlines
    included; the text is not UTF-8 checked - the screen and the reader reject bad bytes)."""
    if len(data) >= 1 << 31:
        raise ValueError("a chunk holds at most 2 GiB")  # int32 offsets (CHUNK_BYTES is far below)
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10) + 1
    offsets = np.empty(len(ends) + 2, dtype=np.int32)
    offsets[0] = 0
    offsets[1:len(ends) + 1] = ends
    offsets[-1] = len(data)
    n = len(offsets) - 1
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


# --------------------------------------------------------------------------- shards and dedup

_PRIME = np.uint64(1099511628211)
_MIX = np.uint64(0xBF58476D1CE4E5B9)
_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)
_WORDS = 8  # 8-byte words of a string the hash reads from its start (and its last 8 bytes)
HASH = "__h"  # the key hash column, added for the shuffle and the dedup
# Shards of the columnar dedup shuffle: fewer than the per-record path's DEDUP_SHARDS, because
# each (chunk, shard) element costs ~0.1 ms in the runner (IPC, data plane, grouping) whatever
# its size: on FnApiRunner 16 measured ~10% faster than 64 (8: no faster; 1: slower, one sort
# of everything). It bounds the dedup step's parallelism on Dataflow to 16 workers; that step
# is ~10% of the path's work.
SHARDS = 16


def key_hash(table: pa.Table, key_paths: tuple[str, ...]) -> np.ndarray:
    """Per row, a 64-bit hash of its key columns (uint64), stable across processes: equal keys
    (as the per-record key function tells them: floats by their bits, null as null) hash
    equal. Unequal keys may collide; the dedup then compares them exactly."""
    h = np.zeros(len(table), dtype=np.uint64)
    for path in key_paths:
        col = table.column(path).combine_chunks()
        if len(key_paths) == 1 and pa.types.is_string(col.type) and col.null_count:
            col = pc.fill_null(col, NULL_KEY)  # key_function's single-field null is this string
        h = h * _PRIME ^ _column_hash(col)
    return h


def _column_hash(col: pa.Array) -> np.ndarray:
    n = len(col)
    if pa.types.is_string(col.type):
        h = _string_hash(col)
    elif pa.types.is_boolean(col.type):
        h = pc.fill_null(col, False).to_numpy(zero_copy_only=False).astype(np.uint64)
    else:
        values = pc.fill_null(col, pa.scalar(0, col.type)).to_numpy(zero_copy_only=False)
        h = values.view(np.uint64).copy()  # floats by their bits, as repr() tells -0.0 from 0.0
    h *= _MIX
    h ^= h >> np.uint64(31)
    if col.null_count:
        h[_mask(pc.is_null(col))] = _NULL_HASH
    assert len(h) == n
    return h


# masks[r]: the low r bytes of a little-endian 8-byte word
_WORD_MASKS = np.array([(1 << (8 * r)) - 1 for r in range(9)], dtype=np.uint64)


def _string_hash(col: pa.Array) -> np.ndarray:
    """Per string, a hash of its length, its first ``_WORDS`` 8-byte words and its last 8 bytes:
    every byte of a string of up to 8 * ``_WORDS`` bytes. Words are read at any byte offset
    from one unaligned uint64 view of the data (8 zero bytes appended), the bytes past the
    string's end masked off, so equal strings hash equal wherever they sit."""
    n = len(col)
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset:col.offset + n + 1].astype(np.int64)
    buf = col.buffers()[2]
    data = np.zeros((buf.size if buf is not None else 0) + 16, dtype=np.uint8)
    if buf is not None and buf.size:
        data[:buf.size] = np.frombuffer(buf, dtype=np.uint8)
    # '<u8': the bytes past a string's end are the high ones on every host
    words = np.ndarray((len(data) - 7,), dtype=np.dtype("<u8"), buffer=data, strides=(1,))
    last = len(words) - 1
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    h = lengths.astype(np.uint64)
    longest = int(lengths.max()) if n else 0
    for k in range(min((longest + 7) // 8, _WORDS)):
        # A row's hash takes only its own words: how many the longest string has must not matter.
        rem = np.clip(lengths - 8 * k, 0, 8)
        w = words[np.minimum(starts + 8 * k, last)].astype(np.uint64) & _WORD_MASKS[rem]
        mixed = (h ^ w) * _MIX
        mixed ^= mixed >> np.uint64(29)
        h = np.where(rem > 0, mixed, h) if longest > 8 * k + 8 or (rem < 8).any() else mixed
    if longest > 8 * _WORDS:
        tail = np.maximum(offsets[1:] - 8, starts)
        mixed = (h ^ words[tail].astype(np.uint64)) * _MIX
        h = np.where(lengths > 8 * _WORDS, mixed, h)
    return h


def by_shard(table: pa.Table, key_paths: tuple[str, ...]) -> list[tuple[int, pa.Table]]:
    """The rows of ``table`` as one ``(shard, rows)`` pair per shard they fall in, by their key
    hash, which travels along as the column ``HASH``. (Not the per-record path's shards: the
    two paths never share a shuffle.)"""
    if not len(table):
        return []
    h = key_hash(table, key_paths)
    # uint8: numpy's stable sort of 8-bit integers is a radix sort (~30x its int64 merge sort)
    shard = ((h >> np.uint64(40)) % np.uint64(SHARDS)).astype(np.uint8)
    order = np.argsort(shard, kind="stable")
    ordered = table.append_column(HASH, pa.array(h)).take(pa.array(order))
    counts = np.bincount(shard, minlength=SHARDS)
    out = []
    start = 0
    for s in np.flatnonzero(counts).tolist():
        n = int(counts[s])
        out.append((s, ordered.slice(start, n)))
        start += n
    return out


_ROW_MAKERS: dict[tuple[str, ...], Any] = {}


def _row_maker(names: tuple[str, ...]) -> Any:
    """``f(*values) -> {name: value}`` as one dict display (~30% less than ``dict(zip(...))``).
    Names are validated identifiers (``eligible``) and written as ``repr()`` literals."""
    maker = _ROW_MAKERS.get(names)
    if maker is None:
        args = ", ".join(f"a{i}" for i in range(len(names)))
        pairs = ", ".join(f"{name!r}: a{i}" for i, name in enumerate(names))
        maker = _ROW_MAKERS[names] = eval(f"lambda {args}: {{{pairs}}}")  # noqa: S307 - see the docstring
    return maker


def to_rows(table: pa.Table) -> list[Row]:
    """Arrow rows -> the checker's dicts: a null field is absent (validation leaves absent
    NULLABLE fields out), every other value as its Python value. (``HASH`` is dropped.)"""
    if HASH in table.column_names:
        table = table.drop_columns([HASH])
    names = tuple(table.column_names)
    columns = [table.column(i) for i in range(table.num_columns)]
    rows = list(map(_row_maker(names), *[c.to_pylist() for c in columns]))
    for name, col in zip(names, columns, strict=True):
        if col.null_count:
            for i in np.flatnonzero(_mask(pc.is_null(col))).tolist():
                del rows[i][name]
    return rows


def with_message_id(table: pa.Table, paths: tuple[str, ...]) -> pa.Table:
    """``FILE`` and ``LINE`` -> Silver's ``_message_id`` (``<path>#<line>``, the record's
    origin), ``FILE`` indexing ``paths``."""
    lines = table.column(LINE).cast(pa.string())
    if len(paths) == 1:  # one file: its prefix as a scalar, not copied into every row first
        ids = pc.binary_join_element_wise(pa.scalar(f"{paths[0]}#", pa.string()), lines, "")
    else:
        ids = pc.binary_join_element_wise(pa.array(paths, pa.string()).take(table.column(FILE)), lines, "#")
    return table.drop_columns([FILE, LINE]).append_column(MESSAGE_ID, ids)


def _with_file(table: pa.Table, index: int) -> pa.Table:
    return table.append_column(FILE, pa.array(np.full(len(table), index, dtype=np.int32)))


def dedup_table(table: pa.Table, key_paths: tuple[str, ...], paths: tuple[str, ...]) -> pa.Table:
    """One row per key, the kept row of a duplicate set the one whose canonical JSON sorts first
    (``transforms._canonical``, as the per-record path). ``table``: the schema's columns,
    ``FILE`` (indexing ``paths``), ``LINE`` and ``HASH``; returns Silver's columns (the schema's
    and ``_message_id``).

    Rows whose key hash occurs once are kept as they are. The others (the duplicates, the rows
    they repeat, and any hash collision) are decided by :func:`_first_by_message_id` when that
    is exact for them, else as dicts (with their ``_message_id``) grouped on the per-record
    path's key (``key_function``) in Python."""
    h = table.column(HASH).to_numpy()
    table = table.drop_columns([HASH])
    order = np.argsort(h)  # not stable (~6x faster): only which rows share a hash matters here
    ordered = h[order]
    same = ordered[1:] == ordered[:-1]
    if same.any():
        repeated_sorted = np.zeros(len(h), dtype=bool)
        repeated_sorted[1:] |= same
        repeated_sorted[:-1] |= same
        candidates = np.sort(order[repeated_sorted])
        repeated = np.zeros(len(h), dtype=bool)
        repeated[candidates] = True
        rows = with_message_id(table.take(pa.array(candidates)), paths)
        kept = _first_by_message_id(rows, h[candidates], key_paths)
        if kept is None:
            best: dict[str, tuple[bytes, int]] = {}
            key_of = key_function(key_paths)  # the per-record path's key: its equality decides
            for i, row in enumerate(to_rows(rows)):
                key, canon = key_of(row), _canonical(row)
                old = best.get(key)
                if old is None or canon < old[0]:
                    best[key] = (canon, i)
            kept = np.array([i for _canon, i in best.values()], dtype=np.int64)
        keep = ~repeated
        keep[candidates[kept]] = True
        table = table.filter(pa.array(keep))
    return with_message_id(table, paths)


def _first_by_message_id(rows: pa.Table, h: np.ndarray, key_paths: tuple[str, ...]) -> np.ndarray | None:
    """The kept row of each duplicate set among ``rows`` (Silver's columns, hashes ``h``), as
    indices into ``rows``, without making dicts - or None where that shortcut is not exact.

    The canonical JSON has sorted keys; when every other field name sorts after
    ``_message_id``, the message id is its first member, and since no two rows share one, the
    comparison of two rows' canonical JSON is decided inside it: by the bytes of
    ``<message id>"`` (orjson writes UTF-8 as is and escapes only ``"``, ``\\`` and control
    characters, which must then be absent). Each hash must also be one key: every key column
    equal across the rows that share the hash (floats by their bits), else there was a
    collision and the caller decides in Python."""
    if any(name < MESSAGE_ID for name in rows.column_names):
        return None
    ids = rows.column(MESSAGE_ID)
    if pc.any(pc.match_substring_regex(ids, r'["\\\x00-\x1f]')).as_py():
        return None
    order = pc.sort_indices(pa.table({"h": pa.array(h), "m": pc.binary_join_element_wise(ids, '"', "")}),
                            sort_keys=[("h", "ascending"), ("m", "ascending")]).to_numpy()
    sh = h[order]
    first = np.ones(len(sh), dtype=bool)
    first[1:] = sh[1:] != sh[:-1]
    group_first = order[np.maximum.accumulate(np.where(first, np.arange(len(sh)), 0))]
    for path in key_paths:
        col = rows.column(path).combine_chunks()
        null = _mask(pc.is_null(col))
        if pa.types.is_floating(col.type):
            values = pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False).view(np.int64)
            equal = values[order] == values[group_first]
        else:
            equal = _mask(pc.equal(col.take(pa.array(order)), col.take(pa.array(group_first))))
        if not (equal | (null[order] & null[group_first])).all():
            return None
    return order[first]


class ArrowChunk:
    """Rows as an Arrow table, as one element: rows on their way through the dedup shuffle
    (``table`` with ``FILE`` and ``LINE``, ``FILE`` indexing ``paths``), or Silver rows
    (Silver's columns, ``paths`` empty)."""

    __slots__ = ("paths", "table")

    def __init__(self, table: pa.Table, paths: tuple[str, ...] = ()) -> None:
        self.table = table
        self.paths = paths

    def __len__(self) -> int:
        return len(self.table)


class ArrowChunkCoder(beam.coders.Coder):
    """Arrow IPC stream format: the column buffers copied, no per-value encoding; ``paths`` as
    schema metadata."""

    def encode(self, value: ArrowChunk) -> bytes:
        sink = pa.BufferOutputStream()
        paths = orjson.dumps([p.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for p in value.paths]
                             ) if value.paths else b"[]"
        table = value.table.replace_schema_metadata({b"paths": paths})
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes) -> ArrowChunk:
        table = pa.ipc.open_stream(encoded).read_all()
        paths = tuple(orjson.loads(table.schema.metadata[b"paths"]))
        return ArrowChunk(table.replace_schema_metadata(None), paths)

    def is_deterministic(self) -> bool:
        return False  # only ever a value, never a key

    def estimate_size(self, value: ArrowChunk) -> int:
        # Beam samples element sizes for its metrics; Table.nbytes walks every buffer (~65 us).
        return 128 * len(value.table)


beam.coders.registry.register_coder(ArrowChunk, ArrowChunkCoder)


# --------------------------------------------------------------------------- the DoFns


ROWS_AS_DICTS = "dicts"  # Silver rows as the per-record path gives them (what WriteRows sends)
ROWS_AS_ARROW = "arrow"  # Silver rows as ArrowChunk tables (Silver's columns): what arrow_sink.WriteArrowRows takes


class ValidateChunks(beam.DoFn):
    """``FileChunk`` -> ``(shard, ArrowChunk)`` (with a dedup key) or the valid rows (without:
    a list of dicts, or an ``ArrowChunk``), and dead letters (``DEAD_LETTERS``). Counters as
    ``ValidateRows``: ``records_in``, ``invalid_<reason>``, ``unknown_fields_dropped``; and
    ``blank_lines`` (of uncompressed files) and ``records_checked_per_record``."""

    def __init__(self, spec: PipelineSpec, rows: str = ROWS_AS_DICTS) -> None:
        self.spec = spec
        self.rows = rows

    def setup(self) -> None:
        freeze_long_lived_objects()
        keep_freed_memory()
        dedup = self.spec.dedup
        self.key_paths = dedup.key if dedup else None
        self.checker = ColumnarChecker(self.spec.fields, self.spec.validation, self.spec.quality_rules,
                                       self.key_paths)
        self.records_in = counter("records_in")
        self.dropped = counter("unknown_fields_dropped")
        self.per_record = counter("records_checked_per_record")
        self.blank_lines = counter("blank_lines")
        self.invalid: dict[str, Any] = {}

    def process(self, chunk: FileChunk) -> Iterator[Any]:
        with gc_paused():
            checked = self.checker(chunk)
        self.records_in.inc(checked.records_in)
        self.per_record.inc(checked.checked_per_record)
        for reason, n in checked.reasons.items():
            if reason not in self.invalid:
                self.invalid[reason] = counter(f"invalid_{reason}")
            self.invalid[reason].inc(n)
        if checked.dropped_unknown:
            self.dropped.inc(checked.dropped_unknown)
        if checked.blank_lines:
            self.blank_lines.inc(checked.blank_lines)
        if self.key_paths:
            # One element per chunk and shard. (Holding a bundle's rows to send one per shard
            # measured ~10% slower on FnApiRunner: the concatenations cost more than elements.)
            paths = (checked.path,)
            for shard, rows in by_shard(checked.table, self.key_paths):
                yield shard, ArrowChunk(_with_file(rows, 0), paths)
        elif len(checked.table):
            table = with_message_id(_with_file(checked.table, 0), (checked.path,))
            yield to_rows(table) if self.rows == ROWS_AS_DICTS else ArrowChunk(table)
        for letter in checked.dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)


class _DedupShard(beam.DoFn):
    def __init__(self, key_paths: tuple[str, ...]) -> None:
        self.key_paths = key_paths

    def setup(self) -> None:
        self.valid = counter("valid")
        self.duplicates = counter("duplicates")

    def kept(self, element: tuple[int, Iterable[ArrowChunk]]) -> pa.Table:
        # One table for the shard, FILE renumbered into one list of paths; the message ids are
        # made once, for the kept rows (and the dedup's candidates).
        paths: dict[str, int] = {}
        tables = []
        for c in element[1]:
            table = c.table
            if c.paths:
                files_ = [paths.setdefault(p, len(paths)) for p in c.paths]
                if files_ != list(range(len(c.paths))):
                    remap = pa.array(np.array(files_, dtype=np.int32))
                    table = table.set_column(table.column_names.index(FILE), FILE, remap.take(table.column(FILE)))
            tables.append(table)
        # One chunk a column: the dedup's take and filter cost more on the chunks' 37-odd pieces
        # than one copy of the shard (~0.025 us a row less in all).
        table = pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]
        with gc_paused():
            kept = dedup_table(table, self.key_paths, tuple(paths))
        self.valid.inc(len(kept))
        self.duplicates.inc(len(table) - len(kept))
        return kept


class DedupArrowShard(_DedupShard):
    """``(shard, [ArrowChunk])`` -> batches of the shard's rows (dicts), one per key
    (``dedup_table``); counts ``valid`` and ``duplicates``."""

    def infer_output_type(self, input_type: Any) -> Any:
        return dict[str, Any]

    @beam.DoFn.yields_batches
    def process(self, element: tuple[int, Iterable[ArrowChunk]]) -> Iterator[List[Row]]:  # noqa: UP006
        kept = self.kept(element)
        for start in range(0, len(kept), OUTPUT_BATCH):
            with gc_paused():
                rows = to_rows(kept.slice(start, OUTPUT_BATCH))
            yield rows


class DedupArrowShardToArrow(_DedupShard):
    """:class:`DedupArrowShard` ending in one ``ArrowChunk`` of Silver's columns per shard."""

    def process(self, element: tuple[int, Iterable[ArrowChunk]]) -> Iterator[ArrowChunk]:
        yield ArrowChunk(self.kept(element))


class CountValidBatches(beam.DoFn):
    """Without a dedup key: every valid row goes on, counted as ``valid``."""

    def setup(self) -> None:
        self.valid = counter("valid")

    def infer_output_type(self, input_type: Any) -> Any:
        return dict[str, Any]

    @beam.DoFn.yields_batches
    def process(self, rows: list[Row]) -> Iterator[List[Row]]:  # noqa: UP006
        self.valid.inc(len(rows))
        yield rows


class CountValidArrow(beam.DoFn):
    def setup(self) -> None:
        self.valid = counter("valid")

    def process(self, rows: ArrowChunk) -> Iterator[ArrowChunk]:
        self.valid.inc(len(rows))
        yield rows


class ArrowToRows(beam.DoFn):
    """``ArrowChunk`` of Silver rows -> batches of dicts (what ``WriteRows`` sends)."""

    def infer_output_type(self, input_type: Any) -> Any:
        return dict[str, Any]

    @beam.DoFn.yields_batches
    def process(self, chunk: ArrowChunk) -> Iterator[List[Row]]:  # noqa: UP006
        for start in range(0, len(chunk.table), OUTPUT_BATCH):
            with gc_paused():
                rows = to_rows(chunk.table.slice(start, OUTPUT_BATCH))
            yield rows


class ChunkRecords(beam.DoFn):
    """``FileChunk`` -> its ``Raw`` records, in batches (for Bronze, which keeps every record)."""

    def infer_output_type(self, input_type: Any) -> Any:
        return tuple[bytes, Any, str, tuple[tuple[str, str], ...]]

    @beam.DoFn.yields_batches
    def process(self, chunk: FileChunk) -> Iterator[List[Raw]]:  # noqa: UP006
        yield list(chunk.raw_records())


def _identity(x: Any) -> Any:
    return x


class ColumnarValidateAndDedup(beam.PTransform):
    """``FileChunk`` elements -> ``{"valid": Silver rows, "dead_letters": DeadLetter}``: the batch
    ``ValidateAndDedup`` of the per-record path, a chunk at a time. ``rows``: the valid rows as
    dicts in batches (``ROWS_AS_DICTS``, what the per-record path gives) or as ``ArrowChunk``
    elements (``ROWS_AS_ARROW``: what ``gcs_to_bigquery`` uses, for ``arrow_sink.WriteArrowRows``;
    ``ArrowToRows`` makes the dicts)."""

    def __init__(self, spec: PipelineSpec, rows: str = ROWS_AS_DICTS) -> None:
        super().__init__()
        self.spec = spec
        self.rows = rows

    def expand(self, chunks):  # no annotations: Beam would read them as output type hints
        checked = chunks | "ValidateChunks" >> beam.ParDo(ValidateChunks(self.spec, self.rows)).with_outputs(
            DEAD_LETTERS, main="rows")
        dedup = self.spec.dedup
        arrow = self.rows == ROWS_AS_ARROW
        if dedup is None:
            valid = checked.rows | "CountValid" >> beam.ParDo(CountValidArrow() if arrow else CountValidBatches())
        else:
            valid = (
                checked.rows
                | "TypeShards" >> beam.Map(_identity).with_output_types(tuple[int, ArrowChunk])
                | "GroupShards" >> beam.GroupByKey()
                | "DedupShards" >> beam.ParDo(DedupArrowShardToArrow(dedup.key) if arrow
                                              else DedupArrowShard(dedup.key))
            )
        return {"valid": valid, "dead_letters": checked[DEAD_LETTERS]}
