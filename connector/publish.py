"""Records and dead letters onto Pub/Sub, acknowledged before anything depends on them.

Every record is one message on the source's topic: data = the record as compact JSON (UTF-8),
attributes ``source_id``, ``origin`` (where it was read: the page URL without secrets, or
``webhook:<delivery id>``) and ``fetched_at`` (RFC 3339 UTC). A body the connector cannot take
records from goes whole (truncated to :data:`DEAD_LETTER_MAX_BYTES`) to the dead-letter topic
with the attributes the Beam pipelines give their dead letters - ``reason``, ``detail``,
``origin``, ``source_id`` - plus ``fetched_at``.

Publishing is asynchronous (google-cloud-pubsub batches messages in the background);
:meth:`RecordPublisher.wait` blocks until Pub/Sub acknowledged every future, which is what
"published" means here: the poller writes its checkpoint, and the webhook answers 2xx, only
after it returns.

Secrets: a record or dead-letter body is published as the API sent it, except that the forms of
the connector's secret long enough to be nothing but the credential
(connector.logs.record_secret_forms, :data:`connector.logs.RECORD_SCRUB_MIN_CHARS` characters and
more) are replaced by ``[REDACTED]``, should the API echo the credential back in a body. A
shorter secret is not scrubbed: it could be the API's own data (a date, an id), and rewriting
that would corrupt the record (docs/connector-contract.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, Protocol

from connector.logs import REDACTED

ATTRIBUTE_MAX_CHARS = 1000      # Pub/Sub caps an attribute value at 1,024 bytes
DEAD_LETTER_MAX_BYTES = 65_536  # enough to see what the body was; far below Pub/Sub's 10 MB
DETAIL_MAX_CHARS = 1000
PUBLISH_TIMEOUT_S = 60.0

RECORDS_NOT_FOUND = "records_not_found"  # the records selector matched no list in the body
UNPARSEABLE = "unparseable"              # the body is not JSON (Beam's reason for the same)


class PublishError(RuntimeError):
    """A publish was not acknowledged (Pub/Sub error or timeout): nothing may depend on it."""


class Transport(Protocol):
    """What :class:`RecordPublisher` needs from a Pub/Sub client (``pubsub_v1.PublisherClient``)."""

    def publish(self, topic: str, data: bytes, **attributes: str) -> Future: ...


def pubsub_transport() -> Transport:
    """google-cloud-pubsub's publisher (honours ``PUBSUB_EMULATOR_HOST`` by itself)."""
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient()


class NullTransport:
    """Acknowledges every message at once without sending it: the benchmark's baseline."""

    def __init__(self) -> None:
        self.published = 0

    def publish(self, topic: str, data: bytes, **attributes: str) -> Future:
        self.published += 1
        future: Future = Future()
        future.set_result(str(self.published))
        return future


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with milliseconds, e.g. ``2024-05-01T12:00:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_record(record: Any) -> bytes:
    """One record as compact UTF-8 JSON (non-ASCII kept as is). Strict: a NaN or an infinity is a
    ValueError rather than a message the pipeline cannot parse (bodies are parsed strictly,
    connector.records.parse_json, so none reaches here)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class RecordPublisher:
    """Publishes one source's records and dead letters.

    ``secrets``: strings (the credential's forms, connector.logs.record_secret_forms) replaced by
    ``[REDACTED]`` wherever they occur in a message's data; nothing else is rewritten.
    """

    def __init__(self, transport: Transport, *, source_id: str, topic: str, dead_letter_topic: str,
                 secrets: Iterable[str] = ()) -> None:
        self.transport = transport
        self.source_id = source_id
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self._secrets: tuple[bytes, ...] = ()
        self.scrub_also(secrets)

    def scrub_also(self, secrets: Iterable[str]) -> None:
        """Scrub these strings too (a credential derived later: an OAuth2 access token)."""
        # Longest first, so a form containing another is replaced whole.
        self._secrets = tuple(sorted(set(self._secrets) | {s.encode() for s in secrets if s}, key=len, reverse=True))

    def publish_records(self, records: Iterable[Any], *, origin: str, fetched_at: str) -> list[Future]:
        """Start publishing each record; the futures resolve when Pub/Sub acknowledged them."""
        origin = origin[:ATTRIBUTE_MAX_CHARS]
        publish, topic, source_id = self.transport.publish, self.topic, self.source_id
        return [publish(topic, self._scrub(encode_record(record)), source_id=source_id, origin=origin,
                        fetched_at=fetched_at)
                for record in records]

    def publish_dead_letter(self, body: bytes, *, reason: str, detail: str, origin: str,
                            fetched_at: str) -> Future:
        """Start publishing ``body`` (truncated) as a dead letter with ``reason``."""
        return self.transport.publish(
            self.dead_letter_topic, self._scrub(body[:DEAD_LETTER_MAX_BYTES]),
            reason=reason, detail=detail[:DETAIL_MAX_CHARS], origin=origin[:ATTRIBUTE_MAX_CHARS],
            source_id=self.source_id, fetched_at=fetched_at)

    @staticmethod
    def wait(futures: Sequence[Future], timeout: float = PUBLISH_TIMEOUT_S) -> None:
        """Block until every future is acknowledged; PublishError on the first failure or timeout."""
        try:
            for future in futures:
                future.result(timeout=timeout)
        except Exception as exc:  # the Pub/Sub client raises api_core errors and TimeoutError
            raise PublishError(f"publish not acknowledged: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    async def wait_async(futures: Sequence[Future], timeout: float = PUBLISH_TIMEOUT_S) -> None:
        """:meth:`wait` for an event loop: awaits the futures without blocking the loop."""
        if not futures:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except Exception as exc:
            raise PublishError(f"publish not acknowledged: {type(exc).__name__}: {exc}") from exc

    def _scrub(self, data: bytes) -> bytes:
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        return data
