"""Parsing a JSON body strictly, finding its records, and ordering incremental cursor values.

Both connector types parse bodies with :func:`parse_json` (RFC 8259, nothing more) and name the
records of a body with a dotted path (``records``): ``data``, ``result.items``; a numeric segment
indexes a list (``pages.0.items``). ``None`` means the body itself is the list.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_MISSING = object()
# A \uD800-\uDFFF escape: once the bytes are decoded strictly, the only way to a str that
# cannot be UTF-8 (an unpaired surrogate).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class NotJson(ValueError):
    """The body is not JSON (RFC 8259); the message says why, never quoting the body."""


def _refuse_constant(constant: str) -> Any:
    raise NotJson(f"{constant} is not JSON (RFC 8259)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson("a number out of range of a double (it would be published as Infinity)")
    return value


def parse_json(body: bytes) -> Any:
    """``body`` parsed as JSON exactly as RFC 8259 has it: :class:`NotJson` (a ValueError) for
    anything else.

    Python's json module is lenient in ways that make the connector publish what is not JSON:
    it takes ``NaN``, ``Infinity`` and ``-Infinity`` (and writes them back out), turns a number
    beyond a double (``1e400``) into infinity (written back as ``Infinity``), and takes unpaired
    UTF-16 surrogates - escaped (``"\\ud800"``) or encoded in the bytes, which it decodes with
    ``surrogatepass`` - into strings that cannot be encoded as UTF-8. The pipeline reads each of
    those as unparseable; here they are refused as the body is read (the webhook answers 400, the
    poller dead-letters the page ``unparseable``). The encodings json.loads detects (UTF-8, with
    or without a byte order mark; UTF-16 and -32) are kept, decoded strictly.
    """
    try:
        text = body.decode(json.detect_encoding(body))  # strict: no encoded surrogates, no bad bytes
    except UnicodeDecodeError:
        raise NotJson("not UTF-8 text") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except NotJson:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too deep, an int of too many digits
        raise NotJson("not JSON") from exc
    # Rare (surrogate escapes are mostly pairs: emoji written ASCII-only), so checked only then.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise NotJson("a string with an unpaired UTF-16 surrogate is not JSON text (RFC 8259 8.2)") from None
    return value


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
