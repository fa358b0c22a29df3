"""The data API: FastAPI routes over the spec's sources (docs/data-api-contract.md, "What it serves").

``create_app(spec, secrets)`` builds the application: the token endpoint, one list route and one
lookup route per source (registered from the spec, so the OpenAPI document has each source's own
parameters and schema), ``/healthz``, ``/openapi.json`` and the docs pages. A resource request
goes: bearer token (401) -> the client's rate limit (429) -> the source's read scope (403) ->
the parameters, checked against the source's fields (400 naming the parameter; 403 for a filter
on a PII field without the pii scope) -> one parameterized BigQuery query on the source's view ->
the answer in the asked format. Every request, answered however, leaves one usage log line.

BigQuery calls block, so the resource handlers are plain functions: FastAPI runs them on its
thread pool. The rate limiter and the BigQuery client are shared by those threads (both are
thread-safe).
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from serving.api import formats, openapi, values
from serving.api.auth import AuthError, Authority, Grant
from serving.api.cursor import CursorError, CursorSealer, Position, filters_fingerprint
from serving.api.query import BigQueryReader, Filter, QueryFailed, QueryOptions, page_query, row_query
from serving.api.ratelimit import ClientLimiter
from serving.api.spec import RANGE_TYPES, ApiSpec, Secrets, Source

log = logging.getLogger("serving.api")
usage_log = logging.getLogger("serving.api.usage")

REALM = "headwater-data-api"
MAX_TOKEN_BODY_BYTES = 8192
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")


class ApiError(Exception):
    """An answer other than 2xx: ``{"error", "error_description", "field"?}`` with ``status``."""

    def __init__(self, status: int, error: str, description: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status, self.error, self.description, self.field = status, error, description, field
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error, "error_description": self.description}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def bearer_error(exc: AuthError) -> ApiError:
    """RFC 6750 §3: the WWW-Authenticate challenge, with the error code when one applies (none
    when the request carried no credentials at all, §3.1)."""
    challenge = f'Bearer realm="{REALM}"'
    if exc.error:
        challenge += f', error="{exc.error}", error_description="{_quoted(exc.description)}"'
    if exc.scope:
        challenge += f', scope="{_quoted(exc.scope)}"'
    return ApiError(exc.status, exc.error or "unauthorized", exc.description, headers={"WWW-Authenticate": challenge})


def label_value(text: str) -> str:
    """A BigQuery label value: lowercase letters, digits, ``_`` and ``-``, at most 63 characters."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_-") else "_" for ch in text.lower())[:63]


