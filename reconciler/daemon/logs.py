"""Structured logs for the daemon: one JSON object per line, one event per decision.

Every event names what was decided (``sync.applied``, ``drift.detected``, ``webhook.rejected``...)
and carries the facts behind it (revision, resource address, action, result, duration). Events
of one reconcile share a ``correlation_id`` so a single sync or drift pass can be followed.

Secrets never reach the output: `Redactor` knows every secret the daemon was given (webhook
secret, git token, notification webhook URL) and replaces them, and any credentials embedded
in a URL (``https://user:token@host``), in every string of every event. Code should not log
secrets in the first place; this is the second line of defence.

Each daemon builds its own logger (`make_logger`) writing to its own stream instead of
configuring structlog globally, so two daemons in one process (the tests) keep separate logs.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterable
from typing import IO, Any

import structlog

# scheme://user:password@host  or  scheme://token@host  → scheme://***@host
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
MASK = "***"


class Redactor:
    """Replaces known secrets and URL credentials in text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so a secret containing another one is masked whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)

    def value(self, value: Any) -> Any:
        """Redact strings inside JSON-like values (dicts, lists, tuples)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def make_logger(stream: IO[str] | None = None, redactor: Redactor | None = None) -> structlog.BoundLogger:
    """A JSON-lines logger writing to ``stream`` (default stderr) through ``redactor``."""
    redact = redactor or Redactor()

    def scrub(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        return {key: redact.value(value) if not isinstance(value, BaseException) else redact(str(value))
                for key, value in event.items()}

    return structlog.wrap_logger(
        structlog.PrintLogger(stream or sys.stderr),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub,
            structlog.processors.JSONRenderer(default=str),
        ],
        context_class=dict,
        wrapper_class=structlog.BoundLogger,
    )


def correlation_id() -> str:
    """A short random id shared by the events of one reconcile."""
    return uuid.uuid4().hex[:12]
