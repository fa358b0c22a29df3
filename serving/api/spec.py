"""The data API spec: the one JSON document that tells ``python -m serving.api`` what to serve.

The reconciler compiles the platform's ``serving.third_party_api`` sources into this document
and hands it to the runtime as ``HEADWATER_CONNECTOR_SPEC`` (the ``cloud_run_service`` kind's
runtime-document variable; Cloud Run or the local runner). ``docs/data-api-contract.md`` is the
format's reference; this module parses it into frozen dataclasses and checks it. Keys the format
does not name are errors, and every error names the offending JSON path
(``sources[0].key[1]: 'dat' is not a field of the source``), so a compile/runtime mismatch fails
the revision at start instead of serving something else.

Secrets are never in the document: :func:`load_secrets` reads the signing key and every client's
secret from the environment variables the document names, and never quotes a value in an error.

This module has no dependency beyond the standard library.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SPEC_VERSION = 1
SPEC_KIND = "data_api"
SPEC_ENV = "HEADWATER_CONNECTOR_SPEC"  # the cloud_run_service kind's runtime-document variable
DEFAULT_SIGNING_KEY_ENV = "HEADWATER_API_SIGNING_KEY"
DEFAULT_AUDIENCE = "headwater-data-api"
MIN_SIGNING_KEY_BYTES = 32
MIN_CLIENT_SECRET_CHARS = 16
# The request's own query parameters: a field by one of these names cannot be filtered by eq.
RESERVED_PARAMETERS = frozenset({"limit", "cursor", "format"})

SCALAR_TYPES = frozenset({"STRING", "BYTES", "INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC", "BOOL", "TIMESTAMP",
                          "DATE", "TIME", "DATETIME", "GEOGRAPHY", "JSON"})
TYPES = SCALAR_TYPES | {"RECORD"}
# BigQuery's legacy names, as a table's schema may still report them.
TYPE_ALIASES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD",
                "DECIMAL": "NUMERIC", "BIGDECIMAL": "BIGNUMERIC"}
MODES = ("NULLABLE", "REQUIRED", "REPEATED")
RANGE_TYPES = frozenset({"INT64", "FLOAT64", "NUMERIC", "BIGNUMERIC", "DATE", "DATETIME", "TIMESTAMP"})
FILTER_TYPES = RANGE_TYPES | {"STRING", "BOOL"}
# What ORDER BY accepts (and the keyset comparison needs): not RECORD, arrays, JSON, GEOGRAPHY.
ORDERABLE_TYPES = FILTER_TYPES | {"BYTES", "TIME"}
PARTITION_TYPES = frozenset({"DATE", "TIMESTAMP", "DATETIME"})

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 scope-token: NQCHAR without space
# project.dataset.table: project ids may carry a domain prefix (example.com:proj).
_VIEW = re.compile(r"^(?P<project>[a-z][a-z0-9.:-]{0,61}[a-z0-9])\.(?P<dataset>[A-Za-z0-9_]{1,1024})"
                   r"\.(?P<table>[A-Za-z0-9_-]{1,1024})$")
_RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION", SPEC_ENV})


class SpecError(ValueError):
    """The spec document (or a secret's shape) is invalid; the message names the JSON path."""


# --------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Field:
    """A column of a view, BigQuery's schema shape with standard type names."""

    name: str
    type: str
    mode: str = "NULLABLE"
    description: str | None = None
    fields: tuple[Field, ...] = ()

    @property
    def repeated(self) -> bool:
        return self.mode == "REPEATED"


@dataclass(frozen=True)
class Scopes:
    read: str
    pii: str


@dataclass(frozen=True)
class RateLimit:
    requests: int = 1000
    per_seconds: int = 3600

    def expression(self) -> str:
        """The ``limits`` library's notation: ``1000 per 3600 seconds``."""
        return f"{self.requests} per {self.per_seconds} seconds"


@dataclass(frozen=True)
class Source:
    """One served view. ``order`` is the pagination order (see :func:`pagination_order`)."""

    name: str
    view: str
    key: tuple[str, ...]
    fields: tuple[Field, ...]
    scopes: Scopes
    description: str | None = None
    tiebreak: tuple[str, ...] = ()
    filterable: frozenset[str] = frozenset()
    partition_field: str | None = None
    clustering_fields: tuple[str, ...] = ()
    pii: frozenset[str] = frozenset()
    max_bytes_billed: int | None = None
    order: tuple[str, ...] = ()

    def field(self, name: str) -> Field | None:
        for item in self.fields:
            if item.name == name:
                return item
        return None

    @property
    def dataset(self) -> str:
        project, dataset, _ = self.view.split(".")
        return f"{project}.{dataset}"


@dataclass(frozen=True)
class Client:
    client_id: str
    secret_env: str
    scopes: frozenset[str]
    rate_limit: RateLimit | None = None


@dataclass(frozen=True)
class Token:
    issuer: str
    audience: str = DEFAULT_AUDIENCE
    ttl_seconds: int = 3600
    signing_key_env: str = DEFAULT_SIGNING_KEY_ENV
    previous_signing_key_env: str | None = None


@dataclass(frozen=True)
class Page:
    default_limit: int = 100
    max_limit: int = 1000


@dataclass(frozen=True)
class ApiSpec:
    project: str
    sources: tuple[Source, ...]
    clients: tuple[Client, ...]
    token: Token
    location: str | None = None
    rate_limit: RateLimit = field(default_factory=RateLimit)
    page: Page = field(default_factory=Page)
    query_timeout_seconds: float = 30.0
    max_bytes_billed: int | None = None
    docs: bool = True
    version: int = SPEC_VERSION

    def source(self, name: str) -> Source | None:
        for source in self.sources:
            if source.name == name:
                return source
        return None

    def client(self, client_id: str) -> Client | None:
        for client in self.clients:
            if client.client_id == client_id:
                return client
        return None

    def limit_of(self, client: Client) -> RateLimit:
        return client.rate_limit or self.rate_limit


@dataclass(frozen=True)
class Secrets:
    """The values the document names by variable. ``repr`` never shows them."""

    signing_keys: tuple[bytes, ...]  # [0] signs and verifies; the others only verify
    client_secrets: Mapping[str, str] = field(default_factory=dict)  # client id -> secret

    def __repr__(self) -> str:
        return f"Secrets(signing_keys=<{len(self.signing_keys)}>, clients=<{len(self.client_secrets)}>)"

    def values(self) -> list[str]:
        """Every secret value as text (for log redaction)."""
        texts = [key.decode("utf-8", "replace") for key in self.signing_keys]
        return texts + list(self.client_secrets.values())


# --------------------------------------------------------------------------- parsing


def load_spec(environ: Mapping[str, str] | None = None) -> ApiSpec:
    environ = os.environ if environ is None else environ
    raw = environ.get(SPEC_ENV)
    if not raw:
        raise SpecError(f"{SPEC_ENV} is not set: it must hold the data API spec document")
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise SpecError(f"{SPEC_ENV} is not JSON: {exc}") from None
    return parse_spec(document)


def parse_spec(document: Any) -> ApiSpec:
    top = _object(document, "", required={"version", "kind", "project", "sources", "clients", "token"},
                  optional={"location", "rate_limit", "page", "query_timeout_seconds", "max_bytes_billed", "docs"})
    if top["version"] != SPEC_VERSION or isinstance(top["version"], bool):
        raise SpecError(f"version: unsupported version {top['version']!r} (this runtime reads {SPEC_VERSION})")
    if top["kind"] != SPEC_KIND:
        raise SpecError(f"kind: {top['kind']!r} is not a data API document (expected {SPEC_KIND!r}); "
                        "is this a connector's spec?")
    project = _string(top["project"], "project")
    location = _optional_string(top.get("location"), "location")
    rate_limit = _rate_limit(top["rate_limit"], "rate_limit") if top.get("rate_limit") is not None else RateLimit()
    page = _page(top.get("page"))
    timeout = _number(top.get("query_timeout_seconds", 30.0), "query_timeout_seconds", low=1, high=600)
    max_bytes = _optional_int(top.get("max_bytes_billed"), "max_bytes_billed", low=1)
    docs = _bool(top.get("docs", True), "docs")

    sources_raw = _list(top["sources"], "sources")
    if not sources_raw:
        raise SpecError("sources: at least one source is required")
    sources = tuple(_source(item, f"sources[{i}]") for i, item in enumerate(sources_raw))
    _unique((s.name for s in sources), "sources", "name")
    datasets = {s.dataset for s in sources}
    if len(datasets) > 1:
        raise SpecError(f"sources: every view must be in one dataset (the api dataset); found {sorted(datasets)}")

    known_scopes = {scope for s in sources for scope in (s.scopes.read, s.scopes.pii)}
    clients = tuple(_client(item, f"clients[{i}]", known_scopes)
                    for i, item in enumerate(_list(top["clients"], "clients")))
    _unique((c.client_id for c in clients), "clients", "client_id")
    token = _token(top["token"])
    variables = [token.signing_key_env, *([token.previous_signing_key_env] if token.previous_signing_key_env else []),
                 *(c.secret_env for c in clients)]
    seen: set[str] = set()
    for variable in variables:
        if variable in seen:
            raise SpecError(f"clients: the environment variable {variable} is named twice "
                            "(each secret arrives in its own variable)")
        seen.add(variable)
    return ApiSpec(project=project, location=location, sources=sources, clients=clients, token=token,
                   rate_limit=rate_limit, page=page, query_timeout_seconds=timeout, max_bytes_billed=max_bytes,
                   docs=docs)


def _source(value: Any, path: str) -> Source:
    raw = _object(value, path, required={"name", "view", "key", "fields"},
                  optional={"description", "tiebreak", "filterable", "partition_field", "clustering_fields",
                            "pii", "scopes", "max_bytes_billed"})
    name = _string(raw["name"], f"{path}.name")
    if not _NAME.match(name):
        raise SpecError(f"{path}.name: {name!r} is not a URL segment of the form [a-z][a-z0-9_]{{0,62}}")
    view = _string(raw["view"], f"{path}.view")
    if not _VIEW.match(view):
        raise SpecError(f"{path}.view: {view!r} is not project.dataset.view")
    fields_raw = _list(raw["fields"], f"{path}.fields")
    if not fields_raw:
        raise SpecError(f"{path}.fields: at least one field is required")
    fields = tuple(_field(item, f"{path}.fields[{i}]") for i, item in enumerate(fields_raw))
    _unique((f.name.lower() for f in fields), f"{path}.fields", "name")
    by_name = {f.name: f for f in fields}

    def top_level(names_path: str, names: list[Any], allowed: frozenset[str] | None = None,
                  what: str = "") -> tuple[str, ...]:
        result = []
        for i, item in enumerate(names):
            where = f"{names_path}[{i}]"
            text = _string(item, where)
            if "." in text:
                raise SpecError(f"{where}: {text!r}: only top-level fields are allowed here "
                                "(name the top-level RECORD a nested field is in)")
            found = by_name.get(text)
            if found is None:
                raise SpecError(f"{where}: {text!r} is not a field of the source")
            if allowed is not None and (found.type not in allowed or found.repeated):
                raise SpecError(f"{where}: {text!r} is {found.mode} {found.type}, which cannot be {what}")
            result.append(text)
        _unique(result, names_path, "")
        return tuple(result)

    key = top_level(f"{path}.key", _list(raw["key"], f"{path}.key"), ORDERABLE_TYPES, "a key column")
    if not key:
        raise SpecError(f"{path}.key: at least one key column is required")
    pii = frozenset(top_level(f"{path}.pii", _list(raw.get("pii") or [], f"{path}.pii")))
    if raw.get("tiebreak") is None:  # not the PII columns: their values would have to go into cursors
        tiebreak = tuple(f.name for f in fields
                         if f.name not in key and f.name not in pii and f.type in ORDERABLE_TYPES and not f.repeated)
    else:
        tiebreak = top_level(f"{path}.tiebreak", _list(raw["tiebreak"], f"{path}.tiebreak"), ORDERABLE_TYPES,
                             "ordered by")
        overlap = set(tiebreak) & set(key)
        if overlap:
            raise SpecError(f"{path}.tiebreak: {sorted(overlap)} already in key")
    if raw.get("filterable") is None:
        filterable = frozenset(f.name for f in fields if f.type in FILTER_TYPES and not f.repeated)
    else:
        filterable = frozenset(top_level(f"{path}.filterable", _list(raw["filterable"], f"{path}.filterable"),
                                         FILTER_TYPES, "filtered on"))
    partition = _optional_string(raw.get("partition_field"), f"{path}.partition_field")
    if partition is not None:
        top_level(f"{path}.partition_field", [partition], PARTITION_TYPES, "a partition column")
    clustering = top_level(f"{path}.clustering_fields",
                           _list(raw.get("clustering_fields") or [], f"{path}.clustering_fields"))
    if len(clustering) > 4:
        raise SpecError(f"{path}.clustering_fields: at most 4 (BigQuery's limit)")
    scopes_raw = raw.get("scopes")
    if scopes_raw is None:
        scopes = Scopes(read=f"{name}:read", pii=f"{name}:pii")
    else:
        scopes_obj = _object(scopes_raw, f"{path}.scopes", required={"read", "pii"})
        scopes = Scopes(read=_scope(scopes_obj["read"], f"{path}.scopes.read"),
                        pii=_scope(scopes_obj["pii"], f"{path}.scopes.pii"))
        if scopes.read == scopes.pii:
            raise SpecError(f"{path}.scopes: read and pii must be different scopes")
    max_bytes = _optional_int(raw.get("max_bytes_billed"), f"{path}.max_bytes_billed", low=1)
    return Source(name=name, view=view, key=key, fields=fields, scopes=scopes,
                  description=_optional_string(raw.get("description"), f"{path}.description"),
                  tiebreak=tiebreak, filterable=filterable, partition_field=partition, clustering_fields=clustering,
                  pii=pii, max_bytes_billed=max_bytes,
                  order=pagination_order(key, tiebreak, partition, clustering))


def pagination_order(key: tuple[str, ...], tiebreak: tuple[str, ...], partition: str | None,
                     clustering: tuple[str, ...]) -> tuple[str, ...]:
    """The columns pages are ordered by: the key, with the partition column first and the
    clustering columns next when they are part of it (so a cursor's lower bound prunes
    partitions and clustered blocks), then the tiebreak columns."""
    first = [c for c in ([partition] if partition else []) + list(clustering) if c in key]
    ordered = list(dict.fromkeys(first + list(key)))
    return tuple(ordered + [c for c in tiebreak if c not in ordered])


def _field(value: Any, path: str) -> Field:
    raw = _object(value, path, required={"name", "type"}, optional={"mode", "description", "fields", "policyTags"})
    name = _string(raw["name"], f"{path}.name")
    if not _FIELD.match(name):
        raise SpecError(f"{path}.name: {name!r} is not a BigQuery column name")
    kind = _string(raw["type"], f"{path}.type").upper()
    kind = TYPE_ALIASES.get(kind, kind)
    if kind not in TYPES:
        raise SpecError(f"{path}.type: unknown type {raw['type']!r}")
    mode = _string(raw.get("mode") or "NULLABLE", f"{path}.mode").upper()
    if mode not in MODES:
        raise SpecError(f"{path}.mode: {mode!r} is not one of {', '.join(MODES)}")
    nested: tuple[Field, ...] = ()
    if kind == "RECORD":
        items = _list(raw.get("fields") or [], f"{path}.fields")
        if not items:
            raise SpecError(f"{path}.fields: a RECORD needs its fields")
        nested = tuple(_field(item, f"{path}.fields[{i}]") for i, item in enumerate(items))
        _unique((f.name.lower() for f in nested), f"{path}.fields", "name")
    elif raw.get("fields"):
        raise SpecError(f"{path}.fields: only a RECORD has fields")
    return Field(name=name, type=kind, mode=mode, fields=nested,
                 description=_optional_string(raw.get("description"), f"{path}.description"))


def _client(value: Any, path: str, known_scopes: set[str]) -> Client:
    raw = _object(value, path, required={"client_id", "secret_env", "scopes"}, optional={"rate_limit"})
    client_id = _string(raw["client_id"], f"{path}.client_id")
    if not _CLIENT_ID.match(client_id):
        raise SpecError(f"{path}.client_id: {client_id!r} is not of the form [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
    secret_env = _env_name(raw["secret_env"], f"{path}.secret_env")
    scopes = []
    for i, item in enumerate(_list(raw["scopes"], f"{path}.scopes")):
        scope = _scope(item, f"{path}.scopes[{i}]")
        if scope not in known_scopes:
            raise SpecError(f"{path}.scopes[{i}]: {scope!r} is no source's read or pii scope")
        scopes.append(scope)
    rate = _rate_limit(raw["rate_limit"], f"{path}.rate_limit") if raw.get("rate_limit") is not None else None
    return Client(client_id=client_id, secret_env=secret_env, scopes=frozenset(scopes), rate_limit=rate)


def _token(value: Any) -> Token:
    raw = _object(value, "token", required={"issuer"},
                  optional={"audience", "ttl_seconds", "signing_key_env", "previous_signing_key_env"})
    previous = raw.get("previous_signing_key_env")
    return Token(
        issuer=_string(raw["issuer"], "token.issuer"),
        audience=_string(raw.get("audience", DEFAULT_AUDIENCE), "token.audience"),
        ttl_seconds=int(_number(raw.get("ttl_seconds", 3600), "token.ttl_seconds", low=60, high=86400,
                                integer=True)),
        signing_key_env=_env_name(raw.get("signing_key_env", DEFAULT_SIGNING_KEY_ENV), "token.signing_key_env"),
        previous_signing_key_env=_env_name(previous, "token.previous_signing_key_env") if previous else None,
    )


def _rate_limit(value: Any, path: str) -> RateLimit:
    raw = _object(value, path, required={"requests", "per_seconds"})
    return RateLimit(requests=int(_number(raw["requests"], f"{path}.requests", low=1, integer=True)),
                     per_seconds=int(_number(raw["per_seconds"], f"{path}.per_seconds", low=1, high=31 * 86400,
                                             integer=True)))


def _page(value: Any) -> Page:
    if value is None:
        return Page()
    raw = _object(value, "page", optional={"default_limit", "max_limit"})
    max_limit = int(_number(raw.get("max_limit", 1000), "page.max_limit", low=1, high=100_000, integer=True))
    default = int(_number(raw.get("default_limit", min(100, max_limit)), "page.default_limit", low=1,
                          high=max_limit, integer=True))
    return Page(default_limit=default, max_limit=max_limit)


# --------------------------------------------------------------------------- secrets


def load_secrets(spec: ApiSpec, environ: Mapping[str, str] | None = None) -> Secrets:
    """Read the signing key(s) and every client's secret from the variables the document names.
    A missing or malformed one is a :class:`SpecError` naming the variable, never the value."""
    environ = os.environ if environ is None else environ

    def required(variable: str, what: str) -> str:
        value = environ.get(variable)
        if value is None or value == "":
            raise SpecError(f"{variable} is not set: it must hold {what} (mounted from Secret Manager)")
        return value

    key = required(spec.token.signing_key_env, "the token signing key").encode()
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise SpecError(f"{spec.token.signing_key_env}: the signing key must be at least "
                        f"{MIN_SIGNING_KEY_BYTES} bytes (e.g. 64 hex digits)")
    keys = [key]
    if spec.token.previous_signing_key_env and environ.get(spec.token.previous_signing_key_env):
        keys.append(environ[spec.token.previous_signing_key_env].encode())
    secrets: dict[str, str] = {}
    for client in spec.clients:
        value = required(client.secret_env, f"the secret of client {client.client_id!r}")
        if len(value) < MIN_CLIENT_SECRET_CHARS:
            raise SpecError(f"{client.secret_env}: the secret of client {client.client_id!r} must be at least "
                            f"{MIN_CLIENT_SECRET_CHARS} characters")
        secrets[client.client_id] = value
    return Secrets(signing_keys=tuple(keys), client_secrets=secrets)


# --------------------------------------------------------------------------- helpers


def _object(value: Any, path: str, required: Iterable[str] = (), optional: Iterable[str] = ()) -> dict[str, Any]:
    where = path or "the document"
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected an object, got {type(value).__name__}")
    required, optional = set(required), set(optional)
    for key in sorted(required - value.keys()):
        raise SpecError(f"{path + '.' if path else ''}{key}: required")
    for key in sorted(value.keys() - required - optional):
        raise SpecError(f"{path + '.' if path else ''}{key}: unknown key")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise SpecError(f"{path}: expected a list, got {type(value).__name__}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{path}: expected a non-empty string")
    return value


def _optional_string(value: Any, path: str) -> str | None:
    return None if value is None else _string(value, path)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{path}: expected true or false")
    return value


def _number(value: Any, path: str, low: float | None = None, high: float | None = None,
            integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not float(value).is_integer()):
        raise SpecError(f"{path}: expected {'an integer' if integer else 'a number'}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SpecError(f"{path}: {value} is outside {low}..{high if high is not None else ''}")
    return value


def _optional_int(value: Any, path: str, low: int | None = None) -> int | None:
    return None if value is None else int(_number(value, path, low=low, integer=True))


def _env_name(value: Any, path: str) -> str:
    name = _string(value, path)
    if not _ENV.match(name):
        raise SpecError(f"{path}: {name!r} is not an environment variable name ([A-Z_][A-Z0-9_]*)")
    if name in _RESERVED_ENV:
        raise SpecError(f"{path}: {name} is reserved (Cloud Run or the spec itself uses it)")
    return name


def _scope(value: Any, path: str) -> str:
    scope = _string(value, path)
    if not _SCOPE.match(scope):
        raise SpecError(f"{path}: {scope!r} is not an OAuth 2.0 scope token (printable ASCII, no space, quote "
                        "or backslash)")
    return scope


def _unique(values: Iterable[str], path: str, key: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise SpecError(f"{path}: {key + ' ' if key else ''}{value!r} appears twice")
        seen.add(value)
