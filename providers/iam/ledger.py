"""The ownership ledger: which members of which bindings headwater granted (docs/governance.md).

IAM policies and audit configs carry no labels, so "is this member headwater's?" cannot be
read from the policy. The ledger answers it, as Config Connector's IAMPartialPolicy keeps
``status.lastAppliedBindings``: one JSON object, ``gs://<landing bucket>/_headwater/iam-ledger.json``::

    {"version": 1,
     "bindings": {"<iam_binding name>": {"target": "...", "role": "...", "members": [...],
                                         "exclusive": false, "labels": {...}}},
     "audit_configs": {"<service>": {"log_types": [...], "labels": {...}}}}

Members are kept in headwater's form (``serviceAgent:pubsub``, not the e-mail). An entry is
written after each successful policy write (the members headwater now holds there, i.e. the
declared ones) and removed after a delete. Every write is conditional on the generation read
(``ifGenerationMatch``; 0 when the object does not exist yet), so two appliers never lose each
other's entries: a 412 re-reads and re-applies the one change (`providers.errors.call` retries
the ``Aborted`` it becomes). Sources: "Request preconditions",
https://cloud.google.com/storage/docs/request-preconditions; objects.insert ``ifGenerationMatch``,
https://cloud.google.com/storage/docs/json_api/v1/objects/insert.

A landing bucket that does not exist (yet) reads as an empty ledger; the write that follows a
policy write happens after the plan has created the bucket (buckets come first in a plan).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc

from providers.calls import CallCounter
from providers.errors import call

OBJECT = "_headwater/iam-ledger.json"
RPC_TIMEOUT_S = 60.0
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}


def empty() -> dict[str, Any]:
    return {"version": 1, "bindings": {}, "audit_configs": {}}


class Ledger:
    """The ledger object in ``bucket``, through a ``google.cloud.storage.Client`` (``client()``)."""

    def __init__(self, client: Callable[[], Any], bucket: str, calls: CallCounter) -> None:
        self._client = client
        self.bucket = bucket
        self._calls = calls

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{OBJECT}"

    def read(self) -> dict[str, Any]:
        """The ledger as it is (one object download); empty when it or its bucket does not exist."""
        return self._read()[0]

    def change(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """Read, ``edit`` in place, write back conditional on the generation read; retried from
        a fresh read when another writer came between."""

        def attempt() -> None:
            ledger, generation = self._read(counted=True)
            before = json.dumps(ledger, sort_keys=True)
            edit(ledger)
            if json.dumps(ledger, sort_keys=True) == before:
                return
            blob = self._client().bucket(self.bucket).blob(OBJECT)
            data = json.dumps(ledger, indent=1, sort_keys=True) + "\n"
            self._calls.count("upload_ledger")
            try:
                blob.upload_from_string(data, content_type="application/json",
                                        if_generation_match=generation or 0, **_OPTS)
            except gexc.PreconditionFailed as exc:
                raise gexc.Aborted(f"{self.url} changed while it was being written") from exc

        call(attempt, f"storage.upload_ledger {self.url}")

    def _read(self, counted: bool = False) -> tuple[dict[str, Any], int | None]:
        blob = self._client().bucket(self.bucket).blob(OBJECT)

        def download() -> bytes | None:
            self._calls.count("download_ledger")
            try:
                return blob.download_as_bytes(**_OPTS)
            except gexc.NotFound:
                return None

        # Inside a change's attempt the errors are translated by its own call; else by this one.
        raw = download() if counted else call(download, f"storage.download_ledger {self.url}")
        if raw is None:
            return empty(), None
        ledger = {**empty(), **json.loads(raw)}
        return ledger, int(blob.generation) if blob.generation is not None else None
