"""Logging for the connector process: one JSON object per line, with secrets redacted.

Cloud Run turns a JSON line with ``severity`` and ``message`` on stdout/stderr into a structured
log entry, so that is the format (:class:`JsonLines`).

Secrets (the API credential, its derived forms, an OAuth2 access token) must never reach a log.
The code keeps them out in the first place - URLs are logged through ``connector.rest_api``'s
sanitiser, httpx's own request log (which prints full URLs, query-string API keys included) is
turned off - and :func:`redact_secret` adds a second line of defence: a log-record factory
that replaces every registered secret in each record's message and exception text as the
record is created, before any handler (ours, or pytest's capture) sees it.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
# Shorter strings would be redacted inside unrelated words; no real credential is this short.
_MIN_SECRET_LENGTH = 4

# Every registered form, longest first (a form containing another is replaced whole). A tuple,
# replaced whole under the lock, so readers on other threads never see it change under them.
_secrets: tuple[str, ...] = ()
_lock = threading.Lock()
_installed = False


def secret_forms(value: str | None) -> set[str]:
    """``value`` as it may appear in text: itself, URL-encoded, Base64 (an Authorization: Basic
    header), and for ``user:password`` / ``client_id:client_secret`` the password part alone."""
    if not value or len(value) < _MIN_SECRET_LENGTH:
        return set()
    forms = {value, quote(value, safe=""), quote_plus(value), base64.b64encode(value.encode()).decode()}
    if ":" in value:
        password = value.split(":", 1)[1]
        if len(password) >= _MIN_SECRET_LENGTH:
            forms |= {password, quote(password, safe=""), quote_plus(password)}
    return forms


def redact_secret(value: str | None) -> None:
    """Register ``value`` (every form of :func:`secret_forms`) for redaction from all logs."""
    global _installed, _secrets
    forms = secret_forms(value)
    if not forms:
        return
    with _lock:
        _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))
        if not _installed:
            _install_factory()
            _installed = True


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
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
        return record

    logging.setLogRecordFactory(factory)


class JsonLines(logging.Formatter):
    """``{"severity", "message", "logger", "time"}`` per record, redacted once more at the end."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        entry = {
            "severity": record.levelname,
            "message": message,
            "logger": record.name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        }
        return redact(json.dumps(entry, ensure_ascii=False))


def configure(level: int = logging.INFO) -> None:
    """Log JSON lines to stderr at ``level``; silence the HTTP libraries' per-request logs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_http_libraries()


def quiet_http_libraries() -> None:
    """httpx logs every request's full URL at INFO (an api_key query parameter included), and
    httpcore traces connections at DEBUG: the connector logs its requests itself, sanitised."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
