"""BigQuery column policies: the policy tag on one column of a table (issue 13, column-level security).

Kind: ``bigquery_column_policy`` (name: ``<dataset>.<table>/<column.path>``, a nested field by its
dotted path, ``items.sku``), compiled by `reconciler.classification`. Spec::

    {"policy_tags": ["<taxonomy>/<class>"]}   # headwater's tag names (another's by its full name)

A column policy is not an object of its own in BigQuery: it is ``policyTags.names`` of one field
of the table's schema (https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#TableFieldSchema;
"at most 1 policy tag is currently allowed"). So this provider reads and patches table schemas,
through ``google-cloud-bigquery`` as `providers.bigquery` does (its client and helpers). On the
emulators the kind is recorded by `providers.local_record` instead: bqemulator drops policyTags.

Operations (read-modify-write of the schema, never blind)
---------------------------------------------------------
* create / update: ``tables.get``, set ``policyTags.names`` on the field at the path (nested
  too: only leaf fields take tags; a RECORD is refused), and ``tables.patch`` of ``schema`` alone
  with the etag of the read (the client sends ``If-Match``). Every other field goes back exactly
  as read, its own policy tags, data policies, collation and defaults included. A concurrent
  change of the table (HTTP 412) is retried from a fresh read (`TemporaryError`), never
  overwritten. A create on a column that already carries another tag is `AlreadyExists` (`read`
  then shows whose it is), so someone else's tag is never replaced.
* delete: the same patch with an EMPTY names list, ``"policyTags": {"names": []}``: that is what
  removes a tag. A schema sent without ``policyTags`` leaves the field's tags as they are (the
  behaviour peers trip on, terraform-provider-google#14047, fixed there by sending an empty list:
  GoogleCloudPlatform/magic-modules#8658). A table or column that is gone is success.

That omission keeps tags is also why `providers.bigquery` may update a table's schema (add a
column, change a description) without carrying the live tags through: google-cloud-bigquery
sends no ``policyTags`` key for a field built without one (``SchemaField.from_api_repr`` of
headwater's canonical field), so PATCH leaves the tags this provider set
(tests/providers/test_bigquery_columns.py holds the request to that).

Observe: API calls
------------------
``tables.list`` carries no schema, and a get per table would be O(tables). Instead, as
`providers.bigquery` reads schemas: ONE ``list_datasets`` (labelled managed-by=headwater), then
per managed dataset ONE query of ``INFORMATION_SCHEMA.COLUMN_FIELD_PATHS``, whose ``policy_tags``
column (ARRAY<STRING>) lists the tags of every column and nested field by ``field_path``
(https://cloud.google.com/bigquery/docs/information-schema-column-field-paths), kept to the
tagged ones (`column_tags_query`). The tags' server names map to headwater's names through the
shared `providers.datacatalog.PolicyTagDirectory` (listed once a run). A column is headwater's,
and observed, when it carries a tag of a headwater taxonomy; its ``headwater-platform`` is that
taxonomy's environment (column policies carry no labels). The query is billed as a metadata
query (10 MB minimum) and needs ``bigquery.jobs.create``, as `providers.bigquery`'s does.

Verified here through the official client (REST) against a local endpoint
(tests/fake_bigquery_columns.py): the requests, the etag precondition, the empty-list removal.
Verified only against the real service: that the query's ``policy_tags`` lists the tags as this
parses them, that a tag restricts reads, and that PATCH without ``policyTags`` keeps a field's tags.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from providers.bigquery import QUERY_TIMEOUT_S, RPC_TIMEOUT_S, make_client, split_table_name
from providers.calls import CallCounter
from providers.datacatalog import DataCatalogProvider, owner_labels
from providers.errors import AlreadyExists, NotFound, PermanentError, TemporaryError, call
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

COLUMN_POLICY = Kind.BIGQUERY_COLUMN_POLICY
KINDS = (COLUMN_POLICY,)
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {COLUMN_POLICY: frozenset()}
LIST_PAGE_SIZE = 1000


def column_tags_query(project: str, dataset: str) -> str:
    """Every tagged column and nested field of ``dataset``'s tables, one row each."""
    return f"""
SELECT table_name, field_path, policy_tags
FROM `{project}.{dataset}`.INFORMATION_SCHEMA.COLUMN_FIELD_PATHS
WHERE ARRAY_LENGTH(policy_tags) > 0
"""



