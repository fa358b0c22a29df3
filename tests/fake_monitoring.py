"""A local gRPC endpoint speaking just enough of Cloud Monitoring (v3 and Dashboards v1).

Cloud Monitoring has no emulator, and ``google-cloud-monitoring`` has no REST transport: the
provider's official clients, given a gRPC channel to this server (`FakeMonitoring.clients`),
send here exactly what they would send to Google, serialized by the libraries' own types, so the
tests see the real requests: names, bodies, update masks. The answers are the minimum the
provider needs, plus the server behaviour it must cope with, not a model of the service:

* ids are the server's (``notificationChannels/<n>``, ``alertPolicies/<n>``, a condition's
  ``.../conditions/<n>``); a create that carries a name is refused, as Cloud Monitoring does;
* server defaults are filled in: a condition's ``trigger`` (count 1), a policy's
  ``alert_strategy.auto_close`` (7 days), creation and mutation records, a channel's
  ``verification_status``; on a dashboard, chart options, each data set's target axis and legend
  template, thresholds' colour and direction, and an etag;
* updates of channels and policies must carry an update mask and change only its paths; a
  dashboard update with a stale etag is ABORTED;
* a policy naming a channel that does not exist, or a custom metric without a descriptor, is
  refused (NOT_FOUND, as the real service answers "Cannot find metric(s) that match type");
  deleting a channel a policy uses without ``force`` is FAILED_PRECONDITION.
"""

from __future__ import annotations

from typing import Any

