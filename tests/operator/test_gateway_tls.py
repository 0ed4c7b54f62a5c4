"""``gateway.tls.secretName`` (SERVEGATE_GATEWAY_TLS_SECRET): the rendered gateway mounts
the ``kubernetes.io/tls`` Secret (not optional), runs ``servegate serve --tls-cert
--tls-key``, probes over HTTPS, and its Service exposes 443 ``https``. The rendered pod,
run by the stand-in kubelet, serves HTTPS with the Secret and serves its renewal without a
restart; without the Secret it does not start."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import trustme

from servegate import cli as gateway_cli
from servegate_operator.render.config import render_endpoint
from servegate_operator.render.gateway import render_deployment, render_service
from servegate_operator.settings import GatewayDefaults, settings_from_env
from tests.conftest import BackgroundLoop, GatewayProcess, start_site
from tests.operator.kubelet import Pod
from tests.operator.test_pod_runs import KEY, secret, spec
from tests.proxy.test_tls import Leaf, wait_for_certificate

KUBE_VERSIONS = ("1.27", "1.30", "1.33")
TLS = GatewayDefaults(tls_secret="gateway-tls")


def tls_secret(name: str, leaf: Leaf) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret as cert-manager writes it (with ``ca.crt``)."""
    data = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem, "ca.crt": leaf.ca.cert_pem.bytes()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# ------------------------------------------------------------------------------- render


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_tls_renders_valid_kubernetes_objects(version: str) -> None:
    chat = render_endpoint(
        "chat", "team-a", spec("http://sim/v1", {"openai_api_key": "{{secrets/keys/openai}}"})
    )
    for gateway in (TLS, GatewayDefaults(tls_secret="gateway-tls", auth_mode="kubernetes")):
        kubernetes_validate.validate(render_deployment("team-a", [chat], gateway), version, True)
        kubernetes_validate.validate(render_service("team-a", gateway), version, True)


def test_tls_mounts_the_secret_and_serves_https() -> None:
    deployment = render_deployment("team-a", [], TLS)
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)
    args = container["args"]
    at = args.index("--tls-cert")
    assert args[at : at + 4] == [
        "--tls-cert",
        "/etc/servegate/tls/tls.crt",
        "--tls-key",
        "/etc/servegate/tls/tls.key",
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"] == {
        "name": "tls",
        "secret": {
            "secretName": "gateway-tls",  # not optional: no pod without it
            "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}],
            "defaultMode": 0o440,  # the pod's fsGroup reads it, nobody else
        },
    }
    assert {"name": "tls", "mountPath": "/etc/servegate/tls", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
        assert container[probe]["httpGet"]["port"] == "http"
    # The container port keeps its name: the probes and the NetworkPolicy name it.
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    # The gateway's own parser takes the rendered arguments.
    parsed = gateway_cli.build_parser().parse_args(args)
    assert (parsed.tls_cert, parsed.tls_key) == (
        Path("/etc/servegate/tls/tls.crt"),
        Path("/etc/servegate/tls/tls.key"),
    )


def test_tls_moves_the_service_to_443_https() -> None:
    assert render_service("team-a", TLS)["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "http", "protocol": "TCP"}
    ]


def test_without_tls_nothing_changes() -> None:
    deployment = render_deployment("team-a", [], GatewayDefaults())
    container = container_of(deployment)
    assert not any(arg.startswith("--tls") for arg in container["args"])
    assert "tls" not in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert "scheme" not in container[probe]["httpGet"]  # HTTP, the default
    assert render_service("team-a", GatewayDefaults())["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]


def test_tls_secret_from_env() -> None:
    assert settings_from_env({}).gateway.tls_secret is None
    assert settings_from_env({"SERVEGATE_GATEWAY_TLS_SECRET": ""}).gateway.tls_secret is None
    env = {"SERVEGATE_GATEWAY_TLS_SECRET": "gateway-tls"}
    assert settings_from_env(env).gateway.tls_secret == "gateway-tls"
    for bad in ("Gateway_TLS", "-tls", "a" * 254):
        with pytest.raises(ValueError, match="SERVEGATE_GATEWAY_TLS_SECRET must be a Secret name"):
            settings_from_env({"SERVEGATE_GATEWAY_TLS_SECRET": bad})


# ------------------------------------------------------------------------- the pod runs


@pytest.fixture(scope="module")
def sim(background_loop: BackgroundLoop) -> Iterator[str]:
    from servegate.simulators.openai import create_openai_app

    runner, url = background_loop.run(start_site(create_openai_app(api_keys={KEY})))
    yield url + "/v1"
    background_loop.run(runner.cleanup())


async def probe(url: str, container: dict[str, Any], name: str) -> int:
    """kubelet's HTTPS probe: the probe's scheme and path, no certificate verification."""
    get = container[name]["httpGet"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    origin = url.replace("https://", f"{get['scheme'].lower()}://", 1)
    async with (
        aiohttp.ClientSession() as session,
        session.get(origin + get["path"], ssl=context) as response,
    ):
        return response.status


async def query(url: str, leaf: Leaf) -> int:
    context = ssl.create_default_context()
    leaf.ca.configure_trust(context)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/serving-endpoints/chat/invocations",
            json={"messages": [{"role": "user", "content": "hi"}]},
            ssl=context,
        ) as response,
    ):
        return response.status


def test_the_rendered_pod_serves_https_and_its_renewed_certificate(
    tmp_path: Path, sim: str, background_loop: BackgroundLoop
) -> None:
    run = background_loop.run
    chat = render_endpoint(
        "chat", "team-a", spec(sim, {"openai_api_key": "{{secrets/keys/openai}}"})
    )
    deployment = render_deployment("team-a", [chat], TLS)
    first = Leaf.issue(trustme.CA())
    objects: dict[tuple[str, str], dict[str, Any]] = {
        ("ConfigMap", chat.config_map["metadata"]["name"]): chat.config_map,
        ("Secret", "keys"): secret("keys", {"openai": KEY}),
        ("Secret", "gateway-tls"): tls_secret("gateway-tls", first),
    }
    pod = Pod(deployment, objects, tmp_path / "pod")
    assert sorted(p.name for p in (tmp_path / "pod" / "tls").iterdir() if p.is_symlink()) == [
        "..data",
        "tls.crt",
        "tls.key",  # the items only: not ca.crt
    ]
    gateway = GatewayProcess(pod.args, tmp_path / "pod.log", env=pod.env, port_zero=False)
    try:
        assert gateway.url.startswith("https://")
        for name in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert run(probe(gateway.url, pod.container, name)) == 200
        assert run(query(gateway.url, first)) == 200
        # cert-manager renews the Secret; kubelet swaps the mount's ..data; no restart.
        renewed = Leaf.issue(first.ca)
        objects[("Secret", "gateway-tls")] = tls_secret("gateway-tls", renewed)
        pod.update(objects)
        wait_for_certificate(gateway.url, renewed)
        assert run(query(gateway.url, renewed)) == 200
        assert gateway.proc.poll() is None
    finally:
        gateway.stop()
    assert f"TLS certificate reloaded from {pod.mounts['/etc/servegate/tls']}" in gateway.logs()


def test_without_the_secret_the_pod_does_not_start(tmp_path: Path) -> None:
    deployment = render_deployment("team-a", [], TLS)
    with pytest.raises(FileNotFoundError, match="Secret gateway-tls is not optional"):
        Pod(deployment, {}, tmp_path / "pod")
