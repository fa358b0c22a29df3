"""The desired-state file formats, as pydantic models.

A desired-state repo holds:

* ``platform.yaml`` — `Platform`: project, region, environment, common labels, the zones
  (buckets and datasets with their storage lifecycle), Pub/Sub defaults and safety policy;
* ``connectors/<source_id>.yaml`` — `Connector`: one data source in the seed's connector format
  (ingestion pattern and its settings, schema reference, processing, serving, monitoring);
* ``schemas/<source_id>.json`` — `SourceSchema`: the source's fields in BigQuery terms.

The models check everything that can be checked within one file (types, required fields,
unknown keys, GCP naming rules, cron and duration syntax). Checks that need several files
(duplicate ids, schema references, fields named by processing steps) live in `reconciler.load`.
The JSON Schemas in ``schemas/`` at the project root are generated from these models
(`python -m reconciler.jsonschema`); a test fails when they are stale.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

from reconciler import naming, transfer

# --------------------------------------------------------------------------- value types

_DURATION = re.compile(r"^([0-9]+)(s|m|h|d)$")  # ASCII digits only (not "١٠s")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> int:
    """``"90s"``, ``"10m"``, ``"2h"``, ``"7d"`` or a whole number of seconds, as seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '60s', '10m', '2h' or '7d'")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"invalid duration {value!r}: expected a duration like '60s', '10m', '2h' or '7d'")


NEVER = "never"


def parse_expiration(value: Any) -> int:
    """An expiration setting: a duration (``"90d"``, or seconds), or ``never`` (no expiration,
    declared: a live expiration set elsewhere is removed), which is 0."""
    if isinstance(value, str) and value.strip() == NEVER:
        return 0
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("an expiration must be positive; write 'never' for no expiration")
    return seconds


def _at_least_an_hour(value: int) -> int:
    if 0 < value < 3600:
        raise ValueError("BigQuery's default table expiration is at least one hour (3600s)")
    return value


class FieldError(ValueError):
    """A model-level check's error that belongs to one of the model's fields: the loader reports it
    at that field's line and path (``ingestion.poll_interval``), not at the model's."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _check(rule):
    """Adapt a `naming` rule (returns an error message or None) to a pydantic validator."""

    def validate(value: str) -> str:
        problem = rule(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


def _json_messages_only(value: str) -> str:
    # Accepted by the schema (the platform design names them) but refused here: the streaming
    # pipeline parses JSON, so any other encoding would send every message to the dead letters.
    if value != "json":
        raise ValueError(f"{value!r} messages are not supported yet: the streaming ingestion pipeline "
                         "(beam/pubsub_to_bigquery) reads JSON only; publish JSON or use message_format: json")
    return value


def _not_supported(message: str):
    def refuse(value: Any) -> Any:
        raise ValueError(message)

    return refuse


Duration = Annotated[int, BeforeValidator(parse_duration), Field(ge=0)]
# A duration or "never" (0): declared, it is managed (with "never" removing one set elsewhere);
# left out, whatever the resource has is left alone.
Expiration = Annotated[int, BeforeValidator(parse_expiration)]
Cron = Annotated[str, _check(naming.cron_problem)]
GcsUri = Annotated[str, _check(naming.gcs_uri_problem)]
SourceId = Annotated[str, _check(naming.source_id_problem)]
LabelMap = Annotated[dict[str, str], _check(naming.labels_problem)]
ColumnName = Annotated[str, _check(naming.column_problem)]


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- platform.yaml

StorageClass = Literal["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"]


class Tier(Strict):
    after_days: int = Field(gt=0, description="Object age in days at which it moves to storage_class")
    storage_class: Literal["NEARLINE", "COLDLINE", "ARCHIVE"]


class Lifecycle(Strict):
    """Storage tiers of a zone's bucket. Objects are never deleted unless delete_after_days is set."""

    tiers: list[Tier] = Field(default_factory=list)
    delete_after_days: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Lifecycle:
        ages = [tier.after_days for tier in self.tiers]
        if ages != sorted(set(ages)):
            raise ValueError("tiers must be in increasing after_days order, without repeats")
        if self.delete_after_days is not None and ages and self.delete_after_days <= ages[-1]:
            raise ValueError("delete_after_days must come after the last tier")
        return self


def _tiers(*pairs: tuple[int, str]) -> Lifecycle:
    return Lifecycle(tiers=[Tier(after_days=days, storage_class=cls) for days, cls in pairs])


# The seed's retention table: Bronze 90 d → Nearline, 1 y → Coldline, 7 y → Archive, never deleted;
# Silver 180 d → Nearline, 2 y → Coldline (recreatable, so no archive tier); Gold always hot.
DEFAULT_LIFECYCLES: dict[str, Lifecycle] = {
    "landing": Lifecycle(),
    "bronze": _tiers((90, "NEARLINE"), (365, "COLDLINE"), (2555, "ARCHIVE")),
    "silver": _tiers((180, "NEARLINE"), (730, "COLDLINE")),
}


class BucketZone(Strict):
    bucket: str | None = Field(default=None, description="Bucket name; default {zone}-{project}-{region}")
    lifecycle: Lifecycle | None = Field(default=None, description="Default: the seed's retention table")
    deletion_protection: bool = True


_TABLE_EXPIRATION = ("The dataset's default expiration of new tables (a duration of at least 1h, or never); "
                     "updated in place. Unset: whatever the dataset has is left alone")
_PARTITION_EXPIRATION = ("The dataset's default partition expiration for new partitioned tables (a duration, or "
                         "never); updated in place. Unset: whatever the dataset has is left alone")


class DataZone(BucketZone):
    dataset: str | None = Field(default=None, description="BigQuery dataset id; default the zone name")
    default_table_expiration: Annotated[Expiration, AfterValidator(_at_least_an_hour)] | None = Field(
        default=None, description=_TABLE_EXPIRATION)
    default_partition_expiration: Expiration | None = Field(default=None, description=_PARTITION_EXPIRATION)


class GoldZone(Strict):
    dataset: str | None = None
    deletion_protection: bool = True
    default_table_expiration: Annotated[Expiration, AfterValidator(_at_least_an_hour)] | None = Field(
        default=None, description=_TABLE_EXPIRATION)
    default_partition_expiration: Expiration | None = Field(default=None, description=_PARTITION_EXPIRATION)


class Zones(Strict):
    landing: BucketZone = Field(default_factory=BucketZone)
    bronze: DataZone = Field(default_factory=DataZone)
    silver: DataZone = Field(default_factory=DataZone)
    gold: GoldZone = Field(default_factory=GoldZone)


class RetryBackoff(Strict):
    minimum: Duration = 10
    maximum: Duration = 600

    @model_validator(mode="after")
    def _range(self) -> RetryBackoff:
        if not (0 <= self.minimum <= 600 and 0 <= self.maximum <= 600):
            raise ValueError("retry backoff bounds must be between 0s and 600s")
        if self.minimum > self.maximum:
            raise ValueError("retry_backoff.minimum must not exceed retry_backoff.maximum")
        return self


_ORDERING = ("Deliver messages with the same ordering key in order. Immutable: changing it replaces the "
             "subscription, which holds data (gated: --allow-destroy). Unset: left as the subscription has it")
_EXACTLY_ONCE = ("Pub/Sub's exactly-once delivery (acknowledgements are confirmed); updated in place. Unset: left as "
                 "the subscription has it")
_RETAIN_ACKED = "Keep acknowledged messages for the retention period (seek/replay); updated in place"


