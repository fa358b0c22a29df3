"""The daemon's HTTP server: health, status, metrics and the push webhook, on Starlette and uvicorn.

====================  ==========================================================================
``GET /healthz``      200 while the daemon's worker is alive and making progress (Cloud Run
                      liveness probe); 503 when it stopped, or has been busy longer than
                      ``--stall-timeout`` without any sign of progress
``GET /readyz``       200 once the daemon has observed live state successfully, else 503
                      (Cloud Run startup probe)
``GET /status``       JSON: revision served, branch head (and why it is not served), last sync,
                      pending and blocked changes, drifted resources with their fields, lease
``GET /metrics``      Prometheus exposition (`reconciler.daemon.metrics`)
``POST /webhook``     GitHub push events, verified with ``X-Hub-Signature-256``
====================  ==========================================================================

**The server.** uvicorn (h11) serves the Starlette app on one event loop thread; the GET
endpoints run on Starlette's thread pool. Nothing a client does can hold the server for long:

* request line and headers must arrive within `HEADER_TIMEOUT_S` of the connection opening (or
  of the previous response on a kept-alive connection), and be at most `MAX_HEADER_BYTES`;
  a slow or idle client is disconnected (`_TimedH11Protocol`, the one addition to uvicorn);
* an idle kept-alive connection is closed after `KEEP_ALIVE_S`; a request whose body the
  endpoint did not read (a GET with a body, a refused webhook) ends its connection;
* above `MAX_CONNECTIONS` connections or requests in flight uvicorn answers 503 at once;
* only ``POST /webhook`` reads a body: at most `MAX_WEBHOOK_BYTES` (GitHub's cap; a larger
  ``Content-Length`` is refused unread with 413), within `WEBHOOK_BODY_TIMEOUT_S` (else 408),
  and at most `MAX_WEBHOOK_BODIES` bodies at a time (else 503). The signature is computed
  while the body streams in; only its first `PARSED_WEBHOOK_BYTES` are kept, to be parsed once
  the signature is verified.

**The webhook.** GitHub signs the raw body with HMAC-SHA256 under the shared secret
(``HEADWATER_WEBHOOK_SECRET``) and sends ``sha256=<hex>``. A missing or wrong signature gets 401
and triggers nothing; so does any request when no secret is configured (an unauthenticated
endpoint that makes the daemon fetch would be an easy way to hammer the git host). The
comparison is constant-time (`hmac.compare_digest`); neither the secret nor the signature is
ever logged. A delivery already handled — the same ``X-GitHub-Delivery``, or the same signed
body — is a replay: 200, ignored (the last `REPLAY_MEMORY` deliveries are remembered; one that
failed is not, so GitHub's redelivery of it is processed). A valid push to the tracked branch
triggers an immediate fetch and sync (202); pushes to other branches and other events are
acknowledged and ignored (200). A push whose body is too large to parse is still a reason to
fetch (the fetch decides whether the branch moved).

**Adding routes** (the extension point for e.g. a read-only status page): pass Starlette routes
as ``extra_routes`` to `build_app` (``Daemon(..., http_routes=[...])`` does it). They are served
after the built-in endpoints, whose paths they may not reuse; every response gets
``Cache-Control: no-store`` and ``X-Content-Type-Options: nosniff`` unless it sets its own. A
handler finds the daemon in ``request.app.state.daemon``; it should render from
``daemon.status()`` (already redacted: no secret ever appears in it) and never from
``daemon.settings``. The server has no authentication: add only read-only routes that show
what ``/status`` already shows, or protect them yourself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from reconciler.daemon.service import Daemon

MAX_WEBHOOK_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
PARSED_WEBHOOK_BYTES = 1024 * 1024  # kept for parsing; the rest of a larger body is only hashed
WEBHOOK_BODY_TIMEOUT_S = 10.0
MAX_WEBHOOK_BODIES = 4  # webhook bodies being received at the same time
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 64
REPLAY_MEMORY = 1024
SIGNATURE_HEADER = "X-Hub-Signature-256"
DELIVERY_HEADER = "X-GitHub-Delivery"
BUILT_IN_PATHS = ("/healthz", "/readyz", "/status", "/metrics", "/webhook")


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | None, body: bytes, header: str | None) -> bool:
    if not secret or not header:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


class Deliveries:
    """The last ``size`` deliveries handled (by delivery id and by signature), for replays."""

    def __init__(self, size: int = REPLAY_MEMORY) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def seen(self, *keys: str | None) -> bool:
        with self._lock:
            return any(key is not None and key in self._seen for key in keys)

    def remember(self, *keys: str | None) -> None:
        with self._lock:
            for key in keys:
                if key is None:
                    continue
                self._seen[key] = None
                self._seen.move_to_end(key)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)


# ---------------------------------------------------------------------- the app


def build_app(daemon: Daemon, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app of the daemon's endpoints, plus ``extra_routes`` (see the module docstring)."""
    for route in extra_routes:
        path = getattr(route, "path", None)
        if path in BUILT_IN_PATHS:
            raise ValueError(f"extra route {path!r} would replace a built-in endpoint")
    routes = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", _readyz, methods=["GET"]),
        Route("/status", _status, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/webhook", _webhook, methods=["POST"]),
        *extra_routes,
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _crash})
    app.state.daemon = daemon
    app.state.deliveries = Deliveries()
    app.state.bodies_in_flight = 0
    return _DefaultHeaders(app)


