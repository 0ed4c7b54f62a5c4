"""Clients that read slowly, vanish mid-stream, stall their body or sit idle, against a real
gateway process.

- A slow reader pushes back on the upstream: the gateway reads the upstream only as fast
  as the client takes the stream, so its memory stays flat (``RSS_BOUND``) and the
  upstream's writes block long before it has sent everything.
- A client that disconnects mid-stream, even while the upstream is silent, gets the
  upstream request cancelled at once: the simulator's stream log says ``client_gone``
  while its gate is still closed.
- A body that never completes (stalled, or chunked with broken framing) gets 408 after
  ``--client-body-timeout``; an idle keep-alive connection is closed after
  ``--keepalive-timeout``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import (
    OPENAI_KEY,
    BackgroundLoop,
    GatewayProcess,
    endpoint_doc,
    http_call,
    openai_entity,
    write_secret,
    write_yaml,
)

MIB = 1024 * 1024


def _kernel_buffers() -> int:
    """The most the kernel may hold between the upstream and the client: the upstream's
    send buffer, the gateway's receive buffer (hop 1) and its send buffer (hop 2), each at
    its autotuning maximum (the client's receive buffer is set tiny)."""
    sysctl = Path("/proc/sys/net/ipv4")
    rmem_max = int((sysctl / "tcp_rmem").read_text().split()[2])
    wmem_max = int((sysctl / "tcp_wmem").read_text().split()[2])
    return rmem_max + 2 * wmem_max


BIG_PIECE = 64 * 1024
GATEWAY_BUFFERS = 1 * MIB
"""What the gateway itself may hold of one stream: one upstream read buffer (aiohttp pauses
the socket past 128 KiB), one transport write buffer (``write`` waits past 64 KiB), one
event."""
BIG_EVENTS = -(-(_kernel_buffers() + GATEWAY_BUFFERS + 16 * MIB) // BIG_PIECE)
BIG_TOTAL = BIG_EVENTS * BIG_PIECE
"""Longer than anything the buffers could swallow (56 MiB with Linux's default limits), so
an upstream that is not held back by the client would finish while the client is slow."""
RSS_BOUND = 16 * MIB
"""How much the gateway's resident memory may grow while it relays that stream to a client
reading a hundredth as fast as the upstream could send (observed: about 4 MiB, the
allocator's slack around the buffers above)."""
PACED_BOUND = 8 * MIB
"""How much the upstream may send in two seconds of the slow client (which reads 0.8 MB in
them), once the buffers are full: a little more than the client reads, as Linux grows the
socket buffers; unpaced, it would send the whole stream in well under a second."""
BODY_TIMEOUT_S = 0.5
KEEPALIVE_S = 1.0


@dataclass
class Progress:
    """What the big-stream upstream has managed to write so far."""

    sent: int = 0
    finished: bool = False


def big_stream_app(progress: Progress) -> web.Application:
    """An OpenAI-shaped upstream whose chat stream is ``BIG_EVENTS`` events of 64 KiB,
    counting what it has written (a write returns once the socket took the bytes)."""

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        chunk = {
            "id": "chatcmpl-big",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "big",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        progress.sent, progress.finished = 0, False
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        frames = [event({"role": "assistant", "content": ""})]
        frames += [event({"content": "x" * BIG_PIECE})] * BIG_EVENTS
        usage = {
            "prompt_tokens": 1,
            "completion_tokens": BIG_EVENTS,
            "total_tokens": 1 + BIG_EVENTS,
        }
        frames += [event({}, "stop", usage=usage), b"data: [DONE]\n\n"]
        for frame in frames:
            await response.write(frame)  # blocks while the gateway does not read
            progress.sent += len(frame)
        await response.write_eof()
        progress.finished = True
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def serve(app: web.Application, **kwargs: Any) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, **kwargs)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@dataclass
class Upstreams:
    sim: str
    big: str
    progress: Progress


@pytest.fixture(scope="module")
def upstreams(background_loop: BackgroundLoop) -> Iterator[Upstreams]:
    from servegate.simulators.openai import create_openai_app

    progress = Progress()
    # handler_cancellation: the simulator notices a closed connection at once, as a
    # provider's server does, and logs the stream as client_gone.
    sim_runner, sim = background_loop.run(
        serve(create_openai_app(api_keys={OPENAI_KEY}), handler_cancellation=True)
    )
    big_runner, big = background_loop.run(serve(big_stream_app(progress)))
    yield Upstreams(sim, big, progress)
    background_loop.run(sim_runner.cleanup())
    background_loop.run(big_runner.cleanup())


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams
) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("slow-clients")
    write_secret(root / "secrets", "openai", "api_key", OPENAI_KEY)
    write_yaml(
        root / "m" / "endpoints.yaml",
        endpoint_doc("chat", [openai_entity("gpt-4o-mini", upstreams.sim + "/v1")]),
        endpoint_doc("big", [openai_entity("big", upstreams.big + "/v1")]),
    )
    args = ["serve", str(root / "m"), "--secrets-dir", str(root / "secrets"), "--no-watch"]
    args += ["--client-body-timeout", str(BODY_TIMEOUT_S)]
    args += ["--keepalive-timeout", str(KEEPALIVE_S)]
    process = GatewayProcess(args, root / "gw.log")
    yield process
    process.stop()
    assert process.proc.returncode == 0, process.logs()


def rss(pid: int) -> int:
    """Resident memory in bytes (VmRSS from /proc: psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(url: str, *, rcvbuf: int | None = None) -> socket.socket:
    parsed = URL(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connecting, so the TCP window starts (and stays) small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((parsed.host, parsed.port))
    return sock


def post_head(endpoint: str, length: int, *, chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    return (
        f"POST /serving-endpoints/{endpoint}/invocations HTTP/1.1\r\nHost: gateway\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def send_query(sock: socket.socket, endpoint: str, body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    sock.sendall(post_head(endpoint, len(raw)) + raw)


def read_until(sock: socket.socket, marker: bytes, seen: bytes = b"") -> bytes:
    while marker not in seen:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed before {marker!r}: {seen[-300:]!r}")
        seen += data
    return seen


def read_to_end(sock: socket.socket, within: float) -> bytes:
    """Everything until the server closes the connection (bounded)."""
    deadline = time.monotonic() + within
    seen = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            return seen
        seen += data
    raise AssertionError(f"still open after {within} s: {seen[-300:]!r}")


def sim_streams(loop: BackgroundLoop, upstreams: Upstreams) -> list[dict[str, Any]]:
    """The simulator's stream log."""
    _, _, body = loop.run(http_call("GET", upstreams.sim + "/_sim/streams"))
    streams: list[dict[str, Any]] = body["streams"]
    return streams


def test_slow_client_pushes_back_on_the_upstream_and_memory_stays_flat(
    gateway: GatewayProcess, upstreams: Upstreams, background_loop: BackgroundLoop
) -> None:
    pid = gateway.proc.pid
    # Warm up: the stream path's code and buffers exist before the baseline is taken.
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    url = gateway.url + "/serving-endpoints/chat/invocations"
    assert background_loop.run(http_call("POST", url, chat))[0] == 200
    baseline = peak = rss(pid)
    sock = connect(gateway.url, rcvbuf=4096)
    raw = bytearray()
    try:
        send_query(
            sock, "big", {"messages": [{"role": "user", "content": "a lot"}], "stream": True}
        )
        # Slow: 4 KiB every 10 ms (about 400 KB/s) for 2.5 s.
        slow_from = time.monotonic()
        paced_from: tuple[int, int] | None = None
        while time.monotonic() < slow_from + 2.5:
            raw += sock.recv(4096)
            peak = max(peak, rss(pid))
            if paced_from is None and time.monotonic() > slow_from + 0.5:  # buffers full
                paced_from = (upstreams.progress.sent, len(raw))
            time.sleep(0.01)
        assert paced_from is not None
        sent = upstreams.progress.sent
        assert not upstreams.progress.finished
        assert sent < BIG_TOTAL
        assert sent - len(raw) <= _kernel_buffers() + GATEWAY_BUFFERS, (sent, len(raw))
        assert sent - paced_from[0] < PACED_BOUND, (paced_from, sent, len(raw))
        assert peak - baseline < RSS_BOUND, (baseline, peak)
        # Then quickly: all of it arrives, ending with [DONE].
        reads = 0
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(1 << 20)
            assert data, "closed before the end"
            raw += data
            reads += 1
            if reads % 64 == 0:
                peak = max(peak, rss(pid))
    finally:
        sock.close()
    assert upstreams.progress.finished
    assert peak - baseline < RSS_BOUND, (baseline, peak)
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    events = dechunk(body).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content == "x" * BIG_TOTAL


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked HTTP/1.1 body."""
    out, at = bytearray(), 0
    while True:
        line_end = body.index(b"\r\n", at)
        size = int(body[at:line_end], 16)
        if size == 0:
            return bytes(out)
        out += body[line_end + 2 : line_end + 2 + size]
        at = line_end + 2 + size + 2


def wait_for(check: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``check`` until it holds (bounded); the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("stream", "gate_after"),
    [(False, 0), (True, 0), (True, 2)],
    ids=["unary-before-headers", "stream-before-first-event", "stream-mid-way"],
)
def test_vanished_client_cancels_the_upstream_at_once(
    gateway: GatewayProcess,
    upstreams: Upstreams,
    background_loop: BackgroundLoop,
    stream: bool,
    gate_after: int,
) -> None:
    """A unary answer parks on the gate before its headers (the provider still thinking); a
    stream parks after ``gate_after`` events. Either way the gateway notices the client
    leave and cancels the upstream request within its 100 ms check."""
    loop = background_loop
    loop.run(http_call("DELETE", upstreams.sim + "/_sim/streams"))
    fault = {"model": "gpt-4o-mini", "gate": "held", "gate_after": gate_after, "times": 1}
    assert loop.run(http_call("POST", upstreams.sim + "/_sim/faults", fault))[0] == 200

    def parked() -> bool:  # the simulator has sent gate_after events and waits on its gate
        streams = sim_streams(loop, upstreams)
        return bool(streams) and streams[0]["sent"] == gate_after

    sock = connect(gateway.url)
    try:
        send_query(
            sock, "chat", {"messages": [{"role": "user", "content": "hi"}], "stream": stream}
        )
        if gate_after:
            read_until(sock, b"data: ")  # the client is reading the stream
        wait_for(parked, 10, "the simulator's stream parked on its gate")
    finally:
        sock.close()  # the client vanishes

    def cancelled() -> bool:
        return bool(sim_streams(loop, upstreams)[0]["state"] != "streaming")

    took = wait_for(cancelled, 3, "the upstream request cancelled")
    [stream] = sim_streams(loop, upstreams)
    loop.run(http_call("DELETE", upstreams.sim + "/_sim/faults"))  # the gate never opened
    assert stream["state"] == "client_gone"
    assert stream["sent"] == gate_after
    assert took < 1.0  # the gateway checks its streams' clients every 100 ms


def test_stalled_body_gets_408_and_the_connection_closes(gateway: GatewayProcess) -> None:
    sock = connect(gateway.url)
    try:
        sock.sendall(post_head("chat", 100) + b'{"messages": ')  # and then nothing
        started = time.monotonic()
        answer = read_to_end(sock, within=10)
        took = time.monotonic() - started
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"\r\nConnection: close" in head
    error = orjson.loads(body)
    assert error["error_code"] == "BAD_REQUEST"
    assert f"within {BODY_TIMEOUT_S:g} s" in error["message"]
    assert BODY_TIMEOUT_S <= took < BODY_TIMEOUT_S + 4  # 408, then closed (aiohttp lingers 2 s)


def test_broken_chunked_body_is_refused(gateway: GatewayProcess) -> None:
    """Broken chunk framing after the body read has started never completes the body: 408
    (had both parts arrived in one read, aiohttp would refuse it with 400 at once)."""
    sock = connect(gateway.url)
    try:
        sock.sendall(post_head("chat", 0, chunked=True) + b'5\r\n{"mes\r\n')
        time.sleep(0.05)  # a second segment: the handler is reading the body by then
        sock.sendall(b"not-a-size\r\n")
        answer = read_until(sock, b"}")
    finally:
        sock.close()
    assert answer.startswith((b"HTTP/1.1 408 ", b"HTTP/1.1 400 "))
    assert b'"error_code":"BAD_REQUEST"' in answer


def test_a_slow_but_complete_body_is_fine(gateway: GatewayProcess) -> None:
    raw = orjson.dumps({"messages": [{"role": "user", "content": "hi"}]})
    sock = connect(gateway.url)
    try:
        sock.sendall(post_head("chat", len(raw)) + raw[:10])
        time.sleep(BODY_TIMEOUT_S / 5)  # a pause well inside the timeout
        sock.sendall(raw[10:])
        answer = read_until(sock, b'"choices"')
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_idle_keepalive_connection_is_closed(gateway: GatewayProcess) -> None:
    sock = connect(gateway.url)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        answer = read_until(sock, b'{"status":"ok"}')
        idle_from = time.monotonic()
        assert read_to_end(sock, within=KEEPALIVE_S + 5) == b""
        idle = time.monotonic() - idle_from
    finally:
        sock.close()
    assert b"Connection: close" not in answer
    assert KEEPALIVE_S - 0.1 <= idle < KEEPALIVE_S + 2
