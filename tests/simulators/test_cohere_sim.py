"""The Cohere simulator over real HTTP: auth, field validation, the two stream framings
(SSE for v2 chat, JSON lines for Generate), deterministic answers and the shared faults."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from servegate.simulators.cohere import TEMPLATE_TOKENS, create_cohere_app

pytestmark = pytest.mark.timeout(15)

Client = TestClient[Any, Any]
KEY = "co-sim-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "command-r-plus", "messages": [{"role": "user", "content": "hello there"}]}
GENERATE = {"model": "command", "prompt": "Once upon a time"}
EMBED = {"model": "embed-v4.0", "texts": ["a b", "c"], "input_type": "search_query"}


@pytest.fixture
async def sim(aiohttp_client: Any) -> Client:
    return await aiohttp_client(create_cohere_app(api_keys=[KEY]))  # type: ignore[no-any-return]


async def post(sim: Client, path: str, body: object, headers: dict[str, str] = AUTH) -> Any:
    resp = await sim.post(path, json=body, headers=headers)
    return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def add_fault(sim: Client, **fault: Any) -> None:
    resp = await sim.post("/_sim/faults", json=fault)
    assert resp.status == 200, await resp.text()


async def drain(resp: aiohttp.ClientResponse, pieces: list[bytes]) -> None:
    async for piece in resp.content.iter_any():
        pieces.append(piece)


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``event:``/``data:`` pairs, checking Cohere's framing and the [DONE] terminator."""
    blocks = raw.decode().split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    events = []
    for block in blocks[:-2]:
        kind, data = block.split("\n")
        event = orjson.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        events.append((event["type"], event))
    return events


@pytest.mark.parametrize("path", ["/v2/chat", "/v1/generate", "/v2/embed"])
@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param({}, "no api key supplied", id="missing"),
        pytest.param({"Authorization": "Bearer "}, "no api key supplied", id="empty"),
        pytest.param({"Authorization": "Bearer wrong"}, "invalid api token", id="wrong"),
        pytest.param({"Authorization": KEY}, "no api key supplied", id="not-bearer"),
    ],
)
async def test_bearer_auth(sim: Client, path: str, headers: dict[str, str], message: str) -> None:
    status, _, body = await post(sim, path, CHAT, headers)
    assert (status, orjson.loads(body)) == (401, {"message": message})


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        pytest.param("/v2/chat", CHAT | {"top_p": 0.5}, "top_p", id="chat-openai-name"),
        pytest.param(
            "/v2/chat",
            CHAT | {"messages": [{"role": "user", "content": "x", "name": "ana"}]},
            "messages[0].name",
            id="chat-message-field",
        ),
        pytest.param(
            "/v2/chat",
            CHAT | {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
            "tools[0].function.strict",
            id="chat-tool-field",
        ),
        pytest.param("/v2/embed", EMBED | {"input": "x"}, "input", id="embed-openai-name"),
    ],
)
async def test_unknown_fields_are_422_with_an_id(
    sim: Client, path: str, body: dict[str, Any], named: str
) -> None:
    status, _, raw = await post(sim, path, body)
    error = orjson.loads(raw)
    assert status == 422
    assert error["message"].startswith(f"unknown field: parameter {named} is not a valid field.")
    assert error["id"]


async def test_v1_errors_have_no_id(sim: Client) -> None:
    status, _, raw = await post(sim, "/v1/generate", GENERATE | {"n": 2})
    assert status == 422
    assert orjson.loads(raw) == {
        "message": "unknown field: parameter n is not a valid field. For proper usage, "
        "please refer to https://docs.cohere.com/reference/generate"
    }


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        pytest.param("/v2/chat", CHAT | {"messages": []}, "messages", id="no-messages"),
        pytest.param("/v2/chat", {"messages": CHAT["messages"]}, "model", id="no-model"),
        pytest.param("/v2/chat", CHAT | {"p": 1.0}, "p must be between", id="p-above-0.99"),
        pytest.param("/v2/chat", CHAT | {"k": 501}, "k must be between", id="k-above-500"),
        pytest.param("/v2/chat", CHAT | {"tool_choice": "auto"}, "tool_choice", id="tool-choice"),
        pytest.param(
            "/v2/chat",
            CHAT | {"messages": [{"role": "tool", "content": "x"}]},
            "tool_call_id",
            id="tool-without-call-id",
        ),
        pytest.param(
            "/v2/chat",
            CHAT | {"response_format": {"type": "json_schema"}},
            "response_format",
            id="openai-response-format",
        ),
        pytest.param(
            "/v1/generate", GENERATE | {"temperature": 5.5}, "temperature", id="temperature"
        ),
        pytest.param(
            "/v1/generate", GENERATE | {"num_generations": 6}, "num_generations", id="six-gens"
        ),
        pytest.param("/v1/generate", {"prompt": ""}, "prompt", id="empty-prompt"),
        pytest.param(
            "/v2/embed",
            {"model": "embed-v4.0", "texts": ["a"]},
            "valid input_type must be provided",
            id="no-input-type",
        ),
        pytest.param(
            "/v2/embed", EMBED | {"embedding_types": ["f16"]}, "embedding_types", id="bad-type"
        ),
    ],
)
async def test_invalid_values_are_400(
    sim: Client, path: str, body: dict[str, Any], message: str
) -> None:
    status, _, raw = await post(sim, path, body)
    assert status == 400
    assert orjson.loads(raw)["message"].startswith("invalid request: ")
    assert message in orjson.loads(raw)["message"]


