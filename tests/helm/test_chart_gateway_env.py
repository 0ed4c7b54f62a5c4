"""``gateway.env``, ``gateway.records.dsnSecret`` and ``gateway.caBundle``, rendered by the
real Helm engine like the rest of the chart (see test_chart.py): valid Kubernetes objects;
the values reaching the operator's settings and from there the gateways it renders (plain
variables, a ``secretKeyRef`` for the DSN, the bundle mounted read-only); a schema and
templates that refuse bad values with the reason, and every way to put the DSN, or any
other ``SERVEGATE_*`` setting, in a plain value; the documented examples as documented."""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from servegate_operator.render.gateway import render_deployment
from servegate_operator.settings import CaBundle, SecretKey, settings_from_env
from tests.helm.test_chart import (
    CHART,
    CUSTOM_KINDS,
    KUBE_VERSIONS,
    NAMESPACED,
    REPO,
    assert_lint_clean,
    chart,
    helm_error,
    merged,
    render,
)
from tests.helm.test_gateway_egress import allows

PROXY_ENV = [
    {"name": "HTTPS_PROXY", "value": "http://10.20.0.5:3128"},
    {"name": "NO_PROXY", "value": ".svc,.cluster.local"},
]
RECORDS: dict[str, Any] = {
    "gateway": {"records": {"dsnSecret": {"name": "servegate-records", "key": "dsn"}}}
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "all-three": merged(
        RECORDS, {"gateway": {"env": PROXY_ENV, "caBundle": {"configMap": "corp-ca"}}}
    ),
    "namespaced-secret-bundle-file-auth": merged(
        NAMESPACED,
        {
            "gateway": {
                "auth": "file",
                "env": [{"name": "http_proxy", "value": "http://proxy.corp.example:8080"}],
                "caBundle": {"secret": "corp-ca", "key": "bundle.pem"},
            }
        },
    ),
    "records-only": RECORDS,
}


@functools.cache
def rendered(scenario: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(SCENARIOS[scenario]))


def operator_env(objects: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in operator["env"] if "value" in e}


def gateway_container(env: dict[str, str]) -> dict[str, Any]:
    """The gateway container the operator renders with this install's settings."""
    deployment = render_deployment("team-a", [], settings_from_env(env).gateway)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# ------------------------------------------------------------------- lint and validation


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(scenario: str) -> None:
    assert_lint_clean(SCENARIOS[scenario])


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_objects_are_valid_kubernetes(scenario: str, version: str) -> None:
    for obj in rendered(scenario):
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, version, strict=True)
    # ... and so is the gateway the operator renders from these values.
    gateway = settings_from_env(operator_env(rendered(scenario))).gateway
    kubernetes_validate.validate(render_deployment("team-a", [], gateway), version, strict=True)


# ------------------------------------------------------------- values → operator → gateway


def test_the_values_reach_the_gateways() -> None:
    env = operator_env(rendered("all-three"))
    assert env["SERVEGATE_GATEWAY_RECORDS_DSN_SECRET"] == "servegate-records"
    assert env["SERVEGATE_GATEWAY_RECORDS_DSN_KEY"] == "dsn"
    assert env["SERVEGATE_GATEWAY_CA_BUNDLE_CONFIG_MAP"] == "corp-ca"
    assert env["SERVEGATE_GATEWAY_CA_BUNDLE_KEY"] == "ca.crt"  # the default key
    assert "SERVEGATE_GATEWAY_CA_BUNDLE_SECRET" not in env
    gateway = settings_from_env(env).gateway
    assert gateway.records_dsn_secret == SecretKey("servegate-records", "dsn")
    assert gateway.ca_bundle == CaBundle("configMap", "corp-ca", "ca.crt")
    container = gateway_container(env)
    assert container["env"][2:] == [
        {
            "name": "SERVEGATE_RECORDS_DSN",
            "valueFrom": {"secretKeyRef": {"name": "servegate-records", "key": "dsn"}},
        },
        {"name": "SERVEGATE_CA_BUNDLE", "value": "/etc/servegate/ca/ca-bundle.pem"},
        *PROXY_ENV,
    ]
    assert {"name": "ca-bundle", "mountPath": "/etc/servegate/ca", "readOnly": True} in container[
        "volumeMounts"
    ]


def test_a_secret_bundle_and_lowercase_proxy_reach_the_gateways() -> None:
    env = operator_env(rendered("namespaced-secret-bundle-file-auth"))
    gateway = settings_from_env(env).gateway
    assert gateway.ca_bundle == CaBundle("secret", "corp-ca", "bundle.pem")
    assert dict(gateway.env) == {"http_proxy": "http://proxy.corp.example:8080"}
    assert gateway.records_dsn_secret is None
    deployment = render_deployment("team-a", [], gateway)
    (volume,) = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "ca-bundle"
    ]
    assert volume["secret"] == {
        "secretName": "corp-ca",
        "items": [{"key": "bundle.pem", "path": "ca-bundle.pem"}],
        "defaultMode": 0o444,
    }


