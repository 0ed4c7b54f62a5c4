"""End to end in a real cluster: kind, the image built from the Dockerfile, the Helm chart,
the examples, and queries through ``kubectl port-forward``.

It needs a Docker engine, ``kind`` and ``kubectl``. Where any is missing (as on the CI
machine, which has no Docker engine) every test here is skipped, with the reason stated.
Run it with ``python3 -m pytest tests/e2e -m e2e``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port

IMAGE = "servegate:e2e"
SIM_KEY = "sk-servegate-simulator"


def _why_not() -> str | None:
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        return "no Docker engine is reachable ('docker info' failed)"
    return None


pytestmark = [pytest.mark.e2e]
REASON = _why_not()
if REASON is not None:
    pytestmark.append(pytest.mark.skip(reason=f"kind end-to-end suite: {REASON}"))


def run(*args: str, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), check=True, capture_output=True, text=True, timeout=timeout, **kw
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A kind cluster with the image loaded and the chart installed; yields its kubeconfig."""
    import helm_python

    name = f"servegate-e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    run("docker", "build", "-t", IMAGE, str(REPO), timeout=1800)
    run(
        "kind",
        "create",
        "cluster",
        "--name",
        name,
        "--kubeconfig",
        str(kubeconfig),
        "--wait",
        "180s",
    )
    try:
        run("kind", "load", "docker-image", IMAGE, "--name", name)
        config = helm_python.Config(kubeconfig_path=str(kubeconfig), namespace="servegate-system")
        config.install(
            str(REPO / "helm" / "servegate"),
            "servegate",
            INSTALL_VALUES,
            namespace="servegate-system",
            create_namespace=True,
            wait="watcher",
            timeout=300,
        )
        yield kubeconfig
    finally:
        run("kind", "delete", "cluster", "--name", name)


E2E_IMAGE = {"repository": "servegate", "tag": "e2e", "pullPolicy": "Never"}
#: The chart's values for the e2e install: the image kind loaded, two operator replicas
#: (one works, one stands by), one gateway replica, the default Kubernetes auth (callers
#: query with a ServiceAccount token, as NOTES.txt says).
INSTALL_VALUES: dict[str, Any] = {
    "operator": {"image": E2E_IMAGE, "replicas": 2},
    "gateway": {"image": E2E_IMAGE, "replicas": 1},
}


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    return run("kubectl", "--kubeconfig", str(kubeconfig), *args, input=stdin).stdout


def simulator_manifests() -> list[dict[str, Any]]:
    labels = {"app": "servegate-sim"}
    container = {
        "name": "sim",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "args": ["simulate", "--host", "0.0.0.0", "--allow-external", "--only", "openai"],
        "ports": [{"containerPort": 8901}],
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "servegate-sim", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "servegate-sim", "namespace": "default"},
            "spec": {"selector": labels, "ports": [{"port": 8901, "targetPort": 8901}]},
        },
    ]


def in_cluster(example: str) -> str:
    """An example manifest pointed at the in-cluster simulator instead of 127.0.0.1."""
    text = (REPO / "examples" / f"{example}.yaml").read_text()
    return text.replace("http://127.0.0.1:8901", "http://servegate-sim.default.svc:8901")


def test_helm_install_apply_and_query(cluster: Path) -> None:
    import openai

    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(simulator_manifests()))
    kubectl(cluster, "create", "secret", "generic", "openai", f"--from-literal=api_key={SIM_KEY}")
    kubectl(cluster, "apply", "-f", "-", stdin=in_cluster("embeddings"))
    kubectl(cluster, "apply", "-f", "-", stdin=in_cluster("completions"))
    kubectl(
        cluster, "wait", "--for=condition=Ready", "servingendpoint/embeddings", "--timeout=300s"
    )
    # The gateway checks callers with TokenReview and SubjectAccessReview: a ServiceAccount
    # with a Role that grants `query` on both endpoints, and a token for the audience.
    kubectl(cluster, "create", "serviceaccount", "e2e-client")
    kubectl(
        cluster, "create", "role", "e2e-query", "--verb=query",
        "--resource=servingendpoints.servegate.io",
        "--resource-name=embeddings", "--resource-name=completions",
    )  # fmt: skip
    kubectl(
        cluster, "create", "rolebinding", "e2e-query", "--role=e2e-query",
        "--serviceaccount=default:e2e-client",
    )  # fmt: skip
    token = kubectl(cluster, "create", "token", "e2e-client", "--audience", "servegate").strip()
    listed = json.loads(kubectl(cluster, "get", "servingendpoints", "-o", "json"))
    assert {item["status"]["state"]["ready"] for item in listed["items"]} == {"READY"}

    port = free_port()
    forward = subprocess.Popen(
        [
            "kubectl",
            "--kubeconfig",
            str(cluster),
            "port-forward",
            "svc/servegate-gateway",
            f"{port}:80",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert forward.stdout is not None
        forward.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8080"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/serving-endpoints", api_key=token)
        deadline = time.monotonic() + 120
        while True:
            try:
                emb = client.embeddings.create(model="embeddings", input=["servegate"])
                break
            except openai.APIStatusError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)  # the gateway may still be loading the second endpoint
        assert emb.data[0].embedding
        completion = client.completions.create(model="completions", prompt="Say hi", max_tokens=5)
        assert completion.choices[0].text
    finally:
        forward.terminate()
        forward.wait(timeout=30)


def test_the_standby_operator_takes_over(cluster: Path) -> None:
    """Delete the working operator pod (the peering entry with the highest priority): the
    standby resumes and reconciles the next endpoint to READY."""
    peering = json.loads(kubectl(cluster, "get", "clusterkopfpeering", "servegate", "-o", "json"))
    peers = {pod: info for pod, info in (peering.get("status") or {}).items() if info}
    assert len(peers) == 2, peers
    leader = max(peers, key=lambda pod: peers[pod]["priority"])
    kubectl(cluster, "delete", "pod", leader, "-n", "servegate-system", "--wait=true")
    document = yaml.safe_load(in_cluster("embeddings"))
    document["metadata"]["name"] = "after-takeover"
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump(document))
    kubectl(
        cluster, "wait", "--for=condition=Ready", "servingendpoint/after-takeover",
        "--timeout=300s",
    )  # fmt: skip
