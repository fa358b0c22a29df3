"""A tiny run of bench/cdc_throughput.py's apply step, so that the benchmark cannot rot (the
speed target lives in the benchmark, never in a test)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import cdc_throughput  # noqa: E402


def test_the_apply_step_benchmark_runs_and_accounts_for_every_event():
    lines = cdc_throughput.generate(2_000)
    statements = []
    counts = cdc_throughput.apply_step(lines, cdc_throughput.spec(), statements.append)
    assert counts["events"] == 2_000 and counts["dead_letters"] == 40 and counts["valid"] == 1_960
    assert len(statements) == counts["statements"] == 4  # files of 1,000, batches of at most 500 (one table)
    assert 0 < cdc_throughput.current_rows(lines, cdc_throughput.spec()) <= 500
