"""Pub/Sub provider: topics and subscriptions, through google-cloud-pubsub.

Kinds: ``Kind.PUBSUB_TOPIC`` and ``Kind.PUBSUB_SUBSCRIPTION``. This module is the only one that
imports ``google.cloud.pubsub``. It implements the contract in `providers.base`.

The clients (``PublisherClient`` for topics, ``SubscriberClient`` for subscriptions) are created
lazily from the environment. google-cloud-pubsub honours ``PUBSUB_EMULATOR_HOST`` by itself, so
the same code path serves GCP and the local emulator; the single place that knows about the
emulator is `update_with_emulator_fallback`, in the "Emulator departure" section.

Canonical spec (what `observe` returns and what `create`/`update` accept)
--------------------------------------------------------------------------
Durations are whole seconds (``int``); protobuf ``Duration`` / ``timedelta`` values are rounded
to the nearest second. Topic references are the short topic id when the topic lives in the same
project and the full ``projects/{p}/topics/{id}`` path otherwise.

Topic::

    {"message_retention_duration": int}     # only when set on the server; omitted otherwise

Subscription (always exactly these keys)::

    {
        "topic": str,                        # short id, or full path for another project
        "ack_deadline_seconds": int,         # 0 on the server means the default, 10
        "message_retention_duration": int,   # server default 7 days = 604800
        "retain_acked_messages": bool,
        "retry_policy": {"minimum_backoff": int, "maximum_backoff": int} | None,
        "dead_letter_policy": {"dead_letter_topic": str, "max_delivery_attempts": int} | None,
        "expiration_ttl": int,               # 0 = never expires
        "filter": str,                       # "" = no filter (immutable)
        "enable_message_ordering": bool,     # (immutable)
        "enable_exactly_once_delivery": bool,
    }

Mutability, the real API's: a subscription's ``topic``, ``filter`` and ``enable_message_ordering``
cannot change (`IMMUTABLE_FIELDS`: the plan shows a replacement, gated because a subscription
holds data); everything else here is updated in place. The planner compares only what the desired
state declares, so a filter or ordering set on a subscription outside headwater is not a
difference until the desired state declares one.

Normalization rules, and why:

* ``retry_policy``: an unset retry policy means "redeliver immediately" in the real API, which no
  pair of backoffs expresses, so it is ``None``. A set policy with a missing bound takes the API's
  documented defaults (minimum 10 s, maximum 600 s).
* ``dead_letter_policy``: unset is ``None``; ``max_delivery_attempts`` 0 means the API default, 5.
* ``expiration_ttl``: the real API encodes "never expires" as an ``expiration_policy`` with an
  empty ttl, and an *unset* ``expiration_policy`` means the default of 31 days (2678400 s). So:
  empty ttl -> 0, unset policy -> 2678400, otherwise the ttl. `create` always sends the policy
  explicitly, so the stored value never depends on which default the server applies.
* Labels are returned whole (``managed-by`` and the other headwater labels included).

Only resources labelled ``managed-by=headwater`` are observed: anything else in the project is
not ours and stays invisible to the reconciler - except through `PubSubProvider.read` (one get
per name, only for declared resources observe did not find, and for references to another
project's topic by full name), which returns them with their labels, so the planner shows them
as existing and not headwater's instead of planning a create that would take them over.

What deleting or replacing one would lose (`PubSubProvider.would_lose`): a subscription's
backlog, ``subscription/num_undelivered_messages`` (plus ``num_retained_acked_messages``) from
Cloud Monitoring (`providers.monitoring`, one ``timeSeries.list`` per metric for all of them;
sampled every minute, so "about"); a topic's configured retention. EMULATOR DEPARTURE: the
emulator has no Cloud Monitoring, and nothing else counts a backlog without pulling (which
would change delivery attempts): there, the backlog is reported as not observable.

Retries: every RPC goes through `providers.errors.call` (one retry layer, with our backoff) and is
sent with ``retry=None`` so the client library does not retry underneath it; that also makes
`api_calls` count real RPCs, one per attempt and per page.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import proto
from google.cloud import pubsub_v1
from google.protobuf import duration_pb2, field_mask_pb2

from providers.calls import CallCounter
from providers.errors import NotFound, PermanentError, call
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

T = TypeVar("T")
types = pubsub_v1.types
log = logging.getLogger(__name__)

# Server defaults, from the Pub/Sub API reference (google.pubsub.v1.Subscription).
DEFAULT_ACK_DEADLINE_SECONDS = 10
DEFAULT_SUBSCRIPTION_RETENTION_SECONDS = 7 * 24 * 3600  # 604800
DEFAULT_EXPIRATION_TTL_SECONDS = 31 * 24 * 3600  # 2678400, when expiration_policy is unset
NEVER_EXPIRES = 0  # our encoding of an expiration_policy with an empty ttl
DEFAULT_MINIMUM_BACKOFF_SECONDS = 10
DEFAULT_MAXIMUM_BACKOFF_SECONDS = 600
DEFAULT_MAX_DELIVERY_ATTEMPTS = 5

# Cloud Monitoring metrics of what a subscription holds (what deleting it would lose).
BACKLOG_METRIC = "pubsub.googleapis.com/subscription/num_undelivered_messages"
RETAINED_METRIC = "pubsub.googleapis.com/subscription/num_retained_acked_messages"

# The real API caps list pages by itself; ask for large pages to keep observe at one RPC in practice.
LIST_PAGE_SIZE = 1000
# Per-RPC deadline (seconds). Admin calls are small; a stuck call becomes a TemporaryError.
RPC_TIMEOUT_S = 60.0

# Our spec keys -> the API's update-mask paths, per kind. Keys absent here cannot be updated in
# place (see IMMUTABLE_FIELDS) or are not ours to manage.
UPDATE_PATHS: dict[Kind, dict[str, str]] = {
    Kind.PUBSUB_TOPIC: {
        "message_retention_duration": "message_retention_duration",
        "labels": "labels",
    },
    Kind.PUBSUB_SUBSCRIPTION: {
        "ack_deadline_seconds": "ack_deadline_seconds",
        "message_retention_duration": "message_retention_duration",
        "retain_acked_messages": "retain_acked_messages",
        "retry_policy": "retry_policy",
        "dead_letter_policy": "dead_letter_policy",
        "expiration_ttl": "expiration_policy",
        "enable_exactly_once_delivery": "enable_exactly_once_delivery",
        "labels": "labels",
    },
}

# What the real API cannot change on a subscription (UpdateSubscription rejects them): its topic,
# its filter and message ordering. Every topic field we manage is updatable.
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.PUBSUB_TOPIC: frozenset(),
    Kind.PUBSUB_SUBSCRIPTION: frozenset({"topic", "filter", "enable_message_ordering"}),
}


# --- Normalization: server objects -> canonical spec (pure functions) ---------------------------


def seconds(value: dt.timedelta | duration_pb2.Duration | int | None) -> int | None:
    """A duration as whole seconds (rounded); ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, dt.timedelta):
        return round(value.total_seconds())
    if isinstance(value, duration_pb2.Duration):
        return round(value.seconds + value.nanos / 1e9)
    return int(value)