def split_name(name: str) -> tuple[str, str, str]:
    """``<dataset>.<table>/<column.path>`` -> (dataset, table, path)."""
    table, sep, path = name.partition("/")
    if not sep or not path:
        raise PermanentError(f"bigquery_column_policy {name!r}: expected <dataset>.<table>/<column.path>")
    dataset, table_id = split_table_name(table)
    return dataset, table_id, path


def column_resource(name: str, tags: Sequence[str], tag_names: Mapping[str, str]) -> Resource:
    """The canonical view of one column's tags; ``tag_names``: server name -> headwater tag name.
    Headwater's when a tag is a headwater taxonomy's (its environment the platform label)."""
    names = [tag_names.get(t, t) for t in tags]
    labels: dict[str, str] = {}
    for tag in tags:
        if tag in tag_names:
            labels = owner_labels(tag_names[tag].split("/", 1)[0])
            break
    return Resource(COLUMN_POLICY, name, {"policy_tags": names}, labels)


def find_field(fields: list[dict[str, Any]], path: str) -> dict[str, Any] | None:
    """The API field (dict) at a dotted path; BigQuery names are case-insensitive."""
    found: dict[str, Any] | None = None
    current: list[dict[str, Any]] | None = fields
    for part in path.split("."):
        found = next((f for f in current or [] if str(f.get("name", "")).lower() == part.lower()), None)
        if found is None:
            return None
        current = found.get("fields")
    return found


def field_tags(field: Mapping[str, Any]) -> list[str]:
    return list((field.get("policyTags") or {}).get("names") or [])


