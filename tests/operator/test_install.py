"""The documented installs, run end to end against the emulated API server with RBAC
enforced on every request.

``kubectl apply -f deploy/crds/ -f deploy/operator/``, as the README says (or the chart
rendered for two watched namespaces with two operator replicas). A stand-in kubelet
(kubelet.py) starts each operator pod from the applied Deployment: its own command and
env, the pod's name through the downward API, and a token of its own ServiceAccount, so the
operator runs with only what the install granted it. Then the README's walkthrough: a
Secret and the embeddings example with ``kubectl apply``, the gateway pod started from the
Deployment the operator rendered, the endpoint READY, and a query with a Kubernetes
identity through curl's path and the OpenAI SDK. Not one API call of the operator or the
gateway is refused; the RBAC each install grants is enough, in a cluster-wide and in a
namespaced (Role) install.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python
import openai
import pytest
import requests
import yaml

from tests.conftest import REPO, BackgroundLoop, GatewayProcess, start_site
from tests.k8s.emulator import EmulatedCluster, running_kubernetes
from tests.k8s.reviews import ReviewAuthority, service_account
from tests.operator.kubelet import Pod
from tests.operator.test_operator import condition, roll_out, status_of
from tests.operator.test_operator import wait_for as waiting
from tests.operator.test_operator_replicas import OperatorProcess
from tests.operator.test_pod_runs import secret

NS = "team-a"
SYSTEM = "servegate-system"
SEP = "servegate.io/v1alpha1/servingendpoints"
KEY = "sk-install-canary-key"
CHART = REPO / "helm" / "servegate"

INSTALLS: dict[str, dict[str, Any] | None] = {
    # README: kubectl apply -f deploy/crds/ -f deploy/operator/
    "kubectl-deploy": None,
    # helm install -n servegate-system with two watched namespaces and a hot standby.
    "chart-namespaced-two-replicas": {
        "watchNamespaces": [NS, "team-b"],
        "operator": {"replicas": 2},
    },
}


@pytest.fixture(scope="module")
def sim(background_loop: BackgroundLoop) -> Iterator[str]:
    from servegate.simulators.openai import create_openai_app

    runner, url = background_loop.run(start_site(create_openai_app(api_keys={KEY})))
    yield url + "/v1"
    background_loop.run(runner.cleanup())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmulatedCluster]:
    """An empty cluster: no servegate CRD until the install applies it."""
    namespaces = ("default", "kube-system", NS, "team-b")
    with running_kubernetes(tmp_path / "k8s", servegate=False, namespaces=namespaces) as k8s:
        yield k8s


class OperatorPod(OperatorProcess):
    """One replica of the applied operator Deployment, run by the stand-in kubelet."""

    def __init__(
        self,
        cluster: EmulatedCluster,
        authority: ReviewAuthority,
        deployment: dict[str, Any],
        directory: Path,
        name: str,
    ) -> None:
        self.pod = Pod(deployment, {}, directory / name, name=name)
        namespace = deployment["metadata"]["namespace"]
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        # kubelet mounts the ServiceAccount's token at a fixed path, which in-cluster
        # config reads; here the same identity comes through a kubeconfig.
        identity = service_account(namespace, account, pod=name)
        kubeconfig = authority.kubeconfig(identity, directory / f"{name}.kubeconfig")
        env = {**self.pod.env, "KUBECONFIG": str(kubeconfig)}
        super().__init__(directory, name, self.pod.args, env)

    def healthy(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.pod.ports[8081]}/healthz", timeout=2).ok
        except requests.ConnectionError:
            return False


def install(cluster: EmulatedCluster, values: dict[str, Any] | None, directory: Path) -> str:
    """Apply the install with kubectl; returns the operator Deployment's name."""
    if values is None:
        crds, operator = REPO / "deploy" / "crds", REPO / "deploy" / "operator"
        applied = cluster.kubectl("apply", "-f", str(crds), "-f", str(operator)).stdout
        assert "deployment.apps/servegate-operator created" in applied
        return "servegate-operator"
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="servegate", namespace=SYSTEM)
    manifest = directory / "chart.yaml"
    manifest.write_text(
        "\n---\n".join(text for path, text in sorted(rendered.items()) if path.endswith(".yaml"))
    )
    cluster.kubectl("apply", "-f", str(CHART / "crds"))
    cluster.kubectl("wait", "--for", "condition=established", "crd", "--all")
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM}})
    # As helm install -n servegate-system: every namespaced template names its namespace.
    cluster.kubectl("apply", "-f", str(manifest))
    return "servegate-operator"


def kubectl_apply(cluster: EmulatedCluster, document: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump(document))


def example(name: str, base: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "examples" / "embeddings.yaml").read_text())
    document["metadata"]["name"] = name
    model = document["spec"]["config"]["served_entities"][0]["external_model"]
    model["openai_config"]["openai_api_base"] = base
    return document


