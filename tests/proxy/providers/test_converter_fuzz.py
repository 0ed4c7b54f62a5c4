"""Property tests of every provider translator, both ways.

Requests: arbitrary client bodies (valid-shaped ones mutated anywhere, and arbitrary JSON)
go through the same steps as in the pipeline (``parse_query``, ``check``,
``build_request``). Responses: arbitrary upstream bodies, error bodies with arbitrary
headers, and arbitrary streams (events of the provider's own framing, split at arbitrary
bytes) go through ``parse_response``, ``error`` and the stream translator.

The property is the gateway's error contract: a converter returns a value (whose JSON the
pipeline can encode) or raises a ``GatewayError`` (which becomes a 4xx/502 response), never
any other exception (which would be a 500). Hypothesis runs derandomized with a bounded
number of examples, so the run is the same every time.
"""

from __future__ import annotations

import base64
import itertools
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servegate.canonical.requests import QueryRequest, parse_query
from servegate.ingress.errors import GatewayError
from servegate.providers.base import Provider, StreamTranslator
from servegate.providers.registry import build_provider
from servegate.simulators.vertex import generate_service_account
from servegate.spec import ExternalModel, Task

FUZZ = settings(
    max_examples=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SECRET = "sk-fuzz-SECRET-7c1e"

# ------------------------------------------------------------------------- JSON values

# Strings that steer converters down their special cases, plus the awkward ones: empty,
# NUL, non-ASCII digits (int() and isdigit() disagree on them), emoji, a large one.
_NOTABLE = [
    "",
    " ",
    "\x00",
    "text",
    "image_url",
    "function",
    "auto",
    "none",
    "required",
    "user",
    "assistant",
    "tool",
    "system",
    "{}",
    "[]",
    "null",
    '{"a": 1}',
    "[1, 2]",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:;base64,",
    "http://example.com/cat.png",
    "gs://bucket/cat.jpg",
    "https://example.com/no-extension",
    "²",
    "\u0661\u0662",
    "😀",
    "-1",
    "1e999",
    "STOP",
    "COMPLETE",
    "ERROR",
    "end_turn",
    "tool_use",
    SECRET,
    "x" * 20_000,
]
texts = st.one_of(st.text(st.characters(codec="utf-8"), max_size=12), st.sampled_from(_NOTABLE))
# What orjson.loads can produce: no lone surrogates, integers within 64 bits, finite floats.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn, sample: Any) -> Any:
    """``sample`` with any part replaced, dropped, duplicated or extended."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    if isinstance(sample, dict):
        out: dict[str, Any] = {}
        for key, value in sample.items():
            if draw(st.integers(0, 5)) != 0:
                out[key] = draw(mutated(value))
        if draw(st.integers(0, 5)) == 0:
            out[draw(texts)] = draw(json_values)
        return out
    if isinstance(sample, list):
        items = [draw(mutated(item)) for item in sample if draw(st.integers(0, 5)) != 0]
        if items and draw(st.integers(0, 5)) == 0:
            items.append(draw(mutated(sample[draw(st.integers(0, len(sample) - 1))])))
        return items
    return sample


def any_of(*samples: Any) -> st.SearchStrategy[Any]:
    return st.one_of(*(mutated(sample) for sample in samples))


# ----------------------------------------------------------------------- the providers

_VERTEX_KEY = orjson.dumps(generate_service_account(project_id="proj-1")[0]).decode()
_REF = "{{secrets/fuzz/key}}"


@dataclass(frozen=True)
class Target:
    """One provider configuration and the tasks it serves."""

    id: str
    external_model: Callable[[Task], dict[str, Any]]
    secrets: Mapping[str, str]
    tasks: tuple[Task, ...]
    framing: str = "sse"  # how its streams arrive: sse, ndjson, json or eventstream

    def build(self, task: Task) -> Provider:
        model = ExternalModel.model_validate(self.external_model(task))
        from servegate.transport.credentials import CredentialRegistry

        return build_provider(model, self.secrets, CredentialRegistry())


def _model(
    provider: str, name: str, config_key: str, config: dict[str, Any]
) -> Callable[[Task], dict[str, Any]]:
    def external_model(task: Task) -> dict[str, Any]:
        return {"name": name, "provider": provider, "task": str(task), config_key: config}

    return external_model


ALL = (Task.CHAT, Task.COMPLETIONS, Task.EMBEDDINGS)
TEXT = (Task.CHAT, Task.COMPLETIONS)
_AZURE = {
    "openai_api_type": "azure",
    "openai_api_key": _REF,
    "openai_api_base": "https://acme.openai.azure.com",
    "openai_deployment_name": "dep",
    "openai_api_version": "2024-06-01",
}
_AZUREAD = {
    "openai_api_type": "azuread",
    "openai_api_base": "https://acme.openai.azure.com",
    "openai_deployment_name": "dep",
    "openai_api_version": "2024-06-01",
    "microsoft_entra_tenant_id": "tenant",
    "microsoft_entra_client_id": "client",
    "microsoft_entra_client_secret": _REF,
}
_AWS = {"aws_access_key_id": SECRET, "aws_secret_access_key": SECRET + "/aws"}
_AWS_REFS = {"aws_access_key_id": _REF, "aws_secret_access_key": "{{secrets/fuzz/other}}"}


def _bedrock(family: str) -> Callable[[Task], dict[str, Any]]:
    config = {"aws_region": "us-east-1", "bedrock_provider": family, **_AWS_REFS}
    return _model("amazon-bedrock", f"{family}.model-v1:0", "amazon_bedrock_config", config)


def _vertex(name: str) -> Callable[[Task], dict[str, Any]]:
    config = {"project_id": "proj-1", "region": "us-central1", "private_key": _REF}
    return _model("google-cloud-vertex-ai", name, "google_cloud_vertex_ai_config", config)


TARGETS = [
    Target(
        "openai",
        _model("openai", "gpt-4o-mini", "openai_config", {"openai_api_key": _REF}),
        {"openai_api_key": SECRET},
        ALL,
    ),
    Target(
        "azure-openai",
        _model("openai", "gpt-4o", "openai_config", _AZURE),
        {"openai_api_key": SECRET},
        ALL,
    ),
    Target(
        "azure-openai-entra",
        _model("openai", "gpt-4o", "openai_config", _AZUREAD),
        {"microsoft_entra_client_secret": SECRET},
        (Task.CHAT,),
    ),
    Target(
        "custom",
        _model(
            "custom",
            "llama",
            "custom_provider_config",
            {"custom_provider_url": "http://vllm/v1", "bearer_token_auth": {"token": _REF}},
        ),
        {"bearer_token_auth.token": SECRET},
        ALL,
    ),
    Target(
        "databricks",
        _model(
            "databricks-model-serving",
            "team-chat",
            "databricks_model_serving_config",
            {"databricks_workspace_url": "https://ws", "databricks_api_token": _REF},
        ),
        {"databricks_api_token": SECRET},
        ALL,
    ),
    Target(
        "anthropic",
        _model("anthropic", "claude-x", "anthropic_config", {"anthropic_api_key": _REF}),
        {"anthropic_api_key": SECRET},
        TEXT,
    ),
    Target(
        "cohere",
        _model("cohere", "command-r", "cohere_config", {"cohere_api_key": _REF}),
        {"cohere_api_key": SECRET},
        ALL,
    ),
    Target("bedrock-anthropic", _bedrock("anthropic"), _AWS, TEXT, "eventstream"),
    Target("bedrock-amazon", _bedrock("amazon"), _AWS, ALL, "eventstream"),
    Target("bedrock-cohere", _bedrock("cohere"), _AWS, ALL, "eventstream"),
    Target("bedrock-ai21labs", _bedrock("ai21labs"), _AWS, TEXT, "eventstream"),
    Target("vertex-gemini", _vertex("gemini-2.0-flash"), {"private_key": _VERTEX_KEY}, TEXT),
    Target(
        "vertex-palm-text",
        _vertex("text-bison@002"),
        {"private_key": _VERTEX_KEY},
        (Task.COMPLETIONS,),
    ),
    Target(
        "vertex-palm-chat", _vertex("chat-bison@002"), {"private_key": _VERTEX_KEY}, (Task.CHAT,)
    ),
    Target(
        "vertex-embeddings",
        _vertex("text-embedding-004"),
        {"private_key": _VERTEX_KEY},
        (Task.EMBEDDINGS,),
    ),
    Target(
        "ai21labs",
        _model("ai21labs", "j2-mid", "ai21labs_config", {"ai21labs_api_key": _REF}),
        {"ai21labs_api_key": SECRET},
        (Task.COMPLETIONS,),
        "json",
    ),
]
CASES = [
    pytest.param(target, task, id=f"{target.id}-{task.value.rsplit('/', 1)[1]}")
    for target in TARGETS
    for task in target.tasks
]
_NO_STREAMS = {"vertex-palm-text", "vertex-palm-chat", "vertex-embeddings"}  # refused by check
STREAM_CASES = [
    pytest.param(target, task, id=f"{target.id}-{task.value.rsplit('/', 1)[1]}")
    for target in TARGETS
    for task in target.tasks
    if task != Task.EMBEDDINGS and target.id not in _NO_STREAMS
]


@pytest.fixture(scope="module")
def providers() -> dict[tuple[str, Task], Provider]:
    return {(t.id, task): t.build(task) for t in TARGETS for task in t.tasks}


# -------------------------------------------------------------------- client requests

_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather by city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    },
}
_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
CHAT_REQUEST = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": [_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
        {"role": "user", "content": "hi"},
    ],
    "tools": [_TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
    "max_tokens": 20,
    "max_completion_tokens": 20,
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 5,
    "n": 1,
    "stop": ["\n"],
    "user": "ana",
    "metadata": {"k": "v"},
    "frequency_penalty": 0.1,
    "presence_penalty": 0.1,
    "seed": 1,
    "extra_params": {"top_p": "0.5", "logit_bias": '{"1": 2}'},
    "client_request_id": "r1",
    "usage_context": {"app": "x"},
    "generationConfig": {"temperature": 0.1},
    "safetySettings": [],
    "additionalModelRequestFields": {"a": 1},
    "documents": [],
}
COMPLETIONS_REQUEST = {
    "prompt": ["Say hi"],
    "max_tokens": 20,
    "temperature": 0.5,
    "top_p": 0.9,
    "n": 2,
    "stop": "\n",
    "frequency_penalty": 0.5,
    "presence_penalty": 0.5,
    "logit_bias": {"1": 2},
    "countPenalty": {"scale": 1},
    "minTokens": 1,
    "truncate": "END",
    "extra_params": {"n": "1"},
}
EMBEDDINGS_REQUEST = {
    "input": ["a", "b"],
    "encoding_format": "base64",
    "dimensions": 8,
    "input_type": "search_query",
    "task_type": "RETRIEVAL_QUERY",
    "normalize": True,
    "truncate": "END",
}
REQUESTS = {
    Task.CHAT: CHAT_REQUEST,
    Task.COMPLETIONS: COMPLETIONS_REQUEST,
    Task.EMBEDDINGS: EMBEDDINGS_REQUEST,
}
_STREAM = {"stream": True, "stream_options": {"include_usage": False}}


def client_bodies(task: Task) -> st.SearchStrategy[Any]:
    sample = REQUESTS[task]
    small = {k: sample[k] for k in list(sample)[:1]}  # the task's own field alone
    return st.one_of(
        any_of(sample, {**sample, **_STREAM}, small, {**small, **_STREAM}),
        st.dictionaries(texts, json_values, max_size=6),
        json_values,
    )


def translate_request(provider: Provider, task: Task, body: Any) -> None:
    """The pipeline's request steps; GatewayError is an accepted outcome."""
    try:
        query = parse_query(task, body)
        query.prompt_characters()
        query = query.with_max_tokens(7) if task != Task.EMBEDDINGS else query
        provider.check(query)
        request = provider.build_request(query)
    except GatewayError:
        return
    assert isinstance(request.body, bytes)
    assert request.url.startswith(("http://", "https://"))


@pytest.mark.parametrize(("target", "task"), CASES)
def test_request_converter_returns_or_raises_gateway_error(
    providers: dict[tuple[str, Task], Provider], target: Target, task: Task
) -> None:
    provider = providers[target.id, task]

    @FUZZ
    @given(body=client_bodies(task))
    def run(body: Any) -> None:
        translate_request(provider, task, body)

    run()


# ------------------------------------------------------------------ upstream responses

_USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
OPENAI_RESPONSES = {
    Task.CHAT: {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "tool_calls": [_CALL]},
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
    },
    Task.COMPLETIONS: {
        "id": "cmpl-1",
        "object": "text_completion",
        "choices": [{"index": 0, "text": "hi", "finish_reason": "length"}],
        "usage": _USAGE,
    },
    Task.EMBEDDINGS: {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
        "model": "m",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    },
}
ANTHROPIC_RESPONSE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [
        {"type": "text", "text": "hi"},
        {"type": "thinking", "thinking": "hmm"},
        {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ],
    "stop_reason": "tool_use",
    "usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 1},
}
_COHERE_META = {"billed_units": {"input_tokens": 3, "output_tokens": 2}, "tokens": {}}
COHERE_RESPONSES = {
    Task.CHAT: {
        "id": "c1",
        "finish_reason": "TOOL_CALL",
        "message": {
            "role": "assistant",
            "content": [{"type": "text", "text": "hi"}, {"type": "thinking", "thinking": "h"}],
            "tool_plan": "call it",
            "tool_calls": [_CALL],
        },
        "usage": _COHERE_META,
    },
    Task.COMPLETIONS: {
        "id": "g1",
        "generations": [
            {"id": "a", "index": 1, "text": "there", "finish_reason": "MAX_TOKENS"},
            {"id": "b", "index": 0, "text": "hi", "finish_reason": "COMPLETE"},
        ],
        "meta": _COHERE_META,
    },
    Task.EMBEDDINGS: {"id": "e1", "embeddings": {"float": [[0.1, 0.2]]}, "meta": _COHERE_META},
}
CONVERSE_RESPONSE = {
    "output": {
        "message": {
            "role": "assistant",
            "content": [
                {"text": "hi"},
                {"reasoningContent": {"reasoningText": {"text": "h"}}},
                {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"a": 1}}},
            ],
        }
    },
    "stopReason": "tool_use",
    "usage": {"inputTokens": 3, "outputTokens": 2, "cacheReadInputTokens": 1},
}
BEDROCK_RESPONSES = {
    "converse": CONVERSE_RESPONSE,
    "titan-text": {
        "inputTextTokenCount": 3,
        "results": [{"tokenCount": 2, "outputText": "hi", "completionReason": "FINISH"}],
    },
    "titan-embed": {"embedding": [0.1, 0.2], "inputTextTokenCount": 2},
    "cohere-embed": {"embeddings": {"float": [[0.1, 0.2]]}, "id": "e", "texts": ["a"]},
    "cohere-embed-list": {"embeddings": [[0.1, 0.2]], "id": "e", "texts": ["a"]},
}
GEMINI_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {"text": "hi"},
                    {"text": "thinking", "thought": True},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "promptFeedback": {"blockReason": "SAFETY"},
    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2, "thoughtsTokenCount": 1},
    "modelVersion": "gemini-2.0-flash-001",
    "responseId": "r1",
    "createTime": "2025-01-01T00:00:00.000000Z",
}
_PALM_METADATA = {
    "tokenMetadata": {
        "inputTokenCount": {"totalTokens": 3},
        "outputTokenCount": {"totalTokens": 2},
    }
}
VERTEX_RESPONSES = {
    "vertex-gemini": GEMINI_RESPONSE,
    "vertex-palm-text": {
        "predictions": [{"content": "hi", "safetyAttributes": {"blocked": False}}],
        "metadata": _PALM_METADATA,
    },
    "vertex-palm-chat": {
        "predictions": [
            {
                "candidates": [{"author": "bot", "content": "hi"}],
                "safetyAttributes": [{"blocked": True}],
            }
        ],
        "metadata": _PALM_METADATA,
    },
    "vertex-embeddings": {
        "predictions": [{"embeddings": {"values": [0.1, 0.2], "statistics": {"token_count": 2}}}]
    },
}
AI21_RESPONSE = {
    "id": "a1",
    "prompt": {"text": "Say hi", "tokens": [{"token": "Say"}]},
    "completions": [
        {"data": {"text": "hi", "tokens": [{"token": "hi"}]}, "finishReason": {"reason": "length"}}
    ],
}


