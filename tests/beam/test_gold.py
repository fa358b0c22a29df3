"""Silver -> Gold: SQL compilation (and rejection of anything that is not plain aggregation),
and the compiled SQL running on bqemulator through the bigquery_to_bigquery template."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from emulator_setup import create_table, schema_fields
from google.cloud import bigquery

from beam.bigquery_to_bigquery import run
from beam.common.clients import bigquery_client
from beam.common.gold import GoldError, compile_gold_sql
from beam.common.runner import counters
from beam.common.spec import parse_spec
from beam.common.synthetic import SPEC


def _spec(project: str = "hw-example", **gold: Any) -> Any:
    block = {
        "table": "gold.example_source_daily",
        "joins": [{"table": "gold.customers", "on": "customer_id"}],
        "group_by": ["customer_id", "date"],
        "metrics": ["sum(amount) as total_amount", "count(*) as transaction_count"],
    }
    block.update(gold)
    return parse_spec(dict(SPEC, project=project, gold=block))


def test_the_seed_example_compiles_to_this_sql() -> None:
    assert compile_gold_sql(_spec()) == (
        "SELECT\n"
        "  `silver`.`customer_id` AS `customer_id`,\n"
        "  DATE(`silver`.`timestamp`) AS `date`,\n"
        "  SUM(`silver`.`amount`) AS `total_amount`,\n"
        "  COUNT(*) AS `transaction_count`\n"
        "FROM `hw-example.silver.example_source` AS `silver`\n"
        "LEFT JOIN `hw-example.gold.customers` AS `customers` ON `silver`.`customer_id` = `customers`.`customer_id`\n"
        "GROUP BY `silver`.`customer_id`, DATE(`silver`.`timestamp`)"
    )


@pytest.mark.parametrize(
    ("metric", "sql"),
    [
        pytest.param("AVG(amount) AS mean", "AVG(`silver`.`amount`) AS `mean`", id="upper-case-keywords"),
        pytest.param("max(quantity)", "MAX(`silver`.`quantity`) AS `max_quantity`", id="default-name"),
        pytest.param("count(distinct email) as buyers", "COUNT(DISTINCT `silver`.`email`) AS `buyers`", id="count-distinct"),
        pytest.param("sum(amount * quantity) as revenue", "SUM((`silver`.`amount` * `silver`.`quantity`)) AS `revenue`", id="arithmetic"),
        pytest.param("sum(-amount + 1.5) as x", "SUM((-(`silver`.`amount`) + 1.5)) AS `x`", id="negation-and-float"),
        pytest.param("min(customers.segment) as seg", "MIN(`customers`.`segment`) AS `seg`", id="joined-column-by-alias"),
        pytest.param("sum(silver.amount) as t", "SUM(`silver`.`amount`) AS `t`", id="silver-qualified"),
        pytest.param("max(_ingested_at) as latest", "MAX(`silver`.`_ingested_at`) AS `latest`", id="metadata-column"),
    ],
)
def test_metric_expressions(metric: str, sql: str) -> None:
    assert f"  {sql}" in compile_gold_sql(_spec(metrics=[metric])).splitlines()


@pytest.mark.parametrize(
    ("metric", "why"),
    [
        pytest.param("sum(amount); DROP TABLE silver.x", "unexpected character ';'", id="statement-injection"),
        pytest.param("sum(amount) -- comment", "unexpected '-'", id="comment"),
        pytest.param("sum(amount) /* x */", "unexpected '/'", id="block-comment"),
        pytest.param("count('x')", "unexpected character", id="string-literal"),
        pytest.param("sum(amount) as `x`", "unexpected character", id="backquote"),
        pytest.param("sum((select 1))", "'select' is not a column", id="subquery"),
        pytest.param("session_user()", "not an allowed aggregate", id="unknown-function"),
        pytest.param("sum(sum(amount))", "aggregate SUM is not allowed here", id="nested-aggregate"),
        pytest.param("sum(date(timestamp))", "", id="scalar-inside-aggregate-is-fine"),
        pytest.param("sum(lower(email)) as x extra", "unexpected 'extra'", id="trailing-tokens"),
        pytest.param("sum(nope)", "'nope' is not a column of the Silver table", id="unknown-column"),
        pytest.param("sum(other.amount)", "'other' is not a joined table's alias", id="unknown-alias"),
        pytest.param("avg(distinct amount)", "DISTINCT is only allowed in COUNT", id="distinct-outside-count"),
        pytest.param("amount", "'amount' is not an allowed aggregate", id="not-an-aggregate"),
        pytest.param("count(*) as total_amount, sum(amount)", "unexpected ','", id="two-metrics-in-one"),
    ],
)
def test_malicious_or_invalid_metrics_are_rejected(metric: str, why: str) -> None:
    if not why:  # the control case: legal and compiles
        compile_gold_sql(_spec(metrics=[metric + " as x"]))
        return
    with pytest.raises(GoldError, match=re.escape(why)):
        compile_gold_sql(_spec(metrics=[metric]))


def test_date_shorthand_on_the_ingestion_time() -> None:
    sql = compile_gold_sql(_spec(time_field="_ingested_at"))
    assert "  DATE(`silver`.`_ingested_at`) AS `date`," in sql.splitlines()


@pytest.mark.parametrize(
    ("gold", "why"),
    [
        pytest.param({"group_by": ["customer_id", "lower(email) as customer_id"]}, "appears twice", id="duplicate-output"),
        pytest.param({"group_by": ["sum(amount) as s"]}, "aggregate SUM is not allowed here", id="aggregate-in-group-by"),
        pytest.param({"group_by": ["quantity * 2"]}, "needs 'AS <name>'", id="expression-needs-alias"),
        pytest.param({"joins": [{"table": "gold.customers", "on": "nope"}]}, "join on 'nope'", id="join-key-not-in-silver"),
        pytest.param({"joins": [{"table": "gold.customers", "on": "id", "alias": "silver"}]}, "alias 'silver'", id="alias-clash"),
        pytest.param({"group_by": ["date"], "time_field": "email"}, "time_field 'email'", id="time-field-not-a-timestamp"),
    ],
)
def test_invalid_gold_blocks_are_rejected(gold: dict[str, Any], why: str) -> None:
    with pytest.raises(GoldError, match=re.escape(why)):
        compile_gold_sql(_spec(**gold))


# --------------------------------------------------------------------------- on bqemulator


SILVER_ROWS = [
    {"id": "txn-1", "customer_id": "c1", "amount": 10.0, "timestamp": "2026-11-25T10:00:00+00:00"},
    {"id": "txn-2", "customer_id": "c1", "amount": 5.5, "timestamp": "2026-11-25T23:59:59+00:00"},
    {"id": "txn-3", "customer_id": "c1", "amount": 1.0, "timestamp": "2026-11-26T00:00:00+00:00"},
    {"id": "txn-4", "customer_id": "c2", "amount": 7.0, "timestamp": "2026-11-26T08:00:00+00:00"},
    {"id": "txn-5", "customer_id": "c9", "amount": 2.0, "timestamp": "2026-11-26T09:00:00+00:00"},  # no customer row
]


def test_gold_sql_runs_on_bqemulator(emulators: Any, project_id: str) -> None:
    spec = _spec(project_id, metrics=["sum(amount) as total_amount", "count(*) as transaction_count",
                                      "max(customers.segment) as segment"])
    client = bigquery_client(project_id)
    create_table(client, spec.table_ref("silver.example_source"), schema_fields(spec.fields))
    create_table(client, spec.table_ref("gold.customers"), [bigquery.SchemaField("customer_id", "STRING"),
                                                           bigquery.SchemaField("segment", "STRING")])
    assert not client.insert_rows_json(spec.table_ref("silver.example_source"), SILVER_ROWS)
    assert not client.insert_rows_json(spec.table_ref("gold.customers"), [
        {"customer_id": "c1", "segment": "retail"}, {"customer_id": "c2", "segment": "b2b"}])

    doc = dict(SPEC, project=project_id, gold={
        "table": "gold.example_source_daily", "joins": [{"table": "gold.customers", "on": ["customer_id"]}],
        "group_by": ["customer_id", "date"],
        "metrics": ["sum(amount) as total_amount", "count(*) as transaction_count", "max(customers.segment) as segment"],
    })
    for _ in range(2):  # a second run rebuilds the table: same rows, not twice as many
        got = counters(run(["--source_spec", json.dumps(doc)]))
        assert got["gold_rows_written"] == 4

    rows = client.query(f"SELECT * FROM `{spec.table_ref('gold.example_source_daily')}` ORDER BY customer_id, date").result()
    assert [(r.customer_id, r.date.isoformat(), r.total_amount, r.transaction_count, r.segment) for r in rows] == [
        ("c1", "2026-11-25", 15.5, 2, "retail"),
        ("c1", "2026-11-26", 1.0, 1, "retail"),
        ("c2", "2026-11-26", 7.0, 1, "b2b"),
        ("c9", "2026-11-26", 2.0, 1, None),  # LEFT JOIN: the unmatched sale still counts
    ]
