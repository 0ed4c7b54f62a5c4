"""The Helm chart, rendered by the real Helm engine (helm-python-sdk wraps Helm's Go SDK).

Each install shape (defaults, every option on, namespaced, standalone) renders objects that
Kubernetes' own schemas accept, for the oldest Kubernetes the chart supports and newer ones;
its values schema rejects bad values with the path of the mistake; its RBAC is the operator's
tested ClusterRole; its operator command and environment are what the operator's code
parses; and deploy/ is exactly the chart's default install.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import importlib.util
import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import helm_python
import jsonschema
import kubernetes.client
import kubernetes_validate
import pytest
import yaml

from servegate import cli as gateway_cli
from servegate.control.kubestore import REQUIRED_RULES
from servegate_operator import main as operator_main
from servegate_operator.main import build_parser
from servegate_operator.naming import CONTROL_PLANE_BINDING_NAME, review_binding_name
from servegate_operator.render.gateway import (
    render_control_plane_binding,
    render_deployment,
    render_review_binding,
    render_service,
    render_service_account,
)
from servegate_operator.render.labels import gateway_selector
from servegate_operator.settings import CaBundle, GatewayDefaults, SecretKey, settings_from_env
from tests.k8s.emulator import TOKEN, running_kubernetes
from tests.k8s.reviews import ACCESS_REVIEWS, ReviewAuthority

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "servegate"
RELEASE = "servegate"
NAMESPACE = "servegate-system"
# The chart's minimum (Chart.yaml kubeVersion), a recent one, and the newest known here.
KUBE_VERSIONS = ("1.27", "1.33", "1.37")
CUSTOM_KINDS = {"ClusterKopfPeering", "KopfPeering", "ServiceMonitor"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "Namespace"}

ALL_FEATURES: dict[str, Any] = {
    "operator": {
        "replicas": 2,
        "peering": {"enabled": True, "lifetime": 30},
        "logLevel": "DEBUG",
        "logFormat": "plain",
        "reconcileInterval": 30,
        "imagePullSecrets": [{"name": "ghcr"}],
        "podAnnotations": {"example.com/owner": "platform"},
        "podLabels": {"team": "platform"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                            ]
                        }
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
    },
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/sg"}},
    "gateway": {
        "image": {"repository": "registry.example.com/servegate", "tag": "0.1.0-rc1"},
        "replicas": 3,
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "hpa": {"enabled": True, "maxReplicas": 8, "cpuUtilization": 60},
        "pdb": {"minAvailable": 2},
        "service": {
            "type": "LoadBalancer",
            "annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"},
        },
        "podAnnotations": {"prometheus.io/scrape": "true"},
        "authSecret": "servegate-auth",
        "controlPlane": True,
        "redisUrl": "rediss://:secret@redis.cache.svc:6380/0",
        "env": [
            {"name": "HTTPS_PROXY", "value": "http://proxy.corp.example:3128"},
            {"name": "NO_PROXY", "value": ".svc,.cluster.local"},
        ],
        "records": {"dsnSecret": {"name": "servegate-records", "key": "dsn"}},
        "caBundle": {"configMap": "corp-ca", "key": "ca-bundle.crt"},
    },
    "networkPolicy": {
        "enabled": True,
        "gateway": {
            "namespaces": ["team-a", "team-b"],
            "from": [
                {"podSelector": {}},
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                },
            ],
        },
        "operator": {"apiServerCidrs": ["10.96.0.1/32", "172.18.0.2/32"]},
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}, "interval": "15s"},
}
NAMESPACED: dict[str, Any] = {"watchNamespaces": ["team-a", "team-b"]}
CONTROL_PLANE: dict[str, Any] = {"gateway": {"controlPlane": True}}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-features": ALL_FEATURES,
    "namespaced": NAMESPACED,
    "namespaced-all-features": merged(
        ALL_FEATURES, NAMESPACED, {"networkPolicy": {"gateway": {"namespaces": []}}}
    ),
    "standalone": {"operator": {"peering": {"enabled": False}}},
    "file-auth": {"gateway": {"auth": "file"}},
    "control-plane": CONTROL_PLANE,
    "namespaced-control-plane": merged(NAMESPACED, CONTROL_PLANE),
}
REVIEWER_ROLE = "servegate-gateway-reviews"
CONTROL_PLANE_ROLE = "servegate-gateway-control-plane"
RBAC = "rbac.authorization.k8s.io"
# What gateway.auth kubernetes adds to the operator's RBAC (resourceNames checked apart).
KUBERNETES_AUTH_RULES = {
    ("", "serviceaccounts", "create"),
    ("", "serviceaccounts", "patch"),
    (RBAC, "clusterrolebindings", "list"),
    (RBAC, "clusterrolebindings", "create"),
    (RBAC, "clusterrolebindings", "patch"),
    (RBAC, "clusterrolebindings", "delete"),
    (RBAC, "clusterroles", "bind"),
}
# What gateway.controlPlane adds to the operator's RBAC, in every namespace it manages.
CONTROL_PLANE_RULES = {
    (RBAC, "rolebindings", "create"),
    (RBAC, "rolebindings", "patch"),
    (RBAC, "clusterroles", "bind"),
}


@functools.cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render_raw(
    values: dict[str, Any], name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    return chart().render(values, name=name, namespace=namespace)


def render(
    values: dict[str, Any], name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Every object the chart installs (templates only: crds/ are not rendered)."""
    return [
        doc
        for path, text in sorted(render_raw(values, name, namespace).items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@functools.cache
def rendered(scenario: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(SCENARIOS[scenario]))


def objects(scenario: str, kind: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(o) for o in rendered(scenario) if o["kind"] == kind]


def one(scenario: str, kind: str) -> dict[str, Any]:
    (found,) = objects(scenario, kind)
    return found


def operator_role(scenario: str) -> dict[str, Any]:
    """The operator's ClusterRole (the chart also installs the gateways' reviewer role)."""
    (role,) = [
        o for o in objects(scenario, "ClusterRole") if o["metadata"]["name"] == "servegate-operator"
    ]
    return role


def container(scenario: str) -> dict[str, Any]:
    (operator,) = one(scenario, "Deployment")["spec"]["template"]["spec"]["containers"]
    return operator


def env_of(scenario: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(scenario)["env"] if "value" in e}


def crds() -> list[dict[str, Any]]:
    return [
        doc for crd in chart().crds for doc in yaml.safe_load_all(crd["data"]) if doc is not None
    ]


def expanded(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples, as the operator's RBAC test counts them."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def load_render_deploy() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_deploy", REPO / "scripts" / "render-deploy.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["render_deploy"] = module
    spec.loader.exec_module(module)
    return module


def helm_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm_python.HelmError) as caught:
        render_raw(values)
    return str(caught.value)


# ---------------------------------------------------------------------------------- lint


def assert_lint_clean(values: dict[str, Any]) -> None:
    """``helm lint --strict`` with these values: no error, and one finding only, at info
    level: Chart.yaml has no icon (the project publishes none)."""
    report = helm_python.lint(
        CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.27.0"
    )
    assert report["errors"] == []
    assert [(m["severity"], m["error"]) for m in report["messages"]] == [(1, "icon is recommended")]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(scenario: str) -> None:
    assert_lint_clean(SCENARIOS[scenario])


def test_chart_metadata() -> None:
    metadata = chart().metadata
    assert metadata["apiVersion"] == "v2"
    assert (metadata["name"], metadata["version"], metadata["appVersion"]) == (
        "servegate",
        "0.1.0",
        "0.1.0",
    )
    assert metadata["kubeVersion"] == ">=1.27.0-0"
    assert metadata["description"] and metadata["home"] and metadata["sources"]
    assert metadata["appVersion"] == importlib.metadata.version("servegate")


# ---------------------------------------------------------------- Kubernetes' schemas


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid_kubernetes(scenario: str, version: str) -> None:
    builtin = [o for o in rendered(scenario) if o["kind"] not in CUSTOM_KINDS]
    assert {o["kind"] for o in builtin} >= {"Deployment", "ServiceAccount", "ClusterRole"}
    for obj in builtin:
        kubernetes_validate.validate(obj, version, strict=True)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
        # Every namespaced object names its namespace, so deploy/ applies anywhere.
        assert ("namespace" in obj["metadata"]) == (obj["kind"] not in CLUSTER_SCOPED), obj


def test_strict_validation_is_not_a_no_op() -> None:
    deployment = one("defaults", "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_the_optional_objects_appear_only_when_enabled() -> None:
    kinds = {scenario: sorted(o["kind"] for o in rendered(scenario)) for scenario in SCENARIOS}
    assert kinds["defaults"] == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRole",  # the gateways' reviewer role (gateway.auth kubernetes)
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "ServiceAccount",
    ]
    assert kinds["file-auth"] == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "ServiceAccount",
    ]
    assert kinds["control-plane"] == sorted(
        [*kinds["defaults"], "ClusterRole"]  # the gateways' control-plane role
    )
    assert kinds["all-features"] == sorted(
        [*kinds["control-plane"], *("NetworkPolicy",) * 3, "ServiceMonitor"]
    )
    assert kinds["namespaced"] == sorted(
        [
            *("ClusterRole", "ClusterRole", "ClusterRoleBinding", "Deployment"),
            "PodDisruptionBudget",
            *("ServiceAccount", "Role", "Role", "RoleBinding", "RoleBinding"),
            *("KopfPeering", "KopfPeering"),
        ]
    )
    assert "ClusterKopfPeering" not in kinds["standalone"]


# ------------------------------------------------------------------------------- CRDs


def structural_problems(node: dict[str, Any], path: str, in_junctor: bool = False) -> list[str]:
    """Kubernetes' structural-schema rules (apiextensions v1), as far as a CRD file shows them."""
    problems = []
    special = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if in_junctor:
        forbidden = {"description", "type", "default", "additionalProperties", "nullable"}
        problems += [f"{path}: '{key}' inside a junctor" for key in forbidden & node.keys()]
    elif "type" not in node and not special:
        problems.append(f"{path}: no type")
    if "properties" in node and isinstance(node.get("additionalProperties"), dict):
        problems.append(f"{path}: both properties and additionalProperties")
    for key, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{key}", in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}.*", in_junctor)
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}[]", in_junctor)
    for junctor in ("allOf", "anyOf", "oneOf"):
        for index, child in enumerate(node.get(junctor, [])):
            problems += structural_problems(child, f"{path}.{junctor}[{index}]", True)
    if "not" in node:
        problems += structural_problems(node["not"], f"{path}.not", True)
    return problems


