"""BigQuery views, materialized views and row access policies (issue 12: the serving layer).

Kinds (contract in `providers.base`; canonical specs in `reconciler.resources.SPEC_SHAPES`):

* ``bigquery_view`` ``<dataset>.<view>``: ``{query, description, authorized_on}``. ``query`` is
  compared normalized (`reconciler.sqltext.normalize`), so whitespace, comments and keyword case
  are no difference; it changes in place (``tables.patch`` of ``view.query``). ``authorized_on``
  lists the datasets whose access list authorizes the view (an authorized view: readers of the
  view need nothing on the tables it reads). Headwater **merges** its entry into that list and
  removes only its own entry: a read-modify-write of ``access`` with the dataset's etag
  (``If-Match``), retried on a concurrent change, so entries someone else added - users, groups,
  other authorized views - are never dropped (the failure mode of terraform-provider-google#11218,
  where an authoritative ``access`` block and a later IAM change drop each other's entries). The
  dataset provider (`providers.bigquery`) never sends ``access`` at all.
* ``bigquery_materialized_view`` ``<dataset>.<view>``: ``{query, enable_refresh,
  refresh_interval_ms, max_staleness_s, time_partitioning, clustering_fields, description}``.
  The query, partitioning and clustering cannot change in place: a replacement, which BigQuery
  follows by recomputing the whole view (the planner says so, and gates it: `DATA_KINDS`).
* ``bigquery_row_access_policy`` ``<dataset>.<table>.<name>``: ``{table, grantees, filter}``, the
  BigQuery policy ``headwater_<name>`` on that table, created with DDL in a query job
  (``CREATE ROW ACCESS POLICY ... GRANT TO (...) FILTER USING (...)``, the only way BigQuery
  creates them), changed with ``CREATE OR REPLACE``, dropped with ``DROP ... IF EXISTS``; read
  with ``rowAccessPolicies.list`` per managed table of the Gold-zone datasets (one call each). A
  policy has no labels: the ``headwater_`` prefix marks ours, and its labels are its table's.

Observe: one ``list_datasets``; per managed dataset one ``list_tables`` and a ``get_table`` per
view (tables.list carries no view query); the access lists from one ``get_dataset`` per managed
dataset.

EMULATOR DEPARTURES (bqemulator 1.4.0; checked by hand, see docs/serving.md):

* ``get_table`` of a view returns neither ``view.query`` nor a schema: the query is read from the
  dataset's ``INFORMATION_SCHEMA.VIEWS`` (one query per dataset with views) instead.
* No materialized views: ``materializedView`` is accepted and stored as an unusable placeholder
  table, and ``CREATE MATERIALIZED VIEW`` succeeds without creating anything. On the emulator a
  materialized view is therefore played by a logical view of the same query (labelled
  ``headwater-emulated=materialized-view``), and its refresh, staleness, partitioning and
  clustering are reported unobservable (`reconciler.resources.unobservable`); the query is
  observed, so a definition change is still planned as the replacement it is on GCP.
* Row access policies: ``CREATE`` and ``DROP`` work and are enforced, but ``CREATE OR REPLACE``
  answers 409 and ``DROP ... IF EXISTS`` a 404 for a missing policy: on the emulator an update is
  ``DROP`` then ``CREATE``, and a 404 on drop is "already gone".
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from google.cloud import bigquery

from providers.bigquery import LIST_PAGE_SIZE, RPC_TIMEOUT_S, label_patch, make_client, on_emulator
from providers.calls import CallCounter
from providers.errors import NotFound, PermanentError, call
from reconciler import sqltext
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, PROTECTED_KEY, Kind, Resource, unobservable

T = TypeVar("T")
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
POLICY_PREFIX = "headwater_"
EMULATED_KEY = "headwater-emulated"
EMULATED_MV = "materialized-view"
GOLD_ZONE = ("headwater-zone", "gold")
AUTHORIZE_ATTEMPTS = 5
_MV_UNOBSERVABLE = "bqemulator has no materialized views: played by a logical view"

IMMUTABLE_FIELDS: Mapping[Kind, frozenset[str]] = {
    Kind.BIGQUERY_VIEW: frozenset(),
    Kind.BIGQUERY_MATERIALIZED_VIEW: frozenset({"query", "time_partitioning", "clustering_fields"}),
    Kind.BIGQUERY_ROW_ACCESS_POLICY: frozenset({"table"}),
}


def _managed(labels: Mapping[str, str] | None) -> bool:
    return (labels or {}).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


def interval_text(seconds: int) -> str:
    """BigQuery's INTERVAL literal text (``Y-M D H:M:S``) for maxStaleness."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0-0 {days} {hours}:{minutes}:{secs}"


