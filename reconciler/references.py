"""External references, checked at plan time: a job must not be the first to find out.

A source names things headwater may not create: the bucket of its ``ingestion.location`` (a
``batch_file`` source's landing prefix; ``ingestion.destination`` of a ``cloud_transfer``
source) and the tables its ``processing.silver_to_gold`` steps ``join``. Each must be declared
by the desired state (compiled into a resource) or exist already; otherwise the plan is refused
before anything is observed further, with a problem at the file, line and field that names it
("bucket 'x' of ingestion.location is neither declared nor existing") - where, before, the
platform applied cleanly and the job failed on every run.

Existence is asked of the provider of the kind (`providers.base.Reader`: one get per name, only
for names that are not declared, so a platform whose references are all its own costs nothing).
A provider that cannot read (no such ability) leaves the reference unchecked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.load import DesiredState, Problem
from reconciler.resources import Kind, Resource


def references(state: DesiredState) -> list[tuple[Kind, str, str, tuple[Any, ...], str]]:
    """``(kind, name, file, loc, what)`` of every external name the sources use."""
    from reconciler.compile import notification_prefix

    found = []
    for source in state.sources:
        ingestion = source.connector.ingestion
        for key in ("location", "destination"):
            value = getattr(ingestion, key, None)
            if value:
                bucket, _prefix = notification_prefix(value)
                found.append((Kind.STORAGE_BUCKET, bucket, source.connector_file, ("ingestion", key),
                              f"bucket {bucket!r} of ingestion.{key}"))
        for index, step in enumerate(source.connector.processing.silver_to_gold):
            if step.join is not None:
                found.append((Kind.BIGQUERY_TABLE, step.join.table, source.connector_file,
                              ("processing", "silver_to_gold", index, "join", "table"),
                              f"joined table {step.join.table!r}"))
    return found


def missing_references(state: DesiredState, desired: Sequence[Resource], providers: Mapping[Kind, Any]) -> list[Problem]:
    """One problem per reference neither declared in ``desired`` nor found by its provider."""
    from providers.base import read_with
    from reconciler.blame import _positions

    declared = {(r.kind, r.name) for r in desired}
    wanted = [ref for ref in references(state) if (ref[0], ref[1]) not in declared]
    problems = []
    by_kind: dict[Kind, set[str]] = {}
    for kind, name, *_rest in wanted:
        by_kind.setdefault(kind, set()).add(name)
    existing: set[tuple[Kind, str]] = set()
    unchecked: set[Kind] = set()
    for kind, names in by_kind.items():
        provider = providers.get(kind)
        if provider is None or getattr(provider, "read", None) is None:
            unchecked.add(kind)
            continue
        existing |= {(kind, r.name) for r in read_with(provider, kind, names)}
    for kind, name, file, loc, what in wanted:
        if kind in unchecked or (kind, name) in existing:
            continue
        line, column = _positions(str(state.root), file, None).get(loc, (1, 1))
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        problems.append(Problem(file, line, column, field,
                                f"{what} is neither declared by the desired state nor existing in project "
                                f"{state.platform.project}; create it (or fix the name) before applying - the job "
                                "that reads it would fail on every run"))
    return problems

