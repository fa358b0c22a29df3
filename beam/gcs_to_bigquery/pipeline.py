"""gcs_to_bigquery: batch-load landing files into Bronze and Silver, rejects to dead letters.

The seed's "Batch File Ingestion" pattern: files dropped under a landing prefix (JSON lines,
CSV or Parquet, optionally gzip) are read, validated against the source's schema, checked by
its data-quality rules and de-duplicated on its key across the whole run; raw records go to
Bronze, valid rows to Silver, rejected records to the dead-letter topic.

    python -m beam.gcs_to_bigquery --source_spec spec.json --input_pattern 'gs://landing/x/*.json.gz'
"""

import argparse
from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from beam.common import files
from beam.common.ingest import ingest, require_ingest_targets
from beam.common.runner import make_pipeline, parse, run_pipeline
from beam.common.spec import INPUT_FORMATS, PipelineSpec, load_spec
from beam.gcs_to_bigquery.readers import ReadRecords


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam.gcs_to_bigquery", description=__doc__.split("\n\n")[0])
    p.add_argument("--source_spec", required=True, help="The pipeline spec: inline JSON, a file path or a gs:// URI")
    p.add_argument("--input_pattern", required=True, help="Landing files: a glob or a prefix ending in /")
    p.add_argument("--input_format", choices=sorted(INPUT_FORMATS), default=None,
                   help="json, csv or parquet (default: the spec's input.format, else by file suffix)")
    p.add_argument("--input_compression", choices=["auto", "gzip", "none"], default=None,
                   help="gzip, none, or auto by the .gz suffix (default: the spec's input.compression)")
    return p


def build(pipeline: beam.Pipeline, spec: PipelineSpec, input_pattern: str, input_format: str | None = None,
          input_compression: str | None = None) -> dict[str, Any]:
    fmt = input_format or spec.input.format
    compression = input_compression or spec.input.compression
    raw = (
        pipeline
        | "Pattern" >> beam.Create([input_pattern])
        | "ListFiles" >> beam.FlatMap(files.match)
        | "SpreadFiles" >> beam.Reshuffle()  # one file per worker at a time, on Dataflow
        | "ReadRecords" >> beam.ParDo(ReadRecords(fmt, compression))
    )
    return ingest(raw, spec, streaming=False)


def run(argv: Sequence[str] | None = None) -> Any:
    args, beam_args = parse(parser(), argv)
    spec = load_spec(args.source_spec)
    require_ingest_targets(spec)  # fail before building anything
    pipeline = make_pipeline(beam_args, streaming=False)
    build(pipeline, spec, args.input_pattern, args.input_format, args.input_compression)
    return run_pipeline(pipeline, beam_args)
