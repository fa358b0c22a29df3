"""Cloud Storage notifications: ``storage_notification`` resources, through google-cloud-storage.

A notification config makes a bucket publish a Pub/Sub message per object change. headwater
creates one per ``batch_file`` source: ``OBJECT_FINALIZE`` events of the source's landing prefix,
payload format ``JSON_API_V1``, published to the source's topic, where the streaming
``gcs_to_bigquery`` job reads them (docs/connector-contract.md, "The storage_notification
resource"). It implements the contract in `providers.base`; the notification API is
google-cloud-storage's (``Bucket.list_notifications``, ``BucketNotification.create`` /
``.delete``), the topic's IAM policy google-cloud-pubsub's (``PublisherClient.get_iam_policy`` /
``set_iam_policy``). Only `providers/` imports ``google.cloud``.

Resource name ``<bucket>/<object_name_prefix>``. Canonical spec (always these keys)::

    {
        "bucket": "landing-p-r",               # immutable
        "topic": "orders",                     # topic id in the project; projects/<p>/topics/<t> if elsewhere
        "object_name_prefix": "orders/",       # "" for the whole bucket
        "event_types": ["OBJECT_FINALIZE"],    # sorted; [] = every event type (the API's "unset")
        "payload_format": "JSON_API_V1",
        "publisher_grant": True,               # see below
    }

Everything but ``publisher_grant`` is immutable: the API cannot edit a notification config, only
create and delete one, so a change of any of them is a replacement. Labels are the config's
*custom attributes* (configs carry no labels; every event message carries these attributes too):
observe returns a config as ours only when they hold ``managed-by=headwater``, and reads them back
as the resource's labels. A change of labels only is applied by `update` as create-then-delete
(the new config first, so no event falls between; the claims of the ingest job absorb an event
both configs publish).

``publisher_grant``: whether the project's Cloud Storage service agent
(``service-<number>@gs-project-accounts.iam.gserviceaccount.com``, from
``Client.get_service_account_email``) holds ``roles/pubsub.publisher`` on the topic - without it
Cloud Storage refuses to create the config and cannot publish events (the 403 most first
deployments hit). `create` grants it before creating the config, in the same apply; `update`
grants or revokes it; observe reads it back. The policy is changed read-modify-write: the
``setIamPolicy`` request carries the etag of the ``getIamPolicy`` answer, so a concurrent change
makes it fail (409/ABORTED) instead of being overwritten, and the whole read-modify-write is
retried. `delete` never revokes the grant: the topic may carry other configs' events (another
bucket's, a replacement's created just before), the grant is harmless on its own, and it goes
with the topic when the source is removed.

Requests per observe: one bucket list (page of 1000), one notification list per managed bucket,
the service agent's email once per provider, and one ``getIamPolicy`` per distinct topic of a
managed config - the last a deliberate exception to "one list per kind": the grant is what
breaks first, so it is worth seeing in a plan. Each request goes through `providers.errors.call`
(translation, retries) with ``retry=None`` for the client library, and is counted (`api_calls`).

The emulators have no notifications (gcp-storage-emulator answers 501) and no IAM (the Pub/Sub
emulator answers 501): `providers.local_notifications` stands in for this provider there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1, storage

from providers.calls import CallCounter
from providers.errors import AlreadyExists, NotFound, PermanentError, call
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

T = TypeVar("T")

RPC_TIMEOUT_S = 60.0
LIST_PAGE_SIZE = 1000
PUBLISHER_ROLE = "roles/pubsub.publisher"
# IAM policy version 3 is the one that can hold conditional bindings: asking for it means a
# policy with conditions is read (and written back) whole instead of being refused.
POLICY_VERSION = 3
# Spec keys a notification config cannot change in place.
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.STORAGE_NOTIFICATION: frozenset({"bucket", "topic", "object_name_prefix", "event_types", "payload_format"}),
}
UPDATABLE_FIELDS = frozenset({"publisher_grant", "labels"})

_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}


# --------------------------------------------------------------------------- pure helpers


def topic_path(topic: str, project: str) -> str:
    """``orders`` -> ``projects/<project>/topics/orders``; a full path stays as it is."""
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def short_topic(topic_project: str, topic_name: str, project: str) -> str:
    return topic_name if topic_project == project else f"projects/{topic_project}/topics/{topic_name}"


def is_managed(custom_attributes: Mapping[str, str] | None) -> bool:
    return (custom_attributes or {}).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


def notification_spec(notification: storage.notification.BucketNotification, project: str,
                      publisher_grant: bool) -> dict[str, Any]:
    """The canonical spec of a live notification config (see the module docstring)."""
    return {
        "bucket": notification.bucket.name,
        "topic": short_topic(notification.topic_project, notification.topic_name, project),
        "object_name_prefix": notification.blob_name_prefix or "",
        "event_types": sorted(notification.event_types or []),
        "payload_format": notification.payload_format or "",
        "publisher_grant": publisher_grant,
    }


def resource_name(bucket: str, prefix: str) -> str:
    return f"{bucket}/{prefix}"


def has_grant(policy: Any, member: str) -> bool:
    """Whether an unconditional ``roles/pubsub.publisher`` binding names ``member``."""
    return any(b.role == PUBLISHER_ROLE and not b.condition.expression and member in b.members
               for b in policy.bindings)


def with_grant(policy: Any, member: str, granted: bool) -> bool:
    """Add (or remove) ``member`` in the unconditional publisher binding of ``policy``, in place;
    whether anything changed. Other bindings, members and the etag are left as read."""
    bindings = [b for b in policy.bindings if b.role == PUBLISHER_ROLE and not b.condition.expression]
    if granted:
        if any(member in b.members for b in bindings):
            return False
        if bindings:
            bindings[0].members.append(member)
        else:
            policy.bindings.add(role=PUBLISHER_ROLE, members=[member])
        return True
    changed = False
    for binding in bindings:
        if member in binding.members:
            kept = [m for m in binding.members if m != member]
            del binding.members[:]
            binding.members.extend(kept)
            changed = True
    empty = [b for b in policy.bindings if not b.members]
    for binding in empty:  # a binding without members is invalid in a setIamPolicy request
        policy.bindings.remove(binding)
    return changed


# --------------------------------------------------------------------------- the provider


class StorageNotificationProvider:
    """Notification configs of one project's managed buckets. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.STORAGE_NOTIFICATION,)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, *, storage_client: storage.Client | None = None,
                 publisher_client: pubsub_v1.PublisherClient | None = None) -> None:
        self.project = project
        self._storage_client = storage_client
        self._publisher_client = publisher_client
        self._service_agent: str | None = None
        self._lock = threading.Lock()
        self._storage_calls = CallCounter("storage")
        self._pubsub_calls = CallCounter("pubsub")

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        _check_kind(kind)
        found = []
        for bucket in self._list_buckets():
            if (bucket.labels or {}).get(MANAGED_BY_KEY) != MANAGED_BY_VALUE:
                continue
            seen: set[str] = set()
            for notification in self._list_notifications(bucket):
                if not is_managed(notification.custom_attributes):
                    continue
                name = resource_name(bucket.name, notification.blob_name_prefix or "")
                if name in seen:
                    continue  # a duplicate config of the same prefix: delete removes them all
                seen.add(name)
                found.append(notification)
        grants: dict[str, bool] = {}
        resources = []
        for notification in found:
            topic = f"projects/{notification.topic_project}/topics/{notification.topic_name}"
            if topic not in grants:
                grants[topic] = has_grant(self._get_policy(topic), self._member())
            resources.append(Resource(
                Kind.STORAGE_NOTIFICATION,
                resource_name(notification.bucket.name, notification.blob_name_prefix or ""),
                notification_spec(notification, self.project, grants[topic]),
                dict(notification.custom_attributes or {}),
            ))
        return resources

    def create(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        bucket = self._bucket(resource)
        # Cloud Storage allows identical configs side by side (each publishing every event):
        # "already exists" is ours to detect.
        if self._managed_configs(bucket, resource.spec.get("object_name_prefix") or ""):
            raise AlreadyExists(f"storage.create_notification {resource.name}: a managed config already exists")
        if resource.spec.get("publisher_grant", True):
            self._set_grant(topic_path(resource.spec["topic"], self.project), True)  # before: the API checks it
        self._create_config(bucket, resource)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        _check_kind(resource.kind)
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise PermanentError(f"storage_notification: cannot update {sorted(unknown)} of {resource.address} in place")
        if "publisher_grant" in fields:
            self._set_grant(topic_path(resource.spec["topic"], self.project), bool(resource.spec["publisher_grant"]))
        if "labels" in fields:
            # Configs cannot be edited: the new one first, then the old ones go.
            bucket = self._bucket(resource)
            prefix = resource.spec.get("object_name_prefix") or ""
            old = self._managed_configs(bucket, prefix)
            self._create_config(bucket, resource)
            for notification in old:
                self._delete_config(notification, resource.name)

    def delete(self, resource: Resource) -> None:
        _check_kind(resource.kind)
        bucket = self._bucket(resource)
        try:
            configs = self._managed_configs(bucket, resource.spec.get("object_name_prefix") or _prefix_of(resource))
        except NotFound:
            return  # the bucket is gone, and its configs with it
        for notification in configs:  # every managed config of the prefix, duplicates included
            self._delete_config(notification, resource.name)

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        """Requests sent so far (each attempt and list page counts), by ``storage.<m>`` / ``pubsub.<m>``."""
        return {**self._storage_calls.snapshot(), **self._pubsub_calls.snapshot()}

    # -- notification configs --

    def _bucket(self, resource: Resource) -> storage.Bucket:
        name = resource.spec.get("bucket") or resource.name.split("/", 1)[0]
        return self._storage().bucket(name)

    def _managed_configs(self, bucket: storage.Bucket, prefix: str) -> list[Any]:
        return [n for n in self._list_notifications(bucket)
                if is_managed(n.custom_attributes) and (n.blob_name_prefix or "") == prefix]

    def _create_config(self, bucket: storage.Bucket, resource: Resource) -> None:
        spec = resource.spec
        topic = topic_path(spec["topic"], self.project)
        _, topic_project, _, topic_name = topic.split("/")
        notification = bucket.notification(
            topic_name=topic_name,
            topic_project=topic_project,
            custom_attributes=dict(resource.labels),
            event_types=list(spec.get("event_types") or []) or None,
            blob_name_prefix=spec.get("object_name_prefix") or None,
            payload_format=spec.get("payload_format") or "JSON_API_V1",
        )
        self._storage_rpc("create_notification", resource.name, lambda: notification.create(**_OPTS))

    def _delete_config(self, notification: Any, target: str) -> None:
        try:
            self._storage_rpc("delete_notification", target, lambda: notification.delete(**_OPTS))
        except NotFound:
            pass  # gone already: deleting is idempotent

    def _list_buckets(self) -> list[storage.Bucket]:
        def attempt() -> list[storage.Bucket]:
            iterator = self._storage().list_buckets(project=self.project, page_size=LIST_PAGE_SIZE, **_OPTS)
            buckets: list[storage.Bucket] = []
            for page in iterator.pages:
                self._storage_calls.count("list_buckets")
                buckets.extend(page)
            return buckets

        return call(attempt, "storage.list_buckets")

    def _list_notifications(self, bucket: storage.Bucket) -> list[Any]:
        def attempt() -> list[Any]:
            iterator = bucket.list_notifications(**_OPTS)
            found: list[Any] = []
            for page in iterator.pages:  # a bucket holds at most 100 configs: one page
                self._storage_calls.count("list_notifications")
                found.extend(page)
            return found

        return call(attempt, f"storage.list_notifications {bucket.name}")

    # -- the publisher grant --

    def _member(self) -> str:
        with self._lock:
            cached = self._service_agent
        if cached is None:
            cached = self._storage_rpc(
                "get_service_account", self.project,
                lambda: self._storage().get_service_account_email(project=self.project, **_OPTS))
            with self._lock:
                self._service_agent = cached
        return f"serviceAccount:{cached}"

    def _get_policy(self, topic: str) -> Any:
        request = {"resource": topic, "options": {"requested_policy_version": POLICY_VERSION}}
        return self._pubsub_rpc("get_iam_policy", topic,
                                lambda: self._publisher().get_iam_policy(request=request, **_OPTS))

    def _set_grant(self, topic: str, granted: bool) -> None:
        """Read-modify-write of the topic's policy, conditional on the etag it was read with."""
        member = self._member()

        def attempt() -> None:
            self._pubsub_calls.count("get_iam_policy")
            policy = self._publisher().get_iam_policy(
                request={"resource": topic, "options": {"requested_policy_version": POLICY_VERSION}}, **_OPTS)
            if not with_grant(policy, member, granted):
                return  # already as wanted: no write
            if any(b.condition.expression for b in policy.bindings):
                policy.version = POLICY_VERSION  # conditions are only valid in a version 3 policy
            self._pubsub_calls.count("set_iam_policy")
            try:
                self._publisher().set_iam_policy(request={"resource": topic, "policy": policy}, **_OPTS)
            except (gexc.Conflict, gexc.Aborted) as exc:
                # The etag is stale: someone changed the policy since we read it. Aborted is
                # temporary for call(), which then runs this whole read-modify-write again.
                raise gexc.Aborted(f"the IAM policy of {topic} changed while it was being updated") from exc

        call(attempt, f"pubsub.set_iam_policy {topic}")

    # -- plumbing --

    def _storage(self) -> storage.Client:
        with self._lock:
            if self._storage_client is None:
                self._storage_client = storage.Client(project=self.project)
            return self._storage_client

    def _publisher(self) -> pubsub_v1.PublisherClient:
        with self._lock:
            if self._publisher_client is None:
                self._publisher_client = pubsub_v1.PublisherClient()
            return self._publisher_client

    def _storage_rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._storage_calls.rpc(method, target, fn)

    def _pubsub_rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._pubsub_calls.rpc(method, target, fn)


def _prefix_of(resource: Resource) -> str:
    return resource.name.split("/", 1)[1] if "/" in resource.name else ""


def _check_kind(kind: Kind) -> None:
    if kind != Kind.STORAGE_NOTIFICATION:
        raise PermanentError(f"storage_notification: unsupported kind {kind!r}")
