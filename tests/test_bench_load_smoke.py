"""A tiny run of bench/load_speed.py, so that the benchmark cannot rot (the speed target lives in
the benchmark, never in a test)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import load_speed  # noqa: E402
from plan_scaling import generate_repo  # noqa: E402


def test_a_round_of_the_load_benchmark_loads_every_source(tmp_path):
    repo = generate_repo(tmp_path / "repo", 5, "bench-proj", "hwb")
    result = load_speed.one_round(load_speed.ROOT, repo, 1)
    assert result["sources"] == 5
    assert 0 < result["compile_cpu"] <= result["cpu"]
    assert set(load_speed.summary([result])) >= {"wall_median", "load_cpu_median", "compile_cpu_median"}
