"""Benchmark: how a no-op plan scales with the number of sources.

For each N (default 10, 100, 1000) it generates a desired state with N sources, applies it to
the local emulators (fresh project, unique buckets), then times a no-op `headwater plan`:
wall time, API calls by method, and peak Python memory (tracemalloc). Beside it, in the same run
and against the same live state, a naive baseline that fetches every declared resource with one
get call each (what a reconciler without list-based observe does).

    .venv/bin/python bench/plan_scaling.py [--sizes 10 100 1000] [--repeat 3] [--json out.json]

The emulators are started by the script (reconciler.local) and stopped at the end. Results are
printed as a table naming the machine. The numbers are emulator numbers: loopback HTTP/gRPC with
no quota, so they measure headwater's own cost and its call pattern, not Google's latency — on
Google Cloud every saved call also saves 20-200 ms and a unit of quota.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The generated sources' Dataflow jobs are tracked by the local runner, not run: a thousand
# streaming pipelines would swamp the machine, and the benchmark is about the reconciler.
os.environ.setdefault("HEADWATER_LOCAL_JOBS", "record")

from reconciler import local  # noqa: E402
from reconciler.compile import compile_resources  # noqa: E402
from reconciler.engine import Engine, plan_options  # noqa: E402
from reconciler.load import load_repo  # noqa: E402
from reconciler.resources import Kind  # noqa: E402

SCHEMA = {
    "version": "1.0",
    "fields": [
        {"name": "id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "kind", "type": "STRING", "mode": "NULLABLE"},
        {"name": "amount", "type": "FLOAT64", "mode": "NULLABLE"},
        {"name": "created_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
    ],
}


def generate_repo(root: Path, sources: int, project: str, prefix: str) -> Path:
    """A desired-state repo with ``sources`` event-streaming sources."""
    (root / "connectors").mkdir(parents=True)
    (root / "schemas").mkdir()
    zones = "\n".join(f"  {z}: {{bucket: {prefix}-{z}}}" for z in ("landing", "bronze", "silver"))
    (root / "platform.yaml").write_text(
        f"project: {project}\nregion: europe-west1\nenvironment: bench\nzones:\n{zones}\n"
        "policy: {max_delete_fraction: 0.2}\n"
    )
    for i in range(sources):
        sid = f"source_{i:04d}"
        (root / "connectors" / f"{sid}.yaml").write_text(
            f"source_id: {sid}\ningestion: {{pattern: event_streaming}}\n"
            f"schema: {{file: schemas/{sid}.json}}\n"
            "processing:\n  bronze_to_silver:\n    - deduplication: {key: [id]}\n"
            "silver: {cluster_by: [kind]}\n"
        )
        (root / "schemas" / f"{sid}.json").write_text(json.dumps({"source_id": sid, **SCHEMA}))
    return root


def total_calls(engine: Engine) -> Counter:
    calls: Counter = Counter()
    for provider in {id(p): p for p in engine.providers.values()}.values():
        if hasattr(provider, "api_calls"):  # an optional ability (providers.base.ApiCallCounter)
            calls.update(provider.api_calls())
    return calls


def naive_observe(resources, project: str) -> Counter:
    """The baseline: one get per declared resource, with the official clients."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, pubsub_v1, storage

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    gcs = storage.Client(project=project)
    bq = bigquery.Client(project=project, credentials=AnonymousCredentials(),
                         client_options=ClientOptions(api_endpoint=os.environ["BIGQUERY_EMULATOR_HOST"]))
    getters = {
        Kind.PUBSUB_TOPIC: lambda r: publisher.get_topic(topic=publisher.topic_path(project, r.name)),
        Kind.PUBSUB_SUBSCRIPTION: lambda r: subscriber.get_subscription(
            subscription=subscriber.subscription_path(project, r.name)),
        Kind.STORAGE_BUCKET: lambda r: gcs.get_bucket(r.name),
        Kind.BIGQUERY_DATASET: lambda r: bq.get_dataset(r.name),
        Kind.BIGQUERY_TABLE: lambda r: bq.get_table(f"{project}.{r.name}"),
    }
    calls: Counter = Counter()
    for resource in resources:
        if resource.kind not in getters:  # Dataflow jobs: tracked locally, no API to call
            continue
        getters[resource.kind](resource)
        calls[f"get.{resource.kind}"] += 1
    return calls


