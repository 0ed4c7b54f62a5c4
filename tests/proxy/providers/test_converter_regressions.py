"""Named cases for the failures the property tests (test_converter_fuzz.py) found: each
was a 500 before its fix and is now a 4xx or 502 the client can act on."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from servegate.canonical.requests import MAX_NESTING, nested_deeper_than, parse_query
from servegate.canonical.usage import MAX_TOKENS, Usage
from servegate.ingress.errors import (
    BadRequest,
    GatewayError,
    UpstreamUnavailable,
    parse_retry_after,
)
from servegate.providers.base import Translated
from servegate.providers.registry import build_provider
from servegate.simulators.vertex import generate_service_account
from servegate.spec import ExternalModel, Task
from servegate.transport.credentials import CredentialRegistry

VERTEX_KEY = orjson.dumps(generate_service_account(project_id="p")[0]).decode()


def provider(
    provider: str, name: str, config_key: str, config: dict[str, Any], secrets: Any
) -> Any:
    model = {"name": name, "provider": provider, "task": "llm/v1/chat", config_key: config}
    return build_provider(ExternalModel.model_validate(model), secrets, CredentialRegistry())


def gemini() -> Any:
    config = {"project_id": "p", "region": "us-central1", "private_key": "{{secrets/g/k}}"}
    return provider(
        "google-cloud-vertex-ai",
        "gemini-2.0-flash",
        "google_cloud_vertex_ai_config",
        config,
        {"private_key": VERTEX_KEY},
    )


def bedrock() -> Any:
    config = {
        "aws_region": "us-east-1",
        "bedrock_provider": "anthropic",
        "aws_access_key_id": "{{secrets/a/i}}",
        "aws_secret_access_key": "{{secrets/a/s}}",
    }
    keys = {"aws_access_key_id": "AKID", "aws_secret_access_key": "secret"}
    return provider("amazon-bedrock", "anthropic.claude", "amazon_bedrock_config", config, keys)


def cohere() -> Any:
    config = {"cohere_api_key": "{{secrets/c/k}}"}
    return provider("cohere", "command-r", "cohere_config", config, {"cohere_api_key": "k"})


CHAT = parse_query(Task.CHAT, {"messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7),
        ({"Retry-After": " 7 "}, 7),
        ({"Retry-After": "²"}, None),  # isdigit() but not int(): was ValueError
        ({"Retry-After": "9" * 5000}, None),  # past int()'s digit limit: was ValueError
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),
        ({"retry-after-ms": "1500"}, 2),
        ({"retry-after-ms": "inf"}, None),  # was OverflowError
        ({"retry-after-ms": "nan"}, None),  # was ValueError
        ({"retry-after-ms": "-5"}, 1),
    ],
)
def test_retry_after_is_read_or_ignored(headers: dict[str, str], seconds: int | None) -> None:
    assert parse_retry_after(headers) == seconds


def test_usage_counts_out_of_range_are_refused() -> None:
    assert Usage.from_openai({"prompt_tokens": 2**64 - 1, "completion_tokens": 1}) is None
    assert Usage.from_openai({"prompt_tokens": -1}) is None
    with pytest.raises(ValueError, match="out of range"):
        Usage(MAX_TOKENS + 1, 0)
    assert Usage(MAX_TOKENS, 0).total_tokens == MAX_TOKENS


@pytest.mark.parametrize(
    "body",
    [
        {"candidates": [{"index": None}]},  # int(None)
        {"candidates": [{"content": {"parts": [1.5]}}]},  # "text" in 1.5
        {"candidates": 1.5},
        {"usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": None}},
        {"usageMetadata": {"promptTokenCount": 2**64 - 1, "candidatesTokenCount": 2**64 - 1}},
    ],
)
def test_gemini_body_of_unknown_shape_is_a_502(body: dict[str, Any]) -> None:
    with pytest.raises(UpstreamUnavailable, match="unknown shape"):
        gemini().parse_response(CHAT, orjson.dumps(body))


def test_gemini_error_with_odd_retry_details_keeps_its_status() -> None:
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": 5}}
    error = gemini().error(429, orjson.dumps(body), {})
    assert (error.status, error.retry_after) == (429, 1)
    body["error"]["details"] = [{"retryDelay": "infs"}]
    assert gemini().error(429, orjson.dumps(body), {}).retry_after == 1


@pytest.mark.parametrize(
    "body",
    [
        {"message": {"content": True}},
        {"message": {"tool_calls": [None]}},
        {"message": {"content": [None]}},
    ],
)
def test_cohere_body_of_unknown_shape_is_a_502(body: dict[str, Any]) -> None:
    with pytest.raises(UpstreamUnavailable):
        cohere().parse_response(CHAT, orjson.dumps(body))


def test_bedrock_tool_call_that_is_not_an_object_is_a_400() -> None:
    query = parse_query(
        Task.CHAT,
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [None]},
            ]
        },
    )
    with pytest.raises(BadRequest, match="tool_calls"):
        bedrock().build_request(query)


def test_gemini_image_url_as_a_bare_string_is_read() -> None:
    query = parse_query(
        Task.CHAT,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": "gs://b/cat.png"}],
                }
            ]
        },
    )
    body = orjson.loads(gemini().build_request(query).body)
    assert body["contents"][0]["parts"] == [
        {"fileData": {"mimeType": "image/png", "fileUri": "gs://b/cat.png"}}
    ]


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_is_measured_without_recursion() -> None:
    assert not nested_deeper_than({"a": [1, {"b": []}]}, 4)
    assert nested_deeper_than({"a": [1, {"b": []}]}, 3)
    assert nested_deeper_than(nested(50_000), 1000)
    assert not nested_deeper_than("[[[[", 0)


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}], "x": nested(300)},
        {"messages": [{"role": "user", "content": "hi"}], "usage_context": {"a": nested(900)}},
        {
            "messages": [{"role": "user", "content": "hi"}],
            "extra_params": {"x": "[" * 300 + "]" * 300},
        },
    ],
)
def test_body_nested_too_deep_is_a_400(body: dict[str, Any]) -> None:
    """orjson reads 1024 levels but writes 254, and pydantic stops near 255: such bodies
    passed validation and then failed as a 500."""
    with pytest.raises(BadRequest, match=f"more than {MAX_NESTING} levels"):
        parse_query(Task.CHAT, body)


def test_body_nested_to_the_limit_is_translated() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "x": nested(MAX_NESTING - 1)}
    query = parse_query(Task.CHAT, body)
    assert (
        provider(
            "openai",
            "gpt",
            "openai_config",
            {"openai_api_key": "{{secrets/o/k}}"},
            {"openai_api_key": "k"},
        )
        .build_request(query)
        .body
    )


def test_translated_body_that_cannot_be_encoded_fails_where_it_is_built() -> None:
    with pytest.raises(TypeError):
        Translated(body={"x": nested(300)}, usage=None)
    assert Translated(body={"a": 1}, usage=None).raw == b'{"a":1}'


def test_anthropic_tool_use_with_input_nested_too_deep_is_a_502() -> None:
    anthropic = provider(
        "anthropic", "claude", "anthropic_config", {"anthropic_api_key": "{{secrets/a/k}}"},
        {"anthropic_api_key": "k"},
    )  # fmt: skip
    deep = b"[" * 300 + b"]" * 300  # orjson reads it, but cannot write it back
    body = b'{"content": [{"type": "tool_use", "id": "t", "name": "f", "input": ' + deep + b"}]}"
    with pytest.raises(GatewayError) as raised:
        anthropic.parse_response(CHAT, body)
    assert raised.value.status == 502
