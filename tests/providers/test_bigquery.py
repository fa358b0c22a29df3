"""BigQueryProvider: pure normalization tests, then tests against bqemulator.

bqemulator keeps projects apart, so each test works in its own ``project_id``. Requests are
checked on the wire with a recording ``requests.Session`` handed to the official client:
nothing is mocked.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from providers.bigquery import (
    BigQueryProvider,
    canonical_field,
    canonical_location,
    canonical_type,
    column_spec,
    emulator_endpoint,
    information_schema_query,
    label_patch,
    option_string,
    parse_data_type,
    partitioning_spec,
    split_table_name,
    table_specs_from_information_schema,
)
from providers.errors import AlreadyExists, NotFound, PermanentError
from reconciler.resources import Kind, Resource, unobservable

# --- pure: types, modes, fields ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("INTEGER", "INT64"),
        ("INT64", "INT64"),
        ("FLOAT", "FLOAT64"),
        ("FLOAT64", "FLOAT64"),
        ("BOOLEAN", "BOOL"),
        ("BOOL", "BOOL"),
        ("STRUCT", "RECORD"),
        ("RECORD", "RECORD"),
        ("DECIMAL", "NUMERIC"),
        ("BIGDECIMAL", "BIGNUMERIC"),
        ("string", "STRING"),
        ("TIMESTAMP", "TIMESTAMP"),
    ],
)
def test_canonical_type(name: str, canonical: str) -> None:
    assert canonical_type(name) == canonical


@pytest.mark.parametrize(
    ("field", "canonical"),
    [
        pytest.param(
            {"name": "id", "type": "INTEGER"},
            {"name": "id", "type": "INT64", "mode": "NULLABLE"},
            id="mode-defaults-to-nullable",
        ),
        pytest.param(
            {"name": "tags", "type": "STRING", "mode": "repeated"},
            {"name": "tags", "type": "STRING", "mode": "REPEATED"},
            id="mode-upper-case",
        ),
        pytest.param(
            {"name": "x", "type": "FLOAT", "mode": "REQUIRED", "description": ""},
            {"name": "x", "type": "FLOAT64", "mode": "REQUIRED"},
            id="empty-description-dropped",
        ),
        pytest.param(
            {"name": "ok", "type": "BOOLEAN", "description": "is it"},
            {"name": "ok", "type": "BOOL", "mode": "NULLABLE", "description": "is it"},
            id="description-kept",
        ),
        pytest.param(
            {
                "name": "s",
                "type": "STRUCT",
                "mode": "REPEATED",
                "fields": [{"name": "a", "type": "INTEGER"}, {"name": "b", "type": "STRUCT", "fields": []}],
            },
            {
                "name": "s",
                "type": "RECORD",
                "mode": "REPEATED",
                "fields": [
                    {"name": "a", "type": "INT64", "mode": "NULLABLE"},
                    {"name": "b", "type": "RECORD", "mode": "NULLABLE", "fields": []},
                ],
            },
            id="nested-struct-is-record",
        ),
    ],
)
def test_canonical_field(field: dict[str, Any], canonical: dict[str, Any]) -> None:
    assert canonical_field(field) == canonical
    assert canonical_field(bigquery.SchemaField.from_api_repr(field)) == canonical
    assert canonical_field(canonical) == canonical  # idempotent


# --- pure: INFORMATION_SCHEMA data_type parsing -----------------------------------------------


def _f(name: str, type_: str, mode: str = "NULLABLE", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "mode": mode, **extra}


@pytest.mark.parametrize(
    ("data_type", "parsed"),
    [
        pytest.param("STRING", {"type": "STRING", "mode": "NULLABLE"}, id="scalar"),
        pytest.param("INT64", {"type": "INT64", "mode": "NULLABLE"}, id="int64"),
        pytest.param("STRING(10)", {"type": "STRING", "mode": "NULLABLE"}, id="max-length-dropped"),
        pytest.param("NUMERIC(10, 2)", {"type": "NUMERIC", "mode": "NULLABLE"}, id="precision-scale-dropped"),
        pytest.param("ARRAY<STRING>", {"type": "STRING", "mode": "REPEATED"}, id="array-is-repeated"),
        pytest.param(
            "STRUCT<a STRING, b INT64>",
            {"type": "RECORD", "mode": "NULLABLE", "fields": [_f("a", "STRING"), _f("b", "INT64")]},
            id="struct",
        ),
        pytest.param(
            "ARRAY<STRUCT<a STRING, b INT64>>",
            {"type": "RECORD", "mode": "REPEATED", "fields": [_f("a", "STRING"), _f("b", "INT64")]},
            id="array-of-struct",
        ),
        pytest.param(
            "ARRAY<STRUCT<sku STRING NOT NULL, qty INT64, tags ARRAY<STRING>, price NUMERIC(9, 2), "
            "dims STRUCT<w FLOAT64, h FLOAT64>>>",
            {
                "type": "RECORD",
                "mode": "REPEATED",
                "fields": [
                    _f("sku", "STRING", "REQUIRED"),
                    _f("qty", "INT64"),
                    _f("tags", "STRING", "REPEATED"),
                    _f("price", "NUMERIC"),
                    _f("dims", "RECORD", fields=[_f("w", "FLOAT64"), _f("h", "FLOAT64")]),
                ],
            },
            id="nested-not-null-repeated-and-params",
        ),
        pytest.param(
            "STRUCT<`select` STRING, `from` BOOL>",
            {"type": "RECORD", "mode": "NULLABLE", "fields": [_f("select", "STRING"), _f("from", "BOOL")]},
            id="quoted-field-names",
        ),
        pytest.param("RANGE<DATE>", {"type": "RANGE", "mode": "NULLABLE"}, id="range"),
        pytest.param(
            "ARRAY<STRING NOT NULL>", {"type": "STRING", "mode": "REPEATED"}, id="array-stays-repeated"
        ),
    ],
)
def test_parse_data_type(data_type: str, parsed: dict[str, Any]) -> None:
    assert parse_data_type(data_type) == parsed


@pytest.mark.parametrize(
    "data_type", ["ARRAY<STRING", "STRUCT<>", "STRUCT<a>", "STRING NOT", "INT64 extra", "A<<"]
)
def test_parse_data_type_rejects_malformed_types(data_type: str) -> None:
    with pytest.raises(ValueError, match="unsupported BigQuery type"):
        parse_data_type(data_type)


@pytest.mark.parametrize(
    ("data_type", "is_nullable", "mode"),
    [
        ("STRING", "YES", "NULLABLE"),
        ("STRING", "NO", "REQUIRED"),
        ("ARRAY<STRING>", "NO", "REPEATED"),
        ("ARRAY<STRING>", "YES", "REPEATED"),
        ("STRUCT<a STRING>", "NO", "REQUIRED"),
    ],
)
def test_column_spec_top_level_mode(data_type: str, is_nullable: str, mode: str) -> None:
    assert column_spec("c", data_type, is_nullable, {})["mode"] == mode


def test_column_spec_attaches_descriptions_by_field_path() -> None:
    descriptions = {"items": "line items", "items.sku": "stock unit", "items.dims.w": "width"}
    assert column_spec(
        "items", "ARRAY<STRUCT<sku STRING, dims STRUCT<w FLOAT64>>>", "NO", descriptions
    ) == _f(
        "items",
        "RECORD",
        "REPEATED",
        description="line items",
        fields=[
            _f("sku", "STRING", description="stock unit"),
            _f("dims", "RECORD", fields=[_f("w", "FLOAT64", description="width")]),
        ],
    )


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ('"Orders, as received"', "Orders, as received"),
        ('"say \\"hi\\""', 'say "hi"'),
        ("'single quoted'", "single quoted"),
        ('"line\\nbreak"', "line\nbreak"),
        ('"café ✓"', "café ✓"),
        ('"what\\?"', "what?"),
        ('"\\x41\\101\\u00e9\\U0001F600"', "AA\u00e9\U0001f600"),
        ("unquoted", "unquoted"),
        (None, None),
    ],
)
def test_option_string(literal: str | None, value: str | None) -> None:
    assert option_string(literal) == value


@pytest.mark.parametrize(
    ("location", "canonical"),
    [
        ("EU", "EU"),
        ("eu", "EU"),
        ("US", "US"),
        ("europe-west1", "europe-west1"),
        ("EUROPE-WEST1", "europe-west1"),
    ],
)
def test_canonical_location(location: str, canonical: str) -> None:
    assert canonical_location(location) == canonical


@pytest.mark.parametrize(
    ("host", "endpoint"),
    [
        ("127.0.0.1:9050", "http://127.0.0.1:9050"),
        ("http://127.0.0.1:9050", "http://127.0.0.1:9050"),
        ("https://bq.example:443", "https://bq.example:443"),
    ],
)
def test_emulator_endpoint(host: str, endpoint: str) -> None:
    assert emulator_endpoint(host) == endpoint


@pytest.mark.parametrize(
    ("partitioning", "spec"),
    [
        pytest.param(None, None, id="not-partitioned"),
        pytest.param(
            bigquery.TimePartitioning(type_="DAY"), {"type": "DAY", "field": None, "expiration_ms": None},
            id="ingestion-time"
        ),
        pytest.param(
            bigquery.TimePartitioning(type_="DAY", field="ts", expiration_ms=86400000),
            {"type": "DAY", "field": "ts", "expiration_ms": 86400000},
            id="field-with-expiration",
        ),
    ],
)
def test_partitioning_spec(
    partitioning: bigquery.TimePartitioning | None, spec: dict[str, Any] | None
) -> None:
    assert partitioning_spec(partitioning) == spec


@pytest.mark.parametrize("name", ["orders", ".orders", "silver.", "a.b.c"])
def test_table_names_must_be_dataset_dot_table(name: str) -> None:
    with pytest.raises(PermanentError):
        split_table_name(name)


def test_label_patch_sends_removals_as_null_on_the_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIGQUERY_EMULATOR_HOST", raising=False)
    assert label_patch({"a": "1", "b": "2"}, {"a": "1", "c": "3"}) == {"a": "1", "b": None, "c": "3"}


def test_label_patch_sends_the_desired_map_on_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", "http://127.0.0.1:1")
    assert label_patch({"a": "1", "b": "2"}, {"a": "1", "c": "3"}) == {"a": "1", "c": "3"}


def test_table_specs_from_information_schema_rows() -> None:
    # A tables.list item and INFORMATION_SCHEMA rows shaped as the real API documents them.
    item = bigquery.table.TableListItem(
        {
            "tableReference": {"projectId": "p", "datasetId": "silver", "tableId": "orders"},
            "type": "TABLE",
            "labels": {"managed-by": "headwater"},
            "timePartitioning": {"type": "DAY", "field": "ts", "expirationMs": "7776000000"},
            "clustering": {"fields": ["customer"]},
        }
    )
    bare = bigquery.table.TableListItem(
        {"tableReference": {"projectId": "p", "datasetId": "silver", "tableId": "bare"}, "type": "TABLE"}
    )
    rows = [  # deliberately out of column order
        {
            "row_kind": "column",
            "table_name": "orders",
            "path": "items",
            "ordinal_position": 3,
            "is_nullable": "YES",
            "data_type": "ARRAY<STRUCT<sku STRING NOT NULL, qty INT64>>",
            "text": None,
        },
        {
            "row_kind": "column",
            "table_name": "orders",
            "path": "id",
            "ordinal_position": 1,
            "is_nullable": "NO",
            "data_type": "INT64",
            "text": None,
        },
        {
            "row_kind": "column",
            "table_name": "orders",
            "path": "ts",
            "ordinal_position": 2,
            "is_nullable": "YES",
            "data_type": "TIMESTAMP",
            "text": None,
        },
        {
            "row_kind": "column",
            "table_name": "bare",
            "path": "x",
            "ordinal_position": 1,
            "is_nullable": "YES",
            "data_type": "STRING",
            "text": None,
        },
        {
            "row_kind": "field",
            "table_name": "orders",
            "path": "id",
            "ordinal_position": None,
            "is_nullable": None,
            "data_type": None,
            "text": "order id",
        },
        {
            "row_kind": "field",
            "table_name": "orders",
            "path": "items.sku",
            "ordinal_position": None,
            "is_nullable": None,
            "data_type": None,
            "text": "stock unit",
        },
        {
            "row_kind": "table",
            "table_name": "orders",
            "path": "require_partition_filter",
            "ordinal_position": None,
            "is_nullable": None,
            "data_type": None,
            "text": "true",
        },
        {
            "row_kind": "table",
            "table_name": "orders",
            "path": "description",
            "ordinal_position": None,
            "is_nullable": None,
            "data_type": None,
            "text": '"Orders, validated"',
        },
        {
            "row_kind": "column",
            "table_name": "not_listed",
            "path": "y",
            "ordinal_position": 1,
            "is_nullable": "YES",
            "data_type": "STRING",
            "text": None,
        },
    ]

    assert table_specs_from_information_schema([item, bare], rows) == {
        "orders": {
            "schema": [
                _f("id", "INT64", "REQUIRED", description="order id"),
                _f("ts", "TIMESTAMP"),
                _f(
                    "items",
                    "RECORD",
                    "REPEATED",
                    fields=[
                        _f("sku", "STRING", "REQUIRED", description="stock unit"),
                        _f("qty", "INT64"),
                    ],
                ),
            ],
            "time_partitioning": {"type": "DAY", "field": "ts", "expiration_ms": 7776000000},
            "clustering_fields": ["customer"],
            "require_partition_filter": True,
            "description": "Orders, validated",
        },
        "bare": {"schema": [_f("x", "STRING")], "time_partitioning": None, "clustering_fields": None,
                 "require_partition_filter": False},
    }


def test_information_schema_query_reads_the_three_views() -> None:
    sql = information_schema_query("my-project", "silver")
    for view in ("COLUMNS", "COLUMN_FIELD_PATHS", "TABLE_OPTIONS"):
        assert f"`my-project.silver`.INFORMATION_SCHEMA.{view}" in sql


def test_immutable_fields() -> None:
    # Paths: a partition's type and column are immutable; its expiration is not.
    assert BigQueryProvider("p", "EU").immutable_fields == {
        Kind.BIGQUERY_DATASET: frozenset({"location"}),
        Kind.BIGQUERY_TABLE: frozenset({"time_partitioning.type", "time_partitioning.field"}),
    }


# --- against the emulator ----------------------------------------------------------------------


class RecordingSession(requests.Session):
    """A real HTTP session that remembers every request it sends (method, path, JSON body, headers)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, Any, dict[str, str]]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        body = kwargs.get("data") or kwargs.get("json")
        if isinstance(body, str | bytes):
            body = json.loads(body)
        self.sent.append((method, requests.utils.urlparse(url).path, body, dict(kwargs.get("headers") or {})))
        return super().request(method, url, *args, **kwargs)

    def bodies(self, method: str) -> list[Any]:
        return [body for sent_method, _, body, _ in self.sent if sent_method == method]

    def headers_of(self, method: str) -> list[dict[str, str]]:
        return [headers for sent_method, _, _, headers in self.sent if sent_method == method]

    def methods(self) -> list[str]:
        return [method for method, _, _, _ in self.sent]


