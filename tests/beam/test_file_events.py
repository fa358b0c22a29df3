"""File-arrival ingestion: streaming gcs_to_bigquery driven by Cloud Storage notifications, and the
claims that make every landed object generation ingested exactly once.

Events are the JSON_API_V1 messages Cloud Storage publishes (built here from the object's own
resource, as GCS does; the local stand-in for notifications publishes the same, see
tests/providers/test_local_notifications.py). The pipelines run in process on the local
streaming runner fed by a TestStream, against the emulators; one test runs the template as the
local runner does, a child process reading the Pub/Sub emulator. Bronze is the witness of
"ingested once": it keeps every record read (the BigQuery emulator does not de-duplicate insert
ids), so a file read twice shows as twice its rows there.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream as EventStream
from emulator_setup import count_rows, create_ingest_targets, pull_all

from beam.common import files
from beam.common.clients import storage_client
from beam.common.runner import counters
from beam.common.spec import parse_spec
from beam.common.synthetic import SPEC, generate
from beam.gcs_to_bigquery import run
from beam.gcs_to_bigquery.events import FileEvent, file_event
from beam.gcs_to_bigquery.pipeline import build_streaming

SILVER, BRONZE = "silver.example_source", "bronze.example_source"


# --------------------------------------------------------------------------- helpers


def records(n: int, seed: int, tag: str = "") -> tuple[list[bytes], Any]:
    """``generate``'s records, their ids made distinct per ``tag`` (digits: still valid ids), so
    that two files' records are not each other's duplicates."""
    payloads, expected = generate(n, seed=seed)
    return [p.replace(b'"txn-', b'"txn-' + tag.encode()) for p in payloads], expected


def notification(blob: Any, event_type: str = "OBJECT_FINALIZE", message_id: str = "m1",
                 **custom: str) -> PubsubMessage:
    """The message Cloud Storage publishes for ``blob`` (JSON_API_V1: data = the object resource)."""
    blob.reload()
    resource = dict(blob._properties)
    attributes = {
        "notificationConfig": f"projects/_/buckets/{blob.bucket.name}/notificationConfigs/1",
        "eventType": event_type, "payloadFormat": "JSON_API_V1", "bucketId": blob.bucket.name,
        "objectId": blob.name, "objectGeneration": str(blob.generation), "eventTime": resource["updated"],
        **custom,
    }
    return PubsubMessage(json.dumps(resource).encode(), attributes, message_id=message_id,
                         publish_time=dt.datetime.now(dt.UTC))


def wait_for(condition: Any, job: Any, log: Any, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s; job log:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


class Source:
    """One source on the emulators: spec, tables, dead-letter topic, landing and Bronze buckets."""

    def __init__(self, project_id: str, unique: str, *, bronze_bucket: bool = True) -> None:
        bronze = {"table": BRONZE, **({"bucket": f"gs://{unique}-bronze"} if bronze_bucket else {})}
        self.doc = dict(SPEC, project=project_id, bronze=bronze,
                        dead_letter={"topic": f"projects/{project_id}/topics/example_source-dlq"})
        self.spec = parse_spec(json.loads(json.dumps(self.doc)))
        self.dead_letters = create_ingest_targets(self.spec)
        client = storage_client()
        self.landing = client.create_bucket(f"{unique}-landing")
        self.bronze = client.create_bucket(f"{unique}-bronze") if bronze_bucket else None
        self.pattern = f"gs://{unique}-landing/orders/"

    def land(self, name: str, payloads: list[bytes]) -> Any:
        blob = self.landing.blob(name)
        blob.upload_from_string(b"\n".join(payloads) + b"\n")
        return blob

    def rows(self, table: str) -> int:
        return count_rows(self.spec, table)

    def landing_names(self) -> list[str]:
        return sorted(b.name for b in storage_client().list_blobs(self.landing))

    def sweep(self, **build_args: Any) -> dict[str, int]:
        """One batch run (what the sweep job does on its schedule)."""
        if build_args:  # build() directly, for its test-only arguments
            from apache_beam.runners.portability.fn_api_runner import FnApiRunner

            from beam.gcs_to_bigquery.pipeline import build

            p = beam.Pipeline(runner=FnApiRunner())
            build(p, self.spec, self.pattern, **build_args)
            result = p.run()
            result.wait_until_finish()
            return counters(result)
        return counters(run(["--source_spec", json.dumps(self.doc), "--input_pattern", self.pattern]))

    def stream(self, *batches: list[PubsubMessage], run_id: str = "run1") -> None:
        """The streaming mode over these messages (each list one delivery, a second apart)."""
        stream = EventStream()
        for batch in batches:
            stream = stream.add_elements(batch).advance_processing_time(1)
        options = PipelineOptions()
        options.view_as(StandardOptions).streaming = True
        p = beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)
        build_streaming(p, self.spec, self.pattern, messages=p | stream.advance_watermark_to_infinity(),
                        run_id=run_id)
        p.run().wait_until_finish()


# --------------------------------------------------------------------------- events (no emulator)


def _attrs(**over: str) -> dict[str, str]:
    return {"eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1", "bucketId": "landing",
            "objectId": "orders/a.json", "objectGeneration": "1700000000000001", **over}


def test_a_finalize_event_under_the_pattern_is_that_generation_of_that_file():
    data = json.dumps({"name": "orders/a.json", "size": "42", "timeCreated": "2026-11-26T10:00:00.123Z"}).encode()
    found = file_event(_attrs(), data, "m7", "gs://landing/orders/")
    assert found == FileEvent(files.FileInfo("gs://landing/orders/a.json", 42, 1700000000000001,
                                             "2026-11-26T10:00:00.123000+00:00"), "m7")
    assert isinstance(file_event(_attrs(), b"not json", "m8", "gs://landing/orders/*.json"), FileEvent)


@pytest.mark.parametrize(("attributes", "pattern", "why"), [
    (_attrs(eventType="OBJECT_DELETE"), "gs://landing/orders/", "event type"),
    (_attrs(eventType="OBJECT_METADATA_UPDATE"), "gs://landing/orders/", "event type"),
    (_attrs(eventType="OBJECT_ARCHIVE"), "gs://landing/orders/", "event type"),
    (_attrs(objectId="other/a.json"), "gs://landing/orders/", "not under"),
    (_attrs(bucketId="elsewhere"), "gs://landing/orders/", "not under"),
    (_attrs(objectId="orders/a.csv"), "gs://landing/orders/*.json", "not under"),
    (_attrs(objectId="_headwater/claims/orders/a.json@1"), "gs://landing/", "not under"),
    (_attrs(objectId="orders/dir/"), "gs://landing/orders/", "not under"),
    ({"eventType": "OBJECT_FINALIZE"}, "gs://landing/orders/", "not an object event"),
    ({}, "gs://landing/orders/", "event type"),
])
def test_other_events_and_objects_are_ignored(attributes, pattern, why):
    assert why in file_event(attributes, b"{}", "m", pattern)


def test_the_event_filter_is_the_listing_rule():
    for pattern, path, expected in [
        ("gs://l/orders/", "gs://l/orders/2026/a.json", True),
        ("gs://l/orders/*.json", "gs://l/orders/a.json", True),
        ("gs://l/orders/*.json", "gs://l/orders/a.json.gz", False),
        ("gs://l/orders/one.json", "gs://l/orders/one.json", True),
        ("gs://l/orders/one.json", "gs://l/orders/one.json.gz", False),
        ("gs://l/", "gs://l/_headwater/claims/x@1", False),
        ("gs://l/orders/", "gs://other/orders/a.json", False),
    ]:
        assert files.matches(pattern, path) is expected, (pattern, path)


# --------------------------------------------------------------------------- claims (emulator)


def test_claim_outcomes(emulators: Any, unique: str) -> None:
    bucket = storage_client().create_bucket(f"{unique}-landing")
    blob = bucket.blob("orders/a.json")
    blob.upload_from_string(b'{"id": 1}\n')
    (info,) = files.match(f"gs://{unique}-landing/orders/")

    outcome, claimed = files.claim(info._replace(size=0, created=""), "event:r1:m1")
    assert outcome == files.CLAIMED and claimed.size == 10 and claimed.created, "the live generation's metadata"
    assert files.claim(info, "event:r1:m1")[0] == files.CLAIMED, "a retried bundle recognises its claim"
    assert files.claim(info, "event:r1:m2")[0] == files.HELD, "a duplicate event does not"
    assert files.claim(info, "sweep:r2")[0] == files.HELD, "nor does the sweep"
    assert files.claim(info, "sweep:r3", ttl_s=0)[0] == files.CLAIMED, "a claim older than the TTL is taken over"
    marker = json.loads(bucket.blob(f"_headwater/claims/orders/a.json@{info.generation}").download_as_bytes())
    assert marker["owner"] == "sweep:r3" and marker["state"] == "claimed"

    files.finish_claim(info, kept=True)
    assert files.claim(info, "sweep:r4", ttl_s=0)[0] == files.DONE, "done is for good"

    blob.upload_from_string(b'{"id": 2}\n')  # re-landed: a new generation, a new claim
    (again,) = files.match(f"gs://{unique}-landing/orders/")
    assert again.generation != info.generation and files.claim(again, "event:r1:m3")[0] == files.CLAIMED
    gone = info._replace(path=f"gs://{unique}-landing/orders/deleted.json")
    assert files.claim(gone, "event:r1:m4")[0] == files.GONE
    assert not bucket.blob(f"_headwater/claims/orders/deleted.json@{info.generation}").exists(), \
        "no marker is left for a generation that is gone"


def test_racing_claimants_exactly_one_wins(emulators: Any, unique: str) -> None:
    """On the emulator the create-only precondition is emulated under a lock file: still atomic."""
    bucket = storage_client().create_bucket(f"{unique}-landing")
    bucket.blob("orders/a.json").upload_from_string(b"{}\n")
    (info,) = files.match(f"gs://{unique}-landing/orders/")
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda i=i: outcomes.append(files.claim(info, f"event:r:{i}")[0]))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [files.CLAIMED] + [files.HELD] * 7


# --------------------------------------------------------------------------- streaming (emulators)


def test_a_landed_file_reaches_silver_from_its_event_without_a_batch_run(
        emulators: Any, project_id: str, unique: str) -> None:
    payloads, expected = generate(200, seed=21)
    source = Source(project_id, unique)
    blob = source.land("orders/2026-11-26/part-1.json", payloads)

    source.stream([notification(blob)])

    assert source.rows(SILVER) == expected.valid
    assert source.rows(BRONZE) == expected.records_in
    letters = pull_all(source.dead_letters, sum(expected.invalid.values()))
    assert len(letters) == sum(expected.invalid.values())
    assert source.landing_names() == [], "moved to Bronze, and its claim deleted"
    day = blob.time_created.astimezone(dt.UTC).date().isoformat()
    assert [b.name for b in storage_client().list_blobs(source.bronze)] == [
        f"source=example_source/date={day}/2026-11-26/part-1.json"]


def test_the_same_event_delivered_twice_ingests_once(emulators: Any, project_id: str, unique: str) -> None:
    payloads, expected = generate(60, seed=22)
    source = Source(project_id, unique)
    event = notification(source.land("orders/a.json", payloads), message_id="m1")
    again = PubsubMessage(event.data, event.attributes, message_id="m2", publish_time=event.publish_time)
    later = PubsubMessage(event.data, event.attributes, message_id="m3", publish_time=event.publish_time)

    # Twice in one delivery (Cloud Storage published it twice), and once more after it was moved.
    source.stream([event, again], [later])

    assert source.rows(BRONZE) == expected.records_in
    assert source.rows(SILVER) == expected.valid
    assert source.landing_names() == []


def test_the_sweep_and_the_event_ingest_once_whichever_comes_first(
        emulators: Any, project_id: str, unique: str) -> None:
    first, expected_first = generate(40, seed=23)
    second, expected_second = records(30, seed=24, tag="777")
    source = Source(project_id, unique)
    swept = notification(source.land("orders/swept-first.json", first), message_id="m1")

    assert source.sweep()["files_claimed"] == 1  # the sweep sees it first, moves it...
    source.stream([swept])  # ...then its event arrives: that generation is gone, nothing is read

    evented = source.land("orders/event-first.json", second)
    source.stream([notification(evented, message_id="m2")])  # the event first...
    assert source.sweep().get("files_claimed", 0) == 0  # ...the sweep then finds nothing to claim

    assert source.rows(BRONZE) == expected_first.records_in + expected_second.records_in
    assert source.rows(SILVER) == expected_first.valid + expected_second.valid


def test_the_sweep_skips_a_file_an_event_holds_and_takes_over_an_abandoned_claim(
        emulators: Any, project_id: str, unique: str) -> None:
    payloads, expected = generate(30, seed=25)
    source = Source(project_id, unique)
    source.land("orders/a.json", payloads)
    (info,) = files.match(source.pattern)
    assert files.claim(info, "event:other-run:m1")[0] == files.CLAIMED  # an event job is reading it

    held = source.sweep()
    assert (held.get("files_claimed", 0), held["files_claimed_elsewhere"]) == (0, 1)
    assert source.landing_names() != [] and source.rows(BRONZE) == 0

    taken = source.sweep(claim_ttl_s=0)  # later than the TTL: that event job died holding it
    assert taken["files_claimed"] == 1 and taken["files_moved"] == 1
    assert source.rows(BRONZE) == expected.records_in and source.landing_names() == []


def test_without_a_bronze_bucket_files_stay_and_are_not_ingested_again(
        emulators: Any, project_id: str, unique: str) -> None:
    payloads, expected = generate(30, seed=26)
    source = Source(project_id, unique, bronze_bucket=False)
    event = notification(source.land("orders/a.json", payloads))

    source.stream([event])
    again = source.sweep()

    assert again["files_already_ingested"] == 1 and again.get("records_in", 0) == 0
    assert source.rows(BRONZE) == expected.records_in
    assert source.landing_names()[-1] == "orders/a.json"
    marker = next(n for n in source.landing_names() if n.startswith("_headwater/claims/orders/a.json@"))
    assert json.loads(source.landing.blob(marker).download_as_bytes())["state"] == "done"


def test_relanding_a_name_is_a_new_file_and_an_overwritten_generation_is_not_read(
        emulators: Any, project_id: str, unique: str) -> None:
    one, expected_one = generate(20, seed=27)
    two, expected_two = records(25, seed=28, tag="777")
    three, expected_three = records(15, seed=29, tag="888")
    source = Source(project_id, unique)

    source.stream([notification(source.land("orders/daily.json", one), message_id="m1")])
    source.stream([notification(source.land("orders/daily.json", two), message_id="m2")])  # same name again
    assert source.rows(BRONZE) == expected_one.records_in + expected_two.records_in

    stale = notification(source.land("orders/daily.json", three), message_id="m3")
    fresh = notification(source.land("orders/daily.json", three[:5]), message_id="m4")  # overwritten at once
    source.stream([stale, fresh])

    assert source.rows(BRONZE) == expected_one.records_in + expected_two.records_in + 5, \
        "the overwritten generation is gone: only the one that replaced it is read"
    bronze_files = sorted(b.name.rsplit("/", 1)[1] for b in storage_client().list_blobs(source.bronze))
    assert bronze_files == ["daily-2.json", "daily-3.json", "daily.json"]


def test_other_events_and_prefixes_are_ignored_by_the_job(emulators: Any, project_id: str, unique: str) -> None:
    payloads, _ = generate(10, seed=30)
    source = Source(project_id, unique)
    inside = source.land("orders/a.json", payloads)
    outside = source.land("elsewhere/b.json", payloads)
    claim = source.land("_headwater/claims/orders/x.json@1", [b"{}"])
    junk = PubsubMessage(b"hello", {"source_id": "x"}, message_id="m9", publish_time=dt.datetime.now(dt.UTC))

    source.stream([notification(inside, "OBJECT_METADATA_UPDATE", "m1"), notification(inside, "OBJECT_DELETE", "m2"),
                   notification(inside, "OBJECT_ARCHIVE", "m3"), notification(outside, message_id="m4"),
                   notification(claim, message_id="m5"), junk])

    assert source.rows(BRONZE) == 0
    assert source.landing_names() == ["_headwater/claims/orders/x.json@1", "elsewhere/b.json", "orders/a.json"]


def test_the_template_as_a_streaming_job_reading_the_pubsub_emulator(
        emulators: Any, project_id: str, unique: str, tmp_path: Any) -> None:
    """How the local runner runs the ingest job: ``python -m beam.gcs_to_bigquery`` with
    ``--input_subscription`` in a child process; events published to the Pub/Sub emulator as
    Cloud Storage would (the same event twice). The file reaches Silver and moves to Bronze with
    no batch run, while the job keeps running; the repeated event reads nothing."""
    import os
    import signal
    import subprocess
    import sys

    from google.cloud import pubsub_v1

    from beam.common.clients import publisher_client

    payloads, expected = generate(80, seed=31)
    source = Source(project_id, unique)
    topic = f"projects/{project_id}/topics/example_source"
    subscription = f"projects/{project_id}/subscriptions/example_source-ingest"
    publisher = publisher_client()
    publisher.create_topic(name=topic)
    pubsub_v1.SubscriberClient().create_subscription(name=subscription, topic=topic)
    (tmp_path / "spec.json").write_text(json.dumps(source.doc))
    log = (tmp_path / "job.log").open("wb")
    job = subprocess.Popen(
        [sys.executable, "-m", "beam.gcs_to_bigquery", f"--source_spec={tmp_path / 'spec.json'}",
         f"--input_pattern={source.pattern}", f"--input_subscription={subscription}"],
        env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        event = notification(source.land("orders/a.json", payloads), **{"headwater-source": "example_source"})
        publisher.publish(topic, event.data, **event.attributes).result()
        wait_for(lambda: source.rows(SILVER) == expected.valid, job, tmp_path / "job.log")
        # The same event again (Cloud Storage delivers at least once). Besides, a message makes the
        # local runner's idle pull return: it advances the watermark only then (its pull waits
        # up to 30 s for messages), and the file moves once the watermark is past its sinks.
        publisher.publish(topic, event.data, **event.attributes).result()
        wait_for(lambda: source.landing_names() == [], job, tmp_path / "job.log")
        assert source.rows(SILVER) == expected.valid
        assert source.rows(BRONZE) == expected.records_in, "the repeated event read nothing"
        assert job.poll() is None, "a streaming job keeps running"
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        log.close()