import grpc
from fake_grpc import Abort, GrpcFake, copy_message
from google.cloud import monitoring_dashboard_v1 as dash
from google.cloud import monitoring_v3 as mon
from google.cloud.monitoring_dashboard_v1.services.dashboards_service.transports import (
    DashboardsServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.alert_policy_service.transports import (
    AlertPolicyServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport
from google.cloud.monitoring_v3.services.notification_channel_service.transports import (
    NotificationChannelServiceGrpcTransport,
)
from google.protobuf import empty_pb2

AUTO_CLOSE_S = 7 * 24 * 3600


def _mask(request: Any) -> list[str]:
    return list(request.update_mask.paths) if "update_mask" in request else []


class FakeMonitoring(GrpcFake):
    """Notification channels, alert policies, metric descriptors, time series and dashboards."""

    def __init__(self) -> None:
        self.channels: dict[str, mon.NotificationChannel] = {}
        self.policies: dict[str, mon.AlertPolicy] = {}
        self.descriptors: dict[str, Any] = {}  # metric type -> descriptor (google.api.metric_pb2)
        self.time_series: list[mon.TimeSeries] = []
        self.dashboards: dict[str, dash.Dashboard] = {}
        services = {
            "google.monitoring.v3.NotificationChannelService": {
                "ListNotificationChannels": (mon.ListNotificationChannelsRequest, self._list_channels),
                "CreateNotificationChannel": (mon.CreateNotificationChannelRequest, self._create_channel),
                "UpdateNotificationChannel": (mon.UpdateNotificationChannelRequest, self._update_channel),
                "DeleteNotificationChannel": (mon.DeleteNotificationChannelRequest, self._delete_channel),
            },
            "google.monitoring.v3.AlertPolicyService": {
                "ListAlertPolicies": (mon.ListAlertPoliciesRequest, self._list_policies),
                "CreateAlertPolicy": (mon.CreateAlertPolicyRequest, self._create_policy),
                "UpdateAlertPolicy": (mon.UpdateAlertPolicyRequest, self._update_policy),
                "DeleteAlertPolicy": (mon.DeleteAlertPolicyRequest, self._delete_policy),
            },
            "google.monitoring.v3.MetricService": {
                "CreateMetricDescriptor": (mon.CreateMetricDescriptorRequest, self._create_descriptor),
                "CreateTimeSeries": (mon.CreateTimeSeriesRequest, self._create_time_series),
            },
            "google.monitoring.dashboard.v1.DashboardsService": {
                "ListDashboards": (dash.ListDashboardsRequest, self._list_dashboards),
                "GetDashboard": (dash.GetDashboardRequest, self._get_dashboard),
                "CreateDashboard": (dash.CreateDashboardRequest, self._create_dashboard),
                "UpdateDashboard": (dash.UpdateDashboardRequest, self._update_dashboard),
                "DeleteDashboard": (dash.DeleteDashboardRequest, self._delete_dashboard),
            },
        }
        super().__init__(services, first_id=1001)

    def clients(self) -> dict[str, Any]:
        """The official clients, on gRPC channels to this server (what `MonitoringProvider` takes)."""
        return {
            "channels": mon.NotificationChannelServiceClient(
                transport=NotificationChannelServiceGrpcTransport(channel=self.channel())),
            "policies": mon.AlertPolicyServiceClient(transport=AlertPolicyServiceGrpcTransport(channel=self.channel())),
            "metrics": mon.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=self.channel())),
            "dashboards": dash.DashboardsServiceClient(transport=DashboardsServiceGrpcTransport(channel=self.channel())),
        }

    # -- plumbing --

    # -- notification channels --

    def _list_channels(self, request: mon.ListNotificationChannelsRequest) -> mon.ListNotificationChannelsResponse:
        items, token = self._page(request, [c for n, c in sorted(self.channels.items())
                                            if n.startswith(request.name + "/")])
        return mon.ListNotificationChannelsResponse(notification_channels=items, next_page_token=token)

    def _create_channel(self, request: mon.CreateNotificationChannelRequest) -> mon.NotificationChannel:
        channel = copy_message(request.notification_channel)
        if channel.name:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "name must not be set on create")
        if channel.type_ == "email" and "email_address" not in channel.labels:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "email channels need labels.email_address")
        channel.name = f"{request.name}/notificationChannels/{self._next()}"
        channel.verification_status = mon.NotificationChannel.VerificationStatus.VERIFICATION_STATUS_UNSPECIFIED
        channel.creation_record = mon.MutationRecord(mutated_by="headwater@test")
        self.channels[channel.name] = channel
        return channel

    def _update_channel(self, request: mon.UpdateNotificationChannelRequest) -> mon.NotificationChannel:
        sent = request.notification_channel
        current = self.channels.get(sent.name)
        if current is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{sent.name} not found")
        paths = _mask(request)
        assert paths, "headwater always sends an update mask"
        for path in paths:
            _set(current, path, copy_message(sent))
        return current

    def _delete_channel(self, request: mon.DeleteNotificationChannelRequest) -> empty_pb2.Empty:
        if request.name not in self.channels:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        users = [p.name for p in self.policies.values() if request.name in p.notification_channels]
        if users and not request.force:
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                        f"Notification channel {request.name} is in use by alert policies {users}")
        del self.channels[request.name]
        return empty_pb2.Empty()

    # -- alert policies --

    def _list_policies(self, request: mon.ListAlertPoliciesRequest) -> mon.ListAlertPoliciesResponse:
        items, token = self._page(request, [p for n, p in sorted(self.policies.items())
                                            if n.startswith(request.name + "/")])
        return mon.ListAlertPoliciesResponse(alert_policies=items, next_page_token=token)

    def _check_policy(self, policy: mon.AlertPolicy) -> None:
        for name in policy.notification_channels:
            if name not in self.channels:
                raise Abort(grpc.StatusCode.NOT_FOUND, f"notification channel {name} does not exist")
        for condition in policy.conditions:
            if "condition_threshold" not in condition:
                continue
            text = condition.condition_threshold.filter
            for part in text.split(" AND "):
                if part.startswith('metric.type = "custom.googleapis.com/'):
                    metric = part.split('"')[1]
                    if metric not in self.descriptors:
                        raise Abort(grpc.StatusCode.NOT_FOUND, f'Cannot find metric(s) that match type = "{metric}".')

    def _with_defaults(self, policy: mon.AlertPolicy, name: str) -> mon.AlertPolicy:
        for condition in policy.conditions:
            if not condition.name:
                condition.name = f"{name}/conditions/{self._next()}"
            if "condition_threshold" not in condition:
                continue
            threshold = condition.condition_threshold
            if "trigger" not in threshold:
                threshold.trigger = mon.AlertPolicy.Condition.Trigger(count=1)
        if "alert_strategy" not in policy:
            policy.alert_strategy = mon.AlertPolicy.AlertStrategy(auto_close={"seconds": AUTO_CLOSE_S})
        policy.mutation_record = mon.MutationRecord(mutated_by="headwater@test")
        return policy

    def _create_policy(self, request: mon.CreateAlertPolicyRequest) -> mon.AlertPolicy:
        policy = copy_message(request.alert_policy)
        if policy.name:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "name must not be set on create")
        self._check_policy(policy)
        policy.name = f"{request.name}/alertPolicies/{self._next()}"
        policy.creation_record = mon.MutationRecord(mutated_by="headwater@test")
        self.policies[policy.name] = self._with_defaults(policy, policy.name)
        return self.policies[policy.name]

    def _update_policy(self, request: mon.UpdateAlertPolicyRequest) -> mon.AlertPolicy:
        sent = request.alert_policy
        current = self.policies.get(sent.name)
        if current is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{sent.name} not found")
        paths = _mask(request)
        assert paths, "headwater always sends an update mask"
        self._check_policy(sent)
        for path in paths:
            _set(current, path, copy_message(sent))
        return self._with_defaults(current, current.name)

    def _delete_policy(self, request: mon.DeleteAlertPolicyRequest) -> empty_pb2.Empty:
        if self.policies.pop(request.name, None) is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        return empty_pb2.Empty()

    # -- metrics --

    def _create_descriptor(self, request: mon.CreateMetricDescriptorRequest) -> Any:
        descriptor = request.metric_descriptor
        self.descriptors[descriptor.type] = descriptor
        return descriptor

    def _create_time_series(self, request: mon.CreateTimeSeriesRequest) -> empty_pb2.Empty:
        if len(request.time_series) > 200:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "at most 200 time series per request")
        self.time_series.extend(request.time_series)
        return empty_pb2.Empty()

    # -- dashboards --

    def _list_dashboards(self, request: dash.ListDashboardsRequest) -> dash.ListDashboardsResponse:
        items, token = self._page(request, [d for n, d in sorted(self.dashboards.items())
                                            if n.startswith(request.parent + "/")])
        return dash.ListDashboardsResponse(dashboards=items, next_page_token=token)

    def _get_dashboard(self, request: dash.GetDashboardRequest) -> dash.Dashboard:
        if request.name not in self.dashboards:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        return self.dashboards[request.name]

    def _dashboard_defaults(self, dashboard: dash.Dashboard) -> dash.Dashboard:
        for tile in dashboard.mosaic_layout.tiles:
            if "xy_chart" in tile.widget:
                chart = tile.widget.xy_chart
                chart.chart_options = dash.ChartOptions(mode=dash.ChartOptions.Mode.COLOR)
                for data_set in chart.data_sets:
                    data_set.target_axis = dash.XyChart.DataSet.TargetAxis.Y1
                    data_set.legend_template = data_set.legend_template or "${resource.labels.project_id}"
                for threshold in chart.thresholds:
                    threshold.color = dash.Threshold.Color.RED
                    threshold.direction = dash.Threshold.Direction.ABOVE
        dashboard.etag = f"etag-{self._next()}"
        return dashboard

    def _create_dashboard(self, request: dash.CreateDashboardRequest) -> dash.Dashboard:
        dashboard = copy_message(request.dashboard)
        if not dashboard.name:
            dashboard.name = f"{request.parent}/dashboards/{self._next()}"
        if not dashboard.name.startswith(request.parent + "/dashboards/"):
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{dashboard.name} is not under {request.parent}")
        if dashboard.name in self.dashboards:
            raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"{dashboard.name} already exists")
        self.dashboards[dashboard.name] = self._dashboard_defaults(dashboard)
        return dashboard

    def _update_dashboard(self, request: dash.UpdateDashboardRequest) -> dash.Dashboard:
        dashboard = copy_message(request.dashboard)
        current = self.dashboards.get(dashboard.name)
        if current is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{dashboard.name} not found")
        if dashboard.etag and dashboard.etag != current.etag:
            raise Abort(grpc.StatusCode.ABORTED, "etag mismatch")
        self.dashboards[dashboard.name] = self._dashboard_defaults(dashboard)
        return dashboard

    def _delete_dashboard(self, request: dash.DeleteDashboardRequest) -> empty_pb2.Empty:
        if self.dashboards.pop(request.name, None) is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        return empty_pb2.Empty()




def _set(target: Any, path: str, source: Any) -> None:
    """``target.<path> = source.<path>`` for one top-level field (a list or map is replaced whole)."""
    value = getattr(source, path)
    if isinstance(value, str | int | float | bool) or value is None:
        setattr(target, path, value)
    elif hasattr(value, "items"):
        setattr(target, path, dict(value.items()))
    elif hasattr(value, "__iter__") and not hasattr(type(value), "meta"):
        setattr(target, path, list(value))
    else:
        setattr(target, path, value)
