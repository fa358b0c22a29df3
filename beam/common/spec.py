"""The pipeline spec: one JSON document that tells every template what to do for one source.

The reconciler compiles a connector YAML (seed: "Onboarding Process") plus its schema file into
this document and hands it to a template as the ``source_spec`` parameter, either inline (a
string starting with ``{``), as a local file path, or as a ``gs://`` object. Everything a
pipeline needs about a source is here; the template parameters only say where to read from.

Format (version 1). Keys not listed are rejected, so a typo fails the launch instead of being
ignored::

    {
      "version": 1,                                  # optional, must be 1
      "source_id": "example_source",                 # [a-z][a-z0-9_]*; labels counters, paths
      "project": "my-project",                       # optional; default project for table refs
      "schema": {
        "version": "1.0",                            # optional; the schema file's version,
                                                     # written to Silver's _schema_version
        "validation": "strict",                      # "strict" (default) | "lenient"
        "fields": [                                  # the seed's schema file "fields" list
          {"name": "id", "type": "STRING", "mode": "REQUIRED", "description": "..."},
          {"name": "address", "type": "RECORD", "mode": "NULLABLE",
           "fields": [{"name": "city", "type": "STRING"}]},
          {"name": "tags", "type": "STRING", "mode": "REPEATED"}
        ]
      },
      "input": {"format": "json", "compression": "gzip"},   # optional; gcs_to_bigquery only:
                                                     # format json|csv|parquet|avro, compression
                                                     # auto|gzip|none (auto: by ".gz" suffix)
      "deduplication": {"key": ["id", "timestamp"],  # optional; dotted paths into RECORDs
                        "window_seconds": 600},      # streaming only: how long a key is kept
      "data_quality": [                              # optional; applied in order, first
        {"field": "email",  "check": "valid_email"}, #   failure is the record's reason
        {"field": "amount", "check": "positive_number"},
        {"field": "id",     "check": "not_null"},
        {"field": "score",  "check": "range", "min": 0, "max": 100},   # either bound optional
        {"field": "code",   "check": "regex", "pattern": "^[A-Z]{3}$"},
        {"field": "status", "check": "allowed_values", "values": ["new", "paid"]}
      ],
      "bronze": {"table": "my-project.bronze.example_source",          # optional: raw rows
                 "bucket": "gs://bronze-my-project-eu"},               # optional: pubsub_to_gcs's
                                                     # archive; where gcs_to_bigquery moves the
                                                     # files it has ingested; "keep_landing":
                                                     # true copies them there and leaves them
      "silver": {"table": "my-project.silver.example_source"},         # validated rows
      "dead_letter": {"topic": "projects/my-project/topics/example_source-dead-letter"},
      "gold": {                                      # optional; bigquery_to_bigquery only
        "table": "my-project.gold.example_source_daily",
        "joins": [{"table": "my-project.gold.customers", "on": ["customer_id"],
                   "type": "left", "alias": "customers"}],   # type left|inner, alias optional
        "group_by": ["customer_id", "date"],
        "metrics": ["sum(amount) as total_amount", "count(*) as transaction_count"],
        "time_field": "timestamp"                    # optional; what the bare "date" means
      }
    }

Field types are BigQuery's (legacy aliases INTEGER, FLOAT, BOOLEAN, STRUCT, DECIMAL and
BIGDECIMAL are accepted and normalised); modes are NULLABLE (default), REQUIRED and REPEATED.
Table references are ``project.dataset.table`` or ``dataset.table`` (then ``project`` must be
set). The meaning of each check and of strict/lenient is documented in ``validation.py`` and
``quality.py``; the gold block in ``gold.py``.

This module only parses and checks the document; it has no Beam dependency so the reconciler
(or anything else) can validate a spec before launching a job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SPEC_VERSION = 1

# Canonical BigQuery type names, and the legacy aliases the seed's schema files may use.
SCALAR_TYPES = frozenset(
    {"STRING", "INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC", "BOOL", "TIMESTAMP", "DATE",
     "DATETIME", "TIME", "BYTES", "JSON", "GEOGRAPHY"}
)
TYPE_ALIASES = {
    "INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD",
    "DECIMAL": "NUMERIC", "BIGDECIMAL": "BIGNUMERIC",
}
MODES = frozenset({"NULLABLE", "REQUIRED", "REPEATED"})
VALIDATION_MODES = frozenset({"strict", "lenient"})
CHECKS = frozenset({"not_null", "valid_email", "positive_number", "range", "regex", "allowed_values"})
INPUT_FORMATS = frozenset({"json", "csv", "parquet", "avro"})
COMPRESSIONS = frozenset({"auto", "gzip", "none"})
JOIN_TYPES = frozenset({"left", "inner"})

BRONZE_FIELDS: list[dict[str, Any]] = [
    # The Bronze table's columns: what the ingesting pipelines write for every record they read,
    # valid or not (beam.common.sinks.BronzeRows). The reconciler creates `bronze.<id>_raw` with
    # exactly these (tests/test_compile.py holds the two equal).
    {"name": "source_id", "type": "STRING", "mode": "REQUIRED"},
    {"name": "payload", "type": "STRING", "mode": "REQUIRED",
     "description": "The record as received (UTF-8; undecodable bytes as \\xNN escapes)"},
    {"name": "attributes", "type": "RECORD", "mode": "REPEATED",
     "description": "Pub/Sub message attributes, or the landing file's metadata (file, size, generation) "
                    "and the record's line or row number",
     "fields": [{"name": "key", "type": "STRING", "mode": "NULLABLE"},
                {"name": "value", "type": "STRING", "mode": "NULLABLE"}]},
    {"name": "origin", "type": "STRING", "mode": "NULLABLE",
     "description": "Where it came from: gs://bucket/object#line or pubsub:<message id>"},
    {"name": "ingested_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
]

SILVER_METADATA_FIELDS: list[dict[str, str]] = [
    # Columns every Silver row gets besides the source's schema fields (written by the sinks;
    # the reconciler creates Silver tables as schema fields + these, and Gold SQL may use them).
    {"name": "_ingested_at", "type": "TIMESTAMP", "mode": "REQUIRED",
     "description": "When headwater's pipeline wrote the row (UTC)"},
    {"name": "_message_id", "type": "STRING", "mode": "NULLABLE",
     "description": "Pub/Sub message id or source file of the record"},
    {"name": "_schema_version", "type": "STRING", "mode": "NULLABLE",
     "description": "Version of the schema file the record was validated against"},
]

_SOURCE_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
# project ids may contain dashes (and a "domain:" prefix); dataset and table ids may not.
_TABLE_REF = re.compile(r"^(?:(?P<project>[a-z][a-z0-9.:-]{4,61}[a-z0-9])\.)?(?P<dataset>[A-Za-z0-9_]{1,1024})\.(?P<table>[A-Za-z0-9_$-]{1,1024})$")
_TOPIC = re.compile(r"^projects/[a-z][a-z0-9.:-]{4,61}[a-z0-9]/topics/[A-Za-z][A-Za-z0-9._~%+-]{2,254}$")


class SpecError(ValueError):
    """The spec document is malformed; the message names the offending path."""


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # canonical: one of SCALAR_TYPES or "RECORD"
    mode: str = "NULLABLE"
    description: str = ""
    fields: tuple[Field, ...] = ()  # RECORD only


@dataclass(frozen=True)
class QualityRule:
    field: str  # dotted path, e.g. "address.city"
    check: str  # one of CHECKS
    min: float | None = None  # range
    max: float | None = None  # range
    pattern: str | None = None  # regex
    values: tuple[Any, ...] = ()  # allowed_values


@dataclass(frozen=True)
class Dedup:
    key: tuple[str, ...]
    window_seconds: int = 600


@dataclass(frozen=True)
class InputFormat:
    format: str | None = None
    compression: str = "auto"


@dataclass(frozen=True)
class Join:
    table: str
    on: tuple[str, ...]
    type: str = "left"
    alias: str = ""


@dataclass(frozen=True)
class Gold:
    table: str
    group_by: tuple[str, ...]
    metrics: tuple[str, ...]
    joins: tuple[Join, ...] = ()
    time_field: str | None = None


@dataclass(frozen=True)
class PipelineSpec:
    source_id: str
    fields: tuple[Field, ...]
    validation: str = "strict"
    project: str | None = None
    schema_version: str | None = None  # the schema file's "version", written to Silver rows
    input: InputFormat = field(default_factory=InputFormat)
    dedup: Dedup | None = None
    quality_rules: tuple[QualityRule, ...] = ()
    bronze_table: str | None = None
    bronze_bucket: str | None = None
    # gcs_to_bigquery with bronze_bucket: copy each ingested file to the archive and leave it in
    # the landing prefix (its claim marked done) instead of moving it - a cloud_transfer source,
    # whose landing copies are what its transfer's next run compares against.
    bronze_keep_landing: bool = False
    silver_table: str | None = None
    dead_letter_topic: str | None = None
    gold: Gold | None = None
    cdc: Cdc | None = None  # datastream_to_bigquery only (see "database_cdc" below)
    features: Any = None  # bigquery_to_bigquery only: a beam.common.features.Features (issue 12)

    def field_at(self, path: str) -> Field | None:
        """The schema field a dotted path names, or None. Paths do not descend into REPEATED."""
        fields = self.fields
        found: Field | None = None
        for part in path.split("."):
            found = next((f for f in fields if f.name == part), None)
            if found is None:
                return None
            fields = found.fields
        return found

    def table_ref(self, ref: str) -> str:
        """``project.dataset.table`` for a spec table reference (filling in ``project``)."""
        m = _TABLE_REF.match(ref)
        if m is None:  # parse_spec already checked; this guards hand-built specs
            raise SpecError(f"not a table reference: {ref!r}")
        if m["project"]:
            return ref
        if not self.project:
            raise SpecError(f"table {ref!r} has no project and the spec sets none")
        return f"{self.project}.{ref}"


# --------------------------------------------------------------------------- loading


def load_spec(value: str) -> PipelineSpec:
    """Parse a ``source_spec`` parameter: inline JSON, a local path, or a ``gs://`` URI."""
    text = value.strip()
    if not text.startswith("{"):
        if text.startswith("gs://"):
            from beam.common.files import read_bytes  # GCS client only when needed

            text = read_bytes(text).decode("utf-8")
        else:
            text = Path(text).read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"source_spec is not valid JSON: {e}") from None
    return parse_spec(doc)


