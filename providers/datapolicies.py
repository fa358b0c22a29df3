"""BigQuery data policies provider: one masking policy per classification (issue 13).

Kind: ``bigquery_data_policy`` (name: the data policy id, ``<class>_mask``), compiled by
`reconciler.classification`. This module, with ``google-cloud-bigquery-datapolicies``
(``bigquery_datapolicies_v1.DataPolicyServiceClient``), is the only one that imports it. On the
emulators the kind is recorded by `providers.local_record` instead (no emulator masks anything).

API (BigQuery Data Policy v1:
https://cloud.google.com/bigquery/docs/reference/bigquerydatapolicy/rest/v1/projects.locations.dataPolicies)
---------------------------------------------------------------------------------------------------------
A data policy ``projects/<p>/locations/<region>/dataPolicies/<data_policy_id>`` binds a policy
tag to a masking rule (``data_policy_type`` DATA_MASKING_POLICY): readers holding
``roles/bigquerydatapolicy.maskedReader`` on it read the tagged columns masked, those holding
``roles/datacatalog.categoryFineGrainedReader`` on the tag read them clear, everyone else is
refused the column. The id is chosen (letters, digits, underscores) and unique *within the
project*; the region must be the taxonomy's. ``data_masking_policy`` is one of a
``predefined_expression`` (SHA256, ALWAYS_NULL, DEFAULT_MASKING_VALUE, ...) or a ``routine``
(``projects/<p>/datasets/<d>/routines/<r>``, a masking UDF).

Canonical spec::

    {"policy_tag": "<taxonomy>/<class>",        # headwater's name of the tag (immutable)
     "masking": "SHA256" | "ALWAYS_NULL" | "DEFAULT_MASKING_VALUE" | "routine:<dataset>.<routine>"}

Ownership: data policies carry no labels. One is headwater's when its policy tag is a tag of a
headwater taxonomy (`providers.datacatalog`), and its ``headwater-platform`` is that taxonomy's
environment: observe reports those only, with ``managed-by``/``headwater-platform`` labels. The
id ``<class>_mask`` is the contract's; two environments in one project would need the same id,
and the second's create fails (ALREADY_EXISTS; `read` shows it as the other platform's).

Observe is ONE ``list_data_policies`` for the region (paged), plus the tag directory's lists
(`providers.datacatalog.PolicyTagDirectory`, shared: listed once a run). Create sends the whole
policy with its id; update sends an update mask of ``data_masking_policy`` (its tag and type are
immutable: a change replaces it); delete is ``delete_data_policy`` (gone already succeeds).

Verified here against the client library's types and, through its gRPC transport, a local
endpoint (tests/fake_datacatalog.py). Verified only against the real service: that masking
applies to maskedReader holders as the docs say, a routine's requirements (a masking routine in
the same project, ``DATA_MASKING`` type), and that a policy on a tag of another region is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from google.cloud import bigquery_datapolicies_v1 as dp

from providers.calls import CallCounter
from providers.datacatalog import DataCatalogProvider
from providers.errors import NotFound, PermanentError, call
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, PLATFORM_KEY, Kind, Resource

T = TypeVar("T")

DATA_POLICY = Kind.BIGQUERY_DATA_POLICY
KINDS = (DATA_POLICY,)
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {DATA_POLICY: frozenset({"policy_tag"})}
MASKS = {"masking": "data_masking_policy"}
ROUTINE = "routine:"
LIST_PAGE_SIZE = 1000
RPC_TIMEOUT_S = 60.0


def masking_policy(masking: str, project: str) -> dp.DataMaskingPolicy:
    """The spec's masking as the API's: a predefined expression, or ``routine:<ds>.<r>`` as the
    routine's resource name in ``project``."""
    if masking.startswith(ROUTINE):
        dataset, _, routine = masking[len(ROUTINE):].partition(".")
        if not dataset or not routine:
            raise PermanentError(f"masking {masking!r}: expected routine:<dataset>.<routine>")
        return dp.DataMaskingPolicy(routine=f"projects/{project}/datasets/{dataset}/routines/{routine}")
    try:
        return dp.DataMaskingPolicy(predefined_expression=dp.DataMaskingPolicy.PredefinedExpression[masking])
    except KeyError:
        raise PermanentError(f"masking {masking!r}: not a predefined masking expression") from None


def masking_spec(policy: dp.DataMaskingPolicy) -> str:
    """The API's masking in the spec's form (a routine of another project keeps its full name)."""
    if policy.routine:
        parts = policy.routine.split("/")
        if len(parts) == 6 and parts[0] == "projects" and parts[2] == "datasets" and parts[4] == "routines":
            return f"{ROUTINE}{parts[3]}.{parts[5]}"
        return f"{ROUTINE}{policy.routine}"
    return dp.DataMaskingPolicy.PredefinedExpression(policy.predefined_expression).name


