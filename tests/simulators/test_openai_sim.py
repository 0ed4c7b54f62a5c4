"""The OpenAI simulator against the real openai SDK and raw HTTP."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from servegate.simulators import control_of, create_openai_app

pytestmark = pytest.mark.timeout(15)

KEY = "sk-test-0123456789abcdef"
USER_TEXT = "Tell me a story about a lighthouse keeper and the sea"


@pytest.fixture
async def server(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(create_openai_app(api_keys=[KEY]))  # type: ignore[no-any-return]


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    base_url = str(server.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=10) as c:
        yield c


def _user(text: str = USER_TEXT) -> list[Any]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


async def _raw_post(server: TestServer, path: str, body: object, key: str | None = KEY) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url(path), json=body, headers=headers) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def _sse_events(raw: bytes) -> list[str]:
    """Split an SSE body into event payloads, checking OpenAI's framing on the way."""
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.decode().split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1])
    return [e.removeprefix("data: ") for e in events[:-1]]


async def test_chat_completion_is_deterministic(client: openai.AsyncOpenAI) -> None:
    result = await client.chat.completions.create(model="gpt-4o-mini", messages=_user())

    expected = f"Simulated reply from gpt-4o-mini to: {USER_TEXT[:40].strip()}"
    assert result.object == "chat.completion"
    assert result.id.startswith("chatcmpl-sim")
    assert result.model == "gpt-4o-mini"
    assert result.choices[0].message.content == expected
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert result.usage.prompt_tokens == len(["Be", "brief."]) + len(USER_TEXT.split())
    assert result.usage.completion_tokens == len(expected.split())
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


async def test_chat_stream_is_framed_like_openai_with_include_usage(server: TestServer) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": _user("hello there"),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, content_type, raw = await _raw_post(server, "/v1/chat/completions", body)

    assert status == 200
    assert content_type.startswith("text/event-stream")
    chunks = [json.loads(e) for e in _sse_events(raw)[:-1]]
    assert _sse_events(raw)[-1] == "[DONE]"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert words == ["Simulated", " reply", " from", " gpt-4o-mini", " to:", " hello", " there"]
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 7
    assert chunks[-1]["usage"]["prompt_tokens"] == 4


async def test_sdk_streaming_reassembles_content_and_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=_user(),
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        else:
            usage = chunk.usage

    assert text == f"Simulated reply from gpt-4o-mini to: {USER_TEXT[:40].strip()}"
    assert usage is not None
    assert usage.completion_tokens == len(text.split())


async def test_stream_without_include_usage_has_no_usage(server: TestServer) -> None:
    body = {"model": "m", "messages": _user("hi"), "stream": True}
    _, _, raw = await _raw_post(server, "/v1/chat/completions", body)

    chunks = [json.loads(e) for e in _sse_events(raw)[:-1]]
    assert all("usage" not in c and c["choices"] for c in chunks)


async def test_n_max_tokens_and_stop(client: openai.AsyncOpenAI) -> None:
    two = await client.chat.completions.create(model="m", messages=_user("hi"), n=2)
    short = await client.chat.completions.create(model="m", messages=_user("hi"), max_tokens=3)
    stopped = await client.chat.completions.create(model="m", messages=_user("hi"), stop=[" from"])

    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content != two.choices[1].message.content
    assert short.choices[0].message.content == "Simulated reply from"
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None
    assert short.usage.completion_tokens == 3
    assert stopped.choices[0].message.content == "Simulated reply"
    assert stopped.choices[0].finish_reason == "stop"


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


async def test_tool_call_when_forced_or_requested(client: openai.AsyncOpenAI) -> None:
    forced = await client.chat.completions.create(
        model="m",
        messages=_user("Paris please"),
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    asked = await client.chat.completions.create(
        model="m", messages=_user("call get_weather for Oslo"), tools=[WEATHER_TOOL]
    )
    plain = await client.chat.completions.create(
        model="m", messages=_user("just chat"), tools=[WEATHER_TOOL]
    )

    for result, city in ((forced, "Paris please"), (asked, "call get_weather for Oslo")):
        choice = result.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": city, "days": 0}
    assert plain.choices[0].finish_reason == "stop"


async def test_streamed_tool_call_arguments_reassemble(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=_user("call get_weather"),
        tools=[WEATHER_TOOL],
        stream=True,
    )
    name, arguments, finish = "", "", None
    async for chunk in stream:
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            assert call.function is not None
            name += call.function.name or ""
            arguments += call.function.arguments or ""
        finish = choice.finish_reason or finish

    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "call get_weather", "days": 0}
    assert finish == "tool_calls"


async def test_response_format_json(client: openai.AsyncOpenAI) -> None:
    as_object = await client.chat.completions.create(
        model="m", messages=_user("hi"), response_format={"type": "json_object"}
    )
    schema: Any = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "score": {"type": "number"}},
    }
    as_schema = await client.chat.completions.create(
        model="m",
        messages=_user("hi"),
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )

    assert json.loads(as_object.choices[0].message.content or "") == {
        "reply": "Simulated reply from m to: hi"
    }
    assert json.loads(as_schema.choices[0].message.content or "") == {
        "answer": "Simulated reply from m to: hi",
        "score": 0,
    }


async def test_completions_plain_and_streamed(client: openai.AsyncOpenAI) -> None:
    plain = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="Say hi",
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        assert chunk.object == "text_completion"
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage

    assert plain.object == "text_completion"
    assert plain.choices[0].text == "Simulated completion from gpt-3.5-turbo-instruct for: Say hi"
    assert plain.choices[0].finish_reason == "stop"
    assert text == plain.choices[0].text
    assert finish == "stop"
    assert usage is not None
    assert plain.usage is not None
    assert usage.total_tokens == plain.usage.total_tokens == 2 + 7


