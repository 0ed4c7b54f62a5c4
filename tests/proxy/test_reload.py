"""Live reload in a real ``servegate serve`` process: manifest edits, a ConfigMap-style
``..data`` symlink swap, invalid edits (last good version kept), secret rotation, and a
stream that stays intact across a reload."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import (
    BackgroundLoop,
    GatewayProcess,
    endpoint_doc,
    generation,
    http_chat,
    http_get,
    http_post,
    new_session,
    openai_entity,
    start_site,
    wait_for_generation,
    write_secret,
    write_yaml,
)

KEY = "sk-reload-key"


@pytest.fixture(scope="module")
def sim(background_loop: BackgroundLoop) -> Iterator[str]:
    from servegate.simulators.openai import create_openai_app

    runner, url = background_loop.run(start_site(create_openai_app(api_keys={KEY, "sk-rotated"})))
    yield url
    background_loop.run(runner.cleanup())


def start(tmp: Path, manifests: Path) -> GatewayProcess:
    return GatewayProcess(
        ["serve", str(manifests), "--secrets-dir", str(tmp / "secrets")], tmp / "gw.log"
    )


def test_edit_reloads_and_invalid_edit_keeps_last_good(
    tmp_path: Path, sim: str, background_loop: BackgroundLoop
) -> None:
    loop = background_loop
    write_secret(tmp_path / "secrets", "openai", "api_key", KEY)
    manifest = tmp_path / "m" / "chat.yaml"
    write_yaml(
        manifest, endpoint_doc("chat", [openai_entity("gpt-4o-mini", sim + "/v1", name="v1")])
    )
    gw = start(tmp_path, manifest)
    try:
        assert loop.run(http_chat(gw.url, "chat"))[1] == "v1"
        gen = generation(loop, gw.url)
        write_yaml(
            manifest, endpoint_doc("chat", [openai_entity("gpt-4o-mini", sim + "/v1", name="v2")])
        )
        gen = wait_for_generation(loop, gw.url, gen)
        assert loop.run(http_chat(gw.url, "chat"))[1] == "v2"
        got = loop.run(http_get(gw.url + "/api/2.0/serving-endpoints/chat"))
        assert got["config"]["config_version"] == 2
        # An invalid edit: logged, reported on GET, and the last good version keeps serving.
        broken = endpoint_doc("chat", [openai_entity("gpt-4o-mini", sim + "/v1", name="v3")])
        broken["spec"]["config"]["traffic_config"] = {
            "routes": [{"served_model_name": "v3", "traffic_percentage": 40}]
        }
        write_yaml(manifest, broken)
        gen = wait_for_generation(loop, gw.url, gen)
        status, entity, _ = loop.run(http_chat(gw.url, "chat"))
        assert (status, entity) == (200, "v2")
        got = loop.run(http_get(gw.url + "/api/2.0/serving-endpoints/chat"))
        assert got["state"]["config_update"] == "UPDATE_FAILED"
        assert "sum to 100" in got["state"]["message"]
        manifest.write_text("chat: [unclosed\n")  # broken YAML: still the last good version
        gen = wait_for_generation(loop, gw.url, gen)
        assert loop.run(http_chat(gw.url, "chat"))[:2] == (200, "v2")
        assert "traffic_percentage" not in gw.logs() or "sum to 100" in gw.logs()
    finally:
        gw.stop()


def test_configmap_symlink_swap_and_secret_rotation(
    tmp_path: Path, sim: str, background_loop: BackgroundLoop
) -> None:
    """The kubelet's atomic writer: files are symlinks into ..data, which is swapped by rename."""
    loop = background_loop
    write_secret(tmp_path / "secrets", "openai", "api_key", "sk-wrong-before-rotation")
    mount = tmp_path / "configmap"
    mount.mkdir()

    def publish(version: str, *docs: dict[str, Any]) -> None:
        data_dir = mount / f"..{version}"
        write_yaml(data_dir / "endpoints.yaml", *docs)
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(data_dir.name)
        os.replace(tmp_link, mount / "..data")
        if not (mount / "endpoints.yaml").is_symlink():
            (mount / "endpoints.yaml").symlink_to("..data/endpoints.yaml")

    publish(
        "2026_11_22_00_00_00.1", endpoint_doc("one", [openai_entity("gpt-4o-mini", sim + "/v1")])
    )
    gw = start(tmp_path, mount)
    try:
        status, _, body = loop.run(http_chat(gw.url, "one"))
        assert status == 401  # the upstream refused the wrong key, wrapped
        assert "external_model_provider" in body["message"]
        gen = generation(loop, gw.url)
        write_secret(tmp_path / "secrets", "openai", "api_key", KEY)  # rotate the secret file
        gen = wait_for_generation(loop, gw.url, gen)
        assert loop.run(http_chat(gw.url, "one"))[0] == 200
        publish(
            "2026_11_22_00_01_00.2",
            endpoint_doc("one", [openai_entity("gpt-4o-mini", sim + "/v1")]),
            endpoint_doc("two", [openai_entity("gpt-4o", sim + "/v1")]),
        )
        wait_for_generation(loop, gw.url, gen)
        names = [
            ep["name"]
            for ep in loop.run(http_get(gw.url + "/api/2.0/serving-endpoints"))["endpoints"]
        ]
        assert names == ["one", "two"]
        assert loop.run(http_chat(gw.url, "two"))[0] == 200
    finally:
        gw.stop()
    assert "sk-wrong-before-rotation" not in gw.logs()


