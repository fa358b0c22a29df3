"""BigQuery schema evolution: which schema changes a table can take in place.

BigQuery lets a table gain NULLABLE (or REPEATED) columns, relax REQUIRED to NULLABLE and change
descriptions without touching data. Anything else — dropping a column, changing its type,
adding a REQUIRED column, tightening NULLABLE to REQUIRED — either fails or rewrites the table.
Columns are matched by name (case-insensitive, as BigQuery does), so column order never shows as
a change: BigQuery appends new columns at the end whatever order the schema file uses.

What happens to an incompatible change depends on the source's ``schema.evolution``:

* ``backward_compatible`` (default): compatible changes apply; incompatible ones are blocked.
* ``none``: every schema change is blocked.
* ``recreate``: incompatible changes replace the table (still behind ``--allow-destroy``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ADDED, REMOVED, TYPE, MODE, DESCRIPTION = "added", "removed", "type changed", "mode changed", "description changed"


@dataclass(frozen=True)
class SchemaChange:
    path: str  # dotted column path, e.g. "customer.email"
    change: str
    before: Any
    after: Any
    compatible: bool
    explanation: str


def compare(live: list[dict[str, Any]], desired: list[dict[str, Any]], prefix: str = "") -> list[SchemaChange]:
    """The column-level changes that turn the ``live`` schema into the ``desired`` one."""
    changes: list[SchemaChange] = []
    live_by_name = {column["name"].lower(): column for column in live or []}
    desired_names = set()
    for column in desired:
        key = column["name"].lower()
        desired_names.add(key)
        path = prefix + column["name"]
        old = live_by_name.get(key)
        if old is None:
            mode = column.get("mode", "NULLABLE")
            ok = mode != "REQUIRED"
            changes.append(SchemaChange(path, ADDED, None, _brief(column), ok,
                                        f"adds {mode} column {path}" if ok else
                                        f"adds REQUIRED column {path}: existing rows have no value for it; "
                                        "add it as NULLABLE instead"))
            continue
        if old["type"] != column["type"]:
            changes.append(SchemaChange(path, TYPE, old["type"], column["type"], False,
                                        f"changes the type of {path} from {old['type']} to {column['type']}: "
                                        "BigQuery cannot convert existing data in place"))
            continue
        old_mode, new_mode = old.get("mode", "NULLABLE"), column.get("mode", "NULLABLE")
        if old_mode != new_mode:
            ok = old_mode == "REQUIRED" and new_mode == "NULLABLE"
            changes.append(SchemaChange(path, MODE, old_mode, new_mode, ok,
                                        f"relaxes {path} from REQUIRED to NULLABLE" if ok else
                                        f"changes the mode of {path} from {old_mode} to {new_mode}: "
                                        "only REQUIRED → NULLABLE is possible in place"))
        if (old.get("description") or "") != (column.get("description") or ""):
            changes.append(SchemaChange(path, DESCRIPTION, old.get("description"), column.get("description"),
                                        True, f"updates the description of {path}"))
        if column["type"] == "RECORD":
            changes.extend(compare(old.get("fields") or [], column.get("fields") or [], prefix=path + "."))
    for key, old in live_by_name.items():
        if key not in desired_names:
            path = prefix + old["name"]
            changes.append(SchemaChange(path, REMOVED, _brief(old), None, False,
                                        f"removes column {path}: BigQuery keeps its data; dropping it loses data"))
    return changes


def _brief(column: dict[str, Any]) -> str:
    return f"{column['type']}, {column.get('mode', 'NULLABLE')}"
