"""StorageProvider: pure normalization tests, then tests against gcp-storage-emulator.

The emulator has no project scoping (every client sees every bucket of the session), so bucket
names start with the per-test ``unique`` prefix and assertions look only at those buckets.
Requests are checked on the wire with a recording ``requests.Session`` handed to the official
client: nothing is mocked.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from google.cloud import storage

from providers.errors import AlreadyExists, PermanentError
from providers.storage import (
    StorageProvider,
    api_lifecycle_rules,
    canonical_lifecycle_rule,
    canonical_lifecycle_rules,
)
from reconciler.resources import Kind, Resource

# --- pure: lifecycle rule normalization --------------------------------------------------------


@pytest.mark.parametrize(
    ("api_rule", "canonical"),
    [
        pytest.param(
            {
                "action": {"type": "SetStorageClass", "storageClass": "NEARLINE"},
                "condition": {"age": 30, "matchesStorageClass": ["STANDARD"]},
            },
            {
                "action": {"type": "SetStorageClass", "storage_class": "NEARLINE"},
                "condition": {"age": 30, "matches_storage_class": ["STANDARD"]},
            },
            id="set-storage-class-camel-to-snake",
        ),
        pytest.param(
            {
                "action": {"type": "SetStorageClass", "storageClass": "archive"},
                "condition": {"age": 365, "matchesStorageClass": ["NEARLINE", "standard", "COLDLINE"]},
            },
            {
                "action": {"type": "SetStorageClass", "storage_class": "ARCHIVE"},
                "condition": {"age": 365, "matches_storage_class": ["COLDLINE", "NEARLINE", "STANDARD"]},
            },
            id="storage-classes-upper-and-sorted",
        ),
        pytest.param(
            {
                "action": {"type": "Delete", "storageClass": None},
                "condition": {
                    "age": 90,
                    "matchesStorageClass": [],
                    "createdBefore": None,
                    "matchesPrefix": "",
                },
            },
            {"action": {"type": "Delete"}, "condition": {"age": 90}},
            id="empty-and-none-entries-dropped",
        ),
        pytest.param(
            {"action": {"type": "Delete"}, "condition": {"age": 0, "isLive": False, "numNewerVersions": 3}},
            {
                "action": {"type": "Delete"},
                "condition": {"age": 0, "is_live": False, "num_newer_versions": 3},
            },
            id="false-and-zero-are-values",
        ),
        pytest.param(
            {"action": {"type": "Delete"}, "condition": {"matchesPrefix": ["logs/", "tmp/", "a/"]}},
            {"action": {"type": "Delete"}, "condition": {"matches_prefix": ["a/", "logs/", "tmp/"]}},
            id="list-conditions-sorted",
        ),
        pytest.param(
            {"action": {"type": "Delete"}, "condition": {"age": 7}},
            {"action": {"type": "Delete"}, "condition": {"age": 7}},
            id="canonical-input-unchanged",
        ),
    ],
)
def test_canonical_lifecycle_rule(api_rule: dict[str, Any], canonical: dict[str, Any]) -> None:
    assert canonical_lifecycle_rule(api_rule) == canonical
    assert canonical_lifecycle_rule(canonical) == canonical  # idempotent


def _rule(action: str, age: int | None = None, storage_class: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": {"type": action}, "condition": {}}
    if storage_class:
        rule["action"]["storage_class"] = storage_class
    if age is not None:
        rule["condition"]["age"] = age
    return rule


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        pytest.param(
            [
                _rule("Delete", 365),
                _rule("SetStorageClass", 30, "NEARLINE"),
                _rule("SetStorageClass", 90, "COLDLINE"),
            ],
            [
                _rule("SetStorageClass", 30, "NEARLINE"),
                _rule("SetStorageClass", 90, "COLDLINE"),
                _rule("Delete", 365),
            ],
            id="by-age",
        ),
        pytest.param(
            [_rule("SetStorageClass", 30, "NEARLINE"), _rule("Delete", 30)],
            [_rule("Delete", 30), _rule("SetStorageClass", 30, "NEARLINE")],
            id="same-age-by-action-type",
        ),
        pytest.param(
            [_rule("SetStorageClass", 30, "NEARLINE"), _rule("SetStorageClass", 30, "COLDLINE")],
            [_rule("SetStorageClass", 30, "COLDLINE"), _rule("SetStorageClass", 30, "NEARLINE")],
            id="same-age-and-type-by-storage-class",
        ),
        pytest.param(
            [{"action": {"type": "Delete"}, "condition": {"is_live": False}}, _rule("Delete", 400)],
            [_rule("Delete", 400), {"action": {"type": "Delete"}, "condition": {"is_live": False}}],
            id="rules-without-age-last",
        ),
    ],
)
def test_lifecycle_rules_sorted_canonically(
    rules: list[dict[str, Any]], expected: list[dict[str, Any]]
) -> None:
    assert canonical_lifecycle_rules(rules) == expected
    assert canonical_lifecycle_rules(list(reversed(rules))) == expected  # input order is irrelevant


def test_api_lifecycle_rules_are_camel_case() -> None:
    rules = [
        {
            "action": {"type": "SetStorageClass", "storage_class": "NEARLINE"},
            "condition": {"age": 30, "matches_storage_class": ["STANDARD"], "days_since_noncurrent_time": 3},
        }
    ]
    assert api_lifecycle_rules(rules) == [
        {
            "action": {"type": "SetStorageClass", "storageClass": "NEARLINE"},
            "condition": {"age": 30, "matchesStorageClass": ["STANDARD"], "daysSinceNoncurrentTime": 3},
        }
    ]


def test_location_is_immutable() -> None:
    assert StorageProvider("p").immutable_fields == {Kind.STORAGE_BUCKET: frozenset({"location"})}


# --- against the emulator ----------------------------------------------------------------------


class RecordingSession(requests.Session):
    """A real HTTP session that remembers every request it sends (method, path, JSON body)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, Any]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        body = kwargs.get("data") or kwargs.get("json")
        if isinstance(body, str | bytes):
            body = json.loads(body)
        self.sent.append((method, requests.utils.urlparse(url).path, body))
        return super().request(method, url, *args, **kwargs)

    def bodies(self, method: str) -> list[Any]:
        return [body for sent_method, _, body in self.sent if sent_method == method]


