"""GCP's limits, and what a format or a query cannot carry, checked at validate on what compile
builds - not on what the files say - so that nothing valid here is refused later, inside apply.

`compiled_problems(state)` compiles the validated desired state and checks every resource as
it will reach GCP, provider additions included:

* labels: at most 64 per resource, *including* headwater's own (``managed-by``,
  ``headwater-platform``, ``headwater-source``, ``headwater-zone``, ``headwater-deletion-protection``)
  and, on a Dataflow job, the template and fingerprint labels its launch adds; keys and values
  at most 63 characters of the allowed alphabet;
* a batch job's Cloud Scheduler description (it holds those labels as JSON: Cloud Scheduler jobs
  have no labels) at most 500 characters;
* names: Pub/Sub ids, bucket, dataset and table ids, Dataflow job names, Cloud Scheduler job ids,
  Cloud Run service names, each with its service's rule;
* descriptions: a BigQuery table's at most 16,384 characters, a column's at most 1,024;
* formats: a CSV file cannot carry a RECORD or REPEATED field (each row would be a dead letter);
* queries: a gold aggregate's hourly query reads all of Silver, so the source's Silver table
  cannot require a partition filter (nor can a table another source's gold step joins).

Each problem names the file, line and setting that pushes the resource over - the platform's
``labels:``, a source's ``labels:`` or ``description:``, a schema field's ``description`` - and
says by how much. One problem per setting, not per resource (the first resource over is named).

The Dataflow label and description rules mirror `providers.dataflow.job_labels` and
`providers.scheduler` (imported there, not here: validation needs no client library); a test
keeps them equal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from reconciler import naming
from reconciler.compile import compile_resources
from reconciler.load import DesiredState, Problem, Source
from reconciler.resources import PLATFORM_KEY, SOURCE_KEY, Kind, Resource, digest

MAX_LABELS = 64
SCHEDULER_DESCRIPTION_MAX = 500  # providers.scheduler.DESCRIPTION_LIMIT
SCHEDULER_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")  # providers.scheduler.JOB_ID_PATTERN
DATAFLOW_JOB_NAME = re.compile(r"[a-z]([-a-z0-9]{0,1022}[a-z0-9])?")
CLOUD_RUN_NAME = re.compile(r"[a-z]([-a-z0-9]{0,47}[a-z0-9])?")
TABLE_DESCRIPTION_MAX = 16_384
COLUMN_DESCRIPTION_MAX = 1_024

# What a Dataflow launch adds to a job's labels (providers.dataflow.TEMPLATE_LABEL, DIGEST_LABELS).
DATAFLOW_TEMPLATE_LABEL = "headwater-template"
DATAFLOW_DIGEST_LABELS = {"schedule": "headwater-schedule", "parameters": "headwater-parameters",
                          "pipeline": "headwater-pipeline", "environment": "headwater-environment"}


def dataflow_labels(job: Resource) -> dict[str, str]:
    """The labels a launch of ``job`` carries (`providers.dataflow.job_labels`)."""
    labels = dict(job.labels)
    labels[DATAFLOW_TEMPLATE_LABEL] = job.spec["template"]
    for key, label in DATAFLOW_DIGEST_LABELS.items():
        labels[label] = digest(job.spec.get(key))
    return labels


def scheduler_description(job: Resource) -> str:
    """A batch job's Cloud Scheduler description (`providers.dataflow.job_description`)."""
    return json.dumps(dataflow_labels(job), sort_keys=True, separators=(",", ":"))


def scheduler_job_id(job: Resource) -> str:
    """``headwater-<environment>-<job>`` (`providers.dataflow.scheduler_job_id`)."""
    return f"headwater-{job.labels.get(PLATFORM_KEY, '')}-{job.name}"


