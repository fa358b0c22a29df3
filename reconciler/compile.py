"""Compile: desired state → the resources it needs.

A pure function of the validated `DesiredState`; no I/O. For the platform it emits the zone
buckets (with lifecycle tiers) and datasets; for each source:

=================================  ==============================================================
``pubsub_topic.<id>``              where the connector (or publishers) send the source's records
                                   (event_streaming may name its topic; another project's, named
                                   ``projects/<p>/topics/<t>``, is a reference: read, never managed)
``pubsub_topic.<id>-dlq``          dead letters: records the pipeline could not process
``pubsub_subscription.<id>-ingest`` the pipeline's subscription: ack deadline, exponential retry,
                                   dead-letter policy pointing at the DLQ topic, retention, and
                                   the declared filter / ordering / exactly-once settings
``pubsub_subscription.<id>-dlq-hold`` keeps dead letters (acked ones too) for replay
``bigquery_table.bronze.<id>_raw`` raw payload + attributes, partitioned by ingestion time
``bigquery_table.silver.<id>``     the schema file's fields + ingestion metadata columns,
                                   partitioned by day on the record's timestamp, clustered
``bigquery_table.gold.<table>``    one per ``silver_to_gold`` aggregate
``dataflow_job.<id>-ingest``       the ingestion pipeline: streaming ``pubsub_to_bigquery`` for
                                   event_streaming / streaming_api / database_cdc, streaming
                                   ``gcs_to_bigquery`` on file events for batch_file /
                                   cloud_transfer (ids map ``_`` to ``-``: Dataflow job names)
``dataflow_job.<id>-gold-<table>`` batch ``bigquery_to_bigquery``: one per gold aggregate, hourly
``cloud_run_service.<id>-connector`` streaming_api: the connector runtime (``connector/``) polling
                                   the API or receiving the webhook, publishing to the topic
``storage_notification.<bucket>/<prefix>`` batch_file: each landed file's OBJECT_FINALIZE event
                                   to the topic, read by the streaming ``<id>-ingest`` job;
                                   a ``schedule`` adds the batch sweep ``<id>-sweep``
``datastream_stream.<id>``         database_cdc: the Datastream stream into ``cdc/<id>/`` of the
                                   landing bucket, its notification, streaming
                                   ``datastream_to_bigquery``, and per table a Bronze change log and
                                   a Silver table instead of ``<id>_raw`` and ``<id>`` (reconciler/cdc.py)
``storage_transfer_job.<id>-transfer`` cloud_transfer: the Storage Transfer job copying the
                                   source's objects into its landing prefix on ``schedule``; as for
                                   batch_file, the prefix's notification drives the streaming
                                   ``<id>-ingest`` job (no sweep: each run's completion message
                                   sweeps what it copied)
=================================  ==============================================================

Connectors are specified in ``docs/connector-contract.md``: `connector_spec` compiles the runtime
spec document the connector reads, and `_connector_service` the Cloud Run service that runs it.

A job's spec carries the pipeline spec document the templates in ``beam/`` read (their
``source_spec`` parameter; format in ``beam/common/spec.py``) as data, so that a plan shows which
rule or table changed, plus the template parameters that say where to read from, and the
``environment`` it is launched with: the settings of platform.yaml's ``dataflow:`` block as
declared (`job_environment`), so that changing them is a planned update of every job.

Every resource carries ``managed-by=headwater`` and ``headwater-platform=<environment>``, plus
``headwater-source=<source_id>`` when it belongs to one source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import compress, repeat
from operator import attrgetter, is_not
from types import SimpleNamespace
from typing import Any

from reconciler import semantic
from reconciler.config import (
    DEFAULT_LIFECYCLES,
    Connector,
    Lifecycle,
    Platform,
    SchemaField,
    SourceSchema,
    parse_metric,
)
from reconciler.load import DERIVED_DATE, PARTITION_TYPES, DesiredState, Source
from reconciler.resources import (
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    PLATFORM_KEY,
    PROTECTED_KEY,
    SOURCE_KEY,
    Kind,
    Resource,
    ResourceIndex,
    address,
)

BUCKET_ZONES = ("landing", "bronze", "silver")
DATASET_ZONES = ("bronze", "silver", "gold")

TYPE_ALIASES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD"}

# Columns the ingestion pipeline adds to every Silver row.
INGESTION_METADATA = [
    {"name": "_ingested_at", "type": "TIMESTAMP", "mode": "REQUIRED",
     "description": "When headwater's pipeline wrote the row (UTC)"},
    {"name": "_message_id", "type": "STRING", "mode": "NULLABLE",
     "description": "Pub/Sub message id or source file of the record"},
    {"name": "_schema_version", "type": "STRING", "mode": "NULLABLE",
     "description": "Version of the schema file the record was validated against"},
]

BRONZE_RAW_SCHEMA = [
    # Exactly what the ingestion pipelines write (beam/common/spec.py BRONZE_FIELDS; the
    # daemon does not ship beam/, so tests/test_compile.py holds the two equal).
    {"name": "source_id", "type": "STRING", "mode": "REQUIRED"},
    {"name": "payload", "type": "STRING", "mode": "REQUIRED",
     "description": "The record as received (UTF-8; undecodable bytes as \\xNN escapes)"},
    {"name": "attributes", "type": "RECORD", "mode": "REPEATED",
     "description": "Pub/Sub message attributes, or the landing file's metadata (file, size, generation) "
                    "and the record's line or row number",
     "fields": [{"name": "key", "type": "STRING", "mode": "NULLABLE"},
                {"name": "value", "type": "STRING", "mode": "NULLABLE"}]},
    {"name": "origin", "type": "STRING", "mode": "NULLABLE",
     "description": "Where it came from: gs://bucket/object#line or pubsub:<message id>"},
    {"name": "ingested_at", "type": "TIMESTAMP", "mode": "REQUIRED"},
]


@dataclass(frozen=True)
class ZoneNames:
    buckets: dict[str, str]
    datasets: dict[str, str]


def zone_names(platform: Platform) -> ZoneNames:
    """Bucket and dataset names of the zones, defaults applied."""
    zones = platform.zones
    buckets = {
        zone: getattr(zones, zone).bucket or f"{zone}-{platform.project}-{platform.region}" for zone in BUCKET_ZONES
    }
    datasets = {zone: getattr(zones, zone).dataset or zone for zone in DATASET_ZONES}
    return ZoneNames(buckets, datasets)


def compile_resources(state: DesiredState, previous: DesiredState | None = None,
                      changes: tuple[Sequence[Source], Sequence[Source]] | None = None) -> list[Resource]:
    """All resources of the desired state, sorted by address.

    ``previous``: a state compiled before (the previous revision, `reconciler.load.load_repo`'s).
    When its platform is this state's very object, the parts of each source whose `Source` is the
    very object it compiled are reused, and only what depends on several sources is made again
    (`_compile_memoized`): the result is the same list as without it. The parts are kept on the
    state (``_compile_memo``) for the next revision.

    ``changes``: ``(removed, added)`` when the caller knows them (a git-mode load): ``state``'s
    sources are ``previous``'s less ``removed``, plus ``added`` (a changed source is in both),
    the others in ``previous``'s order. Then the sources are not compared with ``previous``'s
    one by one to find them.
    """
    compiled = getattr(state, "_compiled", None)
    if compiled is not None:  # compiled by load_repo's limits check (reconciler/load.py): the same list
        return list(compiled)
    memo = getattr(previous, "_compile_memo", None) if previous is not None else None
    if memo is not None and memo.platform is not state.platform:
        memo = None  # a platform-wide change: everything again
    try:
        resources, memo = _compile_memoized(state, memo, changes)
    except _Unsupported:
        resources, memo = _compile_plain(state), None
    object.__setattr__(state, "_compile_memo", memo)
    return resources


def compiled_index(state: DesiredState) -> ResourceIndex:
    """`compile_resources(state)` by address. When compile's memo made it (the state was
    compiled from a previous one, `load_repo(previous=...)`), it is derived from the previous
    state's index, so `ResourceIndex.changed_since` names the addresses compiled anew without a
    pass over all of them (issue 14); else a fresh index."""
    memo = getattr(state, "_compile_memo", None)
    if memo is None and getattr(state, "_compiled", None) is None:
        compile_resources(state)  # makes the memo, when it can
        memo = getattr(state, "_compile_memo", None)
    return memo.by_address() if memo is not None else ResourceIndex(compile_resources(state))


def _compile_plain(state: DesiredState) -> list[Resource]:
    """Everything, in one pass over the sources (no memo): the reference the memoized compile
    equals, used where that cannot hold its shape (two resources of one address)."""
    platform = state.platform
    names = zone_names(platform)
    resources = list(_platform_resources(platform, names))
    from reconciler import cdc  # issue 10: Datastream's connection profiles (database_cdc sources)

    resources.extend(cdc.platform_resources(platform, names.buckets["landing"], state.sources, base_labels(platform)))
    for source in state.sources:
        resources.extend(_source_resources(platform, names, source))
    from reconciler.cloud_monitoring import monitoring_resources  # issue 11: Cloud Monitoring

    resources.extend(monitoring_resources(platform, names, state.sources, resources))
    from reconciler.serving import serving_resources  # issue 12: reporting views, the data API, ML features

    resources.extend(serving_resources(platform, names, state.sources, base_labels(platform)))
    from reconciler.governance import governance_resources  # issue 13: grants, audit logs, column security

    resources.extend(governance_resources(state, resources))
    # A reference to another project's resource may be named by several sources: one entry.
    references: set[str] = set()
    resources = [r for r in resources
                 if not r.external or not (r.address in references or references.add(r.address))]
    return sorted((_with_protection_label(r) for r in resources), key=lambda r: r.address)


# --------------------------------------------------------------------------- the memo (issue 14)


class _Unsupported(Exception):
    """A state the memoized compile does not take (two resources of one address): compiled plainly."""


@dataclass
class _Part:
    """What one source compiled to, and what the platform-wide steps need of it."""

    source: Source
    own: tuple[Resource, ...]  # _source_resources
    monitoring: tuple[Resource, ...]  # its alert policy and dashboard
    classes: Any  # reconciler.classification.SourceClasses
    known: frozenset[str]  # serving.declared_tables of this source
    has_views: bool  # reporting views with SQL: they read every source's tables
    serving: Any  # reconciler.serving.ServingPart
    fixed: tuple[Resource, ...] = ()  # serving.resources with their dataset dependency
    fixed_for: frozenset[str] | None = None  # the serving datasets `fixed` was made for
    grants: tuple[Any, ...] = ()  # governance.source_grants
    grants_for: tuple[tuple[str, ...], tuple[Resource, ...]] | None = None
    chunk: tuple[Resource, ...] = ()  # its resources in the result (protection labels on)
    desired: tuple[Resource, ...] = ()  # own + monitoring + fixed: governance's "declared"
    classified: bool = False  # governance.has_classified_columns
    cdc: bool = False  # a database_cdc source
    email: str | None = None  # monitoring.alert_email


@dataclass
class _Totals:
    """What the platform-wide steps read of every part, counted: a compile updates it for the
    parts it made again, and the steps read it instead of passing over every part (issue 14: a
    one-source commit at 10,000 sources). Sets hold source ids; dicts count how many parts have
    each key."""

    known: dict[str, int] = dataclasses.field(default_factory=dict)  # serving.declared_tables
    viewers: set[str] = dataclasses.field(default_factory=set)  # parts with reporting views (they read `known`)
    classified: set[str] = dataclasses.field(default_factory=set)  # governance.has_classified_columns
    columns: set[str] = dataclasses.field(default_factory=set)  # parts with classified columns (their `classes`)
    cdc: set[str] = dataclasses.field(default_factory=set)
    emails: dict[str, int] = dataclasses.field(default_factory=dict)
    datasets: dict[str, int] = dataclasses.field(default_factory=dict)  # serving datasets
    api: set[str] = dataclasses.field(default_factory=set)  # parts in the data API document
    jobs: set[str] = dataclasses.field(default_factory=set)  # parts declaring a Dataflow job
    streams: set[str] = dataclasses.field(default_factory=set)  # parts declaring a Datastream stream

    def copy(self) -> _Totals:
        return _Totals(dict(self.known), set(self.viewers), set(self.classified), set(self.columns), set(self.cdc),
                       dict(self.emails), dict(self.datasets), set(self.api), set(self.jobs), set(self.streams))

    def made(self, sid: str, old: _Part | None, new: _Part | None) -> None:
        """Part ``sid`` made again (``old`` -> ``new``; None: none): what it is from the start."""
        for part, step in ((old, -1), (new, 1)):
            if part is not None:
                count_keys(self.known, part.known, step)
                count_keys(self.emails, (part.email,) if part.email else (), step)
        _member(self.viewers, sid, new is not None and new.has_views)
        _member(self.classified, sid, new is not None and new.classified)
        _member(self.columns, sid, new is not None and bool(new.classes.columns))
        _member(self.cdc, sid, new is not None and new.cdc)

    def served(self, sid: str, old: _Part | None, new: _Part | None) -> None:
        """Part ``sid``'s serving made again."""
        for part, step in ((old, -1), (new, 1)):
            if part is not None:
                count_keys(self.datasets, part.serving.datasets, step)
        _member(self.api, sid, new is not None and bool(new.serving.api_sources))

    def desired(self, sid: str, new: _Part | None) -> None:
        """Part ``sid``'s declared resources made again."""
        kinds = {r.kind for r in new.desired} if new is not None else set()
        _member(self.jobs, sid, Kind.DATAFLOW_JOB in kinds)
        _member(self.streams, sid, new is not None and new.cdc and Kind.DATASTREAM_STREAM in kinds)


