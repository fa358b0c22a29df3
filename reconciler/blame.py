"""Drift that names its commit: which line of the desired state set the value a resource departs
from, and who committed it (``git blame``).

A drifted field is a path in a resource's spec (``ack_deadline_seconds``,
``retry_policy.minimum_backoff``, ``schema.customer.email``, ``labels.team``). `ORIGINS` says
which setting of the desired state each one is compiled from - a key of ``platform.yaml``, of
the source's ``connectors/<id>.yaml``, or a column of its schema file - in the order compile
consults them (a source's own setting before the platform's default). The first of them that
the file declares is *the* line: the loader's position of that key (`reconciler.yamlsrc`,
the same positions validation errors carry), extended over the lines of its value (a list
written as a block), and ``git blame`` of those lines names the newest commit that touched
them: sha, author, email, date, subject. When none of them is declared the value is
headwater's default (or derived from other settings) and the entry says so (``default:
true``), naming the setting that would override it.

The CLI blames the files as they are in the work tree (uncommitted lines say "not committed
yet"); the daemon blames the revision it serves. Blame is computed only for drifted fields,
and cached per (revision, file, lines).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.resources import SOURCE_KEY, Kind, Resource

PLATFORM, CONNECTOR, SCHEMA = "platform", "connector", "schema"
GIT_TIMEOUT_S = 10.0
NOT_COMMITTED = "0" * 40

Candidate = tuple[str, tuple[Any, ...]]  # (PLATFORM | CONNECTOR | SCHEMA, loc); "{zone}" is filled in

# (kind, role, spec path prefix) -> the settings the value is compiled from, first declared wins.
# Roles: "ingest" / "hold" subscriptions, "silver" / "bronze" / "gold" tables, "" for any.
ORIGINS: dict[tuple[Kind, str, str], tuple[Candidate, ...]] = {
    (Kind.STORAGE_BUCKET, "", "location"): ((PLATFORM, ("region",)),),
    (Kind.STORAGE_BUCKET, "", "lifecycle_rules"): ((PLATFORM, ("zones", "{zone}", "lifecycle")),),
    (Kind.BIGQUERY_DATASET, "", "location"): ((PLATFORM, ("region",)),),
    (Kind.BIGQUERY_DATASET, "", "description"): ((PLATFORM, ("environment",)),),
    (Kind.BIGQUERY_DATASET, "", "default_table_expiration_ms"):
        ((PLATFORM, ("zones", "{zone}", "default_table_expiration")),),
    (Kind.BIGQUERY_DATASET, "", "default_partition_expiration_ms"):
        ((PLATFORM, ("zones", "{zone}", "default_partition_expiration")),),
    (Kind.PUBSUB_SUBSCRIPTION, "", "ack_deadline_seconds"): ((PLATFORM, ("pubsub", "ack_deadline_seconds")),),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "topic"): ((CONNECTOR, ("ingestion", "pubsub_topic")),),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "message_retention_duration"): ((PLATFORM, ("pubsub", "message_retention")),),
    (Kind.PUBSUB_SUBSCRIPTION, "hold", "message_retention_duration"):
        ((PLATFORM, ("pubsub", "dead_letter_retention")),),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "retry_policy.minimum_backoff"):
        ((PLATFORM, ("pubsub", "retry_backoff", "minimum")), (PLATFORM, ("pubsub", "retry_backoff"))),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "retry_policy.maximum_backoff"):
        ((PLATFORM, ("pubsub", "retry_backoff", "maximum")), (PLATFORM, ("pubsub", "retry_backoff"))),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "retry_policy"): ((PLATFORM, ("pubsub", "retry_backoff")),),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "dead_letter_policy.max_delivery_attempts"):
        ((PLATFORM, ("pubsub", "max_delivery_attempts")),),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "dead_letter_policy"): ((PLATFORM, ("pubsub", "max_delivery_attempts")),),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "retain_acked_messages"):
        ((CONNECTOR, ("subscription", "retain_acked_messages")), (PLATFORM, ("pubsub", "retain_acked_messages"))),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "enable_message_ordering"):
        ((CONNECTOR, ("subscription", "enable_message_ordering")), (PLATFORM, ("pubsub", "enable_message_ordering"))),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "enable_exactly_once_delivery"):
        ((CONNECTOR, ("subscription", "enable_exactly_once_delivery")),
         (PLATFORM, ("pubsub", "enable_exactly_once_delivery"))),
    (Kind.PUBSUB_SUBSCRIPTION, "ingest", "filter"): ((CONNECTOR, ("subscription", "filter")),),
    (Kind.BIGQUERY_TABLE, "silver", "time_partitioning.field"): ((CONNECTOR, ("silver", "partition_field")),),
    (Kind.BIGQUERY_TABLE, "silver", "time_partitioning.expiration_ms"):
        ((CONNECTOR, ("silver", "partition_expiration")),),
    (Kind.BIGQUERY_TABLE, "silver", "clustering_fields"): ((CONNECTOR, ("silver", "cluster_by")),),
    (Kind.BIGQUERY_TABLE, "silver", "require_partition_filter"): ((CONNECTOR, ("silver", "require_partition_filter")),),
    (Kind.BIGQUERY_TABLE, "silver", "description"): ((CONNECTOR, ("description",)),),
    (Kind.BIGQUERY_TABLE, "silver", "schema"): ((SCHEMA, ("fields",)),),
    (Kind.BIGQUERY_TABLE, "bronze", "description"): ((CONNECTOR, ("display_name",)),),
    (Kind.BIGQUERY_TABLE, "gold", "schema"): ((CONNECTOR, ("processing", "silver_to_gold")),),
    (Kind.BIGQUERY_TABLE, "gold", "clustering_fields"): ((CONNECTOR, ("processing", "silver_to_gold")),),
    (Kind.BIGQUERY_TABLE, "gold", "time_partitioning"): ((CONNECTOR, ("processing", "silver_to_gold")),),
    (Kind.DATAFLOW_JOB, "", "schedule"): ((CONNECTOR, ("ingestion", "schedule")),),
    (Kind.DATAFLOW_JOB, "", "parameters"): ((CONNECTOR, ("ingestion", "location")), (CONNECTOR, ("ingestion",))),
    (Kind.DATAFLOW_JOB, "", "pipeline"): ((CONNECTOR, ("processing",)), (CONNECTOR, ("ingestion",))),
    (Kind.DATAFLOW_JOB, "", "environment"): ((PLATFORM, ("dataflow",)),),
    (Kind.DATAFLOW_JOB, "", "template"): ((CONNECTOR, ("ingestion", "pattern")),),
    (Kind.DATAFLOW_JOB, "", "streaming"): ((CONNECTOR, ("ingestion", "pattern")),),
    (Kind.CLOUD_RUN_SERVICE, "", "image"): ((PLATFORM, ("connectors", "image")),),
    (Kind.CLOUD_RUN_SERVICE, "", "service_account"): ((PLATFORM, ("connectors", "service_account")),),
    (Kind.CLOUD_RUN_SERVICE, "", "max_instances"): ((CONNECTOR, ("ingestion", "max_instances")),),
    (Kind.CLOUD_RUN_SERVICE, "", "secrets"):
        ((CONNECTOR, ("ingestion", "secret_name")), (CONNECTOR, ("ingestion", "signature", "secret_name"))),
    (Kind.CLOUD_RUN_SERVICE, "", "connector"): ((CONNECTOR, ("ingestion",)),),
    (Kind.STORAGE_NOTIFICATION, "", ""): ((CONNECTOR, ("ingestion", "location")), (CONNECTOR, ("ingestion",))),
    (Kind.STORAGE_TRANSFER_JOB, "", ""): ((CONNECTOR, ("ingestion",)),),
}


@dataclass(frozen=True)
class Origin:
    """Where a desired value comes from, and who set it."""

    field: str  # the setting: "pubsub.ack_deadline_seconds" (of ``file``); "" for headwater's own value
    file: str | None = None  # relative to the desired-state root; None: a default
    line: int | None = None
    default: bool = False
    commit: str | None = None
    author: str | None = None
    email: str | None = None
    date: str | None = None  # ISO 8601, the author date
    summary: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for people: ``set by 1a2b3c4d5e6f (Alice, 2026-11-29) at platform.yaml:14 pubsub.x``."""
        if self.default and self.field:
            return f"headwater's default: no line sets it ({self.field} would)"
        if self.default:
            return "headwater's own value: no setting of the desired state changes it"
        where = f"{self.file}:{self.line} {self.field}" if self.file else self.field
        if self.commit is None:
            return f"at {where} (no git history)"
        if self.commit == NOT_COMMITTED:
            return f"at {where} (not committed yet)"
        day = (self.date or "")[:10]
        return f"set by {self.commit[:12]} ({self.author}, {day}: {self.summary}) at {where}"