@pytest.fixture
def session(emulators: object) -> RecordingSession:
    return RecordingSession()


@pytest.fixture
def provider(project_id: str, session: RecordingSession) -> StorageProvider:
    # The client honours STORAGE_EMULATOR_HOST (set by the `emulators` fixture) by itself.
    return StorageProvider(project_id, client=storage.Client(project=project_id, _http=session))


LABELS = {"managed-by": "headwater", "headwater-platform": "test", "team": "data"}
SPEC = {
    "location": "EUROPE-WEST1",
    "storage_class": "STANDARD",
    "lifecycle_rules": [
        {
            "action": {"type": "SetStorageClass", "storage_class": "NEARLINE"},
            "condition": {"age": 30, "matches_storage_class": ["STANDARD"]},
        },
        {
            "action": {"type": "SetStorageClass", "storage_class": "COLDLINE"},
            "condition": {"age": 90, "matches_storage_class": ["NEARLINE", "STANDARD"]},
        },
        {"action": {"type": "Delete"}, "condition": {"age": 365}},
    ],
    "uniform_bucket_level_access": True,
}


def bucket(name: str, **spec: Any) -> Resource:
    return Resource(Kind.STORAGE_BUCKET, name, {**SPEC, **spec}, dict(LABELS))


def observed(provider: StorageProvider, prefix: str) -> dict[str, Resource]:
    return {r.name: r for r in provider.observe(Kind.STORAGE_BUCKET) if r.name.startswith(prefix)}


