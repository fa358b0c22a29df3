"""The Flex Template packaging (deploy/flex/): the wheel the image installs carries every
template's metadata.json, and the Dockerfile copies what exists and runs what the package has.
Docker does not run here; these tests keep the Dockerfile honest by reading it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from beam.common.runner import SDK_IMAGE_ENV, with_worker_image

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "flex" / "Dockerfile"
TEMPLATES = ["gcs_to_bigquery", "pubsub_to_bigquery", "bigquery_to_bigquery", "pubsub_to_gcs", "datastream_to_bigquery"]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for line in text.splitlines() if line.strip() for parts in [line.strip().split(None, 1)]]


def test_the_wheel_the_image_installs_carries_each_templates_metadata(tmp_path: Path) -> None:
    # Built from what the Dockerfile copies (pyproject.toml, README.md, beam/), as pip in the
    # image builds it.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "beam", src / "beam", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(tmp_path)!r})"],
                   cwd=src, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("headwater-*.whl")

    # Read back through importlib.resources from the wheel alone (-S: no site-packages, where
    # the editable install of this checkout would answer instead).
    check = (
        "import importlib.resources, json, sys, beam\n"
        f"assert beam.__file__.startswith({str(wheel)!r}), beam.__file__\n"
        f"for t in {TEMPLATES!r}:\n"
        "    print(t, json.loads(importlib.resources.files('beam').joinpath(t, 'metadata.json').read_text())['name'])\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", check], env={"PYTHONPATH": str(wheel)}, cwd=tmp_path,
                         check=True, capture_output=True, text=True).stdout
    assert out.split("\n")[:-1] == [f"{t} headwater {t}" for t in TEMPLATES]


def test_the_dockerfile_copies_files_that_exist_and_launches_each_template() -> None:
    steps = _instructions()
    copies = [args.split() for op, args in steps if op == "COPY" and not args.startswith("--from")]
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository (the build context)"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    assert ["beam", "beam"] in copies and "/template" in dict(steps)["WORKDIR"]

    env = " ".join(args for op, args in steps if op == "ENV")
    py_file = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=(\S+)", env)[1]  # type: ignore[index]
    assert py_file == "/template/beam/${TEMPLATE}/__main__.py"
    for template in TEMPLATES:
        assert (ROOT / "beam" / template / "__main__.py").is_file()
    assert f"{SDK_IMAGE_ENV}=${{IMAGE}}" in env, "the image tells the pipeline its own name"
    assert dict(steps)["ENTRYPOINT"] == '["/opt/apache/beam/boot"]', "workers boot Beam's SDK harness"


def test_the_image_installs_exactly_its_lock_and_the_lock_pins_the_beam_extra() -> None:
    runs = [args for op, args in _instructions() if op == "RUN" and "pip install" in args]
    assert runs[0] == "pip install --no-deps -r /tmp/requirements.lock", "the lock first, without resolving"
    assert all("--no-deps" in run for run in runs), f"every install is --no-deps: {runs}"
    assert "pip check" in runs[-1]
    pins = dict(line.split("==") for line in (ROOT / "deploy/flex/requirements.lock").read_text().splitlines()
                if line and not line.startswith("#"))
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["beam"]
    for requirement in extra:  # freshness against the venv is test_requirements_lock_is_fresh's job
        name = re.split(r"[\[<>=~ ]", requirement, maxsplit=1)[0]
        assert name in pins, f"{name} (the beam extra) is not pinned in deploy/flex/requirements.lock"
    assert pins["apache-beam"] == "2.77.0"


def test_the_dockerfile_bases_match_the_pinned_beam_and_python() -> None:
    args = dict(a.split("=", 1) for op, a in _instructions() if op == "ARG" and "=" in a)
    assert args["LAUNCHER_IMAGE"] == "gcr.io/dataflow-templates-base/python311-template-launcher-base"
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["beam"]
    (pin,) = [d for d in extra if d.startswith("apache-beam")]
    assert args["BEAM_SDK_IMAGE"] == f"apache/beam_python3.11_sdk:{pin.split('==')[1]}"


def test_build_instructions_publish_where_the_reconciler_launches_from() -> None:
    from providers.dataflow import DataflowSettings

    settings = DataflowSettings(project="p", location="r", template_prefix="gs://b/dataflow", temp_location="gs://b/t")
    assert settings.template_path("gcs_to_bigquery") == "gs://b/dataflow/templates/gcs_to_bigquery.json"
    build = (ROOT / "deploy" / "flex" / "build.md").read_text()
    assert 'flex-template build "$TEMPLATE_BUCKET/templates/$TEMPLATE.json"' in build
    assert '--metadata-file "beam/$TEMPLATE/metadata.json"' in build
    assert f"for TEMPLATE in {' '.join(TEMPLATES)}; do" in build


@pytest.mark.parametrize(("runner", "argv", "env", "expected"), [
    ("DataflowRunner", ["--region", "r"], "img:1", ["--region", "r", "--sdk_container_image=img:1"]),
    ("dataflow", [], "img:1", ["--sdk_container_image=img:1"]),
    ("DataflowRunner", ["--sdk_container_image=other:2"], "img:1", ["--sdk_container_image=other:2"]),
    ("DataflowRunner", [], "", []),
    ("local", [], "img:1", []),
])
def test_workers_run_the_launchers_image(monkeypatch: pytest.MonkeyPatch, runner: str, argv: list[str],
                                         env: str, expected: list[str]) -> None:
    monkeypatch.setenv(SDK_IMAGE_ENV, env)
    assert with_worker_image(runner, argv) == expected
