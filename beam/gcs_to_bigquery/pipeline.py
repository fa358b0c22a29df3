"""gcs_to_bigquery: load landing files into Bronze and Silver, rejects to dead letters.

The seed's "Batch File Ingestion" pattern: files dropped under a landing prefix (JSON lines,
CSV, Parquet or Avro, optionally gzip) are read, validated against the source's schema, checked
by its data-quality rules and de-duplicated on its key; raw records go to Bronze, valid rows to
Silver, rejected records to the dead-letter topic. Two modes, one template:

    # batch: every file the pattern names now (a cron-scheduled run: the sweep)
    python -m beam.gcs_to_bigquery --source_spec spec.json --input_pattern 'gs://landing/x/'
    # streaming: each file as it lands, from the bucket's file events
    python -m beam.gcs_to_bigquery --source_spec spec.json --input_pattern 'gs://landing/x/' \\
        --input_subscription projects/p/subscriptions/x-ingest

**Streaming (file events).** With ``--input_subscription`` the job reads Cloud Storage
notifications (``JSON_API_V1``, published by the landing bucket's ``storage_notification`` to
the source's topic; ``events.py``) and ingests each ``OBJECT_FINALIZE`` of a file that
``--input_pattern`` names - the same parameter, and the same rule, as the batch listing, so one
value describes the source's landing files in both modes. Other events and other objects are
dropped. The exact generation the event announced is read, with the batch readers; dedup is the
streaming one (``window_seconds`` of processing time, across files). A landed file reaches Silver
within seconds, without waiting for a cron tick; the batch mode on the schedule remains as a
sweep for files an event missed (a notification created after they landed, an event dropped).

**Each object generation is ingested once**, whichever mode sees it first and however often its
event is delivered: before reading, the job *claims* the generation with a create-only marker
object (``beam.common.files.claim``: ``if_generation_match=0``, so exactly one of racing
claimants wins); a duplicate event, the sweep, or an event arriving after the sweep finds the
claim (or the generation gone) and skips the file. A file re-landed under the same name is a new
generation: a new claim, ingested again. The claimant's identity is ``event:<run>:<message id>``
or ``sweep:<run>`` (``<run>`` chosen when the pipeline is built), so a retried bundle of the
claiming step recognises its own claim. Limits: a claim whose holder died (a failed sweep run, a
streaming job stopped mid-file) is taken over only ``CLAIM_TTL_S`` (1 h) after it was made, by
the next sweep or event; what the dead holder had written by then is written again (Silver's
insert ids absorb repeats only within about a minute). A holder that is alive but slower than
the TTL can be overtaken the same way. A Pub/Sub redelivery of the *same* message is dropped by
Dataflow's Pub/Sub source (by message id), not by the claim, which it would pass as its own.

**Each file leaves the landing prefix once ingested**: once every sink has finished with its
records, it is moved (copied, then deleted, pinned to its generation) to the Bronze bucket, the
raw-file archive of the seed's layout::

    <bronze.bucket>/source=<source_id>/date=<YYYY-MM-DD>/<path under the landing prefix>

where the date is the day (UTC) the file was created in the landing bucket, and its claim marker
is deleted: from then on the generation's absence says "done". Every file read is moved, also
one whose records were all rejected, or that could not be read at all: its records are dead
letters by then (see ``readers.py``), and the file itself is kept in Bronze for inspection or
replay. A file moved into a name already taken by other content gets a ``-<n>`` suffix
(``beam.common.files.move``). Without ``bronze.bucket`` the files stay and their claims are
rewritten as ``done``, so no later run or event ingests them again. With ``bronze.keep_landing``
(a cloud_transfer source) the file is copied to the same archive path and *stays* in the landing
prefix, its claim rewritten ``done``: the landing copies are what the source's Storage Transfer
job compares against, and a moved file would be copied - and ingested - again on its next run.

**Transfer runs** (streaming, cloud_transfer): the completion message a Storage Transfer job
publishes to the same topic after each run makes the job list its pattern and claim the files
created since that run began (``events.py``), so a copied file whose event was missed is ingested
anyway, once.

"Once every sink has finished": the move is a stage of the pipeline, not code after ``run()``
(on Dataflow ``run()`` returns once the job is submitted).

* Batch: its input is the sinks' completion signal (``sinks_done`` of ``beam.common.ingest``),
  which exists only when every sink has processed every record; the claimed files arrive as a
  side input. If a sink fails for good, the job fails before the move, the files and their
  claims stay, and a sweep at least ``CLAIM_TTL_S`` later takes them over (at least once: rows
  the failed run had written are written again).
* Streaming: a file's records carry the timestamp the claim gave it (processing time); the file
  itself waits in a ``RELEASE_WINDOW_S`` fixed window beside the sinks' outputs, and a
  GroupByKey releases it when the watermark passes that window, which it does only once every
  sink has processed every element up to that timestamp. On Dataflow the records are durable in
  the pipeline from the read on, so moving then loses nothing; the local runner holds nothing
  durably (a job killed mid-file loses what was in flight; its claim then ages out as above).
  The local runner advances an idle subscription's watermark only when a pull returns, and its
  pulls wait up to 30 s for messages: there the last file of a burst is in Silver within seconds
  but moves up to ~30 s later.
"""

