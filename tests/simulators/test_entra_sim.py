"""The Entra ID simulator: raw OAuth2 client credentials, then the real msal over TLS."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal
import openai
import pytest
import trustme
from aiohttp.test_utils import TestClient

from servegate.simulators import (
    EntraSimConfig,
    RunningSimulators,
    SimulatorConfig,
    TokenRegistry,
    control_of,
    create_entra_app,
    run_simulators,
)

pytestmark = pytest.mark.timeout(20)

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "s3cr3t~value"
TENANT = "contoso-tenant"
SCOPE = "https://cognitiveservices.azure.com/.default"
TOKEN_PATH = f"/{TENANT}/oauth2/v2.0/token"


@pytest.fixture
def tokens() -> TokenRegistry:
    return TokenRegistry()


@pytest.fixture
async def sim(aiohttp_client: Any, tokens: TokenRegistry) -> TestClient[Any, Any]:
    app = create_entra_app(clients={CLIENT_ID: SECRET}, tokens=tokens)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def form(**overrides: str | None) -> dict[str, str]:
    fields: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "scope": SCOPE,
        **overrides,
    }
    return {k: v for k, v in fields.items() if v is not None}


async def test_openid_configuration_points_at_itself(sim: TestClient[Any, Any]) -> None:
    resp = await sim.get(f"/{TENANT}/v2.0/.well-known/openid-configuration")
    document = await resp.json()

    base = str(sim.make_url("")).rstrip("/")
    assert resp.status == 200
    assert document["token_endpoint"] == f"{base}/{TENANT}/oauth2/v2.0/token"
    assert document["authorization_endpoint"] == f"{base}/{TENANT}/oauth2/v2.0/authorize"
    assert document["issuer"] == f"{base}/{TENANT}/v2.0"
    assert document["jwks_uri"] == f"{base}/{TENANT}/discovery/v2.0/keys"
    assert "client_secret_post" in document["token_endpoint_auth_methods_supported"]
    assert (await (await sim.get(f"/{TENANT}/discovery/v2.0/keys")).json()) == {"keys": []}


async def test_client_credentials_grant_issues_a_token(
    sim: TestClient[Any, Any], tokens: TokenRegistry
) -> None:
    resp = await sim.post(TOKEN_PATH, data=form())
    body = await resp.json()

    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store, no-cache"
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3599
    assert tokens.issued_count == 1
    issued = tokens.lookup(body["access_token"])
    assert issued is not None
    assert (issued.client_id, issued.tenant) == (CLIENT_ID, TENANT)
    assert tokens.is_live(body["access_token"], audience="https://cognitiveservices.azure.com")


async def test_client_secret_basic_is_accepted(sim: TestClient[Any, Any]) -> None:
    credentials = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    resp = await sim.post(
        TOKEN_PATH,
        data=form(client_id=None, client_secret=None),
        headers={"Authorization": f"Basic {credentials}"},
    )

    assert resp.status == 200


@pytest.mark.parametrize(
    ("overrides", "status", "error", "code", "text"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client", 7000215, "Invalid client secret"),
        ({"client_secret": None}, 401, "invalid_client", 7000216, "'client_secret'"),
        ({"client_id": "nobody"}, 400, "unauthorized_client", 700016, "'nobody' was not found"),
        ({"grant_type": None}, 400, "invalid_request", 900144, "'grant_type'"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003, "'password'"),
        ({"scope": None}, 400, "invalid_request", 900144, "'scope'"),
        (
            {"scope": "https://cognitiveservices.azure.com/user_impersonation"},
            400,
            "invalid_scope",
            1002012,
            "Client credential flows must have a scope value with /.default",
        ),
    ],
)
async def test_token_errors_use_entras_envelope(
    sim: TestClient[Any, Any],
    tokens: TokenRegistry,
    overrides: dict[str, str | None],
    status: int,
    error: str,
    code: int,
    text: str,
) -> None:
    resp = await sim.post(
        TOKEN_PATH, data=form(**overrides), headers={"client-request-id": "corr-123"}
    )
    body = await resp.json()

    assert resp.status == status
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert text in body["error_description"]
    assert "\r\nTrace ID: " in body["error_description"]
    assert body["correlation_id"] == "corr-123"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", body["timestamp"])
    assert body["error_uri"] == f"https://login.microsoftonline.com/error?code={code}"
    assert tokens.issued_count == 0


async def test_unknown_tenant_is_refused(aiohttp_client: Any) -> None:
    app = create_entra_app(clients={CLIENT_ID: SECRET}, tokens=TokenRegistry(), tenants=[TENANT])
    sim = await aiohttp_client(app)

    resp = await sim.get("/other/v2.0/.well-known/openid-configuration")

    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid_tenant"


async def test_faults_match_the_client_id_and_issue_nothing(
    sim: TestClient[Any, Any], tokens: TokenRegistry
) -> None:
    await sim.post("/_sim/faults", json={"model": CLIENT_ID, "status": 503, "times": 1})

    failed = await sim.post(TOKEN_PATH, data=form())
    recovered = await sim.post(TOKEN_PATH, data=form())

    assert failed.status == 503
    assert (await failed.json())["error"] == "temporarily_unavailable"
    assert recovered.status == 200
    assert tokens.issued_count == 1
    assert control_of(sim.app).requests()[0]["form"] == form()


# --- msal over TLS ------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("entra-tls")
    files = TlsFiles(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    leaf.cert_chain_pems[0].write_to_path(str(files.cert))
    leaf.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files


@pytest.fixture
def requests_honours_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets these variables override a session's ``verify`` (msal passes
    ``verify`` to its session), so a CI-wide CA bundle would hide the test CA."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture
async def tls_sims(
    tls_files: TlsFiles, requests_honours_verify: None
) -> AsyncIterator[RunningSimulators]:
    config = SimulatorConfig(
        openai=None,
        custom=None,
        entra=EntraSimConfig(
            clients={CLIENT_ID: SECRET}, tls_cert=tls_files.cert, tls_key=tls_files.key
        ),
    )
    async with run_simulators(config) as running:
        yield running


@contextmanager
def msal_app(sims: RunningSimulators, ca: Path, secret: str) -> Iterator[Any]:
    """An msal confidential client on the simulator; its HTTP session (and so its
    keep-alive TLS connections) is closed afterwards."""
    app = msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential=secret,
        authority=f"{sims.entra_authority_host}/{TENANT}",
        verify=str(ca),
        instance_discovery=False,
    )
    try:
        yield app
    finally:
        app.http_client.close()


async def test_msal_acquires_and_caches_a_token(
    tls_sims: RunningSimulators, tls_files: TlsFiles
) -> None:
    def acquire_twice() -> tuple[dict[str, Any], dict[str, Any]]:
        with msal_app(tls_sims, tls_files.ca, SECRET) as app:
            first = app.acquire_token_for_client(scopes=[SCOPE])
            second = app.acquire_token_for_client(scopes=[SCOPE])
            return first, second

    first, second = await asyncio.wait_for(asyncio.to_thread(acquire_twice), timeout=15)

    assert tls_sims.entra_authority_host.startswith("https://")
    assert first["token_type"] == "Bearer"
    assert first["token_source"] == "identity_provider"
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    assert tls_sims.tokens.issued_count == 1
    assert tls_sims.entra is not None
    paths = [r["path"] for r in control_of(tls_sims.entra.app).requests()]
    assert paths == [f"/{TENANT}/v2.0/.well-known/openid-configuration", TOKEN_PATH]


async def test_msal_reports_a_bad_secret(tls_sims: RunningSimulators, tls_files: TlsFiles) -> None:
    def acquire() -> dict[str, Any]:
        with msal_app(tls_sims, tls_files.ca, "wrong") as app:
            result: dict[str, Any] = app.acquire_token_for_client(scopes=[SCOPE])
            return result

    result = await asyncio.wait_for(asyncio.to_thread(acquire), timeout=15)

    assert result["error"] == "invalid_client"
    assert 7000215 in result["error_codes"]
    assert "access_token" not in result
    assert tls_sims.tokens.issued_count == 0


async def test_msal_token_authorises_azure_openai(
    tls_sims: RunningSimulators, tls_files: TlsFiles
) -> None:
    def acquire() -> str:
        with msal_app(tls_sims, tls_files.ca, SECRET) as app:
            return str(app.acquire_token_for_client(scopes=[SCOPE])["access_token"])

    token = await asyncio.wait_for(asyncio.to_thread(acquire), timeout=15)
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=tls_sims.azure_url,
        api_version="2024-10-21",
        azure_ad_token=token,
        max_retries=0,
        timeout=10,
    ) as client:
        result = await client.chat.completions.create(
            model="any-deployment", messages=[{"role": "user", "content": "hi"}]
        )

    assert result.choices[0].message.content == "Simulated reply from any-deployment to: hi"
