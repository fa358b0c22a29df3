"""The connector runtime spec: the one JSON document that tells ``python -m connector`` what to do.

The reconciler compiles a ``streaming_api`` connector file into this document and hands it to the
runtime as the environment variable ``HEADWATER_CONNECTOR_SPEC`` (Cloud Run, or the local
runner). ``docs/connector-contract.md`` is the format's reference; this module parses it into
frozen dataclasses and checks it. Keys the format does not name are errors, and every error
names the offending JSON path (``rest_api.pagination.path: required for pagination type
'next_url'``), so a compile/runtime mismatch fails the revision at start, loudly, instead of
being ignored.

Secrets are never in the document: :func:`connector_secret` and :func:`webhook_secret` read them
from the environment and check their shape without ever quoting them in an error.

This module has no dependency beyond the standard library.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

SPEC_VERSION = 1
SPEC_ENV = "HEADWATER_CONNECTOR_SPEC"
CONNECTOR_SECRET_ENV = "HEADWATER_CONNECTOR_SECRET"
WEBHOOK_SECRET_ENV = "HEADWATER_WEBHOOK_SECRET"

CONNECTOR_TYPES = ("rest_api", "webhook")
AUTH_TYPES = ("none", "bearer_token", "api_key", "basic", "oauth2")
PAGINATION_TYPES = ("none", "next_url", "link_header", "cursor", "page")
SIGNATURE_SCHEMES = ("hex", "timestamped")
SIGNATURE_ALGORITHMS = ("sha1", "sha256", "sha512")
DEFAULT_API_KEY_HEADER = "X-API-Key"
HEALTH_PATH = "/healthz"

_SOURCE_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TOPIC = re.compile(r"^projects/[a-z][a-z0-9.:-]{4,61}[a-z0-9]/topics/[A-Za-z][A-Za-z0-9._~%+-]{2,254}$")
_GCS_URI = re.compile(r"^gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(?P<name>[^\r\n]+)$")
_WEBHOOK_PATH = re.compile(r"^/[A-Za-z0-9/_\-.]*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an RFC 9110 token
_DOTTED = re.compile(r"^[^.]+(\.[^.]+)*$")


class SpecError(ValueError):
    """The spec document (or a secret's shape) is invalid; the message names the JSON path."""


# --------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Auth:
    """How each API request is authenticated; the credential itself is the connector secret.

    ``header`` / ``query`` (api_key only): where the key goes, exactly one of them.
    ``token_url`` / ``scopes`` (oauth2 only): the client-credentials token endpoint.
    """

    type: str = "none"
    header: str | None = None
    query: str | None = None
    token_url: str | None = None
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pagination:
    """How the next page is found. ``path``: dotted path in the body (next_url, cursor);
    ``param``: query parameter (cursor, page); ``start``: first page number (page)."""

    type: str = "none"
    path: str | None = None
    param: str | None = None
    start: int = 1


@dataclass(frozen=True)
class RestApi:
    """The polling connector. Times are seconds.

    ``retry_initial_seconds`` / ``retry_max_seconds`` bound the backoff between retries (and the
    longest ``Retry-After`` waited for within a poll); ``checkpoint_interval_seconds`` is the
    least time between two checkpoint writes within one poll (0: after every page). These three
    are optional extensions of the contract with production defaults; tests set them small.
    """

    endpoint: str
    params: Mapping[str, str] = field(default_factory=dict)
    auth: Auth = field(default_factory=Auth)
    records: str | None = None
    pagination: Pagination = field(default_factory=Pagination)
    cursor_field: str | None = None
    cursor_param: str | None = None
    poll_interval_seconds: float = 60.0
    request_timeout_seconds: float = 30.0
    max_requests_per_minute: int = 60
    max_retries: int = 5
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    checkpoint_interval_seconds: float = 1.0


@dataclass(frozen=True)
class Signature:
    """HMAC signature check of webhook deliveries (see connector.webhook)."""

    header: str
    algorithm: str = "sha256"
    scheme: str = "hex"
    timestamp_tolerance_seconds: int = 300


@dataclass(frozen=True)
class Webhook:
    """The push connector. ``signature`` None accepts unsigned deliveries."""

    path: str
    signature: Signature | None = None
    max_body_bytes: int = 1_048_576
    delivery_id_header: str | None = None
    records: str | None = None


@dataclass(frozen=True)
class ConnectorSpec:
    """The whole document. Exactly one of ``rest_api`` / ``webhook`` is set, per ``connector_type``.

    ``checkpoint`` (a ``gs://bucket/object`` URI) is required for rest_api; ``checkpoint_bucket``
    and ``checkpoint_object`` are its two halves.
    """

    source_id: str
    project: str
    connector_type: str
    topic: str
    dead_letter_topic: str
    checkpoint: str | None = None
    rest_api: RestApi | None = None
    webhook: Webhook | None = None
    version: int = SPEC_VERSION

    @property
    def checkpoint_bucket(self) -> str:
        return _split_gcs(self.checkpoint)[0]

    @property
    def checkpoint_object(self) -> str:
        return _split_gcs(self.checkpoint)[1]


# --------------------------------------------------------------------------- parsing


def load_spec(environ: Mapping[str, str] | None = None) -> ConnectorSpec:
    """The spec in ``$HEADWATER_CONNECTOR_SPEC``. Raises SpecError when unset or invalid."""
    environ = os.environ if environ is None else environ
    raw = environ.get(SPEC_ENV)
    if not raw:
        raise SpecError(f"{SPEC_ENV} is not set: it must hold the connector spec document (JSON)")
    return parse_spec(raw)


def parse_spec(document: str | bytes | Mapping[str, Any]) -> ConnectorSpec:
    """Parse and check a spec document (JSON text or an already-decoded object).

    Raises SpecError naming the first offending path.
    """
    if isinstance(document, str | bytes):
        try:
            document = json.loads(document)
        except ValueError as exc:
            raise SpecError(f"the spec is not JSON: {exc}") from None
    obj = _Obj(document, "")
    version = obj.integer("version", default=SPEC_VERSION, minimum=1)
    if version != SPEC_VERSION:
        raise SpecError(f"version: {version} is not supported (this runtime reads version {SPEC_VERSION})")
    source_id = obj.text("source_id", pattern=_SOURCE_ID, what="a source id ([a-z][a-z0-9_]*)")
    project = obj.text("project")
    connector_type = obj.choice("connector_type", CONNECTOR_TYPES)
    topic = obj.text("topic", pattern=_TOPIC, what="projects/<project>/topics/<topic>")
    dead_letter_topic = obj.text("dead_letter_topic", pattern=_TOPIC, what="projects/<project>/topics/<topic>")
    checkpoint = obj.text("checkpoint", pattern=_GCS_URI, what="gs://<bucket>/<object>",
                         required=connector_type == "rest_api")
    rest_api = webhook = None
    if connector_type == "rest_api":
        rest_api = _rest_api(obj.obj("rest_api"))
        obj.absent("webhook", "connector_type is rest_api")
    else:
        webhook = _webhook(obj.obj("webhook"))
        obj.absent("rest_api", "connector_type is webhook")
    obj.done()
    return ConnectorSpec(source_id=source_id, project=project, connector_type=connector_type, topic=topic,
                         dead_letter_topic=dead_letter_topic, checkpoint=checkpoint, rest_api=rest_api,
                         webhook=webhook, version=version)


def _rest_api(obj: _Obj) -> RestApi:
    endpoint = obj.text("endpoint")
    _check_http_url(endpoint, obj.path("endpoint"))
    params = obj.params("params")
    auth = _auth(obj.obj("auth", required=False))
    records = obj.dotted("records", required=False)
    pagination = _pagination(obj.obj("pagination", required=False))
    cursor_field = obj.dotted("cursor_field", required=False)
    cursor_param = obj.text("cursor_param", required=False)
    if (cursor_field is None) != (cursor_param is None):
        raise SpecError(f"{obj.path('cursor_field')}: cursor_field and cursor_param go together (both or neither)")
    spec = RestApi(
        endpoint=endpoint, params=params, auth=auth, records=records, pagination=pagination,
        cursor_field=cursor_field, cursor_param=cursor_param,
        poll_interval_seconds=obj.number("poll_interval_seconds", minimum=0, default=60.0),
        request_timeout_seconds=obj.number("request_timeout_seconds", minimum=0.001, default=30.0),
        max_requests_per_minute=obj.integer("max_requests_per_minute", minimum=1, default=60),
        max_retries=obj.integer("max_retries", minimum=0, default=5),
        retry_initial_seconds=obj.number("retry_initial_seconds", minimum=0, default=1.0),
        retry_max_seconds=obj.number("retry_max_seconds", minimum=0, default=60.0),
        checkpoint_interval_seconds=obj.number("checkpoint_interval_seconds", minimum=0, default=1.0),
    )
    if spec.retry_max_seconds < spec.retry_initial_seconds:
        raise SpecError(f"{obj.path('retry_max_seconds')}: must be at least retry_initial_seconds")
    if pagination.param is not None and pagination.param in params:
        raise SpecError(f"{obj.path('params')}: {pagination.param!r} is the pagination parameter; remove it")
    if cursor_param is not None and (cursor_param in params or cursor_param == pagination.param):
        raise SpecError(f"{obj.path('cursor_param')}: {cursor_param!r} is also set in params or by pagination")
    obj.done()
    return spec


def _auth(obj: _Obj | None) -> Auth:
    if obj is None:
        return Auth()
    kind = obj.choice("type", AUTH_TYPES)
    if kind == "api_key":
        header = obj.text("header", required=False, pattern=_HEADER_NAME, what="an HTTP header name")
        query = obj.text("query", required=False)
        if header is not None and query is not None:
            raise SpecError(f"{obj.path('header')}: an api_key goes in a header or a query parameter, not both")
        auth = Auth(kind, header=header or (None if query else DEFAULT_API_KEY_HEADER), query=query)
    elif kind == "oauth2":
        token_url = obj.text("token_url")
        _check_http_url(token_url, obj.path("token_url"))
        scopes = tuple(obj.str_list("scopes"))
        auth = Auth(kind, token_url=token_url, scopes=scopes)
    else:
        auth = Auth(kind)
    obj.done()
    return auth


def _pagination(obj: _Obj | None) -> Pagination:
    if obj is None:
        return Pagination()
    kind = obj.choice("type", PAGINATION_TYPES)
    needs_path = kind in ("next_url", "cursor")
    needs_param = kind in ("cursor", "page")
    path = obj.dotted("path", required=needs_path) if needs_path else None
    param = obj.text("param", required=needs_param) if needs_param else None
    start = obj.integer("start", default=1, minimum=0) if kind == "page" else 1
    obj.done()
    return Pagination(kind, path=path, param=param, start=start)


def _webhook(obj: _Obj) -> Webhook:
    path = obj.text("path", pattern=_WEBHOOK_PATH, what="an absolute URL path like /hooks/stripe")
    if path == HEALTH_PATH:
        raise SpecError(f"{obj.path('path')}: {HEALTH_PATH} is the health endpoint; choose another path")
    sig = obj.obj("signature", required=False)
    signature = None
    if sig is not None:
        signature = Signature(
            header=sig.text("header", pattern=_HEADER_NAME, what="an HTTP header name"),
            algorithm=sig.choice("algorithm", SIGNATURE_ALGORITHMS, default="sha256"),
            scheme=sig.choice("scheme", SIGNATURE_SCHEMES, default="hex"),
            timestamp_tolerance_seconds=sig.integer("timestamp_tolerance_seconds", default=300, minimum=1),
        )
        sig.done()
    webhook = Webhook(
        path=path, signature=signature,
        max_body_bytes=obj.integer("max_body_bytes", default=1_048_576, minimum=1),
        delivery_id_header=obj.text("delivery_id_header", required=False, pattern=_HEADER_NAME,
                                   what="an HTTP header name"),
        records=obj.dotted("records", required=False),
    )
    obj.done()
    return webhook


# --------------------------------------------------------------------------- secrets


def connector_secret(spec: ConnectorSpec, environ: Mapping[str, str] | None = None) -> str | None:
    """The API credential for ``spec.rest_api.auth``, from ``$HEADWATER_CONNECTOR_SECRET``.

    None for auth ``none``. Raises SpecError when it is missing or malformed (``basic`` needs
    ``user:password``, ``oauth2`` ``client_id:client_secret``); the message never quotes it.
    """
    environ = os.environ if environ is None else environ
    if spec.rest_api is None or spec.rest_api.auth.type == "none":
        return None
    kind = spec.rest_api.auth.type
    # A trailing newline is what `echo x > file` and most secret managers' UIs leave behind.
    secret = environ.get(CONNECTOR_SECRET_ENV, "").strip("\r\n")
    if not secret:
        raise SpecError(f"{CONNECTOR_SECRET_ENV} is not set: auth type {kind} needs the API credential there")
    if kind in ("basic", "oauth2") and (":" not in secret or secret.startswith(":")):
        shape = "user:password" if kind == "basic" else "client_id:client_secret"
        raise SpecError(f"{CONNECTOR_SECRET_ENV}: auth type {kind} needs the form {shape} (value not shown)")
    return secret


def webhook_secret(spec: ConnectorSpec, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The webhook signing key from ``$HEADWATER_WEBHOOK_SECRET``, or None when unsigned.

    Raises SpecError when a signature is declared but the key is missing.
    """
    environ = os.environ if environ is None else environ
    if spec.webhook is None or spec.webhook.signature is None:
        return None
    secret = environ.get(WEBHOOK_SECRET_ENV, "").strip("\r\n")
    if not secret:
        raise SpecError(f"{WEBHOOK_SECRET_ENV} is not set: the webhook's signature needs its signing key there")
    return secret.encode()


# --------------------------------------------------------------------------- helpers


def _split_gcs(uri: str | None) -> tuple[str, str]:
    match = _GCS_URI.match(uri or "")
    if match is None:
        raise SpecError(f"checkpoint: {uri!r} is not gs://<bucket>/<object>")
    return match["bucket"], match["name"]


def _check_http_url(url: str, path: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(f"{path}: {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise SpecError(f"{path}: credentials do not go in the URL (use auth and the connector secret)")


class _Obj:
    """One JSON object being read: typed getters that name the path, and a check for leftovers."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, Mapping):
            raise SpecError(f"{path or '(document)'}: expected an object, got {type(value).__name__}")
        self.value = value
        self.prefix = path
        self.seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        value = self.value.get(key)
        if value is None and required:
            raise SpecError(f"{self.path(key)}: required")
        return value

    def absent(self, key: str, why: str) -> None:
        if self._get(key, required=False) is not None:
            raise SpecError(f"{self.path(key)}: not allowed: {why}")

    def done(self) -> None:
        unknown = sorted(set(self.value) - self.seen)
        if unknown:
            raise SpecError(f"{self.path(unknown[0])}: unknown key (this runtime reads spec version {SPEC_VERSION})")

    def obj(self, key: str, required: bool = True) -> _Obj | None:
        value = self._get(key, required)
        return None if value is None else _Obj(value, self.path(key))

    def text(self, key: str, required: bool = True, pattern: re.Pattern[str] | None = None,
             what: str = "") -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise SpecError(f"{self.path(key)}: expected a non-empty string, got {value!r}")
        if pattern is not None and not pattern.match(value):
            raise SpecError(f"{self.path(key)}: {value!r} is not {what}")
        return value

    def dotted(self, key: str, required: bool = True) -> str | None:
        return self.text(key, required, pattern=_DOTTED, what="a dotted path like data.items")

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self._get(key, required=default is None)
        if value is None:
            return default  # type: ignore[return-value]
        if value not in choices:
            raise SpecError(f"{self.path(key)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self._get(key, required=False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SpecError(f"{self.path(key)}: expected an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, minimum: float, default: float) -> float:
        value = self._get(key, required=False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise SpecError(f"{self.path(key)}: expected a number >= {minimum}, got {value!r}")
        return float(value)

    def str_list(self, key: str) -> list[str]:
        value = self._get(key, required=False)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SpecError(f"{self.path(key)}: expected a list of non-empty strings, got {value!r}")
        return value

    def params(self, key: str) -> dict[str, str]:
        """Query parameters: string keys, scalar values (sent as strings; booleans as true/false)."""
        value = self._get(key, required=False)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise SpecError(f"{self.path(key)}: expected an object of query parameters")
        out: dict[str, str] = {}
        for name, item in value.items():
            if isinstance(item, bool):
                out[name] = "true" if item else "false"
            elif isinstance(item, str | int | float):
                out[name] = str(item)
            else:
                raise SpecError(f"{self.path(key)}.{name}: expected a string or number, got {type(item).__name__}")
        return out
