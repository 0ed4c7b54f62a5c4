"""The gateways' Kubernetes identity, as the operator manages it against the emulated API:
each namespace's gateway gets the ServiceAccount ``servegate-gateway`` (owned by the
namespace's endpoints, like the rest of the gateway) and a ClusterRoleBinding to the
reviewer ClusterRole, which the operator recreates when deleted by hand and removes itself
when the namespace's last endpoint goes (a cluster-scoped object has no namespaced owner),
or at start-up when nothing needs it any more."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from servegate_operator import kube, reconcile
from servegate_operator.kube import Kube
from servegate_operator.render.gateway import render_review_binding
from servegate_operator.runtime import RUNTIME
from servegate_operator.settings import GatewayDefaults, OperatorSettings
from tests.k8s.emulator import EmulatedCluster
from tests.operator.test_operator import (
    CLUSTER_ROLE_BINDINGS,
    NS,
    SEP,
    delete,
    endpoint,
    secret,
    wait_for,
)

SERVICE_ACCOUNTS = "v1/serviceaccounts"
DEPLOYMENTS = "apps/v1/deployments"
BINDING = f"servegate-gateway-reviews-{NS}"
KUBERNETES_AUTH = GatewayDefaults(replicas=2, auth_mode="kubernetes", auth_audience="servegate")


@pytest.fixture
def operator(cluster: EmulatedCluster) -> Iterator[Kube]:
    """kopf running our handlers with Kubernetes auth (reconcile every second)."""
    kube = Kube(cluster.api_client())
    RUNTIME.use(kube, OperatorSettings(gateway=KUBERNETES_AUTH, reconcile_interval_s=1))
    args = ["run", "--standalone", "-A", "-m", "servegate_operator.handlers", "--verbose"]
    with KopfRunner(args, timeout=60) as runner:
        yield kube
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None


def delete_binding(k8s: EmulatedCluster, name: str) -> None:
    k8s.api_client().call_api(
        f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}",
        "DELETE",
        auth_settings=["BearerToken"],
        response_types_map={},
    )


def uid(obj: dict[str, Any] | None) -> str | None:
    return None if obj is None else str(obj["metadata"]["uid"])


def owners(obj: dict[str, Any] | None) -> list[str]:
    return sorted(o["name"] for o in ((obj or {}).get("metadata") or {}).get("ownerReferences", []))


def test_the_gateway_identity_follows_the_namespaces_endpoints(
    cluster: EmulatedCluster, operator: Kube
) -> None:
    k8s = cluster
    k8s.create(secret("openai", {"api_key": "sk-x"}))
    k8s.create(endpoint("chat"))

    # Created with the gateway: the binding names the ServiceAccount the pods run as.
    binding = wait_for("the binding", lambda: k8s.get(CLUSTER_ROLE_BINDINGS, None, BINDING))
    assert "namespace" not in binding["metadata"]
    assert "ownerReferences" not in binding["metadata"]
    assert binding["metadata"]["labels"]["servegate.io/gateway-namespace"] == NS
    assert binding["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "servegate-operator"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "servegate-gateway-reviews",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "servegate-gateway", "namespace": NS}
    ]
    account = wait_for(
        "the ServiceAccount", lambda: k8s.get(SERVICE_ACCOUNTS, NS, "servegate-gateway")
    )
    assert owners(account) == ["chat"]
    assert account["automountServiceAccountToken"] is False  # the pod asks for its token
    deployment = wait_for("the gateway", lambda: k8s.get(DEPLOYMENTS, NS, "servegate-gateway"))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "servegate-gateway"
    assert pod["automountServiceAccountToken"] is True
    args = pod["containers"][0]["args"]
    assert args[args.index("--auth") :][:4] == [
        "--auth",
        "kubernetes",
        "--auth-audience",
        "servegate",
    ]
    assert "--insecure-no-auth" not in args

    # Deleted by hand: the next periodic reconcile puts both back.
    delete_binding(k8s, BINDING)
    wait_for(
        "the binding recreated",
        lambda: uid(k8s.get(CLUSTER_ROLE_BINDINGS, None, BINDING)) not in (None, uid(binding)),
    )
    delete(k8s, SERVICE_ACCOUNTS, "servegate-gateway")
    wait_for(
        "the ServiceAccount recreated",
        lambda: uid(k8s.get(SERVICE_ACCOUNTS, NS, "servegate-gateway")) not in (None, uid(account)),
    )

    # A second endpoint shares them; removing the first keeps them for the second.
    k8s.create(endpoint("emb", "embeddings"))
    wait_for(
        "both own the ServiceAccount",
        lambda: owners(k8s.get(SERVICE_ACCOUNTS, NS, "servegate-gateway")) == ["chat", "emb"],
    )
    delete(k8s, SEP, "chat")
    wait_for("chat deleted", lambda: k8s.get(SEP, NS, "chat") is None)
    wait_for(
        "emb alone owns the ServiceAccount",
        lambda: owners(k8s.get(SERVICE_ACCOUNTS, NS, "servegate-gateway")) == ["emb"],
    )
    assert k8s.get(CLUSTER_ROLE_BINDINGS, None, BINDING) is not None

    # The last endpoint goes: the operator deletes the binding, garbage collection the rest.
    delete(k8s, SEP, "emb")
    wait_for("emb deleted", lambda: k8s.get(SEP, NS, "emb") is None)
    wait_for("the binding deleted", lambda: k8s.get(CLUSTER_ROLE_BINDINGS, None, BINDING) is None)
    assert k8s.get(SERVICE_ACCOUNTS, NS, "servegate-gateway") is None
    assert k8s.get(DEPLOYMENTS, NS, "servegate-gateway") is None


def binding_for(namespace: str, gateway: GatewayDefaults = KUBERNETES_AUTH) -> dict[str, Any]:
    binding = render_review_binding(namespace, gateway)
    assert binding is not None
    return binding


def binding_names(k8s: EmulatedCluster) -> set[str]:
    return {b["metadata"]["name"] for b in k8s.list(CLUSTER_ROLE_BINDINGS)}


def test_the_startup_sweep_removes_the_bindings_no_gateway_needs(cluster: EmulatedCluster) -> None:
    k8s = cluster
    k8s.create(endpoint("chat"))  # team-a has an endpoint; "gone" is no namespace any more
    for namespace in (NS, "gone", "team-b"):
        k8s.create(binding_for(namespace))
    stale = binding_for(NS)
    stale["metadata"]["name"] = "servegate-gateway-reviews-old-name"
    k8s.create(stale)
    unrelated = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "someone-elses", "labels": {"servegate.io/gateway-namespace": NS}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"},
        "subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": NS}],
    }
    k8s.create(unrelated)  # the label alone does not make it ours
    kube = Kube(k8s.api_client())
    with_auth = OperatorSettings(gateway=KUBERNETES_AUTH)

    # A namespaced operator touches only its namespaces' bindings.
    deleted = reconcile.sweep_review_bindings(kube, with_auth, (NS, "gone"))
    assert sorted(deleted) == [
        "servegate-gateway-reviews-gone",
        "servegate-gateway-reviews-old-name",
    ]
    assert binding_names(k8s) == {BINDING, "servegate-gateway-reviews-team-b", "someone-elses"}
    # A cluster-wide one sees them all; what a gateway uses stays.
    assert reconcile.sweep_review_bindings(kube, with_auth) == ["servegate-gateway-reviews-team-b"]
    assert reconcile.sweep_review_bindings(kube, with_auth) == []
    # Without Kubernetes auth no gateway uses any.
    assert reconcile.sweep_review_bindings(kube, OperatorSettings()) == [BINDING]
    assert binding_names(k8s) == {"someone-elses"}


class Forbidden(Kube):
    """An operator whose role grants nothing on ClusterRoleBindings."""

    def _call(self, verb: str, resource: kube.Resource, method: str, path: str, **kw: Any) -> Any:
        self.calls.add((resource.group, resource.plural, verb))
        raise ApiException(status=403, reason="Forbidden")


@pytest.mark.parametrize(
    ("auth", "level"), [("file", logging.DEBUG), ("kubernetes", logging.WARNING)]
)
def test_a_refused_sweep_never_stops_the_operator(
    auth: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    """With gateway.auth file the chart grants nothing on ClusterRoleBindings: the sweep's
    403 is expected (debug); with kubernetes it is a misconfiguration (warning)."""
    forbidden = Forbidden(k8s_client.ApiClient())
    settings = OperatorSettings(gateway=GatewayDefaults(auth_mode=auth))
    caplog.set_level(logging.DEBUG, logger=reconcile.__name__)
    reconcile.startup_sweep(forbidden, settings)
    assert forbidden.calls == {("rbac.authorization.k8s.io", "clusterrolebindings", "list")}
    (record,) = [r for r in caplog.records if r.name == reconcile.__name__]
    assert record.levelno == level
    assert "403" in record.getMessage()


class ImmutableRoleRef(Kube):
    """As the API server does: a ClusterRoleBinding's roleRef cannot change (422)."""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "ClusterRoleBinding":
            current = self.get(kube.CLUSTER_ROLE_BINDINGS, None, obj["metadata"]["name"])
            if current is not None and current["roleRef"] != obj["roleRef"]:
                raise ApiException(status=422, reason="Invalid")
        return super().apply(obj)


