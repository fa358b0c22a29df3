"""Cloud Run provider: connectors as Cloud Run services (Cloud Run Admin API v2).

Kind: ``Kind.CLOUD_RUN_SERVICE``. This module is the only one that imports ``google.cloud.run_v2``
(google-cloud-run). It implements the contract in `providers.base`; `providers.localrunner`
realizes the same kind on this machine. The canonical spec and the connector runtime it runs are
in docs/connector-contract.md ("The cloud_run_service resource").

How a spec becomes a service
----------------------------
One service per connector, named after its resource (``payments-connector``), in the platform's
region, with one container named ``connector``:

=========================  =====================================================================
spec key                   Cloud Run v2 ``Service`` field
=========================  =====================================================================
``image``, ``command``     ``template.containers[0].image`` / ``.command``
``connector``              env ``HEADWATER_CONNECTOR_SPEC`` = the document as compact JSON
``secrets``                one env var per entry, ``value_source.secret_key_ref`` =
                           ``{secret: <secret id>, version: "latest"}``: a *reference*. The value
                           never passes through headwater; Cloud Run resolves it when an
                           instance starts (so a rotated secret reaches new instances only).
``service_account``        ``template.service_account`` (unset: Cloud Run's default account)
``min_instances``,         ``template.scaling.min_instance_count`` / ``max_instance_count``
``max_instances``
``ingress``                ``ingress``: ``all`` = INGRESS_TRAFFIC_ALL, ``internal`` =
                           INGRESS_TRAFFIC_INTERNAL_ONLY
``cpu_always_allocated``   ``template.containers[0].resources.cpu_idle`` = the negation
``public``                 ``invoker_iam_disabled`` (webhooks: the HMAC signature authenticates)
labels                     ``labels`` and ``template.labels`` (so revisions carry them too)
=========================  =====================================================================

``PORT`` (and Cloud Run's other ``K_*`` variables) are reserved: Cloud Run sets them, a revision
that sets them is refused, so no spec may name them (`PermanentError` before any call).

The four operations
-------------------
``observe``  ONE ``list_services(parent=projects/<p>/locations/<region>)`` (paged); services
             labelled ``managed-by=headwater`` are normalized into the canonical spec
             (`service_resource`). A service whose latest revision *failed* is reported as what
             actually serves: the spec of its latest ready revision (one ``get_revision`` per
             such service, rare), or ``image: None`` when no revision serves at all. So a failed
             rollout stays a difference in the next plan, whose apply fails again with Cloud
             Run's reason, instead of reading as converged while the old revision serves.
``create``   ``create_service`` with every field and the labels; waits for the operation (the
             first revision ready). 409 is `AlreadyExists` (the applier converges with update).
``update``   Cloud Run v2's ``UpdateServiceRequest`` takes an ``update_mask`` (since mid-2024;
             `FIELD_MASKS`), but a mask path can stop at a repeated field only: the container
             list is replaced whole. So update reads the live service first (``get_service``),
             changes only the parts of the changed ``fields`` on it (`apply_fields`: settings
             headwater does not manage, such as memory limits or probes set by hand, survive),
             and sends it with the mask of those parts and the etag it read (a change made by
             someone else in between fails the update rather than being overwritten; the next
             reconcile reads again). Then it waits for the operation: the new revision ready.
             A revision that fails raises `PermanentError` with Cloud Run's condition reason
             and message (`failure_message`); traffic stays on the last ready revision, as
             Cloud Run does.
``delete``   ``delete_service``, waiting for the operation. Gone already is success.

Errors go through `providers.errors` (`CallCounter.rpc`): retries of temporary failures there,
not in the client library. Waiting for an operation is not retried: a deploy still running at
``deploy_timeout`` is a `TemporaryError` telling to apply again (the next plan sees where it got).

Normalized here (server defaults): an unset ingress reads ``all``; an unset maximum reads Cloud
Run's default of 100 instances; a container without ``resources`` reads CPU-only-during-requests;
Cloud Run's default service account (``<number>-compute@developer.gserviceaccount.com``) reads
``None``; secret references in the ``projects/<p>/secrets/<id>`` form read ``<id>``, and a pinned
version reads ``<id>@<version>`` (drift: headwater mounts ``latest``). Plain environment variables
other than ``HEADWATER_CONNECTOR_SPEC`` are not headwater's: neither observed nor overwritten.

Verified here against the client library's own types and, through REST transport, a local HTTP
endpoint (tests/fake_cloudrun.py). Verified only against the real service: that Cloud Run
honours these update masks; the exact operation error and conditions of a failed revision;
which defaults the server fills in (the default service account in particular).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import re
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.api_core.future import polling
from google.cloud import run_v2

from providers.calls import CallCounter
from providers.errors import AlreadyExists, NotFound, PermanentError, TemporaryError, call, translate
from reconciler.resources import MANAGED_BY_KEY, MANAGED_BY_VALUE, Kind, Resource

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTAINER_NAME = "connector"
SPEC_ENV = "HEADWATER_CONNECTOR_SPEC"
SECRET_VERSION = "latest"
# Set by Cloud Run itself; a revision that sets them is refused.
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"})
DEFAULT_MAX_INSTANCES = 100  # Cloud Run's, when a revision sets none

Ingress = run_v2.IngressTraffic
INGRESS = {"all": Ingress.INGRESS_TRAFFIC_ALL, "internal": Ingress.INGRESS_TRAFFIC_INTERNAL_ONLY}
INGRESS_NAMES = {value: key for key, value in INGRESS.items()}
ConditionState = run_v2.Condition.State

# Per spec key (or "labels"): the update mask paths that carry it. The container list is one
# path: a mask cannot address one element of a repeated field.
FIELD_MASKS: dict[str, tuple[str, ...]] = {
    "image": ("template.containers",),
    "command": ("template.containers",),
    "connector": ("template.containers",),
    "secrets": ("template.containers",),
    "cpu_always_allocated": ("template.containers",),
    "service_account": ("template.service_account",),
    "min_instances": ("template.scaling.min_instance_count",),
    "max_instances": ("template.scaling.max_instance_count",),
    "ingress": ("ingress",),
    "public": ("invoker_iam_disabled",),
    "labels": ("labels", "template.labels"),
}
IMMUTABLE_FIELDS: dict[Kind, frozenset[str]] = {Kind.CLOUD_RUN_SERVICE: frozenset()}

LIST_PAGE_SIZE = 500
RPC_TIMEOUT_S = 60.0
DEPLOY_TIMEOUT_S = 10 * 60.0  # how long create/update/delete wait for their operation
POLL_S = 2.0  # first wait between operation polls (then x1.5, at most 15 s)

_DEFAULT_ACCOUNT = re.compile(r"^\d+-compute@developer\.gserviceaccount\.com$")
_SECRET_NAME = re.compile(r"^projects/[^/]+/secrets/([^/]+)$")


# --- Requests (pure functions, tested against the client library's types) -----------------------


def spec_json(connector: Any) -> str:
    """The connector document as the value of ``HEADWATER_CONNECTOR_SPEC``: compact, keys sorted
    (a stable value, so an unchanged document never makes a new revision)."""
    return json.dumps(connector, sort_keys=True, separators=(",", ":"))


def check_env_names(resource: Resource) -> None:
    """Refuse secret env names Cloud Run reserves or that headwater sets itself (`PermanentError`)."""
    for name in resource.spec.get("secrets") or {}:
        if name in RESERVED_ENV or name == SPEC_ENV:
            raise PermanentError(f"{resource.address}: the environment variable {name} is reserved "
                                 f"({'set by Cloud Run' if name in RESERVED_ENV else 'the connector spec'}); "
                                 "a secret cannot be mounted there")


def secret_env(secrets: Mapping[str, str]) -> list[run_v2.EnvVar]:
    """One env var per secret, by reference (version ``latest``), sorted by name."""
    return [
        run_v2.EnvVar(name=name, value_source=run_v2.EnvVarSource(
            secret_key_ref=run_v2.SecretKeySelector(secret=secret, version=SECRET_VERSION)))
        for name, secret in sorted(secrets.items())
    ]


def build_container(resource: Resource) -> run_v2.Container:
    spec = resource.spec
    return run_v2.Container(
        name=CONTAINER_NAME,
        image=spec["image"],
        command=list(spec.get("command") or []),
        env=[run_v2.EnvVar(name=SPEC_ENV, value=spec_json(spec["connector"])),
             *secret_env(spec.get("secrets") or {})],
        # With ``resources`` sent, an unset cpu_idle means CPU always allocated: set it explicitly.
        resources=run_v2.ResourceRequirements(cpu_idle=not spec.get("cpu_always_allocated", False)),
    )


def build_service(resource: Resource) -> run_v2.Service:
    """The whole service for ``create_service`` (its name goes in the request's ``service_id``)."""
    check_env_names(resource)
    spec = resource.spec
    labels = dict(resource.labels)
    template = run_v2.RevisionTemplate(
        labels=labels,
        scaling=run_v2.RevisionScaling(min_instance_count=int(spec.get("min_instances") or 0),
                                       max_instance_count=int(spec.get("max_instances") or DEFAULT_MAX_INSTANCES)),
        containers=[build_container(resource)],
    )
    if spec.get("service_account"):
        template.service_account = spec["service_account"]
    return run_v2.Service(
        labels=labels,
        ingress=_ingress(resource),
        invoker_iam_disabled=bool(spec.get("public")),
        template=template,
    )


def update_mask(fields: Iterable[str]) -> list[str]:
    """The mask paths of ``fields`` (spec keys or ``"labels"``), sorted, each once."""
    paths: set[str] = set()
    for name in fields:
        if name not in FIELD_MASKS:
            raise PermanentError(f"cloud_run_service: no such field {name!r}")
        paths.update(FIELD_MASKS[name])
    return sorted(paths)


def apply_fields(live: run_v2.Service, resource: Resource, fields: Sequence[str]) -> run_v2.Service:
    """A copy of the live service with the parts of ``fields`` set to the resource's values, and
    nothing else changed (see the module docstring)."""
    check_env_names(resource)
    # Sent back as read: output-only fields are ignored by the server, and the etag makes a change
    # made by someone else between the read and the write fail the update instead of being lost.
    service = run_v2.Service.deserialize(run_v2.Service.serialize(live))
    spec, template = resource.spec, service.template
    container = _connector_container(service)
    if container is None and any(FIELD_MASKS.get(f, ("",))[0] == "template.containers" for f in fields):
        container = build_container(resource)
        template.containers.append(container)
    for name in fields:
        if name == "image":
            container.image = spec["image"]
        elif name == "command":
            container.command[:] = list(spec.get("command") or [])
        elif name == "connector":
            _set_env(container, SPEC_ENV, spec_json(spec["connector"]))
        elif name == "secrets":
            # Every secret reference is headwater's; plain variables set by hand stay.
            kept = [env for env in container.env if "value_source" not in env]
            container.env[:] = kept + secret_env(spec.get("secrets") or {})
        elif name == "cpu_always_allocated":
            container.resources.cpu_idle = not spec.get("cpu_always_allocated", False)
        elif name == "service_account":
            template.service_account = spec.get("service_account") or ""
        elif name == "min_instances":
            template.scaling.min_instance_count = int(spec.get("min_instances") or 0)
        elif name == "max_instances":
            template.scaling.max_instance_count = int(spec.get("max_instances") or DEFAULT_MAX_INSTANCES)
        elif name == "ingress":
            service.ingress = _ingress(resource)
        elif name == "public":
            service.invoker_iam_disabled = bool(spec.get("public"))
        elif name == "labels":
            service.labels.clear()
            service.labels.update(resource.labels)
            template.labels.clear()
            template.labels.update(resource.labels)
        else:
            raise PermanentError(f"{resource.address}: no such field {name!r}")
    return service


def _ingress(resource: Resource) -> Ingress:
    value = resource.spec.get("ingress") or "all"
    if value not in INGRESS:
        raise PermanentError(f"{resource.address}: ingress must be one of {', '.join(INGRESS)}, not {value!r}")
    return INGRESS[value]


def _connector_container(service: run_v2.Service | run_v2.Revision) -> run_v2.Container | None:
    containers = service.template.containers if isinstance(service, run_v2.Service) else service.containers
    named = [c for c in containers if c.name == CONTAINER_NAME]
    return (named or list(containers) or [None])[0]


def _set_env(container: run_v2.Container, name: str, value: str) -> None:
    for env in container.env:
        if env.name == name:
            env.value = value
            return
    container.env.insert(0, run_v2.EnvVar(name=name, value=value))


# --- Observation (pure) ----------------------------------------------------------------------------


def secret_id(selector: run_v2.SecretKeySelector) -> str:
    """The secret id of a reference: ``<id>`` or ``projects/<p>/secrets/<id>`` read ``<id>``; a
    version other than ``latest`` reads ``<id>@<version>`` (headwater mounts ``latest``)."""
    match = _SECRET_NAME.match(selector.secret)
    secret = match.group(1) if match else selector.secret
    return secret if selector.version in ("", SECRET_VERSION) else f"{secret}@{selector.version}"


def container_spec(container: run_v2.Container | None) -> dict[str, Any]:
    """``image``, ``command``, ``connector``, ``secrets`` and ``cpu_always_allocated`` of a container."""
    if container is None:
        return {"image": None, "command": [], "connector": None, "secrets": {}, "cpu_always_allocated": False}
    connector: Any = None
    secrets: dict[str, str] = {}
    for env in container.env:
        if "value_source" in env and "secret_key_ref" in env.value_source:
            secrets[env.name] = secret_id(env.value_source.secret_key_ref)
        elif env.name == SPEC_ENV:
            try:
                connector = json.loads(env.value)
            except ValueError:
                connector = env.value  # not ours any more: compares unequal, update rewrites it
    return {
        "image": container.image or None,
        "command": list(container.command),
        "connector": connector,
        "secrets": dict(sorted(secrets.items())),
        # No resources at all is Cloud Run's default: CPU only while serving a request.
        "cpu_always_allocated": "resources" in container and not container.resources.cpu_idle,
    }


def service_resource(service: run_v2.Service, serving: run_v2.Revision | None = None) -> Resource:
    """The canonical view of a live service; of its revision ``serving`` instead of its template
    when given (a failed rollout: see the module docstring)."""
    source: run_v2.Service | run_v2.Revision = serving if serving is not None else service
    template = service.template if serving is None else serving
    account = template.service_account or None
    if account and _DEFAULT_ACCOUNT.match(account):
        account = None
    spec: dict[str, Any] = {
        **container_spec(_connector_container(source)),
        "service_account": account,
        "min_instances": int(template.scaling.min_instance_count),
        "max_instances": int(template.scaling.max_instance_count) or DEFAULT_MAX_INSTANCES,
        "ingress": INGRESS_NAMES.get(service.ingress, "all" if service.ingress == Ingress.INGRESS_TRAFFIC_UNSPECIFIED
                                     else Ingress(service.ingress).name.lower()),
        "public": bool(service.invoker_iam_disabled),
    }
    return Resource(Kind.CLOUD_RUN_SERVICE, _short(service.name), spec, dict(service.labels))


def rollout_failed(service: run_v2.Service) -> bool:
    """The latest revision failed and is not the one serving (Cloud Run kept the previous one)."""
    return (service.terminal_condition.state == ConditionState.CONDITION_FAILED
            and not service.reconciling
            and service.latest_created_revision != service.latest_ready_revision)


def failure_message(service: run_v2.Service) -> str | None:
    """Cloud Run's reason for a failed service, from its terminal condition and failed conditions:
    ``"<type> <REASON>: <message>; ..."`` (at most 600 characters), or None if it has not failed."""
    failed = [c for c in [service.terminal_condition, *service.conditions]
              if c.state == ConditionState.CONDITION_FAILED]
    if not failed:
        return None
    parts: list[str] = []
    for condition in failed:
        reason = next((r.name for r in (condition.reason, condition.revision_reason, condition.execution_reason)
                       if int(r)), "")
        text = " ".join(filter(None, [condition.type_, reason])) + (f": {condition.message}" if condition.message
                                                                    else "")
        if text not in parts and not any(condition.message and condition.message in p for p in parts):
            parts.append(text)
    message = "; ".join(parts)
    return message if len(message) <= 600 else message[:597] + "..."


def _short(name: str) -> str:
    """The last part of a resource name: ``.../services/x/revisions/x-00002-abc`` -> ``x-00002-abc``."""
    return name.rsplit("/", 1)[-1]


def _managed(service: run_v2.Service) -> bool:
    return service.labels.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


# --- The provider ------------------------------------------------------------------------------------


class CloudRunProvider:
    """Cloud Run services of one project and region. Contract: `providers.base.Provider`."""

    kinds: tuple[Kind, ...] = (Kind.CLOUD_RUN_SERVICE,)
    immutable_fields: Mapping[Kind, frozenset[str]] = IMMUTABLE_FIELDS

    def __init__(
        self,
        project: str,
        region: str,
        *,
        services_client: run_v2.ServicesClient | None = None,
        revisions_client: run_v2.RevisionsClient | None = None,
        client_options: Any = None,
        credentials: Any = None,
        transport: str | None = None,
        deploy_timeout: float = DEPLOY_TIMEOUT_S,
        poll_interval: float = POLL_S,
    ) -> None:
        self.project = project
        self.region = region
        self._services = services_client
        self._revisions = revisions_client
        # For tests: point the official clients at a local endpoint (REST transport).
        self._client_kwargs = {k: v for k, v in (("client_options", client_options), ("credentials", credentials),
                                                 ("transport", transport)) if v is not None}
        self.deploy_timeout = deploy_timeout
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._counter = CallCounter("run")

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    def service_name(self, name: str) -> str:
        return f"{self.parent}/services/{name}"

    # -- contract --

    def observe(self, kind: Kind) -> list[Resource]:
        if Kind(kind) != Kind.CLOUD_RUN_SERVICE:
            raise PermanentError(f"cloudrun: unsupported kind {kind!r}")
        live = []
        for service in self._list():
            if not _managed(service):
                continue
            live.append(self._observed(service))
        return live

    def read(self, kind: Kind, names: Collection[str]) -> list[Resource]:
        """Services by name, whoever manages them (one get each; `providers.base.Reader`): a service of
        a declared name that is not headwater's is shown as such, never taken over by a create."""
        if Kind(kind) != Kind.CLOUD_RUN_SERVICE:
            raise PermanentError(f"cloudrun: unsupported kind {kind!r}")
        found = []
        for name in names:
            try:
                found.append(self._observed(self._get(name)))
            except NotFound:
                continue
        return found

    def create(self, resource: Resource) -> None:
        request = run_v2.CreateServiceRequest(parent=self.parent, service=build_service(resource),
                                              service_id=resource.name)
        operation = self._rpc("create_service", resource.name,
                              lambda: self._services_client().create_service(request=request, **_OPTS))
        self._wait(operation, resource, "create")

    def update(self, resource: Resource, fields: Sequence[str]) -> None:
        if not fields:
            return
        mask = update_mask(fields)
        live = self._get(resource.name)
        service = apply_fields(live, resource, fields)
        if service.template.revision and any(path.startswith("template.") for path in mask):
            # A revision name pinned (by hand) would be taken by the new revision: 409.
            service.template.revision = ""
            mask.append("template.revision")
        request = run_v2.UpdateServiceRequest(service=service, update_mask={"paths": mask})
        try:
            operation = self._rpc("update_service", resource.name,
                                  lambda: self._services_client().update_service(request=request, **_OPTS))
        except AlreadyExists as exc:  # 409 on an update: the etag no longer matches
            raise TemporaryError(f"{resource.address}: the service changed between headwater's read and its "
                                 f"write ({exc}); apply again to read it anew") from exc
        self._wait(operation, resource, "update")

    def delete(self, resource: Resource) -> None:
        request = run_v2.DeleteServiceRequest(name=self.service_name(resource.name))
        try:
            operation = self._rpc("delete_service", resource.name,
                                  lambda: self._services_client().delete_service(request=request, **_OPTS))
            self._wait(operation, resource, "delete")
        except NotFound:
            return

    # -- optional ability: health (providers.base.HealthReporter; providers/cloudrun_health.py) --

    def health(self, resources: Sequence[Resource]) -> dict[str, Any]:
        """Each connector's readiness (Cloud Run's conditions) and a poller's last successful poll."""
        from providers.cloudrun_health import service_health

        return service_health(self, resources)

    # -- ApiCallCounter --

    def api_calls(self) -> Mapping[str, int]:
        return self._counter.snapshot()

    # -- plumbing --

    def _observed(self, service: run_v2.Service) -> Resource:
        if not rollout_failed(service):
            return service_resource(service)
        reason = failure_message(service) or "no reason given"
        if service.latest_ready_revision:
            log.warning("Cloud Run service %s: revision %s failed (%s); %s still serves", _short(service.name),
                        _short(service.latest_created_revision), reason, _short(service.latest_ready_revision))
            try:
                return service_resource(service, self._get_revision(service.latest_ready_revision))
            except NotFound:
                pass  # deleted meanwhile: nothing we can name serves
        log.warning("Cloud Run service %s: no revision serves (%s)", _short(service.name), reason)
        resource = service_resource(service)
        return Resource(resource.kind, resource.name, {**resource.spec, "image": None}, resource.labels)

    def _wait(self, operation: Any, resource: Resource, verb: str) -> None:
        """Wait for a create/update/delete operation; a failed revision raises with Cloud Run's reason."""
        poll = retries.Retry(predicate=polling.POLLING_PREDICATE, initial=self.poll_interval,
                             maximum=max(self.poll_interval, 15.0), multiplier=1.5, timeout=self.deploy_timeout)
        try:
            result = operation.result(polling=poll)
        except concurrent.futures.TimeoutError:
            raise TemporaryError(f"{resource.address}: the {verb} is still in progress after "
                                 f"{self.deploy_timeout:.0f} s; apply again to check on it") from None
        except gexc.GoogleAPICallError as exc:
            if verb == "delete":
                raise translate(exc, f"run.delete_service {resource.name}") from exc
            reason = self._failure_of(resource.name)
            if reason is None:
                raise translate(exc, f"run.{verb}_service {resource.name}") from exc
            raise PermanentError(f"{resource.address}: the new revision failed: {reason}") from exc
        if verb != "delete" and isinstance(result, run_v2.Service) and rollout_failed(result):
            raise PermanentError(f"{resource.address}: the new revision failed: "
                                 f"{failure_message(result) or 'Cloud Run gave no reason'}")

    def _failure_of(self, name: str) -> str | None:
        try:
            service = self._get(name)
        except PermanentError:
            return None
        return failure_message(service)

    def _list(self) -> list[run_v2.Service]:
        request = run_v2.ListServicesRequest(parent=self.parent, page_size=LIST_PAGE_SIZE)

        def attempt() -> list[run_v2.Service]:
            self._counter.count("list_services")
            pager = self._services_client().list_services(request=request, **_OPTS)
            services: list[run_v2.Service] = []
            for number, page in enumerate(pager.pages):
                if number:
                    self._counter.count("list_services")
                services.extend(page.services)
            return services

        return call(attempt, f"run.list_services {self.parent}")

    def _get(self, name: str) -> run_v2.Service:
        request = run_v2.GetServiceRequest(name=self.service_name(name))
        return self._rpc("get_service", name, lambda: self._services_client().get_service(request=request, **_OPTS))

    def _get_revision(self, name: str) -> run_v2.Revision:
        request = run_v2.GetRevisionRequest(name=name)
        return self._rpc("get_revision", _short(name),
                         lambda: self._revisions_client().get_revision(request=request, **_OPTS))

    def _services_client(self) -> run_v2.ServicesClient:
        with self._lock:
            if self._services is None:
                self._services = run_v2.ServicesClient(**self._client_kwargs)
            return self._services

    def _revisions_client(self) -> run_v2.RevisionsClient:
        with self._lock:
            if self._revisions is None:
                self._revisions = run_v2.RevisionsClient(**self._client_kwargs)
            return self._revisions

    def _rpc(self, method: str, target: str, fn: Callable[[], T]) -> T:
        return self._counter.rpc(method, target, fn)


# Retries are providers.errors.call's job, not the client library's.
_OPTS: dict[str, Any] = {"retry": None, "timeout": RPC_TIMEOUT_S}
