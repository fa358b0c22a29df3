"""What a spec value means, for comparison: orders that carry no meaning taken out.

A plan compares what the desired state *means*, not how its documents happen to be written
(peers' plans that diff documents as text replan a streaming job when a schema file's fields
are reordered). `meaning(kind, key, value)` is the canonical form of one spec value; compile
emits it (so that a Dataflow job's fingerprint does not depend on the order either) and the
planner compares both sides through it (so that a job launched from an older, differently
ordered document is not replanned).

What carries no meaning, and is therefore put in a canonical order:

* a pipeline spec's schema fields, at every level (nested RECORD fields too): the pipelines
  read, validate and write fields by name (``beam/common/validation.py``; Silver and Bronze rows
  are written by column name), and BigQuery matches columns by name (`reconciler.schema_evolution`);
* the ``values`` of an ``allowed_values`` quality rule: a set (``beam/common/quality.py``).

What does carry meaning, and is kept as written: the order of the quality rules (the first
failing rule is a record's reason), of a deduplication key (its tuple is the state's key), of
clustering fields (BigQuery clusters in that order), and of a gold aggregate's columns.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from reconciler.resources import Kind


def meaning(kind: Kind | str, key: str, value: Any) -> Any:
    """The canonical form of spec value ``key`` of a ``kind`` resource (the value itself when its
    form is already canonical)."""
    if kind == Kind.DATAFLOW_JOB and key == "pipeline" and isinstance(value, dict):
        return canonical_pipeline(value)
    return value


def canonical_pipeline(document: dict[str, Any]) -> dict[str, Any]:
    """A pipeline spec document (``beam/common/spec.py``) with its order-free lists sorted."""
    result = _copied(document)
    schema = result.get("schema")
    if isinstance(schema, dict) and isinstance(schema.get("fields"), list):
        schema["fields"] = canonical_fields(schema["fields"])
    for rule in result.get("data_quality") or []:
        if isinstance(rule, dict) and rule.get("check") == "allowed_values" and isinstance(rule.get("values"), list):
            rule["values"] = sorted(rule["values"], key=_value_order)
    return result


def _copied(value: Any) -> Any:
    """A deep copy of a JSON-like document (dicts, lists, scalars), as `copy.deepcopy` makes it but
    without its per-object bookkeeping (a spec is compared for every Dataflow job of every plan).
    Anything else is handed to `copy.deepcopy`."""
    kind = type(value)
    if kind is dict:
        return {key: _copied(item) for key, item in value.items()}
    if kind is list:
        return [_copied(item) for item in value]
    if kind in _SCALARS:
        return value
    return copy.deepcopy(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def canonical_fields(fields: list[Any]) -> list[Any]:
    """Schema fields sorted by name (case-insensitively, as BigQuery matches them), nested too."""
    result = []
    for item in fields:
        if isinstance(item, dict) and isinstance(item.get("fields"), list):
            item = {**item, "fields": canonical_fields(item["fields"])}
        result.append(item)
    return sorted(result, key=lambda f: (str(f.get("name", "")).lower(), str(f.get("name", "")))
                  if isinstance(f, dict) else ("", ""))


def _value_order(value: Any) -> tuple[str, str]:
    return type(value).__name__, json.dumps(value, sort_keys=True, default=str)
