"""Health of connectors on Cloud Run (`providers.base.HealthReporter` for
`providers.cloudrun.CloudRunProvider`).

ONE ``list_services`` for the region (the same call observe makes), then per service:

* its readiness, from Cloud Run's own conditions: the terminal condition succeeded - Healthy;
  reconciling or pending (a revision rolling out) - Progressing; failed - Degraded with Cloud
  Run's reason (`providers.cloudrun.failure_message`; when the latest revision failed and an
  older one still serves, the reason says which);
* for a poller (``connector_type: rest_api``), its last successful poll: ``GET <uri>/healthz``
  with an ID token for the service's URL (`google.oauth2.id_token`; the daemon's service
  account on Cloud Run mints one, user credentials cannot and the poll is then reported as not
  observable). The connector answers 503 when its last successful poll is older than three poll
  intervals plus five minutes (connector/README.md): Degraded with its last outcome and error;
  ``last_success_at`` is the signal. One request per poller per check, eight at a time, each
  within `HEALTHZ_TIMEOUT_S`.
  The caller needs ``run.routes.invoke`` on a private service.

Verified here against the client library's types through REST transport (tests/fake_cloudrun.py)
and a local ``/healthz``; verified only on the real service: the conditions a failing revision
shows, and the ID token's audience Cloud Run accepts (the service URL).
"""

from __future__ import annotations

import concurrent.futures
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from google.cloud import run_v2

from reconciler.health import Health, Observation
from reconciler.resources import Kind, Resource

ConditionState = run_v2.Condition.State
HEALTHZ_TIMEOUT_S = 5.0
PARALLEL_HEALTHZ = 8


def default_token(audience: str) -> str:
    """An ID token for ``audience`` from Application Default Credentials (a service account)."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    return google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)


def fetch_healthz(uri: str, token: Callable[[str], str] = default_token) -> tuple[int | None, dict[str, Any], str | None]:
    """``(status, report, problem)`` of ``GET <uri>/healthz``; status None with the problem when it
    could not be asked."""
    try:
        bearer = token(uri)
    except Exception as exc:  # noqa: BLE001 - no ID token here: the poll is not observable
        return None, {}, f"no ID token for {uri} ({type(exc).__name__})"
    request = urllib.request.Request(uri.rstrip("/") + "/healthz", headers={"Authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(request, timeout=HEALTHZ_TIMEOUT_S) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return None, {}, f"{uri}/healthz did not answer ({type(getattr(exc, 'reason', exc)).__name__})"
    try:
        report = json.loads(body)
    except ValueError:
        report = {}
    return status, report if isinstance(report, dict) else {}, None


def service_health(provider: Any, resources: Sequence[Resource],
                   token: Callable[[str], str] | None = None) -> dict[str, Observation]:
    from providers.cloudrun import _short, failure_message, rollout_failed
    from providers.localrunner_health import parse_time

    declared = {r.name: r for r in resources if r.kind == Kind.CLOUD_RUN_SERVICE}
    if not declared:
        return {}
    token = token or getattr(provider, "id_token", None) or default_token
    services = {_short(s.name): s for s in provider._list()}
    # The pollers' /healthz, eight at a time (each bounded by HEALTHZ_TIMEOUT_S).
    pollers = {name: services[name].uri for name, r in declared.items()
               if name in services and services[name].uri
               and (r.spec.get("connector") or {}).get("connector_type") == "rest_api"}
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_HEALTHZ) as pool:
        answers = dict(zip(pollers, pool.map(lambda uri: fetch_healthz(uri, token), pollers.values()), strict=True))
    observations: dict[str, Observation] = {}
    for name, resource in declared.items():
        service = services.get(name)
        if service is None:
            continue  # the plan says missing
        condition = service.terminal_condition.state
        if condition == ConditionState.CONDITION_FAILED or rollout_failed(service):
            reason = failure_message(service) or "Cloud Run gave no reason"
            if service.latest_ready_revision and service.latest_created_revision != service.latest_ready_revision:
                reason = (f"revision {_short(service.latest_created_revision)} failed ({reason}); "
                          f"{_short(service.latest_ready_revision)} still serves")
            observations[resource.address] = Observation(Health.DEGRADED, reason, error=failure_message(service))
            continue
        if service.reconciling or condition in (ConditionState.CONDITION_RECONCILING, ConditionState.CONDITION_PENDING):
            observations[resource.address] = Observation(
                Health.PROGRESSING, f"revision {_short(service.latest_created_revision) or '?'} is rolling out")
            continue
        ready = f"revision {_short(service.latest_ready_revision)} ready"
        if name not in answers:  # a webhook receiver: readiness is its health
            observations[resource.address] = Observation(Health.HEALTHY, ready)
            continue
        status, report, problem = answers[name]
        last = report.get("last_success_at")
        signals = {"last_success_at": parse_time(last)} if last else {}
        if status is None:
            observations[resource.address] = Observation(Health.HEALTHY, f"{ready}; last poll not observable: {problem}")
        elif status == 200:
            observations[resource.address] = Observation(
                Health.HEALTHY, f"{ready}; last successful poll {last or 'none yet (starting)'}", signals=signals)
        else:
            error = report.get("last_error")
            reason = (f"{ready}, but /healthz answers {status}: last successful poll {last or 'never'}, last outcome "
                      f"{report.get('last_outcome')}" + (f": {error}" if error else ""))
            observations[resource.address] = Observation(Health.DEGRADED, reason, error=error, signals=signals)
    return observations