def test_crds_are_valid_structural_apiextensions_v1() -> None:
    found = {crd["metadata"]["name"]: crd for crd in crds()}
    assert set(found) == {
        "servingendpoints.servegate.io",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    }
    assert found["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    assert found["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    for crd in found.values():
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(crd, version, strict=True)
        for served in crd["spec"]["versions"]:
            schema = served["schema"]["openAPIV3Schema"]
            assert structural_problems(schema, crd["metadata"]["name"]) == []
            metadata = schema["properties"].get("metadata", {})
            assert set(metadata.get("properties", {})) <= {"name", "generateName"}


def test_the_crd_files_are_the_single_sources() -> None:
    for name in ("servingendpoints.servegate.io.yaml", "kopf-peering.yaml"):
        assert (CHART / "crds" / name).read_bytes() == (
            REPO / "deploy" / "crds" / name
        ).read_bytes()
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(
        p.name for p in (REPO / "deploy" / "crds").iterdir()
    )


@pytest.mark.parametrize("scenario", ["defaults", "namespaced"])
def test_peering_objects_match_their_crds(scenario: str) -> None:
    schemas = {
        crd["spec"]["names"]["kind"]: (crd["spec"]["scope"], crd["spec"]["versions"][0])
        for crd in crds()
    }
    peerings = [o for o in rendered(scenario) if o["kind"] in {"ClusterKopfPeering", "KopfPeering"}]
    assert peerings
    for obj in peerings:
        scope, version = schemas[obj["kind"]]
        assert obj["apiVersion"] == f"kopf.dev/{version['name']}"
        jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"]).validate(obj)
        assert ("namespace" in obj["metadata"]) == (scope == "Namespaced")
        assert obj["metadata"]["name"] == RELEASE  # the operator's --peering name


# A strict subset of monitoring.coreos.com/v1 ServiceMonitor (prometheus-operator's CRD):
# the fields the chart sets, with the CRD's own types and duration pattern.
DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"labels": STRING_MAP},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": STRING_MAP},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        },
                    },
                },
            },
        },
    },
}


def test_service_monitor_scrapes_every_gateway_service() -> None:
    monitor = one("all-features", "ServiceMonitor")
    jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).validate(monitor)
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    # The operator's own gateway Service carries the labels and the port the monitor names.
    service = render_service("team-a", GatewayDefaults())
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector == gateway_selector()
    assert selector.items() <= service["metadata"]["labels"].items()
    assert "http" in {port["name"] for port in service["spec"]["ports"]}

    namespaced = one("namespaced-all-features", "ServiceMonitor")
    jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).validate(namespaced)
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


# --------------------------------------------------------------------------- values schema


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_values_schema_accepts_the_documented_values(scenario: str) -> None:
    chart().validate_schema(SCENARIOS[scenario])


