"""The example platform with classifications declared *by the test* (not by desired_state/), so that
the classification tests do not move when the example's own governance settings change.

``classified_state(...)``: desired_state/ with ``access.tiers`` (engineers, analysts, bi), the
class ``pii`` (sha256, read clear by engineers) and orders' ``customer_email`` classified ``pii``;
``classify`` adds more classified paths per source (``{"orders": {"customer_id": "pii"}}``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from helpers import EXAMPLE

from reconciler.config import Access, Classification
from reconciler.load import DesiredState, load_repo

TIERS = {
    "engineers": ["group:data-engineers@example.com"],
    "analysts": ["group:analysts@example.com"],
    "bi": ["serviceAccount:looker@headwater-demo.iam.gserviceaccount.com"],
}
ENGINEERS, ANALYSTS, BI = (TIERS[t][0] for t in ("engineers", "analysts", "bi"))


def classified_state(classify: Mapping[str, Mapping[str, str]] | None = None, *,
                     classifications: Mapping[str, Classification] | None = None,
                     access: Access | None = None, base: DesiredState | None = None) -> DesiredState:
    state = base or load_repo(EXAMPLE)
    platform = state.platform.model_copy(update={
        "classifications": dict(classifications or {"pii": Classification(masking="sha256", readers=["engineers"])}),
        "access": access or Access(tiers=TIERS),
    })
    wanted = {"orders": {"customer_email": "pii"}}
    for sid, paths in (classify or {}).items():
        wanted.setdefault(sid, {}).update(paths)
    sources = []
    for source in state.sources:
        if source.connector.classify or _schema_classified(source):
            # The example's own classifications (if it has some) are not this test's: cleared.
            source = _unclassified(source)
        if source.source_id in wanted:
            connector = source.connector.model_copy(update={"classify": dict(wanted[source.source_id])})
            source = dataclasses.replace(source, connector=connector)
        sources.append(source)
    return dataclasses.replace(state, platform=platform, sources=tuple(sources))


def _schema_classified(source) -> bool:
    from reconciler.governance import has_classified_columns

    return has_classified_columns(source)


def _clear(fields):
    return [f.model_copy(update={"classification": None, "policy_tag": None,
                                 "fields": _clear(f.fields) if f.fields else f.fields}) for f in fields]


def _unclassified(source):
    connector = source.connector.model_copy(update={"classify": {}})
    schema = source.schema.model_copy(update={"fields": _clear(source.schema.fields)}) if source.schema else None
    tables = tuple(dataclasses.replace(t, schema=t.schema.model_copy(update={"fields": _clear(t.schema.fields)}))
                   for t in source.tables)
    return dataclasses.replace(source, connector=connector, schema=schema, tables=tables)
