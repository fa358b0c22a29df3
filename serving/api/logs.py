"""Logging for the data API: one JSON object per line (Cloud Logging's structured format, with
``severity`` and ``message``), and secrets redacted.

The usage log is one line per request, ``"message": "api_request"``, with the fields the handler
recorded (``serving.api.app``): who (client id), what (source, endpoint, format, filter fields
and operators), how it went (status, rows, bytes processed, duration). It never holds a token,
a secret, a cursor, an ``Authorization`` header or a filter value: the handler records none of
them, uvicorn's access log (which prints query strings) is off, and :func:`redact_secrets`
adds a second line of defence: a log-record factory that replaces every registered secret (the
signing keys, every client secret, and their Base64/URL-encoded forms) in each record's message
and exception text as the record is created, before any handler sees it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import sys
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
_MIN_SECRET_LENGTH = 8

_secrets: tuple[str, ...] = ()
_lock = threading.Lock()
_installed = False


def _forms(value: str) -> set[str]:
    if len(value) < _MIN_SECRET_LENGTH:
        return set()
    return {value, quote(value, safe=""), quote_plus(value), base64.b64encode(value.encode()).decode()}


def redact_secrets(values: Iterable[str], client_ids: Iterable[str] = ()) -> None:
    """Register secrets for redaction from every log record (and ``client_id:secret`` pairs' Base64,
    the HTTP Basic header's form)."""
    global _installed, _secrets
    values = [v for v in values if v]
    forms: set[str] = set()
    for value in values:
        forms |= _forms(value)
    for client_id in client_ids:
        for value in values:
            forms.add(base64.b64encode(f"{client_id}:{value}".encode()).decode())
    with _lock:
        _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))
        if not _installed:
            _install_factory()
            _installed = True


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _install_factory() -> None:
    previous = logging.getLogRecordFactory()
    plain = logging.Formatter()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _secrets:
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, ()
            if record.exc_info and not record.exc_text:
                record.exc_text = redact(plain.formatException(record.exc_info))
                record.exc_info = None
        return record

    logging.setLogRecordFactory(factory)


_SEVERITY = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING", logging.ERROR: "ERROR",
             logging.CRITICAL: "CRITICAL"}


class JsonLines(logging.Formatter):
    """``{"severity", "message", "time", "logger", ...}``; a record's ``usage`` extra (a dict) is
    merged into the object as structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "severity": _SEVERITY.get(record.levelno, record.levelname),
            "message": record.getMessage(),
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
        }
        usage = getattr(record, "usage", None)
        if isinstance(usage, dict):
            entry.update({k: v for k, v in usage.items() if k not in entry})
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            entry["exception"] = record.exc_text
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


def configure(level: int = logging.INFO, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # google-auth / urllib3 debug lines may carry request headers: never below WARNING.
    for noisy in ("urllib3", "google.auth", "google.cloud", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
