"""Listing, reading, writing and moving files on Cloud Storage (``gs://``) or the local disk.

Why not Beam's own ``FileSystems``: its GCS implementation looks credentials up through Beam's
auth helper, which costs ~21-28 s per process without Application Default Credentials even when
the Storage emulator needs none (measured: a ``FileSystems.match`` on the emulator took 28 s,
nearly all of it in that lookup's retries). These few functions use google-cloud-storage through
:mod:`beam.common.clients`, which skips that lookup when ``STORAGE_EMULATOR_HOST`` is set. Local
paths are supported for tests and for ``headwater`` running everything on one machine.

Patterns: a ``*``/``?``/``[...]`` glob (``gs://landing/example/*.json.gz``), or a prefix ending
in ``/`` meaning every object under it.

A listed file is a :class:`FileInfo`: besides its path, the object *generation* (GCS gives each
write of an object a new one) and its creation time. Reading and moving pin that generation, so
a file re-uploaded under the same name while a run is reading it is neither mixed into this run
nor deleted by it: the new version stays in place for the next run.

**Claims** (`claim`, `finish_claim`): each landing object *generation* is ingested once, whether
the file-event job (``gcs_to_bigquery --input_subscription``) or the sweep (the same template in
batch) sees it first, and however often its event is delivered. Before reading a generation, an
ingesting pipeline creates the marker object::

    gs://<landing bucket>/_headwater/claims/<object name>@<generation>

with ``if_generation_match=0`` (create only: Cloud Storage lets exactly one of several racing
creators succeed; the others get HTTP 412). The marker holds JSON: ``object``, ``generation``,
``owner`` (who claimed it), ``state`` (``claimed``, or ``done`` when the file is kept in place)
and ``at``. Outcomes of `claim`:

* ``claimed`` - ours: read it. Also when the marker is already ours (same ``owner``: a retried
  bundle of the claiming step), and when the marker is *stale* - still ``claimed`` more than
  ``CLAIM_TTL_S`` after it was written, i.e. its holder died (a failed batch run) - and we
  replace it, conditional on the stale marker's generation so only one taker wins.
* ``held`` - someone else holds a live claim: skip (they ingest it).
* ``done`` - already ingested and kept in place (a spec without ``bronze.bucket``): skip.
* ``gone`` - that generation no longer exists: already ingested and moved to Bronze (whose
  claim was then deleted), deleted, or overwritten by a newer upload - which has its own
  generation, hence its own claim and event. The marker we just made is removed again.

After its sinks, the claimant either moves the file to Bronze and deletes the marker (the
object's absence is then the durable "done"), or, without a Bronze bucket or when the spec keeps
landing files (``bronze.keep_landing``: a cloud_transfer source; the file is then copied to
Bronze, `archive`), rewrites the marker as ``done``. Names under ``_headwater/`` are never landing files: `match` and the event filter
skip them. Local paths have no generations and no events: claiming one always succeeds.

EMULATOR DEPARTURE: gcp-storage-emulator ignores ``if_generation_match`` and reads and deletes
the current object whatever ``generation`` is asked for. The section "Emulator departure" at
the end of this module is the one place that knows: on the emulator it compares generations
itself, under a lock file shared by every process on this machine (the emulator only ever runs
locally), so conditional writes stay atomic among headwater's own processes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import filecmp
import fnmatch
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

from beam.common.clients import storage_client

# Object names under this prefix are headwater's own bookkeeping in a landing bucket, never
# landing files (claims below; connectors keep checkpoints under ``_connectors/``).
RESERVED_PREFIX = "_headwater/"
CLAIMS_PREFIX = RESERVED_PREFIX + "claims/"
# A claim still "claimed" this long after it was written is taken to be abandoned (its holder
# died before finishing) and may be taken over. Longer than any one file takes to ingest.
CLAIM_TTL_S = 3600.0


class FileInfo(NamedTuple):
    """One listed file. ``generation`` is None for local files (they have no versions)."""

    path: str
    size: int
    generation: int | None = None
    created: str = ""  # ISO 8601 UTC: object creation time on GCS, modification time locally


def split_gs(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[5:].partition("/")
    return bucket, name


def _wildcard_at(text: str) -> int:
    return min((i for i in (text.find(c) for c in "*?[") if i >= 0), default=-1)


def base_of(pattern: str) -> str:
    """The directory a pattern lists under, ending in ``/``: its text up to the last ``/``
    before the first wildcard (``gs://landing/x/*/*.gz`` -> ``gs://landing/x/``)."""
    wild = _wildcard_at(pattern)
    fixed = pattern if wild < 0 else pattern[:wild]
    if wild < 0 and not fixed.endswith("/") and not fixed.startswith("gs://") and os.path.isdir(fixed):
        return fixed + "/"
    return fixed[: fixed.rfind("/") + 1]


def _name_matches(pattern_name: str, name: str) -> bool:
    """The object-name rule of a ``gs://`` pattern (the part after the bucket): a glob, a prefix
    ending in ``/`` (or empty: the whole bucket), or one exact name. Directory placeholders
    (names ending in ``/``) and headwater's reserved names are never files."""
    if name.endswith("/") or name.startswith(RESERVED_PREFIX):
        return False
    if _wildcard_at(pattern_name) >= 0:
        return fnmatch.fnmatchcase(name, pattern_name)
    if pattern_name.endswith("/") or not pattern_name:
        return name.startswith(pattern_name)
    return name == pattern_name


def matches(pattern: str, path: str) -> bool:
    """Whether ``path`` is one of the files ``pattern`` names - the rule `match` lists by, for a
    path that comes from elsewhere (a file event). ``gs://`` patterns only take ``gs://`` paths."""
    if pattern.startswith("gs://") or path.startswith("gs://"):
        if not (pattern.startswith("gs://") and path.startswith("gs://")):
            return False
        (pattern_bucket, pattern_name), (bucket, name) = split_gs(pattern), split_gs(path)
        return bucket == pattern_bucket and _name_matches(pattern_name, name)
    if pattern.endswith("/") or os.path.isdir(pattern):
        return path.startswith(pattern.rstrip("/") + "/")
    return fnmatch.fnmatchcase(path, pattern)


def _iso(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).isoformat() if value else ""


def match(pattern: str) -> list[FileInfo]:
    """The files a pattern names, sorted by path (deterministic order for tests and logs)."""
    if pattern.startswith("gs://"):
        bucket, name = split_gs(pattern)
        wild = _wildcard_at(name)
        prefix = name if wild < 0 else name[:wild]
        blobs = [b for b in storage_client().list_blobs(bucket, prefix=prefix) if _name_matches(name, b.name)]
        return sorted(FileInfo(f"gs://{bucket}/{b.name}", b.size or 0, b.generation, _iso(b.time_created))
                      for b in blobs)
    if pattern.endswith("/") or os.path.isdir(pattern):
        pattern = os.path.join(pattern, "**", "*")
    found = []
    for p in sorted(glob.glob(pattern, recursive=True)):
        if os.path.isfile(p):
            st = os.stat(p)
            found.append(FileInfo(p, st.st_size, None, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).isoformat()))
    return found


