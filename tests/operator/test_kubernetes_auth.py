"""The gateways' Kubernetes identity, as the operator manages it against the emulated API:
each namespace's gateway gets the ServiceAccount ``servegate-gateway`` (owned by the
namespace's endpoints, like the rest of the gateway) and a ClusterRoleBinding to the
reviewer ClusterRole, which the operator recreates when deleted by hand and removes itself
when the namespace's last endpoint goes (a cluster-scoped object has no namespaced owner),
or at start-up when nothing needs it any more. With the Kubernetes control plane it also
gets a RoleBinding to the control-plane ClusterRole, owned like the ServiceAccount."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from servegate_operator import kube, reconcile
from servegate_operator.kube import Kube
from servegate_operator.render.gateway import render_control_plane_binding, render_review_binding
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
ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/rolebindings"
BINDING = f"servegate-gateway-reviews-{NS}"
CONTROL_PLANE_BINDING = "servegate-gateway-control-plane"
KUBERNETES_AUTH = GatewayDefaults(replicas=2, auth_mode="kubernetes", auth_audience="servegate")
CONTROL_PLANE = dataclasses.replace(KUBERNETES_AUTH, control_plane="kubernetes")


def running_operator(cluster: EmulatedCluster, gateway: GatewayDefaults) -> Iterator[Kube]:
    """kopf running our handlers with these gateway settings (reconcile every second)."""
    kube = Kube(cluster.api_client())
    RUNTIME.use(kube, OperatorSettings(gateway=gateway, reconcile_interval_s=1))
    args = ["run", "--standalone", "-A", "-m", "servegate_operator.handlers", "--verbose"]
    with KopfRunner(args, timeout=60) as runner:
        yield kube
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None


@pytest.fixture
def operator(cluster: EmulatedCluster) -> Iterator[Kube]:
    """The operator with Kubernetes auth."""
    yield from running_operator(cluster, KUBERNETES_AUTH)


@pytest.fixture
def control_plane_operator(cluster: EmulatedCluster) -> Iterator[Kube]:
    """The operator with Kubernetes auth and the Kubernetes control plane."""
    yield from running_operator(cluster, CONTROL_PLANE)


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


def test_the_control_plane_binding_follows_the_namespaces_endpoints(
    cluster: EmulatedCluster, control_plane_operator: Kube
) -> None:
    k8s = cluster
    k8s.create(secret("openai", {"api_key": "sk-x"}))
    k8s.create(endpoint("chat"))

    # Created with the gateway, owned like its ServiceAccount, in the namespace only.
    binding = wait_for("the RoleBinding", lambda: k8s.get(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING))
    assert owners(binding) == ["chat"]
    assert not any(o.get("controller") for o in binding["metadata"]["ownerReferences"])
    assert binding["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "servegate-operator"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "servegate-gateway-control-plane",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "servegate-gateway", "namespace": NS}
    ]
    deployment = wait_for("the gateway", lambda: k8s.get(DEPLOYMENTS, NS, "servegate-gateway"))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "servegate-gateway"
    args = pod["containers"][0]["args"]
    assert args[args.index("--control-plane") :][:2] == ["--control-plane", "kubernetes"]
    # The review binding is still there: both are needed.
    assert k8s.get(CLUSTER_ROLE_BINDINGS, None, BINDING) is not None

    # Deleted by hand: the next periodic reconcile puts it back.
    delete(k8s, ROLE_BINDINGS, CONTROL_PLANE_BINDING)
    wait_for(
        "the RoleBinding recreated",
        lambda: uid(k8s.get(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING)) not in (None, uid(binding)),
    )
    assert owners(k8s.get(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING)) == ["chat"]

    # A second endpoint shares it; removing the first keeps it for the second.
    k8s.create(endpoint("emb", "embeddings"))
    wait_for(
        "both own the RoleBinding",
        lambda: owners(k8s.get(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING)) == ["chat", "emb"],
    )
    delete(k8s, SEP, "chat")
    wait_for("chat deleted", lambda: k8s.get(SEP, NS, "chat") is None)
    wait_for(
        "emb alone owns the RoleBinding",
        lambda: owners(k8s.get(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING)) == ["emb"],
    )

    # The last endpoint goes: garbage collection takes the RoleBinding with the gateway.
    delete(k8s, SEP, "emb")
    wait_for("emb deleted", lambda: k8s.get(SEP, NS, "emb") is None)
    wait_for(
        "the RoleBinding collected",
        lambda: k8s.get(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING) is None,
    )
    assert k8s.get(DEPLOYMENTS, NS, "servegate-gateway") is None
    wait_for(
        "the review binding deleted", lambda: k8s.get(CLUSTER_ROLE_BINDINGS, None, BINDING) is None
    )
    assert not [b for b in k8s.list(ROLE_BINDINGS) if b["metadata"]["namespace"] == NS]


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
    """As the API server does: a (Cluster)RoleBinding's roleRef cannot change (422)."""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            resource = kube.BY_KIND[obj["kind"]]
            meta = obj["metadata"]
            current = self.get(resource, meta.get("namespace"), meta["name"])
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


