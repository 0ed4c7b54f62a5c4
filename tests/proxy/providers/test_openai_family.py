"""Every OpenAI-format provider end to end through the gateway, against the simulators:
Azure OpenAI by key, Azure OpenAI by Microsoft Entra ID (a real MSAL client-credentials
exchange over TLS), a custom OpenAI-compatible server, and servegate in front of servegate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient

from servegate.simulators.server import (
    AzureSimConfig,
    CustomSimConfig,
    EntraSimConfig,
    OpenAISimConfig,
    RunningSimulators,
    SimulatorConfig,
    run_simulators,
)
from servegate.transport.credentials import CredentialRegistry
from tests.conftest import (
    Workspace,
    endpoint_doc,
    openai_entity,
    start_site,
    write_auth_file,
    write_secret,
    write_yaml,
)

Client = TestClient[Any, Any]
AZURE_KEY = "az-key-1"
ENTRA_SECRET = "entra-secret-CANARY"
CUSTOM_TOKEN = "custom-bearer-1"
CHAT = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def sims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningSimulators]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_path))  # MSAL (requests) trusts the test CA
    config = SimulatorConfig(
        openai=OpenAISimConfig(api_keys=("unused",)),
        azure=AzureSimConfig(api_keys=(AZURE_KEY,)),
        entra=EntraSimConfig(
            clients={"client-1": ENTRA_SECRET}, tls_cert=cert_path, tls_key=key_path
        ),
        custom=CustomSimConfig(bearer_token=CUSTOM_TOKEN),
    )
    async with run_simulators(config) as running:
        yield running


def azure_entity(base: str, api_type: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "openai_api_type": api_type,
        "openai_api_base": base,
        "openai_deployment_name": "gpt4o-prod",
        "openai_api_version": "2024-06-01",
    }
    if api_type == "azure":
        config["openai_api_key"] = "{{secrets/azure/key}}"
    else:
        config |= {
            "microsoft_entra_tenant_id": "tenant-1",
            "microsoft_entra_client_id": "client-1",
            "microsoft_entra_client_secret": "{{secrets/azure/entra}}",
        }
    return {
        "external_model": {
            "name": "gpt-4o",
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": config,
        }
    }


@pytest.fixture
async def client(
    sims: RunningSimulators,
    workspace: Workspace,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Client:
    write_secret(workspace.secrets, "azure", "key", AZURE_KEY)
    write_secret(workspace.secrets, "azure", "entra", ENTRA_SECRET)
    write_secret(workspace.secrets, "local", "token", CUSTOM_TOKEN)
    custom = {
        "external_model": {
            "name": "llama",
            "provider": "custom",
            "task": "llm/v1/chat",
            "custom_provider_config": {
                "custom_provider_url": sims.custom_url,
                "bearer_token_auth": {"token": "{{secrets/local/token}}"},
            },
        }
    }
    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("azure-key", [azure_entity(sims.azure_url, "azure")]),
        endpoint_doc("azure-entra", [azure_entity(sims.azure_url, "azuread")]),
        endpoint_doc("custom", [custom]),
    )
    return await aiohttp_client(in_process_app(entra_authority_host=sims.entra_authority_host))


async def _sim_requests(sim_url: str) -> list[dict[str, Any]]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(sim_url + "/_sim/requests") as r:
        return list((await r.json())["requests"])


@pytest.mark.parametrize("endpoint", ["azure-key", "azure-entra"])
async def test_azure_chat_and_stream(client: Client, endpoint: str) -> None:
    resp = await client.post(f"/serving-endpoints/{endpoint}/invocations", json=CHAT)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["choices"][0]["message"]["content"]
    stream = await client.post(
        f"/serving-endpoints/{endpoint}/invocations", json={**CHAT, "stream": True}
    )
    text = (await stream.read()).decode()
    assert text.endswith("data: [DONE]\n\n")
    assert '"usage"' in text


async def test_azure_request_shape(client: Client, sims: RunningSimulators) -> None:
    await client.post("/serving-endpoints/azure-key/invocations", json=CHAT)
    sent = (await _sim_requests(sims.azure_url))[-1]
    assert sent["path"] == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent["query"] == {"api-version": "2024-06-01"}
    assert sent["headers"]["api-key"] == AZURE_KEY
    assert "model" not in sent["json"]


async def test_entra_token_is_fetched_once_and_cached(
    client: Client, sims: RunningSimulators
) -> None:
    for _ in range(5):
        resp = await client.post("/serving-endpoints/azure-entra/invocations", json=CHAT)
        assert resp.status == 200
    assert sims.tokens.issued_count == 1
    sent = (await _sim_requests(sims.azure_url))[-1]
    assert sent["headers"]["authorization"] == f"Bearer {sims.tokens.issued()[0].access_token}"


async def test_entra_token_is_refreshed_inside_its_refresh_window(sims: RunningSimulators) -> None:
    """The token source answers from memory until the token is within its refresh window
    (five minutes before expiry, or half the lifetime of a short-lived token), then runs
    MSAL's exchange again. The clock is injected; the exchange is real."""
    now = [1000.0]
    registry = CredentialRegistry(sims.entra_authority_host, clock=lambda: now[0])
    source = registry.entra("tenant-1", "client-1", ENTRA_SECRET)
    first = await source.token()
    assert await source.token() == first
    assert sims.tokens.issued_count == 1
    now[0] += 3599 - 300 - 1  # just before the window: still cached
    assert await source.token() == first
    assert sims.tokens.issued_count == 1
    assert registry.entra("tenant-1", "client-1", ENTRA_SECRET) is source  # survives reloads


