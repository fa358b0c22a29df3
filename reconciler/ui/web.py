"""The status page's HTTP side: Jinja2 templates rendered by Starlette routes (GET only).

`routes()` are the page's routes, for the daemon's server (``Daemon(http_routes=...)`` or its
default, `reconciler.daemon.service`) and for ``headwater ui`` (`reconciler.ui.local`). A
handler reads the status document from ``request.app.state.daemon.status()`` - in the daemon
that document is already redacted (`reconciler.daemon.logs.Redactor`), and ``headwater ui``
redacts its own the same way - and renders it. Nothing else is read, nothing is written.

Every page is escaped by Jinja2's autoescape (a source id or an error text holding HTML is
shown as text), and carries a Content-Security-Policy that allows no script at all, only the
page's own stylesheet (no CDN, no external font: the page works offline), and no framing.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from reconciler.ui import view

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.ChainableUndefined,  # a missing key of an older document renders empty
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


@lru_cache(maxsize=1)
def stylesheet() -> bytes:
    return (HERE / "static" / "style.css").read_bytes()


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def overview_html(status: dict[str, Any], params: dict[str, str]) -> str:
    return render("overview.html", **view.overview(status, view.Query.parse(params)))


def source_html(status: dict[str, Any], source_id: str) -> str | None:
    page = view.source_page(status, source_id)
    return render("source.html", **page) if page is not None else None


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def _status(request: Request) -> dict[str, Any]:
    return request.app.state.daemon.status()


def overview_page(request: Request) -> Response:
    return _html(overview_html(_status(request), dict(request.query_params)))


def source_page(request: Request) -> Response:
    status = _status(request)
    source_id = request.path_params["source_id"]
    body = source_html(status, source_id)
    if body is None:
        return _html(render("not_found.html", platform=view.platform(status), source_id=source_id[:200]), 404)
    return _html(body)


def style(request: Request) -> Response:
    return Response(stylesheet(), media_type="text/css", headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"})


def root(request: Request) -> Response:
    return RedirectResponse("/ui", status_code=307)


def routes() -> list[Route]:
    """The page's routes, GET (and HEAD) only: ``/`` (to ``/ui``), ``/ui``, ``/ui/sources/{id}``,
    ``/ui/style.css``."""
    return [
        Route("/", root, methods=["GET"]),
        Route("/ui", overview_page, methods=["GET"]),
        Route("/ui/", overview_page, methods=["GET"]),
        Route("/ui/style.css", style, methods=["GET"]),
        Route("/ui/sources/{source_id:path}", source_page, methods=["GET"]),
    ]
