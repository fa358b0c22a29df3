"""The data API's parts without the emulator: the spec, values, SQL, cursors, BigQuery's errors,
token rotation, log redaction."""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import io
import json
import logging

import pytest
from fastapi.testclient import TestClient
from google.api_core import exceptions

from serving.api import logs, values
from serving.api.app import create_app
from serving.api.cursor import CursorError, CursorSealer, Position
from serving.api.query import BigQueryReader, Filter, Query, QueryFailed, QueryOptions, Result, page_query
from serving.api.spec import SpecError, load_secrets, load_spec, parse_spec
from tests.serving.conftest import api_document, api_environ

VIEW = "hw-unit.api.orders"


def document(**overrides):
    return api_document("hw-unit", VIEW, **overrides)


# --------------------------------------------------------------------------- the spec


def test_the_contract_example_parses() -> None:
    spec = parse_spec(document())
    source = spec.sources[0]
    assert source.order[:2] == ("date", "customer_id"), "partition column first, then the rest of the key"
    assert "customer_email" not in source.order, "PII is no default tiebreak"
    assert source.order[2:] == ("total_amount", "order_count", "last_order_at", "score", "vip")
    assert source.filterable == {"customer_id", "date", "total_amount", "order_count", "last_order_at",
                                 "customer_email", "score", "vip"}
    assert source.scopes.read == "orders:read" and spec.rate_limit.requests == 1000
    assert spec.rate_limit.per_seconds == 3600 and spec.page.max_limit == 1000


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d.update(kind="rest_api"), "kind: 'rest_api' is not a data API document"),
    (lambda d: d.update(version=2), "version: unsupported"),
    (lambda d: d.update(extra=1), "extra: unknown key"),
    (lambda d: d["sources"][0].update(key=["customer_id", "dat"]), "sources[0].key[1]: 'dat' is not a field"),
    (lambda d: d["sources"][0].update(key=["tags"]), "sources[0].key[0]: 'tags' is REPEATED STRING"),
    (lambda d: d["sources"][0].update(pii=["segment.tier"]), "sources[0].pii[0]: 'segment.tier': only top-level"),
    (lambda d: d["sources"][0].update(view="orders"), "sources[0].view: 'orders' is not project.dataset.view"),
    (lambda d: d["sources"][0].update(partition_field="vip"), "sources[0].partition_field[0]: 'vip' is NULLABLE BOOL"),
    (lambda d: d["sources"][0].update(name="Orders"), "sources[0].name: 'Orders' is not a URL segment"),
    (lambda d: d["sources"][0]["fields"].append({"name": "x", "type": "MONEY"}), "fields[10].type: unknown type"),
    (lambda d: d["clients"][0].update(scopes=["invoices:read"]), "clients[0].scopes[0]: 'invoices:read' is no"),
    (lambda d: d["clients"][1].update(secret_env="HEADWATER_API_CLIENT_ACME"), "named twice"),
    (lambda d: d["clients"][0].update(secret_env="PORT"), "clients[0].secret_env: PORT is reserved"),
    (lambda d: d["clients"][0].update(client_id="acme corp"), "clients[0].client_id"),
    (lambda d: d["token"].update(ttl_seconds=5), "token.ttl_seconds"),
    (lambda d: d.pop("token"), "token: required"),
])
def test_a_bad_document_names_the_path(change, words: str) -> None:
    bad = copy.deepcopy(document())
    change(bad)
    with pytest.raises(SpecError) as caught:
        parse_spec(bad)
    assert words in str(caught.value)


def test_secrets_come_from_the_variables_the_document_names_and_are_never_quoted() -> None:
    doc = document()
    spec = parse_spec(doc)
    environ, by_client = api_environ(doc)
    secrets = load_secrets(spec, environ)
    assert secrets.client_secrets == by_client and environ["HEADWATER_API_SIGNING_KEY"] not in repr(secrets)
    missing = dict(environ)
    del missing["HEADWATER_API_CLIENT_TINY"]
    with pytest.raises(SpecError, match="HEADWATER_API_CLIENT_TINY is not set"):
        load_secrets(spec, missing)
    short = {**environ, "HEADWATER_API_SIGNING_KEY": "short-key"}
    with pytest.raises(SpecError) as caught:
        load_secrets(spec, short)
    assert "at least 32 bytes" in str(caught.value) and "short-key" not in str(caught.value)
    with pytest.raises(SpecError, match="HEADWATER_CONNECTOR_SPEC is not set"):
        load_spec({})
    assert load_spec({"HEADWATER_CONNECTOR_SPEC": json.dumps(doc)}).project == "hw-unit"