def compiled_problems(state: DesiredState, resources: Sequence[Resource] | None = None,
                      sources: Sequence[Source] | None = None, joins: Joins | None = None,
                      by_id: Mapping[str, Source] | None = None) -> list[Problem]:
    """Every limit the compiled resources of ``state`` exceed (module docstring). ``resources``:
    ``state`` already compiled, if it has been (or the part of it to check: `load_repo` passes
    only what compile made anew). ``sources``: those whose own settings to check (default: all
    of ``state``'s); the others' were checked by an earlier load under the same platform
    (`load_repo`'s ``previous``), and of them only what a checked source's gold join makes of
    them is checked again. ``joins`` (`joins_of` the state's sources) and ``by_id`` (each
    source by id): the caller's, when it keeps them up to date; else made here, a pass over
    every source."""
    problems: list[Problem] = []
    resources = compile_resources(state) if resources is None else resources
    by_source = by_id if by_id is not None else {s.source_id: s for s in state.sources}
    joins = joins if joins is not None else joins_of(state.sources)
    seen: set[tuple[str, str]] = set()

    def add(problem: Problem) -> None:
        if (problem.file, problem.field) not in seen:  # one per setting
            seen.add((problem.file, problem.field))
            problems.append(problem)

    for resource in resources:
        if resource.external:
            continue
        source = by_source.get(resource.labels.get(SOURCE_KEY, ""))
        for problem in _label_problems(state, source, resource):
            add(problem)
        for problem in _name_problems(state, source, resource):
            add(problem)
    checked = state.sources if sources is None else sources
    for source in checked:
        for problem in _source_problems(state, source, joins):
            add(problem)
    if sources is not None:
        # An unchecked source's own settings passed, but a checked one may join its Silver table
        # now, which requires a partition filter.
        ids = {id(source) for source in sources}
        silver = _silver_dataset(state) + "."
        for other in sources:
            for table, index in _joined(other):
                joined = by_source.get(table[len(silver):]) if table.startswith(silver) else None
                if joined is not None and id(joined) not in ids and joined.connector.silver.require_partition_filter:
                    add(_join_problem(state, joined, other, index))
    return problems


# --------------------------------------------------------------------------- labels


def _carried_labels(resource: Resource) -> tuple[dict[str, str], str]:
    """The labels ``resource`` carries on GCP, and what carries them."""
    if resource.kind == Kind.DATAFLOW_JOB:
        return dataflow_labels(resource), "its launch's labels (headwater's template and fingerprint labels included)"
    return dict(resource.labels), "its labels"


def _label_problems(state: DesiredState, source: Source | None, resource: Resource) -> Iterator[Problem]:
    labels, carried = _carried_labels(resource)
    declared_platform = state.platform.labels
    declared_source = source.connector.labels if source else {}
    own = len(set(labels) - set(declared_platform) - set(declared_source))
    # The source's labels push a resource over when it fits without them; else platform.yaml's do.
    # (Made only when a limit is exceeded: this runs for every compiled resource of every load.)
    def trimmed() -> Resource:
        return replace(resource, labels={k: v for k, v in resource.labels.items()
                                         if k not in declared_source or k in declared_platform})

    if len(labels) > MAX_LABELS:
        by_source = bool(declared_source) and len(_carried_labels(trimmed())[0]) <= MAX_LABELS
        yield _at(state, source if by_source else None, ("labels",),
                  f"{resource.address} would carry {len(labels)} labels ({len(declared_platform)} from platform.yaml"
                  + (f", {len(declared_source)} from this source" if declared_source else "")
                  + f", {own} of headwater's own) as {carried}; GCP allows {MAX_LABELS}: remove "
                  f"{len(labels) - MAX_LABELS}")
    for key, value in labels.items():
        problem = naming.label_key_problem(key) or naming.label_value_problem(str(value))
        if problem:
            if key in declared_source:
                where, loc = source, ("labels", key)
            elif key in declared_platform:
                where, loc = None, ("labels", key)
            else:  # a label headwater derives: from the source id or the environment
                where, loc = (source, ("source_id",)) if key == SOURCE_KEY else (None, _origin_of(key))
            yield _at(state, where, loc, f"{resource.address}: label {key}={value!r}: {problem}")
    if resource.kind == Kind.DATAFLOW_JOB and not resource.spec.get("streaming"):
        text = scheduler_description(resource)
        if len(text) > SCHEDULER_DESCRIPTION_MAX:
            by_source = bool(declared_source) and len(scheduler_description(trimmed())) <= SCHEDULER_DESCRIPTION_MAX
            yield _at(state, source if by_source else None, ("labels",),
                      f"{resource.address}: a batch job on Dataflow is a Cloud Scheduler job whose description "
                      f"holds its labels as JSON (Cloud Scheduler jobs have no labels): it would be {len(text)} "
                      f"characters, over Cloud Scheduler's {SCHEDULER_DESCRIPTION_MAX}; shorten or drop "
                      f"{'this source' if by_source else 'platform.yaml'}'s labels")


