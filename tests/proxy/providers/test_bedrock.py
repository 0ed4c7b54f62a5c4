"""The Amazon Bedrock translator as pure functions: named cases with literal upstream URLs,
headers and bodies; SigV4 signing at a pinned time; responses and error mapping; event streams
fed one byte at a time and compared with golden SSE text. No network."""

from __future__ import annotations

import base64
import datetime
import re
from typing import Any

import botocore.auth
import orjson
import pytest
from botocore.credentials import Credentials, RefreshableCredentials

from servegate.canonical.requests import QueryRequest, parse_query
from servegate.canonical.usage import Usage
from servegate.ingress.errors import BadRequest, UpstreamError, UpstreamUnavailable
from servegate.providers.base import UpstreamRequest
from servegate.providers.bedrock import AwsCredentialChain, BedrockProvider
from servegate.simulators.bedrock import encode_event_message
from servegate.spec import ExternalModel, Task

KEYS = {
    "aws_access_key_id": "AKIDEXAMPLE",
    "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCY",
}
CLAUDE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
BASE = "https://bedrock-runtime.us-east-1.amazonaws.com/model"
JSON = {"Content-Type": "application/json", "Accept": "application/json"}
STREAM = {"Content-Type": "application/json", "Accept": "application/vnd.amazon.eventstream"}


def model(
    name: str = CLAUDE,
    family: str = "anthropic",
    task: str = "llm/v1/chat",
    *,
    keys: bool = True,
    **config: Any,
) -> ExternalModel:
    references = {
        "aws_access_key_id": "{{secrets/aws/id}}",
        "aws_secret_access_key": "{{secrets/aws/secret}}",
    }
    return ExternalModel.model_validate(
        {
            "name": name,
            "provider": "amazon-bedrock",
            "task": task,
            "amazon_bedrock_config": {
                "aws_region": "us-east-1",
                "bedrock_provider": family,
                **(references if keys else {}),
                **config,
            },
        }
    )


def provider(
    name: str = CLAUDE, family: str = "anthropic", task: str = "llm/v1/chat", **config: Any
) -> BedrockProvider:
    return BedrockProvider(model(name, family, task, **config), KEYS)


USER = [{"role": "user", "content": "hi"}]

