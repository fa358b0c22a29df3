"""End to end: a cloud_transfer source, from an S3 bucket to Silver, on this machine.

The example's ``aws_data_lake`` (S3 by role ARN) on a fresh project, applied by the CLI, its
jobs really running: the S3 bucket lives in moto's S3 server (started with the emulators), the
local stand-in for Storage Transfer (`providers.local_transfer`) copies from it into the landing
prefix and announces each run on the source's topic; everything downstream - the landing
prefix's notification (the watcher standing in for Cloud Storage's), the streaming
``gcs_to_bigquery`` job, Bronze, Silver, the dead letters - is the GCP code path.

The proof asked for: objects put into the S3 bucket reach Silver once; the next *scheduled* run
copies nothing already ingested (the landing copies stay: they are what it compares with), and
nothing is ingested twice; a new object then goes through alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from helpers import EXAMPLE, copy_example, edit_yaml, isolate_platform

from providers import bigquery_data, pubsub_data, stop_local
from providers.local_transfer import LocalTransferProvider, local_s3
from reconciler import cli

WAIT_S = 120.0
SAMPLES = EXAMPLE / "sample-data" / "aws_data_lake"
NAME = "aws-data-lake-transfer"


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
    tmp = tmp_path_factory.mktemp("transfer")
    project, unique = f"hw-e2e-{os.getpid() % 100000}-t", f"hw-{os.getpid() % 100000}-xfer"
    repo = copy_example(tmp, sources=["aws_data_lake"])
    isolate_platform(repo, project, unique)
    # Only the transfer source: platform-level resources of other patterns (Datastream connection
    # profiles) stay out of this platform.
    edit_yaml(repo / "platform.yaml", lambda d: d.pop("datastream", None))
    bucket = f"{unique}-partner-lake"
    edit_yaml(repo / "connectors" / "aws_data_lake.yaml", lambda d: d["ingestion"].update(source_bucket=bucket))
    local_s3().create_bucket(Bucket=bucket)
    saved = os.environ.get("HEADWATER_LOCAL_JOBS")
    os.environ["HEADWATER_LOCAL_JOBS"] = "run"
    state_dir = Path(os.environ["HEADWATER_STATE_DIR"])
    try:
        assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 0
        yield {"repo": repo, "project": project, "bucket": bucket, "state_dir": state_dir,
               "landing": f"{unique}-landing", "bronze_bucket": f"{unique}-bronze",
               "transfers": LocalTransferProvider(project, state_dir)}
    finally:
        stop_local(state_dir, project)
        if saved is None:
            os.environ.pop("HEADWATER_LOCAL_JOBS", None)
        else:
            os.environ["HEADWATER_LOCAL_JOBS"] = saved


def counts(project: str) -> tuple[int, int]:
    return (bigquery_data.count_rows(project, f"{project}.silver.aws_data_lake"),
            bigquery_data.count_rows(project, f"{project}.bronze.aws_data_lake_raw"))


def objects(bucket: str, prefix: str = "") -> dict[str, int]:
    from google.cloud import storage

    return {b.name: b.generation for b in storage.Client().list_blobs(bucket, prefix=prefix or None)}


def test_objects_put_into_s3_reach_silver_once_and_the_next_scheduled_run_copies_nothing(platform, capsys):
    project, transfers = platform["project"], platform["transfers"]
    s3 = local_s3()
    for path in sorted(SAMPLES.iterdir()):  # 9 records: 1 duplicate, 2 that fail a quality rule
        s3.put_object(Bucket=platform["bucket"], Key=f"inventory/{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket=platform["bucket"], Key="elsewhere/not-ours.json", Body=b'{"sku": "X"}\n')

    # The first run, on demand (Storage Transfer's transferJobs.run; its first tick is hours away).
    status = transfers.wait_for_run(NAME, transfers.run_now(NAME), 60)
    assert status["last"]["status"] == "SUCCESS" and status["last"]["counters"]["objectsCopiedToSink"] == "2"
    wait_for(lambda: counts(project) == (6, 9), "6 rows in Silver and the 9 records in Bronze")
    letters: list = []
    wait_for(lambda: letters.extend(pubsub_data.pull_available(project, "aws_data_lake-dlq-hold")) or len(letters) >= 2,
             "the 2 dead letters")
    assert sorted(m.attributes["reason"] for m in letters) == ["dq_allowed_values", "dq_range"]
    landing = objects(platform["landing"], "aws_data_lake/")
    assert sorted(landing) == ["aws_data_lake/inventory-2026-11-24.json", "aws_data_lake/inventory-2026-11-25.json"]
    wait_for(lambda: len(objects(platform["bronze_bucket"], "source=aws_data_lake/")) == 2,
             "both files archived in the Bronze bucket")
    assert objects(platform["landing"], "aws_data_lake/") == landing, "the landing copies stay, untouched"

    # The next run by the schedule: the schedule moves to the coming minute (a new schedule is a
    # new Storage Transfer job: the plan replaces it), and the tick runs it.
    tick = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1 if dt.datetime.now(dt.UTC).second < 50 else 2)
    edit_yaml(platform["repo"] / "connectors" / "aws_data_lake.yaml",
              lambda d: d["ingestion"].update(schedule=f"{tick.minute} * * * *"))
    assert cli.main(["apply", "--repo", str(platform["repo"]), "--auto-approve"]) == 0
    assert f"-/+ storage_transfer_job.{NAME}" in capsys.readouterr().out
    status = wait_for(lambda: (lambda s: s if s["finished"] >= 1 else None)(transfers.status(NAME)),
                      "the scheduled run", timeout=150)
    assert status["runs"] == 1 and status["last"]["status"] == "SUCCESS"
    counters = status["last"]["counters"]
    assert (counters["objectsCopiedToSink"], counters["objectsFromSourceSkippedBySync"]) == ("0", "2"), \
        "nothing already ingested is copied again"
    assert objects(platform["landing"], "aws_data_lake/") == landing, "no new generation to ingest"

    # A new object then goes through alone; once its rows are in, the completion message of the
    # scheduled run (which made the job sweep the prefix) has been handled long since: still once.
    s3.put_object(Bucket=platform["bucket"], Key="inventory/inventory-2026-11-26.json", Body=b"\n".join(
        json.dumps({"sku": f"SKU-{n}", "warehouse": "LIS", "quantity": n, "counted_at": "2026-11-26T06:00:00Z"})
        .encode() for n in (7, 8)) + b"\n")
    status = transfers.wait_for_run(NAME, transfers.run_now(NAME), 60)
    assert status["last"]["counters"]["objectsCopiedToSink"] == "1"
    wait_for(lambda: counts(project) == (8, 11), "the 2 new rows")
    time.sleep(5)
    assert counts(project) == (8, 11), "every record read once"
