"""The polling connector: walk a REST API's pages, publish every record, checkpoint the position.

One **poll** reads the checkpoint (connector.checkpoint), then walks the API from where the last
one stopped: the first page not read of an unfinished walk, or else a fresh walk from the
endpoint, with the incremental cursor (the greatest ``cursor_field`` value of the completed walks)
sent as ``cursor_param``. That bound is **inclusive**: the records at the boundary are read again,
so none is ever skipped. They are not published again: the checkpoint remembers the fingerprints
of the records published at the cursor value (its ``boundary``, connector.checkpoint), and a
record read at that value whose fingerprint is remembered is left out (counted ``unchanged``). A
record changed in place at the same value, or a new one at it, has a new fingerprint and is
published. When a walk completes the boundary is replaced by the fingerprints the walk read at the
new cursor value - at most ``BOUNDARY_MAX_FINGERPRINTS``; beyond that bound the records not
remembered are published again by every poll (and the pipeline's dedup absorbs the repeats within
its window), with a warning.

For each page: request it (within the request budget, retrying 429 and 5xx), take its records
(the ``records`` selector), hand them to the publisher, and find the next page (``pagination``).
Pub/Sub acknowledges a page's records while the next pages are fetched; a page counts as read
once every one of its records was acknowledged. The checkpoint is written after a page at most
every ``checkpoint_interval_seconds``, and when the poll ends - always after waiting for the
acknowledgement of everything published before it, so a crash in between re-publishes (the
dedup absorbs it) and never loses a record. A publish that fails makes its page the first page
not read.

How a poll ends (:class:`PollResult` ``outcome``):

* ``complete`` - the last page was read: the cursor advances to the greatest value seen, the
  boundary becomes the fingerprints read at it, and the resume position is cleared.
  A poll that found nothing new (a quiet API) is ``complete`` with 0 records: a success.
* ``partial`` - the request budget (``max_requests_per_minute``) or the retries
  (``max_retries``, or a ``Retry-After`` longer than ``retry_max_seconds``) ran out *after the
  poll received at least one page*: a partial success. The checkpoint keeps the first page not
  read; the next poll resumes there (as soon as the budget allows, or after ``Retry-After``).
  Also ``partial``, but no success: a poll the budget stopped before it made any request.
* ``dead_letter`` - a body that is not JSON (strictly: connector.records.parse_json), or where
  ``records`` matches no list, went to the dead-letter topic (reasons ``unparseable``,
  ``records_not_found``); the poll ends there and the next one tries that page again. Never a
  crash.
* ``failed`` - the poll received no page because every attempt failed (connection errors, 429
  or 5xx until the retries or the budget ran out, a too-long ``Retry-After``), or any other error
  (a 4xx other than 429, a publish or checkpoint failure): logged at WARNING with the reason,
  the position of the first page not read is kept when the checkpoint can still be written.
* ``lost_race`` - another replica wrote the checkpoint first (HTTP 412): this one re-reads it
  and yields; what it published in between is a duplicate, absorbed downstream.
* ``stopped`` - SIGTERM: the position reached is checkpointed.

Health (:meth:`Poller.health`, ``/healthz``): ``last_success_at`` moves only on a success
(``complete``, or ``partial`` after receiving a page). ``/healthz`` answers 503, with the reason,
after :data:`FAILED_POLLS_UNHEALTHY` ``failed`` polls in a row, or when no poll has succeeded for
:meth:`Poller.stale_after` (3 poll intervals + 5 minutes, counted from the end of a wait the API
asked for): an API that is down, refuses every request, or serves a page that never goes through
shows as an unhealthy service - Cloud Run's liveness probe restarts it, the daemon reports it.

Secrets: the credential (``HEADWATER_CONNECTOR_SECRET``) is added to each request only as it is
sent, and only to requests for the endpoint's own origin (scheme, host, port) - a next-page URL
elsewhere gets no credential. Every URL that leaves this module (the ``origin`` attribute, the
checkpoint, logs, errors) goes through :meth:`Poller.sanitize_url`, which drops the api_key query
parameter and any parameter carrying the secret (one of at least ``REDACT_MIN_CHARS`` characters:
what is redacted, from what length, is connector.logs' docstring).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus, urljoin

import httpx
import tenacity
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from connector.checkpoint import (
    BOUNDARY_MAX_FINGERPRINTS,
    CheckpointConflict,
    CheckpointStore,
    PollState,
    Resume,
    record_fingerprint,
)
from connector.logs import record_secret_forms, redact, redact_secret, secret_forms
from connector.publish import RECORDS_NOT_FOUND, UNPARSEABLE, PublishError, RecordPublisher, now_rfc3339
from connector.records import NotJson, cursor_text, dig, greater, parse_json, select_records
from connector.spec import ConnectorSpec, RestApi

log = logging.getLogger(__name__)

MAX_PAGE_BYTES = 32 * 1024 * 1024  # a page larger than this is refused (the container has ~512 MiB)
OAUTH2_EXPIRY_MARGIN_S = 60.0      # refresh a token this long before it expires (at most 10% of its life)
OAUTH2_DEFAULT_LIFETIME_S = 3600.0  # when the token endpoint omits expires_in
USER_AGENT = "headwater-connector/1"
# Pages published but not yet confirmed: Pub/Sub acknowledges them while the next pages are
# fetched (the poller waits for the acknowledgements before each checkpoint and, at the latest,
# every this many pages). Bounds the records held in memory and what a publish failure re-reads.
MAX_PAGES_IN_FLIGHT = 20
# Test-only hook (see connector/README.md): SIGKILL this process after the N-th page's records
# were acknowledged, before the checkpoint that covers them - the crash the design must survive.
CRASH_AFTER_PUBLISH_ENV = "HEADWATER_CONNECTOR_CRASH_AFTER_PUBLISH"
# /healthz answers 503 after this many failed polls in a row (each has already retried
# ``max_retries`` times with backoff): one or two are a blip, three are an outage - ~3 minutes at
# the default 60 s interval. The time rule (Poller.stale_after) catches what fails no poll: a hung
# loop, a page dead-lettered or refused with a 4xx at every poll.
FAILED_POLLS_UNHEALTHY = 3
STALE_GRACE_S = 300.0  # Poller.stale_after: 3 poll intervals + this


# --------------------------------------------------------------------------- errors


class FetchError(Exception):
    """A page could not be read. ``partial``: the poll ends as a partial success."""

    partial = False


class RetryableStatus(FetchError):
    """429 or 5xx (or a transport error): retried. ``retry_after``: seconds the server asked for."""

    partial = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExhausted(FetchError):
    partial = True

    def __init__(self, message: str, after: RetryableStatus | None = None) -> None:
        # ``after``: the failure of this page's previous attempt, when the budget ran out retrying it.
        super().__init__(f"{after}; then the {message}" if after is not None else message)


class RetryAfterTooLong(FetchError):
    partial = True

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Stopped(Exception):
    """The process is stopping (SIGTERM) while waiting to retry."""


# --------------------------------------------------------------------------- small parts


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait per a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110
    10.2.3). None when absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class RequestBudget:
    """At most ``per_minute`` requests in any moving 60-second window (``limits``' moving window).

    Used with "try" semantics: a request that finds the budget spent is not made, and the poll
    ends as a partial success; :meth:`seconds_until_available` tells the run loop when to resume.
    """

    def __init__(self, per_minute: int) -> None:
        self._item = RateLimitItemPerMinute(per_minute)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def try_acquire(self) -> bool:
        return self._limiter.hit(self._item, "requests")

    def seconds_until_available(self) -> float:
        stats = self._limiter.get_window_stats(self._item, "requests")
        return 0.0 if stats.remaining > 0 else max(0.0, stats.reset_time - time.time())


class _Backoff:
    """Tenacity wait: the server's ``Retry-After`` when it sent one, else exponential backoff with
    jitter (``initial`` * 2^n + up to ``initial`` of jitter, at most ``maximum``)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._exponential = tenacity.wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)

    def __call__(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetryableStatus) and error.retry_after is not None:
            return error.retry_after
        return self._exponential(state)


