"""The Anthropic translator as pure functions: named cases, literal upstream bodies, no
network. Streams are fed one byte at a time and compared with golden SSE text."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from servegate.canonical.requests import parse_query
from servegate.canonical.usage import Usage
from servegate.ingress.errors import BadRequest, UpstreamError, UpstreamUnavailable
from servegate.providers.anthropic import AnthropicProvider, AnthropicStream
from servegate.providers.base import StreamTranslator
from servegate.providers.registry import build_provider
from servegate.spec import ExternalModel, Task
from servegate.transport.credentials import CredentialRegistry

KEY = "sk-ant-unit-SECRET-1"
MODEL = "claude-3-5-haiku-latest"
HI = [{"role": "user", "content": "hi"}]


def provider(
    base: str | None = None, *, model: str = MODEL, task: str = "llm/v1/chat"
) -> AnthropicProvider:
    config: dict[str, Any] = {"anthropic_api_key": "{{secrets/anthropic/api_key}}"}
    if base is not None:
        config["anthropic_api_base"] = base
    external = ExternalModel.model_validate(
        {"name": model, "provider": "anthropic", "task": task, "anthropic_config": config}
    )
    built = build_provider(external, {"anthropic_api_key": KEY}, CredentialRegistry())
    assert isinstance(built, AnthropicProvider)
    return built


def upstream_body(payload: dict[str, Any], kind: Task = Task.CHAT, **kw: Any) -> Any:
    query = parse_query(kind, payload)
    p = provider(**kw)
    p.check(query)
    return orjson.loads(p.build_request(query).body)


# ---------------------------------------------------------------- request: URL and headers


@pytest.mark.parametrize(
    ("base", "url"),
    [
        pytest.param(None, "https://api.anthropic.com/v1/messages", id="default-base"),
        pytest.param("http://127.0.0.1:8905", "http://127.0.0.1:8905/v1/messages", id="simulator"),
        pytest.param("https://gw.example.com/", "https://gw.example.com/v1/messages", id="slash"),
        pytest.param(
            "https://proxy.example.com/anthropic/v1",
            "https://proxy.example.com/anthropic/v1/messages",
            id="base-already-has-v1",
        ),
    ],
)
def test_url_and_headers(base: str | None, url: str) -> None:
    built = provider(base).build_request(parse_query(Task.CHAT, {"messages": HI}))
    assert built.method == "POST"
    assert built.url == url
    assert dict(built.headers) == {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }


# ---------------------------------------------------------------- request: bodies

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}

CHAT_CASES = [
    pytest.param(
        {"messages": HI},
        {"model": MODEL, "max_tokens": 4096, "messages": HI},
        id="minimal-default-max-tokens",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "assistant", "content": "salut"},
                {"role": "system", "content": "No emoji."},
                {"role": "user", "content": "again"},
            ],
            "max_tokens": 50,
        },
        {
            "model": MODEL,
            "max_tokens": 50,
            "system": "Be brief.\n\nUse French.\n\nNo emoji.",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "salut"},
                {"role": "user", "content": "again"},
            ],
        },
        id="system-messages-anywhere-to-top-level-system",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "one"},
                {"role": "user", "content": [{"type": "text", "text": "two"}]},
                {"role": "assistant", "content": "a"},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": "b"},
            ]
        },
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
        },
        id="same-role-turns-merged-empty-text-dropped",
    ),
    pytest.param(
        {
            "messages": HI,
            "stop": "END",
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 40,
            "max_completion_tokens": 99,
            "n": 1,
            "stream_options": {"include_usage": True},
        },
        {
            "model": MODEL,
            "max_tokens": 99,
            "messages": HI,
            "stop_sequences": ["END"],
            "temperature": 0.3,
            "top_p": 0.9,
            "top_k": 40,
        },
        id="sampling-stop-string-max-completion-tokens",
    ),
    pytest.param(
        {"messages": HI, "stop": ["a", "b"], "temperature": 1, "stream": True},
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": HI,
            "stop_sequences": ["a", "b"],
            "temperature": 1,
            "stream": True,
        },
        id="stop-list-temperature-one-stream",
    ),
    pytest.param(
        {"messages": HI, "tools": [TOOL], "tool_choice": "required"},
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": HI,
            "tools": [ANTHROPIC_TOOL],
            "tool_choice": {"type": "any"},
        },
        id="tools-required-is-any",
    ),
    pytest.param(
        {
            "messages": HI,
            "tools": [{"type": "function", "function": {"name": "ping"}}],
            "tool_choice": {"type": "function", "function": {"name": "ping"}},
            "parallel_tool_calls": False,
        },
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": HI,
            "tools": [{"name": "ping", "input_schema": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "tool", "name": "ping", "disable_parallel_tool_use": True},
        },
        id="named-tool-choice-no-parallel-default-schema",
    ),
    pytest.param(
        {"messages": HI, "tools": [TOOL], "tool_choice": "none", "parallel_tool_calls": False},
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": HI,
            "tools": [ANTHROPIC_TOOL],
            "tool_choice": {"type": "none"},
        },
        id="tool-choice-none",
    ),
    pytest.param(
        {"messages": HI, "tools": [TOOL], "parallel_tool_calls": False},
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": HI,
            "tools": [ANTHROPIC_TOOL],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        },
        id="no-parallel-without-choice-is-auto",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "toolu_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {
                    "role": "tool",
                    "tool_call_id": "toolu_2",
                    "content": [{"type": "text", "text": "21C"}],
                },
                {"role": "user", "content": "thanks"},
            ],
            "tools": [TOOL],
        },
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "21C"},
                        {"type": "text", "text": "thanks"},
                    ],
                },
            ],
            "tools": [ANTHROPIC_TOOL],
        },
        id="tool-calls-and-results-round-trip",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
                        },
                    ],
                }
            ]
        },
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": "iVBOR",
                            },
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                        },
                    ],
                }
            ],
        },
        id="images-data-url-and-http-url",
    ),
    pytest.param(
        {
            "messages": HI,
            "user": "ana@example.com",
            "metadata": {"user_id": "overridden"},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "service_tier": "standard_only",
        },
        {
            "model": MODEL,
            "max_tokens": 4096,
            "messages": HI,
            "metadata": {"user_id": "ana@example.com"},
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "service_tier": "standard_only",
        },
        id="user-to-metadata-native-extras-pass-through",
    ),
]


@pytest.mark.parametrize(("payload", "expected"), CHAT_CASES)
def test_chat_body(payload: dict[str, Any], expected: dict[str, Any]) -> None:
    assert upstream_body(payload) == expected


@pytest.mark.parametrize(
    ("payload", "model", "expected"),
    [
        pytest.param(
            {"prompt": "Say hi", "max_tokens": 5, "stop": "\n"},
            "claude-2.1",
            {
                "model": "claude-2.1",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "Say hi"}],
                "stop_sequences": ["\n"],
            },
            id="legacy-model-name-passes-as-given",
        ),
        pytest.param(
            {"prompt": ["Only one"], "temperature": 0},
            "claude-instant-1.2",
            {
                "model": "claude-instant-1.2",
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": "Only one"}],
                "temperature": 0,
            },
            id="one-element-prompt-list",
        ),
    ],
)
def test_completions_body(payload: dict[str, Any], model: str, expected: dict[str, Any]) -> None:
    body = upstream_body(payload, Task.COMPLETIONS, model=model, task="llm/v1/completions")
    assert body == expected


def test_translation_never_changes_the_query() -> None:
    payload = {"messages": [{"role": "system", "content": "s"}, *HI], "stop": "x", "user": "u"}
    query = parse_query(Task.CHAT, payload)
    before = orjson.dumps(query.payload)
    provider().build_request(query)
    provider().build_request(query)
    assert orjson.dumps(query.payload) == before


# ---------------------------------------------------------------- request: refusals

REFUSALS = [
    pytest.param(
        {"response_format": {"type": "json_object"}}, "'response_format'", id="response_format"
    ),
    pytest.param({"logit_bias": {"1": 2}}, "'logit_bias'", id="logit_bias"),
    pytest.param({"frequency_penalty": 0.5}, "'frequency_penalty'", id="frequency_penalty"),
    pytest.param({"presence_penalty": 0.5}, "'presence_penalty'", id="presence_penalty"),
    pytest.param({"seed": 7}, "'seed'", id="seed"),
    pytest.param({"logprobs": True}, "'logprobs'", id="logprobs"),
    pytest.param({"temperature": 1.5}, "between 0 and 1", id="temperature-above-one"),
    pytest.param({"n": 2}, "n must be 1", id="n"),
    pytest.param({"system": "native"}, "'system'", id="native-system"),
    pytest.param({"stop_sequences": ["x"]}, "'stop_sequences'", id="native-stop-sequences"),
    pytest.param({"max_completion_tokens": 0}, "max_completion_tokens", id="bad-max-completion"),
    pytest.param({"tool_choice": "sometimes"}, "tool_choice must be", id="bad-tool-choice"),
    pytest.param(
        {"tools": [{"type": "code_interpreter"}]},
        "tools[0] is not supported",
        id="non-function-tool",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        "'input_audio' in messages[0].content[0]",
        id="audio-part",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                }
            ]
        },
        "image URL in messages[0].content[0]",
        id="image-not-data-or-http",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "system",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                }
            ]
        },
        "'image_url' in messages[0].content[0]",
        id="image-in-system",
    ),
    pytest.param(
        {"messages": [{"role": "function", "name": "f", "content": "x"}]},
        "Role 'function'",
        id="legacy-function-role",
    ),
    pytest.param(
        {"messages": [*HI, {"role": "tool", "content": "x"}]},
        "messages[1].tool_call_id is required",
        id="tool-message-without-id",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1]"},
                        }
                    ],
                }
            ]
        },
        "messages[0].tool_calls[0].function.arguments must be a JSON object",
        id="tool-arguments-not-an-object",
    ),
]


@pytest.mark.parametrize(("extra", "named"), REFUSALS)
def test_chat_refusals(extra: dict[str, Any], named: str) -> None:
    """Each refusal names what was refused (and, for parameters, the provider)."""
    with pytest.raises(BadRequest) as refused:
        upstream_body({"messages": HI, **extra})
    assert refused.value.status == 400
    assert named in refused.value.message


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        pytest.param({"prompt": ["a", "b"]}, "exactly one prompt", id="two-prompts"),
        pytest.param({"prompt": "a", "tools": [TOOL]}, "'tools' on completions", id="tools"),
        pytest.param({"prompt": "a", "echo": True}, "'echo'", id="echo"),
        pytest.param({"prompt": "a", "suffix": "z"}, "'suffix'", id="suffix"),
    ],
)
def test_completions_refusals(payload: dict[str, Any], named: str) -> None:
    with pytest.raises(BadRequest, match=named):
        upstream_body(payload, Task.COMPLETIONS, task="llm/v1/completions")


def test_embeddings_task_is_refused() -> None:
    p = provider(task="llm/v1/embeddings")
    with pytest.raises(
        BadRequest, match=r"'anthropic' does not support the task llm/v1/embeddings"
    ):
        p.check(parse_query(Task.EMBEDDINGS, {"input": "x"}))


# ---------------------------------------------------------------- responses


def message(content: list[dict[str, Any]], stop_reason: str, **usage: int) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 4, **usage},
        }
    )


RESPONSE_CASES = [
    pytest.param(
        message(
            [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}], "end_turn"
        ),
        {"role": "assistant", "content": "Hello there"},
        "stop",
        {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        id="text-end-turn",
    ),
    pytest.param(
        message([{"type": "text", "text": "Hel"}], "max_tokens"),
        {"role": "assistant", "content": "Hel"},
        "length",
        {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        id="max-tokens-is-length",
    ),
    pytest.param(
        message([{"type": "text", "text": "a"}], "stop_sequence"),
        {"role": "assistant", "content": "a"},
        "stop",
        {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        id="stop-sequence-is-stop",
    ),
    pytest.param(
        message([], "refusal"),
        {"role": "assistant", "content": ""},
        "content_filter",
        {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        id="refusal-is-content-filter",
    ),
    pytest.param(
        message(
            [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_01A",
                    "name": "get_weather",
                    "input": {"city": "Paris", "unit": "c"},
                },
            ],
            "tool_use",
            cache_read_input_tokens=100,
            cache_creation_input_tokens=5,
        ),
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "toolu_01A",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city":"Paris","unit":"c"}',
                    },
                }
            ],
        },
        "tool_calls",
        {"prompt_tokens": 115, "completion_tokens": 4, "total_tokens": 119},
        id="tool-use-with-text-thinking-left-out-cache-counted",
    ),
    pytest.param(
        message([{"type": "tool_use", "id": "toolu_02", "name": "now", "input": {}}], "tool_use"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_02",
                    "type": "function",
                    "function": {"name": "now", "arguments": "{}"},
                }
            ],
        },
        "tool_calls",
        {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        id="tool-use-only-content-null",
    ),
]


@pytest.mark.parametrize(("upstream", "msg", "finish", "usage"), RESPONSE_CASES)
def test_chat_response(
    upstream: bytes, msg: dict[str, Any], finish: str, usage: dict[str, int]
) -> None:
    query = parse_query(Task.CHAT, {"messages": HI})
    out = provider().parse_response(query, upstream)
    assert out.usage == Usage(usage["prompt_tokens"], usage["completion_tokens"])
    assert {k: v for k, v in out.body.items() if k != "created"} == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "model": "claude-3-5-haiku-20241022",
        "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
        "usage": usage,
    }


def test_completions_response() -> None:
    query = parse_query(Task.COMPLETIONS, {"prompt": "Say hi"})
    upstream = message([{"type": "text", "text": "Hi!"}], "end_turn")
    out = provider(task="llm/v1/completions").parse_response(query, upstream)
    assert {k: v for k, v in out.body.items() if k != "created"} == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "text_completion",
        "model": "claude-3-5-haiku-20241022",
        "choices": [{"index": 0, "text": "Hi!", "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


@pytest.mark.parametrize(
    "upstream",
    [
        pytest.param(b"<html>bad gateway</html>", id="not-json"),
        pytest.param(b'{"type": "message"}', id="no-content"),
    ],
)
def test_unusable_response(upstream: bytes) -> None:
    with pytest.raises(UpstreamUnavailable):
        provider().parse_response(parse_query(Task.CHAT, {"messages": HI}), upstream)


# ---------------------------------------------------------------- streams


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(
        b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
        for name, data in events
    )


START = (
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_01S",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 1},
        },
    },
)
PING = ("ping", {"type": "ping"})


def block_start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return (
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def delta(index: int, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": body})


def block_stop(index: int) -> tuple[str, dict[str, Any]]:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def end(reason: str, output: int) -> tuple[tuple[str, dict[str, Any]], ...]:
    return (
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": None},
                "usage": {"output_tokens": output},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    )


TEXT_STREAM = sse(
    START,
    block_start(0, {"type": "text", "text": ""}),
    PING,
    delta(0, {"type": "text_delta", "text": "Hello"}),
    delta(0, {"type": "text_delta", "text": " world"}),
    block_stop(0),
    *end("end_turn", 2),
)
TOOL_STREAM = sse(
    START,
    block_start(0, {"type": "text", "text": ""}),
    PING,
    delta(0, {"type": "text_delta", "text": "Checking."}),
    block_stop(0),
    block_start(1, {"type": "tool_use", "id": "toolu_01T", "name": "get_weather", "input": {}}),
    delta(1, {"type": "input_json_delta", "partial_json": ""}),
    delta(1, {"type": "input_json_delta", "partial_json": '{"city": '}),
    delta(1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
    block_stop(1),
    *end("tool_use", 9),
)

C = '"id":"msg_01S","object":"chat.completion.chunk","created":1700000000,"model":"claude-3-5-haiku-20241022"'
T = '"id":"msg_01S","object":"text_completion","created":1700000000,"model":"claude-3-5-haiku-20241022"'
USAGE = '"usage":{"prompt_tokens":15,"completion_tokens":2,"total_tokens":17}'

GOLDEN_TEXT = (
    f'data: {{{C},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Hello"}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{C},"choices":[{{"index":0,"delta":{{"content":" world"}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{C},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop","logprobs":null}}],{USAGE}}}\n\n'
)
GOLDEN_TEXT_INCLUDE_USAGE = (
    f'data: {{{C},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Hello"}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{C},"choices":[{{"index":0,"delta":{{"content":" world"}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{C},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop","logprobs":null}}]}}\n\n'
    f'data: {{{C},"choices":[],{USAGE}}}\n\n'
)
GOLDEN_TOOL = (
    f'data: {{{C},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Checking."}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{C},"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"","name":"get_weather"}},"id":"toolu_01T","type":"function"}}]}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{C},"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"{{\\"city\\": "}}}}]}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{C},"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"function":{{"arguments":"\\"Paris\\"}}"}}}}]}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{C},"choices":[{{"index":0,"delta":{{}},"finish_reason":"tool_calls","logprobs":null}}],"usage":{{"prompt_tokens":15,"completion_tokens":9,"total_tokens":24}}}}\n\n'
)
GOLDEN_COMPLETION = (
    f'data: {{{T},"choices":[{{"index":0,"text":"Hello","finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{T},"choices":[{{"index":0,"text":" world","finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{T},"choices":[{{"index":0,"text":"","finish_reason":"stop","logprobs":null}}],{USAGE}}}\n\n'
)


def feed_bytewise(translator: StreamTranslator, upstream: bytes) -> list[bytes]:
    """Feed ``upstream`` one byte at a time, as the worst-case network split."""
    return [f for i in range(len(upstream)) for f in translator.feed(upstream[i : i + 1])]


def run_stream(task: Task, payload: dict[str, Any], upstream: bytes) -> tuple[str, Usage | None]:
    translator = provider().stream(parse_query(task, {**payload, "stream": True}))
    assert isinstance(translator, AnthropicStream)
    translator.emitter.created = 1700000000
    frames = feed_bytewise(translator, upstream) + translator.finish()
    return b"".join(frames).decode(), translator.usage


@pytest.mark.parametrize(
    ("task", "payload", "upstream", "golden", "usage"),
    [
        pytest.param(
            Task.CHAT, {"messages": HI}, TEXT_STREAM, GOLDEN_TEXT, Usage(15, 2), id="text"
        ),
        pytest.param(
            Task.CHAT,
            {"messages": HI, "stream_options": {"include_usage": True}},
            TEXT_STREAM,
            GOLDEN_TEXT_INCLUDE_USAGE,
            Usage(15, 2),
            id="text-include-usage",
        ),
        pytest.param(
            Task.CHAT,
            {"messages": HI, "tools": [TOOL]},
            TOOL_STREAM,
            GOLDEN_TOOL,
            Usage(15, 9),
            id="tool",
        ),
        pytest.param(
            Task.COMPLETIONS,
            {"prompt": "hi"},
            TEXT_STREAM,
            GOLDEN_COMPLETION,
            Usage(15, 2),
            id="completion",
        ),
    ],
)
def test_stream_golden(
    task: Task, payload: dict[str, Any], upstream: bytes, golden: str, usage: Usage
) -> None:
    assert run_stream(task, payload, upstream) == (golden, usage)


def test_stream_crlf_framing_and_whole_body_at_once() -> None:
    translator = provider().stream(parse_query(Task.CHAT, {"messages": HI, "stream": True}))
    assert isinstance(translator, AnthropicStream)
    translator.emitter.created = 1700000000
    frames = translator.feed(TEXT_STREAM.replace(b"\n", b"\r\n")) + translator.finish()
    assert b"".join(frames).decode() == GOLDEN_TEXT


def test_stream_usage_known_from_message_start() -> None:
    translator = provider().stream(parse_query(Task.CHAT, {"messages": HI, "stream": True}))
    assert translator.feed(sse(START)) == []  # nothing sent yet: an early error stays an HTTP error
    assert translator.usage == Usage(15, 1)


OVERLOADED = (
    "error",
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
)


@pytest.mark.parametrize(
    ("upstream", "status", "code", "retry_after"),
    [
        pytest.param(sse(START, OVERLOADED), 429, "REQUEST_LIMIT_EXCEEDED", 1, id="overloaded"),
        pytest.param(
            sse(
                START,
                block_start(0, {"type": "text", "text": ""}),
                delta(0, {"type": "text_delta", "text": "Hi"}),
                ("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}}),
            ),
            500,
            "INTERNAL_ERROR",
            None,
            id="api-error-after-content",
        ),
    ],
)
def test_stream_error_event(
    upstream: bytes, status: int, code: str, retry_after: int | None
) -> None:
    translator = provider().stream(parse_query(Task.CHAT, {"messages": HI, "stream": True}))
    with pytest.raises(UpstreamError) as raised:
        feed_bytewise(translator, upstream)
    assert (raised.value.status, raised.value.error_code) == (status, code)
    assert raised.value.retry_after == retry_after
    assert raised.value.upstream_body["error"]["type"] in ("overloaded_error", "api_error")


@pytest.mark.parametrize(
    "upstream",
    [
        pytest.param(
            TEXT_STREAM[: TEXT_STREAM.index(b"event: message_stop")], id="no-message-stop"
        ),
        pytest.param(b"", id="empty-body"),
    ],
)
def test_stream_ended_early(upstream: bytes) -> None:
    translator = provider().stream(parse_query(Task.CHAT, {"messages": HI, "stream": True}))
    translator.feed(upstream)
    with pytest.raises(UpstreamUnavailable, match="ended the stream"):
        translator.finish()


def test_stream_event_not_json() -> None:
    translator = provider().stream(parse_query(Task.CHAT, {"messages": HI, "stream": True}))
    with pytest.raises(UpstreamUnavailable, match="not JSON"):
        translator.feed(b"event: message_start\ndata: {oops\n\n")


# ---------------------------------------------------------------- errors


def error_body(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


@pytest.mark.parametrize(
    ("status", "kind", "headers", "out_status", "code", "retry_after"),
    [
        pytest.param(400, "invalid_request_error", {}, 400, "BAD_REQUEST", None, id="400"),
        pytest.param(401, "authentication_error", {}, 401, "UNAUTHENTICATED", None, id="401"),
        pytest.param(403, "permission_error", {}, 403, "PERMISSION_DENIED", None, id="403"),
        pytest.param(404, "not_found_error", {}, 404, "RESOURCE_DOES_NOT_EXIST", None, id="404"),
        pytest.param(
            429,
            "rate_limit_error",
            {"retry-after": "7"},
            429,
            "REQUEST_LIMIT_EXCEEDED",
            7,
            id="429",
        ),
        pytest.param(
            429, "rate_limit_error", {}, 429, "REQUEST_LIMIT_EXCEEDED", 1, id="429-no-retry-after"
        ),
        pytest.param(
            529,
            "overloaded_error",
            {"Retry-After": "3"},
            429,
            "REQUEST_LIMIT_EXCEEDED",
            3,
            id="529",
        ),
        pytest.param(500, "api_error", {}, 500, "INTERNAL_ERROR", None, id="500"),
    ],
)
def test_error_mapping(
    status: int,
    kind: str,
    headers: dict[str, str],
    out_status: int,
    code: str,
    retry_after: int | None,
) -> None:
    body = error_body(kind, f"{kind} for key {KEY}")
    error = provider().error(status, body, CIMultiDict(headers))
    assert isinstance(error, UpstreamError)
    assert (error.status, error.error_code, error.retry_after) == (out_status, code, retry_after)
    assert error.upstream_body == {
        "type": "error",
        "error": {"type": kind, "message": f"{kind} for key [REDACTED]"},
    }
    assert KEY not in error.message