def test_python_m_serving_api_exits_2_naming_a_missing_secret() -> None:
    import subprocess
    import sys

    doc = document()
    environ, _ = api_environ(doc)
    del environ["HEADWATER_API_CLIENT_ACME"]
    env = {"PATH": "/usr/bin:/bin", "HEADWATER_CONNECTOR_SPEC": json.dumps(doc), **environ}
    done = subprocess.run([sys.executable, "-m", "serving.api"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["severity"] == "ERROR" and "HEADWATER_API_CLIENT_ACME is not set" in line["message"]
    for value in environ.values():
        assert value not in done.stdout + done.stderr


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(("kind", "text", "value"), [
    ("INT64", "-42", -42), ("FLOAT64", "1.5e3", 1500.0), ("NUMERIC", "12.50", decimal.Decimal("12.50")),
    ("BOOL", "false", False), ("DATE", "2024-02-29", dt.date(2024, 2, 29)),
    ("TIMESTAMP", "2024-05-01T12:00:00+02:00", dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)),
    ("TIMESTAMP", "2024-05-01", dt.datetime(2024, 5, 1, tzinfo=dt.UTC)),
    ("DATETIME", "2024-05-01T12:30", dt.datetime(2024, 5, 1, 12, 30)), ("STRING", "a,b", "a,b"),
])
def test_filter_values_parse_as_their_type(kind: str, text: str, value) -> None:
    assert values.parse(kind, text) == value


@pytest.mark.parametrize(("kind", "text"), [
    ("INT64", "9223372036854775808"), ("INT64", "0x10"), ("FLOAT64", "nan"), ("FLOAT64", "inf"),
    ("NUMERIC", "1e5"), ("NUMERIC", "0.0000000001"), ("NUMERIC", "1" * 30), ("DATE", "2023-02-29"),
    ("TIMESTAMP", "2024-05-01T12:00:00"), ("BOOL", "True"),
])
def test_bad_filter_values_are_refused(kind: str, text: str) -> None:
    with pytest.raises(values.BadValue):
        values.parse(kind, text)


def test_json_encoding_round_trips_for_cursors() -> None:
    spec = parse_spec(document())
    source = spec.sources[0]
    row = {"customer_id": "C1", "date": dt.date(2024, 5, 1), "total_amount": decimal.Decimal("4.450000000"),
           "order_count": 3, "last_order_at": dt.datetime(2024, 5, 1, 1, 2, 3, 456, tzinfo=dt.UTC), "score": 0.5,
           "vip": True}
    for name in source.order:
        field = source.field(name)
        encoded = values.encode(field, row[name])
        assert values.decode(field, json.loads(json.dumps(encoded))) == row[name]
    assert values.encode(source.field("total_amount"), decimal.Decimal("4.450000000")) == "4.45"
    assert values.encode(source.field("total_amount"), decimal.Decimal("1E+2")) == "100"
    assert values.encode(source.field("score"), float("nan")) == "NaN"


# --------------------------------------------------------------------------- SQL


def test_keyset_sql_with_nulls_and_partition_pruning() -> None:
    source = parse_spec(document(source={"tiebreak": []})).sources[0]
    query = page_query(source, [Filter(source.field("vip"), "eq", True)], [dt.date(2024, 5, 2), None], 10,
                       frozenset({"customer_email"}))
    assert query.sql == (
        "SELECT `customer_id`, `date`, `total_amount`, `order_count`, `last_order_at`, `score`, `vip`, `tags`, "
        "`segment` FROM `hw-unit.api.orders` WHERE `vip` = @f0 AND `date` >= @k1 AND ((`date` > @k1) OR "
        "(`date` = @k1 AND `customer_id` IS NOT NULL)) ORDER BY `date` ASC NULLS FIRST, `customer_id` ASC NULLS "
        "FIRST LIMIT @page_rows")
    assert query.parameters == (("f0", "BOOL", True), ("k1", "DATE", dt.date(2024, 5, 2)),
                                ("page_rows", "INT64", 11))
    # A NULL partition value: no pruning conjunct (NULLs sort first; the rest are all after).
    query = page_query(source, [], [None, "C1"], 10, frozenset())
    assert "`date` >= " not in query.sql
    assert "((`date` IS NOT NULL) OR (`date` IS NULL AND `customer_id` > @k0))" in query.sql


def test_a_nan_position_continues_after_the_nans() -> None:
    source = parse_spec(document(source={"key": ["score"], "tiebreak": ["order_count"]})).sources[0]
    query = page_query(source, [], [float("nan"), 3], 10, frozenset())
    assert ("((`score` IS NOT NULL AND NOT IS_NAN(`score`))) OR (IS_NAN(`score`) AND `order_count` > @k0)"
            in query.sql)


def test_a_masked_key_column_is_read_for_the_cursor_only() -> None:
    source = parse_spec(document(source={"key": ["customer_email", "date"]})).sources[0]
    query = page_query(source, [], None, 5, frozenset({"customer_email"}))
    assert query.sql.startswith("SELECT `customer_id`, `date`, `total_amount`")
    assert "`customer_email` FROM" in query.sql, "read (last) for the sealed cursor"


# --------------------------------------------------------------------------- cursors


def test_cursors_are_sealed_bound_and_survive_one_key_rotation() -> None:
    old, new = b"o" * 32, b"n" * 32
    position = Position("orders", ("date", "customer_id"), "f" * 32, ("2024-05-01", "C1"))
    token = CursorSealer([old]).seal(position)
    import base64

    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b'"C1"' not in raw and b"2024-05-01" not in raw and "2024-05-01" not in token, "sealed, not encoded"
    rotated = CursorSealer([new, old])
    assert rotated.open(token, "orders", ("date", "customer_id"), "f" * 32) == ("2024-05-01", "C1")
    with pytest.raises(CursorError, match="another source"):
        rotated.open(token, "payments", ("date", "customer_id"), "f" * 32)
    with pytest.raises(CursorError, match="order changed"):
        rotated.open(token, "orders", ("date",), "f" * 32)
    with pytest.raises(CursorError, match="not a cursor"):
        CursorSealer([new]).open(token, "orders", ("date", "customer_id"), "f" * 32)


# --------------------------------------------------------------------------- BigQuery errors


class FakeClient:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def query_and_wait(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize(("error", "kind"), [
    (exceptions.NotFound("Not found: Table hw-unit:api.orders"), "not_found"),
    (exceptions.BadRequest("Query exceeded limit for bytes billed: 1000000. 20971520 or higher required."),
     "too_expensive"),
    (exceptions.DeadlineExceeded("slow"), "timeout"),
    (exceptions.ServiceUnavailable("down"), "upstream"),
    (ConnectionError("refused"), "upstream"),
])
def test_bigquery_errors_are_classified(error: Exception, kind: str) -> None:
    reader = BigQueryReader("hw-unit", client=FakeClient(error))
    with pytest.raises(QueryFailed) as caught:
        reader.run(Query("SELECT 1", ()), QueryOptions())
    assert caught.value.kind == kind


class StubReader:
    def __init__(self, outcome) -> None:
        self.outcome = outcome
        self.seen: list[tuple[Query, QueryOptions]] = []

    def run(self, query: Query, options: QueryOptions) -> Result:
        self.seen.append((query, options))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(("failure", "status"), [
    (QueryFailed("not_found", "Not found: Table hw-unit:api.orders was not found in location EU"), 503),
    (QueryFailed("too_expensive", "bytes billed"), 503), (QueryFailed("timeout", "slow"), 504),
    (QueryFailed("upstream", "backendError"), 503),
])
def test_a_failed_query_is_an_answer_without_internals(failure: QueryFailed, status: int) -> None:
    # EMULATOR DEPARTURE: bqemulator answers a query on a missing view with no rows, where
    # BigQuery answers 404; the reader's classification is tested above with the library's
    # own exceptions, and the answer here.
    doc = document(max_bytes_billed=50 * 2 ** 20)
    environ, by_client = api_environ(doc)
    spec = parse_spec(doc)
    reader = StubReader(failure)
    with TestClient(create_app(spec, load_secrets(spec, environ), reader=reader)) as client:
        token = client.post("/oauth/token", data={"grant_type": "client_credentials"},
                            auth=("acme", by_client["acme"])).json()["access_token"]
        answer = client.get("/api/v1/orders", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == status
    assert "hw-unit" not in answer.text and str(failure) not in answer.text
    options = reader.seen[0][1]
    assert options.max_bytes_billed == 50 * 2 ** 20
    assert options.labels == {"headwater-api-client": "acme", "headwater-api-source": "orders"}


def test_a_token_signed_before_a_key_rotation_still_verifies() -> None:
    doc = document()
    doc["token"]["previous_signing_key_env"] = "HEADWATER_API_SIGNING_KEY_PREVIOUS"
    environ, by_client = api_environ(doc)
    spec = parse_spec(doc)
    reader = StubReader(Result([]))
    before = {**environ, "HEADWATER_API_SIGNING_KEY_PREVIOUS": "p" * 40}
    with TestClient(create_app(spec, load_secrets(spec, before), reader=reader)) as client:
        token = client.post("/oauth/token", data={"grant_type": "client_credentials"},
                            auth=("acme", by_client["acme"])).json()["access_token"]
    rotated = {**environ, "HEADWATER_API_SIGNING_KEY": "r" * 64,
               "HEADWATER_API_SIGNING_KEY_PREVIOUS": environ["HEADWATER_API_SIGNING_KEY"]}
    with TestClient(create_app(spec, load_secrets(spec, rotated), reader=reader)) as client:
        assert client.get("/api/v1/orders", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    gone = {**environ, "HEADWATER_API_SIGNING_KEY": "r" * 64, "HEADWATER_API_SIGNING_KEY_PREVIOUS": "q" * 64}
    with TestClient(create_app(spec, load_secrets(spec, gone), reader=reader)) as client:
        assert client.get("/api/v1/orders", headers={"Authorization": f"Bearer {token}"}).status_code == 401


# --------------------------------------------------------------------------- logs


def test_registered_secrets_are_redacted_from_every_log_record() -> None:
    secret = "s3cr3t-value-of-the-client"
    logs.redact_secrets([secret], ["acme"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonLines())
    logger = logging.getLogger("tests.serving.redaction")
    logger.addHandler(handler)
    try:
        logger.error("oops %s", secret)
        try:
            raise RuntimeError(f"failed with {secret}")
        except RuntimeError:
            logger.exception("boom")
        import base64

        logger.warning("header Basic %s", base64.b64encode(f"acme:{secret}".encode()).decode())
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert secret not in text and "[REDACTED]" in text and text.count("\n") == 3