import argparse
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Tuple  # noqa: UP035 - Beam's typehints

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Duration

from beam.common import files
from beam.common.columnar import ROWS_AS_ARROW, ChunkRecords, ColumnarValidateAndDedup, eligible
from beam.common.ingest import ingest, require_ingest_targets
from beam.common.runner import make_pipeline, parse, run_pipeline
from beam.common.spec import INPUT_FORMATS, PipelineSpec, load_spec
from beam.common.transforms import counter
from beam.gcs_to_bigquery.events import SWEEPS, FileEvent, ParseFileEvents, sweep_files
from beam.gcs_to_bigquery.readers import ReadChunks, ReadRecords

# Streaming: files are released to the move in fixed windows of this many seconds (of the
# processing-time stamp their claim gave them), once the sinks' watermark has passed. Short, so
# that the first watermark update after the sinks are done is past the window; each window that
# holds a file costs one firing of a tiny GroupByKey.
RELEASE_WINDOW_S = 0.1
# A release that arrives after its window fired (it should not: see the module docstring) is
# still released, on arrival, rather than left unmoved with its claim ageing into a takeover.
RELEASE_LATENESS = Duration(seconds=7 * 24 * 3600)

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam.gcs_to_bigquery", description=__doc__.split("\n\n")[0])
    p.add_argument("--source_spec", required=True, help="The pipeline spec: inline JSON, a file path or a gs:// URI")
    p.add_argument("--input_pattern", required=True,
                   help="Landing files: a glob or a prefix ending in /. Batch: what is read; streaming: which "
                        "objects' events are ingested")
    p.add_argument("--input_subscription", default=None,
                   help="Streaming mode: the subscription of the landing bucket's file events (JSON_API_V1), "
                        "projects/<project>/subscriptions/<name>")
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


def new_run_id() -> str:
    """Names one run of a pipeline in its claims (fixed when the pipeline is built)."""
    return uuid.uuid4().hex[:12]


class ClaimFiles(beam.DoFn):
    """Landing files (``FileInfo``, batch) or file events (``FileEvent``, streaming) -> the files
    this run has claimed (``beam.common.files.claim``); the rest are counted and dropped.

    ``stamp``: give each claimed file the current time as its timestamp (streaming: what the
    release after the sinks waits on; see the module docstring).
    """

    def __init__(self, run_id: str, *, stamp: bool = False, ttl_s: float = files.CLAIM_TTL_S) -> None:
        self.run_id = run_id
        self.stamp = stamp
        self.ttl_s = ttl_s

    def setup(self) -> None:
        self.outcomes = {outcome: counter(name) for outcome, name in (
            (files.CLAIMED, "files_claimed"), (files.HELD, "files_claimed_elsewhere"),
            (files.DONE, "files_already_ingested"), (files.GONE, "files_gone"))}

    def process(self, element: files.FileInfo | FileEvent) -> Iterator[Any]:
        if isinstance(element, FileEvent):
            file, owner = element.file, f"event:{self.run_id}:{element.message_id}"
        else:
            file, owner = element, f"sweep:{self.run_id}"
        outcome, file = files.claim(file, owner, ttl_s=self.ttl_s)
        self.outcomes[outcome].inc()
        if outcome != files.CLAIMED:
            log.info("not ingesting %s (generation %s): %s", file.path, file.generation, outcome)
            return
        yield beam.window.TimestampedValue(file, time.time()) if self.stamp else file


class ReadFileRecords(beam.DoFn):
    """`ReadRecords`, one record per element: Beam's local streaming runner cannot take the
    batches ReadRecords emits (downstream batched steps still get batches on Dataflow)."""

    def __init__(self, fmt: str | None, compression: str) -> None:
        self.reader = ReadRecords(fmt, compression)

    def setup(self) -> None:
        self.reader.setup()

    def infer_output_type(self, input_type: Any) -> Any:
        return Tuple[bytes, Any, str, Tuple[Tuple[str, str], ...]]  # noqa: UP006

    def process(self, file: files.FileInfo) -> Iterator[Any]:
        for batch in self.reader.process(file):
            yield from batch


