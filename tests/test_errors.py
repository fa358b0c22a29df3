"""providers.errors: the one place where Google API errors become ours, and the retry loop."""

from __future__ import annotations

import pytest
import requests
from google.api_core import exceptions as gexc
from google.rpc import error_details_pb2

from providers.errors import (
    AlreadyExists,
    NotFound,
    PermanentError,
    ServiceDisabled,
    TemporaryError,
    call,
    translate,
)

CASES = [
    ("429-too-many-requests", gexc.TooManyRequests("slow down"), TemporaryError),
    ("500-internal", gexc.InternalServerError("oops"), TemporaryError),
    ("503-unavailable", gexc.ServiceUnavailable("down"), TemporaryError),
    ("deadline-exceeded", gexc.DeadlineExceeded("late"), TemporaryError),
    ("aborted-is-temporary-not-conflict", gexc.Aborted("try again"), TemporaryError),
    ("connection-error", requests.ConnectionError("refused"), TemporaryError),
    ("403-rate-limit", gexc.Forbidden("quota", errors=[{"reason": "rateLimitExceeded"}]), TemporaryError),
    ("403-permission", gexc.Forbidden("no", errors=[{"reason": "accessDenied"}]), PermanentError),
    ("403-api-not-enabled", gexc.PermissionDenied(
        "API has not been used", error_info=error_details_pb2.ErrorInfo(reason="SERVICE_DISABLED")), ServiceDisabled),
    ("403-other-error-info", gexc.PermissionDenied(
        "denied", error_info=error_details_pb2.ErrorInfo(reason="IAM_PERMISSION_DENIED")), PermanentError),
    ("409-already-exists", gexc.AlreadyExists("dup"), AlreadyExists),
    ("409-conflict", gexc.Conflict("dup"), AlreadyExists),
    ("404-not-found", gexc.NotFound("gone"), NotFound),
    ("400-bad-request", gexc.BadRequest("bad"), PermanentError),
    ("unknown-exception", ValueError("bug"), PermanentError),
]


