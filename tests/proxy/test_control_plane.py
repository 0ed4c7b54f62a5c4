"""The control-plane REST API on a local gateway (``--state-dir``): create, update, tags,
AI Gateway, delete; the platform's errors; plaintext keys moved to the secrets directory;
who may write; and endpoints that survive a restart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import (
    OPENAI_KEY,
    Workspace,
    endpoint_doc,
    openai_entity,
    write_auth_file,
    write_yaml,
)

Client = TestClient[Any, Any]
ADMIN = {"Authorization": "Bearer tok-admin"}
USER = {"Authorization": "Bearer tok-user"}
API = "/api/2.0/serving-endpoints"
CANARY = OPENAI_KEY  # the simulator accepts it; the tests look for it everywhere


def chat_entity(sim: str, **key: str) -> dict[str, Any]:
    entity = openai_entity("gpt-4o-mini", sim + "/v1", name="gpt")
    if key:
        config = entity["external_model"]["openai_config"]
        del config["openai_api_key"]
        config.update(key)
    return entity


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def gateway(
    workspace: Workspace,
    state_dir: Path,
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> Callable[..., Awaitable[Client]]:
    auth = write_auth_file(
        workspace.root / "auth.yaml",
        {"tok-admin": ("root@corp.example", ["admins"]), "tok-user": ("ana@corp.example", [])},
    )

    async def make() -> Client:
        return await aiohttp_client(in_process_app(auth_file=auth, state_dir=state_dir))

    return make


async def test_create_query_update_and_delete(
    gateway: Callable[..., Awaitable[Client]],
    openai_sim: str,
    state_dir: Path,
    workspace: Workspace,
) -> None:
    client = await gateway()
    body = {
        "name": "made",
        "config": {
            "name": "made",  # the SDK's redundant config.name
            "served_entities": [chat_entity(openai_sim, openai_api_key_plaintext=CANARY)],
            "traffic_config": {
                "routes": [{"served_model_name": "gpt", "traffic_percentage": "100"}]
            },
        },
        "task": "llm/v1/chat",  # old MLflow
        "route_optimized": False,
        "tags": [{"key": "team", "value": "ml"}],
    }
    created = await client.post(API + "/", json=body, headers=ADMIN)
    assert created.status == 200, await created.text()
    obj = await created.json()
    assert obj["name"] == "made"
    assert obj["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert obj["config"]["config_version"] == 1
    assert CANARY not in await created.text()

    answer = await client.post(
        "/serving-endpoints/made/invocations",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=USER,
    )
    assert answer.status == 200

    manifest = (state_dir / "endpoints" / "made.yaml").read_text()
    assert CANARY not in manifest
    key_ref = yaml.safe_load(manifest)["spec"]["config"]["served_entities"][0]
    ref = key_ref["external_model"]["openai_config"]["openai_api_key"]
    assert ref == "{{secrets/made-credentials/gpt.openai_config.openai_api_key}}"
    secret = workspace.secrets / "made-credentials" / "gpt.openai_config.openai_api_key"
    assert secret.read_text() == CANARY
    assert secret.stat().st_mode & 0o077 == 0

    again = await client.post(API, json=body, headers=ADMIN)
    assert again.status == 400
    assert (await again.json())["error_code"] == "RESOURCE_ALREADY_EXISTS"

    new_config = {
        "served_entities": [chat_entity(openai_sim, openai_api_key="{{secrets/openai/api_key}}")],
    }
    updated = await client.put(f"{API}/made/config", json=new_config, headers=ADMIN)
    assert updated.status == 200
    assert (await updated.json())["config"]["config_version"] == 2
    assert not secret.exists()  # the old plaintext key is no longer referenced

    tags = await client.patch(
        f"{API}/made/tags",
        json={"add_tags": [{"key": "env", "value": "dev"}], "delete_tags": ["team"]},
        headers=ADMIN,
    )
    assert await tags.json() == {"tags": [{"key": "env", "value": "dev"}]}
    gateway_cfg = {
        "usage_tracking_config": {"enabled": True},
        "fallback_config": {"enabled": False},
    }
    put = await client.put(f"{API}/made/ai-gateway", json=gateway_cfg, headers=ADMIN)
    assert (await put.json())["usage_tracking_config"] == {"enabled": True}
    limits = await client.put(
        f"{API}/made/rate-limits",
        json={"rate_limits": [{"calls": 5, "renewal_period": "minute", "key": "user"}]},
        headers=ADMIN,
    )
    assert (await limits.json())["rate_limits"][0]["calls"] == 5

    got = await (await client.get(f"{API}/made", headers=USER)).json()
    assert got["tags"] == [{"key": "env", "value": "dev"}]
    assert got["ai_gateway"]["usage_tracking_config"] == {"enabled": True}

    deleted = await client.delete(f"{API}/made", headers=ADMIN)
    assert deleted.status == 200 and await deleted.json() == {}
    assert (await client.get(f"{API}/made", headers=USER)).status == 404
    assert not (workspace.secrets / "made-credentials").exists()


async def test_errors_in_the_platform_shape(
    gateway: Callable[..., Awaitable[Client]], openai_sim: str, workspace: Workspace
) -> None:
    write_yaml(
        workspace.manifests / "file.yaml", endpoint_doc("from-file", [chat_entity(openai_sim)])
    )
    client = await gateway()
    cases: list[tuple[str, str, Any, dict[str, str], int, str]] = [
        ("POST", API, {"name": "x"}, ADMIN, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", API, {"name": "bad name!", "config": {}}, ADMIN, 400, "INVALID_PARAMETER_VALUE"),
        (
            "POST",
            API,
            {"name": "x", "config": {"served_entities": [{"external_model": {"name": "m"}}]}},
            ADMIN,
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        ("POST", API, {"name": "from-file", "config": {}}, ADMIN, 400, "INVALID_PARAMETER_VALUE"),
        (
            "PUT",
            f"{API}/nope/config",
            {"served_entities": []},
            ADMIN,
            404,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        ("DELETE", f"{API}/nope", None, ADMIN, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("DELETE", f"{API}/from-file", None, ADMIN, 403, "PERMISSION_DENIED"),
        (
            "POST",
            API,
            {"name": "y", "config": {"served_entities": [chat_entity(openai_sim)]}},
            USER,
            403,
            "PERMISSION_DENIED",
        ),
    ]
    for method, path, body, headers, status, code in cases:
        resp = await client.request(method, path, json=body, headers=headers)
        assert (resp.status, (await resp.json())["error_code"]) == (status, code), (method, path)
    field = await client.post(
        API,
        json={"name": "x", "config": {"served_entities": [{"external_model": {"name": "m"}}]}},
        headers=ADMIN,
    )
    assert "served_entities[0].external_model" in (await field.json())["message"]
    exists = await client.post(
        API,
        json={"name": "from-file", "config": {"served_entities": [chat_entity(openai_sim)]}},
        headers=ADMIN,
    )
    assert (await exists.json())["error_code"] == "RESOURCE_ALREADY_EXISTS"
    assert (await client.get(f"{API}/y", headers=USER)).status == 404  # nothing was written


async def test_without_a_state_dir_the_api_is_read_only(
    in_process_app: Callable[..., web.Application],
    aiohttp_client: Callable[..., Awaitable[Client]],
    openai_sim: str,
) -> None:
    client = await aiohttp_client(in_process_app())
    resp = await client.post(
        API, json={"name": "x", "config": {"served_entities": [chat_entity(openai_sim)]}}
    )
    assert resp.status == 400
    assert "--state-dir" in (await resp.json())["message"]


async def test_api_created_endpoints_survive_a_restart(
    gateway: Callable[..., Awaitable[Client]], openai_sim: str
) -> None:
    first = await gateway()
    body = {
        "name": "kept",
        "config": {
            "served_entities": [chat_entity(openai_sim, openai_api_key_plaintext=OPENAI_KEY)]
        },
    }
    assert (await first.post(API, json=body, headers=ADMIN)).status == 200
    await first.close()
    second = await gateway()
    answer = await second.post(
        "/serving-endpoints/kept/invocations",
        json={"messages": [{"role": "user", "content": "still there?"}]},
        headers=USER,
    )
    assert answer.status == 200
    listed = await (await second.get(API + "/", headers=USER)).json()
    assert "kept" in [e["name"] for e in listed["endpoints"]]
