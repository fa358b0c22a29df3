"""The HTTP server both connector types use: uvicorn with bounded connections, and /healthz.

A webhook connector *is* a server (connector.webhook); a poller serves only ``/healthz``, on a
background thread, when ``$PORT`` is set. Both run uvicorn with the same limits:

* ``timeout_keep_alive``: an idle keep-alive connection is closed after this long.
* ``h11_max_incomplete_event_size``: request line + headers larger than this are refused (the
  h11 protocol is forced - it is also what the image has, which installs plain ``uvicorn``
  without httptools - so the bound always applies).
* ``limit_concurrency``: above this many concurrent connections/requests uvicorn answers 503
  rather than queueing without bound.

uvicorn has no separate timeout for reading request headers. On Cloud Run that is the front
end's job: it accepts the client's connection and forwards only complete requests to the
container. The request *body* is read by the webhook handler under its own timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connector.spec import HEALTH_PATH

KEEP_ALIVE_TIMEOUT_S = 5
MAX_HEADER_BYTES = 16 * 1024
# Cloud Run's default per-instance concurrency is 80: the server refuses what it would not send.
MAX_CONCURRENCY = 100
GRACEFUL_SHUTDOWN_S = 8  # Cloud Run kills the container 10 s after SIGTERM
# Every interface: what Cloud Run needs. ``python -m connector`` takes another from
# $HEADWATER_CONNECTOR_HOST (the local runner: loopback only).
DEFAULT_HOST = "0.0.0.0"

HealthReport = Callable[[], tuple[bool, dict[str, Any]]]


def uvicorn_config(app: Any, port: int, host: str = DEFAULT_HOST) -> uvicorn.Config:
    """The one uvicorn configuration of the connector (see the module docstring)."""
    return uvicorn.Config(
        app, host=host, port=port, http="h11", loop="asyncio", lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=MAX_CONCURRENCY, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False, log_config=None,  # our logging (connector.logs) is configured already
    )


def health_endpoint(report: HealthReport) -> Route:
    """GET /healthz: 200 with the report when healthy, 503 with it when not."""

    async def healthz(_: Request) -> JSONResponse:
        healthy, body = report()
        return JSONResponse({"status": "ok" if healthy else "unhealthy", **body}, status_code=200 if healthy else 503)

    return Route(HEALTH_PATH, healthz, methods=["GET"])


def start_health_server(report: HealthReport, port: int,
                        host: str = DEFAULT_HOST) -> tuple[uvicorn.Server, threading.Thread]:
    """Serve /healthz on a daemon thread (signals stay with the main thread); stop it with
    ``server.should_exit = True``."""
    app = Starlette(routes=[health_endpoint(report)])
    server = uvicorn.Server(uvicorn_config(app, port, host))
    thread = threading.Thread(target=server.run, name="healthz", daemon=True)
    thread.start()
    logging.getLogger(__name__).info("serving %s on %s port %d", HEALTH_PATH, host, port)
    return server, thread
