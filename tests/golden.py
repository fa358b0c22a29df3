"""Golden files: expected outputs checked in under tests/golden/.

Run with ``UPDATE_GOLDEN=1`` to rewrite them after an intended change, then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN_DIR / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(actual)
        return
    assert path.exists(), f"golden file {path} is missing: run with UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    assert actual == expected, f"{name} differs from its golden file; rerun with UPDATE_GOLDEN=1 if intended"