class PubSubDefaults(Strict):
    ack_deadline_seconds: int = Field(default=60, ge=10, le=600)
    max_delivery_attempts: int = Field(default=5, ge=5, le=100)
    retry_backoff: RetryBackoff = Field(default_factory=RetryBackoff)
    message_retention: Duration = Field(default=7 * 86400, ge=600, le=31 * 86400)
    dead_letter_retention: Duration = Field(default=7 * 86400, ge=600, le=31 * 86400)
    # Defaults of every source's ingest subscription (<id>-ingest); a source's subscription: block overrides them.
    retain_acked_messages: bool = Field(default=False, description=_RETAIN_ACKED + " (default false)")
    enable_message_ordering: bool | None = Field(default=None, description=_ORDERING)
    enable_exactly_once_delivery: bool | None = Field(default=None, description=_EXACTLY_ONCE)


class Policy(Strict):
    prune: bool = Field(default=False, description="Delete managed resources that are no longer declared")
    max_delete_fraction: float = Field(default=0.2, ge=0, le=1)


ServiceAccount = Annotated[str, Field(pattern=r"^[^@\s]+@[a-z0-9.-]+\.gserviceaccount\.com$")]


class DataflowSettings(Strict):
    """Where and how the pipelines run on Dataflow (the local runner ignores this block).

    Each job's spec carries these settings as declared (``environment``; all but ``region``), so
    changing them plans an update of every job: a streaming job is updated with them, a batch
    job's schedule rewritten. Changing ``region`` moves the platform's jobs to where the old ones
    are not observed: drain those first (``headwater apply`` with the jobs removed).
    """

    region: Annotated[str, _check(naming.region_problem)] | None = Field(
        default=None, description="Dataflow regional endpoint; default the platform region")
    template_bucket: GcsUri | None = Field(
        default=None,
        description="gs:// prefix holding the Flex Template specs, <template_bucket>/templates/<template>.json; "
                    "default gs://<landing bucket>/dataflow")
    temp_location: GcsUri | None = Field(
        default=None, description="gs:// prefix for the jobs' temporary files; default gs://<landing bucket>/dataflow/tmp")
    service_account: ServiceAccount | None = Field(
        default=None, description="Worker service account e-mail; default the Compute Engine default account")
    max_workers: int | None = Field(default=None, ge=1, le=1000, description="Autoscaling ceiling per job")
    scheduler_service_account: ServiceAccount | None = Field(
        default=None,
        description="Service account whose OAuth token Cloud Scheduler uses to launch the batch jobs at each tick "
                    "of their schedule (needs roles/dataflow.developer and roles/iam.serviceAccountUser on the "
                    "worker account). Required to apply batch jobs on Dataflow; no default, so that a missing "
                    "permission fails the apply rather than a run")


class ConnectorSettings(Strict):
    """How the connectors (``streaming_api`` sources) run on Cloud Run."""

    image: Annotated[str, Field(pattern=r"^[a-z0-9.\-]+(:[0-9]+)?/[A-Za-z0-9._/\-]+(:[A-Za-z0-9._\-]+|@sha256:[0-9a-f]{64})$")] | None = Field(
        default=None, description="The connector runtime image (deploy/connector/); default "
                                  "<region>-docker.pkg.dev/<project>/headwater/connector:<headwater version>")
    service_account: ServiceAccount | None = Field(
        default=None, description="The connectors' service account; default Cloud Run's (the Compute Engine default)")


class ApiClient(Strict):
    """A client of the data API (OAuth 2.0 client credentials); its secret is a Secret Manager secret."""

    secret_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,255}$")]
    scopes: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}:(read|pii)$")]] = Field(
        min_length=1, description="<source>:read (and <source>:pii) of sources with third_party_api")
    requests_per_hour: Annotated[int, Field(ge=1)] | None = None


class ApiSettings(Strict):
    """How the data API (``cloud_run_service.data-api``, serving/api/) runs; issue 12."""

    image: Annotated[str, Field(pattern=r"^[a-z0-9.\-]+(:[0-9]+)?/[A-Za-z0-9._/\-]+(:[A-Za-z0-9._\-]+|@sha256:[0-9a-f]{64})$")] | None = Field(
        default=None, description="The data API image (deploy/api/); default "
                                  "<region>-docker.pkg.dev/<project>/headwater/api:<headwater version>")
    service_account: ServiceAccount | None = Field(
        default=None, description="The API's account: bigquery.jobUser on the project, dataViewer on the api dataset")
    max_instances: Annotated[int, Field(ge=1, le=100)] = 4
    requests_per_hour: Annotated[int, Field(ge=1)] = Field(default=1000, description="Default per-client limit")
    issuer: str | None = Field(default=None, description="The tokens' iss; default https://data-api.<project>")
    signing_secret_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,255}$")] = "data-api-signing-key"
    clients: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")], ApiClient] = Field(
        default_factory=dict)


# --- issue 13: governance (docs/governance.md; compiled by reconciler/governance.py) ----------------

# IAM's member forms for data access. allUsers / allAuthenticatedUsers are refused: a data platform
# never makes a zone public (a public webhook is a Cloud Run setting, not a reader).
_ACCOUNT_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                            r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
_SERVICE_ACCOUNT_EMAIL = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9.-]*[a-z0-9]\.gserviceaccount\.com$"
                                    r"|^[0-9]+-compute@developer\.gserviceaccount\.com$"
                                    r"|^[a-z0-9-]+@appspot\.gserviceaccount\.com$"
                                    r"|^[0-9]+@cloudservices\.gserviceaccount\.com$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
MEMBER_FORMS = ("user:NAME@DOMAIN, group:NAME@DOMAIN, serviceAccount:NAME@PROJECT.iam.gserviceaccount.com, "
                "domain:DOMAIN or serviceAgent:SERVICE")
PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")


def _q(value: str) -> str:
    """A member or role quoted for a message (public identifiers, not secrets; long ones cut)."""
    return repr(value) if len(value) <= 120 else naming.shown(value)


def iam_member_problem(value: str) -> str | None:
    """Why ``value`` is not an IAM member headwater grants data access to, or None.

    Accepted: ``user:``/``group:`` with an e-mail address, ``serviceAccount:`` with a service
    account's e-mail (``*.gserviceaccount.com``), ``domain:`` with a domain name, and
    ``serviceAgent:<service>``, the project's service agent of a service the IAM provider knows
    (`reconciler.governance.SERVICE_AGENT_SERVICES`). Case does not matter (IAM compares e-mails
    without it): the value is checked in its `naming.normalized_member` form. Refused with the
    reason: ``allUsers``/``allAuthenticatedUsers`` (public data), anything else."""
    if value in PUBLIC_MEMBERS:
        return (f"{value} is refused: it would make the platform's data readable by "
                f"{'anyone on the internet' if value == 'allUsers' else 'every Google account'}; name the groups, "
                "users or service accounts that may read it")
    shown_value = value
    value = naming.normalized_member(value)
    kind, sep, rest = value.partition(":")
    if kind == "serviceAgent":
        from reconciler.governance import SERVICE_AGENT_SERVICES

        return None if rest in SERVICE_AGENT_SERVICES else (
            f"{_q(shown_value)}: {_q(rest)} is not a service agent headwater resolves: serviceAgent:"
            f"{', serviceAgent:'.join(SERVICE_AGENT_SERVICES)}")
    if not sep or kind not in ("user", "group", "serviceAccount", "domain"):
        return f"{_q(shown_value)} is not an IAM member: expected {MEMBER_FORMS}"
    written = shown_value.partition(":")[2]
    if kind == "domain":
        return None if _DOMAIN.match(rest) else f"{_q(shown_value)}: {_q(written)} is not a domain name"
    if kind == "serviceAccount":
        return None if _SERVICE_ACCOUNT_EMAIL.match(rest) else (
            f"{_q(shown_value)}: {_q(written)} is not a service account e-mail "
            "(NAME@PROJECT.iam.gserviceaccount.com)")
    if len(rest) > 254 or not _ACCOUNT_EMAIL.match(rest):
        return f"{_q(shown_value)}: {_q(written)} is not an e-mail address ({kind}:NAME@DOMAIN)"
    return None


