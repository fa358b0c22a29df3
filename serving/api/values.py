"""Values of BigQuery types as they cross the API: parsed from query strings, encoded to JSON and
CSV, typed in Parquet (Arrow) and in the OpenAPI document. One table per direction, keyed by the
standard type name, so every format agrees with the others (docs/data-api-contract.md, "Value
encoding").
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from serving.api.spec import Field

UTC = dt.UTC
_INT = re.compile(r"^[+-]?[0-9]{1,19}$")
_DECIMAL = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$")
_FLOAT = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_DATETIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?$")
_TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
                        r"([Zz]|[+-][0-9]{2}:[0-9]{2})$")
_TIME = re.compile(r"^[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?$")
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
# NUMERIC: precision 38, scale 9; BIGNUMERIC: precision 76(.76), scale 38.
_DECIMAL_LIMITS = {"NUMERIC": (29, 9), "BIGNUMERIC": (38, 38)}


class BadValue(ValueError):
    """A value that does not parse as its type; the message is safe to show the client."""


# --------------------------------------------------------------------------- parsing (filters, ids)


def parse(kind: str, text: str) -> Any:
    """``text`` (a query-string value or an id component) as a value of BigQuery type ``kind``.
    Raises :class:`BadValue` with a message that says what was expected (never echoing long input)."""
    parser = _PARSERS.get(kind)
    if parser is None:
        raise BadValue(f"cannot be compared as {kind}")
    return parser(text)


def _parse_string(text: str) -> str:
    return text


def _parse_bool(text: str) -> bool:
    if text in ("true", "false"):
        return text == "true"
    raise BadValue("expected true or false")


def _parse_int(text: str) -> int:
    if not _INT.match(text):
        raise BadValue("expected an integer")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise BadValue("outside INT64's range")
    return value


def _parse_float(text: str) -> float:
    if not _FLOAT.match(text):
        raise BadValue("expected a number")
    value = float(text)
    if not math.isfinite(value):
        raise BadValue("outside FLOAT64's range")
    return value


def _decimal_parser(kind: str) -> Callable[[str], decimal.Decimal]:
    integer_digits, scale = _DECIMAL_LIMITS[kind]

    def parse_decimal(text: str) -> decimal.Decimal:
        if not _DECIMAL.match(text):
            raise BadValue("expected a decimal number, e.g. 12.50")
        value = decimal.Decimal(text)
        sign, digits, exponent = value.as_tuple()
        fraction = -exponent if isinstance(exponent, int) and exponent < 0 else 0
        if fraction > scale:
            raise BadValue(f"at most {scale} digits after the point ({kind})")
        if len(digits) - fraction > integer_digits:
            raise BadValue(f"outside {kind}'s range")
        return value

    return parse_decimal


def _parse_date(text: str) -> dt.date:
    if not _DATE.match(text):
        raise BadValue("expected a date, YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BadValue("not a valid date") from None


def _parse_datetime(text: str) -> dt.datetime:
    if _DATE.match(text):
        text += "T00:00:00"
    if not _DATETIME.match(text):
        raise BadValue("expected a civil date and time, YYYY-MM-DDTHH:MM[:SS[.ffffff]] (no offset)")
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadValue("not a valid date and time") from None


def _parse_timestamp(text: str) -> dt.datetime:
    if _DATE.match(text):  # a bare date: midnight UTC
        text += "T00:00:00Z"
    if not _TIMESTAMP.match(text):
        raise BadValue("expected an RFC 3339 timestamp with Z or an offset, e.g. 2024-05-01T12:00:00Z, "
                          "or a date (midnight UTC)")
    try:
        value = dt.datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise BadValue("not a valid timestamp") from None
    return value.astimezone(UTC)


def _parse_time(text: str) -> dt.time:
    if not _TIME.match(text):
        raise BadValue("expected a time, HH:MM[:SS[.ffffff]]")
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        raise BadValue("not a valid time") from None


def _parse_bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise BadValue("expected base64") from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "STRING": _parse_string, "BOOL": _parse_bool, "INT64": _parse_int, "FLOAT64": _parse_float,
    "NUMERIC": _decimal_parser("NUMERIC"), "BIGNUMERIC": _decimal_parser("BIGNUMERIC"), "DATE": _parse_date,
    "DATETIME": _parse_datetime, "TIMESTAMP": _parse_timestamp, "TIME": _parse_time, "BYTES": _parse_bytes,
}


# --------------------------------------------------------------------------- JSON


def encode(field: Field, value: Any) -> Any:
    """A value of ``field`` (as the BigQuery client returns it) as JSON-ready data."""
    if value is None:
        return None
    if field.repeated:
        scalar = Field(field.name, field.type, "NULLABLE", fields=field.fields)
        return [encode(scalar, item) for item in value]
    if field.type == "RECORD":
        return {child.name: encode(child, value.get(child.name)) for child in field.fields}
    return _encode_scalar(field.type, value)


def _encode_scalar(kind: str, value: Any) -> Any:
    if kind in ("NUMERIC", "BIGNUMERIC"):
        return decimal_text(decimal.Decimal(value))
    if kind == "FLOAT64":
        value = float(value)
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if kind == "INT64":
        return int(value)
    if kind == "TIMESTAMP":
        if isinstance(value, dt.datetime):
            moment = value if value.tzinfo else value.replace(tzinfo=UTC)
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return str(value)
    if kind == "DATETIME":
        return value.isoformat(timespec="microseconds") if isinstance(value, dt.datetime) else str(value)
    if kind in ("DATE", "TIME"):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    if kind == "BYTES":
        return base64.b64encode(value).decode("ascii") if isinstance(value, bytes | bytearray) else str(value)
    if kind == "BOOL":
        return bool(value)
    if kind == "JSON":
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value
    return value if isinstance(value, str) else str(value)


def decimal_text(value: decimal.Decimal) -> str:
    """An exact decimal without exponent or trailing zeros: ``4.450000000`` -> ``4.45``, ``1E+2`` -> ``100``."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


