"""Validation of cloud_transfer sources (tests/test_validate.py's style): every bad input gets
file:line:col, the field and a clear message, and `headwater apply` changes nothing - it fails
before the first API call (not even an observe) against an in-memory provider that counts calls.

The example's transfer source is ``connectors/aws_data_lake.yaml`` (S3, by role ARN)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import copy_example, edit_yaml

from providers.memory import MemoryProvider
from reconciler import cli
from reconciler.engine import Engine
from reconciler.load import InvalidDesiredState, load_repo

FILE = "connectors/aws_data_lake.yaml"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_example(tmp_path)


def ingestion(**changes):
    """Set (value) or delete (None) keys of the transfer source's ingestion block."""

    def mutate(repo: Path) -> None:
        def change(data):
            for key, value in changes.items():
                if value is None:
                    data["ingestion"].pop(key, None)
                else:
                    data["ingestion"][key] = value

        edit_yaml(repo / FILE, change)

    return mutate


def text_edit(old: str, new: str):
    def mutate(repo: Path) -> None:
        path = repo / FILE
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new, 1))

    return mutate


CASES = [
    # (id, mutation, expected "file:line" prefix, expected "field: message" fragment)
    ("s3-bucket-uppercase", ingestion(source_bucket="Acme_Exports"),
     f"{FILE}:8:", "ingestion.source_bucket: 'Acme_Exports' is not a valid S3 bucket name"),
    ("s3-bucket-ip-address", ingestion(source_bucket="192.168.10.2"),
     f"{FILE}:8:", "is not a valid S3 bucket name: it is formatted as an IP address"),
    ("s3-bucket-too-long", ingestion(source_bucket="a" * 64),
     f"{FILE}:8:", "it is 64 characters; S3 allows 3-63"),
    ("s3-bucket-adjacent-periods", ingestion(source_bucket="acme..exports"),
     f"{FILE}:8:", "two adjacent periods"),
    ("s3-bucket-reserved-suffix", ingestion(source_bucket="acme-exports-s3alias"),
     f"{FILE}:8:", "S3 reserves the suffixes"),
    ("both-delete-options", ingestion(delete_from_source=True, delete_unique_in_sink=True),
     f"{FILE}:", "ingestion.delete_unique_in_sink: delete_from_source and delete_unique_in_sink are mutually "
                 "exclusive"),
    ("aws-secret-key-in-yaml", text_edit("  role_arn: arn:aws:iam::123456789012:role/headwater-transfer\n",
                                         "  aws_access_key_id: AKIAIOSFODNN7EXAMPLE\n"
                                         "  aws_secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"),
     f"{FILE}:14:3", "ingestion.aws_access_key_id: 'aws_access_key_id' holds key material: credentials never go in "
                     "a connector file"),
    ("aws-key-id-as-a-value", ingestion(role_arn=None, credentials_secret="AKIAIOSFODNN7EXAMPLE"),
     f"{FILE}:", "ingestion.credentials_secret: this value looks like a cloud access key or token"),
    ("azure-sas-token-anywhere", text_edit('description: "Warehouse', 'description: "https://acme.blob.core.windows'
                                           '.net/c?sv=2022-11-02&ss=b&sig=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA%3D%3D Warehouse'),
     f"{FILE}:3:", "description: this value looks like a cloud access key or token: credentials never go in"),
    ("secret-manager-way-in-the-message", ingestion(sas_token="sv=2022&sig=abc"),
     f"{FILE}:", "then credentials_secret: <id>"),
    ("schedule-on-weekdays", ingestion(schedule="0 3 * * 1"),
     f"{FILE}:", "ingestion.schedule: '0 3 * * 1' has no Storage Transfer schedule: Storage Transfer runs every N "
                 "hours or daily, every day"),
    ("schedule-more-than-hourly", ingestion(schedule="*/15 * * * *"),
     f"{FILE}:", "the minute field must be one number"),
    ("schedule-uneven-hours", ingestion(schedule="0 8/6 * * *"),
     f"{FILE}:", "the hours 8,14,20 are not evenly spaced"),
    ("schedule-bad-cron", ingestion(schedule="0 25 * * *"),
     f"{FILE}:", "hour field '25'"),
    ("overwrite-always", ingestion(overwrite_when="always"),
     f"{FILE}:", "ingestion.overwrite_when: overwrite_when: always copies every object again on every run"),
    ("s3-without-credentials", ingestion(role_arn=None),
     f"{FILE}:", "ingestion.source_type: an s3 source needs exactly one of role_arn"),
    ("s3-with-both-credentials", ingestion(credentials_secret="acme-s3-keys"),
     f"{FILE}:", "ingestion.role_arn: an s3 source needs exactly one of role_arn"),
    ("role-arn-malformed", ingestion(role_arn="arn:aws:iam::1234:user/bob"),
     f"{FILE}:", "ingestion.role_arn: 'arn:aws:iam::1234:user/bob' is not an AWS IAM role ARN"),
    ("role-arn-on-gcs", ingestion(source_type="gcs"),
     f"{FILE}:", "ingestion.role_arn: role_arn applies to s3 sources only, not gcs"),
    ("credentials-on-gcs", ingestion(source_type="gcs", role_arn=None, credentials_secret="keys"),
     f"{FILE}:", "ingestion.credentials_secret: a gcs source takes no credentials"),
    ("gcs-source-is-the-landing-bucket", ingestion(source_type="gcs", role_arn=None,
                                                   source_bucket="landing-headwater-demo-europe-west1"),
     f"{FILE}:", "the source is the landing bucket itself"),
    ("azure-without-storage-account", ingestion(source_type="azure_blob", role_arn=None, credentials_secret="sas",
                                                source_bucket="exports"),
     f"{FILE}:", "ingestion.storage_account: an azure_blob source needs storage_account"),
    ("azure-without-credentials", ingestion(source_type="azure_blob", role_arn=None, storage_account="acme",
                                            source_bucket="exports"),
     f"{FILE}:", "an azure_blob source needs credentials_secret"),
    ("azure-container-name", ingestion(source_type="azure_blob", role_arn=None, storage_account="acme",
                                       credentials_secret="sas", source_bucket="Ex--ports"),
     f"{FILE}:", "is not a valid Azure container name"),
    ("azure-account-name", ingestion(source_type="azure_blob", role_arn=None, storage_account="Acme-Storage",
                                     credentials_secret="sas", source_bucket="exports"),
     f"{FILE}:", "ingestion.storage_account: 'Acme-Storage' is not a valid Azure storage account name"),
    ("storage-account-on-s3", ingestion(storage_account="acme"),
     f"{FILE}:", "storage_account applies to azure_blob sources only, not s3"),
    ("source-path-without-slash", ingestion(source_path="inventory"),
     f"{FILE}:9:", "ingestion.source_path: 'inventory': Storage Transfer takes a source path that is empty or ends "
                   "with '/'"),
    ("source-path-absolute", ingestion(source_path="/inventory/"),
     f"{FILE}:9:", "must not start with '/'"),
    ("destination-outside-landing", ingestion(destination="gs://someone-elses-bucket/imports/"),
     f"{FILE}:", "ingestion.destination: 'gs://someone-elses-bucket/imports/' is outside the landing bucket"),
    ("destination-not-a-prefix", ingestion(destination="gs://landing-headwater-demo-europe-west1/imports/*.json"),
     f"{FILE}:", "is not a prefix: Storage Transfer copies into a folder"),
    ("destination-in-headwaters-bookkeeping",
     ingestion(destination="gs://landing-headwater-demo-europe-west1/_headwater/x/"),
     f"{FILE}:", "is under _headwater/"),
    ("destination-shared-with-another-source",
     ingestion(destination="gs://landing-headwater-demo-europe-west1/orders/2026/"),
     "connectors/orders.yaml:", "ingestion.location: the landing prefix gs://landing-headwater-demo-europe-west1/"
                                "orders/ overlaps connectors/aws_data_lake.yaml's gs://landing-headwater-demo-"
                                "europe-west1/orders/2026/: the two sources would ingest each other's files"),
    ("unknown-source-type", ingestion(source_type="ftp"),
     f"{FILE}:7:", "ingestion.source_type: Input should be 's3', 'azure_blob' or 'gcs'"),
]


