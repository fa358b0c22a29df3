"""Schema validation: turn one decoded record into a BigQuery-ready row, or say why not.

A schema (the spec's ``fields``) is compiled once into a :class:`RecordValidator`, a tree of
small per-field converter functions, and then into one generated straight-line function per
object (the fields' checks one after the other, the commonest types inline), so that validating
a record is a single call rather than a walk over the schema. Each converter returns the
canonical value for the field or raises :class:`Invalid` with a stable *reason* code; the first
failure decides the record's reason, so every rejected record has exactly one reason and counts
once.

Reason codes (also the ``invalid_<reason>`` counter names and the dead letters' ``reason``):

* ``unparseable`` - the payload is not UTF-8 JSON (or the CSV row has the wrong column count)
* ``not_an_object`` - the JSON value is not an object
* ``missing_required`` - a REQUIRED field is absent or null
* ``wrong_type`` - a value does not fit its field's type
* ``unknown_field`` - strict validation only: the record has a field the schema does not
* ``dq_<check>`` - a data-quality rule failed (see ``quality.py``)

What a type accepts: exactly what BigQuery's own JSON loading accepts, so that a file that
``bq load`` would take is taken here, and CSV (where every value is text) works unchanged:

* STRING, GEOGRAPHY: strings.  BYTES: base64 strings (or raw bytes from Parquet).
* INT64: integers, integral floats, or decimal-integer strings; within 64 bits.
* FLOAT64: numbers or numeric strings.  NUMERIC/BIGNUMERIC: the same, kept as decimal text.
* BOOL: true/false, or the strings "true"/"false" (any case).
* TIMESTAMP: ISO 8601 strings (a missing offset means UTC) or epoch seconds; normalised to
  ISO 8601 in UTC so that equal instants written differently dedup to the same key.
* DATE, DATETIME, TIME: ISO 8601 strings (or the matching Python objects from Parquet).
* JSON: any JSON value, serialised to text as BigQuery's streaming API wants.
* RECORD: an object, validated recursively with the same strict/lenient rule.
* mode REPEATED: a list (null means empty); every item must fit and none may be null.
* mode REQUIRED: the field must be present and not null. NULLABLE fields may be absent.

Strict vs lenient differs only in fields the schema does not name: *strict* rejects the record
(``unknown_field``); *lenient* drops the unknown fields from the Silver row and keeps the record
(the raw payload, unknown fields included, is still in Bronze). Lenient does not loosen typing:
a value that does not fit its declared type would be rejected by BigQuery anyway.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from beam.common.spec import Field

UNPARSEABLE = "unparseable"
NOT_AN_OBJECT = "not_an_object"
MISSING_REQUIRED = "missing_required"
WRONG_TYPE = "wrong_type"
UNKNOWN_FIELD = "unknown_field"
SCHEMA_REASONS = (UNPARSEABLE, NOT_AN_OBJECT, MISSING_REQUIRED, WRONG_TYPE, UNKNOWN_FIELD)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UTC = dt.UTC


class Invalid(Exception):  # noqa: N818 - it is a verdict, not an error of the program
    """A record failed validation. ``reason`` is a stable code; ``detail`` is for humans."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def show(value: Any, limit: int = 60) -> str:
    """A short rendering of a value for a dead letter's detail (payloads can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json(payload: bytes) -> Any:
    """Decode one JSON payload, raising ``Invalid(unparseable)`` instead of a library error."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise Invalid(UNPARSEABLE, f"not valid JSON: {e}") from None


# --------------------------------------------------------------------------- scalar converters
# Each takes a non-null value and returns the canonical value, or raises Invalid. ``where`` is
# the field path, bound when the schema is compiled, so error details name the field.

Converter = Callable[[Any], Any]


def _wrong(where: str, expected: str, value: Any) -> Invalid:
    return Invalid(WRONG_TYPE, f"field {where!r}: expected {expected}, got {type(value).__name__} {show(value)}")


def _string(where: str) -> Converter:
    def conv(v: Any) -> Any:
        if type(v) is str:
            return v
        raise _wrong(where, "STRING", v)
    return conv


def _int64(where: str) -> Converter:
    def conv(v: Any) -> Any:
        t = type(v)
        if t is int:
            n = v
        elif t is float and v.is_integer():
            n = int(v)
        elif t is str:
            try:
                n = int(v.strip(), 10)
            except ValueError:
                raise _wrong(where, "INT64", v) from None
        else:  # bool is an int subclass, but true is not a number
            raise _wrong(where, "INT64", v)
        if _INT64_MIN <= n <= _INT64_MAX:
            return n
        raise _wrong(where, "INT64 (64-bit)", v)
    return conv


def _float64(where: str) -> Converter:
    def conv(v: Any) -> Any:
        t = type(v)
        if t is float:
            return v
        if t is int:
            return float(v)
        if t is str:
            try:
                return float(v)
            except ValueError:
                raise _wrong(where, "FLOAT64", v) from None
        if isinstance(v, Decimal):
            return float(v)
        raise _wrong(where, "FLOAT64", v)
    return conv