def test_off_by_default() -> None:
    values = chart().merge_values({})["gateway"]
    assert values["env"] == []
    assert values["records"] == {"dsnSecret": {"name": "", "key": "dsn"}}
    assert values["caBundle"] == {"configMap": "", "secret": "", "key": "ca.crt"}
    env = operator_env(render({}))
    assert env["SERVEGATE_GATEWAY_ENV"] == "[]"
    assert not any(
        name.startswith(("SERVEGATE_GATEWAY_RECORDS", "SERVEGATE_GATEWAY_CA")) for name in env
    )
    container = gateway_container(env)
    assert [e["name"] for e in container["env"]] == ["PYTHONUNBUFFERED", "HOME"]
    # A removed list (`--set gateway.env=null`) is no list, not an error.
    assert operator_env(render({"gateway": {"env": None}}))["SERVEGATE_GATEWAY_ENV"] == "[]"


# ------------------------------------------------------------------- the DSN stays secret


def test_no_value_can_hold_the_dsn() -> None:
    """The only way in is a Secret name: a `dsn` value does not exist, and the plain
    environment refuses SERVEGATE_RECORDS_DSN with the reason (the operator does too)."""
    dsn = "postgresql://servegate:pg-PASSWORD@postgres.db.svc/usage"
    for values in (
        {"gateway": {"records": {"dsn": dsn}}},
        {"gateway": {"records": {"dsnSecret": {"name": "records", "key": "dsn", "value": dsn}}}},
    ):
        with pytest.raises(helm_python.HelmValuesError, match="additional properties"):
            chart().validate_schema(values)
    plain = {"gateway": {"env": [{"name": "SERVEGATE_RECORDS_DSN", "value": dsn}]}}
    chart().validate_schema(plain)  # a well-formed variable ...
    message = helm_error(plain)  # ... that the install refuses, saying what to use instead
    assert "gateway.env[0] SERVEGATE_RECORDS_DSN: names starting with SERVEGATE_" in message
    assert "gateway.records.dsnSecret for SERVEGATE_RECORDS_DSN" in message
    assert "pg-PASSWORD" not in message
    # The configured install names the Secret, nowhere the DSN.
    text = yaml.safe_dump_all(rendered("all-three"))
    assert "servegate-records" in text and "postgresql://" not in text


# ---------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"env": {"HTTPS_PROXY": "http://proxy:3128"}},
            "at '/gateway/env': got object, want array",
        ),
        ({"env": [{"name": "HTTPS_PROXY"}]}, "at '/gateway/env/0': missing property 'value'"),
        (
            {"env": [{"name": "PROXY_PORT", "value": 3128}]},
            "at '/gateway/env/0/value': got number, want string",
        ),
        (
            {"env": [{"name": "1PROXY", "value": "x"}]},
            "at '/gateway/env/0/name': '1PROXY' does not match pattern",
        ),
        (
            {"env": [{"name": "DSN", "valueFrom": {"secretKeyRef": {"name": "a", "key": "b"}}}]},
            "at '/gateway/env/0': additional properties 'valueFrom' not allowed",
        ),
        (
            {"records": {"dsnSecret": {"name": "Records_DSN"}}},
            "at '/gateway/records/dsnSecret/name': 'Records_DSN' does not match pattern",
        ),
        (
            {"records": {"dsnSecret": {"name": "records", "key": ""}}},
            "at '/gateway/records/dsnSecret/key': '' does not match pattern",
        ),
        (
            {"records": {"dsnSecret": {"name": "records", "key": "..dsn"}}},
            "at '/gateway/records/dsnSecret/key': '..dsn' does not match pattern",
        ),
        ({"records": {"dsnSecret": "records"}}, "at '/gateway/records/dsnSecret': got string"),
        (
            {"caBundle": {"configMap": "corp ca"}},
            "at '/gateway/caBundle/configMap': 'corp ca' does not match pattern",
        ),
        (
            {"caBundle": {"secret": "corp-ca", "key": "a/ca.crt"}},
            "at '/gateway/caBundle/key': 'a/ca.crt' does not match pattern",
        ),
        (
            {"caBundle": {"configMapName": "corp-ca"}},
            "at '/gateway/caBundle': additional properties 'configMapName' not allowed",
        ),
        ({"caBundle": "corp-ca"}, "at '/gateway/caBundle': got string, want object"),
    ],
)
def test_values_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    values = {"gateway": values}
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart().validate_schema(values)
    assert message in str(caught.value)
    assert message in helm_error(values)  # an install fails the same way