class _Counts(Mapping[str, int]):
    """A count by key that the next revision's compile derives and changes (`derive`) while
    this one stays as it is, without copying every key: a shared base and what changed since,
    folded into a new base once that is not small (~100,000 addresses are counted at 10,000
    sources; a commit changes a few dozen)."""

    FOLD = 4096

    def __init__(self, base: dict[str, int] | None = None, changes: dict[str, int] | None = None) -> None:
        self._base = base if base is not None else {}
        self._changes = changes if changes is not None else {}  # 0: not counted any more

    def derive(self) -> _Counts:
        if len(self._changes) > self.FOLD:
            return _Counts({k: v for k, v in {**self._base, **self._changes}.items() if v})
        return _Counts(self._base, dict(self._changes))

    def __getitem__(self, key: str) -> int:
        value = self._changes.get(key)
        if value is None:
            return self._base[key]
        if not value:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._changes.get(key)
        if value is None:
            return self._base.get(key, default)
        return value or default

    def __contains__(self, key: object) -> bool:
        value = self._changes.get(key)  # type: ignore[call-overload]
        return key in self._base if value is None else bool(value)

    def __setitem__(self, key: str, value: int) -> None:
        self._changes[key] = value

    def pop(self, key: str, default: Any = None) -> Any:
        value = self.get(key, default)
        self._changes[key] = 0
        return value

    def __iter__(self) -> Iterator[str]:
        yield from (k for k in self._base if k not in self._changes)
        yield from (k for k, v in self._changes.items() if v)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def count_keys(counter: dict[str, int], keys: Iterable[str], step: int) -> None:
    """Count ``keys`` in (``step`` 1) or out (-1) of ``counter``: a key counted 0 times is not in it."""
    for key in keys:
        value = counter.get(key, 0) + step
        if value:
            counter[key] = value
        else:
            del counter[key]


