"""Governance: who may read what (issue 13; docs/governance.md).

Pure functions of the validated desired state, no I/O. Three jobs:

* `check` - the cross-file checks of the governance settings, at load time (`reconciler.load`
  calls it): every tier named exists, every zone binding's role can be granted on that zone's
  dataset or bucket, every classification a schema field or a ``classify`` entry names is declared
  in platform.yaml, every ``classify`` path is a field of the source's schema, publishers and
  subscribers only on a topic this platform manages. Each problem as file:line:col: field: message.
* `governance_resources` - the compile hook (`reconciler.compile.compile_resources` calls it
  once, with everything else compiled): the ``iam_binding`` resources of the access tiers, of
  the sources' own ``access:`` blocks, of the service accounts' least-privilege roles derived
  from the compiled graph, and of the service agents; the ``project_audit_config`` resources of
  ``audit_logs: true``. `reconciler.classification`'s resources (taxonomy, policy tags, data
  policies, column policies, fine-grained readers) join at the same hook.
* `exclusive_problems` - the plan-time refusal of an ``access.exclusive`` that would remove
  headwater's own identity or a service agent from a binding (`reconciler.engine` calls it).

An ``iam_binding`` is one role on one target, named ``<target kind>:<target name>:<role>``
(``bigquery_dataset:silver:roles/bigquery.dataViewer``); its spec is `SPEC_SHAPES`' (target
address, role, sorted members, exclusive). Members of one (target, role) from several places are
merged into one binding. Its labels are the platform's base labels (the provider's ledger keeps
them: IAM policies carry none). ``Resource.options["why"]``, when set, is a sentence the plan
adds to the binding's security phrase (e.g. why Bronze is read table by table).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.config import DEFAULT_ZONE_READERS, ENGINEERS_TIER, Platform, SchemaField
from reconciler.resources import Kind, Resource, address

# --------------------------------------------------------------------------- roles and names

DATASET_READER = "roles/bigquery.dataViewer"
DATASET_WRITER = "roles/bigquery.dataEditor"
BUCKET_READER = "roles/storage.objectViewer"
BUCKET_WRITER = "roles/storage.objectAdmin"
BUCKET_METADATA_READER = "roles/storage.legacyBucketReader"
TOPIC_PUBLISHER = "roles/pubsub.publisher"
SUBSCRIBER = "roles/pubsub.subscriber"
PUBSUB_VIEWER = "roles/pubsub.viewer"
JOB_USER = "roles/bigquery.jobUser"
DATAFLOW_WORKER = "roles/dataflow.worker"
AUDIT_SERVICES = ("bigquery.googleapis.com", "storage.googleapis.com")
AUDIT_LOG_TYPES = ["ADMIN_READ", "DATA_READ", "DATA_WRITE"]
SERVICE_AGENT = "serviceAgent:"  # serviceAgent:<service>: the project's service agent of that service
# The services whose agent a member ``serviceAgent:<service>`` may name: the ones providers/iam/agents.py
# resolves from the project number (its FORMS; tests/providers/test_iam.py holds the two equal).
SERVICE_AGENT_SERVICES = ("pubsub", "storage", "datastream", "storagetransfer")
ZONES = ("landing", "bronze", "silver", "gold")
BRONZE_OPEN = "no source has classified columns any more"
# A roles/<service>.<role> grantable on a zone's dataset or bucket; custom roles go on both.
_DATASET_ROLE = re.compile(r"^roles/bigquery\.")
_BUCKET_ROLE = re.compile(r"^roles/storage\.")
# Of those, the predefined roles a dataset / bucket IAM policy takes (their "lowest-level resource"
# is the dataset / bucket or below it, https://cloud.google.com/iam/docs/roles-permissions/bigquery
# and .../storage). The others of the service (roles/bigquery.jobUser, roles/storage.hmacKeyAdmin,
# ...) are granted on a project only, and would fail at apply: refused at validate. A short list on
# purpose; a role missing from it that a dataset or bucket does take is a one-line addition here.
DATASET_GRANTABLE_ROLES = frozenset({
    "roles/bigquery.dataViewer", "roles/bigquery.dataEditor", "roles/bigquery.dataOwner",
    "roles/bigquery.metadataViewer", "roles/bigquery.user", "roles/bigquery.admin",
    "roles/bigquery.routineAdmin", "roles/bigquery.routineDataEditor", "roles/bigquery.routineDataViewer",
    "roles/bigquery.routineMetadataViewer",
})
BUCKET_GRANTABLE_ROLES = frozenset({
    "roles/storage.objectViewer", "roles/storage.objectCreator", "roles/storage.objectUser",
    "roles/storage.objectAdmin", "roles/storage.admin", "roles/storage.bucketViewer", "roles/storage.folderAdmin",
    "roles/storage.legacyBucketReader", "roles/storage.legacyBucketWriter", "roles/storage.legacyBucketOwner",
    "roles/storage.legacyObjectReader", "roles/storage.legacyObjectOwner",
})
# Service agents' e-mails as a provider may report them when it cannot map them back
# (service-<n>@gcp-sa-<service>..., the Cloud Storage and Storage Transfer agents' own forms).
_AGENT_EMAIL = re.compile(r"^serviceAccount:(service-[0-9]+@gcp-sa-[a-z0-9-]+\.iam\.gserviceaccount\.com|"
                          r"service-[0-9]+@gs-project-accounts\.iam\.gserviceaccount\.com|"
                          r"project-[0-9]+@storage-transfer-service\.iam\.gserviceaccount\.com|"
                          r"[0-9]+@cloudservices\.gserviceaccount\.com)$")


def binding_name(target: str, role: str) -> str:
    """``bigquery_dataset.silver`` + role -> ``bigquery_dataset:silver:<role>`` (the resource's name)."""
    kind, _, name = target.partition(".")
    return f"{kind}:{name}:{role}"


def reconciler_member(platform: Platform) -> str:
    """headwater's own identity: ``access.reconciler``, else deploy/iam.md's apply account."""
    return platform.access.reconciler or f"serviceAccount:headwater-apply@{platform.project}.iam.gserviceaccount.com"


def is_service_agent(member: str) -> bool:
    return member.startswith(SERVICE_AGENT) or bool(_AGENT_EMAIL.match(member))


def resolve(platform: Platform, entries: Iterable[str]) -> list[str]:
    """Tier names and members -> the members, sorted, each once (unknown tiers are `check`'s)."""
    tiers = platform.access.tiers
    members: set[str] = set()
    for entry in entries:
        members.update(tiers.get(entry, []) if ":" not in entry else [entry])
    return sorted(members)


def zone_readers(platform: Platform, zone: str) -> list[str]:
    """The zone's reader entries (tier names or members): declared, else the seed's default tiers
    that ``access.tiers`` declares."""
    declared = getattr(platform.access.zones, zone).readers
    if declared is not None:
        return list(declared)
    return [tier for tier in DEFAULT_ZONE_READERS[zone] if tier in platform.access.tiers]


# --------------------------------------------------------------------------- classified columns


@dataclass(frozen=True)
class ClassifiedColumn:
    """A column a class applies to: its Silver table (``<dataset>.<table>``), dotted path, class,
    and where it was declared (file, location in that file) for problems."""

    table: str
    path: str
    class_name: str
    file: str
    loc: tuple


def _schema_classes(fields: Sequence[SchemaField], loc: tuple = ("fields",), prefix: str = ""):
    for index, item in enumerate(fields):
        path = f"{prefix}{item.name}"
        if item.class_name:
            key = "classification" if item.classification else "policy_tag"
            yield path, item.class_name, (*loc, index, key)
        if item.fields:
            yield from _schema_classes(item.fields, (*loc, index, "fields"), path + ".")


def classified_columns(source: Any, silver_dataset: str) -> list[ClassifiedColumn]:
    """Every classified column of a source's Silver table(s): the schema files' ``classification``
    / ``policy_tag`` and the connector's ``classify`` map (a database_cdc source: per table,
    ``<table key>.<path>``). Paths that are not fields are `check`'s problems, left out here."""
    from reconciler.cdc import silver_table

    connector = source.connector
    sid = connector.source_id
    found: list[ClassifiedColumn] = []
    schemas: list[tuple[str, Any, str, str]] = []  # (silver table, schema, schema file, classify prefix)
    if source.tables:
        schemas = [(silver_table(silver_dataset, sid, t.key), t.schema, t.schema_file, f"{t.key}.")
                   for t in source.tables]
    elif source.schema is not None:
        schemas = [(f"{silver_dataset}.{sid}", source.schema, source.schema_file, "")]
    for table, schema, schema_file, _prefix in schemas:
        for path, class_name, loc in _schema_classes(schema.fields):
            found.append(ClassifiedColumn(table, path, class_name, schema_file, loc))
    for dotted, class_name in connector.classify.items():
        for table, schema, _file, prefix in schemas:
            if prefix and not dotted.startswith(prefix):
                continue
            path = dotted[len(prefix):]
            if schema.find(path) is not None:
                found.append(ClassifiedColumn(table, path, class_name, source.connector_file, ("classify", dotted)))
    return found


def has_classified_columns(source: Any) -> bool:
    return bool(classified_columns(source, "silver"))


# --------------------------------------------------------------------------- load-time checks


def check(collector: Any, platform: Platform | None, platform_map: Any, sources: Sequence[Any],
          unchanged: Collection[int] = frozenset()) -> None:
    """The cross-file checks of the module docstring; each problem added to ``collector`` (a
    `reconciler.load._Collector`) as file:line:col: field: message. ``unchanged``: ``id()`` of
    sources an earlier load checked, without a problem, under this very platform object
    (`load_repo`'s ``previous``): a source's checks here read only it and the platform, so they
    are skipped."""
    if platform is None:
        return
    from reconciler.compile import is_foreign, topic_id

    tiers = platform.access.tiers

    def at(file: str, smap: Any, loc: tuple, message: str) -> None:
        collector.add(file, smap.find(loc) if smap is not None else (1, 1), _dotted(loc), message)

    def tier_refs(file: str, smap: Any, loc: tuple, entries: Iterable[str]) -> None:
        for index, entry in enumerate(entries):
            if ":" in entry or entry in tiers:
                continue
            close = difflib.get_close_matches(entry, list(tiers), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            declared = ", ".join(sorted(tiers)) or "none"
            at(file, smap, (*loc, index), f"unknown tier {entry!r}{hint}: access.tiers in platform.yaml declares "
                                          f"{declared}; name a tier or an IAM member (group:NAME@DOMAIN, ...)")

    pf = "platform.yaml"
    for zone in ZONES:
        settings = getattr(platform.access.zones, zone)
        if settings.readers is not None:
            tier_refs(pf, platform_map, ("access", "zones", zone, "readers"), settings.readers)
        for role, entries in settings.bindings.items():
            loc = ("access", "zones", zone, "bindings", role)
            tier_refs(pf, platform_map, loc, entries)
            problem = _zone_role_problem(zone, role)
            if problem:
                at(pf, platform_map, loc, problem)
    for name, classification in platform.classifications.items():
        tier_refs(pf, platform_map, ("classifications", name, "readers"), classification.readers)

    classes = platform.classifications
    silver = platform.zones.silver.dataset or "silver"
    for source in sources:
        if id(source) in unchanged:
            continue
        connector, rel, smap = source.connector, source.connector_file, source.connector_map
        for key in ("readers", "publishers", "subscribers"):
            tier_refs(rel, smap, ("access", key), getattr(connector.access, key))
            topic = topic_id(connector, platform.project)
            if key != "readers" and getattr(connector.access, key) and is_foreign(topic):
                at(rel, smap, ("access", key), f"the topic {topic} is another project's (a reference, never managed "
                                               f"here): grant access.{key} on it in that project")
        for column in classified_columns(source, silver):
            if column.class_name not in classes:
                close = difflib.get_close_matches(column.class_name, list(classes), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                file_map = smap if column.file == rel else _schema_map(source, column.file)
                at(column.file, file_map, column.loc,
                   f"classification {column.class_name!r} of {column.table}/{column.path} is not defined{hint}: "
                   f"platform.yaml's classifications declare {', '.join(sorted(classes)) or 'none'}")
        _check_classify_paths(source, at)


def _check_classify_paths(source: Any, at) -> None:
    """Every ``classify`` key names a field (a leaf: BigQuery tags leaf columns only)."""
    connector = source.connector
    tables = {t.key: t for t in source.tables}
    for dotted in connector.classify:
        loc = ("classify", dotted)
        if tables:
            key, _, path = dotted.partition(".")
            table = tables.get(key)
            if table is None or not path:
                at(source.connector_file, source.connector_map, loc,
                   f"classify {dotted!r}: a database_cdc source's entries are <table>.<field path>, <table> one of "
                   f"{', '.join(sorted(tables))}")
                continue
            schema, where = table.schema, table.schema_file
        elif source.schema is not None:
            schema, where, path = source.schema, source.schema_file, dotted
        else:
            continue
        field = schema.find(path)
        if field is None:
            # Suggest a leaf path (items.skuu -> items.sku): a RECORD is itself no classify target.
            close = difflib.get_close_matches(path, _leaf_paths(schema.fields), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            at(source.connector_file, source.connector_map, loc,
               f"policy tag on a field that does not exist: {path!r} is not a field of {where}{hint}")
        elif field.fields:
            at(source.connector_file, source.connector_map, loc,
               f"{path!r} is a {field.type}: BigQuery puts policy tags on leaf columns only; classify its nested fields")
        elif field.class_name and field.class_name != connector.classify[dotted]:
            key = "classification" if field.classification else "policy_tag"
            at(source.connector_file, source.connector_map, loc,
               f"classify {dotted!r}: {connector.classify[dotted]!r} conflicts with {key} "
               f"{field.class_name!r} of {path!r} in {where}: a column has one class; give it in one place")


def _leaf_paths(fields: Sequence[SchemaField], prefix: str = "") -> list[str]:
    """The dotted paths of a schema's leaf fields (the columns a policy tag can go on)."""
    paths: list[str] = []
    for item in fields:
        path = f"{prefix}{item.name}"
        paths += _leaf_paths(item.fields, path + ".") if item.fields else [path]
    return paths


def _schema_map(source: Any, schema_file: str) -> Any:
    if schema_file == source.schema_file:
        return source.schema_map
    return next((t.schema_map for t in source.tables if t.schema_file == schema_file), None)


def _zone_role_problem(zone: str, role: str) -> str | None:
    has_dataset, has_bucket = zone != "landing", zone != "gold"
    if role.startswith(("projects/", "organizations/")):
        return None  # a custom role: granted on each of the zone's targets
    if _DATASET_ROLE.match(role):
        if not has_dataset:
            return (f"{role} is a BigQuery role and the landing zone has no dataset (only its bucket): grant "
                    "roles/storage.* here")
        return None if role in DATASET_GRANTABLE_ROLES else _project_only(role, "dataset", DATASET_GRANTABLE_ROLES)
    if _BUCKET_ROLE.match(role):
        if not has_bucket:
            return (f"{role} is a Cloud Storage role and the gold zone has no bucket (only its dataset): grant "
                    "roles/bigquery.* here")
        return None if role in BUCKET_GRANTABLE_ROLES else _project_only(role, "bucket", BUCKET_GRANTABLE_ROLES)
    targets = " or ".join(t for t, ok in (("roles/bigquery.* (its dataset)", has_dataset),
                                          ("roles/storage.* (its bucket)", has_bucket)) if ok)
    what = "dataset and bucket" if has_dataset and has_bucket else "dataset" if has_dataset else "bucket"
    return f"{role} cannot be granted on the {zone} zone's {what}: a zone binding takes {targets}, or a custom role"


def _project_only(role: str, what: str, grantable: frozenset[str]) -> str:
    names = ", ".join(sorted(r.removeprefix("roles/") for r in grantable))
    return (f"{role} cannot be granted on a {what} (it is granted on a project; it would fail at apply): a zone "
            f"binding takes a {what}-level role ({names}) or a custom role")


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --------------------------------------------------------------------------- compile


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


def merge_bindings(resources: Sequence[Resource]) -> list[Resource]:
    """One ``iam_binding`` per name: the members of same-named bindings merged (sorted), exclusive
    if any is; other resources as they are."""
    merged: dict[str, Resource] = {}
    out: list[Resource] = []
    for resource in resources:
        if resource.kind != Kind.IAM_BINDING:
            out.append(resource)
            continue
        first = merged.get(resource.name)
        if first is None:
            merged[resource.name] = resource
            continue
        spec = {**first.spec, "members": sorted(set(first.spec["members"]) | set(resource.spec["members"])),
                "exclusive": bool(first.spec.get("exclusive")) or bool(resource.spec.get("exclusive"))}
        why = "; ".join(w for w in (first.options.get("why"), resource.options.get("why")) if w)
        merged[resource.name] = Resource(first.kind, first.name, spec, first.labels,
                                         tuple(dict.fromkeys((*first.depends_on, *resource.depends_on))),
                                         options={"why": why} if why else {})
    return out + list(merged.values())


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


# --------------------------------------------------------------------------- plan time


def exclusive_problems(state: Any, plan: Any) -> list[Any]:
    """One `Problem` per exclusive binding change that would remove headwater's own identity or a
    service agent, at platform.yaml's ``access.exclusive`` line: the plan is refused, nothing is
    changed (`reconciler.engine.Engine.plan` raises it as `InvalidDesiredState`)."""
    from reconciler.load import Problem

    platform = state.platform
    if not platform.access.exclusive:
        return []
    own = reconciler_member(platform)
    smap = state.platform_map
    line, column = smap.find(("access", "exclusive")) if smap is not None else (1, 1)
    problems = []
    for change in plan.non_noop:  # (a no-op's members are the declared ones)
        if change.kind != Kind.IAM_BINDING or change.desired is None or change.live is None:
            continue
        if not change.desired.spec.get("exclusive"):
            continue
        removed = set(change.live.spec.get("members") or []) - set(change.desired.spec.get("members") or [])
        for member in sorted(removed):
            if member == own or is_service_agent(member):
                who = "headwater's own identity (access.reconciler)" if member == own else "a service agent"
                role, target = change.desired.spec["role"], change.desired.spec["target"]
                problems.append(Problem(
                    "platform.yaml", line, column, "access.exclusive",
                    f"exclusive would remove {member}, {who}, from {role} on {target}: refused (the platform's "
                    f"own operating grants are never removed); {_keep_advice(platform, member, role, target)} "
                    "or set access.exclusive: false"))
    return problems


def _keep_advice(platform: Platform, member: str, role: str, target: str) -> str:
    """Where to declare ``member`` so that the exclusive binding keeps it (each place takes the
    member in this form: `reconciler.config.iam_member_problem` accepts serviceAgent:<service>)."""
    from reconciler.compile import zone_names
    from reconciler.serving import FEATURES, REPORTING

    kind, _, name = target.partition(".")
    if kind == Kind.DATACATALOG_POLICY_TAG:
        return f"declare {member} in classifications.{name.rsplit('/', 1)[-1]}.readers"
    if kind == Kind.BIGQUERY_DATA_POLICY:
        return (f"declare {member} among the readers of the zone holding the class's columns "
                "(access.zones.<zone>.readers)")
    names = zone_names(platform)
    zone = next((z for z, d in names.datasets.items() if kind == Kind.BIGQUERY_DATASET and d == name), None)
    zone = zone or next((z for z, b in names.buckets.items() if kind == Kind.STORAGE_BUCKET and b == name), None)
    if kind == Kind.BIGQUERY_DATASET and name in (REPORTING, FEATURES):
        zone = "gold"
    return f"declare {member} in access.zones.{zone or '<zone>'}.bindings under {role}"


# --------------------------------------------------------------------------- per source (compile's memo)
# `access_grants` + `bindings_of` again, in a form compile can update for the sources that changed
# (issue 14): each grant `_Grants.add` would make is a `Grant` of one origin (a source, or the
# platform), and `GrantIndex` keeps, per (target, role), how many grants give each member and each
# note. A binding is made again only for the targets whose grants, or whose standing (declared,
# a zone's target, a transfer's sink), changed. Same resources as `governance_resources`: the
# classes below stand for where in `access_grants` a grant is made, since `_drop_implied` runs
# between them and the notes keep the order of their first grant.

ZONE_OR_SOURCE = "a"  # _zone_grants, _source_grants: before _drop_implied
WORKER = "b"  # the Dataflow workers' account: before _drop_implied, only on a declared target
ACCOUNTS = "c"  # the connectors' and the data API's accounts: after it, only on a declared target
AGENTS = "e"  # _service_agent_grants


@dataclass(frozen=True)
class Grant:
    """One `_Grants.add`: ``rank`` orders its note among the notes of the same (target, role):
    (phase, step, position in its origin's grants); ``by_origin``: the order of the origins
    (sources, in the state's order) matters too (a note naming its source)."""

    target: str
    role: str
    members: frozenset[str]
    note: str | None
    cls: str
    rank: tuple[int, int, int]
    by_origin: bool = False


def _restricted_note(restricted: Sequence[str]) -> str:
    return (f"a table-level read instead of the Bronze dataset: {', '.join(restricted)} "
            f"{'has' if len(restricted) == 1 else 'have'} classified columns, whose raw records only "
            f"the {ENGINEERS_TIER} tier reads")


def _bronze_readers(platform: Platform) -> tuple[list[str], list[str]]:
    """Bronze's readers when some source has classified columns: (the whole zone's, the others)."""
    entries = zone_readers(platform, "bronze")
    readers = resolve(platform, entries)
    engineers = set(platform.access.tiers.get(ENGINEERS_TIER, []))
    whole = [m for m in readers if m in engineers and ENGINEERS_TIER in entries]
    return whole, [m for m in readers if m not in whole]


def source_grants(platform: Platform, names: Any, source: Any, own: Sequence[Resource],
                  restricted: Sequence[str]) -> tuple[Grant, ...]:
    """The grants `access_grants` makes for one source, from ``own`` (the resources compiled for it,
    in compile order) and ``restricted`` (the sources with classified columns, sorted)."""
    from reconciler.compile import is_foreign, topic_id
    from reconciler.serving import API_SERVICE

    out: list[Grant] = []
    sid = source.source_id

    def add(target: str, role: str, members: Iterable[str], note: str | None, cls: str, phase: int, step: int,
            by_origin: bool) -> None:
        members = frozenset(members)
        if members:
            out.append(Grant(target, role, members, note, cls, (phase, step, len(out)), by_origin))

    bronze, silver, gold = names.datasets["bronze"] + ".", names.datasets["silver"] + ".", names.datasets["gold"] + "."
    if restricted and not has_classified_columns(source):
        _whole, others = _bronze_readers(platform)
        note = _restricted_note(restricted)
        for r in own:
            if r.kind == Kind.BIGQUERY_TABLE and r.name.startswith(bronze) and r.source_id == sid:
                add(r.address, DATASET_READER, others, note, ZONE_OR_SOURCE, 1, 1, True)
    access = source.connector.access
    readers = resolve(platform, access.readers)
    if readers:
        for r in own:
            if r.kind == Kind.BIGQUERY_TABLE and r.source_id == sid and r.name.startswith((silver, gold)):
                add(r.address, DATASET_READER, readers, f"access.readers of {sid}", ZONE_OR_SOURCE, 2, 0, True)
    topic = topic_id(source.connector, platform.project)
    if not is_foreign(topic):
        add(address(Kind.PUBSUB_TOPIC, topic), TOPIC_PUBLISHER, resolve(platform, access.publishers),
            f"access.publishers of {sid}", ZONE_OR_SOURCE, 2, 0, True)
        add(address(Kind.PUBSUB_TOPIC, topic), SUBSCRIBER, resolve(platform, access.subscribers),
            f"access.subscribers of {sid}: they attach their own subscriptions to the topic", ZONE_OR_SOURCE, 2, 0,
            True)
    worker = platform.dataflow.service_account
    if worker:
        member = [f"serviceAccount:{worker}"]
        why = "the Dataflow workers' account (dataflow.service_account)"
        for job in own:
            if job.kind != Kind.DATAFLOW_JOB:
                continue
            spec, pipeline = job.spec, job.spec.get("pipeline") or {}
            subscription = (spec.get("parameters") or {}).get("input_subscription")
            if subscription:
                target = address(Kind.PUBSUB_SUBSCRIPTION, subscription.rsplit("/", 1)[-1])
                add(target, SUBSCRIBER, member, why, WORKER, 3, 1, False)
                add(target, PUBSUB_VIEWER, member, why + ": Dataflow reads the subscription's settings", WORKER, 3, 2,
                    False)
            topic_name = (pipeline.get("dead_letter") or {}).get("topic")
            if topic_name:
                add(address(Kind.PUBSUB_TOPIC, topic_name.rsplit("/", 1)[-1]), TOPIC_PUBLISHER, member, why, WORKER,
                    3, 1, False)
            reads_silver = spec.get("template") == "bigquery_to_bigquery"
            written = [pipeline.get(k, {}).get("table") for k in ("bronze", "gold", "features")]
            written += [] if reads_silver else [pipeline.get("silver", {}).get("table")]
            for table in (pipeline.get("cdc") or {}).get("tables", []):
                written += [table.get("bronze", {}).get("table"), table.get("silver", {}).get("table")]
            for table in filter(None, written):
                add(address(Kind.BIGQUERY_DATASET, _dataset_of(table)), DATASET_WRITER, member, why, WORKER, 3, 1,
                    False)
            if reads_silver and pipeline.get("silver", {}).get("table"):
                add(address(Kind.BIGQUERY_DATASET, _dataset_of(pipeline["silver"]["table"])), DATASET_READER,
                    member, why, WORKER, 3, 1, False)
            pattern = (spec.get("parameters") or {}).get("input_pattern")
            if pattern:
                add(address(Kind.STORAGE_BUCKET, _bucket_of(pattern)), BUCKET_WRITER, member, why, WORKER, 3, 1, False)
            bronze_bucket = (pipeline.get("bronze") or {}).get("bucket")
            if bronze_bucket:
                add(address(Kind.STORAGE_BUCKET, _bucket_of(bronze_bucket)), BUCKET_WRITER, member, why, WORKER, 3, 1,
                    False)
    connectors = platform.connectors.service_account
    if connectors:
        member = [f"serviceAccount:{connectors}"]
        why = "the connectors' account (connectors.service_account)"
        for service in own:
            document = service.spec.get("connector") or {}
            if service.kind != Kind.CLOUD_RUN_SERVICE or service.name == API_SERVICE:
                continue
            for key in ("topic", "dead_letter_topic"):
                if document.get(key):
                    add(address(Kind.PUBSUB_TOPIC, document[key].rsplit("/", 1)[-1]), TOPIC_PUBLISHER, member, why,
                        ACCOUNTS, 3, 3, False)
    pubsub = f"{SERVICE_AGENT}pubsub"
    for sub in own:
        policy = sub.spec.get("dead_letter_policy") if sub.kind == Kind.PUBSUB_SUBSCRIPTION else None
        if not policy:
            continue
        why = f"dead-lettering of {sub.name}: Pub/Sub forwards undeliverable messages as its service agent"
        add(sub.address, SUBSCRIBER, [pubsub], why, AGENTS, 4, 0, True)
        add(address(Kind.PUBSUB_TOPIC, policy["dead_letter_topic"]), TOPIC_PUBLISHER, [pubsub], why, AGENTS, 4, 0, True)
    return tuple(out)


def platform_grants(platform: Platform, names: Any, serving_datasets: Iterable[str], restricted: Sequence[str],
                    any_job: bool, api_service: bool, any_stream: bool) -> tuple[Grant, ...]:
    """The grants `access_grants` makes for the platform: the zones' (``serving_datasets``: the
    reporting / features datasets compiled), the accounts' project-wide ones (when some Dataflow
    job, the data API service, some Datastream stream is compiled)."""
    from reconciler.serving import API, FEATURES, REPORTING

    out: list[Grant] = []

    def add(target: str, role: str, members: Iterable[str], note: str | None, cls: str, rank: tuple) -> None:
        members = frozenset(members)
        if members:
            out.append(Grant(target, role, members, note, cls, (*rank[:2], len(out))))

    datasets = {zone: [address(Kind.BIGQUERY_DATASET, names.datasets[zone])] for zone in ("bronze", "silver", "gold")}
    datasets["gold"] += [address(Kind.BIGQUERY_DATASET, d) for d in sorted(serving_datasets) if d in (REPORTING, FEATURES)]
    buckets = {zone: [address(Kind.STORAGE_BUCKET, names.buckets[zone])] for zone in ("landing", "bronze", "silver")}
    for zone in ZONES:
        entries = zone_readers(platform, zone)
        readers = resolve(platform, entries)
        if zone == "bronze" and restricted:
            whole, _others = _bronze_readers(platform)
            why = (f"Bronze holds the raw records of {', '.join(restricted)}, which have classified columns: only the "
                   f"{ENGINEERS_TIER} tier reads the whole zone")
            for target in datasets[zone]:
                add(target, DATASET_READER, whole, why, ZONE_OR_SOURCE, (1, 0))
            for target in buckets[zone]:
                add(target, BUCKET_READER, whole, why, ZONE_OR_SOURCE, (1, 0))
        else:
            why = (f"{BRONZE_OPEN}: Bronze readers read the whole zone" if zone == "bronze" else None)
            for target in datasets.get(zone, []):
                add(target, DATASET_READER, readers, why, ZONE_OR_SOURCE, (1, 0))
            for target in buckets.get(zone, []):
                add(target, BUCKET_READER, readers, why, ZONE_OR_SOURCE, (1, 0))
        for role, entries_ in getattr(platform.access.zones, zone).bindings.items():
            members = resolve(platform, entries_)
            custom = role.startswith(("projects/", "organizations/"))
            if custom or _DATASET_ROLE.match(role):
                for target in datasets.get(zone, []):
                    add(target, role, members, None, ZONE_OR_SOURCE, (1, 0))
            if custom or _BUCKET_ROLE.match(role):
                for target in buckets.get(zone, []):
                    add(target, role, members, None, ZONE_OR_SOURCE, (1, 0))
    project = f"project.{platform.project}"
    worker = platform.dataflow.service_account
    if worker and any_job:
        member = [f"serviceAccount:{worker}"]
        why = "the Dataflow workers' account (dataflow.service_account)"
        add(project, DATAFLOW_WORKER, member, why, WORKER, (3, 1))
        add(project, JOB_USER, member, why, WORKER, (3, 1))
        temp = platform.dataflow.temp_location or f"gs://{names.buckets['landing']}/dataflow/tmp"
        add(address(Kind.STORAGE_BUCKET, _bucket_of(temp)), BUCKET_WRITER, member, why + ": temporary files", WORKER,
            (3, 0))
    api = platform.api.service_account
    if api and api_service:
        member = [f"serviceAccount:{api}"]
        why = "the data API's account (api.service_account)"
        add(address(Kind.BIGQUERY_DATASET, API), DATASET_READER, member, why, ACCOUNTS, (3, 4))
        add(project, JOB_USER, member, why, ACCOUNTS, (3, 4))
    if any_stream:
        landing = address(Kind.STORAGE_BUCKET, names.buckets["landing"])
        why = "Datastream writes the change events of database_cdc sources into the landing bucket"
        add(landing, BUCKET_WRITER, [f"{SERVICE_AGENT}datastream"], why, AGENTS, (4, 1))
        add(landing, BUCKET_METADATA_READER, [f"{SERVICE_AGENT}datastream"], why, AGENTS, (4, 1))
    return tuple(out)


class _Entry:
    """The grants of one (target, role): how many give each (class, member) and each note."""

    __slots__ = ("members", "notes")

    def __init__(self, other: _Entry | None = None) -> None:
        self.members: dict[tuple[str, str], int] = dict(other.members) if other else {}
        self.notes: dict[tuple, int] = dict(other.notes) if other else {}


class GrantIndex:
    """Every origin's grants by (target, role), and the binding each target's grants make.

    `update` replaces one origin's grants; `bindings` makes the bindings of the targets touched
    since the index was copied (`copy`: the previous revision's index is left as it was)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], _Entry] = {}
        self.roles: dict[str, set[str]] = {}  # target -> roles with grants
        self.made: dict[tuple[str, str], Resource] = {}  # (target, role) -> its binding
        self.dirty: set[str] = set()  # targets to make again
        self._own: set[tuple[str, str]] = set()  # entries this copy may change in place

    def copy(self) -> GrantIndex:
        new = GrantIndex()
        new.entries, new.roles, new.made = dict(self.entries), dict(self.roles), dict(self.made)
        return new

    def _entry(self, key: tuple[str, str]) -> _Entry:
        if key not in self._own:
            self._own.add(key)
            self.entries[key] = _Entry(self.entries.get(key))
            roles = self.roles.get(key[0])
            if roles is None or key[1] not in roles:
                self.roles[key[0]] = {*(roles or ()), key[1]}
        return self.entries[key]

    def update(self, origin: str, old: Sequence[Grant], new: Sequence[Grant]) -> None:
        """``origin`` (a source id, or "" for the platform) now grants ``new`` instead of ``old``."""
        if old is new:
            return
        for grants, step in ((old, -1), (new, 1)):
            for g in grants:
                key = (g.target, g.role)
                entry = self._entry(key)
                for member in g.members:
                    _count(entry.members, (g.cls, member), step)
                if g.note:
                    _count(entry.notes, (g.rank, g.note, g.cls, origin if g.by_origin else None), step)
                self.dirty.add(g.target)

    def bindings(self, platform: Platform, declared: Mapping[str, int], zone_targets: set[str],
                 transfer_sinks: Mapping[str, int], labels: Mapping[str, str], order: Any) -> list[tuple]:
        """Make the bindings of the dirty targets again (``declared``: the addresses compiled besides
        governance's, with counts; ``order()``: source id -> its position in the state); the
        bindings that changed, as (before, after) pairs, None for none."""
        changed: list[tuple[Resource | None, Resource | None]] = []
        worker = platform.dataflow.service_account
        worker = f"serviceAccount:{worker}" if worker else None
        for target in sorted(self.dirty):
            for role in sorted(self.roles.get(target, ())):
                key = (target, role)
                binding = self._make(platform, key, declared, zone_targets, transfer_sinks, labels, order, worker)
                before = self.made.get(key)
                if binding != before:
                    changed.append((before, binding))
                    if binding is None:
                        self.made.pop(key, None)
                    else:
                        self.made[key] = binding
        self.dirty = set()
        return changed

    def _members(self, key: tuple[str, str], classes: str) -> set[str]:
        entry = self.entries.get(key)
        return {m for (cls, m) in entry.members if cls in classes} if entry else set()

    def _make(self, platform: Platform, key: tuple[str, str], declared: Mapping[str, int], zone_targets: set[str],
              transfer_sinks: Mapping[str, int], labels: Mapping[str, str], order: Any,
              worker: str | None) -> Resource | None:
        target, role = key
        entry = self.entries.get(key)
        if entry is None:
            return None
        active = target in declared or target.startswith("project.")
        early = ZONE_OR_SOURCE + (WORKER if active else "")
        late = AGENTS + (ACCOUNTS if active else "")
        pre = self._members(key, early)
        keep_early = True
        if worker and role == DATASET_READER and worker in pre and worker in self._members((target, DATASET_WRITER),
                                                                                              early):
            pre.discard(worker)  # _drop_implied
            keep_early = bool(pre)
        members = pre | self._members(key, late)
        if not members:
            return None

        def ordered(classes: str) -> list[str]:
            found = [k for k in entry.notes if k[2] in classes]
            if any(k[3] is not None for k in found):
                positions = order()
                found.sort(key=lambda k: (k[0][0], k[0][1], -1 if k[3] is None else positions[k[3]], k[0][2]))
            else:
                found.sort(key=lambda k: k[0])
            return [k[1] for k in found]

        notes: list[str] = []
        for note in (ordered(early) if keep_early else []) + ordered(late):
            if note not in notes:
                notes.append(note)
        if (platform.access.exclusive and target in transfer_sinks
                and role in ("roles/storage.legacyBucketWriter", BUCKET_READER)):
            members.add(f"{SERVICE_AGENT}storagetransfer")
            note = "kept for the Storage Transfer jobs (their own grant) under access.exclusive"
            if note not in notes:
                notes.append(note)
        return Resource(
            Kind.IAM_BINDING, binding_name(target, role),
            {"target": target, "role": role, "members": sorted(members),
             "exclusive": platform.access.exclusive and target in zone_targets},
            dict(labels), depends_on=(target,) if target in declared else (),
            deletion_protection=False, options={"why": "; ".join(notes)} if notes else {})


def _count(counter: dict, key: Any, step: int) -> None:
    value = counter.get(key, 0) + step
    if value:
        counter[key] = value
    else:
        counter.pop(key, None)
