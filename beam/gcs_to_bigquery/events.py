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

**Transfer runs** (cloud_transfer sources). A Storage Transfer job announces the end of each
run on the same topic (its ``notification_config``): attributes ``eventType``
(``TRANSFER_OPERATION_SUCCESS``, ``_FAILED`` or ``_ABORTED``), ``payloadFormat``, ``projectId``,
``transferJobName``, ``transferOperationName``; data the ``TransferOperation`` as JSON, whose
``startTime`` says when the run began. Such a message becomes a :class:`TransferSweep` (a side
output of `ParseFileEvents`, ``SWEEPS``): the job lists its pattern and claims every file created
since the run began (`SWEEP_MARGIN_S` earlier, for clock skew), so a copied file whose own event
was missed is still ingested - and, thanks to the claims, still once. A failed or aborted run
may have copied some files: it is swept too. Without a ``startTime`` (payload ``NONE``) the
whole pattern is swept.
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
TRANSFER_EVENTS = frozenset({"TRANSFER_OPERATION_SUCCESS", "TRANSFER_OPERATION_FAILED",
                             "TRANSFER_OPERATION_ABORTED"})
SWEEPS = "transfer_sweeps"  # the side output of ParseFileEvents
SWEEP_MARGIN_S = 300
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


class TransferSweep(NamedTuple):
    """A finished transfer run: sweep the files created since ``since`` (ISO UTC; "" = all)."""

    operation: str
    since: str
    message_id: str


def transfer_sweep(attributes: Mapping[str, str], data: bytes | None, message_id: str) -> TransferSweep | None:
    """The :class:`TransferSweep` of a Storage Transfer completion message, or None if it is not one."""
    if attributes.get("eventType") not in TRANSFER_EVENTS:
        return None
    operation = _object_resource(data)
    since = _created(operation.get("startTime"))
    if since:
        since = (dt.datetime.fromisoformat(since) - dt.timedelta(seconds=SWEEP_MARGIN_S)).isoformat()
    return TransferSweep(attributes.get("transferOperationName") or str(operation.get("name") or ""), since,
                         message_id)


def sweep_files(sweep: TransferSweep, input_pattern: str) -> list[FileEvent]:
    """The files of ``input_pattern`` a finished transfer run may have copied (created since it
    began), each as a :class:`FileEvent` of the completion message: the claimant is then that
    message (``event:<run>:transfer-<message id>``), so two completions swept close together are two
    claimants - the second never takes the first's claim for a retry of its own."""
    found = files.match(input_pattern)
    if sweep.since:
        since = dt.datetime.fromisoformat(sweep.since)
        found = [f for f in found if not f.created or dt.datetime.fromisoformat(f.created) >= since]
    return [FileEvent(f, f"transfer-{sweep.message_id}") for f in found]


class ParseFileEvents(beam.DoFn):
    """Pub/Sub messages (``PubsubMessage``, with attributes) -> :class:`FileEvent` of landing files;
    transfer completions -> :class:`TransferSweep` on the ``SWEEPS`` output."""

    def __init__(self, input_pattern: str) -> None:
        self.input_pattern = input_pattern

    def setup(self) -> None:
        self.events = counter("file_events")
        self.ignored = counter("file_events_ignored")
        self.sweeps = counter("transfer_sweeps")

    def process(self, message: Any) -> Iterator[Any]:
        self.events.inc()
        attributes = message.attributes or {}
        found = file_event(attributes, message.data, message.message_id or "", self.input_pattern)
        if isinstance(found, FileEvent):
            yield found
            return
        sweep = transfer_sweep(attributes, message.data, message.message_id or "")
        if sweep is not None:
            self.sweeps.inc()
            log.info("transfer run %s ended (%s): sweeping %s for files created since %s", sweep.operation,
                     attributes.get("eventType"), self.input_pattern, sweep.since or "ever")
            yield beam.pvalue.TaggedOutput(SWEEPS, sweep)
            return
        self.ignored.inc()
        log.debug("ignoring message %s: %s", message.message_id, found)