def test_a_control_plane_binding_to_another_role_is_reported_not_replaced(
    cluster: EmulatedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator may not delete RoleBindings: a binding left to another ClusterRole
    (another release's) is an administrator's to delete; the rest of the gateway goes on."""
    k8s = cluster
    k8s.create(endpoint("chat"))
    old = render_control_plane_binding(
        NS, dataclasses.replace(CONTROL_PLANE, control_plane_cluster_role="old")
    )
    assert old is not None
    k8s.create(old)
    kube = ImmutableRoleRef(k8s.api_client())
    caplog.set_level(logging.ERROR, logger=reconcile.__name__)
    deployment = reconcile.apply_gateway(kube, NS, OperatorSettings(gateway=CONTROL_PLANE))
    assert deployment is not None and deployment["metadata"]["name"] == "servegate-gateway"
    binding = k8s.get(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING)
    assert binding is not None and binding["roleRef"]["name"] == "old"
    assert ("rbac.authorization.k8s.io", "rolebindings", "delete") not in kube.calls
    (record,) = [r for r in caplog.records if r.name == reconcile.__name__]
    assert f"kubectl delete rolebinding {CONTROL_PLANE_BINDING} -n {NS}" in record.getMessage()
    # Deleted by hand: the next reconcile binds the right role.
    delete(k8s, ROLE_BINDINGS, CONTROL_PLANE_BINDING)
    reconcile.apply_gateway(kube, NS, OperatorSettings(gateway=CONTROL_PLANE))
    binding = k8s.get(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING)
    assert binding is not None
    assert binding["roleRef"]["name"] == "servegate-gateway-control-plane"


@pytest.mark.parametrize(
    "gateway", [GatewayDefaults(), KUBERNETES_AUTH], ids=["file", "kubernetes"]
)
def test_without_the_control_plane_no_role_binding(
    cluster: EmulatedCluster, gateway: GatewayDefaults
) -> None:
    k8s = cluster
    k8s.create(endpoint("chat"))
    kube = Kube(k8s.api_client())
    reconcile.apply_gateway(kube, NS, OperatorSettings(gateway=gateway))
    assert k8s.get(DEPLOYMENTS, NS, "servegate-gateway") is not None
    assert k8s.get(ROLE_BINDINGS, NS, CONTROL_PLANE_BINDING) is None
    assert not [c for c in kube.calls if c[1] in ("rolebindings", "clusterroles")]


def test_file_auth_touches_no_identity(cluster: EmulatedCluster) -> None:
    k8s = cluster
    k8s.create(endpoint("chat"))
    kube = Kube(k8s.api_client())
    reconcile.apply_gateway(kube, NS, OperatorSettings())
    assert k8s.get(DEPLOYMENTS, NS, "servegate-gateway") is not None
    assert k8s.get(SERVICE_ACCOUNTS, NS, "servegate-gateway") is None
    assert not [
        c for c in kube.calls if c[1] in ("serviceaccounts", "clusterrolebindings", "rolebindings")
    ]
