"""A small REST API on loopback that serves records the way real SaaS APIs do, for the demo
and the end-to-end tests of the ``streaming_api`` pattern.

It stands for a third party's API (a payment provider, a CRM), not for a GCP service: the
connector runtime polls it exactly as it would poll the real one. It serves one collection:

    GET <path>?<cursor_param>=<lower bound>&<page_param>=<token>
    Authorization: Bearer <token>

    200 {"<records_key>": [<record>, ...], "<next_key>": "<token>" | null}

Records are sorted by ``cursor_field``; ``cursor_param`` is an inclusive lower bound on it;
pages hold ``page_size`` records and ``next_key`` is the opaque token of the next page (null on
the last). ``faults`` injects what real APIs do under load: ``{"429_every": n}`` answers every
n-th request with 429 and ``Retry-After: 1``, ``{"500_every": m}`` every m-th with a 500, and
``{"delay_ms": d}`` answers each request after ``d`` milliseconds (a slow API: a poll in progress).
`add` appends records while it runs (an API that keeps receiving data).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class SampleApi:
    """The API above, serving ``records`` on a free loopback port (``url`` once started)."""

    def __init__(self, records: list[dict[str, Any]], *, token: str, path: str = "/v1/records",
                 cursor_field: str = "created_at", cursor_param: str = "created_since",
                 page_param: str = "page_token", records_key: str = "data", next_key: str = "next_page_token",
                 page_size: int = 5, faults: dict[str, int] | None = None) -> None:
        self.records = list(records)
        self.token = token
        self.path = path
        self.cursor_field, self.cursor_param, self.page_param = cursor_field, cursor_param, page_param
        self.records_key, self.next_key = records_key, next_key
        self.page_size = page_size
        self.faults = dict(faults or {})
        self.requests = 0  # answered requests, faults included
        self.refused: dict[int, int] = {}  # status -> count of fault answers
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    def add(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            self.records.extend(records)

    def start(self) -> SampleApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, body, headers = api._answer(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Type": "application/json",
                                   "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # quiet: the demo prints its own summary
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="sample-api", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, raw_path: str, authorization: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.faults.get("delay_ms"):
            time.sleep(self.faults["delay_ms"] / 1000)
        url = urlsplit(raw_path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        with self._lock:
            self.requests += 1
            n = self.requests
            for status, key in ((429, "429_every"), (500, "500_every")):
                every = self.faults.get(key)
                if every and n % every == 0:
                    self.refused[status] = self.refused.get(status, 0) + 1
                    return status, {"error": "slow down" if status == 429 else "internal error"}, \
                        ({"Retry-After": "1"} if status == 429 else {})
            if url.path != self.path:
                return 404, {"error": "not found"}, {}
            if authorization != f"Bearer {self.token}":
                return 401, {"error": "bad credentials"}, {}
            since = query.get(self.cursor_param)
            rows = sorted((r for r in self.records if since is None or str(r[self.cursor_field]) >= since),
                          key=lambda r: str(r[self.cursor_field]))
        start = int(query.get(self.page_param) or 0)
        page = rows[start:start + self.page_size]
        more = start + self.page_size < len(rows)
        return 200, {self.records_key: page, self.next_key: str(start + self.page_size) if more else None}, {}
