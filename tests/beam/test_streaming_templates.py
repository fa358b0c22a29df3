"""The streaming templates' wiring, fed by a TestStream of Pub/Sub messages.

pubsub_to_gcs archives into a local directory (the same code writes gs:// objects);
pubsub_to_bigquery writes to the emulators (its sinks are the ones gcs_to_bigquery's
emulator test exercises; here the point is the streaming path up to them).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream as EventStream
from emulator_setup import bronze_attributes, count_rows, create_ingest_targets, pull_all

from beam.common.spec import parse_spec
from beam.common.synthetic import SPEC, generate
from beam.pubsub_to_bigquery.pipeline import build as build_ingest
from beam.pubsub_to_gcs.pipeline import build as build_archive


def _pipeline() -> beam.Pipeline:
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)


def _message(i: int, data: bytes, when: dt.datetime) -> PubsubMessage:
    return PubsubMessage(data, {"n": str(i)}, message_id=f"m{i}", publish_time=when)


def test_pubsub_to_gcs_archives_every_message_by_publish_date(tmp_path: Path) -> None:
    day1 = dt.datetime(2026, 11, 25, 23, 59, 59, tzinfo=dt.UTC)
    day2 = dt.datetime(2026, 11, 26, 0, 0, 1, tzinfo=dt.UTC)
    messages = [_message(i, f'{{"n": {i}}}'.encode(), day1 if i < 30 else day2) for i in range(50)]
    messages.append(_message(50, b"\xff\xfe not utf-8", day2))
    stream = (
        EventStream()
        .add_elements(messages[:25])
        .advance_processing_time(120)  # past flush_seconds: the first files are written
        .add_elements(messages[25:])
        .advance_processing_time(120)
        .advance_watermark_to_infinity()
    )
    p = _pipeline()
    spec = parse_spec(dict(SPEC, bronze={"bucket": str(tmp_path / "bronze")}))
    build_archive(p, spec, flush_seconds=60, max_records_per_file=20, messages=p | stream)
    p.run().wait_until_finish()

    root = tmp_path / "bronze" / "source=example_source"
    written = sorted(root.glob("date=*/*.jsonl"))
    assert {f.parent.name for f in written} == {"date=2026-11-25", "date=2026-11-26"}
    assert all(len(f.read_bytes().splitlines()) <= 20 for f in written)
    envelopes = [orjson.loads(line) for f in written for line in f.read_bytes().splitlines()]
    assert sorted(e["message_id"] for e in envelopes) == sorted(f"m{i}" for i in range(51))
    by_id = {e["message_id"]: e for e in envelopes}
    assert by_id["m3"]["data"] == '{"n": 3}' and by_id["m3"]["attributes"] == {"n": "3"}
    assert by_id["m50"]["data_base64"]  # kept losslessly
    assert Counter(e["publish_time"][:10] for e in envelopes) == {"2026-11-25": 30, "2026-11-26": 21}


def test_pubsub_to_bigquery_streams_into_silver_and_dead_letters(emulators: Any, project_id: str) -> None:
    payloads, exp = generate(400, seed=5, bad_rate=0.1, dup_rate=0.1)
    doc = dict(SPEC, project=project_id, dead_letter={"topic": f"projects/{project_id}/topics/dead-letters"})
    spec = parse_spec(json.loads(json.dumps(doc)))
    subscription = create_ingest_targets(spec)
    now = dt.datetime.now(dt.UTC)
    stream = EventStream()
    for start in range(0, len(payloads), 100):
        stream = stream.add_elements([_message(start + i, x, now) for i, x in enumerate(payloads[start:start + 100])])
        stream = stream.advance_processing_time(1)
    p = _pipeline()
    build_ingest(p, spec, messages=p | stream.advance_watermark_to_infinity())
    p.run().wait_until_finish()

    assert count_rows(spec, "silver.example_source") == exp.valid
    assert count_rows(spec, "bronze.example_source") == exp.records_in
    assert bronze_attributes(spec, "bronze.example_source", "pubsub:m3") == {"n": "3"}, "the message's attributes"
    letters = pull_all(subscription, sum(exp.invalid.values()))
    assert Counter(m.attributes["reason"] for m in letters) == exp.invalid
    assert sorted((m.data, m.attributes["reason"]) for m in letters) == sorted(exp.rejects)
    assert all(m.attributes["origin"].startswith("pubsub:m") for m in letters)


def test_pubsub_to_bigquery_as_a_local_child_process(emulators: Any, project_id: str, tmp_path: Path) -> None:
    """How the reconciler runs a streaming job locally: ``python -m`` in a child process with
    the emulator environment, reading the real Pub/Sub emulator, stopped by killing it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from google.cloud import pubsub_v1

    from beam.common.clients import publisher_client

    payloads, exp = generate(120, seed=9, bad_rate=0.1, dup_rate=0.1)
    doc = dict(SPEC, project=project_id, dead_letter={"topic": f"projects/{project_id}/topics/dead-letters"})
    spec = parse_spec(doc)
    dl_subscription = create_ingest_targets(spec)
    topic = f"projects/{project_id}/topics/example_source"
    subscription = f"projects/{project_id}/subscriptions/example_source-ingest"
    publisher = publisher_client()
    publisher.create_topic(name=topic)
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
    # Published before the job starts: a backlog, which the local runner must not drop as late.
    for f in [publisher.publish(topic, x) for x in payloads]:
        f.result()

    (tmp_path / "spec.json").write_text(json.dumps(doc))
    log = (tmp_path / "job.log").open("wb")
    job = subprocess.Popen(
        [sys.executable, "-m", "beam.pubsub_to_bigquery", "--source_spec", str(tmp_path / "spec.json"),
         "--input_subscription", subscription],
        env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and count_rows(spec, "silver.example_source") < exp.valid:
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            time.sleep(1)
        assert count_rows(spec, "silver.example_source") == exp.valid
        letters = pull_all(dl_subscription, sum(exp.invalid.values()))
        assert Counter(m.attributes["reason"] for m in letters) == exp.invalid
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # its own session: the job and anything it started
        job.wait()
        log.close()