def response_samples(target: Target, task: Task) -> list[Any]:
    family = target.id.split("-", 1)[0]
    if family in ("openai", "azure", "custom", "databricks"):
        return [OPENAI_RESPONSES[task]]
    if family == "anthropic":
        return [ANTHROPIC_RESPONSE]
    if family == "cohere":
        return [COHERE_RESPONSES[task]]
    if family == "bedrock":
        return list(BEDROCK_RESPONSES.values())
    if family == "vertex":
        return [VERTEX_RESPONSES[target.id]]
    return [AI21_RESPONSE]


_BASE_QUERIES: dict[Task, list[dict[str, Any]]] = {
    Task.CHAT: [{"messages": [{"role": "user", "content": "hi"}]}],
    Task.COMPLETIONS: [{"prompt": "hi"}],
    Task.EMBEDDINGS: [{"input": "hi"}, {"input": ["a", "b"], "encoding_format": "base64"}],
}


def queries(task: Task, *, stream: bool) -> st.SearchStrategy[QueryRequest]:
    def build(base: dict[str, Any], include_usage: bool) -> QueryRequest:
        body = dict(base)
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": include_usage}}
        return parse_query(task, body)

    return st.builds(build, st.sampled_from(_BASE_QUERIES[task]), st.booleans())


def upstream_bodies(samples: list[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        any_of(*samples).map(orjson.dumps),
        json_values.map(orjson.dumps),
        st.binary(max_size=64),
    )


def check_translated(provider: Provider, query: QueryRequest, body: bytes) -> None:
    try:
        translated = provider.parse_response(query, body)
    except GatewayError:
        return
    assert isinstance(translated.raw, bytes)  # what the pipeline sends


@pytest.mark.parametrize(("target", "task"), CASES)
def test_response_converter_returns_or_raises_gateway_error(
    providers: dict[tuple[str, Task], Provider], target: Target, task: Task
) -> None:
    provider = providers[target.id, task]

    @FUZZ
    @given(query=queries(task, stream=False), body=upstream_bodies(response_samples(target, task)))
    def run(query: QueryRequest, body: bytes) -> None:
        check_translated(provider, query, body)

    run()


_ERROR_BODIES = [
    {"error": {"message": f"bad key {SECRET}", "type": "invalid_request_error", "code": 400}},
    {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [{"retryDelay": "3s"}]}},
    [{"error": {"status": "RESOURCE_EXHAUSTED", "details": [{"retryDelay": "1.5s"}]}}],
    {"__type": "com.amazon.coral#ThrottlingException", "message": "slow down"},
    {"detail": "Quota exceeded."},
]
_HEADER_NAMES = ["Retry-After", "retry-after-ms", "x-amzn-ErrorType", "Content-Type", "X-Other"]
# aiohttp decodes header bytes that are not UTF-8 with surrogateescape: lone surrogates.
header_values = st.one_of(
    st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=4),
    st.sampled_from(
        ["1", "30", " 7 ", "1.5", "-1", "²", "\u0661", "9" * 5000, "ThrottlingException:x"]
    ),
    st.text(max_size=12),
)


