"""bigquery_to_bigquery: rebuild a Gold table from Silver with the connector's joins and aggregates.

The seed's "Aggregation Pipeline": read Silver, join, aggregate, write Gold. The work is one SQL
statement compiled from the spec's ``gold`` block (``beam.common.gold``), executed *by
BigQuery*. Each run rebuilds the Gold table's contents, so re-running is idempotent: when the
table exists (the reconciler's, with its partitioning and clustering) its rows are replaced in
one transaction (``DELETE`` + ``INSERT ... SELECT``, the columns taken by name from the
table); when it does not, ``CREATE TABLE ... AS SELECT`` makes it. (A query job with a
destination table would be the classic way; the BigQuery emulator ignores the destination.) Streaming every Silver row through Beam
workers to aggregate them would be slower and dearer than letting BigQuery do it, and Beam's
BigQuery IO cannot reach the emulator anyway.

It is still a Beam pipeline - a single-element one - so that it is launched, labelled, observed
and stopped exactly like the other templates (as a Dataflow job, or on the local runner), and
it reports a ``gold_rows_written`` counter.

    python -m beam.bigquery_to_bigquery --source_spec spec.json
"""

import argparse
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from beam.common.clients import bigquery_client
from beam.common.gold import compile_gold_sql
from beam.common.runner import make_pipeline, parse, run_pipeline
from beam.common.spec import PipelineSpec, load_spec
from beam.common.transforms import counter


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam.bigquery_to_bigquery", description=__doc__.split("\n\n")[0])
    p.add_argument("--source_spec", required=True, help="The pipeline spec: inline JSON, a file path or a gs:// URI")
    return p


class RunGoldQuery(beam.DoFn):
    """Runs the compiled SELECT into the Gold table; outputs the number of rows written."""

    def __init__(self, project: str | None, destination: str) -> None:
        self.project = project
        self.destination = destination

    def setup(self) -> None:
        self.client = bigquery_client(self.project)
        self.rows = counter("gold_rows_written")

    def process(self, select: str) -> Iterator[int]:
        from google.api_core.exceptions import NotFound

        log = logging.getLogger(__name__)
        table = f"`{self.destination}`"  # checked by the spec parser: no backquotes inside
        try:
            existing = self.client.get_table(self.destination)
        except NotFound:
            existing = None
        if existing is None:
            script = f"CREATE TABLE {table} AS\n{select}"
        else:
            # Keep the table the reconciler created (partitioning, clustering, labels) and
            # replace its rows atomically: readers see the old rows or the new, never none.
            columns = ", ".join(f"`{f.name}`" for f in existing.schema)
            script = (
                "BEGIN TRANSACTION;\n"
                f"DELETE FROM {table} WHERE TRUE;\n"
                f"INSERT INTO {table} ({columns})\nSELECT {columns} FROM (\n{select}\n);\n"
                "COMMIT TRANSACTION;"
            )
        self.client.query(script).result()
        n = next(iter(self.client.query(f"SELECT COUNT(*) AS n FROM {table}").result())).n
        log.info("gold table %s rebuilt: %d rows", self.destination, n)
        self.rows.inc(n)
        yield n


def build(pipeline: beam.Pipeline, spec: PipelineSpec) -> beam.PCollection:
    if spec.features is not None:  # issue 12: a point-in-time feature table (beam/common/features.py)
        from beam.common.features import compile_features_sql

        assert spec.silver_table is not None, "$.silver.table: the features read Silver"
        sql = compile_features_sql(spec.table_ref(spec.silver_table), spec.features)
        return (pipeline | "FeaturesSql" >> beam.Create([sql])
                | "RunFeaturesQuery" >> beam.ParDo(RunGoldQuery(spec.project, spec.features.table)))
    sql = compile_gold_sql(spec)  # compiled at launch: a bad expression fails before any job runs
    assert spec.gold is not None
    return (
        pipeline
        | "GoldSql" >> beam.Create([sql])
        | "RunGoldQuery" >> beam.ParDo(RunGoldQuery(spec.project, spec.table_ref(spec.gold.table)))
    )


def run(argv: Sequence[str] | None = None) -> Any:
    args, beam_args = parse(parser(), argv)
    spec = load_spec(args.source_spec)
    pipeline = make_pipeline(beam_args, streaming=False)
    build(pipeline, spec)
    return run_pipeline(pipeline, beam_args)
