"""``gateway.tls.secretName`` and ``serviceMonitor.tlsConfig``, rendered by the real Helm
engine like the rest of the chart (see test_chart.py): valid Kubernetes objects, the value
reaching the operator's settings and from there the gateways it renders, a ServiceMonitor
that scrapes the port and scheme those gateways serve, and a schema that rejects bad values.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest

from servegate_operator.render.gateway import render_deployment, render_service
from servegate_operator.render.labels import gateway_selector
from servegate_operator.settings import settings_from_env
from tests.helm.test_chart import (
    CUSTOM_KINDS,
    KUBE_VERSIONS,
    NAMESPACED,
    SERVICE_MONITOR_SCHEMA,
    assert_lint_clean,
    chart,
    helm_error,
    merged,
    render,
)

TLS: dict[str, Any] = {"gateway": {"tls": {"secretName": "gateway-tls"}}}
MONITOR: dict[str, Any] = {"serviceMonitor": {"enabled": True}}
VERIFIED: dict[str, Any] = {
    "serviceMonitor": {
        "tlsConfig": {
            "ca": {"secret": {"name": "gateway-ca", "key": "ca.crt"}},
            "serverName": "servegate-gateway",
            "minVersion": "TLS12",
        }
    }
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "tls": TLS,
    "tls-monitored": merged(TLS, MONITOR),
    "tls-verified": merged(TLS, MONITOR, VERIFIED),
    "tls-namespaced-file-auth": merged(
        TLS, MONITOR, NAMESPACED, {"gateway": {"auth": "file", "authSecret": "gateway-auth"}}
    ),
}

# SERVICE_MONITOR_SCHEMA (a strict subset of prometheus-operator's CRD), with the endpoint
# fields TLS adds, typed as that CRD types them.
SECRET_OR_CONFIG_MAP = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        kind: {
            "type": "object",
            "additionalProperties": False,
            "required": ["key"],
            "properties": {"name": {"type": "string"}, "key": {"type": "string"}},
        }
        for kind in ("secret", "configMap")
    },
}
TLS_CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ca": SECRET_OR_CONFIG_MAP,
        "cert": SECRET_OR_CONFIG_MAP,
        "serverName": {"type": "string"},
        "insecureSkipVerify": {"type": "boolean"},
        "minVersion": {"enum": ["TLS10", "TLS11", "TLS12", "TLS13"]},
    },
}


def monitor_schema() -> dict[str, Any]:
    schema = copy.deepcopy(SERVICE_MONITOR_SCHEMA)
    endpoint = schema["properties"]["spec"]["properties"]["endpoints"]["items"]
    endpoint["properties"] |= {
        "scheme": {"enum": ["http", "https"]},
        "tlsConfig": TLS_CONFIG_SCHEMA,
    }
    return schema


@functools.cache
def rendered(scenario: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(SCENARIOS[scenario]))


def one(scenario: str, kind: str) -> dict[str, Any]:
    (found,) = [copy.deepcopy(o) for o in rendered(scenario) if o["kind"] == kind]
    return found


def operator_env(scenario: str) -> dict[str, str]:
    (operator,) = one(scenario, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in operator["env"] if "value" in e}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(scenario: str) -> None:
    assert_lint_clean(SCENARIOS[scenario])


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_objects_are_valid_kubernetes(scenario: str, version: str) -> None:
    builtin = [o for o in rendered(scenario) if o["kind"] not in CUSTOM_KINDS]
    for obj in builtin:
        kubernetes_validate.validate(obj, version, strict=True)
    # ... and so are the gateway objects the operator renders from these values.
    gateway = settings_from_env(operator_env(scenario)).gateway
    kubernetes_validate.validate(render_deployment("team-a", [], gateway), version, strict=True)
    kubernetes_validate.validate(render_service("team-a", gateway), version, strict=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_secret_name_reaches_the_gateways(scenario: str) -> None:
    env = operator_env(scenario)
    assert env["SERVEGATE_GATEWAY_TLS_SECRET"] == "gateway-tls"
    gateway = settings_from_env(env).gateway
    assert gateway.tls_secret == "gateway-tls"
    (container,) = render_deployment("team-a", [], gateway)["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--tls-cert" in container["args"] and "--tls-key" in container["args"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_off_by_default() -> None:
    values = chart().merge_values({})
    assert values["gateway"]["tls"] == {"secretName": ""}
    assert values["serviceMonitor"]["tlsConfig"] == {}
    (deployment,) = [o for o in render({}) if o["kind"] == "Deployment"]
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "SERVEGATE_GATEWAY_TLS_SECRET" not in {e["name"] for e in operator["env"]}
    assert settings_from_env({}).gateway.tls_secret is None


def test_the_service_monitor_scrapes_https_without_verification_by_default() -> None:
    monitor = one("tls-monitored", "ServiceMonitor")
    jsonschema.Draft7Validator(monitor_schema()).validate(monitor)
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "https",
            "scheme": "https",
            "tlsConfig": {"insecureSkipVerify": True},
            "path": "/metrics",
            "interval": "30s",
            "scrapeTimeout": "10s",
        }
    ]
    # The port it names is the one the operator's gateway Service has, with these values.
    gateway = settings_from_env(operator_env("tls-monitored")).gateway
    service = render_service("team-a", gateway)
    assert monitor["spec"]["selector"]["matchLabels"] == gateway_selector()
    assert [p["name"] for p in service["spec"]["ports"]] == ["https"]


def test_the_service_monitor_verifies_with_the_given_tls_config() -> None:
    monitor = one("tls-verified", "ServiceMonitor")
    jsonschema.Draft7Validator(monitor_schema()).validate(monitor)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["scheme"]) == ("https", "https")
    assert endpoint["tlsConfig"] == VERIFIED["serviceMonitor"]["tlsConfig"]
    # Without gateway TLS the monitor scrapes plain HTTP, whatever tlsConfig says.
    (plain,) = [o for o in render(merged(MONITOR, VERIFIED)) if o["kind"] == "ServiceMonitor"]
    assert plain["spec"]["endpoints"][0]["port"] == "http"
    assert "scheme" not in plain["spec"]["endpoints"][0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"gateway": {"tls": {"secretName": "Gateway_TLS"}}},
            "at '/gateway/tls/secretName': 'Gateway_TLS' does not match pattern",
        ),
        (
            {"gateway": {"tls": {"secret": "gateway-tls"}}},
            "at '/gateway/tls': additional properties 'secret' not allowed",
        ),
        ({"gateway": {"tls": "gateway-tls"}}, "at '/gateway/tls': got string, want object"),
        (
            {"serviceMonitor": {"tlsConfig": {"insecureSkipVerify": "yes"}}},
            "at '/serviceMonitor/tlsConfig/insecureSkipVerify': got string, want boolean",
        ),
        (
            {"serviceMonitor": {"tlsConfig": {"minVersion": "TLS1.2"}}},
            "at '/serviceMonitor/tlsConfig/minVersion': value must be one of",
        ),
        (
            {"serviceMonitor": {"tlsConfig": {"insecure": True}}},
            "additional properties 'insecure' not allowed",
        ),
    ],
)
def test_values_schema_rejects_bad_tls_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart().validate_schema(values)
    assert message in str(caught.value)
    assert message in helm_error(values)
