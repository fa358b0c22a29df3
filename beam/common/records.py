"""The element types that flow between the pipelines' transforms.

* ``Raw`` - one incoming record before validation: a plain tuple
  ``(payload, parsed, origin, attributes)``.
  ``payload`` is the original bytes (a JSON line, a Pub/Sub message's data, a CSV line, or a
  Parquet/Avro row re-encoded as JSON); dead letters and Bronze carry it unchanged. ``parsed`` is
  ``None`` when the payload is JSON still to be decoded, the already-decoded ``dict`` when a
  reader had to decode it itself (CSV, Parquet, Avro), or a :class:`ParseFailure` when the
  reader could not. ``origin`` says where the record came from (``gs://bucket/file.json#17``, a
  Pub/Sub message id): it makes Bronze inserts idempotent and dead letters traceable.
  ``attributes`` is what Bronze's ``attributes`` column gets: ``(key, value)`` string pairs -
  the Pub/Sub message's attributes, or the landing file's metadata and the record's line (see
  ``beam.gcs_to_bigquery.readers``). A tuple rather than a class because a million of them
  are made per million records.
* ``Row`` - a validated record: a dict of canonical, BigQuery-JSON-ready values.
* :class:`DeadLetter` - a rejected record: original payload, reason code, detail, origin.
* :class:`Chunk` - rows with their dedup keys, moved through a shuffle as ONE element, with a pickle coder:
  Beam's default coders encode dicts field by field (measured ~7 us per row), which would cost
  more than all of the validation; marshalling a whole list is one C call (~2 us per row for
  encode and decode together).
"""

from __future__ import annotations

import marshal
import pickle
from typing import Any, NamedTuple

import apache_beam as beam

Attributes = tuple[tuple[str, str], ...]
Raw = tuple[bytes, Any, str, Attributes]
Row = dict[str, Any]


class ParseFailure(NamedTuple):
    """A reader's verdict that a record could not be decoded (e.g. wrong CSV column count)."""

    detail: str


class DeadLetter(NamedTuple):
    payload: bytes
    reason: str
    detail: str
    origin: str


class Chunk:
    """Rows and their dedup keys, as two parallel lists, travelling through a GroupByKey as a
    single element. (Two lists rather than a list of pairs: a million pair tuples fewer to
    build and to decode per million rows.)"""

    __slots__ = ("keys", "rows")

    def __init__(self, keys: list[str] | None = None, rows: list[Row] | None = None) -> None:
        self.keys = keys if keys is not None else []
        self.rows = rows if rows is not None else []

    def append(self, key: str, row: Row) -> None:
        self.keys.append(key)
        self.rows.append(row)

    def __len__(self) -> int:
        return len(self.keys)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chunk) and (self.keys, self.rows) == (other.keys, other.rows)


class ChunkCoder(beam.coders.Coder):
    """marshal when it can (rows hold only str/int/float/bool/None/list/dict after validation,
    and marshal is ~30% cheaper than pickle for them), pickle otherwise. The first byte says
    which. marshal's format is tied to the Python version; a shuffle only ever runs between
    workers of one job, which share one container image."""

    def encode(self, value: Chunk) -> bytes:
        pair = (value.keys, value.rows)
        try:
            return b"M" + marshal.dumps(pair)
        except ValueError:  # a type marshal does not know
            return b"P" + pickle.dumps(pair, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Chunk:
        from beam.common.transforms import gc_paused  # (transforms imports this module)

        body = memoryview(encoded)[1:]
        with gc_paused():  # thousands of rows at once: see gc_paused
            keys, rows = marshal.loads(body) if encoded[:1] == b"M" else pickle.loads(body)
        return Chunk(keys, rows)

    def is_deterministic(self) -> bool:
        return False  # only ever a value, never a key

    def estimate_size(self, value: Chunk) -> int:
        # Beam calls this per element for its size metrics; the default encodes the whole chunk
        # a second time. A rough guess is all the metric needs.
        return 64 * len(value)


beam.coders.registry.register_coder(Chunk, ChunkCoder)
