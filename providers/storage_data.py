"""Objects in Cloud Storage, as data: the demo drops its sample files into the landing bucket.

`providers.storage` manages buckets (resources); this module only writes objects into them, for
``headwater demo`` and the tests that move real data. Same endpoint rules as the provider:
google-cloud-storage honours ``STORAGE_EMULATOR_HOST`` by itself.
"""

from __future__ import annotations

from google.cloud import storage

from providers.errors import call


def upload(project: str, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Write ``data`` to ``gs://bucket/name``."""
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    blob = storage.Client(project=project).bucket(bucket).blob(name)
    call(lambda: blob.upload_from_string(data, content_type=content_type), f"storage.upload {uri}")
