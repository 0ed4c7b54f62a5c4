"""Upstream TLS is verified: a provider whose certificate the gateway cannot trust is a 502
that says so, and ``--ca-bundle`` adds a private CA beside the system's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient

from servegate.simulators.openai import create_openai_app
from servegate.simulators.tls import server_ssl_context
from tests.conftest import OPENAI_KEY, Workspace, endpoint_doc, openai_entity, write_yaml

Client = TestClient[Any, Any]
CHAT = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_sim(ca: trustme.CA) -> AsyncIterator[str]:
    cert = ca.issue_cert("127.0.0.1")
    context = server_ssl_context(
        cert.private_key_and_cert_chain_pem.bytes(), cert.private_key_pem.bytes()
    )
    runner = web.AppRunner(create_openai_app(api_keys={OPENAI_KEY}), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_an_untrusted_provider_certificate_is_a_502(
    workspace: Workspace,
    tls_sim: str,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    write_yaml(workspace.manifests / "tls.yaml", endpoint_doc("tls", [openai_entity("m", tls_sim)]))
    client = await aiohttp_client(in_process_app())
    resp = await client.post("/serving-endpoints/tls/invocations", json=CHAT)
    assert resp.status == 502
    body = await resp.json()
    assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "its TLS certificate could not be verified" in body["message"]
    [info] = body["details"]
    assert info["reason"] == "UPSTREAM_UNREACHABLE"
    assert info["metadata"]["external_model_provider"] == "openai"


async def test_a_ca_bundle_makes_a_private_ca_trusted(
    workspace: Workspace,
    tls_sim: str,
    ca: trustme.CA,
    tmp_path: Path,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    write_yaml(workspace.manifests / "tls.yaml", endpoint_doc("tls", [openai_entity("m", tls_sim)]))
    client = await aiohttp_client(in_process_app(ca_bundle=bundle))
    resp = await client.post("/serving-endpoints/tls/invocations", json=CHAT)
    assert resp.status == 200, await resp.text()
