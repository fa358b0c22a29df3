"""Write headwater's lock files: the development environment's and the images'.

* ``deploy/dev.lock`` - the development environment that ``scripts/setup`` installs (and so
  ``scripts/test``, ``scripts/demo`` and CI): everything ``pip install -e '.[dev]'`` would
  install (the ``local``, ``beam``, ``connector`` and ``serving`` extras and the test tools),
  resolved by uv (``uv pip compile --universal --generate-hashes``): exact versions with the
  sha256 of every file PyPI serves for them, with markers, so one lock serves Python 3.11-3.13
  on any platform. Its first line records a hash of the dependency tables of pyproject.toml it
  was made from; ``scripts/setup`` refuses a lock whose hash differs (pyproject changed, lock
  not regenerated) and names the command to run. Regenerating keeps the versions already
  locked where they still fit (uv's preferences); ``--upgrade`` or ``--upgrade-package NAME``
  moves them.
* ``deploy/requirements.lock`` - the daemon image (``Dockerfile``): the transitive closure of
  ``[project].dependencies`` in pyproject.toml (no extras: neither the emulators of ``local``,
  nor Apache Beam, nor the test tools of ``dev``).
* ``deploy/flex/requirements.lock`` - the Flex Template images (``deploy/flex/Dockerfile``):
  the same plus the ``beam`` extra (Apache Beam with its GCP I/O, and what beam/ reads files
  with).
* ``deploy/connector/requirements.lock`` - the connector runtime's image
  (``deploy/connector/Dockerfile``): the same plus the ``connector`` extra (httpx, starlette,
  uvicorn, tenacity, limits).
* ``deploy/api/requirements.lock`` - the data API's image (``deploy/api/Dockerfile``): the same
  plus the ``serving`` extra (FastAPI, uvicorn, PyJWT, cryptography, limits, BigQuery, pyarrow).

The image locks are pinned to the versions installed in the development venv - which
``scripts/setup`` installs from ``deploy/dev.lock`` - computed from installed package metadata,
offline, so every image carries versions the test suite ran with.

    .venv/bin/python deploy/lock_requirements.py            # re-lock after changing dependencies:
                                                            # dev.lock (uv, needs PyPI), then
                                                            # scripts/setup syncs .venv to it,
                                                            # then the image locks from .venv
    .venv/bin/python deploy/lock_requirements.py --upgrade  # the same, newest versions allowed
    .venv/bin/python deploy/lock_requirements.py --check    # exit 1 if a lock is stale (tests)
    python3 deploy/lock_requirements.py --check-dev         # dev.lock against pyproject only
                                                            # (standard library; scripts/setup)
    .venv/bin/python deploy/lock_requirements.py --uv       # print uv's path, installing the
                                                            # pinned uv into .venv/.uv if needed

The Dockerfiles install a lock with ``--no-deps``, then headwater itself with ``--no-deps``, so
an image contains exactly these versions and nothing its lock does not name.

This module imports only the standard library at import time (``scripts/setup`` runs
``--check-dev`` before any package is installed); ``packaging`` is imported where the image
locks are computed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The installer scripts/setup and this script use: a pinned release of uv (PyPI's `uv` wheel
# carries the binary), installed with pip into .venv/.uv, beside the venv it fills.
UV_VERSION = "0.13.9"
UV_HOME = Path(".venv") / ".uv"

DEV_LOCK = ROOT / "deploy" / "dev.lock"
DEV_EXTRAS = ("dev",)
INPUT_PREFIX = "# pyproject dependencies sha256: "
FIX = ".venv/bin/python deploy/lock_requirements.py"

# image lock file -> the extras of headwater it covers
LOCKS = {
    ROOT / "deploy" / "requirements.lock": (),
    ROOT / "deploy" / "flex" / "requirements.lock": ("beam",),
    ROOT / "deploy" / "connector" / "requirements.lock": ("connector",),
    ROOT / "deploy" / "api" / "requirements.lock": ("serving",),
}
# The image's interpreter: markers are evaluated for it, not for the machine running this script.
TARGET_OVERRIDES = {"python_version": "3.11", "python_full_version": "3.11.0",
                    "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                    "implementation_name": "cpython", "platform_python_implementation": "CPython"}


# --- deploy/dev.lock: freshness (standard library only) -------------------------------------

def lock_inputs(pyproject_text: str) -> dict:
    """What a lock is made from: the dependency tables of pyproject.toml (comments, formatting
    and every other table - tools, package data - do not count)."""
    project = tomllib.loads(pyproject_text)["project"]
    return {"requires-python": project.get("requires-python", ""),
            "dependencies": list(project.get("dependencies", [])),
            "optional-dependencies": {k: list(v) for k, v in project.get("optional-dependencies", {}).items()}}


def input_hash(pyproject_text: str) -> str:
    canonical = json.dumps(lock_inputs(pyproject_text), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def recorded_hash(lock_text: str) -> str | None:
    for line in lock_text.splitlines()[:5]:
        if line.startswith(INPUT_PREFIX):
            return line[len(INPUT_PREFIX):].strip()
    return None


def dev_lock_problem(root: Path = ROOT) -> str | None:
    """None when deploy/dev.lock was made from the current pyproject.toml, else what is wrong."""
    lock = root / "deploy" / "dev.lock"
    if not lock.exists():
        return f"deploy/dev.lock is missing: run {FIX}"
    want = input_hash((root / "pyproject.toml").read_text())
    have = recorded_hash(lock.read_text())
    if have != want:
        return (f"deploy/dev.lock is stale: the dependencies in pyproject.toml changed since it was "
                f"written (lock made from {str(have)[:12]}, pyproject is {want[:12]}): run {FIX}")
    return None


# --- uv ---------------------------------------------------------------------------------------

def uv_path(root: Path = ROOT, install: bool = True) -> str:
    """The pinned uv in .venv/.uv, installed there with this interpreter's pip if missing."""
    home = root / UV_HOME
    binary = home / "bin" / "uv"
    if binary.exists():
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.split()
        if version[1:2] == [UV_VERSION]:
            return str(binary)
    if not install:
        sys.exit(f"uv {UV_VERSION} is not in {UV_HOME}: run scripts/setup")
    shutil.rmtree(home, ignore_errors=True)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                             "--no-warn-script-location", "--target", str(home), f"uv=={UV_VERSION}"],
                            capture_output=True, text=True)
    if result.returncode != 0 or not binary.exists():
        sys.exit(f"could not install uv {UV_VERSION} into {UV_HOME} with {sys.executable} -m pip:\n"
                 f"{result.stdout}{result.stderr}")
    return str(binary)


