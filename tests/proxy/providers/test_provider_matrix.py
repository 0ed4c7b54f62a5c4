"""Every provider x every task it serves, through ONE real ``servegate serve`` process in
front of all five simulators, called with curl: a plain answer (content and usage), and
upstream 400/401/429/500 errors (one-shot faults) wrapped with the README's error codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from servegate.simulators.ai21 import create_ai21_app
from servegate.simulators.anthropic import create_anthropic_app
from servegate.simulators.bedrock import create_bedrock_app
from servegate.simulators.cohere import create_cohere_app
from servegate.simulators.vertex import create_vertex_app, generate_service_account
from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    curl_invocation,
    endpoint_doc,
    http_call,
    start_site,
    write_secret,
    write_yaml,
)

pytestmark = pytest.mark.timeout(60)

ANTHROPIC_KEY = "sk-ant-matrix-key-1"
COHERE_KEY = "co-matrix-key-1"
AI21_KEY = "ai21-matrix-key-1"
AWS_KEY, AWS_SECRET = "AKIAMATRIXBEDROCK001", "matrix/secret/access/key/000000000000001"
VERTEX_INFO, VERTEX_KEY = generate_service_account(project_id="proj-matrix")

CHAT, COMPLETIONS, EMBEDDINGS = "llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings"


@dataclass(frozen=True)
class Case:
    provider: str
    task: str
    model: str
    """The model the provider is configured with; also the key the simulator's faults match
    (request model for Anthropic and Cohere, model id in the path for Bedrock, publisher
    model id for Vertex, model in the path for AI21)."""
    family: str = ""  # Bedrock only: bedrock_provider

    @property
    def endpoint(self) -> str:
        return f"{self.provider}-{self.task.rsplit('/', 1)[-1]}"

    @property
    def id(self) -> str:
        return self.endpoint


CASES = [
    Case("anthropic", CHAT, "claude-3-5-haiku-latest"),
    Case("anthropic", COMPLETIONS, "claude-2.1"),
    Case("cohere", CHAT, "command-r-plus"),
    Case("cohere", COMPLETIONS, "command"),
    Case("cohere", EMBEDDINGS, "embed-v4.0"),
    Case("amazon-bedrock", CHAT, "us.anthropic.claude-3-5-haiku-20241022-v1:0", "anthropic"),
    Case("amazon-bedrock", COMPLETIONS, "amazon.titan-text-express-v1", "amazon"),
    Case("amazon-bedrock", EMBEDDINGS, "amazon.titan-embed-text-v2:0", "amazon"),
    Case("google-cloud-vertex-ai", CHAT, "gemini-2.0-flash"),
    Case("google-cloud-vertex-ai", COMPLETIONS, "gemini-1.5-flash"),
    Case("google-cloud-vertex-ai", EMBEDDINGS, "text-embedding-004"),
    Case("ai21labs", COMPLETIONS, "j2-mid"),
]

# README "Errors": a provider error keeps the provider's status; error_code by status.
ERRORS = [
    pytest.param(400, "BAD_REQUEST", id="400"),
    pytest.param(401, "UNAUTHENTICATED", id="401"),
    pytest.param(429, "REQUEST_LIMIT_EXCEEDED", id="429"),
    pytest.param(500, "INTERNAL_ERROR", id="500"),
]

BODIES: dict[str, dict[str, Any]] = {
    CHAT: {"messages": [{"role": "user", "content": "hello there friend"}], "max_tokens": 50},
    COMPLETIONS: {"prompt": "Once upon a time", "max_tokens": 50},
    EMBEDDINGS: {"input": "hello there friend"},
}


def entity(case: Case, sims: dict[str, str]) -> dict[str, Any]:
    base = sims[case.provider]
    config: dict[str, Any]
    if case.provider == "anthropic":
        key = "anthropic_config"
        config = {"anthropic_api_key": "{{secrets/anthropic/api_key}}", "anthropic_api_base": base}
    elif case.provider == "cohere":
        key = "cohere_config"
        config = {"cohere_api_key": "{{secrets/cohere/api_key}}", "cohere_api_base": base}
    elif case.provider == "amazon-bedrock":
        key = "amazon_bedrock_config"
        config = {
            "aws_region": "us-east-1",
            "bedrock_provider": case.family,
            "bedrock_endpoint_url": base,
            "aws_access_key_id": "{{secrets/aws/access_key_id}}",
            "aws_secret_access_key": "{{secrets/aws/secret_access_key}}",
        }
    elif case.provider == "google-cloud-vertex-ai":
        key = "google_cloud_vertex_ai_config"
        config = {
            "project_id": "proj-matrix",
            "region": "us-central1",
            "private_key": "{{secrets/gcp/sa}}",
            "vertex_api_base": base,
        }
    else:
        key = "ai21labs_config"
        config = {"ai21labs_api_key": "{{secrets/ai21/api_key}}", "ai21labs_api_base": base}
    return {
        "name": "entity",
        "external_model": {
            "name": case.model,
            "provider": case.provider,
            "task": case.task,
            key: config,
        },
    }


@dataclass
class Env:
    gateway: GatewayProcess
    sims: dict[str, str]
    loop: BackgroundLoop

    def sim(self, provider: str, method: str, path: str, body: Any = None) -> Any:
        status, _, data = self.loop.run(http_call(method, self.sims[provider] + path, body))
        assert status < 300, (provider, path, status, data)
        return data


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop) -> Iterator[Env]:
    apps = {
        "anthropic": create_anthropic_app(api_keys={ANTHROPIC_KEY}),
        "cohere": create_cohere_app(api_keys=[COHERE_KEY]),
        "amazon-bedrock": create_bedrock_app(credentials={AWS_KEY: AWS_SECRET}),
        "google-cloud-vertex-ai": create_vertex_app(accounts=[VERTEX_KEY]),
        "ai21labs": create_ai21_app(api_keys={AI21_KEY}),
    }
    runners = []
    sims: dict[str, str] = {}
    try:
        for provider, app in apps.items():
            runner, url = background_loop.run(start_site(app))
            runners.append(runner)
            sims[provider] = url
        root = tmp_path_factory.mktemp("matrix")
        secrets = root / "secrets"
        write_secret(secrets, "anthropic", "api_key", ANTHROPIC_KEY)
        write_secret(secrets, "cohere", "api_key", COHERE_KEY)
        write_secret(secrets, "ai21", "api_key", AI21_KEY)
        write_secret(secrets, "aws", "access_key_id", AWS_KEY)
        write_secret(secrets, "aws", "secret_access_key", AWS_SECRET)
        vertex_key = {**VERTEX_INFO, "token_uri": sims["google-cloud-vertex-ai"] + "/token"}
        write_secret(secrets, "gcp", "sa", json.dumps(vertex_key))
        write_yaml(
            root / "manifests" / "matrix.yaml",
            *(endpoint_doc(case.endpoint, [entity(case, sims)]) for case in CASES),
        )
        gateway = GatewayProcess(
            ["serve", str(root / "manifests"), "--secrets-dir", str(secrets)],
            root / "gateway.log",
        )
        try:
            yield Env(gateway=gateway, sims=sims, loop=background_loop)
        finally:
            gateway.stop()
    finally:
        for runner in runners:
            background_loop.run(runner.cleanup())


@pytest.fixture(autouse=True)
def _no_faults(env: Env) -> Iterator[None]:
    for provider in env.sims:
        env.sim(provider, "DELETE", "/_sim/faults")
    yield
    for provider in env.sims:
        env.sim(provider, "DELETE", "/_sim/faults")


def curl(env: Env, endpoint: str, body: Any) -> tuple[int, Any]:
    """(status, JSON body) of one POST to the endpoint, made with curl."""
    out = curl_invocation(env.gateway.url, endpoint, body, "--max-time", "20", "-w", "%{http_code}")
    text = out.stdout.decode()
    assert out.returncode == 0, (out.returncode, out.stderr.decode(), env.gateway.logs()[-2000:])
    raw, status = text[:-3], int(text[-3:])
    return status, json.loads(raw)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_plain_call(env: Env, case: Case) -> None:
    status, body = curl(env, case.endpoint, BODIES[case.task])
    assert status == 200, body
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0, usage
    if case.task == EMBEDDINGS:
        assert body["data"][0]["embedding"], body
        assert usage["total_tokens"] >= usage["prompt_tokens"]
    elif case.task == CHAT:
        assert body["choices"][0]["message"]["content"], body
        assert usage["completion_tokens"] > 0, usage
    else:
        assert body["choices"][0]["text"], body
        assert usage["completion_tokens"] > 0, usage


@pytest.mark.parametrize(("status", "code"), ERRORS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_upstream_error(env: Env, case: Case, status: int, code: str) -> None:
    env.sim(
        case.provider, "POST", "/_sim/faults", {"model": case.model, "status": status, "times": 1}
    )
    got, body = curl(env, case.endpoint, BODIES[case.task])
    assert (got, body["error_code"]) == (status, code), body
    wrapped = json.loads(body["message"])
    assert wrapped["external_model_provider"] == case.provider
    assert wrapped["external_model_error"], wrapped
    # the one-shot fault was used up by this call: nothing is left pending
    assert env.sim(case.provider, "GET", "/_sim/faults")["faults"] == []
