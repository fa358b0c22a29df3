"""A resource that exists under a declared name but is not headwater's is shown as such and left
alone until it is adopted explicitly (a peer planned ``+ create`` over a bucket labelled
``owner=finance-team``, then on AlreadyExists gave it its labels and lifecycle rules)."""

from __future__ import annotations

import json

from google.cloud import storage


def their_bucket(project_id: str, name: str, location: str) -> storage.Bucket:
    bucket = storage.Client(project=project_id).create_bucket(name, location=location)
    bucket.labels = {"owner": "finance-team"}
    bucket._patch_property("location", location)  # the emulator keeps only the name on create
    bucket.patch()
    return bucket


def test_a_bucket_another_team_owns_under_a_declared_name_is_left_alone_until_adopted(platform_repo, hw, unique,
                                                                                     project_id):
    repo = platform_repo(["clickstream"])
    their_bucket(project_id, f"{unique}-bronze", "EUROPE-WEST1")
    client = storage.Client(project=project_id)
    address = f"storage_bucket.{unique}-bronze"

    code, out, _ = hw("plan", "--repo", repo, "--format", "json")
    change = next(c for c in json.loads(out)["changes"] if c["address"] == address)
    assert change["action"] == "import" and f"headwater adopt {address}" in change["blocked"]
    assert "not managed by headwater, labelled owner=finance-team" in change["blocked"]

    code, _, err = hw("apply", "--repo", repo, "--auto-approve")
    assert code == 1  # everything else converged; the bucket is blocked
    bucket = client.get_bucket(f"{unique}-bronze")
    assert {k: v for k, v in bucket.labels.items() if v is not None} == {"owner": "finance-team"}
    assert list(bucket.lifecycle_rules) == [], "nothing of headwater's was written to it"

    # --adopt on plan shows the import it would do, no longer blocked.
    code, out, _ = hw("plan", "--repo", repo, "--adopt", address, "--format", "json")
    change = next(c for c in json.loads(out)["changes"] if c["address"] == address)
    assert change["action"] == "import" and change["blocked"] is None

    code, out, err = hw("adopt", address, "--repo", repo, "--auto-approve")
    assert code == 0, out + err
    bucket = client.get_bucket(f"{unique}-bronze")
    labels = {k: v for k, v in bucket.labels.items() if v is not None}
    assert labels["owner"] == "finance-team" and labels["managed-by"] == "headwater", "adopted, its labels kept"
    assert list(bucket.lifecycle_rules), "managed from now on"
    # adopt imports the named address only: what the blocked import held back (the bucket's
    # readers, issue 13) is planned now, and the next apply converges.
    code, out, _ = hw("plan", "--repo", repo, "--format", "json")
    pending = [(c["action"], c["address"]) for c in json.loads(out)["changes"] if c["action"] != "no-op"]
    assert pending and all(action == "create" and f"{unique}-bronze" in created for action, created in pending), pending
    code, out, err = hw("apply", "--repo", repo, "--auto-approve")
    assert code == 0, out + err
    code, out, _ = hw("plan", "--repo", repo)
    assert code == 0 and "No changes." in out, out


def test_adopt_refuses_what_is_not_an_existing_unmanaged_resource(platform_repo, hw, unique):
    repo = platform_repo(["clickstream"])
    code, _, err = hw("adopt", f"storage_bucket.{unique}-bronze", "--repo", repo, "--auto-approve")
    assert code == 1 and "its plan is create, not an import" in err


def test_a_resource_that_could_only_be_adopted_by_replacing_it_is_never_adopted(platform_repo, hw, unique,
                                                                              project_id):
    repo = platform_repo(["clickstream"])
    their_bucket(project_id, f"{unique}-bronze", "US")  # the platform's buckets are in europe-west1
    code, out, err = hw("adopt", f"storage_bucket.{unique}-bronze", "--repo", repo, "--auto-approve")
    assert code == 1 and "cannot adopt: location differs" in out
    assert storage.Client(project=project_id).get_bucket(f"{unique}-bronze").location.upper() == "US"
