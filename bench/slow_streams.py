"""1,000 slow streams at once: servegate's RSS, and the backpressure on its upstreams.

Many streams held open by clients that read slowly, while their upstream writes faster:
what the gateway holds in memory, and whether a slow client makes it buffer a response.

Issue 8: "1,000 concurrent slow streams held open with RSS under 250 MiB, with backpressure
so that a slow client never buffers a whole response." Run alone by
``bench/run --slow-streams`` (it replaces the "Slow streams" section of RESULTS.md and
leaves the rest of the file alone), and as the last part of the full ``bench/run``.

- **Upstream**: bench/fake_upstream.py, one frame of about 4.2 KiB every
  ``--chunk-delay-ms`` (50: about 85 kB/s a stream, faster than any model streams, so that
  every buffer on the way fills during the hold), ``CHUNKS`` frames (8.4 MiB) a response,
  far more than all the buffers hold. It listens on one port (``--upstream-ports`` more):
  servegate opens one pooled connection per stream in flight, with no cap per host unless
  ``--upstream-connections-per-host`` sets one. Its send buffer is fixed
  (``SO_SNDBUF``), and both hops use 1448-byte TCP segments as on Ethernet: on loopback's
  64 KiB segments the kernel grows a connection's buffers to megabytes.
- **Gateway**: ``servegate serve --workers 1`` on CPU 0, started as suite.py starts it
  (the frozen copy of the source), with one ``bench-slow-<i>`` endpoint per upstream port.
- **Clients**: this process, one asyncio loop, one raw socket per stream with a 4 KiB
  ``SO_RCVBUF`` (so TCP's window closes soon); each reads the response head at once, then
  ``--read-bytes`` every ``--read-every`` seconds (512 B/s by default).
- **Measure**: once every stream is relaying, hold them all open for ``--hold`` seconds,
  sampling the gateway's RSS and the upstream's progress every second; then stop reading
  and take the figures: the gateway's ``servegate_requests_in_flight`` and established
  connections, its RSS and VmHWM, the bytes the upstream wrote per stream and how many of
  its streams are blocked in a write, the bytes the client read, and the bytes in the
  kernel's socket queues (``/proc/net/tcp``) of both hops. What is left,
  written - read - kernel, is what the gateway holds in its own buffers. Then close every
  client socket, wait for in-flight and the upstream's open streams to reach 0, and check
  ``/readyz`` and one whole (short) stream.

A guard stops the hold early when the gateway's RSS passes ``GUARD_MIB`` (backpressure
failed). Exits 0 when every stream was held, the peak RSS was under the target, no
response was written to the end, and nothing failed; else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import socket
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import fake_upstream
import machine
import snapshot
from gateway_config import SLOW, GatewayConfig, write_config
from procs import Proc, ProcessFailed, enter_main, free_port, rss_kib
from report import (
    TARGET_SLOW_MIB,
    TARGET_SLOW_STREAMS,
    GatewayFacts,
    Run,
    SlowStreams,
    SlowTick,
    splice_slow,
)
from scenarios import GatewaySpec, chat
from suite import Bench, Env, Settings

HERE = Path(__file__).resolve().parent
CHUNKS = 2048  # content chunks per response (the clients ask for as many max_tokens)
CHUNK_WORDS = 680  # words per chunk: an SSE frame of about 4.2 KiB
HEALTH_CHUNKS = 20  # the whole stream read after the hold
CLIENT_RCVBUF = 4096  # the kernel doubles it
MSS = 1448  # TCP segments as on Ethernet, on both hops (loopback's are 64 KiB)
UPSTREAM_SNDBUF = 65536  # the upstream's socket send buffer (the kernel doubles it)
GUARD_MIB = 1024  # stop the hold when the gateway's RSS passes this
HOLD_S = 20.0  # the default hold: long enough for every buffer to fill
OPEN_TIMEOUT_S = 60.0  # for every stream to start relaying (default of --open-timeout)
CLOSE_TIMEOUT_S = 15.0  # for in-flight and the upstream's streams to reach 0 after closing
CONNECTS_AT_ONCE = 100
HEAD_LIMIT = 8192
DONE = b"data: [DONE]"


@dataclass(frozen=True)
class SlowSettings:
    streams: int
    hold_s: float
    open_timeout_s: float
    upstream_ports: int
    read_bytes: int
    read_every_s: float
    chunk_delay_ms: float
    output: Path
    servegate_ref: str | None
    gateway_cpus: str | None
    load_cpus: str | None

    @property
    def rate(self) -> str:
        return f"{self.read_bytes} B every {self.read_every_s:g} s"


# ----------------------------------------------------------------------------- the clients


@dataclass(eq=False)
class Stream:
    """One client: a raw socket, its response head, and the bytes it has read."""

    index: int
    status: int | None = None
    read: int = 0  # bytes received, the head and HTTP chunk framing included
    error: str | None = None
    sock: socket.socket | None = None


@dataclass
class Clients:
    """Every stream, the counts the waits need, and the switch that stops all reading."""

    host: str
    port: int
    settings: SlowSettings
    streams: list[Stream] = field(default_factory=list)
    relaying: int = 0  # answered 200 and sent body bytes
    settled: int = 0  # relaying or failed
    receiving: int = 0  # readers inside a recv right now
    all_settled: asyncio.Event = field(default_factory=asyncio.Event)
    reading: asyncio.Event = field(default_factory=asyncio.Event)  # clear: do not read
    quiet: asyncio.Event = field(default_factory=asyncio.Event)  # no reader in a recv
    connects: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONNECTS_AT_ONCE))

    def settle(self, stream: Stream, error: str | None = None) -> None:
        if error is not None:
            stream.error = error
        else:
            self.relaying += 1
        self.settled += 1
        if self.settled >= len(self.streams):
            self.all_settled.set()

    def request(self, stream: Stream) -> bytes:
        model = SLOW.format(stream.index % self.settings.upstream_ports)
        body = json.dumps({**chat(model, stream=True), "max_tokens": CHUNKS}).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def run(self, stream: Stream) -> None:
        """Connect, send, read the head, then read slowly until cancelled."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stream.sock = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
        sock.setblocking(False)
        try:
            async with self.connects:
                await loop.sock_connect(sock, (self.host, self.port))
                await loop.sock_sendall(sock, self.request(stream))
            head = b""  # up to the first body bytes
            while not head.partition(b"\r\n\r\n")[2] and len(head) < HEAD_LIMIT:
                data = await loop.sock_recv(sock, 1024)
                if not data:
                    break
                head += data
                stream.read += len(data)
            stream.status = _status(head)
            if stream.status != 200 or not head.partition(b"\r\n\r\n")[2]:
                self.settle(stream, f"HTTP {stream.status}: {head[:200]!r}")
                return
            self.settle(stream)
            pace = random.Random(stream.index)
            await asyncio.sleep(pace.uniform(0, self.settings.read_every_s))
            while True:
                await self.reading.wait()
                self.receiving += 1
                self.quiet.clear()
                try:
                    data = await loop.sock_recv(sock, self.settings.read_bytes)
                finally:
                    self.receiving -= 1
                    if self.receiving == 0:
                        self.quiet.set()
                if not data:
                    stream.error = "the stream ended before the client closed it"
                    return
                stream.read += len(data)
                await asyncio.sleep(self.settings.read_every_s)  # the pace, not a wait
        except OSError as exc:
            if stream.status is None:
                self.settle(stream, f"{type(exc).__name__}: {exc}")
            else:
                stream.error = f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        for stream in self.streams:
            if stream.sock is not None:
                stream.sock.close()


