"""The Amazon Bedrock simulator over real HTTP: SigV4 verification, Converse and InvokeModel
validation and replies, the event-stream framing (parsed with botocore), faults, and real
``boto3`` clients reading it, with the gateway decoding the very same bytes."""

from __future__ import annotations

import asyncio
import base64
import datetime
from collections.abc import Iterator
from typing import Any
from unittest import mock

import aiohttp
import boto3
import botocore.exceptions
import orjson
import pytest
from aiohttp.test_utils import TestClient
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from servegate.canonical.requests import parse_query
from servegate.providers.base import UpstreamRequest
from servegate.providers.bedrock import BedrockProvider
from servegate.simulators.bedrock import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_SECRET_ACCESS_KEY,
    create_bedrock_app,
)
from servegate.spec import ExternalModel, Task
from tests.conftest import BackgroundLoop, start_site

pytestmark = pytest.mark.timeout(20)

CLAUDE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
CONVERSE = f"/model/{CLAUDE}/converse"
HELLO = {"messages": [{"role": "user", "content": [{"text": "hello bedrock"}]}]}
TOKEN_KEY, SESSION_TOKEN = "ASIATEMPORARY0000001", "session-token-1"
Client = TestClient[Any, Any]


class Clock:
    now = 1_767_323_045.0  # 2026-01-02T03:04:05Z

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sim(aiohttp_client: Any, clock: Clock) -> Client:
    app = create_bedrock_app(
        credentials={DEFAULT_ACCESS_KEY_ID: DEFAULT_SECRET_ACCESS_KEY, TOKEN_KEY: "temp-secret"},
        session_tokens={TOKEN_KEY: SESSION_TOKEN},
        clock=clock,
    )
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def sign(
    url: str,
    body: bytes,
    *,
    key: str = DEFAULT_ACCESS_KEY_ID,
    secret: str = DEFAULT_SECRET_ACCESS_KEY,
    token: str | None = None,
    region: str = "us-east-1",
    service: str = "bedrock",
    at: float | None = None,
) -> dict[str, str]:
    """Headers from botocore's own signer (the reference client), at ``at`` (default: the
    simulator's pinned clock)."""
    request = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
    auth = SigV4Auth(Credentials(key, secret, token), service, region)
    moment = datetime.datetime.fromtimestamp(Clock.now if at is None else at, datetime.UTC)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        auth.add_auth(request)
    return dict(request.headers.items())


async def post(
    sim: Client, path: str, body: Any, *, headers: dict[str, str] | None = None, **signing: Any
) -> aiohttp.ClientResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    signed = sign(str(sim.make_url(path)), raw, **signing)
    return await sim.post(path, data=raw, headers={**signed, **(headers or {})})