async def test_chat_answer_and_usage(sim: Client) -> None:
    body = CHAT | {"messages": [{"role": "system", "content": "Be brief."}, *CHAT["messages"]]}
    status, content_type, raw = await post(sim, "/v2/chat", body)
    answer = orjson.loads(raw)
    text = "Simulated reply from command-r-plus to: hello there"
    assert (status, content_type) == (200, "application/json")
    assert answer["message"] == {"role": "assistant", "content": [{"type": "text", "text": text}]}
    assert answer["finish_reason"] == "COMPLETE"
    assert answer["usage"] == {
        "billed_units": {"input_tokens": 4, "output_tokens": 7},
        "tokens": {"input_tokens": 4 + TEMPLATE_TOKENS, "output_tokens": 7},
    }


@pytest.mark.parametrize(
    ("extra", "text", "finish"),
    [
        pytest.param({"max_tokens": 3}, "Simulated reply from", "MAX_TOKENS", id="max-tokens"),
        pytest.param(
            {"stop_sequences": [" to:"]},
            "Simulated reply from command-r-plus",
            "STOP_SEQUENCE",
            id="stop-sequence",
        ),
    ],
)
async def test_chat_limits(sim: Client, extra: dict[str, Any], text: str, finish: str) -> None:
    _, _, raw = await post(sim, "/v2/chat", CHAT | extra)
    answer = orjson.loads(raw)
    assert (answer["message"]["content"][0]["text"], answer["finish_reason"]) == (text, finish)


async def test_chat_stream_is_server_sent_events(sim: Client) -> None:
    status, content_type, raw = await post(sim, "/v2/chat", CHAT | {"stream": True})
    events = sse_events(raw)
    kinds = [kind for kind, _ in events]
    assert (status, content_type) == (200, "text/event-stream")
    assert kinds[:2] == ["message-start", "content-start"]
    assert kinds[-2:] == ["content-end", "message-end"]
    assert set(kinds[2:-2]) == {"content-delta"}
    text = "".join(
        e["delta"]["message"]["content"]["text"] for k, e in events if k == "content-delta"
    )
    _, _, whole = await post(sim, "/v2/chat", CHAT)
    assert text == orjson.loads(whole)["message"]["content"][0]["text"]
    assert events[-1][1]["delta"] == {
        "finish_reason": "COMPLETE",
        "usage": orjson.loads(whole)["usage"],
    }


async def test_chat_stream_with_accept_json_is_json_lines(sim: Client) -> None:
    headers = AUTH | {"Accept": "application/json"}
    status, content_type, raw = await post(sim, "/v2/chat", CHAT | {"stream": True}, headers)
    lines = raw.decode().split("\n")
    assert (status, content_type) == (200, "application/stream+json")
    assert lines[-1] == ""
    assert [orjson.loads(line)["type"] for line in lines[:-1]][-1] == "message-end"


