"""The Anthropic simulator over real HTTP: its auth and body checks, its replies, the
event-stream framing, and the shared faults applied with Anthropic's framing."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from servegate.simulators.anthropic import DEFAULT_API_KEY, create_anthropic_app

pytestmark = pytest.mark.timeout(15)

MODEL = "claude-3-5-haiku-latest"
HEADERS = {"x-api-key": DEFAULT_API_KEY, "anthropic-version": "2023-06-01"}
USER = [{"role": "user", "content": "Tell me about the lighthouse keeper and the sea"}]
REPLY = f"Simulated reply from {MODEL} to: Tell me about the lighthouse keeper and"
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


@pytest.fixture
async def sim(aiohttp_client: Any) -> TestClient[Any, Any]:
    app = create_anthropic_app(models=[MODEL, "claude-2.1"])
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 64, "messages": USER, **extra}


async def post(
    sim: TestClient[Any, Any], payload: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    resp = await sim.post(
        "/v1/messages", json=payload, headers=HEADERS if headers is None else headers
    )
    raw = await resp.read()
    parsed = orjson.loads(raw) if resp.content_type == "application/json" else raw
    return resp.status, parsed, resp


def events_of(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse an Anthropic event stream, checking its framing on the way."""
    events = []
    for frame in raw.decode().split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = orjson.loads(data_line.removeprefix("data: "))
        assert data["type"] == event_line.removeprefix("event: ")
        events.append((data["type"], data))
    assert raw.endswith(b"\n\n") and b"[DONE]" not in raw
    return events


def error(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message}


# ---------------------------------------------------------------- auth and version


@pytest.mark.parametrize(
    ("headers", "status", "expected"),
    [
        pytest.param(
            {"anthropic-version": "2023-06-01"},
            401,
            error("authentication_error", "x-api-key header is required"),
            id="no-key",
        ),
        pytest.param(
            {"Authorization": f"Bearer {DEFAULT_API_KEY}", "anthropic-version": "2023-06-01"},
            401,
            error("authentication_error", "x-api-key header is required"),
            id="bearer-is-not-the-api-key-header",
        ),
        pytest.param(
            {"x-api-key": "sk-ant-wrong", "anthropic-version": "2023-06-01"},
            401,
            error("authentication_error", "invalid x-api-key"),
            id="wrong-key",
        ),
        pytest.param(
            {"x-api-key": DEFAULT_API_KEY},
            400,
            error("invalid_request_error", "anthropic-version: header is required"),
            id="no-version",
        ),
        pytest.param(
            {"x-api-key": DEFAULT_API_KEY, "anthropic-version": "2020-01-01"},
            400,
            error("invalid_request_error", "anthropic-version: invalid version '2020-01-01'"),
            id="unknown-version",
        ),
    ],
)
async def test_auth_and_version(
    sim: TestClient[Any, Any], headers: dict[str, str], status: int, expected: dict[str, str]
) -> None:
    code, got, resp = await post(sim, body(), headers)
    assert code == status
    assert got["type"] == "error" and got["error"] == expected
    assert got["request_id"].startswith("req_")
    assert resp.headers["request-id"].startswith("req_")


# ---------------------------------------------------------------- body validation

TOOL_TURN = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
}