REQUEST_CASES = [
    pytest.param(
        provider(),
        Task.CHAT,
        {
            "messages": [{"role": "system", "content": "Be brief."}, *USER],
            "max_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop": "END",
        },
        f"{BASE}/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse",
        JSON,
        {
            "messages": [{"role": "user", "content": [{"text": "hi"}]}],
            "system": [{"text": "Be brief."}],
            "inferenceConfig": {
                "maxTokens": 50,
                "temperature": 0.5,
                "topP": 0.9,
                "stopSequences": ["END"],
            },
            "additionalModelRequestFields": {"top_k": 40},
        },
        id="chat-anthropic-converse-sampling-and-top_k",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {"messages": USER, "stream": True, "stream_options": {"include_usage": True}},
        f"{BASE}/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse-stream",
        STREAM,
        {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
        id="chat-stream-converse-stream",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "description": "Weather now",
                        "parameters": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                        },
                    },
                }
            ],
            "tool_choice": "required",
        },
        f"{BASE}/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse",
        JSON,
        {
            "messages": [
                {"role": "user", "content": [{"text": "Weather in Paris?"}]},
                {
                    "role": "assistant",
                    "content": [
                        {
                            "toolUse": {
                                "toolUseId": "call_1",
                                "name": "weather",
                                "input": {"city": "Paris"},
                            }
                        }
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"toolResult": {"toolUseId": "call_1", "content": [{"text": "18C"}]}},
                        {"text": "And now?"},
                    ],
                },
            ],
            "toolConfig": {
                "tools": [
                    {
                        "toolSpec": {
                            "name": "weather",
                            "inputSchema": {
                                "json": {
                                    "type": "object",
                                    "properties": {"city": {"type": "string"}},
                                }
                            },
                            "description": "Weather now",
                        }
                    }
                ],
                "toolChoice": {"any": {}},
            },
        },
        id="chat-tools-results-merged-into-one-user-turn",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is it?"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,AAAA"}},
                    ],
                }
            ],
            "tools": [{"type": "function", "function": {"name": "look"}}],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "guardrailConfig": {"guardrailIdentifier": "gr-1", "guardrailVersion": "1"},
        },
        f"{BASE}/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse",
        JSON,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"text": "What is it?"},
                        {"image": {"format": "jpeg", "source": {"bytes": "AAAA"}}},
                    ],
                }
            ],
            "toolConfig": {
                "tools": [
                    {"toolSpec": {"name": "look", "inputSchema": {"json": {"type": "object"}}}}
                ],
                "toolChoice": {"tool": {"name": "look"}},
            },
            "guardrailConfig": {"guardrailIdentifier": "gr-1", "guardrailVersion": "1"},
        },
        id="chat-image-data-url-named-tool-and-native-guardrail",
    ),
    pytest.param(
        provider(
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0",
            bedrock_endpoint_url="http://127.0.0.1:8907/",
        ),
        Task.CHAT,
        {
            "messages": USER,
            "max_completion_tokens": 7,
            "additionalModelRequestFields": {"top_k": 1},
        },
        "http://127.0.0.1:8907/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.anthropic.claude-3-haiku-20240307-v1:0/converse",
        JSON,
        {
            "messages": [{"role": "user", "content": [{"text": "hi"}]}],
            "inferenceConfig": {"maxTokens": 7},
            "additionalModelRequestFields": {"top_k": 1},
        },
        id="arn-model-id-keeps-its-slash-encoded-custom-endpoint",
    ),
    pytest.param(
        provider("amazon.titan-text-express-v1", "amazon", "llm/v1/completions"),
        Task.COMPLETIONS,
        {"prompt": "Once upon", "max_tokens": 20, "temperature": 0.1, "top_p": 0.5, "stop": ["|"]},
        f"{BASE}/amazon.titan-text-express-v1/invoke",
        JSON,
        {
            "inputText": "Once upon",
            "textGenerationConfig": {
                "maxTokenCount": 20,
                "temperature": 0.1,
                "topP": 0.5,
                "stopSequences": ["|"],
            },
        },
        id="completions-amazon-titan-text-invoke",
    ),
    pytest.param(
        provider("amazon.titan-text-express-v1", "amazon", "llm/v1/completions"),
        Task.COMPLETIONS,
        {"prompt": ["Once upon"], "stream": True},
        f"{BASE}/amazon.titan-text-express-v1/invoke-with-response-stream",
        {**STREAM, "X-Amzn-Bedrock-Accept": "application/json"},
        {"inputText": "Once upon"},
        id="completions-titan-stream-one-element-prompt-list",
    ),
    pytest.param(
        provider("cohere.command-r-v1:0", "cohere", "llm/v1/completions"),
        Task.COMPLETIONS,
        {"prompt": "Once upon", "max_tokens": 5},
        f"{BASE}/cohere.command-r-v1:0/converse",
        JSON,
        {
            "messages": [{"role": "user", "content": [{"text": "Once upon"}]}],
            "inferenceConfig": {"maxTokens": 5},
        },
        id="completions-cohere-through-converse",
    ),
    pytest.param(
        provider("amazon.titan-embed-text-v2:0", "amazon", "llm/v1/embeddings"),
        Task.EMBEDDINGS,
        {"input": ["hello"], "dimensions": 256, "encoding_format": "base64", "normalize": False},
        f"{BASE}/amazon.titan-embed-text-v2:0/invoke",
        JSON,
        {"inputText": "hello", "dimensions": 256, "normalize": False},
        id="embeddings-titan-one-input-dimensions",
    ),
    pytest.param(
        provider("cohere.embed-english-v3", "cohere", "llm/v1/embeddings"),
        Task.EMBEDDINGS,
        {"input": ["a", "b"], "truncate": "END"},
        f"{BASE}/cohere.embed-english-v3/invoke",
        JSON,
        {"texts": ["a", "b"], "input_type": "search_document", "truncate": "END"},
        id="embeddings-cohere-batch-default-input-type",
    ),
]