def test_a_binding_to_another_role_is_replaced(cluster: EmulatedCluster) -> None:
    """Another release's reviewer ClusterRole (say, after a rename): delete and recreate."""
    k8s = cluster
    k8s.create(endpoint("chat"))
    k8s.create(
        binding_for(NS, GatewayDefaults(auth_mode="kubernetes", reviewer_cluster_role="old"))
    )
    kube = ImmutableRoleRef(k8s.api_client())
    reconcile.apply_gateway(kube, NS, OperatorSettings(gateway=KUBERNETES_AUTH))
    binding = k8s.get(CLUSTER_ROLE_BINDINGS, None, BINDING)
    assert binding is not None
    assert binding["roleRef"]["name"] == "servegate-gateway-reviews"
    assert ("rbac.authorization.k8s.io", "clusterrolebindings", "delete") in kube.calls


def test_file_auth_touches_no_identity(cluster: EmulatedCluster) -> None:
    k8s = cluster
    k8s.create(endpoint("chat"))
    kube = Kube(k8s.api_client())
    reconcile.apply_gateway(kube, NS, OperatorSettings())
    assert k8s.get(DEPLOYMENTS, NS, "servegate-gateway") is not None
    assert k8s.get(SERVICE_ACCOUNTS, NS, "servegate-gateway") is None
    assert not [c for c in kube.calls if c[1] in ("serviceaccounts", "clusterrolebindings")]
