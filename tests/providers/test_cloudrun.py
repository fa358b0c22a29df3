"""Cloud Run provider: the services it builds, checked against the client library's own types,
and the same requests sent through the official client (REST transport) to a local endpoint
(tests/fake_cloudrun.py).

Cloud Run has no emulator. What these tests cannot show - that Cloud Run honours the update masks,
the exact shape of a failed revision's operation error and conditions, which defaults the server
fills in - is verified only against the real service (see the provider's docstring).
"""

from __future__ import annotations

import json

import pytest
from fake_cloudrun import DEFAULT_ACCOUNT, FakeCloudRun
from google.cloud import run_v2

from providers.cloudrun import (
    CloudRunProvider,
    build_service,
    secret_id,
    service_resource,
    update_mask,
)
from providers.errors import AlreadyExists, PermanentError, TemporaryError
from reconciler.plan import Action, reconcile
from reconciler.resources import Kind, Resource

PROJECT, REGION = "headwater-demo", "europe-west1"
PARENT = f"/v2/projects/{PROJECT}/locations/{REGION}"
LABELS = {"managed-by": "headwater", "headwater-platform": "dev", "headwater-source": "payments"}
CONNECTOR = {
    "version": 1, "source_id": "payments", "project": PROJECT, "connector_type": "rest_api",
    "topic": f"projects/{PROJECT}/topics/payments",
    "rest_api": {"endpoint": "https://api.payments.example.com/v1/charges", "auth": {"type": "bearer_token"},
                 "records": "data", "pagination": {"type": "next_url", "path": "next"}},
}


def poller(**spec) -> Resource:
    """A rest_api connector as compile makes it: one instance, CPU always on, internal."""
    return Resource(Kind.CLOUD_RUN_SERVICE, "payments-connector", {
        "image": "europe-docker.pkg.dev/headwater-demo/headwater/connector:1.4.0",
        "command": ["python", "-m", "connector"],
        "connector": CONNECTOR,
        "secrets": {"HEADWATER_CONNECTOR_SECRET": "payments-api-key"},
        "service_account": "connector-payments@headwater-demo.iam.gserviceaccount.com",
        "min_instances": 1, "max_instances": 1, "ingress": "internal", "cpu_always_allocated": True,
        "public": False, **spec,
    }, LABELS)


def webhook(**spec) -> Resource:
    """A webhook connector: public ingress, no invoker IAM (the signature authenticates), 0..5."""
    connector = {**CONNECTOR, "connector_type": "webhook", "rest_api": None,
                 "webhook": {"path": "/hooks/stripe", "signature": None, "max_body_bytes": 1048576}}
    return Resource(Kind.CLOUD_RUN_SERVICE, "stripe-connector", {
        "image": "europe-docker.pkg.dev/headwater-demo/headwater/connector:1.4.0",
        "command": ["python", "-m", "connector"], "connector": connector,
        "secrets": {"HEADWATER_WEBHOOK_SECRET": "stripe-signing-key"}, "service_account": None,
        "min_instances": 0, "max_instances": 5, "ingress": "all", "cpu_always_allocated": False,
        "public": True, **spec,
    }, {**LABELS, "headwater-source": "stripe"})


def changed(resource: Resource, **spec) -> Resource:
    return Resource(resource.kind, resource.name, {**resource.spec, **spec}, resource.labels)


def plan_actions(desired: list[Resource], live: list[Resource]) -> dict[str, tuple[Action, tuple[str, ...]]]:
    plan = reconcile(desired, live, {Kind.CLOUD_RUN_SERVICE: frozenset()})
    return {c.name: (c.action, c.update_fields) for c in plan.changes}


@pytest.fixture
def fake():
    server = FakeCloudRun()
    yield server
    server.close()


def provider_for(fake: FakeCloudRun, **kwargs) -> CloudRunProvider:
    return CloudRunProvider(PROJECT, REGION, poll_interval=0.01, **fake.client_kwargs(), **kwargs)


# --------------------------------------------------------------------------- requests


def test_the_service_survives_the_client_librarys_serialization():
    service = build_service(poller())
    assert run_v2.Service.deserialize(run_v2.Service.serialize(service)) == service
    (container,) = service.template.containers
    assert [env.name for env in container.env] == ["HEADWATER_CONNECTOR_SPEC", "HEADWATER_CONNECTOR_SECRET"]
    assert "PORT" not in {env.name for env in container.env}, "Cloud Run sets PORT itself"


