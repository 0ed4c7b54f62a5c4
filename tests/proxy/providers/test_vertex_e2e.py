"""Vertex AI end to end: a real ``servegate serve`` process in front of the Vertex simulator
(OAuth token endpoint included), driven by the OpenAI SDK and curl. Every task, streamed
and not, refused parameters, wrapped upstream errors, a bad key, and key rotation on disk."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from servegate.simulators.vertex import create_vertex_app, generate_service_account
from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    SimulatedGateway,
    curl_invocation,
    endpoint_doc,
    generation,
    http_get,
    start_site,
    wait_for_generation,
    write_secret,
    write_yaml,
)

pytestmark = pytest.mark.timeout(60)

INFO, KEY = generate_service_account(project_id="proj-e2e")
ROTATED_INFO, ROTATED_KEY = generate_service_account(project_id="proj-e2e")
STRANGER_INFO, _ = generate_service_account(project_id="proj-e2e")


TUNED = "projects/proj-e2e/locations/us-central1/endpoints/4567890123"


def vertex_entity(model: str, task: str, base: str, secret: str = "sa") -> dict[str, Any]:
    return {
        "name": model.rsplit("/", 1)[-1].replace("@", "-").replace(".", "-"),
        "external_model": {
            "name": model,
            "provider": "google-cloud-vertex-ai",
            "task": task,
            "google_cloud_vertex_ai_config": {
                "project_id": "proj-e2e",
                "region": "us-central1",
                "private_key": f"{{{{secrets/gcp/{secret}}}}}",
                "vertex_api_base": base,
            },
        },
    }


def key_file(info: dict[str, str], sim_url: str) -> str:
    return json.dumps({**info, "token_uri": sim_url + "/token"})


Env = SimulatedGateway


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop) -> Iterator[Env]:
    app = create_vertex_app(
        accounts=[KEY, ROTATED_KEY], endpoints={"4567890123": "gemini-1.5-flash-tuned"}
    )
    runner, sim_url = background_loop.run(start_site(app))
    root = tmp_path_factory.mktemp("vertex")
    secrets = root / "secrets"
    write_secret(secrets, "gcp", "sa", key_file(INFO, sim_url))
    write_secret(secrets, "gcp", "rotating", key_file(STRANGER_INFO, sim_url))
    write_secret(secrets, "gcp", "broken", '{"type": "service_account", "private_key": "x"}')
    write_yaml(
        root / "manifests" / "vertex.yaml",
        endpoint_doc("chat", [vertex_entity("gemini-2.0-flash", "llm/v1/chat", sim_url)]),
        endpoint_doc("comp", [vertex_entity("gemini-1.5-flash", "llm/v1/completions", sim_url)]),
        endpoint_doc("bison", [vertex_entity("text-bison@002", "llm/v1/completions", sim_url)]),
        endpoint_doc("palm-chat", [vertex_entity("chat-bison", "llm/v1/chat", sim_url)]),
        endpoint_doc("emb", [vertex_entity("text-embedding-004", "llm/v1/embeddings", sim_url)]),
        endpoint_doc("tuned", [vertex_entity(TUNED, "llm/v1/chat", sim_url)]),
        endpoint_doc(
            "rotating", [vertex_entity("gemini-2.0-flash", "llm/v1/chat", sim_url, "rotating")]
        ),
        endpoint_doc(
            "broken", [vertex_entity("gemini-2.0-flash", "llm/v1/chat", sim_url, "broken")]
        ),
    )
    gateway = GatewayProcess(
        ["serve", str(root / "manifests"), "--secrets-dir", str(secrets)], root / "gateway.log"
    )
    yield Env(gateway=gateway, sim_url=sim_url, loop=background_loop, secrets=secrets)
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


USER = [{"role": "user", "content": "hello there friend"}]


# ---------------------------------------------------------------------- every task


@pytest.mark.parametrize(
    ("endpoint", "model", "reply"),
    [
        pytest.param(
            "chat",
            "gemini-2.0-flash",
            "Simulated reply from gemini-2.0-flash to: hello there friend",
            id="gemini",
        ),
        pytest.param(
            "palm-chat",
            "chat-bison",
            "Simulated reply from chat-bison to: hello there friend",
            id="chat-bison",
        ),
    ],
)
def test_chat(oai: openai.OpenAI, endpoint: str, model: str, reply: str) -> None:
    chat = oai.chat.completions.create(model=endpoint, messages=USER, max_tokens=50)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == reply
    assert chat.choices[0].finish_reason == "stop"
    assert chat.model == model
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (3, len(reply.split()))


def test_chat_stream_reassembles_the_answer(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model="chat", messages=USER)  # type: ignore[arg-type]
    chunks = list(oai.chat.completions.create(model="chat", messages=USER, stream=True))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_tuned_endpoint_chat_and_stream(env: Env, oai: openai.OpenAI) -> None:
    reply = "Simulated reply from gemini-1.5-flash-tuned to: hello there friend"
    chat = oai.chat.completions.create(model="tuned", messages=USER)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == reply
    assert chat.model == "gemini-1.5-flash-tuned"  # the answer's modelVersion
    chunks = list(oai.chat.completions.create(model="tuned", messages=USER, stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
    assert chunks[-1].choices[0].finish_reason == "stop"
    paths = [r["path"] for r in env.sim("GET", "/_sim/requests")["requests"][-2:]]
    assert paths == [
        f"/v1/{TUNED}:generateContent",
        f"/v1/{TUNED}:streamGenerateContent",
    ]


def test_chat_tool_call(oai: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    chat = oai.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "call get_weather for Rome"}],
        tools=tools,  # type: ignore[arg-type]
    )
    call = chat.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert chat.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    follow_up = oai.chat.completions.create(
        model="chat",
        messages=[
            {"role": "user", "content": "call get_weather for Rome"},
            chat.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=tools,  # type: ignore[arg-type]
    )
    assert (
        follow_up.choices[0].message.content
        == "Simulated reply from gemini-2.0-flash to: the result of get_weather"
    )


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        pytest.param(
            "comp", "Simulated reply from gemini-1.5-flash to: Once upon a time", id="gemini"
        ),
        pytest.param(
            "bison",
            "Simulated completion from text-bison@002 for: Once upon a time",
            id="text-bison",
        ),
    ],
)
def test_completions(oai: openai.OpenAI, endpoint: str, text: str) -> None:
    comp = oai.completions.create(model=endpoint, prompt="Once upon a time", max_tokens=40)
    assert comp.choices[0].text == text
    assert comp.usage is not None
    assert (comp.usage.prompt_tokens, comp.usage.completion_tokens) == (4, len(text.split()))


def test_completions_stream_reassembles_the_answer(oai: openai.OpenAI) -> None:
    whole = oai.completions.create(model="comp", prompt="Once upon a time")
    chunks = list(oai.completions.create(model="comp", prompt="Once upon a time", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage is not None and whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_embeddings_base64_and_float_agree(env: Env, oai: openai.OpenAI) -> None:
    emb = oai.embeddings.create(model="emb", input=["a b", "c"], dimensions=4)  # SDK asks base64
    status, _, floats = env.post("emb", {"input": ["a b", "c"], "dimensions": 4})
    assert status == 200
    for sdk_vector, float_item in zip(emb.data, floats["data"], strict=True):
        assert sdk_vector.embedding == pytest.approx(float_item["embedding"])
    assert len(emb.data[0].embedding) == 4
    assert emb.usage.prompt_tokens == 3


# ----------------------------------------------------------------------- refusals


def test_unsupported_parameter_is_a_400_naming_it(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(model="chat", messages=USER, logit_bias={"1": 2})  # type: ignore[arg-type]
    message = raised.value.response.json()["message"]
    assert "'logit_bias'" in message and "google-cloud-vertex-ai" in message


def test_predict_models_refuse_to_stream(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="cannot stream model 'text-bison@002'"):
        list(oai.completions.create(model="bison", prompt="x", stream=True))


def test_wrong_task_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="serves llm/v1/embeddings"):
        oai.chat.completions.create(model="emb", messages=USER)  # type: ignore[arg-type]


# ------------------------------------------------------------------ upstream errors


@pytest.mark.parametrize(
    ("status", "code", "google_status"),
    [
        pytest.param(400, "BAD_REQUEST", "INVALID_ARGUMENT", id="400"),
        pytest.param(401, "UNAUTHENTICATED", "UNAUTHENTICATED", id="401"),
        pytest.param(403, "PERMISSION_DENIED", "PERMISSION_DENIED", id="403"),
        pytest.param(429, "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", id="429"),
        pytest.param(500, "INTERNAL_ERROR", "INTERNAL", id="500"),
        pytest.param(503, "TEMPORARILY_UNAVAILABLE", "UNAVAILABLE", id="503"),
    ],
)
def test_upstream_errors_are_wrapped(env: Env, status: int, code: str, google_status: str) -> None:
    env.fault(model="gemini-2.0-flash", status=status)
    got, headers, body = env.post("chat", {"messages": USER})
    assert (got, body["error_code"]) == (status, code)
    wrapped = json.loads(body["message"])
    assert wrapped["external_model_provider"] == "google-cloud-vertex-ai"
    assert wrapped["external_model_error"]["error"]["status"] == google_status
    if status in (429, 503):
        assert headers["Retry-After"] == "1"


def test_rate_limit_through_the_sdk_keeps_retry_after(env: Env, oai: openai.OpenAI) -> None:
    env.fault(model="gemini-2.0-flash", status=429, headers={"Retry-After": "4"})
    with pytest.raises(openai.RateLimitError) as raised:
        oai.chat.completions.create(model="chat", messages=USER, stream=True)  # type: ignore[arg-type]
    assert raised.value.response.headers["retry-after"] == "4"
    assert raised.value.response.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"


def test_stream_cut_midway_is_not_a_clean_end(env: Env) -> None:
    env.fault(model="gemini-2.0-flash", stream_cut_after=2)
    out = curl(env, "chat", {"messages": USER, "stream": True}, "-N")
    raw = [line[6:] for line in out.split("\n") if line]
    assert raw[-1] == "[DONE]"  # after the one error event, never more content
    frames = [json.loads(line) for line in raw[:-1]]
    assert [f["choices"][0]["delta"]["content"] for f in frames[:2]] == [
        "Simulated reply",
        " from gemini-2.0-flash",
    ]
    assert frames[2]["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert len(frames) == 3


# ------------------------------------------------------------------- credentials


def test_a_key_that_is_not_service_account_json_is_not_ready(env: Env) -> None:
    got = env.loop.run(http_get(env.gateway.url + "/api/2.0/serving-endpoints/broken"))
    assert got["state"]["ready"] == "NOT_READY"
    assert "lacks client_email, token_uri" in json.dumps(got)
    status, _, body = env.post("broken", {"messages": USER})
    assert status == 503 and "lacks client_email, token_uri" in body["message"]


def test_rotated_key_on_disk_is_picked_up(env: Env) -> None:
    status, _, body = env.post("rotating", {"messages": USER})
    assert (status, body["error_code"]) == (401, "UNAUTHENTICATED")
    assert "Invalid grant: account not found" in body["message"]
    before = generation(env.loop, env.gateway.url)
    write_secret(env.secrets, "gcp", "rotating", key_file(ROTATED_INFO, env.sim_url))
    wait_for_generation(env.loop, env.gateway.url, before)
    status, _, body = env.post("rotating", {"messages": USER})
    assert status == 200, body
    tokens = [r for r in env.sim("GET", "/_sim/requests")["requests"] if r["path"] == "/token"]
    claims = tokens[-1]["form"]["assertion"].split(".")[1]
    assert ROTATED_KEY.client_email in orjson.loads(_b64(claims))["iss"]


def test_token_is_reused_across_requests(env: Env, oai: openai.OpenAI) -> None:
    oai.chat.completions.create(model="chat", messages=USER)  # type: ignore[arg-type]
    count = len([r for r in env.sim("GET", "/_sim/requests")["requests"] if r["path"] == "/token"])
    for _ in range(3):
        oai.chat.completions.create(model="chat", messages=USER)  # type: ignore[arg-type]
    after = [r for r in env.sim("GET", "/_sim/requests")["requests"] if r["path"] == "/token"]
    assert len(after) == count


def test_key_material_never_reaches_the_logs(env: Env) -> None:
    logs = env.gateway.logs()
    for info in (INFO, STRANGER_INFO, ROTATED_INFO):
        assert info["private_key"].splitlines()[1] not in logs


# -------------------------------------------------------------------------- curl


def curl(env: Env, endpoint: str, body: Any, *flags: str) -> str:
    return curl_invocation(env.gateway.url, endpoint, body, *flags).stdout.decode()


def test_curl_stream_and_rate_limit_headers(env: Env) -> None:
    out = curl(env, "chat", {"messages": USER, "stream": True}, "-N")
    lines = [line for line in out.split("\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Simulated reply from gemini-2.0-flash to: hello there friend"
    assert chunks[-1]["usage"]["total_tokens"] == 11
    env.fault(model="gemini-2.0-flash", status=429)
    head = curl(env, "chat", {"messages": USER}, "-i")
    assert head.startswith("HTTP/1.1 429")
    assert "\nRetry-After: 1\r" in head
    assert '"error_code":"REQUEST_LIMIT_EXCEEDED"' in head


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
