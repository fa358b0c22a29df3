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
