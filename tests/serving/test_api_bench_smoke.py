"""The data API benchmark on a few hundred rows, so it does not rot (the real run is
bench/api_latency.py's default; its numbers are in bench/README.md and bench/results/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "api_latency.py"


def test_the_benchmark_measures_the_query_and_the_api(emulators, capsys) -> None:
    spec = importlib.util.spec_from_file_location("api_latency", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--rows", "250", "--days", "5", "--requests", "8", "--clients", "2"])
    assert results["api_1_client"]["requests"] == 8 and results["api_2_clients"]["requests"] == 8
    assert results["api_1_client"]["mean_rows_per_page"] > 50, "pages of 100 (the walk wraps at 250 rows)"
    for name in ("bigquery", "api_1_client", "api_2_clients"):
        assert 0 < results[name]["p50_ms"] <= results[name]["p95_ms"]
    out = capsys.readouterr().out
    assert "shared VM" in out and "nproc=" in out and "p95" in out
