"""The generic recording stand-in (providers/local_record.py) for kinds no emulator implements:
it records what would be applied, says so in exactly one line per applied change, and a plan
after an apply converges ("No changes"). Nothing is granted, tagged or masked locally: what the
recorded resources do is verified only on GCP."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from providers.errors import AlreadyExists, NotFound, PermanentError
from providers.local_record import LocalRecordProvider
from reconciler.plan import Action, reconcile
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, PLATFORM_KEY, Kind, Resource

LABELS = {MANAGED_BY_KEY: MANAGED_BY_VALUE, PLATFORM_KEY: "demo"}
KINDS = {Kind.IAM_BINDING: "no IAM on the emulators", Kind.PROJECT_AUDIT_CONFIG: "no audit logs on the emulators"}
IMMUTABLE = {Kind.IAM_BINDING: frozenset({"target", "role"})}


def _desired() -> list[Resource]:
    return [
        Resource(Kind.IAM_BINDING, "bigquery_dataset:silver:roles/bigquery.dataViewer",
                 {"target": "bigquery_dataset.silver", "role": "roles/bigquery.dataViewer",
                  "members": ["group:analysts@example.com"], "exclusive": False}, LABELS),
        Resource(Kind.IAM_BINDING, "pubsub_topic:orders-dlq:roles/pubsub.publisher",
                 {"target": "pubsub_topic.orders-dlq", "role": "roles/pubsub.publisher",
                  "members": ["serviceAgent:pubsub"], "exclusive": False}, LABELS),
        Resource(Kind.PROJECT_AUDIT_CONFIG, "bigquery.googleapis.com",
                 {"log_types": ["ADMIN_READ", "DATA_READ", "DATA_WRITE"]}, LABELS),
    ]


def _skipped_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "providers.local_record" and r.levelno == logging.WARNING]


def _observe(provider: LocalRecordProvider) -> list[Resource]:
    return [r for kind in provider.kinds for r in provider.observe(kind)]


def test_records_say_one_line_per_change_and_a_second_plan_converges(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="providers.local_record")
    desired = _desired()
    provider = LocalRecordProvider("headwater-demo", tmp_path, kinds=KINDS, immutable_fields=IMMUTABLE)
    assert provider.kinds == (Kind.IAM_BINDING, Kind.PROJECT_AUDIT_CONFIG)
    plan = reconcile(desired, _observe(provider), dict(provider.immutable_fields))
    assert [c.action for c in plan.changes] == [Action.CREATE] * 3
    for change in plan.changes:
        provider.create(change.desired)
    assert _skipped_lines(caplog) == [
        "skipped on the emulators: iam_binding.bigquery_dataset:silver:roles/bigquery.dataViewer "
        "(no IAM on the emulators)",
        "skipped on the emulators: iam_binding.pubsub_topic:orders-dlq:roles/pubsub.publisher "
        "(no IAM on the emulators)",
        "skipped on the emulators: project_audit_config.bigquery.googleapis.com (no audit logs on the emulators)",
    ]
    # The next CLI call (a new process) sees the records: nothing to do.
    again = LocalRecordProvider("headwater-demo", tmp_path, kinds=KINDS, immutable_fields=IMMUTABLE)
    assert reconcile(desired, _observe(again), dict(again.immutable_fields)).actionable == []
    record = tmp_path / "recorded" / "headwater-demo" / "iam_binding" / \
        "pubsub_topic%3Aorders-dlq%3Aroles%2Fpubsub.publisher.json"
    assert record.is_file()
    with pytest.raises(AlreadyExists):
        again.create(desired[0])


def test_update_changes_named_fields_only_and_delete_is_idempotent(tmp_path, caplog):
    provider = LocalRecordProvider("p", tmp_path, kinds=KINDS, immutable_fields=IMMUTABLE)
    binding = _desired()[0]
    provider.create(binding)
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="providers.local_record")
    wider = dataclasses.replace(binding, spec={**binding.spec, "members": ["group:a@example.com", "user:b@example.com"],
                                               "exclusive": True})
    provider.update(wider, ["members"])
    (read,) = provider.read(Kind.IAM_BINDING, [binding.name])
    assert read.spec == {**binding.spec, "members": ["group:a@example.com", "user:b@example.com"]}
    with pytest.raises(PermanentError, match="role cannot change in place"):
        provider.update(dataclasses.replace(binding, spec={**binding.spec, "role": "roles/owner"}), ["role"])
    provider.delete(read)
    provider.delete(read)  # gone already: success, and nothing happened to say
    assert len(_skipped_lines(caplog)) == 2
    assert provider.observe(Kind.IAM_BINDING) == []
    with pytest.raises(NotFound):
        provider.update(wider, ["members"])


def test_only_headwaters_records_are_observed_and_other_kinds_are_refused(tmp_path):
    provider = LocalRecordProvider("p", tmp_path, kinds=KINDS)
    foreign = Resource(Kind.PROJECT_AUDIT_CONFIG, "storage.googleapis.com", {"log_types": ["DATA_READ"]}, {})
    provider.create(foreign)
    assert provider.observe(Kind.PROJECT_AUDIT_CONFIG) == []
    assert [r.name for r in provider.read(Kind.PROJECT_AUDIT_CONFIG, ["storage.googleapis.com"])] == \
        ["storage.googleapis.com"]
    with pytest.raises(PermanentError, match="unsupported kind"):
        provider.observe(Kind.PUBSUB_TOPIC)


def test_iam_kinds_go_to_the_stand_in_on_the_emulators_and_to_iam_on_gcp(monkeypatch, tmp_path):
    from helpers import EXAMPLE

    from providers import build_providers
    from reconciler.compile import zone_names
    from reconciler.load import load_repo

    platform = load_repo(EXAMPLE).platform
    for var in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    owners = {kind: p for p in build_providers("headwater-demo", "europe-west1", platform=platform) for kind in p.kinds}
    iam = owners[Kind.IAM_BINDING]
    assert type(iam).__name__ == "IamProvider" and owners[Kind.PROJECT_AUDIT_CONFIG] is iam
    assert iam.ledger.url == f"gs://{zone_names(platform).buckets['landing']}/_headwater/iam-ledger.json"

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    owners = {kind: p for p in build_providers("headwater-demo", "europe-west1", state_dir=tmp_path) for kind in p.kinds}
    assert type(owners[Kind.IAM_BINDING]).__name__ == "LocalRecordProvider"
    assert owners[Kind.IAM_BINDING].immutable_fields[Kind.IAM_BINDING] == frozenset({"target", "role"})
