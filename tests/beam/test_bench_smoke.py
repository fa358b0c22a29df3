"""The throughput benchmark on 1,000 records, so it does not rot (the real run is 1,000,000)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "beam_throughput.py"


def test_benchmark_runs_and_both_paths_agree(capsys) -> None:
    spec = importlib.util.spec_from_file_location("beam_throughput", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--records", "1000"])  # exits if Beam and plain Python disagree
    assert results["accounting"]["records_in"] == 1000
    assert results["beam_fnapi"]["records_per_s"] > 0 and results["plain"]["records_per_s"] > 0
    assert results["columnar_fnapi"]["records_per_s"] > 0 and results["duckdb_1thread"]["records_per_s"] > 0
    assert results["columnar_dicts_fnapi"]["records_per_s"] > 0
    assert results["silver_sink"]["write_arrow_rows_us_per_row"] > 0 and results["silver_sink"]["rows"] > 0
    assert "nproc=" in capsys.readouterr().out