@pytest.mark.parametrize("name", ["PORT", "K_SERVICE", "HEADWATER_CONNECTOR_SPEC"])
def test_a_secret_cannot_take_a_reserved_variable(name):
    with pytest.raises(PermanentError, match=f"{name} is reserved"):
        build_service(poller(secrets={name: "payments-api-key"}))


def test_update_masks_name_only_the_changed_parts():
    assert update_mask(["image", "connector", "secrets"]) == ["template.containers"]
    assert update_mask(["min_instances", "public"]) == ["invoker_iam_disabled", "template.scaling.min_instance_count"]
    assert update_mask(["labels"]) == ["labels", "template.labels"]
    with pytest.raises(PermanentError, match="no such field"):
        update_mask(["memory"])


# --------------------------------------------------------------------------- observe: normalization


def live_service(container: run_v2.Container, **fields) -> run_v2.Service:
    return run_v2.Service(name=f"projects/{PROJECT}/locations/{REGION}/services/x", labels=LABELS,
                          template=run_v2.RevisionTemplate(containers=[container]), **fields)


def test_observe_normalizes_server_defaults_and_reference_forms():
    def ref(secret: str, version: str = "latest") -> run_v2.EnvVarSource:
        return run_v2.EnvVarSource(secret_key_ref=run_v2.SecretKeySelector(secret=secret, version=version))

    container = run_v2.Container(image="img", env=[
        run_v2.EnvVar(name="HEADWATER_CONNECTOR_SPEC", value=json.dumps(CONNECTOR)),
        run_v2.EnvVar(name="A_SECRET", value_source=ref("projects/123456789012/secrets/payments-api-key")),
        run_v2.EnvVar(name="PINNED", value_source=ref("stripe-signing-key", "3")),
        run_v2.EnvVar(name="SET_BY_HAND", value="not headwater's"),
    ])
    service = live_service(container)
    service.template.service_account = DEFAULT_ACCOUNT
    spec = service_resource(service).spec
    assert spec["connector"] == CONNECTOR
    assert spec["secrets"] == {"A_SECRET": "payments-api-key", "PINNED": "stripe-signing-key@3"}
    assert spec["service_account"] is None, "Cloud Run's default account reads as unset"
    assert spec["ingress"] == "all", "unset ingress is Cloud Run's default, all"
    assert spec["max_instances"] == 100, "unset maximum is Cloud Run's default"
    assert spec["cpu_always_allocated"] is False, "no resources: CPU only during requests"
    assert secret_id(run_v2.SecretKeySelector(secret="projects/p/secrets/k", version="")) == "k"

    internal = live_service(run_v2.Container(image="img", resources=run_v2.ResourceRequirements(cpu_idle=False)),
                            ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER)
    spec = service_resource(internal).spec
    assert spec["cpu_always_allocated"] is True
    assert spec["ingress"] == "ingress_traffic_internal_load_balancer", "an ingress headwater never sets is drift"


# --------------------------------------------------------------------------- through the client


def test_create_sends_everything_and_observe_reads_back_the_desired_spec(fake):
    provider = provider_for(fake)
    fake.operation_polls = 1  # create waits for its operation
    provider.create(poller())

    create, poll = fake.requests
    assert (create.method, create.path, create.query["serviceId"]) == ("POST", f"{PARENT}/services", "payments-connector")
    assert (poll.method, poll.path) == ("GET", f"{PARENT}/operations/op-1")
    body = create.body
    assert body["labels"] == LABELS and body["template"]["labels"] == LABELS
    assert body["ingress"] == int(run_v2.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY)
    assert "invokerIamDisabled" not in body, "IAM stays on for a poller"
    template = body["template"]
    assert template["serviceAccount"] == "connector-payments@headwater-demo.iam.gserviceaccount.com"
    assert template["scaling"] == {"minInstanceCount": 1, "maxInstanceCount": 1}
    (container,) = template["containers"]
    assert container["image"] == "europe-docker.pkg.dev/headwater-demo/headwater/connector:1.4.0"
    assert container["command"] == ["python", "-m", "connector"]
    assert container["resources"] == {}, "cpu_idle false (CPU always allocated) is the proto default, sent as {}"
    spec_env, secret_env = container["env"]
    assert spec_env["name"] == "HEADWATER_CONNECTOR_SPEC" and json.loads(spec_env["value"]) == CONNECTOR
    assert secret_env == {"name": "HEADWATER_CONNECTOR_SECRET",
                          "valueSource": {"secretKeyRef": {"secret": "payments-api-key", "version": "latest"}}}

    fake.requests.clear()
    (live,) = provider.observe(Kind.CLOUD_RUN_SERVICE)
    assert [(r.method, r.path) for r in fake.requests] == [("GET", f"{PARENT}/services")]
    assert live.spec == poller().spec and live.labels == LABELS
    assert plan_actions([poller()], [live]) == {"payments-connector": (Action.NOOP, ())}