def _member(members: set[str], key: str, present: bool) -> None:
    if present:
        members.add(key)
    else:
        members.discard(key)


@dataclass
class _Memo:
    platform: Platform
    parts: dict[str, _Part]
    known: frozenset[str] | None
    datasets: frozenset[str]
    restricted: tuple[str, ...]
    index: Any  # reconciler.governance.GrantIndex
    platform_grants: tuple[Any, ...]
    declared: _Counts  # address -> how many non-governance resources have it
    zone_targets: set[str]
    sinks: dict[str, int]  # storage transfer sinks (bucket addresses) -> how many jobs
    aggregates: dict[str, tuple[Resource, ...]]  # platform-wide chunks, labelled
    final: list[Resource]  # the result
    external: dict[str, int]  # external addresses -> how many sources name them
    # The result by address (`compiled_index`), derived from the previous revision's; None until
    # asked for (`by_address()`): a load that is never planned incrementally does not build it.
    index_by_address: ResourceIndex | None
    totals: _Totals = dataclasses.field(default_factory=_Totals)
    api: tuple[tuple[dict[str, Any], ...], tuple[str, ...]] = ((), ())  # the data API's sources and views
    positions: dict[str, int] | None = None  # each source id's position in the state, when made
    made: tuple[Resource, ...] | None = None  # what `final` has that the previous memo's had not (None: all)

    def by_address(self) -> ResourceIndex:
        if self.index_by_address is None:
            self.index_by_address = ResourceIndex(self.final)
        return self.index_by_address


def _compile_memoized(state: DesiredState, memo: _Memo | None,
                      changes: tuple[Sequence[Source], Sequence[Source]] | None = None) -> tuple[list[Resource], _Memo]:
    """`_compile_plain`'s result from per-source parts (those of ``memo`` reused where the source
    is the same object) and platform-wide aggregates over them; the memo of this state.
    ``changes``: `compile_resources`'."""
    from reconciler import cdc, governance, serving
    from reconciler.classification import classification_aggregate, source_classification
    from reconciler.cloud_monitoring import notification_channel, source_monitoring

    platform = state.platform
    if SOURCE_KEY in platform.labels:
        raise _Unsupported  # every resource would look like that source's
    names = zone_names(platform)
    base = base_labels(platform)
    before = memo.parts if memo is not None else {}
    totals = memo.totals.copy() if memo is not None else _Totals()
    sources = state.sources
    if memo is not None and changes is not None:  # the previous parts, less the removed sources'
        removed, made = changes
        parts = dict(before)
        for source in removed:
            del parts[source.connector.source_id]
        added = [source.connector.source_id for source in made]
        if len(parts) + len(added) != len(sources) or any(sid in parts for sid in added):
            raise _Unsupported  # two sources of one id (or changes that are not)
        gone = {source.connector.source_id for source in removed} - set(added)
    else:
        # The previous parts, in the sources' order; the sources that are not their part's very
        # source (changed or new) found by C-level maps, not a Python loop over every source.
        sids = list(map(_SOURCE_ID, sources))
        parts = dict(zip(sids, map(before.get, sids), strict=True))
        if len(parts) != len(sids):
            raise _Unsupported  # two sources of one id
        made = [sources[i] for i in compress(range(len(sids)), map(is_not, sources,
                                                                   map(_SOURCE, map(before.get, sids, repeat(_NO_PART)))))]
        gone = before.keys() - parts.keys()
    fresh: set[str] = set()  # the parts made (or changed) again
    for source in made:
        sid = source.connector.source_id
        fresh.add(sid)
        own = tuple(_source_resources(platform, names, source))
        tables = serving.gold_tables(source)
        reporting = source.connector.serving.reporting_block
        parts[sid] = _Part(source, own, tuple(source_monitoring(platform, names, source, own)),
                           source_classification(platform, names, source), serving.source_known(names, source),
                           bool(reporting is not None and tables and reporting.views), None,
                           classified=governance.has_classified_columns(source),
                           cdc=source.connector.ingestion.pattern == "database_cdc",
                           email=source.connector.monitoring.alert_email)
    for sid in fresh | gone:
        totals.made(sid, before.get(sid), parts.get(sid))

    # Each source id's position in the state: the previous compile's when no source moved (none
    # went or came, each changed one is where its old one was, the others in their order:
    # `compile_resources`' ``changes``), else made when asked (a pass over the sources).
    old_positions = memo.positions if memo is not None and changes is not None and not gone else None
    if old_positions is not None and any(old_positions.get(sid) is None or sources[old_positions[sid]]
                                         is not parts[sid].source for sid in fresh):
        old_positions = None
    positions: dict[str, int] = old_positions or {}

    def order() -> dict[str, int]:
        if not positions:
            positions.update(zip(map(_SOURCE_ID, sources), range(len(sources)), strict=True))
        return positions

    def again(sid: str) -> _Part:
        """Part ``sid``, to be changed: a copy unless made by this compile."""
        if sid not in fresh:
            parts[sid] = replace(parts[sid])
            fresh.add(sid)
        return parts[sid]

    # Each step below makes again what its inputs changed for: the parts made anew, and every part
    # when what all of them share changed (the tables views read, the serving datasets, the
    # restricted sources).

    # Serving: reporting views read every source's tables; the rest is the source's own.
    known = None
    if totals.viewers:
        known = memo.known if memo is not None and memo.known is not None and not _crossed(
            memo.totals.known, totals.known, fresh | gone, before, parts) else frozenset(totals.known)
    aliases = serving.dataset_aliases(names, known) if known is not None else {}
    known_changed = memo is None or (known is not memo.known and known != memo.known)
    for sid in [*fresh, *(totals.viewers - fresh if known_changed else ())]:
        part = again(sid)
        part.serving = serving.source_serving(platform, names, part.source, base, known or frozenset(), aliases)
        part.fixed_for = None
        totals.served(sid, before.get(sid), part)
    for sid in gone:
        totals.served(sid, before[sid], None)
    datasets = frozenset(totals.datasets)
    if memo is not None and datasets == memo.datasets:
        datasets = memo.datasets
    if memo is not None and not (totals.api | memo.totals.api) & (fresh | gone):
        api_sources, api_views = memo.api  # no part in the data API document changed
    else:
        in_api = sorted(totals.api, key=order().__getitem__)
        api_sources = [entry for sid in in_api for entry in parts[sid].serving.api_sources]
        api_views = [view for sid in in_api for view in parts[sid].serving.api_views]
    for sid in (parts if memo is None or datasets != memo.datasets else list(fresh)):
        part = parts[sid]
        if part.fixed_for != datasets:
            part = again(sid)
            part.fixed = tuple(serving.with_dataset_dependency(part.serving.resources, datasets))
            part.fixed_for = datasets
            part.desired = (*part.own, *part.monitoring, *part.fixed)
            totals.desired(sid, part)
    for sid in gone:
        totals.desired(sid, None)

    # Governance: each source's grants, then the bindings of the targets whose grants changed.
    restricted = tuple(sorted(totals.classified))
    if memo is not None and restricted == memo.restricted:
        restricted = memo.restricted
    for sid in (parts if memo is None or restricted != memo.restricted else list(fresh)):
        part = parts[sid]
        if part.grants_for is None or part.grants_for[0] != restricted or part.grants_for[1] is not part.desired:
            part = again(sid)
            part.grants = governance.source_grants(platform, names, part.source, (*part.own, *part.fixed), restricted)
            part.grants_for = (restricted, part.desired)
            labelled = (*part.desired, *part.classes.policies)
            part.chunk = tuple(_with_protection_label(r) for r in labelled)

    aggregates: dict[str, tuple[Resource, ...]] = {}
    cdc_sources = [parts[sid].source for sid in totals.cdc]  # (order aside: the profiles they name)
    platform_part = [*_platform_resources(platform, names),
                     *cdc.platform_resources(platform, names.buckets["landing"], cdc_sources, base)]
    emails = sorted(totals.emails)
    serving_part = serving.serving_aggregate(platform, datasets, api_sources, tuple(api_views), base)
    aggregates["platform"] = tuple(platform_part)
    aggregates["monitoring"] = tuple(notification_channel(platform, email) for email in emails)
    aggregates["serving"] = tuple(serving_part)

    index = memo.index.copy() if memo is not None else governance.GrantIndex()
    declared = memo.declared.derive() if memo is not None else _Counts()
    sinks = dict(memo.sinks) if memo is not None else {}
    crossed: set[str] = set()  # addresses declared or undeclared by this revision

    def count(counter: dict[str, int], key: str, step: int) -> None:
        value = counter.get(key, 0) + step
        if (value > 0) != (key in counter):
            crossed.add(key)
        if value > 0:
            counter[key] = value
        else:
            counter.pop(key, None)

    changed_parts = [(sid, before.get(sid), parts.get(sid)) for sid in fresh | gone]
    for sid, old, new in changed_parts:
        old_desired = old.desired if old is not None else ()
        new_desired = new.desired if new is not None else ()
        if old_desired is not new_desired:
            for r in old_desired:
                count(declared, r.address, -1)
            for r in new_desired:
                count(declared, r.address, 1)
            for bucket in governance.transfer_sinks(old_desired):
                count(sinks, bucket, -1)
            for bucket in governance.transfer_sinks(new_desired):
                count(sinks, bucket, 1)
        index.update(sid, old.grants if old is not None else (), new.grants if new is not None else ())
    old_aggregates = memo.aggregates if memo is not None else {}
    for name in ("platform", "serving"):  # the platform-wide parts the grants see ("monitoring": no targets)
        old_part = old_aggregates.get(f"{name}-raw", ())
        new_part = aggregates[name]
        if old_part != new_part:
            for r in old_part:
                count(declared, r.address, -1)
            for r in new_part:
                count(declared, r.address, 1)
        else:
            aggregates[name] = old_part
    any_job, any_stream = bool(totals.jobs), bool(totals.streams)
    api_service = any(r.kind == Kind.CLOUD_RUN_SERVICE and r.name == serving.API_SERVICE for r in serving_part)
    platform_grants = governance.platform_grants(platform, names, datasets, restricted, any_job, api_service,
                                                 any_stream)
    if memo is not None and platform_grants == memo.platform_grants:
        platform_grants = memo.platform_grants
    index.update("", memo.platform_grants if memo is not None else (), platform_grants)
    zone_targets = governance.zone_targets(names, datasets)
    crossed |= zone_targets ^ (memo.zone_targets if memo is not None else set())
    index.dirty |= {target for target in crossed if target in index.roles}
    binding_changes = index.bindings(platform, declared, zone_targets, sinks, base, order)
    classification = classification_aggregate(platform, (parts[sid].classes for sid in totals.columns))
    if any(r.kind == Kind.IAM_BINDING and (r.spec["target"], r.spec["role"]) in index.made for r in classification):
        raise _Unsupported  # merged with a binding of the grants: governance_resources merges them
    classification += governance.audit_configs(platform, base)
    aggregates["governance"] = tuple(classification)
    for name in ("platform", "monitoring", "serving", "governance"):
        aggregates[f"{name}-raw"] = aggregates[name]
        old_raw = old_aggregates.get(f"{name}-raw")
        if old_raw is aggregates[name] or old_raw == aggregates[name]:
            aggregates[f"{name}-raw"] = old_raw
            aggregates[name] = old_aggregates[name]
        else:
            aggregates[name] = tuple(_with_protection_label(r) for r in aggregates[name])

    # The result: from the chunks, or the previous result with the changed chunks swapped.
    if memo is None:
        everything: list[Resource] = []
        for part in parts.values():
            everything += part.chunk
        for name in ("platform", "monitoring", "serving", "governance"):
            everything += aggregates[name]
        everything += [_with_protection_label(r) for r in index.made.values()]
        final, external, _drop, _put = _patched([], {}, [], everything)  # everything put into nothing
        by_address = None
    else:
        removed: list[Resource] = []
        added: list[Resource] = []
        for _sid, old, new in changed_parts:
            old_chunk = old.chunk if old is not None else ()
            new_chunk = new.chunk if new is not None else ()
            if old_chunk is not new_chunk:
                removed += old_chunk
                added += new_chunk
        for name in ("platform", "monitoring", "serving", "governance"):
            if old_aggregates[name] is not aggregates[name]:
                removed += old_aggregates[name]
                added += aggregates[name]
        for old_binding, new_binding in binding_changes:
            if old_binding is not None:
                removed.append(_with_protection_label(old_binding))
            if new_binding is not None:
                added.append(_with_protection_label(new_binding))
        final, external, drop, put = _patched(memo.final, memo.external, removed, added)
        # Derived from the previous index, built if it was not: the next plan then takes what
        # changed from it (`ResourceIndex.changed_since`).
        by_address = memo.by_address().derive(put=put, drop=[r.address for r in drop])
    made = None if memo is None else tuple(added)
    result = list(final)
    return result, _Memo(platform, parts, known, datasets, restricted, index, platform_grants, declared,
                         zone_targets, sinks, aggregates, final, external, by_address, totals,
                         (tuple(api_sources), tuple(api_views)), positions or None, made=made)


