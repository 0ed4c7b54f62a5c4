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

A client that goes away is noticed while the relay waits for the upstream too, not only at
the next write: the app's ``ActiveStreams`` checks every relayed stream's client connection
every 100 ms and closes the upstream response of one whose client has gone, so the provider
sees its request cancelled at once (and stops generating tokens nobody reads). The same
check covers the wait before a stream starts and a whole unary answer
(:meth:`ActiveStreams.watch`): the upstream request is cancelled, its connection closed. The same
registry ends every stream still running when the shutdown's grace period is over, with the
error event above (``TEMPORARILY_UNAVAILABLE``) and ``data: [DONE]``: the client learns the
stream was cut rather than receiving a body that just stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
import orjson
from aiohttp import web

from servegate import keys
from servegate.canonical.usage import Usage
from servegate.ingress.errors import GatewayError
from servegate.ingress.health import close_while_draining, drain_key
from servegate.providers.base import StreamTranslator
from servegate.streaming.sse import DONE_FRAME, encode_data
from servegate.streaming.tap import StreamTap
from servegate.transport.client import (
    AnswerDeadline,
    UpstreamClient,
    expect_content_type,
    response_too_large,
)

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


class ClientGone(ConnectionResetError):
    """The client closed its connection while the gateway waited for the provider."""


class ShuttingDown(GatewayError):
    """The gateway's grace period ran out while this stream was still running."""

    status = 503
    error_code = "TEMPORARILY_UNAVAILABLE"


_Ended = Literal["client", "shutdown"]


class _Relayed:
    __slots__ = ("ended", "request", "upstream")

    def __init__(self, request: web.Request, upstream: aiohttp.ClientResponse) -> None:
        self.request = request
        self.upstream = upstream
        self.ended: _Ended | None = None

    def end(self, why: _Ended) -> None:
        """Stop reading the upstream: closing the response closes its connection, which is
        the cancellation a provider sees; the relay's pending read fails at once."""
        if self.ended is None:
            self.ended = why
            self.upstream.close()

    def client_gone(self) -> bool:
        return _closed(self.request)


