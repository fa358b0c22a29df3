"""Cloud Storage provider: buckets, through google-cloud-storage.

Kind: ``Kind.STORAGE_BUCKET``. This module is the only one that imports ``google.cloud.storage``.
It implements the contract in `providers.base`.

The client is created lazily. google-cloud-storage honours ``STORAGE_EMULATOR_HOST`` by itself
(endpoint and anonymous credentials), so one code path serves GCP and gcp-storage-emulator. The
emulator is treated differently in exactly two marked places (search for "EMULATOR DEPARTURE"):
`StorageProvider._store_metadata_on_emulator` (create) and `bucket_labels` (observe).

Canonical spec (what `observe` returns and what `create`/`update` accept; always these keys)::

    {
        "location": "EUROPE-WEST1",            # upper case, as the real API reports it
        "storage_class": "STANDARD",           # upper case
        "lifecycle_rules": [                   # [] when the bucket has none
            {"action": {"type": "SetStorageClass", "storage_class": "NEARLINE"},
             "condition": {"age": 30, "matches_storage_class": ["STANDARD"]}},
            {"action": {"type": "Delete"}, "condition": {"age": 365}},
        ],
        "uniform_bucket_level_access": True,
    }

Lifecycle rules, normalization (`canonical_lifecycle_rules`):

* keys are snake_case (the JSON API's ``storageClass`` becomes ``storage_class``,
  ``matchesStorageClass`` becomes ``matches_storage_class``, and so on for every condition);
* condition entries that are ``None`` or empty (``[]``, ``""``) are dropped - the API treats
  them as "no condition". ``False`` and ``0`` are real values and stay (``is_live: False``,
  ``age: 0``);
* list-valued conditions (``matches_storage_class``, ``matches_prefix``...) are sets for the
  API, so they are sorted;
* the rules themselves are sorted, because a bucket's rules are a set as well (every rule whose
  condition holds applies; order carries no meaning) while the server echoes them in the order
  they were written. Sort key: ``(age, action type, action storage class)``, rules without an
  age last, and the rule's JSON as the final tie-break so the order is total. compile emits
  tiers by increasing age, which is this order. `canonical_lifecycle_rules` is pure, so the
  desired side can use it too.

Labels are returned whole (``managed-by`` and the other headwater labels included). Only buckets
labelled ``managed-by=headwater`` are observed. Bucket names are global: `StorageProvider.read`
gets declared buckets that observe did not find, by name (one get each), wherever they are, so a
bucket someone else owns under a declared name is shown as theirs (an ``import`` to adopt, or a
name to change) instead of planned as a create that would take it over. One this project may not
read (403: another project's) is reported with no spec and no labels.
``would_lose``: how many objects a bucket holds (a list of up to 1,000).

Retries: every request goes through `providers.errors.call` (the one retry layer) and is sent
with ``retry=None`` so the client library does not retry underneath it; `api_calls` therefore
counts real HTTP requests, one per attempt and per list page.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from google.cloud import storage

from providers.calls import CallCounter
from providers.errors import AlreadyExists, NotFound, PermanentError, call
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

T = TypeVar("T")

# Per-request deadline (seconds). Bucket metadata requests are small.
RPC_TIMEOUT_S = 60.0
# Ask for large pages so that observe is one request in practice (the API caps pages at 1000).
LIST_PAGE_SIZE = 1000

# A bucket's location is fixed at creation (the real API rejects a change); a new location
# means a new bucket, which the planner shows as a replacement.
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {Kind.STORAGE_BUCKET: frozenset({"location"})}
LOSS_COUNT_LIMIT = 1000  # would_lose counts a bucket's objects up to this many (one list page)
# The spec keys `update` can change in place, plus "labels".
UPDATABLE_FIELDS = frozenset({"storage_class", "lifecycle_rules", "uniform_bucket_level_access", "labels"})


# --- Normalization: server objects -> canonical spec (pure functions) ---------------------------


def _snake(key: str) -> str:
    """``matchesStorageClass`` -> ``matches_storage_class``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _camel(key: str) -> str:
    """``matches_storage_class`` -> ``matchesStorageClass``."""
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, list | tuple | dict | str) and not value)


def canonical_lifecycle_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """One lifecycle rule, from the API's (camelCase) or our (snake_case) shape, made canonical."""
    action = {_snake(k): v for k, v in (rule.get("action") or {}).items() if not _is_unset(v)}
    if "storage_class" in action:
        action["storage_class"] = str(action["storage_class"]).upper()
    condition: dict[str, Any] = {}
    for key, value in (rule.get("condition") or {}).items():
        if _is_unset(value):
            continue
        if isinstance(value, list | tuple):
            value = sorted(value)
        condition[_snake(key)] = value
    if "matches_storage_class" in condition:
        condition["matches_storage_class"] = sorted(c.upper() for c in condition["matches_storage_class"])
    return {"action": action, "condition": condition}


