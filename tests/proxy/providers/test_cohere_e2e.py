"""Cohere end to end: ``servegate serve`` (a real process) in front of the Cohere simulator,
driven by the OpenAI SDK and curl. Every task plain and streamed, refused parameters, wrapped
upstream errors, and an API key rotated on disk while the gateway runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from servegate.simulators.cohere import create_cohere_app
from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    SimulatedGateway,
    curl_invocation,
    endpoint_doc,
    generation,
    start_site,
    wait_for_generation,
    write_secret,
    write_yaml,
)

pytestmark = pytest.mark.timeout(60)

KEY, ROTATED = "co-e2e-key-1", "co-e2e-key-2"
CHAT_MODEL, GENERATE_MODEL, EMBED_MODEL = "command-r-plus", "command", "embed-v4.0"
MESSAGES: Any = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello from the gateway"},
]
REPLY = "Simulated reply from command-r-plus to: hello from the gateway"


Env = SimulatedGateway


def _entity(model: str, task: str, base: str) -> dict[str, Any]:
    config = {"cohere_api_key": "{{secrets/cohere/api_key}}", "cohere_api_base": base}
    return {
        "external_model": {
            "name": model,
            "provider": "cohere",
            "task": task,
            "cohere_config": config,
        }
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop) -> Iterator[Env]:
    app = create_cohere_app(api_keys=[KEY, ROTATED])
    runner, sim_url = background_loop.run(start_site(app))
    root = tmp_path_factory.mktemp("cohere")
    write_secret(root / "secrets", "cohere", "api_key", KEY)
    write_yaml(
        root / "manifests" / "cohere.yaml",
        endpoint_doc("co-chat", [_entity(CHAT_MODEL, "llm/v1/chat", sim_url)]),
        endpoint_doc("co-comp", [_entity(GENERATE_MODEL, "llm/v1/completions", sim_url)]),
        endpoint_doc("co-emb", [_entity(EMBED_MODEL, "llm/v1/embeddings", sim_url)]),
    )
    gateway = GatewayProcess(
        ["serve", str(root / "manifests"), "--secrets-dir", str(root / "secrets")],
        root / "gateway.log",
    )
    yield Env(gateway=gateway, sim_url=sim_url, loop=background_loop, secrets=root / "secrets")
    gateway.stop()
    background_loop.run(runner.cleanup())


@pytest.fixture(autouse=True)
def _no_faults(env: Env) -> Iterator[None]:
    env.sim("DELETE", "/_sim/faults")
    yield
    env.sim("DELETE", "/_sim/faults")


@pytest.fixture
def oai(env: Env) -> openai.OpenAI:
    url = env.gateway.url + "/serving-endpoints"
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=20)


def test_chat_plain_and_streamed(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model="co-chat", messages=MESSAGES, max_tokens=50)
    assert whole.model == CHAT_MODEL
    assert whole.choices[0].message.content == REPLY
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (2 + 4, 9)

    chunks = list(oai.chat.completions.create(model="co-chat", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens

    with_usage = list(
        oai.chat.completions.create(
            model="co-chat",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None
    assert with_usage[-1].usage.prompt_tokens == 6


def test_chat_tool_call(oai: openai.OpenAI, env: Env) -> None:
    tool: Any = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    answer = oai.chat.completions.create(
        model="co-chat",
        messages=[{"role": "user", "content": "call get_weather"}],
        tools=[tool],
        tool_choice="required",
    )
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "call get_weather"}  # type: ignore[union-attr]
    assert env.last_request()["json"]["tool_choice"] == "REQUIRED"


def test_completions_plain_and_streamed(oai: openai.OpenAI, env: Env) -> None:
    whole = oai.completions.create(model="co-comp", prompt="Once upon a time", n=2, temperature=1)
    expected = "Simulated completion from command for: Once upon a time"
    assert [c.text for c in whole.choices] == [expected, expected + " [1]"]
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (4, 9 + 10)
    sent = env.last_request()["json"]
    assert (sent["num_generations"], sent["temperature"]) == (2, 2.5)

    stream = oai.completions.create(model="co-comp", prompt="Once upon a time", n=2, stream=True)
    texts = ["", ""]
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts == [c.text for c in whole.choices]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_embeddings(oai: openai.OpenAI, env: Env) -> None:
    result = oai.embeddings.create(model="co-emb", input=["a b", "c"])  # the SDK asks for base64
    assert [len(item.embedding) for item in result.data] == [8, 8]
    assert result.model == EMBED_MODEL
    assert result.usage.prompt_tokens == 3
    sent = env.last_request()["json"]
    assert sent == {
        "model": EMBED_MODEL,
        "texts": ["a b", "c"],
        "input_type": "search_document",
        "embedding_types": ["float"],
    }


@pytest.mark.parametrize(
    ("endpoint", "call", "named"),
    [
        pytest.param("co-chat", {"messages": MESSAGES, "n": 2}, "'n'", id="chat-n"),
        pytest.param(
            "co-chat",
            {"messages": MESSAGES, "logit_bias": {"1": 2}},
            "'logit_bias'",
            id="chat-bias",
        ),
        pytest.param("co-comp", {"prompt": "x", "n": 6}, "'n'", id="completions-n"),
        pytest.param("co-comp", {"prompt": "x", "echo": True}, "'echo'", id="completions-echo"),
        pytest.param("co-emb", {"input": "x", "user": "ana"}, "'user'", id="embeddings-user"),
    ],
)
def test_unsupported_parameters_are_400(
    oai: openai.OpenAI, endpoint: str, call: dict[str, Any], named: str
) -> None:
    create: Any = {
        "co-chat": oai.chat.completions.create,
        "co-comp": oai.completions.create,
        "co-emb": oai.embeddings.create,
    }[endpoint]
    with pytest.raises(openai.BadRequestError) as refused:
        create(model=endpoint, **call)
    assert named in refused.value.message
    assert "cohere" in refused.value.message
    assert refused.value.response.json()["error_code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    ("status", "headers", "error", "code", "retry_after"),
    [
        pytest.param(400, {}, openai.BadRequestError, "BAD_REQUEST", None, id="400"),
        pytest.param(
            429,
            {"Retry-After": "3"},
            openai.RateLimitError,
            "REQUEST_LIMIT_EXCEEDED",
            "3",
            id="429",
        ),
        pytest.param(500, {}, openai.InternalServerError, "INTERNAL_ERROR", None, id="500"),
        pytest.param(503, {}, openai.InternalServerError, "TEMPORARILY_UNAVAILABLE", "1", id="503"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_upstream_errors_are_wrapped(
    oai: openai.OpenAI,
    env: Env,
    status: int,
    headers: dict[str, str],
    error: type[openai.APIStatusError],
    code: str,
    retry_after: str | None,
    stream: bool,
) -> None:
    env.fault(model=CHAT_MODEL, status=status, headers=headers)
    with pytest.raises(error) as raised:
        oai.chat.completions.create(model="co-chat", messages=MESSAGES, stream=stream)
    body = raised.value.response.json()
    wrapped = json.loads(body["message"])
    assert raised.value.status_code == status
    assert body["error_code"] == code
    assert raised.value.response.headers.get("retry-after") == retry_after
    assert wrapped["external_model_provider"] == "cohere"
    assert "message" in wrapped["external_model_error"]


def test_stream_cut_mid_way_reaches_the_client_as_an_error(oai: openai.OpenAI, env: Env) -> None:
    env.fault(model=GENERATE_MODEL, stream_cut_after=3)
    stream = oai.completions.create(model="co-comp", prompt="Once upon a time", stream=True)
    with pytest.raises(openai.APIError, match="Provider 'cohere' broke off the stream"):
        list(stream)


def _curl(env: Env, endpoint: str, body: dict[str, Any], *flags: str) -> str:
    out = curl_invocation(env.gateway.url, endpoint, body, *flags)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().replace("\r\n", "\n")  # as text mode read it


def test_curl_stream_and_rate_limit(env: Env) -> None:
    raw = _curl(env, "co-chat", {"messages": MESSAGES, "stream": True}, "-N")
    lines = [line for line in raw.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == REPLY

    env.fault(model=GENERATE_MODEL, status=429)
    head, _, body = _curl(env, "co-comp", {"prompt": "x"}, "-i").partition("\n\n")
    assert head.startswith("HTTP/1.1 429")
    assert "\nRetry-After: 1\n" in head  # an integer, as clients need
    assert json.loads(body)["error_code"] == "REQUEST_LIMIT_EXCEEDED"


def test_rotated_key_is_used_without_a_restart(oai: openai.OpenAI, env: Env) -> None:
    """Runs last: it rewrites the secret file and puts the first key back at the end."""
    url = env.gateway.url
    try:
        gen = generation(env.loop, url)
        write_secret(env.secrets, "cohere", "api_key", ROTATED)
        gen = wait_for_generation(env.loop, url, gen)
        oai.chat.completions.create(model="co-chat", messages=MESSAGES)
        assert env.last_request()["headers"]["authorization"] == f"Bearer {ROTATED}"

        write_secret(env.secrets, "cohere", "api_key", "co-revoked-key")
        gen = wait_for_generation(env.loop, url, gen)
        with pytest.raises(openai.AuthenticationError) as refused:
            oai.chat.completions.create(model="co-chat", messages=MESSAGES)
        body = refused.value.response.json()
        assert body["error_code"] == "UNAUTHENTICATED"
        assert json.loads(body["message"])["external_model_error"] == {
            "message": "invalid api token"
        }
    finally:
        gen = generation(env.loop, url)
        write_secret(env.secrets, "cohere", "api_key", KEY)
        wait_for_generation(env.loop, url, gen)
    assert "co-revoked-key" not in env.gateway.logs()
    assert "Traceback" not in env.gateway.logs()
