"""Compile: each source's ``monitoring:`` block as Cloud Monitoring resources (issue 11).

Pure, like `reconciler.compile`, which calls `monitoring_resources` once, or, to reuse a source's
part while other sources change, `source_monitoring` per source and `notification_channel` per
distinct e-mail (the same resources). What is built and
why is in docs/monitoring.md; in short, per platform and source:

=====================================================  ===========================================
``monitoring_notification_channel.<email>``            one email channel per distinct
                                                       ``alert_email`` (shared by the sources
                                                       that name it)
``monitoring_alert_policy.<source_id>``                one policy per source, conditions OR-ed:
                                                       freshness over the SLA (with
                                                       ``sla_minutes``), dead letters over
                                                       ``error_budget_percent`` (growth of
                                                       ``<id>-dlq-hold``), system lag of the
                                                       source's streaming Dataflow jobs; it
                                                       notifies the source's ``alert_email``
``monitoring_dashboard.<source_id>``                   one dashboard per source: a chart per
                                                       ``metrics:`` name (`METRICS`), the seed's
                                                       four when none is declared
=====================================================  ===========================================

Every ``metrics:`` name the model accepts is realized here (`METRICS` has one chart per name,
and a test holds the two lists equal); any other name is refused at validate by the model's
``Literal`` with its file, line and field.

Freshness is not a metric Google Cloud has: it is the custom metric `FRESHNESS_METRIC`, which
the daemon writes on its health interval (issue 11A; contract in docs/monitoring.md). Every other
chart and condition reads a metric the services publish themselves (Pub/Sub, BigQuery, Dataflow).
The filters name only what headwater knows at compile time: the project, the subscription, topic,
table and job ids, the platform's environment and the source id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.compile import ZoneNames, base_labels
from reconciler.config import Monitoring, Platform
from reconciler.load import Source
from reconciler.resources import SOURCE_KEY, Kind, Resource, address

# --------------------------------------------------------------------------- metrics

# Written by the daemon (issue 11A), GAUGE, DOUBLE, unit "s", on resource type "global", labels
# `FRESHNESS_LABELS`: the age of the newest record of a source, in seconds.
FRESHNESS_METRIC = "custom.googleapis.com/headwater/source_freshness_seconds"
FRESHNESS_LABELS = ("platform", "source")
DEAD_LETTER_METRIC = "pubsub.googleapis.com/subscription/num_undelivered_messages"
SYSTEM_LAG_METRIC = "dataflow.googleapis.com/job/system_lag"
ROWS_METRIC = "bigquery.googleapis.com/storage/uploaded_row_count"
ACK_LATENCY_METRIC = "pubsub.googleapis.com/subscription/ack_latencies"

# The seed's dashboard metrics: what a source without ``metrics:`` gets.
DEFAULT_METRICS = ("record_count", "latency_p95", "error_rate", "freshness")

# Alert thresholds that are not declared (see docs/monitoring.md).
BUDGET_WINDOW = "1h"  # dead letters against the error budget over this window
DEFAULT_LAG_S = 30 * 60  # a streaming job's system lag, when the source declares no SLA
CONDITION_WINDOW_S = 5 * 60  # a condition holds this long before it opens an incident
CHART_PERIOD_S = 60
FRESHNESS_PERIOD_S = 15 * 60  # the daemon writes once per health interval (default 300 s, jittered): 3 per window

CHANNEL_TYPE = "email"


def display_name(platform: Platform, what: str) -> str:
    """``headwater <environment>: <what>``: how each of these resources is titled in the console."""
    return f"headwater {platform.environment}: {what}"


@dataclass(frozen=True)
class Tables:
    """Where a source's rows land, as compiled: its Bronze tables (``<id>_raw``; a database_cdc
    source's per-table change logs) and its Silver tables."""

    bronze_dataset: str
    bronze: list[str]
    silver_dataset: str
    silver: list[str]


def _one_of(values: Sequence[str]) -> str:
    """A Cloud Monitoring filter's right-hand side: ``"x"`` or ``one_of("x", "y")``."""
    quoted = [f'"{v}"' for v in values] or ['""']
    return quoted[0] if len(quoted) == 1 else f"one_of({', '.join(quoted)})"


def _promql_in(label: str, values: Sequence[str]) -> str:
    """A PromQL matcher: ``label="x"`` or ``label=~"x|y"`` (table ids are ``[A-Za-z0-9_]``)."""
    return f'{label}="{values[0]}"' if len(values) == 1 else f'{label}=~"{"|".join(values) or "^$"}"'


