"""Silver -> Gold: compile a connector's ``silver_to_gold`` block to one BigQuery SELECT.

The connector YAML says, e.g.::

    silver_to_gold:
      - join: {table: gold.customers, on: customer_id}
      - aggregate:
          group_by: [customer_id, date]
          metrics: [sum(amount) as total_amount, count(*) as transaction_count]

and the spec's ``gold`` block carries the same (see ``spec.py``). :func:`compile_gold_sql`
turns it into::

    SELECT
      `silver`.`customer_id` AS `customer_id`,
      DATE(`silver`.`timestamp`) AS `date`,
      SUM(`silver`.`amount`) AS `total_amount`,
      COUNT(*) AS `transaction_count`
    FROM `p.silver.example_source` AS `silver`
    LEFT JOIN `p.gold.customers` AS `customers` ON `silver`.`customer_id` = `customers`.`customer_id`
    GROUP BY `silver`.`customer_id`, DATE(`silver`.`timestamp`)

Safety: the expressions come from a repository, but they end up in SQL run with the
pipeline's credentials, so nothing is interpolated as written. Each expression is tokenised
and parsed by a small grammar, and the SQL is printed back from the parse tree: identifiers
are checked and backquoted, numbers re-printed from their values, functions taken from a
whitelist. Anything else - strings, comments, semicolons, subqueries, unknown functions,
unknown columns - is a :class:`GoldError` naming the expression.

Grammar (case-insensitive keywords)::

    metric   := AGG "(" ["DISTINCT"] expr ")" [AS alias]  |  COUNT "(" "*" ")" [AS alias]
    group_by := expr [AS alias]
    expr     := term (("+" | "-") term)*
    term     := factor (("*" | "/") factor)*
    factor   := NUMBER | column | SCALAR "(" expr ")" | "(" expr ")" | "-" factor
    column   := name | alias "." name

    AGG    = SUM, COUNT, AVG, MIN, MAX           (DISTINCT only with COUNT)
    SCALAR = DATE, LOWER, UPPER

Columns: an unqualified name must be a column of the Silver table (the spec's schema fields
and the metadata columns ``_ingested_at``, ``_message_id``, ``_schema_version``); a
column of a joined table must be qualified with the join's alias (default: the last part of
its table name). The bare group-by name ``date``, when Silver has no such column, means
``DATE(<time_field>) AS date`` - the seed's shorthand - with ``time_field`` from the spec
(any TIMESTAMP/DATETIME/DATE column, ``_ingested_at`` included) or else Silver's only
TIMESTAMP schema field. Without an alias a metric is named ``<agg>_<column>``
(``count`` for ``COUNT(*)``) and a group-by column keeps its name.

Joins are ``LEFT`` by default: a fact row with no match in the dimension table still counts
(its dimension columns are NULL) rather than disappearing from the totals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from beam.common.spec import SILVER_METADATA_FIELDS, Gold, PipelineSpec

SILVER_ALIAS = "silver"
AGGREGATES = frozenset({"sum", "count", "avg", "min", "max"})
SCALARS = frozenset({"date", "lower", "upper"})
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[()*/+\-.,]))")


class GoldError(ValueError):
    """A silver_to_gold expression or join is not acceptable."""


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Column:
    table: str  # alias
    name: str


@dataclass(frozen=True)
class Number:
    value: int | float


@dataclass(frozen=True)
class Call:
    fn: str  # lower-case
    arg: object  # expression, or "*" for COUNT(*)
    distinct: bool = False


@dataclass(frozen=True)
class BinOp:
    op: str
    left: object
    right: object


@dataclass(frozen=True)
class Neg:
    arg: object


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise GoldError(f"{text!r}: unexpected character {text[pos:].lstrip()[:1]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, scope: _Scope, *, aggregate: bool) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.scope = scope
        self.aggregate = aggregate  # a metric: exactly one aggregate at the top

    def error(self, why: str) -> GoldError:
        return GoldError(f"{self.text!r}: {why}")

    def peek(self, k: int = 0) -> tuple[str, str] | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def take(self, kind: str, value: str | None = None) -> str:
        t = self.peek()
        if t is None or t[0] != kind or (value is not None and t[1].lower() != value):
            want = value or kind
            raise self.error(f"expected {want!r} {'at the end' if t is None else f'before {t[1]!r}'}")
        self.i += 1
        return t[1]

    def at(self, kind: str, value: str | None = None) -> bool:
        t = self.peek()
        return t is not None and t[0] == kind and (value is None or t[1].lower() == value)

    def item(self) -> tuple[object, str | None]:
        expr = self.metric() if self.aggregate else self.expr()
        alias = None
        if self.at("name", "as"):
            self.i += 1
            alias = self.take("name")
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return expr, alias

    def metric(self) -> Call:
        fn = self.take("name").lower()
        if fn not in AGGREGATES:
            raise self.error(f"{fn!r} is not an allowed aggregate ({', '.join(sorted(AGGREGATES))})")
        self.take("op", "(")
        if fn == "count" and self.at("op", "*"):
            self.i += 1
            self.take("op", ")")
            return Call("count", "*")
        distinct = False
        if self.at("name", "distinct"):
            if fn != "count":
                raise self.error("DISTINCT is only allowed in COUNT")
            self.i += 1
            distinct = True
        arg = self.expr()
        self.take("op", ")")
        return Call(fn, arg, distinct)

    def expr(self) -> object:
        left = self.term()
        while self.at("op", "+") or self.at("op", "-"):
            op = self.take("op")
            left = BinOp(op, left, self.term())
        return left

    def term(self) -> object:
        left = self.factor()
        while self.at("op", "*") or self.at("op", "/"):
            op = self.take("op")
            left = BinOp(op, left, self.factor())
        return left

    def factor(self) -> object:
        t = self.peek()
        if t is None:
            raise self.error("unexpected end")
        kind, value = t
        if kind == "num":
            self.i += 1
            return Number(float(value) if "." in value else int(value))
        if kind == "op" and value == "-":
            self.i += 1
            return Neg(self.factor())
        if kind == "op" and value == "(":
            self.i += 1
            inner = self.expr()
            self.take("op", ")")
            return inner
        if kind == "name":
            if self.peek(1) == ("op", "("):  # a function call
                fn = value.lower()
                if fn in AGGREGATES:
                    raise self.error(f"aggregate {fn.upper()} is not allowed here")
                if fn not in SCALARS:
                    raise self.error(f"{value!r} is not an allowed function ({', '.join(sorted(SCALARS))})")
                self.i += 2
                arg = self.expr()
                self.take("op", ")")
                return Call(fn, arg)
            self.i += 1
            if self.at("op", "."):
                self.i += 1
                return self.scope.column(value, self.take("name"), self)
            return self.scope.column(None, value, self)
        raise self.error(f"unexpected {value!r}")


class _Scope:
    """Which columns an expression may name: Silver's, and joined tables' via their alias."""

    def __init__(self, silver_columns: set[str], join_aliases: set[str]) -> None:
        self.silver = silver_columns
        self.joins = join_aliases

    def column(self, table: str | None, name: str, parser: _Parser) -> Column:
        if not _IDENT.match(name):
            raise parser.error(f"{name!r} is not a valid column name")
        if table is None:
            if name not in self.silver:
                hint = " (qualify a joined table's column with its alias)" if self.joins else ""
                raise parser.error(f"{name!r} is not a column of the Silver table{hint}")
            return Column(SILVER_ALIAS, name)
        if table == SILVER_ALIAS:
            if name not in self.silver:
                raise parser.error(f"{name!r} is not a column of the Silver table")
            return Column(SILVER_ALIAS, name)
        if table not in self.joins:
            raise parser.error(f"{table!r} is not a joined table's alias")
        return Column(table, name)


# --------------------------------------------------------------------------- printing


def _q(name: str) -> str:
    return f"`{name}`"  # names are checked against _IDENT, so they hold no backquote


def sql_of(node: object) -> str:
    if isinstance(node, Column):
        return f"{_q(node.table)}.{_q(node.name)}"
    if isinstance(node, Number):
        return repr(node.value)
    if isinstance(node, Neg):
        return f"-({sql_of(node.arg)})"
    if isinstance(node, BinOp):
        return f"({sql_of(node.left)} {node.op} {sql_of(node.right)})"
    if isinstance(node, Call):
        if node.arg == "*":
            return "COUNT(*)"
        return f"{node.fn.upper()}({'DISTINCT ' if node.distinct else ''}{sql_of(node.arg)})"
    raise AssertionError(node)


def _default_name(node: object) -> str:
    if isinstance(node, Column):
        return node.name
    if isinstance(node, Call):
        if node.arg == "*":
            return "count"
        inner = node.arg
        if isinstance(inner, Column):
            return f"{node.fn}_{'distinct_' if node.distinct else ''}{inner.name}"
    raise GoldError(f"an expression like {sql_of(node)} needs 'AS <name>'")


# --------------------------------------------------------------------------- compile


def _time_field(spec: PipelineSpec, gold: Gold) -> str:
    if gold.time_field:
        if gold.time_field == "_ingested_at":  # Silver's metadata column: always a TIMESTAMP
            return gold.time_field
        f = spec.field_at(gold.time_field)
        if f is None or f.type not in ("TIMESTAMP", "DATETIME", "DATE") or "." in gold.time_field:
            raise GoldError(f"time_field {gold.time_field!r} is not a top-level TIMESTAMP/DATETIME/DATE column")
        return gold.time_field
    stamps = [f.name for f in spec.fields if f.type == "TIMESTAMP" and f.mode != "REPEATED"]
    if len(stamps) != 1:
        raise GoldError(f"group_by 'date' needs time_field: Silver has {len(stamps)} TIMESTAMP columns")
    return stamps[0]


def compile_gold_sql(spec: PipelineSpec) -> str:
    """The SELECT for the spec's gold block (see the module docstring)."""
    gold = spec.gold
    if gold is None:
        raise GoldError("the spec has no gold block")
    if not spec.silver_table:
        raise GoldError("the spec has no silver.table to read from")
    silver_cols = {f.name for f in spec.fields} | {m["name"] for m in SILVER_METADATA_FIELDS}
    aliases: dict[str, str] = {}
    joins_sql: list[str] = []
    for j in gold.joins:
        alias = j.alias or j.table.rsplit(".", 1)[-1]
        if not _IDENT.match(alias) or alias == SILVER_ALIAS or alias in aliases:
            raise GoldError(f"join alias {alias!r} is invalid or used twice (set 'alias')")
        aliases[alias] = j.table
        conds = []
        for key in j.on:
            if key not in silver_cols:
                raise GoldError(f"join on {key!r}: not a column of the Silver table")
            conds.append(f"{_q(SILVER_ALIAS)}.{_q(key)} = {_q(alias)}.{_q(key)}")
        joins_sql.append(
            f"{j.type.upper()} JOIN {_q(spec.table_ref(j.table))} AS {_q(alias)} ON {' AND '.join(conds)}"
        )
    scope = _Scope(silver_cols, set(aliases))

    select: list[str] = []
    group: list[str] = []
    names: set[str] = set()

    def add_name(name: str, where: str) -> str:
        if not _IDENT.match(name):
            raise GoldError(f"{where}: {name!r} is not a valid column name")
        if name.lower() in names:
            raise GoldError(f"{where}: output column {name!r} appears twice")
        names.add(name.lower())
        return name

    for item in gold.group_by:
        if item.strip().lower() == "date" and "date" not in silver_cols:
            expr: object = Call("date", Column(SILVER_ALIAS, _time_field(spec, gold)))
            alias: str | None = "date"
        else:
            expr, alias = _Parser(item, scope, aggregate=False).item()
        name = add_name(alias or _default_name(expr), f"group_by {item!r}")
        select.append(f"{sql_of(expr)} AS {_q(name)}")
        group.append(sql_of(expr))
    for metric in gold.metrics:
        expr, alias = _Parser(metric, scope, aggregate=True).item()
        name = add_name(alias or _default_name(expr), f"metric {metric!r}")
        select.append(f"{sql_of(expr)} AS {_q(name)}")

    lines = ["SELECT", ",\n".join(f"  {s}" for s in select),
             f"FROM {_q(spec.table_ref(spec.silver_table))} AS {_q(SILVER_ALIAS)}", *joins_sql]
    if group:
        lines.append("GROUP BY " + ", ".join(group))
    return "\n".join(lines)
