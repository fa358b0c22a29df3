"""Benchmark: a no-op plan and a one-source commit at 100 / 1,000 / 10,000 sources against a fake GCP
with an injected per-call latency (default 100 ms) - a run not bounded by the emulators.

What answers the calls:

* Pub/Sub, Cloud Storage and BigQuery: the real providers (`providers.pubsub`, `providers.storage`,
  `providers.bigquery` on its real-API path: ``tables.list`` + one INFORMATION_SCHEMA query per
  dataset) with their official clients, sent to `bench/fake_gcp.py` in a process of its own (gRPC
  for Pub/Sub, JSON for the other two), which sleeps ``--latency`` before answering each request.
* The kinds with no fake endpoint here (Dataflow jobs, Cloud Monitoring alert policies and
  dashboards): `providers.memory.MemoryProvider`, wrapped to sleep ``--latency`` per call and to
  count one list call per 1,000 resources of a kind (a page of the real list APIs; MODELED, not
  the real provider code). Its objects live in the measured process.

Per size, in one run: the platform is generated (`bench/plan_scaling.generate_repo`: event-streaming
sources) and put into the fake with no latency by a seeding process - buckets and datasets created
by the providers, topics, subscriptions and tables built by the providers' own create code and
handed over in bulk (``--seed-with-apply``: by a plan and apply instead, ~10 resources/s); then
a fresh measuring process (its peak RSS is headwater's, not the fake's) times:

* the no-op plan: ``load_repo`` + ``Engine.plan`` (compile, observe, plan), median of ``--repeat``;
* a one-source commit (one source's Silver clustering changed), converged: load, plan, apply
  (a table PATCH) and the check after it - by the full path (a full plan before and after, as the
  daemon's sync did) and, on further changes, as the daemon does it: ``load_repo(previous=...,
  changed=...)`` (only the file git would name read again), `reconciler.incremental` (``plan_change`` against the
  cache a full observe left, ``recheck`` of what was applied) - twice: ``incremental_first``, the
  first commit after a full load (which makes what the git-mode load keeps), and
  ``incremental``, the next one, a commit as the daemon makes them from then on; ``commit`` in
  the JSON;
* API calls by method, as the fake counted them (and the modeled lists);
* peak RSS (``ru_maxrss``) after the plans, and the RSS after imports for scale, with the packages
  of the daemon's image (``deploy/requirements.lock``): pyarrow and numpy, which the dev
  environment has for Beam and the clients import when present, are kept out
  (``--dev-packages`` lets them in);
* beside it, the naive baseline: one get per declared resource through the same clients
  (16 at a time). Above ``--naive-limit`` resources it gets a stratified sample and scales the
  time up (``naive_extrapolated`` says so); the calls are one per resource either way.

    .venv/bin/python bench/plan_scale.py [--sizes 100 1000 10000] [--latency 0.1] [--repeat 3] [--json out.json]

Results are printed with the machine (lscpu) and the ratios of the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PAGE = 1000  # page size of the modeled list calls (the real list APIs' usual maximum)
NAIVE_WORKERS = 16


# --- the measured process ---------------------------------------------------------------------


def _fake_kinds():
    from reconciler.resources import Kind

    return {Kind.PUBSUB_TOPIC, Kind.PUBSUB_SUBSCRIPTION, Kind.STORAGE_BUCKET, Kind.BIGQUERY_DATASET,
            Kind.BIGQUERY_TABLE}


class LatencyMemoryProvider:
    """`MemoryProvider` behind a per-call latency: one list per page of `PAGE` per kind; a get per name."""

    def __init__(self, kinds, latency: float) -> None:
        from providers.memory import MemoryProvider

        self.inner = MemoryProvider(kinds)
        self.kinds = self.inner.kinds
        self.immutable_fields = self.inner.immutable_fields
        self.latency = latency
        self.calls: Counter[str] = Counter()

    def api_calls(self):
        return dict(self.calls)

    def observe(self, kind):
        found = self.inner.observe(kind)
        pages = max(1, math.ceil(len(found) / PAGE))
        for _ in range(pages):  # sequential, as a paged list is
            self.calls[f"modeled.{kind}.list"] += 1
            time.sleep(self.latency)
        return found

    def get(self, kind, name):
        self.calls[f"modeled.{kind}.get"] += 1
        time.sleep(self.latency)
        return self.inner.objects.get(f"{kind}.{name}")

    def read(self, kind, names):
        for _ in names:  # a get per name, one after the other
            self.calls[f"modeled.{kind}.get"] += 1
            time.sleep(self.latency)
        return self.inner.read(kind, names)

    def create(self, r):
        self.inner.create(r)

    def update(self, r, fields):
        self.inner.update(r, fields)

    def delete(self, r):
        self.inner.delete(r)


def clients(project: str, grpc_address: str, http_url: str) -> dict:
    """The official clients, pointed at the fake (anonymous credentials, insecure gRPC channel)."""
    import grpc
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery, pubsub_v1, storage
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    options = [("grpc.max_receive_message_length", 256 << 20)]
    return {
        "publisher": pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=grpc.insecure_channel(grpc_address, options=options))),
        "subscriber": pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(grpc_address, options=options))),
        "storage": storage.Client(project=project, credentials=AnonymousCredentials(),
                                  client_options={"api_endpoint": http_url}),
        "bigquery": bigquery.Client(project=project, credentials=AnonymousCredentials(),
                                    client_options=ClientOptions(api_endpoint=http_url)),
    }


def providers_for(project: str, grpc_address: str, http_url: str, latency: float, desired) -> tuple[list, LatencyMemoryProvider]:
    from providers.bigquery import BigQueryProvider
    from providers.pubsub import PubSubProvider
    from providers.storage import StorageProvider
    from reconciler.resources import Kind

    c = clients(project, grpc_address, http_url)
    real = [StorageProvider(project, client=c["storage"]),
            BigQueryProvider(project, "europe-west1", client=c["bigquery"]),
            PubSubProvider(project, publisher=c["publisher"], subscriber=c["subscriber"], monitoring=None)]
    modeled = LatencyMemoryProvider([k for k in Kind if k not in _fake_kinds()], latency)
    from providers.memory import _live

    for r in desired:  # seeded as applied (a dict insert: no cost to the measured process's clock)
        if r.kind not in _fake_kinds():
            modeled.inner.objects[r.address] = _live(r)
    return [*real, modeled], modeled


def fake_calls(http_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{http_url}/_fake/calls") as reply:
        return json.load(reply)


def set_latency(http_url: str, seconds: float) -> None:
    urllib.request.urlopen(f"{http_url}/_fake/latency?seconds={seconds}").read()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def seed(args) -> None:
    """Apply the generated platform to the fake (no latency): the live state of a converged platform."""
    from providers import errors
    from reconciler.compile import compile_resources
    from reconciler.engine import Engine, plan_options
    from reconciler.load import load_repo

    # The fake has no quota: seeding is not held to headwater's per-API request budgets (the
    # measured runs are: they keep the defaults, as on GCP).
    errors.DEFAULT_RATE = "1000000/second"
    errors.configure(rates={service: "1000000/second" for service in errors.DEFAULT_RATES})
    state = load_repo(args.repo)
    desired = compile_resources(state)
    providers, _ = providers_for(args.project, args.grpc, args.http, 0.0, desired)
    engine = Engine(providers)
    if args.seed_with_apply:  # the whole path: plan, then apply (slow: ~10 resources/s at 1,000 sources)
        plan = engine.plan(state, plan_options(state))
        result = engine.apply(plan, max_workers=16)
        assert result.ok, result.summary()
        return
    # Bulk: buckets and datasets are created through the providers (a few); topics, subscriptions and
    # tables are built by the providers' own create code (a capturing client records the request it
    # would send) and handed to the fake in bulk. The measured no-op plan proves the result converged.
    import base64

    from providers.bigquery import BigQueryProvider
    from providers.pubsub import PubSubProvider
    from reconciler.resources import Kind

    class Capture:
        def __init__(self) -> None:
            self.topics, self.subscriptions, self.tables = [], [], []

        def create_topic(self, request, **_):
            self.topics.append(base64.b64encode(type(request).serialize(request)).decode())

        def create_subscription(self, request, **_):
            self.subscriptions.append(base64.b64encode(type(request).serialize(request)).decode())

        def create_table(self, table, **_):
            self.tables.append(table.to_api_repr())

    capture = Capture()
    pubsub = PubSubProvider(args.project, publisher=capture, subscriber=capture)
    bq = BigQueryProvider(args.project, "europe-west1", client=capture)
    direct = [r for r in desired if r.kind in (Kind.STORAGE_BUCKET, Kind.BIGQUERY_DATASET)]
    for resource in direct:
        engine.providers[resource.kind].create(resource)
    for resource in desired:
        if resource.kind in (Kind.PUBSUB_TOPIC, Kind.PUBSUB_SUBSCRIPTION):
            pubsub.create(resource)
        elif resource.kind == Kind.BIGQUERY_TABLE:
            bq.create(resource)
    for start in range(0, max(len(capture.topics), len(capture.subscriptions), len(capture.tables)), 2000):
        body = json.dumps({"topics": capture.topics[start:start + 2000],
                           "subscriptions": capture.subscriptions[start:start + 2000],
                           "tables": capture.tables[start:start + 2000]}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{args.http}/_fake/seed", data=body, method="POST")).read()


def edit(repo: Path, old: str, new: str) -> None:
    """A one-source commit: source_0000's Silver table clustered differently."""
    path = repo / "connectors" / "source_0000.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def commit_full(engine, repo: Path, old: str, new: str, http_url: str, modeled) -> dict:
    """The full path: load + full plan, apply, full plan again (the daemon's check after an apply)."""
    from reconciler.engine import plan_options
    from reconciler.load import load_repo

    fake_calls(http_url)
    before_modeled = Counter(modeled.calls)
    started = time.perf_counter()
    edit(repo, old, new)
    state = load_repo(repo)
    plan = engine.plan(state, plan_options(state))
    planned = time.perf_counter()
    result = engine.apply(plan, max_workers=8)
    assert result.ok, result.summary()
    after = engine.plan(state, plan_options(state))
    ended = time.perf_counter()
    assert not after.has_changes, "the commit did not converge"
    return {
        "mode": "full", "plan_seconds": round(planned - started, 3), "converged_seconds": round(ended - started, 3),
        "changes": sorted(f"{c.action} {c.address}" for c in plan.actionable),
        "api_calls": dict(sorted((Counter(fake_calls(http_url)) + (Counter(modeled.calls) - before_modeled)).items())),
    }


