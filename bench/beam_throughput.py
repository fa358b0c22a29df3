"""Benchmark: throughput of the validate / data-quality / dedup path: Beam (per-record and
columnar), plain Python, and DuckDB.

Generates N records (default 1,000,000; 5% injected bad records of every reason, 5%
duplicates - ``beam.common.synthetic``) as one JSON-lines file, then processes that file twice
in the same run, with the same rules (the synthetic spec: 7 fields, 6 data-quality rules,
dedup on ``id`` + ``timestamp``):

* **beam** - the shared ``ValidateAndDedup`` transform, fed by the gcs_to_bigquery file
  reader, on the local ``FnApiRunner`` (in-process, one worker): batched DoFns, the dedup
  shuffle, counters. Timed from pipeline construction to the end of the run.
* **columnar** - the columnar batch path (``beam.common.columnar``: file chunks, Arrow
  screen/parse/clearing, the per-record checker for everything else, Arrow dedup shuffle) fed
  by ``ReadChunks``, on the same runner: what batch ``gcs_to_bigquery`` runs on JSON lines.
  Its valid rows end as Arrow tables (``ROWS_AS_ARROW``), what its Silver sink
  (``beam.common.arrow_sink.WriteArrowRows``) takes.
* **columnar_dicts** - the same, its valid rows ending as dicts (``ROWS_AS_DICTS``, what
  ``WriteRows`` takes): the columnar path as it was before its Arrow-native Silver sink.
* **duckdb** - the same checks as one DuckDB SQL statement, one thread (``SET threads=1``):
  JSON parse, the reason of each record (first failure, in the checker's order), and dedup on
  the canonical key (``DISTINCT ON``), ending in the kept rows as an Arrow table. Exact accounting on this data;
  a baseline, not a second definition of the rules.
* **plain** - a single-process Python loop over the same file calling the same record
  checker (``beam.common.checker``: validation, rules and dedup key in one generated function),
  with a dict for dedup: what the rules cost without any framework. The ratio is therefore Beam's overhead on identical per-record work.

Every path ends where its Silver sink begins: the sinks' own work is measured apart, after the
rounds (**sink**: CPU per row of building the insertAll requests of the kept rows, HTTP
excluded - ``WriteRows`` from dicts, as the per-record path writes, and ``WriteArrowRows`` from
the Arrow table, as ``gcs_to_bigquery``'s columnar path writes).

All must agree on every count (valid, duplicates, invalid by reason), or the run fails. The
paths run alternating within each round (``--repeat``); each path's best round counts.
records/s is wall-clock; records/s per core divides by the CPU seconds the process used (on a
shared machine the wall clock also counts time spent waiting for a core). Every path runs in this
one process, and the untimed warm-up runs each first: what a path's DoFns set up for their worker
process (``gc.freeze``, glibc's ``keep_freed_memory`` - both Beam paths set both) holds for every
measured round of every path.

    .venv/bin/python bench/beam_throughput.py [--records 1000000] [--repeat 3] [--json out.json]
        [--paths plain,beam,columnar,columnar_dicts,duckdb]

**Streaming** (``--streaming N``, instead of the above): the streaming path's ceiling on the
local runner. Starts a Pub/Sub emulator, publishes N generated records to a topic (a backlog,
published before the job starts), and runs ``pubsub_to_bigquery``'s read and transform -
``ReadFromPubSub`` -> ``to_raw`` -> ``ValidateAndDedup(streaming=True)`` (per-record: the
stateful dedup) - on ``BundleBasedDirectRunner`` in a child process, the sinks replaced by a
counter of outputs (no BigQuery). Reports records/s from the first output to the last (every
record ends as a Silver row or a dead letter; duplicates as neither), the time to the first
output, and the child's CPU seconds.

    .venv/bin/python bench/beam_throughput.py --streaming 20000 [--json bench/results/beam_streaming.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Everything is imported before any timing starts (importing apache_beam takes ~1.5 s).
import apache_beam as beam  # noqa: E402
import pyarrow as pa  # noqa: E402
from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # noqa: E402

from beam.common import files  # noqa: E402
from beam.common.checker import RecordChecker  # noqa: E402
from beam.common.columnar import ROWS_AS_ARROW, ROWS_AS_DICTS, ColumnarValidateAndDedup, _lines  # noqa: E402
from beam.common.runner import counters  # noqa: E402
from beam.common.spec import PipelineSpec, parse_spec  # noqa: E402
from beam.common.synthetic import SPEC, Expected, generate  # noqa: E402
from beam.common.transforms import ValidateAndDedup  # noqa: E402
from beam.common.validation import Invalid, parse_json  # noqa: E402
from beam.gcs_to_bigquery.readers import ReadChunks, ReadRecords  # noqa: E402

try:
    import duckdb  # noqa: E402 - the baseline only (not in the beam extra)
except ImportError:  # pragma: no cover
    duckdb = None


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "apache_beam": beam.__version__,
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


def run_plain(path: Path, spec: PipelineSpec) -> Counter[str]:
    """The same rules in a plain loop: parse, validate, check, keep the first row per key."""
    check = RecordChecker(spec.fields, spec.validation, spec.quality_rules, spec.dedup.key).check  # type: ignore[union-attr]
    kept: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            counts["records_in"] += 1
            try:
                # origin, as the pipeline gives it: Silver's _message_id column
                row, k = check(parse_json(line), f"{path}#{n}")
            except Invalid as bad:
                counts[f"invalid_{bad.reason}"] += 1
                continue
            if k in kept:
                counts["duplicates"] += 1
            else:
                kept[k] = row
    counts["valid"] = len(kept)
    return counts


def run_beam(path: Path, spec: PipelineSpec) -> Counter[str]:
    p = beam.Pipeline(runner=FnApiRunner())
    _ = (
        p
        | beam.Create(files.match(str(path)))
        | "ReadRecords" >> beam.ParDo(ReadRecords("json", "none"))
        | "ValidateAndDedup" >> ValidateAndDedup(spec, streaming=False)
    )
    result = p.run()
    result.wait_until_finish()
    return Counter({k: v for k, v in counters(result).items() if k == "records_in" or k == "valid"
                    or k == "duplicates" or k.startswith("invalid_")})


def run_columnar(path: Path, spec: PipelineSpec, rows: str = ROWS_AS_ARROW) -> Counter[str]:
    p = beam.Pipeline(runner=FnApiRunner())
    _ = (
        p
        | beam.Create(files.match(str(path)))
        | "ReadChunks" >> beam.ParDo(ReadChunks("json", "none"))
        | "ValidateAndDedup" >> ColumnarValidateAndDedup(spec, rows)
    )
    result = p.run()
    result.wait_until_finish()
    return Counter({k: v for k, v in counters(result).items() if k == "records_in" or k == "valid"
                    or k == "duplicates" or k.startswith("invalid_")})


# The synthetic spec's checks in SQL, in the checker's order (fields in schema order: missing,
# then type; unknown fields; then the rules in order). $paths: the fields' JSON paths. Each
# JSON function parses the line again (~0.1-0.3 us each here); the casts are made once.
DUCKDB_CLASSIFY = r"""
CREATE OR REPLACE TEMP TABLE classified AS
WITH src AS (SELECT line FROM lines WHERE trim(line, ' \t\r\n') <> ''),
p AS (SELECT line, json_valid(line) AS ok FROM src),
o AS (SELECT line, ok, CASE WHEN ok THEN json_type(line) END AS jt FROM p),
f AS (SELECT ok, jt,
   CASE WHEN jt = 'OBJECT' THEN json_type(line, $paths) END AS ty,
   CASE WHEN jt = 'OBJECT' THEN json_extract_string(line, $paths) END AS v,
   CASE WHEN jt = 'OBJECT' THEN json_keys(line) END AS k
 FROM o),
