"""Datastream's change events, read: one JSON line -> one change of one table, or a dead letter.

Datastream writes a stream's events to Cloud Storage as JSON lines, one file per stream object
(table) at a time (https://cloud.google.com/datastream/docs/events-and-streams). An event is::

    {"uuid": "…", "read_timestamp": "2026-11-30T10:00:01.250", "source_timestamp": "2026-11-30T10:00:01.123",
     "object": "public_orders", "read_method": "postgres-cdc-wal", "stream_name": "projects/…/streams/…",
     "schema_key": "…", "sort_keys": [1764496801123, "0/16B3748"],
     "source_metadata": {"schema": "public", "table": "orders", "is_deleted": false,
                         "change_type": "UPDATE-INSERT", "tx_id": 7342, "lsn": "0/16B3748",
                         "primary_keys": ["order_id"]},
     "payload": {"order_id": 7, "status": "paid", …}}

(MySQL: ``source_metadata`` has ``database``, ``table``, ``log_file``, ``log_position``; its
``read_method`` is ``mysql-cdc-binlog`` or ``mysql-backfill-*``.) Timestamps are epoch
milliseconds or ISO 8601 text without an offset (UTC), with ``T`` or a space - both forms occur,
as in Google's own ``FormatDatastreamJsonToJson``.

What a change is here (`Change`): the table it belongs to (``source_metadata`` schema/database
and table, else the ``object`` name ``<schema>_<table>``), whether it removes the row
(``change_type`` DELETE or UPDATE-DELETE, or ``is_deleted``), the row validated against the
table's schema (`beam.common.checker.RecordChecker`: the same types and strict/lenient rule as
every other pipeline; a removal needs only its primary key), the primary key as a JSON array,
and its **position in source order**, one sortable string::

    <source timestamp, epoch microseconds, 20 digits>:<log position>

where the log position is PostgreSQL's LSN (``X/Y``) as 16 hex digits, MySQL's binlog file
name and offset (20 digits), and zeros for a backfill read that has none (a snapshot read sorts
before any change logged at the same instant). Comparing two positions as strings compares the
changes in source order: a later timestamp wins; at the same timestamp, the later log position.

Every line of a known table becomes a Bronze change-log row (`Change.bronze`), valid or not; a
line that is not a change of a listed table, or does not fit its schema, is also a dead letter
with a reason (`REASONS`). Nothing is lost and nothing is counted twice::

    records_in = changes_valid + Σ invalid_<reason>
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from beam.common.checker import RecordChecker
from beam.common.records import DeadLetter
from beam.common.spec import CdcTable
from beam.common.validation import NOT_AN_OBJECT, UNPARSEABLE, Invalid

UNKNOWN_TABLE = "unknown_table"
UNKNOWN_CHANGE_TYPE = "unknown_change_type"
BAD_CHANGE_METADATA = "bad_change_metadata"
MISSING_PRIMARY_KEY = "missing_primary_key"
# Reasons of this pipeline besides the schema's (beam.common.validation: missing_required,
# wrong_type, unknown_field).
REASONS = (UNPARSEABLE, NOT_AN_OBJECT, UNKNOWN_TABLE, UNKNOWN_CHANGE_TYPE, BAD_CHANGE_METADATA,
           MISSING_PRIMARY_KEY)

# change_type values (Datastream writes them upper case) and whether each removes the row.
CHANGE_TYPES = {"INSERT": False, "UPDATE-INSERT": False, "UPDATE": False, "UPDATE-DELETE": True, "DELETE": True}
NO_LOG_POSITION = "0" * 16
_DETAIL_LIMIT = 1000


@dataclass(frozen=True)
class Change:
    """One event of a known table. ``bronze`` is its Bronze change-log element (see `bronze_element`);
    ``key``/``position``/``deleted`` are set when it is valid (it then moves Silver)."""

    table: int  # index into the spec's cdc.tables
    event_id: str
    valid: bool
    key: str | None
    position: str | None
    deleted: bool
    bronze: dict[str, Any]


def parse_timestamp_us(value: Any) -> int:
    """Epoch microseconds of a Datastream timestamp: epoch milliseconds (a number), or ISO 8601
    text (``T`` or space, an optional offset or ``Z``; none means UTC). ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int):
        return value * 1000
    if isinstance(value, float):
        return int(round(value * 1000))
    if not isinstance(value, str) or not value:
        raise ValueError(f"not a timestamp: {value!r}")
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    delta = parsed - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def iso_from_us(micros: int) -> str:
    return (_EPOCH + dt.timedelta(microseconds=micros)).isoformat().replace("+00:00", "Z")


