"""providers.errors: requests to one API go out concurrently while its circuit is closed (issue 14).

pybreaker's ``CircuitBreaker.call`` holds the breaker's lock for the whole call, which made every
request to one API wait for the one before it; `providers.errors.call` now runs a closed
circuit's requests outside that lock and records only their outcome under it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from google.api_core import exceptions as gexc

from providers import errors
from providers.errors import RetryPolicy, TemporaryError, call


@pytest.fixture(autouse=True)
def _defaults():
    errors.configure(RetryPolicy(), {})
    yield
    errors.configure(RetryPolicy(), {})


def test_requests_to_one_api_are_in_flight_at_the_same_time():
    # Each request waits until all four are in flight: one at a time, the barrier would break.
    barrier = threading.Barrier(4, timeout=10)

    def request(i: int) -> int:
        return call(lambda: (barrier.wait(), i)[1], f"bigquery.get_table t{i}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sorted(pool.map(request, range(4))) == [0, 1, 2, 3]
    assert not barrier.broken


def test_concurrent_failures_still_open_the_circuit_and_successes_reset_the_count():
    errors.configure(RetryPolicy(breaker_failures=4, breaker_reset=60.0), {})
    barrier = threading.Barrier(4, timeout=10)

    def failing(i: int) -> None:
        def fn():
            barrier.wait()
            raise gexc.ServiceUnavailable("down")

        with pytest.raises(TemporaryError):
            call(fn, f"pubsub.list_topics p{i}", attempts=1)

    call(lambda: "ok", "pubsub.get_topic t")
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(failing, range(4)))
    assert errors.breaker("pubsub").current_state == "open", "four failures in flight together count four"

    errors.configure(RetryPolicy(breaker_failures=2), {})
    for _ in range(3):  # fail, succeed, fail: never two in a row
        with pytest.raises(TemporaryError):
            call(lambda: (_ for _ in ()).throw(gexc.ServiceUnavailable("down")), "storage.get_bucket b", attempts=1)
        assert call(lambda: "ok", "storage.get_bucket b") == "ok"
    assert errors.breaker("storage").current_state == "closed"
