"""Cloud Storage file events: the Pub/Sub notifications that drive streaming ``gcs_to_bigquery``.

A bucket's notification config (headwater's ``storage_notification`` resource) publishes one
message per object change to the source's topic. With payload format ``JSON_API_V1`` a message
is (https://cloud.google.com/storage/docs/pubsub-notifications):

* attributes: ``eventType`` (``OBJECT_FINALIZE`` when an object generation has been written;
  also ``OBJECT_DELETE``, ``OBJECT_ARCHIVE``, ``OBJECT_METADATA_UPDATE``), ``bucketId``,
  ``objectId`` (the object name), ``objectGeneration``, ``payloadFormat``, ``eventTime``,
  ``notificationConfig``, ``overwroteGeneration`` when it replaced one, and the config's custom
  attributes (headwater's ``managed-by``, ``headwater-source``, ...);
* data: the object's resource as JSON (``name``, ``bucket``, ``generation``, ``size``,
  ``timeCreated``, ...).

`ParseFileEvents` keeps the finalize events of files the job's ``--input_pattern`` names
(`beam.common.files.matches`: the same rule the batch listing uses; names under
``_headwater/`` never count) and turns each into a :class:`FileEvent`: the landing file, pinned
to the generation the event announced, and the message id (which names the claimant, see
``beam.common.files.claim``). Everything else is acknowledged and dropped, counted as
``file_events_ignored`` - other event types, other prefixes, messages that are not object
events at all. Size and creation time come from the data when it parses; the claim replaces
them with the live object's anyway.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import apache_beam as beam

from beam.common import files
from beam.common.transforms import counter

FINALIZE = "OBJECT_FINALIZE"
log = logging.getLogger(__name__)


class FileEvent(NamedTuple):
    """A landing file announced by an event: the file (its generation pinned) and the message id."""

    file: files.FileInfo
    message_id: str


def _object_resource(data: bytes | None) -> Mapping[str, Any]:
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _created(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return ""
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.UTC).isoformat()
    except ValueError:
        return ""


def file_event(attributes: Mapping[str, str], data: bytes | None, message_id: str,
               input_pattern: str) -> FileEvent | str:
    """The :class:`FileEvent` of one notification, or why it is ignored (a short reason)."""
    event_type = attributes.get("eventType")
    if event_type != FINALIZE:
        return f"event type {event_type!r}"
    bucket, name, generation = attributes.get("bucketId"), attributes.get("objectId"), attributes.get("objectGeneration")
    if not bucket or not name or not (generation or "").isdigit():
        return "not an object event (bucketId, objectId or objectGeneration missing)"
    path = f"gs://{bucket}/{name}"
    if not files.matches(input_pattern, path):
        return f"{path} is not under {input_pattern}"
    resource = _object_resource(data)
    size = resource.get("size")
    info = files.FileInfo(path, int(size) if str(size).isdigit() else 0, int(generation),
                          _created(resource.get("timeCreated")))
    return FileEvent(info, message_id)


class ParseFileEvents(beam.DoFn):
    """Pub/Sub messages (``PubsubMessage``, with attributes) -> :class:`FileEvent` of landing files."""

    def __init__(self, input_pattern: str) -> None:
        self.input_pattern = input_pattern

    def setup(self) -> None:
        self.events = counter("file_events")
        self.ignored = counter("file_events_ignored")

    def process(self, message: Any) -> Iterator[FileEvent]:
        self.events.inc()
        found = file_event(message.attributes or {}, message.data, message.message_id or "", self.input_pattern)
        if isinstance(found, FileEvent):
            yield found
            return
        self.ignored.inc()
        log.debug("ignoring message %s: %s", message.message_id, found)
