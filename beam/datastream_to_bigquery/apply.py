"""The apply step: a batch of one table's changes -> its Bronze change log and its Silver table.

Per table and batch (at most `CHUNK` events), two BigQuery query jobs, one after the other; the
events travel as one JSON text parameter (``@events``: cheap to build, one ``orjson.dumps``), and
the SQL gives each value its column's type::

    -- 1. Bronze: every event of the batch that the change log does not hold yet (by event id),
    --    valid or not, with the event as received.
    INSERT INTO `<bronze>` (<table columns>, _event_id, _change_type, ...)
    SELECT <typed extraction of each column>, ... FROM UNNEST(JSON_QUERY_ARRAY(@events)) AS e
    WHERE JSON_VALUE(e, '$.e') NOT IN (SELECT _event_id FROM `<bronze>` WHERE _event_id IN UNNEST(@event_ids));

    -- 2. Silver: for each primary key the batch touched, the newest valid change the change log
    --    holds, in source order, applied only when it is newer than what Silver has.
    MERGE `<silver>` AS T
    USING (SELECT * EXCEPT(_rn) FROM (
             SELECT <columns>, _change_position, _deleted, ..., ROW_NUMBER() OVER (
               PARTITION BY _primary_key ORDER BY _change_position DESC, _event_id DESC) AS _rn
             FROM `<bronze>` WHERE _valid AND _primary_key IN UNNEST(@keys))
           WHERE _rn = 1) AS S
    ON T.<pk> = S.<pk> [AND ...]
    WHEN MATCHED AND S._change_position > T._change_position AND S._deleted THEN DELETE
    WHEN MATCHED AND S._change_position > T._change_position THEN UPDATE SET ...
    WHEN NOT MATCHED AND NOT S._deleted THEN INSERT (...) VALUES (...)

Why this is right whatever order events arrive in (files are read concurrently; Datastream
itself writes each table's files independently):

* Silver is decided from the change log, not from the batch: a late, older event lands in Bronze
  (it is history) but the newest event for its key is still the newest, so Silver does not move
  (``>`` is strict: an equal position is the same change). A delete is a change like the others:
  the row goes, and an older update that arrives after it finds the delete newer and does not
  bring the row back.
* Replays are idempotent: a file read again (a redelivered event, a claim taken over after a
  crash, a reader restart that writes an event twice) inserts no Bronze row whose event id is
  there, and the MERGE finds Silver already at that position.
* A failure between the two statements leaves Bronze ahead of Silver; the retried bundle inserts
  nothing into Bronze and runs the MERGE. Two MERGEs on one table at once: BigQuery serializes
  them or fails one with a concurrent-update error (`CONFLICT_RETRIES`, then the bundle fails
  and Beam retries it).

Only valid events move Silver: an event that did not fit the schema is in Bronze (``_valid``
false, ``_invalid_reason``) and a dead letter, and Silver keeps the newest valid version.

Cost on BigQuery: each batch reads the change log for the batch's keys and event ids (the table
is clustered by ``_primary_key``). Bronze is written by DML, not the streaming API, so that the
MERGE that follows sees every row the INSERT wrote - streamed rows are only "available within
seconds" - and the change log never holds a streaming buffer that DML could not touch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from beam.common.spec import CdcTable, Field, PipelineSpec
from beam.datastream_to_bigquery.events import Change

log = logging.getLogger(__name__)

CHUNK = 500  # events per script: the @events text stays well under BigQuery's request limits
CONFLICT_RETRIES = 5

# A value's SQL from its canonical JSON text (beam.common.validation's canonical forms).
_FROM_TEXT = {
    "STRING": "{v}",
    "INT64": "CAST({v} AS INT64)",
    "FLOAT64": "CAST({v} AS FLOAT64)",
    "NUMERIC": "CAST({v} AS NUMERIC)",
    "BIGNUMERIC": "CAST({v} AS BIGNUMERIC)",
    "BOOL": "CAST({v} AS BOOL)",
    "TIMESTAMP": "CAST({v} AS TIMESTAMP)",
    "DATE": "CAST({v} AS DATE)",
    "DATETIME": "CAST({v} AS DATETIME)",
    "TIME": "CAST({v} AS TIME)",
    "BYTES": "FROM_BASE64({v})",
    "JSON": "PARSE_JSON({v})",
    "GEOGRAPHY": "ST_GEOGFROMTEXT({v})",
}

# (Bronze column, SQL from the event element e) for headwater's own change-log columns.
_BRONZE_META = (
    ("_event_id", "JSON_VALUE(e, '$.e')"),
    ("_change_type", "JSON_VALUE(e, '$.t')"),
    ("_deleted", "CAST(JSON_VALUE(e, '$.d') AS BOOL)"),
    ("_valid", "CAST(JSON_VALUE(e, '$.v') AS BOOL)"),
    ("_invalid_reason", "JSON_VALUE(e, '$.x')"),
    ("_source_timestamp", "CAST(JSON_VALUE(e, '$.s') AS TIMESTAMP)"),
    ("_change_position", "JSON_VALUE(e, '$.p')"),
    ("_primary_key", "JSON_VALUE(e, '$.k')"),
    ("_payload", "JSON_VALUE(e, '$.y')"),
    ("_origin", "JSON_VALUE(e, '$.o')"),
    ("_ingested_at", "CURRENT_TIMESTAMP()"),
)


def quote_table(ref: str) -> str:
    return f"`{ref}`"


def quote(name: str) -> str:
    return f"`{name}`"


def extraction(f: Field) -> str:
    """SQL reading field ``f`` of an event element's row (``e``, JSON text) as its column type."""
    path = f"'$.r.{f.name}'"  # field names are [A-Za-z_][A-Za-z0-9_]*: no quoting needed in a path
    if f.mode == "REPEATED":
        item = _FROM_TEXT[f.type].format(v="x")
        return f"ARRAY(SELECT {item} FROM UNNEST(JSON_VALUE_ARRAY(e, {path})) AS x)"
    return _FROM_TEXT[f.type].format(v=f"JSON_VALUE(e, {path})")


