"""Finding records in a JSON body, and ordering incremental cursor values.

Both connector types name the records of a body with a dotted path (``records``): ``data``,
``result.items``; a numeric segment indexes a list (``pages.0.items``). ``None`` means the body
itself is the list.
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


def dig(value: Any, path: str) -> Any:
    """The value at dotted ``path`` in ``value``, or None when any step is missing."""
    for step in path.split("."):
        if isinstance(value, dict):
            value = value.get(step, _MISSING)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return None
        if value is _MISSING:
            return None
    return value


def select_records(body: Any, path: str | None) -> list[Any] | None:
    """The list of records at ``path`` (the body itself when None); None when it is no list."""
    found = body if path is None else dig(body, path)
    return found if isinstance(found, list) else None


def greater(current: Any, candidate: Any) -> Any:
    """The greater of two cursor values, None-aware: numbers compare numerically, anything
    else by its string form (ISO 8601 timestamps in one format, zero-padded ids). Values of
    different kinds compare as strings."""
    if candidate is None or isinstance(candidate, dict | list):
        return current
    if current is None:
        return candidate
    if _is_number(current) and _is_number(candidate):
        return candidate if candidate > current else current
    return candidate if str(candidate) > str(current) else current


def cursor_text(value: Any) -> str:
    """A cursor value as a query parameter: strings as they are, numbers in JSON form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
