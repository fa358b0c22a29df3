"""GCP naming rules and small syntax checks.

Each ``*_problem`` function returns None when the value is fine, otherwise a message that says
what the rule is, so a user can fix the value without looking anything up. They are checked
at validate time, before any API call, on both what users write and the names headwater derives
(``{zone}-{project}-{region}`` can outgrow a bucket name's 63 characters).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

Rule = Callable[[str], str | None]


def _matches(pattern: str, message: str) -> Rule:
    compiled = re.compile(pattern)

    def rule(value: str) -> str | None:
        return None if compiled.fullmatch(value) else f"{value!r} {message}"

    return rule


source_id_problem = _matches(
    r"[a-z][a-z0-9_]{2,62}",
    "is not a valid source_id: use 3-63 lower-case letters, digits and underscores, starting with a letter "
    "(it becomes a topic, a table and a label value)",
)
project_problem = _matches(
    r"[a-z][a-z0-9-]{4,28}[a-z0-9]",
    "is not a valid GCP project id: 6-30 lower-case letters, digits and hyphens, starting with a letter",
)
region_problem = _matches(r"[a-z]+-[a-z]+[0-9]+|us|eu", "is not a GCP region such as europe-west1 or us-central1")
label_value_problem = _matches(
    r"[a-z0-9_-]{0,63}", "is not a valid label value: up to 63 lower-case letters, digits, '_' and '-'"
)
label_key_problem = _matches(
    r"[a-z][a-z0-9_-]{0,62}",
    "is not a valid label key: 1-63 lower-case letters, digits, '_' and '-', starting with a letter",
)
column_problem = _matches(
    r"[A-Za-z_][A-Za-z0-9_]{0,299}",
    "is not a valid BigQuery column name: letters, digits and underscores, starting with a letter or underscore",
)
dataset_problem = _matches(
    r"[A-Za-z0-9_]{1,1024}", "is not a valid BigQuery dataset id: letters, digits and underscores only"
)
table_problem = _matches(
    r"[A-Za-z0-9_]{1,1024}", "is not a valid BigQuery table id: letters, digits and underscores only"
)
secret_name_problem = _matches(
    r"[A-Za-z0-9_-]{1,255}", "is not a valid Secret Manager secret id: letters, digits, '_' and '-'"
)


def pubsub_id_problem(value: str) -> str | None:
    """Topic and subscription ids."""
    if value.lower().startswith("goog"):
        return f"{value!r} is not a valid Pub/Sub id: it must not start with 'goog'"
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}", value):
        return (
            f"{value!r} is not a valid Pub/Sub id: 3-255 letters, digits and - _ . ~ + %, starting with a letter"
        )
    return None


def topic_reference_problem(value: str) -> str | None:
    """A topic id, or its full name ``projects/<project>/topics/<id>``."""
    match = re.fullmatch(r"projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/(.+)", value)
    return pubsub_id_problem(match.group(1) if match else value)


def bucket_problem(value: str) -> str | None:
    if not 3 <= len(value) <= 63:
        return f"{value!r} is not a valid bucket name: it is {len(value)} characters, the limit is 3-63"
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*[a-z0-9]", value):
        return (
            f"{value!r} is not a valid bucket name: lower-case letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    if value.startswith("goog") or "google" in value or "g00gle" in value:
        return f"{value!r} is not a valid bucket name: it must not start with 'goog' or contain 'google'"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None
    return f"{value!r} is not a valid bucket name: it must not be an IP address"


def labels_problem(labels: dict[str, str]) -> str | None:
    if len(labels) > 64:
        return f"{len(labels)} labels: GCP allows at most 64"
    for key, value in labels.items():
        problem = label_key_problem(str(key)) or label_value_problem(str(value))
        if problem:
            return problem
    return None


def gcs_uri_problem(value: str) -> str | None:
    match = re.fullmatch(r"gs://([^/]+)(/.*)?", value)
    if not match:
        return f"{value!r} is not a Cloud Storage URI like gs://bucket/prefix/"
    return bucket_problem(match.group(1))


def https_url_problem(value: str) -> str | None:
    if not re.fullmatch(r"https://[A-Za-z0-9.\-]+(:\d+)?(/[^\s]*)?", value):
        return f"{value!r} is not an https:// URL"
    return None


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def api_url_problem(value: str) -> str | None:
    """An API endpoint: ``https://`` anywhere, ``http://`` only on a loopback host (local testing:
    credentials must never travel in clear over a network)."""
    match = re.fullmatch(r"http://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?(/[^\s]*)?", value)
    if match:
        return None
    if value.startswith("http://"):
        return (f"{value!r}: plain http:// is allowed only for loopback hosts (localhost, 127.0.0.1, [::1]); "
                "use https://")
    return https_url_problem(value)


def dotted_path_problem(value: str) -> str | None:
    """A path into a JSON body, ``data`` or ``meta.next_cursor``."""
    if not re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$\-]*(\.[A-Za-z_$][A-Za-z0-9_$\-]*)*", value):
        return f"{value!r} is not a dotted path such as 'data' or 'meta.next_cursor'"
    return None


def http_header_problem(value: str) -> str | None:
    """An HTTP header name (RFC 9110 token)."""
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}", value):
        return f"{value!r} is not an HTTP header name"
    return None


# --------------------------------------------------------------------------- cron

_CRON_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}),
    ("day of week", 0, 7, {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}),
)


def cron_problem(expression: str) -> str | None:
    """Standard five-field cron (as Cloud Scheduler takes it): lists, ranges, steps and names."""
    parts = expression.split()
    if len(parts) != 5:
        return f"{expression!r} is not a cron expression: expected 5 fields (minute hour day month weekday)"
    for text, (label, low, high, names) in zip(parts, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            problem = _cron_item(item.lower(), low, high, names)
            if problem:
                return f"{expression!r} is not a valid cron expression: {label} field {text!r}: {problem}"
    return None


def _cron_item(item: str, low: int, high: int, names: dict[str, int]) -> str | None:
    base, _, step = item.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        return f"bad step {step!r}"
    if base == "*":
        return None
    bounds = base.split("-")
    if len(bounds) > 2:
        return f"bad range {base!r}"
    values = []
    for bound in bounds:
        value = names.get(bound, int(bound) if bound.isdigit() else None)
        if value is None:
            return f"{bound!r} is not a number"
        if not low <= value <= high:
            return f"{value} is outside {low}-{high}"
        values.append(value)
    if len(values) == 2 and values[0] > values[1]:
        return f"range {base!r} is backwards"
    return None
