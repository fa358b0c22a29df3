"""Health signals of a source's tables (`providers.base.HealthReporter` for
`providers.bigquery.BigQueryProvider`): signals only, no verdicts (`reconciler.health` judges).

Freshness comes from metadata that costs no scan: one ``tables.get`` of each of the source's
tables that hold ingested records (those with headwater's ``_ingested_at`` column: its Silver
table, a ``database_cdc`` source's Silver table per source table, and Bronze tables that carry
the column; `reconciler.health` picks the Silver ones):

* ``last_record_at`` = the later of ``lastModifiedTime`` (the last change to the table's data
  or metadata: a load, a DML statement, a flush of streamed rows) and, while streamed rows are
  still buffered, ``streamingBuffer.oldestEntryTime``. The ingestion pipelines stream their rows
  (``insertAll``, beam/common/sinks.py), so while data flows the buffer's oldest entry is at most
  its flush delay old (typically minutes); when data stops, the buffer flushes and
  ``lastModifiedTime`` moves to the flush. Either way the estimate is never *newer* than the
  newest record: a breach may be reported up to the buffer's flush delay early, never late. A
  metadata change by headwater (a new column, a label) also counts as a change: a false "fresh"
  at most once per apply. Verified against the client's types here, and only on the real
  service for the timing of ``lastModifiedTime`` under streaming inserts.
* ``created_at``: the table's creation, the reference while no record has arrived.

Records received come from the Bronze tables (``<source_id>_raw``: every record the pipeline
read, good or bad): ``rows`` = ``numRows`` plus the streaming buffer's ``estimatedRows``.

One ``tables.get`` per such table per check (two for most sources), eight at a time: API calls
grow with sources, bytes scanned stay 0.

EMULATOR DEPARTURE: bqemulator never moves ``lastModifiedTime`` after creation and has no
streaming buffer. On the emulator only, ``last_record_at`` is read with a query, ``SELECT
MAX(_ingested_at)`` on the Silver table (a scan, which costs nothing there); ``numRows`` it keeps.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any

from reconciler.health import Observation
from reconciler.resources import SOURCE_KEY, Kind, Resource

INGESTED_AT = "_ingested_at"
PARALLEL_GETS = 8
METADATA_BASIS = "Silver table metadata: lastModifiedTime / streamingBuffer.oldestEntryTime"
EMULATOR_BASIS = "MAX(_ingested_at) of the Silver table (a query: BigQuery emulator)"


def table_roles(resources: Sequence[Resource]) -> dict[str, tuple[str, Resource]]:
    """``{address: (role, resource)}`` of the tables a source's health reads: those holding ingested
    records (headwater's ``_ingested_at`` column: Silver tables, and Bronze ones that have it) are
    read for freshness and rows ("records"); Bronze ``<id>_raw`` / ``*_changes`` tables for rows
    ("bronze"). Which dataset is which zone is the reconciler's to judge (`reconciler.health`)."""
    roles: dict[str, tuple[str, Resource]] = {}
    for resource in resources:
        source = resource.labels.get(SOURCE_KEY)
        if resource.kind != Kind.BIGQUERY_TABLE or not source or "." not in resource.name:
            continue
        table = resource.name.split(".", 1)[1]
        columns = {f.get("name") for f in resource.spec.get("schema") or () if isinstance(f, dict)}
        if INGESTED_AT in columns:
            roles[resource.address] = ("records", resource)
        elif table == f"{source}_raw" or (table.startswith(source) and table.endswith("_changes")):
            roles[resource.address] = ("bronze", resource)
    return roles


def table_health(provider: Any, resources: Sequence[Resource]) -> dict[str, Observation]:
    from providers.bigquery import on_emulator
    from providers.errors import NotFound

    roles = table_roles(resources)
    emulator = on_emulator()

    def observe(item: tuple[str, tuple[str, Resource]]) -> tuple[str, Observation | None]:
        address, (role, resource) = item
        try:
            table = provider._rpc("get_table", resource.name,
                                  lambda: provider._bq().get_table(provider._table_ref(resource.name), retry=None,
                                                                   timeout=60.0))
        except NotFound:
            return address, None  # missing: the plan says so
        buffer = table.streaming_buffer
        rows = (table.num_rows or 0) + ((buffer.estimated_rows or 0) if buffer is not None else 0)
        if role == "bronze":
            return address, Observation(signals={"rows": rows})
        signals: dict[str, Any] = {"created_at": _ts(table.created)}
        if emulator:
            # EMULATOR DEPARTURE (module docstring): lastModifiedTime never moves there.
            result = provider._query(f"SELECT MAX(`{INGESTED_AT}`) AS newest FROM `{provider._table_ref(resource.name)}`",
                                     location=None)
            newest = result[0].get("newest") if result else None
            signals.update(last_record_at=_ts(newest), freshness_basis=EMULATOR_BASIS)
        else:
            candidates = [_ts(table.modified)]
            if table.streaming_buffer is not None:
                candidates.append(_ts(table.streaming_buffer.oldest_entry_time))
            known = [c for c in candidates if c is not None]
            # A table never written to keeps lastModifiedTime at its creation: no record yet.
            newest = max(known) if known else None
            if newest is not None and signals["created_at"] is not None and newest <= signals["created_at"] \
                    and not table.num_rows and table.streaming_buffer is None:
                newest = None
            signals.update(last_record_at=newest, freshness_basis=METADATA_BASIS)
        signals["rows"] = rows
        return address, Observation(signals=signals)

    observations: dict[str, Observation] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_GETS) as pool:
        for address, observation in pool.map(observe, roles.items()):
            if observation is not None:
                observations[address] = observation
    return observations


def _ts(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return value.timestamp()
