"""Every way a provider can fail without answering an error of its own, through the real
gateway over real HTTP, against simulators that misbehave on cue (simulators/faults.py).

Each case gets its documented status (502 ``TEMPORARILY_UNAVAILABLE`` or 504
``DEADLINE_EXCEEDED``), an ``ErrorInfo`` in ``details`` whose ``reason`` says which failure
it was and whose metadata names the ``external_model_provider`` and ``external_model_error``,
and it never takes much longer than its deadline. The gateway runs with short timeouts and a
small response cap, so the slow and the oversized cases stay fast.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient

from servegate.ingress.errors import FAULT_REASONS
from tests.conftest import (
    REPO,
    Workspace,
    endpoint_doc,
    free_port,
    openai_entity,
    start_site,
    write_yaml,
)

Client = TestClient[Any, Any]

ANTHROPIC_KEY = "sk-ant-faults-test"
DEADLINE_S = 0.6  # the gateway's first-byte timeout here: the deadline of every answer
CAP = 64 * 1024  # the gateway's --max-upstream-response here
CHAT = {"messages": [{"role": "user", "content": "one two three four five six"}]}


@pytest.fixture
async def anthropic_sim() -> AsyncIterator[str]:
    from servegate.simulators.anthropic import create_anthropic_app

    runner, url = await start_site(create_anthropic_app(api_keys={ANTHROPIC_KEY}))
    yield url
    await runner.cleanup()


@pytest.fixture
async def client(
    workspace: Workspace,
    openai_sim: str,
    anthropic_sim: str,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Client:
    from servegate.transport.client import Timeouts

    anthropic = {
        "external_model": {
            "name": "claude-3-5-haiku-latest",
            "provider": "anthropic",
            "task": "llm/v1/chat",
            "anthropic_config": {
                "anthropic_api_key_plaintext": ANTHROPIC_KEY,
                "anthropic_api_base": anthropic_sim + "/v1",
            },
        }
    }
    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("openai", [openai_entity("gpt-4o-mini", openai_sim + "/v1")]),
        endpoint_doc("anthropic", [anthropic]),
        # Nothing listens there: the port was free a moment ago and stays unbound.
        endpoint_doc("nowhere", [openai_entity("gpt-4o", f"http://127.0.0.1:{free_port()}/v1")]),
    )
    app = in_process_app(
        timeouts=Timeouts(connect=2, first_byte=DEADLINE_S, idle=DEADLINE_S),
        max_upstream_response=CAP,
    )
    return await aiohttp_client(app)


async def fault(sim_url: str, **spec: Any) -> None:
    async with (
        ClientSession() as session,
        session.post(sim_url + "/_sim/faults", json={"times": 1, **spec}) as resp,
    ):
        assert resp.status == 200, await resp.text()


def sims(openai_sim: str, anthropic_sim: str) -> dict[str, tuple[str, str]]:
    """endpoint → (its simulator, the model a fault must name)."""
    return {
        "openai": (openai_sim, "gpt-4o-mini"),
        "anthropic": (anthropic_sim, "claude-3-5-haiku-latest"),
    }


async def ask(client: Client, endpoint: str, *, stream: bool = False) -> tuple[int, Any, float]:
    """Query and time it; the body as JSON (for a stream that failed before its first frame
    the answer is a plain JSON error too)."""
    started = time.monotonic()
    resp = await client.post(
        f"/serving-endpoints/{endpoint}/invocations", json={**CHAT, "stream": stream}
    )
    raw = await resp.read()
    elapsed = time.monotonic() - started
    return resp.status, orjson.loads(raw), elapsed


def assert_fault(body: Any, *, code: str, reason: str, provider: str, phrase: str) -> None:
    assert body["error_code"] == code
    assert phrase in body["message"]
    [info] = body["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == reason
    assert info["domain"] == "servegate.io"
    assert info["metadata"] == {
        "external_model_provider": provider,
        "external_model_error": body["message"],
    }
    assert "Traceback" not in body["message"]


async def test_connection_refused_is_502_unreachable(client: Client) -> None:
    status, body, _ = await ask(client, "nowhere")
    assert status == 502
    assert_fault(
        body,
        code="TEMPORARILY_UNAVAILABLE",
        reason="UPSTREAM_UNREACHABLE",
        provider="openai",
        phrase="Could not reach provider 'openai': the connection was refused",
    )


# The provider fails without an error answer of its own, before anything reached the client:
# 502 TEMPORARILY_UNAVAILABLE, its reason, and a message naming what went wrong.
# (fault, streamed, reason, phrase; "{endpoint}" is the provider's name.)
CLOSED = "the connection was closed or reset"
BAD_GATEWAY: dict[str, tuple[dict[str, Any], bool, str, str]] = {
    "hang-up": ({"hang_up": True}, False, "UPSTREAM_CONNECTION_LOST", CLOSED),
    "hang-up-stream": ({"hang_up": True}, True, "UPSTREAM_CONNECTION_LOST", CLOSED),
    # A JSON answer announces its length, sends half, then hangs up.
    "body-cut": (
        {"stream_cut_after": 0}, False, "UPSTREAM_CONNECTION_LOST",
        "Provider '{endpoint}' broke off its response",
    ),
    "malformed-json": ({"malformed": True}, False, "UPSTREAM_BAD_RESPONSE", "not JSON"),
    "html-page": (
        {"content_type": "text/html; charset=utf-8"}, False, "UPSTREAM_BAD_RESPONSE",
        "Provider '{endpoint}' answered with text/html, not JSON.",
    ),
    # A server that ignores `stream` (some OpenAI-compatible ones do) answers whole JSON:
    # the client is told so, rather than getting an empty stream.
    "json-to-a-stream": (
        {"content_type": "application/json"}, True, "UPSTREAM_BAD_RESPONSE",
        "answered with application/json, not text/event-stream.",
    ),
    # A unary body over the cap, or one stream event that grows past it: the gateway never
    # buffers more than the cap of what a provider sends.
    "too-large": (
        {"pad_bytes": 2 * CAP}, False, "UPSTREAM_RESPONSE_TOO_LARGE",
        "over the gateway's 0.0625 MiB limit",
    ),
    "too-large-stream": (
        {"pad_bytes": 2 * CAP}, True, "UPSTREAM_RESPONSE_TOO_LARGE",
        "over the gateway's 0.0625 MiB limit",
    ),
}  # fmt: skip


@pytest.mark.parametrize("endpoint", ["openai", "anthropic"])
@pytest.mark.parametrize("case", BAD_GATEWAY)
async def test_a_provider_failing_before_any_content_is_502(
    client: Client, openai_sim: str, anthropic_sim: str, endpoint: str, case: str
) -> None:
    spec, stream, reason, phrase = BAD_GATEWAY[case]
    sim_url, model = sims(openai_sim, anthropic_sim)[endpoint]
    await fault(sim_url, model=model, **spec)
    status, body, _ = await ask(client, endpoint, stream=stream)
    assert status == 502
    assert_fault(
        body,
        code="TEMPORARILY_UNAVAILABLE",
        reason=reason,
        provider=endpoint,
        phrase=phrase.format(endpoint=endpoint),
    )


async def test_a_malformed_stream_event_before_any_content_is_502(
    client: Client, anthropic_sim: str
) -> None:
    """Anthropic's first event (``message_start``) carries no content: the corrupted event
    after it fails the stream before anything reached the client, so it is a plain 502."""
    await fault(anthropic_sim, model="claude-3-5-haiku-latest", malformed=True)
    status, body, _ = await ask(client, "anthropic", stream=True)
    assert status == 502
    assert_fault(
        body,
        code="TEMPORARILY_UNAVAILABLE",
        reason="UPSTREAM_BAD_RESPONSE",
        provider="anthropic",
        phrase="not JSON",
    )


@pytest.mark.parametrize("endpoint", ["openai", "anthropic"])
async def test_a_stream_cut_before_any_event_is_a_502(
    client: Client, openai_sim: str, anthropic_sim: str, endpoint: str
) -> None:
    sim_url, model = sims(openai_sim, anthropic_sim)[endpoint]
    await fault(sim_url, model=model, stream_cut_after=0)
    status, body, _ = await ask(client, endpoint, stream=True)
    assert status == 502
    assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert body["details"][0]["metadata"]["external_model_provider"] == endpoint


async def test_a_malformed_stream_event_after_content_ends_with_an_error_event(
    client: Client, openai_sim: str
) -> None:
    """After content went out, the failure can only be told in-band: an error event naming
    the fault, then ``[DONE]``; the events before it are intact."""
    await fault(openai_sim, model="gpt-4o-mini", malformed=True, chunk_delay_ms=50)
    resp = await client.post("/serving-endpoints/openai/invocations", json={**CHAT, "stream": True})
    lines = [line for line in (await resp.read()).decode().split("\n") if line]
    assert resp.status == 200
    assert lines[-1] == "data: [DONE]"
    error = orjson.loads(lines[-2].removeprefix("data: "))
    assert error["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "unknown shape" in error["message"] or "not JSON" in error["message"]
    assert len(lines) >= 3
    assert all("error" not in orjson.loads(line[6:]) for line in lines[:-2])


async def test_an_answer_under_the_cap_is_untouched(client: Client, openai_sim: str) -> None:
    await fault(openai_sim, model="gpt-4o-mini", pad_bytes=CAP // 2)
    status, body, _ = await ask(client, "openai")
    assert status == 200
    assert body["choices"][0]["message"]["content"]


@pytest.mark.parametrize("endpoint", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_slow_drip_upstream_is_cut_at_the_deadline(
    client: Client, openai_sim: str, anthropic_sim: str, endpoint: str, stream: bool
) -> None:
    """A byte every 20 ms keeps every read busy (no idle gap ever reaches the timeout), but
    the answer would take seconds: the request's deadline ends it, on time."""
    sim_url, model = sims(openai_sim, anthropic_sim)[endpoint]
    await fault(sim_url, model=model, drip_ms=20)
    status, body, elapsed = await ask(client, endpoint, stream=stream)
    assert status == 504
    assert_fault(
        body,
        code="DEADLINE_EXCEEDED",
        reason="UPSTREAM_TIMEOUT",
        provider=endpoint,
        phrase=f"Provider '{endpoint}'",
    )
    assert DEADLINE_S <= elapsed < DEADLINE_S + 1.5