@pytest.mark.parametrize(("bedrock", "task", "payload", "url", "headers", "body"), REQUEST_CASES)
def test_build_request(
    bedrock: BedrockProvider,
    task: Task,
    payload: dict[str, Any],
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
) -> None:
    query = parse_query(task, payload)
    before = orjson.dumps(query.payload)
    bedrock.check(query)
    built = bedrock.build_request(query)
    assert built.url == url
    assert dict(built.headers) == headers
    assert orjson.loads(built.body) == body
    assert orjson.dumps(query.payload) == before  # translation never mutates the query


REJECT_CASES = [
    pytest.param(
        provider("cohere.command-r-v1:0", "cohere"),
        Task.CHAT,
        {"messages": USER, "top_k": 5},
        "'top_k' is not supported by provider 'amazon-bedrock' for bedrock_provider 'cohere' (only 'anthropic')",
        id="top_k-outside-anthropic",
    ),
    pytest.param(
        provider("amazon.titan-text-express-v1", "amazon", "llm/v1/completions"),
        Task.COMPLETIONS,
        {"prompt": "x", "top_k": 5},
        "'top_k' is not supported by provider 'amazon-bedrock' for bedrock_provider 'amazon'",
        id="top_k-titan",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {"messages": USER, "n": 2},
        "'n' is not supported by provider 'amazon-bedrock' with a value above 1",
        id="n-above-1",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {"messages": USER, "frequency_penalty": 0.1},
        "'frequency_penalty' is not supported by provider 'amazon-bedrock'",
        id="openai-only-parameter",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {"messages": USER, "response_format": {"type": "json_object"}},
        "'response_format' is not supported by provider 'amazon-bedrock' with type 'json_object'",
        id="json-mode",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {
            "messages": USER,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "none",
        },
        "'tool_choice' is not supported by provider 'amazon-bedrock' with value 'none'",
        id="tool_choice-none",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                }
            ]
        },
        "base64 data URLs",
        id="image-link",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        "Content part type 'input_audio'",
        id="audio-part",
    ),
    pytest.param(
        provider(),
        Task.CHAT,
        {"messages": [{"role": "function", "name": "f", "content": "x"}]},
        "role 'function'",
        id="function-role",
    ),
    pytest.param(
        provider("amazon.titan-text-express-v1", "amazon", "llm/v1/completions"),
        Task.COMPLETIONS,
        {"prompt": ["a", "b"]},
        "one prompt per request; got 2",
        id="prompt-batch",
    ),
    pytest.param(
        provider("amazon.titan-embed-text-v2:0", "amazon", "llm/v1/embeddings"),
        Task.EMBEDDINGS,
        {"input": ["a", "b"]},
        "take one input per request; got 2",
        id="titan-embeddings-batch",
    ),
    pytest.param(
        provider("cohere.embed-english-v3", "cohere", "llm/v1/embeddings"),
        Task.EMBEDDINGS,
        {"input": "a", "dimensions": 8},
        "'dimensions' is not supported by provider 'amazon-bedrock'",
        id="cohere-dimensions",
    ),
    pytest.param(
        provider("cohere.embed-english-v3", "cohere", "llm/v1/embeddings"),
        Task.EMBEDDINGS,
        {"input": [[1, 2]]},
        "'input' must be a string or strings",
        id="token-array-input",
    ),
    pytest.param(
        provider("amazon.titan-embed-text-v2:0", "amazon", "llm/v1/embeddings"),
        Task.EMBEDDINGS,
        {"input": "a", "stream": True},
        "'stream' is not supported",
        id="embeddings-stream",
    ),
    pytest.param(
        provider(),
        Task.EMBEDDINGS,
        {"input": "a"},
        "does not support the task llm/v1/embeddings",
        id="task-not-served",
    ),
]


def translate(bedrock: BedrockProvider, query: QueryRequest) -> UpstreamRequest:
    bedrock.check(query)
    return bedrock.build_request(query)