@pytest.mark.parametrize("install_kind", INSTALLS)
def test_the_documented_install_runs_with_the_rbac_it_grants(
    cluster: EmulatedCluster,
    tmp_path: Path,
    sim: str,
    install_kind: str,
) -> None:
    values = INSTALLS[install_kind]
    authority = ReviewAuthority(cluster)
    authority.enforce()
    name = install(cluster, values, tmp_path)
    deployment = cluster.get("apps/v1/deployments", SYSTEM, name)
    assert deployment is not None
    replicas = deployment["spec"]["replicas"]
    assert replicas == (1 if values is None else 2)
    pods = [
        OperatorPod(cluster, authority, deployment, tmp_path, f"{name}-6b7c9d-{n}")
        for n in ("q2w5z", "k8x4m")[:replicas]
    ]
    gateway: GatewayProcess | None = None

    def wait_for(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
        """A bounded wait; a timeout names what RBAC refused meanwhile, the likely cause."""
        try:
            return waiting(what, check, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; refused by RBAC: {authority.denied}") from None

    try:
        wait_for("the operator's liveness", lambda: all(p.healthy() for p in pods), timeout=30)
        # The peering objects: the chart installs them, deploy/ leaves them to the operator.
        if values is None:
            assert cluster.get("kopf.dev/v1/clusterkopfpeerings", None, "servegate")
        else:
            for namespace in values["watchNamespaces"]:
                assert cluster.get("kopf.dev/v1/kopfpeerings", namespace, "servegate")

        # The README's walkthrough: a Secret, the embeddings example, READY, a query.
        # kubectl create secret generic openai --from-literal=api_key=... (as YAML: the emulator
        # takes no protobuf, which kubectl's generators send)
        kubectl_apply(cluster, secret("openai", {"api_key": KEY}))
        kubectl_apply(cluster, example("embeddings", sim))
        rendered = wait_for(
            "the gateway Deployment",
            lambda: cluster.get("apps/v1/deployments", NS, "servegate-gateway"),
            timeout=30,
        )
        config_map = cluster.get("v1/configmaps", NS, "servegate-ep-embeddings")
        key_secret = cluster.get("v1/secrets", NS, "openai")
        assert config_map is not None and key_secret is not None
        spec = rendered["spec"]["template"]["spec"]
        account = spec["serviceAccountName"]
        gateway_pod = Pod(
            rendered,
            {
                ("ConfigMap", config_map["metadata"]["name"]): config_map,
                ("Secret", "openai"): key_secret,
            },
            tmp_path / "gateway",
        )
        kubeconfig = authority.kubeconfig(
            service_account(NS, account, pod=gateway_pod.name), tmp_path / "gateway.kubeconfig"
        )
        gateway = GatewayProcess(
            gateway_pod.args,
            tmp_path / "gateway.log",
            env={**gateway_pod.env, "KUBECONFIG": str(kubeconfig)},
            port_zero=False,
        )
        assert requests.get(gateway.url + "/readyz", timeout=5).ok
        roll_out(cluster)  # the Deployment controller's part: the pods are available
        wait_for(
            "READY",
            lambda: (status_of(cluster, "embeddings").get("state") or {}).get("ready") == "READY",
            timeout=30,
        )

        # Step 5: a ServiceAccount may query it; its projected token for the audience.
        authority.grant(
            "query-embeddings",
            [{"kind": "ServiceAccount", "name": "web", "namespace": NS}],
            verbs=["query"],
            resource_names=["embeddings"],
            namespace=NS,
        )
        token = authority.issue(service_account(NS, "web", audiences=["servegate"]))
        answer = requests.post(
            f"{gateway.url}/serving-endpoints/embeddings/invocations",
            headers={"Authorization": f"Bearer {token}"},
            json={"input": ["hello"]},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"][0]["embedding"]
        client = openai.OpenAI(base_url=f"{gateway.url}/serving-endpoints", api_key=token)
        embedded = client.embeddings.create(model="embeddings", input=["hello"])
        assert embedded.data[0].embedding

        if replicas == 2:
            # NOTES.txt's command lists both replicas and their priorities.
            listed = cluster.kubectl(
                "get", "kopfpeering", "servegate", "-n", NS, "-o", "jsonpath={.status}"
            ).stdout
            assert {pod.pod.name for pod in pods} <= set(json.loads(listed))
            # The hot standby: the leader stops (a rollout, a drain), the other takes over
            # and reconciles what comes next.
            leader = next(p for p in pods if p.said("Handler 'reconcile_endpoint' succeeded"))
            standby = next(p for p in pods if p is not leader)
            assert leader.stop() == 0
            wait_for("the standby resumes", lambda: standby.said("Resuming operations"))
            kubectl_apply(cluster, example("second", sim))
            wait_for(
                "the standby reconciled",
                lambda: condition(cluster, "second", "ConfigValid").get("status") == "True",
            )
    finally:
        if gateway is not None:
            gateway.stop()
        codes = [pod.stop() for pod in pods]
    assert codes == [0] * len(pods), [p.log.read_text()[-2000:] for p in pods]
    # The install's RBAC was enough: nobody was refused anything.
    assert authority.denied == []
    logs = [p.log.read_text() for p in pods] + [gateway.logs() if gateway else ""]
    assert not any(KEY in text or token in text for text in logs)
