"""The SQL the API runs, and running it on BigQuery.

Every query is built from the spec's identifiers (view and column names, checked against
BigQuery's grammar when the spec was parsed, and back-quoted) and the request's values, which go
in only as query parameters (``@f0``, ``@k1``, ...): nothing a client sends is ever part of the
SQL text.

Pages are keyset-paginated: ``ORDER BY`` the source's ``order`` columns ``ASC NULLS FIRST`` and,
after a cursor, ``WHERE`` the row sorts strictly after the cursor's values in that order::

    (c1 > @k0) OR (c1 = @k0 AND c2 > @k1) OR (c1 = @k0 AND c2 = @k1 AND c3 > @k2) ...

with ``IS NULL`` / ``IS NOT NULL`` where the cursor's value is NULL (NULLs sort first). When the
first order column is the partition column and the cursor's value there is not NULL, the
redundant conjunct ``c1 >= @k0`` is added: BigQuery prunes partitions only on such a top-level
condition, not inside the OR. A page asks for ``limit + 1`` rows: the extra one only says whether
there are more (it is not returned).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.api.spec import Field, Source

log = logging.getLogger(__name__)

OPERATORS = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass(frozen=True)
class Filter:
    field: Field
    op: str  # a key of OPERATORS
    value: Any  # parsed (values.parse)


@dataclass(frozen=True)
class Query:
    sql: str
    parameters: tuple[tuple[str, str, Any], ...]  # (name, BigQuery type, value)


@dataclass
class Result:
    rows: list[dict[str, Any]]
    bytes_processed: int | None = None
    cache_hit: bool | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class QueryOptions:
    labels: Mapping[str, str] = field(default_factory=dict)
    max_bytes_billed: int | None = None
    timeout_seconds: float = 30.0


def quote(name: str) -> str:
    """A back-quoted identifier. Names come from the spec (spec.py checked their grammar: no
    back-quote or backslash can be in them); the assert keeps that a fact, not an assumption."""
    assert "`" not in name and "\\" not in name, name
    return f"`{name}`"


def _param_type(field: Field) -> str:
    return field.type


def selected_columns(source: Source, masked: frozenset[str]) -> list[str]:
    """What a query reads: every field but the masked ones, plus the order columns (a masked one
    is needed for the cursor only: it goes into the sealed cursor, never into the answer)."""
    columns = [f.name for f in source.fields if f.name not in masked]
    return columns + [c for c in source.order if c in masked and c not in columns]


def _filters_sql(filters: Sequence[Filter], params: list[tuple[str, str, Any]]) -> list[str]:
    conditions = []
    for item in filters:
        name = f"f{len(params)}"
        params.append((name, _param_type(item.field), item.value))
        conditions.append(f"{quote(item.field.name)} {OPERATORS[item.op]} @{name}")
    return conditions


def _after_sql(source: Source, after: Sequence[Any], params: list[tuple[str, str, Any]]) -> list[str]:
    """The keyset condition: rows strictly after ``after`` in ``source.order`` (NULLs first)."""
    fields = [source.field(name) for name in source.order]
    # Per column, "equal to the cursor's value" and "after it" in ORDER BY ... ASC NULLS FIRST,
    # where BigQuery sorts NaN after NULL and before every other FLOAT64 (and NaN = NaN is false).
    equal: list[str] = []
    greater: list[str] = []
    for item, value in zip(fields, after, strict=True):
        assert item is not None
        column = quote(item.name)
        if value is None:
            equal.append(f"{column} IS NULL")
            greater.append(f"{column} IS NOT NULL")
        elif item.type == "FLOAT64" and isinstance(value, float) and math.isnan(value):
            equal.append(f"IS_NAN({column})")
            greater.append(f"({column} IS NOT NULL AND NOT IS_NAN({column}))")
        else:
            name = f"k{len(params)}"
            params.append((name, _param_type(item), value))
            equal.append(f"{column} = @{name}")
            greater.append(f"{column} > @{name}")
    disjuncts = ["(" + " AND ".join(equal[:i] + [greater[i]]) + ")" for i in range(len(fields))]
    conditions = ["(" + " OR ".join(disjuncts) + ")"]
    first = fields[0]
    if first is not None and first.name == source.partition_field and after[0] is not None:
        # Partition pruning (module docstring): the partition column is DATE/TIMESTAMP/DATETIME.
        conditions.insert(0, greater[0].replace(" > ", " >= ", 1))
    return conditions


def page_query(source: Source, filters: Sequence[Filter], after: Sequence[Any] | None, limit: int,
               masked: frozenset[str]) -> Query:
    params: list[tuple[str, str, Any]] = []
    conditions = _filters_sql(filters, params)
    if after is not None:
        conditions += _after_sql(source, after, params)
    params.append(("page_rows", "INT64", limit + 1))
    sql = (f"SELECT {', '.join(quote(c) for c in selected_columns(source, masked))} FROM {quote(source.view)}"
           + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
           + f" ORDER BY {', '.join(f'{quote(c)} ASC NULLS FIRST' for c in source.order)}"
           + " LIMIT @page_rows")
    return Query(sql, tuple(params))


def row_query(source: Source, key_values: Sequence[Any], masked: frozenset[str]) -> Query:
    """The row with the key ``key_values`` (LIMIT 2: a second one would mean the key is not unique)."""
    params: list[tuple[str, str, Any]] = []
    conditions = []
    for name, value in zip(source.key, key_values, strict=True):
        item = source.field(name)
        assert item is not None
        param = f"k{len(params)}"
        params.append((param, _param_type(item), value))
        conditions.append(f"{quote(name)} = @{param}")
    columns = [f.name for f in source.fields if f.name not in masked]
    sql = (f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(source.view)} "
           f"WHERE {' AND '.join(conditions)} LIMIT 2")
    return Query(sql, tuple(params))


# --------------------------------------------------------------------------- running it


class QueryFailed(Exception):
    """BigQuery refused or failed the query. ``kind``: ``timeout`` | ``too_expensive`` |
    ``not_found`` | ``upstream``; the message is for the log (never shown as is to a client)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def make_client(project: str) -> Any:
    """A BigQuery client for ``project``: bqemulator when ``BIGQUERY_EMULATOR_HOST`` is set
    (``http://host:port``; a bare ``host:port`` gets ``http://``; anonymous credentials, as the
    library has no emulator support of its own), else Application Default Credentials."""
    from google.cloud import bigquery

    host = os.environ.get("BIGQUERY_EMULATOR_HOST", "").strip()
    if not host:
        return bigquery.Client(project=project)
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(project=project, credentials=AnonymousCredentials(),
                           client_options=ClientOptions(api_endpoint=host if "://" in host else f"http://{host}"))


