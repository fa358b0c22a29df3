"""`headwater local up/down` and `headwater demo` (the README's main command) end to end.

These start their own emulators in a private state directory (about 2 s each), as a user would.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from providers import localrunner
from reconciler import cli, local, local_postgres


def test_local_up_prints_the_environment_and_down_stops(tmp_path, capsys):
    state_dir = tmp_path / "state"
    assert cli.main(["local", "up", "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr().out
    exports = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    # database_cdc (issue 10): the local PostgreSQL's libpq variables, when it is installed.
    postgres = {"PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSFILE"} if local_postgres.binaries() else set()
    assert set(exports) == {"PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST",
                            "GOOGLE_CLOUD_PROJECT", "HEADWATER_STATE_DIR", "AWS_ENDPOINT_URL_S3"} | postgres
    assert exports["HEADWATER_STATE_DIR"] == str(state_dir.resolve())
    with urllib.request.urlopen(exports["AWS_ENDPOINT_URL_S3"] + "/", timeout=5) as resp:
        assert b"ListAllMyBucketsResult" in resp.read(), "moto's S3 server: cloud_transfer's source"
    with urllib.request.urlopen(f"http://{exports['PUBSUB_EMULATOR_HOST']}/", timeout=5) as resp:
        assert resp.read().strip() == b"Ok"
    running = local.load(state_dir)
    server = local_postgres.load(state_dir)
    if postgres:
        import psycopg

        with psycopg.connect(server.conninfo()) as conn:
            assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
    assert cli.main(["local", "down", "--state-dir", str(state_dir)]) == 0
    assert local.load(state_dir) is None
    assert not any(local._alive(pid) for pid in running.pids.values())
    if postgres:
        assert not local._alive(server.pid) and not Path(server.data_dir).exists(), "stopped, its data removed"



def test_demo_converges_and_cleans_up(tmp_path, capsys):
    before = {name: os.environ.get(name) for name in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")}
    state_dir = tmp_path / "state"
    assert cli.main(["demo", "--state-dir", str(state_dir)]) == 0
    out, err = capsys.readouterr()
    assert "Plan: 137 to create" in out
    assert "Apply complete: 137 succeeded, 0 failed, 0 skipped" in out
    assert "No changes. Live state matches the desired state." in out
    # The sample data went through the local jobs: bad and duplicate records included.
    assert ("orders: 23 records sent -> Silver 16 rows, dead letters 5 (1 dq_allowed_values, 1 dq_positive_number, "
            "1 dq_valid_email, 1 missing_required, 1 unparseable), Gold: orders_daily 10 rows") in out
    assert "clickstream: 20 records sent -> Silver 15 rows, dead letters 3" in out
    assert "payments: 12 records sent -> Silver 9 rows, dead letters 2 (1 dq_allowed_values, 1 dq_range)" in out
    assert "aws_data_lake: put 2 objects (9 records) into s3://acme-data-lake-exports/inventory/" in err
    assert "a second run copied 0 (2 already there)" in err
    assert ("aws_data_lake: 9 records sent -> Silver 6 rows, dead letters 2 (1 dq_allowed_values, 1 dq_range), "
            "Gold: none") in out
    assert ("postgres_orders: 6 rows backfilled + 9 row changes in PostgreSQL -> Bronze 15 change events, Silver 8 "
            "rows (orders 2, order_items 3, customers 3) = the tables' current state in PostgreSQL") in out
    # issue 12: the serving layer once Gold is there (reconciler/serving_demo.py).
    assert "orders: features orders 10 rows (0 using data after their feature_timestamp)" in out
    assert "orders: reporting view reporting.orders_daily 10 rows" in out
    assert "orders_daily 10 rows in 2 pages of 5 with a token for partner-acme" in out
    assert "/api/v1/orders_daily?limit=5" in out and "/oauth/token" in out
    assert "Demo complete: the platform converged and moved the sample data." in out
    assert "ended with exit code" not in out, "every run succeeded (batch runs also move their files to Bronze)"
    assert local.load(state_dir) is None, "the demo stops the emulators it started"
    assert localrunner.load_records(state_dir) == [], "and the jobs it started"
    assert {name: os.environ.get(name) for name in before} == before
