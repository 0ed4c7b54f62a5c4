"""One canary sweep: every credential kind through every output channel.

One real ``servegate serve`` process (``--log-level DEBUG``, ``--access-log``, an auth file,
usage and payload rows on the default JSON-lines log sink) serves an endpoint per credential
kind, each holding its own canary value: OpenAI (plaintext and reference), Azure OpenAI by
key and by Microsoft Entra ID, Anthropic, Cohere, AI21, Amazon Bedrock access keys, a Vertex
AI service-account key, a Databricks serving token and a custom provider's bearer token; the
client's own auth-file token is a canary too. Each endpoint answers a unary call and a
stream, then upstream errors that echo its credentials back (unary and streamed), and a bad
body; Entra ID and Google token exchanges are made to fail; manifests set both halves of a
credential pair. Then every channel is read: every response (body and headers), every GET
route, the gateway's stdout and its stderr at DEBUG (access log and records included). No
canary may appear anywhere, raw, URL-encoded or in base64; nor in ``repr()``/``str()`` of the
runtime config when it is loaded in-process.
"""

from __future__ import annotations

import base64
import queue
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web

from servegate.config import ConfigSource, RuntimeConfig
from servegate.secretstore import SecretStore
from servegate.simulators.custom import create_custom_app
from servegate.simulators.server import (
    AzureSimConfig,
    CustomSimConfig,
    EntraSimConfig,
    OpenAISimConfig,
    ProviderSimConfig,
    RunningSimulators,
    SimulatorConfig,
    run_simulators,
)
from servegate.simulators.vertex import generate_service_account
from servegate.transport.credentials import CredentialRegistry
from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    endpoint_doc,
    start_site,
    write_auth_file,
    write_secret,
    write_yaml,
)

pytestmark = pytest.mark.timeout(60)

# ------------------------------------------------------------------------------ canaries

OPENAI_PLAIN = "sk-CANARY-openai-plain-5b1f7e"
OPENAI_REF = "sk-CANARY-openai-ref-c93a01"
AZURE_KEY = "CANARY-azure-key-0d8e44aa"
ENTRA_SECRET = "CANARY~entra.secret_9f2Q"
ENTRA_WRONG = "CANARY~entra.wrong_31xR"  # configured for client-2, whose secret is another
ENTRA_ECHOED = "CANARY~entra.echoed_77aB"  # client-3: right, but the token endpoint echoes it
ANTHROPIC_KEY = "sk-ant-CANARY-anthropic-6c2d"
COHERE_KEY = "CANARY-cohere-key-4e7a90"
AI21_KEY = "CANARY-ai21-key-b81c3d"
AWS_KEY_ID = "AKIACANARY7Q2XKEYID1"
AWS_SECRET = "CANARY/aws+secret/Kq81Zr4TbW0sx9+LmN2pQ"
DBX_TOKEN = "dapiCANARY0e5d7c4b3a29181f"
CUSTOM_TOKEN = "CANARY-custom-bearer-2f6e"
CLIENT_TOKEN = "CANARY-client-token-a1b2c3"
WRONG_CLIENT_TOKEN = "CANARY-wrong-client-token-d4e5"
# Values only invalid manifests hold: both halves of a pair set, or a key in a reference field.
INVALID_PLAINTEXT = {
    "openai": "sk-CANARY-invalid-openai-01",
    "azure": "CANARY-invalid-azure-02",
    "entra": "CANARY~invalid.entra_03",
    "anthropic": "sk-ant-CANARY-invalid-04",
    "cohere": "CANARY-invalid-cohere-05",
    "ai21": "CANARY-invalid-ai21-06",
    "bedrock": "CANARY/invalid+aws/secret07",
    "dbx": "dapiCANARYinvalid08",
    "custom": "CANARY-invalid-custom-09",
    "header": "CANARY-invalid-header-10",
}
RAW_IN_REFERENCE = "sk-CANARY-raw-in-reference-11"

# Vertex AI: the endpoint's key (A), a registered key whose token exchange fails with an
# answer echoing it (B), and a key Google does not know (C). Canaries: a line from the middle
# of each PEM, and each private_key_id.
VERTEX_A, VERTEX_A_KEY = generate_service_account(project_id="canary-proj")
VERTEX_B, VERTEX_B_KEY = generate_service_account(project_id="canary-proj")
VERTEX_C, _ = generate_service_account(project_id="canary-proj")