def test_a_webhook_is_public_and_autoscaled(fake):
    provider = provider_for(fake)
    provider.create(webhook())
    body = fake.requests[0].body
    assert body["invokerIamDisabled"] is True
    assert body["ingress"] == int(run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL)
    assert body["template"]["scaling"] == {"maxInstanceCount": 5}, "min 0 is the proto default"
    assert "serviceAccount" not in body["template"], "no account: Cloud Run's default"
    assert body["template"]["containers"][0]["resources"] == {"cpuIdle": True}
    (live,) = provider.observe(Kind.CLOUD_RUN_SERVICE)
    assert live.spec == webhook().spec, "the default account the server filled in reads as None"


def test_observe_is_one_paged_list_and_keeps_only_managed_services(fake):
    provider = provider_for(fake)
    for i in range(5):
        provider.create(Resource(Kind.CLOUD_RUN_SERVICE, f"s{i}-connector", poller().spec, LABELS))
    fake.services[f"{PARENT[4:]}/services/not-ours"] = {"name": f"{PARENT[4:]}/services/not-ours",
                                                       "labels": {"team": "web"}}
    fake.page_size = 2
    fake.requests.clear()
    live = provider.observe(Kind.CLOUD_RUN_SERVICE)
    assert sorted(r.name for r in live) == [f"s{i}-connector" for i in range(5)]
    assert [r.query.get("pageToken") for r in fake.requests] == [None, "2", "4"], "3 pages, one list"
    assert {r.path for r in fake.requests} == {f"{PARENT}/services"}
    assert provider.api_calls()["run.list_services"] == 3


def test_update_reads_then_sends_only_the_changed_parts_and_keeps_what_headwater_does_not_manage(fake):
    provider = provider_for(fake)
    provider.create(poller())
    stored = fake.services[f"{PARENT[4:]}/services/payments-connector"]
    # Set by hand in the console: more memory and a plain variable. Not headwater's: they stay.
    stored["template"]["containers"][0]["resources"]["limits"]["memory"] = "1Gi"
    stored["template"]["containers"][0]["env"].append({"name": "LOG_LEVEL", "value": "debug"})
    etag = stored["etag"]
    fake.requests.clear()

    desired = changed(poller(), image="europe-docker.pkg.dev/headwater-demo/headwater/connector:1.5.0",
                      min_instances=0, secrets={"HEADWATER_CONNECTOR_SECRET": "payments-api-key-v2"})
    fake.operation_polls = 1
    provider.update(desired, ["image", "min_instances", "secrets"])

    get, patch, poll = fake.requests
    assert (get.method, patch.method, poll.method) == ("GET", "PATCH", "GET"), "read, write, wait"
    assert patch.query["updateMask"] == "template.containers,template.scaling.minInstanceCount"
    assert patch.body["etag"] == etag, "the read's etag guards the write against a change made meanwhile"
    (container,) = patch.body["template"]["containers"]
    assert container["image"].endswith(":1.5.0")
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert [e["name"] for e in container["env"]] == ["HEADWATER_CONNECTOR_SPEC", "LOG_LEVEL",
                                                      "HEADWATER_CONNECTOR_SECRET"]
    assert container["env"][2]["valueSource"]["secretKeyRef"]["secret"] == "payments-api-key-v2"

    (live,) = provider.observe(Kind.CLOUD_RUN_SERVICE)
    assert live.spec == desired.spec
    assert stored["template"]["containers"][0]["resources"]["limits"]["memory"] == "1Gi"

    fake.requests.clear()
    relabelled = Resource(desired.kind, desired.name, desired.spec, {**LABELS, "team": "payments"})
    provider.update(changed(relabelled, public=True, ingress="all"), ["labels", "public", "ingress"])
    patch = fake.mutating()[0]
    assert patch.query["updateMask"] == "ingress,invokerIamDisabled,labels,template.labels"
    assert patch.body["labels"]["team"] == "payments" and patch.body["template"]["labels"]["team"] == "payments"
    assert patch.body["invokerIamDisabled"] is True


