"""The Cohere translator as pure functions: named cases with literal upstream requests,
responses in OpenAI shape, streams fed one byte at a time against golden SSE text, errors."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from servegate.canonical import responses
from servegate.canonical.requests import QueryRequest, parse_query
from servegate.canonical.usage import Usage
from servegate.ingress.errors import BadRequest, UpstreamError, UpstreamUnavailable
from servegate.providers.base import StreamTranslator, UpstreamRequest
from servegate.providers.cohere import CohereProvider
from servegate.providers.registry import build_provider
from servegate.spec import ExternalModel, Task
from servegate.transport.credentials import CredentialRegistry

KEY = "co-secret-123"
JSON_HEADERS = {
    "Authorization": "Bearer co-secret-123",
    "Content-Type": "application/json",
    "X-Client-Name": "servegate",
    "Accept": "application/json",
}
SSE_HEADERS = {**JSON_HEADERS, "Accept": "text/event-stream"}


def cohere(
    task: str = "llm/v1/chat", model: str = "command-r-plus", **config: Any
) -> CohereProvider:
    external = ExternalModel.model_validate(
        {
            "name": model,
            "provider": "cohere",
            "task": task,
            "cohere_config": {"cohere_api_key": "{{secrets/co/key}}", **config},
        }
    )
    provider = build_provider(external, {"cohere_api_key": KEY}, CredentialRegistry())
    assert isinstance(provider, CohereProvider)
    return provider


def query(task: str, body: dict[str, Any]) -> QueryRequest:
    return parse_query(Task(task), body)


def checked_request(provider: CohereProvider, q: QueryRequest) -> UpstreamRequest:
    """What the pipeline does before sending: check, then build."""
    provider.check(q)
    return provider.build_request(q)


def run(translator: StreamTranslator, upstream: bytes) -> bytes:
    """Feed ``upstream`` one byte at a time, then finish."""
    out = b"".join(b"".join(translator.feed(bytes([byte]))) for byte in upstream)
    return out + b"".join(translator.finish())


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- requests

REQUEST_CASES = [
    pytest.param(
        {},
        "llm/v1/chat",
        {"messages": user()},
        "https://api.cohere.com/v2/chat",
        JSON_HEADERS,
        {"model": "command-r-plus", "messages": [{"role": "user", "content": "hi"}]},
        id="chat-default-base",
    ),
    pytest.param(
        {"cohere_api_base": "https://proxy.example.com/cohere/v1/"},
        "llm/v1/chat",
        {"messages": user()},
        "https://proxy.example.com/cohere/v2/chat",
        JSON_HEADERS,
        {"model": "command-r-plus", "messages": [{"role": "user", "content": "hi"}]},
        id="chat-base-with-version-suffix",
    ),
    pytest.param(
        {},
        "llm/v1/chat",
        {
            "messages": user(),
            "max_tokens": 64,
            "temperature": 0.7,
            "top_p": 1,
            "top_k": 40,
            "stop": "END",
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
            "seed": 7,
            "n": 1,
            "parallel_tool_calls": True,
        },
        "https://api.cohere.com/v2/chat",
        JSON_HEADERS,
        {
            "model": "command-r-plus",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 64,
            "temperature": 0.7,
            "p": 0.99,
            "k": 40,
            "stop_sequences": ["END"],
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
            "seed": 7,
        },
        id="chat-sampling-renamed-top-p-clamped",
    ),
    pytest.param(
        {},
        "llm/v1/chat",
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                {
                    "role": "user",
                    "name": "ana",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q":"cat"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "assistant", "content": "It is a cat."},
            ],
            "max_completion_tokens": 10,
        },
        "https://api.cohere.com/v2/chat",
        JSON_HEADERS,
        {
            "model": "command-r-plus",
            "max_tokens": 10,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "system", "content": [{"type": "text", "text": "No emoji."}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "tool_plan": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q":"cat"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "assistant", "content": "It is a cat."},
            ],
        },
        id="chat-messages-every-role",
    ),
    pytest.param(
        {},
        "llm/v1/chat",
        {
            "messages": user(),
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Weather now",
                        "parameters": {"type": "object", "properties": {}},
                        "strict": True,
                    },
                }
            ],
            "tool_choice": "required",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": {"type": "object"}},
            },
        },
        "https://api.cohere.com/v2/chat",
        JSON_HEADERS,
        {
            "model": "command-r-plus",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Weather now",
                        "parameters": {"type": "object", "properties": {}},
                    },
                }
            ],
            "strict_tools": True,
            "tool_choice": "REQUIRED",
            "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
        },
        id="chat-tools-strict-required-json-schema",
    ),
    pytest.param(
        {},
        "llm/v1/chat",
        {"messages": user(), "tool_choice": "auto", "response_format": {"type": "json_object"}},
        "https://api.cohere.com/v2/chat",
        JSON_HEADERS,
        {
            "model": "command-r-plus",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"},
        },
        id="chat-tool-choice-auto-omitted",
    ),
    pytest.param(
        {},
        "llm/v1/chat",
        {
            "messages": user(),
            "extra_params": {"safety_mode": "STRICT", "documents": '["Cats purr."]'},
        },
        "https://api.cohere.com/v2/chat",
        JSON_HEADERS,
        {
            "model": "command-r-plus",
            "messages": [{"role": "user", "content": "hi"}],
            "safety_mode": "STRICT",
            "documents": ["Cats purr."],
        },
        id="chat-cohere-extras-pass-through",
    ),
    pytest.param(
        {},
        "llm/v1/chat",
        {"messages": user(), "stream": True, "stream_options": {"include_usage": True}},
        "https://api.cohere.com/v2/chat",
        SSE_HEADERS,
        {
            "model": "command-r-plus",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
        id="chat-stream-asks-for-sse",
    ),
    pytest.param(
        {},
        "llm/v1/completions",
        {
            "prompt": ["Once upon"],
            "temperature": 0.8,
            "n": 3,
            "top_p": 0.001,
            "stop": ["\n", "."],
            "logit_bias": {"1234": -10},
            "max_tokens": 20,
            "echo": False,
        },
        "https://api.cohere.com/v1/generate",
        JSON_HEADERS,
        {
            "model": "command-r-plus",
            "prompt": "Once upon",
            "temperature": 2.0,
            "num_generations": 3,
            "p": 0.01,
            "stop_sequences": ["\n", "."],
            "logit_bias": {"1234": -10},
            "max_tokens": 20,
        },
        id="completions-generate-temperature-scaled",
    ),
    pytest.param(
        {"cohere_api_base": "http://127.0.0.1:8906"},
        "llm/v1/completions",
        {"prompt": "Once upon", "stream": True, "extra_params": {"truncate": "END"}},
        "http://127.0.0.1:8906/v1/generate",
        JSON_HEADERS,
        {"model": "command-r-plus", "prompt": "Once upon", "truncate": "END", "stream": True},
        id="completions-stream-json-lines",
    ),
    pytest.param(
        {},
        "llm/v1/embeddings",
        {"input": "hello", "encoding_format": "base64", "dimensions": 256},
        "https://api.cohere.com/v2/embed",
        JSON_HEADERS,
        {
            "model": "command-r-plus",
            "texts": ["hello"],
            "input_type": "search_document",
            "embedding_types": ["float"],
            "output_dimension": 256,
        },
        id="embeddings-default-input-type",
    ),
    pytest.param(
        {},
        "llm/v1/embeddings",
        {"input": ["a", "b"], "input_type": "search_query", "truncate": "END"},
        "https://api.cohere.com/v2/embed",
        JSON_HEADERS,
        {
            "model": "command-r-plus",
            "texts": ["a", "b"],
            "input_type": "search_query",
            "truncate": "END",
            "embedding_types": ["float"],
        },
        id="embeddings-client-input-type",
    ),
]


@pytest.mark.parametrize(("config", "task", "body", "url", "headers", "upstream"), REQUEST_CASES)
def test_build_request(
    config: dict[str, Any],
    task: str,
    body: dict[str, Any],
    url: str,
    headers: dict[str, str],
    upstream: dict[str, Any],
) -> None:
    request = checked_request(cohere(task, **config), query(task, body))
    assert request.url == url
    assert dict(request.headers) == headers
    assert orjson.loads(request.body) == upstream
    assert request.method == "POST"


def test_build_request_does_not_mutate_the_payload() -> None:
    q = query("llm/v1/chat", {"messages": user(), "top_p": 1, "stream": True})
    before = orjson.dumps(q.payload)
    cohere().build_request(q)
    assert orjson.dumps(q.payload) == before


REJECTED = [
    pytest.param("llm/v1/chat", {"messages": user(), "n": 2}, "'n'", id="chat-n-above-1"),
    pytest.param(
        "llm/v1/chat",
        {"messages": user(), "logit_bias": {"1": 1}},
        "'logit_bias'",
        id="chat-logit-bias",
    ),
    pytest.param("llm/v1/chat", {"messages": user(), "user": "ana"}, "'user'", id="chat-user"),
    pytest.param(
        "llm/v1/chat", {"messages": user(), "logprobs": True}, "'logprobs'", id="chat-logprobs"
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": user(), "parallel_tool_calls": False},
        "'parallel_tool_calls'",
        id="chat-no-parallel-tool-calls",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": user(), "tool_choice": {"type": "function", "function": {"name": "f"}}},
        "'tool_choice'",
        id="chat-named-tool-choice",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": user(), "tools": [{"type": "web_search"}]},
        "'tools'",
        id="chat-non-function-tool",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": user(), "response_format": {"type": "xml"}},
        "'response_format'",
        id="chat-response-format-type",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": [{"role": "function", "name": "f", "content": "x"}]},
        "role 'function'",
        id="chat-function-role",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        "type 'input_audio'",
        id="chat-audio-part",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": [{"role": "tool", "content": "x"}]},
        "tool_call_id",
        id="chat-tool-message-without-id",
    ),
    pytest.param("llm/v1/completions", {"prompt": "x", "n": 6}, "'n'", id="completions-n-above-5"),
    pytest.param(
        "llm/v1/completions", {"prompt": ["a", "b"]}, "'prompt'", id="completions-two-prompts"
    ),
    pytest.param(
        "llm/v1/completions", {"prompt": "x", "echo": True}, "'echo'", id="completions-echo"
    ),
    pytest.param(
        "llm/v1/completions", {"prompt": "x", "suffix": "!"}, "'suffix'", id="completions-suffix"
    ),
    pytest.param(
        "llm/v1/embeddings", {"input": "x", "user": "ana"}, "'user'", id="embeddings-user"
    ),
    pytest.param("llm/v1/embeddings", {"input": [1, 2, 3]}, "'input'", id="embeddings-token-ids"),
]


@pytest.mark.parametrize(("task", "body", "named"), REJECTED)
def test_unsupported_parameters_are_refused_naming_them(
    task: str, body: dict[str, Any], named: str
) -> None:
    provider = cohere(task)
    q = query(task, body)
    with pytest.raises(BadRequest) as refused:
        checked_request(provider, q)
    assert refused.value.status == 400
    assert named in refused.value.message
    assert "cohere" in refused.value.message


# ---------------------------------------------------------------- responses


def translate(task: str, upstream: dict[str, Any], body: dict[str, Any] | None = None) -> Any:
    provider = cohere(task)
    request = body or {
        "llm/v1/chat": {"messages": user()},
        "llm/v1/completions": {"prompt": "x"},
    }.get(task, {"input": "x"})
    translated = provider.parse_response(query(task, request), orjson.dumps(upstream))
    result = dict(translated.body)
    result.pop("created", None)
    return result, translated.usage


USAGE = {
    "billed_units": {"input_tokens": 5, "output_tokens": 3},
    "tokens": {"input_tokens": 71, "output_tokens": 3},
}


def test_chat_response_joins_text_and_counts_billed_units() -> None:
    upstream = {
        "id": "c0ffee",
        "finish_reason": "COMPLETE",
        "message": {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm"},
                {"type": "text", "text": "Hello"},
                {"type": "text", "text": " there"},
            ],
        },
        "usage": USAGE,
    }
    assert translate("llm/v1/chat", upstream) == (
        {
            "id": "c0ffee",
            "object": "chat.completion",
            "model": "command-r-plus",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello there"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        },
        Usage(5, 3),
    )


def test_chat_tool_call_response_carries_the_plan_as_content() -> None:
    call = {
        "id": "get_weather_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    upstream = {
        "id": "c1",
        "finish_reason": "TOOL_CALL",
        "message": {"role": "assistant", "tool_plan": "I will look.", "tool_calls": [call]},
        "usage": {"tokens": {"input_tokens": 9, "output_tokens": 4}},
    }
    body, usage = translate("llm/v1/chat", upstream)
    assert body["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "I will look.", "tool_calls": [call]},
        "finish_reason": "tool_calls",
        "logprobs": None,
    }
    assert usage == Usage(9, 4)  # no billed_units: falls back to tokens


@pytest.mark.parametrize(
    ("cohere_reason", "openai_reason"),
    [
        pytest.param("COMPLETE", "stop", id="complete"),
        pytest.param("STOP_SEQUENCE", "stop", id="stop-sequence"),
        pytest.param("MAX_TOKENS", "length", id="max-tokens"),
        pytest.param("SOMETHING_NEW", "stop", id="unknown"),
    ],
)
def test_chat_finish_reasons(cohere_reason: str, openai_reason: str) -> None:
    upstream = {"id": "c", "finish_reason": cohere_reason, "message": {"content": []}}
    body, usage = translate("llm/v1/chat", upstream)
    assert body["choices"][0]["finish_reason"] == openai_reason
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert usage is None


@pytest.mark.parametrize(
    ("task", "upstream", "status"),
    [
        pytest.param(
            "llm/v1/chat",
            {"id": "c", "finish_reason": "ERROR", "message": {}},
            500,
            id="chat-error",
        ),
        pytest.param(
            "llm/v1/chat",
            {"id": "c", "finish_reason": "TIMEOUT", "message": {}},
            504,
            id="chat-timeout",
        ),
        pytest.param(
            "llm/v1/completions",
            {"id": "g", "generations": [{"id": "x", "text": "", "finish_reason": "ERROR"}]},
            500,
            id="generate-error",
        ),
    ],
)
def test_failed_generations_become_upstream_errors(
    task: str, upstream: dict[str, Any], status: int
) -> None:
    with pytest.raises(UpstreamError) as failed:
        translate(task, upstream)
    assert failed.value.status == status
    assert failed.value.upstream_body == upstream


def test_generate_response_orders_generations_and_maps_reasons() -> None:
    upstream = {
        "id": "g1",
        "prompt": "x",
        "generations": [
            {"id": "b", "index": 1, "text": " two", "finish_reason": "ERROR_TOXIC"},
            {"id": "a", "index": 0, "text": " one", "finish_reason": "MAX_TOKENS"},
        ],
        "meta": {
            "api_version": {"version": "1"},
            "billed_units": {"input_tokens": 1, "output_tokens": 2},
        },
    }
    body, usage = translate("llm/v1/completions", upstream, {"prompt": "x", "n": 2})
    body.pop("id")
    assert body == {
        "object": "text_completion",
        "model": "command-r-plus",
        "choices": [
            {"index": 0, "text": " one", "finish_reason": "length", "logprobs": None},
            {"index": 1, "text": " two", "finish_reason": "content_filter", "logprobs": None},
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    assert usage == Usage(1, 2)


def test_embed_response() -> None:
    upstream = {
        "id": "e1",
        "embeddings": {"float": [[0.5, -0.5], [1.0, 0.0]]},
        "texts": ["a", "b"],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2.0}},
        "response_type": "embeddings_by_type",
    }
    assert translate("llm/v1/embeddings", upstream) == (
        {
            "object": "list",
            "model": "command-r-plus",
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.5, -0.5]},
                {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]},
            ],
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        },
        Usage(2, 0),
    )


@pytest.mark.parametrize(
    ("task", "raw"),
    [
        pytest.param("llm/v1/chat", b"<html>oops</html>", id="not-json"),
        pytest.param("llm/v1/embeddings", b'{"embeddings": [[0.1]]}', id="embeddings-not-by-type"),
    ],
)
def test_unusable_bodies_are_unavailable(task: str, raw: bytes) -> None:
    provider = cohere(task)
    body = {"messages": user()} if task == "llm/v1/chat" else {"input": "x"}
    with pytest.raises(UpstreamUnavailable):
        provider.parse_response(query(task, body), raw)


# ---------------------------------------------------------------- streams


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed chunk ids and timestamps so whole streams compare with golden text."""
    monkeypatch.setattr(responses, "new_id", lambda prefix: f"{prefix}-test")
    monkeypatch.setattr(time, "time", lambda: 1700000000)


