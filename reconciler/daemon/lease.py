"""One applier at a time: a lease lock kept in one small object of a compare-and-swap store.

Several daemons may run against one platform (a rolling deploy overlaps two Cloud Run
revisions for a while; someone may start one by hand). Only the holder of the lease applies;
the others observe and report. The lease lives in a Cloud Storage object whose *generation*
(a number that changes on every write) gives compare-and-swap:

* **acquire**: create the object only if it does not exist (``if_generation_match=0``);
* **renew**: rewrite it only if it is still the generation we wrote (``if_generation_match=g``);
  a mismatch means someone took it over: we lost the lease and stop applying;
* **take over**: an object whose ``expires_at`` has passed belongs to a daemon that died
  without releasing it; rewrite it on the generation we read, so two contenders cannot both win;
* **release**: delete it on our generation (shutdown), so a successor need not wait for expiry.

A holder renews every third of the lease duration. It considers itself the holder only while its
last successful write is younger than the duration minus a safety margin, measured on its own
monotonic clock: a daemon that cannot reach the store stops applying *before* anyone else can
take over (their view of expiry uses the wall-clock ``expires_at``; the margin absorbs skew).

The daemon depends only on the small `LeaseStore` protocol; the Cloud Storage implementation
is `providers.storage_lock.GcsLeaseStore` (the only module of the lock that imports
google.cloud.storage). `MemoryLeaseStore` enforces the same preconditions for unit tests, and
`SoloLease` is the stand-in when no lock bucket is configured (a single instance by deployment).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class LeaseConflict(Exception):
    """A precondition failed: the object is not (or no longer) what we expected."""


class LeaseStore(Protocol):
    """A single object with generation preconditions."""

    def describe(self) -> str:
        """Where the lease lives, for status and logs (e.g. ``gs://bucket/object``)."""
        ...

    def read(self) -> tuple[int, bytes] | None:
        """The current (generation, body), or None when there is no object."""
        ...

    def create(self, body: bytes) -> int:
        """Write the object if it does not exist; its new generation. `LeaseConflict` if it exists."""
        ...

    def replace(self, body: bytes, generation: int) -> int:
        """Rewrite the object if it is still at ``generation``; the new one. Else `LeaseConflict`."""
        ...

    def delete(self, generation: int) -> None:
        """Delete the object if it is still at ``generation`` (gone already is fine). Else `LeaseConflict`."""
        ...


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    acquired_at: float
    renewed_at: float
    expires_at: float

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @staticmethod
    def decode(body: bytes) -> LeaseRecord | None:
        try:
            data = json.loads(body)
            return LeaseRecord(str(data["holder"]), float(data["acquired_at"]),
                               float(data["renewed_at"]), float(data["expires_at"]))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as expired, taken over with a precondition


class Lease:
    """The lease protocol over a `LeaseStore`; see the module docstring. Thread-safe."""

    def __init__(
        self,
        store: LeaseStore,
        holder: str,
        duration: float = 30.0,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.holder = holder
        self.duration = duration
        self.margin = min(5.0, duration / 4)
        self._clock = clock
        self._monotonic = monotonic
        # _io_lock serializes the calls to the store (tick, release); _lock guards the state below
        # only briefly, so held() and snapshot() never wait for a slow store.
        self._io_lock = threading.Lock()
        self._lock = threading.Lock()
        self._generation: int | None = None  # set while we believe we hold it
        self._acquired_at = 0.0
        self._valid_until = 0.0  # monotonic
        self._seen: LeaseRecord | None = None  # last record read or written

    @property
    def renew_every(self) -> float:
        return self.duration / 3

    def held(self) -> bool:
        with self._lock:
            return self._generation is not None and self._monotonic() < self._valid_until

    def tick(self) -> tuple[bool, str]:
        """Renew the lease if we hold it, else try to acquire or take it over.

        Returns (held, what happened): "renewed", "acquired", "took_over", "lost", "held_by_other".
        Store errors other than `LeaseConflict` propagate; the caller retries on its next tick,
        and `held` turns false by itself once the local validity runs out.
        """
        with self._io_lock:
            if self._generation is not None:
                return self._renew()
            return self._acquire()

    def release(self) -> bool:
        """Give the lease up (shutdown). True when we held it and the object was deleted."""
        with self._io_lock:
            generation = self._generation
            self._lost()
            if generation is None:
                return False
            try:
                self.store.delete(generation)
            except LeaseConflict:
                return False  # already taken over: nothing of ours to delete
            return True

    def snapshot(self) -> dict[str, Any]:
        """For /status: who holds the lease (as last seen) and until when."""
        with self._lock:
            seen = self._seen
            held = self._generation is not None and self._monotonic() < self._valid_until
        return {
            "enabled": True,
            "object": self.store.describe(),
            "identity": self.holder,
            "held": held,
            "holder": seen.holder if seen else None,
            "expires_at": seen.expires_at if seen else None,
        }

    # -- under self._io_lock; state changes take self._lock

    def _record(self, acquired_at: float) -> LeaseRecord:
        now = self._clock()
        return LeaseRecord(self.holder, acquired_at, now, now + self.duration)

    def _won(self, generation: int, record: LeaseRecord, started: float) -> None:
        with self._lock:
            self._generation = generation
            self._acquired_at = record.acquired_at
            self._seen = record
            # Validity counts from *before* the write: the store may have stamped it later, never earlier.
            self._valid_until = started + self.duration - self.margin

    def _lost(self) -> None:
        with self._lock:
            self._generation = None
            self._valid_until = 0.0

    def _renew(self) -> tuple[bool, str]:
        started = self._monotonic()
        record = self._record(self._acquired_at)
        try:
            generation = self.store.replace(record.encode(), self._generation)
        except LeaseConflict:
            self._lost()
            return False, "lost"
        self._won(generation, record, started)
        return True, "renewed"

    def _acquire(self) -> tuple[bool, str]:
        started = self._monotonic()
        current = self.store.read()
        if current is None:
            record = self._record(self._clock())
            try:
                generation = self.store.create(record.encode())
            except LeaseConflict:
                return False, "held_by_other"  # lost the race to create it
            self._won(generation, record, started)
            return True, "acquired"
        generation, body = current
        existing = LeaseRecord.decode(body)
        with self._lock:
            self._seen = existing
        if existing is not None and existing.holder == self.holder and existing.expires_at > self._clock():
            # Ours: e.g. a create whose response was lost and was then retried. Adopt it.
            self._won(generation, existing, started)
            return True, "acquired"
        if existing is not None and existing.expires_at > self._clock():
            return False, "held_by_other"
        record = self._record(self._clock())
        try:
            new_generation = self.store.replace(record.encode(), generation)
        except LeaseConflict:
            return False, "held_by_other"  # another contender took it over first
        self._won(new_generation, record, started)
        return True, "took_over"


class SoloLease:
    """No lock configured: this daemon is the only applier by deployment (max instances 1)."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.renew_every = 3600.0

    def held(self) -> bool:
        return True

    def tick(self) -> tuple[bool, str]:
        return True, "solo"

    def release(self) -> bool:
        return False

    def snapshot(self) -> dict[str, Any]:
        return {"enabled": False, "object": None, "identity": self.holder, "held": True,
                "holder": self.holder, "expires_at": None}


class MemoryLeaseStore:
    """A `LeaseStore` in memory with real preconditions: for unit tests of the protocol."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._object: tuple[int, bytes] | None = None
        self._next = 1

    def describe(self) -> str:
        return "memory://lease"

    def read(self) -> tuple[int, bytes] | None:
        with self._lock:
            return self._object

    def create(self, body: bytes) -> int:
        return self._write(body, 0)

    def replace(self, body: bytes, generation: int) -> int:
        return self._write(body, generation)

    def delete(self, generation: int) -> None:
        with self._lock:
            if self._object is None:
                return
            if self._object[0] != generation:
                raise LeaseConflict("generation mismatch")
            self._object = None

    def _write(self, body: bytes, expected: int) -> int:
        with self._lock:
            current = self._object[0] if self._object else 0
            if current != expected:
                raise LeaseConflict(f"generation is {current}, expected {expected}")
            self._next += 1
            self._object = (self._next, body)
            return self._next
