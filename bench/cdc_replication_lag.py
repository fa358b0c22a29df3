"""Benchmark: replication lag of the local CDC reader under a steady 1,000 writes/s.

A writer commits ``--rate`` row changes a second into the local PostgreSQL (transactions of
``--batch`` rows - inserts, and updates of rows written a moment before - on a fixed clock),
for ``--seconds``; the local stand-in for Datastream runs as it does under ``headwater apply``:
its own process (``python -m providers.local_datastream``), reading the replication slot
(wal2json) every 0.5 s when idle and writing gzip'd event files to the Cloud Storage emulator.

Measured:

* **per change**: ``read_timestamp - source_timestamp`` of every event written (the moment the
  reader read it minus its commit time, both in the events, ms): p50, p95, p99, max;
* **the slot**: sampled every 0.25 s from ``pg_replication_slots`` - WAL not yet confirmed
  (``pg_current_wal_lsn() - confirmed_flush_lsn``) and WAL retained (``- restart_lsn``): p50,
  p95, max;
* that every change arrived once: events written == row changes committed.

    eval "$(.venv/bin/headwater local up)"
    .venv/bin/python bench/cdc_replication_lag.py [--rate 1000] [--seconds 60] [--batch 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cdc_throughput import machine  # noqa: E402


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(values: list[float], digits: int = 3) -> dict[str, Any]:
    return {"n": len(values), "p50": round(percentile(values, 50), digits), "p95": round(percentile(values, 95), digits),
            "p99": round(percentile(values, 99), digits), "max": round(max(values), digits),
            "mean": round(statistics.fmean(values), digits)} if values else {"n": 0}


def main(argv: list[str] | None = None) -> int:
    import psycopg
    from google.cloud import storage

    from providers.local_datastream import PASSWORD_ENV, StreamRecord, connect, slot_lag
    from providers.localrunner import child_env
    from reconciler import local_postgres

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=1000, help="row changes committed per second")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--batch", type=int, default=50, help="rows per transaction")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    state = Path(os.environ.get("HEADWATER_STATE_DIR") or ROOT / ".headwater")
    pg = local_postgres.load(state)
    if pg is None or not os.environ.get("STORAGE_EMULATOR_HOST"):
        raise SystemExit("needs the local PostgreSQL and emulators: eval \"$(headwater local up)\" first")
    tag = f"lag_{os.getpid()}"
    profile = {"type": "postgresql", "host": pg.host, "port": pg.port, "user": pg.user, "database": tag}
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {tag}")
    bucket = tag.replace("_", "-")
    storage.Client().create_bucket(bucket)
    with connect(profile, pg.password()) as conn:
        conn.execute("CREATE TABLE orders (order_id bigint PRIMARY KEY, status text NOT NULL, total numeric(10,2), "
                     "updated_at timestamptz NOT NULL)")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'wal2json')", (tag,))

    # The reader, as `headwater apply` runs it: its own process.
    record_dir = state / "bench-lag"
    record_dir.mkdir(parents=True, exist_ok=True)
    record = StreamRecord(name=tag, project="bench", pid=0, process_start="",
                          spec={"replication_slot": tag, "include_objects": [{"schema": "public", "table": "orders"}],
                                "destination": {"path": f"/{tag}", "compression": "gzip"}, "backfill": "none"},
                          labels={}, source=profile, destination={"bucket": bucket, "root_path": "/cdc"},
                          log=str(record_dir / f"{tag}.log"), started_at=dt.datetime.now(dt.UTC).isoformat(),
                          stream_name=tag)
    record_path = record_dir / f"{tag}.json"
    record_path.write_text(json.dumps(asdict(record)))
    env = {**child_env("bench"), PASSWORD_ENV: pg.password()}
    with open(record.log, "ab") as log:
        reader = subprocess.Popen([sys.executable, "-m", "providers.local_datastream", str(record_path), "0.5"],
                                  env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    samples: dict[str, list[float]] = {"lag_bytes": [], "wal_retained_bytes": []}
    stop = threading.Event()

    def sample() -> None:
        with connect(profile, pg.password()) as conn:
            while not stop.is_set():
                lag = slot_lag(conn, tag)
                if lag:
                    samples["lag_bytes"].append(lag["lag_bytes"])
                    samples["wal_retained_bytes"].append(lag["wal_retained_bytes"])
                stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    committed = 0
    period = args.batch / args.rate
    started = time.monotonic()
    behind = 0
    with connect(profile, pg.password()) as conn:
        n, tick = 0, started
        while time.monotonic() - started < args.seconds:
            with conn.transaction():
                # Half inserts, half updates of rows inserted a moment before.
                inserts = args.batch // 2
                conn.execute("INSERT INTO orders SELECT g, 'new', g %% 1000, now() FROM generate_series(%s::bigint, "
                             "%s::bigint) g", (n, n + inserts - 1))
                if n:
                    conn.execute("UPDATE orders SET status = 'paid', updated_at = now() WHERE order_id >= %s AND "
                                  "order_id < %s", (n - (args.batch - inserts), n))
                    committed += args.batch - inserts
                committed += inserts
                n += inserts
            tick += period
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                behind += 1
    elapsed = time.monotonic() - started
    # Until the reader has caught up (the slot confirmed to the end), then stop it.
    deadline = time.monotonic() + 120
    with connect(profile, pg.password()) as conn:
        while time.monotonic() < deadline and slot_lag(conn, tag).get("lag_bytes", 1) > 0:
            time.sleep(0.2)
    catch_up = time.monotonic() - started - elapsed
    stop.set()
    sampler.join()
    reader.terminate()
    reader.wait(timeout=10)

    delays, events = [], 0
    for blob in storage.Client().list_blobs(bucket, prefix="cdc/"):
        for line in gzip.decompress(blob.download_as_bytes()).splitlines():
            event = json.loads(line)
            events += 1
            read = dt.datetime.fromisoformat(event["read_timestamp"] + "+00:00")
            source = dt.datetime.fromisoformat(event["source_timestamp"] + "+00:00")
            delays.append((read - source).total_seconds())
    with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (tag,))
        conn.execute(f"DROP DATABASE {tag} WITH (FORCE)")

    result = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
        "target_rate": args.rate, "achieved_rate": round(committed / elapsed), "seconds": round(elapsed, 1),
        "transactions_late": behind, "row_changes": committed, "events_written": events,
        "every_change_once": events == committed, "catch_up_after_writes_s": round(catch_up, 2),
        "change_delay_s": summary(delays), "slot_lag_bytes": summary(samples["lag_bytes"], 0),
        "slot_wal_retained_bytes": summary(samples["wal_retained_bytes"], 0),
    }
    d, lag = result["change_delay_s"], result["slot_lag_bytes"]
    print(f"{committed:,} row changes in {elapsed:.0f} s ({result['achieved_rate']:,}/s, {behind} transactions late); "
          f"{events:,} events written ({'each once' if result['every_change_once'] else 'MISMATCH'})")
    print(f"commit -> read by the reader: p50 {d['p50']} s, p95 {d['p95']} s, p99 {d['p99']} s, max {d['max']} s")
    print(f"slot WAL not yet confirmed: p50 {lag['p50']:,.0f} B, p95 {lag['p95']:,.0f} B, max {lag['max']:,.0f} B; "
          f"caught up {result['catch_up_after_writes_s']} s after the last write")
    print(f"machine: {result['machine']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["every_change_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