@pytest.mark.parametrize(("exc", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_translate(exc, expected):
    error = translate(exc, "pubsub.create_topic orders")
    assert type(error) is expected
    assert str(error).startswith("pubsub.create_topic orders: ")


def test_temporary_errors_are_retried_with_growing_jittered_backoff():
    attempts, sleeps = [], []

    def flaky():
        attempts.append(1)
        if len(attempts) < 4:
            raise gexc.ServiceUnavailable("down")
        return "ok"

    assert call(flaky, "x", attempts=5, initial_delay=1, sleep=sleeps.append) == "ok"
    assert len(attempts) == 4 and len(sleeps) == 3
    assert all(0 <= s <= cap for s, cap in zip(sleeps, [1, 2, 4], strict=True))


def test_temporary_errors_give_up_after_the_last_attempt():
    sleeps = []
    with pytest.raises(TemporaryError):
        call(lambda: (_ for _ in ()).throw(gexc.InternalServerError("x")), "x", attempts=3, sleep=sleeps.append)
    assert len(sleeps) == 2


def test_permanent_errors_are_not_retried():
    attempts = []

    def denied():
        attempts.append(1)
        raise gexc.PermissionDenied("no")

    with pytest.raises(PermanentError):
        call(denied, "x", sleep=lambda s: None)
    assert attempts == [1]


def test_long_messages_are_shortened():
    error = translate(gexc.BadRequest("x" * 1000), "what")
    assert len(str(error)) < 320


# --------------------------------------------------------------------------- deadlines, Retry-After, budgets, circuits

import random  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from google.protobuf import duration_pb2  # noqa: E402

from providers import errors  # noqa: E402
from providers.errors import CircuitOpen, RetryPolicy, Unreachable  # noqa: E402


@pytest.fixture(autouse=True)
def default_policy():
    errors.configure(RetryPolicy(), {})
    yield
    errors.configure(RetryPolicy(), {})


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def always(exc_factory):
    tries = []

    def fn():
        tries.append(1)
        raise exc_factory()

    return fn, tries


@pytest.mark.parametrize(("exc", "seconds"), [
    pytest.param(gexc.TooManyRequests("slow down", response=Response({"Retry-After": "7"})), 7.0, id="http-seconds"),
    pytest.param(gexc.ServiceUnavailable("busy", response=Response({"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})),
                 None, id="http-date-far-away"),
    pytest.param(gexc.TooManyRequests("quota", details=[error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=3, nanos=500_000_000))]), 3.5, id="grpc-retry-info"),
])
def test_retry_after_is_read_from_http_headers_and_grpc_details(exc, seconds):
    found = errors.retry_after(exc)
    if seconds is None:
        assert found > 365 * 86400
    else:
        assert found == seconds
    assert translate(exc, "x").retry_after == pytest.approx(found, abs=5)


def test_retry_after_is_honoured():
    fake = FakeTime()
    answers = iter([gexc.TooManyRequests("slow down", response=Response({"Retry-After": "7"})), None])

    def fn():
        error = next(answers)
        if error:
            raise error
        return "ok"

    assert call(fn, "bigquery.get x", sleep=fake.sleep, clock=fake.clock) == "ok"
    assert fake.sleeps == [7.0], "waited what the server asked (more than the 0.5 s backoff)"


def test_a_retry_after_past_the_deadline_gives_up_at_once_and_says_why():
    fake = FakeTime()
    fn, tries = always(lambda: gexc.ServiceUnavailable("maintenance", response=Response({"Retry-After": "3600"})))
    with pytest.raises(TemporaryError, match=r"the server asked to retry after 3600 s, past the deadline"):
        call(fn, "pubsub.create_topic t", sleep=fake.sleep, clock=fake.clock)
    assert len(tries) == 1 and fake.sleeps == []


@pytest.mark.parametrize(("exc", "deadline"), [
    pytest.param(lambda: gexc.ServiceUnavailable("The service is currently unavailable."), 120.0, id="503-call-deadline"),
    pytest.param(lambda: gexc.TooManyRequests("Quota exceeded"), 120.0, id="429-call-deadline"),
    pytest.param(lambda: requests.ConnectionError("Failed to establish a new connection: [Errno 111] Connection refused"),
                 10.0, id="connection-refused-short-deadline"),
    pytest.param(lambda: gexc.ServiceUnavailable("failed to connect to all addresses; last error: UNKNOWN: "
                                                 "ipv4:127.0.0.1:9: Connection refused"), 10.0, id="grpc-unreachable"),
])
def test_temporary_errors_are_retried_until_the_deadline_not_a_count(exc, deadline):
    fake = FakeTime()
    fn, tries = always(exc)
    with pytest.raises(TemporaryError, match=r"gave up after \d+ attempts in \d+\.\d s") as raised:
        call(fn, "pubsub.list_topics", sleep=fake.sleep, clock=fake.clock)
    spent = fake.now - 1000.0
    assert spent <= deadline, "never past the deadline"
    assert spent >= deadline - 20.0, "but used it (the last backoff is at most 20 s)"
    if deadline > 10:
        assert len(tries) > 5, "more than the five attempts that used to give up after 7.5 s"
    assert isinstance(raised.value, Unreachable) == (deadline == 10.0)


def test_an_applys_deadline_bounds_every_call_made_for_it():
    fake = FakeTime()
    fn, _tries = always(lambda: gexc.ServiceUnavailable("down"))
    with errors.deadline(fake.clock() + 5.0), pytest.raises(TemporaryError):
        call(fn, "storage.patch b", sleep=fake.sleep, clock=fake.clock)
    assert fake.now - 1000.0 <= 5.0


def test_a_bounded_provider_puts_its_calls_under_the_budget():
    fake = FakeTime()
    seen = []

    class Inner:
        kinds = ("x",)

        def create(self, resource):
            seen.append(errors._deadline.get())
            return call(lambda: "ok", "memory.create x", sleep=fake.sleep, clock=fake.clock)

    budget = errors.Budget(60)
    provider = errors.bounded(Inner(), budget)
    assert provider.kinds == ("x",) and not hasattr(provider, "read"), "abilities pass through, absent stay absent"
    provider.create("r")
    budget.start()
    provider.create("r")
    budget.stop()
    assert seen[0] is None and seen[1] == pytest.approx(time.monotonic() + 60, abs=5)


def test_an_open_circuit_holds_calls_back_then_a_trial_call_closes_it():
    errors.configure(RetryPolicy(breaker_failures=3, breaker_reset=0.3, initial_delay=0.01, max_delay=0.05), {})
    states = []
    errors.circuit_listeners.append(lambda service, state: states.append((service, state)))
    answers = [gexc.ServiceUnavailable("down")] * 3
    requests_sent = []

    def fn():
        requests_sent.append(time.monotonic())
        if answers:
            raise answers.pop()
        return "ok"

    try:
        started = time.monotonic()
        assert call(fn, "dataflow.get_job j") == "ok"
    finally:
        errors.circuit_listeners.clear()
    assert len(requests_sent) == 4, "no request while the circuit was open"
    assert requests_sent[3] - requests_sent[2] >= 0.25, "the trial call came after the reset time"
    assert states == [("dataflow", "open"), ("dataflow", "half-open"), ("dataflow", "closed")]
    assert time.monotonic() - started < 5


def test_the_circuit_counts_only_temporary_failures():
    errors.configure(RetryPolicy(breaker_failures=2), {})
    for _ in range(5):
        with pytest.raises(NotFound):
            call(lambda: (_ for _ in ()).throw(gexc.NotFound("gone")), "run.get_service s")
    assert errors.breaker("run").current_state == "closed"


def test_open_circuit_errors_are_retried_not_raised():
    assert issubclass(CircuitOpen, TemporaryError)


def test_the_rate_budget_spaces_requests_out():
    errors.configure(rates={"scheduler": "20/second"})
    started = time.monotonic()
    for _ in range(30):
        call(lambda: None, "scheduler.get_job j")
    assert time.monotonic() - started >= 0.9, "30 requests at 20 per second take more than one window"


@pytest.mark.parametrize(("text", "message"), [
    pytest.param("pubsub=fast", "'pubsub=fast' is not service=N/second", id="not-a-rate"),
    pytest.param("Pub Sub=1/second", "is not a service name", id="bad-service"),
])
def test_malformed_rates_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        errors.configure_from_env({"HEADWATER_API_RATES": text})


def test_deadlines_and_rates_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    policy = errors.configure_from_env({"HEADWATER_CALL_DEADLINE": "30", "HEADWATER_APPLY_DEADLINE": "600",
                                        "HEADWATER_API_RATES": "pubsub=5/second"})
    assert (policy.call_deadline, policy.apply_deadline) == (30.0, 600.0)
    assert str(errors._rate("pubsub")) == "5 per 1 second"
    with pytest.raises(ValueError, match="HEADWATER_CALL_DEADLINE='soon' is not a number of seconds"):
        errors.configure_from_env({"HEADWATER_CALL_DEADLINE": "soon"})
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")
    assert errors._rate("pubsub") is None, "an emulator has no quota"


def test_api_messages_never_carry_a_credential_whole():
    error = translate(gexc.BadRequest("invalid token ya29.a0AfH6SMBx3kQ9z_secretsecret in request"), "x")
    assert "ya29.a0AfH6SMBx3kQ9z_secretsecret" not in str(error) and "ya29.…" in str(error)


# --------------------------------------------------------------------------- a 503/429 storm, end to end


class Stormy:
    """A provider whose every request fails with 503 or 429 (sometimes with Retry-After) at
    ``rate``, sent through `call` like the real providers' requests."""

    def __init__(self, inner, rate: float, seed: int) -> None:
        self.inner = inner
        self.kinds = inner.kinds
        self.immutable_fields = inner.immutable_fields
        self.rate = rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}

    def _request(self, what: str, fn):
        def attempt():
            with self.lock:
                self.attempts[what] = self.attempts.get(what, 0) + 1
                fail = self.random.random() < self.rate
                kind = self.random.choice(["503", "429", "429-retry-after"])
            if fail:
                if kind == "503":
                    raise gexc.ServiceUnavailable("The service is currently unavailable.")
                if kind == "429":
                    raise gexc.TooManyRequests("Quota exceeded")
                raise gexc.TooManyRequests("Quota exceeded", response=Response({"Retry-After": "0"}))
            return fn()

        return call(attempt, what)

    def observe(self, kind):
        return self._request(f"memory.list {kind}", lambda: self.inner.observe(kind))

    def create(self, resource):
        return self._request(f"memory.create {resource.address}", lambda: self.inner.create(resource))

    def update(self, resource, fields):
        return self._request(f"memory.update {resource.address}", lambda: self.inner.update(resource, fields))

    def delete(self, resource):
        return self._request(f"memory.delete {resource.address}", lambda: self.inner.delete(resource))


@pytest.mark.parametrize("rate", [0.3, 0.6], ids=["30-percent", "60-percent"])
def test_a_503_429_storm_slows_an_apply_down_instead_of_failing_it(rate):
    from helpers import EXAMPLE

    from providers.memory import MemoryProvider
    from reconciler.engine import Engine, plan_options
    from reconciler.load import load_repo

    # Fast backoff and a large budget so the test takes a second; the same code path as the defaults.
    errors.configure(RetryPolicy(initial_delay=0.002, max_delay=0.02, breaker_reset=0.05), {"memory": "2000/second"})
    state = load_repo(EXAMPLE)
    stormy = Stormy(MemoryProvider(), rate, seed=int(rate * 100))
    engine = Engine([stormy])
    plan = engine.plan(state, plan_options(state))
    result = engine.apply(plan)
    assert result.ok, [o.error for o in result.outcomes if o.error]
    assert not engine.plan(state, plan_options(state)).has_changes, "converged"
    assert sum(stormy.attempts.values()) > len(stormy.attempts), "the storm was real: requests were retried"


def test_a_request_that_fails_eight_times_in_a_row_still_succeeds():
    """Five attempts (7.5 s of backoff) used to be the end; now only the deadline is."""
    fake = FakeTime()
    answers = [gexc.ServiceUnavailable("down")] * 4 + [gexc.TooManyRequests("slow down")] * 4

    def fn():
        if answers:
            raise answers.pop()
        return "ok"

    assert call(fn, "bigquery.insert_table t", sleep=fake.sleep, clock=fake.clock) == "ok"
    assert len(fake.sleeps) == 8 and fake.now - 1000.0 < 120