@pytest.fixture
def session(emulators: Any) -> RecordingSession:
    return RecordingSession()


@pytest.fixture
def client(emulators: Any, project_id: str, session: RecordingSession) -> bigquery.Client:
    return bigquery.Client(
        project=project_id,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=emulators.bigquery_host),
        _http=session,
    )


@pytest.fixture
def provider(project_id: str, client: bigquery.Client) -> BigQueryProvider:
    return BigQueryProvider(project_id, "EU", client=client)


LABELS = {"managed-by": "headwater", "headwater-platform": "test"}
DATASET_SPEC = {"location": "EU", "description": "headwater silver zone (test)"}
SCHEMA = [
    _f("order_id", "INT64", "REQUIRED", description="Order number"),
    _f("ts", "TIMESTAMP"),
    _f("customer", "STRING"),
    _f("amount", "NUMERIC"),
    _f("paid", "BOOL"),
    _f("ratio", "FLOAT64"),
    _f(
        "lines",
        "RECORD",
        "REPEATED",
        description="Order lines",
        fields=[
            _f("sku", "STRING", "REQUIRED", description="Stock unit"),
            _f("qty", "INT64"),
            _f("tags", "STRING", "REPEATED"),
            _f("dims", "RECORD", fields=[_f("w", "FLOAT64"), _f("h", "FLOAT64")]),
        ],
    ),
]
TABLE_SPEC = {
    "schema": SCHEMA,
    "time_partitioning": {"type": "DAY", "field": "ts", "expiration_ms": 90 * 86400000},
    "clustering_fields": ["customer", "order_id"],
    "description": "Validated orders",
}
RAW_SPEC = {  # ingestion-time partitioning, no clustering, no description
    "schema": [
        _f("payload", "STRING", "REQUIRED"),
        _f("attributes", "RECORD", "REPEATED", fields=[_f("key", "STRING"), _f("value", "STRING")]),
    ],
    "time_partitioning": {"type": "DAY", "field": None},
    "clustering_fields": None,
}