def _status(head: bytes) -> int | None:
    parts = head.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


# ------------------------------------------------------------------------ what /proc shows


QUEUES = (
    "upstream send",
    "gateway receive (from the upstream)",
    "gateway send (to the client)",
    "client receive",
)


@dataclass
class Sockets:
    """Established loopback TCP sockets of the run, from /proc/net/tcp."""

    gateway_conns: int = 0  # the gateway's end of client connections
    upstream_conns: int = 0  # the gateway's end of upstream connections
    # Bytes in send (tx) and receive (rx) queues, by socket, along the way of a stream.
    queues: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUEUES, 0))

    @property
    def queued(self) -> int:
        return sum(self.queues.values())


def sockets(gateway_port: int, upstream_ports: set[int]) -> Sockets:
    found = Sockets()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] != "01":  # ESTABLISHED
                continue
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            tx, rx = (int(x, 16) for x in fields[4].split(":"))
            if local in upstream_ports:
                found.queues[QUEUES[0]] += tx + rx
            elif remote in upstream_ports:
                found.upstream_conns += 1
                found.queues[QUEUES[1]] += tx + rx
            elif local == gateway_port:
                found.gateway_conns += 1
                found.queues[QUEUES[2]] += tx + rx
            elif remote == gateway_port:
                found.queues[QUEUES[3]] += tx + rx
    return found