def _origin_of(key: str) -> tuple[str, ...]:
    """Where a label headwater derives comes from."""
    return {PLATFORM_KEY: ("environment",), SOURCE_KEY: ("source_id",)}.get(key, ("labels",))


# --------------------------------------------------------------------------- names


def _name_problems(state: DesiredState, source: Source | None, resource: Resource) -> Iterator[Problem]:
    kind, name = resource.kind, resource.name
    problem = None
    if kind in (Kind.PUBSUB_TOPIC, Kind.PUBSUB_SUBSCRIPTION):
        problem = naming.pubsub_id_problem(name)
    elif kind == Kind.STORAGE_BUCKET:
        problem = naming.bucket_problem(name)
    elif kind == Kind.BIGQUERY_DATASET:
        problem = naming.dataset_problem(name)
    elif kind == Kind.BIGQUERY_TABLE:
        dataset, _, table = name.partition(".")
        problem = naming.dataset_problem(dataset) or naming.table_problem(table)
    elif kind == Kind.DATAFLOW_JOB:
        if not DATAFLOW_JOB_NAME.fullmatch(name):
            problem = (f"the Dataflow job name {name!r} is not valid: [a-z] then letters, digits and '-', "
                       "at most 1024 characters")
        elif not resource.spec.get("streaming") and not SCHEDULER_JOB_ID.fullmatch(scheduler_job_id(resource)):
            job_id = scheduler_job_id(resource)
            problem = (f"its Cloud Scheduler job id {job_id!r} would be {len(job_id)} characters; Cloud Scheduler "
                       "allows 500 letters, digits, '-' and '_'")
    elif kind == Kind.CLOUD_RUN_SERVICE and not CLOUD_RUN_NAME.fullmatch(name):
        problem = f"the Cloud Run service name {name!r} is not valid: [a-z] then letters, digits and '-', at most 49"
    if problem:
        yield _at(state, source, ("source_id",) if source else ("project",), f"{resource.address}: {problem}")
    description = resource.spec.get("description")
    if kind == Kind.BIGQUERY_TABLE and isinstance(description, str) and len(description) > TABLE_DESCRIPTION_MAX:
        yield _at(state, source, ("description",),
                  f"{resource.address}: its description would be {len(description):,} characters; BigQuery allows "
                  f"{TABLE_DESCRIPTION_MAX:,}")


# --------------------------------------------------------------------------- formats and queries


def _source_problems(state: DesiredState, source: Source, joins: Joins) -> Iterator[Problem]:
    connector = source.connector
    ingestion = connector.ingestion
    smap = source.schema_map
    if source.schema is None:  # database_cdc: its tables' schemas are checked by reconciler.cdc (issue 10)
        return
    for path, field in _walk(source.schema.fields):
        if field.description and len(field.description) > COLUMN_DESCRIPTION_MAX and smap is not None:
            loc = (*path, "description")
            line, column = smap.find(loc)
            yield Problem(source.schema_file, line, column, _dotted(loc),
                          f"column {field.name!r}: its description is {len(field.description):,} characters; "
                          f"BigQuery allows {COLUMN_DESCRIPTION_MAX:,}")
    if getattr(ingestion, "pattern", None) == "batch_file" and ingestion.format == "csv":
        nested = [(".".join(_names(source.schema.fields, path)), field) for path, field in _walk(source.schema.fields)
                  if field.type in ("RECORD", "STRUCT") or field.mode == "REPEATED"]
        if nested:
            shown = ", ".join(f"{name} ({field.type}, {field.mode})" for name, field in nested)
            yield _at(state, source, ("ingestion", "format"),
                      f"a CSV file cannot carry RECORD or REPEATED fields (a cell is one text value), and "
                      f"{source.schema_file} has {shown}: every row with a value there would be a dead letter; "
                      "use format: json (or parquet, avro), or flatten those fields")
    if connector.silver.require_partition_filter:
        aggregates = [s for s in connector.processing.silver_to_gold if s.aggregate]
        if aggregates:
            yield _at(state, source, ("silver", "require_partition_filter"),
                      f"the gold aggregate{'s' if len(aggregates) > 1 else ''} of this source rebuild from all of "
                      f"Silver every hour, a query with no partition filter, which BigQuery refuses on a table that "
                      "requires one: drop require_partition_filter or the aggregates")
        yield from _join_problems(state, source, joins)


