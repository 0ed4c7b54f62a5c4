"""The gateway reuses pooled upstream connections (transport/client.py: one long-lived
``ClientSession`` whose connector keeps keep-alive connections per host).

The gateway runs in-process in front of the OpenAI simulator served on a real socket, with
a middleware that records, per request, which TCP connection it arrived on (the client's
address and port, and the server's per-connection protocol object). Sequential requests,
unary and streamed, all ride one connection; N concurrent requests open at most N, and a
second concurrent wave opens none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import (
    OPENAI_KEY,
    Workspace,
    endpoint_doc,
    openai_entity,
    start_site,
    write_yaml,
)

Client = TestClient[Any, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHAT = "/serving-endpoints/chat/invocations"
CONCURRENCY = 10


@dataclass
class Upstream:
    """The simulator's origin and what its connection-counting middleware saw."""

    url: str
    peers: list[tuple[str, int]] = field(default_factory=list)
    # The server's protocol object per request: one per TCP connection, held so that no
    # id is reused while the test runs.
    protocols: list[object] = field(default_factory=list)
    in_flight: int = 0
    # Armed: each request waits (bounded) until `hold_until` requests are in flight at once.
    hold_until: int = 0
    all_in: asyncio.Event = field(default_factory=asyncio.Event)

    def connections(self) -> int:
        distinct = {id(p) for p in self.protocols}
        assert len(distinct) == len(set(self.peers))
        return len(distinct)

    def forget(self) -> None:
        self.peers.clear()
        self.protocols.clear()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    from servegate.simulators.openai import create_openai_app

    app = create_openai_app(api_keys={OPENAI_KEY})
    seen = Upstream(url="")

    @web.middleware
    async def count_connections(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        if request.path.startswith("/v1/"):
            host, port = transport.get_extra_info("peername")[:2]
            seen.peers.append((host, port))
            seen.protocols.append(request.protocol)
        seen.in_flight += 1
        try:
            if seen.hold_until:
                if seen.in_flight >= seen.hold_until:
                    seen.all_in.set()
                await asyncio.wait_for(seen.all_in.wait(), timeout=5)
            return await handler(request)
        finally:
            seen.in_flight -= 1

    app.middlewares.append(count_connections)
    runner, seen.url = await start_site(app)
    yield seen
    await runner.cleanup()


@pytest.fixture
async def client(
    workspace: Workspace,
    upstream: Upstream,
    in_process_app: Callable[..., Any],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Client:
    write_yaml(
        workspace.manifests / "endpoints.yaml",
        endpoint_doc("chat", [openai_entity("gpt-4o-mini", upstream.url + "/v1")]),
    )
    return await aiohttp_client(in_process_app())


async def chat(client: Client, *, stream: bool = False) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    if stream:
        body["stream"] = True
    async with client.post(CHAT, json=body) as resp:
        raw = await resp.read()
        assert resp.status == 200, raw
        if stream:
            assert raw.rstrip().endswith(b"data: [DONE]")


async def test_sequential_requests_share_one_upstream_connection(
    client: Client, upstream: Upstream
) -> None:
    for _ in range(20):
        await chat(client)
    assert len(upstream.peers) == 20
    assert upstream.connections() == 1
    # Streamed answers release their connection to the pool too, once read to the end.
    for i in range(6):
        await chat(client, stream=i % 2 == 0)
    assert len(upstream.peers) == 26
    assert upstream.connections() == 1


async def test_concurrent_requests_open_at_most_one_connection_each_then_reuse_them(
    client: Client, upstream: Upstream
) -> None:
    await chat(client)  # one pooled connection, idle, before the burst
    upstream.hold_until = CONCURRENCY  # every request is in flight at the same moment
    async with asyncio.timeout(10):
        await asyncio.gather(*(chat(client) for _ in range(CONCURRENCY)))
    assert len(upstream.peers) == 1 + CONCURRENCY
    # HTTP/1.1: ten requests in flight at once need ten connections, and get no more
    # (the idle one from before the burst is among them).
    assert upstream.connections() == CONCURRENCY
    first_wave = set(upstream.peers)

    # A second burst, streamed and unary mixed, finds them all in the pool: none is new.
    upstream.all_in.clear()
    async with asyncio.timeout(10):
        await asyncio.gather(*(chat(client, stream=i % 2 == 0) for i in range(CONCURRENCY)))
    assert len(upstream.peers) == 1 + 2 * CONCURRENCY
    assert set(upstream.peers) == first_wave
    assert upstream.connections() == CONCURRENCY
