"""The local emulators: start/stop/state handling and the prerequisite messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, pubsub_v1, storage

from reconciler import local


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_each_emulator_answers(emulators: local.Emulators) -> None:
    assert _get(f"http://{emulators.pubsub_host}/").strip() == "Ok"
    assert _get(f"{emulators.storage_host}/").strip() == "OK"
    assert json.loads(_get(f"{emulators.bigquery_host}/readyz"))["status"] == "ok"
    assert emulators.env() == {
        "PUBSUB_EMULATOR_HOST": emulators.pubsub_host,
        "STORAGE_EMULATOR_HOST": emulators.storage_host,
        "BIGQUERY_EMULATOR_HOST": emulators.bigquery_host,
        "GOOGLE_CLOUD_PROJECT": emulators.project,
        "AWS_ENDPOINT_URL_S3": emulators.s3_host,  # moto's S3 server: cloud_transfer's source
        **emulators.postgres,  # database_cdc's local PostgreSQL (PGHOST, PGPORT, ...), when installed
    }
    if emulators.postgres:
        assert set(emulators.postgres) == {"PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSFILE"}
    assert "ListAllMyBucketsResult" in _get(f"{emulators.s3_host}/")
    for name, value in emulators.env().items():
        assert os.environ[name] == value


def test_official_clients_reach_the_emulators(emulators: local.Emulators, project_id: str, unique: str) -> None:
    # Only the environment set by the fixture tells the clients where to go.
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.create_topic(name=publisher.topic_path(project_id, "orders"))
    assert [t.name for t in publisher.list_topics(project=f"projects/{project_id}")] == [topic.name]

    gcs = storage.Client(project=project_id)
    gcs.create_bucket(f"{unique}-raw")
    assert f"{unique}-raw" in [b.name for b in gcs.list_buckets()]

    bq = bigquery.Client(
        project=project_id,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=emulators.bigquery_host),
    )
    bq.create_dataset("ds")
    assert [d.dataset_id for d in bq.list_datasets()] == ["ds"]
    assert [row.x for row in bq.query("SELECT 1 AS x").result()] == [1]


def test_start_returns_the_running_emulators(emulators: local.Emulators, tmp_path: Path) -> None:
    (tmp_path / local.STATE_FILE).write_text(json.dumps(emulators.__dict__))
    started = time.monotonic()
    assert local.start(tmp_path) == emulators
    assert time.monotonic() - started < 1, "should reuse, not start new emulators"
    assert local.load(tmp_path) == emulators


def test_stop_kills_the_process_group_and_forgets_it(tmp_path: Path) -> None:
    # A stand-in child like the Pub/Sub launcher: a leader with a grandchild in its group.
    with subprocess.Popen(["bash", "-c", "sleep 60 & echo $! ; wait"], stdout=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        grandchild = int(proc.stdout.readline())
        proc.stdout.close()
        state = local.Emulators("127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3", "p", {"fake": proc.pid})
        (tmp_path / local.STATE_FILE).write_text(json.dumps(state.__dict__))
        assert local.load(tmp_path) == state

        assert local.stop(tmp_path) is True
        proc.wait(timeout=5)
        assert not local._alive(grandchild)
    assert local.load(tmp_path) is None
    assert local.stop(tmp_path) is False


def test_prerequisites_name_the_install_command_for_java(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(local.shutil, "which", lambda cmd, *a, **kw: None if cmd == "java" else real_which(cmd, *a, **kw))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    problems = local.check_prerequisites()
    assert any("apt-get install -y openjdk-17-jre-headless" in p for p in problems), problems


def test_prerequisites_name_the_install_command_for_pubsub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(local, "_gcloud_sdk_root", lambda: tmp_path)  # an SDK without the component
    problems = local.check_prerequisites()
    assert any("gcloud components install pubsub-emulator" in p for p in problems), problems


def test_start_refuses_with_instructions_when_something_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(local, "check_prerequisites", lambda: [local.INSTALL_JAVA])
    with pytest.raises(local.LocalSetupError, match="openjdk-17-jre-headless"):
        local.start(tmp_path)
    assert local.load(tmp_path) is None