t AS (SELECT *, TRY_CAST(v[3] AS DOUBLE) AS amount, TRY_CAST(v[4] AS TIMESTAMPTZ) AS ts,
             TRY_CAST(trim(v[7]) AS BIGINT) AS quantity FROM f)
SELECT v[1] AS id, v[2] AS customer_id, amount, ts AS timestamp, v[5] AS email, v[6] AS status, quantity, CASE
  WHEN NOT ok THEN 'unparseable'
  WHEN jt <> 'OBJECT' THEN 'not_an_object'
  WHEN coalesce(ty[1], 'NULL') = 'NULL' THEN 'missing_required'
  WHEN ty[1] <> 'VARCHAR' THEN 'wrong_type'
  WHEN coalesce(ty[2], 'NULL') NOT IN ('VARCHAR', 'NULL') THEN 'wrong_type'
  WHEN coalesce(ty[3], 'NULL') = 'NULL' THEN 'missing_required'
  WHEN amount IS NULL THEN 'wrong_type'
  WHEN coalesce(ty[4], 'NULL') = 'NULL' THEN 'missing_required'
  WHEN ty[4] <> 'VARCHAR' OR ts IS NULL THEN 'wrong_type'
  WHEN coalesce(ty[5], 'NULL') NOT IN ('VARCHAR', 'NULL') THEN 'wrong_type'
  WHEN coalesce(ty[6], 'NULL') NOT IN ('VARCHAR', 'NULL') THEN 'wrong_type'
  WHEN coalesce(ty[7], 'NULL') <> 'NULL' AND quantity IS NULL THEN 'wrong_type'
  WHEN len(list_filter(k, x -> x NOT IN ('id', 'customer_id', 'amount', 'timestamp', 'email', 'status',
    'quantity'))) > 0 THEN 'unknown_field'
  WHEN v[2] IS NULL THEN 'dq_not_null'
  WHEN v[5] IS NOT NULL AND NOT regexp_full_match(v[5], '[^@\s]+@[^@\s.]+(\.[^@\s.]+)+') THEN 'dq_valid_email'
  WHEN amount <= 0 THEN 'dq_positive_number'
  WHEN quantity IS NOT NULL AND NOT (quantity BETWEEN 1 AND 100) THEN 'dq_range'
  WHEN NOT regexp_matches(v[1], '^txn-[0-9]+$') THEN 'dq_regex'
  WHEN v[6] IS NOT NULL AND v[6] NOT IN ('new', 'paid', 'refunded') THEN 'dq_allowed_values'
  END AS reason
