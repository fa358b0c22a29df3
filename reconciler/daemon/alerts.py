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

The state lives in memory: a restarted daemon alerts again about a drift that is still there.

Each alert goes to every configured target: a webhook URL (Slack-compatible JSON: a ``text``
field, plus a ``headwater`` object with the machine-readable facts) and/or a Pub/Sub topic (the
same JSON as the message data, ``event`` and ``revision`` as attributes). Delivery is best
effort, with a short timeout: a failed alert is logged and counted, and never stops a reconcile.
Webhook URLs carry credentials (Slack's do), so they are never logged.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

DRIFT_DETECTED, DRIFT_RESOLVED = "drift_detected", "drift_resolved"
SYNC_FAILED, SYNC_RECOVERED = "sync_failed", "sync_recovered"
ICONS = {DRIFT_DETECTED: ":warning:", DRIFT_RESOLVED: ":white_check_mark:",
         SYNC_FAILED: ":x:", SYNC_RECOVERED: ":white_check_mark:"}
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


class Alerter:
    """Transition tracking and delivery; see the module docstring. Used from one thread."""

    def __init__(self, targets: Iterable[AlertTarget], log: Any,
                 on_delivery: Callable[[str, str], None] = lambda target, result: None) -> None:
        self.targets = list(targets)
        self.log = log
        self.on_delivery = on_delivery
        self.sent: list[Alert] = []  # every alert fired, for /status (last few) and tests
        self._drift_alerted: frozenset[str] = frozenset()
        self._sync_failure: tuple[str | None, str] | None = None

    def drift(self, drifted: Mapping[str, str], revision: str | None) -> Alert | None:
        """``drifted``: address → one-line description, for every drifted resource now."""
        addresses = frozenset(drifted)
        if addresses - self._drift_alerted:
            alert = Alert(DRIFT_DETECTED, f"drift detected on {len(addresses)} resources", revision,
                          {"resources": sorted(addresses)},
                          tuple(f"{a}: {drifted[a]}" for a in sorted(addresses)))
        elif not addresses and self._drift_alerted:
            alert = Alert(DRIFT_RESOLVED, "drift resolved: live state matches the desired state", revision,
                          {"resources": sorted(self._drift_alerted)})
        else:
            alert = None
        self._drift_alerted = addresses
        return self._fire(alert)

    def sync_failed(self, revision: str | None, result: str, reason: str) -> Alert | None:
        fingerprint = (revision, result)
        if fingerprint == self._sync_failure:
            return None
        self._sync_failure = fingerprint
        first, *rest = reason.splitlines() or [""]
        return self._fire(Alert(SYNC_FAILED, f"sync {result}: {first[:300]}", revision,
                                {"result": result, "reason": reason[:4000]}, tuple(line[:300] for line in rest)))

    def sync_ok(self, revision: str | None) -> Alert | None:
        if self._sync_failure is None:
            return None
        self._sync_failure = None
        return self._fire(Alert(SYNC_RECOVERED, "sync recovered", revision, {}))

    def _fire(self, alert: Alert | None) -> Alert | None:
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