@pytest.mark.parametrize(
    ("gateway", "message", "operator_message"),
    [
        (
            {"env": [{"name": "SERVEGATE_CA_BUNDLE", "value": "/etc/ssl/corp.pem"}]},
            "gateway.env[0] SERVEGATE_CA_BUNDLE: names starting with SERVEGATE_ are the "
            "gateway's own settings, which come from their typed values",
            "SERVEGATE_CA_BUNDLE: names starting with SERVEGATE_ are the gateway's own settings",
        ),
        (
            {"env": [*PROXY_ENV, {"name": "HOME", "value": "/home/gateway"}]},
            "gateway.env[2] HOME: set by the operator in every gateway container",
            "HOME is set by the operator",
        ),
        (
            {"env": [{"name": "PYTHONUNBUFFERED", "value": "0"}]},
            "gateway.env[0] PYTHONUNBUFFERED: set by the operator",
            "PYTHONUNBUFFERED is set by the operator",
        ),
        (
            {"env": [*PROXY_ENV, {"name": "NO_PROXY", "value": "*"}]},
            "gateway.env lists NO_PROXY twice",
            "SERVEGATE_GATEWAY_ENV lists NO_PROXY twice",
        ),
        (
            {"caBundle": {"configMap": "corp-ca", "secret": "corp-ca"}},
            'gateway.caBundle: set configMap ("corp-ca") or secret ("corp-ca"), not both',
            "the CA bundle comes from one ConfigMap or one Secret",
        ),
    ],
)
def test_names_the_gateway_owns_fail_the_install_with_the_reason(
    gateway: dict[str, Any], message: str, operator_message: str
) -> None:
    values = {"gateway": gateway}
    chart().validate_schema(values)  # well-formed values
    assert message in helm_error(values)
    # The operator refuses the same settings, from the environment the chart would set.
    env = operator_env(render({}))
    merged_values = chart().merge_values(values)["gateway"]
    env["SERVEGATE_GATEWAY_ENV"] = json.dumps(merged_values["env"])
    bundle = merged_values["caBundle"]
    env["SERVEGATE_GATEWAY_CA_BUNDLE_CONFIG_MAP"] = bundle["configMap"]
    env["SERVEGATE_GATEWAY_CA_BUNDLE_SECRET"] = bundle["secret"]
    with pytest.raises(ValueError, match=re.escape(operator_message)):
        settings_from_env(env)


# ------------------------------------------------------------------------------- the docs


def readme() -> str:
    return (CHART / "README.md").read_text()


def section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}.*?\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"a section {heading!r}"
    return match.group(1)


def yaml_blocks(text: str) -> list[dict[str, Any]]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_the_values_table_lists_them() -> None:
    text = readme()
    for value in (
        "`gateway.env`",
        "`gateway.records.dsnSecret.name`",
        "`gateway.caBundle.configMap`",
    ):
        assert f"\n| {value}" in text, value


def test_the_readme_proxy_example_installs_as_described() -> None:
    """Through the proxy only: the egress policy lets the gateways reach the proxy, not a
    provider directly, and the gateways get the proxy and the bundle."""
    text = section(readme(), "Egress proxy and private CAs")
    for name in ("HTTPS_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "SERVEGATE_", "extraTo"):
        assert name in text, name
    (example,) = yaml_blocks(text)
    chart().validate_schema(example)
    objects = render(example)
    (policy,) = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-gateway-egress")
    ]
    assert allows(policy, "10.20.0.5", 3128)  # the proxy
    assert not allows(policy, "104.18.7.192", 443)  # a provider, directly
    container = gateway_container(operator_env(objects))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HTTPS_PROXY"] == "http://10.20.0.5:3128"
    assert env["SERVEGATE_CA_BUNDLE"] == "/etc/servegate/ca/ca-bundle.pem"
    assert "/etc/servegate/ca/ca-bundle.pem" in text


def test_the_records_docs_examples_install_as_described() -> None:
    text = section(readme(), "Usage tracking and inference tables")
    (example,) = yaml_blocks(text)
    chart().validate_schema(example)
    records = (REPO / "docs" / "records.md").read_text()
    in_cluster = section(records, "In a cluster")
    # The README's Secret and docs/records.md's `helm upgrade --set`s give the same values.
    assert "kubectl create secret generic servegate-records" in text
    assert "kubectl create secret generic servegate-records" in in_cluster
    sets = dict(s.split("=", 1) for s in re.findall(r"--set (\S+)", in_cluster))
    from_sets: dict[str, Any] = {}
    for path, value in sets.items():
        node = from_sets
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    assert from_sets == example
    env = operator_env(render(copy.deepcopy(example)))
    (dsn,) = [e for e in gateway_container(env)["env"] if e["name"] == "SERVEGATE_RECORDS_DSN"]
    assert dsn["valueFrom"] == {"secretKeyRef": {"name": "servegate-records", "key": "dsn"}}
