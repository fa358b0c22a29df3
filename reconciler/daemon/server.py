"""The daemon's HTTP server: health, status, metrics and the push webhook.

====================  ==========================================================================
``GET /healthz``      200 while the daemon's worker is alive (Cloud Run liveness probe)
``GET /readyz``       200 once the daemon has observed live state successfully, else 503
                      (Cloud Run startup probe)
``GET /status``       JSON: revision served, branch head (and why it is not served), last sync,
                      pending and blocked changes, drifted resources with their fields, lease
``GET /metrics``      Prometheus exposition (`reconciler.daemon.metrics`)
``POST /webhook``     GitHub push events, verified with ``X-Hub-Signature-256``
====================  ==========================================================================

The webhook: GitHub signs the raw body with HMAC-SHA256 under the shared secret
(``HEADWATER_WEBHOOK_SECRET``) and sends ``sha256=<hex>``. A missing or wrong signature gets 401
and triggers nothing; so does any request when no secret is configured (an unauthenticated
endpoint that makes the daemon fetch would be an easy way to hammer the git host). A valid push
to the tracked branch triggers an immediate fetch and sync (202); pushes to other branches and
other events are acknowledged and ignored (200). The comparison is constant-time
(`hmac.compare_digest`). Neither the secret nor the signature is ever logged.

stdlib ``ThreadingHTTPServer`` is enough: a handful of requests per minute, none of them slow.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.daemon.service import Daemon

MAX_WEBHOOK_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
SIGNATURE_HEADER = "X-Hub-Signature-256"


def signature(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | None, body: bytes, header: str | None) -> bool:
    if not secret or not header:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(daemon: Daemon, host: str, port: int) -> ThreadingHTTPServer:
    """Bind (port 0 picks a free one) without serving yet: the caller runs ``serve_forever``."""

    class Handler(_Handler):
        pass

    Handler.daemon = daemon
    return _Server((host, port), Handler)


class _Handler(BaseHTTPRequestHandler):
    daemon: Daemon
    server_version = "headwater"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            alive = self.daemon.alive()
            self._json(HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE,
                       {"status": "ok" if alive else "worker stopped"})
        elif path == "/readyz":
            ready = self.daemon.ready
            self._json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                       {"ready": ready})
        elif path == "/status":
            self._json(HTTPStatus.OK, self.daemon.status())
        elif path == "/metrics":
            self._send(HTTPStatus.OK, self.daemon.metrics.exposition(), self.daemon.metrics.content_type)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/webhook":
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        self._webhook()

    def _webhook(self) -> None:
        daemon = self.daemon
        log = daemon.log.bind(event_source="webhook", delivery=self.headers.get("X-GitHub-Delivery"))
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_WEBHOOK_BYTES:
            daemon.metrics.webhook_requests.labels("bad_request").inc()
            log.warning("webhook.rejected", reason="missing or oversized Content-Length", status=400)
            self._json(HTTPStatus.BAD_REQUEST, {"error": "Content-Length required, at most 25 MB"}, close=True)
            return
        body = self.rfile.read(length)
        if not verify_signature(daemon.settings.webhook_secret, body, self.headers.get(SIGNATURE_HEADER)):
            daemon.metrics.webhook_requests.labels("unauthorized").inc()
            reason = ("no webhook secret configured" if not daemon.settings.webhook_secret
                      else "missing signature" if not self.headers.get(SIGNATURE_HEADER) else "bad signature")
            log.warning("webhook.rejected", reason=reason, status=401)
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "invalid or missing X-Hub-Signature-256"})
            return

        event = self.headers.get("X-GitHub-Event", "")
        if event == "ping":
            daemon.metrics.webhook_requests.labels("ignored").inc()
            log.info("webhook.ping")
            self._json(HTTPStatus.OK, {"ok": True, "event": "ping"})
            return
        if event != "push":
            daemon.metrics.webhook_requests.labels("ignored").inc()
            log.info("webhook.ignored", github_event=event, reason="not a push")
            self._json(HTTPStatus.OK, {"ignored": f"event {event!r}"})
            return
        try:
            payload = json.loads(body)
            ref = payload.get("ref") if isinstance(payload, dict) else None
        except ValueError:
            daemon.metrics.webhook_requests.labels("bad_request").inc()
            log.warning("webhook.rejected", reason="body is not JSON", status=400)
            self._json(HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"})
            return
        tracked = f"refs/heads/{daemon.settings.branch}"
        if ref != tracked:
            daemon.metrics.webhook_requests.labels("ignored").inc()
            log.info("webhook.ignored", ref=str(ref)[:200], reason=f"not {tracked}")
            self._json(HTTPStatus.OK, {"ignored": f"ref {ref!r} is not tracked"})
            return
        after = payload.get("after")
        daemon.metrics.webhook_requests.labels("accepted").inc()
        log.info("webhook.accepted", ref=ref, after=after if isinstance(after, str) else None)
        daemon.request_sync("webhook")
        self._json(HTTPStatus.ACCEPTED, {"accepted": True, "ref": ref})

    # ------------------------------------------------------------------ plumbing

    def _json(self, status: HTTPStatus, body: Any, close: bool = False) -> None:
        data = json.dumps(body, indent=2, default=str).encode() + b"\n"
        self._send(status, data, "application/json", close)

    def _send(self, status: HTTPStatus, data: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # access logs would only repeat what the decision events say