def pg_lsn(value: Any) -> int:
    """PostgreSQL's LSN as one integer: ``X/Y`` (hex halves, PostgreSQL's own text form), or the
    64-bit number itself (a number, or decimal digits); ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {value!r}")
    return (int(high, 16) << 32) | int(low, 16)


def log_position(source_type: str, metadata: dict[str, Any]) -> str:
    """The log-position part of a change's position (see the module docstring)."""
    if source_type == "postgresql":
        lsn = metadata.get("lsn")
        return NO_LOG_POSITION if lsn in (None, "") else f"{pg_lsn(lsn):016x}"
    # mysql
    log_file, offset = metadata.get("log_file"), metadata.get("log_position")
    if not log_file:
        return NO_LOG_POSITION
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"log_position {offset!r} is not a non-negative integer")
    return f"{log_file}:{offset:020d}"


def position(source_timestamp_us: int, log_part: str) -> str:
    return f"{source_timestamp_us:020d}:{log_part}"


def primary_key_json(values: Sequence[Any]) -> str:
    """A row's primary key as compact JSON (the canonical values validation produced)."""
    return orjson.dumps(list(values)).decode()


class ChangeParser:
    """Lines of Datastream JSON -> `Change` (known tables) and `DeadLetter` (everything refused).

    One per worker (built in ``setup``): it compiles a `RecordChecker` per table."""

    def __init__(self, tables: Sequence[CdcTable], source_type: str) -> None:
        self.tables = tuple(tables)
        self.source_type = source_type
        self.checkers = [RecordChecker(t.fields, t.validation, (), None) for t in self.tables]
        key_fields = [tuple(replace(f, mode="NULLABLE") for f in t.fields if f.name in t.primary_key)
                      for t in self.tables]
        # A removal carries the key (REPLICA IDENTITY DEFAULT: the other columns may be null).
        self.key_checkers = [RecordChecker(fields, "lenient", (), None) for fields in key_fields]
        self.by_name: dict[str, int] = {}
        for index, table in enumerate(self.tables):
            schema, name = table.schema_name.lower(), table.table_name.lower()
            self.by_name[f"{schema}.{name}"] = index
            self.by_name[f"{schema}_{name}"] = index  # Datastream's "object"

    def table_of(self, event: dict[str, Any], metadata: dict[str, Any]) -> int | None:
        table = metadata.get("table")
        owner = metadata.get("schema") if self.source_type == "postgresql" else metadata.get("database")
        if isinstance(table, str) and isinstance(owner, str):
            found = self.by_name.get(f"{owner.lower()}.{table.lower()}")
            if found is not None:
                return found
        name = event.get("object")
        return self.by_name.get(name.lower()) if isinstance(name, str) else None

    def parse(self, line: bytes, origin: str) -> tuple[Change | None, DeadLetter | None]:
        """``(change, dead letter)``: a valid change has no dead letter; an invalid change of a
        known table has both (Bronze keeps it); a line of no known table has only the dead letter."""
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return None, _dead(line, UNPARSEABLE, f"not JSON: {exc}", origin)
        if not isinstance(event, dict):
            return None, _dead(line, NOT_AN_OBJECT, f"a change event is a JSON object, not {type(event).__name__}",
                               origin)
        metadata = event.get("source_metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        index = self.table_of(event, metadata)
        if index is None:
            where = f"{metadata.get('schema') or metadata.get('database')}.{metadata.get('table')}" \
                if metadata.get("table") else repr(event.get("object"))
            return None, _dead(line, UNKNOWN_TABLE, f"the event is of {where}, not one of the stream's tables "
                                                    f"({', '.join(t.object for t in self.tables)})", origin)
        table = self.tables[index]
        event_id = event.get("uuid")
        if not isinstance(event_id, str) or not event_id:
            # Without Datastream's uuid a replay could not be recognised; the line's hash is stable.
            event_id = "sha256:" + hashlib.sha256(line).hexdigest()[:32]
            return self._invalid(index, event_id, line, origin, BAD_CHANGE_METADATA, "the event has no uuid", {})
        change_type = metadata.get("change_type")
        deleted_flag = metadata.get("is_deleted")
        if isinstance(change_type, str) and change_type.upper() in CHANGE_TYPES:
            deleted = CHANGE_TYPES[change_type.upper()] or deleted_flag is True
        elif change_type is None and isinstance(deleted_flag, bool):
            deleted, change_type = deleted_flag, "DELETE" if deleted_flag else "UPSERT"
        else:
            return self._invalid(index, event_id, line, origin, UNKNOWN_CHANGE_TYPE,
                                 f"change_type {change_type!r} is none of {', '.join(CHANGE_TYPES)}", {})
        meta = {"t": change_type, "d": deleted}
        try:
            ts = parse_timestamp_us(event.get("source_timestamp"))
            where = position(ts, log_position(self.source_type, metadata))
        except (ValueError, TypeError, OverflowError) as exc:
            return self._invalid(index, event_id, line, origin, BAD_CHANGE_METADATA,
                                 f"source_timestamp {event.get('source_timestamp')!r} / log position: {exc}", meta)
        meta["s"] = iso_from_us(ts)
        meta["p"] = where
        payload = event.get("payload")
        if payload is None and deleted:
            payload = {}
        if not isinstance(payload, dict):
            return self._invalid(index, event_id, line, origin, NOT_AN_OBJECT,
                                 f"payload is {type(payload).__name__}, not a JSON object", meta)
        try:
            if deleted:
                row, _ = self.key_checkers[index]({k: payload.get(k) for k in table.primary_key}, origin)
            else:
                row, _ = self.checkers[index](payload, origin)
        except Invalid as exc:
            return self._invalid(index, event_id, line, origin, exc.reason, exc.detail, meta)
        values = [row.get(k) for k in table.primary_key]
        if any(v is None for v in values):
            missing = [k for k, v in zip(table.primary_key, values, strict=True) if v is None]
            return self._invalid(index, event_id, line, origin, MISSING_PRIMARY_KEY,
                                 f"primary key column(s) {', '.join(missing)} absent or null", meta)
        row.pop("_message_id", None)
        key = primary_key_json(values)
        element = {"e": event_id, "v": True, "k": key, "y": _text(line), "o": origin, "r": row, **meta}
        return Change(index, event_id, True, key, where, deleted, element), None

    def _invalid(self, index: int, event_id: str, line: bytes, origin: str, reason: str, detail: str,
                 meta: dict[str, Any]) -> tuple[Change, DeadLetter]:
        element = {"e": event_id, "v": False, "x": reason, "y": _text(line), "o": origin, **meta}
        table = self.tables[index]
        return (Change(index, event_id, False, None, None, bool(meta.get("d")), element),
                _dead(line, reason, f"{table.object}: {detail}", origin))


def _text(line: bytes) -> str:
    return line.decode("utf-8", "backslashreplace")


def _dead(line: bytes, reason: str, detail: str, origin: str) -> DeadLetter:
    return DeadLetter(bytes(line), reason, detail[:_DETAIL_LIMIT], origin)