async def test_short_lived_entra_token_is_replaced_at_half_life(
    tmp_path: Path, sims: RunningSimulators
) -> None:
    config = SimulatorConfig(
        openai=None,
        azure=None,
        custom=None,
        entra=EntraSimConfig(
            clients={"client-1": ENTRA_SECRET},
            token_lifetime_s=200,
            tls_cert=tmp_path / "cert.pem",
            tls_key=tmp_path / "key.pem",
        ),
    )
    async with run_simulators(config) as short:
        now = [0.0]
        source = CredentialRegistry(short.entra_authority_host, clock=lambda: now[0]).entra(
            "tenant-1", "client-1", ENTRA_SECRET
        )
        first = await source.token()
        now[0] += 99
        assert await source.token() == first
        now[0] += 2  # past half of the 200 s lifetime
        second = await source.token()
        assert second != first
        assert short.tokens.issued_count == 2


async def test_entra_refusal_is_a_clear_error_without_the_secret(
    sims: RunningSimulators,
    workspace: Workspace,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    write_secret(workspace.secrets, "azure", "entra", "not-the-secret")
    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("azure-entra", [azure_entity(sims.azure_url, "azuread")]),
    )
    client = await aiohttp_client(in_process_app(entra_authority_host=sims.entra_authority_host))
    resp = await client.post("/serving-endpoints/azure-entra/invocations", json=CHAT)
    assert resp.status == 502
    body = await resp.json()
    assert "invalid_client" in body["message"]
    assert "not-the-secret" not in body["message"]


async def test_custom_provider_bearer_and_extras(client: Client, sims: RunningSimulators) -> None:
    resp = await client.post(
        "/serving-endpoints/custom/invocations",
        json={**CHAT, "top_k": 3, "repetition_penalty": 1.1},
    )
    assert resp.status == 200
    sent = (await _sim_requests(sims.custom_url.removesuffix("/v1")))[-1]
    assert sent["headers"]["authorization"] == f"Bearer {CUSTOM_TOKEN}"
    assert sent["json"]["top_k"] == 3 and sent["json"]["repetition_penalty"] == 1.1
    assert sent["json"]["model"] == "llama"


async def test_servegate_in_front_of_servegate(
    openai_sim: str,
    tmp_path: Path,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    from servegate.app import GatewaySettings, create_app
    from servegate.transport.client import Timeouts

    # The upstream gateway: its own auth file, serving "team-chat" over the OpenAI simulator.
    upstream_dir = Workspace(tmp_path / "upstream")
    write_yaml(
        upstream_dir.manifests / "e.yaml",
        endpoint_doc("team-chat", [openai_entity("gpt-4o-mini", openai_sim + "/v1")]),
    )
    auth = write_auth_file(
        upstream_dir.root / "auth.yaml", {"dapi-upstream": ("front-gateway", [])}
    )
    upstream_app = create_app(
        GatewaySettings(
            paths=(upstream_dir.manifests,),
            secrets_dir=upstream_dir.secrets,
            auth_file=auth,
            watch=False,
            timeouts=Timeouts(2, 5, 5),
        )
    )
    runner, upstream_url = await start_site(upstream_app)
    try:
        front_dir = Workspace(tmp_path / "front")
        write_secret(front_dir.secrets, "ws", "token", "dapi-upstream")
        entity = {
            "external_model": {
                "name": "team-chat",
                "provider": "databricks-model-serving",
                "task": "llm/v1/chat",
                "databricks_model_serving_config": {
                    "databricks_workspace_url": upstream_url,
                    "databricks_api_token": "{{secrets/ws/token}}",
                },
            }
        }
        missing = {"external_model": {**entity["external_model"], "name": "ghost"}}
        write_yaml(
            front_dir.manifests / "e.yaml",
            endpoint_doc("chat", [entity]),
            endpoint_doc("broken", [missing]),
        )
        front = await aiohttp_client(
            in_process_app(paths=(front_dir.manifests,), secrets_dir=front_dir.secrets)
        )
        resp = await front.post("/v1/chat/completions", json={"model": "chat", **CHAT})
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"]
        stream = await front.post(
            "/serving-endpoints/chat/invocations", json={**CHAT, "stream": True}
        )
        assert (await stream.read()).endswith(b"data: [DONE]\n\n")
        emb_error = await front.post("/serving-endpoints/broken/invocations", json=CHAT)
        assert emb_error.status == 404
        wrapped = orjson.loads((await emb_error.json())["message"])
        assert wrapped["external_model_provider"] == "databricks-model-serving"
        assert wrapped["external_model_error"]["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    finally:
        await runner.cleanup()
