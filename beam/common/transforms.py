"""The shared ingestion path: parse -> validate -> data quality -> de-duplicate.

Every ingesting template (``pubsub_to_bigquery``, ``gcs_to_bigquery``) applies
:class:`ValidateAndDedup` to a PCollection of ``Raw`` records and gets back the Silver rows and
the dead letters; only sources and sinks differ between templates, and between the local runner
and Dataflow. The benchmark (``bench/beam_throughput.py``) times exactly this transform.

Throughput: the DoFns are *batched* (Beam's ``process_batch``): they receive a list of records
per call, so Beam's per-element overhead (measured 4-5x the cost of the validation itself on a
per-element DoFn) is paid per batch. Readers emit batches directly (``yields_batches``), so a
record is never an individual Beam element on the batch path.

Accounting (the Beam counters, namespace ``headwater``)::

    records_in = valid + duplicates + sum(invalid_<reason>)

``records_in`` is counted when a record enters validation, ``invalid_<reason>`` when it is
rejected (exactly one reason per record: the first failure), ``duplicates`` and ``valid`` by the
de-duplication step (``valid`` = rows sent on to Silver). Every rejected record becomes a
:class:`~beam.common.records.DeadLetter` carrying its original payload and reason. Sinks keep
their own counters (``*_rows_written``, ``sink_rejected``).

De-duplication (on the spec's ``deduplication.key``) never relies on event-time windows closing
(the local streaming runner drops a backlog as late data under them):

* batch: exact over the whole input. Rows are split by a stable hash of their key into
  ``DEDUP_SHARDS`` shards, moved through one GroupByKey as whole chunks (one element per chunk
  and shard, not per row), and each shard keeps one row per key. Which row of a duplicate set
  is kept does not depend on arrival order: the one whose canonical JSON sorts first.
* streaming: exact within ``window_seconds`` of processing time. A stateful DoFn keyed by the
  dedup key remembers a key for ``window_seconds`` after its first row (a processing-time
  timer clears it) and drops later rows with that key; the first row seen wins. State is
  bounded by the number of distinct keys per window. As a second line, the Silver sink sends a
  BigQuery ``insertId`` derived from the same key, so a row re-sent after a worker retry is
  dropped by BigQuery's best-effort de-duplication too.

Without a dedup key nothing is de-duplicated and every valid row counts as ``valid``.
"""

import ctypes
import gc
import hashlib
import platform
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, List  # noqa: UP035 - Beam's batch typehints need typing.List

import apache_beam as beam
import orjson
from apache_beam.coders import BooleanCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from beam.common.checker import RecordChecker, key_function  # noqa: F401 - key_function is re-exported
from beam.common.records import Chunk, DeadLetter, ParseFailure, Raw, Row
from beam.common.spec import PipelineSpec
from beam.common.validation import UNPARSEABLE, Invalid, parse_json

NAMESPACE = "headwater"
DEAD_LETTERS = "dead_letters"
# Parallelism of the batch dedup shuffle, and the bound on keys one worker holds: a shard
# holds 1/DEDUP_SHARDS of the distinct keys of the input.
DEDUP_SHARDS = 64
# Rows per output batch of the dedup step (the Silver sink re-batches to its request size).
OUTPUT_BATCH = 10_000


def counter(name: str) -> Any:
    return Metrics.counter(NAMESPACE, name)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run a batch loop without Python's cyclic garbage collector.

    The loops below allocate several containers per record (decoded dict, row dict, tuples);
    every 700 allocations trigger a collection, and the older generations' collections walk
    the whole heap - which in a Beam worker holds millions of long-lived objects of the SDK.
    Measured on 1M records: ~30% of the pipeline's CPU. Nothing here creates reference
    cycles, so refcounting frees everything and the collector has nothing to find; it runs
    again once the batch is done. (With several worker threads one thread may re-enable it
    while another is mid-batch: that only costs time, never correctness.)
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class ListBatchDoFn(beam.DoFn):
    """A batched DoFn whose batches are plain lists of whatever elements it is given.

    Beam pairs a batch type with an element type and insists they match exactly
    (``List[T]`` for ``T``); the element types it infers vary (``Create`` infers
    ``Tuple[bytes, None, str]``, a reader declares ``Tuple[bytes, Any, str]``). Deriving the
    batch types from the element types keeps every producer compatible.
    """

    def get_input_batch_type(self, input_element_type: Any) -> Any:
        return List[input_element_type]  # noqa: UP006 - Beam's typehints want typing.List

    def get_output_batch_type(self, input_element_type: Any) -> Any:
        if getattr(self.process_batch, "_beam_yields_elements", False):
            return None
        return List[self.infer_output_type(input_element_type)]  # noqa: UP006

    def process(self, element):  # unannotated: it must not override process_batch's hints
        # The element-at-a-time fallback, for inputs that arrive as single elements on runners
        # that do not batch them (the BundleBasedDirectRunner used for local streaming never
        # calls process_batch). Same logic, batches of one.
        outputs = self.process_batch([element])
        if getattr(self.process_batch, "_beam_yields_elements", False):
            yield from outputs
            return
        for out in outputs:
            if isinstance(out, beam.pvalue.TaggedOutput):
                for x in out.value:
                    yield beam.pvalue.TaggedOutput(out.tag, x)
            else:
                yield from out