@pytest.mark.parametrize(("bedrock", "task", "payload", "message"), REJECT_CASES)
def test_unsupported_is_a_400_naming_it(
    bedrock: BedrockProvider, task: Task, payload: dict[str, Any], message: str
) -> None:
    query = parse_query(task, payload)
    with pytest.raises(BadRequest) as refused:
        translate(bedrock, query)
    assert message in refused.value.message
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("config", "task", "problem"),
    [
        pytest.param(
            {"uc_service_credential_name": "cred"},
            "llm/v1/chat",
            "only inside Databricks",
            id="uc-service-credential",
        ),
        pytest.param(
            {},
            "llm/v1/embeddings",
            "bedrock_provider 'anthropic' has no embedding models",
            id="anthropic-embeddings",
        ),
    ],
)
def test_unservable_configs_make_the_endpoint_not_ready(
    config: dict[str, str], task: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        BedrockProvider(model(task=task, keys=not config, **config), {})


# ---------------------------------------------------------------- SigV4


@pytest.fixture
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: moment)


REQUEST = UpstreamRequest(
    url=f"{BASE}/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse",
    headers=JSON,
    body=b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}',
)


async def test_sigv4_with_access_keys(pinned_clock: None) -> None:
    """The signature was checked by hand against AWS's SigV4 steps: canonical path
    ``/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse`` (the ``:`` as sent,
    URI-encoded once), headers accept, content-type, host, x-amz-date, SHA-256 of the body."""
    signed = await provider().authorize(REQUEST)
    assert dict(signed.headers) == {
        **JSON,
        "X-Amz-Date": "20260102T030405Z",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260102/us-east-1/bedrock/aws4_request, "
        "SignedHeaders=accept;content-type;host;x-amz-date, "
        "Signature=f64c913e4d53847ff1230aa232fa251001db50501a1f247ceecb25b7608809c6",
    }
    assert (signed.url, signed.body) == (REQUEST.url, REQUEST.body)


class _Session:
    def __init__(self, credentials: object) -> None:
        self.credentials = credentials
        self.lookups = 0

    def get_credentials(self) -> object:
        self.lookups += 1
        return self.credentials


async def test_default_chain_signs_with_its_session_token(pinned_clock: None) -> None:
    session = _Session(Credentials("ASIACHAIN", "chain-secret", "chain-token"))
    chain = AwsCredentialChain(lambda: session)
    spec = model(keys=False, instance_profile_arn="arn:aws:iam::1:instance-profile/p")
    bedrock = BedrockProvider(spec, {}, chain=chain)
    first = await bedrock.authorize(REQUEST)
    second = await bedrock.authorize(REQUEST)
    assert first.headers["X-Amz-Security-Token"] == "chain-token"
    assert first.headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=ASIACHAIN/20260102/us-east-1/bedrock/aws4_request, "
        "SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token, "
    )
    assert first.headers == second.headers
    assert session.lookups == 1  # resolved once, then served from memory


async def test_default_chain_refreshes_expiring_credentials() -> None:
    generations = iter(["one", "two"])

    def refresh() -> dict[str, str]:
        token = next(generations)
        soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=60)
        return {
            "access_key": f"ASIA{token}",
            "secret_key": "s",
            "token": token,
            "expiry_time": soon.isoformat(),
        }

    expiring = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")
    chain = AwsCredentialChain(lambda: _Session(expiring))
    assert (await chain.frozen()).token == "two"  # inside the refresh window: refreshed


async def test_default_chain_without_credentials_is_a_clear_error() -> None:
    chain = AwsCredentialChain(lambda: _Session(None))
    with pytest.raises(UpstreamUnavailable, match="found no AWS credentials"):
        await chain.frozen()


# ---------------------------------------------------------------- responses


def parse(
    bedrock: BedrockProvider, task: Task, payload: dict[str, Any], body: dict[str, Any]
) -> tuple[dict[str, Any], Usage | None]:
    translated = bedrock.parse_response(parse_query(task, payload), orjson.dumps(body))
    result = translated.body
    result.pop("id", None), result.pop("created", None)
    return result, translated.usage


def converse(content: list[dict[str, Any]], stop: str, **usage: int) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 8, **usage},
        "metrics": {"latencyMs": 9},
    }


