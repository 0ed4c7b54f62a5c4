"""The operator's renderers as pure functions: spec in, objects out, each object valid
against Kubernetes' own schemas, and the rendered config exactly what the gateway loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from servegate import cli as gateway_cli
from servegate.spec import ServingEndpointManifest, load_manifests
from servegate_operator.naming import review_binding_name, secret_name_for_scope
from servegate_operator.render.config import render_endpoint
from servegate_operator.render.gateway import (
    render_control_plane_binding,
    render_deployment,
    render_hpa,
    render_pdb,
    render_review_binding,
    render_service,
    render_service_account,
)
from servegate_operator.settings import GatewayDefaults, settings_from_env
from tests.conftest import REPO

K8S_VERSION = "1.30"
CANARY = "sk-OPERATOR-CANARY-55aa"


def example(name: str) -> ServingEndpointManifest:
    return ServingEndpointManifest.model_validate(
        yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())
    )


def plaintext_manifest() -> ServingEndpointManifest:
    return ServingEndpointManifest.model_validate(
        {
            "apiVersion": "servegate.io/v1alpha1",
            "kind": "ServingEndpoint",
            "metadata": {"name": "plain"},
            "spec": {
                "config": {
                    "served_entities": [
                        {
                            "name": "gpt",
                            "external_model": {
                                "name": "gpt-4o",
                                "provider": "openai",
                                "task": "llm/v1/chat",
                                "openai_config": {"openai_api_key_plaintext": CANARY},
                            },
                        },
                        {
                            "name": "local",
                            "external_model": {
                                "name": "llama",
                                "provider": "custom",
                                "task": "llm/v1/chat",
                                "custom_provider_config": {
                                    "custom_provider_url": "http://vllm:8000/v1",
                                    "api_key_auth": {
                                        "key": "X-Key",
                                        "value": "{{secrets/Team_A/vllm}}",
                                    },
                                },
                            },
                        },
                    ],
                    "traffic_config": {
                        "routes": [
                            {"served_model_name": "gpt", "traffic_percentage": 50},
                            {"served_model_name": "local", "traffic_percentage": 50},
                        ]
                    },
                }
            },
        }
    )


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_config_map_holds_exactly_what_servegate_serve_loads(tmp_path: Path) -> None:
    manifest = example("chat")
    rendered = render_endpoint("chat", "team-a", manifest.spec)
    validate(rendered.config_map)
    assert rendered.config_map["metadata"]["name"] == "servegate-ep-chat"
    assert rendered.plaintext_secret is None
    ((key, text),) = rendered.config_map["data"].items()
    (tmp_path / key).write_text(text)
    loaded = load_manifests([tmp_path])
    assert not loaded.errors
    assert loaded.endpoints[0].manifest.spec == manifest.spec
    assert [str(r) for r in rendered.refs] == [
        "{{secrets/openai/api_key}}",
        "{{secrets/local-llm/token}}",
    ]


def test_plaintext_moves_into_an_owned_secret_and_only_a_reference_remains(tmp_path: Path) -> None:
    rendered = render_endpoint("plain", "team-a", plaintext_manifest().spec)
    config_text = yaml.safe_dump(rendered.config_map)
    assert CANARY not in config_text
    assert "_plaintext" not in config_text
    assert rendered.plaintext_secret is not None
    validate(rendered.plaintext_secret)
    assert rendered.plaintext_secret["metadata"]["name"] == "servegate-ep-plain-plaintext"
    assert rendered.plaintext_secret["stringData"] == {"gpt.openai_api_key": CANARY}
    assert "{{secrets/servegate-ep-plain-plaintext/gpt.openai_api_key}}" in config_text
    assert rendered.moved_plaintext == ("gpt.openai_api_key",)
    (tmp_path / "plain.yaml").write_text(next(iter(rendered.config_map["data"].values())))
    assert not load_manifests([tmp_path]).errors


@pytest.mark.parametrize(
    ("scope", "secret"),
    [("openai", "openai"), ("my_scope", "my-scope"), ("Team_A", "team-a"), ("a.b", "a.b")],
)
def test_scope_to_secret_name_rule(scope: str, secret: str) -> None:
    assert secret_name_for_scope(scope) == secret


def test_a_scope_that_cannot_be_a_secret_name_is_refused() -> None:
    with pytest.raises(ValueError, match="does not map to a valid Secret name"):
        secret_name_for_scope("-bad-")


def test_deployment_mounts_only_the_referenced_keys() -> None:
    chat = render_endpoint("chat", "team-a", example("chat").spec)
    plain = render_endpoint("plain", "team-a", plaintext_manifest().spec)
    deployment = render_deployment("team-a", [plain, chat], GatewayDefaults(image="servegate:test"))
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert [s["configMap"]["name"] for s in volumes["endpoints"]["projected"]["sources"]] == [
        "servegate-ep-chat",
        "servegate-ep-plain",
    ]
    assert volumes["secrets"]["projected"]["sources"] == [
        {
            "secret": {
                "name": "local-llm",
                "optional": True,
                "items": [{"key": "token", "path": "local-llm/token"}],
            }
        },
        {
            "secret": {
                "name": "openai",
                "optional": True,
                "items": [{"key": "api_key", "path": "openai/api_key"}],
            }
        },
        {
            "secret": {
                "name": "servegate-ep-plain-plaintext",
                "optional": True,
                "items": [
                    {
                        "key": "gpt.openai_api_key",
                        "path": "servegate-ep-plain-plaintext/gpt.openai_api_key",
                    }
                ],
            }
        },
        {
            "secret": {
                "name": "team-a",
                "optional": True,
                "items": [{"key": "vllm", "path": "Team_A/vllm"}],
            }
        },
    ]
    container = pod["containers"][0]
    assert container["args"][:4] == [
        "serve",
        "/etc/servegate/endpoints",
        "--secrets-dir",
        "/etc/servegate/secrets",
    ]
    assert "--insecure-no-auth" in container["args"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "lifecycle" not in container  # the gateway drains itself on SIGTERM
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 40
    assert CANARY not in yaml.safe_dump(deployment)


def test_content_changes_do_not_change_the_pod_shape() -> None:
    """Only which endpoints and secret keys exist shapes the pod; content reloads live."""
    before = render_endpoint("chat", "ns", example("chat").spec)
    changed_spec = example("chat").spec.model_copy(deep=True)
    changed_spec.config.served_entities[0].external_model.name = "gpt-4o"  # type: ignore[union-attr]
    after = render_endpoint("chat", "ns", changed_spec)
    assert before.config_map != after.config_map
    defaults = GatewayDefaults()
    assert render_deployment("ns", [before], defaults) == render_deployment("ns", [after], defaults)


def test_service_pdb_hpa_and_auth_secret() -> None:
    defaults = GatewayDefaults(
        replicas=2,
        hpa_max_replicas=6,
        auth_secret="gateway-auth",
        service_annotations={"a": "b"},
        redis_url="redis://redis.shared:6379",
        workers=2,
        security_context={"runAsUser": 20002},
        pod_security_context={"fsGroup": 20002},
    )
    chat = render_endpoint("chat", "ns", example("chat").spec)
    deployment = render_deployment("ns", [chat], defaults)
    validate(deployment)
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--auth-file", "/etc/servegate/auth/auth.yaml"]
    assert {"name": "SERVEGATE_REDIS_URL", "value": "redis://redis.shared:6379"} in container["env"]
    assert container["args"][container["args"].index("--workers") + 1] == "2"
    assert container["securityContext"]["runAsUser"] == 20002
    assert container["securityContext"]["readOnlyRootFilesystem"] is True  # defaults kept
    assert deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 20002
    for obj in (
        render_service("ns", defaults),
        render_pdb("ns", defaults),
        render_hpa("ns", defaults),
    ):
        assert obj is not None
        validate(obj)
    single = GatewayDefaults(replicas=1)
    assert render_pdb("ns", single) is None
    assert render_hpa("ns", single) is None


def test_kubernetes_auth_runs_the_gateway_as_its_own_service_account() -> None:
    chat = render_endpoint("chat", "team-a", example("chat").spec)
    gateway = GatewayDefaults(
        auth_mode="kubernetes", auth_audience="llm.example.com", reviewer_cluster_role="rel-reviews"
    )
    deployment = render_deployment("team-a", [chat], gateway)
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "servegate-gateway"
    assert pod["automountServiceAccountToken"] is True  # the reviews need the pod's token
    args = pod["containers"][0]["args"]
    auth = args.index("--auth")
    assert args[auth : auth + 4] == ["--auth", "kubernetes", "--auth-audience", "llm.example.com"]
    assert "--insecure-no-auth" not in args and "--auth-file" not in args
    assert "--auth-namespace" not in args  # the pod's own namespace, from its token mount

    account = render_service_account("team-a", gateway)
    assert account is not None
    validate(account)
    assert account["metadata"] == deployment["metadata"]  # name, namespace, labels
    assert account["automountServiceAccountToken"] is False  # only where a pod asks

    binding = render_review_binding("team-a", gateway)
    assert binding is not None
    validate(binding)
    assert binding["metadata"]["name"] == "servegate-gateway-reviews-team-a"
    assert "namespace" not in binding["metadata"]  # cluster-scoped, so no owners either
    assert binding["metadata"]["labels"]["servegate.io/gateway-namespace"] == "team-a"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "rel-reviews",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "team-a"}
    ]

    # Static tokens still work beside Kubernetes identities.
    both = render_deployment(
        "team-a", [chat], GatewayDefaults(auth_mode="kubernetes", auth_secret="a")
    )
    args = both["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"kubernetes", "--auth-file"} <= set(args)


def test_the_kubernetes_control_plane_adds_its_flag_and_a_namespaced_binding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chat = render_endpoint("chat", "team-a", example("chat").spec)
    gateway = GatewayDefaults(
        auth_mode="kubernetes",
        control_plane="kubernetes",
        control_plane_cluster_role="rel-gateway-control-plane",
    )
    deployment = render_deployment("team-a", [chat], gateway)
    validate(deployment)
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    auth = args.index("--auth")
    assert args[auth:] == [
        "--auth",
        "kubernetes",
        "--auth-audience",
        "servegate",
        "--control-plane",
        "kubernetes",
    ]
    # The gateway's own CLI takes them (its namespace: the pod's, from the token mount).
    for name in ("SERVEGATE_CONTROL_PLANE", "SERVEGATE_AUTH", "SERVEGATE_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    parsed = gateway_cli.build_parser().parse_args(args)
    assert (parsed.auth, parsed.control_plane, parsed.state_dir) == (
        "kubernetes",
        "kubernetes",
        None,
    )

    binding = render_control_plane_binding("team-a", gateway)
    assert binding is not None
    validate(binding)
    assert binding["kind"] == "RoleBinding"  # namespaced: the grant stops at team-a
    assert binding["metadata"]["name"] == "servegate-gateway-control-plane"
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["metadata"]["labels"] == deployment["metadata"]["labels"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "rel-gateway-control-plane",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "team-a"}
    ]
    # Off (the default), or without Kubernetes auth: neither.
    for off in (GatewayDefaults(auth_mode="kubernetes"), GatewayDefaults()):
        off_args = render_deployment("team-a", [chat], off)["spec"]["template"]["spec"][
            "containers"
        ][0]["args"]
        assert "--control-plane" not in off_args
        assert render_control_plane_binding("team-a", off) is None
    with pytest.raises(ValueError, match="needs auth_mode 'kubernetes'"):
        GatewayDefaults(control_plane="kubernetes")


def test_file_auth_renders_no_identity() -> None:
    gateway = GatewayDefaults()
    assert gateway.auth_mode == "file"  # the library default; the chart renders kubernetes
    pod = render_deployment("team-a", [], gateway)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert "--auth" not in pod["containers"][0]["args"]
    assert render_service_account("team-a", gateway) is None
    assert render_review_binding("team-a", gateway) is None


def test_review_binding_names_are_never_shortened() -> None:
    """A namespace name has at most 63 characters: the chart's namespaced RBAC names the
    bindings without hashing (helm/servegate/templates/_helpers.tpl)."""
    longest = "n" * 63
    assert review_binding_name(longest) == f"servegate-gateway-reviews-{longest}"


def test_settings_from_env() -> None:
    settings = settings_from_env(
        {
            "SERVEGATE_GATEWAY_IMAGE": "registry.local/servegate:1",
            "SERVEGATE_GATEWAY_REPLICAS": "3",
            "SERVEGATE_GATEWAY_RESOURCES": '{"requests": {"cpu": "1"}}',
            "SERVEGATE_RECONCILE_INTERVAL": "5",
            "SERVEGATE_GATEWAY_AUTH": "kubernetes",
            "SERVEGATE_GATEWAY_AUTH_AUDIENCE": "llm",
            "SERVEGATE_GATEWAY_REVIEWER_CLUSTER_ROLE": "rel-gateway-reviews",
        }
    )
    assert settings.gateway.auth_mode == "kubernetes"
    assert settings.gateway.auth_audience == "llm"
    assert settings.gateway.reviewer_cluster_role == "rel-gateway-reviews"
    defaults = settings_from_env({}).gateway
    assert (defaults.auth_mode, defaults.auth_audience, defaults.reviewer_cluster_role) == (
        "file",
        "servegate",
        "servegate-gateway-reviews",
    )
    assert settings.gateway.image == "registry.local/servegate:1"
    assert settings.gateway.replicas == 3
    assert settings.gateway.resources == {"requests": {"cpu": "1"}}
    assert settings.reconcile_interval_s == 5
    with pytest.raises(ValueError, match="SERVEGATE_GATEWAY_RESOURCES must be JSON"):
        settings_from_env({"SERVEGATE_GATEWAY_RESOURCES": "{nope"})
    with pytest.raises(ValueError, match="SERVEGATE_GATEWAY_AUTH must be one of file, kubernetes"):
        settings_from_env({"SERVEGATE_GATEWAY_AUTH": "Kubernetes"})


def test_control_plane_settings_from_env() -> None:
    on = settings_from_env(
        {
            "SERVEGATE_GATEWAY_AUTH": "kubernetes",
            "SERVEGATE_GATEWAY_CONTROL_PLANE": "kubernetes",
            "SERVEGATE_GATEWAY_CONTROL_PLANE_CLUSTER_ROLE": "rel-gateway-control-plane",
        }
    ).gateway
    assert (on.control_plane, on.control_plane_cluster_role) == (
        "kubernetes",
        "rel-gateway-control-plane",
    )
    off = settings_from_env({"SERVEGATE_GATEWAY_AUTH": "kubernetes"}).gateway
    assert (off.control_plane, off.control_plane_cluster_role) == (
        None,
        "servegate-gateway-control-plane",
    )
    assert settings_from_env({"SERVEGATE_GATEWAY_CONTROL_PLANE": ""}).gateway.control_plane is None
    # A typo must not silently turn it off, nor the gateway be rendered to crash at start.
    with pytest.raises(ValueError, match="SERVEGATE_GATEWAY_CONTROL_PLANE must be empty or one"):
        settings_from_env(
            {"SERVEGATE_GATEWAY_AUTH": "kubernetes", "SERVEGATE_GATEWAY_CONTROL_PLANE": "true"}
        )
    with pytest.raises(ValueError, match="needs SERVEGATE_GATEWAY_AUTH=kubernetes"):
        settings_from_env({"SERVEGATE_GATEWAY_CONTROL_PLANE": "kubernetes"})


def test_deploy_manifests_are_valid_kubernetes_objects() -> None:
    for path in sorted((REPO / "deploy" / "operator").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and not document["apiVersion"].startswith("kopf.dev/"):
                validate(document)  # kopf's peering objects are custom kinds (tests/helm)
