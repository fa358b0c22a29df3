"""Safe YAML (and JSON) loading that remembers where every value came from.

Validation errors must name file, line and field. PyYAML's safe composer gives us a node tree
with marks; we build plain Python values from it ourselves and record the position of every
key and item, so that a pydantic error location like ``("ingestion", "schedule")`` maps back to
``connectors/orders.yaml:7:13``.

Building the values ourselves also lets us refuse hostile input before it costs anything:

* a file is read only if it is a regular file that resolves inside the repository (`within`):
  a symbolic link out of it (``connectors/x.yaml -> /etc/passwd``), a FIFO, a device
  (``/dev/zero``) or ``/proc`` entry is refused unread, and nothing blocks on opening it;
* files over `MAX_FILE_BYTES` are rejected unread, and no read ever takes more than that many
  bytes (a file that grows, or lies about its size, is cut off and refused);
* alias expansion ("billion laughs") is bounded by `MAX_NODES` values built in total;
* nesting is bounded by `MAX_DEPTH` (a 10,000-level JSON array is an error with a position,
  not a ``RecursionError``), and a scalar that cannot be built (a 5,000-digit integer, a
  timestamp in month 99) is an error with its position too;
* only the safe loader's tags are accepted (no Python object construction, ever).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1024 * 1024
# Levels of mappings and lists in one document. A schema nests two per RECORD level, and BigQuery
# allows 15 RECORD levels; connectors and platform.yaml need fewer than 10.
MAX_DEPTH = 64

# libyaml's composer (same safe node tree, with marks) is about 15x faster than the pure-Python
# one: validating a thousand connectors takes a fraction of a second instead of seconds.
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_NODES = 100_000

Loc = tuple[str | int, ...]


@dataclass
class LoadError(Exception):
    """A file that could not be read or parsed at all."""

    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return self.message


class SourceMap:
    """Positions (1-based line, column) of every value in one loaded document.

    A map made by `deferred` holds the document's text and composes it for positions only when
    one is first asked for: a file that loads without a problem to report is never walked for
    them (issue 14: most files of a large repo are fine).
    """

    __slots__ = ("_positions", "_text")

    def __init__(self, positions: dict[Loc, tuple[int, int]] | None = None) -> None:
        self._positions = {} if positions is None else positions
        self._text: str | None = None

    @classmethod
    def deferred(cls, text: str) -> SourceMap:
        """The map of ``text``, built on first use (``text`` must compose without error)."""
        source_map = cls()
        source_map._positions, source_map._text = None, text
        return source_map

    @property
    def positions(self) -> dict[Loc, tuple[int, int]]:
        if self._positions is None:
            try:
                positions = _parse_yaml(self._text or "")[1].positions
            except LoadError:  # not for a text `_fast_json` accepted; no positions rather than none at all
                positions = {}
            self._positions, self._text = positions, None
        return self._positions

    def find(self, loc: Loc) -> tuple[int, int]:
        """Position of ``loc``, or of its nearest ancestor that has one."""
        positions = self.positions
        loc = tuple(loc)
        while loc:
            if loc in positions:
                return positions[loc]
            loc = loc[:-1]
        return positions.get((), (1, 1))

    def __repr__(self) -> str:
        return f"SourceMap({'deferred' if self._positions is None else len(self._positions)})"


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_limited(path: Path, within: Path | None = None) -> str:
    """The text of ``path``, read with a byte bound; see the module docstring.

    ``within``: the repository root the file must resolve inside (symbolic links included).
    Anything else — outside, not a regular file, over the size limit, not UTF-8 — is a
    `LoadError` and nothing is read.
    """
    fd = _open_inside(path, within)
    if fd is None:  # the path to every refusal, worded as it always was
        fd = _open_checked(path, within)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
            raise LoadError(1, 1, f"is {kind}, not a regular file; not read")
        if info.st_size > MAX_FILE_BYTES:
            raise LoadError(1, 1, f"file is {info.st_size} bytes, over the {MAX_FILE_BYTES}-byte limit; not loaded")
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_BYTES:
            raise LoadError(1, 1, f"file is over the {MAX_FILE_BYTES}-byte limit; not loaded")
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(1, 1, f"file is not valid UTF-8: {exc.reason}") from exc


def _open_inside(path: Path, within: Path | None) -> int | None:
    """A descriptor of the file ``path`` resolves to, when that is plainly fine: it opens (every
    part of the path exists, the last is not a symbolic link) and what was opened resolves lexically
    inside ``within`` as given (`load_repo` passes it resolved). None otherwise: `_open_checked`
    then decides and words why.

    Where the file opened resolves to is asked of the kernel (``/proc/self/fd``: one call, and the
    answer is about the file opened, not about the path a moment before); without ``/proc``, of
    `os.path.realpath` before opening."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        os.close(fd)
        return _open_resolved(path, within)
    if _lexically_inside(real, within):
        return fd
    os.close(fd)
    return None


