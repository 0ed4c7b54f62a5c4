"""The operator, driven by kopf's real machinery, against the in-memory Kubernetes API:
apply, update, a Secret deleted and restored, two endpoints sharing one gateway, deletion
with garbage collection, Events, and RBAC that matches exactly what the code calls (with
the gateways' Kubernetes auth on, as deployed, on with the Kubernetes control plane, and
off)."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import helm_python
import kubernetes.client
import pytest
import yaml
from kopf.testing import KopfRunner

from servegate_operator import reconcile
from servegate_operator.kube import Kube
from servegate_operator.runtime import RUNTIME
from servegate_operator.settings import GatewayDefaults, OperatorSettings, settings_from_env
from tests.conftest import REPO
from tests.k8s.emulator import EmulatedCluster

NS = "team-a"
SEP = "servegate.io/v1alpha1/servingendpoints"
CLUSTER_ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/clusterrolebindings"
ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/rolebindings"
CANARY = "sk-OPERATOR-PLAINTEXT-CANARY"


@pytest.fixture
def operator(cluster: EmulatedCluster) -> Iterator[Kube]:
    """kopf running our handlers (reconcile every second) in a background thread."""
    kube = Kube(cluster.api_client())
    RUNTIME.use(kube, OperatorSettings(gateway=GatewayDefaults(replicas=2), reconcile_interval_s=1))
    args = ["run", "--standalone", "-A", "-m", "servegate_operator.handlers", "--verbose"]
    with KopfRunner(args, timeout=60) as runner:
        yield kube
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20) -> Any:
    """A bounded wait for a condition the operator has to bring about."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def endpoint(name: str, document: str = "chat") -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((REPO / "examples" / f"{document}.yaml").read_text())
    obj["metadata"] = {"name": name, "namespace": NS}
    return obj


def status_of(k8s: EmulatedCluster, name: str) -> dict[str, Any]:
    obj = k8s.get(SEP, NS, name)
    return (obj or {}).get("status") or {}


def condition(k8s: EmulatedCluster, name: str, kind: str) -> dict[str, Any]:
    conditions = status_of(k8s, name).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def roll_out(k8s: EmulatedCluster) -> None:
    """No controllers here: play the Deployment controller and report the rollout done."""
    deployment = k8s.get("apps/v1/deployments", NS, "servegate-gateway")
    assert deployment is not None
    replicas = deployment["spec"].get("replicas", 1)
    status = {
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    }
    apps = kubernetes.client.AppsV1Api(k8s.api_client())
    apps.patch_namespaced_deployment_status("servegate-gateway", NS, {"status": status})


def replace_endpoint(k8s: EmulatedCluster, obj: dict[str, Any]) -> None:
    """PUT ``obj``'s spec, as ``kubectl edit`` does: on a 409 (the operator wrote the status
    since ``obj`` was read), again on the latest version, as the 409 asks."""
    custom = kubernetes.client.CustomObjectsApi(k8s.api_client())
    name = obj["metadata"]["name"]
    for _ in range(5):
        try:
            custom.replace_namespaced_custom_object(
                "servegate.io", "v1alpha1", NS, "servingendpoints", name, obj
            )
            return
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:
                raise
        latest = k8s.get(SEP, NS, name)
        assert latest is not None
        obj = {**latest, "spec": obj["spec"]}
    raise AssertionError(f"{name}: five conflicts in a row")


def delete(k8s: EmulatedCluster, resource: str, name: str) -> None:
    group_version, plural = resource.rsplit("/", 1)
    path = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    k8s.api_client().call_api(
        f"{path}/namespaces/{NS}/{plural}/{name}",
        "DELETE",
        auth_settings=["BearerToken"],
        response_types_map={},
    )


def in_namespace(k8s: EmulatedCluster, resource: str) -> list[dict[str, Any]]:
    return [o for o in k8s.list(resource) if o["metadata"].get("namespace") == NS]


def events_for(k8s: EmulatedCluster, name: str) -> list[dict[str, Any]]:
    events = in_namespace(k8s, "v1/events")
    return [e for e in events if e.get("involvedObject", {}).get("name") == name]