# Recorded-style upstream bodies (field for field as Cohere sends them) and the exact SSE the
# client must get for each.
CHAT_TEXT_STREAM = b"""event: message-start
data: {"id":"5c1f","type":"message-start","delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}

event: content-start
data: {"type":"content-start","index":0,"delta":{"message":{"content":{"type":"text","text":""}}}}

event: content-delta
data: {"type":"content-delta","index":0,"delta":{"message":{"content":{"text":"Hola"}}}}

event: content-delta
data: {"type":"content-delta","index":0,"delta":{"message":{"content":{"text":" Juan"}}}}

event: content-end
data: {"type":"content-end","index":0}

event: message-end
data: {"type":"message-end","delta":{"finish_reason":"COMPLETE","usage":{"billed_units":{"input_tokens":5,"output_tokens":2},"tokens":{"input_tokens":70,"output_tokens":2}}}}

data: [DONE]

"""
GOLDEN_CHAT = """data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{"role":"assistant","content":"Hola"},"finish_reason":null,"logprobs":null}]}

data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{"content":" Juan"},"finish_reason":null,"logprobs":null}]}

data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}

"""
GOLDEN_CHAT_INCLUDE_USAGE = """data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{"role":"assistant","content":"Hola"},"finish_reason":null,"logprobs":null}]}

data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{"content":" Juan"},"finish_reason":null,"logprobs":null}]}

data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{},"finish_reason":"stop","logprobs":null}]}

data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}

"""
CHAT_TOOL_STREAM = b"""event: message-start
data: {"id":"93b3","type":"message-start","delta":{"message":{"role":"assistant","content":[],"tool_plan":"","tool_calls":[],"citations":[]}}}

event: tool-plan-delta
data: {"type":"tool-plan-delta","delta":{"message":{"tool_plan":"Voy"}}}

event: tool-call-start
data: {"type":"tool-call-start","index":0,"delta":{"message":{"tool_calls":{"id":"db_1","type":"function","function":{"name":"db","arguments":""}}}}}

event: tool-call-delta
data: {"type":"tool-call-delta","index":0,"delta":{"message":{"tool_calls":{"function":{"arguments":"{\\"q\\": "}}}}}

event: tool-call-delta
data: {"type":"tool-call-delta","index":0,"delta":{"message":{"tool_calls":{"function":{"arguments":"\\"Juan\\"}"}}}}}

event: tool-call-end
data: {"type":"tool-call-end","index":0}

event: message-end
data: {"type":"message-end","delta":{"finish_reason":"TOOL_CALL","usage":{"billed_units":{"input_tokens":50,"output_tokens":26},"tokens":{"input_tokens":793,"output_tokens":61}}}}

data: [DONE]

"""
GOLDEN_TOOL = """data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{"role":"assistant","content":"Voy"},"finish_reason":null,"logprobs":null}]}

data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"","name":"db"},"id":"db_1","type":"function"}]},"finish_reason":null,"logprobs":null}]}

data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"q\\": "}}]},"finish_reason":null,"logprobs":null}]}

data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"Juan\\"}"}}]},"finish_reason":null,"logprobs":null}]}

data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls","logprobs":null}],"usage":{"prompt_tokens":50,"completion_tokens":26,"total_tokens":76}}

"""
GENERATE_STREAM = b"""{"index":0,"text":" Hi","is_finished":false,"event_type":"text-generation"}
{"index":1,"text":" Yo","is_finished":false,"event_type":"text-generation"}
{"index":0,"text":" there","is_finished":false,"event_type":"text-generation"}
{"is_finished":true,"event_type":"stream-end","finish_reason":"COMPLETE","response":{"id":"b32a","generations":[{"id":"g0","index":0,"text":" Hi there","finish_reason":"COMPLETE"},{"id":"g1","index":1,"text":" Yo","finish_reason":"MAX_TOKENS"}],"prompt":"Hello","meta":{"api_version":{"version":"1"},"billed_units":{"input_tokens":1,"output_tokens":3}}}}
"""
GOLDEN_GENERATE = """data: {"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"text":" Hi","finish_reason":null,"logprobs":null}]}

data: {"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"command-r-plus","choices":[{"index":1,"text":" Yo","finish_reason":null,"logprobs":null}]}

data: {"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"text":" there","finish_reason":null,"logprobs":null}]}

data: {"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"command-r-plus","choices":[{"index":0,"text":"","finish_reason":"stop","logprobs":null}]}

data: {"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"command-r-plus","choices":[{"index":1,"text":"","finish_reason":"length","logprobs":null}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}

"""