def _numeric(where: str, name: str) -> Converter:
    def conv(v: Any) -> Any:
        t = type(v)
        if t is bool or not (t in (int, float, str) or isinstance(v, Decimal)):
            raise _wrong(where, name, v)
        try:
            d = Decimal(v) if t is not float else Decimal(repr(v))  # repr: no binary expansion
        except InvalidOperation:
            raise _wrong(where, name, v) from None
        if not d.is_finite():
            raise _wrong(where, name, v)
        return str(d)  # text keeps the precision through JSON
    return conv


def _bool(where: str) -> Converter:
    def conv(v: Any) -> Any:
        if type(v) is bool:
            return v
        if type(v) is str:
            low = v.strip().lower()
            if low == "true":
                return True
            if low == "false":
                return False
        raise _wrong(where, "BOOL", v)
    return conv


def _timestamp(where: str) -> Converter:
    def conv(v: Any) -> Any:
        t = type(v)
        try:
            if t is str:
                ts = dt.datetime.fromisoformat(v)
                # Fast path for whole-second UTC stamps, the common case: their canonical form
                # can be spelled without isoformat(), which costs more than the parse.
                # fromisoformat above has already checked the digits make a real instant.
                if len(v) == 20 and v[19] == "Z" and v[10] == "T":
                    return v[:19] + "+00:00"
                if len(v) == 25 and v[10] == "T" and v.endswith("+00:00"):
                    return v
            elif t is dt.datetime:
                ts = v
            elif (t is int or t is float) and math.isfinite(v):
                return dt.datetime.fromtimestamp(v, _UTC).isoformat()
            else:
                raise _wrong(where, "TIMESTAMP", v)
        except (ValueError, OverflowError, OSError):
            raise _wrong(where, "TIMESTAMP", v) from None
        if ts.tzinfo is None:  # BigQuery reads an offset-less timestamp as UTC
            return ts.isoformat() + "+00:00"
        return ts.astimezone(_UTC).isoformat()
    return conv


def _iso(where: str, name: str, cls: type) -> Converter:
    def conv(v: Any) -> Any:
        if type(v) is str:
            try:
                return cls.fromisoformat(v).isoformat()  # type: ignore[attr-defined]
            except ValueError:
                pass
        elif type(v) is cls:
            return v.isoformat()
        raise _wrong(where, name, v)
    return conv


def _bytes(where: str) -> Converter:
    def conv(v: Any) -> Any:
        if type(v) is bytes:
            return base64.b64encode(v).decode("ascii")
        if type(v) is str:
            try:
                base64.b64decode(v, validate=True)
                return v
            except (binascii.Error, ValueError):
                pass
        raise _wrong(where, "BYTES (base64)", v)
    return conv


def _json(where: str) -> Converter:
    def conv(v: Any) -> Any:
        try:
            return orjson.dumps(v).decode()
        except TypeError:
            raise _wrong(where, "JSON", v) from None
    return conv


def _scalar(f: Field, where: str) -> Converter:
    t = f.type
    if t in ("STRING", "GEOGRAPHY"):
        return _string(where)
    if t == "INT64":
        return _int64(where)
    if t == "FLOAT64":
        return _float64(where)
    if t in ("NUMERIC", "BIGNUMERIC"):
        return _numeric(where, t)
    if t == "BOOL":
        return _bool(where)
    if t == "TIMESTAMP":
        return _timestamp(where)
    if t == "DATE":
        return _iso(where, t, dt.date)
    if t == "DATETIME":
        return _iso(where, t, dt.datetime)
    if t == "TIME":
        return _iso(where, t, dt.time)
    if t == "BYTES":
        return _bytes(where)
    if t == "JSON":
        return _json(where)
    raise AssertionError(f"unhandled type {t}")  # spec parsing admits only the types above


def _repeated(item: Converter, where: str) -> Converter:
    def conv(v: Any) -> Any:
        if type(v) is not list:
            raise _wrong(where, "a list (REPEATED)", v)
        out = []
        for i, x in enumerate(v):
            if x is None:
                raise Invalid(WRONG_TYPE, f"field {where}[{i}]: null inside a REPEATED field")
            out.append(item(x))
        return out
    return conv


# --------------------------------------------------------------------------- records


