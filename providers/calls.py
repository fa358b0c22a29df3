"""Counting a provider's API calls: the optional `ApiCallCounter` ability, shared.

Every provider sends each request through `CallCounter.rpc`, which runs it through
`providers.errors.call` (error translation and retries) and counts one call per attempt, keyed
``service.method``. Benchmarks and the daemon's metrics read `snapshot()`; list calls count each
page they fetch with `count`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from providers.errors import call

T = TypeVar("T")


class CallCounter:
    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()

    def count(self, method: str) -> None:
        with self._lock:
            self._calls[f"{self.service}.{method}"] += 1

    def rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        """One request through `call` (translation + retries), counted once per attempt.

        ``target`` (a resource name, never a request body) makes error messages actionable.
        """

        def attempt() -> T:
            self.count(method)
            return fn()

        return call(attempt, f"{self.service}.{method} {target}")

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)