STREAM_CASES = [
    pytest.param(
        "llm/v1/chat",
        {"messages": user()},
        CHAT_TEXT_STREAM,
        GOLDEN_CHAT,
        Usage(5, 2),
        id="chat-text",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": user(), "stream_options": {"include_usage": True}},
        CHAT_TEXT_STREAM,
        GOLDEN_CHAT_INCLUDE_USAGE,
        Usage(5, 2),
        id="chat-text-include-usage",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": user()},
        CHAT_TOOL_STREAM,
        GOLDEN_TOOL,
        Usage(50, 26),
        id="chat-tool-call",
    ),
    pytest.param(
        "llm/v1/completions",
        {"prompt": "Hello", "n": 2},
        GENERATE_STREAM,
        GOLDEN_GENERATE,
        Usage(1, 3),
        id="generate-two",
    ),
]


@pytest.mark.usefixtures("pinned")
@pytest.mark.parametrize(("task", "body", "upstream", "golden", "usage"), STREAM_CASES)
def test_stream_fed_one_byte_at_a_time(
    task: str, body: dict[str, Any], upstream: bytes, golden: str, usage: Usage
) -> None:
    translator = cohere(task).stream(query(task, {**body, "stream": True}))
    assert run(translator, upstream).decode() == golden
    assert translator.usage == usage


