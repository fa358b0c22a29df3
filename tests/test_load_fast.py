"""Loading fast (issue 14) without changing what is loaded. Schema files are parsed by the JSON
parser, positions deferred: the values, the errors and the positions must be exactly what the
composer's path gives; files are opened by a quicker route when plainly inside the repo.

A differential test: generated JSON texts full of what YAML reads differently from JSON (exponents,
NaN, surrogate escapes, control and line-break characters, tabs, keys far from or lines away
from their ``:``, duplicate keys, deep nesting), each loaded both ways.
"""

from __future__ import annotations

import json
import random

import pytest

from reconciler import yamlsrc
from reconciler.yamlsrc import _NOT_PROVEN, LoadError, SourceMap, _composed_json, _fast_json, load_json


def _typed(value):
    """``value`` with every scalar's type spelled out: 1 == 1.0 == True and 0.0 == -0.0 must not pass."""
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, repr(value))


def _composed(text: str):
    try:
        data, source_map = _composed_json(text)
    except LoadError as exc:
        return ("error", exc.line, exc.column, exc.message)
    return ("ok", _typed(data), source_map.positions)


KEYS = ["name", "type", "mode", "fields", "source_id", "a", "é", "日本", "😀", "x y", "on", "yes", "1", "null",
        "k" * 300, "a\\\"b", "\\u00e9", "\\ud83d\\ude00", "\\/", "tab\\there"]
STRINGS = ["", "STRING", "2024-01-01", "yes", "~", "1e5", "a: b", "# not a comment", "- x", "&anchor", "*alias",
           "!!python/object", "\\n\\r\\b\\f", "\\u0000", "\\u0085", "\\u2028", "\\ud83d\\ude00", "\\udc00",
           "\x7f", "\x85", "\u2028", "\ufeff", "\x01", "é😀", "x" * 600, "  lead", "trail  ", "\\\\", "\\\""]
NUMBERS = ["0", "-0", "1", "-17", "12345678901234567890", "1.5", "-0.0", "1.0e+5", "1.5E-3", "1e5", "1.5e5",
           "2E3", "NaN", "Infinity", "-Infinity", "0.1", "3.14159"]
SPACES = ["", " ", "  ", "\n", "\r\n", "\n    ", "\t", " " * 70, "\n\n"]


def _value(rng: random.Random, depth: int) -> str:
    roll = rng.random()
    if depth > 0 and roll < 0.25:
        return _object(rng, depth - 1)
    if depth > 0 and roll < 0.35:
        items = [_value(rng, depth - 1) for _ in range(rng.randint(0, 4))]
        return "[" + ",".join(_space(rng) + item + _space(rng) for item in items) + "]"
    if roll < 0.6:
        return '"' + rng.choice(STRINGS) + '"'
    if roll < 0.85:
        return rng.choice(NUMBERS)
    return rng.choice(["true", "false", "null"])


def _space(rng: random.Random) -> str:
    return rng.choice(SPACES) if rng.random() < 0.3 else rng.choice(["", " "])


def _object(rng: random.Random, depth: int) -> str:
    keys = rng.sample(KEYS, rng.randint(0, 5))
    if keys and rng.random() < 0.05:
        keys.append(keys[0])  # a duplicate key
    return "{" + ",".join(f'{_space(rng)}"{key}"{_space(rng)}:{_space(rng)}{_value(rng, depth)}{_space(rng)}'
                          for key in keys) + "}"


def test_the_json_parser_answers_only_where_the_composer_agrees():
    rng = random.Random(14)
    proven = unproven = 0
    for _ in range(4000):
        text = _space(rng) + (_object(rng, 4) if rng.random() < 0.95 else _value(rng, 2)) + _space(rng)
        fast = _fast_json(text)
        if fast is _NOT_PROVEN:
            unproven += 1
            continue
        proven += 1
        composed = _composed(text)
        assert composed[0] == "ok", (text, composed)
        assert _typed(fast) == composed[1], text
        assert SourceMap.deferred(text).positions == composed[2], text
    # Both paths are exercised (the generator is tuned to hit each often).
    assert proven > 800 and unproven > 800, (proven, unproven)


@pytest.mark.parametrize("text", [
    '{"a": 1e5}', '{"a": NaN}', '{"a": "\\ud83d\\ude00"}', '{"a": "\x7f"}', '{"a": "\x85"}', '\t{"a": 1}',
    '{"a"\n: 1}', '{"' + "k" * 1100 + '": 1}', '{"a": 1, "a": 2}', "[1]", '"x"', "null",
    '{"a": ' + "[" * 70 + "]" * 70 + "}", '{"a": [' + ", ".join(["1"] * 100_001) + "]}",
    '{"a": 1' + "9" * 5000 + "}", '{"a": 1,}', "", "\ufeff{}",
])
def test_what_yaml_reads_differently_takes_the_composers_path(text):
    assert _fast_json(text) is _NOT_PROVEN


