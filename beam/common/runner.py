"""Command line and runner handling shared by the four templates.

Each template's ``run(argv)`` declares its own parameters (exactly those of its Flex Template
``metadata.json``; a test holds them equal) and hands everything else to Beam as pipeline
options (``--runner``, ``--project``, ``--temp_location``, ...).

The runner is always named, never left to Beam's default: ``DirectRunner`` would try the
Prism runner first, which downloads a binary at run time - it fails offline, and with a network
local behaviour would differ from without. So:

* ``--runner`` absent or ``local``: batch templates run on ``FnApiRunner`` (in process, runs
  batched DoFns as batches); streaming templates on ``BundleBasedDirectRunner`` (the local
  runner that supports unbounded Pub/Sub reads). The call blocks until the pipeline ends,
  which for streaming is never: the reconciler runs it as a child process and stops it.
* Inside a Flex Template launcher (``FLEX_TEMPLATE_PYTHON_PY_FILE`` is set) the default is
  ``DataflowRunner``. Dataflow requires the launcher to return once the job is submitted, so
  ``run`` does not wait for non-local runners.

On Dataflow the workers must run the image the launcher runs (it holds this package; Beam's
default worker image does not): the Flex Template image records its own name in
``HEADWATER_SDK_CONTAINER_IMAGE`` (deploy/flex/Dockerfile), which becomes the default
``--sdk_container_image``. An ``sdk_container_image`` given at launch wins.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

LOCAL = "local"
SDK_IMAGE_ENV = "HEADWATER_SDK_CONTAINER_IMAGE"


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Template parameters, and the remaining arguments for Beam."""
    args, beam_args = parser.parse_known_args(argv)
    return args, beam_args


def split_runner(beam_args: list[str]) -> tuple[str, list[str]]:
    """The runner name (``local`` unless named or inside a Flex launcher), and the other args."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--runner")
    ns, rest = p.parse_known_args(beam_args)
    if ns.runner:
        return ns.runner, rest
    return ("DataflowRunner" if os.environ.get("FLEX_TEMPLATE_PYTHON_PY_FILE") else LOCAL), rest


def with_worker_image(runner: str, beam_args: list[str]) -> list[str]:
    """``beam_args`` plus ``--sdk_container_image`` from the image's own name, for Dataflow."""
    image = os.environ.get(SDK_IMAGE_ENV, "").strip()
    named = any(a == "--sdk_container_image" or a.startswith("--sdk_container_image=") for a in beam_args)
    on_dataflow = runner.lower().removesuffix("runner") == "dataflow"  # Beam takes either spelling
    if not on_dataflow or not image or named:
        return beam_args
    return [*beam_args, f"--sdk_container_image={image}"]


def make_pipeline(beam_args: list[str], *, streaming: bool) -> beam.Pipeline:
    name, rest = split_runner(beam_args)
    options = PipelineOptions(with_worker_image(name, rest))
    options.view_as(StandardOptions).streaming = streaming
    runner: Any = name
    if name == LOCAL and streaming:
        from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

        runner = BundleBasedDirectRunner()
    elif name == LOCAL:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        runner = FnApiRunner()
    return beam.Pipeline(runner=runner, options=options)


def run_pipeline(pipeline: beam.Pipeline, beam_args: list[str]) -> Any:
    """Run; wait for the end only on the local runners (see the module docstring)."""
    result = pipeline.run()
    name, _ = split_runner(beam_args)
    if name == LOCAL:
        result.wait_until_finish()
    else:
        logging.getLogger(__name__).info("submitted to %s; not waiting for the job to end", name)
    return result


def counters(result: Any) -> dict[str, int]:
    """The ``headwater`` counters of a finished pipeline, summed over steps."""
    from beam.common.transforms import NAMESPACE

    out: dict[str, int] = {}
    for c in result.metrics().query()["counters"]:
        if c.key.metric.namespace == NAMESPACE:
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0)
    return out
