"""Benchmark: the daemon's sync of a one-source commit at 10 / 1,000 / 10,000 sources.

`plan_scale.py` times the steps of a commit (load, plan, apply, the check after it) as library
calls. This runs the product: a `reconciler.daemon.service.Daemon` in this process, polling a
local git remote, with every kind on the in-memory provider behind 100 ms a call
(`plan_scale.LatencyMemoryProvider`: a list per 1,000 resources of a kind, a get per name -
MODELED, not the real providers; `plan_scale.py` runs the real Pub/Sub, Storage and BigQuery
provider code). Per size:

1. a generated platform (`plan_scaling.generate_repo`, event-streaming sources) is committed and
   pushed; the provider holds exactly its compiled resources; the daemon starts and its first
   sync (a full plan, nothing to apply) converges;
2. one commit (``first_commit``, reported apart: the first after the start), then ``--repeat``
   times: one source's Silver clustering changes in one commit, pushed; timed from
   the push to the daemon logging that revision converged (``wall``), and the
   daemon's own ``duration_seconds`` of that sync (from the poll that saw it: fetch, checkout,
   load, plan, apply, the check after it, status); the sync's plan mode and reused sources
   (``sync.loaded``) from its log.

    .venv/bin/python bench/daemon_commit.py [--sizes 10 1000 10000] [--repeat 3] [--json out.json]

The poll interval is 0.1 s, so ``wall`` includes up to 0.1 s of waiting for the next poll.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class Logs:
    """The daemon's JSON log lines, kept in memory, each parsed once: the waiting loop below asks
    every 5 ms, and parsing every line each time would take the interpreter from the daemon being
    measured (more so the more lines a large platform's first sync wrote)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._by_event: dict[str, list[dict]] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if not line.strip():
                continue
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                with self._lock:
                    self._by_event.setdefault(event.get("event"), []).append(event)
        return len(text)

    def flush(self) -> None:
        pass

    def events(self, name: str) -> list[dict]:
        with self._lock:
            return list(self._by_event.get(name, ()))


def wait_converged(logs: Logs, revision: str, timeout: float) -> dict:
    """The daemon's ``sync.finished`` event of ``revision`` (from its log, in memory: polling its
    HTTP status instead would load the process being measured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [e for e in logs.events("sync.finished") if e.get("revision") == revision]
        if done:
            if done[-1]["result"] != "converged":
                raise SystemExit(f"sync of {revision[:8]} ended {done[-1]['result']}: {done[-1].get('error')}")
            return done[-1]
        time.sleep(0.005)
    raise SystemExit(f"revision {revision[:8]} did not converge within {timeout:.0f} s")


def modeled_provider(latency: float):
    """`plan_scale.LatencyMemoryProvider` with a call's latency on changes too (one call each)."""
    from plan_scale import LatencyMemoryProvider

    from reconciler.resources import Kind

    class Provider(LatencyMemoryProvider):
        def _call(self, what: str) -> None:
            self.calls[what] += 1
            time.sleep(self.latency)

        def create(self, r):
            self._call(f"modeled.{r.kind}.create")
            super().create(r)

        def update(self, r, fields):
            self._call(f"modeled.{r.kind}.update")
            super().update(r, fields)

        def delete(self, r):
            self._call(f"modeled.{r.kind}.delete")
            super().delete(r)

    return Provider(tuple(Kind), latency)


def run_size(sources: int, args) -> dict:
    import git
    from plan_scaling import generate_repo

    from reconciler.compile import compile_resources
    from reconciler.daemon.service import Daemon
    from reconciler.daemon.settings import Settings
    from reconciler.load import load_repo

    tmp = Path(tempfile.mkdtemp(prefix=f"hw-daemon-bench-{sources}-"))
    work = generate_repo(tmp / "work", sources, f"hw-daemon-bench-{sources}", f"hwd{sources}")
    bare = tmp / "remote.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    repo = git.Repo.init(work, initial_branch="main")
    with repo.config_writer() as config:
        config.set_value("user", "name", "bench")
        config.set_value("user", "email", "bench@example.com")
    repo.git.add("-A")
    repo.index.commit("platform")
    repo.create_remote("origin", str(bare)).push("main")

    provider = modeled_provider(args.latency)
    for resource in compile_resources(load_repo(work)):
        provider.inner.create(resource)
    logs = Logs()
    settings = Settings(repo=str(bare), poll_interval=0.1, drift_interval=3600.0, drift_jitter=0.0,
                        listen="127.0.0.1:0", cache_dir=tmp / "cache")
    daemon = Daemon(settings, log_stream=logs, providers_factory=lambda platform: [provider])
    started = time.perf_counter()
    daemon.start()
    try:
        first = wait_converged(logs, repo.head.commit.hexsha, timeout=600)
        first_wall = time.perf_counter() - started
        commits = []
        path = work / "connectors" / "source_0000.yaml"
        for i in range(args.repeat + 1):
            old, new = ("[kind]", "[id]") if i % 2 == 0 else ("[id]", "[kind]")
            path.write_text(path.read_text().replace(f"cluster_by: {old}", f"cluster_by: {new}"))
            repo.index.add([str(path)])
            sha = repo.index.commit(f"source_0000: cluster by {new}").hexsha
            pushed = time.perf_counter()
            repo.remote("origin").push("main")
            sync = wait_converged(logs, sha, timeout=600)
            wall = time.perf_counter() - pushed
            plan = [e for e in logs.events("plan.observed")][-1]
            loaded = [e for e in logs.events("sync.loaded") if e.get("revision") == sha][-1]
            commits.append({"wall_seconds": round(wall, 3), "sync_seconds": sync["duration_seconds"],
                            "mode": plan["mode"], "read": plan["read"], "reused_sources": loaded["reused_sources"],
                            "applied": sync["apply"]})
        first_commit, commits = commits[0], commits[1:]  # the first after the start, apart
    finally:
        daemon.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "sources": sources,
        "first_sync_seconds": first["duration_seconds"], "first_sync_wall_seconds": round(first_wall, 1),
        "commit_wall_seconds_median": statistics.median(c["wall_seconds"] for c in commits),
        "commit_sync_seconds_median": statistics.median(c["sync_seconds"] for c in commits),
        "commits": commits, "first_commit": first_commit,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per API call (default 0.1)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from plan_scale import machine

    where = machine()
    rows = []
    for n in args.sizes:
        rows.append(run_size(n, args))
        print(f"  {n} sources: {json.dumps(rows[-1])}", file=sys.stderr)
    print(f"Machine: {where}; latency {args.latency * 1000:.0f} ms per call (modeled provider)")
    print(f"{'sources':>7} {'first sync s':>12} {'commit wall s':>13} {'commit sync s':>13}  modes")
    for row in rows:
        print(f"{row['sources']:>7} {row['first_sync_seconds']:>12.3f} {row['commit_wall_seconds_median']:>13.3f} "
              f"{row['commit_sync_seconds_median']:>13.3f}  {[c['mode'] for c in row['commits']]}")
    if args.json:
        args.json.write_text(json.dumps({"machine": where, "latency_s": args.latency, "results": rows}, indent=2)
                             + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HEADWATER_LOG_LEVEL", "INFO")
    sys.exit(main())
