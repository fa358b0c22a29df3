"""Benchmark: records/s of the polling connector (connector.rest_api) on one core.

A local REST API (a separate process, pages of ``--page-size`` records, ``next_url``
pagination, realistic ~250-byte payment records, bodies built before timing) is walked by one
``Poller.poll_once()`` per run, exactly as in production: HTTP request, JSON parse, records
selector, one Pub/Sub message per record with its attributes, wait for the acknowledgements,
next page, checkpoint in Cloud Storage (the default cadence: at most once a second, and at the
end). Two publishers, in the same run:

* **pubsub** - google-cloud-pubsub's publisher to the Pub/Sub emulator (what the connector
  does; the emulator's own CPU is not counted in records/CPU-s, but it shares the machine);
* **null** - every publish acknowledged at once without sending: the connector's own cost.

The connector process is pinned to one core (``os.sched_setaffinity``; its threads - the
Pub/Sub client's included - inherit it); the API server is pinned to another when there is
one. records/s is wall-clock; records/CPU-s divides by the CPU time the connector process used.
Emulators: those of ``PUBSUB_EMULATOR_HOST`` / ``STORAGE_EMULATOR_HOST`` when set, else
started for the run (``reconciler.local``) and stopped after.

    .venv/bin/python bench/connector_throughput.py [--records 100000] [--page-size 100] [--repeat 3] [--json out.json]

Target: >= 5,000 records/s with the Pub/Sub publisher.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_RECORDS_PER_S = 5000


# --------------------------------------------------------------------------- the API (its own process)


def build_pages(records: int, page_size: int) -> list[bytes]:
    """``{"data": [...], "next": "/charges?page=N+1"}`` bodies, page 1 first."""
    pages = []
    for start in range(0, records, page_size):
        chunk = [{"charge_id": f"ch_{n:010d}", "created_at": f"2024-05-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
                  "amount": round(n * 0.37 % 1000, 2), "currency": "EUR", "status": "succeeded",
                  "customer": {"id": f"cus_{n % 977:06d}", "email": f"customer{n % 977}@example.com"},
                  "metadata": {"order_id": f"ord_{n:08d}", "channel": "web"}}
                 for n in range(start + 1, min(start + page_size, records) + 1)]
        number = start // page_size + 1
        more = start + page_size < records
        pages.append(json.dumps({"data": chunk, "next": f"/charges?page={number + 1}" if more else None}).encode())
    return pages


def serve_api(records: int, page_size: int) -> None:
    """Serve the pages on a free loopback port; print the port, then serve until killed."""
    pages = build_pages(records, page_size)
    empty = b'{"data": [], "next": null}'

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            page = int(self.path.partition("page=")[2] or 1)
            body = pages[page - 1] if page <= len(pages) else empty
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


@contextlib.contextmanager
def api_process(records: int, page_size: int, core: int | None) -> Iterator[str]:
    process = subprocess.Popen([sys.executable, __file__, "--serve-api", "--records", str(records),
                                "--page-size", str(page_size)], stdout=subprocess.PIPE, text=True)
    try:
        if core is not None:
            os.sched_setaffinity(process.pid, {core})
        port = int(process.stdout.readline())  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}/charges"
    finally:
        process.kill()
        process.wait()


# --------------------------------------------------------------------------- the connector


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    nproc = len(os.sched_getaffinity(0))
    return {"description": f"{nproc}-core shared VM", "cpu": cpu, "nproc": nproc, "platform": platform.platform(),
            "python": platform.python_version(), "load_average_1m": round(os.getloadavg()[0], 1)}


@contextlib.contextmanager
def emulators() -> Iterator[None]:
    """The running emulators named by the environment, or fresh ones for this run."""
    if os.environ.get("PUBSUB_EMULATOR_HOST") and os.environ.get("STORAGE_EMULATOR_HOST"):
        yield
        return
    from reconciler import local

    with tempfile.TemporaryDirectory() as state:
        emu = local.start(Path(state), project="hw-bench")
        try:
            with local.exported(emu.env()):
                yield
        finally:
            local.stop(Path(state))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(endpoint: str, publisher_kind: str, project: str, bucket: str, records: int) -> dict[str, Any]:
    from connector.checkpoint import CheckpointStore
    from connector.publish import NullTransport, RecordPublisher, pubsub_transport
    from connector.rest_api import Poller
    from connector.spec import parse_spec

    spec = parse_spec({
        "version": 1, "source_id": "payments", "project": project, "connector_type": "rest_api",
        "topic": f"projects/{project}/topics/payments", "dead_letter_topic": f"projects/{project}/topics/payments-dlq",
        "checkpoint": f"gs://{bucket}/_connectors/payments/{uuid.uuid4().hex}.json",
        "rest_api": {"endpoint": endpoint, "records": "data", "pagination": {"type": "next_url", "path": "next"},
                     "poll_interval_seconds": 60, "max_requests_per_minute": 1_000_000, "max_retries": 5},
    })
    transport = NullTransport() if publisher_kind == "null" else pubsub_transport()
    publisher = RecordPublisher(transport, source_id=spec.source_id, topic=spec.topic,
                                dead_letter_topic=spec.dead_letter_topic)
    poller = Poller(spec, None, publisher, CheckpointStore(spec.checkpoint_bucket, spec.checkpoint_object))
    try:
        cpu, wall = _cpu_seconds(), time.perf_counter()
        result = poller.poll_once()
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    finally:
        poller.close()
        if hasattr(transport, "stop"):
            transport.stop()
    if (result.outcome, result.records) != ("complete", records):
        sys.exit(f"the poll did not read every record: {result}")
    return {"seconds": round(wall, 3), "records_per_s": round(records / wall),
            "records_per_cpu_s": round(records / cpu) if cpu else None, "pages": result.pages}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one core (the smoke test)")
    parser.add_argument("--serve-api", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_api:
        serve_api(args.records, args.page_size)
        return {}

    cores = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin
    api_core = cores[1] if pinned and len(cores) > 1 else None
    results: dict[str, Any] = {"machine": machine(), "records": args.records, "page_size": args.page_size,
                               "repeat": args.repeat, "pinned_to_one_core": pinned}
    with emulators(), api_process(args.records, args.page_size, api_core) as endpoint:
        from google.cloud import pubsub_v1, storage

        project = f"hw-bench-{uuid.uuid4().hex[:6]}"
        bucket = f"hw-bench-{uuid.uuid4().hex[:8]}"
        storage.Client().create_bucket(bucket)
        publisher = pubsub_v1.PublisherClient()
        publisher.create_topic(name=publisher.topic_path(project, "payments"))
        publisher.stop()
        if pinned:
            os.sched_setaffinity(0, {cores[0]})  # before the connector's clients start their threads
        try:
            for kind in ("null", "pubsub"):
                runs = [run_once(endpoint, kind, project, bucket, args.records) for _ in range(args.repeat)]
                results[kind] = {"median_records_per_s": statistics.median(r["records_per_s"] for r in runs),
                                 "best_records_per_s": max(r["records_per_s"] for r in runs), "runs": runs}
        finally:
            os.sched_setaffinity(0, cores)
    results["meets_target"] = results["pubsub"]["median_records_per_s"] >= TARGET_RECORDS_PER_S

    m = results["machine"]
    print(f"machine: {m['description']}, {m['cpu']}, nproc={m['nproc']}, Python {m['python']}, "
          f"load {m['load_average_1m']}")
    print(f"{args.records:,} records in pages of {args.page_size}, {args.repeat} runs each, "
          f"connector {'pinned to one core' if pinned else 'not pinned'}")
    for kind in ("null", "pubsub"):
        runs = results[kind]["runs"]
        wall = ", ".join(f"{r['records_per_s']:,}" for r in runs)
        cpu = ", ".join(f"{r['records_per_cpu_s']:,}" for r in runs)
        print(f"  {kind:<7} median {results[kind]['median_records_per_s']:>8,} records/s   "
              f"(runs: {wall}; per CPU-s: {cpu})")
    print(f"target >= {TARGET_RECORDS_PER_S:,} records/s with Pub/Sub: {'met' if results['meets_target'] else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