def short_topic(path: str, project: str) -> str:
    """``projects/{project}/topics/x`` -> ``x``; topics of other projects keep their full path."""
    prefix = f"projects/{project}/topics/"
    return path.removeprefix(prefix) if path.startswith(prefix) else path


def topic_path(topic: str, project: str) -> str:
    """The full topic path for a short id (full paths are returned unchanged)."""
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


# The readers below take a message as the client hands it (a proto-plus wrapper: ``types.Topic``)
# or its raw protobuf (``types.Topic.pb(topic)``), and read the raw one: proto-plus converts on
# every attribute access (marshal rules, a wrapper per nested message, timedelta per Duration),
# ~0.1 ms a subscription, so observe reads the list pages' raw protobufs (issue 14;
# tests/providers/test_pubsub_raw_decoding.py holds the result equal to the proto-plus reading).


def _pb(message: Any) -> Any:
    """The raw protobuf of a proto-plus message; a raw protobuf as it is."""
    return type(message).pb(message) if isinstance(message, proto.Message) else message


def topic_spec(topic: types.Topic) -> dict[str, Any]:
    """The canonical spec of a live topic (a ``types.Topic`` or its raw protobuf)."""
    topic = _pb(topic)
    spec: dict[str, Any] = {}
    # Unset means "no topic retention" (the default), distinct from any duration: omit the key.
    if topic.HasField("message_retention_duration"):
        spec["message_retention_duration"] = seconds(topic.message_retention_duration)
    return spec


