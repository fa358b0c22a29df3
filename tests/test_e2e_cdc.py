"""End to end: a database_cdc source, from a real PostgreSQL to Silver, on this machine.

The example's ``postgres_orders`` (orders, order_items, customers) on a fresh project, applied by
the CLI, everything really running: the source database is the local PostgreSQL started with the
emulators (`reconciler.local_postgres`: wal_level logical, wal2json); the local stand-in for
Datastream (`providers.local_datastream`) reads the stream's replication slot and writes
Datastream's event files into the landing bucket; everything downstream - the landing prefix's
notification (the watcher standing in for Cloud Storage's), the streaming
``datastream_to_bigquery`` job, the Bronze change logs, the Silver tables, the dead letters - is the
GCP code path.

The proof asked for: rows inserted, updated (twice, across two transactions, their events
applied in the opposite order) and deleted in PostgreSQL appear in Silver as the tables' current
state; Bronze holds every change, once; a restarted reader - killed outright, or dying between
writing its files and confirming its slot - loses nothing and duplicates nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from helpers import copy_example, edit_yaml, isolate_platform

from providers import stop_local
from providers.local_datastream import LocalDatastreamProvider, Reader, connect
from reconciler import cli, local
from reconciler.resources import Kind

WAIT_S = 120.0
STREAM = "postgres-orders"

TABLES_SQL = """
CREATE TABLE customers (customer_id bigint PRIMARY KEY, name text NOT NULL, email text, country text,
                        updated_at timestamptz);
CREATE TABLE orders (order_id bigint PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL,
                     total numeric(10,2), placed_at timestamptz NOT NULL);
CREATE TABLE order_items (order_id bigint, line int, sku text NOT NULL, quantity int NOT NULL,
                          unit_price numeric(10,2) NOT NULL, PRIMARY KEY (order_id, line));
INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', 'GB', '2026-11-30 09:00:00+00');
INSERT INTO orders VALUES (1, 1, 'new', 10.00, '2026-11-30 09:00:00+00');
"""


def wait_for(condition, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def platform(emulators, tmp_path_factory):
    info = local.load(Path(os.environ["HEADWATER_STATE_DIR"]))
    if not info or not info.postgres:
        pytest.skip("no local PostgreSQL (scripts/setup installs postgresql and postgresql-15-wal2json)")
    tmp = tmp_path_factory.mktemp("cdc")
    tag = os.getpid() % 100000
    project, unique, database = f"hw-e2e-{tag}-cdc", f"hw-{tag}-cdc", f"shop_{tag}"
    pg = info.postgres
    password = Path(pg["PGPASSFILE"]).read_text().strip().rsplit(":", 1)[1]
    with psycopg.connect(host=pg["PGHOST"], port=pg["PGPORT"], user=pg["PGUSER"], password=password,
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    profile = {"host": pg["PGHOST"], "port": int(pg["PGPORT"]), "user": pg["PGUSER"], "database": database}
    with connect(profile, password) as conn:
        conn.execute(TABLES_SQL)

    repo = copy_example(tmp, sources=["postgres_orders"])
    isolate_platform(repo, project, unique)
    edit_yaml(repo / "platform.yaml", lambda d: d["datastream"]["connection_profiles"]["shop-postgres"].update(
        host=pg["PGHOST"], port=int(pg["PGPORT"]), user=pg["PGUSER"], database=database))
    secrets = tmp / "secrets"
    secrets.mkdir()
    (secrets / "shop-postgres-password").write_text(password)
    saved = {name: os.environ.get(name) for name in ("HEADWATER_LOCAL_JOBS", "HEADWATER_SECRETS_DIR")}
    os.environ.update(HEADWATER_LOCAL_JOBS="run", HEADWATER_SECRETS_DIR=str(secrets))
    state_dir = Path(os.environ["HEADWATER_STATE_DIR"])
    try:
        assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 0
        yield {"repo": repo, "project": project, "state_dir": state_dir, "profile": profile, "password": password,
               "landing": f"{unique}-landing", "streams": LocalDatastreamProvider(project, state_dir)}
    finally:
        stop_local(state_dir, project)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --------------------------------------------------------------------------- helpers


def sql(platform, *statements: str) -> None:
    """Each statement its own transaction."""
    with connect(platform["profile"], platform["password"]) as conn:
        for statement in statements:
            conn.execute(statement)


def source_rows(platform, table: str, key: str) -> list[dict]:
    with connect(platform["profile"], platform["password"]) as conn:
        cursor = conn.execute(f"SELECT * FROM {table} ORDER BY {key}")  # noqa: S608 - test constants
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def query(project: str, text: str) -> list[dict]:
    from beam.common.clients import bigquery_client

    return [dict(r) for r in bigquery_client(project).query(text).result()]


def silver(platform, table: str, key: str) -> list[dict]:
    project = platform["project"]
    rows = query(project, f"SELECT * FROM `{project}.silver.postgres_orders_{table}` ORDER BY {key}")
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def bronze(platform, table: str) -> list[dict]:
    project = platform["project"]
    return query(project, f"SELECT * FROM `{project}.bronze.postgres_orders_{table}_changes` ORDER BY _change_position")


def same(a: list[dict], b: list[dict]) -> bool:
    """Rows equal as values (the source's Decimals and datetimes vs BigQuery's)."""
    def norm(v):
        if isinstance(v, Decimal):
            return float(v)
        if isinstance(v, dt.datetime):
            return v.astimezone(dt.UTC)
        return v
    return [{k: norm(v) for k, v in r.items()} for r in a] == [{k: norm(v) for k, v in r.items()} for r in b]


def current_state_everywhere(platform) -> bool:
    return all(same(silver(platform, t, k), source_rows(platform, t, k))
               for t, k in (("orders", "order_id"), ("order_items", "order_id, line"), ("customers", "customer_id")))


# --------------------------------------------------------------------------- the tests


def test_backfill_then_inserts_updates_and_deletes_reach_silver_as_the_current_state(platform):
    # The rows that were there before the stream started: its backfill.
    wait_for(lambda: silver(platform, "orders", "order_id") and silver(platform, "customers", "customer_id"),
             "the backfilled rows")
    sql(platform,
        "INSERT INTO orders VALUES (2, 1, 'new', 20.00, now()), (3, 1, 'new', 30.00, now())",
        "INSERT INTO order_items VALUES (2, 1, 'SKU-A', 2, 5.00), (2, 2, 'SKU-B', 1, 10.00)",
        "UPDATE orders SET status = 'paid' WHERE order_id = 2",
        "DELETE FROM orders WHERE order_id = 3",
        "UPDATE customers SET email = 'ada@lovelace.example', updated_at = now() WHERE customer_id = 1",
        "INSERT INTO customers VALUES (2, 'Grace', NULL, 'US', now())")
    wait_for(lambda: current_state_everywhere(platform), "Silver equal to the source tables")
    changes = bronze(platform, "orders")
    assert [(r["order_id"], r["_change_type"]) for r in changes] == [
        (1, "INSERT"), (2, "INSERT"), (3, "INSERT"), (2, "UPDATE-INSERT"), (3, "DELETE")]
    assert changes[0]["_payload"] and json.loads(changes[0]["_payload"])["read_method"] == "postgresql-backfill"


def test_two_updates_applied_in_the_opposite_order_leave_the_newer(platform, tmp_path):
    """Two transactions update one row; their event files land newest first. Silver keeps the newer."""
    streams: LocalDatastreamProvider = platform["streams"]
    record = streams.stream_record(STREAM)
    # Stand the running reader aside and read the two transactions into separate files of a
    # staging prefix, with the reader's own code, one pass each.
    streams.delete(record_resource(record))
    sql(platform, "INSERT INTO orders VALUES (10, 1, 'new', 1.00, now())")
    staging = tmp_path / f"{record.name}.json"
    staging.write_text(json.dumps(record_dict(record)))
    reader = Reader(staging, platform["password"])
    reader.prefix = "staging/" + reader.prefix
    with connect(platform["profile"], platform["password"]) as conn:
        assert reader.one_pass(conn) == 1  # the insert
        sql(platform, "UPDATE orders SET status = 'paid', total = 2.00 WHERE order_id = 10")
        assert reader.one_pass(conn) == 1  # T1
        sql(platform, "UPDATE orders SET status = 'shipped' WHERE order_id = 10")
        assert reader.one_pass(conn) == 1  # T2
    files = staged_files(platform)
    assert len(files) == 3
    insert, first, second = files
    land(platform, insert)
    land(platform, second)
    wait_for(lambda: [r["status"] for r in silver(platform, "orders", "order_id") if r["order_id"] == 10] == ["shipped"],
             "the newer update in Silver")
    land(platform, first)  # the older update arrives last
    wait_for(lambda: len([r for r in bronze(platform, "orders") if r["order_id"] == 10]) == 3,
             "the late, older update in the Bronze change log")
    time.sleep(3)
    (row,) = [r for r in silver(platform, "orders", "order_id") if r["order_id"] == 10]
    assert (row["status"], float(row["total"])) == ("shipped", 2.0), "the late, older event did not overwrite"

    # The stream again (apply starts a stream that is not running): nothing read twice.
    assert cli.main(["apply", "--repo", str(platform["repo"]), "--auto-approve"]) == 0
    sql(platform, "UPDATE orders SET status = 'delivered' WHERE order_id = 10")
    wait_for(lambda: current_state_everywhere(platform), "Silver equal to the source tables")
    assert len([r for r in bronze(platform, "orders") if r["order_id"] == 10]) == 4


def test_a_restarted_reader_loses_and_duplicates_nothing(platform):
    streams: LocalDatastreamProvider = platform["streams"]
    before = {e["_event_id"] for e in bronze(platform, "order_items")}

    # 1. Killed outright in the middle of a stream of transactions; rows written while it is down.
    for n in range(100, 130):
        sql(platform, f"INSERT INTO order_items VALUES ({n}, 1, 'SKU-{n}', 1, 1.00)")
        if n == 110:
            record = streams.stream_record(STREAM)
            os.killpg(record.pid, signal.SIGKILL)
    wait_for(lambda: observed_state(streams) == "FAILED", "the dead reader observed as FAILED")
    assert cli.main(["apply", "--repo", str(platform["repo"]), "--auto-approve"]) == 0  # restarts it

    # 2. Dying between writing its files and confirming the slot: the same events are written again.
    record = streams.stream_record(STREAM)
    os.killpg(record.pid, signal.SIGKILL)
    sql(platform, "UPDATE order_items SET quantity = 5 WHERE order_id = 105",
        "DELETE FROM order_items WHERE order_id = 106")
    dying = Reader(Path(record.log).with_suffix(".json"), platform["password"])
    written = dying.status.get("events_written", 0)
    with connect(platform["profile"], platform["password"]) as conn, pytest.raises(RuntimeError):
        dying.one_pass(NoAdvance(conn))
    assert dying.status["events_written"] - written >= 2, "the pass wrote its files, then 'died' before confirming"
    assert cli.main(["apply", "--repo", str(platform["repo"]), "--auto-approve"]) == 0

    wait_for(lambda: current_state_everywhere(platform), "Silver equal to the source tables after the restarts")
    events = bronze(platform, "order_items")
    ids = [e["_event_id"] for e in events]
    assert len(ids) == len(set(ids)), "no change twice in Bronze"
    new = [e for e in events if e["_event_id"] not in before]
    assert sorted((e["order_id"], e["_change_type"]) for e in new) == sorted(
        [(n, "INSERT") for n in range(100, 130)] + [(105, "UPDATE-INSERT"), (106, "DELETE")]), "every change once"
    status = streams.status(STREAM)
    assert status["lag_bytes"] >= 0 and status["wal_retained_bytes"] > 0
    (stream,) = streams.observe(Kind.DATASTREAM_STREAM)
    assert stream.status["state"] == "RUNNING" and "of WAL" in stream.status["replication"]


def test_status_reports_the_streams_replication_lag_and_a_failed_reader_with_its_reason(platform, capsys):
    repo = str(platform["repo"])
    cli.main(["status", "--repo", repo])
    out = capsys.readouterr().out
    assert "replication:" in out
    line = next(x for x in out.splitlines() if "postgres_orders: postgres-orders:" in x)
    assert "Healthy: stream RUNNING; slot retains" in line and "of WAL" in line
    record = platform["streams"].stream_record(STREAM)
    os.killpg(record.pid, signal.SIGKILL)
    wait_for(lambda: observed_state(platform["streams"]) == "FAILED", "the dead reader observed as FAILED")
    cli.main(["status", "--repo", repo])
    out = capsys.readouterr().out
    assert "postgres-orders: Degraded: stream FAILED: the local reader has stopped" in out
    assert cli.main(["apply", "--repo", repo, "--auto-approve"]) == 0  # restarts it
    assert observed_state(platform["streams"]) == "RUNNING"


# --------------------------------------------------------------------------- plumbing


def observed_state(streams) -> str | None:
    return next((r.status["state"] for r in streams.observe(Kind.DATASTREAM_STREAM) if r.name == STREAM), None)


class NoAdvance:
    """A connection whose slot advance fails: a reader dying between its files and its confirmation."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def execute(self, query, params=None):
        if "pg_replication_slot_advance" in query:
            raise RuntimeError("killed before confirming")
        return self.conn.execute(query, params)


def record_resource(record):
    from reconciler.resources import Resource

    return Resource(Kind.DATASTREAM_STREAM, record.name, record.spec, record.labels)


def record_dict(record) -> dict:
    from dataclasses import asdict

    return asdict(record)


def staged_files(platform) -> list[str]:
    from google.cloud import storage

    names = [b.name for b in storage.Client().list_blobs(platform["landing"], prefix="staging/")]
    return sorted(names, key=lambda n: n.rsplit("/", 1)[-1].split("_")[-1])  # by last LSN


def land(platform, staged: str) -> None:
    from google.cloud import storage

    bucket = storage.Client().bucket(platform["landing"])
    bucket.copy_blob(bucket.blob(staged), bucket, staged.removeprefix("staging/"))
