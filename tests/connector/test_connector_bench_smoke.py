"""The connector throughput benchmark on 500 records, so it does not rot (the real run is
bench/connector_throughput.py's default; its numbers are in bench/results/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "connector_throughput.py"


def test_the_benchmark_runs_both_publishers(emulators, capsys) -> None:
    spec = importlib.util.spec_from_file_location("connector_throughput", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--records", "500", "--repeat", "1", "--no-pin"])  # exits if a poll misses records
    for kind in ("null", "pubsub"):
        (run,) = results[kind]["runs"]
        assert run["pages"] == 5 and run["records_per_s"] > 0
    out = capsys.readouterr().out
    assert "shared VM" in out and "nproc=" in out
