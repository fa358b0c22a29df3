"""Health signals of a source's subscriptions (`providers.base.HealthReporter` for
`providers.pubsub.PubSubProvider`): signals only, no verdicts (`reconciler.health` judges them).

* ``<id>-dlq-hold``: ``backlog``, the dead letters it holds -
  ``subscription/num_undelivered_messages`` from Cloud Monitoring (`providers.monitoring`, one
  ``timeSeries.list`` for every hold subscription; sampled every minute, so about a minute or
  two behind). EMULATOR DEPARTURE: the emulator has no Cloud Monitoring; there the dead letters
  are counted by pulling them without acknowledging (``return_immediately``, pages of 1,000, at
  most `EMULATOR_COUNT_LIMIT`), then handing them straight back (ack deadline 0). That counts
  one delivery attempt per message on the hold subscription, which has no dead-letter policy
  of its own, so nothing moves; acknowledged, retained dead letters are not counted (as on
  Cloud Monitoring's undelivered count).
* ``<id>-ingest``: ``oldest_unacked_age_seconds``, how long the oldest record has waited for the
  ingestion job - ``subscription/oldest_unacked_message_age`` from Cloud Monitoring, same call
  shape. Not on the emulator: counting there would pull from the pipeline's own subscription and
  spend its messages' delivery attempts towards the dead-letter policy.

A metric without a recent point leaves its signal out (the dead letters then read as not
observable). Reading metrics needs ``monitoring.timeSeries.list`` (roles/monitoring.viewer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.health import Observation
from reconciler.resources import Kind, Resource

BACKLOG_METRIC = "pubsub.googleapis.com/subscription/num_undelivered_messages"
OLDEST_UNACKED_METRIC = "pubsub.googleapis.com/subscription/oldest_unacked_message_age"
EMULATOR_COUNT_LIMIT = 10_000
PULL_TIMEOUT_S = 10.0
HOLD_SUFFIX, INGEST_SUFFIX = "-dlq-hold", "-ingest"


def subscription_health(provider: Any, resources: Sequence[Resource]) -> dict[str, Observation]:
    from providers.pubsub import on_emulator

    subs = [r for r in resources if r.kind == Kind.PUBSUB_SUBSCRIPTION]
    holds = [r for r in subs if r.name.endswith(HOLD_SUFFIX)]
    ingests = [r for r in subs if r.name.endswith(INGEST_SUFFIX)]
    observations: dict[str, Observation] = {}
    if on_emulator():
        for hold in holds:
            count = count_by_pulling(provider, hold.name)
            if count is None:
                continue
            shown = f"at least {count}" if count >= EMULATOR_COUNT_LIMIT else str(count)
            observations[hold.address] = Observation(signals={
                "backlog": count,
                "backlog_basis": f"{shown} undelivered, counted by pulling without acknowledging (Pub/Sub emulator)"})
        return observations
    if not holds and not ingests:
        return observations
    monitoring = provider._monitoring_client()
    if holds:
        backlog = monitoring.latest(BACKLOG_METRIC, "pubsub_subscription", "subscription_id", [r.name for r in holds])
        for hold in holds:
            if hold.name in backlog:
                observations[hold.address] = Observation(signals={
                    "backlog": backlog[hold.name],
                    "backlog_basis": "subscription/num_undelivered_messages (Cloud Monitoring, last minutes)"})
    if ingests:
        ages = monitoring.latest(OLDEST_UNACKED_METRIC, "pubsub_subscription", "subscription_id",
                                 [r.name for r in ingests])
        for ingest in ingests:
            if ingest.name in ages:
                observations[ingest.address] = Observation(signals={"oldest_unacked_age_seconds": float(ages[ingest.name])})
    return observations


def count_by_pulling(provider: Any, name: str, limit: int = EMULATOR_COUNT_LIMIT) -> int | None:
    """EMULATOR DEPARTURE (module docstring): the undelivered messages of ``name``, pulled and handed
    back at once. None when the subscription cannot be pulled (it does not exist)."""
    import warnings

    from providers.errors import NotFound, PermanentError

    client = provider._subscriber_client()
    path = f"projects/{provider.project}/subscriptions/{name}"
    ack_ids: list[str] = []
    try:
        with warnings.catch_warnings():
            # return_immediately is deprecated for the real service; the emulator honours it.
            warnings.simplefilter("ignore", DeprecationWarning)
            while len(ack_ids) < limit:
                response = provider._rpc("pull", path, lambda: client.pull(
                    request={"subscription": path, "max_messages": min(1000, limit - len(ack_ids)),
                             "return_immediately": True}, retry=None, timeout=PULL_TIMEOUT_S))
                if not response.received_messages:
                    break
                ack_ids.extend(m.ack_id for m in response.received_messages)
    except (NotFound, PermanentError):
        return None
    finally:
        for start in range(0, len(ack_ids), 1000):
            chunk = ack_ids[start:start + 1000]
            provider._rpc("modify_ack_deadline", path, lambda chunk=chunk: client.modify_ack_deadline(
                request={"subscription": path, "ack_ids": chunk, "ack_deadline_seconds": 0}, retry=None,
                timeout=PULL_TIMEOUT_S))
    return len(ack_ids)
