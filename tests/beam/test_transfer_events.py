"""cloud_transfer sources in gcs_to_bigquery: landing files kept in place (copied to Bronze, their
claims done), and a Storage Transfer run's completion message sweeping what the run copied.

The landing copies are what the transfer's next run compares against: a file that ingestion
moved away would be copied - and ingested - again (docs/storage-transfer.md). The streaming
pipeline runs in process on the local runner fed by a TestStream, against the emulators, as in
tests/beam/test_file_events.py (whose helpers these tests share).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from test_file_events import BRONZE, SILVER, Source, notification, records

from beam.common.clients import storage_client
from beam.common.spec import SpecError, parse_spec
from beam.common.synthetic import SPEC, generate
from beam.gcs_to_bigquery.events import SWEEP_MARGIN_S, TransferSweep, transfer_sweep

JOB = "transferJobs/headwater-dev-lake-transfer-20261130100000"


def completion(started: dt.datetime, event_type: str = "TRANSFER_OPERATION_SUCCESS",
               message_id: str = "t1") -> PubsubMessage:
    """What Storage Transfer publishes when a run ends (notification_config, payload JSON)."""
    operation = {"name": "transferOperations/x-1", "projectId": "p", "transferJobName": JOB,
                 "startTime": started.isoformat().replace("+00:00", "Z"), "status": "SUCCESS",
                 "counters": {"objectsCopiedToSink": "2"}}
    attributes = {"eventType": event_type, "payloadFormat": "JSON", "projectId": "p", "transferJobName": JOB,
                  "transferOperationName": "transferOperations/x-1"}
    return PubsubMessage(json.dumps(operation).encode(), attributes, message_id=message_id,
                         publish_time=dt.datetime.now(dt.UTC))


def kept(source: Source) -> Source:
    """The source's spec as compile makes it for a cloud_transfer source: keep_landing."""
    source.doc["bronze"]["keep_landing"] = True
    source.spec = parse_spec(json.loads(json.dumps(source.doc)))
    return source


# --------------------------------------------------------------------------- no emulator


def test_a_transfer_completion_is_a_sweep_since_the_run_began():
    start = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    message = completion(start)
    sweep = transfer_sweep(message.attributes, message.data, "t1")
    assert sweep == TransferSweep("transferOperations/x-1",
                                  (start - dt.timedelta(seconds=SWEEP_MARGIN_S)).isoformat(), "t1")
    failed = completion(start, "TRANSFER_OPERATION_FAILED")
    assert transfer_sweep(failed.attributes, failed.data, "t2") is not None, "a failed run may have copied some"
    assert transfer_sweep({"eventType": "TRANSFER_OPERATION_SUCCESS"}, b"", "t3").since == "", "no payload: all"
    assert transfer_sweep({"eventType": "OBJECT_FINALIZE"}, b"{}", "m") is None


def test_keep_landing_needs_a_bucket_and_a_boolean():
    with pytest.raises(SpecError, match=r"\$.bronze.keep_landing: needs \$.bronze.bucket"):
        parse_spec({**SPEC, "bronze": {"table": "bronze.x", "keep_landing": True}})
    with pytest.raises(SpecError, match="must be true or false"):
        parse_spec({**SPEC, "bronze": {"table": "bronze.x", "bucket": "gs://b", "keep_landing": "yes"}})
    assert parse_spec({**SPEC, "bronze": {"table": "bronze.x", "bucket": "gs://b", "keep_landing": True}}) \
        .bronze_keep_landing


# --------------------------------------------------------------------------- on the emulators


def test_kept_files_are_copied_to_bronze_stay_in_landing_and_are_not_read_again(
        emulators: Any, project_id: str, unique: str) -> None:
    payloads, expected = generate(50, seed=41)
    source = kept(Source(project_id, unique))
    blob = source.land("orders/day/part-1.json", payloads)
    event = notification(blob, message_id="m1")

    source.stream([event])
    assert source.rows(SILVER) == expected.valid and source.rows(BRONZE) == expected.records_in
    assert "orders/day/part-1.json" in source.landing_names(), "kept: the transfer's record of what it copied"
    day = blob.time_created.astimezone(dt.UTC).date().isoformat()
    assert [b.name for b in storage_client().list_blobs(source.bronze)] == [
        f"source=example_source/date={day}/day/part-1.json"], "and archived in Bronze, as a moved file would be"
    marker = next(n for n in source.landing_names() if n.startswith("_headwater/claims/orders/day/part-1.json@"))
    assert json.loads(source.landing.blob(marker).download_as_bytes())["state"] == "done"

    # The same event again, a sweep, a transfer completion: the generation is done, nothing is read.
    again = PubsubMessage(event.data, event.attributes, message_id="m2", publish_time=event.publish_time)
    source.stream([again, completion(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))], run_id="run2")
    assert source.sweep()["files_already_ingested"] == 1
    assert source.rows(BRONZE) == expected.records_in and source.rows(SILVER) == expected.valid
    assert len(list(storage_client().list_blobs(source.bronze))) == 1, "not archived twice"


def test_a_transfer_completion_ingests_files_whose_events_were_missed_once(
        emulators: Any, project_id: str, unique: str) -> None:
    first, expected_first = records(30, seed=42, tag="1")
    second, expected_second = records(20, seed=43, tag="2")
    source = kept(Source(project_id, unique))
    started = dt.datetime.now(dt.UTC)
    a = source.land("orders/a.json", first)
    b = source.land("orders/b.json", second)

    # No file event reached the job (say, the notification was created after the copies): the
    # run's completion message alone brings both in; the late events then find them done.
    source.stream([completion(started)])
    assert source.rows(BRONZE) == expected_first.records_in + expected_second.records_in
    source.stream([notification(a, message_id="m1"), notification(b, message_id="m2"), completion(started)],
                  run_id="run2")
    assert source.rows(BRONZE) == expected_first.records_in + expected_second.records_in
    assert source.rows(SILVER) == expected_first.valid + expected_second.valid


def test_a_completion_sweeps_only_what_the_run_can_have_copied(
        emulators: Any, project_id: str, unique: str) -> None:
    payloads, expected = generate(10, seed=44)
    source = kept(Source(project_id, unique))
    source.land("orders/old.json", payloads)
    # A run that began long after the file was landed did not copy it: its sweep leaves it
    # (were it unclaimed, its own event or a later run's sweep would bring it in).
    source.stream([completion(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))])
    assert source.rows(BRONZE) == 0
    source.stream([completion(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))], run_id="run2")
    assert source.rows(BRONZE) == expected.records_in


def test_two_completions_close_together_still_ingest_each_file_once(
        emulators: Any, project_id: str, unique: str) -> None:
    # Two runs seconds apart (the demo runs the job twice): their sweeps meet the same files while
    # the first is still reading them. Each completion is its own claimant, so the second sweep
    # finds the first's claim held, not a retry of its own.
    payloads, expected = generate(40, seed=45)
    source = kept(Source(project_id, unique))
    started = dt.datetime.now(dt.UTC)
    source.land("orders/a.json", payloads)
    source.stream([completion(started, message_id="t1"), completion(started, message_id="t2")])
    assert source.rows(BRONZE) == expected.records_in
    assert source.rows(SILVER) == expected.valid
