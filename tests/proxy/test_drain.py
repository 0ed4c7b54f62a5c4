"""Graceful drain: a rolling restart of two gateways behind a load balancer loses nothing.

The load balancer is written here: a TCP proxy on 127.0.0.1 that, like a Kubernetes
Service with readiness probes, sends each new connection to the next backend whose
``/readyz`` answered 200 at its last poll (every 50 ms), and tries the next one only when a
connection is refused (nothing was sent yet). Behind it, two real gateway processes (one of
them with two workers) in front of the OpenAI simulator, whose streams take about 1.6 s;
in front of it, a steady load of unary requests and streams on keep-alive connections.
Each gateway is restarted in turn (SIGTERM, wait for the exit, start a new one, wait until
the proxy sees it ready), and not one request may fail nor one stream end without
``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.conftest import (
    OPENAI_KEY,
    GatewayProcess,
    endpoint_doc,
    http_call,
    openai_entity,
    write_secret,
    write_yaml,
)

DONE = b"data: [DONE]\n\n"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
POLL_S = 0.05


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float, what: str) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"not within {within} s: {what}")


class ReadinessProxy:
    """Round robin over the backends whose /readyz says 200; see the module docstring."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = list(backends)
        self.ready: dict[str, bool] = {}
        self.saw_draining: set[str] = set()
        self.refused = 0
        self.unroutable = 0
        self._next = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=1),
        )
        self._poller = asyncio.create_task(self._poll())
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def close(self) -> None:
        self._poller.cancel()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(self._poller, *self._tasks, return_exceptions=True)
        await self._session.close()

    def is_ready(self, backend: str) -> bool:
        return self.ready.get(backend, False)

    def replace(self, old: str, new: str) -> None:
        self.backends[self.backends.index(old)] = new

    async def _poll(self) -> None:
        while True:
            for backend in list(self.backends):
                try:
                    async with self._session.get(backend + "/readyz") as answer:
                        self.ready[backend] = answer.status == 200
                        if answer.status == 503:
                            self.saw_draining.add(backend)
                except (aiohttp.ClientError, TimeoutError):
                    self.ready[backend] = False
            await asyncio.sleep(POLL_S)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            ready = [b for b in self.backends if self.ready.get(b)]
            self._next += 1
            first = self._next % max(1, len(ready))
            for backend in ready[first:] + ready[:first]:
                url = URL(backend)
                try:
                    up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
                except ConnectionRefusedError:
                    self.refused += 1  # nothing was sent: safe to try the next one
                    continue
                try:
                    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                finally:
                    up_writer.close()
                return
            self.unroutable += 1
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