_frozen = False


def freeze_long_lived_objects() -> None:
    """Once per worker process: hide everything alive now from the cyclic collector.

    By the time a DoFn is set up, the process holds the SDK, its protobuf descriptors and the
    compiled rules - millions of objects that live as long as the worker. Each full collection
    walks them all; ``gc.freeze()`` moves them to a permanent generation so collections only
    walk what the pipeline allocates. (Cyclic garbage alive at this moment is never freed: a
    few objects of start-up, once.)
    """
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Allocations below this come from the heap and are reused once freed: above the largest
# buffers a batch worker makes and frees by the hundred (4 MiB file chunks, the data plane's
# 10 MB flushes, a shard's grouped values), below a whole bundle's data.
MMAP_THRESHOLD = 256 << 20
# Free memory the heap keeps at its top instead of returning it to the kernel.
TRIM_THRESHOLD = 1 << 30
_memory_kept = False


def keep_freed_memory() -> None:
    """Once per worker process (glibc only): keep freed memory for the next allocation instead
    of returning it to the kernel.

    A batch worker allocates and frees multi-megabyte buffers all the time - file chunks, the
    runner's data-plane buffers and protobuf messages, encoded shuffle elements, Arrow and
    numpy columns. glibc serves such sizes with a fresh ``mmap`` (above its mmap threshold) or
    trims the heap's free top back to the kernel, so every reuse starts with page faults, each
    page zeroed by the kernel: ~20% of the columnar path's CPU (``bench/beam_throughput.py``,
    1M records: 0.3-0.55 s of system time per run, 0.02-0.06 s with this). The per-record
    path gains less: most of its page faults are Python's own object arenas, which this does
    not change. The cost: the process keeps its peak heap until it exits - so batch workers
    only (`ValidateRows`' ``keep_memory``): a streaming worker runs for days, and after a burst
    (a backlog caught up) it must give the memory back.
    """
    global _memory_kept
    if _memory_kept or platform.libc_ver()[0] != "glibc":
        return
    _memory_kept = True
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):  # pragma: no cover - a libc without mallopt: keep its defaults
        pass


# --------------------------------------------------------------------------- dedup keys