def _rule_sort_key(rule: Mapping[str, Any]) -> tuple[Any, ...]:
    age = rule["condition"].get("age")
    return (
        age is None,  # rules without an age go last
        age or 0,
        rule["action"].get("type", ""),
        rule["action"].get("storage_class", ""),
        json.dumps(rule, sort_keys=True),  # total order for otherwise equal keys
    )


def canonical_lifecycle_rules(rules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Lifecycle rules in canonical shape and order (see the module docstring)."""
    return sorted((canonical_lifecycle_rule(r) for r in rules), key=_rule_sort_key)


def api_lifecycle_rules(rules: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Canonical rules -> the JSON API's ``lifecycle.rule`` items (camelCase keys)."""
    return [
        {
            "action": {_camel(k): v for k, v in rule["action"].items()},
            "condition": {_camel(k): v for k, v in rule["condition"].items()},
        }
        for rule in canonical_lifecycle_rules(rules)
    ]


def bucket_spec(bucket: storage.Bucket) -> dict[str, Any]:
    """The canonical spec of a live bucket."""
    return {
        "location": (bucket.location or "").upper(),
        "storage_class": (bucket.storage_class or "").upper(),
        # LifecycleRule* objects are dicts in the API's shape.
        "lifecycle_rules": canonical_lifecycle_rules([dict(r) for r in bucket.lifecycle_rules]),
        "uniform_bucket_level_access": bool(bucket.iam_configuration.uniform_bucket_level_access_enabled),
    }


def bucket_labels(bucket: storage.Bucket) -> dict[str, str]:
    """A live bucket's labels.

    EMULATOR DEPARTURE (emulator workaround): gcp-storage-emulator stores ``null`` for a label
    removed by a PATCH instead of deleting the key. A label with no value does not exist for
    the real API, so dropping ``None`` values is correct everywhere and harmless on GCP.
    """
    return {key: value for key, value in bucket.labels.items() if value is not None}


def on_emulator() -> bool:
    """True when the client library talks to the emulator (it reads the same variable)."""
    return bool(os.environ.get("STORAGE_EMULATOR_HOST"))


# --- Canonical spec -> request properties -------------------------------------------------------


def _set_storage_class(bucket: storage.Bucket, value: Any) -> None:
    bucket.storage_class = str(value).upper()


def _set_lifecycle_rules(bucket: storage.Bucket, value: Any) -> None:
    # [] (or None) sends {"rule": []}, which clears the bucket's rules.
    bucket.lifecycle_rules = api_lifecycle_rules(value or [])


def _set_uniform_access(bucket: storage.Bucket, value: Any) -> None:
    # Not through `bucket.iam_configuration`: its setter sends the whole IAMConfiguration, which
    # always includes publicAccessPrevention ("inherited" unless set) and would silently undo an
    # enforced public access prevention on the real API. We send only the flag we manage.
    bucket._patch_property("iamConfiguration", {"uniformBucketLevelAccess": {"enabled": bool(value)}})


# Our spec keys -> how to set them on a Bucket object. Setting a property records it in the
# bucket's `_changes`, and `Bucket.patch()` sends exactly the recorded properties. Location is
# not here: it is an argument of create_bucket and never changes afterwards.
_SETTERS: dict[str, Callable[[storage.Bucket, Any], None]] = {
    "storage_class": _set_storage_class,
    "lifecycle_rules": _set_lifecycle_rules,
    "uniform_bucket_level_access": _set_uniform_access,
}


# --- The provider -----------------------------------------------------------------------------


class StorageProvider:
    """Buckets of one project. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.STORAGE_BUCKET,)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, *, client: storage.Client | None = None) -> None:
        self.project = project
        self._client = client
        self._lock = threading.Lock()
        self._counter = CallCounter("storage")

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        _check_kind(kind)
        return [
            Resource(kind, bucket.name, bucket_spec(bucket), bucket_labels(bucket))
            for bucket in self._list_buckets()
            if bucket_labels(bucket).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE
        ]

    def create(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        bucket = self._bucket_with(resource)
        location = resource.spec.get("location")
        # A name taken (by us or anyone) is a 409, which call() raises as AlreadyExists.
        self._rpc(
            "create_bucket",
            resource.name,
            lambda: self._storage().create_bucket(bucket, project=self.project, location=location, **_OPTS),
        )
        if on_emulator():
            self._store_metadata_on_emulator(resource)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        _check_kind(resource.kind)
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise PermanentError(f"storage: cannot update {sorted(unknown)} of {resource.address} in place")
        if not fields:
            return
        if "labels" in fields:
            # The JSON API merges a labels PATCH into the existing labels: removing one means
            # sending it as null. Read the live labels so the client can compute the removals,
            # and make the PATCH conditional on the metageneration we read.
            bucket = self._rpc(
                "get_bucket", resource.name, lambda: self._storage().get_bucket(resource.name, **_OPTS)
            )
            bucket.labels = dict(resource.labels)
            precondition = {"if_metageneration_match": bucket.metageneration}
        else:
            bucket, precondition = self._storage().bucket(resource.name), {}
        for key in fields:
            if key != "labels":
                _SETTERS[key](bucket, resource.spec.get(key))
        self._rpc("patch_bucket", resource.name, lambda: bucket.patch(**precondition, **_OPTS))

    def delete(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        bucket = self._storage().bucket(resource.name)
        try:
            # Never force=True: that would delete every object first. Whether data may go is the
            # reconciler's decision; here a non-empty bucket is an error.
            self._rpc("delete_bucket", resource.name, lambda: bucket.delete(force=False, **_OPTS))
        except NotFound:
            pass  # already gone: deleting is idempotent
        except AlreadyExists as exc:
            # The API answers 409 Conflict, which call() maps to AlreadyExists; for a delete it
            # means "the bucket still holds objects".
            raise PermanentError(f"storage.delete_bucket {resource.name}: bucket is not empty") from exc

    # -- optional abilities (providers.base) --

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        _check_kind(kind)
        found: list[Resource] = []
        for name in names:
            try:
                bucket = self._rpc("get_bucket", name, lambda name=name: self._storage().get_bucket(name, **_OPTS))
            except NotFound:
                continue
            except PermanentError:
                # Taken by someone this project may not see (a 403): it exists, and it is not ours.
                found.append(Resource(kind, name, {}, {}))
                continue
            found.append(Resource(kind, bucket.name, bucket_spec(bucket), bucket_labels(bucket)))
        return found

    def would_lose(self, resources: Sequence[Resource]) -> Mapping[str, str]:
        losses: dict[str, str] = {}
        for resource in resources:
            def count(name: str = resource.name) -> int:
                return sum(1 for _ in self._storage().list_blobs(name, max_results=LOSS_COUNT_LIMIT + 1, **_OPTS))

            try:
                n = self._rpc("list_blobs", resource.name, count)
            except NotFound:
                continue
            losses[resource.address] = (f"more than {LOSS_COUNT_LIMIT:,} objects" if n > LOSS_COUNT_LIMIT
                                        else f"{n:,} objects")
        return losses

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        """Requests sent so far (each retry attempt and each list page counts), by ``storage.<method>``."""
        return self._counter.snapshot()

    # -- emulator departure (create) --

    def _store_metadata_on_emulator(self, resource: Resource) -> None:
        """Write the bucket's metadata again with a PATCH, on the emulator only.

        EMULATOR DEPARTURE: the real API stores everything sent with the create (location,
        storage class, lifecycle, uniform access, labels). gcp-storage-emulator keeps only the
        bucket name and drops the rest; a PATCH afterwards stores it all, location included
        (the real API would reject a location in a PATCH, but this never runs against it).
        """
        bucket = self._bucket_with(resource)
        if resource.spec.get("location"):
            bucket._patch_property("location", resource.spec["location"])
        self._rpc("patch_bucket", resource.name, lambda: bucket.patch(**_OPTS))

    # -- plumbing --

    def _bucket_with(self, resource: Resource) -> storage.Bucket:
        """A local Bucket object carrying the resource's labels and every declared spec key."""
        bucket = self._storage().bucket(resource.name)
        for key, set_property in _SETTERS.items():
            if key in resource.spec:
                set_property(bucket, resource.spec[key])
        bucket.labels = dict(resource.labels)
        return bucket

    def _storage(self) -> storage.Client:
        with self._lock:
            if self._client is None:
                self._client = storage.Client(project=self.project)
            return self._client

    def _count(self, method: str) -> None:
        self._counter.count(method)

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)

    def _list_buckets(self) -> list[storage.Bucket]:
        """Every bucket of the project: one paginated list, each page counted."""

        def attempt() -> list[storage.Bucket]:
            iterator = self._storage().list_buckets(project=self.project, page_size=LIST_PAGE_SIZE, **_OPTS)
            buckets: list[storage.Bucket] = []
            for page in iterator.pages:  # each page is fetched (one request) as we get to it
                self._count("list_buckets")
                buckets.extend(page)
            return buckets

        # A retry restarts the listing from the first page: simple, and a list is read-only.
        return call(attempt, "storage.list_buckets")


# Sent with every request: retries are providers.errors.call's job, not the client library's.
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}


def _check_kind(kind: Kind) -> None:
    if kind != Kind.STORAGE_BUCKET:
        raise PermanentError(f"storage: unsupported kind {kind!r}")
