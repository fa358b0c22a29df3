"""One record from decoded JSON to verdict: validate, check the data-quality rules, key it.

Schema validation (`beam.common.validation`), the data-quality rules (`beam.common.quality`) and
the dedup key (:func:`key_function`) are each defined and tested on their own. On the hot path
they run as ONE generated function per spec, :class:`RecordChecker`::

    row, key = checker(decoded_record, origin)   # or raises Invalid(reason, detail)

which is exactly ``row = validate(record); check(row); row["_message_id"] = origin;
key = key_of(row)``, with what that sequence spends between the steps taken out: four Python
calls per record (each ~0.1 us here), and the rules' and the key's reads of ``row`` - the
generated code uses the values validation has just computed, held in locals. Rules on nested or
REPEATED fields, and keys on nested fields, still read the row. Equivalence with the separate
steps is tested on every kind of record (``tests/beam/test_checker.py``).

Every value (field names, bounds, patterns, messages) is bound as a variable or written as a
``repr()`` literal, never spelled into the code by string formatting of user text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beam.common.quality import compile_rules, field_getter
from beam.common.spec import Field, QualityRule
from beam.common.validation import RecordValidator

Row = dict[str, Any]
NULL_KEY = "\x00null"  # a single-field key whose value is null: no string value equals it
KEY_SEPARATOR = "\x1f"  # ASCII unit separator, between the fields of a multi-field key


def key_function(paths: tuple[str, ...]) -> Callable[[Row], str]:
    """A row's dedup key as one string, stable across processes (unlike ``hash()``).

    One field: a string value is the key itself, anything else its ``repr`` (null is a token no
    string equals). Several fields: the ``repr`` of each (which tells ``None`` from ``"None"``)
    joined by a unit separator. The generated checker writes the same expressions
    (:func:`_key_expression`); a test keeps the two equal.
    """
    getters = [field_getter(path) for path in paths]
    if len(getters) == 1:
        (only,) = getters

        def single(row: Row) -> str:
            v = only(row)
            return v if type(v) is str else (NULL_KEY if v is None else repr(v))
        return single
    if len(getters) == 2:
        first, second = getters
        return lambda row: f"{first(row)!r}{KEY_SEPARATOR}{second(row)!r}"
    return lambda row: KEY_SEPARATOR.join([repr(g(row)) for g in getters])


def _key_expression(values: list[str]) -> str:
    """The generated-code twin of :func:`key_function`, over expressions for the values."""
    if len(values) == 1:
        (v,) = values
        return f"(k if type(k := {v}) is str else (NULL_KEY if k is None else repr(k)))"
    if len(values) == 2:
        return f"f'{{{values[0]}!r}}{{SEP}}{{{values[1]}!r}}'"
    return "SEP.join([" + ", ".join(f"repr({v})" for v in values) + "])"


class RecordChecker:
    """``(decoded record, origin) -> (row, dedup key or None)``; raises ``Invalid``.

    Picklable (the generated function is rebuilt from the spec parts), not thread-safe.
    ``dropped_unknown`` counts records lenient validation removed fields from, as
    :class:`~beam.common.validation.RecordValidator` does; the caller resets it.
    """

    def __init__(self, fields: tuple[Field, ...], validation: str, rules: tuple[QualityRule, ...],
                 key_paths: tuple[str, ...] | None) -> None:
        self._args = (fields, validation, rules, key_paths)
        self.validator = RecordValidator(fields, validation)
        quality = compile_rules(rules, fields)

        # Top-level fields that are not REPEATED: the validating code leaves their canonical
        # value (None when null or absent) in the local v<i>.
        locals_by_field = {f.name: f"v{i}" for i, f in enumerate(fields) if f.mode != "REPEATED"}
        v_body, v_ns = self.validator.source()
        q_body, q_ns = quality.source(locals_by_field)
        ns = _merge(v_ns, q_ns, {"NULL_KEY": NULL_KEY, "SEP": KEY_SEPARATOR})
        body = [*v_body, "    row = out", *q_body, "    out['_message_id'] = origin  # Silver's origin column"]
        if key_paths:
            values = []
            for j, path in enumerate(key_paths):
                if path in locals_by_field:
                    values.append(locals_by_field[path])
                else:
                    ns[f"kget{j}"] = field_getter(path)
                    values.append(f"kget{j}(out)")
            body.append(f"    return out, {_key_expression(values)}")
        else:
            body.append("    return out, None")
        source = "def check_record(obj, origin):\n" + "\n".join(body) + "\n"
        exec(compile(source, "<record checker>", "exec"), ns)  # noqa: S102 - see the module docstring
        self.check: Callable[[Any, str], tuple[Row, str | None]] = ns["check_record"]

    def __call__(self, obj: Any, origin: str) -> tuple[Row, str | None]:
        return self.check(obj, origin)

    @property
    def dropped_unknown(self) -> int:
        return self.validator.dropped_unknown

    @dropped_unknown.setter
    def dropped_unknown(self, value: int) -> None:
        self.validator.dropped_unknown = value

    def __reduce__(self) -> Any:
        return (RecordChecker, self._args)


def _merge(*namespaces: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for ns in namespaces:
        for name, value in ns.items():
            if name in merged and merged[name] is not value:
                raise AssertionError(f"generated code binds {name!r} twice")  # a bug in the generators
            merged[name] = value
    return merged