def role_of(resource: Resource) -> str:
    source = resource.labels.get(SOURCE_KEY)
    if resource.kind == Kind.PUBSUB_SUBSCRIPTION:
        return "hold" if resource.name.endswith("-dlq-hold") else "ingest" if resource.name.endswith("-ingest") else ""
    if resource.kind == Kind.BIGQUERY_TABLE and source and "." in resource.name:
        table = resource.name.split(".", 1)[1]
        columns = {f.get("name") for f in resource.spec.get("schema") or () if isinstance(f, dict)}
        if table == f"{source}_raw":
            return "bronze"
        if table == source and "_ingested_at" in columns:
            return "silver"
        return "gold"
    return ""


def candidates(resource: Resource, path: str) -> tuple[str, tuple[Candidate, ...]]:
    """``(field, candidates)`` for a drifted ``path`` of ``resource``: the longest matching ORIGINS
    entry (labels: the source's labels, then the platform's)."""
    if path.startswith("labels."):
        key = path.split(".", 1)[1]
        return path, ((CONNECTOR, ("labels", key)), (PLATFORM, ("labels", key)))
    role = role_of(resource)
    best: tuple[str, tuple[Candidate, ...]] | None = None
    for (kind, entry_role, prefix), found in ORIGINS.items():
        if kind != resource.kind or entry_role not in ("", role):
            continue
        if prefix == "" or path == prefix or path.startswith((prefix + ".", prefix + "[")):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, found)
    zone = resource.labels.get("headwater-zone", "")
    resolved = tuple((scope, tuple(zone if part == "{zone}" else part for part in loc))
                     for scope, loc in (best[1] if best else ()))
    return path, resolved