def measure(sources: int, repeat: int) -> dict:
    project = f"hw-bench-{uuid.uuid4().hex[:8]}"
    prefix = f"hwb-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        repo = generate_repo(Path(tmp) / "repo", sources, project, prefix)
        started = time.perf_counter()
        state = load_repo(repo)  # reading and validating the files: what a CLI plan pays first
        load_seconds = time.perf_counter() - started
        from providers import build_providers

        engine = Engine(build_providers(project, "europe-west1", state_dir=Path(tmp) / "state"))
        started = time.perf_counter()
        result = engine.apply(engine.plan(state, plan_options(state)), max_workers=16)
        apply_seconds = time.perf_counter() - started
        assert result.ok, result.summary()
        resources = compile_resources(state)

        plan_times = []
        for _ in range(repeat):
            before = total_calls(engine)
            started = time.perf_counter()
            plan = engine.plan(state, plan_options(state))
            plan_times.append(time.perf_counter() - started)
            calls = total_calls(engine) - before
            assert not plan.has_changes, "the benchmark expects a no-op plan"
        # Peak memory in a run of its own: tracemalloc slows Python down several times.
        tracemalloc.start()
        engine.plan(state, plan_options(state))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

        # Where the time goes, per kind (one more observe pass).
        observe_seconds = {}
        for kind in engine.providers:
            started = time.perf_counter()
            engine.observe([kind])
            observe_seconds[str(kind)] = round(time.perf_counter() - started, 3)

        naive_times = []
        for _ in range(repeat):
            started = time.perf_counter()
            naive_calls = naive_observe(resources, project)
            naive_times.append(time.perf_counter() - started)
    return {
        "sources": sources,
        "resources": len(resources),
        "apply_seconds": round(apply_seconds, 2),
        "load_seconds": round(load_seconds, 3),
        "plan_seconds_median": round(statistics.median(plan_times), 3),
        "plan_api_calls": dict(sorted(calls.items())),
        "observe_seconds_by_kind": observe_seconds,
        "plan_api_calls_total": sum(calls.values()),
        "plan_peak_python_mib": round(peak / 2**20, 1),
        "naive_seconds_median": round(statistics.median(naive_times), 3),
        "naive_api_calls_total": sum(naive_calls.values()),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as state_dir:
        emulators = local.start(Path(state_dir), project="hw-bench")
        os.environ.update(emulators.env())
        try:
            rows = [measure(n, args.repeat) for n in args.sizes]
        finally:
            local.stop(Path(state_dir))

    print(f"Machine: {machine()}")
    print(f"{'sources':>7} {'resources':>9} {'load s':>7} {'plan s':>7} {'calls':>6} {'peak MiB':>8} "
          f"{'naive s':>8} {'naive calls':>11} {'speed-up':>8}")
    for row in rows:
        speedup = row["naive_seconds_median"] / row["plan_seconds_median"]
        print(f"{row['sources']:>7} {row['resources']:>9} {row['load_seconds']:>7.3f} {row['plan_seconds_median']:>7.3f} "
              f"{row['plan_api_calls_total']:>6} {row['plan_peak_python_mib']:>8.1f} "
              f"{row['naive_seconds_median']:>8.3f} {row['naive_api_calls_total']:>11} {speedup:>7.1f}x")
    for row in rows:
        print(f"  N={row['sources']}: plan API calls by method: {row['plan_api_calls']}")
        print(f"  N={row['sources']}: observe seconds by kind: {row['observe_seconds_by_kind']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