def monitoring_resources(platform: Platform, names: ZoneNames, sources: Sequence[Source],
                         compiled: Iterable[Resource]) -> list[Resource]:
    """The Cloud Monitoring resources of the platform (``compiled``: its other resources, for the
    streaming jobs each source has)."""
    streaming_jobs: dict[str, list[str]] = {}
    tables: dict[tuple[str, str], list[str]] = {}  # (source, dataset) -> its table ids there
    for resource in compiled:
        if resource.kind == Kind.DATAFLOW_JOB and resource.spec.get("streaming") and resource.source_id:
            streaming_jobs.setdefault(resource.source_id, []).append(resource.name)
        if resource.kind == Kind.BIGQUERY_TABLE and resource.source_id and not resource.external:
            dataset, _, table = resource.name.partition(".")
            tables.setdefault((resource.source_id, dataset), []).append(table)
    emails = sorted({s.connector.monitoring.alert_email for s in sources if s.connector.monitoring.alert_email})
    result = [notification_channel(platform, email) for email in emails]
    for source in sources:
        sid = source.source_id
        labels = {**base_labels(platform), **source.connector.labels, SOURCE_KEY: sid}
        where = Tables(names.datasets["bronze"], sorted(tables.get((sid, names.datasets["bronze"]), [])),
                       names.datasets["silver"], sorted(tables.get((sid, names.datasets["silver"]), [])))
        result.append(alert_policy(platform, where, source, sorted(streaming_jobs.get(sid, [])), labels))
        result.append(dashboard(platform, where, source, labels))
    return result


def source_monitoring(platform: Platform, names: ZoneNames, source: Source,
                      own: Iterable[Resource]) -> list[Resource]:
    """One source's alert policy and dashboard (``own``: the resources compiled for that source,
    `reconciler.compile`'s per-source part; its streaming jobs and tables are read from them).
    What `monitoring_resources` makes for the source, for compile's per-source memo."""
    sid = source.source_id
    jobs: list[str] = []
    tables: dict[str, list[str]] = {}
    for resource in own:
        if resource.source_id != sid:
            continue
        if resource.kind == Kind.DATAFLOW_JOB and resource.spec.get("streaming"):
            jobs.append(resource.name)
        if resource.kind == Kind.BIGQUERY_TABLE and not resource.external:
            dataset, _, table = resource.name.partition(".")
            tables.setdefault(dataset, []).append(table)
    labels = {**base_labels(platform), **source.connector.labels, SOURCE_KEY: sid}
    where = Tables(names.datasets["bronze"], sorted(tables.get(names.datasets["bronze"], [])),
                   names.datasets["silver"], sorted(tables.get(names.datasets["silver"], [])))
    return [alert_policy(platform, where, source, sorted(jobs), labels), dashboard(platform, where, source, labels)]


def notification_channel(platform: Platform, email: str) -> Resource:
    return Resource(
        Kind.MONITORING_NOTIFICATION_CHANNEL,
        email,
        {"type": CHANNEL_TYPE, "email": email, "display_name": display_name(platform, email), "enabled": True},
        base_labels(platform),
    )


# --------------------------------------------------------------------------- alert policies


def _filter(*clauses: str) -> str:
    return " AND ".join(clauses)


def freshness_filter(platform: Platform, source_id: str) -> str:
    return _filter(f'metric.type = "{FRESHNESS_METRIC}"', 'resource.type = "global"',
                   f'metric.label.platform = "{platform.environment}"', f'metric.label.source = "{source_id}"')


def dead_letter_filter(platform: Platform, source_id: str) -> str:
    return _filter(f'metric.type = "{DEAD_LETTER_METRIC}"', 'resource.type = "pubsub_subscription"',
                   f'resource.label.project_id = "{platform.project}"',
                   f'resource.label.subscription_id = "{source_id}-dlq-hold"')


def system_lag_filter(platform: Platform, job: str) -> str:
    return _filter(f'metric.type = "{SYSTEM_LAG_METRIC}"', 'resource.type = "dataflow_job"',
                   f'resource.label.project_id = "{platform.project}"', f'resource.label.job_name = "{job}"')


def condition(display: str, filter_: str, threshold: float, *, aligner: str, period_s: int,
              reducer: str | None = None, missing_data: str = "EVALUATION_MISSING_DATA_INACTIVE") -> dict[str, Any]:
    """One metric-threshold condition (``value > threshold`` for `CONDITION_WINDOW_S`), canonical."""
    return {
        "display_name": display,
        "filter": filter_,
        "comparison": "COMPARISON_GT",
        "threshold_value": float(threshold),
        "duration_seconds": CONDITION_WINDOW_S,
        "alignment_period_seconds": period_s,
        "per_series_aligner": aligner,
        "cross_series_reducer": reducer,
        "evaluation_missing_data": missing_data,
    }