class MoveToBronze(beam.DoFn):
    """A landing file -> moved into the Bronze archive, its claim deleted; outputs its new path."""

    def __init__(self, landing_base: str, bronze_bucket: str, source_id: str) -> None:
        self.landing_base = landing_base
        self.bronze_bucket = bronze_bucket.rstrip("/")
        self.source_id = source_id

    def setup(self) -> None:
        self.moved = counter("files_moved")

    def process(self, file: files.FileInfo) -> Iterator[str]:
        target = files.move(file, archive_path(file, self.landing_base, self.bronze_bucket, self.source_id))
        files.finish_claim(file, kept=False)  # after the move: a crash in between leaves a claim that ages out
        self.moved.inc()
        yield target


class CopyToBronze(beam.DoFn):
    """``bronze.keep_landing``: a landing file -> copied into the Bronze archive and left in place,
    its claim marked done (a cloud_transfer source's landing copies are what its transfer compares
    against: a moved file would be copied again). Outputs the archive path."""

    def __init__(self, landing_base: str, bronze_bucket: str, source_id: str) -> None:
        self.landing_base = landing_base
        self.bronze_bucket = bronze_bucket.rstrip("/")
        self.source_id = source_id

    def setup(self) -> None:
        self.copied = counter("files_archived_kept")

    def process(self, file: files.FileInfo) -> Iterator[str]:
        target = files.archive(file, archive_path(file, self.landing_base, self.bronze_bucket, self.source_id),
                               keep=True)
        files.finish_claim(file, kept=True)  # after the copy: a crash in between leaves a claim that ages out
        self.copied.inc()
        yield target


class KeepIngested(beam.DoFn):
    """Without a Bronze bucket: the file stays, its claim is marked done for good."""

    def process(self, file: files.FileInfo) -> Iterator[files.FileInfo]:
        files.finish_claim(file, kept=True)
        yield file


def _finish(released: beam.PCollection, spec: PipelineSpec, input_pattern: str) -> beam.PCollection:
    spread = released | "SpreadMoves" >> beam.Reshuffle()
    if spec.bronze_bucket and spec.bronze_keep_landing:
        return spread | "CopyToBronze" >> beam.ParDo(CopyToBronze(files.base_of(input_pattern), spec.bronze_bucket,
                                                                  spec.source_id))
    if spec.bronze_bucket:
        return spread | "MoveToBronze" >> beam.ParDo(MoveToBronze(files.base_of(input_pattern), spec.bronze_bucket,
                                                                  spec.source_id))
    return spread | "KeepIngested" >> beam.ParDo(KeepIngested())


def finished_key(spec: PipelineSpec) -> str:
    """The output of `build` / `build_streaming` that holds the finished files: ``moved`` (to
    Bronze), ``copied`` (to Bronze, kept in landing) or ``kept`` (no Bronze bucket)."""
    if spec.bronze_bucket:
        return "copied" if spec.bronze_keep_landing else "moved"
    return "kept"


def build(pipeline: beam.Pipeline, spec: PipelineSpec, input_pattern: str, input_format: str | None = None,
          input_compression: str | None = None, *, run_id: str | None = None,
          claim_ttl_s: float = files.CLAIM_TTL_S, columnar: bool = True) -> dict[str, Any]:
    """The batch mode (the sweep): every file ``input_pattern`` names now, claimed first.

    JSON lines go through the columnar path (``beam.common.columnar``: file chunks, Arrow, Silver
    rows as Arrow tables written by ``beam.common.arrow_sink.WriteArrowRows``) when the spec fits
    it (``columnar.eligible``) and ``columnar`` is left on; otherwise, and for the tests that
    compare the two, through the per-record path. Both give the same Silver rows, dead letters
    and counters."""
    fmt = input_format or spec.input.format
    compression = input_compression or spec.input.compression
    claimed = (
        pipeline
        | "Pattern" >> beam.Create([input_pattern])
        | "ListFiles" >> beam.FlatMap(files.match)
        | "SpreadFiles" >> beam.Reshuffle()  # one file per worker at a time, on Dataflow
        | "ClaimFiles" >> beam.ParDo(ClaimFiles(run_id or new_run_id(), ttl_s=claim_ttl_s))
    )
    if columnar and fmt in (None, "json") and eligible(spec):
        chunks = claimed | "ReadChunks" >> beam.ParDo(ReadChunks(fmt, compression))
        # Silver rows stay Arrow tables up to the Silver sink (WriteArrowRows): no dict per row
        validated = chunks | "ValidateAndDedup" >> ColumnarValidateAndDedup(spec, ROWS_AS_ARROW)
        out = ingest(lambda: chunks | "ChunkRecords" >> beam.ParDo(ChunkRecords()), spec, streaming=False,
                     validated=validated, arrow_rows=True)
    else:
        raw = claimed | "ReadRecords" >> beam.ParDo(ReadRecords(fmt, compression))
        out = ingest(raw, spec, streaming=False)
    released = out["sinks_done"] | "ReleaseFiles" >> beam.FlatMap(lambda _done, read: read,
                                                                  read=beam.pvalue.AsList(claimed))
    out["claimed"] = claimed
    out[finished_key(spec)] = _finish(released, spec, input_pattern)
    return out


