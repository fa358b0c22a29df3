"""Health beside sync: whether the platform *works*, not only whether it matches the repo.

Argo CD's two axes are the model. *Sync* says whether a declared resource matches its desired
state (``Synced`` / ``OutOfSync``); *health* says whether it does its job:

===============  ==========================================================================
``Healthy``      it exists and its checks pass (a resource without a health check of its own
                 - a topic, a bucket - is Healthy when it exists, as in Argo CD)
``Progressing``  on its way to Healthy: a job pending or starting, a connector revision rolling
                 out, a batch job before its first run
``Degraded``     it exists and fails: a job failed or crashed (or crash-loops), a connector's
                 polls fail, the data is older than its SLA, dead letters are over budget
``Missing``      declared, and not there
``Unknown``      headwater could not tell (the health observation failed, or an SLA is set
                 and freshness cannot be observed)
===============  ==========================================================================

A source's health is the worst of its resources' health and of its data's (severity
`SEVERITY`: Healthy < Progressing < Unknown < Missing < Degraded; unlike Argo CD, where
Unknown is the worst, a known failure outranks an unknown one, so a Degraded source always
shows its reason). The platform's is the worst of its sources'.

Where each verdict comes from
-----------------------------
Providers observe (`providers.base.HealthReporter`, an optional ability: a provider without it
contributes nothing, and its resources are Healthy when they exist). Each returns, per
declared resource of its kinds, an `Observation`: a verdict or none, a reason, the last error,
a log tail, and *signals* - named measurements this module turns into verdicts:

==============================  ===========================================================
signal                          observed on, by
==============================  ===========================================================
``last_record_at``              the Silver table: when the newest record was ingested (unix
                                time; None when it holds none yet), from metadata that costs
                                no scan (`providers.bigquery_health`)
``freshness_basis``             how ``last_record_at`` was read, in words
``created_at``                  the Silver table's creation: the reference before a first
                                record arrives
``rows``                        the Bronze ``<id>_raw`` table: every record received
``backlog``                     ``<id>-dlq-hold``: dead letters held (`providers.pubsub_health`)
``backlog_basis``               how ``backlog`` was counted
``oldest_unacked_age_seconds``  ``<id>-ingest``: age of the oldest message the ingestion job
                                has not acknowledged (Cloud Monitoring; not on the emulator)
``last_success_at``             a connector: its last successful poll (its ``/healthz``)
==============================  ===========================================================

The source's data, judged here (`assess`), against ``monitoring:`` in the source's file:

* **freshness**: age = now - ``last_record_at`` (or the table's creation, while no record has
  arrived). Over ``sla_minutes``: Degraded, "SLA breached". The ingest subscription's oldest
  unacked message older than the SLA breaches it too (data arrived and waits). With an SLA but
  no way to read the age: Unknown. Without an SLA, freshness is shown and judges nothing.
* **dead letters**: the backlog of ``<id>-dlq-hold``, and between two observations its growth
  against the records received (Bronze rows): error rate = growth / max(received, growth).
  Above ``error_budget_percent`` (default 5): Degraded, "dead letters over budget". A single
  observation (``headwater status``, a daemon's first check) shows the backlog and judges
  nothing.

The conditions a verdict raises (`Condition`: an SLA breached, a job or connector failed, dead
letters over budget) are what the daemon alerts on, on transitions only
(`reconciler.daemon.health_loop`). `PlatformHealth.to_dict` is the JSON document of all of it
(``headwater status --format json`` and the daemon's ``/status`` ``health`` key; its shape is
documented in docs/daemon.md, "The health document").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.resources import SOURCE_KEY, Kind, Resource

FORMAT_VERSION = "1"
LOG_TAIL_LINES = 20
LINE_CHARS = 300
ERROR_CHARS = 1000


class Health(StrEnum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    MISSING = "Missing"
    UNKNOWN = "Unknown"


SEVERITY = {Health.HEALTHY: 0, Health.PROGRESSING: 1, Health.UNKNOWN: 2, Health.MISSING: 3, Health.DEGRADED: 4}
SYNCED, OUT_OF_SYNC = "Synced", "OutOfSync"
# Kinds whose failure is a "job failed" condition (a job, or a connector: what moves data).
RUNTIME_KINDS = frozenset({Kind.DATAFLOW_JOB, Kind.CLOUD_RUN_SERVICE})

SLA, JOB, DEAD_LETTERS = "sla", "job", "dead_letters"


def worst(states: Iterable[Health]) -> Health:
    return max(states, key=SEVERITY.__getitem__, default=Health.HEALTHY)


def bounded(text: str | None, limit: int = ERROR_CHARS) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Observation:
    """What a provider observed of one declared resource (`providers.base.HealthReporter`).

    ``state`` None: no verdict of its own (a table only reports signals; the resource is then
    Healthy if it exists). ``error``: the last error message, as the service gave it (bounded).
    ``log_tail``: the last lines of its log, when it has one here (a local job or connector)."""

    state: Health | None = None
    reason: str | None = None
    error: str | None = None
    log_tail: tuple[str, ...] = ()
    signals: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", bounded(self.reason))
        object.__setattr__(self, "error", bounded(self.error))
        object.__setattr__(self, "log_tail", tuple(line[:LINE_CHARS] for line in self.log_tail[-LOG_TAIL_LINES:]))


# ---------------------------------------------------------------------- observing


def observe_health(providers: Mapping[Kind, Any], resources: Sequence[Resource]
                   ) -> tuple[dict[str, Observation], dict[str, str]]:
    """Ask each provider about its declared resources, once per provider: ``(observations by
    address, errors by address)``. A provider that fails leaves its resources Unknown, with the
    error; one without the ability leaves them to their sync state."""
    from providers.base import health_with

    groups: dict[int, tuple[Any, list[Resource]]] = {}
    for resource in resources:
        provider = providers.get(resource.kind)
        if provider is None or resource.external:
            continue
        groups.setdefault(id(provider), (provider, []))[1].append(resource)
    observations: dict[str, Observation] = {}
    errors: dict[str, str] = {}
    for provider, wanted in groups.values():
        try:
            observations.update(health_with(provider, wanted))
        except Exception as exc:  # noqa: BLE001 - one service failing leaves the rest observed
            message = bounded(f"could not observe health: {type(exc).__name__}: {exc}", 300)
            errors.update({r.address: message for r in wanted})
    return observations, errors


# ---------------------------------------------------------------------- the verdicts


@dataclass(frozen=True)
class ResourceHealth:
    address: str
    kind: str
    name: str
    sync: str  # Synced | OutOfSync
    sync_detail: str  # in_sync | drifted | missing | blocked | unmanaged
    health: Health
    reason: str | None = None
    error: str | None = None
    log_tail: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "kind": self.kind, "name": self.name, "sync": self.sync,
                "sync_detail": self.sync_detail, "health": str(self.health), "reason": self.reason,
                "error": self.error, "log_tail": list(self.log_tail)}


@dataclass(frozen=True)
class Freshness:
    last_record_at: float | None = None
    age_seconds: float | None = None
    sla_seconds: int | None = None
    breached: bool | None = None
    basis: str | None = None
    oldest_unacked_age_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"last_record_at": iso(self.last_record_at), "age_seconds": _round(self.age_seconds),
                "sla_seconds": self.sla_seconds, "breached": self.breached, "basis": self.basis,
                "oldest_unacked_age_seconds": _round(self.oldest_unacked_age_seconds)}


@dataclass(frozen=True)
class DeadLetters:
    backlog: int | None = None
    basis: str | None = None
    growth: int | None = None  # since the previous observation
    received: int | None = None  # records received (Bronze rows) since the previous observation
    error_rate_percent: float | None = None
    budget_percent: float = 5.0
    over_budget: bool | None = None
    rows: int | None = None  # Bronze rows now (kept for the next observation's growth)
    interval_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"backlog": self.backlog, "basis": self.basis, "growth": self.growth, "received": self.received,
                "error_rate_percent": _round(self.error_rate_percent, 2), "budget_percent": self.budget_percent,
                "over_budget": self.over_budget, "interval_seconds": _round(self.interval_seconds)}


@dataclass(frozen=True)
class Condition:
    """Something wrong that the daemon alerts on when it appears and when it clears."""

    kind: str  # SLA | JOB | DEAD_LETTERS
    source: str
    subject: str  # what it is about: the source id, or a job's / connector's address
    summary: str  # one line for people

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "subject": self.subject, "summary": self.summary}


@dataclass(frozen=True)
class SourceHealth:
    source_id: str
    pattern: str
    display_name: str | None
    suspended: bool
    sync: str
    health: Health
    reasons: tuple[str, ...]
    freshness: Freshness
    dead_letters: DeadLetters
    resources: tuple[ResourceHealth, ...]
    conditions: tuple[Condition, ...]
    files: tuple[str, ...] = ()  # the desired-state files of the source (connector, schema)
    last_change: Mapping[str, Any] | None = None  # the newest commit touching them
    last_apply: Mapping[str, Any] | None = None  # the daemon's last apply of its changes

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id, "display_name": self.display_name, "pattern": self.pattern,
            "suspended": self.suspended, "sync": self.sync, "health": str(self.health),
            "reasons": list(self.reasons), "freshness": self.freshness.to_dict(),
            "dead_letters": self.dead_letters.to_dict(), "conditions": [c.to_dict() for c in self.conditions],
            "files": list(self.files), "last_change": dict(self.last_change) if self.last_change else None,
            "last_apply": dict(self.last_apply) if self.last_apply else None,
            "resources": [r.to_dict() for r in self.resources],
        }


@dataclass(frozen=True)
class PlatformHealth:
    checked_at: float
    revision: str | None
    project: str
    region: str
    environment: str
    health: Health
    sources: tuple[SourceHealth, ...]
    platform_resources: tuple[ResourceHealth, ...] = ()

    @property
    def conditions(self) -> list[Condition]:
        return [c for s in self.sources for c in s.conditions]

    def source(self, source_id: str) -> SourceHealth | None:
        return next((s for s in self.sources if s.source_id == source_id), None)

    def counts(self) -> dict[str, int]:
        counts = {str(h): 0 for h in Health}
        for source in self.sources:
            counts[str(source.health)] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "checked_at": iso(self.checked_at),
            "revision": self.revision,
            "project": self.project,
            "region": self.region,
            "environment": self.environment,
            "health": str(self.health),
            "counts": self.counts(),
            "sources": [s.to_dict() for s in self.sources],
            "platform_resources": [r.to_dict() for r in self.platform_resources],
        }

    def with_last_changes(self, changes: Mapping[str, Mapping[str, Any] | None]) -> PlatformHealth:
        return dataclasses.replace(self, sources=tuple(
            dataclasses.replace(s, last_change=changes.get(s.source_id)) for s in self.sources))

    def with_last_applies(self, applies: Mapping[str, Mapping[str, Any]]) -> PlatformHealth:
        return dataclasses.replace(self, sources=tuple(
            dataclasses.replace(s, last_apply=applies.get(s.source_id)) for s in self.sources))


def sync_states(plan: Any) -> dict[str, str]:
    """Per declared address, its state in ``plan``: in_sync, drifted, missing, blocked, unmanaged."""
    from reconciler.plan import Action

    states: dict[str, str] = {}
    for change in plan.changes:
        if change.desired is None:
            continue
        if change.blocked and change.action not in (Action.CREATE, Action.READ, Action.IMPORT):
            states[change.address] = "blocked"
        elif change.action == Action.NOOP:
            states[change.address] = "in_sync"
        elif change.action in (Action.CREATE, Action.READ):
            states[change.address] = "missing"
        elif change.action == Action.IMPORT:
            states[change.address] = "unmanaged"
        else:
            states[change.address] = "drifted"
    return states


def resource_health(resource: Resource, sync_detail: str, observation: Observation | None,
                    error: str | None = None) -> ResourceHealth:
    """One resource's verdict: a failure its provider saw (Degraded) wins over Missing - a crashed
    local job is not running, so the plan sees it missing, and its crash is the news; then
    Missing; then the provider's verdict; else Healthy (it exists)."""
    sync = SYNCED if sync_detail == "in_sync" else OUT_OF_SYNC
    obs = observation or Observation()
    if error is not None:
        state, reason = Health.UNKNOWN, error
    elif obs.state == Health.DEGRADED:
        state, reason = Health.DEGRADED, obs.reason
    elif sync_detail == "missing":
        state, reason = Health.MISSING, obs.reason or "declared, does not exist"
    elif obs.state is not None:
        state, reason = obs.state, obs.reason
    else:
        state, reason = Health.HEALTHY, obs.reason
    return ResourceHealth(resource.address, str(resource.kind), resource.name, sync, sync_detail, state, reason,
                          obs.error, obs.log_tail)