def _crossed(before: dict[str, int], after: dict[str, int], sids: Iterable[str], old: dict[str, _Part],
             new: dict[str, _Part]) -> bool:
    """A key of the parts ``sids`` (before or after) is counted in one of ``before``/``after`` only."""
    for sid in sids:
        for part in (old.get(sid), new.get(sid)):
            if part is not None and any((key in before) != (key in after) for key in part.known):
                return True
    return False


_SOURCE_ID = attrgetter("connector.source_id")
_SOURCE = attrgetter("source")
_NO_PART = SimpleNamespace(source=None)  # stands for a part not made before (its source is no source)


def _patched(final: list[Resource], external: dict[str, int], removed: list[Resource], added: list[Resource]
             ) -> tuple[list[Resource], dict[str, int], list[Resource], list[Resource]]:
    """``final`` (sorted by address, each address once) without ``removed`` and with ``added``
    (references to another project's resource counted: kept while some source names them), the
    new counts, and the resources taken out and put in. Few changes are made in place (a binary
    search and a move each); many, by sorting again."""
    from bisect import bisect_left

    external = dict(external)
    drop: list[Resource] = []
    for r in removed:
        if r.external:
            external[r.address] -= 1
            if external[r.address]:
                continue
            del external[r.address]
        drop.append(r)
    put: list[Resource] = []
    for r in added:
        if r.external:
            external[r.address] = external.get(r.address, 0) + 1
            if external[r.address] > 1:
                continue
        put.append(r)
    if len(drop) + len(put) > 2000:
        gone = {r.address for r in drop}
        new = [r for r in final if r.address not in gone] + put
        new.sort(key=lambda r: r.address)
        if any(new[i].address == new[i + 1].address for i in range(len(new) - 1)):
            raise _Unsupported
        return new, external, drop, put
    new = list(final)
    key = _address_of
    for r in drop:
        i = bisect_left(new, r.address, key=key)
        if i == len(new) or new[i].address != r.address:
            raise _Unsupported  # not there: two of one address before
        del new[i]
    for r in put:
        i = bisect_left(new, r.address, key=key)
        if i < len(new) and new[i].address == r.address:
            raise _Unsupported  # two resources of one address
        new.insert(i, r)
    return new, external, drop, put


def _address_of(resource: Resource) -> str:
    return resource.address


