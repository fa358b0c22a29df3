"""Validation: every bad input gets file:line:col, the field and a clear message — and nothing
is touched. `headwater apply` is run on each broken repo against an in-memory provider that
counts calls: validation must fail before the first API call (not even an observe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml

from providers.memory import MemoryProvider
from reconciler import cli, yamlsrc
from reconciler.engine import Engine
from reconciler.load import InvalidDesiredState, load_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def write(repo: Path, relative: str, text: str) -> None:
    path = repo / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def set_in(relative: str, *keys, value=None, delete=False):
    """A mutation of one YAML file of the repo: set (or delete) the value at ``keys``."""

    def mutate(repo: Path) -> None:
        def change(data):
            target = data
            for key in keys[:-1]:
                target = target[key]
            if delete:
                del target[keys[-1]]
            else:
                target[keys[-1]] = value

        edit_yaml(repo / relative, change)

    return mutate


def writes(relative: str, text: str):
    return lambda repo: write(repo, relative, text)


def schema_with(relative: str, change):
    def mutate(repo: Path) -> None:
        path = repo / relative
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data, indent=2))

    return mutate


MINIMAL = """source_id: {sid}
ingestion: {{pattern: event_streaming}}
schema: {{file: schemas/{sid}.json}}
"""

CASES = [
    # (id, mutation, expected "file:line" prefix, expected message fragment)
    ("yaml-syntax", writes("connectors/broken.yaml", "source_id: broken\ningestion: [\n"),
     "connectors/broken.yaml:3:", "invalid YAML"),
    ("unknown-key-did-you-mean", set_in("connectors/orders.yaml", "ingestion", "schedul", value="0 3 * * *"),
     "connectors/orders.yaml:", "ingestion.schedul: unknown key 'schedul' (did you mean 'schedule'?)"),
    ("unknown-top-level-key", set_in("connectors/orders.yaml", "monitorng", value={}),
     "connectors/orders.yaml:", "unknown key 'monitorng' (did you mean 'monitoring'?)"),
    ("wrong-type", set_in("platform.yaml", "pubsub", "ack_deadline_seconds", value="soon"),
     "platform.yaml:", "pubsub.ack_deadline_seconds: Input should be a valid integer"),
    ("missing-required", set_in("connectors/orders.yaml", "ingestion", "format", delete=True),
     "connectors/orders.yaml:", "ingestion.format: required field is missing"),
    ("streaming-avro-unsupported", set_in("connectors/clickstream.yaml", "ingestion", "message_format", value="avro"),
     "connectors/clickstream.yaml:", "ingestion.message_format: 'avro' messages are not supported yet"),
    ("unknown-pattern", set_in("connectors/orders.yaml", "ingestion", "pattern", value="carrier_pigeon"),
     "connectors/orders.yaml:", "ingestion.pattern"),
    ("duplicate-source-id", writes("connectors/orders_copy.yaml", MINIMAL.format(sid="orders")),
     "connectors/orders_copy.yaml:1:1", "duplicate source_id 'orders'"),
    ("file-name-mismatch", writes("connectors/shipments.yaml", MINIMAL.format(sid="parcels")),
     "connectors/shipments.yaml:1:1", "does not match the file name 'shipments.yaml'"),
    ("schema-file-missing", set_in("connectors/orders.yaml", "schema", "file", value="schemas/nope.json"),
     "connectors/orders.yaml:", "schema.file: schema file 'schemas/nope.json' does not exist"),
    ("schema-path-traversal", set_in("connectors/orders.yaml", "schema", "file", value="../../../etc/passwd"),
     "connectors/orders.yaml:", "points outside the repository"),
    ("schema-absolute-path", set_in("connectors/orders.yaml", "schema", "file", value="/etc/passwd"),
     "connectors/orders.yaml:", "points outside the repository"),
    ("schema-other-source-id", schema_with("schemas/orders.json", lambda d: d.update(source_id="payments")),
     "schemas/orders.json:", "schema source_id 'payments' does not match connector 'orders'"),
    ("schema-bad-json", writes("schemas/orders.json", '{"source_id": "orders",, }'),
     "schemas/orders.json:1:", "invalid JSON"),
    ("schema-record-without-fields",
     schema_with("schemas/orders.json", lambda d: d["fields"].append({"name": "x", "type": "RECORD"})),
     "schemas/orders.json:", "needs nested fields"),
    ("dedup-field-not-in-schema",
     set_in("connectors/orders.yaml", "processing", "bronze_to_silver", 0, "deduplication", "key", value=["order_idd"]),
     "connectors/orders.yaml:", "deduplication key 'order_idd' is not a field of schemas/orders.json (did you mean 'order_id'?)"),
    ("partition-field-not-in-schema", set_in("connectors/orders.yaml", "silver", "partition_field", value="created"),
     "connectors/orders.yaml:", "silver.partition_field: partition field 'created' is not a field"),
    ("partition-field-wrong-type", set_in("connectors/orders.yaml", "silver", "partition_field", value="currency"),
     "connectors/orders.yaml:", "partition field 'currency' has type STRING"),
    ("cluster-field-not-in-schema", set_in("connectors/orders.yaml", "silver", "cluster_by", value=["shop"]),
     "connectors/orders.yaml:", "silver.cluster_by[0]: cluster field 'shop' is not a field"),
    ("too-many-cluster-fields",
     set_in("connectors/orders.yaml", "silver", "cluster_by", value=["order_id", "customer_id", "currency", "amount", "ordered_at"]),
     "connectors/orders.yaml:", "silver.cluster_by"),
    ("quality-field-not-in-schema",
     set_in("connectors/orders.yaml", "processing", "bronze_to_silver", 1, "data_quality", "rules", 0, "field", value="mail"),
     "connectors/orders.yaml:", "data_quality field 'mail' is not a field"),
    ("bad-source-id", writes("connectors/Bad-Id.yaml", MINIMAL.format(sid="Bad-Id")),
     "connectors/Bad-Id.yaml:1:", "is not a valid source_id"),
    ("bucket-name-too-long", set_in("platform.yaml", "zones", "landing", value={"bucket": "x" * 64}),
     "platform.yaml:", "is not a valid bucket name: it is 64 characters"),
    ("bucket-name-google", set_in("platform.yaml", "zones", "landing", value={"bucket": "my-google-bucket"}),
     "platform.yaml:", "must not start with 'goog' or contain 'google'"),
    ("derived-bucket-name", set_in("platform.yaml", "project", value="google-analytics"),
     "platform.yaml:", "derived as landing-<project>-<region>"),
    ("dataset-name", set_in("platform.yaml", "zones", "gold", value={"dataset": "gold-zone"}),
     "platform.yaml:", "is not a valid BigQuery dataset id"),
    ("gold-table-name", set_in("connectors/orders.yaml", "processing", "silver_to_gold", 1, "aggregate", "table",
                               value="orders-daily"),
     "connectors/orders.yaml:", "is not a valid BigQuery table id"),
    ("topic-name", set_in("connectors/clickstream.yaml", "ingestion", "pubsub_topic", value="goog-events"),
     "connectors/clickstream.yaml:", "must not start with 'goog'"),
    ("label-key", set_in("platform.yaml", "labels", value={"Team": "x"}),
     "platform.yaml:", "is not a valid label key"),
    ("label-value", set_in("connectors/orders.yaml", "labels", value={"team": "Data Platform"}),
     "connectors/orders.yaml:", "is not a valid label value"),
    ("cron-syntax", set_in("connectors/orders.yaml", "ingestion", "schedule", value="0 25 * * *"),
     "connectors/orders.yaml:", "hour field '25': 25 is outside 0-23"),
    ("cron-field-count", set_in("connectors/orders.yaml", "ingestion", "schedule", value="daily"),
     "connectors/orders.yaml:", "expected 5 fields"),
    ("duration-syntax", set_in("platform.yaml", "pubsub", "message_retention", value="a week"),
     "platform.yaml:", "invalid duration 'a week'"),
    ("metric-expression", set_in("connectors/orders.yaml", "processing", "silver_to_gold", 1, "aggregate", "metrics",
                                 value=["sum(amount); DROP TABLE x as t"]),
     "connectors/orders.yaml:", "invalid metric"),
    ("yaml-alias-bomb", writes("connectors/bomb.yaml", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6))),
     "connectors/bomb.yaml:", "expands to more than"),
    ("file-over-1MiB", writes("connectors/huge.yaml", "source_id: huge\n" + "#" * (1024 * 1024 + 10) + "\n"),
     "connectors/huge.yaml:1:1", "over the 1048576-byte limit; not loaded"),
    ("unsafe-yaml-tag", writes("connectors/evil.yaml", "source_id: !!python/object/apply:os.system ['true']\n"),
     "connectors/evil.yaml:1:", "unsupported YAML tag"),
    ("unsafe-yaml-scalar-tag", writes("connectors/evil.yaml", "source_id: !!python/name:os.system x\n"),
     "connectors/evil.yaml:1:", "unsupported YAML value"),
    ("yaml-duplicate-key", writes("connectors/twice.yaml", "source_id: twice\nsource_id: again\n"),
     "connectors/twice.yaml:2:1", "duplicate key 'source_id'"),
    ("platform-missing", lambda repo: (repo / "platform.yaml").unlink(),
     "platform.yaml:1:1", "a desired-state repo needs platform.yaml"),
    ("empty-connector-file", writes("connectors/empty.yaml", ""),
     "connectors/empty.yaml:1:1", "expected a mapping at the top level"),
    ("rest-api-without-endpoint", set_in("connectors/payments.yaml", "ingestion", "api_endpoint", delete=True),
     "connectors/payments.yaml:", "a rest_api connector needs api_endpoint and poll_interval"),
    # Connectors (streaming_api): what would leak a credential, hammer an API, or be ignored.
    ("http-endpoint-off-loopback",
     set_in("connectors/payments.yaml", "ingestion", "api_endpoint", value="http://api.example.com/v1/charges"),
     "connectors/payments.yaml:", "plain http:// is allowed only for loopback hosts"),
    ("oauth2-token-url-off-loopback",
     set_in("connectors/payments.yaml", "ingestion", value={
         "pattern": "streaming_api", "connector_type": "rest_api", "api_endpoint": "https://api.example.com/x",
         "poll_interval": "60s", "auth_type": "oauth2", "secret_name": "k",
         "oauth2": {"token_url": "http://auth.example.com/token"}}),
     "connectors/payments.yaml:", "ingestion.oauth2.token_url: 'http://auth.example.com/token': plain http://"),
    ("auth-without-secret", set_in("connectors/payments.yaml", "ingestion", "secret_name", delete=True),
     "connectors/payments.yaml:", "ingestion.secret_name: auth_type bearer_token needs secret_name"),
    ("secret-without-auth", set_in("connectors/payments.yaml", "ingestion", "auth_type", value="none"),
     "connectors/payments.yaml:", "secret_name is set but auth_type is none"),
    ("secret-value-not-an-id",
     set_in("connectors/payments.yaml", "ingestion", "secret_name", value="sk_live 123/abc"),
     "connectors/payments.yaml:", "is not a valid Secret Manager secret id"),
    ("poll-interval-under-10s", set_in("connectors/payments.yaml", "ingestion", "poll_interval", value="5s"),
     "connectors/payments.yaml:10:3", "ingestion.poll_interval: poll_interval 5s is under the minimum of 10s"),
    ("oauth2-without-token-url", set_in("connectors/payments.yaml", "ingestion", "auth_type", value="oauth2"),
     "connectors/payments.yaml:", "auth_type oauth2 needs oauth2.token_url"),
    ("pagination-without-its-param",
     set_in("connectors/payments.yaml", "ingestion", "pagination", value={"type": "cursor", "path": "next"}),
     "connectors/payments.yaml:", "pagination type cursor needs param"),
    ("pagination-key-of-another-type",
     set_in("connectors/payments.yaml", "ingestion", "pagination", value={"type": "link_header", "path": "next"}),
     "connectors/payments.yaml:", "pagination type link_header takes no path"),
    ("cursor-field-without-param", set_in("connectors/payments.yaml", "ingestion", "cursor_param", delete=True),
     "connectors/payments.yaml:16:3", "ingestion.cursor_field: incremental polling needs both cursor_field and cursor_param"),
    ("cursor-field-not-in-schema",
     set_in("connectors/payments.yaml", "ingestion", "cursor_field", value="updated"),
     "connectors/payments.yaml:", "ingestion.cursor_field: cursor_field 'updated' is not a field of schemas/payments.json"),
    ("webhook-key-on-a-poller", set_in("connectors/payments.yaml", "ingestion", "webhook_path", value="/hooks/x"),
     "connectors/payments.yaml:", "ingestion.webhook_path: webhook_path applies to webhook connectors only"),
    ("webhook-path-reserved", set_in("connectors/shipments.yaml", "ingestion", "webhook_path", value="/healthz"),
     "connectors/shipments.yaml:7:3", "ingestion.webhook_path: webhook_path '/healthz' is reserved"),
    ("credentials-in-endpoint-url",
     set_in("connectors/payments.yaml", "ingestion", "api_endpoint", value="https://bob:hunter2@api.example.com/v1"),
     "connectors/payments.yaml:7:3", "ingestion.api_endpoint: an API URL must not carry a user or password"),
    ("poller-key-on-a-webhook", set_in("connectors/shipments.yaml", "ingestion", "poll_interval", value="60s"),
     "connectors/shipments.yaml:", "poll_interval applies to rest_api connectors only"),
    ("webhook-without-signature", set_in("connectors/shipments.yaml", "ingestion", "signature", delete=True),
     "connectors/shipments.yaml:", "a webhook connector needs signature"),
    ("webhook-path-collision", lambda repo: (
        write(repo, "connectors/parcels.yaml", (repo / "connectors/shipments.yaml").read_text()
              .replace("source_id: shipments", "source_id: parcels")
              .replace("schemas/shipments.json", "schemas/parcels.json")),
        write(repo, "schemas/parcels.json",
              (repo / "schemas/shipments.json").read_text().replace('"shipments"', '"parcels"'))),
     "connectors/shipments.yaml:", "webhook_path '/hooks/shipments' is already the path of connectors/parcels.yaml"),
    ("connector-service-name-too-long", lambda repo: (
        write(repo, f"connectors/{'p' * 40}.yaml", (repo / "connectors/shipments.yaml").read_text()
              .replace("source_id: shipments", f"source_id: {'p' * 40}")
              .replace("/hooks/shipments", "/hooks/p").replace("schemas/shipments.json", "schemas/p.json")),
        write(repo, "schemas/p.json", (repo / "schemas/shipments.json").read_text().replace('"shipments"', f'"{"p" * 40}"'))),
     f"connectors/{'p' * 40}.yaml:1:", "Cloud Run allows 49"),
    ("seed-flat-form", writes("connectors/salesforce_exports.yaml", (
        "source_id: salesforce_exports\npattern: batch_file\nschedule: \"0 2 * * *\"\n"
        "location: gs://landing-zone/salesforce/\nformat: csv\nschema_file: schemas/salesforce_accounts.json\n")),
     "connectors/salesforce_exports.yaml:2:1", "Rewrite the file as:\n    source_id: salesforce_exports\n    ingestion:\n"
     "      pattern: batch_file"),
    ("window-size-not-supported", set_in("connectors/clickstream.yaml", "ingestion", "window_size", value="60s"),
     "connectors/clickstream.yaml:", "window_size is not supported yet"),
    ("landing-location-in-another-bucket",
     set_in("connectors/orders.yaml", "ingestion", "location", value="gs://someone-elses-bucket/orders/"),
     "connectors/orders.yaml:", "is outside the landing bucket"),
]


@pytest.mark.parametrize(("mutate", "where", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_reported_with_position_and_nothing_is_touched(repo, mutate, where, message, monkeypatch, capsys):
    mutate(repo)

    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    lines = [str(p) for p in raised.value.problems]
    assert any(line.startswith(where) and message in line for line in lines), lines

    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    assert provider.calls == {}, "validation must fail before any API call"
    assert provider.objects == {}
    err = capsys.readouterr().err
    assert message in err and "nothing was changed" in err


def test_every_problem_is_reported_not_just_the_first(repo):
    set_in("connectors/orders.yaml", "ingestion", "schedule", value="0 25 * * *")(repo)
    set_in("connectors/payments.yaml", "silver", "cluster_by", value=["nope"])(repo)
    set_in("platform.yaml", "labels", value={"Team": "x"})(repo)
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    files = {p.file for p in raised.value.problems}
    assert files == {"connectors/orders.yaml", "connectors/payments.yaml", "platform.yaml"}


def test_positions_point_at_the_offending_line(repo):
    path = repo / "connectors" / "orders.yaml"
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith("schedule:"))
    lines[index] = lines[index].replace('"0 3 * * *"', '"0 3 * *"')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    (problem,) = raised.value.problems
    assert (problem.file, problem.line, problem.field) == ("connectors/orders.yaml", index + 1, "ingestion.schedule")


def test_the_example_repo_is_valid(capsys):
    assert cli.main(["validate", "--repo", "desired_state"]) == 0
    assert "Valid: 6 sources" in capsys.readouterr().out


def test_validate_exits_1_on_invalid(repo, capsys):
    writes("connectors/bad.yaml", "source_id: bad\n")(repo)
    assert cli.main(["validate", "--repo", str(repo)]) == 1
    assert "connectors/bad.yaml:1:1: ingestion: required field is missing" in capsys.readouterr().err


def test_yaml_booleans_do_not_eat_keys(tmp_path):
    # YAML 1.1 reads a bare `on` as true; the seed's join uses `on:` as a key.
    path = tmp_path / "x.yaml"
    path.write_text("join: {on: customer_id}\nflag: on\n")
    data, _ = yamlsrc.load_yaml(path)
    assert data == {"join": {"on": "customer_id"}, "flag": True}


class _Secrets:
    """A secret store that holds some secret ids (`providers.base.SecretStore`)."""

    location = "Secret Manager (project headwater-demo)"

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.asked: list[list[str]] = []

    def missing(self, secret_ids):
        self.asked.append(list(secret_ids))
        return set(secret_ids) - self.existing


def test_a_missing_secret_fails_the_plan_with_its_position_and_nothing_is_touched(repo, monkeypatch, capsys):
    provider, secrets = MemoryProvider(), _Secrets({"payments-api-key", "shop-postgres-password", "data-api-signing-key"})
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider], secrets=secrets))
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    err = capsys.readouterr().err
    assert "connectors/shipments.yaml:13:5: ingestion.signature.secret_name: secret 'shipments-webhook-key' " \
           "does not exist in Secret Manager (project headwater-demo)" in err
    assert "payments-api-key" not in err, "only the missing secret is named"
    assert provider.calls == {} and provider.objects == {}
    assert secrets.asked == [["data-api-signing-key", "payments-api-key", "shipments-webhook-key", "shop-postgres-password"]], \
        "one metadata check for all"


def test_when_every_secret_exists_the_plan_goes_ahead(repo, monkeypatch):
    provider = MemoryProvider()
    secrets = _Secrets({"payments-api-key", "shipments-webhook-key", "shop-postgres-password", "data-api-signing-key"})
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider], secrets=secrets))
    assert cli.main(["plan", "--repo", str(repo)]) == 2  # changes: everything is to create


@pytest.mark.parametrize(("signature", "field", "message"), [
    ({"header": "X-Sig", "secret_name": "k", "schema": "hex"}, "ingestion.signature.schema", "unknown key 'schema'"),
    ({"header": "X-Sig", "secret_name": "k", "scheme": "hmac"}, "ingestion.signature.scheme", "Input should be"),
    ({"header": "X-Sig"}, "ingestion.signature.secret_name", "required field is missing"),
    ({"header": "X-Sig", "secret_name": "k", "scheme": "hex", "timestamp_tolerance": "60s"},
     "ingestion.signature.timestamp_tolerance", "applies to scheme: timestamped only"),
], ids=["typo", "bad-scheme", "missing-secret", "tolerance-without-timestamps"])
def test_a_mistake_in_a_signature_block_is_one_problem_at_its_field(repo, signature, field, message):
    set_in("connectors/shipments.yaml", "ingestion", "signature", value=signature)(repo)
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    (problem,) = raised.value.problems  # not also "Input should be 'none'" for the other union member
    assert problem.field == field and message in problem.message, str(problem)
