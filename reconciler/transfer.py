"""cloud_transfer sources: the rules that Storage Transfer and the other clouds impose.

Pure functions, used by validation (`reconciler.config`, `reconciler.load`), by compile and by
the providers (`providers.transfer`, `providers.local_transfer`); no I/O.

**Schedules.** A Storage Transfer job does not take cron: its ``Schedule`` is a start date, a
``start_time_of_day`` (UTC) and a ``repeat_interval`` (at least 1 hour; default 24 h). So a
``cloud_transfer`` source's ``schedule`` must be a cron expression that is one of those: runs at
one fixed minute, every N hours where N divides 24 (1, 2, 3, 4, 6, 8, 12) or once a day, every
day of every month. That is, the minute field is one number and the day, month and weekday
fields are ``*``; the hours it names are evenly spaced around the clock::

    "15 3 * * *"         daily at 03:15 UTC             -> start 03:15, every 24 h
    "0 */6 * * *"        00:00, 06:00, 12:00, 18:00     -> start 00:00, every 6 h
    "30 2/4 * * *"       02:30, 06:30, ... 22:30        -> start 02:30, every 4 h
    "0 1,13 * * *"       01:00 and 13:00                -> start 01:00, every 12 h
    "45 * * * *"         every hour at :45              -> start 00:45, every 1 h

Anything else - a weekday or day of month, a month, several minutes, uneven hours, more often
than hourly - has no Storage Transfer schedule and is refused at validate (`schedule_problem`).
`canonical_schedule` writes the accepted shapes one way (the compiled spec, and what the
provider reads back from a live job), so an equivalent rewrite is not a change.

**Bucket names** of the other clouds (`s3_bucket_problem`, `azure_container_problem`,
`azure_account_problem`), and **credentials**: a transfer source names a Secret Manager secret
(``credentials_secret``) or, for S3, an AWS role to assume (``role_arn``); key material written
into a connector file is refused (`credential_problem`) with the way to write it instead.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- schedules

SUPPORTED_SCHEDULES = ("'M H * * *' (daily at H:M UTC), 'M */N * * *' or 'M H/N * * *' (every N hours, "
                       "N dividing 24), 'M H1,H2,... * * *' with evenly spaced hours, or 'M * * * *' (hourly)")
DAY = 24


@dataclass(frozen=True)
class TransferSchedule:
    """A Storage Transfer schedule: the first run of the day at ``hour``:``minute`` UTC, then
    every ``every_hours`` (1-24, dividing 24)."""

    minute: int
    hour: int  # the first run of the day, 0 <= hour < every_hours
    every_hours: int

    @property
    def repeat_seconds(self) -> int:
        return self.every_hours * 3600

    def cron(self) -> str:
        """The canonical cron form (see the module docstring)."""
        if self.every_hours == DAY:
            return f"{self.minute} {self.hour} * * *"
        if self.every_hours == 1:
            return f"{self.minute} * * * *"
        hours = f"*/{self.every_hours}" if self.hour == 0 else f"{self.hour}/{self.every_hours}"
        return f"{self.minute} {hours} * * *"

    def times_of_day(self) -> list[tuple[int, int]]:
        """Every (hour, minute) of a day the schedule runs at."""
        return [(h, self.minute) for h in range(self.hour, DAY, self.every_hours)]


def parse_schedule(cron: str) -> TransferSchedule | str:
    """The `TransferSchedule` a five-field cron expression is, or why it is none (a message).
    The expression's syntax has been checked already (`reconciler.naming.cron_problem`)."""
    from croniter import croniter

    parts = cron.split()
    if len(parts) != 5:
        return "expected 5 fields"
    if parts[2:] != ["*", "*", "*"]:
        return ("Storage Transfer runs every N hours or daily, every day: the day of month, month and weekday "
                "fields must be '*'")
    try:
        (minutes, hours, *_rest), _ = croniter.expand(cron.lower())
    except Exception as exc:  # noqa: BLE001 - croniter's errors are several types
        return str(exc)
    if len(minutes) != 1 or minutes[0] == "*":
        return "Storage Transfer runs at most hourly, at one fixed minute: the minute field must be one number"
    minute = int(minutes[0])
    if hours == ["*"]:
        return TransferSchedule(minute, 0, 1)
    hours = sorted(int(h) for h in hours)
    every = DAY // len(hours)
    if DAY % len(hours) or any(b - a != every for a, b in zip(hours, hours[1:], strict=False)):
        return (f"the hours {','.join(map(str, hours))} are not evenly spaced around the day: Storage Transfer "
                "repeats at one interval that divides 24 hours")
    return TransferSchedule(minute, hours[0], every)


