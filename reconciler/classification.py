"""PII and column-level security: classified columns → policy tags, masking and their readers (issue 13).

A pure function of the validated desired state (no I/O), called from `reconciler.compile`'s
governance step. Config (docs/governance.md, "Contract"): ``platform.yaml``'s
``classifications: {<class>: {masking, readers}}`` and ``access:`` (tiers, zone readers); a schema
field's ``classification:`` (or ``policy_tag:``), nested fields too; a source's ``classify:
{<dotted path>: <class>}`` (a database_cdc source: ``<table>.<field path>``).

What it compiles
----------------
==========================================================  =====================================
``datacatalog_taxonomy.headwater-<environment>``            one per platform, in its region, with
                                                            fine-grained access control activated
                                                            (only when some column is classified)
``datacatalog_policy_tag.headwater-<environment>/<class>``  one per class some column uses
``bigquery_data_policy.<class>_mask``                       one per used class: the masking rule
                                                            on its policy tag (``sha256`` →
                                                            SHA256, ``always_null`` → ALWAYS_NULL,
                                                            ``default_value`` →
                                                            DEFAULT_MASKING_VALUE,
                                                            ``routine:<ds>.<r>`` → the routine)
``bigquery_column_policy.<dataset>.<table>/<column.path>``  the class's tag on one column: every
                                                            classified column of each Silver table,
                                                            and each Gold (and feature) column
                                                            computed from one (the rule below)
``iam_binding.datacatalog_policy_tag:<tag>:roles/``         the class's ``readers`` (tiers
``datacatalog.categoryFineGrainedReader``                   resolved), plus the pipelines' service
                                                            account, plus the data API's when its
                                                            views expose a column of the class:
                                                            they read clear values
``iam_binding.bigquery_data_policy:<class>_mask:roles/``    every other reader of the zones and
``bigquerydatapolicy.maskedReader``                         tables those columns are in (zone
                                                            readers, zone ``bindings`` of a
                                                            data-reading role): they read masked
                                                            values
==========================================================  =====================================

Which Gold columns inherit (the rule)
-------------------------------------
A Gold column inherits the class of the Silver column it is computed from:

* a ``group_by`` column that is a classified Silver column carries its values as they are;
* ``date`` (the day of the partition field) inherits the partition field's class: it is a
  truncation of its values;
* a metric ``sum|avg|min|max(<column>)`` over a classified column inherits its class: min and max
  *are* values of it, and a sum or average of a group of one is one;
* a metric ``count(...)`` never inherits: a count reveals how many rows there are, never a value.

The same rule covers a source's point-in-time feature table (``features.<source>``: the entity
keys are its group-by, each feature per window a metric, ``_last_event_at`` the newest value of
the time field), which is computed from Silver as Gold is. Bronze holds raw payloads, not columns:
a source with classified columns has its Bronze table restricted to the engineers' tier
(`reconciler.governance`), not tagged here. Views carry no policy tags: a view reading a tagged
column is governed by the tag of the column it reads (verified only on GCP).

Who reads what
--------------
Readers are tier names (resolved against ``access.tiers``) or IAM members. A zone's readers are
``access.zones.<zone>.readers``, or the seed's defaults (bronze: engineers; silver: engineers,
analysts; gold: engineers, analysts, bi), each tier that is declared. A Silver column is read by
the Silver zone's readers, a Gold or feature column by the Gold zone's (which covers the reporting
and features datasets), and by the members of that zone's ``bindings`` whose role reads table data
(`DATA_READ_ROLES`); both by the source's own ``access.readers``. The masked readers of a class
are every such reader of a column of the class who is not among its clear-value readers.

The pipelines' identity (``dataflow.service_account``) is a clear-value reader of every class:
the jobs move clear values from Bronze to Silver and compute Gold from them (a job reading masked
values would write hashes into Gold). Without a declared service account the jobs run as the
Compute Engine default service account, whose e-mail needs the project number: headwater does not
grant it (declare ``dataflow.service_account``; docs/governance.md). Likewise the data API's
identity (``api.service_account``) is a clear-value reader of each class a Gold column served
through its authorized views carries: the API enforces the ``pii`` scope itself (serving/api).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.config import Platform, SchemaField, SourceSchema, parse_metric
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, PLATFORM_KEY, Kind, Resource, address

FINE_GRAINED_READER = "roles/datacatalog.categoryFineGrainedReader"
MASKED_READER = "roles/bigquerydatapolicy.maskedReader"
ACTIVATED_POLICY_TYPES = ["FINE_GRAINED_ACCESS_CONTROL"]
MASKINGS = {"sha256": "SHA256", "always_null": "ALWAYS_NULL", "default_value": "DEFAULT_MASKING_VALUE"}


@dataclass(frozen=True)
class Column:
    """One classified column of a table headwater compiles."""

    dataset: str
    table: str
    path: str  # dotted for a nested field: items.sku
    class_name: str
    zone: str  # silver | gold (Gold, reporting and features datasets)
    source_id: str

    @property
    def name(self) -> str:
        """The ``bigquery_column_policy`` name: ``<dataset>.<table>/<column.path>``."""
        return f"{self.dataset}.{self.table}/{self.path}"

    @property
    def table_address(self) -> str:
        return address(Kind.BIGQUERY_TABLE, f"{self.dataset}.{self.table}")


def taxonomy_name(platform: Platform) -> str:
    """The platform's taxonomy (its display name on Data Catalog): ``headwater-<environment>``."""
    return f"headwater-{platform.environment}"