def assess(state: Any, resources: Sequence[Resource], sync: Mapping[str, str],
           observations: Mapping[str, Observation], *, errors: Mapping[str, str] | None = None,
           previous: PlatformHealth | None = None, now: float | None = None) -> PlatformHealth:
    """The platform's health (pure): ``state`` the `reconciler.load.DesiredState`, ``resources``
    its compiled resources, ``sync`` from `sync_states`, ``observations`` (and ``errors``) from
    `observe_health`; ``previous`` the last assessment, for the dead letters' growth."""
    from reconciler.compile import zone_names

    now = time.time() if now is None else now
    errors = errors or {}
    names = zone_names(state.platform)
    by_source: dict[str | None, list[ResourceHealth]] = {}
    for resource in resources:
        if resource.external:
            continue
        verdict = resource_health(resource, sync.get(resource.address, "in_sync"),
                                  observations.get(resource.address), errors.get(resource.address))
        by_source.setdefault(resource.labels.get(SOURCE_KEY), []).append(verdict)
    sources = []
    for source in state.sources:
        sid = source.source_id
        connector = source.connector
        mine = tuple(sorted(by_source.get(sid, []), key=lambda r: r.address))
        tables = [r for r in mine if r.kind == Kind.BIGQUERY_TABLE and r.address in observations]
        silver = [observations[r.address] for r in tables if r.name.split(".", 1)[0] == names.datasets["silver"]]
        bronze = [observations[r.address] for r in tables if r.name.split(".", 1)[0] == names.datasets["bronze"]]
        ingest = observations.get(f"{Kind.PUBSUB_SUBSCRIPTION}.{sid}-ingest")
        hold = observations.get(f"{Kind.PUBSUB_SUBSCRIPTION}.{sid}-dlq-hold")
        monitoring = connector.monitoring
        freshness = judge_freshness(silver, ingest, monitoring.sla_minutes, now)
        before = previous.source(sid) if previous is not None else None
        dead = judge_dead_letters(hold, bronze, monitoring.error_budget_percent,
                                  before.dead_letters if before else None,
                                  now - previous.checked_at if previous is not None else None)
        conditions: list[Condition] = []
        reasons: list[str] = []
        states = [r.health for r in mine]
        for r in mine:
            if r.health != Health.HEALTHY:
                reasons.append(f"{r.address}: {r.health}" + (f": {r.reason}" if r.reason else ""))
            if r.health == Health.DEGRADED and r.kind in RUNTIME_KINDS:
                what = "job" if r.kind == Kind.DATAFLOW_JOB else "connector"
                conditions.append(Condition(JOB, sid, r.address, f"{what} {r.name} failed: {r.reason or 'Degraded'}"))
        if freshness.breached:
            states.append(Health.DEGRADED)
            summary = freshness_summary(freshness)
            reasons.insert(0, f"SLA breached: {summary}")
            conditions.append(Condition(SLA, sid, sid, f"{sid}: freshness SLA breached: {summary}"))
        elif monitoring.sla_minutes is not None and freshness.age_seconds is None:
            states.append(Health.UNKNOWN)
            reasons.append(f"freshness cannot be observed ({freshness.basis or 'no signal'}); SLA "
                           f"{monitoring.sla_minutes} min not checked")
        if dead.over_budget:
            states.append(Health.DEGRADED)
            summary = dead_letters_summary(dead)
            reasons.append(f"dead letters over budget: {summary}")
            conditions.append(Condition(DEAD_LETTERS, sid, sid, f"{sid}: dead letters over budget: {summary}"))
        sync_state = SYNCED if all(r.sync == SYNCED for r in mine) else OUT_OF_SYNC
        sources.append(SourceHealth(
            source_id=sid, pattern=connector.ingestion.pattern, display_name=connector.display_name,
            suspended=bool(connector.suspend), sync=sync_state, health=worst(states), reasons=tuple(reasons),
            freshness=freshness, dead_letters=dead, resources=mine, conditions=tuple(conditions),
            files=tuple(f for f in dict.fromkeys([source.connector_file, source.schema_file]) if f),
            last_change=before.last_change if before else None, last_apply=before.last_apply if before else None))
    platform_resources = tuple(sorted(by_source.get(None, []), key=lambda r: r.address))
    overall = worst([s.health for s in sources] + [r.health for r in platform_resources])
    return PlatformHealth(now, state.revision, state.platform.project, state.platform.region,
                          state.platform.environment, overall, tuple(sources), platform_resources)