def interval_seconds(text: str | None) -> int | None:
    """``"0-0 0 4:0:0"`` → 14400 (years and months are not used by headwater)."""
    if not text:
        return None
    try:
        _ym, days, hms = text.split(" ")
        h, m, s = (int(float(x)) for x in hms.split(":"))
        return int(days) * 86400 + h * 3600 + m * 60 + s
    except ValueError:
        return None


def policy_ddl(project: str, resource: Resource, *, replace: bool) -> str:
    """The DDL of a row access policy resource (grantees are IAM principal strings, checked at
    validate; the filter is the repository's SQL, as a view's is)."""
    dataset, table, name = resource.name.split(".")
    grantees = ", ".join(f'"{g}"' for g in resource.spec["grantees"])
    verb = "CREATE OR REPLACE" if replace else "CREATE"
    return (f"{verb} ROW ACCESS POLICY `{POLICY_PREFIX}{name}` ON `{project}.{dataset}.{table}` "
            f"GRANT TO ({grantees}) FILTER USING ({resource.spec['filter']})")


class BigQueryViewProvider:
    """Views, materialized views and row access policies of one project (module docstring)."""

    kinds: tuple[Kind, ...] = (Kind.BIGQUERY_VIEW, Kind.BIGQUERY_MATERIALIZED_VIEW, Kind.BIGQUERY_ROW_ACCESS_POLICY)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, location: str, *, client: bigquery.Client | None = None) -> None:
        self.project = project
        self.location = location
        self._client = client
        self._lock = threading.Lock()
        # One read-modify-write of an access list at a time from this process (apply runs changes
        # concurrently; the etag guards against other writers - EMULATOR DEPARTURE: bqemulator
        # ignores If-Match, so without this two views authorized at once would lose one entry).
        self._access_lock = threading.Lock()
        self._counter = CallCounter("bigquery")

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        datasets = self._managed_datasets()
        if kind == Kind.BIGQUERY_ROW_ACCESS_POLICY:
            return [p for d in datasets if (d.labels or {}).get(GOLD_ZONE[0]) == GOLD_ZONE[1]
                    for p in self._policies(d.dataset_id)]
        if kind not in (Kind.BIGQUERY_VIEW, Kind.BIGQUERY_MATERIALIZED_VIEW):
            raise PermanentError(f"bigquery_views: unsupported kind {kind!r}")
        authorized = self._authorizations([d.dataset_id for d in datasets]) if kind == Kind.BIGQUERY_VIEW else {}
        found = []
        for dataset in datasets:
            found += self._views(dataset.dataset_id, kind, authorized)
        return found

    def create(self, resource: Resource) -> None:
        client, spec = self._bq(), resource.spec
        if resource.kind == Kind.BIGQUERY_ROW_ACCESS_POLICY:
            self._query(policy_ddl(self.project, resource, replace=False), resource.name)
            return
        table = bigquery.Table(self._ref(resource.name))
        table.description = spec.get("description") or None
        table.labels = dict(resource.labels)
        if resource.kind == Kind.BIGQUERY_VIEW or on_emulator():
            # EMULATOR DEPARTURE: a materialized view is played by a logical view (module docstring).
            table.view_query = spec["query"]
            table.view_use_legacy_sql = False
            if resource.kind == Kind.BIGQUERY_MATERIALIZED_VIEW:
                table.labels = {**table.labels, EMULATED_KEY: EMULATED_MV}
        else:
            self._materialized(table, spec, create=True)
        self._rpc("create_table", resource.name, lambda: client.create_table(table, **_OPTS))
        for dataset in spec.get("authorized_on") or []:
            self.authorize(dataset, resource.name, True)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        if not fields:
            return
        spec = resource.spec
        if resource.kind == Kind.BIGQUERY_ROW_ACCESS_POLICY:
            if set(fields) - {"labels"}:
                if on_emulator():  # EMULATOR DEPARTURE: no CREATE OR REPLACE ROW ACCESS POLICY
                    self.delete(resource)
                    self._query(policy_ddl(self.project, resource, replace=False), resource.name)
                else:
                    self._query(policy_ddl(self.project, resource, replace=True), resource.name)
            return  # its labels are its table's
        client = self._bq()
        table = bigquery.Table(self._ref(resource.name))
        api_fields: list[str] = []
        if "labels" in fields:
            live = self._rpc("get_table", resource.name, lambda: client.get_table(self._ref(resource.name), **_OPTS))
            table = live
            wanted = dict(resource.labels)
            if EMULATED_KEY in (live.labels or {}):
                wanted[EMULATED_KEY] = live.labels[EMULATED_KEY]
            table.labels = label_patch(live.labels, wanted)
            api_fields.append("labels")
        if "description" in fields:
            table.description = spec.get("description") or None
            api_fields.append("description")
        if "query" in fields:  # a logical view only (immutable for a materialized one)
            table.view_query = spec["query"]
            api_fields.append("view_query")
        if resource.kind == Kind.BIGQUERY_MATERIALIZED_VIEW and {"enable_refresh", "refresh_interval_ms",
                                                                 "max_staleness_s"} & set(fields):
            self._materialized(table, spec, create=False)
            api_fields.append("mview_enable_refresh")
            api_fields.append("mview_refresh_interval")
            table._properties["maxStaleness"] = (interval_text(spec["max_staleness_s"])
                                                 if spec.get("max_staleness_s") else None)
            api_fields.append("max_staleness")
        if api_fields:
            self._rpc("update_table", resource.name, lambda: client.update_table(table, api_fields, **_OPTS))
        if "authorized_on" in fields:
            wanted = set(spec.get("authorized_on") or [])
            have = {d for d, views in self._authorizations(
                [d.dataset_id for d in self._managed_datasets()]).items() if resource.name in views}
            for dataset in sorted(wanted - have):
                self.authorize(dataset, resource.name, True)
            for dataset in sorted(have - wanted):
                self.authorize(dataset, resource.name, False)

    def delete(self, resource: Resource) -> None:
        client = self._bq()
        if resource.kind == Kind.BIGQUERY_ROW_ACCESS_POLICY:
            dataset, table, name = resource.name.split(".")
            exists = "" if on_emulator() else "IF EXISTS "
            try:
                self._query(f"DROP ROW ACCESS POLICY {exists}`{POLICY_PREFIX}{name}` ON "
                            f"`{self.project}.{dataset}.{table}`", resource.name)
            except NotFound:
                pass  # already gone (EMULATOR DEPARTURE: its DROP ... IF EXISTS answers 404)
            return
        if resource.kind == Kind.BIGQUERY_VIEW:
            # Our access entries first: a dataset must not keep authorizing a view that is gone
            # (a view created later under the same name would inherit the grant).
            for dataset, views in self._authorizations([d.dataset_id for d in self._managed_datasets()]).items():
                if resource.name in views:
                    self.authorize(dataset, resource.name, False)
        self._rpc("delete_table", resource.name,
                  lambda: client.delete_table(self._ref(resource.name), not_found_ok=True, **_OPTS))

    # -- optional abilities --

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        """Views by name whoever manages them (a get each); policies are not read by name."""
        if kind == Kind.BIGQUERY_ROW_ACCESS_POLICY:
            return []
        found = []
        for name in names:
            try:
                table = self._rpc("get_table", name, lambda name=name: self._bq().get_table(self._ref(name), **_OPTS))
            except NotFound:
                continue
            live_kind = self._kind_of(table)
            if live_kind is not None:
                found.append(Resource(live_kind, name, self._spec(table, live_kind, {}, {}), dict(table.labels or {})))
        return [r for r in found if r.kind == kind]

    def would_lose(self, resources: Sequence[Resource]) -> Mapping[str, str]:
        losses = {}
        for resource in resources:
            if resource.kind == Kind.BIGQUERY_MATERIALIZED_VIEW:
                losses[resource.address] = ("its computed result, which BigQuery recomputes in full from the base "
                                            "tables")
        return losses

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    # -- authorized views --

    def authorize(self, dataset_id: str, view: str, present: bool) -> None:
        """Add (or remove) the view's entry in a dataset's access list, keeping every other entry:
        read, change our entry only, write back with the etag (If-Match); a concurrent change
        (412) reads again."""

        client = self._bq()
        view_dataset, view_table = view.split(".")
        target = {"projectId": self.project, "datasetId": view_dataset, "tableId": view_table}
        with self._access_lock:
            self._authorize(client, dataset_id, view, target, present)

    def _authorize(self, client: bigquery.Client, dataset_id: str, view: str, target: dict[str, str],
                   present: bool) -> None:
        from google.api_core.exceptions import PreconditionFailed

        ref = f"{self.project}.{dataset_id}"
        for _attempt in range(AUTHORIZE_ATTEMPTS):
            dataset = self._rpc("get_dataset", dataset_id, lambda: client.get_dataset(ref, **_OPTS))
            entries = list(dataset.access_entries)
            ours = [e for e in entries if e.entity_type == "view" and e.entity_id == target]
            if bool(ours) == present:
                return
            dataset.access_entries = (entries + [bigquery.AccessEntry(None, "view", target)] if present
                                      else [e for e in entries if e not in ours])
            try:
                self._rpc("update_dataset", dataset_id,
                          lambda dataset=dataset: client.update_dataset(dataset, ["access_entries"], **_OPTS))
                return
            except PermanentError as exc:
                if not isinstance(exc.__cause__, PreconditionFailed) and "412" not in str(exc):
                    raise
        raise PermanentError(f"bigquery: the access list of {dataset_id} kept changing; {view} not "
                             f"{'authorized' if present else 'removed'} after {AUTHORIZE_ATTEMPTS} attempts")

    def _authorizations(self, datasets: Sequence[str]) -> dict[str, set[str]]:
        """dataset -> the views (``dataset.view`` of this project) its access list authorizes."""
        client = self._bq()
        result: dict[str, set[str]] = {}
        for dataset_id in datasets:
            ref = f"{self.project}.{dataset_id}"
            dataset = self._rpc("get_dataset", dataset_id, lambda ref=ref: client.get_dataset(ref, **_OPTS))
            views = set()
            for entry in dataset.access_entries:
                if entry.entity_type == "view" and isinstance(entry.entity_id, dict) \
                        and entry.entity_id.get("projectId") == self.project:
                    views.add(f"{entry.entity_id['datasetId']}.{entry.entity_id['tableId']}")
            result[dataset_id] = views
        return result

    # -- observe helpers --

    def _views(self, dataset_id: str, kind: Kind, authorized: dict[str, set[str]]) -> list[Resource]:
        client = self._bq()
        items = self._list("list_tables", lambda: client.list_tables(f"{self.project}.{dataset_id}",
                                                                     page_size=LIST_PAGE_SIZE, **_OPTS))
        items = [i for i in items if i.table_type in ("VIEW", "MATERIALIZED_VIEW")]
        queries: dict[str, str] | None = None
        found = []
        for item in items:
            name = f"{dataset_id}.{item.table_id}"
            table = self._rpc("get_table", name, lambda item=item: client.get_table(item.reference, **_OPTS))
            if not _managed(table.labels) or self._kind_of(table) != kind:
                continue
            if (table.view_query or table.mview_query) is None and queries is None:
                queries = self._view_definitions(dataset_id)  # EMULATOR DEPARTURE: no view.query on get
            found.append(Resource(kind, name, self._spec(table, kind, authorized, queries or {}),
                                  {k: v for k, v in (table.labels or {}).items() if k != EMULATED_KEY}))
        return found

    @staticmethod
    def _kind_of(table: bigquery.Table) -> Kind | None:
        if table.table_type == "MATERIALIZED_VIEW" or (table.labels or {}).get(EMULATED_KEY) == EMULATED_MV:
            return Kind.BIGQUERY_MATERIALIZED_VIEW
        if table.table_type == "VIEW":
            return Kind.BIGQUERY_VIEW
        return None

    def _spec(self, table: bigquery.Table, kind: Kind, authorized: dict[str, set[str]],
              queries: Mapping[str, str]) -> dict[str, Any]:
        name = f"{table.dataset_id}.{table.table_id}"
        query = table.mview_query if table.table_type == "MATERIALIZED_VIEW" else table.view_query
        query = query if query is not None else queries.get(table.table_id, "")
        spec: dict[str, Any] = {"query": sqltext.normalize(query) if query else ""}
        if table.description:
            spec["description"] = table.description
        if kind == Kind.BIGQUERY_VIEW:
            spec["authorized_on"] = sorted(d for d, views in authorized.items() if name in views)
            return spec
        if table.table_type != "MATERIALIZED_VIEW":  # the emulator's stand-in (module docstring)
            for key in ("enable_refresh", "refresh_interval_ms", "max_staleness_s", "time_partitioning",
                        "clustering_fields"):
                spec[key] = unobservable(_MV_UNOBSERVABLE)
            return spec
        interval = table.mview_refresh_interval
        partitioning = table.time_partitioning
        spec.update({
            "enable_refresh": bool(table.mview_enable_refresh),
            "refresh_interval_ms": int(interval.total_seconds() * 1000) if interval else None,
            "max_staleness_s": interval_seconds(table._properties.get("maxStaleness")),
            "time_partitioning": {"type": partitioning.type_ or "DAY", "field": partitioning.field}
            if partitioning else None,
            "clustering_fields": list(table.clustering_fields) if table.clustering_fields else None,
        })
        return spec

    @staticmethod
    def _materialized(table: bigquery.Table, spec: Mapping[str, Any], *, create: bool) -> None:
        if create:
            table.mview_query = spec["query"]
            partitioning = spec.get("time_partitioning")
            if partitioning:
                table.time_partitioning = bigquery.TimePartitioning(type_=partitioning.get("type", "DAY"),
                                                                    field=partitioning.get("field"))
            table.clustering_fields = spec.get("clustering_fields") or None
            if spec.get("max_staleness_s"):
                table._properties["maxStaleness"] = interval_text(spec["max_staleness_s"])
        table.mview_enable_refresh = bool(spec.get("enable_refresh", True))
        interval = spec.get("refresh_interval_ms")
        table.mview_refresh_interval = dt.timedelta(milliseconds=interval) if interval else None

    def _view_definitions(self, dataset_id: str) -> dict[str, str]:
        rows = self._query(f"SELECT table_name, view_definition FROM "
                           f"`{self.project}.{dataset_id}.INFORMATION_SCHEMA.VIEWS`", dataset_id)
        return {row["table_name"]: row["view_definition"] for row in rows}

    def _policies(self, dataset_id: str) -> list[Resource]:
        client = self._bq()
        items = self._list("list_tables", lambda: client.list_tables(f"{self.project}.{dataset_id}",
                                                                     page_size=LIST_PAGE_SIZE, **_OPTS))
        found = []
        for item in items:
            if item.table_type != "TABLE":
                continue
            name = f"{dataset_id}.{item.table_id}"
            labels = item.labels
            if on_emulator():  # its tables.list carries no labels (providers/bigquery.py)
                labels = self._rpc("get_table", name, lambda item=item: client.get_table(item.reference, **_OPTS)).labels
            if not _managed(labels):
                continue
            path = f"/projects/{self.project}/datasets/{dataset_id}/tables/{item.table_id}/rowAccessPolicies"
            answer = self._rpc("list_row_access_policies", name,
                               lambda path=path: client._connection.api_request("GET", path, timeout=RPC_TIMEOUT_S))
            for policy in answer.get("rowAccessPolicies", []):
                policy_id = policy["rowAccessPolicyReference"]["policyId"]
                if not policy_id.startswith(POLICY_PREFIX):
                    continue  # not ours: never observed, never touched
                found.append(Resource(
                    Kind.BIGQUERY_ROW_ACCESS_POLICY, f"{name}.{policy_id[len(POLICY_PREFIX):]}",
                    {"table": name, "grantees": sorted(policy.get("grantees", [])),
                     "filter": sqltext.normalize(policy.get("filterPredicate", ""))},
                    {k: v for k, v in (labels or {}).items() if k != PROTECTED_KEY}))
        return found

    def _managed_datasets(self) -> list[Any]:
        client = self._bq()
        items = self._list("list_datasets", lambda: client.list_datasets(
            self.project, filter=f"labels.{MANAGED_BY_KEY}:{MANAGED_BY_VALUE}", page_size=LIST_PAGE_SIZE, **_OPTS))
        return [item for item in items if _managed(item.labels)]

    # -- plumbing --

    def _ref(self, name: str) -> str:
        dataset, table = name.split(".", 1)
        return f"{self.project}.{dataset}.{table}"

    def _bq(self) -> bigquery.Client:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.project)
            return self._client

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)

    def _list(self, method: str, start: Callable[[], Any]) -> list[Any]:
        def attempt() -> list[Any]:
            items: list[Any] = []
            for page in start().pages:
                self._counter.count(method)
                items.extend(page)
            return items

        return call(attempt, f"bigquery.{method} {self.project}")

    def _query(self, sql: str, target: str) -> list[dict[str, Any]]:
        """A query job (DDL or a metadata read): one ``jobs.query``."""
        client = self._bq()

        def attempt() -> list[dict[str, Any]]:
            self._counter.count("query")
            rows = client.query_and_wait(sql, project=self.project, api_timeout=RPC_TIMEOUT_S,
                                         wait_timeout=120.0, retry=None, job_retry=None)
            return [dict(row.items()) for row in rows]

        return call(attempt, f"bigquery.query {target}")
