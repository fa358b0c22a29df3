"""A real HTTP API on a loopback port, served by a thread, for the poller's tests.

It serves one list of records (``{"id": i, "updated_at": ...}``, in ``updated_at`` order) in
pages, under one path per pagination style:

=================  ==============================================================================
``/next_url``      ``?page=N`` -> ``{"data": [...], "next": "/next_url?page=N+1"}`` (null on the last)
``/link``          ``?page=N`` -> ``[...]`` with ``Link: <...page=N+1>; rel="next"`` (none on the last)
``/cursor``        ``?after=<token>`` -> ``{"items": [...], "meta": {"next": "<token>"}}`` (null on the last)
``/page``          ``?p=N`` (from 1) -> ``{"results": [...]}``; past the end: ``{"results": []}``
``/none``          -> every record, ``{"data": [...]}``
``/not_json``      -> an HTML page; ``/no_records`` -> ``{"unexpected": true}``
``/raw/<name>``    -> :attr:`FakeApi.raw` ``[name]`` as it is, ``Content-Type: application/json``
``/token``         POST: OAuth2 client-credentials token endpoint
=================  ==============================================================================

Every data path honours ``updated_since`` (an inclusive lower bound on ``updated_at``). The API
checks credentials as configured (:attr:`FakeApi.expect`), records each request
(:attr:`FakeApi.requests`), and answers injected failures (:meth:`FakeApi.inject`): 429 with a
``Retry-After``, 500, anything.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


def make_records(count: int) -> list[dict[str, Any]]:
    """``count`` records with unique ids and strictly increasing ``updated_at``."""
    return [{"id": i, "updated_at": f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", "v": "x" * 5}
            for i in range(1, count + 1)]


@dataclass
class Seen:
    """One request the API received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Injection:
    match: Callable[[Seen], bool]
    status: int
    headers: dict[str, str]
    times: int