def test_create_then_observe_equals_desired(provider: StorageProvider, unique: str) -> None:
    desired = bucket(f"{unique}-raw")
    provider.create(desired)

    live = observed(provider, unique)[desired.name]
    assert live.spec == desired.spec
    assert live.labels == desired.labels


def test_create_with_other_values_round_trips(provider: StorageProvider, unique: str) -> None:
    desired = bucket(
        f"{unique}-cold",
        location="US",
        storage_class="COLDLINE",
        lifecycle_rules=[],
        uniform_bucket_level_access=False,
    )
    provider.create(desired)

    assert observed(provider, unique)[desired.name].spec == desired.spec


def test_unmanaged_buckets_are_not_observed(provider: StorageProvider, unique: str, project_id: str) -> None:
    client = storage.Client(project=project_id)
    client.create_bucket(f"{unique}-unlabelled")
    foreign = client.bucket(f"{unique}-foreign")
    foreign.labels = {"managed-by": "terraform"}
    client.create_bucket(foreign)
    foreign.patch()  # the emulator drops labels on create (see providers/storage.py)
    provider.create(bucket(f"{unique}-ours"))

    assert set(observed(provider, unique)) == {f"{unique}-ours"}


def test_second_create_raises_already_exists(provider: StorageProvider, unique: str) -> None:
    provider.create(bucket(f"{unique}-twice"))
    with pytest.raises(AlreadyExists):
        provider.create(bucket(f"{unique}-twice"))


def test_real_api_path_creates_with_a_single_request(
    provider: StorageProvider, session: RecordingSession, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without STORAGE_EMULATOR_HOST the provider takes the real-API path: one POST that carries
    # all the metadata. (The explicit client still points at the emulator.)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    provider.create(bucket(f"{unique}-real"))

    assert [method for method, _, _ in session.sent] == ["POST"]
    (body,) = session.bodies("POST")
    assert body == {
        "name": f"{unique}-real",
        "location": "EUROPE-WEST1",
        "storageClass": "STANDARD",
        "lifecycle": {"rule": api_lifecycle_rules(SPEC["lifecycle_rules"])},
        "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": True}},
        "labels": LABELS,
    }


def test_delete_missing_bucket_succeeds(provider: StorageProvider, unique: str) -> None:
    provider.delete(bucket(f"{unique}-never-created"))


def test_delete_removes_an_empty_bucket(provider: StorageProvider, unique: str) -> None:
    provider.create(bucket(f"{unique}-gone"))
    provider.delete(bucket(f"{unique}-gone"))
    assert observed(provider, unique) == {}


def test_delete_refuses_a_bucket_with_objects(
    provider: StorageProvider, unique: str, project_id: str
) -> None:
    provider.create(bucket(f"{unique}-data"))
    storage.Client(project=project_id).bucket(f"{unique}-data").blob("part-0.json").upload_from_string("{}")

    with pytest.raises(PermanentError, match="not empty") as raised:
        provider.delete(bucket(f"{unique}-data"))
    assert not isinstance(raised.value, AlreadyExists)
    assert f"{unique}-data" in observed(provider, unique)


