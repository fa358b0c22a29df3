"""Data-quality rules: business checks applied to rows that already fit the schema.

The connector YAML's ``bronze_to_silver: data_quality: rules`` become the spec's
``data_quality`` list; :func:`compile_rules` turns it into a :class:`QualityChecker`. Rules run
in the order written, after schema validation (so values are already canonical: numbers are
numbers, timestamps are normalised), and the first failing rule is the record's reason,
``dq_<check>``.

The checks:

* ``not_null`` - the field is present and not null (for a REPEATED field: not empty).
* ``valid_email`` - a pragmatic address shape: ``local@domain.tld``, no spaces, one ``@``.
  It is a sanity check on the data, not RFC 5322.
* ``positive_number`` - strictly greater than zero.
* ``range`` - ``min <= value <= max``, both inclusive, either bound optional.
* ``regex`` - ``pattern`` is *searched* for in the value (Python ``re.search``, like
  BigQuery's ``REGEXP_CONTAINS``): anchor it with ``^...$`` to match the whole value.
* ``allowed_values`` - the value equals one of ``values`` (compared after type conversion, so
  ``values: [1, 2]`` on an INT64 field accepts the CSV text ``"2"``).

Null handling: every check except ``not_null`` passes a null or absent value, as SQL checks
do; combine with ``not_null`` to require the field. On a REPEATED field a check applies to
every item.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from beam.common.spec import QualityRule
from beam.common.validation import Invalid, show

# One "@", something on both sides, a dot in the domain, no whitespace anywhere.
EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")

Check = Callable[[Any], bool]


def _number(v: Any) -> float | Decimal:
    # NUMERIC values arrive as decimal text (validation keeps their precision that way).
    return Decimal(v) if type(v) is str else v


def _check_fn(rule: QualityRule) -> tuple[Check, str]:
    """The predicate for one non-null value, and a human phrase for the dead letter."""
    c = rule.check
    if c == "not_null":
        return (lambda v: v != []), "must not be null"
    if c == "valid_email":
        match = EMAIL.match
        return (lambda v: type(v) is str and match(v) is not None), "is not a valid email address"
    if c == "positive_number":
        return (lambda v: _number(v) > 0), "must be a positive number"
    if c == "range":
        lo, hi = rule.min, rule.max
        if lo is not None and hi is not None:
            return (lambda v: lo <= _number(v) <= hi), f"must be within [{lo}, {hi}]"
        if lo is not None:
            return (lambda v: _number(v) >= lo), f"must be >= {lo}"
        return (lambda v: _number(v) <= hi), f"must be <= {hi}"  # type: ignore[operator]
    if c == "regex":
        search = re.compile(rule.pattern or "").search
        return (lambda v: search(v if type(v) is str else str(v)) is not None), f"must match /{rule.pattern}/"
    if c == "allowed_values":
        # A bool is an int in Python (True == 1); keep the types apart when comparing.
        allowed = frozenset((type(x) is bool, x) for x in rule.values)
        return (lambda v: (type(v) is bool, v) in allowed), f"must be one of {list(rule.values)}"
    raise AssertionError(f"unhandled check {c}")  # spec parsing admits only the checks above


def _getter(path: str) -> Callable[[dict[str, Any]], Any]:
    parts = path.split(".")
    if len(parts) == 1:
        name = parts[0]
        return lambda rec: rec.get(name)

    def get(rec: dict[str, Any]) -> Any:
        v: Any = rec
        for p in parts:
            if v is None:
                return None
            v = v.get(p)
        return v
    return get


class QualityChecker:
    """Applies compiled rules to a validated row; raises :class:`Invalid` on the first failure."""

    def __init__(self, rules: tuple[QualityRule, ...]) -> None:
        self._plan = []
        for rule in rules:
            check, phrase = _check_fn(rule)
            self._plan.append((_getter(rule.field), check, rule.check == "not_null", rule, phrase))
        self.empty = not self._plan

    def __call__(self, row: dict[str, Any]) -> None:
        for get, check, is_not_null, rule, phrase in self._plan:
            v = get(row)
            if v is None:
                if is_not_null:
                    raise Invalid(f"dq_{rule.check}", f"field {rule.field!r} {phrase}")
                continue
            ok = all(check(x) for x in v) if type(v) is list and not is_not_null else check(v)
            if not ok:
                raise Invalid(f"dq_{rule.check}", f"field {rule.field!r} {phrase}, got {show(v)}")


def compile_rules(rules: tuple[QualityRule, ...]) -> QualityChecker:
    return QualityChecker(rules)
