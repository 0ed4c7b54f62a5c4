"""The platform documentation's control-plane examples, unchanged, against ``servegate serve
--state-dir`` (a real process), with the real clients over real HTTP.

``mlflow.deployments`` creates the documentation's Anthropic, Azure OpenAI and Amazon
Bedrock endpoints with their exact bodies: real provider hostnames, ``{{secrets/...}}``
references, no test-only base URL. The OpenAI client queries them as the documentation
does. The gateway reaches the providers the way a corporate network would: through an
egress HTTPS proxy (``HTTPS_PROXY``; ``tests/egress.py``) that tunnels api.anthropic.com,
my-azure-openai-endpoint.openai.azure.com and bedrock-runtime.us-east-1.amazonaws.com to
the simulators, each serving TLS with a certificate for its real hostname from a throwaway
CA the gateway trusts through ``SSL_CERT_FILE``. The simulators check the credentials
(``x-api-key``, ``api-key``, SigV4), so an answer means the right key reached the right host.

Then databricks-sdk drives the same API (``create_and_wait``, ``update_config_and_wait``,
``put_ai_gateway``, ``patch``, ``get``, ``list``, ``delete``); a plaintext key is followed
everywhere it could leak; and API-created endpoints outlive the process that created them.
"""

from __future__ import annotations

import asyncio
import json
import stat
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import trustme
from aiohttp import web
from databricks.sdk import WorkspaceClient
from databricks.sdk import errors as dberrors
from databricks.sdk.service.serving import (
    AiGatewayConfig,
    AiGatewayRateLimit,
    AiGatewayRateLimitKey,
    AiGatewayRateLimitRenewalPeriod,
    AiGatewayUsageTrackingConfig,
    AnthropicConfig,
    ChatMessage,
    ChatMessageRole,
    EndpointCoreConfigInput,
    EndpointStateConfigUpdate,
    EndpointTag,
    ExternalModel,
    ExternalModelProvider,
    FallbackConfig,
    OpenAiConfig,
    ServedEntityInput,
)

from servegate.simulators.anthropic import create_anthropic_app
from servegate.simulators.azure_openai import create_azure_openai_app
from servegate.simulators.bedrock import create_bedrock_app
from servegate.simulators.faults import RecordedRequest, control_of
from tests.conftest import BackgroundLoop, GatewayProcess, write_auth_file, write_secret
from tests.egress import EgressProxy, serve_tls

TOKEN = "dapi-docs-admin-token"  # in group admins: may write
ANTHROPIC_KEY = "sk-ant-docs-example-key"
AZURE_KEY = "azure-docs-example-key"
AWS_KEY_ID = "AKIADOCSEXAMPLE00001"
AWS_SECRET = "docs/example/aws/secret+key00"
AWS_REGION = "us-east-1"  # the documentation's "<YOUR_AWS_REGION>"
AZURE_DEPLOYMENT = "my-gpt-35-turbo-deployment"
# A plaintext key that must never leak; the Anthropic simulator accepts it.
CANARY = f"sk-ant-CANARY-{uuid.uuid4().hex}"

ANTHROPIC_HOST = "api.anthropic.com"
AZURE_HOST = "my-azure-openai-endpoint.openai.azure.com"
BEDROCK_HOST = f"bedrock-runtime.{AWS_REGION}.amazonaws.com"
# servegate sends the documentation's Bedrock model name as the model id, verbatim.
BEDROCK_MODEL_ID = "claude-v2"

# ---------------------------------------------------------------- the documentation's bodies