def test_a_schema_file_is_not_composed_unless_a_position_is_asked_for(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"source_id": "x", "fields": [{"name": "id", "type": "STRING"}]}, indent=2))
    eager = _composed_json(path.read_text())[1]
    calls = []
    real = yamlsrc._parse_yaml
    monkeypatch.setattr(yamlsrc, "_parse_yaml", lambda text: calls.append(text) or real(text))
    data, source_map = load_json(path, tmp_path)
    assert data == {"source_id": "x", "fields": [{"name": "id", "type": "STRING"}]}
    assert calls == []
    assert source_map.find(("fields", 0, "type")) == eager.find(("fields", 0, "type")) == (6, 7)
    assert source_map.find(("fields", 0, "nope")) == eager.find(("fields", 0)) == (4, 5)
    assert len(calls) == 1
    source_map.find(("source_id",))
    assert len(calls) == 1  # composed once


def test_an_error_keeps_its_message_and_position(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{\n  "a": 1,\n  "a": 2\n}')
    with pytest.raises(LoadError) as caught:
        load_json(path, tmp_path)
    assert (caught.value.line, caught.value.column, caught.value.message) == (3, 3, "duplicate key 'a'")


def _read_both_ways(path, within, monkeypatch):
    """`read_limited` as it is, as it is without /proc, and with every file taking the fully
    checked way."""
    outcomes = []
    for way in ("proc", "realpath", "checked"):
        if way == "realpath":
            monkeypatch.setattr(yamlsrc, "_open_inside", yamlsrc._open_resolved)
        if way == "checked":
            monkeypatch.setattr(yamlsrc, "_open_inside", lambda path, within: None)
        try:
            outcomes.append(("ok", yamlsrc.read_limited(path, within)))
        except LoadError as exc:
            outcomes.append(("error", exc.line, exc.column, exc.message))
    monkeypatch.undo()
    return outcomes


def test_the_quick_open_reads_what_the_checked_one_would(tmp_path, monkeypatch):
    import os

    repo, outside = tmp_path / "repo", tmp_path / "outside"
    (repo / "sub").mkdir(parents=True)
    outside.mkdir()
    (repo / "a.json").write_text("{}")
    (outside / "secret.json").write_text('{"k": 1}')
    (repo / "sub" / "b.json").write_text("[]")
    os.symlink(repo / "a.json", repo / "in.json")
    os.symlink(outside / "secret.json", repo / "out.json")
    os.symlink("missing.json", repo / "dangling.json")
    os.symlink("loop.json", repo / "loop.json")
    os.symlink(outside, repo / "dirlink")
    os.mkfifo(repo / "fifo.json")
    cases = ["a.json", "in.json", "out.json", "dangling.json", "loop.json", "dirlink/secret.json", "fifo.json",
             "sub", "sub/b.json", "sub/../a.json", "missing/../a.json", "nope.json"]
    for name in cases:
        for within in (repo, repo / "sub" / "..", None):
            proc, resolved, checked = _read_both_ways(repo / name, within, monkeypatch)
            assert proc == resolved == checked, (name, within, proc, resolved, checked)
    assert _read_both_ways(repo / "out.json", repo, monkeypatch)[0][0] == "error"
    # The quick ways do take the plain files (and only those).
    for quick in (yamlsrc._open_inside, yamlsrc._open_resolved):
        for name in ("a.json", "sub/b.json", "sub/../a.json"):
            fd = quick(repo / name, repo)
            assert fd is not None, (quick, name)
            os.close(fd)
        for name in ("out.json", "dirlink/secret.json", "dangling.json", "loop.json", "nope.json"):
            assert quick(repo / name, repo) is None, (quick, name)


@pytest.mark.parametrize("depth", [62, 63, 64, 65, 66])
@pytest.mark.parametrize("inner", ["1", "[]", "{}", '{"k": 1}', "[1]"])
def test_the_depth_bound_is_the_composers(depth, inner):
    text = '{"a": ' + "[" * (depth - 1) + inner + "]" * (depth - 1) + "}"
    composed = _composed(text)
    assert (_fast_json(text) is not _NOT_PROVEN) == (composed[0] == "ok"), composed[:4]


@pytest.mark.parametrize("values", [99_997, 99_998, 99_999, 100_000])
def test_the_value_bound_is_the_composers(values):
    # the top mapping, its list, and the list's items: values + 2 values in all
    text = '{"a": [' + ",".join(['"x"'] * values) + "]}"
    composed = _composed(text)
    assert (_fast_json(text) is not _NOT_PROVEN) == (composed[0] == "ok"), composed[:4]


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_leaves_the_garbage_collector_as_it_was(tmp_path, enabled):
    import gc

    from reconciler.load import InvalidDesiredState, load_repo

    (tmp_path / "platform.yaml").write_text("project: p\nregion: europe-west1\nbogus: 1\n")
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        with pytest.raises(InvalidDesiredState):
            load_repo(tmp_path)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
