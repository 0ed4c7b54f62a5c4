"""The gateway's one HTTP client: a pooled, long-lived session shared by every upstream.

One ``aiohttp.ClientSession`` lives as long as the app; its connector keeps a pool of
keep-alive connections per upstream host (``limit_per_host``), so no request ever opens
a session or pays a fresh TLS handshake when a pooled connection is free.

Three timeouts, each for a different failure:
- ``connect``: the upstream host cannot be reached;
- ``first_byte``: the upstream accepted the request but sends no response headers
  (models can think for a long time, so this one is generous);
- ``idle``: a streamed body stops producing bytes. A total timeout is never set: a long
  healthy stream must not be cut off.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from servegate.ingress.errors import UpstreamTimeout, UpstreamUnavailable
from servegate.providers.base import UpstreamRequest


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 60.0


class UpstreamClient:
    def __init__(
        self, timeouts: Timeouts, *, pool_per_host: int = 256, ca_bundle: Path | None = None
    ) -> None:
        self.timeouts = timeouts
        self._pool_per_host = pool_per_host
        self._ca_bundle = ca_bundle
        self._session: aiohttp.ClientSession | None = None

    def tls_context(self) -> ssl.SSLContext:
        """Upstream TLS is always verified: the system's CAs (``SSL_CERT_FILE`` and
        ``SSL_CERT_DIR`` apply), plus ``--ca-bundle`` for a private CA or a TLS-inspecting
        egress proxy. There is no switch to turn verification off."""
        context = ssl.create_default_context()
        if self._ca_bundle is not None:
            context.load_verify_locations(cafile=str(self._ca_bundle))
        return context

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self._pool_per_host, ssl=self.tls_context()
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.timeouts.connect,
                sock_read=self.timeouts.first_byte,
            ),
            auto_decompress=True,
            # Proxy settings from the environment are honoured, but only looked up when
            # there are some: trust_env costs a netrc read and an environment scan per
            # request (a third of the gateway's CPU in the profile).
            trust_env=bool(urllib.request.getproxies()),
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(
        self, request: UpstreamRequest, provider: str, *, deadline: float | None = None
    ) -> aiohttp.ClientResponse:
        """Send and wait for the response headers; the caller reads and releases the body.

        ``deadline`` (a ``time.monotonic()`` value) caps the wait across fallback attempts.
        """
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        budget = self.timeouts.connect + self.timeouts.first_byte
        if deadline is not None:
            budget = min(budget, max(0.0, deadline - time.monotonic()))
        try:
            async with asyncio.timeout(budget):
                return await self._session.request(
                    request.method, request.url, data=request.body, headers=dict(request.headers)
                )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(
                f"Provider '{provider}' did not answer within {self.timeouts.first_byte:g} s."
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"Could not reach provider '{provider}': {type(exc).__name__}."
            ) from None

    async def read_body(self, response: aiohttp.ClientResponse, provider: str) -> bytes:
        try:
            async with asyncio.timeout(self.timeouts.first_byte):
                return await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(
                f"Provider '{provider}' did not finish its response within "
                f"{self.timeouts.first_byte:g} s."
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"Provider '{provider}' broke off its response: {type(exc).__name__}."
            ) from None
        finally:
            response.release()

    async def iter_body(
        self, response: aiohttp.ClientResponse, provider: str
    ) -> AsyncIterator[bytes]:
        """Yield body bytes as they arrive; an idle gap longer than ``idle`` is a timeout."""
        try:
            while True:
                async with asyncio.timeout(self.timeouts.idle):
                    chunk = await response.content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(
                f"Provider '{provider}' sent nothing for {self.timeouts.idle:g} s mid-stream."
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"Provider '{provider}' broke off the stream: {type(exc).__name__}."
            ) from None