def dead_letter_condition(platform: Platform, where: Tables, source_id: str, budget_percent: float) -> dict[str, Any]:
    """Dead letters over the error budget: the growth of ``<id>-dlq-hold``'s backlog over the last
    `BUDGET_WINDOW`, as a percentage of the records received (Bronze raw rows) in it, above
    ``error_budget_percent`` (the health model's rule, issue 11A). Two services in one ratio:
    PromQL (Cloud Monitoring's names: dots and slashes to underscores)."""
    backlog = (f'pubsub_googleapis_com:subscription_num_undelivered_messages{{monitored_resource="pubsub_subscription",'
               f'project_id="{platform.project}",subscription_id="{source_id}-dlq-hold"}}')
    query = (f"100 * sum(delta({backlog}[{BUDGET_WINDOW}])) / sum(increase({_bronze_rows(platform, where)}"
             f"[{BUDGET_WINDOW}])) > {budget_percent:g}")
    return {
        "display_name": f"{source_id}: dead letters over {budget_percent:g}% of records ({source_id}-dlq-hold)",
        "promql": query,
        "duration_seconds": CONDITION_WINDOW_S,
        "evaluation_interval_seconds": CHART_PERIOD_S,
    }


def _bronze_rows(platform: Platform, where: Tables) -> str:
    return (f'bigquery_googleapis_com:storage_uploaded_row_count{{monitored_resource="bigquery_dataset",'
            f'project_id="{platform.project}",dataset_id="{where.bronze_dataset}",{_promql_in("table", where.bronze)}}}')


def alert_policy(platform: Platform, where: Tables, source: Source, streaming_jobs: Sequence[str],
                 labels: dict[str, str]) -> Resource:
    monitoring: Monitoring = source.connector.monitoring
    sid = source.source_id
    sla_s = monitoring.sla_minutes * 60 if monitoring.sla_minutes else None
    conditions = []
    if sla_s:
        # Metric-threshold, not metric-absence: an absence condition caps at 23.5 h and so would
        # miss a daily source. No data counts as breached (ACTIVE): a daemon that stops reporting
        # is a freshness nobody knows, and that pages too.
        conditions.append(condition(f"{sid}: data older than its SLA ({monitoring.sla_minutes} min)",
                                    freshness_filter(platform, sid), sla_s, aligner="ALIGN_MAX",
                                    period_s=FRESHNESS_PERIOD_S, missing_data="EVALUATION_MISSING_DATA_ACTIVE"))
    conditions.append(dead_letter_condition(platform, where, sid, monitoring.error_budget_percent))
    lag_s = sla_s or DEFAULT_LAG_S
    for job in streaming_jobs:
        conditions.append(condition(f"{job}: system lag over {lag_s // 60} min", system_lag_filter(platform, job),
                                    lag_s, aligner="ALIGN_MAX", period_s=CHART_PERIOD_S))
    emails = [monitoring.alert_email] if monitoring.alert_email else []
    depends = [address(Kind.MONITORING_NOTIFICATION_CHANNEL, email) for email in emails]
    return Resource(
        Kind.MONITORING_ALERT_POLICY,
        sid,
        {
            "display_name": display_name(platform, sid),
            "documentation": _runbook(platform, source, sla_s),
            "combiner": "OR",
            "conditions": conditions,
            "notification_emails": emails,
            "enabled": True,
        },
        labels,
        depends_on=tuple(depends),
    )


