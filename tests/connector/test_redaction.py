"""What redaction may rewrite (docs/connector-contract.md, "Secrets in what the connector writes").

* Text the connector writes itself (log lines, errors, /healthz, the ``origin`` attribute): every
  form of a secret of at least ``REDACT_MIN_CHARS`` characters is replaced by ``[REDACTED]``.
* Data the API sent (records, dead-letter bodies): published as received, except a secret of at
  least ``RECORD_SCRUB_MIN_CHARS`` characters - long enough that nothing but the credential
  itself matches - which is replaced where the API echoed it.
* A shorter secret cannot be told apart from ordinary text (``2026`` is in every timestamp of the
  year): it is not redacted at all, and a warning at start says so without quoting it.
"""

from __future__ import annotations

import json
import logging
import time
from calendar import timegm

import pytest

from connector import logs
from connector.publish import RecordPublisher
from tests.connector.conftest import read_checkpoint, rest_spec
from tests.connector.test_units import _Capture

SHORT_WARNING = "too short to be redacted reliably"


def _records_of_2026(first: int, last: int) -> list[dict]:
    return [{"id": i, "updated_at": f"2026-11-02T10:{i // 60:02d}:{i % 60:02d}Z", "note": f"FY2026 figures, batch 2026-{i}"}
            for i in range(first, last + 1)]


def test_a_short_key_corrupts_neither_records_nor_timestamps(api, pubsub, bucket, make_poller,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = "2026"
    api.records = _records_of_2026(1, 25)
    api.expect = ("query", "api_key", key)
    spec = rest_spec(api, pubsub, bucket, auth={"type": "api_key", "query": "api_key"},
                     cursor_field="updated_at", cursor_param="updated_since", max_retries=0)
    poller = make_poller(spec, key)
    assert poller.poll_once().outcome == "complete"
    api.records.extend(_records_of_2026(26, 30))
    assert poller.poll_once().outcome == "complete"
    api.inject(500, times=10**6)
    failed = poller.poll_once()
    assert failed.outcome == "failed"

    # Records: exactly what the API served; attributes: the real page URLs (but the api_key).
    messages = pubsub.records()
    assert sorted((json.loads(m.data) for m in messages), key=lambda r: r["id"]) == api.records
    assert all(logs.REDACTED not in m.data.decode() + json.dumps(m.attributes) for m in messages)
    assert all("api_key" not in m.attributes["origin"] for m in messages), "the parameter is dropped by name"
    assert any("updated_since=2026-11-02T10%3A00%3A25Z" in m.attributes["origin"] for m in messages)
    # The checkpoint, the error, the logs: dates intact.
    assert read_checkpoint(bucket)["cursor"] == "2026-11-02T10:00:30Z"
    assert "updated_since=2026-11-02T10%3A00%3A30Z" in failed.error and "api_key" not in failed.error
    assert logs.REDACTED not in caplog.text and "2026-11-02" in caplog.text
    # The log line's own timestamp (Cloud Run's JSON line) - a record made in November 2026.
    record = logging.LogRecord("connector", logging.INFO, __file__, 1, "cursor now %s", ("2026-11-02T10:00:30Z",), None)
    record.created, record.msecs = timegm((2026, 11, 2, 10, 0, 31)), 0
    line = json.loads(logs.JsonLines().format(record))
    assert (line["time"], line["message"]) == ("2026-11-02T10:00:31.000Z", "cursor now 2026-11-02T10:00:30Z")

    # One warning at start (not one per poller or poll), which does not quote the key.
    warnings = [r for r in caplog.records if SHORT_WARNING in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert key not in warnings[0].getMessage() and "HEADWATER_CONNECTOR_SECRET" in warnings[0].getMessage()
    make_poller(spec, key)
    assert len([r for r in caplog.records if SHORT_WARNING in r.getMessage()]) == 1


LONG_KEY = "Echoed-api-key-0123456789"  # long enough to be scrubbed from records too
MID_KEY = "k3y-0123ab"                  # redacted from logs, published as received in records


@pytest.mark.parametrize("key", [LONG_KEY, MID_KEY], ids=["long-key", "mid-length-key"])
def test_a_key_echoed_by_the_api_never_reaches_logs_errors_or_attributes(api, pubsub, bucket, make_poller,
                                                                         caplog: pytest.LogCaptureFixture,
                                                                         key: str) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    # The API echoes the key into a record and into its next-page link (as another parameter);
    # the next page never answers, so the link ends up in an error, a log line and /healthz.
    api.expect = ("header", "X-Api-Key", key)
    api.raw["p1"] = json.dumps({"data": [{"id": 1, "note": f"your key is {key}"}],
                                "next": f"/raw/p2?page=2&sig={key}"}).encode()
    api.inject(503, times=10**6, when=lambda seen: seen.path == "/raw/p2")
    poller = make_poller(rest_spec(api, pubsub, bucket, "/raw/p1", auth={"type": "api_key", "header": "X-Api-Key"},
                                   pagination={"type": "next_url", "path": "next"}, max_retries=1), key)
    partial = poller.poll_once()
    failed = poller.poll_once()
    assert (partial.outcome, failed.outcome) == ("partial", "failed")
    logging.getLogger("connector.test").warning("a message that quotes %s", key)  # any log line at all

    (message,) = pubsub.records()
    texts = [caplog.text, partial.error, failed.error, json.dumps(poller.health()[1]), json.dumps(message.attributes)]
    texts += [logs.JsonLines().format(r) for r in caplog.records]
    assert "/raw/p2?page=2" in failed.error, "the URL is shown, without the parameter that carries the key"
    for text in texts:
        assert key not in text
    assert logs.REDACTED in caplog.text
    # In the record: scrubbed when the key is long enough to be nothing else; else as received.
    note = json.loads(message.data)["note"]
    assert note == ("your key is [REDACTED]" if key == LONG_KEY else f"your key is {key}")
    assert [r for r in caplog.records if SHORT_WARNING in r.getMessage()] == []


def test_the_thresholds() -> None:
    assert logs.secret_forms("2026") == set() and logs.record_secret_forms("2026") == set()
    assert MID_KEY in logs.secret_forms(MID_KEY) and logs.record_secret_forms(MID_KEY) == set()
    assert LONG_KEY in logs.secret_forms(LONG_KEY) and LONG_KEY in logs.record_secret_forms(LONG_KEY)
    # user:password - each part on its own length: a short password is not a form by itself.
    assert "pw" not in logs.secret_forms("alice-the-admin:pw")
    assert "alice-the-admin:pw" in logs.secret_forms("alice-the-admin:pw")
    assert logs.too_short_to_redact("alice-the-admin:pw") and not logs.too_short_to_redact(LONG_KEY)
    assert logs.too_short_to_redact("2026") and not logs.too_short_to_redact(None)


def test_records_keep_short_and_mid_length_secrets_and_lose_long_ones() -> None:
    transport = _Capture()
    publisher = RecordPublisher(transport, source_id="s", topic="t", dead_letter_topic="d",
                                secrets=logs.record_secret_forms("2026") | logs.record_secret_forms(MID_KEY)
                                | logs.record_secret_forms(LONG_KEY))
    record = {"at": "2026-11-02T10:00:00Z", "mid": MID_KEY, "long": LONG_KEY}
    publisher.wait(publisher.publish_records([record], origin="o", fetched_at=time.strftime("%Y")))
    (_, data, _), = transport.sent
    assert json.loads(data) == {**record, "long": logs.REDACTED}
