"""Cloud Monitoring provider: channels, alert policies and dashboards built with the client
libraries' own types, and the same requests sent through the official clients (gRPC: the
monitoring library has no REST transport) to a local endpoint (tests/fake_monitoring.py).

Cloud Monitoring has no emulator. What these tests cannot show - that the metric filters and
the PromQL query chart what docs/monitoring.md says, that a dashboard can be created with a
chosen name, which defaults the real server fills in - is verified only against the real
service (see the provider's docstring).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from fake_monitoring import FakeMonitoring
from google.cloud import monitoring_dashboard_v1 as dash
from google.cloud import monitoring_v3 as mon
from helpers import EXAMPLE

from providers.errors import AlreadyExists, PermanentError
from providers.monitoring_resources import (
    FRESHNESS_METRIC,
    KINDS,
    MonitoringProvider,
    build_channel,
    build_dashboard,
    build_policy,
    channel_resource,
    dashboard_resource,
    policy_mask,
    policy_resource,
)
from reconciler import cloud_monitoring
from reconciler.compile import compile_resources
from reconciler.load import load_repo
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind, Resource

PROJECT = "headwater-demo"


@pytest.fixture(scope="module")
def desired() -> list[Resource]:
    return [r for r in compile_resources(load_repo(EXAMPLE)) if r.kind in KINDS]


def of(resources: list[Resource], kind: Kind, name: str) -> Resource:
    return next(r for r in resources if r.kind == kind and r.name == name)


@pytest.fixture
def fake():
    server = FakeMonitoring()
    yield server
    server.close()


def provider_for(fake: FakeMonitoring) -> MonitoringProvider:
    return MonitoringProvider(PROJECT, clients=fake.clients())


def plan(desired: list[Resource], provider: MonitoringProvider):
    live = [r for kind in KINDS for r in provider.observe(kind)]
    return reconcile(desired, live, dict(provider.immutable_fields))


def apply_all(provider: MonitoringProvider, changes) -> None:
    for change in changes:
        if change.action == Action.CREATE:
            provider.create(change.desired)
        elif change.action == Action.UPDATE:
            provider.update(change.desired, list(change.update_fields))
        elif change.action == Action.DELETE:
            provider.delete(change.live)


# --------------------------------------------------------------------------- compile


def test_every_metric_name_the_model_accepts_is_realized():
    import typing

    from reconciler.config import Monitoring

    accepted = typing.get_args(typing.get_args(Monitoring.model_fields["metrics"].annotation)[0])
    assert set(accepted) == set(cloud_monitoring.METRICS)
    assert set(cloud_monitoring.DEFAULT_METRICS) <= set(accepted)


def test_the_example_compiles_a_channel_per_address_and_a_policy_and_dashboard_per_source(desired):
    channels = sorted(r.name for r in desired if r.kind == Kind.MONITORING_NOTIFICATION_CHANNEL)
    assert channels == ["data-team@example.com", "logistics-team@example.com", "payments-team@example.com",
                        "web-analytics@example.com"], "one channel per distinct alert_email"
    sources = {s.source_id for s in load_repo(EXAMPLE).sources}
    assert {r.name for r in desired if r.kind == Kind.MONITORING_ALERT_POLICY} == sources
    assert {r.name for r in desired if r.kind == Kind.MONITORING_DASHBOARD} == sources
    orders = of(desired, Kind.MONITORING_ALERT_POLICY, "orders")
    freshness, dead, lag = orders.spec["conditions"]
    assert FRESHNESS_METRIC in freshness["filter"] and freshness["threshold_value"] == 3600.0  # sla_minutes: 60
    assert freshness["evaluation_missing_data"] == "EVALUATION_MISSING_DATA_ACTIVE", "no report is a breach"
    assert 'subscription_id="orders-dlq-hold"' in dead["promql"] and dead["promql"].endswith("> 5"), \
        "dead letters against error_budget_percent (default 5)"
    assert 'job_name = "orders-ingest"' in lag["filter"]
    assert orders.spec["notification_emails"] == ["data-team@example.com"]
    assert orders.depends_on == ("monitoring_notification_channel.data-team@example.com",)
    board = of(desired, Kind.MONITORING_DASHBOARD, "orders")
    titles = [w["title"].split(":")[0] for w in board.spec["widgets"][1:]]
    assert titles == ["record_count", "latency_p95", "error_rate"], "the metrics orders.yaml declares, in order"


# --------------------------------------------------------------------------- requests (types)


def test_a_policy_survives_the_client_librarys_serialization_and_reads_back_as_its_spec(desired):
    resource = of(desired, Kind.MONITORING_ALERT_POLICY, "orders")
    channels = {"data-team@example.com": f"projects/{PROJECT}/notificationChannels/7"}
    policy = build_policy(resource, channels)
    assert mon.AlertPolicy.deserialize(mon.AlertPolicy.serialize(policy)) == policy
    assert policy.notification_channels == [f"projects/{PROJECT}/notificationChannels/7"]
    assert policy.documentation.mime_type == "text/markdown"
    threshold = policy.conditions[0].condition_threshold
    assert threshold.comparison == mon.ComparisonType.COMPARISON_GT and threshold.duration.total_seconds() == 300
    back = policy_resource(policy, {v: k for k, v in channels.items()})
    assert back.spec == resource.spec and back.labels == resource.labels and back.name == "orders"
    with pytest.raises(PermanentError, match="no headwater notification channel for data-team@example.com"):
        build_policy(resource, {})


def test_a_channel_and_a_dashboard_read_back_as_their_specs(desired):
    resource = of(desired, Kind.MONITORING_NOTIFICATION_CHANNEL, "data-team@example.com")
    channel = build_channel(resource)
    assert channel.type_ == "email" and channel.labels == {"email_address": "data-team@example.com"}
    assert channel_resource(channel).spec == resource.spec
    board = of(desired, Kind.MONITORING_DASHBOARD, "clickstream")
    dashboard = build_dashboard(board, PROJECT)
    assert dash.Dashboard.deserialize(dash.Dashboard.serialize(dashboard)) == dashboard
    assert dashboard.name == f"projects/{PROJECT}/dashboards/headwater-dev-clickstream"
    assert dashboard_resource(dashboard).spec == board.spec
    tiles = dashboard.mosaic_layout.tiles
    assert tiles[0].widget.text.content and tiles[0].width == 48, "the text first, full width"
    assert [(t.x_pos, t.y_pos) for t in tiles[1:]] == [(0, 4), (24, 4), (0, 20)], "charts two a row"
    freshness = tiles[3].widget.xy_chart
    assert freshness.thresholds[0].value == 300.0, "clickstream's SLA (5 min) as the threshold line"


def test_update_masks_name_only_the_changed_fields():
    assert policy_mask(["conditions", "labels"]) == ["conditions", "user_labels"]
    assert policy_mask(["notification_emails"]) == ["notification_channels"]
    with pytest.raises(PermanentError, match="no such field"):
        policy_mask(["severity"])


# --------------------------------------------------------------------------- through the clients


def test_apply_then_plan_converges_over_the_servers_defaults(fake, desired):
    provider = provider_for(fake)
    first = plan(desired, provider)
    assert {c.action for c in first.changes} == {Action.CREATE} and len(first.changes) == len(desired)
    apply_all(provider, first.changes)
    count = {kind: sum(r.kind == kind for r in desired) for kind in KINDS}
    assert (len(fake.channels), len(fake.policies), len(fake.dashboards)) == tuple(count[kind] for kind in KINDS)
    assert list(fake.descriptors) == [FRESHNESS_METRIC], "the freshness metric's descriptor, once"
    creates = [c.method for c in fake.mutating()]
    assert creates.index("CreateMetricDescriptor") < creates.index("CreateAlertPolicy")
    assert creates.count("CreateMetricDescriptor") == 1
    # A fresh provider (the next plan) sees no change, whatever the server filled in.
    again = plan(desired, provider_for(fake))
    assert [(c.address, c.action) for c in again.changes if c.action != Action.NOOP] == []
    policy = next(p for p in fake.policies.values() if p.user_labels["headwater-source"] == "orders")
    assert policy.conditions[0].name and policy.alert_strategy.auto_close, "server defaults were there"


def test_observe_is_one_list_per_kind_and_keeps_only_headwaters(fake, desired):
    provider = provider_for(fake)
    apply_all(provider, plan(desired, provider).changes)
    fake.channels["projects/x/notificationChannels/1"] = mon.NotificationChannel(
        name=f"projects/{PROJECT}/notificationChannels/1", type_="email",
        labels={"email_address": "someone@example.com"})
    fake.channels[f"projects/{PROJECT}/notificationChannels/1"] = fake.channels.pop("projects/x/notificationChannels/1")
    fake.page_size = 2
    fake.calls.clear()
    observer = provider_for(fake)
    channels = observer.observe(Kind.MONITORING_NOTIFICATION_CHANNEL)
    assert "someone@example.com" not in {c.name for c in channels}, "not labelled managed-by=headwater"
    assert {c.name for c in observer.read(Kind.MONITORING_NOTIFICATION_CHANNEL, ["someone@example.com"])} == {
        "someone@example.com"}, "read finds it whoever manages it"
    observer.observe(Kind.MONITORING_ALERT_POLICY)
    observer.observe(Kind.MONITORING_DASHBOARD)
    methods = fake.methods()
    assert set(methods) == {"ListNotificationChannels", "ListAlertPolicies", "ListDashboards"}
    pages = -(-len(fake.policies) // 2)
    assert methods.count("ListAlertPolicies") == pages > 1, "one list, in pages of 2"
    assert observer.api_calls()["monitoring.list_alert_policies"] == pages


def test_a_changed_sla_and_email_update_with_masks(fake, desired, tmp_path):
    provider = provider_for(fake)
    apply_all(provider, plan(desired, provider).changes)
    orders = of(desired, Kind.MONITORING_ALERT_POLICY, "orders")
    conditions = [dict(c) for c in orders.spec["conditions"]]
    conditions[0]["threshold_value"] = 7200.0
    changed = dataclasses.replace(orders, spec={**orders.spec, "conditions": conditions,
                                                "notification_emails": ["payments-team@example.com"]})
    channel = of(desired, Kind.MONITORING_NOTIFICATION_CHANNEL, "data-team@example.com")
    renamed = dataclasses.replace(channel, spec={**channel.spec, "display_name": "data team"})
    wanted = [changed if r is orders else renamed if r is channel else r for r in desired]
    fake.calls.clear()
    updater = provider_for(fake)
    step = plan(wanted, updater)
    assert {(c.address, c.update_fields) for c in step.changes if c.action == Action.UPDATE} == {
        ("monitoring_alert_policy.orders", ("conditions", "notification_emails")),
        ("monitoring_notification_channel.data-team@example.com", ("display_name",))}
    apply_all(updater, step.changes)
    updates = {c.method: c.request for c in fake.mutating()}
    assert list(updates["UpdateAlertPolicy"].update_mask.paths) == ["conditions", "notification_channels"]
    assert list(updates["UpdateNotificationChannel"].update_mask.paths) == ["display_name"]
    sent = updates["UpdateAlertPolicy"].alert_policy
    payments = next(n for n, c in fake.channels.items() if c.labels["email_address"] == "payments-team@example.com")
    assert list(sent.notification_channels) == [payments] and sent.name.startswith(f"projects/{PROJECT}/alertPolicies/")
    assert [c.method for c in fake.mutating()].count("CreateMetricDescriptor") <= 1
    assert plan(wanted, provider_for(fake)).actionable == []


def test_a_channel_in_use_by_someone_elses_policy_is_not_deleted(fake, desired):
    provider = provider_for(fake)
    apply_all(provider, plan(desired, provider).changes)
    name = next(n for n, c in fake.channels.items() if c.labels["email_address"] == "web-analytics@example.com")
    fake.policies[f"projects/{PROJECT}/alertPolicies/1"] = mon.AlertPolicy(
        name=f"projects/{PROJECT}/alertPolicies/1", display_name="someone's", notification_channels=[name])
    live = of(provider.observe(Kind.MONITORING_NOTIFICATION_CHANNEL), Kind.MONITORING_NOTIFICATION_CHANNEL,
              "web-analytics@example.com")
    with pytest.raises(PermanentError, match="in use"):
        provider.delete(live)
    delete = next(c for c in fake.calls if c.method == "DeleteNotificationChannel")
    assert delete.request.force is False and delete.request.name == name


def test_a_dashboard_is_replaced_whole_and_a_chart_added_by_hand_is_drift(fake, desired):
    provider = provider_for(fake)
    apply_all(provider, plan(desired, provider).changes)
    name = f"projects/{PROJECT}/dashboards/headwater-dev-orders"
    fake.dashboards[name].mosaic_layout.tiles.append(dash.MosaicLayout.Tile(
        x_pos=0, y_pos=100, width=24, height=16, widget=dash.Widget(title="mine", text=dash.Text(content="x"))))
    step = plan(desired, provider_for(fake))
    assert [(c.address, c.update_fields) for c in step.actionable] == [("monitoring_dashboard.orders", ("widgets",))]
    fake.calls.clear()
    apply_all(provider, step.actionable)
    (update,) = [c for c in fake.calls if c.method == "UpdateDashboard"]
    assert update.request.dashboard.name == name and not update.request.dashboard.etag
    assert "mine" not in {t.widget.title for t in fake.dashboards[name].mosaic_layout.tiles}
    with pytest.raises(AlreadyExists):
        provider.create(of(desired, Kind.MONITORING_DASHBOARD, "orders"))


def test_a_twin_made_by_a_retried_create_is_reported_apart_and_pruned(fake, desired):
    provider = provider_for(fake)
    apply_all(provider, plan(desired, provider).changes)
    original = next(p for p in fake.policies.values() if p.user_labels["headwater-source"] == "payments")
    twin = mon.AlertPolicy.deserialize(mon.AlertPolicy.serialize(original))
    twin.name = f"projects/{PROJECT}/alertPolicies/9999"
    fake.policies[twin.name] = twin
    with pytest.raises(AlreadyExists):
        provider_for(fake).create(of(desired, Kind.MONITORING_ALERT_POLICY, "payments"))
    step = plan(desired, provider_for(fake))
    (extra,) = [c for c in step.changes if c.action == Action.DELETE or c.address.endswith("~9999")]
    assert extra.address == "monitoring_alert_policy.payments~9999"


def test_deletes_go_by_the_servers_ids(fake, desired):
    provider = provider_for(fake)
    apply_all(provider, plan(desired, provider).changes)
    live = [r for kind in KINDS for r in provider_for(fake).observe(kind)]
    deleter = provider_for(fake)
    for resource in sorted(live, key=lambda r: KINDS.index(r.kind), reverse=True):
        deleter.delete(resource)
        deleter.delete(resource)  # gone already: success
    assert not fake.channels and not fake.policies and not fake.dashboards


def test_write_freshness_sends_one_point_per_source_on_global(fake):
    provider = provider_for(fake)
    now = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    provider.write_freshness("dev", {f"s{i}": float(i) for i in range(250)}, now=now)
    writes = [c.request for c in fake.calls if c.method == "CreateTimeSeries"]
    assert [len(w.time_series) for w in writes] == [200, 50], "at most 200 series a request"
    first = writes[0].time_series[0]
    assert first.metric.type == FRESHNESS_METRIC and dict(first.metric.labels) == {"platform": "dev", "source": "s0"}
    assert first.resource.type == "global" and dict(first.resource.labels) == {"project_id": PROJECT}
    assert first.points[0].value.double_value == 0.0 and first.points[0].interval.end_time == now


def test_a_metric_name_not_supported_is_refused_at_validate_with_file_line_field(tmp_path):
    import shutil

    from reconciler.load import InvalidDesiredState

    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo, ignore=shutil.ignore_patterns("sample-data"))
    orders = repo / "connectors" / "orders.yaml"
    orders.write_text(orders.read_text().replace("metrics: [record_count, latency_p95, error_rate]",
                                                 "metrics: [record_count, latency_p99, error_rate]"))
    with pytest.raises(InvalidDesiredState) as failed:
        load_repo(repo)
    (problem,) = failed.value.problems
    assert (problem.file, problem.field) == ("connectors/orders.yaml", "monitoring.metrics[1]")
    assert problem.line > 0 and "'latency_p95'" in problem.message


def test_a_source_with_several_tables_charts_and_counts_them_all():
    # A database_cdc source lands in a change log and a Silver table per database table.
    from reconciler.config import Platform

    platform = Platform.model_validate({"project": "project-one", "region": "europe-west1", "environment": "dev"})
    where = cloud_monitoring.Tables("bronze", ["shop_orders_changes", "shop_users_changes"],
                                    "silver", ["shop_orders", "shop_users"])
    rows = cloud_monitoring.METRICS["record_count"](platform, where, "shop", None)["chart"][0]["filter"]
    assert rows.endswith('metric.label.table = one_of("shop_orders", "shop_users")')
    budget = cloud_monitoring.dead_letter_condition(platform, where, "shop", 2.5)
    assert 'table=~"shop_orders_changes|shop_users_changes"' in budget["promql"] and budget["promql"].endswith("> 2.5")