# What observe adds to a created resource's spec: the datasets' unset default expirations, and
# for tables an unset partition expiration and (on bqemulator, which drops it) an unobservable
# require_partition_filter.
DS_UNSET = {"default_table_expiration_ms": None, "default_partition_expiration_ms": None}
RPF_ON_EMULATOR = unobservable("bqemulator does not keep require_partition_filter")


def observed_table(spec: dict[str, Any]) -> dict[str, Any]:
    out = {**spec, "require_partition_filter": RPF_ON_EMULATOR}
    if spec.get("time_partitioning") is not None:
        out["time_partitioning"] = {"expiration_ms": None, **spec["time_partitioning"]}
    return out


def dataset(name: str = "silver", labels: dict[str, str] | None = None, **spec: Any) -> Resource:
    return Resource(Kind.BIGQUERY_DATASET, name, {**DATASET_SPEC, **spec}, labels or dict(LABELS))


def table(name: str = "silver.orders", labels: dict[str, str] | None = None, **spec: Any) -> Resource:
    return Resource(Kind.BIGQUERY_TABLE, name, {**TABLE_SPEC, **spec}, labels or dict(LABELS))


def observed(provider: BigQueryProvider, kind: Kind) -> dict[str, Resource]:
    return {r.name: r for r in provider.observe(kind)}