def made_anew(state: DesiredState) -> tuple[Resource, ...] | None:
    """What `compile_resources(state, previous)` made that ``previous``'s compile had not: the
    rest of its result are ``previous``'s very objects. None when it made everything (no memo
    to start from, or none kept)."""
    memo = getattr(state, "_compile_memo", None)
    return memo.made if memo is not None else None


def _with_protection_label(resource: Resource) -> Resource:
    """Data-holding resources record their deletion protection in a label, so that the planner
    still knows it once the resource is no longer declared."""
    if not resource.holds_data:
        return resource
    labels = {**resource.labels, PROTECTED_KEY: str(resource.deletion_protection).lower()}
    return replace(resource, labels=labels)


def base_labels(platform: Platform) -> dict[str, str]:
    return {**platform.labels, MANAGED_BY_KEY: MANAGED_BY_VALUE, PLATFORM_KEY: platform.environment}


def _platform_resources(platform: Platform, names: ZoneNames):
    labels = base_labels(platform)
    for zone in BUCKET_ZONES:
        settings = getattr(platform.zones, zone)
        lifecycle = settings.lifecycle if settings.lifecycle is not None else DEFAULT_LIFECYCLES[zone]
        yield Resource(
            kind=Kind.STORAGE_BUCKET,
            name=names.buckets[zone],
            spec={
                "location": platform.region.upper(),
                "storage_class": "STANDARD",
                "lifecycle_rules": lifecycle_rules(lifecycle),
                "uniform_bucket_level_access": True,
            },
            labels={**labels, "headwater-zone": zone},
            deletion_protection=settings.deletion_protection,
        )
    for zone in DATASET_ZONES:
        settings = getattr(platform.zones, zone)
        spec: dict[str, Any] = {"location": platform.region,
                                "description": f"headwater {zone} zone ({platform.environment})"}
        # Declared only: an expiration left out is not compared (whatever the dataset has stays).
        if settings.default_table_expiration is not None:
            spec["default_table_expiration_ms"] = expiration_ms(settings.default_table_expiration)
        if settings.default_partition_expiration is not None:
            spec["default_partition_expiration_ms"] = expiration_ms(settings.default_partition_expiration)
        yield Resource(
            kind=Kind.BIGQUERY_DATASET,
            name=names.datasets[zone],
            spec=spec,
            labels={**labels, "headwater-zone": zone},
            deletion_protection=settings.deletion_protection,
        )


def expiration_ms(seconds: int) -> int | None:
    """A declared expiration in BigQuery's milliseconds; ``never`` (0) is None: no expiration."""
    return seconds * 1000 if seconds else None


def lifecycle_rules(lifecycle: Lifecycle) -> list[dict[str, Any]]:
    """Tiers as Cloud Storage lifecycle rules, in the providers' canonical order (by age).

    Each SetStorageClass rule only matches objects still in a hotter class, so a tier never
    moves an object back up (COLDLINE objects are not "demoted" to NEARLINE at a later age).
    """
    rules = []
    hotter = ["STANDARD"]
    for tier in lifecycle.tiers:
        rules.append({
            "action": {"type": "SetStorageClass", "storage_class": tier.storage_class},
            "condition": {"age": tier.after_days, "matches_storage_class": sorted(hotter)},
        })
        hotter.append(tier.storage_class)
    if lifecycle.delete_after_days is not None:
        rules.append({"action": {"type": "Delete"}, "condition": {"age": lifecycle.delete_after_days}})
    return rules


def _source_resources(platform: Platform, names: ZoneNames, source: Source):
    connector = source.connector
    sid = connector.source_id
    labels = {**base_labels(platform), **connector.labels, SOURCE_KEY: sid}
    protect = connector.deletion_protection
    pubsub = platform.pubsub

    topic = topic_id(connector, platform.project)
    dlq = f"{sid}-dlq"
    # Another project's topic (pubsub_topic: projects/<other>/topics/<id>) is a reference: read to
    # check that it exists, subscribed to by its full name, never created or managed here.
    yield (Resource(Kind.PUBSUB_TOPIC, topic, external=True) if is_foreign(topic)
           else Resource(Kind.PUBSUB_TOPIC, topic, {}, labels))
    yield Resource(Kind.PUBSUB_TOPIC, dlq, {}, labels)
    yield Resource(
        Kind.PUBSUB_SUBSCRIPTION,
        f"{sid}-ingest",
        {
            "topic": topic,
            "ack_deadline_seconds": pubsub.ack_deadline_seconds,
            "message_retention_duration": pubsub.message_retention,
            "retry_policy": {
                "minimum_backoff": pubsub.retry_backoff.minimum,
                "maximum_backoff": pubsub.retry_backoff.maximum,
            },
            "dead_letter_policy": {"dead_letter_topic": dlq, "max_delivery_attempts": pubsub.max_delivery_attempts},
            "expiration_ttl": 0,
            **ingest_subscription_settings(platform, connector),
        },
        labels,
        depends_on=(address(Kind.PUBSUB_TOPIC, topic), address(Kind.PUBSUB_TOPIC, dlq)),
    )
    yield Resource(
        Kind.PUBSUB_SUBSCRIPTION,
        f"{sid}-dlq-hold",
        {
            "topic": dlq,
            "ack_deadline_seconds": pubsub.ack_deadline_seconds,
            "message_retention_duration": pubsub.dead_letter_retention,
            # Dead letters stay replayable for the retention period even after someone acks them.
            "retain_acked_messages": True,
            "expiration_ttl": 0,
        },
        labels,
        depends_on=(address(Kind.PUBSUB_TOPIC, dlq),),
    )

    if connector.ingestion.pattern == "database_cdc":  # issue 10: per-table Bronze/Silver, the stream (reconciler/cdc.py)
        from reconciler import cdc

        yield from cdc.source_resources(platform, names, source, labels)
        return
    bronze, silver, gold = names.datasets["bronze"], names.datasets["silver"], names.datasets["gold"]
    yield Resource(
        Kind.BIGQUERY_TABLE,
        f"{bronze}.{sid}_raw",
        {
            "schema": BRONZE_RAW_SCHEMA,
            "time_partitioning": {"type": "DAY", "field": None},
            "clustering_fields": None,
            "description": f"Raw records of {connector.display_name or sid}, as received",
        },
        labels,
        depends_on=(address(Kind.BIGQUERY_DATASET, bronze),),
        deletion_protection=protect,
    )
    partition = partition_field(connector, source.schema)
    silver_settings = connector.silver
    time_partitioning: dict[str, Any] = {"type": "DAY", "field": partition}
    if silver_settings.partition_expiration is not None:  # declared only (a partial settings object)
        time_partitioning["expiration_ms"] = expiration_ms(silver_settings.partition_expiration)
    silver_spec: dict[str, Any] = {
        "schema": [*canonical_schema(source.schema.fields), *INGESTION_METADATA],
        "time_partitioning": time_partitioning,
        "clustering_fields": list(silver_settings.cluster_by) or None,
        "description": connector.description or f"Validated records of {sid}",
    }
    if silver_settings.require_partition_filter is not None:
        silver_spec["require_partition_filter"] = silver_settings.require_partition_filter
    yield Resource(
        Kind.BIGQUERY_TABLE,
        f"{silver}.{sid}",
        silver_spec,
        labels,
        depends_on=(address(Kind.BIGQUERY_DATASET, silver),),
        deletion_protection=protect,
        options={"schema_evolution": connector.schema_.evolution},
    )
    for step in connector.processing.silver_to_gold:
        if step.aggregate:
            table = step.aggregate.table or f"{sid}_summary"
            yield Resource(
                Kind.BIGQUERY_TABLE,
                f"{gold}.{table}",
                _gold_spec(connector, source.schema, step.aggregate, partition),
                labels,
                depends_on=(address(Kind.BIGQUERY_DATASET, gold),),
                deletion_protection=protect,
            )
    yield from _dataflow_jobs(platform, names, source, labels)
    if connector.ingestion.pattern == "streaming_api":
        yield _connector_service(platform, names, source, labels)
    if connector.ingestion.pattern in ("batch_file", "cloud_transfer"):
        yield _file_notification(platform, names, source, labels)
    if connector.ingestion.pattern == "cloud_transfer":
        yield _transfer_job(platform, names, source, labels)


