"""The gateways' egress NetworkPolicy (networkPolicy.gateway.egress), rendered by the real
Helm engine like the rest of the chart (see test_chart.py).

Off unless both switches are on; when on, one policy per gateway namespace that Kubernetes'
own schemas accept, whose rules let the gateway pods reach DNS, TCP 443 on public addresses
(never the metadata range or the private ones), the API server (gateway.auth kubernetes
only) and extraTo, as an evaluation of the rendered rules shows.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from servegate_operator.render.gateway import render_deployment
from servegate_operator.render.labels import gateway_selector
from servegate_operator.settings import settings_from_env
from tests.helm.test_chart import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACED,
    REPO,
    assert_lint_clean,
    chart,
    helm_error,
    merged,
    render,
)

EGRESS_NAME = "servegate-gateway-egress"
API_SERVER = ["10.96.0.1/32", "172.18.0.2/32"]
CLUSTER_WIDE: dict[str, Any] = {
    "networkPolicy": {
        "enabled": True,
        "gateway": {
            "namespaces": ["team-a", "team-b"],
            "egress": {"enabled": True, "apiServerCidrs": API_SERVER},
        },
    }
}
REDIS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "cache"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "cluster-wide": CLUSTER_WIDE,
    "namespaced": merged(
        NAMESPACED,
        {"networkPolicy": {"enabled": True, "gateway": {"egress": {"enabled": True}}}},
        # The operator's API server addresses serve the gateways too.
        {"networkPolicy": {"operator": {"apiServerCidrs": API_SERVER}}},
    ),
    "file-auth": merged(
        CLUSTER_WIDE,
        {
            "gateway": {"auth": "file"},
            "networkPolicy": {"gateway": {"egress": {"apiServerCidrs": []}}},
        },
    ),
    "customised": merged(
        CLUSTER_WIDE,
        {
            "gateway": {"controlPlane": True, "redisUrl": "redis://redis.cache.svc:6379/0"},
            "networkPolicy": {
                "gateway": {
                    "egress": {
                        "dnsTo": [
                            {"namespaceSelector": {"matchLabels": {"dns": "yes"}}},
                            {"ipBlock": {"cidr": "169.254.20.10/32"}},
                        ],
                        "ports": [443, 8443],
                        "exceptCidrs": ["169.254.0.0/16", "10.0.0.0/8"],
                        "apiServerPorts": [6443],
                        "extraTo": [REDIS_PEER],
                    }
                }
            },
        },
    ),
    "proxy-only": merged(
        CLUSTER_WIDE,
        {
            "networkPolicy": {
                "gateway": {
                    "egress": {
                        "ports": [],
                        "extraTo": [{"ipBlock": {"cidr": "10.20.0.5/32"}}],
                    }
                }
            }
        },
    ),
}


@functools.cache
def rendered(scenario: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(SCENARIOS[scenario]))


def egress_policies(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The egress policies of a render, by namespace."""
    return {
        o["metadata"]["namespace"]: o
        for o in render(values)
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == EGRESS_NAME
    }


def egress_policy(scenario: str, namespace: str = "team-a") -> dict[str, Any]:
    (policy,) = [
        o
        for o in rendered(scenario)
        if o["kind"] == "NetworkPolicy"
        and o["metadata"]["name"] == EGRESS_NAME
        and o["metadata"]["namespace"] == namespace
    ]
    return policy