def calls_during(provider: BigQueryProvider, action: Any) -> dict[str, int]:
    before = dict(provider.api_calls())
    action()
    return {k: v - before.get(k, 0) for k, v in provider.api_calls().items() if v != before.get(k, 0)}


# datasets


def test_dataset_create_then_observe_equals_desired(provider: BigQueryProvider) -> None:
    desired = dataset()
    provider.create(desired)

    live = observed(provider, Kind.BIGQUERY_DATASET)["silver"]
    assert (live.spec, live.labels) == ({**DS_UNSET, **desired.spec}, desired.labels)


def test_dataset_without_description_and_default_location(provider: BigQueryProvider) -> None:
    desired = Resource(Kind.BIGQUERY_DATASET, "bronze", {}, dict(LABELS))
    provider.create(desired)

    assert observed(provider, Kind.BIGQUERY_DATASET)["bronze"].spec == {"location": "EU", **DS_UNSET}


def test_unmanaged_datasets_are_not_observed(provider: BigQueryProvider, client: bigquery.Client) -> None:
    client.create_dataset("unlabelled")
    foreign = bigquery.Dataset(f"{client.project}.foreign")
    foreign.labels = {"managed-by": "terraform"}
    client.create_dataset(foreign)
    provider.create(dataset())

    assert set(observed(provider, Kind.BIGQUERY_DATASET)) == {"silver"}


