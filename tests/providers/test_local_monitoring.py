"""The recording stand-in for Cloud Monitoring (providers/local_monitoring.py): on the emulators a
plan after an apply converges, and a change is an update of the named fields only. Nothing is
evaluated or sent locally: what the resources do is verified only on GCP."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import EXAMPLE

from providers import build_providers
from providers.errors import AlreadyExists
from providers.local_monitoring import KINDS, LocalMonitoringProvider
from reconciler.compile import compile_resources
from reconciler.load import load_repo
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind


def test_records_converge_across_processes_and_update_only_named_fields(tmp_path):
    desired = [r for r in compile_resources(load_repo(EXAMPLE)) if r.kind in KINDS]
    provider = LocalMonitoringProvider("headwater-demo", tmp_path)
    live = [r for kind in KINDS for r in provider.observe(kind)]
    plan = reconcile(desired, live, dict(provider.immutable_fields))
    assert {c.action for c in plan.changes} == {Action.CREATE}
    for change in plan.changes:
        provider.create(change.desired)
    with pytest.raises(AlreadyExists):
        provider.create(desired[0])
    again = LocalMonitoringProvider("headwater-demo", tmp_path)  # the next CLI call
    live = [r for kind in KINDS for r in again.observe(kind)]
    assert reconcile(desired, live, dict(again.immutable_fields)).actionable == []
    assert (tmp_path / "monitoring" / "headwater-demo" / "monitoring_notification_channel"
            / "data-team%40example.com.json").is_file()
    policy = next(r for r in desired if r.kind == Kind.MONITORING_ALERT_POLICY and r.name == "orders")
    changed = dataclasses.replace(policy, spec={**policy.spec, "notification_emails": []})
    again.update(changed, ["notification_emails"])
    (read,) = again.read(Kind.MONITORING_ALERT_POLICY, ["orders"])
    assert read.spec == {**policy.spec, "notification_emails": []}
    again.delete(read)
    again.delete(read)  # gone already: success
    assert "orders" not in {r.name for r in again.observe(Kind.MONITORING_ALERT_POLICY)}


def test_the_stand_in_is_wired_when_an_emulator_is_targeted(monkeypatch, tmp_path):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    providers = build_providers("headwater-demo", "europe-west1", state_dir=tmp_path)
    owners = {kind: type(p).__name__ for p in providers for kind in p.kinds}
    assert {owners[kind] for kind in KINDS} == {"LocalMonitoringProvider"}