ANTHROPIC_EXAMPLE: dict[str, Any] = {
    "served_entities": [
        {
            "external_model": {
                "name": "claude-2",
                "provider": "anthropic",
                "task": "llm/v1/completions",
                "anthropic_config": {
                    "anthropic_api_key": "{{secrets/my_anthropic_secret_scope/anthropic_api_key}}"
                },
            }
        }
    ]
}
AZURE_EXAMPLE: dict[str, Any] = {
    "served_entities": [
        {
            "external_model": {
                "name": "gpt-35-turbo",
                "provider": "openai",
                "task": "llm/v1/chat",
                "openai_config": {
                    "openai_api_type": "azure",
                    "openai_api_key": "{{secrets/my_openai_secret_scope/openai_api_key}}",
                    "openai_api_base": "https://my-azure-openai-endpoint.openai.azure.com",
                    "openai_deployment_name": AZURE_DEPLOYMENT,
                    "openai_api_version": "2023-05-15",
                },
            }
        }
    ]
}
BEDROCK_EXAMPLE: dict[str, Any] = {
    "served_entities": [
        {
            "external_model": {
                "name": "claude-v2",
                "provider": "amazon-bedrock",
                "task": "llm/v1/completions",
                "amazon_bedrock_config": {
                    "aws_region": AWS_REGION,
                    "aws_access_key_id": (
                        "{{secrets/my_amazon_bedrock_secret_scope/aws_access_key_id}}"
                    ),
                    "aws_secret_access_key": (
                        "{{secrets/my_amazon_bedrock_secret_scope/aws_secret_access_key}}"
                    ),
                    "bedrock_provider": "anthropic",
                },
            }
        }
    ]
}


# ---------------------------------------------------------------- the network


@dataclass
class Upstreams:
    """The providers on their real hostnames behind an egress proxy."""

    loop: BackgroundLoop
    proxy: EgressProxy
    proxy_url: str
    ca_file: Path
    apps: dict[str, web.Application]
    """Simulator app by hostname."""

    def gateway_env(self) -> dict[str, str]:
        return {
            "HTTPS_PROXY": self.proxy_url,
            "https_proxy": self.proxy_url,
            "SSL_CERT_FILE": str(self.ca_file),
        }

    def requests(self, host: str) -> list[RecordedRequest]:
        """What the simulator for ``host`` received (read on its own loop)."""
        app = self.apps[host]

        async def read() -> list[RecordedRequest]:
            return control_of(app).requests()

        return self.loop.run(read())


@pytest.fixture(scope="module")
def upstreams(
    tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop
) -> Iterator[Upstreams]:
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    apps = {
        ANTHROPIC_HOST: create_anthropic_app(api_keys=(ANTHROPIC_KEY, CANARY)),
        AZURE_HOST: create_azure_openai_app(
            api_keys=(AZURE_KEY,), deployments={AZURE_DEPLOYMENT: "gpt-35-turbo"}
        ),
        BEDROCK_HOST: create_bedrock_app(
            credentials={AWS_KEY_ID: AWS_SECRET}, region=AWS_REGION, models=(BEDROCK_MODEL_ID,)
        ),
    }
    runners: list[web.AppRunner] = []
    routes: dict[str, int] = {}
    for host, app in apps.items():
        runner, port = background_loop.run(serve_tls(app, ca, host))
        runners.append(runner)
        routes[f"{host}:443"] = port
    proxy = EgressProxy(routes)
    proxy_url = background_loop.run(proxy.start())
    yield Upstreams(background_loop, proxy, proxy_url, ca_file, apps)
    background_loop.run(proxy.close())
    for runner in runners:
        background_loop.run(runner.cleanup())


@dataclass
class Dirs:
    root: Path
    manifests: Path
    state: Path
    secrets: Path
    auth: Path


def make_dirs(root: Path) -> Dirs:
    dirs = Dirs(root, root / "manifests", root / "state", root / "secrets", root / "auth.yaml")
    dirs.manifests.mkdir(parents=True)
    write_secret(dirs.secrets, "my_anthropic_secret_scope", "anthropic_api_key", ANTHROPIC_KEY)
    write_secret(dirs.secrets, "my_openai_secret_scope", "openai_api_key", AZURE_KEY)
    write_secret(dirs.secrets, "my_amazon_bedrock_secret_scope", "aws_access_key_id", AWS_KEY_ID)
    write_secret(
        dirs.secrets, "my_amazon_bedrock_secret_scope", "aws_secret_access_key", AWS_SECRET
    )
    write_auth_file(dirs.auth, {TOKEN: ("admin@corp.example", ["admins"])})
    return dirs


