"""Providers: one module per GCP service, each behind the contract in `providers.base`.

`build_providers` wires the real ones for a project. Each provider finds its endpoint the
standard way (``PUBSUB_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``, ``BIGQUERY_EMULATOR_HOST`` when
set, otherwise Google Cloud with Application Default Credentials): one code path for both.

Dataflow and Cloud Run have no emulator: ``dataflow_job`` and ``cloud_run_service`` resources go to
Dataflow and Cloud Run (`providers.dataflow`, `providers.cloudrun`) or to the local runner
(`providers.localrunner`), which runs the same pipelines and connectors on this machine. The
local runner is the default when an emulator host is set; ``runner`` overrides it. Storage
Transfer has none either: ``storage_transfer_job`` resources go to Storage Transfer
(`providers.transfer`), or, with the Storage emulator, to its stand-in (`providers.local_transfer`),
which copies from the local S3 server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from providers.base import Provider

if TYPE_CHECKING:
    from providers.dataflow import DataflowSettings
    from reconciler.config import Platform

RUNNERS = ("local", "dataflow")
EMULATOR_VARS = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST")


def default_runner() -> str:
    """``local`` when headwater targets the emulators, else ``dataflow``."""
    return "local" if any(os.environ.get(var) for var in EMULATOR_VARS) else "dataflow"


def build_providers(
    project: str,
    region: str,
    *,
    runner: str | None = None,
    state_dir: Path | str | None = None,
    platform: Platform | None = None,
) -> list[Provider]:
    """The providers of every kind; ``state_dir`` is where the local runner tracks its jobs
    (default ``$HEADWATER_STATE_DIR``, else ``.headwater``)."""
    # Imported here so that importing `providers` (e.g. for the in-memory test provider) does
    # not load every Google client library.
    from providers.bigquery import BigQueryProvider
    from providers.pubsub import PubSubProvider
    from providers.storage import StorageProvider

    runner = runner or default_runner()
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # EMULATOR DEPARTURE (gcp-storage-emulator has no notifications): watcher processes.
        from providers.local_notifications import LocalNotificationProvider

        notifications: Provider = LocalNotificationProvider(
            project, Path(state_dir or os.environ.get("HEADWATER_STATE_DIR") or ".headwater"))
    else:
        from providers.storage_notifications import StorageNotificationProvider

        notifications = StorageNotificationProvider(project)
    # database_cdc (issue 10): Datastream, or on the emulators its stand-in (EMULATOR DEPARTURE: no
    # Datastream emulator; readers of a local PostgreSQL's replication slots, providers/local_datastream.py).
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from providers.local_datastream import LocalDatastreamProvider

        streams: Provider = LocalDatastreamProvider(
            project, Path(state_dir or os.environ.get("HEADWATER_STATE_DIR") or ".headwater"))
    else:
        from providers.datastream import DatastreamProvider

        streams = DatastreamProvider(project, region)
    # cloud_transfer (issue 10): Storage Transfer, or on the emulators its stand-in (EMULATOR
    # DEPARTURE: no Storage Transfer emulator; transfer processes copying from the local S3).
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from providers.local_transfer import LocalTransferProvider

        transfers: Provider = LocalTransferProvider(
            project, Path(state_dir or os.environ.get("HEADWATER_STATE_DIR") or ".headwater"))
    else:
        from providers.transfer import StorageTransferProvider

        transfers = StorageTransferProvider(project)
    # issue 11: Cloud Monitoring, or on the emulators its recording stand-in (EMULATOR DEPARTURE:
    # no Cloud Monitoring emulator; providers/local_monitoring.py).
    if any(os.environ.get(var) for var in EMULATOR_VARS):
        from providers.local_monitoring import LocalMonitoringProvider

        monitoring: Provider = LocalMonitoringProvider(
            project, Path(state_dir or os.environ.get("HEADWATER_STATE_DIR") or ".headwater"))
    else:
        from providers.monitoring_resources import MonitoringProvider

        monitoring = MonitoringProvider(project)
    column_security = column_security_providers(project, region, state_dir=state_dir)  # issue 13
    # IAM on policy tags resolves their names through the catalog's tag directory (one listing a run).
    catalog = next((p for p in column_security if hasattr(p, "tag_id")), None)
    governance = iam_provider(project, region, state_dir=state_dir, platform=platform,
                              policy_tag_id=getattr(catalog, "tag_id", None))  # issue 13
    if runner == "local":
        from providers.localrunner import LocalRunnerProvider

        state_dir = state_dir or os.environ.get("HEADWATER_STATE_DIR") or ".headwater"
        # The stand-in for Dataflow and Cloud Run alike: jobs and connectors as child processes.
        runtimes: list[Provider] = [LocalRunnerProvider(project, Path(state_dir))]
    elif runner == "dataflow":
        from providers.cloudrun import CloudRunProvider
        from providers.dataflow import DataflowProvider

        runtimes = [DataflowProvider(dataflow_settings(project, region, platform)), CloudRunProvider(project, region)]
    else:
        raise ValueError(f"unknown runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    from providers.bigquery_views import BigQueryViewProvider  # issue 12: views, row access policies

    return [
        StorageProvider(project),
        BigQueryProvider(project, region),
        BigQueryViewProvider(project, region),
        PubSubProvider(project),
        notifications,
        streams,
        transfers,
        monitoring,
        governance,
        *column_security,
        *runtimes,
    ]


def iam_provider(project: str, region: str, *, state_dir: Path | str | None = None,
                 platform: Platform | None = None, policy_tag_id=None) -> Provider:
    """``iam_binding`` and ``project_audit_config`` (issue 13): `providers.iam`, its ledger in the
    platform's landing bucket; or on the emulators the recording stand-in. ``policy_tag_id``: the
    shared tag directory's resolver (`providers.datacatalog.DataCatalogProvider.tag_id`)."""
    from providers.iam import IMMUTABLE_FIELDS, KINDS

    if any(os.environ.get(var) for var in EMULATOR_VARS):
        # EMULATOR DEPARTURE (no emulator implements IAM or audit logs; the Pub/Sub emulator answers
        # getIamPolicy with 501): recorded, one "skipped on the emulators" line per change.
        from providers.local_record import LocalRecordProvider

        return LocalRecordProvider(
            project, Path(state_dir or os.environ.get("HEADWATER_STATE_DIR") or ".headwater"),
            kinds={KINDS[0]: "no IAM on the emulators", KINDS[1]: "no audit logs on the emulators"},
            immutable_fields=IMMUTABLE_FIELDS)
    from providers.iam import IamProvider
    from reconciler.compile import zone_names

    landing = zone_names(platform).buckets["landing"] if platform is not None else f"landing-{project}-{region}"
    access = getattr(platform, "access", None)
    own = getattr(access, "reconciler", None) or f"serviceAccount:headwater-apply@{project}.iam.gserviceaccount.com"
    return IamProvider(project, region, landing, protected=[own], policy_tag_id=policy_tag_id)


