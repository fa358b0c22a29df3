"""Bad ``monitoring:`` input (issue 11): an alert_email that is not an email, an SLA of 0 or above
30 days, an error budget that is not a percentage - each reported with file:line:col and the
field, and nothing touched (not even an observe). Metric names are the Cloud Monitoring side's
(tests of reconciler/cloud_monitoring.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml

from providers.memory import MemoryProvider
from reconciler import cli
from reconciler.config import MAX_SLA_MINUTES
from reconciler.engine import Engine
from reconciler.load import InvalidDesiredState, load_repo


def monitoring(**values):
    def change(data):
        data["monitoring"].update(values)

    return change


CASES = [
    ("email-no-at", monitoring(alert_email="data-team"), "monitoring.alert_email",
     "alert_email 'data-team' is not an email address"),
    ("email-two-addresses", monitoring(alert_email="a@example.com, b@example.com"), "monitoring.alert_email",
     "is not an email address"),
    ("email-no-domain-dot", monitoring(alert_email="oncall@localhost"), "monitoring.alert_email",
     "is not an email address"),
    ("sla-zero", monitoring(sla_minutes=0), "monitoring.sla_minutes", "sla_minutes 0 is not a freshness SLA"),
    ("sla-negative", monitoring(sla_minutes=-5), "monitoring.sla_minutes", "at least 1"),
    ("sla-over-30-days", monitoring(sla_minutes=MAX_SLA_MINUTES + 1), "monitoring.sla_minutes",
     "is above 30 days (43200 minutes)"),
    ("sla-not-a-number", monitoring(sla_minutes="hourly"), "monitoring.sla_minutes", "valid integer"),
    ("budget-zero", monitoring(error_budget_percent=0), "monitoring.error_budget_percent",
     "is not a percentage of records"),
    ("budget-over-100", monitoring(error_budget_percent=150), "monitoring.error_budget_percent",
     "is not a percentage of records"),
]


@pytest.mark.parametrize(("change", "field", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_monitoring_input_is_reported_at_its_field_and_nothing_is_touched(tmp_path: Path, change, field,
                                                                                message, monkeypatch, capsys):
    repo = copy_example(tmp_path)
    edit_yaml(repo / "connectors" / "orders.yaml", change)
    line = next(n for n, text in enumerate((repo / "connectors" / "orders.yaml").read_text().splitlines(), 1)
                if text.strip().startswith(field.split(".")[-1] + ":"))

    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    problems = [str(p) for p in raised.value.problems]
    assert any(p.startswith(f"connectors/orders.yaml:{line}:") and f"{field}: " in p and message in p
               for p in problems), problems

    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    assert provider.calls == {} and provider.objects == {}
    assert "nothing was changed" in capsys.readouterr().err


@pytest.mark.parametrize("value", [1, 60, MAX_SLA_MINUTES])
def test_slas_from_a_minute_to_30_days_are_valid(tmp_path: Path, value):
    repo = copy_example(tmp_path)
    edit_yaml(repo / "connectors" / "orders.yaml", monitoring(sla_minutes=value, alert_email="on-call+data@example.co.uk"))
    source = next(s for s in load_repo(repo).sources if s.source_id == "orders")
    assert source.connector.monitoring.sla_minutes == value
    assert source.connector.monitoring.error_budget_percent == 5.0
