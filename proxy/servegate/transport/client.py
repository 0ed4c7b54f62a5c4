"""The gateway's one HTTP client: a pooled, long-lived session shared by every upstream.

One ``aiohttp.ClientSession`` lives as long as the app; its connector keeps a pool of
keep-alive connections per upstream host, so no request ever opens a session or pays a
fresh TLS handshake when a pooled connection is free. The pool grows with the requests in
flight: a cap (``--upstream-connections-per-host``) would queue requests inside the gateway,
where they wait without a word until their deadline, so by default there is none.

Three timeouts, each for a different failure:
- ``connect``: the upstream host cannot be reached;
- ``first_byte``: the upstream accepted the request but sends no response headers
  (models can think for a long time, so this one is generous);
- ``idle``: a streamed body stops producing bytes. A total timeout is never set: a long
  healthy stream must not be cut off. Until its first byte reaches the client, though, a
  stream is held to the request's deadline: a slow-drip upstream that sends a byte now and
  then without ever producing an answer is cut there, as a unary body is.

Nothing a provider sends can make the gateway buffer without bound: a unary body over
``max_response_bytes`` is refused (by its ``Content-Length`` before it is read, else as it
arrives), and so is a single stream event that grows past it (streaming/sse.py). Every
failure becomes an :class:`UpstreamFault` whose ``reason`` says which of these it was.
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

from servegate.ingress.errors import UpstreamFault, UpstreamTimeout, UpstreamUnavailable
from servegate.providers.base import UpstreamRequest


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    first_byte: float = 120.0
    idle: float = 60.0


#: The default cap on one upstream answer (a unary body, or one stream event): far above any
#: chat answer, and room for a 2,048-input batch of 1,536-dimension embeddings.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class UpstreamClient:
    def __init__(
        self,
        timeouts: Timeouts,
        *,
        pool_per_host: int = 0,
        ca_bundle: Path | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.timeouts = timeouts
        self.max_response_bytes = max_response_bytes
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
            # aiohttp reads 256 KiB at a time and pauses a response only past twice that:
            # half a MiB held per stream whose client reads slower than its provider
            # writes. 16 KiB keeps backpressure tight: 1,000 slow streams in about 200 MiB
            # instead of 680 (bench/RESULTS.md, "Slow streams").
            read_bufsize=16 * 1024,
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
        self,
        request: UpstreamRequest,
        provider: str,
        *,
        deadline: float | None = None,
        whole: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send and wait for the response headers; the caller reads and releases the body.

        ``deadline`` (a ``time.monotonic()`` value) caps the wait across fallback attempts.
        ``whole``: the caller will read the whole body (a unary answer), and the deadline
        bounds that too. aiohttp's own timer does it, running until the body is read, so
        :meth:`read_body` needs no second one (a timer less on every unary request).
        """
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        budget = self.timeouts.connect + self.timeouts.first_byte
        if deadline is not None:
            budget = min(budget, max(0.0, deadline - time.monotonic()))
        try:
            if whole:
                return await self._session.request(
                    request.method,
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    timeout=aiohttp.ClientTimeout(
                        total=budget,
                        sock_connect=self.timeouts.connect,
                        sock_read=self.timeouts.first_byte,
                    ),
                )
            async with asyncio.timeout(budget):
                return await self._session.request(
                    request.method, request.url, data=request.body, headers=request.headers
                )
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(
                f"Could not connect to provider '{provider}' within {self.timeouts.connect:g} s.",
                provider=provider,
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(
                f"Provider '{provider}' did not answer within {self.timeouts.first_byte:g} s.",
                provider=provider,
            ) from None
        except aiohttp.ClientError as exc:
            raise connection_fault(
                exc, provider, f"Could not reach provider '{provider}'"
            ) from None

    async def read_body(
        self, response: aiohttp.ClientResponse, provider: str, *, deadline: float | None = None
    ) -> bytes:
        """The whole body, within the deadline (a slow-drip upstream is cut there) and the
        size cap. The response is released whatever happens.

        ``deadline`` None: the response was sent ``whole``, and its own timer bounds this."""
        cap = self.max_response_bytes
        try:
            if response.content_length is not None and response.content_length > cap:
                raise response_too_large(provider, cap)
            if deadline is None:
                return await self._read(response, provider, cap)
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await self._read(response, provider, cap)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(
                f"Provider '{provider}' did not finish its response within the deadline.",
                provider=provider,
            ) from None
        except aiohttp.ClientError as exc:
            lead = f"Provider '{provider}' broke off its response"
            raise connection_fault(exc, provider, lead) from None
        finally:
            # A body left unread (refused, or cut by the deadline) must not go back to the
            # pool with the rest of it still to come: close the connection instead.
            if not response.content.at_eof():
                response.close()
            response.release()

    @staticmethod
    async def _read(response: aiohttp.ClientResponse, provider: str, cap: int) -> bytes:
        if response.content_length is not None:  # within the cap, checked by the caller
            return await response.read()
        body = bytearray()
        while chunk := await response.content.readany():
            body += chunk
            if len(body) > cap:
                raise response_too_large(provider, cap)
        return bytes(body)

    async def iter_body(
        self,
        response: aiohttp.ClientResponse,
        provider: str,
        *,
        answer_by: AnswerDeadline | None = None,
    ) -> AsyncIterator[bytes]:
        """Yield body bytes as they arrive; an idle gap longer than ``idle`` is a timeout.

        While ``answer_by`` is pending (the consumer has not yet passed any answer on),
        every wait is also held to it: bytes that trickle in without ever making an answer
        do not keep a request open past its deadline."""
        try:
            while True:
                idle = self.timeouts.idle
                if answer_by is not None and answer_by.at is not None:
                    idle = min(idle, max(0.0, answer_by.at - time.monotonic()))
                async with asyncio.timeout(idle):
                    chunk = await response.content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError):
            if answer_by is not None and answer_by.passed():
                message = f"Provider '{provider}' started no answer within the deadline."
            else:
                message = (
                    f"Provider '{provider}' sent nothing for {self.timeouts.idle:g} s mid-stream."
                )
            raise UpstreamTimeout(message, provider=provider) from None
        except aiohttp.ClientError as exc:
            lead = f"Provider '{provider}' broke off the stream"
            raise connection_fault(exc, provider, lead) from None