@pytest.mark.parametrize(
    ("field", "value", "body"),
    [
        pytest.param("storage_class", "NEARLINE", {"storageClass": "NEARLINE"}, id="storage_class"),
        pytest.param(
            "lifecycle_rules",
            [{"action": {"type": "Delete"}, "condition": {"age": 30}}],
            {"lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 30}}]}},
            id="lifecycle_rules",
        ),
        pytest.param("lifecycle_rules", [], {"lifecycle": {"rule": []}}, id="lifecycle_rules-cleared"),
        pytest.param(
            "uniform_bucket_level_access",
            False,
            {"iamConfiguration": {"uniformBucketLevelAccess": {"enabled": False}}},
            id="uniform_bucket_level_access",
        ),
    ],
)
def test_update_patches_only_the_changed_field(
    provider: StorageProvider,
    session: RecordingSession,
    unique: str,
    field: str,
    value: Any,
    body: dict[str, Any],
) -> None:
    provider.create(bucket(f"{unique}-upd"))
    session.sent.clear()

    desired = bucket(f"{unique}-upd", **{field: value})
    provider.update(desired, [field])

    assert [(method, body) for method, _, body in session.sent] == [("PATCH", body)]
    assert observed(provider, unique)[desired.name].spec == desired.spec


def test_update_labels_adds_changes_and_removes(
    provider: StorageProvider, session: RecordingSession, unique: str
) -> None:
    provider.create(bucket(f"{unique}-labels"))
    session.sent.clear()

    desired = Resource(
        Kind.STORAGE_BUCKET,
        f"{unique}-labels",
        SPEC,
        {"managed-by": "headwater", "team": "platform", "tier": "gold"},
    )
    provider.update(desired, ["labels"])

    # One read (to learn which labels to remove), then one PATCH of the labels alone, with the
    # removed label sent as null (the JSON API merges label maps).
    assert [method for method, _, _ in session.sent] == ["GET", "PATCH"]
    (patch,) = session.bodies("PATCH")
    assert patch == {
        "labels": {"managed-by": "headwater", "team": "platform", "tier": "gold", "headwater-platform": None}
    }
    live = observed(provider, unique)[desired.name]
    assert live.labels == desired.labels
    assert live.spec == SPEC


def test_update_with_no_fields_sends_nothing(
    provider: StorageProvider, session: RecordingSession, unique: str
) -> None:
    provider.update(bucket(f"{unique}-noop"), [])
    assert session.sent == []


def test_update_rejects_immutable_location(provider: StorageProvider, unique: str) -> None:
    with pytest.raises(PermanentError, match="location"):
        provider.update(bucket(f"{unique}-x", location="US"), ["location"])


def test_observe_is_one_list_request(provider: StorageProvider, unique: str) -> None:
    for n in range(5):
        provider.create(bucket(f"{unique}-many-{n}"))
    before = dict(provider.api_calls())

    assert len(observed(provider, unique)) == 5
    calls = {k: v - before.get(k, 0) for k, v in provider.api_calls().items() if v != before.get(k, 0)}
    assert calls == {"storage.list_buckets": 1}


# --- reading by name (bucket names are global), what a delete loses ------------------------------


def test_read_finds_a_bucket_under_a_declared_name_whoever_owns_it(
    provider: StorageProvider, unique: str, project_id: str
) -> None:
    from google.cloud import storage as gcs

    client = gcs.Client(project=project_id)
    theirs = client.bucket(f"{unique}-finance")
    theirs.labels = {"owner": "finance-team"}
    client.create_bucket(theirs)
    theirs.labels = {"owner": "finance-team"}
    theirs.patch()  # the emulator keeps only the name on create
    assert f"{unique}-finance" not in observed(provider, unique), "observe sees only managed buckets"
    (found,) = provider.read(Kind.STORAGE_BUCKET, [f"{unique}-finance", f"{unique}-absent"])
    assert (found.name, found.labels, found.managed) == (f"{unique}-finance", {"owner": "finance-team"}, False)


def test_would_lose_counts_a_buckets_objects(provider: StorageProvider, unique: str, project_id: str) -> None:
    from google.cloud import storage as gcs

    provider.create(bucket(f"{unique}-raw"))
    blobs = gcs.Client(project=project_id).bucket(f"{unique}-raw")
    for i in range(3):
        blobs.blob(f"f{i}.json").upload_from_string("{}")
    assert provider.would_lose([bucket(f"{unique}-raw"), bucket(f"{unique}-absent")]) == {
        f"storage_bucket.{unique}-raw": "3 objects"}