# ---------------------------------------------------------------------------- the scenario


@dataclass
class Target:
    base: str  # the gateway
    upstream: str  # one of the upstream's ports, for /streams
    gateway_port: int
    upstream_ports: set[int]
    proc: Proc


class Scenario:
    def __init__(self, settings: SlowSettings, target: Target, result: SlowStreams) -> None:
        self.settings, self.target, self.result = settings, target, result
        self.started = time.monotonic()
        self.guard_tripped = False

    def rss(self) -> int:
        self.target.proc.check_alive()
        current = rss_kib(self.target.proc.pid)[0]
        if current > GUARD_MIB * 1024:
            self.guard_tripped = True
        return current

    async def tick(self, session: aiohttp.ClientSession, clients: Clients) -> None:
        """One sample: the gateway's RSS, the upstream's progress, the clients'."""
        upstream = await self.get_json(session, self.target.upstream + "/streams")
        self.result.timeline.append(
            SlowTick(
                seconds=time.monotonic() - self.started,
                rss_kib=self.rss(),
                relaying=clients.relaying,
                written=sum(_ints(upstream["written"])) + _int(upstream["done_bytes"]),
                read=sum(s.read for s in clients.streams),
                blocked=_int(upstream["blocked"]),
            )
        )

    async def get_json(self, session: aiohttp.ClientSession, url: str) -> dict[str, object]:
        async with session.get(url) as response:
            response.raise_for_status()
            data: dict[str, object] = await response.json()
            return data

    async def in_flight(self, session: aiohttp.ClientSession) -> float:
        async with session.get(self.target.base + "/metrics") as response:
            text = await response.text()
        return sum(
            float(line.rsplit(None, 1)[1])
            for line in text.splitlines()
            if line.startswith("servegate_requests_in_flight")
        )

    async def run(self) -> None:
        settings, result, target = self.settings, self.result, self.target
        clients = Clients("127.0.0.1", target.gateway_port, settings)
        clients.reading.set()
        clients.quiet.set()
        clients.streams = [Stream(i) for i in range(settings.streams)]
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.started = time.monotonic()
            tasks = [asyncio.create_task(clients.run(s)) for s in clients.streams]
            try:
                await self.open_all(session, clients)
                await self.hold(session, clients)
                await self.figures(session, clients)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                clients.close()  # after the tasks: no socket is closed under a waiting recv
            result.opened = sum(1 for s in clients.streams if s.status is not None)
            failed = [s for s in clients.streams if s.error]
            result.errors = len(failed)
            result.error_samples = [f"stream {s.index}: {s.error}" for s in failed[:10]]
            await self.after(session)

    async def open_all(self, session: aiohttp.ClientSession, clients: Clients) -> None:
        """Wait, sampling every second, until every stream relays or has failed."""
        deadline = self.started + self.settings.open_timeout_s
        while not clients.all_settled.is_set() and not self.guard_tripped:
            left = deadline - time.monotonic()
            if left <= 0:
                self.result.notes.append(
                    f"Only {clients.relaying:,} of {self.settings.streams:,} streams were "
                    f"relaying {self.settings.open_timeout_s:g} s after the first connect; the "
                    "hold went on with them."
                )
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(clients.all_settled.wait(), min(1.0, left))
            await self.tick(session, clients)
        self.result.open_s = time.monotonic() - self.started
        print(
            f"bench: slow streams: {clients.relaying:,} relaying after "
            f"{self.result.open_s:.1f} s; holding {self.settings.hold_s:g} s",
            flush=True,
        )

    async def hold(self, session: aiohttp.ClientSession, clients: Clients) -> None:
        started = time.monotonic()
        end = started + self.settings.hold_s
        while (left := end - time.monotonic()) > 0 and not self.guard_tripped:
            await asyncio.sleep(min(1.0, left))  # the sampling interval
            await self.tick(session, clients)
        self.result.held_s = time.monotonic() - started
        if self.guard_tripped:
            self.result.notes.append(
                f"**The hold was stopped early**: the gateway's RSS passed {GUARD_MIB} MiB."
            )

    async def figures(self, session: aiohttp.ClientSession, clients: Clients) -> None:
        """Stop reading, then take every figure while nothing moves on the client's side."""
        result, target = self.result, self.target
        clients.reading.clear()
        try:  # a read already under way ends when its bytes arrive
            await asyncio.wait_for(clients.quiet.wait(), 5.0)
        except TimeoutError:
            result.notes.append(
                f"{clients.receiving} clients were still waiting for bytes 5 s after reading "
                "stopped: what they read next is not in the figures."
            )
        result.streaming = sum(
            1 for s in clients.streams if s.status == 200 and s.error is None and s.read
        )
        reads = [s.read for s in clients.streams if s.status == 200]
        found = sockets(target.gateway_port, target.upstream_ports)
        upstream = await self.get_json(session, target.upstream + "/streams")
        result.in_flight = await self.in_flight(session)
        self.rss()
        result.end_kib, result.peak_kib = rss_kib(target.proc.pid)
        written = _ints(upstream["written"])
        buffered = sum(_ints(upstream["buffered"]))
        result.gateway_conns, result.upstream_conns = found.gateway_conns, found.upstream_conns
        result.upstream_open = len(written)
        result.upstream_done = _int(upstream["done"])
        result.upstream_blocked = _int(upstream["blocked"])
        result.kernel_bytes, result.kernel_queues = found.queued, dict(found.queues)
        if written:
            result.written = (int(statistics.median(written)), max(written))
        if reads:
            result.read = (int(statistics.median(reads)), max(reads))
        done_bytes = _int(upstream["done_bytes"])
        in_kernel_or_gateway = sum(written) + done_bytes - buffered - sum(reads)
        result.gateway_bytes = in_kernel_or_gateway - found.queued
        frames = response_frames(CHUNKS)
        pace = len(frames.body) / (self.settings.chunk_delay_ms / 1000)
        elapsed = time.monotonic() - self.started
        result.unblocked_bytes = min(frames.size, int(pace * elapsed))

    async def after(self, session: aiohttp.ClientSession) -> None:
        """Once the clients have closed: in-flight and the upstream's streams back to 0,
        RSS, then /readyz and one whole stream."""
        result, target = self.result, self.target
        closed = time.monotonic()
        deadline = closed + CLOSE_TIMEOUT_S
        while True:
            upstream = await self.get_json(session, target.upstream + "/streams")
            in_flight = await self.in_flight(session)
            if upstream["open"] == 0 and in_flight == 0:
                result.closed_s = time.monotonic() - closed
                break
            if time.monotonic() >= deadline:
                result.notes.append(
                    f"{CLOSE_TIMEOUT_S:g} s after the clients closed, the gateway still had "
                    f"{in_flight:g} requests in flight and the upstream {upstream['open']} "
                    "open streams."
                )
                break
            await asyncio.sleep(0.1)  # polling another process, bounded by the deadline
        result.closed_kib = self.rss()
        result.healthy = await self.health(session)

    async def health(self, session: aiohttp.ClientSession) -> str | None:
        """/readyz, then one whole stream (``HEALTH_CHUNKS`` long)."""
        try:
            async with session.get(self.target.base + "/readyz") as response:
                if response.status != 200:
                    return f"/readyz answered {response.status}"
            body = {**chat(SLOW.format(0), stream=True), "max_tokens": HEALTH_CHUNKS}
            url = self.target.base + "/v1/chat/completions"
            timeout = aiohttp.ClientTimeout(total=60)
            async with session.post(url, json=body, timeout=timeout) as response:
                tail, size = b"", 0
                async for chunk in response.content.iter_any():
                    tail, size = (tail + chunk)[-64:], size + len(chunk)
                if response.status != 200 or DONE not in tail:
                    return f"HTTP {response.status}, {size:,} bytes, ending {tail[-40:]!r}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _ints(value: object) -> list[int]:
    assert isinstance(value, list)
    return [_int(v) for v in value]