def policy_tag_name(platform: Platform, class_name: str) -> str:
    return f"{taxonomy_name(platform)}/{class_name}"


def data_policy_name(class_name: str) -> str:
    """The data policy id, ``<class>_mask`` (letters, digits and underscores, as the API requires;
    class names are ``[a-z][a-z0-9_]*``)."""
    return f"{class_name}_mask"


def binding_name(target_kind: Kind, target_name: str, role: str) -> str:
    """``<target kind>:<target name>:<role>`` (the contract's ``iam_binding`` name)."""
    return f"{target_kind}:{target_name}:{role}"


def masking(value: str) -> str:
    """platform.yaml's masking → the data policy's (SPEC_SHAPES): ``routine:<ds>.<r>`` stays as is."""
    return MASKINGS.get(value, value)


# --------------------------------------------------------------------------- which columns


def _leaf_classes(fields: Iterable[SchemaField], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, class) of each classified field, nested ones too (RECORDs cannot be classified:
    BigQuery tags leaf columns only; config refuses a classified RECORD)."""
    for field in fields:
        path = f"{prefix}{field.name}"
        if field.class_name:
            yield path, field.class_name
        if field.fields:
            yield from _leaf_classes(field.fields, f"{path}.")


def schema_classes(schema: SourceSchema | None, classify: Mapping[str, str] | None = None) -> dict[str, str]:
    """Dotted path → class of one schema: its fields' own classifications, then ``classify``
    (a source's map; a classify entry whose class differs from the schema field's is refused at
    validate, `reconciler.governance.check`, so the two agree wherever both are given)."""
    found = dict(_leaf_classes(schema.fields)) if schema is not None else {}
    found.update(classify or {})
    return found


def silver_columns(platform: Platform, names: Any, source: Any) -> list[Column]:
    """The classified columns of a source's Silver table(s) (a database_cdc source has one per table)."""
    connector = source.connector
    sid = connector.source_id
    silver = names.datasets["silver"]
    classify = dict(getattr(connector, "classify", None) or {})
    if connector.ingestion.pattern == "database_cdc":
        from reconciler.cdc import silver_table

        columns = []
        for table in source.tables:
            own = {path.split(".", 1)[1]: cls for path, cls in classify.items()
                   if "." in path and path.split(".", 1)[0] == table.key}
            dataset, name = silver_table(silver, sid, table.key).split(".", 1)
            columns += [Column(dataset, name, path, cls, "silver", sid)
                        for path, cls in sorted(schema_classes(table.schema, own).items())]
        return columns
    return [Column(silver, sid, path, cls, "silver", sid)
            for path, cls in sorted(schema_classes(source.schema, classify).items())]


def derived_class(classes: Mapping[str, str], fn: str | None, arg: str) -> str | None:
    """The class a computed column inherits (the module docstring's rule): ``fn`` None for a
    group-by column, else the aggregate; counts never inherit."""
    if fn == "count":
        return None
    return classes.get(arg)


