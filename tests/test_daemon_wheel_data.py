"""The daemon image installs headwater as a wheel built from what its Dockerfile copies
(pyproject.toml, README.md, reconciler/, providers/), not as the editable checkout: every data
file the reconciler reads at run time must be in that wheel, or the daemon stops on first use."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_daemon_wheel_carries_the_reconcilers_data_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("reconciler", "providers"):  # what the root Dockerfile copies
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(tmp_path)!r})"],
                   cwd=src, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("headwater-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {str(path.relative_to(ROOT)) for package in ("reconciler",)
              for pattern in ("data/*", "ui/templates/*", "ui/static/*")
              for path in (ROOT / package).glob(pattern) if path.is_file()}
    assert "reconciler/data/iam_predefined_roles.txt" in wanted
    assert wanted <= shipped, f"missing from the daemon's wheel: {sorted(wanted - shipped)}"
