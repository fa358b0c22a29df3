"""The daemon's health checks: on every drift pass, health beside sync (`reconciler.health`).

The drift pass has just observed live state and planned the served revision against it; the
check reuses that plan (the sync axis), asks the providers about health (their optional
`providers.base.HealthReporter` ability: one list or a few metadata reads per kind), judges it
against each source's ``monitoring:`` settings, and then:

* keeps the result as the health document served in ``/status`` (``health``), with each
  source's last change (newest commit touching its files, at the served revision) and last
  apply (this daemon's last sync that applied one of its changes);
* sets the per-source Prometheus gauges (`reconciler.daemon.metrics`, labels bounded by the
  sources: never a resource name or an error text);
* alerts on transitions of its conditions (`reconciler.health.Condition`): ``sla_breached`` /
  ``sla_recovered``, ``job_failed`` / ``job_recovered``, ``dead_letters_over_budget`` /
  ``dead_letters_recovered``, deduplicated through the same alert memory as drift alerts
  (`reconciler.daemon.alerts`, shared beside the lease): a condition alerts once per platform
  when it appears, not again after a restart while it lasts, and once when it clears. A
  condition that could not be judged this time (dead letters right after a restart have no
  growth yet; a job whose provider did not answer) is neither raised nor cleared.

The previous check is kept for the dead letters' growth between checks. ``clock`` is the time
the checks judge freshness at (unit tests move it forward instead of waiting for an SLA). The
first check also runs right after the first sync that converges, so ``/status`` has health
before the first drift pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.health import DEAD_LETTERS, JOB, SLA, Health, PlatformHealth, iso
from reconciler.resources import SOURCE_KEY


class HealthMonitor:
    def __init__(self, metrics: Any, alerts: Any, clock: Callable[[], float] = time.time,
                 redact: Callable[[Any], Any] = lambda value: value) -> None:
        """``redact``: applied to what alerts carry (errors, log tails), as to /status and the logs."""
        self.metrics = metrics
        self.alerts = alerts
        self.clock = clock
        self.redact = redact
        self.last: PlatformHealth | None = None
        self.last_error: str | None = None
        self._applies: dict[str, dict[str, Any]] = {}  # source -> {revision, at}
        self._lock = threading.Lock()

    def check(self, state: Any, engine: Any, plan: Any, log: Any) -> PlatformHealth | None:
        """One health check of the served ``state`` (module docstring); never raises."""
        from reconciler import status

        try:
            health, _ = status.check(state, engine, plan=plan, previous=self.last, revision=state.revision,
                                     now=self.clock())
        except Exception as exc:  # noqa: BLE001 - a failed check leaves the last one standing
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            log.error("health.check_failed", error=self.last_error)
            return None
        with self._lock:
            health = health.with_last_applies({sid: dict(a) for sid, a in self._applies.items()})
            self.last, self.last_error = health, None
        self.metrics.set_source_health(health.sources)
        self._write_freshness(state, engine, health, log)
        unhealthy = {s.source_id: str(s.health) for s in health.sources if s.health != Health.HEALTHY}
        log.info("health.checked", health=str(health.health), unhealthy=unhealthy)
        conditions, undecided = conditions_of(health)
        conditions = {key: (kind, self.redact(summary), self.redact(dict(details)))
                      for key, (kind, summary, details) in conditions.items()}
        self.alerts.health(conditions, undecided, state.revision)
        return health

    @staticmethod
    def _write_freshness(state: Any, engine: Any, health: PlatformHealth, log: Any) -> None:
        """Each source's freshness to Cloud Monitoring, where its alert policy reads it
        (``custom.googleapis.com/headwater/source_freshness_seconds``, docs/monitoring.md); a
        provider without that ability (the local stand-in) is skipped. A failed write is logged: the
        policy counts missing data as a breach, so a daemon that stops writing still pages."""
        ages = {s.source_id: s.freshness.age_seconds for s in health.sources if s.freshness.age_seconds is not None}
        writers = {id(p): p for p in getattr(engine, "providers", {}).values() if hasattr(p, "write_freshness")}
        for writer in writers.values():
            try:
                writer.write_freshness(state.platform.environment, ages)
            except Exception as exc:  # noqa: BLE001 - the health document and alerts stand without it
                log.error("health.freshness_write_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    def record_apply(self, plan: Any, result: Any, revision: str | None, at: float | None = None) -> None:
        """A sync applied ``plan``: each source with a change applied (``result``'s outcomes that
        succeeded) was last applied now, at ``revision``."""
        when = iso(at if at is not None else time.time())
        applied = {o.address for o in result.outcomes if o.status == "ok"}
        with self._lock:
            for change in plan.actionable:
                resource = change.desired or change.live
                source = resource.labels.get(SOURCE_KEY) if resource is not None else None
                if source and change.address in applied:
                    self._applies[source] = {"revision": revision, "at": when}

    def document(self) -> dict[str, Any] | None:
        """The health document (`reconciler.health.PlatformHealth.to_dict`) of the last check, with
        ``error`` when the latest check failed; None before the first check."""
        with self._lock:
            if self.last is None:
                return {"error": self.last_error} if self.last_error else None
            document = self.last.to_dict()
            document["error"] = self.last_error
            return document


def conditions_of(health: PlatformHealth) -> tuple[dict[str, tuple[str, str, Mapping[str, Any]]], set[str]]:
    """The conditions to alert on (key -> (kind, summary, details)), and the keys not judged now."""
    conditions: dict[str, tuple[str, str, Mapping[str, Any]]] = {}
    undecided: set[str] = set()
    for source in health.sources:
        sid = source.source_id
        for condition in source.conditions:
            details: dict[str, Any] = {"source": sid, "subject": condition.subject, "health": str(source.health)}
            if condition.kind == JOB:
                resource = next((r for r in source.resources if r.address == condition.subject), None)
                if resource is not None:
                    details.update(error=resource.error, reason=resource.reason, log_tail=list(resource.log_tail))
            elif condition.kind == SLA:
                details["freshness"] = source.freshness.to_dict()
            elif condition.kind == DEAD_LETTERS:
                details["dead_letters"] = source.dead_letters.to_dict()
            conditions[condition.key] = (condition.kind, condition.summary, details)
        if source.freshness.breached is None:
            undecided.add(f"{SLA}:{sid}")
        if source.dead_letters.over_budget is None:
            undecided.add(f"{DEAD_LETTERS}:{sid}")
        for resource in source.resources:
            if resource.health == Health.UNKNOWN:
                undecided.add(f"{JOB}:{resource.address}")
    return conditions, undecided
