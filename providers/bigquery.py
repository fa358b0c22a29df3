"""BigQuery provider: datasets and tables, through google-cloud-bigquery.

Kinds: ``Kind.BIGQUERY_DATASET`` (name: the dataset id) and ``Kind.BIGQUERY_TABLE`` (name:
``"dataset.table"``). This module is the only one that imports ``google.cloud.bigquery``. It
implements the contract in `providers.base`.

Unlike the Pub/Sub and Storage clients, google-cloud-bigquery does not find an emulator by
itself: `make_client` points it at ``BIGQUERY_EMULATOR_HOST`` when that is set (the one place
that builds a client). Every other difference from bqemulator is marked "EMULATOR DEPARTURE":
`label_patch` (update), `BigQueryProvider._tables_via_get_on_emulator` (observe) and the
non-empty dataset case in `BigQueryProvider.delete`.

Canonical spec (what `observe` returns and what `create`/`update` accept)
--------------------------------------------------------------------------
Dataset::

    {"location": "EU" | "europe-west1", "description": str,   # description only when non-empty
     "default_table_expiration_ms": int | None,               # None: no default expiration
     "default_partition_expiration_ms": int | None}

Table::

    {
        "schema": [                                  # in column order
            {"name": str, "type": str, "mode": str,  # always these three
             "description": str,                     # only when non-empty
             "fields": [...]},                       # only for RECORD, same shape, nested
        ],
        "time_partitioning": {"type": "DAY", "field": str | None,   # None = ingestion time
                              "expiration_ms": int | None}          # None = partitions never expire
                             | None,                                # not partitioned
        "clustering_fields": [str] | None,
        "require_partition_filter": bool,
        "description": str,                          # only when non-empty
    }

Mutability (`IMMUTABLE_FIELDS` holds paths): a dataset's location, and a table's partitioning
*type and field*, cannot change in place; a partition expiration, the partition filter
requirement, clustering, descriptions and the datasets' default expirations can. The planner
compares ``time_partitioning`` only on the sub-keys the desired side declares
(`reconciler.resources.PARTIAL_FIELDS`): an expiration set outside headwater is no difference.

Normalization rules, and why:

* Types use the GoogleSQL names: ``INTEGER``->``INT64``, ``FLOAT``->``FLOAT64``,
  ``BOOLEAN``->``BOOL``, ``DECIMAL``->``NUMERIC``, ``BIGDECIMAL``->``BIGNUMERIC``, and
  ``STRUCT``->``RECORD`` (the API's name for a nested field). The API accepts both spellings and
  answers with whichever it likes. Type parameters (``STRING(10)``, ``NUMERIC(10, 2)``) are not
  part of the spec and are dropped.
* ``mode`` defaults to ``NULLABLE`` (the API omits it or sends it either way).
* Descriptions (tables, datasets, columns) are omitted when unset *or* empty: BigQuery does not
  tell ``None`` from ``""``, so neither does the spec. Desired specs should leave the key out
  rather than declare ``""``.
* Dataset locations: the multi-regions upper case (``US``, ``EU``), regions lower case
  (``europe-west1``), which is how BigQuery reports them; the match is case-insensitive.
* Labels are returned whole. Only datasets and tables labelled ``managed-by=headwater`` are
  observed, and tables only inside managed datasets (headwater creates its tables there).
  `BigQueryProvider.read` gets datasets and tables by name whatever their labels (one get each,
  only for declared ones observe did not find), so the planner can tell one that exists but is
  not headwater's.
* ``would_lose``: a table's row count (``numRows`` of a get), a dataset's table count (a list).

Observe: API calls
------------------
* Datasets: one ``list_datasets`` (filtered server-side on the label, and again here) plus one
  ``get_dataset`` per managed dataset, because ``datasets.list`` carries no description.
  Datasets are few (about three per platform), so a get each is cheaper and faster than the
  alternative, an ``INFORMATION_SCHEMA.SCHEMATA_OPTIONS`` query job per region.
* Tables, real API: one ``list_datasets``, then per managed dataset one ``list_tables`` and one
  query. ``tables.list`` returns labels, time partitioning and clustering but neither schema nor
  description; the query reads those for every table of the dataset at once from
  ``INFORMATION_SCHEMA`` (`information_schema_query`):

  - ``COLUMNS``: top-level columns with ``ordinal_position`` (column order), ``is_nullable``
    (``NO`` = REQUIRED) and ``data_type``, the full GoogleSQL type, nested fields included, e.g.
    ``ARRAY<STRUCT<a STRING, b INT64 NOT NULL>>``: ``ARRAY`` means REPEATED, ``STRUCT`` a RECORD
    with its fields in order, ``NOT NULL`` a REQUIRED nested field (`parse_data_type`);
  - ``COLUMN_FIELD_PATHS``: the description of every column and nested field, by
    ``field_path`` (``items.sku``);
  - ``TABLE_OPTIONS``: the table description (``option_value`` is a string literal).

  So 1000 tables in 3 datasets cost 1 + 3 + 3 calls, not 1000 gets. (Caching full table
  metadata by etag was the alternative; ``tables.list`` returns no per-table etag, so checking
  the cache would itself cost one get per table.) The query needs ``bigquery.jobs.create`` in
  the project and is billed as a metadata query (the 10 MB minimum).

  Issue 14 (time): the engine runs each dataset's part at once (`observe_parts`), and within it
  the list and the query go out together (`BigQueryProvider._observe_tables`): after
  ``datasets.list``, the tables of every dataset take one round trip (plus any further page),
  not two per dataset one after another. A result
  larger than one response (10 MB) is read on with ``jobs.getQueryResults``, each page counted;
  its rows are decoded from the JSON directly (`decode_query_page`, `rows_from_query_page`).
* Tables, emulator: one ``get_table`` per table instead of the query (see
  `BigQueryProvider._tables_via_get_on_emulator` for why).

EMULATOR DEPARTURES (bqemulator 1.4.0)
--------------------------------------
* Observe: ``tables.list`` items carry no labels, partitioning or clustering, and any query
  that touches ``INFORMATION_SCHEMA.COLUMN_FIELD_PATHS`` returns no rows, so the real-API path
  cannot work there: `BigQueryProvider._tables_via_get_on_emulator`. Also, its ``tables.list``
  has no paging: it returns at most ``maxResults`` (1000) tables per dataset.
* Update: removing a label. The real API merges a labels PATCH into the existing labels, so a
  label is removed by sending it as ``null``; bqemulator answers ``null`` with HTTP 500 but
  replaces the whole label map on PATCH. `label_patch` sends what each side needs.
* Retries: a 500 makes the client library's default retry try again for ~600 s. Every request
  here is sent with ``retry=None`` and retried by `providers.errors.call` only (the one retry
  layer, as in the other providers), which also makes `api_calls` count real requests.
* Delete: bqemulator refuses to delete a dataset that still has tables with a 404 where the
  real API answers 400; `BigQueryProvider.delete` keeps that an error instead of "already gone".
* ``update_table(["clustering_fields"])`` with ``None`` sends ``"clustering": null``, which
  removes clustering on the real API; bqemulator ignores it and keeps the old fields.
* Schema evolution is metadata-only on bqemulator: after ``update_table(["schema"])`` adds a
  column, observe shows it, but SELECT or insert on it fails. Nothing to do here; the real-API
  path is the same ``update_table`` call.
* ``requirePartitionFilter`` is dropped by bqemulator (accepted, never stored): on the emulator,
  observe reports it as not observable (`reconciler.resources.unobservable`), so a declared
  value is not replanned forever; on GCP it is read from ``INFORMATION_SCHEMA.TABLE_OPTIONS``.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import re
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from providers.calls import CallCounter
from providers.errors import NotFound, PermanentError, call
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource, unobservable

T = TypeVar("T")

# Per-request deadline (seconds) for metadata calls, and how long a schema query may run.
RPC_TIMEOUT_S = 60.0
QUERY_TIMEOUT_S = 120.0
# Large pages keep a list at one request in practice (the API caps the page size itself).
LIST_PAGE_SIZE = 1000
# How long one jobs.query / jobs.getQueryResults request waits for the job to finish before it
# answers "not yet" (the API's ``timeoutMs``; its default is 10 s), kept under RPC_TIMEOUT_S.
QUERY_WAIT_MS = 50_000

TYPE_ALIASES = {
    "INTEGER": "INT64",
    "FLOAT": "FLOAT64",
    "BOOLEAN": "BOOL",
    "DECIMAL": "NUMERIC",
    "BIGDECIMAL": "BIGNUMERIC",
    "STRUCT": "RECORD",
}
MULTI_REGIONS = frozenset({"US", "EU"})

# A dataset cannot move; a table's partitioning type and column cannot change in place (the real
# API rejects it): those paths force a replacement, which the planner shows. A partition
# expiration (time_partitioning.expiration_ms) is updated in place.
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.BIGQUERY_DATASET: frozenset({"location"}),
    Kind.BIGQUERY_TABLE: frozenset({"time_partitioning.type", "time_partitioning.field"}),
}
# Our keys -> the client's property names, as passed in ``update_dataset/update_table(fields=)``.
UPDATE_FIELDS: dict[Kind, dict[str, str]] = {
    Kind.BIGQUERY_DATASET: {
        "description": "description",
        "default_table_expiration_ms": "default_table_expiration_ms",
        "default_partition_expiration_ms": "default_partition_expiration_ms",
        "labels": "labels",
    },
    Kind.BIGQUERY_TABLE: {
        "schema": "schema",
        "time_partitioning": "time_partitioning",  # its expiration only: type and field are immutable
        "require_partition_filter": "require_partition_filter",
        "clustering_fields": "clustering_fields",
        "description": "description",
        "labels": "labels",
    },
}


# --- The client -------------------------------------------------------------------------------


def emulator_endpoint(host: str) -> str:
    """``127.0.0.1:9050`` -> ``http://127.0.0.1:9050``; a value with a scheme is kept as is."""
    return host if "://" in host else f"http://{host}"


