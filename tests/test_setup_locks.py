"""The locks scripts/setup and the images install from (issue 14, set-up).

* deploy/dev.lock is the development environment: made by uv from pyproject.toml's dependency
  tables, hashed, fresh (a stale one stops scripts/setup with the command that fixes it), and
  the venv the suite runs in is exactly it.
* The image locks agree with it, and the daemon's (deploy/requirements.lock, the root
  Dockerfile's only lock) carries no Apache Beam; the daemon's code never imports it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DEV_LOCK = ROOT / "deploy" / "dev.lock"
DAEMON_LOCK = ROOT / "deploy" / "requirements.lock"

spec = importlib.util.spec_from_file_location("lock_requirements", ROOT / "deploy" / "lock_requirements.py")
lock_requirements = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock_requirements)

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def dev_pins() -> dict[str, list[tuple[str, Marker | None, list[str]]]]:
    """name -> [(version, marker, hashes)] (a name may be pinned twice under disjoint markers)."""
    pins: dict[str, list] = {}
    current = None
    for line in DEV_LOCK.read_text().splitlines():
        match = PIN.match(line)
        if match:
            name, ver, marker = match.groups()
            current = (ver, Marker(marker) if marker else None, [])
            pins.setdefault(canonicalize_name(name), []).append(current)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            current[2].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
    return pins


def applicable(pins: dict, name: str) -> str | None:
    """The version the lock gives this interpreter for a name, if any."""
    for ver, marker, _ in pins.get(canonicalize_name(name), []):
        if marker is None or marker.evaluate():
            return ver
    return None


def image_pins(lock: Path) -> dict[str, str]:
    return {canonicalize_name(n): v for n, v in (line.split("==") for line in lock.read_text().splitlines()
                                                   if line and not line.startswith("#"))}


# --- freshness --------------------------------------------------------------------------------

def test_dev_lock_is_fresh():
    assert lock_requirements.dev_lock_problem() is None, lock_requirements.dev_lock_problem()


def copy_project(tmp_path: Path, pyproject: str) -> Path:
    (tmp_path / "deploy").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "pyproject.toml").write_text(pyproject)
    for rel in ("deploy/dev.lock", "deploy/lock_requirements.py", "scripts/setup"):
        (tmp_path / rel).write_bytes((ROOT / rel).read_bytes())
    (tmp_path / "scripts/setup").chmod(0o755)
    return tmp_path


def test_a_dependency_change_makes_the_lock_stale_and_names_the_fix(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    added = pyproject.replace('"jinja2>=3.1",', '"jinja2>=3.1",\n  "humanize>=4",', 1)
    assert added != pyproject
    problem = lock_requirements.dev_lock_problem(copy_project(tmp_path, added))
    assert problem and "stale" in problem and ".venv/bin/python deploy/lock_requirements.py" in problem


def test_comments_and_other_tables_do_not_make_the_lock_stale(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    edited = pyproject.replace("[tool.ruff]", "# a comment\n[tool.ruff]", 1) + "\n# trailing comment\n"
    assert lock_requirements.dev_lock_problem(copy_project(tmp_path, edited)) is None


def test_setup_stops_on_a_stale_lock_before_installing_anything(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    root = copy_project(tmp_path, pyproject.replace('"pyyaml>=6",', '"pyyaml>=6.0.1",', 1))
    # A "venv" whose python is this interpreter: setup must stop at the lock check, before uv.
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)
    result = subprocess.run(["bash", str(root / "scripts" / "setup")], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PATH": os.environ.get("PATH", "")})
    assert result.returncode == 1
    assert "setup: ERROR: deploy/dev.lock is stale" in result.stderr
    assert "run .venv/bin/python deploy/lock_requirements.py" in result.stderr
    assert not (root / ".venv" / ".uv").exists() and not (root / ".venv" / ".headwater-setup-stamp").exists()


def test_check_reports_a_stale_dev_lock():
    result = subprocess.run([sys.executable, str(ROOT / "deploy/lock_requirements.py"), "--check-dev"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- what the dev lock holds --------------------------------------------------------------------

def test_dev_lock_pins_every_requirement_of_every_extra_with_hashes():
    pins = dev_pins()
    assert len(pins) > 150
    for name, entries in pins.items():
        for ver, _, hashes in entries:
            assert hashes and all(len(h) == 64 for h in hashes), f"{name}=={ver} has no sha256"
    project = lock_requirements.tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += [r for r in extra if not r.startswith("headwater[")]
    for raw in requirements:
        requirement = Requirement(raw)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        locked = applicable(pins, requirement.name)
        assert locked is not None, f"{requirement.name} is not in deploy/dev.lock"
        assert requirement.specifier.contains(locked, prereleases=True), f"deploy/dev.lock's {requirement.name}=={locked} ∉ {raw}"


def test_the_venv_is_the_dev_lock():
    """scripts/setup installed exactly the lock (the suite runs in what CI and fresh clones get)."""
    pins = dev_pins()
    wrong = {}
    for name in pins:
        want = applicable(pins, name)
        if want is None:
            continue
        try:
            have = version(name)
        except PackageNotFoundError:
            have = None
        if have != want:
            wrong[name] = (want, have)
    assert wrong == {}, f"(locked, installed) differ - run scripts/setup: {wrong}"


def test_image_locks_agree_with_the_dev_lock():
    pins = dev_pins()
    for lock in lock_requirements.LOCKS:
        for name, ver in image_pins(lock).items():
            assert ver in [v for v, _, _ in pins.get(name, [])], f"{lock.relative_to(ROOT)}: {name}=={ver} not in dev.lock"


# --- the daemon image carries no Beam -------------------------------------------------------------

def test_only_the_flex_lock_carries_apache_beam():
    for lock in lock_requirements.LOCKS:
        has_beam = "apache-beam" in image_pins(lock)
        assert has_beam == (lock == ROOT / "deploy/flex/requirements.lock"), lock.relative_to(ROOT)
    assert lock_requirements.LOCKS[DAEMON_LOCK] == ()


def test_root_dockerfile_installs_the_daemon_lock_alone_and_copies_no_pipeline_code():
    text = (ROOT / "Dockerfile").read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert len(installs) == 2, installs
    assert installs[0].strip().endswith("pip install --no-deps -r deploy/requirements.lock")
    assert "pip install --no-deps ." in installs[1] and "[" not in installs[1], "headwater without extras"
    locks = re.findall(r"[\w/.-]*requirements\.lock|[\w/.-]*dev\.lock", text)
    assert set(locks) == {"deploy/requirements.lock"}, locks
    copied = [line.split()[1] for line in text.splitlines() if line.startswith("COPY ") and "--from" not in line]
    assert not {"beam", "connector", "serving", "."} & set(copied), copied


def imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


# Local-only modules (never on the daemon's path) that reuse a Beam-free helper of beam/:
# the demo reads BigQuery through beam/common/clients.py (no apache_beam import, checked below).
LOCAL_ONLY_BEAM_HELPERS = {("reconciler/demo.py", "beam.common.clients")}


def test_reconciler_and_providers_never_import_beam():
    """Not at module level, not inside a function: the daemon image has no apache_beam and no beam/."""
    bad = []
    for package in ("reconciler", "providers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for module, line in imports(path):
                top = module.split(".")[0]
                if top == "apache_beam" or (top == "beam" and (rel, module) not in LOCAL_ONLY_BEAM_HELPERS):
                    bad.append(f"{rel}:{line} imports {module}")
    assert bad == []
    for rel in ("beam/__init__.py", "beam/common/__init__.py", "beam/common/clients.py"):
        assert all(m.split(".")[0] != "apache_beam" for m, _ in imports(ROOT / rel)), rel


BLOCK_BEAM = """
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('apache_beam', 'beam'):
            raise ImportError('the daemon image has no ' + name)