@pytest.mark.parametrize(("mutate", "where", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_transfer_input_is_reported_with_position_and_nothing_is_touched(repo, mutate, where, message,
                                                                             monkeypatch, capsys):
    mutate(repo)

    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    lines = [str(p) for p in raised.value.problems]
    assert any(line.startswith(where) and message in line for line in lines), lines

    provider = MemoryProvider()
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider]))
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    assert provider.calls == {}, "validation must fail before any API call"
    assert provider.objects == {}
    err = capsys.readouterr().err
    assert message in err and "nothing was changed" in err


def test_key_material_is_never_echoed(repo):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    text_edit("  role_arn: arn:aws:iam::123456789012:role/headwater-transfer\n",
              f"  aws_secret_access_key: {secret}\n")(repo)
    with pytest.raises(InvalidDesiredState) as raised:
        load_repo(repo)
    assert secret not in str(raised.value)


def test_the_good_shapes_validate(repo):
    ingestion(schedule="15 2/4 * * *", overwrite_when="never", delete_unique_in_sink=True,
              destination="gs://landing-headwater-demo-europe-west1/imports/")(repo)
    load_repo(repo)
    ingestion(source_type="azure_blob", role_arn=None, storage_account="acme", credentials_secret="acme-sas",
              source_bucket="exports", destination=None, delete_unique_in_sink=False, delete_from_source=True)(repo)
    load_repo(repo)
    ingestion(source_type="gcs", credentials_secret=None, storage_account=None, source_bucket="partner-exports")(repo)
    load_repo(repo)


class _Secrets:
    """A secret store that holds some secret ids (`providers.base.SecretStore`)."""

    location = "Secret Manager (project headwater-demo)"

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing

    def missing(self, secret_ids):
        return set(secret_ids) - self.existing


def test_a_missing_credentials_secret_fails_the_plan_with_its_position(repo, monkeypatch, capsys):
    ingestion(role_arn=None, credentials_secret="acme-s3-keys")(repo)
    provider = MemoryProvider()
    secrets = _Secrets({"payments-api-key", "shipments-webhook-key"})
    monkeypatch.setattr(cli, "_engine", lambda state, args=None: Engine([provider], secrets=secrets))
    assert cli.main(["apply", "--repo", str(repo), "--auto-approve"]) == 1
    err = capsys.readouterr().err
    line = next(n for n, text in enumerate((repo / FILE).read_text().splitlines(), 1) if "credentials_secret" in text)
    assert f"{FILE}:{line}:3: ingestion.credentials_secret: secret 'acme-s3-keys' does not exist" in err
    assert provider.calls == {} and provider.objects == {}