FROM t
"""
# One row per key (id, instant): the kept rows, as an Arrow table.
DUCKDB_KEPT = "SELECT DISTINCT ON (id, timestamp) * EXCLUDE (reason) FROM classified WHERE reason IS NULL"


def run_columnar_dicts(path: Path, spec: PipelineSpec) -> Counter[str]:
    return run_columnar(path, spec, ROWS_AS_DICTS)


def run_duckdb(path: Path, spec: PipelineSpec) -> Counter[str]:
    """The baseline: DuckDB, one thread, the file's lines handed over as an Arrow column."""
    con = duckdb.connect(config={"threads": 1})
    con.register("lines", pa.table({"line": _lines(path.read_bytes())}))
    con.execute(DUCKDB_CLASSIFY, {"paths": [f"$.{f.name}" for f in spec.fields]})
    counts: Counter[str] = Counter()
    for reason, n in con.execute("SELECT reason, count(*) FROM classified GROUP BY ALL").fetchall():
        counts["valid_before_dedup" if reason is None else f"invalid_{reason}"] += n
    kept = con.execute(DUCKDB_KEPT).to_arrow_table()
    con.close()
    counts["records_in"] = sum(counts.values())
    counts["valid"] = len(kept)
    counts["duplicates"] = counts.pop("valid_before_dedup") - len(kept)
    return counts


