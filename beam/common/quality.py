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

import operator
import re
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from operator import methodcaller
from typing import Any

from beam.common.spec import Field, QualityRule
from beam.common.validation import Invalid, show

# One "@", something on both sides, a dot in the domain, no whitespace anywhere.
EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")

Check = Callable[[Any], bool]


def _check_fn(rule: QualityRule, field_type: str) -> tuple[Check, str]:
    """The predicate for one non-null value, and a human phrase for the dead letter.

    The value has passed schema validation, so its Python type follows from ``field_type``.
    Where that makes a plain C callable enough (``re.match``, ``frozenset.__contains__``,
    ``0 < v``) it is used directly: this runs for every rule of every record.
    """
    c = rule.check
    if c == "not_null":
        return (lambda v: v != []), "must not be null"
    if c == "valid_email":  # STRING fields only (the spec parser checks): v is a str
        return EMAIL.match, "is not a valid email address"
    # NUMERIC/BIGNUMERIC values arrive as decimal text (validation keeps their precision so);
    # INT64/FLOAT64 values are Python numbers.
    as_number: Callable[[Any], Any] = Decimal if field_type in ("NUMERIC", "BIGNUMERIC") else (lambda v: v)
    if c == "positive_number":
        if as_number is Decimal:
            return (lambda v: Decimal(v) > 0), "must be a positive number"
        return partial(operator.lt, 0), "must be a positive number"
    if c == "range":
        lo, hi = rule.min, rule.max
        if lo is not None and hi is not None:
            return (lambda v: lo <= as_number(v) <= hi), f"must be within [{lo}, {hi}]"
        if lo is not None:
            return (lambda v: as_number(v) >= lo), f"must be >= {lo}"
        return (lambda v: as_number(v) <= hi), f"must be <= {hi}"  # type: ignore[operator]
    if c == "regex":
        search = re.compile(rule.pattern or "").search
        if field_type == "STRING":
            return search, f"must match /{rule.pattern}/"
        return (lambda v: search(str(v)) is not None), f"must match /{rule.pattern}/"
    if c == "allowed_values":
        if field_type == "STRING" and all(type(x) is str for x in rule.values):
            return frozenset(rule.values).__contains__, f"must be one of {list(rule.values)}"
        # A bool is an int in Python (True == 1); keep the types apart when comparing.
        allowed = frozenset((type(x) is bool, x) for x in rule.values)
        return (lambda v: (type(v) is bool, v) in allowed), f"must be one of {list(rule.values)}"
    raise AssertionError(f"unhandled check {c}")  # spec parsing admits only the checks above


def field_getter(path: str) -> Callable[[dict[str, Any]], Any]:
    """A reader of the value at a dotted ``path`` of a row (None where any part is missing)."""
    parts = path.split(".")
    if len(parts) == 1:
        # A C-level ``row.get(name)``: no Python frame per call on the hot path.
        return methodcaller("get", parts[0])

    def get(rec: dict[str, Any]) -> Any:
        v: Any = rec
        for p in parts:
            if v is None:
                return None
            v = v.get(p)
        return v
    return get