def test_endpoint_lifecycle(cluster: EmulatedCluster, operator: Kube) -> None:
    k8s = cluster
    k8s.create(secret("openai", {"api_key": "sk-x"}))
    k8s.create(secret("local-llm", {"token": "t"}))
    k8s.create(endpoint("chat"))

    # Apply: config, gateway objects and status appear.
    config_map = wait_for(
        "the ConfigMap", lambda: k8s.get("v1/configmaps", NS, "servegate-ep-chat")
    )
    assert "{{secrets/openai/api_key}}" in config_map["data"]["chat.yaml"]
    assert config_map["metadata"]["ownerReferences"][0]["kind"] == "ServingEndpoint"
    wait_for("the Deployment", lambda: k8s.get("apps/v1/deployments", NS, "servegate-gateway"))
    wait_for("the Service", lambda: k8s.get("v1/services", NS, "servegate-gateway"))
    wait_for("status", lambda: condition(k8s, "chat", "ConfigValid").get("status") == "True")
    assert condition(k8s, "chat", "GatewayAvailable")["reason"] == "RollingOut"
    roll_out(k8s)
    wait_for("READY", lambda: status_of(k8s, "chat").get("state", {}).get("ready") == "READY")
    status = status_of(k8s, "chat")
    assert status["url"] == "http://servegate-gateway.team-a.svc/serving-endpoints/chat/invocations"
    assert status["task"] == "llm/v1/chat"
    assert status["entities"] == 2
    assert status["observedGeneration"] == k8s.get(SEP, NS, "chat")["metadata"]["generation"]
    assert {c["type"] for c in status["conditions"]} == {
        "ConfigValid",
        "SecretsResolved",
        "GatewayAvailable",
        "Ready",
    }

    # Update: the config follows the spec; the pod's shape does not change.
    pod_before = k8s.get("apps/v1/deployments", NS, "servegate-gateway")["spec"]["template"]
    updated = k8s.get(SEP, NS, "chat")
    updated["spec"]["config"]["served_entities"][0]["external_model"]["name"] = "gpt-4o"
    replace_endpoint(k8s, updated)
    wait_for(
        "the new config",
        lambda: (
            "name: gpt-4o\n"
            in k8s.get("v1/configmaps", NS, "servegate-ep-chat")["data"]["chat.yaml"]
        ),
    )
    assert k8s.get("apps/v1/deployments", NS, "servegate-gateway")["spec"]["template"] == pod_before

    # A referenced Secret deleted: NOT_READY with the scope and key; restored: READY.
    delete(k8s, "v1/secrets", "openai")
    wait_for(
        "NOT_READY", lambda: status_of(k8s, "chat").get("state", {}).get("ready") == "NOT_READY"
    )
    reason = condition(k8s, "chat", "SecretsResolved")
    assert reason["reason"] == "SecretNotFound"
    assert "scope 'openai' key 'api_key'" in reason["message"]
    wait_for(
        "a warning Event",
        lambda: any(e["reason"] == "SecretsResolvedFalse" for e in events_for(k8s, "chat")),
    )
    k8s.create(secret("openai", {"api_key": "sk-y"}))
    wait_for("READY again", lambda: status_of(k8s, "chat").get("state", {}).get("ready") == "READY")

    # A second endpoint: one shared gateway mounts both configs.
    k8s.create(endpoint("emb", "embeddings"))
    wait_for("emb's ConfigMap", lambda: k8s.get("v1/configmaps", NS, "servegate-ep-emb"))

    def mounted() -> list[str]:
        deployment = k8s.get("apps/v1/deployments", NS, "servegate-gateway")
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        return [s["configMap"]["name"] for s in volumes["endpoints"]["projected"]["sources"]]

    wait_for("both configs mounted", lambda: mounted() == ["servegate-ep-chat", "servegate-ep-emb"])
    assert len(in_namespace(k8s, "apps/v1/deployments")) == 1
    owners = k8s.get("apps/v1/deployments", NS, "servegate-gateway")["metadata"]["ownerReferences"]
    assert sorted(o["name"] for o in owners) == ["chat", "emb"]

    # Delete one endpoint: its config goes, the gateway stays and drops it.
    delete(k8s, SEP, "chat")
    wait_for("chat deleted", lambda: k8s.get(SEP, NS, "chat") is None)
    wait_for(
        "chat's ConfigMap collected",
        lambda: k8s.get("v1/configmaps", NS, "servegate-ep-chat") is None,
    )
    wait_for("the gateway drops chat", lambda: mounted() == ["servegate-ep-emb"])

    # Delete the last one: garbage collection removes the gateway.
    delete(k8s, SEP, "emb")
    wait_for(
        "the gateway collected",
        lambda: k8s.get("apps/v1/deployments", NS, "servegate-gateway") is None,
    )
    assert k8s.get("v1/services", NS, "servegate-gateway") is None


