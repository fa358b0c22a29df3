"""What the status page shows, computed from a status document (pure; no HTML here).

The input is the document of the daemon's ``/status`` (`reconciler.daemon.service.Daemon.status`,
already redacted), or the same shape built by ``headwater ui`` (`reconciler.ui.local`): its
``health`` key is the health document (`reconciler.health.PlatformHealth.to_dict`), ``drift``
the drifted resources with the commit that set each desired value, ``pending`` and ``blocked``
the last plan's changes.

`overview` filters, searches, sorts and cuts one page of the sources: only that page's rows are
formatted, so the work per request grows with the page size (at most `MAX_PER_PAGE`), not with
the number of sources beyond one pass of filtering. `source_page` gathers one source's facts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from reconciler.health import Health, duration

PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_QUERY_CHARS = 200
HEALTH_STATES = tuple(str(h) for h in Health)  # Healthy, Progressing, Degraded, Missing, Unknown
SEVERITY = {"Healthy": 0, "Progressing": 1, "Unknown": 2, "Missing": 3, "Degraded": 4}
SYNC_STATES = ("Synced", "OutOfSync")
SORTS = ("health", "id")
UNHEALTHY = "unhealthy"  # the health filter's "anything but Healthy"


@dataclass(frozen=True)
class Query:
    """The overview's parameters, read leniently: anything unknown falls back to the default."""

    q: str = ""
    health: str = ""  # "", a Health value, or UNHEALTHY
    sync: str = ""  # "", Synced, OutOfSync
    sort: str = "health"
    page: int = 1
    per: int = PER_PAGE

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Query:
        def number(name: str, default: int, low: int, high: int) -> int:
            raw = params.get(name, "")
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
                return default
            return max(low, min(high, int(raw)))

        health = params.get("health", "")
        sync = params.get("sync", "")
        sort = params.get("sort", "health")
        return cls(
            q=" ".join(params.get("q", "").split())[:MAX_QUERY_CHARS],
            health=health if health in (*HEALTH_STATES, UNHEALTHY) else "",
            sync=sync if sync in SYNC_STATES else "",
            sort=sort if sort in SORTS else "health",
            page=number("page", 1, 1, 10**9),
            per=number("per", PER_PAGE, 1, MAX_PER_PAGE),
        )

    def link(self, **changes: Any) -> str:
        """The overview's URL with these parameters changed (defaults left out)."""
        values = {"q": self.q, "health": self.health, "sync": self.sync, "sort": self.sort,
                  "page": self.page, "per": self.per, **changes}
        defaults = {"q": "", "health": "", "sync": "", "sort": "health", "page": 1, "per": PER_PAGE}
        kept = {k: v for k, v in values.items() if v != defaults[k]}
        return "?" + urlencode(kept) if kept else "?"


def overview(status: Mapping[str, Any], query: Query) -> dict[str, Any]:
    """The overview page: platform summary, counts, and one page of filtered source rows."""
    health = status.get("health") or {}
    sources: Sequence[Mapping[str, Any]] = health.get("sources") or []
    needle = query.q.lower()
    matched = []
    for source in sources:
        state = source.get("health")
        if query.health == UNHEALTHY:
            if state == "Healthy":
                continue
        elif query.health and state != query.health:
            continue
        if query.sync and source.get("sync") != query.sync:
            continue
        if needle and not _matches(source, needle):
            continue
        matched.append(source)
    if query.sort == "id":
        matched.sort(key=lambda s: str(s.get("source_id")))
    else:  # worst first, then by id
        matched.sort(key=lambda s: (-SEVERITY.get(str(s.get("health")), 2), str(s.get("source_id"))))
    pages = max(1, math.ceil(len(matched) / query.per))
    page = min(query.page, pages)
    first = (page - 1) * query.per
    rows = [row(source) for source in matched[first:first + query.per]]
    counts = {state: 0 for state in HEALTH_STATES}
    for source in sources:
        counts[str(source.get("health"))] = counts.get(str(source.get("health")), 0) + 1
    return {
        "platform": platform(status),
        "counts": counts,
        "total": len(sources),
        "matched": len(matched),
        "rows": rows,
        "page": page,
        "pages": pages,
        "first": first + 1 if rows else 0,
        "last": first + len(rows),
        "prev": query.link(page=page - 1) if page > 1 else None,
        "next": query.link(page=page + 1) if page < pages else None,
        "query": query,
        "health_states": HEALTH_STATES,
        "sync_states": SYNC_STATES,
        "unhealthy_platform": [r for r in health.get("platform_resources") or [] if r.get("health") != "Healthy"],
    }