def test_stream_in_flight_survives_a_reload(
    tmp_path: Path, sim: str, background_loop: BackgroundLoop
) -> None:
    loop = background_loop
    write_secret(tmp_path / "secrets", "openai", "api_key", KEY)
    manifest = tmp_path / "m" / "chat.yaml"
    write_yaml(
        manifest, endpoint_doc("chat", [openai_entity("gated-model", sim + "/v1", name="old")])
    )
    gw = start(tmp_path, manifest)

    async def stream_until_gate(
        session: aiohttp.ClientSession,
    ) -> tuple[aiohttp.ClientResponse, list[bytes]]:
        resp = await session.post(
            f"{gw.url}/serving-endpoints/chat/invocations",
            json={
                "messages": [{"role": "user", "content": "one two three four five six"}],
                "stream": True,
            },
        )
        first: list[bytes] = []
        while len(first) < 2:
            line = await asyncio.wait_for(resp.content.readline(), 10)
            if line.strip():
                first.append(line)
        return resp, first

    async def read_rest(resp: aiohttp.ClientResponse) -> bytes:
        return await asyncio.wait_for(resp.content.read(), 10)

    try:
        loop.run(
            http_post(
                sim + "/_sim/faults",
                {"model": "gated-model", "gate": "hold", "gate_after": 2, "times": 1},
            )
        )
        session = loop.run(new_session())
        resp, first = loop.run(stream_until_gate(session))
        assert resp.headers["served-model-name"] == "old"
        gen = generation(loop, gw.url)
        write_yaml(
            manifest, endpoint_doc("chat", [openai_entity("gpt-4o-mini", sim + "/v1", name="new")])
        )
        wait_for_generation(loop, gw.url, gen)
        assert (
            loop.run(http_chat(gw.url, "chat"))[1] == "new"
        )  # the next request sees the new config
        loop.run(http_post(sim + "/_sim/gates/hold/open", {}))
        rest = loop.run(read_rest(resp))
        lines = [line for line in (b"".join(first) + rest).decode().split("\n") if line]
        assert lines[-1] == "data: [DONE]"
        contents = [orjson.loads(line[6:]) for line in lines[:-1]]
        assert contents[-1]["choices"][0]["finish_reason"] == "stop"
        loop.run(session.close())
    finally:
        gw.stop()


def test_auth_file_in_a_secret_mount_reloads_on_the_symlink_swap(
    tmp_path: Path, sim: str, background_loop: BackgroundLoop
) -> None:
    """kubelet updates a mounted Secret by swapping ``..data``: the auth file's own path
    (a symlink through it) sees no event, yet the new tokens must apply without a restart."""
    import hashlib

    import yaml

    loop = background_loop
    write_secret(tmp_path / "secrets", "openai", "api_key", KEY)
    write_yaml(
        tmp_path / "m" / "chat.yaml",
        endpoint_doc("chat", [openai_entity("gpt-4o-mini", sim + "/v1")]),
    )
    mount = tmp_path / "auth"
    mount.mkdir()

    def publish(version: str, token: str) -> None:
        data_dir = mount / f"..{version}"
        data_dir.mkdir()
        entry = {"name": "ana", "sha256": hashlib.sha256(token.encode()).hexdigest()}
        (data_dir / "auth.yaml").write_text(yaml.safe_dump({"tokens": [entry]}))
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(data_dir.name)
        os.replace(tmp_link, mount / "..data")
        if not (mount / "auth.yaml").is_symlink():
            (mount / "auth.yaml").symlink_to("..data/auth.yaml")

    async def ask(url: str, token: str) -> int:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{url}/serving-endpoints/chat/invocations",
                json={"messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {token}"},
            ) as r,
        ):
            return r.status

    publish("2026_11_22_00_00_00.1", "tok-old")
    gw = GatewayProcess(
        [
            "serve",
            str(tmp_path / "m"),
            "--secrets-dir",
            str(tmp_path / "secrets"),
            "--auth-file",
            str(mount / "auth.yaml"),
        ],
        tmp_path / "gw.log",
    )
    try:
        assert loop.run(ask(gw.url, "tok-old")) == 200
        gen = generation(loop, gw.url)
        publish("2026_11_22_00_01_00.2", "tok-new")
        wait_for_generation(loop, gw.url, gen)
        assert loop.run(ask(gw.url, "tok-new")) == 200
        assert loop.run(ask(gw.url, "tok-old")) == 401
    finally:
        gw.stop()
