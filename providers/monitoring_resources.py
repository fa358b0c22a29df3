"""Cloud Monitoring provider: notification channels, alert policies and dashboards (issue 11).

Kinds: ``monitoring_notification_channel``, ``monitoring_alert_policy``, ``monitoring_dashboard``
(compiled by `reconciler.cloud_monitoring`; what they watch and why: docs/monitoring.md). This
module, with ``google-cloud-monitoring`` (``monitoring_v3``: channels, policies, the freshness
metric's descriptor and its time series) and ``google-cloud-monitoring-dashboards``
(``monitoring_dashboard_v1``), is the only one that imports them. `providers.local_monitoring`
records the same kinds when headwater targets the emulators (Cloud Monitoring has none).

Ownership and identity
----------------------
Cloud Monitoring assigns the ids of channels and policies itself
(``projects/<p>/notificationChannels/<n>``, ``projects/<p>/alertPolicies/<n>``), so headwater
finds its own by their labels, never by id:

==============================  ===================================  ==================================
kind                            headwater's when                     its headwater name is
==============================  ===================================  ==================================
notification channel            ``user_labels`` managed-by=headwater ``labels.email_address`` (type
                                                                     ``email`` only)
alert policy                    ``user_labels`` managed-by=headwater ``user_labels`` headwater-source
dashboard                       ``labels`` managed-by=headwater      ``labels`` headwater-source
==============================  ===================================  ==================================

(the other headwater labels are there too: ``headwater-platform`` tells platforms apart). The
display name, ``headwater <environment>: <what>``, is for people; nothing relies on it. A
dashboard's id is chosen, ``headwater-<environment>-<source>`` (a retried create meets 409, not
a twin); a channel or policy created twice (an apply that died between the create and its
answer) shows up as a second resource named ``<name>~<id>``, which the plan prunes.

Observe is ONE list per kind (paged; ``list_notification_channels``, ``list_alert_policies``,
``list_dashboards``), kept to headwater's by the labels above on what the list returns: no
server-side filter (the dashboards API has none, and a project holds at most a few hundred
policies and channels). A policy names its channels by id; observe maps them back to addresses
with the channel list it made (or makes once).

The operations
--------------
* channels: ``create_notification_channel`` (type ``email``, ``labels.email_address``);
  ``update_notification_channel`` with an update mask (``display_name``, ``enabled``,
  ``user_labels``); ``delete_notification_channel`` with ``force=False``: a channel another
  (not headwater's) policy still uses is refused by Cloud Monitoring, with its reason.
* policies: ``create_alert_policy``; ``update_alert_policy`` with an update mask of the changed
  fields (`POLICY_MASKS`; ``conditions`` is replaced whole); ``delete_alert_policy``. Before a
  create or update whose conditions read the freshness metric, its descriptor is created once per
  provider (``create_metric_descriptor``: Cloud Monitoring refuses a condition on a custom metric
  it does not know yet). It is never deleted: it is the daemon's data.
* dashboards: ``create_dashboard`` with the chosen name; ``update_dashboard`` has no update mask:
  a dashboard is headwater's whole and is replaced whole (sent without an etag: there is nothing
  of someone else's in it to keep), so a chart added by hand is drift, and the update removes it
  (copy a dashboard to make it your own); ``delete_dashboard``.

Normalized here (server defaults): a condition's ``trigger`` (count 1), an unset ``enabled``
(true), aggregations' ``REDUCE_NONE`` (None), filters' whitespace; of a dashboard only the fields
headwater sets are read (title, text, the queries with their aggregation, y-axis label,
thresholds' label and value) in tile order, so what the server adds (chart options, axis scale,
colours, legend templates) is not a difference.

`write_freshness` writes the freshness time series (the daemon's side of the contract in
docs/monitoring.md; issue 11A calls it).

Verified here against the client libraries' own types and, through their gRPC transport, a
local endpoint (tests/fake_monitoring.py). Verified only against the real service: the metric
filters, aligners and the PromQL query (that the metrics exist with these labels and chart what
docs/monitoring.md says); that a dashboard can be created with a chosen name; which defaults the
server fills in; that a policy on the freshness metric is accepted once its descriptor exists.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from google.cloud import monitoring_dashboard_v1 as dash
from google.cloud import monitoring_v3 as mon
from google.protobuf import duration_pb2

from providers.calls import CallCounter
from providers.errors import AlreadyExists, NotFound, PermanentError, call
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, SOURCE_KEY, Kind, Resource

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNELS, POLICIES, DASHBOARDS = (Kind.MONITORING_NOTIFICATION_CHANNEL, Kind.MONITORING_ALERT_POLICY,
                                  Kind.MONITORING_DASHBOARD)
KINDS = (CHANNELS, POLICIES, DASHBOARDS)
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    CHANNELS: frozenset({"type", "email"}),
    POLICIES: frozenset(),
    DASHBOARDS: frozenset(),
}

# Per spec key (or "labels"): the update mask path that carries it.
CHANNEL_MASKS = {"display_name": "display_name", "enabled": "enabled", "labels": "user_labels"}
POLICY_MASKS = {
    "display_name": "display_name",
    "documentation": "documentation",
    "combiner": "combiner",
    "conditions": "conditions",
    "notification_emails": "notification_channels",
    "enabled": "enabled",
    "labels": "user_labels",
}

FRESHNESS_METRIC = "custom.googleapis.com/headwater/source_freshness_seconds"
FRESHNESS_LABELS = ("platform", "source")
MAX_SERIES_PER_WRITE = 200  # CreateTimeSeries' limit per request

LIST_PAGE_SIZE = 1000
RPC_TIMEOUT_S = 60.0
GRID_COLUMNS = 48  # a mosaic layout's width; two charts a row
CHART_WIDTH, CHART_HEIGHT, TEXT_HEIGHT = 24, 16, 4
DUPLICATE = "~"  # <name>~<id>: a second resource of one headwater name


# --------------------------------------------------------------------------- channels


def build_channel(resource: Resource) -> mon.NotificationChannel:
    spec = resource.spec
    if spec.get("type", "email") != "email":
        raise PermanentError(f"{resource.address}: only email channels are supported, not {spec.get('type')!r}")
    return mon.NotificationChannel(
        type_="email",
        display_name=spec.get("display_name") or resource.name,
        labels={"email_address": spec["email"]},
        user_labels=dict(resource.labels),
        enabled=bool(spec.get("enabled", True)),
    )


def channel_resource(channel: mon.NotificationChannel) -> Resource:
    email = channel.labels.get("email_address", "")
    spec = {
        "type": channel.type_,
        "email": email,
        "display_name": channel.display_name,
        "enabled": True if channel.enabled is None else bool(channel.enabled),
    }
    return Resource(CHANNELS, email, spec, dict(channel.user_labels), status={"id": channel.name})


# --------------------------------------------------------------------------- alert policies


def _duration(seconds: float | int | None) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(seconds or 0))


def _seconds(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds())
    return int(getattr(value, "seconds", 0))


def _normal_filter(text: str) -> str:
    return " ".join(text.split())


def _enum_name(value: Any, none: Collection[str] = ()) -> str | None:
    name = getattr(value, "name", None) or str(value)
    return None if name in none else name


def build_condition(spec: Mapping[str, Any]) -> mon.AlertPolicy.Condition:
    if "promql" in spec:
        return mon.AlertPolicy.Condition(
            display_name=spec["display_name"],
            condition_prometheus_query_language=mon.AlertPolicy.Condition.PrometheusQueryLanguageCondition(
                query=spec["promql"], duration=_duration(spec.get("duration_seconds")),
                evaluation_interval=_duration(spec.get("evaluation_interval_seconds"))),
        )
    aggregation = mon.Aggregation(
        alignment_period=_duration(spec.get("alignment_period_seconds")),
        per_series_aligner=mon.Aggregation.Aligner[spec.get("per_series_aligner") or "ALIGN_NONE"],
        cross_series_reducer=mon.Aggregation.Reducer[spec.get("cross_series_reducer") or "REDUCE_NONE"],
    )
    missing = spec.get("evaluation_missing_data") or "EVALUATION_MISSING_DATA_UNSPECIFIED"
    return mon.AlertPolicy.Condition(
        display_name=spec["display_name"],
        condition_threshold=mon.AlertPolicy.Condition.MetricThreshold(
            filter=spec["filter"],
            aggregations=[aggregation],
            comparison=mon.ComparisonType[spec["comparison"]],
            threshold_value=float(spec["threshold_value"]),
            duration=_duration(spec.get("duration_seconds")),
            trigger=mon.AlertPolicy.Condition.Trigger(count=1),
            evaluation_missing_data=mon.AlertPolicy.Condition.EvaluationMissingData[missing],
        ),
    )


def condition_spec(condition: mon.AlertPolicy.Condition) -> dict[str, Any]:
    """The canonical view of one condition; a kind headwater does not make reads as unsupported."""
    if "condition_prometheus_query_language" in condition:
        promql = condition.condition_prometheus_query_language
        return {"display_name": condition.display_name, "promql": " ".join(promql.query.split()),
                "duration_seconds": _seconds(promql.duration),
                "evaluation_interval_seconds": _seconds(promql.evaluation_interval)}
    if "condition_threshold" not in condition:
        kind = next((f for f in ("condition_absent", "condition_matched_log", "condition_monitoring_query_language",
                                 "condition_sql") if f in condition), "none")
        return {"display_name": condition.display_name, "unsupported": kind}
    threshold = condition.condition_threshold
    aggregation = threshold.aggregations[0] if threshold.aggregations else mon.Aggregation()
    trigger = threshold.trigger
    spec: dict[str, Any] = {
        "display_name": condition.display_name,
        "filter": _normal_filter(threshold.filter),
        "comparison": _enum_name(threshold.comparison),
        "threshold_value": float(threshold.threshold_value),
        "duration_seconds": _seconds(threshold.duration),
        "alignment_period_seconds": _seconds(aggregation.alignment_period),
        "per_series_aligner": _enum_name(aggregation.per_series_aligner, ("ALIGN_NONE",)),
        "cross_series_reducer": _enum_name(aggregation.cross_series_reducer, ("REDUCE_NONE",)),
        "evaluation_missing_data": _enum_name(threshold.evaluation_missing_data),
    }
    if len(threshold.aggregations) > 1 or "denominator_filter" in threshold and threshold.denominator_filter:
        spec["unsupported"] = "several aggregations or a ratio"
    if ("count" in trigger and trigger.count not in (0, 1)) or ("percent" in trigger and trigger.percent):
        spec["trigger"] = {"count": trigger.count, "percent": trigger.percent}
    return spec


def build_policy(resource: Resource, channels: Mapping[str, str]) -> mon.AlertPolicy:
    """The whole policy; ``channels``: email -> channel name (headwater's)."""
    spec = resource.spec
    return mon.AlertPolicy(
        display_name=spec.get("display_name") or resource.name,
        documentation=mon.AlertPolicy.Documentation(content=spec.get("documentation") or "",
                                                    mime_type="text/markdown"),
        user_labels=dict(resource.labels),
        conditions=[build_condition(c) for c in spec.get("conditions") or []],
        combiner=mon.AlertPolicy.ConditionCombinerType[spec.get("combiner") or "OR"],
        enabled=bool(spec.get("enabled", True)),
        notification_channels=channel_names(resource, channels),
    )


def channel_names(resource: Resource, channels: Mapping[str, str]) -> list[str]:
    missing = [e for e in resource.spec.get("notification_emails") or [] if e not in channels]
    if missing:
        raise PermanentError(f"{resource.address}: no headwater notification channel for {', '.join(missing)} "
                             "(monitoring_notification_channel is applied first: plan again)")
    return [channels[e] for e in resource.spec.get("notification_emails") or []]


def policy_resource(policy: mon.AlertPolicy, emails: Mapping[str, str]) -> Resource:
    """The canonical view of a policy; ``emails``: channel name -> email of headwater's channels
    (another channel reads as its name: a difference that an update replaces)."""
    labels = dict(policy.user_labels)
    spec = {
        "display_name": policy.display_name,
        "documentation": policy.documentation.content if "documentation" in policy else "",
        "combiner": _enum_name(policy.combiner),
        "conditions": [condition_spec(c) for c in policy.conditions],
        "notification_emails": [emails.get(n, n) for n in policy.notification_channels],
        "enabled": True if policy.enabled is None else bool(policy.enabled),
    }
    return Resource(POLICIES, labels.get(SOURCE_KEY) or _short(policy.name), spec, labels,
                    status={"id": policy.name})


def policy_mask(fields: Iterable[str]) -> list[str]:
    paths = set()
    for name in fields:
        if name not in POLICY_MASKS:
            raise PermanentError(f"monitoring_alert_policy: no such field {name!r}")
        paths.add(POLICY_MASKS[name])
    return sorted(paths)


def channel_mask(fields: Iterable[str]) -> list[str]:
    paths = set()
    for name in fields:
        if name not in CHANNEL_MASKS:
            raise PermanentError(f"monitoring_notification_channel: {name!r} cannot change in place")
        paths.add(CHANNEL_MASKS[name])
    return sorted(paths)


def freshness_descriptor(project: str) -> Any:
    """The freshness metric (docs/monitoring.md): GAUGE, DOUBLE, seconds, on ``global``."""
    from google.api import label_pb2, metric_pb2

    return metric_pb2.MetricDescriptor(
        name=f"projects/{project}/metricDescriptors/{FRESHNESS_METRIC}",
        type=FRESHNESS_METRIC,
        metric_kind=metric_pb2.MetricDescriptor.MetricKind.GAUGE,
        value_type=metric_pb2.MetricDescriptor.ValueType.DOUBLE,
        unit="s",
        display_name="headwater source freshness",
        description="Age of the newest record of a headwater source, in seconds (written by the headwater daemon)",
        labels=[label_pb2.LabelDescriptor(key="platform", description="headwater platform (environment)"),
                label_pb2.LabelDescriptor(key="source", description="source_id")],
        monitored_resource_types=["global"],
    )


def _reads_freshness(resource: Resource) -> bool:
    return any(FRESHNESS_METRIC in (c.get("filter") or "") for c in resource.spec.get("conditions") or [])


# --------------------------------------------------------------------------- dashboards


def dashboard_id(resource: Resource) -> str:
    """``headwater-<environment>-<name>``, in the characters every API id accepts."""
    environment = resource.labels.get("headwater-platform", "")
    text = "-".join(p for p in ("headwater", environment, resource.name) if p).lower()
    return re.sub(r"[^a-z0-9-]+", "-", text).strip("-")[:100]


def _dash_aggregation(series: Mapping[str, Any]) -> dash.Aggregation:
    return dash.Aggregation(
        alignment_period=_duration(series.get("alignment_period_seconds")),
        per_series_aligner=dash.Aggregation.Aligner[series.get("per_series_aligner") or "ALIGN_NONE"],
        cross_series_reducer=dash.Aggregation.Reducer[series.get("cross_series_reducer") or "REDUCE_NONE"],
        group_by_fields=list(series.get("group_by") or []),
    )


def build_widget(widget: Mapping[str, Any]) -> dash.Widget:
    if "text" in widget:
        return dash.Widget(title=widget["title"], text=dash.Text(content=widget["text"],
                                                                  format_=dash.Text.Format.MARKDOWN))
    data_sets = []
    for series in widget.get("chart") or []:
        if "promql" in series:
            query = dash.TimeSeriesQuery(prometheus_query=series["promql"])
        else:
            query = dash.TimeSeriesQuery(time_series_filter=dash.TimeSeriesFilter(
                filter=series["filter"], aggregation=_dash_aggregation(series)))
        data_sets.append(dash.XyChart.DataSet(time_series_query=query, plot_type=dash.XyChart.DataSet.PlotType.LINE))
    return dash.Widget(title=widget["title"], xy_chart=dash.XyChart(
        data_sets=data_sets,
        thresholds=[dash.Threshold(label=t.get("label", ""), value=float(t["value"]))
                    for t in widget.get("thresholds") or []],
        y_axis=dash.XyChart.Axis(label=widget.get("y_label") or "", scale=dash.XyChart.Axis.Scale.LINEAR),
    ))


def build_dashboard(resource: Resource, project: str) -> dash.Dashboard:
    """The whole dashboard: a full-width text tile first, then charts two a row."""
    tiles, y, column = [], 0, 0
    for widget in resource.spec.get("widgets") or []:
        if "text" in widget:
            if column:
                y, column = y + CHART_HEIGHT, 0
            tiles.append(dash.MosaicLayout.Tile(x_pos=0, y_pos=y, width=GRID_COLUMNS, height=TEXT_HEIGHT,
                                                widget=build_widget(widget)))
            y += TEXT_HEIGHT
            continue
        tiles.append(dash.MosaicLayout.Tile(x_pos=column * CHART_WIDTH, y_pos=y, width=CHART_WIDTH,
                                            height=CHART_HEIGHT, widget=build_widget(widget)))
        column += 1
        if column * CHART_WIDTH >= GRID_COLUMNS:
            y, column = y + CHART_HEIGHT, 0
    return dash.Dashboard(
        name=f"projects/{project}/dashboards/{dashboard_id(resource)}",
        display_name=resource.spec.get("display_name") or resource.name,
        mosaic_layout=dash.MosaicLayout(columns=GRID_COLUMNS, tiles=tiles),
        labels=dict(resource.labels),
    )


def widget_spec(widget: dash.Widget) -> dict[str, Any]:
    """The canonical view of one widget: only what headwater sets (module docstring)."""
    if "text" in widget:
        return {"title": widget.title, "text": widget.text.content}
    if "xy_chart" not in widget:
        kind = next((f for f in dash.Widget.meta.fields if f not in ("title", "id") and f in widget), "blank")
        return {"title": widget.title, "unsupported": kind}
    chart = widget.xy_chart
    data: list[dict[str, Any]] = []
    for data_set in chart.data_sets:
        query = data_set.time_series_query
        if query.prometheus_query:
            data.append({"promql": query.prometheus_query})
        elif "time_series_filter" in query:
            series = query.time_series_filter
            aggregation = series.aggregation
            data.append({
                "filter": _normal_filter(series.filter),
                "per_series_aligner": _enum_name(aggregation.per_series_aligner, ("ALIGN_NONE",)),
                "cross_series_reducer": _enum_name(aggregation.cross_series_reducer, ("REDUCE_NONE",)),
                "alignment_period_seconds": _seconds(aggregation.alignment_period),
                "group_by": list(aggregation.group_by_fields),
            })
        else:
            data.append({"unsupported": "query"})
    return {
        "title": widget.title,
        "chart": data,
        "y_label": chart.y_axis.label,
        "thresholds": [{"label": t.label, "value": float(t.value)} for t in chart.thresholds],
    }


def dashboard_resource(dashboard: dash.Dashboard) -> Resource:
    labels = dict(dashboard.labels)
    if "mosaic_layout" in dashboard:
        widgets = [widget_spec(t.widget) for t in sorted(dashboard.mosaic_layout.tiles, key=lambda t: (t.y_pos, t.x_pos))]
    else:
        widgets = [{"title": "", "unsupported": "layout other than mosaic"}]
    spec = {"display_name": dashboard.display_name, "widgets": widgets}
    return Resource(DASHBOARDS, labels.get(SOURCE_KEY) or _short(dashboard.name), spec, labels,
                    status={"id": dashboard.name, "etag": dashboard.etag})


# --------------------------------------------------------------------------- helpers


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _managed(labels: Mapping[str, str]) -> bool:
    return labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


def _deduplicated(resources: list[Resource]) -> list[Resource]:
    """One resource per headwater name (the first by id); any other is ``<name>~<id>`` (pruned)."""
    seen: set[str] = set()
    result = []
    for resource in sorted(resources, key=lambda r: r.status.get("id", "")):
        if resource.name in seen:
            log.warning("Cloud Monitoring: a second %s named %s (%s): reported as a resource of its own",
                        resource.kind, resource.name, resource.status.get("id"))
            resource = Resource(resource.kind, f"{resource.name}{DUPLICATE}{_short(resource.status['id'])}",
                                resource.spec, resource.labels, status=resource.status)
        seen.add(resource.name)
        result.append(resource)
    return result


# --------------------------------------------------------------------------- the provider


class MonitoringProvider:
    """Cloud Monitoring of one project. Contract: `providers.base.Provider` (and `Reader`).

    ``clients``: for tests, ``{"channels": ..., "policies": ..., "metrics": ..., "dashboards": ...}``
    official clients pointed at a local endpoint; default: the official clients with Application
    Default Credentials."""

    kinds: tuple[Kind, ...] = KINDS
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, *, clients: Mapping[str, Any] | None = None) -> None:
        self.project = project
        self._clients: dict[str, Any] = dict(clients or {})
        self._lock = threading.Lock()
        self._counter = CallCounter("monitoring")
        self._ids: dict[tuple[Kind, str], str] = {}  # (kind, headwater name) -> server name, from observe
        self._channels: dict[str, str] | None = None  # email -> channel name (headwater's)
        self._listed: set[Kind] = set()  # kinds listed at least once (so a name not in _ids is absent)
        self._descriptor_ready = False

    @property
    def parent(self) -> str:
        return f"projects/{self.project}"

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        return [r for r in self._live(kind) if r.managed]

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        wanted = set(names)
        return [r for r in self._live(kind, managed_only=False) if r.name in wanted]

    def create(self, resource: Resource) -> None:
        kind = Kind(resource.kind)
        if kind == DASHBOARDS:
            request = dash.CreateDashboardRequest(parent=self.parent, dashboard=build_dashboard(resource, self.project))
            created = self._rpc("create_dashboard", resource.name,
                                lambda: self._client("dashboards").create_dashboard(request=request, **_OPTS))
            self._remember(kind, resource.name, created.name)
            return
        # Ids are the server's: a second create would make a twin. Refuse when it exists already.
        if self._id(kind, resource.name) is not None:
            raise AlreadyExists(f"{resource.address} already exists")
        if kind == CHANNELS:
            request = mon.CreateNotificationChannelRequest(name=self.parent, notification_channel=build_channel(resource))
            created = self._rpc("create_notification_channel", resource.name, lambda: self._client(
                "channels").create_notification_channel(request=request, **_OPTS))
            self._remember(kind, resource.name, created.name)
            with self._lock:
                if self._channels is not None:
                    self._channels[resource.spec["email"]] = created.name
            return
        if kind == POLICIES:
            self._ensure_descriptor(resource)
            policy = build_policy(resource, self._channel_map())
            request = mon.CreateAlertPolicyRequest(name=self.parent, alert_policy=policy)
            created = self._rpc("create_alert_policy", resource.name,
                                lambda: self._client("policies").create_alert_policy(request=request, **_OPTS))
            self._remember(kind, resource.name, created.name)
            return
        raise PermanentError(f"monitoring: unsupported kind {kind!r}")

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        if not fields:
            return
        kind = Kind(resource.kind)
        if kind == DASHBOARDS:
            self._update_dashboard(resource)
            return
        name = self._id(kind, resource.name)
        if name is None:
            raise NotFound(f"{resource.address} is gone (plan again)")
        if kind == CHANNELS:
            channel = build_channel(resource)
            channel.name = name
            request = mon.UpdateNotificationChannelRequest(notification_channel=channel,
                                                           update_mask={"paths": channel_mask(fields)})
            self._rpc("update_notification_channel", resource.name, lambda: self._client(
                "channels").update_notification_channel(request=request, **_OPTS))
            return
        if kind == POLICIES:
            self._ensure_descriptor(resource)
            policy = build_policy(resource, self._channel_map())
            policy.name = name
            request = mon.UpdateAlertPolicyRequest(alert_policy=policy, update_mask={"paths": policy_mask(fields)})
            self._rpc("update_alert_policy", resource.name,
                      lambda: self._client("policies").update_alert_policy(request=request, **_OPTS))
            return
        raise PermanentError(f"monitoring: unsupported kind {kind!r}")

    def delete(self, resource: Resource) -> None:
        kind = Kind(resource.kind)
        name = resource.status.get("id") if resource.status else None
        if kind == DASHBOARDS:
            name = name or f"{self.parent}/dashboards/{dashboard_id(resource)}"
        name = name or self._id(kind, resource.name)
        if name is None:
            return  # gone already
        try:
            if kind == CHANNELS:
                request = mon.DeleteNotificationChannelRequest(name=name, force=False)
                self._rpc("delete_notification_channel", resource.name, lambda: self._client(
                    "channels").delete_notification_channel(request=request, **_OPTS))
            elif kind == POLICIES:
                request = mon.DeleteAlertPolicyRequest(name=name)
                self._rpc("delete_alert_policy", resource.name,
                          lambda: self._client("policies").delete_alert_policy(request=request, **_OPTS))
            else:
                request = dash.DeleteDashboardRequest(name=name)
                self._rpc("delete_dashboard", resource.name,
                          lambda: self._client("dashboards").delete_dashboard(request=request, **_OPTS))
        except NotFound:
            pass
        with self._lock:
            self._ids.pop((kind, resource.name), None)
            if kind == CHANNELS and self._channels is not None:
                self._channels.pop(resource.spec.get("email", resource.name), None)

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    # -- the freshness metric, written by the daemon (docs/monitoring.md) --

    def write_freshness(self, platform: str, ages: Mapping[str, float], *,
                        now: dt.datetime | None = None) -> None:
        """One point per source (``ages``: source id -> seconds since its newest record), at ``now``."""
        write_freshness(self._client("metrics"), self.project, platform, ages, now=now, counter=self._counter)

    # -- plumbing --

    def _live(self, kind: Kind, *, managed_only: bool = True) -> list[Resource]:
        kind = Kind(kind)
        if kind == CHANNELS:
            resources = [channel_resource(c) for c in self._list_channels() if c.type_ == "email"]
            with self._lock:
                self._channels = {r.spec["email"]: r.status["id"] for r in resources if r.managed}
        elif kind == POLICIES:
            emails = {name: email for email, name in self._channel_map().items()}
            resources = [policy_resource(p, emails) for p in self._list_policies()]
        elif kind == DASHBOARDS:
            resources = [dashboard_resource(d) for d in self._list_dashboards()]
        else:
            raise PermanentError(f"monitoring: unsupported kind {kind!r}")
        managed = _deduplicated([r for r in resources if r.managed])
        with self._lock:
            self._listed.add(kind)
            for key in [key for key in self._ids if key[0] == kind]:
                del self._ids[key]
            for resource in managed:
                self._ids[(kind, resource.name)] = resource.status["id"]
        return managed if managed_only else managed + [r for r in resources if not r.managed]

    def _id(self, kind: Kind, name: str) -> str | None:
        """The server name of headwater's ``name``: from the last list of ``kind`` (made now if none was)."""
        with self._lock:
            if (kind, name) in self._ids or kind in self._listed:
                return self._ids.get((kind, name))
        self._live(kind)
        with self._lock:
            return self._ids.get((kind, name))

    def _remember(self, kind: Kind, name: str, server_name: str) -> None:
        with self._lock:
            self._ids[(kind, name)] = server_name

    def _channel_map(self) -> dict[str, str]:
        with self._lock:
            channels = self._channels
        if channels is None:
            self._live(CHANNELS)
            with self._lock:
                channels = self._channels
        return dict(channels or {})

    def _ensure_descriptor(self, resource: Resource) -> None:
        if self._descriptor_ready or not _reads_freshness(resource):
            return
        descriptor = freshness_descriptor(self.project)
        request = mon.CreateMetricDescriptorRequest(name=self.parent, metric_descriptor=descriptor)
        try:
            self._rpc("create_metric_descriptor", FRESHNESS_METRIC,
                      lambda: self._client("metrics").create_metric_descriptor(request=request, **_OPTS))
        except AlreadyExists:
            pass
        self._descriptor_ready = True

    def _update_dashboard(self, resource: Resource) -> None:
        dashboard = build_dashboard(resource, self.project)
        dashboard.name = self._id(DASHBOARDS, resource.name) or dashboard.name
        request = dash.UpdateDashboardRequest(dashboard=dashboard)  # no etag: replaced whole (module docstring)
        self._rpc("update_dashboard", resource.name,
                  lambda: self._client("dashboards").update_dashboard(request=request, **_OPTS))

    def _list_channels(self) -> list[mon.NotificationChannel]:
        request = mon.ListNotificationChannelsRequest(name=self.parent, page_size=LIST_PAGE_SIZE)
        return self._paged("list_notification_channels",
                           lambda: self._client("channels").list_notification_channels(request=request, **_OPTS),
                           "notification_channels")

    def _list_policies(self) -> list[mon.AlertPolicy]:
        request = mon.ListAlertPoliciesRequest(name=self.parent, page_size=LIST_PAGE_SIZE)
        return self._paged("list_alert_policies",
                           lambda: self._client("policies").list_alert_policies(request=request, **_OPTS),
                           "alert_policies")

    def _list_dashboards(self) -> list[dash.Dashboard]:
        request = dash.ListDashboardsRequest(parent=self.parent, page_size=LIST_PAGE_SIZE)
        return self._paged("list_dashboards",
                           lambda: self._client("dashboards").list_dashboards(request=request, **_OPTS),
                           "dashboards")

    def _paged(self, method: str, first: Callable[[], Any], field: str) -> list[Any]:
        def attempt() -> list[Any]:
            self._counter.count(method)
            items: list[Any] = []
            for number, page in enumerate(first().pages):
                if number:
                    self._counter.count(method)
                items.extend(getattr(page, field))
            return items

        return call(attempt, f"monitoring.{method} {self.parent}")

    def _client(self, which: str) -> Any:
        with self._lock:
            if which not in self._clients:
                self._clients[which] = {
                    "channels": mon.NotificationChannelServiceClient,
                    "policies": mon.AlertPolicyServiceClient,
                    "metrics": mon.MetricServiceClient,
                    "dashboards": dash.DashboardsServiceClient,
                }[which]()
            return self._clients[which]

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)


def write_freshness(client: mon.MetricServiceClient, project: str, platform: str, ages: Mapping[str, float], *,
                    now: dt.datetime | None = None, counter: CallCounter | None = None) -> None:
    """Write one freshness point per source (``ages``: source id -> seconds), at most
    `MAX_SERIES_PER_WRITE` series a request (docs/monitoring.md)."""
    when = now or dt.datetime.now(dt.UTC)
    series = [
        mon.TimeSeries(
            metric={"type": FRESHNESS_METRIC, "labels": {"platform": platform, "source": source}},
            resource={"type": "global", "labels": {"project_id": project}},
            points=[mon.Point(interval=mon.TimeInterval(end_time=when), value=mon.TypedValue(double_value=float(age)))],
        )
        for source, age in sorted(ages.items())
    ]
    counter = counter or CallCounter("monitoring")
    for start in range(0, len(series), MAX_SERIES_PER_WRITE):
        request = mon.CreateTimeSeriesRequest(name=f"projects/{project}",
                                              time_series=series[start:start + MAX_SERIES_PER_WRITE])
        counter.rpc("create_time_series", FRESHNESS_METRIC,
                    lambda request=request: client.create_time_series(request=request, **_OPTS))


# Retries are providers.errors.call's job, not the client library's.
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
