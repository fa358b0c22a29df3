"""The IAM grants as `reconciler.governance` defined them before the fold: a frozen ORACLE.

Until the fold, ``reconciler/governance.py`` held the grants twice: this one-pass form
(`access_grants` + `bindings_of`, what `governance_resources` was built on, used by the compile
without memo) and the per-source form (`source_grants`, `platform_grants`, `GrantIndex`, used by
the memoized compile). The per-source form is now the one definition, for both compile paths.
This module is the pre-fold one-pass code, copied verbatim but for its imports (the role names
and the helpers it shares with the live module, among them `merge_bindings`, the join with
column-level security's bindings, which was never written twice and stays live), kept ONLY to
compare against: tests/test_governance_fold.py checks that the live `governance_resources`
equals `governance_resources` here, resource for resource, in the same order, with the same notes.

Do not fix, extend or reuse it: a change of a grant rule is made in reconciler/governance.py,
and, when it is meant to change what is granted, this oracle no longer states the rule - the
differential test then says so, and the oracle is updated (or retired) with that change on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler.config import ENGINEERS_TIER, Platform
from reconciler.governance import (
    _BUCKET_ROLE,
    _DATASET_ROLE,
    AUDIT_LOG_TYPES,
    AUDIT_SERVICES,
    BRONZE_OPEN,
    BUCKET_METADATA_READER,
    BUCKET_READER,
    BUCKET_WRITER,
    DATAFLOW_WORKER,
    DATASET_READER,
    DATASET_WRITER,
    JOB_USER,
    PUBSUB_VIEWER,
    SERVICE_AGENT,
    SUBSCRIBER,
    TOPIC_PUBLISHER,
    ZONES,
    binding_name,
    has_classified_columns,
    merge_bindings,
    resolve,
    zone_readers,
)
from reconciler.resources import Kind, Resource, address


class _Grants:
    """Members per (target address, role), merged; a note per binding for the plan."""

    def __init__(self) -> None:
        self.members: dict[tuple[str, str], set[str]] = {}
        self.notes: dict[tuple[str, str], list[str]] = {}

    def add(self, target: str, role: str, members: Iterable[str], note: str | None = None) -> None:
        members = set(members)
        if not members:
            return
        self.members.setdefault((target, role), set()).update(members)
        if note and note not in self.notes.setdefault((target, role), []):
            self.notes[(target, role)].append(note)


def governance_resources(state: Any, desired: Sequence[Resource]) -> list[Resource]:
    """The governance resources of ``state`` (a `DesiredState`), given every other compiled
    resource (``desired``: the graph the least-privilege roles are derived from).

    The one compile hook of issue 13: `reconciler.compile.compile_resources` calls it once. The
    column-level part (`reconciler.classification`: taxonomy, policy tags, data policies, column
    policies, and its fine-grained / masked reader bindings) is added here too, in the marked
    place, so that bindings of the same (target, role) merge into one resource.
    """
    from reconciler.compile import base_labels, zone_names

    platform = state.platform
    labels = base_labels(platform)
    names = zone_names(platform)
    grants = access_grants(platform, names, state.sources, desired)
    resources = bindings_of(platform, grants, desired, labels)
    # Column-level security (reconciler/classification.py): its resources join here, and its
    # bindings merge with these by name.
    from reconciler.classification import classification_resources

    resources += classification_resources(platform, names, state.sources)
    if platform.audit_logs:
        resources += [Resource(Kind.PROJECT_AUDIT_CONFIG, service, {"log_types": list(AUDIT_LOG_TYPES)}, labels)
                      for service in AUDIT_SERVICES]
    return merge_bindings(resources)


def bindings_of(platform: Platform, grants: _Grants, desired: Sequence[Resource],
                labels: Mapping[str, str]) -> list[Resource]:
    """The ``iam_binding`` resources of ``grants``; exclusive on the zones' datasets and buckets
    when ``access.exclusive`` is."""
    from reconciler.compile import zone_names

    declared = {r.address for r in desired}
    zone_targets = _zone_targets(platform, zone_names(platform), desired)
    resources = []
    for (target, role), members in sorted(grants.members.items()):
        exclusive = platform.access.exclusive and target in zone_targets
        notes = grants.notes.get((target, role), [])
        resources.append(Resource(
            Kind.IAM_BINDING, binding_name(target, role),
            {"target": target, "role": role, "members": sorted(members), "exclusive": exclusive},
            dict(labels), depends_on=(target,) if target in declared else (),
            deletion_protection=False, options={"why": "; ".join(notes)} if notes else {}))
    return resources


def _zone_targets(platform: Platform, names: Any, desired: Sequence[Resource]) -> set[str]:
    from reconciler.serving import FEATURES, REPORTING

    targets = {address(Kind.BIGQUERY_DATASET, d) for d in names.datasets.values()}
    targets |= {address(Kind.STORAGE_BUCKET, b) for b in names.buckets.values()}
    targets |= {r.address for r in desired if r.kind == Kind.BIGQUERY_DATASET and r.name in (REPORTING, FEATURES)}
    return targets


def access_grants(platform: Platform, names: Any, sources: Sequence[Any], desired: Sequence[Resource]) -> _Grants:
    """Every grant of the access settings, the service accounts and the service agents (the
    module docstring and docs/governance.md, "Access")."""
    grants = _Grants()
    _zone_grants(grants, platform, names, sources, desired)
    _source_grants(grants, platform, names, sources, desired)
    _service_account_grants(grants, platform, names, desired)
    _service_agent_grants(grants, platform, names, desired)
    return grants


def _zone_grants(grants: _Grants, platform: Platform, names: Any, sources: Sequence[Any],
                 desired: Sequence[Resource]) -> None:
    from reconciler.serving import FEATURES, REPORTING

    datasets = {zone: [address(Kind.BIGQUERY_DATASET, names.datasets[zone])] for zone in ("bronze", "silver", "gold")}
    # The serving layer's reporting views and feature tables are Gold data: Gold's readers read them.
    datasets["gold"] += [r.address for r in desired if r.kind == Kind.BIGQUERY_DATASET and r.name in (REPORTING, FEATURES)]
    buckets = {zone: [address(Kind.STORAGE_BUCKET, names.buckets[zone])] for zone in ("landing", "bronze", "silver")}
    restricted = sorted(s.source_id for s in sources if has_classified_columns(s))
    bronze_tables: dict[str | None, list[str]] = {}  # by source, in compile order (one pass: O(resources))
    for r in desired:
        if r.kind == Kind.BIGQUERY_TABLE and r.name.startswith(names.datasets["bronze"] + "."):
            bronze_tables.setdefault(r.source_id, []).append(r.address)
    open_bronze = [table for s in sources if not has_classified_columns(s) for table in bronze_tables.get(s.source_id, [])]
    engineers = set(platform.access.tiers.get(ENGINEERS_TIER, []))
    for zone in ZONES:
        entries = zone_readers(platform, zone)
        readers = resolve(platform, entries)
        if zone == "bronze" and restricted:
            # Bronze holds raw payloads, classified columns in clear: only the engineers' tier reads
            # the whole zone; every other Bronze reader reads the raw tables of sources without any.
            whole = [m for m in readers if m in engineers and ENGINEERS_TIER in entries]
            others = [m for m in readers if m not in whole]
            why = (f"Bronze holds the raw records of {', '.join(restricted)}, which have classified columns: only the "
                   f"{ENGINEERS_TIER} tier reads the whole zone")
            for target in datasets[zone]:
                grants.add(target, DATASET_READER, whole, why)
            for target in buckets[zone]:
                grants.add(target, BUCKET_READER, whole, why)
            for table in open_bronze:
                grants.add(table, DATASET_READER, others,
                           f"a table-level read instead of the Bronze dataset: {', '.join(restricted)} "
                           f"{'has' if len(restricted) == 1 else 'have'} classified columns, whose raw records only "
                           f"the {ENGINEERS_TIER} tier reads")
        else:
            # Bronze open to all its readers is the state a removed last classification returns to:
            # the plan says why the whole zone is readable (docs/governance.md, "Bronze and classified columns").
            why = (f"{BRONZE_OPEN}: Bronze readers read the whole zone" if zone == "bronze" else None)
            for target in datasets.get(zone, []):
                grants.add(target, DATASET_READER, readers, why)
            for target in buckets.get(zone, []):
                grants.add(target, BUCKET_READER, readers, why)
        for role, entries_ in getattr(platform.access.zones, zone).bindings.items():
            members = resolve(platform, entries_)
            custom = role.startswith(("projects/", "organizations/"))
            if custom or _DATASET_ROLE.match(role):
                for target in datasets.get(zone, []):
                    grants.add(target, role, members)
            if custom or _BUCKET_ROLE.match(role):
                for target in buckets.get(zone, []):
                    grants.add(target, role, members)


def _source_grants(grants: _Grants, platform: Platform, names: Any, sources: Sequence[Any],
                   desired: Sequence[Resource]) -> None:
    from reconciler.compile import is_foreign, topic_id

    silver, gold = names.datasets["silver"] + ".", names.datasets["gold"] + "."
    for source in sources:
        access = source.connector.access
        sid = source.source_id
        readers = resolve(platform, access.readers)
        if readers:
            for r in desired:
                if r.kind == Kind.BIGQUERY_TABLE and r.source_id == sid and r.name.startswith((silver, gold)):
                    grants.add(r.address, DATASET_READER, readers, f"access.readers of {sid}")
        topic = topic_id(source.connector, platform.project)
        if is_foreign(topic):
            continue
        grants.add(address(Kind.PUBSUB_TOPIC, topic), TOPIC_PUBLISHER, resolve(platform, access.publishers),
                   f"access.publishers of {sid}")
        grants.add(address(Kind.PUBSUB_TOPIC, topic), SUBSCRIBER, resolve(platform, access.subscribers),
                   f"access.subscribers of {sid}: they attach their own subscriptions to the topic")


def _dataset_of(table: str) -> str:
    """``project.dataset.table`` or ``dataset.table`` -> dataset."""
    parts = table.split(".")
    return parts[-2]


def _bucket_of(uri: str) -> str:
    return uri.removeprefix("gs://").split("/", 1)[0]


def _service_account_grants(grants: _Grants, platform: Platform, names: Any, desired: Sequence[Resource]) -> None:
    """The roles each declared service account's jobs and services need, from what they read and
    write in the compiled graph. Undeclared accounts (the Compute Engine default) get nothing."""
    from reconciler.serving import API, API_SERVICE

    declared = {r.address for r in desired}

    def grant(target: str, role: str, member: str, note: str) -> None:
        if target in declared or target.startswith("project."):
            grants.add(target, role, [member], note)

    project = f"project.{platform.project}"
    worker = platform.dataflow.service_account
    if worker:
        member = f"serviceAccount:{worker}"
        why = "the Dataflow workers' account (dataflow.service_account)"
        jobs = [r for r in desired if r.kind == Kind.DATAFLOW_JOB]
        if jobs:
            grant(project, DATAFLOW_WORKER, member, why)
            grant(project, JOB_USER, member, why)
            temp = platform.dataflow.temp_location or f"gs://{names.buckets['landing']}/dataflow/tmp"
            grant(address(Kind.STORAGE_BUCKET, _bucket_of(temp)), BUCKET_WRITER, member, why + ": temporary files")
        for job in jobs:
            spec, pipeline = job.spec, job.spec.get("pipeline") or {}
            subscription = (spec.get("parameters") or {}).get("input_subscription")
            if subscription:
                target = address(Kind.PUBSUB_SUBSCRIPTION, subscription.rsplit("/", 1)[-1])
                grant(target, SUBSCRIBER, member, why)
                grant(target, PUBSUB_VIEWER, member, why + ": Dataflow reads the subscription's settings")
            topic = (pipeline.get("dead_letter") or {}).get("topic")
            if topic:
                grant(address(Kind.PUBSUB_TOPIC, topic.rsplit("/", 1)[-1]), TOPIC_PUBLISHER, member, why)
            reads_silver = spec.get("template") == "bigquery_to_bigquery"
            written = [pipeline.get(k, {}).get("table") for k in ("bronze", "gold", "features")]
            written += [] if reads_silver else [pipeline.get("silver", {}).get("table")]
            for table in (pipeline.get("cdc") or {}).get("tables", []):
                written += [table.get("bronze", {}).get("table"), table.get("silver", {}).get("table")]
            for table in filter(None, written):
                grant(address(Kind.BIGQUERY_DATASET, _dataset_of(table)), DATASET_WRITER, member, why)
            if reads_silver and pipeline.get("silver", {}).get("table"):
                grant(address(Kind.BIGQUERY_DATASET, _dataset_of(pipeline["silver"]["table"])), DATASET_READER,
                      member, why)
            pattern = (spec.get("parameters") or {}).get("input_pattern")
            if pattern:  # file jobs read, claim and (batch_file) move landed files
                grant(address(Kind.STORAGE_BUCKET, _bucket_of(pattern)), BUCKET_WRITER, member, why)
            bronze_bucket = (pipeline.get("bronze") or {}).get("bucket")
            if bronze_bucket:
                grant(address(Kind.STORAGE_BUCKET, _bucket_of(bronze_bucket)), BUCKET_WRITER, member, why)
        _drop_implied(grants, member)
    connectors = platform.connectors.service_account
    if connectors:
        member = f"serviceAccount:{connectors}"
        why = "the connectors' account (connectors.service_account)"
        for service in desired:
            document = service.spec.get("connector") or {}
            if service.kind != Kind.CLOUD_RUN_SERVICE or service.name == API_SERVICE:
                continue
            for key in ("topic", "dead_letter_topic"):
                if document.get(key):
                    grant(address(Kind.PUBSUB_TOPIC, document[key].rsplit("/", 1)[-1]), TOPIC_PUBLISHER, member, why)
    api = platform.api.service_account
    if api and any(r.kind == Kind.CLOUD_RUN_SERVICE and r.name == API_SERVICE for r in desired):
        member = f"serviceAccount:{api}"
        why = "the data API's account (api.service_account)"
        grant(address(Kind.BIGQUERY_DATASET, API), DATASET_READER, member, why)
        grant(project, JOB_USER, member, why)


def _drop_implied(grants: _Grants, member: str) -> None:
    """Least privilege without repeats: a dataset reader role where the member is its editor."""
    for (target, role), members in list(grants.members.items()):
        if role == DATASET_READER and member in members and member in grants.members.get((target, DATASET_WRITER), ()):
            members.discard(member)
            if not members:
                del grants.members[(target, role)]
                grants.notes.pop((target, role), None)


def _service_agent_grants(grants: _Grants, platform: Platform, names: Any, desired: Sequence[Resource]) -> None:
    """The service agents' grants the graph needs and no provider makes already: Pub/Sub's for
    dead-lettering, Datastream's on the landing bucket. (Cloud Storage's publisher grant for
    notifications is ``storage_notification.publisher_grant``, Storage Transfer's are
    ``storage_transfer_job.service_agent_grants``: not repeated here, except that an exclusive
    zone binding lists an agent those grants put in it, so that exclusivity keeps it.)"""
    pubsub = f"{SERVICE_AGENT}pubsub"
    for sub in desired:
        policy = sub.spec.get("dead_letter_policy") if sub.kind == Kind.PUBSUB_SUBSCRIPTION else None
        if not policy:
            continue
        why = (f"dead-lettering of {sub.name}: Pub/Sub forwards undeliverable messages as its service agent")
        grants.add(sub.address, SUBSCRIBER, [pubsub], why)
        grants.add(address(Kind.PUBSUB_TOPIC, policy["dead_letter_topic"]), TOPIC_PUBLISHER, [pubsub], why)
    landing = address(Kind.STORAGE_BUCKET, names.buckets["landing"])
    if any(r.kind == Kind.DATASTREAM_STREAM for r in desired):
        why = "Datastream writes the change events of database_cdc sources into the landing bucket"
        grants.add(landing, BUCKET_WRITER, [f"{SERVICE_AGENT}datastream"], why)
        grants.add(landing, BUCKET_METADATA_READER, [f"{SERVICE_AGENT}datastream"], why)
    if platform.access.exclusive:
        transfer_sinks = {address(Kind.STORAGE_BUCKET, r.spec["sink"]["bucket"]) for r in desired
                          if r.kind == Kind.STORAGE_TRANSFER_JOB and r.spec.get("service_agent_grants")}
        for target in transfer_sinks:
            for role in ("roles/storage.legacyBucketWriter", BUCKET_READER):
                if (target, role) in grants.members:
                    grants.add(target, role, [f"{SERVICE_AGENT}storagetransfer"],
                               "kept for the Storage Transfer jobs (their own grant) under access.exclusive")