@dataclass
class Load:
    """Unary requests and streams in a loop each, on one keep-alive session."""

    url: str
    unary_ok: int = 0
    streams_ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def unary(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            try:
                async with session.post(self.url, json=CHAT) as answer:
                    body = await answer.read()
                if answer.status == 200 and b'"choices"' in body:
                    self.unary_ok += 1
                else:
                    self.failures.append(f"unary {answer.status}: {body[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"unary: {exc!r}")

    async def stream(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            try:
                async with session.post(self.url, json=STREAM) as answer:
                    body = await answer.read()
                if answer.status == 200 and body.endswith(DONE) and b'"error"' not in body:
                    self.streams_ok += 1
                else:
                    self.failures.append(f"stream {answer.status}: ...{body[-300:]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"stream: {exc!r}")


@pytest.fixture
async def slow_streams(openai_sim: str) -> str:
    """The simulator, answering streams at 200 ms an event (about 1.6 s a stream)."""
    status, _, _ = await http_call(
        "POST", openai_sim + "/_sim/faults", {"chunk_delay_ms": 200, "latency_ms": 20}
    )
    assert status == 200
    return openai_sim


def serve_args(tmp_path: Path, sim_url: str, *extra: str) -> list[str]:
    """The gateway's arguments; its endpoint ``chat`` tracks usage (rows in the log)."""
    write_secret(tmp_path / "secrets", "openai", "api_key", OPENAI_KEY)
    chat = endpoint_doc(
        "chat",
        [openai_entity("gpt-4o-mini", sim_url + "/v1")],
        ai_gateway={"usage_tracking_config": {"enabled": True}},
    )
    write_yaml(tmp_path / "m" / "chat.yaml", chat)
    return [
        "serve",
        str(tmp_path / "m"),
        "--secrets-dir",
        str(tmp_path / "secrets"),
        "--no-watch",
        "--drain-delay",
        "0.5",
        "--grace-period",
        "10",
        *extra,
    ]


async def start_gateway(args: list[str], log: Path) -> GatewayProcess:
    return await asyncio.to_thread(GatewayProcess, args, log)


async def stream_directly(url: str, started: asyncio.Event) -> bytes:
    """One stream straight to a gateway (no proxy); ``started`` is set at its first bytes."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/serving-endpoints/chat/invocations", json=STREAM) as answer,
    ):
        assert answer.status == 200
        body = await answer.content.readany()
        started.set()
        return body + await answer.read()


async def test_rolling_restart_under_load_fails_nothing(tmp_path: Path, slow_streams: str) -> None:
    args = serve_args(tmp_path, slow_streams)
    gateways = [
        await start_gateway([*args, "--workers", "2"], tmp_path / "a0.log"),
        await start_gateway(args, tmp_path / "b0.log"),
    ]
    restart_args = ([*args, "--workers", "2"], args)
    proxy = ReadinessProxy([g.url for g in gateways])
    proxy_url = await proxy.start()
    load = Load(proxy_url + "/serving-endpoints/chat/invocations")
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
    workers: list[asyncio.Task[None]] = []
    stopped: list[GatewayProcess] = []
    try:
        await eventually(lambda: all(proxy.is_ready(g.url) for g in gateways), 10, "ready")
        workers = [asyncio.create_task(load.unary(session)) for _ in range(4)]
        workers += [asyncio.create_task(load.stream(session)) for _ in range(4)]
        await eventually(lambda: load.streams_ok >= 4, 10, "streams flowing")
        for index in range(len(gateways)):
            old = gateways[index]
            # A stream known to be in flight on this gateway when it is told to stop.
            started = asyncio.Event()
            direct = asyncio.create_task(stream_directly(old.url, started))
            await asyncio.wait_for(started.wait(), 10)
            old.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(old.proc.wait, 20) == 0
            stopped.append(old)
            assert (await direct).endswith(DONE)
            new = await start_gateway(restart_args[index], tmp_path / f"{'ab'[index]}1.log")
            gateways[index] = new
            proxy.replace(old.url, new.url)
            await eventually(partial(proxy.is_ready, new.url), 10, "new one ready")
        streams_before = load.streams_ok
        await eventually(lambda: load.streams_ok >= streams_before + 4, 10, "streams after")
    finally:
        load.stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*workers), 15)
        await session.close()
        await proxy.close()
        for gateway in gateways + stopped:
            gateway.stop()
    assert load.failures == []
    assert load.unary_ok > 50
    assert load.streams_ok > 10
    assert proxy.unroutable == 0
    # Readiness failed before the listener closed: the proxy saw each old gateway's 503.
    assert proxy.saw_draining >= {g.url for g in stopped}
    for gateway in stopped:
        logs = gateway.logs()
        assert "draining: /readyz answers 503" in logs
        in_flight = [int(n) for n in re.findall(r"stopped listening; (\d+) requests", logs)]
        assert in_flight and max(in_flight) >= 1, logs  # the direct stream, at least
        assert "cut off" not in logs


async def test_grace_period_over_ends_streams_with_an_error_event(
    tmp_path: Path, openai_sim: str
) -> None:
    """A stream that outlasts the grace period is ended in-band, not truncated; its usage
    row is still written (the writer flushes after the requests end), and the process exits
    0, promptly."""
    await http_call("POST", openai_sim + "/_sim/faults", {"gate": "never", "gate_after": 2})
    args = serve_args(tmp_path, openai_sim)
    args[args.index("--grace-period") + 1] = "1.5"
    gateway = await start_gateway(args, tmp_path / "gw.log")
    try:
        started = asyncio.Event()
        direct = asyncio.create_task(stream_directly(gateway.url, started))
        await asyncio.wait_for(started.wait(), 10)
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        body = await asyncio.wait_for(direct, 10)
        assert await asyncio.to_thread(gateway.proc.wait, 10) == 0
        took = time.monotonic() - signalled
    finally:
        gateway.stop()
    assert body.endswith(DONE)
    last_event = body.rstrip().split(b"\n\n")[-2]
    assert b'"error_code":"TEMPORARILY_UNAVAILABLE"' in last_event
    assert b"shutting down" in last_event
    assert 1.5 <= took < 5
    logs = gateway.logs()
    cut = logs.index("grace period over: 1 requests still in flight")
    row = logs.index('"table":"endpoint_usage"', cut)
    assert '"status_code":503' in logs[row : logs.index("\n", row)]
    assert row < logs.index("servegate stopped", cut)


async def test_readyz_fails_at_once_and_answers_say_connection_close(
    tmp_path: Path, openai_sim: str
) -> None:
    """During the drain delay everything is still answered, with ``Connection: close``;
    /healthz stays 200."""
    args = serve_args(tmp_path, openai_sim)
    args[args.index("--drain-delay") + 1] = "3"
    gateway = await start_gateway(args, tmp_path / "gw.log")
    try:
        status, headers, body = await http_call("GET", gateway.url + "/readyz")
        assert (status, body["status"], headers.get("Connection")) == (200, "ready", None)
        gateway.proc.send_signal(signal.SIGTERM)

        async def draining() -> bool:
            return (await http_call("GET", gateway.url + "/readyz"))[0] == 503

        await eventually(draining, 5, "/readyz 503")
        status, headers, body = await http_call("GET", gateway.url + "/readyz")
        assert (status, body["status"], headers["Connection"]) == (503, "draining", "close")
        status, headers, _ = await http_call("GET", gateway.url + "/healthz")
        assert (status, headers["Connection"]) == (200, "close")
        url = gateway.url + "/serving-endpoints/chat/invocations"
        status, headers, body = await http_call("POST", url, CHAT)
        assert (status, headers["Connection"]) == (200, "close")
        assert body["choices"][0]["message"]["content"]
        assert await asyncio.to_thread(gateway.proc.wait, 10) == 0
    finally:
        gateway.stop()
    assert "stopped listening; 0 requests in flight" in gateway.logs()