def test_invalid_spec_and_plaintext(cluster: EmulatedCluster, operator: Kube) -> None:
    k8s = cluster
    plain = endpoint("plain", "embeddings")
    config = plain["spec"]["config"]["served_entities"][0]["external_model"]["openai_config"]
    del config["openai_api_key"]
    config["openai_api_key_plaintext"] = CANARY
    k8s.create(plain)
    secret_obj = wait_for(
        "the owned Secret", lambda: k8s.get("v1/secrets", NS, "servegate-ep-plain-plaintext")
    )
    assert secret_obj["metadata"]["ownerReferences"][0]["name"] == "plain"
    config_map = wait_for(
        "the ConfigMap", lambda: k8s.get("v1/configmaps", NS, "servegate-ep-plain")
    )
    assert CANARY not in yaml.safe_dump(config_map)
    assert "{{secrets/servegate-ep-plain-plaintext/" in config_map["data"]["plain.yaml"]
    wait_for(
        "the plaintext warning",
        lambda: any(e["reason"] == "PlaintextCredential" for e in events_for(k8s, "plain")),
    )

    # An invalid edit: ConfigValid False with the field path; the last good config stays.
    broken = k8s.get(SEP, NS, "plain")
    broken["spec"]["config"]["served_entities"][0]["external_model"]["task"] = "llm/v1/chatty"
    replace_endpoint(k8s, broken)
    wait_for(
        "ConfigValid False", lambda: condition(k8s, "plain", "ConfigValid").get("status") == "False"
    )
    message = condition(k8s, "plain", "ConfigValid")["message"]
    assert "spec.config.served_entities[0].external_model.task" in message
    assert status_of(k8s, "plain")["state"]["config_update"] == "UPDATE_FAILED"
    kept = k8s.get("v1/configmaps", NS, "servegate-ep-plain")["data"]["plain.yaml"]
    assert "task: llm/v1/embeddings" in kept  # the gateway keeps serving the last good config
    # The plaintext lives only in the user's own object and the owned Secret.
    outputs = [in_namespace(k8s, r) for r in ("v1/configmaps", "v1/events", "apps/v1/deployments")]
    outputs.append([status_of(k8s, "plain")])
    assert CANARY not in yaml.safe_dump(outputs)


RBAC_GROUP = "rbac.authorization.k8s.io"


def deployed_documents(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The operator's install: deploy/operator/ (the chart's defaults), or the chart
    rendered with ``values``."""
    if values is None:
        texts = [p.read_text() for p in sorted((REPO / "deploy" / "operator").glob("*.yaml"))]
    else:
        with helm_python.Chart.load(REPO / "helm" / "servegate") as chart:
            rendered = chart.render(values, name="servegate", namespace="servegate-system")
        texts = [text for path, text in sorted(rendered.items()) if not path.endswith("NOTES.txt")]
    return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]


def named(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found[0] if found else None


def deployed_settings(documents: list[dict[str, Any]]) -> OperatorSettings:
    """What the operator's own code reads from the environment its Deployment sets."""
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return dataclasses.replace(settings_from_env(env), reconcile_interval_s=1)