async def test_a_slow_stream_that_has_started_is_not_cut_by_the_deadline(
    client: Client, openai_sim: str
) -> None:
    """Once the first event reached the client only the idle gap counts: a model that
    streams slowly for longer than the deadline is healthy, not a slowloris."""
    await fault(openai_sim, model="gpt-4o-mini", chunk_delay_ms=DEADLINE_S * 1000 / 4)
    started = time.monotonic()
    resp = await client.post("/serving-endpoints/openai/invocations", json={**CHAT, "stream": True})
    lines = [line for line in (await resp.read()).decode().split("\n") if line]
    assert time.monotonic() - started > DEADLINE_S
    assert resp.status == 200
    assert lines[-1] == "data: [DONE]"
    assert all("error" not in orjson.loads(line[6:]) for line in lines[:-1])


async def test_a_stream_that_goes_silent_mid_way_ends_with_an_idle_timeout_event(
    client: Client, openai_sim: str
) -> None:
    """After its first event a stream is held to the idle timeout alone: a gap longer than it
    ends the stream in-band (504's code), with the events before it intact."""
    await fault(openai_sim, model="gpt-4o-mini", chunk_delay_ms=DEADLINE_S * 1000 * 3)
    started = time.monotonic()
    resp = await client.post("/serving-endpoints/openai/invocations", json={**CHAT, "stream": True})
    lines = [line for line in (await resp.read()).decode().split("\n") if line]
    assert resp.status == 200
    assert lines[-1] == "data: [DONE]"
    error = orjson.loads(lines[-2].removeprefix("data: "))
    assert error["error_code"] == "DEADLINE_EXCEEDED"
    assert "sent nothing for" in error["message"]
    assert len(lines) >= 3  # the first event reached the client before the silence
    assert time.monotonic() - started < DEADLINE_S * 3


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose listen queue is full: the kernel drops new connection attempts, so a
    connect neither succeeds nor fails, it times out (as with a firewalled host)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    queued: list[socket.socket] = []
    try:
        while True:  # fill the queue until a connect times out: then it is full
            probe = socket.socket()
            probe.settimeout(0.3)
            queued.append(probe)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                break
            if len(queued) > 64:
                pytest.skip("the kernel accepts every connection here; no black hole")
        yield port
    finally:
        for sock in queued:
            sock.close()
        server.close()


async def test_a_connect_timeout_is_504_naming_the_connect(
    workspace: Workspace,
    black_hole: int,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    from servegate.transport.client import Timeouts

    write_yaml(
        workspace.manifests / "e.yaml",
        endpoint_doc("hole", [openai_entity("gpt-4o", f"http://127.0.0.1:{black_hole}/v1")]),
    )
    client = await aiohttp_client(
        in_process_app(timeouts=Timeouts(connect=0.5, first_byte=5, idle=5))
    )
    started = time.monotonic()
    status, body, _ = await ask(client, "hole")
    assert status == 504
    assert_fault(
        body,
        code="DEADLINE_EXCEEDED",
        reason="UPSTREAM_TIMEOUT",
        provider="openai",
        phrase="Could not connect to provider 'openai' within 0.5 s.",
    )
    assert time.monotonic() - started < 3


def test_the_readme_lists_every_fault_reason() -> None:
    """FAULT_REASONS is what clients may see in ``details[0].reason``: the README's table
    names each of them, and no other."""
    readme = (REPO / "README.md").read_text()
    listed = set(re.findall(r"^\| `(UPSTREAM_[A-Z_]+)` \|", readme, flags=re.MULTILINE))
    assert listed == set(FAULT_REASONS)