def test_converse_text_to_chat_completion() -> None:
    body, usage = parse(
        provider(),
        Task.CHAT,
        {"messages": USER},
        converse([{"text": "Hel"}, {"text": "lo"}], "end_turn"),
    )
    assert body == {
        "object": "chat.completion",
        "model": CLAUDE,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    assert usage == Usage(5, 3)


def test_converse_tool_use_to_tool_calls_and_cached_tokens_count_as_prompt() -> None:
    content = [
        {"reasoningContent": {"reasoningText": {"text": "hmm"}}},
        {"toolUse": {"toolUseId": "tooluse_1", "name": "weather", "input": {"city": "Paris"}}},
    ]
    body, usage = parse(
        provider(),
        Task.CHAT,
        {"messages": USER},
        converse(content, "tool_use", cacheReadInputTokens=100),
    )
    assert body["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "tooluse_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        "finish_reason": "tool_calls",
        "logprobs": None,
    }
    assert usage == Usage(105, 3)


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_converse_stop_reasons(stop: str, finish: str) -> None:
    bedrock = provider("cohere.command-r-v1:0", "cohere", "llm/v1/completions")
    body, _ = parse(bedrock, Task.COMPLETIONS, {"prompt": "x"}, converse([{"text": "ok"}], stop))
    assert body["object"] == "text_completion"
    assert body["choices"] == [
        {"index": 0, "text": "ok", "finish_reason": finish, "logprobs": None}
    ]


def test_titan_text_to_completion() -> None:
    bedrock = provider("amazon.titan-text-express-v1", "amazon", "llm/v1/completions")
    upstream = {
        "inputTextTokenCount": 3,
        "results": [{"tokenCount": 4, "outputText": " a time", "completionReason": "LENGTH"}],
    }
    body, usage = parse(bedrock, Task.COMPLETIONS, {"prompt": "Once upon"}, upstream)
    assert body == {
        "object": "text_completion",
        "model": "amazon.titan-text-express-v1",
        "choices": [{"index": 0, "text": " a time", "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    assert usage == Usage(3, 4)


def test_titan_embedding_float_and_base64() -> None:
    bedrock = provider("amazon.titan-embed-text-v2:0", "amazon", "llm/v1/embeddings")
    upstream = {
        "embedding": [0.5, -1.0],
        "inputTextTokenCount": 2,
        "embeddingsByType": {"float": [0.5, -1.0]},
    }
    floats, usage = parse(bedrock, Task.EMBEDDINGS, {"input": "hi"}, upstream)
    assert floats == {
        "object": "list",
        "model": "amazon.titan-embed-text-v2:0",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    assert usage == Usage(2, 0)
    encoded, _ = parse(
        bedrock, Task.EMBEDDINGS, {"input": "hi", "encoding_format": "base64"}, upstream
    )
    assert encoded["data"][0]["embedding"] == "AAAAPwAAgL8="  # float32 LE of 0.5, -1.0
    assert base64.b64decode("AAAAPwAAgL8=") == b"\x00\x00\x00?\x00\x00\x80\xbf"


def test_cohere_embeddings_take_their_usage_from_the_invoke_headers() -> None:
    bedrock = provider("cohere.embed-english-v3", "cohere", "llm/v1/embeddings")
    upstream = {
        "embeddings": [[0.1], [0.2]],
        "id": "e1",
        "response_type": "embeddings_floats",
        "texts": ["a", "b"],
    }
    body, usage = parse(bedrock, Task.EMBEDDINGS, {"input": ["a", "b"]}, upstream)
    assert [d["embedding"] for d in body["data"]] == [[0.1], [0.2]]
    assert body["usage"] is None and usage is None  # until the headers complete it:
    query = parse_query(Task.EMBEDDINGS, {"input": ["a", "b"]})
    answer = bedrock.parse_response(query, orjson.dumps(upstream))
    counted = bedrock.complete_usage(query, answer, {"X-Amzn-Bedrock-Input-Token-Count": "2"})
    assert counted.usage == Usage(2, 0)
    assert counted.body is not None
    assert counted.body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert orjson.loads(counted.raw or b"")["usage"]["prompt_tokens"] == 2
    for bad in ("", "-1", "2.5", "٣", "9" * 12):  # garbage counts as absent, never a 500
        junk = {"X-Amzn-Bedrock-Input-Token-Count": bad}
        assert bedrock.complete_usage(query, answer, junk).usage is None
    typed = {
        "embeddings": {"float": [[0.3]]},
        "id": "e2",
        "response_type": "embeddings_by_type",
        "texts": ["a"],
    }
    assert parse(bedrock, Task.EMBEDDINGS, {"input": "a"}, typed)[0]["data"][0]["embedding"] == [
        0.3
    ]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"message": "odd"}, id="no-output"),
        pytest.param({"output": {"message": {"content": "x"}}}, id="content-not-a-list"),
    ],
)
def test_malformed_response_is_a_502(body: dict[str, Any]) -> None:
    with pytest.raises(UpstreamUnavailable, match="unknown shape"):
        parse(provider(), Task.CHAT, {"messages": USER}, body)


# ---------------------------------------------------------------- errors


ERROR_CASES = [
    pytest.param(
        429,
        {
            "x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
        },
        429,
        "REQUEST_LIMIT_EXCEEDED",
        "1",
        id="throttling-default-retry",
    ),
    pytest.param(
        429,
        {"X-Amzn-ErrorType": "ThrottlingException", "Retry-After": "7"},
        429,
        "REQUEST_LIMIT_EXCEEDED",
        "7",
        id="throttling-upstream-retry-after",
    ),
    pytest.param(
        429,
        {"x-amzn-ErrorType": "ModelNotReadyException"},
        429,
        "REQUEST_LIMIT_EXCEEDED",
        "1",
        id="model-not-ready",
    ),
    pytest.param(
        400, {"x-amzn-ErrorType": "ValidationException"}, 400, "BAD_REQUEST", None, id="validation"
    ),
    pytest.param(
        403,
        {"x-amzn-ErrorType": "AccessDeniedException"},
        403,
        "PERMISSION_DENIED",
        None,
        id="access-denied",
    ),
    pytest.param(
        403,
        {
            "x-amzn-ErrorType": "UnrecognizedClientException:http://internal.amazon.com/coral/com.amazon.coral.service/"
        },
        403,
        "PERMISSION_DENIED",
        None,
        id="unknown-key",
    ),
    pytest.param(
        403,
        {"x-amzn-ErrorType": "InvalidSignatureException"},
        403,
        "PERMISSION_DENIED",
        None,
        id="bad-signature",
    ),
    pytest.param(
        408,
        {"x-amzn-ErrorType": "ModelTimeoutException"},
        504,
        "DEADLINE_EXCEEDED",
        None,
        id="model-timeout",
    ),
    pytest.param(
        424,
        {"x-amzn-ErrorType": "ModelErrorException"},
        502,
        "TEMPORARILY_UNAVAILABLE",
        None,
        id="model-error",
    ),
    pytest.param(
        500,
        {"x-amzn-ErrorType": "InternalServerException"},
        500,
        "INTERNAL_ERROR",
        None,
        id="internal",
    ),
    pytest.param(
        503,
        {"x-amzn-ErrorType": "ServiceUnavailableException"},
        503,
        "TEMPORARILY_UNAVAILABLE",
        "1",
        id="unavailable",
    ),
    pytest.param(401, {}, 401, "UNAUTHENTICATED", None, id="no-type-keeps-status"),
]


@pytest.mark.parametrize(("status", "headers", "expected", "code", "retry"), ERROR_CASES)
def test_error_mapping(
    status: int, headers: dict[str, str], expected: int, code: str, retry: str | None
) -> None:
    error = provider().error(status, b'{"message":"nope"}', headers)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.error_code, error.headers().get("Retry-After")) == (
        expected,
        code,
        retry,
    )
    assert error.upstream_body == {"message": "nope"}
    assert orjson.loads(error.message) == {
        "external_model_provider": "amazon-bedrock",
        "external_model_error": {"message": "nope"},
    }


