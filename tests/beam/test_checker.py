"""The generated RecordChecker gives exactly what the separate steps give, on every case.

``RecordChecker`` fuses validation, the data-quality rules and the dedup key into one function
(``beam/common/checker.py``); these tests hold it to ``validate -> check -> key_function`` on the
schema and rule cases of ``test_rules.py`` and on the benchmark's generated records, which carry
every reason of rejection.
"""

from __future__ import annotations

import pickle
from typing import Any

import orjson
import pytest

from beam.common.checker import RecordChecker, key_function
from beam.common.quality import compile_rules
from beam.common.spec import parse_spec
from beam.common.synthetic import SPEC, generate
from beam.common.validation import Invalid, RecordValidator
from tests.beam.test_rules import DQ_CASES, FIELDS, SCHEMA_CASES

KEYS = [("id",), ("id", "ts"), ("ts",), ("address.city",), ("id", "quantity", "tags"), ("quantity",), None]


def _separately(spec: Any, key_paths: tuple[str, ...] | None, record: Any, origin: str) -> Any:
    try:
        row = RecordValidator(spec.fields, spec.validation)(record)
        compile_rules(spec.quality_rules, spec.fields)(row)
    except Invalid as bad:
        return ("invalid", bad.reason, bad.detail)
    row["_message_id"] = origin
    return row, (key_function(key_paths)(row) if key_paths else None)


def _fused(spec: Any, key_paths: tuple[str, ...] | None, record: Any, origin: str) -> Any:
    try:
        return RecordChecker(spec.fields, spec.validation, spec.quality_rules, key_paths)(record, origin)
    except Invalid as bad:
        return ("invalid", bad.reason, bad.detail)


def _spec(rules: list[dict[str, Any]], validation: str = "strict") -> Any:
    return parse_spec({"source_id": "t", "schema": {"validation": validation, "fields": FIELDS},
                       "data_quality": rules})


ALL_RULES = [
    {"field": "status", "check": "not_null"}, {"field": "email", "check": "valid_email"},
    {"field": "amount", "check": "positive_number"}, {"field": "quantity", "check": "range", "min": 1, "max": 9},
    {"field": "id", "check": "regex", "pattern": "^[a-z]+$"}, {"field": "tags", "check": "not_null"},
    {"field": "address.zip", "check": "regex", "pattern": "^[0-9]{4}$"},
]
# Every rule case with one key; every schema case under all rules with every shape of key.
CASES = [pytest.param([rule], {"id": "x", **record}, ("id", "ts"), id=f"dq-{rule['check']}-{rule['field']}-{i}")
         for i, (rule, record, _passes) in enumerate(DQ_CASES)]
CASES += [pytest.param(ALL_RULES, record, key, id=f"schema-{i}-key-{'+'.join(key) if key else 'none'}")
          for i, (record, _expected) in enumerate(SCHEMA_CASES) for key in KEYS]


@pytest.mark.parametrize(("rules", "record", "key_paths"), CASES)
def test_fused_checker_equals_validate_then_check_then_key(rules: list[dict[str, Any]], record: Any,
                                                           key_paths: tuple[str, ...] | None) -> None:
    spec = _spec(rules)
    assert _fused(spec, key_paths, record, "f.json#1") == _separately(spec, key_paths, record, "f.json#1")


def test_fused_checker_equals_the_steps_on_generated_records_of_every_reason() -> None:
    spec = parse_spec(SPEC)
    checker = RecordChecker(spec.fields, spec.validation, spec.quality_rules, spec.dedup.key)
    validate = RecordValidator(spec.fields, spec.validation)
    check, key_of = compile_rules(spec.quality_rules, spec.fields), key_function(spec.dedup.key)
    payloads, expected = generate(3000)
    outcomes = set()
    for n, payload in enumerate(payloads):
        try:
            record = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        try:
            fused: Any = checker(record, f"o#{n}")
        except Invalid as bad:
            fused = ("invalid", bad.reason, bad.detail)
        try:
            row = validate(record)
            check(row)
            row["_message_id"] = f"o#{n}"
            steps: Any = (row, key_of(row))
        except Invalid as bad:
            steps = ("invalid", bad.reason, bad.detail)
        assert fused == steps
        outcomes.add(fused[1] if fused[0] == "invalid" else "valid")
    # Every schema and rule reason but "unparseable" (decoding is the reader's) was exercised.
    assert outcomes == {"valid"} | {r for r in expected.invalid if r != "unparseable"}


def test_lenient_checker_counts_dropped_fields_like_the_validator() -> None:
    spec = _spec([], validation="lenient")
    checker = RecordChecker(spec.fields, spec.validation, spec.quality_rules, ("id",))
    row, key = checker({"id": "a", "extra": 1, "address": {"city": "Oslo", "street": "x"}}, "o")
    assert row == {"id": "a", "address": {"city": "Oslo"}, "_message_id": "o"} and key == "a"
    assert checker.dropped_unknown == 2


def test_checker_pickles_as_its_spec() -> None:
    spec = _spec(ALL_RULES)
    checker = pickle.loads(pickle.dumps(RecordChecker(spec.fields, spec.validation, spec.quality_rules, ("id",))))
    assert checker({"id": "abc", "status": "s", "tags": ["t"]}, "o") == (
        {"id": "abc", "status": "s", "tags": ["t"], "_message_id": "o"}, "abc")
