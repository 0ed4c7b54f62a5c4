"""Secret canaries: a plaintext key and a referenced key must never appear in logs, error
bodies, GET responses, /v1/models or /metrics, whatever the gateway is put through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    endpoint_doc,
    openai_entity,
    start_site,
    write_secret,
    write_yaml,
)

PLAINTEXT = "sk-PLAINTEXT-CANARY-7d1e0b"
REFERENCED = "sk-REFERENCED-CANARY-93ac55"


async def _call(method: str, url: str, body: Any = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.request(method, url, json=body) as r:
        return r.status, await r.text()


@pytest.fixture
def sim(background_loop: BackgroundLoop) -> Iterator[str]:
    from servegate.simulators.openai import create_openai_app

    runner, url = background_loop.run(
        start_site(create_openai_app(api_keys={PLAINTEXT, REFERENCED}))
    )
    yield url
    background_loop.run(runner.cleanup())


def test_canaries_never_leak(tmp_path: Path, sim: str, background_loop: BackgroundLoop) -> None:
    run = background_loop.run
    write_secret(tmp_path / "secrets", "team_a", "openai", REFERENCED)
    plain = openai_entity("plain-model", sim + "/v1")
    del plain["external_model"]["openai_config"]["openai_api_key"]
    plain["external_model"]["openai_config"]["openai_api_key_plaintext"] = PLAINTEXT
    ref = openai_entity("ref-model", sim + "/v1")
    ref["external_model"]["openai_config"]["openai_api_key"] = "{{secrets/team_a/openai}}"
    invalid = openai_entity("x", sim + "/v1")
    invalid["external_model"]["openai_config"]["openai_api_key_plaintext"] = (
        PLAINTEXT  # both of a pair
    )
    write_yaml(
        tmp_path / "m" / "e.yaml",
        endpoint_doc("plain", [plain]),
        endpoint_doc("ref", [ref]),
        endpoint_doc("invalid", [invalid]),
    )
    gw = GatewayProcess(
        [
            "--log-level",
            "DEBUG",
            "serve",
            str(tmp_path / "m"),
            "--secrets-dir",
            str(tmp_path / "secrets"),
            "--access-log",
        ],
        tmp_path / "gw.log",
    )
    seen: list[str] = []
    try:
        query = {"messages": [{"role": "user", "content": "hi"}]}
        for name in ("plain", "ref"):
            status, body = run(
                _call("POST", f"{gw.url}/serving-endpoints/{name}/invocations", query)
            )
            assert status == 200
            seen.append(body)
            status, body = run(
                _call(
                    "POST",
                    f"{gw.url}/serving-endpoints/{name}/invocations",
                    {**query, "stream": True},
                )
            )
            seen.append(body)
        # An upstream that echoes the key it was given, in full, in its error body.
        for model, key in (("plain-model", PLAINTEXT), ("ref-model", REFERENCED)):
            fault = {
                "model": model,
                "status": 400,
                "times": 1,
                "body": {"error": {"message": f"key {key} is not allowed here", "code": "bad"}},
            }
            run(_call("POST", sim + "/_sim/faults", fault))
        for name in ("plain", "ref"):
            status, body = run(
                _call("POST", f"{gw.url}/serving-endpoints/{name}/invocations", query)
            )
            assert status == 400
            assert "[REDACTED]" in body
            seen.append(body)
        status, body = run(_call("POST", f"{gw.url}/serving-endpoints/invalid/invocations", query))
        assert status == 503
        seen.append(body)
        reads: dict[str, str] = {}
        for path in (
            "/api/2.0/serving-endpoints",
            "/api/2.0/serving-endpoints/plain",
            "/api/2.0/serving-endpoints/ref",
            "/api/2.0/serving-endpoints/invalid",
            "/v1/models",
            "/metrics",
            "/readyz",
        ):
            status, reads[path] = run(_call("GET", gw.url + path))
            assert status == 200, path
        seen.extend(reads.values())
        # References are echoed verbatim; plaintext fields are dropped whole.
        assert "{{secrets/team_a/openai}}" in reads["/api/2.0/serving-endpoints/ref"]
        assert "openai_api_key_plaintext" not in reads["/api/2.0/serving-endpoints/plain"]
    finally:
        gw.stop()
    logs = gw.logs()
    assert "request_id=" in logs  # the access log did run at DEBUG
    for canary in (PLAINTEXT, REFERENCED):
        assert canary not in logs
        for body in seen:
            assert canary not in body