class QualityChecker:
    """Applies compiled rules to a validated row; raises :class:`Invalid` on the first failure.

    Each rule is compiled to ``(get, ok, null_fails, rule, phrase)``: a C-level getter, a
    predicate for non-null values, and whether null fails it (only ``not_null``). These run
    for every rule of every record, so the rules are then turned into one straight-line
    function (:func:`_straight_line`): no loop, no tuple unpacking, and the commonest
    predicates (``0 < v``, ``lo <= v <= hi``, ``v in allowed``) written inline: ~15% less per
    row than a loop over the plan on the benchmark's six rules (most of what remains is the
    regular expressions). Only names are generated; every value (field paths, bounds,
    patterns, messages) is bound as a variable, never spelled into the code.
    """

    def __init__(self, rules: tuple[QualityRule, ...], fields: tuple[Field, ...] = ()) -> None:
        self._args = (rules, fields)
        by_path = dict(_walk(fields))
        self._plan = []
        inline: list[str | None] = []
        for rule in rules:
            f = by_path.get(rule.field)
            field_type = f.type if f else ""
            ok, phrase = _check_fn(rule, field_type)
            repeated = f is not None and f.mode == "REPEATED"
            if repeated and rule.check != "not_null":
                ok = _each(ok)
            self._plan.append((field_getter(rule.field), ok, rule.check == "not_null", rule, phrase))
            inline.append(None if repeated else _inline(rule, field_type))
        self.empty = not self._plan
        self._inline = inline
        self._check = _straight_line(self._plan, inline)

    def source(self, locals_by_field: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
        """The body of the checking function and the names it uses, for `beam.common.checker`:
        a rule on a field named in ``locals_by_field`` reads that local (which holds the
        field's validated value) instead of getting it from ``row``."""
        return _source(self._plan, self._inline, locals_by_field)

    def __call__(self, row: dict[str, Any]) -> None:
        self._check(row)

    def __reduce__(self) -> Any:  # the generated function does not pickle; the rules do
        return (QualityChecker, self._args)


def _inline(rule: QualityRule, field_type: str) -> str | None:
    """The predicate as an expression over ``v`` and the rule's bound names, where one is
    exactly equivalent to :func:`_check_fn`'s and cheaper than calling it (``{i}`` is the
    rule's index, naming its bound values)."""
    numeric = field_type not in ("NUMERIC", "BIGNUMERIC")  # values are Python numbers
    if rule.check == "positive_number" and numeric:
        return "0 < v"
    if rule.check == "range" and numeric:
        if rule.min is not None and rule.max is not None:
            return "lo{i} <= v <= hi{i}"
        return "v >= lo{i}" if rule.min is not None else "v <= hi{i}"
    if rule.check == "allowed_values" and field_type == "STRING" and all(type(x) is str for x in rule.values):
        return "v in allowed{i}"
    return None


def _straight_line(plan: list[Any], inline: list[str | None]) -> Callable[[dict[str, Any]], None]:
    body, ns = _source(plan, inline, {})
    source = "def check(row):\n" + ("\n".join(body) if body else "    return None") + "\n"
    exec(compile(source, "<data-quality rules>", "exec"), ns)  # noqa: S102 - names only, see above
    return ns["check"]


def _source(plan: list[Any], inline: list[str | None],
            locals_by_field: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    ns: dict[str, Any] = {"Invalid": Invalid, "show": show}
    body = []
    for i, ((get, ok, null_fails, rule, phrase), expr) in enumerate(zip(plan, inline, strict=True)):
        ns[f"get{i}"], ns[f"ok{i}"] = get, ok
        ns[f"lo{i}"], ns[f"hi{i}"] = rule.min, rule.max
        if expr is not None and rule.check == "allowed_values":
            ns[f"allowed{i}"] = frozenset(rule.values)
        ns[f"reason{i}"] = f"dq_{rule.check}"
        ns[f"what{i}"] = f"field {rule.field!r} {phrase}"
        test = (expr or "ok{i}(v)").format(i=i)
        local = locals_by_field.get(rule.field)
        body.append(f"    v = {local}" if local else f"    v = get{i}(row)")
        if null_fails:
            body.append("    if v is None:")
            body.append(f"        raise Invalid(reason{i}, what{i})")
            body.append(f"    if not ({test}):")
        else:
            body.append(f"    if v is not None and not ({test}):")
        body.append(f"        raise Invalid(reason{i}, what{i} + ', got ' + show(v))")
    return body, ns


def _each(ok: Check) -> Check:
    return lambda values: all(ok(x) for x in values)


def _walk(fields: tuple[Field, ...], prefix: str = "") -> list[tuple[str, Field]]:
    out = []
    for f in fields:
        out.append((prefix + f.name, f))
        out.extend(_walk(f.fields, prefix + f.name + "."))
    return out


def compile_rules(rules: tuple[QualityRule, ...], fields: tuple[Field, ...] = ()) -> QualityChecker:
    """The checker for a spec's rules; ``fields`` (the schema) says which fields are REPEATED."""
    return QualityChecker(rules, fields)
