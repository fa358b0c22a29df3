"""GCP naming rules and small syntax checks.

Each ``*_problem`` function returns None when the value is fine, otherwise a message that says
what the rule is, so a user can fix the value without looking anything up. They are checked
at validate time, before any API call, on both what users write and the names headwater derives
(``{zone}-{project}-{region}`` can outgrow a bucket name's 63 characters).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable

Rule = Callable[[str], str | None]

# --------------------------------------------------------------------------- IAM members

# The member kinds whose value is an e-mail address or a domain, which IAM compares without
# regard to case (terraform-provider-google#3880: a policy read back holds the lower-case form).
_CASELESS_MEMBER_KINDS = ("user", "group", "serviceAccount", "domain", "serviceAgent")


def normalized_member(member: str) -> str:
    """An IAM member in its canonical form: the e-mail / domain part (after the type prefix) in
    lower case, the prefix as it is (``group:Analysts@Example.com`` -> ``group:analysts@example.com``;
    ``serviceAccount:`` stays ``serviceAccount:``). Other forms (``principal://...``, ``deleted:...``)
    are returned as they are. Used by validation (reconciler.config) and by providers/iam/ on the
    members it reads, so that desired and live compare equal."""
    kind, sep, rest = member.partition(":")
    if sep and kind in _CASELESS_MEMBER_KINDS:
        return f"{kind}:{rest.lower()}"
    return member


# --------------------------------------------------------------------------- quoting values
#
# Messages go to terminals, /status, logs and alerts. A value that fails a rule may be a
# credential pasted into the wrong field (a label value, a URL with a token in it), so a
# message quotes a value whole only when it is short and does not look like a secret;
# otherwise its first characters and its length.

SHOWN_MAX_CHARS = 24
SHOWN_PREFIX_CHARS = 4
_SECRET_PREFIXES = re.compile(
    r"(sk|rk|pk)_(live|test)_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|xox[abposr]-|AKIA|ASIA|AIza|ya29\.|eyJ|"
    r"-----BEGIN|whsec_|hf_|npm_|pypi-|shpat_|SG\.", re.ASCII)


def looks_like_a_secret(text: str) -> bool:
    """Known credential prefixes, or a long run of mixed letters and digits without spaces."""
    if _SECRET_PREFIXES.match(text):
        return True
    if len(text) < 16 or any(c.isspace() for c in text):
        return False
    digits = sum(c.isdigit() for c in text)
    letters = sum(c.isalpha() for c in text)
    return letters > 0 and digits / len(text) >= 0.15


def shown(value: object) -> str:
    """``value`` quoted for a message: whole if short and not secret-like, else a redacted prefix."""
    text = str(value)
    if len(text) <= SHOWN_MAX_CHARS and not looks_like_a_secret(text):
        return repr(text)
    return f"{text[:SHOWN_PREFIX_CHARS] + '…'!r} ({len(text)} characters, not shown)"


def shown_url(value: str) -> str:
    """A URL quoted for a message: scheme, host and a short path; never user info or a query."""
    match = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*://)(?:[^/@\s]*@)?([^/?#\s]*)([^?#]*)(.*)", value, re.S)
    if not match:
        return shown(value)
    scheme, host, path, rest = match.groups()
    if len(path) > 32 or looks_like_a_secret(path.rsplit("/", 1)[-1]):
        path = "/…"
    return repr(scheme + host[:64] + path + ("?…" if rest else ""))


def _matches(pattern: str, message: str) -> Rule:
    compiled = re.compile(pattern)

    def rule(value: str) -> str | None:
        return None if compiled.fullmatch(value) else f"{shown(value)} {message}"

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
        return f"{shown(value)} is not a valid Pub/Sub id: it must not start with 'goog'"
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}", value):
        return (
            f"{shown(value)} is not a valid Pub/Sub id: 3-255 letters, digits and - _ . ~ + %, starting with a letter"
        )
    return None


def topic_reference_problem(value: str) -> str | None:
    """A topic id, or its full name ``projects/<project>/topics/<id>``."""
    match = re.fullmatch(r"projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/(.+)", value)
    return pubsub_id_problem(match.group(1) if match else value)


def bucket_problem(value: str) -> str | None:
    if not 3 <= len(value) <= 63:
        return f"{shown(value)} is not a valid bucket name: it is {len(value)} characters, the limit is 3-63"
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*[a-z0-9]", value):
        return (
            f"{shown(value)} is not a valid bucket name: lower-case letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    if value.startswith("goog") or "google" in value or "g00gle" in value:
        return f"{shown(value)} is not a valid bucket name: it must not start with 'goog' or contain 'google'"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None
    return f"{shown(value)} is not a valid bucket name: it must not be an IP address"


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
        return f"{shown_url(value)} is not a Cloud Storage URI like gs://bucket/prefix/"
    return bucket_problem(match.group(1))


def https_url_problem(value: str) -> str | None:
    if not re.fullmatch(r"https://[A-Za-z0-9.\-]+(:[0-9]+)?(/[^\s]*)?", value):
        return f"{shown_url(value)} is not an https:// URL"
    return None


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def api_url_problem(value: str) -> str | None:
    """An API endpoint: ``https://`` anywhere, ``http://`` only on a loopback host (local testing:
    credentials must never travel in clear over a network)."""
    if re.match(r"https?://[^/@]*@", value):
        # Credentials in a URL end up in logs and plans: refuse them without quoting them.
        return ("an API URL must not carry a user or password (user:password@host): put the "
                "credential in Secret Manager and name it with secret_name and auth_type")
    match = re.fullmatch(r"http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]+)?(/[^\s]*)?", value)
    if match:
        return None
    if value.startswith("http://"):
        return (f"{shown_url(value)}: plain http:// is allowed only for loopback hosts (localhost, 127.0.0.1, [::1]); "
                "use https://")
    return https_url_problem(value)


def dotted_path_problem(value: str) -> str | None:
    """A path into a JSON body, ``data`` or ``meta.next_cursor``."""
    if not re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$\-]*(\.[A-Za-z_$][A-Za-z0-9_$\-]*)*", value):
        return f"{shown(value)} is not a dotted path such as 'data' or 'meta.next_cursor'"
    return None


def http_header_problem(value: str) -> str | None:
    """An HTTP header name (RFC 9110 token)."""
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}", value):
        return f"{shown(value)} is not an HTTP header name"
    return None


# --------------------------------------------------------------------------- cron
#
# croniter parses and evaluates cron (the local runner's ticks come from it too); what is left
# here is the subset Cloud Scheduler takes (unix-cron: five fields of numbers, English names,
# ranges, lists and steps - not croniter's extensions: seconds or year fields, @daily, L, W, #,
# ?, H, wrapping ranges) and messages that name the field at fault.

CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
               ("day of week", 0, 7))
_CRON_NAMES = ({}, {}, {}, {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
               {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())})
# One list item: *, a value or a range of values, and an optional step; values are numbers or names.
_CRON_ITEM = re.compile(r"(\*|[0-9]+|[a-z]+)(?:-([0-9]+|[a-z]+))?(?:/([0-9]+))?", re.ASCII)
_CRON_EXTENSION = re.compile(r"[Ll]|[0-9]*[LlWw]|[Ll][Ww]|.*[#?].*|[Hh](\(.*\))?(/[0-9]+)?", re.ASCII)
_CRON_EXTENSIONS = {"L": "last", "W": "nearest weekday", "#": "nth weekday", "?": "no specific value",
                    "H": "hashed value"}
# A schedule must name a time that exists: croniter looks for the next one after this instant
# (within its own search horizon of years).
_CRON_FROM = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def cron_problem(expression: str) -> str | None:
    """Standard five-field cron, as Cloud Scheduler takes it; None when fine.

    Every field is checked on its own (so the message names it), then the whole expression by
    croniter, which must find a time it names (``0 0 31 2 *`` never fires).
    """
    from croniter import CroniterBadDateError, CroniterError, croniter

    bad = next((c for c in expression if not c.isascii() or (not c.isprintable() and not c.isspace())), None)
    if bad is not None:
        return (f"{shown(expression)} is not a valid cron expression: {bad!r} (U+{ord(bad):04X}) is not "
                "allowed; cron takes ASCII digits 0-9, English month and day names, and * , - /")
    if expression.strip().startswith("@"):
        return (f"{shown(expression)} is not a valid cron expression: macros such as @daily are not accepted by "
                "Cloud Scheduler; write the five fields (e.g. '0 0 * * *')")
    parts = expression.split()
    if len(parts) != 5:
        return f"{shown(expression)} is not a cron expression: expected 5 fields (minute hour day month weekday)"
    for index, text in enumerate(parts):
        problem = _cron_field_problem(text, index)
        if problem:
            return f"{shown(expression)} is not a valid cron expression: {CRON_FIELDS[index][0]} field {shown(text)}: {problem}"
    try:
        croniter(expression.lower(), _CRON_FROM).get_next(float)
    except CroniterBadDateError:
        return f"{shown(expression)} is not a valid cron expression: its day of month and month never meet (e.g. 30 February)"
    except (CroniterError, ValueError) as exc:
        return f"{shown(expression)} is not a valid cron expression: {exc}"
    return None


def _cron_field_problem(text: str, index: int) -> str | None:
    """What is wrong with one field, or None: the Cloud Scheduler syntax first, then croniter's
    verdict on the field alone (``*`` everywhere else)."""
    from croniter import CroniterError, croniter

    _label, low, high = CRON_FIELDS[index]
    names = _CRON_NAMES[index]
    for item in text.split(","):
        if not item:
            return "empty list item"
        extension = _CRON_EXTENSION.fullmatch(item)
        if extension:
            symbol = next(c for c in item.upper() if c in _CRON_EXTENSIONS)
            return (f"{symbol!r} ({_CRON_EXTENSIONS[symbol]}) is a croniter/Quartz extension that "
                    "Cloud Scheduler does not accept")
        match = _CRON_ITEM.fullmatch(item.lower())
        if not match:
            return f"{item!r} is not a value, a range (a-b), * or a step (/n)"
        base, end, step = match.groups()
        if step is not None and int(step) == 0:
            return f"bad step {step!r}"
        values = []
        for bound in (base, end):
            if bound is None or bound == "*":
                continue
            value = int(bound) if bound.isdigit() else names.get(bound)
            if value is None:
                kind = "a month name (jan-dec)" if index == 3 else "a day name (sun-sat)" if index == 4 else "a number"
                return f"{bound!r} is not {kind}"
            if not low <= value <= high:
                return f"{value} is outside {low}-{high}"
            values.append(value)
        if len(values) == 2 and values[0] > values[1]:
            return f"range {item!r} is backwards"
    probe = ["*"] * 5
    probe[index] = text.lower()
    try:
        croniter(" ".join(probe))
    except (CroniterError, ValueError) as exc:
        return str(exc).replace(f"[{' '.join(probe)}] ", "")
    return None
