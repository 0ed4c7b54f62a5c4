"""``gateway.securityContext``, ``gateway.podSecurityContext`` and ``gateway.workers``,
rendered by the real Helm engine like the rest of the chart (see test_chart.py): the
operator Deployment's environment is parsed by the operator's own settings code, and the
gateway Deployment the operator renders from those settings carries the values on its pod
(merged over the secure defaults) and its container's ``--workers`` argument, which the
gateway's own CLI accepts; the result is valid Kubernetes."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from servegate import cli as gateway_cli
from servegate_operator.render.gateway import render_deployment
from servegate_operator.settings import GatewayDefaults, settings_from_env
from tests.helm.test_chart import KUBE_VERSIONS, chart, render

SECURITY_CONTEXT: dict[str, Any] = {
    "runAsUser": 20002,
    "runAsGroup": 20003,
    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
}
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "fsGroup": 20004,
    "supplementalGroups": [30000],
    "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/servegate.json"},
}
WORKERS = 4
VALUES: dict[str, Any] = {
    "gateway": {
        "securityContext": SECURITY_CONTEXT,
        "podSecurityContext": POD_SECURITY_CONTEXT,
        "workers": WORKERS,
    }
}


def operator_env(values: dict[str, Any]) -> dict[str, str]:
    """The operator container's plain environment variables, as the chart renders them."""
    (deployment,) = [o for o in render(values) if o["kind"] == "Deployment"]
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in operator["env"] if "value" in e}


def gateway_settings(values: dict[str, Any]) -> GatewayDefaults:
    return settings_from_env(operator_env(values)).gateway


def gateway_pod(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(deployment, pod spec, gateway container) that the operator renders for team-a."""
    deployment = render_deployment("team-a", [], gateway_settings(values))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return deployment, pod, container


def test_the_values_are_accepted_by_the_charts_schema() -> None:
    merged_values = chart().merge_values(VALUES)["gateway"]
    assert merged_values["securityContext"] == SECURITY_CONTEXT
    assert merged_values["podSecurityContext"] == POD_SECURITY_CONTEXT
    assert merged_values["workers"] == WORKERS


def test_the_values_reach_the_operator_settings() -> None:
    gateway = gateway_settings(VALUES)
    assert gateway.security_context == SECURITY_CONTEXT
    assert gateway.pod_security_context == POD_SECURITY_CONTEXT
    assert gateway.workers == WORKERS


def test_the_defaults_reach_the_operator_settings() -> None:
    gateway = gateway_settings({})
    assert gateway.security_context == {}
    assert gateway.pod_security_context == {}
    assert gateway.workers == 1


def test_the_gateway_pod_carries_the_security_contexts_over_the_defaults() -> None:
    _, pod, container = gateway_pod(VALUES)
    # The values win where they say something; the secure defaults stay elsewhere.
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 20002,
        "runAsGroup": 20003,
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "fsGroup": 20004,
        "supplementalGroups": [30000],
        "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/servegate.json"},
    }


def test_the_default_gateway_pod_keeps_the_secure_defaults() -> None:
    _, pod, container = gateway_pod({})
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_the_gateway_container_runs_the_workers() -> None:
    _, _, container = gateway_pod(VALUES)
    args = container["args"]
    assert container["command"] == ["servegate"]
    assert args.count("--workers") == 1
    assert args[args.index("--workers") :][:2] == ["--workers", str(WORKERS)]
    # The gateway's own CLI reads it.
    assert gateway_cli.build_parser().parse_args(args).workers == WORKERS


def test_one_worker_adds_no_workers_argument() -> None:
    _, _, container = gateway_pod({})
    assert "--workers" not in container["args"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [VALUES, {}], ids=["custom", "defaults"])
def test_the_rendered_gateway_deployment_is_valid_kubernetes(
    values: dict[str, Any], version: str
) -> None:
    deployment, _, _ = gateway_pod(values)
    kubernetes_validate.validate(deployment, version, strict=True)
