"""BigQuery targets of ``iam_binding``: datasets (access entries) and tables (IAM policies).

**Datasets** (``bigquery_dataset.<id>``) have no IAM policy of their own in the API headwater
uses: their access control is the dataset's ``access`` list, read with ``datasets.get`` and
written with ``datasets.patch`` carrying the dataset's etag as ``If-Match`` (the client's
``update_dataset(dataset, ["access_entries"])`` sends it), so a concurrent change fails with
412 and the read-modify-write is retried. The API takes an IAM role in an access entry but
answers with the legacy basic roles for the three that have one ("OWNER: roles/bigquery.dataOwner,
WRITER: roles/bigquery.dataEditor, READER: roles/bigquery.dataViewer. This field will accept any
of the above formats, but will return only the legacy format",
https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets#Dataset.FIELDS.access.role):
headwater writes those three in the legacy form and reads them back as the IAM role, so desired
and live compare equal; any other role is written and read as the IAM role.

Members <-> entries: ``user:`` and ``serviceAccount:`` are ``userByEmail`` (BigQuery keeps
service accounts there; one whose e-mail ends in ``.gserviceaccount.com`` is read back as
``serviceAccount:``), ``group:`` is ``groupByEmail``, ``domain:`` is ``domain``, anything else
(``principal://...``, ``allUsers``) is ``iamMember``. Special groups (projectOwners...), views,
routines and authorized datasets are other grants: never read as members, written back as read.

**Tables** (``bigquery_table.<dataset>.<table>``): ``tables.getIamPolicy`` / ``setIamPolicy``
(https://cloud.google.com/bigquery/docs/reference/rest/v2/tables/getIamPolicy); BigQuery's
client supports policy version 1 only for tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from providers.calls import CallCounter
from providers.iam.policy import Policy, conflict, from_core, to_core

RPC_TIMEOUT_S = 60.0
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
LEGACY = {"roles/bigquery.dataViewer": "READER", "roles/bigquery.dataEditor": "WRITER",
          "roles/bigquery.dataOwner": "OWNER"}
FROM_LEGACY = {legacy: role for role, legacy in LEGACY.items()}
_MEMBER_TYPES = {"userByEmail", "groupByEmail", "domain", "iamMember"}


def entry_of(role: str, member: str) -> tuple[str, str, str]:
    """(role as sent, entity type, entity id) of one member's access entry."""
    kind, _, value = member.partition(":")
    if kind in ("user", "serviceAccount"):
        entity = ("userByEmail", value)
    elif kind == "group":
        entity = ("groupByEmail", value)
    elif kind == "domain":
        entity = ("domain", value)
    else:
        entity = ("iamMember", member)
    return (LEGACY.get(role, role), *entity)


def member_of(entity_type: str, entity_id: str) -> str | None:
    """The IAM member of an access entry, or None for one that is not a member (a view, a special group)."""
    if entity_type == "userByEmail":
        return ("serviceAccount:" if entity_id.endswith(".gserviceaccount.com") else "user:") + entity_id
    if entity_type == "groupByEmail":
        return "group:" + entity_id
    if entity_type == "domain":
        return "domain:" + entity_id
    if entity_type == "iamMember":
        return entity_id
    return None


class DatasetAdapter:
    service = "bigquery"

    def __init__(self, client: Callable[[], Any], project: str, calls: CallCounter) -> None:
        self._client, self.project, self._calls = client, project, calls

    def get(self, name: str) -> Policy:
        self._calls.count("get_dataset")
        dataset = self._client().get_dataset(_dataset_ref(name, self.project), **_OPTS)
        members: dict[str, set[str]] = {}
        for entry in dataset.access_entries:
            member = member_of(entry.entity_type, entry.entity_id) if entry.entity_type in _MEMBER_TYPES else None
            if member is not None and entry.role:
                members.setdefault(FROM_LEGACY.get(entry.role, entry.role), set()).add(member)
        return Policy(members, dataset, dataset.etag)

    def put(self, name: str, policy: Policy, changes: Mapping[str, set[str]]) -> None:
        from google.cloud import bigquery

        dataset = policy.raw
        kept = []
        for entry in dataset.access_entries:
            role = FROM_LEGACY.get(entry.role, entry.role) if entry.role else None
            if role in changes and entry.entity_type in _MEMBER_TYPES:
                continue  # re-added below from the role's new members
            kept.append(entry)
        added = [bigquery.AccessEntry(*entry_of(role, member)) for role, members in sorted(changes.items())
                 for member in sorted(members)]
        dataset.access_entries = kept + added
        self._calls.count("patch_dataset")
        conflict(lambda: self._client().update_dataset(dataset, ["access_entries"], **_OPTS), f"dataset {name}")


class TableAdapter:
    service = "bigquery"

    def __init__(self, client: Callable[[], Any], project: str, calls: CallCounter) -> None:
        self._client, self.project, self._calls = client, project, calls

    def get(self, name: str) -> Policy:
        self._calls.count("get_table_iam_policy")
        return from_core(self._client().get_iam_policy(_table_ref(name, self.project), **_OPTS))

    def put(self, name: str, policy: Policy, changes: Mapping[str, set[str]]) -> None:
        new = to_core(policy, changes)
        self._calls.count("set_table_iam_policy")
        conflict(lambda: self._client().set_iam_policy(_table_ref(name, self.project), new, **_OPTS), f"table {name}")


def _dataset_ref(name: str, project: str) -> str:
    return name if "." in name else f"{project}.{name}"


def _table_ref(name: str, project: str) -> str:
    return name if name.count(".") >= 2 else f"{project}.{name}"