def build_streaming(pipeline: beam.Pipeline, spec: PipelineSpec, input_pattern: str,
                    input_subscription: str | None = None, input_format: str | None = None,
                    input_compression: str | None = None, *, messages: beam.PCollection | None = None,
                    run_id: str | None = None, claim_ttl_s: float = files.CLAIM_TTL_S) -> dict[str, Any]:
    """The streaming mode: files as their events arrive. Tests pass ``messages`` (PubsubMessages,
    e.g. from a TestStream) instead of a subscription."""
    fmt = input_format or spec.input.format
    compression = input_compression or spec.input.compression
    if messages is None:
        messages = pipeline | "ReadFileEvents" >> beam.io.ReadFromPubSub(subscription=input_subscription,
                                                                         with_attributes=True)
    parsed = messages | "ParseFileEvents" >> beam.ParDo(ParseFileEvents(input_pattern)).with_outputs(
        SWEEPS, main="events")
    # A transfer run's completion (cloud_transfer): the files it copied, whether or not their
    # own events arrive; the claims keep each generation to one ingestion.
    swept = parsed[SWEEPS] | "SweepTransferRun" >> beam.FlatMap(sweep_files, input_pattern)
    claimed = (
        (parsed.events, swept)
        | "EventsAndSweeps" >> beam.Flatten()
        | "ClaimFiles" >> beam.ParDo(ClaimFiles(run_id or new_run_id(), stamp=True, ttl_s=claim_ttl_s))
        | "SpreadFiles" >> beam.Reshuffle()
    )
    raw = claimed | "ReadRecords" >> beam.ParDo(ReadFileRecords(fmt, compression))
    out = ingest(raw, spec, streaming=True)
    out["claimed"] = claimed
    out[finished_key(spec)] = _finish(after_sinks(claimed, out["sink_outputs"]), spec, input_pattern)
    return out


def _release_windows() -> beam.WindowInto:
    return beam.WindowInto(window.FixedWindows(RELEASE_WINDOW_S), allowed_lateness=RELEASE_LATENESS)


def after_sinks(claimed: beam.PCollection, sink_outputs: Sequence[beam.PCollection]) -> beam.PCollection:
    """Streaming: each claimed file, once the sinks have processed every element up to its
    timestamp (their watermark has passed its ``RELEASE_WINDOW_S`` window). The sinks' outputs
    contribute only their watermark: their elements are dropped before the grouping."""
    held = (
        claimed
        | "FilesByWindow" >> _release_windows()
        | "KeyFiles" >> beam.Map(lambda file: ("files", file))
    )
    sinks = (
        sink_outputs
        | "SinkOutputs" >> beam.Flatten()
        | "WatermarkOnly" >> beam.FlatMap(lambda _: ()).with_output_types(Tuple[str, files.FileInfo])  # noqa: UP006
        | "SinksByWindow" >> _release_windows()
    )
    return (
        (held, sinks)
        | "FilesAndSinks" >> beam.Flatten()
        | "AfterSinks" >> beam.GroupByKey()
        | "ReleaseFiles" >> beam.FlatMap(lambda keyed: keyed[1])
        | "Unwindow" >> beam.WindowInto(window.GlobalWindows())
    )


def run(argv: Sequence[str] | None = None) -> Any:
    args, beam_args = parse(parser(), argv)
    spec = load_spec(args.source_spec)
    require_ingest_targets(spec)  # fail before building anything
    streaming = args.input_subscription is not None
    pipeline = make_pipeline(beam_args, streaming=streaming)
    if streaming:
        build_streaming(pipeline, spec, args.input_pattern, args.input_subscription, args.input_format,
                        args.input_compression)
    else:
        build(pipeline, spec, args.input_pattern, args.input_format, args.input_compression)
    return run_pipeline(pipeline, beam_args)