def gold_columns(platform: Platform, names: Any, source: Any) -> list[Column]:
    """The Gold (and feature table) columns computed from a classified Silver column."""
    from reconciler.compile import partition_field
    from reconciler.load import DERIVED_DATE
    from reconciler.serving import FEATURES, LAST_EVENT, gold_tables, window_label

    connector = source.connector
    if connector.ingestion.pattern == "database_cdc" or source.schema is None:
        return []
    sid = connector.source_id
    classes = schema_classes(source.schema, getattr(connector, "classify", None))
    if not classes:
        return []
    time_field = partition_field(connector, source.schema)
    gold = names.datasets["gold"]
    columns: list[Column] = []

    def grouped(name: str) -> str | None:
        return classes.get(time_field) if name == DERIVED_DATE else derived_class(classes, None, name)

    for table, aggregate in gold_tables(source):
        found: dict[str, str] = {}
        for name in aggregate.group_by:
            if cls := grouped(name):
                found[name] = cls
        for metric in aggregate.metrics:
            fn, arg, alias = parse_metric(metric)
            if cls := derived_class(classes, fn, arg):
                found[alias] = cls
        columns += [Column(gold, table, path, cls, "gold", sid) for path, cls in sorted(found.items())]
    features = connector.serving.ml_features
    if features:
        found = {}
        for key in features.entity_keys:
            if cls := derived_class(classes, None, key):
                found[key] = cls
        for metric in features.features:
            fn, arg, alias = parse_metric(metric)
            if cls := derived_class(classes, fn, arg):
                for window in features.windows:
                    found[f"{alias}_{window_label(window)}"] = cls
        if cls := classes.get(time_field):
            found[LAST_EVENT] = cls  # the newest value of the time field
        columns += [Column(FEATURES, sid, path, cls, "gold", sid) for path, cls in sorted(found.items())]
    return columns


# --------------------------------------------------------------------------- who reads


def resolve(platform: Platform, entries: Iterable[str]) -> set[str]:
    """Tier names → their members; IAM members as they are (`reconciler.governance.resolve`)."""
    from reconciler import governance

    return set(governance.resolve(platform, entries))


def zone_readers(platform: Platform, zone: str) -> set[str]:
    """A zone's readers, resolved: ``access.zones.<zone>.readers``, or the seed's tiers that are
    declared (`reconciler.governance.zone_readers`, the one definition)."""
    from reconciler import governance

    return resolve(platform, governance.zone_readers(platform, zone))


# The roles of a zone's ``bindings`` that read a dataset's table data (bigquery.tables.getData);
# their holders read a classified column as every zone reader does: masked, unless clear readers.
# (A custom role's permissions are not known at compile time: it is left out; docs/governance.md.)
DATA_READ_ROLES = frozenset({"roles/bigquery.dataViewer", "roles/bigquery.dataEditor", "roles/bigquery.dataOwner",
                             "roles/bigquery.admin"})


def clear_readers(platform: Platform, class_name: str, api_exposed: bool = False) -> set[str]:
    """Who reads the class's clear values: its readers, the pipelines' service account, and the
    data API's (``api.service_account``) when its authorized views expose a column of the class:
    the API enforces the ``pii`` scope itself (serving/api) and must read clear values to do so."""
    members = resolve(platform, platform.classifications[class_name].readers)
    account = platform.dataflow.service_account
    if account:
        members.add(f"serviceAccount:{account}")
    api = platform.api.service_account
    if api and api_exposed:
        members.add(f"serviceAccount:{api}")
    return members


def zone_data_readers(platform: Platform, zone: str) -> set[str]:
    """Everyone who reads a zone's dataset: its readers and the members of its ``bindings`` roles
    that read table data (`DATA_READ_ROLES`)."""
    members = zone_readers(platform, zone)
    for role, entries in getattr(platform.access.zones, zone).bindings.items():
        if role in DATA_READ_ROLES:
            members |= resolve(platform, entries)
    return members


def api_exposed_classes(names: Any, sources: Sequence[Any], columns: Sequence[Column]) -> set[str]:
    """The classes of the Gold columns the data API's authorized views (``api.<gold table>``) read:
    the Gold tables of the sources that declare ``serving.third_party_api``."""
    served = {s.connector.source_id for s in sources if s.connector.serving.third_party_api}
    gold = names.datasets["gold"]
    return {c.class_name for c in columns if c.dataset == gold and c.source_id in served}


# --------------------------------------------------------------------------- resources


def classification_resources(platform: Platform, names: Any, sources: Sequence[Any]) -> list[Resource]:
    """The taxonomy, policy tags, data policies, column policies and reader grants (module
    docstring): each source's column policies (`source_classification`) and what their classes
    need together (`classification_aggregate`)."""
    parts = [source_classification(platform, names, source) for source in sources]
    return [*classification_aggregate(platform, parts), *(policy for part in parts for policy in part.policies)]


# --------------------------------------------------------------------------- per source (compile's memo)
# `classification_resources` in two parts, so that compile reuses a source's part while other
# sources change: `source_classification` (one source's column policies and what the platform-wide
# part needs of it) and `classification_aggregate` (taxonomy, policy tags, data policies and the
# reader bindings, from those parts).


@dataclass(frozen=True)
class SourceClasses:
    """One source's classified columns (with a class platform.yaml declares), their column
    policies, and per class the zones its columns are in; the source's resolved ``access.readers``
    and whether the data API serves a Gold column of each class."""

    columns: tuple[Column, ...]
    policies: tuple[Resource, ...]
    zones: tuple[tuple[str, frozenset[str]], ...]  # (class, zones), by class
    readers: frozenset[str]
    api_classes: frozenset[str]


