"""The records at the incremental cursor's value: read again by every poll (the bound is
inclusive, so none is skipped), published once - not once per poll, which the pipeline's dedup
(a window of minutes) would let into Silver again and again on a quiet API.

Against the real local API (tests/connector/fake_api.py), the Pub/Sub and Storage emulators.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from concurrent.futures import Future

import pytest
from google.cloud import storage

from connector.publish import RecordPublisher
from tests.connector.conftest import SOURCE_ID, read_checkpoint, rest_spec
from tests.connector.fake_api import make_records

BOUNDARY_IDS = (33, 34, 35)  # the last three records share one updated_at: the cursor's value


def record_fingerprint(record: dict) -> str:
    """As docs/connector-contract.md defines it: SHA-256 of the canonical JSON, 32 hex digits."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


@pytest.fixture
def spec(api, pubsub, bucket):
    """An incremental spec over the fake API, whose last three records share the last value."""
    last = api.records[-1]["updated_at"]
    for record in api.records:
        if record["id"] in BOUNDARY_IDS:
            record["updated_at"] = last
    return rest_spec(api, pubsub, bucket, cursor_field="updated_at", cursor_param="updated_since")


def published(pubsub) -> Counter:
    return Counter(json.loads(m.data)["id"] for m in pubsub.records())


def boundary_of(bucket: str) -> set[str]:
    return set(read_checkpoint(bucket)["boundary"])


def fingerprints(api, ids) -> set[str]:
    return {record_fingerprint(r) for r in api.records if r["id"] in ids}


def test_a_quiet_api_publishes_each_record_exactly_once(api, pubsub, bucket, spec, make_poller) -> None:
    poller = make_poller(spec)
    assert poller.poll_once().outcome == "complete"
    checkpoint = read_checkpoint(bucket)
    api.requests.clear()
    quiet = [poller.poll_once() for _ in range(4)]

    counts = published(pubsub)
    assert sorted(counts) == list(range(1, 36)) and set(counts.values()) == {1}, counts
    # The boundary records were read again by every poll - the bound stays inclusive - and left out.
    requests = api.data_requests()
    assert len(requests) == 4 and all(r.query == {"updated_since": checkpoint["cursor"]} for r in requests)
    assert [(q.outcome, q.records, q.unchanged) for q in quiet] == [("complete", 0, 3)] * 4
    assert checkpoint["cursor"] == api.records[-1]["updated_at"]
    assert set(checkpoint["boundary"]) == fingerprints(api, BOUNDARY_IDS)
    assert read_checkpoint(bucket)["written_at"] == checkpoint["written_at"], "a quiet poll writes nothing"


def test_a_record_changed_or_added_at_the_cursor_value_is_published(api, pubsub, bucket, spec, make_poller) -> None:
    poller = make_poller(spec)
    poller.poll_once()
    pubsub.records()  # drained
    at = api.records[-1]["updated_at"]

    # Updated in place without its cursor value moving: a new fingerprint, published again.
    api.records[-2] = {**api.records[-2], "v": "changed"}  # id 34
    changed = poller.poll_once()
    assert [json.loads(m.data) for m in pubsub.records()] == [{"id": 34, "updated_at": at, "v": "changed"}]
    assert (changed.records, changed.unchanged) == (1, 2)
    assert boundary_of(bucket) == fingerprints(api, BOUNDARY_IDS), "the set is the records as they are now"

    # A new record with the same cursor value.
    api.records.append({"id": 36, "updated_at": at, "v": "new"})
    added = poller.poll_once()
    assert [json.loads(m.data)["id"] for m in pubsub.records()] == [36]
    assert (added.records, added.unchanged) == (1, 3)
    assert boundary_of(bucket) == fingerprints(api, (*BOUNDARY_IDS, 36))

    # Quiet again: nothing more.
    for _ in range(3):
        poller.poll_once()
    assert pubsub.records() == []


def test_when_the_cursor_advances_the_set_is_replaced(api, pubsub, bucket, spec, make_poller) -> None:
    poller = make_poller(spec)
    poller.poll_once()
    pubsub.records()
    api.records.extend(make_records(38)[35:])  # 36-38, later values
    moved = poller.poll_once()
    assert sorted(published(pubsub)) == [36, 37, 38]
    assert (moved.records, moved.unchanged) == (3, 3), "33-35 read at the old cursor, left out"
    checkpoint = read_checkpoint(bucket)
    assert checkpoint["cursor"] == api.records[-1]["updated_at"]
    assert set(checkpoint["boundary"]) == fingerprints(api, (38,))
    poller.poll_once()
    assert pubsub.records() == []


def test_a_checkpoint_without_the_set_still_loads(api, pubsub, bucket, spec, make_poller) -> None:
    """A checkpoint an earlier runtime wrote: the boundary records go out once more, then never."""
    at = api.records[-1]["updated_at"]
    old = {"version": 1, "source_id": SOURCE_ID, "written_at": "2024-01-01T00:00:00.000Z", "cursor": at,
           "resume": None}
    storage.Client().bucket(bucket).blob(f"_connectors/{SOURCE_ID}/state.json").upload_from_string(json.dumps(old))
    poller = make_poller(spec)
    assert [poller.poll_once().outcome for _ in range(3)] == ["complete"] * 3
    assert published(pubsub) == Counter(BOUNDARY_IDS)
    assert boundary_of(bucket) == fingerprints(api, BOUNDARY_IDS)