def naive(c: dict, project: str, desired, modeled: LatencyMemoryProvider, limit: int) -> dict:
    """One get per declared resource (16 at a time), through the same clients."""
    from reconciler.resources import Kind

    getters = {
        Kind.PUBSUB_TOPIC: lambda r: c["publisher"].get_topic(topic=f"projects/{project}/topics/{r.name}"),
        Kind.PUBSUB_SUBSCRIPTION: lambda r: c["subscriber"].get_subscription(
            subscription=f"projects/{project}/subscriptions/{r.name}"),
        Kind.STORAGE_BUCKET: lambda r: c["storage"].get_bucket(r.name),
        Kind.BIGQUERY_DATASET: lambda r: c["bigquery"].get_dataset(f"{project}.{r.name}"),
        Kind.BIGQUERY_TABLE: lambda r: c["bigquery"].get_table(f"{project}.{r.name}"),
    }
    population = [r for r in desired if not r.external]
    sample = population
    if len(population) > limit:  # stratified by kind, so each kind keeps its share
        rng = random.Random(14)
        by_kind: dict = {}
        for r in population:
            by_kind.setdefault(r.kind, []).append(r)
        sample = [r for group in by_kind.values() for r in rng.sample(group, max(1, round(len(group) * limit / len(population))))]

    def get(r):
        getter = getters.get(r.kind)
        if getter is None:
            modeled.get(r.kind, r.name)
        else:
            getter(r)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=NAIVE_WORKERS) as pool:
        list(pool.map(get, sample))
    seconds = time.perf_counter() - started
    return {
        "naive_seconds": round(seconds * len(population) / len(sample), 3),
        "naive_extrapolated": len(sample) < len(population),
        "naive_sampled_resources": len(sample),
        "naive_api_calls_total": len(population),
        "naive_api_calls": dict(sorted(Counter(f"get.{r.kind}" for r in population).items())),
    }


