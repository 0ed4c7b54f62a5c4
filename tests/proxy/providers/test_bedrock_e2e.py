"""Amazon Bedrock end to end: a real ``servegate serve`` process in front of the Bedrock
simulator (which verifies every SigV4 signature), driven by the OpenAI SDK and curl. Every
task streamed and not, refusals, wrapped upstream errors, an exception inside a stream,
secret rotation, the AWS default credential chain, and an unservable auth style."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from servegate.simulators.bedrock import create_bedrock_app
from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    SimulatedGateway,
    curl_invocation,
    endpoint_doc,
    generation,
    http_get,
    wait_for_generation,
    write_secret,
    write_yaml,
)
from tests.conftest import start_site as start_sim

pytestmark = pytest.mark.timeout(60)

CLAUDE = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
TITAN_TEXT = "amazon.titan-text-express-v1"
KEY, SECRET = "AKIAE2EBEDROCK000001", "e2e/secret/access/key/0000000000000000001"
CHAIN_KEY, CHAIN_SECRET = "AKIAE2ECHAIN00000001", "e2e/secret/of/the/default/chain/00000001"
ROTATED_KEY, ROTATED_SECRET = "AKIAE2EROTATED000001", "e2e/secret/after/rotation/000000000001"


def entity(name: str, model: str, family: str, task: str, base: str, **auth: Any) -> dict[str, Any]:
    keys = {
        "aws_access_key_id": "{{secrets/aws/access_key_id}}",
        "aws_secret_access_key": "{{secrets/aws/secret_access_key}}",
    }
    config = {"aws_region": "us-east-1", "bedrock_provider": family, "bedrock_endpoint_url": base}
    return {
        "name": name,
        "external_model": {
            "name": model,
            "provider": "amazon-bedrock",
            "task": task,
            "amazon_bedrock_config": {**config, **(auth or keys)},
        },
    }


Env = SimulatedGateway


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop) -> Iterator[Env]:
    credentials = {KEY: SECRET, CHAIN_KEY: CHAIN_SECRET, ROTATED_KEY: ROTATED_SECRET}
    runner, sim_url = background_loop.run(start_sim(create_bedrock_app(credentials=credentials)))
    root = tmp_path_factory.mktemp("bedrock")
    secrets = root / "secrets"
    write_secret(secrets, "aws", "access_key_id", KEY)
    write_secret(secrets, "aws", "secret_access_key", SECRET)
    write_secret(secrets, "aws-rotating", "access_key_id", ROTATED_KEY)
    write_secret(secrets, "aws-rotating", "secret_access_key", "not-the-secret-yet")
    rotating = {
        "aws_access_key_id": "{{secrets/aws-rotating/access_key_id}}",
        "aws_secret_access_key": "{{secrets/aws-rotating/secret_access_key}}",
    }
    write_yaml(
        root / "manifests" / "bedrock.yaml",
        endpoint_doc("claude", [entity("haiku", CLAUDE, "anthropic", "llm/v1/chat", sim_url)]),
        endpoint_doc(
            "titan", [entity("titan", TITAN_TEXT, "amazon", "llm/v1/completions", sim_url)]
        ),
        endpoint_doc(
            "command",
            [entity("command", "cohere.command-r-v1:0", "cohere", "llm/v1/completions", sim_url)],
        ),
        endpoint_doc(
            "titan-embed",
            [entity("te", "amazon.titan-embed-text-v2:0", "amazon", "llm/v1/embeddings", sim_url)],
        ),
        endpoint_doc(
            "cohere-embed",
            [entity("ce", "cohere.embed-english-v3", "cohere", "llm/v1/embeddings", sim_url)],
        ),
        endpoint_doc(
            "rotating", [entity("rot", CLAUDE, "anthropic", "llm/v1/chat", sim_url, **rotating)]
        ),
        endpoint_doc(
            "chain",
            [
                entity(
                    "chain",
                    CLAUDE,
                    "anthropic",
                    "llm/v1/chat",
                    sim_url,
                    instance_profile_arn="arn:aws:iam::123456789012:instance-profile/gateway",
                )
            ],
        ),
        endpoint_doc(
            "uc",
            [
                entity(
                    "uc",
                    CLAUDE,
                    "anthropic",
                    "llm/v1/chat",
                    sim_url,
                    uc_service_credential_name="bedrock-cred",
                )
            ],
        ),
    )
    chain_env = {
        "AWS_ACCESS_KEY_ID": CHAIN_KEY,
        "AWS_SECRET_ACCESS_KEY": CHAIN_SECRET,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(root / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
    }
    gateway = GatewayProcess(
        [
            "serve",
            str(root / "manifests"),
            "--secrets-dir",
            str(secrets),
            "--first-byte-timeout",
            "2",
        ],
        root / "gateway.log",
        env=chain_env,
    )
    yield Env(gateway=gateway, sim_url=sim_url, loop=background_loop, secrets=secrets)
    gateway.stop()
    background_loop.run(runner.cleanup())


@pytest.fixture(autouse=True)
def _no_faults(env: Env) -> Iterator[None]:
    yield
    env.sim("DELETE", "/_sim/faults")


@pytest.fixture
def oai(env: Env) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=env.gateway.url + "/serving-endpoints", api_key="x", max_retries=0
    )


USER: Any = [{"role": "user", "content": "hello from the sdk"}]


def test_chat_whole_and_streamed(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model="claude", messages=USER, max_tokens=50)
    assert (
        whole.choices[0].message.content == f"Simulated reply from {CLAUDE} to: hello from the sdk"
    )
    assert (whole.model, whole.choices[0].finish_reason) == (CLAUDE, "stop")
    assert whole.usage is not None and (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    ) == (4, 9)
    chunks = list(
        oai.chat.completions.create(
            model="claude", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 13
    short = oai.chat.completions.create(
        model="claude",
        messages=USER,
        max_tokens=2,
        stop=["zzz"],
        temperature=0.5,
        extra_body={"top_k": 3},
    )
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == (
        "Simulated reply",
        "length",
    )


def test_chat_tool_round_trip(oai: openai.OpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    called = oai.chat.completions.create(
        model="claude", messages=USER, tools=tools, tool_choice="required"
    )
    call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (called.choices[0].finish_reason, call.function.name) == ("tool_calls", "weather")  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "hello from the sdk"}  # type: ignore[union-attr]
    streamed = list(
        oai.chat.completions.create(
            model="claude", messages=USER, tools=tools, tool_choice="required", stream=True
        )
    )
    deltas = [tc for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert (
        deltas[0].id == call.id
        and "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    )  # type: ignore[union-attr]
    answered = oai.chat.completions.create(
        model="claude",
        messages=[
            *USER,
            called.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
        ],
        tools=tools,
    )
    assert answered.choices[0].message.content == f"Simulated reply from {CLAUDE} to: 18C and sunny"


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        pytest.param(
            "titan",
            f"Simulated completion from {TITAN_TEXT} for: Once upon a time",
            id="titan-invoke-model",
        ),
        pytest.param(
            "command",
            "Simulated reply from cohere.command-r-v1:0 to: Once upon a time",
            id="cohere-converse",
        ),
    ],
)
def test_completions_whole_and_streamed(oai: openai.OpenAI, endpoint: str, text: str) -> None:
    whole = oai.completions.create(model=endpoint, prompt="Once upon a time", max_tokens=40)
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == (text, "stop")
    assert whole.usage is not None and (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    ) == (4, len(text.split()))
    chunks = list(oai.completions.create(model=endpoint, prompt="Once upon a time", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(text.split())


def test_embeddings(oai: openai.OpenAI) -> None:
    titan = oai.embeddings.create(
        model="titan-embed", input="hello world", dimensions=256
    )  # SDK asks for base64
    assert len(titan.data[0].embedding) == 256 and titan.model == "amazon.titan-embed-text-v2:0"
    assert titan.usage.prompt_tokens == 2
    floats = oai.embeddings.create(
        model="titan-embed", input=["hello world"], dimensions=256, encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(titan.data[0].embedding)
    cohere = oai.embeddings.create(
        model="cohere-embed", input=["a", "b c"], encoding_format="float"
    )
    assert [len(d.embedding) for d in cohere.data] == [1024, 1024]
    # Bedrock's Cohere body carries no token count: it comes from InvokeModel's headers.
    assert cohere.usage is not None
    assert cohere.usage.prompt_tokens == cohere.usage.total_tokens == 3


REFUSALS = [
    pytest.param(
        "titan",
        {"prompt": "x", "top_k": 5},
        "'top_k' is not supported by provider 'amazon-bedrock' for bedrock_provider 'amazon'",
        id="top_k-titan",
    ),
    pytest.param(
        "claude",
        {"messages": USER, "n": 2},
        "'n' is not supported by provider 'amazon-bedrock'",
        id="n-2",
    ),
    pytest.param(
        "claude",
        {"messages": USER, "logit_bias": {"1": 2}},
        "'logit_bias' is not supported by provider 'amazon-bedrock'",
        id="logit_bias",
    ),
    pytest.param(
        "titan-embed", {"input": ["a", "b"]}, "take one input per request; got 2", id="titan-batch"
    ),
    pytest.param("claude", {"prompt": "x"}, "This endpoint serves llm/v1/chat", id="wrong-task"),
]


@pytest.mark.parametrize(("endpoint", "body", "message"), REFUSALS)
def test_refused_before_any_call(
    env: Env, endpoint: str, body: dict[str, Any], message: str
) -> None:
    status, _, error = env.post(endpoint, body)
    assert (status, error["error_code"]) == (400, "BAD_REQUEST")
    assert message in error["message"]


UPSTREAM_ERRORS = [
    pytest.param({"status": 400}, 400, "BAD_REQUEST", None, id="400-validation"),
    pytest.param({"status": 401}, 401, "UNAUTHENTICATED", None, id="401"),
    pytest.param(
        {"status": 429, "headers": {"Retry-After": "3"}},
        429,
        "REQUEST_LIMIT_EXCEEDED",
        "3",
        id="429-with-retry-after",
    ),
    pytest.param({"status": 429}, 429, "REQUEST_LIMIT_EXCEEDED", "1", id="429-throttling"),
    pytest.param({"status": 500}, 500, "INTERNAL_ERROR", None, id="500"),
    pytest.param({"status": 503}, 503, "TEMPORARILY_UNAVAILABLE", "1", id="503"),
    pytest.param({"status": 408}, 504, "DEADLINE_EXCEEDED", None, id="model-timeout-408"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("fault", "status", "code", "retry"), UPSTREAM_ERRORS)
def test_upstream_errors_are_wrapped(
    env: Env, fault: dict[str, Any], status: int, code: str, retry: str | None, stream: bool
) -> None:
    env.fault(model=CLAUDE, **fault)
    got, headers, error = env.post("claude", {"messages": USER, "stream": stream})
    assert (got, error["error_code"], headers.get("Retry-After")) == (status, code, retry)
    assert json.loads(error["message"])["external_model_provider"] == "amazon-bedrock"


def test_rate_limit_through_the_sdk(env: Env, oai: openai.OpenAI) -> None:
    env.fault(model=TITAN_TEXT, status=429, headers={"Retry-After": "2"})
    with pytest.raises(openai.RateLimitError) as limited:
        oai.completions.create(model="titan", prompt="x")
    assert limited.value.response.headers["retry-after"] == "2"
    assert "Too many requests, please wait before trying again." in str(limited.value)


def curl_stream(env: Env, endpoint: str, body: dict[str, Any]) -> str:
    out = curl_invocation(env.gateway.url, endpoint, {**body, "stream": True}, "-N")
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


def test_curl_stream(env: Env) -> None:
    out = curl_stream(env, "claude", {"messages": [{"role": "user", "content": "curl me"}]})
    frames = [line.removeprefix("data: ") for line in out.split("\n\n") if line]
    assert frames[-1] == "[DONE]"
    text = "".join(json.loads(f)["choices"][0]["delta"].get("content") or "" for f in frames[:-1])
    assert text == f"Simulated reply from {CLAUDE} to: curl me"
    assert json.loads(frames[-2])["usage"]["prompt_tokens"] == 2


def test_exception_inside_the_stream_ends_it_with_an_error_event(env: Env) -> None:
    out = curl_stream(
        env,
        "claude",
        {"messages": [{"role": "user", "content": "go [stream-exception:throttlingException]"}]},
    )
    raw = [line.removeprefix("data: ") for line in out.split("\n\n") if line]
    assert raw[-1] == "[DONE]"  # after the one error event, never more content
    frames = [json.loads(line) for line in raw[:-1]]
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Simulated"}
    assert frames[-1]["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "Too many requests" in frames[-1]["message"]


def test_bad_signature_then_rotated_secret(env: Env) -> None:
    status, _, error = env.post("rotating", {"messages": USER})
    assert (status, error["error_code"]) == (403, "PERMISSION_DENIED")
    upstream = json.loads(error["message"])["external_model_error"]["message"]
    assert upstream.startswith("The request signature we calculated does not match")
    before = generation(env.loop, env.gateway.url)
    write_secret(env.secrets, "aws-rotating", "secret_access_key", ROTATED_SECRET)
    wait_for_generation(env.loop, env.gateway.url, before)
    assert env.post("rotating", {"messages": USER})[0] == 200


def test_default_credential_chain(env: Env) -> None:
    status, _, body = env.post("chain", {"messages": USER})
    assert status == 200, body
    recorded = env.loop.run(http_get(env.sim_url + "/_sim/requests"))["requests"]
    assert f"Credential={CHAIN_KEY}/" in recorded[-1]["headers"]["authorization"]


def test_uc_service_credential_is_not_ready(env: Env) -> None:
    got = env.loop.run(http_get(env.gateway.url + "/api/2.0/serving-endpoints/uc"))
    assert got["state"]["ready"] == "NOT_READY"
    assert "only inside Databricks" in json.dumps(got)
    status, _, error = env.post("uc", {"messages": USER})
    assert (status, error["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")


def test_no_secret_in_logs(env: Env) -> None:
    logs = env.gateway.logs()
    assert SECRET not in logs and CHAIN_SECRET not in logs and ROTATED_SECRET not in logs
    assert "Traceback" not in logs