def test_error_type_from_body_and_secrets_scrubbed() -> None:
    body = b'{"__type":"com.amazon.coral.service#UnrecognizedClientException","message":"bad key wJalrXUtnFEMI/K7MDENG+bPxRfiCY"}'
    error = provider().error(400, body, {})
    assert error.status == 403
    assert "wJalrXUtnFEMI" not in error.message and "[REDACTED]" in error.message


# ---------------------------------------------------------------- streams


def event(kind: str, body: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return encode_event_message(headers, orjson.dumps({**body, "p": "abcdefgh"}))


def chunk(body: dict[str, Any]) -> bytes:
    return event("chunk", {"bytes": base64.b64encode(orjson.dumps(body)).decode()})


def exception(kind: str, message: str) -> bytes:
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_event_message(headers, orjson.dumps({"message": message}))


USAGE = {"inputTokens": 4, "outputTokens": 2, "totalTokens": 6}
CONVERSE_TEXT = b"".join(
    [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "lo"}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "end_turn"}),
        event("metadata", {"usage": USAGE, "metrics": {"latencyMs": 3}}),
    ]
)
CONVERSE_TOOL = b"".join(
    [
        event("messageStart", {"role": "assistant"}),
        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Checking."}}),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event(
            "contentBlockStart",
            {
                "contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tooluse_9", "name": "weather"}},
            },
        ),
        event(
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city":'}}},
        ),
        event(
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Paris"}'}}},
        ),
        event("contentBlockStop", {"contentBlockIndex": 1}),
        event("messageStop", {"stopReason": "tool_use"}),
        event("metadata", {"usage": USAGE, "metrics": {"latencyMs": 3}}),
    ]
)
TITAN = b"".join(
    [
        chunk(
            {
                "outputText": "Hel",
                "index": 0,
                "totalOutputTextTokenCount": 1,
                "completionReason": None,
                "inputTextTokenCount": 4,
            }
        ),
        chunk(
            {
                "outputText": "lo",
                "index": 0,
                "totalOutputTextTokenCount": 2,
                "completionReason": "FINISH",
                "inputTextTokenCount": None,
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": 4,
                    "outputTokenCount": 2,
                    "invocationLatency": 5,
                    "firstByteLatency": 1,
                },
            }
        ),
    ]
)
_ID = re.compile(rb'"id":"(chatcmpl|cmpl)-[0-9a-f]+","object":"([a-z._]+)","created":\d+')