def parse_spec(doc: Any) -> PipelineSpec:
    """Check a decoded spec document and build the immutable :class:`PipelineSpec`."""
    # A CDC spec (datastream_to_bigquery) has one schema per table, under cdc.tables[].
    cdc_doc = isinstance(doc, Mapping) and "cdc" in doc
    d = _obj(doc, "$", required={"source_id"} | (set() if cdc_doc else {"schema"}),
             optional={"version", "project", "input", "deduplication", "data_quality", "bronze", "cdc", "schema",
                       "silver", "dead_letter", "gold", "features"})
    if d.get("version", SPEC_VERSION) != SPEC_VERSION:
        raise SpecError(f"$.version: only version {SPEC_VERSION} is understood, got {d['version']!r}")
    source_id = _str(d["source_id"], "$.source_id")
    if not _SOURCE_ID.match(source_id):
        raise SpecError(f"$.source_id: {source_id!r} must match {_SOURCE_ID.pattern}")
    project = _opt_str(d.get("project"), "$.project")

    if cdc_doc and "schema" in d:
        raise SpecError("$.schema: a cdc spec has one schema per table (cdc.tables[].schema), none at the top level")
    validation, fields, version = _schema(d["schema"], "$.schema") if "schema" in d else ("strict", (), None)

    spec = PipelineSpec(source_id=source_id, fields=fields, validation=validation, project=project,
                        schema_version=None if version is None else str(version))
    updates: dict[str, Any] = {}

    if "input" in d:
        inp = _obj(d["input"], "$.input", optional={"format", "compression"})
        fmt = inp.get("format")
        if fmt is not None and fmt not in INPUT_FORMATS:
            raise SpecError(f"$.input.format: must be one of {sorted(INPUT_FORMATS)}, got {fmt!r}")
        comp = inp.get("compression", "auto")
        if comp not in COMPRESSIONS:
            raise SpecError(f"$.input.compression: must be one of {sorted(COMPRESSIONS)}, got {comp!r}")
        updates["input"] = InputFormat(fmt, comp)

    if d.get("deduplication") is not None:
        dd = _obj(d["deduplication"], "$.deduplication", required={"key"}, optional={"window_seconds"})
        key = _str_list(dd["key"], "$.deduplication.key", allow_single=True)
        if not key:
            raise SpecError("$.deduplication.key: needs at least one field")
        for i, path in enumerate(key):
            _check_path(spec, path, f"$.deduplication.key[{i}]", allow_record=False)
        window = dd.get("window_seconds", 600)
        if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
            raise SpecError(f"$.deduplication.window_seconds: must be a positive integer, got {window!r}")
        updates["dedup"] = Dedup(tuple(key), window)

    rules = d.get("data_quality") or []
    if not isinstance(rules, list):
        raise SpecError("$.data_quality: must be a list of rules")
    updates["quality_rules"] = tuple(_rule(spec, r, f"$.data_quality[{i}]") for i, r in enumerate(rules))

    if d.get("bronze") is not None:
        b = _obj(d["bronze"], "$.bronze", optional={"table", "bucket", "keep_landing"})
        updates["bronze_table"] = _table(b.get("table"), "$.bronze.table", project)
        bucket = _opt_str(b.get("bucket"), "$.bronze.bucket")
        if bucket is not None and not bucket.startswith("gs://") and not bucket.startswith("/"):
            raise SpecError(f"$.bronze.bucket: must be a gs:// URI (or an absolute local path), got {bucket!r}")
        updates["bronze_bucket"] = bucket.rstrip("/") if bucket else None
        keep = b.get("keep_landing", False)
        if not isinstance(keep, bool):
            raise SpecError(f"$.bronze.keep_landing: must be true or false, got {keep!r}")
        if keep and not bucket:
            raise SpecError("$.bronze.keep_landing: needs $.bronze.bucket (the archive the files are copied to)")
        updates["bronze_keep_landing"] = keep
    if d.get("silver") is not None:
        s = _obj(d["silver"], "$.silver", optional={"table"})
        updates["silver_table"] = _table(s.get("table"), "$.silver.table", project)
    if d.get("dead_letter") is not None:
        dl = _obj(d["dead_letter"], "$.dead_letter", optional={"topic"})
        topic = _opt_str(dl.get("topic"), "$.dead_letter.topic")
        if topic is not None and not _TOPIC.match(topic):
            raise SpecError(f"$.dead_letter.topic: must be projects/<project>/topics/<name>, got {topic!r}")
        updates["dead_letter_topic"] = topic
    if d.get("gold") is not None:
        updates["gold"] = _gold(d["gold"], project)
    if cdc_doc:
        updates["cdc"] = _cdc(d["cdc"], project)
    if d.get("features") is not None:  # issue 12: ML feature tables (beam/common/features.py)
        from beam.common.features import parse_features

        updates["features"] = parse_features(d["features"], project, fields)

    return replace(spec, **updates)


