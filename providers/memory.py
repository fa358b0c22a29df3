"""An in-memory provider for the reconciler's own unit tests.

It keeps the provider contract (idempotent create/update/delete, `AlreadyExists`, managed-label
filtering, one "list" per observe, `read` of named resources whoever manages them, and the
`would_lose` of its ``losses`` map) over a dict, so tests of plan and apply logic run in
milliseconds. It stands in for no GCP service in integration tests: those use the emulators.
Failures can be injected per address to exercise apply's error handling.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace

from providers.errors import AlreadyExists, PermanentError
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource


class MemoryProvider:
    def __init__(
        self,
        kinds: Sequence[Kind] = tuple(Kind),
        immutable_fields: Mapping[Kind, frozenset[str]] | None = None,
    ) -> None:
        self.kinds = tuple(kinds)
        self.immutable_fields = immutable_fields or {
            Kind.PUBSUB_SUBSCRIPTION: frozenset({"topic"}),
            Kind.STORAGE_BUCKET: frozenset({"location"}),
            Kind.BIGQUERY_DATASET: frozenset({"location"}),
            Kind.BIGQUERY_TABLE: frozenset({"time_partitioning"}),
        }
        self.objects: dict[str, Resource] = {}
        self.fail: dict[str, str] = {}  # address -> error message
        self.losses: dict[str, str] = {}  # address -> what deleting it would destroy (would_lose)
        self.calls: Counter[str] = Counter()
        # The engine observes and applies from several threads at once (reconciler/engine.py).
        self._lock = threading.Lock()

    def api_calls(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self.calls)

    def _count(self, call: str) -> None:
        with self._lock:
            self.calls[call] += 1

    def observe(self, kind: Kind) -> list[Resource]:
        self._count(f"memory.list.{kind}")
        return [
            r for r in list(self.objects.values())
            if r.kind == kind and r.labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE
        ]

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        self._count(f"memory.read.{kind}")
        # By name, as a service's get is (not a pass over every object: the scale benches read a
        # few names among 110,000).
        found = (self.objects.get(f"{kind}.{name}") for name in dict.fromkeys(names))
        return [r for r in found if r is not None]

    def would_lose(self, resources: Sequence[Resource]) -> Mapping[str, str]:
        return {r.address: self.losses[r.address] for r in resources if r.address in self.losses}

    def create(self, resource: Resource) -> None:
        self._maybe_fail(resource)
        self._count("memory.create")
        if resource.address in self.objects:
            raise AlreadyExists(f"{resource.address} already exists")
        self.objects[resource.address] = _live(resource)

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        self._maybe_fail(resource)
        self._count("memory.update")
        current = self.objects[resource.address]
        spec = dict(current.spec)
        labels = dict(current.labels)
        for name in fields:
            if name == "labels":
                labels = dict(resource.labels)
            else:
                spec[name] = resource.spec[name]
        self.objects[resource.address] = replace(current, spec=spec, labels=labels)

    def delete(self, resource: Resource) -> None:
        self._maybe_fail(resource)
        self._count("memory.delete")
        self.objects.pop(resource.address, None)

    def _maybe_fail(self, resource: Resource) -> None:
        if resource.address in self.fail:
            raise PermanentError(self.fail[resource.address])


def _live(resource: Resource) -> Resource:
    return Resource(resource.kind, resource.name, dict(resource.spec), dict(resource.labels))
