"""datastream_to_bigquery: apply a database's change events to a Bronze change log and Silver.

The seed's "Database CDC" pattern, the path of Google's own Datastream-to-BigQuery template:
Datastream writes each stream object's (table's) change events as JSON lines into the landing
bucket (``gs://<landing>/cdc/<source_id>/<object>/…``); the bucket's notification
(``storage_notification``) announces each file on the source's topic; this pipeline reads each
announced file once and applies its events::

    # streaming: each file as its OBJECT_FINALIZE event arrives
    python -m beam.datastream_to_bigquery --source_spec spec.json --input_pattern gs://landing/cdc/src/ \\
        --input_subscription projects/p/subscriptions/src-ingest
    # batch: every file the pattern names now (a catch-up, or a test)
    python -m beam.datastream_to_bigquery --source_spec spec.json --input_pattern gs://landing/cdc/src/

Per file: every line is parsed and validated against its table's schema (``events.py``), the
file's changes are applied per table (``apply.py``: the Bronze change log gets every event, valid
or not, once; Silver gets the newest valid change per primary key in source order), and the
lines that do not fit go to the dead-letter topic with their reason. Then the file leaves the
landing prefix for the Bronze bucket, as ``gcs_to_bigquery``'s files do
(``<bronze bucket>/source=<id>/date=<day>/…``), once every sink has finished with it.

Files are claimed before they are read, with ``gcs_to_bigquery``'s create-only markers
(`beam.common.files.claim`), so each object generation is read once whatever the duplicates of
its event; and a file read twice all the same (a claim taken over after a crash) changes nothing:
applying is idempotent (``apply.py``). Files may be applied in any order: Silver follows source
order, not arrival order.

Counters (namespace ``headwater``): ``records_in`` = ``changes_valid`` + Σ ``invalid_<reason>``;
``changes_deleted`` (valid removals), ``cdc_statements`` (per-table batches applied),
``files_read``, ``unreadable_files``, ``vanished_files``, ``dead_letters_published`` and the
claim and move counters of ``gcs_to_bigquery``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from google.api_core.exceptions import NotFound

from beam.common import files
from beam.common.records import DeadLetter
from beam.common.runner import make_pipeline, parse, run_pipeline
from beam.common.sinks import PublishDeadLetters
from beam.common.spec import PipelineSpec, SpecError, load_spec
from beam.common.transforms import DEAD_LETTERS, counter
from beam.common.validation import UNPARSEABLE
from beam.datastream_to_bigquery.apply import ChangeApplier, bigquery_runner
from beam.datastream_to_bigquery.events import ChangeParser
from beam.gcs_to_bigquery.events import SWEEPS, ParseFileEvents
from beam.gcs_to_bigquery.pipeline import ClaimFiles, _finish, after_sinks, new_run_id

log = logging.getLogger(__name__)

_READ_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam.datastream_to_bigquery", description=__doc__.split("\n\n")[0])
    p.add_argument("--source_spec", required=True, help="The pipeline spec (with its cdc block): inline JSON, a "
                                                        "file path or a gs:// URI")
    p.add_argument("--input_pattern", required=True,
                   help="The stream's landing prefix (gs://<landing>/cdc/<source_id>/): batch, the files read; "
                        "streaming, which objects' events are applied")
    p.add_argument("--input_subscription", default=None,
                   help="Streaming mode: the subscription of the landing prefix's file events (JSON_API_V1)")
    return p


def require_cdc_targets(spec: PipelineSpec) -> None:
    if spec.cdc is None:
        raise SpecError("datastream_to_bigquery needs a cdc block in its spec ($.cdc)")
    if not spec.dead_letter_topic:
        raise SpecError("datastream_to_bigquery needs dead_letter.topic in its spec")


def read_lines(file: files.FileInfo) -> list[bytes]:
    """The file's lines (one event each; gzip by the ``.gz`` suffix or its magic bytes), blank
    lines dropped."""
    with files.open_read(file.path, file.generation) as stream:
        data = stream.read()
    if file.path.endswith(".gz") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [line for line in data.split(b"\n") if line.strip()]


class ApplyChangeFile(beam.DoFn):
    """A claimed file -> its changes applied (Bronze change log, Silver); the file itself out on
    the main output (for the move after the sinks), dead letters on ``DEAD_LETTERS``."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec

    def setup(self) -> None:
        assert self.spec.cdc is not None
        self.parser = ChangeParser(self.spec.cdc.tables, self.spec.cdc.source_type)
        self.applier = ChangeApplier(self.spec, bigquery_runner(self.spec.project))
        self.records_in = counter("records_in")
        self.valid = counter("changes_valid")
        self.deleted = counter("changes_deleted")
        self.statements = counter("cdc_statements")
        self.files_read = counter("files_read")
        self.unreadable = counter("unreadable_files")
        self.vanished = counter("vanished_files")
        self.invalid: dict[str, Any] = {}

    def _invalid(self, reason: str) -> Any:
        found = self.invalid.get(reason)
        if found is None:
            found = self.invalid[reason] = counter(f"invalid_{reason}")
        return found

    def process(self, file: files.FileInfo) -> Iterator[Any]:
        try:
            lines = read_lines(file)
        except NotFound:
            self.vanished.inc()
            log.warning("%s (generation %s) vanished before it was read", file.path, file.generation)
            yield file
            return
        except _READ_ERRORS as exc:
            self.unreadable.inc()
            self.records_in.inc()
            self._invalid(UNPARSEABLE).inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, DeadLetter(
                b"", UNPARSEABLE, f"cannot read {file.path}: {type(exc).__name__}: {exc}"[:1000], file.path))
            yield file
            return
        changes, dead = [], []
        for number, line in enumerate(lines, 1):
            change, letter = self.parser.parse(line, f"{file.path}#{number}")
            if change is not None:
                changes.append(change)
                if change.valid:
                    self.valid.inc()
                    if change.deleted:
                        self.deleted.inc()
            if letter is not None:
                dead.append(letter)
                self._invalid(letter.reason).inc()
        self.records_in.inc(len(lines))
        done = self.applier.apply(changes)  # raises on failure: the bundle is retried (idempotent)
        self.statements.inc(done.statements)
        self.files_read.inc()
        for letter in dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)
        yield file