def _schema(value: Any, where: str) -> tuple[str, tuple[Field, ...], Any]:
    """A ``schema`` object: its validation mode, fields and version."""
    schema = _obj(value, where, required={"fields"}, optional={"validation", "source_id", "version"})
    validation = schema.get("validation", "strict")
    if validation not in VALIDATION_MODES:
        raise SpecError(f"{where}.validation: must be one of {sorted(VALIDATION_MODES)}, got {validation!r}")
    fields = _fields(schema["fields"], f"{where}.fields")
    version = schema.get("version")
    if version is not None and (not isinstance(version, (str, int, float)) or isinstance(version, bool)):
        raise SpecError(f"{where}.version: must be a string or a number, got {version!r}")
    return validation, fields, version


# --- database_cdc (issue 10: Datastream) ---------------------------------------------------------
#
# "cdc": {                                         # datastream_to_bigquery only
#   "source_type": "postgresql",                   # postgresql | mysql: what a change's log
#                                                  # position is (LSN; binlog file and offset)
#   "tables": [{
#     "object": "public.orders",                   # <schema>.<table> (MySQL: <database>.<table>)
#     "primary_key": ["order_id"],                 # what Silver is kept by
#     "schema": {"version": "1", "validation": "strict", "fields": [...]},  # no RECORD fields
#     "bronze": {"table": "p.bronze.src_orders_changes"},   # every change event (CDC_BRONZE_FIELDS)
#     "silver": {"table": "p.silver.src_orders"}            # the table's current state
#   }]
# }