# Installed in the dev environment for Beam (deploy/dev.lock) but not in the daemon's image
# (deploy/requirements.lock): google-cloud-bigquery imports pyarrow and deepdiff numpy when they
# are there (~36 MiB of RSS), which the daemon on Cloud Run never carries.
NOT_IN_DAEMON_IMAGE = ("pyarrow", "numpy", "pandas", "db_dtypes")


class _AsInTheDaemonImage:
    """An import hook: the modules the daemon's image does not install cannot be imported."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in NOT_IN_DAEMON_IMAGE:
            raise ImportError(f"{name} is not in deploy/requirements.lock (the daemon's image)")
        return None


def as_in_the_daemon_image() -> None:
    lock = (ROOT / "deploy" / "requirements.lock").read_text().lower()
    pinned = [m for m in NOT_IN_DAEMON_IMAGE if f"\n{m.replace('_', '-')}==" in lock]
    assert not pinned, f"the daemon's image installs {pinned}: update NOT_IN_DAEMON_IMAGE"
    sys.meta_path.insert(0, _AsInTheDaemonImage())


def measure(args) -> dict:
    if not args.dev_packages:
        as_in_the_daemon_image()
    imported_rss = rss_mib()
    from reconciler.compile import compile_resources
    from reconciler.engine import Engine, plan_options
    from reconciler.load import load_repo
    from reconciler.plan import Action

    repo = Path(args.repo)
    set_latency(args.http, args.latency)
    state = load_repo(repo)
    desired = compile_resources(state)
    providers, modeled = providers_for(args.project, args.grpc, args.http, args.latency, desired)
    engine = Engine(providers)
    fake_calls(args.http)  # reset
    plan = engine.plan(state, plan_options(state))  # warm-up (clients' channels and imports)
    assert not plan.has_changes, [c.address for c in plan.changes if c.action != Action.NOOP][:5]
    fake_calls(args.http)
    modeled.calls.clear()

    loads, plans, totals = [], [], []
    calls: Counter = Counter()
    for _ in range(args.repeat):
        before_modeled = Counter(modeled.calls)
        started = time.perf_counter()
        state = load_repo(repo)
        loaded = time.perf_counter()
        plan = engine.plan(state, plan_options(state))
        ended = time.perf_counter()
        assert not plan.has_changes, "the benchmark expects a no-op plan"
        loads.append(loaded - started)
        plans.append(ended - loaded)
        totals.append(ended - started)
        calls = Counter(fake_calls(args.http)) + (Counter(modeled.calls) - before_modeled)
    started = time.perf_counter()
    engine.observe()
    observe_seconds = time.perf_counter() - started
    fake_calls(args.http)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # One-source commits, converged: load, plan, apply, and the check after the apply. First the
    # full path (today's daemon sync: a full plan before and after), then the incremental one
    # (reconciler.incremental), each on a one-source change of its own, in the same process.
    commits = {}
    previous = load_repo(repo)
    commits["full"] = commit_full(engine, repo, "cluster_by: [kind]", "cluster_by: [id]", args.http, modeled)
    try:
        from reconciler.incremental import ObservedCache, plan_change, recheck
    except ImportError:
        pass
    else:
        cache = ObservedCache()
        previous = load_repo(repo)
        warm = plan_change(engine, previous, cache=cache, full=True)  # what the drift pass leaves
        assert not warm.plan.has_changes
        desired_index = warm.index
        # Two commits: the first after a full load makes what the git-mode load keeps for the next
        # (its cross-file index, once per process); the second is a commit as the daemon makes
        # them from then on. Both are reported; "incremental" is the second.
        for name, (old, new) in (("incremental_first", ("cluster_by: [id]", "cluster_by: [kind]")),
                                 ("incremental", ("cluster_by: [kind]", "cluster_by: [id]"))):
            fake_calls(args.http)
            before_modeled = Counter(modeled.calls)
            started = time.perf_counter()
            edit(repo, old, new)
            # The daemon's load: only the files git names as changed are read again.
            state = load_repo(repo, previous=previous, changed=["connectors/source_0000.yaml"])
            scoped = plan_change(engine, state, cache=cache, previous=previous, previous_desired=desired_index)
            planned = time.perf_counter()
            result = engine.apply(scoped.plan, max_workers=8)
            assert result.ok, result.summary()
            after = recheck(engine, state, scoped.plan, cache=cache, desired=scoped.index)
            ended = time.perf_counter()
            assert not after.plan.has_changes, "the commit did not converge"
            commits[name] = {
                "mode": scoped.mode, "reason": scoped.reason, "read": sorted(scoped.read),
                "plan_seconds": round(planned - started, 3), "converged_seconds": round(ended - started, 3),
                "changes": sorted(f"{c.action} {c.address}" for c in scoped.plan.actionable),
                "api_calls": dict(sorted((Counter(fake_calls(args.http))
                                          + (Counter(modeled.calls) - before_modeled)).items())),
            }
            previous, desired_index = state, scoped.index

    c = clients(args.project, args.grpc, args.http)
    baseline = naive(c, args.project, desired, modeled, args.naive_limit)
    fake_calls(args.http)
    return {
        "sources": len(state.sources),
        "resources": len(desired),
        "latency_s": args.latency,
        "noop_total_seconds_median": round(statistics.median(totals), 3),
        "noop_load_seconds_median": round(statistics.median(loads), 3),
        "noop_plan_seconds_median": round(statistics.median(plans), 3),
        # Every round, for spread: [load seconds, plan seconds].
        "noop_rounds": [[round(a, 3), round(b, 3)] for a, b in zip(loads, plans)],
        "observe_seconds": round(observe_seconds, 3),
        "noop_api_calls": dict(sorted(calls.items())),
        "noop_api_calls_total": sum(calls.values()),
        "commit": commits,
        "rss_after_imports_mib": round(imported_rss, 1),
        "peak_rss_mib": round(peak_rss, 1),
        "packages": "dev environment" if args.dev_packages else "daemon image (no pyarrow, numpy)",
        **baseline,
    }


# --- the driver -------------------------------------------------------------------------------


def machine() -> str:
    try:
        fields = dict(line.split(":", 1) for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines() if ":" in line)
        cpu = fields.get("Model name", "").strip() or platform.machine()
    except (OSError, subprocess.CalledProcessError):
        cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}, "
            f"load average {load:.1f} at start")


def revision() -> str:
    """The commit measured, and the reconciler files changed in the work tree beside it."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.rstrip()

    dirty = git("status", "--porcelain", "--", "reconciler", "providers").splitlines()
    return git("rev-parse", "--short", "HEAD") + (f" + work tree changes in {', '.join(l[3:] for l in dirty)}"
                                                  if dirty else "")