def test_generate_stream_without_trailing_newline_still_ends() -> None:
    translator = cohere("llm/v1/completions").stream(
        query("llm/v1/completions", {"prompt": "x", "stream": True})
    )
    end = {
        "is_finished": True,
        "event_type": "stream-end",
        "finish_reason": "COMPLETE",
        "response": {"id": "g"},
    }
    assert translator.feed(orjson.dumps(end)) == []
    frames = translator.finish()
    assert b'"finish_reason":"stop"' in frames[-1]
    assert translator.usage is None


STREAM_FAILURES = [
    pytest.param(
        "llm/v1/chat",
        CHAT_TEXT_STREAM.split(b"event: message-end")[0],
        UpstreamUnavailable,
        id="chat-cut-before-message-end",
    ),
    pytest.param(
        "llm/v1/chat",
        b'event: message-end\ndata: {"type":"message-end","delta":{"finish_reason":"ERROR","error":"model overloaded"}}\n\n',
        UpstreamError,
        id="chat-error-in-message-end",
    ),
    pytest.param(
        "llm/v1/chat",
        b"event: content-delta\ndata: {not json\n\n",
        UpstreamUnavailable,
        id="chat-malformed-event",
    ),
    pytest.param(
        "llm/v1/completions",
        GENERATE_STREAM.split(b'{"is_finished":true')[0],
        UpstreamUnavailable,
        id="generate-cut-before-stream-end",
    ),
    pytest.param(
        "llm/v1/completions",
        b'{"event_type":"stream-error","is_finished":true,"finish_reason":"ERROR","err":"boom"}\n',
        UpstreamError,
        id="generate-stream-error",
    ),
]