CDC_SOURCE_TYPES = frozenset({"postgresql", "mysql"})

# Columns of a table's Bronze change log besides the table's own fields (all NULLABLE there):
# one row per change event read, valid or not. The reconciler creates the table with the
# table's fields relaxed to NULLABLE plus exactly these (tests/test_cdc.py holds the two equal).
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

# Columns every CDC Silver row gets besides the table's fields: SILVER_METADATA_FIELDS, and
# where the row's current version comes from in source order.
CDC_SILVER_FIELDS: list[dict[str, str]] = [
    *SILVER_METADATA_FIELDS,
    {"name": "_source_timestamp", "type": "TIMESTAMP", "mode": "NULLABLE",
     "description": "When the change that made this version was committed in the source database"},
    {"name": "_change_position", "type": "STRING", "mode": "REQUIRED",
     "description": "That change's position in source order (source timestamp, then log position)"},
    {"name": "_change_type", "type": "STRING", "mode": "NULLABLE", "description": "That change's type"},
]


@dataclass(frozen=True)
class CdcTable:
    object: str  # "<schema>.<table>" as the source names it
    primary_key: tuple[str, ...]
    fields: tuple[Field, ...]
    validation: str
    schema_version: str | None
    bronze_table: str
    silver_table: str

    @property
    def schema_name(self) -> str:
        return self.object.rsplit(".", 1)[0] if "." in self.object else ""

    @property
    def table_name(self) -> str:
        return self.object.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Cdc:
    source_type: str
    tables: tuple[CdcTable, ...]