_TIER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _member_or_tier(value: str) -> str:
    """A reader entry: a tier name (no colon; resolved against access.tiers by reconciler.governance)
    or an IAM member."""
    if ":" not in value and value not in PUBLIC_MEMBERS:
        if not _TIER_NAME.match(value):
            raise ValueError(f"{_q(value)} is neither a tier name (lower case letters, digits, _ and -) "
                             f"nor an IAM member ({MEMBER_FORMS})")
        return value
    return _member(value)


def _member(value: str) -> str:
    """An IAM member, checked, in its canonical form (`naming.normalized_member`: the e-mail or
    domain in lower case, as IAM compares them)."""
    problem = iam_member_problem(value)
    if problem:
        raise ValueError(problem)
    return naming.normalized_member(value)


def _each_once(values: list[str]) -> list[str]:
    """A member list without repeats (``group:A@x.com`` and ``group:a@x.com`` are one member once
    normalized), in the order written."""
    return list(dict.fromkeys(values))


Member = Annotated[str, AfterValidator(_member)]
MemberOrTier = Annotated[str, AfterValidator(_member_or_tier)]
MemberList = Annotated[list[Member], AfterValidator(_each_once)]
MemberOrTierList = Annotated[list[MemberOrTier], AfterValidator(_each_once)]
TierName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
ClassName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]

_CUSTOM_ROLE = re.compile(r"^(projects/[a-z][a-z0-9-]{4,28}[a-z0-9]|organizations/[0-9]+)/roles/[A-Za-z0-9_.]{3,64}$")


def role_problem(value: str) -> str | None:
    """Why ``value`` is not a grantable role, or None: a GCP predefined role (the maintained list
    vendored in ``reconciler/data/iam_predefined_roles.txt``), or a custom role by its form,
    ``projects/<project>/roles/<id>`` or ``organizations/<number>/roles/<id>``."""
    import difflib

    if _CUSTOM_ROLE.match(value):
        return None
    known = predefined_roles()
    if value in known:
        return None
    if value.startswith("projects/") or value.startswith("organizations/"):
        return (f"{_q(value)} is not a custom role name: expected projects/<project>/roles/<id> or "
                "organizations/<number>/roles/<id>")
    if not value.startswith("roles/"):
        return f"{_q(value)} is not a role: expected roles/<service>.<role> or projects/<project>/roles/<id>"
    close = difflib.get_close_matches(value, sorted(known), n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"{_q(value)} is not a GCP predefined role{hint} (the list headwater checks against: "
            "reconciler/data/iam_predefined_roles.txt); a custom role is written projects/<project>/roles/<id>")


_ROLES: frozenset[str] | None = None


def predefined_roles() -> frozenset[str]:
    """The GCP predefined role names (``roles/...``), read once from the vendored list."""
    global _ROLES
    if _ROLES is None:
        from pathlib import Path

        path = Path(__file__).resolve().parent / "data" / "iam_predefined_roles.txt"
        if not path.is_file():  # an installation built without the package data
            raise RuntimeError(f"headwater's list of GCP predefined roles is missing ({path}): reinstall headwater "
                               "with its package data (pyproject.toml [tool.setuptools.package-data] data/*.txt)")
        text = path.read_text()
        _ROLES = frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return _ROLES


Role = Annotated[str, _check(role_problem)]

# The seed's access tiers ("Security & Governance"): who reads each zone when access.zones does
# not say (each tier only if access.tiers declares it).
DEFAULT_ZONE_READERS: dict[str, tuple[str, ...]] = {
    "landing": (),
    "bronze": ("engineers",),
    "silver": ("engineers", "analysts"),
    "gold": ("engineers", "analysts", "bi"),
}
ENGINEERS_TIER = "engineers"  # the tier that alone reads a source's raw Bronze data once it has classified columns


class ZoneAccess(Strict):
    """Who reads one zone (its dataset with roles/bigquery.dataViewer, its bucket with
    roles/storage.objectViewer), and any other role on them."""

    readers: MemberOrTierList | None = Field(
        default=None, description="Tier names (of access.tiers) or IAM members; default the seed's tiers for the "
                                  "zone (bronze: engineers; silver: engineers, analysts; gold: engineers, analysts, "
                                  "bi), those declared")
    bindings: dict[Role, MemberOrTierList] = Field(
        default_factory=dict, description="More roles on the zone's dataset and bucket: a GCP predefined role "
                                          "(roles/...) or a custom role (projects/<p>/roles/<id>) -> tier names or "
                                          "IAM members. A dataset takes roles/bigquery.* only, a bucket "
                                          "roles/storage.* only, and not the project-level-only ones "
                                          "(roles/bigquery.jobUser, ...: docs/governance.md); other roles are "
                                          "refused")


class AccessZones(Strict):
    landing: ZoneAccess = Field(default_factory=ZoneAccess, description="The landing bucket (no readers by default)")
    bronze: ZoneAccess = Field(default_factory=ZoneAccess)
    silver: ZoneAccess = Field(default_factory=ZoneAccess)
    gold: ZoneAccess = Field(default_factory=ZoneAccess, description="The Gold dataset, and the reporting and "
                                                                     "features datasets of the serving layer")


class Access(Strict):
    """Who may read what (docs/governance.md)."""

    tiers: dict[TierName, Annotated[MemberList, Field(min_length=1)]] = Field(
        default_factory=dict, description="Named groups of principals in IAM's member form (user:, group:, "
                                          "serviceAccount:, domain:)")
    zones: AccessZones = Field(default_factory=AccessZones)
    exclusive: StrictBool = Field(
        default=False, description="false: additive, headwater manages only the members it declares and derives, "
                                   "per role; true: the declared members are the whole binding of each role "
                                   "headwater grants on the zones' datasets and buckets and on the classes' policy "
                                   "tags and data policies (docs/governance.md, \"Exclusive\"; the plan shows each "
                                   "removal; removing headwater's own identity or a service agent is refused)")
    reconciler: Member | None = Field(
        default=None, description="headwater's own identity, never removed by exclusive; default "
                                  "serviceAccount:headwater-apply@<project>.iam.gserviceaccount.com (deploy/iam.md)")


_MASKING = re.compile(r"^(sha256|always_null|default_value|routine:[A-Za-z_][A-Za-z0-9_]{0,1023}\.[A-Za-z_][A-Za-z0-9_]{0,255})$")
MASKING_EXPRESSIONS = {"sha256": "SHA256", "always_null": "ALWAYS_NULL", "default_value": "DEFAULT_MASKING_VALUE"}


def _masking(value: str) -> str:
    if not _MASKING.match(value):
        raise ValueError(f"masking {_q(value)} is not one BigQuery applies: sha256, always_null, default_value or "
                         "routine:<dataset>.<routine> (a masking routine)")
    return value


class Classification(Strict):
    """A class of sensitive columns: who reads clear values (fine-grained readers); every other
    reader of the zone reads masked values, as ``masking`` says."""

    masking: Annotated[str, AfterValidator(_masking)] = Field(
        default="sha256", json_schema_extra={"pattern": _MASKING.pattern}, description="sha256 | always_null | default_value | routine:<dataset>.<routine> (a "
                                      "BigQuery masking routine)")
    readers: MemberOrTierList = Field(
        default_factory=list, description="Tier names or IAM members who read the clear values")

    @property
    def masking_expression(self) -> str:
        """The data policy's masking (SPEC_SHAPES bigquery_data_policy): SHA256, ALWAYS_NULL,
        DEFAULT_MASKING_VALUE or routine:<dataset>.<routine>."""
        return MASKING_EXPRESSIONS.get(self.masking, self.masking)


