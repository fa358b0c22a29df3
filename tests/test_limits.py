"""GCP's limits and what a format or query cannot carry, checked at validate on what compile builds
(reconciler/limits.py): each problem names the file, line and setting that pushes a resource over,
and nothing is planned. Cases: the peers' reports (62 platform labels → 66 on the resources; 8
labels → a 528-character Cloud Scheduler description; CSV with nested fields) and variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml

from reconciler.compile import compile_resources
from reconciler.limits import MAX_LABELS, SCHEDULER_DESCRIPTION_MAX, dataflow_labels, scheduler_description
from reconciler.load import InvalidDesiredState, load_repo
from reconciler.resources import Kind


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def problems_of(repo: Path) -> list:
    with pytest.raises(InvalidDesiredState) as caught:
        load_repo(repo)
    return caught.value.problems


def platform_labels(n: int, width: int = 8):
    return lambda data: data.update(labels={f"l{i:02d}": "v" * width for i in range(n)})


def source_labels(n: int, width: int = 8):
    return lambda data: data.update(labels={f"s{i:02d}": "w" * width for i in range(n)})


def schema_field(change):
    def mutate(repo: Path) -> None:
        path = repo / "schemas" / "orders.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data, indent=2))

    return mutate


CASES = [
    # id, platform.yaml edit, connectors/orders.yaml edit, schema edit, (file, text on the line), message parts
    ("62-platform-labels-make-resources-carry-more-than-64", platform_labels(62), None, None,
     ("platform.yaml", "labels:"), ["labels", "GCP allows 64", "62 from platform.yaml"]),
    ("60-platform-labels-plus-headwaters-own-too", platform_labels(60), None, None,
     ("platform.yaml", "labels:"), ["GCP allows 64"]),
    ("a-sources-labels-push-its-resources-over", platform_labels(52), source_labels(8), None,
     ("connectors/orders.yaml", "labels:"), ["8 from this source", "GCP allows 64"]),
    ("8-labels-make-a-cloud-scheduler-description-over-500", platform_labels(8, 40), None, None,
     ("platform.yaml", "labels:"), ["Cloud Scheduler", "over Cloud Scheduler's 500"]),
    ("a-sources-long-labels-push-its-batch-jobs-description-over", None, source_labels(6, 40), None,
     ("connectors/orders.yaml", "labels:"), ["Cloud Scheduler", "this source's labels"]),
    ("csv-cannot-carry-a-repeated-record", None, lambda d: d["ingestion"].update(format="csv"), None,
     ("connectors/orders.yaml", "format:"), ["CSV file cannot carry RECORD or REPEATED", "items (RECORD, REPEATED)"]),
    ("csv-cannot-carry-a-repeated-scalar", None, lambda d: d["ingestion"].update(format="csv"),
     schema_field(lambda s: s.update(fields=[*s["fields"][:6], {"name": "tags", "type": "STRING",
                                                                "mode": "REPEATED"}])),
     ("connectors/orders.yaml", "format:"), ["tags (STRING, REPEATED)"]),
    ("a-column-description-over-1024", None, None,
     schema_field(lambda s: s["fields"][0].update(description="x" * 1025)),
     ("schemas/orders.json", '"description": "xxxxxxxx'), ["1,025 characters", "1,024"]),
    ("a-table-description-over-16384", None, lambda d: d.update(description="d" * 16385), None,
     ("connectors/orders.yaml", "description:"), ["16,385 characters"]),
    ("require-partition-filter-with-gold-aggregates", None,
     lambda d: d.setdefault("silver", {}).update(require_partition_filter=True), None,
     ("connectors/orders.yaml", "require_partition_filter"), ["gold aggregate", "no partition filter"]),
]


@pytest.mark.parametrize(("platform", "orders", "schema", "where", "says"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_limit_of_the_compiled_resources_is_reported_at_the_setting(tmp_path, platform, orders, schema, where,
                                                                      says):
    repo = copy_example(tmp_path, ["orders", "payments"])
    if platform:
        edit_yaml(repo / "platform.yaml", platform)
    if orders:
        edit_yaml(repo / "connectors" / "orders.yaml", orders)
    if schema:
        schema(repo)
    file, text = where
    mine = [p for p in problems_of(repo) if p.file == file]
    assert mine, f"no problem reported in {file}"
    problem = next((p for p in mine if all(part in p.message for part in says)), None)
    assert problem is not None, [p.message for p in mine]
    assert problem.line == line_of(repo / file, text), str(problem)


def test_the_reported_count_is_the_compiled_one(tmp_path):
    # 62 declared platform labels: the silver table carries 62 + managed-by, headwater-platform,
    # headwater-source and headwater-deletion-protection = 66.
    repo = copy_example(tmp_path, ["orders"])
    edit_yaml(repo / "platform.yaml", platform_labels(62))
    messages = " ".join(p.message for p in problems_of(repo))
    assert "would carry 66 labels (62 from platform.yaml, 4 of headwater's own)" in messages


def test_just_under_the_limits_is_valid(tmp_path):
    # A streaming-only platform (no Cloud Scheduler description to hold the labels): its streaming
    # job carries the most, the declared labels, 3 of headwater's and 5 of its launch.
    repo = copy_example(tmp_path, ["shipments"])
    edit_yaml(repo / "platform.yaml", platform_labels(MAX_LABELS - 8, 1))
    state = load_repo(repo)
    resources = compile_resources(state)
    carried = max(len(dataflow_labels(r)) if r.kind == Kind.DATAFLOW_JOB else len(r.labels) for r in resources)
    assert carried == MAX_LABELS


def test_the_limits_mirror_the_dataflow_provider(tmp_path):
    from providers.dataflow import job_description, job_labels
    from providers.scheduler import DESCRIPTION_LIMIT

    assert SCHEDULER_DESCRIPTION_MAX == DESCRIPTION_LIMIT
    for job in (r for r in compile_resources(load_repo(copy_example(tmp_path))) if r.kind == Kind.DATAFLOW_JOB):
        assert dataflow_labels(job) == job_labels(job)
        assert scheduler_description(job) == job_description(job)


def test_every_problem_of_every_file_in_one_run(tmp_path):
    repo = copy_example(tmp_path, ["orders", "payments"])
    edit_yaml(repo / "platform.yaml", platform_labels(62))
    edit_yaml(repo / "connectors" / "orders.yaml", lambda d: d["ingestion"].update(format="csv"))
    files = {p.file for p in problems_of(repo)}
    assert {"platform.yaml", "connectors/orders.yaml"} <= files
