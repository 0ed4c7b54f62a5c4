"""The /_sim control API: fault injection and request recording (on the OpenAI app)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient

from servegate.simulators import create_openai_app

pytestmark = pytest.mark.timeout(15)

KEY = "sk-test-0123456789abcdef"
MESSAGES: Any = [{"role": "user", "content": "one two three four"}]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def sim(aiohttp_client: Any) -> TestClient[Any, Any]:
    """A raw client on the simulator, used for /_sim calls and raw provider calls."""
    return await aiohttp_client(create_openai_app(api_keys=[KEY]))  # type: ignore[no-any-return]


@pytest.fixture
async def sdk(sim: TestClient[Any, Any]) -> AsyncIterator[openai.AsyncOpenAI]:
    base_url = str(sim.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=10) as c:
        yield c


async def add_fault(sim: TestClient[Any, Any], **spec: Any) -> str:
    resp = await sim.post("/_sim/faults", json=spec)
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["id"])


async def chat(sdk: openai.AsyncOpenAI, model: str = "m") -> str | None:
    result = await sdk.chat.completions.create(model=model, messages=MESSAGES)
    return result.choices[0].message.content


def stream_body(model: str = "m") -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "stream": True}


async def collect(source: AsyncIterator[Any], into: list[Any]) -> None:
    """Drain ``source`` into ``into``, so what arrived before an error stays visible."""
    async for item in source:
        into.append(item)


async def read_events(resp: aiohttp.ClientResponse, count: int) -> list[str]:
    events: list[str] = []
    while len(events) < count:
        line = (await resp.content.readline()).decode()
        if line.startswith("data: "):
            events.append(line.removeprefix("data: ").strip())
    return events


async def test_status_fault_with_body_and_retry_after(
    sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    body = {"error": {"message": "slow down", "type": "requests", "param": None, "code": "x"}}
    await add_fault(sim, status=429, body=body, headers={"Retry-After": "3"}, times=1)

    with pytest.raises(openai.RateLimitError) as caught:
        await chat(sdk)

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.body == body["error"]
    assert await chat(sdk) is not None  # times=1: the next request is normal


async def test_status_only_fault_gets_openais_own_error(
    sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    await add_fault(sim, status=429, times=1)
    await add_fault(sim, status=500, times=1)

    with pytest.raises(openai.RateLimitError) as rate_limited:
        await chat(sdk, model="gpt-4o")
    with pytest.raises(openai.InternalServerError) as server_error:
        await chat(sdk)

    assert isinstance(rate_limited.value.body, dict)
    assert rate_limited.value.body["code"] == "rate_limit_exceeded"
    assert rate_limited.value.body["message"].startswith("Rate limit reached for gpt-4o")
    assert isinstance(server_error.value.body, dict)
    assert server_error.value.body["type"] == "server_error"


async def test_fault_matches_model_and_counts_times(
    sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    await add_fault(sim, model="gpt-a", status=503, times=2)

    assert await chat(sdk, model="gpt-b") is not None
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await chat(sdk, model="gpt-a")
    assert await chat(sdk, model="gpt-a") is not None
    listed = await (await sim.get("/_sim/faults")).json()
    assert listed == {"faults": []}


async def test_latency_delays_the_response(
    sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    await add_fault(sim, latency_ms=300, times=2)

    started = time.monotonic()
    assert await chat(sdk) is not None
    elapsed = time.monotonic() - started
    with pytest.raises(openai.APITimeoutError):
        await sdk.chat.completions.create(model="m", messages=MESSAGES, timeout=0.05)

    assert elapsed >= 0.3


async def test_stream_cut_makes_the_sdk_raise(
    sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    await add_fault(sim, stream_cut_after=2, times=1)
    received: list[object] = []

    stream = await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError):
        await collect(stream, received)

    assert len(received) == 2


async def test_stream_cut_leaves_the_body_incomplete_on_the_wire(
    sim: TestClient[Any, Any],
) -> None:
    await add_fault(sim, stream_cut_after=3, times=1)
    pieces: list[bytes] = []

    resp = await sim.post("/v1/chat/completions", json=stream_body(), headers=AUTH)
    with pytest.raises(aiohttp.ClientPayloadError):
        await collect(resp.content.iter_any(), pieces)

    data = b"".join(pieces)
    assert resp.status == 200
    assert data.count(b"data: ") == 3
    assert b"[DONE]" not in data


async def test_non_streaming_cut_truncates_the_json(
    sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    await add_fault(sim, stream_cut_after=0, times=1)

    with pytest.raises(openai.APIConnectionError):
        await chat(sdk)


async def test_malformed_json_body(sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI) -> None:
    await add_fault(sim, malformed=True, times=1)

    with pytest.raises(json.JSONDecodeError):
        await chat(sdk)


async def test_malformed_stream_event(sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI) -> None:
    await add_fault(sim, malformed=True, times=2)

    resp = await sim.post("/v1/chat/completions", json=stream_body(), headers=AUTH)
    events = (await resp.read()).decode().split("\n\n")[:-1]
    stream = await sdk.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    with pytest.raises(json.JSONDecodeError):
        await collect(stream, [])

    json.loads(events[0].removeprefix("data: "))
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[1].removeprefix("data: "))
    assert events[-1] == "data: [DONE]"


async def test_gate_parks_a_stream_until_opened(sim: TestClient[Any, Any]) -> None:
    await add_fault(sim, gate="g1", gate_after=2, times=1)

    resp = await sim.post("/v1/chat/completions", json=stream_body(), headers=AUTH)
    first = await asyncio.wait_for(read_events(resp, 2), timeout=5)
    rest = asyncio.create_task(resp.content.read())
    done, _ = await asyncio.wait({rest}, timeout=0.2)
    assert not done, "the stream went on although its gate is closed"

    opened = await sim.post("/_sim/gates/g1/open")
    tail = await asyncio.wait_for(rest, timeout=5)

    assert opened.status == 200
    assert len(first) == 2
    assert tail.endswith(b"data: [DONE]\n\n")


async def test_gate_opened_in_advance_does_not_block(sim: TestClient[Any, Any]) -> None:
    await sim.post("/_sim/gates/early/open")
    await add_fault(sim, gate="early", times=1)

    resp = await sim.post("/v1/chat/completions", json=stream_body(), headers=AUTH)
    body = await asyncio.wait_for(resp.read(), timeout=5)

    assert body.endswith(b"data: [DONE]\n\n")


async def test_gate_holds_a_non_streaming_response(
    sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    await add_fault(sim, gate="g2", times=1)

    pending = asyncio.create_task(chat(sdk))
    done, _ = await asyncio.wait({pending}, timeout=0.2)
    assert not done
    await sim.post("/_sim/gates/g2/open")

    assert await asyncio.wait_for(pending, timeout=5) is not None


async def test_clearing_faults_releases_parked_streams(sim: TestClient[Any, Any]) -> None:
    await add_fault(sim, gate="never", gate_after=1)

    resp = await sim.post("/v1/chat/completions", json=stream_body(), headers=AUTH)
    await asyncio.wait_for(read_events(resp, 1), timeout=5)
    cleared = await (await sim.delete("/_sim/faults")).json()
    body = await asyncio.wait_for(resp.content.read(), timeout=5)

    assert cleared == {"cleared": 1}
    assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"status": 429, "retry_after": 3}, "unknown fault field(s): retry_after"),
        ({"status": 1000}, "'status' must be an HTTP status (100-599)"),
        ({"times": 0}, "'times' must be an integer >= 1"),
        ({"gate_after": 2}, "'gate_after' needs 'gate'"),
        ({"headers": {"Retry-After": 3}}, "'headers' must be an object of string values"),
        ({"hang_up": "yes"}, "'malformed' and 'hang_up' must be booleans"),
        ({"pad_bytes": -1}, "'pad_bytes' must be an integer >= 0"),
        ({"drip_ms": "slow"}, "'drip_ms' must be a number >= 0"),
        ({"content_type": ""}, "'content_type' must be a non-empty string"),
        ([], "the fault must be a JSON object"),
    ],
)
async def test_invalid_fault_specs_are_refused(
    sim: TestClient[Any, Any], spec: Any, message: str
) -> None:
    resp = await sim.post("/_sim/faults", json=spec)

    assert resp.status == 400
    assert await resp.json() == {"error": message}


async def test_requests_are_recorded_and_cleared(
    sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    await sdk.chat.completions.create(
        model="m",
        messages=MESSAGES,
        extra_headers={"OpenAI-Organization": "org-test"},
        extra_query={"trace": "1"},
    )
    await sim.get("/_sim/faults")

    recorded = (await (await sim.get("/_sim/requests")).json())["requests"]
    await sim.delete("/_sim/requests")
    after_clear = (await (await sim.get("/_sim/requests")).json())["requests"]

    assert len(recorded) == 1  # /_sim calls are not recorded
    entry = recorded[0]
    assert entry["method"] == "POST"
    assert entry["path"] == "/v1/chat/completions"
    assert entry["query"] == {"trace": "1"}
    assert entry["headers"]["authorization"] == f"Bearer {KEY}"
    assert entry["headers"]["openai-organization"] == "org-test"
    assert entry["json"] == {"model": "m", "messages": MESSAGES}
    assert entry["form"] is None
    assert after_clear == []


async def test_rejected_requests_are_recorded_too(sim: TestClient[Any, Any]) -> None:
    await sim.post("/v1/chat/completions", data=b"not json", headers={"Authorization": "x"})

    recorded = (await (await sim.get("/_sim/requests")).json())["requests"]

    assert recorded[0]["json"] is None
    assert recorded[0]["headers"]["authorization"] == "x"


async def test_hang_up_closes_the_connection_before_any_response(
    sim: TestClient[Any, Any], sdk: openai.AsyncOpenAI
) -> None:
    await add_fault(sim, hang_up=True, times=1)
    with pytest.raises(openai.APIConnectionError):
        await chat(sdk)
    assert await chat(sdk)  # the fault was used up


async def test_content_type_and_padding_change_the_wire_not_the_answer(
    sim: TestClient[Any, Any],
) -> None:
    await add_fault(sim, content_type="text/html", pad_bytes=1000, times=1)
    resp = await sim.post(
        "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=AUTH
    )
    raw = await resp.read()
    assert resp.headers["Content-Type"] == "text/html"
    assert raw.endswith(b" " * 1000)
    assert json.loads(raw)["choices"][0]["message"]["content"]
    await add_fault(sim, pad_bytes=1000, times=1)
    resp = await sim.post("/v1/chat/completions", json=stream_body(), headers=AUTH)
    first = (await resp.read()).split(b"\n\n")[0]
    assert first.endswith(b"} " + b" " * 999)
    assert json.loads(first.removeprefix(b"data: "))["object"] == "chat.completion.chunk"


async def test_drip_sends_the_answer_a_byte_at_a_time(sim: TestClient[Any, Any]) -> None:
    await add_fault(sim, drip_ms=1, times=1)
    resp = await sim.post(
        "/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, headers=AUTH
    )
    pieces = []
    while piece := await resp.content.readany():
        pieces.append(piece)
    body = b"".join(pieces)
    assert json.loads(body)["object"] == "chat.completion"
    assert len(pieces) > 10  # arrived in many small reads, not one