def bronze_insert_sql(table: CdcTable) -> str:
    columns = [quote(f.name) for f in table.fields] + [quote(name) for name, _ in _BRONZE_META]
    values = [extraction(f) for f in table.fields] + [sql for _, sql in _BRONZE_META]
    bronze = quote_table(table.bronze_table)
    return (f"INSERT INTO {bronze} ({', '.join(columns)})\n"
            f"SELECT {', '.join(values)}\n"
            f"FROM UNNEST(JSON_QUERY_ARRAY(@events)) AS e\n"
            f"WHERE JSON_VALUE(e, '$.e') NOT IN (SELECT `_event_id` FROM {bronze} "
            f"WHERE `_event_id` IN UNNEST(@event_ids))")


def silver_merge_sql(table: CdcTable) -> str:
    names = [f.name for f in table.fields]
    cols = ", ".join(quote(n) for n in names)
    meta_in = ("`_change_position`, `_deleted`, `_source_timestamp`, `_change_type`, `_origin` AS `_message_id`")
    latest = (f"SELECT * EXCEPT(`_rn`) FROM (SELECT {cols}, {meta_in}, ROW_NUMBER() OVER ("
              f"PARTITION BY `_primary_key` ORDER BY `_change_position` DESC, `_event_id` DESC) AS `_rn` "
              f"FROM {quote_table(table.bronze_table)} WHERE `_valid` AND `_primary_key` IN UNNEST(@keys)) "
              f"WHERE `_rn` = 1")
    on = " AND ".join(f"T.{quote(k)} = S.{quote(k)}" for k in table.primary_key)
    meta = ["_change_position", "_source_timestamp", "_change_type", "_message_id"]
    sets = [f"{quote(n)} = S.{quote(n)}" for n in names if n not in table.primary_key]
    sets += [f"{quote(n)} = S.{quote(n)}" for n in meta]
    sets += ["`_ingested_at` = CURRENT_TIMESTAMP()", "`_schema_version` = @schema_version"]
    insert_cols = [quote(n) for n in (*names, *meta)] + ["`_ingested_at`", "`_schema_version`"]
    insert_vals = [f"S.{quote(n)}" for n in (*names, *meta)] + ["CURRENT_TIMESTAMP()", "@schema_version"]
    return (f"MERGE {quote_table(table.silver_table)} AS T\n"
            f"USING ({latest}) AS S\n"
            f"ON {on}\n"
            f"WHEN MATCHED AND S.`_change_position` > T.`_change_position` AND S.`_deleted` THEN DELETE\n"
            f"WHEN MATCHED AND S.`_change_position` > T.`_change_position` THEN UPDATE SET {', '.join(sets)}\n"
            f"WHEN NOT MATCHED AND NOT S.`_deleted` THEN INSERT ({', '.join(insert_cols)}) "
            f"VALUES ({', '.join(insert_vals)})")