@pytest.mark.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])
def test_error_wrapper_returns_a_gateway_error(
    providers: dict[tuple[str, Task], Provider], target: Target
) -> None:
    provider = providers[target.id, target.tasks[0]]

    @FUZZ
    @given(
        status=st.integers(400, 599),
        body=upstream_bodies(_ERROR_BODIES),
        headers=st.dictionaries(st.sampled_from(_HEADER_NAMES), header_values, max_size=3),
    )
    def run(status: int, body: bytes, headers: dict[str, str]) -> None:
        error = provider.error(status, body, headers)
        assert isinstance(error, GatewayError)
        orjson.dumps(error.body())
        error.headers()
        for secret in target.secrets.values():
            assert secret not in error.message

    run()


# -------------------------------------------------------------------------- streams

_CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "model": "m",
    "choices": [{"index": 0, "delta": {"content": "hi", "tool_calls": [_CALL]}}],
}
OPENAI_EVENTS = [
    _CHUNK,
    {**_CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {**_CHUNK, "choices": [], "usage": _USAGE},
    {"error": {"message": "boom", "type": "server_error"}},
    "[DONE]",
]
ANTHROPIC_EVENTS = [
    {"type": "message_start", "message": {"id": "m1", "model": "c", "usage": {"input_tokens": 3}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "h"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "i"}},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "t", "name": "f"},
    },
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
    },
    {"type": "ping"},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    {"type": "message_stop"},
    {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
]
COHERE_CHAT_EVENTS = [
    {"type": "message-start", "id": "x"},
    {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "hi"}}}},
    {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "plan"}}},
    {
        "type": "tool-call-start",
        "index": 0,
        "delta": {"message": {"tool_calls": {"id": "t", "function": {"name": "f"}}}},
    },
    {
        "type": "tool-call-delta",
        "index": 0,
        "delta": {"message": {"tool_calls": {"function": {"arguments": "{}"}}}},
    },
    {"type": "message-end", "delta": {"finish_reason": "COMPLETE", "usage": _COHERE_META}},
    "[DONE]",
]
COHERE_GENERATE_EVENTS = [
    {"event_type": "text-generation", "text": "hi", "index": 0},
    {"event_type": "stream-error", "finish_reason": "ERROR"},
    {
        "event_type": "stream-end",
        "finish_reason": "COMPLETE",
        "response": {
            "generations": [{"index": 0, "finish_reason": "COMPLETE"}],
            "meta": _COHERE_META,
        },
    },
]
GEMINI_EVENTS = [
    GEMINI_RESPONSE,
    {"candidates": [{"content": {"parts": [{"text": "hi"}]}, "index": 1}]},
    {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow"}},
]


def _event_type(name: str) -> dict[str, str]:
    return {":message-type": "event", ":event-type": name, ":content-type": "application/json"}


def _titan_chunk(chunk: dict[str, Any]) -> dict[str, Any]:
    return {"bytes": base64.b64encode(orjson.dumps(chunk)).decode()}


CONVERSE_EVENTS: list[tuple[dict[str, str], Any]] = [
    (_event_type("messageStart"), {"role": "assistant"}),
    (_event_type("contentBlockDelta"), {"contentBlockIndex": 0, "delta": {"text": "hi"}}),
    (
        _event_type("contentBlockStart"),
        {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t", "name": "f"}}},
    ),
    (
        _event_type("contentBlockDelta"),
        {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{}"}}},
    ),
    (_event_type("messageStop"), {"stopReason": "end_turn"}),
    (_event_type("metadata"), {"usage": {"inputTokens": 3, "outputTokens": 2}}),
    (
        {":message-type": "exception", ":exception-type": "throttlingException"},
        {"message": "slow down"},
    ),
    ({":message-type": "error", ":error-code": "E", ":error-message": "m"}, {}),
]
TITAN_EVENTS: list[tuple[dict[str, str], Any]] = [
    (_event_type("chunk"), _titan_chunk({"outputText": "hi", "completionReason": None})),
    (
        _event_type("chunk"),
        _titan_chunk(
            {
                "outputText": "",
                "completionReason": "FINISH",
                "amazon-bedrock-invocationMetrics": {"inputTokenCount": 3, "outputTokenCount": 2},
            }
        ),
    ),
    (_event_type("chunk"), {"bytes": "not base64!"}),
]


def stream_samples(target: Target, task: Task) -> list[Any]:
    family = target.id.split("-", 1)[0]
    if family in ("openai", "azure", "custom", "databricks"):
        return OPENAI_EVENTS
    if family == "anthropic":
        return ANTHROPIC_EVENTS
    if family == "cohere":
        return COHERE_CHAT_EVENTS if task == Task.CHAT else COHERE_GENERATE_EVENTS
    if family == "vertex":
        return GEMINI_EVENTS
    if family == "bedrock":
        amazon_text = target.id == "bedrock-amazon" and task == Task.COMPLETIONS
        return TITAN_EVENTS if amazon_text else CONVERSE_EVENTS
    return [AI21_RESPONSE]


def _payload(event: Any) -> bytes:
    if isinstance(event, bytes):
        return event
    if event == "[DONE]":
        return b"[DONE]"
    return orjson.dumps(event)


def eventstream_message(headers: Mapping[str, bytes], payload: bytes) -> bytes:
    """An AWS event-stream message with string headers given as raw bytes (any encoding)."""
    encoded = b"".join(
        struct.pack(">B", len(name)) + name + b"\x07" + struct.pack(">H", len(value)) + value
        for name, value in ((k.encode(), v) for k, v in headers.items())
    )
    return raw_eventstream_message(encoded, payload)


def raw_eventstream_message(encoded: bytes, payload: bytes) -> bytes:
    """A message whose lengths and checksums are right, around any header bytes."""
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


_RAW_HEADER = st.one_of(st.binary(max_size=8), texts.map(lambda t: t.encode()[:200]))


@st.composite
def stream_bodies(draw: st.DrawFn, target: Target, task: Task) -> bytes:
    samples = stream_samples(target, task)
    count = draw(st.integers(0, 8))
    parts: list[bytes] = []
    for _ in range(count):
        if target.framing == "eventstream":
            headers, body = samples[draw(st.integers(0, len(samples) - 1))]
            raw_headers = {k: v.encode() for k, v in headers.items()}
            if draw(st.integers(0, 4)) == 0:
                raw_headers[draw(st.sampled_from(list(headers)))] = draw(_RAW_HEADER)
            payload = _payload(draw(mutated(body)))
            if draw(st.integers(0, 9)) == 0:  # a header block of any bytes, in a valid frame
                parts.append(raw_eventstream_message(draw(st.binary(max_size=24)), payload))
            else:
                parts.append(eventstream_message(raw_headers, payload))
        else:
            event = draw(st.one_of(any_of(*samples), json_values, st.binary(max_size=16)))
            payload = _payload(event)
            if target.framing == "sse":
                name = draw(st.sampled_from([b"", b"event: message\n", b": comment\n"]))
                parts.append(name + b"data: " + payload + b"\n\n")
            elif target.framing == "ndjson":
                parts.append(payload + b"\n")
            else:
                parts.append(payload)
    if draw(st.integers(0, 4)) == 0:
        parts.append(draw(st.binary(max_size=32)))  # garbage at the end
    return b"".join(parts)


@pytest.mark.parametrize(("target", "task"), STREAM_CASES)
def test_stream_translator_returns_or_raises_gateway_error(
    providers: dict[tuple[str, Task], Provider], target: Target, task: Task
) -> None:
    provider = providers[target.id, task]

    @FUZZ
    @given(
        query=queries(task, stream=True),
        body=stream_bodies(target, task),
        cuts=st.lists(st.integers(0, 4096), max_size=6),
    )
    def run(query: QueryRequest, body: bytes, cuts: list[int]) -> None:
        translator: StreamTranslator = provider.stream(query)
        bounds = sorted({0, len(body), *(c for c in cuts if c < len(body))})
        try:
            for start, end in itertools.pairwise(bounds):
                for frame in translator.feed(body[start:end]):
                    assert isinstance(frame, bytes)
            for frame in translator.finish():
                assert isinstance(frame, bytes)
        except GatewayError:
            return

    run()
