"""Data Catalog provider: the platform's taxonomy and its policy tags (issue 13, column-level security).

Kinds: ``datacatalog_taxonomy`` (name: its display name, ``headwater-<environment>``) and
``datacatalog_policy_tag`` (name: ``<taxonomy>/<class>``), compiled by
`reconciler.classification` (docs/governance.md, "PII and column-level security"). This module,
with ``google-cloud-datacatalog`` (``datacatalog_v1.PolicyTagManagerClient``), is the only one
that imports it. On the emulators these kinds are recorded by `providers.local_record` instead
(Data Catalog has no emulator).

API (Policy Tag Manager, v1:
https://cloud.google.com/data-catalog/docs/reference/rpc/google.cloud.datacatalog.v1#policytagmanager)
-----------------------------------------------------------------------------------------------
* taxonomies live in ``projects/<p>/locations/<region>`` (the region of the BigQuery datasets
  whose columns their tags protect) and have server-assigned ids
  (``.../taxonomies/<number>``); the display name "must be unique within an organization";
* a policy tag is ``.../taxonomies/<t>/policyTags/<number>``, its display name unique within its
  parent; deleting a taxonomy deletes its tags, deleting a tag deletes its children;
* fine-grained access control is on when the taxonomy's ``activated_policy_types`` holds
  ``FINE_GRAINED_ACCESS_CONTROL``: only then does a tag on a column restrict it.

Ownership and identity
----------------------
Neither taxonomies nor policy tags carry labels. A taxonomy is headwater's when its display name
is ``headwater-<environment>``; its ``headwater-platform`` is that environment, and observe
reports it with the labels ``managed-by=headwater``, ``headwater-platform=<environment>`` (which
is what compile declares, so they compare equal). A policy tag is headwater's when it is a
top-level tag of a headwater taxonomy (children are someone else's refinement, never touched).
The server's ids are looked up by display name, never stored: observe lists taxonomies (ONE
``list_taxonomies`` for the region, paged) and, for the tag kind, ONE ``list_policy_tags`` per
headwater taxonomy (tags are children of their taxonomy, as tables are of their dataset).

`PolicyTagDirectory` keeps what the last list found: headwater tag name <-> server name. The data
policy and column providers (`providers.datapolicies`, `providers.bigquery_columns`) resolve tags
through it, so a run lists the tags once, and a tag this provider creates is known at once.

Operations
----------
* taxonomy: ``create_taxonomy`` (display name, description, activated policy types);
  ``update_taxonomy`` with an update mask of ``description`` / ``activated_policy_types``;
  ``delete_taxonomy`` (its tags go with it: the columns they tagged are no longer restricted, a
  security-relevant change the plan shows). Display name and location are immutable (the name).
* policy tag: ``create_policy_tag`` under its taxonomy; ``update_policy_tag`` with an update
  mask of ``description``; ``delete_policy_tag``. Its taxonomy and display name are immutable.
* A create of what the last list found is `AlreadyExists`; a delete of what is gone succeeds.

Verified here against the client library's own types and, through its gRPC transport, a local
endpoint (tests/fake_datacatalog.py). Verified only against the real service: that the display
name's organization-wide uniqueness makes a second platform of the same environment name in the
organization fail at create (ALREADY_EXISTS, reported); which defaults the server fills in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from google.cloud import datacatalog_v1 as dc

from providers.calls import CallCounter
from providers.errors import AlreadyExists, NotFound, PermanentError, call
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, PLATFORM_KEY, Kind, Resource

T = TypeVar("T")

TAXONOMY, POLICY_TAG = Kind.DATACATALOG_TAXONOMY, Kind.DATACATALOG_POLICY_TAG
KINDS = (TAXONOMY, POLICY_TAG)
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    TAXONOMY: frozenset({"display_name", "location"}),
    POLICY_TAG: frozenset({"taxonomy", "display_name"}),
}
TAXONOMY_MASKS = {"description": "description", "activated_policy_types": "activated_policy_types"}
TAG_MASKS = {"description": "description"}
PREFIX = "headwater-"  # a headwater taxonomy's display name: headwater-<environment>
LIST_PAGE_SIZE = 1000
RPC_TIMEOUT_S = 60.0


def environment_of(display_name: str) -> str | None:
    """The environment of a headwater taxonomy's display name, or None for another's."""
    return (display_name[len(PREFIX):] or None) if display_name.startswith(PREFIX) else None


def owner_labels(taxonomy_display_name: str) -> dict[str, str]:
    """The labels observe reports for a taxonomy (and its tags): headwater's, or none."""
    environment = environment_of(taxonomy_display_name)
    return {MANAGED_BY_KEY: MANAGED_BY_VALUE, PLATFORM_KEY: environment} if environment else {}