class SourceAccess(Strict):
    """A source's own readers, publishers and subscribers, beside the zones' (table- and topic-level)."""

    readers: MemberOrTierList = Field(
        default_factory=list, description="Read the source's Silver and Gold tables (roles/bigquery.dataViewer on "
                                          "each table)")
    publishers: MemberOrTierList = Field(
        default_factory=list, description="Publish to the source's topic (roles/pubsub.publisher on it)")
    subscribers: MemberOrTierList = Field(
        default_factory=list, description="Attach their own subscriptions to the source's topic "
                                          "(roles/pubsub.subscriber on the topic); never the ingest subscription, "
                                          "whose records would be taken from the pipeline")


# --- end governance ----------------------------------------------------------------------------------


class Platform(Strict):
    project: Annotated[str, _check(naming.project_problem)]
    region: Annotated[str, _check(naming.region_problem)]
    environment: Annotated[str, _check(naming.label_value_problem)]
    labels: LabelMap = Field(default_factory=dict)
    zones: Zones = Field(default_factory=Zones)
    pubsub: PubSubDefaults = Field(default_factory=PubSubDefaults)
    policy: Policy = Field(default_factory=Policy)
    dataflow: DataflowSettings = Field(default_factory=DataflowSettings)
    connectors: ConnectorSettings = Field(default_factory=ConnectorSettings)
    datastream: DatastreamSettings = Field(default_factory=lambda: DatastreamSettings())  # database_cdc (issue 10)
    suspend: bool = Field(default=False, description="Observe only: the daemon plans but never applies")
    api: ApiSettings = Field(default_factory=lambda: ApiSettings())  # issue 12: the data API (docs/data-api-contract.md)
    # issue 13: governance (docs/governance.md; reconciler/governance.py)
    access: Access = Field(default_factory=Access, description="Who may read what: tiers, zone readers, bindings")
    classifications: dict[ClassName, Classification] = Field(
        default_factory=dict, description="Classes of sensitive columns (a schema field's classification): who "
                                          "reads clear values, how the others' are masked")
    audit_logs: StrictBool = Field(default=False, description="Data Access audit logs (ADMIN_READ, DATA_READ, DATA_WRITE) "
                                                        "for BigQuery and Cloud Storage on the project")


# --------------------------------------------------------------------------- connectors

class BatchFile(Strict):
    """Files landed in a Cloud Storage prefix. Each file's arrival event starts its ingestion (a
    ``storage_notification`` to the source's topic); ``schedule`` adds a sweep for missed events."""

    pattern: Literal["batch_file"]
    location: GcsUri | None = Field(
        default=None, description="Default gs://<landing bucket>/<source_id>/; must be in the landing bucket")
    schedule: Cron | None = Field(default=None, description="Optional sweep of the prefix (cron, UTC)")
    format: Literal["json", "csv", "parquet", "avro"]
    compression: Literal["none", "gzip"] = "none"


MIN_POLL_INTERVAL_S = 10  # below this a poller is a load test of someone else's API

ApiUrl = Annotated[str, _check(naming.api_url_problem)]
DottedPath = Annotated[str, _check(naming.dotted_path_problem)]
HeaderName = Annotated[str, _check(naming.http_header_problem)]
QueryParam = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-\[\]]{1,128}$")]
SecretId = Annotated[str, _check(naming.secret_name_problem)]


class Pagination(Strict):
    """How a REST API hands out the next page (docs/connector-contract.md)."""

    type: Literal["none", "next_url", "link_header", "cursor", "page"]
    path: DottedPath | None = Field(
        default=None, description="next_url: where the next page's URL is in the body; cursor: where the next cursor is")
    param: QueryParam | None = Field(default=None, description="cursor, page: the query parameter that carries it")
    start: int | None = Field(default=None, ge=0, description="page: the first page's number (default 1)")

    @model_validator(mode="after")
    def _fields_of_type(self) -> Pagination:
        needs = {"none": set(), "next_url": {"path"}, "link_header": set(), "cursor": {"path", "param"},
                 "page": {"param"}}[self.type]
        allowed = needs | ({"start"} if self.type == "page" else set())
        for name in ("path", "param", "start"):
            value = getattr(self, name)
            if name in needs and value is None:
                raise FieldError("type", f"pagination type {self.type} needs {name}")
            if name not in allowed and value is not None:
                raise FieldError(name, f"pagination type {self.type} takes no {name} (it takes: "
                                       f"{', '.join(sorted(allowed)) or 'nothing else'})")
        return self


class ApiKey(Strict):
    """Where an ``api_key`` credential goes: a header (default ``X-API-Key``) or a query parameter."""

    header: HeaderName | None = None
    query: QueryParam | None = None

    @model_validator(mode="after")
    def _one_place(self) -> ApiKey:
        if self.header is not None and self.query is not None:
            raise FieldError("query", "api_key takes header or query, not both")
        return self


class OAuth2(Strict):
    """OAuth 2.0 client credentials grant; the secret holds ``client_id:client_secret``."""

    token_url: ApiUrl
    scopes: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


class Signature(Strict):
    """How a webhook's deliveries are signed: HMAC of the body with a Secret Manager key.

    ``scheme: hex`` is GitHub's (``sha256=<hex>`` or bare hex of the body); ``timestamped`` is
    Stripe's (``t=<unix>,v1=<hex>`` over ``"<t>.<body>"``), refused outside
    ``timestamp_tolerance`` so that a captured delivery cannot be replayed.
    """

    header: HeaderName
    secret_name: SecretId
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    scheme: Literal["hex", "timestamped"] = "hex"
    timestamp_tolerance: Duration | None = Field(
        default=None, description="timestamped only: how old a delivery may be (default 300s)")

    @model_validator(mode="after")
    def _tolerance(self) -> Signature:
        if self.timestamp_tolerance is not None and self.scheme != "timestamped":
            raise FieldError("timestamp_tolerance", "timestamp_tolerance applies to scheme: timestamped only")
        if self.timestamp_tolerance is not None and not 1 <= self.timestamp_tolerance <= 3600:
            raise FieldError("timestamp_tolerance", "timestamp_tolerance must be between 1s and 1h")
        return self


# Keys that belong to one connector_type only: declaring them for the other is refused rather
# than ignored (a setting is a promise).
REST_API_ONLY = ("api_endpoint", "poll_interval", "records", "pagination", "cursor_field", "cursor_param",
                 "params", "request_timeout", "max_requests_per_minute", "api_key", "oauth2", "auth_type",
                 "secret_name")
# Paths the connector runtime serves itself (connector/spec.py HEALTH_PATH), and the root.
RESERVED_WEBHOOK_PATHS = frozenset({"", "/healthz"})
WEBHOOK_ONLY = ("webhook_path", "signature", "max_body_bytes", "delivery_id_header", "max_instances")


