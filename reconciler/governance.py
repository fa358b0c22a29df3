"""Governance: who may read what (issue 13; docs/governance.md).

Pure functions of the validated desired state, no I/O. Three jobs:

* `check` - the cross-file checks of the governance settings, at load time (`reconciler.load`
  calls it): every tier named exists, every zone binding's role can be granted on that zone's
  dataset or bucket, every classification a schema field or a ``classify`` entry names is declared
  in platform.yaml, every ``classify`` path is a field of the source's schema, publishers and
  subscribers only on a topic this platform manages. Each problem as file:line:col: field: message.
* the grants - who gets which role on what, defined once ("compile: the grants" below): the
  ``iam_binding`` resources of the access tiers, of the sources' own ``access:`` blocks, of the
  service accounts' least-privilege roles derived from the compiled graph, and of the service
  agents. Each source's grants (`source_grants`) and the platform's (`platform_grants`) are kept
  in a `GrantIndex`, which makes the bindings. Both compile paths use these: the memoized compile
  (`reconciler.compile._compile_memoized`) keeps an index from revision to revision, and
  `governance_resources`, the compile hook of the compile without memo
  (`reconciler.compile._compile_plain` calls it once, with everything else compiled), fills a
  fresh one, then adds the ``project_audit_config`` resources of ``audit_logs: true``
  (`audit_configs`) and `reconciler.classification`'s resources (taxonomy, policy tags, data
  policies, column policies, fine-grained readers). (Until both paths shared it, the grants were
  also written a second time, in one pass: tests/governance_oracle.py keeps that copy, frozen,
  and tests/test_governance_fold.py holds the two equal.)
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


# --------------------------------------------------------------------------- compile: the grants
# The one definition of who gets which role on what. Each origin - a source, or the platform -
# makes its `Grant`s from what it declares and what was compiled for it (`source_grants`,
# `platform_grants`); `GrantIndex` holds every origin's grants by (target, role), counted, and
# makes one ``iam_binding`` per (target, role) from them. Both compile paths use it:
# `governance_resources` fills an index with every origin at once (the compile without memo,
# `reconciler.compile._compile_plain`); the memoized compile (issue 14) keeps its index from one
# revision to the next and replaces the grants of the sources that changed only, so a binding is
# made again only where its grants, or its target's standing (declared, a zone's target, a
# transfer's sink), changed.
#
# A binding is not the plain union of its grants, for two reasons the classes and ranks below carry:
# * least privilege without repeats: the Dataflow workers' account does not get a dataset's
#   dataViewer where it is that dataset's dataEditor. That rule sees the zones', the sources' and
#   the workers' own grants ("early"), not the other accounts' and the service agents' ("late"),
#   which are kept as they are; a service account's grant counts only on a target compiled here
#   (a project, or an address of the graph: the accounts' roles are derived from it);
# * the plan's reasons (``options["why"]``): a binding's notes, each once, in a fixed order - the
#   zones' first, then the sources' access blocks, the service accounts', the service agents' -
#   whatever the order the origins were (re)made in.

ZONE_OR_SOURCE = "a"  # the zones' readers and bindings, the sources' access blocks: early, on any target
WORKER = "b"  # the Dataflow workers' account: early, on a compiled target only
ACCOUNTS = "c"  # the connectors' and the data API's accounts: late, on a compiled target only
AGENTS = "e"  # the service agents: late, on any target


@dataclass(frozen=True)
class Grant:
    """One role on one target for some members, by one origin, with the reason the plan shows
    (``note``, or None). ``cls``: its class (above). ``rank`` orders its note among the notes of
    the same (target, role): (phase, step, position in its origin's grants), phase 1 the zones',
    2 the access blocks, 3 the service accounts, 4 the service agents; ``by_origin``: the origins'
    order (the sources', as the state lists them) comes before the position (a note that names
    its source)."""

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
    """The grants of one source, from ``own`` (the resources compiled for it, in compile order) and
    ``restricted`` (the sources with classified columns, sorted): a table-level read of its raw
    Bronze tables for Bronze's other readers when some source has classified columns and this one
    none (the zone itself is the engineers' tier's then: `platform_grants`); its ``access:`` block's
    readers (of its Silver and Gold tables), publishers and subscribers (of its topic, unless
    another project's); the roles the declared service accounts need for what its Dataflow jobs
    and connector service read and write (undeclared accounts, the Compute Engine default, get
    nothing); the Pub/Sub service agent's for its dead-lettering subscriptions."""
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
        # Bronze holds raw payloads, classified columns in clear: only the engineers' tier reads the
        # whole zone; every other Bronze reader reads the raw tables of sources without any.
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
            if pattern:  # file jobs read, claim and (batch_file) move landed files
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
    # Service agents' grants the graph needs and no provider makes already (Cloud Storage's publisher
    # grant for notifications is ``storage_notification.publisher_grant``, Storage Transfer's are
    # ``storage_transfer_job.service_agent_grants``; `GrantIndex` lists that agent in an exclusive
    # binding of a transfer's sink).
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
    """The grants of the platform: each zone's readers and bindings on its dataset and bucket (Gold's
    on the serving layer's reporting / features datasets too, among ``serving_datasets``: the
    datasets compiled), Bronze to the engineers' tier only when some source has classified columns
    (``restricted``); the accounts' project-wide roles and the data API's, when some Dataflow job
    (``any_job``), the data API service (``api_service``) is compiled; Datastream's service agent's
    on the landing bucket when some stream is (``any_stream``)."""
    from reconciler.serving import API, FEATURES, REPORTING

    out: list[Grant] = []

    def add(target: str, role: str, members: Iterable[str], note: str | None, cls: str, rank: tuple) -> None:
        members = frozenset(members)
        if members:
            out.append(Grant(target, role, members, note, cls, (*rank[:2], len(out))))

    datasets = {zone: [address(Kind.BIGQUERY_DATASET, names.datasets[zone])] for zone in ("bronze", "silver", "gold")}
    # The serving layer's reporting views and feature tables are Gold data: Gold's readers read them.
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
            # Bronze open to all its readers is the state a removed last classification returns to:
            # the plan says why the whole zone is readable (docs/governance.md, "Bronze and classified columns").
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
    """Every origin's grants by (target, role), and the binding each (target, role) makes.

    `update` replaces one origin's grants; `bindings` makes the bindings of the targets touched
    since the index was made or copied (`copy`: the previous revision's index is left as it was).
    A binding's members are its grants' (least privilege applied: `_make`), exclusive on a zone's
    target under ``access.exclusive``; its labels the platform's base labels (the provider's ledger
    keeps them: IAM policies carry none)."""

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
        """The binding of ``key`` from its grants (None: no member): the early and late classes of
        the section's comment (the workers' account's dataViewer dropped where it is dataEditor,
        with the early notes when no early member is left), the notes each once in rank order,
        and under ``access.exclusive`` the Storage Transfer agent kept on a transfer's sink."""
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
            pre.discard(worker)  # its dataEditor implies it
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


def governance_resources(state: Any, desired: Sequence[Resource]) -> list[Resource]:
    """The governance resources of ``state`` (a `DesiredState`), given every other compiled
    resource (``desired``: the graph the least-privilege roles are derived from).

    The one compile hook of issue 13: `reconciler.compile._compile_plain` calls it once (the
    memoized compile makes the same bindings from its own `GrantIndex`). Every origin's grants go
    into a fresh index: each source's, from the resources compiled for it (``desired``'s of its
    ``headwater-source`` label), and the platform's. The column-level part
    (`reconciler.classification`: taxonomy, policy tags, data policies, column policies, and its
    fine-grained / masked reader bindings) is added here too, so that bindings of the same
    (target, role) merge into one resource (`merge_bindings`).
    """
    from reconciler.compile import base_labels, zone_names
    from reconciler.serving import API_SERVICE

    platform = state.platform
    labels = base_labels(platform)
    names = zone_names(platform)
    sources = state.sources
    own: dict[str, list[Resource]] = {source.source_id: [] for source in sources}
    declared: dict[str, int] = {}
    for r in desired:
        declared[r.address] = declared.get(r.address, 0) + 1
        mine = own.get(r.source_id)  # type: ignore[arg-type]
        if mine is not None:
            mine.append(r)
    restricted = sorted(s.source_id for s in sources if has_classified_columns(s))
    index = GrantIndex()
    for source in sources:
        index.update(source.source_id, (), source_grants(platform, names, source, own[source.source_id], restricted))
    datasets = {r.name for r in desired if r.kind == Kind.BIGQUERY_DATASET}
    kinds = {r.kind for r in desired}
    api_service = any(r.kind == Kind.CLOUD_RUN_SERVICE and r.name == API_SERVICE for r in desired)
    index.update("", (), platform_grants(platform, names, datasets, restricted, Kind.DATAFLOW_JOB in kinds,
                                         api_service, Kind.DATASTREAM_STREAM in kinds))
    sinks: dict[str, int] = {}
    for bucket in transfer_sinks(desired):
        sinks[bucket] = sinks.get(bucket, 0) + 1
    positions = {source.source_id: i for i, source in enumerate(sources)}
    resources = [binding for _before, binding in index.bindings(
        platform, declared, zone_targets(names, datasets), sinks, labels, lambda: positions)]
    # Column-level security (reconciler/classification.py): its resources join here, and its
    # bindings merge with these by name.
    from reconciler.classification import classification_resources

    resources += classification_resources(platform, names, sources)
    resources += audit_configs(platform, labels)
    return merge_bindings(resources)


def merge_bindings(resources: Sequence[Resource]) -> list[Resource]:
    """One ``iam_binding`` per name: the members of same-named bindings merged (sorted), exclusive
    if any is; other resources as they are. (The grants' bindings and column-level security's
    meet here only: the memoized compile leaves a state where they meet to `_compile_plain`.)"""
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


def zone_targets(names: Any, serving_datasets: Iterable[str]) -> set[str]:
    """The zones' datasets and buckets, and the serving layer's reporting and features datasets
    among ``serving_datasets`` (Gold data): the targets whose bindings ``access.exclusive`` makes
    exclusive."""
    from reconciler.serving import FEATURES, REPORTING

    targets = {address(Kind.BIGQUERY_DATASET, d) for d in names.datasets.values()}
    targets |= {address(Kind.STORAGE_BUCKET, b) for b in names.buckets.values()}
    targets |= {address(Kind.BIGQUERY_DATASET, d) for d in serving_datasets if d in (REPORTING, FEATURES)}
    return targets


def transfer_sinks(resources: Iterable[Resource]) -> list[str]:
    """The buckets (addresses) the Storage Transfer jobs among ``resources`` write into with their
    own service agent grants (``storage_transfer_job.service_agent_grants``): under
    ``access.exclusive`` their bindings keep that agent."""
    return [address(Kind.STORAGE_BUCKET, r.spec["sink"]["bucket"]) for r in resources
            if r.kind == Kind.STORAGE_TRANSFER_JOB and r.spec.get("service_agent_grants")]


def audit_configs(platform: Platform, labels: Mapping[str, str]) -> list[Resource]:
    """The ``project_audit_config`` resources of ``audit_logs: true`` (none without)."""
    if not platform.audit_logs:
        return []
    return [Resource(Kind.PROJECT_AUDIT_CONFIG, service, {"log_types": list(AUDIT_LOG_TYPES)}, labels)
            for service in AUDIT_SERVICES]


def _dataset_of(table: str) -> str:
    """``project.dataset.table`` or ``dataset.table`` -> dataset."""
    parts = table.split(".")
    return parts[-2]


def _bucket_of(uri: str) -> str:
    return uri.removeprefix("gs://").split("/", 1)[0]


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