def test_the_kind_suites_install_values_are_valid_and_reach_the_pods() -> None:
    """The kind suite cannot run here; its install values can be checked: the schema takes
    them, and the operator's Deployment runs the image kind loaded, never pulled."""
    from tests.e2e.test_kind import E2E_IMAGE, INSTALL_VALUES

    chart().validate_schema(INSTALL_VALUES)
    rendered = yaml.safe_load(render_raw(INSTALL_VALUES)["servegate/templates/deployment.yaml"])
    [container] = rendered["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{E2E_IMAGE['repository']}:{E2E_IMAGE['tag']}"
    assert container["imagePullPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SERVEGATE_GATEWAY_IMAGE"] == container["image"]
    assert env["SERVEGATE_GATEWAY_AUTH"] == "kubernetes"  # the suite queries with a token
    assert rendered["spec"]["replicas"] == 2  # the suite deletes the working one


def test_values_yaml_matches_the_schema_and_is_commented() -> None:
    text = (CHART / "values.yaml").read_text()
    chart().validate_schema(yaml.safe_load(text))
    assert text.count("\n#") + text.count("  # ") > 40
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicas": -1}}, "at '/operator/replicas': minimum: got -1, want 1"),
        ({"operator": {"replicas": "1"}}, "at '/operator/replicas': got string, want integer"),
        ({"operator": {"replicas": 0}}, "at '/operator/replicas': minimum: got 0, want 1"),
        (
            {"operator": {"peering": {"lifetime": 5}}},
            "at '/operator/peering/lifetime': minimum: got 5, want 10",
        ),
        ({"gateway": {"replicas": 0}}, "at '/gateway/replicas': minimum: got 0, want 1"),
        ({"gateway": {"replicas": 1.5}}, "at '/gateway/replicas': got number, want integer"),
        (
            {"gateway": {"hpa": {"enabled": "yes"}}},
            "at '/gateway/hpa/enabled': got string, want boolean",
        ),
        ({"gateway": {"hpa": {"cpuUtilization": 150}}}, "maximum: got 150, want 100"),
        ({"gateway": {"pdb": {"minAvailable": -1}}}, "at '/gateway/pdb/minAvailable': minimum"),
        (
            {"gateway": {"service": {"type": "ExternalName"}}},
            "at '/gateway/service/type': value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'",
        ),
        (
            {"gateway": {"image": {"pullPolicy": "Sometimes"}}},
            "at '/gateway/image/pullPolicy': value must be one of",
        ),
        ({"gateway": {"replica": 2}}, "at '/gateway': additional properties 'replica' not allowed"),
        (
            {"gateway": {"hpa": {"minReplicas": 2}}},
            "at '/gateway/hpa': additional properties 'minReplicas' not allowed",
        ),
        ({"replicas": 2}, "at '': additional properties 'replicas' not allowed"),
        (
            {"gateway": {"redisUrl": "http://redis:6379"}},
            "at '/gateway/redisUrl': 'http://redis:6379' does not match pattern",
        ),
        (
            {"gateway": {"podAnnotations": {"a": 1}}},
            "at '/gateway/podAnnotations/a': got number, want string",
        ),
        (
            {"gateway": {"resources": {"requests": {"cpu": "lots"}}}},
            "at '/gateway/resources/requests/cpu'",
        ),
        (
            {"gateway": {"resources": {"request": {}}}},
            "additional properties 'request' not allowed",
        ),
        ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
        (
            {"watchNamespaces": ["Team_A"]},
            "at '/watchNamespaces/0': 'Team_A' does not match pattern",
        ),
        ({"watchNamespaces": ["a", "a"]}, "at '/watchNamespaces': items at 0 and 1 are equal"),
        ({"operator": {"logLevel": "TRACE"}}, "at '/operator/logLevel': value must be one of"),
        ({"operator": {"logFormat": "xml"}}, "at '/operator/logFormat': value must be one of"),
        (
            {"operator": {"reconcileInterval": 0}},
            "at '/operator/reconcileInterval': exclusiveMinimum",
        ),
        (
            {"networkPolicy": {"operator": {"apiServerPorts": [70000]}}},
            "maximum: got 70,000, want 65,535",
        ),
        (
            {"networkPolicy": {"gateway": {"from": [{"podSelectors": {}}]}}},
            "additional properties 'podSelectors' not allowed",
        ),
        (
            {"serviceMonitor": {"interval": "often"}},
            "at '/serviceMonitor/interval': 'often' does not match pattern",
        ),
        (
            {"gateway": {"auth": "token"}},
            "at '/gateway/auth': value must be one of 'kubernetes', 'file'",
        ),
        ({"gateway": {"authAudience": ""}}, "at '/gateway/authAudience': '' does not match"),
        (
            {"gateway": {"authAudience": "a,b"}},
            "at '/gateway/authAudience': 'a,b' does not match pattern",
        ),
        (
            {"gateway": {"controlPlane": "kubernetes"}},
            "at '/gateway/controlPlane': got string, want boolean",
        ),
    ],
)
def test_values_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart().validate_schema(values)
    assert message in str(caught.value)
    assert message in helm_error(values)  # an install fails the same way


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"gateway": {"hpa": {"enabled": True, "maxReplicas": 2}}},
            "gateway.hpa.maxReplicas (2) must be greater than gateway.replicas (2)",
        ),
        (
            {"gateway": {"replicas": 2, "pdb": {"minAvailable": 2}}},
            "gateway.pdb.minAvailable (2) must be lower than gateway.replicas (2)",
        ),
        (
            {"networkPolicy": {"enabled": True}},
            "list the namespaces whose gateway to protect in networkPolicy.gateway.namespaces",
        ),
        (
            {"serviceAccount": {"create": False}},
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
        (
            {"operator": {"replicas": 2, "peering": {"enabled": False}}},
            "operator.replicas=2 needs operator.peering.enabled: without peering every replica"
            " would reconcile at once",
        ),
        (
            {"gateway": {"auth": "file", "controlPlane": True}},
            'gateway.controlPlane needs gateway.auth kubernetes (it is "file"): the gateway'
            " authorizes each REST API write with a SubjectAccessReview of the caller",
        ),
    ],
)
def test_relations_between_values_fail_the_install_with_the_reason(
    values: dict[str, Any], message: str
) -> None:
    chart().validate_schema(values)  # each value alone is fine
    assert message in helm_error(values)


# ------------------------------------------------------------------------------------ RBAC


