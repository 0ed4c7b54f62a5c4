"""The OpenAI-family translators as pure functions: named cases, literal expectations, no
network. Streams are fed one byte at a time and compared with golden SSE text."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from servegate.canonical.requests import parse_query
from servegate.ingress.errors import UpstreamError, UpstreamUnavailable
from servegate.providers.base import Provider
from servegate.providers.registry import UnsupportedProvider, build_provider
from servegate.spec import ExternalModel, Task
from servegate.transport.credentials import CredentialRegistry

CHAT = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}


def provider(external_model: dict[str, Any], secrets: dict[str, str]) -> Provider:
    return build_provider(
        ExternalModel.model_validate(external_model), secrets, CredentialRegistry()
    )


OPENAI = {
    "name": "gpt-4o-mini",
    "provider": "openai",
    "task": "llm/v1/chat",
    "openai_config": {"openai_api_key": "{{secrets/s/k}}", "openai_organization": "org-1"},
}
AZURE = {
    "name": "gpt-4o",
    "provider": "openai",
    "task": "llm/v1/chat",
    "openai_config": {
        "openai_api_type": "azure",
        "openai_api_key": "{{secrets/s/k}}",
        "openai_api_base": "https://acme.openai.azure.com/",
        "openai_deployment_name": "gpt4o prod",
        "openai_api_version": "2024-06-01",
    },
}
CUSTOM_KEY = {
    "name": "llama",
    "provider": "custom",
    "task": "llm/v1/chat",
    "custom_provider_config": {
        "custom_provider_url": "http://vllm:8000/v1",
        "api_key_auth": {"key": "X-Api-Key", "value": "{{secrets/s/k}}"},
    },
}
CUSTOM_FULL_URL = {
    "name": "llama",
    "provider": "custom",
    "task": "llm/v1/chat",
    "custom_provider_config": {
        "custom_provider_url": "http://vllm:8000/v1/chat/completions",
        "bearer_token_auth": {"token": "{{secrets/s/k}}"},
    },
}
DATABRICKS = {
    "name": "team-chat",
    "provider": "databricks-model-serving",
    "task": "llm/v1/chat",
    "databricks_model_serving_config": {
        "databricks_workspace_url": "https://ws.example.com/",
        "databricks_api_token": "{{secrets/s/k}}",
    },
}

REQUEST_CASES = [
    pytest.param(
        OPENAI,
        {"openai_api_key": "sk-1"},
        "https://api.openai.com/v1/chat/completions",
        {"Authorization": "Bearer sk-1", "OpenAI-Organization": "org-1"},
        {
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.2,
            "model": "gpt-4o-mini",
        },
        id="openai-default-base",
    ),
    pytest.param(
        AZURE,
        {"openai_api_key": "az-1"},
        "https://acme.openai.azure.com/openai/deployments/gpt4o%20prod/chat/completions?api-version=2024-06-01",
        {"api-key": "az-1"},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2},
        id="azure-key-deployment-path",
    ),
    pytest.param(
        CUSTOM_KEY,
        {"api_key_auth.value": "ck-1"},
        "http://vllm:8000/v1/chat/completions",
        {"X-Api-Key": "ck-1"},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "model": "llama"},
        id="custom-api-key-header",
    ),
    pytest.param(
        CUSTOM_FULL_URL,
        {"bearer_token_auth.token": "bt-1"},
        "http://vllm:8000/v1/chat/completions",
        {"Authorization": "Bearer bt-1"},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "model": "llama"},
        id="custom-url-already-has-path",
    ),
    pytest.param(
        DATABRICKS,
        {"databricks_api_token": "dapi-1"},
        "https://ws.example.com/serving-endpoints/team-chat/invocations",
        {"Authorization": "Bearer dapi-1"},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2},
        id="databricks-invocations",
    ),
]


@pytest.mark.parametrize(("model", "secrets", "url", "auth", "body"), REQUEST_CASES)
def test_build_request(
    model: dict[str, Any],
    secrets: dict[str, str],
    url: str,
    auth: dict[str, str],
    body: dict[str, Any],
) -> None:
    built = provider(model, secrets).build_request(parse_query(Task.CHAT, CHAT))
    assert built.url == url
    assert {k: v for k, v in built.headers.items() if k not in ("Content-Type", "Accept")} == auth
    assert orjson.loads(built.body) == body


def test_stream_asks_upstream_for_usage_without_touching_the_query() -> None:
    query = parse_query(Task.CHAT, {**CHAT, "stream": True})
    built = provider(OPENAI, {"openai_api_key": "sk"}).build_request(query)
    assert orjson.loads(built.body)["stream_options"] == {"include_usage": True}
    assert "stream_options" not in query.payload  # translation never mutates the request


def test_top_k_is_refused_for_openai_but_passed_to_custom() -> None:
    query = parse_query(Task.CHAT, {**CHAT, "top_k": 5})
    with pytest.raises(Exception, match="'top_k' is not supported by provider 'openai'"):
        provider(OPENAI, {"openai_api_key": "sk"}).check(query)
    custom = provider(CUSTOM_KEY, {"api_key_auth.value": "k"})
    custom.check(query)
    assert orjson.loads(custom.build_request(query).body)["top_k"] == 5


def test_unsupported_provider_is_named() -> None:
    model = {
        "name": "text-bison",
        "provider": "palm",
        "task": "llm/v1/chat",
        "palm_config": {"palm_api_key": "{{secrets/s/k}}"},
    }
    with pytest.raises(UnsupportedProvider, match="palm"):
        provider(model, {"palm_api_key": "x"})


def _chunk(content: str | None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


USAGE = orjson.dumps(
    {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
)
UPSTREAM = (
    b"data: " + _chunk("", role=True) + b"\n\n"
    b": ping\n\n"
    b"data: " + _chunk("Hel") + b"\r\n\r\n"
    b"data: " + _chunk("lo") + b"\n\n"
    b"data: " + _chunk(None, "stop") + b"\n\n"
    b"data: " + USAGE + b"\n\n"
    b"data: [DONE]\n\n"
)
FOLDED_LAST = orjson.dumps(
    {
        **orjson.loads(_chunk(None, "stop")),
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
)


def _feed_bytewise(stream_options: dict[str, Any] | None) -> tuple[bytes, Any]:
    body: dict[str, Any] = {**CHAT, "stream": True}
    if stream_options is not None:
        body["stream_options"] = stream_options
    translator = provider(OPENAI, {"openai_api_key": "sk"}).stream(parse_query(Task.CHAT, body))
    out = b"".join(b"".join(translator.feed(UPSTREAM[i : i + 1])) for i in range(len(UPSTREAM)))
    return out + b"".join(translator.finish()), translator.usage


def test_stream_folds_usage_into_the_finish_chunk_byte_by_byte() -> None:
    out, usage = _feed_bytewise(None)
    golden = (
        b"data: "
        + _chunk("", role=True)
        + b"\n\n"
        + b"data: "
        + _chunk("Hel")
        + b"\n\n"
        + b"data: "
        + _chunk("lo")
        + b"\n\n"
        + b"data: "
        + FOLDED_LAST
        + b"\n\n"
    )
    assert out == golden
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 2)


def test_stream_passes_usage_chunk_when_client_asked() -> None:
    out, _ = _feed_bytewise({"include_usage": True})
    assert out.endswith(b"data: " + USAGE + b"\n\n")


def test_stream_without_done_is_an_error() -> None:
    translator = provider(OPENAI, {"openai_api_key": "sk"}).stream(
        parse_query(Task.CHAT, {**CHAT, "stream": True})
    )
    translator.feed(b"data: " + _chunk("Hel") + b"\n\n")
    with pytest.raises(UpstreamUnavailable, match="before it was complete"):
        translator.finish()


def test_stream_error_event_is_an_upstream_error() -> None:
    translator = provider(OPENAI, {"openai_api_key": "sk"}).stream(
        parse_query(Task.CHAT, {**CHAT, "stream": True})
    )
    with pytest.raises(UpstreamError, match="insufficient_quota"):
        translator.feed(b'data: {"error": {"code": "insufficient_quota", "message": "quota"}}\n\n')


def test_error_bodies_are_wrapped_and_scrubbed() -> None:
    p = provider(OPENAI, {"openai_api_key": "sk-SECRET-1"})
    error = p.error(
        429, b'{"error": {"message": "key sk-SECRET-1 over quota"}}', {"retry-after-ms": "1500"}
    )
    assert error.status == 429
    assert error.retry_after == 2
    assert orjson.loads(error.message) == {
        "external_model_provider": "openai",
        "external_model_error": {"error": {"message": "key [REDACTED] over quota"}},
    }