def _apply(claimed: beam.PCollection, spec: PipelineSpec) -> tuple[beam.PCollection, beam.PCollection]:
    assert spec.dead_letter_topic
    applied = claimed | "ApplyChanges" >> beam.ParDo(ApplyChangeFile(spec)).with_outputs(DEAD_LETTERS,
                                                                                          main="applied")
    published = applied[DEAD_LETTERS] | "PublishDeadLetters" >> beam.ParDo(
        PublishDeadLetters(spec.dead_letter_topic, spec.source_id))
    return applied.applied, published


def build(pipeline: beam.Pipeline, spec: PipelineSpec, input_pattern: str, *, run_id: str | None = None,
          claim_ttl_s: float = files.CLAIM_TTL_S) -> dict[str, Any]:
    """Batch: every file ``input_pattern`` names now, claimed, applied, then moved."""
    require_cdc_targets(spec)
    claimed = (
        pipeline
        | "Pattern" >> beam.Create([input_pattern])
        | "ListFiles" >> beam.FlatMap(files.match)
        | "SpreadFiles" >> beam.Reshuffle()
        | "ClaimFiles" >> beam.ParDo(ClaimFiles(run_id or new_run_id(), ttl_s=claim_ttl_s))
    )
    applied, published = _apply(claimed, spec)
    done = (applied, published) | "SinkOutputs" >> beam.Flatten() | "SinksDone" >> beam.combiners.Count.Globally()
    released = done | "ReleaseFiles" >> beam.FlatMap(lambda _done, read: read, read=beam.pvalue.AsList(claimed))
    finished = _finish(released, spec, input_pattern)
    return {"claimed": claimed, "applied": applied, "finished": finished}


def build_streaming(pipeline: beam.Pipeline, spec: PipelineSpec, input_pattern: str,
                    input_subscription: str | None = None, *, messages: beam.PCollection | None = None,
                    run_id: str | None = None, claim_ttl_s: float = files.CLAIM_TTL_S) -> dict[str, Any]:
    """Streaming: each file as its event arrives. Tests pass ``messages`` instead of a subscription."""
    require_cdc_targets(spec)
    if messages is None:
        messages = pipeline | "ReadFileEvents" >> beam.io.ReadFromPubSub(subscription=input_subscription,
                                                                         with_attributes=True)
    events = messages | "ParseFileEvents" >> beam.ParDo(ParseFileEvents(input_pattern)).with_outputs(
        SWEEPS, main="events")
    claimed = (
        events.events
        | "ClaimFiles" >> beam.ParDo(ClaimFiles(run_id or new_run_id(), stamp=True, ttl_s=claim_ttl_s))
        | "SpreadFiles" >> beam.Reshuffle()
    )
    applied, published = _apply(claimed, spec)
    finished = _finish(after_sinks(claimed, [applied, published]), spec, input_pattern)
    return {"claimed": claimed, "applied": applied, "finished": finished}


def run(argv: Sequence[str] | None = None) -> Any:
    args, beam_args = parse(parser(), argv)
    spec = load_spec(args.source_spec)
    require_cdc_targets(spec)  # fail before building anything
    streaming = args.input_subscription is not None
    pipeline = make_pipeline(beam_args, streaming=streaming)
    if streaming:
        build_streaming(pipeline, spec, args.input_pattern, args.input_subscription)
    else:
        build(pipeline, spec, args.input_pattern)
    return run_pipeline(pipeline, beam_args)
