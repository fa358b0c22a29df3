"""Local stand-in for Datastream: ``datastream_connection_profile`` and ``datastream_stream`` on this
machine, against a real PostgreSQL (`reconciler.local_postgres`) and the Cloud Storage emulator.

EMULATOR DEPARTURE, all of it: Datastream has no emulator. When headwater targets the
emulators, a stream is realized by a *reader*: a process (``python -m providers.local_datastream
<record>``) that reads the stream's logical replication slot (logical decoding, the ``wal2json``
plugin, through ``pg_logical_slot_peek_changes``) and writes the same event files Datastream
writes into the landing bucket - JSON lines per stream object, gzip, under
``<root_path>/<destination path>/<schema>_<table>/<yyyy>/<mm>/<dd>/<HH>/<MM>/`` - with the fields
Datastream's events carry (``uuid``, ``read_timestamp``, ``source_timestamp``, ``object``,
``read_method``, ``stream_name``, ``schema_key``, ``sort_keys``, ``source_metadata`` with ``schema``,
``table``, ``is_deleted``, ``change_type``, ``tx_id``, ``lsn``, ``primary_keys``, and ``payload``).
Everything downstream - the bucket's notification, the ``datastream_to_bigquery`` pipeline,
Bronze, Silver - is the GCP path.

**The slot is the reader's position.** Each pass peeks the changes after the slot's confirmed
position that committed before the WAL's end at the start of the pass (whole transactions),
writes them to files, and only then advances the slot past what it read
(``pg_replication_slot_advance``): past the last transaction written, or, when the pass read
everything, to that WAL end, so that WAL written meanwhile by other tables and databases is not
retained by an idle stream. A reader killed at any point loses
nothing - what it had not confirmed is read again - and a change written twice (killed between
the file and the advance) has the same ``uuid`` both times (derived from the stream, the change's
LSN and its place there), which the pipeline applies once. ``backfill: all``: when the stream is
created, each table's current rows are read once (``read_method`` ``postgresql-backfill``, the
source timestamp of the moment before the slot was created, no LSN: they sort before every
change the slot holds); which tables are done is recorded, so a restarted reader does not read
them again, and a table added to the stream later is backfilled when it is added.

Departures from Datastream, besides being a process on this machine:

* The slot uses ``wal2json`` (Debian's ``postgresql-15-wal2json``), not ``pgoutput``, and reads
  through the SQL interface; Datastream streams ``pgoutput`` over the replication protocol. So
  the publication is created (or its table list set) for fidelity, but what the reader reads is
  filtered by wal2json's ``add-tables``, not by the publication.
* ``create`` creates the publication and the slot when they are missing; on GCP the database's
  owner creates them (docs/database-cdc.md) and a stream whose slot is missing fails. ``delete``
  leaves the slot, as Datastream does: the plan says so.
* Values are converted from wal2json's text forms by column type (numeric as decimal text,
  timestamps as ISO 8601, bytea as base64, json as JSON, one-dimensional arrays as lists); an
  update that leaves a TOASTed column unchanged does not carry it (wal2json omits it).
* Files are written when a pass finds changes (every `POLL_S`), not on Datastream's rotation
  (size or ``file_rotation_interval``).
* MySQL sources are not stood in for (no local MySQL): a mysql stream's reader reports FAILED.

Records live in ``<state_dir>/datastream/<project>/``: ``profiles/<name>.json``; per stream
``streams/<name>.json`` (PID and start time, spec, labels, the resolved profiles without any
secret), ``<name>.status.json`` (written by the reader: state, error, the slot's confirmed
LSN, WAL retained and lag, events and files written, tables backfilled) and ``<name>.log``.
The password reaches the reader in its environment only, read from the local secrets directory
(`providers.secretmanager.LocalSecrets`), never in a record, a log or a command line.

``observe`` reports a stream's ``state`` as the reader has it: ``RUNNING``, ``FAILED`` with the
reason (Datastream's ``errors``), or ``FAILED`` with the end of its log when the process has
died; ``status`` carries the replication lag (WAL retained). A plan then shows the state to
restore, and ``update`` restarts the reader. ``HEADWATER_LOCAL_JOBS=record`` tracks streams
without starting readers, as it does jobs.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from providers.errors import AlreadyExists, NotFound, PermanentError
from providers.localprocess import (
    endpoints_in_effect,
    is_alive,
    spawn,
    stale_endpoints,
    stop_group,
    write_json_atomic,
)
from providers.localrunner import child_env
from providers.secretmanager import LocalSecrets
from reconciler.cdc import IMMUTABLE_FIELDS
from reconciler.resources import Kind, Resource

log = logging.getLogger(__name__)

DIR = "datastream"
POLL_S = 0.5  # how often a reader peeks its slot when the last pass found nothing
MAX_CHANGES = 20_000  # changes per pass at most (whole transactions: wal2json stops after one)
BACKFILL_ROWS_PER_FILE = 10_000
PASSWORD_ENV = "HEADWATER_DATASTREAM_PASSWORD"
RUNNING, FAILED = "RUNNING", "FAILED"
# Spec fields the reader does not use: a change of only these restarts nothing.
NOT_USED_LOCALLY = frozenset({"labels", "destination"})
WAL_RETAINED_DEGRADED = 1 << 30  # a slot holding back more WAL than this is Degraded (1 GiB)
UUID_NAMESPACE = uuid.UUID("6f1c7a52-3c1e-4f0e-9d3a-2c8a6b1d9e47")


@dataclass
class StreamRecord:
    name: str
    project: str
    pid: int
    process_start: str
    spec: dict[str, Any]
    labels: dict[str, str]
    source: dict[str, Any]  # the source connection profile's spec (no secret value)
    destination: dict[str, Any]  # the GCS profile's spec
    log: str
    started_at: str
    stream_name: str  # projects/<p>/locations/local/streams/<name>
    slot_created: dict[str, Any] = field(default_factory=dict)  # {lsn, at}: when create made the slot
    recorded_only: bool = False
    # The emulator endpoints in effect at launch (providers.localprocess.endpoints_in_effect): a
    # reader bound to emulators that are gone lands its files nowhere anyone reads. None: an
    # older record, which cannot tell.
    endpoints: dict[str, str] | None = None


def state_root(state_dir: Path, project: str) -> Path:
    return Path(state_dir) / DIR / project


# --------------------------------------------------------------------------- PostgreSQL


def connect(profile: Mapping[str, Any], password: str, *, autocommit: bool = True) -> Any:
    import psycopg

    return psycopg.connect(host=profile["host"], port=profile["port"], dbname=profile.get("database"),
                           user=profile["user"], password=password, connect_timeout=5, autocommit=autocommit)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def ensure_slot_and_publication(conn: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The stream's publication (its table list set to the stream's tables) and logical slot,
    created when missing (EMULATOR DEPARTURE: on GCP the database's owner creates them).
    Returns ``{lsn, at}`` when the slot was created now, else {}."""
    tables = [f"{_ident(o['schema'])}.{_ident(o['table'])}" for o in spec["include_objects"]]
    missing = [f"{o['schema']}.{o['table']}" for o in spec["include_objects"]
               if conn.execute("SELECT to_regclass(%s)", (f"{_ident(o['schema'])}.{_ident(o['table'])}",)).fetchone()[0]
               is None]
    if missing:
        raise PermanentError(f"the source database has no table {', '.join(missing)} (the stream's include_objects)")
    publication, slot = spec["publication"], spec["replication_slot"]
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    verb = "ALTER PUBLICATION {} SET TABLE {}" if exists else "CREATE PUBLICATION {} FOR TABLE {}"
    conn.execute(verb.format(_ident(publication), ", ".join(tables)))
    row = conn.execute("SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is not None:
        if row[0] != "wal2json":
            raise PermanentError(f"replication slot {slot} exists with plugin {row[0]}; the local stand-in reads "
                                 "wal2json slots (drop it, or name another replication_slot)")
        return {}
    at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    lsn = conn.execute("SELECT lsn FROM pg_create_logical_replication_slot(%s, 'wal2json')", (slot,)).fetchone()[0]
    return {"lsn": str(lsn), "at": at.astimezone(dt.UTC).isoformat()}


def slot_lag(conn: Any, slot: str) -> dict[str, Any]:
    """The slot's position and what it holds back: WAL retained (bytes from its restart LSN to
    the current WAL end) and lag (bytes not yet confirmed)."""
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text, restart_lsn::text, pg_current_wal_lsn()::text, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, active "
        "FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return {}
    return {"confirmed_flush_lsn": row[0], "restart_lsn": row[1], "current_lsn": row[2],
            "wal_retained_bytes": int(row[3] or 0), "lag_bytes": int(row[4] or 0)}


def lag_text(status: Mapping[str, Any]) -> str:
    """One line for a plan or a report: the slot's WAL retained and how far behind the reader is."""
    if "wal_retained_bytes" not in status:
        return ""
    text = f"slot retains {_size(status['wal_retained_bytes'])} of WAL, {_size(status.get('lag_bytes', 0))} unread"
    if status.get("last_change_delay_s") is not None:
        text += f"; last change written {status['last_change_delay_s']:.1f} s after its commit"
    return text


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------- values


def _timestamp_text(text: str, with_zone: bool) -> str:
    text = text.replace(" ", "T", 1)
    if not with_zone:
        return text
    parsed = dt.datetime.fromisoformat(text + ":00" if len(text) > 3 and text[-3] in "+-" else text)
    return parsed.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _array(text: str) -> list[str | None]:
    """A one-dimensional PostgreSQL array literal ``{a,"b c",NULL}`` as a list of texts."""
    inner = text.strip()[1:-1]
    items: list[str | None] = []
    current, quoted, escaped, was_quoted = "", False, False, False
    for ch in inner:
        if escaped:
            current, escaped = current + ch, False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted, was_quoted = not quoted, True
        elif ch == "," and not quoted:
            items.append(None if current == "NULL" and not was_quoted else current)
            current, was_quoted = "", False
        else:
            current += ch
    if inner:
        items.append(None if current == "NULL" and not was_quoted else current)
    return items


def convert(type_name: str, value: Any) -> Any:
    """A wal2json column value (by its PostgreSQL type name) in the form Datastream's JSON has."""
    if value is None:
        return None
    t = type_name.lower()
    if t.endswith("[]"):
        items = _array(value) if isinstance(value, str) else value
        return [convert(t[:-2], item) for item in items]
    if t.startswith(("numeric", "decimal")):
        return str(value)
    if t.startswith("timestamp"):
        return _timestamp_text(str(value), "with time zone" in t)
    if t in ("json", "jsonb"):
        return json.loads(value) if isinstance(value, str) else value
    if t == "bytea":
        text = str(value)
        return base64.b64encode(bytes.fromhex(text[2:] if text.startswith("\\x") else text)).decode()
    if t.startswith(("integer", "bigint", "smallint", "int")) and isinstance(value, str):
        return int(value)
    if t == "boolean" and isinstance(value, str):
        return value in ("t", "true")
    return value


def python_value(value: Any) -> Any:
    """A value psycopg read (backfill) in the same forms as `convert`."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value.tzinfo else value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [python_value(v) for v in value]
    return value


# --------------------------------------------------------------------------- events


def _millis_iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def _lsn_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass
class Event:
    object: str  # <schema>_<table>
    body: dict[str, Any]
    lsn: int  # 0 for backfill


def event(stream_name: str, schema: str, table: str, change_type: str, payload: dict[str, Any], keys: list[str],
          committed: dt.datetime, lsn: str | None, tx_id: int | None, n: int, read_method: str) -> Event:
    deleted = change_type in ("DELETE", "UPDATE-DELETE")
    event_id = uuid.uuid5(UUID_NAMESPACE, f"{stream_name}|{schema}.{table}|{lsn or 'backfill'}|{n}|"
                                          f"{json.dumps([payload.get(k) for k in keys], default=str)}")
    source_ts = _millis_iso(committed)
    body = {
        "uuid": str(event_id),
        "read_timestamp": _millis_iso(dt.datetime.now(dt.UTC)),
        "source_timestamp": source_ts,
        "object": f"{schema}_{table}",
        "read_method": read_method,
        "stream_name": stream_name,
        "schema_key": uuid.uuid5(UUID_NAMESPACE, ",".join(sorted(payload))).hex,
        "sort_keys": [int(committed.timestamp() * 1000), lsn or ""],
        "source_metadata": {"schema": schema, "table": table, "is_deleted": deleted, "change_type": change_type,
                            "tx_id": tx_id, "lsn": lsn, "primary_keys": keys},
        "payload": payload,
    }
    return Event(f"{schema}_{table}", body, _lsn_int(lsn) if lsn else 0)


def change_events(stream_name: str, action: Mapping[str, Any], lsn: str, xid: int | None) -> list[Event]:
    """One wal2json (format 2) I/U/D action -> Datastream events (an update that changes the key:
    UPDATE-DELETE of the old key, then UPDATE-INSERT of the new row)."""
    schema, table = action["schema"], action["table"]
    keys = [k["name"] for k in action.get("pk") or []]
    committed = dt.datetime.fromisoformat(_timestamp_text(action["timestamp"], True).replace("Z", "+00:00"))
    columns = {c["name"]: convert(c["type"], c.get("value")) for c in action.get("columns") or []}
    identity = {c["name"]: convert(c["type"], c.get("value")) for c in action.get("identity") or []}
    kind = action["action"]
    if kind == "I":
        return [event(stream_name, schema, table, "INSERT", columns, keys, committed, lsn, xid, 0, "postgres-cdc-wal")]
    if kind == "D":
        return [event(stream_name, schema, table, "DELETE", identity, keys, committed, lsn, xid, 0, "postgres-cdc-wal")]
    events = []
    if identity and any(identity.get(k) != columns.get(k) for k in keys):
        events.append(event(stream_name, schema, table, "UPDATE-DELETE", identity, keys, committed, lsn, xid, 0,
                            "postgres-cdc-wal"))
    events.append(event(stream_name, schema, table, "UPDATE-INSERT", columns, keys, committed, lsn, xid, 1,
                        "postgres-cdc-wal"))
    return events


def write_files(client: Any, bucket: str, prefix: str, events: Sequence[Event], *, gzipped: bool, read_method: str,
                when: dt.datetime) -> int:
    """The events, one file per stream object, as Datastream lays them out; the number of files."""
    by_object: dict[str, list[Event]] = {}
    for e in events:
        by_object.setdefault(e.object, []).append(e)
    count = 0
    for obj, items in sorted(by_object.items()):
        first = min(e.lsn for e in items)
        last = max(e.lsn for e in items)
        digest = uuid.uuid5(UUID_NAMESPACE, items[0].body["uuid"] + items[-1].body["uuid"]).hex[:12]
        name = (f"{prefix}{obj}/{when:%Y/%m/%d/%H/%M}/{digest}_{read_method}_{first:016x}_{last:016x}.jsonl"
                + (".gz" if gzipped else ""))
        data = b"".join(json.dumps(e.body, separators=(",", ":"), default=str).encode() + b"\n" for e in items)
        blob = client.bucket(bucket).blob(name)
        blob.upload_from_string(gzip.compress(data, compresslevel=5) if gzipped else data,
                                content_type="application/json")
        count += 1
    return count


# --------------------------------------------------------------------------- the provider


class LocalDatastreamProvider:
    """Datastream's two kinds on this machine. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.DATASTREAM_CONNECTION_PROFILE, Kind.DATASTREAM_STREAM)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, state_dir: Path | str, *, python: str = sys.executable,
                 run_readers: bool | None = None, poll_s: float = POLL_S) -> None:
        self.project = project
        self.state_dir = Path(state_dir)
        self.python = python
        if run_readers is None:
            run_readers = os.environ.get("HEADWATER_LOCAL_JOBS", "run") != "record"
        self.run_readers = run_readers
        self.poll_s = poll_s
        self.secrets = LocalSecrets.for_state_dir(self.state_dir)
        self._lock = threading.Lock()

    # -- paths --

    def _dir(self, what: str) -> Path:
        path = state_root(self.state_dir, self.project) / what
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _profile_path(self, name: str) -> Path:
        return self._dir("profiles") / f"{name}.json"

    def _stream_path(self, name: str, suffix: str = ".json") -> Path:
        return self._dir("streams") / f"{name}{suffix}"

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        kind = Kind(kind)
        if kind == Kind.DATASTREAM_CONNECTION_PROFILE:
            found = []
            for path in sorted(self._dir("profiles").glob("*.json")):
                record = json.loads(path.read_text())
                found.append(Resource(kind, record["name"], record["spec"], record["labels"]))
            return found
        if kind != Kind.DATASTREAM_STREAM:
            raise PermanentError(f"local_datastream: unsupported kind {kind!r}")
        found = []
        for path in sorted(self._dir("streams").glob("*.json")):
            if path.name.endswith(".status.json"):
                continue
            record = self._stream_record(path.stem)
            if record is None:
                continue
            status = self.status(record.name)
            state, error = self._state(record, status)
            spec = {**record.spec, "state": state}
            extra = {"state": state, **({"error": error} if error else {})}
            lag = lag_text(status)
            if lag:
                extra["replication"] = lag
            found.append(Resource(kind, record.name, spec, record.labels, status=extra))
        return found

    def _state(self, record: StreamRecord, status: Mapping[str, Any]) -> tuple[str, str | None]:
        if record.recorded_only:
            return record.spec.get("state", RUNNING), None
        if not is_alive(record.pid, record.process_start):
            tail = _tail(Path(record.log))
            return FAILED, status.get("error") or f"the local reader has stopped; its log ends: {tail}"
        stale = stale_endpoints(record.endpoints)
        if stale is not None:
            # As for the other stand-ins (issue 9, kind 10): FAILED, so the next apply restarts it
            # against the emulators in effect (update stops the old reader first).
            return FAILED, f"the local reader {stale}"
        return status.get("state", RUNNING), status.get("error")

    def create(self, resource: Resource) -> None:
        if resource.kind == Kind.DATASTREAM_CONNECTION_PROFILE:
            with self._lock:
                if self._profile_path(resource.name).exists():
                    raise AlreadyExists(f"local connection profile {resource.name} exists")
                self._check_profile(resource)
                self._write_profile(resource)
            return
        with self._lock:
            existing = self._stream_record(resource.name)
            if existing is not None and (existing.recorded_only or (
                    is_alive(existing.pid, existing.process_start) and stale_endpoints(existing.endpoints) is None)):
                raise AlreadyExists(f"local stream {resource.name} is running (pid {existing.pid})")
            if existing is not None and not existing.recorded_only and is_alive(existing.pid, existing.process_start):
                stop_group(existing.pid, existing.process_start, graceful=False)  # bound to emulators that are gone
            self._start_stream(resource, previous=existing)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        if resource.kind == Kind.DATASTREAM_CONNECTION_PROFILE:
            with self._lock:
                self._check_profile(resource)
                self._write_profile(resource)
            return
        with self._lock:
            existing = self._stream_record(resource.name)
            running = existing is not None and is_alive(existing.pid, existing.process_start)
            if existing is not None and (running or existing.recorded_only) and set(fields) <= NOT_USED_LOCALLY:
                existing.spec, existing.labels = dict(resource.spec), dict(resource.labels)
                write_json_atomic(self._stream_path(resource.name), asdict(existing))
                return
            if existing is not None and running:
                stop_group(existing.pid, existing.process_start, graceful=False)
            self._start_stream(resource, previous=existing)

    def delete(self, resource: Resource) -> None:
        if resource.kind == Kind.DATASTREAM_CONNECTION_PROFILE:
            self._profile_path(resource.name).unlink(missing_ok=True)
            return
        with self._lock:
            record = self._stream_record(resource.name)
            if record is None:
                return
            if not record.recorded_only:
                stop_group(record.pid, record.process_start, graceful=False)
            if record.spec.get("replication_slot"):
                log.warning("stream %s deleted; its replication slot %s is left in the database (as Datastream "
                            "leaves it): drop it when no stream will read it again", record.name,
                            record.spec["replication_slot"])
            for suffix in (".json", ".status.json"):
                self._stream_path(resource.name, suffix).unlink(missing_ok=True)

    # -- what else a plan or a report asks --

    def status(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self._stream_path(name, ".status.json").read_text())
        except (OSError, ValueError):
            return {}

    def stream_record(self, name: str) -> StreamRecord | None:
        return self._stream_record(name)

    def source_columns(self, profile: Mapping[str, Any], objects: Sequence[tuple[str, str]]
                       ) -> dict[str, dict[str, str]]:
        """``{"<schema>.<table>": {column: PostgreSQL type}}`` of the live tables (information_schema),
        for the plan's schema check (`reconciler.cdc.live_schema_problems`); a table that does not
        exist is absent. ``profile``: the desired profile's spec (it may not exist yet)."""
        if profile.get("type") != "postgresql":
            raise PermanentError("the local stand-in reads PostgreSQL only")
        password = self.secrets.value(profile["password_secret"])
        found: dict[str, dict[str, str]] = {}
        with connect(profile, password) as conn:
            for schema, table in objects:
                rows = conn.execute(
                    "SELECT column_name, CASE WHEN data_type = 'ARRAY' THEN udt_name ELSE data_type END "
                    "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "ORDER BY ordinal_position", (schema, table)).fetchall()
                if rows:
                    found[f"{schema}.{table}"] = {name: kind for name, kind in rows}
        return found

    def health(self, resources: Sequence[Resource]) -> dict[str, Any]:
        """`providers.base.HealthReporter`: each stream's reader - RUNNING is Healthy, with the WAL its
        slot retains and how far behind it is; Degraded when the reader failed (its error) or the
        slot retains more than `WAL_RETAINED_DEGRADED` bytes (peers lose days to silent WAL growth)."""
        from reconciler.health import Health, Observation

        found: dict[str, Any] = {}
        for r in resources:
            if r.kind != Kind.DATASTREAM_STREAM:
                continue
            record = self._stream_record(r.name)
            if record is None:
                continue
            status = self.status(r.name)
            state, error = self._state(record, status)
            lag = lag_text(status) or "its slot is not read yet"
            signals = {k: status.get(k) for k in ("wal_retained_bytes", "lag_bytes", "last_change_delay_s")
                       if status.get(k) is not None}
            if state != RUNNING:
                found[r.address] = Observation(Health.DEGRADED, f"stream {state}: {error}", error=error,
                                               log_tail=tuple(_tail(Path(record.log), 20).split(" | ")),
                                               signals=signals)
            elif status.get("wal_retained_bytes", 0) > WAL_RETAINED_DEGRADED:
                found[r.address] = Observation(Health.DEGRADED, f"stream RUNNING but its {lag}", signals=signals)
            else:
                found[r.address] = Observation(Health.HEALTHY, f"stream RUNNING; {lag}", signals=signals)
        return found

    def would_lose(self, resources: Sequence[Resource]) -> dict[str, str]:
        """`providers.base.LossReporter`: the stream's position in its slot and the WAL that slot holds."""
        found = {}
        for r in resources:
            if r.kind != Kind.DATASTREAM_STREAM:
                continue
            text = f"its position in replication slot {r.spec.get('replication_slot')}"
            lag = lag_text(self.status(r.name))
            if lag:
                text += f" ({lag})"
            found[r.address] = text + f"; a new stream backfills its {len(r.spec.get('include_objects') or [])} " \
                                      "table(s) again"
        return found

    # -- plumbing --

    def _write_profile(self, resource: Resource) -> None:
        write_json_atomic(self._profile_path(resource.name), {"name": resource.name, "project": self.project,
                                                              "spec": dict(resource.spec),
                                                              "labels": dict(resource.labels)})

    def _check_profile(self, resource: Resource) -> None:
        """As Datastream validates a profile when it is created: the secret exists and the database
        answers (a gcs profile: nothing to check here)."""
        spec = resource.spec
        if spec.get("type") == "gcs" or not self.run_readers:
            return
        try:
            password = self.secrets.value(spec["password_secret"])
        except PermanentError as exc:
            raise PermanentError(f"{resource.address}: {exc}") from None
        if spec["type"] != "postgresql":
            return  # no local MySQL: the stream's reader reports it
        try:
            with connect(spec, password):
                pass
        except Exception as exc:  # noqa: BLE001 - any connection failure is the profile's validation error
            raise PermanentError(f"{resource.address}: cannot connect to {spec['type']} at {spec['host']}:"
                                 f"{spec['port']} as {spec['user']}: {_first_line(exc)}") from None

    def _profile(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self._profile_path(name).read_text())["spec"]
        except (OSError, ValueError, KeyError):
            raise NotFound(f"connection profile {name} does not exist (project {self.project})") from None

    def _stream_record(self, name: str) -> StreamRecord | None:
        try:
            record = StreamRecord(**json.loads(self._stream_path(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return record if record.project == self.project else None

    def _start_stream(self, resource: Resource, previous: StreamRecord | None) -> None:
        spec = dict(resource.spec)
        try:
            source = self._profile(spec["source_connection_profile"])
            destination = self._profile(spec["destination_connection_profile"])
        except NotFound as exc:
            raise PermanentError(f"{resource.address}: {exc}") from None
        stream_name = f"projects/{self.project}/locations/local/streams/{resource.name}"
        log_path = self._stream_path(resource.name, ".log")
        record = StreamRecord(
            name=resource.name, project=self.project, pid=0, process_start="", spec=spec,
            labels=dict(resource.labels), source=source, destination=destination, log=str(log_path),
            started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), stream_name=stream_name,
            slot_created=dict(previous.slot_created) if previous else {}, recorded_only=not self.run_readers,
            endpoints=endpoints_in_effect())
        if not self.run_readers:
            write_json_atomic(self._stream_path(resource.name), asdict(record))
            return
        env = child_env(self.project)
        env.pop(PASSWORD_ENV, None)
        if source["type"] == "postgresql":
            try:
                password = self.secrets.value(source["password_secret"])
            except PermanentError as exc:
                raise PermanentError(f"{resource.address}: {exc}") from None
            try:
                with connect(source, password) as conn:
                    created = ensure_slot_and_publication(conn, spec)
            except PermanentError as exc:
                raise PermanentError(f"{resource.address}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - the database refused: the stream cannot start
                raise PermanentError(f"{resource.address}: cannot prepare the slot and publication: "
                                     f"{_first_line(exc)}") from None
            if created:
                record.slot_created = created
                # A new slot: what an earlier stream of this name backfilled is history.
                self._stream_path(resource.name, ".status.json").unlink(missing_ok=True)
            env[PASSWORD_ENV] = password
        record_path = self._stream_path(resource.name)
        write_json_atomic(record_path, asdict(record))
        argv = [self.python, "-m", "providers.local_datastream", str(record_path.resolve()), str(self.poll_s)]
        record.pid, record.process_start = spawn(argv, env, record_path.parent, log_path,
                                                 f"--- {record.started_at} launch {' '.join(argv)}")
        write_json_atomic(record_path, asdict(record))


def stop_all(state_dir: Path, project: str | None = None) -> list[str]:
    """Stop every local reader recorded in ``state_dir`` (of ``project``, or all); the names stopped.
    Records are removed; slots stay in the database (which ``local down`` removes anyway)."""
    stopped = []
    for path in sorted((Path(state_dir) / DIR).glob("*/streams/*.json")):
        if path.name.endswith(".status.json"):
            continue
        try:
            record = StreamRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if project is not None and record.project != project:
            continue
        if not record.recorded_only and is_alive(record.pid, record.process_start):
            stop_group(record.pid, record.process_start, graceful=False)
            stopped.append(record.name)
        for suffix in (".json", ".status.json"):
            path.with_name(record.name + suffix).unlink(missing_ok=True)
    for path in (Path(state_dir) / DIR).glob("*/profiles/*.json"):
        if project is None or path.parent.parent.name == project:
            path.unlink(missing_ok=True)
    return stopped


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --------------------------------------------------------------------------- the reader


class Reader:
    """One stream's reader: backfill, then passes over the slot (see the module docstring)."""

    def __init__(self, record_path: Path, password: str, poll_s: float = POLL_S) -> None:
        self.record_path = record_path
        self.record = StreamRecord(**json.loads(record_path.read_text()))
        self.status_path = record_path.with_name(f"{self.record.name}.status.json")
        self.password = password
        self.poll_s = poll_s
        spec = self.record.spec
        self.slot = spec.get("replication_slot")
        self.objects = [(o["schema"], o["table"]) for o in spec["include_objects"]]
        dest = self.record.destination
        root = dest.get("root_path", "/").strip("/")
        path = spec["destination"]["path"].strip("/")
        self.bucket = dest["bucket"]
        self.prefix = "/".join(p for p in (root, path) if p) + "/"
        self.gzipped = spec["destination"].get("compression") == "gzip"
        try:
            self.status: dict[str, Any] = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            self.status = {"events_written": 0, "files_written": 0, "backfilled": []}
        self.stopping = threading.Event()
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.storage = storage.Client(project=self.record.project, credentials=AnonymousCredentials()) \
            if os.environ.get("STORAGE_EMULATOR_HOST") else storage.Client(project=self.record.project)

    def save(self, **changes: Any) -> None:
        self.status.update(changes, updated_at=dt.datetime.now(dt.UTC).isoformat())
        write_json_atomic(self.status_path, self.status)

    def run(self) -> int:
        if self.record.source.get("type") != "postgresql":
            self.save(state=FAILED, error=f"the local stand-in reads PostgreSQL only, not "
                                          f"{self.record.source.get('type')}")
            self.stopping.wait()
            return 1
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                with connect(self.record.source, self.password) as conn:
                    self.backfill(conn)
                    backoff = 1.0
                    while not self.stopping.is_set():
                        written = self.one_pass(conn)
                        if not written:
                            self.stopping.wait(self.poll_s)
            except Exception as exc:  # noqa: BLE001 - reported as the stream's error; retried
                log.warning("stream %s: %s; retrying in %.0f s", self.record.name, _first_line(exc), backoff)
                self.save(state=FAILED, error=f"{type(exc).__name__}: {_first_line(exc)}")
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        return 0

    def backfill(self, conn: Any) -> None:
        """``backfill: all``: each table's rows once (tables already done are recorded)."""
        if self.record.spec.get("backfill") != "all" or not self.record.slot_created:
            return
        done = set(self.status.get("backfilled") or [])
        at = dt.datetime.fromisoformat(self.record.slot_created["at"])
        for schema, table in self.objects:
            name = f"{schema}.{table}"
            if name in done:
                continue
            keys = [r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                (f"{_ident(schema)}.{_ident(table)}",)).fetchall()]
            cursor = conn.cursor(name=f"backfill_{table}") if not conn.autocommit else conn.cursor()
            cursor.execute(f"SELECT * FROM {_ident(schema)}.{_ident(table)}")  # noqa: S608 - identifiers quoted
            columns = [d.name for d in cursor.description]
            batch: list[Event] = []
            n = 0
            for row in cursor:
                payload = {c: python_value(v) for c, v in zip(columns, row, strict=True)}
                batch.append(event(self.record.stream_name, schema, table, "INSERT", payload, keys, at, None, None, n,
                                   "postgresql-backfill"))
                n += 1
                if len(batch) >= BACKFILL_ROWS_PER_FILE:
                    self._write(batch, "postgresql-backfill")
                    batch = []
            if batch:
                self._write(batch, "postgresql-backfill")
            done.add(name)
            self.save(backfilled=sorted(done))
            log.info("stream %s: backfilled %s (%d rows)", self.record.name, name, n)

    def one_pass(self, conn: Any) -> int:
        """Peek, write, advance; the number of events written."""
        tables = ",".join(f"{s}.{t}" for s, t in self.objects)
        # Everything committed before `upto` (the WAL's end now), at most MAX_CHANGES (whole transactions).
        upto = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        rows = conn.execute(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes(%s, %s::pg_lsn, %s, "
            "'format-version', '2', 'include-timestamp', '1', 'include-pk', '1', 'include-lsn', '1', "
            "'include-xids', '1', 'add-tables', %s)", (self.slot, upto, MAX_CHANGES, tables)).fetchall()
        events: list[Event] = []
        last_commit: str | None = None
        last_committed: dt.datetime | None = None
        for lsn, xid, data in rows:
            action = json.loads(data, parse_float=Decimal)
            kind = action.get("action")
            if kind == "C":
                last_commit = lsn
                last_committed = dt.datetime.fromisoformat(
                    _timestamp_text(action["timestamp"], True).replace("Z", "+00:00"))
            elif kind in ("I", "U", "D"):
                events.extend(change_events(self.record.stream_name, action, action.get("lsn") or lsn,
                                            int(xid) if xid else None))
        if events:
            self._write(events, "postgres-cdc-wal")
        # Confirm what was written. When the pass read everything committed before `upto`, confirm
        # up to `upto` itself: WAL written meanwhile by other tables or databases (logical
        # decoding is per database) is then not held back by an idle stream - Datastream's
        # heartbeat-table advice, done by the reader. Commits after `upto` are read next time.
        target = upto if len(rows) < MAX_CHANGES else last_commit
        if target is not None:
            conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot, target))
        lag = slot_lag(conn, self.slot)
        extra: dict[str, Any] = {}
        if events and last_committed is not None:
            extra["last_change_delay_s"] = round((dt.datetime.now(dt.UTC) - last_committed).total_seconds(), 3)
        self.save(state=RUNNING, error=None, **lag, **extra)
        return len(events)

    def _write(self, events: Sequence[Event], read_method: str) -> None:
        files = write_files(self.storage, self.bucket, self.prefix, events, gzipped=self.gzipped,
                            read_method=read_method, when=dt.datetime.now(dt.UTC))
        self.status["events_written"] = self.status.get("events_written", 0) + len(events)
        self.status["files_written"] = self.status.get("files_written", 0) + files


def _read(record_path: Path, poll_s: float) -> int:
    password = os.environ.pop(PASSWORD_ENV, "")
    reader = Reader(record_path, password, poll_s)
    signal.signal(signal.SIGTERM, lambda *_: reader.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: reader.stopping.set())
    log.info("stream %s: reading slot %s of %s:%s/%s into gs://%s/%s", reader.record.name, reader.slot,
             reader.record.source.get("host"), reader.record.source.get("port"), reader.record.source.get("database"),
             reader.bucket, reader.prefix)
    return reader.run()


if __name__ == "__main__":  # python -m providers.local_datastream <record.json> [poll seconds]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(_read(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else POLL_S))