def make_client(project: str) -> bigquery.Client:
    """A BigQuery client for ``project``: the emulator when BIGQUERY_EMULATOR_HOST is set, else GCP.

    The library does not read BIGQUERY_EMULATOR_HOST itself, so we do: the endpoint must be a URL
    (``http://host:port``; a bare ``host:port`` gets ``http://``) and the emulator needs anonymous
    credentials, or the client would look for real ones. Otherwise: Application Default
    Credentials and the real endpoint.
    """
    host = os.environ.get("BIGQUERY_EMULATOR_HOST")
    if not host:
        return bigquery.Client(project=project)
    return bigquery.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=emulator_endpoint(host)),
    )


def on_emulator() -> bool:
    """True when `make_client` points at the emulator (the same variable)."""
    return bool(os.environ.get("BIGQUERY_EMULATOR_HOST"))


# --- Normalization: server objects -> canonical spec (pure functions) ---------------------------


def canonical_type(name: str) -> str:
    """A BigQuery type name in GoogleSQL spelling (``INTEGER`` -> ``INT64``, see TYPE_ALIASES)."""
    upper = name.upper()
    return TYPE_ALIASES.get(upper, upper)


def _field(
    name: str, type_: str, mode: str, description: str | None, fields: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """One canonical schema field, keys in canonical order."""
    field: dict[str, Any] = {"name": name, "type": type_, "mode": mode}
    if description:
        field["description"] = description
    if type_ == "RECORD":
        field["fields"] = fields or []
    return field


def canonical_field(field: Mapping[str, Any] | bigquery.SchemaField) -> dict[str, Any]:
    """A schema field (the API's JSON shape, a SchemaField, or already canonical) made canonical."""
    api = field.to_api_repr() if isinstance(field, bigquery.SchemaField) else field
    type_ = canonical_type(api["type"])
    return _field(
        api["name"],
        type_,
        (api.get("mode") or "NULLABLE").upper(),
        api.get("description"),
        [canonical_field(f) for f in api.get("fields") or ()],
    )


def canonical_schema(fields: Iterable[Mapping[str, Any] | bigquery.SchemaField]) -> list[dict[str, Any]]:
    return [canonical_field(f) for f in fields]


def canonical_location(location: str | None) -> str:
    """``eu`` -> ``EU``, ``EUROPE-WEST1`` -> ``europe-west1`` (see the module docstring)."""
    upper = (location or "").upper()
    return upper if upper in MULTI_REGIONS else upper.lower()


def partitioning_spec(partitioning: bigquery.TimePartitioning | None) -> dict[str, Any] | None:
    if partitioning is None:
        return None
    return {
        "type": (partitioning.type_ or "DAY").upper(),
        "field": partitioning.field or None,
        "expiration_ms": int(partitioning.expiration_ms) if partitioning.expiration_ms else None,
    }


def table_spec(
    schema: list[dict[str, Any]],
    partitioning: bigquery.TimePartitioning | None,
    clustering_fields: Sequence[str] | None,
    description: str | None,
    require_partition_filter: bool | dict[str, str] | None = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schema": schema,
        "time_partitioning": partitioning_spec(partitioning),
        "clustering_fields": list(clustering_fields) if clustering_fields else None,
        "require_partition_filter": (require_partition_filter if isinstance(require_partition_filter, dict)
                                     else bool(require_partition_filter)),
    }
    if description:
        spec["description"] = description
    return spec


def dataset_spec(dataset: bigquery.Dataset) -> dict[str, Any]:
    spec: dict[str, Any] = {"location": canonical_location(dataset.location)}
    if dataset.description:
        spec["description"] = dataset.description
    spec["default_table_expiration_ms"] = int(dataset.default_table_expiration_ms or 0) or None
    spec["default_partition_expiration_ms"] = int(dataset.default_partition_expiration_ms or 0) or None
    return spec


# --- INFORMATION_SCHEMA: the real API's way to read many schemas at once ------------------------

# Tokens of a GoogleSQL type: `quoted` or plain names, < > , and parameter lists like (10, 2).
_TYPE_TOKEN = re.compile(r"\s*(`(?:[^`\\]|\\.)*`|[<>,]|\([^()]*\)|[A-Za-z_][A-Za-z0-9_]*)")


class _TypeParser:
    """Recursive descent over a type such as ``ARRAY<STRUCT<a STRING, b INT64 NOT NULL>>``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[str] = []
        pos, stripped = 0, text.strip()
        while pos < len(stripped):
            match = _TYPE_TOKEN.match(stripped, pos)
            if not match:
                raise ValueError(f"unsupported BigQuery type {text!r}")
            self.tokens.append(match.group(1))
            pos = match.end()
        self.pos = 0

    def peek(self) -> str:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if not token or (expected is not None and token.upper() != expected):
            raise ValueError(f"unsupported BigQuery type {self.text!r}")
        self.pos += 1
        return token

    def type_(self) -> dict[str, Any]:
        """One type, as ``{"type", "mode", "fields"}`` (mode from ARRAY / NOT NULL)."""
        word = self.take().upper()
        if word == "ARRAY":
            self.take("<")
            node = self.type_()
            self.take(">")
            node["mode"] = "REPEATED"
        elif word == "STRUCT":
            self.take("<")
            fields = [self.struct_field()]
            while self.peek() == ",":
                self.take(",")
                fields.append(self.struct_field())
            self.take(">")
            node = {"type": "RECORD", "mode": "NULLABLE", "fields": fields}
        else:
            if self.peek() == "<":  # another parameterized type, e.g. RANGE<DATE>: kept as RANGE
                depth = 0
                while True:
                    token = self.take()
                    depth += {"<": 1, ">": -1}.get(token, 0)
                    if depth == 0:
                        break
            if self.peek().startswith("("):  # STRING(10), NUMERIC(10, 2): parameters not in the spec
                self.take()
            node = {"type": canonical_type(word), "mode": "NULLABLE", "fields": None}
        if self.peek().upper() == "NOT":
            self.take("NOT")
            self.take("NULL")
            if node["mode"] != "REPEATED":  # an ARRAY is never NULL anyway: it stays REPEATED
                node["mode"] = "REQUIRED"
        return node

    def struct_field(self) -> dict[str, Any]:
        name = self.take()
        if name.startswith("`"):
            name = name[1:-1]
        elif not (name[0].isalpha() or name[0] == "_"):
            raise ValueError(f"unsupported BigQuery type {self.text!r}")
        return {"name": name, **self.type_()}

    def end(self) -> None:
        if self.peek():
            raise ValueError(f"unsupported BigQuery type {self.text!r}")


@functools.lru_cache(maxsize=4096)
def _parse(data_type: str) -> dict[str, Any]:
    """A type string as a tree of ``{"type", "mode", "fields": [{"name", ...}] | None}`` nodes.

    Shared between callers (a platform's columns repeat a few dozen types: parsing each of
    12,000 columns of 2,000 tables anew was ~0.1 s of observe, issue 14), so read-only: callers
    build new dicts from it (`_described`) and never change it."""
    parser = _TypeParser(data_type)
    node = parser.type_()
    parser.end()
    return node


def _described(
    name: str, node: Mapping[str, Any], descriptions: Mapping[str, str], path: str
) -> dict[str, Any]:
    """A parsed node as a canonical field, with descriptions looked up by field path (``a.b``)."""
    fields = [_described(f["name"], f, descriptions, f"{path}.{f['name']}") for f in node["fields"] or ()]
    return _field(name, node["type"], node["mode"], descriptions.get(path), fields)


def parse_data_type(data_type: str) -> dict[str, Any]:
    """An INFORMATION_SCHEMA ``data_type`` as a canonical field, minus the field's own name.

    ``ARRAY<STRUCT<a STRING, b INT64 NOT NULL>>`` -> ``{"type": "RECORD", "mode": "REPEATED",
    "fields": [{"name": "a", "type": "STRING", "mode": "NULLABLE"}, {"name": "b", "type":
    "INT64", "mode": "REQUIRED"}]}``. Raises ValueError for a type it cannot read.
    """
    field = _described("", _parse(data_type), {}, "")
    del field["name"]
    return field


def column_spec(
    name: str, data_type: str, is_nullable: str, descriptions: Mapping[str, str]
) -> dict[str, Any]:
    """One top-level column, canonical, from its ``INFORMATION_SCHEMA.COLUMNS`` row.

    ``descriptions`` maps field paths (``col``, ``col.nested``) to their description. The
    top-level mode: REPEATED for an ARRAY, else REQUIRED when ``is_nullable`` is ``NO``.
    Nested modes come from the type: REPEATED for ARRAY, REQUIRED for ``NOT NULL`` (BigQuery
    prints types in DDL syntax; bqemulator drops the ``NOT NULL``, so this is pinned by the
    pure tests, not checked against a server here).
    """
    node = _parse(data_type)
    if node["mode"] == "NULLABLE" and is_nullable.upper() == "NO":
        node = {**node, "mode": "REQUIRED"}  # a copy: the parsed tree is shared
    return _described(name, node, descriptions, name)


# GoogleSQL string-literal escapes: \n-style, \\ \? \" \' \`, octal \ooo, hex \xhh, \uhhhh, \Uhhhhhhhh.
_ESCAPE = re.compile(
    r"\\(?:([abfnrtv\\?\"'`])|([0-7]{3})|[xX]([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))"
)
_CONTROL_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape(match: re.Match[str]) -> str:
    simple, octal, hex2, hex4, hex8 = match.groups()
    if simple:
        return _CONTROL_ESCAPES.get(simple, simple)
    return chr(int(octal, 8)) if octal else chr(int(hex2 or hex4 or hex8, 16))


def option_string(literal: str | None) -> str | None:
    """A ``TABLE_OPTIONS.option_value`` string literal (``"say \\"hi\\""``) as its value (``say "hi"``).

    BigQuery prints string options as GoogleSQL quoted literals; anything else is returned as is.
    """
    if literal is None or len(literal) < 2 or literal[0] not in "\"'" or literal[-1] != literal[0]:
        return literal
    return _ESCAPE.sub(_unescape, literal[1:-1])


def information_schema_query(project: str, dataset: str) -> str:
    """One query for every table's schema and description in ``dataset``.

    Three kinds of rows, told apart by ``row_kind``, so that each row is one fact and nothing is
    multiplied by a join:

    * ``column``: a top-level column (``path`` = its name) with its position, nullability and
      full type. Hidden pseudo-columns (``_PARTITIONTIME``...) are not part of the schema.
    * ``field``: a non-empty description of a column or nested field, by field path.
    * ``table``: a table option (``path`` = its name): the description (a string literal, see
      `option_string`) and ``require_partition_filter`` (``true`` / ``false``).
    """
    views = f"`{project}.{dataset}`.INFORMATION_SCHEMA"
    return f"""
SELECT 'column' AS row_kind, table_name, column_name AS path, ordinal_position, is_nullable, data_type,
       CAST(NULL AS STRING) AS text
FROM {views}.COLUMNS
WHERE is_hidden = 'NO'
UNION ALL
SELECT 'field', table_name, field_path, CAST(NULL AS INT64), CAST(NULL AS STRING), CAST(NULL AS STRING),
       description
FROM {views}.COLUMN_FIELD_PATHS
WHERE description IS NOT NULL AND description != ''
UNION ALL
SELECT 'table', table_name, option_name, CAST(NULL AS INT64), CAST(NULL AS STRING),
       CAST(NULL AS STRING), option_value
FROM {views}.TABLE_OPTIONS
WHERE option_name IN ('description', 'require_partition_filter')
"""


def table_specs_from_information_schema(
    items: Iterable[bigquery.table.TableListItem], rows: Iterable[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Canonical specs of the listed tables, from the list items and `information_schema_query` rows.

    The list items give partitioning and clustering; the rows give schema and description.
    Keyed by table id. A listed table with no column rows gets an empty schema.
    """
    columns: dict[str, list[tuple[int, str, str, str]]] = defaultdict(list)
    descriptions: dict[str, dict[str, str]] = defaultdict(dict)
    table_descriptions: dict[str, str | None] = {}
    partition_filters: dict[str, bool] = {}
    for row in rows:
        table = row["table_name"]
        if row["row_kind"] == "column":
            columns[table].append(
                (row["ordinal_position"], row["path"], row["data_type"], row["is_nullable"])
            )
        elif row["row_kind"] == "field":
            descriptions[table][row["path"]] = row["text"]
        elif row["row_kind"] == "table" and row.get("path") == "require_partition_filter":
            partition_filters[table] = str(row["text"]).strip().lower() == "true"
        elif row["row_kind"] == "table":
            table_descriptions[table] = option_string(row["text"])
    specs = {}
    for item in items:
        table = item.table_id
        schema = [
            column_spec(name, data_type, nullable, descriptions[table])
            for _, name, data_type, nullable in sorted(columns[table])
        ]
        specs[table] = table_spec(
            schema, item.time_partitioning, item.clustering_fields, table_descriptions.get(table),
            partition_filters.get(table, False),
        )
    return specs


def _cell_values(obj: dict[str, Any]) -> Any:
    """`decode_query_page`'s object hook: ``{"v": x}`` -> ``x``, ``{"f": [...]}`` -> ``[...]``."""
    if len(obj) == 1:
        if "v" in obj:
            return obj["v"]
        if "f" in obj:
            return obj["f"]
    return obj


def decode_query_page(content: bytes | str) -> dict[str, Any]:
    """A ``jobs.query`` / ``jobs.getQueryResults`` response body (JSON) as a dict whose ``rows``
    are lists of cell values: the API's ``{"f": [{"v": "a"}, {"v": null}]}`` is ``["a", None]``.

    Collapsed while the JSON is decoded (an object hook), never built as dicts: for 11,000
    rows of 7 columns, 4 MB and ~14 ms instead of 20 MB and ~38 ms (issue 14: a plan decodes
    one such page per dataset, at once). No other object of those responses has the single
    key ``v`` or ``f`` (https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/query).
    """
    return json.loads(content, object_hook=_cell_values)


def rows_from_query_page(page: Mapping[str, Any], schema: Sequence[Mapping[str, Any]] | None = None
                         ) -> list[dict[str, Any]]:
    """The rows of one result page (`decode_query_page`) as dicts keyed by column name.

    ``schema``: the result's ``schema.fields``, when ``page`` carries none. Columns are STRING
    (kept as is) or INTEGER / INT64 (an ``int``); NULL is ``None`` - what the client's rows
    (`google.cloud.bigquery.table.Row`) hold for those types, which is all that
    `information_schema_query` selects. Raises `PermanentError` for another column type.

    Why not the client's rows: they convert every cell through a per-type converter into a
    ``Row``, ~0.2 s of CPU per 1,000 tables' INFORMATION_SCHEMA rows (issue 14);
    ``tests/providers/test_bigquery_query_rows.py`` holds the two equal.
    """
    fields = (page.get("schema") or {}).get("fields") or schema or ()
    names = [field["name"] for field in fields]
    types = [str(field.get("type", "STRING")).upper() for field in fields]
    odd = sorted({t for t in types if t not in ("STRING", "INTEGER", "INT64")})
    if odd:
        raise PermanentError(f"bigquery: metadata query columns of type {', '.join(odd)} are not read here")
    integers = [i for i, t in enumerate(types) if t != "STRING"]
    result = []
    for values in page.get("rows") or ():
        if integers:
            values = list(values)
            for i in integers:
                if values[i] is not None:
                    values[i] = int(values[i])
        result.append(dict(zip(names, values)))
    return result


# --- Canonical spec -> request objects ----------------------------------------------------------


def _api_field(field: Mapping[str, Any]) -> dict[str, Any]:
    api: dict[str, Any] = {
        "name": field["name"],
        "type": field["type"],
        "mode": field.get("mode") or "NULLABLE",
    }
    if field.get("description"):
        api["description"] = field["description"]
    if field.get("fields"):
        api["fields"] = [_api_field(f) for f in field["fields"]]
    return api


def schema_fields(schema: Sequence[Mapping[str, Any]]) -> list[bigquery.SchemaField]:
    """Canonical schema -> the client's SchemaFields (the API accepts the GoogleSQL type names)."""
    return [bigquery.SchemaField.from_api_repr(_api_field(f)) for f in schema]


def time_partitioning(spec: Mapping[str, Any] | None) -> bigquery.TimePartitioning | None:
    if not spec:
        return None
    return bigquery.TimePartitioning(
        type_=spec.get("type") or "DAY", field=spec.get("field"), expiration_ms=spec.get("expiration_ms")
    )


def split_table_name(name: str) -> tuple[str, str]:
    """``"silver.orders"`` -> ``("silver", "orders")``."""
    dataset, _, table = name.partition(".")
    if not dataset or not table or "." in table:
        raise PermanentError(f"bigquery: table name {name!r} is not 'dataset.table'")
    return dataset, table


def label_patch(live: Mapping[str, str], desired: Mapping[str, str]) -> dict[str, str | None]:
    """The ``labels`` to send so that a dataset's or table's labels become ``desired``.

    The real API merges the map into the live labels, so every live label that is not desired
    is sent as ``None`` (JSON null), which removes it.

    EMULATOR DEPARTURE: bqemulator answers a null label with HTTP 500, and replaces the whole
    map on PATCH instead of merging it; there, the desired labels alone do the job.
    """
    if on_emulator():
        return dict(desired)
    return {**{key: None for key in live if key not in desired}, **desired}


def _managed(labels: Mapping[str, str] | None) -> bool:
    return (labels or {}).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


# --- The provider -----------------------------------------------------------------------------


class BigQueryProvider:
    """Datasets and tables of one project. Contract: `providers.base.Provider`.

    ``location`` is where datasets go when their spec names none.
    """

    kinds: tuple[Kind, ...] = (Kind.BIGQUERY_DATASET, Kind.BIGQUERY_TABLE)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, location: str, *, client: bigquery.Client | None = None) -> None:
        self.project = project
        self.location = location
        self._client = client
        self._lock = threading.Lock()
        self._counter = CallCounter("bigquery")

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        return [r for part in self.observe_parts(kind) for r in part()]

    def observe_parts(self, kind: Kind) -> list[Callable[[], list[Resource]]]:
        """``observe(kind)`` as one call per managed dataset (after listing them), which the engine
        runs concurrently (issue 14; `reconciler.engine`, "observe_parts"): a dataset's get, or its
        tables' list and INFORMATION_SCHEMA query."""
        if kind == Kind.BIGQUERY_DATASET:
            return [functools.partial(lambda name: [self._observe_dataset(name)], item.dataset_id)
                    for item in self._managed_datasets()]
        if kind == Kind.BIGQUERY_TABLE:
            return [functools.partial(self._observe_tables, item) for item in self._managed_datasets()]
        raise PermanentError(f"bigquery: unsupported kind {kind!r}")

    def create(self, resource: Resource) -> None:
        # An existing dataset or table is a 409, which call() raises as AlreadyExists.
        client = self._bq()
        if resource.kind == Kind.BIGQUERY_DATASET:
            dataset = bigquery.Dataset(self._dataset_ref(resource.name))
            dataset.location = resource.spec.get("location") or self.location
            dataset.description = resource.spec.get("description") or None
            dataset.default_table_expiration_ms = resource.spec.get("default_table_expiration_ms")
            dataset.default_partition_expiration_ms = resource.spec.get("default_partition_expiration_ms")
            dataset.labels = dict(resource.labels)
            self._rpc("create_dataset", resource.name, lambda: client.create_dataset(dataset, **_OPTS))
        elif resource.kind == Kind.BIGQUERY_TABLE:
            table = bigquery.Table(
                self._table_ref(resource.name), schema=schema_fields(resource.spec.get("schema", ()))
            )
            table.time_partitioning = time_partitioning(resource.spec.get("time_partitioning"))
            table.clustering_fields = resource.spec.get("clustering_fields") or None
            table.description = resource.spec.get("description") or None
            if resource.spec.get("require_partition_filter") is not None:
                table.require_partition_filter = bool(resource.spec["require_partition_filter"])
            table.labels = dict(resource.labels)
            self._rpc("create_table", resource.name, lambda: client.create_table(table, **_OPTS))
        else:
            raise PermanentError(f"bigquery: unsupported kind {resource.kind!r}")

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        names = UPDATE_FIELDS.get(resource.kind)
        if names is None:
            raise PermanentError(f"bigquery: unsupported kind {resource.kind!r}")
        unknown = [f for f in fields if f not in names]
        if unknown:
            raise PermanentError(f"bigquery: cannot update {unknown} of {resource.address} in place")
        if not fields:
            return
        # The client PATCHes exactly the properties named in `fields=`, read from the object.
        api_fields = [names[f] for f in fields]
        client, spec = self._bq(), resource.spec
        if resource.kind == Kind.BIGQUERY_DATASET:
            dataset = self._update_target(resource, fields)
            if "description" in fields:
                dataset.description = spec.get("description") or None
            for key in ("default_table_expiration_ms", "default_partition_expiration_ms"):
                if key in fields:  # None removes the default
                    setattr(dataset, key, spec.get(key))
            self._rpc(
                "update_dataset", resource.name, lambda: client.update_dataset(dataset, api_fields, **_OPTS)
            )
        else:
            table = self._update_target(resource, fields)
            if "schema" in fields:
                table.schema = schema_fields(spec.get("schema", ()))
            if "clustering_fields" in fields:
                table.clustering_fields = spec.get("clustering_fields") or None  # None removes clustering
            if "time_partitioning" in fields:
                # Only the expiration can change (type and field are immutable paths); a None
                # expiration is sent as null, which removes it.
                partitioning = time_partitioning(spec.get("time_partitioning"))
                if partitioning is not None and (spec.get("time_partitioning") or {}).get("expiration_ms") is None:
                    partitioning.expiration_ms = None
                table.time_partitioning = partitioning
            if "require_partition_filter" in fields:
                table.require_partition_filter = bool(spec.get("require_partition_filter"))
            if "description" in fields:
                table.description = spec.get("description") or None
            self._rpc("update_table", resource.name, lambda: client.update_table(table, api_fields, **_OPTS))

    def delete(self, resource: Resource) -> None:
        # Deleting what is already gone succeeds.
        client = self._bq()
        if resource.kind == Kind.BIGQUERY_DATASET:
            ref = self._dataset_ref(resource.name)
            try:
                # delete_contents=False: a dataset that still has tables is an error (the real API
                # answers 400), never emptied here.
                self._rpc(
                    "delete_dataset",
                    resource.name,
                    lambda: client.delete_dataset(ref, delete_contents=False, **_OPTS),
                )
            except NotFound as exc:
                if on_emulator() and "not empty" in str(exc):
                    # EMULATOR DEPARTURE: bqemulator refuses a non-empty dataset with a 404 ("Dataset
                    # ... is not empty") where the real API answers 400; it is not gone.
                    raise PermanentError(
                        f"bigquery.delete_dataset {resource.name}: dataset is not empty"
                    ) from exc
                # already gone: deleting is idempotent
        elif resource.kind == Kind.BIGQUERY_TABLE:
            ref = self._table_ref(resource.name)
            self._rpc(
                "delete_table", resource.name, lambda: client.delete_table(ref, not_found_ok=True, **_OPTS)
            )
        else:
            raise PermanentError(f"bigquery: unsupported kind {resource.kind!r}")

    # -- optional abilities (providers.base) --

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        """Datasets or tables by name, whoever manages them: one get each (only for declared ones
        that observe did not find). Missing ones are left out."""
        found: list[Resource] = []
        for name in names:
            try:
                if kind == Kind.BIGQUERY_DATASET:
                    found.append(self._observe_dataset(name))
                elif kind == Kind.BIGQUERY_TABLE:
                    ref = self._table_ref(name)
                    table = self._rpc("get_table", name, lambda ref=ref: self._bq().get_table(ref, **_OPTS))
                    found.append(Resource(Kind.BIGQUERY_TABLE, name, self._table_spec_of(table), dict(table.labels)))
            except NotFound:
                continue
        return found

    def would_lose(self, resources: Sequence[Resource]) -> Mapping[str, str]:
        """A table's rows (``numRows``: streamed rows not yet in storage may be missing from it), a
        dataset's tables."""
        losses: dict[str, str] = {}
        for resource in resources:
            try:
                if resource.kind == Kind.BIGQUERY_TABLE:
                    ref = self._table_ref(resource.name)
                    table = self._rpc("get_table", resource.name, lambda ref=ref: self._bq().get_table(ref, **_OPTS))
                    losses[resource.address] = f"{int(table.num_rows or 0):,} rows"
                elif resource.kind == Kind.BIGQUERY_DATASET:
                    ref = self._dataset_ref(resource.name)
                    tables = self._list("list_tables", lambda ref=ref: self._bq().list_tables(
                        ref, page_size=LIST_PAGE_SIZE, **_OPTS))
                    losses[resource.address] = f"{len(tables)} tables"
            except NotFound:
                continue
        return losses

    def _table_spec_of(self, table: bigquery.Table) -> dict[str, Any]:
        return table_spec(
            canonical_schema(table.schema), table.time_partitioning, table.clustering_fields, table.description,
            unobservable("bqemulator does not keep require_partition_filter") if on_emulator()
            else table.require_partition_filter)

    # -- optional ability: health (providers.base.HealthReporter; providers/bigquery_health.py) --

    def health(self, resources: Sequence[Resource]) -> dict[str, Any]:
        """The Silver tables' newest record (metadata, no scan) and the Bronze tables' rows."""
        from providers.bigquery_health import table_health

        return table_health(self, resources)

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        """Requests sent so far (each retry attempt and each page counts), by ``bigquery.<method>``."""
        return self._counter.snapshot()

    # -- update --

    def _update_target(self, resource: Resource, fields: Sequence[str]) -> Any:
        """The Dataset/Table object to PATCH: a blank one, or the live one when labels change.

        Labels need the live object: the real API merges a labels PATCH, so removals must be
        named (`label_patch`), and the live object's etag makes the client send If-Match, so a
        concurrent change fails the PATCH instead of being overwritten.
        """
        client = self._bq()
        if resource.kind == Kind.BIGQUERY_DATASET:
            ref = self._dataset_ref(resource.name)
            if "labels" not in fields:
                return bigquery.Dataset(ref)
            target = self._rpc("get_dataset", resource.name, lambda: client.get_dataset(ref, **_OPTS))
        else:
            ref = self._table_ref(resource.name)
            if "labels" not in fields:
                return bigquery.Table(ref)
            target = self._rpc("get_table", resource.name, lambda: client.get_table(ref, **_OPTS))
        target.labels = label_patch(target.labels, resource.labels)
        return target

    # -- observe --

    def _managed_datasets(self) -> list[bigquery.dataset.DatasetListItem]:
        """The project's managed datasets: one paginated list."""
        client = self._bq()
        items = self._list(
            "list_datasets",
            lambda: client.list_datasets(
                self.project,
                filter=f"labels.{MANAGED_BY_KEY}:{MANAGED_BY_VALUE}",
                page_size=LIST_PAGE_SIZE,
                **_OPTS,
            ),
        )
        # The filter is sent for the real API; bqemulator ignores it, and checking is cheap.
        return [item for item in items if _managed(item.labels)]

    def _observe_dataset(self, dataset_id: str) -> Resource:
        # One get per managed dataset: datasets.list carries no description (see module docstring).
        ref = self._dataset_ref(dataset_id)
        dataset = self._rpc("get_dataset", dataset_id, lambda: self._bq().get_dataset(ref, **_OPTS))
        return Resource(Kind.BIGQUERY_DATASET, dataset_id, dataset_spec(dataset), dict(dataset.labels))

    def _observe_tables(self, dataset: bigquery.dataset.DatasetListItem) -> list[Resource]:
        """The managed tables of one dataset: one list and one INFORMATION_SCHEMA query, at once.

        The query needs nothing from the list, so the two requests go out together: a dataset
        costs one round trip, not two (issue 14). The query therefore runs for an empty managed
        dataset too (it used to be skipped when the list came back empty): one more metadata
        query, billed at the 10 MB minimum, per empty managed dataset and observe. An empty
        dataset's tables are none, whatever that query answered; otherwise the list's error, if
        any, is raised first, then the query's.
        """
        client, dataset_id = self._bq(), dataset.dataset_id

        def list_tables() -> list[Any]:
            return self._list(
                "list_tables",
                lambda: client.list_tables(self._dataset_ref(dataset_id), page_size=LIST_PAGE_SIZE, **_OPTS),
            )

        if on_emulator():
            return self._tables_via_get_on_emulator(dataset_id, list_tables())
        # The job must run where the dataset lives; datasets.list returns the location, but
        # DatasetListItem has no property for it.
        location = dataset._properties.get("location")
        query = functools.partial(self._metadata_rows, information_schema_query(self.project, dataset_id),
                                  location=location)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="headwater-bigquery-query") as side:
            # In a copy of this context: a deadline around observe holds for the query too.
            rows = side.submit(contextvars.copy_context().run, query)
            try:
                items = list_tables()
            except BaseException:
                rows.exception()  # wait for the query before raising the list's error
                raise
            if not items:
                rows.exception()  # finished, its answer unused
                return []
            found = rows.result()
        managed = [item for item in items if item.table_type == "TABLE" and _managed(item.labels)]
        specs = table_specs_from_information_schema(managed, found)
        return [
            Resource(
                Kind.BIGQUERY_TABLE, f"{dataset_id}.{item.table_id}", specs[item.table_id], dict(item.labels)
            )
            for item in managed
        ]

    def _tables_via_get_on_emulator(
        self, dataset_id: str, items: Sequence[bigquery.table.TableListItem]
    ) -> list[Resource]:
        """One get_table per listed table, ON THE EMULATOR ONLY.

        EMULATOR DEPARTURE: bqemulator's ``tables.list`` items carry no labels, partitioning or
        clustering, and a query touching ``INFORMATION_SCHEMA.COLUMN_FIELD_PATHS`` returns no
        rows at all (its ``COLUMNS`` view has no descriptions and drops NOT NULL from nested
        types), so neither half of the real-API path can work there. Local platforms are
        small; on GCP this O(tables) path is never taken.
        """
        client = self._bq()

        def fetch(item: bigquery.table.TableListItem) -> Resource | None:
            name = f"{dataset_id}.{item.table_id}"
            table = self._rpc("get_table", name, lambda: client.get_table(item.reference, **_OPTS))
            if table.table_type != "TABLE" or not _managed(table.labels):
                return None
            spec = table_spec(
                canonical_schema(table.schema),
                table.time_partitioning,
                table.clustering_fields,
                table.description,
                # EMULATOR DEPARTURE: bqemulator drops requirePartitionFilter (module docstring).
                unobservable("bqemulator does not keep require_partition_filter"),
            )
            return Resource(Kind.BIGQUERY_TABLE, name, spec, dict(table.labels))

        # Concurrent gets keep local plans of a few hundred tables interactive.
        with ThreadPoolExecutor(max_workers=8) as pool:
            return [r for r in pool.map(fetch, items) if r is not None]

    # -- plumbing --

    def _dataset_ref(self, dataset_id: str) -> str:
        return f"{self.project}.{dataset_id}"

    def _table_ref(self, name: str) -> str:
        dataset, table = split_table_name(name)
        return f"{self.project}.{dataset}.{table}"

    def _bq(self) -> bigquery.Client:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.project)
            return self._client

    def _count(self, method: str) -> None:
        self._counter.count(method)

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)

    def _list(self, method: str, start: Callable[[], Any]) -> list[Any]:
        """Every item of a paginated list; each page fetched counts as one request."""

        def attempt() -> list[Any]:
            items: list[Any] = []
            for page in start().pages:  # each page is one request, sent as we get to it
                self._count(method)
                items.extend(page)
            return items

        # A retry restarts the listing from the first page: simple, and a list is read-only.
        return call(attempt, f"bigquery.{method} {self.project}")

    def _metadata_rows(self, sql: str, *, location: str | None) -> list[dict[str, Any]]:
        """The rows of a metadata query whose columns are STRING or INT64, as dicts
        (`rows_from_query_page`), read from the REST API's JSON pages (`decode_query_page`).

        The requests are those ``Client.query_and_wait`` sends (``jobs.query``, standard SQL,
        lossless timestamps, a request id), through the client's own connection
        (``Client._connection.api_request``: its endpoint, credentials and user agent; no retry
        underneath, `providers.errors.call` is the one retry layer), minus the client's per-cell
        conversion into ``Row`` objects. Requests, each counted ``query``: one ``jobs.query``;
        while the job runs, one ``jobs.getQueryResults`` per wait of up to `QUERY_WAIT_MS`; then one
        ``jobs.getQueryResults`` per further page (a response holds at most 10 MB of rows:
        https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/query, ``rows[]``). A job not
        finished after `QUERY_TIMEOUT_S` is a temporary error (the job, a metadata read, is left to
        end by itself, not cancelled). A retry starts a new job.
        """
        client = self._bq()

        def attempt() -> list[dict[str, Any]]:
            started = time.monotonic()
            body: dict[str, Any] = {"query": sql, "useLegacySql": False, "requestId": str(uuid.uuid4()),
                                    "formatOptions": {"useInt64Timestamp": True}, "timeoutMs": QUERY_WAIT_MS}
            if location:
                body["location"] = location
            self._count("query")
            page = decode_query_page(client._connection.api_request(
                method="POST", path=f"/projects/{self.project}/queries", data=body, timeout=RPC_TIMEOUT_S,
                expect_json=False))
            job = page.get("jobReference") or {}
            schema = (page.get("schema") or {}).get("fields")
            rows: list[dict[str, Any]] = []
            while True:
                # "If rows or totalRows are present, this will always be true" (the API reference).
                if page.get("jobComplete", "rows" in page or "totalRows" in page):
                    schema = (page.get("schema") or {}).get("fields") or schema
                    rows.extend(rows_from_query_page(page, schema))
                    token = page.get("pageToken")
                    if not token:
                        return rows
                    params = {"pageToken": token}
                elif time.monotonic() - started > QUERY_TIMEOUT_S:
                    raise gexc.DeadlineExceeded(
                        f"query job {job.get('jobId')} did not finish within {QUERY_TIMEOUT_S:.0f} s")
                else:  # wait for the job; the answer that says it is complete carries the first page
                    params = {}
                if not job.get("jobId"):
                    raise PermanentError(f"bigquery.query {self.project}: a result page without a job to ask for more")
                params.update({"timeoutMs": QUERY_WAIT_MS, "formatOptions.useInt64Timestamp": True})
                if job.get("location") or location:
                    params["location"] = job.get("location") or location
                self._count("query")
                page = decode_query_page(client._connection.api_request(
                    method="GET", path=f"/projects/{job.get('projectId') or self.project}/queries/{job['jobId']}",
                    query_params=params, timeout=RPC_TIMEOUT_S, expect_json=False))

        return call(attempt, f"bigquery.query {self.project}")

    def _query(self, sql: str, *, location: str | None) -> list[dict[str, Any]]:
        """Run a (metadata) query and return its rows as dicts: one ``jobs.query`` request, plus
        one per further result page. (Polling of a query slower than ~10 s is the client's and not
        counted.)"""
        client = self._bq()

        def attempt() -> list[dict[str, Any]]:
            self._count("query")
            rows = client.query_and_wait(
                sql,
                location=location,
                project=self.project,
                api_timeout=RPC_TIMEOUT_S,
                wait_timeout=QUERY_TIMEOUT_S,
                retry=None,
                job_retry=None,
            )
            result: list[dict[str, Any]] = []
            for number, page in enumerate(rows.pages):
                if number:  # the first page came with the query
                    self._count("query")
                # row[key], not row.items(): items() deep-copies every value of every row (the
                # rows are ours alone; ~0.15 s of a 1,000-source observe).
                result.extend({key: row[key] for key in row.keys()} for row in page)
            return result

        return call(attempt, f"bigquery.query {self.project}")


# Sent with every request: retries are providers.errors.call's job, not the client library's
# (whose default retries a 500 for ~600 s).
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
