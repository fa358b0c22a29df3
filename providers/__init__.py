"""Providers: one module per GCP service, each behind the contract in `providers.base`.

`build_providers` wires the real ones for a project. Each provider finds its endpoint the
standard way (``PUBSUB_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``, ``BIGQUERY_EMULATOR_HOST`` when
set, otherwise Google Cloud with Application Default Credentials): one code path for both.
"""

from __future__ import annotations

from providers.base import Provider


def build_providers(project: str, region: str) -> list[Provider]:
    # Imported here so that importing `providers` (e.g. for the in-memory test provider) does
    # not load every Google client library.
    from providers.bigquery import BigQueryProvider
    from providers.pubsub import PubSubProvider
    from providers.storage import StorageProvider

    return [
        StorageProvider(project),
        BigQueryProvider(project, region),
        PubSubProvider(project),
    ]