def _join_problems(state: DesiredState, source: Source, joins: Joins) -> Iterator[Problem]:
    """The other sources' gold joins of ``source``'s Silver table, which requires a partition
    filter. ``joins``: `joins_of` the state's sources (one pass over them, not one per source)."""
    silver = f"{_silver_dataset(state)}.{source.connector.source_id}"
    for other, index in joins.get(silver, ()):
        if other is not source:
            yield _join_problem(state, source, other, index)


def _join_problem(state: DesiredState, source: Source, other: Source, index: int) -> Problem:
    """``other``'s gold step ``index`` joins ``source``'s Silver table, which requires a partition filter."""
    silver = f"{_silver_dataset(state)}.{source.connector.source_id}"
    return _at(state, other, ("processing", "silver_to_gold", index, "join", "table"),
               f"joins {silver}, which requires a partition filter ({source.connector_file}: "
               "silver.require_partition_filter); the gold query reads it whole, so BigQuery would "
               "refuse it")


# Every gold step's join, by the table it joins: ``{table: [(source, step index), ...]}``.
Joins = dict[str, list[tuple[Source, int]]]


def _joined(source: Source) -> Iterator[tuple[str, int]]:
    """(table, step index) of each gold join of ``source``."""
    for index, step in enumerate(source.connector.processing.silver_to_gold):
        if step.join:
            yield step.join.table, index


def joins_of(sources: Sequence[Source]) -> Joins:
    """Every gold step's join, by the table it joins, in the sources' order."""
    joins: Joins = {}
    for source in sources:
        for table, index in _joined(source):
            joins.setdefault(table, []).append((source, index))
    return joins


def joins_updated(joins: Joins, removed: Sequence[Source], added: Sequence[Source]) -> Joins:
    """``joins`` without the joins of ``removed`` and with those of ``added`` (a new mapping;
    ``joins`` and its lists are left as they are). The order within a table's list may differ
    from `joins_of`'s: it only orders problems, which are sorted."""
    joins = dict(joins)
    gone = {id(source) for source in removed}
    for source in removed:
        for table, _index in _joined(source):
            if table in joins:
                kept = [entry for entry in joins[table] if id(entry[0]) not in gone]
                if kept:
                    joins[table] = kept
                else:
                    del joins[table]
    for source in added:
        for table, index in _joined(source):
            joins[table] = [*joins.get(table, ()), (source, index)]
    return joins


def _silver_dataset(state: DesiredState) -> str:
    from reconciler.compile import zone_names

    return zone_names(state.platform).datasets["silver"]


def _walk(fields: list[Any], prefix: tuple = ("fields",)) -> Iterator[tuple[tuple, Any]]:
    for index, field in enumerate(fields):
        path = (*prefix, index)
        yield path, field
        if field.fields:
            yield from _walk(field.fields, (*path, "fields"))


def _names(fields: list[Any], path: tuple) -> list[str]:
    names, current = [], fields
    for part in path[1::2]:  # ("fields", i, "fields", j, ...): the indexes
        field = current[part]
        names.append(field.name)
        current = field.fields or []
    return names


# --------------------------------------------------------------------------- where


def _at(state: DesiredState, source: Source | None, loc: tuple, message: str) -> Problem:
    """A problem at ``loc`` of the source's connector file, or of platform.yaml."""
    if source is not None and source.connector_map is not None:
        line, column = source.connector_map.find(loc)
        return Problem(source.connector_file, line, column, _dotted(loc), message)
    smap = state.platform_map
    line, column = smap.find(loc) if smap is not None else (1, 1)
    return Problem("platform.yaml", line, column, _dotted(loc), message)


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text

