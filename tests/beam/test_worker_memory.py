"""``transforms.keep_freed_memory``: a worker reuses freed buffers instead of faulting in fresh
pages for each one (glibc only). Checked in child processes: the setting is process-wide and
cannot be undone, and this process's DoFns have set it already."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Fills a 64 MiB buffer five times (a fresh object each time, the last one freed first) and
# prints the page faults of the last four: the first fill faults its pages in either way.
CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
from beam.common import transforms
if {keep}:
    transforms.keep_freed_memory()
n = 64 << 20
buf = b"x" * n
del buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    buf = b"y" * n
    del buf
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep: bool) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), keep=keep)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_buffers_are_reused_without_page_faults() -> None:
    pages = (64 << 20) // 4096
    assert _faults(keep=False) >= 2 * pages  # glibc's default: each 64 MiB buffer is a fresh mapping
    assert _faults(keep=True) < pages // 16


def test_both_validation_dofns_keep_freed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from beam.common import columnar, transforms
    from beam.common.spec import parse_spec
    from beam.common.synthetic import SPEC

    calls: list[str] = []
    monkeypatch.setattr(transforms, "keep_freed_memory", lambda: calls.append("per-record"))
    monkeypatch.setattr(columnar, "keep_freed_memory", lambda: calls.append("columnar"))
    spec = parse_spec(SPEC)
    transforms.ValidateRows(spec).setup()
    columnar.ValidateChunks(spec).setup()
    assert calls == ["per-record", "columnar"]


def test_streaming_workers_give_freed_memory_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A streaming job's validation leaves glibc's defaults: its workers run for days and must
    return what a burst took (the batch ones keep it until they exit)."""
    import apache_beam as beam

    from beam.common import transforms
    from beam.common.spec import parse_spec
    from beam.common.synthetic import SPEC

    made: list[transforms.ValidateRows] = []
    real = transforms.ValidateRows.__init__

    def record(self, *args, **kwargs):
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(transforms.ValidateRows, "__init__", record)
    calls: list[str] = []
    monkeypatch.setattr(transforms, "keep_freed_memory", lambda: calls.append("kept"))
    spec = parse_spec(SPEC)
    pipeline = beam.Pipeline()  # built, never run: only the DoFns it makes matter
    _ = pipeline | beam.Create([]) | "streaming" >> transforms.ValidateAndDedup(spec, streaming=True)
    _ = pipeline | "more" >> beam.Create([]) | "batch" >> transforms.ValidateAndDedup(spec, streaming=False)
    for dofn in made:
        dofn.setup()
    assert [d.keep_memory for d in made] == [False, True] and calls == ["kept"]
