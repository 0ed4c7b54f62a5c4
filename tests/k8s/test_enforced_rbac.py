"""RBAC enforced on every request (``ReviewAuthority.enforce``), as kube-apiserver does it,
through the real ``kubernetes`` client: what the tests that run the operator under its own
Role rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.k8s.emulator import EmulatedCluster
from tests.k8s.reviews import Attributes, ReviewAuthority, service_account

pytestmark = pytest.mark.timeout(30)

RBAC = "rbac.authorization.k8s.io/v1"


def configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}


def client_for(kubeconfig: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


@pytest.fixture
def authority(k8s: EmulatedCluster) -> ReviewAuthority:
    k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    k8s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-b"}})
    authority = ReviewAuthority(k8s)
    authority.enforce()
    return authority


def test_a_service_account_gets_what_its_role_grants_and_403_for_the_rest(
    k8s: EmulatedCluster, authority: ReviewAuthority, tmp_path: Path
) -> None:
    robot = service_account("team-a", "robot")
    subject = {"kind": "ServiceAccount", "name": "robot", "namespace": "team-a"}
    authority.grant(
        "configmaps",
        [subject],
        verbs=["get", "create"],
        resources=["configmaps"],
        api_groups=[""],
        namespace="team-a",
    )
    authority.grant(
        "one-secret",
        [subject],
        verbs=["get", "patch"],
        resources=["secrets"],
        api_groups=[""],
        namespace="team-a",
        resource_names=["mine"],
    )
    core = kubernetes.client.CoreV1Api(client_for(authority.kubeconfig(robot, tmp_path / "kc")))
    core.create_namespaced_config_map("team-a", configmap("ok"))
    assert core.read_namespaced_config_map("ok", "team-a").metadata.name == "ok"

    def refused(call: Any, *args: Any) -> tuple[int, str]:
        """The status and the Status message of a refused call."""
        with pytest.raises(ApiException) as caught:
            call(*args)
        return caught.value.status, json.loads(caught.value.body)["message"]

    # Another namespace, another verb, a cluster-wide list: 403, worded as kube-apiserver.
    status, message = refused(core.create_namespaced_config_map, "team-b", configmap("no"))
    assert status == 403
    assert message == (
        'configmaps is forbidden: User "system:serviceaccount:team-a:robot" cannot create '
        'resource "configmaps" in API group "" in the namespace "team-b"'
    )
    assert refused(core.delete_namespaced_config_map, "ok", "team-a")[0] == 403
    status, message = refused(core.list_config_map_for_all_namespaces)
    assert status == 403 and message.endswith("at the cluster scope")
    # resourceNames: that one Secret only, and never a create.
    k8s.create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine", "namespace": "team-a"}}
    )
    k8s.create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": "team-a"}}
    )
    core.read_namespaced_secret("mine", "team-a")
    core.patch_namespaced_secret("mine", "team-a", {"metadata": {"labels": {"x": "y"}}})
    status, message = refused(core.read_namespaced_secret, "other", "team-a")
    assert status == 403 and message.startswith('secrets "other" is forbidden')
    assert refused(core.list_namespaced_secret, "team-a")[0] == 403
    denied = {(a.verb, a.resource, a.namespace, a.name) for _, a in authority.denied}
    assert denied == {
        ("create", "configmaps", "team-b", ""),
        ("delete", "configmaps", "team-a", "ok"),
        ("list", "configmaps", "", ""),
        ("get", "secrets", "team-a", "other"),
        ("list", "secrets", "team-a", ""),
    }
    # The admin token still does anything; an unknown token is 401.
    assert k8s.get("v1/configmaps", "team-b", "no") is None
    config = k8s.kubeconfig_dict()
    config["users"][0]["user"]["token"] = "forged"
    forged = tmp_path / "forged"
    forged.write_text(yaml.safe_dump(config))
    anonymous = kubernetes.client.CoreV1Api(client_for(forged))
    assert refused(anonymous.read_namespaced_config_map, "ok", "team-a")[0] == 401


def test_writing_a_binding_needs_bind_on_its_role(
    k8s: EmulatedCluster, authority: ReviewAuthority, tmp_path: Path
) -> None:
    robot = service_account("team-a", "robot")
    subject = {"kind": "ServiceAccount", "name": "robot", "namespace": "team-a"}
    authority.grant(
        "bindings",
        [subject],
        verbs=["create", "patch"],
        resources=["clusterrolebindings"],
        api_groups=["rbac.authorization.k8s.io"],
        namespace=None,
    )
    for role in ("allowed", "secret-reader"):
        k8s.create(
            {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": role}, "rules": []}
        )
    rbac = kubernetes.client.RbacAuthorizationV1Api(
        client_for(authority.kubeconfig(robot, tmp_path / "kc"))
    )

    def binding(name: str, role: str) -> dict[str, Any]:
        return {
            "apiVersion": RBAC,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [subject],
        }

    with pytest.raises(ApiException) as caught:
        rbac.create_cluster_role_binding(binding("b1", "allowed"))
    assert caught.value.status == 403
    assert 'has no "bind" on ClusterRole "allowed"' in json.loads(caught.value.body)["message"]
    authority.grant(
        "bind-allowed",
        [subject],
        verbs=["bind"],
        resources=["clusterroles"],
        api_groups=["rbac.authorization.k8s.io"],
        namespace=None,
        resource_names=["allowed"],
    )
    rbac.create_cluster_role_binding(binding("b1", "allowed"))
    rbac.patch_cluster_role_binding("b1", {"metadata": {"labels": {"x": "y"}}})
    with pytest.raises(ApiException) as caught:
        rbac.create_cluster_role_binding(binding("b2", "secret-reader"))
    assert caught.value.status == 403
    assert Attributes("bind", "rbac.authorization.k8s.io", "clusterroles", "", "secret-reader") in [
        a for _, a in authority.denied
    ]


def test_an_apply_that_creates_is_also_a_create(
    k8s: EmulatedCluster, authority: ReviewAuthority, tmp_path: Path
) -> None:
    """Server-side apply is a ``patch``, and a ``create`` as well when the object is new."""
    robot = service_account("team-a", "robot")
    subject = {"kind": "ServiceAccount", "name": "robot", "namespace": "team-a"}
    authority.grant(
        "patch-only",
        [subject],
        verbs=["patch"],
        resources=["configmaps"],
        api_groups=[""],
        namespace="team-a",
    )
    client = client_for(authority.kubeconfig(robot, tmp_path / "kc"))

    def apply(name: str) -> int:
        try:
            client.call_api(
                f"/api/v1/namespaces/team-a/configmaps/{name}",
                "PATCH",
                query_params=[("fieldManager", "robot")],
                header_params={"Content-Type": "application/apply-patch+yaml"},
                body={**configmap(name), "data": {"k": "v"}},
                auth_settings=["BearerToken"],
                _preload_content=False,
            )
        except ApiException as exc:
            return exc.status
        return 200

    assert apply("new") == 403
    assert authority.denied[-1][1] == Attributes("create", "", "configmaps", "team-a", "")
    k8s.create({**configmap("existing"), "metadata": {"name": "existing", "namespace": "team-a"}})
    assert apply("existing") == 200
    assert k8s.get("v1/configmaps", "team-a", "existing")["data"] == {"k": "v"}
