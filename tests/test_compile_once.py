"""load_repo hands the resources its limits check compiled to the plan (issue 14): the same
resources as compiling the state afresh; semantic's copy is a deep copy."""

import copy
import dataclasses
from pathlib import Path

from reconciler import semantic
from reconciler.compile import compile_resources
from reconciler.load import load_repo

ROOT = Path(__file__).resolve().parent.parent


def test_compiled_while_loading_equals_compiled_afresh():
    state = load_repo(ROOT / "desired_state")
    again = dataclasses.replace(state)  # replace leaves the loaded compile behind
    assert again._compiled is None
    first = compile_resources(state)
    assert first == compile_resources(again)
    first.clear()  # a caller's list is its own
    assert compile_resources(state) == compile_resources(again)


def test_canonical_pipeline_copies_deeply():
    document = {"schema": {"fields": [{"name": "b", "fields": [{"name": "y"}, {"name": "x"}]}, {"name": "a"}]},
                "data_quality": [{"check": "allowed_values", "values": [3, 1, 2]}], "bronze": {"table": "t"},
                "nested": [{"deep": [1, {"k": (1, 2)}]}]}
    before = copy.deepcopy(document)
    result = semantic.canonical_pipeline(document)
    assert document == before
    assert [f["name"] for f in result["schema"]["fields"]] == ["a", "b"]
    assert result["data_quality"][0]["values"] == [1, 2, 3]
    result["bronze"]["table"] = "changed"
    result["nested"][0]["deep"][1]["k"] = None
    assert document == before
