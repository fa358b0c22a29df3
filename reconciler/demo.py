"""The demo's data: sample files and events through the local jobs, counted at the end.

After ``headwater demo`` has applied the example platform (its Dataflow jobs running on the
local runner against the emulators), `move_sample_data` makes the platform do its job with the
data in ``<repo>/sample-data/``:

* ``reference/*.json`` - tables the gold jobs join with but no connector owns (``gold.customers``):
  created and filled first;
* ``<source_id>/*`` of a batch source - dropped into its landing prefix (gzipped when the
  connector says ``compression: gzip``), then one run of its batch job is asked for (the job's
  schedule would otherwise run it at the next cron tick); the run moves the files on to the
  Bronze bucket once ingested;
* ``<source_id>/*`` of a streaming source - each line published as one message to its topic,
  where the running streaming job picks it up;
* then a run of every gold job, once Silver has settled.

The sample data holds bad and duplicate records on purpose. ``expected.json`` says what should
come out per source (Silver rows, dead letters, Gold rows; records = Silver + duplicates + dead
letters); waiting stops when the counts match it, or after a bounded time. Dead letters are read
from the ``<source_id>-dlq-hold`` subscriptions, with the reason each carries as an attribute.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.compile import compile_resources, topic_id
from reconciler.load import DesiredState
from reconciler.resources import Kind, Resource

SAMPLE_DIR = "sample-data"
STREAM_WAIT_S = 75.0  # how long streaming jobs get to process what was published
RUN_WAIT_S = 90.0  # how long one batch run may take
SETTLE_S = 8.0  # without expectations: counts unchanged this long means done


@dataclass
class SourceData:
    """What was sent for one source, and what came out."""

    source_id: str
    sent: int = 0
    silver: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    gold: dict[str, int] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)

    def matches(self) -> bool:
        exp = self.expected
        return (not exp or (self.silver == exp["silver"] and sum(self.dead_letters.values()) == exp["dead_letters"]
                            and all(self.gold.get(t) == n for t, n in exp.get("gold", {}).items())))


@dataclass(frozen=True)
class _Jobs:
    ingest: Resource
    gold: tuple[Resource, ...]


def move_sample_data(state: DesiredState, runner: Any, say: Callable[[str], None]) -> list[SourceData]:
    """Send the sample data through the running local jobs; the counts per source.

    ``runner`` is the `providers.localrunner.LocalRunnerProvider` the jobs run on.
    """
    from providers import bigquery_data, pubsub_data, storage_data

    root = Path(state.root) / SAMPLE_DIR
    project = state.platform.project
    expected = json.loads((root / "expected.json").read_text()) if (root / "expected.json").exists() else {}
    jobs = _jobs_by_source(compile_resources(state))
    connectors = {s.source_id: s.connector for s in state.sources}
    results = {sid: SourceData(sid, expected=expected.get(sid, {})) for sid in jobs if (root / sid).is_dir()}

    for path in sorted((root / "reference").glob("*.json")):
        ref = json.loads(path.read_text())
        bigquery_data.ensure_table_with_rows(project, f"{project}.{ref['table']}", ref["schema"], ref["rows"])
        say(f"  reference table {ref['table']}: {len(ref['rows'])} rows")

    streaming = []
    for sid, data in results.items():
        job = jobs[sid].ingest
        files = sorted(p for p in (root / sid).iterdir() if p.is_file())
        if job.spec["streaming"]:
            payloads = [line.encode() for p in files for line in p.read_text().splitlines() if line.strip()]
            pubsub_data.publish(project, topic_id(connectors[sid]), payloads)
            data.sent = len(payloads)
            say(f"  {sid}: published {len(payloads)} events to topic {topic_id(connectors[sid])}")
            streaming.append(data)
            continue
        # A batch job runs once when started: let that (empty) run end before files arrive, so
        # each file is read by exactly one run.
        _wait_until_idle(runner, job.name)
        prefix = job.spec["parameters"]["input_pattern"]
        gz = job.spec["pipeline"].get("input", {}).get("compression") == "gzip"
        for p in files:
            body = p.read_bytes()
            data.sent += sum(1 for line in body.splitlines() if line.strip())
            name = p.stem + ".json" + (".gz" if gz else "")
            storage_data.upload(project, prefix.rstrip("/") + "/" + name, gzip.compress(body) if gz else body)
        say(f"  {sid}: dropped {len(files)} files ({data.sent} records) in {prefix}; running {job.name}")
        status = runner.wait_for_run(job.name, runner.run_now(job.name), RUN_WAIT_S)
        if status["last_exit_code"] != 0:
            say(f"  {sid}: run of {job.name} ended with exit code {status['last_exit_code']} (log: "
                f"{runner.record(job.name).log})")

    def count(data: SourceData) -> None:
        data.silver = bigquery_data.count_rows(project, jobs[data.source_id].ingest.spec["pipeline"]["silver"]["table"])
        for message in pubsub_data.pull_available(project, f"{data.source_id}-dlq-hold"):
            data.dead_letters[message.attributes.get("reason", "(no reason)")] += 1

    for data in results.values():
        if data not in streaming:
            count(data)
    if streaming:
        say(f"  waiting for the streaming jobs (at most {STREAM_WAIT_S:.0f} s)...")
        _wait_for_streams(streaming, count)

    for sid, data in results.items():
        for job in jobs[sid].gold:
            _wait_until_idle(runner, job.name)
            status = runner.wait_for_run(job.name, runner.run_now(job.name), RUN_WAIT_S)
            table = job.spec["pipeline"]["gold"]["table"]
            data.gold[table.rsplit(".", 1)[-1]] = bigquery_data.count_rows(project, table)
            if status["last_exit_code"] != 0:
                say(f"  {job.name}: run ended with exit code {status['last_exit_code']} (log: "
                    f"{runner.record(job.name).log})")
    return list(results.values())


def report(results: list[SourceData]) -> list[str]:
    """The counts as printed lines, one per source."""
    lines = []
    for d in results:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(d.dead_letters.items())) or "none"
        gold = ", ".join(f"{table} {n} rows" for table, n in sorted(d.gold.items())) or "none"
        lines.append(f"{d.source_id}: {d.sent} records sent -> Silver {d.silver} rows, "
                     f"dead letters {sum(d.dead_letters.values())} ({reasons}), Gold: {gold}")
        if d.expected and not d.matches():
            exp = d.expected
            lines.append(f"  expected Silver {exp['silver']}, dead letters {exp['dead_letters']}, Gold {exp.get('gold')}")
    return lines


def _jobs_by_source(resources: list[Resource]) -> dict[str, _Jobs]:
    ingest: dict[str, Resource] = {}
    gold: dict[str, list[Resource]] = {}
    for r in resources:
        if r.kind != Kind.DATAFLOW_JOB:
            continue
        if r.spec["template"] == "bigquery_to_bigquery":
            gold.setdefault(r.source_id, []).append(r)
        else:
            ingest[r.source_id] = r
    return {sid: _Jobs(job, tuple(gold.get(sid, ()))) for sid, job in ingest.items()}


def _wait_until_idle(runner: Any, name: str) -> None:
    """Until a batch job's scheduler is up and no run is in progress."""
    deadline = time.monotonic() + RUN_WAIT_S
    while time.monotonic() < deadline:
        status = runner.status(name)
        if status["runs"] and not status["running"]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"local job {name} did not become idle within {RUN_WAIT_S:.0f} s")


def _wait_for_streams(streaming: list[SourceData], count: Callable[[SourceData], None]) -> None:
    """Count until each streaming source matches its expectations (or settles), within the bound."""
    deadline = time.monotonic() + STREAM_WAIT_S
    last: dict[str, tuple[int, int]] = {}
    changed = time.monotonic()
    while True:
        for data in streaming:
            count(data)
        now_counts = {d.source_id: (d.silver, sum(d.dead_letters.values())) for d in streaming}
        if now_counts != last:
            last, changed = now_counts, time.monotonic()
        done = all(_ingested(d) for d in streaming)
        settled = not any(d.expected for d in streaming) and any(v != (0, 0) for v in last.values()) \
            and time.monotonic() - changed > SETTLE_S
        if done or settled or time.monotonic() > deadline:
            return
        time.sleep(1.0)


def _ingested(data: SourceData) -> bool:
    exp = data.expected
    return bool(exp) and data.silver >= exp["silver"] and sum(data.dead_letters.values()) >= exp["dead_letters"]