def open_read(path: str, generation: int | None = None) -> IO[bytes]:
    """A binary stream over a file (one generation of it, if given); GCS objects are streamed
    in chunks, not loaded whole."""
    if path.startswith("gs://"):
        bucket, name = split_gs(path)
        if generation is not None:
            _emulated_read_check(storage_client().bucket(bucket), name, generation)
        return storage_client().bucket(bucket).blob(name, generation=generation).open("rb")
    return open(path, "rb")


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def exists(path: str) -> bool:
    if path.startswith("gs://"):
        bucket, name = split_gs(path)
        return storage_client().bucket(bucket).blob(name).exists()
    return os.path.exists(path)


def write_bytes(path: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    if path.startswith("gs://"):
        bucket, name = split_gs(path)
        storage_client().bucket(bucket).blob(name).upload_from_string(data, content_type=content_type)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # readers never see a half-written archive file


# --------------------------------------------------------------------------- moving


def move(src: FileInfo, dst: str) -> str:
    """Copy ``src`` to ``dst``, then delete ``src``; returns where it ended up.

    Never overwrites other data: when ``dst`` holds different content, the copy goes to
    ``dst`` with ``-<n>`` inserted before the first dot of its name (``part.json.gz`` ->
    ``part-2.json.gz``). A retried move is harmless: when the target already holds the same
    content the copy is not repeated, and when the source is already gone there is nothing left
    to do. On GCS the copy is server-side and both steps are pinned to the listed generation, so
    a newer upload under the same name is neither copied nor deleted.
    """
    return archive(src, dst, keep=False)


def archive(src: FileInfo, dst: str, *, keep: bool) -> str:
    """`move`, or with ``keep`` only its copy (the landing file stays: a cloud_transfer source's
    landing copies are what its transfer compares against). Same rules: nothing overwritten, a
    retry copies nothing twice, pinned to the listed generation (one that is gone is not copied)."""
    if not _exists(src):
        return dst  # moved by an earlier attempt of this bundle (or, kept, overwritten since)
    target, n = dst, 1
    while exists(target) and not _same_content(src, target):
        n += 1
        target = _numbered(dst, n)
    if not exists(target):
        _copy(src, target)
    if not keep:
        _delete(src)
    return target


def _exists(src: FileInfo) -> bool:
    if src.path.startswith("gs://"):
        bucket, name = split_gs(src.path)
        return _get_generation(storage_client().bucket(bucket), name, src.generation) is not None
    return os.path.exists(src.path)


def _numbered(path: str, n: int) -> str:
    head, _, name = path.rpartition("/")
    stem, dot, rest = name.partition(".")
    return f"{head}/{stem}-{n}{dot}{rest}"


def _same_content(src: FileInfo, dst: str) -> bool:
    if src.path.startswith("gs://") and dst.startswith("gs://"):
        client = storage_client()
        a = client.bucket(split_gs(src.path)[0]).get_blob(split_gs(src.path)[1], generation=src.generation)
        b = client.bucket(split_gs(dst)[0]).get_blob(split_gs(dst)[1])
        return a is not None and b is not None and a.size == b.size and a.crc32c == b.crc32c
    if not src.path.startswith("gs://") and not dst.startswith("gs://"):
        return filecmp.cmp(src.path, dst, shallow=False)
    return read_bytes(src.path) == read_bytes(dst)  # across GCS and the local disk: rare, tests only


def _copy(src: FileInfo, dst: str) -> None:
    if src.path.startswith("gs://") and dst.startswith("gs://"):
        from google.api_core.exceptions import PreconditionFailed

        client = storage_client()
        (sb, sn), (db, dn) = split_gs(src.path), split_gs(dst)
        source = client.bucket(sb)
        try:
            # if_generation_match=0: create only; a racing writer of dst is not overwritten.
            source.copy_blob(source.blob(sn), client.bucket(db), dn, source_generation=src.generation,
                             if_generation_match=0)
        except PreconditionFailed:
            raise FileExistsError(dst) from None  # the bundle is retried and picks another name
        return
    if not src.path.startswith("gs://") and not dst.startswith("gs://"):
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        tmp = f"{dst}.tmp-{os.getpid()}"
        shutil.copyfile(src.path, tmp)
        os.replace(tmp, dst)
        return
    with open_read(src.path, src.generation) as f:
        write_bytes(dst, f.read())


def _delete(src: FileInfo) -> None:
    if src.path.startswith("gs://"):
        from google.api_core.exceptions import NotFound, PreconditionFailed

        bucket, name = split_gs(src.path)
        try:
            _delete_if_generation(storage_client().bucket(bucket), name, src.generation)
        except (NotFound, PreconditionFailed):
            pass  # already gone (a retried move), or re-uploaded since it was listed: keep the new one
        return
    try:
        os.remove(src.path)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- claims

CLAIMED, HELD, DONE, GONE = "claimed", "held", "done", "gone"  # outcomes of `claim`


def claim_path(file: FileInfo) -> str:
    """The claim marker of one object generation (see the module docstring)."""
    bucket, name = split_gs(file.path)
    return f"gs://{bucket}/{CLAIMS_PREFIX}{name}@{file.generation}"


def _claim_body(file: FileInfo, owner: str, state: str) -> bytes:
    return json.dumps({"object": file.path, "generation": file.generation, "owner": owner, "state": state,
                       "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}, sort_keys=True).encode()


def _read_claim(bucket: Any, marker: str) -> tuple[int, dict[str, Any], float] | None:
    """The marker's generation, content and write time (epoch seconds), or None if absent."""
    from google.api_core.exceptions import NotFound

    blob = bucket.get_blob(marker)
    if blob is None:
        return None
    # Read before downloading: a download resets the metadata from its response headers.
    generation, written = int(blob.generation), blob.updated or blob.time_created
    try:
        data = blob.download_as_bytes()
    except NotFound:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        doc = {}  # unreadable: treated as someone else's claim, which ages out like any other
    return generation, doc if isinstance(doc, dict) else {}, written.timestamp() if written else 0.0


def claim(file: FileInfo, owner: str, *, ttl_s: float = CLAIM_TTL_S,
          clock: Callable[[], float] = time.time) -> tuple[str, FileInfo]:
    """Claim one object generation for ingestion; ``(outcome, file)``.

    ``outcome`` is ``CLAIMED`` (read it), ``HELD``, ``DONE`` or ``GONE`` (skip it): see the
    module docstring. ``owner`` names the claimant so that a retried bundle recognises its own
    claim (``event:<run>:<message id>``, ``sweep:<run>``). When claimed, ``file`` comes back with
    the size and creation time of the live generation (an event's copy may be stale). A claim
    left ``claimed`` for ``ttl_s`` seconds (by the marker's server-side write time and
    ``clock``) is taken over. Errors of the storage itself are raised (the runner retries).
    """
    from google.api_core.exceptions import PreconditionFailed

    if not file.path.startswith("gs://") or file.generation is None:
        return CLAIMED, file  # local files: no generations and no events to race with
    bucket_name, name = split_gs(file.path)
    bucket = storage_client().bucket(bucket_name)
    marker = claim_path(file)[len(f"gs://{bucket_name}/"):]
    body = _claim_body(file, owner, CLAIMED)
    mine: int | None = None
    for _ in range(3):  # the marker may vanish between a refused create and its read: look again
        try:
            mine = _write_if_generation(bucket, marker, body, 0)
            break
        except PreconditionFailed:
            pass
        held = _read_claim(bucket, marker)
        if held is None:
            continue
        generation, doc, written = held
        if doc.get("state") == DONE:
            return DONE, file
        if doc.get("owner") == owner:
            mine = generation  # ours already: the claiming step is being retried
            break
        if clock() - written < ttl_s:
            return HELD, file
        try:  # abandoned: take it over, conditional on the stale marker so only one taker wins
            mine = _write_if_generation(bucket, marker, body, generation)
            break
        except PreconditionFailed:
            return HELD, file
    if mine is None:
        return HELD, file
    live = _get_generation(bucket, name, file.generation)
    if live is None:
        # Nothing to ingest (see GONE); leave no marker behind for a generation that is gone.
        with contextlib.suppress(Exception):
            _delete_if_generation(bucket, marker, mine)
        return GONE, file
    return CLAIMED, file._replace(size=live.size or 0, created=_iso(live.time_created) or file.created)


def finish_claim(file: FileInfo, *, kept: bool) -> None:
    """After the sinks: delete the claim of a file moved to Bronze (its absence from landing now
    says "done"), or mark the claim of a file ``kept`` in place ``done`` for good."""
    from google.api_core.exceptions import NotFound

    if not file.path.startswith("gs://") or file.generation is None:
        return
    bucket_name, _ = split_gs(file.path)
    bucket = storage_client().bucket(bucket_name)
    marker = claim_path(file)[len(f"gs://{bucket_name}/"):]
    if kept:
        bucket.blob(marker).upload_from_string(_claim_body(file, "", DONE), content_type="application/json")
        return
    with contextlib.suppress(NotFound):  # a retried step: deleted already
        bucket.delete_blob(marker)


# --------------------------------------------------------------------------- emulator departure
#
# EMULATOR DEPARTURE: gcp-storage-emulator (2026.7.19) ignores generation preconditions
# (``if_generation_match``) and the ``generation`` of reads and deletes: it keeps one version of
# each object and acts on it. Every generation-pinned operation of this module goes through the
# three functions below; on GCS each is the one request it looks like, on the emulator it
# compares generations itself, holding a lock file that every process on this machine shares
# (the emulator only ever runs locally), so that conditional writes stay atomic among
# headwater's processes - the local runner's jobs, the tests.


def _on_emulator() -> bool:
    return bool(os.environ.get("STORAGE_EMULATOR_HOST"))


@contextlib.contextmanager
def _emulator_lock() -> Iterator[None]:
    """Exclusive among the processes of this machine using the same emulator."""
    import fcntl

    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    path = os.path.join(tempfile.gettempdir(), f"headwater-gcs-emulator-{hashlib.sha1(host.encode()).hexdigest()[:12]}.lock")
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _current_generation(bucket: Any, name: str) -> int:
    blob = bucket.get_blob(name)
    return int(blob.generation) if blob is not None else 0


def _write_if_generation(bucket: Any, name: str, data: bytes, expected: int) -> int:
    """Write ``name`` only if its generation is ``expected`` (0: only if absent); the new
    generation. A failed precondition raises ``google.api_core.exceptions.PreconditionFailed``."""
    from google.api_core.exceptions import PreconditionFailed

    blob = bucket.blob(name)
    if not _on_emulator():
        blob.upload_from_string(data, content_type="application/json", if_generation_match=expected)
        return int(blob.generation)
    with _emulator_lock():
        if _current_generation(bucket, name) != expected:
            raise PreconditionFailed(f"{name}: generation is not {expected} (emulated precondition)")
        blob.upload_from_string(data, content_type="application/json")
        return int(blob.generation)


def _delete_if_generation(bucket: Any, name: str, generation: int | None) -> None:
    """Delete ``name`` only at ``generation`` (any, if None); NotFound / PreconditionFailed raise."""
    from google.api_core.exceptions import NotFound, PreconditionFailed

    if not _on_emulator():
        bucket.delete_blob(name, if_generation_match=generation)
        return
    with _emulator_lock():
        current = _current_generation(bucket, name)
        if not current:
            raise NotFound(f"{name}: no such object")
        if generation is not None and current != generation:
            raise PreconditionFailed(f"{name}: generation is {current}, not {generation} (emulated precondition)")
        bucket.delete_blob(name)


def _get_generation(bucket: Any, name: str, generation: int | None) -> Any:
    """The object at ``generation`` (the current one if None), or None if that generation is gone."""
    if not _on_emulator() or generation is None:
        return bucket.get_blob(name, generation=generation)
    blob = bucket.get_blob(name)  # the emulator's only version: it is the one asked for, or none is
    return blob if blob is not None and int(blob.generation) == generation else None


def _emulated_read_check(bucket: Any, name: str, generation: int) -> None:
    """Before reading a pinned generation on the emulator (which would serve whatever version it
    holds): raise NotFound, as GCS would, when that generation has been replaced."""
    from google.api_core.exceptions import NotFound

    if _on_emulator() and _get_generation(bucket, name, generation) is None:
        raise NotFound(f"{name}#{generation}: no such object generation")