def test_the_set_is_checkpointed_only_after_the_publish_was_acknowledged(api, pubsub, bucket, spec,
                                                                         make_poller) -> None:
    poller = make_poller(spec)
    poller.poll_once()
    pubsub.records()
    before = read_checkpoint(bucket)
    at = api.records[-1]["updated_at"]
    api.records.append({"id": 36, "updated_at": at, "v": "new"})

    class Refuse36:  # Pub/Sub refuses the new record
        def publish(self, topic: str, data: bytes, **attributes: str) -> Future:
            future: Future = Future()
            if json.loads(data)["id"] == 36:
                future.set_exception(RuntimeError("503 unavailable"))
            else:
                future.set_result("1")
            return future

    poller.publisher = RecordPublisher(Refuse36(), source_id=SOURCE_ID, topic=pubsub.topic,
                                       dead_letter_topic=pubsub.dead_letter_topic)
    assert poller.poll_once().outcome == "failed"
    retried = make_poller(spec).poll_once()
    assert retried.outcome == "complete"
    assert [json.loads(m.data)["id"] for m in pubsub.records()] == [36], "36 once, and nothing else again"
    assert (retried.records, retried.unchanged) == (1, 3)
    assert before["boundary"] == sorted(fingerprints(api, BOUNDARY_IDS))
    assert boundary_of(bucket) == fingerprints(api, (*BOUNDARY_IDS, 36))


def test_the_set_is_not_advanced_by_a_publish_that_failed(api, pubsub, bucket, spec, make_poller) -> None:
    poller = make_poller(spec)
    poller.poll_once()
    before = read_checkpoint(bucket)
    api.records.append({"id": 36, "updated_at": api.records[-1]["updated_at"], "v": "new"})

    class RefuseAll:
        def publish(self, topic: str, data: bytes, **attributes: str) -> Future:
            future: Future = Future()
            future.set_exception(RuntimeError("503 unavailable"))
            return future

    poller.publisher = RecordPublisher(RefuseAll(), source_id=SOURCE_ID, topic=pubsub.topic,
                                       dead_letter_topic=pubsub.dead_letter_topic)
    assert poller.poll_once().outcome == "failed"
    after = read_checkpoint(bucket)
    assert (after["cursor"], after["boundary"]) == (before["cursor"], before["boundary"])
    assert after["resume"]["boundary"] == [], "nothing of the failed page counts as read"


def test_an_unfinished_walk_carries_the_records_it_read_at_its_greatest_value(api, pubsub, bucket,
                                                                              make_poller) -> None:
    """Records 21-35 share the last value, across pages 3 and 4; a budget of 3 requests ends the
    first walk after page 3, the next poll reads page 4: the set covers both pages."""
    last = api.records[-1]["updated_at"]
    for record in api.records[20:]:
        record["updated_at"] = last
    spec = rest_spec(api, pubsub, bucket, cursor_field="updated_at", cursor_param="updated_since",
                     max_requests_per_minute=3)
    assert make_poller(spec).poll_once().outcome == "partial"
    resume = read_checkpoint(bucket)["resume"]
    assert make_poller(spec).poll_once().outcome == "complete"  # a fresh budget
    quiet = make_poller(spec).poll_once()  # two pages of boundary records

    counts = published(pubsub)
    assert sorted(counts) == list(range(1, 36)) and set(counts.values()) == {1}, counts
    assert (quiet.outcome, quiet.pages, quiet.records, quiet.unchanged) == ("complete", 2, 0, 15)
    assert (resume["max_seen"], set(resume["boundary"])) == (last, fingerprints(api, range(21, 31)))
    assert boundary_of(bucket) == fingerprints(api, range(21, 36))


def test_beyond_the_bound_the_records_not_remembered_are_published_again_never_skipped(
        api, pubsub, bucket, spec, make_poller, caplog: pytest.LogCaptureFixture) -> None:
    poller = make_poller(spec)
    poller.boundary_limit = 2  # three records share the value: one is not remembered
    with caplog.at_level(logging.WARNING, logger="connector.rest_api"):
        poller.poll_once()
    pubsub.records()
    quiet = [poller.poll_once() for _ in range(3)]

    # The smallest fingerprints are kept (whatever order the API serves): the largest is forgotten.
    forgotten = max((r for r in api.records if r["id"] in BOUNDARY_IDS), key=record_fingerprint)["id"]
    assert published(pubsub) == Counter({forgotten: 3})
    assert [(q.records, q.unchanged) for q in quiet] == [(1, 2)] * 3
    assert "more than 2 records share the cursor value" in caplog.text
    assert boundary_of(bucket) == fingerprints(api, set(BOUNDARY_IDS) - {forgotten})
