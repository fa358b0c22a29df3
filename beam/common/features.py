"""Silver -> a point-in-time feature table (issue 12: ``serving.ml_features``).

The spec's ``features`` block (``bigquery_to_bigquery`` only)::

    "features": {
      "table": "my-project.features.orders",        # the feature table (the reconciler's)
      "entity_key": ["customer_id"],                 # top-level Silver fields
      "time_field": "ordered_at",                    # TIMESTAMP/DATE/DATETIME (or _ingested_at)
      "features": ["sum(amount) as spend", "count(*) as orders"],
      "windows_seconds": [604800, 2592000, 7776000]  # 7d, 30d, 90d
    }

:func:`compile_features_sql` makes one SELECT, run by BigQuery like the Gold query (the template
replaces the table's rows in one transaction). One row per entity and UTC day on which the entity
had rows: ``feature_timestamp`` is the end of that day (exclusive), and each feature
``<alias>_<window>`` aggregates the entity's rows with ``time < feature_timestamp`` and
``time >= feature_timestamp - window``. No row after ``feature_timestamp`` is ever used - the
join condition says so - and ``_last_event_at``, the newest row used, shows it. That is the
shape ``ML.FEATURES_AT_TIME``, Vertex AI Feature Store (a feature view over a BigQuery table with
an entity id column and a ``feature_timestamp``) and Feast's BigQuery source read.

Identifiers come from the spec and are checked (``[A-Za-z_][A-Za-z0-9_]*``, fields of the Silver
schema) and backquoted; aggregates are from a fixed list; nothing is interpolated as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from beam.common.spec import SILVER_METADATA_FIELDS, SpecError

_METRIC = re.compile(r"^\s*(sum|avg|min|max|count)\s*\(\s*(\*|[A-Za-z_][A-Za-z0-9_]*)\s*\)\s+as\s+"
                     r"([A-Za-z_][A-Za-z0-9_]*)\s*$", re.IGNORECASE)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TABLE = re.compile(r"^[a-z][a-z0-9.:-]{4,61}[a-z0-9]\.[A-Za-z0-9_]{1,1024}\.[A-Za-z0-9_-]{1,1024}$")
FEATURE_TIMESTAMP = "feature_timestamp"
LAST_EVENT = "_last_event_at"
TIME_TYPES = frozenset({"TIMESTAMP", "DATE", "DATETIME"})


@dataclass(frozen=True)
class Feature:
    fn: str  # sum, avg, min, max, count
    arg: str  # a column, or * for count
    alias: str


@dataclass(frozen=True)
class Features:
    table: str
    entity_key: tuple[str, ...]
    time_field: str
    features: tuple[Feature, ...]
    windows_seconds: tuple[int, ...]


def window_label(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_features(raw: Any, project: str | None, fields: Any) -> Features:
    if not isinstance(raw, dict):
        raise SpecError("$.features: must be an object")
    allowed = {"table", "entity_key", "time_field", "features", "windows_seconds"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpecError(f"$.features: unknown keys {unknown}")
    missing = sorted(allowed - set(raw))
    if missing:
        raise SpecError(f"$.features: missing {missing}")
    table = raw["table"]
    if not isinstance(table, str) or not _TABLE.match(table):
        raise SpecError(f"$.features.table: {table!r} is not project.dataset.table")
    types = {f.name: (f.type, f.mode) for f in fields}
    types.update({f["name"]: (f["type"], f["mode"]) for f in SILVER_METADATA_FIELDS})

    def column(name: Any, where: str) -> str:
        if not isinstance(name, str) or not _IDENT.match(name) or name not in types:
            raise SpecError(f"{where}: {name!r} is not a top-level field of the Silver table")
        if types[name][1] == "REPEATED" or types[name][0] == "RECORD":
            raise SpecError(f"{where}: {name!r} is REPEATED or a RECORD")
        return name

    keys = raw["entity_key"]
    if not isinstance(keys, list) or not keys:
        raise SpecError("$.features.entity_key: a non-empty list of fields")
    entity_key = tuple(column(k, f"$.features.entity_key[{i}]") for i, k in enumerate(keys))
    time_field = column(raw["time_field"], "$.features.time_field")
    if types[time_field][0] not in TIME_TYPES:
        raise SpecError(f"$.features.time_field: {time_field!r} is {types[time_field][0]}, not a TIMESTAMP/DATE/DATETIME")
    features = []
    if not isinstance(raw["features"], list) or not raw["features"]:
        raise SpecError("$.features.features: a non-empty list of metrics")
    for i, text in enumerate(raw["features"]):
        match = _METRIC.match(text) if isinstance(text, str) else None
        if match is None:
            raise SpecError(f"$.features.features[{i}]: {text!r} is not '<sum|avg|min|max|count>(<field>|*) as <name>'")
        fn, arg, alias = match.group(1).lower(), match.group(2), match.group(3)
        if arg == "*" and fn != "count":
            raise SpecError(f"$.features.features[{i}]: only count takes *")
        if arg != "*":
            column(arg, f"$.features.features[{i}]")
        features.append(Feature(fn, arg, alias))
    windows = raw["windows_seconds"]
    if (not isinstance(windows, list) or not windows
            or any(not isinstance(w, int) or isinstance(w, bool) or w <= 0 for w in windows)):
        raise SpecError("$.features.windows_seconds: a non-empty list of positive integers")
    return Features(table, entity_key, time_field, tuple(features), tuple(sorted(set(windows))))


def q(name: str) -> str:
    return f"`{name}`"


def compile_features_sql(silver_table: str, features: Features) -> str:
    """The SELECT that computes every feature row (see the module docstring)."""
    keys = features.entity_key
    args = {f.arg for f in features.features if f.arg != "*"}
    arg_alias = {arg: f"__a{i}" for i, arg in enumerate(sorted(args))}
    events_cols = [f"{q(k)} AS {q(k)}" for k in keys] + [f"TIMESTAMP({q(features.time_field)}) AS `__ts`"]
    events_cols += [f"{q(a)} AS {q(alias)}" for a, alias in arg_alias.items()]
    not_null = " AND ".join(f"{q(k)} IS NOT NULL" for k in (*keys, features.time_field))
    longest = max(features.windows_seconds)
    selects = [f"s.{q(k)}" for k in keys] + [f"s.{q(FEATURE_TIMESTAMP)}"]
    for feature in features.features:
        for window in features.windows_seconds:
            inside = f"e.`__ts` >= TIMESTAMP_SUB(s.{q(FEATURE_TIMESTAMP)}, INTERVAL {window} SECOND)"
            name = q(f"{feature.alias}_{window_label(window)}")
            if feature.fn == "count" and feature.arg == "*":
                expression = f"COUNTIF({inside})"
            elif feature.fn == "count":
                expression = f"COUNTIF({inside} AND e.{q(arg_alias[feature.arg])} IS NOT NULL)"
            else:
                expression = f"{feature.fn.upper()}(IF({inside}, e.{q(arg_alias[feature.arg])}, NULL))"
            selects.append(f"{expression} AS {name}")
    selects.append(f"MAX(e.`__ts`) AS {q(LAST_EVENT)}")
    on = " AND ".join([f"e.{q(k)} = s.{q(k)}" for k in keys]
                      + [f"e.`__ts` < s.{q(FEATURE_TIMESTAMP)}",
                         f"e.`__ts` >= TIMESTAMP_SUB(s.{q(FEATURE_TIMESTAMP)}, INTERVAL {longest} SECOND)"])
    key_list = ", ".join(q(k) for k in keys)
    return (
        "WITH `events` AS (\n"
        f"  SELECT {', '.join(events_cols)}\n  FROM `{silver_table}`\n  WHERE {not_null}\n"
        "),\n`snapshots` AS (\n"
        f"  SELECT DISTINCT {key_list}, TIMESTAMP_ADD(TIMESTAMP_TRUNC(`__ts`, DAY), INTERVAL 1 DAY) AS "
        f"{q(FEATURE_TIMESTAMP)}\n  FROM `events`\n"
        ")\n"
        f"SELECT\n  {(',' + chr(10) + '  ').join(selects)}\n"
        f"FROM `snapshots` AS s\nJOIN `events` AS e ON {on}\n"
        f"GROUP BY {', '.join(f's.{q(k)}' for k in keys)}, s.{q(FEATURE_TIMESTAMP)}"
    )
