"""Resources: the unit headwater compiles, observes, diffs and applies.

A `Resource` is one GCP object (a topic, a bucket, a table...) described as plain data:
its `kind`, its `name` (unique within the kind and project), the `spec` fields that headwater
manages, its `labels`, and the addresses of the resources it depends on.

The same type describes both sides of a reconcile:

* desired resources come out of `reconciler.compile` and carry only the fields the desired-state
  repo declares (plus headwater's own defaults);
* live resources come out of a provider's `observe` and carry the provider's canonical view of
  the server object: server defaults are normalized away so that a freshly applied resource
  compares equal to its desired twin.

Spec values are JSON-like (str, int, float, bool, None, lists, dicts) so that plans, golden files
and JSON output are trivial to produce. Canonical shapes per kind are documented in `SPEC_SHAPES`.

A provider that cannot read a field back from the service in full (a Dataflow job's parameters,
say) may report it as a *digest*, ``{"$digest": "<hex>"}`` (see `digest_of`): the planner then
compares the digest of the desired value instead of the value itself.

What is compared (`reconciler.plan`): the spec keys the desired side declares, and nothing else.
Inside a `PARTIAL_FIELDS` value (a settings object such as a table's ``time_partitioning``) only
the sub-keys the desired side declares are compared too: a partition expiration set by someone
else is not a difference while the desired state does not declare one. Immutability is per
path (``time_partitioning.type``), so a mutable sub-setting never forces a replacement.

Data-holding resources and the destroy gate (a stable mechanism; other kinds plug into it)
------------------------------------------------------------------------------------------
`DATA_KINDS` is the declarative set of kinds whose resources hold data or whose loss costs
data (a subscription's backlog, a topic's retained messages and its publishers' target, a
table's rows, a bucket's objects). A delete or replacement of one is *gated*: the plan shows it
``blocked`` unless ``--allow-destroy`` is given **and** the resource's ``deletion_protection``
is false (recorded as the `PROTECTED_KEY` label, so it still counts once undeclared). To gate a
new kind, add it to `DATA_KINDS` (one line); compile then labels it and the planner gates it.

What would be lost is reported by the provider that can see it: a live `Resource.status` may
carry `WOULD_LOSE`, a short phrase ("5 unacked messages", "12,000 rows") that the blocked reason
quotes. Providers report it through the optional `providers.base.LossReporter` ability, which
the engine asks only for the data-holding resources a plan deletes or replaces (no cost on a
plan without such changes); without it, the plan says the gate's reason alone.

`Resource.status` holds other observed facts beside the spec, never diffed and never sent:
`LEAVING` marks a live resource on its way out (a draining Dataflow job): a plan replaces it,
and apply waits until it has gone before creating its successor.

`Resource.external` marks a desired resource that lives elsewhere (another project's topic,
named in full): it is never created, changed or deleted; the engine reads it
(`providers.base.Reader`) to check that it exists, and a missing one blocks what depends on it.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import immutables


class Kind(StrEnum):
    PUBSUB_TOPIC = "pubsub_topic"
    PUBSUB_SUBSCRIPTION = "pubsub_subscription"
    STORAGE_BUCKET = "storage_bucket"
    BIGQUERY_DATASET = "bigquery_dataset"
    BIGQUERY_TABLE = "bigquery_table"
    DATAFLOW_JOB = "dataflow_job"
    CLOUD_RUN_SERVICE = "cloud_run_service"
    STORAGE_NOTIFICATION = "storage_notification"
    # issue 10: database_cdc sources (reconciler/cdc.py, docs/database-cdc.md)
    DATASTREAM_CONNECTION_PROFILE = "datastream_connection_profile"
    DATASTREAM_STREAM = "datastream_stream"
    STORAGE_TRANSFER_JOB = "storage_transfer_job"  # issue 10: cloud_transfer sources
    # issue 11: Cloud Monitoring (reconciler/cloud_monitoring.py, docs/monitoring.md)
    MONITORING_NOTIFICATION_CHANNEL = "monitoring_notification_channel"
    MONITORING_ALERT_POLICY = "monitoring_alert_policy"
    MONITORING_DASHBOARD = "monitoring_dashboard"
    # issue 12: the serving layer (reconciler/serving.py, providers/bigquery_views.py)
    BIGQUERY_VIEW = "bigquery_view"
    BIGQUERY_MATERIALIZED_VIEW = "bigquery_materialized_view"
    BIGQUERY_ROW_ACCESS_POLICY = "bigquery_row_access_policy"
    # issue 13: governance (docs/governance.md): who may read what, column-level security, audit
    IAM_BINDING = "iam_binding"
    PROJECT_AUDIT_CONFIG = "project_audit_config"
    DATACATALOG_TAXONOMY = "datacatalog_taxonomy"
    DATACATALOG_POLICY_TAG = "datacatalog_policy_tag"
    BIGQUERY_DATA_POLICY = "bigquery_data_policy"
    BIGQUERY_COLUMN_POLICY = "bigquery_column_policy"


# Kinds whose resources hold data (see "Data-holding resources" above): never deleted or
# replaced without --allow-destroy, and never when the resource has deletion_protection (the
# default). To gate another kind, add it here. A Dataflow job holds none (what it is processing
# stays in its subscription until acked), but its removal drains rather than cancels.
DATA_KINDS = frozenset({
    Kind.STORAGE_BUCKET,
    Kind.BIGQUERY_DATASET,
    Kind.BIGQUERY_TABLE,
    Kind.PUBSUB_SUBSCRIPTION,  # its backlog (and retained acked messages)
    Kind.PUBSUB_TOPIC,  # its retained messages; the target its publishers send to
    # Its replication position: a recreated stream starts over (a new backfill of every table, read
    # from its replication slot anew), and a deleted one leaves its slot retaining WAL.
    Kind.DATASTREAM_STREAM,
    # issue 12: its computed result - a replacement recomputes the whole view from its base tables.
    Kind.BIGQUERY_MATERIALIZED_VIEW,
})

# issue 13: kinds whose changes grant, revoke or unmask access (docs/governance.md). The plan flags
# every change of one as security-relevant (`Change.security`) and lists it under its own heading,
# so that a reviewer sees access changes before merge. A Cloud Run service counts when its
# ``public`` setting changes (reconciler.plan decides that per field).
SECURITY_KINDS = frozenset({
    Kind.IAM_BINDING,
    Kind.PROJECT_AUDIT_CONFIG,
    Kind.DATACATALOG_TAXONOMY,  # activates fine-grained access control on its tags' columns
    Kind.DATACATALOG_POLICY_TAG,
    Kind.BIGQUERY_DATA_POLICY,
    Kind.BIGQUERY_COLUMN_POLICY,
    Kind.BIGQUERY_ROW_ACCESS_POLICY,
})

# Per kind, spec keys whose value is a settings object compared only on the sub-keys the desired
# side declares (see the module docstring). Every other value is compared whole.
PARTIAL_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.BIGQUERY_TABLE: frozenset({"time_partitioning"}),
}

# Keys of `Resource.status` (observed facts beside the spec; see the module docstring).
WOULD_LOSE = "would_lose"  # str: what deleting or replacing this resource would destroy, as observed
LEAVING = "leaving"  # str: the resource is on its way out (e.g. "draining"); its name frees up after

# Labels every managed resource carries. Observe filters on MANAGED_BY_KEY.
# Resources that hold data also carry PROTECTED_KEY, so that a resource which is no longer
# declared still tells the planner whether it may be deleted.
MANAGED_BY_KEY = "managed-by"
MANAGED_BY_VALUE = "headwater"
PLATFORM_KEY = "headwater-platform"
SOURCE_KEY = "headwater-source"
PROTECTED_KEY = "headwater-deletion-protection"

# The canonical spec shape of each kind (compile produces it; providers normalize live objects
# into it). Durations are whole seconds, storage classes and BigQuery types are upper case.
SPEC_SHAPES: dict[Kind, dict[str, str]] = {
    Kind.PUBSUB_TOPIC: {
        "message_retention_duration": "int seconds (optional)",
    },
    Kind.PUBSUB_SUBSCRIPTION: {
        "topic": "topic id in the same project, or projects/<p>/topics/<id> of another (immutable)",
        "ack_deadline_seconds": "int",
        "message_retention_duration": "int seconds",
        "retain_acked_messages": "bool",
        "retry_policy": "{minimum_backoff: int s, maximum_backoff: int s}",
        "dead_letter_policy": "{dead_letter_topic: topic id, max_delivery_attempts: int} (optional)",
        "expiration_ttl": "int seconds, 0 = never expires",
        "filter": "str, \"\" = none (immutable; declared only)",
        "enable_message_ordering": "bool (immutable; declared only)",
        "enable_exactly_once_delivery": "bool (declared only)",
    },
    Kind.STORAGE_BUCKET: {
        "location": "upper-case region (immutable)",
        "storage_class": "STANDARD | NEARLINE | COLDLINE | ARCHIVE",
        "lifecycle_rules": "[{action: {type, storage_class?}, condition: {age, matches_storage_class?}}]",
        "uniform_bucket_level_access": "bool",
    },
    Kind.BIGQUERY_DATASET: {
        "location": "region (immutable)",
        "description": "str",
        "default_table_expiration_ms": "int | None (declared only)",
        "default_partition_expiration_ms": "int | None (declared only)",
    },
    Kind.BIGQUERY_TABLE: {
        "schema": "[{name, type, mode, description?, fields?}] (evolution rules apply)",
        "time_partitioning": "{type: DAY, field: str | None (ingestion time), expiration_ms: int | None} "
                             "(type and field immutable; a partial settings object: only declared keys compared)",
        "require_partition_filter": "bool (declared only)",
        "clustering_fields": "[str] (up to 4)",
        "description": "str",
    },
    Kind.DATAFLOW_JOB: {
        "template": "pubsub_to_bigquery | gcs_to_bigquery | bigquery_to_bigquery (change: drain and relaunch)",
        "streaming": "bool (change: drain and relaunch)",
        "schedule": "cron of a batch job's runs | None for streaming jobs",
        "parameters": "{name: str}: template parameters other than the pipeline spec",
        "pipeline": "the pipeline spec document (beam/common/spec.py), sent as parameter source_spec",
    },
    Kind.CLOUD_RUN_SERVICE: {
        "image": "container image of the connector runtime",
        "command": "[str]: the container's entry point",
        "connector": "the connector runtime spec (docs/connector-contract.md), sent as env HEADWATER_CONNECTOR_SPEC",
        "secrets": "{env var: Secret Manager secret id}, mounted as env at version latest",
        "service_account": "e-mail | None (Cloud Run's default)",
        "min_instances": "int",
        "max_instances": "int",
        "ingress": "all | internal",
        "cpu_always_allocated": "bool",
        "public": "bool: invoker IAM disabled (webhooks authenticate by signature)",
    },
    # issue 10: database_cdc (reconciler/cdc.py; providers/datastream.py maps them to the API)
    Kind.DATASTREAM_CONNECTION_PROFILE: {
        "type": "postgresql | mysql | gcs (immutable)",
        "host": "str", "port": "int", "database": "str (optional)", "user": "str",
        "password_secret": "Secret Manager secret id (sent as a reference, version latest)",
        "bucket": "gcs: the landing bucket", "root_path": "gcs: /cdc",
    },
    Kind.DATASTREAM_STREAM: {
        "source_connection_profile": "profile id (immutable)",
        "destination_connection_profile": "profile id (immutable)",
        "database_type": "postgresql | mysql (immutable)",
        "replication_slot": "postgresql: slot name (immutable)",
        "publication": "postgresql: publication name (immutable)",
        "include_objects": "[{schema, table}] sorted: the tables streamed",
        "destination": "{path (immutable), format: json, compression: gzip, file_rotation_mb, "
                       "file_rotation_interval_s}",
        "backfill": "all | none",
        "state": "RUNNING (observed: Datastream's state; status carries its errors and the replication lag)",
    },
    Kind.STORAGE_NOTIFICATION: {
        "bucket": "bucket name (immutable)",
        "topic": "topic id in the same project (immutable)",
        "object_name_prefix": "str (immutable)",
        "event_types": "[OBJECT_FINALIZE] (immutable)",
        "payload_format": "JSON_API_V1 (immutable)",
        "publisher_grant": "bool: the Cloud Storage service agent holds roles/pubsub.publisher on the topic",
    },
    # issue 10: a cloud_transfer source's Storage Transfer job (docs/storage-transfer.md). Holds no
    # data: its copies are in the landing bucket, whatever happens to the job.
    Kind.STORAGE_TRANSFER_JOB: {
        "source": "{type: s3 | azure_blob | gcs, bucket, path, storage_account, role_arn, credentials_secret}: "
                  "unused keys None; credentials_secret a Secret Manager secret id",
        "sink": "{bucket: the landing bucket, path: prefix ending in /}",
        "schedule": "canonical cron of the job's schedule (reconciler/transfer.py) (immutable: a new job)",
        "overwrite_when": "DIFFERENT | NEVER",
        "delete_from_source": "bool",
        "delete_unique_in_sink": "bool",
        "max_age_seconds": "int | None: copy only objects modified this recently (the landing zone's "
                           "delete_after_days, so a deleted copy is not copied again)",
        "notification_topic": "topic id: each run's completion (TRANSFER_OPERATION_SUCCESS/FAILED/ABORTED, JSON)",
        "enabled": "bool: job status ENABLED (else DISABLED)",
        "service_agent_grants": "bool: the Storage Transfer service agent holds roles/storage.legacyBucketWriter "
                                "and roles/storage.objectViewer on the sink bucket, roles/pubsub.publisher on the topic",
    },
    # issue 12: the serving layer (reconciler/serving.py; providers/bigquery_views.py). Names are
    # <dataset>.<view> and <dataset>.<table>.<policy>.
    Kind.BIGQUERY_VIEW: {
        "query": "the view's SQL, normalized (reconciler.sqltext: whitespace, keyword case and comments do not count); "
                 "updated in place",
        "description": "str",
        "authorized_on": "[dataset]: datasets whose access list authorizes the view (entries merged, never replaced)",
    },
    Kind.BIGQUERY_MATERIALIZED_VIEW: {
        "query": "normalized SQL (immutable: a change replaces the view, which BigQuery recomputes in full)",
        "enable_refresh": "bool",
        "refresh_interval_ms": "int | None (BigQuery's default, 30 min)",
        "max_staleness_s": "int | None",
        "time_partitioning": "{type: DAY, field} | None: the base table's, when the view selects its field (immutable)",
        "clustering_fields": "[str] | None: the base table's that the view selects (immutable)",
        "description": "str",
    },
    Kind.BIGQUERY_ROW_ACCESS_POLICY: {
        "table": "dataset.table it filters (immutable)",
        "grantees": "[IAM principal] sorted",
        "filter": "normalized SQL boolean expression",
    },
    # issue 13: governance (docs/governance.md, "Contract"). None holds data; IAM and column policies
    # carry no labels, so which of them are headwater's is told as that document says.
    Kind.IAM_BINDING: {
        "target": "address of the resource the role is granted on (bigquery_dataset.silver, storage_bucket.<b>, "
                  "bigquery_table.bronze.x_raw, pubsub_topic.<t>, pubsub_subscription.<s>, "
                  "datacatalog_policy_tag.<t>, bigquery_data_policy.<p>, project.<project>) (immutable)",
        "role": "roles/... (immutable)",
        "members": "[member] sorted: user:|group:|serviceAccount:|domain: e-mails, or serviceAgent:<service> "
                   "(the project's service agent of that service, resolved by the provider)",
        "exclusive": "bool: members is the whole binding (else: headwater's members among others)",
    },
    Kind.PROJECT_AUDIT_CONFIG: {
        "log_types": "[ADMIN_READ | DATA_READ | DATA_WRITE] sorted (name: the service, bigquery.googleapis.com)",
    },
    Kind.DATACATALOG_TAXONOMY: {
        "display_name": "str (the name; the server's id is looked up by it)",
        "description": "str",
        "location": "region (immutable)",
        "activated_policy_types": "[FINE_GRAINED_ACCESS_CONTROL]",
    },
    Kind.DATACATALOG_POLICY_TAG: {
        "taxonomy": "taxonomy display name (immutable)",
        "display_name": "str: the classification (immutable)",
        "description": "str",
    },
    Kind.BIGQUERY_DATA_POLICY: {
        "policy_tag": "datacatalog_policy_tag name (immutable)",
        "masking": "SHA256 | ALWAYS_NULL | DEFAULT_MASKING_VALUE | routine:<dataset>.<routine>",
    },
    Kind.BIGQUERY_COLUMN_POLICY: {
        "policy_tags": "[datacatalog_policy_tag name]: the tags on the column (name: <dataset>.<table>/<column.path>); "
                       "deleting the resource sends an empty list, which removes them",
    },
    # issue 11: Cloud Monitoring (docs/monitoring.md). Hold no data; ids are the server's.
    Kind.MONITORING_NOTIFICATION_CHANNEL: {
        "type": "email (immutable)",
        "email": "the address (labels.email_address) (immutable)",
        "display_name": "str",
        "enabled": "bool",
    },
    Kind.MONITORING_ALERT_POLICY: {
        "display_name": "str",
        "documentation": "markdown shown with each incident",
        "combiner": "OR",
        "conditions": "[{display_name, filter, comparison, threshold_value: float, duration_seconds, "
                      "alignment_period_seconds, per_series_aligner, cross_series_reducer | None, "
                      "evaluation_missing_data} (metric threshold) | {display_name, promql, duration_seconds, "
                      "evaluation_interval_seconds} (PromQL)], in order",
        "notification_emails": "[email]: the headwater email channels it notifies (by address)",
        "enabled": "bool",
    },
    Kind.MONITORING_DASHBOARD: {
        "display_name": "str",
        "widgets": "[{title, text} | {title, chart: [{filter, per_series_aligner, cross_series_reducer, "
                   "alignment_period_seconds, group_by} | {promql}], y_label, thresholds: [{label, value}]}], "
                   "top to bottom, two charts a row",
    },
}

# --------------------------------------------------------------------------- digests

DIGEST_KEY = "$digest"


def digest(value: object) -> str:
    """A short, stable fingerprint of a JSON-like value (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def digest_of(value: object) -> dict[str, str]:
    """How a provider reports a field it can only fingerprint, not read back."""
    return {DIGEST_KEY: digest(value)}


def is_digest(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {DIGEST_KEY}


# A live field the provider cannot read back where it runs (an emulator that drops it): the
# planner does not compare it. Never used against the real services, where every field is read.
UNOBSERVABLE_KEY = "$unobservable"


def unobservable(reason: str) -> dict[str, str]:
    return {UNOBSERVABLE_KEY: reason}


def is_unobservable(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {UNOBSERVABLE_KEY}


@dataclass(frozen=True)
class Resource:
    """One GCP object, desired or live. See the module docstring."""

    kind: Kind
    name: str
    spec: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    # Desired side only: refuse delete/replace even with --allow-destroy.
    deletion_protection: bool = True
    # Desired side only: headwater's own settings for this resource, never sent to GCP
    # (e.g. {"schema_evolution": "backward_compatible"} for tables).
    options: Mapping[str, Any] = field(default_factory=dict)
    # Desired side only: a resource of another project that this platform references by its full
    # name; never created, changed or deleted here, only read (see the module docstring).
    external: bool = False
    # Live side only: observed facts beside the spec (`WOULD_LOSE`, `LEAVING`); never diffed or sent.
    status: Mapping[str, Any] = field(default_factory=dict)

    if TYPE_CHECKING:  # (not a field: set by __post_init__, never compared or shown)
        address: str  # ``kind.name``, e.g. ``pubsub_subscription.orders-ingest`` (`address()`)

    def __post_init__(self) -> None:
        # The address, made once (an instance attribute beside the fields: not compared, not a
        # field): a plan of 10,000 sources asks for the addresses of its 110,000 resources
        # millions of times. (functools.cached_property takes a lock per first use on 3.11.)
        object.__setattr__(self, "address", address(self.kind, self.name))

    @property
    def source_id(self) -> str | None:
        return self.labels.get(SOURCE_KEY)

    @property
    def holds_data(self) -> bool:
        return self.kind in DATA_KINDS and not self.external

    @property
    def managed(self) -> bool:
        """Carries ``managed-by=headwater`` (of any platform)."""
        return is_managed(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "kind": str(self.kind),
            "name": self.name,
            "spec": dict(self.spec),
            "labels": dict(sorted(self.labels.items())),
            "depends_on": list(self.depends_on),
            "deletion_protection": self.deletion_protection,
            **({"external": True} if self.external else {}),
        }


def is_managed(labels: Mapping[str, str] | None) -> bool:
    return (labels or {}).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


def address(kind: Kind | str, name: str) -> str:
    """The stable address of a resource, e.g. ``pubsub_subscription.orders-ingest``."""
    return f"{kind}.{name}"


class ResourceIndex(Mapping[str, Resource]):
    """Resources by address - an immutable mapping that knows which addresses differ from the
    index it was derived from (issue 14: a one-source commit at 10,000 sources must not compare
    110,000 resources to find the dozen that changed).

    * ``ResourceIndex(resources)``: by address, a later resource of one address replacing an
      earlier one (as a dict comprehension would);
    * ``index.derive(put=(), drop=())``: a new index, ``index`` with ``drop``'s addresses removed
      and then ``put``'s resources stored; ``index`` itself is unchanged. The two share what did
      not change (a hash array mapped trie, ``immutables.Map``), so deriving costs a step per
      resource put or dropped - not a copy of 110,000 entries (a dict copy: ~4 ms each, three a
      sync); a lookup costs about twice a dict's;
    * ``later.changed_since(earlier)``: the addresses whose resource in ``later`` is not the very
      object (``is``) ``earlier`` held there - added, removed or replaced - when ``later`` was
      derived from ``earlier`` (directly or within `MAX_CHAIN` derivations, while ``earlier`` is
      alive and the difference at most `MAX_CARRIED` addresses), or when both were derived from
      one index (then the addresses either changed since it: a few more, never fewer); else None
      (compare them some other way). Derivations remember their ancestors weakly: an index no
      one holds is freed;
    * ``index.dependents(address)``: the addresses of the resources whose ``depends_on`` names
      ``address`` (built on first use, then carried along derivations at a step per change).

    Reading: ``index[address]``, ``get``, ``in``, ``len``, iteration (addresses), ``keys()`` /
    ``items()`` / ``values()``.
    """

    __slots__ = ("_items", "_ancestors", "_dependents", "__weakref__")
    MAX_CHAIN = 4
    MAX_CARRIED = 4096

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        self._items: immutables.Map[str, Resource] = immutables.Map((r.address, r) for r in resources)
        # (weak reference to an ancestor, the addresses changed since it), nearest first.
        self._ancestors: tuple[tuple[weakref.ref[ResourceIndex], frozenset[str]], ...] = ()
        self._dependents: immutables.Map[str, frozenset[str]] | None = None

    # -- Mapping
    def __getitem__(self, address: str) -> Resource:
        return self._items[address]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, address: object) -> bool:
        return address in self._items

    def get(self, address: str, default: Any = None) -> Any:
        return self._items.get(address, default)

    def values(self):  # noqa: ANN201 - the map's own view: iterates in C
        return self._items.values()

    def items(self):  # noqa: ANN201
        return self._items.items()

    def __repr__(self) -> str:
        return f"ResourceIndex({len(self._items)} resources)"

    # -- derivation
    def derive(self, put: Iterable[Resource] = (), drop: Iterable[str] = ()) -> ResourceIndex:
        touched: set[str] = set()
        with self._items.mutate() as items:
            for address_ in drop:
                if items.pop(address_, None) is not None:
                    touched.add(address_)
            for resource in put:
                items[resource.address] = resource
                touched.add(resource.address)
            after = items.finish()
        before = self._items
        changed = frozenset(a for a in touched if before.get(a) is not after.get(a))
        derived = ResourceIndex.__new__(ResourceIndex)
        derived._items = after
        carried = [(weakref.ref(self), changed)]
        for ref, since in self._ancestors[: self.MAX_CHAIN - 1]:
            if len(since) + len(changed) <= self.MAX_CARRIED:
                carried.append((ref, since | changed))
        derived._ancestors = tuple(carried)
        derived._dependents = self._patched_dependents(after, changed) if self._dependents is not None else None
        return derived

    def changed_since(self, earlier: ResourceIndex) -> frozenset[str] | None:
        if earlier is self:
            return frozenset()
        for ref, since in self._ancestors:
            if ref() is earlier:
                return since
        # Siblings, derived from one index (`Engine.plan_live` derives the providers' quotes from
        # the live index, the cache its next one from the same): what either changed since it.
        # (`weakref.ref` hands out one reference per object: the same, even once it is freed.)
        for ref, since in self._ancestors:
            for theirs, their_since in earlier._ancestors:
                if ref is theirs:
                    return since | their_since
        return None

    # -- reverse dependencies
    def dependents(self, address_: str) -> frozenset[str]:
        return self.prepare_dependents()._dependents.get(address_, frozenset())

    def prepare_dependents(self) -> ResourceIndex:
        """Build `dependents` now (a pass over every resource, once): indexes derived from this
        one afterwards carry them instead of building their own. Returns the index."""
        if self._dependents is None:
            found: dict[str, set[str]] = {}
            for resource in self._items.values():
                for dep in resource.depends_on:
                    found.setdefault(dep, set()).add(resource.address)
            self._dependents = immutables.Map((dep, frozenset(users)) for dep, users in found.items())
        return self

    def _patched_dependents(self, after: immutables.Map[str, Resource], changed: frozenset[str]
                            ) -> immutables.Map[str, frozenset[str]]:
        before = self._items
        with self._dependents.mutate() as dependents:
            for address_ in changed:
                old, new = before.get(address_), after.get(address_)
                for dep in old.depends_on if old is not None else ():
                    dependents[dep] = dependents.get(dep, frozenset()) - {address_}
                for dep in new.depends_on if new is not None else ():
                    dependents[dep] = dependents.get(dep, frozenset()) | {address_}
            return dependents.finish()
