"""The serving layer (issue 12) without the emulators: what compile builds for reporting, the data
API and ML features; how the planner diffs views (normalized SQL; a materialized view's
definition change is a gated replacement that says it recomputes the view); the row access
policy DDL sent to BigQuery on GCP; and every bad input as file:line:col: field: message with
nothing changed. The emulator side: tests/test_serving_layer_e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml

from providers.memory import MemoryProvider
from reconciler import cli, sqltext
from reconciler.compile import compile_resources
from reconciler.engine import Engine
from reconciler.load import InvalidDesiredState, load_repo
from reconciler.plan import Action, PlanOptions, reconcile
from reconciler.resources import Kind, Resource

ORDERS = "connectors/orders.yaml"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


@pytest.fixture
def resources(repo: Path) -> dict[str, Resource]:
    return {r.address: r for r in compile_resources(load_repo(repo))}


# --------------------------------------------------------------------------- compile


def test_reporting_views_over_gold_and_a_materialized_view_partitioned_like_its_base(resources):
    view = resources["bigquery_view.reporting.orders_daily"]
    assert view.spec["query"] == ("SELECT `customer_id`, `date`, `total_amount`, `order_count` "
                                  "FROM `headwater-demo.gold.orders_daily`")
    assert view.spec["authorized_on"] == []
    assert "bigquery_table.gold.orders_daily" in view.depends_on and "bigquery_dataset.reporting" in view.depends_on
    mv = resources["bigquery_materialized_view.reporting.orders_by_customer"]
    assert mv.spec["query"].startswith("SELECT customer_id, date, SUM(total_amount) AS total_amount")
    assert "FROM `headwater-demo.gold.orders_daily`" in mv.spec["query"]  # zone name qualified
    assert (mv.spec["refresh_interval_ms"], mv.spec["max_staleness_s"]) == (1800_000, 4 * 3600)
    assert mv.spec["time_partitioning"] == {"type": "DAY", "field": "date"}
    assert mv.spec["clustering_fields"] == ["customer_id"]
    assert mv.holds_data, "a materialized view's replacement is gated"
    assert {"bigquery_view.reporting.payments_daily", "bigquery_view.reporting.clickstream_daily"} <= set(resources)


def test_api_views_are_authorized_on_gold_and_the_service_carries_the_api_document(resources):
    from serving.api.spec import parse_spec

    view = resources["bigquery_view.api.orders_daily"]
    assert view.spec["authorized_on"] == ["gold"]
    service = resources["cloud_run_service.data-api"]
    spec = service.spec
    assert spec["command"] == ["python", "-m", "serving.api"] and spec["public"] and spec["ingress"] == "all"
    assert spec["image"].startswith("europe-west1-docker.pkg.dev/headwater-demo/headwater/api:")
    assert spec["secrets"] == {"HEADWATER_API_SIGNING_KEY": "data-api-signing-key"}
    assert set(service.depends_on) >= {"bigquery_view.api.orders_daily", "bigquery_view.api.payments_daily"}
    document = parse_spec(spec["connector"])  # the runtime accepts what compile writes
    assert [s.name for s in document.sources] == ["orders_daily", "payments_daily"]
    orders = document.sources[0]
    assert orders.view == "headwater-demo.api.orders_daily" and orders.key == ("customer_id", "date")
    assert orders.scopes.read == "orders:read"


def test_api_clients_and_settings_from_platform_yaml(repo):
    def change(data):
        data["api"] = {"image": "europe-docker.pkg.dev/p/hw/api:2", "service_account": "api@p.iam.gserviceaccount.com",
                       "clients": {"partner.acme": {"secret_name": "acme-secret", "scopes": ["orders:read"],
                                                    "requests_per_hour": 50}}}

    edit_yaml(repo / "platform.yaml", change)
    service = next(r for r in compile_resources(load_repo(repo)) if r.name == "data-api")
    assert service.spec["secrets"]["HEADWATER_API_CLIENT_PARTNER_ACME"] == "acme-secret"
    assert service.spec["connector"]["clients"] == [{
        "client_id": "partner.acme", "secret_env": "HEADWATER_API_CLIENT_PARTNER_ACME", "scopes": ["orders:read"],
        "rate_limit": {"requests": 50, "per_seconds": 3600}}]
    assert service.spec["image"] == "europe-docker.pkg.dev/p/hw/api:2"
    assert service.spec["service_account"] == "api@p.iam.gserviceaccount.com"


def test_feature_table_and_its_batch_job(resources):
    from beam.common.features import compile_features_sql
    from beam.common.spec import parse_spec

    table = resources["bigquery_table.features.orders"]
    names = [c["name"] for c in table.spec["schema"]]
    assert names == ["customer_id", "feature_timestamp", "spend_7d", "spend_30d", "spend_90d", "orders_7d",
                     "orders_30d", "orders_90d", "_last_event_at"]
    assert table.spec["time_partitioning"] == {"type": "DAY", "field": "feature_timestamp"}
    job = resources["dataflow_job.orders-features"]
    assert (job.spec["template"], job.spec["streaming"], job.spec["schedule"]) == ("bigquery_to_bigquery", False,
                                                                                  "30 * * * *")
    spec = parse_spec(job.spec["pipeline"])  # the template accepts it
    sql = compile_features_sql(spec.table_ref(spec.silver_table), spec.features)
    assert "e.`__ts` < s.`feature_timestamp`" in sql, "no row after the feature's timestamp"
    assert "INTERVAL 7776000 SECOND" in sql


# --------------------------------------------------------------------------- plan


def _view(query: str, kind: Kind = Kind.BIGQUERY_VIEW, **spec) -> Resource:
    labels = {"managed-by": "headwater"}
    return Resource(kind, "reporting.v", {"query": sqltext.normalize(query), **spec}, labels)


IMMUTABLE = {Kind.BIGQUERY_VIEW: frozenset(),
             Kind.BIGQUERY_MATERIALIZED_VIEW: frozenset({"query", "time_partitioning", "clustering_fields"})}


def test_whitespace_comments_and_keyword_case_are_no_change():
    live = _view("select a,  b -- the columns\n from `p.gold.t`  where a > 1")
    desired = _view("SELECT a, b\nFROM `p.gold.t`\nWHERE a > 1;")
    plan = reconcile([desired], [live], IMMUTABLE)
    assert [c.action for c in plan.changes] == [Action.NOOP]
    changed = reconcile([_view("SELECT a FROM `p.gold.t`")], [live], IMMUTABLE)
    assert [c.action for c in changed.changes] == [Action.UPDATE], "a view's SQL changes in place"


def test_a_materialized_view_definition_change_is_a_gated_replacement_that_recomputes_it():
    live = _view("SELECT a, SUM(b) AS b FROM `p.gold.t` GROUP BY a", Kind.BIGQUERY_MATERIALIZED_VIEW)
    desired = Resource(live.kind, live.name, {"query": sqltext.normalize("SELECT a, MAX(b) AS b FROM `p.gold.t` "
                                                                          "GROUP BY a")},
                       live.labels, deletion_protection=False)
    (change,) = reconcile([desired], [live], IMMUTABLE).changes
    assert change.action == Action.REPLACE and change.replace_paths == ["query"]
    assert "recomputes the whole view" in change.reason
    assert change.blocked and "--allow-destroy" in change.blocked
    (allowed,) = reconcile([desired], [live], IMMUTABLE, PlanOptions(allow_destroy=True)).changes
    assert allowed.action == Action.REPLACE and not allowed.blocked


def test_sql_table_references():
    refs = sqltext.table_references("WITH x AS (SELECT * FROM gold.a) SELECT * FROM x JOIN `silver.b` USING (k) "
                                    "JOIN p.gold.c ON TRUE")
    assert refs == ["gold.a", "silver.b", "p.gold.c"]
    assert sqltext.qualify("select * from gold.a join `silver.b` using (k)", "p", {"gold": "marts", "silver": "silver"}) \
        == "select * from `p.marts.a` join `p.silver.b` using (k)"


# --------------------------------------------------------------------------- row access policies on GCP


class _Recorder:
    def __init__(self) -> None:
        self.sql: list[str] = []

    def query_and_wait(self, sql, **_kwargs):
        self.sql.append(sql)
        return []


def test_row_access_policy_requests_on_gcp_shape(monkeypatch):
    """bqemulator has no CREATE OR REPLACE ROW ACCESS POLICY (a marked departure): the GCP path's
    requests are checked here, as sent."""
    monkeypatch.delenv("BIGQUERY_EMULATOR_HOST", raising=False)
    from providers.bigquery_views import BigQueryViewProvider

    recorder = _Recorder()
    provider = BigQueryViewProvider("p", "europe-west1", client=recorder)  # type: ignore[arg-type]
    policy = Resource(Kind.BIGQUERY_ROW_ACCESS_POLICY, "gold.orders_daily.eu",
                      {"table": "gold.orders_daily", "grantees": ["group:eu@example.com", "user:ana@example.com"],
                       "filter": "customer_id LIKE 'EU-%'"}, {"managed-by": "headwater"})
    provider.create(policy)
    provider.update(policy, ["filter"])
    provider.delete(policy)
    assert recorder.sql == [
        "CREATE ROW ACCESS POLICY `headwater_eu` ON `p.gold.orders_daily` GRANT TO (\"group:eu@example.com\", "
        "\"user:ana@example.com\") FILTER USING (customer_id LIKE 'EU-%')",
        "CREATE OR REPLACE ROW ACCESS POLICY `headwater_eu` ON `p.gold.orders_daily` GRANT TO "
        "(\"group:eu@example.com\", \"user:ana@example.com\") FILTER USING (customer_id LIKE 'EU-%')",
        "DROP ROW ACCESS POLICY IF EXISTS `headwater_eu` ON `p.gold.orders_daily`",
    ]


def test_row_access_rules_compile_to_policies(repo):
    edit_yaml(repo / ORDERS, lambda d: d["serving"]["reporting"].update(row_access=[
        {"name": "eu", "table": "orders_daily", "principals": ["group:eu@example.com", "group:eu@example.com"],
         "filter": "customer_id  LIKE 'EU-%'"}]))
    policy = next(r for r in compile_resources(load_repo(repo)) if r.kind == Kind.BIGQUERY_ROW_ACCESS_POLICY)
    assert policy.address == "bigquery_row_access_policy.gold.orders_daily.eu"
    assert policy.spec == {"table": "gold.orders_daily", "grantees": ["group:eu@example.com"],
                           "filter": "customer_id LIKE 'EU-%'"}
    assert policy.depends_on == ("bigquery_table.gold.orders_daily",)


# --------------------------------------------------------------------------- bad input


def _problems(repo: Path) -> list[str]:
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    return [str(p) for p in raised.value.problems]


def _no_gold(data):
    data["processing"]["silver_to_gold"] = []


BAD = {
    "a serving flag on a source without Gold tables": (
        ORDERS, _no_gold, "serving.third_party_api: orders has no Gold tables"),
    "a view reading an undeclared table": (
        ORDERS, lambda d: d["serving"]["reporting"]["views"][0].update(sql="SELECT * FROM gold.refunds"),
        "serving.reporting.views.0.sql: table 'gold.refunds' is not declared by this platform"),
    "a row access principal that is not an IAM principal": (
        ORDERS, lambda d: d["serving"]["reporting"].update(row_access=[
            {"name": "eu", "table": "orders_daily", "principals": ["eu-team@example.com"], "filter": "TRUE"}]),
        "serving.reporting.row_access[0].principals[0]: 'eu-team@example.com' is not an IAM principal"),
    "a feature window that is not a duration": (
        ORDERS, lambda d: d["serving"]["ml_features"].update(windows=["7d", "a month"]),
        "serving.ml_features.windows[1]: invalid duration 'a month'"),
    "a row access rule on another source's table": (
        ORDERS, lambda d: d["serving"]["reporting"].update(row_access=[
            {"name": "eu", "table": "payments_daily", "principals": ["group:eu@example.com"], "filter": "TRUE"}]),
        "serving.reporting.row_access.0.table: 'payments_daily' is not a Gold table of orders"),
    "an API scope of a source that does not serve the API": (
        "platform.yaml", lambda d: d["api"].update(clients={"acme": {"secret_name": "s", "scopes": ["clickstream:read"]}}),
        "api.clients.acme.scopes.0: scope 'clickstream:read' names 'clickstream', which does not serve the data API"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_at_validate_with_its_line_and_field(repo, case, capsys, monkeypatch):
    file, change, expected = BAD[case]
    edit_yaml(repo / file, change)
    problems = _problems(repo)
    assert any(expected in p for p in problems), problems
    matching = next(p for p in problems if expected in p)
    assert matching.startswith(f"{file}:") and matching.split(":")[1].isdigit(), "file:line:col"
    # ... and nothing is changed: apply stops before any API call.
    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    assert provider.calls == {} and provider.objects == {}, "validation fails before any API call"
    assert "nothing was changed" in capsys.readouterr().err
