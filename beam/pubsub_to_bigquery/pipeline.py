"""pubsub_to_bigquery: streaming ingestion from a source's subscription into Bronze and Silver.

The seed's streaming patterns (event streaming, streaming API, CDC): read the source's
Pub/Sub subscription, and for every message - parse, validate against the schema, apply the
data-quality rules, de-duplicate on the key within ``deduplication.window_seconds`` - write
the raw message with its attributes to Bronze, valid rows to Silver, and rejected ones to the
dead-letter topic (original payload as data, reason as attribute). Nothing depends on
event-time windows (see ``beam.common.transforms``), so a backlog is processed in full on the
local runner too.

    python -m beam.pubsub_to_bigquery --source_spec spec.json \\
        --input_subscription projects/p/subscriptions/example_source-ingest
"""

import argparse
from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from beam.common.ingest import ingest, require_ingest_targets
from beam.common.records import Raw
from beam.common.runner import make_pipeline, parse, run_pipeline
from beam.common.spec import PipelineSpec, load_spec

SUBSCRIPTION_REGEX = r"^projects/[^/]+/subscriptions/[^/]+$"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m beam.pubsub_to_bigquery", description=__doc__.split("\n\n")[0])
    p.add_argument("--source_spec", required=True, help="The pipeline spec: inline JSON, a file path or a gs:// URI")
    p.add_argument("--input_subscription", required=True,
                   help="The subscription to read: projects/<project>/subscriptions/<name>")
    return p


def to_raw(message: Any) -> Raw:
    """A Pub/Sub message as a ``Raw`` record: its data is the payload, its id the origin, its
    attributes Bronze's ``attributes`` (sorted by key: a stable order for the same message)."""
    attributes = tuple(sorted((message.attributes or {}).items()))
    return (message.data, None, f"pubsub:{message.message_id or ''}", attributes)


def build(pipeline: beam.Pipeline, spec: PipelineSpec, messages: beam.PCollection | None = None,
          input_subscription: str | None = None) -> dict[str, Any]:
    """Wire the pipeline; tests pass ``messages`` (e.g. from a TestStream) instead of a subscription."""
    if messages is None:
        messages = pipeline | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=input_subscription, with_attributes=True)
    raw = messages | "ToRaw" >> beam.Map(to_raw)
    return ingest(raw, spec, streaming=True)


def run(argv: Sequence[str] | None = None) -> Any:
    args, beam_args = parse(parser(), argv)
    spec = load_spec(args.source_spec)
    require_ingest_targets(spec)
    pipeline = make_pipeline(beam_args, streaming=True)
    build(pipeline, spec, input_subscription=args.input_subscription)
    return run_pipeline(pipeline, beam_args)
