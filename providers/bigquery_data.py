"""Rows in BigQuery, as data: the demo seeds reference tables and counts what the jobs wrote.

`providers.bigquery` manages datasets and tables (resources); this module reads and writes rows,
for ``headwater demo`` and the tests that move real data. Clients come from
`providers.bigquery.make_client` (the emulator when ``BIGQUERY_EMULATOR_HOST`` is set).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.cloud import bigquery

from providers.bigquery import make_client
from providers.errors import NotFound, call

TIMEOUT_S = 60.0


def query(project: str, sql: str) -> list[dict[str, Any]]:
    client = make_client(project)
    return call(lambda: [dict(row.items()) for row in client.query_and_wait(sql, api_timeout=TIMEOUT_S,
                                                                           wait_timeout=TIMEOUT_S, retry=None,
                                                                           job_retry=None)],
                f"bigquery.query {project}")


def count_rows(project: str, table: str) -> int:
    """Rows in ``project.dataset.table`` (0 when the table does not exist)."""
    try:
        return int(query(project, f"SELECT COUNT(*) AS n FROM `{table}`")[0]["n"])
    except NotFound:
        return 0


def ensure_table_with_rows(project: str, table: str, schema: Sequence[Mapping[str, Any]],
                           rows: Sequence[Mapping[str, Any]]) -> None:
    """Create ``project.dataset.table`` with ``schema`` unless it exists (its dataset too: a reference
    table lives outside headwater's datasets); insert ``rows`` when it is empty."""
    client = make_client(project)
    fields = [bigquery.SchemaField.from_api_repr(dict(f)) for f in schema]
    dataset = table.rsplit(".", 1)[0]
    call(lambda: client.create_dataset(dataset, exists_ok=True, retry=None, timeout=TIMEOUT_S),
         f"bigquery.create_dataset {dataset}")
    call(lambda: client.create_table(bigquery.Table(table, schema=fields), exists_ok=True, retry=None,
                                     timeout=TIMEOUT_S), f"bigquery.create_table {table}")
    if rows and count_rows(project, table) == 0:
        errors = call(lambda: client.insert_rows_json(table, [dict(r) for r in rows], retry=None,
                                                      timeout=TIMEOUT_S), f"bigquery.insert {table}")
        if errors:
            raise RuntimeError(f"inserting into {table}: {errors[:3]}")