def topic_id(connector: Connector, project: str | None = None) -> str:
    """The source's ingest topic: ``<source_id>``, or the event_streaming pattern's own topic. A
    topic named in full keeps its full name when it is in another project than ``project`` (a
    reference, `is_foreign`); in this project it is its short id."""
    declared = getattr(connector.ingestion, "pubsub_topic", None)
    if not declared:
        return connector.source_id
    if project is not None and declared.startswith("projects/") and not declared.startswith(f"projects/{project}/"):
        return declared
    return declared.rsplit("/", 1)[-1]


def is_foreign(topic: str) -> bool:
    """A topic reference by full name (another project's: `topic_id` keeps only those in full)."""
    return topic.startswith("projects/")


def ingest_subscription_settings(platform: Platform, connector: Connector) -> dict[str, Any]:
    """The ingest subscription's optional settings: the source's ``subscription:`` block over
    platform.yaml's ``pubsub:`` defaults. Only declared ones are emitted (and so compared);
    ``retain_acked_messages`` always is (headwater's default: false)."""
    own, defaults = connector.subscription, platform.pubsub
    spec: dict[str, Any] = {"retain_acked_messages": own.retain_acked_messages
                            if own.retain_acked_messages is not None else defaults.retain_acked_messages}
    for key in ("enable_message_ordering", "enable_exactly_once_delivery"):
        value = getattr(own, key) if getattr(own, key) is not None else getattr(defaults, key)
        if value is not None:
            spec[key] = value
    if own.filter is not None:
        spec["filter"] = own.filter
    return spec


def partition_field(connector: Connector, schema: SourceSchema) -> str:
    """The declared partition field, else the first top-level TIMESTAMP/DATE field, else ingestion time."""
    if connector.silver.partition_field:
        return connector.silver.partition_field
    for field in schema.fields:
        if field.type in PARTITION_TYPES and field.mode != "REPEATED":
            return field.name
    return "_ingested_at"


def canonical_schema(fields: list[SchemaField]) -> list[dict[str, Any]]:
    """Schema fields in the canonical shape providers observe (type aliases resolved)."""
    result = []
    for field in fields:
        item: dict[str, Any] = {"name": field.name, "type": TYPE_ALIASES.get(field.type, field.type), "mode": field.mode}
        if field.description:
            item["description"] = field.description
        if field.fields:
            item["fields"] = canonical_schema(field.fields)
        result.append(item)
    return result


_METRIC_TYPES = {"count": "INT64", "avg": "FLOAT64"}


def _gold_spec(connector: Connector, schema: SourceSchema, aggregate, partition: str) -> dict[str, Any]:
    columns = []
    for name in aggregate.group_by:
        if name == DERIVED_DATE:
            columns.append({"name": DERIVED_DATE, "type": "DATE", "mode": "NULLABLE",
                            "description": f"Day of {partition}"})
        else:
            field = schema.find(name)
            columns.append({"name": name, "type": TYPE_ALIASES.get(field.type, field.type), "mode": "NULLABLE"})
    for metric in aggregate.metrics:
        fn, arg, alias = parse_metric(metric)
        if fn in _METRIC_TYPES:
            kind = _METRIC_TYPES[fn]
        else:
            source_type = TYPE_ALIASES.get(schema.find(arg).type, schema.find(arg).type)
            kind = "FLOAT64" if fn == "sum" and source_type == "FLOAT64" else source_type
        columns.append({"name": alias, "type": kind, "mode": "NULLABLE", "description": metric.strip()})
    others = [c for c in aggregate.group_by if c != DERIVED_DATE]
    return {
        "schema": columns,
        "time_partitioning": {"type": "DAY", "field": DERIVED_DATE} if DERIVED_DATE in aggregate.group_by else None,
        "clustering_fields": others[:4] or None,
        "description": f"Gold aggregate of {connector.source_id}",
    }


# --------------------------------------------------------------------------- Dataflow jobs

STREAMING_PATTERNS = frozenset({"event_streaming", "streaming_api", "database_cdc"})
BATCH_PATTERNS = frozenset({"batch_file", "cloud_transfer"})

# Gold aggregates are recomputed from Silver every hour, at half past: a batch source's run at
# the top of the hour has landed by then, and Gold is never more than an hour behind Silver.
GOLD_SCHEDULE = "30 * * * *"

# The template parameters besides ``source_spec`` (see each template's metadata.json in beam/):
# they say where a job reads from; everything else is in the pipeline spec.
SUBSCRIPTION_PARAMETER = "input_subscription"  # pubsub_to_bigquery: projects/<p>/subscriptions/<id>
INPUT_PARAMETER = "input_pattern"  # gcs_to_bigquery: a glob, or a gs:// prefix ending in /


def job_name(*parts: str) -> str:
    """A Dataflow job name, ``[a-z]([-a-z0-9]*[a-z0-9])?``, from source ids and table names."""
    text = "-".join(parts).lower()
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch == "-") else "-" for ch in text).strip("-")