def _pem_line(info: dict[str, str]) -> str:
    lines = info["private_key"].splitlines()
    return lines[len(lines) // 2]


VERTEX_CANARIES = {
    f"vertex {label} {part}": value
    for label, info in (("A", VERTEX_A), ("B", VERTEX_B), ("C", VERTEX_C))
    for part, value in (("pem", _pem_line(info)), ("key id", info["private_key_id"]))
}

CANARIES: dict[str, str] = {
    "openai plaintext": OPENAI_PLAIN,
    "openai reference": OPENAI_REF,
    "azure key": AZURE_KEY,
    "entra secret": ENTRA_SECRET,
    "entra wrong secret": ENTRA_WRONG,
    "entra echoed secret": ENTRA_ECHOED,
    "anthropic key": ANTHROPIC_KEY,
    "cohere key": COHERE_KEY,
    "ai21 key": AI21_KEY,
    "aws access key id": AWS_KEY_ID,
    "aws secret access key": AWS_SECRET,
    "databricks token": DBX_TOKEN,
    "custom bearer token": CUSTOM_TOKEN,
    "client token": CLIENT_TOKEN,
    "wrong client token": WRONG_CLIENT_TOKEN,
    "raw key in a reference field": RAW_IN_REFERENCE,
    **{f"invalid manifest {kind}": value for kind, value in INVALID_PLAINTEXT.items()},
    **VERTEX_CANARIES,
}
assert len(set(CANARIES.values())) == len(CANARIES)


def _encodings(value: str) -> dict[str, str]:
    """The forms a value can leak in: raw, URL-encoded, JSON-escaped, and base64 (standard
    and URL-safe, at each of the three alignments it can have inside a longer text)."""
    forms = {
        "raw": value,
        "url-encoded": quote(value, safe=""),
        "form-encoded": quote_plus(value),
        "json-escaped": value.replace("/", "\\/"),
    }
    data = value.encode()
    for skip in range(3):
        whole = len(data[skip:]) // 3 * 4  # base64 characters that depend only on the value
        forms[f"base64+{skip}"] = base64.b64encode(data[skip:]).decode()[:whole]
        forms[f"base64url+{skip}"] = base64.urlsafe_b64encode(data[skip:]).decode()[:whole]
    return forms


NEEDLES = [
    (label, form, needle)
    for label, value in CANARIES.items()
    for form, needle in _encodings(value).items()
]


def leaks(text: str) -> list[str]:
    """Each canary found in ``text`` (in the first of its forms found), with context."""
    found: dict[str, str] = {}
    for label, form, needle in NEEDLES:
        at = -1 if label in found else text.find(needle)
        if at >= 0:
            found[label] = f"{label} ({form}): ...{text[max(0, at - 60) : at + 60]!r}..."
    return list(found.values())


# ------------------------------------------------------------------------------ manifests

CHAT = {"messages": [{"role": "user", "content": "hello canary sweep"}]}
PROMPT = {"prompt": "hello canary sweep"}
GOVERNED = {
    "usage_tracking_config": {"enabled": True},
    "inference_table_config": {"enabled": True, "catalog_name": "ml", "schema_name": "logs"},
}


def _entity(provider: str, model: str, config: dict[str, Any], task: str) -> dict[str, Any]:
    key = {
        "openai": "openai_config",
        "anthropic": "anthropic_config",
        "cohere": "cohere_config",
        "ai21labs": "ai21labs_config",
        "amazon-bedrock": "amazon_bedrock_config",
        "google-cloud-vertex-ai": "google_cloud_vertex_ai_config",
        "databricks-model-serving": "databricks_model_serving_config",
        "custom": "custom_provider_config",
    }[provider]
    return {"external_model": {"name": model, "provider": provider, "task": task, key: config}}


def _azure(base: str, deployment: str, **auth: str) -> dict[str, Any]:
    return {
        "openai_api_type": "azuread" if "microsoft_entra_client_id" in auth else "azure",
        "openai_api_base": base,
        "openai_deployment_name": deployment,
        "openai_api_version": "2024-06-01",
        **auth,
    }


def _entra(client: str, secret_ref: str) -> dict[str, str]:
    return {
        "microsoft_entra_tenant_id": "tenant-canary",
        "microsoft_entra_client_id": client,
        "microsoft_entra_client_secret": secret_ref,
    }


def _vertex(base: str, **key: str) -> dict[str, Any]:
    return {"project_id": "canary-proj", "region": "us-central1", "vertex_api_base": base, **key}


def _key_file(info: dict[str, str], sims: RunningSimulators) -> str:
    return orjson.dumps({**info, "token_uri": sims.root_url("vertex") + "/token"}).decode()


@dataclass(frozen=True)
class Case:
    """One endpoint that answers: what it holds, and how its upstream echoes it back."""

    endpoint: str
    sim: str
    """The simulator's root URL (``/_sim`` lives there)."""
    fault_model: str | None
    """What a fault matches at that simulator (model, deployment; None: anything)."""
    secrets: tuple[str, ...]
    task: str = "llm/v1/chat"
    echo_status: int = 401
    """The status of the echoing upstream error, and of the gateway's answer to it."""
    echo_headers: dict[str, str] = field(default_factory=dict)

    @property
    def query(self) -> dict[str, Any]:
        return CHAT if self.task == "llm/v1/chat" else PROMPT

    @property
    def bad_query(self) -> dict[str, Any]:
        return {"messages": "not a list"} if self.task == "llm/v1/chat" else {"prompt": {"x": 1}}


@dataclass(frozen=True)
class Refused:
    """An endpoint whose credentials the token endpoint refuses."""

    endpoint: str
    status: int
    says: str
    secrets: tuple[str, ...]


def _write_workspace(root: Path, sims: RunningSimulators, dbx_url: str) -> list[Case]:
    secrets = root / "secrets"
    for scope, key, value in (
        ("openai", "key", OPENAI_REF),
        ("azure", "key", AZURE_KEY),
        ("azure", "entra", ENTRA_SECRET),
        ("azure", "entra-wrong", ENTRA_WRONG),
        ("azure", "entra-echoed", ENTRA_ECHOED),
        ("cohere", "key", COHERE_KEY),
        ("ai21", "key", AI21_KEY),
        ("aws", "key-id", AWS_KEY_ID),
        ("gcp", "sa", _key_file(VERTEX_A, sims)),
        ("gcp", "stranger", _key_file(VERTEX_C, sims)),
        ("dbx", "token", DBX_TOKEN),
        ("custom", "token", CUSTOM_TOKEN),
    ):
        write_secret(secrets, scope, key, value)
    openai_base = sims.openai_url
    azure, vertex = sims.azure_url, sims.root_url("vertex")
    anthropic, cohere = sims.root_url("anthropic"), sims.root_url("cohere")
    ai21, bedrock = sims.root_url("ai21"), sims.root_url("bedrock")
    claude, bedrock_claude = "claude-3-5-sonnet-20241022", "anthropic.claude-3-haiku-20240307-v1:0"
    completions = "llm/v1/completions"
    bedrock_keys = {
        "aws_region": "us-east-1",
        "bedrock_provider": "anthropic",
        "bedrock_endpoint_url": bedrock,
        "aws_access_key_id": "{{secrets/aws/key-id}}",
        "aws_secret_access_key_plaintext": AWS_SECRET,
    }
    good = {
        "openai-plain": _entity(
            "openai",
            "plain-model",
            {"openai_api_base": openai_base, "openai_api_key_plaintext": OPENAI_PLAIN},
            "llm/v1/chat",
        ),
        "openai-ref": _entity(
            "openai",
            "ref-model",
            {"openai_api_base": openai_base, "openai_api_key": "{{secrets/openai/key}}"},
            "llm/v1/chat",
        ),
        "azure-key": _entity(
            "openai",
            "gpt-4o",
            _azure(azure, "dep-key", openai_api_key="{{secrets/azure/key}}"),
            "llm/v1/chat",
        ),
        "azure-entra": _entity(
            "openai",
            "gpt-4o",
            _azure(azure, "dep-entra", **_entra("client-1", "{{secrets/azure/entra}}")),
            "llm/v1/chat",
        ),
        "anthropic": _entity(
            "anthropic",
            claude,
            {"anthropic_api_base": anthropic, "anthropic_api_key_plaintext": ANTHROPIC_KEY},
            "llm/v1/chat",
        ),
        "cohere": _entity(
            "cohere",
            "command-r",
            {"cohere_api_base": cohere, "cohere_api_key": "{{secrets/cohere/key}}"},
            "llm/v1/chat",
        ),
        "ai21": _entity(
            "ai21labs",
            "j2-mid",
            {"ai21labs_api_base": ai21, "ai21labs_api_key": "{{secrets/ai21/key}}"},
            completions,
        ),
        "bedrock": _entity("amazon-bedrock", bedrock_claude, bedrock_keys, "llm/v1/chat"),
        "vertex": _entity(
            "google-cloud-vertex-ai",
            "gemini-2.0-flash",
            _vertex(vertex, private_key="{{secrets/gcp/sa}}"),
            "llm/v1/chat",
        ),
        "dbx": _entity(
            "databricks-model-serving",
            "team-chat",
            {"databricks_workspace_url": dbx_url, "databricks_api_token": "{{secrets/dbx/token}}"},
            "llm/v1/chat",
        ),
        "custom": _entity(
            "custom",
            "llama",
            {
                "custom_provider_url": sims.custom_url,
                "bearer_token_auth": {"token": "{{secrets/custom/token}}"},
            },
            "llm/v1/chat",
        ),
        # Token exchanges that fail: a wrong Entra secret, an Entra answer echoing the
        # secret, a Google answer echoing the key, a key Google does not know.
        "entra-wrong": _entity(
            "openai",
            "gpt-4o",
            _azure(azure, "dep-wrong", **_entra("client-2", "{{secrets/azure/entra-wrong}}")),
            "llm/v1/chat",
        ),
        "entra-echo": _entity(
            "openai",
            "gpt-4o",
            _azure(azure, "dep-echo", **_entra("client-3", "{{secrets/azure/entra-echoed}}")),
            "llm/v1/chat",
        ),
        "vertex-echo": _entity(
            "google-cloud-vertex-ai",
            "gemini-2.0-flash",
            _vertex(vertex, private_key_plaintext=_key_file(VERTEX_B, sims)),
            "llm/v1/chat",
        ),
        "vertex-stranger": _entity(
            "google-cloud-vertex-ai",
            "gemini-2.0-flash",
            _vertex(vertex, private_key="{{secrets/gcp/stranger}}"),
            "llm/v1/chat",
        ),
    }
    write_yaml(
        root / "manifests" / "endpoints.yaml",
        *(endpoint_doc(name, [e], ai_gateway=GOVERNED) for name, e in good.items()),
    )
    write_yaml(root / "manifests" / "invalid.yaml", *_invalid_docs(good))
    return [
        Case("openai-plain", sims.root_url("openai"), "plain-model", (OPENAI_PLAIN,)),
        Case("openai-ref", sims.root_url("openai"), "ref-model", (OPENAI_REF,)),
        Case("azure-key", azure, "dep-key", (AZURE_KEY,)),
        Case("azure-entra", azure, "dep-entra", (ENTRA_SECRET,)),
        Case("anthropic", anthropic, claude, (ANTHROPIC_KEY,)),
        Case("cohere", cohere, "command-r", (COHERE_KEY,)),
        Case("ai21", ai21, "j2-mid", (AI21_KEY,), task=completions),
        Case(
            "bedrock",
            bedrock,
            bedrock_claude,
            (AWS_KEY_ID, AWS_SECRET),
            echo_status=403,
            echo_headers={"x-amzn-ErrorType": "UnrecognizedClientException"},
        ),
        Case(
            "vertex",
            vertex,
            "gemini-2.0-flash",
            (_pem_line(VERTEX_A), VERTEX_A["private_key_id"], VERTEX_A["private_key"]),
        ),
        Case("dbx", dbx_url, None, (DBX_TOKEN,)),
        Case("custom", sims.root_url("custom"), "llama", (CUSTOM_TOKEN,)),
    ]


def _invalid_docs(good: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every kind of credential pair with both halves set, and a raw key as a reference."""

    def both(name: str, pair: str, kind: str, nested: str | None = None) -> dict[str, Any]:
        entity = orjson.loads(orjson.dumps(good[name]))
        model = entity["external_model"]
        config_key = next(k for k in model if k.endswith("_config"))
        target = model[config_key][nested] if nested else model[config_key]
        target[pair] = "{{secrets/openai/key}}"
        target[pair + "_plaintext"] = INVALID_PLAINTEXT[kind]
        return endpoint_doc(f"invalid-{kind}", [entity])

    header = orjson.loads(orjson.dumps(good["custom"]))
    custom = header["external_model"]["custom_provider_config"]
    header["external_model"]["custom_provider_config"] = {
        "custom_provider_url": custom["custom_provider_url"],
        "api_key_auth": {
            "key": "X-Api-Key",
            "value": "{{secrets/custom/token}}",
            "value_plaintext": INVALID_PLAINTEXT["header"],
        },
    }
    raw = orjson.loads(orjson.dumps(good["openai-ref"]))
    raw["external_model"]["openai_config"]["openai_api_key"] = RAW_IN_REFERENCE
    vertex = orjson.loads(orjson.dumps(good["vertex"]))
    vertex_config = vertex["external_model"]["google_cloud_vertex_ai_config"]
    vertex_config["private_key_plaintext"] = orjson.dumps(VERTEX_C).decode()
    return [
        both("openai-ref", "openai_api_key", "openai"),
        both("azure-key", "openai_api_key", "azure"),
        both("azure-entra", "microsoft_entra_client_secret", "entra"),
        both("anthropic", "anthropic_api_key", "anthropic"),
        both("cohere", "cohere_api_key", "cohere"),
        both("ai21", "ai21labs_api_key", "ai21"),
        both("bedrock", "aws_secret_access_key", "bedrock"),
        both("dbx", "databricks_api_token", "dbx"),
        both("custom", "token", "custom", nested="bearer_token_auth"),
        endpoint_doc("invalid-header", [header]),
        endpoint_doc("invalid-vertex", [vertex]),
        endpoint_doc("invalid-raw-reference", [raw]),
    ]


INVALID = [*(f"invalid-{k}" for k in INVALID_PLAINTEXT), "invalid-vertex", "invalid-raw-reference"]
REFUSED = [
    Refused("entra-wrong", 502, "invalid_client", (ENTRA_WRONG,)),
    Refused("entra-echo", 502, "invalid_client", (ENTRA_ECHOED,)),
    Refused(
        "vertex-echo", 401, "invalid_grant", (VERTEX_B["private_key"], VERTEX_B["private_key_id"])
    ),
    Refused(
        "vertex-stranger",
        401,
        "invalid_grant",
        (VERTEX_C["private_key"], VERTEX_C["private_key_id"]),
    ),
]


# ------------------------------------------------------------------------------ fixtures


def _databricks_app() -> web.Application:
    """A workspace serving endpoint: the custom simulator's chat answers (and faults, and
    request log) on ``/serving-endpoints/{name}/invocations``, behind DBX_TOKEN."""
    app = create_custom_app(bearer_token=DBX_TOKEN)
    chat = next(
        route.handler
        for route in app.router.routes()
        if route.method == "POST" and route.resource is not None
        and route.resource.canonical == "/v1/chat/completions"
    )  # fmt: skip
    app.router.add_post("/serving-endpoints/{name}/invocations", chat)
    return app


@dataclass
class Env:
    root: Path
    sims: RunningSimulators
    cases: list[Case]
    ca_path: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, background_loop: BackgroundLoop) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("canary")
    ca = trustme.CA()  # MSAL only talks to an https authority
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = root / "cert.pem", root / "key.pem", root / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    config = SimulatorConfig(
        openai=OpenAISimConfig(api_keys=(OPENAI_PLAIN, OPENAI_REF)),
        azure=AzureSimConfig(api_keys=(AZURE_KEY,)),
        entra=EntraSimConfig(
            clients={
                "client-1": ENTRA_SECRET,
                "client-2": "the-real-secret-of-client-2",
                "client-3": ENTRA_ECHOED,
            },
            tls_cert=cert_path,
            tls_key=key_path,
        ),
        custom=CustomSimConfig(bearer_token=CUSTOM_TOKEN),
        providers={
            "anthropic": ProviderSimConfig(options={"api_keys": [ANTHROPIC_KEY]}),
            "cohere": ProviderSimConfig(options={"api_keys": [COHERE_KEY]}),
            "ai21": ProviderSimConfig(options={"api_keys": [AI21_KEY]}),
            "bedrock": ProviderSimConfig(options={"credentials": {AWS_KEY_ID: AWS_SECRET}}),
            "vertex": ProviderSimConfig(options={"accounts": [VERTEX_A_KEY, VERTEX_B_KEY]}),
        },
    )
    stack = AsyncExitStack()
    sims = background_loop.run(stack.enter_async_context(run_simulators(config)))
    dbx_runner, dbx_url = background_loop.run(start_site(_databricks_app()))
    try:
        cases = _write_workspace(root, sims, dbx_url)
        write_auth_file(root / "auth.yaml", {CLIENT_TOKEN: ("sweeper", ["admins"])})
        yield Env(root, sims, cases, ca_path)
    finally:
        background_loop.run(dbx_runner.cleanup())
        background_loop.run(stack.aclose())


class SweptGateway(GatewayProcess):
    """A gateway process whose stdout is kept whole (the base class reads it only up to
    the line announcing the port)."""

    def _wait_for_url(self, timeout: float) -> str:
        self._stdout: queue.Queue[bytes] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def pump() -> None:
            for line in iter(stdout.readline, b""):
                self._stdout.put(line)
            self._stdout.put(b"")

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        self.stdout_lines: list[str] = []
        while True:
            try:
                line = self._stdout.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"gateway did not start in {timeout}s:\n{self.logs()}") from None
            if not line:
                self.stop()
                raise RuntimeError(f"gateway exited before listening:\n{self.logs()}")
            text = line.decode(errors="replace").rstrip("\n")
            self.stdout_lines.append(text)
            if text.startswith("servegate: listening on "):
                return text.rsplit("listening on ", 1)[1].split()[0]

    def stdout_text(self, timeout: float = 10) -> str:
        """Everything the stopped process wrote to stdout (waits for the end of it)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._stdout.get(timeout=max(0.0, deadline - time.monotonic()))
            if not line:
                return "\n".join(self.stdout_lines)
            self.stdout_lines.append(line.decode(errors="replace").rstrip("\n"))


# ------------------------------------------------------------------------------ traffic


@dataclass
class Reply:
    label: str
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return orjson.loads(self.text)


@dataclass
class Driver:
    session: aiohttp.ClientSession
    url: str
    seen: list[Reply] = field(default_factory=list)

    async def call(
        self, label: str, method: str, path: str, body: Any = None, token: str | None = CLIENT_TOKEN
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(
            method, self.url + path, json=body, headers=headers
        ) as resp:
            reply = Reply(label, resp.status, dict(resp.headers), await resp.text())
        self.seen.append(reply)
        return reply

    async def query(self, label: str, endpoint: str, body: Any) -> Reply:
        return await self.call(label, "POST", f"/serving-endpoints/{endpoint}/invocations", body)

    async def sim(self, method: str, url: str, body: Any = None) -> Any:
        async with self.session.request(method, url, json=body) as resp:
            assert resp.status == 200, (url, resp.status, await resp.text())
            return await resp.json()


def _answer_text(case: Case, reply: Reply) -> str:
    choice = reply.json()["choices"][0]
    return str(choice["message"]["content"] if case.task == "llm/v1/chat" else choice["text"])


def _stream_text(reply: Reply) -> str:
    """The text of an OpenAI-format stream; it must end with [DONE] and carry no error."""
    assert reply.text.endswith("data: [DONE]\n\n"), (reply.label, reply.text[-300:])
    text = []
    for line in reply.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = orjson.loads(line[6:])
            assert "error" not in chunk, (reply.label, chunk)
            for choice in chunk.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
    return "".join(text)


def _assert_redacted_echo(case: Case, reply: Reply, status: int) -> None:
    assert reply.status == status, (reply.label, reply.status, reply.text)
    message = orjson.loads(reply.json()["message"])
    assert message["external_model_provider"], reply.label
    assert "[REDACTED]" in reply.text, (reply.label, reply.text)


async def _bearer_seen_by(driver: Driver, sim: str) -> str:
    """The access token the gateway last presented to a simulator (Entra ID, Google)."""
    recorded = (await driver.sim("GET", sim + "/_sim/requests"))["requests"]
    scheme, _, token = str(recorded[-1]["headers"]["authorization"]).partition(" ")
    assert scheme == "Bearer" and token
    return token


async def _drive(driver: Driver, env: Env) -> dict[str, str]:
    """Every call the sweep makes; returns the access tokens the gateway fetched."""
    tokens: dict[str, str] = {}
    for case in env.cases:
        name = case.endpoint
        unary = await driver.query(f"{name} unary", name, case.query)
        assert unary.status == 200, (name, unary.text)
        assert _answer_text(case, unary), name
        assert unary.headers.get("served-model-name"), name
        streamed = await driver.query(f"{name} stream", name, {**case.query, "stream": True})
        assert streamed.status == 200, (name, streamed.text)
        assert _stream_text(streamed), name
        echoed = list(case.secrets)
        if name in ("azure-entra", "vertex"):  # an access token is a credential too
            tokens[name] = await _bearer_seen_by(driver, case.sim)
            echoed.append(tokens[name])
        fault = {
            "model": case.fault_model,
            "status": case.echo_status,
            "headers": case.echo_headers,
            "times": 2,
            "body": {
                "error": {
                    "message": f"Incorrect credentials provided: {' and '.join(echoed)}",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                },
                "message": f"The credentials {', '.join(echoed)} are invalid.",
            },
        }
        await driver.sim("POST", case.sim + "/_sim/faults", fault)
        reply = await driver.query(f"{name} echo", name, case.query)
        _assert_redacted_echo(case, reply, case.echo_status)
        reply = await driver.query(f"{name} echo stream", name, {**case.query, "stream": True})
        _assert_redacted_echo(case, reply, case.echo_status)
        bad = await driver.query(f"{name} bad input", name, case.bad_query)
        assert bad.status == 400, (name, bad.text)
        assert bad.json()["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE"), bad.text
    await _in_stream_echo(driver, env)
    await _token_refusals(driver, env)
    for name in INVALID:
        reply = await driver.query(f"{name} query", name, CHAT)
        assert reply.status == 503, (name, reply.text)
        assert "is not ready: its manifest is invalid" in reply.json()["message"], reply.text
        expected = "must be a secret reference" if name == "invalid-raw-reference" else "both"
        assert expected in reply.json()["message"], reply.text
    for label, token in (("no client token", None), ("wrong client token", WRONG_CLIENT_TOKEN)):
        reply = await driver.call(
            label, "POST", "/serving-endpoints/openai-ref/invocations", CHAT, token
        )
        assert reply.status == 401, (label, reply.text)
        reply = await driver.call(f"{label} GET", "GET", "/api/2.0/serving-endpoints", None, token)
        assert reply.status == 401, (label, reply.text)
    return tokens


async def _in_stream_echo(driver: Driver, env: Env) -> None:
    """Anthropic reports errors inside the stream too: an ``event: error`` echoing the key,
    right after ``message_start``. Read in one go with it, it is an error response (overloaded
    is 429); read after it, the client already has the role chunk: an in-band error frame."""
    case = next(c for c in env.cases if c.endpoint == "anthropic")
    fault = {
        "model": case.fault_model,
        "times": 1,
        "body": {
            "type": "error",
            "error": {"type": "overloaded_error", "message": f"key {ANTHROPIC_KEY} is overloaded"},
        },
    }
    await driver.sim("POST", case.sim + "/_sim/faults", fault)
    reply = await driver.query("anthropic in-stream echo", "anthropic", {**CHAT, "stream": True})
    if reply.status == 200:
        assert reply.text.endswith("data: [DONE]\n\n"), reply.text
        lines = reply.text.splitlines()
        frames = [orjson.loads(line[6:]) for line in lines if line.startswith("data: {")]
        error = frames[-1]["error"]
        assert error["code"] == "REQUEST_LIMIT_EXCEEDED", frames
        assert "[REDACTED]" in error["message"], frames
    else:
        _assert_redacted_echo(case, reply, 429)
    assert "overloaded_error" in reply.text, reply.text


async def _token_refusals(driver: Driver, env: Env) -> None:
    entra, vertex = env.sims.entra_authority_host, env.sims.root_url("vertex")
    entra_echo = {
        "model": "client-3",
        "status": 401,
        "times": 1,
        "body": {
            "error": "invalid_client",
            "error_description": f"AADSTS7000215: Invalid client secret provided: {ENTRA_ECHOED}",
            "error_codes": [7000215],
        },
    }
    await driver.sim("POST", entra + "/_sim/faults", entra_echo)
    vertex_echo = {
        "model": VERTEX_B["client_email"],
        "status": 400,
        "times": 1,
        "body": {
            "error": "invalid_grant",
            "error_description": (
                f"Invalid JWT Signature for key {VERTEX_B['private_key_id']}: "
                f"{VERTEX_B['private_key']}"
            ),
        },
    }
    await driver.sim("POST", vertex + "/_sim/faults", vertex_echo)
    for refused in REFUSED:
        reply = await driver.query(f"{refused.endpoint} token refused", refused.endpoint, CHAT)
        assert reply.status == refused.status, (refused.endpoint, reply.text)
        assert refused.says in reply.text, (refused.endpoint, reply.text)
    faults_left = [
        (await driver.sim("GET", sim + "/_sim/faults"))["faults"] for sim in (entra, vertex)
    ]
    assert faults_left == [[], []]  # both echoing token answers were served


async def _read_channels(driver: Driver) -> dict[str, Reply]:
    reads: dict[str, Reply] = {}
    paths = [
        "/api/2.0/serving-endpoints",
        "/v1/models",
        "/serving-endpoints/models",
        "/metrics",
        "/readyz",
        "/healthz",
        "/.well-known/databricks-config",
    ]
    listing = await driver.call("GET list", "GET", paths[0])
    names = [e["name"] for e in listing.json()["endpoints"]]
    for name in names:
        paths += [
            f"/api/2.0/serving-endpoints/{name}",
            f"/api/2.0/serving-endpoints/{name}/openapi",
        ]
    for path in paths:
        reads[path] = await driver.call(f"GET {path}", "GET", path)
    return reads


# ------------------------------------------------------------------------------ the tests


def test_no_canary_in_any_channel(env: Env, background_loop: BackgroundLoop) -> None:
    """The sweep through one gateway process; every call is checked for what it did."""
    options = {
        "--secrets-dir": str(env.root / "secrets"),
        "--auth-file": str(env.root / "auth.yaml"),
        "--entra-authority-host": env.sims.entra_authority_host,
        "--drain-delay": "0",
        "--grace-period": "5",
    }
    gateway = SweptGateway(
        ["--log-level", "DEBUG", "serve", str(env.root / "manifests"), "--access-log", "--no-watch"]
        + [word for option in options.items() for word in option],
        env.root / "gateway.stderr",
        env={
            "REQUESTS_CA_BUNDLE": str(env.ca_path),  # MSAL (requests) trusts the test CA
            "SERVEGATE_RECORDS_DSN": "",  # records on the log sink, whatever the environment
            "SERVEGATE_REDIS_URL": "",
            "SERVEGATE_AUTH": "",
            "SERVEGATE_STATE_DIR": "",
            "SERVEGATE_CONTROL_PLANE": "",
        },
    )

    async def run() -> tuple[Driver, dict[str, str], dict[str, Reply]]:
        trusted = ssl.create_default_context(cafile=str(env.ca_path))  # the Entra simulator
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as session:
            driver = Driver(session, gateway.url)
            tokens = await _drive(driver, env)
            return driver, tokens, await _read_channels(driver)

    try:
        driver, tokens, reads = background_loop.run(run(), timeout=40)
    finally:
        gateway.stop()
    stderr, stdout = gateway.logs(), gateway.stdout_text()

    # The channels hold what they should: the sweep did run.
    answered = {c.endpoint for c in env.cases}
    listed = {e["name"]: e for e in reads["/api/2.0/serving-endpoints"].json()["endpoints"]}
    assert set(listed) == answered | set(INVALID) | {r.endpoint for r in REFUSED}
    for name in INVALID:
        assert listed[name]["state"]["ready"] == "NOT_READY", listed[name]
    for path, reply in reads.items():
        expected = 200
        if path == "/.well-known/databricks-config":
            expected = 404  # "no host metadata", on purpose
        elif path.endswith("/openapi") and path.split("/")[-2] in INVALID:
            expected = 503  # a manifest that never validated has no document
        assert reply.status == expected, (path, reply.status, reply.text)
    assert "{{secrets/openai/key}}" in reads["/api/2.0/serving-endpoints/openai-ref"].text
    assert "_plaintext" not in reads["/api/2.0/serving-endpoints/openai-plain"].text
    models = {m["id"] for m in reads["/v1/models"].json()["data"]}
    assert answered <= models
    metrics = reads["/metrics"].text
    for name in answered:
        assert f'endpoint="{name}"' in metrics, name
    assert "request_id=" in stderr and "principal=sweeper" in stderr  # the access log ran
    assert " DEBUG " in stderr  # and the log level was DEBUG
    assert stdout.startswith("servegate: listening on ")
    rows = [
        orjson.loads(line.split(" servegate.records ", 1)[1])
        for line in stderr.splitlines()
        if " servegate.records " in line
    ]
    tables = {row["table"] for row in rows}
    assert {"endpoint_usage", "served_entities"} <= tables
    for case in env.cases:
        payloads = [r for r in rows if r["table"] == f"ml.logs.{case.endpoint}_payload"]
        assert any(r["status_code"] == 200 and r["response"] for r in payloads), case
        assert any(r["status_code"] == case.echo_status for r in payloads), case
    # 5 per answering endpoint, the in-stream echo, 1 per refused or invalid endpoint,
    # 4 without a valid client token, the listing and the reads.
    calls = 5 * len(env.cases) + 1 + len(REFUSED) + len(INVALID) + 4 + 1 + len(reads)
    assert len(driver.seen) == calls

    # No canary anywhere, nor the access tokens the gateway fetched with them.
    derived = [(f"access token {k}", v) for k, v in tokens.items()]
    found: list[str] = []
    for reply in driver.seen:
        text = reply.text + "\n" + "\n".join(f"{k}: {v}" for k, v in reply.headers.items())
        found += [f"{reply.label}: {leak}" for leak in leaks(text)]
        found += [f"{reply.label}: {label}" for label, v in derived if v in text]
    for channel, text in (("stderr", stderr), ("stdout", stdout)):
        found += [f"{channel}: {leak}" for leak in leaks(text)]
        found += [f"{channel}: {label}" for label, v in derived if v in text]
    assert not found, "\n".join(found)


def _load(env: Env) -> RuntimeConfig:
    """The runtime config, loaded in-process as the gateway loads it."""
    return ConfigSource(
        [env.root / "manifests"],
        SecretStore(env.root / "secrets"),
        CredentialRegistry(env.sims.entra_authority_host),
    ).load()


def test_runtime_config_shows_no_canary(env: Env) -> None:
    """The config the gateway builds, loaded in-process: its reprs and strs hide every value."""
    config = _load(env)
    assert len(config.endpoints) == len(env.cases) + len(REFUSED)
    assert set(config.invalid) == set(INVALID)
    shown = [repr(config), str(config)]
    for endpoint in config.endpoints.values():
        assert endpoint.ready, endpoint.problems
        shown += [repr(endpoint), str(endpoint), repr(endpoint.spec), str(endpoint.spec)]
        shown.append(endpoint.spec.model_dump_json())
        for entity in endpoint.entities.values():
            assert entity.provider is not None, entity.problem
            shown += [repr(entity), str(entity), repr(entity.model), str(entity.model)]
            shown += [repr(entity.provider), str(entity.provider)]
            shown += [repr(c) for c in entity.model.credentials()]
    for invalid in config.invalid.values():
        shown += [repr(invalid), str(invalid)]
    shown += [str(error) for error in config.errors]
    text = "\n".join(shown)
    assert "openai-plain" in text and "{{secrets/azure/entra}}" in text
    assert "**********" in text  # plaintext values are there, masked
    assert not leaks(text), "\n".join(leaks(text))


def _escaped(value: str) -> tuple[bytes, bytes]:
    """``value`` inside a JSON string, spelled two ways the raw text does not show: as an
    encoder that escapes ``/`` writes it (a PEM's newlines are ``\\n`` anyway), and with
    every character a ``\\u`` escape."""
    slashes = orjson.dumps(value)[1:-1].replace(b"/", b"\\/")
    return slashes, "".join(f"\\u{ord(c):04x}" for c in value).encode()


def test_escaped_echoes_are_scrubbed(env: Env) -> None:
    """An upstream may escape what it echoes (a Java service writes ``\\/``, a PEM's newlines
    are ``\\n``): the simulators never do, so each loaded provider is given such a body."""
    config = _load(env)
    held = {c.endpoint: c.secrets for c in env.cases} | {r.endpoint: r.secrets for r in REFUSED}
    checked = 0
    for name, values in held.items():
        (entity,) = config.endpoints[name].entities.values()
        assert entity.provider is not None, entity.problem
        spelled = [form for value in values for form in _escaped(value)]
        body = b'{"error": {"message": "bad credentials: ' + b", ".join(spelled)
        body += b'", "type": "invalid_request_error"}}'
        echoed = orjson.loads(body)["error"]["message"]
        assert all(v in echoed for v in values), name
        # The text shows only values the first spelling leaves as they are (no / or newline).
        assert not any(v in body.decode() for v in values if "/" in v or "\n" in v), name
        message = entity.provider.error(401, body, {}).message
        assert "bad credentials: [REDACTED]" in message, (name, message)
        assert not leaks(message), (name, leaks(message))
        checked += 1
    assert checked == len(env.cases) + len(REFUSED)
