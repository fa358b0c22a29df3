"""The poller's checkpoint: one JSON object in Cloud Storage, advanced only by its current holder.

What it holds (:class:`PollState`): the incremental cursor (the greatest ``cursor_field`` value of
the completed walks through the API's pages), the **boundary** - fingerprints
(:func:`record_fingerprint`) of the records published whose ``cursor_field`` value equals the
cursor - and, while a walk is unfinished, the request of the first page not yet read
(:class:`Resume`), so the next poll starts there.

Why the boundary: the cursor is an inclusive lower bound, so every poll reads the records at the
cursor value again. A record read again at the cursor value whose fingerprint is in the boundary
was published, unchanged, before: the poller does not publish it again (the pipeline's dedup
remembers a key only for its window, so a quiet API would otherwise land the same record in
Silver once per window, forever). A record changed at the same cursor value has another
fingerprint and is published. When a walk completes, the boundary becomes the fingerprints of
the records that walk read at the new cursor value.

The bound: at most :data:`BOUNDARY_MAX_FINGERPRINTS` fingerprints are kept, the smallest ones (so
the same records are remembered whatever order the API serves them in). When more records than
that share the cursor value, the others are published again by every poll - the behaviour
without a boundary: the dedup absorbs the repeats within its window. Nothing is ever skipped
because of the bound; the poller logs a warning when it applies.

Concurrency: every write carries a generation precondition (``if_generation_match``): ``0``
creates the object only if it is absent, a number replaces it only if it is still at the
generation this process read. Cloud Storage checks it atomically, so of two replicas that read
the same generation only one write succeeds; the other gets HTTP 412, raised here as
:class:`CheckpointConflict`, re-reads, and yields (connector.rest_api).

EMULATOR DEPARTURE: gcp-storage-emulator ignores ``if_generation_match`` on upload (overwrites
happen whatever the generation). When ``STORAGE_EMULATOR_HOST`` is set, and only then,
:meth:`CheckpointStore._emulated_precondition` compares generations before the write and
:meth:`CheckpointStore._emulated_readback` checks afterwards that the write that stuck is this
one - the same stand-in as the daemon's lease lock (providers/storage_lock.py), reimplemented
because the connector image does not ship providers/. It is not atomic, but it makes a lost race
visible as the same CheckpointConflict. The real-API path sends the same preconditions and relies
on them alone.

Document (version 1)::

    {"version": 1, "source_id": "payments", "written_at": "2024-05-01T12:00:00.123Z",
     "cursor": "2024-05-01T11:59:00Z", "boundary": ["<fingerprint of a record at the cursor>", ...],
     "resume": {"url": "https://api.example.com/v1/charges?page=4", "params": {},
                "max_seen": "2024-05-01T11:59:30Z", "boundary": ["<fingerprint at max_seen>", ...],
                "pages_read": 3, "walk_of": "<fingerprint of the settings>"}}

``resume`` is null between walks. Its URL and params never contain the credential (the
poller adds auth to each request as it sends it). ``resume.boundary``: the fingerprints of the
records read so far in the unfinished walk at ``max_seen`` (they become the boundary if the walk
ends at that value). A document without ``boundary`` (written before it existed) reads as an
empty one: the records at the cursor are published once more, then remembered. The boundary is
a later addition to version 1: a reader that does not know it ignores it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as gexc

from connector.publish import now_rfc3339

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
RPC_TIMEOUT_S = 30.0
# The boundary's bound (module docstring): ~33 bytes a fingerprint in the document, so a full
# boundary adds ~330 KB (twice that mid-walk, with resume.boundary).
BOUNDARY_MAX_FINGERPRINTS = 10_000
FINGERPRINT_HEX_CHARS = 32  # 128 bits of SHA-256: no collision among 10,000 records, in practice


def record_fingerprint(record: Any) -> str:
    """The record's identity for the boundary: SHA-256 of its canonical JSON (sorted keys, no
    whitespace, ASCII escapes), hex, the first :data:`FINGERPRINT_HEX_CHARS` characters. Any
    change of the record, its cursor value included, changes it."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:FINGERPRINT_HEX_CHARS]


class CheckpointConflict(RuntimeError):
    """Someone else wrote the checkpoint since it was read (HTTP 412): re-read and yield."""