def test_dataset_second_create_raises_already_exists(provider: BigQueryProvider) -> None:
    provider.create(dataset())
    with pytest.raises(AlreadyExists):
        provider.create(dataset())


def test_delete_missing_dataset_succeeds(provider: BigQueryProvider) -> None:
    provider.delete(dataset("never_created"))


def test_delete_dataset(provider: BigQueryProvider) -> None:
    provider.create(dataset())
    provider.delete(dataset())
    assert observed(provider, Kind.BIGQUERY_DATASET) == {}


def test_dataset_update_description_sends_only_it(
    provider: BigQueryProvider, session: RecordingSession
) -> None:
    provider.create(dataset())
    session.sent.clear()

    desired = dataset(description="renamed")
    provider.update(desired, ["description"])

    assert session.methods() == ["PATCH"]
    assert session.bodies("PATCH") == [{"description": "renamed"}]
    assert observed(provider, Kind.BIGQUERY_DATASET)["silver"].spec == {**DS_UNSET, **desired.spec}


def test_dataset_update_labels_adds_and_removes(
    provider: BigQueryProvider, session: RecordingSession
) -> None:
    provider.create(dataset(labels={**LABELS, "team": "data"}))
    session.sent.clear()

    desired = dataset(labels={"managed-by": "headwater", "team": "platform"})
    provider.update(desired, ["labels"])

    # A read (the real API needs the live labels to send removals as null), then one PATCH of
    # the labels alone. On bqemulator the map is sent whole, without nulls (see label_patch).
    assert session.methods() == ["GET", "PATCH"]
    assert session.bodies("PATCH") == [{"labels": {"managed-by": "headwater", "team": "platform"}}]
    live = observed(provider, Kind.BIGQUERY_DATASET)["silver"]
    assert (live.spec, live.labels) == ({**DS_UNSET, **DATASET_SPEC}, desired.labels)