def _cdc(raw: Any, project: str | None) -> Cdc:
    c = _obj(raw, "$.cdc", required={"source_type", "tables"})
    source_type = c["source_type"]
    if source_type not in CDC_SOURCE_TYPES:
        raise SpecError(f"$.cdc.source_type: must be one of {sorted(CDC_SOURCE_TYPES)}, got {source_type!r}")
    if not isinstance(c["tables"], list) or not c["tables"]:
        raise SpecError("$.cdc.tables: must be a non-empty list of tables")
    tables: list[CdcTable] = []
    seen: set[str] = set()
    for i, item in enumerate(c["tables"]):
        where = f"$.cdc.tables[{i}]"
        t = _obj(item, where, required={"object", "primary_key", "schema", "bronze", "silver"})
        obj = _str(t["object"], f"{where}.object")
        if obj.lower() in seen:
            raise SpecError(f"{where}.object: {obj!r} is listed twice")
        seen.add(obj.lower())
        validation, fields, version = _schema(t["schema"], f"{where}.schema")
        for j, f in enumerate(fields):
            if f.type == "RECORD":
                raise SpecError(f"{where}.schema.fields[{j}]: a database table has no RECORD columns ({f.name!r})")
            if f.name.startswith("_") and f.name in {m["name"] for m in (*CDC_BRONZE_FIELDS, *CDC_SILVER_FIELDS)}:
                raise SpecError(f"{where}.schema.fields[{j}]: {f.name!r} is one of headwater's own columns")
        key = _str_list(t["primary_key"], f"{where}.primary_key", allow_single=True)
        if not key:
            raise SpecError(f"{where}.primary_key: needs at least one column")
        names = {f.name: f for f in fields}
        for j, name in enumerate(key):
            if name not in names:
                raise SpecError(f"{where}.primary_key[{j}]: {name!r} is not a field of the table's schema")
            if names[name].mode == "REPEATED":
                raise SpecError(f"{where}.primary_key[{j}]: {name!r} is REPEATED")
        bronze = _table(_obj(t["bronze"], f"{where}.bronze", required={"table"})["table"], f"{where}.bronze.table",
                        project)
        silver = _table(_obj(t["silver"], f"{where}.silver", required={"table"})["table"], f"{where}.silver.table",
                        project)
        assert bronze is not None and silver is not None
        tables.append(CdcTable(obj, tuple(key), fields, validation, None if version is None else str(version),
                               bronze, silver))
    return Cdc(source_type, tuple(tables))