def _open_resolved(path: Path, within: Path | None) -> int | None:
    try:
        real = os.path.realpath(path, strict=True)
    except OSError:
        return None
    if not _lexically_inside(real, within):
        return None
    try:
        return os.open(real, _OPEN_FLAGS)
    except OSError:
        return None


def _lexically_inside(real: str, within: Path | None) -> bool:
    if within is None:
        return True
    base = str(within)
    return real.startswith(base) and real[len(base):len(base) + 1] in ("", os.sep)


# O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the path was resolved.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_checked(path: Path, within: Path | None) -> int:
    """`read_limited`'s checks in full: the descriptor, or a `LoadError` saying what is wrong."""
    from reconciler.naming import shown

    if within is not None and not Path(os.path.realpath(path)).is_relative_to(within.resolve()):
        how = f"a symbolic link to {shown(os.readlink(path))}" if path.is_symlink() else "behind a symbolic link"
        raise LoadError(1, 1, f"is {how}, outside the repository; headwater reads only regular files inside it")
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        if path.is_symlink():
            raise LoadError(1, 1, f"is a symbolic link to {shown(os.readlink(path))}, which does not exist") from None
        raise LoadError(1, 1, "file does not exist") from None
    except RuntimeError:  # a symbolic link loop
        raise LoadError(1, 1, "is a symbolic link loop") from None
    try:
        return os.open(resolved, _OPEN_FLAGS)
    except OSError as exc:
        raise LoadError(1, 1, f"cannot read file: {exc.strerror}") from None


def load_yaml(path: Path, within: Path | None = None) -> tuple[Any, SourceMap]:
    """Parse one YAML document safely; returns the data and where each value sits."""
    return _parse_yaml(read_limited(path, within))


