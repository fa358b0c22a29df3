"""Errors from GCP, mapped in one place, and how calls are retried.

Providers call `call(...)` (or wrap their own calls with `translate`) so that every
``google.api_core`` exception becomes one of ours:

* `TemporaryError`: 429, 500, 502, 503, 504, deadline exceeded, aborted, reset connections.
  Retried here (below).
* `Unreachable` (a `TemporaryError`): nothing answers at all (connection refused, no route, a
  name that does not resolve) - an emulator that is not running, a network that is down.
  Retried for a short while only (`RetryPolicy.unreachable_deadline`), so a command against
  stopped emulators ends in seconds, not minutes.
* `AlreadyExists` / `NotFound`: the applier and providers use these to stay idempotent.
* `PermanentError`: everything else (bad request, permission denied...), never retried.

Retries (tenacity) run against **deadlines**, not a count of attempts: a call retries its
temporary errors, with exponential backoff and full jitter, until its own deadline
(`RetryPolicy.call_deadline`, default 120 s) or the apply's (`deadline`; the CLI and the daemon
give every apply `RetryPolicy.apply_deadline`, default 30 min), whichever comes first. A
``Retry-After`` (HTTP header, or gRPC ``RetryInfo``) is honoured: the wait is at least what the
server asked, and a call gives up at once, saying so, when that is past its deadline.

Two things protect the APIs (and the quotas N daemons or shards share) during a storm:

* a **rate budget** per API (``service``: pubsub, storage, bigquery...): at most so many
  requests per window in this process (`limits`' moving window; `DEFAULT_RATES`, overridden with
  ``HEADWATER_API_RATES="pubsub=100/second,run=60/minute"``). A call waits for its turn; the
  wait counts against its deadline. With N processes sharing a project, give each 1/N. An API
  served by its local emulator (``*_EMULATOR_HOST``) has no quota, and no budget;
* a **circuit breaker** per API (pybreaker): after `RetryPolicy.breaker_failures` consecutive
  temporary failures the API's circuit opens and calls stop sending requests for
  `RetryPolicy.breaker_reset` seconds, then one trial call decides. An open circuit does not
  fail a call: it makes the call wait (within its deadline), like a long backoff.

So a storm of 429/503 answers slows headwater down instead of failing it; only an error that
outlasts a deadline fails the call (and then the change; apply converges on the next run).

Messages are kept short, never include request bodies, and known credential formats in an
API's own message are masked, so secrets cannot leak through them.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import limits
import pybreaker
import tenacity
from google.api_core import exceptions as gexc
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

T = TypeVar("T")

# Observers of every API attempt made through `call`, e.g. the daemon's
# ``headwater_api_requests_total{service,method,code}``. Each is called as
# ``listener(service, method, code)`` with service/method from the leading "service.method" of
# ``what`` (never the resource part, so labels stay low-cardinality) and code "OK" or the error's
# class name. Listeners must be quick; one that raises is ignored.
listeners: list[Callable[[str, str, str], None]] = []

# Observers of circuit changes: ``listener(service, state)`` with state "open", "half-open" or
# "closed" (the daemon logs them). Same rules as `listeners`.
circuit_listeners: list[Callable[[str, str], None]] = []


def _observed(what: str, code: str) -> None:
    service, method = _service_method(what)
    for listener in list(listeners):
        try:
            listener(service, method, code)
        except Exception:  # noqa: BLE001 - metrics must never break an API call
            pass


def _service_method(what: str) -> tuple[str, str]:
    service, _, method = what.split(" ", 1)[0].partition(".")
    return service, method or "unknown"


class ProviderError(Exception):
    """Base of every error a provider raises."""


class TemporaryError(ProviderError):
    """A failure that may succeed if tried again."""

    retry_after: float | None = None  # seconds the server asked us to wait, when it said


class Unreachable(TemporaryError):
    """Nothing answered at all: connection refused, no route, an unknown host."""


class CircuitOpen(TemporaryError):
    """The API's circuit is open: no request was sent (see the module docstring)."""


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