def judge_freshness(silver: Observation | Sequence[Observation] | None, ingest: Observation | None,
                    sla_minutes: int | None, now: float) -> Freshness:
    """``silver``: the source's Silver table(s); with several (a ``database_cdc`` source's), the
    newest record of any of them counts (data arrives while any table receives it)."""
    tables = [silver] if isinstance(silver, Observation) else list(silver or ())
    newest = [t.signals["last_record_at"] for t in tables if t.signals.get("last_record_at") is not None]
    created = [t.signals["created_at"] for t in tables if t.signals.get("created_at") is not None]
    bases = [t.signals["freshness_basis"] for t in tables if t.signals.get("freshness_basis")]
    signals = {"freshness_basis": bases[0]} if bases else {}
    last = max(newest) if newest else None
    reference = last if last is not None else (min(created) if created else None)
    age = max(0.0, now - reference) if reference is not None else None
    unacked = (ingest.signals if ingest is not None else {}).get("oldest_unacked_age_seconds")
    sla = sla_minutes * 60 if sla_minutes is not None else None
    breached = None
    if sla is not None and (age is not None or unacked is not None):
        breached = (age is not None and age > sla) or (unacked is not None and unacked > sla)
    basis = signals.get("freshness_basis")
    if last is None and reference is not None:
        basis = f"no record yet: age since the Silver table was created ({basis})" if basis else \
            "no record yet: age since the Silver table was created"
    return Freshness(last, age, sla, breached, basis, unacked)


