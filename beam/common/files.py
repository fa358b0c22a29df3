"""Listing, reading and writing files on Cloud Storage (``gs://``) or the local disk.

Why not Beam's own ``FileSystems``: its GCS implementation looks credentials up through Beam's
auth helper, which costs ~21 s per process without Application Default Credentials even when
the Storage emulator needs none. These few functions use google-cloud-storage through
:mod:`beam.common.clients`, which skips that lookup when ``STORAGE_EMULATOR_HOST`` is set. Local
paths are supported for tests and for ``headwater`` running everything on one machine.

Patterns: a ``*``/``?``/``[...]`` glob (``gs://landing/example/*.json.gz``), or a prefix ending
in ``/`` meaning every object under it.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from typing import IO

from beam.common.clients import storage_client


def split_gs(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[5:].partition("/")
    return bucket, name


def match(pattern: str) -> list[str]:
    """The files a pattern names, sorted (deterministic order for tests and logs)."""
    if pattern.startswith("gs://"):
        bucket, name = split_gs(pattern)
        wild = min((i for i in (name.find(c) for c in "*?[") if i >= 0), default=-1)
        prefix = name if wild < 0 else name[:wild]
        client = storage_client()
        names = [b.name for b in client.list_blobs(bucket, prefix=prefix) if not b.name.endswith("/")]
        if wild >= 0:
            names = [n for n in names if fnmatch.fnmatchcase(n, name)]
        elif not name.endswith("/") and name:
            names = [n for n in names if n == name]
        return sorted(f"gs://{bucket}/{n}" for n in names)
    if pattern.endswith("/") or os.path.isdir(pattern):
        pattern = os.path.join(pattern, "**", "*")
    return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


def open_read(path: str) -> IO[bytes]:
    """A binary stream over a file; GCS objects are streamed in chunks, not loaded whole."""
    if path.startswith("gs://"):
        bucket, name = split_gs(path)
        return storage_client().bucket(bucket).blob(name).open("rb")
    return open(path, "rb")


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


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