def run_stream(
    bedrock: BedrockProvider, task: Task, payload: dict[str, Any], upstream: bytes
) -> tuple[str, Usage | None]:
    translator = bedrock.stream(parse_query(task, {**payload, "stream": True}))
    out = b"".join(
        frame for i in range(len(upstream)) for frame in translator.feed(upstream[i : i + 1])
    )
    out += b"".join(translator.finish())
    return _ID.sub(rb'"id":"ID","object":"\2","created":1', out).decode(), translator.usage


def sse(*chunks: str) -> str:
    return "".join(f"data: {c}\n\n" for c in chunks)


def chat(delta: str, finish: str = "null", extra: str = "") -> str:
    return f'{{"id":"ID","object":"chat.completion.chunk","created":1,"model":"{CLAUDE}","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish},"logprobs":null}}]{extra}}}'


def test_converse_stream_text_byte_by_byte() -> None:
    text, usage = run_stream(provider(), Task.CHAT, {"messages": USER}, CONVERSE_TEXT)
    assert text == sse(
        chat('{"role":"assistant","content":"Hel"}'),
        chat('{"content":"lo"}'),
        chat("{}", '"stop"', ',"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}'),
    )
    assert usage == Usage(4, 2)


def test_converse_stream_tool_call_and_usage_chunk_when_asked() -> None:
    payload = {"messages": USER, "stream_options": {"include_usage": True}}
    text, _ = run_stream(provider(), Task.CHAT, payload, CONVERSE_TOOL)
    assert text == sse(
        chat('{"role":"assistant","content":"Checking."}'),
        chat(
            '{"tool_calls":[{"index":0,"function":{"arguments":"","name":"weather"},"id":"tooluse_9","type":"function"}]}'
        ),
        chat('{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":"}}]}'),
        chat('{"tool_calls":[{"index":0,"function":{"arguments":"\\"Paris\\"}"}}]}'),
        chat("{}", '"tool_calls"'),
        f'{{"id":"ID","object":"chat.completion.chunk","created":1,"model":"{CLAUDE}","choices":[],"usage":{{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}}}',
    )