def start_gateway(dirs: Dirs, upstreams: Upstreams, log_name: str) -> GatewayProcess:
    return GatewayProcess(
        [
            "--log-level",
            "DEBUG",
            "serve",
            str(dirs.manifests),
            "--state-dir",
            str(dirs.state),
            "--secrets-dir",
            str(dirs.secrets),
            "--auth-file",
            str(dirs.auth),
            "--access-log",
            "--first-byte-timeout",
            "5",
        ],
        dirs.root / log_name,
        env=upstreams.gateway_env(),
    )


@dataclass
class Served:
    gateway: GatewayProcess
    dirs: Dirs


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams) -> Iterator[Served]:
    dirs = make_dirs(tmp_path_factory.mktemp("control-clients"))
    gateway = start_gateway(dirs, upstreams, "gateway.log")
    yield Served(gateway, dirs)
    gateway.stop()


def mlflow_client(monkeypatch: pytest.MonkeyPatch, host: str) -> Any:
    """``get_deploy_client("databricks")`` configured as the documentation says: by
    ``DATABRICKS_HOST`` and ``DATABRICKS_TOKEN`` (and no MLflow retries, so a failure shows
    at once)."""
    from mlflow.deployments import get_deploy_client

    monkeypatch.setenv("DATABRICKS_HOST", host)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "5")
    return get_deploy_client("databricks")  # type: ignore[no-untyped-call]


@pytest.fixture
def deploy_client(served: Served, monkeypatch: pytest.MonkeyPatch) -> Any:
    return mlflow_client(monkeypatch, served.gateway.url)


def docs_openai_client(host: str) -> openai.OpenAI:
    """The documentation's query client, as the documentation builds it."""
    return openai.OpenAI(api_key=TOKEN, base_url=f"{host}/serving-endpoints")


def no_retry_client(host: str) -> openai.OpenAI:
    """For an expected 429: the default client would wait out the Retry-After."""
    return openai.OpenAI(api_key=TOKEN, base_url=f"{host}/serving-endpoints", max_retries=0)


