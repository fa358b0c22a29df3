"""pubsub_to_gcs: archive a source's raw events into the Bronze bucket, partitioned by date.

The seed's cold path (Pub/Sub -> Dataflow -> GCS) and Bronze naming: every message is written,
unvalidated, under ``<bronze bucket>/source=<source_id>/date=<YYYY-MM-DD>/`` where the date is
the message's publish time in UTC. Files are JSON lines, one *envelope* per message::

    {"message_id": "...", "publish_time": "2026-11-26T10:00:00.123000+00:00",
     "attributes": {...}, "data": "<payload as UTF-8 text>"}

(``data_base64`` instead of ``data`` when the payload is not UTF-8), so the archive is both
readable and lossless.

Batching without event-time windows: messages are keyed by date and grouped with
``GroupIntoBatches``, which flushes a file when it holds ``max_records_per_file`` messages or
when ``flush_seconds`` of *processing* time have passed since its first message - no
event-time window has to close. A file's name is a hash of the message ids it holds, so a
bundle retried after a worker failure rewrites the same object instead of adding a duplicate.

    python -m beam.pubsub_to_gcs --source_spec spec.json \\
        --input_subscription projects/p/subscriptions/example_source-archive
"""

import argparse
import base64
import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import orjson

from beam.common import files
from beam.common.runner import make_pipeline, parse, run_pipeline
from beam.common.spec import PipelineSpec, SpecError, load_spec
from beam.common.transforms import counter


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam.pubsub_to_gcs", description=__doc__.split("\n\n")[0])
    p.add_argument("--source_spec", required=True, help="The pipeline spec: inline JSON, a file path or a gs:// URI")
    p.add_argument("--input_subscription", required=True,
                   help="The subscription to read: projects/<project>/subscriptions/<name>")
    p.add_argument("--output_prefix", default=None,
                   help="Where to archive (default: the spec's bronze.bucket): gs://bucket[/path] or a local directory")
    p.add_argument("--flush_seconds", type=int, default=60, help="Longest a message waits before its file is written")
    p.add_argument("--max_records_per_file", type=int, default=10_000, help="Messages per archive file at most")
    return p


def _publish_time(message: Any) -> dt.datetime:
    t = getattr(message, "publish_time", None)
    if t is None:  # messages from a TestStream or an old SDK: archive under the arrival date
        return dt.datetime.now(dt.UTC)
    if isinstance(t, dt.datetime):
        return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(float(t), dt.UTC)  # a Beam Timestamp or epoch seconds


def envelope(message: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "message_id": getattr(message, "message_id", None),
        "publish_time": _publish_time(message).isoformat(),
        "attributes": dict(message.attributes or {}),
    }
    try:
        env["data"] = message.data.decode("utf-8")
    except UnicodeDecodeError:
        env["data_base64"] = base64.b64encode(message.data).decode("ascii")
    return env


class KeyByDate(beam.DoFn):
    def process(self, message: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        env = envelope(message)
        yield env["publish_time"][:10], env


class WriteArchiveFile(beam.DoFn):
    """``(date, [envelopes])`` -> one JSON-lines object under the date's partition."""

    def __init__(self, prefix: str, source_id: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.source_id = source_id

    def setup(self) -> None:
        self.archived = counter("archived")
        self.files_written = counter("archive_files_written")

    def process(self, element: tuple[str, Iterable[dict[str, Any]]]) -> Iterator[str]:
        date, envelopes = element
        batch = list(envelopes)
        ids = "\n".join(sorted(str(e.get("message_id")) for e in batch))
        digest = hashlib.sha256(ids.encode()).hexdigest()[:20]
        first = min(e["publish_time"] for e in batch).replace(":", "").replace("-", "")[:15]
        path = f"{self.prefix}/source={self.source_id}/date={date}/{first}-{digest}.jsonl"
        data = b"".join(orjson.dumps(e) + b"\n" for e in batch)
        files.write_bytes(path, data, content_type="application/x-ndjson")
        self.archived.inc(len(batch))
        self.files_written.inc()
        yield path


def build(pipeline: beam.Pipeline, spec: PipelineSpec, *, output_prefix: str | None = None,
          flush_seconds: int = 60, max_records_per_file: int = 10_000, messages: beam.PCollection | None = None,
          input_subscription: str | None = None) -> beam.PCollection:
    prefix = output_prefix or spec.bronze_bucket
    if not prefix:
        raise SpecError("pubsub_to_gcs needs bronze.bucket in the spec (or --output_prefix)")
    if messages is None:
        messages = pipeline | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=input_subscription, with_attributes=True)
    return (
        messages
        | "KeyByDate" >> beam.ParDo(KeyByDate())
        | "BatchPerDate" >> beam.GroupIntoBatches(max_records_per_file, max_buffering_duration_secs=flush_seconds)
        | "WriteFiles" >> beam.ParDo(WriteArchiveFile(prefix, spec.source_id))
    )


def run(argv: Sequence[str] | None = None) -> Any:
    args, beam_args = parse(parser(), argv)
    spec = load_spec(args.source_spec)
    pipeline = make_pipeline(beam_args, streaming=True)
    build(pipeline, spec, output_prefix=args.output_prefix, flush_seconds=args.flush_seconds,
          max_records_per_file=args.max_records_per_file, input_subscription=args.input_subscription)
    return run_pipeline(pipeline, beam_args)
