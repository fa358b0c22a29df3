"""``headwater status``: one line per source - sync, health, freshness against its SLA, dead
letters, the last change - and why a source is not healthy.

`check` is what the CLI and the daemon share: plan (for the sync axis), ask the providers about
health (`reconciler.health.observe_health`), judge (`reconciler.health.assess`), and name each
source's last change (the newest commit touching its files, `reconciler.blame.last_change`).

Exit codes: 0 every source is Healthy or Progressing; 2 one is Degraded, Missing or Unknown
(or a platform resource is); 1 the check itself failed (invalid desired state, an API error).
A single run has no earlier observation, so dead letters show their backlog and judge nothing
(their growth against the error budget is the daemon's, which checks on an interval).
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.health import (
    SEVERITY,
    Health,
    PlatformHealth,
    assess,
    duration,
    observe_health,
    sync_states,
)

EXIT_HEALTHY, EXIT_ERROR, EXIT_UNHEALTHY = 0, 1, 2
WORST_OK = Health.PROGRESSING


def check(state: Any, engine: Any, *, plan: Any = None, previous: PlatformHealth | None = None,
          revision: str | None = None, now: float | None = None) -> tuple[PlatformHealth, Any]:
    """``(health, plan)`` of ``state`` now. ``revision``: blame the files at that commit (the daemon's
    served one) rather than as they are in the work tree."""
    from reconciler.blame import last_change
    from reconciler.compile import compile_resources
    from reconciler.engine import plan_options

    plan = plan if plan is not None else engine.plan(state, plan_options(state))
    resources = [r for r in compile_resources(state) if not r.external]
    observations, errors = observe_health(engine.providers, resources)
    health = assess(state, resources, sync_states(plan), observations, errors=errors, previous=previous, now=now)
    changes = {s.source_id: last_change(state.root, s.files, revision) for s in health.sources}
    return health.with_last_changes(changes), plan


def exit_code(health: PlatformHealth) -> int:
    return EXIT_HEALTHY if SEVERITY[health.health] <= SEVERITY[WORST_OK] else EXIT_UNHEALTHY


def render(health: PlatformHealth, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(health.to_dict(), indent=2, default=str) + "\n"
    return render_text(health)


def render_text(health: PlatformHealth) -> str:
    short = (health.revision or "no revision")[:12]
    unhealthy = [s for s in health.sources if s.health not in (Health.HEALTHY, Health.PROGRESSING)]
    lines = [f"headwater status of {health.project} at revision {short} (checked {_iso(health.checked_at)}): "
             f"{health.health}, {len(unhealthy)} of {len(health.sources)} sources not healthy", ""]
    header = ("SOURCE", "SYNC", "HEALTH", "FRESHNESS", "DEAD LETTERS", "LAST CHANGE")
    rows = [header]
    for source in health.sources:
        change = source.last_change or {}
        last = (f"{change.get('commit', '')[:12]} {change.get('author', '')} {str(change.get('date', ''))[:10]}"
                if change else "-")
        name = source.source_id + (" (suspended)" if source.suspended else "")
        rows.append((name, source.sync, str(source.health), freshness_cell(source), dead_letters_cell(source), last))
    bad_platform = [r for r in health.platform_resources if r.health != Health.HEALTHY]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    details = []
    for source in health.sources:
        if source.health in (Health.HEALTHY,) or not source.reasons:
            continue
        details.append(f"{source.source_id}: {source.health}")
        details += [f"  - {reason}" for reason in source.reasons]
    # database_cdc (issue 10): every stream's replication, healthy or not - a slot's WAL grows silently.
    streams = [(s.source_id, r) for s in health.sources for r in s.resources
               if r.kind == "datastream_stream" and r.reason]
    if streams:
        details.append("replication:")
        details += [f"  - {sid}: {r.name}: {r.health}: {r.reason}" for sid, r in streams]
    if bad_platform:
        details.append("platform:")
        details += [f"  - {r.address}: {r.health}" + (f": {r.reason}" if r.reason else "") for r in bad_platform]
    if details:
        lines += ["", *details]
    return "\n".join(lines) + "\n"


def freshness_cell(source: Any) -> str:
    f = source.freshness
    sla = f"SLA {duration(f.sla_seconds)}" if f.sla_seconds is not None else "no SLA"
    if f.age_seconds is None:
        return f"? ({sla})"
    age = f"{duration(f.age_seconds)} ago" if f.last_record_at is not None else f"none yet ({duration(f.age_seconds)})"
    mark = " BREACHED" if f.breached else ""
    return f"{age} / {sla}{mark}"


def dead_letters_cell(source: Any) -> str:
    d = source.dead_letters
    if d.backlog is None:
        return "?"
    text = str(d.backlog)
    if d.growth is not None:
        text += f" (+{d.growth}"
        if d.error_rate_percent is not None:
            text += f", {d.error_rate_percent:.1f}% of {d.budget_percent:g}%"
        text += ")"
    if d.over_budget:
        text += " OVER BUDGET"
    return text


def _iso(timestamp: float) -> str:
    from reconciler.health import iso

    return iso(timestamp) or ""
