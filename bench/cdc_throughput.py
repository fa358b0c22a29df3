"""Benchmark: change events/s through the CDC pipeline's apply step, and through the local reader.

Three measurements, each on one core (``os.sched_setaffinity``), each reported with the machine:

* **apply** (the target) - the apply step of ``datastream_to_bigquery`` (`beam.datastream_to_bigquery`),
  over ``--events`` generated Datastream JSON events of one table (inserts, updates - several per
  key, out of order - and deletes, 2% not fitting the schema): parse and validate every line
  (`events.ChangeParser`), then build each batch's Bronze INSERT and Silver MERGE with their
  parameters (`apply.ChangeApplier.statements`: the ``@events`` JSON text, the keys). Everything
  the step does but wait for BigQuery: the statements go to a null runner. Best of ``--repeat``.
* **apply + BigQuery** (``--bigquery``) - the same step with the statements run on the BigQuery
  emulator (bqemulator, DuckDB), ``--bigquery-events`` events in files of 1,000: what one
  worker achieves end to end here; on BigQuery a batch is two query jobs, each about a second
  whatever its size, so real throughput is set by the batch size and the parallelism.
* **reader** (``--reader``) - the local stand-in for Datastream: ``--reader-rows`` rows inserted
  into PostgreSQL in transactions of 100, then read from the replication slot (wal2json) and
  written as gzip'd event files to the Cloud Storage emulator, in passes, as the reader process
  does (`providers.local_datastream.Reader.one_pass`).

    .venv/bin/python bench/cdc_throughput.py [--events 200000] [--repeat 3] [--bigquery] [--reader] [--json out.json]

Target: >= 10,000 change events/s on one core for the apply step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_EVENTS_PER_S = 10_000
FIELDS = [
    {"name": "order_id", "type": "INT64", "mode": "REQUIRED"},
    {"name": "customer_id", "type": "INT64", "mode": "REQUIRED"},
    {"name": "status", "type": "STRING", "mode": "REQUIRED"},
    {"name": "total", "type": "NUMERIC", "mode": "NULLABLE"},
    {"name": "currency", "type": "STRING", "mode": "NULLABLE"},
    {"name": "placed_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
    {"name": "updated_at", "type": "TIMESTAMP", "mode": "NULLABLE"},
    {"name": "note", "type": "STRING", "mode": "NULLABLE"},
]


def spec(project: str = "bench-cdc") -> Any:
    from beam.common.spec import parse_spec

    return parse_spec({
        "source_id": "bench", "project": project, "dead_letter": {"topic": f"projects/{project}/topics/bench-dlq"},
        "cdc": {"source_type": "postgresql", "tables": [{
            "object": "public.orders", "primary_key": ["order_id"], "schema": {"version": "1", "fields": FIELDS},
            "bronze": {"table": "bronze.bench_orders_changes"}, "silver": {"table": "silver.bench_orders"}}]}})


def generate(n: int, seed: int = 7) -> list[bytes]:
    """Datastream events (compact JSON lines, ~700 bytes each) over n/4 keys: an insert, then
    updates and some deletes, shuffled within windows of 1,000 (out of order, as files are read)."""
    rng = random.Random(seed)
    keys = max(1, n // 4)
    statuses = ["new", "paid", "shipped", "delivered"]
    lines = []
    lsn = 0x16B3748
    for i in range(n):
        key = i % keys
        version = i // keys
        lsn += 120
        ts = f"2026-11-30T10:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}"
        change = "INSERT" if version == 0 else ("DELETE" if version == 3 and key % 5 == 0 else "UPDATE-INSERT")
        payload = {"order_id": key, "customer_id": key % 977, "status": statuses[min(version, 3)],
                   "total": f"{(key * 37) % 10000 / 100:.2f}", "currency": "EUR",
                   "placed_at": "2026-11-30T09:00:00Z", "updated_at": ts + "Z", "note": f"order {key} v{version}"}
        if i % 50 == 7:  # 2% do not fit the schema
            payload["status"] = 42
        body = {"uuid": f"{i:08x}-0000-4000-8000-000000000000", "read_timestamp": ts, "source_timestamp": ts,
                "object": "public_orders", "read_method": "postgres-cdc-wal",
                "stream_name": "projects/bench/locations/europe-west1/streams/bench", "schema_key": "k",
                "sort_keys": [i, f"0/{lsn:X}"],
                "source_metadata": {"schema": "public", "table": "orders", "is_deleted": change == "DELETE",
                                    "change_type": change, "tx_id": i, "lsn": f"0/{lsn:X}",
                                    "primary_keys": ["order_id"]},
                "payload": payload}
        lines.append(json.dumps(body, separators=(",", ":")).encode())
    for start in range(0, n, 1000):
        window = lines[start:start + 1000]
        rng.shuffle(window)
        lines[start:start + 1000] = window
    return lines


def apply_step(lines: list[bytes], the_spec: Any, run: Any, file_size: int = 1000) -> dict[str, int]:
    """What ApplyChangeFile does per file, files of ``file_size`` lines."""
    from beam.datastream_to_bigquery.apply import ChangeApplier
    from beam.datastream_to_bigquery.events import ChangeParser

    parser = ChangeParser(the_spec.cdc.tables, the_spec.cdc.source_type)
    applier = ChangeApplier(the_spec, run)
    counts = {"events": 0, "valid": 0, "dead_letters": 0, "statements": 0}
    for start in range(0, len(lines), file_size):
        changes = []
        for number, line in enumerate(lines[start:start + file_size], start + 1):
            change, dead = parser.parse(line, f"gs://landing/cdc/bench/file#{number}")
            if change is not None:
                changes.append(change)
                counts["valid"] += change.valid
            counts["dead_letters"] += dead is not None
        done = applier.apply(changes)
        counts["events"] += file_size if start + file_size <= len(lines) else len(lines) - start
        counts["statements"] += done.statements
    return counts


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"description": f"{os.cpu_count()}-core shared VM", "cpu": cpu, "nproc": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 1)}


# --------------------------------------------------------------------------- the three runs


def bench_apply(events: int, repeat: int) -> dict[str, Any]:
    lines = generate(events)
    the_spec = spec()
    runs = []
    for _ in range(repeat):
        counts, wall, cpu = timed(lambda: apply_step(lines, the_spec, lambda statement: None))
        runs.append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "events_per_s": round(events / wall),
                     "events_per_cpu_s": round(events / cpu) if cpu else None, **counts})
    best = max(runs, key=lambda r: r["events_per_s"])
    return {"events": events, "bytes_per_event": round(sum(map(len, lines)) / len(lines)), "runs": runs,
            "best_events_per_s": best["events_per_s"], "best_events_per_cpu_s": best["events_per_cpu_s"],
            "target_met": best["events_per_s"] >= TARGET_EVENTS_PER_S}


def bench_bigquery(events: int) -> dict[str, Any]:
    from google.cloud import bigquery

    from beam.common.clients import bigquery_client
    from beam.common.spec import CDC_BRONZE_FIELDS, CDC_SILVER_FIELDS
    from beam.datastream_to_bigquery.apply import bigquery_runner

    project = f"bench-cdc-{os.getpid()}"
    the_spec = spec(project)
    client = bigquery_client(project)
    retry = bigquery.DEFAULT_RETRY.with_deadline(30)
    for dataset in ("bronze", "silver"):
        client.create_dataset(f"{project}.{dataset}", exists_ok=True, retry=retry)
    relaxed = [dict(f, mode="NULLABLE") for f in FIELDS]
    client.create_table(bigquery.Table(f"{project}.bronze.bench_orders_changes", schema=[
        bigquery.SchemaField.from_api_repr(f) for f in (*relaxed, *CDC_BRONZE_FIELDS)]), retry=retry)
    client.create_table(bigquery.Table(f"{project}.silver.bench_orders", schema=[
        bigquery.SchemaField.from_api_repr(f) for f in (*FIELDS, *CDC_SILVER_FIELDS)]), retry=retry)
    lines = generate(events)
    counts, wall, cpu = timed(lambda: apply_step(lines, the_spec, bigquery_runner(project)))
    silver = next(iter(client.query(f"SELECT COUNT(*) n FROM `{project}.silver.bench_orders`").result())).n
    return {"events": events, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "events_per_s": round(events / wall), **counts, "silver_rows": silver,
            "silver_rows_expected": current_rows(lines, the_spec)}


def current_rows(lines: list[bytes], the_spec: Any) -> int:
    """The rows the source table would hold: per key, its newest valid change, unless a delete."""
    from beam.datastream_to_bigquery.events import ChangeParser

    parser = ChangeParser(the_spec.cdc.tables, the_spec.cdc.source_type)
    newest: dict[str, tuple[str, bool]] = {}
    for line in lines:
        change, _ = parser.parse(line, "o")
        if change is not None and change.valid and (change.key not in newest or change.position > newest[change.key][0]):
            newest[change.key] = (change.position, change.deleted)
    return sum(1 for _, deleted in newest.values() if not deleted)


def bench_reader(rows: int) -> dict[str, Any]:
    """Rows inserted, then read off the slot and written as event files by the reader's own pass."""
    import datetime as dt

    from providers.local_datastream import Reader, StreamRecord, connect

    state = Path(os.environ.get("HEADWATER_STATE_DIR") or ROOT / ".headwater")
    from reconciler import local_postgres

    pg = local_postgres.load(state)
    if pg is None:
        raise SystemExit("no local PostgreSQL in the state dir: run it with `headwater local up` (and eval its output)")
    database = f"bench_{os.getpid()}"
    profile = {"type": "postgresql", "host": pg.host, "port": pg.port, "user": pg.user, "database": database}
    import psycopg

    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    from google.cloud import storage

    bucket = f"bench-cdc-{os.getpid()}"
    storage.Client().create_bucket(bucket)
    with connect(profile, pg.password()) as conn:
        conn.execute("CREATE TABLE orders (order_id bigint PRIMARY KEY, customer_id bigint NOT NULL, "
                     "status text NOT NULL, total numeric(10,2), placed_at timestamptz NOT NULL)")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (database,))
        for start in range(0, rows, 100):
            with conn.transaction():
                conn.execute("INSERT INTO orders SELECT g, g %% 977, 'new', (g %% 10000) / 100.0, now() "
                             "FROM generate_series(%s::bigint, %s::bigint) g", (start, min(start + 100, rows) - 1))
    record_dir = state / "bench-reader"
    record_dir.mkdir(parents=True, exist_ok=True)
    record = StreamRecord(name="bench", project="bench", pid=0, process_start="",
                          spec={"replication_slot": database, "include_objects": [{"schema": "public", "table": "orders"}],
                                "destination": {"path": "/bench", "compression": "gzip"}, "backfill": "none"},
                          labels={}, source=profile, destination={"bucket": bucket, "root_path": "/cdc"},
                          log="", started_at=dt.datetime.now(dt.UTC).isoformat(), stream_name="bench")
    path = record_dir / "bench.json"
    from dataclasses import asdict

    path.write_text(json.dumps(asdict(record)))
    reader = Reader(path, pg.password())

    def drain() -> int:
        total = 0
        with connect(profile, pg.password()) as conn:
            while True:
                n = reader.one_pass(conn)
                if not n:
                    return total
                total += n

    events, wall, cpu = timed(drain)
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (database,))
        conn.execute(f"DROP DATABASE {database} WITH (FORCE)")
    return {"rows": rows, "events": events, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "events_per_s": round(events / wall) if wall else None, "files": reader.status.get("files_written")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--bigquery", action="store_true", help="also run the step against the BigQuery emulator")
    p.add_argument("--bigquery-events", type=int, default=20_000)
    p.add_argument("--reader", action="store_true", help="also measure the local reader (needs local up)")
    p.add_argument("--reader-rows", type=int, default=100_000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    result: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                              "apply": bench_apply(args.events, args.repeat)}
    a = result["apply"]
    print(f"apply step: {a['best_events_per_s']:,} events/s wall, {a['best_events_per_cpu_s']:,} per CPU-second "
          f"(best of {args.repeat}, {args.events:,} events of ~{a['bytes_per_event']} bytes; target "
          f"{TARGET_EVENTS_PER_S:,}: {'met' if a['target_met'] else 'NOT met'})")
    if args.bigquery:
        result["bigquery"] = b = bench_bigquery(args.bigquery_events)
        print(f"apply step + BigQuery emulator: {b['events_per_s']:,} events/s ({b['events']:,} events, "
              f"{b['statements']} batches, {b['wall_s']} s; Silver {b['silver_rows']} rows, the source's current "
              f"state {b['silver_rows_expected']})")
    if args.reader:
        result["reader"] = r = bench_reader(args.reader_rows)
        print(f"local reader (slot -> event files): {r['events_per_s']:,} events/s ({r['events']:,} events, "
              f"{r['files']} files, {r['wall_s']} s)")
    print(f"machine: {result['machine']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if a["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