def column_security_providers(project: str, region: str, *, state_dir: Path | str | None = None) -> list[Provider]:
    """The taxonomy, policy tags, data (masking) policies and column policies (issue 13,
    docs/governance.md "PII and column-level security"): Data Catalog, BigQuery data policies and
    the tables' schemas, sharing one directory of the policy tags; or on the emulators the
    recording stand-in."""
    from providers.datacatalog import IMMUTABLE_FIELDS as CATALOG_IMMUTABLE
    from providers.datapolicies import IMMUTABLE_FIELDS as POLICY_IMMUTABLE
    from reconciler.resources import Kind

    if any(os.environ.get(var) for var in EMULATOR_VARS):
        # EMULATOR DEPARTURE (Data Catalog has no emulator, none masks, bqemulator drops policyTags):
        # recorded, one "skipped on the emulators" line per change; nothing is sent to bqemulator.
        from providers.local_record import LocalRecordProvider

        return [LocalRecordProvider(
            project, Path(state_dir or os.environ.get("HEADWATER_STATE_DIR") or ".headwater"),
            kinds={Kind.DATACATALOG_TAXONOMY: "no Data Catalog on the emulators",
                   Kind.DATACATALOG_POLICY_TAG: "no Data Catalog on the emulators",
                   Kind.BIGQUERY_DATA_POLICY: "no data masking on the emulators",
                   Kind.BIGQUERY_COLUMN_POLICY: "bqemulator drops policy tags"},
            immutable_fields={**CATALOG_IMMUTABLE, **POLICY_IMMUTABLE})]
    from providers.bigquery_columns import ColumnPolicyProvider
    from providers.datacatalog import DataCatalogProvider
    from providers.datapolicies import DataPolicyProvider

    catalog = DataCatalogProvider(project, region)
    return [catalog, DataPolicyProvider(project, region, catalog), ColumnPolicyProvider(project, catalog)]


def stop_local(state_dir: Path | str, project: str | None = None) -> list[str]:
    """Stop every stand-in process recorded in ``state_dir`` (of ``project``, or all): the file
    watchers and transfers first (they publish or land files), then the connectors and jobs. The
    names stopped."""
    from providers import local_datastream, local_notifications, local_transfer, localrunner

    return (local_datastream.stop_all(Path(state_dir), project)  # they write files: first
            + local_notifications.stop_all(Path(state_dir), project) + local_transfer.stop_all(Path(state_dir), project)
            + localrunner.stop_all(Path(state_dir), project))


def build_secret_store(project: str, *, runner: str | None = None, state_dir: Path | str | None = None):
    """Where the connectors' secrets are checked (`providers.base.SecretStore`): Secret Manager,
    or with the local runner the local secrets directory (``$HEADWATER_SECRETS_DIR``, else
    ``<state dir>/secrets``) that the local stand-in for Cloud Run mounts from."""
    from providers.secretmanager import LocalSecrets, SecretManagerSecrets

    if (runner or default_runner()) == "local":
        state_dir = state_dir or os.environ.get("HEADWATER_STATE_DIR") or ".headwater"
        return LocalSecrets.for_state_dir(state_dir)
    return SecretManagerSecrets(project)


def dataflow_settings(project: str, region: str, platform: Platform | None) -> DataflowSettings:
    """The ``dataflow:`` block of platform.yaml with its defaults (under the landing bucket).

    Without the platform (callers that pass only project and region), the defaults assume the
    default landing bucket name, ``landing-<project>-<region>``.
    """
    from providers.dataflow import DataflowSettings
    from reconciler.compile import zone_names

    block = platform.dataflow if platform is not None else None
    landing = zone_names(platform).buckets["landing"] if platform is not None else f"landing-{project}-{region}"
    return DataflowSettings(
        project=project,
        location=(block and block.region) or region,
        template_prefix=(block and block.template_bucket) or f"gs://{landing}/dataflow",
        temp_location=(block and block.temp_location) or f"gs://{landing}/dataflow/tmp",
        service_account=block.service_account if block else None,
        max_workers=block.max_workers if block else None,
        scheduler_service_account=block.scheduler_service_account if block else None,
    )
