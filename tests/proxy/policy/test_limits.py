"""AI Gateway rate limits: who each limit applies to, calls and tokens through the gateway,
answers stopped at the token budget, and limits shared by two gateways through a real
Redis, including what happens when Redis goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from servegate.auth.callers import Principal
from servegate.policy.limits import applicable, endpoint_rules
from servegate.spec import ServingEndpointSpec
from tests.conftest import (
    OPENAI_KEY,
    BackgroundLoop,
    GatewayProcess,
    Workspace,
    endpoint_doc,
    openai_entity,
    start_site,
    write_auth_file,
    write_secret,
    write_yaml,
)
from tests.proxy.policy.conftest import RedisServer

Client = TestClient[Any, Any]
CHAT = {"messages": [{"role": "user", "content": "hello"}]}
TOKENS = {"tok-ana": ("ana", ["ds"]), "tok-bob": ("bob", ["ds", "ml"]), "tok-cy": ("cy", [])}


def spec_with(limits: list[dict[str, Any]]) -> ServingEndpointSpec:
    doc = endpoint_doc(
        "e", [openai_entity("m", "http://127.0.0.1:1/v1")], ai_gateway={"rate_limits": limits}
    )
    return ServingEndpointSpec.model_validate(doc["spec"])


def rule(key: str, calls: int, principal: str | None = None) -> dict[str, Any]:
    return {"key": key, "calls": calls, "renewal_period": "minute"} | (
        {"principal": principal} if principal else {}
    )


PRECEDENCE = [
    pytest.param(
        [rule("endpoint", 9)], Principal("ana"), {("endpoint", 9)}, id="endpoint-applies-to-all"
    ),
    pytest.param([rule("user", 5)], Principal("ana"), {("user:ana", 5)}, id="default-user"),
    pytest.param(
        [rule("user", 5), rule("user", 50, "ana")],
        Principal("ana"),
        {("user:ana", 50)},
        id="override-replaces-default",
    ),
    pytest.param(
        [rule("user", 5), rule("user", 50, "ana")],
        Principal("bob"),
        {("user:bob", 5)},
        id="others-keep-default",
    ),
    pytest.param(
        [rule("user", 5), rule("service_principal", 7)],
        Principal("etl", kind="service_principal"),
        {("sp:etl", 7)},
        id="service-principal-default",
    ),
    pytest.param(
        [rule("user", 5)],
        Principal("etl", kind="service_principal"),
        {("user:etl", 5)},
        id="sp-without-sp-rules-gets-user-default",
    ),
    pytest.param(
        [rule("user_group", 3, "ds"), rule("user_group", 4, "ml")],
        Principal("bob", frozenset({"ds", "ml"})),
        {("group:ds", 3), ("group:ml", 4)},
        id="every-limited-group-applies",
    ),
    pytest.param(
        [rule("user_group", 3, "ds"), rule("user_group", 8)],
        Principal("bob", frozenset({"ds", "ml"})),
        {("group:ds", 3), ("group:ml", 8)},
        id="group-default-and-override",
    ),
    pytest.param(
        [rule("endpoint", 9), rule("user", 5), rule("user_group", 3, "ds")],
        Principal("ana", frozenset({"ds"})),
        {("endpoint", 9), ("user:ana", 5), ("group:ds", 3)},
        id="all-kinds-at-once",
    ),
]


@pytest.mark.parametrize(("limits", "caller", "expected"), PRECEDENCE)
def test_which_limits_apply(
    limits: list[dict[str, Any]], caller: Principal, expected: set[tuple[str, int]]
) -> None:
    rules = endpoint_rules(spec_with(limits))
    assert {(b.scope, b.rule.calls) for b in applicable(rules, caller)} == expected


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """Every limit case runs on the in-memory store and on a real redis-server."""
    if request.param == "memory":
        yield None
        return
    server = RedisServer(tmp_path)
    yield server.url
    server.stop()


@pytest.fixture
def make_client(
    workspace: Workspace,
    openai_sim: str,
    storage: str | None,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Callable[..., Awaitable[Client]]:
    auth = write_auth_file(workspace.root / "auth.yaml", TOKENS)

    async def make(limits: list[dict[str, Any]], **settings: Any) -> Client:
        settings.setdefault("redis_url", storage)
        doc = endpoint_doc(
            "lim",
            [openai_entity("gpt-4o-mini", openai_sim + "/v1", name="only")],
            ai_gateway={"rate_limits": limits},
        )
        write_yaml(workspace.manifests / "lim.yaml", doc)
        return await aiohttp_client(in_process_app(auth_file=auth, **settings))

    return make


async def query(
    client: Client,
    token: str,
    body: dict[str, Any] | None = None,
    path: str = "/serving-endpoints/lim/invocations",
) -> Any:
    return await client.post(path, json=body or CHAT, headers={"Authorization": f"Bearer {token}"})


async def test_endpoint_call_limit_is_shared_and_names_itself(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make_client([rule("endpoint", 3)])
    assert (await query(client, "tok-ana")).status == 200
    assert (await query(client, "tok-bob")).status == 200
    assert (
        await query(client, "tok-cy", path="/serving-endpoints/lim/served-models/only/invocations")
    ).status == 200
    refused = await query(client, "tok-cy")
    assert refused.status == 429
    body = await refused.json()
    assert body["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "endpoint 'lim'" in body["message"] and "3 calls per minute" in body["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    openai_route = await client.post(
        "/v1/chat/completions",
        json={"model": "lim", **CHAT},
        headers={"Authorization": "Bearer tok-ana"},
    )
    assert openai_route.status == 429
    metrics = await (await client.get("/metrics")).text()
    assert 'servegate_rate_limited_total{endpoint="lim"} 2.0' in metrics


async def test_user_override_and_group_buckets(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make_client(
        [rule("user", 1), rule("user", 3, "cy"), rule("user_group", 2, "ds")]
    )
    assert (await query(client, "tok-ana")).status == 200
    assert (await query(client, "tok-ana")).status == 429  # ana's own default: 1 call
    assert (await query(client, "tok-bob")).status == 200  # the ds group now has used 2 of 2
    assert (await query(client, "tok-bob")).status == 429
    for _ in range(3):
        assert (await query(client, "tok-cy")).status == 200  # cy's override: 3 calls
    refused = await query(client, "tok-cy")
    assert refused.status == 429
    assert "user 'cy'" in (await refused.json())["message"]


async def test_token_limit_caps_the_answer_and_then_refuses(
    make_client: Callable[..., Awaitable[Client]], openai_sim: str
) -> None:
    limit = {"key": "endpoint", "tokens": 12, "renewal_period": "minute"}
    client = await make_client([limit])
    long_question = {"messages": [{"role": "user", "content": "tell me everything about the sea"}]}
    first = await query(client, "tok-ana", long_question)
    assert first.status == 200
    answer = await first.json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["total_tokens"] <= 12
    async with aiohttp.ClientSession() as s, s.get(openai_sim + "/_sim/requests") as r:
        sent = (await r.json())["requests"][-1]["json"]
    assert 1 <= sent["max_tokens"] < 12  # the room left, less the estimated prompt
    refused = await query(client, "tok-ana", long_question)
    assert refused.status == 429
    assert "12 tokens per minute" in (await refused.json())["message"]


async def test_a_stream_stops_cleanly_at_the_token_budget(
    make_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await make_client([{"key": "user", "tokens": 10, "renewal_period": "minute"}])
    resp = await query(
        client,
        "tok-bob",
        {
            **CHAT,
            "messages": [{"role": "user", "content": "one two three four five six seven"}],
            "stream": True,
        },
    )
    assert resp.status == 200
    lines = [line for line in (await resp.read()).decode().split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["total_tokens"] <= 10
    assert all("error" not in c for c in chunks)
    assert (await query(client, "tok-bob")).status == 429


async def test_charge_after_mode_does_not_cap(
    make_client: Callable[..., Awaitable[Client]], openai_sim: str
) -> None:
    client = await make_client(
        [{"key": "endpoint", "tokens": 1000, "renewal_period": "minute"}], token_limit_mode="after"
    )
    assert (await query(client, "tok-ana")).status == 200
    async with aiohttp.ClientSession() as s, s.get(openai_sim + "/_sim/requests") as r:
        sent = (await r.json())["requests"][-1]["json"]
    assert "max_tokens" not in sent


# ------------------------------------------------------------------ Redis, two gateways


@pytest.fixture(scope="module")
def sim_url(background_loop: BackgroundLoop) -> Iterator[str]:
    from servegate.simulators.openai import create_openai_app

    runner, url = background_loop.run(start_site(create_openai_app(api_keys={OPENAI_KEY})))
    yield url + "/v1"
    background_loop.run(runner.cleanup())


def gateways(
    tmp_path: Path, sim_url: str, redis_url: str, limits: list[dict[str, Any]], *extra: str
) -> list[GatewayProcess]:
    manifests, secrets = tmp_path / "manifests", tmp_path / "secrets"
    write_secret(secrets, "openai", "api_key", OPENAI_KEY)
    write_yaml(
        manifests / "lim.yaml",
        endpoint_doc(
            "lim", [openai_entity("gpt-4o-mini", sim_url)], ai_gateway={"rate_limits": limits}
        ),
    )
    args = [
        "serve",
        str(manifests),
        "--secrets-dir",
        str(secrets),
        "--redis-url",
        redis_url,
        *extra,
    ]
    return [GatewayProcess(args, tmp_path / f"gw{i}.log") for i in range(2)]


async def burst(urls: list[str], count: int) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int:
            url = f"{urls[i % len(urls)]}/serving-endpoints/lim/invocations"
            async with session.post(url, json=CHAT) as resp:
                return resp.status

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_two_gateways_share_one_limit_exactly(
    tmp_path: Path, sim_url: str, redis_server: RedisServer, background_loop: BackgroundLoop
) -> None:
    pair = gateways(tmp_path, sim_url, redis_server.url, [rule("endpoint", 10)])
    try:
        statuses = background_loop.run(burst([g.url for g in pair], 30), timeout=60)
    finally:
        for gateway in pair:
            gateway.stop()
    assert sorted(statuses) == [200] * 10 + [429] * 20


def test_redis_down_fails_open_by_default_and_closed_on_request(
    tmp_path: Path, sim_url: str, redis_server: RedisServer, background_loop: BackgroundLoop
) -> None:
    open_pair = gateways(tmp_path / "open", sim_url, redis_server.url, [rule("endpoint", 100)])
    closed_pair = gateways(
        tmp_path / "closed",
        sim_url,
        redis_server.url,
        [rule("endpoint", 100)],
        "--rate-limit-failure",
        "closed",
    )
    try:
        assert background_loop.run(burst([open_pair[0].url], 2)) == [200, 200]
        redis_server.stop()
        assert background_loop.run(burst([open_pair[0].url], 3), timeout=60) == [200, 200, 200]
        assert background_loop.run(burst([closed_pair[0].url], 2), timeout=60) == [503, 503]

        async def metrics() -> str:
            async with aiohttp.ClientSession() as s, s.get(open_pair[0].url + "/metrics") as r:
                return await r.text()

        assert "servegate_rate_limit_storage_errors_total 3.0" in background_loop.run(metrics())
    finally:
        for gateway in (*open_pair, *closed_pair):
            gateway.stop()
    assert "rate-limit storage failed" in open_pair[0].logs()


def test_sdks_against_a_limited_endpoint(
    tmp_path: Path, sim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenAI SDK surfaces the 429 with its Retry-After; databricks-sdk waits exactly
    that long before retrying, and gives up at its own retry timeout. (Its clock is sped up
    here: the sleep it asks for is recorded instead of slept.)"""
    import openai
    from databricks.sdk import WorkspaceClient
    from databricks.sdk import clock as sdk_clock
    from databricks.sdk.core import Config
    from databricks.sdk.errors import TooManyRequests
    from databricks.sdk.service.serving import ChatMessage, ChatMessageRole

    manifests, secrets = tmp_path / "manifests", tmp_path / "secrets"
    write_secret(secrets, "openai", "api_key", OPENAI_KEY)
    write_yaml(
        manifests / "lim.yaml",
        endpoint_doc(
            "lim",
            [openai_entity("gpt-4o-mini", sim_url)],
            ai_gateway={"rate_limits": [rule("endpoint", 1)]},
        ),
    )
    gateway = GatewayProcess(
        ["serve", str(manifests), "--secrets-dir", str(secrets)], tmp_path / "gw.log"
    )
    try:
        client = openai.OpenAI(
            base_url=gateway.url + "/serving-endpoints", api_key="unused", max_retries=0
        )
        assert client.chat.completions.create(model="lim", messages=CHAT["messages"]).choices  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="lim", messages=CHAT["messages"])  # type: ignore[arg-type]
        retry_after = int(limited.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert limited.value.response.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"

        offset, slept = [0.0], []

        def fake_sleep(_self: object, seconds: float) -> None:
            slept.append(seconds)
            offset[0] += seconds

        monkeypatch.setattr(sdk_clock.RealClock, "sleep", fake_sleep)
        monkeypatch.setattr(sdk_clock.RealClock, "time", lambda _self: time.time() + offset[0])
        workspace = WorkspaceClient(
            config=Config(host=gateway.url, token="unused", retry_timeout_seconds=5)
        )
        with pytest.raises(TimeoutError) as gave_up:
            workspace.serving_endpoints.query(
                name="lim", messages=[ChatMessage(role=ChatMessageRole.USER, content="hi")]
            )
        assert isinstance(gave_up.value.__cause__, TooManyRequests)
        assert (
            slept and retry_after - 1 <= int(slept[0]) <= retry_after + 1
        )  # it honoured Retry-After
    finally:
        gateway.stop()


def test_the_legacy_top_level_rate_limits_count_too() -> None:
    doc = endpoint_doc(
        "e",
        [openai_entity("m", "http://127.0.0.1:1/v1")],
        rate_limits=[
            {"calls": 5, "key": "user", "renewal_period": "minute"},
            {"calls": 50, "renewal_period": "minute"},
        ],
    )
    rules = endpoint_rules(ServingEndpointSpec.model_validate(doc["spec"]))
    buckets = {(b.scope, b.rule.calls) for b in applicable(rules, Principal("ana"))}
    assert buckets == {("user:ana", 5), ("endpoint", 50)}