def _parse_yaml(text: str) -> tuple[Any, SourceMap]:
    try:
        node = yaml.compose(text, Loader=_COMPOSER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        if "maximum nesting depth" in str(exc.problem):  # libyaml's own bound (1,000 levels)
            raise LoadError(line, col, f"nested more than {MAX_DEPTH} levels deep; not loaded") from None
        raise LoadError(line, col, f"invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise LoadError(1, 1, f"invalid YAML: {exc}") from exc
    source_map = SourceMap()
    if node is None:
        return None, source_map
    builder = _Builder(source_map)
    return builder.build(node, ()), source_map


def load_json(path: Path, within: Path | None = None) -> tuple[Any, SourceMap]:
    """Parse a JSON file. JSON is YAML, so positions come from the same composer.

    A file `_fast_json` can prove the composer would read the same way is parsed by the JSON
    parser alone, its positions deferred; anything else takes the composer's path, with its
    errors and their positions.
    """
    text = read_limited(path, within)
    data = _fast_json(text)
    if data is not _NOT_PROVEN:
        return data, SourceMap.deferred(text)
    return _composed_json(text)


def _composed_json(text: str) -> tuple[Any, SourceMap]:
    """JSON through the composer: what `load_json` returns or raises for any text."""
    try:
        json.loads(text)  # strict JSON first: YAML would accept things JSON does not
    except json.JSONDecodeError as exc:
        raise LoadError(exc.lineno, exc.colno, f"invalid JSON: {exc.msg}") from exc
    except RecursionError:
        # Nested deeper than Python's stack: the composer below stops at MAX_DEPTH with a position.
        _parse_yaml(text)
        raise LoadError(1, 1, f"nested more than {MAX_DEPTH} levels deep; not loaded") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise LoadError(1, 1, f"invalid JSON: {' '.join(str(exc).split())[:200]}") from None
    return _parse_yaml(text)


# ------------------------------------------------------------------ JSON without the composer
#
# The composer reads JSON as YAML (flow style), which is what positions and the bounds above are
# defined by, but it builds a node and a mark for every value: at a thousand schema files that
# was half of loading a repo. A JSON parser gives the same values, except where YAML reads JSON
# differently; `_fast_json` answers only for a text that has none of those, and the composer
# decides everything else — errors included, so every message stays what it was:
#
# * characters YAML does not accept in a stream (DEL, C0/C1 controls: "unacceptable character")
#   or reads as line breaks inside a quoted scalar (NEL, LS, PS), a byte order mark, tabs
#   (not allowed before the top-level value);
# * escapes of UTF-16 surrogates (libyaml refuses them; JSON joins the pairs);
# * numbers with an exponent (YAML 1.1 reads ``1e5`` and ``1.5e5`` as strings), and JSON's
#   ``NaN`` / ``Infinity`` extensions (strings to YAML);
# * a key whose ``:`` is on another line or over 1,024 characters from the key's start (YAML's
#   simple-key rule: an error there) — approximated as: no string of 512 characters or more,
#   no line break after a string before a ``:``, no long run of spaces before a ``:``;
# * duplicate keys, more than MAX_DEPTH levels or MAX_NODES values, a top level that is not a
#   mapping (each an error or a problem whose message the composer's path words).
_NOT_PROVEN = object()
_NOT_YAML_SAFE = re.compile(
    "[^\\n\\r\\x20-\\x7e\\xa0-\\u2027\\u202a-\\ud7ff\\ue000-\\ufefe\\uff00-\\ufffd\\U00010000-\\U0010ffff]"
    r'|\\[uU][dD][89a-fA-F]'  # surrogate escapes
    r'|"[ \r\n]*[\r\n][ \r\n]*:|"[ ]{64,}:'  # a key's ':' on another line or far from it
    r'|"(?:[^"\\]|\\.){256}'  # a long string (a key may be one)
)


class _Unproven(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Unproven  # a duplicate key: the composer's error
    return result


def _float(text: str) -> float:
    if "e" in text or "E" in text:
        raise _Unproven  # a string to YAML 1.1 unless written like 1.0e+5
    return float(text)


def _constant(text: str) -> Any:
    raise _Unproven  # NaN, Infinity, -Infinity: strings to YAML


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_float=_float, parse_constant=_constant)


def _fast_json(text: str) -> Any:
    """The value the composer's path would build from ``text``, or `_NOT_PROVEN` (see above)."""
    if _NOT_YAML_SAFE.search(text):
        return _NOT_PROVEN
    try:
        data = _DECODER.decode(text)
    except (_Unproven, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return _NOT_PROVEN
    if not isinstance(data, dict) or not _within_bounds(data):
        return _NOT_PROVEN
    return data


def _within_bounds(data: dict) -> bool:
    """No value more than MAX_DEPTH levels below the top, at most MAX_NODES values (the top
    included): `_Builder`'s bounds, walked a level at a time over the containers only."""
    count, depth = 1, 1
    level: list[Any] = [data]  # the containers whose values are `depth` levels below the top
    while level:
        below: list[Any] = []
        values = 0
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            values += len(items)
            below.extend(item for item in items if isinstance(item, dict | list))
        count += values
        if count > MAX_NODES or (values and depth > MAX_DEPTH):
            return False
        level, depth = below, depth + 1
    return True


_STR = "tag:yaml.org,2002:str"
_COLLECTION_NODES = (yaml.MappingNode, yaml.SequenceNode)
_PLAIN_COLLECTIONS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}


class _Builder:
    _CONSTRUCTOR = yaml.SafeLoader("")  # only used to resolve scalar tags safely

    def __init__(self, source_map: SourceMap) -> None:
        self.source_map = source_map
        self.positions = source_map.positions
        self.count = 0

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        mark = node.start_mark
        here = (mark.line + 1, mark.column + 1)
        if self.count > MAX_NODES:
            raise LoadError(*here, f"document expands to more than {MAX_NODES} values (YAML aliases?); not loaded")
        self.positions.setdefault(loc, here)
        if len(loc) > MAX_DEPTH:
            raise LoadError(*here, f"nested more than {MAX_DEPTH} levels deep; not loaded")
        if isinstance(node, _COLLECTION_NODES) and node.tag not in _PLAIN_COLLECTIONS:
            # e.g. !!python/object/apply on a sequence: never constructed, whatever the tag.
            raise LoadError(*here, f"unsupported YAML tag {node.tag!r}")
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key_mark = key_node.start_mark
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise LoadError(key_mark.line + 1, key_mark.column + 1, "YAML merge keys (<<) are not supported")
                key = self._key(key_node)
                if key in result:
                    raise LoadError(key_mark.line + 1, key_mark.column + 1, f"duplicate key {key!r}")
                child = (*loc, key)
                self.positions[child] = (key_mark.line + 1, key_mark.column + 1)
                result[key] = self.build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, index)) for index, item in enumerate(node.value)]
        return self._scalar(node)

    @staticmethod
    def _key(node: yaml.Node) -> str:
        # Keys are always strings in our formats. Taking the text as written also avoids YAML 1.1's
        # booleans: the seed's `join: {on: customer_id}` must not become {True: "customer_id"}.
        if not isinstance(node, yaml.ScalarNode):
            raise LoadError(node.start_mark.line + 1, node.start_mark.column + 1, "keys must be plain scalars")
        return node.value

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise LoadError(node.start_mark.line + 1, node.start_mark.column + 1, "expected a plain value")
        if node.tag == _STR:
            return node.value  # what the constructor returns for a string, without its bookkeeping
        try:
            return self._CONSTRUCTOR.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise LoadError(
                node.start_mark.line + 1, node.start_mark.column + 1, f"unsupported YAML value: {exc.problem}"
            ) from exc
        except (ValueError, OverflowError) as exc:  # a 5,000-digit integer, a timestamp in month 99...
            raise LoadError(node.start_mark.line + 1, node.start_mark.column + 1,
                            f"invalid {node.tag.rsplit(':', 1)[-1]} value: {' '.join(str(exc).split())[:120]}") from None
        finally:
            # The constructor remembers every node it built (for aliases, in one document) and is
            # shared: without this, every scalar ever loaded stayed in memory (and in the GC's walks).
            self._CONSTRUCTOR.constructed_objects.pop(node, None)
            self._CONSTRUCTOR.recursive_objects.pop(node, None)
