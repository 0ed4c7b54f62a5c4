"""Anthropic end to end: a real ``servegate serve`` process in front of the Anthropic
simulator, driven by the OpenAI SDK and curl. One gateway for the module."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    SimulatedGateway,
    endpoint_doc,
    generation,
    start_site,
    wait_for_generation,
    write_secret,
    write_yaml,
)

pytestmark = pytest.mark.timeout(60)

KEY = "sk-ant-e2e-key-7f3c"
ROTATED = "sk-ant-e2e-rotated-91ab"
CHAT_MODEL = "claude-3-5-haiku-latest"
LEGACY_MODEL = "claude-2.1"
QUESTION = "What is the tallest lighthouse in the whole wide world"
ANSWER = f"Simulated reply from {CHAT_MODEL} to: {QUESTION[:40].strip()}"


def anthropic_entity(model: str, base: str, task: str, key: str) -> dict[str, Any]:
    return {
        "external_model": {
            "name": model,
            "provider": "anthropic",
            "task": task,
            "anthropic_config": {"anthropic_api_key": key, "anthropic_api_base": base},
        }
    }


Env = SimulatedGateway


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop) -> Iterator[Env]:
    from servegate.simulators.anthropic import create_anthropic_app

    app = create_anthropic_app(api_keys={KEY, ROTATED})
    runner, sim_url = background_loop.run(start_site(app))
    root = tmp_path_factory.mktemp("anthropic")
    write_secret(root / "secrets", "anthropic", "api_key", KEY)
    write_secret(root / "secrets", "rotating", "api_key", "sk-ant-not-yet-valid")
    ref, rotating = "{{secrets/anthropic/api_key}}", "{{secrets/rotating/api_key}}"
    write_yaml(
        root / "manifests" / "anthropic.yaml",
        endpoint_doc("claude", [anthropic_entity(CHAT_MODEL, sim_url, "llm/v1/chat", ref)]),
        endpoint_doc(
            "claude-legacy",
            [anthropic_entity(LEGACY_MODEL, sim_url, "llm/v1/completions", ref)],
        ),
        endpoint_doc(
            "claude-emb", [anthropic_entity(CHAT_MODEL, sim_url, "llm/v1/embeddings", ref)]
        ),
        endpoint_doc(
            "claude-rotating", [anthropic_entity(CHAT_MODEL, sim_url, "llm/v1/chat", rotating)]
        ),
    )
    gateway = GatewayProcess(
        ["serve", str(root / "manifests"), "--secrets-dir", str(root / "secrets")],
        root / "gateway.log",
    )
    yield Env(
        gateway=gateway,
        sim_url=sim_url,
        secrets=root / "secrets",
        loop=background_loop,
        default_model=CHAT_MODEL,
    )
    gateway.stop()
    background_loop.run(runner.cleanup())


@pytest.fixture(autouse=True)
def _no_faults(env: Env) -> Iterator[None]:
    env.sim("DELETE", "/_sim/faults")
    yield
    env.sim("DELETE", "/_sim/faults")


@pytest.fixture
def oai(env: Env) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=env.gateway.url + "/serving-endpoints", api_key="x", max_retries=0
    )


def chat(content: str = QUESTION) -> list[Any]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]


def test_chat(env: Env, oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(model="claude", messages=chat(), max_tokens=100)
    assert out.choices[0].message.content == ANSWER
    assert out.choices[0].finish_reason == "stop"
    assert out.model == CHAT_MODEL
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (
        len(["Be", "brief."]) + len(QUESTION.split()),
        len(ANSWER.split()),
    )
    sent = env.last_request()
    assert (sent["path"], sent["headers"]["x-api-key"]) == ("/v1/messages", KEY)
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["json"] == {
        "model": CHAT_MODEL,
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": QUESTION}],
    }


@pytest.mark.parametrize("include_usage", [False, True], ids=["usage-on-last", "include-usage"])
def test_chat_stream(oai: openai.OpenAI, include_usage: bool) -> None:
    options: Any = {"include_usage": True} if include_usage else openai.NOT_GIVEN
    stream = oai.chat.completions.create(
        model="claude", messages=chat(), stream=True, stream_options=options
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(ANSWER.split())
    assert (chunks[-1].choices == []) is include_usage


def test_completions_legacy_model(env: Env, oai: openai.OpenAI) -> None:
    out = oai.completions.create(model="claude-legacy", prompt="Say hi politely")
    expected = f"Simulated reply from {LEGACY_MODEL} to: Say hi politely"
    assert out.choices[0].text == expected
    assert out.model == LEGACY_MODEL
    assert out.usage is not None and out.usage.prompt_tokens == 3
    assert env.last_request()["json"]["messages"] == [
        {"role": "user", "content": "Say hi politely"}
    ]
    streamed = list(
        oai.completions.create(model="claude-legacy", prompt="Say hi politely", stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed) == expected
    assert streamed[-1].usage is not None
    assert streamed[-1].usage.completion_tokens == len(expected.split())


def test_tool_round_trip(oai: openai.OpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    asked: Any = [{"role": "user", "content": "call get_weather for Paris"}]
    first = oai.chat.completions.create(model="claude", messages=asked, tools=tools)
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "call get_weather for Paris"}  # type: ignore[union-attr]
    follow_up: Any = [
        *asked,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"},
    ]
    second = oai.chat.completions.create(model="claude", messages=follow_up, tools=tools)
    assert (
        second.choices[0].message.content == f"Simulated reply from {CHAT_MODEL} to: 18C and sunny"
    )


@pytest.mark.parametrize(
    ("model", "extra", "named"),
    [
        pytest.param("claude", {"frequency_penalty": 0.5}, "'frequency_penalty'", id="param"),
        pytest.param("claude", {"temperature": 1.7}, "between 0 and 1", id="temperature"),
        pytest.param("claude", {"n": 3}, "n must be 1", id="n"),
    ],
)
def test_unsupported_parameter(
    oai: openai.OpenAI, model: str, extra: dict[str, Any], named: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=named) as refused:
        oai.chat.completions.create(model=model, messages=chat(), **extra)
    assert "anthropic" in refused.value.response.json()["message"]


def test_unsupported_task(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not support the task llm/v1/embeddings"):
        oai.embeddings.create(model="claude-emb", input="hello")


@pytest.mark.parametrize(
    ("status", "exc", "code", "retry_after"),
    [
        pytest.param(400, openai.BadRequestError, "BAD_REQUEST", None, id="400"),
        pytest.param(401, openai.AuthenticationError, "UNAUTHENTICATED", None, id="401"),
        pytest.param(429, openai.RateLimitError, "REQUEST_LIMIT_EXCEEDED", "5", id="429"),
        pytest.param(
            529, openai.RateLimitError, "REQUEST_LIMIT_EXCEEDED", "1", id="529-overloaded"
        ),
        pytest.param(500, openai.InternalServerError, "INTERNAL_ERROR", None, id="500"),
    ],
)
def test_upstream_errors(
    env: Env,
    oai: openai.OpenAI,
    status: int,
    exc: type[openai.APIStatusError],
    code: str,
    retry_after: str | None,
) -> None:
    env.fault(status=status, **({"headers": {"retry-after": "5"}} if status == 429 else {}))
    with pytest.raises(exc) as raised:
        oai.chat.completions.create(model="claude", messages=chat())
    body = raised.value.response.json()
    assert body["error_code"] == code
    wrapped = json.loads(body["message"])
    assert wrapped["external_model_provider"] == "anthropic"
    assert wrapped["external_model_error"]["type"] == "error"
    assert raised.value.response.headers.get("retry-after") == retry_after


def test_overloaded_mid_stream(env: Env, oai: openai.OpenAI) -> None:
    """Content already sent: the error ends the stream in-band. The gate holds the error
    event until the first chunk has reached the client, so the test does not depend on how
    TCP happens to group the upstream events."""
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    env.fault(body=overloaded, gate="overload", gate_after=4)
    stream = oai.chat.completions.create(model="claude", messages=chat(), stream=True)
    received: list[str] = []

    def read_all() -> None:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
            env.sim("POST", "/_sim/gates/overload/open")  # the first chunk is through

    with pytest.raises(openai.APIError, match="overloaded_error"):
        read_all()
    assert received == ["Simulated"]


def test_curl(env: Env) -> None:
    def curl(*args: str) -> str:
        url = f"{env.gateway.url}/serving-endpoints/claude/invocations"
        command = ["curl", "-sS", "-N", "-H", "Content-Type: application/json", *args, url]
        return subprocess.run(
            command, capture_output=True, check=True, timeout=20, text=True
        ).stdout

    whole = json.loads(curl("-d", json.dumps({"messages": chat()})))
    assert whole["choices"][0]["message"]["content"] == ANSWER
    streamed = curl("-d", json.dumps({"messages": chat(), "stream": True}))
    lines = [line for line in streamed.split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == ANSWER
    assert chunks[-1]["usage"]["total_tokens"] > 0


def test_rotated_secret_is_picked_up(env: Env, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        oai.chat.completions.create(model="claude-rotating", messages=chat())
    assert json.loads(refused.value.response.json()["message"])["external_model_error"][
        "error"
    ] == {
        "type": "authentication_error",
        "message": "invalid x-api-key",
    }
    before = generation(env.loop, env.gateway.url)
    write_secret(env.secrets, "rotating", "api_key", ROTATED)
    wait_for_generation(env.loop, env.gateway.url, before)
    out = oai.chat.completions.create(model="claude-rotating", messages=chat())
    assert out.choices[0].message.content == ANSWER
    assert env.last_request()["headers"]["x-api-key"] == ROTATED


def test_no_secret_in_logs(env: Env) -> None:
    logs = env.gateway.logs()
    assert KEY not in logs and ROTATED not in logs
    assert "Traceback" not in logs
