"""Per-client rate limits (the seed's "1000 req/hour per client").

``limits``' ``MovingWindowRateLimiter``: at most ``requests`` in any window of ``per_seconds``
ending now — exactly what "N requests per hour" says. (``limits`` ships fixed-window,
moving-window and sliding-window-counter strategies, no token bucket: a token bucket of
capacity N refilled at N per hour lets up to 2N through in an hour-long window after an idle
one; the moving window never does, and says exactly when the next request is allowed, which is
the ``Retry-After`` a 429 carries.)

In memory, per instance: README "Rate limits" says why (no store that survives restarts is part
of the platform; a client's worst case is ``max_instances`` × its limit, and every instance
restart forgets the window).

Besides the request limit, failed client authentications at the token endpoint are counted per
client id (``AUTH_FAILURES`` in ``AUTH_FAILURE_WINDOW_S``): past it, token requests for that id
answer 429 until the window frees up — an online guess of a client secret stays slow even though
secrets are long random strings anyway.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from serving.api.spec import RateLimit

AUTH_FAILURES = 10
AUTH_FAILURE_WINDOW_S = 15 * 60


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the window has room again (0 when it has now)

    def headers(self) -> dict[str, str]:
        headers = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                   "RateLimit-Reset": str(self.reset_seconds)}
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_seconds))
        return headers


class ClientLimiter:
    def __init__(self) -> None:
        self._storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._auth_failures = RateLimitItemPerSecond(AUTH_FAILURES, AUTH_FAILURE_WINDOW_S)

    def hit(self, client_id: str, limit: RateLimit) -> Decision:
        """Count one request of ``client_id``: allowed, or refused with when to come back."""
        item = RateLimitItemPerSecond(limit.requests, limit.per_seconds)
        allowed = self._limiter.hit(item, "requests", client_id)
        stats = self._limiter.get_window_stats(item, "requests", client_id)
        reset = max(0, math.ceil(stats.reset_time - time.time())) if stats.remaining == 0 else 0
        return Decision(allowed, limit.requests, stats.remaining, reset)

    def auth_blocked(self, client_id: str) -> int:
        """Seconds until ``client_id`` may try to authenticate again (0: it may now)."""
        if self._limiter.test(self._auth_failures, "auth-failures", client_id):
            return 0
        stats = self._limiter.get_window_stats(self._auth_failures, "auth-failures", client_id)
        return max(1, math.ceil(stats.reset_time - time.time()))

    def auth_failed(self, client_id: str) -> None:
        self._limiter.hit(self._auth_failures, "auth-failures", client_id)
