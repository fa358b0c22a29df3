"""A generic recording stand-in for kinds that no emulator implements (IAM, Data Catalog, masking).

EMULATOR DEPARTURE, all of it: the Pub/Sub, Cloud Storage and BigQuery emulators implement no IAM
(the Pub/Sub emulator answers 501), no policy tags (bqemulator drops them) and no masking, and
Data Catalog has no emulator at all. When headwater targets the emulators, the kinds a
`LocalRecordProvider` is built with are *recorded* here, nothing more: no grant is made, no
column is tagged, nothing is masked. It exists so that a local plan and apply show what would be
done on GCP and converge (a plan after an apply says "No changes"), and so that nothing is
skipped silently: every applied change logs exactly one line, at WARNING, on the logger
``providers.local_record``::

    skipped on the emulators: iam_binding.bigquery_dataset:silver:roles/bigquery.dataViewer (no IAM on the emulators)

(the CLI prints it on stderr, beside the apply's own line for the change). What the recorded
resources do is verified only against the real services (docs/governance.md, "Providers and
verification").

One JSON file per resource, ``<state_dir>/<folder>/<project>/<kind>/<name>.json`` (the name
quoted to one path segment), holding its spec and labels, written atomically, exactly as
`providers.local_monitoring` records the monitoring kinds. ``observe`` lists one kind's folder
(managed-by=headwater only, as on GCP); ``read`` returns any recorded resource; ``create`` of a
recorded one is `AlreadyExists` (the applier then converges it with ``update``); ``update``
changes only the named fields (an immutable one is a `PermanentError`: the plan replaces
instead); ``delete`` removes the file (gone already is success).

Usage (``providers.build_providers``)::

    LocalRecordProvider(project, state_dir, kinds={Kind.IAM_BINDING: "no IAM on the emulators"},
                        immutable_fields={Kind.IAM_BINDING: frozenset({"target", "role"})})
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from providers.errors import AlreadyExists, NotFound, PermanentError
from providers.localprocess import write_json_atomic
from reconciler.resources import Kind, Resource

log = logging.getLogger(__name__)

SKIPPED = "skipped on the emulators"


class LocalRecordProvider:
    """The given kinds recorded under ``state_dir`` (module docstring).

    ``kinds``: per kind, why it is only recorded (the parenthesis of the one line logged per
    change). ``immutable_fields``: per kind, the spec keys that force a replacement (as the real
    provider says, so that local and GCP plans agree). ``folder``: the sub-directory of
    ``state_dir`` the records go to (default ``recorded``).
    """

    def __init__(self, project: str, state_dir: Path | str, *, kinds: Mapping[Kind, str],
                 immutable_fields: Mapping[Kind, frozenset[str]] | None = None, folder: str = "recorded") -> None:
        self.project = project
        self.why = {Kind(kind): why for kind, why in kinds.items()}
        self.kinds: tuple[Kind, ...] = tuple(self.why)
        self.immutable_fields: Mapping[Kind, frozenset[str]] = {
            kind: frozenset((immutable_fields or {}).get(kind, frozenset())) for kind in self.kinds}
        self.root = Path(state_dir) / folder / project
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
        self._skipped(resource)

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
                elif name in self.immutable_fields[Kind(resource.kind)]:
                    raise PermanentError(f"{resource.address}: {name} cannot change in place")
                else:
                    record["spec"][name] = json.loads(json.dumps(resource.spec.get(name)))
            write_json_atomic(path, record)
        self._skipped(resource)

    def delete(self, resource: Resource) -> None:
        path = self._path(resource)
        with self._lock:
            self._count("delete")
            existed = path.exists()
            path.unlink(missing_ok=True)
        if existed:
            self._skipped(resource)

    def api_calls(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._calls)

    def _skipped(self, resource: Resource) -> None:
        log.warning("%s: %s (%s)", SKIPPED, resource.address, self.why[Kind(resource.kind)])

    def _all(self, kind: Kind) -> list[Resource]:
        kind = Kind(kind)
        if kind not in self.why:
            raise PermanentError(f"local record: unsupported kind {kind!r}")
        with self._lock:
            self._count("list")
            folder = self.root / str(kind)
            resources = []
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                record = json.loads(path.read_text())
                resources.append(Resource(kind, urllib.parse.unquote(path.stem), record["spec"], record["labels"]))
            return resources

    def _path(self, resource: Resource) -> Path:
        kind = Kind(resource.kind)
        if kind not in self.why:
            raise PermanentError(f"local record: unsupported kind {kind!r}")
        return self.root / str(kind) / (urllib.parse.quote(resource.name, safe="") + ".json")

    def _count(self, method: str) -> None:
        key = f"local_record.{method}"
        self._calls[key] = self._calls.get(key, 0) + 1


def _record(spec: Mapping, labels: Mapping[str, str]) -> dict:
    return {"spec": json.loads(json.dumps(dict(spec))), "labels": dict(labels)}
