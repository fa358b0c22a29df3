"""The provider contract: how the reconciler reads and changes one GCP service.

A provider owns one or more resource kinds (see `reconciler.resources.Kind`) and talks to one
GCP service through its official client library. The reconciler core only ever sees this
protocol; `google.cloud.<service>` is imported by `providers/<service>.py` alone.

Contract (after crossplane-runtime's ExternalClient). Every method is idempotent:

``observe(kind) -> list[Resource]``
    Every live resource of ``kind`` in the project that carries ``managed-by=headwater``,
    with its spec in the canonical shape of `reconciler.resources.SPEC_SHAPES`: server
    defaults and equivalent encodings are normalized here, in the provider that knows them, so
    that a freshly applied resource compares equal to its desired twin. One list call per kind
    (or per dataset for tables), never one get per resource.

``create(resource)``
    Create the resource with all its declared fields and labels. If it already exists, raise
    `AlreadyExists`; the applier then converges it with ``update``.

``update(resource, fields)``
    Change only ``fields`` (top-level spec keys, or ``"labels"``) on the live resource to the
    values in ``resource``, sending a field mask / ``fields=`` that names nothing else. Fields
    listed in ``immutable_fields`` are never passed here: they force a replacement instead.

``delete(resource)``
    Delete the resource. Deleting one that is already gone succeeds.

``immutable_fields[kind]``
    Spec keys whose change cannot be applied in place (the plan shows a replacement).

Errors: every ``google.api_core`` exception is translated by `providers.errors.translate`
into `TemporaryError` (retried with backoff) or `PermanentError` (reported).

Optional abilities (a provider has them or not; `reconciler.engine` asks through `read_with`
and `losses_with`, which tolerate their absence):

``read(kind, names) -> list[Resource]`` (`Reader`)
    The named resources of ``kind`` that exist, *whoever manages them*, in the same canonical
    shape as ``observe`` (labels whole, so the planner can tell they are not headwater's). A name
    may be a full resource name in another project (``projects/p/topics/t``): a reference,
    read to check that it exists. The engine calls it only for declared resources that observe
    did not find (none once a platform has converged) and for references, so it may cost one
    get per name. Also used by apply when a create meets ``AlreadyExists``: a resource that is
    not headwater's is then refused, never converged.

``would_lose(resources) -> {address: phrase}`` (`LossReporter`)
    For live data-holding resources a plan deletes or replaces, what that would destroy, as a
    short phrase ("5 unacked messages"); addresses it cannot observe are left out. Called only
    when a plan has such changes.

``health(resources) -> {address: reconciler.health.Observation}`` (`HealthReporter`, issue 11)
    For declared resources of the provider's kinds, what it sees of their health: a verdict
    (Healthy, Progressing, Degraded...) with its reason, the last error, a log tail, and named
    signals (a table's newest record, a subscription's backlog; `reconciler.health` lists them).
    Addresses it has nothing to say about are left out. Read only, and cheap: one list call per
    kind, or a metadata read per table at most; never a scan of data (on the emulators, where a
    scan costs nothing, an EMULATOR DEPARTURE may query). Asked by ``headwater status`` and the
    daemon's health checks (`reconciler.health.observe_health`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, runtime_checkable

from reconciler.resources import Kind, Resource


@runtime_checkable
class Provider(Protocol):
    """One GCP service. Contract in the module docstring."""

    #: The kinds this provider owns.
    kinds: tuple[Kind, ...]
    #: Per kind, the spec keys that force a replacement when they change.
    immutable_fields: Mapping[Kind, frozenset[str]]

    def observe(self, kind: Kind) -> list[Resource]: ...

    def create(self, resource: Resource) -> None: ...

    def update(self, resource: Resource, fields: Sequence[str]) -> None: ...

    def delete(self, resource: Resource) -> None: ...


class ApiCallCounter(Protocol):
    """Optional ability: providers that count their API calls (for benchmarks and metrics)."""

    def api_calls(self) -> Mapping[str, int]:
        """Calls made so far, keyed by ``service.method``."""
        ...


@runtime_checkable
class SecretStore(Protocol):
    """Optional ability: whether secrets exist, never their values (`providers.secretmanager`:
    Secret Manager on GCP, files locally). For checking, before a deploy, that every secret a
    ``cloud_run_service`` references (``spec["secrets"]`` values) is there."""

    def missing(self, secret_ids: Collection[str]) -> set[str]:
        """The ids among ``secret_ids`` that do not exist (one list call for all of them)."""
        ...


@runtime_checkable
class Reader(Protocol):
    """Optional ability: read named resources whoever manages them (contract in the module docstring)."""

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]: ...


@runtime_checkable
class LossReporter(Protocol):
    """Optional ability: what deleting or replacing live data-holding resources would destroy."""

    def would_lose(self, resources: Sequence[Resource]) -> Mapping[str, str]: ...


@runtime_checkable
class HealthReporter(Protocol):
    """Optional ability: the health of declared resources (contract in the module docstring)."""

    def health(self, resources: Sequence[Resource]) -> Mapping[str, object]: ...


def health_with(provider: Provider, resources: Sequence[Resource]) -> Mapping[str, object]:
    """``provider.health(resources)``, or nothing when the provider cannot tell."""
    reporter = getattr(provider, "health", None)
    return dict(reporter(list(resources))) if reporter is not None and resources else {}


def read_with(provider: Provider, kind: Kind, names: Collection[str]) -> list[Resource]:
    """``provider.read(kind, names)``, or nothing when the provider cannot read (or nothing is asked)."""
    reader = getattr(provider, "read", None)
    return list(reader(kind, sorted(set(names)))) if reader is not None and names else []


def losses_with(provider: Provider, resources: Sequence[Resource]) -> Mapping[str, str]:
    """``provider.would_lose(resources)``, or nothing when the provider cannot tell."""
    reporter = getattr(provider, "would_lose", None)
    return dict(reporter(resources)) if reporter is not None and resources else {}
