"""Schema validation and data-quality checks, one record at a time (no Beam)."""

from __future__ import annotations

from typing import Any

import pytest

from beam.common.quality import compile_rules
from beam.common.spec import SpecError, parse_spec
from beam.common.validation import Invalid, RecordValidator

FIELDS = [
    {"name": "id", "type": "STRING", "mode": "REQUIRED"},
    {"name": "amount", "type": "FLOAT64"},
    {"name": "price", "type": "NUMERIC"},
    {"name": "quantity", "type": "INTEGER"},
    {"name": "email", "type": "STRING"},
    {"name": "status", "type": "STRING"},
    {"name": "flag", "type": "BOOLEAN"},
    {"name": "ts", "type": "TIMESTAMP"},
    {"name": "day", "type": "DATE"},
    {"name": "blob", "type": "BYTES"},
    {"name": "tags", "type": "STRING", "mode": "REPEATED"},
    {"name": "address", "type": "RECORD", "fields": [
        {"name": "city", "type": "STRING", "mode": "REQUIRED"},
        {"name": "zip", "type": "STRING"},
    ]},
]


def _spec(rules: list[dict[str, Any]] | None = None, validation: str = "strict") -> Any:
    return parse_spec({"source_id": "t", "schema": {"validation": validation, "fields": FIELDS},
                       "data_quality": rules or []})


def _check(rule: dict[str, Any], record: dict[str, Any]) -> str | None:
    """The reason a record fails with under one rule, or None if it passes."""
    spec = _spec([rule])
    row = RecordValidator(spec.fields, spec.validation)({"id": "x", **record})
    try:
        compile_rules(spec.quality_rules, spec.fields)(row)
    except Invalid as bad:
        return bad.reason
    return None


# --------------------------------------------------------------------------- data quality

DQ_CASES = [
    # (rule, record, passes)
    ({"field": "status", "check": "not_null"}, {"status": "new"}, True),
    ({"field": "status", "check": "not_null"}, {"status": None}, False),
    ({"field": "status", "check": "not_null"}, {}, False),
    ({"field": "status", "check": "not_null"}, {"status": ""}, True),
    ({"field": "tags", "check": "not_null"}, {"tags": []}, False),
    ({"field": "address", "check": "not_null"}, {"address": {"city": "Oslo"}}, True),
    ({"field": "address.zip", "check": "not_null"}, {"address": {"city": "Oslo"}}, False),
    ({"field": "email", "check": "valid_email"}, {"email": "ada@example.com"}, True),
    ({"field": "email", "check": "valid_email"}, {"email": "ada.lovelace+tag@mail.example.co.uk"}, True),
    ({"field": "email", "check": "valid_email"}, {"email": "ada.example.com"}, False),
    ({"field": "email", "check": "valid_email"}, {"email": "ada@example"}, False),
    ({"field": "email", "check": "valid_email"}, {"email": "ada@@example.com"}, False),
    ({"field": "email", "check": "valid_email"}, {"email": "ada @example.com"}, False),
    ({"field": "email", "check": "valid_email"}, {"email": "@example.com"}, False),
    ({"field": "email", "check": "valid_email"}, {}, True),
    ({"field": "amount", "check": "positive_number"}, {"amount": 0.01}, True),
    ({"field": "amount", "check": "positive_number"}, {"amount": 0}, False),
    ({"field": "amount", "check": "positive_number"}, {"amount": -3}, False),
    ({"field": "amount", "check": "positive_number"}, {"amount": "nan"}, False),
    ({"field": "price", "check": "positive_number"}, {"price": "0.000000001"}, True),
    ({"field": "price", "check": "positive_number"}, {"price": "-0.5"}, False),
    ({"field": "amount", "check": "positive_number"}, {"amount": None}, True),
    ({"field": "quantity", "check": "range", "min": 1, "max": 10}, {"quantity": 1}, True),
    ({"field": "quantity", "check": "range", "min": 1, "max": 10}, {"quantity": 10}, True),
    ({"field": "quantity", "check": "range", "min": 1, "max": 10}, {"quantity": 11}, False),
    ({"field": "quantity", "check": "range", "min": 1, "max": 10}, {"quantity": 0}, False),
    ({"field": "amount", "check": "range", "min": 0}, {"amount": 1e9}, True),
    ({"field": "amount", "check": "range", "max": 0}, {"amount": 0.1}, False),
    ({"field": "price", "check": "range", "min": 0, "max": 1}, {"price": "0.5"}, True),
    ({"field": "status", "check": "regex", "pattern": "^[a-z]+$"}, {"status": "paid"}, True),
    ({"field": "status", "check": "regex", "pattern": "^[a-z]+$"}, {"status": "Paid"}, False),
    ({"field": "status", "check": "regex", "pattern": "ai"}, {"status": "paid"}, True),
    ({"field": "tags", "check": "regex", "pattern": "^#"}, {"tags": ["#a", "#b"]}, True),
    ({"field": "tags", "check": "regex", "pattern": "^#"}, {"tags": ["#a", "b"]}, False),
    ({"field": "status", "check": "allowed_values", "values": ["new", "paid"]}, {"status": "paid"}, True),
    ({"field": "status", "check": "allowed_values", "values": ["new", "paid"]}, {"status": "PAID"}, False),
    ({"field": "quantity", "check": "allowed_values", "values": [1, 2]}, {"quantity": "2"}, True),
    ({"field": "flag", "check": "allowed_values", "values": [True]}, {"flag": True}, True),
    ({"field": "quantity", "check": "allowed_values", "values": [True]}, {"quantity": 1}, False),
]