@pytest.mark.parametrize(("task", "upstream", "error"), STREAM_FAILURES)
def test_stream_failures(task: str, upstream: bytes, error: type[Exception]) -> None:
    body = {"messages": user()} if task == "llm/v1/chat" else {"prompt": "x"}
    translator = cohere(task).stream(query(task, {**body, "stream": True}))
    with pytest.raises(error) as raised:
        run(translator, upstream)
    if isinstance(raised.value, UpstreamError):
        assert raised.value.status == 500
        assert "cohere" in raised.value.message


# ---------------------------------------------------------------- errors

ERROR_CASES = [
    pytest.param(
        429,
        b'{"message":"You are using a Trial key, which is limited to 20 API calls / minute."}',
        {"Retry-After": "7"},
        "REQUEST_LIMIT_EXCEEDED",
        7,
        id="rate-limited-with-retry-after",
    ),
    pytest.param(
        429,
        b'{"message":"slow down"}',
        {},
        "REQUEST_LIMIT_EXCEEDED",
        1,
        id="rate-limited-default-retry",
    ),
    pytest.param(
        401, b'{"message":"invalid api token"}', {}, "UNAUTHENTICATED", None, id="bad-key"
    ),
    pytest.param(
        422,
        b'{"id":"e1","message":"unknown field: parameter foo is not a valid field."}',
        {},
        "INVALID_PARAMETER_VALUE",
        None,
        id="unknown-field",
    ),
    pytest.param(
        400,
        b'{"id":"e2","message":"invalid request: bad"}',
        {},
        "BAD_REQUEST",
        None,
        id="bad-request",
    ),
    pytest.param(
        500, b'{"message":"internal server error"}', {}, "INTERNAL_ERROR", None, id="server-error"
    ),
    pytest.param(
        503, b"<html>down</html>", {}, "TEMPORARILY_UNAVAILABLE", 1, id="unavailable-not-json"
    ),
]


@pytest.mark.parametrize(("status", "body", "headers", "code", "retry_after"), ERROR_CASES)
def test_errors_are_wrapped(
    status: int, body: bytes, headers: dict[str, str], code: str, retry_after: int | None
) -> None:
    error = cohere().error(status, body, headers)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.error_code, error.retry_after) == (status, code, retry_after)
    expected = orjson.loads(body) if body.startswith(b"{") else body.decode()
    assert orjson.loads(error.message) == {
        "external_model_provider": "cohere",
        "external_model_error": expected,
    }


def test_error_bodies_never_echo_the_key() -> None:
    error = cohere().error(401, b'{"message":"invalid api token co-secret-123"}', {})
    assert KEY not in error.message
    assert "[REDACTED]" in error.message
