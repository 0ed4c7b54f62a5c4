"""Pull the upstream stream, translate it, and write it to the client as it arrives.

The loop reads one upstream chunk and awaits the write of its frames before reading the
next, so a slow client slows the upstream read (aiohttp's ``write`` drains past 64 KiB):
nothing is buffered without bound.

The client's response is started only once the first translated frame exists, so an error
the upstream reports before any content still becomes a normal error response with its
status. After that, an error can only be reported in-band, and content already sent is never
sent again (so no fallback either): one final ``data:`` event in the OpenAI error-chunk
shape, ``{"error": {"message", "type", "code"}}`` plus the platform's ``error_code`` and
``message`` (the OpenAI SDK raises on it; MLflow yields it), then ``data: [DONE]``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from servegate.canonical.usage import Usage
from servegate.ingress.errors import GatewayError
from servegate.providers.base import StreamTranslator
from servegate.streaming.sse import DONE_FRAME, encode_data
from servegate.streaming.tap import StreamTap
from servegate.transport.client import UpstreamClient

log = logging.getLogger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


@dataclass(slots=True)
class StreamOutcome:
    response: web.StreamResponse
    status: int
    usage: Usage | None
    first_frame_at: float | None = None
    """``perf_counter`` when the first frame reached the client (time to first token)."""


def error_frame(error: GatewayError) -> bytes:
    body = {
        "error": {"message": error.message, "type": "gateway_error", "code": error.error_code},
        "error_code": error.error_code,
        "message": error.message,
    }
    return encode_data(orjson.dumps(body))


async def relay_stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    translator: StreamTranslator,
    client: UpstreamClient,
    *,
    provider: str,
    headers: dict[str, str],
    tap: StreamTap | None = None,
) -> StreamOutcome:
    """Relay a 200 upstream stream. Errors before the first frame propagate as GatewayError.

    ``tap`` (streaming/tap.py) sees every frame and may rewrite it (output guardrails)."""
    response: web.StreamResponse | None = None
    status = 200
    first_frame_at: float | None = None
    try:
        async for chunk in client.iter_body(upstream, provider):
            frames = translator.feed(chunk)
            if tap is not None and frames:
                frames = tap.frames(frames)
            if not frames:
                continue
            if response is None:
                response = await _start(request, headers)
                first_frame_at = time.perf_counter()
            # One write per upstream read: the frames that arrived together leave together.
            await response.write(b"".join(frames))
        frames = translator.finish()
        if tap is not None:
            frames = [*tap.frames(frames), *tap.finish()]
            if tap.before_end is not None:
                await tap.before_end()
        if response is None:
            response = await _start(request, headers)
            first_frame_at = time.perf_counter()
        await response.write(b"".join([*frames, DONE_FRAME]))
    except GatewayError as error:
        if response is None:
            raise
        status = error.status
        log.warning("stream from provider '%s' failed mid-way: %s", provider, error.message)
        await _write_quietly(response, error_frame(error) + DONE_FRAME)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        status = 499  # the client went away; stop reading the upstream too
        upstream.close()
        if response is None:
            raise
        return StreamOutcome(response, status, translator.usage, first_frame_at)
    finally:
        upstream.release()
    await _write_eof_quietly(response)
    return StreamOutcome(response, status, translator.usage, first_frame_at)


async def _start(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    await response.prepare(request)
    return response


async def _write_quietly(response: web.StreamResponse, frame: bytes) -> None:
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        await response.write(frame)


async def _write_eof_quietly(response: web.StreamResponse) -> None:
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        await response.write_eof()
