"""The serving layer (issue 12): what a source's ``serving:`` block compiles to, and its checks.

Pure, no I/O (called by `reconciler.compile` and `reconciler.load`; compile reuses a source's part,
`source_serving`, while other sources change, and `serving_aggregate` makes the platform-wide
part). Per source, over its Gold
tables (the ``silver_to_gold`` aggregates):

=================================================  ==============================================
``bigquery_dataset.reporting``                     once, when a source declares ``reporting``
``bigquery_view.reporting.<gold table>``           ``reporting``: a plain view of each Gold table
``bigquery_view.reporting.<name>``                 ``reporting.views[]``: declared SQL, tables
``bigquery_materialized_view.reporting.<name>``    qualified; ``materialized: true`` makes it a
                                                   materialized view, partitioned and clustered
                                                   like its base table when it selects those columns
``bigquery_row_access_policy.<gold>.<table>.<n>``  ``reporting.row_access[]``: a row access policy
                                                   (principals -> filter) on a Gold table
``bigquery_dataset.api``                           once, when a source declares ``third_party_api``
``bigquery_view.api.<gold table>``                 an authorized view: on the Gold dataset's access
                                                   list (merged, never replaced)
``cloud_run_service.data-api``                     the data API (serving/api/), one for the platform,
                                                   its document `api_document` (docs/data-api-contract.md)
``bigquery_dataset.features``                      once, when a source declares ``ml_features``
``bigquery_table.features.<source_id>``            entity key(s), ``feature_timestamp``, a column per
                                                   feature and window, ``_last_event_at``
``dataflow_job.<source_id>-features``              hourly batch ``bigquery_to_bigquery`` with a
                                                   ``features`` block: one BigQuery query rebuilds
                                                   the table (beam/common/features.py)
=================================================  ==============================================

Feature rows are daily snapshots: for each entity and each UTC day it had rows, one row whose
``feature_timestamp`` is the end of that day (exclusive) and whose features aggregate only the
entity's rows with ``time < feature_timestamp`` and ``time >= feature_timestamp - window``:
point-in-time correct by construction (``_last_event_at`` shows the newest row used).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler import sqltext
from reconciler.config import Platform, parse_metric
from reconciler.resources import Kind, Resource, address

REPORTING, API, FEATURES = "reporting", "api", "features"
API_SERVICE = "data-api"
API_COMMAND = ["python", "-m", "serving.api"]
SIGNING_KEY_ENV = "HEADWATER_API_SIGNING_KEY"
API_AUDIENCE = "headwater-data-api"
FEATURE_TIMESTAMP = "feature_timestamp"
LAST_EVENT = "_last_event_at"
CLUSTER_TYPES = {"STRING", "INT64", "NUMERIC", "BIGNUMERIC", "BOOL", "DATE", "DATETIME", "TIMESTAMP"}


# --------------------------------------------------------------------------- helpers


def gold_tables(source) -> list[tuple[str, Any]]:
    """(table name, aggregate) of each Gold table of a source, in declaration order."""
    connector = source.connector
    if connector.ingestion.pattern == "database_cdc":
        return []
    return [(step.aggregate.table or f"{connector.source_id}_summary", step.aggregate)
            for step in connector.processing.silver_to_gold if step.aggregate]


def client_env(client_id: str) -> str:
    """The variable a client's secret arrives in: ``HEADWATER_API_CLIENT_`` + the id upper-cased."""
    return "HEADWATER_API_CLIENT_" + re.sub(r"[^A-Z0-9]", "_", client_id.upper())


