"""Service agents: ``serviceAgent:<service>`` in a desired ``iam_binding`` <-> the agent's e-mail.

A service agent is the Google-managed service account a service acts as in the project: the
Pub/Sub service agent publishes dead letters and acknowledges for a subscription with a
dead-letter policy, the Cloud Storage service agent publishes notifications, Datastream and
Storage Transfer read and write buckets. headwater's desired state names them by service, the
provider resolves them from the project *number* (read once per provider; `IamProvider`) and
reports a live agent's e-mail back in the same form, so that desired and live compare equal.

The e-mail forms (the number is the project's, not its id):

=================  ====================================================================
``pubsub``         ``service-<number>@gcp-sa-pubsub.iam.gserviceaccount.com``
``storage``        ``service-<number>@gs-project-accounts.iam.gserviceaccount.com``
``datastream``     ``service-<number>@gcp-sa-datastream.iam.gserviceaccount.com``
``storagetransfer`` ``project-<number>@storage-transfer-service.iam.gserviceaccount.com``
=================  ====================================================================

Sources: "Service agents", https://cloud.google.com/iam/docs/service-agents (every service's
form); Pub/Sub's ``DeadLetterPolicy.dead_letter_topic`` ("The Cloud Pub/Sub service account
associated with the enclosing subscription's parent project (i.e.,
service-{project_number}@gcp-sa-pubsub.iam.gserviceaccount.com) must have permission to
Publish() to this topic", https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions#DeadLetterPolicy);
"Get the Cloud Storage service agent", https://cloud.google.com/storage/docs/getting-service-agent;
Storage Transfer's ``googleServiceAccounts.get`` ("It uses the format
project-PROJECT_NUMBER@storage-transfer-service.iam.gserviceaccount.com",
https://cloud.google.com/storage-transfer/docs/delegate-service-agent-permissions). Google
says the forms may change for new agents; these four are the ones a project of today has.
"""

from __future__ import annotations

import re

from providers.errors import PermanentError

PREFIX = "serviceAgent:"
FORMS = {
    "pubsub": "service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com",
    "storage": "service-{number}@gs-project-accounts.iam.gserviceaccount.com",
    "datastream": "service-{number}@gcp-sa-datastream.iam.gserviceaccount.com",
    "storagetransfer": "project-{number}@storage-transfer-service.iam.gserviceaccount.com",
}


def is_agent(member: str) -> bool:
    return member.startswith(PREFIX)


def agent_email(service: str, number: str) -> str:
    """The e-mail of ``service``'s agent in the project of ``number``. `PermanentError` for an unknown service."""
    form = FORMS.get(service)
    if form is None:
        raise PermanentError(f"serviceAgent:{service}: unknown service agent (known: {', '.join(sorted(FORMS))})")
    return form.format(number=number)


def resolve(member: str, number: str) -> str:
    """``serviceAgent:pubsub`` -> ``serviceAccount:service-<number>@gcp-sa-pubsub...``; any other member as is."""
    if not is_agent(member):
        return member
    return "serviceAccount:" + agent_email(member.removeprefix(PREFIX), number)


_PATTERNS = {service: re.compile(re.escape(form).replace(re.escape("{number}"), r"(\d+)") + r"\Z")
             for service, form in FORMS.items()}


def looks_like_agent(member: str) -> bool:
    """Whether a live member is some project's service agent of a known service (so the project number matters)."""
    email = member.removeprefix("serviceAccount:")
    return member.startswith("serviceAccount:") and any(p.match(email) for p in _PATTERNS.values())


def unresolve(member: str, number: str) -> str:
    """A live member back in headwater's form: this project's agents as ``serviceAgent:<service>``,
    every other member (another project's agent too) as it is."""
    if not member.startswith("serviceAccount:"):
        return member
    email = member.removeprefix("serviceAccount:")
    for service, pattern in _PATTERNS.items():
        found = pattern.match(email)
        if found and found.group(1) == number:
            return PREFIX + service
    return member