class StreamingApi(Strict):
    """A REST API polled by a connector, or a webhook receiver: a Cloud Run service running the
    connector runtime (``connector/``) that publishes each record to the source's topic."""

    pattern: Literal["streaming_api"]
    connector_type: Literal["rest_api", "webhook"]
    # rest_api
    api_endpoint: ApiUrl | None = Field(default=None, description="https:// (http:// only on loopback)")
    params: dict[QueryParam, str] = Field(default_factory=dict, description="Fixed query parameters of every request")
    auth_type: Literal["none", "bearer_token", "api_key", "oauth2", "basic"] = "none"
    secret_name: SecretId | None = Field(default=None, description="Secret Manager secret id holding the credential")
    api_key: ApiKey | None = Field(default=None, description="auth_type api_key: header (default X-API-Key) or query")
    oauth2: OAuth2 | None = Field(default=None, description="auth_type oauth2: token_url and scopes")
    poll_interval: Duration | None = None
    records: DottedPath | None = Field(
        default=None, description="Dotted path of the list of records in the JSON body; default: the body is the list")
    pagination: Pagination = Field(default_factory=lambda: Pagination(type="none"))
    cursor_field: DottedPath | None = Field(
        default=None, description="Record field for incremental polling (an inclusive lower bound)")
    cursor_param: QueryParam | None = Field(default=None, description="Query parameter carrying the lower bound")
    request_timeout: Duration = Field(default=30, ge=1, le=600)
    max_requests_per_minute: int = Field(default=60, ge=1, le=6000)
    # webhook
    webhook_path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9/_\-.]*$")] | None = None
    signature: Signature | Literal["none"] | None = Field(
        default=None, description="How deliveries are signed; 'none' accepts unsigned deliveries explicitly")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=32 << 20)
    delivery_id_header: HeaderName | None = Field(
        default=None, description="Header with the sender's delivery id (e.g. X-GitHub-Delivery)")
    max_instances: int = Field(default=10, ge=1, le=1000, description="Webhook service autoscaling ceiling")

    @model_validator(mode="after")
    def _consistent(self) -> StreamingApi:
        declared = self.model_fields_set
        foreign = WEBHOOK_ONLY if self.connector_type == "rest_api" else REST_API_ONLY
        for name in foreign:
            if name in declared:
                raise FieldError(name, f"{name} applies to {'webhook' if name in WEBHOOK_ONLY else 'rest_api'} "
                                       f"connectors only, not connector_type {self.connector_type}")
        if self.connector_type == "rest_api":
            if self.api_endpoint is None or self.poll_interval is None:
                raise FieldError("api_endpoint" if self.api_endpoint is None else "poll_interval",
                                 "a rest_api connector needs api_endpoint and poll_interval")
            if self.poll_interval < MIN_POLL_INTERVAL_S:
                raise FieldError("poll_interval", f"poll_interval {self.poll_interval}s is under the minimum of "
                                                  f"{MIN_POLL_INTERVAL_S}s")
            if self.auth_type != "none" and self.secret_name is None:
                raise FieldError("secret_name", f"auth_type {self.auth_type} needs secret_name "
                                                "(a Secret Manager secret id)")
            if self.auth_type == "none" and self.secret_name is not None:
                raise FieldError("secret_name", "secret_name is set but auth_type is none: say which auth_type uses it")
            if self.api_key is not None and self.auth_type != "api_key":
                raise FieldError("api_key", "api_key applies to auth_type api_key only")
            if (self.oauth2 is not None) != (self.auth_type == "oauth2"):
                raise FieldError("auth_type" if self.oauth2 is None else "oauth2",
                                 "auth_type oauth2 needs oauth2.token_url" if self.oauth2 is None
                                 else "oauth2 applies to auth_type oauth2 only")
            if (self.cursor_field is None) != (self.cursor_param is None):
                raise FieldError("cursor_field" if self.cursor_field is not None else "cursor_param",
                                 "incremental polling needs both cursor_field and cursor_param")
        else:
            if self.webhook_path is None:
                raise FieldError("connector_type", "a webhook connector needs webhook_path")
            if self.webhook_path.rstrip("/") in RESERVED_WEBHOOK_PATHS:
                raise FieldError("webhook_path", f"webhook_path {self.webhook_path!r} is reserved: the connector "
                                                 "answers its health checks there; use e.g. /hooks/<name>")
            if self.signature is None:
                raise FieldError("connector_type", "a webhook connector needs signature (header, secret_name, ...), "
                                                   "or signature: none to accept unsigned deliveries")
        return self

    @property
    def secret_ids(self) -> list[str]:
        """Every Secret Manager secret the connector reads."""
        ids = [self.secret_name] if self.secret_name else []
        if isinstance(self.signature, Signature):
            ids.append(self.signature.secret_name)
        return ids


# --- database_cdc (issue 10: Datastream) ----------------------------------------------------------

CDC_DATABASE_TYPES = ("postgresql", "mysql")  # what headwater streams; Datastream's others are refused
PgIdentifier = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
TableName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$")]
ProfileRef = Annotated[str, Field(pattern=r"^([a-z][a-z0-9-]{0,59}[a-z0-9]|projects/[^/]+/locations/[^/]+/"
                                             r"connectionProfiles/[a-z][a-z0-9-]{0,59}[a-z0-9])$")]


def _cdc_database_type(value: str) -> str:
    if value not in CDC_DATABASE_TYPES:
        raise ValueError(f"database_type {value} is not supported yet: headwater streams postgresql and mysql "
                         "(its Datastream source config and its change-event positions)")
    return value


CdcDatabaseType = Annotated[Literal["postgresql", "mysql", "oracle", "sqlserver"],
                            AfterValidator(_cdc_database_type)]


class CdcTable(Strict):
    """One table a ``database_cdc`` source streams: its own schema, Bronze change log and Silver table."""

    name: TableName = Field(description="The table as the database names it: <schema>.<table> (PostgreSQL; "
                                        "'public.' may be left out) or <database>.<table> (MySQL; the connection "
                                        "profile's database may be left out)")
    schema_: str | None = Field(default=None, alias="schema", description=(
        "Path of the table's JSON schema, relative to the repo root; default schemas/<source_id>.<table>.json "
        "(<table> is <schema>_<table> outside the default schema)"))
    primary_key: list[ColumnName] | None = Field(default=None, min_length=1, description=(
        "The columns Silver keeps the current state by (the table's primary key); default the schema "
        "file's primary_key"))

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _table_entry(value: Any) -> Any:
    # The seed writes plain names (tables: [orders, ...]): a table whose schema file and primary key
    # are found by convention (schemas/<source_id>.<table>.json and its primary_key).
    return {"name": value} if isinstance(value, str) else value


class DatabaseCdc(Strict):
    """A database's changes, captured by a Datastream stream into the landing bucket (JSON files
    under ``cdc/<source_id>/``), announced by the bucket's notification and applied by the
    ``datastream_to_bigquery`` pipeline: per table, a Bronze change log and a Silver table kept
    equal to the table's current state (docs/database-cdc.md)."""

    pattern: Literal["database_cdc"]
    connector_type: Literal["datastream"] = "datastream"
    database_type: CdcDatabaseType
    connection_profile: ProfileRef = Field(description=(
        "The source database's connection profile, declared in platform.yaml (datastream.connection_profiles): "
        "its id, or projects/<project>/locations/<region>/connectionProfiles/<id> of this platform"))
    tables: list[Annotated[CdcTable, BeforeValidator(_table_entry)]] = Field(min_length=1, description=(
        "Each table streamed: a name (its schema file and primary key found by convention) or "
        "{name, schema, primary_key}"))
    publication: PgIdentifier | None = Field(default=None, description=(
        "postgresql: the publication listing the tables (created by the database's owner); default "
        "headwater_<source_id>"))
    replication_slot: PgIdentifier | None = Field(default=None, description=(
        "postgresql: the logical replication slot (pgoutput) Datastream reads; default headwater_<source_id>"))
    backfill: Literal["all", "none"] = Field(default="all", description=(
        "all: each table's existing rows are read first (again whenever the stream is recreated); none: changes "
        "from the stream's start only"))

    @model_validator(mode="after")
    def _postgres_only(self) -> DatabaseCdc:
        if self.database_type != "postgresql":
            for name in ("publication", "replication_slot"):
                if getattr(self, name) is not None:
                    raise FieldError(name, f"{name} applies to database_type postgresql only")
        return self