# --- end database_cdc ----------------------------------------------------------------------------


# --------------------------------------------------------------------------- pieces


def _fields(value: Any, where: str) -> tuple[Field, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: must be a non-empty list of fields")
    out: list[Field] = []
    seen: set[str] = set()
    for i, raw in enumerate(value):
        path = f"{where}[{i}]"
        f = _obj(raw, path, required={"name", "type"}, optional={"mode", "description", "fields"})
        name = _str(f["name"], f"{path}.name")
        if not _FIELD_NAME.match(name):
            raise SpecError(f"{path}.name: {name!r} is not a valid column name")
        if name.lower() in seen:  # BigQuery column names are case-insensitive
            raise SpecError(f"{path}.name: duplicate field {name!r}")
        seen.add(name.lower())
        ftype = _str(f["type"], f"{path}.type").upper()
        ftype = TYPE_ALIASES.get(ftype, ftype)
        if ftype not in SCALAR_TYPES and ftype != "RECORD":
            raise SpecError(f"{path}.type: unknown type {f['type']!r}")
        mode = _str(f.get("mode", "NULLABLE"), f"{path}.mode").upper()
        if mode not in MODES:
            raise SpecError(f"{path}.mode: must be one of {sorted(MODES)}, got {f.get('mode')!r}")
        nested: tuple[Field, ...] = ()
        if ftype == "RECORD":
            if "fields" not in f:
                raise SpecError(f"{path}.fields: a RECORD needs nested fields")
            nested = _fields(f["fields"], f"{path}.fields")
        elif "fields" in f:
            raise SpecError(f"{path}.fields: only a RECORD has nested fields")
        out.append(Field(name, ftype, mode, _opt_str(f.get("description"), f"{path}.description") or "", nested))
    return tuple(out)


def _check_path(spec: PipelineSpec, path: str, where: str, *, allow_record: bool) -> Field:
    parts = path.split(".")
    fields = spec.fields
    found: Field | None = None
    for depth, part in enumerate(parts):
        found = next((f for f in fields if f.name == part), None)
        if found is None:
            raise SpecError(f"{where}: {path!r} is not a field of the schema")
        if found.mode == "REPEATED" and depth < len(parts) - 1:
            raise SpecError(f"{where}: {path!r} goes through the REPEATED field {part!r}")
        fields = found.fields
    assert found is not None
    if found.type == "RECORD" and not allow_record:
        raise SpecError(f"{where}: {path!r} is a RECORD; name one of its scalar fields")
    return found


_RULE_PARAMS = {
    "not_null": set(), "valid_email": set(), "positive_number": set(),
    "range": {"min", "max"}, "regex": {"pattern"}, "allowed_values": {"values"},
}


def _rule(spec: PipelineSpec, raw: Any, where: str) -> QualityRule:
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: a rule is an object with 'field' and 'check'")
    check = raw.get("check")
    if check not in CHECKS:
        raise SpecError(f"{where}.check: must be one of {sorted(CHECKS)}, got {check!r}")
    r = _obj(raw, where, required={"field", "check"}, optional=_RULE_PARAMS[check])
    path = _str(r["field"], f"{where}.field")
    fld = _check_path(spec, path, f"{where}.field", allow_record=check == "not_null")
    numeric = fld.type in {"INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC"}
    if check in {"positive_number", "range"} and not numeric:
        raise SpecError(f"{where}: {check} needs a numeric field, {path!r} is {fld.type}")
    if check == "valid_email" and fld.type != "STRING":
        raise SpecError(f"{where}: valid_email needs a STRING field, {path!r} is {fld.type}")
    rule = QualityRule(field=path, check=check)
    if check == "range":
        lo, hi = r.get("min"), r.get("max")
        for name, v in (("min", lo), ("max", hi)):
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                raise SpecError(f"{where}.{name}: must be a number, got {v!r}")
        if lo is None and hi is None:
            raise SpecError(f"{where}: range needs min, max or both")
        if lo is not None and hi is not None and lo > hi:
            raise SpecError(f"{where}: min {lo} is greater than max {hi}")
        rule = QualityRule(field=path, check=check, min=lo, max=hi)
    elif check == "regex":
        pattern = _str(r.get("pattern"), f"{where}.pattern")
        try:
            re.compile(pattern)
        except re.error as e:
            raise SpecError(f"{where}.pattern: does not compile: {e}") from None
        rule = QualityRule(field=path, check=check, pattern=pattern)
    elif check == "allowed_values":
        values = r.get("values")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}.values: must be a non-empty list")
        if not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise SpecError(f"{where}.values: only strings, numbers and booleans are allowed")
        rule = QualityRule(field=path, check=check, values=tuple(values))
    return rule


