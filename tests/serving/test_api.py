"""The data API against bqemulator: pages, filters, lookups, formats, auth, rate limits, logs.

Each test gets a fresh project with a Gold table of 58 rows and its view in the ``api`` dataset
(conftest.py), served by the real application in process (FastAPI's TestClient)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from typing import Any
from urllib.parse import quote

import jwt
import pyarrow.parquet as pq
import pytest

from serving.api import values
from serving.api.spec import parse_spec
from tests.serving.conftest import DAYS, Harness, make_row, sample_rows


def walk(api: Harness, headers: dict[str, str], limit: int, params: dict[str, str] | None = None,
         between=None) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    for _ in range(200):
        query = {**(params or {}), "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        answer = api.client.get("/api/v1/orders", params=query, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["count"] == len(body["data"]) <= limit
        assert body["has_more"] == (body["next_cursor"] is not None)
        assert answer.headers["X-Has-More"] == ("true" if body["has_more"] else "false")
        pages.append(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(body["data"]) == limit, "a page before the last is full"
        if between:
            between(pages)
    raise AssertionError("the walk did not end")


def key(row: dict[str, Any]) -> tuple:
    return row["customer_id"], row["date"]


def canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


# --------------------------------------------------------------------------- pages


def test_pages_together_equal_the_view_and_none_twice(api: Harness) -> None:
    headers = api.headers("auditor")  # sees every column: the pages must equal the view exactly
    pages = walk(api, headers, limit=7)
    rows = [r for page in pages for r in page]
    assert len(pages) == 9 and len(rows) == 58
    assert len({key(r) for r in rows}) == 58, "no row twice"
    assert canonical(rows) == canonical(api.view_rows())
    # In the documented order: date first (the partition column), then customer_id, NULLs first.
    order = [(r["date"] or "", r["customer_id"] or "") for r in rows]
    assert order == sorted(order)
    assert rows[0]["customer_id"] is None


def test_a_walk_is_stable_under_concurrent_inserts(api: Harness) -> None:
    """Rows inserted while a client walks: every row that existed when the walk started comes
    exactly once; an inserted row comes iff it sorts after the position reached."""
    before = {key(r) for r in api.view_rows()}
    ahead: set[tuple] = set()
    behind: set[tuple] = set()
    n = 1000

    def position(row: dict[str, Any]) -> tuple:
        return row["date"] or "", row["customer_id"] or ""

    def insert(pages: list[list[dict[str, Any]]]) -> None:
        nonlocal n
        reached = position(pages[-1][-1])
        page = len(pages)
        # Around the position reached: behind it (the first day), on the day it is at (sorting
        # before and after it), and ahead of it (the last day).
        day = dt.date.fromisoformat(reached[0])
        for customer, when in ((f"A{page:02d}", DAYS[0]), (f"B{page:02d}", day), (f"Cz{page:02d}", day),
                               (f"Z{page:02d}", DAYS[-1])):
            n += 1
            row = make_row(customer, when, n)
            (ahead if position(row) > reached else behind).add(key(row))
            api.insert([row])

    pages = walk(api, api.headers(), limit=6, between=insert)
    rows = [r for page in pages for r in page]
    keys = [key(r) for r in rows]
    assert len(keys) == len(set(keys)), "no row twice"
    assert before <= set(keys), "no row that existed at the start was skipped"
    assert ahead and behind
    assert ahead <= set(keys), "rows inserted ahead of the position are served"
    assert not behind & set(keys), "rows inserted behind the position are not (they sort before it)"
    assert set(keys) == before | ahead
    order = [position(r) for r in rows]
    assert order == sorted(order)


def test_no_silent_cap_the_last_page_says_so_and_limit_bounds(api: Harness) -> None:
    headers = api.headers()
    answer = api.client.get("/api/v1/orders", params={"limit": "58"}, headers=headers).json()
    assert answer["count"] == 58 and answer["has_more"] is False and answer["next_cursor"] is None
    answer = api.client.get("/api/v1/orders", params={"limit": "57"}, headers=headers)
    assert answer.json()["has_more"] is True and answer.headers["X-Next-Cursor"] == answer.json()["next_cursor"]
    link = answer.headers["Link"]
    assert link.startswith("</api/v1/orders?limit=57&cursor=") and link.endswith('>; rel="next"')
    default = api.client.get("/api/v1/orders", headers=headers).json()
    assert default["limit"] == 100 and default["count"] == 58


def test_filters_eq_and_ranges_on_timestamps_dates_and_numbers(api: Harness) -> None:
    headers = api.headers("auditor")
    everything = api.view_rows()

    def served(params: dict[str, str]) -> list[str]:
        return canonical([r for page in walk(api, headers, 5, params) for r in page])

    assert served({"customer_id": "C03"}) == canonical([r for r in everything if r["customer_id"] == "C03"])
    assert served({"date.gte": "2024-05-02", "date.lt": "2024-05-04"}) == canonical(
        [r for r in everything if r["date"] and "2024-05-02" <= r["date"] < "2024-05-04"])
    moment = dt.datetime(2024, 5, 3, 10, tzinfo=dt.UTC)
    expected = [r for r in everything
                if dt.datetime.fromisoformat(r["last_order_at"].replace("Z", "+00:00")) > moment]
    assert served({"last_order_at.gt": "2024-05-03T12:00:00+02:00"}) == canonical(expected)
    assert served({"total_amount.gte": "100", "total_amount.lte": "250.5", "vip": "true"}) == canonical(
        [r for r in everything if 100 <= float(r["total_amount"]) <= 250.5 and r["vip"]])
    assert served({"score.lt": "1.5", "order_count": "4"}) == canonical(
        [r for r in everything if r["score"] < 1.5 and r["order_count"] == 4])


def test_a_cursor_belongs_to_its_filters(api: Harness) -> None:
    headers = api.headers()
    first = api.client.get("/api/v1/orders", params={"limit": "2", "vip": "true"}, headers=headers).json()
    answer = api.client.get("/api/v1/orders", params={"limit": "2", "vip": "false", "cursor": first["next_cursor"]},
                            headers=headers)
    assert answer.status_code == 400 and answer.json()["field"] == "cursor"
    assert "other filters" in answer.json()["error_description"]
    same = api.client.get("/api/v1/orders", params={"vip": "true", "limit": "2", "cursor": first["next_cursor"]},
                          headers=headers)
    assert same.status_code == 200
    tampered = first["next_cursor"][:-3] + ("AAA" if not first["next_cursor"].endswith("AAA") else "BBB")
    answer = api.client.get("/api/v1/orders", params={"vip": "true", "cursor": tampered}, headers=headers)
    assert answer.status_code == 400 and answer.json()["field"] == "cursor"


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"amount": "3"}, "amount", "did you mean 'total_amount'"),
    ({"total_amount.gte": "lots"}, "total_amount.gte", "decimal"),
    ({"total_amount": "1.0000000001"}, "total_amount", "at most 9 digits"),
    ({"order_count.gte": "1.5"}, "order_count.gte", "integer"),
    ({"last_order_at.gt": "2024-05-01T10:00:00"}, "last_order_at.gt", "RFC 3339"),
    ({"date": "2024-02-30"}, "date", "not a valid date"),
    ({"vip": "yes"}, "vip", "true or false"),
    ({"customer_id.gte": "C01"}, "customer_id.gte", "only equality"),
    ({"date.after": "2024-05-01"}, "date.after", "unknown operator"),
    ({"tags": "t1"}, "tags", "cannot be filtered"),
    ({"segment": "x"}, "segment", "cannot be filtered"),
    ({"limit": "0"}, "limit", "1 to 1000"),
    ({"limit": "1001"}, "limit", "1 to 1000"),
    ({"format": "xml"}, "format", "json, csv, parquet"),
    ({"cursor": "not-a-cursor"}, "cursor", "not a cursor"),
])
def test_bad_parameters_are_400_naming_the_field(api: Harness, params: dict[str, str], field: str,
                                                 words: str) -> None:
    answer = api.client.get("/api/v1/orders", params=params, headers=api.headers())
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid_request" and body["field"] == field
    assert words in body["error_description"] and body["error_description"].startswith(field)


def test_a_parameter_given_twice_is_400(api: Harness) -> None:
    answer = api.client.get("/api/v1/orders?vip=true&vip=false", headers=api.headers())
    assert answer.status_code == 400 and answer.json()["field"] == "vip"


def test_filter_values_never_reach_the_sql_text(api: Harness) -> None:
    """An injection attempt is a value like any other: compared as a string, matching nothing."""
    sneaky = "C01' OR '1'='1"
    answer = api.client.get("/api/v1/orders", params={"customer_id": sneaky}, headers=api.headers())
    assert answer.status_code == 200 and answer.json()["data"] == []
    from serving.api.query import Filter, page_query

    source = parse_spec(api.document).sources[0]
    after = [dt.date(2024, 5, 1), "C01", *([None] * (len(source.order) - 2))]
    query = page_query(source, [Filter(source.field("customer_id"), "eq", sneaky)], after, 5, frozenset())
    assert sneaky not in query.sql and "C01" not in query.sql and "2024" not in query.sql and "@f0" in query.sql
    assert ("f0", "STRING", sneaky) in query.parameters


# --------------------------------------------------------------------------- one row


def test_one_row_by_its_composite_key(api: Harness) -> None:
    headers = api.headers()
    answer = api.client.get("/api/v1/orders/C04,2024-05-03", headers=headers)
    assert answer.status_code == 200
    row = answer.json()["data"]
    assert (row["customer_id"], row["date"]) == ("C04", "2024-05-03")
    assert answer.json()["masked_fields"] == ["customer_email"] and row["customer_email"] is None
    # A comma inside a key value is %2C; the separator is a literal comma.
    answer = api.client.get(f"/api/v1/orders/{quote('C,7', safe='')},2024-05-01", headers=headers)
    assert answer.status_code == 200 and answer.json()["data"]["customer_id"] == "C,7"
    assert api.client.get("/api/v1/orders/C99,2024-05-01", headers=headers).status_code == 404
    bad = api.client.get("/api/v1/orders/C04,yesterday", headers=headers)
    assert bad.status_code == 400 and bad.json()["field"] == "id" and "date" in bad.json()["error_description"]
    short = api.client.get("/api/v1/orders/C04", headers=headers)
    assert short.status_code == 400 and "customer_id, date" in short.json()["error_description"]
    csv_row = api.client.get("/api/v1/orders/C04,2024-05-03?format=csv", headers=headers)
    assert list(csv.DictReader(io.StringIO(csv_row.text)))[0]["customer_id"] == "C04"


# --------------------------------------------------------------------------- formats


def _csv_matches(json_rows: list[dict[str, Any]], text: str, fields) -> None:
    parsed = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(parsed) == len(json_rows)
    for got, want in zip(parsed, json_rows, strict=True):
        assert list(got) == [f.name for f in fields]
        for f in fields:
            value = want[f.name]
            if value is None:
                assert got[f.name] == ""
            elif f.repeated or f.type == "RECORD":
                assert json.loads(got[f.name]) == value
            elif isinstance(value, bool):
                assert got[f.name] == ("true" if value else "false")
            else:
                assert got[f.name] == str(value)


def test_csv_and_parquet_parse_and_match_json_page_by_page(api: Harness) -> None:
    headers = api.headers("auditor")
    fields = parse_spec(api.document).sources[0].fields
    cursor = None
    pages = 0
    while True:
        params = {"limit": "20", **({"cursor": cursor} if cursor else {})}
        as_json = api.client.get("/api/v1/orders", params=params, headers=headers)
        as_csv = api.client.get("/api/v1/orders", params={**params, "format": "csv"}, headers=headers)
        as_parquet = api.client.get("/api/v1/orders", params={**params, "format": "parquet"}, headers=headers)
        body = as_json.json()
        assert as_csv.headers["content-type"].startswith("text/csv")
        assert as_parquet.headers["content-type"] == "application/vnd.apache.parquet"
        _csv_matches(body["data"], as_csv.text, fields)
        table = pq.read_table(io.BytesIO(as_parquet.content))
        assert table.column_names == [f.name for f in fields]
        assert str(table.schema.field("total_amount").type) == "decimal128(38, 9)"
        assert str(table.schema.field("last_order_at").type) == "timestamp[us, tz=UTC]"
        from_parquet = [values.encode_row(fields, row) for row in table.to_pylist()]
        assert from_parquet == body["data"]
        # The position travels in headers for the formats without an envelope.
        for answer in (as_csv, as_parquet):
            assert answer.headers["X-Has-More"] == ("true" if body["has_more"] else "false")
            assert answer.headers.get("X-Next-Cursor") is not None if body["has_more"] else True
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            break
        # A cursor from a CSV page continues the JSON walk as well (same position).
        csv_cursor = as_csv.headers["X-Next-Cursor"]
        assert api.client.get("/api/v1/orders", params={"limit": "20", "cursor": csv_cursor},
                              headers=headers).json()["data"][0] == api.client.get(
            "/api/v1/orders", params={"limit": "20", "cursor": cursor}, headers=headers).json()["data"][0]
    assert pages == 3


# --------------------------------------------------------------------------- PII


def test_pii_is_masked_unless_the_scope_allows_it(api: Harness) -> None:
    plain = api.client.get("/api/v1/orders", params={"limit": "50"}, headers=api.headers("acme")).json()
    assert plain["masked_fields"] == ["customer_email"]
    assert all(r["customer_email"] is None for r in plain["data"])
    full = api.client.get("/api/v1/orders", params={"limit": "50"}, headers=api.headers("auditor")).json()
    assert full["masked_fields"] == [] and any(r["customer_email"] for r in full["data"])
    # The auditor asking for read only gets it masked too: the token's scopes decide.
    narrowed = api.client.get("/api/v1/orders", headers=api.headers("auditor", scope="orders:read")).json()
    assert narrowed["masked_fields"] == ["customer_email"]
    # Filtering on a PII column would reveal it: 403 without the pii scope.
    answer = api.client.get("/api/v1/orders", params={"customer_email": "person3@example.com"},
                            headers=api.headers("acme"))
    assert answer.status_code == 403 and answer.json()["error"] == "insufficient_scope"
    assert 'scope="orders:pii"' in answer.headers["WWW-Authenticate"]
    found = api.client.get("/api/v1/orders", params={"customer_email": "person3@example.com"},
                           headers=api.headers("auditor")).json()
    assert [r["customer_email"] for r in found["data"]] == ["person3@example.com"]
    masked_csv = api.client.get("/api/v1/orders", params={"format": "csv", "limit": "3"}, headers=api.headers())
    assert masked_csv.headers["X-Masked-Fields"] == "customer_email" and "@example.com" not in masked_csv.text


# --------------------------------------------------------------------------- auth


def test_401_without_or_with_a_bad_token(api: Harness) -> None:
    answer = api.client.get("/api/v1/orders")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="headwater-data-api"'  # RFC 6750 §3.1: no code
    assert answer.json()["error"] == "unauthorized"
    for header in ("Bearer nonsense", "Basic YWNtZTpzZWNyZXQ=", "Bearer " + jwt.encode(
            {"sub": "acme", "scope": "orders:read"}, "some-other-key-of-32-bytes-or-more!!", algorithm="HS256")):
        answer = api.client.get("/api/v1/orders", headers={"Authorization": header})
        assert answer.status_code == 401, header
    answer = api.client.get("/api/v1/orders", headers={"Authorization": "Bearer nonsense"})
    assert answer.json()["error"] == "invalid_token" and 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


def test_an_expired_or_foreign_audience_token_is_401(api: Harness) -> None:
    from serving.api.auth import key_id

    key = api.environ["HEADWATER_API_SIGNING_KEY"].encode()
    now = int(time.time())
    base = {"iss": "http://data-api.test", "aud": "headwater-data-api", "sub": "acme", "client_id": "acme",
            "scope": "orders:read", "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600, "jti": "x"}
    for claims, words in ((base, "expired"), ({**base, "exp": now + 600, "aud": "someone-else"}, "invalid"),
                          ({**base, "exp": now + 600, "sub": "gone"}, "no longer registered")):
        token = jwt.encode(claims, key, algorithm="HS256", headers={"kid": key_id(key)})
        answer = api.client.get("/api/v1/orders", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401 and words in answer.json()["error_description"], claims


def test_403_for_a_scope_that_lacks_the_source(api: Harness) -> None:
    answer = api.client.get("/api/v1/orders", headers=api.headers("stranger"))
    assert answer.status_code == 403
    assert answer.json()["error"] == "insufficient_scope"
    assert answer.headers["WWW-Authenticate"] == ('Bearer realm="headwater-data-api", error="insufficient_scope", '
                                                  'scope="orders:read"')
    assert api.client.get("/api/v1/orders/C01,2024-05-01", headers=api.headers("stranger")).status_code == 403


def test_the_token_endpoint(api: Harness) -> None:
    secret = api.secrets["acme"]
    ok = api.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "acme",
                                               "client_secret": secret})
    assert ok.status_code == 200 and ok.headers["Cache-Control"] == "no-store"
    body = ok.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600 and body["scope"] == "orders:read"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "acme" and claims["iss"] == "http://data-api.test" and claims["exp"] - claims["iat"] == 600

    wrong = api.client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("acme", secret + "x"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert wrong.headers["WWW-Authenticate"] == 'Basic realm="headwater-data-api"'
    unknown = api.client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("nobody", secret))
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    grant = api.client.post("/oauth/token", data={"grant_type": "password"}, auth=("acme", secret))
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    scope = api.client.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "orders:pii"},
                            auth=("acme", secret))
    assert scope.status_code == 400 and scope.json()["error"] == "invalid_scope"
    both = api.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "acme",
                                                 "client_secret": secret}, auth=("acme", secret))
    assert both.status_code == 400 and both.json()["error"] == "invalid_request"
    as_json = api.client.post("/oauth/token", json={"grant_type": "client_credentials"}, auth=("acme", secret))
    assert as_json.status_code == 400 and "x-www-form-urlencoded" in as_json.json()["error_description"]
    in_url = api.client.post(f"/oauth/token?client_id=acme&client_secret={secret}",
                             data={"grant_type": "client_credentials"})
    assert in_url.status_code == 400


def test_guessing_a_client_secret_is_rate_limited(api: Harness) -> None:
    from serving.api.ratelimit import AUTH_FAILURES

    for _ in range(AUTH_FAILURES):
        answer = api.client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("acme", "guess"))
        assert answer.status_code == 401
    blocked = api.client.post("/oauth/token", data={"grant_type": "client_credentials"},
                              auth=("acme", api.secrets["acme"]))
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0


# --------------------------------------------------------------------------- rate limits


def test_429_past_the_limit_with_retry_after(api: Harness) -> None:
    headers = api.headers("tiny")  # 3 requests per hour; the token request was the first
    statuses = [api.client.get("/api/v1/orders", params={"limit": "1"}, headers=headers) for _ in range(3)]
    assert [a.status_code for a in statuses] == [200, 200, 429]
    assert statuses[1].headers["RateLimit-Remaining"] == "0"
    refused = statuses[2]
    retry_after = int(refused.headers["Retry-After"])
    assert 3500 < retry_after <= 3600
    assert refused.json()["error"] == "rate_limited"
    # Per client: another client is not affected.
    assert api.client.get("/api/v1/orders", params={"limit": "1"}, headers=api.headers("acme")).status_code == 200
    # The default is the seed's 1,000 requests an hour.
    assert api.client.get("/api/v1/orders", params={"limit": "1"},
                          headers=api.headers("acme")).headers["RateLimit-Limit"] == "1000"


# --------------------------------------------------------------------------- docs, logs


def test_openapi_document_and_docs_page_come_from_the_schema(api: Harness) -> None:
    document = api.client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    listing = document["paths"]["/api/v1/orders"]["get"]
    names = {p["name"] for p in listing["parameters"]}
    assert {"customer_id", "date", "date.gte", "last_order_at.lt", "total_amount.gt", "vip", "limit", "cursor",
            "format"} <= names
    assert "customer_id.gte" not in names and "tags" not in names and "segment" not in names
    assert listing["security"] == [{"oauth2": ["orders:read"]}]
    row = document["components"]["schemas"]["OrdersRow"]["properties"]
    assert row["total_amount"]["type"] == ["string", "null"] and row["date"]["format"] == "date"
    assert row["tags"]["type"] == "array" and row["segment"]["properties"]["since"]["format"] == "date"
    flows = document["components"]["securitySchemes"]["oauth2"]["flows"]["clientCredentials"]
    assert flows["tokenUrl"] == "/oauth/token" and set(flows["scopes"]) == {"orders:read", "orders:pii"}
    assert "/api/v1/orders/{id}" in document["paths"] and "/oauth/token" in document["paths"]
    page = api.client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text and "swagger" in page.text.lower()


def test_usage_is_logged_per_client_and_secrets_never_are(api: Harness) -> None:
    token = api.token("auditor")
    headers = {"Authorization": f"Bearer {token}"}
    api.client.get("/api/v1/orders", params={"customer_email": "person9@example.com", "limit": "2"}, headers=headers)
    first = api.client.get("/api/v1/orders", params={"limit": "2"}, headers=headers).json()
    api.client.get("/api/v1/orders", params={"limit": "2", "cursor": first["next_cursor"]}, headers=headers)
    api.client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("acme", "wrong-secret-guess"))
    api.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "acme",
                                          "client_secret": api.secrets["acme"] + "typo"})
    api.client.get("/api/v1/orders", headers={"Authorization": "Bearer " + token[:-4] + "abcd"})
    text = api.log.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    usage = [line for line in lines if line["message"] == "api_request"]
    lists = [u for u in usage if u.get("endpoint") == "list" and u["client_id"] == "auditor"]
    assert len(lists) >= 3
    assert {"status", "rows", "duration_ms", "source", "format", "filters", "bytes_processed"} <= set(lists[0])
    assert lists[0]["filters"] == ["customer_email.eq"] and lists[0]["severity"] == "INFO"
    assert any(u.get("endpoint") == "token" and u["status"] == 401 for u in usage)
    assert any(u.get("status") == 401 and u.get("endpoint") == "list" and u["client_id"] is None for u in usage)
    forbidden = [*api.secrets.values(), api.environ["HEADWATER_API_SIGNING_KEY"], token, token.split(".")[2],
                 first["next_cursor"], "person9@example.com", "wrong-secret-guess", api.secrets["acme"] + "typo"]
    for secret in forbidden:
        assert secret not in text, "a secret, token, cursor or filter value reached the log"


def test_unknown_paths_and_health(api: Harness) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    answer = api.client.get("/api/v1/nothing", headers=api.headers())
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


def test_sample_rows_are_unique_on_the_key() -> None:
    rows = sample_rows()
    assert len({(r["customer_id"], r["date"]) for r in rows}) == len(rows) == 58