def schedule_problem(cron: str) -> str | None:
    """None when ``cron`` maps to a Storage Transfer schedule, else a message saying which shapes do."""
    parsed = parse_schedule(cron)
    if isinstance(parsed, TransferSchedule):
        return None
    return f"{cron!r} has no Storage Transfer schedule: {parsed}. Accepted: {SUPPORTED_SCHEDULES}"


def canonical_schedule(cron: str) -> str:
    """``cron`` in the canonical form of its schedule (``"0 0,6,12,18 * * *"`` -> ``"0 */6 * * *"``)."""
    parsed = parse_schedule(cron)
    if not isinstance(parsed, TransferSchedule):
        raise ValueError(f"{cron!r}: {parsed}")
    return parsed.cron()


def schedule_from_api(start_hour: int, start_minute: int, repeat_seconds: int) -> str:
    """The canonical cron of a live job's schedule (``start_time_of_day``, ``repeat_interval``;
    an unset interval is Storage Transfer's default, 24 h). A schedule no cron here describes
    (set by hand) reads as a plain description, so that it shows as drift."""
    repeat = repeat_seconds or DAY * 3600
    if repeat % 3600 or DAY % (repeat // 3600):
        return f"start {start_hour:02d}:{start_minute:02d} UTC, every {repeat} s"
    every = repeat // 3600
    return TransferSchedule(start_minute, start_hour % every, every).cron()


# --------------------------------------------------------------------------- other clouds' names

_S3_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def s3_bucket_problem(name: str) -> str | None:
    """Amazon S3's bucket naming rules (general purpose buckets); None when fine."""
    why = None
    if not 3 <= len(name) <= 63:
        why = f"it is {len(name)} characters; S3 allows 3-63"
    elif not _S3_NAME.fullmatch(name):
        why = "S3 allows lower-case letters, digits, '.' and '-', starting and ending with a letter or digit"
    elif ".." in name:
        why = "two adjacent periods"
    elif _is_ip(name):
        why = "it is formatted as an IP address"
    elif name.startswith(_S3_RESERVED_PREFIXES):
        why = f"S3 reserves the prefixes {', '.join(_S3_RESERVED_PREFIXES)}"
    elif name.endswith(_S3_RESERVED_SUFFIXES):
        why = f"S3 reserves the suffixes {', '.join(_S3_RESERVED_SUFFIXES)}"
    return f"{name!r} is not a valid S3 bucket name: {why}" if why else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def azure_container_problem(name: str) -> str | None:
    """Azure Blob Storage container names: 3-63 lower-case letters, digits and single hyphens."""
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", name):
        return (f"{name!r} is not a valid Azure container name: 3-63 lower-case letters, digits and hyphens, "
                "starting with a letter or digit, no two hyphens in a row, not ending with one")
    return None


def azure_account_problem(name: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9]{3,24}", name):
        return f"{name!r} is not a valid Azure storage account name: 3-24 lower-case letters and digits"
    return None


def source_path_problem(path: str) -> str | None:
    """A transfer source's path: an object prefix, empty or ending in '/', not starting with one."""
    if not path:
        return None
    if path.startswith("/"):
        return f"{path!r}: a source path is an object name prefix and must not start with '/'"
    if not path.endswith("/"):
        return f"{path!r}: Storage Transfer takes a source path that is empty or ends with '/' (e.g. {path + '/'!r})"
    if any(ch in path for ch in "\r\n") or len(path.encode()) > 1024:
        return f"{path!r}: at most 1024 bytes, without line breaks"
    return None


ROLE_ARN = re.compile(r"arn:aws(-cn|-us-gov)?:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}")


def role_arn_problem(value: str) -> str | None:
    if not ROLE_ARN.fullmatch(value):
        return (f"{value!r} is not an AWS IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>): "
                "Storage Transfer assumes this role with its Google identity (AssumeRoleWithWebIdentity)")
    return None


# --------------------------------------------------------------------------- credentials in YAML

# Keys that hold key material (compared without case, '-' and '_').
_CREDENTIAL_KEYS = {"awsaccesskey", "awsaccesskeyid", "accesskeyid", "awssecretaccesskey", "secretaccesskey",
                    "secretkey", "accesskey", "awssessiontoken", "sessiontoken", "sastoken", "azuresastoken",
                    "azurecredentials", "accountkey", "storageaccountkey", "azurestoragekey", "connectionstring"}
_AWS_KEY_ID = re.compile(r"(?<![A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
_SAS_TOKEN = re.compile(r"(^|[?&])sig=[A-Za-z0-9%+/=]{16,}")
_AZURE_KEY = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}==")

CREDENTIALS_HOWTO = (
    "credentials never go in a connector file (whoever can read the repository could use them). Put them in "
    "Secret Manager and name the secret: for S3, printf '{\"access_key_id\":\"…\",\"secret_access_key\":\"…\"}' "
    "| gcloud secrets create <id> --data-file=-, then credentials_secret: <id> - or, better, no key at all: "
    "role_arn: arn:aws:iam::<account>:role/<name>; for Azure, printf '{\"sas_token\":\"…\"}' | gcloud secrets "
    "create <id> --data-file=-, then credentials_secret: <id>"
)


def _walk(value: Any, loc: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*loc, key), item
            yield from _walk(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, (*loc, index))


def credential_problem(data: dict) -> tuple[tuple, str] | None:
    """The first place in a connector document that holds cloud key material - a key named like
    one (``aws_secret_access_key``, ``sas_token``, ...) or a value that is one (an AWS access key
    id, an Azure SAS token or account key) - as ``(loc, message)``; None when there is none."""
    for loc, value in _walk(data):
        key = loc[-1]
        named = isinstance(key, str) and re.sub(r"[-_\s]", "", key.lower()) in _CREDENTIAL_KEYS
        looks = isinstance(value, str) and bool(
            _AWS_KEY_ID.search(value) or _SAS_TOKEN.search(value) or _AZURE_KEY.search(value))
        if named or looks:
            what = f"{key!r} holds key material" if named else "this value looks like a cloud access key or token"
            return loc, f"{what}: {CREDENTIALS_HOWTO}"
    return None


# --------------------------------------------------------------------------- cross-field checks


def source_problems(ingestion: Any, landing_bucket: str | None, source_id: str) -> list[tuple[tuple, str]]:
    """What a validated `reconciler.config.CloudTransfer` must also satisfy, as ``(loc, message)``
    with ``loc`` the key of the connector file to point at. ``landing_bucket`` is None when
    platform.yaml did not load."""
    from reconciler import naming

    problems: list[tuple[tuple, str]] = []

    def add(key: str, message: str) -> None:
        problems.append((("ingestion", key), message))

    kind = ingestion.source_type
    bucket_rule = {"s3": s3_bucket_problem, "azure_blob": azure_container_problem,
                   "gcs": naming.bucket_problem}[kind]
    problem = bucket_rule(ingestion.source_bucket)
    if problem:
        add("source_bucket", problem)
    if (kind == "azure_blob") != (ingestion.storage_account is not None):
        add("storage_account", "an azure_blob source needs storage_account (the account holding the container)"
            if kind == "azure_blob" else f"storage_account applies to azure_blob sources only, not {kind}")
    if ingestion.role_arn is not None and kind != "s3":
        add("role_arn", f"role_arn applies to s3 sources only, not {kind}")
    if kind == "s3" and (ingestion.role_arn is None) == (ingestion.credentials_secret is None):
        add("role_arn" if ingestion.role_arn else "source_type",
            "an s3 source needs exactly one of role_arn (an AWS role Storage Transfer assumes) or "
            "credentials_secret (a Secret Manager secret with the access key as JSON)")
    if kind == "azure_blob" and ingestion.credentials_secret is None:
        add("source_type", "an azure_blob source needs credentials_secret (a Secret Manager secret holding "
                           '{"sas_token": "…"})')
    if kind == "gcs" and ingestion.credentials_secret is not None:
        add("credentials_secret", "a gcs source takes no credentials: the Storage Transfer service agent reads it "
                                  "(grant it roles/storage.objectViewer and roles/storage.legacyBucketReader on "
                                  "the source bucket)")
    if ingestion.delete_from_source and ingestion.delete_unique_in_sink:
        add("delete_unique_in_sink", "delete_from_source and delete_unique_in_sink are mutually exclusive "
                                     "(Storage Transfer refuses a job with both): choose one")
    if landing_bucket is not None:
        destination = ingestion.destination or f"gs://{landing_bucket}/{source_id}/"
        bucket, _, path = destination.removeprefix("gs://").partition("/")
        if bucket != landing_bucket:
            add("destination", f"{destination!r} is outside the landing bucket {landing_bucket!r}: the file "
                               "events and the ingestion claims live there")
        elif not path.endswith("/") or any(ch in path for ch in "*?["):
            add("destination", f"{destination!r} is not a prefix: Storage Transfer copies into a folder, a path "
                               "ending with '/' (no wildcards)")
        elif path.startswith("_headwater/"):
            add("destination", f"{destination!r} is under _headwater/, headwater's own bookkeeping")
        if kind == "gcs" and ingestion.source_bucket == landing_bucket:
            add("source_bucket", "the source is the landing bucket itself: a transfer would copy its own copies")
    return problems
