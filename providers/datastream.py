"""Datastream provider: ``datastream_connection_profile`` and ``datastream_stream`` (Datastream API v1).

Kinds ``Kind.DATASTREAM_CONNECTION_PROFILE`` and ``Kind.DATASTREAM_STREAM``. This module is the only
one that imports ``google.cloud.datastream_v1`` (google-cloud-datastream). It implements the
contract in `providers.base`; `providers.local_datastream` stands in for it on this machine. What
the resources mean: `reconciler.cdc` and docs/database-cdc.md.

How a spec becomes a request
----------------------------
A connection profile, ``projects/<p>/locations/<region>/connectionProfiles/<name>``:

=====================  =========================================================================
spec key               ``ConnectionProfile`` field
=====================  =========================================================================
``type``               which profile: ``postgresql_profile``, ``mysql_profile`` or ``gcs_profile``
``host``, ``port``     ``<db>_profile.hostname``, ``.port``
``user``               ``<db>_profile.username``
``database``           ``postgresql_profile.database`` (MySQL profiles have none)
``password_secret``    ``<db>_profile.secret_manager_stored_password`` =
                       ``projects/<p>/secrets/<id>/versions/latest``: a reference, never a value
                       (``password`` is never sent)
``bucket``,            ``gcs_profile.bucket``, ``.root_path``
``root_path``
labels                 ``labels``; connectivity: ``static_service_ip_connectivity`` (IP allowlisting)
=====================  =========================================================================

A stream, ``.../streams/<name>``:

=====================================  =============================================================
spec key                               ``Stream`` field
=====================================  =============================================================
``source_connection_profile``          ``source_config.source_connection_profile`` (full name)
``include_objects``                    ``<db>_source_config.include_objects``: ``PostgresqlRdbms``
                                       (schemas -> tables) or ``MysqlRdbms`` (databases -> tables)
``replication_slot``, ``publication``  ``postgresql_source_config.replication_slot``, ``.publication``
``destination_connection_profile``     ``destination_config.destination_connection_profile``
``destination``                        ``gcs_destination_config``: ``path``, ``file_rotation_mb``,
                                       ``file_rotation_interval``, ``json_file_format``
                                       {``NO_SCHEMA_FILE``, ``GZIP`` | ``NO_COMPRESSION``}
``backfill``                           ``backfill_all`` or ``backfill_none``
``state``                              ``state``: a stream is created NOT_STARTED, then started
                                       (``update_stream``, mask ``state``)
labels                                 ``labels``
=====================================  =============================================================

The four operations: ``observe`` is one ``list_connection_profiles`` and one ``list_streams``
(paged) per project and region, keeping ``managed-by=headwater`` ones; ``create`` and ``update``
(with an update mask naming only the changed fields: `PROFILE_MASKS`, `STREAM_MASKS`) wait for
their long-running operation; ``delete`` too (gone already is success). A stream is observed
with Datastream's ``state`` (STARTING reads RUNNING) and, in ``status``, its ``errors`` (reason
and message): a stream in error shows in the plan as a state to restore, with Datastream's
reason, and apply starts it again. ``would_lose`` (`providers.base.LossReporter`) says what
recreating or deleting a stream means for its slot. ``health`` (`providers.base.HealthReporter`,
``headwater status``) reports each stream's state, Datastream's reason when it failed, and its
freshness (``datastream.googleapis.com/stream/freshness`` from Cloud Monitoring): the WAL a
PostgreSQL slot retains is not visible without the database's credentials, which headwater never
holds - docs/database-cdc.md says how to watch it in the database.

``source_columns`` asks ``discover_connection_profile`` (with the profile inline, so it works
before the profile exists) for the live tables' columns, for the plan's schema check
(`reconciler.cdc.live_schema_problems`).

Verified here against the client library's own types and, through REST transport, a local HTTP
endpoint (tests/fake_datastream.py). Verified only against the real service: that Datastream
accepts these requests and masks (in particular ``include_objects``, ``backfill_*`` and the
rotation settings of a running stream); the exact ``errors`` of a failed stream; connectivity
validation at profile creation; the events' exact JSON, which the pipeline parses per
https://cloud.google.com/datastream/docs/events-and-streams.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.api_core.future import polling
from google.cloud import datastream_v1 as ds
from google.protobuf import duration_pb2

from providers.calls import CallCounter
from providers.errors import NotFound, PermanentError, TemporaryError, call, translate
from reconciler.cdc import IMMUTABLE_FIELDS
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

log = logging.getLogger(__name__)

T = TypeVar("T")

RPC_TIMEOUT_S = 60.0
OPERATION_TIMEOUT_S = 20 * 60.0  # profile validation and stream creation can take minutes
POLL_S = 2.0
LIST_PAGE_SIZE = 500
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}

STATE_NAMES = {ds.Stream.State.STARTING: "RUNNING"}  # everything else reads as Datastream names it
# Cloud Monitoring: how far a stream is behind its source (verified only on GCP).
FRESHNESS_METRIC = "datastream.googleapis.com/stream/freshness"
STREAM_MONITORED_RESOURCE = "datastream.googleapis.com/Stream"

PROFILE_FIELDS = {"postgresql": "postgresql_profile", "mysql": "mysql_profile", "gcs": "gcs_profile"}
PROFILE_MASKS: dict[str, str] = {"host": "hostname", "port": "port", "user": "username", "database": "database",
                                 "password_secret": "secret_manager_stored_password", "bucket": "bucket",
                                 "root_path": "root_path"}


def _source_field(database_type: str) -> str:
    return f"{database_type}_source_config"


def stream_masks(spec: Mapping[str, Any], field: str) -> list[str]:
    """The update-mask paths of a stream spec key."""
    source = f"source_config.{_source_field(spec['database_type'])}"
    gcs = "destination_config.gcs_destination_config"
    paths = {
        "include_objects": [f"{source}.include_objects"],
        "destination": [f"{gcs}.file_rotation_mb", f"{gcs}.file_rotation_interval", f"{gcs}.json_file_format"],
        "backfill": ["backfill_all", "backfill_none"],
        "state": ["state"],
        "labels": ["labels"],
    }
    if field not in paths:
        raise PermanentError(f"datastream_stream: {field!r} cannot change in place")
    return paths[field]


# --- Requests (pure functions, tested against the client library's types) ---------------------------


def secret_version(project: str, secret_id: str) -> str:
    return f"projects/{project}/secrets/{secret_id}/versions/latest"


def build_profile(project: str, resource: Resource) -> ds.ConnectionProfile:
    spec = resource.spec
    kind = spec["type"]
    profile = ds.ConnectionProfile(display_name=resource.name, labels=dict(resource.labels))
    if kind == "gcs":
        profile.gcs_profile = ds.GcsProfile(bucket=spec["bucket"], root_path=spec.get("root_path") or "/")
        return profile
    common = {"hostname": spec["host"], "port": int(spec["port"]), "username": spec["user"],
              "secret_manager_stored_password": secret_version(project, spec["password_secret"])}
    if kind == "postgresql":
        profile.postgresql_profile = ds.PostgresqlProfile(database=spec["database"], **common)
    elif kind == "mysql":
        profile.mysql_profile = ds.MysqlProfile(**common)
    else:
        raise PermanentError(f"{resource.address}: connection profile type {kind!r} is not supported")
    profile.static_service_ip_connectivity = ds.StaticServiceIpConnectivity()
    return profile


def include_objects(database_type: str, objects: Sequence[Mapping[str, str]]) -> Any:
    grouped: dict[str, list[str]] = {}
    for item in objects:
        grouped.setdefault(item["schema"], []).append(item["table"])
    if database_type == "postgresql":
        return ds.PostgresqlRdbms(postgresql_schemas=[
            ds.PostgresqlSchema(schema=schema, postgresql_tables=[ds.PostgresqlTable(table=t) for t in tables])
            for schema, tables in sorted(grouped.items())])
    return ds.MysqlRdbms(mysql_databases=[
        ds.MysqlDatabase(database=db, mysql_tables=[ds.MysqlTable(table=t) for t in tables])
        for db, tables in sorted(grouped.items())])


def build_stream(parent: str, resource: Resource, *, state: str | None = None) -> ds.Stream:
    """The whole stream (its name goes in the request's ``stream_id``); ``state`` left unset on create."""
    spec = resource.spec
    db = spec["database_type"]
    source = ds.SourceConfig(source_connection_profile=f"{parent}/connectionProfiles/{spec['source_connection_profile']}")
    objects = include_objects(db, spec["include_objects"])
    if db == "postgresql":
        source.postgresql_source_config = ds.PostgresqlSourceConfig(
            include_objects=objects, replication_slot=spec["replication_slot"], publication=spec["publication"])
    elif db == "mysql":
        source.mysql_source_config = ds.MysqlSourceConfig(include_objects=objects)
    else:
        raise PermanentError(f"{resource.address}: database_type {db!r} is not supported")
    dest = spec["destination"]
    compression = ds.JsonFileFormat.JsonCompression.GZIP if dest.get("compression") == "gzip" \
        else ds.JsonFileFormat.JsonCompression.NO_COMPRESSION
    destination = ds.DestinationConfig(
        destination_connection_profile=f"{parent}/connectionProfiles/{spec['destination_connection_profile']}",
        gcs_destination_config=ds.GcsDestinationConfig(
            path=dest["path"], file_rotation_mb=int(dest["file_rotation_mb"]),
            file_rotation_interval=duration_pb2.Duration(seconds=int(dest["file_rotation_interval_s"])),
            json_file_format=ds.JsonFileFormat(schema_file_format=ds.JsonFileFormat.SchemaFileFormat.NO_SCHEMA_FILE,
                                               compression=compression)))
    stream = ds.Stream(display_name=resource.name, labels=dict(resource.labels), source_config=source,
                       destination_config=destination)
    if spec.get("backfill") == "none":
        stream.backfill_none = ds.Stream.BackfillNoneStrategy()
    else:
        stream.backfill_all = ds.Stream.BackfillAllStrategy()
    if state is not None:
        stream.state = ds.Stream.State[state]
    return stream


# --- Observation (pure) ---------------------------------------------------------------------------


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _secret_id(reference: str) -> str:
    parts = reference.split("/")
    return parts[3] if len(parts) >= 4 and parts[0] == "projects" and parts[2] == "secrets" else reference


def profile_resource(profile: ds.ConnectionProfile) -> Resource:
    spec: dict[str, Any]
    if "gcs_profile" in profile:
        spec = {"type": "gcs", "bucket": profile.gcs_profile.bucket, "root_path": profile.gcs_profile.root_path}
    else:
        kind = "postgresql" if "postgresql_profile" in profile else "mysql" if "mysql_profile" in profile else "other"
        body: Any = profile.postgresql_profile if kind == "postgresql" else profile.mysql_profile
        spec = {"type": kind, "host": body.hostname, "port": int(body.port), "user": body.username,
                # A password set as a value (by hand) reads as no secret: a difference, fixed by an update.
                "password_secret": _secret_id(body.secret_manager_stored_password) or None}
        if kind == "postgresql":
            spec["database"] = body.database
    return Resource(Kind.DATASTREAM_CONNECTION_PROFILE, _short(profile.name), spec, dict(profile.labels))


def stream_errors(stream: ds.Stream) -> str | None:
    """Datastream's errors of a stream, ``"<reason>: <message>; ..."`` (at most 600 characters)."""
    parts = [f"{e.reason}: {e.message}".strip(": ") for e in stream.errors]
    text = "; ".join(p for p in parts if p)
    return (text if len(text) <= 600 else text[:597] + "...") or None


def stream_resource(stream: ds.Stream) -> Resource:
    source = stream.source_config
    db = "postgresql" if "postgresql_source_config" in source else "mysql" if "mysql_source_config" in source \
        else "other"
    objects: list[dict[str, str]] = []
    spec: dict[str, Any] = {"source_connection_profile": _short(source.source_connection_profile),
                            "destination_connection_profile": _short(
                                stream.destination_config.destination_connection_profile),
                            "database_type": db}
    if db == "postgresql":
        config = source.postgresql_source_config
        for schema in config.include_objects.postgresql_schemas:
            objects += [{"schema": schema.schema, "table": t.table} for t in schema.postgresql_tables]
        spec["replication_slot"] = config.replication_slot
        spec["publication"] = config.publication
    elif db == "mysql":
        for database in source.mysql_source_config.include_objects.mysql_databases:
            objects += [{"schema": database.database, "table": t.table} for t in database.mysql_tables]
    spec["include_objects"] = sorted(objects, key=lambda o: (o["schema"], o["table"]))
    gcs = stream.destination_config.gcs_destination_config
    fmt = "json" if "json_file_format" in gcs else "avro" if "avro_file_format" in gcs else "other"
    spec["destination"] = {
        "path": gcs.path, "format": fmt,
        "compression": "gzip" if gcs.json_file_format.compression == ds.JsonFileFormat.JsonCompression.GZIP
        else "none",
        "file_rotation_mb": int(gcs.file_rotation_mb),
        "file_rotation_interval_s": int(gcs.file_rotation_interval.total_seconds())
        if hasattr(gcs.file_rotation_interval, "total_seconds") else int(gcs.file_rotation_interval.seconds),
    }
    spec["backfill"] = "none" if "backfill_none" in stream else "all"
    state = STATE_NAMES.get(stream.state, ds.Stream.State(stream.state).name)
    spec["state"] = state
    status: dict[str, Any] = {"state": state}
    errors = stream_errors(stream)
    if errors:
        status["error"] = errors
    return Resource(Kind.DATASTREAM_STREAM, _short(stream.name), spec, dict(stream.labels), status=status)


def _managed(item: Any) -> bool:
    return item.labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


# --- The provider -----------------------------------------------------------------------------------


class DatastreamProvider:
    """Datastream's connection profiles and streams of one project and region. Contract:
    `providers.base.Provider`, plus `providers.base.LossReporter`."""

    kinds: tuple[Kind, ...] = (Kind.DATASTREAM_CONNECTION_PROFILE, Kind.DATASTREAM_STREAM)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(self, project: str, region: str, *, client: ds.DatastreamClient | None = None,
                 client_options: Any = None, credentials: Any = None, transport: str | None = None,
                 operation_timeout: float = OPERATION_TIMEOUT_S, poll_interval: float = POLL_S) -> None:
        self.project = project
        self.region = region
        self._client = client
        self._client_kwargs = {k: v for k, v in (("client_options", client_options), ("credentials", credentials),
                                                 ("transport", transport)) if v is not None}
        self.operation_timeout = operation_timeout
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._counter = CallCounter("datastream")

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        kind = Kind(kind)
        if kind == Kind.DATASTREAM_CONNECTION_PROFILE:
            return [profile_resource(p) for p in self._list("list_connection_profiles") if _managed(p)]
        if kind == Kind.DATASTREAM_STREAM:
            return [stream_resource(s) for s in self._list("list_streams") if _managed(s)]
        raise PermanentError(f"datastream: unsupported kind {kind!r}")

    def create(self, resource: Resource) -> None:
        if resource.kind == Kind.DATASTREAM_CONNECTION_PROFILE:
            request = ds.CreateConnectionProfileRequest(parent=self.parent, connection_profile_id=resource.name,
                                                        connection_profile=build_profile(self.project, resource))
            self._wait(self._rpc("create_connection_profile", resource.name,
                                 lambda: self.client().create_connection_profile(request=request, **_OPTS)),
                       resource, "create")
            return
        request = ds.CreateStreamRequest(parent=self.parent, stream_id=resource.name,
                                         stream=build_stream(self.parent, resource))
        self._wait(self._rpc("create_stream", resource.name,
                             lambda: self.client().create_stream(request=request, **_OPTS)), resource, "create")
        if resource.spec.get("state", "RUNNING") == "RUNNING":  # created NOT_STARTED: start it
            self.update(resource, ["state"])

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        if not fields:
            return
        if resource.kind == Kind.DATASTREAM_CONNECTION_PROFILE:
            body = PROFILE_FIELDS[resource.spec["type"]]
            paths = sorted({"labels" if f == "labels" else f"{body}.{PROFILE_MASKS[f]}" for f in fields})
            request = ds.UpdateConnectionProfileRequest(connection_profile=self._named(
                build_profile(self.project, resource), "connectionProfiles", resource.name),
                update_mask={"paths": paths})
            self._wait(self._rpc("update_connection_profile", resource.name,
                                 lambda: self.client().update_connection_profile(request=request, **_OPTS)),
                       resource, "update")
            return
        paths = sorted({p for f in fields for p in stream_masks(resource.spec, f)})
        stream = self._named(build_stream(self.parent, resource, state=resource.spec.get("state") if "state" in fields
                                          else None), "streams", resource.name)
        request = ds.UpdateStreamRequest(stream=stream, update_mask={"paths": paths})
        self._wait(self._rpc("update_stream", resource.name,
                             lambda: self.client().update_stream(request=request, **_OPTS)), resource, "update")

    def delete(self, resource: Resource) -> None:
        if resource.kind == Kind.DATASTREAM_CONNECTION_PROFILE:
            name, method = f"{self.parent}/connectionProfiles/{resource.name}", "delete_connection_profile"
            request: Any = ds.DeleteConnectionProfileRequest(name=name)
            send = lambda: self.client().delete_connection_profile(request=request, **_OPTS)  # noqa: E731
        else:
            name, method = f"{self.parent}/streams/{resource.name}", "delete_stream"
            request = ds.DeleteStreamRequest(name=name)
            send = lambda: self.client().delete_stream(request=request, **_OPTS)  # noqa: E731
        try:
            self._wait(self._rpc(method, resource.name, send), resource, "delete")
        except NotFound:
            return

    # -- optional abilities --

    def would_lose(self, resources: Sequence[Resource]) -> dict[str, str]:
        """`providers.base.LossReporter`: a stream's position (its slot), and that a new stream
        backfills again; Datastream's state and errors when it has some."""
        found = {}
        for r in resources:
            if r.kind != Kind.DATASTREAM_STREAM:
                continue
            slot = r.spec.get("replication_slot")
            text = (f"its position in replication slot {slot}" if slot else "its binlog position") + \
                f"; a new stream backfills its {len(r.spec.get('include_objects') or [])} table(s) again"
            if r.status.get("error"):
                text += f"; Datastream reports: {r.status['error']}"
            found[r.address] = text
        return found

    def source_columns(self, profile: Mapping[str, Any], objects: Collection[tuple[str, str]]
                       ) -> dict[str, dict[str, str]]:
        """``{"<schema>.<table>": {column: data type}}`` of the live tables, by Datastream's
        ``discover_connection_profile`` with the profile inline; a table Datastream does not see is absent."""
        resource = Resource(Kind.DATASTREAM_CONNECTION_PROFILE, "discover", dict(profile))
        db = profile["type"]
        request = ds.DiscoverConnectionProfileRequest(parent=self.parent,
                                                      connection_profile=build_profile(self.project, resource),
                                                      full_hierarchy=True)
        if db == "postgresql":
            request.postgresql_rdbms = include_objects(db, [{"schema": s, "table": t} for s, t in objects])
        else:
            request.mysql_rdbms = include_objects(db, [{"schema": s, "table": t} for s, t in objects])
        response = self._rpc("discover_connection_profile", profile.get("host", ""),
                             lambda: self.client().discover_connection_profile(request=request, **_OPTS))
        found: dict[str, dict[str, str]] = {}
        if db == "postgresql":
            for schema in response.postgresql_rdbms.postgresql_schemas:
                for table in schema.postgresql_tables:
                    found[f"{schema.schema}.{table.table}"] = {c.column: c.data_type
                                                               for c in table.postgresql_columns}
        else:
            for database in response.mysql_rdbms.mysql_databases:
                for table in database.mysql_tables:
                    found[f"{database.database}.{table.table}"] = {c.column: c.data_type for c in table.mysql_columns}
        return found

    def health(self, resources: Sequence[Resource]) -> dict[str, Any]:
        """`providers.base.HealthReporter`: each declared stream as Datastream has it - RUNNING is
        Healthy (with its freshness, Datastream's lag behind the source, from Cloud Monitoring),
        starting is Progressing, FAILED or PAUSED is Degraded with Datastream's reason."""
        from providers.monitoring import CloudMonitoring
        from reconciler.health import Health, Observation

        streams = [r for r in resources if r.kind == Kind.DATASTREAM_STREAM]
        if not streams:
            return {}
        live = {r.name: r for r in self.observe(Kind.DATASTREAM_STREAM)}
        lag = CloudMonitoring(self.project).latest(FRESHNESS_METRIC, STREAM_MONITORED_RESOURCE, "stream_id",
                                                   [r.name for r in streams])
        found: dict[str, Any] = {}
        for r in streams:
            observed = live.get(r.name)
            if observed is None:
                continue  # Missing: the sync state says it
            state, error = observed.spec["state"], observed.status.get("error")
            behind = f"{lag[r.name]} s behind its source (Datastream freshness)" if r.name in lag else \
                "its lag is not observed (no freshness metric yet)"
            if state in ("FAILED", "FAILED_PERMANENTLY", "PAUSED"):
                found[r.address] = Observation(Health.DEGRADED, f"stream {state}" + (f": {error}" if error else ""),
                                               error=error, signals={"stream_state": state})
            elif state in ("NOT_STARTED", "DRAINING", "MAINTENANCE"):
                found[r.address] = Observation(Health.PROGRESSING, f"stream {state}", signals={"stream_state": state})
            else:
                found[r.address] = Observation(Health.HEALTHY, f"stream {state}; {behind}",
                                               signals={"stream_state": state, "freshness_seconds": lag.get(r.name)})
        return found

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    # -- plumbing --

    def _named(self, message: Any, collection: str, name: str) -> Any:
        message.name = f"{self.parent}/{collection}/{name}"
        return message

    def _list(self, method: str) -> list[Any]:
        request_type = ds.ListConnectionProfilesRequest if method == "list_connection_profiles" \
            else ds.ListStreamsRequest
        request = request_type(parent=self.parent, page_size=LIST_PAGE_SIZE)
        key = "connection_profiles" if method == "list_connection_profiles" else "streams"

        def attempt() -> list[Any]:
            self._counter.count(method)
            pager = getattr(self.client(), method)(request=request, **_OPTS)
            items: list[Any] = []
            for number, page in enumerate(pager.pages):
                if number:
                    self._counter.count(method)
                items.extend(getattr(page, key))
            return items

        return call(attempt, f"datastream.{method} {self.parent}")

    def _wait(self, operation: Any, resource: Resource, verb: str) -> None:
        poll = retries.Retry(predicate=polling.POLLING_PREDICATE, initial=self.poll_interval,
                             maximum=max(self.poll_interval, 15.0), multiplier=1.5, timeout=self.operation_timeout)
        try:
            operation.result(polling=poll)
        except concurrent.futures.TimeoutError:
            raise TemporaryError(f"{resource.address}: the {verb} is still in progress after "
                                 f"{self.operation_timeout:.0f} s; apply again to check on it") from None
        except gexc.GoogleAPICallError as exc:
            raise translate(exc, f"datastream.{verb} {resource.name}") from exc

    def client(self) -> ds.DatastreamClient:
        with self._lock:
            if self._client is None:
                self._client = ds.DatastreamClient(**self._client_kwargs)
            return self._client

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)
