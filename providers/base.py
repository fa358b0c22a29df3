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
