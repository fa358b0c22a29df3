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
"""

from __future__ import annotations

import datetime as dt
import filecmp
import fnmatch
import glob
import os
import shutil
from typing import IO, NamedTuple

from beam.common.clients import storage_client


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


def match(pattern: str) -> list[FileInfo]:
    """The files a pattern names, sorted by path (deterministic order for tests and logs)."""
    if pattern.startswith("gs://"):
        bucket, name = split_gs(pattern)
        wild = _wildcard_at(name)
        prefix = name if wild < 0 else name[:wild]
        blobs = [b for b in storage_client().list_blobs(bucket, prefix=prefix) if not b.name.endswith("/")]
        if wild >= 0:
            blobs = [b for b in blobs if fnmatch.fnmatchcase(b.name, name)]
        elif not name.endswith("/") and name:
            blobs = [b for b in blobs if b.name == name]
        return sorted(
            FileInfo(f"gs://{bucket}/{b.name}", b.size or 0, b.generation,
                     b.time_created.astimezone(dt.UTC).isoformat() if b.time_created else "")
            for b in blobs
        )
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
    if not _exists(src):
        return dst  # moved by an earlier attempt of this bundle
    target, n = dst, 1
    while exists(target) and not _same_content(src, target):
        n += 1
        target = _numbered(dst, n)
    if not exists(target):
        _copy(src, target)
    _delete(src)
    return target


def _exists(src: FileInfo) -> bool:
    if src.path.startswith("gs://"):
        bucket, name = split_gs(src.path)
        return storage_client().bucket(bucket).blob(name, generation=src.generation).exists()
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
            storage_client().bucket(bucket).delete_blob(name, if_generation_match=src.generation)
        except (NotFound, PreconditionFailed):
            pass  # already gone (a retried move), or re-uploaded since it was listed: keep the new one
        return
    try:
        os.remove(src.path)
    except FileNotFoundError:
        pass