class ConnectionProfile(Strict):
    """A source database Datastream connects to. The password is a Secret Manager secret, named;
    never a value in YAML."""

    database_type: CdcDatabaseType
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,251}[A-Za-z0-9])?$")] = Field(
        description="Host name or IP address the database listens on (reachable from Datastream)")
    port: int = Field(default=0, ge=0, le=65535, description="Default 5432 (postgresql) or 3306 (mysql)")
    database: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$\-]{0,62}$")] | None = Field(
        default=None, description="postgresql: the database to stream from (required); mysql: the default database "
                                  "of table names written without one")
    user: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-@]{0,62}$")] = Field(
        description="The replication user")
    password_secret: SecretId = Field(description="Secret Manager secret id holding the user's password")

    @model_validator(mode="after")
    def _database(self) -> ConnectionProfile:
        if self.database_type == "postgresql" and self.database is None:
            raise FieldError("database_type", "a postgresql connection profile needs database")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (5432 if self.database_type == "postgresql" else 3306)


class DatastreamSettings(Strict):
    """Datastream: the source databases' connection profiles, by id (referenced by database_cdc
    sources' connection_profile). The landing bucket's destination profile is headwater's own."""

    connection_profiles: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,59}[a-z0-9]$")], ConnectionProfile] = \
        Field(default_factory=dict, description="Connection profile id -> the database it connects to")


Platform.model_rebuild()  # its datastream block is defined here, after it


# --- end database_cdc ------------------------------------------------------------------------------


# --- cloud_transfer (issue 10: Storage Transfer) -------------------------------------------------

def _never_always(value: str) -> str:
    if value == "always":
        raise ValueError("overwrite_when: always copies every object again on every run, and each copy is a new "
                         "object generation that ingestion reads again (the whole source re-ingested each run); "
                         "use different (the default: changed objects only) or never")
    return value


TransferCron = Annotated[str, _check(naming.cron_problem), _check(transfer.schedule_problem)]


class CloudTransfer(Strict):
    """Objects copied into the landing bucket from an S3 bucket, an Azure container or another
    Cloud Storage bucket by a Storage Transfer job, on ``schedule``. Each copied object's arrival
    event starts its ingestion, as for ``batch_file``; the landing prefix keeps the copies, which
    is how the next run knows what it has copied (docs/storage-transfer.md)."""

    pattern: Literal["cloud_transfer"]
    source_type: Literal["s3", "azure_blob", "gcs"]
    source_bucket: Annotated[str, Field(min_length=1)] = Field(
        description="The S3 bucket, Azure container or Cloud Storage bucket (checked by its cloud's naming rules)")
    source_path: Annotated[str, _check(transfer.source_path_problem)] = Field(
        default="", description="Object name prefix to copy: empty (all) or ending with '/'")
    storage_account: Annotated[str, _check(transfer.azure_account_problem)] | None = Field(
        default=None, description="azure_blob only: the storage account holding the container")
    schedule: TransferCron = Field(description=f"When the transfer runs (cron, UTC): {transfer.SUPPORTED_SCHEDULES}")
    destination: GcsUri | None = Field(
        default=None, description="Landing prefix the objects are copied to, ending with '/'; default "
                                  "gs://<landing bucket>/<source_id>/; must be in the landing bucket")
    role_arn: Annotated[str, _check(transfer.role_arn_problem)] | None = Field(
        default=None, description="s3 only: the AWS IAM role Storage Transfer assumes (no key anywhere)")
    credentials_secret: SecretId | None = Field(
        default=None, description="Secret Manager secret id holding the source's credentials as JSON "
                                  "(s3: access_key_id, secret_access_key; azure_blob: sas_token)")
    overwrite_when: Annotated[Literal["different", "never", "always"], AfterValidator(_never_always)] = Field(
        default="different", description="different: copy a source object again when its content changed "
                                         "(then ingested again, as a new generation); never: copy each name once")
    delete_from_source: bool = Field(
        default=False, description="Delete each source object once copied (exclusive with delete_unique_in_sink)")
    delete_unique_in_sink: bool = Field(
        default=False, description="Delete landing copies whose source object is gone (exclusive with "
                                   "delete_from_source); ingested data stays in Bronze and Silver")

    @property
    def secret_ids(self) -> list[str]:
        return [self.credentials_secret] if self.credentials_secret else []


# --- end cloud_transfer ----------------------------------------------------------------------------


class EventStreaming(Strict):
    pattern: Literal["event_streaming"]
    pubsub_topic: Annotated[str, _check(naming.topic_reference_problem)] | None = Field(
        default=None, description="Topic id to manage (default <source_id>), or projects/<project>/topics/<id>: "
                                  "in another project, a topic that is only read (checked to exist) and subscribed "
                                  "to by its full name, never created or managed here"
    )
    message_format: Annotated[Literal["json", "avro", "protobuf"], AfterValidator(_json_messages_only)] = Field(
        default="json", description="Encoding of the topic's messages; the ingestion pipeline reads JSON "
                                    "(avro and protobuf are named by the platform design but not supported yet)")
    window_size: Annotated[Duration, AfterValidator(_not_supported(
        "window_size is not supported yet: the streaming pipeline ingests every event as it comes and "
        "runs no windowed aggregation (Gold aggregates are rebuilt from Silver hourly); remove it"))] | None = None


Ingestion = Annotated[
    BatchFile | StreamingApi | DatabaseCdc | CloudTransfer | EventStreaming,
    Field(discriminator="pattern"),
]

INGESTION_PATTERNS = ("batch_file", "streaming_api", "database_cdc", "cloud_transfer", "event_streaming")


class SchemaRef(Strict):
    file: str | None = Field(default=None, description=(
        "Path of the source's JSON schema, relative to the repo root (required; a database_cdc source's tables "
        "name theirs: tables[].schema)"))
    validation: Literal["strict", "lenient"] = "strict"
    evolution: Literal["backward_compatible", "none", "recreate"] = Field(
        default="backward_compatible",
        description=(
            "backward_compatible: only NULLABLE additions apply; none: any schema change is blocked; "
            "recreate: incompatible changes replace the table (still gated by --allow-destroy)"
        ),
    )


class Deduplication(Strict):
    key: list[str] = Field(min_length=1)
    window: Duration = Field(default=600, description="How long a key is remembered by the streaming pipeline")


class QualityRule(Strict):
    field: str
    check: Literal["not_null", "valid_email", "positive_number", "range", "regex", "allowed_values"]
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _arguments(self) -> QualityRule:
        if self.check == "range" and self.min is None and self.max is None:
            raise ValueError("a range check needs min and/or max")
        if self.check == "regex":
            if not self.pattern:
                raise ValueError("a regex check needs pattern")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex pattern: {exc}") from exc
        if self.check == "allowed_values" and not self.values:
            raise ValueError("an allowed_values check needs values")
        return self


class DataQuality(Strict):
    rules: list[QualityRule] = Field(min_length=1)


class BronzeToSilverStep(Strict):
    """One step of bronze_to_silver: exactly one of the keys."""

    deduplication: Deduplication | None = None
    data_quality: DataQuality | None = None

    @model_validator(mode="after")
    def _one(self) -> BronzeToSilverStep:
        if (self.deduplication is None) == (self.data_quality is None):
            raise ValueError("each step takes exactly one of: deduplication, data_quality")
        return self


