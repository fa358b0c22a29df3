"""GCP's limits are checked at validate on what compile builds, at the line of the setting that
pushes a resource over (peers validated 62 platform labels although the resources carried 66,
and a Cloud Scheduler description of 528 characters failed only inside apply)."""

from __future__ import annotations

from helpers import copy_example, edit_yaml


def line_of(path, text):
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_62_platform_labels_fail_validate_at_the_labels_line(tmp_path, hw):
    repo = copy_example(tmp_path, ["clickstream"])
    edit_yaml(repo / "platform.yaml", lambda d: d.update(labels={f"l{i:02d}": "x" for i in range(62)}))
    code, _, err = hw("validate", "--repo", repo)
    assert code == 1
    assert f"platform.yaml:{line_of(repo / 'platform.yaml', 'labels:')}:" in err
    assert "would carry 66 labels" in err or "would carry 70 labels" in err
    assert "GCP allows 64" in err


def test_labels_that_overflow_a_cloud_scheduler_description_fail_validate_not_apply(tmp_path, hw):
    repo = copy_example(tmp_path, ["orders"])
    edit_yaml(repo / "platform.yaml", lambda d: d.update(labels={f"team-{i}": "a" * 40 for i in range(8)}))
    code, _, err = hw("validate", "--repo", repo)
    assert code == 1 and "Cloud Scheduler" in err and "over Cloud Scheduler's 500" in err
    assert f"platform.yaml:{line_of(repo / 'platform.yaml', 'labels:')}:" in err