class DataApi:
    """The state every request shares: spec, token authority, limiter, cursor sealer, reader."""

    def __init__(self, spec: ApiSpec, secrets: Secrets, reader: BigQueryReader | None = None) -> None:
        self.spec = spec
        self.authority = Authority(spec, secrets)
        self.limiter = ClientLimiter()
        self.sealer = CursorSealer(secrets.signing_keys)
        self.reader = reader or BigQueryReader(spec.project, spec.location)

    # -- shared steps of a resource request --

    def admit(self, request: Request, source: Source) -> tuple[Grant, dict[str, str]]:
        usage = request.state.usage
        try:
            grant = self.authority.verify(request.headers.get("authorization"))
        except AuthError as exc:
            raise bearer_error(exc) from None
        usage["client_id"] = grant.client.client_id
        decision = self.limiter.hit(grant.client.client_id, self.spec.limit_of(grant.client))
        headers = decision.headers()
        if not decision.allowed:
            usage["rate_limited"] = True
            raise ApiError(429, "rate_limited", f"rate limit of {decision.limit} requests per "
                           f"{self.spec.limit_of(grant.client).per_seconds} s exceeded; retry after "
                           f"{headers['Retry-After']} s", headers=headers)
        if source.scopes.read not in grant.scopes:
            raise ApiError(403, "insufficient_scope", f"this token lacks the scope {source.scopes.read}",
                           headers={**headers, "WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'
                                    f', scope="{source.scopes.read}"'})
        return grant, headers

    def masked(self, source: Source, grant: Grant) -> frozenset[str]:
        return frozenset() if source.scopes.pii in grant.scopes else source.pii

    def needs_pii(self, source: Source, grant: Grant, name: str, param: str, headers: dict[str, str]) -> None:
        if name in source.pii and source.scopes.pii not in grant.scopes:
            raise ApiError(403, "insufficient_scope", f"{param}: {name} is personal data; filtering or looking up by "
                           f"it needs the scope {source.scopes.pii}", field=param,
                           headers={**headers, "WWW-Authenticate": f'Bearer realm="{REALM}", '
                                    f'error="insufficient_scope", scope="{source.scopes.pii}"'})

    def run(self, request: Request, source: Source, query, grant: Grant):
        options = QueryOptions(
            labels={"headwater-api-client": label_value(grant.client.client_id),
                    "headwater-api-source": label_value(source.name)},
            max_bytes_billed=source.max_bytes_billed or self.spec.max_bytes_billed,
            timeout_seconds=self.spec.query_timeout_seconds)
        try:
            result = self.reader.run(query, options)
        except QueryFailed as exc:
            log.error("query on %s failed (%s): %s", source.view, exc.kind, exc)
            if exc.kind == "timeout":
                raise ApiError(504, "timeout", "the query did not finish in time; narrow the filters") from None
            if exc.kind == "too_expensive":
                raise ApiError(503, "unavailable", "the query would scan more than this API allows; narrow the "
                                                   "filters (a range on the partition field)") from None
            if exc.kind == "not_found":
                raise ApiError(503, "unavailable", f"{source.name} is not available yet") from None
            raise ApiError(503, "unavailable", "the data store did not answer; try again",
                           headers={"Retry-After": "5"}) from None
        usage = request.state.usage
        usage["bytes_processed"] = result.bytes_processed
        usage["cache_hit"] = result.cache_hit
        return result

    # -- GET /api/v1/{name} --

    def list_rows(self, request: Request, source: Source) -> Response:
        usage = request.state.usage
        usage.update(source=source.name, endpoint="list")
        grant, headers = self.admit(request, source)
        filters, limit, cursor, fmt = self._page_parameters(request, source, grant, headers)
        usage.update(format=fmt, filters=[f"{f.field.name}.{f.op}" for f in filters], limit=limit)
        fingerprint = filters_fingerprint([(f.field.name, f.op, values.encode(f.field, f.value)) for f in filters])
        after = None
        if cursor is not None:
            try:
                encoded = self.sealer.open(cursor, source.name, source.order, fingerprint)
                after = [values.decode(source.field(name), value) for name, value in zip(source.order, encoded,
                                                                                         strict=True)]
            except CursorError as exc:
                raise ApiError(400, "invalid_request", f"cursor: {exc}", field="cursor", headers=headers) from None
        masked = self.masked(source, grant)
        result = self.run(request, source, page_query(source, filters, after, limit, masked), grant)
        rows = result.rows[:limit]
        has_more = len(result.rows) > limit
        next_cursor = None
        if has_more:
            last = rows[-1]
            position = tuple(values.encode(source.field(name), last.get(name)) for name in source.order)
            next_cursor = self.sealer.seal(Position(source.name, source.order, fingerprint, position))
        usage.update(rows=len(rows), has_more=has_more)
        headers = {**headers, "X-Has-More": "true" if has_more else "false",
                   "X-Masked-Fields": ",".join(sorted(masked))}
        if next_cursor:
            headers["X-Next-Cursor"] = next_cursor
            items = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
            headers["Link"] = f'<{request.url.path}?{urlencode(items + [("cursor", next_cursor)])}>; rel="next"'
        envelope = {"next_cursor": next_cursor, "has_more": has_more, "count": len(rows), "limit": limit,
                    "masked_fields": sorted(masked)}
        return formats.render(fmt, source.fields, rows, masked, envelope, headers, source.name)

    def _page_parameters(self, request: Request, source: Source, grant: Grant, headers: dict[str, str]):
        seen: set[str] = set()
        filters: list[Filter] = []
        limit, cursor, fmt = self.spec.page.default_limit, None, "json"
        for key, value in request.query_params.multi_items():
            if key in seen:
                raise ApiError(400, "invalid_request", f"{key}: given more than once", field=key, headers=headers)
            seen.add(key)
            if key == "limit":
                if not value.isdigit() or not 1 <= int(value) <= self.spec.page.max_limit:
                    raise ApiError(400, "invalid_request", f"limit: expected an integer from 1 to "
                                   f"{self.spec.page.max_limit}", field="limit", headers=headers)
                limit = int(value)
            elif key == "cursor":
                cursor = value
            elif key == "format":
                if value not in formats.FORMATS:
                    raise ApiError(400, "invalid_request", f"format: expected one of {', '.join(formats.FORMATS)}",
                                   field="format", headers=headers)
                fmt = value
            else:
                filters.append(self._filter(source, grant, key, value, headers))
        return filters, limit, cursor, fmt

    def _filter(self, source: Source, grant: Grant, key: str, value: str, headers: dict[str, str]) -> Filter:
        name, dot, op = key.rpartition(".")
        if not dot:
            name, op = key, "eq"
        elif op not in RANGE_OPERATORS:
            raise ApiError(400, "invalid_request", f"{key}: unknown operator {op!r} (use {', '.join(RANGE_OPERATORS)}, "
                           f"or {name}=value for equality)", field=key, headers=headers)
        field = source.field(name)
        if field is None:
            close = difflib.get_close_matches(name, [f.name for f in source.fields], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ApiError(400, "invalid_request", f"{key}: {source.name} has no field {name!r}{hint}", field=key,
                           headers=headers)
        if name not in source.filterable:
            raise ApiError(400, "invalid_request", f"{key}: {name} ({field.mode} {field.type}) cannot be filtered on",
                           field=key, headers=headers)
        if op != "eq" and field.type not in RANGE_TYPES:
            raise ApiError(400, "invalid_request", f"{key}: {name} is {field.type}: only equality ({name}=value)",
                           field=key, headers=headers)
        self.needs_pii(source, grant, name, key, headers)
        try:
            parsed = values.parse(field.type, value)
        except values.BadValue as exc:
            raise ApiError(400, "invalid_request", f"{key}: {exc}", field=key, headers=headers) from None
        return Filter(field, op, parsed)

    # -- GET /api/v1/{name}/{id} --

    def get_row(self, request: Request, source: Source) -> Response:
        usage = request.state.usage
        usage.update(source=source.name, endpoint="get")
        grant, headers = self.admit(request, source)
        fmt = "json"
        for key, value in request.query_params.multi_items():
            if key != "format":
                raise ApiError(400, "invalid_request", f"{key}: unknown parameter (only format)", field=key,
                               headers=headers)
            if value not in formats.FORMATS:
                raise ApiError(400, "invalid_request", f"format: expected one of {', '.join(formats.FORMATS)}",
                               field="format", headers=headers)
            fmt = value
        usage["format"] = fmt
        key_values = []
        for name, text in zip(source.key, self._id_parts(request, source, headers), strict=True):
            self.needs_pii(source, grant, name, "id", headers)
            field = source.field(name)
            try:
                key_values.append(values.parse(field.type, text))
            except values.BadValue as exc:
                raise ApiError(400, "invalid_request", f"id: {name}: {exc}", field="id", headers=headers) from None
        masked = self.masked(source, grant)
        result = self.run(request, source, row_query(source, key_values, masked), grant)
        usage["rows"] = len(result.rows[:1])
        if not result.rows:
            raise ApiError(404, "not_found", f"no {source.name} row has this key", headers=headers)
        if len(result.rows) > 1:
            log.error("%s: more than one row has the key %s: the view's key is not unique", source.view,
                      ", ".join(source.key))
            raise ApiError(500, "server_error", f"the key of {source.name} is not unique in its view",
                           headers=headers)
        headers = {**headers, "X-Masked-Fields": ",".join(sorted(masked))}
        return formats.render(fmt, source.fields, result.rows, masked, {"masked_fields": sorted(masked)}, headers,
                              source.name, single=True)

    def _id_parts(self, request: Request, source: Source, headers: dict[str, str]) -> list[str]:
        """The key values of the path's last segment, split on a literal ``,`` *before*
        percent-decoding (so ``%2C`` is a comma inside a value)."""
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else quote(request.url.path, safe="/,")
        prefix = f"{openapi.API_PREFIX}/{source.name}/"
        raw_id = path.split("?", 1)[0][len(prefix):] if path.startswith(prefix) else ""
        parts = raw_id.split(",") if len(source.key) > 1 else [raw_id]
        if len(parts) != len(source.key) or any(p == "" for p in parts) or any("/" in p for p in parts):
            raise ApiError(400, "invalid_request", f"id: expected {len(source.key)} value(s), the key "
                           f"{', '.join(source.key)}, separated by ','", field="id", headers=headers)
        try:
            return [unquote(p, errors="strict") for p in parts]
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_request", "id: not UTF-8 once percent-decoded", field="id",
                           headers=headers) from None

    # -- POST /oauth/token --

    async def token(self, request: Request) -> Response:
        usage = request.state.usage
        usage["endpoint"] = "token"
        no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        try:
            form = await self._token_form(request)
            if "grant_type" not in form:
                raise AuthError(400, "invalid_request", "grant_type is required")
            if form["grant_type"] != "client_credentials":
                raise AuthError(400, "unsupported_grant_type", "only grant_type=client_credentials is supported")
            client_id, secret, basic = self.authority.client_credentials(request.headers, form)
            known = self.spec.client(client_id) is not None
            wait = self.limiter.auth_blocked(client_id) if known else 0
            if wait:
                usage.update(client_id=client_id, rate_limited=True)
                return ApiError(429, "rate_limited", "too many failed authentications for this client; retry "
                                f"after {wait} s", headers={**no_store, "Retry-After": str(wait)}).response()
            try:
                client = self.authority.authenticate(client_id, secret, basic)
            except AuthError:
                if known:
                    self.limiter.auth_failed(client_id)
                raise
            usage["client_id"] = client.client_id
            decision = self.limiter.hit(client.client_id, self.spec.limit_of(client))
            if not decision.allowed:
                usage["rate_limited"] = True
                return ApiError(429, "rate_limited", "rate limit exceeded", headers={
                    **no_store, **decision.headers()}).response()
            scopes = self.authority.granted_scopes(client, form.get("scope"))
            usage["scopes"] = sorted(scopes)
            return JSONResponse(self.authority.issue(client, scopes), headers={**no_store, **decision.headers()})
        except AuthError as exc:
            headers = dict(no_store)
            if exc.status == 401 and exc.basic:
                headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
            return JSONResponse({"error": exc.error, "error_description": exc.description}, status_code=exc.status,
                                headers=headers)

    async def _token_form(self, request: Request) -> dict[str, str]:
        if request.url.query and any(k in parse_qs(request.url.query) for k in ("client_secret", "client_id")):
            raise AuthError(400, "invalid_request", "client credentials must not be sent in the URL")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            raise AuthError(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_TOKEN_BODY_BYTES:
                raise AuthError(400, "invalid_request", "the body is too large")
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise AuthError(400, "invalid_request", "the body is not UTF-8") from None
        repeated = sorted(k for k, v in parsed.items() if len(v) > 1)
        if repeated:  # RFC 6749 §3.2: parameters MUST NOT be included more than once
            raise AuthError(400, "invalid_request", f"{repeated[0]} is given more than once")
        return {k: v[0] for k, v in parsed.items()}


# --------------------------------------------------------------------------- the application


def create_app(spec: ApiSpec, secrets: Secrets, reader: BigQueryReader | None = None) -> FastAPI:
    api = DataApi(spec, secrets, reader)
    app = FastAPI(
        title="headwater data API",
        version="1",
        description="Gold data of the platform's sources, for third parties. Authenticate with OAuth 2.0 client "
                    f"credentials at `{openapi.TOKEN_PATH}`, then send `Authorization: Bearer <token>`.",
        docs_url="/docs" if spec.docs else None,
        redoc_url="/redoc" if spec.docs else None,
        openapi_url="/openapi.json",
    )
    app.state.api = api

    @app.middleware("http")
    async def usage(request: Request, call_next: Callable) -> Response:
        started = time.perf_counter()
        request.state.usage = {}
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            record = request.state.usage
            if record.get("endpoint"):  # resource and token requests (not health, docs)
                entry = {"client_id": record.pop("client_id", None), "status": status,
                         "duration_ms": round((time.perf_counter() - started) * 1000, 1), **record}
                usage_log.info("api_request", extra={"usage": entry})

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return JSONResponse({"error": code, "error_description": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_: Request, exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc)
        return JSONResponse({"error": "server_error", "error_description": "internal error"}, status_code=500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route(openapi.TOKEN_PATH, api.token, methods=["POST"], tags=["auth"], summary="Get an access token",
                      description="OAuth 2.0 client credentials grant (RFC 6749 §4.4).",
                      openapi_extra=_token_openapi())

    for source in spec.sources:
        app.add_api_route(f"{openapi.API_PREFIX}/{source.name}", _bind(api.list_rows, source), methods=["GET"],
                          include_in_schema=False)
        app.add_api_route(f"{openapi.API_PREFIX}/{source.name}/{{id:path}}", _bind(api.get_row, source),
                          methods=["GET"], include_in_schema=False)

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            app.openapi_schema = openapi.extend(document, spec)
        return app.openapi_schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
    return app


def _bind(handler: Callable[[Request, Source], Response], source: Source) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        return handler(request, source)

    endpoint.__name__ = f"{handler.__name__}_{source.name}"
    return endpoint


def _token_openapi() -> dict[str, Any]:
    form = {"type": "object", "required": ["grant_type"], "properties": {
        "grant_type": {"type": "string", "enum": ["client_credentials"]},
        "scope": {"type": "string", "description": "space-separated; default: every scope of the client"},
        "client_id": {"type": "string", "description": "unless HTTP Basic is used"},
        "client_secret": {"type": "string", "description": "unless HTTP Basic is used"}}}
    token = {"type": "object", "properties": {"access_token": {"type": "string"}, "token_type": {"type": "string"},
                                              "expires_in": {"type": "integer"}, "scope": {"type": "string"}}}
    error = {"$ref": "#/components/schemas/Error"}
    return {
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": form}}},
        "responses": {"200": {"description": "The token", "content": {"application/json": {"schema": token}}},
                      "400": {"description": "invalid_request, unsupported_grant_type, invalid_scope",
                              "content": {"application/json": {"schema": error}}},
                      "401": {"description": "invalid_client", "content": {"application/json": {"schema": error}}},
                      "429": {"description": "Rate limited", "content": {"application/json": {"schema": error}}}},
    }