class RecordValidator:
    """Validates decoded records against a schema; reusable, picklable, not thread-safe.

    ``__call__`` returns a new dict holding only schema fields with canonical values (absent
    NULLABLE fields stay absent: BigQuery fills NULL). ``dropped_unknown`` counts the objects
    (records, and nested RECORD values) from which lenient validation removed fields, for the
    ``unknown_fields_dropped`` counter.
    """

    def __init__(self, fields: tuple[Field, ...], validation: str, prefix: str = "",
                 root: RecordValidator | None = None) -> None:
        self._args = (fields, validation)
        self.strict = validation == "strict"
        self.prefix = prefix
        self.dropped_unknown = 0
        self._root = root or self  # nested RECORD validators count their drops on the root
        self._known = frozenset(f.name for f in fields)
        self._plan: list[tuple[str, Converter | None, bool, bool]] = []
        for f in fields:
            where = prefix + f.name
            conv: Converter
            if f.type == "RECORD":
                nested = RecordValidator(f.fields, validation, where + ".", self._root)
                conv = nested._as_converter(where)
            else:
                conv = _scalar(f, where)
            if f.mode == "REPEATED":
                conv = _repeated(conv, where)
            elif f.type == "STRING":
                conv = None  # type: ignore[assignment]  # the commonest type: checked inline below
            self._plan.append((f.name, conv, f.mode == "REQUIRED", f.mode == "REPEATED"))
        self._types = [f.type if f.mode != "REPEATED" else "" for f in fields]
        self._validate = self._straight_line()

    def __reduce__(self) -> Any:  # the generated function does not pickle; the schema does
        if self._root is not self:
            raise TypeError("a nested RecordValidator is pickled with its root")
        return (RecordValidator, self._args)

    def _as_converter(self, where: str) -> Converter:
        def conv(v: Any) -> Any:
            if type(v) is not dict:
                raise _wrong(where, "an object (RECORD)", v)
            return self._validate(v)
        return conv

    def __call__(self, obj: Any) -> dict[str, Any]:
        return self._validate(obj)

    def _straight_line(self) -> Callable[[Any], dict[str, Any]]:
        """The plan as one straight-line function: per field, the same steps as a loop over
        ``_plan`` would take, without the loop, the tuple unpacking and (for the commonest
        types: STRING, FLOAT64 floats, INT64 ints within 64 bits) the converter call. Field
        names appear in the code only as ``repr()`` literals; every other value is bound."""
        body, ns = self.source()
        source = "def validate(obj):\n" + "\n".join(body + ["    return out"]) + "\n"
        exec(compile(source, "<schema validation>", "exec"), ns)  # noqa: S102 - see above
        return ns["validate"]

    def source(self) -> tuple[list[str], dict[str, Any]]:
        """The body of the validating function (indented for a ``def``), and the names it uses.

        It reads the decoded record ``obj`` and leaves the validated row in ``out``, and each
        top-level field's canonical value (None when null or absent) in the local ``v<i>``,
        ``i`` being the field's index: `beam.common.checker` builds on those locals.
        """
        ns: dict[str, Any] = {"Invalid": Invalid, "MISSING_REQUIRED": MISSING_REQUIRED, "_wrong": _wrong,
                              "show": show, "NOT_AN_OBJECT": NOT_AN_OBJECT, "known": self._known,
                              "unknown": self._unknown, "MIN": _INT64_MIN, "MAX": _INT64_MAX}
        body = [
            "    if type(obj) is not dict:",
            "        raise Invalid(NOT_AN_OBJECT, f'expected a JSON object, got {type(obj).__name__} {show(obj)}')",
            "    out = {}",
            "    get = obj.get",
        ]
        for i, ((name, conv, required, repeated), t) in enumerate(zip(self._plan, self._types, strict=True)):
            n, v = repr(name), f"v{i}"
            ns[f"conv{i}"] = conv
            ns[f"where{i}"] = self.prefix + name
            ns[f"required{i}"] = f"field {self.prefix + name!r} is required"
            body.append(f"    {v} = get({n})")
            body.append(f"    if {v} is None:")
            if required:
                body.append(f"        raise Invalid(MISSING_REQUIRED, required{i})")
            elif repeated:
                body.append(f"        if {n} in obj:")
                body.append(f"            out[{n}] = []  # BigQuery stores a null REPEATED field as an empty list")
            else:
                body.append("        pass")
            if conv is None:  # STRING
                body.append(f"    elif type({v}) is str:")
                body.append(f"        out[{n}] = {v}")
                body.append("    else:")
                body.append(f"        raise _wrong(where{i}, 'STRING', {v})")
                continue
            if t == "FLOAT64":
                body.append(f"    elif type({v}) is float:")
                body.append(f"        out[{n}] = {v}")
            elif t == "INT64":
                body.append(f"    elif type({v}) is int and MIN <= {v} <= MAX:")
                body.append(f"        out[{n}] = {v}")
            body.append("    else:")
            body.append(f"        out[{n}] = {v} = conv{i}({v})")
        body.append("    if len(obj) != len(out) and not (obj.keys() <= known):")
        body.append("        unknown(obj)")
        return body, ns

    def _unknown(self, obj: dict[str, Any]) -> None:
        unknown = sorted(k for k in obj if k not in self._known)
        if self.strict:
            raise Invalid(UNKNOWN_FIELD, f"field(s) not in the schema: {', '.join(self.prefix + k for k in unknown)}")
        self._root.dropped_unknown += 1