def retry_policy_spec(sub: types.Subscription) -> dict[str, int] | None:
    """``None`` when unset (= immediate redelivery), else both bounds with the API defaults."""
    sub = _pb(sub)
    if not sub.HasField("retry_policy"):
        return None
    policy = sub.retry_policy
    return {
        "minimum_backoff": seconds(policy.minimum_backoff)
        if policy.HasField("minimum_backoff")
        else DEFAULT_MINIMUM_BACKOFF_SECONDS,
        "maximum_backoff": seconds(policy.maximum_backoff)
        if policy.HasField("maximum_backoff")
        else DEFAULT_MAXIMUM_BACKOFF_SECONDS,
    }


def dead_letter_spec(sub: types.Subscription, project: str) -> dict[str, Any] | None:
    """``None`` when unset; the topic as a short id; 0 attempts means the API default (5)."""
    sub = _pb(sub)
    if not sub.HasField("dead_letter_policy") or not sub.dead_letter_policy.dead_letter_topic:
        return None
    policy = sub.dead_letter_policy
    return {
        "dead_letter_topic": short_topic(policy.dead_letter_topic, project),
        "max_delivery_attempts": policy.max_delivery_attempts or DEFAULT_MAX_DELIVERY_ATTEMPTS,
    }


def expiration_ttl(sub: types.Subscription) -> int:
    """Unset policy -> the 31-day default; policy with an empty ttl -> 0 (never); else the ttl."""
    sub = _pb(sub)
    if not sub.HasField("expiration_policy"):
        return DEFAULT_EXPIRATION_TTL_SECONDS
    if not sub.expiration_policy.HasField("ttl"):
        return NEVER_EXPIRES
    return seconds(sub.expiration_policy.ttl) or NEVER_EXPIRES


def subscription_spec(sub: types.Subscription, project: str) -> dict[str, Any]:
    """The canonical spec of a live subscription (a ``types.Subscription`` or its raw protobuf;
    always the same ten keys)."""
    sub = _pb(sub)
    retention = (
        seconds(sub.message_retention_duration)
        if sub.HasField("message_retention_duration")
        else DEFAULT_SUBSCRIPTION_RETENTION_SECONDS
    )
    return {
        "topic": short_topic(sub.topic, project),
        "ack_deadline_seconds": sub.ack_deadline_seconds or DEFAULT_ACK_DEADLINE_SECONDS,
        "message_retention_duration": retention,
        "retain_acked_messages": bool(sub.retain_acked_messages),
        "retry_policy": retry_policy_spec(sub),
        "dead_letter_policy": dead_letter_spec(sub, project),
        "expiration_ttl": expiration_ttl(sub),
        "filter": sub.filter or "",
        "enable_message_ordering": bool(sub.enable_message_ordering),
        "enable_exactly_once_delivery": bool(sub.enable_exactly_once_delivery),
    }


# --- Canonical spec -> API objects (pure functions) ---------------------------------------------


def _duration(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(value))


def build_topic(resource: Resource, project: str) -> types.Topic:
    """The Topic for ``resource``; spec keys it does not declare are left unset."""
    topic = types.Topic(name=f"projects/{project}/topics/{resource.name}", labels=dict(resource.labels))
    retention = resource.spec.get("message_retention_duration")
    if retention is not None:
        topic.message_retention_duration = _duration(retention)
    return topic


def build_subscription(resource: Resource, project: str) -> types.Subscription:
    """The Subscription for ``resource``; spec keys it does not declare are left unset.

    ``None`` policies are left unset, which is how the API says "no retry policy" / "no dead
    lettering" (and, under an update mask, clears them).
    """
    spec = resource.spec
    sub = types.Subscription(
        name=f"projects/{project}/subscriptions/{resource.name}",
        topic=topic_path(spec["topic"], project),
        labels=dict(resource.labels),
    )
    if spec.get("ack_deadline_seconds") is not None:
        sub.ack_deadline_seconds = int(spec["ack_deadline_seconds"])
    if spec.get("message_retention_duration") is not None:
        sub.message_retention_duration = _duration(spec["message_retention_duration"])
    if spec.get("retain_acked_messages") is not None:
        sub.retain_acked_messages = bool(spec["retain_acked_messages"])
    if spec.get("retry_policy") is not None:
        sub.retry_policy = _retry_policy(spec["retry_policy"])
    if spec.get("dead_letter_policy") is not None:
        sub.dead_letter_policy = _dead_letter_policy(spec["dead_letter_policy"], project)
    if spec.get("filter"):
        sub.filter = str(spec["filter"])
    if spec.get("enable_message_ordering") is not None:
        sub.enable_message_ordering = bool(spec["enable_message_ordering"])
    if spec.get("enable_exactly_once_delivery") is not None:
        sub.enable_exactly_once_delivery = bool(spec["enable_exactly_once_delivery"])
    if spec.get("expiration_ttl") is not None:
        ttl = int(spec["expiration_ttl"])
        # An empty ExpirationPolicy is the API's "never expires"; our encoding of it is 0.
        sub.expiration_policy = (
            types.ExpirationPolicy() if ttl == NEVER_EXPIRES else types.ExpirationPolicy(ttl=_duration(ttl))
        )
    return sub