def _timed(fn: Any, *args: Any) -> tuple[Counter[str], float, float]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    out = fn(*args)
    return out, time.perf_counter() - wall, _cpu_seconds() - cpu


def expected_counts(exp: Expected) -> Counter[str]:
    c: Counter[str] = Counter(records_in=exp.records_in, valid=exp.valid, duplicates=exp.duplicates)
    c.update({f"invalid_{k}": v for k, v in exp.invalid.items()})
    return c


class _NoCounter:
    def inc(self, n: int = 1) -> None:
        pass


def measure_sinks(path: Path, spec: PipelineSpec, limit: int = 200_000, repeat: int = 3) -> dict[str, Any]:
    """CPU per row of the Silver sinks' request building (HTTP excluded: the client's
    ``_call_api`` serialises the body as its connection would and returns no errors), on the
    valid rows of the first ``limit`` records: ``WriteRows`` from dicts (the per-record path's
    sink; ``insert_rows_json`` + ``json.dumps``), ``WriteArrowRows`` from the Arrow table (the
    columnar path's), and ``to_rows`` (the dicts the columnar path made before its own sink)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    from beam.common.arrow_sink import WriteArrowRows
    from beam.common.columnar import (
        BLANK_UNCOUNTED,
        ArrowChunk,
        ColumnarChecker,
        FileChunk,
        _with_file,
        to_rows,
        with_message_id,
    )
    from beam.common.sinks import RowIdFromKey, WriteRows

    data = path.read_bytes()
    cut = 0
    for _ in range(limit):
        cut = data.find(b"\n", cut) + 1
        if not cut:
            cut = len(data)
            break
    key = spec.dedup.key if spec.dedup else None
    checked = ColumnarChecker(spec.fields, spec.validation, spec.quality_rules, key)(
        FileChunk(str(path), (), 1, data[:cut], BLANK_UNCOUNTED))
    table = with_message_id(_with_file(checked.table, 0), (str(path),))
    client = bigquery.Client(project="bench", credentials=AnonymousCredentials())

    def call_api(retry: Any, **kwargs: Any) -> dict[str, Any]:
        body = kwargs["data"]
        if isinstance(body, dict):
            json.dumps(body)  # what JSONConnection.api_request does with insert_rows_json's dict
        return {}

    client._call_api = call_api  # type: ignore[method-assign]
    ref = "bench.silver.t"
    dicts = WriteRows(ref, project="bench", row_ids=RowIdFromKey(key) if key else None, name="silver", stamp=True,
                      schema_version=spec.schema_version)
    arrow = WriteArrowRows(ref, project="bench", key_paths=key, schema_version=spec.schema_version)
    for sink in (dicts, arrow):
        sink.client, sink.written, sink.rejected = client, _NoCounter(), _NoCounter()
    arrow.retry, arrow.path = None, "/projects/bench/datasets/silver/tables/t/insertAll"
    best = {"write_rows": 1e9, "write_arrow_rows": 1e9, "to_rows": 1e9}
    for _ in range(repeat):
        rows = to_rows(table)
        cpu = _cpu_seconds()
        list(dicts.process_batch(rows))
        best["write_rows"] = min(best["write_rows"], _cpu_seconds() - cpu)
        cpu = _cpu_seconds()
        list(arrow.process(ArrowChunk(table)))
        best["write_arrow_rows"] = min(best["write_arrow_rows"], _cpu_seconds() - cpu)
        cpu = _cpu_seconds()
        to_rows(table)
        best["to_rows"] = min(best["to_rows"], _cpu_seconds() - cpu)
    n = len(table)
    return {"rows": n, **{f"{k}_us_per_row": round(v * 1e6 / n, 2) for k, v in best.items()}}


# --------------------------------------------------------------------------- streaming


class _Progress(beam.DoFn):
    """Appends how many outputs each bundle had to a file (the parent process reads it)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def start_bundle(self) -> None:
        self.n = 0

    def process(self, element: Any) -> None:
        self.n += 1

    def finish_bundle(self) -> None:
        if self.n:
            with open(self.out, "a") as f:
                f.write(f"{time.time()} {self.n}\n")


