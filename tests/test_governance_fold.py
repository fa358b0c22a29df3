"""The grants have one definition (reconciler/governance.py: `source_grants`, `platform_grants`,
`GrantIndex`), which both compile paths use. Before the fold they had two: the one-pass form,
kept frozen in tests/governance_oracle.py. This differential test holds the fold to it: for the
example repo, the states the other governance tests compile, and generated variations of them,
`governance_resources` returns exactly what the oracle returns - the same resources, in the same
order, with the same notes (``options["why"]``).

Each state is compiled by `reconciler.compile._compile_plain`, whose call of the hook is
intercepted: both definitions are given the very graph the compile gives the hook.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import governance_oracle as oracle
import pytest
from classified_example import classified_state
from helpers import clone, connector, copy_example, edit_yaml

from reconciler import compile as compiler
from reconciler import governance
from reconciler.config import Access, Classification
from reconciler.load import DesiredState, load_repo
from reconciler.resources import Kind, Resource

WORKER = "dataflow-workers@headwater-demo.iam.gserviceaccount.com"
CONNECTORS = "connectors@headwater-demo.iam.gserviceaccount.com"
API = "data-api@headwater-demo.iam.gserviceaccount.com"


def graph_of(state: DesiredState) -> list[Resource]:
    """The resources `_compile_plain` gives the governance hook for ``state`` (every other one)."""
    graph: list[Resource] = []
    hook = governance.governance_resources

    def intercepted(state_: DesiredState, desired: list[Resource]) -> list[Resource]:
        graph.extend(desired)
        return hook(state_, desired)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(governance, "governance_resources", intercepted)
        compiler._compile_plain(state)
    assert graph, "the compile did not call the governance hook"
    return graph


def both(state: DesiredState) -> tuple[list[Resource], list[Resource]]:
    """`governance_resources` of ``state`` by the fold and by the oracle, given the same graph."""
    graph = graph_of(state)
    return governance.governance_resources(state, graph), oracle.governance_resources(state, graph)


def assert_same(state: DesiredState, what: str) -> list[Resource]:
    new, old = both(state)
    assert [r.address for r in new] == [r.address for r in old], f"{what}: not the same resources in the same order"
    for a, b in zip(new, old, strict=True):
        assert a.options.get("why") == b.options.get("why"), f"{what}: {a.address}: not the same notes"
        assert a == b, f"{what}: {a.address}"
    return new


# --------------------------------------------------------------------------- variations of the example repo


def _platform(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda repo: edit_yaml(repo / "platform.yaml", change)


def _source(sid: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda repo: edit_yaml(connector(repo, sid), change) if connector(repo, sid).exists() else None


def _unclassified(repo: Path) -> None:
    """No classified column anywhere (Bronze open again)."""
    def strip(fields: list[dict]) -> None:
        for field in fields:
            field.pop("classification", None)
            field.pop("policy_tag", None)
            strip(field.get("fields") or [])

    for path in (repo / "schemas").glob("*.json"):
        data = json.loads(path.read_text())
        strip(data.get("fields") or [])
        path.write_text(json.dumps(data))
    for path in (repo / "connectors").glob("*.yaml"):
        edit_yaml(path, lambda d: d.pop("classify", None))


def _no_serving(what: str) -> Callable[[Path], None]:
    def change(data: dict) -> None:
        serving = data.get("serving") or {}
        serving.pop(what, None)

    return lambda repo: [edit_yaml(path, change) for path in (repo / "connectors").glob("*.yaml")]


def _accounts(**emails: str) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        for key, email in emails.items():
            data.setdefault(key, {})["service_account"] = email

    return change


def _zone_bindings(data: dict) -> None:
    zones = data["access"].setdefault("zones", {})
    zones.setdefault("silver", {})["bindings"] = {
        "roles/bigquery.dataEditor": [f"serviceAccount:{WORKER}", "engineers"],  # the worker's editor role twice
        "roles/storage.objectAdmin": ["user:ana@example.com"],
        "projects/headwater-demo/roles/silverAuditor": ["group:audit@example.com"]}
    zones.setdefault("landing", {})["bindings"] = {"roles/storage.legacyBucketWriter": ["group:ops@example.com"]}
    zones.setdefault("gold", {})["bindings"] = {"roles/bigquery.dataViewer": [f"serviceAccount:{WORKER}"],
                                                "roles/bigquery.metadataViewer": ["analysts"]}


def _source_access(repo: Path) -> None:
    _source("clickstream", lambda d: d.setdefault("access", {}).update(
        readers=["analysts", "group:clicks@example.com"], publishers=["group:web@example.com"],
        subscribers=["bi", "group:clicks@example.com"]))(repo)
    _source("payments", lambda d: d.setdefault("access", {}).update(
        readers=["engineers"], subscribers=["serviceAccount:fraud-scoring@headwater-demo.iam.gserviceaccount.com"]))(repo)
    _source("aws_data_lake", lambda d: d.setdefault("access", {}).update(readers=["bi"]))(repo)


def _shared_topic(repo: Path) -> None:
    """Two sources on one topic, each granting on it (their notes in the sources' order)."""
    if not connector(repo, "clickstream").exists():
        return
    clone(repo, "clickstream", "clicks_eu")
    for sid, readers in (("clicks_eu", ["analysts"]), ("clickstream", [])):  # clicks_eu: the first, more grants
        _source(sid, lambda d, sid=sid, readers=readers: (d["ingestion"].update(pubsub_topic="clicks-shared"), d.update(
            access={"readers": readers, "publishers": [f"group:{sid}@example.com"]})))(repo)


VARIATIONS: dict[str, Callable[[Path], None]] = {
    "exclusive": _platform(lambda d: d["access"].update(exclusive=True)),
    "landing readers": _platform(lambda d: d["access"].setdefault("zones", {}).update(
        landing={"readers": ["engineers", "group:ops@example.com"]})),
    "zone defaults": _platform(lambda d: d["access"].update(zones={})),
    "bronze without engineers": _platform(lambda d: d["access"]["zones"].update(bronze={"readers": ["analysts"]})),
    "zone bindings": _platform(_zone_bindings),
    "audit logs off": _platform(lambda d: d.update(audit_logs=False)),
    "platform labels name a source": _platform(lambda d: d["labels"].update({"headwater-source": "orders"})),
    "worker": _platform(_accounts(dataflow=WORKER)),
    "worker temp bucket": _platform(lambda d: d.update(dataflow={
        "service_account": WORKER, "temp_location": "gs://bronze-headwater-demo-europe-west1/tmp"})),
    "connectors account": _platform(_accounts(connectors=CONNECTORS)),
    "api account": _platform(_accounts(api=API)),
    "every account": _platform(_accounts(dataflow=WORKER, connectors=CONNECTORS, api=API)),
    "one account for all": _platform(_accounts(dataflow=WORKER, connectors=WORKER, api=WORKER)),
    "unclassified": _unclassified,
    "classify payments": _source("payments", lambda d: d.update(classify={"customer_id": "pii"})),
    "classify clickstream": _source("clickstream", lambda d: d.update(classify={"user_id": "pii"})),
    "source access": _source_access,
    "shared topic": _shared_topic,
    "no reporting": _no_serving("reporting"),
    "no features": _no_serving("ml_features"),
    "no data api": _no_serving("third_party_api"),
    "no cdc": lambda repo: connector(repo, "postgres_orders").unlink(missing_ok=True),
    "no transfer": lambda repo: connector(repo, "aws_data_lake").unlink(missing_ok=True),
    "no orders": lambda repo: connector(repo, "orders").unlink(missing_ok=True),
    "clones": lambda repo: [clone(repo, sid, f"{sid}_b") for sid in ("orders", "clickstream", "payments",
                                                                       "aws_data_lake") if connector(repo, sid).exists()],
}


def _generated(count: int) -> list[tuple[str, ...]]:
    """Seeded combinations of 2 to 6 variations (applied in a fixed order: a clone copies the
    source's settings as they are by then)."""
    rng = random.Random(13)
    names = list(VARIATIONS)
    return [tuple(sorted(rng.sample(names, rng.randint(2, 6)), key=names.index)) for _ in range(count)]


# Combinations where one rule meets another: the worker's dataViewer given by a zone where its jobs
# make it dataEditor; exclusive zone bindings on a transfer's sink; one account in every role.
COMBINATIONS = [("zone bindings", "worker"), ("exclusive", "landing readers", "zone bindings"),
                ("zone bindings", "one account for all"), ("exclusive", "classify payments", "clones")]
SCENARIOS = [()] + [(name,) for name in VARIATIONS] + COMBINATIONS + _generated(30)

# What the scenarios must exercise between them (else the comparison proves little): a phrase of
# a note, or a member, of some binding of the fold's output.
EXERCISED = {
    "restricted Bronze": "a table-level read instead of the Bronze dataset",
    "several restricted sources": "have classified columns",
    "Bronze open": governance.BRONZE_OPEN,
    "engineers only": "only the engineers tier reads the whole zone",
    "access.readers": "access.readers of",
    "access.publishers": "access.publishers of",
    "access.subscribers": "access.subscribers of",
    "workers' account": "the Dataflow workers' account",
    "temporary files": "temporary files",
    "connectors' account": "the connectors' account",
    "data API's account": "the data API's account",
    "dead-lettering": "dead-lettering of",
    "Datastream": "Datastream writes the change events",
    "transfer sink under exclusive": "kept for the Storage Transfer jobs",
}


def _scenario_id(names: tuple[str, ...]) -> str:
    return "+".join(names) or "example"


@pytest.mark.parametrize("names", SCENARIOS, ids=map(_scenario_id, SCENARIOS))
def test_the_fold_grants_what_the_oracle_grants(tmp_path: Path, names: tuple[str, ...]) -> None:
    repo = copy_example(tmp_path)
    for name in names:
        VARIATIONS[name](repo)
    assert_same(load_repo(repo), _scenario_id(names))


def test_the_scenarios_exercise_every_kind_of_grant(tmp_path: Path) -> None:
    seen: set[str] = set()
    exclusive = project_roles = implied = False
    worker = f"serviceAccount:{WORKER}"
    for i, names in enumerate(SCENARIOS):
        repo = copy_example(tmp_path / str(i))
        for name in names:
            VARIATIONS[name](repo)
        state = load_repo(repo)
        bindings = {r.name: r for r in governance.governance_resources(state, graph_of(state))
                    if r.kind == Kind.IAM_BINDING}
        for r in bindings.values():
            text = f"{r.options.get('why', '')} {' '.join(r.spec['members'])}"
            seen |= {kind for kind, phrase in EXERCISED.items() if phrase in text}
            exclusive |= r.spec["exclusive"]
            project_roles |= r.spec["target"].startswith("project.")
        # "zone bindings" makes the worker a reader of gold, where its jobs make it an editor.
        editor = bindings.get("bigquery_dataset:gold:roles/bigquery.dataEditor")
        reader = bindings.get("bigquery_dataset:gold:roles/bigquery.dataViewer")
        implied |= ("zone bindings" in names and editor is not None and worker in editor.spec["members"]
                    and (reader is None or worker not in reader.spec["members"]))
    assert set(EXERCISED) - seen == set()
    assert exclusive and project_roles and implied


# --------------------------------------------------------------------------- the classification tests' states

CLASSIFIED = {
    "orders' customer_email": lambda: classified_state(),
    "two classified sources": lambda: classified_state({"payments": {"customer_id": "pii"}}),
    "several classes": lambda: classified_state(
        {"orders": {"customer_id": "secret"}},
        classifications={"pii": Classification(masking="sha256", readers=["engineers"]),
                         "secret": Classification(masking="always_null", readers=["group:vault@example.com"])}),
    "exclusive, a class read by bi": lambda: classified_state(
        classifications={"pii": Classification(masking="sha256", readers=["bi"])},
        access=Access(tiers={"engineers": ["group:data-engineers@example.com"], "analysts": [
            "group:analysts@example.com"], "bi": ["serviceAccount:looker@headwater-demo.iam.gserviceaccount.com"]},
            exclusive=True)),
}


@pytest.mark.parametrize("name", sorted(CLASSIFIED))
def test_the_fold_grants_what_the_oracle_grants_with_classified_columns(name: str) -> None:
    assert_same(CLASSIFIED[name](), name)
