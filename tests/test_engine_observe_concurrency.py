"""Issue 14: the engine observes kinds (and a provider's parts of a kind) concurrently, with the
same results and the same errors as one after another (reconciler/engine.py, `gather`)."""

from __future__ import annotations

import threading

import pytest

from providers import errors
from providers.errors import PermanentError
from providers.memory import MemoryProvider
from reconciler.engine import Engine, gather
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

MANAGED = {MANAGED_BY_KEY: MANAGED_BY_VALUE}


def populated(kinds=(Kind.PUBSUB_TOPIC, Kind.STORAGE_BUCKET, Kind.BIGQUERY_DATASET)) -> MemoryProvider:
    provider = MemoryProvider()
    for kind in kinds:
        for i in range(3):
            resource = Resource(kind, f"{kind}-{i}", {}, dict(MANAGED))
            provider.objects[resource.address] = resource  # (by address, as create stores it: read gets by it)
    return provider


class Waiting:
    """Observes only once every other kind's observe has started: proves they run at once."""

    immutable_fields: dict = {}

    def __init__(self, kinds: tuple[Kind, ...], failing: dict[Kind, str] | None = None) -> None:
        self.kinds = kinds
        self.failing = failing or {}
        self.barrier = threading.Barrier(len(kinds), timeout=30)
        self.seen: list[Kind] = []

    def observe(self, kind: Kind) -> list[Resource]:
        self.barrier.wait()
        self.seen.append(kind)
        if kind in self.failing:
            raise PermanentError(self.failing[kind])
        return [Resource(kind, f"{kind}-x", {}, dict(MANAGED))]


def test_kinds_are_observed_at_once_with_the_same_result() -> None:
    provider = populated()
    concurrent = Engine([provider]).observe()
    sequential = Engine([provider], observe_workers=1).observe()
    assert concurrent == sequential and len(concurrent) == 9
    kinds = (Kind.PUBSUB_TOPIC, Kind.STORAGE_BUCKET, Kind.BIGQUERY_DATASET)
    waiting = Waiting(kinds)
    assert [r.kind for r in Engine([waiting]).observe()] == list(kinds)  # in the kinds' order
    assert sorted(waiting.seen) == sorted(kinds)


def test_the_first_kind_in_order_that_fails_is_the_error_raised() -> None:
    kinds = (Kind.PUBSUB_TOPIC, Kind.STORAGE_BUCKET, Kind.BIGQUERY_DATASET)
    waiting = Waiting(kinds, failing={Kind.STORAGE_BUCKET: "bucket list failed", Kind.BIGQUERY_DATASET: "later"})
    with pytest.raises(PermanentError, match="bucket list failed"):
        Engine([waiting]).observe()
    assert sorted(waiting.seen) == sorted(kinds)  # every kind ran to its end


class Split(MemoryProvider):
    """A provider that splits a kind's observe into parts (`observe_parts`), as BigQuery does per dataset."""

    def __init__(self, parts: int, failing: int | None = None) -> None:
        super().__init__(kinds=(Kind.BIGQUERY_TABLE, Kind.PUBSUB_TOPIC))
        self.n, self.failing = parts, failing
        self.barrier = threading.Barrier(parts, timeout=30)

    def observe_parts(self, kind: Kind):
        if kind != Kind.BIGQUERY_TABLE:
            return [lambda: self.observe(kind)]

        def part(i: int):
            self.barrier.wait()
            if i == self.failing:
                raise PermanentError(f"dataset d{i} failed")
            return [Resource(kind, f"d{i}.t{j}", {}, dict(MANAGED)) for j in range(2)]

        return [lambda i=i: part(i) for i in range(self.n)]


def test_parts_of_a_kind_run_at_once_and_come_back_in_order() -> None:
    provider = Split(parts=4)
    provider.objects["pubsub_topic.a"] = Resource(Kind.PUBSUB_TOPIC, "a", {}, dict(MANAGED))
    found = Engine([provider]).observe([Kind.BIGQUERY_TABLE, Kind.PUBSUB_TOPIC])
    assert [r.name for r in found] == [f"d{i}.t{j}" for i in range(4) for j in range(2)] + ["a"]
    with pytest.raises(PermanentError, match="dataset d2 failed"):
        Engine([Split(parts=4, failing=2)]).observe()


def test_reads_by_kind_run_at_once_in_the_order_asked() -> None:
    provider = populated()
    engine = Engine([provider])
    names = {Kind.STORAGE_BUCKET: ["storage_bucket-1"], Kind.PUBSUB_TOPIC: ["pubsub_topic-0", "missing"]}
    assert [r.name for r in engine.read(names)] == ["storage_bucket-1", "pubsub_topic-0"]


def test_a_deadline_set_around_observe_holds_in_the_workers() -> None:
    seen = []

    def look() -> list:
        seen.append(errors._deadline.get())
        return []

    with errors.deadline(12345.0):
        gather([look, look], workers=2)
    assert seen == [12345.0, 12345.0]


def test_call_counts_are_exact_under_concurrency() -> None:
    provider = populated()
    engine = Engine([provider])
    for _ in range(20):
        engine.observe()
    assert provider.api_calls()[f"memory.list.{Kind.PUBSUB_TOPIC}"] == 20
    assert sum(provider.api_calls().values()) == 20 * len(Kind)
