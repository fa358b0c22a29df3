"""Benchmark: latency and requests/s of the data API (serving/api) for 100-row pages on bqemulator.

A Gold-shaped table (``--rows`` rows over ``--days`` days: customer_id, date, total_amount,
order_count, last_order_at, customer_email (PII), channel) and its view in the ``api`` dataset are
created on bqemulator; the API runs as its own process exactly as the image runs it (``python -m
serving.api``: uvicorn, h11, one worker) with a spec whose client may make 10^9 requests an
hour (the rate limiter still counts every request). The client (httpx, keep-alive) gets one
token, then walks the view in pages of ``--page-size`` rows by cursor, starting again at the end.
Three measurements, in the same run:

* **bigquery** - the page's own query (``serving.api.query.page_query``: keyset condition,
  parameters, ORDER BY, LIMIT) run directly with google-cloud-bigquery on the emulator: the floor
  the API cannot go below here;
* **api, 1 client** - sequential GETs: the latency one client sees;
* **api, N clients** - ``--clients`` threads walking at once: the throughput of one instance.

Emulators: bqemulator from ``BIGQUERY_EMULATOR_HOST`` when set, else the local emulators are
started for the run (``reconciler.local``) and stopped after.

    .venv/bin/python bench/api_latency.py [--rows 20000] [--requests 300] [--clients 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMA = [
    {"name": "customer_id", "type": "STRING", "mode": "NULLABLE"},
    {"name": "date", "type": "DATE", "mode": "NULLABLE"},
    {"name": "total_amount", "type": "NUMERIC", "mode": "NULLABLE"},
    {"name": "order_count", "type": "INT64", "mode": "NULLABLE"},
    {"name": "last_order_at", "type": "TIMESTAMP", "mode": "NULLABLE"},
    {"name": "customer_email", "type": "STRING", "mode": "NULLABLE"},
    {"name": "channel", "type": "STRING", "mode": "NULLABLE"},
]


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
    if os.environ.get("BIGQUERY_EMULATOR_HOST"):
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


def load_view(project: str, rows: int, days: int) -> str:
    from google.cloud import bigquery

    from serving.api.query import make_client

    client = make_client(project)
    for dataset in ("gold", "api"):
        client.create_dataset(f"{project}.{dataset}", exists_ok=True, retry=None, timeout=60)
    table = bigquery.Table(f"{project}.gold.orders_daily",
                           schema=[bigquery.SchemaField.from_api_repr(f) for f in SCHEMA])
    table.time_partitioning = bigquery.TimePartitioning(field="date")
    table.clustering_fields = ["customer_id"]
    client.create_table(table, retry=None, timeout=60)
    view = bigquery.Table(f"{project}.api.orders_daily")
    view.view_query = f"SELECT * FROM `{project}.gold.orders_daily`"
    client.create_table(view, retry=None, timeout=60)
    per_day = max(1, rows // days)
    start = dt.date(2024, 1, 1)
    batch: list[dict[str, Any]] = []
    for n in range(rows):
        day = start + dt.timedelta(days=n // per_day % days)
        batch.append({"customer_id": f"cus_{n % per_day:06d}", "date": day.isoformat(),
                      "total_amount": f"{n * 37 % 100000 / 100:.2f}", "order_count": n % 17 + 1,
                      "last_order_at": f"{day.isoformat()}T{n % 24:02d}:{n % 60:02d}:00Z",
                      "customer_email": f"customer{n}@example.com", "channel": ("web", "app", "store")[n % 3]})
        if len(batch) == 1000 or n == rows - 1:
            errors = client.insert_rows_json(table, batch, retry=None, timeout=120)
            if errors:
                raise SystemExit(f"insert failed: {errors[:2]}")
            batch = []
    return f"{project}.api.orders_daily"


def document(project: str, view: str) -> dict[str, Any]:
    return {"version": 1, "kind": "data_api", "project": project,
            "sources": [{"name": "orders_daily", "view": view, "key": ["customer_id", "date"], "fields": SCHEMA,
                         "partition_field": "date", "clustering_fields": ["customer_id"],
                         "pii": ["customer_email"]}],
            "clients": [{"client_id": "bench", "secret_env": "HEADWATER_API_CLIENT_BENCH",
                         "scopes": ["orders_daily:read"], "rate_limit": {"requests": 10 ** 9, "per_seconds": 3600}}],
            "token": {"issuer": "http://bench"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def api_process(doc: dict[str, Any], secret: str, log: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "HEADWATER_CONNECTOR_SPEC": json.dumps(doc), "HEADWATER_API_SIGNING_KEY": secrets.token_hex(32),
           "HEADWATER_API_CLIENT_BENCH": secret, "PORT": str(port), "HEADWATER_CONNECTOR_HOST": "127.0.0.1",
           "PYTHONPATH": str(ROOT), "GCE_METADATA_HOST": "127.0.0.1:9"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving.api"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the API did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50_ms": round(statistics.median(ordered), 1), "p95_ms": round(q[94], 1), "p99_ms": round(q[98], 1),
            "mean_ms": round(statistics.fmean(ordered), 1)}


def walk(base: str, token: str, page_size: int, requests: int, latencies: list[float], rows_seen: list[int]) -> None:
    import httpx

    cursor = None
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for _ in range(requests):
            params = {"limit": page_size, **({"cursor": cursor} if cursor else {})}
            started = time.perf_counter()
            answer = http.get("/api/v1/orders_daily", params=params)
            latencies.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                raise SystemExit(f"GET answered {answer.status_code}: {answer.text[:300]}")
            body = answer.json()
            rows_seen.append(body["count"])
            cursor = body["next_cursor"]  # None at the end: the walk starts again


def bench_bigquery(project: str, doc: dict[str, Any], page_size: int, requests: int) -> dict[str, Any]:
    """The page queries alone, straight to the emulator (same SQL and parameters as the API's)."""
    from serving.api import values
    from serving.api.query import BigQueryReader, QueryOptions, page_query
    from serving.api.spec import parse_spec

    source = parse_spec(doc).sources[0]
    reader = BigQueryReader(project)
    masked = source.pii
    latencies: list[float] = []
    after = None
    for _ in range(requests):
        started = time.perf_counter()
        result = reader.run(page_query(source, [], after, page_size, masked), QueryOptions())
        latencies.append((time.perf_counter() - started) * 1000)
        rows = result.rows[:page_size]
        if len(result.rows) > page_size:
            after = [values.decode(source.field(c), values.encode(source.field(c), rows[-1][c])) for c in source.order]
        else:
            after = None
    return {"requests": requests, **percentiles(latencies),
            "requests_per_s": round(requests / (sum(latencies) / 1000), 1)}


def bench_api(base: str, token: str, page_size: int, requests: int, clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    rows_seen: list[int] = []
    per_client = max(1, requests // clients)
    threads = [threading.Thread(target=walk, args=(base, token, page_size, per_client, latencies, rows_seen))
               for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    total = per_client * clients
    if len(latencies) != total:
        raise SystemExit(f"{total - len(latencies)} requests failed")
    return {"clients": clients, "requests": total, **percentiles(latencies),
            "requests_per_s": round(total / elapsed, 1), "mean_rows_per_page": round(statistics.fmean(rows_seen), 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import httpx

    project = f"hw-bench-{uuid.uuid4().hex[:8]}"
    with emulators(), tempfile.TemporaryDirectory() as tmp:
        loading = time.perf_counter()
        view = load_view(project, args.rows, args.days)
        load_s = time.perf_counter() - loading
        doc = document(project, view)
        secret = secrets.token_urlsafe(24)
        warm = max(5, args.requests // 20)
        direct = bench_bigquery(project, doc, args.page_size, args.requests)
        with api_process(doc, secret, Path(tmp) / "api.log") as base:
            token = httpx.post(f"{base}/oauth/token", data={"grant_type": "client_credentials"},
                               auth=("bench", secret), timeout=30).json()["access_token"]
            walk(base, token, args.page_size, warm, [], [])  # warm-up: imports, connection pools
            single = bench_api(base, token, args.page_size, args.requests, 1)
            many = bench_api(base, token, args.page_size, args.requests, args.clients)
    results = {"machine": machine(), "rows": args.rows, "days": args.days, "page_size": args.page_size,
               "load_seconds": round(load_s, 1), "bigquery": direct, "api_1_client": single,
               f"api_{args.clients}_clients": many}
    m = results["machine"]
    print(f"machine: {m['description']}, {m['cpu']}, nproc={m['nproc']}, Python {m['python']}, "
          f"load {m['load_average_1m']}")
    print(f"{args.rows:,} rows over {args.days} days on bqemulator, pages of {args.page_size}, "
          f"{args.requests} requests per measurement")
    for name, r in (("bigquery (query alone)", direct), ("api, 1 client", single),
                    (f"api, {args.clients} clients", many)):
        print(f"  {name:<24} p50 {r['p50_ms']:>7.1f} ms   p95 {r['p95_ms']:>7.1f} ms   p99 {r['p99_ms']:>7.1f} ms"
              f"   {r['requests_per_s']:>6.1f} requests/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