def test_clusterwide_rbac_is_the_operator_tested_cluster_role() -> None:
    """deploy/operator/*.yaml holds the ClusterRole tests/operator checks against the
    operator's real API calls; the chart's default install grants exactly that."""
    deployed = [
        doc
        for path in sorted((REPO / "deploy" / "operator").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "ClusterRole"
    ]
    (role,) = [r for r in deployed if r["metadata"]["name"] == "servegate-operator"]
    chart_role = operator_role("defaults")
    assert chart_role["rules"] == role["rules"]
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in expanded(chart_role["rules"])
    binding = one("defaults", "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == chart_role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "servegate-operator", "namespace": NAMESPACE}
    ]
    assert one("defaults", "ServiceAccount")["metadata"]["name"] == "servegate-operator"
    # Each rule keeps its comment in the template (and so in deploy/).
    template = (CHART / "templates" / "rbac.yaml").read_text()
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    for comment in (
        "# kopf: discover the CRD, coordinate replicas (the peering object is applied at start),",
        "# The resource it reconciles",
        "# Secrets: read the referenced keys",
        "# Per-endpoint config",
        "# The shared gateway; PDB and HPA are deleted when turned off.",
    ):
        assert comment in template + helpers
        assert comment in (REPO / "deploy" / "operator" / "servegate.yaml").read_text()


def test_namespaced_rbac_grants_the_same_calls_per_namespace() -> None:
    clusterwide = expanded(operator_role("defaults")["rules"])
    small = operator_role("namespaced")
    # kopf's discovery, and the gateways' cluster-scoped review bindings.
    assert expanded(small["rules"]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    } | {t for t in KUBERNETES_AUTH_RULES if t[0] == RBAC}
    # Changing or deleting a binding: only those of the watched namespaces (RBAC cannot
    # restrict create or list by name); binding a role: only the reviewer role.
    named = {
        (verb, tuple(rule.get("resourceNames", ())))
        for rule in small["rules"]
        if rule["apiGroups"] == [RBAC]
        for verb in rule["verbs"]
    }
    team_bindings = (review_binding_name("team-a"), review_binding_name("team-b"))
    assert named == {
        ("list", ()),
        ("create", ()),
        ("patch", team_bindings),
        ("delete", team_bindings),
        ("bind", (REVIEWER_ROLE,)),
    }
    roles = {r["metadata"]["namespace"]: r for r in objects("namespaced", "Role")}
    assert set(roles) == {"team-a", "team-b"}
    for role in roles.values():
        granted = expanded(role["rules"]) | expanded(small["rules"])
        peering = {"list", "watch", "create", "patch"}
        assert granted == (
            {t for t in clusterwide if t[1] != "clusterkopfpeerings"}
            | {("kopf.dev", "kopfpeerings", verb) for verb in peering}
            | {("", "namespaces", "list"), ("", "namespaces", "watch")}
        )
    bindings = {b["metadata"]["namespace"]: b for b in objects("namespaced", "RoleBinding")}
    assert set(bindings) == set(roles)
    for namespace, binding in bindings.items():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[namespace]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "servegate-operator", "namespace": NAMESPACE}
        ]


def test_standalone_grants_no_peering() -> None:
    rules = expanded(operator_role("standalone")["rules"])
    assert rules == {t for t in expanded(operator_role("defaults")["rules"]) if t[0] != "kopf.dev"}
    namespaced = render(merged(NAMESPACED, SCENARIOS["standalone"]))
    assert not [o for o in namespaced if o["kind"] in {"KopfPeering", "ClusterKopfPeering"}]
    for role in (o for o in namespaced if o["kind"] == "Role"):
        assert not [t for t in expanded(role["rules"]) if t[0] == "kopf.dev"]


# ------------------------------------------------------------------------ the operator pod


@pytest.mark.parametrize(
    ("scenario", "namespaces", "peering"),
    [
        ("defaults", [], RELEASE),
        ("all-features", [], RELEASE),
        ("namespaced", ["team-a", "team-b"], RELEASE),
        ("standalone", [], None),
    ],
)
def test_operator_command_is_what_the_operator_parses(
    scenario: str, namespaces: list[str], peering: str | None
) -> None:
    command = container(scenario)["command"]
    assert command[:2] == ["servegate", "operator"]
    args = build_parser().parse_args(command[2:])
    assert args.namespace == namespaces
    assert args.all_namespaces is (not namespaces)
    assert args.standalone is (peering is None)
    if peering is not None:
        assert args.peering == peering
        assert args.peering_lifetime == (30 if scenario == "all-features" else 60)
    assert args.priority is None  # each replica draws its own
    assert args.liveness == "http://0.0.0.0:8081/healthz"
    assert args.log_level == ("DEBUG" if scenario == "all-features" else "INFO")
    assert args.log_format == ("plain" if scenario == "all-features" else "json")
    assert "args" not in container(scenario)


def test_servegate_console_script_runs_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """`servegate` is a console script of the installed distribution, and `servegate
    operator ARGS` hands ARGS to the operator's own parser."""
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="servegate")
    assert script.dist is not None and script.dist.name == "servegate"
    received: list[list[str]] = []

    def fake_operator_main(argv: list[str]) -> int:
        received.append(list(argv))
        return 0

    monkeypatch.setattr(operator_main, "main", fake_operator_main)
    command = container("namespaced")["command"]
    assert script.load()(command[1:]) == 0
    assert received == [command[2:]]