def origin(state: Any, resource: Resource, path: str, revision: str | None = None) -> Origin:
    """Where the desired value at ``path`` of ``resource`` is set (module docstring), blamed."""
    from reconciler.load import PLATFORM_FILE

    _field, found = candidates(resource, path)
    source = next((s for s in state.sources if s.source_id == resource.labels.get(SOURCE_KEY)), None)
    root = Path(state.root)
    for scope, loc in found:
        if scope == PLATFORM:
            file = PLATFORM_FILE
        elif source is None:
            continue
        else:
            file = source.connector_file if scope == CONNECTOR else source.schema_file
        if scope == SCHEMA and path.startswith("schema."):
            loc = _column_loc(root, file, path.removeprefix("schema."), revision) or loc
        span = _span(root, file, loc, revision)
        if span is None:
            continue
        line = blame_lines(root, file, span[0], span[1], revision)
        return Origin(_dotted(loc), file, line.get("line", span[0]), False, line.get("commit"), line.get("author"),
                      line.get("email"), line.get("date"), line.get("summary"))
    if found:
        scope, loc = found[0]
        owner = "platform.yaml" if scope == PLATFORM else (
            source.connector_file if source and scope == CONNECTOR else source.schema_file if source else "")
        return Origin(f"{owner}: {_dotted(loc)}" if owner else _dotted(loc), default=True)
    return Origin("", default=True)


def origins(state: Any, resource: Resource, paths: Iterable[str], revision: str | None = None) -> dict[str, Origin]:
    return {path: origin(state, resource, path, revision) for path in paths}


def missing_origin(state: Any, resource: Resource, revision: str | None = None) -> Origin:
    """Who declared a resource that is missing: the source's file (its ``source_id`` line), or
    platform.yaml for a platform resource."""
    from reconciler.load import PLATFORM_FILE

    source = next((s for s in state.sources if s.source_id == resource.labels.get(SOURCE_KEY)), None)
    zone = resource.labels.get("headwater-zone")
    file, loc = (source.connector_file, ("source_id",)) if source else (PLATFORM_FILE, ("project",))
    if source is None and zone and _span(Path(state.root), PLATFORM_FILE, ("zones", zone), revision):
        loc = ("zones", zone)  # a zone's bucket or dataset: its block
    span = _span(Path(state.root), file, loc, revision) or (1, 1)
    line = blame_lines(Path(state.root), file, span[0], span[0], revision)
    return Origin(_dotted(loc), file, span[0], False, line.get("commit"), line.get("author"), line.get("email"),
                  line.get("date"), line.get("summary"))


# ---------------------------------------------------------------------- git


def blame_lines(root: Path, file: str, first: int, last: int, revision: str | None = None) -> dict[str, Any]:
    """The newest commit among lines ``first..last`` of ``file`` (at ``revision``, or as in the work
    tree): ``{line, commit, author, email, date, summary}``; empty when git cannot tell. A
    revision's blame never changes and is cached; the work tree's is read each time."""
    blame = _blame if revision else _blame.__wrapped__
    return dict(blame(str(Path(root).resolve()), file, first, last, revision))


@functools.lru_cache(maxsize=4096)
def _blame(root: str, file: str, first: int, last: int, revision: str | None) -> tuple[tuple[str, Any], ...]:
    argv = ["git", "-C", root, "blame", "--porcelain", "-L", f"{first},{last}"]
    if revision:
        argv.append(revision)
    argv += ["--", file]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    commits: dict[str, dict[str, Any]] = {}
    lines: list[tuple[str, int]] = []
    current: str | None = None
    for text in out.splitlines():
        header = re.match(r"^([0-9a-f]{40}) \d+ (\d+)", text)
        if header:
            current = header.group(1)
            commits.setdefault(current, {})
            lines.append((current, int(header.group(2))))
        elif current and " " in text and not text.startswith("\t"):
            key, value = text.split(" ", 1)
            if key in ("author", "author-mail", "author-time", "summary"):
                commits[current][key] = value
    if not lines:
        return ()
    newest, line = max(lines, key=lambda item: (int(commits[item[0]].get("author-time", 0)), item[1]))
    info = commits[newest]
    import datetime as dt

    when = int(info.get("author-time", 0))
    return (("line", line), ("commit", newest), ("author", info.get("author")),
            ("email", (info.get("author-mail") or "").strip("<>") or None),
            ("date", dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="seconds") if when else None),
            ("summary", info.get("summary")))