# ---------------------------------------------------------------------------------- set-up


def raise_nofile(streams: int, result: SlowStreams) -> bool:
    """Raise this process's open-files soft limit (the gateway and the upstream inherit it)
    to what the run needs: the gateway holds two sockets a stream. False if the hard limit
    is too low."""
    need = 2 * streams + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        result.error = (
            f"the open-files hard limit (ulimit -Hn) is {hard}; {streams:,} streams need "
            f"about {need:,} (two sockets a stream in the gateway)"
        )
        return False
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    result.details["open files"] = (
        f"soft limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]:,} for the gateway, the "
        f"upstream and the clients (was {soft:,}; hard {hard:,})"
    )
    return True


def measure(settings: SlowSettings, env: Env, stack: ExitStack) -> SlowStreams:
    """Start the upstream and one gateway (from ``env``'s frozen copy of the source), run
    the scenario, stop them. Every failure ends up in the result."""
    result = SlowStreams(streams=settings.streams)
    frames = response_frames(CHUNKS)
    pace = len(frames.body) * 1000 / settings.chunk_delay_ms
    read_rate = settings.read_bytes / settings.read_every_s
    result.details.update(
        {
            "date (UTC)": machine.describe()["date (UTC)"],
            "servegate": snapshot.describe(settings.servegate_ref),
            "clients": f"{settings.streams:,} streamed chats at once from one asyncio process "
            f"(raw sockets, SO_RCVBUF {CLIENT_RCVBUF} B); each reads the head, then "
            f"{settings.rate}",
            "upstream": f"fake_upstream.py on {settings.upstream_ports} port(s); each response is "
            f"{CHUNKS:,} frames of {len(frames.body):,} B ({frames.size / 1048576:.1f} MiB), one "
            f"every {settings.chunk_delay_ms:g} ms ({pace / 1000:,.0f} kB/s per stream, "
            f"{pace / read_rate:,.0f} times what a client reads)",
            "TCP": f"segments of {MSS} B on both hops, as on Ethernet (`TCP_MAXSEG`; loopback's "
            "64 KiB segments let the kernel grow a connection's buffers to megabytes); the "
            f"upstream's send buffer fixed at {UPSTREAM_SNDBUF // 1024} KiB (`SO_SNDBUF`), so "
            "the kernel does not queue megabytes a stream on its behalf",
            "pinning": f"servegate on CPU {settings.gateway_cpus}; the upstream and the clients "
            f"on CPU {settings.load_cpus}"
            if settings.gateway_cpus
            else "none (fewer than 2 CPUs)",
        }
    )
    if settings.hold_s < HOLD_S:
        result.notes.append(
            f"A short hold ({settings.hold_s:g} s; the default is {HOLD_S:g} s): the buffers may "
            "not all have filled, so the RSS figures are a lower bound."
        )
    if not raise_nofile(settings.streams, result):
        return result
    try:
        run_scenario(settings, env, stack, result)
    except (ProcessFailed, OSError, aiohttp.ClientError, TimeoutError) as exc:
        traceback.print_exc()
        result.error = f"{type(exc).__name__}: {str(exc)[:300]}"
    return result