def _closed(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class ActiveStreams:
    """The streams being relayed, for two things a relay cannot see from its own loop: a
    client that disconnects while the relay waits for the upstream, and the end of the
    shutdown's grace period. One task polls every relayed stream's client connection (aiohttp
    has no disconnection callback without cancelling every handler); it runs only while
    streams do."""

    POLL_S = 0.1

    def __init__(self) -> None:
        self._streams: set[_Relayed] = set()
        self._waits: dict[asyncio.Task[object], web.Request] = {}
        self._gone: set[asyncio.Task[object]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def watch(self, request: web.Request) -> _Watched:
        """``with streams.watch(request):`` cancels the body of the block if the client goes
        away meanwhile, and raises :class:`ClientGone` instead: an upstream request waited
        on inside it is cancelled, which closes its connection (the provider sees the
        cancel). A plain (not async) context manager: it costs a request next to nothing."""
        return _Watched(self, request)

    def _ensure_polling(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def add(self, request: web.Request, upstream: aiohttp.ClientResponse) -> _Relayed:
        relayed = _Relayed(request, upstream)
        if self._closing:
            relayed.end("shutdown")
            return relayed
        self._streams.add(relayed)
        self._ensure_polling()
        return relayed

    def remove(self, relayed: _Relayed) -> None:
        self._streams.discard(relayed)

    def end_all(self) -> int:
        """End every stream (and any that starts from now on) with the shutdown error."""
        self._closing = True
        running = list(self._streams)
        for relayed in running:
            relayed.end("shutdown")
        return len(running)

    async def _watch(self) -> None:
        try:
            while self._streams or self._waits:
                await asyncio.sleep(self.POLL_S)
                for relayed in list(self._streams):
                    if relayed.ended is None and relayed.client_gone():
                        relayed.end("client")
                for task, request in list(self._waits.items()):
                    if task not in self._gone and _closed(request):
                        self._gone.add(task)
                        task.cancel()
        finally:
            self._task = None


class _Watched:
    __slots__ = ("_request", "_streams", "_task")

    def __init__(self, streams: ActiveStreams, request: web.Request) -> None:
        self._streams = streams
        self._request = request
        self._task: asyncio.Task[object] | None = None

    def __enter__(self) -> None:
        task = self._task = asyncio.current_task()
        assert task is not None
        self._streams._waits[task] = self._request
        self._streams._ensure_polling()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: object
    ) -> None:
        task, streams = self._task, self._streams
        assert task is not None
        del streams._waits[task]
        if task not in streams._gone:
            return
        streams._gone.discard(task)
        if kind is asyncio.CancelledError and task.uncancel() > 0:
            return  # someone else cancelled the task too (the shutdown): theirs stays
        # The client is gone, whether the cancel landed or the block ended just before it.
        raise ClientGone("The client disconnected.") from None


active_streams_key = web.AppKey("active_streams", ActiveStreams)


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
    deadline: float | None = None,
) -> StreamOutcome:
    """Relay a 200 upstream stream. Errors before the first frame propagate as GatewayError.

    ``tap`` (streaming/tap.py) sees every frame and may rewrite it (output guardrails).
    ``deadline`` (``time.monotonic()``) bounds the wait for the first frame; after it,
    only the idle timeout applies. Bytes that produce no frame are bounded too: more than
    the client's ``max_response_bytes`` of them (one endless event, a whole-body format
    that never ends) fail the stream rather than fill memory."""
    response: web.StreamResponse | None = None
    status = 200
    first_frame_at: float | None = None
    streams = request.app.get(active_streams_key)
    relayed = streams.add(request, upstream) if streams is not None else None
    answer_by = AnswerDeadline(deadline)
    pending, cap = 0, client.max_response_bytes
    try:
        expect_content_type(upstream, provider, translator.content_types)
        async for chunk in client.iter_body(upstream, provider, answer_by=answer_by):
            frames = translator.feed(chunk)
            if not frames:
                pending += len(chunk)
                if pending > cap:
                    raise response_too_large(provider, cap)
                continue
            pending = 0
            if tap is not None:
                frames = tap.frames(frames)
                if not frames:
                    continue
            if response is None:
                response = await _start(request, headers)
                first_frame_at = time.perf_counter()
                answer_by.at = None
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
        ended = relayed.ended if relayed is not None else None
        if ended == "client":  # we closed the upstream because the client had gone
            if response is None:
                raise ConnectionResetError("The client disconnected.") from None
            return StreamOutcome(response, 499, translator.usage, first_frame_at)
        failure = error
        if ended == "shutdown":
            failure = ShuttingDown(
                "The gateway is shutting down and the stream ran past its grace period; "
                "retry the request."
            )
        if response is None:
            if failure is error:
                raise
            raise failure from None
        status = failure.status
        log.warning("stream from provider '%s' failed mid-way: %s", provider, failure.message)
        await _write_quietly(response, error_frame(failure) + DONE_FRAME)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        status = 499  # the client went away; stop reading the upstream too
        upstream.close()
        if response is None:
            raise
        return StreamOutcome(response, status, translator.usage, first_frame_at)
    finally:
        if streams is not None and relayed is not None:
            streams.remove(relayed)
        upstream.release()
    await _write_eof_quietly(response)
    return StreamOutcome(response, status, translator.usage, first_frame_at)


async def _start(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    """The stream's response, with what the middleware adds to the ones it sees unsent."""
    response = web.StreamResponse(status=200, headers={**SSE_HEADERS, **headers})
    response.headers["x-request-id"] = request[keys.request_id]
    close_while_draining(request.app[drain_key], response)
    await response.prepare(request)
    return response


async def _write_quietly(response: web.StreamResponse, frame: bytes) -> None:
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        await response.write(frame)


async def _write_eof_quietly(response: web.StreamResponse) -> None:
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        await response.write_eof()