def build_data_policy(resource: Resource, tag_id: str, project: str) -> dp.DataPolicy:
    return dp.DataPolicy(
        data_policy_id=resource.name,
        policy_tag=tag_id,
        data_policy_type=dp.DataPolicy.DataPolicyType.DATA_MASKING_POLICY,
        data_masking_policy=masking_policy(resource.spec["masking"], project),
    )


def data_policy_resource(policy: dp.DataPolicy, tag_names: Mapping[str, str]) -> Resource:
    """The canonical view; ``tag_names``: server name -> headwater tag name (another's tag keeps
    its server name, and the policy reads as not headwater's)."""
    tag = tag_names.get(policy.policy_tag)
    labels: dict[str, str] = {}
    if tag is not None:
        environment = tag.split("/", 1)[0].removeprefix("headwater-")
        labels = {MANAGED_BY_KEY: MANAGED_BY_VALUE, PLATFORM_KEY: environment}
    spec = {"policy_tag": tag or policy.policy_tag, "masking": masking_spec(policy.data_masking_policy)
            if "data_masking_policy" in policy else dp.DataPolicy.DataPolicyType(policy.data_policy_type).name}
    return Resource(DATA_POLICY, policy.data_policy_id or policy.name.rsplit("/", 1)[-1], spec, labels,
                    status={"id": policy.name})


class DataPolicyProvider:
    """Headwater's masking policies in one project and region. Contract: `providers.base.Provider`
    (and `Reader`). ``catalog``: the `DataCatalogProvider` whose tag directory resolves tags;
    ``client``: for tests, a ``DataPolicyServiceClient`` pointed at a local endpoint."""

    kinds: tuple[Kind, ...] = KINDS
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, location: str, catalog: DataCatalogProvider, *, client: Any = None) -> None:
        self.project = project
        self.location = location
        self.catalog = catalog
        self._client = client
        self._lock = threading.Lock()
        self._counter = CallCounter("bigquerydatapolicy")

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def policy_id(self, name: str) -> str:
        return f"{self.parent}/dataPolicies/{name}"

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        return [r for r in self._live(kind) if r.managed]

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        wanted = set(names)
        return [r for r in self._live(kind) if r.name in wanted]

    def create(self, resource: Resource) -> None:
        self._check(resource.kind)
        policy = build_data_policy(resource, self._tag(resource), self.project)
        request = dp.CreateDataPolicyRequest(parent=self.parent, data_policy=policy)
        # The id is chosen: a second create is ALREADY_EXISTS (AlreadyExists), never a twin.
        self._rpc("create_data_policy", resource.name, lambda: self._dp().create_data_policy(request=request, **_OPTS))

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        self._check(resource.kind)
        paths = sorted({MASKS[f] for f in fields if f in MASKS})
        unknown = [f for f in fields if f not in MASKS and f != "labels"]
        if unknown:
            raise PermanentError(f"{resource.address}: {unknown} cannot change in place")
        if not paths:
            return  # labels: data policies have none (module docstring)
        policy = build_data_policy(resource, self._tag(resource), self.project)
        policy.name = self.policy_id(resource.name)
        request = dp.UpdateDataPolicyRequest(data_policy=policy, update_mask={"paths": paths})
        self._rpc("update_data_policy", resource.name, lambda: self._dp().update_data_policy(request=request, **_OPTS))

    def delete(self, resource: Resource) -> None:
        self._check(resource.kind)
        request = dp.DeleteDataPolicyRequest(name=(resource.status or {}).get("id") or self.policy_id(resource.name))
        try:
            self._rpc("delete_data_policy", resource.name, lambda: self._dp().delete_data_policy(request=request, **_OPTS))
        except NotFound:
            pass  # gone already

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    # -- plumbing --

    def _check(self, kind: Kind | str) -> None:
        if Kind(kind) != DATA_POLICY:
            raise PermanentError(f"bigquerydatapolicy: unsupported kind {kind!r}")

    def _tag(self, resource: Resource) -> str:
        tag = self.catalog.tag_id(resource.spec["policy_tag"])
        if tag is None:
            raise NotFound(f"{resource.address}: policy tag {resource.spec['policy_tag']} does not exist "
                           "(datacatalog_policy_tag is applied first: plan again)")
        return tag

    def _live(self, kind: Kind) -> list[Resource]:
        self._check(kind)
        request = dp.ListDataPoliciesRequest(parent=self.parent, page_size=LIST_PAGE_SIZE)

        def attempt() -> list[dp.DataPolicy]:
            self._counter.count("list_data_policies")
            items: list[dp.DataPolicy] = []
            for number, page in enumerate(self._dp().list_data_policies(request=request, **_OPTS).pages):
                if number:
                    self._counter.count("list_data_policies")
                items.extend(page.data_policies)
            return items

        policies = call(attempt, f"bigquerydatapolicy.list_data_policies {self.parent}")
        tag_names = self.catalog.tag_names()
        return [data_policy_resource(p, tag_names) for p in policies]

    def _dp(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = dp.DataPolicyServiceClient()
            return self._client

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)


# Retries are providers.errors.call's job, not the client library's.
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
