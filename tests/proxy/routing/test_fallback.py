"""Fallback across served entities and providers: OpenAI → Anthropic → Bedrock, unary and
streamed, through the gateway in-process and the real simulators. The simulators' request
logs show the order and that each entity is tried once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from servegate.ingress.errors import GatewayError, UpstreamError
from servegate.routing.fallback import attempt_order, falls_back
from servegate.simulators.anthropic import DEFAULT_API_KEY as ANTHROPIC_KEY
from servegate.simulators.bedrock import DEFAULT_ACCESS_KEY_ID, DEFAULT_SECRET_ACCESS_KEY
from servegate.simulators.server import (
    OpenAISimConfig,
    ProviderSimConfig,
    RunningSimulators,
    SimulatorConfig,
    run_simulators,
)
from tests.conftest import (
    OPENAI_KEY,
    Workspace,
    endpoint_doc,
    openai_entity,
    write_secret,
    write_yaml,
)

Client = TestClient[Any, Any]
CHAT = {"messages": [{"role": "user", "content": "one two three four five"}]}
BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


@pytest.mark.parametrize(
    ("entities", "first", "enabled", "expected"),
    [
        (["a", "b", "c"], "a", True, ["a", "b", "c"]),
        (["a", "b", "c"], "b", True, ["b", "c", "a"]),
        (["a", "b", "c"], "c", True, ["c", "a", "b"]),
        (["a", "b", "c"], "b", False, ["b"]),
    ],
    ids=["from-first", "wraps", "from-last", "disabled"],
)
def test_attempt_order(entities: list[str], first: str, enabled: bool, expected: list[str]) -> None:
    assert attempt_order(entities, first, enabled=enabled) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
    ],
)
def test_which_failures_fall_back(status: int, expected: bool) -> None:
    assert falls_back(UpstreamError("openai", status, {})) is expected
    assert falls_back(GatewayError("x", status=status)) is expected


@pytest.fixture
async def sims() -> AsyncIterator[RunningSimulators]:
    config = SimulatorConfig(
        openai=OpenAISimConfig(api_keys=(OPENAI_KEY,)),
        azure=None,
        entra=None,
        custom=None,
        providers={"anthropic": ProviderSimConfig(), "bedrock": ProviderSimConfig()},
    )
    async with run_simulators(config) as running:
        yield running


def chain(
    sims: RunningSimulators, *, enabled: bool = True, first_url: str | None = None
) -> dict[str, Any]:
    """openai (100%) → anthropic (0%) → bedrock (0%), in that list order."""
    openai = openai_entity("gpt-a", first_url or sims.openai_url, name="openai")
    anthropic = {
        "name": "anthropic",
        "external_model": {
            "name": "claude-sonnet-4-5",
            "provider": "anthropic",
            "task": "llm/v1/chat",
            "anthropic_config": {
                "anthropic_api_key": "{{secrets/anthropic/api_key}}",
                "anthropic_api_base": sims.root_url("anthropic"),
            },
        },
    }
    bedrock = {
        "name": "bedrock",
        "external_model": {
            "name": BEDROCK_MODEL,
            "provider": "amazon-bedrock",
            "task": "llm/v1/chat",
            "amazon_bedrock_config": {
                "aws_region": "us-east-1",
                "bedrock_provider": "anthropic",
                "aws_access_key_id": "{{secrets/aws/access_key_id}}",
                "aws_secret_access_key": "{{secrets/aws/secret_access_key}}",
                "bedrock_endpoint_url": sims.root_url("bedrock"),
            },
        },
    }
    routes = [
        {"served_model_name": "openai", "traffic_percentage": 100},
        {"served_model_name": "anthropic", "traffic_percentage": 0},
        {"served_model_name": "bedrock", "traffic_percentage": 0},
    ]
    return endpoint_doc(
        "chain",
        [openai, anthropic, bedrock],
        routes=routes,
        ai_gateway={"fallback_config": {"enabled": enabled}},
    )


@pytest.fixture
def make_client(
    sims: RunningSimulators,
    workspace: Workspace,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Callable[..., Awaitable[Client]]:
    write_secret(workspace.secrets, "anthropic", "api_key", ANTHROPIC_KEY)
    write_secret(workspace.secrets, "aws", "access_key_id", DEFAULT_ACCESS_KEY_ID)
    write_secret(workspace.secrets, "aws", "secret_access_key", DEFAULT_SECRET_ACCESS_KEY)

    async def make(**chain_options: Any) -> Client:
        write_yaml(workspace.manifests / "chain.yaml", chain(sims, **chain_options))
        return await aiohttp_client(in_process_app())

    return make


async def sim_call(url: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, json=body) as resp,
    ):
        return await resp.json()


async def fault(sims: RunningSimulators, name: str, **spec: Any) -> None:
    await sim_call(sims.root_url(name), "POST", "/_sim/faults", spec)


async def calls(sims: RunningSimulators) -> dict[str, int]:
    counts = {}
    for name in ("openai", "anthropic", "bedrock"):
        recorded = (await sim_call(sims.root_url(name), "GET", "/_sim/requests"))["requests"]
        counts[name] = len(recorded)
    return counts


async def test_unary_falls_back_in_list_order_once_each(
    sims: RunningSimulators, make_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await make_client()
    await fault(sims, "openai", model="gpt-a", status=500)
    await fault(sims, "anthropic", model="claude-sonnet-4-5", status=429)
    resp = await client.post("/serving-endpoints/chain/invocations", json=CHAT)
    assert resp.status == 200, await resp.text()
    assert resp.headers["served-model-name"] == "bedrock"
    body = await resp.json()
    assert body["choices"][0]["message"]["content"].startswith("Simulated reply from")
    assert await calls(sims) == {"openai": 1, "anthropic": 1, "bedrock": 1}
    metrics = await (await client.get("/metrics")).text()
    assert (
        'servegate_fallbacks_total{endpoint="chain",from_entity="openai",to_entity="anthropic"} 1.0'
        in metrics
    )


async def test_every_attempt_failing_returns_the_last_error(
    sims: RunningSimulators, make_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await make_client()
    await fault(sims, "openai", model="gpt-a", status=500)
    await fault(sims, "anthropic", model="claude-sonnet-4-5", status=529)
    await fault(sims, "bedrock", model=BEDROCK_MODEL, status=503)
    resp = await client.post("/serving-endpoints/chain/invocations", json=CHAT)
    assert resp.status == 503
    wrapped = orjson.loads((await resp.json())["message"])
    assert wrapped["external_model_provider"] == "amazon-bedrock"
    assert await calls(sims) == {"openai": 1, "anthropic": 1, "bedrock": 1}


async def test_a_client_error_does_not_fall_back(
    sims: RunningSimulators, make_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await make_client()
    await fault(sims, "openai", model="gpt-a", status=400)
    resp = await client.post("/serving-endpoints/chain/invocations", json=CHAT)
    assert resp.status == 400
    assert await calls(sims) == {"openai": 1, "anthropic": 0, "bedrock": 0}


async def test_disabled_fallback_returns_the_first_failure(
    sims: RunningSimulators, make_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await make_client(enabled=False)
    await fault(sims, "openai", model="gpt-a", status=500)
    resp = await client.post("/serving-endpoints/chain/invocations", json=CHAT)
    assert resp.status == 500
    assert await calls(sims) == {"openai": 1, "anthropic": 0, "bedrock": 0}


async def test_connection_refused_falls_back(
    sims: RunningSimulators, make_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await make_client(first_url="http://127.0.0.1:9/v1")  # the discard port: refused
    resp = await client.post("/serving-endpoints/chain/invocations", json=CHAT)
    assert resp.status == 200
    assert resp.headers["served-model-name"] == "anthropic"


async def test_stream_failing_before_the_first_byte_falls_back(
    sims: RunningSimulators, make_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await make_client()
    await fault(sims, "openai", model="gpt-a", status=503)
    resp = await client.post("/serving-endpoints/chain/invocations", json={**CHAT, "stream": True})
    assert resp.status == 200
    assert resp.headers["served-model-name"] == "anthropic"
    lines = [line for line in (await resp.read()).decode().split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Simulated reply from claude-sonnet-4-5 to: one two three four five"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_stream_failing_after_content_never_replays_it(
    sims: RunningSimulators, make_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await make_client()
    await fault(sims, "openai", model="gpt-a", stream_cut_after=3)
    resp = await client.post("/serving-endpoints/chain/invocations", json={**CHAT, "stream": True})
    assert resp.status == 200
    assert resp.headers["served-model-name"] == "openai"
    lines = [line for line in (await resp.read()).decode().split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    events = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert "error" in events[-1]
    content = [e for e in events[:-1] if "error" not in e]
    assert len(content) == 3  # what the first entity sent, once, and nothing after the error
    assert await calls(sims) == {"openai": 1, "anthropic": 0, "bedrock": 0}
    metrics = await (await client.get("/metrics")).text()
    assert 'servegate_stream_errors_total{endpoint="chain",provider="openai"} 1.0' in metrics


async def test_the_per_entity_route_never_falls_back(
    sims: RunningSimulators, make_client: Callable[..., Awaitable[Client]]
) -> None:
    client = await make_client()
    await fault(sims, "anthropic", model="claude-sonnet-4-5", status=500)
    resp = await client.post(
        "/serving-endpoints/chain/served-models/anthropic/invocations", json=CHAT
    )
    assert resp.status == 500
    assert await calls(sims) == {"openai": 0, "anthropic": 1, "bedrock": 0}