def row_id(key: str) -> str:
    """A BigQuery insertId for a dedup key: short, stable, and safe for any key content."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- validation


class ValidateRows(ListBatchDoFn):
    """Raw records -> valid rows (main output) and dead letters (``DEAD_LETTERS`` output).
    ``keep_memory``: the worker keeps freed memory (`keep_freed_memory`; batch pipelines)."""

    def __init__(self, spec: PipelineSpec, *, keep_memory: bool = True) -> None:
        self.spec = spec
        self.keep_memory = keep_memory

    def setup(self) -> None:
        freeze_long_lived_objects()
        if self.keep_memory:
            keep_freed_memory()
        dedup = self.spec.dedup
        self.checker = RecordChecker(self.spec.fields, self.spec.validation, self.spec.quality_rules,
                                     dedup.key if dedup else None)
        self.records_in = counter("records_in")
        self.dropped = counter("unknown_fields_dropped")
        self.invalid: dict[str, Any] = {}

    def infer_output_type(self, input_type: Any) -> Any:
        # Any, not Row: Beam gives a DoFn's tagged outputs the main output's type, and the
        # dead letters are not dicts. (Beam's Any: typing.Any is not a KV to a GroupByKey.)
        return beam.typehints.Any

    def process_batch(self, batch: list[Raw]) -> Iterator[list[Any]]:
        rows, _keys, dead = self.check_batch(batch)
        if rows:
            yield rows
        if dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, dead)

    def check_batch(self, batch: list[Raw]) -> tuple[list[Row], list[Any], list[DeadLetter]]:
        """The valid rows, their dedup keys (None without a key), and the dead letters."""
        rows, keys, dead, reasons = check_raw(self.checker.check, batch)
        # Counters are bumped once per batch and reason, not per record.
        self.records_in.inc(len(batch))
        for reason, n in reasons.items():
            if reason not in self.invalid:
                self.invalid[reason] = counter(f"invalid_{reason}")
            self.invalid[reason].inc(n)
        if self.checker.dropped_unknown:
            self.dropped.inc(self.checker.dropped_unknown)
            self.checker.dropped_unknown = 0
        return rows, keys, dead


def check_raw(check: Callable[[Any, str], tuple[Row, Any]], batch: list[Raw]
              ) -> tuple[list[Row], list[Any], list[DeadLetter], dict[str, int]]:
    """``Raw`` records through a ``RecordChecker``'s function: the valid rows, their dedup keys,
    the dead letters, and the count of dead letters by reason. The one per-record decision,
    shared by the per-record path and the columnar path's leftovers (``columnar.py``)."""
    rows: list[Row] = []
    keys: list[Any] = []
    dead: list[DeadLetter] = []
    reasons: dict[str, int] = {}
    with gc_paused():
        for payload, parsed, origin, _attributes in batch:
            try:
                if parsed is None:
                    parsed = parse_json(payload)
                elif type(parsed) is ParseFailure:
                    raise Invalid(UNPARSEABLE, parsed.detail)
                row, key = check(parsed, origin)
            except Invalid as bad:
                reasons[bad.reason] = reasons.get(bad.reason, 0) + 1
                dead.append(DeadLetter(payload, bad.reason, bad.detail, origin))
                continue
            rows.append(row)
            keys.append(key)
    return rows, keys, dead, reasons


# --------------------------------------------------------------------------- batch dedup


class ValidateAndShard(ValidateRows):
    """:class:`ValidateRows` for the batch dedup: the main output is ``(shard, Chunk)`` pairs,
    the batch's rows split by a stable hash of their dedup key (which the checker computed)
    into one :class:`Chunk` per shard, each row's key travelling along.

    Elements, not one batch of pairs: for every batch it outputs, Beam encodes a sample of its
    elements to estimate their size - here whole chunks, a fifth of the rows pickled again.
    """

    @beam.DoFn.yields_elements
    def process_batch(self, batch: list[Raw]) -> Iterator[Any]:
        rows, keys, dead = self.check_batch(batch)
        yield from _by_shard(keys, rows)
        for letter in dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)


def _by_shard(keys: list[str], rows: list[Row]) -> list[tuple[int, Chunk]]:
    """Rows split by key hash into one ``(shard, Chunk)`` pair per shard they fall in."""
    n = DEDUP_SHARDS
    crc32 = zlib.crc32
    chunks: dict[int, Chunk] = {}
    for key, row in zip(keys, rows, strict=True):
        s = crc32(key.encode("utf-8", "surrogatepass")) % n
        chunk = chunks.get(s)
        if chunk is None:
            chunk = chunks[s] = Chunk()
        chunk.keys.append(key)
        chunk.rows.append(row)
    return list(chunks.items())


class DedupShard(beam.DoFn):
    """Keeps one row per key within a shard; the kept row does not depend on arrival order."""

    def setup(self) -> None:
        self.valid = counter("valid")
        self.duplicates = counter("duplicates")

    def infer_output_type(self, input_type: Any) -> Any:
        return dict[str, Any]

    @beam.DoFn.yields_batches
    def process(self, element: tuple[int, Iterable[Chunk]]) -> Iterator[list[Row]]:
        kept: dict[str, Row] = {}
        seen = 0
        with gc_paused():
            for chunk in element[1]:
                seen += len(chunk)
                for k, row in zip(chunk.keys, chunk.rows, strict=True):
                    old = kept.get(k)
                    if old is None:
                        kept[k] = row
                    elif _canonical(row) < _canonical(old):  # rare: only for duplicates
                        kept[k] = row
        self.valid.inc(len(kept))
        self.duplicates.inc(seen - len(kept))
        rows = list(kept.values())
        for i in range(0, len(rows), OUTPUT_BATCH):
            yield rows[i:i + OUTPUT_BATCH]