def test_titan_invoke_stream_byte_by_byte() -> None:
    bedrock = provider("amazon.titan-text-express-v1", "amazon", "llm/v1/completions")
    text, usage = run_stream(bedrock, Task.COMPLETIONS, {"prompt": "x"}, TITAN)
    completion = '{{"id":"ID","object":"text_completion","created":1,"model":"amazon.titan-text-express-v1","choices":[{{"index":0,"text":"{}","finish_reason":{},"logprobs":null}}]{}}}'
    assert text == sse(
        completion.format("Hel", "null", ""),
        completion.format("lo", "null", ""),
        completion.format(
            "", '"stop"', ',"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}'
        ),
    )
    assert usage == Usage(4, 2)


def test_exception_in_the_stream_is_an_upstream_error() -> None:
    upstream = CONVERSE_TEXT[: len(event("messageStart", {"role": "assistant"}))] + exception(
        "throttlingException", "Too many requests, please wait before trying again."
    )
    translator = provider().stream(parse_query(Task.CHAT, {"messages": USER, "stream": True}))
    with pytest.raises(UpstreamError) as raised:
        translator.feed(upstream)
    assert (raised.value.status, raised.value.error_code) == (429, "REQUEST_LIMIT_EXCEEDED")
    assert raised.value.upstream_body == {
        "message": "Too many requests, please wait before trying again."
    }


def test_stream_cut_or_corrupted_is_a_502() -> None:
    translator = provider().stream(parse_query(Task.CHAT, {"messages": USER, "stream": True}))
    translator.feed(CONVERSE_TEXT[:100])
    with pytest.raises(UpstreamUnavailable, match="ended the stream before it was complete"):
        translator.finish()
    corrupted = bytearray(CONVERSE_TEXT)
    corrupted[20] ^= 0xFF  # inside the first message's headers: its CRC no longer matches
    fresh = provider().stream(parse_query(Task.CHAT, {"messages": USER, "stream": True}))
    with pytest.raises(UpstreamUnavailable, match="malformed event stream"):
        fresh.feed(bytes(corrupted))


def test_stream_stopped_without_metadata_still_finishes() -> None:
    translator = provider().stream(parse_query(Task.CHAT, {"messages": USER, "stream": True}))
    frames = translator.feed(
        CONVERSE_TEXT.split(event("metadata", {"usage": USAGE, "metrics": {"latencyMs": 3}}))[0]
    )
    frames += translator.finish()
    assert frames[-1].endswith(b'"finish_reason":"stop","logprobs":null}]}\n\n')
    assert translator.usage is None


def test_content_before_an_exception_in_the_same_chunk_is_delivered_first() -> None:
    upstream = b"".join(
        [
            event("messageStart", {"role": "assistant"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
            exception("serviceUnavailableException", "Bedrock is unable to process your request."),
        ]
    )
    translator = provider().stream(parse_query(Task.CHAT, {"messages": USER, "stream": True}))
    frames = translator.feed(upstream)
    assert len(frames) == 1 and b'"content":"Hel"' in frames[0]
    with pytest.raises(UpstreamError) as raised:
        translator.finish()
    assert (raised.value.status, raised.value.error_code) == (503, "TEMPORARILY_UNAVAILABLE")


AI21_JAMBA = "ai21.jamba-1-5-mini-v1:0"


def test_ai21labs_family_speaks_converse_and_has_no_embeddings() -> None:
    """bedrock_provider ai21labs (Jamba): chat and completions through Converse; an
    embeddings entity is refused when it loads, naming the family."""
    chat = provider(AI21_JAMBA, "ai21labs")
    request = chat.build_request(parse_query(Task.CHAT, {"messages": USER, "max_tokens": 7}))
    assert request.url == f"{BASE}/{AI21_JAMBA}/converse"
    assert orjson.loads(request.body) == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "inferenceConfig": {"maxTokens": 7},
    }
    completion = provider(AI21_JAMBA, "ai21labs", "llm/v1/completions")
    sent = completion.build_request(parse_query(Task.COMPLETIONS, {"prompt": "Say hi"}))
    assert sent.url == f"{BASE}/{AI21_JAMBA}/converse"
    assert orjson.loads(sent.body)["messages"] == [
        {"role": "user", "content": [{"text": "Say hi"}]}
    ]
    with pytest.raises(ValueError, match="'ai21labs' has no embedding models"):
        provider(AI21_JAMBA, "ai21labs", "llm/v1/embeddings")  # the entity does not load