def encode_row(fields: tuple[Field, ...], row: Mapping[str, Any], masked: frozenset[str] = frozenset()) -> dict:
    return {f.name: (None if f.name in masked else encode(f, row.get(f.name))) for f in fields}


def decode(field: Field, value: Any) -> Any:
    """The inverse of :func:`encode` for orderable scalars (cursor positions)."""
    if value is None:
        return None
    kind = field.type
    if kind == "FLOAT64":
        return float({"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}.get(value, value))
    if kind in ("NUMERIC", "BIGNUMERIC"):
        return decimal.Decimal(value)
    if kind == "INT64":
        return int(value)
    if kind in ("STRING", "BOOL"):
        return value
    return parse(kind, value)


# --------------------------------------------------------------------------- CSV


def csv_cell(field: Field, value: Any) -> str:
    """A CSV cell: NULL empty; scalars as their JSON value's text (``true``, ``12.5``, an RFC 3339
    timestamp); RECORD and REPEATED values as JSON text."""
    encoded = encode(field, value)
    if encoded is None:
        return ""
    if field.repeated or field.type in ("RECORD", "JSON"):
        return json.dumps(encoded, separators=(",", ":"), sort_keys=False, ensure_ascii=False)
    if isinstance(encoded, bool):
        return "true" if encoded else "false"
    return str(encoded)


# --------------------------------------------------------------------------- Arrow / Parquet


def arrow_type(field: Field) -> pa.DataType:
    if field.type == "RECORD":
        kind: pa.DataType = pa.struct([arrow_field(child) for child in field.fields])
    else:
        kind = _ARROW[field.type]
    return pa.list_(kind) if field.repeated else kind


def arrow_field(field: Field) -> pa.Field:
    # Always nullable: a masked column is null whatever its mode.
    return pa.field(field.name, arrow_type(field), nullable=True)


def arrow_value(field: Field, value: Any) -> Any:
    """A value as pyarrow accepts it for :func:`arrow_type` (JSON as text, timestamps in UTC)."""
    if value is None:
        return None
    if field.repeated:
        scalar = Field(field.name, field.type, "NULLABLE", fields=field.fields)
        return [arrow_value(scalar, item) for item in value]
    if field.type == "RECORD":
        return {child.name: arrow_value(child, value.get(child.name)) for child in field.fields}
    if field.type == "JSON":
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if field.type == "TIMESTAMP" and isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if field.type in ("NUMERIC", "BIGNUMERIC"):
        return decimal.Decimal(value)
    if field.type == "GEOGRAPHY":
        return str(value)
    return value


_ARROW: dict[str, pa.DataType] = {
    "STRING": pa.string(), "BYTES": pa.binary(), "INT64": pa.int64(), "FLOAT64": pa.float64(),
    "NUMERIC": pa.decimal128(38, 9), "BIGNUMERIC": pa.decimal256(76, 38), "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"), "DATE": pa.date32(), "TIME": pa.time64("us"),
    "DATETIME": pa.timestamp("us"), "GEOGRAPHY": pa.string(), "JSON": pa.string(),
}


# --------------------------------------------------------------------------- OpenAPI (JSON Schema)


def json_schema(field: Field) -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3.1) of a field's JSON encoding."""
    if field.repeated:
        scalar = Field(field.name, field.type, "REQUIRED", fields=field.fields)
        schema: dict[str, Any] = {"type": "array", "items": json_schema(scalar)}
    elif field.type == "RECORD":
        schema = {"type": "object", "properties": {c.name: json_schema(c) for c in field.fields},
                  "additionalProperties": False}
    else:
        schema = dict(_SCHEMA[field.type])
    if field.mode == "NULLABLE" and "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        schema["type"] = [*types, "null"]
    if field.description:
        schema["description"] = field.description
    return schema


def parameter_schema(kind: str) -> dict[str, Any]:
    """The schema of a filter value of type ``kind`` as it is written in the query string."""
    schema = dict(_SCHEMA[kind])
    if kind == "FLOAT64":
        schema = {"type": "number"}
    if kind == "TIMESTAMP":
        schema["description"] = "RFC 3339 with Z or an offset, or a date (midnight UTC)"
    return schema


_SCHEMA: dict[str, dict[str, Any]] = {
    "STRING": {"type": "string"},
    "BYTES": {"type": "string", "contentEncoding": "base64"},
    "INT64": {"type": "integer", "format": "int64"},
    "FLOAT64": {"type": ["number", "string"], "format": "double",
                "description": "non-finite values as \"NaN\", \"Infinity\", \"-Infinity\""},
    "NUMERIC": {"type": "string", "format": "decimal", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?$"},
    "BIGNUMERIC": {"type": "string", "format": "decimal"},
    "BOOL": {"type": "boolean"},
    "TIMESTAMP": {"type": "string", "format": "date-time"},
    "DATE": {"type": "string", "format": "date"},
    "TIME": {"type": "string", "format": "time"},
    "DATETIME": {"type": "string", "description": "civil date and time, ISO 8601 without offset"},
    "GEOGRAPHY": {"type": "string", "description": "WKT"},
    "JSON": {},
}