def gateway_pod(scenario: str) -> dict[str, Any]:
    """The pod template of the gateway the operator renders with this install's settings."""
    (deployment,) = [o for o in rendered(scenario) if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    template: dict[str, Any] = render_deployment("team-a", [], settings_from_env(env).gateway)[
        "spec"
    ]["template"]
    return template


def allows(policy: dict[str, Any], address: str, port: int, protocol: str = "TCP") -> bool:
    """Whether the policy's ipBlock rules let a gateway pod connect to ``address:port``
    (NetworkPolicy semantics: any rule whose ports and peers both match; no ports: every
    port; an ipBlock matches its cidr less its except ranges). Selector peers (pods) are
    not addresses and never match here."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        ports = rule.get("ports")
        if ports and not any(p["port"] == port and p["protocol"] == protocol for p in ports):
            continue
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block is None:
                continue
            network = ipaddress.ip_network(block["cidr"])
            if ip.version != network.version or ip not in network:
                continue
            excepted = [ipaddress.ip_network(c) for c in block.get("except", [])]
            if not any(ip in e for e in excepted if e.version == ip.version):
                return True
    return False


# ------------------------------------------------------------------------------- on / off


def test_the_egress_policy_is_off_by_default() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert defaults["networkPolicy"]["gateway"]["egress"]["enabled"] is False
    assert egress_policies({}) == {}
    # networkPolicy.enabled alone: the ingress and operator policies, no egress one.
    ingress_only = {"networkPolicy": {"enabled": True, "gateway": {"namespaces": ["team-a"]}}}
    names = sorted(
        o["metadata"]["name"] for o in render(ingress_only) if o["kind"] == "NetworkPolicy"
    )
    assert names == ["servegate-gateway", "servegate-operator"]
    # egress.enabled alone: nothing (networkPolicy.enabled is the master switch).
    egress_alone = {"networkPolicy": {"gateway": {"egress": {"enabled": True}}}}
    assert not [o for o in render(egress_alone) if o["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_egress_policy_goes_where_the_ingress_policy_goes(scenario: str) -> None:
    policies = [o for o in rendered(scenario) if o["kind"] == "NetworkPolicy"]
    ingress = sorted(
        o["metadata"]["namespace"] for o in policies if o["metadata"]["name"] == "servegate-gateway"
    )
    egress = sorted(
        o["metadata"]["namespace"] for o in policies if o["metadata"]["name"] == EGRESS_NAME
    )
    assert egress == ingress == ["team-a", "team-b"]
    for namespace in egress:
        policy = egress_policy(scenario, namespace)
        assert policy["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"
        assert policy["spec"]["policyTypes"] == ["Egress"]
        assert policy["spec"]["podSelector"] == {"matchLabels": gateway_selector()}
        assert "ingress" not in policy["spec"]


def test_it_selects_the_pods_the_operator_renders() -> None:
    pod = gateway_pod("cluster-wide")
    selector = egress_policy("cluster-wide")["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()


# ------------------------------------------------------------------- Kubernetes' schemas


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_egress_policy_is_valid_kubernetes(scenario: str, version: str) -> None:
    for namespace in ("team-a", "team-b"):
        policy = egress_policy(scenario, namespace)
        kubernetes_validate.validate(policy, version, strict=True)
        # What the API server checks beyond the schema: each except range lies strictly
        # inside its block's cidr, of the same IP family.
        for rule in policy["spec"]["egress"]:
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                    for cidr in peer["ipBlock"].get("except", []):
                        inner = ipaddress.ip_network(cidr)
                        assert inner.version == network.version, (network, inner)
                        assert inner.subnet_of(network) and inner != network  # type: ignore[arg-type]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean_with_the_egress_policy(scenario: str) -> None:
    assert_lint_clean(SCENARIOS[scenario])


# ---------------------------------------------------------------------------- the rules


def test_the_default_rules() -> None:
    dns, providers, api_server = egress_policy("cluster-wide")["spec"]["egress"]
    assert dns == {
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
    }
    assert providers == {
        "ports": [{"protocol": "TCP", "port": 443}],
        "to": [
            {
                "ipBlock": {
                    "cidr": "0.0.0.0/0",
                    "except": [
                        "169.254.0.0/16",
                        "10.0.0.0/8",
                        "172.16.0.0/12",
                        "192.168.0.0/16",
                        "100.64.0.0/10",
                    ],
                }
            },
            {"ipBlock": {"cidr": "::/0", "except": ["fd00::/8", "fe80::/10"]}},
        ],
    }
    assert api_server == {
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
        "to": [{"ipBlock": {"cidr": cidr}} for cidr in API_SERVER],
    }


@pytest.mark.parametrize(
    ("address", "port", "allowed"),
    [
        # Providers: public addresses on 443, IPv4 and IPv6.
        ("104.18.7.192", 443, True),  # api.openai.com's CDN
        ("2606:4700::6812:7c0", 443, True),
        ("8.8.8.8", 80, False),  # other ports: no
        ("8.8.8.8", 22, False),
        # The cloud metadata endpoints (AWS, GCP, Azure; AWS over IPv6), on any port.
        ("169.254.169.254", 80, False),
        ("169.254.169.254", 443, False),
        ("169.254.170.2", 443, False),  # ECS task metadata
        ("fd00:ec2::254", 80, False),
        ("fd00:ec2::254", 443, False),
        ("fe80::1", 443, False),
        # The cluster: pods, Services, nodes in the private ranges.
        ("10.0.0.1", 443, False),
        ("10.244.1.17", 443, False),
        ("172.16.0.10", 443, False),
        ("172.31.255.254", 443, False),
        ("192.168.1.1", 443, False),
        ("100.64.0.10", 443, False),
        ("fd12:3456::1", 443, False),
        # Just outside the private ranges: public, allowed.
        ("172.32.0.1", 443, True),
        ("11.0.0.1", 443, True),
        # The API server: its ClusterIP and its endpoint, on its ports only.
        ("10.96.0.1", 443, True),
        ("172.18.0.2", 6443, True),
        ("10.96.0.1", 6443, True),
        ("10.96.0.1", 80, False),
        ("10.96.0.2", 443, False),  # the next Service over
        ("172.18.0.3", 6443, False),
    ],
)
def test_what_the_default_rules_let_the_gateway_reach(
    address: str, port: int, allowed: bool
) -> None:
    policy = egress_policy("cluster-wide")
    assert allows(policy, address, port) is allowed
    assert not allows(policy, address, 53)  # DNS goes to the kube-dns pods only


def test_dns_reaches_kube_dns_only() -> None:
    dns = egress_policy("cluster-wide")["spec"]["egress"][0]
    assert {p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}
    assert all("ipBlock" not in peer for peer in dns["to"])


def test_the_api_server_rule_follows_the_gateways_need_for_it() -> None:
    """The rule is there exactly when the operator gives the gateway pods a ServiceAccount
    token (gateway.auth kubernetes: reviews, and controlPlane's writes)."""
    for scenario in SCENARIOS:
        mounts_token = gateway_pod(scenario)["spec"]["automountServiceAccountToken"]
        policy = egress_policy(scenario)
        reaches_api_server = allows(policy, "10.96.0.1", 6443)
        assert reaches_api_server is mounts_token, scenario
    # file auth: no API server rule, and the ClusterIP is a private address like any other.
    file_auth = egress_policy("file-auth")
    assert [len(r["to"]) for r in file_auth["spec"]["egress"]] == [1, 2]
    assert not allows(file_auth, "10.96.0.1", 443)


def test_the_api_server_cidrs_default_to_the_operators() -> None:
    namespaced = egress_policy("namespaced")["spec"]["egress"][2]
    assert namespaced["to"] == [{"ipBlock": {"cidr": cidr}} for cidr in API_SERVER]
    own = merged(
        SCENARIOS["namespaced"],
        {"networkPolicy": {"gateway": {"egress": {"apiServerCidrs": ["192.168.5.5/32"]}}}},
    )
    rule = egress_policies(own)["team-a"]["spec"]["egress"][2]
    assert rule["to"] == [{"ipBlock": {"cidr": "192.168.5.5/32"}}]


def test_without_api_server_addresses_the_install_fails() -> None:
    """Any address on 443/6443 would undo every exception: the install says what to set."""
    values = {
        "networkPolicy": {
            "enabled": True,
            "gateway": {"namespaces": ["team-a"], "egress": {"enabled": True}},
        }
    }
    chart().validate_schema(values)  # each value alone is fine
    message = helm_error(values)
    assert "networkPolicy.gateway.egress.enabled with gateway.auth kubernetes" in message
    assert "set networkPolicy.gateway.egress.apiServerCidrs" in message
    assert "(or networkPolicy.operator.apiServerCidrs)" in message
    # gateway.auth file needs no API server: the same values install.
    file_auth = merged(values, {"gateway": {"auth": "file"}})
    assert set(egress_policies(file_auth)) == {"team-a"}


def test_the_rules_follow_the_values() -> None:
    dns, providers, api_server, extra = egress_policy("customised")["spec"]["egress"]
    assert dns["to"] == SCENARIOS["customised"]["networkPolicy"]["gateway"]["egress"]["dnsTo"]
    assert providers["ports"] == [
        {"protocol": "TCP", "port": 443},
        {"protocol": "TCP", "port": 8443},
    ]
    # IPv4-only exceptions: the IPv6 block has none (an empty except is no except).
    assert providers["to"] == [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16", "10.0.0.0/8"]}},
        {"ipBlock": {"cidr": "::/0"}},
    ]
    assert api_server["ports"] == [{"protocol": "TCP", "port": 6443}]
    assert extra == {"to": [REDIS_PEER]}  # every port
    policy = egress_policy("customised")
    assert allows(policy, "192.168.1.1", 8443)  # no longer excepted
    assert not allows(policy, "10.96.0.1", 443)  # the API server on 6443 only


def test_empty_ports_leave_only_dns_the_api_server_and_extra_to() -> None:
    policy = egress_policy("proxy-only")
    assert len(policy["spec"]["egress"]) == 4 - 1
    assert not allows(policy, "104.18.7.192", 443)
    assert allows(policy, "10.20.0.5", 3128)  # the proxy in extraTo, on any port
    assert allows(policy, "10.96.0.1", 443)


# --------------------------------------------------------------------------- values schema


@pytest.mark.parametrize(
    ("egress", "message"),
    [
        (
            {"enabled": "yes"},
            "at '/networkPolicy/gateway/egress/enabled': got string, want boolean",
        ),
        ({"ports": [0]}, "at '/networkPolicy/gateway/egress/ports/0': minimum: got 0, want 1"),
        (
            {"ports": ["https"]},
            "at '/networkPolicy/gateway/egress/ports/0': got string, want integer",
        ),
        (
            {"ports": [443, 443]},
            "at '/networkPolicy/gateway/egress/ports': items at 0 and 1 are equal",
        ),
        ({"apiServerPorts": []}, "at '/networkPolicy/gateway/egress/apiServerPorts': minItems"),
        ({"apiServerPorts": [70000]}, "maximum: got 70,000, want 65,535"),
        ({"dnsTo": []}, "at '/networkPolicy/gateway/egress/dnsTo': minItems"),
        ({"dnsTo": [{}]}, "at '/networkPolicy/gateway/egress/dnsTo/0': minProperties"),
        (
            {"extraTo": [{"podSelectors": {}}]},
            "at '/networkPolicy/gateway/egress/extraTo/0': additional properties 'podSelectors' not allowed",
        ),
        (
            {"exceptCidrs": ["169.254.169.254"]},
            "at '/networkPolicy/gateway/egress/exceptCidrs/0': '169.254.169.254' does not match pattern",
        ),
        (
            {"exceptCidrs": ["10.0.0.0/33"]},
            "at '/networkPolicy/gateway/egress/exceptCidrs/0': '10.0.0.0/33' does not match pattern",
        ),
        (
            {"apiServerCidrs": ["kubernetes.default.svc"]},
            "at '/networkPolicy/gateway/egress/apiServerCidrs/0': 'kubernetes.default.svc' does not match",
        ),
        (
            {"allowMetadata": True},
            "at '/networkPolicy/gateway/egress': additional properties 'allowMetadata' not allowed",
        ),
    ],
)
def test_values_schema_rejects_bad_egress_values(egress: dict[str, Any], message: str) -> None:
    values = {"networkPolicy": {"gateway": {"egress": egress}}}
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart().validate_schema(values)
    assert message in str(caught.value)
    assert message in helm_error(values)  # an install fails the same way


@pytest.mark.parametrize(
    "cidr", ["0.0.0.0/0", "10.96.0.1/32", "::/0", "fd00::/8", "2001:db8::1/128", "fe80::/10"]
)
def test_values_schema_accepts_cidrs(cidr: str) -> None:
    chart().validate_schema(
        {
            "networkPolicy": {
                "gateway": {"egress": {"exceptCidrs": [cidr], "apiServerCidrs": [cidr]}}
            }
        }
    )


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_values_schema_accepts_the_scenarios(scenario: str) -> None:
    chart().validate_schema(SCENARIOS[scenario])


# ---------------------------------------------------------------------------------- docs


def egress_defaults() -> dict[str, Any]:
    egress: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"][
        "gateway"
    ]["egress"]
    return egress


def readme_section() -> str:
    text = (CHART / "README.md").read_text()
    match = re.search(r"^## NetworkPolicies\n(.*?)^## ", text, re.M | re.S)
    assert match, "the chart README has a NetworkPolicies section"
    return match.group(1)


def test_the_chart_readme_documents_the_egress_policy() -> None:
    section = readme_section()
    assert "### The gateways' egress" in section
    assert EGRESS_NAME.replace("servegate", "<fullname>") in section
    for key in egress_defaults():
        if key != "enabled":
            assert f"`{key}`" in section, key
    assert "`networkPolicy.gateway.egress.enabled: true`" in section
    for cidr in egress_defaults()["exceptCidrs"]:
        assert f"`{cidr}`" in section, cidr
    assert "`gateway.auth: kubernetes`" in section and "install fails" in section
    # The example values in the section are valid values and install as described.
    (example,) = [
        yaml.safe_load(block)
        for block in re.findall(r"```yaml\n(.*?)```", section, re.S)
        if "egress" in block
    ]
    chart().validate_schema(example)
    policy = egress_policies(example)["team-a"]
    assert allows(policy, "104.18.7.192", 443) and not allows(policy, "169.254.169.254", 80)
    assert policy["spec"]["egress"][-1] == {
        "to": example["networkPolicy"]["gateway"]["egress"]["extraTo"]
    }


def test_security_md_names_the_values() -> None:
    text = (REPO / "SECURITY.md").read_text()
    (bullet,) = [b for b in text.split("\n- ") if b.startswith("Restrict the gateway's egress")]
    for name in (
        "networkPolicy.enabled",
        "networkPolicy.gateway.egress.enabled",
        "dnsTo",
        "ports",
        "exceptCidrs",
        "apiServerCidrs",
        "extraTo",
    ):
        assert f"`{name}`" in bullet, name
    assert "169.254.0.0/16" in bullet