NO_CLASSES = SourceClasses((), (), (), frozenset(), frozenset())


def source_classification(platform: Platform, names: Any, source: Any) -> SourceClasses:
    columns = [c for c in silver_columns(platform, names, source) + gold_columns(platform, names, source)
               if c.class_name in platform.classifications]
    if not columns:
        return NO_CLASSES
    labels = {MANAGED_BY_KEY: MANAGED_BY_VALUE, PLATFORM_KEY: platform.environment}
    taxonomy = taxonomy_name(platform)
    policies = []
    zones: dict[str, set[str]] = {}
    for column in sorted(columns, key=lambda c: c.class_name):  # by class, as classification_resources
        tag = policy_tag_name(platform, column.class_name)
        policies.append(Resource(
            Kind.BIGQUERY_COLUMN_POLICY, column.name, {"policy_tags": [tag]}, dict(labels),
            depends_on=(column.table_address, address(Kind.DATACATALOG_POLICY_TAG, f"{taxonomy}/{column.class_name}"),
                        address(Kind.BIGQUERY_DATA_POLICY, data_policy_name(column.class_name)))))
        zones.setdefault(column.class_name, set()).add(column.zone)
    api = api_exposed_classes(names, [source], columns)
    return SourceClasses(tuple(columns), tuple(policies), tuple((c, frozenset(z)) for c, z in sorted(zones.items())),
                         frozenset(resolve(platform, source.connector.access.readers)), frozenset(api))


def classification_aggregate(platform: Platform, parts: Iterable[SourceClasses]) -> list[Resource]:
    """The taxonomy, policy tags, data policies and reader bindings of the sources' `SourceClasses`
    (those with classified columns; their column policies are not repeated here)."""
    by_class: dict[str, set[str]] = {}  # class -> the readers of its columns (zones' and sources')
    api_classes: set[str] = set()
    zone_members: dict[str, set[str]] = {}
    for part in parts:
        if not part.columns:
            continue
        api_classes |= part.api_classes
        for cls, zones in part.zones:
            readers = by_class.setdefault(cls, set())
            for zone in zones:
                if zone not in zone_members:
                    zone_members[zone] = zone_data_readers(platform, zone)
                readers |= zone_members[zone]
            readers |= part.readers
    if not by_class:
        return []
    labels = {MANAGED_BY_KEY: MANAGED_BY_VALUE, PLATFORM_KEY: platform.environment}
    taxonomy = taxonomy_name(platform)
    taxonomy_address = address(Kind.DATACATALOG_TAXONOMY, taxonomy)
    resources = [Resource(
        Kind.DATACATALOG_TAXONOMY, taxonomy,
        {"display_name": taxonomy,
         "description": f"headwater {platform.environment}: classes of sensitive columns (docs/governance.md)",
         "location": platform.region, "activated_policy_types": list(ACTIVATED_POLICY_TYPES)},
        dict(labels))]
    exclusive = platform.access.exclusive
    for cls, readers in sorted(by_class.items()):
        tag = policy_tag_name(platform, cls)
        tag_address = address(Kind.DATACATALOG_POLICY_TAG, tag)
        policy = data_policy_name(cls)
        policy_address = address(Kind.BIGQUERY_DATA_POLICY, policy)
        resources.append(Resource(
            Kind.DATACATALOG_POLICY_TAG, tag,
            {"taxonomy": taxonomy, "display_name": cls,
             "description": f"Columns classified {cls} (headwater {platform.environment})"},
            dict(labels), depends_on=(taxonomy_address,)))
        resources.append(Resource(
            Kind.BIGQUERY_DATA_POLICY, policy,
            {"policy_tag": tag, "masking": platform.classifications[cls].masking_expression},
            dict(labels), depends_on=(tag_address,)))
        clear = clear_readers(platform, cls, api_exposed=cls in api_classes)
        if clear:
            resources.append(Resource(
                Kind.IAM_BINDING, binding_name(Kind.DATACATALOG_POLICY_TAG, tag, FINE_GRAINED_READER),
                {"target": tag_address, "role": FINE_GRAINED_READER, "members": sorted(clear),
                 "exclusive": exclusive},
                dict(labels), depends_on=(tag_address,)))
        masked = readers - clear
        if masked:
            resources.append(Resource(
                Kind.IAM_BINDING, binding_name(Kind.BIGQUERY_DATA_POLICY, policy, MASKED_READER),
                {"target": policy_address, "role": MASKED_READER, "members": sorted(masked),
                 "exclusive": exclusive},
                dict(labels), depends_on=(policy_address,)))
    return resources