def create_legacy(client: Any, name: str, config: dict[str, Any]) -> Any:
    """``create_endpoint(name=..., config=...)`` exactly as the documentation calls it
    (MLflow warns that this form is deprecated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return client.create_endpoint(name=name, config=config)


def raw_get(url: str, path: str) -> str:
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


# ---------------------------------------------------------------- mlflow.deployments, the docs


def test_documentation_examples_through_an_egress_proxy(
    served: Served, upstreams: Upstreams, deploy_client: Any
) -> None:
    client = deploy_client
    host = served.gateway.url
    tunnels_before, refused_before = len(upstreams.proxy.tunnels), len(upstreams.proxy.refused)

    # Anthropic completions: the documentation's create call and query, verbatim.
    created = create_legacy(client, "anthropic-completions-endpoint", ANTHROPIC_EXAMPLE)
    assert created["name"] == "anthropic-completions-endpoint"
    assert created["state"]["config_update"] == "NOT_UPDATING"
    assert created["config"]["config_version"] == 1
    completion = docs_openai_client(host).completions.create(
        model="anthropic-completions-endpoint", prompt="what is databricks", temperature=1.0
    )
    assert completion.choices[0].text.startswith("Simulated reply from claude-2")
    sent = upstreams.requests(ANTHROPIC_HOST)[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["host"] == ANTHROPIC_HOST
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert sent["json"]["model"] == "claude-2"
    assert sent["json"]["temperature"] == 1.0
    assert sent["json"]["messages"] == [{"role": "user", "content": "what is databricks"}]

    # Azure OpenAI chat.
    create_legacy(client, "openai-chat-endpoint", AZURE_EXAMPLE)
    chat = docs_openai_client(host).chat.completions.create(
        model="openai-chat-endpoint",
        messages=[{"role": "user", "content": "What is a mixture of experts model?"}],
    )
    assert chat.choices[0].message.content
    sent = upstreams.requests(AZURE_HOST)[-1]
    assert sent["path"] == f"/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"
    assert sent["query"] == {"api-version": "2023-05-15"}
    assert sent["headers"]["host"] == AZURE_HOST
    assert sent["headers"]["api-key"] == AZURE_KEY
    assert "authorization" not in sent["headers"]  # the caller's token stays at the gateway

    # Amazon Bedrock completions (Anthropic on Bedrock).
    create_legacy(client, "bedrock-anthropic-completions-endpoint", BEDROCK_EXAMPLE)
    bedrock = docs_openai_client(host).completions.create(
        model="bedrock-anthropic-completions-endpoint", prompt="what is databricks"
    )
    assert bedrock.choices[0].text.startswith(f"Simulated reply from {BEDROCK_MODEL_ID}")
    sent = upstreams.requests(BEDROCK_HOST)[-1]
    assert sent["path"] == f"/model/{BEDROCK_MODEL_ID}/converse"
    assert sent["headers"]["host"] == BEDROCK_HOST
    authorization = sent["headers"]["authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/")
    assert f"/{AWS_REGION}/bedrock/aws4_request" in authorization  # verified by the simulator

    # Every upstream call went through the proxy, as TLS, to the right hosts only.
    tunnels = upstreams.proxy.tunnels[tunnels_before:]
    assert {t.target for t in tunnels} == {
        f"{h}:443" for h in (ANTHROPIC_HOST, AZURE_HOST, BEDROCK_HOST)
    }
    assert all(t.carried_tls for t in tunnels)
    assert len(upstreams.proxy.refused) == refused_before

    # The rest of the deployment client's control plane.
    names = {
        "anthropic-completions-endpoint",
        "openai-chat-endpoint",
        "bedrock-anthropic-completions-endpoint",
    }
    assert names <= {e["name"] for e in client.list_endpoints()}
    got = client.get_endpoint("openai-chat-endpoint")
    external = got["config"]["served_entities"][0]["external_model"]
    assert external["openai_config"]["openai_api_key"] == (
        "{{secrets/my_openai_secret_scope/openai_api_key}}"
    )
    assert got["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}

    new_config = json.loads(json.dumps(ANTHROPIC_EXAMPLE))
    new_config["served_entities"][0]["external_model"]["name"] = "claude-2.1"
    updated = client.update_endpoint_config("anthropic-completions-endpoint", new_config)
    assert updated["config"]["config_version"] == 2
    answer = docs_openai_client(host).completions.create(
        model="anthropic-completions-endpoint", prompt="again"
    )
    assert answer.choices[0].text.startswith("Simulated reply from claude-2.1")

    gateway_config = {
        "usage_tracking_config": {"enabled": True},
        "rate_limits": [{"calls": 1, "key": "endpoint", "renewal_period": "minute"}],
    }
    echoed = client.update_endpoint_ai_gateway("openai-chat-endpoint", gateway_config)
    assert echoed["rate_limits"][0]["calls"] == 1
    assert echoed["usage_tracking_config"] == {"enabled": True}
    # The new limit is live at once: one call a minute, then 429 with a Retry-After.
    hello: list[Any] = [{"role": "user", "content": "hi"}]
    no_retry_client(host).chat.completions.create(model="openai-chat-endpoint", messages=hello)
    with pytest.raises(openai.RateLimitError) as limited:
        no_retry_client(host).chat.completions.create(model="openai-chat-endpoint", messages=hello)
    assert int(limited.value.response.headers["retry-after"]) > 0

    legacy_limits = {"rate_limits": [{"calls": 50, "key": "user", "renewal_period": "minute"}]}
    limits = client.update_endpoint_rate_limits(
        "bedrock-anthropic-completions-endpoint", legacy_limits
    )
    assert limits["rate_limits"][0]["calls"] == 50
    tags = client.update_endpoint_tags(
        "bedrock-anthropic-completions-endpoint",
        {"add_tags": [{"key": "team", "value": "gen-ai"}, {"key": "tmp", "value": "x"}]},
    )
    assert {t["key"] for t in tags["tags"]} == {"team", "tmp"}
    tags = client.update_endpoint_tags(
        "bedrock-anthropic-completions-endpoint", {"delete_tags": ["tmp"]}
    )
    assert tags["tags"] == [{"key": "team", "value": "gen-ai"}]
    got = client.get_endpoint("bedrock-anthropic-completions-endpoint")
    assert got["tags"] == [{"key": "team", "value": "gen-ai"}]

    for name in sorted(names):
        assert client.delete_endpoint(name) == {}
    assert not names & {e["name"] for e in client.list_endpoints()}
    with pytest.raises(Exception, match="not found"):
        client.get_endpoint("openai-chat-endpoint")
    assert not list((served.dirs.state / "endpoints").glob("*.yaml"))


# ---------------------------------------------------------------- databricks-sdk


def test_databricks_sdk_control_plane(served: Served, upstreams: Upstreams) -> None:
    w = WorkspaceClient(host=served.gateway.url, token=TOKEN)
    name = "sdk-chat"
    wait = timedelta(seconds=10)
    entity = ServedEntityInput(
        name="claude",
        external_model=ExternalModel(
            name="claude-3-5-sonnet-20241022",
            provider=ExternalModelProvider.ANTHROPIC,
            task="llm/v1/chat",
            anthropic_config=AnthropicConfig(
                anthropic_api_key="{{secrets/my_anthropic_secret_scope/anthropic_api_key}}"
            ),
        ),
    )
    created = w.serving_endpoints.create_and_wait(
        name,
        config=EndpointCoreConfigInput(name=name, served_entities=[entity]),
        ai_gateway=AiGatewayConfig(
            usage_tracking_config=AiGatewayUsageTrackingConfig(enabled=True)
        ),
        tags=[EndpointTag(key="team", value="ml")],
        timeout=wait,
    )
    assert created.state and created.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
    assert created.config and created.config.config_version == 1
    assert created.tags == [EndpointTag(key="team", value="ml")]
    answer = w.serving_endpoints.query(
        name=name, messages=[ChatMessage(role=ChatMessageRole.USER, content="hello")]
    )
    assert answer.served_model_name == "claude"
    assert upstreams.requests(ANTHROPIC_HOST)[-1]["json"]["model"] == "claude-3-5-sonnet-20241022"

    # Switch provider: the same endpoint now answers from Azure OpenAI.
    azure = ServedEntityInput(
        name="azure",
        external_model=ExternalModel(
            name="gpt-35-turbo",
            provider=ExternalModelProvider.OPENAI,
            task="llm/v1/chat",
            openai_config=OpenAiConfig(
                openai_api_type="azure",
                openai_api_key="{{secrets/my_openai_secret_scope/openai_api_key}}",
                openai_api_base="https://my-azure-openai-endpoint.openai.azure.com",
                openai_deployment_name=AZURE_DEPLOYMENT,
                openai_api_version="2023-05-15",
            ),
        ),
    )
    before = len(upstreams.requests(AZURE_HOST))
    updated = w.serving_endpoints.update_config_and_wait(
        name, served_entities=[azure], timeout=wait
    )
    assert updated.config and updated.config.config_version == 2
    assert updated.state and updated.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
    answer = w.serving_endpoints.query(
        name=name, messages=[ChatMessage(role=ChatMessageRole.USER, content="hello")]
    )
    assert answer.served_model_name == "azure"
    assert len(upstreams.requests(AZURE_HOST)) == before + 1

    put = w.serving_endpoints.put_ai_gateway(
        name,
        usage_tracking_config=AiGatewayUsageTrackingConfig(enabled=False),
        fallback_config=FallbackConfig(enabled=False),
        rate_limits=[
            AiGatewayRateLimit(
                renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE,
                calls=100,
                key=AiGatewayRateLimitKey.USER,
            )
        ],
    )
    assert put.rate_limits and put.rate_limits[0].calls == 100
    assert put.usage_tracking_config and put.usage_tracking_config.enabled is False
    assert version(w, name) == 3  # servegate counts every change (README, Control plane)
    tags = w.serving_endpoints.patch(
        name, add_tags=[EndpointTag(key="env", value="dev")], delete_tags=["team"]
    )
    assert tags.tags == [EndpointTag(key="env", value="dev")]

    got = w.serving_endpoints.get(name)
    assert got.config and got.config.config_version == 4
    assert got.state and got.state.config_update == EndpointStateConfigUpdate.NOT_UPDATING
    assert got.tags == [EndpointTag(key="env", value="dev")]
    assert got.ai_gateway and got.ai_gateway.rate_limits
    assert got.ai_gateway.rate_limits[0].key == AiGatewayRateLimitKey.USER
    assert name in {e.name for e in w.serving_endpoints.list()}

    w.serving_endpoints.delete(name)
    with pytest.raises(dberrors.NotFound):
        w.serving_endpoints.get(name)
    assert name not in {e.name for e in w.serving_endpoints.list()}


def version(w: WorkspaceClient, name: str) -> int | None:
    got = w.serving_endpoints.get(name)
    return got.config.config_version if got.config else None


# ---------------------------------------------------------------- plaintext keys


def test_a_plaintext_key_lives_only_in_one_secret_file(
    served: Served, upstreams: Upstreams
) -> None:
    w = WorkspaceClient(host=served.gateway.url, token=TOKEN)
    name = "canary-chat"
    entity = ServedEntityInput(
        external_model=ExternalModel(
            name="claude-3-haiku",
            provider=ExternalModelProvider.ANTHROPIC,
            task="llm/v1/chat",
            anthropic_config=AnthropicConfig(anthropic_api_key_plaintext=CANARY),
        )
    )
    created = w.serving_endpoints.create_and_wait(
        name,
        config=EndpointCoreConfigInput(name=name, served_entities=[entity]),
        timeout=timedelta(seconds=10),
    )
    assert CANARY not in json.dumps(created.as_dict())
    answer = w.serving_endpoints.query(
        name=name, messages=[ChatMessage(role=ChatMessageRole.USER, content="hello")]
    )
    assert answer.choices
    assert upstreams.requests(ANTHROPIC_HOST)[-1]["headers"]["x-api-key"] == CANARY
    # Through the proxy the key only ever travelled inside TLS.
    assert all(t.carried_tls for t in upstreams.proxy.tunnels)

    url = served.gateway.url
    for path in (
        f"/api/2.0/serving-endpoints/{name}",
        "/api/2.0/serving-endpoints",
        "/api/2.0/serving-endpoints/",
        "/v1/models",
    ):
        assert CANARY not in raw_get(url, path), path
    got = w.serving_endpoints.get(name)
    assert got.config and got.config.served_entities
    external = got.config.served_entities[0].external_model
    assert external and external.anthropic_config
    assert external.anthropic_config.anthropic_api_key_plaintext is None
    reference = external.anthropic_config.anthropic_api_key or ""
    assert reference.startswith(f"{{{{secrets/{name}-credentials/")

    stored = [p for p in served.dirs.state.rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if CANARY in p.read_text(errors="replace")]
    holders = [
        p
        for p in served.dirs.secrets.rglob("*")
        if p.is_file() and CANARY in p.read_text(errors="replace")
    ]
    assert len(holders) == 1, holders
    assert stat.S_IMODE(holders[0].stat().st_mode) == 0o600
    assert holders[0].parent.name == f"{name}-credentials"
    assert reference == f"{{{{secrets/{name}-credentials/{holders[0].name}}}}}"

    w.serving_endpoints.delete(name)
    assert not holders[0].exists()
    assert CANARY not in served.gateway.logs()


# ---------------------------------------------------------------- restart


def test_api_created_endpoints_survive_a_restart(
    tmp_path: Path, upstreams: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs = make_dirs(tmp_path)
    first = start_gateway(dirs, upstreams, "first.log")
    try:
        client = mlflow_client(monkeypatch, first.url)
        create_legacy(client, "anthropic-completions-endpoint", ANTHROPIC_EXAMPLE)
        update = client.update_endpoint_tags(
            "anthropic-completions-endpoint", {"add_tags": [{"key": "kept", "value": "yes"}]}
        )
        assert update["tags"] == [{"key": "kept", "value": "yes"}]
    finally:
        first.stop()
    assert first.proc.returncode is not None

    second = start_gateway(dirs, upstreams, "second.log")
    try:
        client = mlflow_client(monkeypatch, second.url)
        got = client.get_endpoint("anthropic-completions-endpoint")
        assert got["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
        assert got["tags"] == [{"key": "kept", "value": "yes"}]
        completion = docs_openai_client(second.url).completions.create(
            model="anthropic-completions-endpoint", prompt="what is databricks", temperature=1.0
        )
        assert completion.choices[0].text.startswith("Simulated reply from claude-2")
        assert client.delete_endpoint("anthropic-completions-endpoint") == {}
    finally:
        second.stop()


def test_config_version_and_creation_time_survive_a_restart(
    tmp_path: Path, upstreams: Upstreams
) -> None:
    dirs = make_dirs(tmp_path)
    first = start_gateway(dirs, upstreams, "first.log")
    try:
        w = WorkspaceClient(host=first.url, token=TOKEN)
        config = EndpointCoreConfigInput.from_dict({"name": "kept", **ANTHROPIC_EXAMPLE})
        w.serving_endpoints.create_and_wait("kept", config=config, timeout=timedelta(seconds=10))
        w.serving_endpoints.patch("kept", add_tags=[EndpointTag(key="v", value="2")])
        before = w.serving_endpoints.get("kept")
        assert before.config and before.config.config_version == 2
    finally:
        first.stop()
    second = start_gateway(dirs, upstreams, "second.log")
    try:
        after = WorkspaceClient(host=second.url, token=TOKEN).serving_endpoints.get("kept")
    finally:
        second.stop()
    assert after.tags == before.tags  # the manifest itself came back
    assert after.config and after.config.config_version == 2
    assert after.creation_timestamp == before.creation_timestamp


# ---------------------------------------------------------------- the proxy is the only way out


async def ask_proxy(proxy_url: str, head: bytes) -> str:
    """The status line the proxy answers ``head`` with."""
    host, port = proxy_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
    try:
        writer.write(head)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    return line.decode().strip()


def test_nothing_leaves_but_through_the_proxy_to_the_allowed_hosts(
    served: Served, upstreams: Upstreams, deploy_client: Any
) -> None:
    # An endpoint on a host the proxy does not tunnel (api.openai.com, the default base):
    # the gateway has no other way out, so the query fails and the proxy saw the attempt.
    body = {
        "name": "openai-direct",
        "config": {
            "served_entities": [
                {
                    "external_model": {
                        "name": "gpt-4o-mini",
                        "provider": "openai",
                        "task": "llm/v1/chat",
                        "openai_config": {
                            "openai_api_key": "{{secrets/my_openai_secret_scope/openai_api_key}}"
                        },
                    }
                }
            ]
        },
    }
    assert deploy_client.create_endpoint(config=body)["name"] == "openai-direct"
    with pytest.raises(openai.APIStatusError) as blocked:
        no_retry_client(served.gateway.url).chat.completions.create(
            model="openai-direct", messages=[{"role": "user", "content": "hi"}]
        )
    assert blocked.value.status_code == 502
    assert "CONNECT api.openai.com:443 HTTP/1.1" in upstreams.proxy.refused
    assert deploy_client.delete_endpoint("openai-direct") == {}

    # The proxy itself refuses other hosts and anything but CONNECT.
    run, url = upstreams.loop.run, upstreams.proxy_url
    assert (
        run(ask_proxy(url, b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")) == "HTTP/1.1 403 Forbidden"
    )
    assert run(ask_proxy(url, b"CONNECT api.anthropic.com:80 HTTP/1.1\r\n\r\n")).endswith(
        "403 Forbidden"
    )
    plain = b"GET http://api.anthropic.com/v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\n\r\n"
    assert run(ask_proxy(url, plain)) == "HTTP/1.1 403 Forbidden"
    assert run(ask_proxy(url, b"CONNECT api.anthropic.com:443 HTTP/1.1\r\n\r\n")) == (
        "HTTP/1.1 200 Connection Established"
    )