class Join(Strict):
    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")]
    on: str | list[str]


_METRIC = re.compile(
    r"^\s*(?P<fn>sum|avg|min|max|count)\s*\(\s*(?P<arg>\*|[A-Za-z_][A-Za-z0-9_]*)\s*\)\s+as\s+(?P<alias>[A-Za-z_][A-Za-z0-9_]*)\s*$",
    re.IGNORECASE,
)


def parse_metric(text: str) -> tuple[str, str, str]:
    """``"sum(amount) as total_amount"`` → ``("sum", "amount", "total_amount")``."""
    match = _METRIC.match(text)
    if not match:
        raise ValueError(
            f"invalid metric {text!r}: expected '<sum|avg|min|max|count>(<field>|*) as <name>'"
        )
    fn, arg = match.group("fn").lower(), match.group("arg")
    if arg == "*" and fn != "count":
        raise ValueError(f"invalid metric {text!r}: only count takes *")
    return fn, arg, match.group("alias")


def _metric(text: str) -> str:
    parse_metric(text)
    return text


class Aggregate(Strict):
    group_by: list[str] = Field(min_length=1)
    metrics: list[Annotated[str, AfterValidator(_metric)]] = Field(min_length=1)
    table: Annotated[str, _check(naming.table_problem)] | None = Field(
        default=None, description="Gold table id; default <source_id>_summary"
    )


class SilverToGoldStep(Strict):
    join: Join | None = None
    aggregate: Aggregate | None = None

    @model_validator(mode="after")
    def _one(self) -> SilverToGoldStep:
        if (self.join is None) == (self.aggregate is None):
            raise ValueError("each step takes exactly one of: join, aggregate")
        return self


class Processing(Strict):
    bronze_to_silver: list[BronzeToSilverStep] = Field(default_factory=list)
    silver_to_gold: list[SilverToGoldStep] = Field(default_factory=list)


class SilverTable(Strict):
    partition_field: str | None = Field(
        default=None, description="TIMESTAMP/DATE field to partition by day; default the first such field"
    )
    cluster_by: list[str] = Field(default_factory=list, max_length=4)
    partition_expiration: Expiration | None = Field(
        default=None, description="Delete partitions older than this (a duration, or never); updated in place, "
                                  "never a replacement. Unset: whatever the table has is left alone")
    require_partition_filter: bool | None = Field(
        default=None, description="Queries must filter on the partition field; updated in place. Unset: left as the "
                                  "table has it. Refused with gold aggregates (their hourly query reads all of Silver)")


PUBSUB_FILTER_MAX_BYTES = 256


def _filter_size(value: str) -> str:
    if len(value.encode()) > PUBSUB_FILTER_MAX_BYTES:
        raise ValueError(f"a subscription filter is at most {PUBSUB_FILTER_MAX_BYTES} bytes; this one is "
                         f"{len(value.encode())}")
    return value


class SubscriptionSettings(Strict):
    """The source's ingest subscription (``<source_id>-ingest``), over platform.yaml's ``pubsub:``
    defaults. Each setting has Pub/Sub's mutability; a setting left out is left as the
    subscription has it (never compared)."""

    filter: Annotated[str, AfterValidator(_filter_size)] | None = Field(
        default=None, description="Pub/Sub filter on message attributes (e.g. attributes.type = \"order\"); "
                                  "\"\" for none. Immutable: changing it replaces the subscription (gated: it holds "
                                  "data). Unset: left as the subscription has it")
    enable_message_ordering: bool | None = Field(default=None, description=_ORDERING)
    enable_exactly_once_delivery: bool | None = Field(default=None, description=_EXACTLY_ONCE)
    retain_acked_messages: bool | None = Field(default=None, description=_RETAIN_ACKED + "; default platform's")


# --- issue 12: the serving layer (compiled by reconciler/serving.py; docs/serving.md) ---

_IAM_PRINCIPAL = re.compile(r"^(user|group|serviceAccount|domain):[^\s:,'\"()]+$|^(allUsers|allAuthenticatedUsers)$")


def _iam_principal(value: str) -> str:
    if not _IAM_PRINCIPAL.match(value):
        raise ValueError(f"{value!r} is not an IAM principal: expected user:NAME@DOMAIN, group:NAME@DOMAIN, "
                         "serviceAccount:NAME@PROJECT.iam.gserviceaccount.com, domain:DOMAIN, allAuthenticatedUsers "
                         "or allUsers")
    return value


def _single_select(value: str) -> str:
    text = value.strip().rstrip(";").strip()
    if ";" in text:
        raise ValueError("a view is one SELECT statement: no ';' inside")
    if not re.match(r"(?is)^(select|with)\b", text):
        raise ValueError("a view's sql is one SELECT (or WITH ... SELECT) statement")
    return text


class ReportingView(Strict):
    """A view (or materialized view) in the ``reporting`` dataset over the platform's tables."""

    name: Annotated[str, _check(naming.table_problem)]
    sql: Annotated[str, AfterValidator(_single_select)] = Field(
        description="One SELECT; tables named dataset.table (gold.orders_daily), each declared by the platform")
    materialized: bool = Field(default=False, description="A materialized view: BigQuery keeps its result; a change "
                                                          "of its sql replaces it and recomputes it in full")
    refresh_interval: Duration | None = Field(
        default=None, description="Materialized only: automatic refresh at most this often (1m to 7d; default "
                                  "BigQuery's 30m)")
    max_staleness: Duration | None = Field(
        default=None, description="Materialized only: queries may read a result this old without a refresh")

    @model_validator(mode="after")
    def _materialized_only(self) -> ReportingView:
        for key in ("refresh_interval", "max_staleness"):
            if getattr(self, key) is not None and not self.materialized:
                raise FieldError(key, f"{key} applies to materialized views only (set materialized: true)")
        if self.refresh_interval is not None and not 60 <= self.refresh_interval <= 7 * 86400:
            raise FieldError("refresh_interval", "a materialized view's refresh interval is 1m to 7d")
        return self