def _case_id(case: tuple[dict[str, Any], dict[str, Any], bool]) -> str:
    rule, record, passes = case
    params = "".join(f"[{k}={rule[k]}]" for k in ("min", "max", "pattern", "values") if k in rule)
    value = next(iter(record.values()), "<absent>") if record else "<absent>"
    return f"{rule['check']}{params}-{rule['field']}={value!r}-{'passes' if passes else 'fails'}"


@pytest.mark.parametrize(("rule", "record", "passes"), DQ_CASES, ids=[_case_id(c) for c in DQ_CASES])
def test_quality_check(rule: dict[str, Any], record: dict[str, Any], passes: bool) -> None:
    assert _check(rule, record) == (None if passes else f"dq_{rule['check']}")


def test_rules_apply_in_order_and_the_first_failure_is_the_reason() -> None:
    spec = _spec([{"field": "email", "check": "valid_email"}, {"field": "amount", "check": "positive_number"}])
    row = RecordValidator(spec.fields, "strict")({"id": "x", "email": "no", "amount": -1})
    with pytest.raises(Invalid) as bad:
        compile_rules(spec.quality_rules, spec.fields)(row)
    assert bad.value.reason == "dq_valid_email"
    assert "'email'" in bad.value.detail and "'no'" in bad.value.detail


# --------------------------------------------------------------------------- schema validation

SCHEMA_CASES = [
    # (record, expected row or failure reason)
    ({"id": "a"}, {"id": "a"}),
    ({"id": "a", "amount": 3}, {"id": "a", "amount": 3.0}),
    ({"id": "a", "amount": "2.5"}, {"id": "a", "amount": 2.5}),
    ({"id": "a", "amount": True}, "wrong_type"),
    ({"id": "a", "quantity": 4.0}, {"id": "a", "quantity": 4}),
    ({"id": "a", "quantity": "17"}, {"id": "a", "quantity": 17}),
    ({"id": "a", "quantity": 4.5}, "wrong_type"),
    ({"id": "a", "quantity": 2**63}, "wrong_type"),
    ({"id": "a", "price": 0.1}, {"id": "a", "price": "0.1"}),
    ({"id": "a", "price": "1e400"}, {"id": "a", "price": "1E+400"}),
    ({"id": "a", "price": "abc"}, "wrong_type"),
    ({"id": "a", "flag": "TRUE"}, {"id": "a", "flag": True}),
    ({"id": "a", "flag": 1}, "wrong_type"),
    ({"id": "a", "ts": "2026-11-26T10:00:00Z"}, {"id": "a", "ts": "2026-11-26T10:00:00+00:00"}),
    ({"id": "a", "ts": "2026-11-26T12:00:00+02:00"}, {"id": "a", "ts": "2026-11-26T10:00:00+00:00"}),
    ({"id": "a", "ts": "2026-11-26 10:00:00"}, {"id": "a", "ts": "2026-11-26T10:00:00+00:00"}),
    ({"id": "a", "ts": 0}, {"id": "a", "ts": "1970-01-01T00:00:00+00:00"}),
    ({"id": "a", "ts": "yesterday"}, "wrong_type"),
    ({"id": "a", "day": "2026-11-26"}, {"id": "a", "day": "2026-11-26"}),
    ({"id": "a", "day": "26/11/2026"}, "wrong_type"),
    ({"id": "a", "blob": "aGk="}, {"id": "a", "blob": "aGk="}),
    ({"id": "a", "blob": "not base64!"}, "wrong_type"),
    ({"id": "a", "tags": ["x", "y"]}, {"id": "a", "tags": ["x", "y"]}),
    ({"id": "a", "tags": None}, {"id": "a", "tags": []}),
    ({"id": "a", "tags": "x"}, "wrong_type"),
    ({"id": "a", "tags": ["x", None]}, "wrong_type"),
    ({"id": "a", "address": {"city": "Oslo"}}, {"id": "a", "address": {"city": "Oslo"}}),
    ({"id": "a", "address": {"zip": "0150"}}, "missing_required"),
    ({"id": "a", "address": "Oslo"}, "wrong_type"),
    ({"id": "a", "address": {"city": "Oslo", "street": "x"}}, "unknown_field"),
    ({"id": None}, "missing_required"),
    ({}, "missing_required"),
    ({"id": 7}, "wrong_type"),
    ({"id": "a", "extra": 1}, "unknown_field"),
    ([1, 2], "not_an_object"),
]


