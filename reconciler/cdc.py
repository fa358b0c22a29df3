"""database_cdc sources: what a database's change stream needs, validated and compiled.

Pure functions used by validation (`reconciler.load`), compile (`reconciler.compile`) and the
providers (`providers.datastream`, `providers.local_datastream`); no I/O but the repo's schema
files, read through the loader. The user's guide is docs/database-cdc.md.

**A source** (``connectors/<id>.yaml``)::

    ingestion:
      pattern: database_cdc
      connector_type: datastream
      database_type: postgresql            # or mysql
      connection_profile: shop-db          # declared in platform.yaml (datastream.connection_profiles)
      tables:
        - name: public.orders              # its own schema file, primary key, Bronze and Silver
          schema: schemas/shop.orders.json
          primary_key: [order_id]
        - customers                        # the seed's plain form: schemas/<id>.customers.json,
                                           # primary key from that file's primary_key
      publication: headwater_shop          # postgresql; default headwater_<source_id>
      replication_slot: headwater_shop     # postgresql; default headwater_<source_id>
      backfill: all                        # all | none

**What it compiles to** (besides the source's topic, dead-letter topic and subscriptions):

=======================================================  ====================================================
``datastream_connection_profile.<id>``                   each profile of platform.yaml (host, port, database,
                                                         user, password by Secret Manager reference)
``datastream_connection_profile.headwater-landing``      the landing bucket, root ``/cdc`` (Datastream's GCS
                                                         destination profile), once per platform
``datastream_stream.<id>``                               source: the profile, publication, slot and tables;
                                                         destination: ``gs://<landing>/cdc/<source_id>/``, JSON
                                                         (gzip); backfill all or none; gated like data
``storage_notification.<landing>/cdc/<source_id>/``      each file Datastream writes, to the source's topic
``dataflow_job.<id>-ingest``                             streaming ``datastream_to_bigquery`` on those events
``bigquery_table.bronze.<id>_<table>_changes``           per table: every change event (its change log)
``bigquery_table.silver.<id>_<table>``                   per table: its current state, by primary key
=======================================================  ====================================================

``<table>`` is the table's name, or ``<schema>_<table>`` outside the default schema (``public``;
for MySQL, the profile's database). Stream ids are the source id with ``-`` for ``_``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.config import Connector, Platform, SourceSchema
from reconciler.resources import Kind, Resource, address

GCS_PROFILE = "headwater-landing"  # the landing bucket as Datastream's destination profile
LANDING_ROOT = "cdc"  # the profile's root path in the landing bucket
DEFAULT_SCHEMA = "public"
FILE_ROTATION_MB = 50  # Datastream's default
FILE_ROTATION_INTERVAL_S = 15  # Datastream's minimum: a change is in a file within 15 s
TEMPLATE = "datastream_to_bigquery"
# Types a primary key column may have: comparable, clusterable scalars.
KEY_TYPES = {"STRING", "INT64", "INTEGER", "NUMERIC", "BIGNUMERIC", "BOOL", "BOOLEAN", "DATE", "DATETIME",
             "TIMESTAMP", "TIME", "BYTES"}
CLUSTER_TYPES = KEY_TYPES - {"TIME", "BYTES"}

# The columns headwater adds (beam/common/spec.py CDC_BRONZE_FIELDS and CDC_SILVER_FIELDS; the
# daemon does not ship beam/, so tests/test_cdc.py holds the two pairs equal).
CDC_BRONZE_FIELDS: list[dict[str, Any]] = [
    {"name": "_event_id", "type": "STRING", "mode": "REQUIRED",
     "description": "Datastream's uuid of the change event (replays insert nothing twice)"},
    {"name": "_change_type", "type": "STRING", "mode": "NULLABLE",
     "description": "INSERT, UPDATE-INSERT, UPDATE-DELETE or DELETE, as Datastream wrote it"},
    {"name": "_deleted", "type": "BOOL", "mode": "NULLABLE", "description": "The change removes the row"},
    {"name": "_valid", "type": "BOOL", "mode": "REQUIRED",
     "description": "The event fit the table's schema (only valid events move Silver)"},
    {"name": "_invalid_reason", "type": "STRING", "mode": "NULLABLE", "description": "Why not, when not valid"},
    {"name": "_source_timestamp", "type": "TIMESTAMP", "mode": "NULLABLE",
     "description": "When the change was committed in the source database"},
    {"name": "_change_position", "type": "STRING", "mode": "NULLABLE",
     "description": "Source order: source timestamp, then log position, as one sortable string"},
    {"name": "_primary_key", "type": "STRING", "mode": "NULLABLE",
     "description": "The row's primary key values as a JSON array"},
    {"name": "_payload", "type": "STRING", "mode": "REQUIRED", "description": "The event as received (JSON)"},
    {"name": "_origin", "type": "STRING", "mode": "NULLABLE", "description": "gs://bucket/object#line"},
    {"name": "_ingested_at", "type": "TIMESTAMP", "mode": "REQUIRED",
     "description": "When headwater's pipeline wrote the row (UTC)"},
]
CDC_SILVER_FIELDS: list[dict[str, Any]] = [
    {"name": "_ingested_at", "type": "TIMESTAMP", "mode": "REQUIRED",
     "description": "When headwater's pipeline wrote the row (UTC)"},
    {"name": "_message_id", "type": "STRING", "mode": "NULLABLE",
     "description": "Pub/Sub message id or source file of the record"},
    {"name": "_schema_version", "type": "STRING", "mode": "NULLABLE",
     "description": "Version of the schema file the record was validated against"},
    {"name": "_source_timestamp", "type": "TIMESTAMP", "mode": "NULLABLE",
     "description": "When the change that made this version was committed in the source database"},
    {"name": "_change_position", "type": "STRING", "mode": "REQUIRED",
     "description": "That change's position in source order (source timestamp, then log position)"},
    {"name": "_change_type", "type": "STRING", "mode": "NULLABLE", "description": "That change's type"},
]
OWN_COLUMNS = frozenset(f["name"] for f in (*CDC_BRONZE_FIELDS, *CDC_SILVER_FIELDS))

# What cannot change in place (both providers: Datastream's, and the local stand-in, which
# plans alike): a stream's source, destination and slot are its identity; a different one is a
# new stream (a new backfill, gated as data-bearing: reconciler.resources.DATA_KINDS).
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.DATASTREAM_CONNECTION_PROFILE: frozenset({"type"}),
    Kind.DATASTREAM_STREAM: frozenset({"source_connection_profile", "destination_connection_profile",
                                       "database_type", "replication_slot", "publication", "destination.path",
                                       "destination.format"}),
}


@dataclass(frozen=True)
class Table:
    """One table of a source, resolved: where it is, its key, its schema and its BigQuery names."""

    owner: str  # PostgreSQL schema or MySQL database
    name: str  # the table
    key: str  # the part of its BigQuery table names: name, or owner_name outside the default
    primary_key: tuple[str, ...]
    schema: SourceSchema
    schema_file: str
    schema_map: Any = field(default=None, compare=False, repr=False)  # where each value is in the file

    @property
    def object(self) -> str:
        return f"{self.owner}.{self.name}"


# --------------------------------------------------------------------------- names


def stream_id(source_id: str) -> str:
    """The Datastream stream id of a source (``[a-z][a-z0-9-]*``)."""
    return source_id.lower().replace("_", "-")


def slot_name(connector: Connector) -> str:
    return connector.ingestion.replication_slot or f"headwater_{connector.source_id}"


def publication_name(connector: Connector) -> str:
    return connector.ingestion.publication or f"headwater_{connector.source_id}"


def profile_id(reference: str) -> str:
    """``shop-db`` or ``projects/p/locations/r/connectionProfiles/shop-db`` -> ``shop-db``."""
    return reference.rsplit("/", 1)[-1]


def default_owner(database_type: str, profile: Any | None) -> str:
    if database_type == "postgresql":
        return DEFAULT_SCHEMA
    return (profile.database if profile is not None else None) or ""


def table_parts(name: str, database_type: str, profile: Any | None) -> tuple[str, str, str]:
    """``(owner, table, key)`` of a table name as written (see the module docstring)."""
    default = default_owner(database_type, profile)
    owner, _, table = name.rpartition(".")
    owner = owner or default
    key = table if owner == default else f"{owner}_{table}"
    return owner, table, key.lower()


def default_schema_file(source_id: str, key: str) -> str:
    return f"schemas/{source_id}.{key}.json"


def landing_prefix(landing_bucket: str, source_id: str) -> str:
    return f"gs://{landing_bucket}/{LANDING_ROOT}/{source_id}/"


def bronze_table(dataset: str, source_id: str, key: str) -> str:
    return f"{dataset}.{source_id}_{key}_changes"


def silver_table(dataset: str, source_id: str, key: str) -> str:
    return f"{dataset}.{source_id}_{key}"


# --------------------------------------------------------------------------- passwords in YAML

_PASSWORD_KEY = re.compile(r"^(.*pass(word|wd)?|pwd)$")
_URI_WITH_PASSWORD = re.compile(r"\b(postgres(ql)?|mysql|jdbc:[a-z]+)://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
PASSWORD_ADVICE = (
    "a password is never written in YAML: put it in Secret Manager - printf %s \"$PASSWORD\" | gcloud secrets "
    "create <id> --data-file=- (locally: .headwater/secrets/<id>) - and name the secret in the connection "
    "profile: password_secret: <id> (platform.yaml, datastream.connection_profiles.<profile>)")


def password_problem(data: Any) -> tuple[tuple, str] | None:
    """The first place in a YAML document that holds a password as a value - a key named like one
    (``password``, ``db_pass``, ``pwd``...) with a value, or a connection URI with a password in
    it - as ``(location, message)``; the value itself is never quoted."""
    for loc, key, value in _walk(data):
        normalized = re.sub(r"[-_\s]", "", key.lower()) if isinstance(key, str) else ""
        if normalized and _PASSWORD_KEY.match(normalized) and value not in (None, "") \
                and not isinstance(value, (dict, list, bool)):
            return loc, f"{key!r} holds a password in plain text; {PASSWORD_ADVICE}"
        if isinstance(value, str) and _URI_WITH_PASSWORD.search(value):
            return loc, f"this value is a connection URI with a password in it; {PASSWORD_ADVICE}"
    return None


def _walk(value: Any, loc: tuple = ()) -> Iterator[tuple[tuple, Any, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*loc, key), key, item
            yield from _walk(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield (*loc, index), None, item
            yield from _walk(item, (*loc, index))


# --------------------------------------------------------------------------- validation

Problem = tuple[tuple, str]  # (location in the connector file, message)


def source_problems(connector: Connector, platform: Platform | None) -> list[Problem]:
    """What a database_cdc source gets wrong on its own and against platform.yaml (its tables'
    schema files are checked by `load_tables`)."""
    ingestion = connector.ingestion
    problems: list[Any] = []
    if platform is not None:
        reference = ingestion.connection_profile
        wanted = profile_id(reference)
        if reference.startswith("projects/"):
            parts = reference.split("/")
            if (parts[1], parts[3]) != (platform.project, platform.region):
                problems.append((("ingestion", "connection_profile"),
                                 f"connection profile {reference!r} is not this platform's (project "
                                 f"{platform.project}, region {platform.region}): profiles are declared in "
                                 "platform.yaml (datastream.connection_profiles) and referenced by id"))
        profiles = platform.datastream.connection_profiles
        if wanted not in profiles:
            hint = difflib.get_close_matches(wanted, list(profiles), n=1, cutoff=0.6)
            declared = f"declared: {', '.join(sorted(profiles))}" if profiles else "none is declared"
            problems.append((("ingestion", "connection_profile"),
                             f"connection profile {wanted!r} is not declared in platform.yaml "
                             f"(datastream.connection_profiles; {declared})"
                             + (f" (did you mean {hint[0]!r}?)" if hint else "")))
        elif profiles[wanted].database_type != ingestion.database_type:
            problems.append((("ingestion", "database_type"),
                             f"database_type {ingestion.database_type} but connection profile {wanted!r} connects to "
                             f"a {profiles[wanted].database_type} database"))
    processing = connector.processing
    for name in ("bronze_to_silver", "silver_to_gold"):
        if getattr(processing, name):
            problems.append((("processing", name),
                             f"processing.{name} does not apply to a database_cdc source yet: its Silver tables are "
                             "the source tables' current state, kept by primary key (remove it)"))
    declared = {k for k, v in connector.silver.model_dump(exclude_defaults=True).items() if v is not None}
    for name in sorted(declared):
        problems.append((("silver", name),
                         f"silver.{name} does not apply to a database_cdc source: each table's Silver table is "
                         "clustered by its primary key and not partitioned (remove it)"))
    if connector.schema_ is not None and connector.schema_.file is not None:
        problems.append((("schema", "file"), "a database_cdc source's tables name their schema files "
                                             "(tables[].schema); its schema block takes validation and evolution"))
    return problems


def load_tables(collector: Any, connector: Connector, platform: Platform | None, rel: str, smap: Any,
                taken: dict[str, str]) -> tuple[Table, ...] | None:
    """Each table of a source with its schema file read and checked; problems go to ``collector``
    (reconciler.load's). ``taken``: BigQuery table names already derived by other sources."""
    from reconciler.load import _dotted

    ingestion = connector.ingestion
    sid = connector.source_id
    profile = None
    if platform is not None:
        profile = platform.datastream.connection_profiles.get(profile_id(ingestion.connection_profile))
    tables: list[Table] = []
    ok = True
    seen: dict[str, int] = {}
    for index, entry in enumerate(ingestion.tables):
        here = ("ingestion", "tables", index)

        def add(loc: tuple, message: str) -> None:
            collector.add(rel, smap.find(loc), _dotted(loc), message)

        owner, name, key = table_parts(entry.name, ingestion.database_type, profile)
        if ingestion.database_type == "mysql" and not owner:
            add((*here, "name"), f"table {entry.name!r} names no database and connection profile has none: write "
                                 "<database>.<table>")
            ok = False
            continue
        if key in seen:
            add((*here, "name"), f"table {entry.name!r} is listed twice (also tables[{seen[key]}])")
            ok = False
            continue
        seen[key] = index
        schema_file = entry.schema_ or default_schema_file(sid, key)
        loaded = _load_table_schema(collector, schema_file, sid)
        if isinstance(loaded, str):
            how = ("" if entry.schema_ else
                   f" (the default for table {entry.name!r}; write {{name: {entry.name}, schema: <file>, "
                   "primary_key: [<columns>]}} to name another)")
            add((*here, "schema") if entry.schema_ else here, loaded + how)
            ok = False
            continue
        if loaded is None:  # its own problems are reported in the schema file
            ok = False
            continue
        schema, schema_map, schema_rel = loaded
        key_columns = entry.primary_key or schema.primary_key
        if not key_columns:
            add(here, f"table {entry.name!r} has no primary key: Silver keeps its current state by primary key; name "
                      f"it (primary_key: [<columns>] here, or \"primary_key\" in {schema_file})")
            ok = False
            continue
        if entry.primary_key and schema.primary_key and list(entry.primary_key) != list(schema.primary_key):
            add((*here, "primary_key"), f"primary_key {list(entry.primary_key)} differs from {schema_file}'s "
                                        f"{list(schema.primary_key)}: name it in one place")
            ok = False
        key_loc = (*here, "primary_key") if entry.primary_key else here
        for j, column in enumerate(key_columns):
            found = next((f for f in schema.fields if f.name == column), None)
            loc = (*key_loc, j) if entry.primary_key else key_loc
            if found is None:
                hint = difflib.get_close_matches(column, [f.name for f in schema.fields], n=1, cutoff=0.6)
                add(loc, f"primary key column {column!r} is not a field of {schema_file}"
                         + (f" (did you mean {hint[0]!r}?)" if hint else ""))
                ok = False
            elif found.type not in KEY_TYPES or found.mode == "REPEATED":
                add(loc, f"primary key column {column!r} has type {found.type} ({found.mode}); a key column is one of "
                         f"{', '.join(sorted(KEY_TYPES - {'INTEGER', 'BOOLEAN'}))}, not REPEATED")
                ok = False
        for j, f in enumerate(schema.fields):
            if f.type in ("RECORD", "STRUCT"):
                collector.add(schema_rel, schema_map.find(("fields", j, "type")), f"fields[{j}].type",
                              f"field {f.name!r} is a RECORD: a database table's columns are scalar (JSON for "
                              "structured values)")
                ok = False
            elif f.name in OWN_COLUMNS:
                collector.add(schema_rel, schema_map.find(("fields", j, "name")), f"fields[{j}].name",
                              f"{f.name!r} is one of the columns headwater adds to CDC tables; rename it")
                ok = False
        for table_name in (f"{sid}_{key}", f"{sid}_{key}_changes"):
            owner_of = taken.get(table_name)
            if owner_of and owner_of != rel:
                add(here, f"table {entry.name!r} would be BigQuery table {table_name}, already {owner_of}'s")
                ok = False
            taken.setdefault(table_name, rel)
        for j, f in enumerate(schema.fields):
            if f.description and len(f.description) > 1024:  # BigQuery's limit on a column description
                collector.add(schema_rel, schema_map.find(("fields", j, "description")), f"fields[{j}].description",
                              f"column {f.name!r}: its description is {len(f.description):,} characters; BigQuery "
                              "allows 1,024")
                ok = False
        tables.append(Table(owner, name, key, tuple(key_columns), schema, schema_rel, schema_map))
    return tuple(tables) if ok else None


def _load_table_schema(collector: Any, relative: str, source_id: str):
    """``(schema, source map, path)``; None when the file's own problems were reported; a
    message when the file cannot be used at all."""
    from reconciler.yamlsrc import load_json

    path = Path(os.path.normpath(collector.root / relative))
    if Path(relative).is_absolute() or not path.is_relative_to(collector.root):
        return f"{relative!r} points outside the repository; schema files must live inside it"
    if not os.path.lexists(path):
        return f"schema file {relative!r} does not exist"
    loaded = collector.load(path, load_json, SourceSchema)
    if not loaded:
        return None
    schema, schema_map = loaded
    schema_rel = collector.rel(path)
    if schema.source_id != source_id:
        collector.add(schema_rel, schema_map.find(("source_id",)), "source_id",
                      f"schema source_id {schema.source_id!r} does not match connector {source_id!r}")
        return None
    return schema, schema_map, schema_rel


def secret_refs(connector: Connector, platform: Platform | None, platform_map: Any) -> tuple[Any, ...]:
    """The password secret of the source's connection profile, where platform.yaml names it (a
    plan checks that it exists, as it does a connector's secrets)."""
    from reconciler.load import PLATFORM_FILE, SecretRef, _dotted

    if platform is None or platform_map is None:
        return ()
    name = profile_id(connector.ingestion.connection_profile)
    profile = platform.datastream.connection_profiles.get(name)
    if profile is None:
        return ()
    loc = ("datastream", "connection_profiles", name, "password_secret")
    line, column = platform_map.find(loc)
    return (SecretRef(profile.password_secret, PLATFORM_FILE, line, column, _dotted(loc)),)


# --------------------------------------------------------------------------- the live tables

# What a source column's type (information_schema's data_type, or Datastream's, lower case) may be
# declared as in the schema file, given the JSON values the events carry (numbers stay numbers: a
# STRING column would reject them; text forms - timestamps, decimals, bytes - may be STRING); a
# type not listed here is not checked.
_COMPATIBLE: list[tuple[tuple[str, ...], set[str]]] = [
    (("smallint", "integer", "bigint", "int", "int2", "int4", "int8", "serial", "bigserial", "smallserial",
      "tinyint", "mediumint", "year"), {"INT64", "INTEGER", "NUMERIC", "BIGNUMERIC", "FLOAT64", "FLOAT"}),
    (("numeric", "decimal"), {"NUMERIC", "BIGNUMERIC", "FLOAT64", "FLOAT", "STRING"}),
    (("real", "double precision", "float4", "float8", "float", "double"), {"FLOAT64", "FLOAT", "NUMERIC", "BIGNUMERIC"}),
    (("boolean", "bool"), {"BOOL", "BOOLEAN"}),
    (("timestamp with time zone", "timestamptz"), {"TIMESTAMP", "STRING"}),
    (("timestamp without time zone", "timestamp", "datetime"), {"DATETIME", "TIMESTAMP", "STRING"}),
    (("date",), {"DATE", "STRING"}),
    (("time without time zone", "time with time zone", "time"), {"TIME", "STRING"}),
    (("json", "jsonb"), {"JSON"}),
    (("bytea", "blob", "binary", "varbinary", "longblob"), {"BYTES", "STRING"}),
    (("text", "character varying", "varchar", "character", "char", "uuid", "citext", "user-defined", "enum",
      "longtext", "mediumtext"), {"STRING"}),
]


def _allowed(db_type: str) -> set[str] | None:
    t = db_type.lower().split("(")[0].strip()
    for names, allowed in _COMPATIBLE:
        if t in names:
            return allowed
    return None


def live_schema_problems(state: Any, provider: Any) -> list[Any]:
    """Each database_cdc table's schema file against the live table's columns (asked of the
    stream's provider: Datastream's discover, or the local database), as problems with the
    schema file's line: a column the database lacks, a column the schema lacks (every change would
    be a dead letter under strict validation), a type that cannot hold the column's values, a
    table that does not exist. A database that cannot be asked is logged and not checked."""
    import logging


    ask = getattr(provider, "source_columns", None)
    if ask is None:
        return []
    platform = state.platform
    problems: list[Any] = []
    for source in state.sources:
        if source.connector.ingestion.pattern != "database_cdc" or not source.tables:
            continue
        name = profile_id(source.connector.ingestion.connection_profile)
        profile = next((r.spec for r in platform_resources(platform, "", [source], {}) if r.name == name), None)
        if profile is None:
            continue
        try:
            live = ask(profile, [(t.owner, t.name) for t in source.tables])
        except Exception as exc:  # noqa: BLE001 - unreachable, no permission: the create will say it
            logging.getLogger(__name__).warning("cannot compare %s's tables with the database (%s): %s",
                                                source.source_id, name, str(exc).splitlines()[0] if str(exc) else exc)
            continue
        strict = (source.connector.schema_.validation if source.connector.schema_ else "strict") == "strict"
        for index, table in enumerate(source.tables):
            problems += _table_problems(source, index, table, live.get(table.object), name, strict)
    return problems


def _table_problems(source: Any, index: int, table: Table, columns: dict[str, str] | None, profile: str,
                    strict: bool) -> list[Any]:
    from reconciler.load import Problem, _dotted

    smap = table.schema_map
    if columns is None:
        loc = ("ingestion", "tables", index)
        line, col = source.connector_map.find(loc) if source.connector_map else (1, 1)
        return [Problem(source.connector_file, line, col, _dotted(loc),
                        f"table {table.object} does not exist in the database of connection profile {profile!r} (or "
                        "its user cannot read it)")]
    found: list[Any] = []
    lower = {c.lower(): (c, t) for c, t in columns.items()}

    def at(loc: tuple, message: str) -> None:
        line, col = smap.find(loc) if smap is not None else (1, 1)
        found.append(Problem(table.schema_file, line, col, _dotted(loc), message))

    declared = set()
    for j, f in enumerate(table.schema.fields):
        declared.add(f.name.lower())
        live = lower.get(f.name.lower())
        if live is None:
            at(("fields", j, "name"), f"column {f.name!r} is not a column of {table.object} in the database (it has: "
                                      f"{', '.join(columns)})")
            continue
        db_type = live[1]
        is_array = db_type.lower() in ("array",) or db_type.startswith("_") or db_type.lower().endswith("[]")
        if is_array != (f.mode == "REPEATED"):
            at(("fields", j, "mode"), f"column {f.name!r} is {'an array' if is_array else 'not an array'} "
                                      f"({db_type}) in {table.object}; the schema says mode {f.mode}")
            continue
        allowed = None if is_array else _allowed(db_type)
        if allowed is not None and f.type not in allowed:
            at(("fields", j, "type"), f"column {f.name!r} is {db_type} in {table.object}; {f.type} cannot hold its "
                                      f"values (use one of {', '.join(sorted(allowed - {'INTEGER', 'FLOAT', 'BOOLEAN'}))})")
    extra = [c for c in columns if c.lower() not in declared]
    if extra and strict:
        at(("fields",), f"{table.object} has column(s) {', '.join(extra)} that {table.schema_file} does not list: with "
                        "validation strict every change would be a dead letter (unknown_field); add them, or use "
                        "schema.validation: lenient to drop them")
    return found


# --------------------------------------------------------------------------- compile


def platform_resources(platform: Platform, landing_bucket: str, sources: Any, labels: Mapping[str, str]
                       ) -> Iterator[Resource]:
    """The connection profiles the platform's database_cdc sources use (a profile no source names
    is not created: Datastream would validate connectivity to a database nothing reads), and the
    landing bucket's when a source streams into it."""
    used = {profile_id(s.connector.ingestion.connection_profile) for s in sources
            if s.connector.ingestion.pattern == "database_cdc"}
    for name, profile in sorted(platform.datastream.connection_profiles.items()):
        if name not in used:
            continue
        spec: dict[str, Any] = {"type": profile.database_type, "host": profile.host, "port": profile.effective_port,
                                "user": profile.user, "password_secret": profile.password_secret}
        if profile.database_type == "postgresql":  # MySQL's default database is headwater's alone
            spec["database"] = profile.database
        yield Resource(Kind.DATASTREAM_CONNECTION_PROFILE, name, spec, dict(labels))
    if any(s.connector.ingestion.pattern == "database_cdc" for s in sources):
        yield Resource(Kind.DATASTREAM_CONNECTION_PROFILE, GCS_PROFILE,
                       {"type": "gcs", "bucket": landing_bucket, "root_path": f"/{LANDING_ROOT}"}, dict(labels),
                       depends_on=(address(Kind.STORAGE_BUCKET, landing_bucket),))


def source_resources(platform: Platform, names: Any, source: Any, labels: Mapping[str, str]) -> Iterator[Resource]:
    """A database_cdc source's tables, notification, ingest job and stream (the module docstring)."""
    from reconciler.compile import (
        INPUT_PARAMETER,
        SUBSCRIPTION_PARAMETER,
        canonical_schema,
        job_environment,
        job_name,
        topic_id,
    )
    from reconciler.semantic import canonical_fields

    connector = source.connector
    ingestion = connector.ingestion
    sid = connector.source_id
    project = platform.project
    protect = connector.deletion_protection
    landing = names.buckets["landing"]
    bronze_ds, silver_ds = names.datasets["bronze"], names.datasets["silver"]
    evolution = connector.schema_.evolution if connector.schema_ else "backward_compatible"
    validation = connector.schema_.validation if connector.schema_ else "strict"
    table_addresses: list[str] = []
    pipeline_tables = []
    for table in source.tables:
        fields = canonical_schema(table.schema.fields)
        relaxed = [{**f, "mode": "NULLABLE"} if f["mode"] == "REQUIRED" else f for f in fields]
        bronze = bronze_table(bronze_ds, sid, table.key)
        silver = silver_table(silver_ds, sid, table.key)
        yield Resource(
            Kind.BIGQUERY_TABLE, bronze,
            {"schema": [*relaxed, *CDC_BRONZE_FIELDS], "time_partitioning": {"type": "DAY", "field": None},
             "clustering_fields": ["_primary_key"],
             "description": f"Every change event of {table.object} ({sid}), as received"},
            dict(labels), depends_on=(address(Kind.BIGQUERY_DATASET, bronze_ds),), deletion_protection=protect,
            options={"schema_evolution": evolution})
        by_name = {f.name: f for f in table.schema.fields}
        cluster = [k for k in table.primary_key if by_name[k].type in CLUSTER_TYPES][:4]
        yield Resource(
            Kind.BIGQUERY_TABLE, silver,
            {"schema": [*fields, *CDC_SILVER_FIELDS], "time_partitioning": None, "clustering_fields": cluster or None,
             "description": connector.description or f"{table.object} ({sid}): its current state, by "
                                                      f"{', '.join(table.primary_key)}"},
            dict(labels), depends_on=(address(Kind.BIGQUERY_DATASET, silver_ds),), deletion_protection=protect,
            options={"schema_evolution": evolution})
        table_addresses += [address(Kind.BIGQUERY_TABLE, bronze), address(Kind.BIGQUERY_TABLE, silver)]
        pipeline_tables.append({
            "object": table.object,
            "primary_key": list(table.primary_key),
            "schema": {"version": table.schema.version, "validation": validation,
                       "fields": canonical_fields([{"name": f["name"], "type": f["type"], "mode": f["mode"]}
                                                   for f in fields])},
            "bronze": {"table": f"{project}.{bronze}"},
            "silver": {"table": f"{project}.{silver}"},
        })

    prefix = landing_prefix(landing, sid)
    object_prefix = prefix.removeprefix(f"gs://{landing}/")
    topic = topic_id(connector, project)
    notification = f"{landing}/{object_prefix}"
    yield Resource(
        Kind.STORAGE_NOTIFICATION, notification,
        {"bucket": landing, "topic": topic, "object_name_prefix": object_prefix, "event_types": ["OBJECT_FINALIZE"],
         "payload_format": "JSON_API_V1", "publisher_grant": True},
        dict(labels), depends_on=(address(Kind.STORAGE_BUCKET, landing), address(Kind.PUBSUB_TOPIC, topic)))

    job = job_name(sid, "ingest")
    pipeline = {
        "version": 1, "source_id": sid, "project": project,
        "cdc": {"source_type": ingestion.database_type, "tables": pipeline_tables},
        "bronze": {"bucket": f"gs://{names.buckets['bronze']}"},
        "dead_letter": {"topic": f"projects/{project}/topics/{sid}-dlq"},
    }
    yield Resource(
        Kind.DATAFLOW_JOB, job,
        {"template": TEMPLATE, "streaming": True, "schedule": None,
         "parameters": {SUBSCRIPTION_PARAMETER: f"projects/{project}/subscriptions/{sid}-ingest",
                        INPUT_PARAMETER: prefix},
         "pipeline": pipeline, "environment": job_environment(platform, True)},
        dict(labels),
        depends_on=(address(Kind.PUBSUB_SUBSCRIPTION, f"{sid}-ingest"), address(Kind.PUBSUB_TOPIC, f"{sid}-dlq"),
                    address(Kind.STORAGE_BUCKET, landing), address(Kind.STORAGE_BUCKET, names.buckets["bronze"]),
                    *table_addresses))

    profile = profile_id(ingestion.connection_profile)
    spec: dict[str, Any] = {
        "source_connection_profile": profile,
        "destination_connection_profile": GCS_PROFILE,
        "database_type": ingestion.database_type,
        "include_objects": [{"schema": t.owner, "table": t.name} for t in sorted(source.tables, key=lambda t: t.object)],
        "destination": {"path": f"/{sid}", "format": "json", "compression": "gzip",
                        "file_rotation_mb": FILE_ROTATION_MB, "file_rotation_interval_s": FILE_ROTATION_INTERVAL_S},
        "backfill": ingestion.backfill,
        "state": "RUNNING",
    }
    if ingestion.database_type == "postgresql":
        spec["replication_slot"] = slot_name(connector)
        spec["publication"] = publication_name(connector)
    yield Resource(
        Kind.DATASTREAM_STREAM, stream_id(sid), spec, dict(labels),
        # Files flow once their notification and the job that applies them are there.
        depends_on=(address(Kind.DATASTREAM_CONNECTION_PROFILE, profile),
                    address(Kind.DATASTREAM_CONNECTION_PROFILE, GCS_PROFILE),
                    address(Kind.STORAGE_NOTIFICATION, notification), address(Kind.DATAFLOW_JOB, job)),
        deletion_protection=protect)