class RowAccess(Strict):
    """A BigQuery row access policy on one of the source's Gold tables: only ``principals`` read its
    rows, and only those matching ``filter``. Once a table has one, whoever no policy names reads none."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    table: Annotated[str, _check(naming.table_problem)] = Field(description="A Gold table of this source")
    principals: list[Annotated[str, AfterValidator(_iam_principal)]] = Field(min_length=1)
    filter: Annotated[str, Field(min_length=1)] = Field(description="A boolean SQL expression over the table's columns")


class Reporting(Strict):
    views: list[ReportingView] = Field(default_factory=list, description=(
        "Views beside the default ones (one plain view per Gold table of the source)"))
    row_access: list[RowAccess] = Field(default_factory=list)


def _block_needed(value: Any) -> Any:
    if value is True:
        raise ValueError("ml_features takes a block (entity_key, features, windows), not true")
    return None if value is False else value


def _reporting_block(value: Any) -> Any:
    if value is True:
        return {}
    return None if value is False else value


class MlFeatures(Strict):
    """Point-in-time feature table ``features.<source_id>`` (reconciler/serving.py)."""

    entity_key: str | list[str] = Field(description="The field(s) identifying an entity (top-level)")
    features: list[Annotated[str, AfterValidator(_metric)]] = Field(
        min_length=1, description="Metric expressions, e.g. 'sum(amount) as spend': one column per window")
    windows: list[Duration] = Field(default_factory=lambda: [7 * 86400, 30 * 86400, 90 * 86400],
                                    min_length=1, description="Look-back windows (default 7d, 30d, 90d)")

    @property
    def entity_keys(self) -> list[str]:
        return [self.entity_key] if isinstance(self.entity_key, str) else list(self.entity_key)


class Serving(Strict):
    third_party_api: bool = Field(default=False, description="Serve the Gold tables through the data API "
                                                             "(authorized views in the api dataset)")
    reporting: Annotated[Reporting | None, BeforeValidator(_reporting_block, json_schema_input_type=bool | Reporting)] = Field(
        default=None, description="true: a view of each Gold table in the reporting dataset; a block adds views and "
                                  "row access policies; false: none")
    ml_features: Annotated[MlFeatures | None, BeforeValidator(_block_needed, json_schema_input_type=Literal[False] | MlFeatures)] = None

    @property
    def reporting_block(self) -> Reporting | None:
        return self.reporting


# Health (issue 11, reconciler/health.py): a freshness SLA is at least a minute and at most 30
# days (a source silent for longer is not monitored by an SLA; absence is a bigger problem).
MAX_SLA_MINUTES = 30 * 24 * 60
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")


def _sla_minutes(value: int) -> int:
    if value < 1:
        raise ValueError(f"sla_minutes {value} is not a freshness SLA: give the most minutes the newest record "
                         "may be old, at least 1 (or leave sla_minutes out: no SLA)")
    if value > MAX_SLA_MINUTES:
        raise ValueError(f"sla_minutes {value} is above 30 days ({MAX_SLA_MINUTES} minutes), the longest freshness "
                         "SLA headwater watches")
    return value


def _alert_email(value: str) -> str:
    if len(value) > 254 or not _EMAIL.match(value):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise ValueError(f"alert_email {shown!r} is not an email address (one address: name@example.com)")
    return value


def _error_budget(value: float) -> float:
    if not 0 < value <= 100:
        raise ValueError(f"error_budget_percent {value} is not a percentage of records in (0, 100]")
    return value


class Monitoring(Strict):
    sla_minutes: Annotated[int, AfterValidator(_sla_minutes)] | None = Field(
        default=None, description="Freshness SLA: the source is Degraded (and alerted) when its newest ingested "
                                  f"record is older than this; 1 to {MAX_SLA_MINUTES} (30 days)",
        json_schema_extra={"minimum": 1, "maximum": MAX_SLA_MINUTES})
    alert_email: Annotated[str, AfterValidator(_alert_email)] | None = Field(
        default=None, json_schema_extra={"pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$"})
    error_budget_percent: Annotated[float, AfterValidator(_error_budget)] = Field(
        default=5.0, description="Dead letters as a percentage of the records received between two health checks "
                                 "above which the source is Degraded (and alerted); default 5, the platform "
                                 "design's 'error_rate > 5%'",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": 100})
    metrics: list[Literal["record_count", "latency_p95", "error_rate", "freshness", "dead_letters"]] = Field(
        default_factory=list
    )


class Connector(Strict):
    source_id: SourceId
    display_name: str | None = None
    description: str | None = None
    labels: LabelMap = Field(default_factory=dict)
    ingestion: Ingestion
    schema_: SchemaRef | None = Field(default=None, alias="schema", description=(
        "The schema file and how it is applied (required; a database_cdc source's tables name their schema files, "
        "and its schema block, optional, holds validation and evolution only)"))
    processing: Processing = Field(default_factory=Processing)
    silver: SilverTable = Field(default_factory=SilverTable)
    subscription: SubscriptionSettings = Field(default_factory=SubscriptionSettings)
    serving: Serving = Field(default_factory=Serving)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    deletion_protection: bool = Field(
        default=True, description="Refuse to delete or replace this source's data-holding resources (tables, topics, "
                                  "subscriptions), even with --allow-destroy")
    suspend: bool = Field(default=False, description="Observe only: the daemon never applies this source")
    # issue 13: governance (docs/governance.md; reconciler/governance.py)
    access: SourceAccess = Field(default_factory=SourceAccess, description=(
        "The source's own readers (its Silver and Gold tables), publishers (its topic) and subscribers"))
    classify: dict[DottedPath, ClassName] = Field(default_factory=dict, description=(
        "Classes of columns whose schema file cannot carry them (e.g. a database_cdc source's): dotted field path "
        "-> a class of platform.yaml's classifications. database_cdc: <table>.<field path>, <table> as in its "
        "BigQuery table names (e.g. orders.customer_email)"))

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def dedup_key(self) -> list[str]:
        return [k for step in self.processing.bronze_to_silver if step.deduplication for k in step.deduplication.key]

    @property
    def quality_rules(self) -> list[QualityRule]:
        return [r for step in self.processing.bronze_to_silver if step.data_quality for r in step.data_quality.rules]


# --------------------------------------------------------------------------- schemas/<source_id>.json

BigQueryType = Literal[
    "STRING", "BYTES", "INT64", "INTEGER", "FLOAT64", "FLOAT", "NUMERIC", "BIGNUMERIC", "BOOL", "BOOLEAN",
    "TIMESTAMP", "DATE", "TIME", "DATETIME", "GEOGRAPHY", "JSON", "RECORD", "STRUCT",
]


class SchemaField(Strict):
    name: ColumnName
    type: BigQueryType
    mode: Literal["NULLABLE", "REQUIRED", "REPEATED"] = "NULLABLE"
    description: str = ""
    fields: list[SchemaField] | None = None
    # issue 13: a class of platform.yaml's classifications (docs/governance.md); policy_tag is the same
    classification: ClassName | None = None
    policy_tag: ClassName | None = None

    @property
    def class_name(self) -> str | None:
        """The field's classification (``classification`` or ``policy_tag``), or None."""
        return self.classification or self.policy_tag

    @model_validator(mode="after")
    def _nested(self) -> SchemaField:
        is_record = self.type in ("RECORD", "STRUCT")
        if self.classification and self.policy_tag and self.classification != self.policy_tag:
            raise FieldError("policy_tag", f"field {self.name!r} has classification {self.classification!r} and "
                                           f"policy_tag {self.policy_tag!r}: they are the same setting, give one")
        if is_record and self.class_name:
            raise FieldError("classification" if self.classification else "policy_tag",
                             f"field {self.name!r} is a {self.type}: BigQuery puts policy tags on leaf columns only; "
                             "classify its nested fields")
        if is_record and not self.fields:
            raise ValueError(f"field {self.name!r} of type {self.type} needs nested fields")
        if not is_record and self.fields is not None:
            raise ValueError(f"field {self.name!r} of type {self.type} cannot have nested fields")
        if self.fields:
            _unique_names(self.fields)
        return self


def _unique_names(fields: list[SchemaField]) -> None:
    seen: set[str] = set()
    for item in fields:
        if item.name.lower() in seen:  # BigQuery column names are case-insensitive
            raise ValueError(f"duplicate field name {item.name!r}")
        seen.add(item.name.lower())


class SourceSchema(Strict):
    source_id: SourceId
    version: str
    fields: list[SchemaField] = Field(min_length=1)
    # database_cdc (issue 10): a table's schema may name the table's primary key.
    primary_key: list[ColumnName] | None = Field(default=None, min_length=1, description=(
        "database_cdc tables only: the table's primary key (when its tables entry names none)"))

    @model_validator(mode="after")
    def _unique(self) -> SourceSchema:
        _unique_names(self.fields)
        return self

    def find(self, dotted: str) -> SchemaField | None:
        """The field at a dotted path (``customer.id``), or None."""
        fields: list[SchemaField] | None = self.fields
        found = None
        for part in dotted.split("."):
            found = next((f for f in fields or [] if f.name == part), None)
            if found is None:
                return None
            fields = found.fields
        return found