@pytest.mark.parametrize(("record", "expected"), SCHEMA_CASES, ids=[f"{r!r}->{e if isinstance(e, str) else 'ok'}" for r, e in SCHEMA_CASES])
def test_strict_schema_validation(record: Any, expected: Any) -> None:
    validate = RecordValidator(_spec().fields, "strict")
    if isinstance(expected, str):
        with pytest.raises(Invalid) as bad:
            validate(record)
        assert bad.value.reason == expected
    else:
        assert validate(record) == expected


def test_lenient_validation_drops_unknown_fields_and_counts_them() -> None:
    validate = RecordValidator(_spec(validation="lenient").fields, "lenient")
    assert validate({"id": "a", "extra": 1, "address": {"city": "Oslo", "street": "x"}}) == {
        "id": "a", "address": {"city": "Oslo"}}
    assert validate({"id": "b"}) == {"id": "b"}
    assert validate.dropped_unknown == 2  # the record and its nested address each lost a field
    with pytest.raises(Invalid, match="wrong_type"):  # lenient is about unknown fields only
        validate({"id": "a", "amount": "lots"})


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"source_id": "Bad-Id"}, "$.source_id", id="source-id-pattern"),
        pytest.param({"surprise": 1}, "unknown key(s) surprise", id="unknown-top-level-key"),
        pytest.param({"schema": {"fields": [{"name": "a", "type": "TEXT"}]}}, "unknown type 'TEXT'", id="unknown-type"),
        pytest.param({"schema": {"fields": [{"name": "a", "type": "RECORD"}]}}, "needs nested fields", id="record-without-fields"),
        pytest.param({"schema": {"fields": FIELDS, "validation": "loose"}}, "$.schema.validation", id="validation-mode"),
        pytest.param({"deduplication": {"key": ["nope"]}}, "'nope' is not a field", id="dedup-key-unknown"),
        pytest.param({"deduplication": {"key": ["address"]}}, "is a RECORD", id="dedup-key-record"),
        pytest.param({"data_quality": [{"field": "id", "check": "is_cool"}]}, "check: must be one of", id="unknown-check"),
        pytest.param({"data_quality": [{"field": "id", "check": "positive_number"}]}, "needs a numeric field", id="positive-on-string"),
        pytest.param({"data_quality": [{"field": "amount", "check": "range"}]}, "needs min, max or both", id="range-without-bounds"),
        pytest.param({"data_quality": [{"field": "amount", "check": "range", "min": 5, "max": 1}]}, "greater than max", id="range-inverted"),
        pytest.param({"data_quality": [{"field": "id", "check": "regex", "pattern": "("}]}, "does not compile", id="regex-bad"),
        pytest.param({"data_quality": [{"field": "id", "check": "allowed_values", "values": []}]}, "non-empty list", id="allowed-empty"),
        pytest.param({"data_quality": [{"field": "id", "check": "not_null", "min": 1}]}, "unknown key(s) min", id="param-for-wrong-check"),
        pytest.param({"silver": {"table": "silver.t"}}, "names no project", id="table-without-project"),
        pytest.param({"silver": {"table": "p-1234.silver.t; DROP"}}, "is not project.dataset.table", id="table-ref-injection"),
        pytest.param({"dead_letter": {"topic": "dl"}}, "projects/<project>/topics/<name>", id="topic-format"),
    ],
)
def test_spec_errors_name_the_path(change: dict[str, Any], message: str) -> None:
    doc = {"source_id": "t", "schema": {"fields": FIELDS}, **change}
    with pytest.raises(SpecError) as err:
        parse_spec(doc)
    assert message in str(err.value)