def run_scenario(settings: SlowSettings, env: Env, stack: ExitStack, result: SlowStreams) -> None:
    ports = [free_port() for _ in range(settings.upstream_ports)]
    argv = [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(ports[0])]
    for port in ports[1:]:
        argv += ["--extra-port", str(port)]
    argv += ["--chunks", str(CHUNKS), "--chunk-words", str(CHUNK_WORDS), "--mss", str(MSS)]
    argv += ["--chunk-delay-ms", str(settings.chunk_delay_ms), "--sndbuf", str(UPSTREAM_SNDBUF)]
    upstream = Proc("slow-upstream", argv, env.tmp / "slow-upstream.log", settings.load_cpus)
    stack.callback(upstream.stop)
    for port in ports:
        upstream.wait_port(port)
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    root = env.tmp / "slow"
    env = Env(
        tmp=env.tmp,
        upstream=bases[0],
        config=write_config(root, bases[0], slow_upstreams=bases),
        redis_url=None,
        redis_port=None,
        servegate_env=env.servegate_env,
        uvloop=env.uvloop,
        workers_flag=env.workers_flag,
        wrk=False,
    )
    result.response_bytes = response_frames(CHUNKS).size
    suite_settings = Settings.one_gateway(
        duration=settings.hold_s,
        output=settings.output,
        gateway_cpus=settings.gateway_cpus,
        load_cpus=settings.load_cpus,
        servegate_ref=settings.servegate_ref,
        use_wrk=False,
    )
    run = Run(machine={}, settings={})
    spec = GatewaySpec("servegate-1w", "servegate", 1, settings.gateway_cpus)
    facts = GatewayFacts(spec)
    proc, base = Bench(suite_settings, env, run, stack).start(spec, facts)
    assert proc is not None
    result.details["servegate command"] = run.settings["servegate command"]
    result.idle_kib = facts.idle_rss_kib
    target = Target(base, bases[0], int(base.rsplit(":", 1)[1]), set(ports), proc)
    try:
        asyncio.run(Scenario(settings, target, result).run())
    finally:
        proc.stop()
        upstream.stop()