sys.meta_path.insert(0, Block())
import reconciler, providers
failed = []
for package in (reconciler, providers):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):
        try:
            importlib.import_module(info.name)
        except ImportError as e:
            failed.append(f'{info.name}: {e}')
assert not failed, failed
assert not [m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'beam')]
print('ok', len([m for m in sys.modules if m.startswith(('reconciler', 'providers'))]))
"""


def test_every_daemon_module_imports_without_beam():
    result = subprocess.run([sys.executable, "-c", BLOCK_BEAM], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


# --- scripts/setup ------------------------------------------------------------------------------

def test_setup_installs_from_the_lock_with_uv():
    text = (ROOT / "scripts" / "setup").read_text()
    assert "uv\" pip sync --compile-bytecode" in text and "deploy/dev.lock" in text
    assert "lock_requirements.py --check-dev" in text
    assert "pip install -e" not in text, "no resolving install: the lock, then headwater editable"
    assert re.fullmatch(r"\d+\.\d+\.\d+", lock_requirements.UV_VERSION)


@pytest.mark.skipif(not (ROOT / ".venv" / ".uv" / "bin" / "uv").exists(), reason="scripts/setup has not run here")
def test_setup_bootstrapped_the_pinned_uv():
    out = subprocess.run([str(ROOT / ".venv/.uv/bin/uv"), "--version"], capture_output=True, text=True).stdout
    assert out.split()[1] == lock_requirements.UV_VERSION
