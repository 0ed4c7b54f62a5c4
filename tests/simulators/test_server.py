"""Running the simulators as servers, the OpenAI-compatible (vLLM-like) simulator, and TLS."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import trustme

from servegate.simulators import (
    AzureSimConfig,
    CustomSimConfig,
    EntraSimConfig,
    OpenAISimConfig,
    RunningSimulators,
    SimulatorConfig,
    create_custom_app,
    run_simulators,
    serve_forever,
    server_ssl_context,
)

pytestmark = pytest.mark.timeout(20)

MESSAGES: Any = [{"role": "user", "content": "hi"}]


async def test_run_simulators_serves_every_simulator() -> None:
    config = SimulatorConfig(
        openai=OpenAISimConfig(api_keys=("sk-a",)),
        azure=AzureSimConfig(api_keys=("az",), deployments={"d": "gpt-4o"}),
        entra=EntraSimConfig(clients={"c": "s"}),
        custom=CustomSimConfig(bearer_token="tok"),
    )
    async with run_simulators(config) as sims, aiohttp.ClientSession() as http:
        async with openai.AsyncOpenAI(base_url=sims.openai_url, api_key="sk-a") as oa:
            via_openai = await oa.chat.completions.create(model="m", messages=MESSAGES)
        async with openai.AsyncAzureOpenAI(
            azure_endpoint=sims.azure_url, api_version="2024-06-01", api_key="az"
        ) as az:
            via_azure = await az.chat.completions.create(model="d", messages=MESSAGES)
        async with openai.AsyncOpenAI(base_url=sims.custom_url, api_key="tok") as custom:
            via_custom = await custom.chat.completions.create(model="m", messages=MESSAGES)
        discovery = f"{sims.entra_authority_host}/t/v2.0/.well-known/openid-configuration"
        async with http.get(discovery) as resp:
            document = await resp.json()

        urls = [sims.openai_url, sims.azure_url, sims.entra_authority_host, sims.custom_url]
        ports = {s.root_url for s in sims.all()}

    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    assert len(ports) == 4
    assert via_openai.model == "m"
    assert via_azure.model == "gpt-4o"
    assert via_custom.choices[0].message.content == "Simulated reply from m to: hi"
    assert document["token_endpoint"] == f"{sims.entra_authority_host}/t/oauth2/v2.0/token"


async def test_sections_left_out_are_not_started() -> None:
    config = SimulatorConfig(azure=None, entra=None, custom=None)
    async with run_simulators(config) as sims:
        assert [s.name for s in sims.all()] == ["openai"]
        with pytest.raises(RuntimeError, match="not running"):
            _ = sims.azure_url


async def test_entra_tls_needs_both_files(tmp_path: Path) -> None:
    config = SimulatorConfig(entra=EntraSimConfig(tls_cert=tmp_path / "cert.pem"))

    with pytest.raises(ValueError, match="both tls_cert and tls_key"):
        async with run_simulators(config):
            pass


async def test_serve_forever_reports_urls_and_stops_on_cancel() -> None:
    ready: asyncio.Future[RunningSimulators] = asyncio.get_running_loop().create_future()
    config = SimulatorConfig(azure=None, entra=None, custom=None)
    task = asyncio.create_task(serve_forever(config, on_ready=ready.set_result))

    sims = await asyncio.wait_for(ready, timeout=5)
    async with openai.AsyncOpenAI(
        base_url=sims.openai_url, api_key="sk-sim-openai", max_retries=0
    ) as client:
        listed = await client.models.list()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)

    assert listed.data
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{sims.openai_url}/models")


async def test_serve_forever_returns_on_sigterm() -> None:
    ready: asyncio.Future[RunningSimulators] = asyncio.get_running_loop().create_future()
    config = SimulatorConfig(openai=None, azure=None, entra=None)
    task = asyncio.create_task(serve_forever(config, on_ready=ready.set_result))
    await asyncio.wait_for(ready, timeout=5)
    # Only signal ourselves if serve_forever really took over SIGTERM.
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL

    os.kill(os.getpid(), signal.SIGTERM)

    await asyncio.wait_for(task, timeout=5)
    assert not task.cancelled()


# --- OpenAI-compatible (vLLM-like) simulator ---------------------------------------


async def test_custom_server_accepts_extra_params_and_no_model(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_custom_app(bearer_token="vllm-token"))
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="vllm-token", max_retries=0
    ) as client:
        result = await client.chat.completions.create(
            model="llama", messages=MESSAGES, extra_body={"top_k": 5, "repetition_penalty": 1.1}
        )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.make_url("/v1/chat/completions"),
            json={"messages": MESSAGES},
            headers={"Authorization": "Bearer vllm-token"},
        ) as resp,
    ):
        without_model = await resp.json()

    assert result.choices[0].message.content == "Simulated reply from llama to: hi"
    assert without_model["model"] == "simulated-model"


async def test_custom_server_bearer_auth(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_custom_app(bearer_token="vllm-token"))
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key="wrong", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model="m", messages=MESSAGES)

    assert caught.value.response.json() == {"error": "Unauthorized"}  # vLLM's body


async def test_custom_server_api_key_header(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_custom_app(api_key_header=("X-Api-Key", "k1")))
    url = server.make_url("/v1/embeddings")
    body = {"model": "e", "input": "x"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers={"X-Api-Key": "k1"}) as good:
            good_status = good.status
        async with http.post(url, json=body, headers={"X-Api-Key": "k2"}) as bad:
            bad_status = bad.status
        async with http.post(url, json=body) as missing:
            missing_status = missing.status

    assert (good_status, bad_status, missing_status) == (200, 401, 401)


async def test_custom_server_without_auth_accepts_anyone(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_custom_app())
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url("/v1/completions"), json={"prompt": "p"}) as resp,
    ):
        assert resp.status == 200


# --- TLS helper --------------------------------------------------------------------


@pytest.mark.parametrize("as_text", [False, True])
async def test_server_ssl_context_from_paths_or_pem(tmp_path: Path, as_text: bool) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert_path))
    leaf.private_key_pem.write_to_path(str(key_path))
    if as_text:
        context = server_ssl_context(leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())
    else:
        context = server_ssl_context(cert_path, key_path)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    config = SimulatorConfig(openai=None, azure=None, custom=None)
    async with run_simulators(config) as plain:
        assert plain.entra_authority_host.startswith("http://")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_context), timeout=5
        )
        peer = writer.get_extra_info("peercert")
        writer.close()

    assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