class _DefaultHeaders:
    """Cache-Control: no-store and X-Content-Type-Options: nosniff on every response that does
    not set them (pure ASGI, so it adds nothing to a streamed body)."""

    DEFAULTS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_defaults(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(h for h in self.DEFAULTS if h[0] not in present)]}
            await send(message)

        await self.app(scope, receive, with_defaults)


def _daemon(request: Request) -> Daemon:
    return request.app.state.daemon


def _json(status: int, body: Any, close: bool = False) -> Response:
    data = json.dumps(body, indent=2, default=str).encode() + b"\n"
    headers = {"Connection": "close"} if close else None
    return Response(data, status_code=status, media_type="application/json", headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    message = {404: "not found", 405: "method not allowed"}.get(status, getattr(exc, "detail", "error"))
    response = _json(status, {"error": message})
    for name, value in (getattr(exc, "headers", None) or {}).items():
        response.headers[name] = value
    return response


async def _crash(request: Request, exc: Exception) -> Response:
    _daemon(request).log.error("http.handler_crashed", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
    return _json(500, {"error": "internal error"})


def _healthz(request: Request) -> Response:
    health = _daemon(request).health()
    return _json(200 if health["status"] == "ok" else 503, health)


def _readyz(request: Request) -> Response:
    ready = _daemon(request).ready
    return _json(200 if ready else 503, {"ready": ready})


def _status(request: Request) -> Response:
    return _json(200, _daemon(request).status())


def _metrics(request: Request) -> Response:
    metrics = _daemon(request).metrics
    return Response(metrics.exposition(), media_type=metrics.content_type)


def _delivery_id(request: Request) -> str | None:
    raw = request.headers.get(DELIVERY_HEADER, "")
    cleaned = "".join(c for c in raw if 32 < ord(c) < 127)[:100]
    return cleaned or None


async def _webhook(request: Request) -> Response:
    daemon = _daemon(request)
    state = request.app.state
    delivery = _delivery_id(request)
    log = daemon.log.bind(event_source="webhook", delivery=delivery)

    def refuse(result: str, status: int, reason: str, message: str, close: bool = False) -> Response:
        daemon.metrics.webhook_requests.labels(result).inc()
        log.warning("webhook.rejected", reason=reason, status=status)
        return _json(status, {"error": message}, close=close)

    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isascii() or not declared.isdigit()):
        return refuse("bad_request", 400, "malformed Content-Length", "malformed Content-Length", close=True)
    if declared is not None and int(declared) > MAX_WEBHOOK_BYTES:
        return refuse("too_large", 413, f"Content-Length {declared} over {MAX_WEBHOOK_BYTES}",
                      f"body over {MAX_WEBHOOK_BYTES} bytes", close=True)
    if state.bodies_in_flight >= MAX_WEBHOOK_BODIES:  # one event loop: no lock needed
        response = refuse("busy", 503, "too many webhook bodies in flight", "busy; retry later", close=True)
        response.headers["Retry-After"] = "5"
        return response
    state.bodies_in_flight += 1
    try:
        async with asyncio.timeout(WEBHOOK_BODY_TIMEOUT_S):
            read = await _read_signed(request, daemon.settings.webhook_secret)
    except TimeoutError:
        return refuse("timeout", 408, f"body not received within {WEBHOOK_BODY_TIMEOUT_S:.0f} s",
                      "body not received in time", close=True)
    except ClientDisconnect:
        return refuse("bad_request", 400, "client disconnected before the end of the body", "incomplete body",
                      close=True)
    finally:
        state.bodies_in_flight -= 1
    if read is None:
        return refuse("too_large", 413, f"body over {MAX_WEBHOOK_BYTES} bytes", f"body over {MAX_WEBHOOK_BYTES} bytes",
                      close=True)
    kept, digest, truncated = read

    header = request.headers.get(SIGNATURE_HEADER)
    secret = daemon.settings.webhook_secret
    if not secret or not header or not hmac.compare_digest(("sha256=" + digest).encode(), header.strip().encode()):
        reason = "no webhook secret configured" if not secret else "missing signature" if not header else "bad signature"
        daemon.metrics.webhook_requests.labels("unauthorized").inc()
        log.warning("webhook.rejected", reason=reason, status=401)
        return _json(401, {"error": "invalid or missing X-Hub-Signature-256"})

    deliveries: Deliveries = state.deliveries
    if deliveries.seen(delivery, digest):
        daemon.metrics.webhook_requests.labels("replayed").inc()
        log.info("webhook.replayed", reason="this delivery (id or signed body) was handled already")
        return _json(200, {"ignored": "replayed delivery"})

    response = _handle_event(daemon, request, log, kept, truncated)
    if response.status_code < 300:
        deliveries.remember(delivery, digest)
    return response


async def _read_signed(request: Request, secret: str | None) -> tuple[bytes, str, bool] | None:
    """(the first PARSED_WEBHOOK_BYTES of the body, its HMAC hex digest, whether it was cut), or
    None once the body exceeds MAX_WEBHOOK_BYTES (the rest is not read)."""
    mac = hmac.new((secret or "").encode(), digestmod=hashlib.sha256)
    kept: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_WEBHOOK_BYTES:
            return None
        mac.update(chunk)
        room = PARSED_WEBHOOK_BYTES - (size - len(chunk))
        if room > 0:
            kept.append(chunk[:room])
    return b"".join(kept), mac.hexdigest(), size > PARSED_WEBHOOK_BYTES


def _handle_event(daemon: Daemon, request: Request, log: Any, body: bytes, truncated: bool) -> Response:
    event = request.headers.get("X-GitHub-Event", "")
    if event == "ping":
        daemon.metrics.webhook_requests.labels("ignored").inc()
        log.info("webhook.ping")
        return _json(200, {"ok": True, "event": "ping"})
    if event != "push":
        daemon.metrics.webhook_requests.labels("ignored").inc()
        log.info("webhook.ignored", github_event=event[:100], reason="not a push")
        return _json(200, {"ignored": f"event {event[:100]!r}"})
    tracked = f"refs/heads/{daemon.settings.branch}"
    if truncated:  # signed by GitHub, too large to read the ref: fetching tells whether the branch moved
        daemon.metrics.webhook_requests.labels("accepted").inc()
        log.info("webhook.accepted", ref=None, reason=f"body over {PARSED_WEBHOOK_BYTES} bytes; fetching anyway")
        daemon.request_sync("webhook")
        return _json(202, {"accepted": True, "ref": None})
    try:
        payload = json.loads(body)
        ref = payload.get("ref") if isinstance(payload, dict) else None
    except (ValueError, RecursionError):
        daemon.metrics.webhook_requests.labels("bad_request").inc()
        log.warning("webhook.rejected", reason="body is not JSON", status=400)
        return _json(400, {"error": "body is not JSON"})
    if ref != tracked:
        daemon.metrics.webhook_requests.labels("ignored").inc()
        log.info("webhook.ignored", ref=str(ref)[:200], reason=f"not {tracked}")
        return _json(200, {"ignored": f"ref {str(ref)[:200]!r} is not tracked"})
    after = payload.get("after")
    daemon.metrics.webhook_requests.labels("accepted").inc()
    log.info("webhook.accepted", ref=ref, after=after[:64] if isinstance(after, str) else None)
    daemon.request_sync("webhook")
    return _json(202, {"accepted": True, "ref": ref})


# ---------------------------------------------------------------------- the server


class _TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header timeout: a connection that has not sent a complete
    request head within `HEADER_TIMEOUT_S` (from its opening, or from the previous response) is
    closed; so is one whose request body the endpoint left unread once the response is sent."""

    header_timeout = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        _no_delay(transport)
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request head arrived: the app has it now
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state not in (h11.DONE, h11.IDLE) and self.conn.our_state is not h11.IDLE:
            # The client is still sending a body nobody will read: end the connection.
            self._cancel_header_timer()
            self.transport.close()
            return
        if self.cycle is cycle:  # waiting for the next request's head
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:  # no request in progress
            if not self.transport.is_closing():
                self.transport.close()


def _no_delay(transport: asyncio.Transport) -> None:
    """TCP_NODELAY on an accepted connection. asyncio sets it only on sockets whose ``proto`` is
    IPPROTO_TCP, and ``socket.create_server`` leaves it 0: without this, a response written in
    two parts (head, then body) waits for the client's delayed ACK, 40 ms on every kept-alive
    request after the first."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class _UvicornLogs(logging.Handler):
    """uvicorn's own warnings (e.g. a malformed request) as one JSON line each, like ours."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        from reconciler.daemon.logs import make_logger

        self._log = make_logger()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._log.warning("http.server", message=record.getMessage()[:300])
        except Exception:  # noqa: BLE001 - logging must not break the server
            pass


def _route_uvicorn_logs() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(h, _UvicornLogs) for h in logger.handlers):
        logger.addHandler(_UvicornLogs())
        logger.propagate = False
        logger.setLevel(logging.WARNING)


class HttpServer:
    """uvicorn serving `build_app` on a socket bound at construction (so a taken port fails at
    once, and port 0 picks a free one); `serve_forever` runs it (a thread's target), `shutdown`
    stops it."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        _route_uvicorn_logs()
        host = host.strip("[]")  # --listen [::]:8080
        self.socket = socket.create_server((host, port), family=_family(host), backlog=128)
        self.server_address = self.socket.getsockname()[:2]
        config = uvicorn.Config(
            app, http=_TimedH11Protocol, loop="asyncio", lifespan="off", timeout_keep_alive=KEEP_ALIVE_S,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES, limit_concurrency=MAX_CONNECTIONS,
            timeout_graceful_shutdown=2, server_header=False, date_header=True, access_log=False,
            log_config=None,
        )
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_server(daemon: Daemon, host: str, port: int, extra_routes: Sequence[BaseRoute] = ()) -> HttpServer:
    """Bind (port 0 picks a free one) without serving yet: the caller runs ``serve_forever``."""
    return HttpServer(build_app(daemon, extra_routes), host, port)
