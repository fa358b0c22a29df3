"""``python -m connector``: run the connector the spec in ``$HEADWATER_CONNECTOR_SPEC`` describes.

* ``rest_api``: the poller (connector.rest_api) in the main thread; ``/healthz`` on ``$PORT``
  (when set) from a background thread. SIGTERM/SIGINT stop it at the next page boundary, with
  the position checkpointed.
* ``webhook``: the receiver (connector.webhook) on uvicorn at ``$PORT`` (default 8080, Cloud
  Run's); uvicorn handles SIGTERM (graceful shutdown).

Both listen on ``$HEADWATER_CONNECTOR_HOST``, default ``0.0.0.0`` (every interface, as Cloud Run
needs); the local runner sets ``127.0.0.1``, so a local receiver - possibly unsigned - is not
reachable from the network. (Not ``$HOST``: tcsh exports that as the machine's host name.)

Exit status: 0 after a clean stop, 2 when the spec or a secret is invalid (the message names
the JSON path or variable, never a secret's value), 1 on an unexpected error.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping

from connector import logs
from connector.spec import (
    CONNECTOR_SECRET_ENV,
    WEBHOOK_SECRET_ENV,
    ConnectorSpec,
    SpecError,
    connector_secret,
    load_spec,
    webhook_secret,
)

log = logging.getLogger("connector")

DEFAULT_PORT = 8080
HOST_ENV = "HEADWATER_CONNECTOR_HOST"


def listen_host(environ: Mapping[str, str]) -> str:
    """The address to listen on: ``$HEADWATER_CONNECTOR_HOST``, else every interface."""
    from connector.server import DEFAULT_HOST

    return environ.get(HOST_ENV, "").strip() or DEFAULT_HOST


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    logs.configure(logging.DEBUG if environ.get("HEADWATER_CONNECTOR_DEBUG") else logging.INFO)
    try:
        spec = load_spec(environ)
        if spec.connector_type == "rest_api":
            secret = connector_secret(spec, environ)
            logs.redact_secret(secret, f"the connector secret ({CONNECTOR_SECRET_ENV})")
            return run_rest_api(spec, secret, environ)
        key = webhook_secret(spec, environ)
        logs.redact_secret(key.decode() if key else None, f"the webhook signing key ({WEBHOOK_SECRET_ENV})")
        return run_webhook(spec, key, environ)
    except SpecError as exc:
        log.error("cannot start: %s", exc)
        return 2
    except Exception:
        log.exception("connector failed")
        return 1


def run_rest_api(spec: ConnectorSpec, secret: str | None, environ: Mapping[str, str]) -> int:
    from connector.checkpoint import CheckpointStore
    from connector.publish import RecordPublisher, pubsub_transport
    from connector.rest_api import CRASH_AFTER_PUBLISH_ENV, PageRequest, Poller
    from connector.server import start_health_server

    crash_after = environ.get(CRASH_AFTER_PUBLISH_ENV)
    if crash_after:
        log.warning("%s=%s: this process will SIGKILL itself (test-only hook)", CRASH_AFTER_PUBLISH_ENV, crash_after)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    transport = pubsub_transport()
    poller = Poller(
        spec, secret,
        RecordPublisher(transport, source_id=spec.source_id, topic=spec.topic,
                        dead_letter_topic=spec.dead_letter_topic, secrets=logs.record_secret_forms(secret)),
        CheckpointStore(spec.checkpoint_bucket, spec.checkpoint_object),
        stop=stop, crash_after_pages=int(crash_after) if crash_after else None)
    server = None
    if environ.get("PORT"):
        server, _ = start_health_server(poller.health, int(environ["PORT"]), listen_host(environ))
    first_page = PageRequest(spec.rest_api.endpoint, dict(spec.rest_api.params)).full_url()
    log.info("polling %s every %g s for %s", poller.sanitize_url(first_page), spec.rest_api.poll_interval_seconds,
             spec.source_id)
    try:
        poller.run()
    finally:
        if server is not None:
            server.should_exit = True
        poller.close()
        transport.stop()  # flushes what is still batched
    log.info("stopped")
    return 0


def run_webhook(spec: ConnectorSpec, key: bytes | None, environ: Mapping[str, str]) -> int:
    import uvicorn

    from connector.publish import RecordPublisher, pubsub_transport
    from connector.server import uvicorn_config
    from connector.webhook import create_app

    transport = pubsub_transport()
    publisher = RecordPublisher(transport, source_id=spec.source_id, topic=spec.topic,
                                dead_letter_topic=spec.dead_letter_topic)
    port, host = int(environ.get("PORT") or DEFAULT_PORT), listen_host(environ)
    log.info("receiving webhooks for %s at POST %s on %s port %d", spec.source_id, spec.webhook.path, host, port)
    # uvicorn handles SIGTERM/SIGINT (graceful shutdown), then re-raises the signal to the handler
    # installed before it: this one, so the process finishes below and exits 0 after a clean stop.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        uvicorn.Server(uvicorn_config(create_app(spec, key, publisher), port, host)).run()
    finally:
        transport.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
