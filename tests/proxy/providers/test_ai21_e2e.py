"""AI21 Labs end to end: a real ``servegate serve`` process in front of the AI21 simulator,
driven by the OpenAI SDK and curl. Completions (plain and emulated streams), refused tasks
and parameters, upstream errors, and a key rotated on disk without a restart."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from servegate.simulators.ai21 import create_ai21_app
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

KEY = "ai21-e2e-key-7f3c"
ROTATED = "ai21-e2e-rotated-91ab"
PROMPT = "Life is like a box"
ANSWER = "Simulated completion from j2-mid for: Life is like a box"
# Token rule of the simulator: words; a natural end adds <|endoftext|>.
USAGE = {"prompt_tokens": 5, "completion_tokens": 10 + 1, "total_tokens": 16}


def ai21_entity(task: str, api_base: str) -> dict[str, Any]:
    return {
        "external_model": {
            "name": "j2-mid",
            "provider": "ai21labs",
            "task": task,
            "ai21labs_config": {
                "ai21labs_api_key": "{{secrets/ai21/api_key}}",
                "ai21labs_api_base": api_base,
            },
        }
    }


Env = SimulatedGateway


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop) -> Iterator[Env]:
    runner, sim_url = background_loop.run(start_site(create_ai21_app(api_keys={KEY, ROTATED})))
    root = tmp_path_factory.mktemp("ai21")
    write_secret(root / "secrets", "ai21", "api_key", KEY)
    docs = []
    for name, task in (
        ("ai21", "llm/v1/completions"),
        ("ai21-chat", "llm/v1/chat"),
        ("ai21-emb", "llm/v1/embeddings"),
    ):
        docs.append(endpoint_doc(name, [ai21_entity(task, sim_url)]))
    write_yaml(root / "manifests" / "ai21.yaml", *docs)
    gateway = GatewayProcess(
        ["serve", str(root / "manifests"), "--secrets-dir", str(root / "secrets")],
        root / "gateway.log",
    )
    yield Env(gateway=gateway, sim_url=sim_url, secrets=root / "secrets", loop=background_loop)
    gateway.stop()
    background_loop.run(runner.cleanup())
    assert KEY not in gateway.logs() and ROTATED not in gateway.logs()


@pytest.fixture(autouse=True)
def _clean_sim(env: Env) -> Iterator[None]:
    env.sim("DELETE", "/_sim/faults")
    env.sim("DELETE", "/_sim/requests")
    yield
    env.sim("DELETE", "/_sim/faults")


@pytest.fixture
def oai(env: Env) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=env.gateway.url + "/serving-endpoints", api_key="x", max_retries=0, timeout=10
    )


def curl(url: str, body: dict[str, Any]) -> tuple[int, str]:
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", "-X", "POST", url,
         "-H", "Content-Type: application/json", "-d", json.dumps(body)],
        capture_output=True, text=True, timeout=15, check=True,
    )  # fmt: skip
    text, _, status = result.stdout.rpartition("\n")
    return int(status), text


def test_completion_content_and_usage(env: Env, oai: openai.OpenAI) -> None:
    result = oai.completions.create(model="ai21", prompt=PROMPT, max_tokens=40, temperature=0.2)
    assert result.model == "j2-mid"
    assert result.object == "text_completion"
    assert [(c.text, c.finish_reason) for c in result.choices] == [(ANSWER, "stop")]
    assert result.usage is not None and result.usage.model_dump() == {
        **USAGE,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    sent = env.sim("GET", "/_sim/requests")["requests"][-1]
    assert sent["path"] == "/studio/v1/j2-mid/complete"
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    assert sent["json"] == {"prompt": PROMPT, "maxTokens": 40, "temperature": 0.2}


def test_stream_reassembles_the_plain_answer(env: Env, oai: openai.OpenAI) -> None:
    plain = oai.completions.create(model="ai21", prompt=PROMPT, n=2)
    chunks = list(oai.completions.create(model="ai21", prompt=PROMPT, n=2, stream=True))
    for index, choice in enumerate(plain.choices):
        streamed = "".join(c.choices[0].text for c in chunks if c.choices[0].index == index)
        assert streamed == choice.text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens  # type: ignore[union-attr]
    assert "stream" not in env.sim("GET", "/_sim/requests")["requests"][-1]["json"]
    with_usage = list(
        oai.completions.create(
            model="ai21", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
        )
    )
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None and with_usage[-1].usage.prompt_tokens == 5


def test_curl_plain_and_stream(env: Env) -> None:
    url = env.gateway.url + "/serving-endpoints/ai21/invocations"
    status, text = curl(url, {"prompt": PROMPT, "extra_params": {"minTokens": "1"}})
    assert status == 200
    assert json.loads(text)["choices"][0]["text"] == ANSWER
    assert env.sim("GET", "/_sim/requests")["requests"][-1]["json"]["minTokens"] == 1
    status, text = curl(url, {"prompt": PROMPT, "stream": True})
    assert status == 200
    events = [line for line in text.split("\n") if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == ANSWER
    assert chunks[-1]["usage"] == USAGE


def test_unsupported_tasks_and_parameters_are_400(oai: openai.OpenAI) -> None:
    with pytest.raises(
        openai.BadRequestError, match="'ai21labs' does not support the task llm/v1/chat"
    ):
        oai.chat.completions.create(model="ai21-chat", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(
        openai.BadRequestError, match="'ai21labs' does not support the task llm/v1/embeddings"
    ):
        oai.embeddings.create(model="ai21-emb", input="hi")
    with pytest.raises(
        openai.BadRequestError, match="'logit_bias' is not supported by provider 'ai21labs'"
    ):
        oai.completions.create(model="ai21", prompt="x", logit_bias={"50256": -100})
    with pytest.raises(openai.BadRequestError, match="'temperature' must be between 0 and 1"):
        oai.completions.create(model="ai21", prompt="x", temperature=1.5)
    with pytest.raises(openai.BadRequestError, match="one prompt per request"):
        oai.completions.create(model="ai21", prompt=["a", "b"])


ERROR_CASES = [
    pytest.param(400, {}, openai.BadRequestError, "BAD_REQUEST", None, id="400"),
    pytest.param(401, {}, openai.AuthenticationError, "UNAUTHENTICATED", None, id="401"),
    pytest.param(429, {"Retry-After": "2"}, openai.RateLimitError, "REQUEST_LIMIT_EXCEEDED", "2", id="429 with Retry-After"),
    pytest.param(429, {}, openai.RateLimitError, "REQUEST_LIMIT_EXCEEDED", "1", id="429 without Retry-After"),
    pytest.param(500, {}, openai.InternalServerError, "INTERNAL_ERROR", None, id="500"),
    pytest.param(503, {}, openai.InternalServerError, "TEMPORARILY_UNAVAILABLE", "1", id="503"),
]  # fmt: skip


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("status", "headers", "exc", "code", "retry_after"), ERROR_CASES)
def test_upstream_errors_are_wrapped(
    env: Env,
    oai: openai.OpenAI,
    stream: bool,
    status: int,
    headers: dict[str, str],
    exc: type[openai.APIStatusError],
    code: str,
    retry_after: str | None,
) -> None:
    env.fault(model="j2-mid", status=status, headers=headers)
    with pytest.raises(exc) as raised:
        oai.completions.create(model="ai21", prompt="x", stream=stream)
    response = raised.value.response
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    body = response.json()
    assert body["error_code"] == code
    wrapped = json.loads(body["message"])
    assert wrapped["external_model_provider"] == "ai21labs"
    assert set(wrapped["external_model_error"]) == {"detail"}


def test_cut_upstream_body_is_a_502(env: Env, oai: openai.OpenAI) -> None:
    env.fault(model="j2-mid", stream_cut_after=0)
    with pytest.raises(openai.APIStatusError) as raised:
        oai.completions.create(model="ai21", prompt="x", stream=True)
    assert raised.value.status_code == 502


def test_rotated_key_is_used_without_restart(env: Env, oai: openai.OpenAI) -> None:
    url = env.gateway.url
    gen = generation(env.loop, url)
    write_secret(env.secrets, "ai21", "api_key", "ai21-revoked-key")
    gen = wait_for_generation(env.loop, url, gen)
    with pytest.raises(openai.AuthenticationError) as refused:
        oai.completions.create(model="ai21", prompt="x")
    assert "Forbidden: Bad or missing API token." in refused.value.response.json()["message"]
    write_secret(env.secrets, "ai21", "api_key", ROTATED)
    wait_for_generation(env.loop, url, gen)
    assert oai.completions.create(model="ai21", prompt=PROMPT).choices[0].text == ANSWER
    sent = env.sim("GET", "/_sim/requests")["requests"][-1]
    assert sent["headers"]["authorization"] == f"Bearer {ROTATED}"