def compile_dev_lock(upgrade: list[str]) -> None:
    """Resolve the dev environment with uv and write deploy/dev.lock with its input hash."""
    uv = uv_path()
    pyproject = (ROOT / "pyproject.toml").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dev.lock"
        # uv prefers the versions of an existing output file: the current lock, or - the first
        # time - what is installed in this environment (the versions the tests ran with).
        if DEV_LOCK.exists():
            shutil.copyfile(DEV_LOCK, out)
        else:
            from importlib.metadata import distributions
            out.write_text("".join(f"{d.metadata['Name']}=={d.version}\n" for d in distributions()
                                   if d.metadata["Name"] and d.metadata["Name"].lower() != "headwater"))
        argv = [uv, "pip", "compile", "pyproject.toml", *(f"--extra={e}" for e in DEV_EXTRAS),
                "--universal", "--python-version=3.11", "--generate-hashes", "--no-header",
                "--quiet", f"--output-file={out}", *upgrade]
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"uv pip compile failed:\n{result.stderr}")
        body = out.read_text()
    header = [INPUT_PREFIX + input_hash(pyproject),
              "# The development environment of headwater (headwater[dev]: every extra and the test tools),",
              "# installed by scripts/setup with uv. Generated by deploy/lock_requirements.py; do not edit.",
              f"# Regenerate after changing dependencies in pyproject.toml: {FIX}"]
    DEV_LOCK.write_text("\n".join(header) + "\n" + body)
    pins = sum(1 for line in body.splitlines() if line[:1].isalnum())
    print(f"wrote {DEV_LOCK.relative_to(ROOT)} ({pins} pins)")


# --- the image locks (from the installed venv) -------------------------------------------------

def closure(requirements: list[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    target = {**default_environment(), **TARGET_OVERRIDES}
    pinned: dict[str, str] = {}
    pending = [(Requirement(r), "") for r in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({**target, "extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            sys.exit(f"{requirement.name} is not installed in this environment: run scripts/setup first")
        if not requirement.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"installed {requirement.name} {dist.version} does not satisfy {requirement}")
        pinned[name] = dist.version
        for raw in dist.requires or []:
            child = Requirement(raw)
            # A child marked ``extra == "x"`` is needed only when the parent was asked for [x].
            for wanted in requirement.extras or {""}:
                pending.append((child, wanted))
    return pinned


def render(extras: tuple[str, ...]) -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins = closure(requirements)
    what = f"headwater[{','.join(extras)}]" if extras else "headwater"
    changed = "[project].dependencies" + "".join(f" or the {e!r} extra" for e in extras)
    lines = [f"# Runtime dependencies of {what}, pinned (generated by deploy/lock_requirements.py; do not edit).",
             f"# Python {TARGET_OVERRIDES['python_version']}, Linux. Regenerate after changing {changed}."]
    lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if "--check-dev" in argv:
        problem = dev_lock_problem()
        if problem:
            sys.exit(problem)
        return
    if "--uv" in argv:
        print(uv_path())
        return
    if "--check" in argv:
        stale = []
        problem = dev_lock_problem()
        if problem:
            stale.append(problem)
        for lock, extras in LOCKS.items():
            if not lock.exists() or lock.read_text() != render(extras):
                stale.append(f"{lock.relative_to(ROOT)} stale: run {FIX}")
        if stale:
            sys.exit("\n".join(stale))
        return
    upgrade = [a for a in argv if a == "--upgrade"]
    upgrade += [f"--upgrade-package={argv[i + 1]}" for i, a in enumerate(argv) if a == "--upgrade-package"]
    compile_dev_lock(upgrade)
    # .venv follows the new lock (scripts/setup syncs it), then the images follow .venv.
    subprocess.run([str(ROOT / "scripts" / "setup")], check=True)
    import importlib
    importlib.invalidate_caches()
    for lock, extras in LOCKS.items():
        text = render(extras)
        lock.write_text(text)
        print(f"wrote {lock.relative_to(ROOT)} ({text.count(chr(10)) - 2} packages)")


if __name__ == "__main__":
    main(sys.argv[1:])