# What nothing-is-listening looks like from requests, urllib3 and gRPC.
_UNREACHABLE = re.compile(r"connection refused|failed to connect to all addresses|no route to host|"
                          r"name or service not known|nodename nor servname|temporary failure in name resolution|"
                          r"network is unreachable|failed to establish a new connection", re.IGNORECASE)


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
    temporary = isinstance(exc, _TEMPORARY) or _rate_limited(exc) or isinstance(exc, ConnectionError | TimeoutError)
    if not temporary:
        try:  # requests' connection errors surface from the HTTP clients (Storage, BigQuery)
            import requests

            temporary = isinstance(exc, requests.ConnectionError | requests.Timeout)
        except ImportError:  # pragma: no cover - requests ships with the Google clients
            pass
    if not temporary:
        return PermanentError(message)
    unreachable = isinstance(exc, ConnectionRefusedError) or (
        not isinstance(exc, gexc.GoogleAPICallError) or isinstance(exc, gexc.ServiceUnavailable)
    ) and bool(_UNREACHABLE.search(str(exc)))
    error = Unreachable(message) if unreachable else TemporaryError(message)
    error.retry_after = retry_after(exc)
    return error


# BigQuery and Cloud Storage report rate limiting as 403 with one of these reasons.
_RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "backendError"}


def _rate_limited(exc: BaseException) -> bool:
    if not isinstance(exc, gexc.Forbidden):
        return False
    return any(isinstance(e, dict) and e.get("reason") in _RATE_LIMIT_REASONS for e in (exc.errors or []))


# Credential formats an API might echo back in its own error message.
_CREDENTIAL = re.compile(r"\b(ya29\.|AIza|AKIA|ghp_|gho_|github_pat_|xox[abposr]-|(sk|rk)_(live|test)_|eyJ)"
                         r"[A-Za-z0-9._\-]{6,}")


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = _CREDENTIAL.sub(lambda m: m.group(1) + "…", " ".join(str(text).split()))
    return text if len(text) <= 300 else text[:297] + "..."


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked to wait: HTTP ``Retry-After`` (seconds or a date), or gRPC ``RetryInfo``."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        try:
            value = headers.get("Retry-After") or headers.get("retry-after")
        except Exception:  # noqa: BLE001 - a response of an unexpected type: no hint
            value = None
        if value:
            parsed = parse_retry_after(str(value))
            if parsed is not None:
                return parsed
    for detail in getattr(exc, "details", None) or ():
        delay = getattr(detail, "retry_delay", None)
        if delay is not None and hasattr(delay, "seconds"):
            return max(0.0, delay.seconds + delay.nanos / 1e9)
    return None


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --------------------------------------------------------------------------- policy and budgets


@dataclass(frozen=True)
class RetryPolicy:
    call_deadline: float = 120.0  # seconds one call may spend retrying temporary errors
    unreachable_deadline: float = 10.0  # ... when nothing answers at all
    apply_deadline: float = 1800.0  # seconds one apply may take (every call in it stops then)
    initial_delay: float = 0.5  # first backoff cap; doubles per attempt (full jitter)
    max_delay: float = 20.0  # backoff cap
    breaker_failures: int = 10  # consecutive temporary failures of one API that open its circuit
    breaker_reset: float = 30.0  # seconds an open circuit waits before a trial call


# Requests per window per API, in this process. Generous against GCP's per-project quotas for
# the admin calls headwater makes; give each of N processes sharing a project 1/N.
DEFAULT_RATES: Mapping[str, str] = {
    "pubsub": "50/second", "storage": "50/second", "bigquery": "25/second", "dataflow": "10/second",
    "scheduler": "5/second", "run": "5/second", "secretmanager": "10/second", "datastream": "5/second",
    "storagetransfer": "5/second", "iam": "5/second",
}
DEFAULT_RATE = "20/second"  # any other service

_policy = RetryPolicy()
_rates: dict[str, limits.RateLimitItem] = {}
_limiter = MovingWindowRateLimiter(MemoryStorage())
_breakers: dict[str, pybreaker.CircuitBreaker] = {}
_lock = threading.Lock()
_deadline: ContextVar[float | None] = ContextVar("headwater_call_deadline", default=None)


def parse_rates(text: str) -> dict[str, str]:
    """``"pubsub=100/second, run=60/minute"`` → {service: rate}; ValueError naming a bad entry."""
    rates = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        service, _, rate = entry.partition("=")
        try:
            limits.parse(rate.strip())
        except ValueError:
            raise ValueError(f"{entry!r} is not service=N/second (or /minute, /hour)") from None
        if not re.fullmatch(r"[a-z][a-z0-9_]*", service.strip()):
            raise ValueError(f"{entry!r}: {service.strip()!r} is not a service name such as pubsub or bigquery")
        rates[service.strip()] = rate.strip()
    return rates


def configure(policy: RetryPolicy | None = None, rates: Mapping[str, str] | None = None) -> None:
    """Set the retry policy and the rate budgets (``rates`` adds to or overrides `DEFAULT_RATES`);
    circuits start closed again."""
    global _policy
    with _lock:
        if policy is not None:
            _policy = policy
        _rates.clear()
        for service, rate in {**DEFAULT_RATES, **(rates or {})}.items():
            _rates[service] = limits.parse(rate)
        _breakers.clear()
        _limiter.storage.reset()


