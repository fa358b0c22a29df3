"""Local stand-in for Cloud Monitoring: the three monitoring kinds *recorded*, on the emulators.

EMULATOR DEPARTURE, all of it: Cloud Monitoring has no emulator. When headwater targets the
emulators, ``monitoring_notification_channel``, ``monitoring_alert_policy`` and
``monitoring_dashboard`` are recorded here, nothing more: no channel sends an email, no
policy is evaluated, no dashboard is drawn. It exists so that a local plan and apply converge
(a plan after an apply says "No changes") and show what would be built on GCP, like
``HEADWATER_LOCAL_JOBS=record`` does for jobs. Locally, health and its alerts are the daemon's
(issue 11A); what these resources do is verified only on GCP (`providers.monitoring_resources`,
docs/monitoring.md).

It is the generic recording stand-in (`providers.local_record`, which the governance kinds use
too) with the monitoring kinds and folder: each applied change also logs one line,
``skipped on the emulators: <address> (no Cloud Monitoring emulator)``. One JSON file per resource, ``<state_dir>/monitoring/<project>/<kind>/<name>.json`` (the name
quoted to one path segment), holding its spec and labels, written atomically. ``observe`` lists
one kind's directory (managed-by=headwater only, as on GCP); ``read`` returns any recorded
resource; ``create`` of a recorded one is `AlreadyExists`; ``update`` changes only the named
fields; ``delete`` removes the file (gone already is success). ``headwater local down`` leaves
them: there is no process to stop, and the records are as cheap as the state they describe.
"""

from __future__ import annotations

from pathlib import Path

from providers.local_record import LocalRecordProvider
from reconciler.resources import Kind

KINDS = (Kind.MONITORING_NOTIFICATION_CHANNEL, Kind.MONITORING_ALERT_POLICY, Kind.MONITORING_DASHBOARD)
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.MONITORING_NOTIFICATION_CHANNEL: frozenset({"type", "email"}),
    Kind.MONITORING_ALERT_POLICY: frozenset(),
    Kind.MONITORING_DASHBOARD: frozenset(),
}
WHY = "no Cloud Monitoring emulator"


class LocalMonitoringProvider(LocalRecordProvider):
    """The monitoring kinds recorded under ``<state_dir>/monitoring/`` (module docstring), by the
    generic recording stand-in (`providers.local_record`), which also logs one
    ``skipped on the emulators`` line per applied change."""

    def __init__(self, project: str, state_dir: Path | str) -> None:
        super().__init__(project, state_dir, kinds={kind: WHY for kind in KINDS}, immutable_fields=IMMUTABLE_FIELDS,
                         folder="monitoring")
