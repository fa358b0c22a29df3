"""Alerts: tell people when something changes, and only then.

The daemon tracks two conditions and alerts on their transitions, never on every check:

=================  =====================================================================
``drift_detected`` live state differs from the served revision, and at least one drifted
                   resource was not in the previous drift alert (a growing drift re-alerts,
                   the same drift seen again on the next check does not)
``drift_resolved`` no drift any more, after a ``drift_detected``
``sync_failed``    a revision could not be validated, planned or applied; once per
                   (revision, result): a broken commit alerts once, not on every poll
``sync_recovered`` a sync succeeded after a ``sync_failed``
=================  =====================================================================

and, from the health checks (`reconciler.daemon.health_loop`), one alert per condition when it
appears and one when it clears: ``sla_breached`` / ``sla_recovered`` (a source's freshness
against ``monitoring.sla_minutes``), ``job_failed`` / ``job_recovered`` (a Dataflow job or a
connector Degraded), ``dead_letters_over_budget`` / ``dead_letters_recovered``.

What has been alerted is remembered in memory and, when the daemon has a lock bucket, in a small
object next to the lease (`AlertMemory`, ``<lock object>.alerts.json``), written with the same
generation preconditions. Every decision is then taken against the shared memory, and the alert
is sent only by the daemon whose write of the new state won. So a transition is alerted once per
platform: not again by a restarted daemon while the drift it alerted is still there, and not
twice when two daemons overlap in a rolling deploy. If the memory cannot be read or written, the
daemon decides on its own memory and alerts (a duplicate is better than a lost alert).

Each alert goes to every configured target: a webhook URL (Slack-compatible JSON: a ``text``
field, plus a ``headwater`` object with the machine-readable facts) and/or a Pub/Sub topic (the
same JSON as the message data, ``event`` and ``revision`` as attributes). Delivery is best
effort, with a short timeout: a failed alert is logged and counted, and never stops a reconcile.
Webhook URLs carry credentials (Slack's do), so they are never logged.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from reconciler.daemon.lease import LeaseConflict, LeaseStore

DRIFT_DETECTED, DRIFT_RESOLVED = "drift_detected", "drift_resolved"
SYNC_FAILED, SYNC_RECOVERED = "sync_failed", "sync_recovered"
ICONS = {DRIFT_DETECTED: ":warning:", DRIFT_RESOLVED: ":white_check_mark:",
         SYNC_FAILED: ":x:", SYNC_RECOVERED: ":white_check_mark:"}
# Health (issue 11): per condition kind of reconciler.health, the events of its start and its end.
HEALTH_EVENTS = {"sla": ("sla_breached", "sla_recovered"), "job": ("job_failed", "job_recovered"),
                 "dead_letters": ("dead_letters_over_budget", "dead_letters_recovered")}
for _start, _end in HEALTH_EVENTS.values():
    ICONS.update({_start: ":rotating_light:", _end: ":white_check_mark:"})
WEBHOOK_TIMEOUT_S = 5.0
MAX_LISTED = 20  # resources listed in an alert's text; the JSON carries them all


@dataclass(frozen=True)
class Alert:
    event: str
    summary: str
    revision: str | None
    details: Mapping[str, Any] = field(default_factory=dict)
    lines: tuple[str, ...] = ()
    at: float = field(default_factory=time.time)

    def payload(self) -> dict[str, Any]:
        short = self.revision[:12] if self.revision else "none"
        text = f"{ICONS[self.event]} headwater: {self.summary} (revision {short})"
        shown = list(self.lines[:MAX_LISTED])
        if len(self.lines) > MAX_LISTED:
            shown.append(f"... and {len(self.lines) - MAX_LISTED} more")
        if shown:
            text += "\n" + "\n".join(f"• {line}" for line in shown)
        return {
            "text": text,
            "headwater": {"event": self.event, "summary": self.summary, "revision": self.revision,
                          "at": self.at, **self.details},
        }


class AlertTarget(Protocol):
    name: str  # metric label: "webhook" or "pubsub"

    def send(self, alert: Alert) -> None:
        """Deliver or raise."""
        ...


class WebhookTarget:
    """POST the alert as JSON (Slack incoming-webhook compatible)."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = WEBHOOK_TIMEOUT_S) -> None:
        self._url = url  # a credential: never logged, never shown
        self._timeout = timeout

    def send(self, alert: Alert) -> None:
        body = json.dumps(alert.payload(), default=str).encode()
        request = urllib.request.Request(self._url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"webhook answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            # URLError's text may include the URL; keep only the reason's type.
            reason = getattr(exc, "reason", exc)
            raise RuntimeError(f"webhook unreachable: {type(reason).__name__}") from None


class PubSubTarget:
    """Publish the alert to a topic (through providers.pubsub_notify)."""

    name = "pubsub"

    def __init__(self, publish: Callable[[bytes, Mapping[str, str]], None]) -> None:
        self._publish = publish

    def send(self, alert: Alert) -> None:
        data = json.dumps(alert.payload(), default=str).encode()
        self._publish(data, {"event": alert.event, "revision": alert.revision or ""})


@dataclass(frozen=True)
class Remembered:
    """What the last alerts said: the drifted resources, and the failing (revision, result)."""

    drift: frozenset[str] = frozenset()
    sync_failure: tuple[str | None, str] | None = None
    health: frozenset[str] = frozenset()  # the health conditions alerted (reconciler.health.Condition.key)

    def encode(self) -> bytes:
        return json.dumps({"drift": sorted(self.drift),
                           "sync_failure": list(self.sync_failure) if self.sync_failure else None,
                           "health": sorted(self.health)}).encode()

    @staticmethod
    def decode(body: bytes) -> Remembered:
        try:
            data = json.loads(body)
            failure = data.get("sync_failure")
            return Remembered(frozenset(str(a) for a in data.get("drift") or ()),
                              (failure[0], str(failure[1])) if failure else None,
                              frozenset(str(k) for k in data.get("health") or ()))
        except (ValueError, TypeError, AttributeError, IndexError):
            return Remembered()  # unreadable: as if nothing had been alerted (it is rewritten)


Decision = Callable[[Remembered], tuple[Remembered, "Alert | None"]]
MEMORY_ATTEMPTS = 3  # writes lost to another daemon before this one decides alone


class Alerter:
    """Transition tracking and delivery; see the module docstring. Used from one thread."""

    def __init__(self, targets: Iterable[AlertTarget], log: Any,
                 on_delivery: Callable[[str, str], None] = lambda target, result: None,
                 memory: LeaseStore | None = None) -> None:
        self.targets = list(targets)
        self.log = log
        self.on_delivery = on_delivery
        self.memory = memory
        self.sent: list[Alert] = []  # every alert fired, for /status (last few) and tests
        self._local = Remembered()

    def drift(self, drifted: Mapping[str, str], revision: str | None,
              origins: Mapping[str, Any] | None = None) -> Alert | None:
        """``drifted``: address → one-line description, for every drifted resource now; ``origins``:
        address → who set the desired values it departs from (reconciler.blame), for the JSON."""
        addresses = frozenset(drifted)

        def decide(before: Remembered) -> tuple[Remembered, Alert | None]:
            alert = None
            if addresses - before.drift:
                alert = Alert(DRIFT_DETECTED, f"drift detected on {len(addresses)} resources", revision,
                              {"resources": sorted(addresses),
                               **({"origins": {a: origins[a] for a in sorted(addresses) if a in origins}}
                                  if origins else {})},
                              tuple(f"{a}: {drifted[a]}" for a in sorted(addresses)))
            elif not addresses and before.drift:
                alert = Alert(DRIFT_RESOLVED, "drift resolved: live state matches the desired state", revision,
                              {"resources": sorted(before.drift)})
            return dataclasses.replace(before, drift=addresses), alert

        return self._decide(decide)

    def sync_failed(self, revision: str | None, result: str, reason: str) -> Alert | None:
        fingerprint = (revision, result)

        def decide(before: Remembered) -> tuple[Remembered, Alert | None]:
            if fingerprint == before.sync_failure:
                return before, None
            first, *rest = reason.splitlines() or [""]
            return dataclasses.replace(before, sync_failure=fingerprint), Alert(
                SYNC_FAILED, f"sync {result}: {first[:300]}", revision,
                {"result": result, "reason": reason[:4000]}, tuple(line[:300] for line in rest))

        return self._decide(decide)

    def sync_ok(self, revision: str | None) -> Alert | None:
        def decide(before: Remembered) -> tuple[Remembered, Alert | None]:
            if before.sync_failure is None:
                return before, None
            return dataclasses.replace(before, sync_failure=None), Alert(SYNC_RECOVERED, "sync recovered", revision, {})

        return self._decide(decide)

    def health(self, conditions: Mapping[str, tuple[str, str, Mapping[str, Any]]], undecided: Iterable[str],
               revision: str | None) -> list[Alert]:
        """Health conditions now (reconciler.daemon.health_loop): key -> (kind, summary, details).
        A condition not alerted yet alerts its start; one alerted before that is gone alerts its
        end - unless its key is ``undecided`` (not judged this time: no verdict is no recovery)."""
        current, keep = frozenset(conditions), frozenset(undecided)

        def decide(before: Remembered) -> tuple[Remembered, list[Alert]]:
            alerts = []
            for key in sorted(current - before.health):
                kind, summary, details = conditions[key]
                alerts.append(Alert(HEALTH_EVENTS[kind][0], summary, revision, {"condition": key, **details}))
            for key in sorted(before.health - current - keep):
                kind = key.split(":", 1)[0]
                subject = key.split(":", 1)[1] if ":" in key else key
                if kind in HEALTH_EVENTS:
                    words = {"sla": "freshness SLA met again", "job": "running again",
                             "dead_letters": "dead letters within budget again"}[kind]
                    alerts.append(Alert(HEALTH_EVENTS[kind][1], f"{subject}: {words}", revision, {"condition": key}))
            return dataclasses.replace(before, health=(current | (before.health & keep))), alerts

        return self._decide(decide) or []  # type: ignore[return-value]

    def _decide(self, decide: Decision) -> Alert | None:
        """Apply ``decide`` to what was alerted; fire its alert if this daemon's write won."""
        if self.memory is not None:
            try:
                for _ in range(MEMORY_ATTEMPTS):
                    read = self.memory.read()
                    before = Remembered.decode(read[1]) if read else self._local
                    after, alert = decide(before)
                    if after != before or read is None:
                        try:
                            if read is None:
                                self.memory.create(after.encode())
                            else:
                                self.memory.replace(after.encode(), read[0])
                        except LeaseConflict:
                            continue  # another daemon decided meanwhile: decide again on its state
                    self._local = after
                    return self._fire(alert)
            except Exception as exc:  # noqa: BLE001 - the memory is a nicety; alerting is not
                self.log.warning("alert.memory_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
            else:
                self.log.warning("alert.memory_contended", attempts=MEMORY_ATTEMPTS)
        after, alert = decide(self._local)
        self._local = after
        return self._fire(alert)

    def _fire(self, alert: Alert | list[Alert] | None) -> Alert | list[Alert] | None:
        if isinstance(alert, list):  # several at once (health conditions): each delivered
            return [fired for one in alert if (fired := self._fire(one)) is not None]  # type: ignore[misc]
        if alert is None:
            return None
        self.sent.append(alert)
        del self.sent[:-50]
        for target in self.targets:
            try:
                target.send(alert)
            except Exception as exc:  # noqa: BLE001 - an alert must never stop a reconcile
                self.log.error("alert.failed", alert_event=alert.event, target=target.name, error=str(exc))
                self.on_delivery(target.name, "error")
            else:
                self.log.info("alert.sent", alert_event=alert.event, target=target.name, revision=alert.revision)
                self.on_delivery(target.name, "ok")
        if not self.targets:
            self.log.info("alert.raised", alert_event=alert.event, revision=alert.revision, targets=0)
        return alert