def _runbook(platform: Platform, source: Source, sla_s: int | None) -> str:
    sid = source.source_id
    lines = [f"Source `{sid}` of headwater platform `{platform.environment}` "
             f"(`{source.connector_file}`), managed by headwater: edit the repository, not this policy.", ""]
    if sla_s:
        lines.append(f"* **Freshness**: the newest record is older than {sla_s // 60} min, or the headwater "
                     "daemon stopped reporting it. `headwater status` names the reason.")
    lines.append(f"* **Dead letters**: more than {source.connector.monitoring.error_budget_percent:g}% of the "
                 f"records received in the last hour were rejected; they wait in subscription `{sid}-dlq-hold` "
                 "(reason in each message's attributes). Fix the cause, then replay or acknowledge them.")
    lines.append("* **System lag**: the streaming Dataflow job is falling behind its input: check the job's "
                 "errors and workers in the Dataflow console.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- dashboards


def series(filter_: str, aligner: str, *, reducer: str | None = None, period_s: int = CHART_PERIOD_S,
           group_by: Sequence[str] = ()) -> dict[str, Any]:
    return {"filter": filter_, "per_series_aligner": aligner, "cross_series_reducer": reducer,
            "alignment_period_seconds": period_s, "group_by": list(group_by)}


def chart(title: str, data: Sequence[dict[str, Any]], *, y_label: str = "",
          thresholds: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"title": title, "chart": list(data), "y_label": y_label, "thresholds": list(thresholds)}


def _record_count(platform: Platform, where: Tables, sid: str, sla_s: int | None) -> dict[str, Any]:
    rows = _filter(f'metric.type = "{ROWS_METRIC}"', 'resource.type = "bigquery_dataset"',
                   f'resource.label.project_id = "{platform.project}"',
                   f'resource.label.dataset_id = "{where.silver_dataset}"', f"metric.label.table = {_one_of(where.silver)}")
    return chart("record_count: rows written to Silver per minute",
                 [series(rows, "ALIGN_DELTA", reducer="REDUCE_SUM")], y_label="rows")


def _latency_p95(platform: Platform, where: Tables, sid: str, sla_s: int | None) -> dict[str, Any]:
    acks = _filter(f'metric.type = "{ACK_LATENCY_METRIC}"', 'resource.type = "pubsub_subscription"',
                   f'resource.label.project_id = "{platform.project}"',
                   f'resource.label.subscription_id = "{sid}-ingest"')
    return chart(f"latency_p95: delivery to acknowledgement by the pipeline ({sid}-ingest), 95th percentile",
                 [series(acks, "ALIGN_DELTA", reducer="REDUCE_PERCENTILE_95")], y_label="ms")


def _error_rate(platform: Platform, where: Tables, sid: str, sla_s: int | None) -> dict[str, Any]:
    # Two services, one ratio: PromQL (Cloud Monitoring's mapping of metric names: domain dots and
    # path slashes to underscores, a distribution's count as _count).
    dead = (f'pubsub_googleapis_com:topic_message_sizes_count{{monitored_resource="pubsub_topic",'
            f'project_id="{platform.project}",topic_id="{sid}-dlq"}}')
    query = f"sum(rate({dead}[5m])) / sum(rate({_bronze_rows(platform, where)}[5m]))"
    return chart("error_rate: dead letters per record received (Bronze raw rows)", [{"promql": query}],
                 y_label="ratio")


def _freshness(platform: Platform, where: Tables, sid: str, sla_s: int | None) -> dict[str, Any]:
    thresholds = [{"label": "SLA", "value": float(sla_s)}] if sla_s else []
    return chart("freshness: age of the newest record (reported by the headwater daemon)",
                 [series(freshness_filter(platform, sid), "ALIGN_MAX", reducer="REDUCE_MAX",
                         period_s=FRESHNESS_PERIOD_S)], y_label="s", thresholds=thresholds)


def _dead_letters(platform: Platform, where: Tables, sid: str, sla_s: int | None) -> dict[str, Any]:
    return chart(f"dead_letters: waiting in {sid}-dlq-hold",
                 [series(dead_letter_filter(platform, sid), "ALIGN_MAX", reducer="REDUCE_SUM")], y_label="messages")


# One chart per name the model accepts (tests hold the two equal).
METRICS = {
    "record_count": _record_count,
    "latency_p95": _latency_p95,
    "error_rate": _error_rate,
    "freshness": _freshness,
    "dead_letters": _dead_letters,
}


def dashboard(platform: Platform, where: Tables, source: Source, labels: dict[str, str]) -> Resource:
    monitoring = source.connector.monitoring
    sid = source.source_id
    sla_s = monitoring.sla_minutes * 60 if monitoring.sla_minutes else None
    wanted = list(dict.fromkeys(monitoring.metrics)) or list(DEFAULT_METRICS)
    about = [f"**{source.connector.display_name or sid}** ({source.connector.ingestion.pattern}), "
             f"platform `{platform.environment}`, defined in `{source.connector_file}`.",
             f"SLA: {monitoring.sla_minutes} min." if sla_s else "No freshness SLA declared.",
             f"Alerts to {monitoring.alert_email}." if monitoring.alert_email else "No alert email declared.",
             "Managed by headwater: edit the repository, not this dashboard."]
    widgets: list[dict[str, Any]] = [{"title": f"{sid}", "text": " ".join(about)}]
    widgets += [METRICS[name](platform, where, sid, sla_s) for name in wanted]
    return Resource(
        Kind.MONITORING_DASHBOARD,
        sid,
        {"display_name": display_name(platform, sid), "widgets": widgets},
        labels,
    )

