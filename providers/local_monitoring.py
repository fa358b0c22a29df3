"""Local stand-in for Cloud Monitoring: the three monitoring kinds *recorded*, on the emulators.

EMULATOR DEPARTURE, all of it: Cloud Monitoring has no emulator. When headwater targets the
emulators, ``monitoring_notification_channel``, ``monitoring_alert_policy`` and
``monitoring_dashboard`` are recorded here, nothing more: no channel sends an email, no
policy is evaluated, no dashboard is drawn. It exists so that a local plan and apply converge
(a plan after an apply says "No changes") and show what would be built on GCP, like
``HEADWATER_LOCAL_JOBS=record`` does for jobs. Locally, health and its alerts are the daemon's
(issue 11A); what these resources do is verified only on GCP (`providers.monitoring_resources`,
docs/monitoring.md).

One JSON file per resource, ``<state_dir>/monitoring/<project>/<kind>/<name>.json`` (the name
quoted to one path segment), holding its spec and labels, written atomically. ``observe`` lists
one kind's directory (managed-by=headwater only, as on GCP); ``read`` returns any recorded
resource; ``create`` of a recorded one is `AlreadyExists`; ``update`` changes only the named
fields; ``delete`` removes the file (gone already is success). ``headwater local down`` leaves
them: there is no process to stop, and the records are as cheap as the state they describe.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from providers.errors import AlreadyExists, NotFound, PermanentError
from providers.localprocess import write_json_atomic
from reconciler.resources import Kind, Resource

KINDS = (Kind.MONITORING_NOTIFICATION_CHANNEL, Kind.MONITORING_ALERT_POLICY, Kind.MONITORING_DASHBOARD)
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {
    Kind.MONITORING_NOTIFICATION_CHANNEL: frozenset({"type", "email"}),
    Kind.MONITORING_ALERT_POLICY: frozenset(),
    Kind.MONITORING_DASHBOARD: frozenset(),
}


class LocalMonitoringProvider:
    """The monitoring kinds recorded under ``state_dir`` (module docstring)."""

    kinds: tuple[Kind, ...] = KINDS
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, state_dir: Path | str) -> None:
        self.project = project
        self.root = Path(state_dir) / "monitoring" / project
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}

    def observe(self, kind: Kind) -> list[Resource]:
        return [r for r in self._all(kind) if r.managed]

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        wanted = set(names)
        return [r for r in self._all(kind) if r.name in wanted]

    def create(self, resource: Resource) -> None:
        path = self._path(resource)
        with self._lock:
            self._count("create")
            if path.exists():
                raise AlreadyExists(f"{resource.address} already exists (recorded in {path})")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, _record(resource.spec, resource.labels))

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        path = self._path(resource)
        with self._lock:
            self._count("update")
            if not path.exists():
                raise NotFound(f"{resource.address} is not recorded (plan again)")
            record = json.loads(path.read_text())
            for name in fields:
                if name == "labels":
                    record["labels"] = dict(resource.labels)
                elif name in IMMUTABLE_FIELDS[Kind(resource.kind)]:
                    raise PermanentError(f"{resource.address}: {name} cannot change in place")
                else:
                    record["spec"][name] = resource.spec[name]
            write_json_atomic(path, record)

    def delete(self, resource: Resource) -> None:
        with self._lock:
            self._count("delete")
            self._path(resource).unlink(missing_ok=True)

    def api_calls(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._calls)

    def _all(self, kind: Kind) -> list[Resource]:
        kind = Kind(kind)
        if kind not in KINDS:
            raise PermanentError(f"local monitoring: unsupported kind {kind!r}")
        with self._lock:
            self._count("list")
            folder = self.root / str(kind)
            resources = []
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                record = json.loads(path.read_text())
                resources.append(Resource(kind, urllib.parse.unquote(path.stem), record["spec"], record["labels"]))
            return resources

    def _path(self, resource: Resource) -> Path:
        return self.root / str(resource.kind) / (urllib.parse.quote(resource.name, safe="") + ".json")

    def _count(self, method: str) -> None:
        key = f"local_monitoring.{method}"
        self._calls[key] = self._calls.get(key, 0) + 1


def _record(spec: Mapping, labels: Mapping[str, str]) -> dict:
    return {"spec": json.loads(json.dumps(dict(spec))), "labels": dict(labels)}
