"""BigQuery data policy target of ``iam_binding``: ``bigquery_data_policy.<data policy id>``.

The masked reader role (``roles/bigquerydatapolicy.maskedReader``) is granted on the data
policy: ``DataPolicyService.GetIamPolicy`` / ``SetIamPolicy`` of
``projects/<p>/locations/<region>/dataPolicies/<id>``, google.iam.v1 requests with the etag read
(https://cloud.google.com/bigquery/docs/reference/bigquerydatapolicy/rest/v1/projects.locations.dataPolicies/setIamPolicy;
"Mask column data", https://cloud.google.com/bigquery/docs/column-data-masking).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from providers.calls import CallCounter
from providers.iam.policy import Policy, conflict, from_proto, to_proto

RPC_TIMEOUT_S = 60.0
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}


class DataPolicyAdapter:
    service = "bigquerydatapolicy"

    def __init__(self, client: Callable[[], Any], project: str, region: str, calls: CallCounter) -> None:
        self._client, self.project, self.region, self._calls = client, project, region, calls

    def path(self, name: str) -> str:
        return name if name.startswith("projects/") else \
            f"projects/{self.project}/locations/{self.region}/dataPolicies/{name}"

    def get(self, name: str) -> Policy:
        self._calls.count("get_iam_policy")
        return from_proto(self._client().get_iam_policy(request={"resource": self.path(name)}, **_OPTS))

    def put(self, name: str, policy: Policy, changes: Mapping[str, set[str]]) -> None:
        request = {"resource": self.path(name), "policy": to_proto(policy, changes)}
        self._calls.count("set_iam_policy")
        conflict(lambda: self._client().set_iam_policy(request=request, **_OPTS), self.path(name))