def configure_from_env(environ: Mapping[str, str] = os.environ) -> RetryPolicy:
    """`configure` from ``HEADWATER_CALL_DEADLINE``, ``HEADWATER_APPLY_DEADLINE`` (seconds) and
    ``HEADWATER_API_RATES``; ValueError naming the variable when one is malformed."""
    values: dict[str, float] = {}
    for name, field in (("HEADWATER_CALL_DEADLINE", "call_deadline"), ("HEADWATER_APPLY_DEADLINE", "apply_deadline")):
        if environ.get(name):
            try:
                values[field] = float(environ[name])
            except ValueError:
                raise ValueError(f"{name}={environ[name]!r} is not a number of seconds") from None
            if not values[field] > 0:
                raise ValueError(f"{name}={environ[name]!r} must be positive")
    try:
        rates = parse_rates(environ.get("HEADWATER_API_RATES", ""))
    except ValueError as exc:
        raise ValueError(f"HEADWATER_API_RATES: {exc}") from None
    policy = replace(RetryPolicy(), **values)
    configure(policy, rates)
    return policy


def policy() -> RetryPolicy:
    return _policy


# The emulators have no quotas: no budget for an API served by one.
_EMULATOR_VARS = {"pubsub": "PUBSUB_EMULATOR_HOST", "storage": "STORAGE_EMULATOR_HOST",
                  "bigquery": "BIGQUERY_EMULATOR_HOST"}


def _rate(service: str) -> limits.RateLimitItem | None:
    if os.environ.get(_EMULATOR_VARS.get(service, "")):
        return None
    with _lock:
        if not _rates:
            for name, rate in DEFAULT_RATES.items():
                _rates[name] = limits.parse(rate)
        item = _rates.get(service)
        if item is None:
            item = _rates[service] = limits.parse(DEFAULT_RATE)
        return item


def _is_failure(exc: BaseException) -> bool:
    return isinstance(translate(exc, ""), TemporaryError)