class BigQueryReader:
    """Runs :class:`Query` objects with google-cloud-bigquery (``query_and_wait``, parameterized,
    labelled, optionally capped by ``maximum_bytes_billed``); one client shared by all threads."""

    def __init__(self, project: str, location: str | None = None, client: Any = None) -> None:
        self.project = project
        self.location = location
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.project)
        return self._client

    def run(self, query: Query, options: QueryOptions) -> Result:
        from google.api_core import exceptions
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter(name, kind, value)
                              for name, kind, value in query.parameters],
            labels=dict(options.labels),
            use_legacy_sql=False,
        )
        if options.max_bytes_billed:
            config.maximum_bytes_billed = options.max_bytes_billed
        try:
            rows = self.client.query_and_wait(
                query.sql, job_config=config, location=self.location, project=self.project,
                api_timeout=options.timeout_seconds, wait_timeout=options.timeout_seconds,
                retry=None, job_retry=None)
            result = Result([dict(row.items()) for row in rows])
        except exceptions.NotFound as exc:
            raise QueryFailed("not_found", str(exc)) from None
        except exceptions.BadRequest as exc:
            text = str(exc)
            if "bytes billed" in text.lower() or "bytesBilledLimitExceeded" in text:
                raise QueryFailed("too_expensive", text) from None
            raise QueryFailed("upstream", text) from None
        except (exceptions.DeadlineExceeded, TimeoutError) as exc:
            raise QueryFailed("timeout", str(exc)) from None
        except exceptions.GoogleAPIError as exc:
            raise QueryFailed("upstream", str(exc)) from None
        except Exception as exc:  # requests' timeouts and connection errors
            name = type(exc).__name__
            raise QueryFailed("timeout" if "Timeout" in name else "upstream", f"{name}: {exc}") from None
        result.bytes_processed = getattr(rows, "total_bytes_processed", None)
        result.cache_hit = getattr(rows, "cache_hit", None)
        result.job_id = getattr(rows, "job_id", None)
        return result