def _dataflow_jobs(platform: Platform, names: ZoneNames, source: Source, labels: dict[str, str]):
    """The source's ingestion job and one gold job per aggregate."""
    connector = source.connector
    sid = connector.source_id
    ingestion = connector.ingestion
    project = platform.project
    silver = address(Kind.BIGQUERY_TABLE, f"{names.datasets['silver']}.{sid}")
    sinks = (address(Kind.PUBSUB_TOPIC, f"{sid}-dlq"),
             address(Kind.BIGQUERY_TABLE, f"{names.datasets['bronze']}.{sid}_raw"), silver)
    pipeline = pipeline_spec(platform, names, source)
    streaming_environment, batch_environment = job_environment(platform, True), job_environment(platform, False)

    if ingestion.pattern in STREAMING_PATTERNS:
        yield Resource(
            Kind.DATAFLOW_JOB,
            job_name(sid, "ingest"),
            {
                "template": "pubsub_to_bigquery",
                "streaming": True,
                "schedule": None,
                "parameters": {SUBSCRIPTION_PARAMETER: f"projects/{project}/subscriptions/{sid}-ingest"},
                "pipeline": pipeline,
                "environment": streaming_environment,
            },
            labels,
            depends_on=(address(Kind.PUBSUB_SUBSCRIPTION, f"{sid}-ingest"), *sinks),
        )
    elif ingestion.pattern == "batch_file":
        # File-arrival events (the storage_notification) drive a streaming job; the schedule,
        # when declared, is a sweep for files whose event was missed. Both claim each object
        # generation before reading it, so a file is ingested once whichever sees it first.
        location = landing_location(names, connector)
        file_pipeline = {**pipeline, "input": {"format": ingestion.format, "compression": ingestion.compression}}
        file_depends = (address(Kind.STORAGE_BUCKET, names.buckets["landing"]),
                        address(Kind.STORAGE_BUCKET, names.buckets["bronze"]), *sinks)
        yield Resource(
            Kind.DATAFLOW_JOB,
            job_name(sid, "ingest"),
            {
                "template": "gcs_to_bigquery",
                "streaming": True,
                "schedule": None,
                "parameters": {SUBSCRIPTION_PARAMETER: f"projects/{project}/subscriptions/{sid}-ingest",
                               INPUT_PARAMETER: location},
                "pipeline": file_pipeline,
                "environment": streaming_environment,
            },
            labels,
            depends_on=(address(Kind.PUBSUB_SUBSCRIPTION, f"{sid}-ingest"), *file_depends),
        )
        if ingestion.schedule:
            yield Resource(
                Kind.DATAFLOW_JOB,
                job_name(sid, "sweep"),
                {
                    "template": "gcs_to_bigquery",
                    "streaming": False,
                    "schedule": ingestion.schedule,
                    "parameters": {INPUT_PARAMETER: location},
                    "pipeline": file_pipeline,
                    "environment": batch_environment,
                },
                labels,
                depends_on=file_depends,
            )
    else:
        # cloud_transfer (issue 10): as batch_file, the landing prefix's file events drive a
        # streaming job; its files stay in the prefix (copied to Bronze, claims done), because the
        # transfer's next run copies what the prefix lacks. Each run's completion message, on the
        # same topic, makes the job sweep what that run copied (docs/storage-transfer.md).
        location = landing_location(names, connector)
        yield Resource(
            Kind.DATAFLOW_JOB,
            job_name(sid, "ingest"),
            {
                "template": "gcs_to_bigquery",
                "streaming": True,
                "schedule": None,
                "parameters": {SUBSCRIPTION_PARAMETER: f"projects/{project}/subscriptions/{sid}-ingest",
                               INPUT_PARAMETER: location},
                "pipeline": {**pipeline, "input": {"compression": "auto"}},
                "environment": streaming_environment,
            },
            labels,
            depends_on=(address(Kind.PUBSUB_SUBSCRIPTION, f"{sid}-ingest"),
                        address(Kind.STORAGE_BUCKET, names.buckets["landing"]),
                        address(Kind.STORAGE_BUCKET, names.buckets["bronze"]), *sinks),
        )

    # Gold jobs read Silver only: the ingestion-side settings (rules, dedup, sinks) stay out of
    # their spec, so changing a quality rule does not relaunch them.
    gold_base = {key: pipeline[key] for key in ("version", "source_id", "project", "schema", "silver")}
    joins: list[dict[str, Any]] = []
    for step in connector.processing.silver_to_gold:
        if step.join:
            on = [step.join.on] if isinstance(step.join.on, str) else list(step.join.on)
            joins.append({"table": step.join.table, "on": on, "type": "left"})
            continue
        table = step.aggregate.table or f"{sid}_summary"
        gold = {
            "table": f"{project}.{names.datasets['gold']}.{table}",
            "joins": list(joins),
            "group_by": list(step.aggregate.group_by),
            "metrics": list(step.aggregate.metrics),
            "time_field": partition_field(connector, source.schema),
        }
        yield Resource(
            Kind.DATAFLOW_JOB,
            job_name(sid, "gold", table),
            {
                "template": "bigquery_to_bigquery",
                "streaming": False,
                "schedule": GOLD_SCHEDULE,
                "parameters": {},
                "pipeline": {**gold_base, "gold": gold},
                "environment": batch_environment,
            },
            labels,
            depends_on=(silver, address(Kind.BIGQUERY_TABLE, f"{names.datasets['gold']}.{table}")),
        )


def job_environment(platform: Platform, streaming: bool) -> dict[str, Any]:
    """The settings of platform.yaml's ``dataflow:`` block a job is launched with, as declared
    (defaults are the provider's, and unset stays unset: a diff shows only what was written).

    Not ``region``: a job in another region is another job (the provider observes one region).
    Not ``scheduler_service_account`` for a streaming job, which no schedule launches.
    """
    block = platform.dataflow
    if block is None:
        return {}
    exclude = {"region"} | ({"scheduler_service_account"} if streaming else set())
    return block.model_dump(exclude_none=True, exclude=exclude)


def pipeline_spec(platform: Platform, names: ZoneNames, source: Source) -> dict[str, Any]:
    """The pipeline spec document (``beam/common/spec.py``, version 1) of a source's ingestion."""
    connector = source.connector
    sid = connector.source_id
    project = platform.project
    spec: dict[str, Any] = {
        **_document_header(platform, sid),
        "schema": {
            "validation": connector.schema_.validation,
            "version": source.schema.version,
            "fields": _pipeline_fields(source.schema.fields),
        },
    }
    dedup = next((step.deduplication for step in connector.processing.bronze_to_silver if step.deduplication), None)
    if dedup:
        spec["deduplication"] = {"key": connector.dedup_key, "window_seconds": dedup.window}
    if connector.quality_rules:
        spec["data_quality"] = [rule.model_dump(exclude_none=True) for rule in connector.quality_rules]
    spec["bronze"] = {"table": f"{project}.{names.datasets['bronze']}.{sid}_raw"}
    if connector.ingestion.pattern not in STREAMING_PATTERNS:
        # gcs_to_bigquery moves each file it has ingested out of the landing prefix, into the
        # Bronze bucket (source=<id>/date=<day>/...), so the next scheduled run does not re-read it.
        spec["bronze"]["bucket"] = f"gs://{names.buckets['bronze']}"
        if connector.ingestion.pattern == "cloud_transfer":
            # The landing copies are the transfer's record of what it copied: archive a copy, keep them.
            spec["bronze"]["keep_landing"] = True
    spec["silver"] = {"table": f"{project}.{names.datasets['silver']}.{sid}"}
    spec["dead_letter"] = {"topic": f"projects/{project}/topics/{sid}-dlq"}
    # What the pipeline means, in one canonical order (fields by name): reordering a schema file's
    # fields changes nothing the job does, so it must not change its spec or fingerprint.
    return semantic.canonical_pipeline(spec)


def _document_header(platform: Platform, source_id: str) -> dict[str, Any]:
    """What every runtime spec document (pipeline or connector, version 1) starts with."""
    return {"version": 1, "source_id": source_id, "project": platform.project}


def _pipeline_fields(fields: list[SchemaField]) -> list[dict[str, Any]]:
    # Descriptions are left out: editing one must not relaunch a job.
    result = []
    for field in fields:
        item: dict[str, Any] = {"name": field.name, "type": TYPE_ALIASES.get(field.type, field.type), "mode": field.mode}
        if field.fields:
            item["fields"] = _pipeline_fields(field.fields)
        result.append(item)
    return result


# --------------------------------------------------------------------------- file arrival


def landing_location(names: ZoneNames, connector: Connector) -> str:
    """A batch_file source's landing prefix (or glob), a cloud_transfer source's destination:
    declared, else ``gs://<landing>/<source_id>/``."""
    ingestion = connector.ingestion
    declared = getattr(ingestion, "location", None) or getattr(ingestion, "destination", None)
    return declared or f"gs://{names.buckets['landing']}/{connector.source_id}/"


def notification_prefix(location: str) -> tuple[str, str]:
    """``gs://bucket/a/b*.json`` → ``("bucket", "a/b")``: the bucket and the object name prefix
    before the first wildcard (a notification filters by prefix only; the job filters the rest)."""
    bucket, _, path = location.removeprefix("gs://").partition("/")
    cut = min((i for i, ch in enumerate(path) if ch in "*?["), default=len(path))
    return bucket, path[:cut]


def _file_notification(platform: Platform, names: ZoneNames, source: Source, labels: dict[str, str]) -> Resource:
    connector = source.connector
    bucket, prefix = notification_prefix(landing_location(names, connector))
    topic = topic_id(connector)
    return Resource(
        Kind.STORAGE_NOTIFICATION,
        f"{bucket}/{prefix}",
        {
            "bucket": bucket,
            "topic": topic,
            "object_name_prefix": prefix,
            "event_types": ["OBJECT_FINALIZE"],
            "payload_format": "JSON_API_V1",
            "publisher_grant": True,
        },
        {key: value for key, value in labels.items()},
        depends_on=(address(Kind.STORAGE_BUCKET, bucket), address(Kind.PUBSUB_TOPIC, topic)),
    )


# --------------------------------------------------------------------------- cloud transfers (issue 10)


