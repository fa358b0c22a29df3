"""Google Cloud clients for the pipelines, pointed at the emulators when their hosts are set.

One code path for Dataflow and the local runner: each factory builds the official client, and
only the endpoint and credentials change when ``*_EMULATOR_HOST`` is in the environment:

* ``BIGQUERY_EMULATOR_HOST`` - ``http://host:port`` (a bare ``host:port`` gets ``http://``): the
  BigQuery client has no emulator support of its own, so it gets ``ClientOptions(api_endpoint)``.
* ``STORAGE_EMULATOR_HOST`` - ``http://host:port``, honoured by google-cloud-storage itself.
* ``PUBSUB_EMULATOR_HOST`` - ``host:port``, honoured by google-cloud-pubsub itself.

With an emulator host set the client gets ``AnonymousCredentials`` explicitly. Without them the
libraries look for Application Default Credentials first, which on a machine without any takes
~21 s per process (Beam's auth helper retries with back-off) - and every worker process pays it.
Clients are made in a DoFn's ``setup`` (one per worker), never pickled with the DoFn.
"""

from __future__ import annotations

import os
from typing import Any

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials


def emulator(var: str) -> str | None:
    value = os.environ.get(var, "").strip()
    return value or None


def default_project(project: str | None = None) -> str | None:
    return project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT")


def bigquery_client(project: str | None = None) -> Any:
    from google.cloud import bigquery

    host = emulator("BIGQUERY_EMULATOR_HOST")
    if host is None:
        return bigquery.Client(project=default_project(project))
    if "://" not in host:
        host = "http://" + host
    return bigquery.Client(
        project=default_project(project) or "local",
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=host),
    )


def storage_client(project: str | None = None) -> Any:
    from google.cloud import storage

    if emulator("STORAGE_EMULATOR_HOST") is None:
        return storage.Client(project=default_project(project))
    return storage.Client(project=default_project(project) or "local", credentials=AnonymousCredentials())


def publisher_client() -> Any:
    from google.cloud import pubsub_v1

    if emulator("PUBSUB_EMULATOR_HOST") is None:
        return pubsub_v1.PublisherClient()
    return pubsub_v1.PublisherClient(credentials=AnonymousCredentials())