@dataclass(frozen=True)
class Resume:
    """The first page of an unfinished walk that was not read: its request, without auth.

    ``max_seen``: greatest cursor_field value published so far in this walk (None without one);
    ``boundary``: fingerprints of the records read so far in this walk at ``max_seen``.
    ``walk_of``: fingerprint of the settings the walk was started with; a resume position of
    different settings (another endpoint, params, pagination) is discarded.
    """

    url: str
    params: dict[str, str] = field(default_factory=dict)
    max_seen: Any = None
    pages_read: int = 0
    walk_of: str = ""
    boundary: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PollState:
    """What one poll leaves the next: the cursor lower bound, the fingerprints of the records
    published at it (``boundary``, see the module docstring), and where an unfinished walk resumes."""

    cursor: Any = None
    resume: Resume | None = None
    boundary: frozenset[str] = frozenset()

    def to_json(self, source_id: str) -> bytes:
        resume = None
        if self.resume is not None:
            resume = {"url": self.resume.url, "params": self.resume.params, "max_seen": self.resume.max_seen,
                      "boundary": sorted(self.resume.boundary), "pages_read": self.resume.pages_read,
                      "walk_of": self.resume.walk_of}
        return json.dumps({"version": CHECKPOINT_VERSION, "source_id": source_id, "written_at": now_rfc3339(),
                           "cursor": self.cursor, "boundary": sorted(self.boundary), "resume": resume},
                          ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, body: bytes) -> PollState:
        """Parse a checkpoint document. ValueError when it is not one."""
        doc = json.loads(body)
        if not isinstance(doc, dict) or doc.get("version") != CHECKPOINT_VERSION:
            raise ValueError("not a version 1 checkpoint document")
        raw = doc.get("resume")
        resume = None
        if raw is not None:
            if not isinstance(raw, dict) or not isinstance(raw.get("url"), str):
                raise ValueError("resume: expected an object with a url")
            params = raw.get("params") or {}
            if not isinstance(params, dict):
                raise ValueError("resume.params: expected an object")
            resume = Resume(url=raw["url"], params={str(k): str(v) for k, v in params.items()},
                            max_seen=raw.get("max_seen"), pages_read=int(raw.get("pages_read") or 0),
                            walk_of=str(raw.get("walk_of") or ""),
                            boundary=_fingerprints(raw.get("boundary"), "resume.boundary"))
        return cls(cursor=doc.get("cursor"), resume=resume, boundary=_fingerprints(doc.get("boundary"), "boundary"))


def _fingerprints(raw: Any, where: str) -> frozenset[str]:
    """A boundary as read: absent (a document older than the boundary) is empty. A malformed one
    is empty too, with a warning - forgetting it only re-publishes the records at the cursor once,
    where refusing the whole document would re-read the API from the start."""
    if raw is None:
        return frozenset()
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return frozenset(raw)
    log.warning("checkpoint %s: expected a list of fingerprints; ignored (the records at the cursor are "
                "published once more)", where)
    return frozenset()


class CheckpointStore:
    """The checkpoint object ``gs://<bucket>/<name>``; ``client``: a google.cloud.storage.Client
    (default: one created on first use, which honours ``STORAGE_EMULATOR_HOST``)."""

    def __init__(self, bucket: str, name: str, client: Any = None) -> None:
        self.bucket_name = bucket
        self.name = name
        self._client = client
        self._emulator = bool(os.environ.get("STORAGE_EMULATOR_HOST"))

    def describe(self) -> str:
        return f"gs://{self.bucket_name}/{self.name}"

    def read_raw(self) -> tuple[int, bytes | None]:
        """(generation, body) of the object; (0, None) when it does not exist."""
        blob = self._bucket().get_blob(self.name, timeout=RPC_TIMEOUT_S)
        if blob is None:
            return 0, None
        generation = int(blob.generation)
        try:
            # Pinned to the generation just seen, so metadata and body belong together.
            return generation, blob.download_as_bytes(if_generation_match=generation, timeout=RPC_TIMEOUT_S)
        except gexc.NotFound:
            return 0, None
        except gexc.PreconditionFailed:
            return self.read_raw()  # rewritten in between: read the new one

    def read(self) -> tuple[int, PollState]:
        """(generation, state); an absent object is generation 0 and an empty state.

        A document that cannot be parsed is logged and read as the empty state: the next write
        replaces it (at its generation), and the poller re-reads the API from the start, which
        the dedup downstream absorbs - better than a crash loop on a damaged object.
        """
        generation, body = self.read_raw()
        if body is None:
            return 0, PollState()
        try:
            return generation, PollState.from_json(body)
        except (ValueError, TypeError) as exc:
            log.error("checkpoint %s (generation %d) is unreadable (%s): starting over from an empty state",
                      self.describe(), generation, exc)
            return generation, PollState()

    def write(self, state: PollState, source_id: str, generation: int) -> int:
        """Write ``state`` if the object is still at ``generation`` (0: absent); the new generation.

        Raises CheckpointConflict when it is not (someone else wrote in between).
        """
        body = state.to_json(source_id)
        self._emulated_precondition(generation)
        blob = self._bucket().blob(self.name)
        try:
            # The library retries a conditional upload on transient errors (it is idempotent).
            blob.upload_from_string(body, content_type="application/json", if_generation_match=generation,
                                    timeout=RPC_TIMEOUT_S)
        except gexc.PreconditionFailed as exc:
            raise CheckpointConflict(f"{self.describe()}: no longer at generation {generation}") from exc
        written = int(blob.generation)
        self._emulated_readback(written, body)
        return written

    # EMULATOR DEPARTURE (see the module docstring): the only two places that differ on the
    # emulator; both return at once against Cloud Storage.

    def _emulated_precondition(self, expected: int) -> None:
        if not self._emulator:
            return
        actual, _ = self.read_raw()
        if actual != expected:
            raise CheckpointConflict(f"{self.describe()}: generation is {actual}, expected {expected}")

    def _emulated_readback(self, generation: int, body: bytes) -> None:
        if not self._emulator:
            return
        _, stored = self.read_raw()
        if stored != body:
            raise CheckpointConflict(f"{self.describe()}: overwritten by a concurrent writer")

    def _bucket(self) -> Any:
        if self._client is None:
            from google.cloud import storage

            self._client = storage.Client()
        return self._client.bucket(self.bucket_name)
