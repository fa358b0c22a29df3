"""Each template's Flex Template metadata.json: it parses as Dataflow's own TemplateMetadata (and
inside a ContainerSpec, the spec file's shape), and its parameters are exactly what the
template's ``run(argv)`` accepts."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.cloud import dataflow_v1beta3 as dataflow

BEAM_DIR = Path(__file__).resolve().parents[2] / "beam"
TEMPLATES = ["gcs_to_bigquery", "pubsub_to_bigquery", "bigquery_to_bigquery", "pubsub_to_gcs", "datastream_to_bigquery"]
STREAMING = {"pubsub_to_bigquery", "pubsub_to_gcs", "datastream_to_bigquery"}

# A plausible value for every parameter any template declares.
SAMPLES = {
    "source_spec": ['{"source_id": "x"}', "gs://specs/example_source.json", "/etc/headwater/example_source.json"],
    "input_subscription": ["projects/my-project/subscriptions/example_source-ingest"],
    "input_pattern": ["gs://landing/example/*.json.gz", "gs://landing/example/"],
    "input_format": ["json", "csv", "parquet", "avro"],
    "input_compression": ["auto", "gzip", "none"],
    "output_prefix": ["gs://bronze-my-project-eu", "gs://bronze/archive/"],
    "flush_seconds": ["60"],
    "max_records_per_file": ["10000"],
}


def _metadata(template: str) -> dict[str, Any]:
    return json.loads((BEAM_DIR / template / "metadata.json").read_text())


def _actions(template: str) -> dict[str, argparse.Action]:
    parser = importlib.import_module(f"beam.{template}.pipeline").parser()
    return {a.dest: a for a in parser._actions if a.dest != "help"}


@pytest.mark.parametrize("template", TEMPLATES)
def test_metadata_parses_as_flex_template_metadata(template: str) -> None:
    text = (BEAM_DIR / template / "metadata.json").read_text()
    meta = dataflow.TemplateMetadata.from_json(text, ignore_unknown_fields=False)
    assert meta.name and meta.description
    assert meta.streaming == (template in STREAMING)
    spec = {"image": "europe-docker.pkg.dev/p/headwater/beam:1", "metadata": json.loads(text),
            "sdkInfo": {"language": "PYTHON"}, "defaultEnvironment": {}}
    container = dataflow.ContainerSpec.from_json(json.dumps(spec), ignore_unknown_fields=False)
    assert [p.name for p in container.metadata.parameters] == [p.name for p in meta.parameters]
    for p in meta.parameters:
        assert p.label and p.help_text and p.regexes, f"{p.name}: label, helpText and regexes are all set"


@pytest.mark.parametrize("template", TEMPLATES)
def test_metadata_parameters_are_exactly_what_run_accepts(template: str) -> None:
    params = {p["name"]: p for p in _metadata(template)["parameters"]}
    actions = _actions(template)
    assert set(params) == set(actions)
    for name, p in params.items():
        assert actions[name].required == (not p["isOptional"]), f"{name}: optional in one, required in the other"
        assert actions[name].option_strings == [f"--{name}"]
        for value in SAMPLES[name]:
            assert any(re.fullmatch(rx, value) for rx in p["regexes"]), f"{name}: regex rejects {value!r}"
        for choice in actions[name].choices or ():
            assert any(re.fullmatch(rx, choice) for rx in p["regexes"]), f"{name}: regex rejects choice {choice!r}"


@pytest.mark.parametrize("template", TEMPLATES)
def test_run_takes_the_parameters_and_passes_everything_else_to_beam(template: str) -> None:
    from beam.common.runner import parse

    module = importlib.import_module(f"beam.{template}.pipeline")
    argv = [arg for name in _actions(template) for arg in (f"--{name}", SAMPLES[name][0])]
    args, beam_args = parse(module.parser(), [*argv, "--runner", "DataflowRunner", "--region", "europe-west1"])
    assert beam_args == ["--runner", "DataflowRunner", "--region", "europe-west1"]
    assert all(getattr(args, name) is not None for name in _actions(template))
    assert importlib.import_module(f"beam.{template}").run is module.run


@pytest.mark.parametrize("template", TEMPLATES)
def test_missing_required_parameter_is_refused(template: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"beam.{template}")
    with pytest.raises(SystemExit):
        module.run([])
    assert "--source_spec" in capsys.readouterr().err


def test_beam_stands_on_its_own() -> None:
    """beam/ imports neither the reconciler nor the providers (it ships alone in the image)."""
    code = (
        "import sys\n"
        + "".join(f"import beam.{t}\n" for t in TEMPLATES)
        + "import beam.common.gold, beam.common.synthetic\n"
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('reconciler', 'providers'))\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=BEAM_DIR.parent)
