"""gcs_to_bigquery: batch-load landing files into Bronze and Silver, rejects to dead letters.

The seed's "Batch File Ingestion" pattern: files dropped under a landing prefix (JSON lines,
CSV, Parquet or Avro, optionally gzip) are read, validated against the source's schema, checked
by its data-quality rules and de-duplicated on its key across the whole run; raw records go to
Bronze, valid rows to Silver, rejected records to the dead-letter topic.

    python -m beam.gcs_to_bigquery --source_spec spec.json --input_pattern 'gs://landing/x/*.json.gz'

**Each file is ingested once.** The job runs on a schedule over the same prefix, and its
de-duplication only spans one run; so once every sink has finished with a run's records, the
files the run read leave the landing prefix: each is moved (copied, then deleted) to the Bronze
bucket, the raw-file archive of the seed's layout::

    <bronze.bucket>/source=<source_id>/date=<YYYY-MM-DD>/<path under the landing prefix>

where the date is the day (UTC) the file was created in the landing bucket. The next run finds
only files that arrived since. Every file read is moved, also one whose records were all
rejected, or that could not be read at all: its records are dead letters by then (see
``readers.py``), and the file itself is kept in Bronze for inspection or replay. A file moved
into a name already taken by other content gets a ``-<n>`` suffix (``beam.common.files.move``).

The move is a stage of the pipeline, not code after ``run()``: on Dataflow ``run()`` returns
once the job is submitted. Its input is the sinks' completion signal (``sinks_done`` of
``beam.common.ingest``), which exists only when every sink has processed every record; the
files listed at the start arrive as a side input. If a sink fails for good, the job fails
before the move, the files stay, and the next run reads them again (at least once: rows the
failed run had written are written again). Without ``bronze.bucket`` in the spec the files
are left where they are.
"""

import argparse
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam

from beam.common import files
from beam.common.ingest import ingest, require_ingest_targets
from beam.common.runner import make_pipeline, parse, run_pipeline
from beam.common.spec import INPUT_FORMATS, PipelineSpec, load_spec
from beam.common.transforms import counter
from beam.gcs_to_bigquery.readers import ReadRecords


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam.gcs_to_bigquery", description=__doc__.split("\n\n")[0])
    p.add_argument("--source_spec", required=True, help="The pipeline spec: inline JSON, a file path or a gs:// URI")
    p.add_argument("--input_pattern", required=True, help="Landing files: a glob or a prefix ending in /")
    p.add_argument("--input_format", choices=sorted(INPUT_FORMATS), default=None,
                   help="json, csv, parquet or avro (default: the spec's input.format, else by file suffix)")
    p.add_argument("--input_compression", choices=["auto", "gzip", "none"], default=None,
                   help="gzip, none, or auto by the .gz suffix (default: the spec's input.compression)")
    return p


def archive_path(file: files.FileInfo, landing_base: str, bronze_bucket: str, source_id: str) -> str:
    """Where a landing file goes once ingested (see the module docstring)."""
    relative = file.path[len(landing_base):] if file.path.startswith(landing_base) else file.path.rsplit("/", 1)[-1]
    date = file.created[:10] or "unknown-date"
    return f"{bronze_bucket}/source={source_id}/date={date}/{relative}"


class MoveToBronze(beam.DoFn):
    """A landing file -> moved into the Bronze archive; outputs its new path."""

    def __init__(self, landing_base: str, bronze_bucket: str, source_id: str) -> None:
        self.landing_base = landing_base
        self.bronze_bucket = bronze_bucket.rstrip("/")
        self.source_id = source_id

    def setup(self) -> None:
        self.moved = counter("files_moved")

    def process(self, file: files.FileInfo) -> Iterator[str]:
        target = files.move(file, archive_path(file, self.landing_base, self.bronze_bucket, self.source_id))
        self.moved.inc()
        yield target


def build(pipeline: beam.Pipeline, spec: PipelineSpec, input_pattern: str, input_format: str | None = None,
          input_compression: str | None = None) -> dict[str, Any]:
    fmt = input_format or spec.input.format
    compression = input_compression or spec.input.compression
    listed = (
        pipeline
        | "Pattern" >> beam.Create([input_pattern])
        | "ListFiles" >> beam.FlatMap(files.match)
    )
    raw = (
        listed
        | "SpreadFiles" >> beam.Reshuffle()  # one file per worker at a time, on Dataflow
        | "ReadRecords" >> beam.ParDo(ReadRecords(fmt, compression))
    )
    out = ingest(raw, spec, streaming=False)
    if spec.bronze_bucket:
        out["moved"] = (
            out["sinks_done"]
            | "ReleaseFiles" >> beam.FlatMap(lambda _done, read: read, read=beam.pvalue.AsList(listed))
            | "SpreadMoves" >> beam.Reshuffle()
            | "MoveToBronze" >> beam.ParDo(MoveToBronze(files.base_of(input_pattern), spec.bronze_bucket,
                                                        spec.source_id))
        )
    return out


def run(argv: Sequence[str] | None = None) -> Any:
    args, beam_args = parse(parser(), argv)
    spec = load_spec(args.source_spec)
    require_ingest_targets(spec)  # fail before building anything
    pipeline = make_pipeline(beam_args, streaming=False)
    build(pipeline, spec, args.input_pattern, args.input_format, args.input_compression)
    return run_pipeline(pipeline, beam_args)