@dataclass(frozen=True)
class Statement:
    """The two statements of one table's batch, and their parameters."""

    table: int
    insert_sql: str
    merge_sql: str | None  # None when the batch holds no valid change
    events: str  # the @events JSON text
    event_ids: list[str]
    keys: list[str]
    schema_version: str | None

    def insert_parameters(self) -> list[Any]:
        from google.cloud import bigquery

        return [bigquery.ScalarQueryParameter("events", "STRING", self.events),
                bigquery.ArrayQueryParameter("event_ids", "STRING", self.event_ids)]

    def merge_parameters(self) -> list[Any]:
        from google.cloud import bigquery

        return [bigquery.ArrayQueryParameter("keys", "STRING", self.keys),
                bigquery.ScalarQueryParameter("schema_version", "STRING", self.schema_version)]


@dataclass
class Applied:
    """What one apply did, for the counters."""

    statements: int = 0
    events: int = 0
    valid: int = 0
    keys: int = 0
    per_table: dict[str, int] = field(default_factory=dict)


class ChangeApplier:
    """Changes -> statements (`statements`, pure) -> BigQuery (`apply`, through ``run``: a
    callable taking a `Statement`; default the BigQuery client's query job)."""

    def __init__(self, spec: PipelineSpec, run: Callable[[Statement], Any] | None = None) -> None:
        assert spec.cdc is not None
        self.tables = spec.cdc.tables
        self._insert = [bronze_insert_sql(t) for t in self.tables]
        self._merge = [silver_merge_sql(t) for t in self.tables]
        self.run = run

    def statements(self, changes: Iterable[Change]) -> list[Statement]:
        by_table: dict[int, list[Change]] = {}
        for change in changes:
            by_table.setdefault(change.table, []).append(change)
        out = []
        for index in sorted(by_table):
            batch = by_table[index]
            for start in range(0, len(batch), CHUNK):
                out.append(self._statement(index, batch[start:start + CHUNK]))
        return out

    def _statement(self, index: int, chunk: Sequence[Change]) -> Statement:
        seen: set[str] = set()
        elements, keys = [], set()
        for change in chunk:
            if change.event_id in seen:  # the same event twice in one batch: once
                continue
            seen.add(change.event_id)
            elements.append(change.bronze)
            if change.valid:
                keys.add(change.key)
        return Statement(index, self._insert[index], self._merge[index] if keys else None,
                         orjson.dumps(elements).decode(), sorted(seen), sorted(keys),
                         self.tables[index].schema_version)

    def apply(self, changes: Iterable[Change]) -> Applied:
        done = Applied()
        for statement in self.statements(changes):
            self._run(statement)
            done.statements += 1
            done.events += len(statement.event_ids)
            done.keys += len(statement.keys)
            table = self.tables[statement.table].object
            done.per_table[table] = done.per_table.get(table, 0) + len(statement.event_ids)
        return done

    def _run(self, statement: Statement) -> None:
        if self.run is None:
            raise RuntimeError("ChangeApplier has nothing to run statements with")
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self.run(statement)
                return
            except Exception as exc:  # noqa: BLE001 - only a concurrent-update conflict is retried here
                if attempt == CONFLICT_RETRIES or not _is_conflict(exc):
                    raise
                log.info("concurrent update of %s; retrying (%d)", self.tables[statement.table].silver_table,
                         attempt + 1)
                time.sleep(0.5 * (attempt + 1))


def _is_conflict(exc: Exception) -> bool:
    text = str(exc).lower()
    return "concurrent update" in text or "could not serialize access" in text


def bigquery_runner(project: str | None) -> Callable[[Statement], Any]:
    """Runs a statement's two query jobs, the INSERT then the MERGE, waiting for each (errors raise)."""
    from google.cloud import bigquery

    from beam.common.clients import bigquery_client

    client = bigquery_client(project)

    def run(statement: Statement) -> Any:
        config = bigquery.QueryJobConfig(query_parameters=statement.insert_parameters())
        client.query(statement.insert_sql, job_config=config).result()
        if statement.merge_sql is not None:
            config = bigquery.QueryJobConfig(query_parameters=statement.merge_parameters())
            client.query(statement.merge_sql, job_config=config).result()

    return run
