"""The AI21 Labs (J2 complete) translator as pure functions: named cases, literal
expectations, no network. The emulated stream is fed one byte at a time and compared
with golden SSE text."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from servegate.canonical.requests import parse_query
from servegate.canonical.usage import Usage
from servegate.ingress.errors import BadRequest, UpstreamError, UpstreamUnavailable
from servegate.providers.ai21 import AI21Provider
from servegate.providers.base import Provider
from servegate.providers.registry import build_provider
from servegate.spec import ExternalModel, Task
from servegate.transport.credentials import CredentialRegistry

KEY = "ai21-KEY-0123"
CREATED = 1_700_000_000
JSON = {"Content-Type": "application/json", "Accept": "application/json"}


def provider(name: str = "j2-mid", api_base: str | None = None) -> Provider:
    config: dict[str, Any] = {"ai21labs_api_key": "{{secrets/ai21/api_key}}"}
    if api_base is not None:
        config["ai21labs_api_base"] = api_base
    model = ExternalModel.model_validate(
        {
            "name": name,
            "provider": "ai21labs",
            "task": "llm/v1/completions",
            "ai21labs_config": config,
        }
    )
    return build_provider(model, {"ai21labs_api_key": KEY}, CredentialRegistry())


@pytest.fixture
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.time", lambda: float(CREATED))


def test_registry_builds_the_ai21_provider() -> None:
    assert isinstance(provider(), AI21Provider)


# ---------------------------------------------------------------- requests

REQUEST_CASES = [
    pytest.param(
        {},
        {"prompt": "Life is like"},
        {"prompt": "Life is like"},
        "https://api.ai21.com/studio/v1/j2-mid/complete",
        id="minimal prompt, default base URL",
    ),
    pytest.param(
        {},
        {
            "prompt": "Life is like",
            "max_tokens": 8,
            "temperature": 0.3,
            "top_p": 0.9,
            "n": 3,
            "stop": ".",
            "frequency_penalty": 0.5,
            "presence_penalty": 1,
        },
        {
            "prompt": "Life is like",
            "maxTokens": 8,
            "numResults": 3,
            "topP": 0.9,
            "temperature": 0.3,
            "stopSequences": ["."],
            "frequencyPenalty": {"scale": 0.5},
            "presencePenalty": {"scale": 1},
        },
        "https://api.ai21.com/studio/v1/j2-mid/complete",
        id="every OpenAI parameter renamed, single stop word listed",
    ),
    pytest.param(
        {},
        {"prompt": ["only one"], "stop": ["\n", "##"], "temperature": 1, "n": 16},
        {
            "prompt": "only one",
            "stopSequences": ["\n", "##"],
            "temperature": 1,
            "numResults": 16,
        },
        "https://api.ai21.com/studio/v1/j2-mid/complete",
        id="one-prompt list unwrapped, limits inclusive",
    ),
    pytest.param(
        {},
        {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
        {"prompt": "x"},
        "https://api.ai21.com/studio/v1/j2-mid/complete",
        id="stream is emulated, never sent upstream",
    ),
    pytest.param(
        {},
        {
            "prompt": "x",
            "minTokens": 2,
            "topKReturn": 5,
            "countPenalty": {"scale": 0.2, "applyToNumbers": False},
            "frequencyPenalty": {"scale": 3, "applyToEmojis": False},
            "logitBias": {"▁the": -10.0},
            "epoch": 1,
        },
        {
            "prompt": "x",
            "minTokens": 2,
            "topKReturn": 5,
            "countPenalty": {"scale": 0.2, "applyToNumbers": False},
            "frequencyPenalty": {"scale": 3, "applyToEmojis": False},
            "logitBias": {"▁the": -10.0},
            "epoch": 1,
        },
        "https://api.ai21.com/studio/v1/j2-mid/complete",
        id="J2-native extras pass through",
    ),
    pytest.param(
        {},
        {"prompt": "x", "extra_params": {"topKReturn": "2", "countPenalty": '{"scale": 1}'}},
        {"prompt": "x", "topKReturn": 2, "countPenalty": {"scale": 1}},
        "https://api.ai21.com/studio/v1/j2-mid/complete",
        id="databricks-sdk extra_params decoded",
    ),
    pytest.param(
        {"name": "j2-grande/support bot", "api_base": "http://127.0.0.1:8909/"},
        {"prompt": "x"},
        {"prompt": "x"},
        "http://127.0.0.1:8909/studio/v1/j2-grande/support%20bot/complete",
        id="api base trailing slash, custom model path",
    ),
]


@pytest.mark.parametrize(("model", "client_body", "upstream_body", "url"), REQUEST_CASES)
def test_build_request(
    model: dict[str, str], client_body: dict[str, Any], upstream_body: dict[str, Any], url: str
) -> None:
    p = provider(**model)
    query = parse_query(Task.COMPLETIONS, client_body)
    p.check(query)
    built = p.build_request(query)
    assert built.method == "POST"
    assert built.url == url
    assert dict(built.headers) == {"Authorization": "Bearer ai21-KEY-0123", **JSON}
    assert orjson.loads(built.body) == upstream_body
    assert parse_query(Task.COMPLETIONS, client_body).payload == query.payload  # not mutated


REJECT_CASES = [
    pytest.param(
        Task.CHAT,
        {"messages": [{"role": "user", "content": "hi"}]},
        "Provider 'ai21labs' does not support the task llm/v1/chat.",
        id="chat task",
    ),
    pytest.param(
        Task.EMBEDDINGS,
        {"input": "hi"},
        "Provider 'ai21labs' does not support the task llm/v1/embeddings.",
        id="embeddings task",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "logit_bias": {"50256": -100}},
        "Parameter 'logit_bias' is not supported by provider 'ai21labs'; remove it",
        id="logit_bias",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "top_k": 5},
        "Parameter 'top_k' is not supported by provider 'ai21labs'",
        id="top_k",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}]},
        "Parameter 'tools' is not supported by provider 'ai21labs'",
        id="tools",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "response_format": {"type": "json_object"}},
        "Parameter 'response_format' is not supported by provider 'ai21labs'",
        id="response_format",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "echo": True},
        "Parameter 'echo' is not supported by provider 'ai21labs'",
        id="echo",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "maxTokens": 5},
        "Parameter 'maxTokens' is not supported by provider 'ai21labs'; send 'max_tokens' instead.",
        id="J2 spelling of an OpenAI parameter",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": ["one", "two"]},
        "Provider 'ai21labs' completes one prompt per request; 'prompt' has 2 entries.",
        id="several prompts",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "temperature": 1.5},
        "Parameter 'temperature' must be between 0 and 1 for provider 'ai21labs'",
        id="temperature above the J2 range",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "n": 17},
        "Parameter 'n' must be at most 16 for provider 'ai21labs'",
        id="n above numResults range",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "presence_penalty": -0.5},
        "Parameter 'presence_penalty' must be a number >= 0 for provider 'ai21labs'",
        id="negative penalty",
    ),
    pytest.param(
        Task.COMPLETIONS,
        {"prompt": "x", "frequency_penalty": 1, "frequencyPenalty": {"scale": 2}},
        "Parameters 'frequency_penalty' and 'frequencyPenalty' both set a penalty",
        id="both penalty spellings",
    ),
]


@pytest.mark.parametrize(("task", "client_body", "message"), REJECT_CASES)
def test_check_refuses_with_a_400_naming_it(
    task: Task, client_body: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        provider().check(parse_query(task, client_body))
    assert refused.value.status == 400
    assert message in refused.value.message


# ---------------------------------------------------------------- responses


def _token(text: str, start: int) -> dict[str, Any]:
    return {
        "generatedToken": {"token": text, "logprob": -0.5, "raw_logprob": -0.6},
        "topTokens": None,
        "textRange": {"start": start, "end": start + len(text)},
    }


def _j2(*completions: dict[str, Any], prompt_tokens: int = 3, id: str = "7921a78e") -> bytes:
    prompt = {"text": "Life is like", "tokens": [_token("▁w", i) for i in range(prompt_tokens)]}
    return orjson.dumps({"id": id, "prompt": prompt, "completions": list(completions)})


def _completion(text: str, tokens: int, finish: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": {"text": text, "tokens": [_token("▁w", i) for i in range(tokens)]},
        "finishReason": finish,
    }


UPSTREAM = _j2(
    _completion(" a box of chocolates", 4, {"reason": "endoftext"}),
    _completion(" a", 1, {"reason": "length", "length": 1}),
)


@pytest.mark.usefixtures("pinned_clock")
def test_response_in_openai_shape() -> None:
    p = provider()
    translated = p.parse_response(parse_query(Task.COMPLETIONS, {"prompt": "x"}), UPSTREAM)
    assert translated.body == {
        "id": "cmpl-7921a78e",
        "object": "text_completion",
        "created": CREATED,
        "model": "j2-mid",
        "choices": [
            {"index": 0, "text": " a box of chocolates", "finish_reason": "stop", "logprobs": None},
            {"index": 1, "text": " a", "finish_reason": "length", "logprobs": None},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }
    assert translated.usage == Usage(prompt_tokens=3, completion_tokens=5)


FINISH_CASES = [
    pytest.param({"reason": "endoftext"}, "stop", id="endoftext"),
    pytest.param({"reason": "stop", "sequence": "."}, "stop", id="stop sequence"),
    pytest.param({"reason": "length", "length": 8}, "length", id="length"),
    pytest.param({"reason": "something-new"}, None, id="unknown reason is not guessed"),
    pytest.param(None, None, id="missing finishReason"),
]


@pytest.mark.parametrize(("finish", "expected"), FINISH_CASES)
def test_finish_reasons(finish: dict[str, Any] | None, expected: str | None) -> None:
    body = _j2(_completion("x", 1, finish) if finish else {"data": {"text": "x", "tokens": []}})
    translated = provider().parse_response(parse_query(Task.COMPLETIONS, {"prompt": "x"}), body)
    assert translated.body["choices"][0]["finish_reason"] == expected


def test_usage_is_none_without_token_lists() -> None:
    body = orjson.dumps(
        {
            "id": "1",
            "prompt": {"text": "x"},
            "completions": [{"data": {"text": "y"}, "finishReason": {"reason": "endoftext"}}],
        }
    )
    translated = provider().parse_response(parse_query(Task.COMPLETIONS, {"prompt": "x"}), body)
    assert translated.usage is None and translated.body["usage"] is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>bad gateway</html>", id="not JSON"),
        pytest.param(b'{"id": "1", "prompt": {"text": "x"}}', id="no completions"),
        pytest.param(b'{"completions": ["text"]}', id="completions not objects"),
    ],
)
def test_unusable_response_is_upstream_unavailable(body: bytes) -> None:
    with pytest.raises(UpstreamUnavailable):
        provider().parse_response(parse_query(Task.COMPLETIONS, {"prompt": "x"}), body)


# ---------------------------------------------------------------- emulated stream


def _stream_bytewise(stream_options: dict[str, Any] | None) -> tuple[bytes, Usage | None]:
    client_body: dict[str, Any] = {"prompt": "Life is like", "stream": True}
    if stream_options is not None:
        client_body["stream_options"] = stream_options
    translator = provider().stream(parse_query(Task.COMPLETIONS, client_body))
    out = b"".join(b"".join(translator.feed(UPSTREAM[i : i + 1])) for i in range(len(UPSTREAM)))
    return out + b"".join(translator.finish()), translator.usage


HEAD = (
    b'data: {"id":"cmpl-7921a78e","object":"text_completion","created":1700000000,"model":"j2-mid",'
)


@pytest.mark.usefixtures("pinned_clock")
def test_stream_emulated_byte_by_byte_with_usage_on_the_last_finish() -> None:
    out, usage = _stream_bytewise(None)
    golden = (
        HEAD + b'"choices":[{"index":0,"text":" a box of chocolates","finish_reason":null,'
        b'"logprobs":null}]}\n\n'
        + HEAD
        + b'"choices":[{"index":0,"text":"","finish_reason":"stop","logprobs":null}]}\n\n'
        + HEAD
        + b'"choices":[{"index":1,"text":" a","finish_reason":null,"logprobs":null}]}\n\n'
        + HEAD
        + b'"choices":[{"index":1,"text":"","finish_reason":"length","logprobs":null}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}\n\n'
    )
    assert out == golden
    assert usage == Usage(prompt_tokens=3, completion_tokens=5)


@pytest.mark.usefixtures("pinned_clock")
def test_stream_sends_a_usage_chunk_when_the_client_asked() -> None:
    out, _ = _stream_bytewise({"include_usage": True})
    assert out.endswith(
        b'"choices":[{"index":1,"text":"","finish_reason":"length","logprobs":null}]}\n\n'
        + HEAD
        + b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}\n\n'
    )


@pytest.mark.parametrize(
    ("upstream", "match"),
    [
        pytest.param(b"", "ended the response before it was complete", id="empty body"),
        pytest.param(UPSTREAM[: len(UPSTREAM) // 2], "not JSON", id="body cut in half"),
    ],
)
def test_stream_of_an_incomplete_body_fails_before_any_frame(upstream: bytes, match: str) -> None:
    translator = provider().stream(parse_query(Task.COMPLETIONS, {"prompt": "x", "stream": True}))
    assert translator.feed(upstream) == []
    with pytest.raises(UpstreamUnavailable, match=match):
        translator.finish()


# ---------------------------------------------------------------- errors

ERROR_CASES = [
    pytest.param(
        401,
        b'{"detail":"Forbidden: Bad or missing API token."}',
        {},
        (401, "UNAUTHENTICATED", None),
        {"detail": "Forbidden: Bad or missing API token."},
        id="bad key stays 401",
    ),
    pytest.param(
        422,
        b'{"detail":[{"loc":["body","prompt"],"msg":"field required","type":"value_error.missing"}]}',
        {},
        (422, "INVALID_PARAMETER_VALUE", None),
        {
            "detail": [
                {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}
            ]
        },
        id="validation error",
    ),
    pytest.param(
        429,
        b'{"detail":"50 per 1 minute"}',
        {"Retry-After": "7"},
        (429, "REQUEST_LIMIT_EXCEEDED", 7),
        {"detail": "50 per 1 minute"},
        id="rate limit with Retry-After",
    ),
    pytest.param(
        429,
        b'{"detail":"50 per 1 minute"}',
        {},
        (429, "REQUEST_LIMIT_EXCEEDED", 1),
        {"detail": "50 per 1 minute"},
        id="rate limit without Retry-After",
    ),
    pytest.param(
        403,
        b'{"detail":"Quota exceeded."}',
        {},
        (429, "REQUEST_LIMIT_EXCEEDED", 1),
        {"detail": "Quota exceeded."},
        id="quota exceeded is a rate limit",
    ),
    pytest.param(
        500,
        b"Internal Server Error",
        {},
        (500, "INTERNAL_ERROR", None),
        "Internal Server Error",
        id="server error, text body",
    ),
    pytest.param(
        503,
        b'{"detail":"Service Unavailable"}',
        {},
        (503, "TEMPORARILY_UNAVAILABLE", 1),
        {"detail": "Service Unavailable"},
        id="unavailable",
    ),
    pytest.param(
        401,
        b'{"detail":"bad token ai21-KEY-0123"}',
        {},
        (401, "UNAUTHENTICATED", None),
        {"detail": "bad token [REDACTED]"},
        id="echoed key scrubbed",
    ),
]


@pytest.mark.parametrize(("status", "body", "headers", "expected", "wrapped"), ERROR_CASES)
def test_error_mapping(
    status: int,
    body: bytes,
    headers: dict[str, str],
    expected: tuple[int, str, int | None],
    wrapped: Any,
) -> None:
    error = provider().error(status, body, headers)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.error_code, error.retry_after) == expected
    assert orjson.loads(error.message) == {
        "external_model_provider": "ai21labs",
        "external_model_error": wrapped,
    }
