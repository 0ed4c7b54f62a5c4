"""The rendered gateway pod really runs: the operator's Deployment, its volumes and
``servegate serve`` agree. A stand-in kubelet (kubelet.py) mounts the rendered ConfigMaps and
Secrets, starts the container's own command, and requests go through it to a simulator.
With Kubernetes auth (the chart's default), the pod authenticates its callers against the
emulated API server with its ServiceAccount, as bound by the operator to deploy/'s role.
With ``gateway.controlPlane``, mlflow's ``create_endpoint`` through the pod writes a
ServingEndpoint, with what the operator's RoleBinding to the chart's role allows."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes.client
import pytest
import requests
import yaml

from servegate.spec import ServingEndpointSpec
from servegate_operator import reconcile
from servegate_operator.kube import CLUSTER_ROLE_BINDINGS as CRBS
from servegate_operator.kube import ROLE_BINDINGS, Kube
from servegate_operator.naming import CONTROL_PLANE_BINDING_NAME
from servegate_operator.render.config import render_endpoint
from servegate_operator.render.gateway import render_deployment
from servegate_operator.settings import GatewayDefaults
from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    generation,
    http_chat,
    http_get,
    start_site,
    wait_for_generation,
)
from tests.k8s.emulator import TOKEN, EmulatedCluster
from tests.k8s.reviews import ReviewAuthority, service_account
from tests.operator.kubelet import Pod
from tests.operator.test_operator import (
    CLUSTER_ROLE_BINDINGS,
    NS,
    SEP,
    deployed_documents,
    deployed_settings,
    named,
)

KEY = "sk-pod-key"
PLAIN = "sk-pod-plaintext"


@pytest.fixture(scope="module")
def sim(background_loop: BackgroundLoop) -> Iterator[str]:
    from servegate.simulators.openai import create_openai_app

    runner, url = background_loop.run(
        start_site(create_openai_app(api_keys={KEY, PLAIN, "sk-rotated"}))
    )
    yield url + "/v1"
    background_loop.run(runner.cleanup())


def spec_document(base: str, key_field: dict[str, str]) -> dict[str, Any]:
    return {
        "config": {
            "served_entities": [
                {
                    "external_model": {
                        "name": "gpt-4o-mini",
                        "provider": "openai",
                        "task": "llm/v1/chat",
                        "openai_config": {"openai_api_base": base, **key_field},
                    }
                }
            ]
        }
    }


def spec(base: str, key_field: dict[str, str]) -> ServingEndpointSpec:
    return ServingEndpointSpec.model_validate(spec_document(base, key_field))


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}


def test_rendered_gateway_pod_serves_through_its_mounts(
    tmp_path: Path, sim: str, background_loop: BackgroundLoop
) -> None:
    run = background_loop.run
    referenced = render_endpoint(
        "chat", "team-a", spec(sim, {"openai_api_key": "{{secrets/team_keys/openai}}"})
    )
    plaintext = render_endpoint("plain", "team-a", spec(sim, {"openai_api_key_plaintext": PLAIN}))
    assert plaintext.plaintext_secret is not None
    deployment = render_deployment("team-a", [referenced, plaintext], GatewayDefaults())
    objects: dict[tuple[str, str], dict[str, Any]] = {
        ("ConfigMap", referenced.config_map["metadata"]["name"]): referenced.config_map,
        ("ConfigMap", plaintext.config_map["metadata"]["name"]): plaintext.config_map,
        ("Secret", "team-keys"): secret("team-keys", {"openai": KEY, "unrelated": "never-mounted"}),
        ("Secret", plaintext.plaintext_secret["metadata"]["name"]): plaintext.plaintext_secret,
    }
    pod = Pod(deployment, objects, tmp_path / "pod")
    assert not any(
        "unrelated" in str(p) for p in (tmp_path / "pod").rglob("*")
    )  # only referenced keys
    gateway = GatewayProcess(pod.args, tmp_path / "pod.log", env=pod.env, port_zero=False)
    try:
        assert run(http_get(gateway.url + "/readyz"))["status"] == "ready"
        assert run(http_chat(gateway.url, "chat"))[0] == 200
        assert run(http_chat(gateway.url, "plain"))[0] == 200
        # Rotate the Secret: kubelet swaps ..data, the gateway reloads, no restart.
        gen = generation(background_loop, gateway.url)
        objects[("Secret", "team-keys")] = secret("team-keys", {"openai": "sk-rotated"})
        pod.update(objects)
        gen = wait_for_generation(background_loop, gateway.url, gen)
        assert run(http_chat(gateway.url, "chat"))[0] == 200
        # Delete it: only that endpoint goes NOT_READY, the other keeps serving.
        del objects[("Secret", "team-keys")]
        pod.update(objects)
        wait_for_generation(background_loop, gateway.url, gen)
        status, _, body = run(http_chat(gateway.url, "chat"))
        assert status == 503
        assert "team_keys" in body["message"]
        assert run(http_chat(gateway.url, "plain"))[0] == 200
    finally:
        gateway.stop()
    assert PLAIN not in gateway.logs() and KEY not in gateway.logs()


async def ask(url: str, endpoint: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/serving-endpoints/{endpoint}/invocations",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
        ) as response,
    ):
        return response.status, await response.json()


def test_rendered_gateway_pod_authenticates_kubernetes_identities(
    cluster: EmulatedCluster, tmp_path: Path, sim: str, background_loop: BackgroundLoop
) -> None:
    """deploy/ installed (its reviewer ClusterRole), the operator's settings from deploy/'s
    Deployment, one reconcile of an endpoint (ServiceAccount, binding, gateway), and that
    gateway pod run with its ServiceAccount's token: callers' projected tokens for the
    audience, and a team's Role, decide who queries what; without the operator's binding
    the gateway may not ask."""
    run = background_loop.run
    authority = ReviewAuthority(cluster)
    documents = deployed_documents()
    settings = deployed_settings(documents)
    reviewer = named(documents, "ClusterRole", settings.gateway.reviewer_cluster_role)
    assert reviewer is not None
    cluster.create(reviewer)
    keys = secret("team-keys", {"openai": KEY})
    cluster.create({**keys, "metadata": {"name": "team-keys", "namespace": NS}})
    cluster.create(
        {
            "apiVersion": "servegate.io/v1alpha1",
            "kind": "ServingEndpoint",
            "metadata": {"name": "chat", "namespace": NS},
            "spec": spec_document(sim, {"openai_api_key": "{{secrets/team_keys/openai}}"}),
        }
    )
    kube = Kube(cluster.api_client())
    chat = cluster.get(SEP, NS, "chat")
    assert chat is not None
    reconcile.reconcile(kube, chat, settings, "2026-11-22T00:00:00Z")
    deployment = cluster.get("apps/v1/deployments", NS, "servegate-gateway")
    config_map = cluster.get("v1/configmaps", NS, "servegate-ep-chat")
    assert deployment is not None and config_map is not None
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert cluster.get("v1/serviceaccounts", NS, account) is not None

    # kubelet mounts the pod's ServiceAccount token (API server audience); outside a pod,
    # the gateway finds the API server and that token through a kubeconfig.
    pod_token = authority.issue(service_account(NS, account, pod="servegate-gateway-7d9f-x2x"))
    kubeconfig = cluster.kubeconfig_dict(NS)
    kubeconfig["users"][0]["user"]["token"] = pod_token
    (tmp_path / "sa-kubeconfig.yaml").write_text(yaml.safe_dump(kubeconfig))
    objects = {("ConfigMap", "servegate-ep-chat"): config_map, ("Secret", "team-keys"): keys}
    pod = Pod(deployment, objects, tmp_path / "pod")
    env = {**pod.env, "KUBECONFIG": str(tmp_path / "sa-kubeconfig.yaml")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    gateway = GatewayProcess(pod.args, tmp_path / "pod.log", env=env, port_zero=False)
    try:
        # A team's grant, as the chart's README writes it.
        authority.grant(
            "query-chat",
            [{"kind": "ServiceAccount", "name": "web", "namespace": NS}],
            verbs=["query"],
            resource_names=["chat"],
            namespace=NS,
        )
        web = authority.issue(service_account(NS, "web", audiences=["servegate"]))
        status, body = run(ask(gateway.url, "chat", web))
        assert status == 200, body
        other = authority.issue(service_account(NS, "batch", audiences=["servegate"]))
        assert run(ask(gateway.url, "chat", other))[0] == 403  # no Role for it
        replayable = authority.issue(service_account(NS, "web"))  # the API server's audience
        assert run(ask(gateway.url, "chat", replayable))[0] == 401
        assert run(ask(gateway.url, "chat", None))[0] == 401

        # The binding deleted by hand: the gateway may not review; the next reconcile
        # restores it.
        binding = f"servegate-gateway-reviews-{NS}"
        kube.delete(CRBS, None, binding)
        assert cluster.get(CLUSTER_ROLE_BINDINGS, None, binding) is None
        late = authority.issue(service_account(NS, "web", audiences=["servegate"]))
        status, body = run(ask(gateway.url, "chat", late))
        assert (status, body["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
        reconcile.apply_gateway(kube, NS, settings)
        assert run(ask(gateway.url, "chat", late))[0] == 200
    finally:
        gateway.stop()
    assert KEY not in gateway.logs() and web not in gateway.logs()


def may(cluster: EmulatedCluster, user: str, verb: str, group: str, resource: str) -> bool:
    """Would the API server let ``user`` do this, in NS (cluster-wide for the reviews)?"""
    client = cluster.api_client()
    client.configuration.api_key = {"authorization": f"Bearer {TOKEN}"}  # as the admin
    client.configuration.api_key_prefix = {}
    namespaced = group not in ("authentication.k8s.io", "authorization.k8s.io")
    review = kubernetes.client.AuthorizationV1Api(client).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    **({"namespace": NS} if namespaced else {}),
                },
            },
        }
    )
    return bool(review.status.allowed)


def test_mlflow_creates_an_endpoint_through_the_rendered_gateway_pod(
    cluster: EmulatedCluster, tmp_path: Path, sim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart with gateway.controlPlane (its two gateway ClusterRoles installed), one
    reconcile of a first endpoint (the gateway exists once its namespace has one), and that
    pod run with its ServiceAccount's token: a team's ServiceAccount with ``create``
    creates a second endpoint with mlflow's deploy client, as the chart's README shows.
    Every API call the gateway made is one its bindings allow, and without the operator's
    RoleBinding it would not be."""
    authority = ReviewAuthority(cluster)
    documents = deployed_documents({"gateway": {"controlPlane": True}})
    settings = deployed_settings(documents)
    gateway_settings = settings.gateway
    for role_name in (
        gateway_settings.reviewer_cluster_role,
        gateway_settings.control_plane_cluster_role,
    ):
        role = named(documents, "ClusterRole", role_name)
        assert role is not None
        cluster.create(role)
    keys = secret("team-keys", {"openai": KEY})
    cluster.create({**keys, "metadata": {"name": "team-keys", "namespace": NS}})
    cluster.create(
        {
            "apiVersion": "servegate.io/v1alpha1",
            "kind": "ServingEndpoint",
            "metadata": {"name": "chat", "namespace": NS},
            "spec": spec_document(sim, {"openai_api_key": "{{secrets/team_keys/openai}}"}),
        }
    )
    kube = Kube(cluster.api_client())
    chat = cluster.get(SEP, NS, "chat")
    assert chat is not None
    reconcile.reconcile(kube, chat, settings, "2026-11-22T00:00:00Z")
    deployment = cluster.get("apps/v1/deployments", NS, "servegate-gateway")
    config_map = cluster.get("v1/configmaps", NS, "servegate-ep-chat")
    assert deployment is not None and config_map is not None
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    gateway_user = f"system:serviceaccount:{NS}:{account}"
    assert cluster.get("rbac.authorization.k8s.io/v1/rolebindings", NS, CONTROL_PLANE_BINDING_NAME)

    pod_token = authority.issue(service_account(NS, account, pod="servegate-gateway-7d9f-x2x"))
    kubeconfig = cluster.kubeconfig_dict(NS)
    kubeconfig["users"][0]["user"]["token"] = pod_token
    (tmp_path / "sa-kubeconfig.yaml").write_text(yaml.safe_dump(kubeconfig))
    objects = {("ConfigMap", "servegate-ep-chat"): config_map, ("Secret", "team-keys"): keys}
    pod = Pod(deployment, objects, tmp_path / "pod")
    assert pod.args[pod.args.index("--control-plane") + 1] == "kubernetes"
    env = {**pod.env, "KUBECONFIG": str(tmp_path / "sa-kubeconfig.yaml")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    since = cluster.request_count()
    gateway = GatewayProcess(pod.args, tmp_path / "pod.log", env=env, port_zero=False)
    try:
        # A team's grant to manage endpoints (the chart's README), and its caller's token.
        authority.grant(
            "manage-endpoints",
            [{"kind": "ServiceAccount", "name": "ml", "namespace": NS}],
            verbs=["create", "update", "delete", "query"],
            namespace=NS,
        )
        token = authority.issue(service_account(NS, "ml", audiences=["servegate"]))
        monkeypatch.setenv("DATABRICKS_HOST", gateway.url)
        monkeypatch.setenv("DATABRICKS_TOKEN", token)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "5")
        from mlflow.deployments import get_deploy_client

        client = get_deploy_client("databricks")  # type: ignore[no-untyped-call]
        config = spec_document(sim, {"openai_api_key_plaintext": PLAIN})["config"]
        with warnings.catch_warnings():  # mlflow: the name=/config= form is deprecated
            warnings.simplefilter("ignore", UserWarning)
            created = client.create_endpoint(name="assistant", config=config)
        assert created["name"] == "assistant"

        # A ServingEndpoint the operator serves, its key in a Secret it owns.
        resource = cluster.get(SEP, NS, "assistant")
        assert resource is not None
        assert PLAIN not in yaml.safe_dump(resource)
        credentials = cluster.get("v1/secrets", NS, "assistant-credentials")
        assert credentials is not None
        (owner,) = credentials["metadata"]["ownerReferences"]
        assert owner["uid"] == resource["metadata"]["uid"]
        reconcile.reconcile(kube, resource, settings, "2026-11-22T00:00:01Z")
        assert cluster.get("v1/configmaps", NS, "servegate-ep-assistant") is not None

        # A caller without the grant: refused, nothing written.
        monkeypatch.setenv(
            "DATABRICKS_TOKEN",
            authority.issue(service_account(NS, "batch", audiences=["servegate"])),
        )
        refused = get_deploy_client("databricks")  # type: ignore[no-untyped-call]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with pytest.raises(requests.HTTPError, match="PERMISSION_DENIED"):
                refused.create_endpoint(name="other", config=config)
        assert cluster.get(SEP, NS, "other") is None
    finally:
        gateway.stop()
    # Every call the gateway made (its User-Agent) is allowed by its two bindings...
    calls = cluster.rbac_calls(user_agent="servegate/", since=since)
    assert {("servegate.io", "servingendpoints", "create"), ("", "secrets", "create")} <= calls
    for group, resource_name, verb in sorted(calls):
        assert may(cluster, gateway_user, verb, group, resource_name), (group, resource_name, verb)
    # ... and the writes only by the operator's RoleBinding.
    kube.delete(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING_NAME)
    assert not may(cluster, gateway_user, "create", "servegate.io", "servingendpoints")
    assert not may(cluster, gateway_user, "get", "", "secrets")
    assert PLAIN not in gateway.logs() and token not in gateway.logs()