def _retry_policy(policy: Mapping[str, Any]) -> types.RetryPolicy:
    out = types.RetryPolicy()
    if policy.get("minimum_backoff") is not None:
        out.minimum_backoff = _duration(policy["minimum_backoff"])
    if policy.get("maximum_backoff") is not None:
        out.maximum_backoff = _duration(policy["maximum_backoff"])
    return out


def _dead_letter_policy(policy: Mapping[str, Any], project: str) -> types.DeadLetterPolicy:
    # The API wants the dead letter topic as a full path, whatever project it lives in.
    out = types.DeadLetterPolicy(dead_letter_topic=topic_path(policy["dead_letter_topic"], project))
    if policy.get("max_delivery_attempts") is not None:
        out.max_delivery_attempts = int(policy["max_delivery_attempts"])
    return out


def update_mask(kind: Kind, fields: Sequence[str]) -> field_mask_pb2.FieldMask:
    """The update mask naming exactly ``fields`` (our keys) as API paths, in the given order.

    Raises `PermanentError` for an immutable or unknown field: the planner must replace the
    resource instead, and sending it would either fail or silently do nothing.
    """
    if kind not in UPDATE_PATHS:
        raise PermanentError(f"pubsub: unsupported kind {kind!r}")
    paths: list[str] = []
    for name in fields:
        if name in IMMUTABLE_FIELDS[kind]:
            raise PermanentError(f"{kind}: {name!r} is immutable and cannot be updated in place")
        if name not in UPDATE_PATHS[kind]:
            raise PermanentError(f"{kind}: {name!r} is not an updatable field")
        path = UPDATE_PATHS[kind][name]
        if path not in paths:
            paths.append(path)
    return field_mask_pb2.FieldMask(paths=paths)


# --- Emulator departure -----------------------------------------------------------------------

# The real Pub/Sub API accepts these paths in update masks; the emulator rejects any mask that
# names one of them with INVALID_ARGUMENT (``labels`` on topics and subscriptions: "not a known
# field"; ``expiration_policy`` on subscriptions: "unsupported in the Pub/Sub Emulator"), failing
# the whole update.
EMULATOR_UNSUPPORTED_PATHS = frozenset({"labels", "expiration_policy"})


def on_emulator() -> bool:
    """True when the client library talks to the emulator (it reads the same variable)."""
    return bool(os.environ.get("PUBSUB_EMULATOR_HOST"))


def update_with_emulator_fallback(
    send: Callable[[field_mask_pb2.FieldMask], object], mask: field_mask_pb2.FieldMask, address: str
) -> None:
    """Send the update with the full mask; on the emulator, resend it without unsupported paths.

    EMULATOR DEPARTURE: the real API accepts ``labels`` and ``expiration_policy`` in update
    masks, the emulator rejects them (see EMULATOR_UNSUPPORTED_PATHS). The full, correct request
    is always sent first, so on GCP - or on an emulator that learns these paths - nothing here
    changes behaviour. Only when that request fails, we are on the emulator and the mask names
    an unsupported path, the remaining paths are sent alone and the skipped ones are logged as a
    warning: they stay unchanged on the emulator, so the next plan still shows them as drift
    instead of hiding it.
    """
    try:
        send(mask)
    except PermanentError as error:
        skipped = [p for p in mask.paths if p in EMULATOR_UNSUPPORTED_PATHS]
        if isinstance(error, NotFound) or not skipped or not on_emulator():
            raise
        log.warning(
            "pubsub emulator cannot update %s on %s (the real API can); left unchanged",
            ", ".join(skipped),
            address,
        )
        remaining = [p for p in mask.paths if p not in EMULATOR_UNSUPPORTED_PATHS]
        if remaining:
            send(field_mask_pb2.FieldMask(paths=remaining))


# --- The provider -----------------------------------------------------------------------------