def _matches(source: Mapping[str, Any], needle: str) -> bool:
    return any(needle in str(source.get(key) or "").lower() for key in ("source_id", "display_name", "pattern"))


def platform(status: Mapping[str, Any]) -> dict[str, Any]:
    """The header every page shows: what is served, how it is, when it was checked."""
    health = status.get("health") or {}
    last_sync = status.get("last_sync") or {}
    head = status.get("head") or {}
    drift = status.get("drift") or {}
    return {
        "project": health.get("project"),
        "region": health.get("region"),
        "environment": health.get("environment"),
        "health": health.get("health"),
        "health_error": health.get("error"),
        "checked_at": health.get("checked_at"),
        "revision": status.get("revision") or health.get("revision"),
        "head_revision": head.get("revision"),
        "head_valid": head.get("valid"),
        "last_sync_result": last_sync.get("result"),
        "last_sync_at": last_sync.get("finished_at") or last_sync.get("at"),
        "drifted": len(drift.get("resources") or []),
        "drift_checked_at": drift.get("checked_at"),
        "mode": status.get("mode", "daemon"),
        "repo": status.get("repo"),
        "branch": status.get("branch"),
    }


def row(source: Mapping[str, Any]) -> dict[str, Any]:
    reasons = source.get("reasons") or []
    return {
        "id": source.get("source_id"),
        "href": source_href(str(source.get("source_id"))),
        "display_name": source.get("display_name"),
        "pattern": source.get("pattern"),
        "suspended": bool(source.get("suspended")),
        "sync": source.get("sync"),
        "health": source.get("health"),
        "reason": reasons[0] if reasons else None,
        "more_reasons": max(0, len(reasons) - 1),
        "freshness": freshness_text(source.get("freshness") or {}),
        "breached": bool((source.get("freshness") or {}).get("breached")),
        "dead_letters": dead_letters_text(source.get("dead_letters") or {}),
        "over_budget": bool((source.get("dead_letters") or {}).get("over_budget")),
        "change": change_text(source.get("last_change")),
        "applied": (source.get("last_apply") or {}).get("at"),
    }


def source_href(source_id: str) -> str:
    return "/ui/sources/" + quote(source_id, safe="")


def freshness_text(f: Mapping[str, Any]) -> str:
    sla = f"SLA {duration(f['sla_seconds'])}" if f.get("sla_seconds") is not None else "no SLA"
    age = f.get("age_seconds")
    if age is None:
        return f"? / {sla}"
    when = f"{duration(age)} ago" if f.get("last_record_at") else f"no record yet ({duration(age)})"
    return f"{when} / {sla}" + (" — breached" if f.get("breached") else "")


def dead_letters_text(d: Mapping[str, Any]) -> str:
    if d.get("backlog") is None:
        return "?"
    text = str(d["backlog"])
    if d.get("growth") is not None:
        text += f" (+{d['growth']}"
        if d.get("error_rate_percent") is not None:
            text += f", {d['error_rate_percent']:.1f}% of {d.get('budget_percent', 5):g}%"
        text += ")"
    return text + (" — over budget" if d.get("over_budget") else "")


