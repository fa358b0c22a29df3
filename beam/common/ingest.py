"""The Bronze -> Silver wiring shared by the two ingesting templates.

Given the ``Raw`` records a template read (from files or from Pub/Sub), :func:`ingest` applies
the shared validate/quality/dedup transform and writes:

* every raw record to the Bronze table (when the spec names one), with its attributes,
* the valid, de-duplicated rows to the Silver table, with the metadata columns
  ``_ingested_at``, ``_message_id`` (the record's origin) and ``_schema_version``
  (``beam.common.sinks.SILVER_METADATA_FIELDS``),
* the dead letters - rejected records, and rows BigQuery itself rejected - to the dead-letter
  topic, original payload as data, reason as attribute.

Silver and the dead-letter topic are required: a pipeline that could drop records silently
does not start.

In batch, ``sinks_done`` is one element (a count) that exists only once every sink has finished
with every record: what comes after the sinks - ``gcs_to_bigquery`` moving the files it read
out of the landing prefix - takes it as input, so it runs only after everything was written,
also on Dataflow where ``run()`` returns as soon as the job is submitted. ``sink_outputs`` are
the sinks' own outputs, for a streaming pipeline to wait on their watermark instead.
"""

from typing import Any

import apache_beam as beam

from beam.common.sinks import BronzeRows, PublishDeadLetters, RowIdFromField, RowIdFromKey, WriteRows
from beam.common.spec import PipelineSpec, SpecError
from beam.common.transforms import ValidateAndDedup


def require_ingest_targets(spec: PipelineSpec) -> None:
    missing = [name for name, v in (("silver.table", spec.silver_table), ("dead_letter.topic", spec.dead_letter_topic)) if not v]
    if missing:
        raise SpecError(f"an ingesting pipeline needs {' and '.join(missing)} in its spec")


def ingest(raw: Any, spec: PipelineSpec, *, streaming: bool, validated: dict[str, Any] | None = None,
           arrow_rows: bool = False) -> dict[str, Any]:
    """Apply validation and the sinks; returns the intermediate PCollections (for tests).

    ``validated``: the ``{"valid", "dead_letters"}`` of a validation the caller applied (the
    columnar path, ``beam.common.columnar``); ``raw`` is then only what Bronze gets, and may be a
    callable that makes it (called only when the spec has a Bronze table). ``arrow_rows``: its
    valid rows are ``ArrowChunk`` tables (``ROWS_AS_ARROW``), written to Silver by
    ``beam.common.arrow_sink.WriteArrowRows`` (the same requests as ``WriteRows``)."""
    require_ingest_targets(spec)
    assert spec.silver_table and spec.dead_letter_topic
    out = validated if validated is not None else raw | "ValidateAndDedup" >> ValidateAndDedup(spec, streaming=streaming)
    rejected = []
    if spec.bronze_table:
        if callable(raw):
            raw = raw()
        rejected.append(
            raw
            | "ToBronzeRows" >> beam.ParDo(BronzeRows(spec.source_id))
            | "WriteBronze" >> beam.ParDo(WriteRows(spec.table_ref(spec.bronze_table), project=spec.project,
                                                    row_ids=RowIdFromField("origin"), name="bronze"))
        )
    if arrow_rows:
        from beam.common.arrow_sink import WriteArrowRows  # pyarrow: only where Arrow rows are

        silver = WriteArrowRows(spec.table_ref(spec.silver_table), project=spec.project,
                                key_paths=spec.dedup.key if spec.dedup else None, schema_version=spec.schema_version)
    else:
        silver = WriteRows(spec.table_ref(spec.silver_table), project=spec.project,
                           row_ids=RowIdFromKey(spec.dedup.key) if spec.dedup else None, name="silver", stamp=True,
                           schema_version=spec.schema_version)
    rejected.append(out["valid"] | "WriteSilver" >> beam.ParDo(silver))
    dead = (out["dead_letters"], *rejected) | "AllDeadLetters" >> beam.Flatten()
    published = dead | "PublishDeadLetters" >> beam.ParDo(PublishDeadLetters(spec.dead_letter_topic, spec.source_id))
    # Every sink's output PCollection (the publisher's is empty, the writers' hold their rejects):
    # complete, or past the watermark, only once that sink is done with its input. Streaming
    # gcs_to_bigquery waits on their watermark before it moves a file (see its module docstring).
    result = {**out, "all_dead_letters": dead, "sink_outputs": (published, *rejected)}
    if not streaming:
        # A global count waits for all of its input: each sink's output PCollection is complete
        # only when that sink has processed its last bundle (the publisher outputs nothing; its
        # completion is the signal). Sink rejections are dead letters, so the publisher is last,
        # but the writers are listed too rather than relying on that.
        result["sinks_done"] = (
            (published, *rejected)
            | "SinkOutputs" >> beam.Flatten()
            | "SinksDone" >> beam.combiners.Count.Globally()
        )
    return result
