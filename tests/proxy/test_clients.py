"""The three real clients, unchanged, over real HTTP against ``servegate serve`` (a real
process) in front of the OpenAI simulator: chat, streaming, completions, embeddings,
list/get, and the error paths each client has to map."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk import errors as dberrors
from databricks.sdk.core import Config
from databricks.sdk.service.serving import ChatMessage, ChatMessageRole

from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    SimulatedGateway,
    endpoint_doc,
    openai_entity,
    start_site,
    write_auth_file,
    write_secret,
    write_yaml,
)

TOKEN = "dapi-client-test-token"
KEY = "sk-client-test-key"


Env = SimulatedGateway


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop) -> Iterator[Env]:
    from servegate.simulators.openai import create_openai_app

    runner, sim_url = background_loop.run(start_site(create_openai_app(api_keys={KEY})))
    root = tmp_path_factory.mktemp("clients")
    base = sim_url + "/v1"
    write_secret(root / "secrets", "openai", "api_key", KEY)
    write_yaml(
        root / "manifests" / "endpoints.yaml",
        endpoint_doc("chat", [openai_entity("gpt-4o-mini", base)]),
        endpoint_doc(
            "emb", [openai_entity("text-embedding-3-small", base, task="llm/v1/embeddings")]
        ),
        endpoint_doc(
            "comp", [openai_entity("gpt-3.5-turbo-instruct", base, task="llm/v1/completions")]
        ),
    )
    auth = write_auth_file(root / "auth.yaml", {TOKEN: ("ana@example.com", ["ds"])})
    gateway = GatewayProcess(
        [
            "serve",
            str(root / "manifests"),
            "--secrets-dir",
            str(root / "secrets"),
            "--auth-file",
            str(auth),
            "--first-byte-timeout",
            "1",
        ],
        root / "gateway.log",
    )
    yield Env(gateway=gateway, sim_url=sim_url, loop=background_loop)
    gateway.stop()
    background_loop.run(runner.cleanup())


@pytest.fixture(autouse=True)
def _no_faults(env: Env) -> Iterator[None]:
    env.clear_faults()
    yield
    env.clear_faults()


def query(content: str = "hello") -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


# ---------------------------------------------------------------- OpenAI SDK


@pytest.fixture
def oai(env: Env) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=env.gateway.url + "/serving-endpoints", api_key=TOKEN, max_retries=0
    )


def test_openai_chat_completions_embeddings(oai: openai.OpenAI) -> None:
    chat = oai.chat.completions.create(model="chat", messages=query(), max_tokens=10)  # type: ignore[arg-type]
    assert chat.choices[0].message.content
    assert chat.usage is not None and chat.usage.total_tokens > 0
    comp = oai.completions.create(model="comp", prompt="Say hi", max_tokens=5)
    assert comp.choices[0].text
    emb = oai.embeddings.create(model="emb", input=["a", "b"])  # SDK asks for base64
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    assert [m.id for m in oai.models.list()] == ["chat", "comp", "emb"]


def test_openai_streaming(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model="chat", messages=query("one two three"), stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None


def test_openai_errors(env: Env, oai: openai.OpenAI) -> None:
    bad = openai.OpenAI(
        base_url=env.gateway.url + "/serving-endpoints", api_key="wrong", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="chat", messages=query())  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError, match="'ghost' not found") as missing:
        oai.chat.completions.create(model="ghost", messages=query())  # type: ignore[arg-type]
    assert missing.value.response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\]\.role"):
        oai.chat.completions.create(model="chat", messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item]
    env.fault(model="gpt-4o-mini", status=429, headers={"Retry-After": "2"})
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model="chat", messages=query())  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"] == "2"
    assert "external_model_provider" in str(limited.value)
    env.fault(model="gpt-4o-mini", status=500)
    with pytest.raises(openai.InternalServerError, match="external_model_error"):
        oai.chat.completions.create(model="chat", messages=query())  # type: ignore[arg-type]
    env.fault(model="gpt-4o-mini", latency_ms=2500)
    with pytest.raises(openai.APIStatusError) as timeout:
        oai.chat.completions.create(model="chat", messages=query())  # type: ignore[arg-type]
    assert timeout.value.status_code == 504


# ---------------------------------------------------------------- databricks-sdk


@pytest.fixture
def workspace_client(env: Env) -> WorkspaceClient:
    return WorkspaceClient(
        config=Config(host=env.gateway.url, token=TOKEN, retry_timeout_seconds=3)
    )


def test_databricks_sdk_query_list_get(workspace_client: WorkspaceClient) -> None:
    w = workspace_client
    r = w.serving_endpoints.query(
        name="chat",
        messages=[ChatMessage(role=ChatMessageRole.USER, content="hi")],
        max_tokens=5,
        extra_params={"top_p": "0.5"},
        client_request_id="cr1",
        usage_context={"app": "x"},
    )
    assert r.served_model_name == "gpt-4o-mini"
    assert r.choices and r.choices[0].message and r.choices[0].message.content
    assert w.serving_endpoints.query(name="comp", prompt="Say hi").choices
    emb = w.serving_endpoints.query(name="emb", input=["a"])
    assert emb.data and emb.data[0].embedding
    assert sorted(ep.name or "" for ep in w.serving_endpoints.list()) == ["chat", "comp", "emb"]
    got = w.serving_endpoints.get("chat")
    assert got.state and got.state.ready and got.state.ready.value == "READY"
    assert got.state.config_update and got.state.config_update.value == "NOT_UPDATING"
    assert got.config and got.config.served_entities
    external = got.config.served_entities[0].external_model
    assert external and external.openai_config
    assert external.openai_config.openai_api_key == "{{secrets/openai/api_key}}"


def test_databricks_sdk_errors(env: Env, workspace_client: WorkspaceClient) -> None:
    bad = WorkspaceClient(
        config=Config(host=env.gateway.url, token="wrong", retry_timeout_seconds=3)
    )
    with pytest.raises(dberrors.Unauthenticated):
        bad.serving_endpoints.get("chat")
    with pytest.raises(dberrors.NotFound):
        workspace_client.serving_endpoints.get("ghost")
    with pytest.raises(dberrors.NotFound):
        workspace_client.serving_endpoints.query(name="ghost", prompt="x")
    with pytest.raises(dberrors.InvalidParameterValue, match="temperature"):
        workspace_client.serving_endpoints.query(
            name="chat",
            messages=[ChatMessage(role=ChatMessageRole.USER, content="x")],
            temperature=9.0,
        )
    # A 429 with a truthful Retry-After is retried by the SDK and then succeeds.
    env.fault(model="gpt-4o-mini", status=429, headers={"Retry-After": "1"}, times=1)
    ok = workspace_client.serving_endpoints.query(
        name="chat", messages=[ChatMessage(role=ChatMessageRole.USER, content="x")]
    )
    assert ok.choices
    env.fault(model="gpt-4o-mini", status=500)
    with pytest.raises(dberrors.InternalError, match="external_model_provider"):
        workspace_client.serving_endpoints.query(
            name="chat", messages=[ChatMessage(role=ChatMessageRole.USER, content="x")]
        )
    env.fault(model="gpt-4o-mini", latency_ms=2500)
    with pytest.raises(dberrors.DeadlineExceeded) as timed_out:
        workspace_client.serving_endpoints.query(
            name="chat", messages=[ChatMessage(role=ChatMessageRole.USER, content="x")]
        )
    # The SDK parses the fault's details: which failure it was, and which provider.
    [info] = timed_out.value.get_error_info()
    assert info.reason == "UPSTREAM_TIMEOUT"
    assert info.metadata["external_model_provider"] == "openai"


# ---------------------------------------------------------------- mlflow.deployments


@pytest.fixture
def mlflow_client(env: Env, monkeypatch: pytest.MonkeyPatch) -> Any:
    from mlflow.deployments import get_deploy_client

    monkeypatch.setenv("DATABRICKS_HOST", env.gateway.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "3")
    return get_deploy_client("databricks")


def test_mlflow_predict_stream_get_list(mlflow_client: Any) -> None:
    out = mlflow_client.predict(endpoint="chat", inputs={"messages": query(), "max_tokens": 5})
    assert out["choices"][0]["message"]["content"]
    chunks = list(
        mlflow_client.predict_stream(endpoint="chat", inputs={"messages": query("a b c")})
    )
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert chunks[-1]["usage"]["total_tokens"] > 0
    assert mlflow_client.predict(endpoint="emb", inputs={"input": "x"})["data"][0]["embedding"]
    assert mlflow_client.predict(endpoint="comp", inputs={"prompt": "hi"})["choices"][0]["text"]
    assert mlflow_client.get_endpoint("chat")["name"] == "chat"
    assert sorted(ep["name"] for ep in mlflow_client.list_endpoints()) == ["chat", "comp", "emb"]


def test_mlflow_errors(env: Env, mlflow_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.deployments import get_deploy_client
    from mlflow.exceptions import MlflowException

    with pytest.raises((MlflowException, Exception), match="not found"):
        mlflow_client.get_endpoint("ghost")
    with pytest.raises(Exception, match=r"messages\[0\]\.role"):
        mlflow_client.predict(
            endpoint="chat", inputs={"messages": [{"role": "robot", "content": "x"}]}
        )
    env.fault(model="gpt-4o-mini", status=500)
    with pytest.raises(Exception, match="external_model_provider"):
        mlflow_client.predict(endpoint="chat", inputs={"messages": query()})
    # An upstream 429 with a truthful Retry-After: retried after it, then answered.
    env.fault(model="gpt-4o-mini", status=429, headers={"Retry-After": "1"}, times=1)
    assert mlflow_client.predict(endpoint="chat", inputs={"messages": query()})["choices"]
    env.fault(model="gpt-4o-mini", latency_ms=2500)
    with pytest.raises(Exception, match="did not answer"):
        mlflow_client.predict(endpoint="chat", inputs={"messages": query()})
    monkeypatch.setenv("DATABRICKS_TOKEN", "wrong")
    with pytest.raises(Exception, match=r"(?i)invalid access token|401"):
        get_deploy_client("databricks").get_endpoint("chat")


# ---------------------------------------------------------------- curl


def test_curl_round_trip(env: Env) -> None:
    import subprocess

    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps({"messages": query()}),
            f"{env.gateway.url}/serving-endpoints/chat/invocations",
        ],
        capture_output=True,
        check=True,
        timeout=30,
        text=True,
    )
    assert json.loads(out.stdout)["choices"][0]["message"]["content"]


def test_no_secret_in_logs(env: Env) -> None:
    assert KEY not in env.gateway.logs()
    assert TOKEN not in env.gateway.logs()
    assert "Traceback" not in env.gateway.logs()
