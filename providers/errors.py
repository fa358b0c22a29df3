"""Errors from GCP, mapped in one place.

Providers call `call(...)` (or wrap their own calls with `translate`) so that every
``google.api_core`` exception becomes one of ours:

* `TemporaryError`: 429, 500, 503, deadline exceeded, unavailable, aborted. Retried here with
  exponential backoff and full jitter, then raised if it persists.
* `AlreadyExists` / `NotFound`: the applier and providers use these to stay idempotent.
* `PermanentError`: everything else (bad request, permission denied...), never retried.

Messages are kept short and never include request bodies, so secrets cannot leak through them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from google.api_core import exceptions as gexc

T = TypeVar("T")

# Observers of every API attempt made through `call`, e.g. the daemon's
# ``headwater_api_requests_total{service,method,code}``. Each is called as
# ``listener(service, method, code)`` with service/method from the leading "service.method" of
# ``what`` (never the resource part, so labels stay low-cardinality) and code "OK" or the error's
# class name. Listeners must be quick; one that raises is ignored.
listeners: list[Callable[[str, str, str], None]] = []


def _observed(what: str, code: str) -> None:
    service, _, method = what.split(" ", 1)[0].partition(".")
    for listener in list(listeners):
        try:
            listener(service, method or "unknown", code)
        except Exception:  # noqa: BLE001 - metrics must never break an API call
            pass


class ProviderError(Exception):
    """Base of every error a provider raises."""


class TemporaryError(ProviderError):
    """A failure that may succeed if tried again."""


class PermanentError(ProviderError):
    """A failure that will not go away by retrying."""


class AlreadyExists(PermanentError):
    """Create found the resource already there."""


class NotFound(PermanentError):
    """The resource (or its parent) does not exist."""


class ServiceDisabled(PermanentError):
    """The project has not enabled the API (403 with ErrorInfo reason SERVICE_DISABLED)."""


_TEMPORARY = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
    gexc.Aborted,
    gexc.RetryError,
)


def translate(exc: BaseException, what: str) -> ProviderError:
    """Map one exception from a Google client to our error hierarchy."""
    if isinstance(exc, ProviderError):
        return exc
    message = f"{what}: {_short(exc)}"
    if isinstance(exc, gexc.Conflict) and not isinstance(exc, gexc.Aborted):
        return AlreadyExists(message)
    if isinstance(exc, gexc.NotFound):
        return NotFound(message)
    if isinstance(exc, gexc.GoogleAPICallError) and exc.reason == "SERVICE_DISABLED":
        return ServiceDisabled(message)
    if isinstance(exc, _TEMPORARY) or _rate_limited(exc):
        return TemporaryError(message)
    if isinstance(exc, ConnectionError | TimeoutError):
        return TemporaryError(message)
    try:  # requests' connection errors surface from the HTTP clients (Storage, BigQuery)
        import requests

        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            return TemporaryError(message)
    except ImportError:  # pragma: no cover - requests ships with the Google clients
        pass
    return PermanentError(message)


# BigQuery and Cloud Storage report rate limiting as 403 with one of these reasons.
_RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "backendError"}


def _rate_limited(exc: BaseException) -> bool:
    if not isinstance(exc, gexc.Forbidden):
        return False
    return any(isinstance(e, dict) and e.get("reason") in _RATE_LIMIT_REASONS for e in (exc.errors or []))


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def call(
    fn: Callable[[], T],
    what: str,
    *,
    attempts: int = 5,
    initial_delay: float = 0.5,
    max_delay: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``fn``; translate its errors; retry temporary ones with backoff and full jitter."""
    delay = initial_delay
    for attempt in range(1, attempts + 1):
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - translated right here
            _observed(what, type(exc).__name__)
            error = translate(exc, what)
            if not isinstance(error, TemporaryError) or attempt == attempts:
                raise error from exc
            sleep(random.uniform(0, delay))
            delay = min(delay * 2, max_delay)
        else:
            _observed(what, "OK")
            return result
    raise AssertionError("unreachable")  # pragma: no cover