INVALID = [
    pytest.param({"max_tokens": None}, "max_tokens: Field required", id="no-max-tokens"),
    pytest.param({"model": None}, "model: Field required", id="no-model"),
    pytest.param({"n": 1}, "n: Extra inputs are not permitted", id="openai-n"),
    pytest.param({"stop": ["x"]}, "stop: Extra inputs are not permitted", id="openai-stop"),
    pytest.param(
        {"max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1", id="zero"
    ),
    pytest.param(
        {"temperature": 1.5}, "temperature: Input should be less than or equal to 1", id="temp"
    ),
    pytest.param({"messages": []}, "messages: at least one message is required", id="no-messages"),
    pytest.param(
        {"messages": [{"role": "system", "content": "x"}, *USER]},
        'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
        'parameter, not "system" as an input message role.',
        id="system-role",
    ),
    pytest.param(
        {"messages": [*USER, *USER]},
        'messages: roles must alternate between "user" and "assistant", but found multiple '
        '"user" roles in a row',
        id="alternation",
    ),
    pytest.param(
        {"messages": [{"role": "assistant", "content": "hi"}]},
        'messages: first message must use the "user" role',
        id="first-assistant",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": ""}]},
        "messages.0: all messages must have non-empty content except for the optional final "
        "assistant message",
        id="empty-content",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
        "messages: text content blocks must be non-empty",
        id="empty-text-block",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/bmp", "data": "x"},
                        }
                    ],
                }
            ]
        },
        "messages.0.content.0.source: Input should be a valid base64 or url image source",
        id="image-media-type",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]}
            ]
        },
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9. "
        "Each `tool_result` block must have a corresponding `tool_use` block in the previous "
        "message.",
        id="orphan-tool-result",
    ),
    pytest.param(
        {"messages": [*USER, TOOL_TURN, {"role": "user", "content": "and?"}]},
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: "
        "toolu_1. Each `tool_use` block must have a corresponding `tool_result` block in the "
        "next message.",
        id="unanswered-tool-use",
    ),
    pytest.param(
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        "tools.0.custom.function: Extra inputs are not permitted",
        id="openai-shaped-tool",
    ),
    pytest.param(
        {"tool_choice": {"type": "required"}},
        "tool_choice: Input should be a valid tool choice (auto, any, tool, none)",
        id="openai-tool-choice",
    ),
    pytest.param(
        {"metadata": {"user": "ana"}},
        "metadata.user: Extra inputs are not permitted",
        id="metadata",
    ),
]


@pytest.mark.parametrize(("change", "message"), INVALID)
async def test_body_validation(
    sim: TestClient[Any, Any], change: dict[str, Any], message: str
) -> None:
    payload = {k: v for k, v in body(**change).items() if v is not None}
    status, got, _ = await post(sim, payload)
    assert (status, got["error"]) == (400, error("invalid_request_error", message))


async def test_unknown_model_and_path(sim: TestClient[Any, Any]) -> None:
    status, got, _ = await post(sim, body(model="claude-9"))
    assert (status, got["error"]) == (404, error("not_found_error", "model: claude-9"))
    resp = await sim.post("/v1/complete", json={}, headers=HEADERS)
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "not_found_error"


async def test_body_that_is_not_json(sim: TestClient[Any, Any]) -> None:
    resp = await sim.post("/v1/messages", data=b"{nope", headers=HEADERS)
    assert resp.status == 400
    assert (await resp.json())["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- replies


async def test_message_is_deterministic(sim: TestClient[Any, Any]) -> None:
    status, got, resp = await post(sim, body(system="Be brief."))
    assert status == 200 and resp.headers["request-id"].startswith("req_")
    assert got["id"].startswith("msg_")
    assert {k: v for k, v in got.items() if k != "id"} == {
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": REPLY}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 2 + 9,  # words of the system prompt and of the user message
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": len(REPLY.split()),
            "service_tier": "standard",
        },
    }


@pytest.mark.parametrize(
    ("change", "text", "reason", "sequence"),
    [
        pytest.param(
            {"stop_sequences": ["from"]}, "Simulated reply ", "stop_sequence", "from", id="stop"
        ),
        pytest.param(
            {"max_tokens": 3}, "Simulated reply from", "max_tokens", None, id="max-tokens"
        ),
    ],
)
async def test_reply_limits(
    sim: TestClient[Any, Any], change: dict[str, Any], text: str, reason: str, sequence: str | None
) -> None:
    _, got, _ = await post(sim, body(**change))
    assert got["content"] == [{"type": "text", "text": text}]
    assert (got["stop_reason"], got["stop_sequence"]) == (reason, sequence)


async def test_tool_use_and_tool_result(sim: TestClient[Any, Any]) -> None:
    ask = [{"role": "user", "content": "please call get_weather for Paris"}]
    _, got, _ = await post(sim, body(messages=ask, tools=[WEATHER]))
    assert got["stop_reason"] == "tool_use"
    [use] = got["content"]
    assert use["type"] == "tool_use" and use["name"] == "get_weather"
    assert use["id"].startswith("toolu_")
    assert use["input"] == {"city": "please call get_weather for Paris", "days": 0}
    answer = [
        *ask,
        {"role": "assistant", "content": got["content"]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "18C"}],
        },
    ]
    _, final, _ = await post(sim, body(messages=answer, tools=[WEATHER]))
    assert final["stop_reason"] == "end_turn"
    assert final["content"] == [{"type": "text", "text": f"Simulated reply from {MODEL} to: 18C"}]
    _, forced, _ = await post(sim, body(tools=[WEATHER], tool_choice={"type": "any"}))
    assert forced["content"][0]["name"] == "get_weather"
    _, none, _ = await post(sim, body(messages=ask, tools=[WEATHER], tool_choice={"type": "none"}))
    assert none["stop_reason"] == "end_turn"