def build_taxonomy(resource: Resource) -> dc.Taxonomy:
    spec = resource.spec
    return dc.Taxonomy(
        display_name=spec.get("display_name") or resource.name,
        description=spec.get("description") or "",
        activated_policy_types=[dc.Taxonomy.PolicyType[t] for t in spec.get("activated_policy_types") or []],
    )


def taxonomy_resource(taxonomy: dc.Taxonomy, location: str) -> Resource:
    spec = {
        "display_name": taxonomy.display_name,
        "description": taxonomy.description,
        "location": location,
        "activated_policy_types": sorted(dc.Taxonomy.PolicyType(t).name for t in taxonomy.activated_policy_types),
    }
    return Resource(TAXONOMY, taxonomy.display_name, spec, owner_labels(taxonomy.display_name),
                    status={"id": taxonomy.name})


def build_policy_tag(resource: Resource) -> dc.PolicyTag:
    spec = resource.spec
    return dc.PolicyTag(display_name=spec.get("display_name") or resource.name.rsplit("/", 1)[-1],
                        description=spec.get("description") or "")


def policy_tag_resource(tag: dc.PolicyTag, taxonomy_display_name: str) -> Resource:
    spec = {"taxonomy": taxonomy_display_name, "display_name": tag.display_name, "description": tag.description}
    return Resource(POLICY_TAG, f"{taxonomy_display_name}/{tag.display_name}", spec,
                    owner_labels(taxonomy_display_name), status={"id": tag.name})


def mask(fields: Sequence[str], masks: Mapping[str, str], what: str) -> list[str]:
    """The update mask for ``fields``; ``labels`` carries nothing (these kinds have none)."""
    paths = set()
    for name in fields:
        if name == "labels":
            continue
        if name not in masks:
            raise PermanentError(f"{what}: {name!r} cannot change in place")
        paths.add(masks[name])
    return sorted(paths)


