"""``headwater ui --repo PATH``: the daemon's status page, served on this machine.

The status is computed as ``headwater status`` computes it (`reconciler.status.check`: plan for
the sync axis, health from the providers, each source's last change by git), plus the drift
entries with the commit that set each desired value (`reconciler.blame.drift_origins`, as
``headwater drift``) and the plan's changes - the same document shape as the daemon's
``/status``, so the same templates render it. It is computed once before serving, then again
every ``refresh`` seconds in the background (a failed check keeps the last one and shows the
error). Every string goes through the daemon's `reconciler.daemon.logs.Redactor` with the
secrets of the environment (``HEADWATER_WEBHOOK_SECRET``, ``HEADWATER_GIT_TOKEN``,
``HEADWATER_NOTIFY_WEBHOOK``) and any ``user:password@`` in a URL.

It listens on 127.0.0.1 by default: the page has no authentication.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.daemon.logs import Redactor
from reconciler.health import iso

SECRET_VARIABLES = ("HEADWATER_WEBHOOK_SECRET", "HEADWATER_GIT_TOKEN", "HEADWATER_NOTIFY_WEBHOOK")


def status_document(repo: Path, engine_for: Callable[[Any], Any]) -> dict[str, Any]:
    """The daemon's status document shape, computed once from the desired state at ``repo``."""
    from reconciler import status
    from reconciler.blame import drift_origins
    from reconciler.daemon.service import resource_state, suspended_sources
    from reconciler.load import load_repo
    from reconciler.resources import SOURCE_KEY

    state = load_repo(repo)
    health, plan = status.check(state, engine_for(state))
    origins = drift_origins(state, plan)
    suspended = suspended_sources(state)
    drift = []
    for change in plan.changes:
        if change.desired is None or resource_state(change) not in ("drifted", "missing"):
            continue
        mine = origins.get(change.address, {})
        source = change.desired.labels.get(SOURCE_KEY)
        drift.append({
            "address": change.address, "kind": str(change.kind), "state": resource_state(change),
            "source": source, "suspended": source in suspended, "action": str(change.action),
            "origin": mine[""].to_dict() if "" in mine else None,
            "fields": [{"path": d.path, "live": d.before, "desired": d.after,
                        "origin": mine[d.path].to_dict() if d.path in mine else None} for d in change.diff],
        })
    now = iso(time.time())
    return {
        "mode": "local",
        "repo": str(repo),
        "revision": state.revision,
        "health": health.to_dict(),
        "drift": {"checked_at": now, "revision": state.revision, "resources": drift},
        "pending": [{"address": c.address, "action": str(c.action), "reason": c.reason,
                     "suspended": (c.desired or c.live).labels.get(SOURCE_KEY) in suspended
                     if (c.desired or c.live) is not None else False,
                     "fields": [{"path": d.path, "live": d.before, "desired": d.after} for d in c.diff]}
                    for c in plan.actionable],
        "blocked": [{"address": c.address, "action": str(c.action), "reason": c.blocked} for c in plan.blocked],
    }


class LocalStatus:
    """What the page's handlers call ``status()`` on (in place of the daemon): the last computed
    document, redacted; refreshed by `refresh_forever` on a thread."""

    def __init__(self, compute: Callable[[], dict[str, Any]], redactor: Redactor | None = None) -> None:
        self._compute = compute
        self.redactor = redactor or Redactor(os.environ.get(name) for name in SECRET_VARIABLES)
        self._document: dict[str, Any] = {"mode": "local", "health": None}
        self._lock = threading.Lock()

    def set(self, document: dict[str, Any]) -> None:
        document = self.redactor.value(document)
        with self._lock:
            self._document = document

    def refresh(self) -> str | None:
        """Compute the document again; returns the error (also shown on the page) or None."""
        try:
            document = self._compute()
        except Exception as exc:  # noqa: BLE001 - the page shows the error and the last good status
            error = self.redactor(f"{type(exc).__name__}: {exc}"[:1000])
            with self._lock:
                health = dict(self._document.get("health") or {})
                health["error"] = error
                self._document = {**self._document, "health": health}
            return error
        self.set(document)
        return None

    def refresh_forever(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            self.refresh()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._document


def app(local: LocalStatus) -> Any:
    """The page's routes alone, with the daemon server's protections (`reconciler.daemon.server`)."""
    from starlette.applications import Starlette

    from reconciler.ui.web import routes

    application = Starlette(routes=routes())
    application.state.daemon = local
    return application


def serve(local: LocalStatus, host: str, port: int, refresh: float,
          announce: Callable[[str], None] = print) -> int:
    """Serve until interrupted (Ctrl-C); the process's exit code."""
    from reconciler.daemon.server import HttpServer

    server = HttpServer(app(local), host, port)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    announce(f"headwater ui: http://{shown}:{bound_port}/ui (refreshed every {refresh:g} s; Ctrl-C stops)")
    stop = threading.Event()
    refresher = threading.Thread(target=local.refresh_forever, args=(refresh, stop), name="headwater-ui-refresh",
                                 daemon=True)
    refresher.start()
    try:
        server.serve_forever()  # uvicorn handles SIGINT/SIGTERM and returns
    finally:
        stop.set()
        server.server_close()
    return 0