@dataclass(slots=True)
class AnswerDeadline:
    """When a stream's first answer must have reached the client (a ``time.monotonic()``
    value); the relay sets ``at`` to None once it has, and only the idle timeout is left."""

    at: float | None

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


def expect_content_type(
    response: aiohttp.ClientResponse, provider: str, accepted: frozenset[str] | None = None
) -> None:
    """Refuse a successful answer of the wrong media type before reading it.

    ``accepted`` is a stream format's types; None means a JSON body, of any JSON type
    (``application/json``, ``application/problem+json``...). An answer without a
    ``Content-Type`` is given the benefit of the doubt: its body is checked anyway."""
    if "Content-Type" not in response.headers:
        return
    mimetype = response.content_type
    if accepted is None:
        if mimetype.endswith(("/json", "+json")):
            return
        wanted = "JSON"
    elif mimetype in accepted:
        return
    else:
        wanted = " or ".join(sorted(accepted))
    response.close()  # its body is of no use: do not read it, or pool the connection
    raise UpstreamUnavailable(
        f"Provider '{provider}' answered with {mimetype[:100]}, not {wanted}.",
        provider=provider,
    )


def response_too_large(provider: str, cap: int) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        f"Provider '{provider}' sent a response over the gateway's "
        f"{cap / 1048576:g} MiB limit (--max-upstream-response).",
        reason="UPSTREAM_RESPONSE_TOO_LARGE",
        provider=provider,
    )


def connection_fault(exc: aiohttp.ClientError, provider: str, lead: str) -> UpstreamFault:
    """What a failed connection means for the client, named without the exception's text
    (which can carry a URL with credentials in its query)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        what, reason = "its TLS certificate could not be verified", "UPSTREAM_UNREACHABLE"
        if not isinstance(exc, aiohttp.ClientConnectorCertificateError):
            what = "the TLS handshake failed"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        what, reason = "the connection was refused or timed out", "UPSTREAM_UNREACHABLE"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        what, reason = "the response broke off before it was complete", "UPSTREAM_CONNECTION_LOST"
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        what, reason = "the connection was closed or reset", "UPSTREAM_CONNECTION_LOST"
    else:
        what, reason = type(exc).__name__, "UPSTREAM_BAD_RESPONSE"
    return UpstreamUnavailable(f"{lead}: {what}.", reason=reason, provider=provider)