def judge_dead_letters(hold: Observation | None, bronze: Observation | Sequence[Observation] | None, budget: float,
                       before: DeadLetters | None, interval: float | None) -> DeadLetters:
    """``bronze``: the source's Bronze table(s), whose rows are the records received."""
    backlog = (hold.signals if hold is not None else {}).get("backlog")
    basis = (hold.signals if hold is not None else {}).get("backlog_basis")
    tables = [bronze] if isinstance(bronze, Observation) else list(bronze or ())
    counts = [t.signals["rows"] for t in tables if t.signals.get("rows") is not None]
    rows = sum(counts) if counts else None
    growth = received = rate = over = None
    if backlog is not None and before is not None and before.backlog is not None:
        growth = max(0, backlog - before.backlog)
        if rows is not None and before.rows is not None:
            received = max(0, rows - before.rows)
        denominator = max(received or 0, growth)
        rate = 100.0 * growth / denominator if denominator else 0.0
        over = rate > budget
    return DeadLetters(backlog, basis, growth, received, rate, budget, over, rows, interval)


def freshness_summary(f: Freshness) -> str:
    parts = []
    if f.age_seconds is not None:
        what = "newest record" if f.last_record_at is not None else "no record since the table was created,"
        parts.append(f"{what} {duration(f.age_seconds)} old")
    if f.oldest_unacked_age_seconds is not None and f.sla_seconds is not None \
            and f.oldest_unacked_age_seconds > f.sla_seconds:
        parts.append(f"oldest unacked ingest message {duration(f.oldest_unacked_age_seconds)} old")
    sla = f" > SLA {duration(f.sla_seconds)}" if f.sla_seconds is not None else ""
    return ", ".join(parts) + sla


def dead_letters_summary(d: DeadLetters) -> str:
    text = f"{d.growth} new dead letters"
    if d.received is not None:
        text += f" for {d.received} records received"
    if d.error_rate_percent is not None:
        text += f" ({d.error_rate_percent:.1f}% > budget {d.budget_percent:g}%)"
    if d.interval_seconds is not None:
        text += f" in {duration(d.interval_seconds)}"
    return text + f"; {d.backlog} held in the dead-letter subscription"


# ---------------------------------------------------------------------- plumbing


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
