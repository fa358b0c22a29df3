"""``python -m serving.api``: serve the data API the spec in ``$HEADWATER_CONNECTOR_SPEC`` describes.

The document and the secrets are read and checked before anything listens: a bad document or a
missing secret exits with status 2 and a message naming the JSON path or the variable (never a
value), so a Cloud Run revision that cannot serve never becomes ready and the local runner
reports "exited before listening". uvicorn then serves on ``$PORT`` (default 8080) at
``$HEADWATER_CONNECTOR_HOST`` (default ``0.0.0.0``, Cloud Run's; the local runner sets
``127.0.0.1``) and handles SIGTERM (graceful shutdown within Cloud Run's 10 s).

Exit status: 0 after a clean stop, 2 when the spec or a secret is invalid, 1 on an unexpected error.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from serving.api import logs
from serving.api.spec import SpecError, load_secrets, load_spec

log = logging.getLogger("serving.api")

DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"
HOST_ENV = "HEADWATER_CONNECTOR_HOST"  # the cloud_run_service kind's listen-address variable
KEEP_ALIVE_TIMEOUT_S = 5
MAX_HEADER_BYTES = 16 * 1024
MAX_CONCURRENCY = 100  # Cloud Run's default per-instance concurrency is 80
GRACEFUL_SHUTDOWN_S = 8


def uvicorn_config(app, host: str, port: int):
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http="h11", loop="asyncio", lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=MAX_CONCURRENCY, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False, log_config=None,
        # uvicorn's access log prints each request line, query string included (filter values
        # may be personal data): the usage log (serving.api.logs) replaces it.
        access_log=False,
    )


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    logs.configure(logging.DEBUG if environ.get("HEADWATER_API_DEBUG") else logging.INFO)
    try:
        spec = load_spec(environ)
        secrets = load_secrets(spec, environ)
    except SpecError as exc:
        log.error("cannot start: %s", exc)
        return 2
    logs.redact_secrets(secrets.values(), (c.client_id for c in spec.clients))
    try:
        import uvicorn

        from serving.api.app import create_app

        app = create_app(spec, secrets)
        host = environ.get(HOST_ENV, "").strip() or DEFAULT_HOST
        port = int(environ.get("PORT") or DEFAULT_PORT)
        log.info("data API: %d source(s) (%s), %d client(s), listening on %s port %d", len(spec.sources),
                 ", ".join(s.name for s in spec.sources), len(spec.clients), host, port)
        uvicorn.Server(uvicorn_config(app, host, port)).run()
        return 0
    except Exception:
        log.exception("data API failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
