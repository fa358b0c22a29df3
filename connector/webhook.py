"""The webhook connector: a signed POST in, its records on Pub/Sub, 2xx only once they are there.

A delivery to ``POST <path>`` goes through, in this order:

1. **Size**: a ``Content-Length`` above ``max_body_bytes`` is answered 413 without reading the
   body; otherwise the body is read up to ``max_body_bytes`` (and :data:`BODY_READ_TIMEOUT_S`)
   and refused with 413 as soon as it exceeds it. Nothing unbounded is buffered, and nothing is
   verified or parsed before the bound holds.
2. **Signature** (unless ``signature`` is null): an HMAC of the raw body with the key in
   ``HEADWATER_WEBHOOK_SECRET``, compared in constant time (:func:`verify_signature`); a missing
   or bad signature, or a timestamp outside the tolerance (a replay), is 401.
3. **JSON**: a body that is not JSON is 400 - strictly RFC 8259 (:func:`connector.records.parse_json`):
   ``NaN``, ``Infinity``, numbers beyond a double and unpaired surrogates are not JSON either.
4. **Records**: ``records`` null takes the body as the record (or, when it is a list, each
   element as one); a dotted path takes the list (or the single object) there. A path that
   matches nothing sends the body to the dead-letter topic (reason ``records_not_found``) and
   the answer is still 200: the sender did nothing wrong that a retry would fix, and the
   delivery is kept.
5. **Publish** each record to ``topic`` (attributes ``source_id``, ``origin`` =
   ``webhook:<delivery id>``, ``fetched_at``) and wait for Pub/Sub's acknowledgements: 200
   then, 503 if they do not come (the sender retries; the dedup absorbs a repeat).

Only step 5's 200 (or step 4's dead letter) publishes anything. The delivery id is the
``delivery_id_header`` value, or ``sha256:<hex of the body>`` when there is none.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connector.publish import RECORDS_NOT_FOUND, PublishError, RecordPublisher, now_rfc3339
from connector.records import NotJson, dig, parse_json
from connector.server import health_endpoint
from connector.spec import ConnectorSpec, Signature, Webhook

log = logging.getLogger(__name__)

BODY_READ_TIMEOUT_S = 30.0
DELIVERY_ID_MAX_CHARS = 200


# --------------------------------------------------------------------------- signatures


def sign(signature: Signature, key: bytes, body: bytes, timestamp: int | None = None) -> str:
    """The header value a sender would put on ``body``: ``<algorithm>=<hex>`` for ``hex``,
    ``t=<unix>,v1=<hex>`` for ``timestamped`` (now when ``timestamp`` is None). For tests and
    for documenting the schemes; the connector only verifies."""
    if signature.scheme == "hex":
        return f"{signature.algorithm}={hmac.new(key, body, signature.algorithm).hexdigest()}"
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={hmac.new(key, f'{t}.'.encode() + body, signature.algorithm).hexdigest()}"


def verify_signature(signature: Signature, key: bytes, header: str | None, body: bytes,
                     now: float | None = None) -> str | None:
    """None when ``header`` signs ``body``; else why not (a short reason, safe to return).

    * ``hex``: the header is the hex HMAC of the body, bare or prefixed ``<algorithm>=`` as
      GitHub does (``sha256=<hex>``).
    * ``timestamped``: Stripe's ``t=<unix>,v1=<hex>[,v1=<hex>...]``, each ``v1`` an HMAC of
      ``"<t>.<body>"``; accepted when one matches and ``t`` is within
      ``timestamp_tolerance_seconds`` of ``now`` (either way): an old signed delivery replayed
      later is refused.
    """
    if not header:
        return f"missing {signature.header} header"
    header = header.strip()
    if signature.scheme == "hex":
        prefix, _, digest = header.rpartition("=")
        if prefix and prefix != signature.algorithm:
            return f"signature prefix is not {signature.algorithm}="
        expected = hmac.new(key, body, signature.algorithm).hexdigest()
        return None if _same(expected, digest) else "bad signature"
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, []).append(value)
    stamps, candidates = parts.get("t", []), parts.get("v1", [])
    if len(stamps) != 1 or not stamps[0].isdigit() or not candidates:
        return "malformed signature header (expected t=<unix>,v1=<hex>)"
    now = time.time() if now is None else now
    if abs(now - int(stamps[0])) > signature.timestamp_tolerance_seconds:
        return "timestamp outside the tolerance (a replay?)"
    expected = hmac.new(key, stamps[0].encode() + b"." + body, signature.algorithm).hexdigest()
    # Every candidate is compared (a sender rotating keys sends one per key).
    matches = [_same(expected, candidate) for candidate in candidates]
    return None if any(matches) else "bad signature"


def _same(expected_hex: str, received: str) -> bool:
    """Constant-time comparison of hex digests (case-insensitive, as senders differ)."""
    return hmac.compare_digest(expected_hex.encode(), received.strip().lower().encode("utf-8", "replace"))


# --------------------------------------------------------------------------- the app


def webhook_records(body: Any, path: str | None) -> list[Any] | None:
    """The records of one delivery (see step 4 of the module docstring); None when ``path``
    matches nothing."""
    found = body if path is None else dig(body, path)
    if found is None and path is not None:
        return None
    return found if isinstance(found, list) else [found]


def delivery_id(request: Request, header: str | None, body: bytes) -> str:
    """The sender's delivery id (printable ASCII, bounded), or a hash of the body."""
    raw = request.headers.get(header, "") if header else ""
    cleaned = "".join(c for c in raw if 32 < ord(c) < 127)[:DELIVERY_ID_MAX_CHARS]
    return cleaned or f"sha256:{hashlib.sha256(body).hexdigest()}"


