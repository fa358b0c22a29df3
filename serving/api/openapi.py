"""The OpenAPI 3.1 document, generated from the spec: one pair of paths per source, whose query
parameters (the filters) and response schema come from the source's fields.

FastAPI generates the document of its static routes (token endpoint, health); the per-source
routes are added here, with the ``oauth2`` client-credentials security scheme (each operation
requires its source's ``read`` scope), so ``/docs`` (Swagger UI) can fetch a token and try every
source.
"""

from __future__ import annotations

from typing import Any

from serving.api import values
from serving.api.formats import MEDIA_TYPES
from serving.api.query import OPERATORS
from serving.api.spec import RANGE_TYPES, RESERVED_PARAMETERS, ApiSpec, Source

TOKEN_PATH = "/oauth/token"
API_PREFIX = "/api/v1"
SECURITY_SCHEME = "oauth2"

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "RFC 6749 §5.2 / RFC 6750 §3.1 code, or invalid_request, "
                                                   "not_found, rate_limited, unavailable"},
        "error_description": {"type": "string"},
        "field": {"type": "string", "description": "the query parameter or key column at fault (400)"},
    },
    "required": ["error"],
}


def _schema_name(source: Source) -> str:
    return "".join(part.capitalize() for part in source.name.split("_")) + "Row"


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad filter, limit, cursor or format (`field` names it)",
            401: "No token, or an invalid/expired one (WWW-Authenticate: Bearer ...)",
            403: "The token lacks the scope (insufficient_scope)", 404: "No such row",
            429: "Rate limit exceeded (Retry-After)", 503: "BigQuery is unavailable or the query too expensive",
            504: "The query timed out"}
    return {str(code): {"description": text[code], "content": {"application/json": {"schema": _ERROR}}}
            for code in codes}


def _filter_parameters(source: Source) -> list[dict[str, Any]]:
    parameters = []
    for item in source.fields:
        if item.name not in source.filterable:
            continue
        pii = " Personal data: needs the source's pii scope." if item.name in source.pii else ""
        if item.name not in RESERVED_PARAMETERS:
            parameters.append({"name": item.name, "in": "query", "required": False,
                               "description": f"{item.name} equals ({item.type}).{pii}",
                               "schema": values.parameter_schema(item.type)})
        if item.type in RANGE_TYPES:
            for op in ("gt", "gte", "lt", "lte"):
                parameters.append({"name": f"{item.name}.{op}", "in": "query", "required": False,
                                   "description": f"{item.name} {OPERATORS[op]} value ({item.type}).{pii}",
                                   "schema": values.parameter_schema(item.type)})
    return parameters


def _format_parameter() -> dict[str, Any]:
    return {"name": "format", "in": "query", "required": False,
            "schema": {"type": "string", "enum": ["json", "csv", "parquet"], "default": "json"}}


def _binary_content() -> dict[str, Any]:
    return {MEDIA_TYPES["csv"]: {"schema": {"type": "string"}},
            MEDIA_TYPES["parquet"]: {"schema": {"type": "string", "contentMediaType": MEDIA_TYPES["parquet"]}}}


def _page_headers() -> dict[str, Any]:
    return {
        "X-Has-More": {"schema": {"type": "string", "enum": ["true", "false"]},
                       "description": "whether rows follow this page"},
        "X-Next-Cursor": {"schema": {"type": "string"}, "description": "the cursor of the next page, when any"},
        "Link": {"schema": {"type": "string"}, "description": "RFC 8288 rel=\"next\", when there is a next page"},
        "X-Masked-Fields": {"schema": {"type": "string"}, "description": "comma-separated masked columns"},
        "RateLimit-Remaining": {"schema": {"type": "integer"}},
    }


def source_paths(spec: ApiSpec, source: Source) -> dict[str, Any]:
    row = {"$ref": f"#/components/schemas/{_schema_name(source)}"}
    security = [{SECURITY_SCHEME: [source.scopes.read]}]
    key_text = ", ".join(f"`{k}`" for k in source.key)
    order_text = ", ".join(f"`{c}`" for c in source.order)
    masked_text = (f" Columns {', '.join(f'`{p}`' for p in sorted(source.pii))} are personal data: null unless "
                   f"the token has `{source.scopes.pii}`." if source.pii else "")
    listing = {
        "operationId": f"list_{source.name}",
        "summary": f"Rows of {source.name}",
        "description": (source.description or "") + f"\n\nPages in the order {order_text} (NULLs first), at most "
                       f"`limit` rows; `next_cursor` continues. Needs `{source.scopes.read}`." + masked_text,
        "tags": [source.name],
        "security": security,
        "parameters": [
            *_filter_parameters(source),
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": spec.page.max_limit,
                        "default": spec.page.default_limit}},
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "next_cursor of the previous page (with the same filters)"},
            _format_parameter(),
        ],
        "responses": {
            "200": {"description": "A page", "headers": _page_headers(), "content": {
                "application/json": {"schema": {
                    "type": "object",
                    "properties": {"data": {"type": "array", "items": row},
                                   "next_cursor": {"type": ["string", "null"]}, "has_more": {"type": "boolean"},
                                   "count": {"type": "integer"}, "limit": {"type": "integer"},
                                   "masked_fields": {"type": "array", "items": {"type": "string"}}},
                    "required": ["data", "next_cursor", "has_more", "count", "limit", "masked_fields"]}},
                **_binary_content()}},
            **_errors(400, 401, 403, 429, 503, 504),
        },
    }
    one = {
        "operationId": f"get_{source.name}",
        "summary": f"One row of {source.name} by its key",
        "description": f"`id` is the key {key_text}: the values in that order separated by `,`, each "
                       f"percent-encoded (a `,` in a value as `%2C`). Needs `{source.scopes.read}`." + masked_text,
        "tags": [source.name],
        "security": security,
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                       _format_parameter()],
        "responses": {
            "200": {"description": "The row", "content": {
                "application/json": {"schema": {
                    "type": "object", "properties": {"data": row, "masked_fields": {
                        "type": "array", "items": {"type": "string"}}}, "required": ["data", "masked_fields"]}},
                **_binary_content()}},
            **_errors(400, 401, 403, 404, 429, 503, 504),
        },
    }
    return {f"{API_PREFIX}/{source.name}": {"get": listing}, f"{API_PREFIX}/{source.name}/{{id}}": {"get": one}}


def extend(document: dict[str, Any], spec: ApiSpec) -> dict[str, Any]:
    """FastAPI's document of the static routes, plus the sources, their schemas and security."""
    paths = document.setdefault("paths", {})
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = _ERROR_SCHEMA
    for source in spec.sources:
        paths.update(source_paths(spec, source))
        schemas[_schema_name(source)] = {
            "type": "object",
            "properties": {f.name: values.json_schema(f) for f in source.fields},
            "description": source.description or f"A row of {source.view}",
        }
    scopes: dict[str, str] = {}
    for source in spec.sources:
        scopes[source.scopes.read] = f"read {source.name}"
        scopes[source.scopes.pii] = f"see and filter on the personal data columns of {source.name}"
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "oauth2",
        "description": "OAuth 2.0 client credentials: POST /oauth/token with your client id and secret",
        "flows": {"clientCredentials": {"tokenUrl": TOKEN_PATH, "scopes": scopes}},
    }
    document.setdefault("tags", []).extend({"name": s.name, "description": s.description or s.view}
                                           for s in spec.sources)
    return document