@dataclass(frozen=True)
class PageRequest:
    """One page's request, without auth: ``url`` (may carry a query) plus ``params``."""

    url: str
    params: dict[str, str] = field(default_factory=dict)

    def full_url(self) -> httpx.URL:
        url = httpx.URL(self.url)
        return url.copy_merge_params(self.params) if self.params else url


@dataclass
class PollResult:
    """What one poll did. ``records``: published; ``unchanged``: read at the cursor value and left
    out, already published (the checkpoint's boundary). ``error``: a sanitised message (never a
    secret); ``retry_after``: seconds the server asked to wait before the next request.
    ``reached``: at least one page was received from the API (2xx) - what tells a partial
    success from a poll in which every attempt failed."""

    outcome: str
    reached: bool = False
    pages: int = 0
    records: int = 0
    unchanged: int = 0
    dead_letters: int = 0
    error: str | None = None
    retry_after: float | None = None
    budget_exhausted: bool = False
    seconds: float = 0.0


# --------------------------------------------------------------------------- auth


class Authenticator:
    """Adds the credential to requests for the endpoint's origin; caches the OAuth2 token."""

    def __init__(self, spec: RestApi, secret: str | None, http: httpx.Client,
                 on_new_secret: Callable[[str], None] = lambda _: None) -> None:
        self.auth = spec.auth
        self.secret = secret
        self.http = http
        self.timeout = spec.request_timeout_seconds
        self.origin = httpx.URL(spec.endpoint).copy_with(path="/", query=None, fragment=None)
        self._on_new_secret = on_new_secret
        self._token: str | None = None
        self._token_expires = 0.0
        if self.auth.type != "none" and not secret:
            raise ValueError(f"auth type {self.auth.type} needs the connector secret")

    def same_origin(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == (self.origin.scheme, self.origin.host, self.origin.port)

    def prepare(self, url: httpx.URL) -> tuple[httpx.URL, dict[str, str]]:
        """(url, headers) to send: the credential added when ``url`` is on the endpoint's origin."""
        kind = self.auth.type
        if kind == "none" or not self.same_origin(url):
            return url, {}
        secret = self.secret or ""
        if kind == "bearer_token":
            return url, {"Authorization": f"Bearer {secret}"}
        if kind == "api_key":
            if self.auth.query:
                return url.copy_set_param(self.auth.query, secret), {}
            return url, {self.auth.header or "X-API-Key": secret}
        if kind == "basic":  # the secret is already "user:password"
            return url, {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
        return url, {"Authorization": f"Bearer {self._oauth2_token()}"}  # oauth2

    def invalidate(self) -> bool:
        """Drop a cached OAuth2 token (after a 401); True when there was one to drop."""
        had = self._token is not None
        self._token = None
        return had

    def _oauth2_token(self) -> str:
        """Client-credentials grant (RFC 6749 4.4), client authenticated with HTTP Basic."""
        if self._token is not None and time.monotonic() < self._token_expires:
            return self._token
        client_id, client_secret = (self.secret or "").split(":", 1)
        data = {"grant_type": "client_credentials"}
        if self.auth.scopes:
            data["scope"] = " ".join(self.auth.scopes)
        try:
            response = self.http.post(self.auth.token_url or "", data=data, auth=(client_id, client_secret),
                                      timeout=self.timeout)
        except httpx.TransportError as exc:
            raise RetryableStatus(f"token endpoint: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableStatus(f"token endpoint answered {response.status_code}",
                                  parse_retry_after(response.headers.get("retry-after")))
        if response.status_code != 200:
            # The body is not quoted: token endpoints echo client ids and error details.
            raise FetchError(f"token endpoint answered {response.status_code}")
        try:
            doc = response.json()
            token = doc["access_token"]
            lifetime = float(doc.get("expires_in") or OAUTH2_DEFAULT_LIFETIME_S)
        except (ValueError, KeyError, TypeError):
            raise FetchError("token endpoint answered 200 without an access_token") from None
        if not isinstance(token, str) or not token:
            raise FetchError("token endpoint answered 200 without an access_token")
        self._on_new_secret(token)
        self._token = token
        self._token_expires = time.monotonic() + lifetime - min(OAUTH2_EXPIRY_MARGIN_S, lifetime * 0.1)
        return token


# --------------------------------------------------------------------------- the poller


class Poller:
    """Polls one REST API source (``spec.connector_type == "rest_api"``).

    ``secret``: the credential (``HEADWATER_CONNECTOR_SECRET``), None for auth ``none``.
    ``publisher``: where records and dead letters go; ``store``: the checkpoint object.
    ``stop``: set on SIGTERM; a poll checkpoints and returns at the next page boundary, and retry
    waits are cut short. ``crash_after_pages``: the test-only crash hook (CRASH_AFTER_PUBLISH_ENV).
    """

    def __init__(self, spec: ConnectorSpec, secret: str | None, publisher: RecordPublisher,
                 store: CheckpointStore, *, stop: threading.Event | None = None,
                 crash_after_pages: int | None = None, http: httpx.Client | None = None) -> None:
        if spec.rest_api is None:
            raise ValueError("Poller needs a rest_api spec")
        self.spec = spec
        self.rest: RestApi = spec.rest_api
        self.publisher = publisher
        self.store = store
        self.stop = stop or threading.Event()
        self.crash_after_pages = crash_after_pages
        self.http = http or httpx.Client(
            timeout=self.rest.request_timeout_seconds, follow_redirects=True,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._secret_forms = secret_forms(secret)
        redact_secret(secret, "the connector secret (HEADWATER_CONNECTOR_SECRET)")
        self.auth = Authenticator(self.rest, secret, self.http, on_new_secret=self._new_secret)
        self.budget = RequestBudget(self.rest.max_requests_per_minute)
        self.fingerprint = _fingerprint(self.rest)
        self.boundary_limit = BOUNDARY_MAX_FINGERPRINTS  # fingerprints kept at the cursor value (checkpoint.py)
        self._token_refreshed = False  # within one page's tries: a 401 refetches the OAuth2 token once
        self._requests = 0  # requests this poll made (budget spent): 0 = the budget stopped it before any
        self._last_retryable: RetryableStatus | None = None  # the last retried failure of the page being read
        # What /healthz reports.
        self.started_at = time.time()
        self.last_success_at: float | None = None
        self.last_result: PollResult | None = None
        self.consecutive_failed_polls = 0
        self.deferred_until: float | None = None  # the end of a wait longer than the poll interval
        self.pages_published = 0
        self.records_published = 0

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Poll every ``poll_interval_seconds`` (start to start) until ``stop`` is set.

        An unfinished walk stopped by the budget resumes as soon as the budget allows; a
        ``Retry-After`` longer than the interval pushes the next poll back.
        """
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                result = self.poll_once()
            except Exception as exc:  # a bug, not an API problem: log it and keep the service up
                log.exception("poll crashed")
                result = self._finish(PollResult("failed", error=f"unexpected error: {type(exc).__name__}"), started)
            wait = self.rest.poll_interval_seconds - (time.monotonic() - started)
            if result.budget_exhausted:
                wait = max(self.budget.seconds_until_available(), 0.05)
            if result.retry_after is not None:
                wait = max(wait, result.retry_after)
            if wait > self.rest.poll_interval_seconds:  # waiting as asked is not a hang (health)
                self.deferred_until = time.time() + wait
            self.stop.wait(max(0.0, wait))

    def poll_once(self) -> PollResult:
        """One poll (see the module docstring); never raises for API, publish or storage errors."""
        started = time.monotonic()
        self._requests = 0
        try:
            generation, state = self.store.read()
        except Exception as exc:
            return self._finish(PollResult("failed", error=f"checkpoint read: {type(exc).__name__}: {exc}"), started)
        walk = _Walk.resume_or_start(state, self.fingerprint, self._first_request(state.cursor), self.boundary_limit)
        # Records already published at the cursor value, unchanged: not published again.
        already = _Boundary(state.cursor, state.boundary, self.rest.cursor_field)
        result = PollResult("complete")
        in_flight: list[_Published] = []
        last_save = time.monotonic()
        while True:
            if self.stop.is_set():
                result.outcome = "stopped"
                break
            request = walk.request
            try:
                response, body = self._fetch(request)
            except FetchError as exc:
                # Ran out (retries, budget, Retry-After) after receiving a page: progress, a partial
                # success. Ran out without receiving one: every attempt failed - a failed poll -
                # unless the budget stopped it before any request (nothing was tried: neither).
                progress_or_untried = result.reached or self._requests == 0
                result.outcome = "partial" if exc.partial and progress_or_untried else "failed"
                result.error = redact(str(exc))
                result.budget_exhausted = isinstance(exc, BudgetExhausted)
                result.retry_after = exc.retry_after if isinstance(exc, RetryAfterTooLong) else None
                break
            except Stopped:
                result.outcome = "stopped"
                break
            fetched_at = now_rfc3339()
            origin = self.sanitize_url(request.full_url())
            result.reached = True
            parsed, records, reason, detail = self._records(body)
            if records is None:
                self._dead_letter(body, reason, detail, origin, fetched_at, result)
                break
            fresh = already.without_published(records)
            in_flight.append(_Published(request, records, len(fresh), self.publisher.publish_records(
                fresh, origin=origin, fetched_at=fetched_at)))
            next_request = self._next_request(request, response, parsed, records)
            if next_request is None:
                break
            walk.request = next_request
            checkpoint_due = time.monotonic() - last_save >= self.rest.checkpoint_interval_seconds
            if (checkpoint_due or len(in_flight) >= MAX_PAGES_IN_FLIGHT) and not self._confirm(in_flight, walk, result):
                break
            if checkpoint_due:
                mid_walk = walk.state(state, finished=False)
                try:
                    generation = self._save(mid_walk, state, generation)
                except CheckpointConflict as exc:
                    return self._finish(self._yield(result, exc), started)
                except Exception as exc:
                    result.outcome, result.error = "failed", f"checkpoint write: {type(exc).__name__}: {exc}"
                    return self._finish(result, started)
                state, last_save = mid_walk, time.monotonic()
        # Whatever ended the walk, the last checkpoint comes after every acknowledgement.
        self._confirm(in_flight, walk, result)
        try:
            self._save(walk.state(state, finished=result.outcome == "complete"), state, generation)
        except CheckpointConflict as exc:
            return self._finish(self._yield(result, exc), started)
        except Exception as exc:
            result.outcome, result.error = "failed", f"checkpoint write: {type(exc).__name__}: {exc}"
        return self._finish(result, started)

    def _confirm(self, in_flight: list[_Published], walk: _Walk, result: PollResult) -> bool:
        """Wait for Pub/Sub's acknowledgement of the pages in flight, oldest first; each one
        acknowledged is read. On the first failure, that page becomes the first page not read
        (``walk.request``), the poll fails, and False is returned."""
        try:
            for page in in_flight:
                try:
                    self.publisher.wait(page.futures)
                except PublishError as exc:
                    walk.request = page.request
                    result.outcome, result.error = "failed", redact(str(exc))
                    return False
                result.pages += 1
                result.records += page.published
                result.unchanged += len(page.records) - page.published
                self.pages_published += 1
                self.records_published += page.published
                walk.page_read(page.records, self.rest.cursor_field)
                if self.crash_after_pages is not None and self.pages_published >= self.crash_after_pages:
                    log.warning("%s: SIGKILL after publishing, before the checkpoint (test-only hook)",
                                CRASH_AFTER_PUBLISH_ENV)
                    os.kill(os.getpid(), signal.SIGKILL)
            return True
        finally:
            in_flight.clear()

    def _dead_letter(self, body: bytes, reason: str, detail: str, origin: str, fetched_at: str,
                     result: PollResult) -> None:
        """Send a page without records to the dead-letter topic and wait for it; the poll ends."""
        try:
            self.publisher.wait([self.publisher.publish_dead_letter(
                body, reason=reason, detail=detail, origin=origin, fetched_at=fetched_at)])
        except PublishError as exc:
            result.outcome, result.error = "failed", redact(str(exc))
            return
        result.outcome, result.error, result.dead_letters = "dead_letter", f"{reason}: {detail}", 1
        log.warning("dead-lettered the page %s (%s); the poll ends here", origin, reason)

    def stale_after(self) -> float:
        """Seconds without a successful poll after which the poller is unhealthy."""
        return 3 * self.rest.poll_interval_seconds + STALE_GRACE_S

    def health(self, now: float | None = None) -> tuple[bool, dict[str, Any]]:
        """(healthy, report) for /healthz. Unhealthy, with ``reason``, after
        :data:`FAILED_POLLS_UNHEALTHY` failed polls in a row, or when the last successful poll -
        or the start, before the first; or the end of a wait the API asked for (Retry-After), if
        later - is more than :meth:`stale_after` ago (a hung loop, a page dead-lettered or refused
        at every poll)."""
        now = time.time() if now is None else now
        result = self.last_result
        report: dict[str, Any] = {
            "source_id": self.spec.source_id,
            "connector_type": "rest_api",
            "last_success_at": _rfc3339(self.last_success_at),
            "last_outcome": result.outcome if result else None,
            "last_error": result.error if result else None,
            "consecutive_failed_polls": self.consecutive_failed_polls,
            "pages_published": self.pages_published,
            "records_published": self.records_published,
        }
        reference = max(self.last_success_at or self.started_at, self.deferred_until or 0.0)
        if self.consecutive_failed_polls >= FAILED_POLLS_UNHEALTHY:
            report["reason"] = (f"{self.consecutive_failed_polls} failed polls in a row; the last: "
                                f"{result.error if result else 'unknown'}")
        elif now - reference > self.stale_after():
            since = _rfc3339(self.last_success_at) or f"the start ({_rfc3339(self.started_at)})"
            report["reason"] = (f"no successful poll since {since}"
                                + (f"; the last poll: {result.outcome} ({result.error})" if result else ""))
        return "reason" not in report, report

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ URLs and secrets

    def sanitize_url(self, url: httpx.URL) -> str:
        """``url`` as it may be shown or stored: no userinfo, no api_key query parameter, no
        parameter whose value holds the secret."""
        url = url.copy_with(username=None, password=None)
        drop = {self.rest.auth.query} if self.rest.auth.query else set()
        for pair in url.query.decode("ascii", "replace").split("&"):
            raw_name, _, raw_value = pair.partition("=")
            if any(form in raw_value or form in unquote_plus(raw_value) for form in self._secret_forms):
                drop.add(unquote_plus(raw_name))
        for name in drop:
            url = url.copy_remove_param(name)
        text = str(url)
        return redact(text) if self._secret_forms else text

    def _new_secret(self, value: str) -> None:
        """A derived credential (an OAuth2 access token) joins the secrets kept out of everything."""
        redact_secret(value, "the OAuth2 access token")
        self._secret_forms |= secret_forms(value)
        self.publisher.scrub_also(record_secret_forms(value))

    # ------------------------------------------------------------------ requests

    def _first_request(self, cursor: Any) -> PageRequest:
        params = dict(self.rest.params)
        if self.rest.cursor_param is not None and cursor is not None:
            params[self.rest.cursor_param] = cursor_text(cursor)
        if self.rest.pagination.type == "page":
            params[self.rest.pagination.param or "page"] = str(self.rest.pagination.start)
        return PageRequest(self.rest.endpoint, params)

    def _next_request(self, request: PageRequest, response: httpx.Response, body: Any,
                      records: list[Any]) -> PageRequest | None:
        """The request of the page after ``request``, or None when it was the last."""
        pagination = self.rest.pagination
        current = request.full_url()
        if pagination.type in ("next_url", "link_header"):
            if pagination.type == "next_url":
                link = dig(body, pagination.path or "")
            else:
                link = response.links.get("next", {}).get("url")
            if not isinstance(link, str) or not link:
                return None
            # A relative link is relative to the page it came from; a credential the API echoed
            # into it is removed here and added back when the request is sent.
            target = httpx.URL(urljoin(str(current), link))
            if self.rest.auth.query:
                target = target.copy_remove_param(self.rest.auth.query)
            if target == current:
                return None  # the API points at the page just read: stop rather than loop
            return PageRequest(str(target))
        if pagination.type == "cursor":
            token = dig(body, pagination.path or "")
            param = pagination.param or "cursor"
            if token is None or token == "" or not records or cursor_text(token) == request.params.get(param):
                return None
            return PageRequest(request.url, {**request.params, param: cursor_text(token)})
        if pagination.type == "page":
            if not records:
                return None  # the last page is the first without records
            param = pagination.param or "page"
            return PageRequest(request.url, {**request.params, param: str(int(request.params[param]) + 1)})
        return None

    def _fetch(self, request: PageRequest) -> tuple[httpx.Response, bytes]:
        """GET one page with retries; (response, body bytes). Raises FetchError or Stopped."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.rest.max_retries + 1),
            wait=_Backoff(self.rest.retry_initial_seconds, self.rest.retry_max_seconds),
            retry=tenacity.retry_if_exception_type(RetryableStatus),
            sleep=self._sleep,
            reraise=True,
        )
        self._token_refreshed = False
        self._last_retryable = None
        try:
            return retrying(self._attempt, request)
        except RetryableStatus as exc:
            raise RetryableStatus(f"{exc} (after {self.rest.max_retries} retries)", exc.retry_after) from None

    def _attempt(self, request: PageRequest) -> tuple[httpx.Response, bytes]:
        """One try: spend a request of the budget, authenticate (an OAuth2 token fetch is part of
        the try), GET. A wait the server asks for beyond ``retry_max_seconds`` is not slept
        through: RetryAfterTooLong ends the poll and the run loop waits instead."""
        if not self.budget.try_acquire():
            raise BudgetExhausted(f"request budget of {self.rest.max_requests_per_minute}/min exhausted",
                                  after=self._last_retryable)
        self._requests += 1
        try:
            url, headers = self.auth.prepare(request.full_url())
            return self._get(url, headers)
        except RetryableStatus as exc:
            if exc.retry_after is not None and exc.retry_after > self.rest.retry_max_seconds:
                raise RetryAfterTooLong(f"{exc} with Retry-After {exc.retry_after:.0f} s", exc.retry_after) from None
            self._last_retryable = exc
            log.info("%s, retrying", exc)
            raise

    def _get(self, url: httpx.URL, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
        shown = self.sanitize_url(url)
        try:
            with self.http.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    raise RetryableStatus(f"GET {shown}: {status}", parse_retry_after(response.headers.get("retry-after")))
                if status == 401 and self.rest.auth.type == "oauth2" and not self._token_refreshed \
                        and self.auth.invalidate():
                    self._token_refreshed = True  # the cached token may have been revoked: fetch a new one, once
                    raise RetryableStatus(f"GET {shown}: 401 with a cached token", 0.0)
                if not 200 <= status < 300:
                    raise FetchError(f"GET {shown}: {status}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > MAX_PAGE_BYTES:
                    raise FetchError(f"GET {shown}: the page is larger than {MAX_PAGE_BYTES} bytes")
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_PAGE_BYTES:
                        raise FetchError(f"GET {shown}: the page is larger than {MAX_PAGE_BYTES} bytes")
                    chunks.append(chunk)
                log.debug("GET %s: %d, %d bytes", shown, status, size)
                return response, b"".join(chunks)
        except httpx.TransportError as exc:  # connect/read timeouts, refused or reset connections
            raise RetryableStatus(f"GET {shown}: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:  # too many redirects, an undecodable body: retrying will not help
            raise FetchError(f"GET {shown}: {type(exc).__name__}") from None

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped()

    def _records(self, body: bytes) -> tuple[Any, list[Any] | None, str, str]:
        """(parsed body, its records or None, why None: the reason and its detail)."""
        try:
            parsed = parse_json(body)  # strictly: NaN, Infinity... are not JSON (connector.records)
        except NotJson as exc:
            return None, None, UNPARSEABLE, f"the body is not JSON: {exc}"
        return (parsed, select_records(parsed, self.rest.records), RECORDS_NOT_FOUND,
                f"records {self.rest.records!r} matched no list in the body")

    # ------------------------------------------------------------------ checkpoint

    def _save(self, new: PollState, old: PollState, generation: int) -> int:
        """Write ``new`` over ``generation`` unless it equals ``old`` (nothing to record)."""
        if new == old and generation:
            return generation
        return self.store.write(new, self.spec.source_id, generation)

    def _yield(self, result: PollResult, exc: CheckpointConflict) -> PollResult:
        """Another replica advanced the checkpoint: re-read it and leave the walk to its holder
        (the next poll starts from what it wrote)."""
        try:
            generation, _ = self.store.read()
            now_at = f"now at generation {generation}"
        except Exception as read_error:
            now_at = f"re-read failed: {type(read_error).__name__}"
        log.warning("lost the checkpoint race (%s; %s): yielding", exc, now_at)
        result.outcome, result.error = "lost_race", str(exc)
        return result

    def _finish(self, result: PollResult, started: float) -> PollResult:
        """Record the poll's end for /healthz and log it: INFO for a success (or a stop), WARNING
        with the reason otherwise - the error is sanitised (no credential, no secret-bearing URL)."""
        result.seconds = round(time.monotonic() - started, 3)
        failed_before = self.consecutive_failed_polls
        succeeded = result.outcome == "complete" or (result.outcome == "partial" and result.reached)
        if succeeded:
            self.last_success_at = time.time()  # only a poll that reached the API
            self.consecutive_failed_polls = 0
        elif result.outcome == "failed":
            self.consecutive_failed_polls += 1
        self.last_result = result
        level = logging.INFO if succeeded or result.outcome in ("partial", "stopped") else logging.WARNING
        in_a_row = self.consecutive_failed_polls
        log.log(level, "poll %s: %d pages, %d records in %.2f s%s%s%s", result.outcome, result.pages,
                result.records, result.seconds,
                f", {result.unchanged} unchanged at the cursor not published again" if result.unchanged else "",
                f" ({result.error})" if result.error else "",
                f"; {in_a_row} failed polls in a row" if result.outcome == "failed" and in_a_row > 1 else "")
        if result.outcome == "failed" and in_a_row == FAILED_POLLS_UNHEALTHY:
            log.error("%d failed polls in a row: /healthz answers 503 until a poll succeeds", in_a_row)
        elif succeeded and failed_before >= FAILED_POLLS_UNHEALTHY:
            log.info("the API answers again after %d failed polls", failed_before)
        return result


@dataclass
class _Published:
    """A page whose records were handed to the publisher, not yet known to be acknowledged:
    ``records`` all of the page's, ``published`` how many of them went out (the others were
    unchanged at the cursor value)."""

    request: PageRequest
    records: list[Any]
    published: int
    futures: list[Future]


def same_cursor(a: Any, b: Any) -> bool:
    """Whether two cursor values are the same value, as :func:`connector.records.greater` orders
    them (numbers numerically, anything else by its string form); None and objects are no value."""
    if a is None or b is None or isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    if _is_number(a) and _is_number(b):
        return a == b
    return str(a) == str(b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Boundary:
    """The checkpoint's boundary as one poll uses it: the fingerprints of the records published
    at the cursor value ``at``."""

    at: Any
    fingerprints: frozenset[str]
    cursor_field: str | None

    def without_published(self, records: list[Any]) -> list[Any]:
        """``records`` but those at the cursor value whose fingerprint is remembered."""
        if not self.fingerprints or self.cursor_field is None:
            return records
        field_ = self.cursor_field
        return [record for record in records
                if not (isinstance(record, dict) and same_cursor(dig(record, field_), self.at)
                        and record_fingerprint(record) in self.fingerprints)]


@dataclass
class _Walk:
    """Progress through the pages of one walk: the next request, the greatest cursor seen and the
    fingerprints of the records read at it (at most ``limit``, the smallest: see checkpoint.py)."""

    request: PageRequest
    max_seen: Any = None
    pages_read: int = 0
    walk_of: str = ""
    at_max: set[str] = field(default_factory=set)
    limit: int = BOUNDARY_MAX_FINGERPRINTS
    warned: bool = False  # about the bound, at the current max_seen

    @classmethod
    def resume_or_start(cls, state: PollState, fingerprint: str, first: PageRequest,
                        limit: int = BOUNDARY_MAX_FINGERPRINTS) -> _Walk:
        resume = state.resume
        if resume is not None and resume.walk_of == fingerprint:
            return cls(PageRequest(resume.url, dict(resume.params)), resume.max_seen, resume.pages_read, fingerprint,
                       set(resume.boundary), limit)
        if resume is not None:
            log.info("the checkpoint's unfinished walk was started with other settings: starting afresh")
        return cls(first, walk_of=fingerprint, limit=limit)

    def page_read(self, records: list[Any], cursor_field: str | None) -> None:
        """A page's records (published or unchanged) were all acknowledged: they count."""
        self.pages_read += 1
        if cursor_field is None:
            return
        valued = [(record, dig(record, cursor_field)) for record in records if isinstance(record, dict)]
        page_max = None
        for _, value in valued:
            page_max = greater(page_max, value)
        new_max = greater(self.max_seen, page_max)
        if page_max is None or not same_cursor(new_max, page_max):
            return  # nothing on this page reaches the walk's greatest value
        if not same_cursor(new_max, self.max_seen):  # a greater value: a new boundary
            self.max_seen, self.at_max, self.warned = new_max, set(), False
        # Only the records at the greatest value are fingerprinted: usually a few a page.
        self.at_max.update(record_fingerprint(record) for record, value in valued if same_cursor(value, new_max))
        if len(self.at_max) > 2 * self.limit:  # amortised trim; the smallest are kept (order-independent)
            self.boundary()  # warns, once a walk
            self.at_max = set(sorted(self.at_max)[:self.limit])

    def boundary(self) -> frozenset[str]:
        if len(self.at_max) > self.limit and not self.warned:
            self.warned = True
            log.warning("more than %d records share the cursor value %r: the checkpoint remembers %d of them; "
                        "the others are published again by every poll while the cursor stays there",
                        self.limit, self.max_seen, self.limit)
        return frozenset(sorted(self.at_max)[:self.limit])

    def state(self, previous: PollState, finished: bool) -> PollState:
        """The checkpoint after this walk's acknowledged pages. Unfinished: the cursor and its
        boundary stay (they decide what the rest of the walk leaves out) and the walk's own go into
        ``resume``. Finished: the cursor advances to the greatest value seen and the boundary is
        the fingerprints read at it; a walk that read nothing at the cursor keeps the boundary."""
        if finished:
            cursor = greater(previous.cursor, self.max_seen)
            if same_cursor(cursor, self.max_seen):
                return PollState(cursor=cursor, boundary=self.boundary())
            return PollState(cursor=cursor, boundary=previous.boundary)
        return PollState(cursor=previous.cursor, boundary=previous.boundary,
                         resume=Resume(url=self.request.url, params=dict(self.request.params),
                                       max_seen=self.max_seen, pages_read=self.pages_read, walk_of=self.walk_of,
                                       boundary=self.boundary()))


def _fingerprint(spec: RestApi) -> str:
    """What a stored resume position depends on: where and how pages are requested and read."""
    relevant = {"endpoint": spec.endpoint, "params": dict(spec.params), "records": spec.records,
                "pagination": [spec.pagination.type, spec.pagination.path, spec.pagination.param,
                               spec.pagination.start],
                "cursor": [spec.cursor_field, spec.cursor_param]}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
