"""The Vertex AI translator as pure functions: named cases with literal upstream URLs and
bodies, responses in OpenAI's shape, streams fed one byte at a time against golden SSE,
and error mapping. No network: the OAuth exchange is covered in test_vertex_sim.py."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from servegate.canonical.requests import parse_query
from servegate.canonical.usage import Usage
from servegate.ingress.errors import BadRequest, UpstreamError, UpstreamUnavailable
from servegate.providers.base import Provider
from servegate.providers.registry import build_provider
from servegate.providers.vertex import VertexProvider
from servegate.simulators.vertex import generate_service_account
from servegate.spec import ExternalModel, Task
from servegate.transport.credentials import CredentialRegistry

KEY_INFO, _ = generate_service_account(project_id="proj-1")
KEY = orjson.dumps(KEY_INFO).decode()
BASE = "https://us-central1-aiplatform.googleapis.com/v1/projects/proj-1/locations/us-central1/publishers/google/models"
JSON = {"Content-Type": "application/json"}


def vertex(model: str, task: str = "llm/v1/chat", **config: Any) -> Provider:
    external = {
        "name": model,
        "provider": "google-cloud-vertex-ai",
        "task": task,
        "google_cloud_vertex_ai_config": {
            "project_id": "proj-1",
            "region": "us-central1",
            "private_key": "{{secrets/gcp/sa}}",
            **config,
        },
    }
    return build_provider(
        ExternalModel.model_validate(external), {"private_key": KEY}, CredentialRegistry()
    )


def test_registered_under_its_spec_name() -> None:
    provider = vertex("gemini-2.0-flash")
    assert isinstance(provider, VertexProvider)
    assert provider.name == "google-cloud-vertex-ai"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather by city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}

REQUEST_CASES = [
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/chat",
        {},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
            ],
            "max_tokens": 20,
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 40,
            "stop": "END",
            "n": 2,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "seed": 7,
        },
        f"{BASE}/gemini-2.0-flash:generateContent",
        {
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "model", "parts": [{"text": "hello"}]},
                {"role": "user", "parts": [{"text": "and now?"}]},
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {
                "maxOutputTokens": 20,
                "temperature": 0.2,
                "topP": 0.9,
                "topK": 40,
                "candidateCount": 2,
                "presencePenalty": 0.5,
                "frequencyPenalty": -0.5,
                "seed": 7,
                "stopSequences": ["END"],
            },
        },
        id="gemini-chat-roles-and-every-sampling-parameter",
    ),
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/chat",
        {},
        {"messages": [{"role": "user", "content": "hi"}], "stream": True, "stop": ["a", "b"]},
        f"{BASE}/gemini-2.0-flash:streamGenerateContent?alt=sse",
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"stopSequences": ["a", "b"]},
        },
        id="gemini-stream-uses-sse-method",
    ),
    pytest.param(
        "gemini-1.5-pro-002",
        "llm/v1/completions",
        {},
        {"prompt": ["Once upon a time"], "max_tokens": 5},
        f"{BASE}/gemini-1.5-pro-002:generateContent",
        {
            "contents": [{"role": "user", "parts": [{"text": "Once upon a time"}]}],
            "generationConfig": {"maxOutputTokens": 5},
        },
        id="gemini-completions-prompt-is-one-user-turn",
    ),
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/chat",
        {},
        {
            "messages": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": "rain"},
            ],
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        f"{BASE}/gemini-2.0-flash:generateContent",
        {
            "contents": [
                {"role": "user", "parts": [{"text": "weather in Paris and Rome?"}]},
                {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                        {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {
                            "functionResponse": {
                                "name": "get_weather",
                                "response": {"content": "sunny"},
                            }
                        },
                        {
                            "functionResponse": {
                                "name": "get_weather",
                                "response": {"content": "rain"},
                            }
                        },
                    ],
                },
            ],
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "get_weather",
                            "description": "Weather by city",
                            "parameters": {
                                "type": "object",
                                "properties": {"city": {"type": "string"}},
                            },
                        }
                    ]
                }
            ],
            "toolConfig": {
                "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
            },
        },
        id="gemini-tool-calls-and-parallel-results-merge-into-one-turn",
    ),
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/chat",
        {},
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
        },
        f"{BASE}/gemini-2.0-flash:generateContent",
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"responseMimeType": "application/json"},
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "get_weather",
                            "description": "Weather by city",
                            "parameters": {
                                "type": "object",
                                "properties": {"city": {"type": "string"}},
                            },
                        }
                    ]
                }
            ],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
        },
        id="gemini-tool-choice-required-and-json-object",
    ),
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/chat",
        {},
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": {"type": "object"}},
            },
        },
        f"{BASE}/gemini-2.0-flash:generateContent",
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {"type": "object"},
            },
        },
        id="gemini-json-schema-becomes-response-schema",
    ),
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/chat",
        {},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "compare"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                        {"type": "image_url", "image_url": {"url": "gs://bucket/cat.jpg"}},
                    ],
                }
            ]
        },
        f"{BASE}/gemini-2.0-flash:generateContent",
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "compare"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/cat.jpg"}},
                    ],
                }
            ]
        },
        id="gemini-images-inline-and-by-uri",
    ),
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/chat",
        {},
        {
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.1,
            "generationConfig": {"temperature": 0.9, "thinkingConfig": {"thinkingBudget": 0}},
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "labels": {"team": "a"},
        },
        f"{BASE}/gemini-2.0-flash:generateContent",
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"temperature": 0.1, "thinkingConfig": {"thinkingBudget": 0}},
            "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
            "labels": {"team": "a"},
        },
        id="gemini-native-fields-pass-through-and-mapped-parameters-win",
    ),
    pytest.param(
        "gemini-2.5-pro",
        "llm/v1/chat",
        {"region": "global"},
        {"messages": [{"role": "user", "content": "hi"}]},
        "https://aiplatform.googleapis.com/v1/projects/proj-1/locations/global/publishers/google/models/gemini-2.5-pro:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        id="global-location-has-no-regional-host",
    ),
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/chat",
        {"vertex_api_base": "http://127.0.0.1:8908/"},
        {"messages": [{"role": "user", "content": "hi"}]},
        "http://127.0.0.1:8908/v1/projects/proj-1/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        id="vertex-api-base-override",
    ),
    pytest.param(
        "text-bison@002",
        "llm/v1/completions",
        {},
        {"prompt": "Once", "max_tokens": 8, "temperature": 0.3, "stop": ["\n"], "n": 2},
        f"{BASE}/text-bison@002:predict",
        {
            "instances": [{"prompt": "Once"}],
            "parameters": {
                "maxOutputTokens": 8,
                "temperature": 0.3,
                "candidateCount": 2,
                "stopSequences": ["\n"],
            },
        },
        id="text-bison-predict",
    ),
    pytest.param(
        "chat-bison",
        "llm/v1/chat",
        {},
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "bye"},
            ]
        },
        f"{BASE}/chat-bison:predict",
        {
            "instances": [
                {
                    "context": "You are terse.",
                    "messages": [
                        {"author": "user", "content": "hi"},
                        {"author": "bot", "content": "yo"},
                        {"author": "user", "content": "bye"},
                    ],
                }
            ]
        },
        id="chat-bison-context-and-authors",
    ),
    pytest.param(
        "text-embedding-004",
        "llm/v1/embeddings",
        {},
        {"input": ["a", "b"], "dimensions": 256, "task_type": "RETRIEVAL_QUERY"},
        f"{BASE}/text-embedding-004:predict",
        {
            "instances": [
                {"content": "a", "task_type": "RETRIEVAL_QUERY"},
                {"content": "b", "task_type": "RETRIEVAL_QUERY"},
            ],
            "parameters": {"outputDimensionality": 256},
        },
        id="embeddings-predict-instances",
    ),
    pytest.param(
        "textembedding-gecko@003",
        "llm/v1/embeddings",
        {},
        {"input": "one text", "encoding_format": "base64"},
        f"{BASE}/textembedding-gecko@003:predict",
        {"instances": [{"content": "one text"}]},
        id="embeddings-single-input",
    ),
]


@pytest.mark.parametrize(("model", "task", "config", "body", "url", "upstream"), REQUEST_CASES)
def test_request(
    model: str,
    task: str,
    config: dict[str, Any],
    body: dict[str, Any],
    url: str,
    upstream: dict[str, Any],
) -> None:
    provider = vertex(model, task, **config)
    query = parse_query(Task(task), body)
    provider.check(query)
    request = provider.build_request(query)
    assert request.url == url
    assert dict(request.headers) == JSON
    assert orjson.loads(request.body) == upstream


ENDPOINT = "projects/proj-1/locations/us-central1/endpoints/4567890123"
ENDPOINT_URL = f"https://us-central1-aiplatform.googleapis.com/v1/{ENDPOINT}"
HI = {"messages": [{"role": "user", "content": "hi"}]}
HI_UPSTREAM = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.parametrize(
    ("model", "task", "body", "url", "upstream"),
    [
        pytest.param(
            ENDPOINT, "llm/v1/chat", HI, f"{ENDPOINT_URL}:generateContent", HI_UPSTREAM,
            id="tuned-endpoint-chat",
        ),
        pytest.param(
            ENDPOINT, "llm/v1/chat", {**HI, "stream": True},
            f"{ENDPOINT_URL}:streamGenerateContent?alt=sse", HI_UPSTREAM,
            id="tuned-endpoint-stream",
        ),
        pytest.param(
            ENDPOINT, "llm/v1/completions", {"prompt": "hi"}, f"{ENDPOINT_URL}:generateContent",
            HI_UPSTREAM, id="tuned-endpoint-completions-are-gemini",
        ),
        pytest.param(
            ENDPOINT, "llm/v1/embeddings", {"input": "hi"}, f"{ENDPOINT_URL}:predict",
            {"instances": [{"content": "hi"}]}, id="endpoint-embeddings-predict",
        ),
        pytest.param(
            "publishers/google/models/gemini-2.0-flash", "llm/v1/chat", HI,
            f"{BASE}/gemini-2.0-flash:generateContent", HI_UPSTREAM,
            id="publisher-form-is-the-plain-id",
        ),
        pytest.param(
            "publishers/google/models/text-bison@002", "llm/v1/completions", {"prompt": "hi"},
            f"{BASE}/text-bison@002:predict", {"instances": [{"prompt": "hi"}]},
            id="publisher-form-keeps-the-family",
        ),
        pytest.param(
            "gemini:x?y#z", "llm/v1/chat", HI, f"{BASE}/gemini%3Ax%3Fy%23z:generateContent",
            HI_UPSTREAM, id="plain-id-is-quoted",
        ),
    ],
)  # fmt: skip
def test_model_name_forms(
    model: str, task: str, body: dict[str, Any], url: str, upstream: dict[str, Any]
) -> None:
    provider = vertex(model, task)
    query = parse_query(Task(task), body)
    provider.check(query)
    request = provider.build_request(query)
    assert request.url == url
    assert orjson.loads(request.body) == upstream


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param(
            "projects/other/locations/us-central1/endpoints/1",
            "project 'other', location 'us-central1', but google_cloud_vertex_ai_config has "
            "project_id 'proj-1', region 'us-central1'",
            id="other-project",
        ),
        pytest.param(
            "projects/proj-1/locations/europe-west4/endpoints/1",
            "location 'europe-west4'",
            id="other-location",
        ),
        pytest.param(
            "publishers/anthropic/models/claude-3-5-sonnet", "'anthropic' publisher model",
            id="partner-publisher",
        ),
        pytest.param("../../../oauth2/token", "neither a model id", id="dot-dot"),
        pytest.param("gemini-2.0-flash/../x", "neither a model id", id="slash-in-id"),
        pytest.param(
            "projects/proj-1/locations/us-central1/endpoints/1/../../x", "neither a model id",
            id="endpoint-with-a-tail",
        ),
        pytest.param(
            "projects/proj-1/locations/us-central1/endpoints/..", "neither a model id",
            id="dot-dot-endpoint",
        ),
        pytest.param(
            "projects/proj-1/locations/us-central1/models/1", "neither a model id",
            id="model-resource-not-endpoint",
        ),
        pytest.param("publishers/google/models/a/b", "neither a model id", id="publisher-tail"),
        pytest.param("..", "neither a model id", id="dots"),
    ],
)  # fmt: skip
def test_a_name_outside_the_accepted_forms_fails_at_load(name: str, message: str) -> None:
    with pytest.raises(ValueError, match="google-cloud-vertex-ai") as raised:
        vertex(name)
    assert message in str(raised.value)


REJECT_CASES = [
    pytest.param(
        "gemini-2.0-flash", "llm/v1/chat", {"logit_bias": {"1": 5}}, "'logit_bias'", id="logit-bias"
    ),
    pytest.param(
        "gemini-2.0-flash", "llm/v1/chat", {"logprobs": True}, "'logprobs'", id="logprobs"
    ),
    pytest.param("gemini-2.0-flash", "llm/v1/chat", {"user": "ana"}, "'user'", id="user"),
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/completions",
        {"suffix": "x"},
        "'suffix'",
        id="completions-suffix",
    ),
    pytest.param(
        "gemini-2.0-flash",
        "llm/v1/chat",
        {"parallel_tool_calls": False},
        "'parallel_tool_calls'",
        id="parallel-tool-calls-false",
    ),
    pytest.param(
        "text-bison", "llm/v1/completions", {"stream": True}, "cannot stream", id="predict-stream"
    ),
    pytest.param(
        "chat-bison", "llm/v1/chat", {"tools": [WEATHER_TOOL]}, "'tools'", id="palm-no-tools"
    ),
    pytest.param(
        "gemini-2.0-flash", "llm/v1/chat", {"seed": None, "top_k": 0}, "top_k", id="invalid-value"
    ),
    pytest.param(
        "text-embedding-004", "llm/v1/embeddings", {"user": "ana"}, "'user'", id="embeddings-user"
    ),
]


@pytest.mark.parametrize(("model", "task", "extra", "named"), REJECT_CASES)
def test_unsupported_parameter_is_refused_by_name(
    model: str, task: str, extra: dict[str, Any], named: str
) -> None:
    body = {
        Task.CHAT: {"messages": [{"role": "user", "content": "hi"}]},
        Task.COMPLETIONS: {"prompt": "hi"},
        Task.EMBEDDINGS: {"input": "hi"},
    }[Task(task)]
    with pytest.raises(BadRequest) as raised:
        vertex(model, task).check(parse_query(Task(task), {**body, **extra}))
    assert named in raised.value.message
    if named.startswith("'"):
        assert "google-cloud-vertex-ai" in raised.value.message


BUILD_REJECTS = [
    pytest.param(
        "llm/v1/chat",
        {"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]},
        "tool_call_id",
        id="tool-result-without-call",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": [{"role": "function", "name": "f", "content": "x"}]},
        "'function'",
        id="legacy-function-role",
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        "'input_audio'",
        id="audio-part",
    ),
    pytest.param(
        "llm/v1/chat",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "strict": True}}],
        },
        "'strict'",
        id="strict-tools",
    ),
    pytest.param(
        "llm/v1/chat",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "grammar"},
        },
        "'grammar'",
        id="unknown-response-format",
    ),
    pytest.param(
        "llm/v1/completions", {"prompt": ["one", "two"]}, "one non-empty prompt", id="two-prompts"
    ),
    pytest.param(
        "llm/v1/chat",
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]}]},
        "without a function",
        id="tool-call-without-function",
    ),
    pytest.param(
        "llm/v1/chat",
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1]"},
                        }
                    ],
                }
            ]
        },
        "not a JSON object",
        id="tool-call-arguments-not-an-object",
    ),
    pytest.param("llm/v1/embeddings", {"input": [[1, 2]]}, "token arrays", id="token-arrays"),
]


@pytest.mark.parametrize(("task", "body", "named"), BUILD_REJECTS)
def test_untranslatable_request_is_a_bad_request(
    task: str, body: dict[str, Any], named: str
) -> None:
    model = "text-embedding-004" if task == "llm/v1/embeddings" else "gemini-2.0-flash"
    provider = vertex(model, task)
    query = parse_query(Task(task), body)
    provider.check(query)
    with pytest.raises(BadRequest, match=named) as raised:
        provider.build_request(query)
    assert "provider 'google-cloud-vertex-ai'" in raised.value.message


def test_empty_tool_call_arguments_are_an_empty_object() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "now", "arguments": ""}}
    body = {
        "messages": [
            {"role": "user", "content": "time?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "noon"},
        ]
    }
    request = vertex("gemini-2.0-flash").build_request(parse_query(Task.CHAT, body))
    assert orjson.loads(request.body)["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "now", "args": {}}}]},
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "now", "response": {"content": "noon"}}}],
        },
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("not json", "service-account JSON key", id="not-json"),
        pytest.param('{"type": "authorized_user"}', "service-account JSON key", id="wrong-type"),
        pytest.param(
            '{"type": "service_account", "client_email": "a@b"}',
            "lacks private_key, token_uri",
            id="missing-fields",
        ),
        pytest.param(
            '{"type": "service_account", "client_email": "a@b", "token_uri": "http://t", '
            '"private_key": "-----BEGIN PRIVATE KEY-----\\nSECRETBYTES\\n-----END PRIVATE KEY-----\\n"}',
            "not a PEM RSA key",
            id="unreadable-pem",
        ),
    ],
)
def test_a_bad_key_fails_at_load_without_echoing_it(raw: str, message: str) -> None:
    external = ExternalModel.model_validate(
        {
            "name": "gemini-2.0-flash",
            "provider": "google-cloud-vertex-ai",
            "task": "llm/v1/chat",
            "google_cloud_vertex_ai_config": {
                "project_id": "p",
                "region": "us-central1",
                "private_key": "{{secrets/gcp/sa}}",
            },
        }
    )
    with pytest.raises(ValueError, match=message) as raised:
        VertexProvider(external, {"private_key": raw})
    assert "SECRETBYTES" not in str(raised.value)


# ------------------------------------------------------------------------ responses

CREATED = 1735787045  # 2025-01-02T03:04:05Z
META = {"modelVersion": "gemini-2.0-flash-001", "createTime": "2025-01-02T03:04:05.678901Z"}


def gemini(candidates: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"candidates": candidates, **META, "responseId": "r1", **extra})


def text(value: str, reason: str = "STOP", **extra: Any) -> dict[str, Any]:
    return {
        "content": {"role": "model", "parts": [{"text": value}]},
        "finishReason": reason,
        **extra,
    }


USAGE = {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}

RESPONSE_CASES = [
    pytest.param(
        "llm/v1/chat",
        gemini([text("Hi there")], usageMetadata=USAGE),
        {
            "id": "chatcmpl-r1",
            "object": "chat.completion",
            "created": CREATED,
            "model": "gemini-2.0-flash-001",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hi there"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
        },
        id="chat-text",
    ),
    pytest.param(
        "llm/v1/chat",
        gemini(
            [text("cut", "MAX_TOKENS"), text("no", "SAFETY", index=1)],
            usageMetadata={"promptTokenCount": 2, "totalTokenCount": 2},
        ),
        {
            "id": "chatcmpl-r1",
            "object": "chat.completion",
            "created": CREATED,
            "model": "gemini-2.0-flash-001",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "cut"},
                    "finish_reason": "length",
                    "logprobs": None,
                },
                {
                    "index": 1,
                    "message": {"role": "assistant", "content": "no"},
                    "finish_reason": "content_filter",
                    "logprobs": None,
                },
            ],
            "usage": {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2},
        },
        id="chat-two-candidates-length-and-safety-zero-counts-omitted",
    ),
    pytest.param(
        "llm/v1/chat",
        gemini(
            [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "planning...", "thought": True},
                            {
                                "functionCall": {
                                    "id": "fc-9",
                                    "name": "get_weather",
                                    "args": {"city": "Rome"},
                                }
                            },
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            usageMetadata={**USAGE, "thoughtsTokenCount": 10},
        ),
        {
            "id": "chatcmpl-r1",
            "object": "chat.completion",
            "created": CREATED,
            "model": "gemini-2.0-flash-001",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "fc-9",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 4, "completion_tokens": 13, "total_tokens": 17},
        },
        id="chat-function-call-thoughts-skipped-but-counted",
    ),
    pytest.param(
        "llm/v1/chat",
        orjson.dumps(
            {
                "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
                **META,
                "responseId": "r1",
            }
        ),
        {
            "id": "chatcmpl-r1",
            "object": "chat.completion",
            "created": CREATED,
            "model": "gemini-2.0-flash-001",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None},
                    "finish_reason": "content_filter",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9},
        },
        id="blocked-prompt-is-content-filter",
    ),
    pytest.param(
        "llm/v1/completions",
        gemini([text("upon a time")], usageMetadata=USAGE),
        {
            "id": "cmpl-r1",
            "object": "text_completion",
            "created": CREATED,
            "model": "gemini-2.0-flash-001",
            "choices": [
                {"index": 0, "text": "upon a time", "finish_reason": "stop", "logprobs": None}
            ],
            "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7},
        },
        id="completions-text",
    ),
]


@pytest.mark.parametrize(("task", "upstream", "expected"), RESPONSE_CASES)
def test_gemini_response(task: str, upstream: bytes, expected: dict[str, Any]) -> None:
    body = (
        {"messages": [{"role": "user", "content": "x"}]}
        if task == "llm/v1/chat"
        else {"prompt": "x"}
    )
    translated = vertex("gemini-2.0-flash", task).parse_response(
        parse_query(Task(task), body), upstream
    )
    assert translated.body == expected
    usage = expected["usage"]
    assert translated.usage == Usage(usage["prompt_tokens"], usage["completion_tokens"])


def without_volatile(body: dict[str, Any]) -> dict[str, Any]:
    """PaLM and embeddings answers carry no id or time: the gateway makes them up."""
    return {k: v for k, v in body.items() if k not in ("id", "created")}


PALM_TOKENS = {
    "tokenMetadata": {
        "inputTokenCount": {"totalTokens": 3, "totalBillableCharacters": 12},
        "outputTokenCount": {"totalTokens": 5, "totalBillableCharacters": 20},
    }
}


def test_text_bison_predictions_are_choices() -> None:
    upstream = {
        "predictions": [
            {
                "content": " upon a time",
                "safetyAttributes": {"blocked": False, "categories": [], "scores": []},
            },
            {
                "content": "",
                "safetyAttributes": {"blocked": True, "categories": ["Toxic"], "scores": [0.9]},
            },
        ],
        "metadata": PALM_TOKENS,
    }
    query = parse_query(Task.COMPLETIONS, {"prompt": "Once", "n": 2})
    translated = vertex("text-bison@002", "llm/v1/completions").parse_response(
        query, orjson.dumps(upstream)
    )
    assert without_volatile(translated.body) == {
        "object": "text_completion",
        "model": "text-bison@002",
        "choices": [
            {"index": 0, "text": " upon a time", "finish_reason": "stop", "logprobs": None},
            {"index": 1, "text": "", "finish_reason": "content_filter", "logprobs": None},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }
    assert translated.body["id"].startswith("cmpl-")
    assert translated.usage == Usage(3, 5)


def test_chat_bison_candidates_are_choices() -> None:
    upstream = {
        "predictions": [
            {
                "candidates": [{"author": "bot", "content": " Eight planets."}],
                "safetyAttributes": [{"blocked": False, "categories": [], "scores": []}],
                "citationMetadata": [{"citations": []}],
            }
        ],
        "metadata": PALM_TOKENS,
    }
    query = parse_query(Task.CHAT, {"messages": [{"role": "user", "content": "planets?"}]})
    translated = vertex("chat-bison", "llm/v1/chat").parse_response(query, orjson.dumps(upstream))
    assert without_volatile(translated.body) == {
        "object": "chat.completion",
        "model": "chat-bison",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " Eight planets."},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


EMBEDDINGS_UPSTREAM = {
    "predictions": [
        {
            "embeddings": {
                "values": [0.5, -0.25],
                "statistics": {"truncated": False, "token_count": 2},
            }
        },
        {
            "embeddings": {
                "values": [1.0, 0.0],
                "statistics": {"truncated": False, "token_count": 3.0},
            }
        },
    ],
    "metadata": {"billableCharacterCount": 9},
}


def test_embeddings_values_and_token_count() -> None:
    query = parse_query(Task.EMBEDDINGS, {"input": ["a b", "c d e"]})
    translated = vertex("text-embedding-004", "llm/v1/embeddings").parse_response(
        query, orjson.dumps(EMBEDDINGS_UPSTREAM)
    )
    assert translated.body == {
        "object": "list",
        "model": "text-embedding-004",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -0.25]},
            {"object": "embedding", "index": 1, "embedding": [1.0, 0.0]},
        ],
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
    assert translated.usage == Usage(5, 0)


def test_embeddings_base64_is_openai_float32_packing() -> None:
    query = parse_query(Task.EMBEDDINGS, {"input": ["a b", "c d e"], "encoding_format": "base64"})
    translated = vertex("text-embedding-004", "llm/v1/embeddings").parse_response(
        query, orjson.dumps(EMBEDDINGS_UPSTREAM)
    )
    first = translated.body["data"][0]["embedding"]
    assert first == "AAAAPwAAgL4="
    assert struct.unpack("<2f", base64.b64decode(first)) == (0.5, -0.25)


def test_predict_without_predictions_is_unavailable() -> None:
    query = parse_query(Task.COMPLETIONS, {"prompt": "x"})
    with pytest.raises(UpstreamUnavailable):
        vertex("text-bison", "llm/v1/completions").parse_response(query, b'{"predictions": []}')


# -------------------------------------------------------------------------- streams


def sse(*events: dict[str, Any]) -> bytes:
    """Vertex frames SSE with CRLF and sends no terminator."""
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)


def event(parts: list[dict[str, Any]], usage: dict[str, int], **candidate: Any) -> dict[str, Any]:
    content = {"content": {"role": "model", "parts": parts}, **candidate}
    return {"candidates": [content], "usageMetadata": usage, **META, "responseId": "r1"}


CHAT_STREAM = sse(
    event([{"text": "Hel"}], {"promptTokenCount": 4, "totalTokenCount": 4}),
    event(
        [{"text": "lo"}], {"promptTokenCount": 4, "candidatesTokenCount": 1, "totalTokenCount": 5}
    ),
    event(
        [{"text": " you"}],
        {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6},
        finishReason="STOP",
    ),
)

HEAD = '"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1735787045,"model":"gemini-2.0-flash-001"'
GOLDEN_CHAT = (
    f'data: {{{HEAD},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Hel"}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{HEAD},"choices":[{{"index":0,"delta":{{"content":"lo"}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{HEAD},"choices":[{{"index":0,"delta":{{"content":" you"}},"finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{HEAD},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop","logprobs":null}}],"usage":{{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}}}\n\n'
)
GOLDEN_CHAT_WITH_USAGE_CHUNK = (
    GOLDEN_CHAT.rsplit("data: ", 1)[0]
    + f'data: {{{HEAD},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop","logprobs":null}}]}}\n\n'
    + f'data: {{{HEAD},"choices":[],"usage":{{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}}}\n\n'
)
TOOL_STREAM = sse(
    event([{"text": "Let me check."}], {"promptTokenCount": 5, "totalTokenCount": 5}),
    event(
        [{"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}],
        {"promptTokenCount": 5, "candidatesTokenCount": 8, "totalTokenCount": 13},
        finishReason="STOP",
    ),
)
COMPLETIONS_STREAM = sse(
    event([{"text": "upon"}], {"promptTokenCount": 2, "totalTokenCount": 2}),
    event(
        [{"text": " a"}],
        {"promptTokenCount": 2, "candidatesTokenCount": 2, "totalTokenCount": 4},
        finishReason="MAX_TOKENS",
    ),
)
CMPL = (
    '"id":"cmpl-r1","object":"text_completion","created":1735787045,"model":"gemini-2.0-flash-001"'
)
GOLDEN_COMPLETIONS = (
    f'data: {{{CMPL},"choices":[{{"index":0,"text":"upon","finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{CMPL},"choices":[{{"index":0,"text":" a","finish_reason":null,"logprobs":null}}]}}\n\n'
    f'data: {{{CMPL},"choices":[{{"index":0,"text":"","finish_reason":"length","logprobs":null}}],"usage":{{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}}}\n\n'
)


def run_stream(
    provider: Provider, body: dict[str, Any], upstream: bytes, task: Task = Task.CHAT
) -> tuple[str, Any]:
    translator = provider.stream(parse_query(task, body))
    frames: list[bytes] = []
    for byte in upstream:
        frames += translator.feed(bytes([byte]))
    frames += translator.finish()
    return b"".join(frames).decode(), translator.usage


STREAM_BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.mark.parametrize(
    ("body", "golden"),
    [
        pytest.param(STREAM_BODY, GOLDEN_CHAT, id="usage-rides-on-the-finish-chunk"),
        pytest.param(
            {**STREAM_BODY, "stream_options": {"include_usage": True}},
            GOLDEN_CHAT_WITH_USAGE_CHUNK,
            id="usage-chunk-when-asked",
        ),
    ],
)
def test_chat_stream_byte_by_byte(body: dict[str, Any], golden: str) -> None:
    text, usage = run_stream(vertex("gemini-2.0-flash"), body, CHAT_STREAM)
    assert text == golden
    assert usage == Usage(4, 2)


def test_completions_stream_byte_by_byte() -> None:
    provider = vertex("gemini-2.0-flash", "llm/v1/completions")
    text, usage = run_stream(
        provider, {"prompt": "Once", "stream": True}, COMPLETIONS_STREAM, Task.COMPLETIONS
    )
    assert text == GOLDEN_COMPLETIONS
    assert usage == Usage(2, 2)


def test_tool_call_stream() -> None:
    text, usage = run_stream(vertex("gemini-2.0-flash"), STREAM_BODY, TOOL_STREAM)
    chunks = [orjson.loads(line[6:]) for line in text.split("\n\n") if line]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": "Let me check."}
    call = deltas[1]["tool_calls"][0]
    assert call["index"] == 0 and call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Rome"}'}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
    assert usage == Usage(5, 8)


def test_stream_that_ends_before_a_finish_reason_is_unavailable() -> None:
    translator = vertex("gemini-2.0-flash").stream(parse_query(Task.CHAT, STREAM_BODY))
    frames = translator.feed(CHAT_STREAM[: CHAT_STREAM.index(b"data:", 10)])
    assert len(frames) == 1
    with pytest.raises(UpstreamUnavailable, match="before it was complete"):
        translator.finish()


def test_stream_error_event_is_the_upstream_error() -> None:
    error = {
        "error": {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED"}
    }
    translator = vertex("gemini-2.0-flash").stream(parse_query(Task.CHAT, STREAM_BODY))
    translator.feed(CHAT_STREAM[: CHAT_STREAM.index(b"data:", 10)])
    with pytest.raises(UpstreamError) as raised:
        translator.feed(sse(error))
    assert raised.value.status == 429
    assert raised.value.error_code == "REQUEST_LIMIT_EXCEEDED"
    assert raised.value.upstream_body == error


def test_stream_event_that_is_not_json_is_unavailable() -> None:
    translator = vertex("gemini-2.0-flash").stream(parse_query(Task.CHAT, STREAM_BODY))
    with pytest.raises(UpstreamUnavailable, match="not JSON"):
        translator.feed(b'data: {"candidates": [\r\n\r\n')


# --------------------------------------------------------------------------- errors

RATE_LIMITED = {
    "error": {
        "code": 429,
        "message": "Resource exhausted. Please try again later.",
        "status": "RESOURCE_EXHAUSTED",
    }
}
ERROR_CASES = [
    pytest.param(429, RATE_LIMITED, {}, "REQUEST_LIMIT_EXCEEDED", 1, id="429-defaults-retry-after"),
    pytest.param(
        429, RATE_LIMITED, {"Retry-After": "7"}, "REQUEST_LIMIT_EXCEEDED", 7, id="429-header"
    ),
    pytest.param(
        429,
        {
            "error": {
                **RATE_LIMITED["error"],
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12.5s"}
                ],
            }
        },
        {},
        "REQUEST_LIMIT_EXCEEDED",
        13,
        id="429-retry-info",
    ),
    pytest.param(
        401,
        {
            "error": {
                "code": 401,
                "message": "Request had invalid authentication credentials.",
                "status": "UNAUTHENTICATED",
            }
        },
        {},
        "UNAUTHENTICATED",
        None,
        id="401",
    ),
    pytest.param(
        403,
        {"error": {"code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED"}},
        {},
        "PERMISSION_DENIED",
        None,
        id="403",
    ),
    pytest.param(
        400,
        {"error": {"code": 400, "message": "Bad field", "status": "INVALID_ARGUMENT"}},
        {},
        "BAD_REQUEST",
        None,
        id="400",
    ),
    pytest.param(
        400,
        [{"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}],
        {},
        "REQUEST_LIMIT_EXCEEDED",
        1,
        id="quota-status-in-a-json-array-is-429",
    ),
    pytest.param(
        503,
        {"error": {"code": 503, "message": "unavailable", "status": "UNAVAILABLE"}},
        {},
        "TEMPORARILY_UNAVAILABLE",
        1,
        id="503",
    ),
]


@pytest.mark.parametrize(("status", "body", "headers", "code", "retry_after"), ERROR_CASES)
def test_error_mapping(
    status: int, body: Any, headers: dict[str, str], code: str, retry_after: int | None
) -> None:
    error = vertex("gemini-2.0-flash").error(status, orjson.dumps(body), headers)
    expected_status = 429 if code == "REQUEST_LIMIT_EXCEEDED" else status
    assert (error.status, error.error_code, error.retry_after) == (
        expected_status,
        code,
        retry_after,
    )
    assert orjson.loads(error.message) == {
        "external_model_provider": "google-cloud-vertex-ai",
        "external_model_error": body,
    }


def test_error_body_never_carries_the_key() -> None:
    error = vertex("gemini-2.0-flash").error(400, b"rejected key: " + KEY.encode(), {})
    assert KEY not in error.message
    assert orjson.loads(error.message)["external_model_error"] == "rejected key: [REDACTED]"


def test_token_source_is_shared_across_reloads_and_renewed_for_a_new_key() -> None:
    """A reload rebuilds the provider but reuses the gateway's token source for the same
    key file (no new token); a rotated key gets its own."""
    from servegate.simulators.vertex import generate_service_account
    from servegate.transport.credentials import CredentialRegistry

    registry = CredentialRegistry()
    first_key = orjson.dumps(generate_service_account()[0]).decode()
    second_key = orjson.dumps(generate_service_account()[0]).decode()
    external = ExternalModel.model_validate(
        {
            "name": "gemini-2.0-flash",
            "provider": "google-cloud-vertex-ai",
            "task": "llm/v1/chat",
            "google_cloud_vertex_ai_config": {
                "project_id": "p",
                "region": "us-central1",
                "private_key": "{{secrets/gcp/key}}",
            },
        }
    )
    before = VertexProvider(external, {"private_key": first_key}, registry)
    after_reload = VertexProvider(external, {"private_key": first_key}, registry)
    rotated = VertexProvider(external, {"private_key": second_key}, registry)
    assert before._tokens is after_reload._tokens
    assert rotated._tokens is not before._tokens