class _CircuitLog(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        for listener in list(circuit_listeners):
            try:
                listener(cb.name, new_state.name)
            except Exception:  # noqa: BLE001
                pass


def breaker(service: str) -> pybreaker.CircuitBreaker:
    """The circuit of one API (created closed on first use)."""
    with _lock:
        found = _breakers.get(service)
        if found is None:
            found = _breakers[service] = pybreaker.CircuitBreaker(
                fail_max=_policy.breaker_failures, reset_timeout=_policy.breaker_reset, name=service,
                exclude=[lambda exc: not _is_failure(exc)], listeners=[_CircuitLog()],
                throw_new_error_on_trip=False)
        return found


@contextlib.contextmanager
def deadline(until: float | None) -> Iterator[None]:
    """Calls made in this context (this thread) stop retrying at ``until`` (``time.monotonic()``)."""
    outer = _deadline.get()
    token = _deadline.set(until if outer is None else (outer if until is None else min(outer, until)))
    try:
        yield
    finally:
        _deadline.reset(token)


class Budget:
    """An apply's deadline: `start` it when the apply starts; every call made through a
    `bounded` provider meanwhile stops retrying at ``start + seconds``."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds
        self.until: float | None = None

    def start(self) -> None:
        self.until = time.monotonic() + (self.seconds if self.seconds is not None else _policy.apply_deadline)

    def stop(self) -> None:
        self.until = None


class _Bounded:
    """A provider whose every method runs under its `Budget`'s deadline. Attributes and optional
    abilities (``read``, ``would_lose``...) pass through: absent ones stay absent."""

    def __init__(self, inner: Any, budget: Budget) -> None:
        self._inner = inner
        self._budget = budget

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @functools.wraps(attr)
        def bounded_method(*args: Any, **kwargs: Any) -> Any:
            with deadline(self._budget.until):
                return attr(*args, **kwargs)

        return bounded_method


def bounded(provider: T, budget: Budget) -> T:
    return _Bounded(provider, budget)  # type: ignore[return-value]


# --------------------------------------------------------------------------- the call


def call(
    fn: Callable[[], T],
    what: str,
    *,
    attempts: int | None = None,
    initial_delay: float | None = None,
    max_delay: float | None = None,
    deadline_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``fn`` (one request) and translate its errors; retry temporary ones (module docstring).

    ``attempts`` bounds the tries as well (the lease's quick calls); ``deadline_s`` replaces the
    policy's call deadline; ``sleep`` and ``clock`` are for tests.
    """
    settings = _policy
    service, _method = _service_method(what)
    start = clock()
    outer = _deadline.get()
    first_delay = settings.initial_delay if initial_delay is None else initial_delay
    delay_cap = settings.max_delay if max_delay is None else max_delay
    circuit = breaker(service)
    rate = _rate(service)

    def give_up_at(error: BaseException | None) -> float:
        own = settings.unreachable_deadline if isinstance(error, Unreachable) else (
            settings.call_deadline if deadline_s is None else deadline_s)
        return min(start + own, outer if outer is not None else math.inf)

    def attempt() -> T:
        _wait_for_budget(service, rate, give_up_at(None), what, sleep, clock)
        try:
            result = _through_circuit(circuit, fn)
        except pybreaker.CircuitBreakerError:
            raise CircuitOpen(f"{what}: {service} is failing ({settings.breaker_failures} consecutive temporary "
                              f"errors); its circuit is open, no request sent") from None
        except Exception as exc:  # noqa: BLE001 - translated right here
            _observed(what, type(exc).__name__)
            raise translate(exc, what) from exc
        _observed(what, "OK")
        return result

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        backoff = random.uniform(0, min(delay_cap, first_delay * 2 ** (state.attempt_number - 1)))
        if isinstance(error, CircuitOpen):  # wait for the trial call, not just a backoff
            backoff = max(backoff, random.uniform(0.5, 1.0) * min(settings.breaker_reset, delay_cap))
        asked = getattr(error, "retry_after", None)
        return max(backoff, asked) if asked is not None else backoff

    def stop(state: tenacity.RetryCallState) -> bool:
        if attempts is not None and state.attempt_number >= attempts:
            return True
        error = state.outcome.exception() if state.outcome else None
        return clock() + (state.upcoming_sleep or 0.0) > give_up_at(error)

    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception_type(TemporaryError), wait=wait, stop=stop,
                                 sleep=sleep, reraise=True)
    try:
        return retrying(attempt)
    except TemporaryError as exc:
        tries = retrying.statistics.get("attempt_number", 1)
        if tries <= 1 and attempts != 1 and exc.retry_after is None:
            raise
        why = (f"the server asked to retry after {exc.retry_after:.0f} s, past the deadline"
               if exc.retry_after is not None and clock() + exc.retry_after > give_up_at(exc)
               else f"gave up after {tries} attempts in {clock() - start:.1f} s")
        final = type(exc)(f"{exc} ({why})")
        final.retry_after = exc.retry_after
        raise final from exc


def _through_circuit(circuit: pybreaker.CircuitBreaker, fn: Callable[[], T]) -> T:
    """``fn()`` under the API's circuit, concurrently with the API's other requests.

    pybreaker's ``CircuitBreaker.call`` holds the breaker's lock for the whole call, so every
    request to one API would wait for the one in flight before it: the observe threads' BigQuery
    requests went out one at a time (issue 14). While the circuit is closed the request runs
    outside the lock and only its outcome is recorded under it (the same counting as
    ``call``); an open or half-open circuit goes through pybreaker's own ``call``, so the trial
    call is still one at a time. Raises what ``fn`` raises, or `pybreaker.CircuitBreakerError`.
    This reaches into pybreaker's internals (the breaker's ``_lock``, a state's
    ``_handle_error`` / ``_handle_success``; pybreaker 1.4.1 in deploy/requirements.lock):
    tests/test_circuit_concurrency.py and tests/test_errors.py fail if they change.
    """
    with circuit._lock:
        closed = circuit.current_state == pybreaker.STATE_CLOSED
    if not closed:
        return circuit.call(fn)
    try:
        result = fn()
    except BaseException as exc:
        with circuit._lock:
            try:  # counts the failure and may open the circuit; pybreaker re-raises exc as it does
                circuit.state._handle_error(exc, reraise=False)
            except BaseException:  # noqa: BLE001 - exc itself is raised below
                pass
        raise
    with circuit._lock:
        circuit.state._handle_success()
    return result


def _wait_for_budget(service: str, rate: limits.RateLimitItem | None, until: float, what: str,
                     sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
    """Take one request from the API's budget, waiting for it (not past ``until``)."""
    while rate is not None and not _limiter.hit(rate, "headwater", service):
        stats = _limiter.get_window_stats(rate, "headwater", service)
        pause = min(1.0, max(0.01, stats.reset_time - time.time()))
        if clock() + pause > until:
            raise TemporaryError(f"{what}: the request budget of {service} ({rate}) is spent until past the deadline")
        sleep(pause)