def window_label(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _default_api_image(platform: Platform) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tag = version("headwater")
    except PackageNotFoundError:
        tag = "latest"
    return f"{platform.region}-docker.pkg.dev/{platform.project}/headwater/api:{tag}"


def declared_tables(platform: Platform, names, sources: Iterable) -> set[str]:
    """``dataset.table`` of every table the platform declares (views may read these)."""
    found: set[str] = set()
    for source in sources:
        sid = source.connector.source_id
        if source.connector.ingestion.pattern == "database_cdc":
            for table in getattr(source, "tables", ()) or ():
                for attr in ("silver_table", "bronze_table"):
                    value = getattr(table, attr, None)
                    if isinstance(value, str):
                        found.add(value)
            continue
        found.add(f"{names.datasets['bronze']}.{sid}_raw")
        found.add(f"{names.datasets['silver']}.{sid}")
        found.update(f"{names.datasets['gold']}.{table}" for table, _ in gold_tables(source))
        if source.connector.serving.ml_features:
            found.add(f"{FEATURES}.{sid}")
    return found


def dataset_aliases(names, known: set[str]) -> dict[str, str]:
    """How a view's SQL may name datasets: as they are, or by zone (``gold.x`` = the Gold zone's dataset)."""
    aliases = {d.split(".")[0]: d.split(".")[0] for d in known} | {n: n for n in (REPORTING, API, FEATURES)}
    return aliases | {zone: dataset for zone, dataset in names.datasets.items()}


# --------------------------------------------------------------------------- compile


def serving_resources(platform: Platform, names, sources: Sequence, base: dict[str, str]) -> list[Resource]:
    """Every resource of every source's ``serving:`` block (see the module docstring): each
    source's part (`source_serving`), then the serving datasets and the data API service they
    need (`serving_aggregate`), every view and table waiting for its dataset."""
    known = declared_tables(platform, names, sources)
    dataset_names = dataset_aliases(names, known)
    parts = [source_serving(platform, names, source, base, known, dataset_names) for source in sources]
    datasets = frozenset().union(*(part.datasets for part in parts))
    api_sources = [entry for part in parts for entry in part.api_sources]
    api_views = tuple(view for part in parts for view in part.api_views)
    return [*with_dataset_dependency([r for part in parts for r in part.resources], datasets),
            *serving_aggregate(platform, datasets, api_sources, api_views, base)]


# Per source, for compile's memo (`reconciler.compile`) and `serving_resources`: what one source's
# block makes (`source_serving`) and what all of them make together (`serving_aggregate`).


@dataclass(frozen=True)
class ServingPart:
    """What one source's ``serving:`` block compiles to, before the platform-wide step: its
    resources (their dataset dependency not yet added), the serving datasets they need, its
    data API entries (`api_document`'s ``sources``) and authorized views' addresses, and whether
    they read `declared_tables` (reporting views with SQL: then they depend on every source)."""

    resources: tuple[Resource, ...] = ()
    datasets: frozenset[str] = frozenset()
    api_sources: tuple[dict[str, Any], ...] = ()
    api_views: tuple[str, ...] = ()
    reads_known: bool = False


def source_known(names, source) -> frozenset[str]:
    """The ``dataset.table`` names one source adds to `declared_tables`."""
    return frozenset(declared_tables(None, names, (source,)))


def source_serving(platform: Platform, names, source, base: dict[str, str], known: set[str] | frozenset[str],
                   dataset_names: dict[str, str]) -> ServingPart:
    """One source's part of `serving_resources` (``known``/``dataset_names``: `declared_tables`
    of every source and its `dataset_aliases`, read only by reporting views with SQL)."""
    from reconciler.compile import _gold_spec, partition_field

    project, gold = platform.project, names.datasets["gold"]
    connector = source.connector
    serving = connector.serving
    sid = connector.source_id
    tables = gold_tables(source)
    if not tables and not serving.ml_features:
        return ServingPart()
    labels = {**base, **connector.labels, "headwater-source": sid}
    resources: list[Resource] = []
    datasets: set[str] = set()
    api_sources: list[dict[str, Any]] = []
    api_views: list[str] = []
    reads_known = False
    specs = {table: _gold_spec(connector, source.schema, aggregate, partition_field(connector, source.schema))
             for table, aggregate in tables}
    reporting = serving.reporting_block
    if reporting is not None and tables:
        datasets.add(REPORTING)
        for table in specs:
            resources.append(_plain_view(project, REPORTING, table, gold, specs[table], labels,
                                         f"Gold table {table} of {sid}"))
        for view in reporting.views:
            reads_known = True
            query = sqltext.qualify(view.sql, project, dataset_names)
            if view.materialized:
                resources.append(_materialized_view(project, view, query, specs, gold, labels, known,
                                                     connector.deletion_protection))
            else:
                resources.append(Resource(
                    Kind.BIGQUERY_VIEW, f"{REPORTING}.{view.name}",
                    {"query": sqltext.normalize(query), "description": f"Reporting view of {sid}",
                     "authorized_on": []},
                    labels, depends_on=_reads(query, project, known)))
        for rule in reporting.row_access:
            resources.append(Resource(
                Kind.BIGQUERY_ROW_ACCESS_POLICY, f"{gold}.{rule.table}.{rule.name}",
                {"table": f"{gold}.{rule.table}", "grantees": sorted(set(rule.principals)),
                 "filter": sqltext.normalize(rule.filter)},
                labels, depends_on=(address(Kind.BIGQUERY_TABLE, f"{gold}.{rule.table}"),)))
    if serving.third_party_api and tables:
        datasets.add(API)
        for (table, aggregate) in tables:
            view = _plain_view(project, API, table, gold, specs[table], labels,
                               f"Gold table {table} of {sid}, as the data API serves it")
            view = Resource(view.kind, view.name, {**view.spec, "authorized_on": [gold]}, view.labels,
                            depends_on=(*view.depends_on, address(Kind.BIGQUERY_DATASET, gold)))
            resources.append(view)
            api_views.append(view.address)
            api_sources.append(_api_source(project, sid, table, aggregate, specs[table]))
    if serving.ml_features:
        datasets.add(FEATURES)
        resources.extend(_feature_resources(platform, names, source, labels))
    return ServingPart(tuple(resources), frozenset(datasets), tuple(api_sources), tuple(api_views), reads_known)


def with_dataset_dependency(resources: Iterable[Resource], datasets: set[str] | frozenset[str]) -> list[Resource]:
    """Every view and table of a serving dataset waits for its dataset (``datasets``: the serving
    datasets compiled)."""
    return [r if r.kind == Kind.BIGQUERY_DATASET or r.name.split(".")[0] not in datasets else
            Resource(r.kind, r.name, r.spec, r.labels,
                     depends_on=tuple(dict.fromkeys((*r.depends_on,
                                                     address(Kind.BIGQUERY_DATASET, r.name.split(".")[0])))),
                     deletion_protection=r.deletion_protection, options=r.options)
            for r in resources]


def serving_aggregate(platform: Platform, datasets: set[str] | frozenset[str], api_sources: list[dict[str, Any]],
                      api_views: tuple[str, ...], base: dict[str, str]) -> list[Resource]:
    """The platform-wide part of `serving_resources`: the serving datasets some source needs and
    the data API service (``api_sources``/``api_views``: every source's, in source order)."""
    resources = [Resource(
        Kind.BIGQUERY_DATASET, dataset,
        {"location": platform.region, "description": f"headwater {dataset} ({platform.environment})"},
        {**base, "headwater-zone": dataset}) for dataset in sorted(datasets)]
    if api_sources:
        resources.append(_api_service(platform, api_sources, base, tuple(api_views)))
    return with_dataset_dependency(resources, datasets)


def _columns(spec: dict[str, Any]) -> list[str]:
    return [c["name"] for c in spec["schema"]]


def _plain_view(project: str, dataset: str, table: str, gold: str, spec: dict[str, Any], labels: dict[str, str],
                description: str) -> Resource:
    columns = ", ".join(f"`{c}`" for c in _columns(spec))
    query = f"SELECT {columns} FROM `{project}.{gold}.{table}`"
    return Resource(Kind.BIGQUERY_VIEW, f"{dataset}.{table}",
                    {"query": sqltext.normalize(query), "description": description, "authorized_on": []},
                    labels, depends_on=(address(Kind.BIGQUERY_TABLE, f"{gold}.{table}"),))


def _reads(query: str, project: str, known: set[str]) -> tuple[str, ...]:
    found = []
    for ref in sqltext.table_references(query):
        parts = ref.split(".")
        short = ".".join(parts[-2:])
        if short in known:
            found.append(address(Kind.BIGQUERY_TABLE, short))
    return tuple(dict.fromkeys(found))


def _materialized_view(project: str, view, query: str, specs: dict[str, Any], gold: str, labels: dict[str, str],
                       known: set[str], protect: bool) -> Resource:
    """Partitioned and clustered like its one Gold base table, on the columns the view selects."""
    refs = [ref.split(".")[-2:] for ref in sqltext.table_references(query)]
    base = specs.get(refs[0][1]) if len(refs) == 1 and refs[0][0] == gold else None
    words = {value.lower() for kind, value in sqltext.tokens(query) if kind in ("word", "quoted")} | {
        value.strip("`").lower() for kind, value in sqltext.tokens(query) if kind == "quoted"}
    partitioning, clustering = None, None
    if base is not None:
        field = (base.get("time_partitioning") or {}).get("field")
        if field and field.lower() in words:
            partitioning = {"type": "DAY", "field": field}
        clustering = [c for c in base.get("clustering_fields") or [] if c.lower() in words] or None
    return Resource(
        Kind.BIGQUERY_MATERIALIZED_VIEW, f"{REPORTING}.{view.name}",
        {"query": sqltext.normalize(query), "enable_refresh": True,
         "refresh_interval_ms": view.refresh_interval * 1000 if view.refresh_interval else None,
         "max_staleness_s": view.max_staleness, "time_partitioning": partitioning,
         "clustering_fields": clustering, "description": f"Materialized reporting view {view.name}"},
        labels, depends_on=_reads(query, project, known), deletion_protection=protect)


def _api_source(project: str, sid: str, table: str, aggregate, spec: dict[str, Any]) -> dict[str, Any]:
    fields = [dict(c) for c in spec["schema"]]
    partition = (spec.get("time_partitioning") or {}).get("field")
    source: dict[str, Any] = {
        "name": table,
        "description": spec.get("description", "") + f": {table}",
        "view": f"{project}.{API}.{table}",
        "key": list(aggregate.group_by),
        "fields": fields,
        "pii": [],
        "scopes": {"read": f"{sid}:read", "pii": f"{sid}:pii"},
    }
    if partition:
        source["partition_field"] = partition
    if spec.get("clustering_fields"):
        source["clustering_fields"] = list(spec["clustering_fields"])
    return source


def api_document(platform: Platform, api_sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The data API's spec document (docs/data-api-contract.md, version 1)."""
    settings = platform.api
    clients = []
    for client_id, client in sorted(settings.clients.items()):
        entry: dict[str, Any] = {"client_id": client_id, "secret_env": client_env(client_id),
                                 "scopes": sorted(set(client.scopes))}
        if client.requests_per_hour:
            entry["rate_limit"] = {"requests": client.requests_per_hour, "per_seconds": 3600}
        clients.append(entry)
    return {
        "version": 1,
        "kind": "data_api",
        "project": platform.project,
        "location": platform.region,
        "sources": sorted(api_sources, key=lambda s: s["name"]),
        "clients": clients,
        "rate_limit": {"requests": settings.requests_per_hour, "per_seconds": 3600},
        "token": {"issuer": settings.issuer or f"https://data-api.{platform.project}", "audience": API_AUDIENCE,
                  "ttl_seconds": 3600, "signing_key_env": SIGNING_KEY_ENV},
    }


def _api_service(platform: Platform, api_sources: list[dict[str, Any]], labels: dict[str, str],
                 views: tuple[str, ...]) -> Resource:
    settings = platform.api
    secrets = {SIGNING_KEY_ENV: settings.signing_secret_name}
    for client_id, client in sorted(settings.clients.items()):
        secrets[client_env(client_id)] = client.secret_name
    return Resource(
        Kind.CLOUD_RUN_SERVICE, API_SERVICE,
        {"image": _api_image(platform), "command": list(API_COMMAND),
         "connector": api_document(platform, api_sources), "secrets": secrets,
         "service_account": settings.service_account, "min_instances": 0,
         "max_instances": settings.max_instances, "ingress": "all", "cpu_always_allocated": False,
         "public": True},
        labels, depends_on=(address(Kind.BIGQUERY_DATASET, API), *views))


def _api_image(platform: Platform) -> str:
    return platform.api.image or _default_api_image(platform)


# --------------------------------------------------------------------------- ML features


def feature_columns(source) -> list[dict[str, Any]]:
    """The feature table's schema: entity key(s), feature_timestamp, features per window, _last_event_at."""
    from reconciler.compile import TYPE_ALIASES

    features, schema = source.connector.serving.ml_features, source.schema
    columns = []
    for key in features.entity_keys:
        found = schema.find(key)
        columns.append({"name": key, "type": TYPE_ALIASES.get(found.type, found.type), "mode": "NULLABLE"})
    columns.append({"name": FEATURE_TIMESTAMP, "type": "TIMESTAMP", "mode": "REQUIRED",
                    "description": "The features are as of this instant: only rows before it count"})
    for metric in features.features:
        fn, arg, alias = parse_metric(metric)
        if fn == "count":
            kind = "INT64"
        elif fn == "avg":
            kind = "FLOAT64"
        else:
            found = schema.find(arg)
            kind = TYPE_ALIASES.get(found.type, found.type)
        for window in features.windows:
            columns.append({"name": f"{alias}_{window_label(window)}", "type": kind, "mode": "NULLABLE",
                            "description": f"{metric.strip()} over the {window_label(window)} before feature_timestamp"})
    columns.append({"name": LAST_EVENT, "type": "TIMESTAMP", "mode": "NULLABLE",
                    "description": "The newest source row these features use (always before feature_timestamp)"})
    return columns


def _feature_resources(platform: Platform, names, source, labels: dict[str, str]) -> list[Resource]:
    from reconciler.compile import (
        GOLD_SCHEDULE,
        job_environment,
        job_name,
        partition_field,
        pipeline_spec,
    )

    connector = source.connector
    sid, project = connector.source_id, platform.project
    features = connector.serving.ml_features
    columns = feature_columns(source)
    keys = features.entity_keys
    clustering = [k for k in keys if next(c for c in columns if c["name"] == k)["type"] in CLUSTER_TYPES][:4]
    table = Resource(
        Kind.BIGQUERY_TABLE, f"{FEATURES}.{sid}",
        {"schema": columns, "time_partitioning": {"type": "DAY", "field": FEATURE_TIMESTAMP},
         "clustering_fields": clustering or None,
         "description": f"Point-in-time features of {sid} by {', '.join(keys)} (ML.FEATURES_AT_TIME, Vertex AI "
                        "Feature Store and Feast read this shape)"},
        labels, deletion_protection=connector.deletion_protection)
    pipeline = pipeline_spec(platform, names, source)
    document = {key: pipeline[key] for key in ("version", "source_id", "project", "schema", "silver")}
    document["features"] = {
        "table": f"{project}.{FEATURES}.{sid}",
        "entity_key": list(keys),
        "time_field": partition_field(connector, source.schema),
        "features": list(features.features),
        "windows_seconds": sorted(set(features.windows)),
    }
    silver = address(Kind.BIGQUERY_TABLE, f"{names.datasets['silver']}.{sid}")
    job = Resource(
        Kind.DATAFLOW_JOB, job_name(sid, "features"),
        {"template": "bigquery_to_bigquery", "streaming": False, "schedule": GOLD_SCHEDULE, "parameters": {},
         "pipeline": document, "environment": job_environment(platform, False)},
        labels, depends_on=(silver, table.address))
    return [table, job]


# --------------------------------------------------------------------------- validation


def check(collector, platform: Platform | None, platform_map, sources: Sequence) -> None:
    """The serving blocks' cross-file checks, each as file:line:col: field: message."""
    if platform is None:
        return
    from reconciler.compile import zone_names

    names = zone_names(platform)
    known = declared_tables(platform, names, sources)
    aliases = dataset_aliases(names, known)
    view_names: dict[str, str] = {}
    api_sources: set[str] = set()
    for source in sources:
        check_source(collector, platform, source, known, aliases, view_names)
        if _serves_api(source):
            api_sources.add(source.connector.source_id)
    check_clients(collector, platform, platform_map, sources, api_sources)


def check_source(collector, platform: Platform, source, known: Collection[str], aliases: dict[str, str],
                 view_names: dict[str, str]) -> None:
    """One source's serving block, checked against every source's tables (``known``:
    `declared_tables`; ``aliases``: its `dataset_aliases`) and the view names the sources
    before it declared (``view_names``, by file; this source's are added)."""
    connector, rel, smap = source.connector, source.connector_file, source.connector_map
    serving = connector.serving
    sid = connector.source_id
    tables = [t for t, _ in gold_tables(source)]

    def add(loc: tuple, message: str) -> None:
        collector.add(rel, smap.find(loc) if smap is not None else (1, 1), ".".join(str(p) for p in loc), message)

    for flag in ("third_party_api", "reporting", "ml_features"):
        if getattr(serving, flag) not in (False, None) and not tables:
            add(("serving", flag), f"{sid} has no Gold tables (processing.silver_to_gold aggregates): "
                                   f"serving.{flag} serves Gold data; add an aggregate or set it to false")
    reporting = serving.reporting_block
    if reporting is not None and tables:
        for table in tables:
            view_names.setdefault(table, rel)
        for i, view in enumerate(reporting.views):
            if view.name in view_names:
                add(("serving", "reporting", "views", i, "name"),
                    f"reporting view {view.name!r} is already declared (in {view_names[view.name]}; each Gold "
                    "table has a view of its name)")
            view_names.setdefault(view.name, rel)
            _check_sql(add, ("serving", "reporting", "views", i, "sql"), view.sql, platform.project, known, aliases)
        for i, rule in enumerate(reporting.row_access):
            if rule.table not in tables:
                add(("serving", "reporting", "row_access", i, "table"),
                    f"{rule.table!r} is not a Gold table of {sid} (its Gold tables: {', '.join(tables)})")
            try:
                sqltext.tokens(rule.filter)
                if ";" in rule.filter:
                    raise sqltext.SqlError("a filter is one boolean expression: no ';'")
            except sqltext.SqlError as exc:
                add(("serving", "reporting", "row_access", i, "filter"), str(exc))
    features = serving.ml_features
    if features and source.schema is not None:
        for j, key in enumerate(features.entity_keys):
            found = source.schema.find(key)
            loc = ("serving", "ml_features", "entity_key") + ((j,) if isinstance(features.entity_key, list) else ())
            if found is None or "." in key or found.mode == "REPEATED" or found.type in ("RECORD", "STRUCT"):
                add(loc, f"entity key {key!r} is not a top-level, non-repeated field of {connector.schema_.file}")
        for j, metric in enumerate(features.features):
            fn, arg, alias = parse_metric(metric)
            found = source.schema.find(arg) if arg != "*" else None
            if arg != "*" and (found is None or "." in arg or found.mode == "REPEATED"):
                add(("serving", "ml_features", "features", j),
                    f"feature field {arg!r} is not a top-level field of {connector.schema_.file}")
            elif fn in ("sum", "avg") and found is not None and found.type not in (
                    "INT64", "INTEGER", "FLOAT64", "FLOAT", "NUMERIC", "BIGNUMERIC"):
                add(("serving", "ml_features", "features", j), f"{fn}({arg}): {arg} is {found.type}, not a number")
        for j, window in enumerate(features.windows):
            if window <= 0:
                add(("serving", "ml_features", "windows", j), "a window is a positive duration like 7d")


def _serves_api(source) -> bool:
    return bool(source.connector.serving.third_party_api and gold_tables(source))


def check_clients(collector, platform: Platform, platform_map, sources: Sequence, api_sources: set[str]) -> None:
    """Each data API client's scopes name sources that serve the API (``api_sources``)."""
    if platform_map is None:
        return
    seen_env: dict[str, str] = {}
    for client_id, client in platform.api.clients.items():
        env = client_env(client_id)
        if env in seen_env:
            collector.add("platform.yaml", platform_map.find(("api", "clients", client_id)), f"api.clients.{client_id}",
                          f"client {client_id!r} maps to the same secret variable {env} as {seen_env[env]!r}")
        seen_env.setdefault(env, client_id)
        for j, scope in enumerate(client.scopes):
            source_id = scope.split(":", 1)[0]
            loaded = any(s.connector.source_id == source_id for s in sources)
            unreadable = not loaded and any((collector.root / "connectors" / f"{source_id}{ext}").exists()
                                            for ext in (".yaml", ".yml"))
            if source_id not in api_sources and not unreadable:  # (a file with problems: those are reported)
                collector.add("platform.yaml", platform_map.find(("api", "clients", client_id, "scopes", j)),
                              f"api.clients.{client_id}.scopes.{j}",
                              f"scope {scope!r} names {source_id!r}, which does not serve the data API "
                              f"(serving.third_party_api: true with Gold tables): "
                              f"{', '.join(sorted(api_sources)) or 'none does'}")


# The same checks for a commit that changed a few sources (`reconciler.load`'s git-mode load):
# the previous load passed them, so only what the changed sources declare can fail them.


@dataclass
class CheckIndex:
    """What `check` reads of every source, each name with how many sources declare it: the
    tables views may read (`declared_tables`), the names a reporting view may not take (Gold
    tables of sources with ``reporting``, and views), the views' names, the tables they read."""

    known: dict[str, int] = field(default_factory=dict)
    names: dict[str, int] = field(default_factory=dict)
    views: dict[str, int] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)  # the tables views read

    @classmethod
    def of(cls, names, sources: Iterable) -> CheckIndex:
        index = cls()
        index.count(names, sources, 1)
        return index

    def copy(self) -> CheckIndex:
        return CheckIndex(dict(self.known), dict(self.names), dict(self.views), dict(self.reads))

    def count(self, names, sources: Iterable, step: int) -> None:
        """Count ``sources`` in (``step`` 1) or out (-1)."""
        from reconciler.compile import count_keys

        for source in sources:
            for counter, keys in zip((self.known, self.names, self.views, self.reads), _declared(names, source),
                                     strict=True):
                count_keys(counter, keys, step)


def _declared(names, source) -> tuple[frozenset[str], ...]:
    """What `check` registers of one source: its `declared_tables`, the names it takes in
    ``view_names`` (with ``reporting``: its Gold tables and views), its views' names, the
    tables they read (`_check_sql`'s names for them)."""
    reporting = source.connector.serving.reporting_block
    tables = [t for t, _ in gold_tables(source)]
    if reporting is None or not tables:
        return source_known(names, source), frozenset(), frozenset(), frozenset()
    views = frozenset(view.name for view in reporting.views)
    aliases = dataset_aliases(names, ())  # (a dataset of `declared_tables` is its own alias)
    reads = set()
    for view in reporting.views:
        with contextlib.suppress(sqltext.SqlError):  # (reported by check_source)
            reads.update(_table_name(ref.split("."), aliases) for ref in sqltext.table_references(view.sql))
    return source_known(names, source), frozenset(tables) | views, views, frozenset(reads)


def check_changed(collector, platform: Platform, index: CheckIndex, removed: Sequence,
                  added: Sequence) -> CheckIndex | None:
    """`check` for a state that is ``index``'s sources, which passed it under this very platform,
    with ``removed`` gone and ``added`` come (a changed source is in both): the problems of the
    added sources to ``collector``, and the index of the new state. None when a source not
    checked again could fail now - a view of its named like an added source's table (or the
    other way round: which one fails depends on the order of all), a view of its reading a
    table that went away, a data API client's scope naming a changed source: then only `check`
    over every source tells."""
    from reconciler.compile import zone_names

    names = zone_names(platform)
    ids = {source.connector.source_id for source in (*removed, *added)}
    if any(scope.split(":", 1)[0] in ids for client in platform.api.clients.values() for scope in client.scopes):
        return None
    new = index.copy()
    new.count(names, removed, -1)
    reading = False  # an added source has views (their SQL is checked against every source's tables)
    for source in added:  # view names across sources (within the added ones: check_source below)
        _known, taken, views, _reads = _declared(names, source)
        if any(view in new.names for view in views) or any(name in new.views for name in taken):
            return None
        reading = reading or bool(views)
    new.count(names, added, 1)
    if any(table in new.reads and table not in new.known for source in removed
           for table in source_known(names, source)):
        return None
    aliases = dataset_aliases(names, new.known.keys()) if reading else {}
    view_names: dict[str, str] = {}
    for source in added:
        check_source(collector, platform, source, new.known, aliases, view_names)
    return new


def _check_sql(add, loc: tuple, sql: str, project: str, known: set[str], aliases: dict[str, str]) -> None:
    try:
        refs = sqltext.table_references(sql)
    except sqltext.SqlError as exc:
        add(loc, str(exc))
        return
    if not refs:
        add(loc, "the view reads no table (FROM dataset.table)")
    for ref in refs:
        parts = ref.split(".")
        if len(parts) == 3 and parts[0] != project:
            add(loc, f"table {ref!r} is in another project; a reporting view reads this platform's tables")
            continue
        short = _table_name(parts, aliases)
        if len(parts) < 2:
            add(loc, f"table {ref!r}: name tables as dataset.table (e.g. gold.orders_daily)")
        elif short not in known:
            add(loc, f"table {short!r} is not declared by this platform (declared: "
                     f"{', '.join(sorted(t for t in known if not t.startswith(('bronze.',))))})")


def _table_name(parts: list[str], aliases: dict[str, str]) -> str:
    """``dataset.table`` of a table a view names (``[project.]dataset.table``, the dataset
    perhaps a zone's alias)."""
    if len(parts) == 2 and parts[0] in aliases:
        return f"{aliases[parts[0]]}.{parts[1]}"
    return ".".join(parts[-2:])