def expanded(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the rules grant (resourceNames are checked apart)."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# The chart values of each mode the RBAC test runs (None: deploy/, the chart's defaults).
RBAC_MODES: dict[str, dict[str, Any] | None] = {
    "kubernetes": None,
    "control-plane": {"gateway": {"controlPlane": True}},
    "file": {"gateway": {"auth": "file"}},
}


@pytest.mark.parametrize("mode", RBAC_MODES)
def test_rbac_grants_exactly_what_the_operator_calls(
    cluster: EmulatedCluster, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run the operator as deployed (every namespace, with peering; gateway.auth
    kubernetes as deploy/ has it, with gateway.controlPlane, or file as the chart renders
    it), exercise every code path that talks to the API, and compare the calls with its
    ClusterRole."""
    k8s = cluster
    documents = deployed_documents(RBAC_MODES[mode])
    settings = deployed_settings(documents)
    auth = "file" if mode == "file" else "kubernetes"
    control_plane = mode == "control-plane"
    assert settings.gateway.auth_mode == auth
    assert settings.gateway.control_plane == ("kubernetes" if control_plane else None)
    # No peering object: the operator applies it at start (deploy/ does not carry it).
    kube = Kube(k8s.api_client())
    RUNTIME.use(kube, settings)
    monkeypatch.setattr(RUNTIME, "peering", "servegate")
    binding = f"servegate-gateway-reviews-{NS}"
    role_binding = "servegate-gateway-control-plane"
    args = ["run", "-A", "--peering", "servegate", "-m", "servegate_operator.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        k8s.create(secret("openai", {"api_key": "sk-x"}))
        plain = endpoint("plain", "embeddings")
        config = plain["spec"]["config"]["served_entities"][0]["external_model"]["openai_config"]
        config["openai_api_key_plaintext"] = config.pop("openai_api_key").replace("{{", "x")
        k8s.create(plain)
        k8s.create(endpoint("emb", "embeddings"))
        wait_for(
            "both reconciled", lambda: all(status_of(k8s, n).get("state") for n in ("plain", "emb"))
        )
        broken = k8s.get(SEP, NS, "emb")
        broken["spec"]["config"]["served_entities"][0]["external_model"]["task"] = "llm/v1/nope"
        replace_endpoint(k8s, broken)
        wait_for(
            "ConfigValid False",
            lambda: condition(k8s, "emb", "ConfigValid").get("status") == "False",
        )
        delete(k8s, SEP, "plain")
        wait_for("plain deleted", lambda: k8s.get(SEP, NS, "plain") is None)
        # The other branches of the optional objects (PDB and HPA on or off), same code path.
        for gateway in (
            dataclasses.replace(settings.gateway, replicas=1),
            dataclasses.replace(settings.gateway, replicas=1, hpa_max_replicas=3),
        ):
            reconcile.apply_gateway(kube, NS, dataclasses.replace(settings, gateway=gateway))
        if auth == "kubernetes":
            assert k8s.get(CLUSTER_ROLE_BINDINGS, None, binding) is not None
        assert (k8s.get(ROLE_BINDINGS, NS, role_binding) is not None) == control_plane
        # The last endpoint goes: with Kubernetes auth, its binding goes too.
        delete(k8s, SEP, "emb")
        wait_for("emb deleted", lambda: k8s.get(SEP, NS, "emb") is None)
        assert k8s.get(CLUSTER_ROLE_BINDINGS, None, binding) is None
        assert k8s.get(ROLE_BINDINGS, NS, role_binding) is None  # garbage-collected
    assert runner.exit_code == 0, runner.output
    assert k8s.get("kopf.dev/v1/clusterkopfpeerings", None, "servegate") is not None
    called = set(kube.calls) | k8s.rbac_calls(user_agent="kopf")
    role = named(documents, "ClusterRole", "servegate-operator")
    assert role is not None
    granted = expanded(role["rules"])
    # `bind` is no call: Kubernetes checks it when the operator writes a binding to the
    # reviewer or control-plane ClusterRole (it does not hold their permissions itself).
    writes_bindings = {
        (RBAC_GROUP, "clusterrolebindings", "create"),
        (RBAC_GROUP, "rolebindings", "create"),
    }
    implied = {(RBAC_GROUP, "clusterroles", "bind")} if called & writes_bindings else set()
    # Without Kubernetes auth, the start-up sweep of review bindings still tries to list
    # them (to clean up after a switch from kubernetes), expecting a 403 under this role.
    best_effort = {(RBAC_GROUP, "clusterrolebindings", "list")} if auth == "file" else set()
    assert best_effort <= called
    assert (called - best_effort) | implied == granted
    reviewer = named(documents, "ClusterRole", settings.gateway.reviewer_cluster_role)
    writer = named(documents, "ClusterRole", settings.gateway.control_plane_cluster_role)
    # The operator may bind the chart's gateway roles, each by name, and nothing else.
    bindable = {
        name
        for rule in role["rules"]
        if "bind" in rule["verbs"]
        for name in rule.get("resourceNames", ["<every role>"])
    }
    if auth == "kubernetes":
        assert reviewer is not None
        assert expanded(reviewer["rules"]) == {
            ("authentication.k8s.io", "tokenreviews", "create"),
            ("authorization.k8s.io", "subjectaccessreviews", "create"),
        }
        assert bindable == {settings.gateway.reviewer_cluster_role} | (
            {settings.gateway.control_plane_cluster_role} if control_plane else set()
        )
    else:
        assert reviewer is None
        assert not [t for t in granted if t[0] == RBAC_GROUP or t[1] == "serviceaccounts"]
    if control_plane:
        assert writer is not None
        (patch,) = [
            r for r in role["rules"] if r["resources"] == ["rolebindings"] and "patch" in r["verbs"]
        ]
        assert patch["resourceNames"] == [role_binding]
    else:
        assert writer is None
        assert not [t for t in granted if t[1] == "rolebindings"]