def response_frames(chunks: int) -> fake_upstream.Frames:
    """One whole response, as the fake upstream writes it."""
    options = fake_upstream.Options(chunks=chunks, chunk_words=CHUNK_WORDS)
    return fake_upstream.Bodies(options).chat_stream("gpt-4o-mini", False)


def frozen_env(tmp: Path, ref: str | None) -> Env:
    """What ``measure`` needs from the suite's environment when run alone: the frozen copy
    of servegate's source (the upstream and the config, ``measure`` makes itself)."""
    servegate_env = snapshot.take(tmp / "src", ref)
    return Env(
        tmp=tmp,
        upstream="",
        config=GatewayConfig(tmp / "slow" / "manifests", tmp / "slow" / "secrets"),
        redis_url=None,
        redis_port=None,
        servegate_env=servegate_env,
        uvloop=snapshot.uses_uvloop(tmp / "src", servegate_env),
        workers_flag=machine.servegate_has_workers(servegate_env),
        wrk=False,
    )


def parse_args(argv: list[str] | None = None) -> SlowSettings:
    parser = argparse.ArgumentParser(
        prog="bench/run --slow-streams", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--streams", type=int, default=TARGET_SLOW_STREAMS, help="streams held open at once"
    )
    parser.add_argument(
        "--hold", type=float, default=HOLD_S, help=f"seconds to hold them open (default {HOLD_S:g})"
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=OPEN_TIMEOUT_S,
        help=f"seconds for every stream to start relaying (default {OPEN_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--upstream-ports",
        type=int,
        help="ports the upstream listens on, streams spread over them (default 1)",
    )
    parser.add_argument("--read-bytes", type=int, default=256, help="bytes per client read")
    parser.add_argument("--read-every", type=float, default=0.5, help="seconds between reads")
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=50.0,
        help="the upstream's pause between frames (default 50: about 85 kB/s a stream)",
    )
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument(
        "--servegate-ref",
        help="measure this git commit or branch of servegate (default: the working tree)",
    )
    args = parser.parse_args(argv)
    numbers = (args.streams, args.hold, args.open_timeout, args.read_bytes, args.read_every)
    if min(*numbers, args.chunk_delay_ms) <= 0:
        parser.error("--streams, --hold, --open-timeout, --read-*, --chunk-delay-ms: positive")
    ports = args.upstream_ports or 1
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    return SlowSettings(
        streams=args.streams,
        hold_s=args.hold,
        open_timeout_s=args.open_timeout,
        upstream_ports=max(1, ports),
        read_bytes=args.read_bytes,
        read_every_s=args.read_every,
        chunk_delay_ms=args.chunk_delay_ms,
        output=args.output,
        servegate_ref=args.servegate_ref,
        gateway_cpus="0" if two_cpus else None,
        load_cpus="1" if two_cpus else None,
    )


def in_suite(settings: Settings) -> SlowSettings:
    """The defaults, with the suite's hold, output, servegate ref and CPUs."""
    defaults = parse_args([])
    return replace(
        defaults,
        hold_s=settings.slow_hold,
        output=settings.output,
        servegate_ref=settings.servegate_ref,
        gateway_cpus=settings.gateway_cpus,
        load_cpus=settings.load_cpus,
    )


def summary(result: SlowStreams) -> str:
    peak = "-" if result.peak_kib is None else f"{result.peak_kib / 1024:.1f}"
    per = "-"
    if result.gateway_bytes is not None:
        per = f"{result.gateway_bytes / max(result.streams, 1) / 1024:.1f}"
    return (
        f"bench: slow streams: {result.streaming:,} of {result.streams:,} held, peak RSS "
        f"{peak} MiB (target < {TARGET_SLOW_MIB}), gateway-buffered {per} KiB per stream, "
        f"{result.errors} errors: {'PASS' if result.passed else 'FAIL'}"
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    enter_main(settings.load_cpus)
    result = SlowStreams(streams=settings.streams)
    try:
        with tempfile.TemporaryDirectory(prefix="servegate-slow-") as tmp, ExitStack() as stack:
            env = frozen_env(Path(tmp), settings.servegate_ref)
            result = measure(settings, env, stack)
    except (snapshot.SnapshotFailed, OSError) as exc:
        traceback.print_exc()
        result.error = f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        target = settings.output if result.error is None else HERE / "out" / "RESULTS.partial.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        old = settings.output.read_text() if settings.output.exists() else ""
        target.write_text(splice_slow(old, result))
        print(f"bench: wrote the slow-streams section of {target}", flush=True)
        print(summary(result), flush=True)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