class PolicyTagDirectory:
    """Headwater's taxonomies and tags by name <-> server name, as the last list found them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.listed_taxonomies = False
        self.listed_tags = False
        self.taxonomies: dict[str, str] = {}  # display name -> server name (headwater's)
        self.tags: dict[str, str] = {}  # <taxonomy>/<class> -> server name (headwater's)

    def replace_taxonomies(self, found: Mapping[str, str]) -> None:
        with self._lock:
            self.taxonomies, self.listed_taxonomies = dict(found), True

    def replace_tags(self, found: Mapping[str, str]) -> None:
        with self._lock:
            self.tags, self.listed_tags = dict(found), True

    def names(self) -> dict[str, str]:
        """Server name -> headwater tag name."""
        with self._lock:
            return {server: name for name, server in self.tags.items()}


class DataCatalogProvider:
    """Headwater's taxonomy and policy tags in one project and region. Contract:
    `providers.base.Provider`. ``client``: for tests, a ``PolicyTagManagerClient`` pointed at a
    local endpoint; default: the official client with Application Default Credentials."""

    kinds: tuple[Kind, ...] = KINDS
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, location: str, *, client: Any = None) -> None:
        self.project = project
        self.location = location
        self._client = client
        self._client_lock = threading.Lock()
        self._counter = CallCounter("datacatalog")
        self.directory = PolicyTagDirectory()

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        kind = Kind(kind)
        if kind == TAXONOMY:
            return [taxonomy_resource(t, self.location) for t in self._list_taxonomies() if environment_of(t.display_name)]
        if kind == POLICY_TAG:
            return self._observe_tags()
        raise PermanentError(f"datacatalog: unsupported kind {kind!r}")

    def create(self, resource: Resource) -> None:
        kind = Kind(resource.kind)
        if kind == TAXONOMY:
            if self._taxonomy_id(resource.name) is not None:
                raise AlreadyExists(f"{resource.address} already exists")
            request = dc.CreateTaxonomyRequest(parent=self.parent, taxonomy=build_taxonomy(resource))
            created = self._rpc("create_taxonomy", resource.name,
                                lambda: self._dc().create_taxonomy(request=request, **_OPTS))
            with self.directory._lock:
                self.directory.taxonomies[resource.name] = created.name
            return
        if kind == POLICY_TAG:
            if self.tag_id(resource.name) is not None:
                raise AlreadyExists(f"{resource.address} already exists")
            parent = self._taxonomy_id(resource.spec["taxonomy"])
            if parent is None:
                raise NotFound(f"{resource.address}: taxonomy {resource.spec['taxonomy']} does not exist "
                               "(datacatalog_taxonomy is applied first: plan again)")
            request = dc.CreatePolicyTagRequest(parent=parent, policy_tag=build_policy_tag(resource))
            created = self._rpc("create_policy_tag", resource.name,
                                lambda: self._dc().create_policy_tag(request=request, **_OPTS))
            with self.directory._lock:
                self.directory.tags[resource.name] = created.name
            return
        raise PermanentError(f"datacatalog: unsupported kind {kind!r}")

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        kind = Kind(resource.kind)
        if kind == TAXONOMY:
            paths = mask(fields, TAXONOMY_MASKS, resource.address)
            name = self._taxonomy_id(resource.name)
            if not paths:
                return
            if name is None:
                raise NotFound(f"{resource.address} is gone (plan again)")
            taxonomy = build_taxonomy(resource)
            taxonomy.name = name
            request = dc.UpdateTaxonomyRequest(taxonomy=taxonomy, update_mask={"paths": paths})
            self._rpc("update_taxonomy", resource.name, lambda: self._dc().update_taxonomy(request=request, **_OPTS))
            return
        if kind == POLICY_TAG:
            paths = mask(fields, TAG_MASKS, resource.address)
            name = self.tag_id(resource.name)
            if not paths:
                return
            if name is None:
                raise NotFound(f"{resource.address} is gone (plan again)")
            tag = build_policy_tag(resource)
            tag.name = name
            request = dc.UpdatePolicyTagRequest(policy_tag=tag, update_mask={"paths": paths})
            self._rpc("update_policy_tag", resource.name, lambda: self._dc().update_policy_tag(request=request, **_OPTS))
            return
        raise PermanentError(f"datacatalog: unsupported kind {kind!r}")

    def delete(self, resource: Resource) -> None:
        kind = Kind(resource.kind)
        if kind not in KINDS:
            raise PermanentError(f"datacatalog: unsupported kind {kind!r}")
        name = (resource.status or {}).get("id") or (
            self._taxonomy_id(resource.name) if kind == TAXONOMY else self.tag_id(resource.name))
        if name is None:
            return  # gone already
        try:
            if kind == TAXONOMY:
                request = dc.DeleteTaxonomyRequest(name=name)
                self._rpc("delete_taxonomy", resource.name,
                          lambda: self._dc().delete_taxonomy(request=request, **_OPTS))
            else:
                request = dc.DeletePolicyTagRequest(name=name)
                self._rpc("delete_policy_tag", resource.name,
                          lambda: self._dc().delete_policy_tag(request=request, **_OPTS))
        except NotFound:
            pass
        with self.directory._lock:
            if kind == TAXONOMY:
                self.directory.taxonomies.pop(resource.name, None)
                prefix = f"{resource.name}/"
                for tag in [t for t in self.directory.tags if t.startswith(prefix)]:
                    del self.directory.tags[tag]  # a taxonomy's tags go with it
            else:
                self.directory.tags.pop(resource.name, None)

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    # -- the directory (for providers.datapolicies and providers.bigquery_columns) --

    def tag_id(self, name: str) -> str | None:
        """The server name of headwater's policy tag ``<taxonomy>/<class>`` (listed if never listed)."""
        if not self.directory.listed_tags:
            self._observe_tags()
        with self.directory._lock:
            return self.directory.tags.get(name)

    def tag_names(self) -> dict[str, str]:
        """Server name -> headwater tag name of every headwater tag (listed if never listed)."""
        if not self.directory.listed_tags:
            self._observe_tags()
        return self.directory.names()

    # -- plumbing --

    def _observe_tags(self) -> list[Resource]:
        resources: list[Resource] = []
        for taxonomy in self._list_taxonomies():
            if not environment_of(taxonomy.display_name):
                continue
            request = dc.ListPolicyTagsRequest(parent=taxonomy.name, page_size=LIST_PAGE_SIZE)
            tags = self._paged("list_policy_tags", taxonomy.display_name,
                               lambda request=request: self._dc().list_policy_tags(request=request, **_OPTS),
                               "policy_tags")
            resources += [policy_tag_resource(t, taxonomy.display_name) for t in tags if not t.parent_policy_tag]
        self.directory.replace_tags({r.name: r.status["id"] for r in resources})
        return resources

    def _taxonomy_id(self, display_name: str) -> str | None:
        if not self.directory.listed_taxonomies:
            self._list_taxonomies()
        with self.directory._lock:
            return self.directory.taxonomies.get(display_name)

    def _list_taxonomies(self) -> list[dc.Taxonomy]:
        request = dc.ListTaxonomiesRequest(parent=self.parent, page_size=LIST_PAGE_SIZE)
        found = self._paged("list_taxonomies", self.parent,
                            lambda: self._dc().list_taxonomies(request=request, **_OPTS), "taxonomies")
        self.directory.replace_taxonomies({t.display_name: t.name for t in found if environment_of(t.display_name)})
        return found

    def _paged(self, method: str, target: str, first: Callable[[], Any], field: str) -> list[Any]:
        def attempt() -> list[Any]:
            self._counter.count(method)
            items: list[Any] = []
            for number, page in enumerate(first().pages):
                if number:
                    self._counter.count(method)
                items.extend(getattr(page, field))
            return items

        return call(attempt, f"datacatalog.{method} {target}")

    def _dc(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = dc.PolicyTagManagerClient()
            return self._client

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)


# Retries are providers.errors.call's job, not the client library's.
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
