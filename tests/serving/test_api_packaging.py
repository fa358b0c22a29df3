"""The data API image (deploy/api/): its lock is fresh, its Dockerfile copies what exists
and installs exactly the lock, and serving/ stands alone - the wheel built from it alone runs
with reconciler/, providers/, beam/ and connector/ out of reach. Docker does not run here; these
tests read the Dockerfile."""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "api" / "Dockerfile"
LOCK = ROOT / "deploy" / "api" / "requirements.lock"
OUTSIDE = ("reconciler", "providers", "beam", "connector", "tests")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for line in text.splitlines() if line.strip() for parts in [line.strip().split(None, 1)]]


def test_the_api_lock_is_fresh() -> None:
    spec = importlib.util.spec_from_file_location("lock_requirements", ROOT / "deploy" / "lock_requirements.py")
    assert spec and spec.loader
    lock_requirements = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock_requirements)
    assert lock_requirements.LOCKS[LOCK] == ("serving",)
    assert LOCK.read_text() == lock_requirements.render(("serving",)), (
        "deploy/api/requirements.lock is stale: run .venv/bin/python deploy/lock_requirements.py")
    pins = dict(line.split("==") for line in LOCK.read_text().splitlines() if line and not line.startswith("#"))
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serving"]
    for requirement in extra:
        name = re.split(r"[\[<>=~ ]", requirement, maxsplit=1)[0]
        assert name.lower().replace("_", "-") in pins, f"{name} (the serving extra) is not pinned"


def test_the_dockerfile_copies_only_serving_and_installs_exactly_its_lock() -> None:
    steps = _instructions()
    copies = [args.split() for op, args in steps if op == "COPY" and not args.startswith("--from")]
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository (the build context)"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    copied = {source for *sources, _ in copies for source in sources}
    assert "serving" in copied and "deploy/api/requirements.lock" in copied
    assert not copied & set(OUTSIDE), "the image ships serving/ alone"
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert installs[0].endswith("pip install --no-deps -r /tmp/requirements.lock"), "the lock first, unresolved"
    assert all("--no-deps" in run for run in installs) and "pip check" in installs[-1]
    assert dict(steps)["USER"] == "10001:10001", "not root"
    assert dict(steps)["ENTRYPOINT"] == '["python", "-m", "serving.api"]'
    bases = [args for op, args in steps if op == "ARG" and args.startswith("PYTHON_IMAGE=")]
    assert bases == ["PYTHON_IMAGE=python:3.11-slim-bookworm"], "the Python the lock was computed for"
    assert "never been built locally" in DOCKERFILE.read_text()


def test_the_serving_package_imports_nothing_it_does_not_ship() -> None:
    for path in sorted((ROOT / "serving").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in OUTSIDE, f"{path.name} imports {name}"


def test_the_wheel_of_serving_alone_runs_with_the_rest_of_headwater_out_of_reach(tmp_path: Path) -> None:
    # Built from what the Dockerfile copies, as pip in the image builds it.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "serving", src / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(tmp_path)!r})"],
                   cwd=src, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("headwater-*.whl")
    packages = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist() if not name.endswith(".dist-info/")}
    assert {p for p in packages if not p.endswith(".dist-info")} == {"serving"}

    # Imported from the wheel (first on the path), with the editable checkout's other packages
    # made unimportable: the API must not need them.
    check = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {OUTSIDE!r}: raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path.insert(0, {str(wheel)!r})\n"
        "import serving.api.__main__, serving.api.app\n"
        "assert serving.__file__.startswith(" + repr(str(wheel)) + "), serving.__file__\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
