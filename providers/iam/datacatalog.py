"""Data Catalog policy tag target of ``iam_binding``: ``datacatalog_policy_tag.<taxonomy>/<class>``.

The fine-grained reader role (``roles/datacatalog.categoryFineGrainedReader``) is granted on
the policy tag: ``PolicyTagManager.GetIamPolicy`` / ``SetIamPolicy`` of the tag's server name
(``projects/<p>/locations/<region>/taxonomies/<n>/policyTags/<m>``), google.iam.v1 requests with
the etag read (https://cloud.google.com/data-catalog/docs/reference/rest/v1/projects.locations.taxonomies.policyTags/setIamPolicy;
"Restrict access with column-level access control",
https://cloud.google.com/bigquery/docs/column-level-security).

Server names are ids the server chose; headwater names a tag by its taxonomy's display name and
its own display name. When built with ``resolve`` - the `providers.datacatalog.DataCatalogProvider`'s
``tag_id``, whose tag directory the data policies and column policies share - that directory
answers (listed once a run, and told of every tag the same apply creates). Without it (the
adapter alone, as in its request tests) they are resolved by listing the region's taxonomies and
each taxonomy's tags (``ListTaxonomies`` + ``ListPolicyTags``), again once when a name is not found.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from providers.calls import CallCounter
from providers.errors import NotFound
from providers.iam.policy import Policy, conflict, from_proto, to_proto

RPC_TIMEOUT_S = 60.0
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}


class PolicyTagAdapter:
    service = "datacatalog"

    def __init__(self, client: Callable[[], Any], project: str, region: str, calls: CallCounter,
                 resolve: Callable[[str], str | None] | None = None) -> None:
        self._client, self.project, self.region, self._calls = client, project, region, calls
        self._resolve = resolve
        self._names: dict[str, str] | None = None  # "<taxonomy>/<tag>" (display names) -> server name
        self._lock = threading.Lock()

    def path(self, name: str) -> str:
        if name.startswith("projects/"):
            return name
        if self._resolve is not None:
            found = self._resolve(name)
            if found is None:
                raise NotFound(f"datacatalog_policy_tag.{name}: no policy tag of that taxonomy and display name in "
                               f"projects/{self.project}/locations/{self.region}")
            return found
        with self._lock:
            if self._names is None or name not in self._names:
                self._names = self._list()
            if name not in self._names:
                raise NotFound(f"datacatalog_policy_tag.{name}: no policy tag of that taxonomy and display name in "
                               f"projects/{self.project}/locations/{self.region}")
            return self._names[name]

    def get(self, name: str) -> Policy:
        resource = self.path(name)
        self._calls.count("get_iam_policy")
        return from_proto(self._client().get_iam_policy(request={"resource": resource}, **_OPTS))

    def put(self, name: str, policy: Policy, changes: Mapping[str, set[str]]) -> None:
        request = {"resource": self.path(name), "policy": to_proto(policy, changes)}
        self._calls.count("set_iam_policy")
        conflict(lambda: self._client().set_iam_policy(request=request, **_OPTS), request["resource"])

    def _list(self) -> dict[str, str]:
        client = self._client()
        names: dict[str, str] = {}
        self._calls.count("list_taxonomies")
        for taxonomy in client.list_taxonomies(parent=f"projects/{self.project}/locations/{self.region}", **_OPTS):
            self._calls.count("list_policy_tags")
            for tag in client.list_policy_tags(parent=taxonomy.name, **_OPTS):
                names[f"{taxonomy.display_name}/{tag.display_name}"] = tag.name
        return names