class PubSubProvider:
    """Topics and subscriptions of one project. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.PUBSUB_TOPIC, Kind.PUBSUB_SUBSCRIPTION)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(
        self,
        project: str,
        *,
        publisher: pubsub_v1.PublisherClient | None = None,
        subscriber: pubsub_v1.SubscriberClient | None = None,
        monitoring: Any = None,
    ) -> None:
        """``monitoring``: where backlogs are read (`providers.monitoring.CloudMonitoring` for
        the project by default, not on the emulator)."""
        self.project = project
        self._publisher = publisher
        self._subscriber = subscriber
        self._monitoring = monitoring
        self._lock = threading.Lock()
        self._counter = CallCounter("pubsub")

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        kind = Kind(kind)
        # The list items are raw protobufs (`_list`), read by the same spec functions as a get's.
        if kind == Kind.PUBSUB_TOPIC:
            topics = self._list("list_topics", self._publisher_client, "topics")
            return [
                Resource(kind, _last(t.name), topic_spec(t), dict(t.labels))
                for t in topics
                if _managed(t.labels)
            ]
        if kind == Kind.PUBSUB_SUBSCRIPTION:
            subs = self._list("list_subscriptions", self._subscriber_client, "subscriptions")
            return [
                Resource(kind, _last(s.name), subscription_spec(s, self.project), dict(s.labels))
                for s in subs
                if _managed(s.labels)
            ]
        raise PermanentError(f"pubsub: unsupported kind {kind!r}")

    def create(self, resource: Resource) -> None:
        # AlreadyExists surfaces as providers.errors.AlreadyExists (via call); the applier then
        # converges the existing resource with update().
        if resource.kind == Kind.PUBSUB_TOPIC:
            topic = build_topic(resource, self.project)
            self._rpc(
                "create_topic",
                topic.name,
                lambda: self._publisher_client().create_topic(request=topic, **_OPTS),
            )
        elif resource.kind == Kind.PUBSUB_SUBSCRIPTION:
            sub = build_subscription(resource, self.project)
            self._rpc(
                "create_subscription",
                sub.name,
                lambda: self._subscriber_client().create_subscription(request=sub, **_OPTS),
            )
        else:
            raise PermanentError(f"pubsub: unsupported kind {resource.kind!r}")

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        mask = update_mask(resource.kind, fields)
        if mask.paths:
            update_with_emulator_fallback(lambda m: self._send_update(resource, m), mask, resource.address)

    def delete(self, resource: Resource) -> None:
        if resource.kind == Kind.PUBSUB_TOPIC:
            name = f"projects/{self.project}/topics/{resource.name}"
            method, request = "delete_topic", {"topic": name}
            client: Callable[[], Any] = self._publisher_client
        elif resource.kind == Kind.PUBSUB_SUBSCRIPTION:
            name = f"projects/{self.project}/subscriptions/{resource.name}"
            method, request = "delete_subscription", {"subscription": name}
            client = self._subscriber_client
        else:
            raise PermanentError(f"pubsub: unsupported kind {resource.kind!r}")
        try:
            self._rpc(method, name, lambda: getattr(client(), method)(request=request, **_OPTS))
        except NotFound:
            pass  # already gone: deleting is idempotent

    # -- optional abilities (providers.base) --

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        """Topics or subscriptions by name, whoever manages them: one get each. A topic may be named
        in full in another project (a reference); one this platform may not read is left out, as
        a missing one is (the plan says "does not exist, or cannot be read")."""
        kind = Kind(kind)
        found: list[Resource] = []
        for name in names:
            try:
                if kind == Kind.PUBSUB_TOPIC:
                    path = topic_path(name, self.project)
                    topic = self._rpc("get_topic", path, lambda path=path: self._publisher_client().get_topic(
                        request={"topic": path}, **_OPTS))
                    found.append(Resource(kind, name, topic_spec(topic), dict(topic.labels)))
                elif kind == Kind.PUBSUB_SUBSCRIPTION:
                    path = f"projects/{self.project}/subscriptions/{name}"
                    sub = self._rpc("get_subscription", path, lambda path=path: self._subscriber_client()
                                    .get_subscription(request={"subscription": path}, **_OPTS))
                    found.append(Resource(kind, name, subscription_spec(sub, self.project), dict(sub.labels)))
            except NotFound:
                continue
            except PermanentError as exc:
                if not name.startswith("projects/"):
                    raise
                log.warning("pubsub: cannot read %s (%s); treated as missing", name, exc)
        return found

    def would_lose(self, resources: Sequence[Resource]) -> Mapping[str, str]:
        """A subscription's backlog (Cloud Monitoring; not observable on the emulator), a topic's
        retention (see the module docstring)."""
        losses: dict[str, str] = {}
        subs = [r for r in resources if r.kind == Kind.PUBSUB_SUBSCRIPTION]
        if subs and on_emulator():
            # EMULATOR DEPARTURE: no Cloud Monitoring; counting by pulling would change the messages.
            for sub in subs:
                losses[sub.address] = "its unacked messages; the backlog is not observable on the Pub/Sub emulator"
        elif subs:
            monitoring = self._monitoring_client()
            names = [s.name for s in subs]
            backlog = monitoring.latest(BACKLOG_METRIC, "pubsub_subscription", "subscription_id", names)
            retained_names = [s.name for s in subs if s.spec.get("retain_acked_messages")]
            retained = (monitoring.latest(RETAINED_METRIC, "pubsub_subscription", "subscription_id", retained_names)
                        if retained_names else {})
            for sub in subs:
                if sub.name not in backlog:
                    losses[sub.address] = "its unacked messages; Cloud Monitoring gave no recent backlog count"
                    continue
                text = f"about {backlog[sub.name]:,} unacked messages"
                if retained.get(sub.name):
                    text += f" and {retained[sub.name]:,} retained acknowledged ones"
                losses[sub.address] = text + " (Cloud Monitoring's last count)"
        for topic in (r for r in resources if r.kind == Kind.PUBSUB_TOPIC):
            retention = topic.spec.get("message_retention_duration")
            if retention:
                losses[topic.address] = (f"the messages it retains, up to {retention // 86400 or 1} days' worth "
                                         "(Pub/Sub does not count them)")
        return losses

    def _monitoring_client(self) -> Any:
        with self._lock:
            if self._monitoring is None:
                from providers.monitoring import CloudMonitoring

                self._monitoring = CloudMonitoring(self.project)
            return self._monitoring

    # -- optional ability: health (providers.base.HealthReporter; providers/pubsub_health.py) --

    def health(self, resources: Sequence[Resource]) -> dict[str, Any]:
        """Dead letters held by ``<id>-dlq-hold``; how long ``<id>-ingest``'s oldest record waits."""
        from providers.pubsub_health import subscription_health

        return subscription_health(self, resources)

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        """RPCs sent so far (each retry attempt and each list page counts), by ``pubsub.<method>``."""
        return self._counter.snapshot()

    # -- plumbing --

    def _send_update(self, resource: Resource, mask: field_mask_pb2.FieldMask) -> None:
        """One update RPC. The body carries the whole desired object; the mask picks what applies."""
        if resource.kind == Kind.PUBSUB_TOPIC:
            topic = build_topic(resource, self.project)
            request = {"topic": topic, "update_mask": mask}
            self._rpc(
                "update_topic",
                topic.name,
                lambda: self._publisher_client().update_topic(request=request, **_OPTS),
            )
        else:
            sub = build_subscription(resource, self.project)
            request = {"subscription": sub, "update_mask": mask}
            self._rpc(
                "update_subscription",
                sub.name,
                lambda: self._subscriber_client().update_subscription(request=request, **_OPTS),
            )

    def _publisher_client(self) -> pubsub_v1.PublisherClient:
        with self._lock:
            if self._publisher is None:
                self._publisher = pubsub_v1.PublisherClient()
            return self._publisher

    def _subscriber_client(self) -> pubsub_v1.SubscriberClient:
        with self._lock:
            if self._subscriber is None:
                self._subscriber = pubsub_v1.SubscriberClient()
            return self._subscriber

    def _count(self, method: str) -> None:
        self._counter.count(method)

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)

    def _list(self, method: str, client: Callable[[], Any], field: str) -> list[Any]:
        """Every item of a paginated list call on this project, as raw protobufs (``types.Topic.pb``:
        see `topic_spec`); pages after the first are counted too."""

        def attempt() -> list[Any]:
            self._count(method)
            pager = getattr(client(), method)(
                request={"project": f"projects/{self.project}", "page_size": LIST_PAGE_SIZE}, **_OPTS
            )
            items: list[Any] = []
            for number, page in enumerate(pager.pages):
                if number:  # the first page came with the call above
                    self._count(method)
                items.extend(getattr(type(page).pb(page), field))
            return items

        # A retry restarts the listing from the first page: simple, and a list is read-only.
        return call(attempt, f"pubsub.{method}")


# Sent with every RPC: retries are providers.errors.call's job, not the client library's.
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}


def _managed(labels: Mapping[str, str]) -> bool:
    return labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


def _last(path: str) -> str:
    """``projects/p/topics/x`` -> ``x``."""
    return path.rsplit("/", 1)[-1]