def _identity(x: Any) -> Any:
    return x


def _canonical(row: Row) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)


# --------------------------------------------------------------------------- streaming dedup


class KeyRows(ListBatchDoFn):
    """Batches of rows -> ``(dedup key, row)`` elements for the stateful dedup."""

    def __init__(self, key_paths: tuple[str, ...]) -> None:
        self.key_paths = key_paths

    def setup(self) -> None:
        self.key_of = key_function(self.key_paths)

    @beam.DoFn.yields_elements
    def process_batch(self, batch: list[Row]) -> Iterator[tuple[str, Row]]:
        key_of = self.key_of
        for row in batch:
            yield key_of(row), row


# Beam's state/timer parameters are declared as argument defaults; module-level singletons.
SEEN_STATE = ReadModifyWriteStateSpec("seen", BooleanCoder())
EXPIRY_TIMER = TimerSpec("expiry", TimeDomain.REAL_TIME)
_SEEN = beam.DoFn.StateParam(SEEN_STATE)
_EXPIRY = beam.DoFn.TimerParam(EXPIRY_TIMER)


class FirstSeen(beam.DoFn):
    """Per key: pass the first row, drop the rest, forget the key ``window_seconds`` later.

    The expiry is a processing-time timer, so it fires on wall-clock time on every runner; no
    event-time window has to close for a row to pass.
    """

    def __init__(self, window_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self.window_seconds = window_seconds
        self.clock = clock  # tests pass the runner's test clock's origin

    def setup(self) -> None:
        self.valid = counter("valid")
        self.duplicates = counter("duplicates")

    def process(self, element: tuple[str, Row], seen: Any = _SEEN, expiry: Any = _EXPIRY) -> Iterator[Row]:
        if seen.read():
            self.duplicates.inc()
            return
        seen.write(True)
        expiry.set(Timestamp.of(self.clock() + self.window_seconds))
        self.valid.inc()
        yield element[1]

    @on_timer(EXPIRY_TIMER)
    def forget(self, seen: Any = _SEEN) -> None:
        seen.clear()


class CountValid(ListBatchDoFn):
    """The no-dedup path: every valid row goes on to Silver and counts as ``valid``."""

    def setup(self) -> None:
        self.valid = counter("valid")

    def infer_output_type(self, input_type: Any) -> Any:
        return dict[str, Any]

    def process_batch(self, batch: list[Row]) -> Iterator[list[Row]]:
        self.valid.inc(len(batch))
        yield batch


# --------------------------------------------------------------------------- the composite


class ValidateAndDedup(beam.PTransform):
    """``Raw`` records -> ``{"valid": rows for Silver, "dead_letters": DeadLetter}``."""

    def __init__(self, spec: PipelineSpec, *, streaming: bool, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.spec = spec
        self.streaming = streaming
        self.clock = clock

    def expand(self, raw):  # no annotations: Beam would read them as output type hints
        dedup = self.spec.dedup
        batch_dedup = dedup is not None and not self.streaming
        validate = (ValidateAndShard(self.spec) if batch_dedup
                    else ValidateRows(self.spec, keep_memory=not self.streaming))
        checked = raw | "Validate" >> beam.ParDo(validate).with_outputs(DEAD_LETTERS, main="rows")
        rows = checked.rows
        if dedup is None:
            valid = rows | "CountValid" >> beam.ParDo(CountValid())
        elif self.streaming:
            valid = (
                rows
                | "KeyByDedupKey" >> beam.ParDo(KeyRows(dedup.key))
                | "FirstSeenPerKey" >> beam.ParDo(FirstSeen(dedup.window_seconds, self.clock))
            )
        else:
            valid = (
                rows
                # The pairs are already made; this step only names their type, so the shuffle
                # encodes chunks with ChunkCoder (marshal) rather than pickling them (one
                # element per chunk: nothing per row).
                | "TypeShards" >> beam.Map(_identity).with_output_types(tuple[int, Chunk])
                | "GroupShards" >> beam.GroupByKey()
                | "DedupShards" >> beam.ParDo(DedupShard())
            )
        return {"valid": valid, "dead_letters": checked[DEAD_LETTERS]}