async def test_completions_default_max_tokens_is_16(client: openai.AsyncOpenAI) -> None:
    prompt = "a b c d e f g h i j k l m n o p q r s t u v w x y z"
    result = await client.completions.create(model="m", prompt=prompt)

    assert result.choices[0].finish_reason == "length"
    assert len(result.choices[0].text.split()) == 16


async def test_embeddings_base64_default_of_the_sdk(
    client: openai.AsyncOpenAI, server: TestServer
) -> None:
    via_sdk = await client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    as_floats = await client.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    wide = await client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=16)

    sent = control_of(server.app).requests()[0]["json"]
    assert sent["encoding_format"] == "base64"  # the SDK asks for base64 and decodes it
    assert [d.index for d in via_sdk.data] == [0, 1]
    assert via_sdk.data[0].embedding == as_floats.data[0].embedding
    assert via_sdk.data[0].embedding != via_sdk.data[1].embedding
    assert len(via_sdk.data[0].embedding) == 8
    assert math.isclose(sum(v * v for v in via_sdk.data[0].embedding), 1.0, rel_tol=1e-5)
    assert len(wide.data[0].embedding) == 16
    assert via_sdk.usage.prompt_tokens == via_sdk.usage.total_tokens == 3


async def test_embeddings_base64_is_little_endian_float32(server: TestServer) -> None:
    body = {"model": "e", "input": "hello", "encoding_format": "base64"}
    _, _, raw_b64 = await _raw_post(server, "/v1/embeddings", body)
    _, _, raw_float = await _raw_post(
        server, "/v1/embeddings", {**body, "encoding_format": "float"}
    )

    encoded = json.loads(raw_b64)["data"][0]["embedding"]
    decoded = list(struct.unpack("<8f", base64.b64decode(encoded)))
    assert decoded == json.loads(raw_float)["data"][0]["embedding"]


async def test_wrong_key_is_401_without_echoing_it(server: TestServer) -> None:
    wrong = "sk-wrong-key-abcdefghijklmnop"
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key=wrong, max_retries=0
    ) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            await bad.chat.completions.create(model="m", messages=_user())

    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert error["message"].startswith("Incorrect API key provided: ")
    assert wrong not in error["message"]


async def test_missing_key_is_401(server: TestServer) -> None:
    status, _, raw = await _raw_post(server, "/v1/chat/completions", {}, key=None)

    assert status == 401
    assert "You didn't provide an API key" in json.loads(raw)["error"]["message"]


async def test_unknown_parameter_is_rejected(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="m", messages=_user(), extra_body={"top_k": 5})

    assert caught.value.body == {
        "message": "Unrecognized request argument supplied: top_k",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize(
    ("path", "body", "message", "param"),
    [
        ("/v1/chat/completions", {"messages": _user()}, "you must provide a model parameter", None),
        (
            "/v1/chat/completions",
            {"model": "m"},
            "Missing required parameter: 'messages'.",
            "messages",
        ),
        ("/v1/completions", {"model": "m"}, "Missing required parameter: 'prompt'.", "prompt"),
        ("/v1/embeddings", {"model": "m"}, "Missing required parameter: 'input'.", "input"),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": _user(), "stream_options": {"include_usage": True}},
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        ),
    ],
)
async def test_invalid_bodies_get_openai_400s(
    server: TestServer, path: str, body: object, message: str, param: str | None
) -> None:
    status, _, raw = await _raw_post(server, path, body)

    assert status == 400
    error = json.loads(raw)["error"]
    assert error["message"] == message
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


async def test_unparseable_json_is_400(server: TestServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.make_url("/v1/chat/completions"),
            data=b"{not json",
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        ) as resp,
    ):
        body = await resp.json()

    assert resp.status == 400
    assert body["error"]["message"].startswith("We could not parse the JSON body")


async def test_models_listing_and_unknown_model(aiohttp_server: Any) -> None:
    server = await aiohttp_server(create_openai_app(api_keys=[KEY], models=["gpt-4o"]))
    async with openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")), api_key=KEY, max_retries=0
    ) as client:
        models = await client.models.list()
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-5-nope", messages=_user())

    assert [m.id for m in models.data] == ["gpt-4o"]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_found"


async def test_unknown_path_is_openai_invalid_url(server: TestServer) -> None:
    status, _, raw = await _raw_post(server, "/v1/chat/complete", {})

    assert status == 404
    assert json.loads(raw)["error"]["message"] == "Invalid URL (POST /v1/chat/complete)"


async def test_completions_echo_is_not_counted_as_completion(client: openai.AsyncOpenAI) -> None:
    plain = await client.completions.create(model="m", prompt="Say hi")
    echoed = await client.completions.create(model="m", prompt="Say hi", echo=True)

    assert echoed.choices[0].text == "Say hi" + plain.choices[0].text
    assert plain.usage is not None
    assert echoed.usage is not None
    assert echoed.usage.completion_tokens == plain.usage.completion_tokens


@pytest.mark.parametrize("bad_input", ["", [], ["ok", ""], {"text": "x"}])
async def test_invalid_embedding_input_is_400(server: TestServer, bad_input: object) -> None:
    status, _, raw = await _raw_post(server, "/v1/embeddings", {"model": "e", "input": bad_input})

    assert status == 400
    assert json.loads(raw)["error"]["message"].startswith("'$.input' is invalid.")


async def test_model_listing_honours_model_less_faults(
    client: openai.AsyncOpenAI, server: TestServer
) -> None:
    control_of(server.app).add_fault({"model": "gpt-4o", "status": 500})
    listed = await client.models.list()
    control_of(server.app).add_fault({"status": 503, "times": 1})

    with pytest.raises(openai.InternalServerError):
        await client.models.list()
    assert listed.data