def _gold(raw: Any, project: str | None) -> Gold:
    g = _obj(raw, "$.gold", required={"table", "group_by", "metrics"}, optional={"joins", "time_field"})
    table = _table(g["table"], "$.gold.table", project)
    assert table is not None
    joins: list[Join] = []
    for i, j in enumerate(g.get("joins") or []):
        where = f"$.gold.joins[{i}]"
        jo = _obj(j, where, required={"table", "on"}, optional={"type", "alias"})
        jt = _table(jo["table"], f"{where}.table", project)
        assert jt is not None
        on = _str_list(jo["on"], f"{where}.on", allow_single=True)
        if not on:
            raise SpecError(f"{where}.on: needs at least one column")
        jtype = _str(jo.get("type", "left"), f"{where}.type").lower()
        if jtype not in JOIN_TYPES:
            raise SpecError(f"{where}.type: must be one of {sorted(JOIN_TYPES)}, got {jtype!r}")
        alias = _opt_str(jo.get("alias"), f"{where}.alias") or ""
        joins.append(Join(jt, tuple(on), jtype, alias))
    group_by = _str_list(g["group_by"], "$.gold.group_by", allow_single=True)
    metrics = _str_list(g["metrics"], "$.gold.metrics", allow_single=True)
    if not metrics:
        raise SpecError("$.gold.metrics: needs at least one metric")
    # The expressions themselves are checked by beam.common.gold when the SQL is compiled.
    return Gold(table, tuple(group_by), tuple(metrics), tuple(joins), _opt_str(g.get("time_field"), "$.gold.time_field"))


def _table(value: Any, where: str, project: str | None) -> str | None:
    ref = _opt_str(value, where)
    if ref is None:
        return None
    m = _TABLE_REF.match(ref)
    if m is None:
        raise SpecError(f"{where}: {ref!r} is not project.dataset.table or dataset.table")
    if not m["project"] and not project:
        raise SpecError(f"{where}: {ref!r} names no project and $.project is not set")
    return ref


# --------------------------------------------------------------------------- JSON helpers


def _obj(value: Any, where: str, *, required: set[str] | frozenset[str] = frozenset(),
         optional: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: must be an object")
    missing = sorted(set(required) - value.keys())
    if missing:
        raise SpecError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(value.keys() - set(required) - set(optional))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    return dict(value)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: must be a non-empty string, got {value!r}")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _str_list(value: Any, where: str, *, allow_single: bool = False) -> list[str]:
    # YAML authors write `on: customer_id` as often as `on: [customer_id]`.
    if allow_single and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SpecError(f"{where}: must be a list of strings")
    return [_str(v, f"{where}[{i}]") for i, v in enumerate(value)]