def streaming_child(subscription: str, out: str, dedup: str = "dedup") -> None:
    """The streaming job (runs until killed): Pub/Sub -> Raw -> ValidateAndDedup -> _Progress."""
    from beam.common.runner import make_pipeline
    from beam.pubsub_to_bigquery.pipeline import to_raw

    spec = parse_spec(SPEC if dedup == "dedup" else {k: v for k, v in SPEC.items() if k != "deduplication"})
    p = make_pipeline([], streaming=True)
    raw = (p | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=subscription, with_attributes=True)
           | "ToRaw" >> beam.Map(to_raw))
    out_ = raw | "ValidateAndDedup" >> ValidateAndDedup(spec, streaming=True)
    _ = (out_["valid"], out_["dead_letters"]) | beam.Flatten() | beam.ParDo(_Progress(out))
    p.run().wait_until_finish()


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def run_streaming(n: int, timeout_s: float = 900.0, dedup: bool = True) -> dict[str, Any]:
    """See the module docstring (``--streaming``). Starts and stops its own emulator and job."""
    import socket
    import subprocess
    import urllib.request

    from google.cloud import pubsub_v1

    from reconciler.local import PUBSUB_LAUNCHER, _gcloud_sdk_root

    sdk = _gcloud_sdk_root()
    if sdk is None or not (sdk / PUBSUB_LAUNCHER).exists():
        raise SystemExit("the Pub/Sub emulator is not installed (see scripts/setup)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="beam-stream-"))
    emulator = subprocess.Popen([str(sdk / PUBSUB_LAUNCHER), "--host=127.0.0.1", f"--port={port}"],
                                stdout=(tmp / "emulator.log").open("wb"), stderr=subprocess.STDOUT)
    child = None
    try:
        host = f"127.0.0.1:{port}"
        for _ in range(300):
            try:
                if urllib.request.urlopen(f"http://{host}/", timeout=1).read().strip() == b"Ok":
                    break
            except OSError:
                time.sleep(0.1)
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        project = "hw-bench"
        publisher = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000, max_latency=0.05))
        subscriber = pubsub_v1.SubscriberClient()
        topic = publisher.topic_path(project, "records")
        sub = subscriber.subscription_path(project, "records-job")
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=60)
        payloads, exp = generate(n)
        t = time.perf_counter()
        for future in [publisher.publish(topic, payload) for payload in payloads]:
            future.result(timeout=120)
        published_s = time.perf_counter() - t
        progress = tmp / "progress"
        progress.touch()
        start = time.time()
        child = subprocess.Popen([sys.executable, __file__, "--streaming-child", sub, str(progress),
                                  "dedup" if dedup else "none"],
                                 env={**os.environ}, stdout=(tmp / "job.log").open("wb"), stderr=subprocess.STDOUT)
        # Each ends as a Silver row or a dead letter (with dedup, duplicates as neither).
        want = exp.records_in - (exp.duplicates if dedup else 0)
        seen, first, last = 0, None, None
        while time.time() - start < timeout_s and child.poll() is None:
            entries = [line.split() for line in progress.read_text().splitlines() if line.strip()]
            seen = sum(int(c) for _ts, c in entries)
            if entries:
                first = float(entries[0][0])
                last = float(entries[-1][0])
            if seen >= want:
                break
            time.sleep(0.5)
        cpu = _cpu_of(child.pid)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        emulator.terminate()
        try:
            emulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    if seen < want:
        raise SystemExit(f"streaming: {seen} of {want} outputs within {timeout_s} s (see {tmp}/job.log)")
    assert first is not None and last is not None
    span = max(last - first, 1e-9)
    return {"machine": machine(), "records": n, "outputs": seen, "published_s": round(published_s, 2),
            "first_output_after_s": round(first - start, 2), "drain_s": round(span, 2),
            "records_per_s": round(n / (last - start)), "records_per_s_after_first_output": round(n / span),
            "job_cpu_s": round(cpu, 2), "records_per_cpu_s": round(n / cpu),
            "runner": "BundleBasedDirectRunner", "sinks": "none (outputs counted)",
            "dedup": "stateful, window_seconds 600" if dedup else "none (spec without deduplication)"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each path (alternating); the best counts")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--paths", default="plain,beam,columnar,columnar_dicts,duckdb",
                    help="which paths to run, comma-separated (plain, beam, columnar, columnar_dicts, duckdb)")
    ap.add_argument("--no-sink", action="store_true", help="skip the Silver sinks' request-building measure")
    ap.add_argument("--streaming", type=int, metavar="N",
                    help="instead: the streaming path's records/s from a Pub/Sub emulator (N records)")
    ap.add_argument("--streaming-no-dedup", action="store_true",
                    help="with --streaming: a spec without deduplication (no stateful DoFn)")
    ap.add_argument("--streaming-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.streaming_child:
        streaming_child(*args.streaming_child)
        return {}
    if args.streaming:
        res = run_streaming(args.streaming, dedup=not args.streaming_no_dedup)
        m = res["machine"]
        print(f"machine: {m['platform']}, {m['cpu']}, nproc={m['nproc']}, Python {m['python']}, "
              f"apache-beam {m['apache_beam']}")
        print(f"streaming ({res['dedup']}), {res['records']:,} records from the Pub/Sub emulator on {res['runner']}: "
              f"{res['records_per_s']:,} records/s from the job's start ({res['first_output_after_s']} s to the "
              f"first output), {res['records_per_s_after_first_output']:,} records/s after it; "
              f"{res['records_per_cpu_s']:,} records per CPU-second of the job")
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        return res
    paths = [p for p in args.paths.split(",") if p]
    runners = {"plain": run_plain, "beam": run_beam, "columnar": run_columnar, "columnar_dicts": run_columnar_dicts,
               "duckdb": run_duckdb}
    if duckdb is None and "duckdb" in paths:
        print("duckdb is not installed: no DuckDB baseline")
        paths.remove("duckdb")

    spec = parse_spec(SPEC)
    t = time.perf_counter()
    payloads, exp = generate(args.records)
    with tempfile.TemporaryDirectory(prefix="beam-bench-") as tmp:
        path = Path(tmp) / "records.json"
        path.write_bytes(b"\n".join(payloads) + b"\n")
        size_mb = path.stat().st_size / 1e6
        del payloads
        print(f"generated {args.records:,} records ({size_mb:.0f} MB) in {time.perf_counter() - t:.1f} s")

        # One untimed run of each path on a small file first: one-time costs (lazy imports, the
        # first call of each Arrow kernel, pattern compiles) would otherwise land in round 1.
        warm = Path(tmp) / "warm.json"
        warm_payloads, _warm_exp = generate(2_000, seed=1)
        warm.write_bytes(b"\n".join(warm_payloads) + b"\n")
        for name in paths:
            runners[name](warm, spec)

        # Alternate the paths and keep each one's best run: on a shared machine a neighbour's
        # burst should not decide the ratios.
        runs: dict[str, list[tuple[Counter[str], float, float]]] = {name: [] for name in paths}
        for _ in range(args.repeat):
            for name in paths:
                runs[name].append(_timed(runners[name], path, spec))
        sinks = None if args.no_sink else measure_sinks(path, spec, min(args.records, 200_000))

    want = expected_counts(exp)
    for name in paths:
        for got, _wall, _cpu in runs[name]:
            if +got != +want:
                raise SystemExit(f"{name} disagrees with the generated data's accounting:\n got {dict(got)}\n"
                                 f"want {dict(want)}")

    n = args.records
    keys = {"plain": "plain", "beam": "beam_fnapi", "columnar": "columnar_fnapi", "columnar_dicts": "columnar_dicts_fnapi",
            "duckdb": "duckdb_1thread"}
    results: dict[str, Any] = {"machine": machine(), "records": n, "repeat": args.repeat, "megabytes": round(size_mb, 1)}
    for name in paths:
        wall = min(r[1] for r in runs[name])
        cpu = min(r[2] for r in runs[name])
        results[keys[name]] = {"seconds": round(wall, 2), "records_per_s": round(n / wall),
                               "records_per_cpu_s": round(n / cpu),
                               "rounds_records_per_cpu_s": [round(n / r[2]) for r in runs[name]]}
    cpu_of = {name: results[keys[name]]["records_per_cpu_s"] for name in paths}
    ratios = {}
    if "beam" in cpu_of and "plain" in cpu_of:
        ratios["beam_cpu_over_plain_cpu"] = round(cpu_of["plain"] / cpu_of["beam"], 2)
    if "columnar" in cpu_of and "beam" in cpu_of:
        ratios["columnar_speedup_over_beam_per_cpu_s"] = round(cpu_of["columnar"] / cpu_of["beam"], 2)
    if "columnar" in cpu_of and "duckdb" in cpu_of:
        ratios["duckdb_over_columnar_per_cpu_s"] = round(cpu_of["duckdb"] / cpu_of["columnar"], 2)
    if "columnar_dicts" in cpu_of and "beam" in cpu_of:
        ratios["columnar_dicts_speedup_over_beam_per_cpu_s"] = round(cpu_of["columnar_dicts"] / cpu_of["beam"], 2)
    if "columnar_dicts" in cpu_of and "duckdb" in cpu_of:
        ratios["duckdb_over_columnar_dicts_per_cpu_s"] = round(cpu_of["duckdb"] / cpu_of["columnar_dicts"], 2)
    # Per round (the paths alternate within a round): the same ratios, round by round.
    for a, b in (("columnar", "beam"), ("duckdb", "columnar")):
        if a in runs and b in runs:
            ratios[f"{a}_over_{b}_per_cpu_s_by_round"] = [round(rb[2] / ra[2], 2) for ra, rb in zip(runs[a], runs[b], strict=True)]
    results["ratios"] = ratios
    if sinks:
        results["silver_sink"] = sinks
    results["accounting"] = dict(sorted(want.items()))
    m = results["machine"]
    print(f"machine: {m['platform']}, {m['cpu']}, nproc={m['nproc']}, Python {m['python']}, "
          f"apache-beam {m['apache_beam']}")
    print(f"{'path':<26}{'seconds':>9}{'records/s':>12}{'records/cpu-s':>15}")
    labels = {"plain": "plain Python loop", "beam": "Beam FnApiRunner", "columnar": "Beam columnar (Arrow rows)",
              "columnar_dicts": "Beam columnar, dict rows", "duckdb": "DuckDB, 1 thread"}
    for name in paths:
        r = results[keys[name]]
        print(f"{labels[name]:<26}{r['seconds']:>9.2f}{r['records_per_s']:>12,}{r['records_per_cpu_s']:>15,}")
    for k, v in ratios.items():
        print(f"{k}: {', '.join(f'{x}x' for x in v) if isinstance(v, list) else f'{v}x'}")
    if sinks:
        print(f"Silver sink request building, CPU per row ({sinks['rows']:,} rows, HTTP excluded): WriteRows from dicts "
              f"{sinks['write_rows_us_per_row']} us, WriteArrowRows from Arrow {sinks['write_arrow_rows_us_per_row']} us; "
              f"making the dicts (to_rows) {sinks['to_rows_us_per_row']} us")
    print("targets: columnar >= 3x Beam per CPU-second; DuckDB within 1.5x of columnar")
    load = m["load_average_1m"]
    if load > 1.5 * (m["nproc"] or 1):
        print(f"note: load average {load:.1f} on {m['nproc']} cores during the run; wall-clock "
              "figures include waiting for the CPU, the per-CPU-second ones less so")
    print(f"accounting (all agree): {results['accounting']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