def test_a_change_made_between_the_read_and_the_write_is_not_overwritten(fake):
    provider = provider_for(fake)
    provider.create(poller())
    fake.edit_after_next_get = True
    with pytest.raises(TemporaryError, match="changed between headwater's read and its write"):
        provider.update(changed(poller(), min_instances=0), ["min_instances"])
    assert provider.observe(Kind.CLOUD_RUN_SERVICE)[0].spec["min_instances"] == 1, "nothing written"
    provider.update(changed(poller(), min_instances=0), ["min_instances"])  # the next apply reads anew
    assert provider.observe(Kind.CLOUD_RUN_SERVICE)[0].spec["min_instances"] == 0


def test_a_failed_revision_fails_the_update_with_cloud_runs_reason_and_stays_a_difference(fake):
    provider = provider_for(fake)
    provider.create(poller())
    broken = changed(poller(), image="europe-docker.pkg.dev/headwater-demo/headwater/connector:broken")
    fake.fail_next_revision()

    with pytest.raises(PermanentError) as failure:
        provider.update(broken, ["image"])

    message = str(failure.value)
    assert message.startswith("cloud_run_service.payments-connector: the new revision failed: ")
    assert "HEALTH_CHECK_CONTAINER_ERROR" in message
    assert "Revision 'payments-connector-00002-abc' is not ready and cannot serve traffic" in message
    # The previous revision still serves: observe says so, and the next plan tries again.
    (live,) = provider.observe(Kind.CLOUD_RUN_SERVICE)
    assert live.spec["image"] == poller().spec["image"]
    assert plan_actions([broken], [live]) == {"payments-connector": (Action.UPDATE, ("image",))}
    assert provider.api_calls()["run.get_revision"] == 1, "one get of the serving revision"


def test_a_service_whose_first_revision_failed_serves_nothing(fake):
    provider = provider_for(fake)
    fake.fail_next_revision("SECRETS_ACCESS_CHECK_FAILED", "Secret projects/123456789012/secrets/payments-api-key/"
                            "versions/latest was not found")
    with pytest.raises(PermanentError, match="SECRETS_ACCESS_CHECK_FAILED: Secret .*payments-api-key.* not found"):
        provider.create(poller())
    (live,) = provider.observe(Kind.CLOUD_RUN_SERVICE)
    assert live.spec["image"] is None, "no revision serves"
    assert plan_actions([poller()], [live]) == {"payments-connector": (Action.UPDATE, ("image",))}
    provider.update(poller(), ["image"])  # the secret exists now: the retry deploys
    assert provider.observe(Kind.CLOUD_RUN_SERVICE)[0].spec == poller().spec


def test_create_of_an_existing_service_is_already_exists(fake):
    provider = provider_for(fake)
    provider.create(poller())
    with pytest.raises(AlreadyExists):
        provider.create(poller())


def test_a_deploy_that_outlasts_the_timeout_is_temporary(fake):
    provider = provider_for(fake, deploy_timeout=0.2)
    fake.operation_polls = 10_000
    with pytest.raises(TemporaryError, match="create is still in progress after 0 s; apply again"):
        provider.create(poller())


def test_delete_waits_and_is_idempotent(fake):
    provider = provider_for(fake)
    provider.create(poller())
    fake.requests.clear()
    fake.operation_polls = 1
    provider.delete(poller())
    assert [(r.method, r.path.rsplit("/", 2)[-2]) for r in fake.requests] == [("DELETE", "services"),
                                                                              ("GET", "operations")]
    assert provider.observe(Kind.CLOUD_RUN_SERVICE) == []
    provider.delete(poller())  # 404: already gone


def test_read_finds_a_service_of_a_declared_name_whoever_manages_it(fake):
    provider = provider_for(fake)
    provider.create(poller())
    fake.services[f"{PARENT[4:]}/services/not-ours"] = {"name": f"{PARENT[4:]}/services/not-ours",
                                                       "labels": {"team": "web"}}
    found = {r.name: r for r in provider.read(Kind.CLOUD_RUN_SERVICE, ["payments-connector", "not-ours", "absent"])}
    assert set(found) == {"payments-connector", "not-ours"}
    assert found["payments-connector"].managed and not found["not-ours"].managed
    assert found["not-ours"].labels == {"team": "web"}