# ---------------------------------------------------------------- streaming


async def test_stream_event_sequence(sim: TestClient[Any, Any]) -> None:
    status, raw, resp = await post(sim, body(stream=True))
    assert status == 200 and resp.content_type == "text/event-stream"
    events = events_of(raw)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-4:] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert set(names[3:-3]) == {"content_block_delta"} and len(names[3:-3]) > 3
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"], start["usage"]["input_tokens"]) == ([], None, 9)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == REPLY
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"output_tokens": len(REPLY.split())}


async def test_stream_tool_use_json_deltas(sim: TestClient[Any, Any]) -> None:
    _, raw, _ = await post(
        sim, body(stream=True, tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"})
    )
    events = events_of(raw)
    block = events[1][1]["content_block"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "get_weather", {})
    pieces = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert pieces[0] == "" and len(pieces) > 2
    assert orjson.loads("".join(pieces)) == {"city": USER[0]["content"][:40].strip(), "days": 0}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


# ---------------------------------------------------------------- faults and recording


async def add_fault(sim: TestClient[Any, Any], **fault: Any) -> None:
    resp = await sim.post("/_sim/faults", json=fault)
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, "rate_limit_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
        (403, "permission_error"),
    ],
)
async def test_status_faults_use_anthropic_errors(
    sim: TestClient[Any, Any], status: int, kind: str, stream: bool
) -> None:
    await add_fault(sim, model=MODEL, status=status, headers={"retry-after": "4"}, times=1)
    code, got, resp = await post(sim, body(stream=stream))
    assert (code, got["type"], got["error"]["type"]) == (status, "error", kind)
    assert resp.headers["retry-after"] == "4"
    assert (await post(sim, body()))[0] == 200  # times=1: used up


async def test_in_band_error_event(sim: TestClient[Any, Any]) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    await add_fault(sim, body=overloaded, times=1)
    _, raw, _ = await post(sim, body(stream=True))
    events = events_of(raw)
    assert [n for n, _ in events] == [
        "message_start", "content_block_start", "ping", "content_block_delta", "error"
    ]  # fmt: skip
    assert events[-1][1] == overloaded


async def test_stream_cut_drops_the_connection(sim: TestClient[Any, Any]) -> None:
    await add_fault(sim, stream_cut_after=2, times=1)
    resp = await sim.post("/v1/messages", json=body(stream=True), headers=HEADERS)
    pieces: list[bytes] = []

    async def read_all() -> None:
        async for piece in resp.content.iter_any():
            pieces.append(piece)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_all()
    data = b"".join(pieces)
    assert data.count(b"event: ") == 2 and b"message_stop" not in data


async def test_malformed_stream_event(sim: TestClient[Any, Any]) -> None:
    await add_fault(sim, malformed=True, times=1)
    _, raw, _ = await post(sim, body(stream=True))
    second = raw.decode().split("\n\n")[1]
    assert second.startswith("event: content_block_delta\ndata: {")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(second.split("data: ", 1)[1])


async def test_gate_holds_the_stream(sim: TestClient[Any, Any]) -> None:
    await add_fault(sim, gate="hold", gate_after=1, times=1)
    resp = await sim.post("/v1/messages", json=body(stream=True), headers=HEADERS)
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    assert first.startswith(b"event: message_start\n")
    assert (await sim.post("/_sim/gates/hold/open")).status == 200
    rest = await asyncio.wait_for(resp.content.read(), 5)
    assert rest.rstrip().endswith(b'data: {"type":"message_stop"}')


async def test_requests_are_recorded(sim: TestClient[Any, Any]) -> None:
    await post(sim, body())
    recorded = (await (await sim.get("/_sim/requests")).json())["requests"]
    assert recorded[-1]["path"] == "/v1/messages"
    assert recorded[-1]["headers"]["x-api-key"] == DEFAULT_API_KEY
    assert recorded[-1]["headers"]["anthropic-version"] == "2023-06-01"
    assert recorded[-1]["json"] == body()
