"""The network between the gateway and the providers, as a corporate network has it: an
egress HTTPS proxy, and providers that answer on their real hostnames over TLS.

:class:`EgressProxy` is a small HTTP ``CONNECT`` proxy on 127.0.0.1. It tunnels only to
the ``host:port`` targets it was given, each mapped to a local port (a simulator serving
TLS with a certificate for that hostname), and refuses everything else with 403: any
other host, any other method (a plain ``GET http://...``), a malformed request. It records
every tunnel (the target, and the first bytes the client sent through it, so a test can
see that TLS, not plaintext, went through) and every refusal.

It is bounded everywhere: at most ``max_connections`` clients at once (more get 503),
request heads of at most ``max_head_bytes`` read within ``head_timeout``, a tunnel that
carries nothing for ``idle_timeout`` is closed, and :meth:`EgressProxy.close` ends every
tunnel. :func:`serve_tls` serves an aiohttp app over TLS with a certificate for a hostname
issued by a throwaway ``trustme`` CA.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import trustme
from aiohttp import web

from servegate.simulators.tls import server_ssl_context

__all__ = ["EgressProxy", "Tunnel", "serve_tls"]

TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello


@dataclass
class Tunnel:
    """One tunnel the proxy opened."""

    target: str
    """``host:port`` as the client asked for it (lower-cased)."""
    first_bytes: bytes = b""
    """Up to 16 bytes the client sent first through the tunnel."""
    bytes_up: int = 0
    bytes_down: int = 0

    @property
    def carried_tls(self) -> bool:
        """The client spoke TLS inside the tunnel (its first record is a handshake)."""
        return self.first_bytes[:1] == bytes([TLS_HANDSHAKE])


@dataclass
class EgressProxy:
    routes: Mapping[str, int]
    """``host:port`` → the 127.0.0.1 port to tunnel it to."""
    max_connections: int = 64
    max_head_bytes: int = 16 * 1024
    head_timeout: float = 5.0
    connect_timeout: float = 5.0
    idle_timeout: float = 60.0
    tunnels: list[Tunnel] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """The request line of every refused request (``CONNECT evil.example:443 HTTP/1.1``)."""
    _server: asyncio.Server | None = field(default=None, init=False, repr=False)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    async def start(self) -> str:
        """Listen on a free loopback port; returns the proxy URL (``http://127.0.0.1:P``)."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, limit=self.max_head_bytes
        )
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    # ------------------------------------------------------------ internals

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= self.max_connections:
            await _answer(writer, 503, "Service Unavailable")
            await _close(writer)
            return
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.head_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self.refused.append("<request head too large>")
            await _answer(writer, 431, "Request Header Fields Too Large")
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        target = parts[1].lower() if len(parts) == 3 and parts[0] == "CONNECT" else None
        port = self.routes.get(target) if target is not None else None
        if target is None or port is None:
            self.refused.append(line)
            await _answer(writer, 403, "Forbidden")
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, TimeoutError):
            self.refused.append(f"{line} (upstream unreachable)")
            await _answer(writer, 502, "Bad Gateway")
            return
        tunnel = Tunnel(target)
        self.tunnels.append(tunnel)
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(
                self._pump(reader, up_writer, tunnel, upstream=True),
                self._pump(up_reader, writer, tunnel, upstream=False),
            )
        finally:
            await _close(up_writer)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        tunnel: Tunnel,
        *,
        upstream: bool,
    ) -> None:
        try:
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await source.read(65536)
                if not chunk:
                    break
                if upstream:
                    if len(tunnel.first_bytes) < 16:
                        tunnel.first_bytes += chunk[: 16 - len(tunnel.first_bytes)]
                    tunnel.bytes_up += len(chunk)
                else:
                    tunnel.bytes_down += len(chunk)
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            # Half-close so the other side sees the end; then the other pump ends too.
            with contextlib.suppress(OSError, RuntimeError):
                if sink.can_write_eof() and not sink.is_closing():
                    sink.write_eof()


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    with contextlib.suppress(ConnectionError):
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout=2)


async def serve_tls(
    app: web.Application, ca: trustme.CA, hostname: str
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` over TLS on a free loopback port, presenting a certificate for
    ``hostname`` issued by ``ca``; returns the runner (to clean up) and the port."""
    leaf = ca.issue_cert(hostname)
    chain = b"".join(pem.bytes() for pem in leaf.cert_chain_pems)
    context = server_ssl_context(chain, leaf.private_key_pem.bytes())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, int(runner.addresses[0][1])