def run_size(sources: int, args) -> dict:
    from plan_scaling import generate_repo

    python = sys.executable
    me = str(Path(__file__).resolve())
    project = f"hw-bench-{sources}"
    fake = subprocess.Popen([python, str(ROOT / "bench" / "fake_gcp.py"), "0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        grpc_address, http_url = fake.stdout.readline().split()
        with tempfile.TemporaryDirectory() as tmp:
            repo = generate_repo(Path(tmp) / "repo", sources, project, f"hwb{sources}")
            common = ["--repo", str(repo), "--project", project, "--grpc", grpc_address, "--http", http_url]
            started = time.perf_counter()
            subprocess.run([python, me, "--seed", *common, *(["--seed-with-apply"] if args.seed_with_apply else [])],
                           check=True)
            seed_seconds = time.perf_counter() - started
            out = subprocess.run([python, me, "--measure", *common, "--latency", str(args.latency),
                                  "--repeat", str(args.repeat), "--naive-limit", str(args.naive_limit),
                                  *(["--dev-packages"] if args.dev_packages else [])],
                                 check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["seed_seconds"] = round(seed_seconds, 1)
            return row
    finally:
        fake.stdin.close()
        fake.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per API call (default 0.1)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive-limit", type=int, default=12000,
                        help="above this many resources the naive baseline gets a sample and scales up")
    parser.add_argument("--json", type=Path, help="also write the results here")
    # Internal: the seeding and measuring processes.
    parser.add_argument("--seed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed-with-apply", action="store_true",
                        help="seed the fake by headwater's plan and apply (slow) instead of in bulk")
    parser.add_argument("--dev-packages", action="store_true",
                        help="measure with every package of the dev environment importable (default: as in the "
                             "daemon's image, without pyarrow and numpy, which the clients import when present)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    for name in ("--repo", "--project", "--grpc", "--http"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:
        seed(args)
        return 0
    if args.measure:
        print(json.dumps(measure(args)))
        return 0

    where = machine()
    code = revision()
    rows = []
    for n in args.sizes:
        rows.append(run_size(n, args))
        print(f"  {n} sources done: {json.dumps(rows[-1])}", file=sys.stderr)
    print(f"Machine: {where}; latency {args.latency * 1000:.0f} ms per call; code {code}")
    print(f"{'sources':>7} {'resources':>9} {'no-op s':>8} {'(load)':>7} {'calls':>6} {'commit full s':>13} "
          f"{'commit incr s':>13} {'(first)':>8} {'peak RSS':>8} {'naive s':>8} {'naive calls':>11} {'naive/no-op':>11}")
    for row in rows:
        ratio = row["naive_seconds"] / row["noop_total_seconds_median"]
        full = row["commit"]["full"]["converged_seconds"]
        incremental = row["commit"].get("incremental", {}).get("converged_seconds", float("nan"))
        first = row["commit"].get("incremental_first", {}).get("converged_seconds", float("nan"))
        print(f"{row['sources']:>7} {row['resources']:>9} {row['noop_total_seconds_median']:>8.3f} "
              f"{row['noop_load_seconds_median']:>7.3f} {row['noop_api_calls_total']:>6} {full:>13.3f} {incremental:>13.3f} "
              f"{first:>8.3f} "
              f"{row['peak_rss_mib']:>7.0f}M {row['naive_seconds']:>8.1f}{'*' if row['naive_extrapolated'] else ' '}"
              f"{row['naive_api_calls_total']:>11} {ratio:>10.1f}x")
    for row in rows:
        print(f"  N={row['sources']}: no-op plan API calls: {row['noop_api_calls']}")
        for name, commit in row["commit"].items():
            print(f"  N={row['sources']}: commit ({name}, mode {commit['mode']}): plan {commit['plan_seconds']} s, "
                  f"converged {commit['converged_seconds']} s, changes {commit['changes']}, calls {commit['api_calls']}")
    if any(row["naive_extrapolated"] for row in rows):
        print("  * naive time measured on a stratified sample and scaled to every resource")
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "code": code, "latency_s": args.latency, "results": rows},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