class ColumnPolicyProvider:
    """Policy tags on the columns of headwater's tables. Contract: `providers.base.Provider` (and
    `Reader`). ``catalog``: the `DataCatalogProvider` whose tag directory maps tag names;
    ``client``: for tests, a ``bigquery.Client`` pointed at a local endpoint."""

    kinds: tuple[Kind, ...] = KINDS
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, catalog: DataCatalogProvider, *, client: bigquery.Client | None = None) -> None:
        self.project = project
        self.catalog = catalog
        self._client = client
        self._lock = threading.Lock()
        self._counter = CallCounter("bigquery")

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        self._check(kind)
        tag_names = self.catalog.tag_names()
        found = []
        for dataset in self._managed_datasets():
            location = dataset._properties.get("location")
            for row in self._query(column_tags_query(self.project, dataset.dataset_id), location=location):
                name = f"{dataset.dataset_id}.{row['table_name']}/{row['field_path']}"
                resource = column_resource(name, list(row["policy_tags"] or []), tag_names)
                if resource.managed:
                    found.append(resource)
        return sorted(found, key=lambda r: r.name)

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        """The named columns' tags whoever set them: one get per table (only for declared columns
        observe did not find). A column without tags, or gone, is left out."""
        self._check(kind)
        by_table: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for name in names:
            dataset, table, path = split_name(name)
            by_table[(dataset, table)].append((name, path))
        tag_names = self.catalog.tag_names()
        found = []
        for (dataset, table), columns in sorted(by_table.items()):
            try:
                live = self._get(f"{dataset}.{table}")
            except NotFound:
                continue
            fields = [f.to_api_repr() for f in live.schema]
            for name, path in columns:
                field = find_field(fields, path)
                if field is not None and field_tags(field):
                    found.append(column_resource(name, field_tags(field), tag_names))
        return found

    def create(self, resource: Resource) -> None:
        self._set(resource, self._tag_ids(resource), create=True)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        unknown = [f for f in fields if f not in ("policy_tags", "labels")]
        if unknown:
            raise PermanentError(f"{resource.address}: {unknown} cannot change in place")
        if "policy_tags" in fields:
            self._set(resource, self._tag_ids(resource), create=False)

    def delete(self, resource: Resource) -> None:
        """An empty names list: what removes a column's tags (module docstring)."""
        try:
            self._set(resource, [], create=False)
        except NotFound:
            pass  # the table or the column is gone: so is its tag

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    # -- the write --

    def _set(self, resource: Resource, names: list[str], *, create: bool) -> None:
        dataset, table_id, path = split_name(resource.name)
        client = self._bq()
        ref = f"{self.project}.{dataset}.{table_id}"

        def attempt() -> None:
            self._counter.count("get_table")
            table = client.get_table(ref, retry=None, timeout=RPC_TIMEOUT_S)
            fields = [f.to_api_repr() for f in table.schema]
            field = find_field(fields, path)
            if field is None:
                raise NotFound(f"{resource.address}: {dataset}.{table_id} has no column {path}")
            if field.get("type") in ("RECORD", "STRUCT"):
                raise PermanentError(f"{resource.address}: {path} is a {field['type']}; policy tags go on leaf columns")
            current = field_tags(field)
            if current == names:
                return  # as wanted already: nothing to send
            if create and current:
                raise AlreadyExists(f"{resource.address} already carries {', '.join(current)}")
            field["policyTags"] = {"names": list(names)}
            table.schema = [bigquery.SchemaField.from_api_repr(f) for f in fields]
            # `table` is the object read: its etag makes the client send If-Match.
            self._counter.count("update_table")
            try:
                client.update_table(table, ["schema"], retry=None, timeout=RPC_TIMEOUT_S)
            except gexc.PreconditionFailed as exc:
                raise TemporaryError(f"bigquery.update_table {resource.name}: the table changed since it was "
                                     "read (etag); reading it again") from exc

        call(attempt, f"bigquery.set_policy_tags {resource.name}")

    def _tag_ids(self, resource: Resource) -> list[str]:
        ids = []
        for tag in resource.spec.get("policy_tags") or []:
            server = self.catalog.tag_id(tag) if not tag.startswith("projects/") else tag
            if server is None:
                raise NotFound(f"{resource.address}: policy tag {tag} does not exist "
                               "(datacatalog_policy_tag is applied first: plan again)")
            ids.append(server)
        return ids

    # -- plumbing --

    def _check(self, kind: Kind | str) -> None:
        if Kind(kind) != COLUMN_POLICY:
            raise PermanentError(f"bigquery columns: unsupported kind {kind!r}")

    def _get(self, name: str) -> bigquery.Table:
        dataset, table = split_table_name(name)
        ref = f"{self.project}.{dataset}.{table}"
        return self._counter.rpc("get_table", name, lambda: self._bq().get_table(ref, retry=None, timeout=RPC_TIMEOUT_S))

    def _managed_datasets(self) -> list[Any]:
        client = self._bq()

        def attempt() -> list[Any]:
            items: list[Any] = []
            pages = client.list_datasets(self.project, filter=f"labels.{MANAGED_BY_KEY}:{MANAGED_BY_VALUE}",
                                         page_size=LIST_PAGE_SIZE, retry=None, timeout=RPC_TIMEOUT_S).pages
            for page in pages:
                self._counter.count("list_datasets")
                items.extend(page)
            return items

        items = call(attempt, f"bigquery.list_datasets {self.project}")
        return [item for item in items if (item.labels or {}).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE]

    def _query(self, sql: str, *, location: str | None) -> list[dict[str, Any]]:
        client = self._bq()

        def attempt() -> list[dict[str, Any]]:
            self._counter.count("query")
            rows = client.query_and_wait(sql, location=location, project=self.project, api_timeout=RPC_TIMEOUT_S,
                                         wait_timeout=QUERY_TIMEOUT_S, retry=None, job_retry=None)
            result: list[dict[str, Any]] = []
            for number, page in enumerate(rows.pages):
                if number:
                    self._counter.count("query")
                result.extend(dict(row.items()) for row in page)
            return result

        return call(attempt, f"bigquery.query {self.project}")

    def _bq(self) -> bigquery.Client:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.project)
            return self._client

