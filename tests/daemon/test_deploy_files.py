"""The deployment files say what the issue requires (docker cannot run here, so read them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from reconciler import pr

ROOT = Path(__file__).resolve().parents[2]


def test_requirements_lock_is_fresh():
    result = subprocess.run([sys.executable, str(ROOT / "deploy/lock_requirements.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dockerfile_is_slim_non_root_pinned_and_runs_the_daemon():
    text = (ROOT / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    assert "--no-deps -r deploy/requirements.lock" in text and "pip install --no-deps ." in text
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["headwater", "run"]' in text


def test_cloud_run_service_runs_exactly_one_always_on_instance_with_probes_and_secret_manager():
    service = yaml.safe_load((ROOT / "deploy/cloudrun/service.yaml").read_text())
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == annotations["autoscaling.knative.dev/maxScale"] == "1"
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    [container] = template["spec"]["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    for secret in ("HEADWATER_WEBHOOK_SECRET", "HEADWATER_GIT_TOKEN", "HEADWATER_NOTIFY_WEBHOOK"):
        assert "secretKeyRef" in env[secret]["valueFrom"] and "value" not in env[secret]
    assert int(env["HEADWATER_SHUTDOWN_GRACE"]["value"]) < 10


def test_pr_workflows_plan_read_only_and_update_one_comment_by_marker():
    workflow = (ROOT / "deploy/github/plan-on-pr.yml").read_text()
    parsed = yaml.safe_load(workflow)
    assert parsed["permissions"] == {"contents": "read", "pull-requests": "write", "id-token": "write"}
    assert "headwater plan --repo . --base" in workflow and "--format markdown" in workflow
    assert pr.MARKER in workflow and "updateComment" in workflow
    cloudbuild = (ROOT / "deploy/cloudbuild/plan-on-pr.yaml").read_text()
    assert pr.MARKER in cloudbuild and '"PATCH"' in cloudbuild
    assert "headwater plan --repo . --base" in cloudbuild
