"""Logging for the connector process: one JSON object per line, with secrets redacted.

Cloud Run turns a JSON line with ``severity`` and ``message`` on stdout/stderr into a structured
log entry, so that is the format (:class:`JsonLines`).

Secrets (the API credential, its derived forms, an OAuth2 access token) must never reach a log.
The code keeps them out in the first place - URLs are logged through ``connector.rest_api``'s
sanitiser, httpx's own request log (which prints full URLs, query-string API keys included) is
turned off - and :func:`redact_secret` adds a second line of defence: a log-record factory
that replaces every registered secret in each record's message and exception text as the
record is created, before any handler (ours, or pytest's capture) sees it.

What is rewritten, and from what length (docs/connector-contract.md, "Secrets in what the
connector writes"): replacing a string everywhere it occurs is only sound when nothing but the
secret can contain it. A key ``2026`` is in every timestamp of the year; redacting it turned
each log line's time, each cursor and each record's dates into ``[REDACTED]-11-02...``. So:

* **Text the connector writes** - log lines (the message; never the line's own timestamp,
  severity or logger), errors, /healthz, the ``origin`` and ``detail`` attributes: every form of
  a secret of at least :data:`REDACT_MIN_CHARS` characters is redacted. Random credentials are
  far longer; 8 characters of one do not occur in ordinary log text by chance.
* **Data the API sent** - record payloads and dead-letter bodies: published as received, except
  the forms of a secret of at least :data:`RECORD_SCRUB_MIN_CHARS` characters
  (:func:`record_secret_forms`), which connector.publish replaces. Such a string occurs in an
  API's data only where the API echoed the credential, and a credential in a record would reach
  every reader of the Silver table. Anything shorter might be the API's own data (a date, an id,
  a word): rewriting it would corrupt Silver, so it is left alone.
* A secret shorter than :data:`REDACT_MIN_CHARS` (or a ``user:password`` whose password is)
  cannot be redacted reliably and is not redacted at all: :func:`redact_secret` logs a warning
  once, without quoting it. It still never leaves the connector by the connector's own doing (it
  is only sent in its header or query parameter, and the api_key parameter is dropped from every
  URL shown by name); only an API echoing it back would put it in a log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sys
import threading
import time
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"
# A secret shorter than this is not redacted from text (see the module docstring): it would match
# dates, numbers and words, and redacting it corrupts the logs while protecting little.
REDACT_MIN_CHARS = 8
# A secret at least this long is also scrubbed from record payloads: at this length only the
# credential itself matches, so the rewrite can only remove an echoed credential, never data.
RECORD_SCRUB_MIN_CHARS = 16

# Every registered form, longest first (a form containing another is replaced whole). A tuple,
# replaced whole under the lock, so readers on other threads never see it change under them.
_secrets: tuple[str, ...] = ()
_lock = threading.Lock()
_installed = False
_warned: set[str] = set()  # SHA-256 of the secrets already warned about as too short


def secret_forms(value: str | None, min_chars: int = REDACT_MIN_CHARS) -> set[str]:
    """``value`` as it may appear in text: itself, URL-encoded, Base64 (an Authorization: Basic
    header), and for ``user:password`` / ``client_id:client_secret`` the password part alone -
    each only when the string it stands for (``value``, the password) has ``min_chars`` or more."""
    forms: set[str] = set()
    if not value:
        return forms
    if len(value) >= min_chars:
        forms |= {value, quote(value, safe=""), quote_plus(value), base64.b64encode(value.encode()).decode()}
    if ":" in value:
        password = value.split(":", 1)[1]
        if len(password) >= min_chars:
            forms |= {password, quote(password, safe=""), quote_plus(password)}
    return forms


def record_secret_forms(value: str | None) -> set[str]:
    """The forms of ``value`` scrubbed from record payloads and dead-letter bodies: those of
    :func:`secret_forms` from :data:`RECORD_SCRUB_MIN_CHARS` characters (the module docstring)."""
    return secret_forms(value, RECORD_SCRUB_MIN_CHARS)


def too_short_to_redact(value: str | None) -> bool:
    """Whether ``value``, or the password part of a ``user:password``, is too short to redact."""
    if not value:
        return False
    return len(value) < REDACT_MIN_CHARS or (":" in value and len(value.split(":", 1)[1]) < REDACT_MIN_CHARS)


def redact_secret(value: str | None, what: str = "a secret") -> None:
    """Register ``value`` (every form of :func:`secret_forms`) for redaction from all logs. One
    too short to redact (``what`` names it: "the connector secret (...)") gets a warning, once
    per process and value, that never quotes it."""
    global _installed, _secrets
    if too_short_to_redact(value):
        _warn_too_short(value or "", what)
    forms = secret_forms(value)
    if not forms:
        return
    with _lock:
        _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))
        if not _installed:
            _install_factory()
            _installed = True


def _warn_too_short(value: str, what: str) -> None:
    digest = hashlib.sha256(value.encode()).hexdigest()
    with _lock:
        if digest in _warned:
            return
        _warned.add(digest)
    part = what if len(value) < REDACT_MIN_CHARS else f"the password part (after ':') of {what}"
    logging.getLogger(__name__).warning(
        "%s is shorter than %d characters: too short to be redacted reliably (it would match dates, numbers "
        "and words), so it is not redacted from logs, errors or records. The connector itself never "
        "writes it anywhere; an API that echoes it back would put it there. Use a longer credential if "
        "the API allows it", part, REDACT_MIN_CHARS)


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
    """``{"severity", "message", "logger", "time"}`` per record; the message (with any exception
    text) is redacted once more. Only the message: the line's own fields are the connector's."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        entry = {
            "severity": record.levelname,
            "message": redact(message),
            "logger": record.name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        }
        return json.dumps(entry, ensure_ascii=False)


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
