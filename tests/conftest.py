"""Shared fixtures: manifests on disk, simulators, the gateway in-process or as a real process.

Everything binds 127.0.0.1 on port 0 (the OS picks a free port) and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from servegate.app import GatewaySettings, create_app
from servegate.transport.client import Timeouts

if TYPE_CHECKING:
    from tests.records.pg import PostgresServer

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
OPENAI_KEY = "sk-test-CANARY-referenced-4f2a9c"


def endpoint_doc(name: str, entities: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """A ServingEndpoint manifest as a dict."""
    config: dict[str, Any] = {"served_entities": entities}
    if "routes" in spec:
        config["traffic_config"] = {"routes": spec.pop("routes")}
    return {
        "apiVersion": "servegate.io/v1alpha1",
        "kind": "ServingEndpoint",
        "metadata": {"name": name},
        "spec": {"config": config, **spec},
    }


def openai_entity(
    model: str, base: str, *, task: str = "llm/v1/chat", name: str | None = None, **config: Any
) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": task,
            "openai_config": {
                "openai_api_key": "{{secrets/openai/api_key}}",
                "openai_api_base": base,
                **config,
            },
        }
    }
    if name:
        entity["name"] = name
    return entity


def write_yaml(path: Path, *docs: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def write_secret(root: Path, scope: str, key: str, value: str) -> None:
    (root / scope).mkdir(parents=True, exist_ok=True)
    (root / scope / key).write_text(value + "\n")


def write_auth_file(path: Path, tokens: dict[str, tuple[str, list[str]]]) -> Path:
    """tokens: bearer token → (principal name, groups)."""
    entries = [
        {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "groups": groups}
        for token, (name, groups) in tokens.items()
    ]
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path


@dataclass
class Workspace:
    """A temp directory laid out like a user's: manifests/, secrets/, auth.yaml."""

    root: Path
    manifests: Path = field(init=False)
    secrets: Path = field(init=False)

    def __post_init__(self) -> None:
        self.manifests = self.root / "manifests"
        self.secrets = self.root / "secrets"
        self.manifests.mkdir(parents=True)
        self.secrets.mkdir(parents=True)
        write_secret(self.secrets, "openai", "api_key", OPENAI_KEY)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


async def start_site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def openai_sim() -> AsyncIterator[str]:
    """The OpenAI simulator on a free port; yields its origin (no /v1)."""
    from servegate.simulators.openai import create_openai_app

    runner, url = await start_site(create_openai_app(api_keys={OPENAI_KEY}))
    yield url
    await runner.cleanup()


@pytest.fixture
def gateway_settings(workspace: Workspace) -> Callable[..., GatewaySettings]:
    def make(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "paths": (workspace.manifests,),
            "secrets_dir": workspace.secrets,
            "watch": False,
            "timeouts": Timeouts(connect=2, first_byte=5, idle=5),
        }
        values.update(overrides)
        return GatewaySettings(**values)

    return make


class BackgroundLoop:
    """An event loop in a thread, for servers that synchronous clients (SDKs) talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (tests/records/pg.py): the record tests
    keep apart by schema, the gateway tests by what they count."""
    from tests.records.pg import running_postgres  # it imports this module

    with running_postgres() as server:
        yield server


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own, for a test that stops or restarts it."""
    from tests.records.pg import running_postgres

    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def background_loop() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


class GatewayProcess:
    """``python -m servegate serve ...`` as a real process; stdout announces the port."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        port_zero: bool = True,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "servegate", *args, *(["--port", "0"] if port_zero else [])],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        self.url = self._wait_for_url(timeout=30)

    def _wait_for_url(self, timeout: float) -> str:
        lines: queue.Queue[bytes] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def pump() -> None:
            for line in iter(stdout.readline, b""):
                lines.put(line)
            lines.put(b"")

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        self.stdout_lines: list[str] = []
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"gateway did not start in {timeout}s:\n{self.logs()}") from None
            text = line.decode().strip()
            self.stdout_lines.append(text)
            if not line:
                self.stop()
                raise RuntimeError(f"gateway exited before listening:\n{self.logs()}")
            if text.startswith("servegate: listening on "):
                break
        return text.rsplit("listening on ", 1)[1].split()[0]

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@pytest.fixture
def in_process_app(
    gateway_settings: Callable[..., GatewaySettings],
) -> Callable[..., web.Application]:
    def make(**overrides: Any) -> web.Application:
        return create_app(gateway_settings(**overrides))

    return make


# ---- helpers for tests that drive a real gateway process from synchronous code


async def http_get(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


async def http_chat(url: str, endpoint: str) -> tuple[int, str | None, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{url}/serving-endpoints/{endpoint}/invocations",
            json={"messages": [{"role": "user", "content": "hi"}]},
        ) as r,
    ):
        return r.status, r.headers.get("served-model-name"), await r.json()


def wait_for_generation(loop: BackgroundLoop, url: str, above: int, timeout: float = 15) -> int:
    """Bounded wait for the gateway to publish a newer config generation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        generation = int(loop.run(http_get(url + "/readyz"))["generation"])
        if generation > above:
            return generation
        loop.run(asyncio.sleep(0.05))
    raise AssertionError(f"no config generation above {above} within {timeout}s")


def generation(loop: BackgroundLoop, url: str) -> int:
    return int(loop.run(http_get(url + "/readyz"))["generation"])


async def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


async def http_post(url: str, body: Any) -> Any:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return await r.json()


def curl_invocation(
    base_url: str, endpoint: str, body: Any, *flags: str, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """``curl -sS [flags] -d BODY <base_url>/serving-endpoints/<endpoint>/invocations``: the
    README's curl call, run for real. The caller reads and checks the output (``-i`` keeps
    the headers' CRLFs, so it stays bytes)."""
    return subprocess.run(
        [
            "curl",
            "-sS",
            *flags,
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(body),
            f"{base_url}/serving-endpoints/{endpoint}/invocations",
        ],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class SimulatedGateway:
    """A real ``servegate serve`` process in front of one simulator, for synchronous tests
    (SDKs, curl): simulator control, fault injection and queries through the gateway."""

    gateway: GatewayProcess
    sim_url: str
    loop: BackgroundLoop
    secrets: Path | None = None
    default_model: str | None = None
    """The model a fault matches when the test names none."""

    def sim(self, method: str, path: str, body: Any = None) -> Any:
        return self.loop.run(http_call(method, self.sim_url + path, body))[2]

    def fault(self, **spec: Any) -> None:
        """Replace any earlier fault with this one."""
        if self.default_model is not None:
            spec.setdefault("model", self.default_model)
        self.sim("DELETE", "/_sim/faults")
        self.sim("POST", "/_sim/faults", spec)

    def clear_faults(self) -> None:
        self.sim("DELETE", "/_sim/faults")

    def last_request(self) -> dict[str, Any]:
        recorded: list[dict[str, Any]] = self.sim("GET", "/_sim/requests")["requests"]
        return recorded[-1]

    def post(self, endpoint: str, body: Any) -> tuple[int, dict[str, str], Any]:
        url = f"{self.gateway.url}/serving-endpoints/{endpoint}/invocations"
        return self.loop.run(http_call("POST", url, body))


def free_port() -> int:
    """A port the OS just handed out (for servers that cannot announce their own)."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_call(method: str, url: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body or None) of one request."""
    async with aiohttp.ClientSession() as session, session.request(method, url, json=body) as resp:
        raw = await resp.read()
        try:
            data = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            data = None
        return resp.status, dict(resp.headers), data
