"""SQL text as headwater compares and checks it (issue 12: views and row access filters).

Pure, no I/O. A view's SQL is written by hand in a source file and read back from BigQuery, so
it is compared by meaning, not by its whitespace: `normalize` drops comments, collapses runs of
whitespace to one space (none next to ``( ) , .``), and upper-cases keywords, keeping string
literals and backquoted identifiers exactly as written. Two texts that normalize alike define
the same view.

`table_references` finds the tables a SELECT reads (after ``FROM`` and ``JOIN``), so that
validation can refuse a view over a table the platform does not declare, and `qualify` rewrites
``dataset.table`` to `` `project.dataset.table` `` (what the view stores; a view cannot rely on a
default project).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# GoogleSQL's reserved keywords: never an unquoted identifier, so their case never matters.
KEYWORDS = frozenset("""
all and any array as asc assert_rows_modified at between by case cast collate contains create cross cube
current default define desc distinct else end enum escape except exclude exists extract false fetch following
for from full group grouping groups hash having if ignore in inner intersect interval into is join lateral left
like limit lookup merge natural new no not null nulls of on or order outer over partition preceding proto
qualify range recursive respect right rollup rows select set some struct tablesample then to treat true
unbounded union unnest using when where window with within
""".split())

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|\#[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<quoted>`(?:[^`\\]|\\.)*`)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<op><>|!=|<=|>=|\|\||[-+*/%<>=(),.;\[\]:@?!~&|^{}])
""", re.VERBOSE | re.DOTALL)

_TIGHT = frozenset("(),.[]")


class SqlError(ValueError):
    """Text that does not tokenize as SQL (an unterminated string or quote)."""


def tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs; whitespace and comments dropped."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise SqlError(f"cannot read the SQL at {text[pos:pos + 20]!r} (an unterminated string or quote?)")
        pos = match.end()
        kind = match.lastgroup or ""
        if kind in ("ws", "comment"):
            continue
        out.append((kind, match.group()))
    return out


def normalize(text: str) -> str:
    """The canonical form of a SQL text (see the module docstring); a trailing ``;`` is dropped."""
    parts = tokens(text)
    while parts and parts[-1] == ("op", ";"):
        parts.pop()
    result = ""
    previous = ""
    for i, (kind, value) in enumerate(parts):
        calls = i + 1 < len(parts) and parts[i + 1][1] == "(" and previous != "."
        if kind == "word" and (value.lower() in KEYWORDS or calls):  # function names are case-insensitive
            value = value.upper()
        if result and value not in _TIGHT and previous not in ("(", ".", "["):
            result += " "
        result += value
        previous = value
    return result


def table_references(text: str) -> list[str]:
    """The tables a SELECT reads, as written without backquotes (``gold.orders_daily``,
    ``project.gold.orders_daily``), in order; WITH names (one part) are left out."""
    parts = tokens(text)
    ctes = {parts[i][1].lower() for i in range(len(parts) - 2)
            if parts[i][0] == "word" and parts[i + 1][1].lower() == "as" and parts[i + 2][1] == "("}
    found: list[str] = []
    for i, (_kind, value) in enumerate(parts):
        if value.lower() not in ("from", "join") or i + 1 >= len(parts):
            continue
        j = i + 1
        name = ""
        while j < len(parts):
            kind, piece = parts[j]
            if kind == "quoted":
                name += piece.strip("`")
            elif kind == "word" and (not name or name.endswith(".")) and piece.lower() not in KEYWORDS:
                name += piece
            elif piece == "." and name:
                name += "."
            else:
                break
            j += 1
        if not name:
            continue  # a subquery, UNNEST(...), a function
        if "." not in name and name.lower() in ctes:
            continue
        found.append(name)
    return found


def qualify(text: str, project: str, datasets: Mapping[str, str]) -> str:
    """``dataset.table`` (bare or backquoted) after FROM/JOIN whose dataset is a key of ``datasets``,
    rewritten as `` `project.<datasets[dataset]>.table` `` (zone names map to the platform's
    datasets: ``gold.x`` is ``marts.x`` when the Gold zone's dataset is ``marts``); the rest as written."""
    def repl(match: re.Match[str]) -> str:
        keyword, ref = match.group(1), match.group(2)
        pieces = ref.strip("`").split(".")
        if len(pieces) == 2 and pieces[0] in datasets:
            return f"{keyword}`{project}.{datasets[pieces[0]]}.{pieces[1]}`"
        return match.group(0)

    return re.sub(r"(?i)(\b(?:from|join)\s+)(`[^`]+`|[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*)", repl, text)
