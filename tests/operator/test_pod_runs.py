"""The rendered gateway pod really runs: the operator's Deployment, its volumes and
``servegate serve`` agree. A stand-in kubelet (kubelet.py) mounts the rendered ConfigMaps and
Secrets, starts the container's own command, and requests go through it to a simulator."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servegate.spec import ServingEndpointSpec
from servegate_operator.render.config import render_endpoint
from servegate_operator.render.gateway import render_deployment
from servegate_operator.settings import GatewayDefaults
from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    generation,
    http_chat,
    http_get,
    start_site,
    wait_for_generation,
)
from tests.operator.kubelet import Pod

KEY = "sk-pod-key"
PLAIN = "sk-pod-plaintext"


@pytest.fixture(scope="module")
def sim(background_loop: BackgroundLoop) -> Iterator[str]:
    from servegate.simulators.openai import create_openai_app

    runner, url = background_loop.run(
        start_site(create_openai_app(api_keys={KEY, PLAIN, "sk-rotated"}))
    )
    yield url + "/v1"
    background_loop.run(runner.cleanup())


def spec(base: str, key_field: dict[str, str]) -> ServingEndpointSpec:
    return ServingEndpointSpec.model_validate(
        {
            "config": {
                "served_entities": [
                    {
                        "external_model": {
                            "name": "gpt-4o-mini",
                            "provider": "openai",
                            "task": "llm/v1/chat",
                            "openai_config": {"openai_api_base": base, **key_field},
                        }
                    }
                ]
            }
        }
    )


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}


def test_rendered_gateway_pod_serves_through_its_mounts(
    tmp_path: Path, sim: str, background_loop: BackgroundLoop
) -> None:
    run = background_loop.run
    referenced = render_endpoint(
        "chat", "team-a", spec(sim, {"openai_api_key": "{{secrets/team_keys/openai}}"})
    )
    plaintext = render_endpoint("plain", "team-a", spec(sim, {"openai_api_key_plaintext": PLAIN}))
    assert plaintext.plaintext_secret is not None
    deployment = render_deployment("team-a", [referenced, plaintext], GatewayDefaults())
    objects: dict[tuple[str, str], dict[str, Any]] = {
        ("ConfigMap", referenced.config_map["metadata"]["name"]): referenced.config_map,
        ("ConfigMap", plaintext.config_map["metadata"]["name"]): plaintext.config_map,
        ("Secret", "team-keys"): secret("team-keys", {"openai": KEY, "unrelated": "never-mounted"}),
        ("Secret", plaintext.plaintext_secret["metadata"]["name"]): plaintext.plaintext_secret,
    }
    pod = Pod(deployment, objects, tmp_path / "pod")
    assert not any(
        "unrelated" in str(p) for p in (tmp_path / "pod").rglob("*")
    )  # only referenced keys
    gateway = GatewayProcess(pod.args, tmp_path / "pod.log", env=pod.env, port_zero=False)
    try:
        assert run(http_get(gateway.url + "/readyz"))["status"] == "ready"
        assert run(http_chat(gateway.url, "chat"))[0] == 200
        assert run(http_chat(gateway.url, "plain"))[0] == 200
        # Rotate the Secret: kubelet swaps ..data, the gateway reloads, no restart.
        gen = generation(background_loop, gateway.url)
        objects[("Secret", "team-keys")] = secret("team-keys", {"openai": "sk-rotated"})
        pod.update(objects)
        gen = wait_for_generation(background_loop, gateway.url, gen)
        assert run(http_chat(gateway.url, "chat"))[0] == 200
        # Delete it: only that endpoint goes NOT_READY, the other keeps serving.
        del objects[("Secret", "team-keys")]
        pod.update(objects)
        wait_for_generation(background_loop, gateway.url, gen)
        status, _, body = run(http_chat(gateway.url, "chat"))
        assert status == 503
        assert "team_keys" in body["message"]
        assert run(http_chat(gateway.url, "plain"))[0] == 200
    finally:
        gateway.stop()
    assert PLAIN not in gateway.logs() and KEY not in gateway.logs()