def landing_delete_after_days(platform: Platform) -> int | None:
    """The landing zone's ``lifecycle.delete_after_days`` (none by default)."""
    lifecycle = platform.zones.landing.lifecycle
    return lifecycle.delete_after_days if lifecycle is not None else None


def transfer_job_name(source_id: str) -> str:
    """The ``storage_transfer_job`` resource of a cloud_transfer source: ``<id>-transfer``."""
    return job_name(source_id, "transfer")


def _transfer_job(platform: Platform, names: ZoneNames, source: Source, labels: dict[str, str]) -> Resource:
    """A cloud_transfer source's Storage Transfer job (docs/storage-transfer.md): the source
    copied into the landing prefix on the schedule, each run's completion announced on the
    source's topic, the service agent's roles on both granted in the same apply."""
    from reconciler.transfer import canonical_schedule

    connector = source.connector
    ingestion = connector.ingestion
    bucket, prefix = notification_prefix(landing_location(names, connector))
    topic = topic_id(connector)
    return Resource(
        Kind.STORAGE_TRANSFER_JOB,
        transfer_job_name(connector.source_id),
        {
            "source": {
                "type": ingestion.source_type,
                "bucket": ingestion.source_bucket,
                "path": ingestion.source_path,
                "storage_account": ingestion.storage_account,
                "role_arn": ingestion.role_arn,
                "credentials_secret": ingestion.credentials_secret,
            },
            "sink": {"bucket": bucket, "path": prefix},
            "schedule": canonical_schedule(ingestion.schedule),
            "overwrite_when": ingestion.overwrite_when.upper(),
            "delete_from_source": ingestion.delete_from_source,
            "delete_unique_in_sink": ingestion.delete_unique_in_sink,
            # A landing bucket that deletes objects after N days would otherwise see each deleted
            # copy copied - and ingested - again: copy only what was modified within those N days
            # (a copy is deleted N days after it was made, so its source is older than that by then).
            "max_age_seconds": landing_delete_after_days(platform) and landing_delete_after_days(platform) * 86400,
            "notification_topic": topic,
            "enabled": True,
            "service_agent_grants": True,
        },
        labels,
        depends_on=(address(Kind.STORAGE_BUCKET, bucket), address(Kind.PUBSUB_TOPIC, topic),
                    address(Kind.STORAGE_NOTIFICATION, f"{bucket}/{prefix}"),
                    address(Kind.DATAFLOW_JOB, job_name(connector.source_id, "ingest"))),
    )


# --------------------------------------------------------------------------- connectors

CONNECTOR_COMMAND = ["python", "-m", "connector"]
CONNECTOR_SECRET_ENV = "HEADWATER_CONNECTOR_SECRET"
WEBHOOK_SECRET_ENV = "HEADWATER_WEBHOOK_SECRET"
DEFAULT_TIMESTAMP_TOLERANCE_S = 300  # Stripe's default tolerance for its t=... signatures


def connector_image(platform: Platform) -> str:
    """The connector runtime image: declared, else the platform's Artifact Registry at this version."""
    from importlib.metadata import PackageNotFoundError, version

    if platform.connectors.image:
        return platform.connectors.image
    try:
        tag = version("headwater")
    except PackageNotFoundError:  # running from a source tree that was never installed
        tag = "latest"
    return f"{platform.region}-docker.pkg.dev/{platform.project}/headwater/connector:{tag}"


def connector_service_name(source_id: str) -> str:
    """The Cloud Run service id of a source's connector (``[a-z][-a-z0-9]*``, at most 49 characters)."""
    return job_name(source_id, "connector")


def connector_spec(platform: Platform, names: ZoneNames, source: Source) -> dict[str, Any]:
    """The connector runtime spec document (docs/connector-contract.md, version 1) of a
    streaming_api source. It names secrets by the environment variable they arrive in, never by value."""
    connector = source.connector
    ingestion = connector.ingestion
    sid = connector.source_id
    project = platform.project
    spec: dict[str, Any] = {
        **_document_header(platform, sid),
        "connector_type": ingestion.connector_type,
        "topic": f"projects/{project}/topics/{topic_id(connector)}",
        "dead_letter_topic": f"projects/{project}/topics/{sid}-dlq",
    }
    if ingestion.connector_type == "rest_api":
        auth: dict[str, Any] = {"type": ingestion.auth_type}
        if ingestion.auth_type == "api_key":
            where = ingestion.api_key
            auth.update({"query": where.query} if where and where.query else
                        {"header": (where.header if where and where.header else "X-API-Key")})
        if ingestion.auth_type == "oauth2":
            auth.update({"token_url": ingestion.oauth2.token_url, "scopes": list(ingestion.oauth2.scopes)})
        pagination = ingestion.pagination.model_dump(exclude_none=True)
        if pagination["type"] == "page":
            pagination.setdefault("start", 1)
        spec["checkpoint"] = f"gs://{names.buckets['landing']}/_connectors/{sid}/state.json"
        spec["rest_api"] = {
            "endpoint": ingestion.api_endpoint,
            "params": dict(ingestion.params),
            "auth": auth,
            "records": ingestion.records,
            "pagination": pagination,
            "cursor_field": ingestion.cursor_field,
            "cursor_param": ingestion.cursor_param,
            "poll_interval_seconds": ingestion.poll_interval,
            "request_timeout_seconds": ingestion.request_timeout,
            "max_requests_per_minute": ingestion.max_requests_per_minute,
        }
    else:
        signature = None
        if ingestion.signature != "none":
            declared = ingestion.signature
            signature = {"header": declared.header, "algorithm": declared.algorithm, "scheme": declared.scheme}
            if declared.scheme == "timestamped":
                signature["timestamp_tolerance_seconds"] = (
                    declared.timestamp_tolerance or DEFAULT_TIMESTAMP_TOLERANCE_S)
        spec["webhook"] = {
            "path": ingestion.webhook_path,
            "signature": signature,
            "max_body_bytes": ingestion.max_body_bytes,
            "delivery_id_header": ingestion.delivery_id_header,
            "records": None,
        }
    return spec


def _connector_service(platform: Platform, names: ZoneNames, source: Source, labels: dict[str, str]) -> Resource:
    """The Cloud Run service running a streaming_api source's connector.

    A poller keeps exactly one instance with CPU always allocated (min = max = 1): it works
    between requests, its cursor is a single checkpoint, and a poll interval can be as short as
    10 s, which a Cloud Scheduler tick (one a minute at best) could not honour. A webhook
    receiver scales with its traffic from zero and is public: the signature authenticates.
    """
    connector = source.connector
    ingestion = connector.ingestion
    sid = connector.source_id
    secrets: dict[str, str] = {}
    if ingestion.connector_type == "rest_api" and ingestion.secret_name:
        secrets[CONNECTOR_SECRET_ENV] = ingestion.secret_name
    polling = ingestion.connector_type == "rest_api"
    if not polling and ingestion.signature != "none":
        secrets[WEBHOOK_SECRET_ENV] = ingestion.signature.secret_name
    topic = topic_id(connector)
    depends = [address(Kind.PUBSUB_TOPIC, topic), address(Kind.PUBSUB_TOPIC, f"{sid}-dlq")]
    if polling:
        depends.append(address(Kind.STORAGE_BUCKET, names.buckets["landing"]))  # the checkpoint
    return Resource(
        Kind.CLOUD_RUN_SERVICE,
        connector_service_name(sid),
        {
            "image": connector_image(platform),
            "command": list(CONNECTOR_COMMAND),
            "connector": connector_spec(platform, names, source),
            "secrets": secrets,
            "service_account": platform.connectors.service_account,
            "min_instances": 1 if polling else 0,
            "max_instances": 1 if polling else ingestion.max_instances,
            "ingress": "internal" if polling else "all",
            "cpu_always_allocated": polling,
            "public": not polling,
        },
        labels,
        depends_on=tuple(depends),
    )