def change_text(change: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not change:
        return None
    return {"commit": str(change.get("commit") or "")[:12], "author": change.get("author"),
            "date": str(change.get("date") or "")[:16].replace("T", " "), "summary": change.get("summary")}


def source_page(status: Mapping[str, Any], source_id: str) -> dict[str, Any] | None:
    """One source's page, or None when the health document does not know it."""
    health = status.get("health") or {}
    source = next((s for s in health.get("sources") or [] if s.get("source_id") == source_id), None)
    if source is None:
        return None
    project, region = health.get("project") or "", health.get("region") or ""
    resources = [{**r, "console": console_link(str(r.get("kind")), str(r.get("name")), project, region)}
                 for r in source.get("resources") or []]
    addresses = {r.get("address") for r in resources}
    drift = [_drift_entry(entry) for entry in (status.get("drift") or {}).get("resources") or []
             if entry.get("source") == source_id or entry.get("address") in addresses]
    pending = [entry for entry in status.get("pending") or [] if entry.get("address") in addresses]
    blocked = [entry for entry in status.get("blocked") or [] if entry.get("address") in addresses]
    logs = [r for r in resources if r.get("error") or r.get("log_tail")]
    return {
        "platform": platform(status),
        "source": source,
        "row": row(source),
        "resources": resources,
        "drift": drift,
        "drift_checked_at": (status.get("drift") or {}).get("checked_at"),
        "pending": pending,
        "blocked": blocked,
        "logs": logs,
        "freshness": source.get("freshness") or {},
        "dead_letters": source.get("dead_letters") or {},
        "change": change_text(source.get("last_change")),
        "last_change": source.get("last_change") or None,
        "last_apply": source.get("last_apply") or None,
    }


def _drift_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {**entry, "origin_text": origin_text(entry.get("origin")),
            "fields": [{**f, "live_text": value_text(f.get("live")), "desired_text": value_text(f.get("desired")),
                        "origin_text": origin_text(f.get("origin"))} for f in entry.get("fields") or []]}


def origin_text(origin: Mapping[str, Any] | None) -> str | None:
    """Who set a desired value (`reconciler.blame.Origin.to_dict`), in one line."""
    if not origin:
        return None
    field = origin.get("field") or ""
    if origin.get("default"):
        return f"headwater's default: no line sets it ({field} would)" if field else "headwater's own value"
    where = f"{origin.get('file')}:{origin.get('line')} {field}".strip() if origin.get("file") else field
    commit = origin.get("commit")
    if not commit:
        return f"at {where} (no git history)"
    if set(commit) == {"0"}:
        return f"at {where} (not committed yet)"
    day = str(origin.get("date") or "")[:10]
    return f"set by {commit[:12]} ({origin.get('author')}, {day}: {origin.get('summary')}) at {where}"


def value_text(value: Any, limit: int = 300) -> str:
    import json

    text = json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


CONSOLE = "https://console.cloud.google.com"


def console_link(kind: str, name: str, project: str, region: str) -> str | None:
    """The Cloud Console page of a resource (a list page where a resource's own page needs an id
    headwater does not keep); None for a kind without one."""
    p = quote(project, safe="")
    n = quote(name, safe="")
    r = quote(region, safe="")
    if kind == "storage_bucket":
        return f"{CONSOLE}/storage/browser/{n}?project={p}"
    if kind == "storage_notification":
        bucket = quote(name.split("/", 1)[0], safe="")
        return f"{CONSOLE}/storage/browser/{bucket}?project={p}"
    if kind == "pubsub_topic":
        return f"{CONSOLE}/cloudpubsub/topic/detail/{n}?project={p}"
    if kind == "pubsub_subscription":
        return f"{CONSOLE}/cloudpubsub/subscription/detail/{n}?project={p}"
    if kind == "bigquery_dataset":
        return f"{CONSOLE}/bigquery?project={p}&ws=!1m4!1m3!3m2!1s{p}!2s{n}"
    if kind == "bigquery_table":
        dataset, _, table = name.partition(".")
        return (f"{CONSOLE}/bigquery?project={p}&ws=!1m5!1m4!4m3!1s{p}!2s{quote(dataset, safe='')}"
                f"!3s{quote(table, safe='')}")
    if kind == "dataflow_job":
        return f"{CONSOLE}/dataflow/jobs?project={p}"
    if kind == "cloud_run_service":
        return f"{CONSOLE}/run/detail/{r}/{n}/metrics?project={p}"
    if kind == "datastream_stream":
        return f"{CONSOLE}/datastream/streams/locations/{r}/instances/{n}?project={p}"
    if kind == "datastream_connection_profile":
        return f"{CONSOLE}/datastream/connection-profiles/locations/{r}/instances/{n}?project={p}"
    if kind == "storage_transfer_job":
        return f"{CONSOLE}/transfer/jobs?project={p}"
    if kind == "monitoring_alert_policy":
        return f"{CONSOLE}/monitoring/alerting/policies?project={p}"
    if kind == "monitoring_dashboard":
        return f"{CONSOLE}/monitoring/dashboards?project={p}"
    if kind == "monitoring_notification_channel":
        return f"{CONSOLE}/monitoring/alerting/notifications?project={p}"
    return None