def test_operator_pod_is_locked_down() -> None:
    pod = one("defaults", "Deployment")["spec"]["template"]["spec"]
    (operator,) = pod["containers"]
    security = operator["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in operator["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # The liveness probe polls the endpoint the --liveness flag opens.
    for probe in (operator["livenessProbe"], operator["startupProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": 8081}
    assert operator["resources"]["limits"]["memory"]
    assert operator["image"] == "ghcr.io/servegate/servegate:0.1.0"
    deployment = one("defaults", "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # With peering, a new pod may start before the old one stops: one of them stands by.
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    standalone = render(SCENARIOS["standalone"])
    (alone,) = [o for o in standalone if o["kind"] == "Deployment"]
    assert alone["spec"]["strategy"] == {"type": "Recreate"}
    assert "topologySpreadConstraints" not in pod  # one replica: nothing to spread


def test_operator_replicas_spread_over_nodes() -> None:
    """Two replicas (all-features): a soft spread over nodes, so a standby does not fall
    with the leader's node; a list of constraints replaces it."""
    deployment = one("all-features", "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
        }
    ]
    zones = [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"a": "b"}},
        }
    ]
    custom = render(
        merged(SCENARIOS["all-features"], {"operator": {"topologySpreadConstraints": zones}})
    )
    (spread,) = [o for o in custom if o["kind"] == "Deployment"]
    assert spread["spec"]["template"]["spec"]["topologySpreadConstraints"] == zones
    assert pod["serviceAccountName"] == "servegate-operator"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # It never selects the gateways' pods (same app name, another component).
    assert not selector.items() <= gateway_selector().items()
    budget = one("defaults", "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}


@pytest.mark.parametrize("scenario", ["defaults", "all-features"])
def test_gateway_values_reach_the_operator_settings(scenario: str) -> None:
    """The environment the chart sets is parsed by the operator's own settings code into
    the gateway defaults the values describe."""
    values = chart().merge_values(SCENARIOS[scenario])
    gateway_values = values["gateway"]
    settings = settings_from_env(env_of(scenario))
    gateway = settings.gateway
    image = gateway_values["image"]
    expected_image = (
        f"{image['repository']}:{image['tag']}"
        if image["repository"]
        else "ghcr.io/servegate/servegate:0.1.0"
    )
    assert gateway.image == expected_image
    assert gateway.image_pull_policy == image["pullPolicy"]
    assert gateway.replicas == gateway_values["replicas"]
    assert gateway.resources == gateway_values["resources"]
    assert gateway.service_type == gateway_values["service"]["type"]
    assert gateway.service_annotations == gateway_values["service"]["annotations"]
    assert gateway.pod_annotations == gateway_values["podAnnotations"]
    hpa = gateway_values["hpa"]
    assert gateway.hpa_max_replicas == (hpa["maxReplicas"] if hpa["enabled"] else 0)
    assert gateway.hpa_cpu_utilization == hpa["cpuUtilization"]
    assert gateway.pdb_min_available == gateway_values["pdb"]["minAvailable"]
    assert gateway.auth_secret == (gateway_values["authSecret"] or None)
    assert gateway.auth_mode == gateway_values["auth"] == "kubernetes"
    assert gateway.auth_audience == gateway_values["authAudience"] == "servegate"
    assert gateway.reviewer_cluster_role == REVIEWER_ROLE
    assert gateway.control_plane == ("kubernetes" if gateway_values["controlPlane"] else None)
    assert gateway.control_plane_cluster_role == CONTROL_PLANE_ROLE
    assert settings.reconcile_interval_s == values["operator"]["reconcileInterval"]
    assert env_of(scenario)["SERVEGATE_GATEWAY_REDIS_URL"] == gateway_values["redisUrl"]
    assert list(gateway.env.items()) == [(e["name"], e["value"]) for e in gateway_values["env"]]
    dsn_secret = gateway_values["records"]["dsnSecret"]
    assert gateway.records_dsn_secret == (
        SecretKey(dsn_secret["name"], dsn_secret["key"]) if dsn_secret["name"] else None
    )
    bundle = gateway_values["caBundle"]
    assert gateway.ca_bundle == (
        CaBundle("configMap", bundle["configMap"], bundle["key"]) if bundle["configMap"] else None
    )
    pod_id = next(e for e in container(scenario)["env"] if e["name"] == "POD_ID")
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_gateway_image_defaults_to_the_operator_image() -> None:
    values = {"operator": {"image": {"repository": "mirror.example.com/sg", "tag": "9.9.9"}}}
    (deployment,) = [o for o in render(values) if o["kind"] == "Deployment"]
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert operator["image"] == env["SERVEGATE_GATEWAY_IMAGE"] == "mirror.example.com/sg:9.9.9"


# ---------------------------------------------------------- the gateways' Kubernetes auth


def test_gateways_authenticate_kubernetes_identities_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chart's defaults, through the operator's own settings and renderers: each
    gateway runs `servegate serve ... --auth kubernetes --auth-audience servegate` (which
    the gateway's own CLI accepts on 0.0.0.0) as the ServiceAccount that the operator binds
    to the chart's reviewer ClusterRole."""
    gateway = settings_from_env(env_of("defaults")).gateway
    deployment = render_deployment("team-a", [], gateway)
    kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)
    pod = deployment["spec"]["template"]["spec"]
    (container_,) = pod["containers"]
    assert container_["command"] == ["servegate"]
    args = container_["args"]
    assert args[args.index("--auth") :][:4] == [
        "--auth",
        "kubernetes",
        "--auth-audience",
        "servegate",
    ]
    monkeypatch.delenv("SERVEGATE_AUTH", raising=False)
    monkeypatch.delenv("SERVEGATE_AUTH_AUDIENCE", raising=False)
    parsed = gateway_cli.build_parser().parse_args(args)
    assert (parsed.auth, parsed.auth_audience, parsed.host) == (
        "kubernetes",
        "servegate",
        "0.0.0.0",
    )
    assert not parsed.insecure_no_auth
    assert gateway_cli.check_exposure(parsed) is None  # authenticated: may listen on any address
    # Its identity, and that identity's only grant: the chart's reviewer role.
    account = render_service_account("team-a", gateway)
    binding = render_review_binding("team-a", gateway)
    assert account is not None and binding is not None
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "team-a"}
    ]
    reviewer = [
        r for r in objects("defaults", "ClusterRole") if r["metadata"]["name"] == REVIEWER_ROLE
    ]
    assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole", "name": REVIEWER_ROLE}
    assert len(reviewer) == 1
    for obj in (account, binding):
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize(
    ("release", "values"), [("servegate", {}), ("prod", {}), ("x", {"fullnameOverride": "llm"})]
)
def test_the_reviewer_cluster_role_grants_exactly_the_reviews(
    release: str, values: dict[str, Any]
) -> None:
    objs = render(values, name=release)
    roles = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ClusterRole"}
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    name = env["SERVEGATE_GATEWAY_REVIEWER_CLUSTER_ROLE"]
    assert (
        name
        == {
            "servegate": REVIEWER_ROLE,
            "prod": "prod-servegate-gateway-reviews",
            "x": "llm-gateway-reviews",
        }[release]
    )
    reviewer = roles.pop(name)
    assert reviewer["rules"] == [
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
    ]
    assert reviewer["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    # Kept on uninstall: the gateways left serving keep authenticating their callers.
    assert reviewer["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # The operator may bind that role, and no other.
    ((_, operator_role_),) = roles.items()
    binds = [r for r in operator_role_["rules"] if "bind" in r["verbs"]]
    assert binds == [
        {
            "apiGroups": [RBAC],
            "resources": ["clusterroles"],
            "verbs": ["bind"],
            "resourceNames": [name],
        }
    ]


def test_file_auth_grants_no_identity_rbac() -> None:
    """gateway.auth file: no reviewer role, and the operator's RBAC loses exactly the
    rules Kubernetes auth adds (the tested ClusterRole of tests/operator, both ways)."""
    assert env_of("file-auth")["SERVEGATE_GATEWAY_AUTH"] == "file"
    assert "SERVEGATE_GATEWAY_REVIEWER_CLUSTER_ROLE" not in env_of("file-auth")
    assert [r["metadata"]["name"] for r in objects("file-auth", "ClusterRole")] == [
        "servegate-operator"
    ]
    with_auth = expanded(operator_role("defaults")["rules"])
    assert with_auth >= KUBERNETES_AUTH_RULES
    assert expanded(operator_role("file-auth")["rules"]) == with_auth - KUBERNETES_AUTH_RULES
    namespaced = render(merged(NAMESPACED, SCENARIOS["file-auth"]))
    small = next(o for o in namespaced if o["kind"] == "ClusterRole")
    assert not [t for t in expanded(small["rules"]) if t[0] == RBAC]
    for role in (o for o in namespaced if o["kind"] == "Role"):
        assert not [t for t in expanded(role["rules"]) if t[1] == "serviceaccounts"]
    gateway = settings_from_env(env_of("file-auth")).gateway
    pod = render_deployment("team-a", [], gateway)["spec"]["template"]["spec"]
    assert "--auth" not in pod["containers"][0]["args"]
    assert pod["automountServiceAccountToken"] is False


# ------------------------------------------------------ the gateways' Kubernetes control plane


def required_rules() -> list[dict[str, Any]]:
    """servegate.control.kubestore.REQUIRED_RULES as ClusterRole rules, in their order."""
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
        for group, resource, verbs in REQUIRED_RULES
    ]


@pytest.mark.parametrize(
    ("release", "values"), [("servegate", {}), ("prod", {}), ("x", {"fullnameOverride": "llm"})]
)
def test_the_control_plane_cluster_role_is_what_the_gateway_writes_with(
    release: str, values: dict[str, Any]
) -> None:
    """gateway.controlPlane: the chart's role is exactly the gateway's REQUIRED_RULES (the
    proxy's tests check the gateway calls exactly those), the operator learns its name,
    and may bind it (and the reviewer role) and no other."""
    objs = render(merged(values, CONTROL_PLANE), name=release)
    roles = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ClusterRole"}
    (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["SERVEGATE_GATEWAY_CONTROL_PLANE"] == "kubernetes"
    name = env["SERVEGATE_GATEWAY_CONTROL_PLANE_CLUSTER_ROLE"]
    prefix = {"servegate": "servegate", "prod": "prod-servegate", "x": "llm"}[release]
    assert name == f"{prefix}-gateway-control-plane"
    writer = roles.pop(name)
    assert writer["rules"] == required_rules()
    assert writer["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
    # Kept on uninstall, like the reviewer role: the gateways left serving keep their API.
    assert writer["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    reviewer = env["SERVEGATE_GATEWAY_REVIEWER_CLUSTER_ROLE"]
    roles.pop(reviewer)
    ((_, operator_role_),) = roles.items()
    binds = [r for r in operator_role_["rules"] if "bind" in r["verbs"]]
    assert sorted(name for rule in binds for name in rule["resourceNames"]) == sorted(
        [name, reviewer]
    )
    assert all(r["resources"] == ["clusterroles"] and r["verbs"] == ["bind"] for r in binds)
    gateway = settings_from_env(env).gateway
    binding = render_control_plane_binding("team-a", gateway)
    assert binding is not None
    assert binding["roleRef"] == {"apiGroup": RBAC, "kind": "ClusterRole", "name": name}


def test_the_control_plane_is_off_by_default() -> None:
    """It lets the gateways read their namespace's Secrets: a platform team opts in."""
    assert chart().merge_values({})["gateway"]["controlPlane"] is False
    for scenario in ("defaults", "namespaced", "file-auth"):
        names = [r["metadata"]["name"] for r in objects(scenario, "ClusterRole")]
        assert CONTROL_PLANE_ROLE not in names
        assert not {k for k in env_of(scenario) if k.startswith("SERVEGATE_GATEWAY_CONTROL")}
        rules = [
            r
            for o in rendered(scenario)
            if o["kind"] in ("ClusterRole", "Role")
            for r in o["rules"]
        ]
        assert not [t for t in expanded(rules) if t[1] == "rolebindings"]
    gateway = settings_from_env(env_of("defaults")).gateway
    assert gateway.control_plane is None
    args = render_deployment("team-a", [], gateway)["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--control-plane" not in args
    assert render_control_plane_binding("team-a", gateway) is None


def test_control_plane_rbac_adds_exactly_the_role_binding_rules() -> None:
    """The operator's ClusterRole (cluster-wide) or each watched namespace's Role
    (namespaced) gains create and patch on RoleBindings (patch on the gateway's only) and
    bind on the control-plane role only; nothing else changes."""
    assert (
        expanded(operator_role("control-plane")["rules"])
        == expanded(operator_role("defaults")["rules"]) | CONTROL_PLANE_RULES
    )
    # The binding is namespaced: the namespaced mode's small ClusterRole does not change.
    assert (
        operator_role("namespaced-control-plane")["rules"] == operator_role("namespaced")["rules"]
    )
    before = {r["metadata"]["namespace"]: r for r in objects("namespaced", "Role")}
    after = {r["metadata"]["namespace"]: r for r in objects("namespaced-control-plane", "Role")}
    assert set(after) == set(before) == {"team-a", "team-b"}
    for namespace, role in after.items():
        added = expanded(role["rules"]) - expanded(before[namespace]["rules"])
        assert added == CONTROL_PLANE_RULES
    for role in [operator_role("control-plane"), *after.values()]:
        named = {
            (verb, tuple(rule.get("resourceNames", ())))
            for rule in role["rules"]
            if rule["resources"] in (["rolebindings"], ["clusterroles"])
            for verb in rule["verbs"]
        }
        assert named >= {
            ("create", ()),  # RBAC cannot restrict create by name
            ("patch", (CONTROL_PLANE_BINDING_NAME,)),
            ("bind", (CONTROL_PLANE_ROLE,)),
        }
        assert not [
            n
            for n in named
            if n[0] in ("create", "patch")
            and n not in {("create", ()), ("patch", (CONTROL_PLANE_BINDING_NAME,))}
        ]


@pytest.mark.parametrize("scenario", ["control-plane", "all-features", "namespaced-control-plane"])
def test_gateways_write_through_the_control_plane_when_enabled(
    scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's environment, through the operator's settings and renderers: each
    gateway runs `servegate serve ... --auth kubernetes ... --control-plane kubernetes`
    (which the gateway's CLI accepts), and its namespace's RoleBinding binds its
    ServiceAccount to the chart's control-plane role."""
    gateway = settings_from_env(env_of(scenario)).gateway
    deployment = render_deployment("team-a", [], gateway)
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--control-plane") :][:2] == ["--control-plane", "kubernetes"]
    for name in ("SERVEGATE_CONTROL_PLANE", "SERVEGATE_AUTH", "SERVEGATE_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    parsed = gateway_cli.build_parser().parse_args(args)
    assert (parsed.auth, parsed.control_plane) == ("kubernetes", "kubernetes")
    binding = render_control_plane_binding("team-a", gateway)
    account = render_service_account("team-a", gateway)
    assert binding is not None and account is not None
    assert binding["metadata"]["namespace"] == "team-a"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "team-a"}
    ]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    roles = [r["metadata"]["name"] for r in objects(scenario, "ClusterRole")]
    assert binding["roleRef"]["name"] in roles
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(binding, version, strict=True)
        kubernetes_validate.validate(deployment, version, strict=True)


# ------------------------------------------------------------------------ NetworkPolicies


def test_network_policies_guard_the_gateways_and_the_operator_egress() -> None:
    policies = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p
        for p in objects("all-features", "NetworkPolicy")
    }
    assert set(policies) == {
        (NAMESPACE, "servegate-operator"),
        ("team-a", "servegate-gateway"),
        ("team-b", "servegate-gateway"),
    }
    operator = policies[NAMESPACE, "servegate-operator"]["spec"]
    assert operator["policyTypes"] == ["Egress"]
    assert operator["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    assert operator["egress"] == [
        {
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
            "to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}, {"ipBlock": {"cidr": "172.18.0.2/32"}}],
        }
    ]
    # The operator's gateway pods carry the selected labels and name the allowed port.
    gateway_pod = render_deployment("team-a", [], GatewayDefaults())["spec"]["template"]
    ports = {p["name"] for c in gateway_pod["spec"]["containers"] for p in c["ports"]}
    for namespace in ("team-a", "team-b"):
        policy = policies[namespace, "servegate-gateway"]
        assert policy["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        assert spec["podSelector"]["matchLabels"] == gateway_selector()
        assert gateway_selector().items() <= gateway_pod["metadata"]["labels"].items()
        (rule,) = spec["ingress"]
        assert rule["from"] == ALL_FEATURES["networkPolicy"]["gateway"]["from"]
        assert [p["port"] for p in rule["ports"]] == ["http"] and "http" in ports
    # Namespaced mode: the watched namespaces by default.
    namespaced = objects("namespaced-all-features", "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in namespaced) == [NAMESPACE, "team-a", "team-b"]


# ------------------------------------------------------------------- names and namespaces


def test_names_follow_the_release_and_the_overrides() -> None:
    def names(values: dict[str, Any], release: str) -> tuple[str, str, str]:
        """(operator Deployment, peering object, app.kubernetes.io/name label)."""
        objs = render(values, name=release, namespace="apps")
        assert {o["metadata"].get("namespace", "apps") for o in objs} == {"apps"}
        deployment = next(o for o in objs if o["kind"] == "Deployment")
        peering = next(o for o in objs if o["kind"] == "ClusterKopfPeering")
        (operator,) = deployment["spec"]["template"]["spec"]["containers"]
        args = build_parser().parse_args(operator["command"][2:])
        assert args.peering == peering["metadata"]["name"]
        labels = deployment["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == release
        return (
            deployment["metadata"]["name"],
            peering["metadata"]["name"],
            labels["app.kubernetes.io/name"],
        )

    assert names({}, "prod") == ("prod-servegate-operator", "prod-servegate", "servegate")
    assert names({}, "servegate-prod") == ("servegate-prod-operator", "servegate-prod", "servegate")
    assert names({"fullnameOverride": "llm"}, "prod") == ("llm-operator", "llm", "servegate")
    assert names({"nameOverride": "gw"}, "prod") == ("prod-gw-operator", "prod-gw", "gw")
    labels = one("defaults", "Deployment")["metadata"]["labels"]
    assert labels["helm.sh/chart"] == "servegate-0.1.0"
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert labels["app.kubernetes.io/version"] == "0.1.0"


def test_templates_hard_code_no_namespace() -> None:
    for template in (CHART / "templates").iterdir():
        text = template.read_text()
        assert "servegate-system" not in text, template
        for line in text.splitlines():
            if line.strip().startswith("namespace:"):
                assert "{{" in line, (template.name, line)


# --------------------------------------------------------------------------------- NOTES


def notes(values: dict[str, Any]) -> str:
    (text,) = [t for p, t in render_raw(values).items() if p.endswith("NOTES.txt")]
    return text


def test_notes_take_the_user_to_a_first_query() -> None:
    text = notes({})
    for step in (
        "kubectl create secret generic openai -n default",
        "examples/embeddings.yaml | kubectl apply -n default -f -",
        "kubectl get servingendpoints -n default -w",
        "kubectl port-forward svc/servegate-gateway -n default 8080:80",
        "curl -s http://127.0.0.1:8080/serving-endpoints/embeddings/invocations",
        'OpenAI(base_url="http://127.0.0.1:8080/serving-endpoints"',
        "{{secrets/openai/api_key}}",
        # gateway.auth kubernetes (the default): a ServiceAccount, its grant, its token.
        "kubectl create serviceaccount web -n default",
        "kubectl create role query-embeddings -n default --verb=query"
        " --resource=servingendpoints.servegate.io --resource-name=embeddings",
        "kubectl create rolebinding web-query-embeddings -n default --role=query-embeddings"
        " --serviceaccount=default:web",
        "kubectl auth can-i query servingendpoints/embeddings"
        " --as=system:serviceaccount:default:web -n default",
        "TOKEN=$(kubectl create token web -n default --audience servegate)",
        '-H "Authorization: Bearer $TOKEN"',
        'api_key=os.environ["TOKEN"]',
        "audience: servegate",
    ):
        assert step in text
    assert "NOT authenticated" not in text
    unauthenticated = notes({"gateway": {"auth": "file"}})
    assert "in-cluster callers are NOT authenticated" in unauthenticated
    assert "Authorization" not in unauthenticated and "create token" not in unauthenticated
    namespaced = notes(merged(NAMESPACED, {"gateway": {"auth": "file", "authSecret": "auth"}}))
    assert "watches the namespaces: team-a, team-b" in namespaced
    assert "kubectl port-forward svc/servegate-gateway -n team-a 8080:80" in namespaced
    assert "Authorization: Bearer" in namespaced and "NOT authenticated" not in namespaced
    both = notes({"gateway": {"authSecret": "auth"}})
    assert "create token web" in both and "may also authenticate" in both
    assert "stand by" not in text  # one replica
    standby = notes({"operator": {"replicas": 2}})
    assert "2 operator replicas: the one with the highest peering priority works" in standby
    assert "kubectl get clusterkopfpeering servegate -o jsonpath='{.status}'" in standby
    namespaced_standby = notes(merged(NAMESPACED, {"operator": {"replicas": 2}}))
    assert "kubectl get kopfpeering servegate -n team-a -o jsonpath='{.status}'" in (
        namespaced_standby
    )


def test_the_notes_grant_is_what_the_gateway_asks_for(tmp_path: Path) -> None:
    """The NOTES' kubectl commands, run against the emulated API (client-side generators,
    then applied: the emulator takes no protobuf), give the ServiceAccount exactly the
    `query` on that endpoint the gateway's SubjectAccessReview asks about."""
    text = notes({})
    commands = [
        shlex.split(line.strip())
        for line in text.splitlines()
        if line.strip().startswith(("kubectl create serviceaccount", "kubectl create role"))
    ]
    assert len(commands) == 3
    with running_kubernetes(tmp_path / "k8s") as cluster:
        authority = ReviewAuthority(cluster)
        for command in commands:
            generated = cluster.kubectl(*command[1:], "--dry-run=client", "-o", "yaml").stdout
            cluster.kubectl("apply", "-f", "-", input=generated)
        client = cluster.api_client()
        # As the emulator's admin (the review authority reads the whole header).
        client.configuration.api_key = {"authorization": f"Bearer {TOKEN}"}
        client.configuration.api_key_prefix = {}
        reviews = kubernetes.client.AuthorizationV1Api(client)

        def may(verb: str, name: str, namespace: str = "default") -> bool:
            review = reviews.create_subject_access_review(
                {
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SubjectAccessReview",
                    "spec": {
                        "user": "system:serviceaccount:default:web",
                        "groups": ["system:serviceaccounts", "system:authenticated"],
                        "resourceAttributes": {
                            "verb": verb,
                            "group": "servegate.io",
                            "resource": "servingendpoints",
                            "name": name,
                            "namespace": namespace,
                        },
                    },
                }
            )
            return bool(review.status.allowed)

        assert may("query", "embeddings")
        assert not may("query", "chat")
        assert not may("query", "embeddings", "team-a")
        assert not may("update", "embeddings")
        assert cluster.get("v1/serviceaccounts", "default", "web") is not None
        assert authority.review_count(ACCESS_REVIEWS) == 4


def test_the_notes_grant_to_manage_endpoints_is_what_the_gateway_asks_for(tmp_path: Path) -> None:
    """gateway.controlPlane: the NOTES' kubectl commands give a ServiceAccount the verbs
    the gateway's SubjectAccessReviews ask about for REST API writes, on any endpoint of
    that namespace; without the option the NOTES say nothing of it."""
    assert "gateway.controlPlane" not in notes({})
    text = notes(CONTROL_PLANE)
    assert "A gateway exists while its namespace has at least one ServingEndpoint" in text
    assert "may now read every Secret of its namespace" in text
    assert "DATABRICKS_HOST=http://servegate-gateway.default.svc" in text
    grant = ("kubectl create serviceaccount ml", "kubectl create role manage-endpoints")
    grant += ("kubectl create rolebinding ml-manage-endpoints",)
    commands = [
        shlex.split(line.strip()) for line in text.splitlines() if line.strip().startswith(grant)
    ]
    assert len(commands) == 3
    with running_kubernetes(tmp_path / "k8s") as cluster:
        ReviewAuthority(cluster)
        for command in commands:
            generated = cluster.kubectl(*command[1:], "--dry-run=client", "-o", "yaml").stdout
            cluster.kubectl("apply", "-f", "-", input=generated)
        client = cluster.api_client()
        client.configuration.api_key = {"authorization": f"Bearer {TOKEN}"}
        client.configuration.api_key_prefix = {}
        reviews = kubernetes.client.AuthorizationV1Api(client)

        def may(verb: str, name: str, namespace: str = "default") -> bool:
            review = reviews.create_subject_access_review(
                {
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SubjectAccessReview",
                    "spec": {
                        "user": "system:serviceaccount:default:ml",
                        "groups": ["system:serviceaccounts", "system:authenticated"],
                        "resourceAttributes": {
                            "verb": verb,
                            "group": "servegate.io",
                            "resource": "servingendpoints",
                            "name": name,
                            "namespace": namespace,
                        },
                    },
                }
            )
            return bool(review.status.allowed)

        for verb in ("create", "update", "delete", "query"):
            assert may(verb, "assistant"), verb
        assert not may("create", "assistant", "team-a")
        assert not may("get", "assistant")  # kubectl's own reads are not granted


# ------------------------------------------------------------------------------- deploy/


@pytest.fixture(scope="module")
def render_deploy() -> Iterator[ModuleType]:
    yield load_render_deploy()
    sys.modules.pop("render_deploy", None)


def test_deploy_is_the_charts_default_install(render_deploy: ModuleType) -> None:
    """deploy/ equals a fresh render (else: python scripts/render-deploy.py)."""
    for path, text in render_deploy.expected_files().items():
        assert path.read_text() == text, f"{path} is stale: run python scripts/render-deploy.py"
    assert render_deploy.main(["--check"]) == 0
    assert sorted(p.name for p in (REPO / "deploy" / "operator").iterdir()) == ["servegate.yaml"]
    docs = [d for d in yaml.safe_load_all(render_deploy.OPERATOR_MANIFEST.read_text()) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "app.kubernetes.io/part-of": "servegate",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    # Everything the chart installs but its peering object, which the operator applies.
    chart = [o for o in rendered("defaults") if o["kind"] not in {"ClusterKopfPeering"}]
    assert len(chart) == len(rendered("defaults")) - 1
    assert docs[1:] == sorted(chart, key=lambda o: render_deploy.install_order(o["kind"]))
    text = render_deploy.OPERATOR_MANIFEST.read_text()
    assert text.startswith("# Generated from the Helm chart helm/servegate")
    assert "python scripts/render-deploy.py" in text.splitlines()[2]
    for version in KUBE_VERSIONS:
        for doc in docs:
            if doc["kind"] not in CUSTOM_KINDS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_render_deploy_check_reports_a_stale_file(
    render_deploy: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    stale = tmp_path / "deploy" / "operator" / "servegate.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("# hand-edited\n")
    monkeypatch.setattr(render_deploy, "REPO", tmp_path)
    monkeypatch.setattr(render_deploy, "OPERATOR_MANIFEST", stale)
    monkeypatch.setattr(render_deploy, "CRD_COPIES", [])
    assert render_deploy.main(["--check"]) == 1
    assert "stale: deploy/operator/servegate.yaml" in capsys.readouterr().err
    assert stale.read_text() == "# hand-edited\n"
    assert render_deploy.main([]) == 0
    assert stale.read_text() == render_deploy.operator_manifest()