async def read_bounded(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds ``limit`` bytes (the rest is not read)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class WebhookReceiver:
    """The request handler and its counters; ``key`` is the signing key (None when unsigned)."""

    def __init__(self, spec: ConnectorSpec, key: bytes | None, publisher: RecordPublisher) -> None:
        if spec.webhook is None:
            raise ValueError("WebhookReceiver needs a webhook spec")
        self.spec = spec
        self.hook: Webhook = spec.webhook
        if self.hook.signature is not None and not key:
            raise ValueError("the webhook declares a signature but has no signing key")
        self.key = key
        self.publisher = publisher
        self.deliveries = 0
        self.records_published = 0
        self.refused: dict[int, int] = {}

    async def receive(self, request: Request) -> Response:
        hook = self.hook
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > hook.max_body_bytes):
            return self._refuse(413, f"body above {hook.max_body_bytes} bytes")
        try:
            async with asyncio.timeout(BODY_READ_TIMEOUT_S):
                body = await read_bounded(request, hook.max_body_bytes)
        except TimeoutError:
            return self._refuse(408, "body not received in time")
        if body is None:
            return self._refuse(413, f"body above {hook.max_body_bytes} bytes")
        if hook.signature is not None:
            problem = verify_signature(hook.signature, self.key or b"", request.headers.get(hook.signature.header), body)
            if problem is not None:
                return self._refuse(401, problem)
        try:
            parsed = parse_json(body)  # strictly (RFC 8259): NaN, Infinity... are refused too
        except NotJson as exc:
            return self._refuse(400, f"the body is not JSON: {exc}")
        origin = f"webhook:{delivery_id(request, hook.delivery_id_header, body)}"
        fetched_at = now_rfc3339()
        records = webhook_records(parsed, hook.records)
        try:
            if records is None:
                await self.publisher.wait_async([self.publisher.publish_dead_letter(
                    body, reason=RECORDS_NOT_FOUND, detail=f"records {hook.records!r} matched nothing in the body",
                    origin=origin, fetched_at=fetched_at)])
                log.warning("delivery %s dead-lettered (%s)", origin, RECORDS_NOT_FOUND)
                self.deliveries += 1
                return JSONResponse({"published": 0, "dead_letter": RECORDS_NOT_FOUND})
            await self.publisher.wait_async(
                self.publisher.publish_records(records, origin=origin, fetched_at=fetched_at))
        except PublishError as exc:
            log.error("delivery %s: %s", origin, exc)
            return self._refuse(503, "not published; retry later")
        self.deliveries += 1
        self.records_published += len(records)
        log.info("delivery %s: %d records published", origin, len(records))
        return JSONResponse({"published": len(records)})

    def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"source_id": self.spec.source_id, "connector_type": "webhook", "deliveries": self.deliveries,
                      "records_published": self.records_published,
                      "refused": {str(status): n for status, n in sorted(self.refused.items())}}

    def _refuse(self, status: int, reason: str) -> JSONResponse:
        self.refused[status] = self.refused.get(status, 0) + 1
        log.info("delivery refused: %d %s", status, reason)
        return JSONResponse({"error": reason}, status_code=status)


def create_app(spec: ConnectorSpec, key: bytes | None, publisher: RecordPublisher) -> Starlette:
    """The webhook's ASGI app: ``POST <path>``, ``GET /healthz``; anything else is 404 (405 for
    another method on the path)."""
    receiver = WebhookReceiver(spec, key, publisher)
    app = Starlette(routes=[Route(receiver.hook.path, receiver.receive, methods=["POST"]),
                            health_endpoint(receiver.health)])
    app.state.receiver = receiver
    return app
