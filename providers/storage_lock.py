"""The daemon's lease lock in one Cloud Storage object, through google-cloud-storage.

Implements `reconciler.daemon.lease.LeaseStore`: one object, written and deleted only with
generation preconditions (``if_generation_match``), which Cloud Storage enforces atomically:
``0`` means "only if absent", a number means "only if the object is still at this generation".
A failed precondition (HTTP 412) is a `LeaseConflict`; every other error goes through
`providers.errors.call` (translation, retries, API-request metrics).

The lock bucket is not managed by headwater (the deployment creates it; see deploy/iam.md): the
daemon needs object read/write on it only.

EMULATOR DEPARTURE: gcp-storage-emulator ignores ``if_generation_match`` on upload and delete
(checked with 2026.7.19: overwrites and deletes happen whatever the generation). On the emulator,
and only there, `_emulated_precondition` compares generations before a write and
`_emulated_readback` checks after it that the write is the one that stuck. That is not atomic,
but it makes lost races visible (a contender sees someone else's record and backs off) and a
renewal on a stale generation fails as it would on GCS. The real-API path sends the same
preconditions and relies on them alone.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import storage

from providers.errors import NotFound, ProviderError, call
from reconciler.daemon.lease import LeaseConflict

RPC_TIMEOUT_S = 10.0  # the lease is renewed every few seconds: a slow call is as good as a failed one
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}


class GcsLeaseStore:
    def __init__(self, bucket: str, name: str, client: storage.Client | None = None) -> None:
        self.bucket_name = bucket
        self.name = name
        self._client = client
        self._lock = threading.Lock()
        self._emulator = bool(os.environ.get("STORAGE_EMULATOR_HOST"))

    def describe(self) -> str:
        return f"gs://{self.bucket_name}/{self.name}"

    def read(self) -> tuple[int, bytes] | None:
        blob = self._call("storage.get_object", lambda: self._bucket().get_blob(self.name, **_OPTS))
        if blob is None:
            return None
        generation = int(blob.generation)
        try:
            # Pinned to the generation just seen, so metadata and body belong together.
            body = self._call("storage.download_object",
                              lambda: blob.download_as_bytes(if_generation_match=generation, **_OPTS))
        except NotFound:
            return None
        except LeaseConflict:
            return self.read()  # rewritten in between: read the new one
        return generation, body

    def create(self, body: bytes) -> int:
        return self._write(body, 0)

    def replace(self, body: bytes, generation: int) -> int:
        return self._write(body, generation)

    def delete(self, generation: int) -> None:
        self._emulated_precondition(generation)
        blob = self._bucket().blob(self.name)
        try:
            self._call("storage.delete_object", lambda: blob.delete(if_generation_match=generation, **_OPTS))
        except NotFound:
            pass  # gone already

    # ---------------------------------------------------------------------------------------

    def _write(self, body: bytes, expected: int) -> int:
        self._emulated_precondition(expected)
        blob = self._bucket().blob(self.name)
        self._call("storage.upload_object", lambda: blob.upload_from_string(
            body, content_type="application/json", if_generation_match=expected, **_OPTS))
        generation = int(blob.generation)
        self._emulated_readback(generation, body)
        return generation

    def _emulated_precondition(self, expected: int) -> None:
        """EMULATOR DEPARTURE (see the module docstring): check the generation ourselves."""
        if not self._emulator:
            return
        current = self.read()
        actual = current[0] if current else 0
        if actual != expected:
            raise LeaseConflict(f"{self.describe()}: generation is {actual}, expected {expected}")

    def _emulated_readback(self, generation: int, body: bytes) -> None:
        """EMULATOR DEPARTURE: last writer wins there, so confirm our write is the one stored."""
        if not self._emulator:
            return
        current = self.read()
        if current is None or current[1] != body:
            raise LeaseConflict(f"{self.describe()}: overwritten by a concurrent writer")

    def _bucket(self) -> storage.Bucket:
        with self._lock:
            if self._client is None:
                self._client = storage.Client()
            return self._client.bucket(self.bucket_name)

    @staticmethod
    def _call(what: str, fn):
        try:
            return call(fn, what, attempts=3, initial_delay=0.2, max_delay=1.0)
        except ProviderError as exc:
            if isinstance(exc.__cause__, gexc.PreconditionFailed):
                raise LeaseConflict(str(exc)) from exc
            raise