def events(raw: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(headers, JSON payload) of every event-stream message, parsed by botocore."""
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [(dict(m.headers), orjson.loads(m.payload)) for m in buffer]


# ---------------------------------------------------------------- SigV4


async def test_signed_request_is_answered(sim: Client, clock: Clock) -> None:
    resp = await post(sim, CONVERSE, HELLO)
    assert resp.status == 200
    assert resp.headers["x-amzn-RequestId"]
    temporary = await post(
        sim, CONVERSE, HELLO, key=TOKEN_KEY, secret="temp-secret", token=SESSION_TOKEN
    )
    assert temporary.status == 200


AUTH_CASES = [
    pytest.param(
        {"key": "AKIAUNKNOWN000000000"},
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
        id="unknown-key",
    ),
    pytest.param(
        {"key": TOKEN_KEY, "secret": "temp-secret"},
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
        id="missing-session-token",
    ),
    pytest.param(
        {"token": "stray"},
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
        id="unexpected-session-token",
    ),
    pytest.param(
        {"secret": "wrong-secret"},
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided.",
        id="wrong-secret",
    ),
    pytest.param(
        {"region": "eu-west-1"},
        "InvalidSignatureException",
        "Credential should be scoped to a valid region.",
        id="wrong-region",
    ),
    pytest.param(
        {"service": "bedrock-runtime"},
        "InvalidSignatureException",
        "Credential should be scoped to correct service: 'bedrock'.",
        id="wrong-service",
    ),
    pytest.param(
        {"at": Clock.now - 301},
        "InvalidSignatureException",
        "Signature expired: 20260102T025904Z is now earlier than 20260102T025905Z (20260102T030405Z - 5 min.)",
        id="expired",
    ),
    pytest.param(
        {"at": Clock.now + 301},
        "InvalidSignatureException",
        "Signature not yet current: 20260102T030906Z is still later than",
        id="future",
    ),
]


@pytest.mark.parametrize(("signing", "kind", "message"), AUTH_CASES)
async def test_bad_signatures_get_aws_errors(
    sim: Client, signing: dict[str, Any], kind: str, message: str
) -> None:
    resp = await post(sim, CONVERSE, HELLO, **signing)
    assert resp.status == 403
    assert (
        resp.headers["x-amzn-ErrorType"]
        == f"{kind}:http://internal.amazon.com/coral/com.amazon.coral.service/"
    )
    assert message in (await resp.json())["message"]


async def test_tampered_body_or_header_and_missing_auth(sim: Client) -> None:
    raw = orjson.dumps(HELLO)
    signed = sign(str(sim.make_url(CONVERSE)), raw)
    other_body = await sim.post(CONVERSE, data=raw.replace(b"hello", b"HELLO"), headers=signed)
    assert other_body.status == 403
    body = await other_body.json()
    assert (
        "'POST\n/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse\n\ncontent-type:application/json\nhost:"
        in body["message"]
    )
    other_header = await sim.post(
        CONVERSE, data=raw, headers={**signed, "Content-Type": "text/plain"}
    )
    assert other_header.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException:")
    anonymous = await sim.post(CONVERSE, data=raw, headers={"Content-Type": "application/json"})
    assert anonymous.status == 403
    assert anonymous.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException:")
    assert await anonymous.json() == {"message": "Missing Authentication Token"}


# ---------------------------------------------------------------- Converse


async def test_converse_reply_is_deterministic(sim: Client) -> None:
    body = {
        **HELLO,
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 100, "temperature": 0.3},
    }
    resp = await post(sim, CONVERSE, body)
    assert await resp.json() == {
        "output": {
            "message": {
                "role": "assistant",
                "content": [{"text": f"Simulated reply from {CLAUDE} to: hello bedrock"}],
            }
        },
        "stopReason": "end_turn",
        "usage": {"inputTokens": 4, "outputTokens": 7, "totalTokens": 11},
        "metrics": {"latencyMs": 1},
    }
    short = await post(
        sim, CONVERSE, {**HELLO, "inferenceConfig": {"maxTokens": 2, "stopSequences": ["zzz"]}}
    )
    assert (await short.json())["stopReason"] == "max_tokens"
    stopped = await post(sim, CONVERSE, {**HELLO, "inferenceConfig": {"stopSequences": [" to:"]}})
    assert (await stopped.json())["stopReason"] == "stop_sequence"


CONVERSE_REJECTIONS = [
    pytest.param(
        {"messages": [{"role": "assistant", "content": [{"text": "hi"}]}]},
        "A conversation must start with a user message.",
        id="starts-with-assistant",
    ),
    pytest.param(
        {"messages": [HELLO["messages"][0], HELLO["messages"][0]]},
        "A conversation must alternate between user and assistant roles.",
        id="not-alternating",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"text": "  "}]}]},
        "The text field in the ContentBlock object at messages.0.content.0 is blank.",
        id="blank-text",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"text": "a", "image": {}}]}]},
        "must set exactly one content type",
        id="two-fields-in-a-block",
    ),
    pytest.param(
        {**HELLO, "inferenceConfig": {"temperature": 1.5}},
        "Value '1.5' at 'inferenceConfig.temperature' failed to satisfy constraint: Member must have value less than or equal to 1",
        id="temperature-above-1",
    ),
    pytest.param(
        {**HELLO, "inferenceConfig": {"max_tokens": 5}},
        "extraneous key [max_tokens] is not permitted",
        id="openai-name-in-inference-config",
    ),
    pytest.param(
        {**HELLO, "temperature": 0.5},
        "extraneous key [temperature] is not permitted",
        id="unknown-top-level-field",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"toolResult": {"toolUseId": "t", "content": [{"text": "x"}]}}],
                }
            ]
        },
        "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        id="tool-blocks-without-tool-config",
    ),
]


@pytest.mark.parametrize(("body", "message"), CONVERSE_REJECTIONS)
async def test_converse_validation(sim: Client, body: dict[str, Any], message: str) -> None:
    resp = await post(sim, CONVERSE, body)
    assert resp.status == 400
    assert (
        resp.headers["x-amzn-ErrorType"]
        == "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )
    assert message in (await resp.json())["message"]


async def test_top_k_is_for_anthropic_models_only(sim: Client) -> None:
    extra = {**HELLO, "additionalModelRequestFields": {"top_k": 5}}
    assert (await post(sim, CONVERSE, extra)).status == 200
    refused = await post(sim, "/model/cohere.command-r-v1:0/converse", extra)
    assert "extraneous key [top_k]" in (await refused.json())["message"]


async def test_converse_stream_framing(sim: Client) -> None:
    resp = await post(sim, f"/model/{CLAUDE}/converse-stream", HELLO)
    assert resp.headers["Content-Type"] == "application/vnd.amazon.eventstream"
    parsed = events(await resp.read())
    kinds = [h[":event-type"] for h, _ in parsed]
    assert kinds == [
        "messageStart",
        *["contentBlockDelta"] * 7,
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert all(
        h[":message-type"] == "event" and h[":content-type"] == "application/json"
        for h, _ in parsed
    )
    assert all(
        p["p"]
        and set(p["p"]) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        for _, p in parsed
    )
    text = "".join(p["delta"]["text"] for h, p in parsed if h[":event-type"] == "contentBlockDelta")
    assert text == f"Simulated reply from {CLAUDE} to: hello bedrock"
    assert parsed[-1][1]["usage"] == {"inputTokens": 2, "outputTokens": 7, "totalTokens": 9}


async def test_tool_use_forced_and_streamed(sim: Client) -> None:
    tools = {
        "tools": [
            {
                "toolSpec": {
                    "name": "weather",
                    "inputSchema": {
                        "json": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}},
                            "required": ["city"],
                        }
                    },
                }
            }
        ],
        "toolChoice": {"any": {}},
    }
    whole = await (await post(sim, CONVERSE, {**HELLO, "toolConfig": tools})).json()
    use = whole["output"]["message"]["content"][0]["toolUse"]
    assert (use["name"], use["input"], whole["stopReason"]) == (
        "weather",
        {"city": "hello bedrock"},
        "tool_use",
    )
    streamed = events(
        await (
            await post(sim, f"/model/{CLAUDE}/converse-stream", {**HELLO, "toolConfig": tools})
        ).read()
    )
    start = streamed[1][1]["start"]["toolUse"]
    pieces = "".join(
        p["delta"]["toolUse"]["input"]
        for h, p in streamed
        if h[":event-type"] == "contentBlockDelta"
    )
    assert (start["toolUseId"], start["name"], orjson.loads(pieces)) == (
        use["toolUseId"],
        "weather",
        use["input"],
    )


async def test_exception_inside_the_stream(sim: Client) -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"text": "go [stream-exception:throttlingException]"}]}
        ]
    }
    parsed = events(await (await post(sim, f"/model/{CLAUDE}/converse-stream", body)).read())
    headers, payload = parsed[-1]
    assert headers == {
        ":exception-type": "throttlingException",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert payload == {"message": "Too many requests, please wait before trying again."}
    assert [h.get(":event-type") for h, _ in parsed[:-1]] == ["messageStart", "contentBlockDelta"]


# ---------------------------------------------------------------- InvokeModel


async def test_titan_text_invoke_and_stream(sim: Client) -> None:
    path = "/model/amazon.titan-text-express-v1/invoke"
    whole = await post(
        sim, path, {"inputText": "Once upon a time", "textGenerationConfig": {"maxTokenCount": 3}}
    )
    assert await whole.json() == {
        "inputTextTokenCount": 4,
        "results": [
            {
                "tokenCount": 3,
                "outputText": "Simulated completion from",
                "completionReason": "LENGTH",
            }
        ],
    }
    assert (
        whole.headers["X-Amzn-Bedrock-Input-Token-Count"],
        whole.headers["X-Amzn-Bedrock-Output-Token-Count"],
    ) == ("4", "3")
    streamed = await post(sim, path + "-with-response-stream", {"inputText": "Once upon a time"})
    assert streamed.headers["X-Amzn-Bedrock-Content-Type"] == "application/json"
    chunks = [
        orjson.loads(base64.b64decode(p["bytes"]))
        for h, p in events(await streamed.read())
        if h[":event-type"] == "chunk"
    ]
    assert (
        "".join(c["outputText"] for c in chunks)
        == "Simulated completion from amazon.titan-text-express-v1 for: Once upon a time"
    )
    assert chunks[-1]["completionReason"] == "FINISH"
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 9
    refused = await post(sim, path, {"inputText": "x", "textGenerationConfig": {"topK": 3}})
    assert (
        (await refused.json())["message"]
        == "Malformed input request: #/textGenerationConfig: extraneous key [topK] is not permitted, please reformat your input and try again."
    )


async def test_embeddings(sim: Client) -> None:
    titan = await (
        await post(
            sim,
            "/model/amazon.titan-embed-text-v2:0/invoke",
            {"inputText": "hello", "dimensions": 256},
        )
    ).json()
    assert len(titan["embedding"]) == 256 and titan["inputTextTokenCount"] == 1
    assert titan["embeddingsByType"]["float"] == titan["embedding"]
    v1 = await post(
        sim, "/model/amazon.titan-embed-text-v1/invoke", {"inputText": "hello", "dimensions": 256}
    )
    assert "extraneous key [dimensions]" in (await v1.json())["message"]
    cohere = await post(
        sim,
        "/model/cohere.embed-english-v3/invoke",
        {"texts": ["a b", "c"], "input_type": "search_query"},
    )
    body = await cohere.json()
    assert [len(v) for v in body["embeddings"]] == [1024, 1024] and body[
        "response_type"
    ] == "embeddings_floats"
    assert cohere.headers["X-Amzn-Bedrock-Input-Token-Count"] == "3"
    missing = await post(sim, "/model/cohere.embed-english-v3/invoke", {"texts": ["a"]})
    assert "required key [input_type] not found" in (await missing.json())["message"]
    streamed = await post(
        sim,
        "/model/cohere.embed-english-v3/invoke-with-response-stream",
        {"texts": ["a"], "input_type": "search_query"},
    )
    assert (await streamed.json())["message"] == "The model is unsupported for streaming."


async def test_models_allow_list(aiohttp_client: Any) -> None:
    sim = await aiohttp_client(create_bedrock_app(models=[CLAUDE], clock=Clock()))
    assert (await post(sim, CONVERSE, HELLO)).status == 200
    other = await post(sim, "/model/anthropic.claude-v2/converse", HELLO)
    assert (await other.json())["message"] == "The provided model identifier is invalid."


# ---------------------------------------------------------------- faults


async def fault(sim: Client, **spec: Any) -> None:
    assert (await sim.post("/_sim/faults", json=spec)).status == 200


async def test_status_fault_is_a_typed_aws_error(sim: Client) -> None:
    await fault(sim, model=CLAUDE, status=429, headers={"Retry-After": "3"}, times=1)
    limited = await post(sim, f"/model/{CLAUDE}/converse-stream", HELLO)
    assert (limited.status, limited.headers["Retry-After"]) == (429, "3")
    assert (
        limited.headers["x-amzn-ErrorType"]
        == "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )
    assert await limited.json() == {
        "message": "Too many requests, please wait before trying again."
    }
    assert (await post(sim, f"/model/{CLAUDE}/converse-stream", HELLO)).status == 200
    recorded = (await (await sim.get("/_sim/requests")).json())["requests"]
    assert recorded[0]["path"] == f"/model/{CLAUDE}/converse-stream"
    assert recorded[0]["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")


async def test_stream_cut_and_corruption(sim: Client) -> None:
    await fault(sim, stream_cut_after=2, times=1)
    with pytest.raises(aiohttp.ClientPayloadError):
        await (await post(sim, f"/model/{CLAUDE}/converse-stream", HELLO)).read()
    await fault(sim, malformed=True, times=1)
    raw = await (await post(sim, f"/model/{CLAUDE}/converse-stream", HELLO)).read()
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    next(buffer)
    with pytest.raises(ChecksumMismatch):
        next(buffer)


async def test_gate_parks_the_stream_until_opened(sim: Client) -> None:
    await fault(sim, gate="g", gate_after=1, times=1)
    resp = await post(sim, f"/model/{CLAUDE}/converse-stream", HELLO)
    buffer = EventStreamBuffer()
    async with asyncio.timeout(5):
        while not list(buffer):  # parked after the first message
            buffer.add_data(await resp.content.readany())
    assert resp.content.at_eof() is False
    assert (await sim.post("/_sim/gates/g/open")).status == 200
    async with asyncio.timeout(5):
        rest = await resp.read()
    assert len(events(rest)) == 10


# ---------------------------------------------------------------- real boto3, and the gateway on the same bytes


@pytest.fixture
def sim_url(background_loop: BackgroundLoop) -> Iterator[str]:
    runner, url = background_loop.run(start_site(create_bedrock_app()))
    yield url
    background_loop.run(runner.cleanup())


def boto3_client(url: str, secret: str = DEFAULT_SECRET_ACCESS_KEY) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=DEFAULT_ACCESS_KEY_ID,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def gateway(url: str, name: str, family: str, task: Task) -> BedrockProvider:
    spec = ExternalModel.model_validate(
        {
            "name": name,
            "provider": "amazon-bedrock",
            "task": task.value,
            "amazon_bedrock_config": {
                "aws_region": "us-east-1",
                "bedrock_provider": family,
                "aws_access_key_id": "{{secrets/aws/id}}",
                "aws_secret_access_key": "{{secrets/aws/secret}}",
                "bedrock_endpoint_url": url,
            },
        }
    )
    keys = {
        "aws_access_key_id": DEFAULT_ACCESS_KEY_ID,
        "aws_secret_access_key": DEFAULT_SECRET_ACCESS_KEY,
    }
    return BedrockProvider(spec, keys)


async def _send(request: UpstreamRequest) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.post(request.url, data=request.body, headers=dict(request.headers)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.read()


def through_gateway(
    loop: BackgroundLoop, bedrock: BedrockProvider, task: Task, payload: dict[str, Any]
) -> tuple[str, Any]:
    """Build, sign and send as the gateway does, then translate the raw body one byte at a time."""
    query = parse_query(task, {**payload, "stream": True})
    raw = loop.run(_send(loop.run(bedrock.authorize(bedrock.build_request(query)))))
    translator = bedrock.stream(query)
    frames = [
        f for i in range(len(raw)) for f in translator.feed(raw[i : i + 1])
    ] + translator.finish()
    chunks = [orjson.loads(f.removeprefix(b"data: ")) for f in frames]
    field = "delta" if task == Task.CHAT else None
    text = "".join(
        (c["choices"][0][field].get("content") or "") if field else c["choices"][0]["text"]
        for c in chunks
        if c["choices"]
    )
    return text, translator.usage


def test_boto3_converse_stream_and_the_gateway_read_the_same_answer(
    background_loop: BackgroundLoop, sim_url: str
) -> None:
    client = boto3_client(sim_url)
    streamed = list(client.converse_stream(modelId=CLAUDE, messages=HELLO["messages"])["stream"])
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in streamed if "contentBlockDelta" in e
    )
    usage = next(e["metadata"]["usage"] for e in streamed if "metadata" in e)
    assert text == f"Simulated reply from {CLAUDE} to: hello bedrock"
    assert (
        next(e["messageStop"]["stopReason"] for e in streamed if "messageStop" in e) == "end_turn"
    )
    bedrock = gateway(sim_url, CLAUDE, "anthropic", Task.CHAT)
    decoded, tokens = through_gateway(
        background_loop,
        bedrock,
        Task.CHAT,
        {"messages": [{"role": "user", "content": "hello bedrock"}]},
    )
    assert decoded == text
    assert (tokens.prompt_tokens, tokens.completion_tokens) == (
        usage["inputTokens"],
        usage["outputTokens"],
    )


def test_boto3_invoke_model_with_response_stream_and_the_gateway_agree(
    background_loop: BackgroundLoop, sim_url: str
) -> None:
    client = boto3_client(sim_url)
    body = client.invoke_model_with_response_stream(
        modelId="amazon.titan-text-express-v1", body=orjson.dumps({"inputText": "Tell a story"})
    )["body"]
    chunks = [orjson.loads(e["chunk"]["bytes"]) for e in body]
    text = "".join(c["outputText"] for c in chunks)
    bedrock = gateway(sim_url, "amazon.titan-text-express-v1", "amazon", Task.COMPLETIONS)
    decoded, tokens = through_gateway(
        background_loop, bedrock, Task.COMPLETIONS, {"prompt": "Tell a story"}
    )
    assert (
        decoded
        == text
        == "Simulated completion from amazon.titan-text-express-v1 for: Tell a story"
    )
    metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]
    assert (tokens.prompt_tokens, tokens.completion_tokens) == (
        metrics["inputTokenCount"],
        metrics["outputTokenCount"],
    )


def test_boto3_reads_the_simulators_errors_as_aws_errors(sim_url: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as bad_key:
        boto3_client(sim_url, secret="not-the-secret").converse(
            modelId=CLAUDE, messages=HELLO["messages"]
        )
    assert bad_key.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert bad_key.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(botocore.exceptions.ClientError) as invalid:
        boto3_client(sim_url).converse(
            modelId=CLAUDE, messages=HELLO["messages"], system=[{"text": " "}]
        )
    assert invalid.value.response["Error"]["Code"] == "ValidationException"
    messages = [
        {"role": "user", "content": [{"text": "hi [stream-exception:throttlingException]"}]}
    ]
    with pytest.raises(botocore.exceptions.EventStreamError, match="throttlingException"):
        list(boto3_client(sim_url).converse_stream(modelId=CLAUDE, messages=messages)["stream"])