@dataclass
class FakeApi:
    records: list[dict[str, Any]] = field(default_factory=list)
    page_size: int = 10
    # None, or ("bearer", token) | ("header", name, key) | ("query", name, key) | ("basic", user, pw)
    # | ("oauth2", client_id, client_secret, expires_in)
    expect: tuple | None = None
    requests: list[Seen] = field(default_factory=list)
    issued_tokens: list[str] = field(default_factory=list)
    echo_secret: str | None = None  # put this string into every body (an API echoing a credential)
    injections: list[_Injection] = field(default_factory=list)
    raw: dict[str, bytes] = field(default_factory=dict)  # /raw/<name> -> these bytes, as they are
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, status: int, *, times: int = 1, headers: dict[str, str] | None = None,
               when: Callable[[Seen], bool] | None = None) -> None:
        """Answer the next ``times`` requests matching ``when`` (default: any) with ``status``."""
        with self.lock:
            self.injections.append(_Injection(when or (lambda _: True), status, headers or {}, times))

    def data_requests(self) -> list[Seen]:
        return [r for r in self.requests if r.path != "/token"]

    def url(self, path: str) -> str:
        return self.base_url + path

    # ------------------------------------------------------------------ serving

    def _selected(self, query: dict[str, str]) -> list[dict[str, Any]]:
        since = query.get("updated_since")
        return [r for r in self.records if since is None or r["updated_at"] >= since]

    def handle(self, seen: Seen, body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            for injection in self.injections:
                if injection.times > 0 and injection.match(seen):
                    injection.times -= 1
                    return injection.status, injection.headers, b'{"error": "injected"}'
        if seen.path == "/token":
            return self._token(seen, body)
        if not self._authorized(seen):
            return 401, {}, b'{"error": "unauthorized"}'
        records, query, size = self._selected(seen.query), seen.query, self.page_size
        headers: dict[str, str] = {}
        keep = {k: v for k, v in query.items() if k == "updated_since"}
        if seen.path == "/next_url":
            page = int(query.get("page", "1"))
            chunk = records[(page - 1) * size: page * size]
            more = page * size < len(records)
            doc: Any = {"data": chunk, "next": _link("/next_url", {**keep, "page": page + 1}) if more else None}
        elif seen.path == "/link":
            page = int(query.get("page", "1"))
            doc = records[(page - 1) * size: page * size]
            if page * size < len(records):
                headers["Link"] = f'<{self.base_url}{_link("/link", {**keep, "page": page + 1})}>; rel="next"'
        elif seen.path == "/cursor":
            after = int(query.get("after", "0"))
            chunk = [r for r in records if r["id"] > after][:size]
            more = bool(chunk) and chunk[-1]["id"] < records[-1]["id"]
            doc = {"items": chunk, "meta": {"next": str(chunk[-1]["id"]) if more else None}}
        elif seen.path == "/page":
            page = int(query.get("p", "1"))
            doc = {"results": records[(page - 1) * size: page * size]}
        elif seen.path == "/none":
            doc = {"data": records}
        elif seen.path.startswith("/raw/") and seen.path[len("/raw/"):] in self.raw:
            return 200, {"Content-Type": "application/json"}, self.raw[seen.path[len("/raw/"):]]
        elif seen.path == "/not_json":
            return 200, {"Content-Type": "text/html"}, b"<html><body>maintenance</body></html>"
        elif seen.path == "/no_records":
            doc = {"unexpected": True, "echo": self.echo_secret}
        else:
            return 404, {}, b'{"error": "not found"}'
        if self.echo_secret is not None:  # into the body and into each record
            def echo(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return [{**r, "note": f"key={self.echo_secret}"} for r in records]
            if isinstance(doc, list):
                doc = echo(doc)
            else:
                doc = {**doc, "echo": self.echo_secret}
                for key in ("data", "items", "results"):
                    if isinstance(doc.get(key), list):
                        doc[key] = echo(doc[key])
        return 200, {"Content-Type": "application/json", **headers}, json.dumps(doc).encode()

    def _authorized(self, seen: Seen) -> bool:
        if self.expect is None:
            return True
        kind, *args = self.expect
        auth = seen.headers.get("authorization", "")
        if kind == "bearer":
            return auth == f"Bearer {args[0]}"
        if kind == "header":
            return seen.headers.get(args[0].lower()) == args[1]
        if kind == "query":
            return seen.query.get(args[0]) == args[1]
        if kind == "basic":
            return auth == "Basic " + base64.b64encode(f"{args[0]}:{args[1]}".encode()).decode()
        if kind == "oauth2":
            return bool(self.issued_tokens) and auth == f"Bearer {self.issued_tokens[-1]}"
        raise AssertionError(kind)

    def _token(self, seen: Seen, body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self.expect is not None and self.expect[0] == "oauth2"
        _, client_id, client_secret, expires_in = self.expect
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        basic = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        if form.get("grant_type") != "client_credentials" or seen.headers.get("authorization") != basic:
            return 401, {}, b'{"error": "invalid_client"}'
        token = f"tok-{len(self.issued_tokens) + 1}-{client_secret[::-1]}"
        self.issued_tokens.append(token)
        return 200, {"Content-Type": "application/json"}, json.dumps(
            {"access_token": token, "token_type": "Bearer", "expires_in": expires_in,
             "scope": form.get("scope")}).encode()


def _link(path: str, params: dict[str, Any]) -> str:
    return path + "?" + "&".join(f"{k}={v}" for k, v in params.items())


def serve(api: FakeApi) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start ``api`` on a free loopback port (sets ``api.base_url``); shut the server down after."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real APIs
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen = Seen(self.command, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                        {k.lower(): v for k, v in self.headers.items()})
            status, headers, payload = api.handle(seen, body)
            seen.status = status
            with api.lock:
                api.requests.append(seen)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    api.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-api",
                              daemon=True)
    thread.start()
    return server, thread