def test_dataset_observe_is_one_list_and_one_get_per_managed_dataset(
    provider: BigQueryProvider, client: bigquery.Client
) -> None:
    for name in ("bronze", "silver", "gold"):
        provider.create(dataset(name))
    client.create_dataset("unmanaged")

    calls = calls_during(provider, lambda: provider.observe(Kind.BIGQUERY_DATASET))
    assert calls == {"bigquery.list_datasets": 1, "bigquery.get_dataset": 3}


def test_client_from_environment_accepts_host_without_scheme(
    emulators: Any, project_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", emulators.bigquery_host.removeprefix("http://"))
    provider = BigQueryProvider(project_id, "EU")  # no client: make_client reads the environment
    provider.create(dataset())
    assert set(observed(provider, Kind.BIGQUERY_DATASET)) == {"silver"}


# tables


def test_table_create_then_observe_equals_desired(provider: BigQueryProvider) -> None:
    provider.create(dataset())
    provider.create(dataset("bronze"))
    orders = table()
    raw = Resource(
        Kind.BIGQUERY_TABLE, "bronze.raw_orders", RAW_SPEC, {**LABELS, "headwater-source": "orders"}
    )
    provider.create(orders)
    provider.create(raw)

    live = observed(provider, Kind.BIGQUERY_TABLE)
    assert set(live) == {"silver.orders", "bronze.raw_orders"}
    for desired in (orders, raw):
        assert live[desired.name].spec == observed_table(desired.spec)
        assert live[desired.name].labels == desired.labels


def test_unmanaged_tables_are_not_observed(provider: BigQueryProvider, client: bigquery.Client) -> None:
    provider.create(dataset())
    provider.create(table())
    client.create_table(
        bigquery.Table(f"{client.project}.silver.scratch", schema=[bigquery.SchemaField("x", "STRING")])
    )
    # A table labelled as ours, but in a dataset that is not: not observed either.
    client.create_dataset("sandbox")
    stray = bigquery.Table(f"{client.project}.sandbox.stray", schema=[bigquery.SchemaField("x", "STRING")])
    stray.labels = dict(LABELS)
    client.create_table(stray)

    assert set(observed(provider, Kind.BIGQUERY_TABLE)) == {"silver.orders"}


def test_table_second_create_raises_already_exists(provider: BigQueryProvider) -> None:
    provider.create(dataset())
    provider.create(table())
    with pytest.raises(AlreadyExists):
        provider.create(table())


def test_delete_missing_table_succeeds(provider: BigQueryProvider) -> None:
    provider.create(dataset())
    provider.delete(table("silver.never_created"))
    provider.delete(table("no_such_dataset.never_created"))


def test_delete_table(provider: BigQueryProvider) -> None:
    provider.create(dataset())
    provider.create(table())
    provider.delete(table())
    assert observed(provider, Kind.BIGQUERY_TABLE) == {}


def test_delete_dataset_that_still_has_tables_fails(provider: BigQueryProvider) -> None:
    provider.create(dataset())
    provider.create(table())
    with pytest.raises(PermanentError, match="not empty") as raised:
        provider.delete(dataset())
    assert not isinstance(raised.value, NotFound)
    assert set(observed(provider, Kind.BIGQUERY_TABLE)) == {"silver.orders"}


@pytest.mark.parametrize(
    ("field", "value", "body"),
    [
        pytest.param(
            "schema",
            [*SCHEMA, _f("channel", "STRING", description="Sales channel")],
            None,  # checked below: the whole new schema, in API shape
            id="schema-add-column",
        ),
        pytest.param(
            "description", "Orders, validated", {"description": "Orders, validated"}, id="description"
        ),
        pytest.param(
            "clustering_fields", ["customer"], {"clustering": {"fields": ["customer"]}}, id="clustering"
        ),
    ],
)
def test_table_update_sends_only_the_changed_field(
    provider: BigQueryProvider, session: RecordingSession, field: str, value: Any, body: dict[str, Any] | None
) -> None:
    provider.create(dataset())
    provider.create(table())
    session.sent.clear()

    desired = table(**{field: value})
    provider.update(desired, [field])

    assert session.methods() == ["PATCH"]
    (patch,) = session.bodies("PATCH")
    if field == "schema":
        assert set(patch) == {"schema"}
        assert [canonical_field(f) for f in patch["schema"]["fields"]] == value
    else:
        assert patch == body
    live = observed(provider, Kind.BIGQUERY_TABLE)["silver.orders"]
    assert live.spec == observed_table(desired.spec)


def test_table_clustering_removal_sends_null(provider: BigQueryProvider, session: RecordingSession) -> None:
    provider.create(dataset())
    provider.create(table())
    session.sent.clear()

    provider.update(table(clustering_fields=None), ["clustering_fields"])

    # The real API removes clustering on null. bqemulator ignores it and keeps the old fields (an
    # emulator departure, nothing the provider can do), so only the request is checked here.
    assert session.bodies("PATCH") == [{"clustering": None}]


def test_table_description_can_be_removed(provider: BigQueryProvider, session: RecordingSession) -> None:
    provider.create(dataset())
    provider.create(table())
    desired = Resource(
        Kind.BIGQUERY_TABLE,
        "silver.orders",
        {k: v for k, v in TABLE_SPEC.items() if k != "description"},
        dict(LABELS),
    )
    session.sent.clear()

    provider.update(desired, ["description"])

    assert session.bodies("PATCH") == [{"description": None}]
    assert observed(provider, Kind.BIGQUERY_TABLE)["silver.orders"].spec == observed_table(desired.spec)


def test_table_update_labels_adds_and_removes(provider: BigQueryProvider, session: RecordingSession) -> None:
    provider.create(dataset())
    provider.create(table(labels={**LABELS, "tier": "silver"}))
    session.sent.clear()

    desired = table(labels={"managed-by": "headwater", "owner": "sales"})
    provider.update(desired, ["labels"])

    assert session.methods() == ["GET", "PATCH"]
    assert session.bodies("PATCH") == [{"labels": {"managed-by": "headwater", "owner": "sales"}}]
    assert "If-Match" in session.headers_of("PATCH")[0]  # the etag read by the GET guards the PATCH
    live = observed(provider, Kind.BIGQUERY_TABLE)["silver.orders"]
    assert (live.spec, live.labels) == (observed_table(TABLE_SPEC), desired.labels)


def test_update_rejects_immutable_and_unknown_fields(provider: BigQueryProvider) -> None:
    with pytest.raises(PermanentError, match="table_type"):
        provider.update(table(), ["table_type"])
    with pytest.raises(PermanentError, match="location"):
        provider.update(dataset(), ["location"])


def test_table_observe_on_the_emulator_gets_each_table(provider: BigQueryProvider) -> None:
    """The emulator-only fallback (providers/bigquery.py, EMULATOR DEPARTURE): O(tables)."""
    provider.create(dataset())
    for n in range(5):
        provider.create(table(f"silver.t{n}"))

    calls = calls_during(provider, lambda: provider.observe(Kind.BIGQUERY_TABLE))
    assert calls == {"bigquery.list_datasets": 1, "bigquery.list_tables": 1, "bigquery.get_table": 5}


def test_table_observe_on_the_real_api_path_is_per_dataset_not_per_table(
    provider: BigQueryProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real-API path costs one list and one query per dataset, however many tables.

    Without BIGQUERY_EMULATOR_HOST the provider takes that path (its explicit client still
    talks to bqemulator). bqemulator cannot serve the path's *content* - its tables.list has no
    labels and its COLUMN_FIELD_PATHS view returns nothing - so this test checks the requests
    only; test_table_specs_from_information_schema_rows checks what the path builds from
    documented real-API responses.
    """
    provider.create(dataset())
    provider.create(dataset("gold"))
    for n in range(5):
        provider.create(table(f"silver.t{n}"))
        provider.create(table(f"gold.t{n}"))
    monkeypatch.delenv("BIGQUERY_EMULATOR_HOST")

    calls = calls_during(provider, lambda: provider.observe(Kind.BIGQUERY_TABLE))
    assert calls == {"bigquery.list_datasets": 1, "bigquery.list_tables": 2, "bigquery.query": 2}


# --- settings with their real mutability, reading by name, what a delete loses ------------------


def test_partition_expiration_is_updated_in_place_and_removed_with_never(
    provider: BigQueryProvider, session: RecordingSession
) -> None:
    from reconciler.plan import Action, reconcile

    provider.create(dataset())
    provider.create(table())  # 90-day partition expiration
    live = observed(provider, Kind.BIGQUERY_TABLE)["silver.orders"]
    shorter = table(time_partitioning={"type": "DAY", "field": "ts", "expiration_ms": 30 * 86400000})
    (change,) = reconcile([shorter], [live], provider.immutable_fields).changes
    assert (change.action, change.update_fields) == (Action.UPDATE, ("time_partitioning",))
    session.sent.clear()
    provider.update(shorter, ["time_partitioning"])
    assert session.bodies("PATCH") == [{"timePartitioning": {"type": "DAY", "field": "ts",
                                                             "expirationMs": str(30 * 86400000)}}]
    never = table(time_partitioning={"type": "DAY", "field": "ts", "expiration_ms": None})
    provider.update(never, ["time_partitioning"])
    live = observed(provider, Kind.BIGQUERY_TABLE)["silver.orders"]
    assert live.spec["time_partitioning"] == {"type": "DAY", "field": "ts", "expiration_ms": None}


def test_dataset_default_expirations_round_trip_and_update_in_place(provider: BigQueryProvider) -> None:
    desired = dataset(default_table_expiration_ms=7 * 86400000, default_partition_expiration_ms=None)
    provider.create(desired)
    assert observed(provider, Kind.BIGQUERY_DATASET)["silver"].spec == {**DS_UNSET, **desired.spec}
    changed = dataset(default_table_expiration_ms=None, default_partition_expiration_ms=86400000)
    provider.update(changed, ["default_table_expiration_ms", "default_partition_expiration_ms"])
    assert observed(provider, Kind.BIGQUERY_DATASET)["silver"].spec == changed.spec


def test_require_partition_filter_is_not_observable_on_the_emulator(provider: BigQueryProvider) -> None:
    from reconciler.plan import Action, reconcile

    provider.create(dataset())
    desired = table(require_partition_filter=True)
    provider.create(desired)
    live = observed(provider, Kind.BIGQUERY_TABLE)["silver.orders"]
    assert live.spec["require_partition_filter"] == RPF_ON_EMULATOR  # bqemulator drops it
    assert reconcile([desired], [live], provider.immutable_fields).changes[0].action == Action.NOOP, \
        "not replanned forever on the emulator"


def test_read_finds_datasets_and_tables_whoever_manages_them(
    provider: BigQueryProvider, client: bigquery.Client, project_id: str
) -> None:
    theirs = bigquery.Dataset(f"{project_id}.finance")
    theirs.labels = {"owner": "finance-team"}
    client.create_dataset(theirs, retry=None)
    client.create_table(bigquery.Table(f"{project_id}.finance.ledger", schema=[bigquery.SchemaField("x", "STRING")]),
                        retry=None)
    assert "finance" not in observed(provider, Kind.BIGQUERY_DATASET)
    (found,) = provider.read(Kind.BIGQUERY_DATASET, ["finance", "absent"])
    assert (found.name, found.labels, found.managed) == ("finance", {"owner": "finance-team"}, False)
    (ledger,) = provider.read(Kind.BIGQUERY_TABLE, ["finance.ledger", "finance.absent"])
    assert ledger.spec["schema"] == [_f("x", "STRING")] and not ledger.managed


def test_would_lose_counts_a_tables_rows_and_a_datasets_tables(provider: BigQueryProvider, client: bigquery.Client,
                                                                project_id: str) -> None:
    provider.create(dataset())
    provider.create(table())
    client.insert_rows_json(f"{project_id}.silver.orders", [{"order_id": i, "ts": "2026-01-01T00:00:00Z"}
                                                            for i in range(3)])
    assert provider.would_lose([table(), dataset()]) == {"bigquery_table.silver.orders": "3 rows",
                                                         "bigquery_dataset.silver": "1 tables"}