def last_change(root: Path, files: Sequence[str], revision: str | None = None) -> dict[str, Any] | None:
    """The newest commit touching ``files`` (at ``revision``): commit, author, email, date, summary."""
    argv = ["git", "-C", str(root), "log", "-1", "--format=%H%x00%an%x00%ae%x00%aI%x00%s"]
    if revision:
        argv.append(revision)
    argv += ["--", *files]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    commit, author, email, date, summary = (out.split("\0") + [""] * 5)[:5]
    return {"commit": commit, "author": author, "email": email, "date": date, "summary": summary}


# ---------------------------------------------------------------------- positions


def _span(root: Path, file: str, loc: tuple[Any, ...], revision: str | None) -> tuple[int, int] | None:
    """The lines of ``loc``'s key and value in ``file`` (first, last), or None if not declared there."""
    positions = _positions(str(Path(root).resolve()), file, revision)
    if loc not in positions:
        return None
    first = positions[loc][0]
    last = max((pos[0] for key, pos in positions.items() if key[:len(loc)] == loc), default=first)
    return first, max(first, last)


def _text(root: str, file: str, revision: str | None) -> str | None:
    """``file`` at ``revision`` (``git show``), or as in the work tree."""
    if revision is None:
        from reconciler.yamlsrc import read_limited

        try:
            return read_limited(Path(root) / file, Path(root))
        except Exception:  # noqa: BLE001 - unreadable (or refused by the bound): no position
            return None
    try:
        return subprocess.run(["git", "-C", root, "show", f"{revision}:./{file}"], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _data_and_positions(root: str, file: str, revision: str | None) -> tuple[Any, dict[tuple[Any, ...], tuple[int, int]]]:
    from reconciler.yamlsrc import _parse_yaml

    text = _text(root, file, revision)
    if text is None:
        return None, {}
    try:
        data, source_map = _parse_yaml(text)  # JSON is YAML: schema files too
    except Exception:  # noqa: BLE001 - a file that does not parse has no positions
        return None, {}
    return data, dict(source_map.positions)


@functools.lru_cache(maxsize=256)
def _parsed_at(root: str, file: str, revision: str) -> tuple[Any, dict[tuple[Any, ...], tuple[int, int]]]:
    return _data_and_positions(root, file, revision)


def _parsed(root: str, file: str, revision: str | None) -> tuple[Any, dict[tuple[Any, ...], tuple[int, int]]]:
    # A revision's files never change: cached. The work tree's may: read each time.
    return _parsed_at(root, file, revision) if revision else _data_and_positions(root, file, None)


def _positions(root: str, file: str, revision: str | None) -> dict[tuple[Any, ...], tuple[int, int]]:
    return _parsed(root, file, revision)[1]


def _column_loc(root: Path, file: str, column: str, revision: str | None) -> tuple[Any, ...] | None:
    """``("fields", 3, "fields", 0)`` of the dotted column path in a schema file."""
    data = _parsed(str(Path(root).resolve()), file, revision)[0]
    loc: tuple[Any, ...] = ()
    fields = data.get("fields") if isinstance(data, dict) else None
    for part in column.split("."):
        index = next((i for i, f in enumerate(fields or []) if isinstance(f, dict) and f.get("name") == part), None)
        if index is None:
            return loc or None
        loc = (*loc, "fields", index)
        fields = fields[index].get("fields")
    return loc or None


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def drift_origins(state: Any, plan: Any, revision: str | None = None) -> dict[str, dict[str, Origin]]:
    """Per drifted address (`reconciler.engine.drift_of`), the origin of each drifted field, or,
    for a missing resource (no fields), under ``""``, the line that declares it."""
    from reconciler.engine import drift_of

    items = drift_of(plan)
    if not items:  # the usual case; a plan may hold 100,000 changes
        return {}
    wanted = {item.address for item in items}
    desired = {c.address: c.desired for c in plan.non_noop if c.desired is not None and c.address in wanted}
    result: dict[str, dict[str, Origin]] = {}
    for item in items:
        resource = desired.get(item.address)
        if resource is None:
            continue
        if not item.fields:
            result[item.address] = {"": missing_origin(state, resource, revision)}
        else:
            result[item.address] = {path: origin(state, resource, path, revision) for path, _live, _want in item.fields}
    return result