async def test_chat_tool_call(sim: Client) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    body = CHAT | {"messages": [{"role": "user", "content": "call get_weather"}], "tools": [tool]}
    _, _, raw = await post(sim, "/v2/chat", body)
    answer = orjson.loads(raw)
    call = answer["message"]["tool_calls"][0]
    assert answer["finish_reason"] == "TOOL_CALL"
    assert answer["message"]["tool_plan"] == "I will call get_weather."
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"call get_weather"}'}

    _, _, raw = await post(sim, "/v2/chat", body | {"stream": True})
    events = sse_events(raw)
    kinds = [kind for kind, _ in events]
    assert kinds[-3:] == ["tool-call-delta", "tool-call-end", "message-end"]
    start = next(e for k, e in events if k == "tool-call-start")
    arguments = "".join(
        e["delta"]["message"]["tool_calls"]["function"]["arguments"]
        for k, e in events
        if k == "tool-call-delta"
    )
    assert start["delta"]["message"]["tool_calls"]["id"] == call["id"]
    assert arguments == call["function"]["arguments"]

    answered = [
        *body["messages"],
        {"role": "assistant", "tool_plan": "I will call get_weather.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    ]
    _, _, raw = await post(sim, "/v2/chat", body | {"messages": answered})
    assert orjson.loads(raw)["finish_reason"] == "COMPLETE"


async def test_generate_answer_and_json_lines_stream(sim: Client) -> None:
    status, _, raw = await post(sim, "/v1/generate", GENERATE | {"num_generations": 2})
    answer = orjson.loads(raw)
    texts = [g["text"] for g in answer["generations"]]
    assert status == 200
    assert texts == [
        "Simulated completion from command for: Once upon a time",
        "Simulated completion from command for: Once upon a time [1]",
    ]
    assert [g["index"] for g in answer["generations"]] == [0, 1]
    assert answer["meta"]["billed_units"] == {"input_tokens": 4, "output_tokens": 9 + 10}

    body = GENERATE | {"num_generations": 2, "stream": True}
    status, content_type, raw = await post(sim, "/v1/generate", body)
    lines = [orjson.loads(line) for line in raw.decode().split("\n")[:-1]]
    assert (status, content_type) == (200, "application/stream+json")
    assert not raw.startswith(b"data:")
    end = lines[-1]
    assert end["event_type"] == "stream-end" and end["is_finished"] is True
    assert end["response"]["meta"] == answer["meta"]
    for index, text in enumerate(texts):
        pieces = [e["text"] for e in lines[:-1] if e["index"] == index]
        assert "".join(pieces) == text


async def test_generate_single_stream_has_no_index(sim: Client) -> None:
    _, _, raw = await post(sim, "/v1/generate", GENERATE | {"stream": True})
    first = orjson.loads(raw.split(b"\n")[0])
    assert first == {"text": "Simulated", "is_finished": False, "event_type": "text-generation"}


async def test_embed(sim: Client) -> None:
    body = EMBED | {"embedding_types": ["float", "int8"], "output_dimension": 256}
    status, _, raw = await post(sim, "/v2/embed", body)
    answer = orjson.loads(raw)
    assert status == 200
    assert answer["response_type"] == "embeddings_by_type"
    assert [len(v) for v in answer["embeddings"]["float"]] == [256, 256]
    assert set(answer["embeddings"]) == {"float", "int8"}
    assert answer["meta"]["billed_units"] == {"input_tokens": 3}
    _, _, again = await post(sim, "/v2/embed", body)
    assert orjson.loads(again)["embeddings"] == answer["embeddings"]


async def test_models_restriction_and_unknown_paths(aiohttp_client: Any) -> None:
    sim = await aiohttp_client(create_cohere_app(api_keys=[KEY], models=["command-r"]))
    status, _, raw = await post(sim, "/v2/chat", CHAT)
    assert status == 404
    assert orjson.loads(raw)["message"].startswith("model 'command-r-plus' not found")
    status, _, _ = await post(sim, "/v1/chat/completions", CHAT)
    assert status == 404


# ---------------------------------------------------------------- shared faults


async def test_status_fault_gets_cohere_bodies_and_headers(sim: Client) -> None:
    await add_fault(sim, model="command-r-plus", status=429, headers={"Retry-After": "3"})
    resp = await sim.post("/v2/chat", json=CHAT | {"stream": True}, headers=AUTH)
    body = await resp.json()
    assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
    assert body["message"].startswith("You are using a Trial key")
    assert body["id"]


async def test_stream_cut_drops_the_connection_before_done(sim: Client) -> None:
    await add_fault(sim, stream_cut_after=3, times=1)
    resp = await sim.post("/v2/chat", json=CHAT | {"stream": True}, headers=AUTH)
    pieces: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        await drain(resp, pieces)
    data = b"".join(pieces)
    assert data.count(b"event: ") == 3
    assert b"[DONE]" not in data


async def test_malformed_generate_stream_line(sim: Client) -> None:
    await add_fault(sim, malformed=True, times=1)
    _, _, raw = await post(sim, "/v1/generate", GENERATE | {"stream": True})
    lines = raw.split(b"\n")
    orjson.loads(lines[0])
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(lines[1])
    assert orjson.loads(lines[-2])["event_type"] == "stream-end"


async def test_gate_parks_a_stream_until_opened(sim: Client) -> None:
    await add_fault(sim, gate="g", gate_after=2, times=1)
    resp = await sim.post("/v2/chat", json=CHAT | {"stream": True}, headers=AUTH)
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    rest = asyncio.create_task(resp.content.read())
    done, _ = await asyncio.wait({rest}, timeout=0.2)
    assert not done, "the stream went on although its gate is closed"
    assert (await sim.post("/_sim/gates/g/open")).status == 200
    tail = await asyncio.wait_for(rest, 5)
    assert first.startswith(b"event: message-start")
    assert tail.endswith(b"data: [DONE]\n\n")


async def test_requests_are_recorded(sim: Client) -> None:
    await post(sim, "/v2/embed", EMBED)
    recorded = (await (await sim.get("/_sim/requests")).json())["requests"]
    assert recorded[-1]["path"] == "/v2/embed"
    assert recorded[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    assert recorded[-1]["json"] == EMBED
